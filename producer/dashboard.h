/* dashboard.h - the web dashboard's files, compiled into the mailvault program
 * (producer/dashboard/, embedded by producer/embed.cmake) and served by api.c. */
#ifndef MV_DASHBOARD_H
#define MV_DASHBOARD_H

#include <stddef.h>

typedef struct mv_asset {
    const char *path; /* "/index.html" */
    const char *type; /* Content-Type */
    const unsigned char *data;
    size_t len;
} mv_asset;

/* Terminated by an entry whose path is NULL. */
extern const mv_asset mv_dashboard_assets[];

#endif

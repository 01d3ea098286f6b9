/* idset.h - a set of source message ids (Graph immutable ids, EWS item ids): what a mailbox's
 * index already holds, for the deletion rule and for sources without incremental sync. Adds
 * are O(1); the first lookup after adds sorts (O(n log n)), lookups are binary searches. */
#ifndef MV_WORKER_IDSET_H
#define MV_WORKER_IDSET_H

#include <stddef.h>

typedef struct idset {
    char **v;
    size_t n, cap;
    int sorted, loaded; /* loaded: the caller's flag (filled from the index) */
} idset;

int idset_add(idset *s, const char *id); /* 0, or 1 when out of memory */
int idset_has(idset *s, const char *id);
void idset_free(idset *s);

/* The ids of one batch in the order the source gave them, each once (a page that lists an id
 * twice archives it once). */
typedef struct idlist {
    char **ids;
    size_t n, cap;
} idlist;
int idlist_add(idlist *l, const char *id); /* 0, or 1 when out of memory */
void idlist_free(idlist *l);

#endif

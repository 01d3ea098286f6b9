/* graph_internal.h - internals of graph.c exposed to its unit tests and fuzz target only.
 *
 * Not part of the library's API: the worker includes mv/graph.h, never this file. The page
 * parsers take one complete JSON response body (any bytes) and are what the HTTP paths use. */
#ifndef MV_GRAPH_INTERNAL_H
#define MV_GRAPH_INTERNAL_H

#include "mv/graph.h"
#include "mv/http.h"
#include "mv/oauth.h"

#include <stddef.h>
#include <stdint.h>

/* One folder of a mailFolders/childFolders page: name is the raw displayName. */
typedef int (*mv_graph_rawfolder_fn)(void *ud, const char *id, const char *name,
                                     const char *well_known, uint64_t total_items,
                                     uint64_t child_count);

/* Parse a users / folders / delta page. *next_link (malloc'd, NULL when absent) is the
 * @odata.nextLink; for delta also the @odata.deltaLink with *complete = 1. A callback returning
 * non-zero stops the parse with MV_ECANCEL. Malformed pages give MV_EPROTO naming the field. */
mv_err mv_graph__parse_users(const char *body, size_t len, mv_graph_user_fn cb, void *ud,
                             char **next_link, char *err, size_t errlen);
mv_err mv_graph__parse_folders(const char *body, size_t len, mv_graph_rawfolder_fn cb, void *ud,
                               char **next_link, char *err, size_t errlen);
mv_err mv_graph__parse_delta(const char *body, size_t len, mv_graph_delta_fn cb, void *ud,
                             char **link, int *complete, char *err, size_t errlen);

/* A $batch response ({"responses":[{"id","status","headers","body"}]}) for a batch of n
 * $value requests with ids "1".."n": cb gets each response with its index (id - 1); a 2xx
 * body is base64-decoded into data/len (at most max_item bytes, else status -1 with error
 * set, as for a body that is not base64); an error body is summarised in error. Ids outside
 * 1..n or repeated, and statuses that are not HTTP statuses, refuse the whole response. */
typedef struct mv_graph__batch_res {
    size_t index;
    long status;
    int64_t retry_after_ms;
    const unsigned char *data;
    size_t len;
    char error[256];
} mv_graph__batch_res;
typedef int (*mv_graph__batch_fn)(void *ud, const mv_graph__batch_res *res);
mv_err mv_graph__parse_batch(const char *body, size_t len, size_t n, uint64_t max_item,
                             mv_graph__batch_fn cb, void *ud, char *err, size_t errlen);

/* A plain message listing: value[].id and an optional nextLink. */
mv_err mv_graph__parse_idlist(const char *body, size_t len, mv_graph_id_fn cb, void *ud,
                              char **next_link, char *err, size_t errlen);

/* The token response and the error texts are parsed in oauth.c (mv_oauth__parse_token,
 * mv_ms__error_text) and Retry-After in http.c (mv_http__retry_after). */

/* 1 if link has the same scheme, host and port as base (and no userinfo, no spaces or
 * control bytes). */
int mv_graph__same_origin(const char *base, const char *link);

/* Append name to path with '%' -> "%25" and '/' -> "%2F". Returns a malloc'd string. */
char *mv_graph__path_join(const char *parent, const char *name);

#endif

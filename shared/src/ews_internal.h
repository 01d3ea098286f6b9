/* ews_internal.h - internals of ews.c exposed to its unit tests and fuzz target only.
 *
 * Not part of the library's API: the worker includes mv/ews.h, never this file. The parsers
 * take one answer (any bytes) and are exactly what the HTTP paths use; the GetItem parser is
 * fed the answer piece by piece as it arrives. */
#ifndef MV_EWS_INTERNAL_H
#define MV_EWS_INTERNAL_H

#include "mv/ews.h"

#include <stddef.h>
#include <stdint.h>

/* What an answer said besides its payload: the server's version (t:ServerVersionInfo, ""
 * when absent) and the delay a busy answer asked for (BackOffMilliseconds; 0 if none). */
typedef struct mv_ews__info {
    char server_version[96];
    int64_t backoff_ms;
} mv_ews__info;

/* Errors inside a SOAP answer: a SOAP fault, or a response message whose ResponseClass is not
 * Success, are mapped as ews.h says (MV_EBUSY, MV_EAUTH, MV_ENOTFOUND, MV_ESERVER) with
 * "<ResponseCode>: <MessageText>" in err. Anything that is not the expected answer (not XML,
 * a DOCTYPE, wrong elements, missing or odd values) is MV_EPROTO naming what is wrong. A
 * callback returning non-zero stops the parse with MV_ECANCEL; callbacks only run once the
 * whole answer has been checked. */

/* One folder of a FindFolder answer: parent_id "" when absent, folder_class "" when absent,
 * has_children: -1 unknown (no ChildFolderCount), else 0/1. */
typedef int (*mv_ews__folder_fn)(void *ud, const char *id, const char *parent_id, const char *name,
                                 const char *folder_class, uint64_t total_count, int has_children);

mv_err mv_ews__parse_find_folder(const char *body, size_t len, mv_ews__folder_fn cb, void *ud,
                                 uint32_t *next_offset, int *last, mv_ews__info *info, char *err,
                                 size_t errlen);
mv_err mv_ews__parse_find_item(const char *body, size_t len, mv_ews_item_fn cb, void *ud,
                               uint32_t *next_offset, int *last, mv_ews__info *info, char *err,
                               size_t errlen);
/* *new_state is malloc'd on MV_OK (never empty), NULL otherwise. */
mv_err mv_ews__parse_sync(const char *body, size_t len, mv_ews_item_fn cb, void *ud,
                          char **new_state, int *last, mv_ews__info *info, char *err,
                          size_t errlen);

/* A non-2xx answer: status, its (capped) body and the Retry-After delay of the HTTP layer.
 * 401 -> MV_EAUTH, 403 -> MV_EAUTH "EWS blocked ...", a SOAP fault in the body -> mapped by
 * its code, 503/429 -> MV_EBUSY (backoff = retry_after_ms), 3xx -> MV_EPROTO, other 5xx ->
 * MV_ESERVER, other 4xx -> MV_EPROTO. */
mv_err mv_ews__map_http(long status, const char *body, size_t len, int64_t retry_after_ms,
                        mv_ews__info *info, char *err, size_t errlen);

/* The mv_err for an Exchange ResponseCode (ErrorServerBusy -> MV_EBUSY, ...). */
mv_err mv_ews__code_err(const char *code);

/* The streaming GetItem parser for a request of n items (1..MV_EWS_GET_MAX): feed the answer
 * in pieces of any size, then finish. feed/finish return MV_OK or the error of the whole
 * request (err set); after an error further feeds return it again. Items are delivered to cb
 * as ews.h describes for mv_ews_get_mime. */
typedef struct mv_ews__getitem mv_ews__getitem;
mv_err mv_ews__getitem_new(size_t n, uint64_t max_message, const mv_ews_mime_cb *cb, void *ud,
                           mv_ews__getitem **out, char *err, size_t errlen);
mv_err mv_ews__getitem_feed(mv_ews__getitem *g, const char *p, size_t n, char *err, size_t errlen);
mv_err mv_ews__getitem_finish(mv_ews__getitem *g, char *err, size_t errlen);
const mv_ews__info *mv_ews__getitem_info(const mv_ews__getitem *g);
void mv_ews__getitem_free(mv_ews__getitem *g);

/* The answer of CreateFolder or CreateItem (op): *id (malloc'd) is the new folder's
 * t:FolderId (required) or the item's t:ItemId (NULL when the answer names none). Errors as
 * for the other parsers (ErrorQuotaExceeded -> MV_ETOOBIG). */
mv_err mv_ews__parse_created(const char *body, size_t len, const char *op, char **id,
                             mv_ews__info *info, char *err, size_t errlen);

/* Folder paths: name appended to parent with '%' -> "%25" and '/' -> "%2F" (malloc'd). */
char *mv_ews__path_join(const char *parent, const char *name);

#endif

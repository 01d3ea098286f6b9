/* graph.h - a Microsoft Graph mail client for archiving (libcurl + jansson).
 *
 * One mv_graph is one HTTP connection context (a curl easy handle with keep-alive) used by
 * one thread. Every request is bounded: connect and total timeouts, JSON bodies capped at
 * max_json bytes, MIME bodies at max_message bytes and streamed to the caller in pieces (a
 * 50 MB message is never held in memory). TLS verification is on unless verify = 0.
 *
 * Endpoints follow the national cloud chosen by the caller: login_base
 * ("https://login.microsoftonline.com" or "https://login.chinacloudapi.cn") and graph_base
 * ("https://graph.microsoft.com/v1.0" or "https://microsoftgraph.chinacloudapi.cn/v1.0").
 *
 * Errors: Graph's JSON error body ({"error":{"code","message"}}) and AAD's token errors
 * ({"error","error_description"}) are parsed into err as "HTTP 403 ErrorAccessDenied: Access is
 * denied..." and mapped: 401 (after one token refresh) and AAD invalid_client -> MV_EAUTH;
 * 403 -> MV_EAUTH (permission missing); 404 -> MV_ENOTFOUND; 410 (delta token expired) ->
 * MV_ENOTFOUND, see mv_graph_delta_page; 429/503/504 -> MV_EBUSY with the Retry-After delay
 * available from mv_graph_retry_after_ms; other 5xx -> MV_ESERVER; transport failures ->
 * MV_ENET / MV_ETIMEDOUT. */
#ifndef MV_GRAPH_H
#define MV_GRAPH_H

#include "mv/common.h"
#include "mv/http.h"
#include "mv/oauth.h"
#include <stdint.h>

typedef struct mv_graph mv_graph;

typedef struct mv_graph_opts {
    const char *login_base;    /* token authority base, no trailing slash */
    const char *graph_base;    /* e.g. https://graph.microsoft.com/v1.0 */
    const char *tenant_id;     /* directory (tenant) id or domain */
    const char *client_id;     /* app registration */
    const char *client_secret; /* never logged, never in err */
    /* or a certificate: the token request then carries a client assertion (a JWT signed RS256
     * with this PEM private key, header x5t = SHA-1 thumbprint of the PEM certificate) */
    const char *client_key_pem;  /* secret, like client_secret */
    const char *client_cert_pem; /* public */
    const char *ca_file;         /* optional extra CA bundle */
    int verify;                  /* 1 = verify TLS peer and host (default) */
    int timeout_ms;              /* per request (total), default 120000 */
    int connect_timeout_ms;      /* default 15000 */
    int idle_timeout_ms;  /* a transfer stalled (< 1 byte/s) this long fails, default 60000 */
    size_t max_json;      /* bound on one JSON response, default 16 MiB */
    uint64_t max_message; /* bound on one MIME message, default 200 MiB */
    int page_size;        /* Prefer: odata.maxpagesize for delta, default 100 */
} mv_graph_opts;

void mv_graph_opts_default(mv_graph_opts *o);
mv_err mv_graph_open(const mv_graph_opts *o, mv_graph **out, char *err, size_t errlen);
void mv_graph_close(mv_graph *g);

/* The gate around every Graph request (http.h); the worker keeps Microsoft's per-mailbox
 * limits with it. */
typedef mv_http_gate mv_graph_gate;
void mv_graph_set_gate(mv_graph *g, const mv_graph_gate *gate); /* NULL removes it */

/* Delay asked for by the last 429/503/504 (Retry-After seconds, in ms; 0 if none). */
int64_t mv_graph_retry_after_ms(const mv_graph *g);

/* Access token. mv_graph_token fetches one by the client-credentials grant (scope
 * <graph resource>/.default) unless a valid one is set; *expires_ms is its absolute expiry.
 * mv_graph_set_token installs a token obtained elsewhere (e.g. the cluster-wide cache in
 * Redis). Requests refresh the token once on a 401 and then fail with MV_EAUTH. */
mv_err mv_graph_token(mv_graph *g, const char **token, int64_t *expires_ms, char *err,
                      size_t errlen);
void mv_graph_set_token(mv_graph *g, const char *token, int64_t expires_ms);
/* Where tokens come from when the caller shares them (the worker: one cache for the cluster,
 * refreshed by one worker at a time): see mv_oauth_source in oauth.h. */
void mv_graph_set_token_source(mv_graph *g, const mv_oauth_source *src); /* NULL removes */

/* GET /users?$select=id,userPrincipalName,mail,assignedLicenses&$top=999, following
 * @odata.nextLink. licensed = assignedLicenses is non-empty. cb returns non-zero to stop. */
typedef int (*mv_graph_user_fn)(void *ud, const char *id, const char *upn, const char *mail,
                                int licensed);
mv_err mv_graph_list_users(mv_graph *g, mv_graph_user_fn cb, void *ud, char *err, size_t errlen);

/* Walk the folder tree of a mailbox: mailFolders?includeHiddenFolders=true, then childFolders
 * recursively (bounded depth 64), with paging. path is the display names joined by '/'
 * (a '/' inside a name is written as "%2F"); well_known is the wellKnownName when the server
 * gives one, else "". */
typedef int (*mv_graph_folder_fn)(void *ud, const char *id, const char *path,
                                  const char *well_known, uint64_t total_items);
mv_err mv_graph_list_folders(mv_graph *g, const char *user, mv_graph_folder_fn cb, void *ud,
                             char *err, size_t errlen);

/* One page of messages/delta for a folder. from_link is the checkpoint (an @odata.nextLink or
 * @odata.deltaLink returned earlier) or NULL to start a full sync. cb is called per entry:
 * removed = 1 for an "@removed" entry (reason "deleted" or "changed"). On success *next_link
 * (malloc'd, caller frees) is the link to continue from and *complete says whether it is a
 * deltaLink (the folder is in sync) or a nextLink (more pages follow). An expired or unknown
 * delta token (HTTP 410, SyncStateNotFound) returns MV_ENOTFOUND with "sync state expired" in
 * err: the caller restarts the folder from NULL (objects deduplicate). */
typedef int (*mv_graph_delta_fn)(void *ud, const char *message_id, int removed, const char *reason);
mv_err mv_graph_delta_page(mv_graph *g, const char *user, const char *folder_id,
                           const char *from_link, mv_graph_delta_fn cb, void *ud, char **next_link,
                           int *complete, char *err, size_t errlen);

/* GET /users/{user}/messages/{id}/$value: the RFC 5322 message streamed to the callbacks.
 * begin gets the Content-Length if the server sent one, else -1; data gets the pieces; a
 * non-zero return from either aborts with MV_ECANCEL. */
/* GET /users/{user}/mailFolders/{folder}/messages?$filter=receivedDateTime lt <before>&$select=id,
 * following @odata.nextLink: cb gets the id of every message received before before_ms. */
typedef int (*mv_graph_id_fn)(void *ud, const char *message_id);
mv_err mv_graph_list_received_before(mv_graph *g, const char *user, const char *folder_id,
                                     int64_t before_ms, mv_graph_id_fn cb, void *ud, char *err,
                                     size_t errlen);

/* DELETE /users/{user}/messages/{id} (204; Exchange keeps it in Recoverable Items). Needs the
 * Mail.ReadWrite application permission (403 -> MV_EAUTH); an id already gone -> MV_ENOTFOUND. */
mv_err mv_graph_delete_message(mv_graph *g, const char *user, const char *message_id, char *err,
                               size_t errlen);

/* JSON batching (POST $batch): the MIME of up to MV_GRAPH_BATCH_MAX messages in one HTTP
 * request. Graph counts every inner request against the mailbox's limits (the gate is asked
 * for weight n) and returns non-JSON bodies base64-encoded, so the whole answer is held in
 * memory, bounded by MV_GRAPH_BATCH_BODY_MAX (else MV_ETOOBIG: fetch those one by one).
 * On MV_OK every item has its own status: 200 = cb got the message (whole, decoded);
 * 404 = gone; 429/503 with retry_after_ms; -1 = unusable body (error says why); 0 = no answer
 * for it. cb returning non-zero stops with MV_ECANCEL. */
#define MV_GRAPH_BATCH_MAX 20
#define MV_GRAPH_BATCH_BODY_MAX (48u * 1024 * 1024)
typedef struct mv_graph_batch_item {
    const char *message_id; /* in */
    long status;            /* out */
    int64_t retry_after_ms; /* out */
    char error[256];        /* out */
} mv_graph_batch_item;
typedef int (*mv_graph_batch_fn)(void *ud, size_t index, const void *mime, size_t len);
mv_err mv_graph_get_mime_batch(mv_graph *g, const char *user, mv_graph_batch_item *items, size_t n,
                               mv_graph_batch_fn cb, void *ud, char *err, size_t errlen);

typedef struct mv_graph_mime_cb {
    int (*begin)(void *ud, int64_t size);
    int (*data)(void *ud, const void *data, size_t len);
} mv_graph_mime_cb;
mv_err mv_graph_get_mime(mv_graph *g, const char *user, const char *message_id,
                         const mv_graph_mime_cb *cb, void *ud, char *err, size_t errlen);

#endif

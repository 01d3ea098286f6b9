/* ews.h - an Exchange Web Services client for archiving (SOAP 1.1 over mv_http, libxml2).
 *
 * One mv_ews is one HTTP connection context used by one thread. Every request is bounded
 * (timeouts of mv_http; a buffered response at most max_xml bytes; one item's MIME at most
 * max_message bytes, decoded). Requests are built and responses parsed with libxml2 (no
 * string scraping): namespaces m = .../exchange/services/2006/messages, t = .../types; every
 * request carries t:RequestServerVersion, and the answer's t:ServerVersionInfo is kept.
 *
 * Authentication: Basic or NTLM with a service account (Exchange on-premises), or an OAuth
 * bearer token by the client-credentials grant for https://outlook.office365.com/.default
 * (Exchange Online; mv_oauth, with an optional shared token source). Every call names the
 * mailbox it acts on: the X-AnchorMailbox header always, and with impersonate = 1 the SOAP
 * header t:ExchangeImpersonation/t:ConnectingSID/t:PrimarySmtpAddress; without
 * impersonation the distinguished folder ids carry t:Mailbox (delegate access).
 *
 * Errors are mapped to mv_err with Exchange's own code in err ("ErrorAccessDenied: ..."):
 *   HTTP 401 (after one token refresh with OAuth) -> MV_EAUTH;
 *   HTTP 403 -> MV_EAUTH, err starting "EWS blocked" (EWS turned off for the organisation or
 *     the mailbox: Exchange Online's EWS retirement, EWSEnabled = false);
 *   ErrorServerBusy, ErrorExceededConnectionCount, HTTP 503 -> MV_EBUSY with the delay from
 *     BackOffMilliseconds / Retry-After in mv_ews_backoff_ms;
 *   ErrorAccessDenied, ErrorImpersonateUserDenied, ErrorImpersonationDenied -> MV_EAUTH;
 *   ErrorNonExistentMailbox, ErrorFolderNotFound -> MV_ENOTFOUND;
 *   ErrorQuotaExceeded (the mailbox is full, on CreateItem/CreateFolder) -> MV_ETOOBIG;
 *   ErrorInvalidSyncStateData -> MV_ENOTFOUND with "sync state invalid" in err;
 *   other SOAP faults / error responses -> MV_ESERVER; malformed answers -> MV_EPROTO;
 *   transport failures -> MV_ENET / MV_ETIMEDOUT. */
#ifndef MV_EWS_H
#define MV_EWS_H

#include "mv/common.h"
#include "mv/http.h"
#include "mv/oauth.h"
#include <stdint.h>

typedef struct mv_ews mv_ews;

typedef enum { MV_EWS_BASIC = 0, MV_EWS_NTLM, MV_EWS_OAUTH } mv_ews_auth;

typedef struct mv_ews_opts {
    const char *url; /* the EWS endpoint, e.g. https://mail.contoso.com/EWS/Exchange.asmx */
    mv_ews_auth auth;
    const char *username, *password; /* BASIC / NTLM: the service account (secret) */
    /* OAUTH: the Entra ID app (see oauth.h); the scope is https://outlook.office365.com/.default
     * unless scope is given */
    const char *login_base, *tenant_id, *client_id, *client_secret, *client_key_pem,
        *client_cert_pem, *scope;
    const char *server_version; /* RequestServerVersion Version, default "Exchange2016" */
    int impersonate;            /* 1 = ExchangeImpersonation for the target mailbox */
    const char *ca_file;
    int verify;                                          /* default 1 */
    int timeout_ms, connect_timeout_ms, idle_timeout_ms; /* as mv_http */
    size_t max_xml;       /* bound on a buffered response, default 16 MiB */
    uint64_t max_message; /* bound on one item's decoded MIME, default 200 MiB */
    int page_size;        /* FindFolder/FindItem page, default 500 (1..1000) */
} mv_ews_opts;

void mv_ews_opts_default(mv_ews_opts *o);
mv_err mv_ews_open(const mv_ews_opts *o, mv_ews **out, char *err, size_t errlen);
void mv_ews_close(mv_ews *e);

/* Around every EWS request (not token requests), as for Graph (weight: items it asks for). */
void mv_ews_set_gate(mv_ews *e, const mv_http_gate *gate);
void mv_ews_set_token_source(mv_ews *e, const mv_oauth_source *src); /* OAUTH only */
/* Delay asked for by the last busy answer (BackOffMilliseconds or Retry-After), ms; 0 if none. */
int64_t mv_ews_backoff_ms(const mv_ews *e);
/* The server's version from the last t:ServerVersionInfo ("15.2.1118 V2017_07_11"), or "". */
const char *mv_ews_server_version(const mv_ews *e);

/* The folder tree of a mailbox root, every folder with its path (display names joined by '/',
 * a '/' inside a name written "%2F", '%' as "%25"), FolderClass ("" if none; "IPF.Note" for
 * mail) and TotalCount. MAILBOX and ARCHIVE: FindFolder Deep traversal under msgfolderroot /
 * archivemsgfolderroot, paged; PUBLIC: FindFolder Shallow level by level under
 * publicfoldersroot (Deep is not allowed there). cb returns non-zero to stop. */
typedef enum { MV_EWS_ROOT_MAILBOX = 0, MV_EWS_ROOT_ARCHIVE, MV_EWS_ROOT_PUBLIC } mv_ews_root;
typedef int (*mv_ews_folder_fn)(void *ud, const char *folder_id, const char *path,
                                const char *folder_class, uint64_t total_count);
mv_err mv_ews_list_folders(mv_ews *e, const char *mailbox, mv_ews_root root, mv_ews_folder_fn cb,
                           void *ud, char *err, size_t errlen);

/* One change of a folder: kind, the item id, its ItemClass ("" when not given, e.g. deletes). */
typedef enum { MV_EWS_CREATE = 1, MV_EWS_UPDATE, MV_EWS_DELETE, MV_EWS_READ_FLAG } mv_ews_change;
typedef int (*mv_ews_item_fn)(void *ud, mv_ews_change kind, const char *item_id,
                              const char *item_class);

/* SyncFolderItems (ItemShape IdOnly plus ItemClass) from sync_state (NULL or "" = from the
 * start) with at most max_changes (1..512) changes. On MV_OK *new_state (malloc'd) is the
 * SyncState to continue from and *last = IncludesLastItemInRange. An invalid state gives
 * MV_ENOTFOUND with "sync state invalid" in err: the caller starts the folder again. */
mv_err mv_ews_sync_items(mv_ews *e, const char *mailbox, const char *folder_id,
                         const char *sync_state, int max_changes, mv_ews_item_fn cb, void *ud,
                         char **new_state, int *last, char *err, size_t errlen);

/* FindItem Shallow with IndexedPageItemView (Offset, MaxEntriesReturned = page_size), oldest
 * first by DateTimeReceived: for folders SyncFolderItems does not cover (public folders).
 * cb gets MV_EWS_CREATE for each item; *next_offset is where the next page starts and *last
 * is IncludesLastItemInRange. */
mv_err mv_ews_find_items(mv_ews *e, const char *mailbox, const char *folder_id, uint32_t offset,
                         mv_ews_item_fn cb, void *ud, uint32_t *next_offset, int *last, char *err,
                         size_t errlen);

/* GetItem (IdOnly, IncludeMimeContent) for n items (1..MV_EWS_GET_MAX) in one request, the
 * answer parsed as it arrives: each item's t:MimeContent is base64-decoded straight into
 * data (never the whole answer in memory). Responses come in request order: index i is
 * item_ids[i]. begin/data/end per item; fail instead for an item whose ResponseCode is not
 * NoError (code is Exchange's, e.g. ErrorItemNotFound; text its MessageText), or whose MIME
 * is missing (code "NoMimeContent") or larger than max_message ("MimeTooLarge"): what was
 * begun for it is to be discarded. A non-zero return from begin/data/end stops the call with
 * MV_ECANCEL. Errors of the whole request are returned as above. */
#define MV_EWS_GET_MAX 50
typedef struct mv_ews_mime_cb {
    int (*begin)(void *ud, size_t index);
    int (*data)(void *ud, size_t index, const void *p, size_t n);
    int (*end)(void *ud, size_t index);
    void (*fail)(void *ud, size_t index, const char *code, const char *text);
} mv_ews_mime_cb;
mv_err mv_ews_get_mime(mv_ews *e, const char *mailbox, const char *const *item_ids, size_t n,
                       const mv_ews_mime_cb *cb, void *ud, char *err, size_t errlen);

/* ---- writing into a mailbox (the export destination) ---- */

#define MV_EWS_MAX_MSGID 998 /* bytes of a Message-ID looked up */

/* The folder names[0]/names[1]/.../names[n-1] under msgfolderroot of mailbox, each level
 * looked up by DisplayName (FindFolder Shallow with an IsEqualTo restriction on
 * folder:DisplayName) and created when missing (CreateFolder, FolderClass IPF.Note; a folder
 * made meanwhile by someone else, ErrorFolderExists, is looked up again). Names: 1..255 bytes
 * without control characters, at most 64 levels. *folder_id (malloc'd) is the last level's id. */
mv_err mv_ews_ensure_folder(mv_ews *e, const char *mailbox, const char *const *names, size_t n,
                            char **folder_id, char *err, size_t errlen);

/* Whether folder_id holds an item whose message:InternetMessageId equals msgid (FindItem
 * Shallow with an IsEqualTo restriction, one entry asked for). msgid: 1..MV_EWS_MAX_MSGID
 * bytes, no spaces or control characters (else MV_EINVAL). */
mv_err mv_ews_find_message(mv_ews *e, const char *mailbox, const char *folder_id, const char *msgid,
                           int *found, char *err, size_t errlen);

/* One message for CreateItem: write is called once and gives the MIME bytes to put (in pieces
 * of any size; put returns non-zero to stop: write then returns an error), which are base64-
 * encoded straight into the request (the MIME itself is never held whole; the request, its
 * base64, is bounded by max_message). */
typedef struct mv_ews_message {
    int read;     /* PR_MESSAGE_FLAGS 1 (MSGFLAG_READ), else 0 */
    int64_t time; /* seconds since the epoch: PR_MESSAGE_DELIVERY_TIME and PR_CLIENT_SUBMIT_TIME;
                   * 0 = not set */
    mv_err (*write)(void *ud, int (*put)(void *ctx, const void *p, size_t n), void *ctx, char *err,
                    size_t errlen);
    void *ud;
} mv_ews_message;

/* CreateItem of a t:Message with t:MimeContent and MessageDisposition="SaveOnly" into
 * folder_id, with the extended properties PR_MESSAGE_FLAGS (without it Exchange shows the item
 * as an unsent draft) and, when time is set, PR_MESSAGE_DELIVERY_TIME / PR_CLIENT_SUBMIT_TIME.
 * A full mailbox is MV_ETOOBIG (ErrorQuotaExceeded), a message past max_message too. */
mv_err mv_ews_create_message(mv_ews *e, const char *mailbox, const char *folder_id,
                             const mv_ews_message *m, char *err, size_t errlen);

#endif

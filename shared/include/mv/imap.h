/* imap.h - a streaming IMAP4rev1 client (RFC 3501) for archiving.
 *
 * One mv_imap is one connection, used by one thread. Every read and write is bounded by
 * timeout_ms; response lines are bounded by max_line and literals by max_literal. Message
 * bodies (BODY[] literals) are never buffered: they are handed to the caller's callbacks in
 * pieces as they arrive from the socket, so a 50 MB message is held in memory zero times.
 *
 * TLS via OpenSSL: implicit TLS (port 993) or STARTTLS; the server certificate is verified
 * against the system CA store (plus ca_file) and the host name unless verify = 0. */
#ifndef MV_IMAP_H
#define MV_IMAP_H

#include "mv/common.h"
#include <stdint.h>

typedef struct mv_imap mv_imap;

typedef enum { MV_TLS_NONE = 0, MV_TLS_STARTTLS, MV_TLS_IMPLICIT } mv_tls_mode;

typedef struct mv_imap_opts {
    const char *host;
    int port;
    mv_tls_mode tls;
    int verify;           /* 1 = verify certificate and host name (default) */
    const char *ca_file;  /* optional extra CA bundle (PEM), NULL for none */
    int timeout_ms;       /* per read/write/connect */
    size_t max_line;      /* bound on one response line (excluding literals) */
    uint64_t max_literal; /* bound on one literal (message size) */
    int no_literal_plus;  /* 1 = synchronising literals even when the server offers LITERAL+
                           * (for tests and servers whose LITERAL+ misbehaves); default 0 */
} mv_imap_opts;

void mv_imap_opts_default(mv_imap_opts *o); /* verify=1, timeout 60 s, 1 MiB, 200 MiB */
/* Parse "none" | "starttls" | "implicit"; -1 if unknown. */
int mv_tls_mode_parse(const char *s);
const char *mv_tls_mode_name(mv_tls_mode m);

/* Connect, read the greeting, do STARTTLS when asked, fetch CAPABILITY. */
mv_err mv_imap_connect(const mv_imap_opts *o, mv_imap **out, char *err, size_t errlen);
/* Authenticate: AUTHENTICATE PLAIN if the server advertises AUTH=PLAIN, else LOGIN (refused
 * by us over a non-TLS connection only if the server says LOGINDISABLED). A NO answer gives
 * MV_EAUTH with the server's text in err. The password never appears in err or logs. */
mv_err mv_imap_login(mv_imap *c, const char *user, const char *pass, char *err, size_t errlen);
/* AUTHENTICATE XOAUTH2 (Microsoft 365, Google): user is the mailbox, token an OAuth 2.0 access
 * token. A refusal is MV_EAUTH with the server's text and its error challenge (the JSON status
 * XOAUTH2 servers send before the NO) in err; the token never appears there. */
mv_err mv_imap_xoauth2(mv_imap *c, const char *user, const char *token, char *err, size_t errlen);
/* The error challenge of the last refused AUTHENTICATE, decoded (NULL if there was none). */
const char *mv_imap_challenge(const mv_imap *c);
/* 1 if the server advertised the capability (case-insensitive, e.g. "CONDSTORE"). */
int mv_imap_has_cap(const mv_imap *c, const char *cap);

/* LIST "" "*": cb per mailbox; flags is the raw flag list text (e.g. "\\HasNoChildren"),
 * name is decoded (quoted/literal), delim may be 0 for NIL. cb returns non-zero to stop. */
typedef int (*mv_imap_list_fn)(void *ud, const char *name, char delim, const char *flags);
mv_err mv_imap_list(mv_imap *c, mv_imap_list_fn cb, void *ud, char *err, size_t errlen);

typedef struct mv_imap_mailbox {
    uint32_t exists;
    uint32_t uidvalidity;
    uint32_t uidnext;
    uint64_t highestmodseq; /* 0 if not offered */
} mv_imap_mailbox;
/* EXAMINE (read-only) the mailbox. */
mv_err mv_imap_examine(mv_imap *c, const char *mailbox, mv_imap_mailbox *info, char *err,
                       size_t errlen);

/* UID SEARCH UID <from>:* ; returns the UIDs > from-1 in ascending order in a malloc'd array
 * (caller frees). Filters the RFC 3501 quirk where n:* matches the highest UID when n is
 * larger than every UID. */
mv_err mv_imap_uids_from(mv_imap *c, uint32_t from, uint32_t **uids, size_t *n, char *err,
                         size_t errlen);

/* Attributes of one fetched message, valid during the done callback only. */
typedef struct mv_imap_msg {
    uint32_t seq;
    uint32_t uid;
    uint64_t size;        /* RFC822.SIZE, or literal size */
    int64_t internaldate; /* seconds since epoch, 0 if absent */
    const char *flags;    /* raw flag list text without parentheses, "" if absent */
} mv_imap_msg;

typedef struct mv_imap_fetch_cb {
    /* A BODY[] literal of `size` bytes begins. Return 0 to accept. */
    int (*body_begin)(void *ud, uint64_t size);
    /* Next piece of the literal. Return 0 to continue; non-zero aborts the fetch (the
     * connection is then unusable and the call returns MV_ECANCEL). */
    int (*body_data)(void *ud, const void *data, size_t len);
    /* The whole FETCH response for one message has been read. had_body says whether a
     * BODY[] literal was seen (and streamed) for it. Return non-zero to abort. */
    int (*msg_done)(void *ud, const mv_imap_msg *m, int had_body);
} mv_imap_fetch_cb;

/* UID FETCH first:last (UID FLAGS INTERNALDATE RFC822.SIZE BODY.PEEK[]). last = 0 means '*'. */
mv_err mv_imap_fetch_range(mv_imap *c, uint32_t first, uint32_t last, const mv_imap_fetch_cb *cb,
                           void *ud, char *err, size_t errlen);

/* ---- write operations (restoring an export into a mailbox) ---- */

/* The hierarchy delimiter of the personal namespace, from LIST "" "" ('\0' when the server
 * answers NIL, i.e. the namespace is flat). */
mv_err mv_imap_delimiter(mv_imap *c, char *delim, char *err, size_t errlen);

/* CREATE mailbox (a name already encoded for the wire, see mv_imap_utf7_encode). A mailbox
 * that already exists is success: NO [ALREADYEXISTS], or any NO when LIST shows that the name
 * exists. Other refusals: MV_ESERVER with the server's text. */
mv_err mv_imap_create(mv_imap *c, const char *mailbox, char *err, size_t errlen);

/* UID SEARCH HEADER <field> <value> in the mailbox selected/examined last; *count = number of
 * distinct UIDs found (0 for "* SEARCH" without UIDs). A value with 8-bit bytes is sent as a
 * literal with CHARSET UTF-8. */
mv_err mv_imap_search_header(mv_imap *c, const char *field, const char *value, size_t *count,
                             char *err, size_t errlen);
/* UID SEARCH LARGER size-1 SMALLER size+1 in the selected mailbox: the UIDs of the messages of
 * exactly size octets, sorted, in a malloc'd array (NULL when none). */
mv_err mv_imap_search_size(mv_imap *c, uint64_t size, uint32_t **uids, size_t *n, char *err,
                           size_t errlen);

/* APPEND, streamed. begin sends `TAG APPEND <mailbox> (<flags>) "<date>" {<size>}`: flags is
 * the raw flag list text (e.g. "\\Seen \\Flagged", may be "" or NULL; \Recent is dropped, it
 * is not allowed in APPEND, and flags that are not valid IMAP flags are dropped with a
 * warning), internaldate the INTERNALDATE in seconds since the epoch (0 = omit), sent as
 * "dd-Mon-yyyy hh:mm:ss +0000". With LITERAL+ (or LITERAL- and size <= 4096) and not
 * opts.no_literal_plus the literal is non-synchronising and nothing is awaited; otherwise
 * begin waits for the "+" continuation (a tagged NO instead fails begin with the
 * error mapped as below). data sends the next bytes of the message; end sends the final CRLF
 * and reads the tagged answer. The bytes given to data must total exactly size: more (from
 * data) or fewer (at end) is MV_EINVAL, and the connection is then unusable (the literal can
 * not be taken back). A size above the server's APPENDLIMIT fails begin with MV_ETOOBIG.
 * Errors: NO [TRYCREATE] -> MV_ENOTFOUND; NO [OVERQUOTA] or [LIMIT] -> MV_ETOOBIG with "the
 * destination is full" in err; NO [NOPERM] or [READ-ONLY] -> MV_EAUTH with "the destination
 * is read-only"; other NO/BAD -> MV_ESERVER; transport failures as elsewhere. One APPEND at a
 * time per connection, and no other command between begin and end. */
mv_err mv_imap_append_begin(mv_imap *c, const char *mailbox, const char *flags,
                            int64_t internaldate, uint64_t size, char *err, size_t errlen);
/* MULTIAPPEND (RFC 3502, when the server offers it): after a message's last byte, announce the
 * next message of the same APPEND; append_end finishes the command, and the server stores all
 * of its messages or none. */
mv_err mv_imap_append_next(mv_imap *c, const char *flags, int64_t internaldate, uint64_t size,
                           char *err, size_t errlen);
mv_err mv_imap_append_data(mv_imap *c, const void *p, size_t n, char *err, size_t errlen);
mv_err mv_imap_append_end(mv_imap *c, char *err, size_t errlen);

/* A mailbox name from UTF-8 into IMAP's modified UTF-7 (RFC 3501 section 5.1.3) in out
 * (NUL-terminated); 0, or -1 if utf8 is not valid UTF-8 (overlong forms and surrogates
 * included) or out is too small. Printable ASCII stays as is, '&' becomes "&-". */
int mv_imap_utf7_encode(const char *utf8, char *out, size_t outlen);

/* LOGOUT (best effort) and free. NULL is fine. */
void mv_imap_close(mv_imap *c);

/* ---- response parser, exposed for unit tests and the fuzz target ----
 * The parser reads from a transport given as a read function; the client uses its socket/TLS
 * transport, tests and the fuzzer use memory. */
typedef long (*mv_imap_read_fn)(void *io, void *buf, size_t len, int timeout_ms);
/* Wrap a transport into a client that has already "connected" (no greeting read); for tests.
 * write_fn may be NULL (writes are discarded). */
typedef long (*mv_imap_write_fn)(void *io, const void *buf, size_t len, int timeout_ms);
mv_err mv_imap_from_io(const mv_imap_opts *o, mv_imap_read_fn rd, mv_imap_write_fn wr, void *io,
                       mv_imap **out);
/* Read and process responses until the tagged response for `tag` (e.g. "A1"), dispatching
 * FETCH responses to cb. Returns MV_OK on OK, MV_ESERVER on NO/BAD (text in err). Exposed so
 * the fuzz target can drive the complete response path. */
mv_err mv_imap_read_until_tagged(mv_imap *c, const char *tag, const mv_imap_fetch_cb *cb, void *ud,
                                 char *err, size_t errlen);

#endif

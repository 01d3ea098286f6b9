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

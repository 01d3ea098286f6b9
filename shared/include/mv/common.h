/* common.h - status codes and small helpers shared by every libmailvault module.
 *
 * Every fallible function returns an mv_err (0 = success). Human-readable detail goes to a
 * caller-supplied buffer `char *err, size_t errlen` (librdkafka style); functions write a
 * NUL-terminated message there on failure and never print. */
#ifndef MV_COMMON_H
#define MV_COMMON_H

#include <stddef.h>
#include <stdint.h>

typedef enum mv_err {
    MV_OK = 0,
    MV_ERR = 1,   /* unspecified failure; see err buffer */
    MV_ENOMEM,    /* allocation failed */
    MV_EINVAL,    /* invalid argument, config value or input document */
    MV_EIO,       /* local I/O failure (filesystem) */
    MV_ENET,      /* network failure: connect, reset, TLS */
    MV_ETIMEDOUT, /* a read/write/connect exceeded its timeout */
    MV_EPROTO,    /* peer violated the protocol or sent something out of bounds */
    MV_EAUTH,     /* authentication refused by a server (permanent) */
    MV_ENOTFOUND, /* key, object, folder does not exist */
    MV_EEXIST,    /* already exists */
    MV_EBUSY,     /* lease held by another owner / fencing token stale */
    MV_ETOOBIG,   /* a bounded size was exceeded */
    MV_ECORRUPT,  /* stored data does not match its name or fails to decode */
    MV_ECANCEL,   /* stopped on request (shutdown) */
    MV_ESERVER,   /* remote service (Kafka, Redis, IMAP NO/BAD) returned an error */
} mv_err;

#define MV_ERRLEN 512

/* Static string naming the code ("ok", "timeout", ...). Never NULL. */
const char *mv_strerror(mv_err e);

/* 1 if a failure of this class is worth retrying (network, timeout, server busy). */
int mv_err_transient(mv_err e);

/* snprintf into err (if err != NULL && errlen > 0); returns e. Convenience for one-line
 * "return mv_seterr(err, errlen, MV_EINVAL, "field %s: ...", name);" error paths. */
mv_err mv_seterr(char *err, size_t errlen, mv_err e, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* Wall clock and monotonic clock in milliseconds. */
int64_t mv_now_ms(void);
int64_t mv_mono_ms(void);

/* Random UUIDv4 text (36 chars + NUL) from OpenSSL's RAND_bytes. */
void mv_uuid(char out[37]);

/* Names of tenants, profiles: 1..63 chars of [a-z0-9._-], starting alnum. */
int mv_name_valid(const char *s);

/* Mailbox identifiers (logins, SMTP addresses): 1..255 printable ASCII without space, / or | (the
 * latter two separate key parts in Redis and Kafka keys). */
int mv_mailbox_valid(const char *s);

/* malloc'd printf; NULL when out of memory. */
char *mv_aprintf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* Replace control bytes (< 0x20, 0x7f) in s with '?' (server text copied into errors). */
void mv_sanitize(char *s);
/* 1 if s holds a byte <= 0x20 or 0x7f (unusable in a header value such as a token). */
int mv_has_ctl(const char *s);
/* Cleanse (OPENSSL_cleanse) and free a NUL-terminated secret; NULL is fine. */
void mv_free_secret(char *s);
/* parent + "/" + name for folder paths built from display names: a '/' inside name is written
 * "%2F" and '%' "%25", so the path splits back unambiguously. parent NULL or "": name alone.
 * malloc'd; NULL when out of memory. */
char *mv_path_join(const char *parent, const char *name);
/* Replace every occurrence of secret in err with "***" (err stays terminated). */
void mv_scrub(char *err, size_t errlen, const char *secret);

/* write(2) all of data, retrying on EINTR and short writes; 0, or -1 with errno set. */
int mv_write_all(int fd, const void *data, size_t len);
/* Append one element of size bytes to a growable array (*arr holds *n of *cap, doubling from
 * 16). 0, or -1 when out of memory (the array is left as it was). */
int mv_grow_push(void **arr, size_t *n, size_t *cap, size_t size, const void *elem);

/* Lowercase hex of len bytes into out (2*len+1). */
void mv_hex(const unsigned char *in, size_t len, char *out);

/* Streaming base64 decoder (RFC 4648 standard alphabet), for bodies that arrive in pieces.
 * Whitespace is skipped; '=' padding only at the end; anything else is refused. update
 * writes at most (n / 4 + 1) * 3 bytes to out and sets *outn; both return 0 or -1 (bad input,
 * with the byte offset in st->bad_at). final checks that the input ended on a whole group. */
typedef struct mv_b64dec {
    uint32_t acc;
    int nacc;    /* sextets in acc (0..3) */
    int pad;     /* 0: none yet, 1: ended by padding, 2: one more '=' expected */
    uint64_t in; /* bytes consumed */
    uint64_t bad_at;
} mv_b64dec;
void mv_b64dec_init(mv_b64dec *st);
int mv_b64dec_update(mv_b64dec *st, const char *in, size_t n, unsigned char *out, size_t *outn);
int mv_b64dec_final(mv_b64dec *st);

#endif

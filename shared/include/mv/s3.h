/* s3.h - a small client for S3-compatible object storage (AWS S3, SeaweedFS, MinIO, ...).
 *
 * One mv_s3 talks to one bucket. It is thread-safe: every call borrows a libcurl easy handle
 * from a small pool kept by the mv_s3 (connections stay alive between calls) and gives it back
 * after. Requests are signed with AWS Signature Version 4 by libcurl (CURLOPT_AWS_SIGV4); the
 * payload hash (x-amz-content-sha256) is the SHA-256 of the body, computed here, and every
 * request with a body carries Content-MD5.
 *
 * Every request is bounded: a total timeout (timeout_ms), a connect timeout, an idle timeout
 * (a transfer stalled below 1 byte/s for min(30 s, timeout) fails), a cap on buffered XML
 * answers (MV_S3_XML_MAX) and on error bodies (MV_S3_ERRBODY_MAX); object bodies are streamed
 * and bounded by the caller. Redirects are never followed; TLS peers are always verified.
 *
 * Retries: a request is repeated (at most max_retries times, exponential backoff with jitter
 * from 200 ms, capped at 5 s, or the server's Retry-After if longer, capped at 20 s) after a
 * 5xx, a 429, SlowDown, RequestTimeout, a timeout or a connection failure. A GET is repeated
 * only when nothing has been passed to the caller's sink yet.
 *
 * Errors name the operation, bucket/key and the S3 error code, with a hint for the common ones:
 *   "s3 PUT bucket/key: SignatureDoesNotMatch (check the access key and secret) ..."
 * Mapping: SignatureDoesNotMatch, InvalidAccessKeyId, AccessDenied, RequestTimeTooSkewed and
 * other credential errors -> MV_EAUTH; NoSuchBucket, NoSuchKey, NoSuchUpload, any other 404 ->
 * MV_ENOTFOUND; 412 -> MV_EEXIST; timeouts -> MV_ETIMEDOUT; connection failures -> MV_ENET;
 * anything else the server says -> MV_ESERVER; a malformed answer -> MV_EPROTO. The secret key
 * and the Authorization header never appear in an error or a log line.
 *
 * Keys: 1..1024 bytes, no control bytes (< 0x20, 0x7f), no empty, "." or ".." path segment
 * (curl and servers would normalise them away); any other byte is allowed and percent-encoded
 * per path segment ('/' kept), exactly as SigV4 canonicalises it. */
#ifndef MV_S3_H
#define MV_S3_H

#include "mv/common.h"
#include <stddef.h>
#include <stdint.h>

#define MV_S3_XML_MAX (1u << 20)          /* bytes of a 2xx XML answer (listing page, ...) */
#define MV_S3_ERRBODY_MAX (64u * 1024)    /* bytes of an error body kept (the rest dropped) */
#define MV_S3_KEY_MAX 1024                /* bytes of a key */
#define MV_S3_MIN_PART (5u * 1024 * 1024) /* smallest multipart part but the last */
#define MV_S3_MAX_PART (5ull * 1024 * 1024 * 1024)
#define MV_S3_MAX_PARTS 10000

typedef struct mv_s3_config {
    char endpoint[256];     /* http://host[:port] or https://host[:port] (no path) */
    char region[64];        /* default "us-east-1" */
    char bucket[64];        /* S3 bucket naming rules (3..63 of [a-z0-9.-], ...) */
    int path_style;         /* 1: endpoint/bucket/key (default); 0: virtual-hosted bucket.host */
    char access_key[128];   /* printable ASCII */
    char secret_key[256];   /* never logged; the mv_s3's copy is cleansed by mv_s3_close */
    char ca_file[512];      /* optional extra CA bundle ("" = system store) */
    int timeout_ms;         /* per request (total), default 60000 */
    int connect_timeout_ms; /* default 10000 */
    int max_retries;        /* default 4; 0 = no retry */
} mv_s3_config;

/* Defaults: region us-east-1, path style, timeouts above, 4 retries; the rest empty. */
void mv_s3_config_default(mv_s3_config *c);

typedef struct mv_s3 mv_s3;

/* Check the configuration (endpoint scheme and form, bucket name, region, keys present,
 * timeouts > 0, 0 <= max_retries <= 20) and make a client. No request is sent. MV_EINVAL with
 * the field named in err on a bad value. */
mv_err mv_s3_open(const mv_s3_config *c, mv_s3 **out, char *err, size_t errlen);
/* Close the pooled connections, cleanse the secret, free. NULL is fine. No call may be running. */
void mv_s3_close(mv_s3 *s);

typedef struct mv_s3_put_opts {
    int if_none_match;     /* send If-None-Match: * ; the key existing gives MV_EEXIST */
    const char *lock_mode; /* NULL/"", "GOVERNANCE" or "COMPLIANCE" (needs retain_until) */
    int64_t retain_until;  /* unix seconds, > now; sent as ISO 8601 UTC; only with lock_mode */
    int legal_hold;        /* x-amz-object-lock-legal-hold: ON */
} mv_s3_put_opts;

/* PutObject of len bytes from memory (o may be NULL). Content-MD5 and the SHA-256 payload hash
 * are always sent, so the store refuses a body damaged on the way. */
mv_err mv_s3_put(mv_s3 *s, const char *key, const void *data, size_t len, const mv_s3_put_opts *o,
                 char *err, size_t errlen);

/* Upload len bytes read from fd (pread from offset 0; the fd's position is not used). len <=
 * part_size: one PutObject. Otherwise a multipart upload: CreateMultipartUpload (with the lock
 * headers of o), UploadPart of part_size bytes each (the last one shorter), each read twice
 * from the fd in 64 KiB pieces (once to hash, once to send) so memory stays small whatever the
 * size, each retried on its own, then CompleteMultipartUpload (with If-None-Match: * when
 * o->if_none_match). Any failure aborts the upload (AbortMultipartUpload) before returning.
 * part_size: MV_S3_MIN_PART..MV_S3_MAX_PART, at most MV_S3_MAX_PARTS parts (MV_EINVAL).
 * A file shorter than len gives MV_EIO. */
mv_err mv_s3_put_fd(mv_s3 *s, const char *key, int fd, uint64_t len, size_t part_size,
                    const mv_s3_put_opts *o, char *err, size_t errlen);

/* Where mv_s3_get delivers an object's body; non-zero stops the transfer (MV_ECANCEL). */
typedef int (*mv_s3_sink_fn)(void *ud, const void *data, size_t len);

/* GetObject, streamed to cb piece by piece. MV_ENOTFOUND when the key does not exist;
 * MV_ETOOBIG when the body is larger than max (checked against Content-Length before anything
 * is delivered, and while streaming). */
mv_err mv_s3_get(mv_s3 *s, const char *key, uint64_t max, mv_s3_sink_fn cb, void *ud, char *err,
                 size_t errlen);

typedef struct mv_s3_head_info {
    uint64_t size;
    char etag[80];        /* as sent, quotes included; "" if none */
    char lock_mode[16];   /* "GOVERNANCE", "COMPLIANCE" or "" */
    int64_t retain_until; /* unix seconds; 0 if none */
    int legal_hold;       /* 1 if ON */
    char version_id[128]; /* "" if unversioned */
} mv_s3_head_info;

/* HeadObject. MV_ENOTFOUND when the key does not exist. Stores that leave the lock headers out
 * of HEAD answers report no lock here; mv_s3_retention_get / mv_s3_legal_hold_get ask directly. */
mv_err mv_s3_head(mv_s3 *s, const char *key, mv_s3_head_info *info, char *err, size_t errlen);

/* DeleteObject; version_id NULL or "" deletes the key (a delete marker where versioning is on),
 * otherwise that version. bypass_governance sends x-amz-bypass-governance-retention: true.
 * When Object Lock refuses a version delete (AccessDenied on a request naming a version), the
 * result is MV_ESERVER with *refused = 1 and the message "... refused by the store: object is
 * under retention/legal hold (AccessDenied)"; refused may be NULL; it is 0 otherwise. */
mv_err mv_s3_delete(mv_s3 *s, const char *key, const char *version_id, int bypass_governance,
                    int *refused, char *err, size_t errlen);

/* ListObjectsV2 (1000 keys a page, continuation tokens): every key under prefix (NULL or ""
 * for all) in the store's order (ascending UTF-8 bytes on AWS). cb returning non-zero stops
 * the listing with MV_ECANCEL. */
mv_err mv_s3_list(mv_s3 *s, const char *prefix, int (*cb)(void *ud, const char *key, uint64_t size),
                  void *ud, char *err, size_t errlen);

/* ListObjectVersions under prefix: every version and delete marker, key by key. cb returning
 * non-zero stops with MV_ECANCEL. */
mv_err mv_s3_list_versions(mv_s3 *s, const char *prefix,
                           int (*cb)(void *ud, const char *key, const char *version_id,
                                     int is_latest, int is_delete_marker),
                           void *ud, char *err, size_t errlen);

/* Object Lock of the latest version of key (the bucket must have Object Lock enabled). */
mv_err mv_s3_legal_hold_put(mv_s3 *s, const char *key, int on, char *err, size_t errlen);
/* *on = 1 if a legal hold is ON; 0 when OFF or none was ever set. */
mv_err mv_s3_legal_hold_get(mv_s3 *s, const char *key, int *on, char *err, size_t errlen);
/* mode "" and *retain_until 0 when the object has no retention. */
mv_err mv_s3_retention_get(mv_s3 *s, const char *key, char mode[16], int64_t *retain_until,
                           char *err, size_t errlen);
/* PutObjectRetention: mode "GOVERNANCE" or "COMPLIANCE", retain_until unix seconds. */
mv_err mv_s3_retention_put(mv_s3 *s, const char *key, const char *mode, int64_t retain_until,
                           char *err, size_t errlen);

/* CreateBucket of the configured bucket (a LocationConstraint outside us-east-1; with
 * object_lock, x-amz-bucket-object-lock-enabled: true, which also turns versioning on).
 * BucketAlreadyOwnedByYou is MV_OK (the existing bucket is not checked for Object Lock);
 * BucketAlreadyExists (someone else's) is MV_EEXIST. */
mv_err mv_s3_bucket_create(mv_s3 *s, int object_lock, char *err, size_t errlen);

/* ListMultipartUploads under prefix; aborts every upload initiated more than older_than_s
 * seconds ago (0: all). *aborted (may be NULL) counts the uploads aborted, also on failure. */
mv_err mv_s3_sweep_uploads(mv_s3 *s, const char *prefix, int older_than_s, int *aborted, char *err,
                           size_t errlen);

/* ---- internals shared with the tests and the fuzz target -------------------------------- */

/* CreateMultipartUpload only (tests leave an upload behind for mv_s3_sweep_uploads). upload_id
 * receives the id (NUL-terminated). */
mv_err mv_s3__upload_start(mv_s3 *s, const char *key, const mv_s3_put_opts *o, char *upload_id,
                           size_t idlen, char *err, size_t errlen);

enum { MV_S3__LIST_OBJECTS = 1, MV_S3__LIST_VERSIONS, MV_S3__LIST_UPLOADS };

typedef struct mv_s3__item {
    const char *key;
    const char *version_id; /* LIST_VERSIONS; "null" for unversioned objects */
    const char *upload_id;  /* LIST_UPLOADS */
    uint64_t size;          /* LIST_OBJECTS, LIST_VERSIONS (0 for delete markers) */
    int is_latest, is_delete_marker;
    int64_t initiated; /* LIST_UPLOADS: unix seconds */
} mv_s3__item;

typedef struct mv_s3__page {
    int truncated;
    char next_token[1100]; /* NextContinuationToken (LIST_OBJECTS) */
    char next_key[1100];   /* NextKeyMarker (LIST_VERSIONS, LIST_UPLOADS) */
    char next_id[1100];    /* NextVersionIdMarker / NextUploadIdMarker */
} mv_s3__page;

/* Parse one listing page of the given kind (root ListBucketResult, ListVersionsResult or
 * ListMultipartUploadsResult; elements matched by local name). The whole page is checked
 * before cb sees any item; a non-zero cb return stops with MV_ECANCEL. MV_EPROTO on malformed
 * XML, a DOCTYPE (refused, so no entity is ever declared), a missing or oversized field;
 * MV_ETOOBIG past MV_S3_XML_MAX. */
mv_err mv_s3__parse_list(const char *xml, size_t len, int kind, mv_s3__page *pg,
                         int (*cb)(void *ud, const mv_s3__item *it), void *ud, char *err,
                         size_t errlen);

/* The Code and Message of an S3 <Error> document (each "" when absent, truncated to fit,
 * control bytes replaced). Returns 0 if xml is an <Error> document, -1 otherwise. */
int mv_s3__parse_error(const char *xml, size_t len, char *code, size_t codelen, char *msg,
                       size_t msglen);

/* ISO 8601 UTC time as S3 writes it ("2026-12-01T22:25:28Z", "...28.123Z", "...+00:00") to
 * unix seconds; -1 if it does not parse. */
int64_t mv_s3__parse_time(const char *s);

#endif

/* store.h - the content store (filesystem backend).
 *
 * Layout under root (docs/formats.md):
 *   <root>/<tenant>/objects/ab/cd/<sha256hex>          one zstd frame of the raw message
 *   <root>/<tenant>/mailboxes/<mbox>/index/<segment>   immutable index segments
 *   <root>/<tenant>/tmp/                               temp files (same filesystem)
 * <mbox> is the mailbox id made path-safe with mv_store_path_escape().
 *
 * Objects are content-addressed by SHA-256 of the raw RFC 5322 bytes; identical bytes are
 * stored once per tenant. Writes are atomic: temp file, (fsync), rename, (fsync dir). With
 * fsync_each = 0 ("chunk" durability) the caller must call mv_store_sync() before it records
 * progress that depends on the objects (the worker does so before moving a checkpoint).
 *
 * An mv_store is thread-safe (it holds only the root path); an mv_put is owned by one thread. */
#ifndef MV_STORE_H
#define MV_STORE_H

#include "mv/common.h"
#include <stdint.h>

typedef struct mv_store mv_store;
typedef struct mv_put mv_put;

typedef struct mv_put_result {
    char hash[65];         /* sha256 hex of the raw bytes */
    uint64_t raw_bytes;    /* bytes written by the caller */
    uint64_t stored_bytes; /* size of the stored object (compressed) */
    int existed;           /* 1 if an identical object was already present (deduplicated) */
} mv_put_result;

/* Creates root if missing. zstd_level 1..19. Caller frees with mv_store_close. */
mv_err mv_store_open(const char *root, int fsync_each, int zstd_level, mv_store **out, char *err,
                     size_t errlen);
void mv_store_close(mv_store *s);
const char *mv_store_root(const mv_store *s);

/* Start streaming one message. The data is hashed and compressed as it arrives; memory use is
 * bounded by zstd's window and buffers, independent of the message size. */
mv_err mv_store_put_begin(mv_store *s, const char *tenant, mv_put **out, char *err, size_t errlen);
/* Optional, before the first write: the exact raw size, when the source announces it (an IMAP
 * literal does). zstd then sizes its tables to the message instead of to its default window,
 * which for typical 10-100 KB mail saves most of the per-message set-up work. Writing more or
 * fewer bytes than announced fails the commit with MV_EINVAL. */
mv_err mv_put_set_size(mv_put *p, uint64_t size, char *err, size_t errlen);
mv_err mv_put_write(mv_put *p, const void *data, size_t len, char *err, size_t errlen);
/* Finish: names the object, renames it into place unless an object of that name exists.
 * overwrite = 1 replaces an existing object (used when re-running an unconfirmed chunk, whose
 * objects may not have reached the disk before a machine crash). Frees p in every case. */
mv_err mv_put_commit(mv_put *p, int overwrite, mv_put_result *res, char *err, size_t errlen);
/* Discard an unfinished put; frees p. NULL is fine. */
void mv_put_abort(mv_put *p);

/* Remove temp files older than max_age_s from <root>/<tenant>/tmp of every tenant (leftovers
 * of writers that crashed mid-message; they were never objects). *removed counts them. Safe
 * while other writers run, as long as max_age_s exceeds the longest message write. */
mv_err mv_store_clean_tmp(mv_store *s, int max_age_s, int *removed, char *err, size_t errlen);

/* Make every write so far durable (syncfs on the store's filesystem). */
mv_err mv_store_sync(mv_store *s, char *err, size_t errlen);

/* Stream the decompressed message to cb, verifying its SHA-256 at the end (MV_ECORRUPT on a
 * mismatch; the bytes already passed to cb must then be discarded by the caller). cb returns
 * 0 to continue, non-zero to stop (MV_ECANCEL). */
typedef int (*mv_store_sink_fn)(void *ud, const void *data, size_t len);
mv_err mv_store_get(mv_store *s, const char *tenant, const char *hash, mv_store_sink_fn cb,
                    void *ud, char *err, size_t errlen);
int mv_store_exists(mv_store *s, const char *tenant, const char *hash);

/* Walk all objects of a tenant (tenant NULL: every tenant), re-reading and re-hashing each.
 * progress (may be NULL) is called after each object with running totals; bad objects are
 * reported through bad_cb (may be NULL) and counted, the walk continues. */
typedef struct mv_verify_stats {
    uint64_t objects, ok, bad, raw_bytes, stored_bytes;
} mv_verify_stats;
typedef void (*mv_verify_bad_fn)(void *ud, const char *tenant, const char *hash, const char *why);
typedef void (*mv_verify_progress_fn)(void *ud, const mv_verify_stats *st);
mv_err mv_store_verify(mv_store *s, const char *tenant, mv_verify_bad_fn bad_cb,
                       mv_verify_progress_fn progress, void *ud, mv_verify_stats *st, char *err,
                       size_t errlen);

/* Index segments: small immutable files, written atomically (temp + fsync + rename + fsync
 * dir, always durable). Writing a segment whose name exists replaces it (a re-run of the same
 * chunk produces the same name). */
mv_err mv_store_segment_put(mv_store *s, const char *tenant, const char *mailbox, const char *name,
                            const void *data, size_t len, char *err, size_t errlen);
/* Lists segment names (sorted) via cb. */
mv_err mv_store_segment_list(mv_store *s, const char *tenant, const char *mailbox,
                             int (*cb)(void *ud, const char *name), void *ud, char *err,
                             size_t errlen);
/* Reads a whole segment into a malloc'd buffer (caller frees). Bounded to 256 MiB. */
mv_err mv_store_segment_get(mv_store *s, const char *tenant, const char *mailbox, const char *name,
                            void **data, size_t *len, char *err, size_t errlen);
/* Lists the mailboxes that have an index directory. */
mv_err mv_store_mailbox_list(mv_store *s, const char *tenant,
                             int (*cb)(void *ud, const char *mailbox), void *ud, char *err,
                             size_t errlen);

/* Path-safe form of a mailbox id: [A-Za-z0-9._@+-] kept, everything else %XX. Reversible. */
void mv_store_path_escape(const char *in, char *out, size_t outlen);
void mv_store_path_unescape(const char *in, char *out, size_t outlen);

#endif

/* store.h - the content store: one write and read path over two backends (a local directory
 * tree, S3-compatible object storage), with optional per-tenant encryption and Object Lock.
 *
 * Layout (keys are relative to the fs root or the S3 bucket; docs/store.md):
 *   <root>/<tenant>/objects/ab/cd/<sha256hex>          one zstd frame of the raw message
 *   <root>/<tenant>/mailboxes/<mbox>/index/<segment>   immutable index segments
 *   <root>/<tenant>/tmp/                               temp files (same filesystem)
 * <mbox> is the mailbox id made path-safe with mv_store_path_escape().
 *
 * Objects are content-addressed by SHA-256 of the raw RFC 5322 bytes; identical bytes are
 * stored once per tenant. For a tenant with encryption on, <sha256hex> is replaced by the hex
 * HMAC-SHA256 of the digest under the tenant's naming key, and the object (and its segments)
 * are inside the envelope of mv/objenc.h. Which backend, keys and retention a tenant has comes
 * from the policy callback (mv_store_set_policy); without one every tenant is plain, on the
 * fs backend at root. Writes are atomic: temp file, (fsync), rename, (fsync dir). With
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

#define MV_STORE_MAXKEYS 32 /* data key versions a tenant can have */

/* A store definition: where a tenant's archive lives. */
typedef struct mv_store_def {
    char name[64];  /* "" = the default store (store.root of the configuration) */
    char type[8];   /* "fs" or "s3" */
    char root[512]; /* fs */
    /* s3 */
    char endpoint[256];
    char region[64];
    char bucket[64];
    int path_style; /* 1: endpoint/bucket/key; 0: bucket.host/key */
    char access_key[128];
    char secret_key[256]; /* secret: wiped when dropped */
    char ca_file[512];
    int64_t part_size;   /* multipart threshold and part size, default 8 MiB */
    char spool_dir[512]; /* where large objects wait for their name; default /var/tmp */
} mv_store_def;

/* Everything the store needs to know about one tenant. */
typedef struct mv_store_policy {
    mv_store_def store;
    int encrypt;          /* new objects are encrypted with key_current */
    uint32_t key_current; /* version of the data key new objects use */
    int nkeys;
    uint32_t key_version[MV_STORE_MAXKEYS];
    unsigned char key[MV_STORE_MAXKEYS][32]; /* data keys (secret) */
    int has_naming;                          /* naming key present (encryption was ever on) */
    unsigned char naming[32];                /* per-tenant naming key (secret, never rotates) */
    char lock_mode[16];                      /* "", "GOVERNANCE" or "COMPLIANCE" */
    int64_t retain_seconds;                  /* with lock_mode */
} mv_store_policy;

/* Fills *out for tenant (zeroed before the call: a plain tenant on the default store needs
 * nothing filled). Called by the store when it first meets a tenant and after ttl_ms. */
typedef mv_err (*mv_store_policy_fn)(void *ud, const char *tenant, mv_store_policy *out, char *err,
                                     size_t errlen);

typedef struct mv_put_result {
    char hash[65];         /* sha256 hex of the raw bytes */
    char name[65];         /* the object's name in the store (= hash unless encrypted) */
    uint64_t raw_bytes;    /* bytes written by the caller */
    uint64_t stored_bytes; /* size of the stored object (compressed) */
    int existed;           /* 1 if an identical object was already present (deduplicated) */
} mv_put_result;

/* Creates root if missing. zstd_level 1..19. Caller frees with mv_store_close. */
mv_err mv_store_open(const char *root, int fsync_each, int zstd_level, mv_store **out, char *err,
                     size_t errlen);
void mv_store_close(mv_store *s);
const char *mv_store_root(const mv_store *s);
/* Route tenants through fn (thread-safe: the store serialises its calls). Policies are cached
 * for ttl_ms; mv_store_forget drops one tenant's (the worker does so at each task start, so a
 * task always sees the current keys and store). */
void mv_store_set_policy(mv_store *s, mv_store_policy_fn fn, void *ud, int64_t ttl_ms);
void mv_store_forget(mv_store *s, const char *tenant);
/* The tenant's policy as the store sees it now (for reports; secrets included: wipe it). */
mv_err mv_store_policy_of(mv_store *s, const char *tenant, mv_store_policy *out, char *err,
                          size_t errlen);
/* Wipe the secrets of a policy. */
void mv_store_policy_wipe(mv_store_policy *p);
/* The backend type ("fs" or "s3") and a printable location of a tenant's store. */
mv_err mv_store_where(mv_store *s, const char *tenant, char *type, size_t typelen, char *where,
                      size_t wherelen, char *err, size_t errlen);

/* Start streaming one message. The data is hashed and compressed as it arrives; memory use is
 * bounded by zstd's window and buffers, independent of the message size. */
mv_err mv_store_put_begin(mv_store *s, const char *tenant, mv_put **out, char *err, size_t errlen);
/* Optional, before the first write: the exact raw size, when the source announces it (an IMAP
 * literal does). zstd then sizes its tables to the message instead of to its default window,
 * which for typical 10-100 KB mail saves most of the per-message set-up work. Writing more or
 * fewer bytes than announced fails the commit with MV_EINVAL. */
mv_err mv_put_set_size(mv_put *p, uint64_t size, char *err, size_t errlen);
mv_err mv_put_write(mv_put *p, const void *data, size_t len, char *err, size_t errlen);
/* Ask for an S3 legal hold on the object (the mailbox it is archived for is on hold); also
 * applied when the object already existed. */
void mv_put_set_legal_hold(mv_put *p, int on);
/* Finish: names the object, renames it into place unless an object of that name exists.
 * overwrite = 1 replaces an existing object (used when re-running an unconfirmed chunk, whose
 * objects may not have reached the disk before a machine crash). Frees p in every case. */
mv_err mv_put_commit(mv_put *p, int overwrite, mv_put_result *res, char *err, size_t errlen);
/* Discard an unfinished put; frees p. NULL is fine. */
void mv_put_abort(mv_put *p);

/* Remove temp files older than max_age_s from <root>/<tenant>/tmp of every tenant (leftovers
 * of writers that crashed mid-message; they were never objects) and, for every S3 store the
 * store has opened, multipart uploads started more than max_age_s ago. *removed counts them.
 * Safe while other writers run, as long as max_age_s exceeds the longest message write. */
mv_err mv_store_clean_tmp(mv_store *s, int max_age_s, int *removed, char *err, size_t errlen);

/* Create the bucket of an S3 store definition (with Object Lock when asked); a bucket this
 * account already owns is fine. */
mv_err mv_store_create_bucket(const mv_store_def *def, int object_lock, char *err, size_t errlen);

/* The same for one store definition ("" name: the default store), opening it if needed. */
mv_err mv_store_sweep_def(mv_store *s, const mv_store_def *def, int max_age_s, int *removed,
                          char *err, size_t errlen);

/* Asynchronous S3 commits (the worker in chunk mode): mv_put_commit of an object that fits in
 * one part queues its upload (8 threads per S3 store) and returns at once, with existed = 0
 * (whether it was a duplicate is not known yet: mv_store_sync_dups tells); mv_store_sync then
 * waits for every upload
 * the calling thread queued and returns the first failure. Whoever turns this on must call
 * mv_store_sync before relying on its commits, as in chunk mode on the filesystem. */
void mv_store_set_async(mv_store *s, int on);
/* Wait for the calling thread's queued uploads and forget their failures (a task that failed
 * half-way, before the next one starts). */
void mv_store_settle(mv_store *s);

/* Make every write so far durable (syncfs on the default store's filesystem; the calling
 * thread's queued S3 uploads, see mv_store_set_async). */
mv_err mv_store_sync(mv_store *s, char *err, size_t errlen);
/* The same, adding to *dup_n / *dup_bytes the queued uploads that found their object already
 * stored (commit reported them with existed = 0 and their own size as stored_bytes). */
mv_err mv_store_sync_dups(mv_store *s, uint64_t *dup_n, uint64_t *dup_bytes, char *err,
                          size_t errlen);

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
    uint64_t encrypted; /* good objects inside the encryption envelope */
    uint64_t retained;  /* good objects under Object Lock retention (the policy's mode, when the
                         * tenant has one: an object without it is bad) */
    uint64_t held;      /* good objects under an S3 legal hold */
} mv_verify_stats;
typedef void (*mv_verify_bad_fn)(void *ud, const char *tenant, const char *hash, const char *why);
typedef void (*mv_verify_progress_fn)(void *ud, const mv_verify_stats *st);
mv_err mv_store_verify(mv_store *s, const char *tenant, mv_verify_bad_fn bad_cb,
                       mv_verify_progress_fn progress, void *ud, mv_verify_stats *st, char *err,
                       size_t errlen);

/* Object Lock of a message object: mode ("" if none), retain-until (Unix s), legal hold.
 * MV_EINVAL on a store without Object Lock (the filesystem). */
mv_err mv_store_lock_info(mv_store *s, const char *tenant, const char *hash, char mode[16],
                          int64_t *retain_until, int *legal_hold, char *err, size_t errlen);
/* Set or clear the S3 legal hold of a message object. */
mv_err mv_store_legal_hold(mv_store *s, const char *tenant, const char *hash, int on, char *err,
                           size_t errlen);
/* Delete a message object (on S3 every version of it). *refused = 1 when the store refused
 * because of retention or a legal hold (the object is then still there). */
mv_err mv_store_delete(mv_store *s, const char *tenant, const char *hash, int *refused, char *err,
                       size_t errlen);
/* Delete one index segment (same *refused). */
mv_err mv_store_segment_del(mv_store *s, const char *tenant, const char *mailbox, const char *name,
                            int *refused, char *err, size_t errlen);

/* Copy a tenant's archive (objects and index segments, as stored: sealed objects stay sealed)
 * from one store to another, each copy read back and checked (an object against its name, a
 * segment byte for byte). Keys already on the target are kept (and checked with
 * verify_existing), so a run that died is resumed by running again; after: keys up to and
 * including it are skipped without a look (a resume mark). limit > 0 stops after that many
 * keys (stats->stopped = 1). New copies get the tenant's current retention. progress is
 * called after each key; non-zero stops (MV_ECANCEL). The definitions name the stores ("" =
 * the default). */
typedef struct mv_migrate_stats {
    uint64_t copied, present, verified, bytes;
    int stopped;
} mv_migrate_stats;
typedef int (*mv_migrate_fn)(void *ud, const char *key, const mv_migrate_stats *st);
mv_err mv_store_migrate(mv_store *s, const char *tenant, const mv_store_def *from,
                        const mv_store_def *to, const char *after, int verify_existing,
                        uint64_t limit, mv_migrate_fn progress, void *ud, mv_migrate_stats *st,
                        char *err, size_t errlen);

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

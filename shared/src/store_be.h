/* store_be.h - the backend interface under the content store (internal to libmailvault).
 *
 * store.c owns everything that is the same for every backend: hashing, compression, the
 * encryption envelope, object naming, reading back and checking, verify, segment encoding.
 * A backend only moves bytes to and from keys. Keys are '/'-separated relative names:
 *   <tenant>/objects/ab/cd/<name>             message objects
 *   <tenant>/mailboxes/<escaped>/index/<seg>  index segments
 * store.c validates every component before it builds a key, so a backend may map keys to
 * paths or URLs without checking them again.
 *
 * Backends: store_fs.c (a directory tree, temp file + rename) and store_s3.c (S3-compatible
 * object storage). Every function returns MV_OK or an mv_err with err filled. */
#ifndef MV_STORE_BE_H
#define MV_STORE_BE_H

#include "mv/store.h"

typedef struct mv_be mv_be;
typedef struct mv_be_writer mv_be_writer;

/* Object Lock attributes asked for at write time (S3 only; the fs backend ignores them). */
typedef struct mv_be_lock {
    const char *mode;     /* NULL, "GOVERNANCE" or "COMPLIANCE" */
    int64_t retain_until; /* Unix seconds, with mode */
    int legal_hold;
} mv_be_lock;

typedef struct mv_be_entry {
    const char *key;
    uint64_t size;
    int regular; /* 0: something that is not a plain object (fs: a directory, link, fifo) */
} mv_be_entry;

typedef struct mv_be_ops {
    const char *type; /* "fs" or "s3" */
    /* Start an object. The bytes arrive through w_write; nothing is visible under any key
     * before w_commit. */
    mv_err (*w_begin)(mv_be *b, const char *tenant, mv_be_writer **w, char *err, size_t errlen);
    mv_err (*w_write)(mv_be_writer *w, const void *data, size_t len, char *err, size_t errlen);
    /* Publish the written bytes at key. overwrite 0: an existing object is kept (*existed = 1,
     * *stored = its size). Frees w in every case. */
    mv_err (*w_commit)(mv_be_writer *w, const char *key, int overwrite, const mv_be_lock *lock,
                       int *existed, uint64_t *stored, char *err, size_t errlen);
    void (*w_abort)(mv_be_writer *w);
    /* Stream an object to cb (MV_ENOTFOUND if absent). *stored: bytes read. max bounds them. */
    mv_err (*read)(mv_be *b, const char *key, uint64_t max, mv_store_sink_fn cb, void *ud,
                   uint64_t *stored, char *err, size_t errlen);
    /* 1 present, 0 absent, -1 error (err filled). */
    int (*exists)(mv_be *b, const char *key, char *err, size_t errlen);
    /* Small object written whole and durably, replacing any object of that name. */
    mv_err (*blob_put)(mv_be *b, const char *tenant, const char *key, const void *data, size_t len,
                       const mv_be_lock *lock, char *err, size_t errlen);
    /* Every entry under prefix (which ends in '/'), in strcmp order of key. cb != 0 stops
     * (MV_ECANCEL). A missing prefix is an empty listing. */
    mv_err (*list)(mv_be *b, const char *prefix, int (*cb)(void *ud, const mv_be_entry *e),
                   void *ud, char *err, size_t errlen);
    /* The top-level names (tenants) in strcmp order. */
    mv_err (*list_top)(mv_be *b, int (*cb)(void *ud, const char *name), void *ud, char *err,
                       size_t errlen);
    /* Make every commit so far durable (fs chunk mode: syncfs; S3 with asynchronous uploads:
     * wait for the calling thread's uploads and report their first error); NULL when commits
     * are durable when they return. *dup_n / *dup_bytes (may be NULL) are increased by the
     * queued objects that turned out to exist already (counted as stored at commit). */
    mv_err (*sync)(mv_be *b, uint64_t *dup_n, uint64_t *dup_bytes, char *err, size_t errlen);
    /* Wait for the calling thread's asynchronous uploads and forget their errors (a task that
     * failed must not pass its leftovers to the next one); NULL if there are none. */
    void (*settle)(mv_be *b);
    /* Asynchronous commits on or off (S3); NULL for backends that have none. */
    mv_err (*set_async)(mv_be *b, int on, char *err, size_t errlen);
    /* Remove leftovers of writers that died (fs temp files, S3 multipart uploads). */
    mv_err (*sweep)(mv_be *b, int max_age_s, int *removed, char *err, size_t errlen);
    /* Delete an object. *refused = 1 when the store refused because of retention or a hold. */
    mv_err (*del)(mv_be *b, const char *key, int *refused, char *err, size_t errlen);
    /* Object Lock state of an object; NULL for backends without it. */
    mv_err (*lock_get)(mv_be *b, const char *key, char mode[16], int64_t *retain_until,
                       int *legal_hold, char *err, size_t errlen);
    mv_err (*hold_set)(mv_be *b, const char *key, int on, char *err, size_t errlen);
    void (*close)(mv_be *b);
} mv_be_ops;

struct mv_be {
    const mv_be_ops *ops;
};

mv_err mv_be_fs_open(const char *root, int fsync_each, mv_be **out, char *err, size_t errlen);
const char *mv_be_fs_root(const mv_be *b);
mv_err mv_be_s3_open(const mv_store_def *def, mv_be **out, char *err, size_t errlen);

#endif

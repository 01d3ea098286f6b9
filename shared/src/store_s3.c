/* store_s3.c - the S3 backend of the content store (S3-compatible object storage, mv/s3.h).
 *
 * Why it looks like this:
 *  - An object's name is known only after its last byte, and S3 has no rename. A writer keeps
 *    the (compressed, maybe encrypted) bytes in memory up to one part (part_size, 8 MiB by
 *    default), which is nearly every message: commit is then one PutObject with
 *    If-None-Match: *, so two workers storing the same message cannot overwrite each other
 *    and the loser learns the object exists (412). A larger object spills to a spool file
 *    that is unlinked as soon as it is created (a crashed worker leaves nothing behind) and is
 *    sent as a multipart upload after a HEAD shows the name is free; memory stays at one
 *    buffer whatever the size. An upload that dies half-way is invisible (S3 publishes a
 *    multipart object only at Complete) and is aborted by the client or, after a crash, by
 *    sweep (ListMultipartUploads).
 *  - A PutObject that returned is durable, so commit's overwrite (the filesystem's repair of
 *    objects a machine crash may have cut short) is not needed here and is ignored: it would
 *    only add versions under Object Lock.
 *  - Deleting under versioning (which Object Lock turns on) removes each version explicitly;
 *    a plain DELETE would only add a delete marker and leave the data, which would let
 *    mailvault believe in a deletion that did not happen.
 * Contracts: thread-safe (mv_s3 is); a writer belongs to one thread. */
#define _GNU_SOURCE /* O_TMPFILE */
#include "mv/s3.h"
#include "store_be.h"

#include <errno.h>
#include <pthread.h>
#include <fcntl.h>
#include <limits.h>
#include <openssl/crypto.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define DEFAULT_PART (8u << 20)

#define UPLOADERS 8             /* threads of the asynchronous uploader */
#define QUEUE_MAX 64            /* objects waiting for an uploader */
#define QUEUE_BYTES (64u << 20) /* and their bytes */
#define SUBMITTERS 64           /* threads that can have uploads in flight at once */

/* One object waiting for (or in) an upload; owns its bytes. */
typedef struct job {
    struct job *next;
    char key[MV_S3_KEY_MAX + 1];
    unsigned char *buf;
    size_t len;
    char mode[16];
    mv_s3_put_opts o;
    struct submitter *who;
} job;

/* A thread's uploads in flight and the first error among them, until it calls sync. */
typedef struct submitter {
    pthread_t tid;
    int used;
    int pending;
    uint64_t dup_n, dup_bytes; /* uploads that found the object already there (412) */
    mv_err err;
    char msg[MV_ERRLEN];
} submitter;

typedef struct s3_be {
    mv_be base;
    mv_s3 *c;
    size_t part;
    char spool[512];
    char bucket[64];
    /* asynchronous uploads (mv_store_set_async): commit queues a small object and returns;
     * sync waits for the calling thread's uploads and reports their first error */
    int async;
    pthread_mutex_t mu;
    pthread_cond_t cv;   /* a job was queued, or the uploaders must stop */
    pthread_cond_t done; /* a job finished, or room in the queue */
    job *head, *tail;
    size_t queued, queued_bytes;
    int stopping, nthreads;
    pthread_t threads[UPLOADERS];
    submitter subs[SUBMITTERS];
} s3_be;

struct mv_be_writer {
    s3_be *b;
    unsigned char *buf;
    size_t len, cap;
    int fd; /* spool file once the object outgrew one part, else -1 */
    uint64_t total;
};

static mv_err spool_open(s3_be *b, int *fd, char *err, size_t errlen)
{
    *fd = open(b->spool, O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
    if (*fd >= 0) return MV_OK;
    /* filesystems without O_TMPFILE: a named file, unlinked at once */
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s/mailvault-spool-XXXXXX", b->spool);
    *fd = mkostemp(path, O_CLOEXEC);
    if (*fd < 0)
        return mv_seterr(err, errlen, MV_EIO, "spool file in %s: %s", b->spool, strerror(errno));
    unlink(path);
    return MV_OK;
}

static mv_err s3_w_begin(mv_be *be, const char *tenant, mv_be_writer **out, char *err,
                         size_t errlen)
{
    (void)tenant;
    *out = calloc(1, sizeof **out);
    if (!*out) return mv_seterr(err, errlen, MV_ENOMEM, "out of memory");
    (*out)->b = (s3_be *)be;
    (*out)->fd = -1;
    return MV_OK;
}

static mv_err s3_w_write(mv_be_writer *w, const void *data, size_t len, char *err, size_t errlen)
{
    if (w->fd < 0 && w->len + len > w->b->part) {
        /* outgrows one part: everything so far and from now on goes to the spool file */
        mv_err rc = spool_open(w->b, &w->fd, err, errlen);
        if (rc) return rc;
        if (w->len > 0 && mv_write_all(w->fd, w->buf, w->len) != 0)
            return mv_seterr(err, errlen, MV_EIO, "write spool file: %s", strerror(errno));
        free(w->buf);
        w->buf = NULL;
        w->len = w->cap = 0;
    }
    if (w->fd >= 0) {
        if (mv_write_all(w->fd, data, len) != 0)
            return mv_seterr(err, errlen, MV_EIO, "write spool file: %s", strerror(errno));
    } else {
        if (w->len + len > w->cap) {
            size_t cap = w->cap ? w->cap : 64 * 1024;
            while (cap < w->len + len)
                cap *= 2;
            void *p = realloc(w->buf, cap);
            if (!p) return mv_seterr(err, errlen, MV_ENOMEM, "out of memory");
            w->buf = p;
            w->cap = cap;
        }
        memcpy(w->buf + w->len, data, len);
        w->len += len;
    }
    w->total += len;
    return MV_OK;
}

static void s3_w_abort(mv_be_writer *w)
{
    if (!w) return;
    if (w->fd >= 0) close(w->fd);
    if (w->buf) OPENSSL_cleanse(w->buf, w->len);
    free(w->buf);
    free(w);
}

static void opts_of(const mv_be_lock *lock, mv_s3_put_opts *o)
{
    memset(o, 0, sizeof *o);
    o->if_none_match = 1;
    if (lock && lock->mode) {
        o->lock_mode = lock->mode;
        o->retain_until = lock->retain_until;
    }
    if (lock) o->legal_hold = lock->legal_hold;
}

/* ---- asynchronous uploads ----------------------------------------------------------------- */

static void *uploader(void *arg)
{
    s3_be *b = arg;
    pthread_mutex_lock(&b->mu);
    for (;;) {
        while (!b->head && !b->stopping)
            pthread_cond_wait(&b->cv, &b->mu);
        if (!b->head) break; /* stopping and nothing left */
        job *j = b->head;
        b->head = j->next;
        if (!b->head) b->tail = NULL;
        pthread_mutex_unlock(&b->mu);
        char err[MV_ERRLEN];
        j->o.lock_mode = j->mode[0] ? j->mode : NULL;
        mv_err rc = mv_s3_put(b->c, j->key, j->buf, j->len, &j->o, err, sizeof err);
        pthread_mutex_lock(&b->mu);
        submitter *w = j->who;
        if (rc == MV_EEXIST) { /* deduplicated */
            rc = MV_OK;
            w->dup_n++;
            w->dup_bytes += j->len;
        }
        if (rc && !w->err) {
            w->err = rc;
            snprintf(w->msg, sizeof w->msg, "%s", err);
        }
        w->pending--;
        b->queued--;
        b->queued_bytes -= j->len;
        pthread_cond_broadcast(&b->done);
        OPENSSL_cleanse(j->buf, j->len);
        free(j->buf);
        free(j);
    }
    pthread_mutex_unlock(&b->mu);
    return NULL;
}

/* The calling thread's accounting entry (mutex held); NULL when the table is full. */
static submitter *me(s3_be *b, int create)
{
    pthread_t self = pthread_self();
    submitter *free_slot = NULL;
    for (int i = 0; i < SUBMITTERS; i++) {
        submitter *w = &b->subs[i];
        if (w->used && pthread_equal(w->tid, self)) return w;
        if (!w->used && !free_slot) free_slot = w;
    }
    if (!create || !free_slot) return NULL;
    memset(free_slot, 0, sizeof *free_slot);
    free_slot->used = 1;
    free_slot->tid = self;
    return free_slot;
}

/* Hand the writer's bytes to the uploaders; 1 if queued (the writer no longer owns them). */
static int enqueue(s3_be *b, mv_be_writer *w, const char *key, const mv_s3_put_opts *o)
{
    job *j = calloc(1, sizeof *j);
    if (!j || strlen(key) > MV_S3_KEY_MAX) {
        free(j);
        return 0;
    }
    snprintf(j->key, sizeof j->key, "%s", key);
    j->o = *o;
    if (o->lock_mode) snprintf(j->mode, sizeof j->mode, "%s", o->lock_mode);
    j->o.lock_mode = NULL;
    pthread_mutex_lock(&b->mu);
    submitter *who = me(b, 1);
    if (!who || b->stopping) {
        pthread_mutex_unlock(&b->mu);
        free(j);
        return 0;
    }
    while (b->queued >= QUEUE_MAX || (b->queued && b->queued_bytes + w->len > QUEUE_BYTES))
        pthread_cond_wait(&b->done, &b->mu);
    j->buf = w->buf;
    j->len = w->len;
    j->who = who;
    w->buf = NULL;
    w->len = w->cap = 0;
    who->pending++;
    b->queued++;
    b->queued_bytes += j->len;
    if (b->tail)
        b->tail->next = j;
    else
        b->head = j;
    b->tail = j;
    pthread_cond_signal(&b->cv);
    pthread_mutex_unlock(&b->mu);
    return 1;
}

/* Wait for the calling thread's uploads; their first error (cleared) unless drop, and how many
 * of them were duplicates. */
static mv_err wait_mine(s3_be *b, int drop, uint64_t *dup_n, uint64_t *dup_bytes, char *err,
                        size_t errlen)
{
    mv_err rc = MV_OK;
    pthread_mutex_lock(&b->mu);
    submitter *w = me(b, 0);
    if (w) {
        while (w->pending > 0)
            pthread_cond_wait(&b->done, &b->mu);
        if (w->err && !drop) rc = mv_seterr(err, errlen, w->err, "%s", w->msg);
        if (dup_n) *dup_n += w->dup_n;
        if (dup_bytes) *dup_bytes += w->dup_bytes;
        w->used = 0; /* the entry is free again: this thread has nothing in flight */
    }
    pthread_mutex_unlock(&b->mu);
    return rc;
}

static mv_err s3_sync(mv_be *be, uint64_t *dup_n, uint64_t *dup_bytes, char *err, size_t errlen)
{
    s3_be *b = (s3_be *)be;
    return b->async ? wait_mine(b, 0, dup_n, dup_bytes, err, errlen) : MV_OK;
}

static void s3_settle(mv_be *be)
{
    s3_be *b = (s3_be *)be;
    if (b->async) wait_mine(b, 1, NULL, NULL, NULL, 0);
}

static mv_err s3_set_async(mv_be *be, int on, char *err, size_t errlen)
{
    s3_be *b = (s3_be *)be;
    pthread_mutex_lock(&b->mu);
    mv_err rc = MV_OK;
    if (on && !b->async) {
        for (; b->nthreads < UPLOADERS; b->nthreads++)
            if (pthread_create(&b->threads[b->nthreads], NULL, uploader, b) != 0) break;
        if (b->nthreads == 0)
            rc = mv_seterr(err, errlen, MV_ERR, "cannot start the S3 upload threads");
    }
    if (rc == MV_OK) b->async = on && b->nthreads > 0;
    pthread_mutex_unlock(&b->mu);
    return rc;
}

static mv_err s3_w_commit(mv_be_writer *w, const char *key, int overwrite, const mv_be_lock *lock,
                          int *existed, uint64_t *stored, char *err, size_t errlen)
{
    (void)overwrite; /* see the top of the file */
    s3_be *b = w->b;
    mv_s3_put_opts o;
    opts_of(lock, &o);
    *existed = 0;
    *stored = w->total;
    mv_err rc;
    if (w->fd < 0 && b->async && enqueue(b, w, key, &o)) {
        /* queued: sync reports how it went; whether it already existed is not known here */
        rc = MV_OK;
    } else if (w->fd < 0) {
        rc = mv_s3_put(b->c, key, w->buf, w->len, &o, err, errlen);
    } else {
        mv_s3_head_info hi;
        rc = mv_s3_head(b->c, key, &hi, err, errlen);
        if (rc == MV_OK) {
            rc = MV_EEXIST;
        } else if (rc == MV_ENOTFOUND) {
            rc = mv_s3_put_fd(b->c, key, w->fd, w->total, b->part, &o, err, errlen);
        }
    }
    if (rc == MV_EEXIST) { /* the same content is there already: deduplicated */
        *existed = 1;
        rc = MV_OK;
    }
    s3_w_abort(w);
    return rc;
}

typedef struct rfwd {
    mv_store_sink_fn cb;
    void *ud;
    uint64_t n;
} rfwd;

static int read_fwd(void *ud, const void *data, size_t len)
{
    rfwd *f = ud;
    f->n += len;
    return f->cb(f->ud, data, len);
}

static mv_err s3_read(mv_be *be, const char *key, uint64_t max, mv_store_sink_fn cb, void *ud,
                      uint64_t *stored, char *err, size_t errlen)
{
    s3_be *b = (s3_be *)be;
    rfwd f = {cb, ud, 0};
    mv_err rc = mv_s3_get(b->c, key, max, read_fwd, &f, err, errlen);
    *stored = f.n;
    return rc;
}

static int s3_exists(mv_be *be, const char *key, char *err, size_t errlen)
{
    s3_be *b = (s3_be *)be;
    mv_s3_head_info hi;
    mv_err rc = mv_s3_head(b->c, key, &hi, err, errlen);
    if (rc == MV_OK) return 1;
    if (rc == MV_ENOTFOUND) return 0;
    return -1;
}

static mv_err s3_blob_put(mv_be *be, const char *tenant, const char *key, const void *data,
                          size_t len, const mv_be_lock *lock, char *err, size_t errlen)
{
    (void)tenant;
    s3_be *b = (s3_be *)be;
    mv_s3_put_opts o;
    opts_of(lock, &o);
    o.if_none_match = 0; /* a re-run of a chunk rewrites its segment */
    return mv_s3_put(b->c, key, data, len, &o, err, errlen);
}

typedef struct lfwd {
    int (*cb)(void *ud, const mv_be_entry *e);
    void *ud;
} lfwd;

static int list_fwd(void *ud, const char *key, uint64_t size)
{
    lfwd *f = ud;
    mv_be_entry e = {key, size, 1};
    return f->cb(f->ud, &e);
}

static mv_err s3_list(mv_be *be, const char *prefix, int (*cb)(void *ud, const mv_be_entry *e),
                      void *ud, char *err, size_t errlen)
{
    s3_be *b = (s3_be *)be;
    lfwd f = {cb, ud};
    return mv_s3_list(b->c, prefix, list_fwd, &f, err, errlen);
}

typedef struct topfwd {
    int (*cb)(void *ud, const char *name);
    void *ud;
    char last[256];
} topfwd;

static int top_fwd(void *ud, const char *key, uint64_t size)
{
    (void)size;
    topfwd *t = ud;
    const char *slash = strchr(key, '/');
    size_t n = slash ? (size_t)(slash - key) : strlen(key);
    if (!slash || n >= sizeof t->last) return 0;
    if (strlen(t->last) == n && memcmp(t->last, key, n) == 0) return 0;
    memcpy(t->last, key, n);
    t->last[n] = '\0';
    return t->cb(t->ud, t->last);
}

/* Lists every key once: fine for verify of a whole store, which reads every object anyway. */
static mv_err s3_list_top(mv_be *be, int (*cb)(void *ud, const char *name), void *ud, char *err,
                          size_t errlen)
{
    s3_be *b = (s3_be *)be;
    topfwd t = {cb, ud, ""};
    return mv_s3_list(b->c, "", top_fwd, &t, err, errlen);
}

static mv_err s3_sweep(mv_be *be, int max_age_s, int *removed, char *err, size_t errlen)
{
    s3_be *b = (s3_be *)be;
    *removed = 0;
    return mv_s3_sweep_uploads(b->c, "", max_age_s, removed, err, errlen);
}

typedef struct vlist {
    const char *key;
    char (*ids)[128];
    size_t n, cap;
} vlist;

static int version_of(void *ud, const char *key, const char *version_id, int is_latest,
                      int is_delete_marker)
{
    (void)is_latest;
    (void)is_delete_marker;
    vlist *v = ud;
    if (strcmp(key, v->key) != 0) return 0; /* a longer key with this one as prefix */
    char id[128];
    snprintf(id, sizeof id, "%s", version_id);
    return mv_grow_push((void **)&v->ids, &v->n, &v->cap, sizeof id, id) != 0;
}

static mv_err s3_del(mv_be *be, const char *key, int *refused, char *err, size_t errlen)
{
    s3_be *b = (s3_be *)be;
    *refused = 0;
    vlist v = {key, NULL, 0, 0};
    mv_err rc = mv_s3_list_versions(b->c, key, version_of, &v, err, errlen);
    if (rc == MV_ECANCEL) rc = mv_seterr(err, errlen, MV_ENOMEM, "out of memory");
    if (rc == MV_OK && v.n == 0) rc = mv_seterr(err, errlen, MV_ENOTFOUND, "%s not found", key);
    for (size_t i = 0; rc == MV_OK && i < v.n; i++) {
        const char *id = strcmp(v.ids[i], "null") == 0 ? NULL : v.ids[i];
        int r = 0;
        rc = mv_s3_delete(b->c, key, id, 0, &r, err, errlen);
        if (r) *refused = 1;
    }
    free(v.ids);
    return rc;
}

/* One HEAD gives mode, retain-until and hold: AWS sends the x-amz-object-lock-* headers to a
 * caller allowed s3:GetObjectRetention and s3:GetObjectLegalHold, SeaweedFS always. */
static mv_err s3_lock_get(mv_be *be, const char *key, char mode[16], int64_t *retain_until,
                          int *legal_hold, char *err, size_t errlen)
{
    s3_be *b = (s3_be *)be;
    mv_s3_head_info hi;
    mv_err rc = mv_s3_head(b->c, key, &hi, err, errlen);
    if (rc) return rc;
    snprintf(mode, 16, "%s", hi.lock_mode);
    *retain_until = hi.retain_until;
    *legal_hold = hi.legal_hold;
    return MV_OK;
}

static mv_err s3_hold_set(mv_be *be, const char *key, int on, char *err, size_t errlen)
{
    return mv_s3_legal_hold_put(((s3_be *)be)->c, key, on, err, errlen);
}

static void s3_close(mv_be *be)
{
    s3_be *b = (s3_be *)be;
    if (!b) return;
    pthread_mutex_lock(&b->mu);
    b->stopping = 1; /* the uploaders finish the queue first */
    pthread_cond_broadcast(&b->cv);
    pthread_mutex_unlock(&b->mu);
    for (int i = 0; i < b->nthreads; i++)
        pthread_join(b->threads[i], NULL);
    pthread_mutex_destroy(&b->mu);
    pthread_cond_destroy(&b->cv);
    pthread_cond_destroy(&b->done);
    mv_s3_close(b->c);
    free(b);
}

static const mv_be_ops s3_ops = {
    .type = "s3",
    .w_begin = s3_w_begin,
    .w_write = s3_w_write,
    .w_commit = s3_w_commit,
    .w_abort = s3_w_abort,
    .read = s3_read,
    .exists = s3_exists,
    .blob_put = s3_blob_put,
    .list = s3_list,
    .list_top = s3_list_top,
    .sync = s3_sync,
    .settle = s3_settle,
    .set_async = s3_set_async,
    .sweep = s3_sweep,
    .del = s3_del,
    .lock_get = s3_lock_get,
    .hold_set = s3_hold_set,
    .close = s3_close,
};

/* The S3 client's configuration for a store definition (the secret copied: wipe c). */
static void config_of(const mv_store_def *def, mv_s3_config *c)
{
    mv_s3_config_default(c);
    snprintf(c->endpoint, sizeof c->endpoint, "%s", def->endpoint);
    if (def->region[0]) snprintf(c->region, sizeof c->region, "%s", def->region);
    snprintf(c->bucket, sizeof c->bucket, "%s", def->bucket);
    c->path_style = def->path_style;
    snprintf(c->access_key, sizeof c->access_key, "%s", def->access_key);
    snprintf(c->secret_key, sizeof c->secret_key, "%s", def->secret_key);
    snprintf(c->ca_file, sizeof c->ca_file, "%s", def->ca_file);
}

mv_err mv_store_create_bucket(const mv_store_def *def, int object_lock, char *err, size_t errlen)
{
    mv_s3_config c;
    mv_s3 *s3 = NULL;
    config_of(def, &c);
    mv_err e = mv_s3_open(&c, &s3, err, errlen);
    OPENSSL_cleanse(c.secret_key, sizeof c.secret_key);
    if (e == MV_OK) e = mv_s3_bucket_create(s3, object_lock, err, errlen);
    mv_s3_close(s3);
    return e;
}

mv_err mv_be_s3_open(const mv_store_def *def, mv_be **out, char *err, size_t errlen)
{
    *out = NULL;
    mv_s3_config c;
    config_of(def, &c);
    s3_be *b = calloc(1, sizeof *b);
    mv_err rc = b ? MV_OK : mv_seterr(err, errlen, MV_ENOMEM, "out of memory");
    if (rc == MV_OK) rc = mv_s3_open(&c, &b->c, err, errlen);
    OPENSSL_cleanse(c.secret_key, sizeof c.secret_key);
    if (rc) {
        char why[MV_ERRLEN];
        snprintf(why, sizeof why, "%s", err ? err : "");
        free(b);
        return mv_seterr(err, errlen, rc, "store %s: %s", def->name, why);
    }
    b->base.ops = &s3_ops;
    pthread_mutex_init(&b->mu, NULL);
    pthread_cond_init(&b->cv, NULL);
    pthread_cond_init(&b->done, NULL);
    b->part = def->part_size > 0 ? (size_t)def->part_size : DEFAULT_PART;
    if (b->part < MV_S3_MIN_PART) b->part = MV_S3_MIN_PART;
    snprintf(b->spool, sizeof b->spool, "%s", def->spool_dir[0] ? def->spool_dir : "/var/tmp");
    snprintf(b->bucket, sizeof b->bucket, "%s", def->bucket);
    *out = &b->base;
    return MV_OK;
}

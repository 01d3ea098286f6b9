/* store.c - filesystem content store: content-addressed message objects and index segments.
 *
 * Why it looks like this:
 *  - An object is one zstd frame (checksum flag on) of the raw message, named by the SHA-256 of
 *    the raw bytes. The name is only known once the last byte has arrived, so a put streams into
 *    a temp file in <tenant>/tmp (same filesystem) and is renamed into objects/ab/cd/ at commit.
 *    rename(2) is atomic, so a reader sees either no object or a complete one; a crash leaves at
 *    worst an orphan temp file, never a partial object.
 *  - Memory per put is bounded: SHA-256 and the zstd compressor consume the input as it arrives
 *    and compressed output goes through one 128 KiB buffer to write(2).
 *  - zstd contexts are expensive to create (several MB of tables at level 3 with an unknown
 *    source size), so finished puts return their context bundle (CCtx, digest ctx, buffer) to
 *    a small mutex-protected cache in the mv_store. This is the only mutable shared state.
 *  - Durability: with fsync_each the object file and its directory are fsync'd before commit
 *    returns. Without it ("chunk" mode) nothing is synced and the caller must call
 *    mv_store_sync() (syncfs) before recording progress that depends on the objects.
 *    Segments are always written durably.
 *  - Every path component built from caller input is validated first (tenant: mv_name_valid,
 *    hash: 64 lowercase hex, segment name: [A-Za-z0-9._-]) or escaped (mailbox).
 *
 * Contracts: mv_store is thread-safe and must outlive every mv_put begun on it; an mv_put is
 * used by one thread. Objects and reads are capped at 1 GiB of raw data (MV_ETOOBIG on put,
 * MV_ECORRUPT on get, which also protects readers from decompression bombs). */
#define _GNU_SOURCE /* syncfs(2) */
#include "mv/store.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <openssl/evp.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <zstd.h>

#define IO_BUF (128 * 1024)             /* write buffer of a put, read buffer of a get */
#define PUT_CACHE_MAX 8                 /* idle put contexts kept for reuse */
#define RAW_MAX ((uint64_t)1 << 30)     /* largest message accepted / produced */
#define SEGMENT_MAX ((size_t)256 << 20) /* largest index segment */
#define SEGNAME_MAX 200
#define FILE_MODE 0640
#define DIR_MODE 0750

struct mv_store {
    char *root;
    int fsync_each;
    int level;
    EVP_MD *sha256; /* fetched once; EVP_sha256() would re-fetch on every init */
    pthread_mutex_t mu;
    mv_put *idle[PUT_CACHE_MAX];
    int nidle;
};

struct mv_put {
    mv_store *s;
    ZSTD_CCtx *cctx;
    EVP_MD_CTX *md;
    unsigned char *buf; /* compressed bytes waiting for write(2) */
    size_t buflen;
    int fd;
    mv_err failed; /* sticky error of an earlier mv_put_write */
    uint64_t raw, stored;
    uint64_t announced; /* exact raw size promised by mv_put_set_size, if has_size */
    int has_size;
    char tenant[64];
    char tmp[PATH_MAX]; /* temp file path, "" once it no longer exists */
};

/* ---- small helpers ------------------------------------------------------------------------ */

static int is_hash(const char *h)
{
    if (!h) return 0;
    size_t i = 0;
    for (; h[i]; i++) {
        char c = h[i];
        if (i >= 64 || !((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return 0;
    }
    return i == 64;
}

static int is_hex2(const char *n)
{
    for (int i = 0; i < 2; i++)
        if (!((n[i] >= '0' && n[i] <= '9') || (n[i] >= 'a' && n[i] <= 'f'))) return 0;
    return n[2] == '\0';
}

static int segname_valid(const char *n)
{
    if (!n || !n[0] || n[0] == '.') return 0;
    size_t i = 0;
    for (; n[i]; i++) {
        char c = n[i];
        if (i >= SEGNAME_MAX) return 0;
        if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '_' || c == '-'))
            return 0;
    }
    return 1;
}

/* snprintf into a path buffer; MV_EINVAL if it does not fit. */
static mv_err mkpath(char *out, size_t outlen, char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));
static mv_err mkpath(char *out, size_t outlen, char *err, size_t errlen, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(out, outlen, fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= outlen) return mv_seterr(err, errlen, MV_EINVAL, "path too long");
    return MV_OK;
}

static int write_all(int fd, const void *data, size_t len)
{
    const unsigned char *p = data;
    while (len > 0) {
        ssize_t n = write(fd, p, len);
        if (n < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

static int fsync_path(const char *dir)
{
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) return -1;
    int rc = fsync(fd);
    int e = errno;
    close(fd);
    errno = e;
    return rc;
}

/* Copy the parent directory of path into out ("." if none, cut to fit outlen). */
static void parent_of(const char *path, char *out, size_t outlen)
{
    const char *slash = strrchr(path, '/');
    size_t n = slash ? (slash == path ? 1 : (size_t)(slash - path)) : 1;
    if (n >= outlen) n = outlen - 1;
    memcpy(out, slash ? path : ".", n);
    out[n] = '\0';
}

/* mkdir -p, tolerant of other threads/processes creating the same directories. With durable,
 * the parent of every level this call had to touch is fsync'd so the new entry survives a
 * crash. Returns 0 or -1 with errno set. */
static int mkdirs(const char *path, int durable)
{
    if (mkdir(path, DIR_MODE) != 0) {
        if (errno == EEXIST) {
            struct stat st;
            if (stat(path, &st) != 0) return -1;
            if (!S_ISDIR(st.st_mode)) {
                errno = ENOTDIR;
                return -1;
            }
            /* a concurrent creator may not have fsync'd the parent yet */
        } else if (errno == ENOENT) {
            char parent[PATH_MAX];
            parent_of(path, parent, sizeof parent);
            if (strcmp(parent, path) == 0 || mkdirs(parent, durable) != 0) return -1;
            if (mkdir(path, DIR_MODE) != 0 && errno != EEXIST) return -1;
        } else {
            return -1;
        }
    }
    if (durable) {
        char parent[PATH_MAX];
        parent_of(path, parent, sizeof parent);
        if (fsync_path(parent) != 0) return -1;
    }
    return 0;
}

/* Create a fresh temp file in <root>/<tenant>/tmp; path written to out. */
static mv_err tmp_create(mv_store *s, const char *tenant, const char *suffix, char *out,
                         size_t outlen, int *fd, char *err, size_t errlen)
{
    char dir[PATH_MAX], id[37];
    mv_err rc = mkpath(dir, sizeof dir, err, errlen, "%s/%s/tmp", s->root, tenant);
    if (rc) return rc;
    for (int attempt = 0; attempt < 2; attempt++) {
        mv_uuid(id);
        rc = mkpath(out, outlen, err, errlen, "%s/%s%s", dir, id, suffix);
        if (rc) return rc;
        *fd = open(out, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, FILE_MODE);
        if (*fd >= 0) return MV_OK;
        if (errno != ENOENT || attempt > 0) break;
        if (mkdirs(dir, s->fsync_each) != 0) break;
    }
    rc = mv_seterr(err, errlen, MV_EIO, "create temp file in %s: %s", dir, strerror(errno));
    out[0] = '\0';
    return rc;
}

/* rename(2), creating the destination directory on ENOENT. */
static int rename_into(const char *from, const char *to, const char *todir, int durable)
{
    if (rename(from, to) == 0) return 0;
    if (errno != ENOENT) return -1;
    if (mkdirs(todir, durable) != 0) return -1;
    return rename(from, to);
}

/* ---- open / close ------------------------------------------------------------------------- */

static void put_destroy(mv_put *p)
{
    if (!p) return;
    ZSTD_freeCCtx(p->cctx);
    EVP_MD_CTX_free(p->md);
    free(p->buf);
    free(p);
}

mv_err mv_store_open(const char *root, int fsync_each, int zstd_level, mv_store **out, char *err,
                     size_t errlen)
{
    *out = NULL;
    if (!root || !root[0]) return mv_seterr(err, errlen, MV_EINVAL, "store root is empty");
    if (strlen(root) > PATH_MAX / 4)
        return mv_seterr(err, errlen, MV_EINVAL, "store root path too long");
    if (zstd_level < 1 || zstd_level > 19)
        return mv_seterr(err, errlen, MV_EINVAL, "zstd level %d out of range 1..19", zstd_level);
    mv_store *s = calloc(1, sizeof *s);
    if (!s) return mv_seterr(err, errlen, MV_ENOMEM, "out of memory");
    mv_err rc = MV_OK;
    s->fsync_each = fsync_each ? 1 : 0;
    s->level = zstd_level;
    pthread_mutex_init(&s->mu, NULL);
    s->root = strdup(root);
    s->sha256 = EVP_MD_fetch(NULL, "SHA256", NULL);
    if (!s->root || !s->sha256) {
        rc = mv_seterr(err, errlen, MV_ENOMEM, "store: allocation or SHA256 fetch failed");
        goto fail;
    }
    /* strip trailing slashes so joined paths stay canonical ("/" stays "/") */
    for (size_t n = strlen(s->root); n > 1 && s->root[n - 1] == '/'; n--)
        s->root[n - 1] = '\0';
    if (mkdirs(s->root, s->fsync_each) != 0) {
        rc = mv_seterr(err, errlen, MV_EIO, "create store root %s: %s", root, strerror(errno));
        goto fail;
    }
    *out = s;
    return MV_OK;
fail:
    mv_store_close(s);
    return rc;
}

void mv_store_close(mv_store *s)
{
    if (!s) return;
    for (int i = 0; i < s->nidle; i++)
        put_destroy(s->idle[i]);
    EVP_MD_free(s->sha256);
    pthread_mutex_destroy(&s->mu);
    free(s->root);
    free(s);
}

const char *mv_store_root(const mv_store *s)
{
    return s ? s->root : NULL;
}

/* ---- streaming put ------------------------------------------------------------------------ */

static mv_put *put_acquire(mv_store *s)
{
    mv_put *p = NULL;
    pthread_mutex_lock(&s->mu);
    if (s->nidle > 0) p = s->idle[--s->nidle];
    pthread_mutex_unlock(&s->mu);
    if (p) {
        ZSTD_CCtx_reset(p->cctx, ZSTD_reset_session_only);
    } else {
        p = calloc(1, sizeof *p);
        if (!p) return NULL;
        p->s = s;
        p->cctx = ZSTD_createCCtx();
        p->md = EVP_MD_CTX_new();
        p->buf = malloc(IO_BUF);
        if (!p->cctx || !p->md || !p->buf ||
            ZSTD_isError(ZSTD_CCtx_setParameter(p->cctx, ZSTD_c_compressionLevel, s->level)) ||
            ZSTD_isError(ZSTD_CCtx_setParameter(p->cctx, ZSTD_c_checksumFlag, 1))) {
            put_destroy(p);
            return NULL;
        }
    }
    p->fd = -1;
    p->buflen = 0;
    p->failed = MV_OK;
    p->raw = p->stored = 0;
    p->has_size = 0;
    p->tmp[0] = '\0';
    return p;
}

/* Close and remove whatever the put still owns, then cache or free the context. */
static void put_release(mv_put *p)
{
    if (p->fd >= 0) close(p->fd);
    if (p->tmp[0]) unlink(p->tmp);
    p->fd = -1;
    p->tmp[0] = '\0';
    mv_store *s = p->s;
    pthread_mutex_lock(&s->mu);
    if (s->nidle < PUT_CACHE_MAX) {
        s->idle[s->nidle++] = p;
        p = NULL;
    }
    pthread_mutex_unlock(&s->mu);
    put_destroy(p);
}

mv_err mv_store_put_begin(mv_store *s, const char *tenant, mv_put **out, char *err, size_t errlen)
{
    *out = NULL;
    if (!s) return mv_seterr(err, errlen, MV_EINVAL, "store is NULL");
    if (!mv_name_valid(tenant)) return mv_seterr(err, errlen, MV_EINVAL, "invalid tenant name");
    mv_put *p = put_acquire(s);
    if (!p) return mv_seterr(err, errlen, MV_ENOMEM, "put: out of memory");
    mv_err rc = MV_OK;
    if (EVP_DigestInit_ex(p->md, s->sha256, NULL) != 1) {
        rc = mv_seterr(err, errlen, MV_ERR, "put: SHA-256 init failed");
        goto fail;
    }
    snprintf(p->tenant, sizeof p->tenant, "%s", tenant);
    rc = tmp_create(s, tenant, ".obj", p->tmp, sizeof p->tmp, &p->fd, err, errlen);
    if (rc) goto fail;
    *out = p;
    return MV_OK;
fail:
    put_release(p);
    return rc;
}

static mv_err put_flush(mv_put *p, char *err, size_t errlen)
{
    if (p->buflen == 0) return MV_OK;
    if (write_all(p->fd, p->buf, p->buflen) != 0) {
        p->failed = MV_EIO;
        return mv_seterr(err, errlen, MV_EIO, "write %s: %s", p->tmp, strerror(errno));
    }
    p->stored += p->buflen;
    p->buflen = 0;
    return MV_OK;
}

/* Drive the compressor over in (mode e_continue) or to the end of the frame (e_end). */
static mv_err put_compress(mv_put *p, ZSTD_inBuffer *in, ZSTD_EndDirective mode, char *err,
                           size_t errlen)
{
    for (;;) {
        if (p->buflen == IO_BUF) {
            mv_err rc = put_flush(p, err, errlen);
            if (rc) return rc;
        }
        ZSTD_outBuffer out = {p->buf, IO_BUF, p->buflen};
        size_t r = ZSTD_compressStream2(p->cctx, &out, in, mode);
        p->buflen = out.pos;
        if (ZSTD_isError(r)) {
            p->failed = MV_ERR;
            return mv_seterr(err, errlen, MV_ERR, "zstd: %s", ZSTD_getErrorName(r));
        }
        if (mode == ZSTD_e_end ? r == 0 : in->pos == in->size) return MV_OK;
    }
}

mv_err mv_put_set_size(mv_put *p, uint64_t size, char *err, size_t errlen)
{
    if (p->raw != 0)
        return mv_seterr(err, errlen, MV_EINVAL, "put: size announced after the first write");
    if (size > RAW_MAX)
        return mv_seterr(err, errlen, MV_ETOOBIG, "put: %llu bytes exceed the 1 GiB object limit",
                         (unsigned long long)size);
    if (ZSTD_isError(ZSTD_CCtx_setPledgedSrcSize(p->cctx, size)))
        return mv_seterr(err, errlen, MV_ERR, "put: zstd refused the announced size");
    p->announced = size;
    p->has_size = 1;
    return MV_OK;
}

mv_err mv_put_write(mv_put *p, const void *data, size_t len, char *err, size_t errlen)
{
    if (!p) return mv_seterr(err, errlen, MV_EINVAL, "put is NULL");
    if (p->failed) return mv_seterr(err, errlen, p->failed, "put: an earlier write failed");
    if (len == 0) return MV_OK;
    if (!data) return mv_seterr(err, errlen, MV_EINVAL, "put: NULL data");
    if (p->has_size && len > p->announced - p->raw) {
        p->failed = MV_EINVAL;
        return mv_seterr(err, errlen, MV_EINVAL, "put: more than the announced %llu bytes",
                         (unsigned long long)p->announced);
    }
    if (len > RAW_MAX - p->raw) {
        p->failed = MV_ETOOBIG;
        return mv_seterr(err, errlen, MV_ETOOBIG, "message exceeds %llu bytes",
                         (unsigned long long)RAW_MAX);
    }
    if (EVP_DigestUpdate(p->md, data, len) != 1) {
        p->failed = MV_ERR;
        return mv_seterr(err, errlen, MV_ERR, "put: SHA-256 update failed");
    }
    p->raw += len;
    ZSTD_inBuffer in = {data, len, 0};
    return put_compress(p, &in, ZSTD_e_continue, err, errlen);
}

void mv_put_abort(mv_put *p)
{
    if (p) put_release(p);
}

mv_err mv_put_commit(mv_put *p, int overwrite, mv_put_result *res, char *err, size_t errlen)
{
    if (!p) return mv_seterr(err, errlen, MV_EINVAL, "put is NULL");
    mv_store *s = p->s;
    mv_err rc = MV_OK;
    mv_put_result r;
    memset(&r, 0, sizeof r);
    if (p->failed) {
        rc = mv_seterr(err, errlen, p->failed, "put: an earlier write failed");
        goto out;
    }
    if (p->has_size && p->raw != p->announced) {
        rc = mv_seterr(err, errlen, MV_EINVAL, "put: %llu bytes written, %llu announced",
                       (unsigned long long)p->raw, (unsigned long long)p->announced);
        goto out;
    }
    ZSTD_inBuffer none = {NULL, 0, 0};
    if ((rc = put_compress(p, &none, ZSTD_e_end, err, errlen)) != MV_OK) goto out;
    if ((rc = put_flush(p, err, errlen)) != MV_OK) goto out;

    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;
    if (EVP_DigestFinal_ex(p->md, md, &mdlen) != 1 || mdlen != 32) {
        rc = mv_seterr(err, errlen, MV_ERR, "put: SHA-256 final failed");
        goto out;
    }
    mv_hex(md, 32, r.hash);
    r.raw_bytes = p->raw;
    r.stored_bytes = p->stored;

    if (s->fsync_each && fsync(p->fd) != 0) {
        rc = mv_seterr(err, errlen, MV_EIO, "fsync %s: %s", p->tmp, strerror(errno));
        goto out;
    }
    int fd = p->fd;
    p->fd = -1;
    if (close(fd) != 0) {
        rc = mv_seterr(err, errlen, MV_EIO, "close %s: %s", p->tmp, strerror(errno));
        goto out;
    }

    char dir[PATH_MAX], final[PATH_MAX];
    if ((rc = mkpath(dir, sizeof dir, err, errlen, "%s/%s/objects/%.2s/%.2s", s->root, p->tenant,
                     r.hash, r.hash + 2)) != MV_OK)
        goto out;
    if ((rc = mkpath(final, sizeof final, err, errlen, "%s/%s", dir, r.hash)) != MV_OK) goto out;

    struct stat st;
    if (!overwrite && lstat(final, &st) == 0) {
        if (!S_ISREG(st.st_mode)) {
            rc = mv_seterr(err, errlen, MV_EIO, "%s exists and is not a regular file", final);
            goto out;
        }
        r.existed = 1;
        r.stored_bytes = (uint64_t)st.st_size;
        if (s->fsync_each) {
            /* the existing copy may come from a not-yet-synced writer: make it durable too */
            int efd = open(final, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
            int bad = efd < 0 || fsync(efd) != 0 || fsync_path(dir) != 0;
            int e = errno;
            if (efd >= 0) close(efd);
            if (bad) {
                rc = mv_seterr(err, errlen, MV_EIO, "fsync %s: %s", final, strerror(e));
                goto out;
            }
        }
        goto out; /* put_release unlinks the temp file */
    }
    if (rename_into(p->tmp, final, dir, s->fsync_each) != 0) {
        rc = mv_seterr(err, errlen, MV_EIO, "rename %s -> %s: %s", p->tmp, final, strerror(errno));
        goto out;
    }
    p->tmp[0] = '\0';
    if (s->fsync_each && fsync_path(dir) != 0) {
        rc = mv_seterr(err, errlen, MV_EIO, "fsync %s: %s", dir, strerror(errno));
        goto out;
    }
out:
    if (rc == MV_OK && res) *res = r;
    put_release(p);
    return rc;
}

mv_err mv_store_sync(mv_store *s, char *err, size_t errlen)
{
    if (!s) return mv_seterr(err, errlen, MV_EINVAL, "store is NULL");
    int fd = open(s->root, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) return mv_seterr(err, errlen, MV_EIO, "open %s: %s", s->root, strerror(errno));
    mv_err rc = MV_OK;
    if (syncfs(fd) != 0) rc = mv_seterr(err, errlen, MV_EIO, "syncfs: %s", strerror(errno));
    close(fd);
    return rc;
}

/* ---- reading ------------------------------------------------------------------------------ */

typedef struct reader {
    ZSTD_DCtx *dctx;
    EVP_MD_CTX *md;
    unsigned char *in, *out;
} reader;

static void reader_free(reader *rd)
{
    ZSTD_freeDCtx(rd->dctx);
    EVP_MD_CTX_free(rd->md);
    free(rd->in);
    free(rd->out);
    memset(rd, 0, sizeof *rd);
}

static mv_err reader_init(reader *rd, char *err, size_t errlen)
{
    rd->dctx = ZSTD_createDCtx();
    rd->md = EVP_MD_CTX_new();
    rd->in = malloc(IO_BUF);
    rd->out = malloc(IO_BUF);
    if (!rd->dctx || !rd->md || !rd->in || !rd->out) {
        reader_free(rd);
        return mv_seterr(err, errlen, MV_ENOMEM, "out of memory");
    }
    return MV_OK;
}

/* Decompress the object open on fd into cb (may be NULL), then check the SHA-256 against
 * hash. *raw gets the decompressed size. */
static mv_err read_object(mv_store *s, reader *rd, int fd, const char *hash, mv_store_sink_fn cb,
                          void *ud, uint64_t *raw, char *err, size_t errlen)
{
    ZSTD_DCtx_reset(rd->dctx, ZSTD_reset_session_only);
    if (EVP_DigestInit_ex(rd->md, s->sha256, NULL) != 1)
        return mv_seterr(err, errlen, MV_ERR, "SHA-256 init failed");
    uint64_t total = 0;
    size_t pending = 1; /* ZSTD_decompressStream's "more to come" hint; 0 at a frame end */
    int any = 0;
    for (;;) {
        ssize_t n = read(fd, rd->in, IO_BUF);
        if (n < 0) {
            if (errno == EINTR) continue;
            return mv_seterr(err, errlen, MV_EIO, "object %s: read: %s", hash, strerror(errno));
        }
        if (n == 0) break;
        any = 1;
        ZSTD_inBuffer in = {rd->in, (size_t)n, 0};
        int full;
        do {
            ZSTD_outBuffer out = {rd->out, IO_BUF, 0};
            pending = ZSTD_decompressStream(rd->dctx, &out, &in);
            if (ZSTD_isError(pending))
                return mv_seterr(err, errlen, MV_ECORRUPT, "object %s: zstd: %s", hash,
                                 ZSTD_getErrorName(pending));
            if (out.pos > 0) {
                total += out.pos;
                if (total > RAW_MAX)
                    return mv_seterr(err, errlen, MV_ECORRUPT,
                                     "object %s: decompresses beyond %llu bytes", hash,
                                     (unsigned long long)RAW_MAX);
                EVP_DigestUpdate(rd->md, rd->out, out.pos);
                if (cb && cb(ud, rd->out, out.pos) != 0)
                    return mv_seterr(err, errlen, MV_ECANCEL, "object %s: read cancelled", hash);
            }
            full = out.pos == out.size;
        } while (in.pos < in.size || full);
    }
    if (!any) return mv_seterr(err, errlen, MV_ECORRUPT, "object %s: empty file", hash);
    if (pending != 0)
        return mv_seterr(err, errlen, MV_ECORRUPT, "object %s: truncated zstd frame", hash);
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;
    char got[65];
    if (EVP_DigestFinal_ex(rd->md, md, &mdlen) != 1 || mdlen != 32)
        return mv_seterr(err, errlen, MV_ERR, "SHA-256 final failed");
    mv_hex(md, 32, got);
    if (strcmp(got, hash) != 0)
        return mv_seterr(err, errlen, MV_ECORRUPT, "object %s: content hashes to %s", hash, got);
    *raw = total;
    return MV_OK;
}

static mv_err object_path(mv_store *s, const char *tenant, const char *hash, char *out,
                          size_t outlen, char *err, size_t errlen)
{
    if (!s) return mv_seterr(err, errlen, MV_EINVAL, "store is NULL");
    if (!mv_name_valid(tenant)) return mv_seterr(err, errlen, MV_EINVAL, "invalid tenant name");
    if (!is_hash(hash)) return mv_seterr(err, errlen, MV_EINVAL, "invalid object hash");
    return mkpath(out, outlen, err, errlen, "%s/%s/objects/%.2s/%.2s/%s", s->root, tenant, hash,
                  hash + 2, hash);
}

mv_err mv_store_get(mv_store *s, const char *tenant, const char *hash, mv_store_sink_fn cb,
                    void *ud, char *err, size_t errlen)
{
    char path[PATH_MAX];
    mv_err rc = object_path(s, tenant, hash, path, sizeof path, err, errlen);
    if (rc) return rc;
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0) {
        if (errno == ENOENT)
            return mv_seterr(err, errlen, MV_ENOTFOUND, "object %s not found", hash);
        return mv_seterr(err, errlen, MV_EIO, "open %s: %s", path, strerror(errno));
    }
    reader rd = {0};
    uint64_t raw = 0;
    if ((rc = reader_init(&rd, err, errlen)) == MV_OK)
        rc = read_object(s, &rd, fd, hash, cb, ud, &raw, err, errlen);
    reader_free(&rd);
    close(fd);
    return rc;
}

int mv_store_exists(mv_store *s, const char *tenant, const char *hash)
{
    char path[PATH_MAX];
    struct stat st;
    if (object_path(s, tenant, hash, path, sizeof path, NULL, 0) != MV_OK) return 0;
    return lstat(path, &st) == 0 && S_ISREG(st.st_mode);
}

/* ---- verify ------------------------------------------------------------------------------- */

typedef struct vctx {
    mv_store *s;
    reader rd;
    const char *tenant;
    mv_verify_bad_fn bad_cb;
    mv_verify_progress_fn progress;
    void *ud;
    mv_verify_stats st;
} vctx;

static void v_bad(vctx *v, const char *name, const char *why)
{
    v->st.objects++;
    v->st.bad++;
    if (v->bad_cb) v->bad_cb(v->ud, v->tenant, name, why);
    if (v->progress) v->progress(v->ud, &v->st);
}

static void v_object(vctx *v, int dfd, const char *name, const char *ab, const char *cd)
{
    char why[MV_ERRLEN];
    struct stat st;
    if (fstatat(dfd, name, &st, AT_SYMLINK_NOFOLLOW) != 0) {
        if (errno == ENOENT) return; /* replaced or removed while we walked */
        snprintf(why, sizeof why, "stat: %s", strerror(errno));
        v_bad(v, name, why);
        return;
    }
    if (!S_ISREG(st.st_mode)) {
        v_bad(v, name, "not a regular file");
        return;
    }
    if (!is_hash(name)) {
        v_bad(v, name, "not an object name (stray file)");
        return;
    }
    if (memcmp(name, ab, 2) != 0 || memcmp(name + 2, cd, 2) != 0) {
        v_bad(v, name, "object stored under the wrong directory");
        return;
    }
    int fd = openat(dfd, name, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0) {
        snprintf(why, sizeof why, "open: %s", strerror(errno));
        v_bad(v, name, why);
        return;
    }
    uint64_t raw = 0;
    mv_err rc = read_object(v->s, &v->rd, fd, name, NULL, NULL, &raw, why, sizeof why);
    if (rc == MV_OK) fstat(fd, &st);
    close(fd);
    if (rc != MV_OK) {
        v_bad(v, name, why);
        return;
    }
    v->st.objects++;
    v->st.ok++;
    v->st.raw_bytes += raw;
    v->st.stored_bytes += (uint64_t)st.st_size;
    if (v->progress) v->progress(v->ud, &v->st);
}

/* Open subdirectory name of dfd as a DIR stream (no symlinks). */
static DIR *open_subdir(int dfd, const char *name)
{
    int fd = openat(dfd, name, O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0) return NULL;
    DIR *d = fdopendir(fd);
    if (!d) close(fd);
    return d;
}

/* Walk objects/ab/cd/<hash>. depth 0: objects/, 1: ab/ (ab set), 2: cd/ (ab, cd set). The
 * names point into the parent DIR's buffer, which stays valid while we recurse. */
static mv_err v_walk(vctx *v, DIR *d, int depth, const char *ab, const char *cd, char *err,
                     size_t errlen)
{
    struct dirent *e;
    errno = 0;
    while ((e = readdir(d)) != NULL) {
        const char *n = e->d_name;
        if (strcmp(n, ".") == 0 || strcmp(n, "..") == 0) continue;
        if (depth == 2) {
            v_object(v, dirfd(d), n, ab, cd);
            errno = 0;
            continue;
        }
        if (!is_hex2(n)) {
            v_bad(v, n, "unexpected entry in the objects tree");
            errno = 0;
            continue;
        }
        DIR *sub = open_subdir(dirfd(d), n);
        if (!sub) {
            if (errno != ENOENT) {
                char why[MV_ERRLEN];
                snprintf(why, sizeof why, "open directory: %s", strerror(errno));
                v_bad(v, n, why);
            }
            errno = 0;
            continue;
        }
        mv_err rc =
            v_walk(v, sub, depth + 1, depth == 0 ? n : ab, depth == 1 ? n : NULL, err, errlen);
        closedir(sub);
        if (rc) return rc;
        errno = 0;
    }
    if (errno != 0) return mv_seterr(err, errlen, MV_EIO, "readdir: %s", strerror(errno));
    return MV_OK;
}

static mv_err v_tenant(vctx *v, const char *tenant, char *err, size_t errlen)
{
    char path[PATH_MAX];
    mv_err rc = mkpath(path, sizeof path, err, errlen, "%s/%s/objects", v->s->root, tenant);
    if (rc) return rc;
    DIR *d = opendir(path);
    if (!d) {
        if (errno == ENOENT) return MV_OK; /* no objects yet */
        return mv_seterr(err, errlen, MV_EIO, "open %s: %s", path, strerror(errno));
    }
    v->tenant = tenant;
    rc = v_walk(v, d, 0, NULL, NULL, err, errlen);
    closedir(d);
    return rc;
}

mv_err mv_store_clean_tmp(mv_store *s, int max_age_s, int *removed, char *err, size_t errlen)
{
    *removed = 0;
    DIR *root = opendir(s->root);
    if (!root) return mv_seterr(err, errlen, MV_EIO, "open %s: %s", s->root, strerror(errno));
    time_t cutoff = time(NULL) - max_age_s;
    struct dirent *te;
    mv_err rc = MV_OK;
    while (!rc && (te = readdir(root))) {
        if (!mv_name_valid(te->d_name)) continue; /* not a tenant directory */
        char dir[PATH_MAX];
        if ((rc = mkpath(dir, sizeof dir, err, errlen, "%s/%s/tmp", s->root, te->d_name))) break;
        DIR *d = opendir(dir);
        if (!d) continue; /* no tmp yet */
        struct dirent *e;
        struct stat st;
        while ((e = readdir(d))) {
            if (e->d_name[0] == '.') continue;
            if (fstatat(dirfd(d), e->d_name, &st, AT_SYMLINK_NOFOLLOW) != 0) continue;
            if (!S_ISREG(st.st_mode) || st.st_mtime > cutoff) continue;
            if (unlinkat(dirfd(d), e->d_name, 0) == 0) (*removed)++;
        }
        closedir(d);
    }
    closedir(root);
    return rc;
}

mv_err mv_store_verify(mv_store *s, const char *tenant, mv_verify_bad_fn bad_cb,
                       mv_verify_progress_fn progress, void *ud, mv_verify_stats *st, char *err,
                       size_t errlen)
{
    if (st) memset(st, 0, sizeof *st);
    if (!s) return mv_seterr(err, errlen, MV_EINVAL, "store is NULL");
    if (tenant && !mv_name_valid(tenant))
        return mv_seterr(err, errlen, MV_EINVAL, "invalid tenant name");
    vctx v;
    memset(&v, 0, sizeof v);
    v.s = s;
    v.bad_cb = bad_cb;
    v.progress = progress;
    v.ud = ud;
    mv_err rc = reader_init(&v.rd, err, errlen);
    if (rc) return rc;
    if (tenant) {
        rc = v_tenant(&v, tenant, err, errlen);
    } else {
        DIR *d = opendir(s->root);
        if (!d) {
            rc = mv_seterr(err, errlen, MV_EIO, "open %s: %s", s->root, strerror(errno));
        } else {
            struct dirent *e;
            while (rc == MV_OK && (e = readdir(d)) != NULL) {
                struct stat sb;
                if (!mv_name_valid(e->d_name)) continue;
                if (fstatat(dirfd(d), e->d_name, &sb, AT_SYMLINK_NOFOLLOW) != 0 ||
                    !S_ISDIR(sb.st_mode))
                    continue;
                /* the name lives in the DIR buffer, valid until the next readdir */
                rc = v_tenant(&v, e->d_name, err, errlen);
            }
            closedir(d);
        }
    }
    reader_free(&v.rd);
    if (st) *st = v.st;
    return rc;
}

/* ---- mailbox escaping --------------------------------------------------------------------- */

/* Escape in into out (whole units only, always NUL-terminated if outlen > 0); returns the
 * length the full escaped form needs (without NUL). */
static size_t escape(const char *in, char *out, size_t outlen)
{
    static const char hx[] = "0123456789ABCDEF";
    size_t need = 0, w = 0;
    int fits = out && outlen > 0;
    for (size_t i = 0; in && in[i]; i++) {
        unsigned char c = (unsigned char)in[i];
        int keep = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
                   c == '_' || c == '@' || c == '+' || c == '-' || (c == '.' && i > 0);
        size_t unit = keep ? 1 : 3;
        if (fits && w + unit < outlen) {
            if (keep) {
                out[w++] = (char)c;
            } else {
                out[w++] = '%';
                out[w++] = hx[c >> 4];
                out[w++] = hx[c & 15];
            }
        } else {
            fits = 0;
        }
        need += unit;
    }
    if (out && outlen > 0) out[w] = '\0';
    return need;
}

void mv_store_path_escape(const char *in, char *out, size_t outlen)
{
    escape(in, out, outlen);
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

void mv_store_path_unescape(const char *in, char *out, size_t outlen)
{
    if (!out || outlen == 0) return;
    size_t w = 0;
    for (size_t i = 0; in && in[i] && w + 1 < outlen; i++) {
        int hi, lo;
        if (in[i] == '%' && (hi = hexval(in[i + 1])) >= 0 && (lo = hexval(in[i + 2])) >= 0 &&
            (hi | lo) != 0) {
            out[w++] = (char)(hi << 4 | lo);
            i += 2;
        } else {
            out[w++] = in[i];
        }
    }
    out[w] = '\0';
}

/* ---- segments ----------------------------------------------------------------------------- */

/* <root>/<tenant>/mailboxes/<escaped mailbox>/index */
static mv_err index_dir(mv_store *s, const char *tenant, const char *mailbox, char *out,
                        size_t outlen, char *err, size_t errlen)
{
    char esc[NAME_MAX + 1];
    if (!s) return mv_seterr(err, errlen, MV_EINVAL, "store is NULL");
    if (!mv_name_valid(tenant)) return mv_seterr(err, errlen, MV_EINVAL, "invalid tenant name");
    if (!mailbox || !mailbox[0]) return mv_seterr(err, errlen, MV_EINVAL, "empty mailbox id");
    if (escape(mailbox, esc, sizeof esc) >= sizeof esc)
        return mv_seterr(err, errlen, MV_EINVAL, "mailbox id too long once escaped");
    return mkpath(out, outlen, err, errlen, "%s/%s/mailboxes/%s/index", s->root, tenant, esc);
}

mv_err mv_store_segment_put(mv_store *s, const char *tenant, const char *mailbox, const char *name,
                            const void *data, size_t len, char *err, size_t errlen)
{
    char dir[PATH_MAX], final[PATH_MAX], tmp[PATH_MAX] = "";
    int fd = -1;
    mv_err rc = index_dir(s, tenant, mailbox, dir, sizeof dir, err, errlen);
    if (rc) return rc;
    if (!segname_valid(name)) return mv_seterr(err, errlen, MV_EINVAL, "invalid segment name");
    if (len > SEGMENT_MAX) return mv_seterr(err, errlen, MV_ETOOBIG, "segment too large");
    if (len > 0 && !data) return mv_seterr(err, errlen, MV_EINVAL, "segment data is NULL");
    if ((rc = mkpath(final, sizeof final, err, errlen, "%s/%s", dir, name)) != MV_OK) return rc;
    if ((rc = tmp_create(s, tenant, ".seg", tmp, sizeof tmp, &fd, err, errlen)) != MV_OK) return rc;
    if (write_all(fd, data, len) != 0 || fsync(fd) != 0) {
        rc = mv_seterr(err, errlen, MV_EIO, "write %s: %s", tmp, strerror(errno));
        goto out;
    }
    int cfd = fd;
    fd = -1;
    if (close(cfd) != 0) {
        rc = mv_seterr(err, errlen, MV_EIO, "close %s: %s", tmp, strerror(errno));
        goto out;
    }
    if (rename_into(tmp, final, dir, 1) != 0) {
        rc = mv_seterr(err, errlen, MV_EIO, "rename %s -> %s: %s", tmp, final, strerror(errno));
        goto out;
    }
    tmp[0] = '\0';
    if (fsync_path(dir) != 0)
        rc = mv_seterr(err, errlen, MV_EIO, "fsync %s: %s", dir, strerror(errno));
out:
    if (fd >= 0) close(fd);
    if (tmp[0]) unlink(tmp);
    return rc;
}

static int cmp_dirent(const void *a, const void *b)
{
    return strcmp((*(struct dirent *const *)a)->d_name, (*(struct dirent *const *)b)->d_name);
}

static int filter_segment(const struct dirent *e)
{
    return segname_valid(e->d_name);
}

static int filter_visible(const struct dirent *e)
{
    return e->d_name[0] != '.';
}

/* scandir + strcmp sort (alphasort would follow the locale). ENOENT gives an empty list. */
static mv_err scan_sorted(const char *dir, int (*filter)(const struct dirent *),
                          struct dirent ***list, int *n, char *err, size_t errlen)
{
    *list = NULL;
    *n = scandir(dir, list, filter, NULL);
    if (*n < 0) {
        *n = 0;
        *list = NULL;
        if (errno == ENOENT) return MV_OK;
        return mv_seterr(err, errlen, MV_EIO, "scan %s: %s", dir, strerror(errno));
    }
    qsort(*list, (size_t)*n, sizeof **list, cmp_dirent);
    return MV_OK;
}

static void free_list(struct dirent **list, int n)
{
    for (int i = 0; i < n; i++)
        free(list[i]);
    free(list);
}

mv_err mv_store_segment_list(mv_store *s, const char *tenant, const char *mailbox,
                             int (*cb)(void *ud, const char *name), void *ud, char *err,
                             size_t errlen)
{
    char dir[PATH_MAX];
    struct dirent **list;
    int n;
    mv_err rc = index_dir(s, tenant, mailbox, dir, sizeof dir, err, errlen);
    if (rc) return rc;
    if ((rc = scan_sorted(dir, filter_segment, &list, &n, err, errlen)) != MV_OK) return rc;
    for (int i = 0; i < n && rc == MV_OK; i++)
        if (cb && cb(ud, list[i]->d_name) != 0)
            rc = mv_seterr(err, errlen, MV_ECANCEL, "segment listing stopped by callback");
    free_list(list, n);
    return rc;
}

mv_err mv_store_segment_get(mv_store *s, const char *tenant, const char *mailbox, const char *name,
                            void **data, size_t *len, char *err, size_t errlen)
{
    char dir[PATH_MAX], path[PATH_MAX];
    unsigned char *buf = NULL;
    size_t n = 0;
    *data = NULL;
    *len = 0;
    mv_err rc = index_dir(s, tenant, mailbox, dir, sizeof dir, err, errlen);
    if (rc) return rc;
    if (!segname_valid(name)) return mv_seterr(err, errlen, MV_EINVAL, "invalid segment name");
    if ((rc = mkpath(path, sizeof path, err, errlen, "%s/%s", dir, name)) != MV_OK) return rc;
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0) {
        if (errno == ENOENT)
            return mv_seterr(err, errlen, MV_ENOTFOUND, "segment %s not found", name);
        return mv_seterr(err, errlen, MV_EIO, "open %s: %s", path, strerror(errno));
    }
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        rc = mv_seterr(err, errlen, MV_EIO, "%s: not a readable regular file", path);
        goto out;
    }
    if ((uint64_t)st.st_size > SEGMENT_MAX) {
        rc = mv_seterr(err, errlen, MV_ETOOBIG, "segment %s is %lld bytes", name,
                       (long long)st.st_size);
        goto out;
    }
    /* +1 so a file that grew since fstat is noticed rather than silently cut */
    size_t cap = (size_t)st.st_size + 1;
    if (!(buf = malloc(cap))) {
        rc = mv_seterr(err, errlen, MV_ENOMEM, "out of memory");
        goto out;
    }
    for (;;) {
        ssize_t r = read(fd, buf + n, cap - n);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) {
            rc = mv_seterr(err, errlen, MV_EIO, "read %s: %s", path, strerror(errno));
            goto out;
        }
        if (r == 0) break;
        n += (size_t)r;
        if (n == cap) {
            rc = mv_seterr(err, errlen, MV_EIO, "segment %s changed while reading", name);
            goto out;
        }
    }
    *data = buf;
    *len = n;
    buf = NULL;
out:
    free(buf);
    close(fd);
    return rc;
}

mv_err mv_store_mailbox_list(mv_store *s, const char *tenant,
                             int (*cb)(void *ud, const char *mailbox), void *ud, char *err,
                             size_t errlen)
{
    char dir[PATH_MAX], full[PATH_MAX], name[NAME_MAX + 1];
    struct dirent **list;
    int n;
    if (!s) return mv_seterr(err, errlen, MV_EINVAL, "store is NULL");
    if (!mv_name_valid(tenant)) return mv_seterr(err, errlen, MV_EINVAL, "invalid tenant name");
    mv_err rc = mkpath(dir, sizeof dir, err, errlen, "%s/%s/mailboxes", s->root, tenant);
    if (rc) return rc;
    if ((rc = scan_sorted(dir, filter_visible, &list, &n, err, errlen)) != MV_OK) return rc;
    for (int i = 0; i < n && rc == MV_OK; i++) {
        struct stat st;
        if (mkpath(full, sizeof full, NULL, 0, "%s/%s/index", dir, list[i]->d_name) != MV_OK)
            continue;
        if (stat(full, &st) != 0 || !S_ISDIR(st.st_mode)) continue;
        mv_store_path_unescape(list[i]->d_name, name, sizeof name);
        if (cb && cb(ud, name) != 0)
            rc = mv_seterr(err, errlen, MV_ECANCEL, "mailbox listing stopped by callback");
    }
    free_list(list, n);
    return rc;
}

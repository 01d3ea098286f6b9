/* store_fs.c - the filesystem backend of the content store: keys are paths under a root.
 *
 * Why it looks like this:
 *  - An object's name is only known once its last byte has arrived, so a writer streams into
 *    a temp file in <root>/<tenant>/tmp (same filesystem) and commit renames it into place.
 *    rename(2) is atomic: a reader sees no object or a complete one; a crash leaves at worst
 *    an orphan temp file, which sweep removes once it is old.
 *  - Durability: with fsync_each the file and its directory are fsync'd before commit returns;
 *    otherwise ("chunk" mode) the caller calls sync (syncfs) before it records progress that
 *    depends on the objects. Blobs (index segments) are always written durably.
 *  - store.c validated every key component, so keys join the root as they are.
 * Contracts: thread-safe (holds only the root); a writer belongs to one thread. */
#define _GNU_SOURCE /* syncfs(2) */
#include "store_be.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define FILE_MODE 0640
#define DIR_MODE 0750

typedef struct fs_be {
    mv_be base;
    char *root;
    int fsync_each;
} fs_be;

struct mv_be_writer {
    fs_be *b;
    int fd;
    uint64_t written;
    char tmp[PATH_MAX]; /* "" once it no longer exists */
};

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
static mv_err tmp_create(fs_be *b, const char *tenant, const char *suffix, char *out, size_t outlen,
                         int *fd, char *err, size_t errlen)
{
    char dir[PATH_MAX], id[37];
    mv_err rc = mkpath(dir, sizeof dir, err, errlen, "%s/%s/tmp", b->root, tenant);
    if (rc) return rc;
    for (int attempt = 0; attempt < 2; attempt++) {
        mv_uuid(id);
        rc = mkpath(out, outlen, err, errlen, "%s/%s%s", dir, id, suffix);
        if (rc) return rc;
        *fd = open(out, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, FILE_MODE);
        if (*fd >= 0) return MV_OK;
        if (errno != ENOENT || attempt > 0) break;
        if (mkdirs(dir, b->fsync_each) != 0) break;
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

/* ---- objects ------------------------------------------------------------------------------ */

static mv_err fs_w_begin(mv_be *be, const char *tenant, mv_be_writer **out, char *err,
                         size_t errlen)
{
    fs_be *b = (fs_be *)be;
    *out = NULL;
    mv_be_writer *w = calloc(1, sizeof *w);
    if (!w) return mv_seterr(err, errlen, MV_ENOMEM, "out of memory");
    w->b = b;
    mv_err rc = tmp_create(b, tenant, ".obj", w->tmp, sizeof w->tmp, &w->fd, err, errlen);
    if (rc) {
        free(w);
        return rc;
    }
    *out = w;
    return MV_OK;
}

static mv_err fs_w_write(mv_be_writer *w, const void *data, size_t len, char *err, size_t errlen)
{
    if (mv_write_all(w->fd, data, len) != 0)
        return mv_seterr(err, errlen, MV_EIO, "write %s: %s", w->tmp, strerror(errno));
    w->written += len;
    return MV_OK;
}

static void fs_w_abort(mv_be_writer *w)
{
    if (!w) return;
    if (w->fd >= 0) close(w->fd);
    if (w->tmp[0]) unlink(w->tmp);
    free(w);
}

static mv_err fs_w_commit(mv_be_writer *w, const char *key, int overwrite, const mv_be_lock *lock,
                          int *existed, uint64_t *stored, char *err, size_t errlen)
{
    (void)lock;
    fs_be *b = w->b;
    mv_err rc = MV_OK;
    char dir[PATH_MAX], final[PATH_MAX];
    *existed = 0;
    *stored = w->written;
    if (b->fsync_each && fsync(w->fd) != 0) {
        rc = mv_seterr(err, errlen, MV_EIO, "fsync %s: %s", w->tmp, strerror(errno));
        goto out;
    }
    int fd = w->fd;
    w->fd = -1;
    if (close(fd) != 0) {
        rc = mv_seterr(err, errlen, MV_EIO, "close %s: %s", w->tmp, strerror(errno));
        goto out;
    }
    if ((rc = mkpath(final, sizeof final, err, errlen, "%s/%s", b->root, key)) != MV_OK) goto out;
    parent_of(final, dir, sizeof dir);
    struct stat st;
    if (!overwrite && lstat(final, &st) == 0) {
        if (!S_ISREG(st.st_mode)) {
            rc = mv_seterr(err, errlen, MV_EIO, "%s exists and is not a regular file", final);
            goto out;
        }
        *existed = 1;
        *stored = (uint64_t)st.st_size;
        if (b->fsync_each) {
            /* the existing copy may come from a not-yet-synced writer: make it durable too */
            int efd = open(final, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
            int bad = efd < 0 || fsync(efd) != 0 || fsync_path(dir) != 0;
            int e = errno;
            if (efd >= 0) close(efd);
            if (bad) rc = mv_seterr(err, errlen, MV_EIO, "fsync %s: %s", final, strerror(e));
        }
        goto out; /* abort unlinks the temp file */
    }
    if (rename_into(w->tmp, final, dir, b->fsync_each) != 0) {
        rc = mv_seterr(err, errlen, MV_EIO, "rename %s -> %s: %s", w->tmp, final, strerror(errno));
        goto out;
    }
    w->tmp[0] = '\0';
    if (b->fsync_each && fsync_path(dir) != 0)
        rc = mv_seterr(err, errlen, MV_EIO, "fsync %s: %s", dir, strerror(errno));
out:
    fs_w_abort(w);
    return rc;
}

static mv_err fs_read(mv_be *be, const char *key, uint64_t max, mv_store_sink_fn cb, void *ud,
                      uint64_t *stored, char *err, size_t errlen)
{
    fs_be *b = (fs_be *)be;
    char path[PATH_MAX];
    *stored = 0;
    mv_err rc = mkpath(path, sizeof path, err, errlen, "%s/%s", b->root, key);
    if (rc) return rc;
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0) {
        if (errno == ENOENT) return mv_seterr(err, errlen, MV_ENOTFOUND, "%s not found", key);
        return mv_seterr(err, errlen, MV_EIO, "open %s: %s", path, strerror(errno));
    }
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        return mv_seterr(err, errlen, MV_EIO, "%s: not a readable regular file", path);
    }
    unsigned char *buf = malloc(128 * 1024);
    if (!buf) {
        close(fd);
        return mv_seterr(err, errlen, MV_ENOMEM, "out of memory");
    }
    for (;;) {
        ssize_t n = read(fd, buf, 128 * 1024);
        if (n < 0) {
            if (errno == EINTR) continue;
            rc = mv_seterr(err, errlen, MV_EIO, "read %s: %s", path, strerror(errno));
            break;
        }
        if (n == 0) break;
        if ((uint64_t)n > max - *stored) {
            rc = mv_seterr(err, errlen, MV_ETOOBIG, "%s is larger than %llu bytes", key,
                           (unsigned long long)max);
            break;
        }
        *stored += (uint64_t)n;
        if (cb(ud, buf, (size_t)n) != 0) {
            rc = mv_seterr(err, errlen, MV_ECANCEL, "read of %s stopped", key);
            break;
        }
    }
    free(buf);
    close(fd);
    return rc;
}

static int fs_exists(mv_be *be, const char *key, char *err, size_t errlen)
{
    fs_be *b = (fs_be *)be;
    char path[PATH_MAX];
    struct stat st;
    if (mkpath(path, sizeof path, err, errlen, "%s/%s", b->root, key) != MV_OK) return -1;
    if (lstat(path, &st) == 0) return S_ISREG(st.st_mode) ? 1 : 0;
    if (errno == ENOENT || errno == ENOTDIR) return 0;
    mv_seterr(err, errlen, MV_EIO, "stat %s: %s", path, strerror(errno));
    return -1;
}

static mv_err fs_blob_put(mv_be *be, const char *tenant, const char *key, const void *data,
                          size_t len, const mv_be_lock *lock, char *err, size_t errlen)
{
    (void)lock;
    fs_be *b = (fs_be *)be;
    char dir[PATH_MAX], final[PATH_MAX], tmp[PATH_MAX] = "";
    int fd = -1;
    mv_err rc = mkpath(final, sizeof final, err, errlen, "%s/%s", b->root, key);
    if (rc) return rc;
    parent_of(final, dir, sizeof dir);
    if ((rc = tmp_create(b, tenant, ".seg", tmp, sizeof tmp, &fd, err, errlen)) != MV_OK) return rc;
    if (mv_write_all(fd, data, len) != 0 || fsync(fd) != 0) {
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

/* ---- listing ------------------------------------------------------------------------------ */

static int cmp_dirent(const void *a, const void *b)
{
    return strcmp((*(struct dirent *const *)a)->d_name, (*(struct dirent *const *)b)->d_name);
}

static int filter_visible(const struct dirent *e)
{
    return strcmp(e->d_name, ".") != 0 && strcmp(e->d_name, "..") != 0;
}

typedef struct lister {
    int (*cb)(void *ud, const mv_be_entry *e);
    void *ud;
    char key[PATH_MAX];
    size_t rootlen; /* bytes of "<root>/" before the key in path */
    char path[PATH_MAX];
} lister;

/* Walk the directory at l->path (length n) depth first in strcmp order: directories are
 * descended into, everything else is reported with its key (path relative to the root). */
static mv_err walk(lister *l, size_t n, int depth, char *err, size_t errlen)
{
    struct dirent **list = NULL;
    int cnt = scandir(l->path, &list, filter_visible, NULL);
    if (cnt < 0) {
        if (errno == ENOENT || errno == ENOTDIR) return MV_OK;
        return mv_seterr(err, errlen, MV_EIO, "scan %s: %s", l->path, strerror(errno));
    }
    if (cnt > 1) qsort(list, (size_t)cnt, sizeof *list, cmp_dirent);
    mv_err rc = MV_OK;
    for (int i = 0; i < cnt && rc == MV_OK; i++) {
        size_t nl = strlen(list[i]->d_name);
        if (n + 1 + nl >= sizeof l->path) continue;
        l->path[n] = '/';
        memcpy(l->path + n + 1, list[i]->d_name, nl + 1);
        struct stat st;
        if (lstat(l->path, &st) != 0) {
            l->path[n] = '\0';
            continue; /* removed while we walked */
        }
        if (S_ISDIR(st.st_mode) && depth < 8) {
            rc = walk(l, n + 1 + nl, depth + 1, err, errlen);
        } else {
            mv_be_entry e = {l->path + l->rootlen, (uint64_t)st.st_size, S_ISREG(st.st_mode)};
            if (l->cb(l->ud, &e) != 0)
                rc = mv_seterr(err, errlen, MV_ECANCEL, "listing stopped by callback");
        }
        l->path[n] = '\0';
    }
    for (int i = 0; i < cnt; i++)
        free(list[i]);
    free(list);
    return rc;
}

static mv_err fs_list(mv_be *be, const char *prefix, int (*cb)(void *ud, const mv_be_entry *e),
                      void *ud, char *err, size_t errlen)
{
    fs_be *b = (fs_be *)be;
    lister *l = calloc(1, sizeof *l);
    if (!l) return mv_seterr(err, errlen, MV_ENOMEM, "out of memory");
    l->cb = cb;
    l->ud = ud;
    l->rootlen = strlen(b->root) + 1;
    mv_err rc = mkpath(l->path, sizeof l->path, err, errlen, "%s/%s", b->root, prefix);
    if (rc == MV_OK) {
        size_t n = strlen(l->path);
        while (n > l->rootlen && l->path[n - 1] == '/')
            l->path[--n] = '\0';
        rc = walk(l, n, 0, err, errlen);
    }
    free(l);
    return rc;
}

static mv_err fs_list_top(mv_be *be, int (*cb)(void *ud, const char *name), void *ud, char *err,
                          size_t errlen)
{
    fs_be *b = (fs_be *)be;
    struct dirent **list = NULL;
    int cnt = scandir(b->root, &list, filter_visible, NULL);
    if (cnt < 0) return mv_seterr(err, errlen, MV_EIO, "scan %s: %s", b->root, strerror(errno));
    if (cnt > 1) qsort(list, (size_t)cnt, sizeof *list, cmp_dirent);
    mv_err rc = MV_OK;
    for (int i = 0; i < cnt && rc == MV_OK; i++) {
        struct stat st;
        char path[PATH_MAX];
        if (mkpath(path, sizeof path, NULL, 0, "%s/%s", b->root, list[i]->d_name) != MV_OK ||
            lstat(path, &st) != 0 || !S_ISDIR(st.st_mode))
            continue;
        if (cb(ud, list[i]->d_name) != 0)
            rc = mv_seterr(err, errlen, MV_ECANCEL, "listing stopped by callback");
    }
    for (int i = 0; i < cnt; i++)
        free(list[i]);
    free(list);
    return rc;
}

/* ---- the rest ----------------------------------------------------------------------------- */

static mv_err fs_sync(mv_be *be, uint64_t *dup_n, uint64_t *dup_bytes, char *err, size_t errlen)
{
    (void)dup_n;
    (void)dup_bytes;
    fs_be *b = (fs_be *)be;
    int fd = open(b->root, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) return mv_seterr(err, errlen, MV_EIO, "open %s: %s", b->root, strerror(errno));
    mv_err rc = MV_OK;
    if (syncfs(fd) != 0) rc = mv_seterr(err, errlen, MV_EIO, "syncfs: %s", strerror(errno));
    close(fd);
    return rc;
}

static mv_err fs_sweep(mv_be *be, int max_age_s, int *removed, char *err, size_t errlen)
{
    fs_be *b = (fs_be *)be;
    *removed = 0;
    DIR *root = opendir(b->root);
    if (!root) return mv_seterr(err, errlen, MV_EIO, "open %s: %s", b->root, strerror(errno));
    time_t cutoff = time(NULL) - max_age_s;
    struct dirent *te;
    mv_err rc = MV_OK;
    while (!rc && (te = readdir(root))) {
        if (!mv_name_valid(te->d_name)) continue; /* not a tenant directory */
        char dir[PATH_MAX];
        if ((rc = mkpath(dir, sizeof dir, err, errlen, "%s/%s/tmp", b->root, te->d_name))) break;
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

static mv_err fs_del(mv_be *be, const char *key, int *refused, char *err, size_t errlen)
{
    fs_be *b = (fs_be *)be;
    char path[PATH_MAX];
    *refused = 0;
    mv_err rc = mkpath(path, sizeof path, err, errlen, "%s/%s", b->root, key);
    if (rc) return rc;
    if (unlink(path) != 0) {
        if (errno == ENOENT) return mv_seterr(err, errlen, MV_ENOTFOUND, "%s not found", key);
        if (errno == EPERM || errno == EACCES) *refused = 1;
        return mv_seterr(err, errlen, MV_EIO, "delete %s: %s", path, strerror(errno));
    }
    return MV_OK;
}

static void fs_close(mv_be *be)
{
    fs_be *b = (fs_be *)be;
    if (!b) return;
    free(b->root);
    free(b);
}

static const mv_be_ops fs_ops = {
    .type = "fs",
    .w_begin = fs_w_begin,
    .w_write = fs_w_write,
    .w_commit = fs_w_commit,
    .w_abort = fs_w_abort,
    .read = fs_read,
    .exists = fs_exists,
    .blob_put = fs_blob_put,
    .list = fs_list,
    .list_top = fs_list_top,
    .sync = fs_sync,
    .sweep = fs_sweep,
    .del = fs_del,
    .lock_get = NULL,
    .hold_set = NULL,
    .close = fs_close,
};

mv_err mv_be_fs_open(const char *root, int fsync_each, mv_be **out, char *err, size_t errlen)
{
    *out = NULL;
    if (!root || !root[0]) return mv_seterr(err, errlen, MV_EINVAL, "store root is empty");
    if (strlen(root) > PATH_MAX / 4)
        return mv_seterr(err, errlen, MV_EINVAL, "store root path too long");
    fs_be *b = calloc(1, sizeof *b);
    if (!b || !(b->root = strdup(root))) {
        free(b);
        return mv_seterr(err, errlen, MV_ENOMEM, "out of memory");
    }
    b->base.ops = &fs_ops;
    b->fsync_each = fsync_each ? 1 : 0;
    /* strip trailing slashes so joined paths stay canonical ("/" stays "/") */
    for (size_t n = strlen(b->root); n > 1 && b->root[n - 1] == '/'; n--)
        b->root[n - 1] = '\0';
    if (mkdirs(b->root, b->fsync_each) != 0) {
        mv_err rc =
            mv_seterr(err, errlen, MV_EIO, "create store root %s: %s", root, strerror(errno));
        fs_close(&b->base);
        return rc;
    }
    *out = &b->base;
    return MV_OK;
}

const char *mv_be_fs_root(const mv_be *be)
{
    return ((const fs_be *)be)->root;
}

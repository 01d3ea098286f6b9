/* export_dir.c - export a mailbox's archive into a directory of .eml files (profile type
 * "export", destination "directory"), run by the workers like an archive task.
 *
 * Every file is the archived message byte for byte, named by its SHA-256 ("<hash>.eml"): names
 * are stable and collision-free, and a message in two folders is one file per folder (tree
 * layout) or one file (flat layout). A file is written to a temporary name in its directory,
 * fsync'd, renamed, and the directory fsync'd: a crash leaves either the whole file or none
 * (temporaries of a crashed run are removed by the next). Re-running (or resuming after a
 * crash) writes only what is missing: a file that exists is read back and kept when its
 * content still hashes to its name, and rewritten when it does not (a destination changed by
 * hand). What each destination received is also recorded in Redis
 * (mv:export:{t}:{destination}), so a file deleted by hand is reported as restored.
 *
 * Chunks: at most worker.chunk_messages files are written per task chunk (or worker.
 * chunk_seconds); then a continuation task goes on (re-listing costs reads, never
 * duplicates). With "sign": true the last chunk writes MANIFEST (one line per file: SHA-256,
 * size, path, sorted by path), MANIFEST.sig (ECDSA P-256 over SHA-256, DER) and
 * signing-key.pub.pem, checkable with `openssl dgst -sha256 -verify signing-key.pub.pem
 * -signature MANIFEST.sig MANIFEST` (docs/exports.md). */
#define _XOPEN_SOURCE 700 /* nftw */
#include "chunk.h"
#include "export.h"

#include "mv/archive.h"
#include "mv/log.h"
#include "mv/search.h"
#include "mv/sign.h"
#include "mv/store.h"

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/evp.h>

#define TMP_PREFIX ".mv-tmp-"

static mv_err mkdirs(const char *path, char *err, size_t errlen)
{
    char tmp[4096];
    if (snprintf(tmp, sizeof tmp, "%s", path) >= (int)sizeof tmp)
        return mv_seterr(err, errlen, MV_EINVAL, "export path too long");
    for (char *p = tmp + 1;; p++) {
        if (*p == '/' || *p == '\0') {
            char c = *p;
            *p = '\0';
            if (mkdir(tmp, 0755) && errno != EEXIST)
                return mv_seterr(err, errlen, MV_EIO, "cannot create %s: %s", tmp, strerror(errno));
            *p = c;
            if (!c) break;
        }
    }
    return MV_OK;
}

static int fsync_dir(const char *dir)
{
    int fd = open(dir, O_RDONLY | O_DIRECTORY);
    if (fd < 0) return -1;
    int rc = fsync(fd);
    close(fd);
    return rc;
}

/* 1 if the file exists and its content hashes to hash; 0 if missing or different. */
static int file_ok(const char *path, const char *hash, uint64_t size)
{
    struct stat st;
    if (stat(path, &st) || !S_ISREG(st.st_mode) || (uint64_t)st.st_size != size) return 0;
    int fd = open(path, O_RDONLY);
    if (fd < 0) return 0;
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    unsigned char buf[65536], d[32];
    unsigned int dl = 0;
    int ok = md && EVP_DigestInit_ex(md, EVP_sha256(), NULL) == 1;
    ssize_t n;
    while (ok && (n = read(fd, buf, sizeof buf)) > 0)
        ok = EVP_DigestUpdate(md, buf, (size_t)n) == 1;
    close(fd);
    if (ok) ok = EVP_DigestFinal_ex(md, d, &dl) == 1 && dl == 32;
    EVP_MD_CTX_free(md);
    if (!ok) return 0;
    char hex[65];
    mv_hex(d, 32, hex);
    return strcmp(hex, hash) == 0;
}

typedef struct wsink {
    int fd;
    int failed;
    chunk_ctx *c;
} wsink;

static int write_piece(void *ud, const void *p, size_t n)
{
    wsink *w = ud;
    const char *c = p;
    while (n) {
        ssize_t k = write(w->fd, c, n);
        if (k < 0 && errno == EINTR) continue;
        if (k <= 0) {
            w->failed = errno ? errno : EIO;
            return 1;
        }
        c += k;
        n -= (size_t)k;
    }
    return chunk_beat(w->c, 0) ? 1 : 0;
}

/* Write one message from the store to full, atomically. */
static mv_err write_file(chunk_ctx *c, const xfile *f, const char *full, char *err, size_t errlen)
{
    char dir[4096], tmp[4352];
    snprintf(dir, sizeof dir, "%s", full);
    char *slash = strrchr(dir, '/');
    *slash = '\0';
    mv_err rc = mkdirs(dir, err, errlen);
    if (rc) return rc;
    snprintf(tmp, sizeof tmp, "%s/" TMP_PREFIX "%s.eml", dir, f->hash);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0)
        return mv_seterr(err, errlen, errno == ENOSPC || errno == EROFS ? MV_EIO : MV_EIO,
                         "cannot write %s: %s", tmp, strerror(errno));
    wsink w = {fd, 0, c};
    rc = mv_store_get(c->r->store, c->t->tenant, f->hash, write_piece, &w, err, errlen);
    if (!rc && w.failed)
        rc = mv_seterr(err, errlen, MV_EIO, "cannot write %s: %s", tmp, strerror(w.failed));
    if (!rc && fsync(fd))
        rc = mv_seterr(err, errlen, MV_EIO, "cannot sync %s: %s", tmp, strerror(errno));
    close(fd);
    if (!rc && rename(tmp, full))
        rc = mv_seterr(err, errlen, MV_EIO, "cannot rename to %s: %s", full, strerror(errno));
    if (!rc && fsync_dir(dir))
        rc = mv_seterr(err, errlen, MV_EIO, "cannot sync %s: %s", dir, strerror(errno));
    if (rc) unlink(tmp);
    return rc;
}

static int rm_tmp(const char *path, const struct stat *st, int type, struct FTW *ftw)
{
    (void)st;
    if (type == FTW_F && !strncmp(path + ftw->base, TMP_PREFIX, strlen(TMP_PREFIX))) unlink(path);
    return 0;
}

static mv_err put_small(const char *path, const void *data, size_t len, char *err, size_t errlen)
{
    char tmp[4352];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) return mv_seterr(err, errlen, MV_EIO, "cannot write %s: %s", tmp, strerror(errno));
    const char *c = data;
    size_t left = len;
    while (left) {
        ssize_t k = write(fd, c, left);
        if (k < 0 && errno == EINTR) continue;
        if (k <= 0) break;
        c += k;
        left -= (size_t)k;
    }
    int bad = left || fsync(fd);
    close(fd);
    if (bad || rename(tmp, path)) {
        unlink(tmp);
        return mv_seterr(err, errlen, MV_EIO, "cannot write %s: %s", path, strerror(errno));
    }
    return MV_OK;
}

/* MANIFEST, its signature and the public key, once every file is in place. */
static mv_err sign_export(chunk_ctx *c, const mv_profile *p, const xlist *l, const char *key,
                          char *err, size_t errlen)
{
    size_t cap = 4096, len = 0;
    char *m = malloc(cap);
    mv_err rc = MV_OK;
    if (!m) return mv_seterr(err, errlen, MV_ENOMEM, "out of memory");
    for (size_t i = 0; i < l->n; i++) {
        if (i && !strcmp(l->v[i].rel, l->v[i - 1].rel)) continue;
        size_t need = strlen(l->v[i].rel) + 100;
        if (len + need > cap) {
            while (len + need > cap)
                cap *= 2;
            char *nm = realloc(m, cap);
            if (!nm) {
                free(m);
                return mv_seterr(err, errlen, MV_ENOMEM, "out of memory");
            }
            m = nm;
        }
        len += (size_t)snprintf(m + len, cap - len, "%s\t%llu\t%s\n", l->v[i].hash,
                                (unsigned long long)l->v[i].size, l->v[i].rel);
    }
    unsigned char *sig = NULL;
    size_t siglen = 0;
    char *pub = NULL, path[4096];
    if (!key || !*key) {
        rc = mv_seterr(err, errlen, MV_EINVAL, "export %s: no signing key stored", p->name);
        goto out;
    }
    if ((rc = mv_sign_data(key, m, len, &sig, &siglen, err, errlen)) ||
        (rc = mv_sign_pubkey(key, &pub, err, errlen)))
        goto out;
    snprintf(path, sizeof path, "%s/MANIFEST", p->exp_path);
    if ((rc = put_small(path, m, len, err, errlen))) goto out;
    snprintf(path, sizeof path, "%s/MANIFEST.sig", p->exp_path);
    if ((rc = put_small(path, sig, siglen, err, errlen))) goto out;
    snprintf(path, sizeof path, "%s/signing-key.pub.pem", p->exp_path);
    if ((rc = put_small(path, pub, strlen(pub), err, errlen))) goto out;
    if (fsync_dir(p->exp_path))
        rc = mv_seterr(err, errlen, MV_EIO, "cannot sync %s: %s", p->exp_path, strerror(errno));
    mv_info("export signed", " tenant=%s export=%s files=%zu", c->t->tenant, p->name, l->n);
out:
    free(m);
    free(sig);
    free(pub);
    return rc;
}

mv_err export_run(chunk_ctx *c, const mv_profile *p, const char *sign_key, int *more, char *err,
                  size_t errlen)
{
    const mv_task *t = c->t;
    mv_runner *r = c->r;
    xlist l = {0};
    uint64_t written = 0, kept = 0, restored = 0, bytes = 0;
    *more = 0;
    c->profile = p;
    mv_err rc = mkdirs(p->exp_path, err, errlen);
    if (rc) goto out;
    if (t->chunk == 0) nftw(p->exp_path, rm_tmp, 16, FTW_PHYS); /* a crashed run's leftovers */
    if ((rc = export_list(c, p, &l, err, errlen))) goto out;
    char dest[64];
    {
        unsigned char d[32];
        unsigned int dl = 0;
        EVP_Digest(p->exp_path, strlen(p->exp_path), d, &dl, EVP_sha256(), NULL);
        mv_hex(d, 8, dest);
    }
    int64_t deadline = mv_mono_ms() + (int64_t)r->cfg->chunk_seconds * 1000;
    size_t i = export_resume(c, &l);
    for (; i < l.n && !rc; i++) {
        if (i && !strcmp(l.v[i].rel, l.v[i - 1].rel)) continue; /* same message, same folder */
        if ((rc = chunk_beat(c, 0))) {
            mv_seterr(err, errlen, rc, "%s", c->err);
            break;
        }
        char full[4096];
        if (snprintf(full, sizeof full, "%s/%s", p->exp_path, l.v[i].rel) >= (int)sizeof full) {
            rc = mv_seterr(err, errlen, MV_EINVAL, "export path too long: %s", l.v[i].rel);
            break;
        }
        if (file_ok(full, l.v[i].hash, l.v[i].size)) {
            kept++;
            continue;
        }
        if (written >= (uint64_t)r->cfg->chunk_messages || mv_mono_ms() > deadline ||
            *r->stopping) {
            *more = 1;
            break;
        }
        int had = 0;
        if ((rc = mv_state_set_member(r->st, t->tenant, "export", dest, l.v[i].rel, &had, err,
                                      errlen)))
            break;
        if ((rc = write_file(c, &l.v[i], full, err, errlen))) break;
        if ((rc = mv_state_set_add(r->st, t->tenant, "export", dest, l.v[i].rel, err, errlen)))
            break;
        written++;
        bytes += l.v[i].size;
        if (had) {
            restored++;
            mv_info("exported file restored (changed or removed at the destination)",
                    " tenant=%s export=%s file=\"%s\"", t->tenant, p->name, l.v[i].rel);
        }
    }
    if (!rc && *more) export_mark(c, &l, i); /* everything before entry i is handled */
    if (!rc && !*more && p->exp_sign) rc = sign_export(c, p, &l, sign_key, err, errlen);
out:
    export_count(c, written, bytes, kept);
    mv_info(*more ? "export chunk done" : "export done",
            " tenant=%s export=%s written=%llu kept=%llu restored=%llu", t->tenant, p->name,
            (unsigned long long)written, (unsigned long long)kept, (unsigned long long)restored);
    xlist_free(&l);
    return rc;
}

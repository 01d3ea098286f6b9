/* test_store.c - unit tests of the filesystem content store (shared/src/store.c).
 *
 * Every test works in its own mkdtemp directory under /tmp, removed at teardown. The large
 * message test streams 20 MB from a deterministic generator and compares the output against
 * the same generator on the fly, so neither side ever holds the whole message. */
#define _GNU_SOURCE
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "mv/store.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <openssl/evp.h>
#include <pthread.h>
#include <stdio.h>
#include <time.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define T "t1"

typedef struct fx {
    char dir[64];
    char root[128];
    mv_store *s;
} fx;

static int rm_cb(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb;
    (void)flag;
    (void)ftw;
    return remove(path);
}

static void rm_rf(const char *dir)
{
    nftw(dir, rm_cb, 16, FTW_DEPTH | FTW_PHYS);
}

static int setup(void **state)
{
    fx *f = calloc(1, sizeof *f);
    char err[MV_ERRLEN];
    snprintf(f->dir, sizeof f->dir, "/tmp/mv-store-XXXXXX");
    if (!mkdtemp(f->dir)) return -1;
    snprintf(f->root, sizeof f->root, "%s/store/", f->dir); /* trailing '/' on purpose */
    if (mv_store_open(f->root, 0, 3, &f->s, err, sizeof err) != MV_OK) return -1;
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fx *f = *state;
    mv_store_close(f->s);
    rm_rf(f->dir);
    free(f);
    return 0;
}

/* ---- helpers ---- */

static void sha_hex(const void *d, size_t n, char out[65])
{
    unsigned char md[32];
    unsigned int l = 0;
    EVP_Digest(d, n, md, &l, EVP_sha256(), NULL);
    for (int i = 0; i < 32; i++)
        snprintf(out + 2 * i, 3, "%02x", md[i]);
}

static mv_err put_buf(mv_store *s, const char *tenant, const void *d, size_t n, int overwrite,
                      mv_put_result *res)
{
    char err[MV_ERRLEN];
    mv_put *p;
    mv_err rc = mv_store_put_begin(s, tenant, &p, err, sizeof err);
    if (rc) return rc;
    if ((rc = mv_put_write(p, d, n, err, sizeof err)) != MV_OK) {
        mv_put_abort(p);
        return rc;
    }
    return mv_put_commit(p, overwrite, res, err, sizeof err);
}

typedef struct membuf {
    unsigned char *d;
    size_t n, cap;
    int calls;
} membuf;

static int mem_sink(void *ud, const void *data, size_t len)
{
    membuf *m = ud;
    if (m->n + len > m->cap) {
        m->cap = (m->n + len) * 2 + 16;
        m->d = realloc(m->d, m->cap);
    }
    memcpy(m->d + m->n, data, len);
    m->n += len;
    m->calls++;
    return 0;
}

static void obj_path(fx *f, const char *tenant, const char *hash, char *out, size_t outlen)
{
    snprintf(out, outlen, "%s/store/%s/objects/%.2s/%.2s/%s", f->dir, tenant, hash, hash + 2, hash);
}

/* Number of regular files below dir (recursively). */
static int count_files(const char *dir)
{
    DIR *d = opendir(dir);
    if (!d) return 0;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        char p[1024];
        struct stat st;
        snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
        if (lstat(p, &st) != 0) continue;
        if (S_ISDIR(st.st_mode))
            n += count_files(p);
        else
            n++;
    }
    closedir(d);
    return n;
}

static int count_sub(fx *f, const char *tenant, const char *sub)
{
    char p[512];
    snprintf(p, sizeof p, "%s/store/%s/%s", f->dir, tenant, sub);
    return count_files(p);
}

/* ---- put / get ---- */

static void test_roundtrip_small(void **state)
{
    fx *f = *state;
    const char msg[] = "From: a@example.com\r\nSubject: hi\r\n\r\nbody\r\n";
    mv_put_result r;
    char want[65], err[MV_ERRLEN];
    assert_int_equal(put_buf(f->s, T, msg, sizeof msg - 1, 0, &r), MV_OK);
    sha_hex(msg, sizeof msg - 1, want);
    assert_string_equal(r.hash, want);
    assert_int_equal(r.raw_bytes, sizeof msg - 1);
    assert_int_equal(r.existed, 0);

    char p[512];
    struct stat st;
    obj_path(f, T, r.hash, p, sizeof p);
    assert_int_equal(stat(p, &st), 0);
    assert_int_equal((uint64_t)st.st_size, r.stored_bytes);
    assert_true(mv_store_exists(f->s, T, r.hash));
    assert_false(mv_store_exists(f->s, "t2", r.hash));

    membuf m = {0};
    assert_int_equal(mv_store_get(f->s, T, r.hash, mem_sink, &m, err, sizeof err), MV_OK);
    assert_int_equal(m.n, sizeof msg - 1);
    assert_memory_equal(m.d, msg, m.n);
    free(m.d);
    assert_int_equal(count_sub(f, T, "tmp"), 0);
    char root[256];
    snprintf(root, sizeof root, "%s/store", f->dir); /* trailing '/' of f->root stripped */
    assert_string_equal(mv_store_root(f->s), root);
}

static void test_empty_message(void **state)
{
    fx *f = *state;
    mv_put_result r;
    char err[MV_ERRLEN];
    assert_int_equal(put_buf(f->s, T, "", 0, 0, &r), MV_OK);
    assert_string_equal(r.hash, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    assert_int_equal(r.raw_bytes, 0);
    assert_true(r.stored_bytes > 0);
    membuf m = {0};
    assert_int_equal(mv_store_get(f->s, T, r.hash, mem_sink, &m, err, sizeof err), MV_OK);
    assert_int_equal(m.n, 0);
    free(m.d);
}

/* Deterministic, partly compressible byte stream: text-like runs mixed with xorshift noise. */
typedef struct gen {
    uint64_t x;
    uint64_t pos;
} gen;

static unsigned char gen_byte(uint64_t pos)
{
    uint64_t x = pos * 0x9E3779B97F4A7C15ull;
    x ^= x >> 29;
    if ((pos / 4096) % 3 == 0) return (unsigned char)(x & 0xff);                         /* noise */
    return (unsigned char)("The quick brown fox jumps over the lazy dog\r\n"[pos % 45]); /* text */
}

typedef struct cmp_sink {
    uint64_t pos;
    int mismatch;
    size_t maxchunk;
} cmp_sink;

static int cmp_cb(void *ud, const void *data, size_t len)
{
    cmp_sink *c = ud;
    const unsigned char *p = data;
    if (len > c->maxchunk) c->maxchunk = len;
    for (size_t i = 0; i < len; i++)
        if (p[i] != gen_byte(c->pos + i)) c->mismatch = 1;
    c->pos += len;
    return 0;
}

static void test_large_odd_pieces(void **state)
{
    fx *f = *state;
    const uint64_t total = 20u * 1000 * 1000;
    static const size_t sizes[] = {1, 7, 4093, 65537, 131073, 3, 300001, 17};
    char err[MV_ERRLEN];
    unsigned char *piece = malloc(300001);
    mv_put *p;
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    EVP_DigestInit_ex(md, EVP_sha256(), NULL);
    assert_int_equal(mv_store_put_begin(f->s, T, &p, err, sizeof err), MV_OK);
    uint64_t pos = 0;
    for (size_t k = 0; pos < total; k++) {
        size_t n = sizes[k % 8];
        if (n > total - pos) n = (size_t)(total - pos);
        for (size_t i = 0; i < n; i++)
            piece[i] = gen_byte(pos + i);
        EVP_DigestUpdate(md, piece, n);
        assert_int_equal(mv_put_write(p, piece, n, err, sizeof err), MV_OK);
        pos += n;
    }
    mv_put_result r;
    assert_int_equal(mv_put_commit(p, 0, &r, err, sizeof err), MV_OK);
    unsigned char d[32];
    unsigned int dl;
    char want[65];
    EVP_DigestFinal_ex(md, d, &dl);
    EVP_MD_CTX_free(md);
    for (int i = 0; i < 32; i++)
        snprintf(want + 2 * i, 3, "%02x", d[i]);
    assert_string_equal(r.hash, want);
    assert_int_equal(r.raw_bytes, total);
    assert_true(r.stored_bytes < total); /* two thirds of it is text */

    cmp_sink c = {0};
    assert_int_equal(mv_store_get(f->s, T, r.hash, cmp_cb, &c, err, sizeof err), MV_OK);
    assert_int_equal(c.pos, total);
    assert_int_equal(c.mismatch, 0);
    assert_true(c.maxchunk <= 128 * 1024); /* output is streamed in bounded pieces */
    free(piece);
}

static void test_dedup(void **state)
{
    fx *f = *state;
    const char msg[] = "Subject: same\r\n\r\nsame body\r\n";
    mv_put_result a, b;
    assert_int_equal(put_buf(f->s, T, msg, sizeof msg - 1, 0, &a), MV_OK);
    assert_int_equal(put_buf(f->s, T, msg, sizeof msg - 1, 0, &b), MV_OK);
    assert_int_equal(a.existed, 0);
    assert_int_equal(b.existed, 1);
    assert_string_equal(a.hash, b.hash);
    assert_int_equal(a.stored_bytes, b.stored_bytes);
    assert_int_equal(count_sub(f, T, "objects"), 1);
    assert_int_equal(count_sub(f, T, "tmp"), 0);
    /* another tenant stores its own copy */
    mv_put_result c;
    assert_int_equal(put_buf(f->s, "t2", msg, sizeof msg - 1, 0, &c), MV_OK);
    assert_int_equal(c.existed, 0);
}

static void test_overwrite(void **state)
{
    fx *f = *state;
    const char msg[] = "overwrite me";
    mv_put_result a, b;
    char p[512], err[MV_ERRLEN];
    struct stat s1, s2;
    assert_int_equal(put_buf(f->s, T, msg, sizeof msg - 1, 0, &a), MV_OK);
    obj_path(f, T, a.hash, p, sizeof p);
    assert_int_equal(stat(p, &s1), 0);
    assert_int_equal(put_buf(f->s, T, msg, sizeof msg - 1, 1, &b), MV_OK);
    assert_int_equal(b.existed, 0);
    assert_int_equal(stat(p, &s2), 0);
    assert_true(s1.st_ino != s2.st_ino); /* replaced by a fresh file */
    assert_int_equal(count_sub(f, T, "objects"), 1);

    /* overwrite repairs a damaged copy that dedup would keep */
    FILE *fp = fopen(p, "r+b");
    fputc('X', fp);
    fclose(fp);
    membuf m = {0};
    assert_int_equal(mv_store_get(f->s, T, a.hash, mem_sink, &m, err, sizeof err), MV_ECORRUPT);
    assert_int_equal(put_buf(f->s, T, msg, sizeof msg - 1, 0, &b), MV_OK);
    assert_int_equal(b.existed, 1);
    assert_int_equal(put_buf(f->s, T, msg, sizeof msg - 1, 1, &b), MV_OK);
    m.n = 0;
    assert_int_equal(mv_store_get(f->s, T, a.hash, mem_sink, &m, err, sizeof err), MV_OK);
    assert_memory_equal(m.d, msg, m.n);
    free(m.d);
}

static void test_abort_leaves_nothing(void **state)
{
    fx *f = *state;
    char err[MV_ERRLEN];
    mv_put *p;
    assert_int_equal(mv_store_put_begin(f->s, T, &p, err, sizeof err), MV_OK);
    assert_int_equal(count_sub(f, T, "tmp"), 1); /* in flight */
    assert_int_equal(mv_put_write(p, "partial", 7, err, sizeof err), MV_OK);
    mv_put_abort(p);
    mv_put_abort(NULL);
    assert_int_equal(count_sub(f, T, "tmp"), 0);
    assert_int_equal(count_sub(f, T, "objects"), 0);
    char h[65];
    sha_hex("partial", 7, h);
    assert_false(mv_store_exists(f->s, T, h));
}

static void test_crash_leftover_tmp(void **state)
{
    fx *f = *state;
    char err[MV_ERRLEN], h[65], p[512];
    mv_put_result r;
    /* a put that "crashed" after writing its temp file: create one by hand */
    assert_int_equal(put_buf(f->s, T, "x", 1, 0, &r), MV_OK);
    sha_hex("never committed", 15, h);
    snprintf(p, sizeof p, "%s/store/%s/tmp/%s", f->dir, T, h);
    FILE *fp = fopen(p, "wb");
    assert_non_null(fp);
    fputs("garbage", fp);
    fclose(fp);
    assert_false(mv_store_exists(f->s, T, h));
    membuf m = {0};
    assert_int_equal(mv_store_get(f->s, T, h, mem_sink, &m, err, sizeof err), MV_ENOTFOUND);
    mv_verify_stats st;
    assert_int_equal(mv_store_verify(f->s, T, NULL, NULL, NULL, &st, err, sizeof err), MV_OK);
    assert_int_equal(st.objects, 1); /* tmp/ is not part of the object space */
    assert_int_equal(st.ok, 1);
    assert_int_equal(st.bad, 0);

    /* clean_tmp keeps young temp files (a writer may be using them) and removes old ones */
    int removed = -1;
    assert_int_equal(mv_store_clean_tmp(f->s, 3600, &removed, err, sizeof err), MV_OK);
    assert_int_equal(removed, 0);
    assert_int_equal(access(p, F_OK), 0);
    struct timespec old[2] = {{.tv_sec = time(NULL) - 7200}, {.tv_sec = time(NULL) - 7200}};
    assert_int_equal(utimensat(AT_FDCWD, p, old, 0), 0);
    assert_int_equal(mv_store_clean_tmp(f->s, 3600, &removed, err, sizeof err), MV_OK);
    assert_int_equal(removed, 1);
    assert_int_equal(access(p, F_OK), -1);
    assert_int_equal(mv_store_verify(f->s, T, NULL, NULL, NULL, &st, err, sizeof err), MV_OK);
    assert_int_equal(st.ok, 1); /* the real object is untouched */
}

typedef struct badlog {
    int n;
    char last[128];
    char why[256];
    int progress;
} badlog;

static void bad_cb(void *ud, const char *tenant, const char *hash, const char *why)
{
    badlog *b = ud;
    (void)tenant;
    b->n++;
    snprintf(b->last, sizeof b->last, "%s", hash);
    snprintf(b->why, sizeof b->why, "%s", why);
}

static void progress_cb(void *ud, const mv_verify_stats *st)
{
    badlog *b = ud;
    b->progress++;
    assert_int_equal(st->objects, st->ok + st->bad);
}

static void test_corruption_detected(void **state)
{
    fx *f = *state;
    char err[MV_ERRLEN], p[512];
    mv_put_result r1, r2;
    struct stat st;
    char msg[4096];
    for (size_t i = 0; i < sizeof msg; i++)
        msg[i] = (char)('a' + i % 26);
    assert_int_equal(put_buf(f->s, T, msg, sizeof msg, 0, &r1), MV_OK);
    assert_int_equal(put_buf(f->s, T, "other", 5, 0, &r2), MV_OK);
    obj_path(f, T, r1.hash, p, sizeof p);
    assert_int_equal(stat(p, &st), 0);

    /* flip one byte in the middle of the frame */
    int fd = open(p, O_RDWR);
    unsigned char c;
    off_t mid = st.st_size / 2;
    assert_int_equal(pread(fd, &c, 1, mid), 1);
    c ^= 0x5a;
    assert_int_equal(pwrite(fd, &c, 1, mid), 1);
    close(fd);
    membuf m = {0};
    err[0] = '\0';
    assert_int_equal(mv_store_get(f->s, T, r1.hash, mem_sink, &m, err, sizeof err), MV_ECORRUPT);
    assert_true(strlen(err) > 0);
    free(m.d);

    badlog b = {0};
    mv_verify_stats vs;
    assert_int_equal(mv_store_verify(f->s, T, bad_cb, progress_cb, &b, &vs, err, sizeof err),
                     MV_OK);
    assert_int_equal(vs.objects, 2);
    assert_int_equal(vs.ok, 1);
    assert_int_equal(vs.bad, 1);
    assert_int_equal(b.n, 1);
    assert_string_equal(b.last, r1.hash);
    assert_int_equal(b.progress, 2);
    assert_int_equal(vs.raw_bytes, 5);

    /* a valid frame under the wrong name: hash mismatch */
    char p2[512];
    obj_path(f, T, r2.hash, p2, sizeof p2);
    assert_int_equal(rename(p2, p), 0);
    m = (membuf){0};
    assert_int_equal(mv_store_get(f->s, T, r1.hash, mem_sink, &m, err, sizeof err), MV_ECORRUPT);
    assert_non_null(strstr(err, "hashes to"));
    free(m.d);

    /* truncated object */
    assert_int_equal(put_buf(f->s, T, msg, sizeof msg, 1, &r1), MV_OK);
    assert_int_equal(truncate(p, 5), 0);
    assert_int_equal(mv_store_get(f->s, T, r1.hash, NULL, NULL, err, sizeof err), MV_ECORRUPT);
    assert_int_equal(truncate(p, 0), 0);
    assert_int_equal(mv_store_get(f->s, T, r1.hash, NULL, NULL, err, sizeof err), MV_ECORRUPT);
}

static void test_verify_strays_and_tenants(void **state)
{
    fx *f = *state;
    char err[MV_ERRLEN], p[512];
    mv_put_result r;
    assert_int_equal(put_buf(f->s, T, "a", 1, 0, &r), MV_OK);
    assert_int_equal(put_buf(f->s, "t2", "b", 1, 0, &r), MV_OK);
    /* stray file with a non-hash name next to the object */
    snprintf(p, sizeof p, "%s/store/t2/objects/%.2s/%.2s/leftover.tmp", f->dir, r.hash, r.hash + 2);
    FILE *fp = fopen(p, "wb");
    fclose(fp);
    /* a valid name in the wrong directory */
    snprintf(p, sizeof p, "%s/store/t2/objects/%.2s/%.2s/%s", f->dir, r.hash, r.hash + 2,
             "0000000000000000000000000000000000000000000000000000000000000000");
    fp = fopen(p, "wb");
    fclose(fp);

    badlog b = {0};
    mv_verify_stats vs;
    assert_int_equal(mv_store_verify(f->s, NULL, bad_cb, progress_cb, &b, &vs, err, sizeof err),
                     MV_OK);
    assert_int_equal(vs.objects, 4);
    assert_int_equal(vs.ok, 2);
    assert_int_equal(vs.bad, 2);
    assert_int_equal(b.n, 2);
    assert_int_equal(b.progress, 4);
    assert_int_equal(mv_store_verify(f->s, T, NULL, NULL, NULL, &vs, err, sizeof err), MV_OK);
    assert_int_equal(vs.objects, 1);
    assert_int_equal(mv_store_verify(f->s, "nobody", NULL, NULL, NULL, &vs, err, sizeof err),
                     MV_OK);
    assert_int_equal(vs.objects, 0);
    assert_int_equal(mv_store_verify(f->s, "../x", NULL, NULL, NULL, &vs, err, sizeof err),
                     MV_EINVAL);
}

static void test_invalid_input(void **state)
{
    fx *f = *state;
    char err[MV_ERRLEN];
    mv_put *p = (mv_put *)1;
    const char *bad_tenants[] = {"", "..", ".", "../x", "a/b", "T1", "-x", "a b", NULL};
    for (size_t i = 0; i < sizeof bad_tenants / sizeof *bad_tenants; i++) {
        assert_int_equal(mv_store_put_begin(f->s, bad_tenants[i], &p, err, sizeof err), MV_EINVAL);
        assert_null(p);
        p = (mv_put *)1;
    }
    const char *good = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
    const char *bad_hashes[] = {"",
                                "../../../../etc/passwd",
                                "E3B0C44298FC1C149AFBF4C8996FB92427AE41E4649B934CA495991B7852B855",
                                "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b85",
                                "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b8555",
                                "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b85/",
                                "g3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
                                NULL};
    for (size_t i = 0; i < sizeof bad_hashes / sizeof *bad_hashes; i++) {
        assert_int_equal(mv_store_get(f->s, T, bad_hashes[i], NULL, NULL, err, sizeof err),
                         MV_EINVAL);
        assert_false(mv_store_exists(f->s, T, bad_hashes[i]));
    }
    assert_int_equal(mv_store_get(f->s, "../t", good, NULL, NULL, err, sizeof err), MV_EINVAL);
    assert_int_equal(mv_store_get(f->s, T, good, NULL, NULL, err, sizeof err), MV_ENOTFOUND);

    mv_store *s2;
    assert_int_equal(mv_store_open(f->root, 0, 0, &s2, err, sizeof err), MV_EINVAL);
    assert_int_equal(mv_store_open(f->root, 0, 20, &s2, err, sizeof err), MV_EINVAL);
    assert_int_equal(mv_store_open("", 0, 3, &s2, err, sizeof err), MV_EINVAL);
    /* nothing was created outside the root */
    struct stat st;
    char path[256];
    snprintf(path, sizeof path, "%s/t", f->dir);
    assert_int_not_equal(stat(path, &st), 0);
}

static int stop_sink(void *ud, const void *data, size_t len)
{
    (void)ud;
    (void)data;
    (void)len;
    return 1;
}

static void test_get_cancel(void **state)
{
    fx *f = *state;
    char err[MV_ERRLEN];
    mv_put_result r;
    assert_int_equal(put_buf(f->s, T, "abc", 3, 0, &r), MV_OK);
    assert_int_equal(mv_store_get(f->s, T, r.hash, stop_sink, NULL, err, sizeof err), MV_ECANCEL);
}

static void test_fsync_mode_and_sync(void **state)
{
    fx *f = *state;
    char err[MV_ERRLEN], root[256];
    mv_store *s;
    mv_put_result r;
    snprintf(root, sizeof root, "%s/durable/a/b", f->dir);
    assert_int_equal(mv_store_open(root, 1, 19, &s, err, sizeof err), MV_OK);
    assert_int_equal(put_buf(s, T, "durable", 7, 0, &r), MV_OK);
    assert_int_equal(put_buf(s, T, "durable", 7, 0, &r), MV_OK);
    assert_int_equal(r.existed, 1);
    assert_int_equal(mv_store_sync(s, err, sizeof err), MV_OK);
    assert_int_equal(mv_store_sync(f->s, err, sizeof err), MV_OK);
    membuf m = {0};
    assert_int_equal(mv_store_get(s, T, r.hash, mem_sink, &m, err, sizeof err), MV_OK);
    assert_memory_equal(m.d, "durable", 7);
    free(m.d);
    mv_store_close(s);
}

/* ---- concurrency ---- */

typedef struct thr {
    mv_store *s;
    int id;
    int fails;
    int existed;
} thr;

static void *thr_main(void *arg)
{
    thr *t = arg;
    char buf[64 * 1024];
    memset(buf, 'S', sizeof buf); /* every thread stores the same content ... */
    for (int i = 0; i < 25; i++) {
        mv_put_result r = {0};
        if (put_buf(t->s, T, buf, sizeof buf, i % 5 == 4, &r) != MV_OK) t->fails++;
        t->existed += r.existed;
        char own[32]; /* ... and some content of its own */
        int n = snprintf(own, sizeof own, "thread %d msg %d", t->id, i);
        if (put_buf(t->s, T, own, (size_t)n, 0, &r) != MV_OK) t->fails++;
    }
    return NULL;
}

static void test_concurrent_puts(void **state)
{
    fx *f = *state;
    enum { N = 6 };
    pthread_t th[N];
    thr t[N];
    for (int i = 0; i < N; i++) {
        t[i] = (thr){f->s, i, 0, 0};
        pthread_create(&th[i], NULL, thr_main, &t[i]);
    }
    int existed = 0;
    for (int i = 0; i < N; i++) {
        pthread_join(th[i], NULL);
        assert_int_equal(t[i].fails, 0);
        existed += t[i].existed;
    }
    assert_true(existed > 0);
    assert_int_equal(count_sub(f, T, "objects"), 1 + N * 25);
    assert_int_equal(count_sub(f, T, "tmp"), 0);
    char err[MV_ERRLEN];
    mv_verify_stats vs;
    assert_int_equal(mv_store_verify(f->s, T, NULL, NULL, NULL, &vs, err, sizeof err), MV_OK);
    assert_int_equal(vs.bad, 0);
    assert_int_equal(vs.ok, 1 + N * 25);
}

/* ---- escaping ---- */

static void test_announced_size(void **state)
{
    fx *f = *state;
    char err[MV_ERRLEN];
    mv_put *p = NULL;
    mv_put_result r;
    const char msg[] = "Subject: sized\r\n\r\nbody\r\n";
    /* exact: same object as an unannounced put of the same bytes */
    assert_int_equal(mv_store_put_begin(f->s, T, &p, err, sizeof err), MV_OK);
    assert_int_equal(mv_put_set_size(p, sizeof msg - 1, err, sizeof err), MV_OK);
    assert_int_equal(mv_put_write(p, msg, 5, err, sizeof err), MV_OK);
    assert_int_equal(mv_put_write(p, msg + 5, sizeof msg - 1 - 5, err, sizeof err), MV_OK);
    assert_int_equal(mv_put_commit(p, 0, &r, err, sizeof err), MV_OK);
    mv_put_result r2;
    assert_int_equal(put_buf(f->s, T, msg, sizeof msg - 1, 0, &r2), MV_OK);
    assert_string_equal(r.hash, r2.hash);
    assert_int_equal(r2.existed, 1);
    /* fewer bytes than announced: refused at commit, nothing stored */
    assert_int_equal(mv_store_put_begin(f->s, T, &p, err, sizeof err), MV_OK);
    assert_int_equal(mv_put_set_size(p, 100, err, sizeof err), MV_OK);
    assert_int_equal(mv_put_write(p, "short", 5, err, sizeof err), MV_OK);
    assert_int_equal(mv_put_commit(p, 0, &r, err, sizeof err), MV_EINVAL);
    assert_non_null(strstr(err, "announced"));
    char h[65];
    sha_hex("short", 5, h);
    assert_false(mv_store_exists(f->s, T, h));
    /* more bytes than announced: refused at the write */
    assert_int_equal(mv_store_put_begin(f->s, T, &p, err, sizeof err), MV_OK);
    assert_int_equal(mv_put_set_size(p, 3, err, sizeof err), MV_OK);
    assert_int_equal(mv_put_write(p, "toolong", 7, err, sizeof err), MV_EINVAL);
    mv_put_abort(p);
    /* announcing after data is refused */
    assert_int_equal(mv_store_put_begin(f->s, T, &p, err, sizeof err), MV_OK);
    assert_int_equal(mv_put_write(p, "x", 1, err, sizeof err), MV_OK);
    assert_int_equal(mv_put_set_size(p, 1, err, sizeof err), MV_EINVAL);
    mv_put_abort(p);
}

static void test_path_escape(void **state)
{
    (void)state;
    const char *cases[] = {"user@example.com",
                           "a/b",
                           "..",
                           ".",
                           ".hidden",
                           "a..b",
                           "%",
                           "%25",
                           "100%",
                           "a b\tc",
                           "\xc3\xa9t\xc3\xa9 \xe2\x82\xac \xf0\x9f\x93\xa7",
                           "+-_.@",
                           "\x01\x7f\xff",
                           "x"};
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        char esc[1024], back[1024];
        mv_store_path_escape(cases[i], esc, sizeof esc);
        assert_null(strchr(esc, '/'));
        assert_true(esc[0] != '.');
        for (const char *c = esc; *c; c++)
            assert_true((*c >= 'A' && *c <= 'Z') || (*c >= 'a' && *c <= 'z') ||
                        (*c >= '0' && *c <= '9') || strchr("._@+-%", *c));
        mv_store_path_unescape(esc, back, sizeof back);
        assert_string_equal(back, cases[i]);
    }
    char esc[64];
    mv_store_path_escape("user@example.com", esc, sizeof esc);
    assert_string_equal(esc, "user@example.com");
    mv_store_path_escape("a/b", esc, sizeof esc);
    assert_string_equal(esc, "a%2Fb");
    mv_store_path_escape("..", esc, sizeof esc);
    assert_string_equal(esc, "%2E.");
    /* truncation keeps whole units and a NUL */
    mv_store_path_escape("ab/cd", esc, 4);
    assert_string_equal(esc, "ab");
    mv_store_path_escape("abc", esc, 1);
    assert_string_equal(esc, "");
}

/* ---- segments ---- */

typedef struct names {
    int n;
    char v[16][256];
} names;

static int name_cb(void *ud, const char *name)
{
    names *l = ud;
    if (l->n < 16) snprintf(l->v[l->n++], 256, "%s", name);
    return 0;
}

static void test_segments(void **state)
{
    fx *f = *state;
    char err[MV_ERRLEN];
    const char *mb = "user/with\xc3\xa9@example.com";
    names l = {0};
    /* nothing yet: empty listings, not errors */
    assert_int_equal(mv_store_segment_list(f->s, T, mb, name_cb, &l, err, sizeof err), MV_OK);
    assert_int_equal(mv_store_mailbox_list(f->s, T, name_cb, &l, err, sizeof err), MV_OK);
    assert_int_equal(l.n, 0);

    assert_int_equal(mv_store_segment_put(f->s, T, mb, "b-1-1-2.seg", "BBBB", 4, err, sizeof err),
                     MV_OK);
    assert_int_equal(mv_store_segment_put(f->s, T, mb, "a-1-3-4.seg", "AA", 2, err, sizeof err),
                     MV_OK);
    assert_int_equal(mv_store_segment_put(f->s, T, mb, "c-1-5-6.seg", "", 0, err, sizeof err),
                     MV_OK);
    assert_int_equal(mv_store_segment_put(f->s, T, "other", "x.seg", "x", 1, err, sizeof err),
                     MV_OK);
    assert_int_equal(mv_store_segment_list(f->s, T, mb, name_cb, &l, err, sizeof err), MV_OK);
    assert_int_equal(l.n, 3);
    assert_string_equal(l.v[0], "a-1-3-4.seg");
    assert_string_equal(l.v[1], "b-1-1-2.seg");
    assert_string_equal(l.v[2], "c-1-5-6.seg");

    void *d;
    size_t n;
    assert_int_equal(mv_store_segment_get(f->s, T, mb, "b-1-1-2.seg", &d, &n, err, sizeof err),
                     MV_OK);
    assert_int_equal(n, 4);
    assert_memory_equal(d, "BBBB", 4);
    free(d);
    /* replace */
    assert_int_equal(mv_store_segment_put(f->s, T, mb, "b-1-1-2.seg", "NEWER!", 6, err, sizeof err),
                     MV_OK);
    assert_int_equal(mv_store_segment_get(f->s, T, mb, "b-1-1-2.seg", &d, &n, err, sizeof err),
                     MV_OK);
    assert_int_equal(n, 6);
    assert_memory_equal(d, "NEWER!", 6);
    free(d);
    assert_int_equal(mv_store_segment_get(f->s, T, mb, "c-1-5-6.seg", &d, &n, err, sizeof err),
                     MV_OK);
    assert_int_equal(n, 0);
    free(d);
    assert_int_equal(mv_store_segment_get(f->s, T, mb, "zz.seg", &d, &n, err, sizeof err),
                     MV_ENOTFOUND);
    assert_null(d);
    assert_int_equal(count_sub(f, T, "tmp"), 0);

    l.n = 0;
    assert_int_equal(mv_store_mailbox_list(f->s, T, name_cb, &l, err, sizeof err), MV_OK);
    assert_int_equal(l.n, 2);
    assert_string_equal(l.v[0], "other");
    assert_string_equal(l.v[1], mb);

    /* invalid names */
    char longname[260];
    memset(longname, 'a', 201);
    longname[201] = '\0';
    const char *bad[] = {"", ".hidden", "a/b", "..", "a b", "a\n", longname, NULL};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        assert_int_equal(mv_store_segment_put(f->s, T, mb, bad[i], "x", 1, err, sizeof err),
                         MV_EINVAL);
        assert_int_equal(mv_store_segment_get(f->s, T, mb, bad[i], &d, &n, err, sizeof err),
                         MV_EINVAL);
    }
    longname[200] = '\0';
    assert_int_equal(mv_store_segment_put(f->s, T, mb, longname, "x", 1, err, sizeof err), MV_OK);
    assert_int_equal(mv_store_segment_put(f->s, "../x", mb, "a.seg", "x", 1, err, sizeof err),
                     MV_EINVAL);
    assert_int_equal(mv_store_segment_put(f->s, T, "", "a.seg", "x", 1, err, sizeof err),
                     MV_EINVAL);
    char hugebox[300];
    memset(hugebox, '/', 299);
    hugebox[299] = '\0';
    assert_int_equal(mv_store_segment_put(f->s, T, hugebox, "a.seg", "x", 1, err, sizeof err),
                     MV_EINVAL);

    /* a stray temp-looking file in the index dir is not listed */
    char p[1024], esc[256];
    mv_store_path_escape(mb, esc, sizeof esc);
    snprintf(p, sizeof p, "%s/store/%s/mailboxes/%s/index/.partial", f->dir, T, esc);
    FILE *fp = fopen(p, "wb");
    fclose(fp);
    l.n = 0;
    assert_int_equal(mv_store_segment_list(f->s, T, mb, name_cb, &l, err, sizeof err), MV_OK);
    assert_int_equal(l.n, 4);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_roundtrip_small, setup, teardown),
        cmocka_unit_test_setup_teardown(test_empty_message, setup, teardown),
        cmocka_unit_test_setup_teardown(test_large_odd_pieces, setup, teardown),
        cmocka_unit_test_setup_teardown(test_dedup, setup, teardown),
        cmocka_unit_test_setup_teardown(test_overwrite, setup, teardown),
        cmocka_unit_test_setup_teardown(test_abort_leaves_nothing, setup, teardown),
        cmocka_unit_test_setup_teardown(test_crash_leftover_tmp, setup, teardown),
        cmocka_unit_test_setup_teardown(test_corruption_detected, setup, teardown),
        cmocka_unit_test_setup_teardown(test_verify_strays_and_tenants, setup, teardown),
        cmocka_unit_test_setup_teardown(test_invalid_input, setup, teardown),
        cmocka_unit_test_setup_teardown(test_get_cancel, setup, teardown),
        cmocka_unit_test_setup_teardown(test_fsync_mode_and_sync, setup, teardown),
        cmocka_unit_test_setup_teardown(test_concurrent_puts, setup, teardown),
        cmocka_unit_test_setup_teardown(test_announced_size, setup, teardown),
        cmocka_unit_test(test_path_escape),
        cmocka_unit_test_setup_teardown(test_segments, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

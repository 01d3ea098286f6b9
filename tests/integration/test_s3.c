/* test_s3.c - s3.c against the SeaweedFS of the integration stack.
 *
 * Needs MV_RUN_DIR (set by ctest) whose env file names MV_S3_ENDPOINT, MV_S3_REGION,
 * MV_S3_ACCESS_KEY and MV_S3_SECRET_KEY; fails, never skips, when one is missing. Every test
 * works in its own bucket (random suffix), so reruns against the same store do not interfere.
 * Nothing waits by sleeping: every check is on the answer of a request. The retry rules are
 * checked against a scripted loopback server (test_retries). */
#define _GNU_SOURCE /* strcasestr */
#include "mv/common.h"
#include "mv/s3.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "itest.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static mv_s3_config base;
static char err[MV_ERRLEN];

#define CHECK(expr)                                                                                \
    do {                                                                                           \
        mv_err e_ = (expr);                                                                        \
        if (e_ != MV_OK) fail_msg("%s -> %s: %s", #expr, mv_strerror(e_), err);                    \
    } while (0)

#define CHECK_ERR(want, expr)                                                                      \
    do {                                                                                           \
        err[0] = '\0';                                                                             \
        mv_err e_ = (expr);                                                                        \
        if (e_ != (want))                                                                          \
            fail_msg("%s -> %s (%s), expected %s", #expr, mv_strerror(e_), err,                    \
                     mv_strerror(want));                                                           \
    } while (0)

#define CHECK_IN(needle)                                                                           \
    do {                                                                                           \
        if (!strstr(err, (needle))) fail_msg("error \"%s\" does not mention \"%s\"", err, needle); \
    } while (0)

/* ---- environment ---------------------------------------------------------------------- */

static int setup_env(void **state)
{
    char v[512];
    mv_s3_config_default(&base);
    if (!itest_env_require("test_s3", "MV_S3_ENDPOINT", v, sizeof v)) return -1;
    snprintf(base.endpoint, sizeof base.endpoint, "%s", v);
    if (!itest_env_require("test_s3", "MV_S3_REGION", v, sizeof v)) return -1;
    snprintf(base.region, sizeof base.region, "%s", v);
    if (!itest_env_require("test_s3", "MV_S3_ACCESS_KEY", v, sizeof v)) return -1;
    snprintf(base.access_key, sizeof base.access_key, "%s", v);
    if (!itest_env_require("test_s3", "MV_S3_SECRET_KEY", v, sizeof v)) return -1;
    snprintf(base.secret_key, sizeof base.secret_key, "%s", v);
    base.timeout_ms = 30000;
    return 0;
}

/* A client for a fresh bucket "mvt-<tag>-<random>", created (with Object Lock if lock). */
static mv_s3 *fresh_bucket(const char *tag, int lock, mv_s3_config *out_cfg)
{
    char uid[37];
    mv_uuid(uid);
    mv_s3_config c = base;
    snprintf(c.bucket, sizeof c.bucket, "mvt-%s-%.8s", tag, uid);
    mv_s3 *s = NULL;
    CHECK(mv_s3_open(&c, &s, err, sizeof err));
    CHECK(mv_s3_bucket_create(s, lock, err, sizeof err));
    if (out_cfg) *out_cfg = c;
    return s;
}

/* ---- sinks ---------------------------------------------------------------------------- */

typedef struct buf {
    unsigned char *p;
    size_t n, cap;
} buf;

static int buf_sink(void *ud, const void *data, size_t len)
{
    buf *b = ud;
    if (b->n + len > b->cap) {
        size_t nc = b->cap ? b->cap : 4096;
        while (nc < b->n + len)
            nc *= 2;
        unsigned char *np = realloc(b->p, nc);
        if (!np) return 1;
        b->p = np;
        b->cap = nc;
    }
    memcpy(b->p + b->n, data, len);
    b->n += len;
    return 0;
}

static int stop_sink(void *ud, const void *data, size_t len)
{
    (void)ud;
    (void)data;
    (void)len;
    return 1;
}

static void get_expect(mv_s3 *s, const char *key, const void *want, size_t wantlen)
{
    buf b = {0};
    err[0] = '\0';
    mv_err e = mv_s3_get(s, key, UINT64_MAX, buf_sink, &b, err, sizeof err);
    if (e) fail_msg("get %s: %s: %s", key, mv_strerror(e), err);
    if (b.n != wantlen || (wantlen && memcmp(b.p, want, wantlen)))
        fail_msg("get %s: %zu bytes differ from the %zu put", key, b.n, wantlen);
    free(b.p);
}

typedef struct keylist {
    char **k;
    uint64_t *size;
    size_t n, cap;
} keylist;

static int collect_key(void *ud, const char *key, uint64_t size)
{
    keylist *l = ud;
    if (l->n == l->cap) {
        l->cap = l->cap ? l->cap * 2 : 256;
        l->k = realloc(l->k, l->cap * sizeof *l->k);
        l->size = realloc(l->size, l->cap * sizeof *l->size);
        assert_non_null(l->k);
        assert_non_null(l->size);
    }
    l->k[l->n] = strdup(key);
    l->size[l->n] = size;
    l->n++;
    return 0;
}

static void keylist_free(keylist *l)
{
    for (size_t i = 0; i < l->n; i++)
        free(l->k[i]);
    free(l->k);
    free(l->size);
    memset(l, 0, sizeof *l);
}

typedef struct verlist {
    char key[1100], vid[256];
    int n, n_markers, latest_is_marker;
} verlist;

static int collect_version(void *ud, const char *key, const char *vid, int latest, int marker)
{
    verlist *v = ud;
    v->n++;
    if (marker) {
        v->n_markers++;
        if (latest) v->latest_is_marker = 1;
    } else if (!v->vid[0]) {
        snprintf(v->key, sizeof v->key, "%s", key);
        snprintf(v->vid, sizeof v->vid, "%s", vid);
    }
    return 0;
}

/* ---- tests ---------------------------------------------------------------------------- */

static void test_bucket_create(void **state)
{
    mv_s3_config c;
    mv_s3 *s = fresh_bucket("plain", 0, &c);
    CHECK(mv_s3_bucket_create(s, 0, err, sizeof err)); /* BucketAlreadyOwnedByYou is fine */
    mv_s3_close(s);
    s = fresh_bucket("lock", 1, &c);
    CHECK(mv_s3_bucket_create(s, 1, err, sizeof err));
    mv_s3_close(s);
}

static void test_config_validation(void **state)
{
    mv_s3_config c = base;
    mv_s3 *s = NULL;
    snprintf(c.bucket, sizeof c.bucket, "Bad_Bucket");
    CHECK_ERR(MV_EINVAL, mv_s3_open(&c, &s, err, sizeof err));
    CHECK_IN("naming rules");
    snprintf(c.bucket, sizeof c.bucket, "192.168.1.1");
    CHECK_ERR(MV_EINVAL, mv_s3_open(&c, &s, err, sizeof err));
    snprintf(c.bucket, sizeof c.bucket, "ok-bucket");
    snprintf(c.endpoint, sizeof c.endpoint, "ftp://127.0.0.1:1");
    CHECK_ERR(MV_EINVAL, mv_s3_open(&c, &s, err, sizeof err));
    snprintf(c.endpoint, sizeof c.endpoint, "http://127.0.0.1:1/some/path");
    CHECK_ERR(MV_EINVAL, mv_s3_open(&c, &s, err, sizeof err));
    c = base;
    snprintf(c.bucket, sizeof c.bucket, "ok-bucket");
    c.secret_key[0] = '\0';
    CHECK_ERR(MV_EINVAL, mv_s3_open(&c, &s, err, sizeof err));
    assert_null(s);

    s = fresh_bucket("keys", 0, NULL);
    /* 1025 bytes in segments of 100 (SeaweedFS refuses a segment over 255 bytes) */
    char big[MV_S3_KEY_MAX + 2];
    memset(big, 'k', sizeof big - 1);
    for (size_t i = 100; i < sizeof big - 1; i += 101)
        big[i] = '/';
    big[sizeof big - 1] = '\0';
    CHECK_ERR(MV_EINVAL, mv_s3_put(s, "", "x", 1, NULL, err, sizeof err));
    CHECK_ERR(MV_EINVAL, mv_s3_put(s, big, "x", 1, NULL, err, sizeof err));
    big[MV_S3_KEY_MAX] = '\0'; /* exactly the maximum is fine */
    CHECK(mv_s3_put(s, big, "x", 1, NULL, err, sizeof err));
    get_expect(s, big, "x", 1);
    CHECK_ERR(MV_EINVAL, mv_s3_put(s, "a\tb", "x", 1, NULL, err, sizeof err));
    CHECK_ERR(MV_EINVAL, mv_s3_put(s, "a/../b", "x", 1, NULL, err, sizeof err));
    CHECK_ERR(MV_EINVAL, mv_s3_put(s, "a//b", "x", 1, NULL, err, sizeof err));
    mv_s3_put_opts o = {.lock_mode = "FOREVER", .retain_until = 1};
    CHECK_ERR(MV_EINVAL, mv_s3_put(s, "k", "x", 1, &o, err, sizeof err));
    mv_s3_close(s);
}

static void test_put_get_head(void **state)
{
    mv_s3 *s = fresh_bucket("rt", 0, NULL);
    const char body[] = "From: a@example.org\r\nSubject: hello\r\n\r\nbody\r\n";
    CHECK(mv_s3_put(s, "m/1.eml", body, sizeof body - 1, NULL, err, sizeof err));
    get_expect(s, "m/1.eml", body, sizeof body - 1);

    mv_s3_head_info hi;
    CHECK(mv_s3_head(s, "m/1.eml", &hi, err, sizeof err));
    assert_int_equal(hi.size, sizeof body - 1);
    assert_true(hi.etag[0] != '\0');

    /* If-None-Match: * on an existing key */
    mv_s3_put_opts o = {.if_none_match = 1};
    CHECK_ERR(MV_EEXIST, mv_s3_put(s, "m/1.eml", "other", 5, &o, err, sizeof err));
    CHECK_IN("PreconditionFailed");
    get_expect(s, "m/1.eml", body, sizeof body - 1);               /* unchanged */
    CHECK(mv_s3_put(s, "m/2.eml", "new", 3, &o, err, sizeof err)); /* a new key is fine */

    /* empty object */
    CHECK(mv_s3_put(s, "m/empty", NULL, 0, NULL, err, sizeof err));
    get_expect(s, "m/empty", "", 0);
    CHECK(mv_s3_head(s, "m/empty", &hi, err, sizeof err));
    assert_int_equal(hi.size, 0);

    /* missing key */
    buf b = {0};
    CHECK_ERR(MV_ENOTFOUND, mv_s3_get(s, "m/missing", 100, buf_sink, &b, err, sizeof err));
    CHECK_IN("NoSuchKey");
    CHECK_IN("m/missing");
    CHECK_ERR(MV_ENOTFOUND, mv_s3_head(s, "m/missing", &hi, err, sizeof err));
    assert_int_equal(b.n, 0);

    /* bounds and the sink's stop */
    CHECK_ERR(MV_ETOOBIG, mv_s3_get(s, "m/1.eml", 10, buf_sink, &b, err, sizeof err));
    assert_int_equal(b.n, 0); /* refused on Content-Length, before any byte */
    CHECK_ERR(MV_ECANCEL, mv_s3_get(s, "m/1.eml", 1000, stop_sink, NULL, err, sizeof err));
    free(b.p);

    /* delete: gone after, and deleting again is fine (S3 answers 204) */
    int refused = -1;
    CHECK(mv_s3_delete(s, "m/2.eml", NULL, 0, &refused, err, sizeof err));
    assert_int_equal(refused, 0);
    CHECK_ERR(MV_ENOTFOUND, mv_s3_head(s, "m/2.eml", &hi, err, sizeof err));
    mv_s3_close(s);
}

static void test_wrong_credentials(void **state)
{
    mv_s3_config c;
    mv_s3 *s = fresh_bucket("auth", 0, &c);
    mv_s3_close(s);

    mv_s3_config bad = c;
    snprintf(bad.secret_key, sizeof bad.secret_key, "not-the-secret-%s", "0123456789");
    CHECK(mv_s3_open(&bad, &s, err, sizeof err));
    CHECK_ERR(MV_EAUTH, mv_s3_put(s, "k", "x", 1, NULL, err, sizeof err));
    CHECK_IN("SignatureDoesNotMatch");
    CHECK_IN("check the access key and secret");
    CHECK_IN(c.bucket);
    if (strstr(err, bad.secret_key) || strstr(err, base.secret_key))
        fail_msg("a secret appears in the error: %s", err);
    buf b = {0};
    CHECK_ERR(MV_EAUTH, mv_s3_get(s, "k", 10, buf_sink, &b, err, sizeof err));
    CHECK_IN("SignatureDoesNotMatch");
    mv_s3_head_info hi;
    CHECK_ERR(MV_EAUTH, mv_s3_head(s, "k", &hi, err, sizeof err));
    keylist l = {0};
    CHECK_ERR(MV_EAUTH, mv_s3_list(s, "", collect_key, &l, err, sizeof err));
    mv_s3_close(s);

    bad = c;
    snprintf(bad.access_key, sizeof bad.access_key, "AKNOSUCHKEY0000");
    CHECK(mv_s3_open(&bad, &s, err, sizeof err));
    CHECK_ERR(MV_EAUTH, mv_s3_put(s, "k", "x", 1, NULL, err, sizeof err));
    CHECK_IN("InvalidAccessKeyId");
    mv_s3_close(s);
}

static void test_missing_bucket(void **state)
{
    mv_s3_config c = base;
    char uid[37];
    mv_uuid(uid);
    snprintf(c.bucket, sizeof c.bucket, "mvt-none-%.8s", uid);
    mv_s3 *s = NULL;
    CHECK(mv_s3_open(&c, &s, err, sizeof err));
    char want[128];
    snprintf(want, sizeof want, "bucket \"%s\" does not exist", c.bucket);
    CHECK_ERR(MV_ENOTFOUND, mv_s3_put(s, "k", "x", 1, NULL, err, sizeof err));
    CHECK_IN("NoSuchBucket");
    CHECK_IN(want);
    keylist l = {0};
    CHECK_ERR(MV_ENOTFOUND, mv_s3_list(s, "p/", collect_key, &l, err, sizeof err));
    CHECK_IN("NoSuchBucket");
    buf b = {0};
    CHECK_ERR(MV_ENOTFOUND, mv_s3_get(s, "k", 10, buf_sink, &b, err, sizeof err));
    mv_s3_close(s);
}

/* 1100 small objects under p/ from 4 threads sharing one client (the handle pool), 5 under
 * q/; the listing of p/ needs two pages (1000 keys each at most). */
#define NLIST 1100
#define NTHREADS 4

typedef struct putter {
    mv_s3 *s;
    int first, step;
    mv_err e;
    char err[MV_ERRLEN];
} putter;

static void *put_many(void *ud)
{
    putter *p = ud;
    for (int i = p->first; i < NLIST && !p->e; i += p->step) {
        char key[64], body[64];
        snprintf(key, sizeof key, "p/%05d", i);
        int n = snprintf(body, sizeof body, "object %d", i);
        p->e = mv_s3_put(p->s, key, body, (size_t)n, NULL, p->err, sizeof p->err);
    }
    return NULL;
}

static void test_list_pages(void **state)
{
    mv_s3 *s = fresh_bucket("list", 0, NULL);
    pthread_t th[NTHREADS];
    putter pt[NTHREADS];
    for (int t = 0; t < NTHREADS; t++) {
        pt[t] = (putter){.s = s, .first = t, .step = NTHREADS};
        assert_int_equal(pthread_create(&th[t], NULL, put_many, &pt[t]), 0);
    }
    for (int t = 0; t < NTHREADS; t++) {
        pthread_join(th[t], NULL);
        if (pt[t].e) fail_msg("thread %d: %s: %s", t, mv_strerror(pt[t].e), pt[t].err);
    }
    for (int i = 0; i < 5; i++) {
        char key[32];
        snprintf(key, sizeof key, "q/%d", i);
        CHECK(mv_s3_put(s, key, "q", 1, NULL, err, sizeof err));
    }
    keylist l = {0};
    CHECK(mv_s3_list(s, "p/", collect_key, &l, err, sizeof err));
    assert_int_equal(l.n, NLIST);
    for (size_t i = 0; i < l.n; i++) {
        char want[32];
        snprintf(want, sizeof want, "p/%05zu", i);
        if (strcmp(l.k[i], want)) fail_msg("listing[%zu] = %s, expected %s", i, l.k[i], want);
        if (i && strcmp(l.k[i - 1], l.k[i]) >= 0) fail_msg("listing not sorted at %zu", i);
        char body[64];
        assert_int_equal(l.size[i], (uint64_t)snprintf(body, sizeof body, "object %zu", i));
    }
    keylist_free(&l);
    CHECK(mv_s3_list(s, "q/", collect_key, &l, err, sizeof err));
    assert_int_equal(l.n, 5);
    keylist_free(&l);
    CHECK(mv_s3_list(s, NULL, collect_key, &l, err, sizeof err));
    assert_int_equal(l.n, NLIST + 5);
    keylist_free(&l);
    CHECK(mv_s3_list(s, "nothing/", collect_key, &l, err, sizeof err));
    assert_int_equal(l.n, 0);
    mv_s3_close(s);
}

static int stop_after_one(void *ud, const char *key, uint64_t size)
{
    (void)key;
    (void)size;
    ++*(int *)ud;
    return 1;
}

static void test_special_keys(void **state)
{
    static const char *const keys[] = {
        "sk/mailboxes/a%40b c+d/index/x.seg",
        "sk/at@sign=eq&amp;semi;comma,dollar$bang!quote'paren(x)star*",
        "sk/plus+and%2Fencoded-slash/and space",
        "sk/utf8/\xc3\xbc\xc3\xb1\xc3\xaf/\xe6\x97\xa5\xe6\x9c\xac",
        "sk/tilde~under_dash-dot.x",
        "sk/hash#question?bracket[]brace{}pipe|caret^back`quote\"lt<gt>",
        "sk/a/b/c/d/e/f/g/deep",
    };
    size_t nk = sizeof keys / sizeof keys[0];
    mv_s3 *s = fresh_bucket("special", 0, NULL);
    for (size_t i = 0; i < nk; i++)
        CHECK(mv_s3_put(s, keys[i], keys[i], strlen(keys[i]), NULL, err, sizeof err));
    for (size_t i = 0; i < nk; i++) {
        get_expect(s, keys[i], keys[i], strlen(keys[i]));
        mv_s3_head_info hi;
        CHECK(mv_s3_head(s, keys[i], &hi, err, sizeof err));
        assert_int_equal(hi.size, strlen(keys[i]));
    }
    keylist l = {0};
    CHECK(mv_s3_list(s, "sk/", collect_key, &l, err, sizeof err));
    assert_int_equal(l.n, nk);
    for (size_t i = 0; i < nk; i++) {
        int found = 0;
        for (size_t j = 0; j < l.n; j++)
            found |= !strcmp(l.k[j], keys[i]);
        if (!found) fail_msg("key %s missing from the listing", keys[i]);
    }
    keylist_free(&l);
    /* a prefix with special characters is encoded in the query the same way */
    CHECK(mv_s3_list(s, "sk/mailboxes/a%40b c+d/", collect_key, &l, err, sizeof err));
    assert_int_equal(l.n, 1);
    assert_string_equal(l.k[0], keys[0]);
    keylist_free(&l);
    int seen = 0;
    CHECK_ERR(MV_ECANCEL, mv_s3_list(s, "sk/", stop_after_one, &seen, err, sizeof err));
    assert_int_equal(seen, 1);
    CHECK(mv_s3_delete(s, keys[0], NULL, 0, NULL, err, sizeof err));
    mv_s3_head_info hi;
    CHECK_ERR(MV_ENOTFOUND, mv_s3_head(s, keys[0], &hi, err, sizeof err));
    mv_s3_close(s);
}

static int count_upload(void *ud, const char *key, uint64_t size)
{
    (void)key;
    (void)size;
    ++*(int *)ud;
    return 0;
}

static int tmpfile_with(const unsigned char *p, size_t n)
{
    char path[] = "/tmp/test_s3_XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    unlink(path);
    size_t off = 0;
    while (off < n) {
        ssize_t w = write(fd, p + off, n - off);
        assert_true(w > 0);
        off += (size_t)w;
    }
    return fd;
}

static void test_multipart(void **state)
{
    const size_t total = 12u * 1024 * 1024 + 12345, part = 5u * 1024 * 1024;
    unsigned char *data = malloc(total);
    assert_non_null(data);
    uint64_t x = 0x9e3779b97f4a7c15ull;
    for (size_t i = 0; i < total; i++) { /* xorshift: incompressible, position dependent */
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        data[i] = (unsigned char)x;
    }
    int fd = tmpfile_with(data, total);
    mv_s3 *s = fresh_bucket("mpu", 0, NULL);

    CHECK(mv_s3_put_fd(s, "big/one", fd, total, part, NULL, err, sizeof err));
    mv_s3_head_info hi;
    CHECK(mv_s3_head(s, "big/one", &hi, err, sizeof err));
    assert_int_equal(hi.size, total);
    get_expect(s, "big/one", data, total);

    /* a part-sized file is a single PUT */
    CHECK(mv_s3_put_fd(s, "big/small", fd, 1000, part, NULL, err, sizeof err));
    get_expect(s, "big/small", data, 1000);

    /* If-None-Match on CompleteMultipartUpload: the key exists, nothing is replaced, and the
     * upload is aborted (nothing left for the sweeper) */
    mv_s3_put_opts o = {.if_none_match = 1};
    CHECK_ERR(MV_EEXIST, mv_s3_put_fd(s, "big/one", fd, total - 7, part, &o, err, sizeof err));
    CHECK(mv_s3_head(s, "big/one", &hi, err, sizeof err));
    assert_int_equal(hi.size, total);
    int n = 0;
    CHECK(mv_s3_sweep_uploads(s, "big/", 0, &n, err, sizeof err));
    assert_int_equal(n, 0);

    /* a file shorter than the length given: MV_EIO, the upload aborted */
    CHECK_ERR(MV_EIO, mv_s3_put_fd(s, "big/short", fd, total + part, part, NULL, err, sizeof err));
    CHECK_IN("shorter");
    CHECK(mv_s3_sweep_uploads(s, "big/", 0, &n, err, sizeof err));
    assert_int_equal(n, 0);
    CHECK_ERR(MV_ENOTFOUND, mv_s3_head(s, "big/short", &hi, err, sizeof err));

    /* bad part sizes */
    CHECK_ERR(MV_EINVAL, mv_s3_put_fd(s, "big/x", fd, total, 1024, NULL, err, sizeof err));
    n = 0;
    CHECK(mv_s3_list(s, "big/", count_upload, &n, err, sizeof err));
    assert_int_equal(n, 2);
    close(fd);
    free(data);
    mv_s3_close(s);
}

static void test_object_lock(void **state)
{
    mv_s3 *s = fresh_bucket("olock", 1, NULL);
    int64_t until = (int64_t)time(NULL) + 86400;
    mv_s3_put_opts o = {.lock_mode = "COMPLIANCE", .retain_until = until};
    CHECK(mv_s3_put(s, "locked/a", "kept", 4, &o, err, sizeof err));

    char mode[16];
    int64_t got = 0;
    CHECK(mv_s3_retention_get(s, "locked/a", mode, &got, err, sizeof err));
    assert_string_equal(mode, "COMPLIANCE");
    if (got < until - 1 || got > until + 1)
        fail_msg("retain_until %lld, expected %lld", (long long)got, (long long)until);
    mv_s3_head_info hi;
    CHECK(mv_s3_head(s, "locked/a", &hi, err, sizeof err));
    assert_string_equal(hi.lock_mode, "COMPLIANCE");
    assert_true(hi.retain_until >= until - 1 && hi.retain_until <= until + 1);
    assert_true(hi.version_id[0] != '\0');

    verlist v = {0};
    CHECK(mv_s3_list_versions(s, "locked/a", collect_version, &v, err, sizeof err));
    assert_int_equal(v.n, 1);
    assert_string_equal(v.key, "locked/a");
    assert_string_equal(v.vid, hi.version_id);

    int refused = 0;
    CHECK_ERR(MV_ESERVER, mv_s3_delete(s, "locked/a", v.vid, 0, &refused, err, sizeof err));
    assert_int_equal(refused, 1);
    CHECK_IN("refused by the store: object is under retention/legal hold (AccessDenied)");
    refused = 0; /* COMPLIANCE: the bypass does not help */
    CHECK_ERR(MV_ESERVER, mv_s3_delete(s, "locked/a", v.vid, 1, &refused, err, sizeof err));
    assert_int_equal(refused, 1);
    get_expect(s, "locked/a", "kept", 4);

    /* a delete without a version only adds a delete marker; the locked version stays */
    CHECK(mv_s3_delete(s, "locked/a", NULL, 0, &refused, err, sizeof err));
    assert_int_equal(refused, 0);
    buf b = {0};
    CHECK_ERR(MV_ENOTFOUND, mv_s3_get(s, "locked/a", 100, buf_sink, &b, err, sizeof err));
    memset(&v, 0, sizeof v);
    CHECK(mv_s3_list_versions(s, "locked/", collect_version, &v, err, sizeof err));
    assert_int_equal(v.n, 2);
    assert_int_equal(v.n_markers, 1);
    assert_int_equal(v.latest_is_marker, 1);

    /* GOVERNANCE: refused without the bypass, removed with it */
    o.lock_mode = "GOVERNANCE";
    CHECK(mv_s3_put(s, "gov/a", "g", 1, &o, err, sizeof err));
    memset(&v, 0, sizeof v);
    CHECK(mv_s3_list_versions(s, "gov/", collect_version, &v, err, sizeof err));
    assert_int_equal(v.n, 1);
    CHECK_ERR(MV_ESERVER, mv_s3_delete(s, "gov/a", v.vid, 0, &refused, err, sizeof err));
    assert_int_equal(refused, 1);
    CHECK(mv_s3_delete(s, "gov/a", v.vid, 1, &refused, err, sizeof err));
    assert_int_equal(refused, 0);
    memset(&v, 0, sizeof v);
    CHECK(mv_s3_list_versions(s, "gov/", collect_version, &v, err, sizeof err));
    assert_int_equal(v.n, 0);

    /* legal hold on an object without retention */
    CHECK(mv_s3_put(s, "hold/a", "h", 1, NULL, err, sizeof err));
    CHECK(mv_s3_retention_get(s, "hold/a", mode, &got, err, sizeof err));
    assert_string_equal(mode, "");
    assert_int_equal(got, 0);
    int on = -1;
    CHECK(mv_s3_legal_hold_get(s, "hold/a", &on, err, sizeof err));
    assert_int_equal(on, 0);
    CHECK(mv_s3_legal_hold_put(s, "hold/a", 1, err, sizeof err));
    CHECK(mv_s3_legal_hold_get(s, "hold/a", &on, err, sizeof err));
    assert_int_equal(on, 1);
    CHECK(mv_s3_head(s, "hold/a", &hi, err, sizeof err));
    assert_int_equal(hi.legal_hold, 1);
    memset(&v, 0, sizeof v);
    CHECK(mv_s3_list_versions(s, "hold/", collect_version, &v, err, sizeof err));
    CHECK_ERR(MV_ESERVER, mv_s3_delete(s, "hold/a", v.vid, 1, &refused, err, sizeof err));
    assert_int_equal(refused, 1);
    CHECK(mv_s3_legal_hold_put(s, "hold/a", 0, err, sizeof err));
    CHECK(mv_s3_legal_hold_get(s, "hold/a", &on, err, sizeof err));
    assert_int_equal(on, 0);
    CHECK(mv_s3_delete(s, "hold/a", v.vid, 0, &refused, err, sizeof err));

    /* retention set after the upload; a put with a legal hold header */
    CHECK(mv_s3_put(s, "later/a", "l", 1, NULL, err, sizeof err));
    CHECK(mv_s3_retention_put(s, "later/a", "GOVERNANCE", until, err, sizeof err));
    CHECK(mv_s3_retention_get(s, "later/a", mode, &got, err, sizeof err));
    assert_string_equal(mode, "GOVERNANCE");
    assert_true(got >= until - 1 && got <= until + 1);
    mv_s3_put_opts ho = {.legal_hold = 1};
    CHECK(mv_s3_put(s, "later/b", "b", 1, &ho, err, sizeof err));
    CHECK(mv_s3_legal_hold_get(s, "later/b", &on, err, sizeof err));
    assert_int_equal(on, 1);

    /* multipart with the lock headers */
    const size_t total = 6u * 1024 * 1024;
    unsigned char *data = calloc(1, total);
    assert_non_null(data);
    for (size_t i = 0; i < total; i++)
        data[i] = (unsigned char)(i * 31 + (i >> 12));
    int fd = tmpfile_with(data, total);
    o.lock_mode = "COMPLIANCE";
    CHECK(mv_s3_put_fd(s, "locked/big", fd, total, 5u * 1024 * 1024, &o, err, sizeof err));
    CHECK(mv_s3_retention_get(s, "locked/big", mode, &got, err, sizeof err));
    assert_string_equal(mode, "COMPLIANCE");
    get_expect(s, "locked/big", data, total);
    close(fd);
    free(data);
    mv_s3_close(s);
}

static void test_sweep_uploads(void **state)
{
    mv_s3 *s = fresh_bucket("sweep", 0, NULL);
    char id1[1024], id2[1024];
    CHECK(mv_s3__upload_start(s, "up/left-behind", NULL, id1, sizeof id1, err, sizeof err));
    CHECK(mv_s3__upload_start(s, "other/left-behind", NULL, id2, sizeof id2, err, sizeof err));
    assert_true(id1[0] && id2[0] && strcmp(id1, id2));
    int n = -1;
    /* not old enough yet: an hour */
    CHECK(mv_s3_sweep_uploads(s, "up/", 3600, &n, err, sizeof err));
    assert_int_equal(n, 0);
    CHECK(mv_s3_sweep_uploads(s, "up/", 0, &n, err, sizeof err));
    assert_int_equal(n, 1);
    CHECK(mv_s3_sweep_uploads(s, "up/", 0, &n, err, sizeof err));
    assert_int_equal(n, 0);
    CHECK(mv_s3_sweep_uploads(s, "", 0, &n, err, sizeof err));
    assert_int_equal(n, 1);
    CHECK(mv_s3_sweep_uploads(s, NULL, 0, &n, err, sizeof err));
    assert_int_equal(n, 0);
    mv_s3_close(s);
}

/* A loopback port that accepts connections (the kernel's backlog) but never answers. */
static int silent_listener(int *port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(fd >= 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof a), 0);
    assert_int_equal(listen(fd, 16), 0);
    socklen_t al = sizeof a;
    assert_int_equal(getsockname(fd, (struct sockaddr *)&a, &al), 0);
    *port = ntohs(a.sin_port);
    return fd;
}

static void test_transport_errors(void **state)
{
    int port;
    int lfd = silent_listener(&port);
    mv_s3_config c = base;
    snprintf(c.bucket, sizeof c.bucket, "mvt-net");
    snprintf(c.endpoint, sizeof c.endpoint, "http://127.0.0.1:%d", port);
    c.timeout_ms = 300;
    c.max_retries = 1;
    mv_s3 *s = NULL;
    CHECK(mv_s3_open(&c, &s, err, sizeof err));
    CHECK_ERR(MV_ETIMEDOUT, mv_s3_put(s, "k", "x", 1, NULL, err, sizeof err));
    CHECK_IN("timed out");
    mv_s3_close(s);

    close(lfd); /* now nothing listens there: connection refused */
    CHECK(mv_s3_open(&c, &s, err, sizeof err));
    buf b = {0};
    CHECK_ERR(MV_ENET, mv_s3_get(s, "k", 10, buf_sink, &b, err, sizeof err));
    mv_s3_close(s);
}

/* ---- a scripted loopback server for the retry rules ---------------------------------- */

/* Answers connection after connection with the next scripted response (then closes); records
 * the requests' first lines and a few headers. Runs until the script is used up or stop. */
typedef struct fake {
    int lfd, port;
    const char *const *script; /* complete HTTP responses */
    int nscript, served;
    char first_line[8][256];
    char sha256[8][80];
    int has_md5[8];
    pthread_t th;
} fake;

static void hdr_copy(const char *req, const char *name, char *out, size_t outlen)
{
    out[0] = '\0';
    const char *p = strcasestr(req, name);
    if (!p) return;
    p += strlen(name);
    while (*p == ' ')
        p++;
    size_t n = strcspn(p, "\r\n");
    if (n >= outlen) n = outlen - 1;
    memcpy(out, p, n);
    out[n] = '\0';
}

static void *fake_run(void *ud)
{
    fake *f = ud;
    while (f->served < f->nscript) {
        int c = accept(f->lfd, NULL, NULL);
        if (c < 0) break;
        char req[16384];
        size_t n = 0;
        char *end = NULL;
        while (!end && n < sizeof req - 1) { /* headers */
            ssize_t r = read(c, req + n, sizeof req - 1 - n);
            if (r <= 0) break;
            n += (size_t)r;
            req[n] = '\0';
            end = strstr(req, "\r\n\r\n");
        }
        if (end) {
            char cl[32];
            hdr_copy(req, "\ncontent-length:", cl, sizeof cl);
            size_t want = (size_t)atol(cl), have = n - (size_t)(end + 4 - req);
            char junk[4096];
            while (have < want) { /* the body, dropped */
                ssize_t r = read(c, junk, sizeof junk);
                if (r <= 0) break;
                have += (size_t)r;
            }
            int k = f->served < 8 ? f->served : 7;
            snprintf(f->first_line[k], sizeof f->first_line[k], "%.*s", (int)strcspn(req, "\r\n"),
                     req);
            hdr_copy(req, "\nx-amz-content-sha256:", f->sha256[k], sizeof f->sha256[k]);
            f->has_md5[k] = strcasestr(req, "\ncontent-md5:") != NULL;
        }
        const char *resp = f->script[f->served++];
        size_t off = 0, len = strlen(resp);
        while (off < len) {
            ssize_t w = write(c, resp + off, len - off);
            if (w <= 0) break;
            off += (size_t)w;
        }
        close(c);
    }
    return NULL;
}

static mv_s3 *fake_start(fake *f, const char *const *script, int n, int max_retries)
{
    memset(f, 0, sizeof *f);
    f->lfd = silent_listener(&f->port);
    f->script = script;
    f->nscript = n;
    assert_int_equal(pthread_create(&f->th, NULL, fake_run, f), 0);
    mv_s3_config c = base;
    snprintf(c.bucket, sizeof c.bucket, "mvt-fake");
    snprintf(c.endpoint, sizeof c.endpoint, "http://127.0.0.1:%d", f->port);
    c.timeout_ms = 5000;
    c.max_retries = max_retries;
    mv_s3 *s = NULL;
    CHECK(mv_s3_open(&c, &s, err, sizeof err));
    return s;
}

static void fake_stop(fake *f, mv_s3 *s)
{
    mv_s3_close(s);
    shutdown(f->lfd, SHUT_RDWR); /* wakes accept if the script was not used up */
    pthread_join(f->th, NULL);
    close(f->lfd);
}

static const char *err_resp(int status, const char *code, char *out, size_t outlen)
{
    char body[256];
    int bl = snprintf(body, sizeof body,
                      "<?xml version=\"1.0\"?><Error><Code>%s</Code><Message>scripted</Message>"
                      "</Error>",
                      code);
    snprintf(out, outlen,
             "HTTP/1.1 %d X\r\nContent-Type: application/xml\r\nConnection: close\r\n"
             "Content-Length: %d\r\n\r\n%s",
             status, bl, body);
    return out;
}

static const char OK_EMPTY[] = "HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";

static void test_retries(void **state)
{
    char r1[512], r2[512], r3[512];
    fake f;
    /* 503 SlowDown, 500 InternalError, then success: three requests, one result */
    const char *s1[] = {err_resp(503, "SlowDown", r1, sizeof r1),
                        err_resp(500, "InternalError", r2, sizeof r2), OK_EMPTY};
    mv_s3 *s = fake_start(&f, s1, 3, 4);
    CHECK(mv_s3_put(s, "a b", "hello", 5, NULL, err, sizeof err));
    fake_stop(&f, s);
    assert_int_equal(f.served, 3);
    assert_string_equal(f.first_line[0], "PUT /mvt-fake/a%20b HTTP/1.1");
    /* the signed payload hash is the body's SHA-256; Content-MD5 goes along */
    assert_string_equal(f.sha256[0],
                        "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824");
    assert_true(f.has_md5[0]);

    /* the retries run out: the last error is reported */
    const char *s2[] = {err_resp(503, "SlowDown", r1, sizeof r1),
                        err_resp(503, "SlowDown", r2, sizeof r2),
                        err_resp(503, "SlowDown", r3, sizeof r3)};
    s = fake_start(&f, s2, 3, 2);
    CHECK_ERR(MV_ESERVER, mv_s3_put(s, "k", "x", 1, NULL, err, sizeof err));
    CHECK_IN("SlowDown");
    fake_stop(&f, s);
    assert_int_equal(f.served, 3);

    /* RequestTimeout (400) is retried; InvalidArgument (400) is not */
    const char *s3[] = {err_resp(400, "RequestTimeout", r1, sizeof r1),
                        err_resp(400, "InvalidArgument", r2, sizeof r2), OK_EMPTY};
    s = fake_start(&f, s3, 3, 4);
    CHECK_ERR(MV_ESERVER, mv_s3_put(s, "k", "x", 1, NULL, err, sizeof err));
    CHECK_IN("InvalidArgument");
    fake_stop(&f, s);
    assert_int_equal(f.served, 2);

    /* a GET is retried while nothing reached the sink ... */
    const char *s4[] = {err_resp(503, "SlowDown", r1, sizeof r1),
                        "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello"};
    s = fake_start(&f, s4, 2, 4);
    get_expect(s, "k", "hello", 5);
    fake_stop(&f, s);
    assert_int_equal(f.served, 2);

    /* ... but not once bytes were delivered: a cut body is an error */
    const char *s5[] = {"HTTP/1.1 200 OK\r\nContent-Length: 100\r\nConnection: close\r\n\r\nhello",
                        "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello"};
    s = fake_start(&f, s5, 2, 4);
    buf b = {0};
    CHECK_ERR(MV_ENET, mv_s3_get(s, "k", 1000, buf_sink, &b, err, sizeof err));
    fake_stop(&f, s);
    assert_int_equal(f.served, 1);
    assert_int_equal(b.n, 5);
    free(b.p);

    /* redirects are not followed */
    const char *s6[] = {"HTTP/1.1 301 Moved\r\nLocation: http://127.0.0.1:1/elsewhere\r\n"
                        "Content-Length: 0\r\nConnection: close\r\n\r\n"};
    s = fake_start(&f, s6, 1, 4);
    CHECK_ERR(MV_ESERVER, mv_s3_put(s, "k", "x", 1, NULL, err, sizeof err));
    CHECK_IN("HTTP 301");
    fake_stop(&f, s);
    assert_int_equal(f.served, 1);

    /* a listing page that is not XML */
    const char *s7[] = {
        "HTTP/1.1 200 OK\r\nContent-Length: 9\r\nConnection: close\r\n\r\nnot <xml>"};
    s = fake_start(&f, s7, 1, 4);
    keylist l = {0};
    CHECK_ERR(MV_EPROTO, mv_s3_list(s, "", collect_key, &l, err, sizeof err));
    fake_stop(&f, s);
    assert_int_equal(l.n, 0);

    /* a skewed clock and a refused key are permanent, named, and not retried */
    const char *s8[] = {err_resp(403, "RequestTimeTooSkewed", r1, sizeof r1)};
    s = fake_start(&f, s8, 1, 4);
    CHECK_ERR(MV_EAUTH, mv_s3_put(s, "k", "x", 1, NULL, err, sizeof err));
    CHECK_IN("RequestTimeTooSkewed");
    CHECK_IN("clock");
    fake_stop(&f, s);
    assert_int_equal(f.served, 1);
    const char *s9[] = {err_resp(403, "AccessDenied", r1, sizeof r1)};
    s = fake_start(&f, s9, 1, 4);
    CHECK_ERR(MV_EAUTH, mv_s3_put(s, "k", "x", 1, NULL, err, sizeof err));
    CHECK_IN("AccessDenied");
    fake_stop(&f, s);
    assert_int_equal(f.served, 1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_bucket_create),    cmocka_unit_test(test_config_validation),
        cmocka_unit_test(test_put_get_head),     cmocka_unit_test(test_wrong_credentials),
        cmocka_unit_test(test_missing_bucket),   cmocka_unit_test(test_list_pages),
        cmocka_unit_test(test_special_keys),     cmocka_unit_test(test_multipart),
        cmocka_unit_test(test_object_lock),      cmocka_unit_test(test_sweep_uploads),
        cmocka_unit_test(test_transport_errors), cmocka_unit_test(test_retries),
    };
    return cmocka_run_group_tests(tests, setup_env, NULL);
}

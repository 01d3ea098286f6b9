/* test_objenc.c - the encryption envelope (mv/objenc.h) and encrypted tenants in the store:
 * round trips at record boundaries and in odd piece sizes, the header layout, every kind of
 * damage (flipped byte anywhere, truncation at and between records, an extra record, records
 * swapped, another tenant's or version's key), keyed names, and the store's policy path
 * (names, plain objects readable after encryption is turned on, segments sealed, rotation). */
#define _GNU_SOURCE /* nftw, memmem */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "mv/objenc.h"
#include "mv/store.h"

#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

typedef struct buf {
    unsigned char *d;
    size_t n, cap;
} buf;

static int sink(void *ud, const void *data, size_t len)
{
    buf *b = ud;
    if (b->n + len > b->cap) {
        b->cap = (b->n + len) * 2 + 64;
        b->d = realloc(b->d, b->cap);
        assert_non_null(b->d);
    }
    memcpy(b->d + b->n, data, len);
    b->n += len;
    return 0;
}

static void key_of(unsigned char k[32], unsigned char seed)
{
    for (int i = 0; i < 32; i++)
        k[i] = (unsigned char)(seed * 31 + i);
}

typedef struct keys {
    unsigned char k[3][32];
    uint32_t v[3];
    int n;
} keys;

static mv_err lookup(void *ud, uint32_t version, unsigned char key[32])
{
    keys *k = ud;
    for (int i = 0; i < k->n; i++)
        if (k->v[i] == version) {
            memcpy(key, k->k[i], 32);
            return MV_OK;
        }
    return MV_ENOTFOUND;
}

/* Encrypt len bytes of plain in pieces of step. */
static buf seal(const unsigned char *plain, size_t len, size_t step, const unsigned char key[32],
                uint32_t version, const char *tenant)
{
    buf out = {0};
    char err[MV_ERRLEN];
    mv_objenc *e = NULL;
    assert_int_equal(mv_objenc_begin(key, version, tenant, sink, &out, &e, err, sizeof err), MV_OK);
    for (size_t off = 0; off < len; off += step) {
        size_t n = len - off < step ? len - off : step;
        assert_int_equal(mv_objenc_update(e, plain + off, n, err, sizeof err), MV_OK);
    }
    assert_int_equal(mv_objenc_final(e, err, sizeof err), MV_OK);
    mv_objenc_free(e);
    return out;
}

/* Decrypt in pieces of step; returns the result code, plaintext in *out. */
static mv_err open_env(const buf *in, size_t step, keys *k, const char *tenant, buf *out)
{
    char err[MV_ERRLEN];
    mv_objdec *d = NULL;
    memset(out, 0, sizeof *out);
    assert_int_equal(mv_objdec_begin(tenant, lookup, k, sink, out, &d, err, sizeof err), MV_OK);
    mv_err rc = MV_OK;
    for (size_t off = 0; off < in->n && rc == MV_OK; off += step) {
        size_t n = in->n - off < step ? in->n - off : step;
        rc = mv_objdec_update(d, in->d + off, n, err, sizeof err);
    }
    if (rc == MV_OK) rc = mv_objdec_final(d, err, sizeof err);
    mv_objdec_free(d);
    return rc;
}

static unsigned char *pattern(size_t n)
{
    unsigned char *p = malloc(n ? n : 1);
    for (size_t i = 0; i < n; i++)
        p[i] = (unsigned char)(i * 7 + i / 251);
    return p;
}

static void test_round_trip_sizes(void **state)
{
    (void)state;
    keys k = {.n = 1, .v = {1}};
    key_of(k.k[0], 1);
    const size_t R = MV_OBJENC_REC;
    size_t sizes[] = {0, 1, 100, R - 1, R, R + 1, 2 * R, 3 * R + 17};
    size_t steps[] = {1, 4096, R, 1 << 20};
    for (size_t i = 0; i < sizeof sizes / sizeof *sizes; i++) {
        unsigned char *p = pattern(sizes[i]);
        for (size_t s = 0; s < sizeof steps / sizeof *steps; s++) {
            if (steps[s] == 1 && sizes[i] > 5000) continue; /* slow and says nothing new */
            buf c = seal(p, sizes[i], steps[s], k.k[0], 1, "acme");
            size_t records = sizes[i] / R + 1; /* a full last record is followed by none */
            if (sizes[i] % R == 0 && sizes[i] > 0) records = sizes[i] / R;
            assert_int_equal(c.n, MV_OBJENC_HDR + sizes[i] + records * MV_OBJENC_TAG);
            assert_memory_equal(c.d, "MVE1\0\0\0\1", 8);
            assert_true(mv_objenc_is_envelope(c.d, c.n));
            buf o;
            assert_int_equal(open_env(&c, steps[(s + 1) % 4], &k, "acme", &o), MV_OK);
            assert_int_equal(o.n, sizes[i]);
            if (sizes[i]) assert_memory_equal(o.d, p, sizes[i]);
            free(o.d);
            free(c.d);
        }
        free(p);
    }
}

static void test_fresh_salt(void **state)
{
    (void)state;
    unsigned char key[32];
    key_of(key, 2);
    buf a = seal((const unsigned char *)"same", 4, 4, key, 1, "acme");
    buf b = seal((const unsigned char *)"same", 4, 4, key, 1, "acme");
    assert_int_equal(a.n, b.n);
    assert_memory_not_equal(a.d + 8, b.d + 8, 16); /* salt */
    assert_memory_not_equal(a.d + MV_OBJENC_HDR, b.d + MV_OBJENC_HDR, a.n - MV_OBJENC_HDR);
    free(a.d);
    free(b.d);
}

static void test_every_damage_detected(void **state)
{
    (void)state;
    keys k = {.n = 1, .v = {1}};
    key_of(k.k[0], 3);
    const size_t R = MV_OBJENC_REC;
    size_t len = 2 * R + 100;
    unsigned char *p = pattern(len);
    buf c = seal(p, len, R, k.k[0], 1, "acme");
    buf o;
    /* a flipped bit in the header, in each record's ciphertext and in each tag */
    size_t spots[] = {0, 5, 10, 23, 24, 24 + R, 24 + R + 15, 24 + R + 16, c.n - 17, c.n - 1};
    for (size_t i = 0; i < sizeof spots / sizeof *spots; i++) {
        c.d[spots[i]] ^= 0x01;
        mv_err rc = open_env(&c, 1000, &k, "acme", &o);
        assert_true(rc == MV_ECORRUPT || rc == MV_ENOTFOUND); /* version byte: unknown key */
        /* nothing unauthenticated leaves the decryptor: at most the records before the damage */
        assert_true(o.n <= (spots[i] < 24 ? 0 : (spots[i] - 24) / (R + 16) * R));
        free(o.d);
        c.d[spots[i]] ^= 0x01;
    }
    /* truncation: at a record boundary (the final flag catches it), inside a record, header */
    size_t cuts[] = {24 + R + 16, 24 + R + 16 + 10, 24 + R, 24, 10, 0};
    for (size_t i = 0; i < sizeof cuts / sizeof *cuts; i++) {
        buf t = {c.d, cuts[i], 0};
        assert_int_equal(open_env(&t, 4096, &k, "acme", &o), MV_ECORRUPT);
        free(o.d);
    }
    /* an extra record appended (a copy of the last) */
    buf x = {malloc(c.n + 116), c.n + 116, 0};
    memcpy(x.d, c.d, c.n);
    memcpy(x.d + c.n, c.d + c.n - 116, 116);
    assert_int_equal(open_env(&x, 4096, &k, "acme", &o), MV_ECORRUPT);
    free(o.d);
    /* the first two records swapped */
    memcpy(x.d, c.d, c.n);
    memcpy(x.d + 24, c.d + 24 + R + 16, R + 16);
    memcpy(x.d + 24 + R + 16, c.d + 24, R + 16);
    x.n = c.n;
    assert_int_equal(open_env(&x, 4096, &k, "acme", &o), MV_ECORRUPT);
    free(o.d);
    free(x.d);
    /* another tenant (same key bytes: the tenant is bound through the key derivation) */
    assert_int_equal(open_env(&c, 4096, &k, "globex", &o), MV_ECORRUPT);
    free(o.d);
    /* another key under the same version */
    keys k2 = {.n = 1, .v = {1}};
    key_of(k2.k[0], 4);
    assert_int_equal(open_env(&c, 4096, &k2, "acme", &o), MV_ECORRUPT);
    free(o.d);
    /* an unknown version */
    keys k3 = {.n = 1, .v = {2}};
    memcpy(k3.k[0], k.k[0], 32);
    assert_int_equal(open_env(&c, 4096, &k3, "acme", &o), MV_ENOTFOUND);
    free(o.d);
    free(c.d);
    free(p);
}

static void test_names(void **state)
{
    (void)state;
    unsigned char n1[32], n2[32], sha[32];
    key_of(n1, 5);
    key_of(n2, 6);
    memset(sha, 0xab, sizeof sha);
    char a[65], b[65], c[65];
    mv_objenc_name(n1, sha, a);
    mv_objenc_name(n1, sha, b);
    mv_objenc_name(n2, sha, c);
    assert_string_equal(a, b);
    assert_string_not_equal(a, c);
    assert_int_equal(strlen(a), 64);
}

/* ---- the store with policies ---- */

typedef struct fx {
    char dir[64];
    mv_store *s;
    mv_store_policy pol[2]; /* tenant "enc", tenant "plain" */
} fx;

static mv_err policy(void *ud, const char *tenant, mv_store_policy *out, char *err, size_t errlen)
{
    (void)err;
    (void)errlen;
    fx *f = ud;
    if (strcmp(tenant, "enc") == 0) *out = f->pol[0];
    if (strcmp(tenant, "plain") == 0) *out = f->pol[1];
    return MV_OK;
}

static int setup(void **state)
{
    fx *f = calloc(1, sizeof *f);
    char err[MV_ERRLEN];
    snprintf(f->dir, sizeof f->dir, "/tmp/mv-objenc-XXXXXX");
    if (!mkdtemp(f->dir)) return -1;
    if (mv_store_open(f->dir, 0, 3, &f->s, err, sizeof err) != MV_OK) return -1;
    mv_store_policy *p = &f->pol[0];
    p->encrypt = 1;
    p->has_naming = 1;
    key_of(p->naming, 9);
    p->nkeys = 1;
    p->key_version[0] = 1;
    key_of(p->key[0], 10);
    p->key_current = 1;
    mv_store_set_policy(f->s, policy, f, 60000);
    *state = f;
    return 0;
}

static int rm_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb;
    (void)flag;
    (void)ftw;
    return remove(path);
}

static int teardown(void **state)
{
    fx *f = *state;
    mv_store_close(f->s);
    nftw(f->dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    free(f);
    return 0;
}

static mv_put_result put(mv_store *s, const char *tenant, const char *msg)
{
    char err[MV_ERRLEN];
    mv_put *p = NULL;
    mv_put_result r;
    assert_int_equal(mv_store_put_begin(s, tenant, &p, err, sizeof err), MV_OK);
    assert_int_equal(mv_put_write(p, msg, strlen(msg), err, sizeof err), MV_OK);
    assert_int_equal(mv_put_commit(p, 0, &r, err, sizeof err), MV_OK);
    return r;
}

static void read_file(const char *path, buf *b)
{
    FILE *fp = fopen(path, "rb");
    assert_non_null(fp);
    unsigned char tmp[4096];
    size_t n;
    memset(b, 0, sizeof *b);
    while ((n = fread(tmp, 1, sizeof tmp, fp)) > 0)
        sink(b, tmp, n);
    fclose(fp);
}

static void test_store_encrypted_tenant(void **state)
{
    fx *f = *state;
    char err[MV_ERRLEN], path[512];
    const char *msg = "Subject: very secret subject line\r\n\r\nhello\r\n";
    mv_put_result r = put(f->s, "enc", msg);
    assert_string_not_equal(r.name, r.hash);
    snprintf(path, sizeof path, "%s/enc/objects/%.2s/%.2s/%s", f->dir, r.name, r.name + 2, r.name);
    buf raw;
    read_file(path, &raw);
    assert_memory_equal(raw.d, "MVE1", 4);
    free(raw.d);
    assert_true(mv_store_exists(f->s, "enc", r.hash));
    buf got = {0};
    assert_int_equal(mv_store_get(f->s, "enc", r.hash, sink, &got, err, sizeof err), MV_OK);
    assert_int_equal(got.n, strlen(msg));
    assert_memory_equal(got.d, msg, got.n);
    free(got.d);
    mv_put_result again = put(f->s, "enc", msg);
    assert_true(again.existed); /* dedup works on keyed names */

    /* segments are sealed too, and read back */
    const char seg[] = "segment bytes naming a very secret subject line";
    assert_int_equal(
        mv_store_segment_put(f->s, "enc", "u@x", "a-1-1-2.seg", seg, sizeof seg, err, sizeof err),
        MV_OK);
    snprintf(path, sizeof path, "%s/enc/mailboxes/u@x/index/a-1-1-2.seg", f->dir);
    read_file(path, &raw);
    assert_memory_equal(raw.d, "MVE1", 4);
    assert_null(memmem(raw.d, raw.n, "secret", 6));
    free(raw.d);
    void *d = NULL;
    size_t n = 0;
    assert_int_equal(
        mv_store_segment_get(f->s, "enc", "u@x", "a-1-1-2.seg", &d, &n, err, sizeof err), MV_OK);
    assert_int_equal(n, sizeof seg);
    assert_memory_equal(d, seg, n);
    free(d);

    /* verify: ok and counted as encrypted */
    mv_verify_stats vs;
    assert_int_equal(mv_store_verify(f->s, "enc", NULL, NULL, NULL, &vs, err, sizeof err), MV_OK);
    assert_int_equal(vs.ok, 1);
    assert_int_equal(vs.encrypted, 1);
    assert_int_equal(vs.bad, 0);
}

static void test_store_turn_on_and_rotate(void **state)
{
    fx *f = *state;
    char err[MV_ERRLEN];
    /* a plain object first */
    mv_put_result old = put(f->s, "plain", "old plain message");
    assert_string_equal(old.name, old.hash);
    /* encryption on, keys as storecat would make them */
    mv_store_policy *p = &f->pol[1];
    p->encrypt = 1;
    p->has_naming = 1;
    key_of(p->naming, 20);
    p->nkeys = 1;
    p->key_version[0] = 1;
    key_of(p->key[0], 21);
    p->key_current = 1;
    mv_store_forget(f->s, "plain");
    mv_put_result v1 = put(f->s, "plain", "first sealed message");
    /* rotation: version 2 for new objects */
    p->nkeys = 2;
    p->key_version[1] = 2;
    key_of(p->key[1], 22);
    p->key_current = 2;
    mv_store_forget(f->s, "plain");
    mv_put_result v2 = put(f->s, "plain", "second sealed message");
    const mv_put_result *all[] = {&old, &v1, &v2};
    const char *texts[] = {"old plain message", "first sealed message", "second sealed message"};
    for (int i = 0; i < 3; i++) {
        buf got = {0};
        assert_int_equal(mv_store_get(f->s, "plain", all[i]->hash, sink, &got, err, sizeof err),
                         MV_OK);
        assert_int_equal(got.n, strlen(texts[i]));
        assert_memory_equal(got.d, texts[i], got.n);
        free(got.d);
        assert_true(mv_store_exists(f->s, "plain", all[i]->hash));
    }
    mv_verify_stats vs;
    assert_int_equal(mv_store_verify(f->s, "plain", NULL, NULL, NULL, &vs, err, sizeof err), MV_OK);
    assert_int_equal(vs.ok, 3);
    assert_int_equal(vs.encrypted, 2);
    /* without version 1 the old sealed object is reported, not returned */
    p->key_version[0] = 7;
    mv_store_forget(f->s, "plain");
    buf got = {0};
    assert_int_equal(mv_store_get(f->s, "plain", v1.hash, sink, &got, err, sizeof err),
                     MV_ECORRUPT);
    if (!strstr(err, "key version 1")) fail_msg("err: %s", err);
    assert_int_equal(got.n, 0);
    free(got.d);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_round_trip_sizes),
        cmocka_unit_test(test_fresh_salt),
        cmocka_unit_test(test_every_damage_detected),
        cmocka_unit_test(test_names),
        cmocka_unit_test_setup_teardown(test_store_encrypted_tenant, setup, teardown),
        cmocka_unit_test_setup_teardown(test_store_turn_on_and_rotate, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

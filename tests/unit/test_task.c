/* test_task.c - task message codec: round trips, every field, key order and unknown keys,
 * required keys, types, bounds, version handling, and hostile inputs (truncation at every
 * length, byte flips, huge declared sizes, deep nesting, trailing bytes). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "mv/task.h"

#include <msgpack.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define N(a) (sizeof(a) / sizeof((a)[0]))

static void make_task(mv_task *t)
{
    memset(t, 0, sizeof *t);
    t->version = MV_TASK_VERSION;
    strcpy(t->id, "0f8fad5b-d9cb-469f-a165-70867728950e");
    t->kind = MV_TASK_ARCHIVE;
    strcpy(t->tenant, "acme-corp");
    strcpy(t->profile, "m365.default");
    strcpy(t->mailbox, "alice.smith@acme.example");
    strcpy(t->run_id, "7c9e6679-7425-40de-944b-e07fc1f90ae7");
    t->attempt = 3;
    t->chunk = 4000000000u;
    t->not_before_ms = 1764500000123;
    t->created_ms = 1764499999000;
    strcpy(t->last_error, "imap: timed out after 60000 ms reading FETCH");
}

static void assert_task_equal(const mv_task *a, const mv_task *b)
{
    assert_int_equal(a->version, b->version);
    assert_string_equal(a->id, b->id);
    assert_int_equal(a->kind, b->kind);
    assert_string_equal(a->tenant, b->tenant);
    assert_string_equal(a->profile, b->profile);
    assert_string_equal(a->mailbox, b->mailbox);
    assert_string_equal(a->run_id, b->run_id);
    assert_int_equal(a->attempt, b->attempt);
    assert_int_equal(a->chunk, b->chunk);
    assert_true(a->not_before_ms == b->not_before_ms);
    assert_true(a->created_ms == b->created_ms);
    assert_string_equal(a->last_error, b->last_error);
}

/* ---- building messages by hand ---- */

typedef struct {
    msgpack_sbuffer sb;
    msgpack_packer pk;
} msg;

static void msg_init(msg *m, size_t nkeys)
{
    msgpack_sbuffer_init(&m->sb);
    msgpack_packer_init(&m->pk, &m->sb, msgpack_sbuffer_write);
    assert_int_equal(msgpack_pack_map(&m->pk, nkeys), 0);
}

static void pstr(msg *m, const char *s)
{
    assert_int_equal(msgpack_pack_str_with_body(&m->pk, s, strlen(s)), 0);
}

static void kv_str(msg *m, const char *k, const char *v)
{
    pstr(m, k);
    pstr(m, v);
}

static void kv_uint(msg *m, const char *k, uint64_t v)
{
    pstr(m, k);
    assert_int_equal(msgpack_pack_uint64(&m->pk, v), 0);
}

static void kv_int(msg *m, const char *k, int64_t v)
{
    pstr(m, k);
    assert_int_equal(msgpack_pack_int64(&m->pk, v), 0);
}

/* The six required keys; returns the number packed (6). */
static size_t kv_required(msg *m)
{
    kv_uint(m, "v", 1);
    kv_str(m, "id", "id-1");
    kv_str(m, "k", "archive");
    kv_str(m, "t", "t1");
    kv_str(m, "p", "p1");
    kv_str(m, "m", "user@example.org");
    return 6;
}

static mv_err decode_msg(msg *m, mv_task *t, char *err, size_t errlen)
{
    mv_err rc = mv_task_decode(m->sb.data, m->sb.size, t, err, errlen);
    msgpack_sbuffer_destroy(&m->sb);
    return rc;
}

static void expect_decode_error(const void *buf, size_t len, const char *needle)
{
    mv_task t;
    memset(&t, 0x5A, sizeof t);
    char err[MV_ERRLEN] = "";
    assert_int_equal(mv_task_decode(buf, len, &t, err, sizeof err), MV_EINVAL);
    if (needle && !strstr(err, needle)) fail_msg("error \"%s\" lacks \"%s\"", err, needle);
    /* failure leaves the output untouched */
    unsigned char poison[sizeof t];
    memset(poison, 0x5A, sizeof poison);
    assert_memory_equal(&t, poison, sizeof t);
}

static void expect_msg_error(msg *m, const char *needle)
{
    expect_decode_error(m->sb.data, m->sb.size, needle);
    msgpack_sbuffer_destroy(&m->sb);
}

/* ---- round trips ---- */

static void test_round_trip_full(void **state)
{
    (void)state;
    mv_task a, b;
    make_task(&a);
    char *buf = NULL, err[MV_ERRLEN] = "";
    size_t len = 0;
    assert_int_equal(mv_task_encode(&a, &buf, &len, err, sizeof err), MV_OK);
    assert_non_null(buf);
    assert_int_equal((unsigned char)buf[0], 0x8c); /* fixmap with 12 entries */
    assert_int_equal(mv_task_decode(buf, len, &b, err, sizeof err), MV_OK);
    assert_task_equal(&a, &b);
    free(buf);
    /* an export task travels the same way */
    a.kind = MV_TASK_EXPORT;
    strcpy(a.mailbox, "export:erin-all");
    assert_int_equal(mv_task_encode(&a, &buf, &len, err, sizeof err), MV_OK);
    assert_int_equal(mv_task_decode(buf, len, &b, err, sizeof err), MV_OK);
    assert_task_equal(&a, &b);
    assert_int_equal(b.kind, MV_TASK_EXPORT);
    free(buf);
}

static void test_round_trip_no_error_omits_e(void **state)
{
    (void)state;
    mv_task a, b;
    make_task(&a);
    a.last_error[0] = '\0';
    a.run_id[0] = '\0';
    a.attempt = 0;
    a.chunk = 0;
    a.not_before_ms = 0;
    a.created_ms = -5; /* signed fields may be negative */
    char *buf = NULL, err[MV_ERRLEN] = "";
    size_t len = 0;
    assert_int_equal(mv_task_encode(&a, &buf, &len, err, sizeof err), MV_OK);
    assert_int_equal((unsigned char)buf[0], 0x8b); /* 11 entries: no "e" */
    /* the key "e" (fixstr a1 65) is absent */
    for (size_t i = 0; i + 1 < len; i++)
        assert_false((unsigned char)buf[i] == 0xa1 && buf[i + 1] == 'e');
    assert_int_equal(mv_task_decode(buf, len, &b, err, sizeof err), MV_OK);
    assert_task_equal(&a, &b);
    free(buf);
}

static void test_round_trip_extremes(void **state)
{
    (void)state;
    mv_task a, b;
    make_task(&a);
    memset(a.tenant, 'z', 63);
    a.tenant[63] = '\0';
    memset(a.profile, '9', 63);
    a.profile[63] = '\0';
    memset(a.mailbox, '~', 255);
    a.mailbox[255] = '\0';
    memset(a.last_error, 'E', 255);
    a.last_error[255] = '\0';
    a.attempt = UINT32_MAX;
    a.chunk = UINT32_MAX;
    a.not_before_ms = INT64_MAX;
    a.created_ms = INT64_MIN;
    char *buf = NULL, err[MV_ERRLEN] = "";
    size_t len = 0;
    assert_int_equal(mv_task_encode(&a, &buf, &len, err, sizeof err), MV_OK);
    assert_int_equal(mv_task_decode(buf, len, &b, err, sizeof err), MV_OK);
    assert_task_equal(&a, &b);
    free(buf);
}

static void test_encode_writes_current_version(void **state)
{
    (void)state;
    mv_task a, b;
    make_task(&a);
    a.version = 0;
    char *buf = NULL, err[MV_ERRLEN] = "";
    size_t len = 0;
    assert_int_equal(mv_task_encode(&a, &buf, &len, err, sizeof err), MV_OK);
    assert_int_equal(mv_task_decode(buf, len, &b, err, sizeof err), MV_OK);
    assert_int_equal(b.version, MV_TASK_VERSION);
    free(buf);
}

static void test_encode_refuses_invalid(void **state)
{
    (void)state;
    char *buf = NULL, err[MV_ERRLEN] = "";
    size_t len = 0;
    mv_task a;

    make_task(&a);
    strcpy(a.tenant, "Acme");
    assert_int_equal(mv_task_encode(&a, &buf, &len, err, sizeof err), MV_EINVAL);
    assert_non_null(strstr(err, "\"t\""));
    assert_null(buf);

    make_task(&a);
    strcpy(a.profile, "");
    assert_int_equal(mv_task_encode(&a, &buf, &len, err, sizeof err), MV_EINVAL);
    assert_non_null(strstr(err, "\"p\""));

    make_task(&a);
    strcpy(a.mailbox, "a/b");
    assert_int_equal(mv_task_encode(&a, &buf, &len, err, sizeof err), MV_EINVAL);
    assert_non_null(strstr(err, "\"m\""));

    make_task(&a);
    a.id[0] = '\0';
    assert_int_equal(mv_task_encode(&a, &buf, &len, err, sizeof err), MV_EINVAL);
    assert_non_null(strstr(err, "\"id\""));

    make_task(&a);
    a.kind = (mv_task_kind)7;
    assert_int_equal(mv_task_encode(&a, &buf, &len, err, sizeof err), MV_EINVAL);
    assert_non_null(strstr(err, "\"k\""));

    make_task(&a);
    memset(a.last_error, 'x', sizeof a.last_error); /* no NUL */
    assert_int_equal(mv_task_encode(&a, &buf, &len, err, sizeof err), MV_EINVAL);
    assert_null(buf);
}

/* ---- decode: fields, order, unknown keys ---- */

static void test_decode_any_order_and_unknown_keys(void **state)
{
    (void)state;
    msg m;
    msg_init(&m, 16);
    kv_str(&m, "e", "boom");
    kv_int(&m, "ts", -1);
    kv_int(&m, "nb", 42);
    kv_uint(&m, "c", 7);
    kv_uint(&m, "a", 2);
    kv_str(&m, "r", "run-9");
    kv_str(&m, "future", "ignored");
    pstr(&m, "nested"); /* unknown key with a container value */
    assert_int_equal(msgpack_pack_map(&m.pk, 1), 0);
    kv_str(&m, "x", "y");
    assert_int_equal(msgpack_pack_int(&m.pk, 5), 0); /* non-string key: ignored */
    assert_int_equal(msgpack_pack_array(&m.pk, 2), 0);
    assert_int_equal(msgpack_pack_nil(&m.pk), 0);
    assert_int_equal(msgpack_pack_true(&m.pk), 0);
    pstr(&m, "vv"); /* near-miss of a known key */
    assert_int_equal(msgpack_pack_double(&m.pk, 1.5), 0);
    kv_str(&m, "m", "bob@example.org");
    kv_str(&m, "p", "gmail");
    kv_str(&m, "t", "tenant.2");
    kv_str(&m, "k", "archive");
    kv_str(&m, "id", "abc");
    kv_uint(&m, "v", 1);
    mv_task t;
    char err[MV_ERRLEN] = "";
    assert_int_equal(decode_msg(&m, &t, err, sizeof err), MV_OK);
    assert_int_equal(t.version, 1);
    assert_string_equal(t.id, "abc");
    assert_int_equal(t.kind, MV_TASK_ARCHIVE);
    assert_string_equal(t.tenant, "tenant.2");
    assert_string_equal(t.profile, "gmail");
    assert_string_equal(t.mailbox, "bob@example.org");
    assert_string_equal(t.run_id, "run-9");
    assert_int_equal(t.attempt, 2);
    assert_int_equal(t.chunk, 7);
    assert_true(t.not_before_ms == 42);
    assert_true(t.created_ms == -1);
    assert_string_equal(t.last_error, "boom");
}

static void test_decode_optional_default_zero(void **state)
{
    (void)state;
    msg m;
    msg_init(&m, 6);
    kv_required(&m);
    mv_task t;
    memset(&t, 0x77, sizeof t);
    char err[MV_ERRLEN] = "";
    assert_int_equal(decode_msg(&m, &t, err, sizeof err), MV_OK);
    assert_string_equal(t.run_id, "");
    assert_string_equal(t.last_error, "");
    assert_int_equal(t.attempt, 0);
    assert_int_equal(t.chunk, 0);
    assert_true(t.not_before_ms == 0 && t.created_ms == 0);
}

static void test_decode_missing_required(void **state)
{
    (void)state;
    static const char *req[] = {"v", "id", "k", "t", "p", "m"};
    for (size_t skip = 0; skip < N(req); skip++) {
        msg m;
        msg_init(&m, 5);
        if (skip != 0) kv_uint(&m, "v", 1);
        if (skip != 1) kv_str(&m, "id", "id-1");
        if (skip != 2) kv_str(&m, "k", "archive");
        if (skip != 3) kv_str(&m, "t", "t1");
        if (skip != 4) kv_str(&m, "p", "p1");
        if (skip != 5) kv_str(&m, "m", "u@x");
        char needle[64];
        snprintf(needle, sizeof needle, "task is missing required field \"%s\"", req[skip]);
        expect_msg_error(&m, needle);
    }
}

static void test_decode_version(void **state)
{
    (void)state;
    msg m;
    msg_init(&m, 6);
    kv_uint(&m, "v", 2);
    kv_str(&m, "id", "x");
    kv_str(&m, "k", "archive");
    kv_str(&m, "t", "t1");
    kv_str(&m, "p", "p1");
    kv_str(&m, "m", "u@x");
    expect_msg_error(&m, "task schema version 2 is newer than this worker understands (1)");

    msg_init(&m, 6);
    kv_uint(&m, "v", 0);
    kv_str(&m, "id", "x");
    kv_str(&m, "k", "archive");
    kv_str(&m, "t", "t1");
    kv_str(&m, "p", "p1");
    kv_str(&m, "m", "u@x");
    expect_msg_error(&m, "version 0 is invalid");
}

/* Each known key with a value of the wrong type. */
static void test_decode_wrong_types(void **state)
{
    (void)state;
    static const char *keys[] = {"v", "id", "k", "t", "p", "m", "r", "a", "c", "nb", "ts", "e"};
    static const int is_int[] = {1, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 0};
    for (size_t i = 0; i < N(keys); i++) {
        for (int variant = 0; variant < 4; variant++) {
            /* the bad key goes first, so its type error is what gets reported */
            msg m;
            msg_init(&m, 6);
            pstr(&m, keys[i]);
            switch (variant) {
            case 0:
                if (is_int[i])
                    pstr(&m, "1");
                else
                    assert_int_equal(msgpack_pack_uint8(&m.pk, 1), 0);
                break;
            case 1:
                assert_int_equal(msgpack_pack_nil(&m.pk), 0);
                break;
            case 2:
                assert_int_equal(msgpack_pack_double(&m.pk, 1.0), 0);
                break;
            case 3:
                assert_int_equal(msgpack_pack_bin_with_body(&m.pk, "ab", 2), 0);
                break;
            }
            kv_str(&m, "zz1", "a");
            kv_str(&m, "zz2", "a");
            kv_str(&m, "zz3", "a");
            kv_str(&m, "zz4", "a");
            kv_str(&m, "zz5", "a");
            char needle[64];
            snprintf(needle, sizeof needle, "task field \"%s\": expected %s", keys[i],
                     is_int[i] ? "an integer" : "a string");
            expect_msg_error(&m, needle);
        }
    }
}

static void test_decode_integer_encodings(void **state)
{
    (void)state;
    /* Signed msgpack encodings of non-negative values are fine for unsigned fields:
     * map{ "v": int8 1, "id":"i", "k":"archive", "t":"t", "p":"p", "m":"m", "a": int64 9,
     *      "c": int16 300, "nb": uint64 5 } */
    static const unsigned char buf[] = {
        0x89, 0xa1, 'v',  0xd0, 0x01, 0xa2, 'i',  'd',  0xa1, 'i',  0xa1, 'k',  0xa7, 'a',  'r',
        'c',  'h',  'i',  'v',  'e',  0xa1, 't',  0xa1, 't',  0xa1, 'p',  0xa1, 'p',  0xa1, 'm',
        0xa1, 'm',  0xa1, 'a',  0xd3, 0,    0,    0,    0,    0,    0,    0,    9,    0xa1, 'c',
        0xd1, 0x01, 0x2c, 0xa2, 'n',  'b',  0xcf, 0,    0,    0,    0,    0,    0,    0,    5};
    mv_task t;
    char err[MV_ERRLEN] = "";
    assert_int_equal(mv_task_decode(buf, sizeof buf, &t, err, sizeof err), MV_OK);
    assert_int_equal(t.version, 1);
    assert_int_equal(t.attempt, 9);
    assert_int_equal(t.chunk, 300);
    assert_true(t.not_before_ms == 5);
}

static void test_decode_int_ranges(void **state)
{
    (void)state;
    msg m;
    msg_init(&m, 7);
    kv_required(&m);
    kv_int(&m, "a", -1);
    expect_msg_error(&m, "task field \"a\": -1 is negative");

    msg_init(&m, 7);
    kv_required(&m);
    kv_uint(&m, "c", (uint64_t)UINT32_MAX + 1);
    expect_msg_error(&m, "task field \"c\": 4294967296 is out of range");

    msg_init(&m, 7);
    kv_required(&m);
    kv_uint(&m, "nb", (uint64_t)INT64_MAX + 1);
    expect_msg_error(&m, "task field \"nb\"");

    msg_init(&m, 7);
    kv_required(&m);
    kv_int(&m, "ts", INT64_MIN);
    mv_task t;
    char err[MV_ERRLEN] = "";
    assert_int_equal(decode_msg(&m, &t, err, sizeof err), MV_OK);
    assert_true(t.created_ms == INT64_MIN);

    /* "v" huge */
    msg_init(&m, 6);
    kv_uint(&m, "v", UINT64_MAX);
    kv_str(&m, "id", "x");
    kv_str(&m, "k", "archive");
    kv_str(&m, "t", "t1");
    kv_str(&m, "p", "p1");
    kv_str(&m, "m", "u@x");
    expect_msg_error(&m, "task field \"v\"");
}

static void test_decode_string_bounds(void **state)
{
    (void)state;
    static const struct {
        const char *key;
        size_t max;
        char fill;
    } f[] = {{"id", 36, 'a'}, {"r", 36, 'b'},  {"t", 63, 't'},
             {"p", 63, 'p'},  {"m", 255, 'm'}, {"e", 255, 'e'}};
    char val[300];
    for (size_t i = 0; i < N(f); i++) {
        for (int over = 0; over <= 1; over++) {
            size_t n = f[i].max + (size_t)over;
            memset(val, f[i].fill, n);
            val[n] = '\0';
            msg m;
            msg_init(&m, 7);
            kv_str(&m, f[i].key, val); /* first, so it overrides nothing */
            kv_uint(&m, "v", 1);
            if (strcmp(f[i].key, "id")) kv_str(&m, "id", "id-1");
            kv_str(&m, "k", "archive");
            if (strcmp(f[i].key, "t")) kv_str(&m, "t", "t1");
            if (strcmp(f[i].key, "p")) kv_str(&m, "p", "p1");
            if (strcmp(f[i].key, "m")) kv_str(&m, "m", "u@x");
            int required = !strcmp(f[i].key, "id") || !strcmp(f[i].key, "t") ||
                           !strcmp(f[i].key, "p") || !strcmp(f[i].key, "m");
            if (required) kv_str(&m, "pad", "x");
            if (over) {
                char needle[96];
                snprintf(needle, sizeof needle,
                         "task field \"%s\": string of %zu bytes is too long (at most %zu)",
                         f[i].key, n, f[i].max);
                expect_msg_error(&m, needle);
            } else {
                mv_task t;
                char err[MV_ERRLEN] = "";
                assert_int_equal(decode_msg(&m, &t, err, sizeof err), MV_OK);
            }
        }
    }
}

static void test_decode_huge_string(void **state)
{
    (void)state;
    size_t n = 60000;
    char *big = malloc(n + 1);
    assert_non_null(big);
    memset(big, 'x', n);
    big[n] = '\0';
    msg m;
    msg_init(&m, 7);
    kv_required(&m);
    kv_str(&m, "e", big);
    expect_msg_error(&m, "task field \"e\": string of 60000 bytes is too long");

    /* an unknown key with a big value is fine as long as the message stays bounded */
    msg_init(&m, 7);
    kv_required(&m);
    kv_str(&m, "blob", big);
    mv_task t;
    char err[MV_ERRLEN] = "";
    assert_int_equal(decode_msg(&m, &t, err, sizeof err), MV_OK);
    free(big);

    /* messages over 64 KiB are refused outright */
    size_t sz = 70000;
    unsigned char *huge = calloc(1, sz);
    assert_non_null(huge);
    expect_decode_error(huge, sz, "too large");
    free(huge);
}

static void test_decode_invalid_names(void **state)
{
    (void)state;
    static const struct {
        const char *key, *val, *needle;
    } c[] = {
        {"t", "Acme", "task field \"t\": \"Acme\" is not a valid tenant name"},
        {"t", "-acme", "is not a valid tenant name"},
        {"t", "", "is not a valid tenant name"},
        {"p", "a b", "task field \"p\": \"a b\" is not a valid profile name"},
        {"m", "a/b", "task field \"m\": not a valid mailbox"},
        {"m", "a\tb", "task field \"m\": not a valid mailbox"},
        {"m", "", "task field \"m\": not a valid mailbox"},
        {"id", "", "task field \"id\""},
        {"id", "a b", "task field \"id\""},
        {"r", "x\ny", "task field \"r\""},
        {"k", "restore", "task field \"k\": unknown task kind \"restore\""},
        {"k", "ARCHIVE", "unknown task kind"},
        {"k", "archive-and-much-more-than-16", "unknown task kind"},
    };
    for (size_t i = 0; i < N(c); i++) {
        int optional = !strcmp(c[i].key, "r");
        msg m;
        msg_init(&m, optional ? 7 : 6);
        kv_str(&m, c[i].key, c[i].val);
        kv_uint(&m, "v", 1);
        if (strcmp(c[i].key, "id")) kv_str(&m, "id", "id-1");
        if (strcmp(c[i].key, "k")) kv_str(&m, "k", "archive");
        if (strcmp(c[i].key, "t")) kv_str(&m, "t", "t1");
        if (strcmp(c[i].key, "p")) kv_str(&m, "p", "p1");
        if (strcmp(c[i].key, "m")) kv_str(&m, "m", "u@x");
        expect_msg_error(&m, c[i].needle);
    }
}

static void test_decode_nul_in_string(void **state)
{
    (void)state;
    msg m;
    msg_init(&m, 7);
    kv_required(&m);
    pstr(&m, "e");
    assert_int_equal(msgpack_pack_str_with_body(&m.pk, "a\0b", 3), 0);
    expect_msg_error(&m, "task field \"e\": string contains a NUL byte");
}

static void test_decode_duplicate_key(void **state)
{
    (void)state;
    msg m;
    msg_init(&m, 7);
    kv_required(&m);
    kv_str(&m, "t", "t2");
    expect_msg_error(&m, "task field \"t\" appears twice");
}

static void test_decode_not_a_map(void **state)
{
    (void)state;
    static const unsigned char arr[] = {0x91, 0x01};
    expect_decode_error(arr, sizeof arr, "expected a map");
    static const unsigned char str[] = {0xa1, 'x'};
    expect_decode_error(str, sizeof str, "expected a map");
    static const unsigned char emptymap[] = {0x80};
    expect_decode_error(emptymap, sizeof emptymap, "missing required field");
    expect_decode_error("", 0, "empty");
    static const unsigned char never[] = {0xc1};
    expect_decode_error(never, sizeof never, "well-formed");
}

/* ---- hostile encodings ---- */

static void test_decode_truncated_every_length(void **state)
{
    (void)state;
    mv_task a;
    make_task(&a);
    char *buf = NULL, err[MV_ERRLEN] = "";
    size_t len = 0;
    assert_int_equal(mv_task_encode(&a, &buf, &len, err, sizeof err), MV_OK);
    for (size_t n = 0; n < len; n++) {
        /* copy into an exact-size heap block so ASan/valgrind catch any over-read */
        unsigned char *p = malloc(n ? n : 1);
        assert_non_null(p);
        memcpy(p, buf, n);
        expect_decode_error(p, n, NULL);
        free(p);
    }
    /* trailing garbage after a valid message is refused too */
    char *longer = malloc(len + 1);
    assert_non_null(longer);
    memcpy(longer, buf, len);
    longer[len] = 0x00;
    expect_decode_error(longer, len + 1, "single");
    free(longer);
    free(buf);
}

static void test_decode_byte_flips(void **state)
{
    (void)state;
    mv_task a;
    make_task(&a);
    char *buf = NULL, err[MV_ERRLEN] = "";
    size_t len = 0;
    assert_int_equal(mv_task_encode(&a, &buf, &len, err, sizeof err), MV_OK);
    static const unsigned char repl[] = {0x00, 0x7f, 0x80, 0x8f, 0x9f, 0xa0, 0xbf, 0xc1, 0xc4,
                                         0xc9, 0xcf, 0xd3, 0xd8, 0xdb, 0xdd, 0xdf, 0xff};
    unsigned char *p = malloc(len);
    assert_non_null(p);
    size_t ok = 0, bad = 0;
    for (size_t i = 0; i < len; i++) {
        for (size_t r = 0; r < sizeof repl; r++) {
            memcpy(p, buf, len);
            p[i] = repl[r];
            mv_task t;
            mv_err rc = mv_task_decode(p, len, &t, err, sizeof err);
            if (rc == MV_OK) {
                ok++;
                /* whatever was accepted re-encodes and decodes to the same task */
                char *again = NULL;
                size_t againlen = 0;
                mv_task t2;
                assert_int_equal(mv_task_encode(&t, &again, &againlen, err, sizeof err), MV_OK);
                assert_int_equal(mv_task_decode(again, againlen, &t2, err, sizeof err), MV_OK);
                assert_task_equal(&t, &t2);
                free(again);
            } else {
                assert_int_equal(rc, MV_EINVAL);
                assert_true(err[0] != '\0');
                bad++;
            }
        }
    }
    assert_true(ok > 0 && bad > 0);
    free(p);
    free(buf);
}

static void test_decode_huge_declared_sizes(void **state)
{
    (void)state;
    /* containers and strings that claim far more than the buffer holds */
    static const unsigned char map32[] = {0xdf, 0xff, 0xff, 0xff, 0xff};
    static const unsigned char arr32[] = {0xdd, 0xff, 0xff, 0xff, 0xff, 0x01};
    static const unsigned char str32[] = {0xdb, 0x7f, 0xff, 0xff, 0xff, 'a'};
    static const unsigned char bin32[] = {0x81, 0xa1, 'x', 0xc6, 0xff, 0xff, 0xff, 0xff};
    static const unsigned char ext32[] = {0x81, 0xa1, 'x', 0xc9, 0xff, 0xff, 0xff, 0xff, 0x01};
    static const unsigned char map16[] = {0x81, 0xa1, 'x', 0xde, 0xff, 0xff, 0x01, 0x02};
    /* a map whose entry count fits the bytes left only if every entry were one byte */
    static const unsigned char tight[] = {0x82, 0x01, 0x02, 0x03};
    expect_decode_error(map32, sizeof map32, NULL);
    expect_decode_error(arr32, sizeof arr32, NULL);
    expect_decode_error(str32, sizeof str32, NULL);
    expect_decode_error(bin32, sizeof bin32, NULL);
    expect_decode_error(ext32, sizeof ext32, NULL);
    expect_decode_error(map16, sizeof map16, NULL);
    expect_decode_error(tight, sizeof tight, NULL);
}

static void test_decode_deep_nesting(void **state)
{
    (void)state;
    /* {"x": [[[[...1000 deep...]]]]} inside an otherwise valid task */
    msg m;
    msg_init(&m, 7);
    kv_required(&m);
    pstr(&m, "x");
    for (int i = 0; i < 1000; i++)
        assert_int_equal(msgpack_pack_array(&m.pk, 1), 0);
    assert_int_equal(msgpack_pack_nil(&m.pk), 0);
    expect_msg_error(&m, NULL);

    /* moderate nesting in an unknown key is fine */
    msg_init(&m, 7);
    kv_required(&m);
    pstr(&m, "x");
    for (int i = 0; i < 10; i++)
        assert_int_equal(msgpack_pack_array(&m.pk, 1), 0);
    assert_int_equal(msgpack_pack_nil(&m.pk), 0);
    mv_task t;
    char err[MV_ERRLEN] = "";
    assert_int_equal(decode_msg(&m, &t, err, sizeof err), MV_OK);
}

static void test_decode_all_ext_types(void **state)
{
    (void)state;
    /* unknown keys carrying every fixed-size msgpack type are skipped correctly */
    static const unsigned char buf[] = {
        0x8f, 0xa1, 'v', 0x01, 0xa2, 'i', 'd', 0xa1, 'i', 0xa1, 'k', 0xa7, 'a', 'r', 'c', 'h', 'i',
        'v', 'e', 0xa1, 't', 0xa1, 't', 0xa1, 'p', 0xa1, 'p', 0xa1, 'm', 0xa1, 'm',
        /* 9 unknown keys: 0..8 -> values */
        0x00, 0xd4, 1, 0xaa,                                           /* fixext1 */
        0x01, 0xd5, 1, 0, 0,                                           /* fixext2 */
        0x02, 0xd6, 1, 0, 0, 0, 0,                                     /* fixext4 */
        0x03, 0xd7, 1, 0, 0, 0, 0, 0, 0, 0, 0,                         /* fixext8 */
        0x04, 0xd8, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, /* fixext16 */
        0x05, 0xc7, 2, 1, 'a', 'b',                                    /* ext8 */
        0x06, 0xca, 0, 0, 0, 0,                                        /* float32 */
        0x07, 0xc4, 1, 'z',                                            /* bin8 */
        0x08, 0xc2};                                                   /* false */
    mv_task t;
    char err[MV_ERRLEN] = "";
    assert_int_equal(mv_task_decode(buf, sizeof buf, &t, err, sizeof err), MV_OK);
    assert_string_equal(t.mailbox, "m");
}

/* ---- helpers ---- */

static void test_key_and_kind_name(void **state)
{
    (void)state;
    mv_task a;
    make_task(&a);
    char key[320];
    mv_task_key(&a, key, sizeof key);
    assert_string_equal(key, "acme-corp/alice.smith@acme.example");
    char small[6];
    mv_task_key(&a, small, sizeof small);
    assert_string_equal(small, "acme-");
    mv_task_key(&a, small, 0); /* no write, no crash */
    assert_string_equal(mv_task_kind_name(MV_TASK_ARCHIVE), "archive");
    assert_string_equal(mv_task_kind_name(MV_TASK_EXPORT), "export");
    assert_string_equal(mv_task_kind_name((mv_task_kind)99), "unknown");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_round_trip_full),
        cmocka_unit_test(test_round_trip_no_error_omits_e),
        cmocka_unit_test(test_round_trip_extremes),
        cmocka_unit_test(test_encode_writes_current_version),
        cmocka_unit_test(test_encode_refuses_invalid),
        cmocka_unit_test(test_decode_any_order_and_unknown_keys),
        cmocka_unit_test(test_decode_optional_default_zero),
        cmocka_unit_test(test_decode_missing_required),
        cmocka_unit_test(test_decode_version),
        cmocka_unit_test(test_decode_wrong_types),
        cmocka_unit_test(test_decode_integer_encodings),
        cmocka_unit_test(test_decode_int_ranges),
        cmocka_unit_test(test_decode_string_bounds),
        cmocka_unit_test(test_decode_huge_string),
        cmocka_unit_test(test_decode_invalid_names),
        cmocka_unit_test(test_decode_nul_in_string),
        cmocka_unit_test(test_decode_duplicate_key),
        cmocka_unit_test(test_decode_not_a_map),
        cmocka_unit_test(test_decode_truncated_every_length),
        cmocka_unit_test(test_decode_byte_flips),
        cmocka_unit_test(test_decode_huge_declared_sizes),
        cmocka_unit_test(test_decode_deep_nesting),
        cmocka_unit_test(test_decode_all_ext_types),
        cmocka_unit_test(test_key_and_kind_name),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

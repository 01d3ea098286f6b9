/* test_mpack.c - mv_mpack_check, the msgpack pre-check shared by the task and segment decoders.
 *
 * Design: a table of hand-written encodings covers every msgpack type at every width; each is
 * accepted whole (and by msgpack-c, so the table itself is known good), refused at every
 * truncated length (copied into an exact-size heap block so valgrind/ASan see any over-read),
 * and checked with a trailing byte both allowed and refused. Forged lengths, the depth and
 * per-container item limits, 0xc1 and argument errors get their own cases, and a seeded random
 * run checks that whatever the pre-check accepts msgpack-c parses to the same size. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "mv/mpack.h"

#include <msgpack.h>
#include <msgpack/unpack_define.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

_Static_assert(MV_MPACK_MSGPACK_C_DEPTH == MSGPACK_EMBED_STACK_SIZE,
               "MV_MPACK_MSGPACK_C_DEPTH must match msgpack-c");

#define N(a) (sizeof(a) / sizeof((a)[0]))

typedef struct vec {
    const char *b;
    size_t n;
} vec;

#define V(lit)                                                                                     \
    {                                                                                              \
        lit, sizeof(lit) - 1                                                                       \
    }

/* Every type at every width (hex escapes are split where a payload letter could extend them). */
static const vec valid[] = {
    V("\x00"),
    V("\x7f"),
    V("\xe0"),
    V("\xff"), /* fixint */
    V("\xc0"),
    V("\xc2"),
    V("\xc3"), /* nil, false, true */
    V("\xa0"),
    V("\xa3"
      "abc"), /* fixstr */
    V("\xbf"
      "0123456789012345678901234567890"), /* fixstr 31 */
    V("\xd9\x00"),
    V("\xd9\x03"
      "abc"), /* str 8 */
    V("\xda\x00\x03"
      "abc"),
    V("\xdb\x00\x00\x00\x03"
      "abc"), /* str 16/32 */
    V("\xc4\x00"),
    V("\xc4\x02"
      "ab"), /* bin 8 */
    V("\xc5\x00\x02"
      "ab"),
    V("\xc6\x00\x00\x00\x02"
      "ab"), /* bin 16/32 */
    V("\xc7\x00\x05"),
    V("\xc7\x02\x05"
      "ab"), /* ext 8 */
    V("\xc8\x00\x02\x05"
      "ab"),
    V("\xc9\x00\x00\x00\x02\x05"
      "ab"), /* ext 16/32 */
    V("\xca\x3f\x80\x00\x00"),
    V("\xcb\x3f\xf0\x00\x00\x00\x00\x00\x00"), /* float 32/64 */
    V("\xcc\xff"),
    V("\xcd\xff\xff"),
    V("\xce\xff\xff\xff\xff"), /* uint */
    V("\xcf\xff\xff\xff\xff\xff\xff\xff\xff"),
    V("\xd0\x80"),
    V("\xd1\x80\x00"),
    V("\xd2\x80\x00\x00\x00"), /* int */
    V("\xd3\x80\x00\x00\x00\x00\x00\x00\x00"),
    V("\xd4\x01\xaa"),
    V("\xd5\x01\x00\x00"),
    V("\xd6\x01\x00\x00\x00\x00"), /* fixext */
    V("\xd7\x01\x00\x00\x00\x00\x00\x00\x00\x00"),
    V("\xd8\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00"),
    V("\x90"),
    V("\x93\x01\x02\x03"),                                                 /* fixarray */
    V("\x9f\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00"), /* fixarray 15 */
    V("\xdc\x00\x00"),
    V("\xdc\x00\x02\x01\x02"),
    V("\xdd\x00\x00\x00\x02\x01\x02"), /* array */
    V("\x80"),
    V("\x81\xa1k\x01"), /* fixmap */
    V("\xde\x00\x00"),
    V("\xde\x00\x01\x01\x02"),
    V("\xdf\x00\x00\x00\x01\x01\x02"), /* map */
    /* {"k": [nil, {1: true}], "v": str32 "z"} */
    V("\x82\xa1k\x92\xc0\x81\x01\xc3\xa1v\xdb\x00\x00\x00\x01z"),
};

static mv_err check(const void *b, size_t n, size_t depth, size_t items, int trailing, size_t *used,
                    char *err, size_t errlen)
{
    err[0] = '\0';
    return mv_mpack_check(b, n, depth, items, trailing, used, err, errlen);
}

static void expect_fail(const void *b, size_t n, size_t depth, size_t items, int trailing,
                        const char *needle)
{
    char err[MV_ERRLEN];
    size_t used = 12345;
    mv_err rc = check(b, n, depth, items, trailing, &used, err, sizeof err);
    if (rc != MV_EINVAL) fail_msg("%zu-byte input accepted (rc %d)", n, (int)rc);
    assert_int_equal(used, 0);
    assert_true(err[0] != '\0');
    if (needle && !strstr(err, needle)) fail_msg("error \"%s\" lacks \"%s\"", err, needle);
}

static void expect_ok(const void *b, size_t n, size_t depth, size_t items, int trailing,
                      size_t want_used)
{
    char err[MV_ERRLEN];
    size_t used = 0;
    mv_err rc = check(b, n, depth, items, trailing, &used, err, sizeof err);
    if (rc != MV_OK) fail_msg("%zu-byte input refused: %s", n, err);
    assert_int_equal(used, want_used);
}

/* 1 if msgpack-c unpacks one value from b (only call on inputs the pre-check accepted, or that
 * contain no container count large enough to make msgpack-c allocate much) */
static int msgpack_c_parses(const void *b, size_t n, size_t *off)
{
    msgpack_unpacked up;
    msgpack_unpacked_init(&up);
    *off = 0;
    msgpack_unpack_return r = msgpack_unpack_next(&up, b, n, off);
    msgpack_unpacked_destroy(&up);
    return r == MSGPACK_UNPACK_SUCCESS;
}

/* ---- valid encodings ---- */

static void test_valid_every_type(void **state)
{
    (void)state;
    for (size_t i = 0; i < N(valid); i++) {
        const vec *v = &valid[i];
        size_t off = 0;
        if (!msgpack_c_parses(v->b, v->n, &off) || off != v->n)
            fail_msg("vector %zu is not one msgpack value", i);
        expect_ok(v->b, v->n, MV_MPACK_MSGPACK_C_DEPTH, 0, 0, v->n);
        expect_ok(v->b, v->n, 0, 0, 1, v->n);
        char err[MV_ERRLEN];
        assert_int_equal(check(v->b, v->n, 0, 0, 0, NULL, err, sizeof err), MV_OK);
    }
}

static void test_truncated_every_length(void **state)
{
    (void)state;
    for (size_t i = 0; i < N(valid); i++) {
        const vec *v = &valid[i];
        for (size_t cut = 0; cut < v->n; cut++) {
            unsigned char *p = malloc(cut ? cut : 1); /* exact size: over-reads are caught */
            assert_non_null(p);
            memcpy(p, v->b, cut);
            expect_fail(p, cut, 0, 0, 1, "msgpack");
            expect_fail(p, cut, MV_MPACK_MSGPACK_C_DEPTH, 0, 0, "msgpack");
            free(p);
        }
    }
}

static void test_trailing(void **state)
{
    (void)state;
    for (size_t i = 0; i < N(valid); i++) {
        const vec *v = &valid[i];
        unsigned char *p = malloc(v->n + 1);
        assert_non_null(p);
        memcpy(p, v->b, v->n);
        p[v->n] = 0xc0;
        expect_ok(p, v->n + 1, 0, 0, 1, v->n);
        expect_fail(p, v->n + 1, 0, 0, 0, "trailing bytes");
        free(p);
    }
    /* trailing bytes are not inspected when allowed, even a never-used byte */
    expect_ok("\x01\xc1", 2, 0, 0, 1, 1);
    expect_fail("\x01\xc1", 2, 0, 0, 0, "trailing bytes");
}

/* ---- hostile encodings ---- */

static void test_forged_lengths(void **state)
{
    (void)state;
    static const vec forged[] = {
        V("\xd9\xff"
          "a"),
        V("\xda\xff\xff"
          "a"),
        V("\xdb\xff\xff\xff\xff"
          "a"), /* str */
        V("\xbf"
          "abc"), /* fixstr */
        V("\xc4\xff"
          "a"),
        V("\xc5\xff\xff"
          "a"),
        V("\xc6\xff\xff\xff\xff"
          "a"), /* bin */
        V("\xc7\xff\x01"
          "a"),
        V("\xc8\xff\xff\x01"),
        V("\xc9\xff\xff\xff\xff\x01"), /* ext */
        V("\xdc\xff\xff\x00"),
        V("\xdd\xff\xff\xff\xff"),
        V("\xdd\x00\x00\x00\x05\x01\x02"),
        V("\xde\xff\xff\x00"),
        V("\xdf\xff\xff\xff\xff"),
        V("\xdf\x7f\xff\xff\xff"), /* map */
        V("\x9f\x00"),
        V("\x94\x01\x02\x03"),
        V("\x82\x01\x02\x03"), /* one short */
        V("\x91\xdd\xff\xff\xff\xff\x01"),
        V("\x81\xa1x\xdf\xff\xff\xff\xff\x01"), /* nested */
        V("\x92\x01\xdb\xff\xff\xff\xff"),
    };
    for (size_t i = 0; i < N(forged); i++) {
        /* mv_mpack_check never allocates; refusal is what keeps msgpack-c from doing so */
        expect_fail(forged[i].b, forged[i].n, 0, 0, 1, "msgpack");
        expect_fail(forged[i].b, forged[i].n, MV_MPACK_MSGPACK_C_DEPTH, 0, 0, "msgpack");
    }
    expect_fail("\xdf\xff\xff\xff\xff", 5, 0, 0, 1, "container of 4294967295 elements");
    expect_fail("\xdb\xff\xff\xff\xff"
                "a",
                6, 0, 0, 1, "truncated msgpack at offset 0");
    /* refused at the header that claims one element more than there are bytes left */
    expect_fail("\x94\x01\x02\x03", 4, 0, 0, 1, "container of 4 elements does not fit");
    expect_fail("\x82\x01\x02\x03", 4, 0, 0, 1, "container of 2 elements does not fit");
    /* a container may claim exactly as many elements as there are bytes left */
    expect_ok("\x93\x01\x02\x03", 4, 0, 0, 0, 4);
}

static void test_never_used_byte(void **state)
{
    (void)state;
    expect_fail("\xc1", 1, 0, 0, 1, "bad msgpack byte 0xc1 at offset 0");
    expect_fail("\x91\xc1", 2, 0, 0, 1, "0xc1 at offset 1");
    expect_fail("\x81\xc1\x01", 3, 0, 0, 1, "0xc1");
    expect_fail("\x81\x01\xc1", 3, 0, 0, 1, "0xc1");
}

/* n nested one-element arrays around `inner` (a nil, or an empty array for one level more) */
static unsigned char *nest(size_t n, unsigned char inner, size_t *len)
{
    unsigned char *p = malloc(n + 1);
    assert_non_null(p);
    memset(p, 0x91, n);
    p[n] = inner;
    *len = n + 1;
    return p;
}

static void test_depth_limit(void **state)
{
    (void)state;
    size_t len;
    unsigned char *p = nest(32, 0xc0, &len); /* depth 32 */
    expect_ok(p, len, 32, 0, 0, len);
    expect_ok(p, len, 0, 0, 0, len);
    expect_fail(p, len, 31, 0, 0, "nesting deeper than 31");
    free(p);
    p = nest(31, 0x90, &len); /* the empty array is the 32nd container */
    expect_ok(p, len, 32, 0, 0, len);
    expect_fail(p, len, 31, 0, 0, "nesting");
    free(p);
    expect_ok("\x90", 1, 1, 0, 0, 1);
    expect_ok("\x01", 1, 1, 0, 0, 1);

    /* siblings do not add up: [[1],[1],[1]] and {1: [1], 2: {3: [4]}} */
    expect_ok("\x93\x91\x01\x91\x01\x91\x01", 7, 2, 0, 0, 7);
    expect_fail("\x93\x91\x01\x91\x01\x91\x01", 7, 1, 0, 0, "nesting");
    expect_ok("\x82\x01\x91\x01\x02\x81\x03\x91\x04", 9, 3, 0, 0, 9);
    expect_fail("\x82\x01\x91\x01\x02\x81\x03\x91\x04", 9, 2, 0, 0, "nesting deeper than 2");
    /* depth drops back after a closed container: [[[1]], 2, [[3]]] */
    expect_ok("\x93\x91\x91\x01\x02\x91\x91\x03", 8, 3, 0, 0, 8);
    expect_fail("\x93\x91\x91\x01\x02\x91\x91\x03", 8, 2, 0, 0, "nesting");

    /* MV_MPACK_MSGPACK_C_DEPTH refuses exactly what msgpack-c refuses */
    for (size_t n = 1; n <= MV_MPACK_MSGPACK_C_DEPTH + 4; n++) {
        for (int empty = 0; empty < 2; empty++) {
            p = nest(n, empty ? 0x90 : 0xc0, &len);
            char err[MV_ERRLEN];
            size_t off;
            int ours =
                check(p, len, MV_MPACK_MSGPACK_C_DEPTH, 0, 0, NULL, err, sizeof err) == MV_OK;
            int theirs = msgpack_c_parses(p, len, &off);
            if (ours != theirs)
                fail_msg("depth %zu%s: ours %d msgpack-c %d", n, empty ? "+[]" : "", ours, theirs);
            free(p);
        }
    }

    /* unlimited depth is iterative: a million levels need no stack */
    p = nest(1000000, 0xc0, &len);
    expect_ok(p, len, 0, 0, 0, len);
    expect_fail(p, len, MV_MPACK_MAX_DEPTH, 0, 0, "nesting");
    free(p);

    expect_fail("\x01", 1, MV_MPACK_MAX_DEPTH + 1, 0, 0, "max_depth");
}

static void test_item_limit(void **state)
{
    (void)state;
    expect_ok("\x93\x01\x02\x03", 4, 0, 3, 0, 4);
    expect_fail("\x93\x01\x02\x03", 4, 0, 2, 0, "container of 3 elements exceeds the limit of 2");
    /* map limits count pairs */
    expect_ok("\x82\x01\x02\x03\x04", 5, 0, 2, 0, 5);
    expect_fail("\x82\x01\x02\x03\x04", 5, 0, 1, 0, "exceeds the limit of 1");
    /* the limit is per container, not a total */
    expect_ok("\x92\x92\x01\x02\x92\x03\x04", 7, 0, 2, 0, 7);
    expect_fail("\x92\x92\x01\x02\x93\x03\x04\x05", 8, 0, 2, 0, "limit");
    expect_ok("\x90", 1, 0, 1, 0, 1);

    /* array16 of 300 nils */
    unsigned char a[3 + 300];
    a[0] = 0xdc, a[1] = 0x01, a[2] = 0x2c;
    memset(a + 3, 0xc0, 300);
    expect_ok(a, sizeof a, 0, 300, 0, sizeof a);
    expect_ok(a, sizeof a, 0, 0, 0, sizeof a);
    expect_fail(a, sizeof a, 0, 299, 0, "limit");
}

static void test_arguments(void **state)
{
    (void)state;
    expect_fail(NULL, 0, 0, 0, 1, "truncated");
    expect_fail("", 0, 0, 0, 1, "truncated msgpack at offset 0");
    expect_fail(NULL, 5, 0, 0, 1, "NULL");
    /* a NULL or empty err buffer is allowed */
    assert_int_equal(mv_mpack_check("\xc1", 1, 0, 0, 0, NULL, NULL, 0), MV_EINVAL);
    assert_int_equal(mv_mpack_check("\x01", 1, 0, 0, 0, NULL, NULL, 0), MV_OK);
}

/* Whatever the pre-check accepts, msgpack-c parses to the same size; whatever it calls
 * truncated or bad, msgpack-c does not parse either. Inputs are short, so no container count
 * can make msgpack-c allocate much. */
static void test_agrees_with_msgpack_c(void **state)
{
    (void)state;
    static const unsigned char alphabet[] = {
        0x00, 0x01, 0x02, 0x7f, 0xe0, 0xff, 0xc0, 0xc1, 0xc2, 0xc3, 0x80, 0x81, 0x82,
        0x8f, 0x90, 0x91, 0x92, 0x9f, 0xa0, 0xa1, 0xa2, 0xbf, 0xc4, 0xc5, 0xc6, 0xc7,
        0xc8, 0xc9, 0xca, 0xcb, 0xcc, 0xcd, 0xce, 0xcf, 0xd0, 0xd1, 0xd2, 0xd3, 0xd4,
        0xd5, 0xd6, 0xd7, 0xd8, 0xd9, 0xda, 0xdb, 0xdc, 0xdd, 0xde, 0xdf,
    };
    uint32_t x = 2463534242u;
    size_t accepted = 0, refused = 0;
    for (int round = 0; round < 50000; round++) {
        unsigned char buf[24];
        x ^= x << 13, x ^= x >> 17, x ^= x << 5;
        size_t n = 1 + x % sizeof buf;
        for (size_t i = 0; i < n; i++) {
            x ^= x << 13, x ^= x >> 17, x ^= x << 5;
            buf[i] = (x & 3) == 0 ? (unsigned char)(x >> 8) : alphabet[(x >> 8) % N(alphabet)];
        }
        char err[MV_ERRLEN];
        size_t used = 0, off = 0;
        if (check(buf, n, MV_MPACK_MSGPACK_C_DEPTH, 0, 1, &used, err, sizeof err) == MV_OK) {
            accepted++;
            if (!msgpack_c_parses(buf, n, &off) || off != used)
                fail_msg("round %d: accepted %zu of %zu bytes, msgpack-c off %zu", round, used, n,
                         off);
        } else {
            refused++;
            if ((strstr(err, "truncated") || strstr(err, "0xc1")) && msgpack_c_parses(buf, n, &off))
                fail_msg("round %d: refused (%s) but msgpack-c parses", round, err);
        }
    }
    assert_true(accepted > 1000 && refused > 1000);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_valid_every_type),
        cmocka_unit_test(test_truncated_every_length),
        cmocka_unit_test(test_trailing),
        cmocka_unit_test(test_forged_lengths),
        cmocka_unit_test(test_never_used_byte),
        cmocka_unit_test(test_depth_limit),
        cmocka_unit_test(test_item_limit),
        cmocka_unit_test(test_arguments),
        cmocka_unit_test(test_agrees_with_msgpack_c),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

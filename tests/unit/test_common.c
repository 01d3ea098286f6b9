/* test_common.c - shared helpers in common.c: error strings and classes, mv_seterr, clocks,
 * UUIDs (format, version/variant bits, uniqueness), hex, tenant/profile and mailbox names. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "mv/common.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>

#define N(a) (sizeof(a) / sizeof((a)[0]))

static void test_strerror_and_transient(void **state)
{
    (void)state;
    for (int e = MV_OK; e <= MV_ESERVER; e++) {
        const char *s = mv_strerror((mv_err)e);
        assert_non_null(s);
        assert_true(strlen(s) > 0);
        assert_string_not_equal(s, "unknown error");
        for (int o = MV_OK; o < e; o++)
            assert_string_not_equal(s, mv_strerror((mv_err)o));
    }
    assert_string_equal(mv_strerror(MV_OK), "ok");
    assert_string_equal(mv_strerror(MV_ETIMEDOUT), "timed out");
    assert_string_equal(mv_strerror((mv_err)999), "unknown error");

    static const mv_err transient[] = {MV_ENET, MV_ETIMEDOUT, MV_EBUSY, MV_ESERVER, MV_EIO};
    static const mv_err permanent[] = {MV_OK,      MV_ERR,      MV_ENOMEM,    MV_EINVAL,
                                       MV_EPROTO,  MV_EAUTH,    MV_ENOTFOUND, MV_EEXIST,
                                       MV_ETOOBIG, MV_ECORRUPT, MV_ECANCEL};
    for (size_t i = 0; i < N(transient); i++)
        assert_true(mv_err_transient(transient[i]));
    for (size_t i = 0; i < N(permanent); i++)
        assert_false(mv_err_transient(permanent[i]));
}

static void test_seterr(void **state)
{
    (void)state;
    char err[32];
    memset(err, 'Z', sizeof err);
    assert_int_equal(mv_seterr(err, sizeof err, MV_EINVAL, "field %s: %d", "x", 42), MV_EINVAL);
    assert_string_equal(err, "field x: 42");

    /* truncates to the buffer, always NUL-terminated */
    char small[8];
    memset(small, 'Z', sizeof small);
    assert_int_equal(mv_seterr(small, sizeof small, MV_EIO, "%s", "0123456789abcdef"), MV_EIO);
    assert_string_equal(small, "0123456");

    /* no buffer: still returns the code, writes nothing */
    assert_int_equal(mv_seterr(NULL, 100, MV_ENET, "x"), MV_ENET);
    memset(small, 'Q', sizeof small);
    assert_int_equal(mv_seterr(small, 0, MV_ETOOBIG, "x"), MV_ETOOBIG);
    for (size_t i = 0; i < sizeof small; i++)
        assert_int_equal(small[i], 'Q');
    assert_int_equal(mv_seterr(err, sizeof err, MV_OK, "fine"), MV_OK);
}

static void test_clocks(void **state)
{
    (void)state;
    int64_t now = mv_now_ms();
    int64_t t = (int64_t)time(NULL) * 1000;
    assert_true(now > t - 5000 && now < t + 5000);
    int64_t m1 = mv_mono_ms();
    int64_t m2 = mv_mono_ms();
    assert_true(m1 >= 0);
    assert_true(m2 >= m1);
}

static int is_hex_lower(char c)
{
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f');
}

static void assert_uuid_format(const char *u)
{
    assert_int_equal(strlen(u), 36);
    for (int i = 0; i < 36; i++) {
        if (i == 8 || i == 13 || i == 18 || i == 23)
            assert_int_equal(u[i], '-');
        else if (!is_hex_lower(u[i]))
            fail_msg("uuid %s: bad character at %d", u, i);
    }
    assert_int_equal(u[14], '4');           /* version 4 */
    assert_non_null(strchr("89ab", u[19])); /* RFC 4122 variant */
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp((const char *)a, (const char *)b);
}

static void test_uuid(void **state)
{
    (void)state;
    enum { COUNT = 10000 };
    char(*ids)[37] = malloc(sizeof(*ids) * COUNT);
    assert_non_null(ids);
    for (int i = 0; i < COUNT; i++) {
        memset(ids[i], 'X', sizeof ids[i]);
        mv_uuid(ids[i]);
        assert_uuid_format(ids[i]);
    }
    qsort(ids, COUNT, sizeof ids[0], cmp_str);
    for (int i = 1; i < COUNT; i++)
        assert_string_not_equal(ids[i - 1], ids[i]);
    /* the random bits vary in every hex position, not just a few */
    for (int pos = 0; pos < 36; pos++) {
        if (pos == 8 || pos == 13 || pos == 14 || pos == 18 || pos == 23) continue;
        int differs = 0;
        for (int i = 1; i < COUNT && !differs; i++)
            differs = ids[i][pos] != ids[0][pos];
        if (!differs) fail_msg("uuid position %d never changes", pos);
    }
    free(ids);
}

static void test_hex(void **state)
{
    (void)state;
    char out[64];
    memset(out, 'Z', sizeof out);
    mv_hex((const unsigned char *)"", 0, out);
    assert_string_equal(out, "");
    static const unsigned char in[] = {0x00, 0x01, 0x7f, 0x80, 0xab, 0xcd, 0xef, 0xff};
    mv_hex(in, sizeof in, out);
    assert_string_equal(out, "00017f80abcdefff");
    memset(out, 'Z', sizeof out);
    mv_hex(in, 3, out);
    assert_string_equal(out, "00017f");
    assert_int_equal(out[7], 'Z'); /* writes exactly 2*len+1 bytes */
}

static void test_name_valid(void **state)
{
    (void)state;
    char max[64], over[65];
    memset(max, 'a', 63);
    max[63] = '\0';
    memset(over, 'a', 64);
    over[64] = '\0';
    static const char *good[] = {"a", "0", "t1", "acme-corp", "a.b_c-d", "9lives", "a..", "a-"};
    static const char *bad[] = {"",    "-a", ".a",  "_a",  "Acme", "a b", "a/b",
                                "a\n", "ä",  "a:b", "a@b", "A",    "\t",  "a|b"};
    for (size_t i = 0; i < N(good); i++)
        if (!mv_name_valid(good[i])) fail_msg("\"%s\" should be a valid name", good[i]);
    for (size_t i = 0; i < N(bad); i++)
        if (mv_name_valid(bad[i])) fail_msg("\"%s\" should be an invalid name", bad[i]);
    assert_true(mv_name_valid(max));
    assert_false(mv_name_valid(over));
    assert_false(mv_name_valid(NULL));
}

static void test_mailbox_valid(void **state)
{
    (void)state;
    char max[256], over[257];
    memset(max, 'm', 255);
    max[255] = '\0';
    memset(over, 'm', 256);
    over[256] = '\0';
    static const char *good[] = {"a", "alice@example.org", "Alice.Smith+tag@Example.ORG",
                                 "DOMAIN\\user", "~!#$%^&*()=?{}[]<>,;:'\"`"};
    /* common.c also refuses space and '|' (stricter than "printable ASCII" in common.h) */
    static const char *bad[] = {"",     "a/b",   "a b",         "a|b", "a\tb",
                                "a\nb", "a\x7f", "caf\xc3\xa9", "\x01"};
    for (size_t i = 0; i < N(good); i++)
        if (!mv_mailbox_valid(good[i])) fail_msg("\"%s\" should be a valid mailbox", good[i]);
    for (size_t i = 0; i < N(bad); i++)
        if (mv_mailbox_valid(bad[i])) fail_msg("\"%s\" should be an invalid mailbox", bad[i]);
    assert_true(mv_mailbox_valid(max));
    assert_false(mv_mailbox_valid(over));
    assert_false(mv_mailbox_valid(NULL));
}

static int b64(const char *in, size_t piece, char *out, size_t *outn)
{
    mv_b64dec st;
    mv_b64dec_init(&st);
    size_t total = 0, n = strlen(in);
    for (size_t i = 0; i < n; i += piece) {
        size_t k = n - i < piece ? n - i : piece, o = 0;
        if (mv_b64dec_update(&st, in + i, k, (unsigned char *)out + total, &o)) return -1;
        total += o;
    }
    *outn = total;
    out[total] = '\0';
    return mv_b64dec_final(&st);
}

static void test_b64dec(void **state)
{
    (void)state;
    /* RFC 4648 section 10 vectors, fed whole and one byte at a time */
    static const char *const enc[] = {"",         "Zg==",     "Zm8=",    "Zm9v",
                                      "Zm9vYg==", "Zm9vYmE=", "Zm9vYmFy"};
    static const char *const dec[] = {"", "f", "fo", "foo", "foob", "fooba", "foobar"};
    char out[64];
    size_t n = 0;
    for (size_t i = 0; i < sizeof enc / sizeof *enc; i++)
        for (size_t piece = 1; piece <= 9; piece += 8) {
            assert_int_equal(b64(enc[i], piece, out, &n), 0);
            assert_int_equal(n, strlen(dec[i]));
            assert_string_equal(out, dec[i]);
        }
    assert_int_equal(b64("Zm9v\r\nYmFy\n", 1, out, &n), 0); /* line breaks are skipped */
    assert_string_equal(out, "foobar");
    assert_int_equal(b64("Zm9vYmFy\xff", 100, out, &n), -1); /* no other bytes */
    assert_int_equal(b64("Zg=", 100, out, &n), -1);          /* a missing '=' */
    assert_int_equal(b64("Zg===", 100, out, &n), -1);        /* one too many */
    assert_int_equal(b64("Zg==Zg==", 100, out, &n), -1);     /* data after padding */
    assert_int_equal(b64("Z===", 100, out, &n), -1);         /* padding after one sextet */
    assert_int_equal(b64("Zm9", 100, out, &n), -1);          /* a cut group */
    assert_int_equal(b64("Zm9vY-Fy", 100, out, &n), -1);     /* base64url is not accepted */
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_strerror_and_transient),
        cmocka_unit_test(test_seterr),
        cmocka_unit_test(test_clocks),
        cmocka_unit_test(test_uuid),
        cmocka_unit_test(test_hex),
        cmocka_unit_test(test_b64dec),
        cmocka_unit_test(test_name_valid),
        cmocka_unit_test(test_mailbox_valid),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

/* test_index.c - unit tests of index segments and the header scanner (shared/src/index.c).
 *
 * Decoding is tested against hand-built msgpack documents (packed with msgpack-c, wrapped in
 * a zstd frame) so each schema violation can be produced on purpose, plus every truncation
 * and every single-byte corruption of a real encoded segment. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "mv/index.h"

#include <msgpack.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zstd.h>

/* ---- helpers ---- */

static void fill_rec(mv_index_rec *r, int i)
{
    memset(r, 0, sizeof *r);
    unsigned char md[32];
    unsigned int l;
    EVP_Digest(&i, sizeof i, md, &l, EVP_sha256(), NULL);
    for (int k = 0; k < 32; k++)
        snprintf(r->hash + 2 * k, 3, "%02x", md[k]);
    r->uid = (uint32_t)(i + 1);
    r->size = (uint64_t)i * 1000 + 7;
    r->internaldate = i % 2 ? -86400 : 1700000000 + i;
    snprintf(r->flags, sizeof r->flags, "\\Seen \\Flagged");
    snprintf(r->from, sizeof r->from, "Alice <a%d@example.com>", i);
    snprintf(r->to, sizeof r->to, "bob@example.com");
    snprintf(r->subject, sizeof r->subject, "subject \xc3\xa9 %d", i);
    snprintf(r->date, sizeof r->date, "Mon, 1 Jan 2024 00:00:%02d +0000", i % 60);
    snprintf(r->msgid, sizeof r->msgid, "<%d@example.com>", i);
}

static void rec_equal(const mv_index_rec *a, const mv_index_rec *b)
{
    assert_string_equal(a->hash, b->hash);
    assert_int_equal(a->uid, b->uid);
    assert_int_equal(a->size, b->size);
    assert_int_equal(a->internaldate, b->internaldate);
    assert_string_equal(a->flags, b->flags);
    assert_string_equal(a->from, b->from);
    assert_string_equal(a->to, b->to);
    assert_string_equal(a->subject, b->subject);
    assert_string_equal(a->date, b->date);
    assert_string_equal(a->msgid, b->msgid);
    assert_string_equal(a->id, b->id);
}

/* zstd-wrap a msgpack buffer and decode it */
static mv_err decode_mp(const msgpack_sbuffer *sb, mv_segment *s, char *err, size_t errlen)
{
    size_t cap = ZSTD_compressBound(sb->size);
    void *z = malloc(cap);
    size_t n = ZSTD_compress(z, cap, sb->data, sb->size, 1);
    assert_false(ZSTD_isError(n));
    mv_err rc = mv_segment_decode(z, n, s, err, errlen);
    free(z);
    return rc;
}

static void pk_str(msgpack_packer *pk, const char *s)
{
    msgpack_pack_str(pk, strlen(s));
    msgpack_pack_str_body(pk, s, strlen(s));
}

/* Top-level map with one record; "mut" picks a schema violation. */
enum {
    MUT_NONE,
    MUT_UID_STR,
    MUT_DATE_LONG,
    MUT_NO_RECS,
    MUT_VERSION,
    MUT_UNKNOWN_KEYS,
    MUT_HASH_BAD,
    MUT_UID_BIG,
    MUT_REC_NOT_MAP,
    MUT_NUL_IN_STR,
    MUT_FOLDER_INT
};

static void build(msgpack_sbuffer *sb, int mut)
{
    msgpack_packer pk;
    msgpack_sbuffer_init(sb);
    msgpack_packer_init(&pk, sb, msgpack_sbuffer_write);
    int extra = mut == MUT_UNKNOWN_KEYS ? 1 : 0;
    msgpack_pack_map(&pk, (mut == MUT_NO_RECS ? 5 : 6) + (size_t)extra);
    pk_str(&pk, "v");
    msgpack_pack_uint32(&pk, mut == MUT_VERSION ? 2 : 1);
    pk_str(&pk, "folder");
    if (mut == MUT_FOLDER_INT)
        msgpack_pack_int(&pk, 5);
    else
        pk_str(&pk, "INBOX");
    pk_str(&pk, "uidvalidity");
    msgpack_pack_uint32(&pk, 77);
    pk_str(&pk, "first");
    msgpack_pack_uint32(&pk, 1);
    pk_str(&pk, "last");
    msgpack_pack_uint32(&pk, 9);
    if (extra) {
        pk_str(&pk, "future");
        msgpack_pack_array(&pk, 2);
        msgpack_pack_nil(&pk);
        msgpack_pack_double(&pk, 1.5);
    }
    if (mut == MUT_NO_RECS) return;
    pk_str(&pk, "recs");
    msgpack_pack_array(&pk, 1);
    if (mut == MUT_REC_NOT_MAP) {
        msgpack_pack_true(&pk);
        return;
    }
    msgpack_pack_map(&pk, 4 + (size_t)extra);
    pk_str(&pk, "h");
    pk_str(&pk, mut == MUT_HASH_BAD
                    ? "../../etc/passwd"
                    : "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    pk_str(&pk, "uid");
    if (mut == MUT_UID_STR)
        pk_str(&pk, "12");
    else if (mut == MUT_UID_BIG)
        msgpack_pack_uint64(&pk, (uint64_t)UINT32_MAX + 1);
    else
        msgpack_pack_uint32(&pk, 12);
    pk_str(&pk, "date");
    if (mut == MUT_DATE_LONG) {
        char d[200];
        memset(d, 'x', sizeof d - 1);
        d[sizeof d - 1] = '\0';
        pk_str(&pk, d);
    } else {
        pk_str(&pk, "today");
    }
    pk_str(&pk, "subj");
    if (mut == MUT_NUL_IN_STR) {
        msgpack_pack_str(&pk, 3);
        msgpack_pack_str_body(&pk, "a\0b", 3);
    } else {
        pk_str(&pk, "hello");
    }
    if (extra) {
        pk_str(&pk, "x-new");
        msgpack_pack_map(&pk, 1);
        msgpack_pack_int(&pk, -1);
        msgpack_pack_bin(&pk, 2);
        msgpack_pack_bin_body(&pk, "ab", 2);
    }
}

/* ---- segments ---- */

static void test_roundtrip(void **state)
{
    (void)state;
    mv_segment s, d;
    char err[MV_ERRLEN];
    mv_segment_init(&s, "Archive/2024 \xc3\xa9t\xc3\xa9", 123456, 10, 4000000000u);
    for (int i = 0; i < 100; i++) {
        mv_index_rec r;
        fill_rec(&r, i);
        assert_int_equal(mv_segment_add(&s, &r), MV_OK);
    }
    /* maximal field lengths survive */
    memset(s.recs[5].subject, 'S', sizeof s.recs[5].subject - 1);
    s.recs[5].subject[sizeof s.recs[5].subject - 1] = '\0';
    memset(s.recs[5].msgid, 'M', sizeof s.recs[5].msgid - 1);
    s.recs[5].msgid[sizeof s.recs[5].msgid - 1] = '\0';
    /* source ids (Graph) are optional: some records carry one, of maximal length */
    snprintf(s.recs[3].id, sizeof s.recs[3].id, "AAMkAGI2TG93AAA=");
    memset(s.recs[4].id, 'I', sizeof s.recs[4].id - 1);
    s.recs[4].id[sizeof s.recs[4].id - 1] = '\0';
    s.recs[6].uid = UINT32_MAX;
    s.recs[6].size = UINT64_MAX;
    s.recs[6].internaldate = INT64_MIN;
    s.recs[7].internaldate = INT64_MAX;

    void *buf;
    size_t len;
    assert_int_equal(mv_segment_encode(&s, &buf, &len, err, sizeof err), MV_OK);
    assert_true(len > 0);
    assert_int_equal(mv_segment_decode(buf, len, &d, err, sizeof err), MV_OK);
    assert_string_equal(d.folder, s.folder);
    assert_int_equal(d.uidvalidity, 123456);
    assert_int_equal(d.first, 10);
    assert_int_equal(d.last, 4000000000u);
    assert_int_equal(d.n, 100);
    for (size_t i = 0; i < d.n; i++)
        rec_equal(&d.recs[i], &s.recs[i]);
    mv_segment_free(&d);
    free(buf);
    mv_segment_free(&s);
    mv_segment_free(&s); /* idempotent */
}

static void test_empty_segment(void **state)
{
    (void)state;
    mv_segment s, d;
    char err[MV_ERRLEN];
    void *buf;
    size_t len;
    mv_segment_init(&s, "", 0, 0, 0);
    assert_int_equal(mv_segment_encode(&s, &buf, &len, err, sizeof err), MV_OK);
    assert_int_equal(mv_segment_decode(buf, len, &d, err, sizeof err), MV_OK);
    assert_int_equal(d.n, 0);
    assert_string_equal(d.folder, "");
    mv_segment_free(&d);
    free(buf);
}

static void test_truncated_and_flipped(void **state)
{
    (void)state;
    mv_segment s, d;
    char err[MV_ERRLEN];
    void *buf;
    size_t len;
    mv_segment_init(&s, "INBOX", 1, 1, 3);
    for (int i = 0; i < 3; i++) {
        mv_index_rec r;
        fill_rec(&r, i);
        mv_segment_add(&s, &r);
    }
    assert_int_equal(mv_segment_encode(&s, &buf, &len, err, sizeof err), MV_OK);
    for (size_t cut = 0; cut < len; cut++) {
        err[0] = '\0';
        mv_err rc = mv_segment_decode(buf, cut, &d, err, sizeof err);
        assert_int_equal(rc, MV_ECORRUPT);
        assert_true(err[0] != '\0');
        assert_null(d.recs);
    }
    unsigned char *c = malloc(len + 1);
    for (size_t i = 0; i < len; i++) {
        memcpy(c, buf, len);
        c[i] ^= 0x41;
        if (mv_segment_decode(c, len, &d, err, sizeof err) == MV_OK) mv_segment_free(&d);
    }
    /* trailing garbage after the frame */
    memcpy(c, buf, len);
    c[len] = 0;
    assert_int_equal(mv_segment_decode(c, len + 1, &d, err, sizeof err), MV_ECORRUPT);
    free(c);
    free(buf);
    mv_segment_free(&s);
}

static void test_garbage(void **state)
{
    (void)state;
    mv_segment d;
    char err[MV_ERRLEN];
    assert_int_equal(mv_segment_decode(NULL, 0, &d, err, sizeof err), MV_ECORRUPT);
    assert_int_equal(mv_segment_decode("", 0, &d, err, sizeof err), MV_ECORRUPT);
    unsigned char junk[512];
    uint32_t x = 12345;
    for (int round = 0; round < 200; round++) {
        for (size_t i = 0; i < sizeof junk; i++) {
            x = x * 1103515245u + 12345u;
            junk[i] = (unsigned char)(x >> 16);
        }
        assert_int_equal(mv_segment_decode(junk, sizeof junk, &d, err, sizeof err), MV_ECORRUPT);
    }
    /* zstd frames around msgpack that is not a segment */
    const char *docs[] = {
        "\x01",                 /* an int */
        "\x90",                 /* empty array */
        "\x80",                 /* empty map: fields missing */
        "\xdd\xff\xff\xff\xff", /* array32 claiming 4G elements */
        "\xdf\x7f\xff\xff\xff", /* map32 claiming 2G pairs */
        "\xc1",                 /* never-used byte */
        "\x81\xa1v\x01\x00",    /* trailing byte after the map */
    };
    const size_t lens[] = {1, 1, 1, 5, 5, 1, 5};
    for (size_t i = 0; i < sizeof docs / sizeof *docs; i++) {
        msgpack_sbuffer sb = {lens[i], (char *)docs[i], 0};
        assert_int_equal(decode_mp(&sb, &d, err, sizeof err), MV_ECORRUPT);
    }
}

static void expect(int mut, mv_err want, const char *needle)
{
    msgpack_sbuffer sb;
    mv_segment d;
    char err[MV_ERRLEN] = "";
    build(&sb, mut);
    mv_err rc = decode_mp(&sb, &d, err, sizeof err);
    msgpack_sbuffer_destroy(&sb);
    if (rc != want) print_error("mutation %d: rc=%d err=%s\n", mut, rc, err);
    assert_int_equal(rc, want);
    if (needle && !strstr(err, needle)) print_error("mutation %d: err=%s\n", mut, err);
    if (needle) assert_non_null(strstr(err, needle));
    if (rc == MV_OK) {
        assert_int_equal(d.n, 1);
        assert_int_equal(d.recs[0].uid, 12);
        assert_string_equal(d.recs[0].subject, "hello");
        assert_string_equal(d.recs[0].from, "");
        mv_segment_free(&d);
    }
}

static void test_schema_checks(void **state)
{
    (void)state;
    expect(MUT_NONE, MV_OK, NULL);
    expect(MUT_UNKNOWN_KEYS, MV_OK, NULL);
    expect(MUT_UID_STR, MV_ECORRUPT, "recs[0].uid");
    expect(MUT_UID_BIG, MV_ECORRUPT, "recs[0].uid");
    expect(MUT_DATE_LONG, MV_ECORRUPT, "recs[0].date");
    expect(MUT_NO_RECS, MV_ECORRUPT, "recs");
    expect(MUT_VERSION, MV_ECORRUPT, "version");
    expect(MUT_HASH_BAD, MV_ECORRUPT, "recs[0].h");
    expect(MUT_REC_NOT_MAP, MV_ECORRUPT, "recs[0]");
    expect(MUT_NUL_IN_STR, MV_ECORRUPT, "recs[0].subj");
    expect(MUT_FOLDER_INT, MV_ECORRUPT, "folder");
}

static void test_segment_name(void **state)
{
    (void)state;
    char a[128], b[128], c[128];
    mv_segment_name("INBOX", 1700000000u, 1, 500, a, sizeof a);
    mv_segment_name("INBOX", 1700000000u, 1, 500, b, sizeof b);
    mv_segment_name("Sent", 1700000000u, 1, 500, c, sizeof c);
    assert_string_equal(a, b);
    assert_string_not_equal(a, c);
    /* sha256("INBOX") starts with the 16 hex digits below */
    unsigned char md[32];
    unsigned int l;
    char hex[17];
    EVP_Digest("INBOX", 5, md, &l, EVP_sha256(), NULL);
    for (int i = 0; i < 8; i++)
        snprintf(hex + 2 * i, 3, "%02x", md[i]);
    char want[128];
    snprintf(want, sizeof want, "%s-1700000000-1-500.seg", hex);
    assert_string_equal(a, want);
    mv_segment_name("INBOX", UINT32_MAX, UINT32_MAX, UINT32_MAX, a, sizeof a);
    assert_non_null(strstr(a, "-4294967295-4294967295-4294967295.seg"));
}

/* ---- header scanner ---- */

static const char MSG[] = "Return-Path: <x@example.com>\r\n"
                          "Received: from mx (mx [10.0.0.1])\r\n"
                          "\tby host; Mon, 1 Jan 2024 00:00:00 +0000\r\n"
                          "FROM: \"Alice\" <alice@example.com>\r\n"
                          "To: bob@example.com,\r\n"
                          " carol@example.com\r\n"
                          "Subject: a folded\r\n"
                          "\tsubject line   \r\n"
                          "Subject: second subject is ignored\r\n"
                          "Date:Mon, 1 Jan 2024 00:00:00 +0000\r\n"
                          "message-id:   <id@example.com>\r\n"
                          "X-Long: \r\n"
                          "\r\n"
                          "From: body@example.com\r\n"
                          "Subject: body\r\n";

static void scan_once(const char *m, size_t n, mv_index_rec *r)
{
    mv_hdrscan *h = mv_hdrscan_new();
    memset(r, 0x55, sizeof *r);
    mv_hdrscan_feed(h, m, n);
    mv_hdrscan_result(h, r);
    mv_hdrscan_free(h);
}

static void hdr_equal(const mv_index_rec *a, const mv_index_rec *b)
{
    assert_string_equal(a->from, b->from);
    assert_string_equal(a->to, b->to);
    assert_string_equal(a->subject, b->subject);
    assert_string_equal(a->date, b->date);
    assert_string_equal(a->msgid, b->msgid);
}

static void test_hdrscan_basic(void **state)
{
    (void)state;
    mv_index_rec r;
    scan_once(MSG, sizeof MSG - 1, &r);
    assert_string_equal(r.from, "\"Alice\" <alice@example.com>");
    assert_string_equal(r.to, "bob@example.com, carol@example.com");
    assert_string_equal(r.subject, "a folded\tsubject line");
    assert_string_equal(r.date, "Mon, 1 Jan 2024 00:00:00 +0000");
    assert_string_equal(r.msgid, "<id@example.com>");
}

static void test_hdrscan_splits(void **state)
{
    (void)state;
    const size_t n = sizeof MSG - 1;
    mv_index_rec one, r;
    scan_once(MSG, n, &one);
    mv_hdrscan *h = mv_hdrscan_new();
    for (size_t cut = 0; cut <= n; cut++) {
        mv_hdrscan_reset(h);
        mv_hdrscan_feed(h, MSG, cut);
        mv_hdrscan_feed(h, MSG + cut, n - cut);
        memset(&r, 0x55, sizeof r);
        mv_hdrscan_result(h, &r);
        hdr_equal(&r, &one);
    }
    /* byte by byte, with empty feeds in between */
    mv_hdrscan_reset(h);
    for (size_t i = 0; i < n; i++) {
        mv_hdrscan_feed(h, MSG + i, 1);
        mv_hdrscan_feed(h, MSG + i, 0);
    }
    mv_hdrscan_result(h, &r);
    hdr_equal(&r, &one);
    mv_hdrscan_free(h);
}

static void test_hdrscan_lf_only(void **state)
{
    (void)state;
    char lf[sizeof MSG];
    size_t w = 0;
    for (size_t i = 0; MSG[i]; i++)
        if (MSG[i] != '\r') lf[w++] = MSG[i];
    mv_index_rec a, b;
    scan_once(MSG, sizeof MSG - 1, &a);
    scan_once(lf, w, &b);
    hdr_equal(&a, &b);
    /* split LF-only input at every point too */
    mv_hdrscan *h = mv_hdrscan_new();
    for (size_t cut = 0; cut <= w; cut++) {
        mv_hdrscan_reset(h);
        mv_hdrscan_feed(h, lf, cut);
        mv_hdrscan_feed(h, lf + cut, w - cut);
        mv_hdrscan_result(h, &b);
        hdr_equal(&a, &b);
    }
    mv_hdrscan_free(h);
}

static void test_hdrscan_body_and_edges(void **state)
{
    (void)state;
    mv_index_rec r;
    /* no header at all: body From: is not captured */
    const char *m1 = "\r\nFrom: body@example.com\r\n";
    scan_once(m1, strlen(m1), &r);
    assert_string_equal(r.from, "");
    const char *m2 = "\nFrom: body@example.com\n";
    scan_once(m2, strlen(m2), &r);
    assert_string_equal(r.from, "");
    /* a bare CR inside a value is kept; CR at the end of the header is dropped */
    const char *m3 = "Subject: a\rb\r\nTo: x\r\n";
    scan_once(m3, strlen(m3), &r);
    assert_string_equal(r.subject, "a\rb");
    assert_string_equal(r.to, "x");
    /* continuation of an ignored header does not leak into the previous field */
    const char *m4 = "From: f\r\nX-Other: o\r\n continued\r\n\r\n";
    scan_once(m4, strlen(m4), &r);
    assert_string_equal(r.from, "f");
    /* empty value then continuation */
    const char *m5 = "Subject:\r\n   starts late\r\n\r\n";
    scan_once(m5, strlen(m5), &r);
    assert_string_equal(r.subject, "starts late");
    /* whitespace before the colon (obsolete syntax) and mbox-style first line */
    const char *m6 = "From user@host Mon Jan  1 00:00:00 2024\nSubject : spaced\n\n";
    scan_once(m6, strlen(m6), &r);
    assert_string_equal(r.subject, "spaced");
    assert_string_equal(r.from, "");
    /* a long, unmatched name must not match by prefix */
    const char *m7 = "Subjectxxxxxxxxxxxxxxxxxxxxxxxx: no\nTo-: no\nDate: yes\n\n";
    scan_once(m7, strlen(m7), &r);
    assert_string_equal(r.subject, "");
    assert_string_equal(r.to, "");
    assert_string_equal(r.date, "yes");
    /* NULL-safe */
    mv_hdrscan_feed(NULL, "x", 1);
    mv_hdrscan_free(NULL);
}

static void test_hdrscan_truncation(void **state)
{
    (void)state;
    size_t n = 8000;
    char *m = malloc(n + 64);
    size_t w = (size_t)sprintf(m, "Subject: ");
    for (size_t i = 0; i < 5000; i++)
        m[w++] = (char)('a' + i % 26);
    w += (size_t)sprintf(m + w, "\r\nDate: ");
    for (size_t i = 0; i < 500; i++)
        m[w++] = '9';
    /* a UTF-8 sequence straddling the Message-ID cut (511 bytes kept) */
    w += (size_t)sprintf(m + w, "\r\nMessage-ID: ");
    for (size_t i = 0; i < 510; i++)
        m[w++] = 'm';
    m[w++] = '\xc3';
    m[w++] = '\xa9';
    w += (size_t)sprintf(m + w, "\r\n\r\n");
    mv_index_rec r;
    scan_once(m, w, &r);
    assert_int_equal(strlen(r.subject), MV_HDR_MAX - 1);
    assert_int_equal(r.subject[0], 'a');
    assert_int_equal(strlen(r.date), sizeof r.date - 1);
    assert_int_equal(strlen(r.msgid), 510); /* partial "\xc3" dropped */
    free(m);
}

static void test_hdrscan_limit(void **state)
{
    (void)state;
    /* a header block longer than 256 KiB: fields after the limit are not captured */
    size_t n = 300 * 1024;
    char *m = malloc(n + 128);
    size_t w = (size_t)sprintf(m, "From: early\r\n");
    while (w < n) {
        memcpy(m + w, "X-Pad: pppppppppppppppppppppppppppppppppppppppppppppppppppp\r\n", 60);
        w += 60;
    }
    w += (size_t)sprintf(m + w, "Subject: late\r\n\r\n");
    mv_index_rec r;
    scan_once(m, w, &r);
    assert_string_equal(r.from, "early");
    assert_string_equal(r.subject, "");
    free(m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_roundtrip),
        cmocka_unit_test(test_empty_segment),
        cmocka_unit_test(test_truncated_and_flipped),
        cmocka_unit_test(test_garbage),
        cmocka_unit_test(test_schema_checks),
        cmocka_unit_test(test_segment_name),
        cmocka_unit_test(test_hdrscan_basic),
        cmocka_unit_test(test_hdrscan_splits),
        cmocka_unit_test(test_hdrscan_lf_only),
        cmocka_unit_test(test_hdrscan_body_and_edges),
        cmocka_unit_test(test_hdrscan_truncation),
        cmocka_unit_test(test_hdrscan_limit),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

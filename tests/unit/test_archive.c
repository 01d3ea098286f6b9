/* test_archive.c - listing a mailbox across index segments: every record once, repeats from an
 * older UIDVALIDITY generation dropped, records only the older generation has kept. */
#define _XOPEN_SOURCE 700 /* nftw */
#include "mv/archive.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int rm_cb(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb;
    (void)flag;
    (void)ftw;
    return remove(path);
}

static void put_segment(mv_store *s, const char *folder, uint32_t uv, uint32_t first, uint32_t last,
                        const char *const *hashes, size_t n)
{
    mv_segment seg;
    mv_segment_init(&seg, folder, uv, first, last);
    for (size_t i = 0; i < n; i++) {
        mv_index_rec r;
        memset(&r, 0, sizeof r);
        memset(r.hash, hashes[i][0], 64);
        r.uid = first + (uint32_t)i;
        snprintf(r.subject, sizeof r.subject, "%s", hashes[i]);
        assert_int_equal(mv_segment_add(&seg, &r), MV_OK);
    }
    void *buf = NULL;
    size_t len = 0;
    char err[MV_ERRLEN], name[128];
    assert_int_equal(mv_segment_encode(&seg, &buf, &len, err, sizeof err), MV_OK);
    mv_segment_name(folder, uv, first, last, name, sizeof name);
    assert_int_equal(mv_store_segment_put(s, "t1", "m@x", name, buf, len, err, sizeof err), MV_OK);
    free(buf);
    mv_segment_free(&seg);
}

typedef struct seen {
    char subjects[32][16];
    uint32_t uv[32];
    int n;
    int stop_after;
} seen;

static int collect(void *ud, const mv_segment *seg, const mv_index_rec *r)
{
    seen *x = ud;
    snprintf(x->subjects[x->n], sizeof x->subjects[x->n], "%s", r->subject);
    x->uv[x->n] = seg->uidvalidity;
    x->n++;
    return x->stop_after && x->n >= x->stop_after;
}

static int count(const seen *x, const char *subj, uint32_t uv)
{
    int c = 0;
    for (int i = 0; i < x->n; i++)
        if (strcmp(x->subjects[i], subj) == 0 && (!uv || x->uv[i] == uv)) c++;
    return c;
}

static void test_generations(void **state)
{
    (void)state;
    char dir[] = "/tmp/mv-archive-XXXXXX", err[MV_ERRLEN];
    assert_non_null(mkdtemp(dir));
    mv_store *s = NULL;
    assert_int_equal(mv_store_open(dir, 0, 3, &s, err, sizeof err), MV_OK);

    /* INBOX generation 7: a, b, c (c deleted on the server later); generation 9: a, b, d.
     * Sent: one generation with a (same bytes as INBOX's a: another folder, kept). */
    const char *const g7a[] = {"a", "b"}, *const g7b[] = {"c"}, *const g9[] = {"a", "b", "d"};
    const char *const sent[] = {"a"};
    put_segment(s, "INBOX", 7, 1, 2, g7a, 2);
    put_segment(s, "INBOX", 7, 3, 3, g7b, 1);
    put_segment(s, "INBOX", 9, 1, 3, g9, 3);
    put_segment(s, "Sent", 5, 1, 1, sent, 1);

    seen x = {0};
    assert_int_equal(mv_archive_list(s, "t1", "m@x", collect, &x, err, sizeof err), MV_OK);
    assert_int_equal(x.n, 5);
    assert_int_equal(count(&x, "a", 9), 1); /* INBOX a, newest generation only */
    assert_int_equal(count(&x, "a", 5), 1); /* Sent a is another folder */
    assert_int_equal(count(&x, "a", 7), 0);
    assert_int_equal(count(&x, "b", 9), 1);
    assert_int_equal(count(&x, "c", 7), 1); /* only in the old generation: kept */
    assert_int_equal(count(&x, "d", 9), 1);

    seen y = {.stop_after = 2};
    assert_int_equal(mv_archive_list(s, "t1", "m@x", collect, &y, err, sizeof err), MV_ECANCEL);
    assert_int_equal(y.n, 2);

    seen z = {0}; /* a mailbox without segments lists nothing */
    assert_int_equal(mv_archive_list(s, "t1", "nobody", collect, &z, err, sizeof err), MV_OK);
    assert_int_equal(z.n, 0);

    /* a damaged segment is an error naming it, not a silent gap */
    char path[512], name[128];
    mv_segment_name("Sent", 5, 1, 1, name, sizeof name);
    snprintf(path, sizeof path, "%s/t1/mailboxes/m@x/index/%s", dir, name);
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    fputs("not a segment", f);
    fclose(f);
    seen w = {0};
    assert_int_not_equal(mv_archive_list(s, "t1", "m@x", collect, &w, err, sizeof err), MV_OK);
    assert_non_null(strstr(err, name));

    mv_store_close(s);
    nftw(dir, rm_cb, 16, FTW_DEPTH | FTW_PHYS);
}

/* cursor-source batch: records with ids; hash byte = first char of the id's tag */
static void put_batch(mv_store *s, const char *folder_id, uint32_t gen, uint64_t seq,
                      const char *const *tags, size_t n)
{
    mv_segment seg;
    mv_segment_init(&seg, "Inbox", gen, 0, 0);
    for (size_t i = 0; i < n; i++) {
        mv_index_rec r;
        memset(&r, 0, sizeof r);
        memset(r.hash, tags[i][1], 64); /* tags like "A1": id A, content 1 */
        snprintf(r.id, sizeof r.id, "id-%c", tags[i][0]);
        snprintf(r.subject, sizeof r.subject, "%s", tags[i]);
        assert_int_equal(mv_segment_add(&seg, &r), MV_OK);
    }
    void *buf = NULL;
    size_t len = 0;
    char err[MV_ERRLEN], name[128];
    assert_int_equal(mv_segment_encode(&seg, &buf, &len, err, sizeof err), MV_OK);
    mv_segment_name_seq(folder_id, gen, seq, name, sizeof name);
    assert_int_equal(mv_store_segment_put(s, "t1", "g@x", name, buf, len, err, sizeof err), MV_OK);
    free(buf);
    mv_segment_free(&seg);
}

static void test_cursor_batches(void **state)
{
    (void)state;
    char dir[] = "/tmp/mv-archive-XXXXXX", err[MV_ERRLEN];
    assert_non_null(mkdtemp(dir));
    mv_store *s = NULL;
    assert_int_equal(mv_store_open(dir, 0, 3, &s, err, sizeof err), MV_OK);
    /* generation 0: batch 1 has A and B; batch 2 has A again (flags changed: same bytes) and
     * D; batch 10 (sorts after 2 numerically) has B again. Generation 1 (sync state expired,
     * restarted): A and E. Expected: A once (from generation 1), B once, D once (only in the
     * old generation, kept), E once. */
    const char *const b1[] = {"A1", "B2"}, *const b2[] = {"A1", "D4"}, *const b10[] = {"B2"};
    const char *const g1[] = {"A1", "E5"};
    put_batch(s, "folder-1", 0, 1, b1, 2);
    put_batch(s, "folder-1", 0, 2, b2, 2);
    put_batch(s, "folder-1", 0, 10, b10, 1);
    put_batch(s, "folder-1", 1, 1, g1, 2);
    seen x = {0};
    assert_int_equal(mv_archive_list(s, "t1", "g@x", collect, &x, err, sizeof err), MV_OK);
    assert_int_equal(x.n, 4);
    assert_int_equal(count(&x, "A1", 1), 1);
    assert_int_equal(count(&x, "B2", 0), 1);
    assert_int_equal(count(&x, "D4", 0), 1);
    assert_int_equal(count(&x, "E5", 1), 1);
    mv_store_close(s);
    nftw(dir, rm_cb, 16, FTW_DEPTH | FTW_PHYS);
}

int main(void)
{
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_generations),
                                       cmocka_unit_test(test_cursor_batches)};
    return cmocka_run_group_tests(tests, NULL, NULL);
}

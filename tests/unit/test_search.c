/* test_search.c - index searches: folder subtrees, substrings in any case, received-time
 * ranges from INTERNALDATE or the Date header, strict dates. */
#include "mv/search.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <stdio.h>
#include <string.h>

static void rec(mv_index_rec *r, const char *from, const char *subject, int64_t idate,
                const char *date)
{
    memset(r, 0, sizeof *r);
    snprintf(r->from, sizeof r->from, "%s", from);
    snprintf(r->to, sizeof r->to, "%s", "Team <team@corp.example>");
    snprintf(r->subject, sizeof r->subject, "%s", subject);
    r->internaldate = idate;
    snprintf(r->date, sizeof r->date, "%s", date);
}

static void test_dates(void **state)
{
    (void)state;
    char err[MV_ERRLEN];
    int64_t ms = 0;
    assert_int_equal(mv_search_date("1970-01-01", &ms, err, sizeof err), MV_OK);
    assert_int_equal(ms, 0);
    assert_int_equal(mv_search_date("2024-02-29", &ms, err, sizeof err), MV_OK);
    assert_int_equal(ms, 1709164800000LL);
    assert_int_equal(mv_search_date("2026-12-31", &ms, err, sizeof err), MV_OK);
    assert_int_equal(ms, 1798675200000LL);
    static const char *const bad[] = {"2023-02-29",  "2024-13-01", "2024-1-01",  "24-01-01",
                                      "2024-01-01x", "",           "1969-12-31", "2024/01/01"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++)
        assert_int_equal(mv_search_date(bad[i], &ms, err, sizeof err), MV_EINVAL);
}

static void test_match(void **state)
{
    (void)state;
    mv_search q;
    memset(&q, 0, sizeof q);
    mv_index_rec a, b, c;
    rec(&a, "Ann Example <ann@corp.example>", "Quarterly Report Q3", 1709164800 + 3600, "");
    rec(&b, "bob@else.example", "lunch?", 0, "Fri, 01 Mar 2024 12:00:00 +0000");
    rec(&c, "cy@else.example", "no date at all", 0, "");
    assert_int_equal(mv_search_any(&q), 0);
    assert_true(mv_search_match(&q, "Inbox", &a) && mv_search_match(&q, "x", &c));

    snprintf(q.folder, sizeof q.folder, "Inbox");
    assert_true(mv_search_match(&q, "Inbox", &a));
    assert_true(mv_search_match(&q, "Inbox/Projects", &a));
    assert_false(mv_search_match(&q, "Inbox2", &a)); /* a sibling is not a subfolder */
    assert_false(mv_search_match(&q, "Sent", &a));
    q.folder[0] = '\0';

    snprintf(q.subject, sizeof q.subject, "REPORT");
    assert_true(mv_search_match(&q, "Inbox", &a));
    assert_false(mv_search_match(&q, "Inbox", &b));
    q.subject[0] = '\0';
    snprintf(q.from, sizeof q.from, "@CORP.example");
    assert_true(mv_search_match(&q, "Inbox", &a));
    assert_false(mv_search_match(&q, "Inbox", &b));
    q.from[0] = '\0';

    /* 2024-02-29 .. 2024-03-01 (exclusive): a by INTERNALDATE, b by its Date header (Mar 1) */
    assert_int_equal(mv_search_rec_time(&b), 1709294400000LL);
    char err[MV_ERRLEN];
    assert_int_equal(mv_search_date("2024-02-29", &q.after_ms, err, sizeof err), MV_OK);
    assert_int_equal(mv_search_date("2024-03-01", &q.before_ms, err, sizeof err), MV_OK);
    assert_true(mv_search_match(&q, "Inbox", &a));
    assert_false(mv_search_match(&q, "Inbox", &b)); /* before is exclusive */
    assert_false(mv_search_match(&q, "Inbox", &c)); /* no time: never in a range */
    q.before_ms = 0;
    assert_true(mv_search_match(&q, "Inbox", &b));
    assert_int_equal(mv_search_any(&q), 1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_dates),
        cmocka_unit_test(test_match),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

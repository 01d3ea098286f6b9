/* test_cron.c - schedules: cron parsing, next slots in time zones (with DST changes), intervals,
 * coalescing of missed slots. Expected instants were worked out by hand from the zones' rules
 * (Europe/Berlin: CET +1, CEST +2 from the last Sunday of March 01:00 UTC to the last Sunday of
 * October 01:00 UTC; Asia/Kolkata +5:30 all year). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "mv/cron.h"

/* 2026-01-05 00:00:00 UTC, a Monday */
#define JAN5 1767571200000LL
#define MIN 60000LL
#define HOUR 3600000LL
#define DAY 86400000LL

static mv_schedule cron(const char *expr, const char *tz)
{
    mv_schedule s;
    char err[MV_ERRLEN];
    mv_err rc = mv_cron_parse(expr, tz, &s, err, sizeof err);
    if (rc) fail_msg("%s: %s", expr, err);
    return s;
}

static void bad(const char *expr, const char *tz, const char *needle)
{
    mv_schedule s;
    char err[MV_ERRLEN] = "";
    assert_int_equal(mv_cron_parse(expr, tz, &s, err, sizeof err), MV_EINVAL);
    if (!strstr(err, needle)) fail_msg("error \"%s\" lacks \"%s\"", err, needle);
}

static void test_parse(void **state)
{
    (void)state;
    mv_schedule s = cron("*/15 2,14 1-7 * 1-5", NULL);
    assert_int_equal(s.kind, MV_SCHED_CRON);
    assert_true(s.minute == ((1ULL << 0) | (1ULL << 15) | (1ULL << 30) | (1ULL << 45)));
    assert_true(s.hour == ((1u << 2) | (1u << 14)));
    assert_true(s.dom == 0xfeu);
    assert_true(s.month == 0x1ffeu);
    assert_true(s.dow == 0x3eu);
    assert_string_equal(s.tz, "UTC");
    s = cron("5/20 * * * 7", "Europe/Berlin"); /* N/S runs to the end; 7 is Sunday */
    assert_true(s.minute == ((1ULL << 5) | (1ULL << 25) | (1ULL << 45)));
    assert_true(s.dow == 1u);
    bad("* * * *", NULL, "needs 5 fields");
    bad("* * * * * *", NULL, "more than 5 fields");
    bad("60 * * * *", NULL, "cron minute: \"60\" is outside 0-59");
    bad("* 5-2 * * *", NULL, "runs backwards");
    bad("* * 0 * *", NULL, "day of month");
    bad("* * * 13 *", NULL, "month");
    bad("*/0 * * * *", NULL, "outside");
    bad("a * * * *", NULL, "is not a list");
    bad("1,,2 * * * *", NULL, "is not a list");
    bad("* * * * *", "Mars/Olympus", "timezone: \"Mars/Olympus\"");
    bad("* * * * *", "../../etc/passwd", "timezone");
}

static void test_next(void **state)
{
    (void)state;
    mv_schedule s = cron("30 2 * * *", NULL);
    assert_int_equal(mv_schedule_next(&s, JAN5), JAN5 + 2 * HOUR + 30 * MIN);
    assert_int_equal(mv_schedule_next(&s, JAN5 + 2 * HOUR + 30 * MIN),
                     JAN5 + DAY + 2 * HOUR + 30 * MIN);
    /* weekdays only: from Friday 2026-01-09 03:00 the next is Monday the 12th */
    s = cron("0 3 * * 1-5", NULL);
    assert_int_equal(mv_schedule_next(&s, JAN5 + 4 * DAY + 3 * HOUR), JAN5 + 7 * DAY + 3 * HOUR);
    /* both day fields restricted: either matches (the 1st, or any Sunday) */
    s = cron("0 0 1 * 0", NULL);
    assert_int_equal(mv_schedule_next(&s, JAN5), JAN5 + 6 * DAY); /* Sunday 2026-01-11 */
    assert_int_equal(mv_schedule_next(&s, JAN5 + 26 * DAY), JAN5 + 27 * DAY); /* Feb 1 */
    /* a zone: 02:30 in Berlin is 01:30 UTC in winter */
    s = cron("30 2 * * *", "Europe/Berlin");
    assert_int_equal(mv_schedule_next(&s, JAN5), JAN5 + 1 * HOUR + 30 * MIN);
    /* a zone with half hours: 09:00 in Kolkata is 03:30 UTC */
    s = cron("0 9 * * *", "Asia/Kolkata");
    assert_int_equal(mv_schedule_next(&s, JAN5), JAN5 + 3 * HOUR + 30 * MIN);
    /* February 29th: the next one after 2026 is in 2028 */
    s = cron("0 0 29 2 *", NULL);
    assert_int_equal(mv_schedule_next(&s, JAN5), 1835395200000LL); /* 2028-02-29 00:00 UTC */
    /* a date that never comes */
    s = cron("0 0 31 2 *", NULL);
    assert_int_equal(mv_schedule_next(&s, JAN5), -1);
}

static void test_dst(void **state)
{
    (void)state;
    /* 2026-03-29: Berlin springs forward at 01:00 UTC (02:00 -> 03:00 local); 02:30 does not
     * exist that day, so the run after 2026-03-28's is 2026-03-30 02:30 CEST (00:30 UTC) */
    mv_schedule s = cron("30 2 * * *", "Europe/Berlin");
    int64_t mar28 = 1774656000000LL; /* 2026-03-28 00:00 UTC */
    int64_t first = mv_schedule_next(&s, mar28);
    assert_int_equal(first, mar28 + 1 * HOUR + 30 * MIN);
    assert_int_equal(mv_schedule_next(&s, first), mar28 + 2 * DAY + 30 * MIN);
    /* 2026-10-25: back at 01:00 UTC (03:00 CEST -> 02:00 CET); 02:30 local happens twice,
     * at 00:30 UTC and 01:30 UTC, and runs once: the first */
    int64_t oct25 = 1792886400000LL; /* 2026-10-25 00:00 UTC */
    int64_t a = mv_schedule_next(&s, oct25 - HOUR);
    assert_int_equal(a, oct25 + 30 * MIN);
    assert_int_equal(mv_schedule_next(&s, a), oct25 + DAY + HOUR + 30 * MIN);
}

static void test_every_and_due(void **state)
{
    (void)state;
    mv_schedule s;
    char err[MV_ERRLEN];
    assert_int_equal(mv_every_parse("6h", &s, err, sizeof err), MV_OK);
    assert_int_equal(s.every_ms, 6 * HOUR);
    assert_int_equal(mv_schedule_next(&s, JAN5), JAN5 + 6 * HOUR);
    assert_int_equal(mv_schedule_due(&s, JAN5, JAN5 + 5 * HOUR), -1);
    /* slots missed are coalesced into the latest, the cadence kept */
    assert_int_equal(mv_schedule_due(&s, JAN5, JAN5 + 20 * HOUR), JAN5 + 18 * HOUR);
    assert_int_equal(mv_every_parse("90s", &s, err, sizeof err), MV_OK);
    assert_int_equal(s.every_ms, 90000);
    assert_int_equal(mv_every_parse("0m", &s, err, sizeof err), MV_EINVAL);
    assert_int_equal(mv_every_parse("367d", &s, err, sizeof err), MV_EINVAL);
    assert_int_equal(mv_every_parse("5 h", &s, err, sizeof err), MV_EINVAL);
    assert_int_equal(mv_every_parse("h", &s, err, sizeof err), MV_EINVAL);
    assert_non_null(strstr(err, "unit s, m, h or d"));
    /* cron: the latest due minute */
    s = cron("*/10 * * * *", NULL);
    assert_int_equal(mv_schedule_due(&s, JAN5, JAN5 + 9 * MIN), -1);
    assert_int_equal(mv_schedule_due(&s, JAN5, JAN5 + 35 * MIN), JAN5 + 30 * MIN);
    assert_int_equal(mv_schedule_due(&s, JAN5, JAN5 + 30 * MIN), JAN5 + 30 * MIN);
    /* the process's own TZ is left as it was */
    setenv("TZ", "America/New_York", 1);
    s = cron("0 12 * * *", "Asia/Tokyo");
    assert_int_equal(mv_schedule_next(&s, JAN5), JAN5 + 3 * HOUR);
    assert_string_equal(getenv("TZ"), "America/New_York");
    unsetenv("TZ");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse),
        cmocka_unit_test(test_next),
        cmocka_unit_test(test_dst),
        cmocka_unit_test(test_every_and_due),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

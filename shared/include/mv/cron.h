/* cron.h - when a profile runs by itself: a cron expression in a time zone, or an interval.
 *
 *   {"cron": "30 2 * * 1-5", "timezone": "Europe/Berlin"}   02:30 local time, Monday..Friday
 *   {"every": "6h"}                                          every 6 hours (s, m, h, d)
 *
 * Cron fields: minute 0-59, hour 0-23, day of month 1-31, month 1-12, day of week 0-7 (0 and 7
 * are Sunday); each a list of "*", "N", "N-M", with an optional "/STEP". As in Vixie cron, when
 * both day fields are restricted a day matches either. Times are whole minutes; the time zone
 * is an IANA name from the system's tz database (default UTC). In a DST gap a time that does
 * not exist is not run that day; in the repeated hour it runs once (the first).
 *
 * A "slot" is the instant a schedule is due (Unix ms). The scheduler records the last slot it
 * fired per profile and fires the next one when it has passed; slots missed while no scheduler
 * ran are coalesced into one run (the latest). */
#ifndef MV_CRON_H
#define MV_CRON_H

#include "mv/common.h"

#include <stdint.h>

typedef struct mv_schedule {
    int kind; /* 0 none, MV_SCHED_CRON, MV_SCHED_EVERY */
    /* cron: bit sets of allowed values */
    uint64_t minute;        /* bits 0..59 */
    uint32_t hour;          /* bits 0..23 */
    uint32_t dom;           /* bits 1..31 */
    uint16_t month;         /* bits 1..12 */
    uint8_t dow;            /* bits 0..6 (7 folded into 0) */
    int dom_star, dow_star; /* the field was "*" (for the either-day rule) */
    char expr[128];         /* as given */
    char tz[64];            /* IANA zone, "UTC" by default */
    int64_t every_ms;       /* every: the interval */
    char every_text[16];    /* as given, e.g. "6h" */
} mv_schedule;

enum { MV_SCHED_NONE = 0, MV_SCHED_CRON = 1, MV_SCHED_EVERY = 2 };

/* Parse a cron expression (5 fields) in time zone tz (NULL or "" = UTC). MV_EINVAL with the
 * field and the reason in err. */
mv_err mv_cron_parse(const char *expr, const char *tz, mv_schedule *s, char *err, size_t errlen);
/* Parse an interval: a positive number with unit s, m, h or d (at least 1 s, at most 366 d). */
mv_err mv_every_parse(const char *text, mv_schedule *s, char *err, size_t errlen);

/* The first slot strictly after after_ms (cron: a whole minute in the zone; every:
 * after_ms + interval). -1 if none within 5 years. */
int64_t mv_schedule_next(const mv_schedule *s, int64_t after_ms);
/* The latest slot in (after_ms, now_ms], or -1 if none is due yet. */
int64_t mv_schedule_due(const mv_schedule *s, int64_t after_ms, int64_t now_ms);

#endif

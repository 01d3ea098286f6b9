/* cron.c - schedules: cron expressions in a time zone, intervals. See cron.h.
 *
 * Local time comes from the C library (TZ + localtime_r): the zone is switched for the span of
 * one computation under a mutex and restored, so this is for the scheduler's loop and the CLI,
 * not for hot paths. A zone name is checked against the tz database on disk first, since the
 * C library quietly falls back to UTC for names it does not know. */
#include "mv/cron.h"

#include <ctype.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#define ZONEINFO "/usr/share/zoneinfo/"
#define SEARCH_MS (5LL * 366 * 86400 * 1000)

static pthread_mutex_t tz_lock = PTHREAD_MUTEX_INITIALIZER;

/* One field: a list of "*" | "N" | "N-M", each with an optional "/STEP", into bits lo..hi. */
static mv_err parse_field(const char *text, int lo, int hi, const char *name, uint64_t *bits,
                          int *star, char *err, size_t errlen)
{
    *bits = 0;
    *star = strcmp(text, "*") == 0;
    const char *p = text;
    for (;;) {
        int a = lo, b = hi, step = 1, single = 0;
        if (*p == '*') {
            p++;
        } else if (isdigit((unsigned char)*p)) {
            char *end;
            long v = strtol(p, &end, 10);
            if (v < lo || v > hi) goto range;
            a = b = (int)v;
            single = 1;
            p = end;
            if (*p == '-') {
                if (!isdigit((unsigned char)p[1])) goto syntax;
                v = strtol(p + 1, &end, 10);
                if (v < lo || v > hi) goto range;
                if (v < a)
                    return mv_seterr(err, errlen, MV_EINVAL, "cron %s: range %d-%ld runs backwards",
                                     name, a, v);
                b = (int)v;
                single = 0;
                p = end;
            }
        } else {
            goto syntax;
        }
        if (*p == '/') {
            char *end;
            if (!isdigit((unsigned char)p[1])) goto syntax;
            long v = strtol(p + 1, &end, 10);
            if (v < 1 || v > hi) goto range;
            step = (int)v;
            p = end;
            if (single) b = hi; /* "N/S": from N to the end */
        }
        for (int v = a; v <= b; v += step)
            *bits |= 1ULL << v;
        if (*p == '\0') return MV_OK;
        if (*p != ',') goto syntax;
        p++;
    }
syntax:
    return mv_seterr(err, errlen, MV_EINVAL,
                     "cron %s: \"%s\" is not a list of *, N, N-M with optional /STEP", name, text);
range:
    return mv_seterr(err, errlen, MV_EINVAL, "cron %s: \"%s\" is outside %d-%d", name, text, lo,
                     hi);
}

static int tz_valid(const char *tz)
{
    if (!strcmp(tz, "UTC")) return 1;
    size_t n = strlen(tz);
    if (n == 0 || n >= 64 || tz[0] == '/' || strstr(tz, "..")) return 0;
    for (const char *c = tz; *c; c++)
        if (!(isalnum((unsigned char)*c) || *c == '/' || *c == '_' || *c == '-' || *c == '+'))
            return 0;
    char path[128];
    snprintf(path, sizeof path, ZONEINFO "%s", tz);
    struct stat st;
    return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

mv_err mv_cron_parse(const char *expr, const char *tz, mv_schedule *s, char *err, size_t errlen)
{
    memset(s, 0, sizeof *s);
    if (!expr || strlen(expr) >= sizeof s->expr)
        return mv_seterr(err, errlen, MV_EINVAL, "cron: missing or longer than %zu bytes",
                         sizeof s->expr - 1);
    snprintf(s->tz, sizeof s->tz, "%s", tz && *tz ? tz : "UTC");
    if (!tz_valid(s->tz))
        return mv_seterr(err, errlen, MV_EINVAL,
                         "timezone: \"%s\" is not a zone of the tz database (e.g. Europe/Berlin, "
                         "America/New_York, UTC)",
                         s->tz);
    snprintf(s->expr, sizeof s->expr, "%s", expr);
    char buf[128], *f[6];
    snprintf(buf, sizeof buf, "%s", expr);
    int n = 0;
    for (char *tok = strtok(buf, " \t"); tok; tok = strtok(NULL, " \t")) {
        if (n == 5)
            return mv_seterr(err, errlen, MV_EINVAL,
                             "cron: \"%s\" has more than 5 fields (minute hour day month weekday)",
                             expr);
        f[n++] = tok;
    }
    if (n != 5)
        return mv_seterr(err, errlen, MV_EINVAL,
                         "cron: \"%s\" needs 5 fields (minute hour day month weekday)", expr);
    uint64_t b;
    int star;
    mv_err rc;
    if ((rc = parse_field(f[0], 0, 59, "minute", &b, &star, err, errlen))) return rc;
    s->minute = b;
    if ((rc = parse_field(f[1], 0, 23, "hour", &b, &star, err, errlen))) return rc;
    s->hour = (uint32_t)b;
    if ((rc = parse_field(f[2], 1, 31, "day of month", &b, &s->dom_star, err, errlen))) return rc;
    s->dom = (uint32_t)b;
    if ((rc = parse_field(f[3], 1, 12, "month", &b, &star, err, errlen))) return rc;
    s->month = (uint16_t)b;
    if ((rc = parse_field(f[4], 0, 7, "day of week", &b, &s->dow_star, err, errlen))) return rc;
    if (b & (1u << 7)) b |= 1u; /* 7 is Sunday too */
    s->dow = (uint8_t)(b & 0x7f);
    s->kind = MV_SCHED_CRON;
    return MV_OK;
}

mv_err mv_every_parse(const char *text, mv_schedule *s, char *err, size_t errlen)
{
    memset(s, 0, sizeof *s);
    char *end;
    if (!text || !isdigit((unsigned char)text[0]))
        return mv_seterr(err, errlen, MV_EINVAL,
                         "every: \"%s\" is not a number with a unit s, m, h or d (e.g. 6h)",
                         text ? text : "");
    long long v = strtoll(text, &end, 10);
    long long unit = !strcmp(end, "s")   ? 1000LL
                     : !strcmp(end, "m") ? 60000LL
                     : !strcmp(end, "h") ? 3600000LL
                     : !strcmp(end, "d") ? 86400000LL
                                         : 0;
    if (!unit)
        return mv_seterr(err, errlen, MV_EINVAL,
                         "every: \"%s\" is not a number with a unit s, m, h or d (e.g. 6h)", text);
    if (v < 1 || v > 366LL * 86400000 / unit)
        return mv_seterr(err, errlen, MV_EINVAL, "every: \"%s\" must be between 1s and 366d", text);
    s->kind = MV_SCHED_EVERY;
    s->every_ms = v * unit;
    snprintf(s->every_text, sizeof s->every_text, "%s", text);
    snprintf(s->tz, sizeof s->tz, "UTC");
    return MV_OK;
}

static int day_matches(const mv_schedule *s, const struct tm *tm)
{
    if (!(s->month & (1u << (tm->tm_mon + 1)))) return 0;
    int dom = (s->dom >> tm->tm_mday) & 1, dow = (s->dow >> tm->tm_wday) & 1;
    if (s->dom_star || s->dow_star) return dom && dow; /* one of them is "*": both must hold */
    return dom || dow;                                 /* both restricted: either */
}

/* The next cron minute after after_ms with TZ already set (tz_lock held). */
static int64_t cron_next_locked(const mv_schedule *s, int64_t after_ms)
{
    time_t t = (time_t)(after_ms / 1000);
    if (after_ms < 0 && after_ms % 1000) t--;
    t = t - (t % 60 + 60) % 60 + 60; /* the next whole minute */
    time_t stop = t + (time_t)(SEARCH_MS / 1000);
    struct tm tm;
    while (t < stop) {
        if (!localtime_r(&t, &tm)) return -1;
        if (!day_matches(s, &tm) || !((s->hour >> tm.tm_hour) & 1)) {
            t += (60 - tm.tm_min) * 60 - tm.tm_sec; /* the next local hour */
            continue;
        }
        if (!((s->minute >> tm.tm_min) & 1)) {
            t += 60;
            continue;
        }
        if (!tm.tm_isdst) { /* the repeated hour when clocks go back: only its first pass */
            struct tm before;
            time_t h = t - 3600;
            if (localtime_r(&h, &before) && before.tm_isdst && before.tm_hour == tm.tm_hour &&
                before.tm_min == tm.tm_min) {
                t += 60;
                continue;
            }
        }
        return (int64_t)t * 1000;
    }
    return -1;
}

typedef struct tz_saved {
    char *old;
    int had;
} tz_saved;

static void tz_enter(const char *tz, tz_saved *sv)
{
    pthread_mutex_lock(&tz_lock);
    const char *o = getenv("TZ");
    sv->had = o != NULL;
    sv->old = o ? strdup(o) : NULL;
    setenv("TZ", tz, 1);
    tzset();
}

static void tz_leave(tz_saved *sv)
{
    if (sv->had && sv->old)
        setenv("TZ", sv->old, 1);
    else
        unsetenv("TZ");
    tzset();
    free(sv->old);
    pthread_mutex_unlock(&tz_lock);
}

int64_t mv_schedule_next(const mv_schedule *s, int64_t after_ms)
{
    if (s->kind == MV_SCHED_EVERY) return after_ms + s->every_ms;
    if (s->kind != MV_SCHED_CRON) return -1;
    tz_saved sv;
    tz_enter(s->tz, &sv);
    int64_t r = cron_next_locked(s, after_ms);
    tz_leave(&sv);
    return r;
}

int64_t mv_schedule_due(const mv_schedule *s, int64_t after_ms, int64_t now_ms)
{
    if (s->kind == MV_SCHED_EVERY) {
        if (now_ms < after_ms + s->every_ms) return -1;
        return after_ms + (now_ms - after_ms) / s->every_ms * s->every_ms;
    }
    if (s->kind != MV_SCHED_CRON) return -1;
    tz_saved sv;
    tz_enter(s->tz, &sv);
    int64_t last = -1, t = cron_next_locked(s, after_ms);
    while (t >= 0 && t <= now_ms) {
        last = t;
        t = cron_next_locked(s, t);
    }
    tz_leave(&sv);
    return last;
}

/* search.c - matching index records against a query. See search.h. */
#include "mv/search.h"

#include <ctype.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <curl/curl.h>

static int leap(int y)
{
    return (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
}

mv_err mv_search_date(const char *s, int64_t *ms, char *err, size_t errlen)
{
    int y, m, d;
    char tail;
    static const int mdays[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    if (!s || strlen(s) != 10 || sscanf(s, "%4d-%2d-%2d%c", &y, &m, &d, &tail) != 3 ||
        s[4] != '-' || s[7] != '-' || y < 1970 || y > 9999 || m < 1 || m > 12 || d < 1 ||
        d > mdays[m - 1] + (m == 2 && leap(y)))
        return mv_seterr(err, errlen, MV_EINVAL, "\"%.32s\" is not a date YYYY-MM-DD", s ? s : "");
    /* days since 1970-01-01 without timegm (not in C11/POSIX) */
    int64_t days = 0;
    for (int yy = 1970; yy < y; yy++)
        days += 365 + leap(yy);
    for (int mm = 1; mm < m; mm++)
        days += mdays[mm - 1] + (mm == 2 && leap(y));
    days += d - 1;
    *ms = days * 86400 * 1000;
    return MV_OK;
}

int64_t mv_search_rec_time(const mv_index_rec *r)
{
    if (r->internaldate > 0) return r->internaldate * 1000;
    if (!r->date[0]) return 0;
    time_t t = curl_getdate(r->date, NULL);
    return t == (time_t)-1 ? 0 : (int64_t)t * 1000;
}

static int contains(const char *hay, const char *needle)
{
    if (!*needle) return 1;
    size_t n = strlen(needle);
    for (const char *p = hay; *p; p++)
        if (!strncasecmp(p, needle, n)) return 1;
    return 0;
}

int mv_search_any(const mv_search *q)
{
    return q->folder[0] || q->from[0] || q->to[0] || q->subject[0] || q->after_ms || q->before_ms;
}

int mv_search_match(const mv_search *q, const char *folder, const mv_index_rec *r)
{
    size_t fl = strlen(q->folder);
    if (fl && (strncmp(folder, q->folder, fl) || (folder[fl] && folder[fl] != '/'))) return 0;
    if (!contains(r->from, q->from) || !contains(r->to, q->to) || !contains(r->subject, q->subject))
        return 0;
    if (q->after_ms || q->before_ms) {
        int64_t t = mv_search_rec_time(r);
        if (!t) return 0;
        if (q->after_ms && t < q->after_ms) return 0;
        if (q->before_ms && t >= q->before_ms) return 0;
    }
    return 1;
}

/* log.c - structured key=value log lines, one write(2) per line so concurrent threads and
 * processes sharing a file never interleave inside a line. */
#include "mv/log.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

static int log_level = MV_LOG_INFO;
static int log_fd = 2;
static char log_comp[32] = "";

void mv_log_set_level(mv_log_level lvl)
{
    log_level = (int)lvl;
}

int mv_log_level_parse(const char *s)
{
    static const char *names[] = {"debug", "info", "warn", "error"};
    for (int i = 0; i < 4; i++)
        if (s && strcasecmp(s, names[i]) == 0) return i;
    return -1;
}

void mv_log_set_fd(int fd)
{
    log_fd = fd;
}

void mv_log_set_component(const char *name)
{
    snprintf(log_comp, sizeof log_comp, "%s", name ? name : "");
}

void mv_log(mv_log_level lvl, const char *msg, const char *kvfmt, ...)
{
    static const char *names[] = {"debug", "info", "warn", "error"};
    if ((int)lvl < log_level) return;
    char line[4096];
    struct timespec ts;
    struct tm tm;
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    int n = snprintf(line, sizeof line,
                     "ts=%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ level=%s%s%s msg=\"%s\"",
                     tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
                     ts.tv_nsec / 1000000, names[lvl], log_comp[0] ? " comp=" : "", log_comp, msg);
    if (n < 0) return;
    if ((size_t)n >= sizeof line - 2) n = (int)sizeof line - 2;
    if (kvfmt && *kvfmt) {
        va_list ap;
        va_start(ap, kvfmt);
        int m = vsnprintf(line + n, sizeof line - 2 - (size_t)n, kvfmt, ap);
        va_end(ap);
        if (m > 0) n += m;
        if ((size_t)n >= sizeof line - 2) n = (int)sizeof line - 2;
    }
    line[n++] = '\n';
    ssize_t w = write(log_fd, line, (size_t)n);
    (void)w;
}

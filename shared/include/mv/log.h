/* log.h - structured key=value logging.
 *
 * Lines look like: ts=2026-11-30T13:00:00.123Z level=info msg="..." tenant=t1 mailbox=a task=...
 * The library logs through this module only; programs choose the level and the sink (stderr by
 * default). Never pass a secret to these functions. Thread-safe (one write(2) per line). */
#ifndef MV_LOG_H
#define MV_LOG_H

typedef enum { MV_LOG_DEBUG = 0, MV_LOG_INFO, MV_LOG_WARN, MV_LOG_ERROR } mv_log_level;

void mv_log_set_level(mv_log_level lvl);
/* Parse "debug|info|warn|error"; returns -1 on unknown. */
int mv_log_level_parse(const char *s);
/* Redirect output to fd (default 2). */
void mv_log_set_fd(int fd);
/* Set a component name printed as comp=NAME (e.g. "worker"). */
void mv_log_set_component(const char *name);

/* msg is a short human message; kvfmt is a printf format of extra " key=value" pairs (may be
 * NULL or ""). Values containing spaces must be quoted by the caller with %s inside "\"...\"". */
void mv_log(mv_log_level lvl, const char *msg, const char *kvfmt, ...)
    __attribute__((format(printf, 3, 4)));

#define mv_debug(msg, ...) mv_log(MV_LOG_DEBUG, msg, __VA_ARGS__)
#define mv_info(msg, ...) mv_log(MV_LOG_INFO, msg, __VA_ARGS__)
#define mv_warn(msg, ...) mv_log(MV_LOG_WARN, msg, __VA_ARGS__)
#define mv_error(msg, ...) mv_log(MV_LOG_ERROR, msg, __VA_ARGS__)

#endif

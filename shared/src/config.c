/* config.c - the mv_config struct: defaults, "key = value" file, MAILVAULT_* environment,
 * cross-field validation.
 *
 * Design: one table (keys[]) describes every key: dotted name, offset into mv_config, type and
 * allowed range. mv_config_set, the file parser, the environment loader and the validator are
 * all driven by it, so adding a key is one table row (plus its default and docs). Values are
 * parsed strictly: integers must be [+-]digits with no trailing garbage and within the key's
 * range; strings must fit their field (never silently truncated). Every error names the key
 * (and, from a file, "FILE:LINE:"; from the environment, the variable) plus the bad value and
 * what would have been accepted. Nothing here prints, logs or keeps global state. */
#include "mv/config.h"
#include "mv/log.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef enum { KT_STR, KT_INT, KT_I64, KT_FSYNC, KT_LOGLEVEL, KT_SCOPE } key_type;

typedef struct key_def {
    const char *name;
    size_t off;
    size_t size; /* field size (strings: including the NUL) */
    key_type type;
    int64_t min, max;
} key_def;

#define FIELD_SIZE(f) sizeof(((mv_config *)0)->f)
#define K_STR(n, f)                                                                                \
    {                                                                                              \
        n, offsetof(mv_config, f), FIELD_SIZE(f), KT_STR, 0, 0                                     \
    }
#define K_INT(n, f, lo, hi)                                                                        \
    {                                                                                              \
        n, offsetof(mv_config, f), FIELD_SIZE(f), KT_INT, lo, hi                                   \
    }
#define K_I64(n, f, lo, hi)                                                                        \
    {                                                                                              \
        n, offsetof(mv_config, f), FIELD_SIZE(f), KT_I64, lo, hi                                   \
    }
#define KIB 1024LL
#define MIB (1024LL * 1024)
#define GIB (1024LL * 1024 * 1024)

static const key_def keys[] = {
    K_STR("kafka.brokers", kafka_brokers),
    K_STR("kafka.topic", topic_tasks),
    K_STR("kafka.dlq_topic", topic_dlq),
    K_STR("kafka.group", group),
    K_INT("kafka.partitions", partitions, 1, 256),
    K_STR("redis.host", redis_host),
    K_INT("redis.port", redis_port, 1, 65535),
    K_INT("redis.timeout_ms", redis_timeout_ms, 100, 3600000),
    K_STR("store.root", store_root),
    {"store.fsync", offsetof(mv_config, store_fsync_each), FIELD_SIZE(store_fsync_each), KT_FSYNC,
     0, 1},
    K_INT("store.zstd_level", zstd_level, 1, 19),
    K_STR("master_key_file", master_key_file),
    K_INT("worker.concurrency", concurrency, 1, 256),
    K_INT("worker.chunk_messages", chunk_messages, 1, 100000),
    K_INT("worker.chunk_seconds", chunk_seconds, 1, 86400),
    K_INT("worker.max_attempts", max_attempts, 1, 100),
    K_INT("worker.retry_base_ms", retry_base_ms, 10, 3600000),
    K_INT("worker.lease_ttl_ms", lease_ttl_ms, 1000, 600000),
    K_INT("imap.timeout_ms", imap_timeout_ms, 100, 3600000),
    K_I64("imap.max_message_bytes", max_message_bytes, KIB, 4 * GIB),
    K_INT("imap.max_line_bytes", max_line_bytes, 1024, 64 * MIB),
    K_STR("tls.ca_file", ca_file),
    K_INT("graph.max_concurrent", graph_max_concurrent, 0, 64),
    K_INT("graph.window_requests", graph_window_requests, 0, 10000000),
    K_INT("graph.window_seconds", graph_window_seconds, 1, 86400),
    K_INT("graph.batch_size", graph_batch_size, 1, 20),
    K_INT("ews.max_concurrent", ews_max_concurrent, 0, 64),
    K_INT("ews.account_max_concurrent", ews_account_max_concurrent, 0, 1000),
    K_INT("ews.sync_page", ews_sync_page, 1, 512),
    K_INT("ews.get_batch", ews_get_batch, 1, 50),
    K_INT("export.append_batch", export_append_batch, 1, 500),
    K_INT("source.max_connections_per_host", host_max_connections, 0, 100000),
    K_INT("scheduler.lease_ms", sched_lease_ms, 1000, 600000),
    K_INT("scheduler.tick_ms", sched_tick_ms, 50, 60000),
    K_STR("api.listen", api_listen),
    {"graph.limit_scope", offsetof(mv_config, graph_limit_per_app), FIELD_SIZE(graph_limit_per_app),
     KT_SCOPE, 0, 1},
    {"log.level", offsetof(mv_config, log_level), FIELD_SIZE(log_level), KT_LOGLEVEL, 0, 3},
};

#define NKEYS (sizeof keys / sizeof keys[0])
#define ENV_PREFIX "MAILVAULT_"

void mv_config_defaults(mv_config *c)
{
    memset(c, 0, sizeof *c);
    snprintf(c->kafka_brokers, sizeof c->kafka_brokers, "%s", "127.0.0.1:9092");
    snprintf(c->topic_tasks, sizeof c->topic_tasks, "%s", "mailvault.tasks");
    snprintf(c->topic_dlq, sizeof c->topic_dlq, "%s", "mailvault.tasks.dlq");
    snprintf(c->group, sizeof c->group, "%s", "mailvault-workers");
    c->partitions = 8;
    snprintf(c->redis_host, sizeof c->redis_host, "%s", "127.0.0.1");
    c->redis_port = 6379;
    c->redis_timeout_ms = 5000;
    snprintf(c->store_root, sizeof c->store_root, "%s", "/var/lib/mailvault/store");
    c->store_fsync_each = 0;
    c->zstd_level = 3;
    c->concurrency = 4;
    c->chunk_messages = 2000;
    c->chunk_seconds = 60;
    c->max_attempts = 5;
    c->retry_base_ms = 2000;
    c->lease_ttl_ms = 15000;
    c->imap_timeout_ms = 60000;
    c->max_message_bytes = 200 * MIB;
    c->max_line_bytes = (int)MIB;
    c->log_level = MV_LOG_INFO;
    c->graph_max_concurrent = 4;
    c->graph_window_requests = 10000;
    c->graph_window_seconds = 600;
    c->graph_batch_size = 20;
    c->graph_limit_per_app = 0;
    c->ews_max_concurrent = 10;
    c->ews_account_max_concurrent = 27;
    c->ews_sync_page = 100;
    c->ews_get_batch = 10;
    c->export_append_batch = 50;
    c->host_max_connections = 100;
    c->sched_lease_ms = 10000;
    c->sched_tick_ms = 500;
    snprintf(c->api_listen, sizeof c->api_listen, "127.0.0.1:8080");
}

static const key_def *find_key(const char *name)
{
    for (size_t i = 0; i < NKEYS; i++)
        if (strcmp(keys[i].name, name) == 0) return &keys[i];
    return NULL;
}

/* Printable, bounded rendering of a user-supplied value for error messages: control and
 * non-ASCII bytes become \xNN, long values are cut with "...". */
static void quote_value(const char *v, char *out, size_t outlen)
{
    size_t o = 0, i = 0;
    const size_t shown = 64;
    for (; v[i] && i < shown && o + 5 < outlen; i++) {
        unsigned char ch = (unsigned char)v[i];
        if (ch < 0x20 || ch >= 0x7f || ch == '"' || ch == '\\')
            o += (size_t)snprintf(out + o, outlen - o, "\\x%02x", ch);
        else
            out[o++] = (char)ch;
    }
    if (v[i] && o + 4 < outlen) {
        memcpy(out + o, "...", 3);
        o += 3;
    }
    out[o] = '\0';
}

/* Strict integer: optional sign, then decimal digits only, nothing else (no whitespace). */
static int parse_int(const char *s, long long *out, int *overflow)
{
    const char *p = s;
    *overflow = 0;
    if (*p == '+' || *p == '-') p++;
    if (*p < '0' || *p > '9') return 0;
    for (const char *q = p; *q; q++)
        if (*q < '0' || *q > '9') return 0;
    errno = 0;
    char *end = NULL;
    long long v = strtoll(s, &end, 10);
    if (end == s || *end != '\0') return 0;
    if (errno == ERANGE) *overflow = 1;
    *out = v;
    return 1;
}

static mv_err set_value(mv_config *c, const key_def *k, const char *value, char *err, size_t errlen)
{
    char q[340];
    char *field = (char *)c + k->off;
    quote_value(value, q, sizeof q);
    switch (k->type) {
    case KT_STR: {
        size_t n = strlen(value);
        if (n >= k->size)
            return mv_seterr(err, errlen, MV_EINVAL,
                             "%s: \"%s\" is too long (%zu bytes, at most %zu)", k->name, q, n,
                             k->size - 1);
        memcpy(field, value, n + 1);
        return MV_OK;
    }
    case KT_INT:
    case KT_I64: {
        long long v = 0;
        int overflow = 0;
        if (!parse_int(value, &v, &overflow))
            return mv_seterr(err, errlen, MV_EINVAL, "%s: \"%s\" is not an integer (%lld..%lld)",
                             k->name, q, (long long)k->min, (long long)k->max);
        if (overflow || v < k->min || v > k->max)
            return mv_seterr(err, errlen, MV_EINVAL, "%s: \"%s\" is out of range (%lld..%lld)",
                             k->name, q, (long long)k->min, (long long)k->max);
        if (k->type == KT_INT) {
            int iv = (int)v;
            memcpy(field, &iv, sizeof iv);
        } else {
            int64_t lv = (int64_t)v;
            memcpy(field, &lv, sizeof lv);
        }
        return MV_OK;
    }
    case KT_FSYNC: {
        int iv;
        if (strcmp(value, "chunk") == 0)
            iv = 0;
        else if (strcmp(value, "object") == 0)
            iv = 1;
        else
            return mv_seterr(err, errlen, MV_EINVAL, "%s: \"%s\" is not one of chunk|object",
                             k->name, q);
        memcpy(field, &iv, sizeof iv);
        return MV_OK;
    }
    case KT_SCOPE: {
        int iv;
        if (strcmp(value, "mailbox") == 0)
            iv = 0;
        else if (strcmp(value, "app") == 0)
            iv = 1;
        else
            return mv_seterr(err, errlen, MV_EINVAL, "%s: \"%s\" is not one of mailbox|app",
                             k->name, q);
        memcpy(field, &iv, sizeof iv);
        return MV_OK;
    }
    case KT_LOGLEVEL: {
        int iv = mv_log_level_parse(value);
        if (iv < 0)
            return mv_seterr(err, errlen, MV_EINVAL,
                             "%s: \"%s\" is not one of debug|info|warn|error", k->name, q);
        memcpy(field, &iv, sizeof iv);
        return MV_OK;
    }
    }
    return mv_seterr(err, errlen, MV_ERR, "%s: internal error (bad key type)", k->name);
}

mv_err mv_config_set(mv_config *c, const char *key, const char *value, char *err, size_t errlen)
{
    if (!key || !value)
        return mv_seterr(err, errlen, MV_EINVAL, "configuration key or value is NULL");
    const key_def *k = find_key(key);
    if (!k) {
        char q[340];
        quote_value(key, q, sizeof q);
        return mv_seterr(err, errlen, MV_EINVAL, "unknown configuration key '%s'", q);
    }
    return set_value(c, k, value, err, errlen);
}

static char *trim(char *s)
{
    while (*s == ' ' || *s == '\t' || *s == '\r' || *s == '\n' || *s == '\f' || *s == '\v')
        s++;
    size_t n = strlen(s);
    while (n > 0 && (s[n - 1] == ' ' || s[n - 1] == '\t' || s[n - 1] == '\r' || s[n - 1] == '\n' ||
                     s[n - 1] == '\f' || s[n - 1] == '\v'))
        s[--n] = '\0';
    return s;
}

/* One line of the file (already read into a mutable buffer). */
static mv_err parse_line(mv_config *c, char *line, size_t linelen, char *err, size_t errlen)
{
    if (memchr(line, '\0', linelen) != NULL)
        return mv_seterr(err, errlen, MV_EINVAL, "line contains a NUL byte");
    char *s = trim(line);
    if (*s == '\0' || *s == '#') return MV_OK;
    char *eq = strchr(s, '=');
    if (!eq) return mv_seterr(err, errlen, MV_EINVAL, "expected \"key = value\"");
    *eq = '\0';
    char *key = trim(s);
    char *value = trim(eq + 1);
    if (*key == '\0') return mv_seterr(err, errlen, MV_EINVAL, "missing key before '='");
    size_t vn = strlen(value);
    if (vn > 0 && value[0] == '"') {
        if (vn < 2 || value[vn - 1] != '"')
            return mv_seterr(err, errlen, MV_EINVAL, "%s: unterminated double quote", key);
        value[vn - 1] = '\0';
        value++;
    }
    return mv_config_set(c, key, value, err, errlen);
}

mv_err mv_config_load_file(mv_config *c, const char *path, char *err, size_t errlen)
{
    if (!path) return mv_seterr(err, errlen, MV_EINVAL, "configuration file path is NULL");
    FILE *f = fopen(path, "re");
    if (!f) {
        int e = errno;
        return mv_seterr(err, errlen, e == ENOENT ? MV_ENOTFOUND : MV_EIO,
                         "cannot open config file %s: %s", path, strerror(e));
    }
    mv_err rc = MV_OK;
    char *line = NULL;
    size_t cap = 0;
    unsigned long lineno = 0;
    ssize_t n;
    char msg[MV_ERRLEN];
    errno = 0;
    while ((n = getline(&line, &cap, f)) >= 0) {
        lineno++;
        rc = parse_line(c, line, (size_t)n, msg, sizeof msg);
        if (rc != MV_OK) {
            mv_seterr(err, errlen, rc, "%s:%lu: %s", path, lineno, msg);
            goto out;
        }
    }
    if (ferror(f)) {
        int e = errno;
        rc = mv_seterr(err, errlen, e == ENOMEM ? MV_ENOMEM : MV_EIO,
                       "cannot read config file %s: %s", path, strerror(e ? e : EIO));
    }
out:
    free(line);
    fclose(f);
    return rc;
}

/* "kafka.brokers" -> "MAILVAULT_KAFKA_BROKERS". */
static void env_name(const char *key, char *out, size_t outlen)
{
    size_t o = (size_t)snprintf(out, outlen, "%s", ENV_PREFIX);
    for (size_t i = 0; key[i] && o + 1 < outlen; i++) {
        char ch = key[i];
        if (ch == '.')
            ch = '_';
        else if (ch >= 'a' && ch <= 'z')
            ch = (char)(ch - 'a' + 'A');
        out[o++] = ch;
    }
    out[o] = '\0';
}

mv_err mv_config_load_env(mv_config *c, char *err, size_t errlen)
{
    char var[96], msg[MV_ERRLEN];
    for (size_t i = 0; i < NKEYS; i++) {
        env_name(keys[i].name, var, sizeof var);
        const char *v = getenv(var);
        if (!v) continue;
        mv_err rc = set_value(c, &keys[i], v, msg, sizeof msg);
        if (rc != MV_OK) return mv_seterr(err, errlen, rc, "environment variable %s: %s", var, msg);
    }
    return MV_OK;
}

/* Kafka topic names: 1..249 of [a-zA-Z0-9._-]. */
static int topic_valid(const char *s)
{
    size_t n = strlen(s);
    if (n < 1 || n > 249) return 0;
    for (size_t i = 0; i < n; i++) {
        char ch = s[i];
        int ok = (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
                 ch == '.' || ch == '_' || ch == '-';
        if (!ok) return 0;
    }
    return 1;
}

mv_err mv_config_validate(const mv_config *c, char *err, size_t errlen)
{
    /* Every field against its table entry: the struct may have been filled by code. */
    for (size_t i = 0; i < NKEYS; i++) {
        const key_def *k = &keys[i];
        const char *field = (const char *)c + k->off;
        int64_t v;
        if (k->type == KT_STR) {
            if (!memchr(field, '\0', k->size))
                return mv_seterr(err, errlen, MV_EINVAL, "%s: value is not NUL-terminated",
                                 k->name);
            continue;
        }
        if (k->type == KT_I64) {
            memcpy(&v, field, sizeof v);
        } else {
            int iv;
            memcpy(&iv, field, sizeof iv);
            v = iv;
        }
        if (v < k->min || v > k->max)
            return mv_seterr(err, errlen, MV_EINVAL, "%s: %lld is out of range (%lld..%lld)",
                             k->name, (long long)v, (long long)k->min, (long long)k->max);
    }
    if (c->kafka_brokers[0] == '\0')
        return mv_seterr(err, errlen, MV_EINVAL, "kafka.brokers: must not be empty");
    if (!topic_valid(c->topic_tasks))
        return mv_seterr(err, errlen, MV_EINVAL,
                         "kafka.topic: \"%s\" is not a valid topic name (1..249 of [a-zA-Z0-9._-])",
                         c->topic_tasks);
    if (!topic_valid(c->topic_dlq))
        return mv_seterr(err, errlen, MV_EINVAL,
                         "kafka.dlq_topic: \"%s\" is not a valid topic name (1..249 of "
                         "[a-zA-Z0-9._-])",
                         c->topic_dlq);
    if (strcmp(c->topic_tasks, c->topic_dlq) == 0)
        return mv_seterr(err, errlen, MV_EINVAL,
                         "kafka.dlq_topic: must differ from kafka.topic (both are \"%s\")",
                         c->topic_tasks);
    if (c->group[0] == '\0')
        return mv_seterr(err, errlen, MV_EINVAL, "kafka.group: must not be empty");
    if (c->redis_host[0] == '\0')
        return mv_seterr(err, errlen, MV_EINVAL, "redis.host: must not be empty");
    if (c->store_root[0] == '\0')
        return mv_seterr(err, errlen, MV_EINVAL, "store.root: must not be empty");
    return MV_OK;
}

mv_err mv_config_load(mv_config *c, const char *path, char *err, size_t errlen)
{
    mv_config_defaults(c);
    if (!path) {
        const char *envpath = getenv(ENV_PREFIX "CONFIG");
        if (envpath && envpath[0]) path = envpath;
    }
    mv_err rc;
    if (path && (rc = mv_config_load_file(c, path, err, errlen)) != MV_OK) return rc;
    if ((rc = mv_config_load_env(c, err, errlen)) != MV_OK) return rc;
    return mv_config_validate(c, err, errlen);
}

/* test_config.c - mv_config: defaults, per-key validation and ranges, the file parser, the
 * MAILVAULT_* environment, precedence and cross-field validation.
 *
 * The expected key/range/env-name table below is written out independently of config.c on
 * purpose: it is the documented contract (docs/configuration.md), not a copy of the code. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "mv/config.h"
#include "mv/log.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

extern char **environ;

typedef struct {
    const char *key;
    const char *env;
    long long min, max;
} int_key;

static const int_key int_keys[] = {
    {"kafka.partitions", "MAILVAULT_KAFKA_PARTITIONS", 1, 256},
    {"redis.port", "MAILVAULT_REDIS_PORT", 1, 65535},
    {"redis.timeout_ms", "MAILVAULT_REDIS_TIMEOUT_MS", 100, 3600000},
    {"store.zstd_level", "MAILVAULT_STORE_ZSTD_LEVEL", 1, 19},
    {"worker.concurrency", "MAILVAULT_WORKER_CONCURRENCY", 1, 256},
    {"worker.chunk_messages", "MAILVAULT_WORKER_CHUNK_MESSAGES", 1, 100000},
    {"worker.chunk_seconds", "MAILVAULT_WORKER_CHUNK_SECONDS", 1, 86400},
    {"worker.max_attempts", "MAILVAULT_WORKER_MAX_ATTEMPTS", 1, 100},
    {"worker.retry_base_ms", "MAILVAULT_WORKER_RETRY_BASE_MS", 10, 3600000},
    {"worker.lease_ttl_ms", "MAILVAULT_WORKER_LEASE_TTL_MS", 1000, 600000},
    {"imap.timeout_ms", "MAILVAULT_IMAP_TIMEOUT_MS", 100, 3600000},
    {"imap.max_message_bytes", "MAILVAULT_IMAP_MAX_MESSAGE_BYTES", 1024, 4294967296LL},
    {"imap.max_line_bytes", "MAILVAULT_IMAP_MAX_LINE_BYTES", 1024, 67108864},
};

typedef struct {
    const char *key;
    const char *env;
    size_t size; /* field size incl. NUL */
    size_t off;
} str_key;

#define SK(k, e, f)                                                                                \
    {                                                                                              \
        k, e, sizeof(((mv_config *)0)->f), offsetof(mv_config, f)                                  \
    }
static const str_key str_keys[] = {
    SK("kafka.brokers", "MAILVAULT_KAFKA_BROKERS", kafka_brokers),
    SK("kafka.topic", "MAILVAULT_KAFKA_TOPIC", topic_tasks),
    SK("kafka.dlq_topic", "MAILVAULT_KAFKA_DLQ_TOPIC", topic_dlq),
    SK("kafka.group", "MAILVAULT_KAFKA_GROUP", group),
    SK("redis.host", "MAILVAULT_REDIS_HOST", redis_host),
    SK("store.root", "MAILVAULT_STORE_ROOT", store_root),
    SK("master_key_file", "MAILVAULT_MASTER_KEY_FILE", master_key_file),
    SK("tls.ca_file", "MAILVAULT_TLS_CA_FILE", ca_file),
};

#define N(a) (sizeof(a) / sizeof((a)[0]))

static long long get_int(const mv_config *c, const char *key)
{
    if (!strcmp(key, "kafka.partitions")) return c->partitions;
    if (!strcmp(key, "redis.port")) return c->redis_port;
    if (!strcmp(key, "redis.timeout_ms")) return c->redis_timeout_ms;
    if (!strcmp(key, "store.zstd_level")) return c->zstd_level;
    if (!strcmp(key, "worker.concurrency")) return c->concurrency;
    if (!strcmp(key, "worker.chunk_messages")) return c->chunk_messages;
    if (!strcmp(key, "worker.chunk_seconds")) return c->chunk_seconds;
    if (!strcmp(key, "worker.max_attempts")) return c->max_attempts;
    if (!strcmp(key, "worker.retry_base_ms")) return c->retry_base_ms;
    if (!strcmp(key, "worker.lease_ttl_ms")) return c->lease_ttl_ms;
    if (!strcmp(key, "imap.timeout_ms")) return c->imap_timeout_ms;
    if (!strcmp(key, "imap.max_message_bytes")) return c->max_message_bytes;
    if (!strcmp(key, "imap.max_line_bytes")) return c->max_line_bytes;
    fail_msg("no such int key %s", key);
    return -1;
}

/* ---- fixtures: a private temp dir and a clean MAILVAULT_* environment ---- */

typedef struct {
    char dir[256];
    char path[300];
} fixture;

static void clear_mailvault_env(void)
{
    for (;;) {
        char name[256] = "";
        for (char **e = environ; e && *e; e++) {
            if (strncmp(*e, "MAILVAULT_", 10) == 0) {
                const char *eq = strchr(*e, '=');
                size_t n = eq ? (size_t)(eq - *e) : strlen(*e);
                if (n < sizeof name) {
                    memcpy(name, *e, n);
                    name[n] = '\0';
                }
                break;
            }
        }
        if (!name[0]) return;
        assert_int_equal(unsetenv(name), 0);
    }
}

static int setup(void **state)
{
    fixture *f = calloc(1, sizeof *f);
    assert_non_null(f);
    const char *tmp = getenv("TMPDIR");
    snprintf(f->dir, sizeof f->dir, "%s/mv-test-config-XXXXXX", tmp && *tmp ? tmp : "/tmp");
    assert_non_null(mkdtemp(f->dir));
    snprintf(f->path, sizeof f->path, "%s/mailvault.conf", f->dir);
    clear_mailvault_env();
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fixture *f = *state;
    unlink(f->path);
    rmdir(f->dir);
    free(f);
    clear_mailvault_env();
    return 0;
}

static void write_file(const char *path, const char *text)
{
    FILE *fp = fopen(path, "w");
    assert_non_null(fp);
    assert_int_equal(fputs(text, fp) >= 0, 1);
    assert_int_equal(fclose(fp), 0);
}

/* ---- defaults ---- */

static void test_defaults(void **state)
{
    (void)state;
    mv_config c;
    memset(&c, 0xAB, sizeof c);
    mv_config_defaults(&c);
    assert_string_equal(c.kafka_brokers, "127.0.0.1:9092");
    assert_string_equal(c.topic_tasks, "mailvault.tasks");
    assert_string_equal(c.topic_dlq, "mailvault.tasks.dlq");
    assert_string_equal(c.group, "mailvault-workers");
    assert_int_equal(c.partitions, 8);
    assert_string_equal(c.redis_host, "127.0.0.1");
    assert_int_equal(c.redis_port, 6379);
    assert_int_equal(c.redis_timeout_ms, 5000);
    assert_string_equal(c.store_root, "/var/lib/mailvault/store");
    assert_int_equal(c.store_fsync_each, 0);
    assert_int_equal(c.zstd_level, 3);
    assert_string_equal(c.master_key_file, "");
    assert_int_equal(c.concurrency, 4);
    assert_int_equal(c.chunk_messages, 2000);
    assert_int_equal(c.chunk_seconds, 60);
    assert_int_equal(c.max_attempts, 5);
    assert_int_equal(c.retry_base_ms, 2000);
    assert_int_equal(c.lease_ttl_ms, 15000);
    assert_int_equal(c.imap_timeout_ms, 60000);
    assert_true(c.max_message_bytes == 200LL * 1024 * 1024);
    assert_int_equal(c.max_line_bytes, 1024 * 1024);
    assert_string_equal(c.ca_file, "");
    assert_int_equal(c.log_level, MV_LOG_INFO);

    char err[MV_ERRLEN] = "";
    assert_int_equal(mv_config_validate(&c, err, sizeof err), MV_OK);
}

/* ---- mv_config_set ---- */

static void test_int_ranges(void **state)
{
    (void)state;
    char err[MV_ERRLEN], v[64], want[MV_ERRLEN];
    for (size_t i = 0; i < N(int_keys); i++) {
        const int_key *k = &int_keys[i];
        mv_config c;
        mv_config_defaults(&c);
        snprintf(v, sizeof v, "%lld", k->min);
        assert_int_equal(mv_config_set(&c, k->key, v, err, sizeof err), MV_OK);
        assert_true(get_int(&c, k->key) == k->min);
        snprintf(v, sizeof v, "%lld", k->max);
        assert_int_equal(mv_config_set(&c, k->key, v, err, sizeof err), MV_OK);
        assert_true(get_int(&c, k->key) == k->max);
        snprintf(v, sizeof v, "+%lld", k->min);
        assert_int_equal(mv_config_set(&c, k->key, v, err, sizeof err), MV_OK);
        assert_true(get_int(&c, k->key) == k->min);
        assert_int_equal(mv_config_validate(&c, err, sizeof err), MV_OK);

        snprintf(v, sizeof v, "%lld", k->min - 1);
        assert_int_equal(mv_config_set(&c, k->key, v, err, sizeof err), MV_EINVAL);
        snprintf(want, sizeof want, "%s: \"%s\" is out of range (%lld..%lld)", k->key, v, k->min,
                 k->max);
        assert_string_equal(err, want);
        assert_true(get_int(&c, k->key) == k->min); /* unchanged on error */

        snprintf(v, sizeof v, "%lld", k->max + 1);
        assert_int_equal(mv_config_set(&c, k->key, v, err, sizeof err), MV_EINVAL);
        snprintf(want, sizeof want, "%s: \"%s\" is out of range (%lld..%lld)", k->key, v, k->min,
                 k->max);
        assert_string_equal(err, want);
    }
}

static void test_int_not_integer(void **state)
{
    (void)state;
    static const char *bad[] = {"abc", "",  " 4", "4 ",  "4x",  "0x10", "1e3",
                                "4.0", "+", "-",  "--4", "\t4", "4\n",  "٤"};
    char err[MV_ERRLEN];
    mv_config c;
    mv_config_defaults(&c);
    for (size_t i = 0; i < N(bad); i++) {
        assert_int_equal(mv_config_set(&c, "worker.concurrency", bad[i], err, sizeof err),
                         MV_EINVAL);
        assert_non_null(strstr(err, "worker.concurrency: \""));
        assert_non_null(strstr(err, "\" is not an integer (1..256)"));
        assert_int_equal(c.concurrency, 4);
    }
    assert_int_equal(mv_config_set(&c, "worker.concurrency", "abc", err, sizeof err), MV_EINVAL);
    assert_string_equal(err, "worker.concurrency: \"abc\" is not an integer (1..256)");

    /* overflow of long long is "out of range", not silently clamped */
    assert_int_equal(
        mv_config_set(&c, "imap.max_message_bytes", "99999999999999999999999", err, sizeof err),
        MV_EINVAL);
    assert_non_null(strstr(err, "is out of range (1024..4294967296)"));
    assert_int_equal(mv_config_set(&c, "worker.concurrency", "-1", err, sizeof err), MV_EINVAL);
    assert_string_equal(err, "worker.concurrency: \"-1\" is out of range (1..256)");
    /* leading zeros are still decimal */
    assert_int_equal(mv_config_set(&c, "worker.concurrency", "010", err, sizeof err), MV_OK);
    assert_int_equal(c.concurrency, 10);
}

static void test_int64_key(void **state)
{
    (void)state;
    char err[MV_ERRLEN];
    mv_config c;
    mv_config_defaults(&c);
    assert_int_equal(mv_config_set(&c, "imap.max_message_bytes", "4294967296", err, sizeof err),
                     MV_OK);
    assert_true(c.max_message_bytes == 4294967296LL); /* does not fit in 32 bits */
    assert_int_equal(mv_config_set(&c, "imap.max_message_bytes", "1023", err, sizeof err),
                     MV_EINVAL);
    assert_true(c.max_message_bytes == 4294967296LL);
}

static void test_strings(void **state)
{
    (void)state;
    char err[MV_ERRLEN];
    for (size_t i = 0; i < N(str_keys); i++) {
        const str_key *k = &str_keys[i];
        mv_config c;
        mv_config_defaults(&c);
        char *field = (char *)&c + k->off;
        char *v = malloc(k->size + 1);
        assert_non_null(v);
        memset(v, 'x', k->size - 1);
        v[k->size - 1] = '\0'; /* longest that fits */
        assert_int_equal(mv_config_set(&c, k->key, v, err, sizeof err), MV_OK);
        assert_string_equal(field, v);

        v[k->size - 1] = 'y';
        v[k->size] = '\0'; /* one too long */
        assert_int_equal(mv_config_set(&c, k->key, v, err, sizeof err), MV_EINVAL);
        char want[128];
        snprintf(want, sizeof want, "%s: \"", k->key);
        assert_memory_equal(err, want, strlen(want));
        snprintf(want, sizeof want, "is too long (%zu bytes, at most %zu)", k->size, k->size - 1);
        assert_non_null(strstr(err, want));
        assert_true(strlen(err) < 200); /* the value is abbreviated, not dumped */
        assert_int_equal(field[0], 'x');
        free(v);

        assert_int_equal(mv_config_set(&c, k->key, "", err, sizeof err), MV_OK);
        assert_string_equal(field, "");
    }
}

static void test_enums(void **state)
{
    (void)state;
    char err[MV_ERRLEN];
    mv_config c;
    mv_config_defaults(&c);
    assert_int_equal(mv_config_set(&c, "store.fsync", "object", err, sizeof err), MV_OK);
    assert_int_equal(c.store_fsync_each, 1);
    assert_int_equal(mv_config_set(&c, "store.fsync", "chunk", err, sizeof err), MV_OK);
    assert_int_equal(c.store_fsync_each, 0);
    assert_int_equal(mv_config_set(&c, "store.fsync", "always", err, sizeof err), MV_EINVAL);
    assert_string_equal(err, "store.fsync: \"always\" is not one of chunk|object");

    static const struct {
        const char *s;
        int lvl;
    } lv[] = {{"debug", MV_LOG_DEBUG},
              {"info", MV_LOG_INFO},
              {"warn", MV_LOG_WARN},
              {"error", MV_LOG_ERROR}};
    for (size_t i = 0; i < N(lv); i++) {
        assert_int_equal(mv_config_set(&c, "log.level", lv[i].s, err, sizeof err), MV_OK);
        assert_int_equal(c.log_level, lv[i].lvl);
    }
    assert_int_equal(mv_config_set(&c, "log.level", "verbose", err, sizeof err), MV_EINVAL);
    assert_string_equal(err, "log.level: \"verbose\" is not one of debug|info|warn|error");
    assert_int_equal(c.log_level, MV_LOG_ERROR);
}

static void test_unknown_key(void **state)
{
    (void)state;
    char err[MV_ERRLEN];
    mv_config c;
    mv_config_defaults(&c);
    assert_int_equal(mv_config_set(&c, "worker.concurency", "4", err, sizeof err), MV_EINVAL);
    assert_string_equal(err, "unknown configuration key 'worker.concurency'");
    assert_int_equal(mv_config_set(&c, "WORKER.CONCURRENCY", "4", err, sizeof err), MV_EINVAL);
    assert_int_equal(mv_config_set(&c, "", "4", err, sizeof err), MV_EINVAL);
    assert_string_equal(err, "unknown configuration key ''");
}

static void test_error_value_escaped(void **state)
{
    (void)state;
    char err[MV_ERRLEN];
    mv_config c;
    mv_config_defaults(&c);
    assert_int_equal(mv_config_set(&c, "worker.concurrency", "4\n\x1b[31m", err, sizeof err),
                     MV_EINVAL);
    assert_null(strchr(err, '\n'));
    assert_null(strchr(err, '\x1b'));
    assert_non_null(strstr(err, "\\x0a"));
    /* small error buffers truncate, never overflow */
    char small[8];
    memset(small, 'Z', sizeof small);
    assert_int_equal(mv_config_set(&c, "nope", "1", small, sizeof small), MV_EINVAL);
    assert_int_equal(strlen(small), sizeof small - 1);
    assert_int_equal(mv_config_set(&c, "nope", "1", NULL, 0), MV_EINVAL);
}

/* ---- file ---- */

static void test_file_ok(void **state)
{
    fixture *f = *state;
    write_file(f->path, "# mailvault test config\n"
                        "\n"
                        "   \t\n"
                        "kafka.brokers = k1:9092,k2:9092\n"
                        "  worker.concurrency=16  \n"
                        "store.root = \"/srv/mail vault/store\"\n"
                        "kafka.group = \"\"\n"
                        "log.level\t=\tdebug\r\n"
                        "  # indented comment = ignored\n"
                        "store.fsync = object\n"
                        "worker.concurrency = 17"); /* last wins; no final newline */
    mv_config c;
    mv_config_defaults(&c);
    char err[MV_ERRLEN] = "";
    assert_int_equal(mv_config_load_file(&c, f->path, err, sizeof err), MV_OK);
    assert_string_equal(c.kafka_brokers, "k1:9092,k2:9092");
    assert_int_equal(c.concurrency, 17);
    assert_string_equal(c.store_root, "/srv/mail vault/store");
    assert_string_equal(c.group, "");
    assert_int_equal(c.log_level, MV_LOG_DEBUG);
    assert_int_equal(c.store_fsync_each, 1);
    assert_string_equal(c.topic_tasks, "mailvault.tasks"); /* untouched keys keep defaults */
}

static void expect_file_error(fixture *f, const char *text, const char *suffix)
{
    write_file(f->path, text);
    mv_config c;
    mv_config_defaults(&c);
    char err[MV_ERRLEN] = "", want[MV_ERRLEN];
    assert_int_equal(mv_config_load_file(&c, f->path, err, sizeof err), MV_EINVAL);
    snprintf(want, sizeof want, "%s:%s", f->path, suffix);
    assert_string_equal(err, want);
}

static void test_file_errors(void **state)
{
    fixture *f = *state;
    expect_file_error(f, "# c\nworker.concurrency = abc\n",
                      "2: worker.concurrency: \"abc\" is not an integer (1..256)");
    expect_file_error(f, "\n\n\nbogus.key = 1\n", "4: unknown configuration key 'bogus.key'");
    expect_file_error(f, "kafka.brokers\n", "1: expected \"key = value\"");
    expect_file_error(f, " = 4\n", "1: missing key before '='");
    expect_file_error(f, "store.root = \"/x\n", "1: store.root: unterminated double quote");
    expect_file_error(f, "store.root = \"\n", "1: store.root: unterminated double quote");
    expect_file_error(f, "worker.concurrency = 8 # eight\n",
                      "1: worker.concurrency: \"8 # eight\" is not an integer (1..256)");
}

static void test_file_nul_byte(void **state)
{
    fixture *f = *state;
    FILE *fp = fopen(f->path, "w");
    assert_non_null(fp);
    assert_int_equal(fwrite("store.root = /a\0b\n", 1, 18, fp), 18);
    assert_int_equal(fclose(fp), 0);
    mv_config c;
    mv_config_defaults(&c);
    char err[MV_ERRLEN] = "";
    assert_int_equal(mv_config_load_file(&c, f->path, err, sizeof err), MV_EINVAL);
    assert_non_null(strstr(err, ":1: line contains a NUL byte"));
    assert_string_equal(c.store_root, "/var/lib/mailvault/store");
}

static void test_file_missing(void **state)
{
    fixture *f = *state;
    mv_config c;
    mv_config_defaults(&c);
    char err[MV_ERRLEN] = "", want[MV_ERRLEN];
    char path[400];
    snprintf(path, sizeof path, "%s/does-not-exist.conf", f->dir);
    assert_int_equal(mv_config_load_file(&c, path, err, sizeof err), MV_ENOTFOUND);
    snprintf(want, sizeof want, "cannot open config file %s: %s", path, strerror(ENOENT));
    assert_string_equal(err, want);
    /* a directory opens but cannot be read */
    assert_int_equal(mv_config_load_file(&c, f->dir, err, sizeof err), MV_EIO);
    assert_non_null(strstr(err, f->dir));
}

/* ---- environment ---- */

static void test_env_every_key(void **state)
{
    (void)state;
    char err[MV_ERRLEN] = "", want[MV_ERRLEN];
    for (size_t i = 0; i < N(int_keys); i++) {
        mv_config c;
        mv_config_defaults(&c);
        char v[32];
        snprintf(v, sizeof v, "%lld", int_keys[i].max);
        assert_int_equal(setenv(int_keys[i].env, v, 1), 0);
        assert_int_equal(mv_config_load_env(&c, err, sizeof err), MV_OK);
        assert_true(get_int(&c, int_keys[i].key) == int_keys[i].max);

        assert_int_equal(setenv(int_keys[i].env, "nope", 1), 0);
        assert_int_equal(mv_config_load_env(&c, err, sizeof err), MV_EINVAL);
        snprintf(want, sizeof want,
                 "environment variable %s: %s: \"nope\" is not an integer (%lld..%lld)",
                 int_keys[i].env, int_keys[i].key, int_keys[i].min, int_keys[i].max);
        assert_string_equal(err, want);
        assert_int_equal(unsetenv(int_keys[i].env), 0);
    }
    for (size_t i = 0; i < N(str_keys); i++) {
        mv_config c;
        mv_config_defaults(&c);
        assert_int_equal(setenv(str_keys[i].env, "from-env", 1), 0);
        assert_int_equal(mv_config_load_env(&c, err, sizeof err), MV_OK);
        assert_string_equal((char *)&c + str_keys[i].off, "from-env");
        assert_int_equal(unsetenv(str_keys[i].env), 0);
    }
    mv_config c;
    mv_config_defaults(&c);
    assert_int_equal(setenv("MAILVAULT_STORE_FSYNC", "object", 1), 0);
    assert_int_equal(setenv("MAILVAULT_LOG_LEVEL", "warn", 1), 0);
    assert_int_equal(mv_config_load_env(&c, err, sizeof err), MV_OK);
    assert_int_equal(c.store_fsync_each, 1);
    assert_int_equal(c.log_level, MV_LOG_WARN);
    assert_int_equal(setenv("MAILVAULT_LOG_LEVEL", "loud", 1), 0);
    assert_int_equal(mv_config_load_env(&c, err, sizeof err), MV_EINVAL);
    assert_string_equal(err, "environment variable MAILVAULT_LOG_LEVEL: log.level: \"loud\" is not "
                             "one of debug|info|warn|error");
}

static void test_env_none_set(void **state)
{
    (void)state;
    mv_config c, d;
    mv_config_defaults(&c);
    mv_config_defaults(&d);
    char err[MV_ERRLEN] = "";
    assert_int_equal(mv_config_load_env(&c, err, sizeof err), MV_OK);
    assert_memory_equal(&c, &d, sizeof c);
}

/* ---- precedence: defaults < file < environment ---- */

static void test_load_precedence(void **state)
{
    fixture *f = *state;
    write_file(f->path, "worker.concurrency = 9\nkafka.brokers = file:9092\nredis.port = 7000\n");
    assert_int_equal(setenv("MAILVAULT_WORKER_CONCURRENCY", "12", 1), 0);
    mv_config c;
    char err[MV_ERRLEN] = "";
    assert_int_equal(mv_config_load(&c, f->path, err, sizeof err), MV_OK);
    assert_int_equal(c.concurrency, 12);                   /* env beats file */
    assert_string_equal(c.kafka_brokers, "file:9092");     /* file beats default */
    assert_int_equal(c.redis_port, 7000);                  /* file */
    assert_string_equal(c.topic_tasks, "mailvault.tasks"); /* default */
}

static void test_load_config_env_path(void **state)
{
    fixture *f = *state;
    write_file(f->path, "worker.chunk_seconds = 30\n");
    assert_int_equal(setenv("MAILVAULT_CONFIG", f->path, 1), 0);
    mv_config c;
    char err[MV_ERRLEN] = "";
    assert_int_equal(mv_config_load(&c, NULL, err, sizeof err), MV_OK);
    assert_int_equal(c.chunk_seconds, 30);

    /* an explicit path wins over $MAILVAULT_CONFIG */
    char other[400];
    snprintf(other, sizeof other, "%s/other.conf", f->dir);
    write_file(other, "worker.chunk_seconds = 45\n");
    assert_int_equal(mv_config_load(&c, other, err, sizeof err), MV_OK);
    assert_int_equal(c.chunk_seconds, 45);
    unlink(other);

    /* $MAILVAULT_CONFIG naming a missing file is an error, not silently ignored */
    assert_int_equal(setenv("MAILVAULT_CONFIG", other, 1), 0);
    assert_int_equal(mv_config_load(&c, NULL, err, sizeof err), MV_ENOTFOUND);
    assert_non_null(strstr(err, other));

    /* no file at all: defaults + env */
    assert_int_equal(unsetenv("MAILVAULT_CONFIG"), 0);
    assert_int_equal(mv_config_load(&c, NULL, err, sizeof err), MV_OK);
    assert_int_equal(c.chunk_seconds, 60);
}

static void test_load_reports_file_then_env_errors(void **state)
{
    fixture *f = *state;
    write_file(f->path, "kafka.topic = same\nkafka.dlq_topic = same\n");
    mv_config c;
    char err[MV_ERRLEN] = "";
    assert_int_equal(mv_config_load(&c, f->path, err, sizeof err), MV_EINVAL);
    assert_string_equal(err, "kafka.dlq_topic: must differ from kafka.topic (both are \"same\")");
    /* env can fix what the file broke */
    assert_int_equal(setenv("MAILVAULT_KAFKA_DLQ_TOPIC", "same.dlq", 1), 0);
    assert_int_equal(mv_config_load(&c, f->path, err, sizeof err), MV_OK);
    assert_string_equal(c.topic_dlq, "same.dlq");
    assert_int_equal(setenv("MAILVAULT_REDIS_PORT", "0", 1), 0);
    assert_int_equal(mv_config_load(&c, f->path, err, sizeof err), MV_EINVAL);
    assert_string_equal(err, "environment variable MAILVAULT_REDIS_PORT: redis.port: \"0\" is out "
                             "of range (1..65535)");
}

/* ---- validate ---- */

static void expect_invalid(const mv_config *c, const char *want)
{
    char err[MV_ERRLEN] = "";
    assert_int_equal(mv_config_validate(c, err, sizeof err), MV_EINVAL);
    assert_string_equal(err, want);
}

static void test_validate(void **state)
{
    (void)state;
    mv_config c;
    mv_config_defaults(&c);
    c.kafka_brokers[0] = '\0';
    expect_invalid(&c, "kafka.brokers: must not be empty");

    mv_config_defaults(&c);
    c.topic_tasks[0] = '\0';
    expect_invalid(&c, "kafka.topic: \"\" is not a valid topic name (1..249 of [a-zA-Z0-9._-])");

    mv_config_defaults(&c);
    strcpy(c.topic_dlq, "bad topic");
    expect_invalid(&c, "kafka.dlq_topic: \"bad topic\" is not a valid topic name (1..249 of "
                       "[a-zA-Z0-9._-])");

    mv_config_defaults(&c);
    strcpy(c.topic_dlq, c.topic_tasks);
    expect_invalid(&c, "kafka.dlq_topic: must differ from kafka.topic (both are "
                       "\"mailvault.tasks\")");

    mv_config_defaults(&c);
    c.group[0] = '\0';
    expect_invalid(&c, "kafka.group: must not be empty");

    mv_config_defaults(&c);
    c.redis_host[0] = '\0';
    expect_invalid(&c, "redis.host: must not be empty");

    mv_config_defaults(&c);
    c.store_root[0] = '\0';
    expect_invalid(&c, "store.root: must not be empty");

    /* fields set from code are range-checked too */
    mv_config_defaults(&c);
    c.concurrency = 0;
    expect_invalid(&c, "worker.concurrency: 0 is out of range (1..256)");
    mv_config_defaults(&c);
    c.max_message_bytes = 5LL * 1024 * 1024 * 1024;
    expect_invalid(&c, "imap.max_message_bytes: 5368709120 is out of range (1024..4294967296)");
    mv_config_defaults(&c);
    c.log_level = 7;
    expect_invalid(&c, "log.level: 7 is out of range (0..3)");
    mv_config_defaults(&c);
    c.store_fsync_each = -1;
    expect_invalid(&c, "store.fsync: -1 is out of range (0..1)");

    mv_config_defaults(&c);
    memset(c.ca_file, 'a', sizeof c.ca_file);
    expect_invalid(&c, "tls.ca_file: value is not NUL-terminated");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_defaults, setup, teardown),
        cmocka_unit_test_setup_teardown(test_int_ranges, setup, teardown),
        cmocka_unit_test_setup_teardown(test_int_not_integer, setup, teardown),
        cmocka_unit_test_setup_teardown(test_int64_key, setup, teardown),
        cmocka_unit_test_setup_teardown(test_strings, setup, teardown),
        cmocka_unit_test_setup_teardown(test_enums, setup, teardown),
        cmocka_unit_test_setup_teardown(test_unknown_key, setup, teardown),
        cmocka_unit_test_setup_teardown(test_error_value_escaped, setup, teardown),
        cmocka_unit_test_setup_teardown(test_file_ok, setup, teardown),
        cmocka_unit_test_setup_teardown(test_file_errors, setup, teardown),
        cmocka_unit_test_setup_teardown(test_file_nul_byte, setup, teardown),
        cmocka_unit_test_setup_teardown(test_file_missing, setup, teardown),
        cmocka_unit_test_setup_teardown(test_env_every_key, setup, teardown),
        cmocka_unit_test_setup_teardown(test_env_none_set, setup, teardown),
        cmocka_unit_test_setup_teardown(test_load_precedence, setup, teardown),
        cmocka_unit_test_setup_teardown(test_load_config_env_path, setup, teardown),
        cmocka_unit_test_setup_teardown(test_load_reports_file_then_env_errors, setup, teardown),
        cmocka_unit_test_setup_teardown(test_validate, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

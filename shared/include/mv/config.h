/* config.h - the one configuration struct, filled from defaults, then a file, then the
 * environment, then validated (an error names the bad key).
 *
 * File format: one "key = value" per line, '#' comments, blank lines ignored. Keys are the
 * dotted names below. Environment: MAILVAULT_<KEY> with dots as underscores, upper case
 * (kafka.brokers -> MAILVAULT_KAFKA_BROKERS). The file path comes from the caller
 * (--config) or MAILVAULT_CONFIG; no file is fine (defaults + environment). */
#ifndef MV_CONFIG_H
#define MV_CONFIG_H

#include "mv/common.h"
#include <stdint.h>

typedef struct mv_config {
    char kafka_brokers[256];   /* kafka.brokers          default 127.0.0.1:9092 */
    char topic_tasks[128];     /* kafka.topic            default mailvault.tasks */
    char topic_dlq[128];       /* kafka.dlq_topic        default mailvault.tasks.dlq */
    char group[128];           /* kafka.group            default mailvault-workers */
    int partitions;            /* kafka.partitions       default 8 (used when creating topics) */
    char redis_host[128];      /* redis.host             default 127.0.0.1 */
    int redis_port;            /* redis.port             default 6379 */
    int redis_timeout_ms;      /* redis.timeout_ms       default 5000 */
    char store_root[512];      /* store.root             default /var/lib/mailvault/store */
    int store_fsync_each;      /* store.fsync            "chunk" (0, default) or "object" (1) */
    int zstd_level;            /* store.zstd_level       default 3 (1..19) */
    char master_key_file[512]; /* master_key_file        32 random bytes, hex or raw; required
                                  for commands that touch credentials */
    int concurrency;           /* worker.concurrency     default 4 tasks at once */
    int chunk_messages;        /* worker.chunk_messages  default 2000*/
    int chunk_seconds;         /* worker.chunk_seconds   default 60 */
    int max_attempts;          /* worker.max_attempts    default 5, then DLQ */
    int retry_base_ms;         /* worker.retry_base_ms   default 2000, doubled per attempt */
    int lease_ttl_ms;          /* worker.lease_ttl_ms    default 15000 */
    int imap_timeout_ms;       /* imap.timeout_ms        default 60000 per read/write */
    int64_t max_message_bytes; /* imap.max_message_bytes default 200 MiB (literal bound) */
    int max_line_bytes;        /* imap.max_line_bytes    default 1 MiB (response line bound) */
    char ca_file[512];         /* tls.ca_file            optional extra CA bundle */
    int log_level;             /* log.level              debug|info|warn|error, default info */
    /* Microsoft Graph: limits every worker keeps per mailbox (shared through Redis) */
    int graph_max_concurrent;  /* graph.max_concurrent  default 4 requests at once, 0 = off */
    int graph_window_requests; /* graph.window_requests default 10000 per window, 0 = off */
    int graph_window_seconds;  /* graph.window_seconds  default 600 */
    int graph_batch_size;      /* graph.batch_size      messages per $batch download, default
                                * 20 (Graph's maximum); 1 = one $value request each */
    int graph_limit_per_app;   /* graph.limit_scope     "mailbox" (0, default): per tenant and
                                  mailbox; "app" (1): per app registration and mailbox */
    /* Exchange Web Services: concurrency every worker keeps together (through Redis) */
    int ews_max_concurrent;         /* ews.max_concurrent          per mailbox, default 10 */
    int ews_account_max_concurrent; /* ews.account_max_concurrent  per service account or app
                                     * (Exchange's EWSMaxConcurrency), default 27 */
    int ews_sync_page;              /* ews.sync_page  SyncFolderItems MaxChangesReturned, 100 */
    int ews_get_batch;              /* ews.get_batch  items per GetItem request, default 10 */
    int export_append_batch;        /* export.append_batch  messages per MULTIAPPEND, default 50 */
    int host_max_connections; /* source.max_connections_per_host  tasks connected to one server
                               * host at once, cluster-wide, default 100, 0 = no cap */
    int sched_lease_ms;       /* scheduler.lease_ms  leader lease; a dead leader's successor takes
                               * over after at most this long, default 10000 */
    int sched_tick_ms;        /* scheduler.tick_ms   how often schedules are checked, default 500 */
    char api_listen[128];     /* api.listen  address:port of `mailvault serve`, 127.0.0.1:8080 */
} mv_config;

void mv_config_defaults(mv_config *c);
/* Apply one key=value. Unknown key or bad value -> MV_EINVAL naming the key. */
mv_err mv_config_set(mv_config *c, const char *key, const char *value, char *err, size_t errlen);
mv_err mv_config_load_file(mv_config *c, const char *path, char *err, size_t errlen);
mv_err mv_config_load_env(mv_config *c, char *err, size_t errlen);
mv_err mv_config_validate(const mv_config *c, char *err, size_t errlen);
/* defaults + file (path, or $MAILVAULT_CONFIG if path is NULL, or none) + env + validate. */
mv_err mv_config_load(mv_config *c, const char *path, char *err, size_t errlen);

#endif

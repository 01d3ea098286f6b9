/* metrics.c - the Prometheus text exposition (format 0.0.4) served at /metrics by
 * `mailvault serve`. Everything is read from Redis and Kafka at scrape time, so any number of
 * admin servers report the same figures, and a restart loses nothing: the counters live in
 * Redis (mv:metrics:{t}, moved by the workers in the same scripts as the work they count). */
#include "cli.h"

#include "mv/queue.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct tenant_metrics {
    long long archived, raw, stored, dedup, exported, exported_bytes, throttled;
    long long tasks[6]; /* queued running retrying done failed cancelled */
    FILE *errors;       /* "kind count" lines, printed later */
} tenant_metrics;

static const char *const states[] = {"queued", "running", "retrying",
                                     "done",   "failed",  "cancelled"};

/* A label value: backslash, double quote and newline escaped. */
static void label(FILE *f, const char *v)
{
    for (; *v; v++) {
        if (*v == '\\' || *v == '"')
            fprintf(f, "\\%c", *v);
        else if (*v == '\n')
            fputs("\\n", f);
        else
            fputc(*v, f);
    }
}

typedef struct scrape {
    mv_state *st;
    FILE *f;
    const char *tenant;
    tenant_metrics tm;
    int failed;
} scrape;

static int metric_field(void *ud, const char *k, const char *v)
{
    scrape *s = ud;
    long long n = atoll(v);
    if (!strcmp(k, "archived_messages")) s->tm.archived = n;
    if (!strcmp(k, "archived_bytes_raw")) s->tm.raw = n;
    if (!strcmp(k, "archived_bytes_stored")) s->tm.stored = n;
    if (!strcmp(k, "archived_deduplicated")) s->tm.dedup = n;
    if (!strcmp(k, "exported_messages")) s->tm.exported = n;
    if (!strcmp(k, "exported_bytes")) s->tm.exported_bytes = n;
    if (!strcmp(k, "throttled")) s->tm.throttled = n;
    if (!strncmp(k, "errors:", 7) && s->tm.errors) fprintf(s->tm.errors, "%s\t%lld\n", k + 7, n);
    return 0;
}

static int state_field(void *ud, const char *k, const char *v)
{
    scrape *s = ud;
    if (strcmp(k, "state") != 0) return 0;
    for (size_t i = 0; i < sizeof states / sizeof *states; i++)
        if (!strcmp(v, states[i])) s->tm.tasks[i]++;
    return 0;
}

static int mailbox_state(void *ud, const char *mailbox)
{
    scrape *s = ud;
    char err[MV_ERRLEN];
    if (mv_state_status_get(s->st, s->tenant, mailbox, state_field, s, err, sizeof err))
        s->failed = 1;
    return 0;
}

/* Per tenant, the lines of every family go to the family's own stream so that each family is
 * printed as one group (the exposition format wants a family's samples together). */
enum { F_ARCH, F_BYTES, F_DEDUP, F_EXP, F_EXPB, F_THR, F_ERR, F_TASKS, F_WAIT, F_INFL, F_N };

static const char *const family_head[F_N] = {
    "# HELP mailvault_archived_messages_total Messages archived (all runs), per tenant.\n"
    "# TYPE mailvault_archived_messages_total counter\n",
    "# HELP mailvault_archived_bytes_total Bytes archived, raw (as fetched) and stored "
    "(compressed, new objects only).\n"
    "# TYPE mailvault_archived_bytes_total counter\n",
    "# HELP mailvault_deduplicated_messages_total Messages found already in the store.\n"
    "# TYPE mailvault_deduplicated_messages_total counter\n",
    "# HELP mailvault_exported_messages_total Messages written by export tasks.\n"
    "# TYPE mailvault_exported_messages_total counter\n",
    "# HELP mailvault_exported_bytes_total Bytes written by export tasks.\n"
    "# TYPE mailvault_exported_bytes_total counter\n",
    "# HELP mailvault_throttle_events_total Throttling answers waited out (429/503, "
    "ErrorServerBusy).\n"
    "# TYPE mailvault_throttle_events_total counter\n",
    "# HELP mailvault_task_errors_total Failed task attempts by error kind.\n"
    "# TYPE mailvault_task_errors_total counter\n",
    "# HELP mailvault_tasks Mailboxes by the state of their latest task.\n"
    "# TYPE mailvault_tasks gauge\n",
    "# HELP mailvault_fair_waiting_tasks Tasks waiting in the tenant's fair queue (not yet on "
    "Kafka).\n"
    "# TYPE mailvault_fair_waiting_tasks gauge\n",
    "# HELP mailvault_fair_inflight_tasks The tenant's mailboxes dispatched to Kafka and not yet "
    "ended (its share of the workers).\n"
    "# TYPE mailvault_fair_inflight_tasks gauge\n",
};

typedef struct families {
    FILE *f[F_N];
    char *buf[F_N];
    size_t len[F_N];
} families;

static int tenant_metrics_cb(void *ud, const char *tenant)
{
    void **pair = ud;
    scrape *s = pair[0];
    families *fa = pair[1];
    char err[MV_ERRLEN], *ebuf = NULL;
    size_t elen = 0;
    memset(&s->tm, 0, sizeof s->tm);
    s->tenant = tenant;
    s->tm.errors = open_memstream(&ebuf, &elen);
    if (mv_state_metrics_get(s->st, tenant, metric_field, s, err, sizeof err)) s->failed = 1;
    if (mv_state_mailbox_list(s->st, tenant, mailbox_state, s, err, sizeof err)) s->failed = 1;
    if (s->tm.errors) fclose(s->tm.errors);
    s->tm.errors = NULL;
    const tenant_metrics *m = &s->tm;
    fprintf(fa->f[F_ARCH], "mailvault_archived_messages_total{tenant=\"%s\"} %lld\n", tenant,
            m->archived);
    fprintf(fa->f[F_BYTES], "mailvault_archived_bytes_total{tenant=\"%s\",kind=\"raw\"} %lld\n",
            tenant, m->raw);
    fprintf(fa->f[F_BYTES], "mailvault_archived_bytes_total{tenant=\"%s\",kind=\"stored\"} %lld\n",
            tenant, m->stored);
    fprintf(fa->f[F_DEDUP], "mailvault_deduplicated_messages_total{tenant=\"%s\"} %lld\n", tenant,
            m->dedup);
    fprintf(fa->f[F_EXP], "mailvault_exported_messages_total{tenant=\"%s\"} %lld\n", tenant,
            m->exported);
    fprintf(fa->f[F_EXPB], "mailvault_exported_bytes_total{tenant=\"%s\"} %lld\n", tenant,
            m->exported_bytes);
    fprintf(fa->f[F_THR], "mailvault_throttle_events_total{tenant=\"%s\"} %lld\n", tenant,
            m->throttled);
    for (char *line = ebuf, *next; line && *line; line = next) {
        next = strchr(line, '\n');
        if (next) *next++ = '\0';
        char *tab = strchr(line, '\t');
        if (!tab) break;
        *tab = '\0';
        fprintf(fa->f[F_ERR], "mailvault_task_errors_total{tenant=\"%s\",kind=\"", tenant);
        label(fa->f[F_ERR], line);
        fprintf(fa->f[F_ERR], "\"} %s\n", tab + 1);
        if (!next) break;
    }
    free(ebuf);
    for (size_t i = 0; i < sizeof states / sizeof *states; i++)
        fprintf(fa->f[F_TASKS], "mailvault_tasks{tenant=\"%s\",state=\"%s\"} %lld\n", tenant,
                states[i], m->tasks[i]);
    int64_t waiting = 0, inflight = 0;
    if (mv_state_fair_counts(s->st, tenant, &waiting, &inflight, err, sizeof err)) s->failed = 1;
    fprintf(fa->f[F_WAIT], "mailvault_fair_waiting_tasks{tenant=\"%s\"} %lld\n", tenant,
            (long long)waiting);
    fprintf(fa->f[F_INFL], "mailvault_fair_inflight_tasks{tenant=\"%s\"} %lld\n", tenant,
            (long long)inflight);
    return 0;
}

typedef struct hist {
    long long le[32], count, sum;
    long long bound[32];
    int n;
} hist;

static int hist_field(void *ud, const char *k, const char *v)
{
    hist *h = ud;
    if (!strcmp(k, "count")) h->count = atoll(v);
    if (!strcmp(k, "sum")) h->sum = atoll(v);
    if (!strncmp(k, "le_", 3) && h->n < 32) {
        long long b = atoll(k + 3);
        int i = h->n++;
        while (i > 0 && h->bound[i - 1] > b) { /* keep them sorted by bound */
            h->bound[i] = h->bound[i - 1];
            h->le[i] = h->le[i - 1];
            i--;
        }
        h->bound[i] = b;
        h->le[i] = atoll(v);
    }
    return 0;
}

typedef struct workers {
    FILE *up, *seen, *busy, *cap;
    int alive;
    long long now;
} workers;

static int worker_cb(void *ud, const char *worker, int64_t seen_ms, int busy, int capacity)
{
    workers *w = ud;
    /* a worker writes every second; three missed beats and it counts as gone */
    int up = w->now - seen_ms < 5000;
    w->alive += up;
    FILE *fs[] = {w->up, w->seen, w->busy, w->cap};
    const char *names[] = {"mailvault_worker_up", "mailvault_worker_last_seen_seconds",
                           "mailvault_worker_busy_tasks", "mailvault_worker_capacity_tasks"};
    for (int i = 0; i < 4; i++) {
        fprintf(fs[i], "%s{worker=\"", names[i]);
        label(fs[i], worker);
        fputs("\"} ", fs[i]);
    }
    fprintf(w->up, "%d\n", up);
    fprintf(w->seen, "%.3f\n", (double)seen_ms / 1000.0);
    fprintf(w->busy, "%d\n", busy);
    fprintf(w->cap, "%d\n", capacity);
    return 0;
}

static void copy_stream(FILE *out, FILE *in, char **buf, size_t *len)
{
    fclose(in);
    if (out && *buf) fwrite(*buf, 1, *len, out);
    free(*buf);
}

char *api_metrics(mv_state *st, const mv_config *cfg, size_t *len)
{
    char *out = NULL, err[MV_ERRLEN];
    FILE *f = open_memstream(&out, len);
    if (!f) return NULL;
    scrape s = {.st = st, .f = f};
    families fa;
    memset(&fa, 0, sizeof fa);
    for (int i = 0; i < F_N; i++)
        if (!(fa.f[i] = open_memstream(&fa.buf[i], &fa.len[i]))) s.failed = 1;
    void *pair[2] = {&s, &fa};
    int ntenants = 0;
    if (!s.failed && mv_state_tenant_list(st, tenant_metrics_cb, pair, err, sizeof err))
        s.failed = 1;
    for (int i = 0; i < F_N; i++) {
        if (!fa.f[i]) continue;
        fflush(fa.f[i]);
        if (i == F_ARCH)
            for (size_t k = 0; k < fa.len[i]; k++)
                ntenants += fa.buf[i][k] == '\n';
        fputs(family_head[i], f);
        copy_stream(f, fa.f[i], &fa.buf[i], &fa.len[i]);
    }
    fprintf(f,
            "# HELP mailvault_tenants Tenants in the catalog.\n# TYPE mailvault_tenants "
            "gauge\nmailvault_tenants %d\n",
            ntenants);

    /* the task queue: consumer lag of the workers' group per partition */
    mv_lag lag;
    int kafka_up = mv_queue_lag(cfg, &lag, err, sizeof err) == MV_OK;
    if (kafka_up) {
        fputs("# HELP mailvault_consumer_lag Tasks not yet consumed by the workers' group.\n"
              "# TYPE mailvault_consumer_lag gauge\n",
              f);
        for (int i = 0; i < lag.partitions && i < 256; i++)
            fprintf(f, "mailvault_consumer_lag{topic=\"%s\",partition=\"%d\"} %lld\n",
                    cfg->topic_tasks, i, (long long)lag.per_partition[i]);
        fprintf(f,
                "# HELP mailvault_consumer_lag_total Tasks not yet consumed, all partitions.\n"
                "# TYPE mailvault_consumer_lag_total gauge\n"
                "mailvault_consumer_lag_total{topic=\"%s\"} %lld\n",
                cfg->topic_tasks, (long long)lag.total);
    }
    fprintf(f,
            "# HELP mailvault_kafka_up Whether the consumer lag could be read.\n"
            "# TYPE mailvault_kafka_up gauge\nmailvault_kafka_up %d\n",
            kafka_up);

    /* chunk latency: the time one task spends on a mailbox */
    hist h;
    memset(&h, 0, sizeof h);
    if (mv_state_histogram_get(st, "chunk_ms", hist_field, &h, err, sizeof err)) s.failed = 1;
    fputs("# HELP mailvault_chunk_duration_seconds Time one task (chunk) spends on a mailbox.\n"
          "# TYPE mailvault_chunk_duration_seconds histogram\n",
          f);
    for (int i = 0; i < h.n; i++)
        fprintf(f, "mailvault_chunk_duration_seconds_bucket{le=\"%g\"} %lld\n",
                (double)h.bound[i] / 1000.0, h.le[i]);
    fprintf(f, "mailvault_chunk_duration_seconds_bucket{le=\"+Inf\"} %lld\n", h.count);
    fprintf(f, "mailvault_chunk_duration_seconds_sum %.3f\n", (double)h.sum / 1000.0);
    fprintf(f, "mailvault_chunk_duration_seconds_count %lld\n", h.count);

    /* worker liveness */
    char *wb[4] = {0};
    size_t wl[4] = {0};
    workers w = {.now = mv_now_ms()};
    w.up = open_memstream(&wb[0], &wl[0]);
    w.seen = open_memstream(&wb[1], &wl[1]);
    w.busy = open_memstream(&wb[2], &wl[2]);
    w.cap = open_memstream(&wb[3], &wl[3]);
    if (w.up && w.seen && w.busy && w.cap) {
        if (mv_state_worker_list(st, worker_cb, &w, err, sizeof err)) s.failed = 1;
        const char *heads[] = {
            "# HELP mailvault_worker_up 1 if the worker wrote its heartbeat in the last 5 s.\n"
            "# TYPE mailvault_worker_up gauge\n",
            "# HELP mailvault_worker_last_seen_seconds Unix time of the worker's last "
            "heartbeat.\n# TYPE mailvault_worker_last_seen_seconds gauge\n",
            "# HELP mailvault_worker_busy_tasks Tasks the worker holds.\n"
            "# TYPE mailvault_worker_busy_tasks gauge\n",
            "# HELP mailvault_worker_capacity_tasks Tasks the worker runs at once.\n"
            "# TYPE mailvault_worker_capacity_tasks gauge\n"};
        FILE *ws[] = {w.up, w.seen, w.busy, w.cap};
        for (int i = 0; i < 4; i++) {
            fflush(ws[i]);
            fputs(heads[i], f);
            copy_stream(f, ws[i], &wb[i], &wl[i]);
        }
        fprintf(f,
                "# HELP mailvault_workers_alive Workers with a heartbeat in the last 5 s.\n"
                "# TYPE mailvault_workers_alive gauge\nmailvault_workers_alive %d\n",
                w.alive);
    } else {
        FILE *ws[] = {w.up, w.seen, w.busy, w.cap};
        for (int i = 0; i < 4; i++)
            if (ws[i]) copy_stream(NULL, ws[i], &wb[i], &wl[i]);
        s.failed = 1;
    }
    fclose(f);
    if (s.failed) {
        free(out);
        return NULL;
    }
    return out;
}

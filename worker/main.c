/* mailvault-worker - a member of the workers' consumer group.
 *
 * The main thread owns the Kafka consumer: it polls continuously (so the group never sees
 * this member as stuck, however long a mailbox takes), hands each task to a pool of runner
 * threads, and commits a task's offset once the runner reports its outcome durable. While a
 * task runs its partition is paused, so offsets are committed in order and one mailbox (one
 * key, one partition) never runs twice in this process. SIGTERM/SIGINT: stop taking tasks,
 * let running ones finish their current folder range, commit, leave the group, exit 0. */
#include "runner.h"

#include "mv/jobs.h"
#include "mv/log.h"
#include "mv/storecat.h"

#include <errno.h>
#include <getopt.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static volatile sig_atomic_t stopping = 0;

static void on_signal(int sig)
{
    (void)sig;
    if (stopping) _exit(130); /* second signal: leave now; unrecorded work is redone elsewhere */
    stopping = 1;
}

typedef struct job {
    mv_qmsg msg;
    int state; /* 0 free, 1 queued, 2 running, 3 finished */
    mv_err rc;
    mv_run_outcome outcome;
    char err[MV_ERRLEN];
} job;

typedef struct pool {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    job *jobs;
    int njobs;
    int quit;
} pool;

typedef struct thread_arg {
    pool *pl;
    mv_runner runner;
} thread_arg;

static void *runner_thread(void *arg)
{
    thread_arg *ta = arg;
    pool *pl = ta->pl;
    pthread_mutex_lock(&pl->mu);
    for (;;) {
        job *j = NULL;
        for (int i = 0; i < pl->njobs && !j; i++)
            if (pl->jobs[i].state == 1) j = &pl->jobs[i];
        if (!j) {
            if (pl->quit) break;
            pthread_cond_wait(&pl->cv, &pl->mu);
            continue;
        }
        j->state = 2;
        pthread_mutex_unlock(&pl->mu);
        char err[MV_ERRLEN] = "";
        mv_run_outcome oc = MV_RUN_DEAD;
        mv_err rc = mv_runner_execute(&ta->runner, j->msg.value, j->msg.len, &oc, err, sizeof err);
        pthread_mutex_lock(&pl->mu);
        j->rc = rc;
        j->outcome = oc;
        snprintf(j->err, sizeof j->err, "%s", err);
        j->state = 3;
    }
    pthread_mutex_unlock(&pl->mu);
    return NULL;
}

static void usage(FILE *f)
{
    fprintf(f, "usage: mailvault-worker [--config FILE] [--id NAME] [--concurrency N]\n"
               "\n"
               "Joins the workers' consumer group and archives the mailboxes of the tasks it\n"
               "is given. Configuration: see docs/configuration.md (file, then MAILVAULT_*\n"
               "environment variables). SIGTERM: finish the folder range in progress, record\n"
               "it, leave the group and exit 0; a second SIGTERM exits at once.\n"
               "\n"
               "  --config FILE       configuration file (default: $MAILVAULT_CONFIG)\n"
               "  --id NAME           worker id shown in status (default: host-pid)\n"
               "  --concurrency N     tasks run at once (overrides worker.concurrency)\n"
               "  --help              this text\n");
}

/* Fair dispatch: every FAIR_TICK_MS, or at once while a full batch came back. The Kafka
 * backlog is kept at FAIR_FACTOR x the live workers' capacity. */
#define FAIR_TICK_MS 100
#define FAIR_FACTOR 2

typedef struct fair_ud {
    mv_producer *pr;
    const mv_config *cfg;
} fair_ud;

static int fair_send(void *ud, const char *tenant, const char *mailbox, const void *payload,
                     size_t len)
{
    fair_ud *f = ud;
    char key[512], err[MV_ERRLEN];
    snprintf(key, sizeof key, "%s/%s", tenant, mailbox);
    if (mv_producer_send(f->pr, f->cfg->topic_tasks, key, payload, len, err, sizeof err)) {
        mv_warn("cannot dispatch a task", " tenant=%s mailbox=%s error=\"%s\"", tenant, mailbox,
                err);
        return 1;
    }
    return 0;
}

static int fair_flush(void *ud)
{
    fair_ud *f = ud;
    char err[MV_ERRLEN];
    if (mv_producer_flush(f->pr, 30000, err, sizeof err)) {
        mv_warn("dispatched tasks not acknowledged", " error=\"%s\"", err);
        return 1;
    }
    return 0;
}

int main(int argc, char **argv)
{
    const char *cfgpath = NULL;
    char worker_id[128] = "";
    const char *conc = NULL;
    static const struct option opts[] = {{"config", required_argument, 0, 'c'},
                                         {"id", required_argument, 0, 'i'},
                                         {"concurrency", required_argument, 0, 'n'},
                                         {"help", no_argument, 0, 'h'},
                                         {0, 0, 0, 0}};
    int o;
    while ((o = getopt_long(argc, argv, "c:i:n:h", opts, NULL)) != -1) {
        switch (o) {
        case 'c':
            cfgpath = optarg;
            break;
        case 'i':
            snprintf(worker_id, sizeof worker_id, "%s", optarg);
            break;
        case 'n':
            conc = optarg;
            break;
        case 'h':
            usage(stdout);
            return 0;
        default:
            usage(stderr);
            return 2;
        }
    }
    if (optind != argc) {
        usage(stderr);
        return 2;
    }
    mv_log_set_component("worker");
    char err[MV_ERRLEN];
    mv_config cfg;
    if (mv_config_load(&cfg, cfgpath, err, sizeof err) ||
        (conc && mv_config_set(&cfg, "worker.concurrency", conc, err, sizeof err))) {
        fprintf(stderr, "mailvault-worker: %s\n", err);
        return 2;
    }
    mv_log_set_level((mv_log_level)cfg.log_level);
    if (!worker_id[0]) {
        char host[64] = "worker";
        gethostname(host, sizeof host - 1);
        snprintf(worker_id, sizeof worker_id, "%s-%d", host, (int)getpid());
    }
    if (!cfg.master_key_file[0]) {
        fprintf(stderr, "mailvault-worker: master_key_file is not configured\n");
        return 2;
    }
    unsigned char key[MV_KEY_LEN];
    if (mv_crypt_load_key(cfg.master_key_file, key, err, sizeof err)) {
        fprintf(stderr, "mailvault-worker: %s\n", err);
        return 2;
    }
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);

    int status = 1;
    mv_store *store = NULL;
    mv_consumer *cons = NULL;
    mv_producer *pumper = NULL;
    mv_state *pst = NULL;
    mv_storecat_ctx catx;
    memset(&catx, 0, sizeof catx);
    int n = cfg.concurrency;
    pool pl = {.mu = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER};
    thread_arg *tas = calloc((size_t)n, sizeof *tas);
    pthread_t *th = calloc((size_t)n, sizeof *th);
    int started = 0;
    /* Each held partition has at most one job, running or waiting; the table is sized for
     * the most partitions this member can be assigned. */
    pl.njobs = (cfg.partitions > 256 ? cfg.partitions : 256) + n;
    pl.jobs = calloc((size_t)pl.njobs, sizeof *pl.jobs);
    if (!tas || !th || !pl.jobs) goto out;

    if (mv_store_open(cfg.store_root, cfg.store_fsync_each, cfg.zstd_level, &store, err,
                      sizeof err) ||
        mv_queue_ensure_topics(&cfg, err, sizeof err) ||
        mv_state_connect(&cfg, &pst, err, sizeof err) ||
        mv_state_connect(&cfg, &catx.st, err, sizeof err) ||
        mv_producer_new(&cfg, &pumper, err, sizeof err)) {
        mv_error("start-up failed", " error=\"%s\"", err);
        goto out;
    }
    /* each tenant's store, keys and retention come from the catalog (docs/store.md) */
    memcpy(catx.master, key, sizeof catx.master);
    catx.has_master = 1;
    mv_store_set_policy(store, mv_storecat_policy, &catx, 60000);
    /* chunk mode: S3 uploads overlap, and the chunk waits for them before its checkpoint */
    if (!cfg.store_fsync_each) mv_store_set_async(store, 1);
    /* what dead writers left: temp files, unfinished S3 multipart uploads (all stores) */
    int stale = 0;
    if (mv_storecat_sweep_all(catx.st, key, store, 3600, &stale, err, sizeof err))
        mv_warn("cannot sweep the stores", " error=\"%s\"", err);
    else if (stale)
        mv_info("removed leftovers of crashed writers", " count=%d", stale);
    for (int i = 0; i < n; i++) {
        mv_runner *r = &tas[i].runner;
        tas[i].pl = &pl;
        r->cfg = &cfg;
        r->master_key = key;
        r->store = store;
        r->stopping = &stopping;
        snprintf(r->worker_id, sizeof r->worker_id, "%s", worker_id);
        /* One producer for all runners: librdkafka producers are thread-safe, and a shared
         * one keeps its connections and topic metadata warm for every thread. */
        r->pr = pumper;
        if (mv_state_connect(&cfg, &r->st, err, sizeof err)) {
            mv_error("start-up failed", " error=\"%s\"", err);
            goto out;
        }
    }
    for (; started < n; started++)
        if (pthread_create(&th[started], NULL, runner_thread, &tas[started])) goto out;
    if (mv_consumer_new(&cfg, worker_id, &cons, err, sizeof err)) {
        mv_error("cannot join the consumer group", " error=\"%s\"", err);
        goto out;
    }
    mv_info("worker started", " worker=%s group=%s topic=%s concurrency=%d", worker_id, cfg.group,
            cfg.topic_tasks, n);

    int64_t next_pump = 0, next_dispatch = 0, next_recover = 0;
    int fatal = 0;
    fair_ud fs = {pumper, &cfg};
    for (;;) {
        /* Collect finished jobs: commit their offsets and release their partitions. */
        int busy = 0;
        pthread_mutex_lock(&pl.mu);
        for (int i = 0; i < pl.njobs; i++) {
            job *j = &pl.jobs[i];
            if (stopping && j->state == 1) { /* never started: leave it uncommitted */
                mv_qmsg_free(&j->msg);
                memset(j, 0, sizeof *j);
                continue;
            }
            if (j->state != 3) {
                if (j->state) busy++;
                continue;
            }
            job done = *j;
            memset(j, 0, sizeof *j);
            next_dispatch = 0; /* a slot is free: dispatch at once rather than at the tick */
            pthread_mutex_unlock(&pl.mu);
            if (!done.rc && done.outcome == MV_RUN_ABANDONED) {
                /* Shutting down before it started: uncommitted, so the partition's next owner
                 * reads it again. The partition stays paused until we leave the group. */
            } else if (done.rc) {
                /* Nothing durable was recorded: leave the offset uncommitted; the task comes
                 * back after a restart or rebalance. Pause-release so others proceed. */
                mv_error("task outcome not recorded; offset left uncommitted",
                         " partition=%d offset=%lld error=\"%s\"", done.msg.partition,
                         (long long)done.msg.offset, done.err);
                stopping = 1;
                fatal = 1;
            } else if (mv_consumer_done(cons, done.msg.topic, done.msg.partition, done.msg.offset,
                                        err, sizeof err)) {
                mv_warn("offset commit failed", " partition=%d offset=%lld error=\"%s\"",
                        done.msg.partition, (long long)done.msg.offset, err);
            }
            mv_qmsg_free(&done.msg);
            pthread_mutex_lock(&pl.mu);
        }
        pthread_mutex_unlock(&pl.mu);
        if (stopping && busy == 0) break;

        if (!stopping && mv_mono_ms() >= next_pump) {
            int moved = 0;
            if (mv_state_delay_pump(pst, mv_now_ms(), 100, mv_jobs_requeue_delayed, pst, &moved,
                                    err, sizeof err))
                mv_warn("delayed-task pump failed", " error=\"%s\"", err);
            next_pump = mv_mono_ms() + 1000;
            /* liveness for /metrics and the dashboard: seen now, with its load */
            if (mv_state_worker_seen(pst, worker_id, busy, n, 0, err, sizeof err))
                mv_warn("cannot record liveness", " error=\"%s\"", err);
        }

        /* fair dispatch: move tasks from the tenants' queues in Redis onto Kafka, as much as
         * the live workers can take (docs/fairness.md); any worker may do it at any time */
        if (!stopping && mv_mono_ms() >= next_dispatch) {
            int nd = 0;
            if (mv_state_fair_dispatch(pst, mv_now_ms(), 64, FAIR_FACTOR, 3 * cfg.lease_ttl_ms,
                                       fair_send, fair_flush, &fs, &nd, err, sizeof err))
                mv_warn("fair dispatch failed", " error=\"%s\"", err);
            next_dispatch = mv_mono_ms() + (nd == 64 ? 0 : FAIR_TICK_MS);
        }
        if (!stopping && mv_mono_ms() >= next_recover) {
            int nr = 0;
            if (mv_state_fair_recover(pst, mv_now_ms() - 30000, fair_send, fair_flush, &fs, &nr,
                                      err, sizeof err))
                mv_warn("fair dispatch recovery failed", " error=\"%s\"", err);
            else if (nr)
                mv_warn("re-sent tasks whose dispatch was not confirmed", " count=%d", nr);
            next_recover = mv_mono_ms() + 10000;
        }

        mv_qmsg m;
        mv_err rc = mv_consumer_poll(cons, 20, &m, err, sizeof err);
        if (rc == MV_ETIMEDOUT) continue;
        if (rc) {
            mv_warn("consumer poll error", " error=\"%s\"", err);
            continue;
        }
        if (stopping) {
            /* Not started: it stays uncommitted and is redelivered to another member. */
            mv_qmsg_free(&m);
            continue;
        }
        mv_consumer_hold(cons, m.topic, m.partition);
        pthread_mutex_lock(&pl.mu);
        job *slot = NULL;
        for (int i = 0; i < pl.njobs && !slot; i++)
            if (pl.jobs[i].state == 0) slot = &pl.jobs[i];
        if (slot) {
            slot->msg = m;
            slot->state = 1;
            pthread_cond_signal(&pl.cv);
        }
        pthread_mutex_unlock(&pl.mu);
        if (!slot) { /* cannot happen with njobs >= partitions; be safe */
            mv_error("no job slot for task; leaving it uncommitted", " partition=%d", m.partition);
            mv_qmsg_free(&m);
        }
    }
    status = fatal ? 1 : 0;
    mv_info("worker stopping", " worker=%s", worker_id);
    if (mv_state_worker_seen(pst, worker_id, 0, n, 1, err, sizeof err))
        mv_warn("cannot record the stop", " error=\"%s\"", err);
out:
    pthread_mutex_lock(&pl.mu);
    pl.quit = 1;
    pthread_cond_broadcast(&pl.cv);
    pthread_mutex_unlock(&pl.mu);
    for (int i = 0; i < started; i++)
        pthread_join(th[i], NULL);
    mv_consumer_close(cons);
    for (int i = 0; tas && i < n; i++) {
        mv_state_close(tas[i].runner.st);
    }
    for (int i = 0; pl.jobs && i < pl.njobs; i++)
        if (pl.jobs[i].state) mv_qmsg_free(&pl.jobs[i].msg);
    mv_producer_destroy(pumper);
    mv_state_close(pst);
    mv_store_close(store);
    mv_state_close(catx.st);
    mv_crypt_wipe(catx.master, sizeof catx.master);
    mv_crypt_wipe(key, sizeof key);
    free(tas);
    free(th);
    free(pl.jobs);
    return status;
}

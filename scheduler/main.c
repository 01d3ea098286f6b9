/* mailvault-scheduler - turns profiles into tasks.
 *
 * "serve" runs until SIGTERM: any number of schedulers may serve at once; one holds the leader
 * lease in Redis and fires the profiles' schedules (sched.c), the others stand by and take over
 * within scheduler.lease_ms when it dies. Every scheduler also pumps delayed tasks (retries)
 * back onto Kafka when they are due; workers pump too, and pumping twice only duplicates a
 * task, which the mailbox lease and idempotent writes make harmless. "expand" enqueues one
 * profile now (the same as "mailvault run"); "status" shows the leader and the schedules. */
#include "sched.h"

#include "mv/cron.h"
#include "mv/jobs.h"
#include "mv/log.h"
#include "mv/task.h"

#include <inttypes.h>
#include <jansson.h>
#include <time.h>

#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

static volatile sig_atomic_t stopping = 0;

static void on_signal(int sig)
{
    (void)sig;
    stopping = 1;
}

static const char usage_text[] =
    "usage: mailvault-scheduler [--config FILE] COMMAND\n"
    "\n"
    "  expand --tenant T --profile P   enqueue one archive task per mailbox of the profile\n"
    "  serve [--id ID]                 until SIGTERM: fire the profiles' schedules while this\n"
    "                                  scheduler is the leader (several may serve; one leads),\n"
    "                                  and re-enqueue delayed tasks (retries) when due\n"
    "  status [--json]                 the leader and every schedule: last and next slot\n";

typedef struct status_walk {
    mv_state *st;
    int json;
    json_t *arr;
} status_walk;

static void iso(int64_t ms, char *out, size_t n)
{
    if (ms < 0) {
        snprintf(out, n, "-");
        return;
    }
    time_t t = (time_t)(ms / 1000);
    struct tm tm;
    gmtime_r(&t, &tm);
    strftime(out, n, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

static int status_one(void *ud, const char *tenant, const char *profile)
{
    status_walk *w = ud;
    char err[MV_ERRLEN], cur[64] = "", what[160] = "";
    mv_profile p;
    if (mv_jobs_profile_load(w->st, tenant, profile, &p, err, sizeof err)) return 0;
    mv_state_slot_get(w->st, tenant, profile, cur, sizeof cur, err, sizeof err);
    long long slot = -1;
    char state[16] = "";
    if (sscanf(cur, "%lld %15s", &slot, state) != 2) slot = -1;
    int64_t next = slot >= 0 ? mv_schedule_next(&p.schedule, slot) : -1;
    if (p.schedule.kind == MV_SCHED_CRON)
        snprintf(what, sizeof what, "cron \"%s\" %s", p.schedule.expr, p.schedule.tz);
    else
        snprintf(what, sizeof what, "every %s", p.schedule.every_text);
    if (w->json) {
        json_t *o = json_object();
        json_object_set_new(o, "tenant", json_string(tenant));
        json_object_set_new(o, "profile", json_string(profile));
        json_object_set_new(o, "schedule", json_string(what));
        json_object_set_new(o, "last_slot_ms", json_integer(slot));
        json_object_set_new(o, "state", json_string(state));
        json_object_set_new(o, "next_slot_ms", json_integer(next));
        json_array_append_new(w->arr, o);
    } else {
        char a[32], b[32];
        iso(slot, a, sizeof a);
        iso(next, b, sizeof b);
        printf("%-20s %-20s %-40s last %s (%s) next %s\n", tenant, profile, what, a,
               state[0] ? state : "not armed", b);
    }
    mv_profile_free(&p);
    return 0;
}

static int show_status(mv_state *st, int json)
{
    char err[MV_ERRLEN], leader[256];
    if (mv_state_leader_get(st, leader, sizeof leader, err, sizeof err)) {
        fprintf(stderr, "mailvault-scheduler: %s\n", err);
        return 1;
    }
    status_walk w = {st, json, json ? json_array() : NULL};
    if (!json) printf("leader: %s\n", leader[0] ? leader : "(none)");
    mv_err e = mv_state_sched_list(st, status_one, &w, err, sizeof err);
    if (json) {
        json_t *o = json_object();
        json_object_set_new(o, "leader", json_string(leader));
        json_object_set_new(o, "schedules", w.arr);
        char *text = json_dumps(o, JSON_INDENT(2));
        if (text) puts(text);
        free(text);
        json_decref(o);
    }
    if (e) {
        fprintf(stderr, "mailvault-scheduler: %s\n", err);
        return 1;
    }
    return 0;
}

int main(int argc, char **argv)
{
    const char *cfgpath = NULL, *tenant = NULL, *profile = NULL, *cmd = NULL, *id = NULL;
    int json = 0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            fputs(usage_text, stdout);
            return 0;
        } else if (strcmp(argv[i], "--config") == 0 && i + 1 < argc) {
            cfgpath = argv[++i];
        } else if (strcmp(argv[i], "--tenant") == 0 && i + 1 < argc) {
            tenant = argv[++i];
        } else if (strcmp(argv[i], "--profile") == 0 && i + 1 < argc) {
            profile = argv[++i];
        } else if (strcmp(argv[i], "--id") == 0 && i + 1 < argc) {
            id = argv[++i];
        } else if (strcmp(argv[i], "--json") == 0) {
            json = 1;
        } else if (!cmd && argv[i][0] != '-') {
            cmd = argv[i];
        } else {
            fprintf(stderr, "mailvault-scheduler: unexpected argument \"%s\"\n%s", argv[i],
                    usage_text);
            return 2;
        }
    }
    if (!cmd ||
        (strcmp(cmd, "expand") != 0 && strcmp(cmd, "serve") != 0 && strcmp(cmd, "status") != 0)) {
        fputs(usage_text, stderr);
        return 2;
    }
    mv_log_set_component("scheduler");
    char err[MV_ERRLEN];
    mv_config cfg;
    if (mv_config_load(&cfg, cfgpath, err, sizeof err)) {
        fprintf(stderr, "mailvault-scheduler: %s\n", err);
        return 2;
    }
    mv_log_set_level((mv_log_level)cfg.log_level);
    if (strcmp(cmd, "expand") == 0 && (!tenant || !profile || !mv_name_valid(tenant))) {
        fprintf(stderr, "mailvault-scheduler: expand needs --tenant T --profile P\n");
        return 2;
    }
    if (id && (!id[0] || strlen(id) > 100 || mv_has_ctl(id) || strchr(id, '|'))) {
        fprintf(stderr, "mailvault-scheduler: --id: 1-100 printable characters, no '|'\n");
        return 2;
    }
    mv_state *st = NULL;
    mv_producer *pr = NULL;
    int rc = 1;
    if (strcmp(cmd, "status") == 0) {
        if (mv_state_connect(&cfg, &st, err, sizeof err)) {
            fprintf(stderr, "mailvault-scheduler: %s\n", err);
            return 1;
        }
        rc = show_status(st, json);
        mv_state_close(st);
        return rc;
    }
    unsigned char key[MV_KEY_LEN];
    const unsigned char *kp = NULL;
    if (cfg.master_key_file[0]) {
        if (mv_crypt_load_key(cfg.master_key_file, key, err, sizeof err)) {
            fprintf(stderr, "mailvault-scheduler: %s\n", err);
            return 1;
        }
        kp = key;
    }
    if (mv_state_connect(&cfg, &st, err, sizeof err) ||
        mv_queue_ensure_topics(&cfg, err, sizeof err) ||
        mv_producer_new(&cfg, &pr, err, sizeof err)) {
        fprintf(stderr, "mailvault-scheduler: %s\n", err);
        goto out;
    }
    if (strcmp(cmd, "expand") == 0) {
        char run_id[37];
        int n = 0;
        mv_err e =
            mv_jobs_enqueue_profile(&cfg, st, pr, kp, tenant, profile, run_id, &n, err, sizeof err);
        if (e) {
            fprintf(stderr, "mailvault-scheduler: %s\n", err);
            goto out;
        }
        printf("run %s: %d tasks queued\n", run_id, n);
        rc = 0;
        goto out;
    }
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    sched sc = {.cfg = &cfg, .st = st, .pr = pr, .key = kp};
    if (id) {
        snprintf(sc.owner, sizeof sc.owner, "%s", id);
    } else {
        char host[64] = "host";
        gethostname(host, sizeof host - 1);
        snprintf(sc.owner, sizeof sc.owner, "%s:%d", host, (int)getpid());
    }
    mv_info("scheduler serving", " id=%s topic=%s lease_ms=%d", sc.owner, cfg.topic_tasks,
            cfg.sched_lease_ms);
    while (!stopping) {
        int64_t t0 = mv_mono_ms();
        sched_tick(&sc);
        int moved = 0;
        if (mv_state_delay_pump(st, mv_now_ms(), 100, mv_jobs_requeue_delayed, st, &moved, err,
                                sizeof err))
            mv_warn("delayed-task pump failed", " error=\"%s\"", err);
        else if (moved)
            mv_info("delayed tasks re-enqueued", " count=%d", moved);
        while (!stopping && mv_mono_ms() - t0 < cfg.sched_tick_ms)
            usleep(20 * 1000);
    }
    sched_resign(&sc);
    mv_info("scheduler stopping", " fired=%" PRIu64, sc.fired);
    rc = 0;
out:
    mv_crypt_wipe(key, sizeof key);
    mv_producer_destroy(pr);
    mv_state_close(st);
    return rc;
}

/* mailvault-scheduler - turns profiles into tasks.
 *
 * In this version it works on demand: "expand" enqueues one task per mailbox of a profile
 * (the same operation as "mailvault run"), and "serve" runs the delayed-task pump, moving
 * retries whose backoff has passed from the Redis sorted set back onto Kafka. Workers pump
 * too, so retries flow even without a scheduler; pumping twice only duplicates a task, which
 * the mailbox lease and idempotent writes make harmless. Cron schedules and leader election
 * come with the control-plane work. */
#include "mv/jobs.h"
#include "mv/log.h"
#include "mv/task.h"

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
    "  serve                           re-enqueue delayed tasks (retries) when they are due,\n"
    "                                  until SIGTERM\n";

typedef struct pump_ud {
    mv_producer *pr;
    const mv_config *cfg;
} pump_ud;

static int pump_cb(void *ud, const void *payload, size_t len)
{
    pump_ud *u = ud;
    char err[MV_ERRLEN], key[512];
    mv_task t;
    if (mv_task_decode(payload, len, &t, err, sizeof err)) return 0;
    mv_task_key(&t, key, sizeof key);
    if (mv_producer_send_sync(u->pr, u->cfg->topic_tasks, key, payload, len, 5000, err,
                              sizeof err)) {
        mv_warn("cannot re-enqueue delayed task", " error=\"%s\"", err);
        return 1;
    }
    return 0;
}

int main(int argc, char **argv)
{
    const char *cfgpath = NULL, *tenant = NULL, *profile = NULL, *cmd = NULL;
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
        } else if (!cmd && argv[i][0] != '-') {
            cmd = argv[i];
        } else {
            fprintf(stderr, "mailvault-scheduler: unexpected argument \"%s\"\n%s", argv[i],
                    usage_text);
            return 2;
        }
    }
    if (!cmd || (strcmp(cmd, "expand") != 0 && strcmp(cmd, "serve") != 0)) {
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
    mv_state *st = NULL;
    mv_producer *pr = NULL;
    int rc = 1;
    if (mv_state_connect(&cfg, &st, err, sizeof err) ||
        mv_queue_ensure_topics(&cfg, err, sizeof err) ||
        mv_producer_new(&cfg, &pr, err, sizeof err)) {
        fprintf(stderr, "mailvault-scheduler: %s\n", err);
        goto out;
    }
    if (strcmp(cmd, "expand") == 0) {
        char run_id[37];
        int n = 0;
        unsigned char key[MV_KEY_LEN];
        const unsigned char *kp = NULL;
        if (cfg.master_key_file[0]) {
            if (mv_crypt_load_key(cfg.master_key_file, key, err, sizeof err)) {
                fprintf(stderr, "mailvault-scheduler: %s\n", err);
                goto out;
            }
            kp = key;
        }
        mv_err e =
            mv_jobs_enqueue_profile(&cfg, st, pr, kp, tenant, profile, run_id, &n, err, sizeof err);
        mv_crypt_wipe(key, sizeof key);
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
    mv_info("scheduler serving", " topic=%s", cfg.topic_tasks);
    pump_ud ud = {pr, &cfg};
    while (!stopping) {
        int moved = 0;
        if (mv_state_delay_pump(st, mv_now_ms(), 100, pump_cb, &ud, &moved, err, sizeof err))
            mv_warn("delayed-task pump failed", " error=\"%s\"", err);
        else if (moved)
            mv_info("delayed tasks re-enqueued", " count=%d", moved);
        for (int i = 0; i < 10 && !stopping; i++)
            usleep(100 * 1000);
    }
    mv_info("scheduler stopping", "%s", "");
    rc = 0;
out:
    mv_producer_destroy(pr);
    mv_state_close(st);
    return rc;
}

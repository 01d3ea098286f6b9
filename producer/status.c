/* status.c - "mailvault status" and "run --wait": progress per tenant and mailbox from the
 * task status hashes in Redis, plus the workers' consumer lag from Kafka. */
#include "cli.h"

#include "mv/queue.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

typedef struct mbox_status {
    char tenant[64];
    char mailbox[256];
    char state[16], run[40], worker[128], folder[256], error[512], profile[64];
    long long messages, total, raw, stored, dedup, heartbeat, started, finished, queued;
    long long removed, throttled, deleted, skipped;
    int chunk, attempt;
} mbox_status;

typedef struct status_list {
    mbox_status *v;
    size_t n, cap;
    const char *tenant;
    mv_state *st;
    int failed;
} status_list;

static int field_cb(void *ud, const char *f, const char *v)
{
    mbox_status *m = ud;
#define S(name, dst)                                                                               \
    if (strcmp(f, name) == 0) snprintf(dst, sizeof dst, "%s", v)
#define N(name, dst)                                                                               \
    if (strcmp(f, name) == 0) dst = atoll(v)
    S("state", m->state);
    S("run", m->run);
    S("worker", m->worker);
    S("folder", m->folder);
    S("error", m->error);
    S("profile", m->profile);
    N("messages", m->messages);
    N("total_messages", m->total);
    N("bytes_raw", m->raw);
    N("bytes_stored", m->stored);
    N("deduplicated", m->dedup);
    N("heartbeat_ms", m->heartbeat);
    N("started_ms", m->started);
    N("finished_ms", m->finished);
    N("queued_ms", m->queued);
    N("removed", m->removed);
    N("throttled", m->throttled);
    N("deleted_at_source", m->deleted);
    N("skipped", m->skipped);
    if (strcmp(f, "chunk") == 0) m->chunk = atoi(v);
    if (strcmp(f, "attempt") == 0) m->attempt = atoi(v);
#undef S
#undef N
    return 0;
}

static int mailbox_cb(void *ud, const char *mailbox)
{
    status_list *l = ud;
    if (l->n == l->cap) {
        size_t nc = l->cap ? l->cap * 2 : 32;
        mbox_status *nv = realloc(l->v, nc * sizeof *nv);
        if (!nv) return 1;
        l->v = nv;
        l->cap = nc;
    }
    mbox_status *m = &l->v[l->n];
    memset(m, 0, sizeof *m);
    snprintf(m->tenant, sizeof m->tenant, "%s", l->tenant);
    snprintf(m->mailbox, sizeof m->mailbox, "%s", mailbox);
    char err[MV_ERRLEN];
    if (mv_state_status_get(l->st, l->tenant, mailbox, field_cb, m, err, sizeof err) == MV_OK)
        l->n++;
    return 0;
}

static int tenant_cb(void *ud, const char *tenant)
{
    status_list *l = ud;
    char err[MV_ERRLEN];
    l->tenant = tenant;
    if (mv_state_mailbox_list(l->st, tenant, mailbox_cb, l, err, sizeof err)) l->failed = 1;
    return 0;
}

static mv_err collect_err(mv_state *st, const char *tenant, status_list *l, char *err,
                          size_t errlen)
{
    l->n = 0;
    l->st = st;
    l->failed = 0;
    if (tenant) {
        if (!mv_state_tenant_exists(st, tenant))
            return mv_seterr(err, errlen, MV_ENOTFOUND, "tenant \"%s\" does not exist", tenant);
        tenant_cb(l, tenant);
    } else {
        mv_err e = mv_state_tenant_list(st, tenant_cb, l, err, errlen);
        if (e) return e;
    }
    return l->failed ? mv_seterr(err, errlen, MV_ESERVER, "cannot read status from Redis") : MV_OK;
}

static int collect(mv_state *st, const char *tenant, status_list *l)
{
    char err[MV_ERRLEN];
    return collect_err(st, tenant, l, err, sizeof err) ? cli_fail(1, "%s", err) : 0;
}

static void human(long long b, char *out, size_t len)
{
    const char *u[] = {"B", "KB", "MB", "GB", "TB"};
    double v = (double)b;
    int i = 0;
    while (v >= 1000 && i < 4) {
        v /= 1000;
        i++;
    }
    snprintf(out, len, i ? "%.1f %s" : "%.0f %s", v, u[i]);
}

static void print_table(const status_list *l, const mv_lag *lag, int lag_ok, FILE *f)
{
    long long now = (long long)mv_now_ms();
    const char *cur = "";
    for (size_t i = 0; i < l->n; i++) {
        const mbox_status *m = &l->v[i];
        if (strcmp(cur, m->tenant) != 0) {
            long long msgs = 0, raw = 0, stored = 0, throttled = 0;
            int done = 0, failed = 0, active = 0, n = 0;
            for (size_t j = i; j < l->n && strcmp(l->v[j].tenant, m->tenant) == 0; j++, n++) {
                msgs += l->v[j].total;
                raw += l->v[j].raw;
                stored += l->v[j].stored;
                throttled += l->v[j].throttled;
                done +=
                    strcmp(l->v[j].state, "done") == 0 || strcmp(l->v[j].state, "cancelled") == 0;
                failed += strcmp(l->v[j].state, "failed") == 0;
            }
            active = n - done - failed;
            char r[32], s[32], bar[48];
            human(raw, r, sizeof r);
            human(stored, s, sizeof s);
            /* [#########...........] the share of the tenant's mailboxes that have ended */
            int fill = n ? (done + failed) * 30 / n : 0;
            bar[0] = '[';
            for (int k = 0; k < 30; k++)
                bar[1 + k] = k < fill ? '#' : '.';
            snprintf(bar + 31, sizeof bar - 31, "] %3d%%", n ? (done + failed) * 100 / n : 0);
            fprintf(f,
                    "tenant %s %s\n  %d mailboxes (%d done, %d active, %d failed), %lld messages "
                    "archived; last runs: %s raw, %s stored, %lld throttling waits\n",
                    m->tenant, bar, n, done, active, failed, msgs, r, s, throttled);
            fprintf(f, "  %-28s %-9s %9s %9s %10s %10s %9s %-18s %s\n", "MAILBOX", "STATE",
                    "RUN MSGS", "TOTAL", "RAW", "STORED", "THROTTLED", "FOLDER", "WORKER / ERROR");
            cur = m->tenant;
        }
        char r[32], s[32], extra[700];
        human(m->raw, r, sizeof r);
        human(m->stored, s, sizeof s);
        if (m->error[0] && strcmp(m->state, "done") != 0)
            snprintf(extra, sizeof extra, "error: %s", m->error);
        else if (strcmp(m->state, "running") == 0)
            snprintf(extra, sizeof extra, "%s (heartbeat %llds ago)", m->worker,
                     (now - m->heartbeat) / 1000);
        else
            snprintf(extra, sizeof extra, "%s", m->worker);
        fprintf(f, "  %-28.28s %-9s %9lld %9lld %10s %10s %9lld %-18.18s %s\n", m->mailbox,
                m->state, m->messages, m->total, r, s, m->throttled, m->folder[0] ? m->folder : "-",
                extra);
    }
    if (lag_ok)
        fprintf(f, "queue: consumer lag %lld task(s) across %d partition(s)\n",
                (long long)lag->total, lag->partitions);
    else
        fprintf(f, "queue: consumer lag unavailable (Kafka unreachable)\n");
}

static json_t *status_json(const status_list *l, const mv_lag *lag, int lag_ok)
{
    json_t *root = json_object(), *arr = json_array();
    for (size_t i = 0; i < l->n; i++) {
        const mbox_status *m = &l->v[i];
        json_t *o = json_object();
        json_object_set_new(o, "tenant", json_string(m->tenant));
        json_object_set_new(o, "mailbox", json_string(m->mailbox));
        json_object_set_new(o, "state", json_string(m->state));
        json_object_set_new(o, "run", json_string(m->run));
        json_object_set_new(o, "worker", json_string(m->worker));
        json_object_set_new(o, "folder", json_string(m->folder));
        json_object_set_new(o, "error", json_string(m->error));
        json_object_set_new(o, "messages", json_integer(m->messages));
        json_object_set_new(o, "total_messages", json_integer(m->total));
        json_object_set_new(o, "bytes_raw", json_integer(m->raw));
        json_object_set_new(o, "bytes_stored", json_integer(m->stored));
        json_object_set_new(o, "deduplicated", json_integer(m->dedup));
        json_object_set_new(o, "removed_at_source", json_integer(m->removed));
        json_object_set_new(o, "throttled", json_integer(m->throttled));
        json_object_set_new(o, "deleted_at_source", json_integer(m->deleted));
        json_object_set_new(o, "skipped", json_integer(m->skipped));
        json_object_set_new(o, "chunk", json_integer(m->chunk));
        json_object_set_new(o, "attempt", json_integer(m->attempt));
        json_object_set_new(o, "heartbeat_ms", json_integer(m->heartbeat));
        json_object_set_new(o, "queued_ms", json_integer(m->queued));
        json_object_set_new(o, "started_ms", json_integer(m->started));
        json_object_set_new(o, "finished_ms", json_integer(m->finished));
        json_array_append_new(arr, o);
    }
    json_object_set_new(root, "mailboxes", arr);
    if (lag_ok) {
        json_t *q = json_object(), *pp = json_array();
        json_object_set_new(q, "total", json_integer(lag->total));
        for (int i = 0; i < lag->partitions && i < 256; i++)
            json_array_append_new(pp, json_integer(lag->per_partition[i]));
        json_object_set_new(q, "partitions", pp);
        json_object_set_new(root, "lag", q);
    } else {
        json_object_set_new(root, "lag", json_null());
    }
    return root;
}

static void print_json(const status_list *l, const mv_lag *lag, int lag_ok)
{
    json_t *root = status_json(l, lag, lag_ok);
    char *s = json_dumps(root, JSON_COMPACT);
    if (s) printf("%s\n", s);
    free(s);
    json_decref(root);
}

json_t *cli_status_json(mv_state *st, const mv_config *cfg, const char *tenant, mv_err *e,
                        char *err, size_t errlen)
{
    status_list l = {0};
    json_t *root = NULL;
    if ((*e = collect_err(st, tenant, &l, err, errlen)) == MV_OK) {
        mv_lag lag;
        char lerr[MV_ERRLEN];
        int lag_ok = mv_queue_lag(cfg, &lag, lerr, sizeof lerr) == MV_OK;
        root = status_json(&l, &lag, lag_ok);
    }
    free(l.v);
    return root;
}

int cmd_status(cli *c, int argc, char **argv)
{
    const char *tenant = NULL;
    int watch = 0;
    for (int i = 0; i < argc; i++) {
        if (strcmp(argv[i], "--tenant") == 0 && i + 1 < argc)
            tenant = argv[++i];
        else if (strcmp(argv[i], "--watch") == 0)
            watch = 1;
        else
            return cli_fail(2, "usage: mailvault status [--tenant T] [--watch] [--json]");
    }
    if (tenant && !mv_name_valid(tenant))
        return cli_fail(2, "tenant \"%s\" is not a valid name", tenant);
    mv_state *st = cli_state(c);
    if (!st) return 1;
    status_list l = {0};
    int rc = 0, tty = isatty(1);
    for (;;) {
        if ((rc = collect(st, tenant, &l))) break;
        mv_lag lag;
        char err[MV_ERRLEN];
        int lag_ok = mv_queue_lag(&c->cfg, &lag, err, sizeof err) == MV_OK;
        if (c->json) {
            print_json(&l, &lag, lag_ok);
        } else {
            if (watch && tty) fputs("\033[H\033[2J", stdout);
            if (l.n == 0) printf("no mailboxes have been queued yet\n");
            print_table(&l, &lag, lag_ok, stdout);
        }
        fflush(stdout);
        rc = 0;
        for (size_t i = 0; i < l.n; i++)
            if (strcmp(l.v[i].state, "failed") == 0) rc = 1;
        if (!watch) break;
        sleep(1);
    }
    free(l.v);
    mv_state_close(st);
    return rc;
}

int cli_wait_run(cli *c, mv_state *st, const char *tenant, const char *run_id, int timeout_s)
{
    (void)c;
    status_list l = {0};
    int tty = isatty(2), rc = 0;
    int64_t start = mv_mono_ms(), last_line = 0;
    for (;;) {
        if ((rc = collect(st, tenant, &l))) break;
        int total = 0, done = 0, failed = 0, cancelled = 0;
        long long msgs = 0, raw = 0;
        for (size_t i = 0; i < l.n; i++) {
            if (strcmp(l.v[i].run, run_id) != 0) continue;
            total++;
            done += strcmp(l.v[i].state, "done") == 0;
            failed += strcmp(l.v[i].state, "failed") == 0;
            cancelled += strcmp(l.v[i].state, "cancelled") == 0;
            msgs += l.v[i].messages;
            raw += l.v[i].raw;
        }
        int64_t now = mv_mono_ms();
        char r[32];
        human(raw, r, sizeof r);
        int finished = total > 0 && done + failed + cancelled == total;
        if (tty || finished || now - last_line >= 5000) {
            fprintf(stderr, "%s[%5.1fs] %d/%d mailboxes done, %d failed, %lld messages, %s%s",
                    tty ? "\r" : "", (double)(now - start) / 1000, done, total, failed, msgs, r,
                    tty && !finished ? "   " : "\n");
            last_line = now;
        }
        if (finished) {
            for (size_t i = 0; i < l.n; i++)
                if (strcmp(l.v[i].run, run_id) == 0 && strcmp(l.v[i].state, "failed") == 0)
                    fprintf(stderr, "mailvault: mailbox %s failed: %s\n", l.v[i].mailbox,
                            l.v[i].error);
            if (cancelled) fprintf(stderr, "mailvault: %d mailbox(es) cancelled\n", cancelled);
            rc = failed || cancelled ? 1 : 0;
            break;
        }
        if (timeout_s && now - start > (int64_t)timeout_s * 1000) {
            rc = cli_fail(3, "run %s not finished after %d s (%d/%d mailboxes done)", run_id,
                          timeout_s, done, total);
            break;
        }
        usleep(200 * 1000);
    }
    free(l.v);
    return rc;
}

/* Cancel the current run of a tenant's mailboxes: all of them, one profile's, or one mailbox.
 * Workers see it with their next heartbeat (within about a second): what is archived stays,
 * the task ends "cancelled", and queued continuations or retries of that run are dropped. */
mv_err cli_cancel(mv_state *st, const char *tenant, const char *profile, const char *mailbox,
                  int *n, char *err, size_t errlen)
{
    status_list l = {0};
    mv_err e = collect_err(st, tenant, &l, err, errlen);
    *n = 0;
    for (size_t i = 0; !e && i < l.n; i++) {
        const mbox_status *m = &l.v[i];
        if (mailbox && strcmp(m->mailbox, mailbox)) continue;
        if (profile && strcmp(m->profile, profile)) continue;
        if (strcmp(m->state, "queued") && strcmp(m->state, "running") &&
            strcmp(m->state, "retrying"))
            continue;
        if ((e = mv_state_cancel_set(st, tenant, m->mailbox, m->run, err, errlen))) break;
        (*n)++;
    }
    free(l.v);
    if (!e && !*n)
        e = mv_seterr(err, errlen, MV_ENOTFOUND,
                      "nothing to cancel: no queued or running task matches");
    return e;
}

int cmd_cancel(cli *c, int argc, char **argv)
{
    const char *tenant = NULL, *profile = NULL, *mailbox = NULL;
    for (int i = 0; i < argc; i++) {
        const char **dst = !strcmp(argv[i], "--tenant")    ? &tenant
                           : !strcmp(argv[i], "--profile") ? &profile
                           : !strcmp(argv[i], "--mailbox") ? &mailbox
                                                           : NULL;
        if (!dst || i + 1 >= argc)
            return cli_fail(2, "usage: mailvault cancel --tenant T [--profile P | --mailbox M]");
        *dst = argv[++i];
    }
    if (!tenant) return cli_fail(2, "--tenant is required");
    mv_state *st = cli_state(c);
    if (!st) return 1;
    int n = 0, rc = 0;
    char err[MV_ERRLEN];
    if (cli_cancel(st, tenant, profile, mailbox, &n, err, sizeof err))
        rc = cli_fail(1, "%s", err);
    else
        printf("cancel requested for %d mailbox%s of tenant %s\n", n, n == 1 ? "" : "es", tenant);
    mv_state_close(st);
    return rc;
}

/* ---- runs -------------------------------------------------------------------------------- */

typedef struct run_row {
    char id[40], profile[64];
    long long started_ms, slot_ms, ended_ms, messages, bytes_raw, bytes_stored, dedup;
    int tasks, busy, done, failed, cancelled;
} run_row;

typedef struct runs_walk {
    const char *profile, *run;
    int json, found;
    mv_state *st;
    run_row cur;
    json_t *arr;
} runs_walk;

static int run_ended(const run_row *r)
{
    return r->done + r->failed + r->cancelled >= r->tasks;
}

static void fmt_ms(long long ms, char out[32])
{
    time_t t = (time_t)(ms / 1000);
    struct tm tm;
    snprintf(out, 32, "-");
    if (ms > 0 && gmtime_r(&t, &tm)) strftime(out, 32, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

static int run_error_json(void *ud, const char *mailbox, const char *error)
{
    json_object_set_new(ud, mailbox, json_string(error));
    return 0;
}

static int run_error_text(void *ud, const char *mailbox, const char *error)
{
    (void)ud;
    printf("  %s: %s\n", mailbox, error);
    return 0;
}

static void run_emit(runs_walk *w)
{
    run_row *r = &w->cur;
    char err[MV_ERRLEN];
    if (!r->id[0] || (w->profile && strcmp(w->profile, r->profile) != 0) ||
        (w->run && strcmp(w->run, r->id) != 0))
        return;
    int ended = run_ended(r);
    if (ended && r->ended_ms == 0) r->ended_ms = r->started_ms; /* nothing was enqueued */
    w->found++;
    if (w->json) {
        json_t *o = json_object();
        json_object_set_new(o, "run", json_string(r->id));
        json_object_set_new(o, "profile", json_string(r->profile));
        json_object_set_new(o, "state", json_string(ended ? "finished" : "running"));
        json_object_set_new(o, "started_ms", json_integer(r->started_ms));
        json_object_set_new(o, "ended_ms", ended ? json_integer(r->ended_ms) : json_null());
        json_object_set_new(o, "tasks", json_integer(r->tasks));
        json_object_set_new(o, "done", json_integer(r->done));
        json_object_set_new(o, "failed", json_integer(r->failed));
        json_object_set_new(o, "cancelled", json_integer(r->cancelled));
        json_object_set_new(o, "messages", json_integer(r->messages));
        json_object_set_new(o, "bytes_raw", json_integer(r->bytes_raw));
        json_object_set_new(o, "bytes_stored", json_integer(r->bytes_stored));
        json_object_set_new(o, "deduplicated", json_integer(r->dedup));
        json_object_set_new(o, "trigger", json_string(r->slot_ms >= 0 ? "schedule" : "manual"));
        if (r->slot_ms >= 0) {
            json_object_set_new(o, "slot_ms", json_integer(r->slot_ms));
            json_object_set_new(o, "busy", json_integer(r->busy));
        }
        json_t *errors = json_object();
        if (r->failed + r->cancelled > 0)
            mv_state_run_errors(w->st, r->id, run_error_json, errors, err, sizeof err);
        json_object_set_new(o, "errors", errors);
        json_array_append_new(w->arr, o);
        return;
    }
    char started[32], endtxt[32], busy[16] = "-";
    fmt_ms(r->started_ms, started);
    fmt_ms(ended ? r->ended_ms : 0, endtxt);
    if (r->slot_ms >= 0) snprintf(busy, sizeof busy, "%d", r->busy);
    printf("%s\t%s\t%s\t%s\t%s\t%d\t%d\t%d\t%lld\t%lld\t%s\t%s\n", r->id, r->profile, started,
           endtxt, ended ? "finished" : "running", r->tasks, r->done, r->failed + r->cancelled,
           r->messages, r->bytes_raw, r->slot_ms >= 0 ? "schedule" : "manual", busy);
    if (w->run && r->failed + r->cancelled > 0)
        mv_state_run_errors(w->st, r->id, run_error_text, NULL, err, sizeof err);
}

static int run_field(void *ud, const char *run_id, const char *field, const char *value)
{
    runs_walk *w = ud;
    if (strcmp(w->cur.id, run_id) != 0) { /* the next run's first field */
        run_emit(w);
        memset(&w->cur, 0, sizeof w->cur);
        w->cur.slot_ms = -1;
        snprintf(w->cur.id, sizeof w->cur.id, "%s", run_id);
    }
    run_row *r = &w->cur;
    if (!strcmp(field, "profile")) snprintf(r->profile, sizeof r->profile, "%s", value);
    if (!strcmp(field, "started_ms")) r->started_ms = atoll(value);
    if (!strcmp(field, "ended_ms")) r->ended_ms = atoll(value);
    if (!strcmp(field, "slot_ms")) r->slot_ms = atoll(value);
    if (!strcmp(field, "tasks")) r->tasks = atoi(value);
    if (!strcmp(field, "busy")) r->busy = atoi(value);
    if (!strcmp(field, "done")) r->done = atoi(value);
    if (!strcmp(field, "failed")) r->failed = atoi(value);
    if (!strcmp(field, "cancelled")) r->cancelled = atoi(value);
    if (!strcmp(field, "messages")) r->messages = atoll(value);
    if (!strcmp(field, "bytes_raw")) r->bytes_raw = atoll(value);
    if (!strcmp(field, "bytes_stored")) r->bytes_stored = atoll(value);
    if (!strcmp(field, "deduplicated")) r->dedup = atoll(value);
    return 0;
}

json_t *cli_runs_json(mv_state *st, const char *tenant, const char *profile, const char *run,
                      mv_err *e, char *err, size_t errlen)
{
    runs_walk w = {.profile = profile, .run = run, .json = 1, .st = st, .arr = json_array()};
    w.cur.slot_ms = -1;
    if (!mv_state_tenant_exists(st, tenant))
        *e = mv_seterr(err, errlen, MV_ENOTFOUND, "tenant \"%s\" does not exist", tenant);
    else if ((*e = mv_state_run_list(st, tenant, run_field, &w, err, errlen)) == MV_OK)
        run_emit(&w);
    if (!*e && run && !w.found)
        *e = mv_seterr(err, errlen, MV_ENOTFOUND, "no run %s of tenant %s", run, tenant);
    if (*e) {
        json_decref(w.arr);
        return NULL;
    }
    return w.arr;
}

/* The runs of a tenant, oldest first: manual ones and those its schedules fired (with their
 * slot and the mailboxes skipped because their previous task was still busy). */
int cmd_runs(cli *c, int argc, char **argv)
{
    const char *tenant = NULL, *profile = NULL, *run = NULL;
    for (int i = 0; i < argc; i++) {
        const char **dst = !strcmp(argv[i], "--tenant")    ? &tenant
                           : !strcmp(argv[i], "--profile") ? &profile
                           : !strcmp(argv[i], "--run")     ? &run
                                                           : NULL;
        if (!dst || i + 1 >= argc)
            return cli_fail(2,
                            "usage: mailvault runs --tenant T [--profile P] [--run ID] [--json]");
        *dst = argv[++i];
    }
    if (!tenant) return cli_fail(2, "--tenant is required");
    mv_state *st = cli_state(c);
    if (!st) return 1;
    char err[MV_ERRLEN];
    mv_err e = MV_OK;
    if (c->json) {
        json_t *arr = cli_runs_json(st, tenant, profile, run, &e, err, sizeof err);
        char *text = arr ? json_dumps(arr, JSON_INDENT(2)) : NULL;
        if (text) puts(text);
        free(text);
        json_decref(arr);
        mv_state_close(st);
        return e ? cli_fail(1, "%s", err) : 0;
    }
    runs_walk w = {.profile = profile, .run = run, .st = st};
    w.cur.slot_ms = -1;
    printf("RUN\tPROFILE\tSTARTED\tENDED\tSTATE\tTASKS\tDONE\tERRORS\tMESSAGES\tBYTES\t"
           "TRIGGER\tBUSY\n");
    e = mv_state_run_list(st, tenant, run_field, &w, err, sizeof err);
    if (!e) run_emit(&w);
    mv_state_close(st);
    if (e) return cli_fail(1, "%s", err);
    if (run && !w.found) return cli_fail(1, "no run %s of tenant %s", run, tenant);
    return 0;
}

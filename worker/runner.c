/* runner.c - one archive task: a bounded chunk of one mailbox, from its source into the store.
 *
 * The task's life: decode, tenant check, lease with a fencing token, profile and sealed
 * credential, then the source connector (imap_source.c, graph_source.c) walks the mailbox in
 * batches with the shared commit protocol of chunk.c. The outcome (done, continuation task,
 * retry with backoff, dead-letter record) is made durable before the caller may commit the
 * Kafka offset. */
#include "chunk.h"

#include "mv/index.h"
#include "mv/jobs.h"
#include "mv/log.h"
#include "mv/profile.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define LEASE_POLL_MS 250

static mv_err send_task(mv_runner *r, const char *topic, const mv_task *t, char *err, size_t errlen)
{
    char *buf = NULL;
    size_t len = 0;
    char key[512];
    mv_err rc = mv_task_encode(t, &buf, &len, err, errlen);
    if (rc) return rc;
    mv_task_key(t, key, sizeof key);
    rc = mv_producer_send_sync(r->pr, topic, key, buf, len, 30000, err, errlen);
    free(buf);
    return rc;
}

/* Worth retrying: the transient classes of common.h, plus protocol errors (a connection that
 * went bad mid-response usually works on the next attempt; a server that always sends the same
 * garbage ends in the DLQ after max_attempts). Everything else (wrong password, missing
 * profile or credential, undecryptable credential, oversized message) cannot get better by
 * waiting and goes to the DLQ at once. */
static int permanent(mv_err e)
{
    return !(mv_err_transient(e) || e == MV_EPROTO);
}

/* Record a failure: retry with backoff, or the DLQ after max_attempts / a permanent error. */
static mv_err record_failure(mv_runner *r, const mv_task *t0, mv_err cause, const char *why,
                             int64_t min_delay_ms, mv_run_outcome *outcome, char *err,
                             size_t errlen)
{
    mv_task t = *t0;
    snprintf(t.last_error, sizeof t.last_error, "%s", why);
    char kind[64], merr[MV_ERRLEN];
    snprintf(kind, sizeof kind, "errors:%s", mv_strerror(cause));
    if (mv_state_metric_incr(r->st, t.tenant, kind, 1, merr, sizeof merr))
        mv_warn("cannot count the error", " error=\"%s\"", merr);
    char attempt[16], now[32];
    snprintf(now, sizeof now, "%lld", (long long)mv_now_ms());
    mv_err rc;
    if (!permanent(cause) && t.attempt + 1 < (uint32_t)r->cfg->max_attempts) {
        t.attempt++;
        int64_t backoff = (int64_t)r->cfg->retry_base_ms
                          << (t.attempt - 1 < 16 ? t.attempt - 1 : 16);
        if (backoff > 600000) backoff = 600000;
        if (backoff < min_delay_ms) backoff = min_delay_ms; /* e.g. Graph's Retry-After */
        t.not_before_ms = mv_now_ms() + backoff;
        char *buf = NULL;
        size_t len = 0;
        if ((rc = mv_task_encode(&t, &buf, &len, err, errlen))) return rc;
        rc = mv_state_delay_add(r->st, buf, len, t.not_before_ms, err, errlen);
        free(buf);
        /* its fair-share slot is given back while it waits; the pump queues it again */
        if (!rc) rc = mv_state_fair_release(r->st, t.tenant, t.mailbox, err, errlen);
        if (rc) return rc;
        snprintf(attempt, sizeof attempt, "%u", t.attempt);
        *outcome = MV_RUN_RETRY;
        mv_warn("task failed, will retry",
                " tenant=%s mailbox=%s task=%s attempt=%u backoff_ms=%lld error=\"%s\"", t.tenant,
                t.mailbox, t.id, t.attempt, (long long)backoff, why);
        return mv_state_status_set(r->st, t.tenant, t.mailbox, err, errlen, "state", "retrying",
                                   "attempt", attempt, "error", why, "heartbeat_ms", now, NULL);
    }
    if ((rc = send_task(r, r->cfg->topic_dlq, &t, err, errlen))) return rc;
    snprintf(attempt, sizeof attempt, "%u", t.attempt);
    *outcome = MV_RUN_DEAD;
    mv_error("task failed permanently, sent to the dead-letter topic",
             " tenant=%s mailbox=%s task=%s attempt=%u error=\"%s\"", t.tenant, t.mailbox, t.id,
             t.attempt, why);
    rc = mv_state_status_set(r->st, t.tenant, t.mailbox, err, errlen, "state", "failed", "attempt",
                             attempt, "error", why, "finished_ms", now, NULL);
    if (!rc)
        rc = mv_state_run_end(r->st, t.run_id, t.tenant, t.mailbox, "failed", why, err, errlen);
    if (!rc) rc = mv_state_fair_release(r->st, t.tenant, t.mailbox, err, errlen);
    return rc;
}

static mv_err acquire_lease(mv_runner *r, const mv_task *t, uint64_t *token, char *err,
                            size_t errlen)
{
    /* A crashed worker's lease expires after lease_ttl_ms; a live holder finishes its chunk.
     * Either way waiting a little longer than one TTL is enough in the normal case. */
    int64_t give_up = mv_mono_ms() + r->cfg->lease_ttl_ms + 5000;
    char holder[256];
    for (;;) {
        mv_err rc =
            mv_state_lease_acquire(r->st, t->tenant, t->mailbox, r->worker_id, r->cfg->lease_ttl_ms,
                                   token, holder, sizeof holder, err, errlen);
        if (rc != MV_EBUSY) return rc;
        if (mv_mono_ms() >= give_up || *r->stopping)
            return mv_seterr(err, errlen, MV_EBUSY, "mailbox lease is held by %s", holder);
        usleep(LEASE_POLL_MS * 1000);
    }
}

/* The server host a task connects to (lower case), or 0 for an export into a directory. */
static int source_host(const mv_profile *p, char *out, size_t outlen)
{
    const char *h = NULL, *end = NULL;
    if (p->source == MV_SOURCE_IMAP || (p->source == MV_SOURCE_EXPORT && p->exp_imap)) {
        h = p->host;
    } else if (p->source == MV_SOURCE_EWS || (p->source == MV_SOURCE_EXPORT && p->exp_ews)) {
        h = strstr(p->ews_url, "://");
        h = h ? h + 3 : p->ews_url;
        end = h + strcspn(h, ":/");
    } else if (p->source == MV_SOURCE_GRAPH) {
        h = strstr(p->graph_base, "://");
        h = h ? h + 3 : "graph.microsoft.com";
        end = h + strcspn(h, ":/");
    }
    if (!h || !*h) return 0;
    size_t n = end ? (size_t)(end - h) : strlen(h);
    if (n == 0 || n >= outlen) return 0;
    for (size_t i = 0; i < n; i++)
        out[i] = (char)((h[i] >= 'A' && h[i] <= 'Z') ? h[i] + 32 : h[i]);
    out[n] = '\0';
    return 1;
}

/* Take one of the host's connection slots (source.max_connections_per_host, cluster-wide in
 * Redis, held at most one chunk time plus two lease times). Polls for up to 5 s; then parks
 * the task in the delayed set for when a slot is expected, with the same attempt number (a
 * busy host is not the task's failure), and releases its fair-share slot. */
static mv_err host_acquire(mv_runner *r, const mv_task *t, const char *host, int *held, int *parked,
                           char *err, size_t errlen)
{
    char scope[320];
    snprintf(scope, sizeof scope, "host:%s", host);
    mv_limit lim = {.max_concurrent = r->cfg->host_max_connections,
                    .hold_ms = r->cfg->chunk_seconds * 1000 + 2 * r->cfg->lease_ttl_ms};
    int64_t give_up = mv_mono_ms() + 5000, wait = 0;
    for (;;) {
        int admitted = 0;
        mv_err rc =
            mv_state_limit_acquire(r->st, scope, t->id, &lim, &admitted, &wait, err, errlen);
        if (rc) return rc;
        if (admitted) {
            *held = 1;
            mv_debug("server host slot taken", " tenant=%s mailbox=%s task=%s host=%s", t->tenant,
                     t->mailbox, t->id, host);
            return MV_OK;
        }
        if (mv_mono_ms() >= give_up || *r->stopping) break;
        usleep(200 * 1000);
    }
    mv_task p = *t;
    p.not_before_ms = mv_now_ms() + (wait > 2000 ? wait : 2000);
    char *buf = NULL, why[MV_ERRLEN], now[32];
    size_t len = 0;
    mv_err rc = mv_task_encode(&p, &buf, &len, err, errlen);
    if (!rc) rc = mv_state_delay_add(r->st, buf, len, p.not_before_ms, err, errlen);
    free(buf);
    if (rc) return rc;
    snprintf(why, sizeof why,
             "waiting for a connection to %s (at most %d at once: source.max_connections_per_host)",
             host, r->cfg->host_max_connections);
    snprintf(now, sizeof now, "%lld", (long long)mv_now_ms());
    mv_info("server host busy: task parked", " tenant=%s mailbox=%s task=%s host=%s", t->tenant,
            t->mailbox, t->id, host);
    *parked = 1;
    rc = mv_state_status_set(r->st, t->tenant, t->mailbox, err, errlen, "state", "retrying",
                             "error", why, "heartbeat_ms", now, NULL);
    if (!rc) rc = mv_state_fair_release(r->st, t->tenant, t->mailbox, err, errlen);
    return rc;
}

/* The operator cancelled the run: the mailbox ends "cancelled", no retry, no continuation. */
static mv_err record_cancelled(mv_runner *r, const mv_task *t, mv_run_outcome *outcome, char *err,
                               size_t errlen)
{
    char now[32];
    snprintf(now, sizeof now, "%lld", (long long)mv_now_ms());
    mv_info("task cancelled by the operator", " tenant=%s mailbox=%s task=%s run=%s", t->tenant,
            t->mailbox, t->id, t->run_id);
    *outcome = MV_RUN_DONE;
    mv_err rc = mv_state_status_set(r->st, t->tenant, t->mailbox, err, errlen, "state", "cancelled",
                                    "finished_ms", now, "heartbeat_ms", now, "error",
                                    "cancelled by the operator", "folder", "", NULL);
    if (!rc)
        rc = mv_state_run_end(r->st, t->run_id, t->tenant, t->mailbox, "cancelled",
                              "cancelled by the operator", err, errlen);
    if (!rc) rc = mv_state_fair_release(r->st, t->tenant, t->mailbox, err, errlen);
    return rc;
}

mv_err mv_runner_execute(mv_runner *r, const void *payload, size_t len, mv_run_outcome *outcome,
                         char *err, size_t errlen)
{
    mv_task t;
    char why[MV_ERRLEN];
    mv_err rc = mv_task_decode(payload, len, &t, why, sizeof why);
    *outcome = MV_RUN_DEAD;
    if (rc) {
        /* Not a task we can read: keep the bytes in the DLQ for inspection. */
        mv_error("undecodable task sent to the dead-letter topic", " error=\"%s\"", why);
        return mv_producer_send_sync(r->pr, r->cfg->topic_dlq, "invalid", payload, len, 30000, err,
                                     errlen);
    }
    if (t.not_before_ms > mv_now_ms() + 1000) { /* early: park it in the delayed set again */
        *outcome = MV_RUN_RETRY;
        rc = mv_state_delay_add(r->st, payload, len, t.not_before_ms, err, errlen);
        return rc ? rc : mv_state_fair_release(r->st, t.tenant, t.mailbox, err, errlen);
    }

    char now[32], chunk[16], host[300] = "";
    int host_held = 0;
    uint64_t token = 0;
    mv_profile p;
    memset(&p, 0, sizeof p);
    char *password = NULL;
    int more = 0;
    int64_t retry_after_ms = 0;
    mv_err cause = MV_OK;

    int exists = mv_state_tenant_exists(r->st, t.tenant);
    if (exists == 0) { /* removed after the task was queued: drop it, keep no state */
        mv_warn("task for a removed tenant dropped", " tenant=%s mailbox=%s task=%s", t.tenant,
                t.mailbox, t.id);
        *outcome = MV_RUN_DEAD;
        snprintf(t.last_error, sizeof t.last_error, "tenant %s was removed", t.tenant);
        return send_task(r, r->cfg->topic_dlq, &t, err, errlen);
    }
    /* the tenant's store, keys and retention as they are now (a rotation or a move to another
     * store applies from the next task on) */
    mv_store_forget(r->store, t.tenant);
    mv_store_settle(r->store); /* uploads a failed task of this thread left behind */
    char holds[MV_ERRLEN];
    snprintf(holds, sizeof holds, "mv:holds:%s", t.tenant);
    if ((rc = mv_state_set_has(r->st, holds, t.mailbox, &r->legal_hold, err, errlen)) != MV_OK)
        return rc; /* Redis is down: the task is redelivered */
    if ((cause = acquire_lease(r, &t, &token, why, sizeof why))) {
        if (*r->stopping) { /* shutting down: not an attempt; another member takes it */
            *outcome = MV_RUN_ABANDONED;
            return MV_OK;
        }
        goto failed;
    }
    snprintf(now, sizeof now, "%lld", (long long)mv_now_ms());
    snprintf(chunk, sizeof chunk, "%u", t.chunk);
    if ((rc = mv_state_status_set(r->st, t.tenant, t.mailbox, err, errlen, "state", "running",
                                  "task", t.id, "run", t.run_id, "worker", r->worker_id, "chunk",
                                  chunk, "heartbeat_ms", now, NULL)))
        goto out;
    if (t.chunk == 0 && t.attempt == 0 &&
        (rc =
             mv_state_status_set(r->st, t.tenant, t.mailbox, err, errlen, "started_ms", now, NULL)))
        goto out;
    mv_info("task started", " tenant=%s mailbox=%s task=%s run=%s chunk=%u attempt=%u", t.tenant,
            t.mailbox, t.id, t.run_id, t.chunk, t.attempt);

    char cancel[37]; /* cancelled while it was queued: before anything else can fail */
    if ((rc = mv_state_cancel_get(r->st, t.tenant, t.mailbox, cancel, err, errlen))) goto out;
    if (cancel[0] && strcmp(cancel, t.run_id) == 0) {
        rc = record_cancelled(r, &t, outcome, err, errlen);
        goto out;
    }
    if ((cause = mv_jobs_profile_load(r->st, t.tenant, t.profile, &p, why, sizeof why)))
        goto failed;
    char export_id[256] = "";
    if (p.source == MV_SOURCE_EXPORT) mv_jobs_export_task_mailbox(&p, export_id, sizeof export_id);
    if ((t.kind == MV_TASK_EXPORT) != (p.source == MV_SOURCE_EXPORT) ||
        (p.source == MV_SOURCE_EXPORT && strcmp(t.mailbox, export_id) != 0)) {
        cause = mv_seterr(why, sizeof why, MV_EINVAL, "task %s (%s) does not match profile %s",
                          t.mailbox, mv_task_kind_name(t.kind), t.profile);
        goto failed;
    }
    if (p.source != MV_SOURCE_EXPORT && mv_profile_find_mailbox(&p, t.mailbox) < 0 &&
        !p.directory && !(p.public_folders && strcmp(p.pf_archive_as, t.mailbox) == 0)) {
        cause = mv_seterr(why, sizeof why, MV_ENOTFOUND, "mailbox %s is not in profile %s",
                          t.mailbox, t.profile);
        goto failed;
    }
    const char *slot = p.source == MV_SOURCE_EXPORT ? mv_jobs_export_slot(&p)
                       : p.source != MV_SOURCE_IMAP ? mv_jobs_graph_slot(&p)
                                                    : t.mailbox;
    if (slot && (cause = mv_jobs_credential(r->st, r->master_key, t.tenant, t.profile, slot,
                                            &password, why, sizeof why)))
        goto failed;
    /* the cluster-wide cap on connections to one server host: wait a little for a slot,
     * else park the task (not an attempt) and give its fair-share slot to someone else */
    if (r->cfg->host_max_connections > 0 && source_host(&p, host, sizeof host)) {
        int parked = 0;
        if ((rc = host_acquire(r, &t, host, &host_held, &parked, err, errlen))) goto out;
        if (parked) {
            *outcome = MV_RUN_RETRY;
            goto out;
        }
    }
    chunk_ctx cc;
    int64_t chunk_t0 = mv_mono_ms();
    if ((cause = chunk_init(&cc, r, &t, token))) {
        mv_seterr(why, sizeof why, cause, "out of memory");
        goto failed;
    }
    if (p.source == MV_SOURCE_GRAPH)
        cause = graph_archive_mailbox(&cc, &p, password, &more, why, sizeof why);
    else if (p.source == MV_SOURCE_EWS)
        cause = ews_archive_mailbox(&cc, &p, password, &more, why, sizeof why);
    else if (p.source == MV_SOURCE_EXPORT && p.exp_imap)
        cause = export_imap_run(&cc, &p, password, &more, why, sizeof why);
    else if (p.source == MV_SOURCE_EXPORT && p.exp_ews)
        cause = export_ews_run(&cc, &p, password, &more, why, sizeof why);
    else if (p.source == MV_SOURCE_EXPORT)
        cause = export_run(&cc, &p, password, &more, why, sizeof why);
    else
        cause = imap_archive_mailbox(&cc, &p, password, &more, why, sizeof why);
    retry_after_ms = cc.retry_after_ms;
    { /* chunk latency histogram (/metrics): the time one task spends on its mailbox */
        static const int64_t bounds[] = {100,   250,   500,   1000,   2500,  5000,
                                         10000, 30000, 60000, 120000, 300000};
        char merr[MV_ERRLEN];
        if (mv_state_metric_observe(r->st, "chunk_ms", mv_mono_ms() - chunk_t0, bounds,
                                    (int)(sizeof bounds / sizeof *bounds), merr, sizeof merr))
            mv_warn("cannot record the chunk time", " error=\"%s\"", merr);
    }
    int cancelled = cc.cancelled;
    chunk_free(&cc);
    if (cancelled) { /* what is recorded stays recorded; the run goes no further */
        rc = record_cancelled(r, &t, outcome, err, errlen);
        goto out;
    }
    if (cause && *r->stopping && (cause == MV_ECANCEL || cause == MV_EBUSY)) {
        /* interrupted by shutdown while waiting (limiter, throttling): what is recorded
         * stays recorded and pending work is redone, so this is a continuation, not a
         * failed attempt */
        cause = MV_OK;
        more = 1;
    }
    if (cause) goto failed;

    snprintf(now, sizeof now, "%lld", (long long)mv_now_ms());
    mv_debug("mailbox walk finished", " tenant=%s mailbox=%s task=%s more=%d", t.tenant, t.mailbox,
             t.id, more);
    if (more) {
        mv_task next = t;
        mv_uuid(next.id);
        next.chunk = t.chunk + 1;
        next.attempt = 0;
        next.not_before_ms = 0;
        next.last_error[0] = '\0';
        next.created_ms = mv_now_ms();
        /* the next chunk goes back to the tenant's fair queue (first in line) and this one's
         * slot is released in the same step: other tenants get their turn between chunks */
        char *nbuf = NULL;
        size_t nlen = 0;
        if ((rc = mv_task_encode(&next, &nbuf, &nlen, err, errlen))) goto out;
        rc = mv_state_fair_push(r->st, t.tenant, t.mailbox, nbuf, nlen, 1, t.mailbox, err, errlen);
        free(nbuf);
        if (rc) goto out;
        snprintf(chunk, sizeof chunk, "%u", next.chunk);
        rc = mv_state_status_set(r->st, t.tenant, t.mailbox, err, errlen, "state", "queued", "task",
                                 next.id, "chunk", chunk, "heartbeat_ms", now, NULL);
        *outcome = MV_RUN_CONTINUED;
    } else {
        rc = mv_state_status_set(r->st, t.tenant, t.mailbox, err, errlen, "state", "done",
                                 "finished_ms", now, "heartbeat_ms", now, "error", "", "folder", "",
                                 NULL);
        if (!rc)
            rc = mv_state_run_end(r->st, t.run_id, t.tenant, t.mailbox, "done", "", err, errlen);
        if (!rc) rc = mv_state_fair_release(r->st, t.tenant, t.mailbox, err, errlen);
        *outcome = MV_RUN_DONE;
    }
    mv_info(more ? "chunk done, continuation queued" : "mailbox done",
            " tenant=%s mailbox=%s task=%s chunk=%u", t.tenant, t.mailbox, t.id, t.chunk);
    goto out;

failed:
    rc = record_failure(r, &t, cause, why, retry_after_ms, outcome, err, errlen);
out:
    if (host_held) {
        char herr[MV_ERRLEN], scope[320];
        snprintf(scope, sizeof scope, "host:%s", host);
        mv_state_limit_release(r->st, scope, t.id, herr, sizeof herr);
    }
    if (password) {
        mv_crypt_wipe(password, strlen(password));
        free(password);
    }
    mv_profile_free(&p);
    if (token) {
        char lerr[MV_ERRLEN];
        mv_state_lease_release(r->st, t.tenant, t.mailbox, r->worker_id, token, lerr, sizeof lerr);
    }
    return rc;
}

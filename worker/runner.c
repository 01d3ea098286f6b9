/* runner.c - one archive task: a bounded chunk of one mailbox, from IMAP into the store.
 *
 * Commit protocol per folder range (see docs/architecture.md):
 *   1. record the range as pending in the folder checkpoint (fenced by the lease token);
 *   2. stream every message of the range: IMAP literal -> SHA-256 + zstd -> temp file ->
 *      rename under its hash (an existing object is kept: single-instance storage);
 *   3. make the objects durable (syncfs, or per-object fsync in "object" mode);
 *   4. write the range's index segment, named by (folder, uidvalidity, first, last);
 *   5. move the checkpoint past the range and clear the pending mark (fenced).
 * A crash anywhere before 5 leaves the range pending: the next attempt re-fetches exactly the
 * same range, rewrites the same segment name and overwrites (not trusts) its objects. Only after
 * the chunk's outcome is durable (checkpoint, continuation task, retry entry or DLQ record)
 * does the caller commit the Kafka offset. */
#define _GNU_SOURCE
#include "runner.h"

#include "mv/imap.h"
#include "mv/index.h"
#include "mv/jobs.h"
#include "mv/log.h"
#include "mv/profile.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define LEASE_POLL_MS 250

typedef struct folder_list {
    char **names;
    size_t n, cap;
} folder_list;

typedef struct chunk_ctx {
    mv_runner *r;
    const mv_task *t;
    uint64_t token;
    const char *folder;
    uint32_t first, last;
    int overwrite;
    mv_put *put;
    mv_hdrscan *hs;
    mv_segment seg;
    uint64_t msgs, raw, stored, dedup;
    int64_t last_beat;
    mv_err failed;
    char err[MV_ERRLEN];
} chunk_ctx;

static int list_cb(void *ud, const char *name, char delim, const char *flags)
{
    (void)delim;
    folder_list *fl = ud;
    if (strcasestr(flags, "\\Noselect") || strcasestr(flags, "\\NonExistent")) return 0;
    if (fl->n == fl->cap) {
        size_t nc = fl->cap ? fl->cap * 2 : 16;
        char **nn = realloc(fl->names, nc * sizeof *nn);
        if (!nn) return 1;
        fl->names = nn;
        fl->cap = nc;
    }
    fl->names[fl->n] = strdup(name);
    if (!fl->names[fl->n]) return 1;
    fl->n++;
    return 0;
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static void folder_list_free(folder_list *fl)
{
    for (size_t i = 0; i < fl->n; i++)
        free(fl->names[i]);
    free(fl->names);
}

/* Heartbeat and lease renewal, at most every second; called between messages. */
static mv_err beat(chunk_ctx *c, int force)
{
    int64_t now = mv_mono_ms();
    if (!force && now - c->last_beat < 1000) return MV_OK;
    c->last_beat = now;
    mv_runner *r = c->r;
    char hb[32];
    snprintf(hb, sizeof hb, "%lld", (long long)mv_now_ms());
    mv_err rc = mv_state_lease_renew(r->st, c->t->tenant, c->t->mailbox, r->worker_id, c->token,
                                     r->cfg->lease_ttl_ms, c->err, sizeof c->err);
    if (rc) return rc;
    return mv_state_status_set(r->st, c->t->tenant, c->t->mailbox, c->err, sizeof c->err,
                               "heartbeat_ms", hb, "folder", c->folder, NULL);
}

static int on_body_begin(void *ud, uint64_t size)
{
    chunk_ctx *c = ud;
    mv_put_abort(c->put);
    c->put = NULL;
    mv_hdrscan_reset(c->hs);
    c->failed = mv_store_put_begin(c->r->store, c->t->tenant, &c->put, c->err, sizeof c->err);
    if (!c->failed) c->failed = mv_put_set_size(c->put, size, c->err, sizeof c->err);
    return c->failed ? 1 : 0;
}

static int on_body_data(void *ud, const void *data, size_t len)
{
    chunk_ctx *c = ud;
    mv_hdrscan_feed(c->hs, data, len);
    c->failed = mv_put_write(c->put, data, len, c->err, sizeof c->err);
    if (!c->failed) c->failed = beat(c, 0); /* a large message must not outlive the lease */
    return c->failed ? 1 : 0;
}

static int on_msg_done(void *ud, const mv_imap_msg *m, int had_body)
{
    chunk_ctx *c = ud;
    if (!had_body || !c->put) return 0; /* e.g. an unsolicited FLAGS update */
    mv_put *p = c->put;
    c->put = NULL;
    if (m->uid < c->first || m->uid > c->last) { /* not part of this range */
        mv_put_abort(p);
        return 0;
    }
    mv_put_result res;
    c->failed = mv_put_commit(p, c->overwrite, &res, c->err, sizeof c->err);
    if (c->failed) return 1;
    mv_index_rec rec;
    memset(&rec, 0, sizeof rec);
    memcpy(rec.hash, res.hash, sizeof rec.hash);
    rec.uid = m->uid;
    rec.size = res.raw_bytes;
    rec.internaldate = m->internaldate;
    snprintf(rec.flags, sizeof rec.flags, "%s", m->flags ? m->flags : "");
    mv_hdrscan_result(c->hs, &rec);
    c->failed = mv_segment_add(&c->seg, &rec);
    if (c->failed) return 1;
    c->msgs++;
    c->raw += res.raw_bytes;
    if (res.existed)
        c->dedup++;
    else
        c->stored += res.stored_bytes;
    c->failed = beat(c, 0);
    return c->failed ? 1 : 0;
}

/* Archive UIDs first..last of the open folder; the checkpoint already marks it pending. */
static mv_err archive_range(chunk_ctx *c, mv_imap *im, mv_ckpt *ck, char *err, size_t errlen)
{
    mv_runner *r = c->r;
    const mv_task *t = c->t;
    mv_err rc;
    mv_segment_init(&c->seg, c->folder, ck->uidvalidity, c->first, c->last);
    c->msgs = c->raw = c->stored = c->dedup = 0;
    c->failed = MV_OK;
    c->err[0] = '\0';
    mv_imap_fetch_cb cb = {on_body_begin, on_body_data, on_msg_done};
    rc = mv_imap_fetch_range(im, c->first, c->last, &cb, c, err, errlen);
    mv_put_abort(c->put);
    c->put = NULL;
    if (c->failed) {
        rc = c->failed;
        mv_seterr(err, errlen, rc, "%s", c->err);
    }
    if (rc) {
        char tmp[MV_ERRLEN];
        snprintf(tmp, sizeof tmp, "%s", err);
        mv_seterr(err, errlen, rc, "folder \"%s\" UIDs %u:%u: %s", c->folder, c->first, c->last,
                  tmp);
        goto out;
    }
    if (!r->cfg->store_fsync_each && (rc = mv_store_sync(r->store, err, errlen))) goto out;
    void *seg = NULL;
    size_t seglen = 0;
    char name[128];
    mv_segment_name(c->folder, ck->uidvalidity, c->first, c->last, name, sizeof name);
    if ((rc = mv_segment_encode(&c->seg, &seg, &seglen, err, errlen))) goto out;
    rc = mv_store_segment_put(r->store, t->tenant, t->mailbox, name, seg, seglen, err, errlen);
    free(seg);
    if (rc) goto out;
    ck->last_uid = c->last;
    ck->pending_from = ck->pending_to = 0;
    ck->messages += c->msgs;
    static const char *const fields[] = {"messages", "total_messages", "bytes_raw", "bytes_stored",
                                         "deduplicated"};
    const int64_t incr[] = {(int64_t)c->msgs, (int64_t)c->msgs, (int64_t)c->raw, (int64_t)c->stored,
                            (int64_t)c->dedup};
    rc = mv_state_ckpt_commit(r->st, t->tenant, t->mailbox, c->folder, ck, r->worker_id, c->token,
                              fields, incr, 5, err, errlen);
    if (rc) goto out;
    char n[32], raw[32], stored[32], dd[32];
    snprintf(n, sizeof n, "%llu", (unsigned long long)c->msgs);
    snprintf(raw, sizeof raw, "%llu", (unsigned long long)c->raw);
    snprintf(stored, sizeof stored, "%llu", (unsigned long long)c->stored);
    snprintf(dd, sizeof dd, "%llu", (unsigned long long)c->dedup);
    mv_info("range archived",
            " tenant=%s mailbox=%s task=%s folder=\"%s\" uids=%u:%u messages=%s "
            "raw_bytes=%s stored_bytes=%s deduplicated=%s",
            t->tenant, t->mailbox, t->id, c->folder, c->first, c->last, n, raw, stored, dd);
out:
    mv_segment_free(&c->seg);
    return rc;
}

/* Walk the folders; returns MV_OK with *more = 1 if the chunk budget ran out first. */
static mv_err archive_mailbox(mv_runner *r, const mv_task *t, const mv_profile *p,
                              const char *password, uint64_t token, int *more, char *err,
                              size_t errlen)
{
    mv_imap_opts o;
    mv_imap_opts_default(&o);
    o.host = p->host;
    o.port = p->port;
    o.tls = p->tls;
    o.verify = p->verify;
    o.ca_file = r->cfg->ca_file[0] ? r->cfg->ca_file : NULL;
    o.timeout_ms = r->cfg->imap_timeout_ms;
    o.max_line = (size_t)r->cfg->max_line_bytes;
    o.max_literal = (uint64_t)r->cfg->max_message_bytes;
    mv_imap *im = NULL;
    folder_list fl = {0};
    chunk_ctx c;
    memset(&c, 0, sizeof c);
    c.r = r;
    c.t = t;
    c.token = token;
    c.hs = mv_hdrscan_new();
    mv_err rc = c.hs ? MV_OK : MV_ENOMEM;
    if (rc) goto out;
    *more = 0;
    int64_t deadline = mv_mono_ms() + (int64_t)r->cfg->chunk_seconds * 1000;
    uint64_t budget = (uint64_t)r->cfg->chunk_messages;

    if ((rc = mv_imap_connect(&o, &im, err, errlen))) goto out;
    if ((rc = mv_imap_login(im, t->mailbox, password, err, errlen))) {
        if (rc == MV_EAUTH) {
            char tmp[MV_ERRLEN];
            snprintf(tmp, sizeof tmp, "%s", err);
            mv_seterr(err, errlen, rc, "IMAP login refused for %s at %s:%d: %s", t->mailbox,
                      p->host, p->port, tmp);
        }
        goto out;
    }
    if ((rc = mv_imap_list(im, list_cb, &fl, err, errlen))) goto out;
    qsort(fl.names, fl.n, sizeof *fl.names, cmp_str);

    for (size_t i = 0; i < fl.n; i++) {
        const char *folder = fl.names[i];
        if (!mv_profile_folder_selected(p, folder)) continue;
        c.folder = folder;
        if ((rc = beat(&c, 0))) {
            mv_seterr(err, errlen, rc, "%s", c.err);
            goto out;
        }
        mv_imap_mailbox info;
        rc = mv_imap_examine(im, folder, &info, err, errlen);
        if (rc == MV_ENOTFOUND) { /* deleted between LIST and EXAMINE: nothing to archive */
            mv_warn("folder vanished, skipped", " tenant=%s mailbox=%s folder=\"%s\" error=\"%s\"",
                    t->tenant, t->mailbox, folder, err);
            rc = MV_OK;
            continue;
        }
        if (rc) goto out;
        mv_ckpt ck;
        rc = mv_state_ckpt_get(r->st, t->tenant, t->mailbox, folder, &ck, err, errlen);
        if (rc && rc != MV_ENOTFOUND) goto out;
        if (ck.uidvalidity && ck.uidvalidity != info.uidvalidity) {
            mv_warn("UIDVALIDITY changed, re-scanning folder",
                    " tenant=%s mailbox=%s folder=\"%s\" old=%u new=%u", t->tenant, t->mailbox,
                    folder, ck.uidvalidity, info.uidvalidity);
            ck.last_uid = ck.pending_from = ck.pending_to = 0;
        }
        ck.uidvalidity = info.uidvalidity;
        for (;;) {
            /* Find the next piece of work first, then check the budget: a chunk that ends
             * exactly at the end of the mailbox must not queue an empty continuation. */
            uint32_t *uids = NULL;
            size_t n = 0;
            if (!ck.pending_to) {
                if (info.exists == 0 || (info.uidnext && info.uidnext <= ck.last_uid + 1)) break;
                if ((rc = mv_imap_uids_from(im, ck.last_uid + 1, &uids, &n, err, errlen))) goto out;
                if (n == 0) {
                    free(uids);
                    break;
                }
            }
            if (budget == 0 || mv_mono_ms() >= deadline || *r->stopping) {
                mv_debug("chunk budget spent, more work remains",
                         " tenant=%s mailbox=%s folder=\"%s\"", t->tenant, t->mailbox, folder);
                free(uids);
                *more = 1;
                goto out;
            }
            if (ck.pending_to) { /* an unconfirmed range from an earlier attempt: redo it */
                c.first = ck.pending_from;
                c.last = ck.pending_to;
                c.overwrite = 1;
            } else {
                size_t take = n < budget ? n : (size_t)budget;
                c.first = uids[0];
                c.last = uids[take - 1];
                free(uids);
                c.overwrite = 0;
                ck.pending_from = c.first;
                ck.pending_to = c.last;
                if ((rc = mv_state_ckpt_set(r->st, t->tenant, t->mailbox, folder, &ck, r->worker_id,
                                            token, err, errlen)))
                    goto out;
            }
            if ((rc = beat(&c, 1))) {
                mv_seterr(err, errlen, rc, "%s", c.err);
                goto out;
            }
            if ((rc = archive_range(&c, im, &ck, err, errlen))) goto out;
            budget = c.msgs >= budget ? 0 : budget - c.msgs;
            info.uidnext = 0; /* re-ask the server: new mail may have arrived meanwhile */
        }
    }
out:
    mv_put_abort(c.put);
    mv_hdrscan_free(c.hs);
    folder_list_free(&fl);
    mv_imap_close(im);
    return rc;
}

static mv_err send_task(mv_runner *r, const char *topic, const mv_task *t, char *err, size_t errlen)
{
    char *buf = NULL;
    size_t len = 0;
    char key[512];
    mv_err rc = mv_task_encode(t, &buf, &len, err, errlen);
    if (rc) return rc;
    mv_task_key(t, key, sizeof key);
    rc = mv_producer_send(r->pr, topic, key, buf, len, err, errlen);
    free(buf);
    if (!rc) rc = mv_producer_flush(r->pr, 30000, err, errlen);
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
                             mv_run_outcome *outcome, char *err, size_t errlen)
{
    mv_task t = *t0;
    snprintf(t.last_error, sizeof t.last_error, "%s", why);
    char attempt[16], now[32];
    snprintf(now, sizeof now, "%lld", (long long)mv_now_ms());
    mv_err rc;
    if (!permanent(cause) && t.attempt + 1 < (uint32_t)r->cfg->max_attempts) {
        t.attempt++;
        int64_t backoff = (int64_t)r->cfg->retry_base_ms
                          << (t.attempt - 1 < 16 ? t.attempt - 1 : 16);
        if (backoff > 600000) backoff = 600000;
        t.not_before_ms = mv_now_ms() + backoff;
        char *buf = NULL;
        size_t len = 0;
        if ((rc = mv_task_encode(&t, &buf, &len, err, errlen))) return rc;
        rc = mv_state_delay_add(r->st, buf, len, t.not_before_ms, err, errlen);
        free(buf);
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
    return mv_state_status_set(r->st, t.tenant, t.mailbox, err, errlen, "state", "failed",
                               "attempt", attempt, "error", why, "finished_ms", now, NULL);
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
        rc = mv_producer_send(r->pr, r->cfg->topic_dlq, "invalid", payload, len, err, errlen);
        return rc ? rc : mv_producer_flush(r->pr, 30000, err, errlen);
    }
    if (t.not_before_ms > mv_now_ms() + 1000) { /* early: park it in the delayed set again */
        *outcome = MV_RUN_RETRY;
        return mv_state_delay_add(r->st, payload, len, t.not_before_ms, err, errlen);
    }

    char now[32], chunk[16];
    uint64_t token = 0;
    mv_profile p;
    memset(&p, 0, sizeof p);
    char *password = NULL;
    int more = 0;
    mv_err cause = MV_OK;

    int exists = mv_state_tenant_exists(r->st, t.tenant);
    if (exists == 0) { /* removed after the task was queued: drop it, keep no state */
        mv_warn("task for a removed tenant dropped", " tenant=%s mailbox=%s task=%s", t.tenant,
                t.mailbox, t.id);
        *outcome = MV_RUN_DEAD;
        snprintf(t.last_error, sizeof t.last_error, "tenant %s was removed", t.tenant);
        return send_task(r, r->cfg->topic_dlq, &t, err, errlen);
    }
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

    if ((cause = mv_jobs_profile_load(r->st, t.tenant, t.profile, &p, why, sizeof why)))
        goto failed;
    if (mv_profile_find_mailbox(&p, t.mailbox) < 0) {
        cause = mv_seterr(why, sizeof why, MV_ENOTFOUND, "mailbox %s is not in profile %s",
                          t.mailbox, t.profile);
        goto failed;
    }
    if ((cause = mv_jobs_credential(r->st, r->master_key, t.tenant, t.profile, t.mailbox, &password,
                                    why, sizeof why)))
        goto failed;
    cause = archive_mailbox(r, &t, &p, password, token, &more, why, sizeof why);
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
        if ((rc = send_task(r, r->cfg->topic_tasks, &next, err, errlen))) goto out;
        snprintf(chunk, sizeof chunk, "%u", next.chunk);
        rc = mv_state_status_set(r->st, t.tenant, t.mailbox, err, errlen, "state", "queued", "task",
                                 next.id, "chunk", chunk, "heartbeat_ms", now, NULL);
        *outcome = MV_RUN_CONTINUED;
    } else {
        rc = mv_state_status_set(r->st, t.tenant, t.mailbox, err, errlen, "state", "done",
                                 "finished_ms", now, "heartbeat_ms", now, "error", "", "folder", "",
                                 NULL);
        *outcome = MV_RUN_DONE;
    }
    mv_info(more ? "chunk done, continuation queued" : "mailbox done",
            " tenant=%s mailbox=%s task=%s chunk=%u", t.tenant, t.mailbox, t.id, t.chunk);
    goto out;

failed:
    rc = record_failure(r, &t, cause, why, outcome, err, errlen);
out:
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

/* graph_source.c - the Microsoft Graph source connector: folders by mailFolders/childFolders,
 * batches = pages of messages/delta, each message's MIME by /messages/{id}/$value.
 *
 * Checkpoint: a cursor per folder id (state.h) holding the link to continue from. A batch is
 * the page read from that link; before its messages are fetched the cursor is marked pending,
 * so a crash makes the next attempt read the same link again, overwrite (not trust) the
 * objects and rewrite the same segment ("<folderhash>-<generation>-<seq>.seg"); then the
 * cursor moves to the page's nextLink/deltaLink with the status counters in one fenced step.
 * An expired delta token (410 SyncStateNotFound) starts a new generation from scratch: objects
 * deduplicate, and readers (archive.c) list each message once. "@removed" entries are counted,
 * never acted on: archived mail is not deleted because the source deleted it.
 *
 * Throttling: a 429/503/504 whose Retry-After is short is waited out here (the lease is kept
 * alive meanwhile); a longer one fails the attempt as transient, and the retry is scheduled
 * no earlier than the server asked. */
#include "chunk.h"
#include "gate.h"
#include "idset.h"
#include "tokens.h"

#include "mv/archive.h"
#include "mv/crypt.h"
#include "mv/graph.h"
#include "mv/jobs.h"
#include "mv/log.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define GRAPH_MAX_WAIT_MS 30000 /* longer Retry-After: give the attempt back */
#define GRAPH_MAX_TRIES 5
#define GRAPH_BATCH_PARALLEL 4 /* requests of one batch Graph runs at once per mailbox */

typedef struct gpage {
    idlist l;
    uint64_t removed;
} gpage;

static int folder_cb(void *ud, const char *id, const char *path, const char *well_known,
                     uint64_t total)
{
    (void)well_known;
    (void)total;
    return folder_list_add(ud, id, NULL, path, 0);
}

static int delta_cb(void *ud, const char *message_id, int removed, const char *reason)
{
    (void)reason;
    gpage *pg = ud;
    if (removed) {
        pg->removed++;
        return 0;
    }
    return idlist_add(&pg->l, message_id);
}

static void gpage_free(gpage *pg)
{
    idlist_free(&pg->l);
    pg->removed = 0;
}

/* After MV_EBUSY: wait out a short Retry-After (renewing the lease); 0 = try again. */
static int wait_throttled(chunk_ctx *c, mv_graph *g, int tries, char *err, size_t errlen)
{
    int64_t ms = mv_graph_retry_after_ms(g);
    if (ms <= 0) ms = 1000;
    if (tries >= GRAPH_MAX_TRIES || ms > GRAPH_MAX_WAIT_MS) return -1;
    mv_warn("throttled by Graph, waiting", " tenant=%s mailbox=%s retry_after_ms=%lld",
            c->t->tenant, c->t->mailbox, (long long)ms);
    mv_state_status_incr(c->r->st, c->t->tenant, c->t->mailbox, "throttled", 1, err, errlen);
    return chunk_pause(c, ms);
}

typedef struct mime_ud {
    chunk_ctx *c;
} mime_ud;

static int mime_begin(void *ud, int64_t size)
{
    return chunk_msg_begin(((mime_ud *)ud)->c, size) ? 1 : 0;
}

static int mime_data(void *ud, const void *data, size_t len)
{
    return chunk_msg_data(((mime_ud *)ud)->c, data, len) ? 1 : 0;
}

/* Fetch and store one message; MV_ENOTFOUND (deleted since the delta page) is skipped. */
static mv_err fetch_message(chunk_ctx *c, mv_graph *g, const char *user, const char *id, char *err,
                            size_t errlen)
{
    mv_graph_mime_cb cb = {mime_begin, mime_data};
    mime_ud u = {c};
    for (int tries = 0;; tries++) {
        c->failed = MV_OK;
        mv_err rc = mv_graph_get_mime(g, user, id, &cb, &u, err, errlen);
        if (c->failed) { /* the store or the lease failed inside a callback */
            chunk_msg_abort(c);
            return mv_seterr(err, errlen, c->failed, "%s", c->err);
        }
        if (rc == MV_OK) {
            if (!c->put && (rc = chunk_msg_begin(c, 0))) /* an empty body never called begin */
                return mv_seterr(err, errlen, rc, "%s", c->err);
            if ((rc = chunk_msg_done(c, 0, id, 0, "")))
                return mv_seterr(err, errlen, rc, "%s", c->err);
            return MV_OK;
        }
        chunk_msg_abort(c);
        if (rc == MV_ENOTFOUND) {
            mv_info("message gone before it could be fetched, skipped",
                    " tenant=%s mailbox=%s id=%s", c->t->tenant, c->t->mailbox, id);
            return MV_OK;
        }
        if (rc != MV_EBUSY || wait_throttled(c, g, tries, err, errlen)) return rc;
    }
}

/* ---- $batch downloads: up to graph.batch_size messages per HTTP request ---- */
typedef struct batch_ud {
    chunk_ctx *c;
    const mv_graph_batch_item *items;
} batch_ud;

static int batch_cb(void *ud, size_t index, const void *mime, size_t len)
{
    batch_ud *b = ud;
    chunk_ctx *c = b->c;
    if (chunk_msg_begin(c, (int64_t)len) || (len && chunk_msg_data(c, mime, len)) ||
        chunk_msg_done(c, 0, b->items[index].message_id, 0, "")) {
        chunk_msg_abort(c);
        return 1; /* c->failed and c->err say why */
    }
    return 0;
}

/* Fetch and store ids[0..n). Batches of *batch_size; whatever a batch did not bring back whole
 * (throttled, failed, an unusable body, no answer) is fetched alone, which has its own waits
 * and errors; a message gone since the delta page is skipped. A batch answer too large to
 * hold halves the batch size for the rest of the task. */
static mv_err fetch_messages(chunk_ctx *c, mv_graph *g, const char *user, char **ids, size_t n,
                             int *batch_size, char *err, size_t errlen)
{
    mv_err rc = MV_OK;
    for (size_t i = 0; i < n && !rc;) {
        size_t k = n - i < (size_t)*batch_size ? n - i : (size_t)*batch_size;
        if (k < 2) {
            rc = fetch_message(c, g, user, ids[i++], err, errlen);
            continue;
        }
        mv_graph_batch_item items[MV_GRAPH_BATCH_MAX];
        for (size_t j = 0; j < k; j++)
            items[j].message_id = ids[i + j];
        batch_ud bu = {c, items};
        for (int tries = 0;; tries++) {
            c->failed = MV_OK;
            rc = mv_graph_get_mime_batch(g, user, items, k, batch_cb, &bu, err, errlen);
            if (c->failed) { /* the store or the lease failed inside the callback */
                chunk_msg_abort(c);
                return mv_seterr(err, errlen, c->failed, "%s", c->err);
            }
            if (rc != MV_EBUSY || wait_throttled(c, g, tries, err, errlen)) break;
        }
        if (rc == MV_ETOOBIG) {
            *batch_size = *batch_size / 2 > 1 ? *batch_size / 2 : 1;
            mv_info("batch answer too large, fetching its messages one by one",
                    " tenant=%s mailbox=%s batch_size=%d", c->t->tenant, c->t->mailbox,
                    *batch_size);
            rc = MV_OK; /* every item still has status 0: fetched alone below */
        }
        if (rc) return rc;
        int64_t wait = 0;
        int64_t throttled = 0;
        for (size_t j = 0; j < k; j++)
            if (items[j].status == 429 || items[j].status == 503) {
                throttled++;
                if (items[j].retry_after_ms > wait) wait = items[j].retry_after_ms;
            }
        if (throttled) {
            char serr[MV_ERRLEN];
            mv_warn("throttled inside a batch, waiting",
                    " tenant=%s mailbox=%s requests=%lld "
                    "retry_after_ms=%lld",
                    c->t->tenant, c->t->mailbox, (long long)throttled, (long long)wait);
            mv_state_status_incr(c->r->st, c->t->tenant, c->t->mailbox, "throttled", throttled,
                                 serr, sizeof serr);
            if (wait > GRAPH_MAX_WAIT_MS) {
                c->retry_after_ms = wait;
                return mv_seterr(err, errlen, MV_EBUSY,
                                 "throttled by Graph inside a batch for %lld ms", (long long)wait);
            }
            if (chunk_pause(c, wait > 0 ? wait : 1000))
                return mv_seterr(err, errlen, MV_ECANCEL, "shutting down");
        }
        for (size_t j = 0; j < k && !rc; j++) {
            long st = items[j].status;
            if (st >= 200 && st < 300) continue;
            if (st == 404) {
                mv_info("message gone before it could be fetched, skipped",
                        " tenant=%s mailbox=%s id=%s", c->t->tenant, c->t->mailbox,
                        items[j].message_id);
                continue;
            }
            if (st != 0 && st != 429 && st != 503)
                mv_info("batch item failed, fetching it alone",
                        " tenant=%s mailbox=%s id=%s status=%ld error=\"%s\"", c->t->tenant,
                        c->t->mailbox, items[j].message_id, st, items[j].error);
            rc = fetch_message(c, g, user, items[j].message_id, err, errlen);
        }
        i += k;
    }
    return rc;
}

static mv_err read_page(chunk_ctx *c, mv_graph *g, const char *user, const char *folder_id,
                        const char *link, gpage *pg, char **next, int *complete, char *err,
                        size_t errlen)
{
    for (int tries = 0;; tries++) {
        gpage_free(pg);
        mv_err rc = mv_graph_delta_page(g, user, folder_id, link[0] ? link : NULL, delta_cb, pg,
                                        next, complete, err, errlen);
        if (rc != MV_EBUSY || wait_throttled(c, g, tries, err, errlen)) return rc;
    }
}

/* ---- the deletion rule: archived messages older than N days are deleted at the source ----
 *
 * Only after a folder is in sync (its delta reached a deltaLink) and only messages whose index
 * record exists (segments are written after their objects are durable) and whose object is in
 * the store. The candidates are listed whole before the first DELETE, since Graph pages a
 * listing by $skip. A crash between archiving and deleting leaves the message at the source
 * for the next run's sweep: nothing is deleted that is not archived. */
typedef struct load_ud {
    chunk_ctx *c;
    idset *set;
} load_ud;

static int load_rec(void *ud, const mv_segment *seg, const mv_index_rec *rec)
{
    (void)seg;
    load_ud *l = ud;
    if (!rec->id[0] || !mv_store_exists(l->c->r->store, l->c->t->tenant, rec->hash)) return 0;
    return idset_add(l->set, rec->id);
}

typedef struct cand_ud {
    idset *archived;
    gpage *out;
} cand_ud;

static int cand_cb(void *ud, const char *id)
{
    cand_ud *cu = ud;
    if (!idset_has(cu->archived, id)) return 0; /* not archived (yet): never deleted */
    return delta_cb(cu->out, id, 0, "");
}

static mv_err sweep_folder(chunk_ctx *c, mv_graph *g, const folder_item *f, idset *archived,
                           char *err, size_t errlen)
{
    const mv_task *t = c->t;
    mv_err rc = MV_OK;
    if (!archived->loaded) {
        load_ud l = {c, archived};
        if ((rc = mv_archive_list(c->r->store, t->tenant, t->mailbox, load_rec, &l, err, errlen)))
            return rc;
        archived->loaded = 1;
    }
    int64_t before = mv_now_ms() - (int64_t)c->profile->delete_after_days * 86400000;
    gpage cand = {0};
    cand_ud cu = {archived, &cand};
    for (int tries = 0;; tries++) {
        gpage_free(&cand);
        rc = mv_graph_list_received_before(g, t->mailbox, f->id, before, cand_cb, &cu, err, errlen);
        if (rc != MV_EBUSY || wait_throttled(c, g, tries, err, errlen)) break;
    }
    if (rc == MV_ENOTFOUND) rc = MV_OK; /* the folder went away meanwhile */
    uint64_t deleted = 0;
    for (size_t i = 0; i < cand.l.n && !rc; i++) {
        if (*c->r->stopping) break; /* the rest waits for the next run */
        if ((rc = chunk_beat(c, 0))) {
            mv_seterr(err, errlen, rc, "%s", c->err);
            break;
        }
        for (int tries = 0;; tries++) {
            rc = mv_graph_delete_message(g, t->mailbox, cand.l.ids[i], err, errlen);
            if (rc != MV_EBUSY || wait_throttled(c, g, tries, err, errlen)) break;
        }
        if (rc == MV_OK)
            deleted++;
        else if (rc == MV_ENOTFOUND)
            rc = MV_OK; /* already gone */
    }
    if (rc == MV_EAUTH && strstr(err, "403")) {
        char tmp[MV_ERRLEN];
        snprintf(tmp, sizeof tmp, "%s", err);
        mv_seterr(err, errlen, MV_EAUTH,
                  "deleting archived messages needs the Mail.ReadWrite application permission: %s",
                  tmp);
    }
    if (deleted) {
        char serr[MV_ERRLEN];
        if (mv_state_status_incr(c->r->st, t->tenant, t->mailbox, "deleted_at_source",
                                 (int64_t)deleted, serr, sizeof serr))
            mv_warn("cannot count deletions", " error=\"%s\"", serr);
        mv_info("archived messages deleted at the source",
                " tenant=%s mailbox=%s task=%s folder=\"%s\" deleted=%llu older_than_days=%d",
                t->tenant, t->mailbox, t->id, f->path, (unsigned long long)deleted,
                c->profile->delete_after_days);
    }
    gpage_free(&cand);
    return rc;
}

/* What one task carries across folders: the $batch size, and for the deletion rule what is
 * archived and a refusal (no Mail.ReadWrite) that stops further sweeps but not the archiving
 * of the remaining folders. */
typedef struct gtask {
    int batch_size;
    idset archived;
    mv_err refused;
    char err[MV_ERRLEN];
} gtask;

static mv_err maybe_sweep(chunk_ctx *c, mv_graph *g, const folder_item *f, gtask *gt, char *err,
                          size_t errlen)
{
    if (!c->profile->delete_enabled || gt->refused) return MV_OK;
    mv_err rc = sweep_folder(c, g, f, &gt->archived, err, errlen);
    if (rc == MV_EAUTH) {
        gt->refused = rc;
        snprintf(gt->err, sizeof gt->err, "folder \"%s\": %s", f->path, err);
        mv_warn("deletion rule refused by the server; archiving goes on",
                " tenant=%s mailbox=%s "
                "error=\"%s\"",
                c->t->tenant, c->t->mailbox, gt->err);
        return MV_OK;
    }
    return rc;
}

static mv_err sync_folder(chunk_ctx *c, mv_graph *g, const folder_item *f, gtask *gt, int *more,
                          char *err, size_t errlen)
{
    mv_runner *r = c->r;
    const mv_task *t = c->t;
    mv_cursor cu;
    mv_err rc = mv_state_cursor_get(r->st, t->tenant, t->mailbox, f->id, &cu, err, errlen);
    if (rc && rc != MV_ENOTFOUND) return rc;
    gpage pg = {0};
    char *next = NULL;
    int restarts = 0;
    int force_overwrite = 0; /* objects of an abandoned pending page must not be trusted */
    rc = MV_OK;
    for (;;) {
        int complete = 0;
        free(next);
        next = NULL;
        rc = read_page(c, g, t->mailbox, f->id, cu.link, &pg, &next, &complete, err, errlen);
        if (rc == MV_ENOTFOUND && strstr(err, "sync state expired") && restarts++ > 0) {
            rc = mv_seterr(err, errlen, MV_EPROTO,
                           "folder \"%s\": the server refused a fresh delta sync too", f->path);
            break;
        }
        if (rc == MV_ENOTFOUND && strstr(err, "sync state expired")) {
            if (cu.pending) force_overwrite = 1;
            mv_warn("delta sync state expired, re-reading folder",
                    " tenant=%s mailbox=%s folder=\"%s\" generation=%u", t->tenant, t->mailbox,
                    f->path, cu.generation + 1);
            cu.generation++;
            cu.seq = 0;
            cu.pending = 0;
            cu.link[0] = '\0';
            continue;
        }
        if (rc == MV_ENOTFOUND) { /* the folder went away since the listing */
            mv_warn("folder vanished, skipped", " tenant=%s mailbox=%s folder=\"%s\"", t->tenant,
                    t->mailbox, f->path);
            rc = MV_OK;
            break;
        }
        if (rc) break;
        if (strlen(next) >= sizeof cu.link) {
            rc = mv_seterr(err, errlen, MV_EPROTO, "Graph link longer than %zu bytes",
                           sizeof cu.link - 1);
            break;
        }
        if (pg.l.n == 0) { /* nothing to fetch: just move on (removals are counted) */
            snprintf(cu.link, sizeof cu.link, "%s", next);
            /* A pending page redone empty (its messages gone meanwhile) may have left its
             * segment: step over that name so the next page does not replace it. */
            if (cu.pending) cu.seq++;
            cu.pending = 0;
            const char *fields[] = {"removed"};
            int64_t incr[] = {(int64_t)pg.removed};
            rc = mv_state_cursor_commit(r->st, t->tenant, t->mailbox, f->id, &cu, r->worker_id,
                                        c->token, fields, incr, pg.removed ? 1 : 0, err, errlen);
            if (!rc && complete) rc = maybe_sweep(c, g, f, gt, err, errlen);
            if (rc || complete) break;
            continue;
        }
        if (chunk_spent(c)) {
            *more = 1;
            break;
        }
        /* this link was started by an attempt that did not finish */
        int overwrite = cu.pending || force_overwrite;
        if (!cu.pending) {
            cu.pending = 1;
            rc = mv_state_cursor_commit(r->st, t->tenant, t->mailbox, f->id, &cu, r->worker_id,
                                        c->token, NULL, NULL, 0, err, errlen);
            if (rc) break;
        }
        chunk_batch_begin(c, f->path, cu.generation, 0, 0, overwrite);
        rc = fetch_messages(c, g, t->mailbox, pg.l.ids, pg.l.n, &gt->batch_size, err, errlen);
        char name[128];
        if (!rc) {
            mv_segment_name_seq(f->id, cu.generation, cu.seq + 1, name, sizeof name);
            rc = chunk_batch_store(c, name, err, errlen);
        }
        if (!rc) {
            cu.seq++;
            cu.pending = 0;
            cu.messages += c->msgs;
            snprintf(cu.link, sizeof cu.link, "%s", next);
            const char *fields[CHUNK_NCOUNTERS + 1];
            int64_t incr[CHUNK_NCOUNTERS + 1];
            for (int k = 0; k < CHUNK_NCOUNTERS; k++)
                fields[k] = chunk_counter_fields[k];
            chunk_counters(c, incr);
            fields[CHUNK_NCOUNTERS] = "removed";
            incr[CHUNK_NCOUNTERS] = (int64_t)pg.removed;
            rc = mv_state_cursor_commit(r->st, t->tenant, t->mailbox, f->id, &cu, r->worker_id,
                                        c->token, fields, incr, CHUNK_NCOUNTERS + 1, err, errlen);
        }
        if (!rc && gt->archived.loaded) /* what this task archives counts for its sweeps too */
            for (size_t k = 0; k < c->seg.n && !rc; k++)
                if (c->seg.recs[k].id[0] && idset_add(&gt->archived, c->seg.recs[k].id))
                    rc = mv_seterr(err, errlen, MV_ENOMEM, "out of memory");
        if (!rc)
            mv_info("delta page archived",
                    " tenant=%s mailbox=%s task=%s folder=\"%s\" seq=%llu messages=%llu "
                    "raw_bytes=%llu stored_bytes=%llu deduplicated=%llu removed=%llu",
                    t->tenant, t->mailbox, t->id, f->path, (unsigned long long)cu.seq,
                    (unsigned long long)c->msgs, (unsigned long long)c->raw,
                    (unsigned long long)c->stored, (unsigned long long)c->dedup,
                    (unsigned long long)pg.removed);
        chunk_charge(c);
        chunk_batch_end(c);
        if (!rc && complete) rc = maybe_sweep(c, g, f, gt, err, errlen);
        if (rc || complete) break;
    }
    if (rc && !strstr(err, f->path)) {
        char tmp[MV_ERRLEN];
        snprintf(tmp, sizeof tmp, "%s", err);
        mv_seterr(err, errlen, rc, "folder \"%s\": %s", f->path, tmp);
    }
    free(next);
    gpage_free(&pg);
    return rc;
}

mv_err graph_archive_mailbox(chunk_ctx *c, const mv_profile *p, const char *secret, int *more,
                             char *err, size_t errlen)
{
    mv_runner *r = c->r;
    mv_graph_opts o;
    mv_jobs_graph_opts(&o, r->cfg, p, secret);
    /* the whole request may take long (a 200 MB message); a stall may not */
    o.timeout_ms = 3600 * 1000;
    o.max_message = (uint64_t)r->cfg->max_message_bytes;
    mv_graph *g = NULL;
    folder_list fl = {0};
    gtask gt;
    memset(&gt, 0, sizeof gt);
    gt.batch_size = r->cfg->graph_batch_size;
    if (r->cfg->graph_window_requests > 0 && gt.batch_size > r->cfg->graph_window_requests)
        gt.batch_size = r->cfg->graph_window_requests; /* a batch must fit in one window */
    /* Graph hands up to 4 requests of a batch to one mailbox at once: below that, no batches */
    if (r->cfg->graph_max_concurrent > 0 && r->cfg->graph_max_concurrent < GRAPH_BATCH_PARALLEL)
        gt.batch_size = 1;
    *more = 0;
    c->profile = p;
    mv_err rc = mv_graph_open(&o, &g, err, errlen);
    if (rc) goto out;
    /* Microsoft's per-mailbox limits, kept by every worker together through Redis */
    worker_gate wg;
    worker_gate_init(&wg, c);
    mv_limit lim = {.max_concurrent = r->cfg->graph_max_concurrent,
                    .window_requests = r->cfg->graph_window_requests,
                    .window_ms = (int64_t)r->cfg->graph_window_seconds * 1000,
                    .hold_ms = 10 * 60 * 1000}; /* a crashed worker's slot frees itself */
    char scope[768];
    if (r->cfg->graph_limit_per_app)
        snprintf(scope, sizeof scope, "app:%s:%s:%s", p->tenant_id, p->client_id, c->t->mailbox);
    else
        snprintf(scope, sizeof scope, "mbx:%s:%s", c->t->tenant, c->t->mailbox);
    worker_gate_add(&wg, scope, &lim, "mailbox");
    /* this task holds the mailbox's lease: slots still held in its scope are a dead
     * predecessor's (killed mid-request), which would block us for up to hold_ms */
    char lerr[MV_ERRLEN];
    if (mv_state_limit_clear(r->st, scope, lerr, sizeof lerr))
        mv_warn("cannot clear a predecessor's request slots", " error=\"%s\"", lerr);
    mv_http_gate gate = worker_gate_hook(&wg);
    if (gate.acquire) mv_graph_set_gate(g, &gate);
    token_cache tc = {c, p->graph_base};
    mv_oauth_source ts = token_cache_source(&tc);
    mv_graph_set_token_source(g, &ts);
    for (int tries = 0;; tries++) {
        folder_list_free(&fl);
        rc = mv_graph_list_folders(g, c->t->mailbox, folder_cb, &fl, err, errlen);
        if (rc != MV_EBUSY || wait_throttled(c, g, tries, err, errlen)) break;
    }
    if (rc == MV_ENOTFOUND && strstr(err, "MailboxNotEnabledForRESTAPI")) {
        /* a directory user without an Exchange Online mailbox: nothing to archive */
        mv_warn("user has no mailbox, nothing archived", " tenant=%s mailbox=%s error=\"%s\"",
                c->t->tenant, c->t->mailbox, err);
        rc = MV_OK;
        goto out;
    }
    if (rc) goto out;
    folder_list_sort(&fl);
    for (size_t i = 0; i < fl.n && !*more; i++) {
        if (!mv_profile_folder_selected(p, fl.v[i].path)) continue;
        c->folder = fl.v[i].path;
        if ((rc = chunk_beat(c, 1))) {
            mv_seterr(err, errlen, rc, "%s", c->err);
            goto out;
        }
        if ((rc = sync_folder(c, g, &fl.v[i], &gt, more, err, errlen))) goto out;
    }
    if (!rc && gt.refused && !*more) /* archived, but the deletion rule was refused */
        rc = mv_seterr(err, errlen, gt.refused, "%s", gt.err);
out:
    if (rc == MV_EBUSY && g && mv_graph_retry_after_ms(g) > 0) {
        int64_t nb = mv_graph_retry_after_ms(g);
        mv_info("throttled: the retry waits as Graph asked", " tenant=%s mailbox=%s ms=%lld",
                c->t->tenant, c->t->mailbox, (long long)nb);
        c->retry_after_ms = nb;
    }
    folder_list_free(&fl);
    idset_free(&gt.archived);
    mv_graph_close(g);
    return rc;
}

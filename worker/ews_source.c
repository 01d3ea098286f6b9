/* ews_source.c - the Exchange Web Services source connector: Exchange on-premises (service
 * account with impersonation), Microsoft 365 archive mailboxes and public folders.
 *
 * What a task archives: its mailbox's folder tree (FindFolder Deep under msgfolderroot), and
 * by the profile's "archive_mailbox" also (or only) the in-place archive under
 * archivemsgfolderroot, kept under "Archive Mailbox/" in the index. The task whose mailbox is
 * the profile's public_folders.archive_as archives the organisation's public folders instead
 * (through the identity of public_folders.mailbox), under public_folders.target_folder.
 *
 * Checkpoint, as for Graph: a cursor per folder id (state.h) whose link is the folder's
 * SyncState. A batch is one SyncFolderItems answer (at most ews.sync_page changes): before its
 * items are fetched the cursor is marked pending, so a crash makes the next attempt ask with
 * the same SyncState again, overwrite (not trust) the objects and rewrite the same segment;
 * then the cursor moves to the answer's SyncState together with the status counters in one
 * fenced step. An invalid SyncState (ErrorInvalidSyncStateData) starts a new generation of
 * the folder from scratch: objects deduplicate and readers list each (folder, id) once.
 * Deletions at the source are counted ("removed"), never acted on.
 *
 * Public folders have no SyncFolderItems. Each run lists a folder with FindItem (paged by
 * offset) and fetches the items whose id the mailbox's index does not hold yet, a page at a
 * time with the same pending/commit protocol (the link is unused): nothing is missed when
 * items come and go between runs, and nothing is archived twice.
 *
 * Item classes without a message (appointments, contacts, tasks, notes, journal entries,
 * distribution lists) are skipped and counted ("skipped"), as are items Exchange cannot
 * convert to MIME (ErrorUnsupportedMimeConversion); the MIME of everything else is fetched
 * with GetItem in batches of ews.get_batch, decoded into the store as it arrives.
 *
 * Throttling: ErrorServerBusy / ErrorExceededConnectionCount / HTTP 503 are waited out when
 * the server's BackOffMilliseconds is short (lease kept alive, counted as "throttled"); a
 * longer one ends the attempt and the retry waits at least that long. Concurrency per mailbox
 * and per service account (Exchange's EWSMaxConcurrency) is kept by every worker together
 * through Redis (gate.h). */
#include "chunk.h"
#include "ews_session.h"
#include "idset.h"

#include "mv/archive.h"
#include "mv/ews.h"
#include "mv/jobs.h"
#include "mv/log.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#define EWS_MAX_WAIT_MS 30000 /* a longer back-off gives the attempt back */
#define EWS_MAX_TRIES 5
#define ARCHIVE_PREFIX "Archive Mailbox"

/* While listing one root: where its folders go and how they are marked. */
typedef struct eroot {
    folder_list *l;
    const char *prefix;
    int is_public;
} eroot;

/* The ids of one batch, split into what to fetch and what to skip. */
typedef struct ebatch {
    idlist l;
    uint64_t removed, skipped;
    idset *known; /* public folders: ids the index already holds (not fetched again) */
} ebatch;

static int folder_cb(void *ud, const char *id, const char *path, const char *folder_class,
                     uint64_t total)
{
    (void)folder_class;
    (void)total;
    eroot *er = ud;
    return folder_list_add(er->l, id, er->prefix, path, er->is_public);
}

/* 1 if an item of this class is a message with MIME worth archiving. */
static int mail_class(const char *cls)
{
    static const char *const skip[] = {
        "IPM.Appointment", "IPM.Contact",  "IPM.DistList", "IPM.Task",
        "IPM.StickyNote",  "IPM.Activity", "IPM.Journal",  NULL};
    if (!cls || !*cls) return 1; /* not given: try, GetItem will tell */
    for (size_t i = 0; skip[i]; i++)
        if (!strncasecmp(cls, skip[i], strlen(skip[i]))) return 0;
    return 1;
}

static void batch_free(ebatch *b)
{
    idlist_free(&b->l);
    b->removed = b->skipped = 0;
}

static int change_cb(void *ud, mv_ews_change kind, const char *item_id, const char *item_class)
{
    ebatch *b = ud;
    if (kind == MV_EWS_DELETE) {
        b->removed++;
        return 0;
    }
    if (kind == MV_EWS_READ_FLAG) return 0; /* the message itself did not change */
    if (!mail_class(item_class)) {
        b->skipped++;
        return 0;
    }
    if (b->known && idset_has(b->known, item_id)) return 0;
    return idlist_add(&b->l, item_id);
}

mv_err ews_session_open(chunk_ctx *c, const mv_profile *p, const char *secret, const char *via,
                        ews_session *s, char *err, size_t errlen)
{
    mv_runner *r = c->r;
    mv_ews_opts o;
    memset(s, 0, sizeof *s);
    mv_jobs_ews_opts(&o, r->cfg, p, secret);
    o.timeout_ms = 3600 * 1000; /* a GetItem of large messages may take long; a stall may not */
    mv_err rc = mv_ews_open(&o, &s->e, err, errlen);
    if (rc) return rc;
    /* Exchange's limits, kept by every worker together: per mailbox and per account */
    worker_gate_init(&s->wg, c);
    mv_limit mbx = {.max_concurrent = r->cfg->ews_max_concurrent, .hold_ms = 10 * 60 * 1000};
    mv_limit acct = {.max_concurrent = r->cfg->ews_account_max_concurrent,
                     .hold_ms = 10 * 60 * 1000};
    char scope[768];
    snprintf(scope, sizeof scope, "ews-mbx:%s:%s", c->t->tenant, via);
    worker_gate_add(&s->wg, scope, &mbx, "mailbox");
    if (strcmp(via, c->t->mailbox) == 0) { /* only this task uses it, under the lease */
        char lerr[MV_ERRLEN];
        if (mv_state_limit_clear(r->st, scope, lerr, sizeof lerr))
            mv_warn("cannot clear a predecessor's request slots", " error=\"%s\"", lerr);
    }
    snprintf(scope, sizeof scope, "ews-acct:%s:%s", c->t->tenant,
             p->ews_auth == MV_EWS_AUTH_OAUTH ? p->client_id : p->ews_username);
    worker_gate_add(&s->wg, scope, &acct, "service account");
    mv_http_gate gate = worker_gate_hook(&s->wg);
    if (gate.acquire) mv_ews_set_gate(s->e, &gate);
    s->tc.c = c;
    s->tc.resource = p->ews_url;
    s->ts = token_cache_source(&s->tc);
    if (p->ews_auth == MV_EWS_AUTH_OAUTH) mv_ews_set_token_source(s->e, &s->ts);
    return MV_OK;
}

/* After MV_EBUSY: wait out a short back-off (renewing the lease); 0 = try again. */
int ews_wait_busy(chunk_ctx *c, mv_ews *e, int tries)
{
    int64_t ms = mv_ews_backoff_ms(e);
    if (ms <= 0) ms = 1000;
    if (tries >= EWS_MAX_TRIES || ms > EWS_MAX_WAIT_MS) {
        if (ms > c->retry_after_ms) c->retry_after_ms = ms;
        return -1;
    }
    char err[MV_ERRLEN];
    mv_warn("Exchange is busy, waiting", " tenant=%s mailbox=%s back_off_ms=%lld", c->t->tenant,
            c->t->mailbox, (long long)ms);
    mv_state_status_incr(c->r->st, c->t->tenant, c->t->mailbox, "throttled", 1, err, sizeof err);
    return chunk_pause(c, ms);
}

/* ---- MIME of a batch: GetItem in groups, each item decoded into the store ---- */

typedef struct get_ud {
    chunk_ctx *c;
    const char *const *ids; /* this request's items */
    const size_t *map;      /* request index -> index in the group */
    unsigned char *done;    /* per item of the group: stored, skipped or gone */
    int busy;               /* an item was answered ErrorServerBusy: ask again after the wait */
    uint64_t skipped;
    mv_err failed; /* an item failed for good */
    char err[MV_ERRLEN];
} get_ud;

static int get_begin(void *ud, size_t index)
{
    (void)index;
    get_ud *g = ud;
    return chunk_msg_begin(g->c, -1) ? 1 : 0;
}

static int get_data(void *ud, size_t index, const void *p, size_t n)
{
    (void)index;
    return chunk_msg_data(((get_ud *)ud)->c, p, n) ? 1 : 0;
}

static int get_end(void *ud, size_t index)
{
    get_ud *g = ud;
    if (chunk_msg_done(g->c, 0, g->ids[index], 0, "")) return 1;
    g->done[g->map[index]] = 1;
    return 0;
}

static void get_fail(void *ud, size_t index, const char *code, const char *text)
{
    get_ud *g = ud;
    chunk_ctx *c = g->c;
    chunk_msg_abort(c);
    const char *id = g->ids[index];
    if (!strcmp(code, "ErrorServerBusy") || !strcmp(code, "ErrorExceededConnectionCount")) {
        g->busy = 1;
        return;
    }
    g->done[g->map[index]] = 1;
    if (!strcmp(code, "ErrorItemNotFound")) {
        mv_info("item gone before it could be fetched, skipped", " tenant=%s mailbox=%s id=%s",
                c->t->tenant, c->t->mailbox, id);
    } else if (!strcmp(code, "ErrorUnsupportedMimeConversion") || !strcmp(code, "NoMimeContent")) {
        g->skipped++;
        mv_info("item without MIME, skipped", " tenant=%s mailbox=%s id=%s code=%s", c->t->tenant,
                c->t->mailbox, id, code);
    } else if (!g->failed) {
        g->failed = !strcmp(code, "MimeTooLarge") ? MV_ETOOBIG : MV_ESERVER;
        snprintf(g->err, sizeof g->err, "item %s: %s: %s", id, code, text ? text : "");
    }
}

/* GetItem for a group of items until each is stored, skipped or gone. After a busy answer
 * (for the request or some of its items) only the items not yet done are asked for again:
 * what a partial answer delivered is in the batch already and must not be recorded twice. */
static mv_err fetch_group(chunk_ctx *c, mv_ews *e, const char *mailbox, char **ids, size_t n,
                          uint64_t *skipped, char *err, size_t errlen)
{
    mv_ews_mime_cb cb = {get_begin, get_data, get_end, get_fail};
    unsigned char *done = calloc(n, 1);
    const char **want = malloc(n * sizeof *want);
    size_t *map = malloc(n * sizeof *map);
    mv_err rc = MV_OK;
    if (!done || !want || !map) {
        rc = mv_seterr(err, errlen, MV_ENOMEM, "out of memory");
        goto out;
    }
    for (int tries = 0;; tries++) {
        size_t nw = 0;
        for (size_t i = 0; i < n; i++)
            if (!done[i]) {
                want[nw] = ids[i];
                map[nw++] = i;
            }
        if (!nw) break;
        get_ud g = {c, want, map, done, 0, 0, MV_OK, ""};
        c->failed = MV_OK;
        rc = mv_ews_get_mime(e, mailbox, want, nw, &cb, &g, err, errlen);
        chunk_msg_abort(c); /* an item begun when the answer broke off is discarded */
        *skipped += g.skipped;
        if (c->failed) { /* the store or the lease failed inside a callback */
            rc = mv_seterr(err, errlen, c->failed, "%s", c->err);
            break;
        }
        if (g.failed) {
            rc = mv_seterr(err, errlen, g.failed, "%s", g.err);
            break;
        }
        if (rc == MV_EBUSY || (!rc && g.busy)) {
            if (ews_wait_busy(c, e, tries)) {
                if (!rc) rc = mv_seterr(err, errlen, MV_EBUSY, "Exchange stayed busy");
                break;
            }
            rc = MV_OK;
            continue;
        }
        if (rc) break;
    }
out:
    free(done);
    free(want);
    free(map);
    return rc;
}

static mv_err fetch_items(chunk_ctx *c, mv_ews *e, const char *mailbox, ebatch *b, char *err,
                          size_t errlen)
{
    size_t group = (size_t)c->r->cfg->ews_get_batch;
    if (group > MV_EWS_GET_MAX) group = MV_EWS_GET_MAX;
    mv_err rc = MV_OK;
    for (size_t i = 0; i < b->l.n && !rc; i += group) {
        size_t k = b->l.n - i < group ? b->l.n - i : group;
        rc = fetch_group(c, e, mailbox, b->l.ids + i, k, &b->skipped, err, errlen);
    }
    return rc;
}

/* ---- one folder ---- */

typedef struct etask {
    const char *via; /* the mailbox EWS acts on (the task's, or public_folders.mailbox) */
    idset known;     /* public folders: what the index holds */
} etask;

static int load_known(void *ud, const mv_segment *seg, const mv_index_rec *rec)
{
    (void)seg;
    return rec->id[0] ? idset_add((idset *)ud, rec->id) : 0;
}

/* One page of changes (sync) or of items (public folders) from the cursor's position. */
static mv_err read_batch(chunk_ctx *c, mv_ews *e, const folder_item *f, const char *via,
                         const mv_cursor *cu, ebatch *b, char **next, int *complete,
                         uint32_t *next_offset, char *err, size_t errlen)
{
    for (int tries = 0;; tries++) {
        batch_free(b);
        free(*next);
        *next = NULL;
        mv_err rc;
        if (f->flag) {
            uint32_t off = (uint32_t)strtoul(cu->link, NULL, 10);
            rc = mv_ews_find_items(e, via, f->id, off, change_cb, b, next_offset, complete, err,
                                   errlen);
        } else {
            rc = mv_ews_sync_items(e, via, f->id, cu->link, c->r->cfg->ews_sync_page, change_cb, b,
                                   next, complete, err, errlen);
        }
        if (rc != MV_EBUSY || ews_wait_busy(c, e, tries)) return rc;
    }
}

static mv_err commit(chunk_ctx *c, const folder_item *f, mv_cursor *cu, const ebatch *b,
                     int counters, char *err, size_t errlen)
{
    const char *fields[CHUNK_NCOUNTERS + 2];
    int64_t incr[CHUNK_NCOUNTERS + 2];
    int n = 0;
    if (counters) {
        for (int k = 0; k < CHUNK_NCOUNTERS; k++)
            fields[k] = chunk_counter_fields[k];
        chunk_counters(c, incr);
        n = CHUNK_NCOUNTERS;
    }
    fields[n] = "removed";
    incr[n++] = (int64_t)b->removed;
    fields[n] = "skipped";
    incr[n++] = (int64_t)b->skipped;
    return mv_state_cursor_commit(c->r->st, c->t->tenant, c->t->mailbox, f->id, cu, c->r->worker_id,
                                  c->token, fields, incr, n, err, errlen);
}

static mv_err sync_folder(chunk_ctx *c, mv_ews *e, const folder_item *f, etask *et, int *more,
                          char *err, size_t errlen)
{
    mv_runner *r = c->r;
    const mv_task *t = c->t;
    mv_cursor *cu = malloc(sizeof *cu); /* the link holds a SyncState of up to 64 KiB */
    if (!cu) return mv_seterr(err, errlen, MV_ENOMEM, "out of memory");
    mv_err rc = mv_state_cursor_get(r->st, t->tenant, t->mailbox, f->id, cu, err, errlen);
    if (rc == MV_ENOTFOUND) {
        memset(cu, 0, sizeof *cu);
        rc = MV_OK;
    }
    if (rc) {
        free(cu);
        return rc;
    }
    ebatch b = {.known = f->flag ? &et->known : NULL};
    char *next = NULL;
    int restarts = 0, force_overwrite = 0;
    if (f->flag) cu->link[0] = '\0'; /* every run lists the folder from the start */
    for (;;) {
        int complete = 0;
        uint32_t next_offset = 0;
        rc = read_batch(c, e, f, et->via, cu, &b, &next, &complete, &next_offset, err, errlen);
        if (rc == MV_ENOTFOUND && strstr(err, "sync state invalid") && restarts++ == 0) {
            if (cu->pending) force_overwrite = 1;
            mv_warn("sync state invalid, re-reading folder",
                    " tenant=%s mailbox=%s folder=\"%s\" generation=%u", t->tenant, t->mailbox,
                    f->path, cu->generation + 1);
            cu->generation++;
            cu->seq = 0;
            cu->pending = 0;
            cu->link[0] = '\0';
            continue;
        }
        if (rc == MV_ENOTFOUND && !strstr(err, "sync state invalid") &&
            strstr(err, "ErrorFolderNotFound")) {
            mv_warn("folder vanished, skipped", " tenant=%s mailbox=%s folder=\"%s\"", t->tenant,
                    t->mailbox, f->path);
            rc = MV_OK;
            break;
        }
        if (rc) break;
        if (f->flag) {
            free(next);
            next = mv_aprintf("%u", next_offset);
            if (!next) {
                rc = mv_seterr(err, errlen, MV_ENOMEM, "out of memory");
                break;
            }
        }
        if (strlen(next) >= sizeof cu->link) {
            rc = mv_seterr(err, errlen, MV_EPROTO, "SyncState longer than %zu bytes",
                           sizeof cu->link - 1);
            break;
        }
        if (b.l.n == 0) { /* nothing to fetch: move on (removals and skips are counted) */
            snprintf(cu->link, sizeof cu->link, "%s", next);
            if (cu->pending) cu->seq++;
            cu->pending = 0;
            if ((rc = commit(c, f, cu, &b, 0, err, errlen)) || complete) break;
            continue;
        }
        if (chunk_spent(c)) {
            *more = 1;
            break;
        }
        int overwrite = cu->pending || force_overwrite;
        if (!cu->pending) {
            cu->pending = 1;
            ebatch none = {0};
            if ((rc = commit(c, f, cu, &none, 0, err, errlen))) break;
        }
        chunk_batch_begin(c, f->path, cu->generation, 0, 0, overwrite);
        rc = fetch_items(c, e, et->via, &b, err, errlen);
        char name[128];
        if (!rc) {
            mv_segment_name_seq(f->id, cu->generation, cu->seq + 1, name, sizeof name);
            rc = chunk_batch_store(c, name, err, errlen);
        }
        if (!rc) {
            cu->seq++;
            cu->pending = 0;
            cu->messages += c->msgs;
            snprintf(cu->link, sizeof cu->link, "%s", next);
            rc = commit(c, f, cu, &b, 1, err, errlen);
        }
        if (!rc && f->flag) /* what this task archived is known from now on */
            for (size_t k = 0; k < c->seg.n && !rc; k++)
                if (c->seg.recs[k].id[0] && idset_add(&et->known, c->seg.recs[k].id))
                    rc = mv_seterr(err, errlen, MV_ENOMEM, "out of memory");
        if (!rc)
            mv_info("sync batch archived",
                    " tenant=%s mailbox=%s task=%s folder=\"%s\" seq=%llu messages=%llu "
                    "raw_bytes=%llu stored_bytes=%llu deduplicated=%llu removed=%llu skipped=%llu",
                    t->tenant, t->mailbox, t->id, f->path, (unsigned long long)cu->seq,
                    (unsigned long long)c->msgs, (unsigned long long)c->raw,
                    (unsigned long long)c->stored, (unsigned long long)c->dedup,
                    (unsigned long long)b.removed, (unsigned long long)b.skipped);
        chunk_charge(c);
        chunk_batch_end(c);
        if (rc || complete) break;
    }
    if (rc && !strstr(err, f->path)) {
        char tmp[MV_ERRLEN];
        snprintf(tmp, sizeof tmp, "%s", err);
        mv_seterr(err, errlen, rc, "folder \"%s\": %s", f->path, tmp);
    }
    free(next);
    batch_free(&b);
    free(cu);
    return rc;
}

static mv_err list_root(chunk_ctx *c, mv_ews *e, const char *via, mv_ews_root root,
                        const char *prefix, folder_list *fl, char *err, size_t errlen)
{
    eroot er = {fl, prefix, root == MV_EWS_ROOT_PUBLIC};
    size_t before = fl->n;
    mv_err rc;
    for (int tries = 0;; tries++) {
        folder_list_truncate(fl, before); /* a retry lists the root again */
        rc = mv_ews_list_folders(e, via, root, folder_cb, &er, err, errlen);
        if (rc != MV_EBUSY || ews_wait_busy(c, e, tries)) break;
    }
    return rc;
}

mv_err ews_archive_mailbox(chunk_ctx *c, const mv_profile *p, const char *secret, int *more,
                           char *err, size_t errlen)
{
    mv_runner *r = c->r;
    const mv_task *t = c->t;
    ews_session s;
    mv_ews *e = NULL;
    folder_list fl = {0};
    etask et;
    memset(&et, 0, sizeof et);
    int public_task = p->public_folders && strcmp(t->mailbox, p->pf_archive_as) == 0;
    et.via = public_task ? p->pf_mailbox : t->mailbox;
    *more = 0;
    c->profile = p;
    mv_err rc = ews_session_open(c, p, secret, et.via, &s, err, errlen);
    if (rc) goto out;
    e = s.e;

    if (public_task) {
        if ((rc = list_root(c, e, et.via, MV_EWS_ROOT_PUBLIC, p->pf_target, &fl, err, errlen)))
            goto out;
        if ((rc = mv_archive_list(r->store, t->tenant, t->mailbox, load_known, &et.known, err,
                                  errlen)))
            goto out;
    } else {
        if (p->ews_archive != MV_EWS_ARCHIVE_ONLY &&
            (rc = list_root(c, e, et.via, MV_EWS_ROOT_MAILBOX, NULL, &fl, err, errlen)))
            goto out;
        if (p->ews_archive != MV_EWS_ARCHIVE_SKIP &&
            (rc = list_root(c, e, et.via, MV_EWS_ROOT_ARCHIVE, ARCHIVE_PREFIX, &fl, err, errlen))) {
            if (rc == MV_ENOTFOUND && p->ews_archive == MV_EWS_ARCHIVE_INCLUDE) {
                mv_info("no archive mailbox", " tenant=%s mailbox=%s", t->tenant, t->mailbox);
                rc = MV_OK;
            } else {
                goto out;
            }
        }
    }
    mv_info("folders listed", " tenant=%s mailbox=%s task=%s folders=%zu server=\"%s\"", t->tenant,
            t->mailbox, t->id, fl.n, mv_ews_server_version(e));
    folder_list_sort(&fl);
    for (size_t i = 0; i < fl.n && !*more; i++) {
        if (!mv_profile_folder_selected(p, fl.v[i].path)) continue;
        c->folder = fl.v[i].path;
        if ((rc = chunk_beat(c, 1))) {
            mv_seterr(err, errlen, rc, "%s", c->err);
            goto out;
        }
        if ((rc = sync_folder(c, e, &fl.v[i], &et, more, err, errlen))) goto out;
    }
out:
    if (rc == MV_EBUSY && e && mv_ews_backoff_ms(e) > c->retry_after_ms)
        c->retry_after_ms = mv_ews_backoff_ms(e);
    c->folder = NULL;
    folder_list_free(&fl);
    idset_free(&et.known);
    mv_ews_close(e);
    return rc;
}

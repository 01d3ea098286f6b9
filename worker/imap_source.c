/* imap_source.c - the IMAP source connector: folders by LIST, batches = UID ranges.
 *
 * Commit protocol per folder range (see docs/architecture.md):
 *   1. record the range as pending in the folder checkpoint (fenced by the lease token);
 *   2. stream every message of the range: IMAP literal -> SHA-256 + zstd -> temp file ->
 *      rename under its hash (an existing object is kept: single-instance storage);
 *   3. make the objects durable (syncfs, or per-object fsync in "object" mode);
 *   4. write the range's index segment, named by (folder, uidvalidity, first, last);
 *   5. move the checkpoint past the range and clear the pending mark, moving the status
 *      counters in the same step (fenced).
 * A crash anywhere before 5 leaves the range pending: the next attempt re-fetches exactly the
 * same range, rewrites the same segment name and overwrites (not trusts) its objects. */
#define _GNU_SOURCE
#include "chunk.h"

#include "mv/imap.h"
#include "mv/jobs.h"
#include "mv/log.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct imap_batch {
    chunk_ctx *c;
    uint32_t first, last;
} imap_batch;

static int list_cb(void *ud, const char *name, char delim, const char *flags)
{
    (void)delim;
    if (strcasestr(flags, "\\Noselect") || strcasestr(flags, "\\NonExistent")) return 0;
    return folder_list_add(ud, name, NULL, name, 0);
}

static int on_body_begin(void *ud, uint64_t size)
{
    imap_batch *b = ud;
    return chunk_msg_begin(b->c, (int64_t)size) ? 1 : 0;
}

static int on_body_data(void *ud, const void *data, size_t len)
{
    imap_batch *b = ud;
    return chunk_msg_data(b->c, data, len) ? 1 : 0;
}

static int on_msg_done(void *ud, const mv_imap_msg *m, int had_body)
{
    imap_batch *b = ud;
    chunk_ctx *c = b->c;
    if (!had_body || !c->put) return 0;          /* e.g. an unsolicited FLAGS update */
    if (m->uid < b->first || m->uid > b->last) { /* not part of this range */
        chunk_msg_abort(c);
        return 0;
    }
    return chunk_msg_done(c, m->uid, NULL, m->internaldate, m->flags) ? 1 : 0;
}

/* Archive UIDs first..last of the open folder; the checkpoint already marks it pending. */
static mv_err archive_range(imap_batch *b, mv_imap *im, mv_ckpt *ck, char *err, size_t errlen)
{
    chunk_ctx *c = b->c;
    mv_runner *r = c->r;
    const mv_task *t = c->t;
    chunk_batch_begin(c, c->folder, ck->uidvalidity, b->first, b->last, c->overwrite);
    mv_imap_fetch_cb cb = {on_body_begin, on_body_data, on_msg_done};
    mv_err rc = mv_imap_fetch_range(im, b->first, b->last, &cb, b, err, errlen);
    chunk_msg_abort(c);
    if (c->failed) {
        rc = c->failed;
        mv_seterr(err, errlen, rc, "%s", c->err);
    }
    if (rc) {
        char tmp[MV_ERRLEN];
        snprintf(tmp, sizeof tmp, "%s", err);
        mv_seterr(err, errlen, rc, "folder \"%s\" UIDs %u:%u: %s", c->folder, b->first, b->last,
                  tmp);
        goto out;
    }
    char name[128];
    mv_segment_name(c->folder, ck->uidvalidity, b->first, b->last, name, sizeof name);
    if ((rc = chunk_batch_store(c, name, err, errlen))) goto out;
    ck->last_uid = b->last;
    ck->pending_from = ck->pending_to = 0;
    ck->messages += c->msgs;
    int64_t incr[CHUNK_NCOUNTERS];
    chunk_counters(c, incr);
    rc = mv_state_ckpt_commit(r->st, t->tenant, t->mailbox, c->folder, ck, r->worker_id, c->token,
                              chunk_counter_fields, incr, CHUNK_NCOUNTERS, err, errlen);
    if (rc) goto out;
    mv_info("range archived",
            " tenant=%s mailbox=%s task=%s folder=\"%s\" uids=%u:%u messages=%llu "
            "raw_bytes=%llu stored_bytes=%llu deduplicated=%llu",
            t->tenant, t->mailbox, t->id, c->folder, b->first, b->last, (unsigned long long)c->msgs,
            (unsigned long long)c->raw, (unsigned long long)c->stored,
            (unsigned long long)c->dedup);
out:
    chunk_batch_end(c);
    return rc;
}

mv_err imap_archive_mailbox(chunk_ctx *c, const mv_profile *p, const char *password, int *more,
                            char *err, size_t errlen)
{
    mv_runner *r = c->r;
    const mv_task *t = c->t;
    mv_imap_opts o;
    mv_jobs_imap_opts(&o, r->cfg, p);
    mv_imap *im = NULL;
    folder_list fl = {0};
    imap_batch b = {c, 0, 0};
    mv_err rc;
    *more = 0;

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
    folder_list_sort(&fl);

    for (size_t i = 0; i < fl.n; i++) {
        const char *folder = fl.v[i].path;
        if (!mv_profile_folder_selected(p, folder)) continue;
        c->folder = folder;
        if ((rc = chunk_beat(c, 0))) {
            mv_seterr(err, errlen, rc, "%s", c->err);
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
        int force_overwrite = 0; /* objects of an abandoned pending range are not trusted */
        if (ck.uidvalidity && ck.uidvalidity != info.uidvalidity) {
            mv_warn("UIDVALIDITY changed, re-scanning folder",
                    " tenant=%s mailbox=%s folder=\"%s\" old=%u new=%u", t->tenant, t->mailbox,
                    folder, ck.uidvalidity, info.uidvalidity);
            force_overwrite = ck.pending_to != 0;
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
            if (chunk_spent(c)) {
                mv_debug("chunk budget spent, more work remains",
                         " tenant=%s mailbox=%s folder=\"%s\"", t->tenant, t->mailbox, folder);
                free(uids);
                *more = 1;
                goto out;
            }
            if (ck.pending_to) { /* an unconfirmed range from an earlier attempt: redo it */
                b.first = ck.pending_from;
                b.last = ck.pending_to;
                c->overwrite = 1;
            } else {
                size_t take = n < c->budget ? n : (size_t)c->budget;
                b.first = uids[0];
                b.last = uids[take - 1];
                free(uids);
                c->overwrite = force_overwrite;
                ck.pending_from = b.first;
                ck.pending_to = b.last;
                if ((rc = mv_state_ckpt_set(r->st, t->tenant, t->mailbox, folder, &ck, r->worker_id,
                                            c->token, err, errlen)))
                    goto out;
            }
            if ((rc = chunk_beat(c, 1))) {
                mv_seterr(err, errlen, rc, "%s", c->err);
                goto out;
            }
            if ((rc = archive_range(&b, im, &ck, err, errlen))) goto out;
            chunk_charge(c);
            info.uidnext = 0; /* re-ask the server: new mail may have arrived meanwhile */
        }
    }
out:
    folder_list_free(&fl);
    mv_imap_close(im);
    return rc;
}

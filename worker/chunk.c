/* chunk.c - the per-message and per-batch work every source shares (see chunk.h). */
#include "chunk.h"

#include "mv/log.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

const char *const chunk_counter_fields[CHUNK_NCOUNTERS] = {
    "messages", "total_messages", "bytes_raw", "bytes_stored", "deduplicated"};

mv_err chunk_init(chunk_ctx *c, mv_runner *r, const mv_task *t, uint64_t token)
{
    memset(c, 0, sizeof *c);
    c->r = r;
    c->t = t;
    c->token = token;
    c->folder = "";
    c->budget = (uint64_t)r->cfg->chunk_messages;
    c->deadline = mv_mono_ms() + (int64_t)r->cfg->chunk_seconds * 1000;
    c->hs = mv_hdrscan_new();
    return c->hs ? MV_OK : MV_ENOMEM;
}

void chunk_free(chunk_ctx *c)
{
    mv_put_abort(c->put);
    c->put = NULL;
    mv_hdrscan_free(c->hs);
    c->hs = NULL;
    mv_segment_free(&c->seg);
}

int chunk_spent(const chunk_ctx *c)
{
    return c->budget == 0 || mv_mono_ms() >= c->deadline || *c->r->stopping;
}

void chunk_charge(chunk_ctx *c)
{
    c->budget = c->msgs >= c->budget ? 0 : c->budget - c->msgs;
}

mv_err chunk_beat(chunk_ctx *c, int force)
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
    char cancel[37];
    if ((rc = mv_state_cancel_get(r->st, c->t->tenant, c->t->mailbox, cancel, c->err,
                                  sizeof c->err)))
        return rc;
    if (cancel[0] && strcmp(cancel, c->t->run_id) == 0) {
        c->cancelled = 1;
        snprintf(c->err, sizeof c->err, "cancelled by the operator");
        return MV_ECANCEL;
    }
    return mv_state_status_set(r->st, c->t->tenant, c->t->mailbox, c->err, sizeof c->err,
                               "heartbeat_ms", hb, "folder", c->folder, NULL);
}

void chunk_batch_begin(chunk_ctx *c, const char *seg_folder, uint32_t generation, uint32_t first,
                       uint32_t last, int overwrite)
{
    mv_segment_free(&c->seg);
    mv_segment_init(&c->seg, seg_folder, generation, first, last);
    c->msgs = c->raw = c->stored = c->dedup = 0;
    c->overwrite = overwrite;
    c->failed = MV_OK;
    c->err[0] = '\0';
}

mv_err chunk_msg_begin(chunk_ctx *c, int64_t size)
{
    chunk_msg_abort(c);
    mv_hdrscan_reset(c->hs);
    c->failed = mv_store_put_begin(c->r->store, c->t->tenant, &c->put, c->err, sizeof c->err);
    if (!c->failed && c->r->legal_hold) mv_put_set_legal_hold(c->put, 1);
    if (!c->failed && size >= 0)
        c->failed = mv_put_set_size(c->put, (uint64_t)size, c->err, sizeof c->err);
    return c->failed;
}

mv_err chunk_msg_data(chunk_ctx *c, const void *data, size_t len)
{
    mv_hdrscan_feed(c->hs, data, len);
    c->failed = mv_put_write(c->put, data, len, c->err, sizeof c->err);
    if (!c->failed) c->failed = chunk_beat(c, 0); /* a large message must not outlive the lease */
    return c->failed;
}

void chunk_msg_abort(chunk_ctx *c)
{
    mv_put_abort(c->put);
    c->put = NULL;
}

mv_err chunk_msg_done(chunk_ctx *c, uint32_t uid, const char *source_id, int64_t internaldate,
                      const char *flags)
{
    mv_put *p = c->put;
    c->put = NULL;
    mv_put_result res;
    if ((c->failed = mv_put_commit(p, c->overwrite, &res, c->err, sizeof c->err))) return c->failed;
    mv_index_rec rec;
    memset(&rec, 0, sizeof rec);
    memcpy(rec.hash, res.hash, sizeof rec.hash);
    snprintf(rec.id, sizeof rec.id, "%s", source_id ? source_id : "");
    rec.uid = uid;
    rec.size = res.raw_bytes;
    rec.internaldate = internaldate;
    snprintf(rec.flags, sizeof rec.flags, "%s", flags ? flags : "");
    mv_hdrscan_result(c->hs, &rec);
    if ((c->failed = mv_segment_add(&c->seg, &rec))) {
        snprintf(c->err, sizeof c->err, "index record: %s", mv_strerror(c->failed));
        return c->failed;
    }
    c->msgs++;
    c->raw += res.raw_bytes;
    if (res.existed)
        c->dedup++;
    else
        c->stored += res.stored_bytes;
    return c->failed = chunk_beat(c, 0);
}

mv_err chunk_batch_store(chunk_ctx *c, const char *segname, char *err, size_t errlen)
{
    mv_runner *r = c->r;
    mv_err rc;
    if (!r->cfg->store_fsync_each) {
        /* queued S3 uploads that found their object already there were counted as stored */
        uint64_t dup_n = 0, dup_bytes = 0;
        if ((rc = mv_store_sync_dups(r->store, &dup_n, &dup_bytes, err, errlen))) return rc;
        c->dedup += dup_n;
        c->stored -= dup_bytes < c->stored ? dup_bytes : c->stored;
    }
    void *seg = NULL;
    size_t seglen = 0;
    if ((rc = mv_segment_encode(&c->seg, &seg, &seglen, err, errlen))) return rc;
    rc = mv_store_segment_put(r->store, c->t->tenant, c->t->mailbox, segname, seg, seglen, err,
                              errlen);
    free(seg);
    /* a long syncfs must not let the lease lapse before the fenced commit that follows */
    if (!rc && (rc = chunk_beat(c, 1))) mv_seterr(err, errlen, rc, "%s", c->err);
    return rc;
}

void chunk_counters(const chunk_ctx *c, int64_t incr[CHUNK_NCOUNTERS])
{
    incr[0] = (int64_t)c->msgs;
    incr[1] = (int64_t)c->msgs;
    incr[2] = (int64_t)c->raw;
    incr[3] = (int64_t)c->stored;
    incr[4] = (int64_t)c->dedup;
}

void chunk_batch_end(chunk_ctx *c)
{
    mv_segment_free(&c->seg);
}

int chunk_pause(chunk_ctx *c, int64_t ms)
{
    int64_t until = mv_mono_ms() + ms;
    while (mv_mono_ms() < until) {
        if (*c->r->stopping) return -1;
        if (chunk_beat(c, 0)) return -1;
        int64_t left = until - mv_mono_ms();
        usleep((useconds_t)(left > 100 ? 100 : left > 0 ? left : 1) * 1000);
    }
    return 0;
}

int folder_list_add(folder_list *l, const char *id, const char *prefix, const char *path, int flag)
{
    if (l->n == l->cap) {
        size_t nc = l->cap ? l->cap * 2 : 32;
        folder_item *nv = realloc(l->v, nc * sizeof *nv);
        if (!nv) return 1;
        l->v = nv;
        l->cap = nc;
    }
    folder_item *f = &l->v[l->n];
    f->id = strdup(id);
    f->path = prefix ? mv_aprintf("%s/%s", prefix, path) : strdup(path);
    f->flag = flag;
    if (!f->id || !f->path) {
        free(f->id);
        free(f->path);
        return 1;
    }
    l->n++;
    return 0;
}

void folder_list_truncate(folder_list *l, size_t n)
{
    while (l->n > n) {
        l->n--;
        free(l->v[l->n].id);
        free(l->v[l->n].path);
    }
}

static int cmp_path(const void *a, const void *b)
{
    return strcmp(((const folder_item *)a)->path, ((const folder_item *)b)->path);
}

void folder_list_sort(folder_list *l)
{
    if (l->n) qsort(l->v, l->n, sizeof *l->v, cmp_path);
}

void folder_list_free(folder_list *l)
{
    folder_list_truncate(l, 0);
    free(l->v);
    memset(l, 0, sizeof *l);
}

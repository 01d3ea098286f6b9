/* export_list.c - what an export selects: the records of a mailbox's archive that match the
 * profile's folder and search, one entry per (folder, message), sorted. See export.h. */
#include "export.h"

#include "mv/archive.h"
#include "mv/log.h"
#include "mv/search.h"
#include "mv/store.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>

/* A folder path of the index as a relative directory: components kept ("%2F" stays), but
 * "." and ".." and control bytes can never escape or confuse the destination. */
static void dir_of(const char *folder, char *out, size_t outlen)
{
    size_t o = 0;
    const char *c = folder;
    while (*c && o + 4 < outlen) {
        const char *end = strchr(c, '/');
        size_t n = end ? (size_t)(end - c) : strlen(c);
        if (n == 0) { /* an empty component: skip */
        } else if ((n == 1 && c[0] == '.') || (n == 2 && c[0] == '.' && c[1] == '.')) {
            for (size_t i = 0; i < n && o + 4 < outlen; i++) {
                memcpy(out + o, "%2E", 3);
                o += 3;
            }
            out[o++] = '/';
        } else {
            for (size_t i = 0; i < n && o + 2 < outlen; i++)
                out[o++] = ((unsigned char)c[i] < 0x20 || c[i] == 0x7f) ? '_' : c[i];
            out[o++] = '/';
        }
        c += n;
        if (*c == '/') c++;
    }
    out[o] = '\0';
}

static int collect(void *ud, const mv_segment *seg, const mv_index_rec *rec)
{
    xlist *l = ud;
    if (!mv_search_match(&l->p->exp_search, seg->folder, rec)) return 0;
    char dir[2048] = "";
    /* a tenant-wide export keeps each mailbox apart: "<mailbox>/<folder>" */
    char *folder = l->mailbox ? mv_aprintf("%s/%s", l->mailbox, seg->folder) : strdup(seg->folder);
    char *rel = NULL;
    if (!folder) goto nomem;
    if (l->p->exp_imap || l->p->exp_ews) { /* grouped by folder, one entry per (folder, message) */
        rel = mv_aprintf("%s\t%s", folder, rec->hash);
    } else {
        if (!l->p->exp_flat) dir_of(folder, dir, sizeof dir);
        rel = mv_aprintf("%s%s.eml", dir, rec->hash);
    }
    if (!rel) goto nomem;
    if (l->n == l->cap) {
        size_t nc = l->cap ? l->cap * 2 : 256;
        xfile *nv = realloc(l->v, nc * sizeof *nv);
        if (!nv) goto nomem;
        l->v = nv;
        l->cap = nc;
    }
    xfile *f = &l->v[l->n];
    memset(f, 0, sizeof *f);
    f->rel = rel;
    memcpy(f->hash, rec->hash, sizeof f->hash);
    f->size = rec->size;
    f->idate = rec->internaldate;
    snprintf(f->flags, sizeof f->flags, "%s", rec->flags);
    f->folder = folder;
    f->msgid = rec->msgid[0] ? strdup(rec->msgid) : NULL;
    if (rec->msgid[0] && !f->msgid) goto nomem;
    l->n++;
    return 0;
nomem:
    free(folder);
    free(rel);
    l->failed = 1;
    return 1;
}

typedef struct mailbox_names {
    char **v;
    size_t n, cap;
    int failed;
} mailbox_names;

static int add_mailbox(void *ud, const char *mailbox)
{
    mailbox_names *m = ud;
    if (m->n == m->cap) {
        size_t nc = m->cap ? m->cap * 2 : 64;
        char **nv = realloc(m->v, nc * sizeof *nv);
        if (!nv) {
            m->failed = 1;
            return 1;
        }
        m->v = nv;
        m->cap = nc;
    }
    if (!(m->v[m->n] = strdup(mailbox))) {
        m->failed = 1;
        return 1;
    }
    m->n++;
    return 0;
}

static int cmp_rel(const void *a, const void *b)
{
    return strcmp(((const xfile *)a)->rel, ((const xfile *)b)->rel);
}

void xlist_free(xlist *l)
{
    for (size_t i = 0; i < l->n; i++) {
        free(l->v[i].rel);
        free(l->v[i].folder);
        free(l->v[i].msgid);
    }
    free(l->v);
    memset(l, 0, sizeof *l);
}

mv_err export_list(chunk_ctx *c, const mv_profile *p, xlist *l, char *err, size_t errlen)
{
    memset(l, 0, sizeof *l);
    l->p = p;
    mv_err rc;
    if (strcmp(p->exp_mailbox, MV_EXPORT_ALL_MAILBOXES) == 0) { /* every archived mailbox */
        mailbox_names m = {0};
        rc = mv_store_mailbox_list(c->r->store, c->t->tenant, add_mailbox, &m, err, errlen);
        if (!rc && m.failed) rc = mv_seterr(err, errlen, MV_ENOMEM, "out of memory");
        for (size_t i = 0; i < m.n && !rc && !l->failed; i++) {
            l->mailbox = m.v[i];
            rc = mv_archive_list(c->r->store, c->t->tenant, m.v[i], collect, l, err, errlen);
        }
        l->mailbox = NULL;
        for (size_t i = 0; i < m.n; i++)
            free(m.v[i]);
        free(m.v);
    } else {
        rc = mv_archive_list(c->r->store, c->t->tenant, p->exp_mailbox, collect, l, err, errlen);
    }
    if (!rc && l->failed)
        rc = mv_seterr(err, errlen, MV_ENOMEM, "out of memory listing the archive");
    if (rc) return rc;
    if (l->n == 0)
        mv_warn("nothing to export", " tenant=%s export=%s mailbox=%s folder=\"%s\"", c->t->tenant,
                p->name, p->exp_mailbox, p->exp_folder);
    if (l->n) qsort(l->v, l->n, sizeof *l->v, cmp_rel);
    return MV_OK;
}

void export_count(chunk_ctx *c, uint64_t written, uint64_t bytes, uint64_t kept)
{
    char serr[MV_ERRLEN];
    const char *fields[] = {"messages", "bytes_raw", "deduplicated", "total_messages"};
    int64_t incr[] = {(int64_t)written, (int64_t)bytes, (int64_t)kept, (int64_t)written};
    for (size_t k = 0; k < sizeof incr / sizeof *incr; k++)
        if (incr[k] && mv_state_status_incr(c->r->st, c->t->tenant, c->t->mailbox, fields[k],
                                            incr[k], serr, sizeof serr))
            mv_warn("cannot count export progress", " error=\"%s\"", serr);
    if ((written && mv_state_metric_incr(c->r->st, c->t->tenant, "exported_messages",
                                         (int64_t)written, serr, sizeof serr)) ||
        (bytes && mv_state_metric_incr(c->r->st, c->t->tenant, "exported_bytes", (int64_t)bytes,
                                       serr, sizeof serr)))
        mv_warn("cannot count export metrics", " error=\"%s\"", serr);
}

void export_dest_id(char out[17], const char *fmt, ...)
{
    char what[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof what, fmt, ap);
    va_end(ap);
    unsigned char d[32];
    unsigned int dl = 0;
    EVP_Digest(what, strlen(what), d, &dl, EVP_sha256(), NULL);
    mv_hex(d, 8, out);
}

typedef struct xstream {
    chunk_ctx *c;
    int (*out)(void *ud, const void *p, size_t n);
    void *ud;
    uint64_t sent;
    int cancelled;
} xstream;

static int stream_piece(void *ud, const void *p, size_t n)
{
    xstream *s = ud;
    if (s->out(s->ud, p, n)) return 1;
    s->sent += n;
    if (chunk_beat(s->c, 0)) {
        s->cancelled = 1;
        return 1;
    }
    return 0;
}

mv_err export_stream(chunk_ctx *c, const xfile *f, int (*out)(void *ud, const void *p, size_t n),
                     void *ud, char *err, size_t errlen)
{
    xstream s = {c, out, ud, 0, 0};
    mv_err rc = mv_store_get(c->r->store, c->t->tenant, f->hash, stream_piece, &s, err, errlen);
    if (s.cancelled) return mv_seterr(err, errlen, MV_ECANCEL, "%s", c->err);
    if (!rc && s.sent != f->size)
        rc = mv_seterr(err, errlen, MV_ECORRUPT, "object %s has %llu bytes, the index says %llu",
                       f->hash, (unsigned long long)s.sent, (unsigned long long)f->size);
    return rc;
}

/* Messages put but not yet sent (a batching destination), with their record members. */
typedef struct pending {
    const xfile **f;
    char **member;
    size_t n;
    uint64_t bytes;
} pending;

static void pending_drop(pending *q)
{
    for (size_t i = 0; i < q->n; i++)
        free(q->member[i]);
    q->n = 0;
    q->bytes = 0;
}

/* 1 if f is queued already (same bytes, or same Message-ID): the destination search would
 * find it once the batch is stored. */
static int pending_holds(const pending *q, const xfile *f)
{
    for (size_t i = 0; i < q->n; i++)
        if (!strcmp(q->f[i]->hash, f->hash) ||
            (f->msgid && q->f[i]->msgid && !strcmp(q->f[i]->msgid, f->msgid)))
            return 1;
    return 0;
}

/* Send the queued messages, then record them; dropped (not recorded) when sending fails. */
static mv_err pending_flush(chunk_ctx *c, const xdest *d, const char *dest, pending *q,
                            uint64_t *written, uint64_t *bytes, char *err, size_t errlen)
{
    if (!q->n) return MV_OK;
    mv_err rc = d->flush(d->ud, err, errlen);
    for (size_t i = 0; i < q->n && !rc; i++) {
        rc = mv_state_set_add(c->r->st, c->t->tenant, "export", dest, q->member[i], err, errlen);
        if (!rc) {
            (*written)++;
            *bytes += q->f[i]->size;
        }
    }
    pending_drop(q);
    return rc;
}

#define RESUME_FOLDER "export-resume" /* the export task's only "folder" in Redis */

size_t export_resume(chunk_ctx *c, const xlist *l)
{
    const mv_task *t = c->t;
    if (t->chunk == 0 || l->n == 0) return 0; /* a run starts at the top */
    mv_cursor *cu = calloc(1, sizeof *cu);
    char err[MV_ERRLEN];
    size_t at = 0;
    if (!cu || mv_state_cursor_get(c->r->st, t->tenant, t->mailbox, RESUME_FOLDER, cu, err,
                                   sizeof err) != MV_OK)
        goto out;
    char *tab = strchr(cu->link, '\t');
    if (!tab) goto out;
    *tab = '\0';
    if (strcmp(cu->link, t->run_id) != 0) goto out; /* another run's */
    size_t lo = 0, hi = l->n;                       /* the first rel after the mark */
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (strcmp(l->v[mid].rel, tab + 1) <= 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    at = lo;
    mv_debug("export resumed", " tenant=%s task=%s chunk=%u skipped=%zu", t->tenant, t->id,
             t->chunk, at);
out:
    free(cu);
    return at;
}

void export_mark(chunk_ctx *c, const xlist *l, size_t upto)
{
    const mv_task *t = c->t;
    if (upto == 0 || upto > l->n) return;
    mv_cursor *cu = calloc(1, sizeof *cu);
    char err[MV_ERRLEN];
    if (!cu) return;
    if ((size_t)snprintf(cu->link, sizeof cu->link, "%s\t%s", t->run_id, l->v[upto - 1].rel) <
            sizeof cu->link &&
        mv_state_cursor_commit(c->r->st, t->tenant, t->mailbox, RESUME_FOLDER, cu, c->r->worker_id,
                               c->token, NULL, NULL, 0, err, sizeof err))
        mv_warn("cannot record where the export stopped (the next chunk checks from the top)",
                " tenant=%s task=%s error=\"%s\"", t->tenant, t->id, err);
    free(cu);
}

mv_err export_deliver(chunk_ctx *c, const xlist *l, const xdest *d, const char *dest, xcount *n,
                      int *more, char *err, size_t errlen)
{
    mv_runner *r = c->r;
    const mv_task *t = c->t;
    mv_err rc = MV_OK;
    uint64_t written = 0, bytes = 0, kept = 0;
    int64_t deadline = mv_mono_ms() + (int64_t)r->cfg->chunk_seconds * 1000;
    char key[4096], member[4200];
    pending q = {0};
    size_t qmax = d->flush ? (d->batch_max ? d->batch_max : 1) : 0;
    if (qmax &&
        (!(q.f = calloc(qmax, sizeof *q.f)) || !(q.member = calloc(qmax, sizeof *q.member)))) {
        free(q.f);
        return mv_seterr(err, errlen, MV_ENOMEM, "out of memory");
    }
    const char *prev = NULL;
    size_t i = export_resume(c, l);
    for (; i < l->n; i++) {
        const xfile *f = &l->v[i];
        if (i && !strcmp(f->rel, l->v[i - 1].rel)) continue; /* listed in two segments */
        if ((rc = chunk_beat(c, 0))) {
            mv_seterr(err, errlen, rc, "%s", c->err);
            break;
        }
        /* a batch goes to one folder: send it before the folder changes */
        if (q.n && prev && strcmp(prev, f->folder) &&
            (rc = pending_flush(c, d, dest, &q, &written, &bytes, err, errlen)))
            break;
        prev = f->folder;
        if ((rc = d->folder(d->ud, f, key, sizeof key, err, errlen))) break;
        snprintf(member, sizeof member, "%s\t%s", key, f->hash);
        int present = qmax && pending_holds(&q, f), asked = 1;
        if (!present && (rc = d->holds(d->ud, f, &present, &asked, err, errlen))) break;
        if (!present && !asked &&
            (rc = mv_state_set_member(r->st, t->tenant, "export", dest, member, &present, err,
                                      errlen)))
            break;
        int sending = 0; /* marked "being sent" by an attempt that may have died meanwhile */
        if (!present && !asked && d->holds_bytes &&
            ((rc = mv_state_set_member(r->st, t->tenant, "export-sending", dest, member, &sending,
                                       err, errlen)) ||
             (sending && (rc = d->holds_bytes(d->ud, f, &present, err, errlen)))))
            break;
        if (present) {
            kept++;
            continue;
        }
        if (written + q.n >= (uint64_t)r->cfg->chunk_messages || mv_mono_ms() > deadline ||
            *r->stopping) {
            *more = 1;
            break;
        }
        if (qmax && (q.n == qmax || (q.n && q.bytes + f->size > d->batch_bytes)) &&
            (rc = pending_flush(c, d, dest, &q, &written, &bytes, err, errlen)))
            break;
        /* without a Message-ID the destination cannot be asked cheaply: say it is being sent,
         * so that after a crash before its record the next attempt compares bytes */
        if (!asked && d->holds_bytes && !sending &&
            (rc = mv_state_set_add(r->st, t->tenant, "export-sending", dest, member, err, errlen)))
            break;
        if ((rc = d->put(d->ud, f, err, errlen))) break;
        if (qmax) { /* queued: recorded once sent */
            if (!(q.member[q.n] = strdup(member))) {
                rc = mv_seterr(err, errlen, MV_ENOMEM, "out of memory");
                break;
            }
            q.f[q.n++] = f;
            q.bytes += f->size;
            continue;
        }
        if ((rc = mv_state_set_add(r->st, t->tenant, "export", dest, member, err, errlen))) break;
        written++;
        bytes += f->size;
    }
    if (!rc)
        rc = pending_flush(c, d, dest, &q, &written, &bytes, err, errlen);
    else
        pending_drop(&q);
    if (!rc && *more) export_mark(c, l, i); /* everything before entry i is handled */
    free(q.f);
    free(q.member);
    export_count(c, written, bytes, kept);
    n->written += written;
    n->bytes += bytes;
    n->kept += kept;
    return rc;
}

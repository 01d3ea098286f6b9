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
    char *rel;
    if (l->p->exp_imap || l->p->exp_ews) { /* grouped by folder, one entry per (folder, message) */
        rel = mv_aprintf("%s\t%s", seg->folder, rec->hash);
    } else {
        if (!l->p->exp_flat) dir_of(seg->folder, dir, sizeof dir);
        rel = mv_aprintf("%s%s.eml", dir, rec->hash);
    }
    if (!rel) goto nomem;
    if (l->n == l->cap) {
        size_t nc = l->cap ? l->cap * 2 : 256;
        xfile *nv = realloc(l->v, nc * sizeof *nv);
        if (!nv) {
            free(rel);
            goto nomem;
        }
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
    f->folder = strdup(seg->folder);
    f->msgid = rec->msgid[0] ? strdup(rec->msgid) : NULL;
    if (!f->folder || (rec->msgid[0] && !f->msgid)) {
        free(f->folder);
        free(f->msgid);
        free(rel);
        goto nomem;
    }
    l->n++;
    return 0;
nomem:
    l->failed = 1;
    return 1;
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
    mv_err rc = mv_archive_list(c->r->store, c->t->tenant, p->exp_mailbox, collect, l, err, errlen);
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

mv_err export_deliver(chunk_ctx *c, const xlist *l, const xdest *d, const char *dest, xcount *n,
                      int *more, char *err, size_t errlen)
{
    mv_runner *r = c->r;
    const mv_task *t = c->t;
    mv_err rc = MV_OK;
    uint64_t written = 0, bytes = 0, kept = 0;
    int64_t deadline = mv_mono_ms() + (int64_t)r->cfg->chunk_seconds * 1000;
    char key[4096], member[4200];
    for (size_t i = 0; i < l->n; i++) {
        const xfile *f = &l->v[i];
        if (i && !strcmp(f->rel, l->v[i - 1].rel)) continue; /* listed in two segments */
        if ((rc = chunk_beat(c, 0))) {
            mv_seterr(err, errlen, rc, "%s", c->err);
            break;
        }
        if ((rc = d->folder(d->ud, f, key, sizeof key, err, errlen))) break;
        snprintf(member, sizeof member, "%s\t%s", key, f->hash);
        int present = 0, asked = 0;
        if ((rc = d->holds(d->ud, f, &present, &asked, err, errlen))) break;
        if (!asked && (rc = mv_state_set_member(r->st, t->tenant, "export", dest, member, &present,
                                                err, errlen)))
            break;
        if (present) {
            kept++;
            continue;
        }
        if (written >= (uint64_t)r->cfg->chunk_messages || mv_mono_ms() > deadline ||
            *r->stopping) {
            *more = 1;
            break;
        }
        if ((rc = d->put(d->ud, f, err, errlen))) break;
        if ((rc = mv_state_set_add(r->st, t->tenant, "export", dest, member, err, errlen))) break;
        written++;
        bytes += f->size;
    }
    export_count(c, written, bytes, kept);
    n->written += written;
    n->bytes += bytes;
    n->kept += kept;
    return rc;
}

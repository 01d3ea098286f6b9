/* export_imap.c - export a mailbox's archive into an IMAP mailbox (any server): APPEND with
 * the archived INTERNALDATE and flags, under a root folder, the folder structure kept (tree)
 * or flattened into the root (flat).
 *
 * Never a second copy: before each APPEND the destination folder is asked whether it already
 * holds the message (UID SEARCH HEADER Message-ID), which also covers a destination changed
 * by hand and a crash between an APPEND and its record; a message without a Message-ID is
 * looked up in what this destination received (mv:export:{t}:{destination}, Redis), recorded
 * after each APPEND. Messages go out with LITERAL+ when the server offers it (the literal
 * follows the command without a round trip), else with synchronising literals; either way a
 * message is streamed from the store, never held whole.
 *
 * Chunks: at most worker.chunk_messages APPENDs per task chunk (or worker.chunk_seconds); a
 * continuation goes on. Folder names become the server's hierarchy (its delimiter from LIST)
 * in modified UTF-7. */
#include "chunk.h"
#include "export.h"
#include "tokens.h"

#include "mv/imap.h"
#include "mv/jobs.h"
#include "mv/log.h"
#include "mv/store.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>

typedef struct asink {
    mv_imap *im;
    chunk_ctx *c;
    uint64_t sent;
    mv_err failed;
    char err[MV_ERRLEN];
} asink;

static int append_piece(void *ud, const void *p, size_t n)
{
    asink *a = ud;
    if ((a->failed = mv_imap_append_data(a->im, p, n, a->err, sizeof a->err))) return 1;
    a->sent += n;
    if (chunk_beat(a->c, 0)) {
        a->failed = MV_ECANCEL;
        snprintf(a->err, sizeof a->err, "%s", a->c->err);
        return 1;
    }
    return 0;
}

/* The destination folder of a message: root, then (tree) the folder's components joined with
 * the server's delimiter; encoded for the wire. */
static mv_err target_of(const mv_profile *p, const char *folder, char delim, char *out,
                        size_t outlen, char *err, size_t errlen)
{
    char utf8[2048];
    size_t o = (size_t)snprintf(utf8, sizeof utf8, "%s", p->exp_root);
    if (!p->exp_flat && *folder && delim) {
        if (o + 1 < sizeof utf8) utf8[o++] = delim;
        for (const char *c = folder; *c && o + 1 < sizeof utf8; c++)
            utf8[o++] = *c == '/' ? delim : *c;
        utf8[o] = '\0';
    }
    if (o >= sizeof utf8 - 1)
        return mv_seterr(err, errlen, MV_EINVAL, "destination folder name too long");
    if (mv_imap_utf7_encode(utf8, out, outlen))
        return mv_seterr(err, errlen, MV_EINVAL, "folder \"%s\" cannot be named on the server",
                         utf8);
    return MV_OK;
}

#define BATCH_BYTES (32u << 20) /* at most this much in one MULTIAPPEND */

/* Messages for one destination folder, sent as one APPEND (MULTIAPPEND when offered: the
 * server keeps all or none) once the batch is full, the folder changes or the chunk ends. */
typedef struct batch {
    mv_imap *im;
    chunk_ctx *c;
    const char *dest;   /* the destination's id (its record in Redis) */
    const char *target; /* the folder, wire-encoded */
    int multi;
    const xfile **v;
    size_t n;
    uint64_t bytes;
    uint64_t written, sent_bytes; /* totals of the flushed batches */
    uint64_t commands;            /* APPEND commands they took */
} batch;

/* 1 if the batch already holds this message (same Message-ID, or same bytes): one copy per
 * folder, as the destination search would say once the batch is stored. */
static int queued(const batch *b, const xfile *f)
{
    for (size_t i = 0; i < b->n; i++)
        if (!strcmp(b->v[i]->hash, f->hash) ||
            (f->msgid && b->v[i]->msgid && !strcmp(b->v[i]->msgid, f->msgid)))
            return 1;
    return 0;
}

/* Stream one message's bytes from the store into the APPEND in progress. */
static mv_err send_one(batch *b, const xfile *f, char *err, size_t errlen)
{
    mv_runner *r = b->c->r;
    asink a = {b->im, b->c, 0, MV_OK, ""};
    mv_err rc = mv_store_get(r->store, b->c->t->tenant, f->hash, append_piece, &a, err, errlen);
    if (a.failed) rc = mv_seterr(err, errlen, a.failed, "%s", a.err);
    if (!rc && a.sent != f->size)
        rc = mv_seterr(err, errlen, MV_ECORRUPT, "object %s has %llu bytes, the index says %llu",
                       f->hash, (unsigned long long)a.sent, (unsigned long long)f->size);
    return rc;
}

/* Send the queued messages (one APPEND with all of them, or one APPEND each without
 * MULTIAPPEND), then record them as received by this destination. A half-sent APPEND leaves
 * the connection unusable: the attempt ends with the error. */
static mv_err flush(batch *b, char *err, size_t errlen)
{
    mv_runner *r = b->c->r;
    mv_err rc = MV_OK;
    size_t done = 0;
    while (done < b->n && !rc) {
        size_t upto = b->multi ? b->n : done + 1;
        const xfile *f = b->v[done];
        rc = mv_imap_append_begin(b->im, b->target, f->flags, f->idate, f->size, err, errlen);
        b->commands++;
        for (size_t i = done; i < upto && !rc; i++) {
            f = b->v[i];
            if (i > done) rc = mv_imap_append_next(b->im, f->flags, f->idate, f->size, err, errlen);
            if (!rc) rc = send_one(b, f, err, errlen);
        }
        if (!rc) rc = mv_imap_append_end(b->im, err, errlen);
        for (size_t i = done; i < upto && !rc; i++) {
            char member[2400];
            snprintf(member, sizeof member, "%s\t%s", b->target, b->v[i]->hash);
            if ((rc = mv_state_set_add(r->st, b->c->t->tenant, "export", b->dest, member, err,
                                       errlen)))
                break;
            b->written++;
            b->sent_bytes += b->v[i]->size;
        }
        done = upto;
    }
    b->n = 0;
    b->bytes = 0;
    return rc;
}

mv_err export_imap_run(chunk_ctx *c, const mv_profile *p, const char *password, int *more,
                       char *err, size_t errlen)
{
    const mv_task *t = c->t;
    mv_runner *r = c->r;
    xlist l = {0};
    mv_imap *im = NULL;
    uint64_t written = 0, kept = 0, bytes = 0, appends = 0;
    *more = 0;
    c->profile = p;
    mv_err rc = export_list(c, p, &l, err, errlen);
    if (rc) goto out;
    mv_imap_opts o;
    mv_jobs_imap_opts(&o, r->cfg, p);
    token_cache tc = {c, p->host}; /* m365: the cluster's token for Exchange Online */
    mv_oauth_source ts = token_cache_source(&tc);
    if ((rc = mv_imap_connect(&o, &im, err, errlen)) ||
        (rc = mv_jobs_export_login(r->cfg, p, password, &ts, im, err, errlen)))
        goto out;
    char delim = '\0';
    if ((rc = mv_imap_delimiter(im, &delim, err, errlen))) goto out;
    /* this destination's record of what it received */
    char dest[64];
    {
        char id[1024];
        unsigned char d[32];
        unsigned int dl = 0;
        snprintf(id, sizeof id, "imap:%s:%d:%s:%s", p->host, p->port, p->exp_login, p->exp_root);
        EVP_Digest(id, strlen(id), d, &dl, EVP_sha256(), NULL);
        mv_hex(d, 8, dest);
    }
    char cur[2048] = "";
    int64_t deadline = mv_mono_ms() + (int64_t)r->cfg->chunk_seconds * 1000;
    batch b = {.im = im,
               .c = c,
               .dest = dest,
               .multi = p->exp_multiappend && mv_imap_has_cap(im, "MULTIAPPEND")};
    if (!(b.v = calloc((size_t)r->cfg->export_append_batch, sizeof *b.v))) {
        rc = mv_seterr(err, errlen, MV_ENOMEM, "out of memory");
        goto out;
    }
    for (size_t i = 0; i < l.n && !rc; i++) {
        const xfile *f = &l.v[i];
        if (i && !strcmp(f->rel, l.v[i - 1].rel)) continue; /* listed in two segments */
        if ((rc = chunk_beat(c, 0))) {
            mv_seterr(err, errlen, rc, "%s", c->err);
            break;
        }
        char target[2048];
        if ((rc = target_of(p, p->exp_flat ? "" : f->folder, delim, target, sizeof target, err,
                            errlen)))
            break;
        if (strcmp(target, cur) != 0) { /* a new destination folder: make sure it exists */
            if ((rc = flush(&b, err, errlen))) break;
            mv_imap_mailbox info;
            if ((rc = mv_imap_create(im, target, err, errlen)) ||
                (rc = mv_imap_examine(im, target, &info, err, errlen)))
                break;
            snprintf(cur, sizeof cur, "%s", target);
            b.target = cur;
        }
        int present = queued(&b, f);
        if (!present && f->msgid) {
            size_t count = 0;
            if ((rc = mv_imap_search_header(im, "Message-ID", f->msgid, &count, err, errlen)))
                break;
            present = count > 0;
        } else if (!present) {
            char member[2400];
            snprintf(member, sizeof member, "%s\t%s", target, f->hash);
            if ((rc = mv_state_set_member(r->st, t->tenant, "export", dest, member, &present, err,
                                          errlen)))
                break;
        }
        if (present) {
            kept++;
            continue;
        }
        if (b.written + b.n >= (uint64_t)r->cfg->chunk_messages || mv_mono_ms() > deadline ||
            *r->stopping) {
            *more = 1;
            break;
        }
        if ((b.n == (size_t)r->cfg->export_append_batch || b.bytes + f->size > BATCH_BYTES) &&
            (rc = flush(&b, err, errlen)))
            break;
        b.v[b.n++] = f;
        b.bytes += f->size;
    }
    if (!rc) rc = flush(&b, err, errlen); /* what was queued goes out, also before a pause */
    written = b.written;
    bytes = b.sent_bytes;
    appends = b.commands;
    free(b.v);
    if (rc == MV_ETOOBIG || (rc == MV_EAUTH && strstr(err, "read-only"))) {
        char tmp[MV_ERRLEN];
        snprintf(tmp, sizeof tmp, "%s", err);
        mv_seterr(err, errlen, rc, "export to %s@%s: %s", p->exp_login, p->host, tmp);
    }
out:
    export_count(c, written, bytes, kept);
    mv_info(*more ? "export chunk done" : "export done",
            " tenant=%s export=%s destination=imap written=%llu kept=%llu appends=%llu", t->tenant,
            p->name, (unsigned long long)written, (unsigned long long)kept,
            (unsigned long long)appends);
    mv_imap_close(im);
    xlist_free(&l);
    return rc;
}

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
 * message is streamed from the store, never held whole. With MULTIAPPEND (RFC 3502) the
 * messages for one folder go in batches of export.append_batch (32 MiB at most), one APPEND
 * command each, stored all or none and recorded after the server's OK.
 *
 * A Microsoft 365 destination (type m365) is the same after the login, which is AUTHENTICATE
 * XOAUTH2 as the tenant's app with a token for Exchange Online (mv_jobs_export_login).
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

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>

/* APPEND's literal, fed by export_stream. */
typedef struct asink {
    mv_imap *im;
    mv_err failed;
    char err[MV_ERRLEN];
} asink;

static int append_piece(void *ud, const void *p, size_t n)
{
    asink *a = ud;
    return (a->failed = mv_imap_append_data(a->im, p, n, a->err, sizeof a->err)) != MV_OK;
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

/* The IMAP destination's side of export_deliver. */
typedef struct idest {
    chunk_ctx *c;
    const mv_profile *p;
    mv_imap *im;
    char delim;
    char cur[2048];  /* the selected folder, as named on the wire */
    const xfile **q; /* MULTIAPPEND: queued for the next APPEND */
    size_t nq;
    uint64_t commands; /* APPEND commands sent */
} idest;

static mv_err imap_folder(void *ud, const xfile *f, char *key, size_t keylen, char *err,
                          size_t errlen)
{
    idest *d = ud;
    char target[2048];
    mv_err rc = target_of(d->p, d->p->exp_flat ? "" : f->folder, d->delim, target, sizeof target,
                          err, errlen);
    if (rc) return rc;
    if (strcmp(target, d->cur) != 0) { /* a new destination folder: make sure it exists */
        mv_imap_mailbox info;
        if ((rc = mv_imap_create(d->im, target, err, errlen)) ||
            (rc = mv_imap_examine(d->im, target, &info, err, errlen)))
            return rc;
        snprintf(d->cur, sizeof d->cur, "%s", target);
    }
    snprintf(key, keylen, "%s", d->cur);
    return MV_OK;
}

static mv_err imap_holds(void *ud, const xfile *f, int *present, int *asked, char *err,
                         size_t errlen)
{
    idest *d = ud;
    *asked = f->msgid != NULL;
    if (!f->msgid) return MV_OK;
    size_t count = 0;
    mv_err rc = mv_imap_search_header(d->im, "Message-ID", f->msgid, &count, err, errlen);
    *present = count > 0;
    return rc;
}

typedef struct hsum {
    EVP_MD_CTX *md;
    uint64_t got;
} hsum;

static int hsum_begin(void *ud, uint64_t size)
{
    (void)size;
    hsum *h = ud;
    h->got = 0;
    return EVP_DigestInit_ex(h->md, EVP_sha256(), NULL) != 1;
}

static int hsum_data(void *ud, const void *p, size_t n)
{
    hsum *h = ud;
    h->got += n;
    return EVP_DigestUpdate(h->md, p, n) != 1;
}

static int hsum_done(void *ud, const mv_imap_msg *m, int had_body)
{
    (void)ud;
    (void)m;
    (void)had_body;
    return 0;
}

/* Whether the current folder holds a message of f's exact bytes: the messages of its size,
 * fetched and hashed (a message without a Message-ID whose APPEND may have been stored by an
 * attempt that died before recording it). */
static mv_err imap_holds_bytes(void *ud, const xfile *f, int *present, char *err, size_t errlen)
{
    idest *d = ud;
    uint32_t *uids = NULL;
    size_t n = 0;
    *present = 0;
    mv_err rc = mv_imap_search_size(d->im, f->size, &uids, &n, err, errlen);
    hsum h = {EVP_MD_CTX_new(), 0};
    mv_imap_fetch_cb cb = {hsum_begin, hsum_data, hsum_done};
    if (!rc && !h.md) rc = mv_seterr(err, errlen, MV_ENOMEM, "out of memory");
    for (size_t i = 0; i < n && !rc && !*present; i++) {
        if ((rc = mv_imap_fetch_range(d->im, uids[i], uids[i], &cb, &h, err, errlen))) break;
        unsigned char md[32];
        unsigned int ml = 0;
        char hex[65];
        if (h.got == f->size && EVP_DigestFinal_ex(h.md, md, &ml) == 1) {
            mv_hex(md, 32, hex);
            *present = strcmp(hex, f->hash) == 0;
        }
    }
    mv_debug("export: destination compared by bytes", " candidates=%zu present=%d", n, *present);
    EVP_MD_CTX_free(h.md);
    free(uids);
    return rc;
}

/* One message's bytes into the APPEND in progress. */
static mv_err send_body(idest *d, const xfile *f, char *err, size_t errlen)
{
    asink a = {d->im, MV_OK, ""};
    mv_err rc = export_stream(d->c, f, append_piece, &a, err, errlen);
    if (a.failed) rc = mv_seterr(err, errlen, a.failed, "%s", a.err);
    return rc;
}

static mv_err imap_put(void *ud, const xfile *f, char *err, size_t errlen)
{
    idest *d = ud;
    mv_err rc = mv_imap_append_begin(d->im, d->cur, f->flags, f->idate, f->size, err, errlen);
    if (rc) return rc;
    d->commands++;
    rc = send_body(d, f, err, errlen);
    if (!rc) rc = mv_imap_append_end(d->im, err, errlen);
    return rc; /* a half-sent APPEND leaves the connection unusable: the attempt ends */
}

static mv_err imap_queue(void *ud, const xfile *f, char *err, size_t errlen)
{
    (void)err;
    (void)errlen;
    idest *d = ud;
    d->q[d->nq++] = f; /* export_deliver flushes before the batch would overflow */
    return MV_OK;
}

/* The queued messages as one MULTIAPPEND; the server keeps all of them or none. */
static mv_err imap_flush(void *ud, char *err, size_t errlen)
{
    idest *d = ud;
    size_t n = d->nq;
    d->nq = 0;
    if (!n) return MV_OK;
    const xfile *f = d->q[0];
    mv_err rc = mv_imap_append_begin(d->im, d->cur, f->flags, f->idate, f->size, err, errlen);
    if (rc) return rc;
    d->commands++;
    for (size_t i = 0; i < n && !rc; i++) {
        f = d->q[i];
        if (i) rc = mv_imap_append_next(d->im, f->flags, f->idate, f->size, err, errlen);
        if (!rc) rc = send_body(d, f, err, errlen);
    }
    if (!rc) rc = mv_imap_append_end(d->im, err, errlen);
    return rc;
}

mv_err export_imap_run(chunk_ctx *c, const mv_profile *p, const char *password, int *more,
                       char *err, size_t errlen)
{
    const mv_task *t = c->t;
    mv_runner *r = c->r;
    xlist l = {0};
    idest id = {.c = c, .p = p};
    xcount n = {0};
    *more = 0;
    c->profile = p;
    mv_err rc = export_list(c, p, &l, err, errlen);
    if (rc) goto out;
    mv_imap_opts o;
    mv_jobs_imap_opts(&o, r->cfg, p);
    token_cache tc = {c, p->host}; /* m365: the cluster's token for Exchange Online */
    mv_oauth_source ts = token_cache_source(&tc);
    if ((rc = mv_imap_connect(&o, &id.im, err, errlen)) ||
        (rc = mv_jobs_export_login(r->cfg, p, password, &ts, id.im, err, errlen)) ||
        (rc = mv_imap_delimiter(id.im, &id.delim, err, errlen)))
        goto out;
    /* this destination's record of what it received */
    char dest[17];
    export_dest_id(dest, "imap:%s:%d:%s:%s", p->host, p->port, p->exp_login, p->exp_root);
    xdest d = {&id, imap_folder, imap_holds, imap_put, NULL, 0, 0, imap_holds_bytes};
    if (p->exp_multiappend && mv_imap_has_cap(id.im, "MULTIAPPEND")) {
        d.batch_max = (size_t)r->cfg->export_append_batch;
        d.batch_bytes = 32u << 20;
        if (!(id.q = calloc(d.batch_max, sizeof *id.q))) {
            rc = mv_seterr(err, errlen, MV_ENOMEM, "out of memory");
            goto out;
        }
        d.put = imap_queue;
        d.flush = imap_flush;
    }
    rc = export_deliver(c, &l, &d, dest, &n, more, err, errlen);
    if (rc == MV_ETOOBIG || (rc == MV_EAUTH && strstr(err, "read-only"))) {
        char tmp[MV_ERRLEN];
        snprintf(tmp, sizeof tmp, "%s", err);
        mv_seterr(err, errlen, rc, "export to %s@%s: %s", p->exp_login, p->host, tmp);
    }
out:
    mv_info(*more ? "export chunk done" : "export done",
            " tenant=%s export=%s destination=imap written=%llu kept=%llu appends=%llu", t->tenant,
            p->name, (unsigned long long)n.written, (unsigned long long)n.kept,
            (unsigned long long)id.commands);
    mv_imap_close(id.im);
    free(id.q);
    xlist_free(&l);
    return rc;
}

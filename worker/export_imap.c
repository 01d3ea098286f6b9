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

#include "mv/imap.h"
#include "mv/log.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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
    char cur[2048]; /* the selected folder, as named on the wire */
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

static mv_err imap_put(void *ud, const xfile *f, char *err, size_t errlen)
{
    idest *d = ud;
    mv_err rc = mv_imap_append_begin(d->im, d->cur, f->flags, f->idate, f->size, err, errlen);
    if (rc) return rc;
    asink a = {d->im, MV_OK, ""};
    rc = export_stream(d->c, f, append_piece, &a, err, errlen);
    if (a.failed) rc = mv_seterr(err, errlen, a.failed, "%s", a.err);
    if (!rc) rc = mv_imap_append_end(d->im, err, errlen);
    return rc; /* a half-sent APPEND leaves the connection unusable: the attempt ends */
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
    mv_imap_opts_default(&o);
    o.host = p->host;
    o.port = p->port;
    o.tls = p->tls;
    o.verify = p->verify;
    o.ca_file = r->cfg->ca_file[0] ? r->cfg->ca_file : NULL;
    o.timeout_ms = r->cfg->imap_timeout_ms;
    o.no_literal_plus = !p->exp_literal_plus;
    if ((rc = mv_imap_connect(&o, &id.im, err, errlen)) ||
        (rc = mv_imap_login(id.im, p->exp_login, password ? password : "", err, errlen)) ||
        (rc = mv_imap_delimiter(id.im, &id.delim, err, errlen)))
        goto out;
    /* this destination's record of what it received */
    char dest[17];
    export_dest_id(dest, "imap:%s:%d:%s:%s", p->host, p->port, p->exp_login, p->exp_root);
    xdest d = {&id, imap_folder, imap_holds, imap_put};
    rc = export_deliver(c, &l, &d, dest, &n, more, err, errlen);
    if (rc == MV_ETOOBIG || (rc == MV_EAUTH && strstr(err, "read-only"))) {
        char tmp[MV_ERRLEN];
        snprintf(tmp, sizeof tmp, "%s", err);
        mv_seterr(err, errlen, rc, "export to %s@%s: %s", p->exp_login, p->host, tmp);
    }
out:
    mv_info(*more ? "export chunk done" : "export done",
            " tenant=%s export=%s destination=imap written=%llu kept=%llu", t->tenant, p->name,
            (unsigned long long)n.written, (unsigned long long)n.kept);
    mv_imap_close(id.im);
    xlist_free(&l);
    return rc;
}

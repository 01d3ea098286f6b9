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
#include "mv/store.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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

mv_err export_imap_run(chunk_ctx *c, const mv_profile *p, const char *password, int *more,
                       char *err, size_t errlen)
{
    const mv_task *t = c->t;
    mv_runner *r = c->r;
    xlist l = {0};
    mv_imap *im = NULL;
    uint64_t written = 0, kept = 0, bytes = 0;
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
    if ((rc = mv_imap_connect(&o, &im, err, errlen)) ||
        (rc = mv_imap_login(im, p->exp_login, password ? password : "", err, errlen)))
        goto out;
    char delim = '\0';
    if ((rc = mv_imap_delimiter(im, &delim, err, errlen))) goto out;
    /* this destination's record of what it received */
    char dest[17];
    export_dest_id(dest, "imap:%s:%d:%s:%s", p->host, p->port, p->exp_login, p->exp_root);
    char cur[2048] = "";
    int64_t deadline = mv_mono_ms() + (int64_t)r->cfg->chunk_seconds * 1000;
    for (size_t i = 0; i < l.n && !rc; i++) {
        const xfile *f = &l.v[i];
        int turn = export_turn(c, &l, i, &rc, err, errlen);
        if (turn < 0) break;
        if (turn) continue;
        char target[2048];
        if ((rc = target_of(p, p->exp_flat ? "" : f->folder, delim, target, sizeof target, err,
                            errlen)))
            break;
        if (strcmp(target, cur) != 0) { /* a new destination folder: make sure it exists */
            mv_imap_mailbox info;
            if ((rc = mv_imap_create(im, target, err, errlen)) ||
                (rc = mv_imap_examine(im, target, &info, err, errlen)))
                break;
            snprintf(cur, sizeof cur, "%s", target);
        }
        char member[2400];
        snprintf(member, sizeof member, "%s\t%s", target, f->hash);
        int present = 0;
        if (f->msgid) {
            size_t count = 0;
            if ((rc = mv_imap_search_header(im, "Message-ID", f->msgid, &count, err, errlen)))
                break;
            present = count > 0;
        } else if ((rc = mv_state_set_member(r->st, t->tenant, "export", dest, member, &present,
                                             err, errlen))) {
            break;
        }
        if (present) {
            kept++;
            continue;
        }
        if (export_spent(c, written, deadline, more)) break;
        if ((rc = mv_imap_append_begin(im, target, f->flags, f->idate, f->size, err, errlen)))
            break;
        asink a = {im, c, 0, MV_OK, ""};
        rc = mv_store_get(r->store, t->tenant, f->hash, append_piece, &a, err, errlen);
        if (a.failed) rc = mv_seterr(err, errlen, a.failed, "%s", a.err);
        if (!rc && a.sent != f->size)
            rc =
                mv_seterr(err, errlen, MV_ECORRUPT, "object %s has %llu bytes, the index says %llu",
                          f->hash, (unsigned long long)a.sent, (unsigned long long)f->size);
        if (!rc) rc = mv_imap_append_end(im, err, errlen);
        if (rc) break; /* a half-sent APPEND leaves the connection unusable: the attempt ends */
        if ((rc = mv_state_set_add(r->st, t->tenant, "export", dest, member, err, errlen))) break;
        written++;
        bytes += f->size;
    }
    if (rc == MV_ETOOBIG || (rc == MV_EAUTH && strstr(err, "read-only"))) {
        char tmp[MV_ERRLEN];
        snprintf(tmp, sizeof tmp, "%s", err);
        mv_seterr(err, errlen, rc, "export to %s@%s: %s", p->exp_login, p->host, tmp);
    }
out:
    export_count(c, written, bytes, kept);
    mv_info(*more ? "export chunk done" : "export done",
            " tenant=%s export=%s destination=imap written=%llu kept=%llu", t->tenant, p->name,
            (unsigned long long)written, (unsigned long long)kept);
    mv_imap_close(im);
    xlist_free(&l);
    return rc;
}

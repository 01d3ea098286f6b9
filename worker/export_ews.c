/* export_ews.c - export a mailbox's archive into an Exchange mailbox through EWS: each message
 * is a CreateItem of its MIME (SaveOnly, into the destination folder) with PR_MESSAGE_FLAGS
 * (read or not; without it Exchange shows an unsent draft) and the archived INTERNALDATE as
 * delivery and submit time, under a root folder below msgfolderroot, the folder structure
 * kept (tree) or flattened into the root (flat).
 *
 * Never a second copy: before each CreateItem the destination folder is asked whether it
 * already holds the message (FindItem, message:InternetMessageId IsEqualTo the Message-ID),
 * which also covers a destination changed by hand and a crash between a CreateItem and its
 * record; a message without a usable Message-ID is looked up in what this destination
 * received (mv:export:{t}:{destination}, Redis), recorded after each CreateItem.
 *
 * The message is read from the store and base64-encoded straight into the request (never held
 * decoded and encoded at once). Exchange's limits per mailbox and per account are kept by
 * every worker together (ews_session.h); ErrorServerBusy is waited out as the EWS source does.
 * Chunks: at most worker.chunk_messages CreateItems per task chunk (or worker.chunk_seconds);
 * a continuation goes on. */
#include "chunk.h"
#include "ews_session.h"
#include "export.h"

#include "mv/log.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_LEVELS 64

/* The MIME of one message, from the store into CreateItem's request. */
typedef struct msrc {
    chunk_ctx *c;
    const xfile *f;
} msrc;

static mv_err mime_write(void *ud, int (*put)(void *ctx, const void *p, size_t n), void *ctx,
                         char *err, size_t errlen)
{
    msrc *m = ud;
    return export_stream(m->c, m->f, put, ctx, err, errlen);
}

/* The destination folder of a message as display names: root, then (tree) the components of
 * the index's folder path ("%2F" and "%25", as the EWS and Graph sources write a '/' or '%'
 * inside a name, decoded; control bytes become '_'). buf holds the names; the caller joins them
 * with tabs (never in a name) to notice a change of folder. */
static mv_err names_of(const mv_profile *p, const char *folder, char *buf, size_t buflen,
                       const char **names, size_t *n, char *err, size_t errlen)
{
    size_t o = 0;
    *n = 0;
    int len = snprintf(buf, buflen, "%s", p->exp_root);
    if (len < 0 || (size_t)len >= buflen) goto toolong;
    names[(*n)++] = buf;
    o = (size_t)len + 1;
    const char *c = p->exp_flat ? "" : folder;
    while (*c) {
        const char *end = strchr(c, '/');
        size_t clen = end ? (size_t)(end - c) : strlen(c);
        if (clen) {
            if (*n >= MAX_LEVELS || o + clen + 1 > buflen) goto toolong;
            names[(*n)++] = buf + o;
            for (size_t i = 0; i < clen; i++) {
                char ch = c[i];
                if (ch == '%' && i + 3 <= clen) {
                    if (!strncmp(c + i, "%2F", 3) || !strncmp(c + i, "%2f", 3)) {
                        ch = '/';
                        i += 2;
                    } else if (!strncmp(c + i, "%25", 3)) {
                        i += 2;
                    }
                }
                buf[o++] = ((unsigned char)ch < 0x20 || ch == 0x7f) ? '_' : ch;
            }
            buf[o++] = '\0';
        }
        c += clen;
        if (*c == '/') c++;
    }
    return MV_OK;
toolong:
    return mv_seterr(err, errlen, MV_EINVAL, "folder \"%s\" is too deep or too long for %s", folder,
                     p->exp_root);
}

/* A destination's answer named for the operator: which mailbox, and what to do. */
static void explain(const mv_profile *p, mv_err rc, char *err, size_t errlen)
{
    char tmp[MV_ERRLEN];
    snprintf(tmp, sizeof tmp, "%s", err);
    if (rc == MV_ETOOBIG && strstr(tmp, "ErrorQuotaExceeded"))
        mv_seterr(err, errlen, rc,
                  "destination mailbox %s is full (%s): free space or raise its quota, then run "
                  "the export again",
                  p->exp_login, tmp);
    else if (rc == MV_EAUTH && strstr(tmp, "ErrorImpersonat"))
        mv_seterr(err, errlen, rc,
                  "export to mailbox %s at %s refused (%s): give the account the "
                  "ApplicationImpersonation role for this mailbox (or set "
                  "export.destination.impersonation to false and grant it full access)",
                  p->exp_login, p->ews_url, tmp);
    else if (rc == MV_EAUTH && strstr(tmp, "ErrorAccessDenied"))
        mv_seterr(err, errlen, rc,
                  "export to mailbox %s at %s refused (%s): the account may not write into this "
                  "mailbox; grant it %s",
                  p->exp_login, p->ews_url, tmp,
                  p->ews_impersonate ? "the ApplicationImpersonation role for it"
                                     : "full access to it");
    else if (rc == MV_ENOTFOUND && strstr(tmp, "ErrorNonExistentMailbox"))
        mv_seterr(err, errlen, rc, "no mailbox %s at %s (%s): check export.destination.mailbox",
                  p->exp_login, p->ews_url, tmp);
    else if (rc == MV_EAUTH || rc == MV_ETOOBIG)
        mv_seterr(err, errlen, rc, "export to mailbox %s at %s: %s", p->exp_login, p->ews_url, tmp);
}

/* Retry an EWS call while Exchange is busy with a short back-off. */
#define EWS_RETRY(c, e, call)                                                                      \
    for (int tries_ = 0;; tries_++) {                                                              \
        rc = (call);                                                                               \
        if (rc != MV_EBUSY || ews_wait_busy((c), (e), tries_)) break;                              \
    }

/* The EWS destination's side of export_deliver. */
typedef struct edest {
    chunk_ctx *c;
    const mv_profile *p;
    mv_ews *e;
    char *folder_id; /* of the current folder */
    char cur[4096];  /* its names, joined with tabs */
} edest;

static mv_err ews_folder(void *ud, const xfile *f, char *key, size_t keylen, char *err,
                         size_t errlen)
{
    edest *d = ud;
    char buf[4096], names_key[4096];
    const char *names[MAX_LEVELS];
    size_t n = 0, k = 0;
    mv_err rc = names_of(d->p, f->folder, buf, sizeof buf, names, &n, err, errlen);
    if (rc) return rc;
    for (size_t j = 0; j < n; j++)
        k += (size_t)snprintf(names_key + k, sizeof names_key - k, "%s%s", j ? "\t" : "", names[j]);
    if (!d->folder_id || strcmp(names_key, d->cur) != 0) { /* a new folder: find or make it */
        free(d->folder_id);
        d->folder_id = NULL;
        EWS_RETRY(
            d->c, d->e,
            mv_ews_ensure_folder(d->e, d->p->exp_login, names, n, &d->folder_id, err, errlen));
        if (rc) return rc;
        snprintf(d->cur, sizeof d->cur, "%s", names_key);
        d->c->folder = f->folder;
    }
    snprintf(key, keylen, "%s", d->cur);
    return MV_OK;
}

static mv_err ews_holds(void *ud, const xfile *f, int *present, int *asked, char *err,
                        size_t errlen)
{
    edest *d = ud;
    mv_err rc = MV_OK;
    *asked = f->msgid && !mv_has_ctl(f->msgid) && strlen(f->msgid) <= MV_EWS_MAX_MSGID;
    if (*asked)
        EWS_RETRY(d->c, d->e,
                  mv_ews_find_message(d->e, d->p->exp_login, d->folder_id, f->msgid, present, err,
                                      errlen));
    return rc;
}

static mv_err ews_put(void *ud, const xfile *f, char *err, size_t errlen)
{
    edest *d = ud;
    mv_err rc;
    msrc src = {.c = d->c, .f = f};
    mv_ews_message m = {.read = strstr(f->flags, "\\Seen") != NULL,
                        .time = f->idate,
                        .write = mime_write,
                        .ud = &src};
    EWS_RETRY(d->c, d->e,
              mv_ews_create_message(d->e, d->p->exp_login, d->folder_id, &m, err, errlen));
    return rc;
}

mv_err export_ews_run(chunk_ctx *c, const mv_profile *p, const char *secret, int *more, char *err,
                      size_t errlen)
{
    const mv_task *t = c->t;
    xlist l = {0};
    ews_session s;
    edest ed = {.c = c, .p = p};
    xcount n = {0};
    *more = 0;
    c->profile = p;
    mv_err rc = export_list(c, p, &l, err, errlen);
    if (rc) goto out;
    if ((rc = ews_session_open(c, p, secret, p->exp_login, &s, err, errlen))) goto out;
    ed.e = s.e;
    /* this destination's record of what it received */
    char dest[17];
    export_dest_id(dest, "ews:%s:%s:%s", p->ews_url, p->exp_login, p->exp_root);
    xdest d = {&ed, ews_folder, ews_holds, ews_put, NULL, 0, 0, NULL};
    rc = export_deliver(c, &l, &d, dest, &n, more, err, errlen);
out:
    if (rc) explain(p, rc, err, errlen);
    if (rc == MV_EBUSY && ed.e && mv_ews_backoff_ms(ed.e) > c->retry_after_ms)
        c->retry_after_ms = mv_ews_backoff_ms(ed.e);
    mv_info(*more ? "export chunk done" : "export done",
            " tenant=%s export=%s destination=ews mailbox=%s written=%llu kept=%llu", t->tenant,
            p->name, p->exp_login, (unsigned long long)n.written, (unsigned long long)n.kept);
    c->folder = NULL;
    free(ed.folder_id);
    mv_ews_close(ed.e);
    xlist_free(&l);
    return rc;
}

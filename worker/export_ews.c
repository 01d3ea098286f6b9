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
#include "mv/store.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_LEVELS 64

/* The MIME of one message, from the store into CreateItem's request. */
typedef struct msrc {
    chunk_ctx *c;
    const xfile *f;
    int (*put)(void *ctx, const void *p, size_t n);
    void *ctx;
    uint64_t sent;
    mv_err failed;
    char err[MV_ERRLEN];
} msrc;

static int mime_piece(void *ud, const void *p, size_t n)
{
    msrc *m = ud;
    if (m->put(m->ctx, p, n)) return 1; /* the client says why */
    m->sent += n;
    if (chunk_beat(m->c, 0)) {
        m->failed = MV_ECANCEL;
        snprintf(m->err, sizeof m->err, "%s", m->c->err);
        return 1;
    }
    return 0;
}

static mv_err mime_write(void *ud, int (*put)(void *ctx, const void *p, size_t n), void *ctx,
                         char *err, size_t errlen)
{
    msrc *m = ud;
    m->put = put;
    m->ctx = ctx;
    m->sent = 0;
    m->failed = MV_OK;
    mv_err rc =
        mv_store_get(m->c->r->store, m->c->t->tenant, m->f->hash, mime_piece, m, err, errlen);
    if (m->failed) return mv_seterr(err, errlen, m->failed, "%s", m->err);
    if (!rc && m->sent != m->f->size)
        rc = mv_seterr(err, errlen, MV_ECORRUPT, "object %s has %llu bytes, the index says %llu",
                       m->f->hash, (unsigned long long)m->sent, (unsigned long long)m->f->size);
    return rc;
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

mv_err export_ews_run(chunk_ctx *c, const mv_profile *p, const char *secret, int *more, char *err,
                      size_t errlen)
{
    const mv_task *t = c->t;
    mv_runner *r = c->r;
    xlist l = {0};
    ews_session s;
    mv_ews *e = NULL;
    char *folder_id = NULL;
    uint64_t written = 0, kept = 0, bytes = 0;
    *more = 0;
    c->profile = p;
    mv_err rc = export_list(c, p, &l, err, errlen);
    if (rc) goto out;
    if ((rc = ews_session_open(c, p, secret, p->exp_login, &s, err, errlen))) goto out;
    e = s.e;
    /* this destination's record of what it received */
    char dest[17];
    export_dest_id(dest, "ews:%s:%s:%s", p->ews_url, p->exp_login, p->exp_root);
    char cur[4096] = "";
    int64_t deadline = mv_mono_ms() + (int64_t)r->cfg->chunk_seconds * 1000;
    for (size_t i = 0; i < l.n && !rc; i++) {
        const xfile *f = &l.v[i];
        int turn = export_turn(c, &l, i, &rc, err, errlen);
        if (turn < 0) break;
        if (turn) continue;
        char buf[4096];
        const char *names[MAX_LEVELS];
        size_t n = 0;
        if ((rc = names_of(p, f->folder, buf, sizeof buf, names, &n, err, errlen))) break;
        char key[4096];
        size_t k = 0;
        for (size_t j = 0; j < n; j++)
            k += (size_t)snprintf(key + k, sizeof key - k, "%s%s", j ? "\t" : "", names[j]);
        if (!folder_id || strcmp(key, cur) != 0) { /* a new destination folder: find or make it */
            free(folder_id);
            folder_id = NULL;
            EWS_RETRY(c, e,
                      mv_ews_ensure_folder(e, p->exp_login, names, n, &folder_id, err, errlen));
            if (rc) break;
            snprintf(cur, sizeof cur, "%s", key);
            c->folder = f->folder;
        }
        char member[4200];
        snprintf(member, sizeof member, "%s\t%s", cur, f->hash);
        int present = 0;
        if (f->msgid && !mv_has_ctl(f->msgid) && strlen(f->msgid) <= MV_EWS_MAX_MSGID) {
            EWS_RETRY(
                c, e,
                mv_ews_find_message(e, p->exp_login, folder_id, f->msgid, &present, err, errlen));
            if (rc) break;
        } else if ((rc = mv_state_set_member(r->st, t->tenant, "export", dest, member, &present,
                                             err, errlen))) {
            break;
        }
        if (present) {
            kept++;
            continue;
        }
        if (export_spent(c, written, deadline, more)) break;
        msrc src = {.c = c, .f = f};
        mv_ews_message m = {.read = strstr(f->flags, "\\Seen") != NULL,
                            .time = f->idate,
                            .write = mime_write,
                            .ud = &src};
        EWS_RETRY(c, e, mv_ews_create_message(e, p->exp_login, folder_id, &m, err, errlen));
        if (rc) break;
        if ((rc = mv_state_set_add(r->st, t->tenant, "export", dest, member, err, errlen))) break;
        written++;
        bytes += f->size;
    }
out:
    if (rc) explain(p, rc, err, errlen);
    if (rc == MV_EBUSY && e && mv_ews_backoff_ms(e) > c->retry_after_ms)
        c->retry_after_ms = mv_ews_backoff_ms(e);
    export_count(c, written, bytes, kept);
    mv_info(*more ? "export chunk done" : "export done",
            " tenant=%s export=%s destination=ews mailbox=%s written=%llu kept=%llu", t->tenant,
            p->name, p->exp_login, (unsigned long long)written, (unsigned long long)kept);
    c->folder = NULL;
    free(folder_id);
    mv_ews_close(e);
    xlist_free(&l);
    return rc;
}

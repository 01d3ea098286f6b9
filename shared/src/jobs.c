/* jobs.c - catalog operations shared by the CLI (producer) and the scheduler.
 *
 * Secrets flow one way: plaintext passwords exist only between parsing the operator's file and
 * sealing, and between opening a credential in a worker and the IMAP login. Neither a Kafka
 * message nor the stored profile JSON ever holds one. */
#include "mv/jobs.h"
#include "mv/log.h"
#include "mv/sign.h"

#include "mv/graph.h"
#include "mv/imap.h"
#include "mv/task.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/evp.h>

typedef struct other_profiles {
    mv_state *st;
    const char *tenant;
    const mv_profile *p;
    mv_err rc;
    char *err;
    size_t errlen;
} other_profiles;

/* A mailbox's checkpoints, lease and status are keyed by tenant and mailbox: two profiles of
 * one tenant must not both claim a login. */
static int check_other_profile(void *ud, const char *name)
{
    other_profiles *o = ud;
    if (strcmp(name, o->p->name) == 0) return 0;
    mv_profile q;
    char perr[MV_ERRLEN];
    if (mv_jobs_profile_load(o->st, o->tenant, name, &q, perr, sizeof perr)) return 0;
    for (size_t i = 0; i < o->p->nmailboxes && !o->rc; i++)
        if (mv_profile_find_mailbox(&q, o->p->mailboxes[i].login) >= 0 ||
            (q.public_folders && strcmp(q.pf_archive_as, o->p->mailboxes[i].login) == 0))
            o->rc = mv_seterr(o->err, o->errlen, MV_EEXIST,
                              "mailboxes[%zu].login: \"%s\" already belongs to profile \"%s\" of "
                              "tenant \"%s\"",
                              i, o->p->mailboxes[i].login, name, o->tenant);
    if (!o->rc && o->p->public_folders &&
        (mv_profile_find_mailbox(&q, o->p->pf_archive_as) >= 0 ||
         (q.public_folders && strcmp(q.pf_archive_as, o->p->pf_archive_as) == 0)))
        o->rc = mv_seterr(o->err, o->errlen, MV_EEXIST,
                          "public_folders.archive_as: \"%s\" already belongs to profile \"%s\" of "
                          "tenant \"%s\"",
                          o->p->pf_archive_as, name, o->tenant);
    mv_profile_free(&q);
    return o->rc ? 1 : 0;
}

/* Seal a secret into its credential slot; without one, an existing slot is kept and a missing
 * one is an error naming the field. */
static mv_err seal_or_keep(mv_state *st, const unsigned char key[MV_KEY_LEN], const char *tenant,
                           const char *profile, const char *slot, const char *secret,
                           const char *field, char *err, size_t errlen)
{
    mv_err rc;
    if (!secret) {
        void *blob = NULL;
        size_t len = 0;
        rc = mv_state_cred_get(st, tenant, profile, slot, &blob, &len, err, errlen);
        free(blob);
        if (rc == MV_ENOTFOUND && strcmp(slot, MV_PROFILE_APP_CRED) == 0)
            return mv_seterr(err, errlen, MV_EINVAL, "%s: missing (no secret stored yet)", field);
        if (rc == MV_ENOTFOUND)
            return mv_seterr(err, errlen, MV_EINVAL, "%s: missing for new mailbox \"%s\"", field,
                             slot);
        return rc;
    }
    char ad[512];
    mv_profile_cred_ad(tenant, profile, slot, ad, sizeof ad);
    unsigned char *blob = NULL;
    size_t len = 0;
    rc = mv_crypt_seal(key, ad, secret, strlen(secret), &blob, &len, err, errlen);
    if (rc) return rc;
    rc = mv_state_cred_put(st, tenant, profile, slot, blob, len, err, errlen);
    free(blob);
    return rc;
}

/* An export profile: a signing export gets a key pair once (the private key sealed in the
 * profile's key slot, kept when the profile is replaced); the stored JSON carries the public
 * key, so operators can compare it with the one written next to each export. */
static mv_err export_save(mv_state *st, const unsigned char key[MV_KEY_LEN], const char *tenant,
                          const mv_profile *p, char *err, size_t errlen)
{
    mv_profile q = *p; /* shallow: only exp_public_key is set here, and freed here */
    char *priv = NULL, *pub = NULL;
    mv_err rc = MV_OK;
    if ((p->exp_m365 || p->exp_ews) && p->client_cert_pem)
        rc = seal_or_keep(st, key, tenant, p->name, MV_PROFILE_APP_KEY, p->client_key_pem,
                          "export.destination.private_key_file", err, errlen);
    else if (p->exp_imap || p->exp_ews)
        rc = seal_or_keep(st, key, tenant, p->name, MV_PROFILE_APP_CRED, p->client_secret,
                          p->exp_m365 || (p->exp_ews && p->ews_auth == MV_EWS_AUTH_OAUTH)
                              ? "export.destination.client_secret"
                              : "export.destination.password",
                          err, errlen);
    if (rc) return rc;
    if (p->exp_sign) {
        rc = mv_jobs_credential(st, key, tenant, p->name, MV_PROFILE_APP_KEY, &priv, err, errlen);
        if (rc == MV_ENOTFOUND) {
            char *gen = NULL;
            if ((rc = mv_sign_keygen(&gen, &pub, err, errlen))) goto out;
            rc = seal_or_keep(st, key, tenant, p->name, MV_PROFILE_APP_KEY, gen,
                              "export signing key", err, errlen);
            mv_free_secret(gen);
            if (rc) goto out;
        } else if (rc) {
            goto out;
        } else if ((rc = mv_sign_pubkey(priv, &pub, err, errlen))) {
            goto out;
        }
        q.exp_public_key = pub;
    }
    char *json = mv_profile_to_json(&q);
    if (!json) {
        rc = mv_seterr(err, errlen, MV_ENOMEM, "cannot serialise profile");
        goto out;
    }
    rc = mv_state_profile_put(st, tenant, p->name, json, err, errlen);
    free(json);
out:
    mv_free_secret(priv);
    free(pub);
    return rc;
}

static mv_err profile_save(mv_state *st, const unsigned char key[MV_KEY_LEN], const char *tenant,
                           const mv_profile *p, char *err, size_t errlen);

mv_err mv_jobs_profile_save(mv_state *st, const unsigned char key[MV_KEY_LEN], const char *tenant,
                            const mv_profile *p, char *err, size_t errlen)
{
    mv_err rc = profile_save(st, key, tenant, p, err, errlen);
    /* the scheduler's index of scheduled profiles (a schedule removed drops its slot) */
    return rc ? rc : mv_state_sched_index(st, tenant, p->name, p->schedule.kind != 0, err, errlen);
}

static mv_err profile_save(mv_state *st, const unsigned char key[MV_KEY_LEN], const char *tenant,
                           const mv_profile *p, char *err, size_t errlen)
{
    if (!mv_state_tenant_exists(st, tenant))
        return mv_seterr(err, errlen, MV_ENOTFOUND, "tenant \"%s\" does not exist", tenant);
    if (p->source == MV_SOURCE_EWS && !p->nmailboxes && !p->public_folders)
        return mv_seterr(err, errlen, MV_EINVAL,
                         "mailboxes: missing (list them, import them with --mailboxes-csv, or "
                         "archive public_folders)");
    other_profiles o = {st, tenant, p, MV_OK, err, errlen};
    char lerr[MV_ERRLEN];
    mv_err rc = mv_state_profile_list(st, tenant, check_other_profile, &o, lerr, sizeof lerr);
    if (o.rc) return o.rc;
    if (rc) return mv_seterr(err, errlen, rc, "%s", lerr);
    const char *sec = p->source == MV_SOURCE_EWS ? "ews" : "graph";
    char field[64];
    if (p->source == MV_SOURCE_EXPORT) return export_save(st, key, tenant, p, err, errlen);
    if (p->source != MV_SOURCE_IMAP && p->client_cert_pem) {
        snprintf(field, sizeof field, "%s.private_key_file", sec);
        rc = seal_or_keep(st, key, tenant, p->name, MV_PROFILE_APP_KEY, p->client_key_pem, field,
                          err, errlen);
        if (rc) return rc;
    } else if (p->source != MV_SOURCE_IMAP) {
        int app = p->source == MV_SOURCE_GRAPH || p->ews_auth == MV_EWS_AUTH_OAUTH;
        snprintf(field, sizeof field, "%s.%s", sec, app ? "client_secret" : "password");
        rc = seal_or_keep(st, key, tenant, p->name, MV_PROFILE_APP_CRED, p->client_secret, field,
                          err, errlen);
        if (rc) return rc;
    }
    for (size_t i = 0; i < p->nmailboxes && p->source == MV_SOURCE_IMAP; i++) {
        snprintf(field, sizeof field, "mailboxes[%zu].password", i);
        rc = seal_or_keep(st, key, tenant, p->name, p->mailboxes[i].login, p->mailboxes[i].password,
                          field, err, errlen);
        if (rc) return rc;
    }
    char *json = mv_profile_to_json(p);
    if (!json) return mv_seterr(err, errlen, MV_ENOMEM, "cannot serialise profile");
    rc = mv_state_profile_put(st, tenant, p->name, json, err, errlen);
    free(json);
    return rc;
}

mv_err mv_jobs_profile_load(mv_state *st, const char *tenant, const char *profile, mv_profile *p,
                            char *err, size_t errlen)
{
    char *json = NULL;
    mv_err rc = mv_state_profile_get(st, tenant, profile, &json, err, errlen);
    if (rc == MV_ENOTFOUND)
        return mv_seterr(err, errlen, MV_ENOTFOUND, "profile \"%s\" of tenant \"%s\" not found",
                         profile, tenant);
    if (rc) return rc;
    char perr[MV_ERRLEN];
    rc = mv_profile_parse(json, 0, p, perr, sizeof perr);
    free(json);
    if (rc)
        return mv_seterr(err, errlen, rc, "stored profile \"%s\" of tenant \"%s\" is invalid: %s",
                         profile, tenant, perr);
    return MV_OK;
}

mv_err mv_jobs_credential(mv_state *st, const unsigned char key[MV_KEY_LEN], const char *tenant,
                          const char *profile, const char *mailbox, char **password, char *err,
                          size_t errlen)
{
    void *blob = NULL;
    size_t len = 0;
    *password = NULL;
    mv_err rc = mv_state_cred_get(st, tenant, profile, mailbox, &blob, &len, err, errlen);
    if (rc == MV_ENOTFOUND)
        return mv_seterr(err, errlen, MV_ENOTFOUND,
                         "no credential stored for mailbox \"%s\" of profile \"%s\"", mailbox,
                         profile);
    if (rc) return rc;
    char ad[512];
    mv_profile_cred_ad(tenant, profile, mailbox, ad, sizeof ad);
    unsigned char *plain = NULL;
    size_t plen = 0;
    rc = mv_crypt_open(key, ad, blob, len, &plain, &plen, err, errlen);
    free(blob);
    if (rc) return rc;
    *password = (char *)plain;
    return MV_OK;
}

const char *mv_jobs_graph_slot(const mv_profile *p)
{
    return p->client_cert_pem ? MV_PROFILE_APP_KEY : MV_PROFILE_APP_CRED;
}

const char *mv_jobs_export_slot(const mv_profile *p)
{
    if (p->exp_m365 || p->exp_ews) return mv_jobs_graph_slot(p);
    return p->exp_imap ? MV_PROFILE_APP_CRED : p->exp_sign ? MV_PROFILE_APP_KEY : NULL;
}

void mv_jobs_graph_opts(mv_graph_opts *o, const mv_config *c, const mv_profile *p,
                        const char *credential)
{
    mv_graph_opts_default(o);
    o->login_base = p->login_base;
    o->graph_base = p->graph_base;
    o->tenant_id = p->tenant_id;
    o->client_id = p->client_id;
    if (p->client_cert_pem) {
        o->client_key_pem = credential;
        o->client_cert_pem = p->client_cert_pem;
    } else {
        o->client_secret = credential;
    }
    o->verify = p->verify;
    o->ca_file = c->ca_file[0] ? c->ca_file : NULL;
    o->idle_timeout_ms = c->imap_timeout_ms;
}

void mv_jobs_imap_opts(mv_imap_opts *o, const mv_config *c, const mv_profile *p)
{
    mv_imap_opts_default(o);
    o->host = p->host;
    o->port = p->port;
    o->tls = p->tls;
    o->verify = p->verify;
    o->ca_file = c->ca_file[0] ? c->ca_file : NULL;
    o->timeout_ms = c->imap_timeout_ms;
    o->max_line = (size_t)c->max_line_bytes;
    o->max_literal = (uint64_t)c->max_message_bytes;
    o->no_literal_plus = p->source == MV_SOURCE_EXPORT && !p->exp_literal_plus;
}

/* Exchange Online's resource for IMAP tokens, per national cloud. */
static const char *outlook_scope(const mv_profile *p)
{
    return strcmp(p->cloud, "china") == 0 ? "https://partner.outlook.cn/.default"
                                          : "https://outlook.office365.com/.default";
}

mv_err mv_jobs_export_login(const mv_config *c, const mv_profile *p, const char *credential,
                            const mv_oauth_source *src, mv_imap *im, char *err, size_t errlen)
{
    if (!p->exp_m365)
        return mv_imap_login(im, p->exp_login, credential ? credential : "", err, errlen);
    int cert = p->client_cert_pem != NULL;
    mv_oauth_opts ao = {.login_base = p->login_base,
                        .tenant_id = p->tenant_id,
                        .client_id = p->client_id,
                        .client_secret = cert ? NULL : credential,
                        .client_key_pem = cert ? credential : NULL,
                        .client_cert_pem = p->client_cert_pem,
                        .scope = outlook_scope(p)};
    mv_oauth *a = NULL;
    mv_http *h = NULL;
    char *stale = NULL;
    mv_http_opts ho;
    mv_http_opts_default(&ho);
    ho.ca_file = c->ca_file[0] ? c->ca_file : NULL;
    ho.verify = p->verify;
    ho.timeout_ms = 60000;
    char detail[MV_ERRLEN];
    mv_err rc = mv_oauth_new(&ao, &a, err, errlen);
    if (!rc) rc = mv_http_open(&ho, &h, err, errlen);
    if (rc) goto out;
    if (src) mv_oauth_set_source(a, src);
    for (int attempt = 0; attempt < 2; attempt++) {
        if ((rc = mv_oauth_ensure(a, h, stale, detail, sizeof detail))) {
            mv_seterr(err, errlen, rc, "token for Exchange Online (%s): %s", ao.scope, detail);
            goto out;
        }
        const char *tok = mv_oauth_token(a, NULL);
        rc = mv_imap_xoauth2(im, p->exp_login, tok, detail, sizeof detail);
        if (rc != MV_EAUTH) break;
        free(stale); /* refused: maybe a revoked cached token; once more with a new one */
        stale = mv_oauth_drop(a);
    }
    /* Exchange Online may also accept the token and then answer the first command with
     * "BAD User is authenticated but not connected." when the app may not open the mailbox */
    char delim;
    if (!rc) rc = mv_imap_delimiter(im, &delim, detail, sizeof detail);
    if (rc == MV_EAUTH || (rc == MV_ESERVER && strstr(detail, "authenticated but not connected")))
        rc = mv_seterr(
            err, errlen, MV_EAUTH,
            "Microsoft 365 did not let the app into mailbox %s (%s). The token was issued, "
            "so the app's service principal lacks FullAccess on that mailbox (or the "
            "IMAP.AccessAsApp permission). Fix in Exchange Online PowerShell: "
            "Add-MailboxPermission -Identity %s -User <service principal id of app %s> "
            "-AccessRights FullAccess; check with Get-MailboxPermission -Identity %s "
            "(and Get-ServicePrincipal for the app's registration in Exchange)",
            p->exp_login, detail, p->exp_login, p->client_id, p->exp_login);
    else if (rc)
        mv_seterr(err, errlen, rc, "%s", detail);
out:
    free(stale);
    mv_http_close(h);
    mv_oauth_free(a);
    return rc;
}

void mv_jobs_export_task_mailbox(const mv_profile *p, char *out, size_t outlen)
{
    snprintf(out, outlen, "export:%s", p->name);
}

void mv_jobs_ews_opts(mv_ews_opts *o, const mv_config *c, const mv_profile *p,
                      const char *credential)
{
    mv_ews_opts_default(o);
    o->url = p->ews_url;
    o->auth = p->ews_auth == MV_EWS_AUTH_OAUTH  ? MV_EWS_OAUTH
              : p->ews_auth == MV_EWS_AUTH_NTLM ? MV_EWS_NTLM
                                                : MV_EWS_BASIC;
    if (o->auth == MV_EWS_OAUTH) {
        o->login_base = p->login_base;
        o->tenant_id = p->tenant_id;
        o->client_id = p->client_id;
        if (p->client_cert_pem) {
            o->client_key_pem = credential;
            o->client_cert_pem = p->client_cert_pem;
        } else {
            o->client_secret = credential;
        }
    } else {
        o->username = p->ews_username;
        o->password = credential;
    }
    o->server_version = p->ews_server_version;
    o->impersonate = p->ews_impersonate;
    o->verify = p->verify;
    o->ca_file = c->ca_file[0] ? c->ca_file : NULL;
    o->idle_timeout_ms = c->imap_timeout_ms;
    o->max_message = (uint64_t)c->max_message_bytes;
}

typedef struct login_list {
    char **v;
    size_t n, cap;
    const mv_profile *p;
    int failed;
} login_list;

static int add_login(login_list *l, const char *login)
{
    for (size_t i = 0; i < l->n; i++)
        if (strcmp(l->v[i], login) == 0) return 0;
    if (l->n == l->cap) {
        size_t nc = l->cap ? l->cap * 2 : 64;
        char **nv = realloc(l->v, nc * sizeof *nv);
        if (!nv) return -1;
        l->v = nv;
        l->cap = nc;
    }
    if (!(l->v[l->n] = strdup(login))) return -1;
    l->n++;
    return 0;
}

static int on_user(void *ud, const char *id, const char *upn, const char *mail, int licensed)
{
    (void)id;
    (void)mail;
    login_list *l = ud;
    if (!upn || !mv_mailbox_valid(upn)) return 0; /* not usable as a mailbox id */
    if (!mv_profile_directory_selected(l->p, upn, licensed)) return 0;
    if (add_login(l, upn)) {
        l->failed = 1;
        return 1;
    }
    return 0;
}

/* Mailboxes of a run: the listed ones, plus the tenant directory's for a directory profile. */
static mv_err run_logins(const mv_config *c, mv_state *st, const unsigned char *key,
                         const char *tenant, const mv_profile *p, login_list *l, char *err,
                         size_t errlen)
{
    for (size_t i = 0; i < p->nmailboxes; i++)
        if (add_login(l, p->mailboxes[i].login)) return MV_ENOMEM;
    if (p->public_folders && add_login(l, p->pf_archive_as)) return MV_ENOMEM;
    if (p->source == MV_SOURCE_EXPORT) {
        char id[256];
        mv_jobs_export_task_mailbox(p, id, sizeof id);
        if (add_login(l, id)) return MV_ENOMEM;
    }
    if (!p->directory) return MV_OK;
    if (!key)
        return mv_seterr(err, errlen, MV_EINVAL,
                         "profile \"%s\" takes its mailboxes from the directory: the master key "
                         "is needed to read the app's secret",
                         p->name);
    char *secret = NULL;
    mv_err rc =
        mv_jobs_credential(st, key, tenant, p->name, MV_PROFILE_APP_CRED, &secret, err, errlen);
    if (rc) return rc;
    mv_graph_opts o;
    mv_graph_opts_default(&o);
    o.login_base = p->login_base;
    o.graph_base = p->graph_base;
    o.tenant_id = p->tenant_id;
    o.client_id = p->client_id;
    o.client_secret = secret;
    o.verify = p->verify;
    o.ca_file = c->ca_file[0] ? c->ca_file : NULL;
    o.idle_timeout_ms = c->imap_timeout_ms;
    mv_graph *g = NULL;
    if (!(rc = mv_graph_open(&o, &g, err, errlen))) {
        rc = mv_graph_list_users(g, on_user, l, err, errlen);
        if (l->failed) rc = mv_seterr(err, errlen, MV_ENOMEM, "out of memory listing users");
        if (rc) {
            char tmp[MV_ERRLEN];
            snprintf(tmp, sizeof tmp, "%s", err);
            mv_seterr(err, errlen, rc, "listing the users of %s: %s", p->tenant_id, tmp);
        }
    }
    mv_graph_close(g);
    mv_crypt_wipe(secret, strlen(secret));
    free(secret);
    return rc;
}

mv_err mv_jobs_enqueue_profile(const mv_config *c, mv_state *st, mv_producer *pr,
                               const unsigned char *key, const char *tenant, const char *profile,
                               char run_id[37], int *ntasks, char *err, size_t errlen)
{
    int busy = 0;
    return mv_jobs_enqueue_run(c, st, pr, key, tenant, profile, NULL, 0, run_id, ntasks, &busy, err,
                               errlen);
}

void mv_jobs_slot_run_id(const char *tenant, const char *profile, int64_t slot_ms, char out[37])
{
    char in[512], hex[65];
    unsigned char d[32];
    unsigned int dl = 0;
    snprintf(in, sizeof in, "slot:%s/%s@%lld", tenant, profile, (long long)slot_ms);
    EVP_Digest(in, strlen(in), d, &dl, EVP_sha256(), NULL);
    mv_hex(d, 16, hex);
    snprintf(out, 37, "%.8s-%.4s-%.4s-%.4s-%.12s", hex, hex + 8, hex + 12, hex + 16, hex + 20);
}

mv_err mv_jobs_enqueue_run(const mv_config *c, mv_state *st, mv_producer *pr,
                           const unsigned char *key, const char *tenant, const char *profile,
                           const char *given_run_id, int skip_busy, char run_id[37], int *ntasks,
                           int *nbusy, char *err, size_t errlen)
{
    mv_profile p;
    mv_err rc = mv_jobs_profile_load(st, tenant, profile, &p, err, errlen);
    if (rc) return rc;
    login_list l = {.p = &p};
    if (given_run_id) {
        if (given_run_id != run_id) snprintf(run_id, 37, "%s", given_run_id);
    } else
        mv_uuid(run_id);
    *ntasks = *nbusy = 0;
    int64_t now = mv_now_ms();
    if ((rc = run_logins(c, st, key, tenant, &p, &l, err, errlen))) goto out;
    /* in batches, one Lua script each: busy check, cancel mark cleared, status reset, and
     * the task queued in the tenant's fair queue (the workers' dispatch moves it onto Kafka) */
    for (size_t i = 0; i < l.n; i += MV_STATE_ENQUEUE_BATCH) {
        int n = (int)(l.n - i < MV_STATE_ENQUEUE_BATCH ? l.n - i : MV_STATE_ENQUEUE_BATCH);
        mv_task t[MV_STATE_ENQUEUE_BATCH];
        char *buf[MV_STATE_ENQUEUE_BATCH] = {0};
        size_t len[MV_STATE_ENQUEUE_BATCH];
        const char *mb[MV_STATE_ENQUEUE_BATCH], *ids[MV_STATE_ENQUEUE_BATCH];
        int verdict[MV_STATE_ENQUEUE_BATCH];
        for (int j = 0; !rc && j < n; j++) {
            memset(&t[j], 0, sizeof t[j]);
            t[j].version = MV_TASK_VERSION;
            t[j].kind = p.source == MV_SOURCE_EXPORT ? MV_TASK_EXPORT : MV_TASK_ARCHIVE;
            mv_uuid(t[j].id);
            snprintf(t[j].tenant, sizeof t[j].tenant, "%s", tenant);
            snprintf(t[j].profile, sizeof t[j].profile, "%s", profile);
            snprintf(t[j].mailbox, sizeof t[j].mailbox, "%s", l.v[i + (size_t)j]);
            snprintf(t[j].run_id, sizeof t[j].run_id, "%s", run_id);
            t[j].created_ms = now;
            rc = mv_task_encode(&t[j], &buf[j], &len[j], err, errlen);
            mb[j] = t[j].mailbox;
            ids[j] = t[j].id;
        }
        if (!rc)
            rc = mv_state_enqueue_batch(st, tenant, profile, run_id, 3 * c->lease_ttl_ms,
                                        given_run_id || skip_busy, skip_busy, n, mb, ids,
                                        (const char *const *)buf, len, verdict, err, errlen);
        for (int j = 0; j < n; j++)
            free(buf[j]);
        if (rc) goto out;
        for (int j = 0; j < n; j++) {
            if (verdict[j] == 1) {
                mv_info("mailbox still busy: not enqueued again", " tenant=%s mailbox=%s run=%s",
                        tenant, mb[j], run_id);
                (*nbusy)++;
            } else {
                (*ntasks)++; /* queued now, or by this run before and started */
            }
        }
    }
    if ((rc = mv_state_run_put(st, run_id, tenant, profile, *ntasks, err, errlen))) goto out;
    if (skip_busy) {
        char nb[16];
        snprintf(nb, sizeof nb, "%d", *nbusy);
        if ((rc = mv_state_run_tag(st, run_id, "busy", nb, err, errlen))) goto out;
    }
    rc = mv_producer_flush(pr, 30000, err, errlen);
out:
    for (size_t i = 0; i < l.n; i++)
        free(l.v[i]);
    free(l.v);
    mv_profile_free(&p);
    return rc;
}

typedef struct folder_count {
    int n;
} folder_count;

static int count_graph_folder(void *ud, const char *id, const char *path, const char *wk,
                              uint64_t total)
{
    (void)id;
    (void)path;
    (void)wk;
    (void)total;
    ((folder_count *)ud)->n++;
    return 0;
}

static int count_ews_folder(void *ud, const char *id, const char *path, const char *folder_class,
                            uint64_t total)
{
    (void)id;
    (void)path;
    (void)folder_class;
    (void)total;
    ((folder_count *)ud)->n++;
    return 0;
}

static int count_imap_folder(void *ud, const char *name, char delim, const char *flags)
{
    (void)name;
    (void)delim;
    (void)flags;
    ((folder_count *)ud)->n++;
    return 0;
}

/* Turn a failure into a verdict an operator can act on. */
static void verdict(mv_err rc, const char *what, const char *detail, char *out, size_t n)
{
    const char *hint = "";
    if (strstr(detail, "AADSTS700027"))
        hint = "the certificate is not the one registered for the app";
    else if (strstr(detail, "AADSTS7000215") || strstr(detail, "invalid_client"))
        hint = "the client secret is wrong or expired";
    else if (strstr(detail, "AADSTS90002") || strstr(detail, "AADSTS900023"))
        hint = "the tenant id is wrong";
    else if (strstr(detail, "AADSTS700016"))
        hint = "the client id is not registered in this tenant";
    else if (strstr(detail, "ErrorAccessDenied") || strstr(detail, "Authorization_RequestDenied"))
        hint = "the app lacks an application permission (Mail.Read, User.Read.All) or admin "
               "consent";
    else if (strstr(detail, "lacks FullAccess"))
        hint = "the app may not open this mailbox";
    else if (strstr(detail, "MailboxNotEnabledForRESTAPI"))
        hint = "the user has no Exchange Online mailbox";
    else if (strstr(detail, "EWS blocked"))
        hint = "EWS is turned off for the organisation or this mailbox (Exchange Online retires "
               "EWS: allow it with Set-OrganizationConfig -EwsEnabled $true and "
               "Set-CASMailbox -EwsEnabled $true, or archive through Graph)";
    else if (strstr(detail, "ErrorImpersonateUserDenied") ||
             strstr(detail, "ErrorImpersonationDenied"))
        hint = "the service account may not impersonate this mailbox (assign the "
               "ApplicationImpersonation role: New-ManagementRoleAssignment -Role "
               "ApplicationImpersonation -User <account>)";
    else if (strstr(detail, "ErrorNonExistentMailbox"))
        hint = "the mailbox does not exist";
    else if (rc == MV_ENOTFOUND)
        hint = "the mailbox does not exist";
    else if (rc == MV_EAUTH)
        hint = "the server refused the credentials";
    else if (rc == MV_ENET || rc == MV_ETIMEDOUT)
        hint = "the server cannot be reached";
    snprintf(out, n, "FAILED %s: %s%s%s", what, hint, *hint ? " (" : "", detail);
    if (*hint) strncat(out, ")", n - strlen(out) - 1);
}

/* An EWS mailbox readable (its folder list) with the profile's connection. */
static mv_err ews_test(const mv_config *c, const mv_profile *p, const char *mb, const char *secret,
                       const char *label, folder_count *fc, char *report, size_t reportlen,
                       char *err, size_t errlen)
{
    mv_ews_opts o;
    mv_jobs_ews_opts(&o, c, p, secret);
    mv_ews *e = NULL;
    char detail[MV_ERRLEN] = "";
    mv_err rc = mv_ews_open(&o, &e, err, errlen);
    if (rc) return rc;
    char what[600];
    snprintf(what, sizeof what, "%s %s at %s", label, mb, p->ews_url);
    if ((rc = mv_ews_list_folders(e, mb, MV_EWS_ROOT_MAILBOX, count_ews_folder, fc, detail,
                                  sizeof detail)))
        verdict(rc, what, detail, report, reportlen);
    else
        snprintf(report, reportlen, "OK %s: %d folders (Exchange %s)", what, fc->n,
                 mv_ews_server_version(e));
    mv_ews_close(e);
    return rc;
}

mv_err mv_jobs_profile_test(mv_state *st, const unsigned char key[MV_KEY_LEN], const mv_config *c,
                            const char *tenant, const char *profile, const char *mailbox,
                            char *report, size_t reportlen, char *err, size_t errlen)
{
    mv_profile p;
    mv_err rc = mv_jobs_profile_load(st, tenant, profile, &p, err, errlen);
    if (rc) return rc;
    char *secret = NULL, detail[MV_ERRLEN] = "";
    folder_count fc = {0};
    const char *mb = mailbox;
    if (!mb && p.nmailboxes) mb = p.mailboxes[0].login;
    if (mb && !mv_mailbox_valid(mb)) {
        rc = mv_seterr(err, errlen, MV_EINVAL, "mailbox \"%s\" is not a valid mailbox id", mb);
        goto out;
    }
    if (p.source == MV_SOURCE_GRAPH) {
        if ((rc = mv_jobs_credential(st, key, tenant, p.name, mv_jobs_graph_slot(&p), &secret, err,
                                     errlen)))
            goto out;
        mv_graph_opts o;
        mv_jobs_graph_opts(&o, c, &p, secret);
        mv_graph *g = NULL;
        const char *tok = NULL;
        int64_t exp = 0;
        if ((rc = mv_graph_open(&o, &g, err, errlen))) goto out;
        rc = mv_graph_token(g, &tok, &exp, detail, sizeof detail);
        if (rc) {
            verdict(rc, "token", detail, report, reportlen);
        } else if (!mb) {
            snprintf(report, reportlen, "OK token acquired from %s (no mailbox to check)",
                     p.login_base);
        } else if ((rc = mv_graph_list_folders(g, mb, count_graph_folder, &fc, detail,
                                               sizeof detail))) {
            char what[300];
            snprintf(what, sizeof what, "mailbox %s", mb);
            verdict(rc, what, detail, report, reportlen);
        } else {
            snprintf(report, reportlen, "OK token acquired; mailbox %s readable, %d folders", mb,
                     fc.n);
        }
        mv_graph_close(g);
    } else if (p.source == MV_SOURCE_EXPORT && p.exp_imap) {
        if ((rc = mv_jobs_credential(st, key, tenant, p.name, mv_jobs_export_slot(&p), &secret, err,
                                     errlen)))
            goto out;
        mv_imap_opts o;
        mv_jobs_imap_opts(&o, c, &p);
        mv_imap *im = NULL;
        char what[600];
        snprintf(what, sizeof what, "export destination %s at %s:%d", p.exp_login, p.host, p.port);
        if ((rc = mv_imap_connect(&o, &im, detail, sizeof detail)) ||
            (rc = mv_jobs_export_login(c, &p, secret, NULL, im, detail, sizeof detail)) ||
            (rc = mv_imap_list(im, count_imap_folder, &fc, detail, sizeof detail)))
            verdict(rc, what, detail, report, reportlen);
        else
            snprintf(report, reportlen, "OK %s: logged in, %d folders%s%s", what, fc.n,
                     mv_imap_has_cap(im, "LITERAL+") ? ", LITERAL+" : "",
                     mv_imap_has_cap(im, "MULTIAPPEND") ? ", MULTIAPPEND" : "");
        mv_imap_close(im);
    } else if (p.source == MV_SOURCE_EXPORT && p.exp_ews) {
        if ((rc = mv_jobs_credential(st, key, tenant, p.name, mv_jobs_graph_slot(&p), &secret, err,
                                     errlen)))
            goto out;
        rc = ews_test(c, &p, p.exp_login, secret, "export destination", &fc, report, reportlen, err,
                      errlen);
    } else if (p.source == MV_SOURCE_EXPORT) {
        /* the destination must be a writable directory, or creatable below one */
        char dir[1024];
        snprintf(dir, sizeof dir, "%s", p.exp_path);
        struct stat sb;
        while (stat(dir, &sb) != 0 && strrchr(dir, '/') && strrchr(dir, '/') != dir)
            *strrchr(dir, '/') = '\0';
        if (stat(dir, &sb) != 0 || !S_ISDIR(sb.st_mode) || access(dir, W_OK | X_OK) != 0) {
            rc = MV_EIO;
            snprintf(report, reportlen, "FAILED destination %s: %s is not a writable directory",
                     p.exp_path, dir);
        } else {
            snprintf(report, reportlen,
                     "OK export of %s%s%s to %s (%s layout%s): destination "
                     "writable",
                     p.exp_mailbox, p.exp_folder[0] ? " folder " : "", p.exp_folder, p.exp_path,
                     p.exp_flat ? "flat" : "tree", p.exp_sign ? ", signed" : "");
        }
    } else if (p.source == MV_SOURCE_EWS) {
        if (!mb && p.public_folders) mb = p.pf_mailbox;
        if (!mb) {
            rc = mv_seterr(err, errlen, MV_EINVAL, "profile has no mailbox to test");
            goto out;
        }
        if ((rc = mv_jobs_credential(st, key, tenant, p.name, mv_jobs_graph_slot(&p), &secret, err,
                                     errlen)))
            goto out;
        rc = ews_test(c, &p, mb, secret, "mailbox", &fc, report, reportlen, err, errlen);
    } else {
        if (!mb) {
            rc = mv_seterr(err, errlen, MV_EINVAL, "profile has no mailbox to test");
            goto out;
        }
        if ((rc = mv_jobs_credential(st, key, tenant, p.name, mb, &secret, err, errlen))) goto out;
        mv_imap_opts o;
        mv_jobs_imap_opts(&o, c, &p);
        mv_imap *im = NULL;
        char what[300];
        snprintf(what, sizeof what, "mailbox %s at %s:%d", mb, p.host, p.port);
        if ((rc = mv_imap_connect(&o, &im, detail, sizeof detail)) ||
            (rc = mv_imap_login(im, mb, secret, detail, sizeof detail)) ||
            (rc = mv_imap_list(im, count_imap_folder, &fc, detail, sizeof detail)))
            verdict(rc, what, detail, report, reportlen);
        else
            snprintf(report, reportlen, "OK %s: logged in, %d folders", what, fc.n);
        mv_imap_close(im);
    }
out:
    if (secret) {
        mv_crypt_wipe(secret, strlen(secret));
        free(secret);
    }
    mv_profile_free(&p);
    return rc;
}

int mv_jobs_requeue_delayed(void *st, const void *payload, size_t len)
{
    char err[MV_ERRLEN];
    mv_task t;
    if (mv_task_decode(payload, len, &t, err, sizeof err)) return 0; /* drop garbage */
    if (mv_state_fair_push(st, t.tenant, t.mailbox, payload, len, 1, NULL, err, sizeof err)) {
        mv_warn("cannot queue a delayed task again", " tenant=%s mailbox=%s error=\"%s\"", t.tenant,
                t.mailbox, err);
        return 1; /* kept in the delayed set for the next pump */
    }
    return 0;
}

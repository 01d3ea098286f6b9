/* api.c - "mailvault serve": the admin HTTP API and the Prometheus /metrics endpoint.
 *
 * The server is the CLI in server mode: every endpoint calls the same shared functions the
 * CLI commands call (catalog in Redis, tasks on Kafka), so both behave alike; neither goes
 * through the other (docs/api.md). libmicrohttpd serves on one internal polling thread, which
 * owns the Redis connection and the Kafka producer, so requests run one after the other.
 *
 * Every /api/v1 request needs "Authorization: Bearer <token>"; tokens are made by
 * `mailvault token add` and only their SHA-256 is stored. /healthz and /metrics are open
 * (bind the server to a private address). Bodies are JSON, at most 1 MiB. */
#include "cli.h"
#include "dashboard.h"

#include "mv/crypt.h"
#include "mv/jobs.h"
#include "mv/log.h"
#include "mv/profile.h"
#include "mv/queue.h"

#include <arpa/inet.h>
#include <jansson.h>
#include <microhttpd.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define API_MAX_BODY (1u << 20)
#define API_MAX_SEGS 8

typedef struct api {
    cli *c;
    mv_state *st;
    mv_producer *pr;
    unsigned char key[MV_KEY_LEN];
    int have_key;
} api;

typedef struct req {
    char *body;
    size_t len;
    int too_big;
} req;

/* An answer: status and a JSON body, or a text body (metrics). */
typedef struct reply {
    unsigned status;
    json_t *json;
    char *text;
    size_t textlen;
    const char *type; /* of text; NULL: the Prometheus text format */
    int persistent;   /* text is static (the embedded dashboard): not freed */
} reply;

/* ---- helpers ----------------------------------------------------------------------------- */

static int is(const char *a, const char *b)
{
    return strcmp(a, b) == 0;
}

static void token_hash(const char *token, char hex[65])
{
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int n = 0;
    if (EVP_Digest(token, strlen(token), md, &n, EVP_sha256(), NULL) != 1 || n != 32) {
        hex[0] = '\0';
        return;
    }
    mv_hex(md, 32, hex);
}

static reply ok(unsigned status, json_t *body)
{
    return (reply){status, body, NULL, 0, NULL, 0};
}

/* {"error": {"code": ..., "message": ..., "field": ...}} */
static reply fail(unsigned status, const char *code, const char *field, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static reply fail(unsigned status, const char *code, const char *field, const char *fmt, ...)
{
    char msg[MV_ERRLEN];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    json_t *e = json_object();
    json_object_set_new(e, "code", json_string(code));
    json_object_set_new(e, "message", json_string(msg));
    if (field) json_object_set_new(e, "field", json_string(field));
    json_t *o = json_object();
    json_object_set_new(o, "error", e);
    return ok(status, o);
}

/* The HTTP answer for a library error. */
static reply fail_err(mv_err e, const char *field, const char *err)
{
    switch (e) {
    case MV_EINVAL:
    case MV_ETOOBIG:
        return fail(400, "invalid", field, "%s", err);
    case MV_ENOTFOUND:
        return fail(404, "not_found", NULL, "%s", err);
    case MV_EEXIST:
        return fail(409, "exists", field, "%s", err);
    case MV_EAUTH:
        return fail(400, "invalid", field, "%s", err);
    case MV_ENET:
    case MV_ETIMEDOUT:
    case MV_EBUSY:
    case MV_ESERVER:
        return fail(503, "unavailable", NULL, "%s", err);
    default:
        return fail(500, "internal", NULL, "%s", err);
    }
}

static json_t *parse_body(const req *q, reply *bad)
{
    json_error_t je;
    if (!q->len) {
        *bad = fail(400, "invalid", NULL, "a JSON object body is required");
        return NULL;
    }
    json_t *j = json_loadb(q->body, q->len, JSON_REJECT_DUPLICATES, &je);
    if (!j) {
        *bad = fail(400, "invalid", NULL, "body is not JSON: %s (line %d, column %d)", je.text,
                    je.line, je.column);
        return NULL;
    }
    if (!json_is_object(j)) {
        json_decref(j);
        *bad = fail(400, "invalid", NULL, "the body must be a JSON object");
        return NULL;
    }
    return j;
}

/* A string member, optional: NULL when absent; *bad set when present but not a string. */
static const char *body_str(json_t *o, const char *name, int *bad)
{
    json_t *v = json_object_get(o, name);
    if (!v || json_is_null(v)) return NULL;
    if (!json_is_string(v)) {
        *bad = 1;
        return NULL;
    }
    return json_string_value(v);
}

static int collect_name(void *ud, const char *name)
{
    json_array_append_new(ud, json_string(name));
    return 0;
}

/* ---- endpoints --------------------------------------------------------------------------- */

static reply tenants_get(api *a)
{
    char err[MV_ERRLEN];
    json_t *arr = json_array();
    mv_err e = mv_state_tenant_list(a->st, collect_name, arr, err, sizeof err);
    if (e) {
        json_decref(arr);
        return fail_err(e, NULL, err);
    }
    return ok(200, arr);
}

static reply tenants_post(api *a, const req *q)
{
    reply bad;
    json_t *b = parse_body(q, &bad);
    if (!b) return bad;
    int wrong = 0;
    const char *name = body_str(b, "name", &wrong);
    reply r;
    if (wrong || !name) {
        r = fail(400, "invalid", "name", "name: a tenant name (string) is required");
    } else if (!mv_name_valid(name)) {
        r = fail(400, "invalid", "name",
                 "name: \"%.64s\" is not a valid tenant name (1-63 of a-z 0-9 . _ -, starting "
                 "with a letter or digit)",
                 name);
    } else {
        const char *display = body_str(b, "display_name", &wrong);
        char err[MV_ERRLEN];
        mv_err e;
        if (wrong)
            r = fail(400, "invalid", "display_name", "display_name: must be a string");
        else if ((e = mv_state_tenant_add(a->st, name, display ? display : name, err,
                                          sizeof err)) == MV_EEXIST)
            r = fail(409, "exists", "name", "tenant \"%s\" already exists", name);
        else if (e)
            r = fail_err(e, NULL, err);
        else {
            json_t *o = json_object();
            json_object_set_new(o, "name", json_string(name));
            json_object_set_new(o, "display_name", json_string(display ? display : name));
            r = ok(201, o);
        }
    }
    json_decref(b);
    return r;
}

static reply tenant_delete(api *a, const char *t)
{
    char err[MV_ERRLEN];
    if (!mv_state_tenant_exists(a->st, t))
        return fail(404, "not_found", NULL, "tenant \"%s\" does not exist", t);
    mv_err e = mv_state_tenant_del(a->st, t, err, sizeof err);
    return e ? fail_err(e, NULL, err) : ok(200, json_pack("{s:s}", "removed", t));
}

static reply profiles_get(api *a, const char *t)
{
    char err[MV_ERRLEN];
    json_t *arr = json_array();
    mv_err e = mv_state_profile_list(a->st, t, collect_name, arr, err, sizeof err);
    if (e) {
        json_decref(arr);
        return fail_err(e, NULL, err);
    }
    return ok(200, arr);
}

static reply profile_get(api *a, const char *t, const char *p)
{
    char err[MV_ERRLEN], *text = NULL;
    mv_err e = mv_state_profile_get(a->st, t, p, &text, err, sizeof err);
    if (e == MV_ENOTFOUND)
        return fail(404, "not_found", NULL, "profile \"%s\" of tenant \"%s\" not found", p, t);
    if (e) return fail_err(e, NULL, err);
    json_t *j = json_loads(text, 0, NULL); /* stored without secrets */
    free(text);
    return j ? ok(200, j) : fail(500, "internal", NULL, "stored profile is not JSON");
}

/* PUT: the profile document as `mailvault profile add --file` takes it, secrets included;
 * they are sealed into the credential store and never returned. */
static reply profile_put(api *a, const char *t, const char *p, const req *q)
{
    reply bad;
    if (!a->have_key)
        return fail(503, "unavailable", NULL,
                    "master_key_file is not configured: credentials cannot be sealed");
    json_t *b = parse_body(q, &bad);
    if (!b) return bad;
    int wrong = 0;
    const char *name = body_str(b, "name", &wrong);
    reply r;
    if (wrong || (name && strcmp(name, p) != 0)) {
        r = fail(400, "invalid", "name", "name: \"%s\" differs from the profile in the path (%s)",
                 name ? name : "(not a string)", p);
        json_decref(b);
        return r;
    }
    if (!name) json_object_set_new(b, "name", json_string(p));
    char *text = json_dumps(b, JSON_COMPACT);
    json_decref(b);
    if (!text) return fail(500, "internal", NULL, "out of memory");
    mv_profile prof;
    memset(&prof, 0, sizeof prof);
    char err[MV_ERRLEN];
    mv_err e;
    if (!mv_state_tenant_exists(a->st, t))
        r = fail(404, "not_found", NULL, "tenant \"%s\" does not exist", t);
    else if ((e = mv_profile_parse(text, 1, &prof, err, sizeof err)))
        r = fail_err(e, NULL, err);
    else if ((e = mv_jobs_profile_save(a->st, a->key, t, &prof, err, sizeof err)))
        r = fail_err(e, NULL, err);
    else {
        json_t *o = json_object();
        json_object_set_new(o, "saved", json_string(p));
        json_object_set_new(o, "mailboxes", json_integer((json_int_t)prof.nmailboxes));
        r = ok(200, o);
    }
    mv_crypt_wipe(text, strlen(text));
    free(text);
    mv_profile_free(&prof);
    return r;
}

/* PUT .../profiles/{p}/credentials/{slot} {"secret": "..."}: replace one credential without
 * sending the profile again. slot: a mailbox login of an IMAP profile, or "app" for a Graph
 * or EWS profile's client secret or service account password. Sealed like profile add does;
 * nothing of it is ever returned. */
static reply credential_put(api *a, const char *t, const char *p, const char *slot, const req *q)
{
    if (!a->have_key)
        return fail(503, "unavailable", NULL,
                    "master_key_file is not configured: credentials cannot be sealed");
    reply bad;
    json_t *b = parse_body(q, &bad);
    if (!b) return bad;
    int wrong = 0;
    const char *secret = body_str(b, "secret", &wrong);
    mv_profile prof;
    memset(&prof, 0, sizeof prof);
    char err[MV_ERRLEN];
    reply r;
    mv_err e;
    if (wrong || !secret || !secret[0] || strlen(secret) > 16384) {
        r = fail(400, "invalid", "secret",
                 "secret: a non-empty string (at most 16 KiB) is required");
    } else if ((e = mv_jobs_profile_load(a->st, t, p, &prof, err, sizeof err))) {
        r = fail_err(e, NULL, err);
    } else {
        const char *cred = NULL;
        if (prof.source == MV_SOURCE_IMAP && mv_profile_find_mailbox(&prof, slot) >= 0)
            cred = slot;
        else if ((prof.source == MV_SOURCE_GRAPH || prof.source == MV_SOURCE_EWS) &&
                 is(slot, "app"))
            cred = MV_PROFILE_APP_CRED;
        if (!cred) {
            r = fail(404, "not_found", "slot",
                     "profile %s has no credential \"%.255s\" (a mailbox login of an imap "
                     "profile, or \"app\" for graph and ews)",
                     p, slot);
        } else {
            char ad[512];
            unsigned char *blob = NULL;
            size_t len = 0;
            mv_profile_cred_ad(t, p, cred, ad, sizeof ad);
            if ((e = mv_crypt_seal(a->key, ad, secret, strlen(secret), &blob, &len, err,
                                   sizeof err)) ||
                (e = mv_state_cred_put(a->st, t, p, cred, blob, len, err, sizeof err)))
                r = fail_err(e, NULL, err);
            else
                r = ok(200, json_pack("{s:s,s:s}", "profile", p, "credential", slot));
            free(blob);
        }
    }
    mv_profile_free(&prof);
    json_decref(b); /* the body itself is wiped by on_completed */
    return r;
}

static reply profile_delete(api *a, const char *t, const char *p)
{
    char err[MV_ERRLEN], *text = NULL;
    mv_err e = mv_state_profile_get(a->st, t, p, &text, err, sizeof err);
    free(text);
    if (e == MV_ENOTFOUND)
        return fail(404, "not_found", NULL, "profile \"%s\" of tenant \"%s\" not found", p, t);
    if (!e) e = mv_state_profile_del(a->st, t, p, err, sizeof err);
    return e ? fail_err(e, NULL, err) : ok(200, json_pack("{s:s}", "removed", p));
}

static reply profile_run(api *a, const char *t, const char *p)
{
    char err[MV_ERRLEN], run_id[37];
    int n = 0;
    if (!mv_state_tenant_exists(a->st, t))
        return fail(404, "not_found", NULL, "tenant \"%s\" does not exist", t);
    if (!a->pr && (mv_queue_ensure_topics(&a->c->cfg, err, sizeof err) ||
                   mv_producer_new(&a->c->cfg, &a->pr, err, sizeof err)))
        return fail(503, "unavailable", NULL, "%s", err);
    mv_err e = mv_jobs_enqueue_profile(&a->c->cfg, a->st, a->pr, a->have_key ? a->key : NULL, t, p,
                                       run_id, &n, err, sizeof err);
    if (e) return fail_err(e, NULL, err);
    return ok(202, json_pack("{s:s,s:i}", "run", run_id, "tasks", n));
}

static reply cancel_post(api *a, const char *t, const req *q)
{
    json_t *b = NULL;
    reply bad;
    if (q->len && !(b = parse_body(q, &bad))) return bad;
    int wrong = 0;
    const char *profile = b ? body_str(b, "profile", &wrong) : NULL;
    if (wrong) {
        json_decref(b);
        return fail(400, "invalid", "profile", "profile: must be a string");
    }
    const char *mailbox = b ? body_str(b, "mailbox", &wrong) : NULL;
    if (wrong) {
        json_decref(b);
        return fail(400, "invalid", "mailbox", "mailbox: must be a string");
    }
    char err[MV_ERRLEN];
    int n = 0;
    mv_err e = cli_cancel(a->st, t, profile, mailbox, &n, err, sizeof err);
    json_decref(b);
    if (e) return fail_err(e, NULL, err);
    return ok(202, json_pack("{s:i}", "cancelled", n));
}

static reply status_get(api *a, const char *t)
{
    char err[MV_ERRLEN];
    mv_err e = MV_OK;
    json_t *j = cli_status_json(a->st, &a->c->cfg, t, &e, err, sizeof err);
    return j ? ok(200, j) : fail_err(e, NULL, err);
}

static reply runs_get(api *a, const char *t, const char *run, struct MHD_Connection *conn)
{
    const char *profile = MHD_lookup_connection_value(conn, MHD_GET_ARGUMENT_KIND, "profile");
    if (profile && !mv_name_valid(profile))
        return fail(400, "invalid", "profile", "profile: \"%.64s\" is not a valid name", profile);
    char err[MV_ERRLEN];
    mv_err e = MV_OK;
    json_t *j = cli_runs_json(a->st, t, profile, run, &e, err, sizeof err);
    if (!j) return fail_err(e, NULL, err);
    if (run) { /* one run: the object, not a list */
        json_t *one = json_incref(json_array_get(j, 0));
        json_decref(j);
        return ok(200, one);
    }
    return ok(200, j);
}

static reply queue_get(api *a)
{
    mv_lag lag;
    char err[MV_ERRLEN];
    if (mv_queue_lag(&a->c->cfg, &lag, err, sizeof err))
        return fail(503, "unavailable", NULL, "consumer lag unavailable: %s", err);
    json_t *pp = json_array();
    for (int i = 0; i < lag.partitions && i < 256; i++)
        json_array_append_new(pp, json_integer(lag.per_partition[i]));
    return ok(200, json_pack("{s:s,s:s,s:I,s:o}", "topic", a->c->cfg.topic_tasks, "group",
                             a->c->cfg.group, "lag", (json_int_t)lag.total, "partitions", pp));
}

static reply dlq_get(api *a, struct MHD_Connection *conn)
{
    const char *t = MHD_lookup_connection_value(conn, MHD_GET_ARGUMENT_KIND, "tenant");
    if (t && !mv_name_valid(t))
        return fail(400, "invalid", "tenant", "tenant: \"%.64s\" is not a valid name", t);
    char err[MV_ERRLEN];
    mv_err e = MV_OK;
    json_t *j = cli_dlq_json(a->st, &a->c->cfg, t, &e, err, sizeof err);
    return j ? ok(200, j) : fail_err(e, NULL, err);
}

static reply dlq_retry(api *a, const req *q)
{
    reply bad;
    json_t *b = parse_body(q, &bad);
    if (!b) return bad;
    int wrong = 0;
    const char *t = body_str(b, "tenant", &wrong);
    reply r;
    if (wrong || !t || !mv_name_valid(t)) {
        r = fail(400, "invalid", "tenant", "tenant: a tenant name is required");
    } else {
        const char *m = body_str(b, "mailbox", &wrong);
        char err[MV_ERRLEN];
        int n = 0;
        mv_err e;
        if (wrong)
            r = fail(400, "invalid", "mailbox", "mailbox: must be a string");
        else if ((e = cli_dlq_retry(a->st, &a->c->cfg, t, m, &n, err, sizeof err)))
            r = fail_err(e, NULL, err);
        else
            r = ok(202, json_pack("{s:i}", "retried", n));
    }
    json_decref(b);
    return r;
}

/* ---- overview (the dashboard's front page) ----------------------------------------------- */

typedef struct ov_tenant {
    json_t *o, *states;
    mv_state *st;
    const char *tenant;
    long long messages, raw;
} ov_tenant;

static int ov_metric(void *ud, const char *k, const char *v)
{
    ov_tenant *t = ud;
    if (!strcmp(k, "archived_messages")) t->messages = atoll(v);
    if (!strcmp(k, "archived_bytes_raw")) t->raw = atoll(v);
    return 0;
}

static int ov_state(void *ud, const char *k, const char *v)
{
    ov_tenant *t = ud;
    if (!strcmp(k, "state")) {
        json_t *n = json_object_get(t->states, v);
        json_object_set_new(t->states, v, json_integer(n ? json_integer_value(n) + 1 : 1));
    }
    return 0;
}

static int ov_mailbox(void *ud, const char *mailbox)
{
    ov_tenant *t = ud;
    char err[MV_ERRLEN];
    mv_state_status_get(t->st, t->tenant, mailbox, ov_state, t, err, sizeof err);
    return 0;
}

static int ov_tenant_cb(void *ud, const char *name)
{
    void **pair = ud;
    mv_state *st = pair[0];
    json_t *arr = pair[1];
    long long *total = pair[2];
    char err[MV_ERRLEN];
    ov_tenant t = {.o = json_object(), .states = json_object(), .st = st, .tenant = name};
    mv_state_metrics_get(st, name, ov_metric, &t, err, sizeof err);
    mv_state_mailbox_list(st, name, ov_mailbox, &t, err, sizeof err);
    int64_t waiting = 0, inflight = 0;
    mv_state_fair_counts(st, name, &waiting, &inflight, err, sizeof err);
    json_object_set_new(t.o, "name", json_string(name));
    json_object_set_new(t.o, "states", t.states);
    json_object_set_new(t.o, "archived_messages", json_integer(t.messages));
    json_object_set_new(t.o, "archived_bytes", json_integer(t.raw));
    json_object_set_new(t.o, "waiting", json_integer(waiting));
    json_object_set_new(t.o, "inflight", json_integer(inflight));
    json_array_append_new(arr, t.o);
    *total += t.messages;
    return 0;
}

static int ov_worker(void *ud, const char *worker, int64_t seen_ms, int busy, int capacity)
{
    json_t *arr = ud;
    int up = mv_now_ms() - seen_ms < 5000;
    json_array_append_new(arr,
                          json_pack("{s:s,s:b,s:i,s:i,s:I}", "id", worker, "up", up, "busy", busy,
                                    "capacity", capacity, "last_seen_ms", (json_int_t)seen_ms));
    return 0;
}

static reply overview_get(api *a)
{
    char err[MV_ERRLEN];
    json_t *tenants = json_array(), *workers = json_array();
    long long total = 0;
    void *pair[3] = {a->st, tenants, &total};
    mv_err e = mv_state_tenant_list(a->st, ov_tenant_cb, pair, err, sizeof err);
    if (!e) e = mv_state_worker_list(a->st, ov_worker, workers, err, sizeof err);
    if (e) {
        json_decref(tenants);
        json_decref(workers);
        return fail_err(e, NULL, err);
    }
    int alive = 0;
    size_t i;
    json_t *w;
    json_array_foreach(workers, i, w) alive += json_is_true(json_object_get(w, "up"));
    mv_lag lag;
    json_t *lagj = mv_queue_lag(&a->c->cfg, &lag, err, sizeof err) == MV_OK
                       ? json_integer(lag.total)
                       : json_null();
    return ok(200, json_pack("{s:I,s:o,s:i,s:o,s:I,s:o}", "now_ms", (json_int_t)mv_now_ms(),
                             "workers", workers, "workers_alive", alive, "lag", lagj,
                             "archived_messages", (json_int_t)total, "tenants", tenants));
}

/* ---- routing ----------------------------------------------------------------------------- */

static int split(const char *url, char *buf, size_t buflen, char **seg)
{
    snprintf(buf, buflen, "%s", url);
    int n = 0;
    for (char *save = NULL, *s = strtok_r(buf, "/", &save); s; s = strtok_r(NULL, "/", &save)) {
        if (n == API_MAX_SEGS) return -1;
        seg[n++] = s;
    }
    return n;
}

static reply route_api(api *a, struct MHD_Connection *conn, const char *m, char **s, int n,
                       const req *q)
{
    /* s[0] = "api", s[1] = "v1" */
    if (n == 3 && is(s[2], "queue"))
        return is(m, "GET") ? queue_get(a) : fail(405, "method", NULL, "use GET");
    if (n == 3 && is(s[2], "overview"))
        return is(m, "GET") ? overview_get(a) : fail(405, "method", NULL, "use GET");
    if (n == 3 && is(s[2], "dlq"))
        return is(m, "GET") ? dlq_get(a, conn) : fail(405, "method", NULL, "use GET");
    if (n == 4 && is(s[2], "dlq") && is(s[3], "retry"))
        return is(m, "POST") ? dlq_retry(a, q) : fail(405, "method", NULL, "use POST");
    if (n == 3 && is(s[2], "status"))
        return is(m, "GET") ? status_get(a, NULL) : fail(405, "method", NULL, "use GET");
    if (n < 3 || !is(s[2], "tenants")) return fail(404, "not_found", NULL, "no such endpoint");
    if (n == 3) {
        if (is(m, "GET")) return tenants_get(a);
        if (is(m, "POST")) return tenants_post(a, q);
        return fail(405, "method", NULL, "use GET or POST");
    }
    const char *t = s[3];
    if (!mv_name_valid(t))
        return fail(400, "invalid", "tenant", "tenant: \"%.64s\" is not a valid name", t);
    if (n == 4) {
        if (is(m, "DELETE")) return tenant_delete(a, t);
        return fail(405, "method", NULL, "use DELETE");
    }
    if (n == 5 && is(s[4], "status"))
        return is(m, "GET") ? status_get(a, t) : fail(405, "method", NULL, "use GET");
    if (n == 5 && is(s[4], "cancel"))
        return is(m, "POST") ? cancel_post(a, t, q) : fail(405, "method", NULL, "use POST");
    if ((n == 5 || n == 6) && is(s[4], "runs")) {
        if (!is(m, "GET")) return fail(405, "method", NULL, "use GET");
        return runs_get(a, t, n == 6 ? s[5] : NULL, conn);
    }
    if (n >= 5 && is(s[4], "profiles")) {
        if (n == 5) return is(m, "GET") ? profiles_get(a, t) : fail(405, "method", NULL, "use GET");
        const char *p = s[5];
        if (!mv_name_valid(p))
            return fail(400, "invalid", "profile", "profile: \"%.64s\" is not a valid name", p);
        if (n == 6) {
            if (is(m, "GET")) return profile_get(a, t, p);
            if (is(m, "PUT")) return profile_put(a, t, p, q);
            if (is(m, "DELETE")) return profile_delete(a, t, p);
            return fail(405, "method", NULL, "use GET, PUT or DELETE");
        }
        if (n == 7 && is(s[6], "run"))
            return is(m, "POST") ? profile_run(a, t, p) : fail(405, "method", NULL, "use POST");
        if (n == 8 && is(s[6], "credentials"))
            return is(m, "PUT") ? credential_put(a, t, p, s[7], q)
                                : fail(405, "method", NULL, "use PUT (credentials are write-only)");
    }
    return fail(404, "not_found", NULL, "no such endpoint");
}

static reply route(api *a, struct MHD_Connection *conn, const char *url, const char *m,
                   const req *q, char *who, size_t wholen)
{
    char buf[1024], *s[API_MAX_SEGS];
    snprintf(who, wholen, "-");
    if (strlen(url) >= sizeof buf) return fail(414, "invalid", NULL, "path too long");
    int n = split(url, buf, sizeof buf, s);
    if (n < 0) return fail(404, "not_found", NULL, "no such endpoint");
    if (n == 1 && is(s[0], "healthz")) {
        int redis_ok = mv_state_tenant_exists(a->st, "healthz-probe") >= 0;
        return ok(redis_ok ? 200 : 503, json_pack("{s:b}", "redis", redis_ok));
    }
    if (n == 1 && is(s[0], "metrics")) {
        if (!is(m, "GET")) return fail(405, "method", NULL, "use GET");
        size_t len = 0;
        char *text = api_metrics(a->st, &a->c->cfg, &len);
        if (!text) return fail(503, "unavailable", NULL, "metrics unavailable (Redis)");
        return (reply){200, NULL, text, len, NULL, 0};
    }
    if (n == 1 && is(s[0], "favicon.ico")) /* browsers ask; there is none */
        return (reply){204, NULL, (char *)"", 0, "image/x-icon", 1};
    if (n <= 1 && is(m, "GET")) { /* the dashboard's files: public, the data needs a token */
        const char *want = n == 0 ? "/index.html" : url;
        for (const mv_asset *as = mv_dashboard_assets; as->path; as++)
            if (is(as->path, want))
                return (reply){200, NULL, (char *)as->data, as->len, as->type, 1};
    }
    if (n < 2 || !is(s[0], "api") || !is(s[1], "v1"))
        return fail(404, "not_found", NULL, "no such endpoint");
    const char *auth =
        MHD_lookup_connection_value(conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_AUTHORIZATION);
    if (!auth || strncmp(auth, "Bearer ", 7) != 0 || !auth[7])
        return fail(401, "unauthorized", NULL, "a bearer token is required");
    char hex[65], err[MV_ERRLEN];
    token_hash(auth + 7, hex);
    mv_err e = mv_state_apitoken_find(a->st, hex, who, wholen, err, sizeof err);
    if (e == MV_ENOTFOUND || e == MV_EINVAL) {
        snprintf(who, wholen, "-");
        return fail(401, "unauthorized", NULL, "unknown bearer token");
    }
    if (e) return fail_err(e, NULL, err);
    if (q->too_big)
        return fail(413, "too_large", NULL, "request body larger than %u bytes", API_MAX_BODY);
    return route_api(a, conn, m, s, n, q);
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn, const char *url,
                                  const char *method, const char *version, const char *upload,
                                  size_t *upload_size, void **con_cls)
{
    (void)version;
    api *a = cls;
    req *q = *con_cls;
    if (!q) {
        if (!(q = calloc(1, sizeof *q))) return MHD_NO;
        *con_cls = q;
        return MHD_YES;
    }
    if (*upload_size) {
        size_t n = *upload_size;
        *upload_size = 0;
        if (q->too_big || q->len + n > API_MAX_BODY) {
            q->too_big = 1;
            return MHD_YES;
        }
        char *nb = realloc(q->body, q->len + n + 1);
        if (!nb) return MHD_NO;
        memcpy(nb + q->len, upload, n);
        q->body = nb;
        q->len += n;
        q->body[q->len] = '\0';
        return MHD_YES;
    }
    char who[128];
    int64_t t0 = mv_mono_ms();
    reply r = route(a, conn, url, method, q, who, sizeof who);
    char *text = r.text;
    size_t len = r.textlen;
    const char *ctype = r.type ? r.type : "text/plain; version=0.0.4; charset=utf-8";
    if (r.json) {
        char *j = json_dumps(r.json, JSON_COMPACT);
        json_decref(r.json);
        if (!j) return MHD_NO;
        len = strlen(j);
        if (!(text = malloc(len + 2))) {
            free(j);
            return MHD_NO;
        }
        memcpy(text, j, len);
        text[len++] = '\n';
        free(j);
        ctype = "application/json";
    }
    struct MHD_Response *resp = MHD_create_response_from_buffer(
        len, text, r.persistent ? MHD_RESPMEM_PERSISTENT : MHD_RESPMEM_MUST_FREE);
    if (!resp) {
        if (!r.persistent) free(text);
        return MHD_NO;
    }
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, ctype);
    MHD_add_response_header(resp, "Cache-Control", "no-store");
    MHD_add_response_header(resp, "X-Content-Type-Options", "nosniff");
    if (r.type) /* the dashboard: its own scripts and styles only, never framed */
        MHD_add_response_header(resp, "Content-Security-Policy",
                                "default-src 'none'; script-src 'self'; style-src 'self'; "
                                "connect-src 'self'; img-src 'self'; frame-ancestors 'none'; "
                                "base-uri 'none'; form-action 'none'");
    if (r.status == 401)
        MHD_add_response_header(resp, MHD_HTTP_HEADER_WWW_AUTHENTICATE,
                                "Bearer realm=\"mailvault\"");
    enum MHD_Result res = MHD_queue_response(conn, r.status, resp);
    MHD_destroy_response(resp);
    if (strcmp(url, "/metrics") != 0 && strcmp(url, "/healthz") != 0)
        mv_info("api request", " method=%s path=%s status=%u token=%s ms=%lld", method, url,
                r.status, who, (long long)(mv_mono_ms() - t0));
    return res;
}

static void on_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
                         enum MHD_RequestTerminationCode code)
{
    (void)cls;
    (void)conn;
    (void)code;
    req *q = *con_cls;
    if (q) {
        if (q->body) mv_crypt_wipe(q->body, q->len); /* may hold credentials */
        free(q->body);
        free(q);
    }
    *con_cls = NULL;
}

static int parse_listen(const char *s, struct sockaddr_in *sa)
{
    char host[64];
    const char *colon = strrchr(s, ':');
    if (!colon || (size_t)(colon - s) >= sizeof host) return -1;
    memcpy(host, s, (size_t)(colon - s));
    host[colon - s] = '\0';
    char *end;
    long port = strtol(colon + 1, &end, 10);
    if (*end || colon[1] == '\0' || port < 0 || port > 65535) return -1;
    memset(sa, 0, sizeof *sa);
    sa->sin_family = AF_INET;
    sa->sin_port = htons((uint16_t)port);
    return inet_pton(AF_INET, host, &sa->sin_addr) == 1 ? 0 : -1;
}

int cmd_serve(cli *c, int argc, char **argv)
{
    const char *listen = c->cfg.api_listen;
    for (int i = 0; i < argc; i++) {
        if (is(argv[i], "--listen") && i + 1 < argc)
            listen = argv[++i];
        else
            return cli_fail(2, "usage: mailvault serve [--listen ADDRESS:PORT]");
    }
    struct sockaddr_in sa;
    if (parse_listen(listen, &sa))
        return cli_fail(2, "--listen / api.listen: \"%s\" is not IPv4-address:port", listen);
    api a = {.c = c};
    char err[MV_ERRLEN];
    if (c->cfg.master_key_file[0]) {
        if (mv_crypt_load_key(c->cfg.master_key_file, a.key, err, sizeof err))
            return cli_fail(2, "%s", err);
        a.have_key = 1;
    }
    if (!(a.st = cli_state(c))) return 1;
    /* SIGINT/SIGTERM are blocked before the server thread exists (it inherits the mask) and
     * taken here with sigwait */
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &set, NULL);
    signal(SIGPIPE, SIG_IGN);
    struct MHD_Daemon *d = MHD_start_daemon(
        MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_ERROR_LOG, 0, NULL, NULL, on_request, &a,
        MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&sa, MHD_OPTION_NOTIFY_COMPLETED, on_completed,
        NULL, MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)30, MHD_OPTION_CONNECTION_LIMIT,
        (unsigned)256, MHD_OPTION_END);
    if (!d) {
        mv_state_close(a.st);
        mv_crypt_wipe(a.key, sizeof a.key);
        return cli_fail(1, "cannot listen on %s (address in use or not local?)", listen);
    }
    const union MHD_DaemonInfo *di = MHD_get_daemon_info(d, MHD_DAEMON_INFO_BIND_PORT);
    char host[64];
    inet_ntop(AF_INET, &sa.sin_addr, host, sizeof host);
    printf("mailvault: serving the admin API on http://%s:%u\n", host,
           di ? (unsigned)di->port : (unsigned)ntohs(sa.sin_port));
    fflush(stdout);
    mv_info("admin server started", " listen=%s:%u", host,
            di ? (unsigned)di->port : (unsigned)ntohs(sa.sin_port));
    int sig = 0;
    sigwait(&set, &sig);
    mv_info("admin server stopping", " signal=%d", sig);
    MHD_stop_daemon(d);
    mv_producer_destroy(a.pr);
    mv_state_close(a.st);
    mv_crypt_wipe(a.key, sizeof a.key);
    return 0;
}

/* ---- tokens ------------------------------------------------------------------------------ */

static int print_token(void *ud, const char *name, int64_t created_ms)
{
    (void)ud;
    printf("%s\t%lld\n", name, (long long)created_ms);
    return 0;
}

int cmd_token(cli *c, int argc, char **argv)
{
    if (argc < 1 || (!is(argv[0], "add") && !is(argv[0], "list") && !is(argv[0], "rm")))
        return cli_fail(2, "usage: mailvault token add|rm --name N | token list");
    const char *name = NULL;
    for (int i = 1; i < argc; i++) {
        if (is(argv[i], "--name") && i + 1 < argc)
            name = argv[++i];
        else
            return cli_fail(2, "usage: mailvault token add|rm --name N | token list");
    }
    if (!is(argv[0], "list") && (!name || !mv_name_valid(name)))
        return cli_fail(2, "--name: a token name (1-63 of a-z 0-9 . _ -) is required");
    mv_state *st = cli_state(c);
    if (!st) return 1;
    char err[MV_ERRLEN];
    int rc = 0;
    if (is(argv[0], "add")) {
        unsigned char raw[32];
        char token[4 + 65], hex[65];
        if (RAND_bytes(raw, sizeof raw) != 1) {
            mv_state_close(st);
            return cli_fail(1, "no randomness for a token");
        }
        memcpy(token, "mvt_", 4);
        mv_hex(raw, sizeof raw, token + 4);
        token_hash(token, hex);
        mv_err e = mv_state_apitoken_put(st, hex, name, err, sizeof err);
        if (e)
            rc = cli_fail(1, "%s", err);
        else
            printf("%s\n", token); /* shown once; only its SHA-256 is kept */
        mv_crypt_wipe(token, sizeof token);
        mv_crypt_wipe(raw, sizeof raw);
    } else if (is(argv[0], "rm")) {
        if (mv_state_apitoken_del(st, name, err, sizeof err))
            rc = cli_fail(1, "%s", err);
        else
            printf("token %s removed\n", name);
    } else if (mv_state_apitoken_list(st, print_token, NULL, err, sizeof err)) {
        rc = cli_fail(1, "%s", err);
    }
    mv_state_close(st);
    return rc;
}

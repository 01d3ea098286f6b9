/* test_graph.c - the Microsoft Graph client against a scripted HTTP/1.1 server on loopback.
 *
 * Each test starts a server thread on 127.0.0.1 (ephemeral port) whose handler picks a canned
 * response per request (method + target) and records what the client sent (headers, form
 * body). login_base and graph_base both point at it ("/login" and "/v1.0"), so token requests
 * and Graph requests share the scripted server and the client's keep-alive connection.
 * Synchronisation is by the sockets only: the client call returns after the server answered,
 * and the request log is read under the server's mutex. No sleeps.
 *
 * The internal parsers (graph_internal.h) are also tested directly on odd documents. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mv/graph.h"
#include "../../shared/src/graph_internal.h"
#include "testsrv.h"

#define SECRET "s=cr&t+x/Secret9"
#define SECRET_ESC "s%3Dcr%26t%2Bx%2FSecret9"

/* ------------------------------------------------------------------ scripted server */

/* This file's side of the shared server (testsrv.h): the running test's handler and the state
 * it shares with it (under the server's lock). Token requests are counted here; answers are
 * JSON unless the handler says otherwise. */
typedef struct srv srv;
typedef void (*handler_fn)(srv *s, const tsrv_req *q, tsrv_resp *r);

struct srv {
    tsrv *t;
    handler_fn h;
    const char *base; /* http://127.0.0.1:PORT */
    int port;
    int ntoken; /* token requests */
    int state;
    int token_seq;
    char *scratch; /* generated bodies */
    size_t scratch_cap;
};

static void dispatch(void *ud, const tsrv_req *q, tsrv_resp *r)
{
    srv *s = ud;
    if (!strcmp(q->method, "POST") && strstr(q->target, "/oauth2/v2.0/token")) s->ntoken++;
    r->ctype = "application/json";
    s->h(s, q, r);
}

static srv *srv_start(handler_fn h)
{
    srv *s = calloc(1, sizeof *s);
    assert_non_null(s);
    s->h = h;
    s->scratch_cap = 1u << 20;
    s->scratch = malloc(s->scratch_cap);
    assert_non_null(s->scratch);
    s->t = tsrv_start(dispatch, s);
    s->base = tsrv_base(s->t);
    s->port = tsrv_port(s->t);
    return s;
}

static void srv_stop(srv *s)
{
    tsrv_stop(s->t);
    free(s->scratch);
    free(s);
}

/* Snapshot of request i (under the lock). */
static tsrv_req req_at(srv *s, int i)
{
    tsrv_req q;
    tsrv_request(s->t, i, &q);
    return q;
}

#define NREQ(s) tsrv_nreq((s)->t)
#define NTOKEN(s) tsrv_read_int((s)->t, &(s)->ntoken)
#define NACCEPT(s) tsrv_naccept((s)->t)
#define HDR(q, name) TSRV_HEADER(&(q), (name))

/* A header of request i (under the lock), into out[TSRV_VALUE_MAX]. */
static const char *hdr_at(srv *s, int i, const char *name, char *out)
{
    tsrv_req q;
    tsrv_request(s->t, i, &q);
    return tsrv_header(&q, name, out, TSRV_VALUE_MAX);
}
#define HDR_AT(s, i, name) hdr_at((s), (i), (name), (char[TSRV_VALUE_MAX]){0})

static mv_graph *client(srv *s, size_t max_json, uint64_t max_message, int timeout_ms)
{
    char login[96], graph[96];
    snprintf(login, sizeof login, "%s/login/", s->base); /* trailing slash is trimmed */
    snprintf(graph, sizeof graph, "%s/v1.0", s->base);
    mv_graph_opts o;
    mv_graph_opts_default(&o);
    o.login_base = login;
    o.graph_base = graph;
    o.tenant_id = "tenant1";
    o.client_id = "cid-1";
    o.client_secret = SECRET;
    o.page_size = 2;
    if (max_json) o.max_json = max_json;
    if (max_message) o.max_message = max_message;
    if (timeout_ms) o.timeout_ms = timeout_ms;
    o.connect_timeout_ms = 2000;
    mv_graph *g = NULL;
    char err[MV_ERRLEN];
    assert_int_equal(mv_graph_open(&o, &g, err, sizeof err), MV_OK);
    assert_non_null(g);
    return g;
}

/* ------------------------------------------------------------------ response helpers */

static int is_token(const tsrv_req *q)
{
    return !strcmp(q->method, "POST") && !strcmp(q->target, "/login/tenant1/oauth2/v2.0/token");
}

static void json(tsrv_resp *r, int status, const char *body)
{
    r->status = status;
    r->body = body;
}

static void token_ok(srv *s, tsrv_resp *r)
{
    s->token_seq++;
    int n = snprintf(s->scratch, s->scratch_cap,
                     "{\"token_type\":\"Bearer\",\"expires_in\":3599,\"ext_expires_in\":3599,"
                     "\"access_token\":\"tok%d\"}",
                     s->token_seq);
    r->status = 200;
    r->body = s->scratch;
    r->len = (size_t)n;
}

static int starts(const char *s, const char *prefix)
{
    return !strncmp(s, prefix, strlen(prefix));
}

/* ------------------------------------------------------------------ tests: token */

static void h_token(srv *s, const tsrv_req *q, tsrv_resp *r)
{
    if (is_token(q))
        token_ok(s, r);
    else if (starts(q->target, "/v1.0/users?"))
        json(r, 200, "{\"value\":[]}");
    else
        json(r, 404, "{\"error\":{\"code\":\"NotFound\",\"message\":\"no route\"}}");
}

static void test_token_fetch(void **state)
{
    (void)state;
    srv *s = srv_start(h_token);
    mv_graph *g = client(s, 0, 0, 0);
    char err[MV_ERRLEN];
    const char *tok = NULL;
    int64_t exp = 0;
    int64_t now = mv_now_ms();
    assert_int_equal(mv_graph_token(g, &tok, &exp, err, sizeof err), MV_OK);
    assert_string_equal(tok, "tok1");
    assert_true(exp >= now + 3599000 - 5000 && exp <= mv_now_ms() + 3599000);
    tsrv_req q = req_at(s, 0);
    assert_string_equal(q.method, "POST");
    assert_string_equal(HDR(q, "Content-Type"), "application/x-www-form-urlencoded");
    assert_string_equal(HDR(q, "User-Agent"), "mailvault/0.1");
    assert_string_equal(HDR(q, "Authorization"), "");
    assert_non_null(strstr(q.body, "grant_type=client_credentials"));
    assert_non_null(strstr(q.body, "client_id=cid-1"));
    assert_non_null(strstr(q.body, "client_secret=" SECRET_ESC));
    assert_non_null(strstr(q.body, "scope=http%3A%2F%2F127.0.0.1%2F.default"));
    /* cached: no second token request */
    assert_int_equal(mv_graph_token(g, &tok, &exp, err, sizeof err), MV_OK);
    assert_int_equal(NTOKEN(s), 1);
    /* the token is used on Graph requests */
    assert_int_equal(mv_graph_list_users(g, NULL, NULL, err, sizeof err), MV_OK);
    q = req_at(s, 1);
    assert_string_equal(HDR(q, "Authorization"), "Bearer tok1");
    assert_string_equal(HDR(q, "Accept"), "application/json");
    assert_int_equal(strlen(HDR(q, "client-request-id")), 36);
    assert_int_equal(NTOKEN(s), 1);
    /* one keep-alive connection for token and Graph requests */
    assert_int_equal(NACCEPT(s), 1);
    mv_graph_close(g);
    srv_stop(s);
}

static void test_token_set_and_refresh(void **state)
{
    (void)state;
    srv *s = srv_start(h_token);
    mv_graph *g = client(s, 0, 0, 0);
    char err[MV_ERRLEN];
    /* an installed token valid for an hour is used as is */
    mv_graph_set_token(g, "cached-1", mv_now_ms() + 3600 * 1000);
    assert_int_equal(mv_graph_list_users(g, NULL, NULL, err, sizeof err), MV_OK);
    assert_int_equal(NTOKEN(s), 0);
    assert_string_equal(HDR_AT(s, 0, "Authorization"), "Bearer cached-1");
    /* one within 5 minutes of expiry is refreshed before the request */
    mv_graph_set_token(g, "cached-2", mv_now_ms() + 60 * 1000);
    assert_int_equal(mv_graph_list_users(g, NULL, NULL, err, sizeof err), MV_OK);
    assert_int_equal(NTOKEN(s), 1);
    assert_string_equal(HDR_AT(s, 2, "Authorization"), "Bearer tok1");
    const char *tok;
    int64_t exp;
    assert_int_equal(mv_graph_token(g, &tok, &exp, err, sizeof err), MV_OK);
    assert_string_equal(tok, "tok1");
    /* a token unusable in a header is ignored and a new one fetched */
    mv_graph_set_token(g, "bad\r\nX-Injected: 1", mv_now_ms() + 3600 * 1000);
    assert_int_equal(mv_graph_token(g, &tok, &exp, err, sizeof err), MV_OK);
    assert_string_equal(tok, "tok2");
    mv_graph_close(g);
    srv_stop(s);
}

static void h_badclient(srv *s, const tsrv_req *q, tsrv_resp *r)
{
    (void)s;
    if (is_token(q) && s->state == 0)
        json(r, 401,
             "{\"error\":\"invalid_client\",\"error_description\":\"AADSTS7000215: Invalid client "
             "secret provided. Ensure the secret being sent in the request is the client secret "
             "value.\\r\\nTrace ID: 0000\\r\\nCorrelation ID: 1111\\r\\nTimestamp: 2024-01-01 "
             "00:00:00Z\",\"error_codes\":[7000215],\"trace_id\":\"0000\"}");
    else if (is_token(q)) /* a hostile server echoing the secret */
        json(r, 400,
             "{\"error\":\"invalid_request\",\"error_description\":\"AADSTS900144: secret "
             "s=cr&t+x/Secret9 is wrong Trace ID: 0000 Correlation ID: 1111\"}");
    else
        json(r, 200, "{\"value\":[]}");
}

static void test_token_invalid_client(void **state)
{
    (void)state;
    srv *s = srv_start(h_badclient);
    mv_graph *g = client(s, 0, 0, 0);
    char err[MV_ERRLEN];
    assert_int_equal(mv_graph_list_users(g, NULL, NULL, err, sizeof err), MV_EAUTH);
    assert_non_null(strstr(err, "HTTP 401 invalid_client: AADSTS7000215: Invalid client secret"));
    assert_null(strstr(err, "Trace ID"));
    assert_null(strstr(err, SECRET));
    assert_null(strstr(err, SECRET_ESC));
    assert_int_equal(NREQ(s), 1); /* no Graph request without a token */
    s->state = 1;
    const char *tok;
    int64_t exp;
    assert_int_equal(mv_graph_token(g, &tok, &exp, err, sizeof err), MV_EAUTH);
    assert_non_null(strstr(err, "AADSTS900144"));
    assert_null(strstr(err, SECRET));
    assert_null(strstr(err, "Trace ID")); /* current AAD separates it by a space */
    mv_graph_close(g);
    srv_stop(s);
}

/* ------------------------------------------------------------------ tests: users */

typedef struct urec {
    int n;
    char ids[16][64];
    char upn[16][64];
    char mail[16][64];
    int lic[16];
    int stop_at;
} urec;

static int on_user(void *ud, const char *id, const char *upn, const char *mail, int licensed)
{
    urec *u = ud;
    if (u->n < 16) {
        snprintf(u->ids[u->n], 64, "%s", id);
        snprintf(u->upn[u->n], 64, "%s", upn);
        snprintf(u->mail[u->n], 64, "%s", mail);
        u->lic[u->n] = licensed;
    }
    u->n++;
    return u->stop_at && u->n >= u->stop_at;
}

static void h_users(srv *s, const tsrv_req *q, tsrv_resp *r)
{
    if (is_token(q)) {
        token_ok(s, r);
    } else if (!strcmp(q->target,
                       "/v1.0/users?$select=id,userPrincipalName,mail,assignedLicenses&$top=999")) {
        snprintf(s->scratch, s->scratch_cap,
                 "{\"@odata.context\":\"x\",\"value\":["
                 "{\"id\":\"u1\",\"userPrincipalName\":\"a@x.com\",\"mail\":\"a@x.com\","
                 "\"assignedLicenses\":[{\"disabledPlans\":[],\"skuId\":\"s\"}]},"
                 "{\"id\":\"u2\",\"userPrincipalName\":\"b@x.com\",\"mail\":null,"
                 "\"assignedLicenses\":[]}],"
                 "\"@odata.nextLink\":\"%s/v1.0/users?$skiptoken=p2\"}",
                 s->state == 1 ? "http://evil.example:1" : s->base);
        json(r, 200, s->scratch);
    } else if (!strcmp(q->target, "/v1.0/users?$skiptoken=p2")) {
        snprintf(
            s->scratch, s->scratch_cap,
            "{\"value\":[{\"id\":\"u3\",\"userPrincipalName\":\"c@x.com\",\"mail\":\"c@x.com\","
            "\"assignedLicenses\":[{\"skuId\":\"s\"}]}],"
            "\"@odata.nextLink\":\"%s/v1.0/users?$skiptoken=p3\"}",
            s->base);
        json(r, 200, s->scratch);
    } else if (!strcmp(q->target, "/v1.0/users?$skiptoken=p3")) {
        json(r, 200,
             s->state == 2 ? "{\"value\":[{\"id\":\"u4\",\"userPrincipalName\":\"d\",\"mail\":null,"
                             "\"assignedLicenses\":{}}]}"
                           : "{\"value\":[{\"id\":\"u4\",\"userPrincipalName\":\"d@x.com\","
                             "\"mail\":null,\"assignedLicenses\":[]}]}");
    } else {
        json(r, 404, "{\"error\":{\"code\":\"NotFound\",\"message\":\"no route\"}}");
    }
}

static void test_users_paging(void **state)
{
    (void)state;
    srv *s = srv_start(h_users);
    mv_graph *g = client(s, 0, 0, 0);
    char err[MV_ERRLEN];
    urec u = {0};
    assert_int_equal(mv_graph_list_users(g, on_user, &u, err, sizeof err), MV_OK);
    assert_int_equal(u.n, 4);
    assert_string_equal(u.ids[0], "u1");
    assert_int_equal(u.lic[0], 1);
    assert_string_equal(u.ids[1], "u2");
    assert_string_equal(u.mail[1], "");
    assert_int_equal(u.lic[1], 0);
    assert_string_equal(u.ids[2], "u3");
    assert_int_equal(u.lic[2], 1);
    assert_string_equal(u.upn[3], "d@x.com");
    assert_int_equal(u.lic[3], 0);
    assert_int_equal(NREQ(s), 4); /* token + 3 pages */
    /* every request has its own client-request-id */
    const char *a = HDR_AT(s, 1, "client-request-id"), *b = HDR_AT(s, 2, "client-request-id"),
               *c = HDR_AT(s, 3, "client-request-id");
    assert_string_not_equal(a, b);
    assert_string_not_equal(b, c);
    assert_int_equal(NACCEPT(s), 1);

    /* callback stop */
    urec u2 = {.stop_at = 1};
    assert_int_equal(mv_graph_list_users(g, on_user, &u2, err, sizeof err), MV_ECANCEL);
    assert_int_equal(u2.n, 1);

    /* a mistyped field is named */
    s->state = 2;
    urec u3 = {0};
    assert_int_equal(mv_graph_list_users(g, on_user, &u3, err, sizeof err), MV_EPROTO);
    assert_non_null(strstr(err, "value[0].assignedLicenses"));
    mv_graph_close(g);
    srv_stop(s);
}

static void test_foreign_nextlink(void **state)
{
    (void)state;
    srv *s = srv_start(h_users);
    s->state = 1;
    mv_graph *g = client(s, 0, 0, 0);
    char err[MV_ERRLEN];
    urec u = {0};
    assert_int_equal(mv_graph_list_users(g, on_user, &u, err, sizeof err), MV_EPROTO);
    assert_non_null(strstr(err, "points outside"));
    assert_int_equal(NREQ(s), 2); /* token + first page, nothing sent elsewhere */
    /* a delta link to another host is refused before any request */
    char *next = NULL;
    int complete = 0;
    assert_int_equal(mv_graph_delta_page(g, "u", "f", "https://graph.evil.example/v1.0/x", NULL,
                                         NULL, &next, &complete, err, sizeof err),
                     MV_EPROTO);
    assert_null(next);
    assert_int_equal(NREQ(s), 2);

    /* origin checks */
    const char *base = "https://graph.microsoft.com/v1.0";
    assert_true(mv_graph__same_origin(base, "https://graph.microsoft.com/v1.0/users?$skip=1"));
    assert_true(mv_graph__same_origin(base, "HTTPS://Graph.Microsoft.com:443/beta/x"));
    assert_false(mv_graph__same_origin(base, "http://graph.microsoft.com/v1.0/users"));
    assert_false(mv_graph__same_origin(base, "https://graph.microsoft.com.evil.io/v1.0"));
    assert_false(mv_graph__same_origin(base, "https://graph.microsoft.com:8443/v1.0"));
    assert_false(mv_graph__same_origin(base, "https://graph.microsoft.com@evil.io/v1.0"));
    assert_false(mv_graph__same_origin(base, "https://u:p@graph.microsoft.com/v1.0"));
    assert_false(mv_graph__same_origin(base, "https://graph.microsoft.com/v1.0\r\nX: y"));
    assert_false(mv_graph__same_origin(base, "/v1.0/users"));
    assert_false(mv_graph__same_origin(base, "ftp://graph.microsoft.com/v1.0"));
    assert_false(mv_graph__same_origin(base, ""));
    mv_graph_close(g);
    srv_stop(s);
}

/* ------------------------------------------------------------------ tests: folders */

typedef struct frec {
    int n;
    char ids[16][64];
    char paths[16][128];
    char wk[16][32];
    uint64_t total[16];
} frec;

static int on_folder(void *ud, const char *id, const char *path, const char *wk, uint64_t total)
{
    frec *f = ud;
    if (f->n < 16) {
        snprintf(f->ids[f->n], 64, "%s", id);
        snprintf(f->paths[f->n], 128, "%s", path);
        snprintf(f->wk[f->n], 32, "%s", wk);
        f->total[f->n] = total;
    }
    f->n++;
    return 0;
}

#define FOLDER(id, name, kids, total)                                                              \
    "{\"id\":\"" id "\",\"displayName\":\"" name "\",\"parentFolderId\":\"p\","                    \
    "\"childFolderCount\":" #kids ",\"unreadItemCount\":0,\"totalItemCount\":" #total              \
    ",\"isHidden\":false}"

static void h_folders(srv *s, const tsrv_req *q, tsrv_resp *r)
{
    const char *u = "/v1.0/users/a%40x.com/mailFolders";
    char t[512];
    if (is_token(q)) {
        token_ok(s, r);
        return;
    }
    if (!strcmp(q->target,
                "/v1.0/users/a%40x.com/mailFolders?includeHiddenFolders=true&$top=100")) {
        snprintf(s->scratch, s->scratch_cap,
                 "{\"value\":[" FOLDER("inbox/id+=", "Inbox", 2, 10) "," FOLDER(
                     "f2", "a/b%%c", 0, 3) "," FOLDER("f3", "Archive", 1,
                                                      0) "],\"@odata.nextLink\":\"%s/v1.0/users/"
                                                         "a%%40x.com/mailFolders?$skip=3\"}",
                 s->base);
        json(r, 200, s->scratch);
        return;
    }
    if (!strcmp(q->target, "/v1.0/users/a%40x.com/mailFolders?$skip=3")) {
        json(r, 200,
             "{\"value\":[{\"id\":\"f4\",\"displayName\":\"Sent Items\",\"childFolderCount\":0,"
             "\"totalItemCount\":7,\"wellKnownName\":\"sentitems\"}]}");
        return;
    }
    snprintf(t, sizeof t, "%s/inbox%%2Fid%%2B%%3D/childFolders?includeHiddenFolders=true&$top=100",
             u);
    if (!strcmp(q->target, t)) {
        snprintf(
            s->scratch, s->scratch_cap,
            "{\"value\":[" FOLDER(
                "c1", "Sub1", 0,
                1) "],\"@odata.nextLink\":\"%s/v1.0/users/a%%40x.com/mailFolders/x/childFolders?"
                   "$skip=1\"}",
            s->base);
        json(r, 200, s->scratch);
        return;
    }
    if (!strcmp(q->target, "/v1.0/users/a%40x.com/mailFolders/x/childFolders?$skip=1")) {
        json(r, 200, "{\"value\":[" FOLDER("c2", "Sub2", 1, 2) "]}");
        return;
    }
    snprintf(t, sizeof t, "%s/c2/childFolders?includeHiddenFolders=true&$top=100", u);
    if (!strcmp(q->target, t)) {
        json(r, 200, "{\"value\":[" FOLDER("c3", "Deep", 0, 4) "]}");
        return;
    }
    snprintf(t, sizeof t, "%s/f3/childFolders?includeHiddenFolders=true&$top=100", u);
    if (!strcmp(q->target, t)) {
        /* state 1: a cycle (the folder is its own child) must hit the depth bound */
        if (s->state == 1)
            json(r, 200, "{\"value\":[" FOLDER("f3", "Loop", 1, 0) "]}");
        else
            json(r, 200, "{\"value\":[" FOLDER("c4", "2023", 0, 5) "]}");
        return;
    }
    json(r, 404, "{\"error\":{\"code\":\"ErrorItemNotFound\",\"message\":\"no route\"}}");
}

static void test_folders(void **state)
{
    (void)state;
    srv *s = srv_start(h_folders);
    mv_graph *g = client(s, 0, 0, 0);
    char err[MV_ERRLEN];
    frec f = {0};
    assert_int_equal(mv_graph_list_folders(g, "a@x.com", on_folder, &f, err, sizeof err), MV_OK);
    assert_int_equal(f.n, 8);
    assert_string_equal(f.paths[0], "Inbox");
    assert_string_equal(f.ids[0], "inbox/id+=");
    assert_int_equal(f.total[0], 10);
    assert_string_equal(f.paths[1], "a%2Fb%25c");
    assert_string_equal(f.paths[2], "Archive");
    assert_string_equal(f.paths[3], "Inbox/Sub1");
    assert_string_equal(f.paths[4], "Inbox/Sub2");
    assert_string_equal(f.paths[5], "Inbox/Sub2/Deep");
    assert_int_equal(f.total[5], 4);
    assert_string_equal(f.paths[6], "Archive/2023");
    assert_string_equal(f.paths[7], "Sent Items");
    assert_string_equal(f.wk[7], "sentitems");
    assert_string_equal(f.wk[0], "");
    assert_non_null(strstr(HDR_AT(s, 1, "Prefer"), "IdType=\"ImmutableId\""));

    /* a server-made cycle stops at the depth bound */
    s->state = 1;
    frec f2 = {0};
    assert_int_equal(mv_graph_list_folders(g, "a@x.com", on_folder, &f2, err, sizeof err),
                     MV_EPROTO);
    assert_non_null(strstr(err, "deeper than 64"));
    mv_graph_close(g);
    srv_stop(s);
}

/* ------------------------------------------------------------------ tests: delta */

typedef struct drec {
    int n;
    char ids[16][64];
    int removed[16];
    char reason[16][16];
} drec;

static int on_delta(void *ud, const char *id, int removed, const char *reason)
{
    drec *d = ud;
    if (d->n < 16) {
        snprintf(d->ids[d->n], 64, "%s", id);
        d->removed[d->n] = removed;
        snprintf(d->reason[d->n], 16, "%s", reason);
    }
    d->n++;
    return 0;
}

static void h_delta(srv *s, const tsrv_req *q, tsrv_resp *r)
{
    if (is_token(q)) {
        token_ok(s, r);
    } else if (!strcmp(q->target,
                       "/v1.0/users/a%40x.com/mailFolders/AAMk%3D%3D/messages/delta?$select=id")) {
        if (s->state == 1) {
            json(r, 410,
                 "{\"error\":{\"code\":\"SyncStateNotFound\",\"message\":\"The sync state "
                 "generation is not found.\"}}");
        } else if (s->state == 2) {
            json(r, 200, "{\"value\":[{\"id\":\"m1\"}]}");
        } else {
            snprintf(s->scratch, s->scratch_cap,
                     "{\"@odata.context\":\"c\",\"value\":[{\"@odata.type\":\"#microsoft.graph."
                     "message\",\"@odata.etag\":\"W/1\",\"id\":\"m1\"},{\"id\":\"m2\"}],"
                     "\"@odata.nextLink\":\"%s/v1.0/users/a%%40x.com/mailFolders/AAMk%%3D%%3D/"
                     "messages/delta?$skiptoken=s2\"}",
                     s->base);
            json(r, 200, s->scratch);
        }
    } else if (strstr(q->target, "$skiptoken=s2")) {
        snprintf(s->scratch, s->scratch_cap,
                 "{\"value\":[{\"id\":\"m3\",\"@removed\":{\"reason\":\"deleted\"}},"
                 "{\"id\":\"m4\",\"@removed\":{\"reason\":\"changed\"}},{\"id\":\"m5\"}],"
                 "\"@odata.deltaLink\":\"%s/v1.0/users/a%%40x.com/mailFolders/AAMk%%3D%%3D/"
                 "messages/delta?$deltatoken=d1\"}",
                 s->base);
        json(r, 200, s->scratch);
    } else if (strstr(q->target, "$deltatoken=d1")) {
        snprintf(s->scratch, s->scratch_cap,
                 "{\"value\":[],\"@odata.deltaLink\":\"%s/v1.0/users/a%%40x.com/mailFolders/"
                 "AAMk%%3D%%3D/messages/delta?$deltatoken=d2\"}",
                 s->base);
        json(r, 200, s->scratch);
    } else {
        json(r, 404, "{\"error\":{\"code\":\"ErrorItemNotFound\",\"message\":\"no route\"}}");
    }
}

static void test_delta(void **state)
{
    (void)state;
    srv *s = srv_start(h_delta);
    mv_graph *g = client(s, 0, 0, 0);
    char err[MV_ERRLEN];
    drec d = {0};
    char *link = NULL;
    int complete = -1;
    assert_int_equal(mv_graph_delta_page(g, "a@x.com", "AAMk==", NULL, on_delta, &d, &link,
                                         &complete, err, sizeof err),
                     MV_OK);
    assert_int_equal(complete, 0);
    assert_non_null(link);
    assert_non_null(strstr(link, "$skiptoken=s2"));
    assert_int_equal(d.n, 2);
    assert_string_equal(d.ids[0], "m1");
    assert_int_equal(d.removed[0], 0);
    assert_string_equal(HDR_AT(s, 1, "Prefer"), "IdType=\"ImmutableId\", odata.maxpagesize=2");

    char *link2 = NULL;
    assert_int_equal(mv_graph_delta_page(g, "a@x.com", "AAMk==", link, on_delta, &d, &link2,
                                         &complete, err, sizeof err),
                     MV_OK);
    free(link);
    assert_int_equal(complete, 1);
    assert_non_null(strstr(link2, "$deltatoken=d1"));
    assert_int_equal(d.n, 5);
    assert_string_equal(d.ids[2], "m3");
    assert_int_equal(d.removed[2], 1);
    assert_string_equal(d.reason[2], "deleted");
    assert_int_equal(d.removed[3], 1);
    assert_string_equal(d.reason[3], "changed");
    assert_int_equal(d.removed[4], 0);
    assert_string_equal(HDR_AT(s, 2, "Prefer"), "IdType=\"ImmutableId\", odata.maxpagesize=2");

    /* the next round from the saved deltaLink */
    char *link3 = NULL;
    assert_int_equal(mv_graph_delta_page(g, "a@x.com", "AAMk==", link2, on_delta, &d, &link3,
                                         &complete, err, sizeof err),
                     MV_OK);
    free(link2);
    assert_int_equal(complete, 1);
    assert_non_null(strstr(link3, "$deltatoken=d2"));
    free(link3);
    assert_int_equal(d.n, 5);

    /* 410: the caller restarts */
    s->state = 1;
    link = NULL;
    assert_int_equal(mv_graph_delta_page(g, "a@x.com", "AAMk==", NULL, on_delta, &d, &link,
                                         &complete, err, sizeof err),
                     MV_ENOTFOUND);
    assert_null(link);
    assert_non_null(strstr(err, "sync state expired (SyncStateNotFound): The sync state"));

    /* a page without a link is a protocol error, and no entry reaches the caller */
    s->state = 2;
    drec d2 = {0};
    assert_int_equal(mv_graph_delta_page(g, "a@x.com", "AAMk==", NULL, on_delta, &d2, &link,
                                         &complete, err, sizeof err),
                     MV_EPROTO);
    assert_non_null(strstr(err, "neither @odata.nextLink nor @odata.deltaLink"));
    assert_int_equal(d2.n, 0);
    assert_null(link);
    mv_graph_close(g);
    srv_stop(s);
}

/* ------------------------------------------------------------------ tests: status mapping */

static void h_status(srv *s, const tsrv_req *q, tsrv_resp *r)
{
    if (is_token(q)) {
        token_ok(s, r);
        return;
    }
    json(r, s->state,
         "{\"error\":{\"code\":\"TooManyRequests\",\"message\":\"Application is over its "
         "MailboxConcurrency limit.\",\"innerError\":{\"date\":\"x\"}}}");
    if (s->state == 429)
        snprintf(r->headers, sizeof r->headers, "Retry-After: 7\r\n");
    else if (s->state == 503)
        snprintf(r->headers, sizeof r->headers, "Retry-After: 3\r\n");
    else if (s->state == 599)
        r->status = 429, snprintf(r->headers, sizeof r->headers, "Retry-After: 99999\r\n");
    else if (s->state == 302)
        snprintf(r->headers, sizeof r->headers, "Location: https://evil.example/\r\n");
    else if (s->state == 598)
        r->status = 500, r->body = "<html>oops</html>";
}

static void test_status_mapping(void **state)
{
    (void)state;
    srv *s = srv_start(h_status);
    mv_graph *g = client(s, 0, 0, 0);
    char err[MV_ERRLEN];
    struct {
        int st;
        mv_err e;
        int64_t retry;
    } cases[] = {
        {429, MV_EBUSY, 7000}, {503, MV_EBUSY, 3000}, {504, MV_EBUSY, 0},  {599, MV_EBUSY, 3600000},
        {500, MV_ESERVER, 0},  {502, MV_ESERVER, 0},  {403, MV_EAUTH, 0},  {404, MV_ENOTFOUND, 0},
        {400, MV_EINVAL, 0},   {302, MV_EPROTO, 0},   {409, MV_EPROTO, 0}, {598, MV_ESERVER, 0},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        s->state = cases[i].st;
        assert_int_equal(mv_graph_list_users(g, NULL, NULL, err, sizeof err), cases[i].e);
        assert_int_equal(mv_graph_retry_after_ms(g), cases[i].retry);
        if (cases[i].st == 598) {
            assert_string_equal(err, "HTTP 500");
        } else if (cases[i].st != 599) {
            char want[64];
            snprintf(want, sizeof want, "HTTP %d TooManyRequests: Application is", cases[i].st);
            assert_non_null(strstr(err, want));
        }
    }
    /* a success clears the throttling delay */
    s->state = 200;
    assert_int_equal(mv_graph_list_users(g, NULL, NULL, err, sizeof err), MV_EPROTO);
    assert_int_equal(mv_graph_retry_after_ms(g), 0);
    mv_graph_close(g);
    srv_stop(s);
}

static void h_401(srv *s, const tsrv_req *q, tsrv_resp *r)
{
    if (is_token(q)) {
        token_ok(s, r);
    } else if (s->state == 0 && !strcmp(TSRV_HEADER(q, "Authorization"), "Bearer tok2")) {
        json(r, 200, "{\"value\":[]}");
    } else {
        json(r, 401,
             "{\"error\":{\"code\":\"InvalidAuthenticationToken\",\"message\":\"Access token has "
             "expired or is not yet valid.\"}}");
    }
}

static void test_401_refresh(void **state)
{
    (void)state;
    srv *s = srv_start(h_401);
    mv_graph *g = client(s, 0, 0, 0);
    char err[MV_ERRLEN];
    assert_int_equal(mv_graph_list_users(g, NULL, NULL, err, sizeof err), MV_OK);
    assert_int_equal(NTOKEN(s), 2);
    assert_int_equal(NREQ(s), 4); /* token, 401, token, 200 */
    /* always 401: one refresh, then MV_EAUTH */
    s->state = 1;
    assert_int_equal(mv_graph_list_users(g, NULL, NULL, err, sizeof err), MV_EAUTH);
    assert_non_null(strstr(err, "HTTP 401 InvalidAuthenticationToken"));
    assert_int_equal(NTOKEN(s), 3);
    assert_int_equal(NREQ(s), 7);
    mv_graph_close(g);
    srv_stop(s);
}

/* ------------------------------------------------------------------ tests: bounds, transport */

static void h_big(srv *s, const tsrv_req *q, tsrv_resp *r)
{
    if (is_token(q)) {
        token_ok(s, r);
        return;
    }
    size_t n = 0;
    n += (size_t)snprintf(s->scratch, s->scratch_cap, "{\"value\":[");
    for (int i = 0; i < 200; i++)
        n += (size_t)snprintf(s->scratch + n, s->scratch_cap - n,
                              "%s{\"id\":\"user-%04d\",\"userPrincipalName\":null,\"mail\":null,"
                              "\"assignedLicenses\":[]}",
                              i ? "," : "", i);
    n += (size_t)snprintf(s->scratch + n, s->scratch_cap - n, "]}");
    r->status = 200;
    r->body = s->scratch;
    r->len = n;
    if (s->state) r->mode = TSRV_CHUNKED;
}

static void test_json_too_big(void **state)
{
    (void)state;
    srv *s = srv_start(h_big);
    mv_graph *g = client(s, 1024, 0, 0);
    char err[MV_ERRLEN];
    urec u = {0};
    assert_int_equal(mv_graph_list_users(g, on_user, &u, err, sizeof err), MV_ETOOBIG);
    assert_non_null(strstr(err, "max_json (1024 bytes)"));
    assert_int_equal(u.n, 0);
    s->state = 1; /* chunked: no Content-Length to look at */
    assert_int_equal(mv_graph_list_users(g, on_user, &u, err, sizeof err), MV_ETOOBIG);
    mv_graph_close(g);
    /* the same page fits a larger bound */
    g = client(s, 1 << 20, 0, 0);
    assert_int_equal(mv_graph_list_users(g, on_user, &u, err, sizeof err), MV_OK);
    assert_int_equal(u.n, 200);
    mv_graph_close(g);
    srv_stop(s);
}

#define MIME_LEN (200u * 1024)

static void h_mime(srv *s, const tsrv_req *q, tsrv_resp *r)
{
    if (is_token(q)) {
        token_ok(s, r);
        return;
    }
    if (strcmp(q->target, "/v1.0/users/a%40x.com/messages/AAMk%2Fm%3D%3D/$value")) {
        json(r, 404,
             "{\"error\":{\"code\":\"ErrorItemNotFound\",\"message\":\"The specified object was "
             "not found in the store.\"}}");
        return;
    }
    for (size_t i = 0; i < MIME_LEN; i++)
        s->scratch[i] = (char)('A' + (i * 7 + i / 1000) % 26);
    r->status = 200;
    r->ctype = "text/plain";
    r->body = s->scratch;
    r->len = MIME_LEN;
    if (s->state == 1) r->mode = TSRV_CHUNKED;
    if (s->state == 2) r->mode = TSRV_TRUNCATE, r->n = 3000;
    if (s->state == 3) r->mode = TSRV_HANG;
}

typedef struct mrec {
    int nbegin, npieces;
    int64_t size;
    char *buf;
    size_t len;
    int cancel_after;
} mrec;

static int m_begin(void *ud, int64_t size)
{
    mrec *m = ud;
    m->nbegin++;
    m->size = size;
    return 0;
}

static int m_data(void *ud, const void *data, size_t len)
{
    mrec *m = ud;
    m->npieces++;
    m->buf = realloc(m->buf, m->len + len);
    memcpy(m->buf + m->len, data, len);
    m->len += len;
    return m->cancel_after && m->npieces >= m->cancel_after;
}

static const mv_graph_mime_cb MCB = {m_begin, m_data};

static void test_mime_stream(void **state)
{
    (void)state;
    srv *s = srv_start(h_mime);
    mv_graph *g = client(s, 0, 0, 0);
    char err[MV_ERRLEN];
    mrec m = {0};
    assert_int_equal(mv_graph_get_mime(g, "a@x.com", "AAMk/m==", &MCB, &m, err, sizeof err), MV_OK);
    assert_int_equal(m.nbegin, 1);
    assert_int_equal(m.size, MIME_LEN);
    assert_int_equal(m.len, MIME_LEN);
    assert_true(m.npieces > 1);
    assert_memory_equal(m.buf, s->scratch, MIME_LEN);
    assert_non_null(strstr(HDR_AT(s, 1, "Prefer"), "ImmutableId"));
    free(m.buf);

    /* chunked: size unknown */
    s->state = 1;
    memset(&m, 0, sizeof m);
    assert_int_equal(mv_graph_get_mime(g, "a@x.com", "AAMk/m==", &MCB, &m, err, sizeof err), MV_OK);
    assert_int_equal(m.nbegin, 1);
    assert_int_equal(m.size, -1);
    assert_int_equal(m.len, MIME_LEN);
    assert_memory_equal(m.buf, s->scratch, MIME_LEN);
    free(m.buf);

    /* callback cancel */
    s->state = 0;
    memset(&m, 0, sizeof m);
    m.cancel_after = 1;
    assert_int_equal(mv_graph_get_mime(g, "a@x.com", "AAMk/m==", &MCB, &m, err, sizeof err),
                     MV_ECANCEL);
    free(m.buf);

    /* 404: the error body is parsed, nothing reaches the callbacks */
    memset(&m, 0, sizeof m);
    assert_int_equal(mv_graph_get_mime(g, "a@x.com", "other", &MCB, &m, err, sizeof err),
                     MV_ENOTFOUND);
    assert_non_null(strstr(err, "HTTP 404 ErrorItemNotFound: The specified object"));
    assert_int_equal(m.nbegin, 0);
    assert_int_equal(m.len, 0);

    /* connection closed mid-body */
    s->state = 2;
    memset(&m, 0, sizeof m);
    assert_int_equal(mv_graph_get_mime(g, "a@x.com", "AAMk/m==", &MCB, &m, err, sizeof err),
                     MV_ENET);
    assert_int_equal(m.len, 3000);
    free(m.buf);
    mv_graph_close(g);
    srv_stop(s);
}

static void test_mime_too_big(void **state)
{
    (void)state;
    srv *s = srv_start(h_mime);
    mv_graph *g = client(s, 0, 1000, 0);
    char err[MV_ERRLEN];
    mrec m = {0};
    /* Content-Length above the bound: refused before begin */
    assert_int_equal(mv_graph_get_mime(g, "a@x.com", "AAMk/m==", &MCB, &m, err, sizeof err),
                     MV_ETOOBIG);
    assert_non_null(strstr(err, "max_message (1000 bytes)"));
    assert_int_equal(m.nbegin, 0);
    /* chunked: stopped once 1000 bytes were passed on */
    s->state = 1;
    assert_int_equal(mv_graph_get_mime(g, "a@x.com", "AAMk/m==", &MCB, &m, err, sizeof err),
                     MV_ETOOBIG);
    assert_int_equal(m.nbegin, 1);
    assert_true(m.len <= 1000);
    free(m.buf);
    mv_graph_close(g);
    srv_stop(s);
}

static void test_timeout(void **state)
{
    (void)state;
    srv *s = srv_start(h_mime);
    s->state = 3; /* the server reads the request and never answers */
    mv_graph *g = client(s, 0, 0, 300);
    char err[MV_ERRLEN];
    mrec m = {0};
    int64_t t0 = mv_mono_ms();
    assert_int_equal(mv_graph_get_mime(g, "a@x.com", "AAMk/m==", &MCB, &m, err, sizeof err),
                     MV_ETIMEDOUT);
    assert_true(mv_mono_ms() - t0 < 5000);
    assert_int_equal(m.nbegin, 0);
    mv_graph_close(g);
    srv_stop(s);
}

static void test_connect_refused(void **state)
{
    (void)state;
    srv *s = srv_start(h_token);
    int port = s->port;
    srv_stop(s); /* nothing listens on the port any more */
    char login[64], graph[64];
    snprintf(login, sizeof login, "http://127.0.0.1:%d/login", port);
    snprintf(graph, sizeof graph, "http://127.0.0.1:%d/v1.0", port);
    mv_graph_opts o;
    mv_graph_opts_default(&o);
    o.login_base = login;
    o.graph_base = graph;
    o.tenant_id = "t";
    o.client_id = "c";
    o.client_secret = SECRET;
    mv_graph *g = NULL;
    char err[MV_ERRLEN];
    assert_int_equal(mv_graph_open(&o, &g, err, sizeof err), MV_OK);
    assert_int_equal(mv_graph_list_users(g, NULL, NULL, err, sizeof err), MV_ENET);
    assert_null(strstr(err, SECRET));
    mv_graph_close(g);
}

/* ------------------------------------------------------------------ tests: options, parsers */

static void test_open_validation(void **state)
{
    (void)state;
    mv_graph_opts o;
    mv_graph *g = NULL;
    char err[MV_ERRLEN];
    mv_graph_opts_default(&o);
    assert_string_equal(o.graph_base, "https://graph.microsoft.com/v1.0");
    assert_int_equal(o.verify, 1);
    assert_int_equal(mv_graph_open(&o, &g, err, sizeof err), MV_EINVAL); /* no tenant */
    o.tenant_id = "t";
    o.client_id = "c";
    o.graph_base = "ftp://graph.microsoft.com";
    assert_int_equal(mv_graph_open(&o, &g, err, sizeof err), MV_EINVAL);
    o.graph_base = "https://user:pw@graph.microsoft.com/v1.0";
    assert_int_equal(mv_graph_open(&o, &g, err, sizeof err), MV_EINVAL);
    o.graph_base = "https://graph.microsoft.com/v1.0";
    o.page_size = 0;
    assert_int_equal(mv_graph_open(&o, &g, err, sizeof err), MV_EINVAL);
    o.page_size = 100;
    assert_int_equal(mv_graph_open(&o, &g, err, sizeof err), MV_OK);
    /* no secret and no installed token: a clear MV_EAUTH without any request */
    const char *tok;
    int64_t exp;
    assert_int_equal(mv_graph_token(g, &tok, &exp, err, sizeof err), MV_EAUTH);
    assert_non_null(strstr(err, "no client secret"));
    char *link = NULL;
    int complete = 0;
    assert_int_equal(
        mv_graph_delta_page(g, "", "f", NULL, NULL, NULL, &link, &complete, err, sizeof err),
        MV_EINVAL);
    assert_null(link);
    mv_graph_close(g);
    mv_graph_close(NULL);
}

static int count_delta(void *ud, const char *id, int removed, const char *reason)
{
    (void)id;
    (void)removed;
    (void)reason;
    (*(int *)ud)++;
    return 0;
}

static int count_id(void *ud, const char *id)
{
    (void)id;
    (*(int *)ud)++;
    return 0;
}

typedef struct batch_seen {
    int n;
    long status[4];
    char data[4][32];
    int64_t retry[4];
} batch_seen;

static int on_batch(void *ud, const mv_graph__batch_res *res)
{
    batch_seen *b = ud;
    b->n++;
    b->status[res->index] = res->status;
    b->retry[res->index] = res->retry_after_ms;
    if (res->data)
        snprintf(b->data[res->index], 32, "%.*s", (int)res->len, res->data);
    else
        snprintf(b->data[res->index], 32, "%s", res->error);
    return 0;
}

/* $batch answers: responses in any order, base64 bodies decoded, errors summarised, inner
 * Retry-After read; ids that were not asked for refuse the whole answer. */
static void test_parse_batch(void **state)
{
    (void)state;
    char err[MV_ERRLEN];
    batch_seen b;
    memset(&b, 0, sizeof b);
    static const char ok[] =
        "{\"responses\":[{\"id\":\"3\",\"status\":429,\"headers\":{\"Retry-After\":\"7\"},"
        "\"body\":{\"error\":{\"code\":\"ApplicationThrottled\",\"message\":\"slow down\"}}},"
        "{\"id\":\"1\",\"status\":200,\"headers\":{\"Content-Type\":\"text/plain\"},"
        "\"body\":\"U3ViamVjdDogaGkNCg0KeA==\"},"
        "{\"id\":\"2\",\"status\":200,\"body\":{\"not\":\"base64\"}},"
        "{\"id\":\"4\",\"status\":404,\"body\":{\"error\":{\"code\":\"ErrorItemNotFound\","
        "\"message\":\"gone\"}}}]}";
    assert_int_equal(mv_graph__parse_batch(ok, strlen(ok), 4, 1000, on_batch, &b, err, sizeof err),
                     MV_OK);
    assert_int_equal(b.n, 4);
    assert_int_equal(b.status[0], 200);
    assert_string_equal(b.data[0], "Subject: hi\r\n\r\nx");
    assert_int_equal(b.status[1], -1); /* unusable body: fetched alone by the caller */
    assert_int_equal(b.status[2], 429);
    assert_int_equal(b.retry[2], 7000);
    assert_non_null(strstr(b.data[2], "ApplicationThrottled"));
    assert_int_equal(b.status[3], 404);
    /* a body over the per-message bound is refused for that item only */
    memset(&b, 0, sizeof b);
    assert_int_equal(mv_graph__parse_batch(ok, strlen(ok), 4, 5, on_batch, &b, err, sizeof err),
                     MV_OK);
    assert_int_equal(b.status[0], -1);
    static const char *const bad[] = {
        "{\"responses\":{}}",
        "{\"responses\":[{\"id\":\"5\",\"status\":200,\"body\":\"\"}]}",
        "{\"responses\":[{\"id\":\"01\",\"status\":200,\"body\":\"\"}]}",
        "{\"responses\":[{\"id\":\"1\",\"status\":200},{\"id\":\"1\",\"status\":200}]}",
        "{\"responses\":[{\"id\":\"1\",\"status\":\"200\"}]}",
        "{\"responses\":[{\"id\":\"1\",\"status\":9999}]}",
        "{\"responses\":[7]}",
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        memset(&b, 0, sizeof b);
        assert_int_equal(
            mv_graph__parse_batch(bad[i], strlen(bad[i]), 4, 1000, on_batch, &b, err, sizeof err),
            MV_EPROTO);
    }
}

static void test_parsers(void **state)
{
    (void)state;
    char err[MV_ERRLEN];
    char *link = NULL;
    int complete = 0, n = 0;
#define DELTA(doc)                                                                                 \
    mv_graph__parse_delta(doc, strlen(doc), count_delta, &n, &link, &complete, err, sizeof err)
    assert_int_equal(DELTA("not json"), MV_EPROTO);
    assert_non_null(strstr(err, "invalid JSON"));
    assert_int_equal(DELTA("[1]"), MV_EPROTO);
    assert_int_equal(DELTA("{\"value\":{}}"), MV_EPROTO);
    assert_non_null(strstr(err, "value missing or not an array"));
    assert_int_equal(DELTA("{\"value\":[{\"id\":1}],\"@odata.deltaLink\":\"x\"}"), MV_EPROTO);
    assert_non_null(strstr(err, "value[0].id is not a string"));
    assert_int_equal(DELTA("{\"value\":[{}],\"@odata.deltaLink\":\"x\"}"), MV_EPROTO);
    assert_non_null(strstr(err, "value[0].id missing"));
    assert_int_equal(
        DELTA("{\"value\":[{\"id\":\"a\",\"@removed\":true}],\"@odata.deltaLink\":\"x\"}"),
        MV_EPROTO);
    assert_non_null(strstr(err, "@removed"));
    assert_int_equal(DELTA("{\"value\":[],\"@odata.deltaLink\":7}"), MV_EPROTO);
    assert_int_equal(DELTA("{\"value\":[],\"@odata.deltaLink\":\"a\",\"@odata.nextLink\":\"b\"}"),
                     MV_EPROTO);
    assert_int_equal(DELTA("{\"value\":[],\"value\":[],\"@odata.deltaLink\":\"a\"}"), MV_EPROTO);
    assert_int_equal(DELTA("{\"value\":[{\"id\":\"a\\u0000b\"}],\"@odata.deltaLink\":\"a\"}"),
                     MV_EPROTO);
    n = 0;
    assert_int_equal(
        DELTA("{\"value\":[{\"id\":\"a\",\"@removed\":{}}],\"@odata.deltaLink\":\"d\"}"), MV_OK);
    assert_int_equal(n, 1);
    assert_int_equal(complete, 1);
    assert_string_equal(link, "d");
    free(link);
#undef DELTA
    /* a plain message listing: value[].id and an optional nextLink */
    n = 0;
    link = NULL;
    assert_int_equal(mv_graph__parse_idlist("{\"value\":[{\"id\":\"a\"},{\"id\":\"b\"}]}", 33,
                                            count_id, &n, &link, err, sizeof err),
                     MV_OK);
    assert_int_equal(n, 2);
    assert_null(link);
    static const char paged[] = "{\"value\":[{\"id\":\"a\"}],\"@odata.nextLink\":\"n\"}";
    assert_int_equal(
        mv_graph__parse_idlist(paged, strlen(paged), count_id, &n, &link, err, sizeof err), MV_OK);
    assert_string_equal(link, "n");
    free(link);
    link = NULL;
    static const char bad[] = "{\"value\":[{\"id\":\"\"}],\"@odata.nextLink\":\"n\"}";
    assert_int_equal(mv_graph__parse_idlist(bad, strlen(bad), count_id, &n, &link, err, sizeof err),
                     MV_EPROTO);
    assert_non_null(strstr(err, "value[0].id is empty"));
    assert_null(link); /* nothing leaks out of a refused page */
    char *next = NULL;
    const char *f = "{\"value\":[{\"id\":\"x\",\"displayName\":\"n\",\"childFolderCount\":-1,"
                    "\"totalItemCount\":1}]}";
    assert_int_equal(mv_graph__parse_folders(f, strlen(f), NULL, NULL, &next, err, sizeof err),
                     MV_EPROTO);
    assert_non_null(strstr(err, "value[0].childFolderCount"));
    f = "{\"value\":[{\"id\":\"x\",\"displayName\":\"n\",\"childFolderCount\":0}]}";
    assert_int_equal(mv_graph__parse_folders(f, strlen(f), NULL, NULL, &next, err, sizeof err),
                     MV_EPROTO);
    assert_non_null(strstr(err, "value[0].totalItemCount missing"));

    char *tok = NULL;
    int64_t secs = 0;
    const char *t = "{\"access_token\":\"abc\",\"expires_in\":\"3599\"}";
    assert_int_equal(mv_oauth__parse_token(t, strlen(t), &tok, &secs, err, sizeof err), MV_OK);
    assert_string_equal(tok, "abc");
    assert_int_equal(secs, 3599);
    free(tok);
    t = "{\"access_token\":\"a b\",\"expires_in\":1}";
    assert_int_equal(mv_oauth__parse_token(t, strlen(t), &tok, &secs, err, sizeof err), MV_EPROTO);
    t = "{\"access_token\":\"ab\",\"expires_in\":0}";
    assert_int_equal(mv_oauth__parse_token(t, strlen(t), &tok, &secs, err, sizeof err), MV_EPROTO);
    assert_non_null(strstr(err, "expires_in"));

    char text[256], code[64];
    const char *e = "{\"error\":{\"code\":\"ErrorAccessDenied\",\"message\":\"Access is "
                    "denied.\\nCheck credentials\"}}";
    mv_ms__error_text(403, e, strlen(e), text, sizeof text, code, sizeof code);
    assert_string_equal(text, "HTTP 403 ErrorAccessDenied: Access is denied.?Check credentials");
    assert_string_equal(code, "ErrorAccessDenied");
    mv_ms__error_text(502, "<html>", 6, text, sizeof text, code, sizeof code);
    assert_string_equal(text, "HTTP 502");
    assert_string_equal(code, "");

    assert_int_equal(mv_http__retry_after("7", 0), 7000);
    assert_int_equal(mv_http__retry_after(" 12 \r\n", 0), 12000);
    assert_int_equal(mv_http__retry_after("0", 0), 0);
    assert_int_equal(mv_http__retry_after("99999999999999999999", 0), 3600000);
    assert_int_equal(mv_http__retry_after("7x", 0), -1);
    assert_int_equal(mv_http__retry_after("", 0), -1);
    /* HTTP-date: Sun, 06 Nov 1994 08:49:37 GMT = 784111777 */
    assert_int_equal(mv_http__retry_after("Sun, 06 Nov 1994 08:49:37 GMT", 784111777000LL - 5000),
                     5000);
    assert_int_equal(mv_http__retry_after("Sun, 06 Nov 1994 08:49:37 GMT", 784111777000LL + 1), 0);

    char *p = mv_graph__path_join("Inbox", "a/b%c");
    assert_string_equal(p, "Inbox/a%2Fb%25c");
    free(p);
    p = mv_graph__path_join(NULL, "");
    assert_string_equal(p, "");
    free(p);
}

int main(void)
{
    /* loopback tests must not go through a proxy from the environment */
    unsetenv("http_proxy");
    unsetenv("HTTP_PROXY");
    unsetenv("https_proxy");
    unsetenv("HTTPS_PROXY");
    unsetenv("all_proxy");
    unsetenv("ALL_PROXY");
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_token_fetch),
        cmocka_unit_test(test_token_set_and_refresh),
        cmocka_unit_test(test_token_invalid_client),
        cmocka_unit_test(test_users_paging),
        cmocka_unit_test(test_foreign_nextlink),
        cmocka_unit_test(test_folders),
        cmocka_unit_test(test_delta),
        cmocka_unit_test(test_status_mapping),
        cmocka_unit_test(test_401_refresh),
        cmocka_unit_test(test_json_too_big),
        cmocka_unit_test(test_mime_stream),
        cmocka_unit_test(test_mime_too_big),
        cmocka_unit_test(test_timeout),
        cmocka_unit_test(test_connect_refused),
        cmocka_unit_test(test_open_validation),
        cmocka_unit_test(test_parsers),
        cmocka_unit_test(test_parse_batch),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

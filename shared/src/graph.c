/* graph.c - Microsoft Graph mail client (libcurl easy handle + jansson) for the archiving worker.
 *
 * Why this shape
 * - One mv_graph owns one curl easy handle, so consecutive requests reuse the keep-alive
 *   connection (token endpoint and Graph each keep theirs in the handle's connection cache).
 *   Every request has a total and a connect timeout; signals are never used (NOSIGNAL).
 * - JSON answers are collected in one growable buffer that refuses to grow past max_json and
 *   are parsed with jansson in one go; every field we use is type-checked and a missing or odd
 *   field is MV_EPROTO naming it. MIME bodies ($value) are never buffered: the write callback
 *   hands each piece straight to the caller, bounded by max_message. Non-2xx bodies are always
 *   buffered (capped at ERRBODY_MAX) and parsed as Graph/AAD error JSON.
 * - The page parsers are pure functions over a byte buffer (graph_internal.h), so the fuzz
 *   target drives exactly the code the HTTP paths use.
 * - Paging is bounded (MAX_PAGES per listing call, folder depth MAX_DEPTH) and a nextLink or
 *   deltaLink must have graph_base's scheme, host and port: a server cannot make us send the
 *   bearer token anywhere else. Redirects are never followed (a 3xx is MV_EPROTO).
 *
 * Contracts
 * - One mv_graph per thread; curl_global_init runs once (pthread_once) in mv_graph_open.
 * - Secrets: the client secret only lives in our copy of the options and, during a token
 *   request, in the escaped form body; both are cleansed. err is scrubbed of the secret before
 *   it is returned (defence against a server echoing it) and never contains the token.
 *   Server text copied into err is sanitised (control bytes replaced).
 * - Only http and https are allowed; http exists for the loopback test servers and the Graph
 *   simulator. Production configuration uses https with verification on.
 */
#include "mv/graph.h"
#include "mv/http.h"
#include "mv/log.h"
#include "mv/oauth.h"
#include "graph_internal.h"
#include "ms_json.h"

#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <strings.h>

#include <curl/curl.h>
#include <jansson.h>
#include <openssl/crypto.h>

#define MAX_PAGES 100000 /* pages followed by one listing call */
#define MAX_DEPTH 64     /* folder tree depth */

struct mv_graph {
    mv_graph_opts o; /* string members point at the owned copies below */
    char *graph_base;
    char *origin; /* graph_base itself, for same-origin checks */
    mv_http *http;
    mv_oauth *oauth;
    int64_t retry_after_ms;
    mv_graph_gate gate; /* acquire == NULL: none */
};

/* ------------------------------------------------------------------ small helpers */

static char *xstrdup(const char *s)
{
    if (!s) return NULL;
    size_t n = strlen(s) + 1;
    char *p = malloc(n);
    if (p) memcpy(p, s, n);
    return p;
}

/* Copy a base URL without trailing slashes. */
static char *dup_base(const char *s)
{
    char *p = xstrdup(s);
    if (!p) return NULL;
    size_t n = strlen(p);
    while (n > 0 && p[n - 1] == '/')
        p[--n] = '\0';
    return p;
}

/* ------------------------------------------------------------------ URL helpers */

typedef struct url_parts {
    char *scheme, *host, *port, *user, *password;
} url_parts;

static void url_parts_free(url_parts *u)
{
    curl_free(u->scheme);
    curl_free(u->host);
    curl_free(u->port);
    curl_free(u->user);
    curl_free(u->password);
    memset(u, 0, sizeof *u);
}

static int url_split(const char *url, url_parts *u)
{
    memset(u, 0, sizeof *u);
    CURLU *h = curl_url();
    if (!h) return -1;
    int rc = -1;
    if (curl_url_set(h, CURLUPART_URL, url, CURLU_NON_SUPPORT_SCHEME) != CURLUE_OK) goto out;
    if (curl_url_get(h, CURLUPART_SCHEME, &u->scheme, 0) != CURLUE_OK) goto out;
    if (curl_url_get(h, CURLUPART_HOST, &u->host, 0) != CURLUE_OK) goto out;
    if (curl_url_get(h, CURLUPART_PORT, &u->port, CURLU_DEFAULT_PORT) != CURLUE_OK) goto out;
    curl_url_get(h, CURLUPART_USER, &u->user, 0);
    curl_url_get(h, CURLUPART_PASSWORD, &u->password, 0);
    rc = 0;
out:
    curl_url_cleanup(h);
    if (rc) url_parts_free(u);
    return rc;
}

int mv_graph__same_origin(const char *base, const char *link)
{
    if (!base || !link || mv_has_ctl(link)) return 0;
    if (strncasecmp(link, "http://", 7) != 0 && strncasecmp(link, "https://", 8) != 0) return 0;
    url_parts a, b;
    if (url_split(base, &a)) return 0;
    if (url_split(link, &b)) {
        url_parts_free(&a);
        return 0;
    }
    int ok = !strcasecmp(a.scheme, b.scheme) && !strcasecmp(a.host, b.host) &&
             !strcmp(a.port, b.port) && !b.user && !b.password;
    url_parts_free(&a);
    url_parts_free(&b);
    return ok;
}

char *mv_graph__path_join(const char *parent, const char *name)
{
    return mv_path_join(parent, name);
}

/* ------------------------------------------------------------------ JSON parsing */

/* Optional link member: absent -> NULL; present must be a non-empty string. */
static mv_err get_link(json_t *root, const char *key, const char *what, char **out, char *err,
                       size_t errlen)
{
    *out = NULL;
    json_t *v = json_object_get(root, key);
    if (!v) return MV_OK;
    if (!json_is_string(v) || json_string_length(v) == 0)
        return mv_seterr(err, errlen, MV_EPROTO, "%s: %s is not a non-empty string", what, key);
    *out = xstrdup(json_string_value(v));
    if (!*out) return mv_seterr(err, errlen, MV_ENOMEM, "out of memory");
    return MV_OK;
}

static json_t *get_value_array(json_t *root, const char *what, char *err, size_t errlen)
{
    json_t *v = json_object_get(root, "value");
    if (!json_is_array(v)) {
        mv_seterr(err, errlen, MV_EPROTO, "%s: value missing or not an array", what);
        return NULL;
    }
    return v;
}

/* A page: a JSON object with a "value" array. On MV_OK the caller owns *root. */
static mv_err load_page(const char *body, size_t len, const char *what, json_t **root, json_t **arr,
                        char *err, size_t errlen)
{
    mv_err e = mv_ms__load_object(body, len, what, root, err, errlen);
    if (e) return e;
    if (!(*arr = get_value_array(*root, what, err, errlen))) {
        json_decref(*root);
        *root = NULL;
        return MV_EPROTO;
    }
    return MV_OK;
}

/* Required string member of item; null_ok lets JSON null read as "". */
static mv_err item_str(json_t *item, const char *key, int null_ok, const char *what, size_t i,
                       const char **out, char *err, size_t errlen)
{
    json_t *v = json_object_get(item, key);
    if (json_is_string(v)) {
        *out = json_string_value(v);
        return MV_OK;
    }
    if (null_ok && json_is_null(v)) {
        *out = "";
        return MV_OK;
    }
    return mv_seterr(err, errlen, MV_EPROTO, "%s: value[%zu].%s %s", what, i, key,
                     v ? "is not a string" : "missing");
}

/* value[i] of a page: an object with a non-empty string "id". */
static mv_err item_id(json_t *item, const char *what, size_t i, const char **id, char *err,
                      size_t errlen)
{
    if (!json_is_object(item))
        return mv_seterr(err, errlen, MV_EPROTO, "%s: value[%zu] is not an object", what, i);
    mv_err e = item_str(item, "id", 0, what, i, id, err, errlen);
    if (!e && !**id) e = mv_seterr(err, errlen, MV_EPROTO, "%s: value[%zu].id is empty", what, i);
    return e;
}

static mv_err item_count(json_t *item, const char *key, const char *what, size_t i, uint64_t *out,
                         char *err, size_t errlen)
{
    json_t *v = json_object_get(item, key);
    if (!json_is_integer(v) || json_integer_value(v) < 0)
        return mv_seterr(err, errlen, MV_EPROTO, "%s: value[%zu].%s %s", what, i, key,
                         v ? "is not a non-negative integer" : "missing");
    *out = (uint64_t)json_integer_value(v);
    return MV_OK;
}

mv_err mv_graph__parse_users(const char *body, size_t len, mv_graph_user_fn cb, void *ud,
                             char **next_link, char *err, size_t errlen)
{
    static const char what[] = "users page";
    json_t *root = NULL, *arr = NULL;
    *next_link = NULL;
    mv_err e = load_page(body, len, what, &root, &arr, err, errlen);
    if (e) return e;
    size_t i;
    json_t *item;
    json_array_foreach(arr, i, item)
    {
        const char *id, *upn, *mail;
        if ((e = item_id(item, what, i, &id, err, errlen))) goto out;
        if ((e = item_str(item, "userPrincipalName", 1, what, i, &upn, err, errlen))) goto out;
        if ((e = item_str(item, "mail", 1, what, i, &mail, err, errlen))) goto out;
        json_t *lic = json_object_get(item, "assignedLicenses");
        if (!json_is_array(lic)) {
            e = mv_seterr(err, errlen, MV_EPROTO, "%s: value[%zu].assignedLicenses %s", what, i,
                          lic ? "is not an array" : "missing");
            goto out;
        }
        if (cb && cb(ud, id, upn, mail, json_array_size(lic) > 0)) {
            e = mv_seterr(err, errlen, MV_ECANCEL, "user listing stopped by the callback");
            goto out;
        }
    }
    e = get_link(root, "@odata.nextLink", what, next_link, err, errlen);
out:
    json_decref(root);
    return e;
}

mv_err mv_graph__parse_folders(const char *body, size_t len, mv_graph_rawfolder_fn cb, void *ud,
                               char **next_link, char *err, size_t errlen)
{
    static const char what[] = "mailFolders page";
    json_t *root = NULL, *arr = NULL;
    *next_link = NULL;
    mv_err e = load_page(body, len, what, &root, &arr, err, errlen);
    if (e) return e;
    size_t i;
    json_t *item;
    json_array_foreach(arr, i, item)
    {
        const char *id, *name, *wk = "";
        uint64_t total, children;
        if ((e = item_id(item, what, i, &id, err, errlen))) goto out;
        if ((e = item_str(item, "displayName", 0, what, i, &name, err, errlen))) goto out;
        if ((e = item_count(item, "totalItemCount", what, i, &total, err, errlen))) goto out;
        if ((e = item_count(item, "childFolderCount", what, i, &children, err, errlen))) goto out;
        /* wellKnownName: optional (beta property; some servers send it) */
        if (json_object_get(item, "wellKnownName") &&
            (e = item_str(item, "wellKnownName", 1, what, i, &wk, err, errlen)))
            goto out;
        if (cb && cb(ud, id, name, wk, total, children)) {
            e = mv_seterr(err, errlen, MV_ECANCEL, "folder listing stopped by the callback");
            goto out;
        }
    }
    e = get_link(root, "@odata.nextLink", what, next_link, err, errlen);
out:
    json_decref(root);
    return e;
}

mv_err mv_graph__parse_delta(const char *body, size_t len, mv_graph_delta_fn cb, void *ud,
                             char **link, int *complete, char *err, size_t errlen)
{
    static const char what[] = "delta page";
    json_t *root = NULL, *arr = NULL;
    char *next = NULL, *delta = NULL;
    *link = NULL;
    *complete = 0;
    mv_err e = load_page(body, len, what, &root, &arr, err, errlen);
    if (e) return e;
    /* links first: a page without one is refused before any entry reaches the caller */
    if ((e = get_link(root, "@odata.nextLink", what, &next, err, errlen))) goto out;
    if ((e = get_link(root, "@odata.deltaLink", what, &delta, err, errlen))) goto out;
    if (!next == !delta) {
        e = mv_seterr(err, errlen, MV_EPROTO, "%s: %s", what,
                      next ? "both @odata.nextLink and @odata.deltaLink"
                           : "neither @odata.nextLink nor @odata.deltaLink");
        goto out;
    }
    size_t i;
    json_t *item;
    json_array_foreach(arr, i, item)
    {
        const char *id, *reason = "";
        if ((e = item_id(item, what, i, &id, err, errlen))) goto out;
        json_t *rm = json_object_get(item, "@removed");
        if (rm) {
            if (!json_is_object(rm)) {
                e = mv_seterr(err, errlen, MV_EPROTO, "%s: value[%zu].@removed is not an object",
                              what, i);
                goto out;
            }
            json_t *r = json_object_get(rm, "reason");
            if (r && !json_is_string(r)) {
                e = mv_seterr(err, errlen, MV_EPROTO,
                              "%s: value[%zu].@removed.reason is not a string", what, i);
                goto out;
            }
            reason = r ? json_string_value(r) : "deleted";
        }
        if (cb && cb(ud, id, rm != NULL, reason)) {
            e = mv_seterr(err, errlen, MV_ECANCEL, "delta page stopped by the callback");
            goto out;
        }
    }
    *complete = delta != NULL;
    *link = next ? next : delta;
    next = delta = NULL;
out:
    free(next);
    free(delta);
    json_decref(root);
    return e;
}

mv_err mv_graph__parse_idlist(const char *body, size_t len, mv_graph_id_fn cb, void *ud,
                              char **next_link, char *err, size_t errlen)
{
    static const char what[] = "message list";
    json_t *root = NULL, *arr = NULL;
    *next_link = NULL;
    mv_err e = load_page(body, len, what, &root, &arr, err, errlen);
    if (e) return e;
    if ((e = get_link(root, "@odata.nextLink", what, next_link, err, errlen))) goto out;
    size_t i;
    json_t *item;
    json_array_foreach(arr, i, item)
    {
        const char *id;
        if ((e = item_id(item, what, i, &id, err, errlen))) goto out;
        if (cb && cb(ud, id)) {
            e = mv_seterr(err, errlen, MV_ECANCEL, "%s stopped by the callback", what);
            goto out;
        }
    }
out:
    if (e) {
        free(*next_link);
        *next_link = NULL;
    }
    json_decref(root);
    return e;
}

mv_err mv_graph__parse_batch(const char *body, size_t len, size_t n, uint64_t max_item,
                             mv_graph__batch_fn cb, void *ud, char *err, size_t errlen)
{
    static const char what[] = "batch response";
    json_t *root = NULL;
    unsigned char *buf = NULL;
    unsigned char *seen = n ? calloc(n, 1) : NULL;
    mv_err e = MV_OK;
    if (n && !seen) return mv_seterr(err, errlen, MV_ENOMEM, "out of memory");
    if ((e = mv_ms__load_object(body, len, what, &root, err, errlen))) goto out;
    json_t *arr = json_object_get(root, "responses");
    if (!json_is_array(arr)) {
        e = mv_seterr(err, errlen, MV_EPROTO, "%s: responses missing or not an array", what);
        goto out;
    }
    size_t i;
    json_t *item;
    json_array_foreach(arr, i, item)
    {
        const char *id;
        if (!json_is_object(item)) {
            e = mv_seterr(err, errlen, MV_EPROTO, "%s: responses[%zu] is not an object", what, i);
            goto out;
        }
        if ((e = item_str(item, "id", 0, what, i, &id, err, errlen))) goto out;
        char *end = NULL;
        unsigned long k = strtoul(id, &end, 10);
        if (!*id || *end || id[0] == '0' || k < 1 || k > n || seen[k - 1]) {
            e = mv_seterr(err, errlen, MV_EPROTO, "%s: responses[%zu].id is not one asked for",
                          what, i);
            goto out;
        }
        seen[k - 1] = 1;
        json_t *st = json_object_get(item, "status");
        if (!json_is_integer(st) || json_integer_value(st) < 100 || json_integer_value(st) > 599) {
            e = mv_seterr(err, errlen, MV_EPROTO, "%s: responses[%zu].status is not an HTTP status",
                          what, i);
            goto out;
        }
        mv_graph__batch_res res = {.index = k - 1, .status = (long)json_integer_value(st)};
        json_t *hdrs = json_object_get(item, "headers");
        if (json_is_object(hdrs)) {
            const char *hk;
            json_t *hv;
            json_object_foreach(hdrs, hk, hv)
            {
                if (!strcasecmp(hk, "Retry-After") && json_is_string(hv))
                    res.retry_after_ms = mv_http__retry_after(json_string_value(hv), mv_now_ms());
            }
        }
        json_t *b = json_object_get(item, "body");
        if (res.status >= 200 && res.status < 300) {
            /* a non-JSON body ($value's message/rfc822 text) comes base64-encoded */
            if (!json_is_string(b)) {
                res.status = -1;
                snprintf(res.error, sizeof res.error, "%s", "body is not a base64 string");
            } else {
                size_t bl = json_string_length(b), outn = 0;
                if ((uint64_t)(bl / 4) * 3 > max_item + 3) {
                    res.status = -1;
                    snprintf(res.error, sizeof res.error, "message larger than %llu bytes",
                             (unsigned long long)max_item);
                } else {
                    free(buf);
                    buf = malloc(bl / 4 * 3 + 4);
                    if (!buf) {
                        e = mv_seterr(err, errlen, MV_ENOMEM, "out of memory");
                        goto out;
                    }
                    mv_b64dec d;
                    mv_b64dec_init(&d);
                    if (mv_b64dec_update(&d, json_string_value(b), bl, buf, &outn) ||
                        mv_b64dec_final(&d) || outn > max_item) {
                        res.status = -1;
                        snprintf(res.error, sizeof res.error, "%s",
                                 outn > max_item ? "message too large" : "body is not base64");
                    } else {
                        res.data = buf;
                        res.len = outn;
                    }
                }
            }
        } else {
            /* an error: Graph's JSON error object as the body */
            char *txt = json_is_object(b) ? json_dumps(b, JSON_COMPACT) : NULL;
            mv_ms__error_text(res.status, txt, txt ? strlen(txt) : 0, res.error, sizeof res.error,
                              NULL, 0);
            free(txt);
        }
        if (cb && cb(ud, &res)) {
            e = mv_seterr(err, errlen, MV_ECANCEL, "%s stopped by the callback", what);
            goto out;
        }
    }
out:
    free(buf);
    free(seen);
    json_decref(root);
    return e;
}

/* ------------------------------------------------------------------ curl callbacks */

/* ------------------------------------------------------------------ one request */

typedef struct req {
    const char *url;
    const char *method; /* NULL: GET, or POST when post is set; else e.g. "DELETE" */
    const char *post;   /* form body (POST) or NULL (GET) */
    size_t postlen;
    int post_json;      /* the body is JSON, not a form */
    size_t max_body;    /* bound on the response body, 0 = max_json */
    int weight;         /* requests it counts as against the limits ($batch), 0 = 1 */
    int auth;           /* send the bearer token */
    const char *prefer; /* Prefer header value or NULL */
    const char *what;   /* "token request", "graph request": prefix of transport errors */
    const mv_graph_mime_cb *mime;
    void *mime_ud;
} req;

/* One exchange through the HTTP handle: Graph's headers, the bearer token, and the MIME
 * callbacks as the handle's sink. MV_OK means a complete response arrived (any status). */
static mv_err perform(mv_graph *g, const req *r, char *err, size_t errlen)
{
    char prefer[256];
    const char *hdrs[3] = {NULL, NULL, NULL};
    int n = 0;
    if (!r->mime) hdrs[n++] = "Accept: application/json";
    if (r->prefer) {
        snprintf(prefer, sizeof prefer, "Prefer: %s", r->prefer);
        hdrs[n++] = prefer;
    }
    mv_http_sink sink = {.max = g->o.max_message, .max_label = "max_message"};
    if (r->mime) {
        sink.begin = r->mime->begin;
        sink.data = r->mime->data;
        sink.ud = r->mime_ud;
    }
    mv_http_req hr = {.url = r->url,
                      .method = r->method,
                      .body = r->post,
                      .bodylen = r->postlen,
                      .content_type =
                          r->post_json ? "application/json" : "application/x-www-form-urlencoded",
                      .headers = hdrs,
                      .bearer = r->auth ? mv_oauth_token(g->oauth, NULL) : NULL,
                      .max_body = r->max_body,
                      .max_label = r->max_body ? "its bound" : "max_json",
                      .sink = r->mime ? &sink : NULL,
                      .what = r->what};
    mv_err e = mv_http_perform(g->http, &hr, err, errlen);
    g->retry_after_ms = mv_http_retry_after_ms(g->http);
    return e;
}

/* Map a non-2xx status of a Graph call to an mv_err with "HTTP <status> <code>: <message>". */
static mv_err map_status(mv_graph *g, const char *suffix, char *err, size_t errlen)
{
    char text[1024];
    long st = mv_http_status(g->http);
    size_t blen = 0;
    const char *body = mv_http_body(g->http, &blen);
    mv_ms__error_text(st, body, blen, text, sizeof text, NULL, 0);
    mv_err e;
    if (st >= 300 && st < 400) {
        return mv_seterr(err, errlen, MV_EPROTO, "%s (redirects are not followed)", text);
    } else if (st == 400) {
        e = MV_EINVAL;
    } else if (st == 401 || st == 403) {
        e = MV_EAUTH;
    } else if (st == 404 || st == 410) {
        e = MV_ENOTFOUND;
    } else if (st == 408) {
        e = MV_ETIMEDOUT;
    } else if (st == 429 || st == 503 || st == 504) {
        e = MV_EBUSY;
    } else if (st >= 500 && st < 600) {
        e = MV_ESERVER;
    } else {
        e = MV_EPROTO; /* other 4xx, and anything that is not an HTTP status */
    }
    return mv_seterr(err, errlen, e, "%s%s", text, suffix ? suffix : "");
}

/* ------------------------------------------------------------------ token */

/* A Graph request with the bearer token: refreshed when near expiry, and once on a 401.
 * MV_OK only for a 2xx answer; every other status is mapped. */
static mv_err graph_call(mv_graph *g, req *r, char *err, size_t errlen)
{
    mv_err e;
    r->auth = 1;
    if (!r->what) r->what = "graph request";
    char *stale = NULL;
    for (int attempt = 0;; attempt++) {
        e = mv_oauth_ensure(g->oauth, g->http, stale, err, errlen);
        if (stale) {
            OPENSSL_cleanse(stale, strlen(stale));
            free(stale);
            stale = NULL;
        }
        if (e) return e;
        int w = r->weight > 0 ? r->weight : 1;
        if (g->gate.acquire && (e = g->gate.acquire(g->gate.ud, w, err, errlen))) return e;
        e = perform(g, r, err, errlen);
        if (g->gate.acquire && g->gate.release) g->gate.release(g->gate.ud, w);
        if (e) return e;
        long st = mv_http_status(g->http);
        if (st >= 200 && st < 300) return MV_OK;
        if (st == 401 && attempt == 0) {
            mv_debug("graph: 401, refreshing the token once", "%s", "");
            stale = mv_oauth_drop(g->oauth);
            continue;
        }
        return map_status(g, st == 401 ? " (after a token refresh)" : NULL, err, errlen);
    }
}

/* The buffered body of the last response. */
static const char *body_of(mv_graph *g, size_t *len)
{
    return mv_http_body(g->http, len);
}

/* ------------------------------------------------------------------ public API */

void mv_graph_opts_default(mv_graph_opts *o)
{
    memset(o, 0, sizeof *o);
    o->login_base = "https://login.microsoftonline.com";
    o->graph_base = "https://graph.microsoft.com/v1.0";
    o->verify = 1;
    o->timeout_ms = 120000;
    o->connect_timeout_ms = 15000;
    o->idle_timeout_ms = 60000;
    o->max_json = 16u * 1024 * 1024;
    o->max_message = 200ull * 1024 * 1024;
    o->page_size = 100;
}

static mv_err check_base(const char *name, const char *v, char *err, size_t errlen)
{
    if (!v || !*v) return mv_seterr(err, errlen, MV_EINVAL, "graph: %s is required", name);
    if ((strncasecmp(v, "https://", 8) && strncasecmp(v, "http://", 7)) || mv_has_ctl(v))
        return mv_seterr(err, errlen, MV_EINVAL, "graph: %s must be an http(s) URL", name);
    url_parts u;
    if (url_split(v, &u))
        return mv_seterr(err, errlen, MV_EINVAL, "graph: %s is not a valid URL", name);
    int bad = u.user || u.password;
    url_parts_free(&u);
    if (bad) return mv_seterr(err, errlen, MV_EINVAL, "graph: %s must not carry credentials", name);
    return MV_OK;
}

mv_err mv_graph_open(const mv_graph_opts *o, mv_graph **out, char *err, size_t errlen)
{
    mv_graph *g = NULL;
    url_parts u = {0};
    mv_err e = MV_OK;
    *out = NULL;
    if (err && errlen) err[0] = '\0';
    if (!o) return mv_seterr(err, errlen, MV_EINVAL, "graph: no options");
    if ((e = check_base("login_base", o->login_base, err, errlen))) return e;
    if ((e = check_base("graph_base", o->graph_base, err, errlen))) return e;
    if (!o->tenant_id || !*o->tenant_id || !o->client_id || !*o->client_id)
        return mv_seterr(err, errlen, MV_EINVAL, "graph: tenant_id and client_id are required");
    if (o->timeout_ms <= 0 || o->connect_timeout_ms <= 0 || o->max_json < 1024 ||
        o->max_message == 0 || o->page_size < 1 || o->page_size > 1000)
        return mv_seterr(err, errlen, MV_EINVAL,
                         "graph: timeouts must be > 0, max_json >= 1024, max_message > 0, "
                         "page_size 1..1000");

    g = calloc(1, sizeof *g);
    if (!g) return mv_seterr(err, errlen, MV_ENOMEM, "out of memory");
    g->o = *o;
    g->graph_base = dup_base(o->graph_base);
    g->origin = g->graph_base;
    if (!g->graph_base) {
        e = mv_seterr(err, errlen, MV_ENOMEM, "out of memory");
        goto fail;
    }
    g->o.graph_base = g->graph_base;
    /* options that point at the caller's strings are not kept */
    g->o.login_base = g->o.tenant_id = g->o.client_id = g->o.client_secret = NULL;
    g->o.client_key_pem = g->o.client_cert_pem = g->o.ca_file = NULL;
    if (url_split(g->graph_base, &u)) {
        e = mv_seterr(err, errlen, MV_EINVAL, "graph: graph_base is not a valid URL");
        goto fail;
    }
    /* the resource of the client-credentials scope is the Graph host (no path, no port) */
    char *scope = mv_aprintf("%s://%s/.default", u.scheme, u.host);
    if (!scope) {
        e = mv_seterr(err, errlen, MV_ENOMEM, "out of memory");
        goto fail;
    }
    mv_oauth_opts ao = {.login_base = o->login_base,
                        .tenant_id = o->tenant_id,
                        .client_id = o->client_id,
                        .client_secret = o->client_secret,
                        .client_key_pem = o->client_key_pem,
                        .client_cert_pem = o->client_cert_pem,
                        .scope = scope};
    e = mv_oauth_new(&ao, &g->oauth, err, errlen);
    free(scope);
    if (e) goto fail;
    mv_http_opts ho;
    mv_http_opts_default(&ho);
    ho.ca_file = o->ca_file;
    ho.verify = o->verify;
    ho.timeout_ms = o->timeout_ms;
    ho.connect_timeout_ms = o->connect_timeout_ms;
    ho.idle_timeout_ms = o->idle_timeout_ms;
    ho.max_body = o->max_json;
    if ((e = mv_http_open(&ho, &g->http, err, errlen))) goto fail;
    url_parts_free(&u);
    *out = g;
    return MV_OK;
fail:
    url_parts_free(&u);
    mv_graph_close(g);
    return e;
}

void mv_graph_close(mv_graph *g)
{
    if (!g) return;
    mv_http_close(g->http);
    mv_oauth_free(g->oauth);
    free(g->graph_base);
    free(g);
}

void mv_graph_set_gate(mv_graph *g, const mv_graph_gate *gate)
{
    if (gate)
        g->gate = *gate;
    else
        memset(&g->gate, 0, sizeof g->gate);
}

int64_t mv_graph_retry_after_ms(const mv_graph *g)
{
    return g ? g->retry_after_ms : 0;
}

mv_err mv_graph_token(mv_graph *g, const char **token, int64_t *expires_ms, char *err,
                      size_t errlen)
{
    if (err && errlen) err[0] = '\0';
    mv_err e = mv_oauth_fresh(g->oauth) ? MV_OK : mv_oauth_fetch(g->oauth, g->http, err, errlen);
    if (e) return e;
    if (token) *token = mv_oauth_token(g->oauth, expires_ms);
    return MV_OK;
}

void mv_graph_set_token_source(mv_graph *g, const mv_oauth_source *src)
{
    mv_oauth_set_source(g->oauth, src);
}

void mv_graph_set_token(mv_graph *g, const char *token, int64_t expires_ms)
{
    mv_oauth_set(g->oauth, token, expires_ms);
}

static mv_err check_link(mv_graph *g, const char *link, const char *what, char *err, size_t errlen)
{
    if (mv_graph__same_origin(g->origin, link)) return MV_OK;
    return mv_seterr(err, errlen, MV_EPROTO,
                     "%s points outside %s (refused: the bearer token stays with Graph)", what,
                     g->origin);
}

/* GET url and every @odata.nextLink after it (same origin, at most MAX_PAGES): parse reads
 * each page and returns its nextLink. Takes ownership of url. */
typedef mv_err (*page_fn)(void *pud, const char *body, size_t len, char **next, char *err,
                          size_t errlen);
static mv_err walk_pages(mv_graph *g, char *url, const char *what, const char *prefer,
                         page_fn parse, void *pud, char *err, size_t errlen)
{
    char *next = NULL;
    mv_err e = MV_OK;
    if (!url) return mv_seterr(err, errlen, MV_ENOMEM, "out of memory");
    for (long pages = 0; url; pages++) {
        if (pages >= MAX_PAGES) {
            e = mv_seterr(err, errlen, MV_EPROTO, "%s: more than %d pages", what, MAX_PAGES);
            break;
        }
        req r = {.url = url, .prefer = prefer, .what = what};
        if ((e = graph_call(g, &r, err, errlen))) break;
        size_t blen = 0;
        const char *body = body_of(g, &blen);
        if ((e = parse(pud, body, blen, &next, err, errlen))) break;
        free(url);
        url = next;
        next = NULL;
        if (url && (e = check_link(g, url, "@odata.nextLink", err, errlen))) break;
    }
    free(url);
    free(next);
    mv_http_trim(g->http);
    mv_scrub(err, errlen, mv_oauth_secret(g->oauth));
    return e;
}

/* The caller's callback of a listing, whatever its type (restored in the page adapter). */
typedef struct page_cb {
    void (*fn)(void);
    void *ud;
} page_cb;

static mv_err users_page(void *pud, const char *body, size_t len, char **next, char *err,
                         size_t errlen)
{
    page_cb *u = pud;
    return mv_graph__parse_users(body, len, (mv_graph_user_fn)u->fn, u->ud, next, err, errlen);
}

mv_err mv_graph_list_users(mv_graph *g, mv_graph_user_fn cb, void *ud, char *err, size_t errlen)
{
    if (err && errlen) err[0] = '\0';
    page_cb u = {(void (*)(void))cb, ud};
    return walk_pages(
        g,
        mv_aprintf("%s/users?$select=id,userPrincipalName,mail,assignedLicenses&$top=999",
                   g->graph_base),
        "users", NULL, users_page, &u, err, errlen);
}

typedef struct child {
    char *id, *path;
} child;

typedef struct walk {
    mv_graph *g;
    const char *user_esc;
    mv_graph_folder_fn cb;
    void *ud;
    long pages;
    const char *parent_path;
    /* children with sub-folders found on the current page */
    child *kids;
    size_t nkids, capkids;
    mv_err cb_err;
    char *err;
    size_t errlen;
} walk;

static int on_rawfolder(void *ud, const char *id, const char *name, const char *wk, uint64_t total,
                        uint64_t children)
{
    walk *w = ud;
    char *path = mv_graph__path_join(w->parent_path, name);
    if (!path) {
        w->cb_err = MV_ENOMEM;
        return 1;
    }
    if (w->cb && w->cb(w->ud, id, path, wk, total)) {
        free(path);
        w->cb_err = MV_ECANCEL;
        return 1;
    }
    if (!children) {
        free(path);
        return 0;
    }
    if (w->nkids == w->capkids) {
        size_t cap = w->capkids ? w->capkids * 2 : 16;
        child *k = realloc(w->kids, cap * sizeof *k);
        if (!k) {
            free(path);
            w->cb_err = MV_ENOMEM;
            return 1;
        }
        w->kids = k;
        w->capkids = cap;
    }
    char *idc = xstrdup(id);
    if (!idc) {
        free(path);
        w->cb_err = MV_ENOMEM;
        return 1;
    }
    w->kids[w->nkids].id = idc;
    w->kids[w->nkids].path = path;
    w->nkids++;
    return 0;
}

static void free_kids(child *k, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        free(k[i].id);
        free(k[i].path);
    }
    free(k);
}

/* List one level (root when folder_id is NULL) with paging, recursing into sub-folders after
 * each page. */
static mv_err walk_level(walk *w, const char *folder_id, const char *parent_path, int depth)
{
    mv_graph *g = w->g;
    char *url = NULL, *next = NULL, *fid = NULL;
    child *kids = NULL;
    size_t nkids = 0;
    mv_err e = MV_OK;
    if (depth > MAX_DEPTH)
        return mv_seterr(w->err, w->errlen, MV_EPROTO, "folders: tree deeper than %d levels",
                         MAX_DEPTH);
    if (folder_id) {
        fid = mv_http_escape(g->http, folder_id);
        if (!fid) return mv_seterr(w->err, w->errlen, MV_ENOMEM, "out of memory");
        url =
            mv_aprintf("%s/users/%s/mailFolders/%s/childFolders?includeHiddenFolders=true&$top=100",
                       g->graph_base, w->user_esc, fid);
    } else {
        url = mv_aprintf("%s/users/%s/mailFolders?includeHiddenFolders=true&$top=100",
                         g->graph_base, w->user_esc);
    }
    if (!url) {
        e = mv_seterr(w->err, w->errlen, MV_ENOMEM, "out of memory");
        goto out;
    }
    while (url) {
        if (w->pages++ >= MAX_PAGES) {
            e = mv_seterr(w->err, w->errlen, MV_EPROTO, "folders: more than %d pages", MAX_PAGES);
            goto out;
        }
        req r = {.url = url, .prefer = "IdType=\"ImmutableId\""};
        if ((e = graph_call(g, &r, w->err, w->errlen))) goto out;
        w->parent_path = parent_path;
        w->kids = NULL;
        w->nkids = w->capkids = 0;
        w->cb_err = MV_OK;
        size_t blen = 0;
        const char *body = body_of(g, &blen);
        e = mv_graph__parse_folders(body, blen, on_rawfolder, w, &next, w->err, w->errlen);
        kids = w->kids;
        nkids = w->nkids;
        w->kids = NULL;
        if (e) {
            if (w->cb_err == MV_ENOMEM)
                e = mv_seterr(w->err, w->errlen, MV_ENOMEM, "out of memory");
            goto out;
        }
        free(url);
        url = next;
        next = NULL;
        if (url && (e = check_link(g, url, "mailFolders @odata.nextLink", w->err, w->errlen)))
            goto out;
        for (size_t i = 0; i < nkids; i++)
            if ((e = walk_level(w, kids[i].id, kids[i].path, depth + 1))) goto out;
        free_kids(kids, nkids);
        kids = NULL;
        nkids = 0;
    }
out:
    free_kids(kids, nkids);
    free(url);
    free(next);
    free(fid);
    return e;
}

static int arg_ok(const char *s)
{
    return s && *s;
}

mv_err mv_graph_list_folders(mv_graph *g, const char *user, mv_graph_folder_fn cb, void *ud,
                             char *err, size_t errlen)
{
    if (err && errlen) err[0] = '\0';
    if (!arg_ok(user)) return mv_seterr(err, errlen, MV_EINVAL, "folders: user is required");
    char *ue = mv_http_escape(g->http, user);
    if (!ue) return mv_seterr(err, errlen, MV_ENOMEM, "out of memory");
    walk w = {.g = g, .user_esc = ue, .cb = cb, .ud = ud, .err = err, .errlen = errlen};
    mv_err e = walk_level(&w, NULL, NULL, 1);
    free(ue);
    mv_http_trim(g->http);
    mv_scrub(err, errlen, mv_oauth_secret(g->oauth));
    return e;
}

mv_err mv_graph_delta_page(mv_graph *g, const char *user, const char *folder_id,
                           const char *from_link, mv_graph_delta_fn cb, void *ud, char **next_link,
                           int *complete, char *err, size_t errlen)
{
    char *url = NULL, *ue = NULL, *fe = NULL, *link = NULL;
    char prefer[96];
    mv_err e = MV_OK;
    int done = 0;
    if (err && errlen) err[0] = '\0';
    *next_link = NULL;
    *complete = 0;
    if (from_link) {
        if ((e = check_link(g, from_link, "delta link", err, errlen))) goto out;
        url = xstrdup(from_link);
    } else {
        if (!arg_ok(user) || !arg_ok(folder_id)) {
            e = mv_seterr(err, errlen, MV_EINVAL, "delta: user and folder_id are required");
            goto out;
        }
        ue = mv_http_escape(g->http, user);
        fe = mv_http_escape(g->http, folder_id);
        if (ue && fe)
            url = mv_aprintf("%s/users/%s/mailFolders/%s/messages/delta?$select=id", g->graph_base,
                             ue, fe);
    }
    if (!url) {
        e = mv_seterr(err, errlen, MV_ENOMEM, "out of memory");
        goto out;
    }
    snprintf(prefer, sizeof prefer, "IdType=\"ImmutableId\", odata.maxpagesize=%d", g->o.page_size);
    req r = {.url = url, .prefer = prefer};
    e = graph_call(g, &r, err, errlen);
    size_t blen = 0;
    if (e == MV_ENOTFOUND && mv_http_status(g->http) == 410) {
        char text[1024], code[64];
        const char *body = body_of(g, &blen);
        mv_ms__error_text(410, body, blen, text, sizeof text, code, sizeof code);
        const char *msg = strstr(text, ": ");
        mv_seterr(err, errlen, MV_ENOTFOUND, "sync state expired (%s): %s",
                  code[0] ? code : "HTTP 410", msg ? msg + 2 : text);
        goto out;
    }
    if (e) goto out;
    const char *body = body_of(g, &blen);
    if ((e = mv_graph__parse_delta(body, blen, cb, ud, &link, &done, err, errlen))) goto out;
    if ((e = check_link(g, link, done ? "@odata.deltaLink" : "@odata.nextLink", err, errlen)))
        goto out;
    *next_link = link;
    *complete = done;
    link = NULL;
out:
    free(link);
    free(url);
    free(ue);
    free(fe);
    mv_http_trim(g->http);
    mv_scrub(err, errlen, mv_oauth_secret(g->oauth));
    return e;
}

mv_err mv_graph_get_mime(mv_graph *g, const char *user, const char *message_id,
                         const mv_graph_mime_cb *cb, void *ud, char *err, size_t errlen)
{
    char *url = NULL, *ue = NULL, *me = NULL;
    mv_err e = MV_OK;
    if (err && errlen) err[0] = '\0';
    if (!arg_ok(user) || !arg_ok(message_id) || !cb || !cb->data)
        return mv_seterr(err, errlen, MV_EINVAL,
                         "mime: user, message_id and a data callback are required");
    ue = mv_http_escape(g->http, user);
    me = mv_http_escape(g->http, message_id);
    if (ue && me) url = mv_aprintf("%s/users/%s/messages/%s/$value", g->graph_base, ue, me);
    if (!url) {
        e = mv_seterr(err, errlen, MV_ENOMEM, "out of memory");
        goto out;
    }
    req r = {.url = url,
             .prefer = "IdType=\"ImmutableId\"",
             .mime = cb,
             .mime_ud = ud,
             .what = "message download"};
    e = graph_call(g, &r, err, errlen);
out:
    free(url);
    free(ue);
    free(me);
    mv_http_trim(g->http);
    mv_scrub(err, errlen, mv_oauth_secret(g->oauth));
    return e;
}

static mv_err ids_page(void *pud, const char *body, size_t len, char **next, char *err,
                       size_t errlen)
{
    page_cb *p = pud;
    return mv_graph__parse_idlist(body, len, (mv_graph_id_fn)p->fn, p->ud, next, err, errlen);
}

mv_err mv_graph_list_received_before(mv_graph *g, const char *user, const char *folder_id,
                                     int64_t before_ms, mv_graph_id_fn cb, void *ud, char *err,
                                     size_t errlen)
{
    char *url = NULL, *ue = NULL, *fe = NULL;
    if (err && errlen) err[0] = '\0';
    if (!arg_ok(user) || !arg_ok(folder_id) || before_ms < 0)
        return mv_seterr(err, errlen, MV_EINVAL, "list: user, folder_id and a time are required");
    char iso[32];
    time_t secs = (time_t)(before_ms / 1000);
    struct tm tm;
    if (!gmtime_r(&secs, &tm) || !strftime(iso, sizeof iso, "%Y-%m-%dT%H:%M:%SZ", &tm))
        return mv_seterr(err, errlen, MV_EINVAL, "list: time out of range");
    ue = mv_http_escape(g->http, user);
    fe = mv_http_escape(g->http, folder_id);
    if (ue && fe)
        url = mv_aprintf("%s/users/%s/mailFolders/%s/messages?$filter=receivedDateTime%%20lt%%20%s&"
                         "$select=id&$top=%d",
                         g->graph_base, ue, fe, iso, g->o.page_size);
    free(ue);
    free(fe);
    page_cb p = {(void (*)(void))cb, ud};
    return walk_pages(g, url, "message list", "IdType=\"ImmutableId\"", ids_page, &p, err, errlen);
}

mv_err mv_graph_delete_message(mv_graph *g, const char *user, const char *message_id, char *err,
                               size_t errlen)
{
    char *url = NULL, *ue = NULL, *me = NULL;
    mv_err e;
    if (err && errlen) err[0] = '\0';
    if (!arg_ok(user) || !arg_ok(message_id))
        return mv_seterr(err, errlen, MV_EINVAL, "delete: user and message_id are required");
    ue = mv_http_escape(g->http, user);
    me = mv_http_escape(g->http, message_id);
    if (ue && me) url = mv_aprintf("%s/users/%s/messages/%s", g->graph_base, ue, me);
    if (!url)
        e = mv_seterr(err, errlen, MV_ENOMEM, "out of memory");
    else {
        req r = {.url = url,
                 .method = "DELETE",
                 .prefer = "IdType=\"ImmutableId\"",
                 .what = "message delete"};
        e = graph_call(g, &r, err, errlen);
    }
    free(url);
    free(ue);
    free(me);
    mv_http_trim(g->http);
    mv_scrub(err, errlen, mv_oauth_secret(g->oauth));
    return e;
}

typedef struct batch_ctx {
    mv_graph_batch_item *items;
    mv_graph_batch_fn cb;
    void *ud;
} batch_ctx;

static int batch_deliver(void *ud, const mv_graph__batch_res *res)
{
    batch_ctx *b = ud;
    mv_graph_batch_item *it = &b->items[res->index];
    it->status = res->status;
    it->retry_after_ms = res->retry_after_ms > 0 ? res->retry_after_ms : 0;
    snprintf(it->error, sizeof it->error, "%s", res->error);
    if (res->status >= 200 && res->status < 300 && res->data)
        return b->cb ? b->cb(b->ud, res->index, res->data, res->len) : 0;
    return 0;
}

mv_err mv_graph_get_mime_batch(mv_graph *g, const char *user, mv_graph_batch_item *items, size_t n,
                               mv_graph_batch_fn cb, void *ud, char *err, size_t errlen)
{
    char *url = NULL, *ue = NULL, *body = NULL;
    json_t *root = NULL, *reqs = NULL;
    mv_err e = MV_OK;
    if (err && errlen) err[0] = '\0';
    if (!arg_ok(user) || !items || n < 1 || n > MV_GRAPH_BATCH_MAX)
        return mv_seterr(err, errlen, MV_EINVAL, "batch: user and 1..%d messages are required",
                         MV_GRAPH_BATCH_MAX);
    for (size_t i = 0; i < n; i++) {
        items[i].status = 0;
        items[i].retry_after_ms = 0;
        items[i].error[0] = '\0';
        if (!arg_ok(items[i].message_id))
            return mv_seterr(err, errlen, MV_EINVAL, "batch: message %zu has no id", i);
    }
    ue = mv_http_escape(g->http, user);
    root = json_object();
    reqs = json_array();
    if (!ue || !root || !reqs) goto nomem;
    for (size_t i = 0; i < n; i++) {
        char id[24], *me = mv_http_escape(g->http, items[i].message_id);
        char *u = me ? mv_aprintf("/users/%s/messages/%s/$value", ue, me) : NULL;
        free(me);
        json_t *r = json_object(), *h = json_object();
        snprintf(id, sizeof id, "%zu", i + 1);
        int bad = !u || !r || !h || json_object_set_new(r, "id", json_string(id)) ||
                  json_object_set_new(r, "method", json_string("GET")) ||
                  json_object_set_new(r, "url", json_string(u)) ||
                  json_object_set_new(h, "Prefer", json_string("IdType=\"ImmutableId\"")) ||
                  json_object_set(r, "headers", h) || json_array_append(reqs, r);
        free(u);
        json_decref(h);
        json_decref(r);
        if (bad) goto nomem;
    }
    if (json_object_set(root, "requests", reqs)) goto nomem;
    body = json_dumps(root, JSON_COMPACT);
    url = mv_aprintf("%s/$batch", g->graph_base);
    if (!body || !url) goto nomem;
    req r = {.url = url,
             .post = body,
             .postlen = strlen(body),
             .post_json = 1,
             .max_body = MV_GRAPH_BATCH_BODY_MAX,
             .weight = (int)n,
             .what = "batch download"};
    e = graph_call(g, &r, err, errlen);
    if (!e) {
        batch_ctx b = {items, cb, ud};
        size_t blen = 0;
        const char *answer = body_of(g, &blen);
        e = mv_graph__parse_batch(answer, blen, n, g->o.max_message, batch_deliver, &b, err,
                                  errlen);
    }
    goto out;
nomem:
    e = mv_seterr(err, errlen, MV_ENOMEM, "out of memory");
out:
    free(url);
    free(body);
    json_decref(reqs);
    json_decref(root);
    free(ue);
    mv_http_trim(g->http);
    mv_scrub(err, errlen, mv_oauth_secret(g->oauth));
    return e;
}

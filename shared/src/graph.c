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
#include "mv/log.h"
#include "graph_internal.h"

#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <strings.h>

#include <curl/curl.h>
#include <jansson.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#define MAX_PAGES 100000           /* pages followed by one listing call */
#define MAX_DEPTH 64               /* folder tree depth */
#define ERRBODY_MAX (64u * 1024)   /* bytes of a non-2xx body we keep */
#define REFRESH_MARGIN_MS 300000   /* refresh a token this close to its expiry */
#define RETRY_AFTER_MAX_MS 3600000 /* cap on Retry-After */
#define USER_AGENT "mailvault/0.1"

enum { AB_NONE = 0, AB_JSON_BIG, AB_MIME_BIG, AB_CANCEL, AB_NOMEM };

typedef struct sbuf {
    char *p;
    size_t len, cap;
} sbuf;

struct mv_graph {
    mv_graph_opts o; /* string members point at the owned copies below */
    char *login_base, *graph_base, *tenant, *client_id, *secret, *ca_file;
    char *key_pem; /* certificate credential: private key (secret) */
    char x5t[64];  /* base64url SHA-1 thumbprint of the certificate */
    char *scope;   /* <scheme>://<host>/.default */
    char *origin;  /* graph_base itself, for same-origin checks */
    CURL *curl;
    char errbuf[CURL_ERROR_SIZE];

    char *token;
    int64_t token_exp_ms;
    int64_t retry_after_ms;
    mv_graph_gate gate;         /* acquire == NULL: none */
    mv_graph_token_source tsrc; /* need == NULL: fetch our own */

    /* state of the running request */
    sbuf body;
    long status;
    int64_t hdr_retry_ms; /* -1 = no Retry-After header */
    size_t body_cap;      /* bound on this response's body (max_json unless the request says) */
    int abort_reason;
    const mv_graph_mime_cb *mime;
    void *mime_ud;
    int mime_begun;
    uint64_t mime_bytes;
};

/* ------------------------------------------------------------------ small helpers */

static pthread_once_t curl_once = PTHREAD_ONCE_INIT;
static CURLcode curl_init_rc = CURLE_OK;

static void curl_init_once(void)
{
    curl_init_rc = curl_global_init(CURL_GLOBAL_DEFAULT);
}

static char *xprintf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static char *xprintf(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0) return NULL;
    char *s = malloc((size_t)n + 1);
    if (!s) return NULL;
    va_start(ap, fmt);
    vsnprintf(s, (size_t)n + 1, fmt, ap);
    va_end(ap);
    return s;
}

static void sanitize(char *s)
{
    for (; s && *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c < 0x20 || c == 0x7f) *s = '?';
    }
}

/* Replace every occurrence of secret in err with "***" (in place, err stays terminated). */
static void scrub(char *err, size_t errlen, const char *secret)
{
    if (!err || !errlen || !secret || !*secret) return;
    size_t sl = strlen(secret);
    char *p;
    while ((p = strstr(err, secret)) != NULL) {
        size_t rest = strlen(p + sl);
        size_t put = sl < 3 ? sl : 3;
        memcpy(p, "***", put);
        memmove(p + put, p + sl, rest + 1);
    }
}

static void sb_reset(sbuf *b, int wipe)
{
    if (b->p && wipe) OPENSSL_cleanse(b->p, b->cap);
    b->len = 0;
    if (b->p) b->p[0] = '\0';
}

static int sb_put(sbuf *b, const void *d, size_t n)
{
    if (n + 1 > SIZE_MAX / 2 - b->len) return -1;
    size_t need = b->len + n + 1;
    if (need > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < need)
            cap *= 2;
        char *p = realloc(b->p, cap);
        if (!p) return -1;
        b->p = p;
        b->cap = cap;
    }
    if (n) memcpy(b->p + b->len, d, n);
    b->len += n;
    b->p[b->len] = '\0';
    return 0;
}

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

static int has_ctl(const char *s)
{
    for (; *s; s++)
        if ((unsigned char)*s <= 0x20 || (unsigned char)*s == 0x7f) return 1;
    return 0;
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
    if (!base || !link || has_ctl(link)) return 0;
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

int64_t mv_graph__retry_after(const char *value, int64_t now_ms)
{
    if (!value) return -1;
    while (*value == ' ' || *value == '\t')
        value++;
    const char *p = value;
    int64_t secs = 0;
    while (*p >= '0' && *p <= '9') {
        if (secs < RETRY_AFTER_MAX_MS / 1000 + 1) secs = secs * 10 + (*p - '0');
        p++;
    }
    if (p > value) {
        while (*p == ' ' || *p == '\t' || *p == '\r' || *p == '\n')
            p++;
        if (*p) return -1;
        int64_t ms = secs * 1000;
        return ms > RETRY_AFTER_MAX_MS ? RETRY_AFTER_MAX_MS : ms;
    }
    /* RFC 9110 also allows an HTTP-date; Graph sends seconds, but accept both. */
    char date[128];
    snprintf(date, sizeof date, "%s", value);
    size_t n = strlen(date);
    while (n > 0 && (date[n - 1] == '\r' || date[n - 1] == '\n' || date[n - 1] == ' '))
        date[--n] = '\0';
    if (!n) return -1;
    time_t t = curl_getdate(date, NULL);
    if (t == (time_t)-1) return -1;
    int64_t ms = (int64_t)t * 1000 - now_ms;
    if (ms < 0) ms = 0;
    return ms > RETRY_AFTER_MAX_MS ? RETRY_AFTER_MAX_MS : ms;
}

char *mv_graph__path_join(const char *parent, const char *name)
{
    size_t pl = parent ? strlen(parent) : 0;
    size_t nl = strlen(name);
    if (nl > (SIZE_MAX - pl - 2) / 3) return NULL;
    char *s = malloc(pl + 1 + 3 * nl + 1);
    if (!s) return NULL;
    char *w = s;
    if (pl) {
        memcpy(w, parent, pl);
        w += pl;
        *w++ = '/';
    }
    for (const char *r = name; *r; r++) {
        if (*r == '%') {
            memcpy(w, "%25", 3);
            w += 3;
        } else if (*r == '/') {
            memcpy(w, "%2F", 3);
            w += 3;
        } else {
            *w++ = *r;
        }
    }
    *w = '\0';
    return s;
}

/* ------------------------------------------------------------------ JSON parsing */

static mv_err load_object(const char *body, size_t len, const char *what, json_t **out, char *err,
                          size_t errlen)
{
    json_error_t je;
    json_t *j = json_loadb(body ? body : "", len, JSON_REJECT_DUPLICATES, &je);
    if (!j) {
        mv_seterr(err, errlen, MV_EPROTO, "%s: invalid JSON at line %d column %d: %s", what,
                  je.line, je.column, je.text);
        sanitize(err);
        return MV_EPROTO;
    }
    if (!json_is_object(j)) {
        json_decref(j);
        return mv_seterr(err, errlen, MV_EPROTO, "%s: response is not a JSON object", what);
    }
    *out = j;
    return MV_OK;
}

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
    mv_err e = load_object(body, len, what, root, err, errlen);
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

mv_err mv_graph__parse_token(const char *body, size_t len, char **token, int64_t *expires_in,
                             char *err, size_t errlen)
{
    static const char what[] = "token response";
    json_t *root = NULL;
    *token = NULL;
    mv_err e = load_object(body, len, what, &root, err, errlen);
    if (e) return e;
    json_t *t = json_object_get(root, "access_token");
    json_t *x = json_object_get(root, "expires_in");
    int64_t secs = -1;
    if (!json_is_string(t) || json_string_length(t) == 0 || has_ctl(json_string_value(t))) {
        e = mv_seterr(err, errlen, MV_EPROTO, "%s: access_token %s", what,
                      t ? "is not a printable string" : "missing");
        goto out;
    }
    if (json_is_integer(x)) {
        secs = json_integer_value(x);
    } else if (json_is_string(x)) { /* the v1 endpoint sends "3599" */
        const char *s = json_string_value(x);
        char *end = NULL;
        long long v = *s ? strtoll(s, &end, 10) : -1;
        if (end && !*end) secs = v;
    }
    if (secs <= 0 || secs > 366LL * 86400) {
        e = mv_seterr(err, errlen, MV_EPROTO, "%s: expires_in %s", what,
                      x ? "is not a positive number of seconds" : "missing");
        goto out;
    }
    *token = xstrdup(json_string_value(t));
    if (!*token) {
        e = mv_seterr(err, errlen, MV_ENOMEM, "out of memory");
        goto out;
    }
    *expires_in = secs;
out:
    if (json_is_string(t)) OPENSSL_cleanse((char *)json_string_value(t), json_string_length(t));
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
    if ((e = load_object(body, len, what, &root, err, errlen))) goto out;
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
                    res.retry_after_ms = mv_graph__retry_after(json_string_value(hv), mv_now_ms());
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
            mv_graph__error_text(res.status, txt, txt ? strlen(txt) : 0, res.error,
                                 sizeof res.error, NULL, 0);
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

void mv_graph__error_text(long status, const char *body, size_t len, char *out, size_t outlen,
                          char *code, size_t codelen)
{
    if (code && codelen) code[0] = '\0';
    if (!out || !outlen) return;
    snprintf(out, outlen, "HTTP %ld", status);
    json_t *root = body && len ? json_loadb(body, len, 0, NULL) : NULL;
    if (!json_is_object(root)) goto out;
    json_t *e = json_object_get(root, "error");
    const char *c = NULL, *m = NULL;
    size_t mlen = 0;
    if (json_is_object(e)) { /* Graph: {"error":{"code","message"}} */
        json_t *jc = json_object_get(e, "code"), *jm = json_object_get(e, "message");
        c = json_is_string(jc) ? json_string_value(jc) : NULL;
        m = json_is_string(jm) ? json_string_value(jm) : NULL;
        mlen = m ? strlen(m) : 0;
    } else if (json_is_string(e)) { /* AAD: {"error","error_description"} */
        json_t *jd = json_object_get(root, "error_description");
        c = json_string_value(e);
        m = json_is_string(jd) ? json_string_value(jd) : NULL;
        /* first line: the rest is trace/correlation ids, which AAD separates by "\r\n" in
         * older answers and by a space in current ones */
        mlen = m ? strcspn(m, "\r\n") : 0;
        const char *tr = m ? strstr(m, " Trace ID:") : NULL;
        if (tr && (size_t)(tr - m) < mlen) mlen = (size_t)(tr - m);
    }
    if (c && !*c) c = NULL;
    if (c && m && mlen)
        snprintf(out, outlen, "HTTP %ld %s: %.*s", status, c, (int)(mlen > 4096 ? 4096 : mlen), m);
    else if (c)
        snprintf(out, outlen, "HTTP %ld %s", status, c);
    else if (m && mlen)
        snprintf(out, outlen, "HTTP %ld: %.*s", status, (int)(mlen > 4096 ? 4096 : mlen), m);
    if (c && code && codelen) {
        snprintf(code, codelen, "%s", c);
        sanitize(code);
    }
out:
    json_decref(root);
    sanitize(out);
}

/* ------------------------------------------------------------------ curl callbacks */

static size_t on_header(char *p, size_t sz, size_t n, void *ud)
{
    mv_graph *g = ud;
    size_t len = sz * n;
    if (len >= 5 && !strncmp(p, "HTTP/", 5)) {
        g->hdr_retry_ms = -1; /* a new response (after 1xx): forget earlier headers */
    } else if (len > 12 && !strncasecmp(p, "Retry-After:", 12)) {
        char v[128];
        size_t vl = len - 12 < sizeof v - 1 ? len - 12 : sizeof v - 1;
        memcpy(v, p + 12, vl);
        v[vl] = '\0';
        g->hdr_retry_ms = mv_graph__retry_after(v, mv_now_ms());
    }
    return len;
}

static size_t on_write(char *p, size_t sz, size_t n, void *ud)
{
    mv_graph *g = ud;
    size_t len = sz * n;
    long st = 0;
    curl_easy_getinfo(g->curl, CURLINFO_RESPONSE_CODE, &st);
    int ok = st >= 200 && st < 300;
    if (g->mime && ok) {
        if (!g->mime_begun) {
            curl_off_t cl = -1;
            if (curl_easy_getinfo(g->curl, CURLINFO_CONTENT_LENGTH_DOWNLOAD_T, &cl) != CURLE_OK)
                cl = -1;
            if (cl >= 0 && (uint64_t)cl > g->o.max_message) {
                g->abort_reason = AB_MIME_BIG;
                return 0;
            }
            g->mime_begun = 1;
            if (g->mime->begin && g->mime->begin(g->mime_ud, cl >= 0 ? (int64_t)cl : -1)) {
                g->abort_reason = AB_CANCEL;
                return 0;
            }
        }
        if (len > g->o.max_message - g->mime_bytes) {
            g->abort_reason = AB_MIME_BIG;
            return 0;
        }
        g->mime_bytes += len;
        if (len && g->mime->data && g->mime->data(g->mime_ud, p, len)) {
            g->abort_reason = AB_CANCEL;
            return 0;
        }
        return len;
    }
    size_t cap = g->body_cap;
    if (!ok && cap > ERRBODY_MAX) cap = ERRBODY_MAX;
    if (len > cap - g->body.len) {
        if (!ok) return len; /* error bodies: keep the head, drop the rest */
        g->abort_reason = AB_JSON_BIG;
        return 0;
    }
    if (sb_put(&g->body, p, len)) {
        g->abort_reason = AB_NOMEM;
        return 0;
    }
    return len;
}

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

static mv_err transport_error(mv_graph *g, CURLcode rc, const char *what, char *err, size_t errlen)
{
    const char *detail = g->errbuf[0] ? g->errbuf : curl_easy_strerror(rc);
    mv_err e;
    switch (rc) {
    case CURLE_OPERATION_TIMEDOUT:
        e = mv_seterr(err, errlen, MV_ETIMEDOUT, "%s timed out: %s", what, detail);
        break;
    case CURLE_OUT_OF_MEMORY:
        e = mv_seterr(err, errlen, MV_ENOMEM, "out of memory");
        break;
    case CURLE_URL_MALFORMAT:
    case CURLE_UNSUPPORTED_PROTOCOL:
        e = mv_seterr(err, errlen, MV_EINVAL, "%s: bad URL: %s", what, detail);
        break;
    default:
        e = mv_seterr(err, errlen, MV_ENET, "%s failed: %s (curl error %d)", what, detail, (int)rc);
        break;
    }
    sanitize(err);
    return e;
}

/* Run one HTTP exchange. MV_OK means a complete response arrived (any status, in g->status
 * and g->body); otherwise a transport failure or a local bound was hit. */
static mv_err perform(mv_graph *g, const req *r, char *err, size_t errlen)
{
    struct curl_slist *hdrs = NULL, *auth_node = NULL;
    char line[256], crid[37];
    char *authz = NULL;
    mv_err e = MV_OK;

    sb_reset(&g->body, 0);
    g->status = 0;
    g->hdr_retry_ms = -1;
    g->body_cap = r->max_body ? r->max_body : g->o.max_json;
    g->abort_reason = AB_NONE;
    g->mime = r->mime;
    g->mime_ud = r->mime_ud;
    g->mime_begun = 0;
    g->mime_bytes = 0;
    g->errbuf[0] = '\0';
    g->retry_after_ms = 0;

    mv_uuid(crid);
    snprintf(line, sizeof line, "client-request-id: %s", crid);
    struct curl_slist *t;
#define ADD_HDR(s)                                                                                 \
    do {                                                                                           \
        t = curl_slist_append(hdrs, (s));                                                          \
        if (!t) {                                                                                  \
            e = mv_seterr(err, errlen, MV_ENOMEM, "out of memory");                                \
            goto out;                                                                              \
        }                                                                                          \
        hdrs = t;                                                                                  \
    } while (0)
    ADD_HDR(line);
    if (!r->mime) ADD_HDR("Accept: application/json");
    if (r->post) {
        ADD_HDR(r->post_json ? "Content-Type: application/json"
                             : "Content-Type: application/x-www-form-urlencoded");
        ADD_HDR("Expect:");
    }
    if (r->prefer) {
        snprintf(line, sizeof line, "Prefer: %s", r->prefer);
        ADD_HDR(line);
    }
    if (r->auth) {
        authz = xprintf("Authorization: Bearer %s", g->token ? g->token : "");
        if (!authz) {
            e = mv_seterr(err, errlen, MV_ENOMEM, "out of memory");
            goto out;
        }
        ADD_HDR(authz);
        for (auth_node = hdrs; auth_node->next; auth_node = auth_node->next) {}
    }
#undef ADD_HDR

    curl_easy_setopt(g->curl, CURLOPT_URL, r->url);
    curl_easy_setopt(g->curl, CURLOPT_HTTPHEADER, hdrs);
    if (r->post) {
        curl_easy_setopt(g->curl, CURLOPT_POST, 1L);
        curl_easy_setopt(g->curl, CURLOPT_POSTFIELDS, r->post);
        curl_easy_setopt(g->curl, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)r->postlen);
    } else {
        curl_easy_setopt(g->curl, CURLOPT_HTTPGET, 1L);
    }
    if (r->method) curl_easy_setopt(g->curl, CURLOPT_CUSTOMREQUEST, r->method);

    int64_t t0 = mv_mono_ms();
    CURLcode rc = curl_easy_perform(g->curl);
    curl_easy_getinfo(g->curl, CURLINFO_RESPONSE_CODE, &g->status);
    mv_debug("graph http", " kind=\"%s\" status=%ld curl=%d ms=%" PRId64 " client_request_id=%s",
             r->what, g->status, (int)rc, mv_mono_ms() - t0, crid);

    if (rc != CURLE_OK) {
        switch (g->abort_reason) {
        case AB_JSON_BIG:
            e = mv_seterr(err, errlen, MV_ETOOBIG, "%s: JSON response larger than %s (%zu bytes)",
                          r->what, g->body_cap == g->o.max_json ? "max_json" : "its bound",
                          g->body_cap);
            break;
        case AB_MIME_BIG:
            e = mv_seterr(err, errlen, MV_ETOOBIG,
                          "%s: message larger than max_message (%" PRIu64 " bytes)", r->what,
                          g->o.max_message);
            break;
        case AB_CANCEL:
            e = mv_seterr(err, errlen, MV_ECANCEL, "%s: stopped by the callback", r->what);
            break;
        case AB_NOMEM:
            e = mv_seterr(err, errlen, MV_ENOMEM, "out of memory");
            break;
        default:
            e = transport_error(g, rc, r->what, err, errlen);
            break;
        }
        goto out;
    }
    if (g->status == 429 || g->status == 503 || g->status == 504)
        g->retry_after_ms = g->hdr_retry_ms > 0 ? g->hdr_retry_ms : 0;
    if (r->mime && g->status >= 200 && g->status < 300 && !g->mime_begun) {
        /* an empty body: the write callback never ran */
        curl_off_t cl = -1;
        if (curl_easy_getinfo(g->curl, CURLINFO_CONTENT_LENGTH_DOWNLOAD_T, &cl) != CURLE_OK)
            cl = -1;
        g->mime_begun = 1;
        if (r->mime->begin && r->mime->begin(r->mime_ud, cl >= 0 ? (int64_t)cl : -1))
            e = mv_seterr(err, errlen, MV_ECANCEL, "%s: stopped by the callback", r->what);
    }
out:
    if (r->method) curl_easy_setopt(g->curl, CURLOPT_CUSTOMREQUEST, NULL);
    if (r->post) {
        curl_easy_setopt(g->curl, CURLOPT_POSTFIELDS, NULL);
        curl_easy_setopt(g->curl, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)-1);
    }
    curl_easy_setopt(g->curl, CURLOPT_HTTPHEADER, NULL);
    if (auth_node) OPENSSL_cleanse(auth_node->data, strlen(auth_node->data));
    curl_slist_free_all(hdrs);
    if (authz) {
        OPENSSL_cleanse(authz, strlen(authz));
        free(authz);
    }
    g->mime = NULL;
    g->mime_ud = NULL;
    return e;
}

/* Map a non-2xx status of a Graph call to an mv_err with "HTTP <status> <code>: <message>". */
static mv_err map_status(mv_graph *g, const char *suffix, char *err, size_t errlen)
{
    char text[1024];
    long st = g->status;
    mv_graph__error_text(st, g->body.p, g->body.len, text, sizeof text, NULL, 0);
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

static char *b64url(const unsigned char *in, size_t n)
{
    char *out = malloc(4 * ((n + 2) / 3) + 1);
    if (!out) return NULL;
    int len = EVP_EncodeBlock((unsigned char *)out, in, (int)n);
    while (len > 0 && out[len - 1] == '=')
        len--;
    out[len] = '\0';
    for (char *c = out; *c; c++)
        *c = *c == '+' ? '-' : *c == '/' ? '_' : *c;
    return out;
}

/* x5t of a PEM certificate: base64url(SHA-1(DER)). */
static mv_err cert_thumbprint(const char *pem, char *out, size_t outlen, char *err, size_t errlen)
{
    BIO *bio = BIO_new_mem_buf(pem, -1);
    X509 *x = bio ? PEM_read_bio_X509(bio, NULL, NULL, NULL) : NULL;
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;
    mv_err e = MV_OK;
    if (!x || X509_digest(x, EVP_sha1(), md, &mdlen) != 1) {
        e = mv_seterr(err, errlen, MV_EINVAL, "client certificate: not a PEM X.509 certificate");
    } else {
        char *t = b64url(md, mdlen);
        if (!t)
            e = MV_ENOMEM;
        else
            snprintf(out, outlen, "%s", t);
        free(t);
    }
    X509_free(x);
    BIO_free(bio);
    return e;
}

/* RFC 7523 client assertion for the token endpoint aud: header.payload.signature. */
static mv_err build_assertion(mv_graph *g, const char *aud, char **jwt, char *err, size_t errlen)
{
    char jti[37], header[160], payload[2048];
    mv_uuid(jti);
    long long now = mv_now_ms() / 1000;
    snprintf(header, sizeof header, "{\"alg\":\"RS256\",\"typ\":\"JWT\",\"x5t\":\"%s\"}", g->x5t);
    json_t *claims = json_pack("{s:s,s:s,s:s,s:s,s:I,s:I,s:I}", "aud", aud, "iss", g->client_id,
                               "sub", g->client_id, "jti", jti, "nbf", (json_int_t)now, "iat",
                               (json_int_t)now, "exp", (json_int_t)(now + 600));
    char *cj = claims ? json_dumps(claims, JSON_COMPACT) : NULL;
    json_decref(claims);
    if (!cj) return mv_seterr(err, errlen, MV_ENOMEM, "out of memory");
    snprintf(payload, sizeof payload, "%s", cj);
    free(cj);
    char *h64 = b64url((const unsigned char *)header, strlen(header));
    char *p64 = b64url((const unsigned char *)payload, strlen(payload));
    char *input = h64 && p64 ? xprintf("%s.%s", h64, p64) : NULL;
    BIO *bio = BIO_new_mem_buf(g->key_pem, -1);
    EVP_PKEY *pk = bio ? PEM_read_bio_PrivateKey(bio, NULL, NULL, NULL) : NULL;
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    unsigned char *sig = NULL;
    size_t siglen = 0;
    char *s64 = NULL;
    mv_err e = MV_OK;
    if (!input || !md) {
        e = mv_seterr(err, errlen, MV_ENOMEM, "out of memory");
    } else if (!pk || EVP_PKEY_get_base_id(pk) != EVP_PKEY_RSA) {
        e = mv_seterr(err, errlen, MV_EINVAL, "client certificate: the private key is not PEM RSA");
    } else if (EVP_DigestSignInit(md, NULL, EVP_sha256(), NULL, pk) != 1 ||
               EVP_DigestSign(md, NULL, &siglen, (const unsigned char *)input, strlen(input)) !=
                   1 ||
               !(sig = malloc(siglen)) ||
               EVP_DigestSign(md, sig, &siglen, (const unsigned char *)input, strlen(input)) != 1 ||
               !(s64 = b64url(sig, siglen))) {
        e = mv_seterr(err, errlen, MV_ERR, "client assertion: signing failed");
    } else if (!(*jwt = xprintf("%s.%s", input, s64))) {
        e = mv_seterr(err, errlen, MV_ENOMEM, "out of memory");
    }
    EVP_MD_CTX_free(md);
    EVP_PKEY_free(pk);
    BIO_free(bio);
    free(sig);
    free(s64);
    free(input);
    free(h64);
    free(p64);
    return e;
}

static mv_err fetch_token(mv_graph *g, char *err, size_t errlen)
{
    char *url = NULL, *form = NULL, *e_tenant = NULL, *e_cid = NULL, *e_sec = NULL, *e_scope = NULL,
         *tok = NULL;
    char *jwt = NULL;
    mv_err e = MV_OK;
    if ((!g->secret || !*g->secret) && !g->key_pem)
        return mv_seterr(err, errlen, MV_EAUTH,
                         "token: no client secret or certificate configured and no valid token "
                         "installed");
    e_tenant = curl_easy_escape(g->curl, g->tenant, 0);
    e_cid = curl_easy_escape(g->curl, g->client_id, 0);
    e_scope = curl_easy_escape(g->curl, g->scope, 0);
    if (!e_tenant || !e_cid || !e_scope) {
        e = mv_seterr(err, errlen, MV_ENOMEM, "out of memory");
        goto out;
    }
    url = xprintf("%s/%s/oauth2/v2.0/token", g->login_base, e_tenant);
    if (!url) {
        e = mv_seterr(err, errlen, MV_ENOMEM, "out of memory");
        goto out;
    }
    if (g->key_pem) {
        if ((e = build_assertion(g, url, &jwt, err, errlen))) goto out;
        e_sec = curl_easy_escape(g->curl, jwt, 0);
        form = e_sec ? xprintf("grant_type=client_credentials&client_id=%s&client_assertion_type="
                               "urn%%3Aietf%%3Aparams%%3Aoauth%%3Aclient-assertion-type%%3Ajwt-"
                               "bearer&client_assertion=%s&scope=%s",
                               e_cid, e_sec, e_scope)
                     : NULL;
    } else {
        e_sec = curl_easy_escape(g->curl, g->secret, 0);
        form = e_sec ? xprintf("grant_type=client_credentials&client_id=%s&client_secret=%s&"
                               "scope=%s",
                               e_cid, e_sec, e_scope)
                     : NULL;
    }
    if (!url || !form) {
        e = mv_seterr(err, errlen, MV_ENOMEM, "out of memory");
        goto out;
    }
    req r = {.url = url, .post = form, .postlen = strlen(form), .what = "token request"};
    if ((e = perform(g, &r, err, errlen))) goto out;
    if (g->status < 200 || g->status >= 300) {
        char text[1024], code[64];
        mv_graph__error_text(g->status, g->body.p, g->body.len, text, sizeof text, code,
                             sizeof code);
        if (g->status == 429 || g->status == 503 || g->status == 504)
            e = MV_EBUSY;
        else if (g->status >= 500)
            e = MV_ESERVER;
        else if (g->status >= 400)
            e = MV_EAUTH; /* invalid_client, unauthorized_client, unknown tenant, ... */
        else
            e = MV_EPROTO;
        mv_seterr(err, errlen, e, "token: %s%s", text,
                  g->status >= 300 && g->status < 400 ? " (redirects are not followed)" : "");
        goto out;
    }
    int64_t secs = 0;
    e = mv_graph__parse_token(g->body.p, g->body.len, &tok, &secs, err, errlen);
    if (e) goto out;
    if (g->token) {
        OPENSSL_cleanse(g->token, strlen(g->token));
        free(g->token);
    }
    g->token = tok;
    tok = NULL;
    g->token_exp_ms = mv_now_ms() + secs * 1000;
out:
    sb_reset(&g->body, 1); /* held the token (or an error echoing the request) */
    if (form) {
        OPENSSL_cleanse(form, strlen(form));
        free(form);
    }
    if (e_sec) {
        OPENSSL_cleanse(e_sec, strlen(e_sec));
        curl_free(e_sec);
    }
    if (jwt) {
        OPENSSL_cleanse(jwt, strlen(jwt));
        free(jwt);
    }
    curl_free(e_tenant);
    curl_free(e_cid);
    curl_free(e_scope);
    free(url);
    free(tok);
    return e;
}

static int token_fresh(const mv_graph *g)
{
    return g->token && mv_now_ms() + REFRESH_MARGIN_MS < g->token_exp_ms;
}

static void drop_token(mv_graph *g)
{
    if (g->token) {
        OPENSSL_cleanse(g->token, strlen(g->token));
        free(g->token);
    }
    g->token = NULL;
    g->token_exp_ms = 0;
}

/* A Graph request with the bearer token: refreshed when near expiry, and once on a 401.
 * MV_OK only for a 2xx answer; every other status is mapped. */
static mv_err graph_call(mv_graph *g, req *r, char *err, size_t errlen)
{
    mv_err e;
    r->auth = 1;
    if (!r->what) r->what = "graph request";
    char *stale = NULL;
    for (int attempt = 0;; attempt++) {
        if (!token_fresh(g)) {
            e = g->tsrc.need ? g->tsrc.need(g->tsrc.ud, g, stale, err, errlen)
                             : fetch_token(g, err, errlen);
            if (!e && !token_fresh(g))
                e = mv_seterr(err, errlen, MV_EAUTH,
                              "token: the token source gave no usable token");
            if (stale) {
                OPENSSL_cleanse(stale, strlen(stale));
                free(stale);
                stale = NULL;
            }
            if (e) return e;
        }
        int w = r->weight > 0 ? r->weight : 1;
        if (g->gate.acquire && (e = g->gate.acquire(g->gate.ud, w, err, errlen))) return e;
        e = perform(g, r, err, errlen);
        if (g->gate.acquire && g->gate.release) g->gate.release(g->gate.ud, w);
        if (e) return e;
        if (g->status >= 200 && g->status < 300) return MV_OK;
        if (g->status == 401 && attempt == 0) {
            mv_debug("graph: 401, refreshing the token once", "%s", "");
            stale = g->token ? xstrdup(g->token) : NULL;
            drop_token(g);
            continue;
        }
        return map_status(g, g->status == 401 ? " (after a token refresh)" : NULL, err, errlen);
    }
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
    if ((strncasecmp(v, "https://", 8) && strncasecmp(v, "http://", 7)) || has_ctl(v))
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

    pthread_once(&curl_once, curl_init_once);
    if (curl_init_rc != CURLE_OK)
        return mv_seterr(err, errlen, MV_ERR, "curl_global_init failed: %s",
                         curl_easy_strerror(curl_init_rc));

    g = calloc(1, sizeof *g);
    if (!g) return mv_seterr(err, errlen, MV_ENOMEM, "out of memory");
    g->o = *o;
    g->login_base = dup_base(o->login_base);
    g->graph_base = dup_base(o->graph_base);
    g->tenant = xstrdup(o->tenant_id);
    g->client_id = xstrdup(o->client_id);
    g->secret = xstrdup(o->client_secret ? o->client_secret : "");
    g->ca_file = o->ca_file && *o->ca_file ? xstrdup(o->ca_file) : NULL;
    g->origin = g->graph_base;
    if (!g->login_base || !g->graph_base || !g->tenant || !g->client_id || !g->secret ||
        (o->ca_file && *o->ca_file && !g->ca_file)) {
        e = mv_seterr(err, errlen, MV_ENOMEM, "out of memory");
        goto fail;
    }
    g->o.login_base = g->login_base;
    g->o.graph_base = g->graph_base;
    g->o.tenant_id = g->tenant;
    g->o.client_id = g->client_id;
    g->o.client_secret = g->secret;
    g->o.ca_file = g->ca_file;
    if (o->client_key_pem && *o->client_key_pem) {
        if (!o->client_cert_pem || !*o->client_cert_pem) {
            e = mv_seterr(err, errlen, MV_EINVAL, "graph: a client key needs its certificate");
            goto fail;
        }
        if ((e = cert_thumbprint(o->client_cert_pem, g->x5t, sizeof g->x5t, err, errlen)))
            goto fail;
        if (!(g->key_pem = xstrdup(o->client_key_pem))) {
            e = mv_seterr(err, errlen, MV_ENOMEM, "out of memory");
            goto fail;
        }
    }
    g->o.client_key_pem = g->key_pem;
    g->o.client_cert_pem = NULL;
    if (url_split(g->graph_base, &u)) {
        e = mv_seterr(err, errlen, MV_EINVAL, "graph: graph_base is not a valid URL");
        goto fail;
    }
    /* the resource of the client-credentials scope is the Graph host (no path, no port) */
    g->scope = xprintf("%s://%s/.default", u.scheme, u.host);
    if (!g->scope) {
        e = mv_seterr(err, errlen, MV_ENOMEM, "out of memory");
        goto fail;
    }

    g->curl = curl_easy_init();
    if (!g->curl) {
        e = mv_seterr(err, errlen, MV_ENOMEM, "curl_easy_init failed");
        goto fail;
    }
    CURL *c = g->curl;
    CURLcode rc = CURLE_OK;
#define SET(opt, val)                                                                              \
    if (rc == CURLE_OK) rc = curl_easy_setopt(c, opt, val)
    SET(CURLOPT_NOSIGNAL, 1L);
    SET(CURLOPT_TIMEOUT_MS, (long)o->timeout_ms);
    SET(CURLOPT_CONNECTTIMEOUT_MS, (long)o->connect_timeout_ms);
    if (o->idle_timeout_ms > 0) { /* stalls fail early; long downloads that move go on */
        SET(CURLOPT_LOW_SPEED_LIMIT, 1L);
        SET(CURLOPT_LOW_SPEED_TIME, (long)((o->idle_timeout_ms + 999) / 1000));
    }
    SET(CURLOPT_HTTP_VERSION, (long)CURL_HTTP_VERSION_1_1);
    SET(CURLOPT_PROTOCOLS_STR, "http,https");
    SET(CURLOPT_REDIR_PROTOCOLS_STR, "https");
    SET(CURLOPT_FOLLOWLOCATION, 0L);
    SET(CURLOPT_SSL_VERIFYPEER, o->verify ? 1L : 0L);
    SET(CURLOPT_SSL_VERIFYHOST, o->verify ? 2L : 0L);
    if (g->ca_file) SET(CURLOPT_CAINFO, g->ca_file);
    SET(CURLOPT_USERAGENT, USER_AGENT);
    SET(CURLOPT_TCP_KEEPALIVE, 1L);
    SET(CURLOPT_ERRORBUFFER, g->errbuf);
    SET(CURLOPT_WRITEFUNCTION, on_write);
    SET(CURLOPT_WRITEDATA, g);
    SET(CURLOPT_HEADERFUNCTION, on_header);
    SET(CURLOPT_HEADERDATA, g);
#undef SET
    if (rc != CURLE_OK) {
        e = mv_seterr(err, errlen, MV_ERR, "graph: curl option refused: %s",
                      curl_easy_strerror(rc));
        goto fail;
    }
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
    if (g->curl) curl_easy_cleanup(g->curl);
    drop_token(g);
    if (g->secret) {
        OPENSSL_cleanse(g->secret, strlen(g->secret));
        free(g->secret);
    }
    if (g->key_pem) {
        OPENSSL_cleanse(g->key_pem, strlen(g->key_pem));
        free(g->key_pem);
    }
    if (g->body.p) OPENSSL_cleanse(g->body.p, g->body.cap);
    free(g->body.p);
    free(g->login_base);
    free(g->graph_base);
    free(g->tenant);
    free(g->client_id);
    free(g->ca_file);
    free(g->scope);
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
    mv_err e = token_fresh(g) ? MV_OK : fetch_token(g, err, errlen);
    if (e) {
        scrub(err, errlen, g->secret);
        return e;
    }
    if (token) *token = g->token;
    if (expires_ms) *expires_ms = g->token_exp_ms;
    return MV_OK;
}

mv_err mv_graph_fetch_token(mv_graph *g, const char **token, int64_t *expires_ms, char *err,
                            size_t errlen)
{
    if (err && errlen) err[0] = '\0';
    mv_err e = fetch_token(g, err, errlen);
    if (e) {
        scrub(err, errlen, g->secret);
        return e;
    }
    if (token) *token = g->token;
    if (expires_ms) *expires_ms = g->token_exp_ms;
    return MV_OK;
}

void mv_graph_set_token_source(mv_graph *g, const mv_graph_token_source *src)
{
    if (src)
        g->tsrc = *src;
    else
        memset(&g->tsrc, 0, sizeof g->tsrc);
}

void mv_graph_set_token(mv_graph *g, const char *token, int64_t expires_ms)
{
    drop_token(g);
    if (!token || !*token || has_ctl(token)) return; /* unusable in a header: fetch our own */
    g->token = xstrdup(token);
    if (g->token) g->token_exp_ms = expires_ms;
}

/* Shrink the response buffer after a large answer so an idle handle stays small. */
static void trim_body(mv_graph *g)
{
    if (g->body.cap > (1u << 20)) {
        free(g->body.p);
        g->body.p = NULL;
        g->body.len = g->body.cap = 0;
    }
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
        if ((e = parse(pud, g->body.p, g->body.len, &next, err, errlen))) break;
        free(url);
        url = next;
        next = NULL;
        if (url && (e = check_link(g, url, "@odata.nextLink", err, errlen))) break;
    }
    free(url);
    free(next);
    trim_body(g);
    scrub(err, errlen, g->secret);
    return e;
}

typedef struct users_pud {
    mv_graph_user_fn cb;
    void *ud;
} users_pud;

static mv_err users_page(void *pud, const char *body, size_t len, char **next, char *err,
                         size_t errlen)
{
    users_pud *u = pud;
    return mv_graph__parse_users(body, len, u->cb, u->ud, next, err, errlen);
}

mv_err mv_graph_list_users(mv_graph *g, mv_graph_user_fn cb, void *ud, char *err, size_t errlen)
{
    if (err && errlen) err[0] = '\0';
    users_pud u = {cb, ud};
    return walk_pages(
        g,
        xprintf("%s/users?$select=id,userPrincipalName,mail,assignedLicenses&$top=999",
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
        fid = curl_easy_escape(g->curl, folder_id, 0);
        if (!fid) return mv_seterr(w->err, w->errlen, MV_ENOMEM, "out of memory");
        url = xprintf("%s/users/%s/mailFolders/%s/childFolders?includeHiddenFolders=true&$top=100",
                      g->graph_base, w->user_esc, fid);
    } else {
        url = xprintf("%s/users/%s/mailFolders?includeHiddenFolders=true&$top=100", g->graph_base,
                      w->user_esc);
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
        e = mv_graph__parse_folders(g->body.p, g->body.len, on_rawfolder, w, &next, w->err,
                                    w->errlen);
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
    curl_free(fid);
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
    char *ue = curl_easy_escape(g->curl, user, 0);
    if (!ue) return mv_seterr(err, errlen, MV_ENOMEM, "out of memory");
    walk w = {.g = g, .user_esc = ue, .cb = cb, .ud = ud, .err = err, .errlen = errlen};
    mv_err e = walk_level(&w, NULL, NULL, 1);
    curl_free(ue);
    trim_body(g);
    scrub(err, errlen, g->secret);
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
        ue = curl_easy_escape(g->curl, user, 0);
        fe = curl_easy_escape(g->curl, folder_id, 0);
        if (ue && fe)
            url = xprintf("%s/users/%s/mailFolders/%s/messages/delta?$select=id", g->graph_base, ue,
                          fe);
    }
    if (!url) {
        e = mv_seterr(err, errlen, MV_ENOMEM, "out of memory");
        goto out;
    }
    snprintf(prefer, sizeof prefer, "IdType=\"ImmutableId\", odata.maxpagesize=%d", g->o.page_size);
    req r = {.url = url, .prefer = prefer};
    e = graph_call(g, &r, err, errlen);
    if (e == MV_ENOTFOUND && g->status == 410) {
        char text[1024], code[64];
        mv_graph__error_text(g->status, g->body.p, g->body.len, text, sizeof text, code,
                             sizeof code);
        const char *msg = strstr(text, ": ");
        mv_seterr(err, errlen, MV_ENOTFOUND, "sync state expired (%s): %s",
                  code[0] ? code : "HTTP 410", msg ? msg + 2 : text);
        goto out;
    }
    if (e) goto out;
    if ((e = mv_graph__parse_delta(g->body.p, g->body.len, cb, ud, &link, &done, err, errlen)))
        goto out;
    if ((e = check_link(g, link, done ? "@odata.deltaLink" : "@odata.nextLink", err, errlen)))
        goto out;
    *next_link = link;
    *complete = done;
    link = NULL;
out:
    free(link);
    free(url);
    curl_free(ue);
    curl_free(fe);
    trim_body(g);
    scrub(err, errlen, g->secret);
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
    ue = curl_easy_escape(g->curl, user, 0);
    me = curl_easy_escape(g->curl, message_id, 0);
    if (ue && me) url = xprintf("%s/users/%s/messages/%s/$value", g->graph_base, ue, me);
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
    curl_free(ue);
    curl_free(me);
    trim_body(g);
    scrub(err, errlen, g->secret);
    return e;
}

typedef struct ids_pud {
    mv_graph_id_fn cb;
    void *ud;
} ids_pud;

static mv_err ids_page(void *pud, const char *body, size_t len, char **next, char *err,
                       size_t errlen)
{
    ids_pud *p = pud;
    return mv_graph__parse_idlist(body, len, p->cb, p->ud, next, err, errlen);
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
    ue = curl_easy_escape(g->curl, user, 0);
    fe = curl_easy_escape(g->curl, folder_id, 0);
    if (ue && fe)
        url = xprintf("%s/users/%s/mailFolders/%s/messages?$filter=receivedDateTime%%20lt%%20%s&"
                      "$select=id&$top=%d",
                      g->graph_base, ue, fe, iso, g->o.page_size);
    curl_free(ue);
    curl_free(fe);
    ids_pud p = {cb, ud};
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
    ue = curl_easy_escape(g->curl, user, 0);
    me = curl_easy_escape(g->curl, message_id, 0);
    if (ue && me) url = xprintf("%s/users/%s/messages/%s", g->graph_base, ue, me);
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
    curl_free(ue);
    curl_free(me);
    trim_body(g);
    scrub(err, errlen, g->secret);
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
    ue = curl_easy_escape(g->curl, user, 0);
    root = json_object();
    reqs = json_array();
    if (!ue || !root || !reqs) goto nomem;
    for (size_t i = 0; i < n; i++) {
        char id[24], *me = curl_easy_escape(g->curl, items[i].message_id, 0);
        char *u = me ? xprintf("/users/%s/messages/%s/$value", ue, me) : NULL;
        curl_free(me);
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
    url = xprintf("%s/$batch", g->graph_base);
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
        e = mv_graph__parse_batch(g->body.p, g->body.len, n, g->o.max_message, batch_deliver, &b,
                                  err, errlen);
    }
    goto out;
nomem:
    e = mv_seterr(err, errlen, MV_ENOMEM, "out of memory");
out:
    free(url);
    free(body);
    json_decref(reqs);
    json_decref(root);
    curl_free(ue);
    sb_reset(&g->body, 0);
    trim_body(g);
    scrub(err, errlen, g->secret);
    return e;
}

/* http.c - one libcurl easy handle per mv_http, shared by the Graph and EWS clients.
 *
 * Why this shape
 * - The handle keeps its connections alive across requests (token endpoint and service each
 *   keep theirs in the handle's cache). Signals are never used (NOSIGNAL); every request has a
 *   total, a connect and an idle timeout.
 * - A 2xx body is either buffered (bounded; past the bound the transfer is cut: MV_ETOOBIG) or
 *   handed piece by piece to the request's sink (bounded too). Non-2xx bodies are buffered up
 *   to MV_HTTP_ERRBODY_MAX and the rest dropped, so a huge error page never fails a request
 *   that the caller only needs the status of.
 * - Redirects are never followed: a server cannot make us send a bearer token or a password
 *   anywhere else.
 * - The Authorization header line (bearer token, or Basic/NTLM done by libcurl from user and
 *   password) lives only for the request and is cleansed after it. */
#include "mv/http.h"
#include "mv/log.h"

#include <inttypes.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <curl/curl.h>
#include <openssl/crypto.h>

#define USER_AGENT "mailvault/0.1"

enum { AB_NONE = 0, AB_BODY_BIG, AB_SINK_BIG, AB_CANCEL, AB_NOMEM };

struct mv_http {
    mv_http_opts o;
    char *ca_file;
    CURL *curl;
    char errbuf[CURL_ERROR_SIZE];

    /* the running (or last) exchange */
    char *body;
    size_t len, cap;
    size_t body_cap;
    long status;
    int64_t hdr_retry_ms; /* -1 = no Retry-After header */
    int64_t retry_after_ms;
    int abort_reason;
    const mv_http_sink *sink;
    int sink_begun;
    uint64_t sink_bytes;
};

static pthread_once_t curl_once = PTHREAD_ONCE_INIT;
static CURLcode curl_init_rc = CURLE_OK;

static void curl_init_once(void)
{
    curl_init_rc = curl_global_init(CURL_GLOBAL_DEFAULT);
}

int64_t mv_http__retry_after(const char *value, int64_t now_ms)
{
    if (!value) return -1;
    while (*value == ' ' || *value == '\t')
        value++;
    const char *p = value;
    int64_t secs = 0;
    while (*p >= '0' && *p <= '9') {
        if (secs < MV_HTTP_RETRY_AFTER_MAX_MS / 1000 + 1) secs = secs * 10 + (*p - '0');
        p++;
    }
    if (p > value) {
        while (*p == ' ' || *p == '\t' || *p == '\r' || *p == '\n')
            p++;
        if (*p) return -1;
        int64_t ms = secs * 1000;
        return ms > MV_HTTP_RETRY_AFTER_MAX_MS ? MV_HTTP_RETRY_AFTER_MAX_MS : ms;
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
    return ms > MV_HTTP_RETRY_AFTER_MAX_MS ? MV_HTTP_RETRY_AFTER_MAX_MS : ms;
}

static int body_put(mv_http *h, const void *d, size_t n)
{
    if (h->len + n + 1 > h->cap) {
        size_t nc = h->cap ? h->cap : 4096;
        while (nc < h->len + n + 1)
            nc *= 2;
        char *np = malloc(nc);
        if (!np) return -1;
        if (h->body) { /* no realloc: the old buffer may hold a token, cleanse it */
            memcpy(np, h->body, h->len);
            OPENSSL_cleanse(h->body, h->cap);
            free(h->body);
        }
        h->body = np;
        h->cap = nc;
    }
    memcpy(h->body + h->len, d, n);
    h->len += n;
    h->body[h->len] = '\0';
    return 0;
}

static size_t on_header(char *p, size_t sz, size_t n, void *ud)
{
    mv_http *h = ud;
    size_t len = sz * n;
    if (len >= 5 && !strncmp(p, "HTTP/", 5)) {
        h->hdr_retry_ms = -1; /* a new response (after 1xx or an auth round): forget earlier */
    } else if (len > 12 && !strncasecmp(p, "Retry-After:", 12)) {
        char v[128];
        size_t vl = len - 12 < sizeof v - 1 ? len - 12 : sizeof v - 1;
        memcpy(v, p + 12, vl);
        v[vl] = '\0';
        h->hdr_retry_ms = mv_http__retry_after(v, mv_now_ms());
    }
    return len;
}

static size_t on_write(char *p, size_t sz, size_t n, void *ud)
{
    mv_http *h = ud;
    size_t len = sz * n;
    long st = 0;
    curl_easy_getinfo(h->curl, CURLINFO_RESPONSE_CODE, &st);
    int ok = st >= 200 && st < 300;
    if (h->sink && ok) {
        const mv_http_sink *k = h->sink;
        if (!h->sink_begun) {
            curl_off_t cl = -1;
            if (curl_easy_getinfo(h->curl, CURLINFO_CONTENT_LENGTH_DOWNLOAD_T, &cl) != CURLE_OK)
                cl = -1;
            if (cl >= 0 && (uint64_t)cl > k->max) {
                h->abort_reason = AB_SINK_BIG;
                return 0;
            }
            h->sink_begun = 1;
            if (k->begin && k->begin(k->ud, cl >= 0 ? (int64_t)cl : -1)) {
                h->abort_reason = AB_CANCEL;
                return 0;
            }
        }
        if (len > k->max - h->sink_bytes) {
            h->abort_reason = AB_SINK_BIG;
            return 0;
        }
        h->sink_bytes += len;
        if (len && k->data && k->data(k->ud, p, len)) {
            h->abort_reason = AB_CANCEL;
            return 0;
        }
        return len;
    }
    size_t cap = h->body_cap;
    if (!ok && cap > MV_HTTP_ERRBODY_MAX) cap = MV_HTTP_ERRBODY_MAX;
    if (len > cap - h->len) {
        if (!ok) return len; /* error bodies: keep the head, drop the rest */
        h->abort_reason = AB_BODY_BIG;
        return 0;
    }
    if (body_put(h, p, len)) {
        h->abort_reason = AB_NOMEM;
        return 0;
    }
    return len;
}

static mv_err transport_error(mv_http *h, CURLcode rc, const char *what, char *err, size_t errlen)
{
    const char *detail = h->errbuf[0] ? h->errbuf : curl_easy_strerror(rc);
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
    mv_sanitize(err);
    return e;
}

mv_err mv_http_perform(mv_http *h, const mv_http_req *r, char *err, size_t errlen)
{
    struct curl_slist *hdrs = NULL, *t;
    char line[128], crid[37];
    char *authz = NULL;
    mv_err e = MV_OK;
    const char *what = r->what ? r->what : "http request";

    h->len = 0;
    if (h->body) h->body[0] = '\0';
    h->body_cap = r->max_body ? r->max_body : h->o.max_body;
    h->status = 0;
    h->hdr_retry_ms = -1;
    h->retry_after_ms = 0;
    h->abort_reason = AB_NONE;
    h->sink = r->sink;
    h->sink_begun = 0;
    h->sink_bytes = 0;
    h->errbuf[0] = '\0';

    mv_uuid(crid);
    snprintf(line, sizeof line, "client-request-id: %s", crid);
#define ADD_HDR(s)                                                                                 \
    do {                                                                                           \
        if (!(t = curl_slist_append(hdrs, (s)))) goto nomem;                                       \
        hdrs = t;                                                                                  \
    } while (0)
    ADD_HDR(line);
    for (const char *const *x = r->headers; x && *x; x++)
        ADD_HDR(*x);
    if (r->body) {
        char ct[160];
        snprintf(ct, sizeof ct, "Content-Type: %s",
                 r->content_type ? r->content_type : "application/octet-stream");
        ADD_HDR(ct);
        ADD_HDR("Expect:");
    }
    if (r->bearer) {
        size_t n = strlen(r->bearer) + 32;
        if (!(authz = malloc(n))) goto nomem;
        snprintf(authz, n, "Authorization: Bearer %s", r->bearer);
        ADD_HDR(authz);
    }
#undef ADD_HDR

    CURL *c = h->curl;
    curl_easy_setopt(c, CURLOPT_URL, r->url);
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, hdrs);
    if (r->body) {
        curl_easy_setopt(c, CURLOPT_POST, 1L);
        curl_easy_setopt(c, CURLOPT_POSTFIELDS, r->body);
        curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)r->bodylen);
    } else {
        curl_easy_setopt(c, CURLOPT_HTTPGET, 1L);
    }
    if (r->method) curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, r->method);
    if (r->user) {
        curl_easy_setopt(c, CURLOPT_HTTPAUTH, r->ntlm ? CURLAUTH_NTLM : CURLAUTH_BASIC);
        curl_easy_setopt(c, CURLOPT_USERNAME, r->user);
        curl_easy_setopt(c, CURLOPT_PASSWORD, r->password ? r->password : "");
    }

    int64_t t0 = mv_mono_ms();
    CURLcode rc = curl_easy_perform(c);
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &h->status);
    mv_debug("http", " kind=\"%s\" status=%ld curl=%d ms=%" PRId64 " client_request_id=%s", what,
             h->status, (int)rc, mv_mono_ms() - t0, crid);

    if (rc != CURLE_OK) {
        switch (h->abort_reason) {
        case AB_BODY_BIG:
            e = mv_seterr(err, errlen, MV_ETOOBIG, "%s: response larger than %s (%zu bytes)", what,
                          r->max_label ? r->max_label : "max_json", h->body_cap);
            break;
        case AB_SINK_BIG:
            e = mv_seterr(err, errlen, MV_ETOOBIG, "%s: body larger than %s (%" PRIu64 " bytes)",
                          what, r->sink->max_label ? r->sink->max_label : "its bound",
                          r->sink->max);
            break;
        case AB_CANCEL:
            e = mv_seterr(err, errlen, MV_ECANCEL, "%s: stopped by the callback", what);
            break;
        case AB_NOMEM:
            e = mv_seterr(err, errlen, MV_ENOMEM, "out of memory");
            break;
        default:
            e = transport_error(h, rc, what, err, errlen);
            break;
        }
        goto out;
    }
    if (h->status == 429 || h->status == 503 || h->status == 504)
        h->retry_after_ms = h->hdr_retry_ms > 0 ? h->hdr_retry_ms : 0;
    if (r->sink && h->status >= 200 && h->status < 300 && !h->sink_begun) {
        /* an empty body: the write callback never ran */
        curl_off_t cl = -1;
        if (curl_easy_getinfo(c, CURLINFO_CONTENT_LENGTH_DOWNLOAD_T, &cl) != CURLE_OK) cl = -1;
        h->sink_begun = 1;
        if (r->sink->begin && r->sink->begin(r->sink->ud, cl >= 0 ? (int64_t)cl : -1))
            e = mv_seterr(err, errlen, MV_ECANCEL, "%s: stopped by the callback", what);
    }
    goto out;
nomem:
    e = mv_seterr(err, errlen, MV_ENOMEM, "out of memory");
out:
    if (r->method) curl_easy_setopt(h->curl, CURLOPT_CUSTOMREQUEST, NULL);
    if (r->body) {
        curl_easy_setopt(h->curl, CURLOPT_POSTFIELDS, NULL);
        curl_easy_setopt(h->curl, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)-1);
    }
    if (r->user) {
        curl_easy_setopt(h->curl, CURLOPT_USERNAME, NULL);
        curl_easy_setopt(h->curl, CURLOPT_PASSWORD, NULL);
        curl_easy_setopt(h->curl, CURLOPT_HTTPAUTH, (long)CURLAUTH_BASIC);
    }
    curl_easy_setopt(h->curl, CURLOPT_HTTPHEADER, NULL);
    for (t = hdrs; t; t = t->next)
        if (t->data == authz || (authz && !strcmp(t->data, authz)))
            OPENSSL_cleanse(t->data, strlen(t->data));
    curl_slist_free_all(hdrs);
    mv_free_secret(authz);
    h->sink = NULL;
    return e;
}

void mv_http_opts_default(mv_http_opts *o)
{
    memset(o, 0, sizeof *o);
    o->verify = 1;
    o->timeout_ms = 120000;
    o->connect_timeout_ms = 15000;
    o->idle_timeout_ms = 60000;
    o->max_body = 16u * 1024 * 1024;
}

mv_err mv_http_open(const mv_http_opts *o, mv_http **out, char *err, size_t errlen)
{
    *out = NULL;
    if (!o || o->timeout_ms <= 0 || o->connect_timeout_ms <= 0 || o->max_body < 1024)
        return mv_seterr(err, errlen, MV_EINVAL, "http: timeouts must be > 0, max_body >= 1024");
    pthread_once(&curl_once, curl_init_once);
    if (curl_init_rc != CURLE_OK)
        return mv_seterr(err, errlen, MV_ERR, "curl_global_init failed: %s",
                         curl_easy_strerror(curl_init_rc));
    mv_http *h = calloc(1, sizeof *h);
    if (!h) return mv_seterr(err, errlen, MV_ENOMEM, "out of memory");
    h->o = *o;
    if (o->ca_file && *o->ca_file && !(h->ca_file = strdup(o->ca_file))) {
        free(h);
        return mv_seterr(err, errlen, MV_ENOMEM, "out of memory");
    }
    h->o.ca_file = h->ca_file;
    if (!(h->curl = curl_easy_init())) {
        mv_http_close(h);
        return mv_seterr(err, errlen, MV_ENOMEM, "curl_easy_init failed");
    }
    CURL *c = h->curl;
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
    if (h->ca_file) SET(CURLOPT_CAINFO, h->ca_file);
    SET(CURLOPT_USERAGENT, USER_AGENT);
    SET(CURLOPT_TCP_KEEPALIVE, 1L);
    SET(CURLOPT_ERRORBUFFER, h->errbuf);
    SET(CURLOPT_WRITEFUNCTION, on_write);
    SET(CURLOPT_WRITEDATA, h);
    SET(CURLOPT_HEADERFUNCTION, on_header);
    SET(CURLOPT_HEADERDATA, h);
#undef SET
    if (rc != CURLE_OK) {
        mv_http_close(h);
        return mv_seterr(err, errlen, MV_ERR, "http: curl option refused: %s",
                         curl_easy_strerror(rc));
    }
    *out = h;
    return MV_OK;
}

void mv_http_close(mv_http *h)
{
    if (!h) return;
    if (h->curl) curl_easy_cleanup(h->curl);
    if (h->body) OPENSSL_cleanse(h->body, h->cap);
    free(h->body);
    free(h->ca_file);
    free(h);
}

long mv_http_status(const mv_http *h)
{
    return h->status;
}

const char *mv_http_body(const mv_http *h, size_t *len)
{
    *len = h->len;
    return h->body;
}

int64_t mv_http_retry_after_ms(const mv_http *h)
{
    return h ? h->retry_after_ms : 0;
}

void mv_http_body_wipe(mv_http *h)
{
    if (h->body) OPENSSL_cleanse(h->body, h->cap);
    h->len = 0;
}

void mv_http_trim(mv_http *h)
{
    if (h->cap > (1u << 20)) {
        OPENSSL_cleanse(h->body, h->cap);
        free(h->body);
        h->body = NULL;
        h->len = h->cap = 0;
    }
}

char *mv_http_escape(mv_http *h, const char *s)
{
    char *e = curl_easy_escape(h->curl, s, 0);
    if (!e) return NULL;
    char *out = strdup(e);
    curl_free(e);
    return out;
}

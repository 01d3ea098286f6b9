/* http.h - one HTTP(S) client connection (a libcurl easy handle with keep-alive) for the
 * cloud connectors (Graph, EWS) and their token requests.
 *
 * One mv_http is used by one thread. Every request is bounded: a total and a connect timeout, an
 * idle timeout (a transfer stalled below 1 byte/s fails), a bound on a buffered body, and a
 * bound on a streamed body. Redirects are never followed (a 3xx is the caller's to report);
 * only http and https are spoken; TLS verification is on unless the options say otherwise.
 *
 * A response is either buffered (mv_http_body) or, when the request has a sink and the status
 * is 2xx, streamed to the sink piece by piece; non-2xx bodies are always buffered (capped at
 * MV_HTTP_ERRBODY_MAX, the rest dropped) so the caller can read the server's error text.
 *
 * Secrets: a bearer token or password given to a request is only in the header list for the
 * duration of the request and cleansed after; mv_http_body_wipe cleanses a buffered body that
 * held one (a token response). */
#ifndef MV_HTTP_H
#define MV_HTTP_H

#include "mv/common.h"
#include <stddef.h>
#include <stdint.h>

#define MV_HTTP_ERRBODY_MAX (64u * 1024) /* bytes of a non-2xx body kept */
#define MV_HTTP_RETRY_AFTER_MAX_MS 3600000

typedef struct mv_http mv_http;

/* A gate around every request to a service (not token requests): acquire is called before
 * the request is sent and may wait; a non-zero return fails the request with that code (err
 * set by acquire). release is called after the response (or the failure) when acquire
 * returned MV_OK. weight: how many of the service's requests this HTTP request counts as (n
 * for a Graph $batch of n). The worker uses it for the per-mailbox limits kept in Redis. */
typedef struct mv_http_gate {
    mv_err (*acquire)(void *ud, int weight, char *err, size_t errlen);
    void (*release)(void *ud, int weight);
    void *ud;
} mv_http_gate;

typedef struct mv_http_opts {
    const char *ca_file;    /* optional extra CA bundle */
    int verify;             /* 1 = verify TLS peer and host (default) */
    int timeout_ms;         /* per request (total), default 120000 */
    int connect_timeout_ms; /* default 15000 */
    int idle_timeout_ms;    /* default 60000; 0 = none */
    size_t max_body;        /* bound on a buffered body, default 16 MiB */
} mv_http_opts;

void mv_http_opts_default(mv_http_opts *o);
mv_err mv_http_open(const mv_http_opts *o, mv_http **out, char *err, size_t errlen);
void mv_http_close(mv_http *h);

/* Where a 2xx body goes instead of the buffer. begin gets the Content-Length (-1 if none)
 * before the first piece (also for an empty body); a non-zero return from begin or data stops
 * the transfer with MV_ECANCEL. max bounds the streamed bytes (MV_ETOOBIG, "what: body larger
 * than max_label (N bytes)"). */
typedef struct mv_http_sink {
    int (*begin)(void *ud, int64_t content_length);
    int (*data)(void *ud, const void *p, size_t n);
    void *ud;
    uint64_t max;
    const char *max_label; /* names the bound in errors, e.g. "max_message" */
} mv_http_sink;

typedef struct mv_http_req {
    const char *url;
    const char *method; /* NULL: GET, or POST when body is set; else e.g. "DELETE" */
    const char *body;   /* request body or NULL */
    size_t bodylen;
    const char *content_type;    /* of the body */
    const char *const *headers;  /* extra "Name: value" lines, NULL-terminated, or NULL */
    const char *bearer;          /* Authorization: Bearer <token> */
    const char *user, *password; /* HTTP authentication (Basic, or NTLM with ntlm = 1) */
    int ntlm;
    size_t max_body;          /* bound on the buffered body; 0 = the handle's max_body */
    const char *max_label;    /* names that bound in errors; default "max_json" */
    const mv_http_sink *sink; /* stream a 2xx body */
    const char *what;         /* prefix of transport errors, e.g. "token request" */
} mv_http_req;

/* Run one exchange. MV_OK means a complete response arrived (any status); otherwise a
 * transport failure (MV_ENET, MV_ETIMEDOUT), a bound (MV_ETOOBIG), the sink (MV_ECANCEL). */
mv_err mv_http_perform(mv_http *h, const mv_http_req *r, char *err, size_t errlen);

long mv_http_status(const mv_http *h);
/* The buffered body of the last response (not NUL-terminated; may be NULL with len 0). */
const char *mv_http_body(const mv_http *h, size_t *len);
/* Delay asked for by the last 429/503/504 (Retry-After, in ms, capped; 0 if none). */
int64_t mv_http_retry_after_ms(const mv_http *h);
void mv_http_body_wipe(mv_http *h); /* cleanse and drop the buffered body */
void mv_http_trim(mv_http *h);      /* drop a large buffer so an idle handle stays small */
/* URL-escape s (RFC 3986 unreserved kept); malloc'd, NULL when out of memory. */
char *mv_http_escape(mv_http *h, const char *s);

/* Internals shared with the unit tests: the Retry-After value (delta-seconds or HTTP-date)
 * in ms from now_ms, capped at MV_HTTP_RETRY_AFTER_MAX_MS; -1 if it does not parse. */
int64_t mv_http__retry_after(const char *value, int64_t now_ms);

#endif

/* oauth.h - OAuth 2.0 client-credentials tokens from Microsoft Entra ID, for the Graph and
 * EWS clients (one token per resource: scope "<resource>/.default").
 *
 * The app proves itself with a client secret or with a certificate: a JWT client assertion
 * (RFC 7523) signed RS256 with the PEM private key, its header naming the certificate by x5t
 * (base64url SHA-1 thumbprint). Tokens come from <login_base>/<tenant>/oauth2/v2.0/token.
 *
 * A token source (mv_oauth_source) lets a caller share tokens (the worker: one cache for the
 * whole cluster, one refresh at a time); without one, mv_oauth_ensure fetches its own.
 *
 * Secrets (client secret, private key, token) live only in this object and in the request
 * body while it is sent, and are cleansed; errors never carry them. */
#ifndef MV_OAUTH_H
#define MV_OAUTH_H

#include "mv/common.h"
#include "mv/http.h"
#include <stdint.h>

#define MV_OAUTH_REFRESH_MARGIN_MS 300000 /* a token this close to expiry is renewed */

typedef struct mv_oauth mv_oauth;

typedef struct mv_oauth_opts {
    const char *login_base;      /* e.g. https://login.microsoftonline.com, no trailing slash */
    const char *tenant_id;       /* directory (tenant) id or domain */
    const char *client_id;       /* app registration */
    const char *client_secret;   /* or: */
    const char *client_key_pem;  /* certificate credential: RSA private key (PEM) */
    const char *client_cert_pem; /* and its certificate (PEM) */
    const char *scope;           /* e.g. https://graph.microsoft.com/.default */
} mv_oauth_opts;

mv_err mv_oauth_new(const mv_oauth_opts *o, mv_oauth **out, char *err, size_t errlen);
void mv_oauth_free(mv_oauth *a);

/* Fetch a new token over h now (the client-credentials grant). MV_EAUTH for Entra ID's 4xx
 * answers (bad secret, unknown app or tenant, ...), with its AADSTS text in err. */
mv_err mv_oauth_fetch(mv_oauth *a, mv_http *h, char *err, size_t errlen);
/* The installed token (NULL if none) and its absolute expiry (Unix ms). */
const char *mv_oauth_token(const mv_oauth *a, int64_t *expires_ms);
/* 1 if a token is installed and not within MV_OAUTH_REFRESH_MARGIN_MS of its expiry. */
int mv_oauth_fresh(const mv_oauth *a);
/* Install a token obtained elsewhere (an unusable one, e.g. with control bytes, is dropped). */
void mv_oauth_set(mv_oauth *a, const char *token, int64_t expires_ms);
/* Drop the installed token (the server refused it); returns a malloc'd copy of it, or NULL. */
char *mv_oauth_drop(mv_oauth *a);
/* The secret to scrub from error texts ("" if none). */
const char *mv_oauth_secret(const mv_oauth *a);

/* need installs a token (mv_oauth_set or mv_oauth_fetch) and returns MV_OK, or fails the
 * request; stale is the token the server just refused with a 401 (NULL otherwise), never to
 * be handed back. */
typedef struct mv_oauth_source {
    mv_err (*need)(void *ud, mv_oauth *a, mv_http *h, const char *stale, char *err, size_t errlen);
    void *ud;
} mv_oauth_source;
void mv_oauth_set_source(mv_oauth *a, const mv_oauth_source *src); /* NULL removes it */

/* Make sure a fresh token is installed: kept, from the source, or fetched. stale as above. */
mv_err mv_oauth_ensure(mv_oauth *a, mv_http *h, const char *stale, char *err, size_t errlen);

/* Internals shared with the unit tests and fuzz targets (pure functions over a body):
 * - the token response: access token (malloc'd) and lifetime in seconds;
 * - a Microsoft JSON error body (Graph {"error":{"code","message"}} or Entra ID
 *   {"error","error_description"}, first line only) as "HTTP <status> <code>: <message>", or
 *   "HTTP <status>" for anything else; code (may be NULL) gets the error code; sanitised. */
mv_err mv_oauth__parse_token(const char *body, size_t len, char **token, int64_t *expires_in,
                             char *err, size_t errlen);
void mv_ms__error_text(long status, const char *body, size_t len, char *out, size_t outlen,
                       char *code, size_t codelen);

#endif

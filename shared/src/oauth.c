/* oauth.c - client-credentials tokens from Microsoft Entra ID (secret or certificate), shared
 * by the Graph and EWS clients. See oauth.h. */
#include "mv/oauth.h"
#include "mv/log.h"
#include "ms_json.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

struct mv_oauth {
    char *login_base, *tenant, *client_id, *secret, *scope;
    char *key_pem; /* certificate credential: private key (secret) */
    char x5t[64];  /* base64url SHA-1 thumbprint of the certificate */
    char *token;
    int64_t token_exp_ms;
    mv_oauth_source src; /* need == NULL: fetch our own */
};

mv_err mv_ms__load_object(const char *body, size_t len, const char *what, json_t **out, char *err,
                          size_t errlen)
{
    json_error_t je;
    json_t *j = json_loadb(body ? body : "", len, JSON_REJECT_DUPLICATES, &je);
    if (!j) {
        mv_seterr(err, errlen, MV_EPROTO, "%s: invalid JSON at line %d column %d: %s", what,
                  je.line, je.column, je.text);
        mv_sanitize(err);
        return MV_EPROTO;
    }
    if (!json_is_object(j)) {
        json_decref(j);
        return mv_seterr(err, errlen, MV_EPROTO, "%s: response is not a JSON object", what);
    }
    *out = j;
    return MV_OK;
}

mv_err mv_oauth__parse_token(const char *body, size_t len, char **token, int64_t *expires_in,
                             char *err, size_t errlen)
{
    static const char what[] = "token response";
    json_t *root = NULL;
    *token = NULL;
    mv_err e = mv_ms__load_object(body, len, what, &root, err, errlen);
    if (e) return e;
    json_t *t = json_object_get(root, "access_token");
    json_t *x = json_object_get(root, "expires_in");
    int64_t secs = -1;
    if (!json_is_string(t) || json_string_length(t) == 0 || mv_has_ctl(json_string_value(t))) {
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
    *token = strdup(json_string_value(t));
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

void mv_ms__error_text(long status, const char *body, size_t len, char *out, size_t outlen,
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
        mv_sanitize(code);
    }
out:
    json_decref(root);
    mv_sanitize(out);
}

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
static mv_err build_assertion(mv_oauth *g, const char *aud, char **jwt, char *err, size_t errlen)
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
    char *input = h64 && p64 ? mv_aprintf("%s.%s", h64, p64) : NULL;
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
    } else if (!(*jwt = mv_aprintf("%s.%s", input, s64))) {
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

mv_err mv_oauth_fetch(mv_oauth *g, mv_http *h, char *err, size_t errlen)
{
    char *url = NULL, *form = NULL, *e_tenant = NULL, *e_cid = NULL, *e_sec = NULL, *e_scope = NULL,
         *tok = NULL;
    char *jwt = NULL;
    mv_err e = MV_OK;
    if (err && errlen) err[0] = '\0';
    if (!*g->secret && !g->key_pem)
        return mv_seterr(err, errlen, MV_EAUTH,
                         "token: no client secret or certificate configured and no valid token "
                         "installed");
    e_tenant = mv_http_escape(h, g->tenant);
    e_cid = mv_http_escape(h, g->client_id);
    e_scope = mv_http_escape(h, g->scope);
    if (e_tenant) url = mv_aprintf("%s/%s/oauth2/v2.0/token", g->login_base, e_tenant);
    if (!e_tenant || !e_cid || !e_scope || !url) goto nomem;
    if (g->key_pem) {
        if ((e = build_assertion(g, url, &jwt, err, errlen))) goto out;
        e_sec = mv_http_escape(h, jwt);
        form = e_sec
                   ? mv_aprintf("grant_type=client_credentials&client_id=%s&client_assertion_type="
                                "urn%%3Aietf%%3Aparams%%3Aoauth%%3Aclient-assertion-type%%3Ajwt-"
                                "bearer&client_assertion=%s&scope=%s",
                                e_cid, e_sec, e_scope)
                   : NULL;
    } else {
        e_sec = mv_http_escape(h, g->secret);
        form = e_sec ? mv_aprintf("grant_type=client_credentials&client_id=%s&client_secret=%s&"
                                  "scope=%s",
                                  e_cid, e_sec, e_scope)
                     : NULL;
    }
    if (!form) goto nomem;
    mv_http_req r = {.url = url,
                     .body = form,
                     .bodylen = strlen(form),
                     .content_type = "application/x-www-form-urlencoded",
                     .what = "token request"};
    if ((e = mv_http_perform(h, &r, err, errlen))) goto out;
    long st = mv_http_status(h);
    size_t blen = 0;
    const char *body = mv_http_body(h, &blen);
    if (st < 200 || st >= 300) {
        char text[1024], code[64];
        mv_ms__error_text(st, body, blen, text, sizeof text, code, sizeof code);
        if (st == 429 || st == 503 || st == 504)
            e = MV_EBUSY;
        else if (st >= 500)
            e = MV_ESERVER;
        else if (st >= 400)
            e = MV_EAUTH; /* invalid_client, unauthorized_client, unknown tenant, ... */
        else
            e = MV_EPROTO;
        mv_seterr(err, errlen, e, "token: %s%s", text,
                  st >= 300 && st < 400 ? " (redirects are not followed)" : "");
        goto out;
    }
    int64_t secs = 0;
    if ((e = mv_oauth__parse_token(body, blen, &tok, &secs, err, errlen))) goto out;
    mv_free_secret(g->token);
    g->token = tok;
    tok = NULL;
    g->token_exp_ms = mv_now_ms() + secs * 1000;
    goto out;
nomem:
    e = mv_seterr(err, errlen, MV_ENOMEM, "out of memory");
out:
    mv_http_body_wipe(h); /* held the token (or an error echoing the request) */
    mv_free_secret(form);
    mv_free_secret(e_sec);
    mv_free_secret(jwt);
    free(e_tenant);
    free(e_cid);
    free(e_scope);
    free(url);
    mv_free_secret(tok);
    mv_scrub(err, errlen, g->secret);
    return e;
}

const char *mv_oauth_token(const mv_oauth *a, int64_t *expires_ms)
{
    if (expires_ms) *expires_ms = a->token ? a->token_exp_ms : 0;
    return a->token;
}

int mv_oauth_fresh(const mv_oauth *a)
{
    return a->token && mv_now_ms() + MV_OAUTH_REFRESH_MARGIN_MS < a->token_exp_ms;
}

void mv_oauth_set(mv_oauth *a, const char *token, int64_t expires_ms)
{
    mv_free_secret(a->token);
    a->token = NULL;
    a->token_exp_ms = 0;
    if (!token || !*token || mv_has_ctl(token)) return; /* unusable in a header: fetch our own */
    if ((a->token = strdup(token))) a->token_exp_ms = expires_ms;
}

char *mv_oauth_drop(mv_oauth *a)
{
    char *t = a->token;
    a->token = NULL;
    a->token_exp_ms = 0;
    return t;
}

const char *mv_oauth_secret(const mv_oauth *a)
{
    return a->secret;
}

void mv_oauth_set_source(mv_oauth *a, const mv_oauth_source *src)
{
    if (src)
        a->src = *src;
    else
        memset(&a->src, 0, sizeof a->src);
}

mv_err mv_oauth_ensure(mv_oauth *a, mv_http *h, const char *stale, char *err, size_t errlen)
{
    if (mv_oauth_fresh(a)) return MV_OK;
    mv_err e = a->src.need ? a->src.need(a->src.ud, a, h, stale, err, errlen)
                           : mv_oauth_fetch(a, h, err, errlen);
    if (!e && !mv_oauth_fresh(a))
        e = mv_seterr(err, errlen, MV_EAUTH, "token: the token source gave no usable token");
    return e;
}

static int check_base(const char *v)
{
    return v && (!strncmp(v, "https://", 8) || !strncmp(v, "http://", 7)) && !mv_has_ctl(v);
}

mv_err mv_oauth_new(const mv_oauth_opts *o, mv_oauth **out, char *err, size_t errlen)
{
    *out = NULL;
    if (!o || !check_base(o->login_base))
        return mv_seterr(err, errlen, MV_EINVAL, "oauth: login_base must be an http(s) URL");
    if (!o->tenant_id || !*o->tenant_id || !o->client_id || !*o->client_id || !o->scope ||
        !*o->scope)
        return mv_seterr(err, errlen, MV_EINVAL,
                         "oauth: tenant_id, client_id and scope are required");
    mv_oauth *a = calloc(1, sizeof *a);
    if (!a) return mv_seterr(err, errlen, MV_ENOMEM, "out of memory");
    size_t bl = strlen(o->login_base);
    while (bl > 0 && o->login_base[bl - 1] == '/')
        bl--;
    a->login_base = strndup(o->login_base, bl);
    a->tenant = strdup(o->tenant_id);
    a->client_id = strdup(o->client_id);
    a->secret = strdup(o->client_secret ? o->client_secret : "");
    a->scope = strdup(o->scope);
    mv_err e = MV_OK;
    if (!a->login_base || !a->tenant || !a->client_id || !a->secret || !a->scope) {
        e = mv_seterr(err, errlen, MV_ENOMEM, "out of memory");
        goto fail;
    }
    if (o->client_key_pem && *o->client_key_pem) {
        if (!o->client_cert_pem || !*o->client_cert_pem) {
            e = mv_seterr(err, errlen, MV_EINVAL, "oauth: a client key needs its certificate");
            goto fail;
        }
        if ((e = cert_thumbprint(o->client_cert_pem, a->x5t, sizeof a->x5t, err, errlen)))
            goto fail;
        if (!(a->key_pem = strdup(o->client_key_pem))) {
            e = mv_seterr(err, errlen, MV_ENOMEM, "out of memory");
            goto fail;
        }
    }
    *out = a;
    return MV_OK;
fail:
    mv_oauth_free(a);
    return e;
}

void mv_oauth_free(mv_oauth *a)
{
    if (!a) return;
    mv_free_secret(a->token);
    mv_free_secret(a->secret);
    mv_free_secret(a->key_pem);
    free(a->login_base);
    free(a->tenant);
    free(a->client_id);
    free(a->scope);
    free(a);
}

/* tokens.c - access tokens cached cluster-wide in Redis (sealed with the master key), one
 * refresh at a time, for the cloud connectors (Graph, EWS with OAuth). See tokens.h. */
#include "tokens.h"

#include "mv/crypt.h"
#include "mv/log.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define TOKEN_MARGIN_MS 300000 /* a cached token this close to expiry is not used */
#define TOKEN_LOCK_MS 30000

/* The sealed token is bound to everything that decides whose token it is: a blob left from
 * another app, tenant id or endpoint never opens (and the cache is also dropped whenever the
 * profile is saved or removed). */
static void token_ad(const token_cache *tc, char *ad, size_t n)
{
    const chunk_ctx *c = tc->c;
    const mv_profile *p = c->profile;
    snprintf(ad, n, "gtoken:%s:%s:%s:%s:%s:%s", c->t->tenant, c->t->profile, p->tenant_id,
             p->client_id, p->login_base, tc->resource);
}

/* Install the cached token if there is a fresh one other than stale; 1 if installed. */
static int token_from_cache(token_cache *tc, mv_oauth *a, const char *stale)
{
    chunk_ctx *c = tc->c;
    char err[MV_ERRLEN], ad[1024];
    void *blob = NULL;
    size_t len = 0;
    unsigned char *plain = NULL;
    size_t plen = 0;
    int ok = 0;
    if (mv_state_token_get(c->r->st, c->t->tenant, c->t->profile, &blob, &len, err, sizeof err))
        return 0;
    token_ad(tc, ad, sizeof ad);
    if (mv_crypt_open(c->r->master_key, ad, blob, len, &plain, &plen, err, sizeof err) == MV_OK) {
        char *sp = strchr((char *)plain, ' ');
        long long exp = atoll((char *)plain);
        if (sp && exp - TOKEN_MARGIN_MS > mv_now_ms() && !(stale && strcmp(sp + 1, stale) == 0)) {
            mv_oauth_set(a, sp + 1, exp);
            ok = 1;
        }
        mv_crypt_wipe(plain, plen);
    }
    free(plain);
    free(blob);
    return ok;
}

static void token_to_cache(token_cache *tc, const char *token, int64_t exp)
{
    chunk_ctx *c = tc->c;
    char err[MV_ERRLEN], ad[1024];
    size_t n = strlen(token) + 32;
    char *plain = malloc(n);
    unsigned char *blob = NULL;
    size_t len = 0;
    if (!plain) return;
    snprintf(plain, n, "%lld %s", (long long)exp, token);
    token_ad(tc, ad, sizeof ad);
    if (mv_crypt_seal(c->r->master_key, ad, plain, strlen(plain), &blob, &len, err, sizeof err) ==
            MV_OK &&
        mv_state_token_put(c->r->st, c->t->tenant, c->t->profile, blob, len,
                           exp - TOKEN_MARGIN_MS - mv_now_ms(), err, sizeof err) != MV_OK)
        mv_warn("cannot cache the access token", " error=\"%s\"", err);
    mv_crypt_wipe(plain, strlen(plain));
    free(plain);
    free(blob);
}

/* The token source (mv_oauth_source) of a task's client: the cluster's cached token, or a
 * new one fetched by a single worker at a time while the others wait for it to appear
 * (bounded, then they fetch their own). After a 401 the refused token is never taken from the
 * cache again, so every task that saw it refused waits for the one refresh. */
static mv_err token_need(void *ud, mv_oauth *a, mv_http *h, const char *stale, char *err,
                         size_t errlen)
{
    token_cache *tc = ud;
    chunk_ctx *c = tc->c;
    if (token_from_cache(tc, a, stale)) return MV_OK;
    int got = 0;
    char owner[160]; /* this task: runner threads of one worker share its id */
    snprintf(owner, sizeof owner, "%s/%s", c->r->worker_id, c->t->id);
    mv_err rc = mv_state_token_lock(c->r->st, c->t->tenant, c->t->profile, owner, TOKEN_LOCK_MS,
                                    &got, err, errlen);
    if (rc) return rc;
    if (!got) {
        int64_t until = mv_mono_ms() + 10000;
        while (mv_mono_ms() < until && !*c->r->stopping) {
            usleep(50 * 1000);
            if (token_from_cache(tc, a, stale)) return MV_OK;
        }
    } else if (token_from_cache(tc, a, stale)) { /* refreshed while we asked for the lock */
        char uerr[MV_ERRLEN];
        mv_state_token_unlock(c->r->st, c->t->tenant, c->t->profile, owner, uerr, sizeof uerr);
        return MV_OK;
    }
    rc = mv_oauth_fetch(a, h, err, errlen);
    if (!rc) {
        int64_t exp = 0;
        const char *tok = mv_oauth_token(a, &exp);
        mv_info("access token fetched", " tenant=%s profile=%s after_401=%d", c->t->tenant,
                c->t->profile, stale != NULL);
        token_to_cache(tc, tok, exp);
    }
    if (got) {
        char uerr[MV_ERRLEN];
        mv_state_token_unlock(c->r->st, c->t->tenant, c->t->profile, owner, uerr, sizeof uerr);
    }
    return rc;
}

mv_oauth_source token_cache_source(token_cache *tc)
{
    mv_oauth_source s = {token_need, tc};
    return s;
}

/* state.c - mailvault's Redis state (catalog, status, runs, leases, checkpoints, delays).
 *
 * Design:
 *  - One mv_state owns one hiredis redisContext (blocking, RESP2 only), connected with
 *    redisConnectWithTimeout and given redisSetTimeout(redis.timeout_ms) for every read/write.
 *    Only API calls that hiredis 0.14 and 1.x share are used.
 *  - Every command goes through st_exec() with an argv/length vector (redisCommandArgv), so
 *    user-supplied names, folder names, payloads and credential blobs are binary-safe and never
 *    reach a format string. Error replies become MV_ESERVER with Redis' text. A NULL reply means
 *    the connection is broken: idempotent commands reconnect once and are re-sent; the others
 *    (INCR-like, Lua scripts whose return value must not be recomputed) fail with MV_ENET or
 *    MV_ETIMEDOUT and the next command reconnects lazily (nothing is sent twice).
 *  - Leases, renewals, releases, fenced checkpoint writes and tenant creation are Lua scripts
 *    sent with EVALSHA, falling back to EVAL on NOSCRIPT (server restarted / SCRIPT FLUSH).
 *  - Key layout is the one in state.h; value formats are in docs/redis-keys.md. */
#include "mv/state.h"
#include "mv/log.h"

#include <errno.h>
#include <hiredis/hiredis.h>
#include <inttypes.h>
#include <openssl/evp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>

#define ST_KEYLEN 640
#define ST_MAXARGS 96
#define ST_SCAN_COUNT "500"

struct mv_state {
    redisContext *c;
    char host[128];
    int port;
    int timeout_ms;
};

/* ---- Lua scripts ---------------------------------------------------------------------- */

/* KEYS: lease, fence. ARGV: owner, ttl_ms. -> {1, token} or {0, "owner|token" of holder} */
static const char LUA_ACQUIRE[] =
    "local v = redis.call('GET', KEYS[1])\n"
    "if v then return {0, v} end\n"
    "local t = redis.call('INCR', KEYS[2])\n"
    "redis.call('SET', KEYS[1], ARGV[1] .. '|' .. string.format('%d', t), 'PX', ARGV[2])\n"
    "return {1, t}\n";

/* KEYS: lease, fence. ARGV: "owner|token", ttl_ms, token. -> 1 extended, 0 no lease, or the
 * holder value. A lease that expired (a long GC-like pause, a slow message) is taken back when
 * no one acquired the mailbox since: the fence counter still equals our token. */
static const char LUA_RENEW[] = "local v = redis.call('GET', KEYS[1])\n"
                                "if v == ARGV[1] then\n"
                                "  redis.call('PEXPIRE', KEYS[1], ARGV[2])\n"
                                "  return 1\n"
                                "end\n"
                                "if v then return v end\n"
                                "if redis.call('GET', KEYS[2]) == ARGV[3] then\n"
                                "  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])\n"
                                "  return 1\n"
                                "end\n"
                                "return 0\n";

/* KEYS: lease. ARGV: "owner|token". -> 1 deleted, 0 no lease, or the holder value */
static const char LUA_RELEASE[] = "local v = redis.call('GET', KEYS[1])\n"
                                  "if v == ARGV[1] then\n"
                                  "  redis.call('DEL', KEYS[1])\n"
                                  "  return 1\n"
                                  "end\n"
                                  "if v then return v end\n"
                                  "return 0\n";

/* KEYS: lease, ckpt hash, status hash, mailboxes set. ARGV: "owner|token", folder, text,
 * mailbox, then field/increment pairs for the status hash. -> 1 written, 0 no lease, or the
 * holder value (fenced). Checkpoint and counters move in one step, so a crash can never leave
 * the counters behind the checkpoint. */
static const char LUA_CKPT_SET[] =
    "local v = redis.call('GET', KEYS[1])\n"
    "if v == ARGV[1] then\n"
    "  redis.call('HSET', KEYS[2], ARGV[2], ARGV[3])\n"
    "  if #ARGV > 4 then\n"
    "    for i = 5, #ARGV, 2 do\n"
    "      redis.call('HINCRBY', KEYS[3], ARGV[i], ARGV[i + 1])\n"
    "      redis.call('HINCRBY', KEYS[5], 'archived_' .. ARGV[i], ARGV[i + 1])\n"
    "    end\n"
    "    redis.call('SADD', KEYS[4], ARGV[4])\n"
    "  end\n"
    "  return 1\n"
    "end\n"
    "if v then return v end\n"
    "return 0\n";

/* KEYS: concurrency zset, window zset. ARGV: unused, request id, max concurrent, hold_ms,
 * max per window, window_ms. Time is Redis' own clock (TIME), so workers' clocks never skew
 * the count. Both sets are pruned of expired entries, then the request is admitted only if
 * both have room. -> {1, 0} admitted, or {0, wait_ms} with a hint of when room is expected
 * (the oldest window entry's expiry; 0 when only a concurrency slot is missing). */
static const char LUA_LIMIT_ACQUIRE[] =
    "local t = redis.call('TIME')\n"
    "local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n"
    "local w, cw = tonumber(ARGV[7]), tonumber(ARGV[8])\n"
    "redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)\n"
    "redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - tonumber(ARGV[6]))\n"
    "local wmax = tonumber(ARGV[5])\n"
    "if wmax > 0 then\n"
    "  local over = redis.call('ZCARD', KEYS[2]) + w - wmax\n"
    "  if over > 0 then\n"
    "    local o = redis.call('ZRANGE', KEYS[2], over - 1, over - 1, 'WITHSCORES')\n"
    "    return {0, tonumber(o[2]) + tonumber(ARGV[6]) - now + 1}\n"
    "  end\n"
    "end\n"
    "if tonumber(ARGV[3]) > 0 and redis.call('ZCARD', KEYS[1]) + cw > tonumber(ARGV[3]) then\n"
    "  return {0, 0}\n"
    "end\n"
    "for i = 1, cw do\n"
    "  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[4]), ARGV[2] .. '#' .. i)\n"
    "end\n"
    "redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[4]) * 2)\n"
    "for i = 1, w do\n"
    "  redis.call('ZADD', KEYS[2], now, ARGV[2] .. '#' .. i)\n"
    "end\n"
    "redis.call('PEXPIRE', KEYS[2], tonumber(ARGV[6]) * 2)\n"
    "return {1, 0}\n";

/* KEYS: concurrency zset, window zset. ARGV: request id, weight. Frees the slots and moves the
 * request's window entries to its completion time: the server counted it somewhere between
 * admission and completion, so counting from completion never undercounts. */
static const char LUA_LIMIT_RELEASE[] =
    "local t = redis.call('TIME')\n"
    "local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n"
    "for i = 1, tonumber(ARGV[2]) do\n"
    "  local m = ARGV[1] .. '#' .. i\n"
    "  redis.call('ZREM', KEYS[1], m)\n"
    "  redis.call('ZADD', KEYS[2], 'XX', now, m)\n"
    "end\n"
    "return 1\n";

/* KEYS: lock. ARGV: owner. Deletes the lock only if the owner still holds it. */
static const char LUA_UNLOCK[] = "if redis.call('GET', KEYS[1]) == ARGV[1] then\n"
                                 "  return redis.call('DEL', KEYS[1])\n"
                                 "end\n"
                                 "return 0\n";

/* KEYS: mv:tenants, mv:tenant:{t}. ARGV: tenant, display_name, created_ms. -> 1 added, 0 exists */
static const char LUA_TENANT_ADD[] =
    "if redis.call('SADD', KEYS[1], ARGV[1]) == 0 then return 0 end\n"
    "redis.call('HSET', KEYS[2], 'display_name', ARGV[2], 'created_ms', ARGV[3])\n"
    "return 1\n";

/* ---- argument vectors ----------------------------------------------------------------- */

typedef struct st_args {
    int n;
    int overflow;
    const char *v[ST_MAXARGS];
    size_t l[ST_MAXARGS];
} st_args;

static void sa_bin(st_args *a, const void *p, size_t len)
{
    if (a->n >= ST_MAXARGS) {
        a->overflow = 1;
        return;
    }
    a->v[a->n] = p;
    a->l[a->n] = len;
    a->n++;
}

static void sa_str(st_args *a, const char *s)
{
    sa_bin(a, s, strlen(s));
}

/* ---- connection and command execution ------------------------------------------------- */

static mv_err st_ctx_code(const redisContext *c, int saved_errno)
{
#ifdef REDIS_ERR_TIMEOUT
    if (c->err == REDIS_ERR_TIMEOUT) return MV_ETIMEDOUT;
#endif
    if (c->err == REDIS_ERR_OOM) return MV_ENOMEM;
    if (c->err == REDIS_ERR_IO &&
        (saved_errno == EAGAIN || saved_errno == EWOULDBLOCK || saved_errno == ETIMEDOUT))
        return MV_ETIMEDOUT;
    return MV_ENET;
}

static mv_err st_open(mv_state *s, char *err, size_t errlen)
{
    struct timeval tv = {.tv_sec = s->timeout_ms / 1000,
                         .tv_usec = (suseconds_t)(s->timeout_ms % 1000) * 1000};
    if (s->c) {
        redisFree(s->c);
        s->c = NULL;
    }
    errno = 0;
    redisContext *c = redisConnectWithTimeout(s->host, s->port, tv);
    int saved = errno;
    if (!c) return mv_seterr(err, errlen, MV_ENOMEM, "redis %s:%d: no memory", s->host, s->port);
    mv_err e = MV_OK;
    if (c->err) {
        e = mv_seterr(err, errlen, st_ctx_code(c, saved), "redis %s:%d: connect: %s", s->host,
                      s->port, c->errstr);
        goto out;
    }
    if (redisSetTimeout(c, tv) != REDIS_OK) {
        e = mv_seterr(err, errlen, MV_ENET, "redis %s:%d: cannot set timeout: %s", s->host, s->port,
                      c->errstr);
        goto out;
    }
    s->c = c;
    c = NULL;
out:
    if (c) redisFree(c);
    return e;
}

/* Sends one command and returns its reply, error replies included. A lost connection is
 * retried once (new connection) when retry is set. */
static mv_err st_raw(mv_state *s, int retry, const st_args *a, redisReply **out, char *err,
                     size_t errlen)
{
    *out = NULL;
    if (a->overflow)
        return mv_seterr(err, errlen, MV_EINVAL, "redis %.*s: too many arguments", (int)a->l[0],
                         a->v[0]);
    for (int attempt = 0;; attempt++) {
        if (!s->c || s->c->err) {
            mv_err e = st_open(s, err, errlen);
            if (e) return e;
        }
        errno = 0;
        redisReply *r = redisCommandArgv(s->c, a->n, (const char **)a->v, a->l);
        int saved = errno;
        if (r) {
            *out = r;
            return MV_OK;
        }
        mv_err e = mv_seterr(err, errlen, st_ctx_code(s->c, saved), "redis %s:%d: %.*s: %s",
                             s->host, s->port, (int)a->l[0], a->v[0], s->c->errstr);
        redisFree(s->c);
        s->c = NULL;
        if (!retry || attempt > 0) return e;
        mv_warn("redis connection lost, reconnecting", " redis=%s:%d cmd=%.*s", s->host, s->port,
                (int)a->l[0], a->v[0]);
    }
}

/* st_raw + error replies become MV_ESERVER. */
static mv_err st_exec(mv_state *s, int retry, const st_args *a, redisReply **out, char *err,
                      size_t errlen)
{
    mv_err e = st_raw(s, retry, a, out, err, errlen);
    if (e) return e;
    if ((*out)->type == REDIS_REPLY_ERROR) {
        e = mv_seterr(err, errlen, MV_ESERVER, "redis %.*s: %.*s", (int)a->l[0], a->v[0],
                      (int)(*out)->len, (*out)->str);
        freeReplyObject(*out);
        *out = NULL;
    }
    return e;
}

static mv_err st_bad_reply(const redisReply *r, const char *what, char *err, size_t errlen)
{
    return mv_seterr(err, errlen, MV_EPROTO, "redis %s: unexpected reply type %d", what,
                     r ? r->type : -1);
}

/* Runs a command whose reply must be of the given type (or NIL when nil_ok). */
static mv_err st_expect(mv_state *s, int retry, const st_args *a, int type, int nil_ok,
                        redisReply **out, char *err, size_t errlen)
{
    redisReply *r = NULL;
    mv_err e = st_exec(s, retry, a, &r, err, errlen);
    if (e) return e;
    if (r->type != type && !(nil_ok && r->type == REDIS_REPLY_NIL)) {
        char what[64];
        snprintf(what, sizeof what, "%.*s", (int)a->l[0], a->v[0]);
        e = st_bad_reply(r, what, err, errlen);
        freeReplyObject(r);
        return e;
    }
    if (out)
        *out = r;
    else
        freeReplyObject(r);
    return MV_OK;
}

/* Integer reply into *val (may be NULL). */
static mv_err st_int(mv_state *s, int retry, const st_args *a, long long *val, char *err,
                     size_t errlen)
{
    redisReply *r = NULL;
    mv_err e = st_expect(s, retry, a, REDIS_REPLY_INTEGER, 0, &r, err, errlen);
    if (e) return e;
    if (val) *val = r->integer;
    freeReplyObject(r);
    return MV_OK;
}

/* Any non-error reply. */
static mv_err st_ok(mv_state *s, int retry, const st_args *a, char *err, size_t errlen)
{
    redisReply *r = NULL;
    mv_err e = st_exec(s, retry, a, &r, err, errlen);
    if (!e) freeReplyObject(r);
    return e;
}

/* EVALSHA with EVAL fallback. keys/args are (pointer, length) pairs in a. */
typedef struct st_script {
    const char *src;
    char sha[41];
} st_script;

static void st_sha1(st_script *sc)
{
    if (sc->sha[0]) return;
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;
    if (EVP_Digest(sc->src, strlen(sc->src), md, &mdlen, EVP_sha1(), NULL) != 1 || mdlen != 20)
        return; /* leaves sha empty: plain EVAL is used */
    char hex[41];
    mv_hex(md, 20, hex);
    memcpy(sc->sha, hex, sizeof hex);
}

static mv_err st_eval(mv_state *s, int retry, const char *src, int nkeys, const st_args *ka,
                      redisReply **out, char *err, size_t errlen)
{
    st_script sc = {.src = src, .sha = ""};
    st_sha1(&sc);
    char nk[16];
    snprintf(nk, sizeof nk, "%d", nkeys);
    mv_err e = MV_OK;
    /* pass 0: EVALSHA (skipped without a digest); pass 1: EVAL when the script is unknown */
    for (int pass = sc.sha[0] ? 0 : 1; pass < 2; pass++) {
        st_args a = {0};
        sa_str(&a, pass == 0 ? "EVALSHA" : "EVAL");
        sa_str(&a, pass == 0 ? sc.sha : src);
        sa_str(&a, nk);
        for (int i = 0; i < ka->n; i++)
            sa_bin(&a, ka->v[i], ka->l[i]);
        e = st_raw(s, retry, &a, out, err, errlen);
        if (e) return e;
        if (pass == 0 && (*out)->type == REDIS_REPLY_ERROR &&
            strncmp((*out)->str, "NOSCRIPT", 8) == 0) {
            freeReplyObject(*out);
            *out = NULL;
            continue;
        }
        break;
    }
    if ((*out)->type == REDIS_REPLY_ERROR) {
        e = mv_seterr(err, errlen, MV_ESERVER, "redis script: %.*s", (int)(*out)->len, (*out)->str);
        freeReplyObject(*out);
        *out = NULL;
    }
    return e;
}

/* ---- keys and validation -------------------------------------------------------------- */

static mv_err st_key(char *buf, char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static mv_err st_key(char *buf, char *err, size_t errlen, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, ST_KEYLEN, fmt, ap);
    va_end(ap);
    if (n < 0 || n >= ST_KEYLEN) return mv_seterr(err, errlen, MV_EINVAL, "redis key too long");
    return MV_OK;
}

static mv_err st_check(const char *tenant, const char *profile, const char *mailbox, char *err,
                       size_t errlen)
{
    if (!mv_name_valid(tenant))
        return mv_seterr(err, errlen, MV_EINVAL, "invalid tenant name \"%.64s\"",
                         tenant ? tenant : "(null)");
    if (profile && !mv_name_valid(profile))
        return mv_seterr(err, errlen, MV_EINVAL, "invalid profile name \"%.64s\"", profile);
    if (mailbox && !mv_mailbox_valid(mailbox))
        return mv_seterr(err, errlen, MV_EINVAL, "invalid mailbox id \"%.255s\"", mailbox);
    return MV_OK;
}

/* Escapes glob metacharacters so a name matches itself in SCAN MATCH. */
static mv_err st_glob_escape(const char *in, char *out, size_t outlen, char *err, size_t errlen)
{
    size_t o = 0;
    for (const char *p = in; *p; p++) {
        if (o + 3 >= outlen) return mv_seterr(err, errlen, MV_EINVAL, "scan pattern too long");
        if (strchr("*?[]\\", *p)) out[o++] = '\\';
        out[o++] = *p;
    }
    out[o] = '\0';
    return MV_OK;
}

/* "owner|token" */
static mv_err st_lease_value(const char *owner, uint64_t token, char *buf, size_t n, char *err,
                             size_t errlen)
{
    if (!owner || !owner[0]) return mv_seterr(err, errlen, MV_EINVAL, "lease owner is empty");
    int w = snprintf(buf, n, "%s|%" PRIu64, owner, token);
    if (w < 0 || (size_t)w >= n) return mv_seterr(err, errlen, MV_EINVAL, "lease owner too long");
    return MV_OK;
}

/* Copies the owner part of a lease value "owner|token" into holder. */
static void st_holder(const char *v, size_t len, char *holder, size_t holderlen)
{
    if (!holder || holderlen == 0) return;
    size_t n = len;
    for (size_t i = len; i > 0; i--) {
        if (v[i - 1] == '|') {
            n = i - 1;
            break;
        }
    }
    if (n >= holderlen) n = holderlen - 1;
    memcpy(holder, v, n);
    holder[n] = '\0';
}

/* ---- lifecycle ------------------------------------------------------------------------ */

mv_err mv_state_connect(const mv_config *c, mv_state **out, char *err, size_t errlen)
{
    *out = NULL;
    mv_state *s = calloc(1, sizeof *s);
    if (!s) return mv_seterr(err, errlen, MV_ENOMEM, "redis: no memory");
    snprintf(s->host, sizeof s->host, "%s", c->redis_host);
    s->port = c->redis_port;
    s->timeout_ms = c->redis_timeout_ms > 0 ? c->redis_timeout_ms : 5000;
    mv_err e = st_open(s, err, errlen);
    if (!e) e = mv_state_ping(s, err, errlen);
    if (e) {
        mv_state_close(s);
        return e;
    }
    *out = s;
    return MV_OK;
}

void mv_state_close(mv_state *s)
{
    if (!s) return;
    if (s->c) redisFree(s->c);
    free(s);
}

mv_err mv_state_ping(mv_state *s, char *err, size_t errlen)
{
    st_args a = {0};
    sa_str(&a, "PING");
    return st_ok(s, 1, &a, err, errlen);
}

/* ---- sets listed in order ------------------------------------------------------------- */

static int st_cmp_reply(const void *x, const void *y)
{
    const redisReply *a = *(redisReply *const *)x, *b = *(redisReply *const *)y;
    size_t n = a->len < b->len ? a->len : b->len;
    int c = memcmp(a->str, b->str, n);
    if (c) return c;
    return (a->len > b->len) - (a->len < b->len);
}

static mv_err st_smembers_sorted(mv_state *s, const char *key, int (*cb)(void *, const char *),
                                 void *ud, char *err, size_t errlen)
{
    st_args a = {0};
    sa_str(&a, "SMEMBERS");
    sa_str(&a, key);
    redisReply *r = NULL;
    mv_err e = st_expect(s, 1, &a, REDIS_REPLY_ARRAY, 0, &r, err, errlen);
    if (e) return e;
    redisReply **v = NULL;
    if (r->elements > 0) {
        v = malloc(r->elements * sizeof *v);
        if (!v) {
            e = mv_seterr(err, errlen, MV_ENOMEM, "redis SMEMBERS: no memory");
            goto out;
        }
    }
    for (size_t i = 0; i < r->elements; i++) {
        if (r->element[i]->type != REDIS_REPLY_STRING) {
            e = st_bad_reply(r->element[i], "SMEMBERS", err, errlen);
            goto out;
        }
        v[i] = r->element[i];
    }
    if (r->elements > 1) qsort(v, r->elements, sizeof *v, st_cmp_reply);
    for (size_t i = 0; i < r->elements; i++) {
        if (cb(ud, v[i]->str) != 0) {
            e = mv_seterr(err, errlen, MV_ECANCEL, "listing %s stopped by callback", key);
            goto out;
        }
    }
out:
    free(v);
    freeReplyObject(r);
    return e;
}

/* Deletes every key matching pattern (SCAN, then DEL per batch). */
static mv_err st_scan_del(mv_state *s, const char *pattern, char *err, size_t errlen)
{
    char cursor[32] = "0";
    do {
        st_args a = {0};
        sa_str(&a, "SCAN");
        sa_str(&a, cursor);
        sa_str(&a, "MATCH");
        sa_str(&a, pattern);
        sa_str(&a, "COUNT");
        sa_str(&a, ST_SCAN_COUNT);
        redisReply *r = NULL;
        mv_err e = st_expect(s, 1, &a, REDIS_REPLY_ARRAY, 0, &r, err, errlen);
        if (e) return e;
        if (r->elements != 2 || r->element[0]->type != REDIS_REPLY_STRING ||
            r->element[1]->type != REDIS_REPLY_ARRAY || r->element[0]->len >= sizeof cursor) {
            e = st_bad_reply(r, "SCAN", err, errlen);
            freeReplyObject(r);
            return e;
        }
        memcpy(cursor, r->element[0]->str, r->element[0]->len + 1);
        redisReply *keys = r->element[1];
        for (size_t i = 0; i < keys->elements && !e;) {
            st_args d = {0};
            sa_str(&d, "DEL");
            for (; i < keys->elements && d.n < ST_MAXARGS; i++)
                sa_bin(&d, keys->element[i]->str, keys->element[i]->len);
            e = st_int(s, 1, &d, NULL, err, errlen);
        }
        freeReplyObject(r);
        if (e) return e;
    } while (strcmp(cursor, "0") != 0);
    return MV_OK;
}

/* ---- catalog -------------------------------------------------------------------------- */

mv_err mv_state_tenant_add(mv_state *s, const char *tenant, const char *display_name, char *err,
                           size_t errlen)
{
    char key[ST_KEYLEN], now[32];
    mv_err e = st_check(tenant, NULL, NULL, err, errlen);
    if (!e) e = st_key(key, err, errlen, "mv:tenant:%s", tenant);
    if (e) return e;
    snprintf(now, sizeof now, "%" PRId64, mv_now_ms());
    st_args a = {0};
    sa_str(&a, "mv:tenants");
    sa_str(&a, key);
    sa_str(&a, tenant);
    sa_str(&a, display_name ? display_name : tenant);
    sa_str(&a, now);
    redisReply *r = NULL;
    /* not retried: a lost reply of a successful add would turn into a false MV_EEXIST */
    e = st_eval(s, 0, LUA_TENANT_ADD, 2, &a, &r, err, errlen);
    if (e) return e;
    if (r->type != REDIS_REPLY_INTEGER)
        e = st_bad_reply(r, "tenant add script", err, errlen);
    else if (r->integer == 0)
        e = mv_seterr(err, errlen, MV_EEXIST, "tenant %s already exists", tenant);
    freeReplyObject(r);
    return e;
}

int mv_state_tenant_exists(mv_state *s, const char *tenant)
{
    char err[MV_ERRLEN];
    if (!mv_name_valid(tenant)) return 0;
    st_args a = {0};
    sa_str(&a, "SISMEMBER");
    sa_str(&a, "mv:tenants");
    sa_str(&a, tenant);
    long long v = 0;
    if (st_int(s, 1, &a, &v, err, sizeof err) != MV_OK) {
        mv_warn("tenant lookup failed", " tenant=%s error=\"%s\"", tenant, err);
        return -1;
    }
    return v ? 1 : 0;
}

mv_err mv_state_tenant_del(mv_state *s, const char *tenant, char *err, size_t errlen)
{
    char key[ST_KEYLEN], pat[ST_KEYLEN], esc[160];
    mv_err e = st_check(tenant, NULL, NULL, err, errlen);
    if (!e) e = st_glob_escape(tenant, esc, sizeof esc, err, errlen);
    if (e) return e;
    st_args a = {0};
    sa_str(&a, "SISMEMBER");
    sa_str(&a, "mv:tenants");
    sa_str(&a, tenant);
    long long member = 0;
    e = st_int(s, 1, &a, &member, err, errlen);
    if (e) return e;
    if (!member) return mv_seterr(err, errlen, MV_ENOTFOUND, "tenant %s does not exist", tenant);

    /* Data first, the tenant's set membership last: a failure half-way leaves the tenant
     * listed so the delete can simply be repeated. Leases expire on their own and fence
     * counters are kept (they must never go backwards). */
    static const char *const patterns[] = {
        "mv:profile:", "mv:cred:", "mv:status:", "mv:ckpt:", "mv:cursor:"};
    for (size_t i = 0; i < sizeof patterns / sizeof patterns[0]; i++) {
        e = st_key(pat, err, errlen, "%s%s:*", patterns[i], esc);
        if (!e) e = st_scan_del(s, pat, err, errlen);
        if (e) return e;
    }
    static const char *const singles[] = {
        "mv:profiles:", "mv:mailboxes:", "mv:fair:q:", "mv:fair:inflight:", "mv:tenant:"};
    for (size_t i = 0; i < sizeof singles / sizeof singles[0]; i++) {
        a.n = 0;
        sa_str(&a, "DEL");
        e = st_key(key, err, errlen, "%s%s", singles[i], tenant);
        sa_str(&a, key);
        if (!e) e = st_int(s, 1, &a, NULL, err, errlen);
        if (e) return e;
    }
    a.n = 0; /* its queue is gone: no longer ready (its in-flight entries are reaped) */
    sa_str(&a, "ZREM");
    sa_str(&a, "mv:fair:ready");
    sa_str(&a, tenant);
    if ((e = st_int(s, 1, &a, NULL, err, errlen))) return e;
    a.n = 0;
    sa_str(&a, "SREM");
    sa_str(&a, "mv:tenants");
    sa_str(&a, tenant);
    return st_int(s, 1, &a, NULL, err, errlen);
}

mv_err mv_state_tenant_list(mv_state *s, int (*cb)(void *ud, const char *name), void *ud, char *err,
                            size_t errlen)
{
    return st_smembers_sorted(s, "mv:tenants", cb, ud, err, errlen);
}

/* Drop a profile's cached access token and its fetch lock. */
static mv_err st_token_forget(mv_state *s, const char *tenant, const char *profile, char *err,
                              size_t errlen)
{
    char tok[ST_KEYLEN], lock[ST_KEYLEN];
    mv_err e = st_key(tok, err, errlen, "mv:gtoken:%s:%s", tenant, profile);
    if (!e) e = st_key(lock, err, errlen, "mv:gtoken-lock:%s:%s", tenant, profile);
    if (e) return e;
    st_args a = {0};
    sa_str(&a, "DEL");
    sa_str(&a, tok);
    sa_str(&a, lock);
    return st_int(s, 1, &a, NULL, err, errlen);
}

mv_err mv_state_profile_put(mv_state *s, const char *tenant, const char *profile, const char *json,
                            char *err, size_t errlen)
{
    char key[ST_KEYLEN], set[ST_KEYLEN];
    mv_err e = st_check(tenant, profile, NULL, err, errlen);
    if (!e && !json) e = mv_seterr(err, errlen, MV_EINVAL, "profile %s: no JSON", profile);
    if (!e) e = st_key(key, err, errlen, "mv:profile:%s:%s", tenant, profile);
    if (!e) e = st_key(set, err, errlen, "mv:profiles:%s", tenant);
    if (e) return e;
    /* a changed profile may name another app or endpoint: its cached token goes first */
    if ((e = st_token_forget(s, tenant, profile, err, errlen))) return e;
    st_args a = {0};
    sa_str(&a, "SET");
    sa_str(&a, key);
    sa_str(&a, json);
    e = st_ok(s, 1, &a, err, errlen);
    if (e) return e;
    a.n = 0;
    sa_str(&a, "SADD");
    sa_str(&a, set);
    sa_str(&a, profile);
    return st_int(s, 1, &a, NULL, err, errlen);
}

/* GET key into a malloc'd copy with a NUL after it (never malloc(0)); MV_ENOTFOUND, with err
 * untouched, if the key does not exist. */
static mv_err st_get_copy(mv_state *s, const char *key, char **out, size_t *len, char *err,
                          size_t errlen)
{
    *out = NULL;
    if (len) *len = 0;
    st_args a = {0};
    sa_str(&a, "GET");
    sa_str(&a, key);
    redisReply *r = NULL;
    mv_err e = st_expect(s, 1, &a, REDIS_REPLY_STRING, 1, &r, err, errlen);
    if (e) return e;
    if (r->type == REDIS_REPLY_NIL) {
        e = MV_ENOTFOUND;
    } else if (!(*out = malloc(r->len + 1))) {
        e = mv_seterr(err, errlen, MV_ENOMEM, "%s: no memory", key);
    } else {
        memcpy(*out, r->str, r->len);
        (*out)[r->len] = '\0';
        if (len) *len = r->len;
    }
    freeReplyObject(r);
    return e;
}

mv_err mv_state_profile_get(mv_state *s, const char *tenant, const char *profile, char **json,
                            char *err, size_t errlen)
{
    char key[ST_KEYLEN];
    *json = NULL;
    mv_err e = st_check(tenant, profile, NULL, err, errlen);
    if (!e) e = st_key(key, err, errlen, "mv:profile:%s:%s", tenant, profile);
    if (!e) e = st_get_copy(s, key, json, NULL, err, errlen);
    if (e == MV_ENOTFOUND)
        mv_seterr(err, errlen, MV_ENOTFOUND, "profile %s/%s does not exist", tenant, profile);
    return e;
}

mv_err mv_state_profile_del(mv_state *s, const char *tenant, const char *profile, char *err,
                            size_t errlen)
{
    char key[ST_KEYLEN], set[ST_KEYLEN], pat[ST_KEYLEN], et[160], ep[160];
    mv_err e = st_check(tenant, profile, NULL, err, errlen);
    if (!e) e = st_key(key, err, errlen, "mv:profile:%s:%s", tenant, profile);
    if (!e) e = st_key(set, err, errlen, "mv:profiles:%s", tenant);
    if (!e) e = st_glob_escape(tenant, et, sizeof et, err, errlen);
    if (!e) e = st_glob_escape(profile, ep, sizeof ep, err, errlen);
    if (!e) e = st_key(pat, err, errlen, "mv:cred:%s:%s:*", et, ep);
    if (e) return e;
    st_args a = {0};
    sa_str(&a, "DEL");
    sa_str(&a, key);
    long long deleted = 0, removed = 0;
    e = st_int(s, 1, &a, &deleted, err, errlen);
    if (e) return e;
    a.n = 0;
    sa_str(&a, "SREM");
    sa_str(&a, set);
    sa_str(&a, profile);
    e = st_int(s, 1, &a, &removed, err, errlen);
    if (!e) e = st_scan_del(s, pat, err, errlen);
    if (!e) e = st_token_forget(s, tenant, profile, err, errlen);
    if (!e && !deleted && !removed)
        e = mv_seterr(err, errlen, MV_ENOTFOUND, "profile %s/%s does not exist", tenant, profile);
    return e;
}

mv_err mv_state_profile_list(mv_state *s, const char *tenant, int (*cb)(void *ud, const char *name),
                             void *ud, char *err, size_t errlen)
{
    char set[ST_KEYLEN];
    mv_err e = st_check(tenant, NULL, NULL, err, errlen);
    if (!e) e = st_key(set, err, errlen, "mv:profiles:%s", tenant);
    if (e) return e;
    return st_smembers_sorted(s, set, cb, ud, err, errlen);
}

mv_err mv_state_cred_put(mv_state *s, const char *tenant, const char *profile, const char *mailbox,
                         const void *blob, size_t len, char *err, size_t errlen)
{
    char key[ST_KEYLEN];
    mv_err e = st_check(tenant, profile, mailbox, err, errlen);
    if (!e && !blob && len)
        e = mv_seterr(err, errlen, MV_EINVAL, "credential %s/%s/%s: no data", tenant, profile,
                      mailbox);
    if (!e) e = st_key(key, err, errlen, "mv:cred:%s:%s:%s", tenant, profile, mailbox);
    if (e) return e;
    st_args a = {0};
    sa_str(&a, "SET");
    sa_str(&a, key);
    sa_bin(&a, blob ? blob : "", len);
    return st_ok(s, 1, &a, err, errlen);
}

mv_err mv_state_cred_get(mv_state *s, const char *tenant, const char *profile, const char *mailbox,
                         void **blob, size_t *len, char *err, size_t errlen)
{
    char key[ST_KEYLEN], *copy = NULL;
    *blob = NULL;
    *len = 0;
    mv_err e = st_check(tenant, profile, mailbox, err, errlen);
    if (!e) e = st_key(key, err, errlen, "mv:cred:%s:%s:%s", tenant, profile, mailbox);
    if (!e) e = st_get_copy(s, key, &copy, len, err, errlen);
    if (e == MV_ENOTFOUND)
        mv_seterr(err, errlen, MV_ENOTFOUND, "no credential for %s/%s/%s", tenant, profile,
                  mailbox);
    *blob = copy;
    return e;
}

/* ---- task status ---------------------------------------------------------------------- */

static mv_err st_mailbox_seen(mv_state *s, const char *tenant, const char *mailbox, char *err,
                              size_t errlen)
{
    char set[ST_KEYLEN];
    mv_err e = st_key(set, err, errlen, "mv:mailboxes:%s", tenant);
    if (e) return e;
    st_args a = {0};
    sa_str(&a, "SADD");
    sa_str(&a, set);
    sa_str(&a, mailbox);
    return st_int(s, 1, &a, NULL, err, errlen);
}

mv_err mv_state_status_set(mv_state *s, const char *tenant, const char *mailbox, char *err,
                           size_t errlen, ...)
{
    char key[ST_KEYLEN];
    mv_err e = st_check(tenant, NULL, mailbox, err, errlen);
    if (!e) e = st_key(key, err, errlen, "mv:status:%s:%s", tenant, mailbox);
    if (e) return e;
    st_args a = {0};
    sa_str(&a, "HSET");
    sa_str(&a, key);
    va_list ap;
    va_start(ap, errlen);
    for (;;) {
        const char *f = va_arg(ap, const char *);
        if (!f) break;
        const char *v = va_arg(ap, const char *);
        if (!v) {
            e = mv_seterr(err, errlen, MV_EINVAL, "status field %s has no value", f);
            break;
        }
        sa_str(&a, f);
        sa_str(&a, v);
    }
    va_end(ap);
    if (e) return e;
    if (a.overflow) return mv_seterr(err, errlen, MV_EINVAL, "too many status fields");
    if (a.n > 2) e = st_int(s, 1, &a, NULL, err, errlen);
    if (!e) e = st_mailbox_seen(s, tenant, mailbox, err, errlen);
    return e;
}

mv_err mv_state_status_incr(mv_state *s, const char *tenant, const char *mailbox, const char *field,
                            int64_t by, char *err, size_t errlen)
{
    char key[ST_KEYLEN], num[32];
    mv_err e = st_check(tenant, NULL, mailbox, err, errlen);
    if (!e && (!field || !field[0]))
        e = mv_seterr(err, errlen, MV_EINVAL, "status field name is empty");
    if (!e) e = st_key(key, err, errlen, "mv:status:%s:%s", tenant, mailbox);
    if (e) return e;
    snprintf(num, sizeof num, "%" PRId64, by);
    st_args a = {0};
    sa_str(&a, "HINCRBY");
    sa_str(&a, key);
    sa_str(&a, field);
    sa_str(&a, num);
    e = st_int(s, 0, &a, NULL, err, errlen); /* not idempotent: never re-sent */
    if (!e) e = st_mailbox_seen(s, tenant, mailbox, err, errlen);
    /* throttling waits are also a tenant metric (/metrics) */
    if (!e && strcmp(field, "throttled") == 0)
        e = mv_state_metric_incr(s, tenant, "throttled", by, err, errlen);
    return e;
}

mv_err mv_state_status_get(mv_state *s, const char *tenant, const char *mailbox,
                           int (*cb)(void *ud, const char *field, const char *value), void *ud,
                           char *err, size_t errlen)
{
    char key[ST_KEYLEN];
    mv_err e = st_check(tenant, NULL, mailbox, err, errlen);
    if (!e) e = st_key(key, err, errlen, "mv:status:%s:%s", tenant, mailbox);
    if (e) return e;
    st_args a = {0};
    sa_str(&a, "HGETALL");
    sa_str(&a, key);
    redisReply *r = NULL;
    e = st_expect(s, 1, &a, REDIS_REPLY_ARRAY, 0, &r, err, errlen);
    if (e) return e;
    if (r->elements == 0)
        e = mv_seterr(err, errlen, MV_ENOTFOUND, "no status for %s/%s", tenant, mailbox);
    for (size_t i = 0; !e && i + 1 < r->elements; i += 2) {
        if (r->element[i]->type != REDIS_REPLY_STRING ||
            r->element[i + 1]->type != REDIS_REPLY_STRING)
            e = st_bad_reply(r->element[i], "HGETALL", err, errlen);
        else if (cb(ud, r->element[i]->str, r->element[i + 1]->str) != 0)
            e = mv_seterr(err, errlen, MV_ECANCEL, "status read stopped by callback");
    }
    freeReplyObject(r);
    return e;
}

mv_err mv_state_mailbox_list(mv_state *s, const char *tenant,
                             int (*cb)(void *ud, const char *mailbox), void *ud, char *err,
                             size_t errlen)
{
    char set[ST_KEYLEN];
    mv_err e = st_check(tenant, NULL, NULL, err, errlen);
    if (!e) e = st_key(set, err, errlen, "mv:mailboxes:%s", tenant);
    if (e) return e;
    return st_smembers_sorted(s, set, cb, ud, err, errlen);
}

static mv_err st_hgetall(mv_state *s, const char *key,
                         int (*cb)(void *ud, const char *field, const char *value), void *ud,
                         char *err, size_t errlen)
{
    st_args a = {0};
    sa_str(&a, "HGETALL");
    sa_str(&a, key);
    redisReply *r = NULL;
    mv_err e = st_expect(s, 1, &a, REDIS_REPLY_ARRAY, 0, &r, err, errlen);
    if (e) return e;
    for (size_t i = 0; i + 1 < r->elements; i += 2)
        if (r->element[i]->type == REDIS_REPLY_STRING &&
            r->element[i + 1]->type == REDIS_REPLY_STRING &&
            cb(ud, r->element[i]->str, r->element[i + 1]->str))
            break;
    freeReplyObject(r);
    return MV_OK;
}

/* ---- runs ----------------------------------------------------------------------------- */

static mv_err run_key(char *key, const char *run_id, char *err, size_t errlen)
{
    if (!run_id || !run_id[0] || strlen(run_id) > 128)
        return mv_seterr(err, errlen, MV_EINVAL, "invalid run id");
    return st_key(key, err, errlen, "mv:run:%s", run_id);
}

mv_err mv_state_run_put(mv_state *s, const char *run_id, const char *tenant, const char *profile,
                        int tasks, char *err, size_t errlen)
{
    char key[ST_KEYLEN], idx[ST_KEYLEN], ntasks[32], now[32];
    mv_err e = st_check(tenant, profile, NULL, err, errlen);
    if (!e) e = run_key(key, run_id, err, errlen);
    if (!e) e = st_key(idx, err, errlen, "mv:runs:%s", tenant);
    if (e) return e;
    snprintf(ntasks, sizeof ntasks, "%d", tasks);
    snprintf(now, sizeof now, "%" PRId64, mv_now_ms());
    st_args a = {0};
    sa_str(&a, "HSET");
    sa_str(&a, key);
    sa_str(&a, "tenant");
    sa_str(&a, tenant);
    sa_str(&a, "profile");
    sa_str(&a, profile);
    sa_str(&a, "tasks");
    sa_str(&a, ntasks);
    if ((e = st_int(s, 1, &a, NULL, err, errlen))) return e;
    /* a run put again (a scheduled slot fired again after a failover) keeps its start */
    st_args b = {0};
    sa_str(&b, "HSETNX");
    sa_str(&b, key);
    sa_str(&b, "started_ms");
    sa_str(&b, now);
    if ((e = st_int(s, 1, &b, NULL, err, errlen))) return e;
    st_args c = {0};
    sa_str(&c, "ZADD");
    sa_str(&c, idx);
    sa_str(&c, "NX");
    sa_str(&c, now);
    sa_str(&c, run_id);
    return st_int(s, 1, &c, NULL, err, errlen);
}

mv_err mv_state_run_tag(mv_state *s, const char *run_id, const char *field, const char *value,
                        char *err, size_t errlen)
{
    char key[ST_KEYLEN];
    mv_err e = run_key(key, run_id, err, errlen);
    if (e) return e;
    st_args a = {0};
    sa_str(&a, "HSET");
    sa_str(&a, key);
    sa_str(&a, field);
    sa_str(&a, value);
    return st_int(s, 1, &a, NULL, err, errlen);
}

/* KEYS: run hash, ended hash, status hash, errors hash. ARGV: mailbox, outcome, error, now,
 * run id. The ended hash remembers, per mailbox, "outcome messages bytes_raw bytes_stored
 * deduplicated" as last counted, so ending a mailbox again (a redelivered last chunk, a
 * dead-lettered task retried and done) replaces its share instead of adding it twice.
 * -> 1 counted for the first time, 2 replaced an earlier end. */
static const char LUA_RUN_END[] =
    "local prev = redis.call('HGET', KEYS[2], ARGV[1])\n"
    "local old = {'', 0, 0, 0, 0}\n"
    "if prev then\n"
    "  local i = 1\n"
    "  for w in string.gmatch(prev, '%S+') do old[i] = (i == 1) and w or tonumber(w); i = i + 1 "
    "end\n"
    "  redis.call('HINCRBY', KEYS[1], old[1], -1)\n"
    "end\n"
    "local names = {'messages', 'bytes_raw', 'bytes_stored', 'deduplicated'}\n"
    "local cur = {0, 0, 0, 0}\n"
    "if redis.call('HGET', KEYS[3], 'run') == ARGV[5] then\n"
    "  local v = redis.call('HMGET', KEYS[3], unpack(names))\n"
    "  for i = 1, 4 do cur[i] = tonumber(v[i]) or 0 end\n"
    "elseif prev then\n"
    "  for i = 1, 4 do cur[i] = old[i + 1] end\n"
    "end\n"
    "for i = 1, 4 do\n"
    "  local d = cur[i] - old[i + 1]\n"
    "  if d ~= 0 then redis.call('HINCRBY', KEYS[1], names[i], string.format('%d', d)) end\n"
    "end\n"
    "redis.call('HINCRBY', KEYS[1], ARGV[2], 1)\n"
    "redis.call('HSET', KEYS[2], ARGV[1],\n"
    "  string.format('%s %d %d %d %d', ARGV[2], cur[1], cur[2], cur[3], cur[4]))\n"
    "if ARGV[2] == 'done' then redis.call('HDEL', KEYS[4], ARGV[1])\n"
    "elseif redis.call('HEXISTS', KEYS[4], ARGV[1]) == 1 or\n"
    "       redis.call('HLEN', KEYS[4]) < 100 then\n"
    "  redis.call('HSET', KEYS[4], ARGV[1], ARGV[3])\n"
    "end\n"
    "local last = tonumber(redis.call('HGET', KEYS[1], 'ended_ms') or '0')\n"
    "if tonumber(ARGV[4]) > last then redis.call('HSET', KEYS[1], 'ended_ms', ARGV[4]) end\n"
    "return prev and 2 or 1\n";

mv_err mv_state_run_end(mv_state *s, const char *run_id, const char *tenant, const char *mailbox,
                        const char *outcome, const char *error, char *err, size_t errlen)
{
    char key[ST_KEYLEN], ended[ST_KEYLEN], status[ST_KEYLEN], errors[ST_KEYLEN], now[32];
    mv_err e = st_check(tenant, NULL, mailbox, err, errlen);
    if (!e) e = run_key(key, run_id, err, errlen);
    if (!e && strcmp(outcome, "done") && strcmp(outcome, "failed") && strcmp(outcome, "cancelled"))
        e = mv_seterr(err, errlen, MV_EINVAL, "invalid run outcome %s", outcome);
    if (!e) e = st_key(ended, err, errlen, "mv:run:%s:ended", run_id);
    if (!e) e = st_key(errors, err, errlen, "mv:run:%s:errors", run_id);
    if (!e) e = st_key(status, err, errlen, "mv:status:%s:%s", tenant, mailbox);
    if (e) return e;
    snprintf(now, sizeof now, "%" PRId64, mv_now_ms());
    st_args a = {0};
    sa_str(&a, key);
    sa_str(&a, ended);
    sa_str(&a, status);
    sa_str(&a, errors);
    sa_str(&a, mailbox);
    sa_str(&a, outcome);
    sa_bin(&a, error ? error : "", error ? strnlen(error, 1024) : 0);
    sa_str(&a, now);
    sa_str(&a, run_id);
    redisReply *r = NULL;
    /* not re-sent after a lost reply is harmless: the script replaces, never adds twice */
    if ((e = st_eval(s, 1, LUA_RUN_END, 4, &a, &r, err, errlen))) return e;
    freeReplyObject(r);
    return MV_OK;
}

mv_err mv_state_run_errors(mv_state *s, const char *run_id,
                           int (*cb)(void *ud, const char *mailbox, const char *error), void *ud,
                           char *err, size_t errlen)
{
    char key[ST_KEYLEN];
    mv_err e = run_key(key, run_id, err, errlen);
    if (!e) e = st_key(key, err, errlen, "mv:run:%s:errors", run_id);
    if (e) return e;
    return st_hgetall(s, key, cb, ud, err, errlen);
}

typedef struct run_walk {
    mv_state *s;
    int (*cb)(void *ud, const char *run_id, const char *field, const char *value);
    void *ud;
    mv_err e;
    char *err;
    size_t errlen;
} run_walk;

static int run_one(void *ud, const char *run_id)
{
    run_walk *w = ud;
    char key[ST_KEYLEN];
    if ((w->e = run_key(key, run_id, w->err, w->errlen))) return 1;
    st_args a = {0};
    sa_str(&a, "HGETALL");
    sa_str(&a, key);
    redisReply *r = NULL;
    if ((w->e = st_expect(w->s, 1, &a, REDIS_REPLY_ARRAY, 0, &r, w->err, w->errlen))) return 1;
    int stop = 0;
    for (size_t i = 0; !stop && i + 1 < r->elements; i += 2)
        if (r->element[i]->type == REDIS_REPLY_STRING &&
            r->element[i + 1]->type == REDIS_REPLY_STRING)
            stop = w->cb(w->ud, run_id, r->element[i]->str, r->element[i + 1]->str);
    freeReplyObject(r);
    return stop;
}

mv_err mv_state_run_list(mv_state *s, const char *tenant,
                         int (*cb)(void *ud, const char *run_id, const char *field,
                                   const char *value),
                         void *ud, char *err, size_t errlen)
{
    char idx[ST_KEYLEN];
    mv_err e = st_check(tenant, NULL, NULL, err, errlen);
    if (!e) e = st_key(idx, err, errlen, "mv:runs:%s", tenant);
    if (e) return e;
    st_args a = {0};
    sa_str(&a, "ZRANGE");
    sa_str(&a, idx);
    sa_str(&a, "0");
    sa_str(&a, "-1");
    redisReply *r = NULL;
    if ((e = st_expect(s, 1, &a, REDIS_REPLY_ARRAY, 0, &r, err, errlen))) return e;
    run_walk w = {s, cb, ud, MV_OK, err, errlen};
    for (size_t i = 0; i < r->elements; i++)
        if (r->element[i]->type == REDIS_REPLY_STRING && run_one(&w, r->element[i]->str)) break;
    freeReplyObject(r);
    return w.e;
}

/* ---- metrics and worker liveness ------------------------------------------------------ */

mv_err mv_state_metric_incr(mv_state *s, const char *tenant, const char *field, int64_t by,
                            char *err, size_t errlen)
{
    char key[ST_KEYLEN], num[32];
    mv_err e = MV_OK;
    if (tenant) e = st_check(tenant, NULL, NULL, err, errlen);
    if (!e && (!field || !field[0] || strlen(field) > 128))
        e = mv_seterr(err, errlen, MV_EINVAL, "invalid metric name");
    if (!e) e = st_key(key, err, errlen, tenant ? "mv:metrics:%s" : "mv:metrics", tenant);
    if (e) return e;
    snprintf(num, sizeof num, "%" PRId64, by);
    st_args a = {0};
    sa_str(&a, "HINCRBY");
    sa_str(&a, key);
    sa_str(&a, field);
    sa_str(&a, num);
    return st_int(s, 0, &a, NULL, err, errlen); /* not idempotent: never re-sent */
}

/* KEYS: the histogram hash. ARGV: value, then the bucket bounds in increasing order. */
static const char LUA_OBSERVE[] = "local v = tonumber(ARGV[1])\n"
                                  "for i = 2, #ARGV do\n"
                                  "  if v <= tonumber(ARGV[i]) then\n"
                                  "    redis.call('HINCRBY', KEYS[1], 'le_' .. ARGV[i], 1)\n"
                                  "  end\n"
                                  "end\n"
                                  "redis.call('HINCRBY', KEYS[1], 'count', 1)\n"
                                  "redis.call('HINCRBY', KEYS[1], 'sum', ARGV[1])\n"
                                  "return 1\n";

mv_err mv_state_metric_observe(mv_state *s, const char *name, int64_t value, const int64_t *bounds,
                               int nbounds, char *err, size_t errlen)
{
    char key[ST_KEYLEN], num[32][24];
    if (!mv_name_valid(name) || nbounds < 1 || nbounds > 30)
        return mv_seterr(err, errlen, MV_EINVAL, "invalid histogram");
    mv_err e = st_key(key, err, errlen, "mv:histogram:%s", name);
    if (e) return e;
    st_args a = {0};
    sa_str(&a, key);
    snprintf(num[0], sizeof num[0], "%" PRId64, value);
    sa_str(&a, num[0]);
    for (int i = 0; i < nbounds; i++) {
        snprintf(num[i + 1], sizeof num[0], "%" PRId64, bounds[i]);
        sa_str(&a, num[i + 1]);
    }
    redisReply *r = NULL;
    if ((e = st_eval(s, 0, LUA_OBSERVE, 1, &a, &r, err, errlen))) return e;
    freeReplyObject(r);
    return MV_OK;
}

mv_err mv_state_metrics_get(mv_state *s, const char *tenant,
                            int (*cb)(void *ud, const char *field, const char *value), void *ud,
                            char *err, size_t errlen)
{
    char key[ST_KEYLEN];
    mv_err e = MV_OK;
    if (tenant) e = st_check(tenant, NULL, NULL, err, errlen);
    if (!e) e = st_key(key, err, errlen, tenant ? "mv:metrics:%s" : "mv:metrics", tenant);
    if (e) return e;
    return st_hgetall(s, key, cb, ud, err, errlen);
}

mv_err mv_state_histogram_get(mv_state *s, const char *name,
                              int (*cb)(void *ud, const char *field, const char *value), void *ud,
                              char *err, size_t errlen)
{
    char key[ST_KEYLEN];
    if (!mv_name_valid(name)) return mv_seterr(err, errlen, MV_EINVAL, "invalid histogram");
    mv_err e = st_key(key, err, errlen, "mv:histogram:%s", name);
    if (e) return e;
    return st_hgetall(s, key, cb, ud, err, errlen);
}

mv_err mv_state_worker_seen(mv_state *s, const char *worker, int busy, int capacity, int gone,
                            char *err, size_t errlen)
{
    if (!worker || !worker[0] || strlen(worker) > 200 || strchr(worker, ' '))
        return mv_seterr(err, errlen, MV_EINVAL, "invalid worker id");
    char val[64];
    snprintf(val, sizeof val, "%" PRId64 " %d %d", mv_now_ms(), busy, capacity);
    st_args a = {0};
    sa_str(&a, gone ? "HDEL" : "HSET");
    sa_str(&a, "mv:workers");
    sa_str(&a, worker);
    if (!gone) sa_str(&a, val);
    return st_int(s, 1, &a, NULL, err, errlen);
}

typedef struct worker_walk {
    int (*cb)(void *ud, const char *worker, int64_t seen_ms, int busy, int capacity);
    void *ud;
} worker_walk;

static int worker_one(void *ud, const char *worker, const char *value)
{
    worker_walk *w = ud;
    long long seen = 0;
    int busy = 0, cap = 0;
    if (sscanf(value, "%lld %d %d", &seen, &busy, &cap) != 3) return 0;
    return w->cb(w->ud, worker, (int64_t)seen, busy, cap);
}

mv_err mv_state_worker_list(mv_state *s,
                            int (*cb)(void *ud, const char *worker, int64_t seen_ms, int busy,
                                      int capacity),
                            void *ud, char *err, size_t errlen)
{
    worker_walk w = {cb, ud};
    return st_hgetall(s, "mv:workers", worker_one, &w, err, errlen);
}

/* ---- fair dispatch ---------------------------------------------------------------------
 * Tasks wait per tenant in Redis and are moved onto Kafka by start-time fair queuing, so the
 * Kafka backlog stays about as long as the workers' capacity and a tenant with few mailboxes
 * is not queued behind one with many (docs/fairness.md). */

/* ARGV: tenant, item ("<mailbox>\t<payload>"), front ("1": LPUSH), mailbox to release or "".
 * A tenant that had nothing queued and whose tag is not ahead of the virtual time V starts at
 * V - 0.5: before every backlogged tenant (their tags are at least V), for one dispatch, after
 * which its tag rejoins the round. Idle time earns no more credit than that, and V never moves
 * back, so new arrivals cannot starve the backlogged (the "new flows first" of FQ-CoDel). */
static const char LUA_FAIR_PUSH[] =
    "local q = 'mv:fair:q:' .. ARGV[1]\n"
    "if ARGV[4] ~= '' then\n"
    "  redis.call('ZREM', 'mv:fair:inflight', ARGV[1] .. '/' .. ARGV[4])\n"
    "  redis.call('SREM', 'mv:fair:inflight:' .. ARGV[1], ARGV[4])\n"
    "end\n"
    "if ARGV[3] == '1' then redis.call('LPUSH', q, ARGV[2]) else redis.call('RPUSH', q, ARGV[2]) "
    "end\n"
    "if not redis.call('ZSCORE', 'mv:fair:ready', ARGV[1]) then\n"
    "  local v = tonumber(redis.call('GET', 'mv:fair:vtime') or '0') or 0\n"
    "  local t = tonumber(redis.call('HGET', 'mv:fair:tag', ARGV[1]) or '0') or 0\n"
    "  redis.call('ZADD', 'mv:fair:ready', t > v and t or v - 0.5, ARGV[1])\n"
    "end\n"
    "return 1\n";

/* ARGV: now_ms, max items, capacity factor, reap age ms. The budget is factor x the capacity
 * of the workers seen in the last 5 s; in flight are the tasks dispatched and not yet ended.
 * Entries in flight for longer than the reap age whose mailbox has ended (or has no status:
 * its tenant was removed) are released first: a task that died without saying so cannot hold
 * a slot for ever. Then, while the budget allows: the ready tenant with the smallest start tag
 * that is under its own cap (mv:tenant:{t} max_concurrent, 0 = none) gives its first task; the
 * tag advances by 1/weight (mv:tenant:{t} weight, default 1). A dispatched task is kept in
 * mv:fair:sending until the caller confirms it is on Kafka. -> {tenant, mailbox, payload}... */
static const char LUA_FAIR_DISPATCH[] =
    "local now = tonumber(ARGV[1])\n"
    "local w = redis.call('HGETALL', 'mv:workers')\n"
    "local cap = 0\n"
    "for i = 1, #w, 2 do\n"
    "  local seen, c = string.match(w[i + 1], '^(%d+) %-?%d+ (%d+)$')\n"
    "  if seen and tonumber(seen) >= now - 5000 then cap = cap + tonumber(c) end\n"
    "end\n"
    "cap = cap * tonumber(ARGV[3])\n"
    "local old = redis.call('ZRANGEBYSCORE', 'mv:fair:inflight', '-inf', now - tonumber(ARGV[4]),\n"
    "  'LIMIT', 0, 50)\n"
    "for _, m in ipairs(old) do\n"
    "  local sl = string.find(m, '/', 1, true)\n"
    "  local t, mb = string.sub(m, 1, sl - 1), string.sub(m, sl + 1)\n"
    "  local st = redis.call('HGET', 'mv:status:' .. t .. ':' .. mb, 'state')\n"
    "  if not st or st == 'done' or st == 'failed' or st == 'cancelled' then\n"
    "    redis.call('ZREM', 'mv:fair:inflight', m)\n"
    "    redis.call('SREM', 'mv:fair:inflight:' .. t, mb)\n"
    "  end\n"
    "end\n"
    "local n = redis.call('ZCARD', 'mv:fair:inflight')\n"
    "local out = {}\n"
    "local max = tonumber(ARGV[2])\n"
    "while n < cap and #out < 3 * max do\n"
    "  local cands = redis.call('ZRANGE', 'mv:fair:ready', 0, 99, 'WITHSCORES')\n"
    "  if #cands == 0 then break end\n"
    "  local pick, tag\n"
    "  for i = 1, #cands, 2 do\n"
    "    local tcap = tonumber(redis.call('HGET', 'mv:tenant:' .. cands[i], 'max_concurrent') or "
    "'0') or 0\n"
    "    if tcap <= 0 or redis.call('SCARD', 'mv:fair:inflight:' .. cands[i]) < tcap then\n"
    "      pick = cands[i]; tag = tonumber(cands[i + 1]); break\n"
    "    end\n"
    "  end\n"
    "  if not pick then break end\n"
    "  local item = redis.call('LPOP', 'mv:fair:q:' .. pick)\n"
    "  if not item then\n"
    "    redis.call('ZREM', 'mv:fair:ready', pick)\n"
    "  else\n"
    "    local tab = string.find(item, '\\t', 1, true)\n"
    "    local mb, payload = string.sub(item, 1, tab - 1), string.sub(item, tab + 1)\n"
    "    local key = pick .. '/' .. mb\n"
    "    if redis.call('ZADD', 'mv:fair:inflight', now, key) == 1 then n = n + 1 end\n"
    "    redis.call('SADD', 'mv:fair:inflight:' .. pick, mb)\n"
    "    redis.call('HSET', 'mv:fair:sending', key, ARGV[1] .. '\\t' .. payload)\n"
    "    local wt = tonumber(redis.call('HGET', 'mv:tenant:' .. pick, 'weight') or '1') or 1\n"
    "    local nxt = tag + 1 / wt\n"
    "    local v = tonumber(redis.call('GET', 'mv:fair:vtime') or '0') or 0\n"
    "    if tag > v then redis.call('SET', 'mv:fair:vtime', string.format('%.6f', tag)) end\n"
    "    redis.call('HSET', 'mv:fair:tag', pick, string.format('%.6f', nxt))\n"
    "    if redis.call('LLEN', 'mv:fair:q:' .. pick) > 0 then\n"
    "      redis.call('ZADD', 'mv:fair:ready', string.format('%.6f', nxt), pick)\n"
    "    else\n"
    "      redis.call('ZREM', 'mv:fair:ready', pick)\n"
    "    end\n"
    "    redis.call('LPUSH', 'mv:fair:log', key)\n"
    "    redis.call('LTRIM', 'mv:fair:log', 0, 999)\n"
    "    out[#out + 1] = pick\n"
    "    out[#out + 1] = mb\n"
    "    out[#out + 1] = payload\n"
    "  end\n"
    "end\n"
    "return out\n";

mv_err mv_state_fair_push(mv_state *s, const char *tenant, const char *mailbox, const void *payload,
                          size_t len, int front, const char *release, char *err, size_t errlen)
{
    mv_err e = st_check(tenant, NULL, mailbox, err, errlen);
    if (!e && release && release[0]) e = st_check(tenant, NULL, release, err, errlen);
    if (e) return e;
    size_t ml = strlen(mailbox);
    char *item = malloc(ml + 1 + len);
    if (!item) return mv_seterr(err, errlen, MV_ENOMEM, "out of memory");
    memcpy(item, mailbox, ml);
    item[ml] = '\t';
    memcpy(item + ml + 1, payload, len);
    st_args a = {0};
    sa_str(&a, tenant);
    sa_bin(&a, item, ml + 1 + len);
    sa_str(&a, front ? "1" : "0");
    sa_str(&a, release ? release : "");
    redisReply *r = NULL;
    e = st_eval(s, 0, LUA_FAIR_PUSH, 0, &a, &r, err, errlen); /* a push is not idempotent */
    free(item);
    if (!e) freeReplyObject(r);
    return e;
}

/* ARGV: tenant, run id, profile, now_ms, stale_ms (a running task's heartbeat older than this
 * is dead), check ("1": look at the mailbox's current task), skip_busy ("1"), then per
 * mailbox: mailbox, task id, payload. For each mailbox, unless skipped: clear its cancel mark,
 * reset its status to queued for this run, add it to the tenant's mailboxes, and queue the
 * task in the tenant's fair queue. -> per mailbox 0 queued, 1 skipped as busy (its previous
 * task is queued, running or retrying), 2 skipped as already started in this run. */
static const char LUA_ENQUEUE[] =
    "local t, run, now = ARGV[1], ARGV[2], tonumber(ARGV[4])\n"
    "local out = {}\n"
    "local pushed = false\n"
    "for i = 8, #ARGV, 3 do\n"
    "  local mb = ARGV[i]\n"
    "  local sk = 'mv:status:' .. t .. ':' .. mb\n"
    "  local verdict = 0\n"
    "  if ARGV[6] == '1' then\n"
    "    local v = redis.call('HMGET', sk, 'state', 'run', 'heartbeat_ms')\n"
    "    local st, r, hb = v[1] or '', v[2] or '', tonumber(v[3] or '0') or 0\n"
    "    local active = st == 'queued' or st == 'running' or st == 'retrying'\n"
    "    if st == 'running' and now - hb > tonumber(ARGV[5]) then active = false end\n"
    "    if r == run then\n"
    "      if st ~= 'queued' then verdict = 2 end\n"
    "    elseif ARGV[7] == '1' and active then\n"
    "      verdict = 1\n"
    "    end\n"
    "  end\n"
    "  if verdict == 0 then\n"
    "    redis.call('DEL', 'mv:cancel:' .. t .. ':' .. mb)\n"
    "    redis.call('HSET', sk, 'state', 'queued', 'task', ARGV[i + 1], 'run', run, 'profile',\n"
    "      ARGV[3], 'chunk', '0', 'attempt', '0', 'messages', '0', 'bytes_raw', '0',\n"
    "      'bytes_stored', '0', 'deduplicated', '0', 'removed', '0', 'throttled', '0',\n"
    "      'deleted_at_source', '0', 'skipped', '0', 'error', '', 'queued_ms', ARGV[4],\n"
    "      'started_ms', '', 'finished_ms', '', 'folder', '')\n"
    "    redis.call('SADD', 'mv:mailboxes:' .. t, mb)\n"
    "    redis.call('RPUSH', 'mv:fair:q:' .. t, mb .. '\\t' .. ARGV[i + 2])\n"
    "    pushed = true\n"
    "  end\n"
    "  out[#out + 1] = verdict\n"
    "end\n"
    "if pushed and not redis.call('ZSCORE', 'mv:fair:ready', t) then\n"
    "  local v = tonumber(redis.call('GET', 'mv:fair:vtime') or '0') or 0\n"
    "  local tag = tonumber(redis.call('HGET', 'mv:fair:tag', t) or '0') or 0\n"
    "  redis.call('ZADD', 'mv:fair:ready', tag > v and tag or v - 0.5, t)\n"
    "end\n"
    "return out\n";

mv_err mv_state_enqueue_batch(mv_state *s, const char *tenant, const char *profile,
                              const char *run_id, int stale_ms, int check, int skip_busy, int n,
                              const char *const *mailboxes, const char *const *task_ids,
                              const char *const *payloads, const size_t *lens, int *verdicts,
                              char *err, size_t errlen)
{
    if (n < 1 || n > MV_STATE_ENQUEUE_BATCH)
        return mv_seterr(err, errlen, MV_EINVAL, "enqueue: 1..%d mailboxes per batch",
                         MV_STATE_ENQUEUE_BATCH);
    mv_err e = st_check(tenant, profile, NULL, err, errlen);
    for (int i = 0; !e && i < n; i++)
        e = st_check(tenant, NULL, mailboxes[i], err, errlen);
    if (!e && (!run_id || !run_id[0] || strlen(run_id) > 128))
        e = mv_seterr(err, errlen, MV_EINVAL, "invalid run id");
    if (e) return e;
    char now[24], stale[24];
    snprintf(now, sizeof now, "%" PRId64, mv_now_ms());
    snprintf(stale, sizeof stale, "%d", stale_ms);
    st_args a = {0};
    sa_str(&a, tenant);
    sa_str(&a, run_id);
    sa_str(&a, profile);
    sa_str(&a, now);
    sa_str(&a, stale);
    sa_str(&a, check ? "1" : "0");
    sa_str(&a, skip_busy ? "1" : "0");
    for (int i = 0; i < n; i++) {
        sa_str(&a, mailboxes[i]);
        sa_str(&a, task_ids[i]);
        sa_bin(&a, payloads[i], lens[i]);
    }
    redisReply *r = NULL;
    /* not re-sent after a lost reply: a second push would queue the tasks twice */
    if ((e = st_eval(s, 0, LUA_ENQUEUE, 0, &a, &r, err, errlen))) return e;
    if (r->type != REDIS_REPLY_ARRAY || r->elements != (size_t)n)
        e = mv_seterr(err, errlen, MV_EPROTO, "enqueue: unexpected reply");
    for (int i = 0; !e && i < n; i++)
        verdicts[i] = r->element[i]->type == REDIS_REPLY_INTEGER ? (int)r->element[i]->integer : 0;
    freeReplyObject(r);
    return e;
}

mv_err mv_state_fair_release(mv_state *s, const char *tenant, const char *mailbox, char *err,
                             size_t errlen)
{
    char member[ST_KEYLEN], set[ST_KEYLEN];
    mv_err e = st_check(tenant, NULL, mailbox, err, errlen);
    if (!e) e = st_key(member, err, errlen, "%s/%s", tenant, mailbox);
    if (!e) e = st_key(set, err, errlen, "mv:fair:inflight:%s", tenant);
    if (e) return e;
    st_args a = {0};
    sa_str(&a, "ZREM");
    sa_str(&a, "mv:fair:inflight");
    sa_str(&a, member);
    if ((e = st_int(s, 1, &a, NULL, err, errlen))) return e;
    st_args b = {0};
    sa_str(&b, "SREM");
    sa_str(&b, set);
    sa_str(&b, mailbox);
    return st_int(s, 1, &b, NULL, err, errlen);
}

/* HDEL the sending entries ("t/mailbox") of the tasks just confirmed on Kafka. */
static mv_err fair_sent(mv_state *s, const char *const *k, const size_t *kl, size_t n, char *err,
                        size_t errlen)
{
    for (size_t i = 0; i < n;) {
        st_args a = {0};
        sa_str(&a, "HDEL");
        sa_str(&a, "mv:fair:sending");
        for (; i < n && a.n < ST_MAXARGS; i++)
            sa_bin(&a, k[i], kl[i]);
        mv_err e = st_int(s, 1, &a, NULL, err, errlen);
        if (e) return e;
    }
    return MV_OK;
}

static int fair_name(char *out, size_t outlen, const char *p, size_t len)
{
    if (len >= outlen) return -1;
    memcpy(out, p, len);
    out[len] = '\0';
    return 0;
}

mv_err mv_state_fair_dispatch(mv_state *s, int64_t now_ms, int max_items, int factor,
                              int reap_age_ms, mv_fair_send_fn send, mv_fair_flush_fn flush,
                              void *ud, int *ndispatched, char *err, size_t errlen)
{
    char num[4][24];
    snprintf(num[0], sizeof num[0], "%" PRId64, now_ms);
    snprintf(num[1], sizeof num[1], "%d", max_items);
    snprintf(num[2], sizeof num[2], "%d", factor);
    snprintf(num[3], sizeof num[3], "%d", reap_age_ms);
    st_args a = {0};
    for (int i = 0; i < 4; i++)
        sa_str(&a, num[i]);
    redisReply *r = NULL;
    *ndispatched = 0;
    mv_err e = st_eval(s, 0, LUA_FAIR_DISPATCH, 0, &a, &r, err, errlen);
    if (e) return e;
    size_t n = r->type == REDIS_REPLY_ARRAY ? r->elements / 3 : 0;
    if (r->type != REDIS_REPLY_ARRAY || r->elements % 3) {
        freeReplyObject(r);
        return mv_seterr(err, errlen, MV_EPROTO, "fair dispatch: unexpected reply");
    }
    char(*keys)[ST_KEYLEN] = calloc(n + 1, sizeof *keys);
    const char **kp = calloc(n + 1, sizeof *kp);
    size_t *kl = calloc(n + 1, sizeof *kl);
    if (!keys || !kp || !kl) {
        e = mv_seterr(err, errlen, MV_ENOMEM, "out of memory");
        goto out;
    }
    for (size_t i = 0; i < n; i++) {
        redisReply *t = r->element[3 * i], *m = r->element[3 * i + 1], *p = r->element[3 * i + 2];
        char tenant[128], mailbox[300];
        if (fair_name(tenant, sizeof tenant, t->str, t->len) ||
            fair_name(mailbox, sizeof mailbox, m->str, m->len)) {
            e = mv_seterr(err, errlen, MV_EPROTO, "fair dispatch: bad queue entry");
            goto out;
        }
        if (send(ud, tenant, mailbox, p->str, p->len))
            continue; /* left in mv:fair:sending: the recovery sends it again */
        snprintf(keys[*ndispatched], sizeof keys[0], "%s/%s", tenant, mailbox);
        kp[*ndispatched] = keys[*ndispatched];
        kl[*ndispatched] = strlen(keys[*ndispatched]);
        (*ndispatched)++;
    }
    if (*ndispatched == 0) goto out;
    if (flush(ud)) {
        e = mv_seterr(err, errlen, MV_ESERVER, "fair dispatch: tasks not acknowledged by Kafka");
        goto out;
    }
    e = fair_sent(s, kp, kl, (size_t)*ndispatched, err, errlen);
out:
    free(keys);
    free(kp);
    free(kl);
    freeReplyObject(r);
    return e;
}

mv_err mv_state_fair_recover(mv_state *s, int64_t older_than_ms, mv_fair_send_fn send,
                             mv_fair_flush_fn flush, void *ud, int *nsent, char *err, size_t errlen)
{
    st_args a = {0};
    sa_str(&a, "HGETALL");
    sa_str(&a, "mv:fair:sending");
    redisReply *r = NULL;
    *nsent = 0;
    mv_err e = st_expect(s, 1, &a, REDIS_REPLY_ARRAY, 0, &r, err, errlen);
    if (e) return e;
    const char **kp = calloc(r->elements / 2 + 1, sizeof *kp);
    size_t *kl = calloc(r->elements / 2 + 1, sizeof *kl);
    if (!kp || !kl) {
        free(kp);
        free(kl);
        freeReplyObject(r);
        return mv_seterr(err, errlen, MV_ENOMEM, "out of memory");
    }
    size_t n = 0;
    for (size_t i = 0; i + 1 < r->elements; i += 2) {
        redisReply *k = r->element[i], *v = r->element[i + 1];
        if (k->type != REDIS_REPLY_STRING || v->type != REDIS_REPLY_STRING) continue;
        const char *tab = memchr(v->str, '\t', v->len), *sl = memchr(k->str, '/', k->len);
        char tenant[128], mailbox[300];
        if (!tab || !sl || atoll(v->str) > older_than_ms ||
            fair_name(tenant, sizeof tenant, k->str, (size_t)(sl - k->str)) ||
            fair_name(mailbox, sizeof mailbox, sl + 1, k->len - (size_t)(sl - k->str) - 1))
            continue;
        if (send(ud, tenant, mailbox, tab + 1, v->len - (size_t)(tab + 1 - v->str)))
            continue; /* kept for the next recovery */
        kp[n] = k->str;
        kl[n++] = k->len;
    }
    if (n && flush(ud) == 0) {
        e = fair_sent(s, kp, kl, n, err, errlen);
        if (!e) *nsent = (int)n;
    }
    free(kp);
    free(kl);
    freeReplyObject(r);
    return e;
}

mv_err mv_state_fair_counts(mv_state *s, const char *tenant, int64_t *queued, int64_t *inflight,
                            char *err, size_t errlen)
{
    char q[ST_KEYLEN], f[ST_KEYLEN];
    mv_err e = st_check(tenant, NULL, NULL, err, errlen);
    if (!e) e = st_key(q, err, errlen, "mv:fair:q:%s", tenant);
    if (!e) e = st_key(f, err, errlen, "mv:fair:inflight:%s", tenant);
    if (e) return e;
    st_args a = {0};
    sa_str(&a, "LLEN");
    sa_str(&a, q);
    long long v = 0;
    if ((e = st_int(s, 1, &a, &v, err, errlen))) return e;
    *queued = v;
    st_args b = {0};
    sa_str(&b, "SCARD");
    sa_str(&b, f);
    if ((e = st_int(s, 1, &b, &v, err, errlen))) return e;
    *inflight = v;
    return MV_OK;
}

mv_err mv_state_tenant_limit(mv_state *s, const char *tenant, const char *field, int value,
                             char *err, size_t errlen)
{
    char key[ST_KEYLEN], num[24];
    mv_err e = st_check(tenant, NULL, NULL, err, errlen);
    if (!e && strcmp(field, "max_concurrent") && strcmp(field, "weight"))
        e = mv_seterr(err, errlen, MV_EINVAL, "unknown tenant limit %s", field);
    if (!e && (value < 0 || value > 100000 || (!strcmp(field, "weight") && value < 1)))
        e = mv_seterr(err, errlen, MV_EINVAL, "%s: %d is out of range", field, value);
    if (!e) e = st_key(key, err, errlen, "mv:tenant:%s", tenant);
    if (e) return e;
    snprintf(num, sizeof num, "%d", value);
    st_args a = {0};
    sa_str(&a, "HSET");
    sa_str(&a, key);
    sa_str(&a, field);
    sa_str(&a, num);
    return st_int(s, 1, &a, NULL, err, errlen);
}

/* ---- dead letters retried -------------------------------------------------------------- */

mv_err mv_state_dlq_retried(mv_state *s, int32_t partition, int64_t offset, int mark,
                            int *was_marked, char *err, size_t errlen)
{
    char member[64];
    snprintf(member, sizeof member, "%" PRId32 ":%" PRId64, partition, offset);
    st_args a = {0};
    sa_str(&a, mark ? "SADD" : "SISMEMBER");
    sa_str(&a, "mv:dlq:retried");
    sa_str(&a, member);
    long long v = 0;
    mv_err e = st_int(s, 1, &a, &v, err, errlen);
    if (!e && was_marked) *was_marked = mark ? v == 0 : v == 1;
    return e;
}

/* ---- admin API tokens ------------------------------------------------------------------ */

#define TOKENS "mv:api:tokens"           /* sha256 hex -> name */
#define TOKEN_NAMES "mv:api:token-names" /* name -> "sha256hex created_ms" */

static mv_err token_hash_check(const char *hash_hex, char *err, size_t errlen)
{
    if (!hash_hex || strlen(hash_hex) != 64 || strspn(hash_hex, "0123456789abcdef") != 64)
        return mv_seterr(err, errlen, MV_EINVAL, "a token hash is 64 lower-case hex digits");
    return MV_OK;
}

static const char LUA_TOKEN_PUT[] =
    "if redis.call('HEXISTS', KEYS[2], ARGV[2]) == 1 then return 0 end\n"
    "redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])\n"
    "redis.call('HSET', KEYS[2], ARGV[2], ARGV[1] .. ' ' .. ARGV[3])\n"
    "return 1\n";

mv_err mv_state_apitoken_put(mv_state *s, const char *hash_hex, const char *name, char *err,
                             size_t errlen)
{
    mv_err e = token_hash_check(hash_hex, err, errlen);
    if (!e && !mv_name_valid(name))
        e = mv_seterr(err, errlen, MV_EINVAL, "invalid token name \"%.64s\"", name ? name : "");
    if (e) return e;
    char now[32];
    snprintf(now, sizeof now, "%" PRId64, mv_now_ms());
    st_args a = {0};
    sa_str(&a, TOKENS);
    sa_str(&a, TOKEN_NAMES);
    sa_str(&a, hash_hex);
    sa_str(&a, name);
    sa_str(&a, now);
    redisReply *r = NULL;
    if ((e = st_eval(s, 0, LUA_TOKEN_PUT, 2, &a, &r, err, errlen))) return e;
    if (r->type == REDIS_REPLY_INTEGER && r->integer == 0)
        e = mv_seterr(err, errlen, MV_EEXIST, "a token named \"%s\" exists", name);
    freeReplyObject(r);
    return e;
}

mv_err mv_state_apitoken_find(mv_state *s, const char *hash_hex, char *name, size_t namelen,
                              char *err, size_t errlen)
{
    mv_err e = token_hash_check(hash_hex, err, errlen);
    if (e) return e;
    st_args a = {0};
    sa_str(&a, "HGET");
    sa_str(&a, TOKENS);
    sa_str(&a, hash_hex);
    redisReply *r = NULL;
    if ((e = st_expect(s, 1, &a, REDIS_REPLY_STRING, 1, &r, err, errlen))) return e;
    if (r->type == REDIS_REPLY_STRING)
        snprintf(name, namelen, "%.*s", (int)r->len, r->str);
    else
        e = mv_seterr(err, errlen, MV_ENOTFOUND, "unknown token");
    freeReplyObject(r);
    return e;
}

mv_err mv_state_apitoken_list(mv_state *s,
                              int (*cb)(void *ud, const char *name, int64_t created_ms), void *ud,
                              char *err, size_t errlen)
{
    st_args a = {0};
    sa_str(&a, "HGETALL");
    sa_str(&a, TOKEN_NAMES);
    redisReply *r = NULL;
    mv_err e = st_expect(s, 1, &a, REDIS_REPLY_ARRAY, 0, &r, err, errlen);
    if (e) return e;
    for (size_t i = 0; i + 1 < r->elements; i += 2) {
        const char *v = r->element[i + 1]->str, *sp = v ? strchr(v, ' ') : NULL;
        if (r->element[i]->type == REDIS_REPLY_STRING && sp &&
            cb(ud, r->element[i]->str, atoll(sp + 1)))
            break;
    }
    freeReplyObject(r);
    return MV_OK;
}

static const char LUA_TOKEN_DEL[] = "local v = redis.call('HGET', KEYS[2], ARGV[1])\n"
                                    "if not v then return 0 end\n"
                                    "local h = string.match(v, '^(%x+)')\n"
                                    "redis.call('HDEL', KEYS[1], h)\n"
                                    "redis.call('HDEL', KEYS[2], ARGV[1])\n"
                                    "return 1\n";

mv_err mv_state_apitoken_del(mv_state *s, const char *name, char *err, size_t errlen)
{
    if (!mv_name_valid(name))
        return mv_seterr(err, errlen, MV_EINVAL, "invalid token name \"%.64s\"", name ? name : "");
    st_args a = {0};
    sa_str(&a, TOKENS);
    sa_str(&a, TOKEN_NAMES);
    sa_str(&a, name);
    redisReply *r = NULL;
    mv_err e = st_eval(s, 1, LUA_TOKEN_DEL, 2, &a, &r, err, errlen);
    if (e) return e;
    if (r->type == REDIS_REPLY_INTEGER && r->integer == 0)
        e = mv_seterr(err, errlen, MV_ENOTFOUND, "no token named \"%s\"", name);
    freeReplyObject(r);
    return e;
}

/* ---- leases --------------------------------------------------------------------------- */

/* The lease scripts over explicit keys; what names the lease in errors ("mailbox t/m"). */
static mv_err lease_acquire(mv_state *s, const char *lease, const char *fence, const char *what,
                            const char *owner, int ttl_ms, uint64_t *token, char *holder,
                            size_t holderlen, char *err, size_t errlen)
{
    char ttl[32];
    snprintf(ttl, sizeof ttl, "%d", ttl_ms);
    st_args a = {0};
    sa_str(&a, lease);
    sa_str(&a, fence);
    sa_str(&a, owner);
    sa_str(&a, ttl);
    redisReply *r = NULL;
    /* not retried: the script increments the fence counter */
    mv_err e = st_eval(s, 0, LUA_ACQUIRE, 2, &a, &r, err, errlen);
    if (e) return e;
    if (r->type != REDIS_REPLY_ARRAY || r->elements != 2 ||
        r->element[0]->type != REDIS_REPLY_INTEGER) {
        e = st_bad_reply(r, "lease acquire script", err, errlen);
    } else if (r->element[0]->integer == 1 && r->element[1]->type == REDIS_REPLY_INTEGER) {
        *token = (uint64_t)r->element[1]->integer;
    } else if (r->element[0]->integer == 0 && r->element[1]->type == REDIS_REPLY_STRING) {
        char who[256];
        st_holder(r->element[1]->str, r->element[1]->len, who, sizeof who);
        st_holder(r->element[1]->str, r->element[1]->len, holder, holderlen);
        e = mv_seterr(err, errlen, MV_EBUSY, "%s is leased by %s", what, who);
    } else {
        e = st_bad_reply(r->element[1], "lease acquire script", err, errlen);
    }
    freeReplyObject(r);
    return e;
}

/* Shared by renew, release and the fenced writes: 1 -> OK, 0 -> lease gone, string -> other
 * holder. */
static mv_err st_fenced_result(redisReply *r, const char *op, const char *what, char *err,
                               size_t errlen)
{
    if (r->type == REDIS_REPLY_INTEGER && r->integer == 1) return MV_OK;
    if (r->type == REDIS_REPLY_INTEGER && r->integer == 0)
        return mv_seterr(err, errlen, MV_EBUSY, "%s %s: fenced: lease is not held", op, what);
    if (r->type == REDIS_REPLY_STRING) {
        char who[256];
        st_holder(r->str, r->len, who, sizeof who);
        return mv_seterr(err, errlen, MV_EBUSY, "%s %s: fenced: lease is held by %s", op, what,
                         who);
    }
    return st_bad_reply(r, op, err, errlen);
}

static mv_err lease_renew(mv_state *s, const char *lease, const char *fence, const char *what,
                          const char *owner, uint64_t token, int ttl_ms, char *err, size_t errlen)
{
    char val[512], ttl[32], tok[32];
    mv_err e = st_lease_value(owner, token, val, sizeof val, err, errlen);
    if (e) return e;
    snprintf(ttl, sizeof ttl, "%d", ttl_ms);
    snprintf(tok, sizeof tok, "%" PRIu64, token);
    st_args a = {0};
    sa_str(&a, lease);
    sa_str(&a, fence);
    sa_str(&a, val);
    sa_str(&a, ttl);
    sa_str(&a, tok);
    redisReply *r = NULL;
    e = st_eval(s, 1, LUA_RENEW, 2, &a, &r, err, errlen);
    if (e) return e;
    e = st_fenced_result(r, "lease renew", what, err, errlen);
    freeReplyObject(r);
    return e;
}

static mv_err lease_release(mv_state *s, const char *lease, const char *what, const char *owner,
                            uint64_t token, char *err, size_t errlen)
{
    char val[512];
    mv_err e = st_lease_value(owner, token, val, sizeof val, err, errlen);
    if (e) return e;
    st_args a = {0};
    sa_str(&a, lease);
    sa_str(&a, val);
    redisReply *r = NULL;
    e = st_eval(s, 1, LUA_RELEASE, 1, &a, &r, err, errlen);
    if (e) return e;
    /* an expired lease (0) is already released */
    if (!(r->type == REDIS_REPLY_INTEGER && r->integer == 0))
        e = st_fenced_result(r, "lease release", what, err, errlen);
    freeReplyObject(r);
    return e;
}

/* The keys and name of a mailbox's lease, after the arguments are checked. */
static mv_err mailbox_lease(const char *tenant, const char *mailbox, const char *owner, int ttl_ms,
                            char *lease, char *fence, char *what, char *err, size_t errlen)
{
    mv_err e = st_check(tenant, NULL, mailbox, err, errlen);
    if (!e && owner && !owner[0]) e = mv_seterr(err, errlen, MV_EINVAL, "lease owner is empty");
    if (!e && ttl_ms <= 0) e = mv_seterr(err, errlen, MV_EINVAL, "lease ttl must be > 0 ms");
    if (!e) e = st_key(lease, err, errlen, "mv:lease:%s:%s", tenant, mailbox);
    if (!e) e = st_key(fence, err, errlen, "mv:fence:%s:%s", tenant, mailbox);
    if (!e) snprintf(what, ST_KEYLEN, "mailbox %s/%s", tenant, mailbox);
    return e;
}

mv_err mv_state_lease_acquire(mv_state *s, const char *tenant, const char *mailbox,
                              const char *owner, int ttl_ms, uint64_t *token, char *holder,
                              size_t holderlen, char *err, size_t errlen)
{
    char lease[ST_KEYLEN], fence[ST_KEYLEN], what[ST_KEYLEN];
    *token = 0;
    if (holder && holderlen) holder[0] = '\0';
    if (!owner) return mv_seterr(err, errlen, MV_EINVAL, "lease owner is empty");
    mv_err e = mailbox_lease(tenant, mailbox, owner, ttl_ms, lease, fence, what, err, errlen);
    return e ? e
             : lease_acquire(s, lease, fence, what, owner, ttl_ms, token, holder, holderlen, err,
                             errlen);
}

mv_err mv_state_lease_renew(mv_state *s, const char *tenant, const char *mailbox, const char *owner,
                            uint64_t token, int ttl_ms, char *err, size_t errlen)
{
    char lease[ST_KEYLEN], fence[ST_KEYLEN], what[ST_KEYLEN];
    mv_err e = mailbox_lease(tenant, mailbox, NULL, ttl_ms, lease, fence, what, err, errlen);
    return e ? e : lease_renew(s, lease, fence, what, owner, token, ttl_ms, err, errlen);
}

mv_err mv_state_lease_release(mv_state *s, const char *tenant, const char *mailbox,
                              const char *owner, uint64_t token, char *err, size_t errlen)
{
    char lease[ST_KEYLEN], fence[ST_KEYLEN], what[ST_KEYLEN];
    mv_err e = mailbox_lease(tenant, mailbox, NULL, 1, lease, fence, what, err, errlen);
    return e ? e : lease_release(s, lease, what, owner, token, err, errlen);
}

/* ---- the scheduler's leader lease and schedule slots ---------------------------------- */

#define LEADER_LEASE "mv:leader:scheduler"
#define LEADER_FENCE "mv:fence:leader:scheduler"
#define SCHED_INDEX "mv:schedules"

mv_err mv_state_leader_acquire(mv_state *s, const char *owner, int ttl_ms, uint64_t *token,
                               char *holder, size_t holderlen, char *err, size_t errlen)
{
    *token = 0;
    if (holder && holderlen) holder[0] = '\0';
    if (!owner || !owner[0] || ttl_ms <= 0)
        return mv_seterr(err, errlen, MV_EINVAL, "leader lease: empty owner or ttl <= 0");
    return lease_acquire(s, LEADER_LEASE, LEADER_FENCE, "scheduler leadership", owner, ttl_ms,
                         token, holder, holderlen, err, errlen);
}

mv_err mv_state_leader_renew(mv_state *s, const char *owner, uint64_t token, int ttl_ms, char *err,
                             size_t errlen)
{
    return lease_renew(s, LEADER_LEASE, LEADER_FENCE, "scheduler leadership", owner, token, ttl_ms,
                       err, errlen);
}

mv_err mv_state_leader_release(mv_state *s, const char *owner, uint64_t token, char *err,
                               size_t errlen)
{
    return lease_release(s, LEADER_LEASE, "scheduler leadership", owner, token, err, errlen);
}

mv_err mv_state_leader_get(mv_state *s, char *holder, size_t holderlen, char *err, size_t errlen)
{
    if (holder && holderlen) holder[0] = '\0';
    char *v = NULL;
    size_t len = 0;
    mv_err e = st_get_copy(s, LEADER_LEASE, &v, &len, err, errlen);
    if (e == MV_ENOTFOUND) return MV_OK;
    if (!e) st_holder(v, len, holder, holderlen);
    free(v);
    return e;
}

/* KEYS: leader lease, schedule hash. ARGV: "owner|token", profile, expected value ("" for
 * none), new value. -> 1 written, -1 the slot moved meanwhile, 0 no leader, or the holder. */
static const char LUA_SLOT_SET[] = "local v = redis.call('GET', KEYS[1])\n"
                                   "if v ~= ARGV[1] then return v or 0 end\n"
                                   "local cur = redis.call('HGET', KEYS[2], ARGV[2]) or ''\n"
                                   "if cur ~= ARGV[3] then return -1 end\n"
                                   "redis.call('HSET', KEYS[2], ARGV[2], ARGV[4])\n"
                                   "return 1\n";

mv_err mv_state_slot_get(mv_state *s, const char *tenant, const char *profile, char *value,
                         size_t valuelen, char *err, size_t errlen)
{
    char key[ST_KEYLEN];
    value[0] = '\0';
    mv_err e = st_check(tenant, profile, NULL, err, errlen);
    if (!e) e = st_key(key, err, errlen, "mv:sched:%s", tenant);
    if (e) return e;
    st_args a = {0};
    sa_str(&a, "HGET");
    sa_str(&a, key);
    sa_str(&a, profile);
    redisReply *r = NULL;
    if ((e = st_expect(s, 1, &a, REDIS_REPLY_STRING, 1, &r, err, errlen))) return e;
    if (r->type == REDIS_REPLY_STRING) snprintf(value, valuelen, "%.*s", (int)r->len, r->str);
    freeReplyObject(r);
    return MV_OK;
}

mv_err mv_state_slot_set(mv_state *s, const char *owner, uint64_t token, const char *tenant,
                         const char *profile, const char *expect, const char *value, char *err,
                         size_t errlen)
{
    char key[ST_KEYLEN], val[512];
    mv_err e = st_check(tenant, profile, NULL, err, errlen);
    if (!e) e = st_key(key, err, errlen, "mv:sched:%s", tenant);
    if (!e) e = st_lease_value(owner, token, val, sizeof val, err, errlen);
    if (e) return e;
    st_args a = {0};
    sa_str(&a, LEADER_LEASE);
    sa_str(&a, key);
    sa_str(&a, val);
    sa_str(&a, profile);
    sa_str(&a, expect ? expect : "");
    sa_str(&a, value);
    redisReply *r = NULL;
    if ((e = st_eval(s, 1, LUA_SLOT_SET, 2, &a, &r, err, errlen))) return e;
    if (r->type == REDIS_REPLY_INTEGER && r->integer == -1)
        e = mv_seterr(err, errlen, MV_EBUSY, "schedule of %s/%s moved meanwhile", tenant, profile);
    else
        e = st_fenced_result(r, "schedule slot", "scheduler leadership", err, errlen);
    freeReplyObject(r);
    return e;
}

mv_err mv_state_sched_index(mv_state *s, const char *tenant, const char *profile, int scheduled,
                            char *err, size_t errlen)
{
    char member[ST_KEYLEN], key[ST_KEYLEN];
    mv_err e = st_check(tenant, profile, NULL, err, errlen);
    if (!e) e = st_key(member, err, errlen, "%s/%s", tenant, profile);
    if (!e) e = st_key(key, err, errlen, "mv:sched:%s", tenant);
    if (e) return e;
    st_args a = {0};
    sa_str(&a, scheduled ? "SADD" : "SREM");
    sa_str(&a, SCHED_INDEX);
    sa_str(&a, member);
    if ((e = st_int(s, 1, &a, NULL, err, errlen)) || scheduled) return e;
    st_args d = {0}; /* no schedule any more: its slot record goes too */
    sa_str(&d, "HDEL");
    sa_str(&d, key);
    sa_str(&d, profile);
    return st_int(s, 1, &d, NULL, err, errlen);
}

typedef struct sched_split {
    int (*cb)(void *ud, const char *tenant, const char *profile);
    void *ud;
} sched_split;

static int sched_member(void *ud, const char *member)
{
    sched_split *sp = ud;
    char tp[ST_KEYLEN];
    snprintf(tp, sizeof tp, "%s", member);
    char *slash = strchr(tp, '/');
    if (!slash) return 0;
    *slash = '\0';
    return sp->cb(sp->ud, tp, slash + 1);
}

mv_err mv_state_sched_list(mv_state *s,
                           int (*cb)(void *ud, const char *tenant, const char *profile), void *ud,
                           char *err, size_t errlen)
{
    sched_split sp = {cb, ud};
    return st_smembers_sorted(s, SCHED_INDEX, sched_member, &sp, err, errlen);
}

/* ---- checkpoints ---------------------------------------------------------------------- */

static int st_parse_u64(const char **p, const char *end, uint64_t max, uint64_t *out)
{
    const char *q = *p;
    uint64_t v = 0;
    if (q >= end || *q < '0' || *q > '9') return -1;
    for (; q < end && *q >= '0' && *q <= '9'; q++) {
        uint64_t d = (uint64_t)(*q - '0');
        if (v > (max - d) / 10) return -1;
        v = v * 10 + d;
    }
    *out = v;
    *p = q;
    return 0;
}

/* "<uidvalidity> <last_uid> <pending_from> <pending_to> <messages>" */
static int st_ckpt_parse(const char *s, size_t len, mv_ckpt *ck)
{
    const char *p = s, *end = s + len;
    uint64_t v[5];
    for (int i = 0; i < 5; i++) {
        if (i > 0 && (p >= end || *p++ != ' ')) return -1;
        if (st_parse_u64(&p, end, i == 4 ? UINT64_MAX : UINT32_MAX, &v[i]) != 0) return -1;
    }
    if (p != end) return -1;
    ck->uidvalidity = (uint32_t)v[0];
    ck->last_uid = (uint32_t)v[1];
    ck->pending_from = (uint32_t)v[2];
    ck->pending_to = (uint32_t)v[3];
    ck->messages = v[4];
    return 0;
}

/* HGET one folder's progress text from "<prefix>:{t}:{mailbox}" and parse it with parse into
 * out (zeroed first; left zeroed on MV_ENOTFOUND or a malformed value). */
static mv_err st_progress_get(mv_state *s, const char *prefix, const char *what, const char *tenant,
                              const char *mailbox, const char *folder,
                              int (*parse)(const char *, size_t, void *), void *out, size_t outsz,
                              char *err, size_t errlen)
{
    char key[ST_KEYLEN];
    memset(out, 0, outsz);
    mv_err e = st_check(tenant, NULL, mailbox, err, errlen);
    if (!e && !folder) e = mv_seterr(err, errlen, MV_EINVAL, "%s: no folder", what);
    if (!e) e = st_key(key, err, errlen, "%s:%s:%s", prefix, tenant, mailbox);
    if (e) return e;
    st_args a = {0};
    sa_str(&a, "HGET");
    sa_str(&a, key);
    sa_str(&a, folder);
    redisReply *r = NULL;
    e = st_expect(s, 1, &a, REDIS_REPLY_STRING, 1, &r, err, errlen);
    if (e) return e;
    if (r->type == REDIS_REPLY_NIL)
        e = mv_seterr(err, errlen, MV_ENOTFOUND, "no %s for a folder of %s/%s", what, tenant,
                      mailbox);
    else if (parse(r->str, r->len, out) != 0) {
        memset(out, 0, outsz);
        e = mv_seterr(err, errlen, MV_ECORRUPT, "%s of a folder of %s/%s is malformed", what,
                      tenant, mailbox);
    }
    freeReplyObject(r);
    return e;
}

static int st_ckpt_parse_v(const char *s, size_t len, void *out)
{
    return st_ckpt_parse(s, len, out);
}

mv_err mv_state_ckpt_get(mv_state *s, const char *tenant, const char *mailbox, const char *folder,
                         mv_ckpt *ck, char *err, size_t errlen)
{
    return st_progress_get(s, "mv:ckpt", "checkpoint", tenant, mailbox, folder, st_ckpt_parse_v, ck,
                           sizeof *ck, err, errlen);
}

/* Fenced write of one folder's progress text into the hash "<prefix>:{t}:{mailbox}", with the
 * status counters moving in the same script (see LUA_CKPT_SET). */
static mv_err st_progress_commit(mv_state *s, const char *prefix, const char *tenant,
                                 const char *mailbox, const char *folder, const char *text,
                                 const char *owner, uint64_t token, const char *const *fields,
                                 const int64_t *incr, int nincr, char *err, size_t errlen)
{
    char lease[ST_KEYLEN], key[ST_KEYLEN], status[ST_KEYLEN], mboxes[ST_KEYLEN], metrics[ST_KEYLEN],
        val[512], num[16][24];
    mv_err e = st_check(tenant, NULL, mailbox, err, errlen);
    if (!e && !folder) e = mv_seterr(err, errlen, MV_EINVAL, "checkpoint: no folder");
    if (!e && (nincr < 0 || nincr > 16))
        e = mv_seterr(err, errlen, MV_EINVAL, "checkpoint: at most 16 counters");
    if (!e) e = st_lease_value(owner, token, val, sizeof val, err, errlen);
    if (!e) e = st_key(lease, err, errlen, "mv:lease:%s:%s", tenant, mailbox);
    if (!e) e = st_key(key, err, errlen, "%s:%s:%s", prefix, tenant, mailbox);
    if (!e) e = st_key(status, err, errlen, "mv:status:%s:%s", tenant, mailbox);
    if (!e) e = st_key(mboxes, err, errlen, "mv:mailboxes:%s", tenant);
    if (!e) e = st_key(metrics, err, errlen, "mv:metrics:%s", tenant);
    if (e) return e;
    st_args a = {0};
    sa_str(&a, lease);
    sa_str(&a, key);
    sa_str(&a, status);
    sa_str(&a, mboxes);
    sa_str(&a, metrics);
    sa_str(&a, val);
    sa_str(&a, folder);
    sa_str(&a, text);
    sa_str(&a, mailbox);
    for (int i = 0; i < nincr; i++) {
        snprintf(num[i], sizeof num[i], "%" PRId64, incr[i]);
        sa_str(&a, fields[i]);
        sa_str(&a, num[i]);
    }
    redisReply *r = NULL;
    /* Not re-sent after a lost connection when it carries increments (they are not
     * idempotent); a bare checkpoint write is. */
    e = st_eval(s, nincr == 0, LUA_CKPT_SET, 5, &a, &r, err, errlen);
    if (e) return e;
    char what[ST_KEYLEN];
    snprintf(what, sizeof what, "mailbox %s/%s", tenant, mailbox);
    e = st_fenced_result(r, "checkpoint", what, err, errlen);
    freeReplyObject(r);
    return e;
}

mv_err mv_state_ckpt_commit(mv_state *s, const char *tenant, const char *mailbox,
                            const char *folder, const mv_ckpt *ck, const char *owner,
                            uint64_t token, const char *const *fields, const int64_t *incr,
                            int nincr, char *err, size_t errlen)
{
    char text[128];
    snprintf(text, sizeof text, "%" PRIu32 " %" PRIu32 " %" PRIu32 " %" PRIu32 " %" PRIu64,
             ck->uidvalidity, ck->last_uid, ck->pending_from, ck->pending_to, ck->messages);
    return st_progress_commit(s, "mv:ckpt", tenant, mailbox, folder, text, owner, token, fields,
                              incr, nincr, err, errlen);
}

/* ---- cursors (sources that continue from an opaque link) ------------------------------ */

static int st_cursor_parse(const char *s, size_t len, mv_cursor *cu)
{
    const char *p = s, *end = s + len;
    uint64_t v[4];
    for (int i = 0; i < 4; i++) {
        if (i > 0 && (p >= end || *p++ != ' ')) return -1;
        if (st_parse_u64(&p, end, i == 1 || i == 3 ? UINT64_MAX : UINT32_MAX, &v[i]) != 0)
            return -1;
    }
    if (p >= end || *p++ != ' ') return -1;
    size_t n = (size_t)(end - p);
    if (n >= sizeof cu->link || v[2] > 1) return -1;
    cu->generation = (uint32_t)v[0];
    cu->seq = v[1];
    cu->pending = (int)v[2];
    cu->messages = v[3];
    memcpy(cu->link, p, n);
    cu->link[n] = '\0';
    return 0;
}

static int st_cursor_parse_v(const char *s, size_t len, void *out)
{
    return st_cursor_parse(s, len, out);
}

mv_err mv_state_cursor_get(mv_state *s, const char *tenant, const char *mailbox, const char *folder,
                           mv_cursor *cu, char *err, size_t errlen)
{
    return st_progress_get(s, "mv:cursor", "cursor", tenant, mailbox, folder, st_cursor_parse_v, cu,
                           sizeof *cu, err, errlen);
}

mv_err mv_state_cursor_commit(mv_state *s, const char *tenant, const char *mailbox,
                              const char *folder, const mv_cursor *cu, const char *owner,
                              uint64_t token, const char *const *fields, const int64_t *incr,
                              int nincr, char *err, size_t errlen)
{
    char text[sizeof cu->link + 96];
    if (strchr(cu->link, '\n') || strlen(cu->link) >= sizeof cu->link)
        return mv_seterr(err, errlen, MV_EINVAL, "cursor: bad link");
    snprintf(text, sizeof text, "%" PRIu32 " %" PRIu64 " %d %" PRIu64 " %s", cu->generation,
             cu->seq, cu->pending ? 1 : 0, cu->messages, cu->link);
    return st_progress_commit(s, "mv:cursor", tenant, mailbox, folder, text, owner, token, fields,
                              incr, nincr, err, errlen);
}

mv_err mv_state_ckpt_set(mv_state *s, const char *tenant, const char *mailbox, const char *folder,
                         const mv_ckpt *ck, const char *owner, uint64_t token, char *err,
                         size_t errlen)
{
    return mv_state_ckpt_commit(s, tenant, mailbox, folder, ck, owner, token, NULL, NULL, 0, err,
                                errlen);
}

mv_err mv_state_ckpt_clear(mv_state *s, const char *tenant, const char *mailbox, char *err,
                           size_t errlen)
{
    char key[ST_KEYLEN], cur[ST_KEYLEN];
    mv_err e = st_check(tenant, NULL, mailbox, err, errlen);
    if (!e) e = st_key(key, err, errlen, "mv:ckpt:%s:%s", tenant, mailbox);
    if (!e) e = st_key(cur, err, errlen, "mv:cursor:%s:%s", tenant, mailbox);
    if (e) return e;
    st_args a = {0};
    sa_str(&a, "DEL");
    sa_str(&a, key);
    sa_str(&a, cur);
    return st_int(s, 1, &a, NULL, err, errlen);
}

/* ---- cached access tokens (sealed by the caller) ---------------------------------------- */

static mv_err st_token_key(const char *tenant, const char *profile, const char *kind, char *key,
                           char *err, size_t errlen)
{
    mv_err e = st_check(tenant, profile, NULL, err, errlen);
    if (!e) e = st_key(key, err, errlen, "mv:%s:%s:%s", kind, tenant, profile);
    return e;
}

mv_err mv_state_token_get(mv_state *s, const char *tenant, const char *profile, void **blob,
                          size_t *len, char *err, size_t errlen)
{
    char key[ST_KEYLEN], *copy = NULL;
    *blob = NULL;
    *len = 0;
    mv_err e = st_token_key(tenant, profile, "gtoken", key, err, errlen);
    if (!e) e = st_get_copy(s, key, &copy, len, err, errlen);
    *blob = copy;
    return e;
}

mv_err mv_state_token_put(mv_state *s, const char *tenant, const char *profile, const void *blob,
                          size_t len, int64_t ttl_ms, char *err, size_t errlen)
{
    char key[ST_KEYLEN], ttl[24];
    if (ttl_ms <= 0) return MV_OK; /* already expired: nothing worth caching */
    mv_err e = st_token_key(tenant, profile, "gtoken", key, err, errlen);
    if (e) return e;
    snprintf(ttl, sizeof ttl, "%" PRId64, ttl_ms);
    st_args a = {0};
    sa_str(&a, "SET");
    sa_str(&a, key);
    sa_bin(&a, blob, len);
    sa_str(&a, "PX");
    sa_str(&a, ttl);
    redisReply *r = NULL;
    e = st_expect(s, 1, &a, REDIS_REPLY_STATUS, 0, &r, err, errlen);
    if (!e) freeReplyObject(r);
    return e;
}

mv_err mv_state_token_lock(mv_state *s, const char *tenant, const char *profile, const char *owner,
                           int ttl_ms, int *got, char *err, size_t errlen)
{
    char key[ST_KEYLEN], ttl[24];
    *got = 0;
    mv_err e = st_token_key(tenant, profile, "gtoken-lock", key, err, errlen);
    if (e) return e;
    snprintf(ttl, sizeof ttl, "%d", ttl_ms);
    st_args a = {0};
    sa_str(&a, "SET");
    sa_str(&a, key);
    sa_str(&a, owner);
    sa_str(&a, "NX");
    sa_str(&a, "PX");
    sa_str(&a, ttl);
    redisReply *r = NULL;
    e = st_expect(s, 0, &a, REDIS_REPLY_STATUS, 1, &r, err, errlen);
    if (e) return e;
    *got = r->type == REDIS_REPLY_STATUS;
    freeReplyObject(r);
    return MV_OK;
}

mv_err mv_state_token_unlock(mv_state *s, const char *tenant, const char *profile,
                             const char *owner, char *err, size_t errlen)
{
    char key[ST_KEYLEN];
    mv_err e = st_token_key(tenant, profile, "gtoken-lock", key, err, errlen);
    if (e) return e;
    st_args a = {0};
    sa_str(&a, key);
    sa_str(&a, owner);
    redisReply *r = NULL;
    e = st_eval(s, 1, LUA_UNLOCK, 1, &a, &r, err, errlen);
    if (!e) freeReplyObject(r);
    return e;
}

/* ---- cluster-wide request limits ---------------------------------------------------- */

mv_err mv_state_limit_acquire_n(mv_state *s, const char *scope, const char *request_id,
                                const mv_limit *lim, int n, int *admitted, int64_t *wait_ms,
                                char *err, size_t errlen)
{
    char conc[ST_KEYLEN], win[ST_KEYLEN], now[24], cmax[16], hold[24], wmax[16], wms[24], wtxt[16],
        cwtxt[16];
    *admitted = 0;
    *wait_ms = 0;
    if (!scope || !*scope || strlen(scope) > 600)
        return mv_seterr(err, errlen, MV_EINVAL, "limit: bad scope");
    if (n < 1 || n > MV_LIMIT_MAX_WEIGHT || (lim->window_requests > 0 && n > lim->window_requests))
        return mv_seterr(err, errlen, MV_EINVAL,
                         "limit: weight %d outside 1..%d (and the window's %d requests)", n,
                         MV_LIMIT_MAX_WEIGHT, lim->window_requests);
    mv_err e = st_key(conc, err, errlen, "mv:rl:conc:%s", scope);
    if (!e) e = st_key(win, err, errlen, "mv:rl:win:%s", scope);
    if (e) return e;
    /* a request of weight n runs as up to n requests at once, never more than the limit */
    int cw = lim->max_concurrent > 0 && n > lim->max_concurrent ? lim->max_concurrent : n;
    snprintf(now, sizeof now, "%" PRId64, mv_now_ms());
    snprintf(cmax, sizeof cmax, "%d", lim->max_concurrent);
    snprintf(hold, sizeof hold, "%d", lim->hold_ms);
    snprintf(wmax, sizeof wmax, "%d", lim->window_requests);
    snprintf(wtxt, sizeof wtxt, "%d", n);
    snprintf(cwtxt, sizeof cwtxt, "%d", cw);
    /* Entries stay a little longer than the window (2 %, at least 0.5 s): the server's clock
     * and the network add jitter, and being under the limit is the point. */
    int64_t margin = lim->window_ms / 50 > 500 ? lim->window_ms / 50 : 500;
    snprintf(wms, sizeof wms, "%" PRId64, (int64_t)lim->window_ms + margin);
    st_args a = {0};
    sa_str(&a, conc);
    sa_str(&a, win);
    sa_str(&a, now);
    sa_str(&a, request_id);
    sa_str(&a, cmax);
    sa_str(&a, hold);
    sa_str(&a, wmax);
    sa_str(&a, wms);
    sa_str(&a, wtxt);
    sa_str(&a, cwtxt);
    redisReply *r = NULL;
    e = st_eval(s, 0, LUA_LIMIT_ACQUIRE, 2, &a, &r, err, errlen);
    if (e) return e;
    if (r->type != REDIS_REPLY_ARRAY || r->elements != 2 ||
        r->element[0]->type != REDIS_REPLY_INTEGER || r->element[1]->type != REDIS_REPLY_INTEGER)
        e = st_bad_reply(r, "limit acquire", err, errlen);
    else {
        *admitted = r->element[0]->integer == 1;
        *wait_ms = r->element[1]->integer;
    }
    freeReplyObject(r);
    return e;
}

mv_err mv_state_limit_acquire(mv_state *s, const char *scope, const char *request_id,
                              const mv_limit *lim, int *admitted, int64_t *wait_ms, char *err,
                              size_t errlen)
{
    return mv_state_limit_acquire_n(s, scope, request_id, lim, 1, admitted, wait_ms, err, errlen);
}

mv_err mv_state_limit_release_n(mv_state *s, const char *scope, const char *request_id, int n,
                                char *err, size_t errlen)
{
    char conc[ST_KEYLEN], win[ST_KEYLEN], ntxt[16];
    mv_err e = st_key(conc, err, errlen, "mv:rl:conc:%s", scope);
    if (!e) e = st_key(win, err, errlen, "mv:rl:win:%s", scope);
    if (e) return e;
    snprintf(ntxt, sizeof ntxt, "%d",
             n < 1                     ? 1
             : n > MV_LIMIT_MAX_WEIGHT ? MV_LIMIT_MAX_WEIGHT
                                       : n);
    st_args a = {0};
    sa_str(&a, conc);
    sa_str(&a, win);
    sa_str(&a, request_id);
    sa_str(&a, ntxt);
    redisReply *r = NULL;
    e = st_eval(s, 1, LUA_LIMIT_RELEASE, 2, &a, &r, err, errlen);
    if (!e) freeReplyObject(r);
    return e;
}

mv_err mv_state_limit_clear(mv_state *s, const char *scope, char *err, size_t errlen)
{
    char conc[ST_KEYLEN];
    mv_err e = st_key(conc, err, errlen, "mv:rl:conc:%s", scope);
    if (e) return e;
    st_args a = {0};
    sa_str(&a, "DEL");
    sa_str(&a, conc);
    return st_int(s, 1, &a, NULL, err, errlen);
}

mv_err mv_state_limit_release(mv_state *s, const char *scope, const char *request_id, char *err,
                              size_t errlen)
{
    return mv_state_limit_release_n(s, scope, request_id, 1, err, errlen);
}

/* ---- delayed tasks -------------------------------------------------------------------- */

mv_err mv_state_delay_add(mv_state *s, const void *payload, size_t len, int64_t due_ms, char *err,
                          size_t errlen)
{
    char due[32];
    if (!payload || len == 0) return mv_seterr(err, errlen, MV_EINVAL, "delayed task is empty");
    snprintf(due, sizeof due, "%" PRId64, due_ms);
    st_args a = {0};
    sa_str(&a, "ZADD");
    sa_str(&a, "mv:delayed");
    sa_str(&a, due);
    sa_bin(&a, payload, len);
    return st_int(s, 1, &a, NULL, err, errlen);
}

mv_err mv_state_delay_pump(mv_state *s, int64_t now_ms, int max,
                           int (*cb)(void *ud, const void *payload, size_t len), void *ud,
                           int *moved, char *err, size_t errlen)
{
    char now[32], lim[32];
    if (moved) *moved = 0;
    if (max <= 0) return MV_OK;
    snprintf(now, sizeof now, "%" PRId64, now_ms);
    snprintf(lim, sizeof lim, "%d", max);
    st_args a = {0};
    sa_str(&a, "ZRANGEBYSCORE");
    sa_str(&a, "mv:delayed");
    sa_str(&a, "-inf");
    sa_str(&a, now);
    sa_str(&a, "LIMIT");
    sa_str(&a, "0");
    sa_str(&a, lim);
    redisReply *r = NULL;
    mv_err e = st_expect(s, 1, &a, REDIS_REPLY_ARRAY, 0, &r, err, errlen);
    if (e) return e;
    for (size_t i = 0; i < r->elements && !e; i++) {
        redisReply *el = r->element[i];
        if (el->type != REDIS_REPLY_STRING) {
            e = st_bad_reply(el, "ZRANGEBYSCORE", err, errlen);
            break;
        }
        if (cb(ud, el->str, el->len) != 0) continue; /* kept; retried by the next pump */
        st_args d = {0};
        sa_str(&d, "ZREM");
        sa_str(&d, "mv:delayed");
        sa_bin(&d, el->str, el->len);
        e = st_int(s, 1, &d, NULL, err, errlen);
        if (!e && moved) (*moved)++;
    }
    freeReplyObject(r);
    return e;
}

/* ---- sets of strings per tenant (mv:<ns>:{t}:{name}) ----------------------------------- */

static mv_err set_key(char *key, const char *tenant, const char *ns, const char *name, char *err,
                      size_t errlen)
{
    mv_err e = st_check(tenant, NULL, NULL, err, errlen);
    if (!e && (!mv_name_valid(ns) || !mv_name_valid(name)))
        e = mv_seterr(err, errlen, MV_EINVAL, "set: bad namespace or name");
    if (!e) e = st_key(key, err, errlen, "mv:%s:%s:%s", ns, tenant, name);
    return e;
}

mv_err mv_state_set_add(mv_state *s, const char *tenant, const char *ns, const char *name,
                        const char *member, char *err, size_t errlen)
{
    char key[ST_KEYLEN];
    mv_err e = set_key(key, tenant, ns, name, err, errlen);
    if (e) return e;
    st_args a = {0};
    sa_str(&a, "SADD");
    sa_str(&a, key);
    sa_str(&a, member);
    return st_int(s, 1, &a, NULL, err, errlen);
}

mv_err mv_state_set_member(mv_state *s, const char *tenant, const char *ns, const char *name,
                           const char *member, int *is_member, char *err, size_t errlen)
{
    char key[ST_KEYLEN];
    long long v = 0;
    *is_member = 0;
    mv_err e = set_key(key, tenant, ns, name, err, errlen);
    if (e) return e;
    st_args a = {0};
    sa_str(&a, "SISMEMBER");
    sa_str(&a, key);
    sa_str(&a, member);
    e = st_int(s, 1, &a, &v, err, errlen);
    if (!e) *is_member = v == 1;
    return e;
}

/* ---- cancellation ---------------------------------------------------------------------- */

static mv_err cancel_key(char *key, const char *tenant, const char *mailbox, char *err,
                         size_t errlen)
{
    mv_err e = st_check(tenant, NULL, mailbox, err, errlen);
    if (!e) e = st_key(key, err, errlen, "mv:cancel:%s:%s", tenant, mailbox);
    return e;
}

mv_err mv_state_cancel_set(mv_state *s, const char *tenant, const char *mailbox, const char *run_id,
                           char *err, size_t errlen)
{
    char key[ST_KEYLEN];
    mv_err e = cancel_key(key, tenant, mailbox, err, errlen);
    if (e) return e;
    st_args a = {0};
    sa_str(&a, "SET");
    sa_str(&a, key);
    sa_str(&a, run_id);
    sa_str(&a, "EX");
    sa_str(&a, "604800");
    return st_ok(s, 1, &a, err, errlen);
}

mv_err mv_state_cancel_get(mv_state *s, const char *tenant, const char *mailbox, char run_id[37],
                           char *err, size_t errlen)
{
    char key[ST_KEYLEN], *v = NULL;
    run_id[0] = '\0';
    mv_err e = cancel_key(key, tenant, mailbox, err, errlen);
    if (!e) e = st_get_copy(s, key, &v, NULL, err, errlen);
    if (e == MV_ENOTFOUND) return MV_OK;
    if (!e) snprintf(run_id, 37, "%s", v);
    free(v);
    return e;
}

mv_err mv_state_cancel_clear(mv_state *s, const char *tenant, const char *mailbox, char *err,
                             size_t errlen)
{
    char key[ST_KEYLEN];
    mv_err e = cancel_key(key, tenant, mailbox, err, errlen);
    if (e) return e;
    st_args a = {0};
    sa_str(&a, "DEL");
    sa_str(&a, key);
    return st_int(s, 1, &a, NULL, err, errlen);
}

/* ---- generic catalog hashes and sets (storecat.c) --------------------------------------- */

static mv_err st_generic_key(const char *key, char *err, size_t errlen)
{
    if (!key || strncmp(key, "mv:", 3) != 0 || strlen(key) >= ST_KEYLEN)
        return mv_seterr(err, errlen, MV_EINVAL, "invalid key");
    return MV_OK;
}

mv_err mv_state_hget(mv_state *s, const char *key, const char *field, void **val, size_t *len,
                     char *err, size_t errlen)
{
    *val = NULL;
    *len = 0;
    mv_err e = st_generic_key(key, err, errlen);
    if (e) return e;
    st_args a = {0};
    sa_str(&a, "HGET");
    sa_str(&a, key);
    sa_str(&a, field);
    redisReply *r = NULL;
    if ((e = st_expect(s, 1, &a, REDIS_REPLY_STRING, 1, &r, err, errlen)) != MV_OK) return e;
    if (r->type == REDIS_REPLY_NIL) {
        e = MV_ENOTFOUND;
    } else if (!(*val = malloc(r->len + 1))) {
        e = mv_seterr(err, errlen, MV_ENOMEM, "%s: no memory", key);
    } else {
        memcpy(*val, r->str, r->len);
        ((char *)*val)[r->len] = '\0';
        *len = r->len;
    }
    freeReplyObject(r);
    return e;
}

mv_err mv_state_hset(mv_state *s, const char *key, const char *field, const void *val, size_t len,
                     char *err, size_t errlen)
{
    mv_err e = st_generic_key(key, err, errlen);
    if (e) return e;
    st_args a = {0};
    sa_str(&a, "HSET");
    sa_str(&a, key);
    sa_str(&a, field);
    sa_bin(&a, val ? val : "", len);
    return st_int(s, 1, &a, NULL, err, errlen);
}

mv_err mv_state_hdel(mv_state *s, const char *key, const char *field, char *err, size_t errlen)
{
    mv_err e = st_generic_key(key, err, errlen);
    if (e) return e;
    st_args a = {0};
    sa_str(&a, field ? "HDEL" : "DEL");
    sa_str(&a, key);
    if (field) sa_str(&a, field);
    return st_int(s, 1, &a, NULL, err, errlen);
}

mv_err mv_state_hgetall_str(mv_state *s, const char *key,
                            int (*cb)(void *ud, const char *field, const char *value), void *ud,
                            char *err, size_t errlen)
{
    mv_err e = st_generic_key(key, err, errlen);
    if (e) return e;
    return st_hgetall(s, key, cb, ud, err, errlen);
}

mv_err mv_state_set_change(mv_state *s, const char *key, const char *member, int add, char *err,
                           size_t errlen)
{
    mv_err e = st_generic_key(key, err, errlen);
    if (e) return e;
    st_args a = {0};
    sa_str(&a, add ? "SADD" : "SREM");
    sa_str(&a, key);
    sa_str(&a, member);
    return st_int(s, 1, &a, NULL, err, errlen);
}

mv_err mv_state_set_members(mv_state *s, const char *key, int (*cb)(void *ud, const char *m),
                            void *ud, char *err, size_t errlen)
{
    mv_err e = st_generic_key(key, err, errlen);
    if (e) return e;
    return st_smembers_sorted(s, key, cb, ud, err, errlen);
}

mv_err mv_state_hset_many(mv_state *s, const char *key, int n, const char *const *fields,
                          const char *const *values, char *err, size_t errlen)
{
    mv_err e = st_generic_key(key, err, errlen);
    if (e) return e;
    if (n < 1 || 2 + 2 * n > ST_MAXARGS)
        return mv_seterr(err, errlen, MV_EINVAL, "%s: %d fields in one write", key, n);
    st_args a = {0};
    sa_str(&a, "HSET");
    sa_str(&a, key);
    for (int i = 0; i < n; i++) {
        sa_str(&a, fields[i]);
        sa_str(&a, values[i]);
    }
    return st_int(s, 1, &a, NULL, err, errlen);
}

mv_err mv_state_set_has(mv_state *s, const char *key, const char *member, int *yes, char *err,
                        size_t errlen)
{
    *yes = 0;
    mv_err e = st_generic_key(key, err, errlen);
    if (e) return e;
    st_args a = {0};
    sa_str(&a, "SISMEMBER");
    sa_str(&a, key);
    sa_str(&a, member);
    long long v = 0;
    e = st_int(s, 1, &a, &v, err, errlen);
    *yes = v == 1;
    return e;
}

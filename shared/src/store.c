/* store.c - the content store: content-addressed message objects and index segments over a
 * backend (store_fs.c, store_s3.c), with optional per-tenant encryption and Object Lock.
 *
 * Why it looks like this:
 *  - One write path and one read path for every backend. A put hashes and compresses the
 *    message as it streams in, wraps the compressed bytes in the tenant's encryption envelope
 *    when the tenant has encryption on (mv/objenc.h), and hands the result to the backend's
 *    writer; the name (the SHA-256, or its HMAC under the tenant's naming key) is known only at
 *    the end, when the backend publishes the object atomically (fs: rename; S3: a conditional
 *    PUT). A read undoes the same steps and checks the SHA-256 against the name.
 *  - Memory per put is bounded: SHA-256 and zstd consume the input as it arrives, compressed
 *    output goes through one 128 KiB buffer, the envelope through one 64 KiB record.
 *  - zstd contexts are expensive to create (several MB of tables at level 3 with an unknown
 *    source size), so finished puts return their context bundle to a small mutex-protected
 *    cache in the mv_store.
 *  - Which backend, keys and retention a tenant has comes from a policy callback (the worker
 *    and CLI read it from Redis), cached per tenant; backends are opened once per store
 *    definition and kept until the store closes, so a put never loses its backend.
 *  - Every key component built from caller input is validated first (tenant: mv_name_valid,
 *    hash: 64 lowercase hex, segment name: [A-Za-z0-9._-]) or escaped (mailbox).
 *
 * Contracts: mv_store is thread-safe and must outlive every mv_put begun on it; an mv_put is
 * used by one thread. Objects and reads are capped at 1 GiB of raw data (MV_ETOOBIG on put,
 * MV_ECORRUPT on get, which also protects readers from decompression bombs). */
#include "mv/store.h"

#include "mv/objenc.h"
#include "store_be.h"

#include <errno.h>
#include <limits.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <zstd.h>

#define IO_BUF (128 * 1024)         /* compressed bytes collected before the backend */
#define PUT_CACHE_MAX 8             /* idle put contexts kept for reuse */
#define RAW_MAX ((uint64_t)1 << 30) /* largest message accepted / produced */
#define STORED_MAX (RAW_MAX + (RAW_MAX >> 6) + (1u << 20)) /* zstd and envelope overhead */
#define SEGMENT_MAX ((size_t)256 << 20)                    /* largest index segment */
#define SEGNAME_MAX 200
#define KEY_MAX 1024
#define POLICY_CACHE 64
#define BACKENDS_MAX 32

typedef struct pentry {
    char tenant[64];
    int64_t at_ms; /* 0 = empty */
    mv_store_policy pol;
    mv_be *be;
} pentry;

typedef struct named_be {
    mv_store_def def; /* secret wiped at close */
    mv_be *be;
    int retired; /* replaced by a newer definition; kept for puts still using it */
} named_be;

struct mv_store {
    mv_be *def; /* the default store: a directory tree at root */
    int fsync_each;
    int level;
    EVP_MD *sha256; /* fetched once; EVP_sha256() would re-fetch on every init */
    pthread_mutex_t mu;
    mv_put *idle[PUT_CACHE_MAX];
    int nidle;
    mv_store_policy_fn policy_fn;
    void *policy_ud;
    int64_t policy_ttl_ms;
    pentry *cache; /* POLICY_CACHE entries */
    named_be bes[BACKENDS_MAX];
    int nbes;
    int async; /* S3 commits queue their upload; mv_store_sync waits (mv_store_set_async) */
};

typedef struct emit_ctx {
    struct mv_put *p;
    char *err; /* of the put call in progress */
    size_t errlen;
    mv_err rc;
} emit_ctx;

struct mv_put {
    mv_store *s;
    emit_ctx ectx; /* where the envelope's output goes */
    ZSTD_CCtx *cctx;
    EVP_MD_CTX *md;
    unsigned char *buf; /* compressed bytes waiting for the backend */
    size_t buflen;
    mv_be *be;
    mv_be_writer *w;
    mv_objenc *enc;
    mv_err failed; /* sticky error of an earlier mv_put_write */
    uint64_t raw, stored;
    uint64_t announced; /* exact raw size promised by mv_put_set_size, if has_size */
    int has_size;
    int hold;
    char tenant[64];
    mv_store_policy pol;
};

/* ---- small helpers ------------------------------------------------------------------------ */

static int is_hash(const char *h)
{
    if (!h) return 0;
    size_t i = 0;
    for (; h[i]; i++) {
        char c = h[i];
        if (i >= 64 || !((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return 0;
    }
    return i == 64;
}

static int is_hex2(const char *n, size_t len)
{
    if (len != 2) return 0;
    for (int i = 0; i < 2; i++)
        if (!((n[i] >= '0' && n[i] <= '9') || (n[i] >= 'a' && n[i] <= 'f'))) return 0;
    return 1;
}

static int segname_valid(const char *n)
{
    if (!n || !n[0] || n[0] == '.') return 0;
    size_t i = 0;
    for (; n[i]; i++) {
        char c = n[i];
        if (i >= SEGNAME_MAX) return 0;
        if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '_' || c == '-'))
            return 0;
    }
    return 1;
}

static mv_err mkkey(char *out, size_t outlen, char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));
static mv_err mkkey(char *out, size_t outlen, char *err, size_t errlen, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(out, outlen, fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= outlen) return mv_seterr(err, errlen, MV_EINVAL, "key too long");
    return MV_OK;
}

static void object_key(char out[KEY_MAX], const char *tenant, const char *name)
{
    snprintf(out, KEY_MAX, "%s/objects/%.2s/%.2s/%s", tenant, name, name + 2, name);
}

void mv_store_policy_wipe(mv_store_policy *p)
{
    if (p) OPENSSL_cleanse(p, sizeof *p);
}

static int key_lookup(const mv_store_policy *p, uint32_t version, unsigned char key[32])
{
    for (int i = 0; i < p->nkeys; i++)
        if (p->key_version[i] == version) {
            memcpy(key, p->key[i], 32);
            return 1;
        }
    return 0;
}

static mv_err dec_key_fn(void *ud, uint32_t version, unsigned char key[32])
{
    return key_lookup(ud, version, key) ? MV_OK : MV_ENOTFOUND;
}

/* ---- open / close / policies -------------------------------------------------------------- */

static void put_destroy(mv_put *p)
{
    if (!p) return;
    ZSTD_freeCCtx(p->cctx);
    EVP_MD_CTX_free(p->md);
    free(p->buf);
    OPENSSL_cleanse(&p->pol, sizeof p->pol);
    free(p);
}

mv_err mv_store_open(const char *root, int fsync_each, int zstd_level, mv_store **out, char *err,
                     size_t errlen)
{
    *out = NULL;
    if (!root || !root[0]) return mv_seterr(err, errlen, MV_EINVAL, "store root is empty");
    if (zstd_level < 1 || zstd_level > 19)
        return mv_seterr(err, errlen, MV_EINVAL, "zstd level %d out of range 1..19", zstd_level);
    mv_store *s = calloc(1, sizeof *s);
    if (!s) return mv_seterr(err, errlen, MV_ENOMEM, "out of memory");
    mv_err rc = MV_OK;
    s->fsync_each = fsync_each ? 1 : 0;
    s->level = zstd_level;
    s->policy_ttl_ms = 60000;
    pthread_mutex_init(&s->mu, NULL);
    s->sha256 = EVP_MD_fetch(NULL, "SHA256", NULL);
    s->cache = calloc(POLICY_CACHE, sizeof *s->cache);
    if (!s->sha256 || !s->cache) {
        rc = mv_seterr(err, errlen, MV_ENOMEM, "store: allocation or SHA256 fetch failed");
        goto fail;
    }
    if ((rc = mv_be_fs_open(root, s->fsync_each, &s->def, err, errlen)) != MV_OK) goto fail;
    *out = s;
    return MV_OK;
fail:
    mv_store_close(s);
    return rc;
}

void mv_store_close(mv_store *s)
{
    if (!s) return;
    for (int i = 0; i < s->nidle; i++)
        put_destroy(s->idle[i]);
    for (int i = 0; i < s->nbes; i++) {
        s->bes[i].be->ops->close(s->bes[i].be);
        OPENSSL_cleanse(&s->bes[i].def, sizeof s->bes[i].def);
    }
    if (s->cache) {
        OPENSSL_cleanse(s->cache, POLICY_CACHE * sizeof *s->cache);
        free(s->cache);
    }
    if (s->def) s->def->ops->close(s->def);
    EVP_MD_free(s->sha256);
    pthread_mutex_destroy(&s->mu);
    free(s);
}

const char *mv_store_root(const mv_store *s)
{
    return s ? mv_be_fs_root(s->def) : NULL;
}

void mv_store_set_policy(mv_store *s, mv_store_policy_fn fn, void *ud, int64_t ttl_ms)
{
    pthread_mutex_lock(&s->mu);
    s->policy_fn = fn;
    s->policy_ud = ud;
    s->policy_ttl_ms = ttl_ms;
    for (int i = 0; i < POLICY_CACHE; i++)
        s->cache[i].at_ms = 0;
    pthread_mutex_unlock(&s->mu);
}

void mv_store_forget(mv_store *s, const char *tenant)
{
    if (!s || !tenant) return;
    pthread_mutex_lock(&s->mu);
    for (int i = 0; i < POLICY_CACHE; i++)
        if (s->cache[i].at_ms && strcmp(s->cache[i].tenant, tenant) == 0) {
            OPENSSL_cleanse(&s->cache[i], sizeof s->cache[i]);
        }
    pthread_mutex_unlock(&s->mu);
}

/* The backend for a definition, opened on first use (mutex held). */
static mv_err backend_for(mv_store *s, const mv_store_def *def, mv_be **out, char *err,
                          size_t errlen)
{
    if (!def->name[0]) {
        *out = s->def;
        return MV_OK;
    }
    for (int i = 0; i < s->nbes; i++) {
        named_be *n = &s->bes[i];
        if (n->retired || strcmp(n->def.name, def->name) != 0) continue;
        if (memcmp(&n->def, def, sizeof *def) == 0) {
            *out = n->be;
            return MV_OK;
        }
        n->retired = 1; /* the definition changed: open the new one, keep this for old puts */
    }
    if (s->nbes == BACKENDS_MAX)
        return mv_seterr(err, errlen, MV_ETOOBIG, "more than %d store definitions in use",
                         BACKENDS_MAX);
    mv_be *be = NULL;
    mv_err rc;
    if (strcmp(def->type, "s3") == 0)
        rc = mv_be_s3_open(def, &be, err, errlen);
    else if (strcmp(def->type, "fs") == 0)
        rc = mv_be_fs_open(def->root, s->fsync_each, &be, err, errlen);
    else
        rc = mv_seterr(err, errlen, MV_EINVAL, "store %s: unknown type \"%s\"", def->name,
                       def->type);
    if (rc) return rc;
    if (s->async && be->ops->set_async && (rc = be->ops->set_async(be, 1, err, errlen)) != MV_OK) {
        be->ops->close(be);
        return rc;
    }
    s->bes[s->nbes].def = *def;
    s->bes[s->nbes].be = be;
    s->bes[s->nbes].retired = 0;
    s->nbes++;
    *out = be;
    return MV_OK;
}

/* Policy and backend of a tenant: from the cache, or from the callback. */
static mv_err resolve(mv_store *s, const char *tenant, mv_store_policy *pol, mv_be **be, char *err,
                      size_t errlen)
{
    memset(pol, 0, sizeof *pol);
    if (!s) return mv_seterr(err, errlen, MV_EINVAL, "store is NULL");
    if (!mv_name_valid(tenant)) return mv_seterr(err, errlen, MV_EINVAL, "invalid tenant name");
    if (!s->policy_fn) {
        *be = s->def;
        return MV_OK;
    }
    int64_t now = mv_now_ms();
    mv_err rc = MV_OK;
    pthread_mutex_lock(&s->mu);
    pentry *hit = NULL, *victim = &s->cache[0];
    for (int i = 0; i < POLICY_CACHE; i++) {
        pentry *e = &s->cache[i];
        if (e->at_ms && strcmp(e->tenant, tenant) == 0) {
            hit = e;
            break;
        }
        if (e->at_ms < victim->at_ms) victim = e;
    }
    if (hit && now - hit->at_ms <= s->policy_ttl_ms) {
        *pol = hit->pol;
        *be = hit->be;
        goto out;
    }
    if (!hit) hit = victim;
    OPENSSL_cleanse(hit, sizeof *hit);
    if ((rc = s->policy_fn(s->policy_ud, tenant, pol, err, errlen)) != MV_OK) goto out;
    if (pol->encrypt && !key_lookup(pol, pol->key_current, (unsigned char[32]){0})) {
        rc = mv_seterr(err, errlen, MV_EINVAL, "tenant %s: current key version %u is missing",
                       tenant, (unsigned)pol->key_current);
        goto out;
    }
    if (pol->encrypt && !pol->has_naming) {
        rc =
            mv_seterr(err, errlen, MV_EINVAL, "tenant %s: encryption on but no naming key", tenant);
        goto out;
    }
    if ((rc = backend_for(s, &pol->store, be, err, errlen)) != MV_OK) goto out;
    snprintf(hit->tenant, sizeof hit->tenant, "%s", tenant);
    hit->pol = *pol;
    hit->be = *be;
    hit->at_ms = now > 0 ? now : 1;
out:
    pthread_mutex_unlock(&s->mu);
    if (rc) mv_store_policy_wipe(pol);
    return rc;
}

mv_err mv_store_policy_of(mv_store *s, const char *tenant, mv_store_policy *out, char *err,
                          size_t errlen)
{
    mv_be *be;
    return resolve(s, tenant, out, &be, err, errlen);
}

mv_err mv_store_where(mv_store *s, const char *tenant, char *type, size_t typelen, char *where,
                      size_t wherelen, char *err, size_t errlen)
{
    mv_store_policy *pol = malloc(sizeof *pol);
    if (!pol) return mv_seterr(err, errlen, MV_ENOMEM, "out of memory");
    mv_be *be;
    mv_err rc = resolve(s, tenant, pol, &be, err, errlen);
    if (rc == MV_OK) {
        snprintf(type, typelen, "%s", be->ops->type);
        if (be == s->def)
            snprintf(where, wherelen, "%s", mv_be_fs_root(be));
        else if (strcmp(be->ops->type, "s3") == 0)
            snprintf(where, wherelen, "%s %s/%s", pol->store.name, pol->store.endpoint,
                     pol->store.bucket);
        else
            snprintf(where, wherelen, "%s %s", pol->store.name, pol->store.root);
    }
    mv_store_policy_wipe(pol);
    free(pol);
    return rc;
}

/* ---- streaming put ------------------------------------------------------------------------ */

static mv_put *put_acquire(mv_store *s)
{
    mv_put *p = NULL;
    pthread_mutex_lock(&s->mu);
    if (s->nidle > 0) p = s->idle[--s->nidle];
    pthread_mutex_unlock(&s->mu);
    if (p) {
        ZSTD_CCtx_reset(p->cctx, ZSTD_reset_session_only);
    } else {
        p = calloc(1, sizeof *p);
        if (!p) return NULL;
        p->s = s;
        p->cctx = ZSTD_createCCtx();
        p->md = EVP_MD_CTX_new();
        p->buf = malloc(IO_BUF);
        if (!p->cctx || !p->md || !p->buf ||
            ZSTD_isError(ZSTD_CCtx_setParameter(p->cctx, ZSTD_c_compressionLevel, s->level)) ||
            ZSTD_isError(ZSTD_CCtx_setParameter(p->cctx, ZSTD_c_checksumFlag, 1))) {
            put_destroy(p);
            return NULL;
        }
    }
    p->buflen = 0;
    p->failed = MV_OK;
    p->raw = p->stored = 0;
    p->has_size = 0;
    p->hold = 0;
    p->be = NULL;
    p->w = NULL;
    p->enc = NULL;
    return p;
}

/* Drop whatever the put still owns, then cache or free the context. */
static void put_release(mv_put *p)
{
    if (p->w) p->be->ops->w_abort(p->w);
    p->w = NULL;
    mv_objenc_free(p->enc);
    p->enc = NULL;
    OPENSSL_cleanse(&p->pol, sizeof p->pol);
    mv_store *s = p->s;
    pthread_mutex_lock(&s->mu);
    if (s->nidle < PUT_CACHE_MAX) {
        s->idle[s->nidle++] = p;
        p = NULL;
    }
    pthread_mutex_unlock(&s->mu);
    put_destroy(p);
}

/* Envelope output -> backend writer. */
static int put_emit(void *ud, const void *data, size_t len)
{
    emit_ctx *e = ud;
    mv_put *p = e->p;
    e->rc = p->be->ops->w_write(p->w, data, len, e->err, e->errlen);
    if (e->rc) return 1;
    p->stored += len;
    return 0;
}

mv_err mv_store_put_begin(mv_store *s, const char *tenant, mv_put **out, char *err, size_t errlen)
{
    *out = NULL;
    if (!s) return mv_seterr(err, errlen, MV_EINVAL, "store is NULL");
    if (!mv_name_valid(tenant)) return mv_seterr(err, errlen, MV_EINVAL, "invalid tenant name");
    mv_put *p = put_acquire(s);
    if (!p) return mv_seterr(err, errlen, MV_ENOMEM, "put: out of memory");
    mv_err rc = MV_OK;
    if ((rc = resolve(s, tenant, &p->pol, &p->be, err, errlen)) != MV_OK) goto fail;
    if (EVP_DigestInit_ex(p->md, s->sha256, NULL) != 1) {
        rc = mv_seterr(err, errlen, MV_ERR, "put: SHA-256 init failed");
        goto fail;
    }
    snprintf(p->tenant, sizeof p->tenant, "%s", tenant);
    if ((rc = p->be->ops->w_begin(p->be, tenant, &p->w, err, errlen)) != MV_OK) goto fail;
    if (p->pol.encrypt) {
        unsigned char key[32];
        key_lookup(&p->pol, p->pol.key_current, key);
        p->ectx = (emit_ctx){p, err, errlen, MV_OK};
        rc = mv_objenc_begin(key, p->pol.key_current, tenant, put_emit, &p->ectx, &p->enc, err,
                             errlen);
        OPENSSL_cleanse(key, sizeof key);
        if (rc) goto fail;
    }
    *out = p;
    return MV_OK;
fail:
    put_release(p);
    return rc;
}

static mv_err put_flush(mv_put *p, char *err, size_t errlen)
{
    if (p->buflen == 0) return MV_OK;
    mv_err rc;
    p->ectx = (emit_ctx){p, err, errlen, MV_OK};
    if (p->enc) {
        rc = mv_objenc_update(p->enc, p->buf, p->buflen, err, errlen);
        if (rc == MV_ECANCEL) rc = p->ectx.rc; /* the backend's error, err set by it */
    } else {
        rc = put_emit(&p->ectx, p->buf, p->buflen) ? p->ectx.rc : MV_OK;
    }
    if (rc) {
        p->failed = rc;
        return rc;
    }
    p->buflen = 0;
    return MV_OK;
}

/* Drive the compressor over in (mode e_continue) or to the end of the frame (e_end). */
static mv_err put_compress(mv_put *p, ZSTD_inBuffer *in, ZSTD_EndDirective mode, char *err,
                           size_t errlen)
{
    for (;;) {
        if (p->buflen == IO_BUF) {
            mv_err rc = put_flush(p, err, errlen);
            if (rc) return rc;
        }
        ZSTD_outBuffer out = {p->buf, IO_BUF, p->buflen};
        size_t r = ZSTD_compressStream2(p->cctx, &out, in, mode);
        p->buflen = out.pos;
        if (ZSTD_isError(r)) {
            p->failed = MV_ERR;
            return mv_seterr(err, errlen, MV_ERR, "zstd: %s", ZSTD_getErrorName(r));
        }
        if (mode == ZSTD_e_end ? r == 0 : in->pos == in->size) return MV_OK;
    }
}

mv_err mv_put_set_size(mv_put *p, uint64_t size, char *err, size_t errlen)
{
    if (p->raw != 0)
        return mv_seterr(err, errlen, MV_EINVAL, "put: size announced after the first write");
    if (size > RAW_MAX)
        return mv_seterr(err, errlen, MV_ETOOBIG, "put: %llu bytes exceed the 1 GiB object limit",
                         (unsigned long long)size);
    if (ZSTD_isError(ZSTD_CCtx_setPledgedSrcSize(p->cctx, size)))
        return mv_seterr(err, errlen, MV_ERR, "put: zstd refused the announced size");
    p->announced = size;
    p->has_size = 1;
    return MV_OK;
}

void mv_put_set_legal_hold(mv_put *p, int on)
{
    if (p) p->hold = on ? 1 : 0;
}

mv_err mv_put_write(mv_put *p, const void *data, size_t len, char *err, size_t errlen)
{
    if (!p) return mv_seterr(err, errlen, MV_EINVAL, "put is NULL");
    if (p->failed) return mv_seterr(err, errlen, p->failed, "put: an earlier write failed");
    if (len == 0) return MV_OK;
    if (!data) return mv_seterr(err, errlen, MV_EINVAL, "put: NULL data");
    if (p->has_size && len > p->announced - p->raw) {
        p->failed = MV_EINVAL;
        return mv_seterr(err, errlen, MV_EINVAL, "put: more than the announced %llu bytes",
                         (unsigned long long)p->announced);
    }
    if (len > RAW_MAX - p->raw) {
        p->failed = MV_ETOOBIG;
        return mv_seterr(err, errlen, MV_ETOOBIG, "message exceeds %llu bytes",
                         (unsigned long long)RAW_MAX);
    }
    if (EVP_DigestUpdate(p->md, data, len) != 1) {
        p->failed = MV_ERR;
        return mv_seterr(err, errlen, MV_ERR, "put: SHA-256 update failed");
    }
    p->raw += len;
    ZSTD_inBuffer in = {data, len, 0};
    return put_compress(p, &in, ZSTD_e_continue, err, errlen);
}

void mv_put_abort(mv_put *p)
{
    if (p) put_release(p);
}

/* Object Lock attributes for a new object of this policy. */
static void lock_of(const mv_store_policy *pol, int hold, mv_be_lock *l)
{
    memset(l, 0, sizeof *l);
    if (pol->lock_mode[0] && pol->retain_seconds > 0) {
        l->mode = pol->lock_mode;
        l->retain_until = (int64_t)time(NULL) + pol->retain_seconds;
    }
    l->legal_hold = hold;
}

mv_err mv_put_commit(mv_put *p, int overwrite, mv_put_result *res, char *err, size_t errlen)
{
    if (!p) return mv_seterr(err, errlen, MV_EINVAL, "put is NULL");
    mv_err rc = MV_OK;
    mv_put_result r;
    memset(&r, 0, sizeof r);
    if (p->failed) {
        rc = mv_seterr(err, errlen, p->failed, "put: an earlier write failed");
        goto out;
    }
    if (p->has_size && p->raw != p->announced) {
        rc = mv_seterr(err, errlen, MV_EINVAL, "put: %llu bytes written, %llu announced",
                       (unsigned long long)p->raw, (unsigned long long)p->announced);
        goto out;
    }
    ZSTD_inBuffer none = {NULL, 0, 0};
    if ((rc = put_compress(p, &none, ZSTD_e_end, err, errlen)) != MV_OK) goto out;
    if ((rc = put_flush(p, err, errlen)) != MV_OK) goto out;
    if (p->enc) {
        p->ectx = (emit_ctx){p, err, errlen, MV_OK};
        if ((rc = mv_objenc_final(p->enc, err, errlen)) != MV_OK) {
            if (rc == MV_ECANCEL) rc = p->ectx.rc;
            goto out;
        }
    }

    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;
    if (EVP_DigestFinal_ex(p->md, md, &mdlen) != 1 || mdlen != 32) {
        rc = mv_seterr(err, errlen, MV_ERR, "put: SHA-256 final failed");
        goto out;
    }
    mv_hex(md, 32, r.hash);
    if (p->enc)
        mv_objenc_name(p->pol.naming, md, r.name);
    else
        memcpy(r.name, r.hash, sizeof r.name);
    r.raw_bytes = p->raw;

    char key[KEY_MAX];
    object_key(key, p->tenant, r.name);
    mv_be_lock lock;
    lock_of(&p->pol, p->hold, &lock);
    mv_be_writer *w = p->w;
    p->w = NULL; /* commit frees it */
    rc = p->be->ops->w_commit(w, key, overwrite, &lock, &r.existed, &r.stored_bytes, err, errlen);
    if (rc == MV_OK && r.existed && p->hold && p->be->ops->hold_set)
        rc = p->be->ops->hold_set(p->be, key, 1, err, errlen);
out:
    if (rc == MV_OK && res) *res = r;
    put_release(p);
    return rc;
}

/* Every backend opened so far (the default first). */
static int backends(mv_store *s, mv_be *list[BACKENDS_MAX + 1])
{
    int n = 0;
    pthread_mutex_lock(&s->mu);
    list[n++] = s->def;
    for (int i = 0; i < s->nbes; i++)
        list[n++] = s->bes[i].be;
    pthread_mutex_unlock(&s->mu);
    return n;
}

void mv_store_set_async(mv_store *s, int on)
{
    pthread_mutex_lock(&s->mu);
    s->async = on ? 1 : 0;
    for (int i = 0; i < s->nbes; i++)
        if (s->bes[i].be->ops->set_async)
            s->bes[i].be->ops->set_async(s->bes[i].be, s->async, NULL, 0);
    pthread_mutex_unlock(&s->mu);
}

void mv_store_settle(mv_store *s)
{
    mv_be *list[BACKENDS_MAX + 1];
    int n = backends(s, list);
    for (int i = 0; i < n; i++)
        if (list[i]->ops->settle) list[i]->ops->settle(list[i]);
}

mv_err mv_store_sync_dups(mv_store *s, uint64_t *dup_n, uint64_t *dup_bytes, char *err,
                          size_t errlen)
{
    if (!s) return mv_seterr(err, errlen, MV_EINVAL, "store is NULL");
    mv_be *list[BACKENDS_MAX + 1];
    int n = backends(s, list);
    mv_err rc = MV_OK;
    for (int i = 0; i < n && rc == MV_OK; i++)
        if (list[i]->ops->sync) rc = list[i]->ops->sync(list[i], dup_n, dup_bytes, err, errlen);
    return rc;
}

mv_err mv_store_sync(mv_store *s, char *err, size_t errlen)
{
    return mv_store_sync_dups(s, NULL, NULL, err, errlen);
}

mv_err mv_store_clean_tmp(mv_store *s, int max_age_s, int *removed, char *err, size_t errlen)
{
    *removed = 0;
    if (!s) return mv_seterr(err, errlen, MV_EINVAL, "store is NULL");
    mv_be *list[BACKENDS_MAX + 1];
    int n = backends(s, list);
    mv_err rc = MV_OK;
    for (int i = 0; i < n && rc == MV_OK; i++) {
        int k = 0;
        rc = list[i]->ops->sweep(list[i], max_age_s, &k, err, errlen);
        *removed += k;
    }
    return rc;
}

/* ---- reading ------------------------------------------------------------------------------ */

/* One object read: stored bytes -> (envelope) -> zstd -> SHA-256 -> the caller's sink. */
typedef struct reader {
    mv_store *s;
    ZSTD_DCtx *dctx;
    EVP_MD_CTX *md;
    unsigned char *out;
    mv_objdec *dec;
    const mv_store_policy *pol;
    const char *tenant;
    const char *label; /* object name for messages */
    mv_store_sink_fn cb;
    void *ud;
    char *err; /* = why: the reader's own errors, safe from the backend's "stopped" message */
    size_t errlen;
    char why[MV_ERRLEN];
    mv_err rc;
    int mode; /* 0: undecided, 1: plain zstd, 2: envelope */
    unsigned char head[4];
    size_t headlen;
    uint64_t total;
    size_t pending; /* ZSTD_decompressStream's "more to come" hint; 0 at a frame end */
    int any;
} reader;

static void reader_free(reader *rd)
{
    ZSTD_freeDCtx(rd->dctx);
    EVP_MD_CTX_free(rd->md);
    free(rd->out);
    mv_objdec_free(rd->dec);
    memset(rd, 0, sizeof *rd);
}

static mv_err reader_init(mv_store *s, reader *rd, char *err, size_t errlen)
{
    memset(rd, 0, sizeof *rd);
    rd->s = s;
    rd->dctx = ZSTD_createDCtx();
    rd->md = EVP_MD_CTX_new();
    rd->out = malloc(IO_BUF);
    if (!rd->dctx || !rd->md || !rd->out) {
        reader_free(rd);
        return mv_seterr(err, errlen, MV_ENOMEM, "out of memory");
    }
    return MV_OK;
}

static mv_err reader_reset(reader *rd, const mv_store_policy *pol, const char *tenant,
                           const char *label, mv_store_sink_fn cb, void *ud, char *err,
                           size_t errlen)
{
    ZSTD_DCtx_reset(rd->dctx, ZSTD_reset_session_only);
    mv_objdec_free(rd->dec);
    rd->dec = NULL;
    rd->pol = pol;
    rd->tenant = tenant;
    rd->label = label;
    rd->cb = cb;
    rd->ud = ud;
    rd->err = rd->why;
    rd->errlen = sizeof rd->why;
    rd->why[0] = '\0';
    rd->rc = MV_OK;
    rd->mode = 0;
    rd->headlen = 0;
    rd->total = 0;
    rd->pending = 1;
    rd->any = 0;
    if (EVP_DigestInit_ex(rd->md, rd->s->sha256, NULL) != 1)
        return mv_seterr(err, errlen, MV_ERR, "SHA-256 init failed");
    return MV_OK;
}

/* Compressed bytes -> zstd -> digest and sink. Returns 0 or 1 with rd->rc set. */
static int rd_zstd(void *ud, const void *data, size_t len)
{
    reader *rd = ud;
    ZSTD_inBuffer in = {data, len, 0};
    int full;
    rd->any = 1;
    do {
        ZSTD_outBuffer out = {rd->out, IO_BUF, 0};
        rd->pending = ZSTD_decompressStream(rd->dctx, &out, &in);
        if (ZSTD_isError(rd->pending)) {
            rd->rc = mv_seterr(rd->err, rd->errlen, MV_ECORRUPT, "object %s: zstd: %s", rd->label,
                               ZSTD_getErrorName(rd->pending));
            return 1;
        }
        if (out.pos > 0) {
            rd->total += out.pos;
            if (rd->total > RAW_MAX) {
                rd->rc = mv_seterr(rd->err, rd->errlen, MV_ECORRUPT,
                                   "object %s: decompresses beyond %llu bytes", rd->label,
                                   (unsigned long long)RAW_MAX);
                return 1;
            }
            EVP_DigestUpdate(rd->md, rd->out, out.pos);
            if (rd->cb && rd->cb(rd->ud, rd->out, out.pos) != 0) {
                rd->rc = mv_seterr(rd->err, rd->errlen, MV_ECANCEL, "object %s: read cancelled",
                                   rd->label);
                return 1;
            }
        }
        full = out.pos == out.size;
    } while (in.pos < in.size || full);
    return 0;
}

static int rd_stored_more(reader *rd, const void *p, size_t len)
{
    if (rd->mode == 1) return rd_zstd(rd, p, len);
    mv_err rc = mv_objdec_update(rd->dec, p, len, rd->err, rd->errlen);
    if (rc == MV_OK) return 0;
    if (rc == MV_ECANCEL) return 1;                 /* rd_zstd stopped it and set rd->rc */
    rd->rc = rc == MV_ENOTFOUND ? MV_ECORRUPT : rc; /* an unknown key version */
    return 1;
}

/* Stored bytes from the backend: the first four decide plain or envelope. */
static int rd_stored(void *ud, const void *data, size_t len)
{
    reader *rd = ud;
    const unsigned char *p = data;
    if (rd->mode == 0) {
        size_t take = sizeof rd->head - rd->headlen;
        if (take > len) take = len;
        memcpy(rd->head + rd->headlen, p, take);
        rd->headlen += take;
        p += take;
        len -= take;
        if (rd->headlen < sizeof rd->head) return 0;
        rd->mode = mv_objenc_is_envelope(rd->head, 4) ? 2 : 1;
        if (rd->mode == 2) {
            mv_err rc = mv_objdec_begin(rd->tenant, dec_key_fn, (void *)rd->pol, rd_zstd, rd,
                                        &rd->dec, rd->err, rd->errlen);
            if (rc) {
                rd->rc = rc;
                return 1;
            }
        }
        if (rd_stored_more(rd, rd->head, sizeof rd->head)) return 1;
    }
    return len > 0 ? rd_stored_more(rd, p, len) : 0;
}

/* The end of the stored bytes (read_rc: what the backend's read returned). */
static mv_err reader_check(reader *rd, mv_err read_rc, unsigned char sha[32], int *encrypted)
{
    if (read_rc != MV_OK) return rd->rc ? rd->rc : read_rc;
    if (rd->mode == 0) {
        if (rd->headlen == 0)
            return mv_seterr(rd->err, rd->errlen, MV_ECORRUPT, "object %s: empty file", rd->label);
        rd->mode = 1; /* shorter than any envelope: let zstd judge it */
        if (rd_zstd(rd, rd->head, rd->headlen)) return rd->rc;
    }
    if (rd->mode == 2) {
        mv_err rc = mv_objdec_final(rd->dec, rd->err, rd->errlen);
        if (rc == MV_ECANCEL) return rd->rc;
        if (rc) return rc;
    }
    if (!rd->any)
        return mv_seterr(rd->err, rd->errlen, MV_ECORRUPT, "object %s: empty file", rd->label);
    if (rd->pending != 0)
        return mv_seterr(rd->err, rd->errlen, MV_ECORRUPT, "object %s: truncated zstd frame",
                         rd->label);
    unsigned int mdlen = 0;
    if (EVP_DigestFinal_ex(rd->md, sha, &mdlen) != 1 || mdlen != 32)
        return mv_seterr(rd->err, rd->errlen, MV_ERR, "SHA-256 final failed");
    if (encrypted) *encrypted = rd->mode == 2;
    return MV_OK;
}

static mv_err reader_finish(reader *rd, mv_err read_rc, unsigned char sha[32], int *encrypted,
                            char *err, size_t errlen)
{
    mv_err rc = reader_check(rd, read_rc, sha, encrypted);
    if (rc != MV_OK && rd->why[0]) snprintf(err, errlen, "%s", rd->why);
    return rc;
}

/* Read the object at key through rd; sha gets the digest of its content. */
static mv_err read_one(reader *rd, mv_be *be, const char *key, const mv_store_policy *pol,
                       const char *tenant, const char *label, mv_store_sink_fn cb, void *ud,
                       unsigned char sha[32], uint64_t *stored, int *encrypted, char *err,
                       size_t errlen)
{
    mv_err rc = reader_reset(rd, pol, tenant, label, cb, ud, err, errlen);
    if (rc) return rc;
    uint64_t n = 0;
    rc = be->ops->read(be, key, STORED_MAX, rd_stored, rd, &n, err, errlen);
    if (stored) *stored = n;
    return reader_finish(rd, rc, sha, encrypted, err, errlen);
}

/* The names an object of content hash may have for this tenant, most likely first. */
static int names_of(const mv_store_policy *pol, const char *hash, char names[2][65])
{
    int n = 0;
    if (pol->has_naming) {
        unsigned char sha[32];
        for (int i = 0; i < 32; i++) {
            unsigned hi =
                (unsigned)(hash[2 * i] <= '9' ? hash[2 * i] - '0' : hash[2 * i] - 'a' + 10);
            unsigned lo = (unsigned)(hash[2 * i + 1] <= '9' ? hash[2 * i + 1] - '0'
                                                            : hash[2 * i + 1] - 'a' + 10);
            sha[i] = (unsigned char)(hi << 4 | lo);
        }
        mv_objenc_name(pol->naming, sha, names[n++]);
    }
    memcpy(names[n++], hash, 65); /* plain objects written before encryption was turned on */
    return n;
}

mv_err mv_store_get(mv_store *s, const char *tenant, const char *hash, mv_store_sink_fn cb,
                    void *ud, char *err, size_t errlen)
{
    if (!s) return mv_seterr(err, errlen, MV_EINVAL, "store is NULL");
    if (!mv_name_valid(tenant)) return mv_seterr(err, errlen, MV_EINVAL, "invalid tenant name");
    if (!is_hash(hash)) return mv_seterr(err, errlen, MV_EINVAL, "invalid object hash");
    mv_store_policy *pol = malloc(sizeof *pol);
    if (!pol) return mv_seterr(err, errlen, MV_ENOMEM, "out of memory");
    mv_be *be = NULL;
    reader rd;
    mv_err rc = resolve(s, tenant, pol, &be, err, errlen);
    if (rc == MV_OK) rc = reader_init(s, &rd, err, errlen);
    if (rc) goto done;
    char names[2][65], key[KEY_MAX];
    int n = names_of(pol, hash, names);
    rc = MV_ENOTFOUND;
    for (int i = 0; i < n && rc == MV_ENOTFOUND; i++) {
        int exists = 1;
        object_key(key, tenant, names[i]);
        if (i + 1 < n && (exists = be->ops->exists(be, key, err, errlen)) < 0) {
            rc = MV_EIO;
            break;
        }
        if (!exists) continue;
        unsigned char sha[32];
        char got[65];
        rc = read_one(&rd, be, key, pol, tenant, hash, cb, ud, sha, NULL, NULL, err, errlen);
        if (rc == MV_OK) {
            mv_hex(sha, 32, got);
            if (strcmp(got, hash) != 0)
                rc = mv_seterr(err, errlen, MV_ECORRUPT, "object %s: content hashes to %s", hash,
                               got);
        }
    }
    if (rc == MV_ENOTFOUND) rc = mv_seterr(err, errlen, MV_ENOTFOUND, "object %s not found", hash);
    reader_free(&rd);
done:
    mv_store_policy_wipe(pol);
    free(pol);
    return rc;
}

int mv_store_exists(mv_store *s, const char *tenant, const char *hash)
{
    if (!s || !mv_name_valid(tenant) || !is_hash(hash)) return 0;
    mv_store_policy *pol = malloc(sizeof *pol);
    if (!pol) return 0;
    mv_be *be = NULL;
    int found = 0;
    char err[MV_ERRLEN];
    if (resolve(s, tenant, pol, &be, err, sizeof err) == MV_OK) {
        char names[2][65], key[KEY_MAX];
        int n = names_of(pol, hash, names);
        for (int i = 0; i < n && !found; i++) {
            object_key(key, tenant, names[i]);
            found = be->ops->exists(be, key, err, sizeof err) == 1;
        }
    }
    mv_store_policy_wipe(pol);
    free(pol);
    return found;
}

/* ---- verify ------------------------------------------------------------------------------- */

typedef struct vctx {
    mv_store *s;
    reader rd;
    mv_be *be;
    mv_store_policy *pol;
    const char *tenant;
    size_t plen; /* strlen("<tenant>/objects/") */
    mv_verify_bad_fn bad_cb;
    mv_verify_progress_fn progress;
    void *ud;
    mv_verify_stats st;
    mv_err fatal; /* a transport failure that ends the walk */
    char *err;
    size_t errlen;
} vctx;

static void v_bad(vctx *v, const char *name, const char *why)
{
    v->st.objects++;
    v->st.bad++;
    if (v->bad_cb) v->bad_cb(v->ud, v->tenant, name, why);
    if (v->progress) v->progress(v->ud, &v->st);
}

static int v_entry(void *ud, const mv_be_entry *e)
{
    vctx *v = ud;
    char why[MV_ERRLEN];
    const char *rest = e->key + v->plen;
    const char *base = strrchr(e->key, '/');
    base = base ? base + 1 : e->key;
    const char *name = rest + 6;
    if (strlen(rest) < 7 || rest[2] != '/' || rest[5] != '/' || strchr(name, '/') ||
        !is_hex2(rest, 2) || !is_hex2(rest + 3, 2)) {
        v_bad(v, base, "unexpected entry in the objects tree");
        return 0;
    }
    if (!e->regular) {
        v_bad(v, base, "not a regular file");
        return 0;
    }
    if (!is_hash(name)) {
        v_bad(v, base, "not an object name (stray file)");
        return 0;
    }
    if (memcmp(name, rest, 2) != 0 || memcmp(name + 2, rest + 3, 2) != 0) {
        v_bad(v, base, "object stored under the wrong directory");
        return 0;
    }
    unsigned char sha[32];
    uint64_t stored = 0;
    int encrypted = 0;
    mv_err rc = read_one(&v->rd, v->be, e->key, v->pol, v->tenant, name, NULL, NULL, sha, &stored,
                         &encrypted, why, sizeof why);
    if (rc == MV_ENOTFOUND) return 0; /* removed while we walked */
    if (rc == MV_ENET || rc == MV_ETIMEDOUT || rc == MV_EAUTH || rc == MV_ENOMEM) {
        v->fatal = mv_seterr(v->err, v->errlen, rc, "%s", why);
        return 1;
    }
    if (rc) {
        v_bad(v, name, why);
        return 0;
    }
    char plain[65], keyed[65];
    mv_hex(sha, 32, plain);
    int named = strcmp(plain, name) == 0;
    if (!named && v->pol->has_naming) {
        mv_objenc_name(v->pol->naming, sha, keyed);
        named = strcmp(keyed, name) == 0;
    }
    if (!named) {
        snprintf(why, sizeof why, "object %s: content hashes to %s", name, plain);
        v_bad(v, name, why);
        return 0;
    }
    if (v->be->ops->lock_get) { /* S3: one HEAD per object */
        char mode[16] = "";
        int64_t until = 0;
        int hold = 0;
        rc = v->be->ops->lock_get(v->be, e->key, mode, &until, &hold, why, sizeof why);
        int want = v->pol->lock_mode[0] && v->pol->retain_seconds > 0;
        if (rc == MV_OK && want && (strcmp(mode, v->pol->lock_mode) != 0 || until <= 0)) {
            snprintf(why, sizeof why, "retention is \"%s\", the tenant's policy is %s", mode,
                     v->pol->lock_mode);
            rc = MV_ECORRUPT;
        }
        if (rc) {
            v_bad(v, name, why);
            return 0;
        }
        v->st.retained += mode[0] ? 1 : 0;
        v->st.held += hold ? 1 : 0;
    }
    v->st.objects++;
    v->st.ok++;
    v->st.encrypted += encrypted ? 1 : 0;
    v->st.raw_bytes += v->rd.total;
    v->st.stored_bytes += stored;
    if (v->progress) v->progress(v->ud, &v->st);
    return 0;
}

static mv_err v_tenant(vctx *v, const char *tenant, mv_be *only, char *err, size_t errlen)
{
    char prefix[KEY_MAX];
    mv_err rc = resolve(v->s, tenant, v->pol, &v->be, err, errlen);
    if (rc) return rc;
    if (only) v->be = only;
    if ((rc = mkkey(prefix, sizeof prefix, err, errlen, "%s/objects/", tenant)) != MV_OK) return rc;
    v->tenant = tenant;
    v->plen = strlen(prefix);
    v->fatal = MV_OK;
    v->err = err;
    v->errlen = errlen;
    rc = v->be->ops->list(v->be, prefix, v_entry, v, err, errlen);
    mv_store_policy_wipe(v->pol);
    if (v->fatal) return v->fatal;
    return rc;
}

typedef struct tlist {
    char (*names)[64];
    size_t n, cap;
} tlist;

static int collect_tenant(void *ud, const char *name)
{
    tlist *l = ud;
    char item[64];
    if (!mv_name_valid(name)) return 0;
    snprintf(item, sizeof item, "%s", name);
    return mv_grow_push((void **)&l->names, &l->n, &l->cap, sizeof item, item) != 0;
}

mv_err mv_store_verify(mv_store *s, const char *tenant, mv_verify_bad_fn bad_cb,
                       mv_verify_progress_fn progress, void *ud, mv_verify_stats *st, char *err,
                       size_t errlen)
{
    if (st) memset(st, 0, sizeof *st);
    if (!s) return mv_seterr(err, errlen, MV_EINVAL, "store is NULL");
    if (tenant && !mv_name_valid(tenant))
        return mv_seterr(err, errlen, MV_EINVAL, "invalid tenant name");
    vctx v;
    memset(&v, 0, sizeof v);
    v.s = s;
    v.bad_cb = bad_cb;
    v.progress = progress;
    v.ud = ud;
    v.pol = malloc(sizeof *v.pol);
    if (!v.pol) return mv_seterr(err, errlen, MV_ENOMEM, "out of memory");
    mv_err rc = reader_init(s, &v.rd, err, errlen);
    if (rc) {
        free(v.pol);
        return rc;
    }
    if (tenant) {
        rc = v_tenant(&v, tenant, NULL, err, errlen);
    } else {
        /* every tenant directory of the default store */
        tlist l = {0};
        rc = s->def->ops->list_top(s->def, collect_tenant, &l, err, errlen);
        if (rc == MV_ECANCEL) rc = mv_seterr(err, errlen, MV_ENOMEM, "out of memory");
        for (size_t i = 0; rc == MV_OK && i < l.n; i++)
            rc = v_tenant(&v, l.names[i], s->def, err, errlen);
        free(l.names);
    }
    reader_free(&v.rd);
    mv_store_policy_wipe(v.pol);
    free(v.pol);
    if (st) *st = v.st;
    return rc;
}

/* ---- mailbox escaping --------------------------------------------------------------------- */

/* Escape in into out (whole units only, always NUL-terminated if outlen > 0); returns the
 * length the full escaped form needs (without NUL). */
static size_t escape(const char *in, char *out, size_t outlen)
{
    static const char hx[] = "0123456789ABCDEF";
    size_t need = 0, w = 0;
    int fits = out && outlen > 0;
    for (size_t i = 0; in && in[i]; i++) {
        unsigned char c = (unsigned char)in[i];
        int keep = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
                   c == '_' || c == '@' || c == '+' || c == '-' || (c == '.' && i > 0);
        size_t unit = keep ? 1 : 3;
        if (fits && w + unit < outlen) {
            if (keep) {
                out[w++] = (char)c;
            } else {
                out[w++] = '%';
                out[w++] = hx[c >> 4];
                out[w++] = hx[c & 15];
            }
        } else {
            fits = 0;
        }
        need += unit;
    }
    if (out && outlen > 0) out[w] = '\0';
    return need;
}

void mv_store_path_escape(const char *in, char *out, size_t outlen)
{
    escape(in, out, outlen);
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

void mv_store_path_unescape(const char *in, char *out, size_t outlen)
{
    if (!out || outlen == 0) return;
    size_t w = 0;
    for (size_t i = 0; in && in[i] && w + 1 < outlen; i++) {
        int hi, lo;
        if (in[i] == '%' && (hi = hexval(in[i + 1])) >= 0 && (lo = hexval(in[i + 2])) >= 0 &&
            (hi | lo) != 0) {
            out[w++] = (char)(hi << 4 | lo);
            i += 2;
        } else {
            out[w++] = in[i];
        }
    }
    out[w] = '\0';
}

/* ---- segments ----------------------------------------------------------------------------- */

/* "<tenant>/mailboxes/<escaped mailbox>/index/" */
static mv_err index_prefix(const char *tenant, const char *mailbox, char *out, size_t outlen,
                           char *err, size_t errlen)
{
    char esc[256];
    if (!mv_name_valid(tenant)) return mv_seterr(err, errlen, MV_EINVAL, "invalid tenant name");
    if (!mailbox || !mailbox[0]) return mv_seterr(err, errlen, MV_EINVAL, "empty mailbox id");
    if (escape(mailbox, esc, sizeof esc) >= sizeof esc)
        return mv_seterr(err, errlen, MV_EINVAL, "mailbox id too long once escaped");
    return mkkey(out, outlen, err, errlen, "%s/mailboxes/%s/index/", tenant, esc);
}

/* "<tenant>/mailboxes/<escaped mailbox>/index/<name>" */
static mv_err segment_key(mv_store *s, const char *tenant, const char *mailbox, const char *name,
                          char key[KEY_MAX], char *err, size_t errlen)
{
    if (!s) return mv_seterr(err, errlen, MV_EINVAL, "store is NULL");
    mv_err rc = index_prefix(tenant, mailbox, key, KEY_MAX, err, errlen);
    if (rc) return rc;
    if (!segname_valid(name)) return mv_seterr(err, errlen, MV_EINVAL, "invalid segment name");
    return mkkey(key + strlen(key), KEY_MAX - strlen(key), err, errlen, "%s", name);
}

typedef struct membuf {
    unsigned char *d;
    size_t n, cap, max;
    char *err;
    size_t errlen;
    mv_err rc;
} membuf;

static int mem_add(void *ud, const void *data, size_t len)
{
    membuf *m = ud;
    if (len > m->max - m->n) {
        m->rc = mv_seterr(m->err, m->errlen, MV_ETOOBIG, "segment larger than %zu bytes", m->max);
        return 1;
    }
    if (m->n + len > m->cap) {
        size_t cap = m->cap ? m->cap : 4096;
        while (cap < m->n + len)
            cap *= 2;
        void *p = realloc(m->d, cap);
        if (!p) {
            m->rc = mv_seterr(m->err, m->errlen, MV_ENOMEM, "out of memory");
            return 1;
        }
        m->d = p;
        m->cap = cap;
    }
    memcpy(m->d + m->n, data, len);
    m->n += len;
    return 0;
}

mv_err mv_store_segment_put(mv_store *s, const char *tenant, const char *mailbox, const char *name,
                            const void *data, size_t len, char *err, size_t errlen)
{
    char key[KEY_MAX];
    mv_err rc = segment_key(s, tenant, mailbox, name, key, err, errlen);
    if (rc) return rc;
    if (len > SEGMENT_MAX) return mv_seterr(err, errlen, MV_ETOOBIG, "segment too large");
    if (len > 0 && !data) return mv_seterr(err, errlen, MV_EINVAL, "segment data is NULL");
    mv_store_policy *pol = malloc(sizeof *pol);
    if (!pol) return mv_seterr(err, errlen, MV_ENOMEM, "out of memory");
    mv_be *be = NULL;
    membuf m = {.max = SEGMENT_MAX * 2, .err = err, .errlen = errlen};
    if ((rc = resolve(s, tenant, pol, &be, err, errlen)) != MV_OK) goto out;
    if (pol->encrypt) {
        /* an index segment names senders and subjects: it is sealed like a message */
        unsigned char dk[32];
        mv_objenc *e = NULL;
        key_lookup(pol, pol->key_current, dk);
        rc = mv_objenc_begin(dk, pol->key_current, tenant, mem_add, &m, &e, err, errlen);
        OPENSSL_cleanse(dk, sizeof dk);
        if (rc == MV_OK) rc = mv_objenc_update(e, data, len, err, errlen);
        if (rc == MV_OK) rc = mv_objenc_final(e, err, errlen);
        mv_objenc_free(e);
        if (rc == MV_ECANCEL) rc = m.rc;
        if (rc) goto out;
        data = m.d;
        len = m.n;
    }
    mv_be_lock lock;
    lock_of(pol, 0, &lock);
    rc = be->ops->blob_put(be, tenant, key, data, len, &lock, err, errlen);
out:
    free(m.d);
    mv_store_policy_wipe(pol);
    free(pol);
    return rc;
}

typedef struct seglist {
    size_t plen;
    int (*cb)(void *ud, const char *name);
    void *ud;
} seglist;

static int seg_entry(void *ud, const mv_be_entry *e)
{
    seglist *l = ud;
    const char *name = e->key + l->plen;
    if (!e->regular || strchr(name, '/') || !segname_valid(name)) return 0;
    return l->cb ? l->cb(l->ud, name) : 0;
}

mv_err mv_store_segment_list(mv_store *s, const char *tenant, const char *mailbox,
                             int (*cb)(void *ud, const char *name), void *ud, char *err,
                             size_t errlen)
{
    char prefix[KEY_MAX];
    if (!s) return mv_seterr(err, errlen, MV_EINVAL, "store is NULL");
    mv_err rc = index_prefix(tenant, mailbox, prefix, sizeof prefix, err, errlen);
    if (rc) return rc;
    mv_store_policy *pol = malloc(sizeof *pol);
    if (!pol) return mv_seterr(err, errlen, MV_ENOMEM, "out of memory");
    mv_be *be = NULL;
    if ((rc = resolve(s, tenant, pol, &be, err, errlen)) == MV_OK) {
        seglist l = {strlen(prefix), cb, ud};
        rc = be->ops->list(be, prefix, seg_entry, &l, err, errlen);
        if (rc == MV_ECANCEL)
            rc = mv_seterr(err, errlen, MV_ECANCEL, "segment listing stopped by callback");
    }
    mv_store_policy_wipe(pol);
    free(pol);
    return rc;
}

mv_err mv_store_segment_get(mv_store *s, const char *tenant, const char *mailbox, const char *name,
                            void **data, size_t *len, char *err, size_t errlen)
{
    char key[KEY_MAX];
    *data = NULL;
    *len = 0;
    mv_err rc = segment_key(s, tenant, mailbox, name, key, err, errlen);
    if (rc) return rc;
    mv_store_policy *pol = malloc(sizeof *pol);
    if (!pol) return mv_seterr(err, errlen, MV_ENOMEM, "out of memory");
    mv_be *be = NULL;
    membuf raw = {.max = SEGMENT_MAX + (SEGMENT_MAX >> 6) + 4096, .err = err, .errlen = errlen};
    membuf plain = {.max = SEGMENT_MAX, .err = err, .errlen = errlen};
    if ((rc = resolve(s, tenant, pol, &be, err, errlen)) != MV_OK) goto out;
    uint64_t n = 0;
    rc = be->ops->read(be, key, raw.max, mem_add, &raw, &n, err, errlen);
    if (rc == MV_ECANCEL && raw.rc) rc = raw.rc;
    if (rc == MV_ENOTFOUND) rc = mv_seterr(err, errlen, MV_ENOTFOUND, "segment %s not found", name);
    if (rc) goto out;
    if (raw.n > SEGMENT_MAX && !mv_objenc_is_envelope(raw.d, raw.n)) {
        rc = mv_seterr(err, errlen, MV_ETOOBIG, "segment %s is %zu bytes", name, raw.n);
        goto out;
    }
    if (mv_objenc_is_envelope(raw.d, raw.n)) {
        mv_objdec *d = NULL;
        rc = mv_objdec_begin(tenant, dec_key_fn, pol, mem_add, &plain, &d, err, errlen);
        if (rc == MV_OK) rc = mv_objdec_update(d, raw.d, raw.n, err, errlen);
        if (rc == MV_OK) rc = mv_objdec_final(d, err, errlen);
        mv_objdec_free(d);
        if (rc == MV_ECANCEL) rc = plain.rc;
        if (rc == MV_ENOTFOUND) rc = MV_ECORRUPT;
        if (rc) goto out;
        *data = plain.d;
        *len = plain.n;
        plain.d = NULL;
    } else {
        *data = raw.d ? raw.d : malloc(1);
        *len = raw.n;
        raw.d = NULL;
        if (!*data) rc = mv_seterr(err, errlen, MV_ENOMEM, "out of memory");
    }
out:
    if (raw.d) OPENSSL_cleanse(raw.d, raw.n);
    if (plain.d) OPENSSL_cleanse(plain.d, plain.n);
    free(raw.d);
    free(plain.d);
    mv_store_policy_wipe(pol);
    free(pol);
    return rc;
}

typedef struct mblist {
    size_t plen;
    char (*names)[256];
    size_t n, cap;
} mblist;

static int mb_entry(void *ud, const mv_be_entry *e)
{
    mblist *l = ud;
    const char *rest = e->key + l->plen, *slash = strchr(rest, '/');
    if (!slash || strncmp(slash, "/index/", 7) != 0 || (size_t)(slash - rest) >= 256) return 0;
    size_t len = (size_t)(slash - rest);
    if (l->n > 0 && strlen(l->names[l->n - 1]) == len && memcmp(l->names[l->n - 1], rest, len) == 0)
        return 0;
    char item[256];
    memcpy(item, rest, len);
    item[len] = '\0';
    return mv_grow_push((void **)&l->names, &l->n, &l->cap, sizeof item, item) != 0;
}

static int cmp_name(const void *a, const void *b)
{
    return strcmp(a, b);
}

mv_err mv_store_mailbox_list(mv_store *s, const char *tenant,
                             int (*cb)(void *ud, const char *mailbox), void *ud, char *err,
                             size_t errlen)
{
    char prefix[KEY_MAX], name[256];
    if (!s) return mv_seterr(err, errlen, MV_EINVAL, "store is NULL");
    if (!mv_name_valid(tenant)) return mv_seterr(err, errlen, MV_EINVAL, "invalid tenant name");
    mv_err rc = mkkey(prefix, sizeof prefix, err, errlen, "%s/mailboxes/", tenant);
    if (rc) return rc;
    mv_store_policy *pol = malloc(sizeof *pol);
    if (!pol) return mv_seterr(err, errlen, MV_ENOMEM, "out of memory");
    mv_be *be = NULL;
    mblist l = {.plen = strlen(prefix)};
    if ((rc = resolve(s, tenant, pol, &be, err, errlen)) == MV_OK) {
        rc = be->ops->list(be, prefix, mb_entry, &l, err, errlen);
        if (rc == MV_ECANCEL) rc = mv_seterr(err, errlen, MV_ENOMEM, "out of memory");
    }
    if (rc == MV_OK && l.n > 1) qsort(l.names, l.n, sizeof *l.names, cmp_name);
    for (size_t i = 0; i < l.n && rc == MV_OK; i++) {
        if (i > 0 && strcmp(l.names[i], l.names[i - 1]) == 0) continue;
        mv_store_path_unescape(l.names[i], name, sizeof name);
        if (cb && cb(ud, name) != 0)
            rc = mv_seterr(err, errlen, MV_ECANCEL, "mailbox listing stopped by callback");
    }
    free(l.names);
    mv_store_policy_wipe(pol);
    free(pol);
    return rc;
}

/* ---- Object Lock and deletion ------------------------------------------------------------- */

/* The key of the existing object of content hash (keyed name first, then plain). */
static mv_err find_object(mv_store *s, const char *tenant, const char *hash, mv_be **be,
                          char key[KEY_MAX], char *err, size_t errlen)
{
    if (!is_hash(hash)) return mv_seterr(err, errlen, MV_EINVAL, "invalid object hash");
    mv_store_policy *pol = malloc(sizeof *pol);
    if (!pol) return mv_seterr(err, errlen, MV_ENOMEM, "out of memory");
    mv_err rc = resolve(s, tenant, pol, be, err, errlen);
    if (rc == MV_OK) {
        char names[2][65];
        int n = names_of(pol, hash, names), found = 0;
        for (int i = 0; i < n && !found && rc == MV_OK; i++) {
            object_key(key, tenant, names[i]);
            found = (*be)->ops->exists(*be, key, err, errlen);
            if (found < 0) rc = MV_EIO;
        }
        if (rc == MV_OK && !found)
            rc = mv_seterr(err, errlen, MV_ENOTFOUND, "object %s not found", hash);
    }
    mv_store_policy_wipe(pol);
    free(pol);
    return rc;
}

mv_err mv_store_lock_info(mv_store *s, const char *tenant, const char *hash, char mode[16],
                          int64_t *retain_until, int *legal_hold, char *err, size_t errlen)
{
    mv_be *be = NULL;
    char key[KEY_MAX];
    mode[0] = '\0';
    *retain_until = 0;
    *legal_hold = 0;
    mv_err rc = find_object(s, tenant, hash, &be, key, err, errlen);
    if (rc) return rc;
    if (!be->ops->lock_get)
        return mv_seterr(err, errlen, MV_EINVAL, "the %s store of tenant %s has no Object Lock",
                         be->ops->type, tenant);
    return be->ops->lock_get(be, key, mode, retain_until, legal_hold, err, errlen);
}

mv_err mv_store_legal_hold(mv_store *s, const char *tenant, const char *hash, int on, char *err,
                           size_t errlen)
{
    mv_be *be = NULL;
    char key[KEY_MAX];
    mv_err rc = find_object(s, tenant, hash, &be, key, err, errlen);
    if (rc) return rc;
    if (!be->ops->hold_set)
        return mv_seterr(err, errlen, MV_EINVAL,
                         "the %s store of tenant %s has no legal hold (Object Lock is S3 only)",
                         be->ops->type, tenant);
    return be->ops->hold_set(be, key, on, err, errlen);
}

mv_err mv_store_delete(mv_store *s, const char *tenant, const char *hash, int *refused, char *err,
                       size_t errlen)
{
    mv_be *be = NULL;
    char key[KEY_MAX];
    *refused = 0;
    mv_err rc = find_object(s, tenant, hash, &be, key, err, errlen);
    if (rc) return rc;
    return be->ops->del(be, key, refused, err, errlen);
}

mv_err mv_store_segment_del(mv_store *s, const char *tenant, const char *mailbox, const char *name,
                            int *refused, char *err, size_t errlen)
{
    char key[KEY_MAX];
    *refused = 0;
    mv_err rc = segment_key(s, tenant, mailbox, name, key, err, errlen);
    if (rc) return rc;
    mv_store_policy *pol = malloc(sizeof *pol);
    if (!pol) return mv_seterr(err, errlen, MV_ENOMEM, "out of memory");
    mv_be *be = NULL;
    if ((rc = resolve(s, tenant, pol, &be, err, errlen)) == MV_OK)
        rc = be->ops->del(be, key, refused, err, errlen);
    mv_store_policy_wipe(pol);
    free(pol);
    return rc;
}

/* ---- moving a tenant between stores ------------------------------------------------------- */

typedef struct mig {
    mv_store *s;
    mv_be *from, *to;
    mv_store_policy *pol;
    const char *tenant;
    const char *after; /* resume: keys <= after were done by an earlier run */
    int verify_existing;
    uint64_t limit;
    mv_migrate_fn progress;
    void *ud;
    mv_migrate_stats st;
    reader rd;
    mv_err rc;
    char *err;
    size_t errlen;
} mig;

typedef struct copy_ctx {
    mv_be *to;
    mv_be_writer *w;
    char *err;
    size_t errlen;
    mv_err rc;
} copy_ctx;

static int copy_piece(void *ud, const void *data, size_t len)
{
    copy_ctx *c = ud;
    c->rc = c->to->ops->w_write(c->w, data, len, c->err, c->errlen);
    return c->rc != MV_OK;
}

typedef struct cmp_ctx {
    const unsigned char *d;
    size_t n, off;
    int differs;
} cmp_ctx;

static int cmp_piece(void *ud, const void *data, size_t len)
{
    cmp_ctx *c = ud;
    if (len > c->n - c->off || memcmp(c->d + c->off, data, len) != 0) {
        c->differs = 1;
        return 1;
    }
    c->off += len;
    return 0;
}

/* Check the target's copy of key: an object reads back to content matching its name, a
 * segment is byte-identical to the source's. */
static mv_err mig_check(mig *m, const char *key, int is_object, char *err, size_t errlen)
{
    if (is_object) {
        const char *name = strrchr(key, '/') + 1;
        unsigned char sha[32];
        char plain[65], keyed[65];
        mv_err rc = read_one(&m->rd, m->to, key, m->pol, m->tenant, name, NULL, NULL, sha, NULL,
                             NULL, err, errlen);
        if (rc) return rc;
        mv_hex(sha, 32, plain);
        if (strcmp(plain, name) == 0) return MV_OK;
        if (m->pol->has_naming) {
            mv_objenc_name(m->pol->naming, sha, keyed);
            if (strcmp(keyed, name) == 0) return MV_OK;
        }
        return mv_seterr(err, errlen, MV_ECORRUPT, "copy of %s: content hashes to %s", key, plain);
    }
    membuf a = {.max = SEGMENT_MAX * 2, .err = err, .errlen = errlen};
    uint64_t n = 0;
    mv_err rc = m->from->ops->read(m->from, key, a.max, mem_add, &a, &n, err, errlen);
    if (rc == MV_OK) {
        cmp_ctx c = {a.d, a.n, 0, 0};
        rc = m->to->ops->read(m->to, key, a.max, cmp_piece, &c, &n, err, errlen);
        if (c.differs || (rc == MV_OK && c.off != a.n))
            rc = mv_seterr(err, errlen, MV_ECORRUPT, "copy of %s differs from the original", key);
    }
    free(a.d);
    return rc;
}

static int mig_entry(void *ud, const mv_be_entry *e)
{
    mig *m = ud;
    const char *rest = e->key + strlen(m->tenant) + 1;
    int is_object = strncmp(rest, "objects/", 8) == 0;
    if (!e->regular || (!is_object && strncmp(rest, "mailboxes/", 10) != 0)) return 0; /* tmp/ */
    if (is_object && !is_hash(strrchr(e->key, '/') + 1)) return 0; /* not an object (verify) */
    if (m->after && strcmp(e->key, m->after) <= 0) return 0;
    if (m->limit && m->st.copied + m->st.present >= m->limit) {
        m->st.stopped = 1;
        return 1;
    }
    int there = m->to->ops->exists(m->to, e->key, m->err, m->errlen);
    if (there < 0) {
        m->rc = MV_EIO;
        return 1;
    }
    if (!there) {
        copy_ctx c = {m->to, NULL, m->err, m->errlen, MV_OK};
        mv_be_lock lock;
        lock_of(m->pol, 0, &lock);
        if (is_object) {
            m->rc = m->to->ops->w_begin(m->to, m->tenant, &c.w, m->err, m->errlen);
            uint64_t n = 0;
            if (m->rc == MV_OK)
                m->rc = m->from->ops->read(m->from, e->key, STORED_MAX, copy_piece, &c, &n, m->err,
                                           m->errlen);
            if (m->rc == MV_ECANCEL && c.rc) m->rc = c.rc;
            if (m->rc == MV_OK) {
                int existed = 0;
                uint64_t stored = 0;
                mv_be_writer *w = c.w;
                c.w = NULL;
                m->rc =
                    m->to->ops->w_commit(w, e->key, 0, &lock, &existed, &stored, m->err, m->errlen);
            }
            if (c.w) m->to->ops->w_abort(c.w);
        } else {
            membuf b = {.max = SEGMENT_MAX * 2, .err = m->err, .errlen = m->errlen};
            uint64_t n = 0;
            m->rc = m->from->ops->read(m->from, e->key, b.max, mem_add, &b, &n, m->err, m->errlen);
            if (m->rc == MV_ECANCEL && b.rc) m->rc = b.rc;
            if (m->rc == MV_OK)
                m->rc = m->to->ops->blob_put(m->to, m->tenant, e->key, b.d, b.n, &lock, m->err,
                                             m->errlen);
            free(b.d);
        }
        if (m->rc) return 1;
        m->st.copied++;
        m->st.bytes += e->size;
    } else {
        m->st.present++;
    }
    if (!there || m->verify_existing) {
        if ((m->rc = mig_check(m, e->key, is_object, m->err, m->errlen)) != MV_OK) return 1;
        m->st.verified++;
    }
    if (m->progress && m->progress(m->ud, e->key, &m->st) != 0) {
        m->rc = mv_seterr(m->err, m->errlen, MV_ECANCEL, "migration stopped");
        return 1;
    }
    return 0;
}

mv_err mv_store_migrate(mv_store *s, const char *tenant, const mv_store_def *from,
                        const mv_store_def *to, const char *after, int verify_existing,
                        uint64_t limit, mv_migrate_fn progress, void *ud, mv_migrate_stats *st,
                        char *err, size_t errlen)
{
    if (st) memset(st, 0, sizeof *st);
    if (!s) return mv_seterr(err, errlen, MV_EINVAL, "store is NULL");
    if (!mv_name_valid(tenant)) return mv_seterr(err, errlen, MV_EINVAL, "invalid tenant name");
    mig *m = calloc(1, sizeof *m);
    mv_store_policy *pol = malloc(sizeof *pol);
    mv_err rc = m && pol ? MV_OK : mv_seterr(err, errlen, MV_ENOMEM, "out of memory");
    mv_be *cur = NULL;
    if (rc == MV_OK) rc = resolve(s, tenant, pol, &cur, err, errlen); /* keys and retention */
    if (rc == MV_OK) {
        pthread_mutex_lock(&s->mu);
        rc = backend_for(s, from, &m->from, err, errlen);
        if (rc == MV_OK) rc = backend_for(s, to, &m->to, err, errlen);
        pthread_mutex_unlock(&s->mu);
    }
    if (rc == MV_OK && m->from == m->to)
        rc = mv_seterr(err, errlen, MV_EINVAL, "source and target are the same store");
    if (rc == MV_OK) rc = reader_init(s, &m->rd, err, errlen);
    if (rc == MV_OK) {
        char prefix[KEY_MAX];
        m->s = s;
        m->pol = pol;
        m->tenant = tenant;
        m->after = after && after[0] ? after : NULL;
        m->verify_existing = verify_existing;
        m->limit = limit;
        m->progress = progress;
        m->ud = ud;
        m->err = err;
        m->errlen = errlen;
        snprintf(prefix, sizeof prefix, "%s/", tenant);
        rc = m->from->ops->list(m->from, prefix, mig_entry, m, err, errlen);
        if (rc == MV_ECANCEL) rc = m->st.stopped ? MV_OK : m->rc ? m->rc : rc;
        reader_free(&m->rd);
        if (st) *st = m->st;
    }
    if (pol) mv_store_policy_wipe(pol);
    free(pol);
    free(m);
    return rc;
}

mv_err mv_store_sweep_def(mv_store *s, const mv_store_def *def, int max_age_s, int *removed,
                          char *err, size_t errlen)
{
    *removed = 0;
    if (!s) return mv_seterr(err, errlen, MV_EINVAL, "store is NULL");
    mv_be *be = NULL;
    pthread_mutex_lock(&s->mu);
    mv_err rc = backend_for(s, def, &be, err, errlen);
    pthread_mutex_unlock(&s->mu);
    if (rc) return rc;
    return be->ops->sweep(be, max_age_s, removed, err, errlen);
}

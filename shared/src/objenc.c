/* objenc.c - the encryption envelope of stored objects (format in mv/objenc.h).
 *
 * Why records: a message may be up to 1 GiB and is streamed, so one GCM tag at the very end
 * would mean handing out plaintext before anything was authenticated. With 64 KiB records
 * each piece is checked before it leaves the decryptor, and the final flag in the nonce makes
 * truncation at a record boundary detectable. The per-object key (HKDF over a random salt)
 * keeps nonce reuse impossible without relying on random 96-bit nonces under one tenant key
 * for billions of objects.
 *
 * The decryptor reads untrusted bytes: the header is checked field by field, a record is
 * decrypted only once the next byte (or the end) shows whether it is the last, and buffers
 * never grow past one record plus its tag. */
#include "mv/objenc.h"

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/kdf.h>
#include <openssl/rand.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#define SALT_LEN 16
#define REC_FULL (MV_OBJENC_REC + MV_OBJENC_TAG)

struct mv_objenc {
    EVP_CIPHER_CTX *ctx;
    mv_objenc_emit_fn emit;
    void *ud;
    unsigned char hdr[MV_OBJENC_HDR];
    uint64_t counter;
    size_t len;                                       /* plaintext bytes in buf */
    unsigned char buf[MV_OBJENC_REC + MV_OBJENC_TAG]; /* a record's plaintext */
    unsigned char out[MV_OBJENC_REC + MV_OBJENC_TAG]; /* its ciphertext and tag */
    unsigned char key[32];
};

struct mv_objdec {
    EVP_CIPHER_CTX *ctx;
    mv_objenc_emit_fn emit;
    void *ud;
    mv_objdec_key_fn key_fn;
    void *key_ud;
    char tenant[64];
    unsigned char hdr[MV_OBJENC_HDR];
    size_t hdrlen;
    uint32_t version;
    uint64_t counter;
    size_t len;                  /* stored bytes in buf */
    unsigned char buf[REC_FULL]; /* one record and its tag */
    unsigned char out[REC_FULL]; /* its plaintext */
    unsigned char key[32];
    int keyed;
};

static uint32_t be32(const unsigned char *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

int mv_objenc_is_envelope(const void *data, size_t len)
{
    return len >= 4 && memcmp(data, MV_OBJENC_MAGIC, 4) == 0;
}

/* The HKDF implementation, fetched once: a fetch per object would search the provider's
 * algorithm store under its lock every time. */
static EVP_KDF *hkdf;
static pthread_once_t hkdf_once = PTHREAD_ONCE_INIT;

static void hkdf_fetch(void)
{
    hkdf = EVP_KDF_fetch(NULL, "HKDF", NULL);
}

/* HKDF-SHA256(ikm = data key, salt, info = "mailvault object v1 " tenant) -> out. */
static mv_err derive(const unsigned char dk[32], const unsigned char *salt, const char *tenant,
                     unsigned char out[32], char *err, size_t errlen)
{
    char info[96];
    int n = snprintf(info, sizeof info, "mailvault object v1 %s", tenant);
    pthread_once(&hkdf_once, hkdf_fetch);
    EVP_KDF_CTX *kc = hkdf ? EVP_KDF_CTX_new(hkdf) : NULL;
    mv_err rc = MV_OK;
    OSSL_PARAM ps[] = {
        OSSL_PARAM_construct_utf8_string(OSSL_KDF_PARAM_DIGEST, (char *)"SHA256", 0),
        OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_KEY, (void *)dk, 32),
        OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_SALT, (void *)salt, SALT_LEN),
        OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_INFO, info, (size_t)n),
        OSSL_PARAM_construct_end(),
    };
    if (!kc || EVP_KDF_derive(kc, out, 32, ps) != 1)
        rc = mv_seterr(err, errlen, MV_ERR, "object key derivation (HKDF) failed");
    EVP_KDF_CTX_free(kc);
    return rc;
}

static void nonce_of(uint64_t counter, int final, unsigned char nonce[12])
{
    memset(nonce, 0, 12);
    for (int i = 0; i < 8; i++)
        nonce[3 + i] = (unsigned char)(counter >> (56 - 8 * i));
    nonce[11] = final ? 1 : 0;
}

static mv_err gcm_init(EVP_CIPHER_CTX **ctx, int enc, const unsigned char key[32], char *err,
                       size_t errlen)
{
    *ctx = EVP_CIPHER_CTX_new();
    if (!*ctx || EVP_CipherInit_ex(*ctx, EVP_aes_256_gcm(), NULL, NULL, NULL, enc) != 1 ||
        EVP_CIPHER_CTX_ctrl(*ctx, EVP_CTRL_GCM_SET_IVLEN, 12, NULL) != 1 ||
        EVP_CipherInit_ex(*ctx, NULL, NULL, key, NULL, enc) != 1)
        return mv_seterr(err, errlen, MV_ERR, "AES-256-GCM set-up failed");
    return MV_OK;
}

/* ---- encryptor ---------------------------------------------------------------------------- */

mv_err mv_objenc_begin(const unsigned char key[32], uint32_t version, const char *tenant,
                       mv_objenc_emit_fn emit, void *ud, mv_objenc **out, char *err, size_t errlen)
{
    *out = NULL;
    mv_objenc *e = calloc(1, sizeof *e);
    if (!e) return mv_seterr(err, errlen, MV_ENOMEM, "out of memory");
    e->emit = emit;
    e->ud = ud;
    memcpy(e->hdr, MV_OBJENC_MAGIC, 4);
    for (int i = 0; i < 4; i++)
        e->hdr[4 + i] = (unsigned char)(version >> (24 - 8 * i));
    mv_err rc = MV_OK;
    if (RAND_bytes(e->hdr + 8, SALT_LEN) != 1) {
        rc = mv_seterr(err, errlen, MV_ERR, "no random bytes for an object salt");
        goto fail;
    }
    if ((rc = derive(key, e->hdr + 8, tenant, e->key, err, errlen)) != MV_OK) goto fail;
    if ((rc = gcm_init(&e->ctx, 1, e->key, err, errlen)) != MV_OK) goto fail;
    if (emit(ud, e->hdr, MV_OBJENC_HDR) != 0) {
        rc = MV_ECANCEL; /* the emitter set err */
        goto fail;
    }
    *out = e;
    return MV_OK;
fail:
    mv_objenc_free(e);
    return rc;
}

static mv_err enc_record(mv_objenc *e, int final, char *err, size_t errlen)
{
    unsigned char nonce[12];
    int n = 0, m = 0;
    nonce_of(e->counter, final, nonce);
    if (EVP_EncryptInit_ex(e->ctx, NULL, NULL, NULL, nonce) != 1 ||
        EVP_EncryptUpdate(e->ctx, NULL, &n, e->hdr, MV_OBJENC_HDR) != 1 ||
        (e->len > 0 && EVP_EncryptUpdate(e->ctx, e->out, &n, e->buf, (int)e->len) != 1) ||
        EVP_EncryptFinal_ex(e->ctx, e->out + e->len, &m) != 1 ||
        EVP_CIPHER_CTX_ctrl(e->ctx, EVP_CTRL_GCM_GET_TAG, MV_OBJENC_TAG, e->out + e->len) != 1)
        return mv_seterr(err, errlen, MV_ERR, "AES-256-GCM encryption failed");
    e->counter++;
    size_t total = e->len + MV_OBJENC_TAG;
    e->len = 0;
    if (e->emit(e->ud, e->out, total) != 0) return MV_ECANCEL; /* the emitter set err */
    return MV_OK;
}

mv_err mv_objenc_update(mv_objenc *e, const void *data, size_t len, char *err, size_t errlen)
{
    const unsigned char *p = data;
    while (len > 0) {
        if (e->len == MV_OBJENC_REC) {
            /* more data follows, so the full record is not the last */
            mv_err rc = enc_record(e, 0, err, errlen);
            if (rc) return rc;
        }
        size_t take = MV_OBJENC_REC - e->len;
        if (take > len) take = len;
        memcpy(e->buf + e->len, p, take);
        e->len += take;
        p += take;
        len -= take;
    }
    return MV_OK;
}

mv_err mv_objenc_final(mv_objenc *e, char *err, size_t errlen)
{
    return enc_record(e, 1, err, errlen);
}

void mv_objenc_free(mv_objenc *e)
{
    if (!e) return;
    EVP_CIPHER_CTX_free(e->ctx);
    OPENSSL_cleanse(e, sizeof *e);
    free(e);
}

/* ---- decryptor ---------------------------------------------------------------------------- */

mv_err mv_objdec_begin(const char *tenant, mv_objdec_key_fn key_fn, void *key_ud,
                       mv_objenc_emit_fn emit, void *ud, mv_objdec **out, char *err, size_t errlen)
{
    *out = NULL;
    mv_objdec *d = calloc(1, sizeof *d);
    if (!d) return mv_seterr(err, errlen, MV_ENOMEM, "out of memory");
    d->emit = emit;
    d->ud = ud;
    d->key_fn = key_fn;
    d->key_ud = key_ud;
    snprintf(d->tenant, sizeof d->tenant, "%s", tenant);
    *out = d;
    return MV_OK;
}

static mv_err dec_header(mv_objdec *d, char *err, size_t errlen)
{
    if (memcmp(d->hdr, MV_OBJENC_MAGIC, 4) != 0)
        return mv_seterr(err, errlen, MV_ECORRUPT, "not an encrypted object (bad magic)");
    d->version = be32(d->hdr + 4);
    unsigned char dk[32];
    mv_err rc = d->key_fn ? d->key_fn(d->key_ud, d->version, dk) : MV_ENOTFOUND;
    if (rc == MV_ENOTFOUND)
        return mv_seterr(err, errlen, MV_ENOTFOUND,
                         "encrypted with key version %u, which tenant %s does not have",
                         (unsigned)d->version, d->tenant);
    if (rc) return mv_seterr(err, errlen, rc, "tenant key version %u unavailable", d->version);
    rc = derive(dk, d->hdr + 8, d->tenant, d->key, err, errlen);
    OPENSSL_cleanse(dk, sizeof dk);
    if (rc) return rc;
    if ((rc = gcm_init(&d->ctx, 0, d->key, err, errlen)) != MV_OK) return rc;
    d->keyed = 1;
    return MV_OK;
}

/* Decrypt the n stored bytes in buf as record counter (final or not) and emit them. */
static mv_err dec_record(mv_objdec *d, size_t n, int final, char *err, size_t errlen)
{
    if (n < MV_OBJENC_TAG)
        return mv_seterr(err, errlen, MV_ECORRUPT, "encrypted object is truncated");
    unsigned char nonce[12];
    int outl = 0, m = 0;
    size_t ct = n - MV_OBJENC_TAG;
    nonce_of(d->counter, final, nonce);
    if (EVP_DecryptInit_ex(d->ctx, NULL, NULL, NULL, nonce) != 1 ||
        EVP_DecryptUpdate(d->ctx, NULL, &outl, d->hdr, MV_OBJENC_HDR) != 1 ||
        (ct > 0 && EVP_DecryptUpdate(d->ctx, d->out, &outl, d->buf, (int)ct) != 1) ||
        EVP_CIPHER_CTX_ctrl(d->ctx, EVP_CTRL_GCM_SET_TAG, MV_OBJENC_TAG, d->buf + ct) != 1 ||
        EVP_DecryptFinal_ex(d->ctx, d->out + ct, &m) != 1) {
        OPENSSL_cleanse(d->out, ct);
        return mv_seterr(err, errlen, MV_ECORRUPT,
                         "encrypted object fails authentication (record %llu): damaged, "
                         "truncated or not this tenant's",
                         (unsigned long long)d->counter);
    }
    d->counter++;
    if (ct > 0 && d->emit(d->ud, d->out, ct) != 0) return MV_ECANCEL; /* the emitter set err */
    return MV_OK;
}

mv_err mv_objdec_update(mv_objdec *d, const void *data, size_t len, char *err, size_t errlen)
{
    const unsigned char *p = data;
    mv_err rc;
    while (len > 0 && d->hdrlen < MV_OBJENC_HDR) {
        size_t take = MV_OBJENC_HDR - d->hdrlen;
        if (take > len) take = len;
        memcpy(d->hdr + d->hdrlen, p, take);
        d->hdrlen += take;
        p += take;
        len -= take;
        if (d->hdrlen == MV_OBJENC_HDR && (rc = dec_header(d, err, errlen)) != MV_OK) return rc;
    }
    while (len > 0) {
        if (d->len == REC_FULL) {
            /* another byte follows, so this full record is not the last */
            if ((rc = dec_record(d, REC_FULL, 0, err, errlen)) != MV_OK) return rc;
            d->len = 0;
        }
        size_t take = REC_FULL - d->len;
        if (take > len) take = len;
        memcpy(d->buf + d->len, p, take);
        d->len += take;
        p += take;
        len -= take;
    }
    return MV_OK;
}

mv_err mv_objdec_final(mv_objdec *d, char *err, size_t errlen)
{
    if (d->hdrlen < MV_OBJENC_HDR || !d->keyed)
        return mv_seterr(err, errlen, MV_ECORRUPT, "encrypted object is truncated (header)");
    mv_err rc = dec_record(d, d->len, 1, err, errlen);
    d->len = 0;
    return rc;
}

uint32_t mv_objdec_version(const mv_objdec *d)
{
    return d->version;
}

void mv_objdec_free(mv_objdec *d)
{
    if (!d) return;
    EVP_CIPHER_CTX_free(d->ctx);
    OPENSSL_cleanse(d, sizeof *d);
    free(d);
}

void mv_objenc_name(const unsigned char naming[32], const unsigned char sha[32], char out[65])
{
    unsigned char mac[EVP_MAX_MD_SIZE];
    unsigned int maclen = 0;
    HMAC(EVP_sha256(), naming, 32, sha, 32, mac, &maclen);
    mv_hex(mac, 32, out);
}

/* sign.c - ECDSA P-256 signatures over export manifests (OpenSSL EVP). See sign.h. */
#include "mv/sign.h"

#include <stdlib.h>
#include <string.h>

#include <openssl/bio.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

static char *bio_text(BIO *b)
{
    char *p = NULL;
    long n = BIO_get_mem_data(b, &p);
    if (n <= 0) return NULL;
    char *out = malloc((size_t)n + 1);
    if (!out) return NULL;
    memcpy(out, p, (size_t)n);
    out[n] = '\0';
    return out;
}

static char *pub_pem_of(EVP_PKEY *k)
{
    BIO *b = BIO_new(BIO_s_mem());
    char *out = b && PEM_write_bio_PUBKEY(b, k) == 1 ? bio_text(b) : NULL;
    BIO_free(b);
    return out;
}

static EVP_PKEY *read_priv(const char *pem)
{
    BIO *b = BIO_new_mem_buf(pem, -1);
    EVP_PKEY *k = b ? PEM_read_bio_PrivateKey(b, NULL, NULL, NULL) : NULL;
    BIO_free(b);
    return k;
}

static EVP_PKEY *read_pub(const char *pem)
{
    BIO *b = BIO_new_mem_buf(pem, -1);
    EVP_PKEY *k = b ? PEM_read_bio_PUBKEY(b, NULL, NULL, NULL) : NULL;
    BIO_free(b);
    return k;
}

mv_err mv_sign_keygen(char **priv_pem, char **pub_pem, char *err, size_t errlen)
{
    *priv_pem = *pub_pem = NULL;
    EVP_PKEY *k = EVP_EC_gen("P-256");
    BIO *b = BIO_new(BIO_s_mem());
    mv_err e = MV_OK;
    if (!k || !b || PEM_write_bio_PrivateKey(b, k, NULL, NULL, 0, NULL, NULL) != 1 ||
        !(*priv_pem = bio_text(b)) || !(*pub_pem = pub_pem_of(k))) {
        e = mv_seterr(err, errlen, MV_ERR, "signing key: generation failed");
        mv_free_secret(*priv_pem);
        free(*pub_pem);
        *priv_pem = *pub_pem = NULL;
    }
    if (b) {
        char *p = NULL;
        long n = BIO_get_mem_data(b, &p);
        if (n > 0) OPENSSL_cleanse(p, (size_t)n);
    }
    BIO_free(b);
    EVP_PKEY_free(k);
    return e;
}

mv_err mv_sign_pubkey(const char *priv_pem, char **pub_pem, char *err, size_t errlen)
{
    EVP_PKEY *k = read_priv(priv_pem);
    *pub_pem = k ? pub_pem_of(k) : NULL;
    EVP_PKEY_free(k);
    return *pub_pem ? MV_OK
                    : mv_seterr(err, errlen, MV_EINVAL, "signing key: not a PEM private key");
}

mv_err mv_sign_data(const char *priv_pem, const void *data, size_t len, unsigned char **sig,
                    size_t *siglen, char *err, size_t errlen)
{
    *sig = NULL;
    *siglen = 0;
    EVP_PKEY *k = read_priv(priv_pem);
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    mv_err e = MV_OK;
    size_t n = 0;
    if (!k || !md) {
        e = mv_seterr(err, errlen, MV_EINVAL, "signing key: not a PEM private key");
    } else if (EVP_DigestSignInit(md, NULL, EVP_sha256(), NULL, k) != 1 ||
               EVP_DigestSign(md, NULL, &n, data, len) != 1 || !(*sig = malloc(n)) ||
               EVP_DigestSign(md, *sig, &n, data, len) != 1) {
        free(*sig);
        *sig = NULL;
        e = mv_seterr(err, errlen, MV_ERR, "signing failed");
    } else {
        *siglen = n;
    }
    EVP_MD_CTX_free(md);
    EVP_PKEY_free(k);
    return e;
}

int mv_sign_verify(const char *pub_pem, const void *data, size_t len, const unsigned char *sig,
                   size_t siglen)
{
    EVP_PKEY *k = read_pub(pub_pem);
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    int ok = k && md && EVP_DigestVerifyInit(md, NULL, EVP_sha256(), NULL, k) == 1 &&
             EVP_DigestVerify(md, sig, siglen, data, len) == 1;
    EVP_MD_CTX_free(md);
    EVP_PKEY_free(k);
    return ok;
}

mv_err mv_sign_fingerprint(const char *pub_pem, char out[65], char *err, size_t errlen)
{
    EVP_PKEY *k = read_pub(pub_pem);
    unsigned char *der = NULL, md[32];
    unsigned int mdlen = 0;
    int n = k ? i2d_PUBKEY(k, &der) : -1;
    mv_err e = MV_OK;
    if (n <= 0 || EVP_Digest(der, (size_t)n, md, &mdlen, EVP_sha256(), NULL) != 1 || mdlen != 32)
        e = mv_seterr(err, errlen, MV_EINVAL, "not a PEM public key");
    else
        mv_hex(md, 32, out);
    OPENSSL_free(der);
    EVP_PKEY_free(k);
    return e;
}

/* sign.h - signatures over export manifests (ECDSA P-256 with SHA-256), verifiable with the
 * stock openssl command line:
 *
 *   openssl dgst -sha256 -verify signing-key.pub.pem -signature MANIFEST.sig MANIFEST
 *
 * Keys are PEM (PKCS#8 private key, SubjectPublicKeyInfo public key); signatures are DER, as
 * openssl dgst writes and reads them. The private key is a secret (sealed in the catalog like
 * passwords); the public key is stored in the export profile and written next to the export. */
#ifndef MV_SIGN_H
#define MV_SIGN_H

#include "mv/common.h"
#include <stddef.h>

/* A new key pair; *priv_pem and *pub_pem malloc'd (wipe and free the private one). */
mv_err mv_sign_keygen(char **priv_pem, char **pub_pem, char *err, size_t errlen);
/* The public key of a private key. */
mv_err mv_sign_pubkey(const char *priv_pem, char **pub_pem, char *err, size_t errlen);
/* DER signature (malloc'd) of SHA-256(data) with the private key. */
mv_err mv_sign_data(const char *priv_pem, const void *data, size_t len, unsigned char **sig,
                    size_t *siglen, char *err, size_t errlen);
/* 1 if sig is a valid signature of data under the public key, 0 if not. */
int mv_sign_verify(const char *pub_pem, const void *data, size_t len, const unsigned char *sig,
                   size_t siglen);
/* SHA-256 fingerprint of the public key (hex of its DER), for operators to compare. */
mv_err mv_sign_fingerprint(const char *pub_pem, char out[65], char *err, size_t errlen);

#endif

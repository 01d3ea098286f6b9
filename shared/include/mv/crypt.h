/* crypt.h - secrets at rest: AES-256-GCM with the cluster master key.
 *
 * Sealed blob format (docs/formats.md): "MV1" | 12-byte nonce | ciphertext | 16-byte tag.
 * The associated data binds a blob to its place (e.g. "cred:tenant:profile:mailbox") so a
 * blob copied to another key fails to open. */
#ifndef MV_CRYPT_H
#define MV_CRYPT_H

#include "mv/common.h"

#define MV_KEY_LEN 32

/* Load the master key file: 64 hex chars (whitespace around ignored) or 32 raw bytes.
 * Refuses a file readable by group/other (mode & 077) with a clear message. */
mv_err mv_crypt_load_key(const char *path, unsigned char key[MV_KEY_LEN], char *err, size_t errlen);
/* Generate a new key file (mode 0600, hex), failing if it exists. */
mv_err mv_crypt_generate_key_file(const char *path, char *err, size_t errlen);

/* Seal: *out is malloc'd (caller frees), *outlen = 3 + 12 + len + 16. */
mv_err mv_crypt_seal(const unsigned char key[MV_KEY_LEN], const char *ad, const void *plain,
                     size_t len, unsigned char **out, size_t *outlen, char *err, size_t errlen);
/* Open: *out is malloc'd with a NUL after the plaintext (so text secrets are C strings);
 * MV_ECORRUPT if the tag or format is wrong. Caller should mv_crypt_wipe + free. */
mv_err mv_crypt_open(const unsigned char key[MV_KEY_LEN], const char *ad, const void *blob,
                     size_t bloblen, unsigned char **out, size_t *outlen, char *err, size_t errlen);
/* Zero memory that held a secret (not optimised away). */
void mv_crypt_wipe(void *p, size_t len);

#endif

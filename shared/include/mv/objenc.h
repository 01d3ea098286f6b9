/* objenc.h - the encryption envelope of stored objects (AES-256-GCM in 64 KiB records).
 *
 * Format (docs/formats.md#encrypted-objects):
 *   header  "MVE1" | key version (uint32, big endian) | salt (16 random bytes)     24 bytes
 *   records ciphertext of up to 64 KiB of plaintext | 16-byte GCM tag, repeated
 * The object key is HKDF-SHA256(tenant data key, salt, "mailvault object v1 " + tenant), so
 * every object has its own key and the nonces can be a counter: record i uses the 12-byte
 * nonce 0,0,0 | i (uint64, big endian) | final flag (1 on the last record, else 0). Every
 * record authenticates the header as associated data. Only the last record is shorter than a
 * full one (it may be empty); a record stream that is cut short, extended, reordered or
 * carries a flipped bit fails its tag. Decryption hands out a record's plaintext only after
 * its tag checked.
 *
 * An encryptor or decryptor is used by one thread. */
#ifndef MV_OBJENC_H
#define MV_OBJENC_H

#include "mv/common.h"
#include <stdint.h>

#define MV_OBJENC_MAGIC "MVE1"
#define MV_OBJENC_HDR 24
#define MV_OBJENC_REC 65536
#define MV_OBJENC_TAG 16

/* Receives output; non-zero stops the call, which then returns MV_ECANCEL and leaves err as
 * the emitter set it (so the emitter's own error reaches the caller unchanged). */
typedef int (*mv_objenc_emit_fn)(void *ud, const void *data, size_t len);

typedef struct mv_objenc mv_objenc;
/* Start an object: emits the header. key: the tenant's data key of that version. */
mv_err mv_objenc_begin(const unsigned char key[32], uint32_t version, const char *tenant,
                       mv_objenc_emit_fn emit, void *ud, mv_objenc **out, char *err, size_t errlen);
mv_err mv_objenc_update(mv_objenc *e, const void *data, size_t len, char *err, size_t errlen);
/* Emits the last record. Does not free. */
mv_err mv_objenc_final(mv_objenc *e, char *err, size_t errlen);
void mv_objenc_free(mv_objenc *e);

/* Finds the data key of a version; MV_ENOTFOUND if this tenant has no such version. */
typedef mv_err (*mv_objdec_key_fn)(void *ud, uint32_t version, unsigned char key[32]);

typedef struct mv_objdec mv_objdec;
mv_err mv_objdec_begin(const char *tenant, mv_objdec_key_fn key_fn, void *key_ud,
                       mv_objenc_emit_fn emit, void *ud, mv_objdec **out, char *err, size_t errlen);
/* Feed stored bytes; authenticated plaintext goes to emit. MV_ECORRUPT on a bad header or
 * tag, MV_ENOTFOUND if the key version is unknown, MV_ECANCEL if emit stopped. */
mv_err mv_objdec_update(mv_objdec *d, const void *data, size_t len, char *err, size_t errlen);
/* The end of the stored bytes: checks and emits the last record. */
mv_err mv_objdec_final(mv_objdec *d, char *err, size_t errlen);
uint32_t mv_objdec_version(const mv_objdec *d); /* once the header has been read */
void mv_objdec_free(mv_objdec *d);

/* 1 if data (at least 4 bytes) starts like an encrypted object. */
int mv_objenc_is_envelope(const void *data, size_t len);

/* Object name of an encrypted tenant's message: hex HMAC-SHA256(naming key, raw SHA-256). */
void mv_objenc_name(const unsigned char naming[32], const unsigned char sha[32], char out[65]);

#endif

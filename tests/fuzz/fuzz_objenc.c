/* fuzz_objenc.c - libFuzzer target for the encryption envelope's decryptor (mv/objenc.h).
 *
 * Stored objects come back from disks and buckets that other people can write to, so the
 * decryptor must refuse anything that is not an intact envelope of this tenant without
 * crashing, reading out of bounds or handing out a byte it has not authenticated. The first
 * input byte picks a mode:
 *   even: the rest is fed to the decryptor as stored bytes, in pieces of (byte 1) + 1;
 *   odd:  the rest is sealed and opened again, which must give it back exactly, and then the
 *         sealed form with one byte changed (position from byte 1) must be refused. */
#include "mv/objenc.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef struct out {
    unsigned char *d;
    size_t n;
} out;

static int collect(void *ud, const void *data, size_t len)
{
    out *o = ud;
    unsigned char *p = realloc(o->d, o->n + len + 1);
    if (!p) abort();
    memcpy(p + o->n, data, len);
    o->d = p;
    o->n += len;
    return 0;
}

static const unsigned char KEY[32] = {1,  2,  3,  4,  5,  6,  7,  8,  9,  10, 11,
                                      12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22,
                                      23, 24, 25, 26, 27, 28, 29, 30, 31};

static mv_err key_fn(void *ud, uint32_t version, unsigned char key[32])
{
    (void)ud;
    if (version != 1) return MV_ENOTFOUND;
    memcpy(key, KEY, 32);
    return MV_OK;
}

static mv_err open_all(const unsigned char *d, size_t n, size_t step, out *o)
{
    char err[MV_ERRLEN];
    mv_objdec *dec = NULL;
    if (mv_objdec_begin("fuzz", key_fn, NULL, collect, o, &dec, err, sizeof err)) abort();
    mv_err rc = MV_OK;
    for (size_t off = 0; off < n && rc == MV_OK; off += step)
        rc = mv_objdec_update(dec, d + off, n - off < step ? n - off : step, err, sizeof err);
    if (rc == MV_OK) rc = mv_objdec_final(dec, err, sizeof err);
    mv_objdec_free(dec);
    return rc;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 2) return 0;
    int mode = data[0] & 1;
    size_t step = (size_t)data[1] + 1;
    data += 2;
    size -= 2;
    out o = {0};
    if (mode == 0) {
        open_all(data, size, step, &o);
        free(o.d);
        return 0;
    }
    char err[MV_ERRLEN];
    out sealed = {0};
    mv_objenc *e = NULL;
    if (mv_objenc_begin(KEY, 1, "fuzz", collect, &sealed, &e, err, sizeof err) ||
        mv_objenc_update(e, data, size, err, sizeof err) || mv_objenc_final(e, err, sizeof err))
        abort();
    mv_objenc_free(e);
    if (open_all(sealed.d, sealed.n, step, &o) != MV_OK || o.n != size ||
        (size && memcmp(o.d, data, size) != 0))
        abort();
    free(o.d);
    o = (out){0};
    size_t pos = (step * 977) % sealed.n;
    sealed.d[pos] ^= 0x80;
    if (open_all(sealed.d, sealed.n, step, &o) == MV_OK) abort();
    free(o.d);
    free(sealed.d);
    return 0;
}

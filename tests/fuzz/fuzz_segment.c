/* fuzz_segment.c - libFuzzer target for mv_segment_decode.
 *
 * Segments are read back from disk and may be damaged, so the decoder must reject anything
 * without crashing, leaking or allocating without bound. The first input byte picks a mode:
 *   even: the rest is passed to mv_segment_decode as is (exercises the zstd layer);
 *   odd:  the rest is treated as msgpack and wrapped in a valid zstd frame first, so the
 *         fuzzer reaches the msgpack pre-check and schema checks directly.
 * A successful decode is re-encoded and decoded again; both results must agree. */
#include "mv/index.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <zstd.h>

static void roundtrip(const mv_segment *s)
{
    void *buf = NULL;
    size_t len = 0;
    char err[MV_ERRLEN];
    mv_segment d;
    if (mv_segment_encode(s, &buf, &len, err, sizeof err) != MV_OK) abort();
    if (mv_segment_decode(buf, len, &d, err, sizeof err) != MV_OK) abort();
    if (d.n != s->n || d.uidvalidity != s->uidvalidity || d.first != s->first ||
        d.last != s->last || strcmp(d.folder, s->folder) != 0)
        abort();
    for (size_t i = 0; i < d.n; i++)
        if (strcmp(d.recs[i].hash, s->recs[i].hash) != 0 || d.recs[i].uid != s->recs[i].uid ||
            strcmp(d.recs[i].subject, s->recs[i].subject) != 0)
            abort();
    mv_segment_free(&d);
    free(buf);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1) return 0;
    const uint8_t *in = data + 1;
    size_t inlen = size - 1;
    void *z = NULL;
    if (data[0] & 1) {
        size_t cap = ZSTD_compressBound(inlen);
        z = malloc(cap);
        if (!z) return 0;
        size_t n = ZSTD_compress(z, cap, in, inlen, 1);
        if (ZSTD_isError(n)) {
            free(z);
            return 0;
        }
        in = z;
        inlen = n;
    }
    mv_segment s;
    char err[MV_ERRLEN];
    if (mv_segment_decode(in, inlen, &s, err, sizeof err) == MV_OK) {
        roundtrip(&s);
        mv_segment_free(&s);
    } else if (s.recs != NULL || s.n != 0) {
        abort(); /* a failed decode must leave nothing to free */
    }
    free(z);
    return 0;
}

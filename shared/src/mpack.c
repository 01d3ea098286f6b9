/* mpack.c - structural pre-check of untrusted msgpack bytes (see mpack.h).
 *
 * Design: one linear, iterative pass. `pending` counts the values still owed by all open
 * containers (plus the top-level value); since every value takes at least one byte, a header
 * that would make pending exceed the bytes left is refused at once, so no count is ever
 * trusted beyond the input size. Each header byte is decoded into (size of its length field,
 * fixed payload bytes, what the length counts). Nesting depth, when limited, is tracked with a
 * fixed array of per-container remaining-element counters (at most MV_MPACK_MAX_DEPTH), so deep
 * input costs neither recursion nor allocation. */
#include "mv/mpack.h"

#include <stdint.h>

enum { K_SCALAR, K_RAW, K_ARRAY, K_MAP }; /* K_RAW: the length counts payload bytes */

typedef struct head {
    unsigned char lenbytes; /* big-endian length/count field after the type byte */
    unsigned char fixed;    /* payload bytes besides a K_RAW length (ext type, numbers) */
    unsigned char kind;
} head;

/* 0xc4..0xdf: everything between fixstr and negative fixint */
static const head wide[0xdf - 0xc4 + 1] = {
    [0xc4 - 0xc4] = {1, 0, K_RAW},     [0xc5 - 0xc4] = {2, 0, K_RAW},    /* bin 8/16 */
    [0xc6 - 0xc4] = {4, 0, K_RAW},     [0xc7 - 0xc4] = {1, 1, K_RAW},    /* bin 32, ext 8 */
    [0xc8 - 0xc4] = {2, 1, K_RAW},     [0xc9 - 0xc4] = {4, 1, K_RAW},    /* ext 16/32 */
    [0xca - 0xc4] = {0, 4, K_SCALAR},  [0xcb - 0xc4] = {0, 8, K_SCALAR}, /* float 32/64 */
    [0xcc - 0xc4] = {0, 1, K_SCALAR},  [0xcd - 0xc4] = {0, 2, K_SCALAR}, /* uint 8/16 */
    [0xce - 0xc4] = {0, 4, K_SCALAR},  [0xcf - 0xc4] = {0, 8, K_SCALAR}, /* uint 32/64 */
    [0xd0 - 0xc4] = {0, 1, K_SCALAR},  [0xd1 - 0xc4] = {0, 2, K_SCALAR}, /* int 8/16 */
    [0xd2 - 0xc4] = {0, 4, K_SCALAR},  [0xd3 - 0xc4] = {0, 8, K_SCALAR}, /* int 32/64 */
    [0xd4 - 0xc4] = {0, 2, K_SCALAR},  [0xd5 - 0xc4] = {0, 3, K_SCALAR}, /* fixext 1/2 */
    [0xd6 - 0xc4] = {0, 5, K_SCALAR},  [0xd7 - 0xc4] = {0, 9, K_SCALAR}, /* fixext 4/8 */
    [0xd8 - 0xc4] = {0, 17, K_SCALAR},                                   /* fixext 16 */
    [0xd9 - 0xc4] = {1, 0, K_RAW},     [0xda - 0xc4] = {2, 0, K_RAW},    /* str 8/16 */
    [0xdb - 0xc4] = {4, 0, K_RAW},                                       /* str 32 */
    [0xdc - 0xc4] = {2, 0, K_ARRAY},   [0xdd - 0xc4] = {4, 0, K_ARRAY},  /* array 16/32 */
    [0xde - 0xc4] = {2, 0, K_MAP},     [0xdf - 0xc4] = {4, 0, K_MAP},    /* map 16/32 */
};

static uint64_t be(const unsigned char *p, size_t n)
{
    uint64_t v = 0;
    for (size_t i = 0; i < n; i++)
        v = (v << 8) | p[i];
    return v;
}

static mv_err truncated(char *err, size_t errlen, size_t at)
{
    return mv_seterr(err, errlen, MV_EINVAL, "truncated msgpack at offset %zu", at);
}

mv_err mv_mpack_check(const void *buf, size_t len, size_t max_depth, size_t max_items,
                      int allow_trailing, size_t *consumed, char *err, size_t errlen)
{
    const unsigned char *p = buf;
    uint64_t open[MV_MPACK_MAX_DEPTH]; /* elements still owed by each open non-empty container */
    size_t top = 0, pos = 0;
    uint64_t pending = 1; /* values still to read */
    if (consumed) *consumed = 0;
    if (!p && len > 0) return mv_seterr(err, errlen, MV_EINVAL, "mv_mpack_check: NULL buffer");
    if (max_depth > MV_MPACK_MAX_DEPTH)
        return mv_seterr(err, errlen, MV_EINVAL, "mv_mpack_check: max_depth %zu above %d",
                         max_depth, MV_MPACK_MAX_DEPTH);
    while (pending > 0) {
        if (pos >= len) return truncated(err, errlen, pos);
        size_t at = pos;
        unsigned b = p[pos++];
        size_t left = len - pos;
        head h = {0, 0, K_SCALAR};
        uint64_t n = 0; /* length (K_RAW) or element count (containers) */
        if (b <= 0x7f || b >= 0xe0 || b == 0xc0 || b == 0xc2 || b == 0xc3) {
            /* fixint, nil, bool */
        } else if (b <= 0x8f) {
            h.kind = K_MAP, n = b & 0x0f;
        } else if (b <= 0x9f) {
            h.kind = K_ARRAY, n = b & 0x0f;
        } else if (b <= 0xbf) {
            h.kind = K_RAW, n = b & 0x1f;
        } else if (b == 0xc1) {
            return mv_seterr(err, errlen, MV_EINVAL, "bad msgpack byte 0xc1 at offset %zu", at);
        } else {
            h = wide[b - 0xc4];
        }
        if (h.lenbytes) {
            if (h.lenbytes > left) return truncated(err, errlen, at);
            n = be(p + pos, h.lenbytes);
            pos += h.lenbytes;
            left -= h.lenbytes;
        }
        uint64_t body = h.fixed + (h.kind == K_RAW ? n : 0);
        if (body > left) return truncated(err, errlen, at);
        pos += (size_t)body;
        left -= (size_t)body;
        pending--;
        if (top > 0) open[top - 1]--; /* this value was an element of the innermost container */
        if (h.kind == K_ARRAY || h.kind == K_MAP) {
            uint64_t items = h.kind == K_MAP ? 2 * n : n;
            if (max_depth && top >= max_depth)
                return mv_seterr(err, errlen, MV_EINVAL,
                                 "msgpack nesting deeper than %zu at offset %zu", max_depth, at);
            if (max_items && n > max_items)
                return mv_seterr(err, errlen, MV_EINVAL,
                                 "msgpack container of %llu elements exceeds the limit of %zu",
                                 (unsigned long long)n, max_items);
            if (pending + items > left)
                return mv_seterr(err, errlen, MV_EINVAL,
                                 "msgpack container of %llu elements does not fit",
                                 (unsigned long long)n);
            pending += items;
            if (max_depth && items > 0) open[top++] = items;
        }
        while (top > 0 && open[top - 1] == 0)
            top--;
    }
    if (!allow_trailing && pos != len)
        return mv_seterr(err, errlen, MV_EINVAL,
                         "trailing bytes after msgpack value (%zu of %zu bytes used)", pos, len);
    if (consumed) *consumed = pos;
    return MV_OK;
}

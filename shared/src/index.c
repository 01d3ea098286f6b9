/* index.c - index segments (msgpack in a zstd frame) and the streaming header scanner.
 *
 * Segments are written by us but read back from disk, where they may be truncated or damaged,
 * so decoding trusts nothing:
 *  - zstd: the declared content size is only a hint (rejected if above the cap, used as the
 *    first buffer size otherwise); output grows by doubling up to 256 MiB; the decoder window is
 *    limited; the frame must end exactly at the end of the input.
 *  - msgpack: before msgpack-c sees the bytes, the shared pre-pass mv_mpack_check (mpack.c)
 *    walks the encoding and rejects any container that claims more elements than there are
 *    bytes left (or more than MAX_RECS), and nesting deeper than msgpack-c's own stack.
 *    msgpack-c allocates a container's element array up front from the claimed count, so
 *    without this a 5-byte input could ask for ~100 GB.
 *  - schema: every field's type is checked, strings must fit their struct field (else
 *    MV_ECORRUPT naming the field), unknown keys are ignored, records are appended as they
 *    validate (memory follows real data, not a claimed count).
 *
 * The header scanner is a byte-level state machine over the header block only. Its state
 * (partial field name, pending CR, the field being captured) survives between feeds, so any
 * split of the input gives the same result. After the blank line (or 256 KiB) feed returns at
 * once; the body is never looked at. */
#include "mv/index.h"
#include "mv/mpack.h"

#include <msgpack.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zstd.h>

#define MAX_RECS 1000000
#define SEG_RAW_MAX ((size_t)256 << 20) /* decompressed segment bound */
#define SEG_WINDOWLOG_MAX 24            /* encoder uses level 3: windowLog <= 21 */
#define SEG_LEVEL 3
#define HDR_SCAN_MAX (256 * 1024)

/* ---- segment container ------------------------------------------------------------------ */

void mv_segment_init(mv_segment *s, const char *folder, uint32_t uidvalidity, uint32_t first,
                     uint32_t last)
{
    memset(s, 0, sizeof *s);
    snprintf(s->folder, sizeof s->folder, "%s", folder ? folder : "");
    s->uidvalidity = uidvalidity;
    s->first = first;
    s->last = last;
}

mv_err mv_segment_add(mv_segment *s, const mv_index_rec *r)
{
    if (s->n >= MAX_RECS) return MV_ETOOBIG;
    if (s->n == s->cap) {
        size_t cap = s->cap ? s->cap * 2 : 16;
        if (cap > MAX_RECS) cap = MAX_RECS;
        mv_index_rec *nr = realloc(s->recs, cap * sizeof *nr);
        if (!nr) return MV_ENOMEM;
        s->recs = nr;
        s->cap = cap;
    }
    s->recs[s->n++] = *r;
    return MV_OK;
}

void mv_segment_free(mv_segment *s)
{
    if (!s) return;
    free(s->recs);
    s->recs = NULL;
    s->n = s->cap = 0;
}

static void folder_hash16(const char *folder, char hex[65])
{
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;
    if (!folder) folder = "";
    if (EVP_Digest(folder, strlen(folder), md, &mdlen, EVP_sha256(), NULL) != 1 || mdlen != 32)
        memset(md, 0, 32); /* only on a broken OpenSSL; the name stays well-formed */
    mv_hex(md, 32, hex);
}

void mv_segment_name(const char *folder, uint32_t uidvalidity, uint32_t first, uint32_t last,
                     char *out, size_t outlen)
{
    char hex[65];
    folder_hash16(folder, hex);
    snprintf(out, outlen, "%.16s-%u-%u-%u.seg", hex, (unsigned)uidvalidity, (unsigned)first,
             (unsigned)last);
}

void mv_segment_name_seq(const char *folder, uint32_t generation, uint64_t seq, char *out,
                         size_t outlen)
{
    char hex[65];
    folder_hash16(folder, hex);
    snprintf(out, outlen, "%.16s-%u-%012llu.seg", hex, (unsigned)generation,
             (unsigned long long)seq);
}

/* ---- encode ------------------------------------------------------------------------------- */

static int pack_str(msgpack_packer *pk, const char *key, const char *val, size_t cap)
{
    size_t kl = strlen(key), vl = strnlen(val, cap);
    return msgpack_pack_str(pk, kl) | msgpack_pack_str_body(pk, key, kl) |
           msgpack_pack_str(pk, vl) | msgpack_pack_str_body(pk, val, vl);
}

static int pack_key(msgpack_packer *pk, const char *key)
{
    size_t kl = strlen(key);
    return msgpack_pack_str(pk, kl) | msgpack_pack_str_body(pk, key, kl);
}

#define PACK_STR(pk, key, field) pack_str(pk, key, field, sizeof(field))

mv_err mv_segment_encode(const mv_segment *s, void **out, size_t *outlen, char *err, size_t errlen)
{
    *out = NULL;
    *outlen = 0;
    if (s->n > MAX_RECS)
        return mv_seterr(err, errlen, MV_ETOOBIG, "segment has %zu records (max %d)", s->n,
                         MAX_RECS);
    msgpack_sbuffer sb;
    msgpack_packer pk;
    ZSTD_CCtx *cctx = NULL;
    void *dst = NULL;
    mv_err rc = MV_OK;
    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);

    int bad = msgpack_pack_map(&pk, 6);
    bad |= pack_key(&pk, "v") | msgpack_pack_uint32(&pk, 1);
    bad |= PACK_STR(&pk, "folder", s->folder);
    bad |= pack_key(&pk, "uidvalidity") | msgpack_pack_uint32(&pk, s->uidvalidity);
    bad |= pack_key(&pk, "first") | msgpack_pack_uint32(&pk, s->first);
    bad |= pack_key(&pk, "last") | msgpack_pack_uint32(&pk, s->last);
    bad |= pack_key(&pk, "recs") | msgpack_pack_array(&pk, s->n);
    for (size_t i = 0; i < s->n && !bad; i++) {
        const mv_index_rec *r = &s->recs[i];
        bad |= msgpack_pack_map(&pk, r->id[0] ? 11 : 10);
        bad |= PACK_STR(&pk, "h", r->hash);
        if (r->id[0]) bad |= PACK_STR(&pk, "id", r->id);
        bad |= pack_key(&pk, "uid") | msgpack_pack_uint32(&pk, r->uid);
        bad |= pack_key(&pk, "size") | msgpack_pack_uint64(&pk, r->size);
        bad |= pack_key(&pk, "idate") | msgpack_pack_int64(&pk, r->internaldate);
        bad |= PACK_STR(&pk, "flags", r->flags);
        bad |= PACK_STR(&pk, "from", r->from);
        bad |= PACK_STR(&pk, "to", r->to);
        bad |= PACK_STR(&pk, "subj", r->subject);
        bad |= PACK_STR(&pk, "date", r->date);
        bad |= PACK_STR(&pk, "msgid", r->msgid);
    }
    if (bad) {
        rc = mv_seterr(err, errlen, MV_ENOMEM, "segment: msgpack encoding failed");
        goto out;
    }
    size_t cap = ZSTD_compressBound(sb.size);
    cctx = ZSTD_createCCtx();
    dst = malloc(cap);
    if (!cctx || !dst) {
        rc = mv_seterr(err, errlen, MV_ENOMEM, "out of memory");
        goto out;
    }
    ZSTD_CCtx_setParameter(cctx, ZSTD_c_compressionLevel, SEG_LEVEL);
    ZSTD_CCtx_setParameter(cctx, ZSTD_c_checksumFlag, 1);
    size_t n = ZSTD_compress2(cctx, dst, cap, sb.data, sb.size);
    if (ZSTD_isError(n)) {
        rc = mv_seterr(err, errlen, MV_ERR, "segment: zstd: %s", ZSTD_getErrorName(n));
        goto out;
    }
    *out = dst;
    *outlen = n;
    dst = NULL;
out:
    free(dst);
    ZSTD_freeCCtx(cctx);
    msgpack_sbuffer_destroy(&sb);
    return rc;
}

/* ---- decode: zstd ------------------------------------------------------------------------- */

static mv_err seg_inflate(const void *buf, size_t len, unsigned char **out, size_t *outlen,
                          char *err, size_t errlen)
{
    *out = NULL;
    *outlen = 0;
    if (!buf || len == 0) return mv_seterr(err, errlen, MV_ECORRUPT, "segment: empty input");
    unsigned long long fcs = ZSTD_getFrameContentSize(buf, len);
    if (fcs == ZSTD_CONTENTSIZE_ERROR)
        return mv_seterr(err, errlen, MV_ECORRUPT, "segment: not a zstd frame");
    if (fcs != ZSTD_CONTENTSIZE_UNKNOWN && fcs > SEG_RAW_MAX)
        return mv_seterr(err, errlen, MV_ECORRUPT, "segment: declared size %llu exceeds %zu", fcs,
                         SEG_RAW_MAX);
    /* the declared size is a hint only: start there (bounded), grow if it lied */
    size_t cap = 64 * 1024;
    if (fcs != ZSTD_CONTENTSIZE_UNKNOWN) cap = fcs < (1u << 20) ? (size_t)fcs + 1 : 1u << 20;
    unsigned char *o = NULL;
    size_t olen = 0;
    mv_err rc = MV_OK;
    ZSTD_DCtx *d = ZSTD_createDCtx();
    if (!d || !(o = malloc(cap))) {
        rc = mv_seterr(err, errlen, MV_ENOMEM, "out of memory");
        goto out;
    }
    ZSTD_DCtx_setParameter(d, ZSTD_d_windowLogMax, SEG_WINDOWLOG_MAX);
    ZSTD_inBuffer in = {buf, len, 0};
    for (;;) {
        if (olen == cap) {
            if (cap >= SEG_RAW_MAX) {
                rc = mv_seterr(err, errlen, MV_ECORRUPT, "segment: decompresses beyond %zu",
                               SEG_RAW_MAX);
                goto out;
            }
            size_t ncap = cap * 2 > SEG_RAW_MAX ? SEG_RAW_MAX : cap * 2;
            unsigned char *no = realloc(o, ncap);
            if (!no) {
                rc = mv_seterr(err, errlen, MV_ENOMEM, "out of memory");
                goto out;
            }
            o = no;
            cap = ncap;
        }
        ZSTD_outBuffer ob = {o, cap, olen};
        size_t r = ZSTD_decompressStream(d, &ob, &in);
        olen = ob.pos;
        if (ZSTD_isError(r)) {
            rc = mv_seterr(err, errlen, MV_ECORRUPT, "segment: zstd: %s", ZSTD_getErrorName(r));
            goto out;
        }
        if (r == 0) break; /* frame complete */
        if (in.pos == in.size && ob.pos < ob.size) {
            rc = mv_seterr(err, errlen, MV_ECORRUPT, "segment: truncated zstd frame");
            goto out;
        }
    }
    if (in.pos != in.size) {
        rc = mv_seterr(err, errlen, MV_ECORRUPT, "segment: trailing bytes after zstd frame");
        goto out;
    }
    *out = o;
    *outlen = olen;
    o = NULL;
out:
    free(o);
    ZSTD_freeDCtx(d);
    return rc;
}

/* ---- decode: schema ----------------------------------------------------------------------- */

typedef struct fld {
    const char *name; /* field name for messages */
    long rec;         /* record index, -1 for top level */
} fld;

static mv_err fld_err(fld f, char *err, size_t errlen, const char *what)
{
    if (f.rec < 0)
        return mv_seterr(err, errlen, MV_ECORRUPT, "segment: field %s: %s", f.name, what);
    return mv_seterr(err, errlen, MV_ECORRUPT, "segment: field recs[%ld].%s: %s", f.rec, f.name,
                     what);
}

static int key_is(const msgpack_object *k, const char *name)
{
    size_t n = strlen(name);
    return k->type == MSGPACK_OBJECT_STR && k->via.str.size == n &&
           memcmp(k->via.str.ptr, name, n) == 0;
}

static mv_err get_str(const msgpack_object *o, char *dst, size_t cap, fld f, char *err,
                      size_t errlen)
{
    if (o->type != MSGPACK_OBJECT_STR) return fld_err(f, err, errlen, "not a string");
    size_t n = o->via.str.size;
    if (n >= cap) return fld_err(f, err, errlen, "string too long");
    if (n && memchr(o->via.str.ptr, 0, n)) return fld_err(f, err, errlen, "string contains NUL");
    if (n) memcpy(dst, o->via.str.ptr, n);
    dst[n] = '\0';
    return MV_OK;
}

static mv_err get_uint(const msgpack_object *o, uint64_t max, uint64_t *v, fld f, char *err,
                       size_t errlen)
{
    if (o->type != MSGPACK_OBJECT_POSITIVE_INTEGER)
        return fld_err(f, err, errlen, "not an unsigned integer");
    if (o->via.u64 > max) return fld_err(f, err, errlen, "integer out of range");
    *v = o->via.u64;
    return MV_OK;
}

static mv_err get_int64(const msgpack_object *o, int64_t *v, fld f, char *err, size_t errlen)
{
    if (o->type == MSGPACK_OBJECT_NEGATIVE_INTEGER) {
        *v = o->via.i64;
        return MV_OK;
    }
    if (o->type != MSGPACK_OBJECT_POSITIVE_INTEGER)
        return fld_err(f, err, errlen, "not an integer");
    if (o->via.u64 > (uint64_t)INT64_MAX) return fld_err(f, err, errlen, "integer out of range");
    *v = (int64_t)o->via.u64;
    return MV_OK;
}

static int is_hash(const char *h)
{
    size_t i = 0;
    for (; h[i]; i++)
        if (!((h[i] >= '0' && h[i] <= '9') || (h[i] >= 'a' && h[i] <= 'f'))) return 0;
    return i == 64;
}

#define STRF(o, field, name) get_str(o, field, sizeof(field), (fld){name, idx}, err, errlen)

static mv_err rec_from_obj(const msgpack_object *o, long idx, mv_index_rec *r, char *err,
                           size_t errlen)
{
    if (o->type != MSGPACK_OBJECT_MAP)
        return fld_err((fld){"*", idx}, err, errlen, "record is not a map");
    memset(r, 0, sizeof *r);
    int have_h = 0, have_uid = 0;
    mv_err rc = MV_OK;
    for (uint32_t i = 0; i < o->via.map.size && rc == MV_OK; i++) {
        const msgpack_object *k = &o->via.map.ptr[i].key, *v = &o->via.map.ptr[i].val;
        uint64_t u = 0;
        if (key_is(k, "h")) {
            if ((rc = STRF(v, r->hash, "h")) == MV_OK && !is_hash(r->hash))
                rc = fld_err((fld){"h", idx}, err, errlen, "not a sha256 hex digest");
            have_h = 1;
        } else if (key_is(k, "uid")) {
            rc = get_uint(v, UINT32_MAX, &u, (fld){"uid", idx}, err, errlen);
            r->uid = (uint32_t)u;
            have_uid = 1;
        } else if (key_is(k, "size")) {
            rc = get_uint(v, UINT64_MAX, &r->size, (fld){"size", idx}, err, errlen);
        } else if (key_is(k, "idate")) {
            rc = get_int64(v, &r->internaldate, (fld){"idate", idx}, err, errlen);
        } else if (key_is(k, "flags")) {
            rc = STRF(v, r->flags, "flags");
        } else if (key_is(k, "from")) {
            rc = STRF(v, r->from, "from");
        } else if (key_is(k, "to")) {
            rc = STRF(v, r->to, "to");
        } else if (key_is(k, "subj")) {
            rc = STRF(v, r->subject, "subj");
        } else if (key_is(k, "date")) {
            rc = STRF(v, r->date, "date");
        } else if (key_is(k, "msgid")) {
            rc = STRF(v, r->msgid, "msgid");
        } else if (key_is(k, "id")) {
            rc = STRF(v, r->id, "id");
        }
    }
    if (rc == MV_OK && !have_h) rc = fld_err((fld){"h", idx}, err, errlen, "missing");
    if (rc == MV_OK && !have_uid) rc = fld_err((fld){"uid", idx}, err, errlen, "missing");
    return rc;
}

static mv_err seg_from_obj(const msgpack_object *o, mv_segment *s, char *err, size_t errlen)
{
    const long idx = -1;
    if (o->type != MSGPACK_OBJECT_MAP)
        return mv_seterr(err, errlen, MV_ECORRUPT, "segment: top level is not a map");
    const msgpack_object *recs = NULL;
    uint64_t u = 0, ver = 0;
    int have = 0; /* bits: v folder uidvalidity first last */
    mv_err rc = MV_OK;
    for (uint32_t i = 0; i < o->via.map.size && rc == MV_OK; i++) {
        const msgpack_object *k = &o->via.map.ptr[i].key, *v = &o->via.map.ptr[i].val;
        if (key_is(k, "v")) {
            rc = get_uint(v, UINT32_MAX, &ver, (fld){"v", idx}, err, errlen);
            have |= 1;
        } else if (key_is(k, "folder")) {
            rc = STRF(v, s->folder, "folder");
            have |= 2;
        } else if (key_is(k, "uidvalidity")) {
            rc = get_uint(v, UINT32_MAX, &u, (fld){"uidvalidity", idx}, err, errlen);
            s->uidvalidity = (uint32_t)u;
            have |= 4;
        } else if (key_is(k, "first")) {
            rc = get_uint(v, UINT32_MAX, &u, (fld){"first", idx}, err, errlen);
            s->first = (uint32_t)u;
            have |= 8;
        } else if (key_is(k, "last")) {
            rc = get_uint(v, UINT32_MAX, &u, (fld){"last", idx}, err, errlen);
            s->last = (uint32_t)u;
            have |= 16;
        } else if (key_is(k, "recs")) {
            if (v->type != MSGPACK_OBJECT_ARRAY)
                rc = fld_err((fld){"recs", idx}, err, errlen, "not an array");
            else if (v->via.array.size > MAX_RECS)
                rc = fld_err((fld){"recs", idx}, err, errlen, "too many records");
            recs = v;
        }
    }
    if (rc) return rc;
    static const char *names[] = {"v", "folder", "uidvalidity", "first", "last"};
    for (int b = 0; b < 5; b++)
        if (!(have & (1 << b))) return fld_err((fld){names[b], idx}, err, errlen, "missing");
    if (!recs) return fld_err((fld){"recs", idx}, err, errlen, "missing");
    if (ver != 1)
        return mv_seterr(err, errlen, MV_ECORRUPT, "segment: unsupported version %llu",
                         (unsigned long long)ver);
    mv_index_rec *r = malloc(sizeof *r);
    if (!r) return mv_seterr(err, errlen, MV_ENOMEM, "out of memory");
    for (uint32_t i = 0; i < recs->via.array.size && rc == MV_OK; i++) {
        rc = rec_from_obj(&recs->via.array.ptr[i], (long)i, r, err, errlen);
        if (rc == MV_OK && (rc = mv_segment_add(s, r)) != MV_OK)
            rc = mv_seterr(err, errlen, rc, "segment: cannot store record %u", (unsigned)i);
    }
    free(r);
    return rc;
}

mv_err mv_segment_decode(const void *buf, size_t len, mv_segment *s, char *err, size_t errlen)
{
    memset(s, 0, sizeof *s);
    unsigned char *raw = NULL;
    size_t rawlen = 0, used = 0, off = 0;
    msgpack_unpacked up;
    char why[160];
    msgpack_unpacked_init(&up);
    mv_err rc = seg_inflate(buf, len, &raw, &rawlen, err, errlen);
    if (rc) goto out;
    if (mv_mpack_check(raw, rawlen, MV_MPACK_MSGPACK_C_DEPTH, MAX_RECS, 1, &used, why,
                       sizeof why)) {
        rc = mv_seterr(err, errlen, MV_ECORRUPT, "segment: %s", why);
        goto out;
    }
    if (used != rawlen) {
        rc = mv_seterr(err, errlen, MV_ECORRUPT, "segment: trailing bytes after msgpack map");
        goto out;
    }
    msgpack_unpack_return ur = msgpack_unpack_next(&up, (const char *)raw, rawlen, &off);
    if (ur != MSGPACK_UNPACK_SUCCESS) {
        rc = mv_seterr(err, errlen, MV_ECORRUPT, "segment: msgpack decode failed (%d)", (int)ur);
        goto out;
    }
    rc = seg_from_obj(&up.data, s, err, errlen);
out:
    msgpack_unpacked_destroy(&up); /* strings in up point into raw: free raw after */
    free(raw);
    if (rc) {
        mv_segment_free(s);
        memset(s, 0, sizeof *s);
    }
    return rc;
}

/* ---- header scanner ----------------------------------------------------------------------- */

enum { F_FROM, F_TO, F_SUBJECT, F_DATE, F_MSGID, F_COUNT };
enum { ST_LSTART, ST_LSTART_CR, ST_NAME, ST_VALUE, ST_SKIP, ST_DONE };

#define RECF(f) sizeof(((mv_index_rec *)0)->f)
static const struct {
    const char *name;
    size_t cap; /* size of the destination field, NUL included */
} hdr_fields[F_COUNT] = {
    {"from", RECF(from)},        {"to", RECF(to)}, {"subject", RECF(subject)}, {"date", RECF(date)},
    {"message-id", RECF(msgid)},
};

struct mv_hdrscan {
    int state;
    int cur;     /* field being captured, -1 if none */
    int pcr;     /* a CR inside a value waits for the next byte */
    size_t seen; /* header bytes consumed */
    size_t nlen;
    char name[16]; /* field name so far (lowercased); longer names are not ours */
    int have[F_COUNT], trunc[F_COUNT];
    size_t vlen[F_COUNT];
    char val[F_COUNT][MV_HDR_MAX];
};

mv_hdrscan *mv_hdrscan_new(void)
{
    mv_hdrscan *h = malloc(sizeof *h);
    if (h) mv_hdrscan_reset(h);
    return h;
}

void mv_hdrscan_reset(mv_hdrscan *h)
{
    if (!h) return;
    h->state = ST_LSTART;
    h->cur = -1;
    h->pcr = 0;
    h->seen = 0;
    h->nlen = 0;
    for (int i = 0; i < F_COUNT; i++) {
        h->have[i] = h->trunc[i] = 0;
        h->vlen[i] = 0;
        h->val[i][0] = '\0';
    }
}

void mv_hdrscan_free(mv_hdrscan *h)
{
    free(h);
}

static void hs_append(mv_hdrscan *h, unsigned char c)
{
    int f = h->cur;
    if (c == '\0') return;
    if (h->vlen[f] == 0 && (c == ' ' || c == '\t')) return; /* leading whitespace */
    if (h->vlen[f] + 1 < hdr_fields[f].cap) {
        h->val[f][h->vlen[f]++] = (char)c;
    } else {
        h->trunc[f] = 1;
    }
}

static void hs_name_end(mv_hdrscan *h)
{
    size_t n = h->nlen;
    while (n > 0 && (h->name[n - 1] == ' ' || h->name[n - 1] == '\t'))
        n--;
    h->cur = -1;
    h->state = ST_SKIP;
    if (n == 0 || n >= sizeof h->name) return;
    for (int i = 0; i < F_COUNT; i++) {
        if (strlen(hdr_fields[i].name) == n && memcmp(h->name, hdr_fields[i].name, n) == 0) {
            if (!h->have[i]) { /* first occurrence wins */
                h->have[i] = 1;
                h->cur = i;
                h->state = ST_VALUE;
            }
            return;
        }
    }
}

/* Consume bytes of p[0..len) until the header ends; returns the number consumed. */
static size_t hs_run(mv_hdrscan *h, const unsigned char *p, size_t len)
{
    size_t i = 0;
    while (i < len) {
        unsigned char c = p[i];
        switch (h->state) {
        case ST_SKIP: {
            const unsigned char *nl = memchr(p + i, '\n', len - i);
            if (!nl) return len;
            i = (size_t)(nl - p) + 1;
            h->state = ST_LSTART;
            continue;
        }
        case ST_LSTART:
            if (c == '\n') {
                h->state = ST_DONE;
                return i + 1;
            }
            if (c == '\r') {
                h->state = ST_LSTART_CR;
            } else if (c == ' ' || c == '\t') {
                /* folded continuation: the line break goes, the whitespace stays */
                if (h->cur >= 0) {
                    h->state = ST_VALUE;
                    hs_append(h, c);
                } else {
                    h->state = ST_SKIP;
                }
            } else {
                h->cur = -1;
                h->nlen = 0;
                h->state = ST_NAME;
                continue; /* reprocess c as the first name byte */
            }
            break;
        case ST_LSTART_CR:
            if (c == '\n') {
                h->state = ST_DONE;
                return i + 1;
            }
            h->cur = -1; /* a line starting with a bare CR: malformed, skip it */
            h->state = ST_SKIP;
            continue;
        case ST_NAME:
            if (c == ':') {
                hs_name_end(h);
            } else if (c == '\n') {
                h->cur = -1; /* a line without a colon */
                h->state = ST_LSTART;
            } else if (h->nlen < sizeof h->name) {
                h->name[h->nlen++] = (char)((c >= 'A' && c <= 'Z') ? c + 32 : c);
            }
            break;
        case ST_VALUE:
            if (h->pcr) {
                h->pcr = 0;
                if (c == '\n') {
                    h->state = ST_LSTART;
                    break;
                }
                hs_append(h, '\r');
            }
            if (c == '\n') {
                h->state = ST_LSTART;
            } else if (c == '\r') {
                h->pcr = 1;
            } else {
                hs_append(h, c);
            }
            break;
        default:
            return i;
        }
        i++;
    }
    return len;
}

void mv_hdrscan_feed(mv_hdrscan *h, const void *data, size_t len)
{
    if (!h || !data || h->state == ST_DONE) return;
    size_t room = HDR_SCAN_MAX - h->seen;
    if (len > room) len = room;
    h->seen += hs_run(h, data, len);
    if (h->seen >= HDR_SCAN_MAX) h->state = ST_DONE;
}

/* Drop a UTF-8 sequence cut short by truncation at the end of v[0..n). */
static size_t utf8_trim(const char *v, size_t n)
{
    size_t i = n, k = 0;
    while (i > 0 && k < 4 && ((unsigned char)v[i - 1] & 0xc0) == 0x80) {
        i--;
        k++;
    }
    if (i == 0) return n;
    unsigned char lead = (unsigned char)v[i - 1];
    size_t want = lead >= 0xf0 ? 4 : lead >= 0xe0 ? 3 : lead >= 0xc0 ? 2 : 1;
    if (want > 1 && k + 1 < want) return i - 1;
    return n;
}

void mv_hdrscan_result(mv_hdrscan *h, mv_index_rec *r)
{
    char *dst[F_COUNT] = {r->from, r->to, r->subject, r->date, r->msgid};
    for (int f = 0; f < F_COUNT; f++) {
        size_t n = h ? h->vlen[f] : 0;
        if (h && h->trunc[f]) n = utf8_trim(h->val[f], n);
        while (n > 0 &&
               (h->val[f][n - 1] == ' ' || h->val[f][n - 1] == '\t' || h->val[f][n - 1] == '\r'))
            n--;
        if (n) memcpy(dst[f], h->val[f], n);
        dst[f][n] = '\0';
    }
}

/* fuzz_s3_xml.c - libFuzzer target for the S3 client's answer parsers.
 *
 * Every input is fed, as one complete HTTP body, to the three listing parsers the HTTP paths use
 * (ListObjectsV2, ListObjectVersions, ListMultipartUploads pages), to the <Error> parser, and,
 * NUL-terminated, to the ISO 8601 time parser. The item callback checks the delivery contract
 * (key, and version or upload id where the kind has one, non-NULL and NUL-terminated within
 * bounds) and touches every byte it gets so ASan sees bad pointers; the callback stops the
 * listing after a number of items taken from the input, which must give MV_ECANCEL. Errors
 * must be explained and sanitised.
 *
 * Build: CC=clang cmake -S . -B build-fuzz -G Ninja -DMV_FUZZ=ON && ninja -C build-fuzz fuzz_s3_xml
 * Run:   ./build-fuzz/tests/fuzz_s3_xml -max_total_time=60 tests/fuzz/corpus/s3_xml */
#include "mv/s3.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static volatile unsigned sink;

static void touch(const char *s, size_t max)
{
    size_t n = 0;
    for (; *s; s++, n++) {
        if (n > max) abort();
        sink += (unsigned char)*s;
    }
}

static void clean(const char *err)
{
    if (!err[0]) abort(); /* every failure explains itself */
    for (const char *p = err; *p; p++)
        if ((unsigned char)*p < 0x20 || (unsigned char)*p == 0x7f) abort();
}

typedef struct ctx {
    int kind;
    int left; /* items before the callback stops the listing */
    int seen;
} ctx;

static int on_item(void *ud, const mv_s3__item *it)
{
    ctx *c = ud;
    if (!it->key) abort();
    touch(it->key, MV_S3_KEY_MAX);
    if (c->kind == MV_S3__LIST_VERSIONS) {
        if (!it->version_id) abort();
        touch(it->version_id, 1024);
        if (it->is_delete_marker && it->size) abort();
    }
    if (c->kind == MV_S3__LIST_UPLOADS) {
        if (!it->upload_id || it->initiated < 0) abort();
        touch(it->upload_id, 1024);
    }
    c->seen++;
    return c->left-- <= 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *xml = (const char *)data;
    int stop_after = size ? data[size - 1] % 8 : 0;
    for (int kind = MV_S3__LIST_OBJECTS; kind <= MV_S3__LIST_UPLOADS; kind++) {
        char err[MV_ERRLEN];
        mv_s3__page pg;
        ctx c = {.kind = kind, .left = stop_after};
        err[0] = '\0';
        mv_err e = mv_s3__parse_list(xml, size, kind, &pg, on_item, &c, err, sizeof err);
        if (e) {
            clean(err);
            if (e == MV_ECANCEL && c.seen != stop_after + 1) abort();
        } else {
            if (c.seen > stop_after) abort();
            touch(pg.next_token, sizeof pg.next_token);
            touch(pg.next_key, sizeof pg.next_key);
            touch(pg.next_id, sizeof pg.next_id);
        }
    }
    char code[64], msg[256];
    if (mv_s3__parse_error(xml, size, code, sizeof code, msg, sizeof msg) == 0) {
        touch(code, sizeof code);
        touch(msg, sizeof msg);
        for (const char *p = msg; *p; p++)
            if ((unsigned char)*p < 0x20 || (unsigned char)*p == 0x7f) abort();
    }
    if (size < 128) {
        char t[128];
        memcpy(t, data, size);
        t[size] = '\0';
        int64_t v = mv_s3__parse_time(t);
        if (v < -1) abort();
    }
    return 0;
}

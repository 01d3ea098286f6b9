/* fuzz_ews.c - libFuzzer target for the EWS client's answer parsers.
 *
 * Every input is fed, as one complete HTTP body, to each buffered parser the HTTP paths use
 * (SyncFolderItems, FindFolder, FindItem, CreateFolder, CreateItem answers) and to the non-2xx
 * mapper with a status taken from the input; then to the streaming GetItem parser in pieces whose
 * sizes come from a PRNG seeded by the input (1..64 bytes, sometimes a whole kilobyte), so tags,
 * entities and base64 groups split anywhere. The item callbacks check the delivery contract
 * (indexes in range, data only between begin and end/fail, at most one end or fail per item, no
 * more than max_message bytes) and touch every byte they get so ASan sees bad pointers. Errors must
 * be sanitised.
 *
 * Build: CC=clang cmake -S . -B build-fuzz -G Ninja -DMV_FUZZ=ON && ninja -C build-fuzz fuzz_ews
 * Run:   ./build-fuzz/tests/fuzz_ews -max_total_time=60 tests/fuzz/corpus/ews */
#include "mv/ews.h"
#include "../../shared/src/ews_internal.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define N_ITEMS 3
#define MAX_MESSAGE 4096

static volatile unsigned sink;

static void touch(const char *s)
{
    for (; s && *s; s++)
        sink += (unsigned char)*s;
}

static void clean(const char *err)
{
    for (const char *p = err; *p; p++)
        if ((unsigned char)*p < 0x20 || (unsigned char)*p == 0x7f) abort();
}

static int f_folder(void *ud, const char *id, const char *parent, const char *name, const char *cls,
                    uint64_t total, int has_children)
{
    (void)ud;
    if (!*id || has_children < -1 || has_children > 1) abort();
    touch(id);
    touch(parent);
    char *p = mv_ews__path_join("Top", name);
    if (p && strchr(p + 4, '/')) abort(); /* a name never adds a separator */
    touch(p);
    free(p);
    touch(cls);
    sink += (unsigned)total;
    return 0;
}

static int f_item(void *ud, mv_ews_change kind, const char *id, const char *cls)
{
    (void)ud;
    if (kind < MV_EWS_CREATE || kind > MV_EWS_READ_FLAG || !*id) abort();
    touch(id);
    touch(cls);
    return 0;
}

typedef struct items {
    int state[N_ITEMS]; /* 0 none, 1 begun, 2 ended, 3 failed */
    uint64_t bytes[N_ITEMS];
} items;

static int g_begin(void *ud, size_t i)
{
    items *t = ud;
    if (i >= N_ITEMS || t->state[i] != 0) abort();
    t->state[i] = 1;
    return 0;
}

static int g_data(void *ud, size_t i, const void *p, size_t n)
{
    items *t = ud;
    if (i >= N_ITEMS || t->state[i] != 1 || !n) abort();
    t->bytes[i] += n;
    if (t->bytes[i] > MAX_MESSAGE) abort();
    for (size_t k = 0; k < n; k++)
        sink += ((const unsigned char *)p)[k];
    return 0;
}

static int g_end(void *ud, size_t i)
{
    items *t = ud;
    if (i >= N_ITEMS || t->state[i] != 1) abort();
    t->state[i] = 2;
    return 0;
}

static void g_fail(void *ud, size_t i, const char *code, const char *text)
{
    items *t = ud;
    if (i >= N_ITEMS || t->state[i] >= 2 || !*code) abort();
    t->state[i] = 3;
    clean(code);
    clean(text);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *body = (const char *)data;
    char err[MV_ERRLEN];
    mv_ews__info info;
    uint32_t next = 0;
    int last = 0;

    char *state = NULL;
    err[0] = '\0';
    mv_err e = mv_ews__parse_sync(body, size, f_item, NULL, &state, &last, &info, err, sizeof err);
    if (e == MV_OK) {
        if (!state || !*state) abort();
        touch(state);
    } else if (state) {
        abort(); /* a failed parse hands back no state */
    }
    free(state);
    clean(err);
    touch(info.server_version);

    err[0] = '\0';
    mv_ews__parse_find_folder(body, size, f_folder, NULL, &next, &last, &info, err, sizeof err);
    clean(err);
    err[0] = '\0';
    mv_ews__parse_find_item(body, size, f_item, NULL, &next, &last, &info, err, sizeof err);
    clean(err);

    /* the answers of CreateFolder (an id required) and CreateItem (an id optional) */
    for (int k = 0; k < 2; k++) {
        char *id = NULL;
        err[0] = '\0';
        e = mv_ews__parse_created(body, size, k ? "CreateItem" : "CreateFolder", &id, &info, err,
                                  sizeof err);
        if ((e != MV_OK && id) || (e == MV_OK && !k && (!id || !*id))) abort();
        touch(id);
        free(id);
        clean(err);
    }

    static const long statuses[] = {401, 403, 500, 503, 429, 302, 404, 400};
    long st = statuses[size ? data[0] % 8 : 0];
    e = mv_ews__map_http(st, body, size, 1500, &info, err, sizeof err);
    if (e == MV_OK || info.backoff_ms < 0 || info.backoff_ms > 3600000) abort();
    clean(err);

    /* the stream, in pieces */
    items t;
    memset(&t, 0, sizeof t);
    mv_ews_mime_cb cb = {g_begin, g_data, g_end, g_fail};
    mv_ews__getitem *g = NULL;
    if (mv_ews__getitem_new(N_ITEMS, MAX_MESSAGE, &cb, &t, &g, err, sizeof err)) return 0;
    uint32_t x = 2166136261u;
    for (size_t i = 0; i < size && i < 64; i++)
        x = (x ^ data[i]) * 16777619u;
    e = MV_OK;
    for (size_t off = 0; off < size && !e;) {
        x = x * 1103515245u + 12345u;
        size_t k = (x >> 16) % 16 == 0 ? 1024 : 1 + (x >> 16) % 64;
        if (k > size - off) k = size - off;
        e = mv_ews__getitem_feed(g, body + off, k, err, sizeof err);
        off += k;
    }
    if (!e) e = mv_ews__getitem_finish(g, err, sizeof err);
    if (e == MV_OK) /* a complete answer settles every item */
        for (int i = 0; i < N_ITEMS; i++)
            if (t.state[i] < 2) abort();
    if (e) clean(err);
    touch(mv_ews__getitem_info(g)->server_version);
    mv_ews__getitem_free(g);

    /* string-shaped inputs */
    char *s = malloc(size + 1);
    if (!s) return 0;
    memcpy(s, data, size);
    s[size] = '\0';
    e = mv_ews__code_err(s);
    if (e != MV_EBUSY && e != MV_EAUTH && e != MV_ENOTFOUND && e != MV_ESERVER && e != MV_ETOOBIG)
        abort();
    char *p = mv_ews__path_join(s, s);
    size_t pl = strlen(s);
    if (p && strchr(p + (pl ? pl + 1 : 0), '/')) abort();
    free(p);
    free(s);
    return 0;
}

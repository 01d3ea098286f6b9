/* fuzz_graph.c - libFuzzer target for the Graph client's response parsers.
 *
 * Every input is fed, as one complete HTTP body, to each parser the HTTP paths use: the users,
 * mailFolders, delta page, message list and $batch parsers, the token response parser and the
 * Graph/AAD error body formatter; the folder path builder and the Retry-After parser get the input
 * as a C string, and the same-origin check gets it as a link. Callbacks touch every byte they are
 * given so ASan sees bad pointers; returned links must be NUL-terminated strings.
 *
 * Build: CC=clang cmake -S . -B build-fuzz -G Ninja -DMV_FUZZ=ON && ninja -C build-fuzz fuzz_graph
 * Run:   ./build-fuzz/tests/fuzz_graph -max_total_time=60 tests/fuzz/corpus/graph */
#include "mv/graph.h"
#include "../../shared/src/graph_internal.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static volatile unsigned sink;

static void touch(const char *s)
{
    for (; s && *s; s++)
        sink += (unsigned char)*s;
}

static int f_user(void *ud, const char *id, const char *upn, const char *mail, int licensed)
{
    (void)ud;
    touch(id);
    touch(upn);
    touch(mail);
    sink += (unsigned)licensed;
    return 0;
}

static int f_folder(void *ud, const char *id, const char *name, const char *wk, uint64_t total,
                    uint64_t children)
{
    (void)ud;
    touch(id);
    char *p = mv_graph__path_join("Parent", name);
    touch(p);
    free(p);
    touch(wk);
    sink += (unsigned)(total + children);
    return 0;
}

static int f_delta(void *ud, const char *id, int removed, const char *reason)
{
    (void)ud;
    touch(id);
    touch(reason);
    sink += (unsigned)removed;
    return 0;
}

static int f_id(void *ud, const char *id)
{
    (void)ud;
    touch(id);
    return 0;
}

static int f_batch(void *ud, const mv_graph__batch_res *res)
{
    (void)ud;
    for (size_t i = 0; res->data && i < res->len; i++)
        sink += res->data[i];
    touch(res->error);
    sink += (unsigned)res->index + (unsigned)res->status;
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *body = (const char *)data;
    char err[MV_ERRLEN];
    char *link = NULL;
    int complete = 0;

    if (mv_graph__parse_users(body, size, f_user, NULL, &link, err, sizeof err) == MV_OK)
        touch(link);
    free(link);
    link = NULL;
    touch(err);

    if (mv_graph__parse_folders(body, size, f_folder, NULL, &link, err, sizeof err) == MV_OK)
        touch(link);
    free(link);
    link = NULL;

    mv_graph__parse_batch(body, size, 20, 1u << 20, f_batch, NULL, err, sizeof err);
    touch(err);

    if (mv_graph__parse_idlist(body, size, f_id, NULL, &link, err, sizeof err) == MV_OK)
        touch(link);
    else if (link)
        abort(); /* a failed parse hands back no link */
    free(link);
    link = NULL;

    if (mv_graph__parse_delta(body, size, f_delta, NULL, &link, &complete, err, sizeof err) ==
        MV_OK) {
        if (!link) abort(); /* success always yields a link */
        touch(link);
        sink += (unsigned)mv_graph__same_origin("https://graph.microsoft.com/v1.0", link);
    }
    free(link);
    link = NULL;

    char *tok = NULL;
    int64_t secs = 0;
    if (mv_oauth__parse_token(body, size, &tok, &secs, err, sizeof err) == MV_OK) {
        if (!tok || secs <= 0) abort();
        touch(tok);
    }
    free(tok);

    char text[512], code[64];
    mv_ms__error_text(429, body, size, text, sizeof text, code, sizeof code);
    for (const char *p = text; *p; p++)
        if ((unsigned char)*p < 0x20) abort(); /* err text is sanitised */
    touch(code);

    /* string-shaped inputs */
    char *s = malloc(size + 1);
    if (!s) return 0;
    memcpy(s, data, size);
    s[size] = '\0';
    int64_t ra = mv_http__retry_after(s, 0);
    if (ra > 3600000) abort();
    sink += (unsigned)mv_graph__same_origin("https://graph.microsoft.com/v1.0", s);
    char *p = mv_graph__path_join(s, s);
    size_t pl = strlen(s);
    if (p && strchr(p + (pl ? pl + 1 : 0), '/')) abort(); /* a name never adds a separator */
    free(p);
    free(s);
    return 0;
}

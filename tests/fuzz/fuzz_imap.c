/* fuzz_imap.c - libFuzzer target for the IMAP response parser.
 *
 * Input layout: byte 0 selects the command whose response path is driven (raw tagged read,
 * LIST, UID SEARCH, EXAMINE, UID FETCH, LOGIN or AUTHENTICATE XOAUTH2, LIST "" "", CREATE,
 * UID SEARCH HEADER, APPEND or MULTIAPPEND plus the modified UTF-7 encoder over the input) and the
 * bounds; byte 1 the read size of the memory transport (1..16 bytes per read, or everything), so
 * that every token can be split across reads. The rest is what the "server" sends. After the first
 * command a second raw read and mv_imap_close (LOGOUT) run over whatever is left, exercising the
 * broken-connection paths too. Callbacks touch every byte they are given so ASan sees bad pointers.
 *
 * Build: CC=clang cmake -S . -B build-fuzz -DMV_FUZZ=ON && ninja -C build-fuzz fuzz_imap
 * Run:   ./build-fuzz/tests/fuzz_imap -max_total_time=60 tests/fuzz/corpus/imap */
#include "mv/imap.h"
#include "mv/log.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef struct fio {
    const uint8_t *d;
    size_t len, pos, chunk;
} fio;

static long f_read(void *io, void *buf, size_t len, int timeout_ms)
{
    (void)timeout_ms;
    fio *f = io;
    if (f->pos == f->len) return f->chunk == 3 ? -2 : 0; /* sometimes a timeout, not EOF */
    size_t n = f->len - f->pos;
    if (n > len) n = len;
    if (f->chunk && n > f->chunk) n = f->chunk;
    memcpy(buf, f->d + f->pos, n);
    f->pos += n;
    return (long)n;
}

static volatile unsigned sink;

static int f_begin(void *ud, uint64_t size)
{
    (void)ud;
    sink += (unsigned)size;
    return 0;
}

static int f_data(void *ud, const void *data, size_t len)
{
    (void)ud;
    const unsigned char *p = data;
    for (size_t i = 0; i < len; i++)
        sink += p[i];
    return 0;
}

static int f_done(void *ud, const mv_imap_msg *m, int had_body)
{
    (void)ud;
    sink += (unsigned)strlen(m->flags) + m->uid + (unsigned)had_body;
    return 0;
}

static int f_list(void *ud, const char *name, char delim, const char *flags)
{
    (void)ud;
    sink += (unsigned)strlen(name) + (unsigned)strlen(flags) + (unsigned char)delim;
    return 0;
}

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc, (void)argv;
    mv_log_set_level(MV_LOG_ERROR); /* the parser warns about odd dates; keep runs quiet */
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 2) return 0;
    uint8_t mode = data[0];
    fio f = {data + 2, size - 2, 0, data[1] % 17};
    mv_imap_opts o;
    mv_imap_opts_default(&o);
    o.timeout_ms = 10;
    o.max_line = 64 + (size_t)(mode >> 4) * 64; /* 64..1024 */
    o.max_literal = 4096;
    mv_imap *c = NULL;
    if (mv_imap_from_io(&o, f_read, NULL, &f, &c) != MV_OK) return 0;
    char err[MV_ERRLEN] = "";
    mv_imap_fetch_cb cb = {f_begin, f_data, f_done};
    uint32_t *uids = NULL;
    size_t n = 0;
    mv_imap_mailbox mb;
    char delim = 0, u7[64], in[24];
    switch (mode % 10) {
    case 0:
        mv_imap_read_until_tagged(c, "A1", &cb, NULL, err, sizeof err);
        break;
    case 1:
        mv_imap_list(c, f_list, NULL, err, sizeof err);
        break;
    case 2:
        if (mv_imap_uids_from(c, (mode >> 3) & 7, &uids, &n, err, sizeof err) == MV_OK)
            for (size_t i = 1; i < n; i++)
                if (uids[i - 1] >= uids[i]) abort(); /* must be sorted and unique */
        free(uids);
        break;
    case 3:
        mv_imap_examine(c, (mode & 8) ? "Caf\xc3\xa9" : "INBOX", &mb, err, sizeof err);
        break;
    case 4:
        mv_imap_fetch_range(c, 1, 0, &cb, NULL, err, sizeof err);
        break;
    case 5:
        if (mv_imap_read_until_tagged(c, "A0", NULL, NULL, err, sizeof err) != MV_OK) break;
        if (mode & 16) { /* XOAUTH2: the error challenge is decoded into the error */
            if (mv_imap_xoauth2(c, "a@b.example", "tok", err, sizeof err) != MV_OK &&
                mv_imap_challenge(c))
                sink += (unsigned)strlen(mv_imap_challenge(c));
        } else {
            mv_imap_login(c, "user", "p\xc3\xa4ss", err, sizeof err);
        }
        break;
    case 6:
        mv_imap_delimiter(c, &delim, err, sizeof err);
        break;
    case 7:
        mv_imap_create(c, (mode & 16) ? "Export/Caf\xc3\xa9" : "Export", err, sizeof err);
        break;
    case 8:
        mv_imap_search_header(c, "Message-ID", (mode & 16) ? "\xc3\xa9" : "<a@b>", &n, err,
                              sizeof err);
        break;
    case 9: {
        size_t k = size - 2 < sizeof in - 1 ? size - 2 : sizeof in - 1;
        memcpy(in, data + 2, k);
        in[k] = '\0';
        size_t cap = (size_t)(mode >> 4) * 4 + 1; /* 1..61: the too-small path too */
        if (mv_imap_utf7_encode(in, u7, cap) == 0 && strlen(u7) >= cap) abort();
        if (mv_imap_read_until_tagged(c, "A0", NULL, NULL, err, sizeof err) != MV_OK) break;
        if (mv_imap_append_begin(c, "Dest", "\\Seen \\Recent", 1, 4, err, sizeof err) != MV_OK)
            break;
        if (mv_imap_append_data(c, "abcd", (mode & 16) ? 3 : 4, err, sizeof err) != MV_OK) break;
        if ((mode & 32) && (mv_imap_append_next(c, "", 0, 2, err, sizeof err) != MV_OK ||
                            mv_imap_append_data(c, "ef", 2, err, sizeof err) != MV_OK))
            break; /* MULTIAPPEND: a second message in the same command */
        mv_imap_append_end(c, err, sizeof err);
        break;
    }
    }
    if (strlen(err) >= sizeof err) abort();
    mv_imap_read_until_tagged(c, "A9", &cb, NULL, err, sizeof err);
    mv_imap_close(c);
    return 0;
}

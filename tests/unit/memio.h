/* memio.h - an in-memory transport for the IMAP client in unit tests (mv_imap_from_io): the
 * "server" is a script read back in pieces, what the client sends is collected in out. */
#ifndef MV_TEST_MEMIO_H
#define MV_TEST_MEMIO_H

#include <stddef.h>
#include <string.h>

typedef struct mem_io {
    const char *data;
    size_t len, pos;
    size_t chunk;       /* at most this many bytes per read; 0 = all */
    int timeout_at_end; /* report a timeout instead of end of stream */
    char out[16384];
    size_t outlen;
} mem_io;

static inline long mem_read(void *io, void *buf, size_t len, int timeout_ms)
{
    (void)timeout_ms;
    mem_io *m = io;
    if (m->pos == m->len) return m->timeout_at_end ? -2 : 0;
    size_t n = m->len - m->pos;
    if (n > len) n = len;
    if (m->chunk && n > m->chunk) n = m->chunk;
    memcpy(buf, m->data + m->pos, n);
    m->pos += n;
    return (long)n;
}

static inline long mem_write(void *io, const void *buf, size_t len, int timeout_ms)
{
    (void)timeout_ms;
    mem_io *m = io;
    size_t n = len;
    if (n > sizeof m->out - 1 - m->outlen) n = sizeof m->out - 1 - m->outlen;
    memcpy(m->out + m->outlen, buf, n);
    m->outlen += n;
    m->out[m->outlen] = '\0';
    return (long)len;
}

#endif

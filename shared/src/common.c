/* common.c - status codes, clocks, ids and name validation used by every module. */
#include "mv/common.h"

#include <openssl/crypto.h>
#include <openssl/rand.h>
#include <stdarg.h>
#include <stdint.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <time.h>

const char *mv_strerror(mv_err e)
{
    switch (e) {
    case MV_OK:
        return "ok";
    case MV_ERR:
        return "error";
    case MV_ENOMEM:
        return "out of memory";
    case MV_EINVAL:
        return "invalid input";
    case MV_EIO:
        return "I/O error";
    case MV_ENET:
        return "network error";
    case MV_ETIMEDOUT:
        return "timed out";
    case MV_EPROTO:
        return "protocol error";
    case MV_EAUTH:
        return "authentication failed";
    case MV_ENOTFOUND:
        return "not found";
    case MV_EEXIST:
        return "already exists";
    case MV_EBUSY:
        return "busy";
    case MV_ETOOBIG:
        return "too big";
    case MV_ECORRUPT:
        return "corrupt data";
    case MV_ECANCEL:
        return "cancelled";
    case MV_ESERVER:
        return "server error";
    }
    return "unknown error";
}

int mv_err_transient(mv_err e)
{
    return e == MV_ENET || e == MV_ETIMEDOUT || e == MV_EBUSY || e == MV_ESERVER || e == MV_EIO;
}

mv_err mv_seterr(char *err, size_t errlen, mv_err e, const char *fmt, ...)
{
    if (err && errlen > 0) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    return e;
}

int64_t mv_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int64_t mv_mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void mv_hex(const unsigned char *in, size_t len, char *out)
{
    static const char digits[] = "0123456789abcdef";
    for (size_t i = 0; i < len; i++) {
        out[2 * i] = digits[in[i] >> 4];
        out[2 * i + 1] = digits[in[i] & 15];
    }
    out[2 * len] = '\0';
}

void mv_uuid(char out[37])
{
    unsigned char b[16];
    if (RAND_bytes(b, sizeof b) != 1) {
        /* RAND_bytes only fails when the OS entropy source is broken; fall back to time+addr
         * mixing so ids stay unique per process rather than aborting. */
        uint64_t t = (uint64_t)mv_mono_ms() ^ (uint64_t)(uintptr_t)out;
        for (size_t i = 0; i < sizeof b; i++)
            b[i] = (unsigned char)(t >> ((i % 8) * 8)) ^ (unsigned char)i;
    }
    b[6] = (unsigned char)((b[6] & 0x0f) | 0x40);
    b[8] = (unsigned char)((b[8] & 0x3f) | 0x80);
    char h[33];
    mv_hex(b, 16, h);
    snprintf(out, 37, "%.8s-%.4s-%.4s-%.4s-%.12s", h, h + 8, h + 12, h + 16, h + 20);
}

int mv_name_valid(const char *s)
{
    if (!s) return 0;
    size_t n = strlen(s);
    if (n < 1 || n > 63) return 0;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        int alnum = (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9');
        if (i == 0 && !alnum) return 0;
        if (!alnum && c != '.' && c != '_' && c != '-') return 0;
    }
    return 1;
}

int mv_mailbox_valid(const char *s)
{
    if (!s) return 0;
    size_t n = strlen(s);
    if (n < 1 || n > 255) return 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c <= 0x20 || c >= 0x7f || c == '/' || c == '|') return 0;
    }
    return 1;
}

void mv_b64dec_init(mv_b64dec *st)
{
    memset(st, 0, sizeof *st);
}

static int b64_val(unsigned char c)
{
    if (c >= 'A' && c <= 'Z') return c - 'A';
    if (c >= 'a' && c <= 'z') return c - 'a' + 26;
    if (c >= '0' && c <= '9') return c - '0' + 52;
    if (c == '+') return 62;
    if (c == '/') return 63;
    return -1;
}

int mv_b64dec_update(mv_b64dec *st, const char *in, size_t n, unsigned char *out, size_t *outn)
{
    size_t o = 0;
    for (size_t i = 0; i < n; i++, st->in++) {
        unsigned char c = (unsigned char)in[i];
        if (c == ' ' || c == '\t' || c == '\r' || c == '\n') continue;
        if (c == '=') {
            if (st->pad == 2) { /* the second '=' of "xx==" */
                st->pad = 1;
                continue;
            }
            /* padding closes a group of 3 sextets ("xxx=", 2 bytes) or 2 ("xx==", 1 byte) */
            if (st->pad || st->nacc < 2) goto bad;
            if (st->nacc == 3) {
                out[o++] = (unsigned char)(st->acc >> 10);
                out[o++] = (unsigned char)(st->acc >> 2);
                st->pad = 1;
            } else {
                out[o++] = (unsigned char)(st->acc >> 4);
                st->pad = 2;
            }
            st->acc = 0;
            st->nacc = 0;
            continue;
        }
        int v = b64_val(c);
        if (v < 0 || st->pad) goto bad;
        st->acc = (st->acc << 6) | (uint32_t)v;
        if (++st->nacc == 4) {
            out[o++] = (unsigned char)(st->acc >> 16);
            out[o++] = (unsigned char)(st->acc >> 8);
            out[o++] = (unsigned char)st->acc;
            st->acc = 0;
            st->nacc = 0;
        }
    }
    *outn = o;
    return 0;
bad:
    *outn = o;
    st->bad_at = st->in;
    return -1;
}

int mv_b64dec_final(mv_b64dec *st)
{
    if (st->nacc != 0 || st->pad == 2) {
        st->bad_at = st->in;
        return -1;
    }
    return 0;
}

char *mv_aprintf(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0) return NULL;
    char *s = malloc((size_t)n + 1);
    if (!s) return NULL;
    va_start(ap, fmt);
    vsnprintf(s, (size_t)n + 1, fmt, ap);
    va_end(ap);
    return s;
}

void mv_sanitize(char *s)
{
    for (; s && *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c < 0x20 || c == 0x7f) *s = '?';
    }
}

int mv_has_ctl(const char *s)
{
    for (; *s; s++)
        if ((unsigned char)*s <= 0x20 || (unsigned char)*s == 0x7f) return 1;
    return 0;
}

void mv_scrub(char *err, size_t errlen, const char *secret)
{
    if (!err || !errlen || !secret || !*secret) return;
    size_t sl = strlen(secret);
    char *p;
    while ((p = strstr(err, secret)) != NULL) {
        size_t rest = strlen(p + sl);
        size_t put = sl < 3 ? sl : 3;
        memcpy(p, "***", put);
        memmove(p + put, p + sl, rest + 1);
    }
}

void mv_free_secret(char *s)
{
    if (!s) return;
    OPENSSL_cleanse(s, strlen(s));
    free(s);
}

char *mv_path_join(const char *parent, const char *name)
{
    size_t pl = parent ? strlen(parent) : 0;
    size_t nl = strlen(name);
    if (nl > (SIZE_MAX - pl - 2) / 3) return NULL;
    char *s = malloc(pl + 1 + 3 * nl + 1);
    if (!s) return NULL;
    char *w = s;
    if (pl) {
        memcpy(w, parent, pl);
        w += pl;
        *w++ = '/';
    }
    for (const char *r = name; *r; r++) {
        if (*r == '%') {
            memcpy(w, "%25", 3);
            w += 3;
        } else if (*r == '/') {
            memcpy(w, "%2F", 3);
            w += 3;
        } else {
            *w++ = *r;
        }
    }
    *w = '\0';
    return s;
}

int mv_write_all(int fd, const void *data, size_t len)
{
    const unsigned char *p = data;
    while (len > 0) {
        ssize_t n = write(fd, p, len);
        if (n < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

int mv_grow_push(void **arr, size_t *n, size_t *cap, size_t size, const void *elem)
{
    if (*n == *cap) {
        size_t c = *cap ? *cap * 2 : 16;
        void *p = realloc(*arr, c * size);
        if (!p) return -1;
        *arr = p;
        *cap = c;
    }
    memcpy((unsigned char *)*arr + *n * size, elem, size);
    (*n)++;
    return 0;
}

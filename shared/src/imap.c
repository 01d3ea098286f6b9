/* imap.c - streaming IMAP4rev1 client (RFC 3501) for the archiving worker.
 *
 * Why this shape
 * - An archiver fetches whole messages that may be tens of megabytes. The response parser is
 *   a pull tokenizer over one fixed 64 KiB read buffer: it never assembles a response "line"
 *   in memory. BODY[] literals inside FETCH responses are handed to the caller's callbacks
 *   straight out of that buffer, piece by piece, so message size never affects memory use.
 * - Everything the server controls is bounded: the non-literal bytes of one response
 *   (opts.max_line), a BODY[] literal (opts.max_literal), every other literal or quoted
 *   string we keep (SMALL_MAX), parenthesis nesting (DEPTH_MAX) and the UID list of a SEARCH
 *   (SEARCH_MAX). Every read, write and connect waits at most opts.timeout_ms (poll(2)).
 * - The parser reads through a transport given as a read/write function pair, so the unit
 *   tests and the fuzz target drive exactly the code the sockets use (mv_imap_from_io).
 *
 * Contracts
 * - One mv_imap per connection per thread; no global mutable state (OpenSSL initialises
 *   itself). Errors are written to the caller's err buffer, never printed.
 * - Any error while a response is being read leaves the stream out of sync: the handle is
 *   then marked broken and every later command fails with MV_ENET until it is closed. A
 *   tagged NO/BAD leaves the connection usable.
 * - Transport functions return the byte count (> 0), 0 for end of stream, IO_TIMEOUT (-2)
 *   when timeout_ms passed without progress, and any other negative value for an error.
 * - Secrets: the password only ever lives in the command buffer (cleansed after use) and is
 *   never formatted into err or a log line. Server text copied into err is sanitised
 *   (control bytes replaced) because it is untrusted.
 * - STARTTLS: bytes the server pipelined after its STARTTLS OK are rejected (response
 *   injection), capabilities learnt before TLS are discarded, and a PREAUTH greeting when
 *   STARTTLS was requested is refused (it would skip TLS).
 */
#include "mv/imap.h"
#include "mv/log.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#define IO_TIMEOUT (-2)
#define RBUF_SIZE 65536u
#define SMALL_MAX 65536u              /* non-message literals and quoted strings we keep */
#define DEPTH_MAX 16                  /* parenthesis nesting */
#define SEARCH_MAX (8u * 1024 * 1024) /* UIDs in one UID SEARCH answer (32 MiB) */
#define LOGOUT_TIMEOUT_MS 5000

typedef struct sbuf {
    char *p;
    size_t len, cap;
} sbuf;

enum { R_UNTAGGED = 1, R_CONT, R_TAGGED };

struct mv_imap {
    mv_imap_opts o;
    char *host; /* owned copy of o.host (o.host points here) */
    mv_imap_read_fn rd;
    mv_imap_write_fn wr;
    void *io;
    int fd;
    SSL_CTX *ctx;
    SSL *ssl;
    char ioerr[256]; /* detail of the last socket transport failure */
    int eof;         /* the last fill saw end of stream */
    int timedout;    /* the last fill timed out */

    unsigned char *rbuf;
    size_t rpos, rlen;
    size_t linebytes; /* non-literal bytes of the current response */
    int unbounded;    /* inside a collected SEARCH list: max_line not applied */

    char *err; /* caller's buffer for the running call */
    size_t errlen;
    int broken;
    int preauth;
    unsigned tagno;
    char tag[16];

    char *caps; /* capability atoms separated by one space, NULL if unknown */
    unsigned caps_gen;
    mv_imap_mailbox mb; /* recorded from untagged data of the last EXAMINE */
    int have_uidvalidity;

    /* last status response */
    sbuf text;      /* sanitised resp-text */
    char code[32];  /* its response code atom, "" if none */
    char ukind[32]; /* keyword of the last untagged status (OK, PREAUTH, ...) */
    char rtag[64];  /* tag of the last tagged response */
    char rstatus[8];

    sbuf s1, s2, flags; /* scratch: names, flag lists */

    /* sinks of the running command */
    mv_imap_list_fn list_cb;
    void *list_ud;
    int list_stop;
    int collect;
    uint32_t *uids;
    size_t nuids, capuids;

    /* SASL: the server's error challenge (XOAUTH2's JSON status), decoded and sanitised */
    char challenge[160];

    /* APPEND in progress (between append_begin and append_end) */
    int appending;
    uint64_t app_left; /* literal bytes still to send */
};

/* ------------------------------------------------------------------ errors and buffers */

static mv_err fail(mv_imap *c, mv_err e, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static mv_err fail(mv_imap *c, mv_err e, const char *fmt, ...)
{
    if (c->err && c->errlen > 0) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(c->err, c->errlen, fmt, ap);
        va_end(ap);
    }
    return e;
}

static void set_ctx(mv_imap *c, char *err, size_t errlen)
{
    c->err = err;
    c->errlen = errlen;
    if (err && errlen) err[0] = '\0';
}

static mv_err sb_reserve(mv_imap *c, sbuf *b, size_t extra)
{
    if (extra > SIZE_MAX / 2 - b->len) return fail(c, MV_ENOMEM, "out of memory");
    size_t need = b->len + extra + 1;
    if (need <= b->cap) return MV_OK;
    size_t cap = b->cap ? b->cap : 64;
    while (cap < need)
        cap *= 2;
    char *p = realloc(b->p, cap);
    if (!p) return fail(c, MV_ENOMEM, "out of memory");
    b->p = p;
    b->cap = cap;
    b->p[b->len] = '\0';
    return MV_OK;
}

static mv_err sb_put(mv_imap *c, sbuf *b, const void *d, size_t n)
{
    mv_err e = sb_reserve(c, b, n);
    if (e) return e;
    if (n) memcpy(b->p + b->len, d, n);
    b->len += n;
    b->p[b->len] = '\0';
    return MV_OK;
}

static mv_err sb_putc(mv_imap *c, sbuf *b, int ch)
{
    char x = (char)ch;
    return sb_put(c, b, &x, 1);
}

static void sb_clear(sbuf *b)
{
    b->len = 0;
    if (b->p) b->p[0] = '\0';
}

static const char *sb_str(const sbuf *b)
{
    return b->p ? b->p : "";
}

static void sb_free(sbuf *b, int secret)
{
    if (b->p && secret) OPENSSL_cleanse(b->p, b->cap);
    free(b->p);
    b->p = NULL;
    b->len = b->cap = 0;
}

/* ------------------------------------------------------------------ socket transport */

/* Wait for ev on fd until deadline (ms, monotonic; < 0 = forever). 1 ready, 0 timeout,
 * -1 error (errno). */
static int wait_fd(int fd, short ev, int64_t deadline)
{
    for (;;) {
        int ms = -1;
        if (deadline >= 0) {
            int64_t left = deadline - mv_mono_ms();
            if (left <= 0) return 0;
            ms = left > INT_MAX ? INT_MAX : (int)left;
        }
        struct pollfd p = {.fd = fd, .events = ev};
        int r = poll(&p, 1, ms);
        if (r > 0) return 1;
        if (r == 0) return 0;
        if (errno != EINTR) return -1;
    }
}

static int64_t deadline_of(int timeout_ms)
{
    return timeout_ms > 0 ? mv_mono_ms() + timeout_ms : -1;
}

/* OpenSSL writes to the socket with write(2), which raises SIGPIPE on a reset peer. Block it
 * for this thread around TLS calls and swallow one we caused; no process-wide change. */
typedef struct {
    sigset_t old;
    int was_pending;
} sigpipe_guard;

static void sigpipe_block(sigpipe_guard *g)
{
    sigset_t pend, blk;
    sigemptyset(&pend);
    sigpending(&pend);
    g->was_pending = sigismember(&pend, SIGPIPE) == 1;
    sigemptyset(&blk);
    sigaddset(&blk, SIGPIPE);
    pthread_sigmask(SIG_BLOCK, &blk, &g->old);
}

static void sigpipe_restore(sigpipe_guard *g)
{
    if (!g->was_pending) {
        sigset_t pend;
        sigemptyset(&pend);
        sigpending(&pend);
        if (sigismember(&pend, SIGPIPE) == 1) {
            sigset_t only;
            sigemptyset(&only);
            sigaddset(&only, SIGPIPE);
            struct timespec zero = {0, 0};
            while (sigtimedwait(&only, NULL, &zero) < 0 && errno == EINTR) {}
        }
    }
    pthread_sigmask(SIG_SETMASK, &g->old, NULL);
}

static void tls_errstr(char *out, size_t len)
{
    unsigned long e = ERR_get_error();
    if (e)
        ERR_error_string_n(e, out, len);
    else
        snprintf(out, len, "%s", errno ? strerror(errno) : "unexpected end of stream");
    ERR_clear_error();
}

static long sock_read(void *io, void *buf, size_t len, int timeout_ms)
{
    mv_imap *c = io;
    int64_t deadline = deadline_of(timeout_ms);
    if (len > INT_MAX) len = INT_MAX;
    for (;;) {
        short ev = POLLIN;
        if (c->ssl) {
            sigpipe_guard g;
            sigpipe_block(&g);
            ERR_clear_error();
            errno = 0;
            int n = SSL_read(c->ssl, buf, (int)len);
            int se = n > 0 ? SSL_ERROR_NONE : SSL_get_error(c->ssl, n);
            /* EOF without close_notify: IMAP framing (literal sizes, tagged completion)
             * detects truncation itself, so report it as a plain end of stream */
            if (se == SSL_ERROR_SSL &&
                ERR_GET_REASON(ERR_peek_error()) == SSL_R_UNEXPECTED_EOF_WHILE_READING)
                se = SSL_ERROR_ZERO_RETURN;
            if (se != SSL_ERROR_NONE && se != SSL_ERROR_WANT_READ && se != SSL_ERROR_WANT_WRITE &&
                se != SSL_ERROR_ZERO_RETURN)
                tls_errstr(c->ioerr, sizeof c->ioerr);
            ERR_clear_error();
            sigpipe_restore(&g);
            if (n > 0) return n;
            if (se == SSL_ERROR_ZERO_RETURN) return 0;
            if (se == SSL_ERROR_WANT_WRITE)
                ev = POLLOUT;
            else if (se != SSL_ERROR_WANT_READ)
                return -1;
        } else {
            ssize_t n = recv(c->fd, buf, len, 0);
            if (n >= 0) return (long)n;
            if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
                snprintf(c->ioerr, sizeof c->ioerr, "%s", strerror(errno));
                return -1;
            }
        }
        int w = wait_fd(c->fd, ev, deadline);
        if (w == 0) return IO_TIMEOUT;
        if (w < 0) {
            snprintf(c->ioerr, sizeof c->ioerr, "poll: %s", strerror(errno));
            return -1;
        }
    }
}

static long sock_write(void *io, const void *buf, size_t len, int timeout_ms)
{
    mv_imap *c = io;
    int64_t deadline = deadline_of(timeout_ms);
    if (len > INT_MAX) len = INT_MAX;
    for (;;) {
        short ev = POLLOUT;
        if (c->ssl) {
            sigpipe_guard g;
            sigpipe_block(&g);
            ERR_clear_error();
            errno = 0;
            int n = SSL_write(c->ssl, buf, (int)len);
            int se = n > 0 ? SSL_ERROR_NONE : SSL_get_error(c->ssl, n);
            if (se != SSL_ERROR_NONE && se != SSL_ERROR_WANT_READ && se != SSL_ERROR_WANT_WRITE)
                tls_errstr(c->ioerr, sizeof c->ioerr);
            sigpipe_restore(&g);
            if (n > 0) return n;
            if (se == SSL_ERROR_WANT_READ)
                ev = POLLIN;
            else if (se != SSL_ERROR_WANT_WRITE)
                return -1;
        } else {
            ssize_t n = send(c->fd, buf, len, MSG_NOSIGNAL);
            if (n >= 0) return (long)n;
            if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
                snprintf(c->ioerr, sizeof c->ioerr, "%s", strerror(errno));
                return -1;
            }
        }
        int w = wait_fd(c->fd, ev, deadline);
        if (w == 0) return IO_TIMEOUT;
        if (w < 0) {
            snprintf(c->ioerr, sizeof c->ioerr, "poll: %s", strerror(errno));
            return -1;
        }
    }
}

static mv_err tcp_connect(mv_imap *c)
{
    char port[16];
    snprintf(port, sizeof port, "%d", c->o.port);
    struct addrinfo hints = {0}, *res = NULL;
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    int g = getaddrinfo(c->host, port, &hints, &res);
    if (g != 0)
        return fail(c, MV_ENET, "cannot resolve %s: %s", c->host,
                    g == EAI_SYSTEM ? strerror(errno) : gai_strerror(g));
    mv_err e = MV_ENET;
    fail(c, MV_ENET, "connect to %s:%d failed: no usable address", c->host, c->o.port);
    for (struct addrinfo *ai = res; ai; ai = ai->ai_next) {
        int fd =
            socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, ai->ai_protocol);
        if (fd < 0) {
            fail(c, MV_ENET, "socket: %s", strerror(errno));
            continue;
        }
        int r = connect(fd, ai->ai_addr, ai->ai_addrlen);
        if (r < 0 && errno == EINPROGRESS) {
            int w = wait_fd(fd, POLLOUT, deadline_of(c->o.timeout_ms));
            if (w == 0) {
                e = fail(c, MV_ETIMEDOUT, "connect to %s:%d timed out after %d ms", c->host,
                         c->o.port, c->o.timeout_ms);
                close(fd);
                continue;
            }
            int soerr = 0;
            socklen_t sl = sizeof soerr;
            if (w < 0)
                soerr = errno;
            else if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &sl) < 0)
                soerr = errno;
            r = soerr ? -1 : 0;
            errno = soerr;
        }
        if (r < 0) {
            e = fail(c, MV_ENET, "connect to %s:%d failed: %s", c->host, c->o.port,
                     strerror(errno));
            close(fd);
            continue;
        }
        c->fd = fd;
        e = MV_OK;
        break;
    }
    freeaddrinfo(res);
    return e;
}

static int is_ip_literal(const char *h)
{
    unsigned char tmp[16];
    return inet_pton(AF_INET, h, tmp) == 1 || inet_pton(AF_INET6, h, tmp) == 1;
}

static mv_err tls_start(mv_imap *c)
{
    char detail[256];
    c->ctx = SSL_CTX_new(TLS_client_method());
    if (!c->ctx) return fail(c, MV_ENOMEM, "cannot create TLS context");
    SSL_CTX_set_min_proto_version(c->ctx, TLS1_2_VERSION);
    if (c->o.verify) {
        SSL_CTX_set_default_verify_paths(c->ctx);
        if (c->o.ca_file && c->o.ca_file[0] &&
            SSL_CTX_load_verify_locations(c->ctx, c->o.ca_file, NULL) != 1) {
            tls_errstr(detail, sizeof detail);
            return fail(c, MV_EINVAL, "cannot load ca_file %s: %s", c->o.ca_file, detail);
        }
    }
    SSL_CTX_set_verify(c->ctx, c->o.verify ? SSL_VERIFY_PEER : SSL_VERIFY_NONE, NULL);
    c->ssl = SSL_new(c->ctx);
    if (!c->ssl || SSL_set_fd(c->ssl, c->fd) != 1) return fail(c, MV_ENOMEM, "SSL_new failed");
    int ip = is_ip_literal(c->host);
    if (!ip) SSL_set_tlsext_host_name(c->ssl, c->host); /* SNI is for DNS names only */
    if (c->o.verify) {
        X509_VERIFY_PARAM *vp = SSL_get0_param(c->ssl);
        X509_VERIFY_PARAM_set_hostflags(vp, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
        int ok = ip ? X509_VERIFY_PARAM_set1_ip_asc(vp, c->host) : SSL_set1_host(c->ssl, c->host);
        if (ok != 1) return fail(c, MV_EINVAL, "cannot set TLS peer name %s", c->host);
    }
    int64_t deadline = deadline_of(c->o.timeout_ms);
    for (;;) {
        sigpipe_guard g;
        sigpipe_block(&g);
        ERR_clear_error();
        errno = 0;
        int r = SSL_connect(c->ssl);
        int se = r == 1 ? SSL_ERROR_NONE : SSL_get_error(c->ssl, r);
        if (se != SSL_ERROR_NONE && se != SSL_ERROR_WANT_READ && se != SSL_ERROR_WANT_WRITE)
            tls_errstr(detail, sizeof detail);
        sigpipe_restore(&g);
        if (r == 1) break;
        if (se != SSL_ERROR_WANT_READ && se != SSL_ERROR_WANT_WRITE) {
            long vr = SSL_get_verify_result(c->ssl);
            if (c->o.verify && vr != X509_V_OK)
                return fail(c, MV_ENET, "TLS to %s:%d: certificate verify failed: %s", c->host,
                            c->o.port, X509_verify_cert_error_string(vr));
            return fail(c, MV_ENET, "TLS handshake with %s:%d failed: %s", c->host, c->o.port,
                        detail);
        }
        int w = wait_fd(c->fd, se == SSL_ERROR_WANT_READ ? POLLIN : POLLOUT, deadline);
        if (w == 0)
            return fail(c, MV_ETIMEDOUT, "TLS handshake with %s:%d timed out after %d ms", c->host,
                        c->o.port, c->o.timeout_ms);
        if (w < 0) return fail(c, MV_ENET, "poll: %s", strerror(errno));
    }
    mv_debug("imap tls established", " host=%s version=%s cipher=%s", c->host,
             SSL_get_version(c->ssl), SSL_get_cipher_name(c->ssl));
    return MV_OK;
}

/* ------------------------------------------------------------------ buffered reader */

static mv_err rd_fill(mv_imap *c)
{
    if (c->rpos < c->rlen) return MV_OK;
    c->rpos = c->rlen = 0;
    c->eof = c->timedout = 0;
    c->ioerr[0] = '\0';
    long n = c->rd(c->io, c->rbuf, RBUF_SIZE, c->o.timeout_ms);
    if (n > 0 && (unsigned long)n <= RBUF_SIZE) {
        c->rlen = (size_t)n;
        return MV_OK;
    }
    if (n == 0) {
        c->eof = 1;
        return fail(c, MV_ENET, "connection closed by the server");
    }
    if (n == IO_TIMEOUT) {
        c->timedout = 1;
        return fail(c, MV_ETIMEDOUT, "timed out after %d ms waiting for the server",
                    c->o.timeout_ms);
    }
    if (n > 0) return fail(c, MV_EPROTO, "transport returned more bytes than requested");
    return fail(c, MV_ENET, "read failed: %s", c->ioerr[0] ? c->ioerr : "transport error");
}

static mv_err lx_peek(mv_imap *c, int *ch)
{
    mv_err e = rd_fill(c);
    if (e) return e;
    *ch = c->rbuf[c->rpos];
    return MV_OK;
}

static mv_err lx_get(mv_imap *c, int *ch)
{
    mv_err e = rd_fill(c);
    if (e) return e;
    if (!c->unbounded && ++c->linebytes > c->o.max_line)
        return fail(c, MV_EPROTO, "response line exceeds max_line (%zu bytes)", c->o.max_line);
    *ch = c->rbuf[c->rpos++];
    return MV_OK;
}

static int is_atom_ch(int ch)
{
    return ch > 0x20 && ch != 0x7f && ch != '(' && ch != ')' && ch != '"' && ch != '{';
}

static const char *chname(int ch, char buf[8])
{
    if (ch > 0x20 && ch < 0x7f)
        snprintf(buf, 8, "'%c'", ch);
    else
        snprintf(buf, 8, "0x%02x", (unsigned)ch & 0xff);
    return buf;
}

static mv_err unexpected(mv_imap *c, int ch, const char *wanted)
{
    char b[8];
    return fail(c, MV_EPROTO, "malformed response: expected %s, got %s", wanted, chname(ch, b));
}

/* One or more SP. */
static mv_err lx_spaces(mv_imap *c)
{
    int ch = 0;
    mv_err e = lx_get(c, &ch);
    if (e) return e;
    if (ch != ' ') return unexpected(c, ch, "SP");
    for (;;) {
        if ((e = lx_peek(c, &ch))) return e;
        if (ch != ' ') return MV_OK;
        if ((e = lx_get(c, &ch))) return e;
    }
}

/* Optional spaces, then CRLF (a bare LF is tolerated). */
static mv_err lx_eol(mv_imap *c)
{
    int ch = 0;
    mv_err e;
    do {
        if ((e = lx_get(c, &ch))) return e;
    } while (ch == ' ');
    if (ch == '\r' && (e = lx_get(c, &ch))) return e;
    if (ch != '\n') return unexpected(c, ch, "end of line");
    return MV_OK;
}

/* Atom into buf; an over-long atom is consumed and truncated (callers then see no match).
 * At least one atom char is required. */
static mv_err lx_atom(mv_imap *c, char *buf, size_t cap)
{
    size_t n = 0;
    int ch = 0;
    mv_err e;
    for (;;) {
        if ((e = lx_peek(c, &ch))) return e;
        if (!is_atom_ch(ch)) break;
        if ((e = lx_get(c, &ch))) return e;
        if (n + 1 < cap) buf[n] = (char)ch;
        n++;
    }
    if (n == 0) return unexpected(c, ch, "an atom");
    buf[n + 1 < cap ? n : cap - 1] = '\0';
    return MV_OK;
}

static int parse_u64(const char *s, uint64_t max, uint64_t *out)
{
    uint64_t v = 0;
    if (!*s) return -1;
    for (; *s; s++) {
        if (*s < '0' || *s > '9') return -1;
        unsigned d = (unsigned)(*s - '0');
        if (v > (max - d) / 10) return -1;
        v = v * 10 + d;
    }
    *out = v;
    return 0;
}

static mv_err lx_number(mv_imap *c, uint64_t max, uint64_t *out)
{
    char buf[32];
    mv_err e = lx_atom(c, buf, sizeof buf);
    if (e) return e;
    if (parse_u64(buf, max, out) != 0)
        return fail(c, MV_EPROTO, "malformed response: bad number \"%.24s\"", buf);
    return MV_OK;
}

/* "{n}" or "{n+}" then CRLF; the next n bytes are the literal. */
static mv_err lx_literal_hdr(mv_imap *c, uint64_t *n)
{
    int ch = 0;
    char num[24];
    size_t k = 0;
    mv_err e = lx_get(c, &ch);
    if (e) return e;
    if (ch != '{') return unexpected(c, ch, "'{'");
    for (;;) {
        if ((e = lx_get(c, &ch))) return e;
        if (ch < '0' || ch > '9') break;
        if (k + 1 >= sizeof num) return fail(c, MV_EPROTO, "malformed literal size");
        num[k++] = (char)ch;
    }
    num[k] = '\0';
    if (ch == '+' && (e = lx_get(c, &ch))) return e;
    if (ch != '}' || k == 0 || parse_u64(num, UINT64_MAX, n) != 0)
        return fail(c, MV_EPROTO, "malformed literal size");
    if ((e = lx_get(c, &ch))) return e;
    if (ch == '\r' && (e = lx_get(c, &ch))) return e;
    if (ch != '\n') return unexpected(c, ch, "CRLF after literal size");
    return MV_OK;
}

typedef int (*sink_fn)(void *ud, const void *data, size_t len);

/* Deliver the n literal bytes that follow to fn (NULL = discard), straight from the read
 * buffer. Literal bytes do not count against max_line. */
static mv_err lx_literal_data(mv_imap *c, uint64_t n, sink_fn fn, void *ud)
{
    uint64_t done = 0;
    while (done < n) {
        mv_err e = rd_fill(c);
        if (e) {
            if (c->eof)
                return fail(c, MV_ENET,
                            "connection closed in the middle of a literal, %" PRIu64 " of %" PRIu64
                            " bytes read",
                            done, n);
            if (c->timedout)
                return fail(c, MV_ETIMEDOUT,
                            "timed out after %d ms in the middle of a literal, %" PRIu64
                            " of %" PRIu64 " bytes read",
                            c->o.timeout_ms, done, n);
            return e;
        }
        size_t avail = c->rlen - c->rpos;
        if (avail > n - done) avail = (size_t)(n - done);
        int r = fn ? fn(ud, c->rbuf + c->rpos, avail) : 0;
        c->rpos += avail;
        done += avail;
        if (r != 0) return fail(c, MV_ECANCEL, "fetch aborted by the caller");
    }
    return MV_OK;
}

static int sb_sink(void *ud, const void *d, size_t n)
{
    sbuf *b = ud; /* capacity reserved by the caller */
    memcpy(b->p + b->len, d, n);
    b->len += n;
    b->p[b->len] = '\0';
    return 0;
}

/* Quoted string (opening quote not yet consumed) into out (NULL = discard), at most bound
 * bytes kept. */
static mv_err lx_quoted(mv_imap *c, sbuf *out, size_t bound)
{
    int ch = 0;
    mv_err e = lx_get(c, &ch);
    if (e) return e;
    for (;;) {
        if ((e = lx_get(c, &ch))) return e;
        if (ch == '"') return MV_OK;
        if (ch == '\\' && (e = lx_get(c, &ch))) return e;
        if (ch == '\r' || ch == '\n')
            return fail(c, MV_EPROTO, "malformed response: line break inside a quoted string");
        if (out) {
            if (out->len >= bound)
                return fail(c, MV_EPROTO, "quoted string exceeds %zu bytes", bound);
            if ((e = sb_putc(c, out, ch))) return e;
        }
    }
}

/* astring / nstring: atom, quoted string or literal into out (cleared first). NIL sets
 * *is_nil when is_nil is given. Literals above bound are an error. */
static mv_err lx_string(mv_imap *c, sbuf *out, size_t bound, int *is_nil)
{
    int ch = 0;
    mv_err e = lx_peek(c, &ch);
    if (e) return e;
    sb_clear(out);
    if (is_nil) *is_nil = 0;
    if ((e = sb_reserve(c, out, 0))) return e;
    if (ch == '"') return lx_quoted(c, out, bound);
    if (ch == '{') {
        uint64_t n;
        if ((e = lx_literal_hdr(c, &n))) return e;
        if (n > bound)
            return fail(c, MV_EPROTO, "literal of %" PRIu64 " bytes exceeds the %zu-byte bound", n,
                        bound);
        if ((e = sb_reserve(c, out, (size_t)n))) return e;
        return lx_literal_data(c, n, sb_sink, out);
    }
    for (;;) {
        if ((e = lx_peek(c, &ch))) return e;
        if (!is_atom_ch(ch)) break;
        if ((e = lx_get(c, &ch))) return e;
        if (out->len >= bound) return fail(c, MV_EPROTO, "atom exceeds %zu bytes", bound);
        if ((e = sb_putc(c, out, ch))) return e;
    }
    if (out->len == 0) return unexpected(c, ch, "a string");
    if (is_nil && strcasecmp(out->p, "NIL") == 0) *is_nil = 1;
    return MV_OK;
}

/* Skip one value of any shape: atom, number, quoted, literal, NIL, (nested list). */
static mv_err lx_skip_value(mv_imap *c, int depth)
{
    int ch = 0;
    mv_err e = lx_peek(c, &ch);
    if (e) return e;
    if (ch == '(') {
        if (depth >= DEPTH_MAX)
            return fail(c, MV_EPROTO, "parenthesised lists nested deeper than %d", DEPTH_MAX);
        if ((e = lx_get(c, &ch))) return e;
        for (;;) {
            if ((e = lx_peek(c, &ch))) return e;
            if (ch == ')') return lx_get(c, &ch);
            if (ch == ' ') {
                if ((e = lx_get(c, &ch))) return e;
                continue;
            }
            if ((e = lx_skip_value(c, depth + 1))) return e;
        }
    }
    if (ch == '"') return lx_quoted(c, NULL, 0);
    if (ch == '{') {
        uint64_t n;
        if ((e = lx_literal_hdr(c, &n))) return e;
        if (n > c->o.max_literal)
            return fail(c, MV_ETOOBIG,
                        "literal of %" PRIu64 " bytes exceeds max_literal (%" PRIu64 ")", n,
                        c->o.max_literal);
        return lx_literal_data(c, n, NULL, NULL);
    }
    if (!is_atom_ch(ch)) return unexpected(c, ch, "a value");
    while (is_atom_ch(ch)) {
        if ((e = lx_get(c, &ch))) return e;
        if ((e = lx_peek(c, &ch))) return e;
    }
    return MV_OK;
}

/* Skip the rest of a response we do not interpret, including literals announced at the end
 * of its lines. */
static mv_err lx_skip_line(mv_imap *c)
{
    int st = 0, nd = 0; /* st: 1 in "{digits", 2 after '+', 3 after '}' */
    uint64_t n = 0;
    for (;;) {
        int ch = 0;
        mv_err e = lx_get(c, &ch);
        if (e) return e;
        if (ch == '\n') {
            if (st != 3) return MV_OK;
            if (n > c->o.max_literal)
                return fail(c, MV_ETOOBIG,
                            "literal of %" PRIu64 " bytes exceeds max_literal (%" PRIu64 ")", n,
                            c->o.max_literal);
            if ((e = lx_literal_data(c, n, NULL, NULL))) return e;
            st = 0;
        } else if (ch == '\r') {
            /* keep state: "}\r\n" */
        } else if (ch == '{') {
            st = 1, n = 0, nd = 0;
        } else if (st == 1 && ch >= '0' && ch <= '9' && nd < 19) {
            n = n * 10 + (uint64_t)(ch - '0');
            nd++;
        } else if (st == 1 && ch == '+' && nd > 0) {
            st = 2;
        } else if ((st == 1 || st == 2) && ch == '}' && nd > 0) {
            st = 3;
        } else {
            st = 0;
        }
    }
}

/* Rest of the line as resp-text (sanitised) into c->text, plus its [response code]. */
static void parse_code(mv_imap *c);

static mv_err lx_text(mv_imap *c)
{
    int ch = 0;
    mv_err e;
    sb_clear(&c->text);
    if ((e = sb_reserve(c, &c->text, 0))) return e;
    for (;;) {
        if ((e = lx_peek(c, &ch))) return e;
        if (ch != ' ') break;
        if ((e = lx_get(c, &ch))) return e;
    }
    int last_cr = 0;
    for (;;) {
        if ((e = lx_get(c, &ch))) return e;
        if (ch == '\n') break;
        if (last_cr && (e = sb_putc(c, &c->text, '?'))) return e; /* CR not before LF */
        last_cr = ch == '\r';
        if (last_cr) continue;
        if ((e = sb_putc(c, &c->text, ch < 0x20 || ch == 0x7f ? '?' : ch))) return e;
    }
    parse_code(c);
    return MV_OK;
}

/* ------------------------------------------------------------------ response handling */

static mv_err set_caps(mv_imap *c, const char *s, size_t len)
{
    char *p = malloc(len + 1);
    if (!p) return fail(c, MV_ENOMEM, "out of memory");
    size_t k = 0;
    for (size_t i = 0; i < len; i++) {
        if (s[i] == ' ') {
            if (k && p[k - 1] != ' ') p[k++] = ' ';
        } else {
            p[k++] = s[i];
        }
    }
    while (k && p[k - 1] == ' ')
        k--;
    p[k] = '\0';
    free(c->caps);
    c->caps = p;
    c->caps_gen++;
    return MV_OK;
}

static void parse_code(mv_imap *c)
{
    c->code[0] = '\0';
    const char *t = sb_str(&c->text);
    if (t[0] != '[') return;
    const char *end = strchr(t, ']');
    if (!end) return;
    const char *p = t + 1;
    size_t n = 0;
    while (p + n < end && p[n] != ' ')
        n++;
    snprintf(c->code, sizeof c->code, "%.*s", (int)n, p);
    const char *a = p + n;
    while (a < end && *a == ' ')
        a++;
    char num[24];
    uint64_t v = 0;
    int have_num = 0;
    if ((size_t)(end - a) < sizeof num) {
        snprintf(num, sizeof num, "%.*s", (int)(end - a), a);
        have_num = parse_u64(num, UINT64_MAX, &v) == 0;
    }
    if (strcasecmp(c->code, "CAPABILITY") == 0) {
        set_caps(c, a, (size_t)(end - a)); /* ENOMEM: keep the old list */
    } else if (strcasecmp(c->code, "UIDVALIDITY") == 0 && have_num && v <= UINT32_MAX) {
        c->mb.uidvalidity = (uint32_t)v;
        c->have_uidvalidity = 1;
    } else if (strcasecmp(c->code, "UIDNEXT") == 0 && have_num && v <= UINT32_MAX) {
        c->mb.uidnext = (uint32_t)v;
    } else if (strcasecmp(c->code, "HIGHESTMODSEQ") == 0 && have_num) {
        c->mb.highestmodseq = v;
    } else if (strcasecmp(c->code, "NOMODSEQ") == 0) {
        c->mb.highestmodseq = 0;
    }
}

/* "(" flag *(SP flag) ")" as the flags separated by one space. */
static mv_err lx_flag_list(mv_imap *c, sbuf *out)
{
    int ch = 0;
    mv_err e = lx_get(c, &ch);
    sb_clear(out);
    if (e) return e;
    if (ch != '(') return unexpected(c, ch, "'('");
    if ((e = sb_reserve(c, out, 0))) return e;
    for (;;) {
        if ((e = lx_peek(c, &ch))) return e;
        if (ch == ')') return lx_get(c, &ch);
        if (ch == ' ') {
            if ((e = lx_get(c, &ch))) return e;
            continue;
        }
        if (!is_atom_ch(ch)) return unexpected(c, ch, "a flag");
        if (out->len && (e = sb_putc(c, out, ' '))) return e;
        while (is_atom_ch(ch)) {
            if ((e = lx_get(c, &ch)) || (e = sb_putc(c, out, ch))) return e;
            if ((e = lx_peek(c, &ch))) return e;
        }
    }
}

static mv_err parse_list(mv_imap *c)
{
    mv_err e;
    int ch = 0, nil;
    char delim = 0;
    if ((e = lx_flag_list(c, &c->s2)) || (e = lx_spaces(c))) return e;
    if ((e = lx_string(c, &c->s1, SMALL_MAX, &nil))) return e;
    if (!nil) {
        if (c->s1.len != 1)
            return fail(c, MV_EPROTO, "malformed LIST response: bad hierarchy delimiter");
        delim = c->s1.p[0];
    }
    if ((e = lx_spaces(c)) || (e = lx_string(c, &c->s1, SMALL_MAX, NULL))) return e;
    for (;;) { /* LIST-EXTENDED data */
        if ((e = lx_peek(c, &ch))) return e;
        if (ch == '\r' || ch == '\n') break;
        if ((e = lx_spaces(c))) return e;
        if ((e = lx_peek(c, &ch))) return e;
        if (ch == '\r' || ch == '\n') break;
        if ((e = lx_skip_value(c, 0))) return e;
    }
    if ((e = lx_eol(c))) return e;
    if (strlen(c->s1.p) != c->s1.len) {
        mv_warn("imap LIST: skipping a mailbox name containing NUL", "%s", "");
        return MV_OK;
    }
    if (c->list_cb && !c->list_stop && c->list_cb(c->list_ud, c->s1.p, delim, c->s2.p) != 0)
        c->list_stop = 1;
    return MV_OK;
}

static mv_err parse_search(mv_imap *c)
{
    mv_err e;
    int ch = 0;
    c->unbounded = c->collect; /* the UID list is bounded by SEARCH_MAX instead */
    for (;;) {
        if ((e = lx_peek(c, &ch))) return e;
        if (ch == '\r' || ch == '\n') break;
        if ((e = lx_spaces(c)) || (e = lx_peek(c, &ch))) return e;
        if (ch == '\r' || ch == '\n') break;
        if (ch == '(') { /* (MODSEQ n) from CONDSTORE */
            if ((e = lx_skip_value(c, 0))) return e;
            continue;
        }
        uint64_t v;
        if ((e = lx_number(c, UINT32_MAX, &v))) return e;
        if (!c->collect) continue;
        if (c->nuids == c->capuids) {
            if (c->nuids >= SEARCH_MAX)
                return fail(c, MV_ETOOBIG, "UID SEARCH returned more than %u UIDs", SEARCH_MAX);
            size_t cap = c->capuids ? c->capuids * 2 : 1024;
            uint32_t *p = realloc(c->uids, cap * sizeof *p);
            if (!p) return fail(c, MV_ENOMEM, "out of memory");
            c->uids = p;
            c->capuids = cap;
        }
        c->uids[c->nuids++] = (uint32_t)v;
    }
    c->unbounded = 0;
    return lx_eol(c);
}

/* "17-Jul-1996 02:44:25 -0700" (day may be " 7" or "7") to epoch seconds. */
static int parse_date(const char *s, int64_t *out)
{
    static const char months[] = "JanFebMarAprMayJunJulAugSepOctNovDec";
    int v[7] = {0}; /* day, year, hh, mm, ss, zone hh, zone mm */
    while (*s == ' ')
        s++;
    int day = 0, k = 0;
    while (k < 2 && *s >= '0' && *s <= '9')
        day = day * 10 + (*s++ - '0'), k++;
    if (k == 0 || *s++ != '-') return -1;
    int mon = -1;
    for (int i = 0; i < 12; i++)
        if (strncasecmp(s, months + 3 * i, 3) == 0) mon = i;
    if (mon < 0) return -1;
    s += 3;
    static const char shape[] = "-dddd dd:dd:dd sdddd";
    int sign = 1, field = 1;
    v[0] = day;
    for (const char *f = shape; *f; f++, s++) {
        if (*f == 'd') {
            if (*s < '0' || *s > '9') return -1;
            v[field] = v[field] * 10 + (*s - '0');
        } else if (*f == 's') {
            if (*s != '+' && *s != '-') return -1;
            sign = *s == '-' ? -1 : 1;
        } else {
            if (*s != *f) return -1;
            if (*f != '-') field++;
        }
    }
    if (*s != '\0') return -1;
    int zone = v[5]; /* hhmm as one number */
    int zh = zone / 100, zm = zone % 100;
    if (day < 1 || day > 31 || v[2] > 23 || v[3] > 59 || v[4] > 60 || zh > 23 || zm > 59) return -1;
    struct tm tm = {0};
    tm.tm_mday = day;
    tm.tm_mon = mon;
    tm.tm_year = v[1] - 1900;
    tm.tm_hour = v[2];
    tm.tm_min = v[3];
    tm.tm_sec = v[4];
    time_t t = timegm(&tm);
    *out = (int64_t)t - sign * (zh * 3600 + zm * 60);
    return 0;
}

static mv_err parse_fetch(mv_imap *c, uint32_t seq, const mv_imap_fetch_cb *cb, void *ud)
{
    mv_imap_msg m = {.seq = seq, .flags = ""};
    int had_body = 0, have_size = 0, ch = 0, first = 1;
    uint64_t litsize = 0, v;
    char name[128];
    sb_clear(&c->flags);
    mv_err e = lx_get(c, &ch);
    if (e) return e;
    if (ch != '(') return unexpected(c, ch, "'(' after FETCH");
    for (;;) {
        if ((e = lx_peek(c, &ch))) return e;
        if (ch == ')') {
            if ((e = lx_get(c, &ch))) return e;
            break;
        }
        if (!first) {
            if ((e = lx_spaces(c)) || (e = lx_peek(c, &ch))) return e;
            if (ch == ')') continue;
        }
        first = 0;
        /* msg-att name: atom chars, "[section]" (may hold spaces), "<partial>" */
        size_t n = 0;
        for (;;) {
            if ((e = lx_peek(c, &ch))) return e;
            int endch = ch == '[' ? ']' : ch == '<' ? '>' : 0;
            if (!endch && !is_atom_ch(ch)) break;
            do {
                if ((e = lx_get(c, &ch))) return e;
                if (ch == '\r' || ch == '\n') return unexpected(c, ch, "a FETCH item name");
                if (n + 1 < sizeof name) name[n] = (char)ch;
                n++;
            } while (endch && ch != endch);
        }
        if (n == 0) return unexpected(c, ch, "a FETCH item name");
        name[n < sizeof name ? n : sizeof name - 1] = '\0';
        if ((e = lx_spaces(c))) return e;

        if (strcasecmp(name, "UID") == 0) {
            if ((e = lx_number(c, UINT32_MAX, &v))) return e;
            m.uid = (uint32_t)v;
        } else if (strcasecmp(name, "RFC822.SIZE") == 0) {
            if ((e = lx_number(c, UINT64_MAX, &m.size))) return e;
            have_size = 1;
        } else if (strcasecmp(name, "FLAGS") == 0) {
            if ((e = lx_flag_list(c, &c->flags))) return e;
        } else if (strcasecmp(name, "INTERNALDATE") == 0) {
            int nil;
            if ((e = lx_string(c, &c->s1, 64, &nil))) return e;
            if (!nil && parse_date(c->s1.p, &m.internaldate) != 0) {
                mv_warn("imap: unparsable INTERNALDATE ignored", " seq=%" PRIu32, seq);
                m.internaldate = 0;
            }
        } else if (strcasecmp(name, "BODY[]") == 0) {
            if (had_body) return fail(c, MV_EPROTO, "BODY[] twice in one FETCH response");
            if ((e = lx_peek(c, &ch))) return e;
            if (ch == '{') {
                if ((e = lx_literal_hdr(c, &litsize))) return e;
                if (litsize > c->o.max_literal)
                    return fail(c, MV_ETOOBIG,
                                "message seq %" PRIu32 " uid %" PRIu32 ": literal of %" PRIu64
                                " bytes exceeds max_literal (%" PRIu64 ")",
                                seq, m.uid, litsize, c->o.max_literal);
                if (cb && cb->body_begin && cb->body_begin(ud, litsize) != 0)
                    return fail(c, MV_ECANCEL, "fetch aborted by the caller");
                if ((e = lx_literal_data(c, litsize, cb ? cb->body_data : NULL, ud))) return e;
                had_body = 1;
            } else {
                int nil;
                if ((e = lx_string(c, &c->s1, SMALL_MAX, &nil))) return e;
                if (!nil) {
                    litsize = c->s1.len;
                    if ((cb && cb->body_begin && cb->body_begin(ud, litsize) != 0) ||
                        (cb && cb->body_data && litsize &&
                         cb->body_data(ud, c->s1.p, c->s1.len) != 0))
                        return fail(c, MV_ECANCEL, "fetch aborted by the caller");
                    had_body = 1;
                }
            }
        } else {
            if ((e = lx_skip_value(c, 0))) return e;
        }
    }
    if ((e = lx_eol(c))) return e;
    if (!have_size) m.size = litsize;
    m.flags = sb_str(&c->flags);
    if (cb && cb->msg_done && cb->msg_done(ud, &m, had_body) != 0)
        return fail(c, MV_ECANCEL, "fetch aborted by the caller");
    return MV_OK;
}

static mv_err handle_untagged(mv_imap *c, const mv_imap_fetch_cb *cb, void *ud)
{
    char kw[32];
    int ch = 0;
    mv_err e = lx_spaces(c);
    if (e) return e;
    c->ukind[0] = '\0';
    if ((e = lx_peek(c, &ch))) return e;
    if (ch >= '0' && ch <= '9') {
        uint64_t n;
        if ((e = lx_number(c, UINT32_MAX, &n)) || (e = lx_spaces(c)) ||
            (e = lx_atom(c, kw, sizeof kw)))
            return e;
        if (strcasecmp(kw, "EXISTS") == 0) {
            c->mb.exists = (uint32_t)n;
            return lx_eol(c);
        }
        if (strcasecmp(kw, "FETCH") == 0) {
            if ((e = lx_spaces(c))) return e;
            return parse_fetch(c, (uint32_t)n, cb, ud);
        }
        return lx_skip_line(c); /* RECENT, EXPUNGE, ... */
    }
    if ((e = lx_atom(c, kw, sizeof kw))) return e;
    if (strcasecmp(kw, "OK") == 0 || strcasecmp(kw, "NO") == 0 || strcasecmp(kw, "BAD") == 0 ||
        strcasecmp(kw, "PREAUTH") == 0 || strcasecmp(kw, "BYE") == 0) {
        if ((e = lx_text(c))) return e;
        snprintf(c->ukind, sizeof c->ukind, "%s", kw);
        if (strcasecmp(kw, "BYE") == 0)
            return fail(c, MV_ENET, "server closed the connection: BYE %s", sb_str(&c->text));
        if (strcasecmp(kw, "OK") != 0 && strcasecmp(kw, "PREAUTH") != 0)
            mv_debug("imap untagged status", " status=%s", kw);
        return MV_OK;
    }
    if (strcasecmp(kw, "CAPABILITY") == 0) {
        if ((e = lx_text(c))) return e;
        return set_caps(c, c->text.p, c->text.len);
    }
    if (strcasecmp(kw, "LIST") == 0 || strcasecmp(kw, "LSUB") == 0) {
        if ((e = lx_spaces(c))) return e;
        return parse_list(c);
    }
    if (strcasecmp(kw, "SEARCH") == 0) return parse_search(c);
    return lx_skip_line(c); /* FLAGS, STATUS, ENABLED, ID, NAMESPACE, ... */
}

/* Read one complete response. */
static mv_err read_response(mv_imap *c, const mv_imap_fetch_cb *cb, void *ud, int *kind)
{
    int ch = 0;
    c->linebytes = 0;
    c->unbounded = 0;
    mv_err e = lx_peek(c, &ch);
    if (e) return e;
    if (ch == '+') {
        if ((e = lx_get(c, &ch)) || (e = lx_text(c))) return e;
        *kind = R_CONT;
        return MV_OK;
    }
    if (ch == '*') {
        if ((e = lx_get(c, &ch)) || (e = handle_untagged(c, cb, ud))) return e;
        *kind = R_UNTAGGED;
        return MV_OK;
    }
    if ((e = lx_atom(c, c->rtag, sizeof c->rtag)) || (e = lx_spaces(c)) ||
        (e = lx_atom(c, c->rstatus, sizeof c->rstatus)))
        return e;
    if (strcasecmp(c->rstatus, "OK") != 0 && strcasecmp(c->rstatus, "NO") != 0 &&
        strcasecmp(c->rstatus, "BAD") != 0)
        return fail(c, MV_EPROTO, "malformed tagged response: status \"%s\"", c->rstatus);
    for (char *p = c->rstatus; *p; p++)
        if (*p >= 'a' && *p <= 'z') *p = (char)(*p - 'a' + 'A');
    if ((e = lx_text(c))) return e;
    *kind = R_TAGGED;
    return MV_OK;
}

enum { RUN_PLAIN = 0, RUN_LOGIN = 1, RUN_APPEND = 2 };

static mv_err send_all(mv_imap *c, const void *data, size_t len);

/* Keep the text of a "+" (base64) decoded, printable ASCII only, bounded. */
static void keep_challenge(mv_imap *c)
{
    const char *t = sb_str(&c->text);
    unsigned char dec[sizeof c->challenge];
    size_t n = 0, o = 0;
    mv_b64dec st;
    mv_b64dec_init(&st);
    size_t len = strlen(t);
    if (len > 4 * (sizeof dec / 3) - 4) len = 4 * (sizeof dec / 3) - 4; /* bounded; a prefix */
    len -= len % 4;
    if (mv_b64dec_update(&st, t, len, dec, &n) != 0) n = 0;
    for (size_t i = 0; i < n && o + 1 < sizeof c->challenge; i++)
        c->challenge[o++] = dec[i] >= 0x20 && dec[i] < 0x7f ? (char)dec[i] : '?';
    if (!o) c->challenge[o++] = '-'; /* empty or not base64: still marks "challenged" */
    c->challenge[o] = '\0';
}

/* Read responses until the tagged answer to tag (or, with want_cont, a "+" continuation).
 * Tagged NO/BAD map to an error and leave the connection usable; anything else that fails
 * marks it broken. */
static mv_err run_until(mv_imap *c, const char *tag, const mv_imap_fetch_cb *cb, void *ud,
                        int want_cont, const char *what, int mode)
{
    if (c->broken) return fail(c, MV_ENET, "connection unusable after an earlier error");
    for (;;) {
        int kind = 0;
        mv_err e = read_response(c, cb, ud, &kind);
        if (e) {
            c->broken = 1;
            return e;
        }
        if (kind == R_UNTAGGED) continue;
        if (kind == R_CONT) {
            if (want_cont) return MV_OK;
            if (mode == RUN_LOGIN && !c->challenge[0]) {
                /* a challenge after the whole SASL response is the server's error report
                 * (XOAUTH2: base64 JSON status, RFC 7628 3.2.2): kept for the error,
                 * answered with an empty response, then comes the tagged NO */
                keep_challenge(c);
                mv_err e2 = send_all(c, "\r\n", 2);
                if (e2) return e2;
                continue;
            }
            c->broken = 1;
            return fail(c, MV_EPROTO, "unexpected continuation request during %s", what);
        }
        if (strcmp(c->rtag, tag) != 0) {
            c->broken = 1;
            return fail(c, MV_EPROTO, "unexpected tagged response \"%.20s\" during %s", c->rtag,
                        what);
        }
        const char *text = sb_str(&c->text);
        if (strcmp(c->rstatus, "OK") == 0) {
            if (!want_cont) return MV_OK;
            c->broken = 1; /* the server answered a half-sent command */
            return fail(c, MV_EPROTO, "%s: server answered OK before the continuation", what);
        }
        mv_err r = MV_ESERVER;
        if (mode == RUN_APPEND) {
            const char *why = "";
            if (strcmp(c->rstatus, "NO") == 0) {
                if (!strcasecmp(c->code, "TRYCREATE")) {
                    r = MV_ENOTFOUND;
                    why = "the destination does not exist: ";
                } else if (!strcasecmp(c->code, "OVERQUOTA") || !strcasecmp(c->code, "LIMIT")) {
                    r = MV_ETOOBIG;
                    why = "the destination is full: ";
                } else if (!strcasecmp(c->code, "NOPERM") || !strcasecmp(c->code, "READ-ONLY")) {
                    r = MV_EAUTH;
                    why = "the destination is read-only: ";
                } else if (!strcasecmp(c->code, "THROTTLED") ||
                           !strcasecmp(c->code, "UNAVAILABLE") || !strcasecmp(c->code, "INUSE")) {
                    r = MV_EBUSY; /* retried later, with backoff */
                    why = "the destination is busy: ";
                }
            }
            return fail(c, r, "IMAP %s failed: %s%s %s", what, why, c->rstatus, text);
        }
        if (strcmp(c->rstatus, "NO") == 0) {
            if (!strcasecmp(c->code, "THROTTLED") || !strcasecmp(c->code, "UNAVAILABLE") ||
                !strcasecmp(c->code, "LIMIT") || !strcasecmp(c->code, "INUSE"))
                r = MV_EBUSY;
            else if (!strcasecmp(c->code, "NONEXISTENT"))
                r = MV_ENOTFOUND;
            else if (mode == RUN_LOGIN)
                r = MV_EAUTH;
        }
        if (mode == RUN_LOGIN && c->challenge[0])
            return fail(c, r, "IMAP %s failed: %s %s (server's challenge: %s)", what, c->rstatus,
                        text, c->challenge);
        return fail(c, r, "IMAP %s failed: %s %s", what, c->rstatus, text);
    }
}

/* ------------------------------------------------------------------ commands */

static mv_err send_all(mv_imap *c, const void *data, size_t len)
{
    const char *p = data;
    if (c->broken) return fail(c, MV_ENET, "connection unusable after an earlier error");
    if (!c->wr) return MV_OK;
    while (len > 0) {
        c->ioerr[0] = '\0';
        long n = c->wr(c->io, p, len, c->o.timeout_ms);
        if (n > 0 && (size_t)n <= len) {
            p += n;
            len -= (size_t)n;
            continue;
        }
        c->broken = 1;
        if (n == IO_TIMEOUT)
            return fail(c, MV_ETIMEDOUT, "timed out after %d ms sending to the server",
                        c->o.timeout_ms);
        return fail(c, MV_ENET, "write failed: %s", c->ioerr[0] ? c->ioerr : "transport error");
    }
    return MV_OK;
}

static mv_err cmd_begin(mv_imap *c, sbuf *b)
{
    if (c->broken) return fail(c, MV_ENET, "connection unusable after an earlier error");
    if (c->appending)
        return fail(c, MV_EINVAL, "an APPEND is in progress on this connection (call append_end)");
    snprintf(c->tag, sizeof c->tag, "A%u", ++c->tagno);
    sb_clear(b);
    mv_err e = sb_put(c, b, c->tag, strlen(c->tag));
    return e ? e : sb_putc(c, b, ' ');
}

static mv_err cmd_text(mv_imap *c, sbuf *b, const char *s)
{
    return sb_put(c, b, s, strlen(s));
}

/* 1 if a literal of len bytes may be sent non-synchronising ({len+}, RFC 7888). */
static int use_nonsync(const mv_imap *c, uint64_t len)
{
    if (c->o.no_literal_plus) return 0;
    return mv_imap_has_cap(c, "LITERAL+") || (mv_imap_has_cap(c, "LITERAL-") && len <= 4096);
}

/* Append s as a quoted string, or as a literal when it holds 8-bit bytes. With a
 * synchronising literal the command so far is sent and the "+" awaited. CR/LF is refused. */
static mv_err cmd_astring(mv_imap *c, sbuf *b, const char *s, const char *what, int mode)
{
    size_t len = strlen(s);
    int plain = 1;
    for (size_t i = 0; i < len; i++) {
        unsigned char ch = (unsigned char)s[i];
        if (ch == '\r' || ch == '\n')
            return fail(c, MV_EINVAL, "%s argument contains CR or LF", what);
        if (ch < 0x20 || ch >= 0x7f) plain = 0;
    }
    mv_err e;
    if (plain) {
        if ((e = sb_reserve(c, b, 2 * len + 2)) || (e = sb_putc(c, b, '"'))) return e;
        for (size_t i = 0; i < len; i++) {
            if ((s[i] == '"' || s[i] == '\\') && (e = sb_putc(c, b, '\\'))) return e;
            if ((e = sb_putc(c, b, s[i]))) return e;
        }
        return sb_putc(c, b, '"');
    }
    int nonsync = use_nonsync(c, len);
    char hdr[32];
    snprintf(hdr, sizeof hdr, "{%zu%s}\r\n", len, nonsync ? "+" : "");
    if ((e = cmd_text(c, b, hdr))) return e;
    if (!nonsync) {
        if ((e = send_all(c, b->p, b->len))) return e;
        OPENSSL_cleanse(b->p, b->len);
        sb_clear(b);
        if ((e = run_until(c, c->tag, NULL, NULL, 1, what, mode))) return e;
    }
    return sb_put(c, b, s, len);
}

static mv_err cmd_finish(mv_imap *c, sbuf *b, const char *what, int mode,
                         const mv_imap_fetch_cb *cb, void *ud)
{
    mv_err e = sb_put(c, b, "\r\n", 2);
    if (!e) e = send_all(c, b->p, b->len);
    if (!e) e = run_until(c, c->tag, cb, ud, 0, what, mode);
    return e;
}

static mv_err simple_cmd(mv_imap *c, const char *cmd, const char *what)
{
    sbuf b = {0};
    mv_err e = cmd_begin(c, &b);
    if (!e) e = cmd_text(c, &b, cmd);
    if (!e) e = cmd_finish(c, &b, what, RUN_PLAIN, NULL, NULL);
    sb_free(&b, 0);
    return e;
}

/* ------------------------------------------------------------------ public API */

void mv_imap_opts_default(mv_imap_opts *o)
{
    memset(o, 0, sizeof *o);
    o->port = 993;
    o->tls = MV_TLS_IMPLICIT;
    o->verify = 1;
    o->timeout_ms = 60000;
    o->max_line = 1u << 20;
    o->max_literal = 200u << 20;
}

int mv_tls_mode_parse(const char *s)
{
    if (!s) return -1;
    if (strcasecmp(s, "none") == 0) return MV_TLS_NONE;
    if (strcasecmp(s, "starttls") == 0) return MV_TLS_STARTTLS;
    if (strcasecmp(s, "implicit") == 0) return MV_TLS_IMPLICIT;
    return -1;
}

const char *mv_tls_mode_name(mv_tls_mode m)
{
    switch (m) {
    case MV_TLS_NONE:
        return "none";
    case MV_TLS_STARTTLS:
        return "starttls";
    case MV_TLS_IMPLICIT:
        return "implicit";
    }
    return "unknown";
}

int mv_imap_has_cap(const mv_imap *c, const char *cap)
{
    if (!c || !c->caps || !cap) return 0;
    size_t n = strlen(cap);
    for (const char *p = c->caps; *p;) {
        const char *sp = strchr(p, ' ');
        size_t k = sp ? (size_t)(sp - p) : strlen(p);
        if (k == n && strncasecmp(p, cap, n) == 0) return 1;
        if (!sp) break;
        p = sp + 1;
    }
    return 0;
}

static void imap_free(mv_imap *c)
{
    if (!c) return;
    if (c->ssl) {
        sigpipe_guard g;
        sigpipe_block(&g);
        if (!c->broken) SSL_shutdown(c->ssl); /* non-blocking: one attempt */
        ERR_clear_error();
        sigpipe_restore(&g);
        SSL_free(c->ssl);
    }
    SSL_CTX_free(c->ctx);
    if (c->fd >= 0) close(c->fd);
    free(c->host);
    free(c->rbuf);
    free(c->caps);
    free(c->uids);
    sb_free(&c->text, 0);
    sb_free(&c->s1, 0);
    sb_free(&c->s2, 0);
    sb_free(&c->flags, 0);
    free(c);
}

static mv_imap *imap_new(const mv_imap_opts *o)
{
    mv_imap *c = calloc(1, sizeof *c);
    if (!c) return NULL;
    c->fd = -1;
    if (o)
        c->o = *o;
    else
        mv_imap_opts_default(&c->o);
    mv_imap_opts d;
    mv_imap_opts_default(&d);
    if (c->o.max_line == 0) c->o.max_line = d.max_line;
    if (c->o.max_literal == 0) c->o.max_literal = d.max_literal;
    c->host = c->o.host ? strdup(c->o.host) : NULL;
    c->o.host = c->host;
    c->o.ca_file = NULL; /* only needed during connect; not kept */
    c->rbuf = malloc(RBUF_SIZE);
    if (!c->rbuf || (o && o->host && !c->host)) {
        imap_free(c);
        return NULL;
    }
    return c;
}

mv_err mv_imap_from_io(const mv_imap_opts *o, mv_imap_read_fn rd, mv_imap_write_fn wr, void *io,
                       mv_imap **out)
{
    if (!out || !rd) return MV_EINVAL;
    *out = NULL;
    mv_imap *c = imap_new(o);
    if (!c) return MV_ENOMEM;
    c->rd = rd;
    c->wr = wr;
    c->io = io;
    *out = c;
    return MV_OK;
}

mv_err mv_imap_read_until_tagged(mv_imap *c, const char *tag, const mv_imap_fetch_cb *cb, void *ud,
                                 char *err, size_t errlen)
{
    if (!c || !tag) return mv_seterr(err, errlen, MV_EINVAL, "mv_imap_read_until_tagged: NULL");
    set_ctx(c, err, errlen);
    return run_until(c, tag, cb, ud, 0, "command", RUN_PLAIN);
}

static mv_err read_greeting(mv_imap *c)
{
    int kind = 0;
    mv_err e = read_response(c, NULL, NULL, &kind);
    if (e) {
        c->broken = 1;
        return e;
    }
    if (kind == R_UNTAGGED && strcasecmp(c->ukind, "OK") == 0) return MV_OK;
    if (kind == R_UNTAGGED && strcasecmp(c->ukind, "PREAUTH") == 0) {
        c->preauth = 1;
        return MV_OK;
    }
    c->broken = 1;
    return fail(c, MV_EPROTO, "unexpected greeting from %s:%d", c->host, c->o.port);
}

mv_err mv_imap_connect(const mv_imap_opts *o, mv_imap **out, char *err, size_t errlen)
{
    if (!out) return mv_seterr(err, errlen, MV_EINVAL, "mv_imap_connect: NULL out");
    *out = NULL;
    if (!o || !o->host || !o->host[0])
        return mv_seterr(err, errlen, MV_EINVAL, "imap: host is not set");
    if (o->port < 1 || o->port > 65535)
        return mv_seterr(err, errlen, MV_EINVAL, "imap: bad port %d", o->port);
    if (o->tls != MV_TLS_NONE && o->tls != MV_TLS_STARTTLS && o->tls != MV_TLS_IMPLICIT)
        return mv_seterr(err, errlen, MV_EINVAL, "imap: bad tls mode %d", (int)o->tls);
    mv_imap *c = imap_new(o);
    if (!c) return mv_seterr(err, errlen, MV_ENOMEM, "out of memory");
    c->o.ca_file = o->ca_file; /* used by tls_start below, cleared before returning */
    set_ctx(c, err, errlen);
    c->rd = sock_read;
    c->wr = sock_write;
    c->io = c;
    mv_err e = tcp_connect(c);
    if (!e && o->tls == MV_TLS_IMPLICIT) e = tls_start(c);
    if (!e) e = read_greeting(c);
    if (!e && o->tls == MV_TLS_STARTTLS) {
        if (c->preauth)
            e = fail(c, MV_EPROTO, "%s:%d sent PREAUTH; refusing to continue without STARTTLS",
                     c->host, c->o.port);
        if (!e && !c->caps) e = simple_cmd(c, "CAPABILITY", "CAPABILITY");
        if (!e && !mv_imap_has_cap(c, "STARTTLS"))
            e = fail(c, MV_EPROTO, "%s:%d does not advertise STARTTLS", c->host, c->o.port);
        if (!e) e = simple_cmd(c, "STARTTLS", "STARTTLS");
        if (!e && c->rpos < c->rlen) {
            c->broken = 1;
            e = fail(c, MV_EPROTO, "server sent data after its STARTTLS answer (injection?)");
        }
        if (!e) {
            free(c->caps); /* learnt in clear text: not trusted */
            c->caps = NULL;
            e = tls_start(c);
        }
    }
    if (!e && !c->caps) e = simple_cmd(c, "CAPABILITY", "CAPABILITY");
    c->o.ca_file = NULL;
    if (e) {
        imap_free(c);
        return e;
    }
    mv_debug("imap connected", " host=%s port=%d tls=%s", c->host, c->o.port,
             mv_tls_mode_name(c->o.tls));
    c->err = NULL;
    c->errlen = 0;
    *out = c;
    return MV_OK;
}

/* AUTHENTICATE mech with an initial response (raw, base64-encoded here): in the command with
 * SASL-IR (RFC 4959), else after the server's empty challenge. */
static mv_err sasl_ir(mv_imap *c, const char *mech, const unsigned char *raw, size_t rl)
{
    size_t bl = 4 * ((rl + 2) / 3) + 1;
    unsigned char *b64 = rl <= INT_MAX ? malloc(bl) : NULL;
    char what[48];
    snprintf(what, sizeof what, "AUTHENTICATE %s", mech);
    sbuf b = {0};
    mv_err e = MV_OK;
    c->challenge[0] = '\0';
    if (!b64) return fail(c, MV_ENOMEM, "out of memory");
    EVP_EncodeBlock(b64, raw, (int)rl);
    if ((e = sb_reserve(c, &b, bl + 64)) || (e = cmd_begin(c, &b)) || (e = cmd_text(c, &b, what)))
        goto out;
    if (mv_imap_has_cap(c, "SASL-IR")) {
        if ((e = sb_putc(c, &b, ' ')) || (e = cmd_text(c, &b, (char *)b64))) goto out;
        e = cmd_finish(c, &b, what, RUN_LOGIN, NULL, NULL);
        goto out;
    }
    if ((e = sb_put(c, &b, "\r\n", 2)) || (e = send_all(c, b.p, b.len)) ||
        (e = run_until(c, c->tag, NULL, NULL, 1, what, RUN_LOGIN)))
        goto out;
    OPENSSL_cleanse(b.p, b.cap);
    sb_clear(&b);
    if ((e = cmd_text(c, &b, (char *)b64)) || (e = cmd_finish(c, &b, what, RUN_LOGIN, NULL, NULL)))
        goto out;
out:
    OPENSSL_cleanse(b64, bl);
    free(b64);
    sb_free(&b, 1);
    return e;
}

static mv_err login_plain(mv_imap *c, const char *user, const char *pass)
{
    size_t ul = strlen(user), pl = strlen(pass), rl = ul + pl + 2;
    unsigned char *raw = malloc(rl);
    if (!raw) return fail(c, MV_ENOMEM, "out of memory");
    raw[0] = '\0'; /* authzid empty, authcid, password (RFC 4616) */
    memcpy(raw + 1, user, ul);
    raw[1 + ul] = '\0';
    memcpy(raw + 2 + ul, pass, pl);
    mv_err e = sasl_ir(c, "PLAIN", raw, rl);
    OPENSSL_cleanse(raw, rl);
    free(raw);
    return e;
}

static mv_err login_login(mv_imap *c, const char *user, const char *pass)
{
    sbuf b = {0};
    /* reserve up front so no realloc leaves a copy of the password behind */
    mv_err e = sb_reserve(c, &b, 2 * (strlen(user) + strlen(pass)) + 64);
    if (!e) e = cmd_begin(c, &b);
    if (!e) e = cmd_text(c, &b, "LOGIN ");
    if (!e) e = cmd_astring(c, &b, user, "LOGIN", RUN_LOGIN);
    if (!e) e = sb_putc(c, &b, ' ');
    if (!e) e = cmd_astring(c, &b, pass, "LOGIN", RUN_LOGIN);
    if (!e) e = cmd_finish(c, &b, "LOGIN", RUN_LOGIN, NULL, NULL);
    sb_free(&b, 1);
    return e;
}

/* Capabilities usually change after authentication: ask again unless the server said them. */
static mv_err after_login(mv_imap *c, unsigned gen)
{
    if (gen != c->caps_gen) return MV_OK;
    free(c->caps);
    c->caps = NULL;
    return simple_cmd(c, "CAPABILITY", "CAPABILITY");
}

mv_err mv_imap_login(mv_imap *c, const char *user, const char *pass, char *err, size_t errlen)
{
    if (!c || !user || !pass)
        return mv_seterr(err, errlen, MV_EINVAL, "mv_imap_login: NULL argument");
    set_ctx(c, err, errlen);
    if (c->preauth) return MV_OK;
    if (!user[0]) return fail(c, MV_EINVAL, "LOGIN: empty user name");
    unsigned gen = c->caps_gen;
    mv_err e;
    if (mv_imap_has_cap(c, "AUTH=PLAIN")) {
        mv_debug("imap authenticating", " mech=%s", "PLAIN");
        e = login_plain(c, user, pass);
    } else if (mv_imap_has_cap(c, "LOGINDISABLED")) {
        return fail(c, MV_EAUTH,
                    "server advertises LOGINDISABLED and no AUTH=PLAIN (use TLS/STARTTLS?)");
    } else {
        mv_debug("imap authenticating", " mech=%s", "LOGIN");
        e = login_login(c, user, pass);
    }
    return e ? e : after_login(c, gen);
}

mv_err mv_imap_xoauth2(mv_imap *c, const char *user, const char *token, char *err, size_t errlen)
{
    if (!c || !user || !token)
        return mv_seterr(err, errlen, MV_EINVAL, "mv_imap_xoauth2: NULL argument");
    set_ctx(c, err, errlen);
    if (!user[0] || mv_has_ctl(user) || !token[0] || mv_has_ctl(token))
        return fail(c, MV_EINVAL, "AUTHENTICATE XOAUTH2: empty user or token, or control bytes");
    if (!mv_imap_has_cap(c, "AUTH=XOAUTH2"))
        return fail(c, MV_EAUTH, "the server does not offer AUTHENTICATE XOAUTH2");
    unsigned gen = c->caps_gen;
    /* "user=" user ^A "auth=Bearer " token ^A ^A */
    char *raw = mv_aprintf("user=%s\001auth=Bearer %s\001\001", user, token);
    if (!raw) return fail(c, MV_ENOMEM, "out of memory");
    mv_debug("imap authenticating", " mech=%s", "XOAUTH2");
    mv_err e = sasl_ir(c, "XOAUTH2", (const unsigned char *)raw, strlen(raw));
    mv_free_secret(raw);
    return e ? e : after_login(c, gen);
}

const char *mv_imap_challenge(const mv_imap *c)
{
    return c && c->challenge[0] && strcmp(c->challenge, "-") ? c->challenge : NULL;
}

static int list_nop(void *ud, const char *name, char delim, const char *flags)
{
    (void)ud, (void)name, (void)delim, (void)flags;
    return 0;
}

mv_err mv_imap_list(mv_imap *c, mv_imap_list_fn cb, void *ud, char *err, size_t errlen)
{
    if (!c) return mv_seterr(err, errlen, MV_EINVAL, "mv_imap_list: NULL");
    set_ctx(c, err, errlen);
    c->list_cb = cb ? cb : list_nop;
    c->list_ud = ud;
    c->list_stop = 0;
    mv_err e = simple_cmd(c, "LIST \"\" \"*\"", "LIST");
    c->list_cb = NULL;
    c->list_ud = NULL;
    if (!e && c->list_stop) e = fail(c, MV_ECANCEL, "LIST stopped by the caller");
    return e;
}

mv_err mv_imap_examine(mv_imap *c, const char *mailbox, mv_imap_mailbox *info, char *err,
                       size_t errlen)
{
    if (!c || !mailbox || !info)
        return mv_seterr(err, errlen, MV_EINVAL, "mv_imap_examine: NULL argument");
    set_ctx(c, err, errlen);
    if (!mailbox[0]) return fail(c, MV_EINVAL, "EXAMINE: empty mailbox name");
    memset(&c->mb, 0, sizeof c->mb);
    c->have_uidvalidity = 0;
    sbuf b = {0};
    mv_err e = cmd_begin(c, &b);
    if (!e) e = cmd_text(c, &b, "EXAMINE ");
    if (!e) e = cmd_astring(c, &b, mailbox, "EXAMINE", RUN_PLAIN);
    if (!e) e = cmd_finish(c, &b, "EXAMINE", RUN_PLAIN, NULL, NULL);
    sb_free(&b, 0);
    if (!e && !c->have_uidvalidity) e = fail(c, MV_EPROTO, "EXAMINE: server sent no UIDVALIDITY");
    if (!e) *info = c->mb;
    return e;
}

static int cmp_u32(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

mv_err mv_imap_uids_from(mv_imap *c, uint32_t from, uint32_t **uids, size_t *n, char *err,
                         size_t errlen)
{
    if (!c || !uids || !n) return mv_seterr(err, errlen, MV_EINVAL, "mv_imap_uids_from: NULL");
    *uids = NULL;
    *n = 0;
    set_ctx(c, err, errlen);
    if (from == 0) from = 1; /* UID 0 does not exist; "0:*" is BAD on some servers */
    char cmd[64];
    snprintf(cmd, sizeof cmd, "UID SEARCH UID %" PRIu32 ":*", from);
    c->collect = 1;
    c->nuids = 0;
    mv_err e = simple_cmd(c, cmd, "UID SEARCH");
    c->collect = 0;
    if (!e) {
        size_t k = 0;
        if (c->nuids > 1) qsort(c->uids, c->nuids, sizeof *c->uids, cmp_u32);
        for (size_t i = 0; i < c->nuids; i++) /* drop the n:* quirk and duplicates */
            if (c->uids[i] >= from && (k == 0 || c->uids[k - 1] != c->uids[i]))
                c->uids[k++] = c->uids[i];
        if (k > 0) {
            *uids = c->uids;
            *n = k;
            c->uids = NULL;
            c->capuids = 0;
        }
    }
    c->nuids = 0;
    return e;
}

mv_err mv_imap_fetch_range(mv_imap *c, uint32_t first, uint32_t last, const mv_imap_fetch_cb *cb,
                           void *ud, char *err, size_t errlen)
{
    if (!c) return mv_seterr(err, errlen, MV_EINVAL, "mv_imap_fetch_range: NULL");
    set_ctx(c, err, errlen);
    if (first == 0 || (last != 0 && last < first))
        return fail(c, MV_EINVAL, "UID FETCH: bad range %" PRIu32 ":%" PRIu32, first, last);
    char cmd[128], hi[16] = "*";
    if (last) snprintf(hi, sizeof hi, "%" PRIu32, last);
    snprintf(cmd, sizeof cmd,
             "UID FETCH %" PRIu32 ":%s (UID FLAGS INTERNALDATE RFC822.SIZE BODY.PEEK[])", first,
             hi);
    sbuf b = {0};
    mv_err e = cmd_begin(c, &b);
    if (!e) e = cmd_text(c, &b, cmd);
    if (!e) e = cmd_finish(c, &b, "UID FETCH", RUN_PLAIN, cb, ud);
    sb_free(&b, 0);
    return e;
}

void mv_imap_close(mv_imap *c)
{
    if (!c) return;
    set_ctx(c, NULL, 0);
    if (c->appending) c->broken = 1; /* inside a literal: LOGOUT would become message bytes */
    if (!c->broken && c->rd) {
        int t = c->o.timeout_ms;
        if (t <= 0 || t > LOGOUT_TIMEOUT_MS) c->o.timeout_ms = LOGOUT_TIMEOUT_MS;
        (void)simple_cmd(c, "LOGOUT", "LOGOUT"); /* "* BYE" then OK; errors don't matter */
        c->o.timeout_ms = t;
    }
    imap_free(c);
}

/* ------------------------------------------------------------------ write operations */

/* Value of a "NAME=number" capability; 1 if present with a number. */
static int cap_number(const mv_imap *c, const char *name, uint64_t *v)
{
    if (!c->caps) return 0;
    size_t n = strlen(name);
    for (const char *p = c->caps; *p;) {
        const char *sp = strchr(p, ' ');
        size_t k = sp ? (size_t)(sp - p) : strlen(p);
        char num[24];
        if (k > n + 1 && k - n - 1 < sizeof num && p[n] == '=' && strncasecmp(p, name, n) == 0) {
            snprintf(num, sizeof num, "%.*s", (int)(k - n - 1), p + n + 1);
            if (parse_u64(num, UINT64_MAX, v) == 0) return 1;
        }
        if (!sp) break;
        p = sp + 1;
    }
    return 0;
}

typedef struct delim_seen {
    int seen;
    char delim;
} delim_seen;

static int delim_cb(void *ud, const char *name, char delim, const char *flags)
{
    delim_seen *d = ud;
    (void)name, (void)flags;
    if (!d->seen) {
        d->seen = 1;
        d->delim = delim;
    }
    return 0;
}

/* LIST "" <pattern>, responses to cb. */
static mv_err list_pattern(mv_imap *c, const char *pattern, mv_imap_list_fn cb, void *ud)
{
    sbuf b = {0};
    c->list_cb = cb;
    c->list_ud = ud;
    c->list_stop = 0;
    mv_err e = cmd_begin(c, &b);
    if (!e) e = cmd_text(c, &b, "LIST \"\" ");
    if (!e) e = cmd_astring(c, &b, pattern, "LIST", RUN_PLAIN);
    if (!e) e = cmd_finish(c, &b, "LIST", RUN_PLAIN, NULL, NULL);
    sb_free(&b, 0);
    c->list_cb = NULL;
    c->list_ud = NULL;
    return e;
}

mv_err mv_imap_delimiter(mv_imap *c, char *delim, char *err, size_t errlen)
{
    if (!c || !delim) return mv_seterr(err, errlen, MV_EINVAL, "mv_imap_delimiter: NULL argument");
    set_ctx(c, err, errlen);
    delim_seen d = {0, 0};
    mv_err e = list_pattern(c, "", delim_cb, &d);
    if (e) return e;
    if (!d.seen)
        mv_debug("imap LIST \"\" \"\" returned no data; assuming a flat namespace", "%s", "");
    *delim = d.seen ? d.delim : '\0';
    return MV_OK;
}

typedef struct name_seen {
    const char *name;
    int found;
} name_seen;

static int has_flag(const char *flags, const char *flag)
{
    size_t n = strlen(flag);
    for (const char *p = flags; *p;) {
        const char *sp = strchr(p, ' ');
        size_t k = sp ? (size_t)(sp - p) : strlen(p);
        if (k == n && strncasecmp(p, flag, n) == 0) return 1;
        if (!sp) break;
        p = sp + 1;
    }
    return 0;
}

static int name_cb(void *ud, const char *name, char delim, const char *flags)
{
    name_seen *s = ud;
    (void)delim;
    int same = strcmp(name, s->name) == 0 ||
               (strcasecmp(name, "INBOX") == 0 && strcasecmp(s->name, "INBOX") == 0);
    if (same && !has_flag(flags, "\\NonExistent")) s->found = 1;
    return 0;
}

mv_err mv_imap_create(mv_imap *c, const char *mailbox, char *err, size_t errlen)
{
    if (!c || !mailbox) return mv_seterr(err, errlen, MV_EINVAL, "mv_imap_create: NULL argument");
    set_ctx(c, err, errlen);
    if (!mailbox[0]) return fail(c, MV_EINVAL, "CREATE: empty mailbox name");
    c->rstatus[0] = '\0';
    sbuf b = {0};
    mv_err e = cmd_begin(c, &b);
    if (!e) e = cmd_text(c, &b, "CREATE ");
    /* refusals read like APPEND's: a full or read-only destination is named as such */
    if (!e) e = cmd_astring(c, &b, mailbox, "CREATE", RUN_APPEND);
    if (!e) e = cmd_finish(c, &b, "CREATE", RUN_APPEND, NULL, NULL);
    sb_free(&b, 0);
    if (!e || c->broken || strcmp(c->rstatus, "NO") != 0) return e;
    if (strcasecmp(c->code, "ALREADYEXISTS") == 0) {
        if (err && errlen) err[0] = '\0';
        return MV_OK;
    }
    /* servers without RFC 5530 codes: the mailbox exists if LIST shows it */
    char saved[MV_ERRLEN];
    snprintf(saved, sizeof saved, "%s", err ? err : "");
    name_seen s = {mailbox, 0};
    mv_err le = list_pattern(c, mailbox, name_cb, &s);
    if (le && c->broken) return le;
    if (!le && s.found) {
        mv_debug("imap CREATE refused but the mailbox exists", "%s", "");
        if (err && errlen) err[0] = '\0';
        return MV_OK;
    }
    if (err && errlen) snprintf(err, errlen, "%s", saved);
    return e;
}

mv_err mv_imap_search_header(mv_imap *c, const char *field, const char *value, size_t *count,
                             char *err, size_t errlen)
{
    if (!c || !field || !value || !count)
        return mv_seterr(err, errlen, MV_EINVAL, "mv_imap_search_header: NULL argument");
    *count = 0;
    set_ctx(c, err, errlen);
    if (!field[0]) return fail(c, MV_EINVAL, "UID SEARCH: empty header field name");
    int eight = 0;
    for (const char *p = field; *p; p++)
        eight |= (unsigned char)*p >= 0x80;
    for (const char *p = value; *p; p++)
        eight |= (unsigned char)*p >= 0x80;
    sbuf b = {0};
    mv_err e = cmd_begin(c, &b);
    if (!e) e = cmd_text(c, &b, eight ? "UID SEARCH CHARSET UTF-8 HEADER " : "UID SEARCH HEADER ");
    if (!e) e = cmd_astring(c, &b, field, "UID SEARCH", RUN_PLAIN);
    if (!e) e = sb_putc(c, &b, ' ');
    if (!e) e = cmd_astring(c, &b, value, "UID SEARCH", RUN_PLAIN);
    if (!e) {
        c->collect = 1;
        c->nuids = 0;
        e = cmd_finish(c, &b, "UID SEARCH", RUN_PLAIN, NULL, NULL);
        c->collect = 0;
    }
    sb_free(&b, 0);
    if (!e) {
        size_t k = 0;
        if (c->nuids > 1) qsort(c->uids, c->nuids, sizeof *c->uids, cmp_u32);
        for (size_t i = 0; i < c->nuids; i++)
            if (k == 0 || c->uids[k - 1] != c->uids[i]) c->uids[k++] = c->uids[i];
        *count = k;
    }
    c->nuids = 0;
    return e;
}

mv_err mv_imap_search_size(mv_imap *c, uint64_t size, uint32_t **uids, size_t *n, char *err,
                           size_t errlen)
{
    if (!c || !uids || !n) return mv_seterr(err, errlen, MV_EINVAL, "mv_imap_search_size: NULL");
    *uids = NULL;
    *n = 0;
    set_ctx(c, err, errlen);
    char q[96];
    if (size == 0)
        snprintf(q, sizeof q, "UID SEARCH SMALLER 1");
    else
        snprintf(q, sizeof q, "UID SEARCH LARGER %" PRIu64 " SMALLER %" PRIu64, size - 1, size + 1);
    c->collect = 1;
    c->nuids = 0;
    mv_err e = simple_cmd(c, q, "UID SEARCH");
    c->collect = 0;
    if (!e && c->nuids) {
        qsort(c->uids, c->nuids, sizeof *c->uids, cmp_u32);
        size_t k = 0;
        for (size_t i = 0; i < c->nuids; i++)
            if (k == 0 || c->uids[k - 1] != c->uids[i]) c->uids[k++] = c->uids[i];
        if (!(*uids = malloc(k * sizeof **uids)))
            e = fail(c, MV_ENOMEM, "out of memory");
        else {
            memcpy(*uids, c->uids, k * sizeof **uids);
            *n = k;
        }
    }
    c->nuids = 0;
    return e;
}

/* flag-keyword / "\" atom (RFC 3501 flag): atom chars without list-wildcards, quoted-specials
 * and resp-specials. */
static int flag_valid(const char *f, size_t n)
{
    size_t i = n && f[0] == '\\' ? 1 : 0;
    if (i == n) return 0;
    for (; i < n; i++) {
        unsigned char ch = (unsigned char)f[i];
        if (ch >= 0x80 || !is_atom_ch(ch) || ch == '%' || ch == '*' || ch == ']' || ch == '\\')
            return 0;
    }
    return 1;
}

/* The flags of an APPEND: \Recent dropped, invalid flags dropped with a warning. */
static mv_err put_append_flags(mv_imap *c, sbuf *b, const char *flags)
{
    mv_err e = sb_putc(c, b, '(');
    int first = 1;
    for (const char *p = flags; !e && *p;) {
        if (*p == ' ') {
            p++;
            continue;
        }
        size_t n = 0;
        while (p[n] && p[n] != ' ')
            n++;
        if (n == 7 && strncasecmp(p, "\\Recent", 7) == 0) {
            /* not allowed in APPEND */
        } else if (!flag_valid(p, n)) {
            char shown[48];
            snprintf(shown, sizeof shown, "%.*s", n > 40 ? 40 : (int)n, p);
            mv_sanitize(shown);
            for (char *q = shown; *q; q++) /* keep the log line's quoting intact */
                if (*q == '"' || *q == '\\') *q = '?';
            mv_warn("imap APPEND: dropping an invalid flag", " flag=\"%s\"", shown);
        } else {
            if (!first) e = sb_putc(c, b, ' ');
            if (!e) e = sb_put(c, b, p, n);
            first = 0;
        }
        p += n;
    }
    return e ? e : sb_putc(c, b, ')');
}

/* One message's part of an APPEND: " (flags) "date" {size[+]}\r\n" (the leading space is the
 * caller's); *nonsync says whether the literal may follow without the server's "+". */
static mv_err append_message_opts(mv_imap *c, sbuf *b, const char *flags, int64_t internaldate,
                                  uint64_t size, int *nonsync)
{
    uint64_t limit = 0;
    if (cap_number(c, "APPENDLIMIT", &limit) && size > limit)
        return fail(c, MV_ETOOBIG,
                    "APPEND: message of %" PRIu64
                    " bytes exceeds the server's APPENDLIMIT (%" PRIu64 " bytes)",
                    size, limit);
    char date[48] = "";
    if (internaldate != 0) {
        static const char mon[12][4] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                        "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
        time_t t = (time_t)internaldate;
        struct tm tm;
        if ((int64_t)t != internaldate || !gmtime_r(&t, &tm) || tm.tm_year < 1 - 1900 ||
            tm.tm_year > 9999 - 1900)
            return fail(c, MV_EINVAL, "APPEND: INTERNALDATE %" PRId64 " out of range",
                        internaldate);
        snprintf(date, sizeof date, " \"%02d-%s-%04d %02d:%02d:%02d +0000\"", tm.tm_mday,
                 mon[tm.tm_mon], tm.tm_year + 1900, tm.tm_hour, tm.tm_min, tm.tm_sec);
    }
    *nonsync = use_nonsync(c, size);
    char hdr[48];
    snprintf(hdr, sizeof hdr, " {%" PRIu64 "%s}\r\n", size, *nonsync ? "+" : "");
    mv_err e = put_append_flags(c, b, flags ? flags : "");
    if (!e) e = cmd_text(c, b, date);
    if (!e) e = cmd_text(c, b, hdr);
    return e;
}

mv_err mv_imap_append_begin(mv_imap *c, const char *mailbox, const char *flags,
                            int64_t internaldate, uint64_t size, char *err, size_t errlen)
{
    if (!c || !mailbox)
        return mv_seterr(err, errlen, MV_EINVAL, "mv_imap_append_begin: NULL argument");
    set_ctx(c, err, errlen);
    if (c->appending)
        return fail(c, MV_EINVAL, "APPEND: another APPEND is in progress on this connection");
    if (!mailbox[0]) return fail(c, MV_EINVAL, "APPEND: empty mailbox name");
    int nonsync = 0;
    sbuf b = {0};
    mv_err e = cmd_begin(c, &b);
    if (!e) e = cmd_text(c, &b, "APPEND ");
    if (!e) e = cmd_astring(c, &b, mailbox, "APPEND", RUN_APPEND);
    if (!e) e = sb_putc(c, &b, ' ');
    if (!e) e = append_message_opts(c, &b, flags, internaldate, size, &nonsync);
    if (!e) e = send_all(c, b.p, b.len);
    if (!e && !nonsync) e = run_until(c, c->tag, NULL, NULL, 1, "APPEND", RUN_APPEND);
    sb_free(&b, 0);
    if (e) return e;
    c->appending = 1;
    c->app_left = size;
    return MV_OK;
}

mv_err mv_imap_append_next(mv_imap *c, const char *flags, int64_t internaldate, uint64_t size,
                           char *err, size_t errlen)
{
    if (!c) return mv_seterr(err, errlen, MV_EINVAL, "mv_imap_append_next: NULL argument");
    set_ctx(c, err, errlen);
    if (!c->appending) return fail(c, MV_EINVAL, "APPEND: no APPEND in progress");
    if (c->app_left)
        return fail(c, MV_EINVAL, "APPEND: %" PRIu64 " bytes of the previous message not sent",
                    c->app_left);
    if (!mv_imap_has_cap(c, "MULTIAPPEND"))
        return fail(c, MV_EINVAL, "APPEND: the server does not offer MULTIAPPEND");
    int nonsync = 0;
    sbuf b = {0};
    mv_err e = sb_putc(c, &b, ' ');
    if (!e) e = append_message_opts(c, &b, flags, internaldate, size, &nonsync);
    if (e) { /* nothing sent: the command can still be finished */
        sb_free(&b, 0);
        return e;
    }
    e = send_all(c, b.p, b.len);
    if (!e && !nonsync) e = run_until(c, c->tag, NULL, NULL, 1, "APPEND", RUN_APPEND);
    sb_free(&b, 0);
    if (e) {
        c->appending = 0; /* refused instead of "+": the command is over (or the link broken) */
        return e;
    }
    c->app_left = size;
    return MV_OK;
}

mv_err mv_imap_append_data(mv_imap *c, const void *p, size_t n, char *err, size_t errlen)
{
    if (!c || (!p && n))
        return mv_seterr(err, errlen, MV_EINVAL, "mv_imap_append_data: NULL argument");
    set_ctx(c, err, errlen);
    if (!c->appending) return fail(c, MV_EINVAL, "APPEND: no APPEND in progress");
    if ((uint64_t)n > c->app_left) {
        c->appending = 0;
        c->broken = 1; /* the literal cannot be taken back */
        return fail(c, MV_EINVAL,
                    "APPEND: %zu bytes given but only %" PRIu64
                    " left of the announced message size; connection abandoned",
                    n, c->app_left);
    }
    mv_err e = send_all(c, p, n);
    if (e) {
        c->appending = 0; /* send_all marked the connection broken */
        return e;
    }
    c->app_left -= n;
    return MV_OK;
}

mv_err mv_imap_append_end(mv_imap *c, char *err, size_t errlen)
{
    if (!c) return mv_seterr(err, errlen, MV_EINVAL, "mv_imap_append_end: NULL argument");
    set_ctx(c, err, errlen);
    if (!c->appending) return fail(c, MV_EINVAL, "APPEND: no APPEND in progress");
    c->appending = 0;
    if (c->app_left) {
        c->broken = 1;
        return fail(c, MV_EINVAL,
                    "APPEND: message ended %" PRIu64
                    " bytes short of its announced size; connection abandoned",
                    c->app_left);
    }
    mv_err e = send_all(c, "\r\n", 2);
    if (!e) e = run_until(c, c->tag, NULL, NULL, 0, "APPEND", RUN_APPEND);
    return e;
}

int mv_imap_utf7_encode(const char *utf8, char *out, size_t outlen)
{
    static const char b64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+,";
    if (!out || outlen == 0) return -1;
    out[0] = '\0';
    if (!utf8) return -1;
    const unsigned char *s = (const unsigned char *)utf8;
    size_t o = 0;
    int inb64 = 0, nbits = 0;
    uint32_t bits = 0;
#define U7PUT(ch)                                                                                  \
    do {                                                                                           \
        if (o + 1 >= outlen) goto bad;                                                             \
        out[o++] = (char)(ch);                                                                     \
    } while (0)
    while (*s) {
        unsigned char ch = *s;
        if (ch >= 0x20 && ch <= 0x7e) {
            if (inb64) {
                if (nbits) U7PUT(b64[(bits << (6 - nbits)) & 0x3f]);
                U7PUT('-');
                inb64 = 0, nbits = 0, bits = 0;
            }
            U7PUT(ch);
            if (ch == '&') U7PUT('-');
            s++;
            continue;
        }
        uint32_t cp, min = 0;
        int n;
        if (ch < 0x80)
            cp = ch, n = 1;
        else if ((ch & 0xe0) == 0xc0)
            cp = ch & 0x1fu, n = 2, min = 0x80;
        else if ((ch & 0xf0) == 0xe0)
            cp = ch & 0x0fu, n = 3, min = 0x800;
        else if ((ch & 0xf8) == 0xf0)
            cp = ch & 0x07u, n = 4, min = 0x10000;
        else
            goto bad;
        for (int i = 1; i < n; i++) { /* a NUL fails this test: no read past the end */
            if ((s[i] & 0xc0) != 0x80) goto bad;
            cp = (cp << 6) | (s[i] & 0x3fu);
        }
        if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) goto bad;
        s += n;
        if (!inb64) {
            U7PUT('&');
            inb64 = 1;
        }
        uint32_t units[2];
        int nu = 1;
        if (cp >= 0x10000) {
            cp -= 0x10000;
            units[0] = 0xd800 + (cp >> 10);
            units[1] = 0xdc00 + (cp & 0x3ff);
            nu = 2;
        } else {
            units[0] = cp;
        }
        for (int u = 0; u < nu; u++) {
            bits = (bits << 16) | units[u];
            nbits += 16;
            while (nbits >= 6) {
                U7PUT(b64[(bits >> (nbits - 6)) & 0x3f]);
                nbits -= 6;
            }
            bits &= (1u << nbits) - 1;
        }
    }
    if (inb64) {
        if (nbits) U7PUT(b64[(bits << (6 - nbits)) & 0x3f]);
        U7PUT('-');
    }
#undef U7PUT
    out[o] = '\0';
    return 0;
bad:
    out[0] = '\0';
    return -1;
}

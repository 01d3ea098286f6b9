/* testsrv.c - the scripted loopback HTTP/1.1 server of the unit tests (see testsrv.h). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#include "testsrv.h"

struct tsrv {
    int lfd, port, wake[2];
    pthread_t th;
    tsrv_handler h;
    void *ud;
    pthread_mutex_t mu;
    int nreq, naccept;
    tsrv_req log[TSRV_MAXLOG];
    tsrv_req cur;  /* the request being parsed (server thread only) */
    char base[64]; /* http://127.0.0.1:PORT */
};

typedef struct conn {
    int fd, hung;
    char *in;
    size_t len, cap;
} conn;

static void send_all(int fd, const void *p, size_t n)
{
    const char *c = p;
    while (n > 0) {
        ssize_t w = send(fd, c, n, MSG_NOSIGNAL);
        if (w <= 0) {
            if (w < 0 && errno == EINTR) continue;
            return;
        }
        c += w;
        n -= (size_t)w;
    }
}

static void send_piecewise(int fd, const char *p, size_t n, size_t piece)
{
    if (!piece) piece = n ? n : 1;
    for (size_t off = 0; off < n; off += piece)
        send_all(fd, p + off, n - off < piece ? n - off : piece);
}

static void send_chunked(int fd, const char *p, size_t n, size_t piece)
{
    if (!piece) piece = 4096;
    for (size_t off = 0; off < n; off += piece) {
        size_t k = n - off < piece ? n - off : piece;
        char ch[32];
        int m = snprintf(ch, sizeof ch, "%zx\r\n", k);
        send_all(fd, ch, (size_t)m);
        send_all(fd, p + off, k);
        send_all(fd, "\r\n", 2);
    }
    send_all(fd, "0\r\n\r\n", 5);
}

const char *tsrv_header(const tsrv_req *q, const char *name, char *out, size_t len)
{
    out[0] = '\0';
    size_t nl = strlen(name);
    for (const char *p = q->head; *p;) {
        const char *eol = strstr(p, "\r\n");
        if (!eol) break;
        if ((size_t)(eol - p) > nl && !strncasecmp(p, name, nl) && p[nl] == ':') {
            const char *v = p + nl + 1;
            while (*v == ' ')
                v++;
            size_t vl = (size_t)(eol - v);
            if (vl >= len) vl = len - 1;
            memcpy(out, v, vl);
            out[vl] = '\0';
            break;
        }
        p = eol + 2;
    }
    return out;
}

/* Sends r on c. Returns 0 to keep the connection, -1 to close it. */
static int answer(conn *c, tsrv_resp *r)
{
    if (r->mode == TSRV_HANG) {
        c->hung = 1;
        return 0;
    }
    if (!r->body) r->body = "";
    if (!r->len) r->len = strlen(r->body);
    char ct[128] = "", head[1024];
    if (r->ctype) snprintf(ct, sizeof ct, "Content-Type: %s\r\n", r->ctype);
    int n;
    if (r->mode == TSRV_CHUNKED)
        n = snprintf(head, sizeof head, "HTTP/1.1 %d X\r\n%sTransfer-Encoding: chunked\r\n%s\r\n",
                     r->status, ct, r->headers);
    else
        n = snprintf(head, sizeof head, "HTTP/1.1 %d X\r\n%sContent-Length: %zu\r\n%s\r\n",
                     r->status, ct, r->len, r->headers);
    send_all(c->fd, head, (size_t)n);
    switch (r->mode) {
    case TSRV_TRUNCATE:
        send_all(c->fd, r->body, r->n < r->len ? r->n : r->len);
        return -1;
    case TSRV_CHUNKED:
        send_chunked(c->fd, r->body, r->len, r->n);
        break;
    case TSRV_PIECES:
        send_piecewise(c->fd, r->body, r->len, r->n);
        break;
    default:
        send_all(c->fd, r->body, r->len);
        break;
    }
    return 0;
}

/* Serves every complete request in c->in. Returns 0 to keep the connection, -1 to close it. */
static int serve(tsrv *s, conn *c)
{
    tsrv_req *q = &s->cur;
    for (;;) {
        if (c->hung) {
            c->len = 0;
            return 0;
        }
        char *end = NULL;
        for (size_t i = 0; i + 4 <= c->len && !end; i++)
            if (!memcmp(c->in + i, "\r\n\r\n", 4)) end = c->in + i;
        if (!end) return 0;
        size_t hlen = (size_t)(end - c->in) + 4;
        memset(q, 0, sizeof *q);
        const char *eol = memchr(c->in, '\n', hlen); /* the request line ends before end */
        size_t rl = (size_t)(eol - c->in) + 1;
        char line[TSRV_TARGET_MAX + 16];
        size_t ll = rl < sizeof line - 1 ? rl : sizeof line - 1;
        memcpy(line, c->in, ll);
        line[ll] = '\0';
        sscanf(line, "%7s %2047s", q->method, q->target);
        size_t cp = hlen - rl < sizeof q->head - 1 ? hlen - rl : sizeof q->head - 1;
        memcpy(q->head, c->in + rl, cp);
        char cl[32];
        tsrv_header(q, "Content-Length", cl, sizeof cl);
        size_t blen = cl[0] ? (size_t)strtoul(cl, NULL, 10) : 0;
        if (c->len < hlen + blen) return 0;
        q->body_len = blen;
        size_t bl = blen < sizeof q->body - 1 ? blen : sizeof q->body - 1;
        memcpy(q->body, c->in + hlen, bl);
        memmove(c->in, c->in + hlen + blen, c->len - hlen - blen);
        c->len -= hlen + blen;

        tsrv_resp r;
        memset(&r, 0, sizeof r);
        r.status = 500;
        pthread_mutex_lock(&s->mu);
        if (s->nreq < TSRV_MAXLOG) s->log[s->nreq] = *q;
        s->nreq++;
        s->h(s->ud, q, &r);
        pthread_mutex_unlock(&s->mu);
        if (answer(c, &r) < 0) return -1;
    }
}

static void *srv_main(void *arg)
{
    tsrv *s = arg;
    conn cs[TSRV_MAXCONN];
    int nc = 0;
    for (;;) {
        struct pollfd p[TSRV_MAXCONN + 2];
        p[0].fd = s->wake[0];
        p[0].events = POLLIN;
        p[1].fd = s->lfd;
        p[1].events = nc < TSRV_MAXCONN ? POLLIN : 0;
        for (int i = 0; i < nc; i++) {
            p[i + 2].fd = cs[i].fd;
            p[i + 2].events = POLLIN;
        }
        if (poll(p, (nfds_t)nc + 2, -1) < 0) {
            if (errno == EINTR) continue;
            break;
        }
        if (p[0].revents) break;
        for (int i = nc - 1; i >= 0; i--) {
            if (!p[i + 2].revents) continue;
            conn *c = &cs[i];
            if (c->cap - c->len < 65536) {
                c->cap = c->cap ? c->cap * 2 : 131072;
                c->in = realloc(c->in, c->cap);
            }
            ssize_t n = recv(c->fd, c->in + c->len, c->cap - c->len, 0);
            int drop = n <= 0;
            if (!drop) {
                c->len += (size_t)n;
                drop = serve(s, c) < 0;
            }
            if (drop) {
                close(c->fd);
                free(c->in);
                cs[i] = cs[--nc];
            }
        }
        if (p[1].revents & POLLIN) {
            int fd = accept(s->lfd, NULL, NULL);
            if (fd >= 0) {
                int one = 1; /* head and body go out in separate writes: no Nagle delay */
                setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                pthread_mutex_lock(&s->mu);
                s->naccept++;
                pthread_mutex_unlock(&s->mu);
                cs[nc].fd = fd;
                cs[nc].hung = 0;
                cs[nc].in = NULL;
                cs[nc].len = cs[nc].cap = 0;
                nc++;
            }
        }
    }
    for (int i = 0; i < nc; i++) {
        close(cs[i].fd);
        free(cs[i].in);
    }
    return NULL;
}

tsrv *tsrv_start(tsrv_handler h, void *ud)
{
    tsrv *s = calloc(1, sizeof *s);
    assert_non_null(s);
    s->h = h;
    s->ud = ud;
    pthread_mutex_init(&s->mu, NULL);
    s->lfd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(s->lfd >= 0);
    int one = 1;
    setsockopt(s->lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(bind(s->lfd, (struct sockaddr *)&a, sizeof a), 0);
    socklen_t al = sizeof a;
    assert_int_equal(getsockname(s->lfd, (struct sockaddr *)&a, &al), 0);
    assert_int_equal(listen(s->lfd, 8), 0);
    s->port = ntohs(a.sin_port);
    snprintf(s->base, sizeof s->base, "http://127.0.0.1:%d", s->port);
    assert_int_equal(pipe(s->wake), 0);
    assert_int_equal(pthread_create(&s->th, NULL, srv_main, s), 0);
    return s;
}

void tsrv_stop(tsrv *s)
{
    assert_int_equal(write(s->wake[1], "x", 1), 1);
    pthread_join(s->th, NULL);
    close(s->wake[0]);
    close(s->wake[1]);
    close(s->lfd);
    pthread_mutex_destroy(&s->mu);
    free(s);
}

const char *tsrv_base(const tsrv *s)
{
    return s->base;
}

int tsrv_port(const tsrv *s)
{
    return s->port;
}

void tsrv_lock(tsrv *s)
{
    pthread_mutex_lock(&s->mu);
}

void tsrv_unlock(tsrv *s)
{
    pthread_mutex_unlock(&s->mu);
}

int tsrv_read_int(tsrv *s, const int *p)
{
    pthread_mutex_lock(&s->mu);
    int v = *p;
    pthread_mutex_unlock(&s->mu);
    return v;
}

tsrv_req *tsrv_request(tsrv *s, int i, tsrv_req *out)
{
    pthread_mutex_lock(&s->mu);
    int ok = i >= 0 && i < s->nreq && i < TSRV_MAXLOG;
    if (ok) *out = s->log[i];
    pthread_mutex_unlock(&s->mu);
    assert_true(ok);
    return out;
}

int tsrv_nreq(tsrv *s)
{
    pthread_mutex_lock(&s->mu);
    int n = s->nreq;
    pthread_mutex_unlock(&s->mu);
    return n;
}

int tsrv_naccept(tsrv *s)
{
    pthread_mutex_lock(&s->mu);
    int n = s->naccept;
    pthread_mutex_unlock(&s->mu);
    return n;
}

/* testsrv.h - a scripted HTTP/1.1 server on loopback for unit tests.
 *
 * tsrv_start() binds 127.0.0.1 on an ephemeral port and runs a thread that accepts connections
 * (keep-alive, up to TSRV_MAXCONN at once), parses each complete request into a tsrv_req,
 * appends it to the request log and asks the test's handler for the answer. The handler runs on
 * the server thread with the server's mutex held, so state it shares with the test (behind the
 * user-data pointer) is read and written under tsrv_lock()/tsrv_unlock() by the test.
 *
 * Synchronisation is by the sockets only: a client call returns after the server answered, so
 * what the handler did for that call is visible once the test takes the lock. No sleeps.
 *
 * Setup failures (socket, bind, thread) fail the running cmocka test. */
#ifndef MV_TESTSRV_H
#define MV_TESTSRV_H

#include <stddef.h>

#define TSRV_MAXLOG 64       /* requests kept in the log; later ones are only counted */
#define TSRV_MAXCONN 8       /* connections served at once */
#define TSRV_TARGET_MAX 2048 /* request target, NUL included */
#define TSRV_HEAD_MAX 8192   /* header block after the request line, NUL included */
#define TSRV_BODY_MAX 16384  /* request body kept, NUL included */
#define TSRV_VALUE_MAX 1024  /* a header value as TSRV_HEADER returns it, NUL included */

/* One request as the client sent it. Longer parts are cut to the bounds above. */
typedef struct tsrv_req {
    char method[8];
    char target[TSRV_TARGET_MAX];
    char head[TSRV_HEAD_MAX]; /* header lines after the request line, each ending in \r\n */
    char body[TSRV_BODY_MAX]; /* the first TSRV_BODY_MAX - 1 bytes, NUL-terminated */
    size_t body_len;          /* the whole body's length (Content-Length) */
} tsrv_req;

typedef enum tsrv_mode {
    TSRV_NORMAL = 0, /* the body with Content-Length, in one write */
    TSRV_HANG,       /* no answer; the connection stays open and its input is ignored */
    TSRV_TRUNCATE,   /* Content-Length of the whole body, then n bytes of it, then close */
    TSRV_CHUNKED,    /* Transfer-Encoding: chunked, chunks of n bytes (0: 4096) */
    TSRV_PIECES,     /* Content-Length, the body in writes of n bytes (0: one write) */
} tsrv_mode;

/* The answer, filled in by the handler. It starts as status 500, no body, TSRV_NORMAL. */
typedef struct tsrv_resp {
    int status;
    char headers[512]; /* extra header lines, each ending in \r\n */
    const char *ctype; /* Content-Type; NULL: no such line */
    const char *body;  /* NULL: empty; must stay valid until the answer is sent */
    size_t len;        /* 0: strlen(body) */
    tsrv_mode mode;
    size_t n; /* see tsrv_mode */
} tsrv_resp;

/* Called under the server's mutex for every request, in the order they arrive. */
typedef void (*tsrv_handler)(void *ud, const tsrv_req *q, tsrv_resp *r);

typedef struct tsrv tsrv;

tsrv *tsrv_start(tsrv_handler h, void *ud);
/* Stops the thread, closes every connection and frees the server. */
void tsrv_stop(tsrv *s);

const char *tsrv_base(const tsrv *s); /* "http://127.0.0.1:PORT" */
int tsrv_port(const tsrv *s);

/* The server's mutex, for the state the test shares with its handler. */
void tsrv_lock(tsrv *s);
void tsrv_unlock(tsrv *s);
/* *p read under the lock: a counter or flag the handler keeps. */
int tsrv_read_int(tsrv *s, const int *p);

/* Copies request i (0: the first) of the log into *out under the lock; fails the test when
 * there is no such request in the log. Returns out. */
tsrv_req *tsrv_request(tsrv *s, int i, tsrv_req *out);
int tsrv_nreq(tsrv *s);    /* requests served so far */
int tsrv_naccept(tsrv *s); /* connections accepted so far */

/* The value of the first header line called name (case-insensitive) in q->head, without the
 * leading blanks, cut to len - 1 bytes; "" when there is none. Returns out. */
const char *tsrv_header(const tsrv_req *q, const char *name, char *out, size_t len);
/* The same into a buffer that lives until the end of the enclosing block. */
#define TSRV_HEADER(q, name) tsrv_header((q), (name), (char[TSRV_VALUE_MAX]){0}, TSRV_VALUE_MAX)

#endif

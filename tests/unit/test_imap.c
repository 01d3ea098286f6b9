/* test_imap.c - the IMAP client's response parser over memory transports, the command
 * encoders, and the socket/TLS paths against scripted in-test servers on loopback.
 *
 * Memory transports feed a canned server script (optionally a few bytes per read) and record
 * what the client wrote. Socket tests use a listening socket on 127.0.0.1 and a server thread
 * that answers by command verb; synchronisation is by the sockets themselves (no sleeps). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include "mv/imap.h"

#include "memio.h"

static mv_imap *mk(mem_io *m, const char *script, size_t len, size_t chunk, size_t max_line,
                   uint64_t max_literal)
{
    memset(m, 0, sizeof *m);
    m->data = script;
    m->len = len ? len : strlen(script);
    m->chunk = chunk;
    mv_imap_opts o;
    mv_imap_opts_default(&o);
    o.timeout_ms = 1000;
    if (max_line) o.max_line = max_line;
    if (max_literal) o.max_literal = max_literal;
    mv_imap *c = NULL;
    assert_int_equal(mv_imap_from_io(&o, mem_read, mem_write, m, &c), MV_OK);
    assert_non_null(c);
    return c;
}

/* Free without LOGOUT traffic mattering: the script is exhausted, so LOGOUT fails fast. */
static void done(mv_imap *c)
{
    mv_imap_close(c);
}

/* ------------------------------------------------------------------ fetch recorder */

#define MAXMSG 8

typedef struct rec {
    int nbegin, ndone, npieces;
    uint64_t begin_size[MAXMSG];
    char body[MAXMSG][512];
    size_t bodylen[MAXMSG];
    uint64_t bigsum; /* sum of bytes for big bodies */
    size_t bigtotal;
    mv_imap_msg msg[MAXMSG];
    char flags[MAXMSG][128];
    int had[MAXMSG];
    int abort_data, abort_begin, abort_done;
} rec;

static int r_begin(void *ud, uint64_t size)
{
    rec *r = ud;
    if (r->abort_begin) return 1;
    if (r->nbegin < MAXMSG) r->begin_size[r->nbegin] = size;
    r->nbegin++;
    return 0;
}

static int r_data(void *ud, const void *data, size_t len)
{
    rec *r = ud;
    int i = r->nbegin - 1;
    r->npieces++;
    if (r->abort_data) return 1;
    const unsigned char *p = data;
    for (size_t k = 0; k < len; k++)
        r->bigsum += p[k];
    r->bigtotal += len;
    if (i >= 0 && i < MAXMSG && r->bodylen[i] + len < sizeof r->body[i]) {
        memcpy(r->body[i] + r->bodylen[i], data, len);
        r->bodylen[i] += len;
    }
    return 0;
}

static int r_done(void *ud, const mv_imap_msg *m, int had_body)
{
    rec *r = ud;
    if (r->ndone < MAXMSG) {
        r->msg[r->ndone] = *m;
        snprintf(r->flags[r->ndone], sizeof r->flags[0], "%s", m->flags);
        r->msg[r->ndone].flags = r->flags[r->ndone];
        r->had[r->ndone] = had_body;
    }
    r->ndone++;
    return r->abort_done;
}

static const mv_imap_fetch_cb RCB = {r_begin, r_data, r_done};

/* ------------------------------------------------------------------ parser tests */

static void test_fetch_literal(void **state)
{
    (void)state;
    const char *s = "* 1 FETCH (UID 7 FLAGS (\\Seen \\Answered) INTERNALDATE "
                    "\"17-Jul-1996 02:44:25 -0700\" RFC822.SIZE 11 BODY[] {11}\r\n"
                    "Hello\r\nWorl)\r\n"
                    "A1 OK FETCH done\r\n";
    mem_io m;
    rec r = {0};
    char err[MV_ERRLEN];
    mv_imap *c = mk(&m, s, 0, 0, 0, 0);
    assert_int_equal(mv_imap_read_until_tagged(c, "A1", &RCB, &r, err, sizeof err), MV_OK);
    assert_int_equal(r.nbegin, 1);
    assert_int_equal(r.begin_size[0], 11);
    assert_int_equal(r.bodylen[0], 11);
    assert_memory_equal(r.body[0], "Hello\r\nWorl", 11);
    assert_int_equal(r.ndone, 1);
    assert_int_equal(r.msg[0].seq, 1);
    assert_int_equal(r.msg[0].uid, 7);
    assert_int_equal(r.msg[0].size, 11);
    assert_int_equal(r.msg[0].internaldate, 837596665);
    assert_string_equal(r.msg[0].flags, "\\Seen \\Answered");
    assert_int_equal(r.had[0], 1);
    done(c);
}

static void test_fetch_item_orders(void **state)
{
    (void)state;
    /* BODY[] first, UID last, unknown items (MODSEQ, X-GM-LABELS) skipped, size from
     * literal, extra spaces tolerated; then UID first with a literal+ body. */
    const char *s = "* 3 FETCH (BODY[] {3}\r\nabc MODSEQ (12345) X-GM-LABELS (\"\\\\Inbox\" foo)"
                    "  FLAGS () UID 42)\r\n"
                    "* 4 FETCH (UID 43 BODY[] {5+}\r\nhello FLAGS (\\Flagged $Label1))\r\n"
                    "A1 OK done\r\n";
    mem_io m;
    rec r = {0};
    char err[MV_ERRLEN];
    mv_imap *c = mk(&m, s, 0, 0, 0, 0);
    assert_int_equal(mv_imap_read_until_tagged(c, "A1", &RCB, &r, err, sizeof err), MV_OK);
    assert_int_equal(r.ndone, 2);
    assert_int_equal(r.msg[0].uid, 42);
    assert_int_equal(r.msg[0].seq, 3);
    assert_int_equal(r.msg[0].size, 3);
    assert_int_equal(r.msg[0].internaldate, 0);
    assert_string_equal(r.msg[0].flags, "");
    assert_memory_equal(r.body[0], "abc", 3);
    assert_int_equal(r.msg[1].uid, 43);
    assert_memory_equal(r.body[1], "hello", 5);
    assert_int_equal(r.bodylen[1], 5);
    assert_string_equal(r.msg[1].flags, "\\Flagged $Label1");
    assert_int_equal(r.had[0], 1);
    assert_int_equal(r.had[1], 1);
    done(c);
}

static void test_fetch_quoted_and_nil_body(void **state)
{
    (void)state;
    const char *s = "* 1 FETCH (UID 1 BODY[] \"say \\\"hi\\\" \\\\o/\")\r\n"
                    "* 2 FETCH (UID 2 BODY[] NIL)\r\n"
                    "* 3 FETCH (FLAGS (\\Deleted))\r\n" /* unsolicited flag update */
                    "A1 OK done\r\n";
    mem_io m;
    rec r = {0};
    char err[MV_ERRLEN];
    mv_imap *c = mk(&m, s, 0, 0, 0, 0);
    assert_int_equal(mv_imap_read_until_tagged(c, "A1", &RCB, &r, err, sizeof err), MV_OK);
    assert_int_equal(r.ndone, 3);
    assert_int_equal(r.nbegin, 1);
    assert_int_equal(r.bodylen[0], strlen("say \"hi\" \\o/"));
    assert_memory_equal(r.body[0], "say \"hi\" \\o/", r.bodylen[0]);
    assert_int_equal(r.had[0], 1);
    assert_int_equal(r.had[1], 0);
    assert_int_equal(r.msg[1].uid, 2);
    assert_int_equal(r.had[2], 0);
    assert_int_equal(r.msg[2].uid, 0);
    assert_int_equal(r.msg[2].seq, 3);
    assert_string_equal(r.flags[2], "\\Deleted");
    done(c);
}

static void test_fetch_one_byte_reads(void **state)
{
    (void)state;
    enum { N = 5000 };
    char *s = malloc(N + 256);
    assert_non_null(s);
    int k = sprintf(s, "* 1 FETCH (UID 9 RFC822.SIZE %d BODY[] {%d}\r\n", N, N);
    uint64_t sum = 0;
    for (int i = 0; i < N; i++) {
        s[k + i] = (char)('a' + i % 26);
        sum += (unsigned char)s[k + i];
    }
    k += N;
    k += sprintf(s + k, " FLAGS (\\Seen))\r\nA1 OK\r\n");
    mem_io m;
    rec r = {0};
    char err[MV_ERRLEN];
    mv_imap *c = mk(&m, s, (size_t)k, 1, 0, 0);
    assert_int_equal(mv_imap_read_until_tagged(c, "A1", &RCB, &r, err, sizeof err), MV_OK);
    assert_int_equal(r.bigtotal, N);
    assert_int_equal(r.bigsum, sum);
    assert_int_equal(r.npieces, N); /* one piece per read: never assembled */
    assert_int_equal(r.msg[0].uid, 9);
    assert_string_equal(r.flags[0], "\\Seen");
    done(c);
    free(s);
}

static void test_closed_mid_literal(void **state)
{
    (void)state;
    const char *s = "* 1 FETCH (UID 1 BODY[] {100}\r\nabc";
    mem_io m;
    rec r = {0};
    char err[MV_ERRLEN];
    mv_imap *c = mk(&m, s, 0, 0, 0, 0);
    assert_int_equal(mv_imap_read_until_tagged(c, "A1", &RCB, &r, err, sizeof err), MV_ENET);
    assert_non_null(strstr(err, "middle of a literal, 3 of 100 bytes"));
    assert_int_equal(r.ndone, 0);
    /* the connection is now unusable */
    assert_int_equal(mv_imap_read_until_tagged(c, "A1", &RCB, &r, err, sizeof err), MV_ENET);
    assert_non_null(strstr(err, "unusable"));
    done(c);

    /* the same with a transport that times out */
    c = mk(&m, s, 0, 0, 0, 0);
    m.timeout_at_end = 1;
    assert_int_equal(mv_imap_read_until_tagged(c, "A1", &RCB, &r, err, sizeof err), MV_ETIMEDOUT);
    assert_non_null(strstr(err, "3 of 100 bytes"));
    done(c);
}

static void test_line_too_long(void **state)
{
    (void)state;
    char s[512];
    memset(s, 'x', sizeof s);
    memcpy(s, "* OK ", 5);
    memcpy(s + sizeof s - 2, "\r\n", 2);
    mem_io m;
    char err[MV_ERRLEN];
    mv_imap *c = mk(&m, s, sizeof s, 7, 64, 0);
    assert_int_equal(mv_imap_read_until_tagged(c, "A1", NULL, NULL, err, sizeof err), MV_EPROTO);
    assert_non_null(strstr(err, "max_line (64 bytes)"));
    done(c);

    /* literals do not count against max_line */
    const char *ok = "* 1 FETCH (UID 1 BODY[] {100}\r\n"
                     "0123456789012345678901234567890123456789012345678901234567890123456789"
                     "012345678901234567890123456789)\r\nA1 OK\r\n";
    rec r = {0};
    c = mk(&m, ok, 0, 0, 64, 0);
    assert_int_equal(mv_imap_read_until_tagged(c, "A1", &RCB, &r, err, sizeof err), MV_OK);
    assert_int_equal(r.bigtotal, 100);
    done(c);
}

static void test_literal_too_big(void **state)
{
    (void)state;
    const char *s = "* 5 FETCH (UID 77 BODY[] {11}\r\nhello world)\r\nA1 OK\r\n";
    mem_io m;
    rec r = {0};
    char err[MV_ERRLEN];
    mv_imap *c = mk(&m, s, 0, 0, 0, 10);
    assert_int_equal(mv_imap_read_until_tagged(c, "A1", &RCB, &r, err, sizeof err), MV_ETOOBIG);
    assert_non_null(strstr(err, "uid 77"));
    assert_non_null(strstr(err, "max_literal (10)"));
    assert_int_equal(r.nbegin, 0);
    done(c);

    /* a non-message literal (mailbox name) is bounded at 64 KiB whatever max_literal says */
    const char *l = "* LIST () \"/\" {70000}\r\nxx";
    c = mk(&m, l, 0, 0, 0, 0);
    assert_int_equal(mv_imap_read_until_tagged(c, "A1", NULL, NULL, err, sizeof err), MV_EPROTO);
    assert_non_null(strstr(err, "70000"));
    done(c);
}

static void test_untagged_between(void **state)
{
    (void)state;
    const char *s = "* 5 EXISTS\r\n"
                    "* 2 EXPUNGE\r\n"
                    "* 1 RECENT\r\n"
                    "* FLAGS (\\Answered \\Seen)\r\n"
                    "* OK [PERMANENTFLAGS (\\Seen \\*)] Limited\r\n"
                    "* STATUS {5}\r\nINBOX (MESSAGES 3)\r\n"
                    "* NO [ALERT] disk nearly full\r\n"
                    "* ENABLED CONDSTORE\r\n"
                    "* CAPABILITY IMAP4rev1 X-Foo  literal+\r\n"
                    "A1 OK done\r\n"
                    "* 6 EXISTS\r\n"
                    "A2 OK [CAPABILITY IMAP4rev1 X-BAR] again\r\n";
    mem_io m;
    char err[MV_ERRLEN];
    mv_imap *c = mk(&m, s, 0, 3, 0, 0);
    assert_int_equal(mv_imap_has_cap(c, "X-FOO"), 0);
    assert_int_equal(mv_imap_read_until_tagged(c, "A1", NULL, NULL, err, sizeof err), MV_OK);
    assert_int_equal(mv_imap_has_cap(c, "x-foo"), 1);
    assert_int_equal(mv_imap_has_cap(c, "LITERAL+"), 1);
    assert_int_equal(mv_imap_has_cap(c, "X-Fo"), 0);
    assert_int_equal(mv_imap_read_until_tagged(c, "A2", NULL, NULL, err, sizeof err), MV_OK);
    assert_int_equal(mv_imap_has_cap(c, "X-FOO"), 0);
    assert_int_equal(mv_imap_has_cap(c, "X-BAR"), 1);
    done(c);
}

static void test_no_bad_bye(void **state)
{
    (void)state;
    const char *s = "A1 NO [CANNOT] nope\r\n"
                    "A2 BAD Command unknown\r\n"
                    "A3 NO [NONEXISTENT] Unknown Mailbox\r\n"
                    "A4 NO [THROTTLED] slow down\r\n"
                    "A5 NO [UNAVAILABLE] backend down\r\n"
                    "A6 NO [LIMIT] too many\r\n"
                    "A7 OK fine\r\n"
                    "* BYE Server shutting down\r\n";
    mem_io m;
    char err[MV_ERRLEN];
    mv_imap *c = mk(&m, s, 0, 0, 0, 0);
    assert_int_equal(mv_imap_read_until_tagged(c, "A1", NULL, NULL, err, sizeof err), MV_ESERVER);
    assert_non_null(strstr(err, "NO [CANNOT] nope"));
    assert_int_equal(mv_imap_read_until_tagged(c, "A2", NULL, NULL, err, sizeof err), MV_ESERVER);
    assert_non_null(strstr(err, "BAD Command unknown"));
    assert_int_equal(mv_imap_read_until_tagged(c, "A3", NULL, NULL, err, sizeof err), MV_ENOTFOUND);
    assert_int_equal(mv_imap_read_until_tagged(c, "A4", NULL, NULL, err, sizeof err), MV_EBUSY);
    assert_int_equal(mv_imap_read_until_tagged(c, "A5", NULL, NULL, err, sizeof err), MV_EBUSY);
    assert_int_equal(mv_imap_read_until_tagged(c, "A6", NULL, NULL, err, sizeof err), MV_EBUSY);
    assert_int_equal(mv_imap_read_until_tagged(c, "A7", NULL, NULL, err, sizeof err), MV_OK);
    assert_int_equal(mv_imap_read_until_tagged(c, "A8", NULL, NULL, err, sizeof err), MV_ENET);
    assert_non_null(strstr(err, "BYE Server shutting down"));
    done(c);

    /* a tagged answer for another tag is a protocol error */
    c = mk(&m, "B7 OK what\r\n", 0, 0, 0, 0);
    assert_int_equal(mv_imap_read_until_tagged(c, "A1", NULL, NULL, err, sizeof err), MV_EPROTO);
    done(c);

    /* server text is sanitised before it reaches err */
    c = mk(&m, "A1 NO bad\x01\x1b[31mred\r\n", 0, 0, 0, 0);
    assert_int_equal(mv_imap_read_until_tagged(c, "A1", NULL, NULL, err, sizeof err), MV_ESERVER);
    assert_null(strchr(err, '\x1b'));
    assert_non_null(strstr(err, "bad??[31mred"));
    done(c);
}

static void test_search_quirk(void **state)
{
    (void)state;
    mem_io m;
    char err[MV_ERRLEN];
    uint32_t *u = NULL;
    size_t n = 99;
    /* n:* when n is above every UID returns the highest UID: filtered */
    mv_imap *c = mk(&m, "* SEARCH 7\r\nA1 OK done\r\n", 0, 0, 0, 0);
    assert_int_equal(mv_imap_uids_from(c, 10, &u, &n, err, sizeof err), MV_OK);
    assert_string_equal(m.out, "A1 UID SEARCH UID 10:*\r\n");
    assert_int_equal(n, 0);
    assert_null(u);
    done(c);

    /* unsorted, duplicated, split over two SEARCH responses, CONDSTORE (MODSEQ n) tail */
    c = mk(&m, "* SEARCH 12 10 11\r\n* SEARCH 11 9 (MODSEQ 917162500)\r\n* SEARCH\r\nA1 OK\r\n", 0,
           2, 0, 0);
    assert_int_equal(mv_imap_uids_from(c, 10, &u, &n, err, sizeof err), MV_OK);
    assert_int_equal(n, 3);
    assert_non_null(u);
    assert_int_equal(u[0], 10);
    assert_int_equal(u[1], 11);
    assert_int_equal(u[2], 12);
    free(u);
    done(c);

    /* the SEARCH list is exempt from max_line (big mailboxes) */
    char big[8192];
    int k = sprintf(big, "* SEARCH");
    for (int i = 1; i <= 1000; i++)
        k += sprintf(big + k, " %d", i);
    sprintf(big + k, "\r\nA1 OK\r\n");
    c = mk(&m, big, 0, 0, 128, 0);
    assert_int_equal(mv_imap_uids_from(c, 1, &u, &n, err, sizeof err), MV_OK);
    assert_int_equal(n, 1000);
    assert_int_equal(u[999], 1000);
    free(u);
    done(c);

    /* garbage in the list */
    c = mk(&m, "* SEARCH 1 x2\r\nA1 OK\r\n", 0, 0, 0, 0);
    assert_int_equal(mv_imap_uids_from(c, 1, &u, &n, err, sizeof err), MV_EPROTO);
    assert_null(u);
    done(c);
}

typedef struct lrec {
    int n;
    char name[8][64];
    char delim[8];
    char flags[8][64];
    int stop_after;
} lrec;

static int l_cb(void *ud, const char *name, char delim, const char *flags)
{
    lrec *l = ud;
    if (l->n < 8) {
        snprintf(l->name[l->n], sizeof l->name[0], "%s", name);
        l->delim[l->n] = delim;
        snprintf(l->flags[l->n], sizeof l->flags[0], "%s", flags);
    }
    l->n++;
    return l->stop_after && l->n >= l->stop_after;
}

static void test_list(void **state)
{
    (void)state;
    const char *s = "* LIST (\\HasNoChildren) \"/\" {6}\r\nIN\"B\r\n\r\n"
                    "* LIST (\\Noselect \\HasChildren) NIL \"Public \\\"x\\\" \\\\y\"\r\n"
                    "* LIST () \"\\\\\" INBOX\r\n"
                    "* LIST (\\Subscribed) \".\" \"Caf&AOk-\" (\"CHILDINFO\" (\"SUBSCRIBED\"))\r\n"
                    "A1 OK LIST completed\r\n";
    mem_io m;
    lrec l = {0};
    char err[MV_ERRLEN];
    mv_imap *c = mk(&m, s, 0, 1, 0, 0);
    assert_int_equal(mv_imap_list(c, l_cb, &l, err, sizeof err), MV_OK);
    assert_string_equal(m.out, "A1 LIST \"\" \"*\"\r\n");
    assert_int_equal(l.n, 4);
    assert_string_equal(l.name[0], "IN\"B\r\n");
    assert_int_equal(l.delim[0], '/');
    assert_string_equal(l.flags[0], "\\HasNoChildren");
    assert_string_equal(l.name[1], "Public \"x\" \\y");
    assert_int_equal(l.delim[1], 0);
    assert_string_equal(l.flags[1], "\\Noselect \\HasChildren");
    assert_string_equal(l.name[2], "INBOX");
    assert_int_equal(l.delim[2], '\\');
    assert_string_equal(l.flags[2], "");
    assert_string_equal(l.name[3], "Caf&AOk-");
    assert_int_equal(l.delim[3], '.');
    done(c);

    /* stopping early drains the rest and keeps the connection usable */
    memset(&l, 0, sizeof l);
    l.stop_after = 1;
    static const char two[] = "* LIST () \"/\" a\r\n* LIST () \"/\" b\r\nA1 OK\r\nA2 OK\r\n";
    c = mk(&m, two, 0, 0, 0, 0);
    assert_int_equal(mv_imap_list(c, l_cb, &l, err, sizeof err), MV_ECANCEL);
    assert_int_equal(l.n, 1);
    assert_int_equal(mv_imap_read_until_tagged(c, "A2", NULL, NULL, err, sizeof err), MV_OK);
    done(c);
}

static void test_internaldate_zones(void **state)
{
    (void)state;
    const char *s = "* 1 FETCH (INTERNALDATE \"17-Jul-1996 02:44:25 -0700\")\r\n"
                    "* 2 FETCH (INTERNALDATE \"01-Jan-2000 00:00:00 +0100\")\r\n"
                    "* 3 FETCH (INTERNALDATE \"29-feb-2024 23:59:59 +0530\")\r\n"
                    "* 4 FETCH (INTERNALDATE \"31-Dec-1999 23:59:59 +0000\")\r\n"
                    "* 5 FETCH (INTERNALDATE \" 7-Jul-1996 02:44:25 -0700\")\r\n"
                    "* 6 FETCH (INTERNALDATE \"7-Jul-1996 02:44:25 -0700\")\r\n"
                    "* 7 FETCH (INTERNALDATE \"17-Foo-1996 02:44:25 -0700\")\r\n"
                    "* 8 FETCH (INTERNALDATE \"17-Jul-1996 02:44:25 -07\")\r\n"
                    "A1 OK\r\n";
    mem_io m;
    rec r = {0};
    char err[MV_ERRLEN];
    mv_imap *c = mk(&m, s, 0, 0, 0, 0);
    assert_int_equal(mv_imap_read_until_tagged(c, "A1", &RCB, &r, err, sizeof err), MV_OK);
    assert_int_equal(r.ndone, 8);
    assert_int_equal(r.msg[0].internaldate, 837596665);
    assert_int_equal(r.msg[1].internaldate, 946681200);
    assert_int_equal(r.msg[2].internaldate, 1709231399);
    assert_int_equal(r.msg[3].internaldate, 946684799);
    assert_int_equal(r.msg[4].internaldate, 836732665);
    assert_int_equal(r.msg[5].internaldate, 836732665);
    assert_int_equal(r.msg[6].internaldate, 0); /* unparsable: reported as absent */
    assert_int_equal(r.msg[7].internaldate, 0);
    done(c);
}

static void test_examine(void **state)
{
    (void)state;
    const char *s = "* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft)\r\n"
                    "* 172 EXISTS\r\n"
                    "* 1 RECENT\r\n"
                    "* OK [UIDVALIDITY 3857529045] UIDs valid\r\n"
                    "* OK [UIDNEXT 4392] Predicted next UID\r\n"
                    "* OK [HIGHESTMODSEQ 715194045007] Highest\r\n"
                    "A1 OK [READ-ONLY] EXAMINE completed\r\n";
    mem_io m;
    char err[MV_ERRLEN];
    mv_imap_mailbox mb;
    mv_imap *c = mk(&m, s, 0, 0, 0, 0);
    assert_int_equal(mv_imap_examine(c, "Sent \"old\" \\x", &mb, err, sizeof err), MV_OK);
    assert_string_equal(m.out, "A1 EXAMINE \"Sent \\\"old\\\" \\\\x\"\r\n");
    assert_int_equal(mb.exists, 172);
    assert_int_equal(mb.uidvalidity, 3857529045u);
    assert_int_equal(mb.uidnext, 4392);
    assert_int_equal(mb.highestmodseq, 715194045007ull);
    /* CR/LF in a name is refused before anything is sent; the connection stays usable */
    size_t before = m.outlen;
    assert_int_equal(mv_imap_examine(c, "a\r\nA9 DELETE INBOX", &mb, err, sizeof err), MV_EINVAL);
    assert_int_equal(m.outlen, before);
    done(c);

    /* an 8-bit name goes as a synchronising literal: wait for "+", then send the bytes */
    const char *lit = "+ go ahead\r\n* 0 EXISTS\r\n* OK [UIDVALIDITY 1] x\r\nA1 OK done\r\n";
    c = mk(&m, lit, 0, 0, 0, 0);
    assert_int_equal(mv_imap_examine(c, "Caf\xc3\xa9", &mb, err, sizeof err), MV_OK);
    assert_string_equal(m.out, "A1 EXAMINE {5}\r\nCaf\xc3\xa9\r\n");
    assert_int_equal(mb.exists, 0);
    assert_int_equal(mb.uidvalidity, 1);
    assert_int_equal(mb.uidnext, 0);
    assert_int_equal(mb.highestmodseq, 0);
    done(c);

    /* the server refuses the literal */
    c = mk(&m, "A1 NO [NONEXISTENT] no such mailbox\r\n", 0, 0, 0, 0);
    assert_int_equal(mv_imap_examine(c, "Caf\xc3\xa9", &mb, err, sizeof err), MV_ENOTFOUND);
    assert_string_equal(m.out, "A1 EXAMINE {5}\r\n");
    done(c);

    /* no UIDVALIDITY: an archive cannot resume safely */
    c = mk(&m, "* 3 EXISTS\r\nA1 OK done\r\n", 0, 0, 0, 0);
    assert_int_equal(mv_imap_examine(c, "INBOX", &mb, err, sizeof err), MV_EPROTO);
    assert_non_null(strstr(err, "UIDVALIDITY"));
    done(c);
}

/* A client whose server has sent its greeting and capabilities (tag A0) from script. */
static mv_imap *mk_caps(mem_io *m, const char *script)
{
    char err[MV_ERRLEN];
    mv_imap *c = mk(m, script, 0, 0, 0, 0);
    assert_int_equal(mv_imap_read_until_tagged(c, "A0", NULL, NULL, err, sizeof err), MV_OK);
    return c;
}

static void test_login_plain(void **state)
{
    (void)state;
    mem_io m;
    char err[MV_ERRLEN];
    /* SASL-IR: initial response on the command line */
    mv_imap *c = mk_caps(&m, "* CAPABILITY IMAP4rev1 AUTH=PLAIN SASL-IR\r\nA0 OK\r\n"
                             "A1 OK [CAPABILITY IMAP4rev1 CONDSTORE] Logged in\r\n");
    assert_int_equal(mv_imap_login(c, "user", "pass", err, sizeof err), MV_OK);
    assert_string_equal(m.out, "A1 AUTHENTICATE PLAIN AHVzZXIAcGFzcw==\r\n");
    assert_int_equal(mv_imap_has_cap(c, "CONDSTORE"), 1);
    assert_int_equal(mv_imap_has_cap(c, "AUTH=PLAIN"), 0);
    done(c);

    /* no SASL-IR: empty continuation, then the response; caps re-fetched after login */
    c = mk_caps(&m, "* CAPABILITY IMAP4rev1 AUTH=PLAIN\r\nA0 OK\r\n"
                    "+ \r\nA1 OK Logged in\r\n* CAPABILITY IMAP4rev1 IDLE\r\nA2 OK\r\n");
    assert_int_equal(mv_imap_login(c, "user", "pass", err, sizeof err), MV_OK);
    assert_string_equal(m.out, "A1 AUTHENTICATE PLAIN\r\nAHVzZXIAcGFzcw==\r\nA2 CAPABILITY\r\n");
    assert_int_equal(mv_imap_has_cap(c, "IDLE"), 1);
    done(c);

    /* refused: MV_EAUTH with the server's text, never the password */
    c = mk_caps(&m, "* CAPABILITY IMAP4rev1 AUTH=PLAIN SASL-IR\r\nA0 OK\r\n"
                    "A1 NO [AUTHENTICATIONFAILED] Invalid credentials\r\n");
    assert_int_equal(mv_imap_login(c, "user", "s3cr3t-pw", err, sizeof err), MV_EAUTH);
    assert_non_null(strstr(err, "Invalid credentials"));
    assert_null(strstr(err, "s3cr3t"));
    done(c);
}

static void test_xoauth2(void **state)
{
    (void)state;
    mem_io m;
    char err[MV_ERRLEN];
    /* SASL-IR: "user=" mailbox ^A "auth=Bearer " token ^A ^A, base64, on the command line */
    mv_imap *c = mk_caps(&m, "* CAPABILITY IMAP4rev1 AUTH=XOAUTH2 SASL-IR\r\nA0 OK\r\n"
                             "A1 OK [CAPABILITY IMAP4rev1 MULTIAPPEND] Logged in\r\n");
    assert_int_equal(mv_imap_xoauth2(c, "a@b.com", "tok.en-1", err, sizeof err), MV_OK);
    assert_string_equal(
        m.out, "A1 AUTHENTICATE XOAUTH2 dXNlcj1hQGIuY29tAWF1dGg9QmVhcmVyIHRvay5lbi0xAQE=\r\n");
    assert_null(mv_imap_challenge(c));
    done(c);

    /* refused: the error challenge is answered with an empty line, kept for the error; the
     * token is never in it */
    c = mk_caps(
        &m, "* CAPABILITY IMAP4rev1 AUTH=XOAUTH2\r\nA0 OK\r\n"
            "+ \r\n+ eyJzdGF0dXMiOiI0MDEiLCJzY2hlbWVzIjoiYmVhcmVyIiwic2NvcGUiOiJtYWlsIn0=\r\nA1 NO "
            "[AUTHENTICATIONFAILED] Authentication failed.\r\n");
    assert_int_equal(mv_imap_xoauth2(c, "a@b.com", "tok.en-1", err, sizeof err), MV_EAUTH);
    assert_string_equal(
        m.out,
        "A1 AUTHENTICATE XOAUTH2\r\ndXNlcj1hQGIuY29tAWF1dGg9QmVhcmVyIHRvay5lbi0xAQE=\r\n\r\n");
    assert_non_null(strstr(err, "AUTHENTICATIONFAILED"));
    assert_non_null(strstr(err, "\"status\":\"401\""));
    assert_string_equal(mv_imap_challenge(c),
                        "{\"status\":\"401\",\"schemes\":\"bearer\",\"scope\":\"mail\"}");
    assert_null(strstr(err, "tok.en"));
    done(c);

    /* not offered, or a token with control bytes: refused before anything is sent */
    c = mk_caps(&m, "* CAPABILITY IMAP4rev1 AUTH=PLAIN\r\nA0 OK\r\n");
    assert_int_equal(mv_imap_xoauth2(c, "a@b.com", "t", err, sizeof err), MV_EAUTH);
    assert_int_equal(mv_imap_xoauth2(c, "a@b.com", "t\x01x", err, sizeof err), MV_EINVAL);
    assert_string_equal(m.out, "");
    done(c);

    /* a second challenge is a protocol error, not a loop */
    c = mk(&m, "* CAPABILITY IMAP4rev1 AUTH=XOAUTH2 SASL-IR\r\nA0 OK\r\n+ e30=\r\n+ e30=\r\n", 0, 0,
           0, 0);
    assert_int_equal(mv_imap_read_until_tagged(c, "A0", NULL, NULL, err, sizeof err), MV_OK);
    assert_int_equal(mv_imap_xoauth2(c, "a@b.com", "tok", err, sizeof err), MV_EPROTO);
    done(c);
}

static void test_login_login(void **state)
{
    (void)state;
    mem_io m;
    char err[MV_ERRLEN];
    mv_imap *c = mk(&m,
                    "* CAPABILITY IMAP4rev1\r\nA0 OK\r\n"
                    "A1 OK [CAPABILITY IMAP4rev1 UIDPLUS] Logged in\r\n",
                    0, 0, 0, 0);
    assert_int_equal(mv_imap_read_until_tagged(c, "A0", NULL, NULL, err, sizeof err), MV_OK);
    assert_int_equal(mv_imap_login(c, "me@x", "p\"w\\d", err, sizeof err), MV_OK);
    assert_string_equal(m.out, "A1 LOGIN \"me@x\" \"p\\\"w\\\\d\"\r\n");
    done(c);

    /* 8-bit password: literal+ when offered */
    c = mk(&m, "* CAPABILITY IMAP4rev1 LITERAL+\r\nA0 OK\r\nA1 OK [CAPABILITY IMAP4rev1] ok\r\n", 0,
           0, 0, 0);
    assert_int_equal(mv_imap_read_until_tagged(c, "A0", NULL, NULL, err, sizeof err), MV_OK);
    assert_int_equal(mv_imap_login(c, "me", "p\xc3\xa4ss", err, sizeof err), MV_OK);
    assert_string_equal(m.out, "A1 LOGIN \"me\" {5+}\r\np\xc3\xa4ss\r\n");
    done(c);

    /* NO with a transient code is MV_EBUSY, not MV_EAUTH */
    c = mk(&m, "* CAPABILITY IMAP4rev1\r\nA0 OK\r\nA1 NO [UNAVAILABLE] try later\r\n", 0, 0, 0, 0);
    assert_int_equal(mv_imap_read_until_tagged(c, "A0", NULL, NULL, err, sizeof err), MV_OK);
    assert_int_equal(mv_imap_login(c, "me", "secretpw", err, sizeof err), MV_EBUSY);
    assert_null(strstr(err, "secretpw"));
    done(c);

    /* LOGINDISABLED without AUTH=PLAIN: refused locally, nothing sent */
    c = mk(&m, "* CAPABILITY IMAP4rev1 LOGINDISABLED STARTTLS\r\nA0 OK\r\n", 0, 0, 0, 0);
    assert_int_equal(mv_imap_read_until_tagged(c, "A0", NULL, NULL, err, sizeof err), MV_OK);
    assert_int_equal(mv_imap_login(c, "me", "secretpw", err, sizeof err), MV_EAUTH);
    assert_int_equal(m.outlen, 0);
    assert_null(strstr(err, "secretpw"));
    /* CR/LF in credentials is refused and not echoed */
    assert_int_equal(mv_imap_login(c, "me", "x\r\nA2 LOGOUT", err, sizeof err), MV_EAUTH);
    done(c);

    c = mk(&m, "* CAPABILITY IMAP4rev1\r\nA0 OK\r\n", 0, 0, 0, 0);
    assert_int_equal(mv_imap_read_until_tagged(c, "A0", NULL, NULL, err, sizeof err), MV_OK);
    assert_int_equal(mv_imap_login(c, "me", "bad\r\npw", err, sizeof err), MV_EINVAL);
    assert_null(strstr(err, "bad"));
    assert_int_equal(m.outlen, 0);
    done(c);
}

static void test_fetch_range_and_abort(void **state)
{
    (void)state;
    mem_io m;
    rec r = {0};
    char err[MV_ERRLEN];
    const char *s = "* 1 FETCH (UID 5 BODY[] {4}\r\nabcd)\r\nA1 OK\r\n";
    mv_imap *c = mk(&m, s, 0, 0, 0, 0);
    assert_int_equal(mv_imap_fetch_range(c, 5, 0, &RCB, &r, err, sizeof err), MV_OK);
    assert_string_equal(m.out,
                        "A1 UID FETCH 5:* (UID FLAGS INTERNALDATE RFC822.SIZE BODY.PEEK[])\r\n");
    assert_int_equal(mv_imap_fetch_range(c, 0, 3, &RCB, &r, err, sizeof err), MV_EINVAL);
    assert_int_equal(mv_imap_fetch_range(c, 9, 3, &RCB, &r, err, sizeof err), MV_EINVAL);
    done(c);

    c = mk(&m, s, 0, 0, 0, 0);
    assert_int_equal(mv_imap_fetch_range(c, 1, 10, &RCB, &r, err, sizeof err), MV_OK);
    assert_non_null(strstr(m.out, "UID FETCH 1:10 "));
    done(c);

    memset(&r, 0, sizeof r);
    r.abort_data = 1;
    c = mk(&m, s, 0, 0, 0, 0);
    assert_int_equal(mv_imap_fetch_range(c, 1, 10, &RCB, &r, err, sizeof err), MV_ECANCEL);
    assert_int_equal(r.ndone, 0);
    assert_int_equal(mv_imap_fetch_range(c, 1, 10, &RCB, &r, err, sizeof err), MV_ENET);
    done(c);

    memset(&r, 0, sizeof r);
    r.abort_done = 1;
    c = mk(&m, s, 0, 0, 0, 0);
    assert_int_equal(mv_imap_fetch_range(c, 1, 10, &RCB, &r, err, sizeof err), MV_ECANCEL);
    assert_int_equal(r.ndone, 1);
    done(c);

    memset(&r, 0, sizeof r);
    r.abort_begin = 1;
    c = mk(&m, s, 0, 0, 0, 0);
    assert_int_equal(mv_imap_fetch_range(c, 1, 10, &RCB, &r, err, sizeof err), MV_ECANCEL);
    assert_int_equal(r.npieces, 0);
    done(c);

    /* NULL callbacks: the body is read and discarded */
    c = mk(&m, s, 0, 0, 0, 0);
    assert_int_equal(mv_imap_fetch_range(c, 1, 10, NULL, NULL, err, sizeof err), MV_OK);
    done(c);
}

static void test_malformed(void **state)
{
    (void)state;
    static const char *bad[] = {
        "* 1 FETCH (UID 1 BODY[] {4}\r\nabcd UID 2 BODY[] {1}\r\nx)\r\nA1 OK\r\n", /* 2 bodies */
        "* 1 FETCH (UID x)\r\nA1 OK\r\n",
        "* 1 FETCH UID 1\r\nA1 OK\r\n",
        "* 1 FETCH (UID 99999999999)\r\nA1 OK\r\n",
        "* 1 FETCH (X ((((((((((((((((((((1))))))))))))))))))))\r\nA1 OK\r\n",
        "* 1 FETCH (UID 1 BODY[] {1x}\r\nA1 OK\r\n",
        "* 1 FETCH (UID 1 BODY[] \"unterminated\r\nA1 OK\r\n",
        "* LIST () \"ab\" INBOX\r\nA1 OK\r\n",
        "A1 MAYBE\r\n",
        ")\r\n",
        "+ unexpected\r\nA1 OK\r\n",
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        mem_io m;
        rec r = {0};
        char err[MV_ERRLEN] = "";
        mv_imap *c = mk(&m, bad[i], 0, 0, 0, 0);
        mv_err e = mv_imap_read_until_tagged(c, "A1", &RCB, &r, err, sizeof err);
        if (e != MV_EPROTO) fail_msg("case %zu: got %d (%s)", i, (int)e, err);
        assert_true(err[0] != '\0');
        done(c);
    }
    /* moderate nesting (BODYSTRUCTURE-like) is fine */
    mem_io m;
    char err[MV_ERRLEN];
    mv_imap *c =
        mk(&m, "* 1 FETCH (BODYSTRUCTURE ((\"a\" NIL (1 (2 {1}\r\nx))) \"b\") UID 1)\r\nA1 OK\r\n",
           0, 0, 0, 0);
    assert_int_equal(mv_imap_read_until_tagged(c, "A1", NULL, NULL, err, sizeof err), MV_OK);
    done(c);
}

/* ------------------------------------------------------------------ socket servers */

typedef struct srv {
    int lfd;
    int port;
    SSL_CTX *ctx; /* TLS server when set */
    pthread_t th;
    int big;      /* size of the second message body */
    int truncate; /* FETCH: send part of a literal, then drop the connection */
    char seen[2048];
} srv;

typedef struct sconn {
    int fd;
    SSL *ssl;
} sconn;

static int s_write(sconn *s, const void *p, size_t n)
{
    if (s->ssl) return SSL_write(s->ssl, p, (int)n) == (int)n ? 0 : -1;
    const char *q = p;
    while (n) {
        ssize_t k = send(s->fd, q, n, MSG_NOSIGNAL);
        if (k <= 0) return -1;
        q += k;
        n -= (size_t)k;
    }
    return 0;
}

static int s_printf(sconn *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int s_printf(sconn *s, const char *fmt, ...)
{
    char buf[1024];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    return s_write(s, buf, (size_t)n);
}

static int s_readline(sconn *s, char *buf, size_t cap)
{
    size_t n = 0;
    for (;;) {
        char ch;
        long k = s->ssl ? SSL_read(s->ssl, &ch, 1) : recv(s->fd, &ch, 1, 0);
        if (k <= 0) return -1;
        if (ch == '\n') break;
        if (ch != '\r' && n + 1 < cap) buf[n++] = ch;
    }
    buf[n] = '\0';
    return 0;
}

static void *srv_main(void *arg)
{
    srv *v = arg;
    sconn s = {-1, NULL};
    s.fd = accept(v->lfd, NULL, NULL);
    if (s.fd < 0) return NULL;
    struct timeval tv = {10, 0}; /* safety net only */
    setsockopt(s.fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    if (v->ctx) {
        s.ssl = SSL_new(v->ctx);
        SSL_set_fd(s.ssl, s.fd);
        if (SSL_accept(s.ssl) != 1) goto out;
    }
    s_printf(&s, "* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN SASL-IR] test server ready\r\n");
    char line[1024];
    while (s_readline(&s, line, sizeof line) == 0) {
        char tag[32] = "", verb[32] = "", arg1[32] = "";
        sscanf(line, "%31s %31s %31s", tag, verb, arg1);
        size_t sl = strlen(v->seen);
        snprintf(v->seen + sl, sizeof v->seen - sl, "%s %s|", tag, verb);
        if (!strcasecmp(verb, "AUTHENTICATE")) {
            s_printf(&s, "%s OK [CAPABILITY IMAP4rev1 CONDSTORE] logged in\r\n", tag);
        } else if (!strcasecmp(verb, "CAPABILITY")) {
            s_printf(&s, "* CAPABILITY IMAP4rev1 AUTH=PLAIN\r\n%s OK\r\n", tag);
        } else if (!strcasecmp(verb, "EXAMINE")) {
            s_printf(&s,
                     "* 2 EXISTS\r\n* OK [UIDVALIDITY 42] v\r\n* OK [UIDNEXT 3] n\r\n"
                     "%s OK [READ-ONLY] done\r\n",
                     tag);
        } else if (!strcasecmp(verb, "UID") && !strcasecmp(arg1, "SEARCH")) {
            s_printf(&s, "* SEARCH 1 2\r\n%s OK\r\n", tag);
        } else if (!strcasecmp(verb, "UID") && !strcasecmp(arg1, "FETCH") && v->truncate) {
            s_printf(&s, "* 1 FETCH (UID 1 BODY[] {100}\r\nabc");
            if (s.ssl) SSL_free(s.ssl); /* no close_notify: an abrupt end */
            s.ssl = NULL;
            break;
        } else if (!strcasecmp(verb, "UID") && !strcasecmp(arg1, "FETCH")) {
            s_printf(&s, "* 1 FETCH (UID 1 RFC822.SIZE 5 BODY[] {5}\r\nhello)\r\n");
            s_printf(&s, "* 2 FETCH (UID 2 BODY[] {%d}\r\n", v->big);
            char *b = malloc((size_t)v->big);
            for (int i = 0; i < v->big; i++)
                b[i] = (char)(i % 251);
            s_write(&s, b, (size_t)v->big);
            free(b);
            s_printf(&s, " FLAGS (\\Seen))\r\n%s OK done\r\n", tag);
        } else if (!strcasecmp(verb, "LOGOUT")) {
            s_printf(&s, "* BYE bye\r\n%s OK\r\n", tag);
            break;
        } else if (!strcasecmp(verb, "NOOP")) {
            /* "hang": never answer, wait for the client to go away */
        } else {
            s_printf(&s, "%s BAD unknown\r\n", tag);
        }
    }
out:
    if (s.ssl) {
        SSL_shutdown(s.ssl);
        SSL_free(s.ssl);
    }
    close(s.fd);
    return NULL;
}

static int listen_any(int *port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(fd >= 0);
    struct sockaddr_in a = {0};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof a), 0);
    assert_int_equal(listen(fd, 4), 0);
    socklen_t sl = sizeof a;
    assert_int_equal(getsockname(fd, (struct sockaddr *)&a, &sl), 0);
    *port = ntohs(a.sin_port);
    return fd;
}

static void srv_start_ex(srv *v, SSL_CTX *ctx, int truncate)
{
    memset(v, 0, sizeof *v);
    v->ctx = ctx;
    v->truncate = truncate;
    v->big = 300000;
    v->lfd = listen_any(&v->port);
    assert_int_equal(pthread_create(&v->th, NULL, srv_main, v), 0);
}

static void srv_start(srv *v, SSL_CTX *ctx)
{
    srv_start_ex(v, ctx, 0);
}

static void srv_stop(srv *v)
{
    pthread_join(v->th, NULL);
    close(v->lfd);
}

static void opts_for(mv_imap_opts *o, int port, mv_tls_mode tls)
{
    mv_imap_opts_default(o);
    o->host = "127.0.0.1";
    o->port = port;
    o->tls = tls;
    o->timeout_ms = 5000;
}

static void run_session(mv_imap *c)
{
    char err[MV_ERRLEN];
    assert_int_equal(mv_imap_has_cap(c, "AUTH=PLAIN"), 1);
    assert_int_equal(mv_imap_login(c, "u", "p", err, sizeof err), MV_OK);
    assert_int_equal(mv_imap_has_cap(c, "CONDSTORE"), 1);
    mv_imap_mailbox mb;
    assert_int_equal(mv_imap_examine(c, "INBOX", &mb, err, sizeof err), MV_OK);
    assert_int_equal(mb.exists, 2);
    assert_int_equal(mb.uidvalidity, 42);
    uint32_t *u = NULL;
    size_t n = 0;
    assert_int_equal(mv_imap_uids_from(c, 1, &u, &n, err, sizeof err), MV_OK);
    assert_int_equal(n, 2);
    free(u);
    rec r = {0};
    assert_int_equal(mv_imap_fetch_range(c, 1, 2, &RCB, &r, err, sizeof err), MV_OK);
    assert_int_equal(r.ndone, 2);
    assert_memory_equal(r.body[0], "hello", 5);
    assert_int_equal(r.msg[1].uid, 2);
    assert_int_equal(r.msg[1].size, 300000);
    assert_int_equal(r.bigtotal, 300005);
    assert_string_equal(r.flags[1], "\\Seen");
}

static void test_socket_session(void **state)
{
    (void)state;
    srv v;
    srv_start(&v, NULL);
    mv_imap_opts o;
    opts_for(&o, v.port, MV_TLS_NONE);
    mv_imap *c = NULL;
    char err[MV_ERRLEN];
    assert_int_equal(mv_imap_connect(&o, &c, err, sizeof err), MV_OK);
    run_session(c);
    mv_imap_close(c);
    srv_stop(&v);
    assert_string_equal(v.seen, "A1 AUTHENTICATE|A2 EXAMINE|A3 UID|A4 UID|A5 LOGOUT|");
}

static void test_socket_timeouts(void **state)
{
    (void)state;
    char err[MV_ERRLEN];
    mv_imap_opts o;
    mv_imap *c = NULL;

    /* a listener that never accepts: TCP connects, the greeting never comes */
    int port;
    int lfd = listen_any(&port);
    opts_for(&o, port, MV_TLS_NONE);
    o.timeout_ms = 150;
    assert_int_equal(mv_imap_connect(&o, &c, err, sizeof err), MV_ETIMEDOUT);
    assert_null(c);
    assert_non_null(strstr(err, "150 ms"));
    /* the same for implicit TLS: the handshake times out */
    o.tls = MV_TLS_IMPLICIT;
    assert_int_equal(mv_imap_connect(&o, &c, err, sizeof err), MV_ETIMEDOUT);
    assert_non_null(strstr(err, "TLS handshake"));
    close(lfd);

    /* nothing listening: refused */
    lfd = listen_any(&port);
    close(lfd);
    opts_for(&o, port, MV_TLS_NONE);
    assert_int_equal(mv_imap_connect(&o, &c, err, sizeof err), MV_ENET);
    assert_non_null(strstr(err, "refused"));

    /* a server that stops answering mid-session */
    srv v;
    srv_start(&v, NULL);
    opts_for(&o, v.port, MV_TLS_NONE);
    o.timeout_ms = 200;
    assert_int_equal(mv_imap_connect(&o, &c, err, sizeof err), MV_OK);
    mv_imap_fetch_cb none = {0};
    /* NOOP is not part of the API; drive it through the raw path: the server ignores it */
    assert_int_equal(mv_imap_read_until_tagged(c, "A1", &none, NULL, err, sizeof err),
                     MV_ETIMEDOUT);
    mv_imap_close(c); /* broken: no LOGOUT, closes the socket, the server sees EOF */
    srv_stop(&v);

    /* STARTTLS requested but not advertised: refused rather than falling back */
    srv_start(&v, NULL);
    opts_for(&o, v.port, MV_TLS_STARTTLS);
    assert_int_equal(mv_imap_connect(&o, &c, err, sizeof err), MV_EPROTO);
    assert_non_null(strstr(err, "STARTTLS"));
    srv_stop(&v);

    opts_for(&o, 143, MV_TLS_NONE);
    o.host = "";
    assert_int_equal(mv_imap_connect(&o, &c, err, sizeof err), MV_EINVAL);
}

/* ------------------------------------------------------------------ TLS */

static SSL_CTX *make_server_ctx(char *pem_path, size_t pathlen)
{
    EVP_PKEY *pk = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
    assert_non_null(pk);
    X509 *x = X509_new();
    X509_set_version(x, 2);
    ASN1_INTEGER_set(X509_get_serialNumber(x), 1);
    X509_gmtime_adj(X509_getm_notBefore(x), -3600);
    X509_gmtime_adj(X509_getm_notAfter(x), 3600);
    X509_set_pubkey(x, pk);
    X509_NAME *nm = X509_get_subject_name(x);
    X509_NAME_add_entry_by_txt(nm, "CN", MBSTRING_ASC, (const unsigned char *)"mv test", -1, -1, 0);
    X509_set_issuer_name(x, nm);
    X509V3_CTX v3;
    X509V3_set_ctx_nodb(&v3);
    X509V3_set_ctx(&v3, x, x, NULL, NULL, 0);
    X509_EXTENSION *ext =
        X509V3_EXT_conf_nid(NULL, &v3, NID_subject_alt_name, "DNS:mail.example,IP:127.0.0.1");
    assert_non_null(ext);
    X509_add_ext(x, ext, -1);
    X509_EXTENSION_free(ext);
    assert_true(X509_sign(x, pk, EVP_sha256()) > 0);

    snprintf(pem_path, pathlen, "/tmp/mv-imap-test-ca-XXXXXX");
    int fd = mkstemp(pem_path);
    assert_true(fd >= 0);
    FILE *f = fdopen(fd, "w");
    PEM_write_X509(f, x);
    fclose(f);

    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    assert_int_equal(SSL_CTX_use_certificate(ctx, x), 1);
    assert_int_equal(SSL_CTX_use_PrivateKey(ctx, pk), 1);
    X509_free(x);
    EVP_PKEY_free(pk);
    return ctx;
}

static void test_tls(void **state)
{
    (void)state;
    char pem[64];
    SSL_CTX *ctx = make_server_ctx(pem, sizeof pem);
    char err[MV_ERRLEN];
    mv_imap_opts o;
    mv_imap *c = NULL;
    srv v;

    /* self-signed, verification on, not in the trust store */
    srv_start(&v, ctx);
    opts_for(&o, v.port, MV_TLS_IMPLICIT);
    assert_int_equal(mv_imap_connect(&o, &c, err, sizeof err), MV_ENET);
    assert_non_null(strstr(err, "certificate verify failed: self-signed certificate"));
    srv_stop(&v);

    /* trusted via ca_file, peer is an IP literal in the SAN: full session over TLS */
    srv_start(&v, ctx);
    o.port = v.port;
    o.ca_file = pem;
    if (mv_imap_connect(&o, &c, err, sizeof err) != MV_OK) fail_msg("%s", err);
    run_session(c);
    mv_imap_close(c);
    srv_stop(&v);

    /* the server drops the TLS connection in the middle of a message */
    srv_start_ex(&v, ctx, 1);
    o.port = v.port;
    if (mv_imap_connect(&o, &c, err, sizeof err) != MV_OK) fail_msg("%s", err);
    rec r = {0};
    assert_int_equal(mv_imap_fetch_range(c, 1, 0, &RCB, &r, err, sizeof err), MV_ENET);
    assert_non_null(strstr(err, "connection closed in the middle of a literal, 3 of 100 bytes"));
    mv_imap_close(c);
    srv_stop(&v);

    /* trusted but the host name does not match */
    srv_start(&v, ctx);
    o.port = v.port;
    o.host = "localhost";
    assert_int_equal(mv_imap_connect(&o, &c, err, sizeof err), MV_ENET);
    assert_non_null(strstr(err, "certificate verify failed: hostname mismatch"));
    srv_stop(&v);

    /* verify = 0 accepts anything */
    srv_start(&v, ctx);
    o.port = v.port;
    o.host = "127.0.0.1";
    o.ca_file = NULL;
    o.verify = 0;
    assert_int_equal(mv_imap_connect(&o, &c, err, sizeof err), MV_OK);
    mv_imap_close(c);
    srv_stop(&v);

    /* unreadable ca_file */
    srv_start(&v, ctx);
    o.port = v.port;
    o.verify = 1;
    o.ca_file = "/nonexistent/ca.pem";
    assert_int_equal(mv_imap_connect(&o, &c, err, sizeof err), MV_EINVAL);
    assert_non_null(strstr(err, "/nonexistent/ca.pem"));
    srv_stop(&v);

    unlink(pem);
    SSL_CTX_free(ctx);
}

/* ------------------------------------------------------------------ write operations */

/* One byte per read, so m->pos shows exactly how far the client has read. */
static mv_imap *mk_lp(mem_io *m, const char *script, int no_literal_plus)
{
    memset(m, 0, sizeof *m);
    m->data = script;
    m->len = strlen(script);
    m->chunk = 1;
    mv_imap_opts o;
    mv_imap_opts_default(&o);
    o.timeout_ms = 1000;
    o.no_literal_plus = no_literal_plus;
    mv_imap *c = NULL;
    assert_int_equal(mv_imap_from_io(&o, mem_read, mem_write, m, &c), MV_OK);
    return c;
}

/* position in the script just after the first occurrence of marker */
static size_t after(const mem_io *m, const char *marker)
{
    const char *p = strstr(m->data, marker);
    assert_non_null(p);
    return (size_t)(p - m->data) + strlen(marker);
}

static void test_append_literal_plus(void **state)
{
    (void)state;
    mem_io m;
    char err[MV_ERRLEN];
    mv_imap *c = mk_lp(&m,
                       "* CAPABILITY IMAP4rev1 LITERAL+\r\nA0 OK\r\n"
                       "A1 OK [APPENDUID 1 5] Append completed\r\n"
                       "* 3 EXISTS\r\nA2 OK done\r\n",
                       0);
    assert_int_equal(mv_imap_read_until_tagged(c, "A0", NULL, NULL, err, sizeof err), MV_OK);
    /* 837596665 = 17-Jul-1996 02:44:25 -0700; \Recent dropped in any case */
    assert_int_equal(mv_imap_append_begin(c, "Export/Inbox", "\\Seen \\recent  $Label1 \\Flagged",
                                          837596665, 11, err, sizeof err),
                     MV_OK);
    assert_int_equal(m.pos, after(&m, "A0 OK\r\n")); /* nothing awaited */
    assert_int_equal(mv_imap_append_data(c, "Hello\r\n", 7, err, sizeof err), MV_OK);
    assert_int_equal(mv_imap_append_data(c, "Worl", 4, err, sizeof err), MV_OK);
    assert_int_equal(mv_imap_append_data(c, "", 0, err, sizeof err), MV_OK);
    assert_int_equal(mv_imap_append_end(c, err, sizeof err), MV_OK);
    assert_string_equal(m.out, "A1 APPEND \"Export/Inbox\" (\\Seen $Label1 \\Flagged) "
                               "\"17-Jul-1996 09:44:25 +0000\" {11+}\r\nHello\r\nWorl\r\n");

    /* no flags (NULL), no date, one-digit day, empty-ish message */
    m.outlen = 0;
    assert_int_equal(mv_imap_append_begin(c, "A", NULL, 0, 2, err, sizeof err), MV_OK);
    assert_int_equal(mv_imap_append_data(c, "x\n", 2, err, sizeof err), MV_OK);
    assert_int_equal(mv_imap_append_end(c, err, sizeof err), MV_OK);
    assert_string_equal(m.out, "A2 APPEND \"A\" () {2+}\r\nx\n\r\n");
    done(c);

    c = mk_lp(&m, "* CAPABILITY IMAP4rev1 LITERAL+\r\nA0 OK\r\nA1 OK\r\n", 0);
    assert_int_equal(mv_imap_read_until_tagged(c, "A0", NULL, NULL, err, sizeof err), MV_OK);
    assert_int_equal(mv_imap_append_begin(c, "A", "\\Recent", 86400, 1, err, sizeof err), MV_OK);
    assert_int_equal(mv_imap_append_data(c, "y", 1, err, sizeof err), MV_OK);
    assert_int_equal(mv_imap_append_end(c, err, sizeof err), MV_OK);
    assert_string_equal(m.out, "A1 APPEND \"A\" () \"02-Jan-1970 00:00:00 +0000\" {1+}\r\ny\r\n");
    done(c);

    /* LITERAL- allows {n+} up to 4096 bytes only */
    c = mk_lp(&m, "* CAPABILITY IMAP4rev1 LITERAL-\r\nA0 OK\r\nA1 OK\r\n+ go\r\nA2 OK\r\n", 0);
    assert_int_equal(mv_imap_read_until_tagged(c, "A0", NULL, NULL, err, sizeof err), MV_OK);
    assert_int_equal(mv_imap_append_begin(c, "A", "", 0, 1, err, sizeof err), MV_OK);
    assert_int_equal(mv_imap_append_data(c, "y", 1, err, sizeof err), MV_OK);
    assert_int_equal(mv_imap_append_end(c, err, sizeof err), MV_OK);
    static char big[5000];
    memset(big, 'b', sizeof big);
    assert_int_equal(mv_imap_append_begin(c, "A", "", 0, sizeof big, err, sizeof err), MV_OK);
    assert_int_equal(mv_imap_append_data(c, big, sizeof big, err, sizeof err), MV_OK);
    assert_int_equal(mv_imap_append_end(c, err, sizeof err), MV_OK);
    assert_memory_equal(m.out, "A1 APPEND \"A\" () {1+}\r\ny\r\nA2 APPEND \"A\" () {5000}\r\nbbb",
                        50);
    done(c);
}

static void test_multiappend(void **state)
{
    (void)state;
    mem_io m;
    char err[MV_ERRLEN];
    /* LITERAL+: three messages in one command, one tagged answer */
    mv_imap *c = mk_lp(&m,
                       "* CAPABILITY IMAP4rev1 LITERAL+ MULTIAPPEND\r\nA0 OK\r\n"
                       "A1 OK [APPENDUID 7 10:12] Append completed\r\n",
                       0);
    assert_int_equal(mv_imap_read_until_tagged(c, "A0", NULL, NULL, err, sizeof err), MV_OK);
    assert_int_equal(mv_imap_append_begin(c, "Box", "\\Seen", 86400, 2, err, sizeof err), MV_OK);
    assert_int_equal(mv_imap_append_data(c, "a\n", 2, err, sizeof err), MV_OK);
    assert_int_equal(mv_imap_append_next(c, NULL, 0, 3, err, sizeof err), MV_OK);
    assert_int_equal(mv_imap_append_data(c, "bb\n", 3, err, sizeof err), MV_OK);
    assert_int_equal(mv_imap_append_next(c, "\\Flagged", 172800, 1, err, sizeof err), MV_OK);
    assert_int_equal(mv_imap_append_data(c, "c", 1, err, sizeof err), MV_OK);
    assert_int_equal(mv_imap_append_end(c, err, sizeof err), MV_OK);
    assert_string_equal(m.out, "A1 APPEND \"Box\" (\\Seen) \"02-Jan-1970 00:00:00 +0000\" {2+}\r\n"
                               "a\n () {3+}\r\nbb\n (\\Flagged) \"03-Jan-1970 00:00:00 +0000\" "
                               "{1+}\r\nc\r\n");
    done(c);

    /* synchronising literals: a "+" before each message; a refusal mid-way ends the command */
    c = mk(&m,
           "* CAPABILITY IMAP4rev1 MULTIAPPEND\r\nA0 OK\r\n+ go\r\n"
           "A1 NO [OVERQUOTA] Quota exceeded\r\n",
           0, 0, 0, 0);
    assert_int_equal(mv_imap_read_until_tagged(c, "A0", NULL, NULL, err, sizeof err), MV_OK);
    assert_int_equal(mv_imap_append_begin(c, "Box", "", 0, 1, err, sizeof err), MV_OK);
    assert_int_equal(mv_imap_append_data(c, "a", 1, err, sizeof err), MV_OK);
    assert_int_equal(mv_imap_append_next(c, "", 0, 1, err, sizeof err), MV_ETOOBIG);
    assert_non_null(strstr(err, "the destination is full"));
    assert_string_equal(m.out, "A1 APPEND \"Box\" () {1}\r\na () {1}\r\n");
    assert_int_equal(mv_imap_append_end(c, err, sizeof err), MV_EINVAL); /* it is over */
    done(c);

    /* misuse: before the previous message is complete, or without MULTIAPPEND */
    c = mk_lp(&m, "* CAPABILITY IMAP4rev1 LITERAL+\r\nA0 OK\r\nA1 OK\r\n", 0);
    assert_int_equal(mv_imap_read_until_tagged(c, "A0", NULL, NULL, err, sizeof err), MV_OK);
    assert_int_equal(mv_imap_append_next(c, "", 0, 1, err, sizeof err), MV_EINVAL);
    assert_int_equal(mv_imap_append_begin(c, "Box", "", 0, 2, err, sizeof err), MV_OK);
    assert_int_equal(mv_imap_append_data(c, "a", 1, err, sizeof err), MV_OK);
    assert_int_equal(mv_imap_append_next(c, "", 0, 1, err, sizeof err), MV_EINVAL);
    assert_non_null(strstr(err, "1 bytes of the previous message not sent"));
    assert_int_equal(mv_imap_append_data(c, "b", 1, err, sizeof err), MV_OK);
    assert_int_equal(mv_imap_append_next(c, "", 0, 1, err, sizeof err), MV_EINVAL);
    assert_non_null(strstr(err, "does not offer MULTIAPPEND"));
    assert_int_equal(mv_imap_append_end(c, err, sizeof err), MV_OK); /* still usable */
    assert_string_equal(m.out, "A1 APPEND \"Box\" () {2+}\r\nab\r\n");
    done(c);
}

static void test_append_sync(void **state)
{
    (void)state;
    mem_io m;
    char err[MV_ERRLEN];
    /* no LITERAL+: waits for "+" (untagged data before it is fine) */
    mv_imap *c = mk_lp(&m,
                       "* CAPABILITY IMAP4rev1\r\nA0 OK\r\n"
                       "* 2 EXISTS\r\n+ Ready for literal data\r\nA1 OK Append completed\r\n",
                       0);
    assert_int_equal(mv_imap_read_until_tagged(c, "A0", NULL, NULL, err, sizeof err), MV_OK);
    assert_int_equal(mv_imap_append_begin(c, "INBOX", "\\Seen", 0, 5, err, sizeof err), MV_OK);
    assert_int_equal(m.pos, after(&m, "literal data\r\n"));
    assert_string_equal(m.out, "A1 APPEND \"INBOX\" (\\Seen) {5}\r\n");
    assert_int_equal(mv_imap_append_data(c, "hello", 5, err, sizeof err), MV_OK);
    assert_int_equal(mv_imap_append_end(c, err, sizeof err), MV_OK);
    assert_string_equal(m.out, "A1 APPEND \"INBOX\" (\\Seen) {5}\r\nhello\r\n");
    done(c);

    /* no_literal_plus: synchronising even though LITERAL+ is offered */
    c = mk_lp(&m, "* CAPABILITY IMAP4rev1 LITERAL+\r\nA0 OK\r\n+ go\r\nA1 OK\r\n", 1);
    assert_int_equal(mv_imap_read_until_tagged(c, "A0", NULL, NULL, err, sizeof err), MV_OK);
    assert_int_equal(mv_imap_append_begin(c, "INBOX", "", 0, 3, err, sizeof err), MV_OK);
    assert_string_equal(m.out, "A1 APPEND \"INBOX\" () {3}\r\n");
    assert_int_equal(mv_imap_append_data(c, "abc", 3, err, sizeof err), MV_OK);
    assert_int_equal(mv_imap_append_end(c, err, sizeof err), MV_OK);
    assert_string_equal(m.out, "A1 APPEND \"INBOX\" () {3}\r\nabc\r\n");
    done(c);

    /* a tagged NO instead of "+" fails begin; the connection stays usable */
    c = mk_lp(&m,
              "* CAPABILITY IMAP4rev1\r\nA0 OK\r\n"
              "A1 NO [TRYCREATE] Mailbox doesn't exist: Export\r\n"
              "A2 OK Create completed\r\n",
              0);
    assert_int_equal(mv_imap_read_until_tagged(c, "A0", NULL, NULL, err, sizeof err), MV_OK);
    assert_int_equal(mv_imap_append_begin(c, "Export", "", 0, 3, err, sizeof err), MV_ENOTFOUND);
    assert_non_null(strstr(err, "APPEND"));
    assert_non_null(strstr(err, "TRYCREATE"));
    assert_int_equal(mv_imap_append_data(c, "abc", 3, err, sizeof err), MV_EINVAL);
    assert_int_equal(mv_imap_create(c, "Export", err, sizeof err), MV_OK);
    done(c);

    /* OK instead of "+" is a protocol error */
    c = mk_lp(&m, "* CAPABILITY IMAP4rev1\r\nA0 OK\r\nA1 OK what\r\n", 0);
    assert_int_equal(mv_imap_read_until_tagged(c, "A0", NULL, NULL, err, sizeof err), MV_OK);
    assert_int_equal(mv_imap_append_begin(c, "X", "", 0, 3, err, sizeof err), MV_EPROTO);
    assert_int_equal(mv_imap_create(c, "X", err, sizeof err), MV_ENET);
    done(c);
}

static void test_append_errors(void **state)
{
    (void)state;
    static const struct {
        const char *answer;
        mv_err want;
        const char *text;
    } cases[] = {
        {"A1 NO [TRYCREATE] no such mailbox\r\n", MV_ENOTFOUND, "does not exist"},
        {"A1 NO [OVERQUOTA] Quota exceeded (mailbox for user is full)\r\n", MV_ETOOBIG,
         "the destination is full"},
        {"A1 NO [LIMIT] too many messages\r\n", MV_ETOOBIG, "the destination is full"},
        {"A1 NO [NOPERM] Permission denied\r\n", MV_EAUTH, "the destination is read-only"},
        {"A1 NO [READ-ONLY] read-only\r\n", MV_EAUTH, "the destination is read-only"},
        {"A1 NO Message rejected\r\n", MV_ESERVER, "Message rejected"},
        {"A1 BAD [TRYCREATE] Invalid arguments\r\n", MV_ESERVER, "Invalid arguments"},
        {"A1 NO [THROTTLED] Slow down\r\n", MV_EBUSY, "the destination is busy"},
        {"A1 NO [UNAVAILABLE] Try later\r\n", MV_EBUSY, "Try later"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char script[256];
        snprintf(script, sizeof script, "* CAPABILITY IMAP4rev1 LITERAL+\r\nA0 OK\r\n%sA2 OK\r\n",
                 cases[i].answer);
        mem_io m;
        char err[MV_ERRLEN];
        mv_imap *c = mk_lp(&m, script, 0);
        assert_int_equal(mv_imap_read_until_tagged(c, "A0", NULL, NULL, err, sizeof err), MV_OK);
        assert_int_equal(mv_imap_append_begin(c, "Dest", "", 0, 2, err, sizeof err), MV_OK);
        assert_int_equal(mv_imap_append_data(c, "ab", 2, err, sizeof err), MV_OK);
        assert_int_equal(mv_imap_append_end(c, err, sizeof err), cases[i].want);
        assert_non_null(strstr(err, "APPEND"));
        assert_non_null(strstr(err, cases[i].text));
        /* a tagged NO/BAD leaves the connection usable */
        assert_int_equal(mv_imap_create(c, "Dest", err, sizeof err), MV_OK);
        done(c);
    }

    /* APPENDLIMIT is checked before anything is sent */
    mem_io m;
    char err[MV_ERRLEN];
    mv_imap *c = mk_lp(&m, "* CAPABILITY IMAP4rev1 LITERAL+ APPENDLIMIT=100\r\nA0 OK\r\n", 0);
    assert_int_equal(mv_imap_read_until_tagged(c, "A0", NULL, NULL, err, sizeof err), MV_OK);
    assert_int_equal(mv_imap_append_begin(c, "Dest", "", 0, 101, err, sizeof err), MV_ETOOBIG);
    assert_non_null(strstr(err, "APPENDLIMIT"));
    assert_int_equal(m.outlen, 0);
    done(c);
}

static void test_append_misuse(void **state)
{
    (void)state;
    mem_io m;
    char err[MV_ERRLEN];
    const char *script = "* CAPABILITY IMAP4rev1 LITERAL+\r\nA0 OK\r\nA1 OK\r\n";

    /* more bytes than announced: refused before sending, connection abandoned */
    mv_imap *c = mk_lp(&m, script, 0);
    assert_int_equal(mv_imap_read_until_tagged(c, "A0", NULL, NULL, err, sizeof err), MV_OK);
    assert_int_equal(mv_imap_append_begin(c, "Dest", "", 0, 4, err, sizeof err), MV_OK);
    assert_int_equal(mv_imap_append_data(c, "abc", 3, err, sizeof err), MV_OK);
    assert_int_equal(mv_imap_append_data(c, "de", 2, err, sizeof err), MV_EINVAL);
    assert_non_null(strstr(err, "APPEND"));
    assert_string_equal(m.out, "A1 APPEND \"Dest\" () {4+}\r\nabc");
    assert_int_equal(mv_imap_append_end(c, err, sizeof err), MV_EINVAL);
    assert_int_equal(mv_imap_create(c, "X", err, sizeof err), MV_ENET);
    done(c);
    assert_string_equal(m.out, "A1 APPEND \"Dest\" () {4+}\r\nabc"); /* no LOGOUT */

    /* fewer bytes than announced */
    c = mk_lp(&m, script, 0);
    assert_int_equal(mv_imap_read_until_tagged(c, "A0", NULL, NULL, err, sizeof err), MV_OK);
    assert_int_equal(mv_imap_append_begin(c, "Dest", "", 0, 4, err, sizeof err), MV_OK);
    assert_int_equal(mv_imap_append_data(c, "abc", 3, err, sizeof err), MV_OK);
    assert_int_equal(mv_imap_append_end(c, err, sizeof err), MV_EINVAL);
    assert_non_null(strstr(err, "short"));
    assert_int_equal(mv_imap_append_end(c, err, sizeof err), MV_EINVAL);
    done(c);
    assert_string_equal(m.out, "A1 APPEND \"Dest\" () {4+}\r\nabc");

    /* one APPEND at a time, no other command in between, no LOGOUT inside the literal */
    c = mk_lp(&m, script, 0);
    assert_int_equal(mv_imap_read_until_tagged(c, "A0", NULL, NULL, err, sizeof err), MV_OK);
    assert_int_equal(mv_imap_append_data(c, "a", 1, err, sizeof err), MV_EINVAL);
    assert_int_equal(mv_imap_append_end(c, err, sizeof err), MV_EINVAL);
    assert_int_equal(mv_imap_append_begin(c, "", "", 0, 4, err, sizeof err), MV_EINVAL);
    assert_int_equal(mv_imap_append_begin(c, "a\r\nb", "", 0, 4, err, sizeof err), MV_EINVAL);
    m.outlen = 0;
    m.out[0] = '\0';
    assert_int_equal(mv_imap_append_begin(c, "Dest", "", 0, 4, err, sizeof err), MV_OK);
    assert_int_equal(mv_imap_append_begin(c, "Dest", "", 0, 4, err, sizeof err), MV_EINVAL);
    assert_int_equal(mv_imap_create(c, "X", err, sizeof err), MV_EINVAL);
    assert_non_null(strstr(err, "APPEND is in progress"));
    size_t n = 0;
    assert_int_equal(mv_imap_search_header(c, "Message-ID", "<x>", &n, err, sizeof err), MV_EINVAL);
    done(c);
    assert_string_equal(m.out, "A2 APPEND \"Dest\" () {4+}\r\n");

    /* invalid flags are dropped, valid ones kept */
    c = mk_lp(&m, script, 0);
    assert_int_equal(mv_imap_read_until_tagged(c, "A0", NULL, NULL, err, sizeof err), MV_OK);
    assert_int_equal(
        mv_imap_append_begin(c, "Dest", "\\Seen (bad) a\"b \\* ok \\ x]y", 0, 0, err, sizeof err),
        MV_OK);
    assert_int_equal(mv_imap_append_end(c, err, sizeof err), MV_OK);
    assert_string_equal(m.out, "A1 APPEND \"Dest\" (\\Seen ok) {0+}\r\n\r\n");
    done(c);
}

static void test_create(void **state)
{
    (void)state;
    mem_io m;
    char err[MV_ERRLEN];
    mv_imap *c = mk(&m,
                    "A1 OK Create completed\r\n"
                    "A2 NO [ALREADYEXISTS] Mailbox already exists\r\n"
                    "A3 NO Mailbox exists.\r\n* LIST (\\HasNoChildren) \"/\" \"Export/Inbox\"\r\n"
                    "A4 OK\r\n"
                    "A5 NO [NOPERM] Permission denied\r\n* LIST (\\NonExistent) \"/\" \"Other\"\r\n"
                    "A6 OK\r\n"
                    "A7 BAD Bad name\r\n",
                    0, 0, 0, 0);
    assert_int_equal(mv_imap_create(c, "Export", err, sizeof err), MV_OK);
    assert_int_equal(mv_imap_create(c, "Export", err, sizeof err), MV_OK);
    assert_string_equal(err, "");
    assert_int_equal(mv_imap_create(c, "Export/Inbox", err, sizeof err), MV_OK);
    assert_string_equal(err, "");
    assert_int_equal(mv_imap_create(c, "Other", err, sizeof err), MV_EAUTH);
    assert_non_null(strstr(err, "CREATE"));
    assert_non_null(strstr(err, "the destination is read-only"));
    assert_non_null(strstr(err, "Permission denied"));
    assert_int_equal(mv_imap_create(c, "Bad", err, sizeof err), MV_ESERVER);
    assert_non_null(strstr(err, "Bad name"));
    assert_string_equal(m.out, "A1 CREATE \"Export\"\r\nA2 CREATE \"Export\"\r\n"
                               "A3 CREATE \"Export/Inbox\"\r\nA4 LIST \"\" \"Export/Inbox\"\r\n"
                               "A5 CREATE \"Other\"\r\nA6 LIST \"\" \"Other\"\r\n"
                               "A7 CREATE \"Bad\"\r\n");
    assert_int_equal(mv_imap_create(c, "", err, sizeof err), MV_EINVAL);
    done(c);
}

static void test_search_header(void **state)
{
    (void)state;
    mem_io m;
    char err[MV_ERRLEN];
    size_t n = 99;
    mv_imap *c = mk(&m,
                    "* SEARCH 9 4 9\r\nA1 OK Search completed\r\n"
                    "* SEARCH\r\nA2 OK\r\n"
                    "A3 OK no untagged SEARCH at all\r\n"
                    "+ go\r\n* SEARCH 7 (MODSEQ 5)\r\nA4 OK\r\n"
                    "A5 NO [BADCHARSET (US-ASCII)] nope\r\n",
                    0, 0, 0, 0);
    assert_int_equal(mv_imap_search_header(c, "Message-ID", "<a\"b@x>", &n, err, sizeof err),
                     MV_OK);
    assert_int_equal(n, 2);
    assert_int_equal(mv_imap_search_header(c, "Message-ID", "<none@x>", &n, err, sizeof err),
                     MV_OK);
    assert_int_equal(n, 0);
    n = 5;
    assert_int_equal(mv_imap_search_header(c, "Message-ID", "<none@x>", &n, err, sizeof err),
                     MV_OK);
    assert_int_equal(n, 0);
    /* 8-bit value: CHARSET UTF-8 and a (synchronising) literal */
    assert_int_equal(mv_imap_search_header(c, "Subject",
                                           "Gr\xc3\xbc\xc3\x9f"
                                           "e",
                                           &n, err, sizeof err),
                     MV_OK);
    assert_int_equal(n, 1);
    assert_int_equal(mv_imap_search_header(c, "Message-ID", "<z>", &n, err, sizeof err),
                     MV_ESERVER);
    assert_non_null(strstr(err, "UID SEARCH"));
    assert_string_equal(m.out, "A1 UID SEARCH HEADER \"Message-ID\" \"<a\\\"b@x>\"\r\n"
                               "A2 UID SEARCH HEADER \"Message-ID\" \"<none@x>\"\r\n"
                               "A3 UID SEARCH HEADER \"Message-ID\" \"<none@x>\"\r\n"
                               "A4 UID SEARCH CHARSET UTF-8 HEADER \"Subject\" {7}\r\n"
                               "Gr\xc3\xbc\xc3\x9f"
                               "e\r\n"
                               "A5 UID SEARCH HEADER \"Message-ID\" \"<z>\"\r\n");
    assert_int_equal(mv_imap_search_header(c, "", "x", &n, err, sizeof err), MV_EINVAL);
    assert_int_equal(mv_imap_search_header(c, "Message-ID", "a\nb", &n, err, sizeof err),
                     MV_EINVAL);
    done(c);

    /* a malformed SEARCH breaks the connection */
    c = mk(&m, "* SEARCH 1 x\r\nA1 OK\r\n", 0, 0, 0, 0);
    assert_int_equal(mv_imap_search_header(c, "Message-ID", "<a>", &n, err, sizeof err), MV_EPROTO);
    assert_int_equal(n, 0);
    assert_int_equal(mv_imap_search_header(c, "Message-ID", "<a>", &n, err, sizeof err), MV_ENET);
    done(c);
}

static void test_search_size(void **state)
{
    (void)state;
    mem_io m;
    char err[MV_ERRLEN];
    mv_imap *c =
        mk(&m, "* SEARCH 9 4 9\r\nA1 OK done\r\nA2 OK done\r\nA3 NO [LIMIT] busy\r\n", 0, 0, 0, 0);
    uint32_t *uids = NULL;
    size_t n = 0;
    assert_int_equal(mv_imap_search_size(c, 1234, &uids, &n, err, sizeof err), MV_OK);
    assert_int_equal(n, 2); /* sorted, once each */
    assert_int_equal(uids[0], 4);
    assert_int_equal(uids[1], 9);
    free(uids);
    assert_int_equal(mv_imap_search_size(c, 0, &uids, &n, err, sizeof err), MV_OK);
    assert_null(uids);
    assert_int_equal(n, 0);
    assert_int_equal(mv_imap_search_size(c, 7, &uids, &n, err, sizeof err), MV_EBUSY);
    assert_string_equal(m.out,
                        "A1 UID SEARCH LARGER 1233 SMALLER 1235\r\nA2 UID SEARCH SMALLER 1\r\n"
                        "A3 UID SEARCH LARGER 6 SMALLER 8\r\n");
    done(c);
}

static void test_delimiter(void **state)
{
    (void)state;
    mem_io m;
    char err[MV_ERRLEN];
    char d = 'x';
    mv_imap *c = mk(&m,
                    "* LIST (\\Noselect) \"/\" \"\"\r\nA1 OK List completed\r\n"
                    "* LIST (\\Noselect) NIL \"\"\r\nA2 OK\r\n"
                    "* LIST (\\Noselect) \".\" \"\"\r\nA3 OK\r\n"
                    "A4 OK nothing\r\n"
                    "* LIST (\\Noselect) \"ab\" \"\"\r\nA5 OK\r\n",
                    0, 0, 0, 0);
    assert_int_equal(mv_imap_delimiter(c, &d, err, sizeof err), MV_OK);
    assert_int_equal(d, '/');
    assert_int_equal(mv_imap_delimiter(c, &d, err, sizeof err), MV_OK);
    assert_int_equal(d, '\0');
    assert_int_equal(mv_imap_delimiter(c, &d, err, sizeof err), MV_OK);
    assert_int_equal(d, '.');
    d = 'x';
    assert_int_equal(mv_imap_delimiter(c, &d, err, sizeof err), MV_OK);
    assert_int_equal(d, '\0');
    assert_int_equal(mv_imap_delimiter(c, &d, err, sizeof err), MV_EPROTO);
    assert_memory_equal(m.out, "A1 LIST \"\" \"\"\r\nA2 LIST \"\" \"\"\r\n", 30);
    done(c);
}

static void test_utf7(void **state)
{
    (void)state;
    char out[128];
    assert_int_equal(mv_imap_utf7_encode("~peter/mail/\xe5\x8f\xb0\xe5\x8c\x97/"
                                         "\xe6\x97\xa5\xe6\x9c\xac\xe8\xaa\x9e",
                                         out, sizeof out),
                     0);
    assert_string_equal(out, "~peter/mail/&U,BTFw-/&ZeVnLIqe-");
    assert_int_equal(mv_imap_utf7_encode("&", out, sizeof out), 0);
    assert_string_equal(out, "&-");
    assert_int_equal(mv_imap_utf7_encode("Tom & Jerry", out, sizeof out), 0);
    assert_string_equal(out, "Tom &- Jerry");
    assert_int_equal(mv_imap_utf7_encode("Entw\xc3\xbcrfe", out, sizeof out), 0);
    assert_string_equal(out, "Entw&APw-rfe");
    assert_int_equal(mv_imap_utf7_encode("\xf0\x9f\x98\x80", out, sizeof out), 0); /* U+1F600 */
    assert_string_equal(out, "&2D3eAA-");
    assert_int_equal(mv_imap_utf7_encode("a\x01", out, sizeof out), 0); /* control: encoded */
    assert_string_equal(out, "a&AAE-");
    assert_int_equal(mv_imap_utf7_encode("", out, sizeof out), 0);
    assert_string_equal(out, "");
    /* invalid UTF-8 */
    static const char *bad[] = {"\xff",
                                "a\xc3",
                                "\xc3(",
                                "\xc0\xaf",
                                "\xe0\x80\xaf",
                                "\xed\xa0\x80",
                                "\xf4\x90\x80\x80",
                                "\x80",
                                "\xf8\x88\x80\x80\x80"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        strcpy(out, "junk");
        assert_int_equal(mv_imap_utf7_encode(bad[i], out, sizeof out), -1);
        assert_string_equal(out, "");
    }
    /* out too small, exactly big enough */
    assert_int_equal(mv_imap_utf7_encode("abc", out, 3), -1);
    assert_int_equal(mv_imap_utf7_encode("abc", out, 4), 0);
    assert_string_equal(out, "abc");
    assert_int_equal(mv_imap_utf7_encode("\xc3\xbc", out, 5), -1); /* "&APw-" needs 6 */
    assert_int_equal(mv_imap_utf7_encode("\xc3\xbc", out, 6), 0);
    assert_int_equal(mv_imap_utf7_encode("&", out, 2), -1);
    assert_int_equal(mv_imap_utf7_encode("x", out, 0), -1);
    assert_int_equal(mv_imap_utf7_encode(NULL, out, sizeof out), -1);
}

static void test_opts(void **state)
{
    (void)state;
    mv_imap_opts o;
    mv_imap_opts_default(&o);
    assert_int_equal(o.verify, 1);
    assert_int_equal(o.timeout_ms, 60000);
    assert_int_equal(o.max_line, 1u << 20);
    assert_int_equal(o.max_literal, 200u << 20);
    assert_int_equal(mv_tls_mode_parse("starttls"), MV_TLS_STARTTLS);
    assert_int_equal(mv_tls_mode_parse("IMPLICIT"), MV_TLS_IMPLICIT);
    assert_int_equal(mv_tls_mode_parse("none"), MV_TLS_NONE);
    assert_int_equal(mv_tls_mode_parse("ssl"), -1);
    assert_int_equal(mv_tls_mode_parse(NULL), -1);
    assert_string_equal(mv_tls_mode_name(MV_TLS_STARTTLS), "starttls");
    assert_int_equal(mv_imap_has_cap(NULL, "X"), 0);
    assert_int_equal(o.no_literal_plus, 0);
    mv_imap_close(NULL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_opts),
        cmocka_unit_test(test_fetch_literal),
        cmocka_unit_test(test_fetch_item_orders),
        cmocka_unit_test(test_fetch_quoted_and_nil_body),
        cmocka_unit_test(test_fetch_one_byte_reads),
        cmocka_unit_test(test_closed_mid_literal),
        cmocka_unit_test(test_line_too_long),
        cmocka_unit_test(test_literal_too_big),
        cmocka_unit_test(test_untagged_between),
        cmocka_unit_test(test_no_bad_bye),
        cmocka_unit_test(test_search_quirk),
        cmocka_unit_test(test_list),
        cmocka_unit_test(test_internaldate_zones),
        cmocka_unit_test(test_examine),
        cmocka_unit_test(test_login_plain),
        cmocka_unit_test(test_xoauth2),
        cmocka_unit_test(test_login_login),
        cmocka_unit_test(test_fetch_range_and_abort),
        cmocka_unit_test(test_malformed),
        cmocka_unit_test(test_socket_session),
        cmocka_unit_test(test_socket_timeouts),
        cmocka_unit_test(test_tls),
        cmocka_unit_test(test_append_literal_plus),
        cmocka_unit_test(test_multiappend),
        cmocka_unit_test(test_append_sync),
        cmocka_unit_test(test_append_errors),
        cmocka_unit_test(test_append_misuse),
        cmocka_unit_test(test_create),
        cmocka_unit_test(test_search_header),
        cmocka_unit_test(test_search_size),
        cmocka_unit_test(test_delimiter),
        cmocka_unit_test(test_utf7),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

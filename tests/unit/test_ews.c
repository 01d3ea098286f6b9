/* test_ews.c - the EWS client against a scripted HTTP/1.1 server on loopback.
 *
 * Each test starts a server thread on 127.0.0.1 (ephemeral port) whose handler picks a canned
 * SOAP answer per request and records what the client sent (headers and body). The request
 * bodies are parsed here with libxml2 and checked by XPath with the EWS namespaces bound, so
 * element names, namespaces and attributes are asserted, not substrings. The OAuth tests point
 * login_base at the same server ("/login"). Synchronisation is by the sockets only: a client
 * call returns after the server answered, and the request log is read under the server's
 * mutex. No sleeps.
 *
 * The pure parsers (ews_internal.h) are also driven directly: odd documents, a DOCTYPE with
 * entity definitions, the GetItem stream fed in pieces of every size from 1 to 13 bytes. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <libxml/parser.h>
#include <libxml/xpath.h>
#include <libxml/xpathInternals.h>
#include <openssl/evp.h>

#include "mv/ews.h"
#include "../../shared/src/ews_internal.h"
#include "testsrv.h"

#define PASSWORD "pa55:w&rd<Secret7>"
#define CLIENT_SECRET "cl1ent-S3cret~value"
#define MAILBOX "alice@corp.example"

#define NS_S "http://schemas.xmlsoap.org/soap/envelope/"
#define NS_M "http://schemas.microsoft.com/exchange/services/2006/messages"
#define NS_T "http://schemas.microsoft.com/exchange/services/2006/types"
#define NS_E "http://schemas.microsoft.com/exchange/services/2006/errors"

#define ENV_HEAD                                                                                   \
    "<?xml version=\"1.0\" encoding=\"utf-8\"?>"                                                   \
    "<s:Envelope xmlns:m=\"" NS_M "\" xmlns:s=\"" NS_S "\" xmlns:t=\"" NS_T "\">"                  \
    "<s:Header><t:ServerVersionInfo MajorVersion=\"15\" MinorVersion=\"2\" "                       \
    "MajorBuildNumber=\"1544\" MinorBuildNumber=\"4\" Version=\"V2017_07_11\"/></s:Header>"        \
    "<s:Body>"
#define ENV_TAIL "</s:Body></s:Envelope>"

#define FAULT(code, text, extra)                                                                   \
    "<?xml version=\"1.0\" encoding=\"utf-8\"?>"                                                   \
    "<s:Envelope xmlns:e=\"" NS_E "\" xmlns:s=\"" NS_S "\" xmlns:t=\"" NS_T "\"><s:Body><s:Fault>" \
    "<faultcode xmlns:a=\"" NS_T "\">a:" code "</faultcode>"                                       \
    "<faultstring xml:lang=\"en-US\">" text "</faultstring><detail>"                               \
    "<e:ResponseCode>" code "</e:ResponseCode><e:Message>" text "</e:Message>" extra               \
    "</detail></s:Fault></s:Body></s:Envelope>"

#define BACKOFF(ms)                                                                                \
    "<t:MessageXml><t:Value Name=\"BackOffMilliseconds\">" ms "</t:Value></t:MessageXml>"

/* ------------------------------------------------------------------ scripted server */

/* What test_ews.c keeps next to the server of testsrv.h: the handler of the test, the canned
 * SOAP answer and the token count, all guarded by the server's lock. Answers are text/xml. */
typedef struct srv srv;
typedef void (*handler_fn)(srv *s, const tsrv_req *q, tsrv_resp *r);

struct srv {
    tsrv *t;
    handler_fn h;
    const char *base; /* http://127.0.0.1:PORT */
    int ntoken;       /* requests to the token endpoint */
    /* handler state */
    int state, token_seq;
    const char *canned; /* h_canned: the answer to every EWS request */
    size_t canned_len;
    int canned_status;
    size_t canned_piece;
    int canned_chunked; /* Transfer-Encoding: chunked, chunks of canned_piece bytes */
    const char *canned_headers;
    char scratch[4096];
};

static void dispatch(void *ud, const tsrv_req *q, tsrv_resp *r)
{
    srv *s = ud;
    if (strstr(q->target, "/oauth2/v2.0/token")) s->ntoken++;
    r->ctype = "text/xml; charset=utf-8";
    s->h(s, q, r);
}

static srv *srv_start(handler_fn h)
{
    srv *s = calloc(1, sizeof *s);
    assert_non_null(s);
    s->h = h;
    s->t = tsrv_start(dispatch, s);
    s->base = tsrv_base(s->t);
    return s;
}

static void srv_stop(srv *s)
{
    tsrv_stop(s->t);
    free(s);
}

/* Request i (under the lock), in a buffer the next call overwrites. */
static const tsrv_req *req_at(srv *s, int i)
{
    static tsrv_req q;
    return tsrv_request(s->t, i, &q);
}

#define NREQ(s) tsrv_nreq((s)->t)
#define NTOKEN(s) tsrv_read_int((s)->t, &(s)->ntoken)

static int is_token(const tsrv_req *q)
{
    return !strcmp(q->method, "POST") && !strcmp(q->target, "/login/tenant1/oauth2/v2.0/token");
}

static void token_answer(srv *s, tsrv_resp *r)
{
    s->token_seq++;
    int n = snprintf(s->scratch, sizeof s->scratch,
                     "{\"token_type\":\"Bearer\",\"expires_in\":3599,\"access_token\":\"tok%d\"}",
                     s->token_seq);
    r->status = 200;
    r->body = s->scratch;
    r->len = (size_t)n;
}

/* Every EWS request gets s->canned (status, headers, delivery in pieces); tokens are issued. */
static void h_canned(srv *s, const tsrv_req *q, tsrv_resp *r)
{
    if (is_token(q)) {
        token_answer(s, r);
        return;
    }
    r->status = s->canned_status ? s->canned_status : 200;
    r->body = s->canned;
    r->len = s->canned_len;
    r->mode = s->canned_chunked ? TSRV_CHUNKED : TSRV_PIECES; /* one write when piece is 0 */
    r->n = s->canned_piece;
    if (s->canned_headers) snprintf(r->headers, sizeof r->headers, "%s", s->canned_headers);
}

static void canned(srv *s, int status, const char *body)
{
    tsrv_lock(s->t);
    s->canned_status = status;
    s->canned = body;
    s->canned_len = strlen(body);
    s->canned_piece = 0;
    s->canned_chunked = 0;
    s->canned_headers = NULL;
    tsrv_unlock(s->t);
}

/* ------------------------------------------------------------------ client */

typedef struct gate_log {
    int acquired, released, last_weight, total_weight;
} gate_log;

static mv_err gate_acquire(void *ud, int weight, char *err, size_t errlen)
{
    (void)err;
    (void)errlen;
    gate_log *g = ud;
    g->acquired++;
    g->last_weight = weight;
    g->total_weight += weight;
    return MV_OK;
}

static void gate_release(void *ud, int weight)
{
    gate_log *g = ud;
    g->released++;
    (void)weight;
}

static mv_ews *client_opts(srv *s, mv_ews_opts *o)
{
    char url[128];
    snprintf(url, sizeof url, "%s/EWS/Exchange.asmx", s->base);
    o->url = url;
    o->connect_timeout_ms = 2000;
    o->timeout_ms = 20000;
    mv_ews *e = NULL;
    char err[MV_ERRLEN];
    mv_err rc = mv_ews_open(o, &e, err, sizeof err);
    if (rc) fprintf(stderr, "open: %s\n", err);
    assert_int_equal(rc, MV_OK);
    assert_non_null(e);
    return e;
}

static mv_ews *client(srv *s, int impersonate, int page_size, uint64_t max_message)
{
    mv_ews_opts o;
    mv_ews_opts_default(&o);
    o.auth = MV_EWS_BASIC;
    o.username = "svc@corp.example";
    o.password = PASSWORD;
    o.impersonate = impersonate;
    if (page_size) o.page_size = page_size;
    if (max_message) o.max_message = max_message;
    return client_opts(s, &o);
}

static mv_ews *oauth_client(srv *s)
{
    char login[96];
    snprintf(login, sizeof login, "%s/login", s->base);
    mv_ews_opts o;
    mv_ews_opts_default(&o);
    o.auth = MV_EWS_OAUTH;
    o.login_base = login;
    o.tenant_id = "tenant1";
    o.client_id = "cid-1";
    o.client_secret = CLIENT_SECRET;
    o.impersonate = 1;
    return client_opts(s, &o);
}

/* ------------------------------------------------------------------ request checks (XPath) */

static xmlDoc *req_doc(const tsrv_req *q)
{
    xmlDoc *d = xmlReadMemory(q->body, (int)strlen(q->body), NULL, NULL,
                              XML_PARSE_NONET | XML_PARSE_NOERROR | XML_PARSE_NOWARNING);
    if (!d) fprintf(stderr, "request is not XML: %s\n", q->body);
    assert_non_null(d);
    return d;
}

static xmlXPathObjectPtr xp_eval(xmlDoc *d, const char *expr)
{
    xmlXPathContextPtr c = xmlXPathNewContext(d);
    assert_non_null(c);
    xmlXPathRegisterNs(c, BAD_CAST "s", BAD_CAST NS_S);
    xmlXPathRegisterNs(c, BAD_CAST "m", BAD_CAST NS_M);
    xmlXPathRegisterNs(c, BAD_CAST "t", BAD_CAST NS_T);
    xmlXPathObjectPtr o = xmlXPathEvalExpression(BAD_CAST expr, c);
    xmlXPathFreeContext(c);
    assert_non_null(o);
    return o;
}

/* string(expr) compared with want */
static void xp_is(xmlDoc *d, const char *expr, const char *want)
{
    char full[512];
    snprintf(full, sizeof full, "string(%s)", expr);
    xmlXPathObjectPtr o = xp_eval(d, full);
    assert_int_equal(o->type, XPATH_STRING);
    if (strcmp((const char *)o->stringval, want))
        fprintf(stderr, "%s: got \"%s\", want \"%s\"\n", expr, o->stringval, want);
    assert_string_equal((const char *)o->stringval, want);
    xmlXPathFreeObject(o);
}

static int xp_count(xmlDoc *d, const char *expr)
{
    char full[512];
    snprintf(full, sizeof full, "count(%s)", expr);
    xmlXPathObjectPtr o = xp_eval(d, full);
    int n = (int)o->floatval;
    xmlXPathFreeObject(o);
    return n;
}

/* What every request carries: SOAP 1.1 envelope, version, anchor, content type, credentials. */
static void check_common(const tsrv_req *q, xmlDoc *d, int impersonate, const char *auth)
{
    assert_string_equal(q->method, "POST");
    assert_string_equal(q->target, "/EWS/Exchange.asmx");
    assert_string_equal(TSRV_HEADER(q, "Content-Type"), "text/xml; charset=utf-8");
    assert_string_equal(TSRV_HEADER(q, "X-AnchorMailbox"), MAILBOX);
    assert_string_equal(TSRV_HEADER(q, "Authorization"), auth);
    assert_int_equal(xp_count(d, "/s:Envelope/s:Header/t:RequestServerVersion"), 1);
    xp_is(d, "/s:Envelope/s:Header/t:RequestServerVersion/@Version", "Exchange2016");
    assert_int_equal(xp_count(d, "/s:Envelope/s:Body/*"), 1);
    if (impersonate)
        xp_is(d,
              "/s:Envelope/s:Header/t:ExchangeImpersonation/t:ConnectingSID/t:PrimarySmtpAddress",
              MAILBOX);
    else
        assert_int_equal(xp_count(d, "//t:ExchangeImpersonation"), 0);
}

/* "Basic " + base64("svc@corp.example:" PASSWORD) */
static const char *basic_auth(void)
{
    static char out[256];
    static const char *b64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    const char *in = "svc@corp.example:" PASSWORD;
    size_t n = strlen(in);
    char *w = out + sprintf(out, "Basic ");
    for (size_t i = 0; i < n; i += 3) {
        uint32_t v = (uint32_t)(unsigned char)in[i] << 16;
        if (i + 1 < n) v |= (uint32_t)(unsigned char)in[i + 1] << 8;
        if (i + 2 < n) v |= (unsigned char)in[i + 2];
        *w++ = b64[v >> 18 & 63];
        *w++ = b64[v >> 12 & 63];
        *w++ = i + 1 < n ? b64[v >> 6 & 63] : '=';
        *w++ = i + 2 < n ? b64[v & 63] : '=';
    }
    *w = '\0';
    return out;
}

/* ------------------------------------------------------------------ open */

static void test_open_validation(void **state)
{
    (void)state;
    mv_ews_opts o;
    mv_ews *e = NULL;
    char err[MV_ERRLEN];
    mv_ews_opts_default(&o);
    assert_string_equal(o.server_version, "Exchange2016");
    assert_int_equal(o.page_size, 500);
    assert_int_equal(o.max_xml, 16u * 1024 * 1024);
    assert_int_equal(mv_ews_open(&o, &e, err, sizeof err), MV_EINVAL); /* no url */
    o.url = "ftp://x/EWS/Exchange.asmx";
    assert_int_equal(mv_ews_open(&o, &e, err, sizeof err), MV_EINVAL);
    o.url = "https://mail.example/EWS/Exchange.asmx";
    assert_int_equal(mv_ews_open(&o, &e, err, sizeof err), MV_EINVAL); /* no user */
    o.username = "svc";
    o.password = PASSWORD;
    o.page_size = 1001;
    assert_int_equal(mv_ews_open(&o, &e, err, sizeof err), MV_EINVAL);
    o.page_size = 10;
    o.server_version = "Exchange 2016\"";
    assert_int_equal(mv_ews_open(&o, &e, err, sizeof err), MV_EINVAL);
    o.server_version = NULL;
    assert_int_equal(mv_ews_open(&o, &e, err, sizeof err), MV_OK);
    assert_string_equal(mv_ews_server_version(e), "");
    assert_int_equal(mv_ews_backoff_ms(e), 0);
    /* arguments are checked before anything is sent */
    assert_int_equal(
        mv_ews_list_folders(e, "bad mailbox", MV_EWS_ROOT_MAILBOX, NULL, NULL, err, sizeof err),
        MV_EINVAL);
    char *st = NULL;
    int last = 0;
    assert_int_equal(
        mv_ews_sync_items(e, MAILBOX, "id", NULL, 513, NULL, NULL, &st, &last, err, sizeof err),
        MV_EINVAL);
    assert_int_equal(mv_ews_sync_items(e, MAILBOX, "id\r\nX: y", NULL, 10, NULL, NULL, &st, &last,
                                       err, sizeof err),
                     MV_EINVAL);
    mv_ews_mime_cb cb = {0};
    const char *ids[1] = {"x"};
    assert_int_equal(mv_ews_get_mime(e, MAILBOX, ids, 1, &cb, NULL, err, sizeof err), MV_EINVAL);
    mv_ews_close(e);
    /* OAuth needs tenant and client */
    mv_ews_opts_default(&o);
    o.url = "https://outlook.office365.com/EWS/Exchange.asmx";
    o.auth = MV_EWS_OAUTH;
    assert_int_equal(mv_ews_open(&o, &e, err, sizeof err), MV_EINVAL);
    o.tenant_id = "t";
    o.client_id = "c";
    o.client_secret = CLIENT_SECRET;
    assert_int_equal(mv_ews_open(&o, &e, err, sizeof err), MV_OK);
    mv_ews_close(e);
}

/* ------------------------------------------------------------------ folders */

typedef struct folders {
    int n;
    char id[16][64], path[16][128], cls[16][32];
    uint64_t total[16];
    int stop_at;
} folders;

static int on_folder(void *ud, const char *id, const char *path, const char *cls, uint64_t total)
{
    folders *f = ud;
    assert_true(f->n < 16);
    snprintf(f->id[f->n], sizeof f->id[0], "%s", id);
    snprintf(f->path[f->n], sizeof f->path[0], "%s", path);
    snprintf(f->cls[f->n], sizeof f->cls[0], "%s", cls);
    f->total[f->n] = total;
    f->n++;
    return f->stop_at && f->n >= f->stop_at;
}

static const char *find_path(const folders *f, const char *id)
{
    for (int i = 0; i < f->n; i++)
        if (!strcmp(f->id[i], id)) return f->path[i];
    return NULL;
}

#define FOLDER(tag, id, parent, name, cls, total)                                                  \
    "<t:" tag "><t:FolderId Id=\"" id "\" ChangeKey=\"AQ\"/><t:ParentFolderId Id=\"" parent        \
    "\" ChangeKey=\"AQ\"/>" cls "<t:DisplayName>" name "</t:DisplayName><t:TotalCount>" total      \
    "</t:TotalCount><t:ChildFolderCount>0</t:ChildFolderCount></t:" tag ">"
#define FCLASS(c) "<t:FolderClass>" c "</t:FolderClass>"

#define FF_HEAD(off, last)                                                                         \
    ENV_HEAD "<m:FindFolderResponse><m:ResponseMessages><m:FindFolderResponseMessage "             \
             "ResponseClass=\"Success\"><m:ResponseCode>NoError</m:ResponseCode><m:RootFolder "    \
             "IndexedPagingOffset=\"" off                                                          \
             "\" TotalItemsInView=\"5\" IncludesLastItemInRange=\"" last "\"><t:Folders>"
#define FF_TAIL                                                                                    \
    "</t:Folders></m:RootFolder></m:FindFolderResponseMessage></m:ResponseMessages></"             \
    "m:FindFolderResponse>" ENV_TAIL

/* Deep listing in two pages; "Sub" (child of Inbox) comes before Inbox itself. */
static const char ff_page1[] =
    FF_HEAD("3", "false") FOLDER("Folder", "F-SUB", "F-INBOX", "Sub", FCLASS("IPF.Note"), "2")
        FOLDER("Folder", "F-SENT", "ROOT", "Sent/Items", FCLASS("IPF.Note"), "7")
            FOLDER("CalendarFolder", "F-CAL", "ROOT", "Calendar", FCLASS("IPF.Appointment"), "1")
                FF_TAIL;
static const char ff_page2[] =
    FF_HEAD("5", "true") FOLDER("Folder", "F-INBOX", "ROOT", "Inbox", FCLASS("IPF.Note"), "42")
        FOLDER("Folder", "F-PCT", "F-SUB", "50% &amp; more", "", "0") FF_TAIL;

static void h_folders(srv *s, const tsrv_req *q, tsrv_resp *r)
{
    (void)s;
    r->status = 200;
    if (strstr(q->body, "Offset=\"0\""))
        r->body = ff_page1;
    else if (strstr(q->body, "Offset=\"3\""))
        r->body = ff_page2;
    else
        r->status = 404;
}

static void test_folders_deep(void **state)
{
    (void)state;
    srv *s = srv_start(h_folders);
    mv_ews *e = client(s, 1, 3, 0);
    gate_log gl = {0};
    mv_http_gate gate = {gate_acquire, gate_release, &gl};
    mv_ews_set_gate(e, &gate);
    char err[MV_ERRLEN];
    folders f = {0};
    mv_err rc =
        mv_ews_list_folders(e, MAILBOX, MV_EWS_ROOT_MAILBOX, on_folder, &f, err, sizeof err);
    if (rc) fprintf(stderr, "%s\n", err);
    assert_int_equal(rc, MV_OK);
    assert_int_equal(f.n, 5);
    assert_string_equal(find_path(&f, "F-INBOX"), "Inbox");
    assert_string_equal(find_path(&f, "F-SUB"), "Inbox/Sub");
    assert_string_equal(find_path(&f, "F-SENT"), "Sent%2FItems");
    assert_string_equal(find_path(&f, "F-CAL"), "Calendar");
    assert_string_equal(find_path(&f, "F-PCT"), "Inbox/Sub/50%25 & more");
    for (int i = 0; i < f.n; i++) {
        if (!strcmp(f.id[i], "F-CAL")) assert_string_equal(f.cls[i], "IPF.Appointment");
        if (!strcmp(f.id[i], "F-PCT")) assert_string_equal(f.cls[i], "");
        if (!strcmp(f.id[i], "F-INBOX")) assert_int_equal(f.total[i], 42);
    }
    assert_string_equal(mv_ews_server_version(e), "15.2.1544 V2017_07_11");
    assert_int_equal(NREQ(s), 2);
    assert_int_equal(gl.acquired, 2);
    assert_int_equal(gl.released, 2);
    assert_int_equal(gl.last_weight, 1);
    for (int i = 0; i < 2; i++) {
        const tsrv_req *q = req_at(s, i);
        xmlDoc *d = req_doc(q);
        check_common(q, d, 1, basic_auth());
        const char *ff = "/s:Envelope/s:Body/m:FindFolder";
        xp_is(d, "/s:Envelope/s:Body/m:FindFolder/@Traversal", "Deep");
        (void)ff;
        xp_is(d, "/s:Envelope/s:Body/m:FindFolder/m:FolderShape/t:BaseShape", "IdOnly");
        assert_int_equal(
            xp_count(d, "/s:Envelope/s:Body/m:FindFolder/m:FolderShape/t:AdditionalProperties/"
                        "t:FieldURI[@FieldURI='folder:ParentFolderId' or "
                        "@FieldURI='folder:DisplayName' or @FieldURI='folder:FolderClass' or "
                        "@FieldURI='folder:TotalCount']"),
            4);
        xp_is(d, "/s:Envelope/s:Body/m:FindFolder/m:IndexedPageFolderView/@MaxEntriesReturned",
              "3");
        xp_is(d, "/s:Envelope/s:Body/m:FindFolder/m:IndexedPageFolderView/@Offset", i ? "3" : "0");
        xp_is(d, "/s:Envelope/s:Body/m:FindFolder/m:IndexedPageFolderView/@BasePoint", "Beginning");
        xp_is(d, "/s:Envelope/s:Body/m:FindFolder/m:ParentFolderIds/t:DistinguishedFolderId/@Id",
              "msgfolderroot");
        /* impersonation: no delegate mailbox in the folder id */
        assert_int_equal(xp_count(d, "//t:DistinguishedFolderId/t:Mailbox"), 0);
        /* schema order: FolderShape, IndexedPageFolderView, ParentFolderIds */
        xp_is(d, "local-name(/s:Envelope/s:Body/m:FindFolder/*[1])", "FolderShape");
        xp_is(d, "local-name(/s:Envelope/s:Body/m:FindFolder/*[2])", "IndexedPageFolderView");
        xp_is(d, "local-name(/s:Envelope/s:Body/m:FindFolder/*[3])", "ParentFolderIds");
        xmlFreeDoc(d);
    }
    /* the callback stops the listing */
    folders g = {.stop_at = 2};
    assert_int_equal(
        mv_ews_list_folders(e, MAILBOX, MV_EWS_ROOT_MAILBOX, on_folder, &g, err, sizeof err),
        MV_ECANCEL);
    assert_int_equal(g.n, 2);
    mv_ews_close(e);
    srv_stop(s);
}

static void test_folders_delegate_archive(void **state)
{
    (void)state;
    srv *s = srv_start(h_canned);
    canned(s, 200,
           FF_HEAD("1", "true") FOLDER("Folder", "A-IN", "AROOT", "Inbox", FCLASS("IPF.Note"), "3")
               FF_TAIL);
    mv_ews *e = client(s, 0, 0, 0);
    char err[MV_ERRLEN];
    folders f = {0};
    assert_int_equal(
        mv_ews_list_folders(e, MAILBOX, MV_EWS_ROOT_ARCHIVE, on_folder, &f, err, sizeof err),
        MV_OK);
    assert_int_equal(f.n, 1);
    assert_string_equal(f.path[0], "Inbox");
    const tsrv_req *q = req_at(s, 0);
    xmlDoc *d = req_doc(q);
    check_common(q, d, 0, basic_auth());
    xp_is(d, "//m:ParentFolderIds/t:DistinguishedFolderId/@Id", "archivemsgfolderroot");
    xp_is(d, "//m:ParentFolderIds/t:DistinguishedFolderId/t:Mailbox/t:EmailAddress", MAILBOX);
    xp_is(d, "//m:IndexedPageFolderView/@MaxEntriesReturned", "500");
    xmlFreeDoc(d);
    mv_ews_close(e);
    srv_stop(s);
}

#define PFOLDER(id, name, children)                                                                \
    "<t:Folder><t:FolderId Id=\"" id                                                               \
    "\"/><t:FolderClass>IPF.Note</t:FolderClass><t:DisplayName>" name                              \
    "</t:DisplayName><t:TotalCount>1</t:TotalCount><t:ChildFolderCount>" children                  \
    "</t:ChildFolderCount></t:Folder>"

static void h_public(srv *s, const tsrv_req *q, tsrv_resp *r)
{
    (void)s;
    r->status = 200;
    if (strstr(q->body, "Traversal=\"Deep\""))
        r->status = 400;
    else if (strstr(q->body, "publicfoldersroot"))
        r->body = FF_HEAD("2", "true") PFOLDER("P-A", "Projects", "1")
            PFOLDER("P-B", "Team/Shared", "0") FF_TAIL;
    else if (strstr(q->body, "Id=\"P-A\""))
        r->body = FF_HEAD("1", "true") PFOLDER("P-A1", "2024", "0") FF_TAIL;
    else
        r->status = 404;
}

static void test_folders_public(void **state)
{
    (void)state;
    srv *s = srv_start(h_public);
    mv_ews *e = client(s, 0, 0, 0);
    char err[MV_ERRLEN];
    folders f = {0};
    mv_err rc = mv_ews_list_folders(e, MAILBOX, MV_EWS_ROOT_PUBLIC, on_folder, &f, err, sizeof err);
    if (rc) fprintf(stderr, "%s\n", err);
    assert_int_equal(rc, MV_OK);
    assert_int_equal(f.n, 3);
    assert_string_equal(find_path(&f, "P-A"), "Projects");
    assert_string_equal(find_path(&f, "P-B"), "Team%2FShared");
    assert_string_equal(find_path(&f, "P-A1"), "Projects/2024");
    assert_int_equal(NREQ(s), 2); /* P-B has no children: not asked */
    const tsrv_req *q = req_at(s, 0);
    xmlDoc *d = req_doc(q);
    check_common(q, d, 0, basic_auth());
    xp_is(d, "/s:Envelope/s:Body/m:FindFolder/@Traversal", "Shallow");
    xp_is(d, "//m:ParentFolderIds/t:DistinguishedFolderId/@Id", "publicfoldersroot");
    assert_int_equal(xp_count(d, "//t:DistinguishedFolderId/t:Mailbox"), 0);
    xmlFreeDoc(d);
    q = req_at(s, 1);
    d = req_doc(q);
    xp_is(d, "/s:Envelope/s:Body/m:FindFolder/@Traversal", "Shallow");
    xp_is(d, "//m:ParentFolderIds/t:FolderId/@Id", "P-A");
    xmlFreeDoc(d);
    mv_ews_close(e);
    srv_stop(s);
}

/* ------------------------------------------------------------------ sync and find */

typedef struct changes {
    int n;
    mv_ews_change kind[16];
    char id[16][64], cls[16][32];
} changes;

static int on_item(void *ud, mv_ews_change kind, const char *id, const char *cls)
{
    changes *c = ud;
    assert_true(c->n < 16);
    c->kind[c->n] = kind;
    snprintf(c->id[c->n], sizeof c->id[0], "%s", id);
    snprintf(c->cls[c->n], sizeof c->cls[0], "%s", cls);
    c->n++;
    return 0;
}

#define SYNC_MSG(cls, inner)                                                                       \
    ENV_HEAD "<m:SyncFolderItemsResponse><m:ResponseMessages><m:SyncFolderItemsResponseMessage "   \
             "ResponseClass=\"" cls "\">" inner                                                    \
             "</m:SyncFolderItemsResponseMessage></m:ResponseMessages></"                          \
             "m:SyncFolderItemsResponse>" ENV_TAIL

static const char sync_answer[] = SYNC_MSG(
    "Success",
    "<m:ResponseCode>NoError</m:ResponseCode><m:SyncState>H4sIANEWSTATE==</m:SyncState>"
    "<m:IncludesLastItemInRange>false</m:IncludesLastItemInRange><m:Changes>"
    "<t:Delete><t:ItemId Id=\"I-DEL\" ChangeKey=\"CQ\"/></t:Delete>"
    "<t:Update><t:Item><t:ItemId Id=\"I-UPD\" ChangeKey=\"CQ\"/><t:ItemClass>IPM.Note</t:ItemClass>"
    "</t:Item></t:Update>"
    "<t:ReadFlagChange><t:ItemId Id=\"I-READ\" ChangeKey=\"CQ\"/><t:IsRead>true</t:IsRead>"
    "</t:ReadFlagChange>"
    "<t:Create><t:Message><t:ItemId Id=\"I-NEW1\" ChangeKey=\"CQ\"/>"
    "<t:ItemClass>IPM.Note</t:ItemClass></t:Message></t:Create>"
    "<t:Create><t:CalendarItem><t:ItemId Id=\"I-NEW2\"/><t:ItemClass>IPM.Appointment</t:ItemClass>"
    "</t:CalendarItem></t:Create>"
    "<t:Create><t:MeetingRequest><t:ItemId Id=\"I-NEW3\"/></t:MeetingRequest></t:Create>"
    "</m:Changes>");

static void test_sync(void **state)
{
    (void)state;
    srv *s = srv_start(h_canned);
    canned(s, 200, sync_answer);
    mv_ews *e = client(s, 1, 0, 0);
    char err[MV_ERRLEN];
    changes c = {0};
    char *st = NULL;
    int last = 1;
    mv_err rc = mv_ews_sync_items(e, MAILBOX, "F-INBOX", "OLDSTATE+/=", 100, on_item, &c, &st,
                                  &last, err, sizeof err);
    if (rc) fprintf(stderr, "%s\n", err);
    assert_int_equal(rc, MV_OK);
    assert_string_equal(st, "H4sIANEWSTATE==");
    free(st);
    assert_int_equal(last, 0);
    assert_int_equal(c.n, 6);
    assert_int_equal(c.kind[0], MV_EWS_DELETE);
    assert_string_equal(c.id[0], "I-DEL");
    assert_string_equal(c.cls[0], "");
    assert_int_equal(c.kind[1], MV_EWS_UPDATE);
    assert_string_equal(c.id[1], "I-UPD");
    assert_string_equal(c.cls[1], "IPM.Note");
    assert_int_equal(c.kind[2], MV_EWS_READ_FLAG);
    assert_string_equal(c.id[2], "I-READ");
    assert_int_equal(c.kind[3], MV_EWS_CREATE);
    assert_string_equal(c.id[3], "I-NEW1");
    assert_string_equal(c.cls[3], "IPM.Note");
    assert_int_equal(c.kind[4], MV_EWS_CREATE);
    assert_string_equal(c.cls[4], "IPM.Appointment");
    assert_string_equal(c.id[5], "I-NEW3");
    assert_string_equal(c.cls[5], "");

    const tsrv_req *q = req_at(s, 0);
    xmlDoc *d = req_doc(q);
    check_common(q, d, 1, basic_auth());
    const char *p = "/s:Envelope/s:Body/m:SyncFolderItems";
    (void)p;
    xp_is(d, "/s:Envelope/s:Body/m:SyncFolderItems/m:ItemShape/t:BaseShape", "IdOnly");
    xp_is(d,
          "/s:Envelope/s:Body/m:SyncFolderItems/m:ItemShape/t:AdditionalProperties/t:FieldURI/"
          "@FieldURI",
          "item:ItemClass");
    xp_is(d, "/s:Envelope/s:Body/m:SyncFolderItems/m:SyncFolderId/t:FolderId/@Id", "F-INBOX");
    xp_is(d, "/s:Envelope/s:Body/m:SyncFolderItems/m:SyncState", "OLDSTATE+/=");
    xp_is(d, "/s:Envelope/s:Body/m:SyncFolderItems/m:MaxChangesReturned", "100");
    xp_is(d, "local-name(/s:Envelope/s:Body/m:SyncFolderItems/*[1])", "ItemShape");
    xp_is(d, "local-name(/s:Envelope/s:Body/m:SyncFolderItems/*[2])", "SyncFolderId");
    xp_is(d, "local-name(/s:Envelope/s:Body/m:SyncFolderItems/*[3])", "SyncState");
    xp_is(d, "local-name(/s:Envelope/s:Body/m:SyncFolderItems/*[4])", "MaxChangesReturned");
    xmlFreeDoc(d);

    /* from the start: no SyncState element */
    c.n = 0;
    assert_int_equal(
        mv_ews_sync_items(e, MAILBOX, "F-INBOX", "", 5, on_item, &c, &st, &last, err, sizeof err),
        MV_OK);
    free(st);
    d = req_doc(req_at(s, 1));
    assert_int_equal(xp_count(d, "//m:SyncState"), 0);
    xp_is(d, "//m:MaxChangesReturned", "5");
    xmlFreeDoc(d);
    mv_ews_close(e);
    srv_stop(s);
}

static void test_sync_invalid_state(void **state)
{
    (void)state;
    srv *s = srv_start(h_canned);
    canned(s, 200,
           SYNC_MSG("Error", "<m:MessageText>Synchronization state data is corrupt or otherwise "
                             "invalid.</m:MessageText><m:ResponseCode>ErrorInvalidSyncStateData</"
                             "m:ResponseCode><m:DescriptiveLinkKey>0</m:DescriptiveLinkKey>"
                             "<m:SyncState/><m:IncludesLastItemInRange>true</"
                             "m:IncludesLastItemInRange>"));
    mv_ews *e = client(s, 1, 0, 0);
    char err[MV_ERRLEN];
    changes c = {0};
    char *st = (char *)"x";
    int last = 1;
    assert_int_equal(mv_ews_sync_items(e, MAILBOX, "F-INBOX", "STALE", 100, on_item, &c, &st, &last,
                                       err, sizeof err),
                     MV_ENOTFOUND);
    assert_non_null(strstr(err, "sync state invalid"));
    assert_non_null(strstr(err, "ErrorInvalidSyncStateData"));
    assert_null(st);
    assert_int_equal(c.n, 0);
    /* a missing state in a success answer is a protocol error and delivers nothing */
    canned(s, 200,
           SYNC_MSG("Success", "<m:ResponseCode>NoError</m:ResponseCode><m:SyncState/>"
                               "<m:IncludesLastItemInRange>true</m:IncludesLastItemInRange>"
                               "<m:Changes><t:Delete><t:ItemId Id=\"X\"/></t:Delete></m:Changes>"));
    assert_int_equal(mv_ews_sync_items(e, MAILBOX, "F-INBOX", NULL, 100, on_item, &c, &st, &last,
                                       err, sizeof err),
                     MV_EPROTO);
    assert_int_equal(c.n, 0);
    mv_ews_close(e);
    srv_stop(s);
}

#define FI_ANSWER(off, last, items)                                                                \
    ENV_HEAD "<m:FindItemResponse><m:ResponseMessages><m:FindItemResponseMessage "                 \
             "ResponseClass=\"Success\"><m:ResponseCode>NoError</m:ResponseCode><m:RootFolder "    \
             "IndexedPagingOffset=\"" off                                                          \
             "\" TotalItemsInView=\"3\" IncludesLastItemInRange=\"" last "\"><t:Items>" items      \
             "</t:Items></m:RootFolder></m:FindItemResponseMessage></"                             \
             "m:ResponseMessages></m:FindItemResponse>" ENV_TAIL

static void h_find(srv *s, const tsrv_req *q, tsrv_resp *r)
{
    (void)s;
    r->status = 200;
    if (strstr(q->body, "Offset=\"0\""))
        r->body = FI_ANSWER("2", "false",
                            "<t:Message><t:ItemId Id=\"M1\"/><t:ItemClass>IPM.Note</t:ItemClass>"
                            "</t:Message><t:PostItem><t:ItemId Id=\"M2\"/><t:ItemClass>IPM.Post"
                            "</t:ItemClass></t:PostItem>");
    else if (strstr(q->body, "Offset=\"2\""))
        r->body = FI_ANSWER("3", "true",
                            "<t:Message><t:ItemId Id=\"M3\"/><t:ItemClass>IPM.Note</t:ItemClass>"
                            "</t:Message>");
    else
        r->status = 404;
}

static void test_find_items(void **state)
{
    (void)state;
    srv *s = srv_start(h_find);
    mv_ews *e = client(s, 1, 2, 0);
    char err[MV_ERRLEN];
    changes c = {0};
    uint32_t off = 0, next = 0;
    int last = 0, pages = 0;
    while (!last) {
        mv_err rc =
            mv_ews_find_items(e, MAILBOX, "P-A", off, on_item, &c, &next, &last, err, sizeof err);
        if (rc) fprintf(stderr, "%s\n", err);
        assert_int_equal(rc, MV_OK);
        off = next;
        assert_true(++pages <= 2);
    }
    assert_int_equal(next, 3);
    assert_int_equal(c.n, 3);
    assert_string_equal(c.id[0], "M1");
    assert_string_equal(c.id[1], "M2");
    assert_string_equal(c.cls[1], "IPM.Post");
    assert_string_equal(c.id[2], "M3");
    for (int i = 0; i < 3; i++)
        assert_int_equal(c.kind[i], MV_EWS_CREATE);
    for (int i = 0; i < 2; i++) {
        const tsrv_req *q = req_at(s, i);
        xmlDoc *d = req_doc(q);
        check_common(q, d, 1, basic_auth());
        xp_is(d, "/s:Envelope/s:Body/m:FindItem/@Traversal", "Shallow");
        xp_is(d, "/s:Envelope/s:Body/m:FindItem/m:ItemShape/t:BaseShape", "IdOnly");
        xp_is(d,
              "/s:Envelope/s:Body/m:FindItem/m:ItemShape/t:AdditionalProperties/t:FieldURI/"
              "@FieldURI",
              "item:ItemClass");
        xp_is(d, "/s:Envelope/s:Body/m:FindItem/m:IndexedPageItemView/@MaxEntriesReturned", "2");
        xp_is(d, "/s:Envelope/s:Body/m:FindItem/m:IndexedPageItemView/@Offset", i ? "2" : "0");
        xp_is(d, "/s:Envelope/s:Body/m:FindItem/m:IndexedPageItemView/@BasePoint", "Beginning");
        xp_is(d, "/s:Envelope/s:Body/m:FindItem/m:SortOrder/t:FieldOrder/@Order", "Ascending");
        xp_is(d, "/s:Envelope/s:Body/m:FindItem/m:SortOrder/t:FieldOrder/t:FieldURI/@FieldURI",
              "item:DateTimeReceived");
        xp_is(d, "/s:Envelope/s:Body/m:FindItem/m:ParentFolderIds/t:FolderId/@Id", "P-A");
        xp_is(d, "local-name(/s:Envelope/s:Body/m:FindItem/*[3])", "SortOrder");
        xp_is(d, "local-name(/s:Envelope/s:Body/m:FindItem/*[4])", "ParentFolderIds");
        xmlFreeDoc(d);
    }
    mv_ews_close(e);
    srv_stop(s);
}

/* ------------------------------------------------------------------ writing (exports) */

#define RM_OK(op, inner)                                                                           \
    ENV_HEAD "<m:" op "Response><m:ResponseMessages><m:" op "ResponseMessage "                     \
             "ResponseClass=\"Success\"><m:ResponseCode>NoError</m:ResponseCode>" inner "</m:" op  \
             "ResponseMessage></m:ResponseMessages></m:" op "Response>" ENV_TAIL
#define RM_ERR(op, code)                                                                           \
    ENV_HEAD "<m:" op "Response><m:ResponseMessages><m:" op "ResponseMessage "                     \
             "ResponseClass=\"Error\"><m:MessageText>" code                                        \
             " text</m:MessageText><m:ResponseCode>" code "</m:ResponseCode></m:" op               \
             "ResponseMessage></m:ResponseMessages></m:" op "Response>" ENV_TAIL
#define FF_ONE(id, name)                                                                           \
    RM_OK("FindFolder",                                                                            \
          "<m:RootFolder IndexedPagingOffset=\"1\" TotalItemsInView=\"1\" "                        \
          "IncludesLastItemInRange=\"true\"><t:Folders><t:Folder><t:FolderId Id=\"" id             \
          "\"/><t:DisplayName>" name "</t:DisplayName></t:Folder></t:Folders>"                     \
          "</m:RootFolder>")
#define FF_NONE                                                                                    \
    RM_OK("FindFolder", "<m:RootFolder IndexedPagingOffset=\"0\" TotalItemsInView=\"0\" "          \
                        "IncludesLastItemInRange=\"true\"><t:Folders/></m:RootFolder>")

/* FindFolder finds "Root" (R1) at once and "Sub" only after a CreateFolder that says it exists
 * (made meanwhile by someone else); FindItem knows one Message-ID; CreateItem fails with a
 * full mailbox once s->state is 10. */
static void h_write(srv *s, const tsrv_req *q, tsrv_resp *r)
{
    r->status = 200;
    if (strstr(q->body, "<m:FindFolder")) {
        if (strstr(q->body, "Value=\"Root\""))
            r->body = FF_ONE("R1", "Root");
        else
            r->body = s->state == 1 ? FF_ONE("S1", "sub") : FF_NONE;
    } else if (strstr(q->body, "<m:CreateFolder")) {
        s->state = 1;
        r->body = RM_ERR("CreateFolder", "ErrorFolderExists");
    } else if (strstr(q->body, "<m:FindItem")) {
        r->body = strstr(q->body, "Value=\"&lt;known@x&gt;\"")
                      ? FI_ANSWER("1", "true", "<t:Message><t:ItemId Id=\"K1\"/></t:Message>")
                      : FI_ANSWER("0", "true", "");
    } else if (strstr(q->body, "<m:CreateItem")) {
        r->body = s->state == 10 ? RM_ERR("CreateItem", "ErrorQuotaExceeded")
                                 : RM_OK("CreateItem", "<m:Items><t:Message><t:ItemId Id=\"N1\" "
                                                       "ChangeKey=\"C\"/></t:Message></m:Items>");
    } else {
        r->status = 404;
    }
}

static const char MIME[] = "From: a@b\r\nMessage-ID: <m1@x>\r\nSubject: caf\xc3\xa9\r\n\r\nbody "
                           "with an odd length: 1234567\r\n";

/* The writer of mv_ews_message: MIME in pieces of 1..7 bytes (every base64 carry). */
static mv_err write_pieces(void *ud, int (*put)(void *ctx, const void *p, size_t n), void *ctx,
                           char *err, size_t errlen)
{
    (void)ud;
    size_t n = sizeof MIME - 1, o = 0, k = 1;
    while (o < n) {
        size_t take = k < n - o ? k : n - o;
        if (put(ctx, MIME + o, take)) return mv_seterr(err, errlen, MV_ECANCEL, "put refused");
        o += take;
        k = k % 7 + 1;
    }
    return MV_OK;
}

static void test_write(void **state)
{
    (void)state;
    srv *s = srv_start(h_write);
    mv_ews *e = client(s, 1, 0, 0);
    char err[MV_ERRLEN], *id = NULL;
    const char *names[] = {"Root", "Sub"};
    mv_err rc = mv_ews_ensure_folder(e, MAILBOX, names, 2, &id, err, sizeof err);
    if (rc) fprintf(stderr, "%s\n", err);
    assert_int_equal(rc, MV_OK);
    assert_string_equal(id, "S1");
    free(id);
    assert_int_equal(NREQ(s), 4); /* find Root, find Sub, create Sub (exists), find Sub */
    xmlDoc *d = req_doc(req_at(s, 0));
    check_common(req_at(s, 0), d, 1, basic_auth());
    xp_is(d, "local-name(/s:Envelope/s:Body/m:FindFolder/*[3])", "Restriction");
    xp_is(d, "local-name(/s:Envelope/s:Body/m:FindFolder/*[4])", "ParentFolderIds");
    xp_is(d, "/s:Envelope/s:Body/m:FindFolder/m:Restriction/t:IsEqualTo/t:FieldURI/@FieldURI",
          "folder:DisplayName");
    xp_is(d,
          "/s:Envelope/s:Body/m:FindFolder/m:Restriction/t:IsEqualTo/t:FieldURIOrConstant/"
          "t:Constant/@Value",
          "Root");
    xp_is(d, "/s:Envelope/s:Body/m:FindFolder/m:ParentFolderIds/t:DistinguishedFolderId/@Id",
          "msgfolderroot");
    xmlFreeDoc(d);
    d = req_doc(req_at(s, 2));
    xp_is(d, "/s:Envelope/s:Body/m:CreateFolder/m:ParentFolderId/t:FolderId/@Id", "R1");
    xp_is(d, "/s:Envelope/s:Body/m:CreateFolder/m:Folders/t:Folder/t:FolderClass", "IPF.Note");
    xp_is(d, "/s:Envelope/s:Body/m:CreateFolder/m:Folders/t:Folder/t:DisplayName", "Sub");
    xmlFreeDoc(d);
    const char *bad[] = {"Root", "a\tb"};
    assert_int_equal(mv_ews_ensure_folder(e, MAILBOX, bad, 2, &id, err, sizeof err), MV_EINVAL);
    assert_null(id);

    int found = -1;
    assert_int_equal(mv_ews_find_message(e, MAILBOX, "S1", "<known@x>", &found, err, sizeof err),
                     MV_OK);
    assert_int_equal(found, 1);
    d = req_doc(req_at(s, 4));
    xp_is(d, "local-name(/s:Envelope/s:Body/m:FindItem/*[3])", "Restriction");
    xp_is(d, "/s:Envelope/s:Body/m:FindItem/m:IndexedPageItemView/@MaxEntriesReturned", "1");
    xp_is(d, "/s:Envelope/s:Body/m:FindItem/m:Restriction/t:IsEqualTo/t:FieldURI/@FieldURI",
          "message:InternetMessageId");
    xp_is(d, "/s:Envelope/s:Body/m:FindItem/m:ParentFolderIds/t:FolderId/@Id", "S1");
    xmlFreeDoc(d);
    assert_int_equal(mv_ews_find_message(e, MAILBOX, "S1", "<other@x>", &found, err, sizeof err),
                     MV_OK);
    assert_int_equal(found, 0);
    assert_int_equal(mv_ews_find_message(e, MAILBOX, "S1", "<a b>", &found, err, sizeof err),
                     MV_EINVAL);

    mv_ews_message m = {.read = 1, .time = 1709622551, .write = write_pieces};
    rc = mv_ews_create_message(e, MAILBOX, "S1", &m, err, sizeof err);
    if (rc) fprintf(stderr, "%s\n", err);
    assert_int_equal(rc, MV_OK);
    int last = NREQ(s) - 1;
    d = req_doc(req_at(s, last));
    xp_is(d, "/s:Envelope/s:Body/m:CreateItem/@MessageDisposition", "SaveOnly");
    xp_is(d, "/s:Envelope/s:Body/m:CreateItem/m:SavedItemFolderId/t:FolderId/@Id", "S1");
    xp_is(d, "local-name(/s:Envelope/s:Body/m:CreateItem/m:Items/t:Message/*[1])", "MimeContent");
    xmlXPathObjectPtr o = xp_eval(d, "string(//t:Message/t:MimeContent)");
    unsigned char dec[512];
    int dl = EVP_DecodeBlock(dec, o->stringval, (int)strlen((const char *)o->stringval));
    xmlXPathFreeObject(o);
    assert_int_equal(dl - (int)((3 - (sizeof MIME - 1) % 3) % 3), (int)(sizeof MIME - 1));
    assert_memory_equal(dec, MIME, sizeof MIME - 1);
    assert_int_equal(xp_count(d, "//t:Message/t:ExtendedProperty"), 3);
    xp_is(d, "//t:ExtendedProperty[t:ExtendedFieldURI/@PropertyTag='0x0E07']/t:Value", "1");
    xp_is(d,
          "//t:ExtendedProperty[t:ExtendedFieldURI/@PropertyTag='0x0E07']/t:ExtendedFieldURI/"
          "@PropertyType",
          "Integer");
    xp_is(d, "//t:ExtendedProperty[t:ExtendedFieldURI/@PropertyTag='0x0E06']/t:Value",
          "2024-03-05T07:09:11Z");
    xp_is(d, "//t:ExtendedProperty[t:ExtendedFieldURI/@PropertyTag='0x0039']/t:Value",
          "2024-03-05T07:09:11Z");
    xmlFreeDoc(d);

    /* unread, no time: flags 0, no times */
    mv_ews_message m0 = {.read = 0, .time = 0, .write = write_pieces};
    assert_int_equal(mv_ews_create_message(e, MAILBOX, "S1", &m0, err, sizeof err), MV_OK);
    d = req_doc(req_at(s, NREQ(s) - 1));
    assert_int_equal(xp_count(d, "//t:Message/t:ExtendedProperty"), 1);
    xp_is(d, "//t:ExtendedProperty[t:ExtendedFieldURI/@PropertyTag='0x0E07']/t:Value", "0");
    xmlFreeDoc(d);

    /* a full mailbox */
    tsrv_lock(s->t);
    s->state = 10;
    tsrv_unlock(s->t);
    rc = mv_ews_create_message(e, MAILBOX, "S1", &m, err, sizeof err);
    assert_int_equal(rc, MV_ETOOBIG);
    assert_non_null(strstr(err, "ErrorQuotaExceeded"));
    mv_ews_close(e);

    /* larger than max_message: nothing is sent */
    e = client(s, 1, 0, 16);
    int before = NREQ(s);
    rc = mv_ews_create_message(e, MAILBOX, "S1", &m, err, sizeof err);
    assert_int_equal(rc, MV_ETOOBIG);
    assert_non_null(strstr(err, "max_message"));
    assert_int_equal(NREQ(s), before);
    mv_ews_close(e);
    srv_stop(s);

    /* the answer parser */
    mv_ews__info info;
    static const char no_folder[] = RM_OK("CreateFolder", "<m:Folders/>");
    assert_int_equal(mv_ews__parse_created(no_folder, strlen(no_folder), "CreateFolder", &id, &info,
                                           err, sizeof err),
                     MV_EPROTO);
    assert_null(id);
    static const char no_item[] = RM_OK("CreateItem", "<m:Items/>");
    assert_int_equal(
        mv_ews__parse_created(no_item, strlen(no_item), "CreateItem", &id, &info, err, sizeof err),
        MV_OK);
    assert_null(id);
    static const char made[] = RM_OK(
        "CreateFolder", "<m:Folders><t:Folder><t:FolderId Id=\"F9\"/></t:Folder></m:Folders>");
    assert_int_equal(
        mv_ews__parse_created(made, strlen(made), "CreateFolder", &id, &info, err, sizeof err),
        MV_OK);
    assert_string_equal(id, "F9");
    free(id);
}

/* ------------------------------------------------------------------ GetItem */

/* Deterministic message bytes (every byte value, CRLFs, '<' and '&'). */
static unsigned char *make_mime(size_t n, unsigned seed)
{
    unsigned char *p = malloc(n);
    assert_non_null(p);
    uint32_t x = seed * 2654435761u + 1;
    for (size_t i = 0; i < n; i++) {
        x = x * 1103515245u + 12345u;
        p[i] = (unsigned char)(x >> 16);
        if (i % 77 == 75) p[i] = '\r';
        if (i % 77 == 76) p[i] = '\n';
    }
    return p;
}

/* base64 of p, with CRLF every `wrap` output characters (0: none). */
static size_t b64_into(char *out, const unsigned char *p, size_t n, size_t wrap)
{
    static const char *t = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    size_t w = 0, col = 0;
    for (size_t i = 0; i < n; i += 3) {
        uint32_t v = (uint32_t)p[i] << 16;
        if (i + 1 < n) v |= (uint32_t)p[i + 1] << 8;
        if (i + 2 < n) v |= p[i + 2];
        char q[4] = {t[v >> 18 & 63], t[v >> 12 & 63], i + 1 < n ? t[v >> 6 & 63] : '=',
                     i + 2 < n ? t[v & 63] : '='};
        for (int k = 0; k < 4; k++) {
            out[w++] = q[k];
            if (wrap && ++col == wrap) {
                out[w++] = '\r';
                out[w++] = '\n';
                col = 0;
            }
        }
    }
    return w;
}

#define GI_HEAD ENV_HEAD "<m:GetItemResponse><m:ResponseMessages>"
#define GI_TAIL "</m:ResponseMessages></m:GetItemResponse>" ENV_TAIL
#define GI_OK_OPEN                                                                                 \
    "<m:GetItemResponseMessage ResponseClass=\"Success\"><m:ResponseCode>NoError</m:ResponseCode>" \
    "<m:Items><t:Message><t:MimeContent CharacterSet=\"UTF-8\">"
#define GI_OK_CLOSE                                                                                \
    "</t:MimeContent><t:ItemId Id=\"X\" ChangeKey=\"CQ\"/></t:Message></m:Items>"                  \
    "</m:GetItemResponseMessage>"
#define GI_NOTFOUND                                                                                \
    "<m:GetItemResponseMessage ResponseClass=\"Error\"><m:MessageText>The specified object was "   \
    "not found in the store.</m:MessageText><m:ResponseCode>ErrorItemNotFound</m:ResponseCode>"    \
    "<m:DescriptiveLinkKey>0</m:DescriptiveLinkKey><m:Items/></m:GetItemResponseMessage>"

typedef struct built {
    char *body;
    size_t len;
    unsigned char *m0, *m2;
    size_t n0, n2;
} built;

/* Three messages: MIME n0 (wrapped base64), ErrorItemNotFound, MIME n2 (one line). */
static void build_getitem(built *b, size_t n0, size_t n2)
{
    b->n0 = n0;
    b->n2 = n2;
    b->m0 = make_mime(n0, 1);
    b->m2 = make_mime(n2, 2);
    size_t cap = 4096 + (n0 + n2) * 2;
    b->body = malloc(cap);
    assert_non_null(b->body);
    size_t w = 0;
#define PUT(s)                                                                                     \
    do {                                                                                           \
        memcpy(b->body + w, s, strlen(s));                                                         \
        w += strlen(s);                                                                            \
    } while (0)
    PUT(GI_HEAD);
    PUT(GI_OK_OPEN);
    w += b64_into(b->body + w, b->m0, n0, 76);
    PUT(GI_OK_CLOSE);
    PUT(GI_NOTFOUND);
    PUT(GI_OK_OPEN);
    w += b64_into(b->body + w, b->m2, n2, 0);
    PUT(GI_OK_CLOSE);
    PUT(GI_TAIL);
#undef PUT
    b->body[w] = '\0';
    b->len = w;
}

static void built_free(built *b)
{
    free(b->body);
    free(b->m0);
    free(b->m2);
}

typedef struct got {
    unsigned char *data[3];
    size_t len[3];
    int begun[3], ended[3], failed[3];
    char code[3][64], text[3][128];
    int stop_in_data;
} got;

static int g_begin(void *ud, size_t i)
{
    got *g = ud;
    assert_true(i < 3);
    assert_int_equal(g->begun[i], 0);
    g->begun[i] = 1;
    return 0;
}

static int g_data(void *ud, size_t i, const void *p, size_t n)
{
    got *g = ud;
    assert_true(i < 3);
    assert_int_equal(g->begun[i], 1);
    g->data[i] = realloc(g->data[i], g->len[i] + n);
    memcpy(g->data[i] + g->len[i], p, n);
    g->len[i] += n;
    return g->stop_in_data;
}

static int g_end(void *ud, size_t i)
{
    got *g = ud;
    assert_true(i < 3);
    assert_int_equal(g->begun[i], 1);
    g->ended[i]++;
    return 0;
}

static void g_fail(void *ud, size_t i, const char *code, const char *text)
{
    got *g = ud;
    assert_true(i < 3);
    g->failed[i]++;
    snprintf(g->code[i], sizeof g->code[i], "%s", code);
    snprintf(g->text[i], sizeof g->text[i], "%s", text);
}

static void got_free(got *g)
{
    for (int i = 0; i < 3; i++)
        free(g->data[i]);
    memset(g, 0, sizeof *g);
}

static const mv_ews_mime_cb gcb = {g_begin, g_data, g_end, g_fail};

static void check_three(got *g, const built *b)
{
    assert_int_equal(g->ended[0], 1);
    assert_int_equal(g->failed[0], 0);
    assert_int_equal(g->len[0], b->n0);
    assert_memory_equal(g->data[0], b->m0, b->n0);
    assert_int_equal(g->begun[1], 0);
    assert_int_equal(g->failed[1], 1);
    assert_int_equal(g->ended[1], 0);
    assert_string_equal(g->code[1], "ErrorItemNotFound");
    assert_string_equal(g->text[1], "The specified object was not found in the store.");
    assert_int_equal(g->ended[2], 1);
    assert_int_equal(g->len[2], b->n2);
    assert_memory_equal(g->data[2], b->m2, b->n2);
}

static void test_get_mime_chunked(void **state)
{
    (void)state;
    built b;
    build_getitem(&b, 5000, 1234);
    srv *s = srv_start(h_canned);
    tsrv_lock(s->t);
    s->canned = b.body;
    s->canned_len = b.len;
    s->canned_piece = 7; /* 7-byte writes: tags and base64 split across pieces */
    tsrv_unlock(s->t);
    mv_ews *e = client(s, 1, 0, 0);
    gate_log gl = {0};
    mv_http_gate gate = {gate_acquire, gate_release, &gl};
    mv_ews_set_gate(e, &gate);
    char err[MV_ERRLEN];
    const char *ids[3] = {"ID-0", "ID-1", "ID-2"};
    got g = {0};
    mv_err rc = mv_ews_get_mime(e, MAILBOX, ids, 3, &gcb, &g, err, sizeof err);
    if (rc) fprintf(stderr, "%s\n", err);
    assert_int_equal(rc, MV_OK);
    check_three(&g, &b);
    got_free(&g);
    assert_int_equal(gl.acquired, 1);
    assert_int_equal(gl.released, 1);
    assert_int_equal(gl.last_weight, 3);
    assert_string_equal(mv_ews_server_version(e), "15.2.1544 V2017_07_11");

    const tsrv_req *q = req_at(s, 0);
    xmlDoc *d = req_doc(q);
    check_common(q, d, 1, basic_auth());
    xp_is(d, "/s:Envelope/s:Body/m:GetItem/m:ItemShape/t:BaseShape", "IdOnly");
    xp_is(d, "/s:Envelope/s:Body/m:GetItem/m:ItemShape/t:IncludeMimeContent", "true");
    assert_int_equal(xp_count(d, "/s:Envelope/s:Body/m:GetItem/m:ItemIds/t:ItemId"), 3);
    xp_is(d, "/s:Envelope/s:Body/m:GetItem/m:ItemIds/t:ItemId[1]/@Id", "ID-0");
    xp_is(d, "/s:Envelope/s:Body/m:GetItem/m:ItemIds/t:ItemId[2]/@Id", "ID-1");
    xp_is(d, "/s:Envelope/s:Body/m:GetItem/m:ItemIds/t:ItemId[3]/@Id", "ID-2");
    xmlFreeDoc(d);

    /* chunked transfer encoding in 5-byte chunks */
    tsrv_lock(s->t);
    s->canned_piece = 5;
    s->canned_chunked = 1;
    tsrv_unlock(s->t);
    assert_int_equal(mv_ews_get_mime(e, MAILBOX, ids, 3, &gcb, &g, err, sizeof err), MV_OK);
    check_three(&g, &b);
    got_free(&g);

    /* the caller's data callback stops the call */
    g.stop_in_data = 1;
    assert_int_equal(mv_ews_get_mime(e, MAILBOX, ids, 3, &gcb, &g, err, sizeof err), MV_ECANCEL);
    assert_int_equal(g.ended[0], 0);
    got_free(&g);

    /* the answer has fewer response messages than items asked for */
    const char *four[4] = {"a", "b", "c", "d"};
    assert_int_equal(mv_ews_get_mime(e, MAILBOX, four, 4, &gcb, &g, err, sizeof err), MV_EPROTO);
    assert_non_null(strstr(err, "3 response messages for 4 items"));
    got_free(&g);
    mv_ews_close(e);
    srv_stop(s);
    built_free(&b);
}

/* The pure stream parser fed in pieces of every size 1..13: identical results. */
static void test_getitem_parser_pieces(void **state)
{
    (void)state;
    built b;
    build_getitem(&b, 3001, 2);
    char err[MV_ERRLEN];
    for (size_t piece = 1; piece <= 13; piece++) {
        got g = {0};
        mv_ews__getitem *p = NULL;
        assert_int_equal(mv_ews__getitem_new(3, 1u << 20, &gcb, &g, &p, err, sizeof err), MV_OK);
        for (size_t off = 0; off < b.len; off += piece) {
            size_t k = b.len - off < piece ? b.len - off : piece;
            assert_int_equal(mv_ews__getitem_feed(p, b.body + off, k, err, sizeof err), MV_OK);
        }
        mv_err rc = mv_ews__getitem_finish(p, err, sizeof err);
        if (rc) fprintf(stderr, "piece %zu: %s\n", piece, err);
        assert_int_equal(rc, MV_OK);
        assert_string_equal(mv_ews__getitem_info(p)->server_version, "15.2.1544 V2017_07_11");
        mv_ews__getitem_free(p);
        check_three(&g, &b);
        got_free(&g);
    }
    built_free(&b);
}

static void test_get_mime_too_large(void **state)
{
    (void)state;
    built b;
    build_getitem(&b, 5000, 1500);
    srv *s = srv_start(h_canned);
    tsrv_lock(s->t);
    s->canned = b.body;
    s->canned_len = b.len;
    tsrv_unlock(s->t);
    mv_ews *e = client(s, 1, 0, 2000);
    char err[MV_ERRLEN];
    const char *ids[3] = {"ID-0", "ID-1", "ID-2"};
    got g = {0};
    assert_int_equal(mv_ews_get_mime(e, MAILBOX, ids, 3, &gcb, &g, err, sizeof err), MV_OK);
    assert_int_equal(g.begun[0], 1);
    assert_int_equal(g.ended[0], 0);
    assert_int_equal(g.failed[0], 1);
    assert_string_equal(g.code[0], "MimeTooLarge");
    assert_true(g.len[0] <= 2000);
    assert_string_equal(g.code[1], "ErrorItemNotFound");
    assert_int_equal(g.ended[2], 1);
    assert_int_equal(g.failed[2], 0);
    assert_int_equal(g.len[2], 1500);
    assert_memory_equal(g.data[2], b.m2, 1500);
    got_free(&g);
    mv_ews_close(e);
    srv_stop(s);
    built_free(&b);
}

/* ------------------------------------------------------------------ busy, blocked, errors */

#define GI_BUSY                                                                                    \
    "<m:GetItemResponseMessage ResponseClass=\"Error\"><m:MessageText>The server cannot service "  \
    "this request right now. Try again later.</m:MessageText><m:ResponseCode>ErrorServerBusy"      \
    "</m:ResponseCode><m:DescriptiveLinkKey>0</m:DescriptiveLinkKey><m:MessageXml><t:Value "       \
    "Name=\"BackOffMilliseconds\">1234</t:Value></m:MessageXml></m:GetItemResponseMessage>"

static void test_busy(void **state)
{
    (void)state;
    srv *s = srv_start(h_canned);
    mv_ews *e = client(s, 1, 0, 0);
    char err[MV_ERRLEN];
    const char *ids[2] = {"ID-0", "ID-1"};
    got g = {0};
    /* in the response messages (HTTP 200) */
    canned(s, 200, GI_HEAD GI_BUSY GI_BUSY GI_TAIL);
    assert_int_equal(mv_ews_get_mime(e, MAILBOX, ids, 2, &gcb, &g, err, sizeof err), MV_EBUSY);
    assert_int_equal(mv_ews_backoff_ms(e), 1234);
    assert_non_null(strstr(err, "ErrorServerBusy"));
    assert_int_equal(g.failed[0] + g.begun[0], 0);
    got_free(&g);
    /* a buffered operation's response message */
    canned(s, 200,
           ENV_HEAD "<m:FindItemResponse><m:ResponseMessages><m:FindItemResponseMessage "
                    "ResponseClass=\"Error\"><m:MessageText>busy</m:MessageText><m:ResponseCode>"
                    "ErrorServerBusy</m:ResponseCode><m:DescriptiveLinkKey>0</m:DescriptiveLinkKey>"
                    "<m:MessageXml><t:Value Name=\"BackOffMilliseconds\">777</t:Value></"
                    "m:MessageXml></m:FindItemResponseMessage></m:ResponseMessages></"
                    "m:FindItemResponse>" ENV_TAIL);
    uint32_t next;
    int last;
    assert_int_equal(
        mv_ews_find_items(e, MAILBOX, "F", 0, NULL, NULL, &next, &last, err, sizeof err), MV_EBUSY);
    assert_int_equal(mv_ews_backoff_ms(e), 777);
    /* as a SOAP fault (HTTP 500) */
    canned(s, 500,
           FAULT("ErrorServerBusy",
                 "The server cannot service this request right now. Try again later.",
                 BACKOFF("30000")));
    assert_int_equal(mv_ews_get_mime(e, MAILBOX, ids, 2, &gcb, &g, err, sizeof err), MV_EBUSY);
    assert_int_equal(mv_ews_backoff_ms(e), 30000);
    assert_non_null(strstr(err, "ErrorServerBusy: The server cannot service"));
    folders f = {0};
    assert_int_equal(
        mv_ews_list_folders(e, MAILBOX, MV_EWS_ROOT_MAILBOX, on_folder, &f, err, sizeof err),
        MV_EBUSY);
    assert_int_equal(mv_ews_backoff_ms(e), 30000);
    /* the concurrency limit */
    canned(s, 500,
           FAULT("ErrorExceededConnectionCount",
                 "You have exceeded the available concurrent connections for your account.",
                 "<t:MessageXml><t:Value Name=\"Policy\">MaxConcurrency</t:Value></t:MessageXml>"));
    assert_int_equal(
        mv_ews_find_items(e, MAILBOX, "F", 0, NULL, NULL, &next, &last, err, sizeof err), MV_EBUSY);
    assert_int_equal(mv_ews_backoff_ms(e), 0);
    assert_non_null(strstr(err, "ErrorExceededConnectionCount"));
    /* HTTP 503 with Retry-After */
    canned(s, 503, "<html><body>Service Unavailable</body></html>");
    tsrv_lock(s->t);
    s->canned_headers = "Retry-After: 7\r\n";
    tsrv_unlock(s->t);
    assert_int_equal(
        mv_ews_find_items(e, MAILBOX, "F", 0, NULL, NULL, &next, &last, err, sizeof err), MV_EBUSY);
    assert_int_equal(mv_ews_backoff_ms(e), 7000);
    /* the next good answer clears it */
    canned(s, 200, FI_ANSWER("0", "true", ""));
    assert_int_equal(
        mv_ews_find_items(e, MAILBOX, "F", 0, NULL, NULL, &next, &last, err, sizeof err), MV_OK);
    assert_int_equal(mv_ews_backoff_ms(e), 0);
    assert_int_equal(last, 1);
    mv_ews_close(e);
    srv_stop(s);
}

static void test_errors(void **state)
{
    (void)state;
    srv *s = srv_start(h_canned);
    mv_ews *e = client(s, 1, 0, 0);
    char err[MV_ERRLEN];
    uint32_t next;
    int last;
    /* EWS turned off: a bare 403 */
    canned(s, 403, "");
    assert_int_equal(
        mv_ews_find_items(e, MAILBOX, "F", 0, NULL, NULL, &next, &last, err, sizeof err), MV_EAUTH);
    assert_true(!strncmp(err, "EWS blocked", 11));
    /* Basic refused */
    canned(s, 401, "");
    assert_int_equal(
        mv_ews_find_items(e, MAILBOX, "F", 0, NULL, NULL, &next, &last, err, sizeof err), MV_EAUTH);
    assert_null(strstr(err, "EWS blocked"));
    struct {
        int status;
        const char *body;
        mv_err want;
        const char *text;
    } cases[] = {
        {500, FAULT("ErrorImpersonateUserDenied", "The account does not have permission.", ""),
         MV_EAUTH, "ErrorImpersonateUserDenied: The account"},
        {500,
         FAULT("ErrorNonExistentMailbox", "The SMTP address has no mailbox associated with it.",
               "<t:MessageXml><t:Value Name=\"SmtpAddress\">x@y</t:Value></t:MessageXml>"),
         MV_ENOTFOUND, "ErrorNonExistentMailbox"},
        {500, FAULT("ErrorInternalServerError", "An internal server error occurred.", ""),
         MV_ESERVER, "ErrorInternalServerError"},
        {500, FAULT("ErrorImpersonationDenied", "no", ""), MV_EAUTH, "ErrorImpersonationDenied"},
        {200,
         ENV_HEAD "<m:FindItemResponse><m:ResponseMessages><m:FindItemResponseMessage "
                  "ResponseClass=\"Error\"><m:MessageText>Access is denied.</m:MessageText>"
                  "<m:ResponseCode>ErrorAccessDenied</m:ResponseCode></m:FindItemResponseMessage>"
                  "</m:ResponseMessages></m:FindItemResponse>" ENV_TAIL,
         MV_EAUTH, "ErrorAccessDenied: Access is denied."},
        {200,
         ENV_HEAD "<m:FindItemResponse><m:ResponseMessages><m:FindItemResponseMessage "
                  "ResponseClass=\"Error\"><m:MessageText>gone\n\tnow</m:MessageText>"
                  "<m:ResponseCode>ErrorFolderNotFound</m:ResponseCode></m:FindItemResponseMessage>"
                  "</m:ResponseMessages></m:FindItemResponse>" ENV_TAIL,
         MV_ENOTFOUND, "ErrorFolderNotFound: gone"},
        {200, "this is not XML", MV_EPROTO, "not well-formed"},
        {200, ENV_HEAD "<m:GetFolderResponse/>" ENV_TAIL, MV_EPROTO, "FindItemResponse"},
        {200, FI_ANSWER("x", "true", ""), MV_EPROTO, "IndexedPagingOffset"},
        {200, FI_ANSWER("1", "true", "<t:Message><t:ItemClass>IPM.Note</t:ItemClass></t:Message>"),
         MV_EPROTO, "ItemId"},
        {500, "<html>oops</html>", MV_ESERVER, "HTTP 500"},
        {302, "", MV_EPROTO, "redirect"},
        {404, "", MV_EPROTO, "HTTP 404"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        canned(s, cases[i].status, cases[i].body);
        mv_err rc =
            mv_ews_find_items(e, MAILBOX, "F", 0, NULL, NULL, &next, &last, err, sizeof err);
        if (rc != cases[i].want || !strstr(err, cases[i].text))
            fprintf(stderr, "case %zu: rc %d err \"%s\"\n", i, (int)rc, err);
        assert_int_equal(rc, cases[i].want);
        assert_non_null(strstr(err, cases[i].text));
        for (const char *p = err; *p; p++)
            assert_true((unsigned char)*p >= 0x20); /* server text is sanitised */
    }
    /* an error inside one GetItem message fails only that item */
    canned(s, 200,
           GI_HEAD GI_NOTFOUND
           "<m:GetItemResponseMessage ResponseClass=\"Success\"><m:ResponseCode>NoError"
           "</m:ResponseCode><m:Items><t:Task><t:ItemId Id=\"T\"/></t:Task></m:Items>"
           "</m:GetItemResponseMessage>" GI_TAIL);
    const char *ids[2] = {"A", "B"};
    got g = {0};
    assert_int_equal(mv_ews_get_mime(e, MAILBOX, ids, 2, &gcb, &g, err, sizeof err), MV_OK);
    assert_string_equal(g.code[0], "ErrorItemNotFound");
    assert_string_equal(g.code[1], "NoMimeContent");
    got_free(&g);
    mv_ews_close(e);
    srv_stop(s);
}

/* ------------------------------------------------------------------ OAuth */

static void h_oauth(srv *s, const tsrv_req *q, tsrv_resp *r)
{
    if (is_token(q)) {
        token_answer(s, r);
        return;
    }
    /* state 0: the first token is refused once; state 1: every token is refused */
    int refuse = s->state == 1 || !strcmp(TSRV_HEADER(q, "Authorization"), "Bearer tok1");
    if (refuse) {
        r->status = 401;
        r->body = "";
        snprintf(r->headers, sizeof r->headers, "%s",
                 "WWW-Authenticate: Bearer\r\nx-ms-diagnostics: 2000003;reason=\"The token has "
                 "expired.\"\r\n");
        return;
    }
    r->status = 200;
    r->body = FI_ANSWER("0", "true", "");
}

static void test_oauth_refresh(void **state)
{
    (void)state;
    srv *s = srv_start(h_oauth);
    mv_ews *e = oauth_client(s);
    char err[MV_ERRLEN];
    uint32_t next;
    int last;
    mv_err rc = mv_ews_find_items(e, MAILBOX, "F", 0, NULL, NULL, &next, &last, err, sizeof err);
    if (rc) fprintf(stderr, "%s\n", err);
    assert_int_equal(rc, MV_OK);
    assert_int_equal(NTOKEN(s), 2); /* the first token, then one refresh */
    assert_int_equal(NREQ(s), 4);
    const tsrv_req *q = req_at(s, 0);
    assert_true(is_token(q));
    assert_non_null(strstr(q->body, "scope=https%3A%2F%2Foutlook.office365.com%2F.default"));
    assert_string_equal(TSRV_HEADER(req_at(s, 1), "Authorization"), "Bearer tok1");
    assert_string_equal(TSRV_HEADER(req_at(s, 3), "Authorization"), "Bearer tok2");
    xmlDoc *d = req_doc(req_at(s, 3));
    check_common(req_at(s, 3), d, 1, "Bearer tok2");
    xmlFreeDoc(d);
    /* the token is kept */
    assert_int_equal(
        mv_ews_find_items(e, MAILBOX, "F", 0, NULL, NULL, &next, &last, err, sizeof err), MV_OK);
    assert_int_equal(NTOKEN(s), 2);
    /* refused again after the refresh: MV_EAUTH, one more token only */
    tsrv_lock(s->t);
    s->state = 1;
    tsrv_unlock(s->t);
    assert_int_equal(
        mv_ews_find_items(e, MAILBOX, "F", 0, NULL, NULL, &next, &last, err, sizeof err), MV_EAUTH);
    assert_int_equal(NTOKEN(s), 3);
    assert_non_null(strstr(err, "after a token refresh"));
    assert_null(strstr(err, "tok2"));
    assert_null(strstr(err, "tok3"));
    mv_ews_close(e);
    srv_stop(s);
}

typedef struct tsrc {
    int calls;
    char stale[4][32];
} tsrc;

static mv_err src_need(void *ud, mv_oauth *a, mv_http *h, const char *stale, char *err,
                       size_t errlen)
{
    (void)h;
    (void)err;
    (void)errlen;
    tsrc *t = ud;
    assert_true(t->calls < 4);
    snprintf(t->stale[t->calls], sizeof t->stale[0], "%s", stale ? stale : "(none)");
    t->calls++;
    char tok[32];
    snprintf(tok, sizeof tok, "tok%d", t->calls);
    mv_oauth_set(a, tok, mv_now_ms() + 3600 * 1000);
    return MV_OK;
}

static void test_oauth_token_source(void **state)
{
    (void)state;
    srv *s = srv_start(h_oauth);
    mv_ews *e = oauth_client(s);
    tsrc t = {0};
    mv_oauth_source src = {src_need, &t};
    mv_ews_set_token_source(e, &src);
    char err[MV_ERRLEN];
    uint32_t next;
    int last;
    assert_int_equal(
        mv_ews_find_items(e, MAILBOX, "F", 0, NULL, NULL, &next, &last, err, sizeof err), MV_OK);
    assert_int_equal(t.calls, 2);
    assert_string_equal(t.stale[0], "(none)");
    assert_string_equal(t.stale[1], "tok1"); /* the refused token is handed to the source */
    assert_int_equal(NTOKEN(s), 0);
    mv_ews_close(e);
    srv_stop(s);
}

/* ------------------------------------------------------------------ hostile answers, secrets */

#define LAUGHS                                                                                     \
    "<?xml version=\"1.0\"?><!DOCTYPE s:Envelope [<!ENTITY a \"aaaaaaaaaaaaaaaa\">"                \
    "<!ENTITY b \"&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;\">"                             \
    "<!ENTITY c \"&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;\">"                             \
    "<!ENTITY d \"&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;\">"                             \
    "<!ENTITY e \"&d;&d;&d;&d;&d;&d;&d;&d;&d;&d;&d;&d;&d;&d;&d;&d;\">"                             \
    "<!ENTITY f \"&e;&e;&e;&e;&e;&e;&e;&e;&e;&e;&e;&e;&e;&e;&e;&e;\">"                             \
    "<!ENTITY g \"&f;&f;&f;&f;&f;&f;&f;&f;&f;&f;&f;&f;&f;&f;&f;&f;\">"                             \
    "<!ENTITY sys SYSTEM \"file:///etc/passwd\">]>"

static void test_doctype_refused(void **state)
{
    (void)state;
    char err[MV_ERRLEN];
    mv_ews__info info;
    changes c = {0};
    char *st = NULL;
    int last = 0;
    uint32_t next = 0;
    static const char sync_laughs[] = LAUGHS
        "<s:Envelope xmlns:s=\"" NS_S "\" xmlns:m=\"" NS_M "\" xmlns:t=\"" NS_T "\"><s:Body>"
        "<m:SyncFolderItemsResponse><m:ResponseMessages><m:SyncFolderItemsResponseMessage "
        "ResponseClass=\"Success\"><m:ResponseCode>NoError</m:ResponseCode><m:SyncState>&g;&sys;"
        "</m:SyncState><m:IncludesLastItemInRange>true</m:IncludesLastItemInRange></"
        "m:SyncFolderItemsResponseMessage></m:ResponseMessages></m:SyncFolderItemsResponse>"
        "</s:Body></s:Envelope>";
    assert_int_equal(mv_ews__parse_sync(sync_laughs, strlen(sync_laughs), on_item, &c, &st, &last,
                                        &info, err, sizeof err),
                     MV_EPROTO);
    assert_non_null(strstr(err, "DOCTYPE"));
    assert_null(st);
    assert_int_equal(mv_ews__parse_find_item(sync_laughs, strlen(sync_laughs), on_item, &c, &next,
                                             &last, &info, err, sizeof err),
                     MV_EPROTO);
    /* a fault body with a DOCTYPE is not read as a fault */
    assert_int_equal(
        mv_ews__map_http(500, sync_laughs, strlen(sync_laughs), 0, &info, err, sizeof err),
        MV_ESERVER);
    /* an undeclared entity without a DTD is simply malformed */
    static const char undeclared[] = ENV_HEAD "<m:X>&zz;</m:X>" ENV_TAIL;
    assert_int_equal(mv_ews__parse_sync(undeclared, strlen(undeclared), on_item, &c, &st, &last,
                                        &info, err, sizeof err),
                     MV_EPROTO);
    assert_int_equal(c.n, 0);

    /* the stream parser, and through HTTP */
    static const char gi_laughs[] = LAUGHS "<s:Envelope xmlns:s=\"" NS_S "\"><s:Body>&g;&g;&g;"
                                           "</s:Body></s:Envelope>";
    got g = {0};
    mv_ews__getitem *p = NULL;
    assert_int_equal(mv_ews__getitem_new(1, 1000, &gcb, &g, &p, err, sizeof err), MV_OK);
    mv_err rc = mv_ews__getitem_feed(p, gi_laughs, strlen(gi_laughs), err, sizeof err);
    if (!rc) rc = mv_ews__getitem_finish(p, err, sizeof err);
    assert_int_equal(rc, MV_EPROTO);
    assert_non_null(strstr(err, "DOCTYPE"));
    mv_ews__getitem_free(p);

    srv *s = srv_start(h_canned);
    canned(s, 200, gi_laughs);
    mv_ews *e = client(s, 1, 0, 0);
    const char *ids[1] = {"A"};
    assert_int_equal(mv_ews_get_mime(e, MAILBOX, ids, 1, &gcb, &g, err, sizeof err), MV_EPROTO);
    assert_non_null(strstr(err, "DOCTYPE"));
    canned(s, 200, sync_laughs);
    assert_int_equal(
        mv_ews_sync_items(e, MAILBOX, "F", NULL, 10, on_item, &c, &st, &last, err, sizeof err),
        MV_EPROTO);
    assert_non_null(strstr(err, "DOCTYPE"));
    assert_int_equal(c.n, 0);
    mv_ews_close(e);
    srv_stop(s);
    got_free(&g);
}

static void test_secrets_not_in_err(void **state)
{
    (void)state;
    srv *s = srv_start(h_canned);
    /* a server echoing the password (escaped in XML) in its fault text */
    canned(s, 500,
           FAULT("ErrorInvalidRequest", "bad logon svc / pa55:w&amp;rd&lt;Secret7&gt; !", ""));
    mv_ews *e = client(s, 1, 0, 0);
    char err[MV_ERRLEN];
    uint32_t next;
    int last;
    assert_int_equal(
        mv_ews_find_items(e, MAILBOX, "F", 0, NULL, NULL, &next, &last, err, sizeof err),
        MV_ESERVER);
    assert_non_null(strstr(err, "ErrorInvalidRequest"));
    assert_null(strstr(err, PASSWORD));
    assert_non_null(strstr(err, "***"));
    /* and inside a GetItem message */
    canned(s, 200,
           GI_HEAD "<m:GetItemResponseMessage ResponseClass=\"Error\"><m:MessageText>"
                   "pa55:w&amp;rd&lt;Secret7&gt;</m:MessageText><m:ResponseCode>ErrorServerBusy"
                   "</m:ResponseCode></m:GetItemResponseMessage>" GI_TAIL);
    const char *ids[1] = {"A"};
    got g = {0};
    assert_int_equal(mv_ews_get_mime(e, MAILBOX, ids, 1, &gcb, &g, err, sizeof err), MV_EBUSY);
    assert_null(strstr(err, PASSWORD));
    mv_ews_close(e);
    srv_stop(s);
    got_free(&g);
}

static void h_badsecret(srv *s, const tsrv_req *q, tsrv_resp *r)
{
    (void)s;
    (void)q;
    r->status = 401;
    r->body = "{\"error\":\"invalid_client\",\"error_description\":\"AADSTS7000215: Invalid client "
              "secret provided: " CLIENT_SECRET "\"}";
}

static void test_oauth_secret_not_in_err(void **state)
{
    (void)state;
    srv *s = srv_start(h_badsecret);
    mv_ews *e = oauth_client(s);
    char err[MV_ERRLEN];
    uint32_t next;
    int last;
    assert_int_equal(
        mv_ews_find_items(e, MAILBOX, "F", 0, NULL, NULL, &next, &last, err, sizeof err), MV_EAUTH);
    assert_non_null(strstr(err, "AADSTS7000215"));
    assert_null(strstr(err, CLIENT_SECRET));
    assert_int_equal(NTOKEN(s), 1);
    mv_ews_close(e);
    srv_stop(s);
}

/* ------------------------------------------------------------------ parsers on odd input */

static void test_parsers(void **state)
{
    (void)state;
    char err[MV_ERRLEN];
    mv_ews__info info;
    got g = {0};
    mv_ews__getitem *p = NULL;
    /* nesting deeper than allowed in a streamed answer */
    char deep[4096];
    size_t w = (size_t)snprintf(deep, sizeof deep, "%s", GI_HEAD GI_OK_OPEN);
    for (int i = 0; i < 80; i++)
        w += (size_t)snprintf(deep + w, sizeof deep - w, "<t:x>");
    assert_int_equal(mv_ews__getitem_new(1, 1000, &gcb, &g, &p, err, sizeof err), MV_OK);
    assert_int_equal(mv_ews__getitem_feed(p, deep, w, err, sizeof err), MV_EPROTO);
    assert_non_null(strstr(err, "deeper"));
    assert_int_equal(mv_ews__getitem_feed(p, "x", 1, err, sizeof err), MV_EPROTO); /* sticky */
    mv_ews__getitem_free(p);
    got_free(&g);
    /* bad base64 */
    static const char bad64[] = GI_HEAD GI_OK_OPEN "QUJD*" GI_OK_CLOSE GI_TAIL;
    assert_int_equal(mv_ews__getitem_new(1, 1000, &gcb, &g, &p, err, sizeof err), MV_OK);
    mv_err rc = mv_ews__getitem_feed(p, bad64, strlen(bad64), err, sizeof err);
    if (!rc) rc = mv_ews__getitem_finish(p, err, sizeof err);
    assert_int_equal(rc, MV_EPROTO);
    assert_non_null(strstr(err, "base64"));
    mv_ews__getitem_free(p);
    got_free(&g);
    /* more messages than items; empty answer; cut answer */
    static const char two[] = GI_HEAD GI_NOTFOUND GI_NOTFOUND GI_TAIL;
    assert_int_equal(mv_ews__getitem_new(1, 1000, &gcb, &g, &p, err, sizeof err), MV_OK);
    rc = mv_ews__getitem_feed(p, two, strlen(two), err, sizeof err);
    if (!rc) rc = mv_ews__getitem_finish(p, err, sizeof err);
    assert_int_equal(rc, MV_EPROTO);
    mv_ews__getitem_free(p);
    got_free(&g);
    assert_int_equal(mv_ews__getitem_new(1, 1000, &gcb, &g, &p, err, sizeof err), MV_OK);
    assert_int_equal(mv_ews__getitem_finish(p, err, sizeof err), MV_EPROTO);
    mv_ews__getitem_free(p);
    assert_int_equal(mv_ews__getitem_new(1, 1000, &gcb, &g, &p, err, sizeof err), MV_OK);
    assert_int_equal(mv_ews__getitem_feed(p, two, 200, err, sizeof err), MV_OK);
    assert_int_equal(mv_ews__getitem_finish(p, err, sizeof err), MV_EPROTO);
    mv_ews__getitem_free(p);
    got_free(&g);
    /* a fault inside a 200 stream */
    static const char fault200[] = FAULT("ErrorServerBusy", "busy", BACKOFF("4321"));
    assert_int_equal(mv_ews__getitem_new(1, 1000, &gcb, &g, &p, err, sizeof err), MV_OK);
    assert_int_equal(mv_ews__getitem_feed(p, fault200, strlen(fault200), err, sizeof err),
                     MV_EBUSY);
    assert_int_equal(mv_ews__getitem_info(p)->backoff_ms, 4321);
    mv_ews__getitem_free(p);
    got_free(&g);

    /* the status mapper */
    assert_int_equal(mv_ews__map_http(403, NULL, 0, 0, &info, err, sizeof err), MV_EAUTH);
    assert_true(!strncmp(err, "EWS blocked", 11));
    assert_int_equal(mv_ews__map_http(429, "", 0, 2000, &info, err, sizeof err), MV_EBUSY);
    assert_int_equal(info.backoff_ms, 2000);
    static const char huge_backoff[] = FAULT("ErrorServerBusy", "b", BACKOFF("99999999999"));
    assert_int_equal(
        mv_ews__map_http(500, huge_backoff, strlen(huge_backoff), 0, &info, err, sizeof err),
        MV_EBUSY);
    assert_int_equal(info.backoff_ms, 3600000);
    assert_int_equal(mv_ews__code_err("ErrorInvalidSyncStateData"), MV_ENOTFOUND);
    assert_int_equal(mv_ews__code_err("ErrorMailboxMoveInProgress"), MV_ESERVER);

    /* folder answers: a cycle in the parent chain is refused by the listing, a folder entry
     * without an id by the parser */
    static const char noid[] = FF_HEAD("1", "true") "<t:Folder><t:DisplayName>x</t:DisplayName>"
                                                    "</t:Folder>" FF_TAIL;
    uint32_t next;
    int last;
    assert_int_equal(mv_ews__parse_find_folder(noid, strlen(noid), NULL, NULL, &next, &last, &info,
                                               err, sizeof err),
                     MV_EPROTO);
    char *j = mv_ews__path_join("a/b", "c/d%e");
    assert_string_equal(j, "a/b/c%2Fd%25e");
    free(j);
}

static const char ff_cycle[] = FF_HEAD("2", "true") FOLDER("Folder", "C1", "C2", "one", "", "0")
    FOLDER("Folder", "C2", "C1", "two", "", "0") FF_TAIL;

static void test_folder_cycle(void **state)
{
    (void)state;
    srv *s = srv_start(h_canned);
    canned(s, 200, ff_cycle);
    mv_ews *e = client(s, 1, 0, 0);
    char err[MV_ERRLEN];
    folders f = {0};
    assert_int_equal(
        mv_ews_list_folders(e, MAILBOX, MV_EWS_ROOT_MAILBOX, on_folder, &f, err, sizeof err),
        MV_EPROTO);
    assert_non_null(strstr(err, "cycle"));
    assert_int_equal(f.n, 0);
    /* paging that does not advance */
    canned(s, 200, FF_HEAD("0", "false") FOLDER("Folder", "X", "R", "x", "", "0") FF_TAIL);
    assert_int_equal(
        mv_ews_list_folders(e, MAILBOX, MV_EWS_ROOT_MAILBOX, on_folder, &f, err, sizeof err),
        MV_EPROTO);
    mv_ews_close(e);
    srv_stop(s);
}

int main(void)
{
    xmlInitParser();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_open_validation),
        cmocka_unit_test(test_folders_deep),
        cmocka_unit_test(test_folders_delegate_archive),
        cmocka_unit_test(test_folders_public),
        cmocka_unit_test(test_folder_cycle),
        cmocka_unit_test(test_sync),
        cmocka_unit_test(test_sync_invalid_state),
        cmocka_unit_test(test_find_items),
        cmocka_unit_test(test_write),
        cmocka_unit_test(test_get_mime_chunked),
        cmocka_unit_test(test_getitem_parser_pieces),
        cmocka_unit_test(test_get_mime_too_large),
        cmocka_unit_test(test_busy),
        cmocka_unit_test(test_errors),
        cmocka_unit_test(test_oauth_refresh),
        cmocka_unit_test(test_oauth_token_source),
        cmocka_unit_test(test_doctype_refused),
        cmocka_unit_test(test_secrets_not_in_err),
        cmocka_unit_test(test_oauth_secret_not_in_err),
        cmocka_unit_test(test_parsers),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    xmlCleanupParser();
    return rc;
}

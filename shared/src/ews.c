/* ews.c - Exchange Web Services client (SOAP 1.1 over mv_http, libxml2) for the archiving worker.
 *
 * Why this shape
 * - One mv_ews owns one mv_http (one curl easy handle with keep-alive) and, for OAuth, one
 *   mv_oauth; it is used by one thread. Every EWS request goes through ews_call: the gate
 *   around it, X-AnchorMailbox, Basic/NTLM credentials or the bearer token (refreshed once on
 *   a 401, the stale token handed to the token source), and the mapping of non-2xx answers.
 * - Requests are written with xmlTextWriter, so every id, address and sync state is escaped by
 *   libxml2; nothing is pasted into XML by hand. Ids and addresses are checked to be printable
 *   ASCII first (they also go into a header and into the worker's keys).
 * - Buffered answers (FindFolder, FindItem, SyncFolderItems, faults, bounded by max_xml or the
 *   HTTP layer's error-body cap) are parsed with libxml2's DOM parser and walked by namespace
 *   URI + local name. Options: XML_PARSE_NONET, never NOENT, never DTD loading; a DOCTYPE is
 *   refused as soon as the parser reports it (the SAX internalSubset hook stops the parser
 *   before the internal subset is read), so entity declarations never exist and nothing can
 *   expand. XML_PARSE_HUGE is not used: libxml2's default limits (10 MB text nodes, depth 256)
 *   are far above a sane answer; the push parser below delivers a long text node in pieces
 *   without those limits applying to the total (checked: 250 MiB of text parse in ~5 MB RSS).
 * - GetItem answers are never held: the HTTP sink feeds libxml2's SAX2 push parser, which
 *   tracks the element path on a small stack (depth refused past MAX_XML_DEPTH) and base64-
 *   decodes each t:MimeContent straight into the caller's data callback, counting decoded
 *   bytes against max_message (an item past it is failed "MimeTooLarge", its remaining
 *   base64 is read and dropped). The whole streamed answer is bounded too (n items of
 *   max_message plus max_xml).
 * - The parsers are pure functions over bytes (ews_internal.h), so the unit tests and the
 *   fuzz target drive exactly the code the HTTP paths use. Callbacks of the buffered parsers
 *   run only after the whole answer was checked, so a malformed page delivers nothing.
 * - Paging is bounded (MAX_PAGES per call, MAX_FOLDERS folders, folder depth MAX_DEPTH). A
 *   Deep FindFolder lists the whole tree in pages; parents are looked up after the last page
 *   (the order of a Deep traversal is not promised), and a parent that is not in the listing
 *   (the root itself, or a folder we may not see) makes its child a top-level folder. Public
 *   folders do not allow Deep traversal: they are walked level by level.
 *
 * Contracts
 * - Errors: err is "<ResponseCode>: <MessageText>" for Exchange's errors (server text
 *   sanitised), scrubbed of the password and client secret before any public call returns, and
 *   never holds a token. mv_ews_backoff_ms is reset by every call and set by busy answers.
 * - GetItem: every begin(i) is followed by end(i) or fail(i) while the call succeeds; when the
 *   call itself fails (transport, busy, malformed answer, cancel) an item begun and not ended
 *   is to be discarded by the caller, and items not yet reached got no callback.
 * - Only http and https URLs; http exists for loopback tests and the simulator. */
#include "mv/ews.h"
#include "mv/xmlsafe.h"
#include "mv/http.h"
#include "mv/log.h"
#include "mv/oauth.h"
#include "ews_internal.h"

#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <libxml/parser.h>
#include <libxml/tree.h>
#include <libxml/xmlwriter.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <time.h>

#define NS_SOAP "http://schemas.xmlsoap.org/soap/envelope/"
#define NS_M "http://schemas.microsoft.com/exchange/services/2006/messages"
#define NS_T "http://schemas.microsoft.com/exchange/services/2006/types"

#define MAX_PAGES 100000   /* pages followed by one listing call */
#define MAX_DEPTH 64       /* folder tree depth */
#define MAX_FOLDERS 200000 /* folders of one listing */
#define MAX_XML_DEPTH 64   /* element nesting of a streamed GetItem answer */
#define MAX_ID 4096        /* bytes of an item or folder id */
#define CODE_MAX 128       /* kept bytes of a ResponseCode */
#define TEXT_MAX 512       /* kept bytes of a MessageText */
#define ANY_NS ((const char *)1)
#define MAX_FOLDER_NAME 255 /* bytes of a display name we create */
#define MAX_MSGID MV_EWS_MAX_MSGID

struct mv_ews {
    mv_ews_opts o; /* string members point at the owned copies below or are NULL */
    char *url, *username, *password, *server_version_req;
    mv_http *http;
    mv_oauth *oauth; /* OAUTH only */
    mv_http_gate gate;
    int64_t backoff_ms;
    char server_version[96];
};

/* ------------------------------------------------------------------ small helpers */

static char *xstrdup(const char *s)
{
    if (!s) return NULL;
    size_t n = strlen(s) + 1;
    char *p = malloc(n);
    if (p) memcpy(p, s, n);
    return p;
}

/* An id, sync state or version we send: 1..max bytes of printable ASCII without space. */
static int token_ok(const char *s, size_t max)
{
    if (!s || !*s) return 0;
    size_t n = 0;
    for (; *s; s++, n++)
        if ((unsigned char)*s <= 0x20 || (unsigned char)*s >= 0x7f || n >= max) return 0;
    return 1;
}

static void copy_bounded(char *out, size_t outlen, const char *s, size_t n)
{
    if (!outlen) return;
    if (n >= outlen) n = outlen - 1;
    memcpy(out, s, n);
    out[n] = '\0';
}

/* Trim ASCII whitespace in place. */
static char *trim(char *s)
{
    while (*s == ' ' || *s == '\t' || *s == '\r' || *s == '\n')
        s++;
    size_t n = strlen(s);
    while (n > 0 && (s[n - 1] == ' ' || s[n - 1] == '\t' || s[n - 1] == '\r' || s[n - 1] == '\n'))
        s[--n] = '\0';
    return s;
}

/* A non-negative decimal of at most 19 digits (whitespace around allowed); -1 otherwise. */
static int64_t parse_u63(const char *s)
{
    if (!s) return -1;
    while (*s == ' ' || *s == '\t' || *s == '\r' || *s == '\n')
        s++;
    int64_t v = 0;
    int nd = 0;
    for (; *s >= '0' && *s <= '9'; s++) {
        if (++nd > 18) return -1;
        v = v * 10 + (*s - '0');
    }
    while (*s == ' ' || *s == '\t' || *s == '\r' || *s == '\n')
        s++;
    return nd && !*s ? v : -1;
}

static int parse_bool(const char *s, int *out)
{
    if (!s) return -1;
    char buf[8];
    size_t n = strlen(s);
    while (n && (*s == ' ' || *s == '\t' || *s == '\r' || *s == '\n'))
        s++, n--;
    while (n && (s[n - 1] == ' ' || s[n - 1] == '\t' || s[n - 1] == '\r' || s[n - 1] == '\n'))
        n--;
    if (n >= sizeof buf) return -1;
    memcpy(buf, s, n);
    buf[n] = '\0';
    if (!strcmp(buf, "true") || !strcmp(buf, "1")) {
        *out = 1;
        return 0;
    }
    if (!strcmp(buf, "false") || !strcmp(buf, "0")) {
        *out = 0;
        return 0;
    }
    return -1;
}

static int64_t cap_backoff(int64_t v)
{
    return v < 0 ? 0 : v > MV_HTTP_RETRY_AFTER_MAX_MS ? MV_HTTP_RETRY_AFTER_MAX_MS : v;
}

char *mv_ews__path_join(const char *parent, const char *name)
{
    return mv_path_join(parent, name);
}

/* ------------------------------------------------------------------ error mapping */

mv_err mv_ews__code_err(const char *code)
{
    if (!code) return MV_ESERVER;
    if (!strcmp(code, "ErrorServerBusy") || !strcmp(code, "ErrorExceededConnectionCount"))
        return MV_EBUSY;
    if (!strcmp(code, "ErrorAccessDenied") || !strcmp(code, "ErrorImpersonateUserDenied") ||
        !strcmp(code, "ErrorImpersonationDenied"))
        return MV_EAUTH;
    if (!strcmp(code, "ErrorQuotaExceeded")) return MV_ETOOBIG;
    if (!strcmp(code, "ErrorNonExistentMailbox") || !strcmp(code, "ErrorFolderNotFound") ||
        !strcmp(code, "ErrorInvalidSyncStateData"))
        return MV_ENOTFOUND;
    return MV_ESERVER;
}

/* Set err for an Exchange error code (and the backoff of a busy one). */
static mv_err code_error(const char *code, const char *text, int64_t backoff_ms, mv_ews__info *info,
                         char *err, size_t errlen)
{
    if (!code || !*code) code = "Error";
    mv_err e = mv_ews__code_err(code);
    if (e == MV_EBUSY && info) info->backoff_ms = cap_backoff(backoff_ms);
    if (!strcmp(code, "ErrorInvalidSyncStateData"))
        mv_seterr(err, errlen, e, "sync state invalid (%s: %s)", code,
                  text && *text ? text : "the state was refused");
    else if (text && *text)
        mv_seterr(err, errlen, e, "%s: %s", code, text);
    else
        mv_seterr(err, errlen, e, "%s", code);
    mv_sanitize(err);
    return e;
}

/* ------------------------------------------------------------------ DOM helpers */

static int is_el(const xmlNode *n, const char *ns, const char *name)
{
    if (!n || n->type != XML_ELEMENT_NODE || strcmp((const char *)n->name, name)) return 0;
    if (ns == ANY_NS) return 1;
    if (!ns) return !n->ns;
    return n->ns && n->ns->href && !strcmp((const char *)n->ns->href, ns);
}

static xmlNode *first_el(xmlNode *n)
{
    for (; n; n = n->next)
        if (n->type == XML_ELEMENT_NODE) return n;
    return NULL;
}

static xmlNode *next_el(xmlNode *n)
{
    return n ? first_el(n->next) : NULL;
}

static xmlNode *child_el(xmlNode *p, const char *ns, const char *name)
{
    for (xmlNode *c = p ? first_el(p->children) : NULL; c; c = next_el(c))
        if (is_el(c, ns, name)) return c;
    return NULL;
}

/* Text of an element into out (trimmed, sanitised, truncated); "" when absent. */
static void text_into(xmlNode *n, char *out, size_t outlen)
{
    if (!outlen) return;
    out[0] = '\0';
    if (!n) return;
    xmlChar *c = xmlNodeGetContent(n);
    if (!c) return;
    char *t = trim((char *)c);
    copy_bounded(out, outlen, t, strlen(t));
    mv_sanitize(out);
    xmlFree(c);
}

/* Text of an element, malloc'd and trimmed; NULL when absent or out of memory (*nomem). */
static char *text_dup(xmlNode *n, int *nomem)
{
    if (!n) return NULL;
    xmlChar *c = xmlNodeGetContent(n);
    if (!c) {
        *nomem = 1;
        return NULL;
    }
    char *r = xstrdup(trim((char *)c));
    xmlFree(c);
    if (!r) *nomem = 1;
    return r;
}

static void attr_into(xmlNode *n, const char *name, char *out, size_t outlen)
{
    out[0] = '\0';
    xmlChar *v = n ? xmlGetNoNsProp(n, (const xmlChar *)name) : NULL;
    if (!v) return;
    copy_bounded(out, outlen, (const char *)v, strlen((const char *)v));
    xmlFree(v);
}

/* Parse a buffered answer. A DOCTYPE is refused; parse errors name libxml2's message. */
static mv_err load_xml(const char *body, size_t len, const char *what, xmlDoc **out, char *err,
                       size_t errlen)
{
    return mv_xml_load(body, len, INT_MAX, XML_PARSE_NOBLANKS, what, out, err, errlen);
}

/* "15.2.1544 V2017_07_11" from t:ServerVersionInfo's attributes ("" if they look odd). */
static void version_of(xmlNode *svi, char *out, size_t outlen)
{
    char maj[16], min[16], build[16], ver[48];
    out[0] = '\0';
    attr_into(svi, "MajorVersion", maj, sizeof maj);
    attr_into(svi, "MinorVersion", min, sizeof min);
    attr_into(svi, "MajorBuildNumber", build, sizeof build);
    attr_into(svi, "Version", ver, sizeof ver);
    if (parse_u63(maj) < 0 || parse_u63(min) < 0 || parse_u63(build) < 0) return;
    for (const char *p = ver; *p; p++)
        if (!((*p >= '0' && *p <= '9') || (*p >= 'A' && *p <= 'Z') || (*p >= 'a' && *p <= 'z') ||
              *p == '_' || *p == '.'))
            return;
    snprintf(out, outlen, "%s.%s.%s%s%s", maj, min, build, *ver ? " " : "", ver);
}

/* BackOffMilliseconds among the t:Value children of a MessageXml element; -1 if none. */
static int64_t backoff_of(xmlNode *mx)
{
    for (xmlNode *v = mx ? first_el(mx->children) : NULL; v; v = next_el(v)) {
        if (!is_el(v, ANY_NS, "Value")) continue;
        char name[64];
        attr_into(v, "Name", name, sizeof name);
        if (strcmp(name, "BackOffMilliseconds")) continue;
        char val[32];
        text_into(v, val, sizeof val);
        int64_t ms = parse_u63(val);
        if (ms >= 0) return cap_backoff(ms);
    }
    return -1;
}

/* A SOAP fault element -> the mapped error. */
static mv_err fault_error(xmlNode *fault, mv_ews__info *info, char *err, size_t errlen)
{
    char code[CODE_MAX], text[TEXT_MAX], fcode[CODE_MAX], fstring[TEXT_MAX];
    xmlNode *detail = child_el(fault, ANY_NS, "detail");
    text_into(child_el(detail, ANY_NS, "ResponseCode"), code, sizeof code);
    text_into(child_el(detail, ANY_NS, "Message"), text, sizeof text);
    text_into(child_el(fault, ANY_NS, "faultcode"), fcode, sizeof fcode);
    text_into(child_el(fault, ANY_NS, "faultstring"), fstring, sizeof fstring);
    int64_t bo = backoff_of(child_el(detail, ANY_NS, "MessageXml"));
    if (!*code) {
        const char *colon = strrchr(fcode, ':');
        snprintf(code, sizeof code, "%s", colon ? colon + 1 : fcode);
    }
    if (!*code) snprintf(code, sizeof code, "%s", "SOAP fault");
    return code_error(code, *text ? text : fstring, bo, info, err, errlen);
}

/* The envelope: root s:Envelope, t:ServerVersionInfo in the header (kept in info), a fault in
 * the body mapped to its error; else *op is the body's first element. */
static mv_err open_envelope(xmlDoc *d, const char *what, mv_ews__info *info, xmlNode **op,
                            char *err, size_t errlen)
{
    xmlNode *env = xmlDocGetRootElement(d);
    if (!is_el(env, NS_SOAP, "Envelope"))
        return mv_seterr(err, errlen, MV_EPROTO, "%s: the answer is not a SOAP 1.1 envelope", what);
    xmlNode *svi = child_el(child_el(env, NS_SOAP, "Header"), NS_T, "ServerVersionInfo");
    if (svi && info) version_of(svi, info->server_version, sizeof info->server_version);
    xmlNode *body = child_el(env, NS_SOAP, "Body");
    if (!body) return mv_seterr(err, errlen, MV_EPROTO, "%s: the envelope has no Body", what);
    xmlNode *fault = child_el(body, NS_SOAP, "Fault");
    if (fault) return fault_error(fault, info, err, errlen);
    *op = first_el(body->children);
    if (!*op) return mv_seterr(err, errlen, MV_EPROTO, "%s: the Body is empty", what);
    return MV_OK;
}

/* The one m:<op>ResponseMessage of m:<op>Response; an error message is mapped. */
static mv_err response_message(xmlDoc *d, const char *op, mv_ews__info *info, xmlNode **msg,
                               char *err, size_t errlen)
{
    char name[64];
    xmlNode *top = NULL;
    mv_err e = open_envelope(d, op, info, &top, err, errlen);
    if (e) return e;
    snprintf(name, sizeof name, "%sResponse", op);
    if (!is_el(top, NS_M, name))
        return mv_seterr(err, errlen, MV_EPROTO, "%s: the Body holds no m:%s", op, name);
    xmlNode *msgs = child_el(top, NS_M, "ResponseMessages");
    snprintf(name, sizeof name, "%sResponseMessage", op);
    xmlNode *m = child_el(msgs, NS_M, name);
    if (!m) return mv_seterr(err, errlen, MV_EPROTO, "%s: no m:%s in the answer", op, name);
    for (xmlNode *o = next_el(m); o; o = next_el(o))
        if (is_el(o, NS_M, name))
            return mv_seterr(err, errlen, MV_EPROTO, "%s: more than one m:%s", op, name);
    char cls[16], code[CODE_MAX], text[TEXT_MAX];
    attr_into(m, "ResponseClass", cls, sizeof cls);
    text_into(child_el(m, NS_M, "ResponseCode"), code, sizeof code);
    if (strcmp(cls, "Success") && strcmp(cls, "Warning") && strcmp(cls, "Error"))
        return mv_seterr(err, errlen, MV_EPROTO, "%s: ResponseClass missing or unknown", op);
    if (!*code && !strcmp(cls, "Success")) snprintf(code, sizeof code, "%s", "NoError");
    if (strcmp(code, "NoError")) {
        text_into(child_el(m, NS_M, "MessageText"), text, sizeof text);
        return code_error(code, text, backoff_of(child_el(m, NS_M, "MessageXml")), info, err,
                          errlen);
    }
    *msg = m;
    return MV_OK;
}

/* m:RootFolder's paging attributes. */
static mv_err root_folder(xmlNode *msg, const char *op, xmlNode **rf, uint32_t *next_offset,
                          int *last, char *err, size_t errlen)
{
    *rf = child_el(msg, NS_M, "RootFolder");
    if (!*rf) return mv_seterr(err, errlen, MV_EPROTO, "%s: m:RootFolder missing", op);
    char off[32], inc[16];
    attr_into(*rf, "IndexedPagingOffset", off, sizeof off);
    attr_into(*rf, "IncludesLastItemInRange", inc, sizeof inc);
    int64_t o = parse_u63(off);
    if (o < 0 || o > UINT32_MAX)
        return mv_seterr(err, errlen, MV_EPROTO, "%s: IndexedPagingOffset missing or invalid", op);
    if (parse_bool(inc, last))
        return mv_seterr(err, errlen, MV_EPROTO, "%s: IncludesLastItemInRange missing or invalid",
                         op);
    *next_offset = (uint32_t)o;
    return MV_OK;
}

/* The Id attribute of child element t:<name> of n, checked. */
static mv_err id_attr(xmlNode *n, const char *name, int required, const char *what, size_t i,
                      char **out, char *err, size_t errlen)
{
    *out = NULL;
    xmlNode *c = child_el(n, NS_T, name);
    if (!c) {
        if (!required) return MV_OK;
        return mv_seterr(err, errlen, MV_EPROTO, "%s: entry %zu has no t:%s", what, i, name);
    }
    xmlChar *v = xmlGetNoNsProp(c, (const xmlChar *)"Id");
    if (!v) return mv_seterr(err, errlen, MV_EPROTO, "%s: entry %zu t:%s has no Id", what, i, name);
    int ok = token_ok((const char *)v, MAX_ID);
    if (ok) *out = xstrdup((const char *)v);
    xmlFree(v);
    if (!ok)
        return mv_seterr(err, errlen, MV_EPROTO, "%s: entry %zu t:%s Id is empty or not printable",
                         what, i, name);
    if (!*out) return mv_seterr(err, errlen, MV_ENOMEM, "out of memory");
    return MV_OK;
}

/* ------------------------------------------------------------------ the buffered parsers */

static void info_reset(mv_ews__info *info)
{
    info->server_version[0] = '\0';
    info->backoff_ms = 0;
}

/* The common start of a paged Find* answer: the document, its one response message and
 * its m:RootFolder with the paging attributes. */
static mv_err paged_answer(const char *body, size_t len, const char *what, xmlDoc **d, xmlNode **rf,
                           uint32_t *next_offset, int *last, mv_ews__info *info, char *err,
                           size_t errlen)
{
    xmlNode *msg = NULL;
    *d = NULL;
    *rf = NULL;
    *next_offset = 0;
    *last = 0;
    info_reset(info);
    mv_err e = load_xml(body, len, what, d, err, errlen);
    if (!e) e = response_message(*d, what, info, &msg, err, errlen);
    if (!e) e = root_folder(msg, what, rf, next_offset, last, err, errlen);
    return e;
}

mv_err mv_ews__parse_find_folder(const char *body, size_t len, mv_ews__folder_fn cb, void *ud,
                                 uint32_t *next_offset, int *last, mv_ews__info *info, char *err,
                                 size_t errlen)
{
    static const char what[] = "FindFolder";
    xmlDoc *d = NULL;
    xmlNode *rf = NULL;
    mv_err e = paged_answer(body, len, what, &d, &rf, next_offset, last, info, err, errlen);
    xmlNode *folders = e ? NULL : child_el(rf, NS_T, "Folders");
    /* pass 0 checks every folder, pass 1 delivers them */
    for (int pass = 0; !e && pass < 2; pass++) {
        size_t i = 0;
        for (xmlNode *f = folders ? first_el(folders->children) : NULL; f && !e;
             f = next_el(f), i++) {
            char *id = NULL, *parent = NULL, *name = NULL, *cls = NULL;
            int nomem = 0, has_children = -1;
            uint64_t total = 0;
            if (!f->ns || !f->ns->href || strcmp((const char *)f->ns->href, NS_T)) {
                e = mv_seterr(err, errlen, MV_EPROTO, "%s: entry %zu is not a t: folder", what, i);
                break;
            }
            if ((e = id_attr(f, "FolderId", 1, what, i, &id, err, errlen))) goto next;
            if ((e = id_attr(f, "ParentFolderId", 0, what, i, &parent, err, errlen))) goto next;
            name = text_dup(child_el(f, NS_T, "DisplayName"), &nomem);
            cls = text_dup(child_el(f, NS_T, "FolderClass"), &nomem);
            if (nomem) {
                e = mv_seterr(err, errlen, MV_ENOMEM, "out of memory");
                goto next;
            }
            xmlNode *tc = child_el(f, NS_T, "TotalCount");
            if (tc) {
                char v[32];
                text_into(tc, v, sizeof v);
                int64_t t = parse_u63(v);
                if (t < 0) {
                    e = mv_seterr(err, errlen, MV_EPROTO, "%s: entry %zu TotalCount invalid", what,
                                  i);
                    goto next;
                }
                total = (uint64_t)t;
            }
            xmlNode *cc = child_el(f, NS_T, "ChildFolderCount");
            if (cc) {
                char v[32];
                text_into(cc, v, sizeof v);
                int64_t t = parse_u63(v);
                if (t < 0) {
                    e = mv_seterr(err, errlen, MV_EPROTO, "%s: entry %zu ChildFolderCount invalid",
                                  what, i);
                    goto next;
                }
                has_children = t > 0;
            }
            if (pass == 1 && cb &&
                cb(ud, id, parent ? parent : "", name ? name : "", cls ? cls : "", total,
                   has_children))
                e = mv_seterr(err, errlen, MV_ECANCEL, "folder listing stopped by the callback");
        next:
            free(id);
            free(parent);
            free(name);
            free(cls);
        }
    }
    xmlFreeDoc(d);
    return e;
}

mv_err mv_ews__parse_find_item(const char *body, size_t len, mv_ews_item_fn cb, void *ud,
                               uint32_t *next_offset, int *last, mv_ews__info *info, char *err,
                               size_t errlen)
{
    static const char what[] = "FindItem";
    xmlDoc *d = NULL;
    xmlNode *rf = NULL;
    mv_err e = paged_answer(body, len, what, &d, &rf, next_offset, last, info, err, errlen);
    xmlNode *items = e ? NULL : child_el(rf, NS_T, "Items");
    for (int pass = 0; !e && pass < 2; pass++) {
        size_t i = 0;
        for (xmlNode *it = items ? first_el(items->children) : NULL; it && !e;
             it = next_el(it), i++) {
            char *id = NULL, *cls = NULL;
            int nomem = 0;
            if ((e = id_attr(it, "ItemId", 1, what, i, &id, err, errlen))) break;
            cls = text_dup(child_el(it, NS_T, "ItemClass"), &nomem);
            if (nomem)
                e = mv_seterr(err, errlen, MV_ENOMEM, "out of memory");
            else if (pass == 1 && cb && cb(ud, MV_EWS_CREATE, id, cls ? cls : ""))
                e = mv_seterr(err, errlen, MV_ECANCEL, "item listing stopped by the callback");
            free(id);
            free(cls);
        }
    }
    xmlFreeDoc(d);
    return e;
}

mv_err mv_ews__parse_sync(const char *body, size_t len, mv_ews_item_fn cb, void *ud,
                          char **new_state, int *last, mv_ews__info *info, char *err, size_t errlen)
{
    static const char what[] = "SyncFolderItems";
    xmlDoc *d = NULL;
    xmlNode *msg = NULL;
    char *state = NULL;
    *new_state = NULL;
    *last = 0;
    info_reset(info);
    mv_err e = load_xml(body, len, what, &d, err, errlen);
    if (!e) e = response_message(d, what, info, &msg, err, errlen);
    if (e) goto out;
    int nomem = 0;
    state = text_dup(child_el(msg, NS_M, "SyncState"), &nomem);
    if (nomem) {
        e = mv_seterr(err, errlen, MV_ENOMEM, "out of memory");
        goto out;
    }
    if (!state || !*state || mv_has_ctl(state)) {
        e = mv_seterr(err, errlen, MV_EPROTO, "%s: SyncState missing, empty or not printable",
                      what);
        goto out;
    }
    char inc[16];
    xmlNode *incl = child_el(msg, NS_M, "IncludesLastItemInRange");
    text_into(incl, inc, sizeof inc);
    if (!incl || parse_bool(inc, last)) {
        e = mv_seterr(err, errlen, MV_EPROTO, "%s: IncludesLastItemInRange missing or invalid",
                      what);
        goto out;
    }
    xmlNode *changes = child_el(msg, NS_M, "Changes");
    for (int pass = 0; !e && pass < 2; pass++) {
        size_t i = 0;
        for (xmlNode *c = changes ? first_el(changes->children) : NULL; c && !e;
             c = next_el(c), i++) {
            mv_ews_change kind;
            xmlNode *holder = c; /* the element whose t:ItemId names the item */
            if (is_el(c, NS_T, "Create") || is_el(c, NS_T, "Update")) {
                kind = is_el(c, NS_T, "Create") ? MV_EWS_CREATE : MV_EWS_UPDATE;
                holder = first_el(c->children);
                if (!holder || !holder->ns || !holder->ns->href ||
                    strcmp((const char *)holder->ns->href, NS_T)) {
                    e = mv_seterr(err, errlen, MV_EPROTO, "%s: change %zu has no t: item", what, i);
                    break;
                }
            } else if (is_el(c, NS_T, "Delete")) {
                kind = MV_EWS_DELETE;
            } else if (is_el(c, NS_T, "ReadFlagChange")) {
                kind = MV_EWS_READ_FLAG;
            } else {
                e = mv_seterr(err, errlen, MV_EPROTO, "%s: change %zu is not a known change", what,
                              i);
                break;
            }
            char *id = NULL, *cls = NULL;
            if ((e = id_attr(holder, "ItemId", 1, what, i, &id, err, errlen))) break;
            if (holder != c) cls = text_dup(child_el(holder, NS_T, "ItemClass"), &nomem);
            if (nomem)
                e = mv_seterr(err, errlen, MV_ENOMEM, "out of memory");
            else if (pass == 1 && cb && cb(ud, kind, id, cls ? cls : ""))
                e = mv_seterr(err, errlen, MV_ECANCEL, "sync stopped by the callback");
            free(id);
            free(cls);
        }
    }
    if (!e) {
        *new_state = state;
        state = NULL;
    }
out:
    if (e) *last = 0;
    free(state);
    xmlFreeDoc(d);
    return e;
}

mv_err mv_ews__map_http(long status, const char *body, size_t len, int64_t retry_after_ms,
                        mv_ews__info *info, char *err, size_t errlen)
{
    info_reset(info);
    if (status == 401)
        return mv_seterr(err, errlen, MV_EAUTH, "HTTP 401: the server refused the credentials");
    if (status == 403)
        return mv_seterr(err, errlen, MV_EAUTH,
                         "EWS blocked (HTTP 403 Forbidden): EWS is turned off for the organisation "
                         "or the mailbox; use Microsoft Graph");
    if (body && len) {
        /* a SOAP fault, as Exchange sends them with 500 */
        xmlDoc *d = NULL;
        char scratch[8];
        if (load_xml(body, len, "fault", &d, scratch, sizeof scratch) == MV_OK) {
            xmlNode *env = xmlDocGetRootElement(d);
            xmlNode *fault = child_el(child_el(env, NS_SOAP, "Body"), NS_SOAP, "Fault");
            if (is_el(env, NS_SOAP, "Envelope") && fault) {
                info->backoff_ms = -1;
                mv_err e = fault_error(fault, info, err, errlen);
                if (e == MV_EBUSY && info->backoff_ms < 0)
                    info->backoff_ms = cap_backoff(retry_after_ms);
                if (info->backoff_ms < 0) info->backoff_ms = 0;
                xmlFreeDoc(d);
                return e;
            }
            xmlFreeDoc(d);
        }
    }
    if (status == 503 || status == 429) {
        info->backoff_ms = cap_backoff(retry_after_ms);
        return mv_seterr(err, errlen, MV_EBUSY, "HTTP %ld: the server is busy", status);
    }
    if (status >= 300 && status < 400)
        return mv_seterr(err, errlen, MV_EPROTO, "HTTP %ld (redirects are not followed)", status);
    if (status >= 500 && status < 600)
        return mv_seterr(err, errlen, MV_ESERVER, "HTTP %ld: server error", status);
    return mv_seterr(err, errlen, MV_EPROTO, "HTTP %ld: unexpected answer", status);
}

/* ------------------------------------------------------------------ the streaming GetItem parser
 */

enum {
    K_OTHER = 0,
    K_ENV,
    K_HEADER,
    K_SVI,
    K_BODY,
    K_RESP,
    K_MSGS,
    K_MSG,
    K_CODE,
    K_TEXT,
    K_MSGXML,
    K_BACKOFF,
    K_ITEMS,
    K_ITEM,
    K_MIME,
    K_FAULT,
    K_FCODE,
    K_FSTRING,
    K_DETAIL,
    K_DCODE,
    K_DMSG,
    K_DMSGXML,
    K_DBACKOFF,
};

enum { MIME_NONE = 0, MIME_ACTIVE, MIME_DONE, MIME_TOOBIG, MIME_SKIP };

#define B64_SLICE 3072 /* base64 bytes decoded per step */

struct mv_ews__getitem {
    xmlParserCtxtPtr ctxt;
    size_t n;
    uint64_t max_message;
    mv_ews_mime_cb cb;
    void *ud;
    mv_ews__info info;
    /* the element path */
    unsigned char kinds[MAX_XML_DEPTH + 1];
    int depth;
    int seen_env, seen_resp;
    /* text of the element being captured */
    char text[TEXT_MAX];
    size_t tlen;
    /* the current response message */
    size_t nmsg, index;
    char cls[16], code[CODE_MAX], msgtext[TEXT_MAX];
    int have_code;
    int64_t backoff;
    int mime;
    uint64_t decoded;
    mv_b64dec b64;
    /* a fault */
    char fcode[CODE_MAX], fstring[TEXT_MAX], dcode[CODE_MAX], dmsg[TEXT_MAX];
    int64_t fbackoff;
    /* the outcome */
    mv_err e;
    char err[MV_ERRLEN];
    unsigned char out[(B64_SLICE / 4 + 1) * 3];
};

static int name_is(const xmlChar *uri, const xmlChar *local, const char *ns, const char *name)
{
    if (strcmp((const char *)local, name)) return 0;
    if (ns == ANY_NS) return 1;
    if (!ns) return !uri;
    return uri && !strcmp((const char *)uri, ns);
}

static void gi_stop(mv_ews__getitem *g, mv_err e, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void gi_stop(mv_ews__getitem *g, mv_err e, const char *fmt, ...)
{
    if (g->e) return;
    g->e = e;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(g->err, sizeof g->err, fmt, ap);
    va_end(ap);
    mv_sanitize(g->err);
    xmlStopParser(g->ctxt);
}

/* Attribute localname of a SAX2 attribute list (5 pointers each), copied bounded. */
static void sax_attr(int nb, const xmlChar **attrs, const char *name, char *out, size_t outlen)
{
    out[0] = '\0';
    for (int i = 0; i < nb; i++) {
        const xmlChar **a = attrs + 5 * i;
        if (a[1] || strcmp((const char *)a[0], name)) continue; /* unprefixed only */
        copy_bounded(out, outlen, (const char *)a[3], (size_t)(a[4] - a[3]));
        mv_sanitize(out);
        return;
    }
}

static int child_kind(int parent, const xmlChar *local, const xmlChar *uri, int nb_attributes,
                      const xmlChar **attributes)
{
    char v[64];
    switch (parent) {
    case -1:
        return name_is(uri, local, NS_SOAP, "Envelope") ? K_ENV : -1;
    case K_ENV:
        if (name_is(uri, local, NS_SOAP, "Header")) return K_HEADER;
        if (name_is(uri, local, NS_SOAP, "Body")) return K_BODY;
        return K_OTHER;
    case K_HEADER:
        return name_is(uri, local, NS_T, "ServerVersionInfo") ? K_SVI : K_OTHER;
    case K_BODY:
        if (name_is(uri, local, NS_M, "GetItemResponse")) return K_RESP;
        if (name_is(uri, local, NS_SOAP, "Fault")) return K_FAULT;
        return -2;
    case K_RESP:
        return name_is(uri, local, NS_M, "ResponseMessages") ? K_MSGS : K_OTHER;
    case K_MSGS:
        return name_is(uri, local, NS_M, "GetItemResponseMessage") ? K_MSG : K_OTHER;
    case K_MSG:
        if (name_is(uri, local, NS_M, "ResponseCode")) return K_CODE;
        if (name_is(uri, local, NS_M, "MessageText")) return K_TEXT;
        if (name_is(uri, local, NS_M, "MessageXml")) return K_MSGXML;
        if (name_is(uri, local, NS_M, "Items")) return K_ITEMS;
        return K_OTHER;
    case K_MSGXML:
    case K_DMSGXML:
        if (!name_is(uri, local, ANY_NS, "Value")) return K_OTHER;
        sax_attr(nb_attributes, attributes, "Name", v, sizeof v);
        if (strcmp(v, "BackOffMilliseconds")) return K_OTHER;
        return parent == K_MSGXML ? K_BACKOFF : K_DBACKOFF;
    case K_ITEMS:
        return uri && !strcmp((const char *)uri, NS_T) ? K_ITEM : K_OTHER;
    case K_ITEM:
        return name_is(uri, local, NS_T, "MimeContent") ? K_MIME : K_OTHER;
    case K_FAULT:
        if (name_is(uri, local, ANY_NS, "faultcode")) return K_FCODE;
        if (name_is(uri, local, ANY_NS, "faultstring")) return K_FSTRING;
        if (name_is(uri, local, ANY_NS, "detail")) return K_DETAIL;
        return K_OTHER;
    case K_DETAIL:
        if (name_is(uri, local, ANY_NS, "ResponseCode")) return K_DCODE;
        if (name_is(uri, local, ANY_NS, "Message")) return K_DMSG;
        if (name_is(uri, local, ANY_NS, "MessageXml")) return K_DMSGXML;
        return K_OTHER;
    default:
        return K_OTHER;
    }
}

static int captures_text(int k)
{
    return k == K_CODE || k == K_TEXT || k == K_BACKOFF || k == K_FCODE || k == K_FSTRING ||
           k == K_DCODE || k == K_DMSG || k == K_DBACKOFF;
}

static void gi_start(void *ctx, const xmlChar *local, const xmlChar *prefix, const xmlChar *uri,
                     int nb_namespaces, const xmlChar **namespaces, int nb_attributes,
                     int nb_defaulted, const xmlChar **attributes)
{
    (void)prefix;
    (void)nb_namespaces;
    (void)namespaces;
    (void)nb_defaulted;
    mv_ews__getitem *g = ctx;
    if (g->e) return;
    if (g->depth >= MAX_XML_DEPTH) {
        gi_stop(g, MV_EPROTO, "GetItem: the answer nests deeper than %d elements", MAX_XML_DEPTH);
        return;
    }
    int parent = g->depth ? g->kinds[g->depth - 1] : -1;
    int k = parent == K_OTHER ? K_OTHER : child_kind(parent, local, uri, nb_attributes, attributes);
    if (k == -1) {
        gi_stop(g, MV_EPROTO, "GetItem: the answer is not a SOAP 1.1 envelope");
        return;
    }
    if (k == -2) {
        gi_stop(g, MV_EPROTO, "GetItem: unexpected element in the SOAP Body");
        return;
    }
    g->kinds[g->depth++] = (unsigned char)k;
    if (captures_text(k)) g->tlen = 0;
    switch (k) {
    case K_ENV:
        g->seen_env = 1;
        break;
    case K_RESP:
        g->seen_resp = 1;
        break;
    case K_SVI: {
        char maj[16], min[16], build[16], ver[48];
        sax_attr(nb_attributes, attributes, "MajorVersion", maj, sizeof maj);
        sax_attr(nb_attributes, attributes, "MinorVersion", min, sizeof min);
        sax_attr(nb_attributes, attributes, "MajorBuildNumber", build, sizeof build);
        sax_attr(nb_attributes, attributes, "Version", ver, sizeof ver);
        int ok = parse_u63(maj) >= 0 && parse_u63(min) >= 0 && parse_u63(build) >= 0;
        for (const char *p = ver; ok && *p; p++)
            ok = (*p >= '0' && *p <= '9') || (*p >= 'A' && *p <= 'Z') || (*p >= 'a' && *p <= 'z') ||
                 *p == '_' || *p == '.';
        if (ok)
            snprintf(g->info.server_version, sizeof g->info.server_version, "%s.%s.%s%s%s", maj,
                     min, build, *ver ? " " : "", ver);
        break;
    }
    case K_MSG:
        if (g->nmsg >= g->n) {
            gi_stop(g, MV_EPROTO, "GetItem: more response messages than the %zu items asked for",
                    g->n);
            return;
        }
        g->index = g->nmsg++;
        sax_attr(nb_attributes, attributes, "ResponseClass", g->cls, sizeof g->cls);
        g->code[0] = g->msgtext[0] = '\0';
        g->have_code = 0;
        g->backoff = -1;
        g->mime = MIME_NONE;
        g->decoded = 0;
        break;
    case K_MIME: {
        int ok = g->have_code ? !strcmp(g->code, "NoError") : !strcmp(g->cls, "Success");
        if (!ok) {
            g->mime = MIME_SKIP;
            break;
        }
        if (g->mime != MIME_NONE) {
            gi_stop(g, MV_EPROTO, "GetItem: response message %zu has more than one MimeContent",
                    g->index);
            return;
        }
        g->mime = MIME_ACTIVE;
        g->decoded = 0;
        mv_b64dec_init(&g->b64);
        if (g->cb.begin && g->cb.begin(g->ud, g->index))
            gi_stop(g, MV_ECANCEL, "GetItem stopped by the callback");
        break;
    }
    default:
        break;
    }
}

static void mime_chars(mv_ews__getitem *g, const char *p, size_t n)
{
    while (n > 0 && g->mime == MIME_ACTIVE && !g->e) {
        size_t k = n < B64_SLICE ? n : B64_SLICE, outn = 0;
        if (mv_b64dec_update(&g->b64, p, k, g->out, &outn)) {
            gi_stop(g, MV_EPROTO, "GetItem: item %zu: MimeContent is not base64 (byte %" PRIu64 ")",
                    g->index, g->b64.bad_at);
            return;
        }
        p += k;
        n -= k;
        if (outn > g->max_message - g->decoded) {
            g->mime = MIME_TOOBIG; /* the rest is read and dropped */
            return;
        }
        g->decoded += outn;
        if (outn && g->cb.data && g->cb.data(g->ud, g->index, g->out, outn))
            gi_stop(g, MV_ECANCEL, "GetItem stopped by the callback");
    }
}

static void gi_chars(void *ctx, const xmlChar *ch, int len)
{
    mv_ews__getitem *g = ctx;
    if (g->e || !g->depth || len <= 0) return;
    int k = g->kinds[g->depth - 1];
    if (k == K_MIME) {
        mime_chars(g, (const char *)ch, (size_t)len);
    } else if (captures_text(k)) {
        size_t room = sizeof g->text - 1 - g->tlen;
        size_t put = (size_t)len < room ? (size_t)len : room;
        memcpy(g->text + g->tlen, ch, put);
        g->tlen += put;
    }
}

/* The captured text, trimmed and sanitised, into out. */
static void take_text(mv_ews__getitem *g, char *out, size_t outlen)
{
    g->text[g->tlen] = '\0';
    char *t = trim(g->text);
    copy_bounded(out, outlen, t, strlen(t));
    mv_sanitize(out);
}

static void msg_end(mv_ews__getitem *g)
{
    const char *code = g->have_code ? g->code : !strcmp(g->cls, "Success") ? "NoError" : "";
    if (!*code) {
        gi_stop(g, MV_EPROTO, "GetItem: response message %zu has no ResponseCode", g->index);
        return;
    }
    if (strcmp(code, "NoError")) {
        if (mv_ews__code_err(code) == MV_EBUSY) { /* throttled: the whole request */
            g->e = code_error(code, g->msgtext, g->backoff, &g->info, g->err, sizeof g->err);
            xmlStopParser(g->ctxt);
            return;
        }
        if (g->cb.fail) g->cb.fail(g->ud, g->index, code, g->msgtext);
    } else if (g->mime == MIME_TOOBIG) {
        if (g->cb.fail) {
            char t[96];
            snprintf(t, sizeof t, "the MIME content is larger than max_message (%" PRIu64 " bytes)",
                     g->max_message);
            g->cb.fail(g->ud, g->index, "MimeTooLarge", t);
        }
    } else if (g->mime != MIME_DONE) {
        if (g->cb.fail)
            g->cb.fail(g->ud, g->index, "NoMimeContent", "the answer has no MimeContent for it");
    } else if (g->cb.end && g->cb.end(g->ud, g->index)) {
        gi_stop(g, MV_ECANCEL, "GetItem stopped by the callback");
    }
}

static void gi_end(void *ctx, const xmlChar *local, const xmlChar *prefix, const xmlChar *uri)
{
    (void)local;
    (void)prefix;
    (void)uri;
    mv_ews__getitem *g = ctx;
    if (g->e || !g->depth) return;
    int k = g->kinds[--g->depth];
    char v[32];
    switch (k) {
    case K_CODE:
        take_text(g, g->code, sizeof g->code);
        g->have_code = 1;
        break;
    case K_TEXT:
        take_text(g, g->msgtext, sizeof g->msgtext);
        break;
    case K_BACKOFF:
    case K_DBACKOFF: {
        take_text(g, v, sizeof v);
        int64_t ms = parse_u63(v);
        if (ms >= 0) {
            if (k == K_BACKOFF)
                g->backoff = ms;
            else
                g->fbackoff = ms;
        }
        break;
    }
    case K_FCODE:
        take_text(g, g->fcode, sizeof g->fcode);
        break;
    case K_FSTRING:
        take_text(g, g->fstring, sizeof g->fstring);
        break;
    case K_DCODE:
        take_text(g, g->dcode, sizeof g->dcode);
        break;
    case K_DMSG:
        take_text(g, g->dmsg, sizeof g->dmsg);
        break;
    case K_MIME:
        if (g->mime == MIME_ACTIVE) {
            if (mv_b64dec_final(&g->b64)) {
                gi_stop(g, MV_EPROTO, "GetItem: item %zu: MimeContent ends inside a base64 group",
                        g->index);
                return;
            }
            g->mime = MIME_DONE;
        }
        break;
    case K_MSG:
        msg_end(g);
        break;
    case K_FAULT: {
        char code[CODE_MAX];
        const char *colon = strrchr(g->fcode, ':');
        snprintf(code, sizeof code, "%s",
                 *g->dcode   ? g->dcode
                 : colon     ? colon + 1
                 : *g->fcode ? g->fcode
                             : "SOAP fault");
        g->e = code_error(code, *g->dmsg ? g->dmsg : g->fstring, g->fbackoff, &g->info, g->err,
                          sizeof g->err);
        xmlStopParser(g->ctxt);
        break;
    }
    default:
        break;
    }
}

static void gi_dtd(void *ctx, const xmlChar *name, const xmlChar *eid, const xmlChar *sid)
{
    (void)name;
    (void)eid;
    (void)sid;
    gi_stop(ctx, MV_EPROTO, "GetItem: the answer has a DOCTYPE (refused)");
}

mv_err mv_ews__getitem_new(size_t n, uint64_t max_message, const mv_ews_mime_cb *cb, void *ud,
                           mv_ews__getitem **out, char *err, size_t errlen)
{
    *out = NULL;
    if (n < 1 || n > MV_EWS_GET_MAX || !cb)
        return mv_seterr(err, errlen, MV_EINVAL, "GetItem: 1..%d items and callbacks required",
                         MV_EWS_GET_MAX);
    mv_xml_init();
    mv_ews__getitem *g = calloc(1, sizeof *g);
    if (!g) return mv_seterr(err, errlen, MV_ENOMEM, "out of memory");
    g->n = n;
    g->max_message = max_message;
    g->cb = *cb;
    g->ud = ud;
    g->fbackoff = -1;
    xmlSAXHandler sax;
    memset(&sax, 0, sizeof sax);
    sax.initialized = XML_SAX2_MAGIC;
    sax.startElementNs = gi_start;
    sax.endElementNs = gi_end;
    sax.characters = gi_chars;
    sax.cdataBlock = gi_chars;
    sax.ignorableWhitespace = gi_chars;
    sax.internalSubset = gi_dtd;
    sax.serror = mv_xml_silent;
    mv_xml_quiet qt;
    mv_xml_quiet_on(&qt);
    g->ctxt = xmlCreatePushParserCtxt(&sax, g, NULL, 0, NULL);
    mv_xml_quiet_off(&qt);
    if (!g->ctxt) {
        free(g);
        return mv_seterr(err, errlen, MV_ENOMEM, "out of memory");
    }
    xmlCtxtUseOptions(g->ctxt, XML_PARSE_NONET | XML_PARSE_NOERROR | XML_PARSE_NOWARNING);
    *out = g;
    return MV_OK;
}

static mv_err gi_result(mv_ews__getitem *g, char *err, size_t errlen)
{
    return mv_seterr(err, errlen, g->e, "%s", g->err);
}

static void gi_parse_error(mv_ews__getitem *g)
{
    if (g->e) return;
    const xmlError *xe = xmlCtxtGetLastError(g->ctxt);
    if (xe && xe->code == XML_ERR_NO_MEMORY)
        gi_stop(g, MV_ENOMEM, "out of memory");
    else
        gi_stop(g, MV_EPROTO, "GetItem: not well-formed XML (line %d: %s)", xe ? xe->line : 0,
                xe && xe->message ? xe->message : "parse error");
}

mv_err mv_ews__getitem_feed(mv_ews__getitem *g, const char *p, size_t n, char *err, size_t errlen)
{
    mv_xml_quiet qt;
    mv_xml_quiet_on(&qt);
    while (!g->e && n > 0) {
        int k = n > (1u << 20) ? (1 << 20) : (int)n;
        if (xmlParseChunk(g->ctxt, p, k, 0) || !g->ctxt->wellFormed) gi_parse_error(g);
        p += k;
        n -= (size_t)k;
    }
    mv_xml_quiet_off(&qt);
    return g->e ? gi_result(g, err, errlen) : MV_OK;
}

mv_err mv_ews__getitem_finish(mv_ews__getitem *g, char *err, size_t errlen)
{
    mv_xml_quiet qt;
    mv_xml_quiet_on(&qt);
    if (!g->e && (xmlParseChunk(g->ctxt, NULL, 0, 1) || !g->ctxt->wellFormed)) gi_parse_error(g);
    mv_xml_quiet_off(&qt);
    if (!g->e && !g->seen_resp)
        gi_stop(g, MV_EPROTO, "GetItem: the answer has no m:GetItemResponse");
    if (!g->e && g->nmsg != g->n)
        gi_stop(g, MV_EPROTO, "GetItem: the answer has %zu response messages for %zu items",
                g->nmsg, g->n);
    return g->e ? gi_result(g, err, errlen) : MV_OK;
}

const mv_ews__info *mv_ews__getitem_info(const mv_ews__getitem *g)
{
    return &g->info;
}

void mv_ews__getitem_free(mv_ews__getitem *g)
{
    if (!g) return;
    if (g->ctxt) {
        xmlFreeDoc(g->ctxt->myDoc); /* none is built with our handler; defensive */
        g->ctxt->myDoc = NULL;
        xmlFreeParserCtxt(g->ctxt);
    }
    OPENSSL_cleanse(g->out, sizeof g->out);
    free(g);
}

/* ------------------------------------------------------------------ request building */

typedef struct xw {
    xmlBufferPtr buf;
    xmlTextWriterPtr w;
    int bad;
} xw;

static void xs(xw *x, const char *name)
{
    if (!x->bad && xmlTextWriterStartElement(x->w, (const xmlChar *)name) < 0) x->bad = 1;
}

static void xe(xw *x)
{
    if (!x->bad && xmlTextWriterEndElement(x->w) < 0) x->bad = 1;
}

static void xa(xw *x, const char *name, const char *value)
{
    if (!x->bad &&
        xmlTextWriterWriteAttribute(x->w, (const xmlChar *)name, (const xmlChar *)value) < 0)
        x->bad = 1;
}

static void xt(xw *x, const char *name, const char *text)
{
    if (!x->bad &&
        xmlTextWriterWriteElement(x->w, (const xmlChar *)name, (const xmlChar *)text) < 0)
        x->bad = 1;
}

static void xw_free(xw *x)
{
    if (x->w) xmlFreeTextWriter(x->w);
    if (x->buf) xmlBufferFree(x->buf);
    memset(x, 0, sizeof *x);
}

/* Envelope, SOAP header (version, impersonation) and the opening of the body. */
static int xw_open(xw *x, const mv_ews *e, const char *mailbox)
{
    memset(x, 0, sizeof *x);
    mv_xml_init();
    if (!(x->buf = xmlBufferCreate()) || !(x->w = xmlNewTextWriterMemory(x->buf, 0))) {
        xw_free(x);
        return -1;
    }
    if (xmlTextWriterStartDocument(x->w, "1.0", "utf-8", NULL) < 0) x->bad = 1;
    xs(x, "soap:Envelope");
    xa(x, "xmlns:soap", NS_SOAP);
    xa(x, "xmlns:t", NS_T);
    xa(x, "xmlns:m", NS_M);
    xs(x, "soap:Header");
    xs(x, "t:RequestServerVersion");
    xa(x, "Version", e->server_version_req);
    xe(x);
    if (e->o.impersonate) {
        xs(x, "t:ExchangeImpersonation");
        xs(x, "t:ConnectingSID");
        xt(x, "t:PrimarySmtpAddress", mailbox);
        xe(x);
        xe(x);
    }
    xe(x);
    xs(x, "soap:Body");
    return x->bad ? -1 : 0;
}

/* Close everything; the request is then xmlBufferContent(x->buf). */
static int xw_close(xw *x)
{
    if (!x->bad && (xmlTextWriterEndDocument(x->w) < 0 || xmlTextWriterFlush(x->w) < 0)) x->bad = 1;
    return x->bad ? -1 : 0;
}

static void item_shape(xw *x, int mime)
{
    xs(x, "m:ItemShape");
    xt(x, "t:BaseShape", "IdOnly");
    if (mime) {
        xt(x, "t:IncludeMimeContent", "true");
    } else {
        xs(x, "t:AdditionalProperties");
        xs(x, "t:FieldURI");
        xa(x, "FieldURI", "item:ItemClass");
        xe(x);
        xe(x);
    }
    xe(x);
}

/* m:Restriction with one t:IsEqualTo of a property and a constant (FindFolder, FindItem;
 * https://learn.microsoft.com/en-us/exchange/client-developer/web-service-reference/isequalto).
 * In FindFolder/FindItem it comes after the paging view and before ParentFolderIds. */
static void restriction(xw *x, const char *field_uri, const char *value)
{
    xs(x, "m:Restriction");
    xs(x, "t:IsEqualTo");
    xs(x, "t:FieldURI");
    xa(x, "FieldURI", field_uri);
    xe(x);
    xs(x, "t:FieldURIOrConstant");
    xs(x, "t:Constant");
    xa(x, "Value", value);
    xe(x);
    xe(x);
    xe(x);
    xe(x);
}

/* ------------------------------------------------------------------ one request */

typedef struct call {
    const char *mailbox;
    xw *x;
    int weight;
    const mv_http_sink *sink;
    const char *what;
} call;

/* POST one SOAP request: the gate around it, credentials, X-AnchorMailbox, one token refresh
 * on a 401. MV_OK only for a 2xx answer (buffered, or streamed to the sink); every other
 * status is mapped. */
static mv_err ews_call(mv_ews *e, const call *c, char *err, size_t errlen)
{
    char *anchor = mv_aprintf("X-AnchorMailbox: %s", c->mailbox);
    if (!anchor) return mv_seterr(err, errlen, MV_ENOMEM, "out of memory");
    const char *hdrs[] = {"Accept: text/xml", anchor, NULL};
    char *stale = NULL;
    mv_err rc;
    for (int attempt = 0;; attempt++) {
        if (e->oauth) {
            rc = mv_oauth_ensure(e->oauth, e->http, stale, err, errlen);
            if (stale) {
                mv_free_secret(stale);
                stale = NULL;
            }
            if (rc) break;
        }
        int w = c->weight > 0 ? c->weight : 1;
        if (e->gate.acquire && (rc = e->gate.acquire(e->gate.ud, w, err, errlen))) break;
        mv_http_req hr = {
            .url = e->url,
            .body = (const char *)xmlBufferContent(c->x->buf),
            .bodylen = (size_t)xmlBufferLength(c->x->buf),
            .content_type = "text/xml; charset=utf-8",
            .headers = hdrs,
            .bearer = e->oauth ? mv_oauth_token(e->oauth, NULL) : NULL,
            .user = e->oauth ? NULL : e->username,
            .password = e->oauth ? NULL : e->password,
            .ntlm = e->o.auth == MV_EWS_NTLM,
            .max_body = e->o.max_xml,
            .max_label = "max_xml",
            .sink = c->sink,
            .what = c->what,
        };
        rc = mv_http_perform(e->http, &hr, err, errlen);
        if (e->gate.acquire && e->gate.release) e->gate.release(e->gate.ud, w);
        if (rc) break;
        long st = mv_http_status(e->http);
        if (st >= 200 && st < 300) break;
        if (st == 401 && e->oauth && attempt == 0) {
            mv_debug("ews: 401, refreshing the token once", "%s", "");
            stale = mv_oauth_drop(e->oauth);
            continue;
        }
        size_t blen = 0;
        const char *body = mv_http_body(e->http, &blen);
        mv_ews__info info;
        rc = mv_ews__map_http(st, body, blen, mv_http_retry_after_ms(e->http), &info, err, errlen);
        if (st == 401 && e->oauth) {
            size_t l = strlen(err);
            if (errlen > l) snprintf(err + l, errlen - l, "%s", " (after a token refresh)");
        }
        e->backoff_ms = info.backoff_ms;
        break;
    }
    free(anchor);
    return rc;
}

/* Note what an answer said (server version, backoff). */
static void take_info(mv_ews *e, const mv_ews__info *info)
{
    if (info->server_version[0])
        snprintf(e->server_version, sizeof e->server_version, "%s", info->server_version);
    if (info->backoff_ms > 0) e->backoff_ms = info->backoff_ms;
}

static const char *answer(mv_ews *e, size_t *len)
{
    return mv_http_body(e->http, len);
}

static mv_err finish(mv_ews *e, mv_err rc, char *err, size_t errlen)
{
    mv_http_trim(e->http);
    mv_scrub(err, errlen, e->password);
    if (e->oauth) mv_scrub(err, errlen, mv_oauth_secret(e->oauth));
    return rc;
}

static mv_err begin_call(mv_ews *e, const char *mailbox, char *err, size_t errlen)
{
    if (err && errlen) err[0] = '\0';
    e->backoff_ms = 0;
    if (!mailbox || !mv_mailbox_valid(mailbox))
        return mv_seterr(err, errlen, MV_EINVAL, "ews: mailbox missing or not a valid address");
    return MV_OK;
}

/* ------------------------------------------------------------------ folders */

typedef struct fentry {
    char *id, *parent, *name, *cls, *path;
    uint64_t total;
    int has_children;
    int dup;
} fentry;

typedef struct flist {
    fentry *v;
    size_t n, cap;
    mv_err cb_err;
} flist;

static void flist_free(flist *l)
{
    for (size_t i = 0; i < l->n; i++) {
        free(l->v[i].id);
        free(l->v[i].parent);
        free(l->v[i].name);
        free(l->v[i].cls);
        free(l->v[i].path);
    }
    free(l->v);
    memset(l, 0, sizeof *l);
}

static int collect_folder(void *ud, const char *id, const char *parent, const char *name,
                          const char *cls, uint64_t total, int has_children)
{
    flist *l = ud;
    if (l->n >= MAX_FOLDERS) {
        l->cb_err = MV_ETOOBIG;
        return 1;
    }
    if (l->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 64;
        fentry *v = realloc(l->v, cap * sizeof *v);
        if (!v) {
            l->cb_err = MV_ENOMEM;
            return 1;
        }
        l->v = v;
        l->cap = cap;
    }
    fentry *f = &l->v[l->n];
    memset(f, 0, sizeof *f);
    f->id = xstrdup(id);
    f->parent = xstrdup(parent);
    f->name = xstrdup(name);
    f->cls = xstrdup(cls);
    f->total = total;
    f->has_children = has_children;
    l->n++;
    if (!f->id || !f->parent || !f->name || !f->cls) {
        l->cb_err = MV_ENOMEM;
        return 1;
    }
    return 0;
}

/* Parse one FindFolder page into l, mapping a stop by the collector. */
static mv_err folder_page(mv_ews *e, flist *l, uint32_t *next, int *last, char *err, size_t errlen)
{
    size_t blen = 0;
    const char *body = answer(e, &blen);
    mv_ews__info info;
    l->cb_err = MV_OK;
    mv_err rc =
        mv_ews__parse_find_folder(body, blen, collect_folder, l, next, last, &info, err, errlen);
    take_info(e, &info);
    if (rc == MV_ECANCEL && l->cb_err == MV_ENOMEM)
        rc = mv_seterr(err, errlen, MV_ENOMEM, "out of memory");
    else if (rc == MV_ECANCEL && l->cb_err == MV_ETOOBIG)
        rc = mv_seterr(err, errlen, MV_EPROTO, "folders: more than %d folders", MAX_FOLDERS);
    return rc;
}

static const char *root_name(mv_ews_root root)
{
    return root == MV_EWS_ROOT_ARCHIVE  ? "archivemsgfolderroot"
           : root == MV_EWS_ROOT_PUBLIC ? "publicfoldersroot"
                                        : "msgfolderroot";
}

/* t:FolderId of parent_id, or (NULL) the root's t:DistinguishedFolderId, with t:Mailbox for
 * delegate access when not impersonating. */
static void folder_ref(xw *x, const mv_ews *e, const char *mailbox, mv_ews_root root,
                       const char *parent_id)
{
    if (parent_id) {
        xs(x, "t:FolderId");
        xa(x, "Id", parent_id);
        xe(x);
        return;
    }
    xs(x, "t:DistinguishedFolderId");
    xa(x, "Id", root_name(root));
    if (!e->o.impersonate && root != MV_EWS_ROOT_PUBLIC) {
        xs(x, "t:Mailbox");
        xt(x, "t:EmailAddress", mailbox);
        xe(x);
    }
    xe(x);
}

/* One FindFolder request: Deep or Shallow under parent_id (NULL: the root's distinguished id). */
/* name: only the folders with that DisplayName (a Restriction), else all. */
static mv_err find_folder_req(mv_ews *e, const char *mailbox, mv_ews_root root, int deep,
                              const char *parent_id, const char *name, uint32_t offset, char *err,
                              size_t errlen)
{
    xw x;
    char num[16], off[16];
    if (xw_open(&x, e, mailbox)) goto nomem;
    snprintf(num, sizeof num, "%d", e->o.page_size);
    snprintf(off, sizeof off, "%" PRIu32, offset);
    xs(&x, "m:FindFolder");
    xa(&x, "Traversal", deep ? "Deep" : "Shallow");
    xs(&x, "m:FolderShape");
    xt(&x, "t:BaseShape", "IdOnly");
    xs(&x, "t:AdditionalProperties");
    static const char *const fields[] = {"folder:ParentFolderId", "folder:DisplayName",
                                         "folder:FolderClass", "folder:TotalCount",
                                         "folder:ChildFolderCount"};
    for (size_t i = 0; i < sizeof fields / sizeof fields[0]; i++) {
        xs(&x, "t:FieldURI");
        xa(&x, "FieldURI", fields[i]);
        xe(&x);
    }
    xe(&x);
    xe(&x);
    xs(&x, "m:IndexedPageFolderView");
    xa(&x, "MaxEntriesReturned", num);
    xa(&x, "Offset", off);
    xa(&x, "BasePoint", "Beginning");
    xe(&x);
    if (name) restriction(&x, "folder:DisplayName", name);
    xs(&x, "m:ParentFolderIds");
    folder_ref(&x, e, mailbox, root, parent_id);
    xe(&x);
    if (xw_close(&x)) goto nomem;
    call c = {.mailbox = mailbox, .x = &x, .weight = 1, .what = "FindFolder"};
    mv_err rc = ews_call(e, &c, err, errlen);
    xw_free(&x);
    return rc;
nomem:
    xw_free(&x);
    return mv_seterr(err, errlen, MV_ENOMEM, "out of memory");
}

static int fentry_cmp(const void *a, const void *b)
{
    const fentry *const *x = a, *const *y = b;
    return strcmp((*x)->id, (*y)->id);
}

static fentry *find_by_id(fentry **sorted, size_t n, const char *id)
{
    if (!*id || !n) return NULL;
    fentry key = {.id = (char *)id}, *kp = &key;
    fentry **r = bsearch(&kp, sorted, n, sizeof *sorted, fentry_cmp);
    return r ? *r : NULL;
}

/* Paths for a Deep listing: parents looked up by id; an unknown parent is the root. */
static mv_err build_paths(flist *l, char *err, size_t errlen)
{
    mv_err rc = MV_OK;
    fentry **sorted = l->n ? malloc(l->n * sizeof *sorted) : NULL;
    if (l->n && !sorted) return mv_seterr(err, errlen, MV_ENOMEM, "out of memory");
    for (size_t i = 0; i < l->n; i++)
        sorted[i] = &l->v[i];
    if (l->n) qsort(sorted, l->n, sizeof *sorted, fentry_cmp);
    /* a folder listed twice (the tree changed between pages) is delivered once */
    for (size_t i = 1; i < l->n; i++)
        if (!strcmp(sorted[i - 1]->id, sorted[i]->id)) {
            fentry *later = sorted[i - 1] > sorted[i] ? sorted[i - 1] : sorted[i];
            later->dup = 1;
        }
    size_t nu = 0; /* the unique ones, still sorted */
    for (size_t i = 0; i < l->n; i++)
        if (!sorted[i]->dup) sorted[nu++] = sorted[i];
    fentry *chain[MAX_DEPTH + 1];
    for (size_t i = 0; i < l->n && !rc; i++) {
        fentry *f = &l->v[i];
        if (f->dup || f->path) continue;
        int depth = 0;
        fentry *p = NULL;
        for (fentry *cur = f; cur && !cur->path; cur = p) {
            if (depth > MAX_DEPTH) {
                rc = mv_seterr(err, errlen, MV_EPROTO,
                               "folders: the tree is deeper than %d levels (or has a cycle)",
                               MAX_DEPTH);
                break;
            }
            chain[depth++] = cur;
            p = find_by_id(sorted, nu, cur->parent);
        }
        while (!rc && depth > 0) {
            fentry *cur = chain[--depth];
            fentry *par = find_by_id(sorted, nu, cur->parent);
            cur->path = mv_ews__path_join(par ? par->path : NULL, cur->name);
            if (!cur->path) rc = mv_seterr(err, errlen, MV_ENOMEM, "out of memory");
        }
    }
    free(sorted);
    return rc;
}

static mv_err list_deep(mv_ews *e, const char *mailbox, mv_ews_root root, mv_ews_folder_fn cb,
                        void *ud, char *err, size_t errlen)
{
    flist l = {0};
    mv_err rc = MV_OK;
    uint32_t offset = 0;
    for (long pages = 0;; pages++) {
        uint32_t next = 0;
        int last = 0;
        if (pages >= MAX_PAGES) {
            rc = mv_seterr(err, errlen, MV_EPROTO, "folders: more than %d pages", MAX_PAGES);
            goto out;
        }
        if ((rc = find_folder_req(e, mailbox, root, 1, NULL, NULL, offset, err, errlen))) goto out;
        size_t before = l.n;
        if ((rc = folder_page(e, &l, &next, &last, err, errlen))) goto out;
        if (last) break;
        if (next <= offset || l.n == before) {
            rc = mv_seterr(err, errlen, MV_EPROTO,
                           "FindFolder: paging made no progress (offset %" PRIu32 ")", offset);
            goto out;
        }
        offset = next;
    }
    if ((rc = build_paths(&l, err, errlen))) goto out;
    for (size_t i = 0; i < l.n; i++) {
        fentry *f = &l.v[i];
        if (f->dup) continue;
        if (cb && cb(ud, f->id, f->path, f->cls, f->total)) {
            rc = mv_seterr(err, errlen, MV_ECANCEL, "folder listing stopped by the callback");
            break;
        }
    }
out:
    flist_free(&l);
    return rc;
}

typedef struct pnode {
    char *id, *path;
    int depth;
} pnode;

/* Public folders: Shallow FindFolder level by level, breadth first. */
static mv_err list_public(mv_ews *e, const char *mailbox, mv_ews_folder_fn cb, void *ud, char *err,
                          size_t errlen)
{
    pnode *q = NULL;
    size_t qh = 0, qn = 0, qcap = 0, seen = 0;
    long pages = 0;
    mv_err rc = MV_OK;
    flist l = {0};
    /* the root: id NULL, path NULL, depth 0 */
    q = calloc(1, sizeof *q);
    if (!q) return mv_seterr(err, errlen, MV_ENOMEM, "out of memory");
    qn = qcap = 1;
    while (qh < qn && !rc) {
        pnode parent = q[qh++];
        uint32_t offset = 0;
        for (;;) {
            uint32_t next = 0;
            int last = 0;
            if (pages++ >= MAX_PAGES) {
                rc = mv_seterr(err, errlen, MV_EPROTO, "folders: more than %d pages", MAX_PAGES);
                break;
            }
            if ((rc = find_folder_req(e, mailbox, MV_EWS_ROOT_PUBLIC, 0, parent.id, NULL, offset,
                                      err, errlen)))
                break;
            flist_free(&l);
            if ((rc = folder_page(e, &l, &next, &last, err, errlen))) break;
            for (size_t i = 0; i < l.n && !rc; i++) {
                fentry *f = &l.v[i];
                if (++seen > MAX_FOLDERS) {
                    rc = mv_seterr(err, errlen, MV_EPROTO, "folders: more than %d folders",
                                   MAX_FOLDERS);
                    break;
                }
                char *path = mv_ews__path_join(parent.path, f->name);
                if (!path) {
                    rc = mv_seterr(err, errlen, MV_ENOMEM, "out of memory");
                    break;
                }
                if (cb && cb(ud, f->id, path, f->cls, f->total)) {
                    free(path);
                    rc = mv_seterr(err, errlen, MV_ECANCEL,
                                   "folder listing stopped by the callback");
                    break;
                }
                if (!f->has_children) {
                    free(path);
                    continue;
                }
                if (parent.depth + 1 >= MAX_DEPTH) {
                    free(path);
                    rc = mv_seterr(err, errlen, MV_EPROTO,
                                   "folders: the tree is deeper than %d levels", MAX_DEPTH);
                    break;
                }
                if (qn == qcap) {
                    size_t cap = qcap * 2;
                    pnode *nq = realloc(q, cap * sizeof *nq);
                    if (!nq) {
                        free(path);
                        rc = mv_seterr(err, errlen, MV_ENOMEM, "out of memory");
                        break;
                    }
                    q = nq;
                    qcap = cap;
                }
                q[qn].id = f->id;
                f->id = NULL;
                q[qn].path = path;
                q[qn].depth = parent.depth + 1;
                qn++;
            }
            if (rc || last) break;
            if (next <= offset || !l.n) {
                rc = mv_seterr(err, errlen, MV_EPROTO,
                               "FindFolder: paging made no progress (offset %" PRIu32 ")", offset);
                break;
            }
            offset = next;
        }
    }
    flist_free(&l);
    for (size_t i = 0; i < qn; i++) {
        free(q[i].id);
        free(q[i].path);
    }
    free(q);
    return rc;
}

mv_err mv_ews_list_folders(mv_ews *e, const char *mailbox, mv_ews_root root, mv_ews_folder_fn cb,
                           void *ud, char *err, size_t errlen)
{
    mv_err rc = begin_call(e, mailbox, err, errlen);
    if (rc) return rc;
    if (root != MV_EWS_ROOT_MAILBOX && root != MV_EWS_ROOT_ARCHIVE && root != MV_EWS_ROOT_PUBLIC)
        return mv_seterr(err, errlen, MV_EINVAL, "folders: unknown root");
    rc = root == MV_EWS_ROOT_PUBLIC ? list_public(e, mailbox, cb, ud, err, errlen)
                                    : list_deep(e, mailbox, root, cb, ud, err, errlen);
    return finish(e, rc, err, errlen);
}

/* ------------------------------------------------------------------ items */

mv_err mv_ews_sync_items(mv_ews *e, const char *mailbox, const char *folder_id,
                         const char *sync_state, int max_changes, mv_ews_item_fn cb, void *ud,
                         char **new_state, int *last, char *err, size_t errlen)
{
    if (new_state) *new_state = NULL;
    if (last) *last = 0;
    mv_err rc = begin_call(e, mailbox, err, errlen);
    if (rc) return rc;
    if (!new_state || !last || !token_ok(folder_id, MAX_ID) || max_changes < 1 ||
        max_changes > 512 || (sync_state && *sync_state && mv_has_ctl(sync_state)))
        return mv_seterr(err, errlen, MV_EINVAL,
                         "sync: folder_id, max_changes 1..512, a printable state and outputs are "
                         "required");
    xw x;
    char num[16];
    snprintf(num, sizeof num, "%d", max_changes);
    if (xw_open(&x, e, mailbox)) goto nomem;
    xs(&x, "m:SyncFolderItems");
    item_shape(&x, 0);
    xs(&x, "m:SyncFolderId");
    xs(&x, "t:FolderId");
    xa(&x, "Id", folder_id);
    xe(&x);
    xe(&x);
    if (sync_state && *sync_state) xt(&x, "m:SyncState", sync_state);
    xt(&x, "m:MaxChangesReturned", num);
    if (xw_close(&x)) goto nomem;
    call c = {.mailbox = mailbox, .x = &x, .weight = 1, .what = "SyncFolderItems"};
    rc = ews_call(e, &c, err, errlen);
    xw_free(&x);
    if (!rc) {
        size_t blen = 0;
        const char *body = answer(e, &blen);
        mv_ews__info info;
        rc = mv_ews__parse_sync(body, blen, cb, ud, new_state, last, &info, err, errlen);
        take_info(e, &info);
    }
    return finish(e, rc, err, errlen);
nomem:
    xw_free(&x);
    return finish(e, mv_seterr(err, errlen, MV_ENOMEM, "out of memory"), err, errlen);
}

/* One FindItem Shallow request and its parsed answer: a page of at most max items from
 * offset, oldest first by DateTimeReceived; msgid (non-NULL) restricts it to the items whose
 * message:InternetMessageId equals it. */
static mv_err find_item_call(mv_ews *e, const char *mailbox, const char *folder_id, int max,
                             uint32_t offset, const char *msgid, mv_ews_item_fn cb, void *ud,
                             uint32_t *next, int *last, char *err, size_t errlen)
{
    xw x;
    char num[16], off[16];
    snprintf(num, sizeof num, "%d", max);
    snprintf(off, sizeof off, "%" PRIu32, offset);
    if (xw_open(&x, e, mailbox)) goto nomem;
    xs(&x, "m:FindItem");
    xa(&x, "Traversal", "Shallow");
    item_shape(&x, 0);
    xs(&x, "m:IndexedPageItemView");
    xa(&x, "MaxEntriesReturned", num);
    xa(&x, "Offset", off);
    xa(&x, "BasePoint", "Beginning");
    xe(&x);
    if (msgid) restriction(&x, "message:InternetMessageId", msgid);
    xs(&x, "m:SortOrder");
    xs(&x, "t:FieldOrder");
    xa(&x, "Order", "Ascending");
    xs(&x, "t:FieldURI");
    xa(&x, "FieldURI", "item:DateTimeReceived");
    xe(&x);
    xe(&x);
    xe(&x);
    xs(&x, "m:ParentFolderIds");
    folder_ref(&x, e, mailbox, MV_EWS_ROOT_MAILBOX, folder_id);
    xe(&x);
    if (xw_close(&x)) goto nomem;
    call c = {.mailbox = mailbox, .x = &x, .weight = 1, .what = "FindItem"};
    mv_err rc = ews_call(e, &c, err, errlen);
    xw_free(&x);
    if (!rc) {
        size_t blen = 0;
        const char *body = answer(e, &blen);
        mv_ews__info info;
        rc = mv_ews__parse_find_item(body, blen, cb, ud, next, last, &info, err, errlen);
        take_info(e, &info);
    }
    return rc;
nomem:
    xw_free(&x);
    return mv_seterr(err, errlen, MV_ENOMEM, "out of memory");
}

mv_err mv_ews_find_items(mv_ews *e, const char *mailbox, const char *folder_id, uint32_t offset,
                         mv_ews_item_fn cb, void *ud, uint32_t *next_offset, int *last, char *err,
                         size_t errlen)
{
    if (next_offset) *next_offset = offset;
    if (last) *last = 0;
    mv_err rc = begin_call(e, mailbox, err, errlen);
    if (rc) return rc;
    if (!next_offset || !last || !token_ok(folder_id, MAX_ID))
        return mv_seterr(err, errlen, MV_EINVAL, "find: folder_id and outputs are required");
    uint32_t next = 0;
    int lst = 0;
    rc = find_item_call(e, mailbox, folder_id, e->o.page_size, offset, NULL, cb, ud, &next, &lst,
                        err, errlen);
    if (!rc && !lst && next <= offset)
        rc = mv_seterr(err, errlen, MV_EPROTO,
                       "FindItem: paging made no progress (offset %" PRIu32 ")", offset);
    if (!rc) {
        *next_offset = next;
        *last = lst;
    }
    return finish(e, rc, err, errlen);
}

/* ------------------------------------------------------------------ writing (exports) */

static int count_item(void *ud, mv_ews_change kind, const char *item_id, const char *item_class)
{
    (void)kind;
    (void)item_id;
    (void)item_class;
    (*(size_t *)ud)++;
    return 0;
}

mv_err mv_ews_find_message(mv_ews *e, const char *mailbox, const char *folder_id, const char *msgid,
                           int *found, char *err, size_t errlen)
{
    if (found) *found = 0;
    mv_err rc = begin_call(e, mailbox, err, errlen);
    if (rc) return rc;
    if (!found || !token_ok(folder_id, MAX_ID) || !msgid || !*msgid || mv_has_ctl(msgid) ||
        strlen(msgid) > MAX_MSGID)
        return mv_seterr(err, errlen, MV_EINVAL,
                         "find message: a folder id and a Message-ID of 1..%d printable bytes",
                         MAX_MSGID);
    size_t n = 0;
    uint32_t next = 0;
    int last = 0;
    rc = find_item_call(e, mailbox, folder_id, 1, 0, msgid, count_item, &n, &next, &last, err,
                        errlen);
    if (!rc) *found = n > 0;
    return finish(e, rc, err, errlen);
}

mv_err mv_ews__parse_created(const char *body, size_t len, const char *op, char **id,
                             mv_ews__info *info, char *err, size_t errlen)
{
    int folder = !strcmp(op, "CreateFolder");
    xmlDoc *d = NULL;
    xmlNode *msg = NULL;
    *id = NULL;
    info_reset(info);
    mv_err e = load_xml(body, len, op, &d, err, errlen);
    if (!e) e = response_message(d, op, info, &msg, err, errlen);
    if (!e) {
        xmlNode *list = child_el(msg, NS_M, folder ? "Folders" : "Items");
        xmlNode *obj = list ? first_el(list->children) : NULL;
        if (!obj && folder)
            e = mv_seterr(err, errlen, MV_EPROTO, "%s: the answer names no folder", op);
        else if (obj)
            e = id_attr(obj, folder ? "FolderId" : "ItemId", folder, op, 0, id, err, errlen);
    }
    xmlFreeDoc(d);
    return e;
}

/* The answer of a Create* request: the new object's id (*id malloc'd, NULL when an item's
 * answer names none). */
static mv_err created(mv_ews *e, const char *op, char **id, char *err, size_t errlen)
{
    size_t blen = 0;
    const char *body = answer(e, &blen);
    mv_ews__info info;
    mv_err rc = mv_ews__parse_created(body, blen, op, id, &info, err, errlen);
    take_info(e, &info);
    return rc;
}

/* A display name we send: 1..MAX_FOLDER_NAME bytes, no control characters. */
static int folder_name_ok(const char *s)
{
    if (!s || !*s || strlen(s) > MAX_FOLDER_NAME) return 0;
    for (; *s; s++)
        if ((unsigned char)*s < 0x20 || *s == 0x7f) return 0;
    return 1;
}

typedef struct fpick {
    const char *name;
    char *id;
    int exact;
} fpick;

/* The folder the server found equal to the name: an exact match first, else the first one
 * (Exchange compares display names without regard to case). */
static int pick_folder(void *ud, const char *id, const char *parent, const char *name,
                       const char *cls, uint64_t total, int has_children)
{
    fpick *p = ud;
    (void)parent;
    (void)cls;
    (void)total;
    (void)has_children;
    int exact = !strcmp(name, p->name);
    if (p->id && (p->exact || !exact)) return 0;
    char *c = xstrdup(id);
    if (!c) return 1;
    free(p->id);
    p->id = c;
    p->exact = exact;
    return 0;
}

/* The child folder called name of parent_id (NULL: msgfolderroot); *id NULL if none. */
static mv_err child_folder(mv_ews *e, const char *mailbox, const char *parent_id, const char *name,
                           char **id, char *err, size_t errlen)
{
    fpick p = {name, NULL, 0};
    *id = NULL;
    mv_err rc =
        find_folder_req(e, mailbox, MV_EWS_ROOT_MAILBOX, 0, parent_id, name, 0, err, errlen);
    if (!rc) {
        size_t blen = 0;
        const char *body = answer(e, &blen);
        mv_ews__info info;
        uint32_t next = 0;
        int last = 0;
        rc = mv_ews__parse_find_folder(body, blen, pick_folder, &p, &next, &last, &info, err,
                                       errlen);
        take_info(e, &info);
        if (rc == MV_ECANCEL) rc = mv_seterr(err, errlen, MV_ENOMEM, "out of memory");
    }
    if (rc) {
        free(p.id);
        return rc;
    }
    *id = p.id;
    return MV_OK;
}

/* CreateFolder of one mail folder (FolderClass IPF.Note) under parent_id (NULL:
 * msgfolderroot), as in
 * https://learn.microsoft.com/en-us/exchange/client-developer/web-service-reference/createfolder-operation
 */
static mv_err create_folder(mv_ews *e, const char *mailbox, const char *parent_id, const char *name,
                            char **id, char *err, size_t errlen)
{
    xw x;
    *id = NULL;
    if (xw_open(&x, e, mailbox)) goto nomem;
    xs(&x, "m:CreateFolder");
    xs(&x, "m:ParentFolderId");
    folder_ref(&x, e, mailbox, MV_EWS_ROOT_MAILBOX, parent_id);
    xe(&x);
    xs(&x, "m:Folders");
    xs(&x, "t:Folder");
    xt(&x, "t:FolderClass", "IPF.Note");
    xt(&x, "t:DisplayName", name);
    xe(&x);
    xe(&x);
    if (xw_close(&x)) goto nomem;
    call c = {.mailbox = mailbox, .x = &x, .weight = 1, .what = "CreateFolder"};
    mv_err rc = ews_call(e, &c, err, errlen);
    xw_free(&x);
    if (!rc) rc = created(e, "CreateFolder", id, err, errlen);
    return rc;
nomem:
    xw_free(&x);
    return mv_seterr(err, errlen, MV_ENOMEM, "out of memory");
}

mv_err mv_ews_ensure_folder(mv_ews *e, const char *mailbox, const char *const *names, size_t n,
                            char **folder_id, char *err, size_t errlen)
{
    if (folder_id) *folder_id = NULL;
    mv_err rc = begin_call(e, mailbox, err, errlen);
    if (rc) return rc;
    if (!folder_id || !names || n < 1 || n > MAX_DEPTH)
        return mv_seterr(err, errlen, MV_EINVAL, "folder path: 1..%d names are required",
                         MAX_DEPTH);
    for (size_t i = 0; i < n; i++)
        if (!folder_name_ok(names[i]))
            return mv_seterr(err, errlen, MV_EINVAL,
                             "folder name \"%s\": 1..%d bytes without control characters",
                             names[i] ? names[i] : "", MAX_FOLDER_NAME);
    char *parent = NULL;
    for (size_t i = 0; i < n && !rc; i++) {
        char *id = NULL;
        rc = child_folder(e, mailbox, parent, names[i], &id, err, errlen);
        if (!rc && !id) {
            rc = create_folder(e, mailbox, parent, names[i], &id, err, errlen);
            if (rc && strstr(err, "ErrorFolderExists")) /* made meanwhile by someone else */
                rc = child_folder(e, mailbox, parent, names[i], &id, err, errlen);
            if (!rc && !id)
                rc = mv_seterr(err, errlen, MV_EPROTO, "folder \"%s\" created but not found",
                               names[i]);
        }
        free(parent);
        parent = id;
    }
    if (rc) {
        free(parent);
        parent = NULL;
    }
    *folder_id = parent;
    return finish(e, rc, err, errlen);
}

/* Base64 of the MIME straight into the request (no line breaks): whole groups of 3 bytes are
 * encoded as they come, up to 2 bytes carried to the next piece. */
typedef struct b64put {
    xw *x;
    unsigned char carry[3];
    int ncarry;
    uint64_t total, max;
    mv_err why; /* what stopped a put */
} b64put;

static int b64_flush(b64put *b, const unsigned char *p, size_t n)
{
    unsigned char out[4 * 1024 + 1];
    while (n > 0) {
        size_t take = n > 3 * 1024 ? 3 * 1024 : n;
        int len = EVP_EncodeBlock(out, p, (int)take);
        if (!b->x->bad && xmlTextWriterWriteRawLen(b->x->w, out, len) < 0) b->x->bad = 1;
        p += take;
        n -= take;
    }
    if (b->x->bad) b->why = MV_ENOMEM;
    return b->x->bad ? -1 : 0;
}

static int b64_put(void *ud, const void *data, size_t n)
{
    b64put *b = ud;
    const unsigned char *p = data;
    if (n > b->max - b->total) { /* larger than max_message */
        b->why = MV_ETOOBIG;
        return -1;
    }
    b->total += n;
    while (b->ncarry && n) { /* complete the carried group */
        b->carry[b->ncarry++] = *p++;
        n--;
        if (b->ncarry == 3) {
            if (b64_flush(b, b->carry, 3)) return -1;
            b->ncarry = 0;
        }
    }
    if (b->ncarry) return 0; /* the piece only added to the carried group */
    size_t whole = n - n % 3;
    if (whole && b64_flush(b, p, whole)) return -1;
    memcpy(b->carry, p + whole, n - whole);
    b->ncarry = (int)(n - whole);
    return 0;
}

/* One MAPI property by tag (ExtendedFieldURI PropertyTag/PropertyType, see
 * https://learn.microsoft.com/en-us/exchange/client-developer/web-service-reference/extendedfielduri).
 */
static void ext_prop(xw *x, const char *tag, const char *type, const char *value)
{
    xs(x, "t:ExtendedProperty");
    xs(x, "t:ExtendedFieldURI");
    xa(x, "PropertyTag", tag);
    xa(x, "PropertyType", type);
    xe(x);
    xt(x, "t:Value", value);
    xe(x);
}

mv_err mv_ews_create_message(mv_ews *e, const char *mailbox, const char *folder_id,
                             const mv_ews_message *m, char *err, size_t errlen)
{
    mv_err rc = begin_call(e, mailbox, err, errlen);
    if (rc) return rc;
    if (!m || !m->write || !token_ok(folder_id, MAX_ID))
        return mv_seterr(err, errlen, MV_EINVAL, "create: a folder id and a writer are required");
    xw x;
    char *id = NULL;
    if (xw_open(&x, e, mailbox)) goto nomem;
    /* https://learn.microsoft.com/en-us/exchange/client-developer/web-service-reference/createitem:
     * SaveOnly keeps the message in SavedItemFolderId; t:MimeContent is the first element of an
     * item, t:ExtendedProperty comes after the item's own properties */
    xs(&x, "m:CreateItem");
    xa(&x, "MessageDisposition", "SaveOnly");
    xs(&x, "m:SavedItemFolderId");
    folder_ref(&x, e, mailbox, MV_EWS_ROOT_MAILBOX, folder_id);
    xe(&x);
    xs(&x, "m:Items");
    xs(&x, "t:Message");
    xs(&x, "t:MimeContent");
    if (x.bad) goto nomem;
    b64put b = {.x = &x, .max = e->o.max_message};
    rc = m->write(m->ud, b64_put, &b, err, errlen);
    if (b.why == MV_ETOOBIG)
        rc = mv_seterr(err, errlen, MV_ETOOBIG,
                       "create: the message is larger than max_message "
                       "(%" PRIu64 " bytes)",
                       b.max);
    else if (b.why)
        goto nomem;
    if (!rc && b.total == 0) rc = mv_seterr(err, errlen, MV_EINVAL, "create: the message is empty");
    if (rc) goto out;
    if (b.ncarry && b64_flush(&b, b.carry, (size_t)b.ncarry)) goto nomem;
    xe(&x);
    /* PR_MESSAGE_FLAGS: without it Exchange marks the item unsent (a draft); 1 = MSGFLAG_READ */
    ext_prop(&x, "0x0E07", "Integer", m->read ? "1" : "0");
    if (m->time > 0) { /* PR_MESSAGE_DELIVERY_TIME and PR_CLIENT_SUBMIT_TIME */
        char when[32];
        time_t t = (time_t)m->time;
        struct tm tm;
        if (!gmtime_r(&t, &tm) || !strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%SZ", &tm)) {
            rc = mv_seterr(err, errlen, MV_EINVAL, "create: time out of range");
            goto out;
        }
        ext_prop(&x, "0x0E06", "SystemTime", when);
        ext_prop(&x, "0x0039", "SystemTime", when);
    }
    xe(&x);
    xe(&x);
    if (xw_close(&x)) goto nomem;
    call c = {.mailbox = mailbox, .x = &x, .weight = 1, .what = "CreateItem"};
    rc = ews_call(e, &c, err, errlen);
    xw_free(&x);
    if (!rc) rc = created(e, "CreateItem", &id, err, errlen);
    free(id);
    return finish(e, rc, err, errlen);
nomem:
    rc = mv_seterr(err, errlen, MV_ENOMEM, "out of memory");
out:
    xw_free(&x);
    return finish(e, rc, err, errlen);
}

typedef struct gsink {
    mv_ews__getitem *g;
    mv_err e;
    char err[MV_ERRLEN];
} gsink;

static int gsink_data(void *ud, const void *p, size_t n)
{
    gsink *s = ud;
    s->e = mv_ews__getitem_feed(s->g, p, n, s->err, sizeof s->err);
    return s->e != MV_OK;
}

mv_err mv_ews_get_mime(mv_ews *e, const char *mailbox, const char *const *item_ids, size_t n,
                       const mv_ews_mime_cb *cb, void *ud, char *err, size_t errlen)
{
    mv_err rc = begin_call(e, mailbox, err, errlen);
    if (rc) return rc;
    if (!item_ids || n < 1 || n > MV_EWS_GET_MAX || !cb || !cb->data)
        return mv_seterr(err, errlen, MV_EINVAL,
                         "mime: 1..%d item ids and a data callback are required", MV_EWS_GET_MAX);
    for (size_t i = 0; i < n; i++)
        if (!token_ok(item_ids[i], MAX_ID))
            return mv_seterr(err, errlen, MV_EINVAL, "mime: item id %zu is empty or not printable",
                             i);
    xw x;
    gsink s = {0};
    if (xw_open(&x, e, mailbox)) goto nomem;
    xs(&x, "m:GetItem");
    item_shape(&x, 1);
    xs(&x, "m:ItemIds");
    for (size_t i = 0; i < n; i++) {
        xs(&x, "t:ItemId");
        xa(&x, "Id", item_ids[i]);
        xe(&x);
    }
    xe(&x);
    if (xw_close(&x)) goto nomem;
    if ((rc = mv_ews__getitem_new(n, e->o.max_message, cb, ud, &s.g, err, errlen))) goto out;
    /* the whole streamed answer: each item's base64 (4/3 of max_message, allowing for lines of
     * 76 characters and CRLF) plus the XML; an item past max_message is still read to its end,
     * so a huge one can exhaust this shared budget (MV_ETOOBIG for the request) */
    uint64_t per = (e->o.max_message / 57 + 1) * 78 + 65536, max = (uint64_t)e->o.max_xml;
    for (size_t i = 0; i < n; i++)
        max = max > UINT64_MAX - per ? UINT64_MAX : max + per;
    mv_http_sink sink = {
        .data = gsink_data, .ud = &s, .max = max, .max_label = "the GetItem bound"};
    call c = {.mailbox = mailbox, .x = &x, .weight = (int)n, .sink = &sink, .what = "GetItem"};
    rc = ews_call(e, &c, err, errlen);
    if (rc == MV_ECANCEL && s.e) {
        rc = mv_seterr(err, errlen, s.e, "%s", s.err);
    } else if (!rc) {
        rc = mv_ews__getitem_finish(s.g, err, errlen);
    }
    if (s.g) take_info(e, mv_ews__getitem_info(s.g));
    goto out;
nomem:
    rc = mv_seterr(err, errlen, MV_ENOMEM, "out of memory");
out:
    mv_ews__getitem_free(s.g);
    xw_free(&x);
    return finish(e, rc, err, errlen);
}

/* ------------------------------------------------------------------ open / close */

void mv_ews_opts_default(mv_ews_opts *o)
{
    memset(o, 0, sizeof *o);
    o->auth = MV_EWS_BASIC;
    o->login_base = "https://login.microsoftonline.com";
    o->server_version = "Exchange2016";
    o->verify = 1;
    o->timeout_ms = 120000;
    o->connect_timeout_ms = 15000;
    o->idle_timeout_ms = 60000;
    o->max_xml = 16u * 1024 * 1024;
    o->max_message = 200ull * 1024 * 1024;
    o->page_size = 500;
}

static int url_ok(const char *v)
{
    return v && (!strncasecmp(v, "https://", 8) || !strncasecmp(v, "http://", 7)) && !mv_has_ctl(v);
}

mv_err mv_ews_open(const mv_ews_opts *o, mv_ews **out, char *err, size_t errlen)
{
    mv_ews *e = NULL;
    mv_err rc = MV_OK;
    if (out) *out = NULL;
    if (err && errlen) err[0] = '\0';
    if (!o || !out) return mv_seterr(err, errlen, MV_EINVAL, "ews: no options");
    if (!url_ok(o->url))
        return mv_seterr(err, errlen, MV_EINVAL, "ews: url must be an http(s) URL");
    const char *sv = o->server_version && *o->server_version ? o->server_version : "Exchange2016";
    if (!token_ok(sv, 32))
        return mv_seterr(err, errlen, MV_EINVAL, "ews: server_version is not a version name");
    if (o->auth != MV_EWS_BASIC && o->auth != MV_EWS_NTLM && o->auth != MV_EWS_OAUTH)
        return mv_seterr(err, errlen, MV_EINVAL, "ews: unknown auth");
    if (o->auth != MV_EWS_OAUTH && (!o->username || !*o->username || !o->password))
        return mv_seterr(err, errlen, MV_EINVAL, "ews: username and password are required");
    if (o->timeout_ms <= 0 || o->connect_timeout_ms <= 0 || o->max_xml < 1024 ||
        o->max_message == 0 || o->page_size < 1 || o->page_size > 1000)
        return mv_seterr(err, errlen, MV_EINVAL,
                         "ews: timeouts must be > 0, max_xml >= 1024, max_message > 0, "
                         "page_size 1..1000");
    mv_xml_init();
    e = calloc(1, sizeof *e);
    if (!e) return mv_seterr(err, errlen, MV_ENOMEM, "out of memory");
    e->o = *o;
    e->url = xstrdup(o->url);
    e->server_version_req = xstrdup(sv);
    if (o->auth != MV_EWS_OAUTH) {
        e->username = xstrdup(o->username);
        e->password = xstrdup(o->password);
    }
    if (!e->url || !e->server_version_req ||
        (o->auth != MV_EWS_OAUTH && (!e->username || !e->password))) {
        rc = mv_seterr(err, errlen, MV_ENOMEM, "out of memory");
        goto fail;
    }
    /* options that point at the caller's strings are not kept */
    e->o.url = e->url;
    e->o.username = e->username;
    e->o.password = e->password;
    e->o.server_version = e->server_version_req;
    e->o.login_base = e->o.tenant_id = e->o.client_id = e->o.client_secret = NULL;
    e->o.client_key_pem = e->o.client_cert_pem = e->o.scope = e->o.ca_file = NULL;
    if (o->auth == MV_EWS_OAUTH) {
        mv_oauth_opts ao = {
            .login_base = o->login_base,
            .tenant_id = o->tenant_id,
            .client_id = o->client_id,
            .client_secret = o->client_secret,
            .client_key_pem = o->client_key_pem,
            .client_cert_pem = o->client_cert_pem,
            .scope = o->scope && *o->scope ? o->scope : "https://outlook.office365.com/.default"};
        if ((rc = mv_oauth_new(&ao, &e->oauth, err, errlen))) goto fail;
    }
    mv_http_opts ho;
    mv_http_opts_default(&ho);
    ho.ca_file = o->ca_file;
    ho.verify = o->verify;
    ho.timeout_ms = o->timeout_ms;
    ho.connect_timeout_ms = o->connect_timeout_ms;
    ho.idle_timeout_ms = o->idle_timeout_ms;
    ho.max_body = o->max_xml;
    if ((rc = mv_http_open(&ho, &e->http, err, errlen))) goto fail;
    *out = e;
    return MV_OK;
fail:
    mv_scrub(err, errlen, o->password);
    mv_scrub(err, errlen, o->client_secret);
    mv_ews_close(e);
    return rc;
}

void mv_ews_close(mv_ews *e)
{
    if (!e) return;
    mv_http_close(e->http);
    mv_oauth_free(e->oauth);
    free(e->url);
    free(e->username);
    mv_free_secret(e->password);
    free(e->server_version_req);
    free(e);
}

void mv_ews_set_gate(mv_ews *e, const mv_http_gate *gate)
{
    if (gate)
        e->gate = *gate;
    else
        memset(&e->gate, 0, sizeof e->gate);
}

void mv_ews_set_token_source(mv_ews *e, const mv_oauth_source *src)
{
    if (e->oauth) mv_oauth_set_source(e->oauth, src);
}

int64_t mv_ews_backoff_ms(const mv_ews *e)
{
    return e ? e->backoff_ms : 0;
}

const char *mv_ews_server_version(const mv_ews *e)
{
    return e ? e->server_version : "";
}

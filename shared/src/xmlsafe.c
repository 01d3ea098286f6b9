/* xmlsafe.c - libxml2 set up for untrusted answers (see mv/xmlsafe.h). Shared by the EWS and
 * S3 clients, so both refuse the same things the same way. */
#include "mv/xmlsafe.h"

#include <limits.h>
#include <pthread.h>

static pthread_once_t xml_once = PTHREAD_ONCE_INIT;

static void xml_init_once(void)
{
    xmlInitParser();
}

void mv_xml_init(void)
{
    pthread_once(&xml_once, xml_init_once);
}

void mv_xml_silent(void *ud, xmlErrorPtr e)
{
    (void)ud;
    (void)e;
}

/* libxml2 reports some errors (character encoding) through its per-thread generic handler,
 * which prints to stderr; a library never prints. */
static void generic_silent(void *ctx, const char *msg, ...)
{
    (void)ctx;
    (void)msg;
}

void mv_xml_quiet_on(mv_xml_quiet *q)
{
    q->fn = xmlGenericError;
    q->ctx = xmlGenericErrorContext;
    xmlSetGenericErrorFunc(NULL, generic_silent);
}

void mv_xml_quiet_off(const mv_xml_quiet *q)
{
    xmlSetGenericErrorFunc(q->ctx, q->fn);
}

void mv_xml_dtd_refuse(void *ctx, const xmlChar *name, const xmlChar *eid, const xmlChar *sid)
{
    (void)name;
    (void)eid;
    (void)sid;
    xmlStopParser((xmlParserCtxtPtr)ctx);
}

mv_err mv_xml_load(const char *body, size_t len, size_t max, int options, const char *what,
                   xmlDoc **out, char *err, size_t errlen)
{
    *out = NULL;
    mv_xml_init();
    if (!body || !len) return mv_seterr(err, errlen, MV_EPROTO, "%s: empty answer", what);
    if (max > INT_MAX) max = INT_MAX;
    if (len > max)
        return mv_seterr(err, errlen, MV_ETOOBIG, "%s: answer larger than %zu bytes", what, max);
    mv_xml_quiet qt;
    mv_xml_quiet_on(&qt);
    xmlParserCtxtPtr c = xmlNewParserCtxt();
    if (!c) {
        mv_xml_quiet_off(&qt);
        return mv_seterr(err, errlen, MV_ENOMEM, "out of memory");
    }
    c->sax->internalSubset = mv_xml_dtd_refuse;
    c->sax->serror = mv_xml_silent;
    xmlDoc *d =
        xmlCtxtReadMemory(c, body, (int)len, NULL, NULL,
                          options | XML_PARSE_NONET | XML_PARSE_NOERROR | XML_PARSE_NOWARNING);
    mv_err e = MV_OK;
    if (c->errNo == XML_ERR_USER_STOP) {
        e = mv_seterr(err, errlen, MV_EPROTO, "%s: the answer has a DOCTYPE (refused)", what);
    } else if (!d || !c->wellFormed || !xmlDocGetRootElement(d)) {
        const xmlError *xe = xmlCtxtGetLastError(c);
        if (xe && xe->code == XML_ERR_NO_MEMORY)
            e = mv_seterr(err, errlen, MV_ENOMEM, "out of memory");
        else
            e = mv_seterr(err, errlen, MV_EPROTO, "%s: not well-formed XML (line %d: %s)", what,
                          xe ? xe->line : 0, xe && xe->message ? xe->message : "parse error");
        mv_sanitize(err);
    }
    if (e) {
        xmlFreeDoc(d);
        d = NULL;
    }
    xmlFreeParserCtxt(c);
    mv_xml_quiet_off(&qt);
    *out = d;
    return e;
}

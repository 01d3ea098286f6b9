/* xmlsafe.h - parsing XML answers from remote servers (EWS, S3) with libxml2, safely.
 *
 * The answers are untrusted: a DOCTYPE is refused before its internal subset is read (so no
 * entity is ever declared, let alone expanded), nothing is loaded from the network, the size is
 * bounded, and libxml2 never prints (its per-thread generic error handler is silenced for the
 * duration of a parse and restored after). Errors name the answer ("what") and libxml2's
 * message, with control bytes replaced. */
#ifndef MV_XMLSAFE_H
#define MV_XMLSAFE_H

#include "mv/common.h"

#include <libxml/parser.h>

/* xmlInitParser once per process (thread-safe). */
void mv_xml_init(void);

/* The structured-error sink that drops everything (for SAX handlers' serror). */
void mv_xml_silent(void *ud, xmlErrorPtr e);
/* A SAX internalSubset hook that stops the parse at a DOCTYPE. */
void mv_xml_dtd_refuse(void *ctx, const xmlChar *name, const xmlChar *eid, const xmlChar *sid);

/* Silence libxml2's generic error handler of this thread, and put the caller's back. */
typedef struct mv_xml_quiet {
    xmlGenericErrorFunc fn;
    void *ctx;
} mv_xml_quiet;
void mv_xml_quiet_on(mv_xml_quiet *q);
void mv_xml_quiet_off(const mv_xml_quiet *q);

/* Parse a whole buffered answer of at most max bytes into *out (caller frees with
 * xmlFreeDoc). options are added to XML_PARSE_NONET | XML_PARSE_NOERROR | XML_PARSE_NOWARNING.
 * MV_EPROTO: empty, a DOCTYPE, not well-formed or no root element; MV_ETOOBIG: over max. */
mv_err mv_xml_load(const char *body, size_t len, size_t max, int options, const char *what,
                   xmlDoc **out, char *err, size_t errlen);

#endif

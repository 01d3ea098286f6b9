/* ews_session.h - an EWS client as a worker task uses it (ews_source.c, export_ews.c): the
 * profile's connection and credential, Exchange's limits per mailbox and per service account
 * kept by every worker together (gate.h), the cluster's OAuth token cache (tokens.h), and the
 * wait for a busy server's short back-off. */
#ifndef MV_WORKER_EWS_SESSION_H
#define MV_WORKER_EWS_SESSION_H

#include "chunk.h"
#include "gate.h"
#include "tokens.h"

#include "mv/ews.h"

typedef struct ews_session {
    mv_ews *e; /* closed by the caller (mv_ews_close) */
    worker_gate wg;
    token_cache tc;
    mv_oauth_source ts;
} ews_session;

/* Open the client of profile p (its ews_* fields) with secret for requests about mailbox via;
 * s must stay where it is while the client is used (the gate points into it). */
mv_err ews_session_open(chunk_ctx *c, const mv_profile *p, const char *secret, const char *via,
                        ews_session *s, char *err, size_t errlen);
/* After MV_EBUSY: wait out a short back-off (renewing the lease, counted as "throttled");
 * 0 = try again, -1 = give the attempt back (c->retry_after_ms set). */
int ews_wait_busy(chunk_ctx *c, mv_ews *e, int tries);

#endif

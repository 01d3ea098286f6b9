/* gate.h - the worker's side of the request gate (mv_http_gate): before every request to a
 * cloud service, take a slot from each of up to GATE_MAX_SCOPES cluster-wide limits kept in
 * Redis (state.h: concurrency and a sliding window, per mailbox, per app or per service
 * account). All or nothing: a request that gets one limit but not the next gives the first
 * back and waits. A wait longer than GATE_MAX_WAIT_MS ends the attempt (MV_EBUSY, with
 * c->retry_after_ms set), so the retry starts no earlier than the limit allows. */
#ifndef MV_WORKER_GATE_H
#define MV_WORKER_GATE_H

#include "chunk.h"

#include "mv/http.h"
#include "mv/state.h"

#define GATE_MAX_SCOPES 2
#define GATE_MAX_WAIT_MS 30000

typedef struct worker_gate {
    chunk_ctx *c;
    int n;
    struct {
        char scope[768];
        mv_limit lim;
        const char *what; /* "mailbox", "service account": names the limit in errors */
    } s[GATE_MAX_SCOPES];
    char req[37];
} worker_gate;

void worker_gate_init(worker_gate *g, chunk_ctx *c);
/* Add a limit (ignored when both of its limits are 0). */
void worker_gate_add(worker_gate *g, const char *scope, const mv_limit *lim, const char *what);
/* The hook for mv_graph_set_gate / mv_ews_set_gate; NULL acquire when there is no limit. */
mv_http_gate worker_gate_hook(worker_gate *g);

#endif

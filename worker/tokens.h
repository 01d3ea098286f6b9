/* tokens.h - the worker's token source for OAuth clients (Graph, EWS): the cluster's cached
 * token (mv:gtoken:{t}:{profile}, sealed with the master key and bound to tenant, profile, app
 * and resource), or a new one fetched by a single task at a time while the others wait for it
 * (bounded, then they fetch their own). After a 401 the refused token is never taken from the
 * cache again, so every task that saw it refused waits for the one refresh. */
#ifndef MV_WORKER_TOKENS_H
#define MV_WORKER_TOKENS_H

#include "chunk.h"

#include "mv/oauth.h"

typedef struct token_cache {
    chunk_ctx *c;
    const char *resource; /* the service the token is for (graph_base, EWS URL) */
} token_cache;

/* A source for mv_oauth_set_source / mv_graph_set_token_source; tc must outlive the client. */
mv_oauth_source token_cache_source(token_cache *tc);

#endif

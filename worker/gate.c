/* gate.c - cluster-wide request limits around every cloud request. See gate.h. */
#include "gate.h"

#include "mv/log.h"

#include <stdio.h>
#include <string.h>
#include <unistd.h>

void worker_gate_init(worker_gate *g, chunk_ctx *c)
{
    memset(g, 0, sizeof *g);
    g->c = c;
}

void worker_gate_add(worker_gate *g, const char *scope, const mv_limit *lim, const char *what)
{
    if (g->n >= GATE_MAX_SCOPES || (lim->max_concurrent <= 0 && lim->window_requests <= 0)) return;
    snprintf(g->s[g->n].scope, sizeof g->s[g->n].scope, "%s", scope);
    g->s[g->n].lim = *lim;
    g->s[g->n].what = what;
    g->n++;
}

static void release_first(worker_gate *g, int k, int weight)
{
    char err[MV_ERRLEN];
    for (int i = 0; i < k; i++)
        if (mv_state_limit_release_n(g->c->r->st, g->s[i].scope, g->req, weight, err, sizeof err))
            mv_warn("limit release failed (the slot expires by itself)", " error=\"%s\"", err);
}

static mv_err gate_acquire(void *ud, int weight, char *err, size_t errlen)
{
    worker_gate *g = ud;
    chunk_ctx *c = g->c;
    for (;;) {
        int64_t wait = 0;
        int got = 0;
        mv_uuid(g->req);
        for (; got < g->n; got++) {
            int admitted = 0;
            mv_err rc = mv_state_limit_acquire_n(c->r->st, g->s[got].scope, g->req, &g->s[got].lim,
                                                 weight, &admitted, &wait, err, errlen);
            if (rc) {
                release_first(g, got, weight);
                return rc;
            }
            if (!admitted) break;
        }
        if (got == g->n) return MV_OK;
        release_first(g, got, weight); /* all or nothing */
        if (wait > GATE_MAX_WAIT_MS) { /* the window is spent for longer: give the attempt back */
            c->retry_after_ms = wait;
            return mv_seterr(err, errlen, MV_EBUSY,
                             "request budget of the %s spent for %lld ms more (%d requests per "
                             "%lld s)",
                             g->s[got].what, (long long)wait, g->s[got].lim.window_requests,
                             (long long)(g->s[got].lim.window_ms / 1000));
        }
        mv_err rc;
        if (*c->r->stopping) return mv_seterr(err, errlen, MV_ECANCEL, "shutting down");
        if ((rc = chunk_beat(c, 0))) return mv_seterr(err, errlen, rc, "%s", c->err);
        int64_t nap = wait > 0 ? (wait < 500 ? wait : 500) : 10;
        usleep((useconds_t)nap * 1000);
    }
}

static void gate_release(void *ud, int weight)
{
    worker_gate *g = ud;
    release_first(g, g->n, weight);
}

mv_http_gate worker_gate_hook(worker_gate *g)
{
    mv_http_gate h = {NULL, NULL, NULL};
    if (g->n) {
        h.acquire = gate_acquire;
        h.release = gate_release;
        h.ud = g;
    }
    return h;
}

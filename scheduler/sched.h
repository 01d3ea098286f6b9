/* sched.h - the scheduler's leader duty (sched.c). */
#ifndef MV_SCHEDULER_SCHED_H
#define MV_SCHEDULER_SCHED_H

#include "mv/jobs.h"

#include <stdint.h>

typedef struct sched {
    const mv_config *cfg;
    mv_state *st;
    mv_producer *pr;
    const unsigned char *key; /* master key (credentials of directory-based profiles), or NULL */
    char owner[128];          /* this scheduler's id in the leader lease */
    uint64_t token;           /* fencing token while leader */
    int leader;
    uint64_t fired;
    int64_t warned_ms; /* last "not enqueued" warning (monotonic) */
} sched;

/* Keep or try for the leadership; as leader, fire every due schedule. */
void sched_tick(sched *s);
/* Give the leadership up (on shutdown), so another scheduler takes over at once. */
void sched_resign(sched *s);

#endif

/* runner.h - runs one archive task (one chunk of one mailbox) to completion or failure. */
#ifndef MV_WORKER_RUNNER_H
#define MV_WORKER_RUNNER_H

#include "mv/config.h"
#include "mv/crypt.h"
#include "mv/queue.h"
#include "mv/state.h"
#include "mv/store.h"
#include "mv/task.h"

#include <signal.h>

/* Per-thread resources: a runner owns its Redis connection; the Kafka producer is shared by
 * all runners of the process (librdkafka producers are thread-safe). */
typedef struct mv_runner {
    const mv_config *cfg;
    const unsigned char *master_key;
    mv_store *store;
    mv_state *st;
    mv_producer *pr;
    char worker_id[128];
    int legal_hold; /* the current task's mailbox is on legal hold: new objects get S3 holds */
    volatile sig_atomic_t *stopping; /* set on SIGTERM: end after the current folder range */
} mv_runner;

typedef enum {
    MV_RUN_DONE = 0,  /* mailbox complete */
    MV_RUN_CONTINUED, /* chunk complete, continuation task produced */
    MV_RUN_RETRY,     /* transient failure, task re-queued with backoff */
    MV_RUN_DEAD,      /* failure sent to the DLQ */
    MV_RUN_ABANDONED, /* not started (shutdown): leave the offset uncommitted */
} mv_run_outcome;

/* Execute one task message. Returns MV_OK when the outcome is durably recorded (checkpoint,
 * continuation, retry or DLQ entry) so the caller may commit the Kafka offset; any other
 * return means nothing could be recorded (Redis/Kafka down) and the offset must not be
 * committed (the task will be redelivered). */
mv_err mv_runner_execute(mv_runner *r, const void *payload, size_t len, mv_run_outcome *outcome,
                         char *err, size_t errlen);

#endif

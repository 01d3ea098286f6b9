/* queue.h - the Kafka side: a producer, a consumer-group member, topic creation and lag.
 *
 * Consumer contract (worker): auto-commit is off; the worker pauses a partition while it runs
 * a task from it and commits offset+1 only when the task's chunk is fully recorded, then
 * resumes it. A rebalance keeps in-flight partitions paused (re-paused on assignment), so
 * offsets are never committed past a running task. Polling continues while tasks run, so a
 * long mailbox never exceeds max.poll.interval.ms. */
#ifndef MV_QUEUE_H
#define MV_QUEUE_H

#include "mv/common.h"
#include "mv/config.h"
#include <stdint.h>

/* Create the tasks and DLQ topics with c->partitions partitions if they are missing. */
mv_err mv_queue_ensure_topics(const mv_config *c, char *err, size_t errlen);

typedef struct mv_producer mv_producer;
mv_err mv_producer_new(const mv_config *c, mv_producer **out, char *err, size_t errlen);
/* Enqueue (asynchronous, copies key and value). */
mv_err mv_producer_send(mv_producer *p, const char *topic, const char *key, const void *val,
                        size_t len, char *err, size_t errlen);
/* Send one message and wait for its own delivery report (not anybody else's): safe when
 * several threads share the producer. MV_ETIMEDOUT if it is not acknowledged in time. */
mv_err mv_producer_send_sync(mv_producer *p, const char *topic, const char *key, const void *val,
                             size_t len, int timeout_ms, char *err, size_t errlen);
/* Wait until every message sent so far is acknowledged (acks=all, idempotent producer).
 * Returns the first delivery error since the last flush, if any. */
mv_err mv_producer_flush(mv_producer *p, int timeout_ms, char *err, size_t errlen);
void mv_producer_destroy(mv_producer *p);

typedef struct mv_consumer mv_consumer;
typedef struct mv_qmsg {
    char topic[128];
    int32_t partition;
    int64_t offset;
    char key[512];
    void *value; /* malloc'd copy, freed by mv_qmsg_free */
    size_t len;
} mv_qmsg;
void mv_qmsg_free(mv_qmsg *m);

/* Joins c->group and subscribes to c->topic_tasks. auto.offset.reset=earliest. */
mv_err mv_consumer_new(const mv_config *c, const char *client_id, mv_consumer **out, char *err,
                       size_t errlen);
/* Poll once. Returns MV_OK and fills *m when a message arrived (the caller owns m and must
 * mv_qmsg_free it), MV_ETIMEDOUT when none. Serves rebalance callbacks. Call from one thread
 * (the consumer's owner) only. */
mv_err mv_consumer_poll(mv_consumer *c, int timeout_ms, mv_qmsg *m, char *err, size_t errlen);
/* Hold a partition (pause it) while its task runs. */
mv_err mv_consumer_hold(mv_consumer *c, const char *topic, int32_t partition);
/* Commit offset+1 synchronously, then release (resume) the partition. A failed commit (e.g.
 * the partition moved to another member) is returned but the partition is released anyway. */
mv_err mv_consumer_done(mv_consumer *c, const char *topic, int32_t partition, int64_t offset,
                        char *err, size_t errlen);
/* Leave the group cleanly (commits nothing). */
void mv_consumer_close(mv_consumer *c);

/* Consumer lag of c->group on c->topic_tasks: per partition high watermark - committed (a
 * partition without a committed offset counts from its low watermark). */
typedef struct mv_lag {
    int32_t partitions;
    int64_t total;
    int64_t per_partition[256];
} mv_lag;
mv_err mv_queue_lag(const mv_config *c, mv_lag *lag, char *err, size_t errlen);

/* Read every message of a topic, from each partition's start to its end as it was when the
 * call began (assigned partitions, no group, no commits: reading changes nothing). cb returns
 * non-zero to stop. MV_ETOOBIG past max_messages; a topic that does not exist is empty. */
typedef int (*mv_queue_read_fn)(void *ud, int32_t partition, int64_t offset, const void *key,
                                size_t keylen, const void *val, size_t len);
mv_err mv_queue_read_all(const mv_config *c, const char *topic, size_t max_messages,
                         mv_queue_read_fn cb, void *ud, char *err, size_t errlen);

#endif

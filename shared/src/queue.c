/* queue.c - Kafka producer, consumer-group member, topic creation and lag (librdkafka 2.0).
 *
 * Design:
 *  - Producer: idempotent (enable.idempotence, acks=all), linger.ms=5. The delivery report
 *    callback records the first failed delivery; mv_producer_flush returns it (and clears it).
 *  - Consumer: manual offset management (enable.auto.commit=false,
 *    enable.auto.offset.store=false), eager rebalancing (librdkafka's default range/roundrobin)
 *    with our own rebalance callback. fetch.wait.max.ms=100 so a resumed partition restarts
 *    within ~100 ms (one task per partition at a time makes that latency per message).
 *    Threading: mv_consumer_poll runs on the consumer's owner thread only, and rebalance
 *    callbacks run inside it. mv_consumer_hold and mv_consumer_done may run on any thread. They
 *    share the "held" set (partitions with a task in flight) with the rebalance callback under
 *    c->mu; pause/resume of a partition is issued while holding c->mu so a concurrent
 *    re-assignment can never re-pause a partition that was just released (or miss one that was
 *    just held). Commits and seeks run outside the mutex (they may block on the network).
 *    On ASSIGN the new partitions are assigned and every held one among them is paused again
 *    (an assignment starts unpaused and would otherwise re-deliver the running task's message).
 *    On REVOKE everything is unassigned; held entries stay held until their task is done.
 *  - hold: pause first (inside the mutex, after recording it), so no further message of that
 *    partition is returned by later polls. It must be called before the owner thread polls
 *    again (librdkafka discards already-fetched messages of a paused partition by version).
 *  - done: commit offset+1 synchronously if the partition is still assigned to us (otherwise
 *    nothing is committed: the new owner re-reads from the last commit, at-least-once), seek
 *    the partition to offset+1 (after a rebalance its fetch position is the old committed
 *    offset), then unhold and resume it.
 *  - Lag: a short-lived consumer handle with the same group.id that never subscribes (it does
 *    not join the group): metadata -> committed offsets -> watermarks.
 *  - librdkafka logs at warning and above, and client errors, go to mv_log. No credentials are
 *    configured here, so nothing secret can reach a message. */
#include "mv/queue.h"
#include "mv/log.h"

#include <inttypes.h>
#include <librdkafka/rdkafka.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define Q_ADMIN_TIMEOUT_MS 15000
#define Q_META_TIMEOUT_MS 15000
#define Q_LAG_TIMEOUT_MS 15000
#define Q_QUEUE_FULL_MS 10000
#define Q_SEEK_TIMEOUT_MS 5000

/* ---- shared helpers ------------------------------------------------------------------- */

static mv_err q_code(rd_kafka_resp_err_t e)
{
    switch (e) {
    case RD_KAFKA_RESP_ERR_NO_ERROR:
        return MV_OK;
    case RD_KAFKA_RESP_ERR__TIMED_OUT:
    case RD_KAFKA_RESP_ERR__MSG_TIMED_OUT:
    case RD_KAFKA_RESP_ERR__TIMED_OUT_QUEUE:
    case RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT:
        return MV_ETIMEDOUT;
    case RD_KAFKA_RESP_ERR__TRANSPORT:
    case RD_KAFKA_RESP_ERR__ALL_BROKERS_DOWN:
    case RD_KAFKA_RESP_ERR__RESOLVE:
        return MV_ENET;
    case RD_KAFKA_RESP_ERR__UNKNOWN_TOPIC:
    case RD_KAFKA_RESP_ERR__UNKNOWN_PARTITION:
    case RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART:
        return MV_ENOTFOUND;
    case RD_KAFKA_RESP_ERR__NO_OFFSET:
    case RD_KAFKA_RESP_ERR__INVALID_ARG:
        return MV_EINVAL;
    default:
        return MV_ESERVER;
    }
}

static void q_log_cb(const rd_kafka_t *rk, int level, const char *fac, const char *buf)
{
    if (level > 4) return; /* syslog levels: 0..3 error, 4 warning */
    mv_log(level <= 3 ? MV_LOG_ERROR : MV_LOG_WARN, "kafka client",
           " client=%s fac=%s detail=\"%s\"", rd_kafka_name(rk), fac, buf);
}

/* Client-level errors (also keeps them out of consumer polls). Connection failures are already
 * logged by the log callback, so they are only repeated at debug level. */
static void q_error_cb(rd_kafka_t *rk, int err, const char *reason, void *opaque)
{
    mv_log_level lvl = MV_LOG_WARN;
    if (err == RD_KAFKA_RESP_ERR__FATAL)
        lvl = MV_LOG_ERROR;
    else if (err == RD_KAFKA_RESP_ERR__TRANSPORT || err == RD_KAFKA_RESP_ERR__ALL_BROKERS_DOWN)
        lvl = MV_LOG_DEBUG;
    mv_log(lvl, "kafka error", " client=%s code=%s detail=\"%s\"", rd_kafka_name(rk),
           rd_kafka_err2name((rd_kafka_resp_err_t)err), reason);
}

static mv_err q_set(rd_kafka_conf_t *conf, const char *k, const char *v, char *err, size_t errlen)
{
    char es[256];
    if (rd_kafka_conf_set(conf, k, v, es, sizeof es) != RD_KAFKA_CONF_OK)
        return mv_seterr(err, errlen, MV_EINVAL, "kafka config %s: %s", k, es);
    return MV_OK;
}

/* Base configuration + NULL-terminated key/value pairs. *out owned by caller on success. */
static mv_err q_conf(const mv_config *c, const char *client_id, const char *const *kv,
                     rd_kafka_conf_t **out, char *err, size_t errlen)
{
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    mv_err e = q_set(conf, "bootstrap.servers", c->kafka_brokers, err, errlen);
    if (!e) e = q_set(conf, "client.id", client_id, err, errlen);
    if (!e) e = q_set(conf, "log.connection.close", "false", err, errlen);
    for (size_t i = 0; !e && kv && kv[i]; i += 2)
        e = q_set(conf, kv[i], kv[i + 1], err, errlen);
    if (e) {
        rd_kafka_conf_destroy(conf);
        return e;
    }
    rd_kafka_conf_set_log_cb(conf, q_log_cb);
    rd_kafka_conf_set_error_cb(conf, q_error_cb);
    *out = conf;
    return MV_OK;
}

/* rd_kafka_new; conf is consumed either way. */
static mv_err q_new(rd_kafka_type_t type, rd_kafka_conf_t *conf, const mv_config *c,
                    rd_kafka_t **out, char *err, size_t errlen)
{
    char es[512];
    *out = rd_kafka_new(type, conf, es, sizeof es);
    if (!*out) {
        rd_kafka_conf_destroy(conf);
        return mv_seterr(err, errlen, MV_EINVAL, "kafka %s: cannot create client: %s",
                         c->kafka_brokers, es);
    }
    return MV_OK;
}

static int64_t q_left(int64_t deadline)
{
    int64_t left = deadline - mv_mono_ms();
    return left > 0 ? left : 0;
}

/* Errors a freshly created topic or a leader change produce for a moment. */
static int q_transient(rd_kafka_resp_err_t e)
{
    return e == RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION ||
           e == RD_KAFKA_RESP_ERR_LEADER_NOT_AVAILABLE ||
           e == RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART ||
           e == RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT || e == RD_KAFKA_RESP_ERR__TRANSPORT ||
           e == RD_KAFKA_RESP_ERR_NOT_COORDINATOR ||
           e == RD_KAFKA_RESP_ERR_COORDINATOR_LOAD_IN_PROGRESS ||
           e == RD_KAFKA_RESP_ERR_COORDINATOR_NOT_AVAILABLE;
}

/* Low/high watermark of one partition, retrying transient errors until deadline. */
static rd_kafka_resp_err_t q_watermarks(rd_kafka_t *rk, const char *topic, int32_t partition,
                                        int64_t deadline, int64_t *lo, int64_t *hi)
{
    for (;;) {
        int64_t left = q_left(deadline);
        rd_kafka_resp_err_t ke = rd_kafka_query_watermark_offsets(rk, topic, partition, lo, hi,
                                                                  left > 0 ? (int)left : 1);
        if (!ke || !q_transient(ke) || q_left(deadline) <= 100) return ke;
        rd_kafka_poll(rk, 100); /* pause between attempts, serves callbacks */
    }
}

/* Waits until the broker's metadata shows topic with at least one partition; *parts gets the
 * partition count. */
static mv_err q_wait_topic(rd_kafka_t *rk, const mv_config *c, const char *topic, int64_t deadline,
                           int *parts, char *err, size_t errlen)
{
    rd_kafka_topic_t *rkt = rd_kafka_topic_new(rk, topic, NULL);
    if (!rkt)
        return mv_seterr(err, errlen, MV_EINVAL, "kafka topic %s: %s", topic,
                         rd_kafka_err2str(rd_kafka_last_error()));
    mv_err e = MV_OK;
    for (;;) {
        const struct rd_kafka_metadata *md = NULL;
        int64_t left = q_left(deadline);
        int wait = left > 2000 ? 2000 : (int)left;
        rd_kafka_resp_err_t ke = rd_kafka_metadata(rk, 0, rkt, &md, wait > 0 ? wait : 1);
        if (!ke && md->topic_cnt == 1 && !md->topics[0].err && md->topics[0].partition_cnt > 0) {
            /* every partition led and answering (a new topic's leaders start a bit later) */
            const struct rd_kafka_metadata_topic *mt = &md->topics[0];
            for (int i = 0; !ke && i < mt->partition_cnt; i++) {
                int64_t lo, hi;
                ke = mt->partitions[i].err;
                if (!ke && mt->partitions[i].leader < 0)
                    ke = RD_KAFKA_RESP_ERR_LEADER_NOT_AVAILABLE;
                if (!ke) ke = q_watermarks(rk, topic, mt->partitions[i].id, deadline, &lo, &hi);
            }
            if (!ke) {
                *parts = mt->partition_cnt;
                rd_kafka_metadata_destroy(md);
                break;
            }
            if (!q_transient(ke)) {
                e = mv_seterr(err, errlen, q_code(ke), "kafka %s: topic %s: %s", c->kafka_brokers,
                              topic, rd_kafka_err2str(ke));
                rd_kafka_metadata_destroy(md);
                break;
            }
        }
        if (!ke && md->topic_cnt == 1 && md->topics[0].err) ke = md->topics[0].err;
        if (!ke && md->topic_cnt != 1) ke = RD_KAFKA_RESP_ERR__UNKNOWN_TOPIC;
        if (md) rd_kafka_metadata_destroy(md);
        if (q_left(deadline) <= 0) {
            e = mv_seterr(err, errlen, ke ? q_code(ke) : MV_ETIMEDOUT,
                          "kafka %s: topic %s not visible in metadata: %s", c->kafka_brokers, topic,
                          rd_kafka_err2str(ke));
            break;
        }
        rd_kafka_poll(rk, 100); /* short pause between metadata requests, serves callbacks */
    }
    rd_kafka_topic_destroy(rkt);
    return e;
}

/* ---- topics --------------------------------------------------------------------------- */

mv_err mv_queue_ensure_topics(const mv_config *c, char *err, size_t errlen)
{
    static const char *const kv[] = {"allow.auto.create.topics", "false", NULL};
    const char *names[2] = {c->topic_tasks, c->topic_dlq};
    size_t ntopics = c->topic_dlq[0] ? 2 : 1;
    rd_kafka_t *rk = NULL;
    rd_kafka_conf_t *conf = NULL;
    rd_kafka_NewTopic_t *nt[2] = {NULL, NULL};
    rd_kafka_AdminOptions_t *opt = NULL;
    rd_kafka_queue_t *q = NULL;
    rd_kafka_event_t *ev = NULL;
    char es[512];
    int64_t deadline = mv_mono_ms() + Q_ADMIN_TIMEOUT_MS;

    if (c->partitions < 1)
        return mv_seterr(err, errlen, MV_EINVAL, "kafka.partitions must be >= 1");
    if (!c->topic_tasks[0]) return mv_seterr(err, errlen, MV_EINVAL, "kafka.topic is empty");
    mv_err e = q_conf(c, "mailvault-admin", kv, &conf, err, errlen);
    if (!e) e = q_new(RD_KAFKA_PRODUCER, conf, c, &rk, err, errlen);
    if (e) goto out;
    for (size_t i = 0; i < ntopics; i++) {
        /* replication factor -1: the broker's default.replication.factor (KIP-464) */
        nt[i] = rd_kafka_NewTopic_new(names[i], c->partitions, -1, es, sizeof es);
        if (!nt[i]) {
            e = mv_seterr(err, errlen, MV_EINVAL, "kafka topic %s: %s", names[i], es);
            goto out;
        }
    }
    opt = rd_kafka_AdminOptions_new(rk, RD_KAFKA_ADMIN_OP_CREATETOPICS);
    if (!opt || rd_kafka_AdminOptions_set_request_timeout(opt, Q_ADMIN_TIMEOUT_MS, es, sizeof es) ||
        rd_kafka_AdminOptions_set_operation_timeout(opt, Q_ADMIN_TIMEOUT_MS - 1000, es,
                                                    sizeof es)) {
        e = mv_seterr(err, errlen, MV_EINVAL, "kafka admin options: %s", opt ? es : "no memory");
        goto out;
    }
    q = rd_kafka_queue_new(rk);
    rd_kafka_CreateTopics(rk, nt, ntopics, opt, q);
    ev = rd_kafka_queue_poll(q, Q_ADMIN_TIMEOUT_MS + 2000);
    if (!ev) {
        e = mv_seterr(err, errlen, MV_ETIMEDOUT, "kafka %s: create topics %s: no answer",
                      c->kafka_brokers, c->topic_tasks);
        goto out;
    }
    if (rd_kafka_event_error(ev)) {
        e = mv_seterr(err, errlen, q_code(rd_kafka_event_error(ev)),
                      "kafka %s: create topics %s: %s", c->kafka_brokers, c->topic_tasks,
                      rd_kafka_event_error_string(ev));
        goto out;
    }
    const rd_kafka_CreateTopics_result_t *res = rd_kafka_event_CreateTopics_result(ev);
    size_t nres = 0;
    const rd_kafka_topic_result_t **tr =
        res ? rd_kafka_CreateTopics_result_topics(res, &nres) : NULL;
    for (size_t i = 0; i < nres; i++) {
        rd_kafka_resp_err_t ke = rd_kafka_topic_result_error(tr[i]);
        if (ke == RD_KAFKA_RESP_ERR_TOPIC_ALREADY_EXISTS) continue;
        if (ke) {
            const char *msg = rd_kafka_topic_result_error_string(tr[i]);
            e = mv_seterr(err, errlen, q_code(ke), "kafka %s: create topic %s: %s",
                          c->kafka_brokers, rd_kafka_topic_result_name(tr[i]),
                          msg ? msg : rd_kafka_err2str(ke));
            goto out;
        }
        mv_info("kafka topic created", " topic=%s partitions=%d", rd_kafka_topic_result_name(tr[i]),
                c->partitions);
    }
    for (size_t i = 0; i < ntopics; i++) {
        int parts = 0;
        e = q_wait_topic(rk, c, names[i], deadline + Q_META_TIMEOUT_MS, &parts, err, errlen);
        if (e) goto out;
        if (parts != c->partitions)
            mv_warn("kafka topic has a different partition count than configured",
                    " topic=%s partitions=%d configured=%d", names[i], parts, c->partitions);
    }
out:
    if (ev) rd_kafka_event_destroy(ev);
    if (q) rd_kafka_queue_destroy(q);
    if (opt) rd_kafka_AdminOptions_destroy(opt);
    for (size_t i = 0; i < 2; i++)
        if (nt[i]) rd_kafka_NewTopic_destroy(nt[i]);
    if (rk) rd_kafka_destroy(rk);
    return e;
}

/* ---- producer ------------------------------------------------------------------------- */

struct mv_producer {
    rd_kafka_t *rk;
    pthread_mutex_t mu; /* guards the first-error record (written by delivery reports) */
    rd_kafka_resp_err_t first_err;
    char first_errstr[384];
    char brokers[256];
};

/* Completion of one message sent by mv_producer_send_sync. Heap-allocated: if the sender
 * gives up waiting, it marks it abandoned and the delivery report frees it. */
typedef struct q_wait {
    pthread_mutex_t mu;
    int done, abandoned;
    rd_kafka_resp_err_t err;
} q_wait;

static void q_dr_cb(rd_kafka_t *rk, const rd_kafka_message_t *m, void *opaque)
{
    mv_producer *p = opaque;
    q_wait *w = m->_private;
    if (w) { /* a synchronous send: report to its sender only */
        pthread_mutex_lock(&w->mu);
        w->done = 1;
        w->err = m->err;
        int abandoned = w->abandoned;
        pthread_mutex_unlock(&w->mu);
        if (abandoned) {
            pthread_mutex_destroy(&w->mu);
            free(w);
        }
        return;
    }
    if (!m->err || !p) return;
    pthread_mutex_lock(&p->mu);
    if (!p->first_err) {
        p->first_err = m->err;
        snprintf(p->first_errstr, sizeof p->first_errstr, "topic %s partition %" PRId32 ": %s",
                 m->rkt ? rd_kafka_topic_name(m->rkt) : "?", m->partition,
                 rd_kafka_err2str(m->err));
    }
    pthread_mutex_unlock(&p->mu);
}

mv_err mv_producer_new(const mv_config *c, mv_producer **out, char *err, size_t errlen)
{
    static const char *const kv[] = {"enable.idempotence", "true", "acks", "all",
                                     "linger.ms",          "5",    NULL};
    *out = NULL;
    mv_producer *p = calloc(1, sizeof *p);
    if (!p) return mv_seterr(err, errlen, MV_ENOMEM, "kafka producer: no memory");
    pthread_mutex_init(&p->mu, NULL);
    snprintf(p->brokers, sizeof p->brokers, "%s", c->kafka_brokers);
    rd_kafka_conf_t *conf = NULL;
    mv_err e = q_conf(c, "mailvault-producer", kv, &conf, err, errlen);
    if (!e) {
        rd_kafka_conf_set_opaque(conf, p);
        rd_kafka_conf_set_dr_msg_cb(conf, q_dr_cb);
        e = q_new(RD_KAFKA_PRODUCER, conf, c, &p->rk, err, errlen);
    }
    if (e) {
        pthread_mutex_destroy(&p->mu);
        free(p);
        return e;
    }
    *out = p;
    return MV_OK;
}

mv_err mv_producer_send(mv_producer *p, const char *topic, const char *key, const void *val,
                        size_t len, char *err, size_t errlen)
{
    if (!topic || !topic[0]) return mv_seterr(err, errlen, MV_EINVAL, "kafka send: no topic");
    int64_t deadline = mv_mono_ms() + Q_QUEUE_FULL_MS;
    size_t klen = key ? strlen(key) : 0;
    for (;;) {
        rd_kafka_resp_err_t ke =
            rd_kafka_producev(p->rk, RD_KAFKA_V_TOPIC(topic), RD_KAFKA_V_KEY(key, klen),
                              RD_KAFKA_V_VALUE((void *)val, len),
                              RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY), RD_KAFKA_V_END);
        if (!ke) break;
        if (ke == RD_KAFKA_RESP_ERR__QUEUE_FULL && q_left(deadline) > 0) {
            rd_kafka_poll(p->rk, 100); /* serve delivery reports to make room */
            continue;
        }
        return mv_seterr(
            err, errlen, ke == RD_KAFKA_RESP_ERR__QUEUE_FULL ? MV_ETIMEDOUT : q_code(ke),
            "kafka %s: produce to topic %s: %s", p->brokers, topic, rd_kafka_err2str(ke));
    }
    rd_kafka_poll(p->rk, 0);
    return MV_OK;
}

mv_err mv_producer_send_sync(mv_producer *p, const char *topic, const char *key, const void *val,
                             size_t len, int timeout_ms, char *err, size_t errlen)
{
    if (!topic || !topic[0]) return mv_seterr(err, errlen, MV_EINVAL, "kafka send: no topic");
    q_wait *w = calloc(1, sizeof *w);
    if (!w) return mv_seterr(err, errlen, MV_ENOMEM, "kafka send: no memory");
    pthread_mutex_init(&w->mu, NULL);
    int64_t deadline = mv_mono_ms() + timeout_ms;
    size_t klen = key ? strlen(key) : 0;
    rd_kafka_resp_err_t ke;
    for (;;) {
        ke = rd_kafka_producev(p->rk, RD_KAFKA_V_TOPIC(topic), RD_KAFKA_V_KEY(key, klen),
                               RD_KAFKA_V_VALUE((void *)val, len),
                               RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY), RD_KAFKA_V_OPAQUE(w),
                               RD_KAFKA_V_END);
        if (ke != RD_KAFKA_RESP_ERR__QUEUE_FULL || q_left(deadline) <= 0) break;
        rd_kafka_poll(p->rk, 100);
    }
    if (ke) { /* never queued: no delivery report will come */
        pthread_mutex_destroy(&w->mu);
        free(w);
        return mv_seterr(
            err, errlen, ke == RD_KAFKA_RESP_ERR__QUEUE_FULL ? MV_ETIMEDOUT : q_code(ke),
            "kafka %s: produce to topic %s: %s", p->brokers, topic, rd_kafka_err2str(ke));
    }
    mv_err e = MV_OK;
    for (;;) {
        /* Any thread's poll may serve our report; we only look at our own record. */
        rd_kafka_poll(p->rk, 20);
        pthread_mutex_lock(&w->mu);
        int done = w->done;
        rd_kafka_resp_err_t de = w->err;
        if (!done && q_left(deadline) <= 0) w->abandoned = 1;
        int abandoned = w->abandoned;
        pthread_mutex_unlock(&w->mu);
        if (done) {
            if (de)
                e = mv_seterr(err, errlen, q_code(de), "kafka %s: delivery to topic %s failed: %s",
                              p->brokers, topic, rd_kafka_err2str(de));
            pthread_mutex_destroy(&w->mu);
            free(w);
            return e;
        }
        if (abandoned) /* the report frees w when it comes */
            return mv_seterr(err, errlen, MV_ETIMEDOUT,
                             "kafka %s: message to topic %s not acknowledged within %d ms",
                             p->brokers, topic, timeout_ms);
    }
}

mv_err mv_producer_flush(mv_producer *p, int timeout_ms, char *err, size_t errlen)
{
    char fatal[256];
    rd_kafka_resp_err_t ke = rd_kafka_flush(p->rk, timeout_ms);
    mv_err e = MV_OK;
    if (ke == RD_KAFKA_RESP_ERR__TIMED_OUT) {
        e = mv_seterr(err, errlen, MV_ETIMEDOUT,
                      "kafka %s: %d message(s) not acknowledged within %d ms", p->brokers,
                      rd_kafka_outq_len(p->rk), timeout_ms);
    } else if (ke) {
        e = mv_seterr(err, errlen, q_code(ke), "kafka %s: flush: %s", p->brokers,
                      rd_kafka_err2str(ke));
    }
    rd_kafka_resp_err_t fe = rd_kafka_fatal_error(p->rk, fatal, sizeof fatal);
    if (fe)
        return mv_seterr(err, errlen, MV_ESERVER, "kafka %s: producer failed fatally: %s",
                         p->brokers, fatal);
    pthread_mutex_lock(&p->mu);
    if (p->first_err) {
        e = mv_seterr(err, errlen, q_code(p->first_err), "kafka %s: delivery failed: %s",
                      p->brokers, p->first_errstr);
        p->first_err = RD_KAFKA_RESP_ERR_NO_ERROR;
        p->first_errstr[0] = '\0';
    }
    pthread_mutex_unlock(&p->mu);
    return e;
}

void mv_producer_destroy(mv_producer *p)
{
    if (!p) return;
    if (rd_kafka_flush(p->rk, 5000) == RD_KAFKA_RESP_ERR__TIMED_OUT)
        mv_warn("kafka producer closed with unsent messages", " brokers=%s count=%d", p->brokers,
                rd_kafka_outq_len(p->rk));
    rd_kafka_destroy(p->rk);
    pthread_mutex_destroy(&p->mu);
    free(p);
}

/* ---- consumer ------------------------------------------------------------------------- */

typedef struct q_held {
    char topic[128];
    int32_t partition;
} q_held;

struct mv_consumer {
    rd_kafka_t *rk;
    pthread_mutex_t mu; /* guards held/nheld/capheld and orders pause/resume (see top) */
    q_held *held;
    size_t nheld, capheld;
    char brokers[256];
    char group[128];
};

void mv_qmsg_free(mv_qmsg *m)
{
    if (!m) return;
    free(m->value);
    m->value = NULL;
    m->len = 0;
}

/* c->mu held. */
static size_t q_held_find(const mv_consumer *c, const char *topic, int32_t partition)
{
    for (size_t i = 0; i < c->nheld; i++)
        if (c->held[i].partition == partition && strcmp(c->held[i].topic, topic) == 0) return i;
    return (size_t)-1;
}

static void q_rebalance_cb(rd_kafka_t *rk, rd_kafka_resp_err_t ke,
                           rd_kafka_topic_partition_list_t *parts, void *opaque)
{
    mv_consumer *c = opaque;
    if (ke == RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS) {
        pthread_mutex_lock(&c->mu);
        rd_kafka_resp_err_t ae = rd_kafka_assign(rk, parts);
        rd_kafka_topic_partition_list_t *repause = rd_kafka_topic_partition_list_new(1);
        for (int i = 0; i < parts->cnt; i++)
            if (q_held_find(c, parts->elems[i].topic, parts->elems[i].partition) != (size_t)-1)
                rd_kafka_topic_partition_list_add(repause, parts->elems[i].topic,
                                                  parts->elems[i].partition);
        if (repause->cnt > 0) rd_kafka_pause_partitions(rk, repause);
        pthread_mutex_unlock(&c->mu);
        mv_info("kafka partitions assigned", " group=%s partitions=%d held=%d error=%s", c->group,
                parts->cnt, repause->cnt, rd_kafka_err2name(ae));
        rd_kafka_topic_partition_list_destroy(repause);
    } else {
        if (ke != RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS)
            mv_warn("kafka rebalance error", " group=%s error=%s", c->group, rd_kafka_err2str(ke));
        else
            mv_info("kafka partitions revoked", " group=%s partitions=%d", c->group, parts->cnt);
        rd_kafka_assign(rk, NULL);
    }
}

mv_err mv_consumer_new(const mv_config *c, const char *client_id, mv_consumer **out, char *err,
                       size_t errlen)
{
    const char *const kv[] = {"group.id", c->group, "enable.auto.commit", "false",
                              "enable.auto.offset.store", "false", "auto.offset.reset", "earliest",
                              "session.timeout.ms", "10000", "heartbeat.interval.ms", "3000",
                              /* a resumed partition joins the next fetch request: a short
                                 broker long-poll lets a released partition restart quickly */
                              "fetch.wait.max.ms", "100", NULL};
    *out = NULL;
    if (!c->group[0]) return mv_seterr(err, errlen, MV_EINVAL, "kafka.group is empty");
    if (!c->topic_tasks[0]) return mv_seterr(err, errlen, MV_EINVAL, "kafka.topic is empty");
    mv_consumer *k = calloc(1, sizeof *k);
    if (!k) return mv_seterr(err, errlen, MV_ENOMEM, "kafka consumer: no memory");
    pthread_mutex_init(&k->mu, NULL);
    snprintf(k->brokers, sizeof k->brokers, "%s", c->kafka_brokers);
    snprintf(k->group, sizeof k->group, "%s", c->group);
    rd_kafka_conf_t *conf = NULL;
    rd_kafka_topic_partition_list_t *sub = NULL;
    mv_err e = q_conf(c, client_id && client_id[0] ? client_id : "mailvault-worker", kv, &conf, err,
                      errlen);
    if (e) goto out;
    rd_kafka_conf_set_opaque(conf, k);
    rd_kafka_conf_set_rebalance_cb(conf, q_rebalance_cb);
    e = q_new(RD_KAFKA_CONSUMER, conf, c, &k->rk, err, errlen);
    if (e) goto out;
    rd_kafka_poll_set_consumer(k->rk);
    sub = rd_kafka_topic_partition_list_new(1);
    rd_kafka_topic_partition_list_add(sub, c->topic_tasks, RD_KAFKA_PARTITION_UA);
    rd_kafka_resp_err_t ke = rd_kafka_subscribe(k->rk, sub);
    if (ke)
        e = mv_seterr(err, errlen, q_code(ke), "kafka %s: subscribe group %s to topic %s: %s",
                      c->kafka_brokers, c->group, c->topic_tasks, rd_kafka_err2str(ke));
out:
    if (sub) rd_kafka_topic_partition_list_destroy(sub);
    if (e) {
        if (k->rk) rd_kafka_destroy(k->rk);
        pthread_mutex_destroy(&k->mu);
        free(k);
        return e;
    }
    *out = k;
    return MV_OK;
}

mv_err mv_consumer_poll(mv_consumer *c, int timeout_ms, mv_qmsg *m, char *err, size_t errlen)
{
    memset(m, 0, sizeof *m);
    rd_kafka_message_t *msg = rd_kafka_consumer_poll(c->rk, timeout_ms);
    if (!msg) return mv_seterr(err, errlen, MV_ETIMEDOUT, "no message within %d ms", timeout_ms);
    mv_err e = MV_OK;
    const char *topic = msg->rkt ? rd_kafka_topic_name(msg->rkt) : "";
    if (msg->err == RD_KAFKA_RESP_ERR__PARTITION_EOF) {
        e = mv_seterr(err, errlen, MV_ETIMEDOUT, "end of partition");
        goto out;
    }
    if (msg->err) {
        e = mv_seterr(err, errlen, q_code(msg->err), "kafka %s: consume (group %s, topic %s): %s",
                      c->brokers, c->group, topic[0] ? topic : "-", rd_kafka_message_errstr(msg));
        goto out;
    }
    if (!(m->value = malloc(msg->len + 1))) {
        /* not delivered to the caller: rewind so the message is not skipped */
        e = mv_seterr(err, errlen, MV_ENOMEM, "kafka message of %zu bytes: no memory", msg->len);
        rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(1);
        rd_kafka_topic_partition_list_add(l, topic, msg->partition)->offset = msg->offset;
        rd_kafka_error_t *se = rd_kafka_seek_partitions(c->rk, l, Q_SEEK_TIMEOUT_MS);
        if (se) rd_kafka_error_destroy(se);
        rd_kafka_topic_partition_list_destroy(l);
        goto out;
    }
    if (msg->len) memcpy(m->value, msg->payload, msg->len);
    ((char *)m->value)[msg->len] = '\0';
    m->len = msg->len;
    snprintf(m->topic, sizeof m->topic, "%s", topic);
    m->partition = msg->partition;
    m->offset = msg->offset;
    size_t klen = msg->key_len;
    if (klen >= sizeof m->key) {
        mv_warn("kafka message key truncated", " topic=%s partition=%" PRId32 " offset=%" PRId64,
                topic, msg->partition, msg->offset);
        klen = sizeof m->key - 1;
    }
    if (klen) memcpy(m->key, msg->key, klen);
    m->key[klen] = '\0';
out:
    rd_kafka_message_destroy(msg);
    return e;
}

mv_err mv_consumer_hold(mv_consumer *c, const char *topic, int32_t partition)
{
    mv_err e = MV_OK;
    rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(1);
    rd_kafka_topic_partition_list_add(l, topic, partition);
    pthread_mutex_lock(&c->mu);
    if (q_held_find(c, topic, partition) == (size_t)-1) {
        if (c->nheld == c->capheld) {
            size_t cap = c->capheld ? c->capheld * 2 : 16;
            q_held *h = realloc(c->held, cap * sizeof *h);
            if (!h) {
                e = MV_ENOMEM;
                goto unlock;
            }
            c->held = h;
            c->capheld = cap;
        }
        q_held *h = &c->held[c->nheld++];
        snprintf(h->topic, sizeof h->topic, "%s", topic);
        h->partition = partition;
    }
    /* A partition not assigned right now fails to pause; it stays held and is paused again if
     * a rebalance hands it back. */
    rd_kafka_pause_partitions(c->rk, l);
    if (l->elems[0].err)
        mv_debug("kafka pause failed", " topic=%s partition=%" PRId32 " error=%s", topic, partition,
                 rd_kafka_err2name(l->elems[0].err));
unlock:
    pthread_mutex_unlock(&c->mu);
    rd_kafka_topic_partition_list_destroy(l);
    return e;
}

static int q_assigned(mv_consumer *c, const char *topic, int32_t partition)
{
    rd_kafka_topic_partition_list_t *a = NULL;
    if (rd_kafka_assignment(c->rk, &a) != RD_KAFKA_RESP_ERR_NO_ERROR || !a) return 0;
    int found = rd_kafka_topic_partition_list_find(a, topic, partition) != NULL &&
                !rd_kafka_assignment_lost(c->rk);
    rd_kafka_topic_partition_list_destroy(a);
    return found;
}

mv_err mv_consumer_done(mv_consumer *c, const char *topic, int32_t partition, int64_t offset,
                        char *err, size_t errlen)
{
    mv_err e = MV_OK;
    rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(1);
    rd_kafka_topic_partition_list_add(l, topic, partition)->offset = offset + 1;
    if (!q_assigned(c, topic, partition)) {
        e = mv_seterr(err, errlen, MV_EBUSY,
                      "kafka %s: not committing %s [%" PRId32 "] offset %" PRId64
                      ": partition is no longer assigned to this member of group %s",
                      c->brokers, topic, partition, offset + 1, c->group);
    } else {
        rd_kafka_resp_err_t ke = rd_kafka_commit(c->rk, l, 0);
        if (!ke) ke = l->elems[0].err;
        if (ke) {
            e = mv_seterr(err, errlen, q_code(ke),
                          "kafka %s: commit %s [%" PRId32 "] offset %" PRId64 " (group %s): %s",
                          c->brokers, topic, partition, offset + 1, c->group, rd_kafka_err2str(ke));
        } else {
            /* After a rebalance the fetch position is the commit seen at assignment time (the
             * finished message itself); move it past the finished message. */
            rd_kafka_error_t *se = rd_kafka_seek_partitions(c->rk, l, Q_SEEK_TIMEOUT_MS);
            if (se) {
                mv_warn("kafka seek after commit failed",
                        " topic=%s partition=%" PRId32 " error=\"%s\"", topic, partition,
                        rd_kafka_error_string(se));
                rd_kafka_error_destroy(se);
            }
        }
    }
    pthread_mutex_lock(&c->mu);
    size_t i = q_held_find(c, topic, partition);
    if (i != (size_t)-1) c->held[i] = c->held[--c->nheld];
    l->elems[0].offset = RD_KAFKA_OFFSET_INVALID;
    l->elems[0].err = RD_KAFKA_RESP_ERR_NO_ERROR;
    rd_kafka_resume_partitions(c->rk, l); /* an unassigned partition just reports an error */
    pthread_mutex_unlock(&c->mu);
    rd_kafka_topic_partition_list_destroy(l);
    return e;
}

void mv_consumer_close(mv_consumer *c)
{
    if (!c) return;
    rd_kafka_resp_err_t ke = rd_kafka_consumer_close(c->rk);
    if (ke)
        mv_warn("kafka consumer close failed", " group=%s error=%s", c->group,
                rd_kafka_err2str(ke));
    rd_kafka_destroy(c->rk);
    pthread_mutex_destroy(&c->mu);
    free(c->held);
    free(c);
}

/* ---- lag ------------------------------------------------------------------------------ */

/* A consumer client (no group membership needed) and the metadata of one topic. On success
 * *rk, *rkt and *md are set (the caller destroys them); a topic that does not exist gives
 * RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART in *topic_err with e = MV_OK. */
static mv_err q_topic_open(const mv_config *c, const char *client_id, const char *const *kv,
                           const char *topic, int64_t deadline, rd_kafka_t **rk,
                           rd_kafka_topic_t **rkt, const struct rd_kafka_metadata **md,
                           rd_kafka_resp_err_t *topic_err, char *err, size_t errlen)
{
    rd_kafka_conf_t *conf = NULL;
    *topic_err = RD_KAFKA_RESP_ERR_NO_ERROR;
    mv_err e = q_conf(c, client_id, kv, &conf, err, errlen);
    if (!e) e = q_new(RD_KAFKA_CONSUMER, conf, c, rk, err, errlen);
    if (e) return e;
    if (!(*rkt = rd_kafka_topic_new(*rk, topic, NULL)))
        return mv_seterr(err, errlen, MV_EINVAL, "kafka topic %s: %s", topic,
                         rd_kafka_err2str(rd_kafka_last_error()));
    rd_kafka_resp_err_t ke = rd_kafka_metadata(*rk, 0, *rkt, md, (int)q_left(deadline));
    if (!ke && (*md)->topic_cnt != 1) ke = RD_KAFKA_RESP_ERR__UNKNOWN_TOPIC;
    if (!ke) ke = (*md)->topics[0].err;
    if (ke == RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART) {
        *topic_err = ke;
        return MV_OK;
    }
    if (ke)
        return mv_seterr(err, errlen, q_code(ke), "kafka %s: metadata of topic %s: %s",
                         c->kafka_brokers, topic, rd_kafka_err2str(ke));
    return MV_OK;
}

mv_err mv_queue_lag(const mv_config *c, mv_lag *lag, char *err, size_t errlen)
{
    const char *const kv[] = {"group.id", c->group, "enable.auto.commit", "false", NULL};
    rd_kafka_t *rk = NULL;
    rd_kafka_topic_t *rkt = NULL;
    const struct rd_kafka_metadata *md = NULL;
    rd_kafka_topic_partition_list_t *parts = NULL;
    int64_t deadline = mv_mono_ms() + Q_LAG_TIMEOUT_MS;
    const char *topic = c->topic_tasks;

    memset(lag, 0, sizeof *lag);
    rd_kafka_resp_err_t ke;
    mv_err e =
        q_topic_open(c, "mailvault-lag", kv, topic, deadline, &rk, &rkt, &md, &ke, err, errlen);
    if (!e && ke)
        e = mv_seterr(err, errlen, q_code(ke), "kafka %s: metadata of topic %s: %s",
                      c->kafka_brokers, topic, rd_kafka_err2str(ke));
    if (e) goto out;
    const struct rd_kafka_metadata_topic *mt = &md->topics[0];
    parts = rd_kafka_topic_partition_list_new(mt->partition_cnt > 0 ? mt->partition_cnt : 1);
    for (int i = 0; i < mt->partition_cnt; i++)
        rd_kafka_topic_partition_list_add(parts, topic, mt->partitions[i].id);
    for (;;) {
        int64_t left = q_left(deadline);
        ke = rd_kafka_committed(rk, parts, left > 0 ? (int)left : 1);
        for (int i = 0; !ke && i < parts->cnt; i++)
            ke = parts->elems[i].err;
        if (!ke || !q_transient(ke) || q_left(deadline) <= 100) break;
        rd_kafka_poll(rk, 100); /* coordinator still loading: pause, then ask again */
    }
    if (ke) {
        e = mv_seterr(err, errlen, q_code(ke),
                      "kafka %s: committed offsets of group %s on topic %s: %s", c->kafka_brokers,
                      c->group, topic, rd_kafka_err2str(ke));
        goto out;
    }
    lag->partitions = parts->cnt;
    for (int i = 0; i < parts->cnt; i++) {
        rd_kafka_topic_partition_t *tp = &parts->elems[i];
        int64_t lo = 0, hi = 0;
        if (tp->err) ke = tp->err;
        if (!ke) ke = q_watermarks(rk, topic, tp->partition, deadline, &lo, &hi);
        if (ke) {
            e = mv_seterr(err, errlen, q_code(ke), "kafka %s: offsets of %s [%" PRId32 "]: %s",
                          c->kafka_brokers, topic, tp->partition, rd_kafka_err2str(ke));
            goto out;
        }
        int64_t from = tp->offset >= 0 ? tp->offset : lo;
        int64_t l = hi > from ? hi - from : 0;
        lag->total += l;
        if (tp->partition >= 0 &&
            tp->partition < (int32_t)(sizeof lag->per_partition / sizeof lag->per_partition[0]))
            lag->per_partition[tp->partition] = l;
    }
out:
    if (parts) rd_kafka_topic_partition_list_destroy(parts);
    if (md) rd_kafka_metadata_destroy(md);
    if (rkt) rd_kafka_topic_destroy(rkt);
    if (rk) rd_kafka_destroy(rk);
    return e;
}

/* ---- reading a whole topic (the dead-letter list) -------------------------------------- */

#define Q_READ_TIMEOUT_MS 30000

mv_err mv_queue_read_all(const mv_config *c, const char *topic, size_t max_messages,
                         mv_queue_read_fn cb, void *ud, char *err, size_t errlen)
{
    /* assigned partitions, no group membership and no commits: reading changes nothing */
    const char *const kv[] = {"group.id",
                              "mailvault-topic-reader",
                              "enable.auto.commit",
                              "false",
                              "enable.auto.offset.store",
                              "false",
                              "enable.partition.eof",
                              "true",
                              NULL};
    rd_kafka_t *rk = NULL;
    rd_kafka_topic_t *rkt = NULL;
    const struct rd_kafka_metadata *md = NULL;
    rd_kafka_topic_partition_list_t *parts = NULL;
    int64_t deadline = mv_mono_ms() + Q_READ_TIMEOUT_MS;
    int64_t *hi = NULL;

    rd_kafka_resp_err_t ke;
    mv_err e =
        q_topic_open(c, "mailvault-reader", kv, topic, deadline, &rk, &rkt, &md, &ke, err, errlen);
    if (e || ke) goto out; /* a topic never written is empty */
    const struct rd_kafka_metadata_topic *mt = &md->topics[0];
    int np = mt->partition_cnt;
    parts = rd_kafka_topic_partition_list_new(np > 0 ? np : 1);
    hi = calloc((size_t)(np > 0 ? np : 1), sizeof *hi);
    if (!parts || !hi) {
        e = mv_seterr(err, errlen, MV_ENOMEM, "out of memory");
        goto out;
    }
    int open = 0;
    for (int i = 0; i < np; i++) {
        int64_t lo = 0, h = 0;
        int32_t p = mt->partitions[i].id;
        if ((ke = q_watermarks(rk, topic, p, deadline, &lo, &h))) {
            e = mv_seterr(err, errlen, q_code(ke), "kafka %s: offsets of %s [%" PRId32 "]: %s",
                          c->kafka_brokers, topic, p, rd_kafka_err2str(ke));
            goto out;
        }
        hi[i] = h;
        if (h > lo) {
            rd_kafka_topic_partition_list_add(parts, topic, p)->offset = lo;
            open++;
        }
    }
    if (!open) goto out;
    if ((ke = rd_kafka_assign(rk, parts))) {
        e = mv_seterr(err, errlen, q_code(ke), "kafka %s: assign %s: %s", c->kafka_brokers, topic,
                      rd_kafka_err2str(ke));
        goto out;
    }
    size_t seen = 0;
    while (open > 0) {
        if (q_left(deadline) == 0) {
            e = mv_seterr(err, errlen, MV_ETIMEDOUT, "kafka %s: reading topic %s took over %d s",
                          c->kafka_brokers, topic, Q_READ_TIMEOUT_MS / 1000);
            break;
        }
        rd_kafka_message_t *m = rd_kafka_consumer_poll(rk, 200);
        if (!m) continue;
        int idx = -1;
        for (int i = 0; i < np; i++)
            if (mt->partitions[i].id == m->partition) idx = i;
        if (m->err == RD_KAFKA_RESP_ERR__PARTITION_EOF) {
            if (idx >= 0 && hi[idx] >= 0) {
                hi[idx] = -1;
                open--;
            }
        } else if (m->err) {
            e = mv_seterr(err, errlen, q_code(m->err), "kafka %s: reading %s: %s", c->kafka_brokers,
                          topic, rd_kafka_message_errstr(m));
        } else if (idx >= 0 && hi[idx] >= 0) {
            if (seen++ >= max_messages) {
                e = mv_seterr(err, errlen, MV_ETOOBIG, "topic %s holds more than %zu messages",
                              topic, max_messages);
            } else if (cb(ud, m->partition, m->offset, m->key, m->key_len, m->payload, m->len)) {
                open = 0;
            }
            if (m->offset + 1 >= hi[idx] && hi[idx] >= 0) {
                hi[idx] = -1;
                open--;
            }
        }
        rd_kafka_message_destroy(m);
        if (e) break;
    }
    rd_kafka_assign(rk, NULL);
out:
    free(hi);
    if (parts) rd_kafka_topic_partition_list_destroy(parts);
    if (md) rd_kafka_metadata_destroy(md);
    if (rkt) rd_kafka_topic_destroy(rkt);
    if (rk) {
        rd_kafka_consumer_close(rk);
        rd_kafka_destroy(rk);
    }
    return e;
}

/* test_queue.c - queue.c against the real Kafka broker of the integration stack.
 *
 * Needs MV_RUN_DIR (set by ctest) whose env file names MV_KAFKA_BROKERS; fails, never skips,
 * when that is missing. Every test creates its own topics and group (uuid names), so reruns
 * do not interfere. Absence of messages is checked by polling the consumer for a bounded
 * time (the consumer poll is the wait), never by sleeping. */
#include "mv/common.h"
#include "mv/config.h"
#include "mv/queue.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "itest.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static mv_config base;

static int setup_env(void **state)
{
    char brokers[256];
    if (!itest_env_require("test_queue", "MV_KAFKA_BROKERS", brokers, sizeof brokers)) return -1;
    mv_config_defaults(&base);
    snprintf(base.kafka_brokers, sizeof base.kafka_brokers, "%s", brokers);
    return 0;
}

/* Fresh topics and group for one test. */
static void fresh_config(mv_config *c, const char *what, int partitions)
{
    char u[37];
    mv_uuid(u);
    *c = base;
    snprintf(c->topic_tasks, sizeof c->topic_tasks, "it.%s.%s", what, u);
    snprintf(c->topic_dlq, sizeof c->topic_dlq, "it.%s.%s.dlq", what, u);
    snprintf(c->group, sizeof c->group, "it-%s-%s", what, u);
    c->partitions = partitions;
}

#define CHECK(expr)                                                                                \
    do {                                                                                           \
        mv_err e_ = (expr);                                                                        \
        if (e_ != MV_OK) fail_msg("%s -> %s: %s", #expr, mv_strerror(e_), err);                    \
    } while (0)

static void produce(const mv_config *c, int from, int n)
{
    char err[MV_ERRLEN] = "";
    mv_producer *p = NULL;
    CHECK(mv_producer_new(c, &p, err, sizeof err));
    for (int i = from; i < from + n; i++) {
        char key[32], val[64];
        snprintf(key, sizeof key, "k%d", i);
        int len = snprintf(val, sizeof val, "v%d%cpayload", i, 0); /* binary value */
        CHECK(mv_producer_send(p, c->topic_tasks, key, val, (size_t)len, err, sizeof err));
    }
    CHECK(mv_producer_flush(p, 30000, err, sizeof err));
    mv_producer_destroy(p);
}

/* Polls until a message arrives or the deadline passes (MV_ETIMEDOUT). */
static mv_err poll_until(mv_consumer *k, int64_t deadline, mv_qmsg *m)
{
    char err[MV_ERRLEN] = "";
    for (;;) {
        int64_t left = deadline - mv_mono_ms();
        if (left <= 0) return MV_ETIMEDOUT;
        mv_err e = mv_consumer_poll(k, left > 500 ? 500 : (int)left, m, err, sizeof err);
        if (e != MV_ETIMEDOUT) {
            if (e) print_message("poll: %s: %s\n", mv_strerror(e), err);
            if (e == MV_OK) return e;
        }
    }
}

static int64_t lag_total(const mv_config *c, mv_lag *lag)
{
    char err[MV_ERRLEN] = "";
    CHECK(mv_queue_lag(c, lag, err, sizeof err));
    int64_t sum = 0;
    for (int i = 0; i < lag->partitions; i++)
        sum += lag->per_partition[i];
    assert_int_equal(sum, lag->total);
    return lag->total;
}

static void test_ensure_topics(void **state)
{
    char err[MV_ERRLEN] = "";
    mv_config c;
    mv_lag lag;
    fresh_config(&c, "topics", 3);
    CHECK(mv_queue_ensure_topics(&c, err, sizeof err));
    CHECK(mv_queue_ensure_topics(&c, err, sizeof err)); /* already there: fine */
    assert_int_equal(lag_total(&c, &lag), 0);
    assert_int_equal(lag.partitions, 3);
    mv_config dlq = c; /* the DLQ topic has the same shape */
    snprintf(dlq.topic_tasks, sizeof dlq.topic_tasks, "%s", c.topic_dlq);
    assert_int_equal(lag_total(&dlq, &lag), 0);
    assert_int_equal(lag.partitions, 3);

    /* a topic that does not exist is reported as such */
    mv_config missing;
    fresh_config(&missing, "missing", 1);
    assert_int_equal(mv_queue_lag(&missing, &lag, err, sizeof err), MV_ENOTFOUND);
    assert_non_null(strstr(err, missing.topic_tasks));

    mv_config bad = c;
    bad.partitions = 0;
    assert_int_equal(mv_queue_ensure_topics(&bad, err, sizeof err), MV_EINVAL);
}

static void test_produce_consume(void **state)
{
    enum { N = 60 };
    char err[MV_ERRLEN] = "";
    mv_config c;
    mv_lag lag;
    fresh_config(&c, "flow", 4);
    CHECK(mv_queue_ensure_topics(&c, err, sizeof err));
    produce(&c, 0, N);
    /* nothing committed yet: everything counts from the low watermark */
    assert_int_equal(lag_total(&c, &lag), N);
    int nonempty = 0;
    for (int i = 0; i < lag.partitions; i++)
        nonempty += lag.per_partition[i] > 0;
    assert_true(nonempty >= 2); /* keys spread over partitions */

    mv_consumer *k = NULL;
    CHECK(mv_consumer_new(&c, "it-flow", &k, err, sizeof err));
    int seen[N] = {0};
    int64_t last_offset[256];
    for (int i = 0; i < 256; i++)
        last_offset[i] = -1;
    int64_t deadline = mv_mono_ms() + 60000;
    for (int got = 0; got < N; got++) {
        mv_qmsg m;
        if (poll_until(k, deadline, &m) != MV_OK)
            fail_msg("only %d of %d messages arrived", got, N);
        int i = -1;
        assert_int_equal(sscanf(m.key, "k%d", &i), 1);
        assert_true(i >= 0 && i < N);
        char want[64];
        int wl = snprintf(want, sizeof want, "v%d%cpayload", i, 0);
        assert_int_equal(m.len, (size_t)wl);
        assert_memory_equal(m.value, want, (size_t)wl);
        assert_string_equal(m.topic, c.topic_tasks);
        assert_true(m.partition >= 0 && m.partition < 4);
        assert_true(m.offset > last_offset[m.partition]); /* in order per partition */
        last_offset[m.partition] = m.offset;
        seen[i]++;
        assert_int_equal(mv_consumer_hold(k, m.topic, m.partition), MV_OK);
        CHECK(mv_consumer_done(k, m.topic, m.partition, m.offset, err, sizeof err));
        mv_qmsg_free(&m);
        assert_null(m.value);
    }
    for (int i = 0; i < N; i++)
        assert_int_equal(seen[i], 1);
    assert_int_equal(lag_total(&c, &lag), 0);
    /* nothing else is delivered */
    mv_qmsg extra;
    assert_int_equal(poll_until(k, mv_mono_ms() + 1500, &extra), MV_ETIMEDOUT);
    mv_consumer_close(k);
}

static void test_hold_done_redelivery(void **state)
{
    char err[MV_ERRLEN] = "";
    mv_config c;
    mv_lag lag;
    mv_qmsg m, m2;
    fresh_config(&c, "hold", 1);
    CHECK(mv_queue_ensure_topics(&c, err, sizeof err));
    produce(&c, 0, 5);
    assert_int_equal(lag_total(&c, &lag), 5);

    mv_consumer *a = NULL;
    CHECK(mv_consumer_new(&c, "it-hold-a", &a, err, sizeof err));
    assert_int_equal(poll_until(a, mv_mono_ms() + 60000, &m), MV_OK);
    assert_int_equal(m.offset, 0);
    assert_string_equal(m.key, "k0");
    assert_int_equal(mv_consumer_hold(a, m.topic, m.partition), MV_OK);
    /* held: the partition delivers nothing more while the task runs */
    assert_int_equal(poll_until(a, mv_mono_ms() + 2000, &m2), MV_ETIMEDOUT);
    assert_int_equal(lag_total(&c, &lag), 5); /* nothing committed yet */

    CHECK(mv_consumer_done(a, m.topic, m.partition, m.offset, err, sizeof err));
    assert_int_equal(lag_total(&c, &lag), 4);
    mv_qmsg_free(&m);

    /* resumed: the next message, not the finished one again */
    assert_int_equal(poll_until(a, mv_mono_ms() + 30000, &m), MV_OK);
    assert_int_equal(m.offset, 1);
    assert_string_equal(m.key, "k1");
    assert_int_equal(mv_consumer_hold(a, m.topic, m.partition), MV_OK);
    /* crash-like stop: k1 is never done, so it is not committed */
    mv_qmsg_free(&m);
    mv_consumer_close(a);
    assert_int_equal(lag_total(&c, &lag), 4);

    /* a new member of the same group gets k1 again, then the rest */
    mv_consumer *b = NULL;
    CHECK(mv_consumer_new(&c, "it-hold-b", &b, err, sizeof err));
    int64_t deadline = mv_mono_ms() + 60000;
    for (int want = 1; want < 5; want++) {
        assert_int_equal(poll_until(b, deadline, &m), MV_OK);
        assert_int_equal(m.offset, want);
        assert_int_equal(mv_consumer_hold(b, m.topic, m.partition), MV_OK);
        CHECK(mv_consumer_done(b, m.topic, m.partition, m.offset, err, sizeof err));
        assert_int_equal(lag_total(&c, &lag), 4 - want);
        mv_qmsg_free(&m);
    }
    assert_int_equal(poll_until(b, mv_mono_ms() + 1500, &m), MV_ETIMEDOUT);
    mv_consumer_close(b);
}

/* Two members: a rebalance while a partition is held keeps it paused on the member that
 * keeps it, the finished message is not delivered again, and the other member takes over the
 * rest. librdkafka's default range assignor orders members by member id (client.id first), so
 * "it-rebal-a" keeps partition 0 and "it-rebal-b" gets partition 1. */
static void test_rebalance_keeps_hold(void **state)
{
    char err[MV_ERRLEN] = "";
    mv_config c;
    mv_lag lag;
    mv_qmsg m, o;
    fresh_config(&c, "rebal", 2);
    CHECK(mv_queue_ensure_topics(&c, err, sizeof err));
    produce(&c, 0, 40);
    assert_int_equal(lag_total(&c, &lag), 40);
    assert_true(lag.per_partition[0] >= 2 && lag.per_partition[1] >= 1);

    mv_consumer *a = NULL, *b = NULL;
    CHECK(mv_consumer_new(&c, "it-rebal-a", &a, err, sizeof err));
    /* a owns both partitions: finish one partition 1 message, hold the first of partition 0.
     * Further partition 1 messages a may see first stay uncommitted (as after a crash), so
     * partition 1 always has work left for b whatever order the fetches came in. */
    int64_t deadline = mv_mono_ms() + 60000;
    int p1_done = 0;
    for (;;) {
        assert_int_equal(poll_until(a, deadline, &m), MV_OK);
        if (m.partition == 0) {
            assert_int_equal(mv_consumer_hold(a, m.topic, m.partition), MV_OK);
            break;
        }
        if (!p1_done++) {
            assert_int_equal(mv_consumer_hold(a, m.topic, m.partition), MV_OK);
            CHECK(mv_consumer_done(a, m.topic, m.partition, m.offset, err, sizeof err));
        }
        mv_qmsg_free(&m);
    }

    /* b joins; a keeps polling as the worker does, and must not see partition 0 again */
    CHECK(mv_consumer_new(&c, "it-rebal-b", &b, err, sizeof err));
    deadline = mv_mono_ms() + 60000;
    int b_got = 0;
    while (b_got == 0) {
        if (mv_mono_ms() > deadline) fail_msg("second member got no message in 60 s");
        if (mv_consumer_poll(a, 100, &o, err, sizeof err) == MV_OK) {
            /* only before the rebalance; left uncommitted so partition 1 keeps work for b */
            assert_int_equal(o.partition, 1);
            mv_qmsg_free(&o);
        }
        if (mv_consumer_poll(b, 100, &o, err, sizeof err) == MV_OK) {
            assert_int_equal(o.partition, 1);
            b_got++;
            mv_consumer_hold(b, o.topic, o.partition);
            CHECK(mv_consumer_done(b, o.topic, o.partition, o.offset, err, sizeof err));
            mv_qmsg_free(&o);
        }
    }
    /* after the rebalance partition 0 is a's again, re-paused: still nothing */
    assert_int_equal(poll_until(a, mv_mono_ms() + 1500, &o), MV_ETIMEDOUT);

    /* finishing m commits (a still owns partition 0) and a continues right after m */
    CHECK(mv_consumer_done(a, m.topic, m.partition, m.offset, err, sizeof err));
    assert_int_equal(poll_until(a, mv_mono_ms() + 30000, &o), MV_OK);
    assert_int_equal(o.partition, 0);
    assert_int_equal(o.offset, m.offset + 1);
    mv_consumer_hold(a, o.topic, o.partition);
    CHECK(mv_consumer_done(a, o.topic, o.partition, o.offset, err, sizeof err));
    mv_qmsg_free(&o);
    mv_qmsg_free(&m);

    /* drain the rest through both members; every message ends committed exactly once */
    deadline = mv_mono_ms() + 60000;
    while (lag_total(&c, &lag) > 0) {
        if (mv_mono_ms() > deadline) fail_msg("lag still %" PRId64 " after 60 s", lag.total);
        mv_consumer *k[2] = {a, b};
        for (int j = 0; j < 2; j++) {
            if (mv_consumer_poll(k[j], 200, &o, err, sizeof err) == MV_OK) {
                assert_int_equal(o.partition, j); /* a: partition 0, b: partition 1 */
                mv_consumer_hold(k[j], o.topic, o.partition);
                CHECK(mv_consumer_done(k[j], o.topic, o.partition, o.offset, err, sizeof err));
                mv_qmsg_free(&o);
            }
        }
    }
    mv_consumer_close(b);
    mv_consumer_close(a);
}

static void test_unreachable_broker(void **state)
{
    char err[MV_ERRLEN] = "";
    mv_config c;
    fresh_config(&c, "down", 1);
    snprintf(c.kafka_brokers, sizeof c.kafka_brokers, "127.0.0.1:1");
    mv_producer *p = NULL;
    CHECK(mv_producer_new(&c, &p, err, sizeof err));
    CHECK(mv_producer_send(p, c.topic_tasks, "k", "v", 1, err, sizeof err));
    assert_int_equal(mv_producer_flush(p, 1500, err, sizeof err), MV_ETIMEDOUT);
    assert_non_null(strstr(err, "127.0.0.1:1"));
    mv_producer_destroy(p);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_ensure_topics),        cmocka_unit_test(test_produce_consume),
        cmocka_unit_test(test_hold_done_redelivery), cmocka_unit_test(test_rebalance_keeps_hold),
        cmocka_unit_test(test_unreachable_broker),
    };
    return cmocka_run_group_tests(tests, setup_env, NULL);
}

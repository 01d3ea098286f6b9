/* test_state.c - state.c against the real Redis of the integration stack.
 *
 * Needs MV_RUN_DIR (set by ctest) whose env file names MV_REDIS_PORT; fails, never skips,
 * when that is missing. Every run uses fresh tenant names (uuid suffix), so reruns against the
 * same Redis do not interfere. Waiting for a lease to expire is done by polling its state in a
 * bounded loop, never by a fixed sleep. */
#include "mv/common.h"
#include "mv/config.h"
#include "mv/state.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "itest.h"

#include <hiredis/hiredis.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static mv_config cfg;
static char uid[37];

/* ---- environment ---------------------------------------------------------------------- */

static int setup_env(void **state)
{
    char port[64];
    if (!itest_env_require("test_state", "MV_REDIS_PORT", port, sizeof port)) return -1;
    mv_config_defaults(&cfg);
    snprintf(cfg.redis_host, sizeof cfg.redis_host, "127.0.0.1");
    cfg.redis_port = atoi(port);
    cfg.redis_timeout_ms = 3000;
    mv_uuid(uid);
    return 0;
}

static mv_state *connect_or_fail(void)
{
    char err[MV_ERRLEN] = "";
    mv_state *s = NULL;
    mv_err e = mv_state_connect(&cfg, &s, err, sizeof err);
    if (e) fail_msg("connect to redis 127.0.0.1:%d: %s", cfg.redis_port, err);
    return s;
}

/* A second, raw connection for checks the API does not offer (PTTL, cleanup). */
static redisContext *raw_connect(void)
{
    struct timeval tv = {3, 0};
    redisContext *c = redisConnectWithTimeout("127.0.0.1", cfg.redis_port, tv);
    if (!c || c->err) fail_msg("raw redis connect failed");
    return c;
}

static void sleep_ms(int ms) /* polling interval inside bounded condition loops only */
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

#define CHECK_FAILS(expr)                                                                          \
    do {                                                                                           \
        if ((expr) == MV_OK) fail_msg("%s succeeded, expected an error", #expr);                   \
    } while (0)

#define CHECK(expr)                                                                                \
    do {                                                                                           \
        mv_err e_ = (expr);                                                                        \
        if (e_ != MV_OK) fail_msg("%s -> %s: %s", #expr, mv_strerror(e_), err);                    \
    } while (0)

/* ---- callbacks ------------------------------------------------------------------------ */

typedef struct names {
    int n;
    char v[64][300];
} names;

static int collect(void *ud, const char *name)
{
    names *ns = ud;
    if (ns->n < 64) snprintf(ns->v[ns->n++], sizeof ns->v[0], "%s", name);
    return 0;
}

static int index_of(const names *ns, const char *name)
{
    for (int i = 0; i < ns->n; i++)
        if (strcmp(ns->v[i], name) == 0) return i;
    return -1;
}

typedef struct fields {
    int n;
    char k[32][64];
    char v[32][256];
} fields;

static int put_field(fields *fs, const char *k, const char *v)
{
    if (fs->n < 32) {
        snprintf(fs->k[fs->n], sizeof fs->k[0], "%s", k);
        snprintf(fs->v[fs->n], sizeof fs->v[0], "%s", v);
        fs->n++;
    }
    return 0;
}

static int collect_field(void *ud, const char *k, const char *v)
{
    return put_field(ud, k, v);
}

static int list_sched(void *ud, const char *tenant, const char *profile)
{
    return put_field(ud, tenant, profile);
}

static const char *field(const fields *fs, const char *k)
{
    for (int i = 0; i < fs->n; i++)
        if (strcmp(fs->k[i], k) == 0) return fs->v[i];
    return NULL;
}

/* ---- tests ---------------------------------------------------------------------------- */

static void test_catalog(void **state)
{
    char err[MV_ERRLEN] = "", ta[64], tb[64];
    mv_state *s = connect_or_fail();
    /* "tb" created first: the list must still come back sorted */
    snprintf(ta, sizeof ta, "a-%s", uid);
    snprintf(tb, sizeof tb, "b-%s", uid);
    CHECK(mv_state_ping(s, err, sizeof err));
    assert_int_equal(mv_state_tenant_exists(s, ta), 0);
    CHECK(mv_state_tenant_add(s, tb, "Tenant B", err, sizeof err));
    CHECK(mv_state_tenant_add(s, ta, NULL, err, sizeof err));
    assert_int_equal(mv_state_tenant_add(s, ta, "again", err, sizeof err), MV_EEXIST);
    assert_int_equal(mv_state_tenant_add(s, "Bad:Name", NULL, err, sizeof err), MV_EINVAL);
    assert_int_equal(mv_state_tenant_exists(s, ta), 1);

    names ns = {0};
    CHECK(mv_state_tenant_list(s, collect, &ns, err, sizeof err));
    int ia = index_of(&ns, ta), ib = index_of(&ns, tb);
    assert_true(ia >= 0 && ib > ia);
    for (int i = 1; i < ns.n; i++)
        assert_true(strcmp(ns.v[i - 1], ns.v[i]) < 0);

    /* profiles */
    char *json = NULL;
    CHECK(mv_state_profile_put(s, ta, "zeta", "{\"z\":1}", err, sizeof err));
    CHECK(mv_state_profile_put(s, ta, "alpha", "{\"host\":\"imap.example\"}", err, sizeof err));
    CHECK(mv_state_profile_put(s, ta, "alpha", "{\"host\":\"imap2.example\"}", err, sizeof err));
    CHECK(mv_state_profile_get(s, ta, "alpha", &json, err, sizeof err));
    assert_string_equal(json, "{\"host\":\"imap2.example\"}");
    free(json);
    json = NULL;
    assert_int_equal(mv_state_profile_get(s, ta, "nope", &json, err, sizeof err), MV_ENOTFOUND);
    assert_null(json);
    names ps = {0};
    CHECK(mv_state_profile_list(s, ta, collect, &ps, err, sizeof err));
    assert_int_equal(ps.n, 2);
    assert_string_equal(ps.v[0], "alpha");
    assert_string_equal(ps.v[1], "zeta");
    CHECK(mv_state_profile_del(s, ta, "zeta", err, sizeof err));
    assert_int_equal(mv_state_profile_del(s, ta, "zeta", err, sizeof err), MV_ENOTFOUND);
    memset(&ps, 0, sizeof ps);
    CHECK(mv_state_profile_list(s, ta, collect, &ps, err, sizeof err));
    assert_int_equal(ps.n, 1);

    /* binary-safe credentials: NULs, high bytes, CR/LF, RESP-looking text */
    const unsigned char blob[] = {0x00, 0xff, 'a', 0x00, '\r', '\n', '*', '3', '\r', '\n', 0x80};
    void *got = NULL;
    size_t len = 0;
    CHECK(
        mv_state_cred_put(s, ta, "alpha", "user@example.com", blob, sizeof blob, err, sizeof err));
    CHECK(mv_state_cred_get(s, ta, "alpha", "user@example.com", &got, &len, err, sizeof err));
    assert_int_equal(len, sizeof blob);
    assert_memory_equal(got, blob, sizeof blob);
    free(got);
    got = NULL;
    assert_int_equal(
        mv_state_cred_get(s, ta, "alpha", "other@example.com", &got, &len, err, sizeof err),
        MV_ENOTFOUND);
    CHECK(mv_state_cred_put(s, ta, "alpha", "empty@example.com", "", 0, err, sizeof err));
    CHECK(mv_state_cred_get(s, ta, "alpha", "empty@example.com", &got, &len, err, sizeof err));
    assert_int_equal(len, 0);
    free(got);

    /* everything a tenant owns disappears with it */
    mv_ckpt ck = {.uidvalidity = 7, .last_uid = 9};
    uint64_t tok = 0;
    char holder[64];
    CHECK(mv_state_status_set(s, ta, "user@example.com", err, sizeof err, "state", "done", NULL));
    CHECK(mv_state_lease_acquire(s, ta, "user@example.com", "w1", 60000, &tok, holder,
                                 sizeof holder, err, sizeof err));
    CHECK(mv_state_ckpt_set(s, ta, "user@example.com", "INBOX", &ck, "w1", tok, err, sizeof err));
    CHECK(mv_state_lease_release(s, ta, "user@example.com", "w1", tok, err, sizeof err));
    CHECK(mv_state_run_put(s, uid, ta, "alpha", 3, err, sizeof err));
    CHECK(mv_state_tenant_del(s, ta, err, sizeof err));
    assert_int_equal(mv_state_tenant_exists(s, ta), 0);
    assert_int_equal(mv_state_tenant_del(s, ta, err, sizeof err), MV_ENOTFOUND);
    assert_int_equal(mv_state_profile_get(s, ta, "alpha", &json, err, sizeof err), MV_ENOTFOUND);
    assert_int_equal(
        mv_state_cred_get(s, ta, "alpha", "user@example.com", &got, &len, err, sizeof err),
        MV_ENOTFOUND);
    fields fs = {0};
    assert_int_equal(
        mv_state_status_get(s, ta, "user@example.com", collect_field, &fs, err, sizeof err),
        MV_ENOTFOUND);
    assert_int_equal(mv_state_ckpt_get(s, ta, "user@example.com", "INBOX", &ck, err, sizeof err),
                     MV_ENOTFOUND);
    assert_int_equal(ck.uidvalidity, 0);
    memset(&ps, 0, sizeof ps);
    CHECK(mv_state_profile_list(s, ta, collect, &ps, err, sizeof err));
    assert_int_equal(ps.n, 0);
    memset(&ns, 0, sizeof ns);
    CHECK(mv_state_mailbox_list(s, ta, collect, &ns, err, sizeof err));
    assert_int_equal(ns.n, 0);

    /* the run record */
    redisContext *rc = raw_connect();
    char runkey[128];
    snprintf(runkey, sizeof runkey, "mv:run:%s", uid);
    redisReply *r = redisCommand(rc, "HGET %s tasks", runkey);
    assert_non_null(r);
    assert_int_equal(r->type, REDIS_REPLY_STRING);
    assert_string_equal(r->str, "3");
    freeReplyObject(r);
    r = redisCommand(rc, "DEL %s", runkey);
    freeReplyObject(r);
    redisFree(rc);

    CHECK(mv_state_tenant_del(s, tb, err, sizeof err));
    mv_state_close(s);
}

static void test_status(void **state)
{
    char err[MV_ERRLEN] = "", t[64];
    mv_state *s = connect_or_fail();
    snprintf(t, sizeof t, "st-%s", uid);
    CHECK(mv_state_tenant_add(s, t, "Status", err, sizeof err));
    CHECK(mv_state_status_set(s, t, "zz@example.com", err, sizeof err, "state", "queued", NULL));
    CHECK(mv_state_status_set(s, t, "bob@example.com", err, sizeof err, "state", "running",
                              "worker", "w-1", "folder", "Sent Items", "messages", "0", NULL));
    CHECK(mv_state_status_incr(s, t, "bob@example.com", "messages", 5, err, sizeof err));
    CHECK(mv_state_status_incr(s, t, "bob@example.com", "messages", 37, err, sizeof err));
    CHECK(mv_state_status_incr(s, t, "bob@example.com", "bytes_raw", -2, err, sizeof err));
    fields fs = {0};
    CHECK(mv_state_status_get(s, t, "bob@example.com", collect_field, &fs, err, sizeof err));
    assert_int_equal(fs.n, 5);
    assert_string_equal(field(&fs, "state"), "running");
    assert_string_equal(field(&fs, "worker"), "w-1");
    assert_string_equal(field(&fs, "folder"), "Sent Items");
    assert_string_equal(field(&fs, "messages"), "42");
    assert_string_equal(field(&fs, "bytes_raw"), "-2");
    assert_int_equal(mv_state_status_incr(s, t, "bob@example.com", "folder", 1, err, sizeof err),
                     MV_ESERVER); /* Redis' own error text comes back */
    assert_non_null(strstr(err, "not an integer"));
    assert_int_equal(
        mv_state_status_get(s, t, "nobody@example.com", collect_field, &fs, err, sizeof err),
        MV_ENOTFOUND);
    assert_int_equal(mv_state_status_set(s, t, "bad/mailbox", err, sizeof err, "state", "x", NULL),
                     MV_EINVAL);
    names ns = {0};
    CHECK(mv_state_mailbox_list(s, t, collect, &ns, err, sizeof err));
    assert_int_equal(ns.n, 2);
    assert_string_equal(ns.v[0], "bob@example.com");
    assert_string_equal(ns.v[1], "zz@example.com");
    CHECK(mv_state_tenant_del(s, t, err, sizeof err));
    mv_state_close(s);
}

/* PTTL of the lease key; -2 when it is gone. */
static long long lease_pttl(redisContext *rc, const char *t, const char *mb)
{
    char key[512];
    snprintf(key, sizeof key, "mv:lease:%s:%s", t, mb);
    redisReply *r = redisCommand(rc, "PTTL %s", key);
    if (!r || r->type != REDIS_REPLY_INTEGER) fail_msg("PTTL failed");
    long long v = r->integer;
    freeReplyObject(r);
    return v;
}

static void test_lease(void **state)
{
    char err[MV_ERRLEN] = "", t[64], holder[64];
    const char *mb = "lease@example.com";
    uint64_t t1 = 0, t2 = 0, t3 = 0, tx = 0;
    mv_state *s = connect_or_fail();
    redisContext *rc = raw_connect();
    snprintf(t, sizeof t, "ls-%s", uid);
    CHECK(mv_state_tenant_add(s, t, NULL, err, sizeof err));

    CHECK(mv_state_lease_acquire(s, t, mb, "worker-a", 60000, &t1, holder, sizeof holder, err,
                                 sizeof err));
    assert_true(t1 >= 1);
    assert_int_equal(mv_state_lease_acquire(s, t, mb, "worker-b", 60000, &tx, holder, sizeof holder,
                                            err, sizeof err),
                     MV_EBUSY);
    assert_string_equal(holder, "worker-a");
    assert_int_equal(tx, 0);
    /* renew: ours extends, wrong token or owner is refused */
    CHECK(mv_state_lease_renew(s, t, mb, "worker-a", t1, 120000, err, sizeof err));
    assert_true(lease_pttl(rc, t, mb) > 60000);
    assert_int_equal(mv_state_lease_renew(s, t, mb, "worker-a", t1 + 1, 1000, err, sizeof err),
                     MV_EBUSY);
    assert_int_equal(mv_state_lease_renew(s, t, mb, "worker-b", t1, 1000, err, sizeof err),
                     MV_EBUSY);
    assert_non_null(strstr(err, "worker-a"));
    /* release: only the holder's token releases */
    assert_int_equal(mv_state_lease_release(s, t, mb, "worker-b", t1, err, sizeof err), MV_EBUSY);
    CHECK(mv_state_lease_release(s, t, mb, "worker-a", t1, err, sizeof err));
    assert_int_equal(lease_pttl(rc, t, mb), -2);
    CHECK(mv_state_lease_release(s, t, mb, "worker-a", t1, err, sizeof err)); /* idempotent */
    /* a lapsed lease is taken back by its holder while nobody acquired since (fence == t1) */
    CHECK(mv_state_lease_renew(s, t, mb, "worker-a", t1, 1000, err, sizeof err));
    assert_true(lease_pttl(rc, t, mb) > 0);
    CHECK(mv_state_lease_release(s, t, mb, "worker-a", t1, err, sizeof err));

    /* expiry: a short lease frees itself; tokens keep increasing */
    CHECK(mv_state_lease_acquire(s, t, mb, "worker-b", 1000, &t2, holder, sizeof holder, err,
                                 sizeof err));
    assert_true(t2 > t1);
    long long pttl = lease_pttl(rc, t, mb);
    assert_true(pttl > 0 && pttl <= 1000);
    int64_t deadline = mv_mono_ms() + 5000;
    mv_err e;
    while ((e = mv_state_lease_acquire(s, t, mb, "worker-c", 60000, &t3, holder, sizeof holder, err,
                                       sizeof err)) == MV_EBUSY) {
        assert_string_equal(holder, "worker-b");
        if (mv_mono_ms() > deadline) fail_msg("lease with ttl 1000 ms did not expire in 5 s");
        sleep_ms(20);
    }
    assert_int_equal(e, MV_OK);
    assert_true(t3 > t2);
    /* ...but not once someone else acquired it: worker-b's token is stale now */
    assert_int_equal(mv_state_lease_renew(s, t, mb, "worker-b", t2, 1000, err, sizeof err),
                     MV_EBUSY);
    assert_int_equal(mv_state_lease_acquire(s, t, mb, "worker-c", 1000, &tx, holder, sizeof holder,
                                            err, sizeof err),
                     MV_EBUSY); /* not re-entrant */
    assert_int_equal(
        mv_state_lease_acquire(s, t, mb, "", 1000, &tx, holder, sizeof holder, err, sizeof err),
        MV_EINVAL);
    CHECK(mv_state_lease_release(s, t, mb, "worker-c", t3, err, sizeof err));

    CHECK(mv_state_tenant_del(s, t, err, sizeof err));
    redisFree(rc);
    mv_state_close(s);
}

static void test_fencing(void **state)
{
    char err[MV_ERRLEN] = "", t[64], holder[64];
    const char *mb = "fence@example.com";
    /* arbitrary bytes in folder names: UTF-8, spaces, separators, glob characters */
    const char *f1 = "INBOX/Caf\xc3\xa9 | *[x]? \x01";
    const char *f2 = "Archive.2024";
    uint64_t ta = 0, tb = 0;
    mv_ckpt got;
    mv_state *s = connect_or_fail();
    snprintf(t, sizeof t, "fe-%s", uid);
    CHECK(mv_state_tenant_add(s, t, NULL, err, sizeof err));

    mv_ckpt c1 = {.uidvalidity = 4000000000u,
                  .last_uid = 120,
                  .pending_from = 121,
                  .pending_to = 620,
                  .messages = 5000000000ull};
    assert_int_equal(mv_state_ckpt_get(s, t, mb, f1, &got, err, sizeof err), MV_ENOTFOUND);
    /* no lease at all: refused */
    assert_int_equal(mv_state_ckpt_set(s, t, mb, f1, &c1, "worker-a", 1, err, sizeof err),
                     MV_EBUSY);
    CHECK(mv_state_lease_acquire(s, t, mb, "worker-a", 60000, &ta, holder, sizeof holder, err,
                                 sizeof err));
    CHECK(mv_state_ckpt_set(s, t, mb, f1, &c1, "worker-a", ta, err, sizeof err));
    CHECK(mv_state_ckpt_get(s, t, mb, f1, &got, err, sizeof err));
    assert_memory_equal(&got, &c1, sizeof got);
    assert_int_equal(mv_state_ckpt_get(s, t, mb, f2, &got, err, sizeof err), MV_ENOTFOUND);

    /* worker-a loses the lease; worker-b takes over with a newer token */
    CHECK(mv_state_lease_release(s, t, mb, "worker-a", ta, err, sizeof err));
    CHECK(mv_state_lease_acquire(s, t, mb, "worker-b", 60000, &tb, holder, sizeof holder, err,
                                 sizeof err));
    assert_true(tb > ta);
    mv_ckpt stale = c1;
    stale.last_uid = 999;
    stale.pending_from = stale.pending_to = 0;
    assert_int_equal(mv_state_ckpt_set(s, t, mb, f1, &stale, "worker-a", ta, err, sizeof err),
                     MV_EBUSY);
    assert_non_null(strstr(err, "fenced: lease is held by worker-b"));
    /* same owner name with an old token is fenced too */
    assert_int_equal(mv_state_ckpt_set(s, t, mb, f1, &stale, "worker-b", ta, err, sizeof err),
                     MV_EBUSY);
    CHECK(mv_state_ckpt_get(s, t, mb, f1, &got, err, sizeof err));
    assert_memory_equal(&got, &c1, sizeof got); /* unchanged */

    mv_ckpt c2 = {
        .uidvalidity = 1, .last_uid = 2, .pending_from = 0, .pending_to = 0, .messages = 2};
    CHECK(mv_state_ckpt_set(s, t, mb, f2, &c2, "worker-b", tb, err, sizeof err));
    CHECK(mv_state_ckpt_set(s, t, mb, f1, &stale, "worker-b", tb, err, sizeof err));
    CHECK(mv_state_ckpt_get(s, t, mb, f1, &got, err, sizeof err));
    assert_memory_equal(&got, &stale, sizeof got);
    CHECK(mv_state_ckpt_get(s, t, mb, f2, &got, err, sizeof err));
    assert_memory_equal(&got, &c2, sizeof got);

    CHECK(mv_state_ckpt_clear(s, t, mb, err, sizeof err));
    assert_int_equal(mv_state_ckpt_get(s, t, mb, f1, &got, err, sizeof err), MV_ENOTFOUND);
    assert_int_equal(mv_state_ckpt_get(s, t, mb, f2, &got, err, sizeof err), MV_ENOTFOUND);

    /* a malformed checkpoint is reported, not misread */
    redisContext *rc = raw_connect();
    char key[256];
    snprintf(key, sizeof key, "mv:ckpt:%s:%s", t, mb);
    redisReply *r = redisCommand(rc, "HSET %s %s %s", key, "bad", "1 2 x 4 5");
    freeReplyObject(r);
    assert_int_equal(mv_state_ckpt_get(s, t, mb, "bad", &got, err, sizeof err), MV_ECORRUPT);
    redisFree(rc);

    CHECK(mv_state_lease_release(s, t, mb, "worker-b", tb, err, sizeof err));
    CHECK(mv_state_tenant_del(s, t, err, sizeof err));
    mv_state_close(s);
}

typedef struct pump_ctx {
    const char *mine[3];
    size_t mine_len[3];
    int seen[3];
    int fail_first; /* index whose callback fails (returns non-zero) */
} pump_ctx;

static int pump_cb(void *ud, const void *payload, size_t len)
{
    pump_ctx *p = ud;
    for (int i = 0; i < 3; i++) {
        if (len == p->mine_len[i] && memcmp(payload, p->mine[i], len) == 0) {
            p->seen[i]++;
            return i == p->fail_first ? 1 : 0;
        }
    }
    return 1; /* someone else's entry: leave it alone */
}

static int count_runs(void *ud, const char *run_id, const char *field, const char *value)
{
    fields *fs = ud;
    if (!strcmp(field, "started_ms")) return put_field(fs, run_id, value);
    return 0;
}

/* The scheduler's leader lease and the fenced schedule slots: a deposed leader can move
 * nothing; the slot moves only from the value the leader read. */
static void test_leader_and_slots(void **state)
{
    (void)state;
    char err[MV_ERRLEN] = "", t[64], holder[64], val[64];
    uint64_t a = 0, b = 0, x = 0;
    mv_state *s = connect_or_fail();
    redisContext *rc = raw_connect();
    snprintf(t, sizeof t, "sc-%s", uid);
    CHECK(mv_state_tenant_add(s, t, NULL, err, sizeof err));
    freeReplyObject(redisCommand(rc, "DEL mv:leader:scheduler"));

    CHECK(mv_state_leader_acquire(s, "sched-a", 60000, &a, holder, sizeof holder, err, sizeof err));
    assert_int_equal(
        mv_state_leader_acquire(s, "sched-b", 60000, &x, holder, sizeof holder, err, sizeof err),
        MV_EBUSY);
    assert_string_equal(holder, "sched-a");
    CHECK(mv_state_leader_get(s, holder, sizeof holder, err, sizeof err));
    assert_string_equal(holder, "sched-a");
    CHECK(mv_state_slot_set(s, "sched-a", a, t, "p1", "", "100 done", err, sizeof err));
    CHECK(mv_state_slot_get(s, t, "p1", val, sizeof val, err, sizeof err));
    assert_string_equal(val, "100 done");
    /* only from the value read: a stale expectation moves nothing */
    assert_int_equal(mv_state_slot_set(s, "sched-a", a, t, "p1", "", "200 done", err, sizeof err),
                     MV_EBUSY);
    assert_non_null(strstr(err, "moved meanwhile"));

    /* a takes too long: its lease lapses, b takes over with a higher token */
    freeReplyObject(redisCommand(rc, "PEXPIRE mv:leader:scheduler 1"));
    int64_t deadline = mv_mono_ms() + 5000;
    mv_err e;
    while ((e = mv_state_leader_acquire(s, "sched-b", 60000, &b, holder, sizeof holder, err,
                                        sizeof err)) == MV_EBUSY) {
        if (mv_mono_ms() > deadline) fail_msg("the lapsed leader lease was not taken over");
        sleep_ms(5);
    }
    assert_int_equal(e, MV_OK);
    assert_true(b > a);
    /* a is fenced off: no slot write, no renewal */
    assert_int_equal(
        mv_state_slot_set(s, "sched-a", a, t, "p1", "100 done", "200 pending", err, sizeof err),
        MV_EBUSY);
    assert_non_null(strstr(err, "sched-b"));
    assert_int_equal(mv_state_leader_renew(s, "sched-a", a, 60000, err, sizeof err), MV_EBUSY);
    CHECK(mv_state_slot_get(s, t, "p1", val, sizeof val, err, sizeof err));
    assert_string_equal(val, "100 done");
    CHECK(mv_state_slot_set(s, "sched-b", b, t, "p1", "100 done", "200 pending", err, sizeof err));
    CHECK(mv_state_leader_renew(s, "sched-b", b, 60000, err, sizeof err));

    /* the index of scheduled profiles; unscheduling drops the slot */
    CHECK(mv_state_sched_index(s, t, "p1", 1, err, sizeof err));
    fields fs = {0};
    CHECK(mv_state_sched_list(s, list_sched, &fs, err, sizeof err));
    assert_non_null(field(&fs, t));
    assert_string_equal(field(&fs, t), "p1");
    CHECK(mv_state_sched_index(s, t, "p1", 0, err, sizeof err));
    CHECK(mv_state_slot_get(s, t, "p1", val, sizeof val, err, sizeof err));
    assert_string_equal(val, "");
    memset(&fs, 0, sizeof fs);
    CHECK(mv_state_sched_list(s, list_sched, &fs, err, sizeof err));
    assert_null(field(&fs, t));

    /* runs: put twice keeps one entry and its start; tags are kept */
    CHECK(mv_state_run_put(s, uid, t, "p1", 3, err, sizeof err));
    CHECK(mv_state_run_tag(s, uid, "slot_ms", "200", err, sizeof err));
    memset(&fs, 0, sizeof fs);
    CHECK(mv_state_run_list(s, t, count_runs, &fs, err, sizeof err));
    assert_int_equal(fs.n, 1);
    char started[64];
    snprintf(started, sizeof started, "%s", fs.v[0]);
    CHECK(mv_state_run_put(s, uid, t, "p1", 3, err, sizeof err));
    memset(&fs, 0, sizeof fs);
    CHECK(mv_state_run_list(s, t, count_runs, &fs, err, sizeof err));
    assert_int_equal(fs.n, 1);
    assert_string_equal(fs.v[0], started);

    CHECK(mv_state_leader_release(s, "sched-b", b, err, sizeof err));
    CHECK(mv_state_leader_get(s, holder, sizeof holder, err, sizeof err));
    assert_string_equal(holder, "");
    freeReplyObject(redisCommand(rc, "DEL mv:runs:%s mv:run:%s", t, uid));
    CHECK(mv_state_tenant_del(s, t, err, sizeof err));
    redisFree(rc);
    mv_state_close(s);
}

static int run_fields(void *ud, const char *run_id, const char *k, const char *v)
{
    (void)run_id;
    return put_field(ud, k, v);
}

static int run_errors(void *ud, const char *mailbox, const char *error)
{
    return put_field(ud, mailbox, error);
}

static fields run_record(mv_state *s, const char *t)
{
    char err[MV_ERRLEN] = "";
    fields fs = {0};
    CHECK(mv_state_run_list(s, t, run_fields, &fs, err, sizeof err));
    return fs;
}

/* Per-run results: each mailbox's counters of the run are added once when it ends, an end
 * repeated (redelivery) or replaced (a dead-lettered task retried) never counts twice, errors
 * are kept per mailbox, and a task ending before the run record is written still counts. */
static void test_run_results(void **state)
{
    (void)state;
    char err[MV_ERRLEN] = "", t[64], run[64];
    mv_state *s = connect_or_fail();
    redisContext *rc = raw_connect();
    snprintf(t, sizeof t, "rr-%s", uid);
    snprintf(run, sizeof run, "run-%s", uid);
    CHECK(mv_state_tenant_add(s, t, NULL, err, sizeof err));
    CHECK(mv_state_status_set(s, t, "a@x", err, sizeof err, "run", run, "messages", "5",
                              "bytes_raw", "500", "bytes_stored", "200", "deduplicated", "1",
                              NULL));
    /* a fast worker: the mailbox ends before the run record is put */
    CHECK(mv_state_run_end(s, run, t, "a@x", "done", "", err, sizeof err));
    CHECK(mv_state_run_put(s, run, t, "p1", 3, err, sizeof err));
    fields fs = run_record(s, t);
    assert_string_equal(field(&fs, "done"), "1");
    assert_string_equal(field(&fs, "messages"), "5");
    assert_string_equal(field(&fs, "bytes_raw"), "500");
    assert_string_equal(field(&fs, "bytes_stored"), "200");
    assert_string_equal(field(&fs, "deduplicated"), "1");
    assert_string_equal(field(&fs, "tasks"), "3");
    assert_non_null(field(&fs, "ended_ms"));
    /* the same end again (the last chunk redelivered after a crash) */
    CHECK(mv_state_run_end(s, run, t, "a@x", "done", "", err, sizeof err));
    fs = run_record(s, t);
    assert_string_equal(field(&fs, "done"), "1");
    assert_string_equal(field(&fs, "messages"), "5");

    /* b fails and is dead-lettered, c is cancelled */
    CHECK(mv_state_status_set(s, t, "b@x", err, sizeof err, "run", run, "messages", "3",
                              "bytes_raw", "30", "bytes_stored", "20", "deduplicated", "0", NULL));
    CHECK(mv_state_run_end(s, run, t, "b@x", "failed", "login failed: bad password", err,
                           sizeof err));
    CHECK(mv_state_status_set(s, t, "c@x", err, sizeof err, "run", "another-run", "messages", "7",
                              NULL));
    CHECK(mv_state_run_end(s, run, t, "c@x", "cancelled", "cancelled by the operator", err,
                           sizeof err));
    fs = run_record(s, t);
    assert_string_equal(field(&fs, "failed"), "1");
    assert_string_equal(field(&fs, "cancelled"), "1");
    assert_string_equal(field(&fs, "messages"), "8"); /* c's status is another run's: 0 */
    fields es = {0};
    CHECK(mv_state_run_errors(s, run, run_errors, &es, err, sizeof err));
    assert_int_equal(es.n, 2);
    assert_string_equal(field(&es, "b@x"), "login failed: bad password");
    assert_string_equal(field(&es, "c@x"), "cancelled by the operator");

    /* b retried from the dead-letter list and done: replaces its failure and its counts */
    CHECK(mv_state_status_set(s, t, "b@x", err, sizeof err, "messages", "4", "bytes_raw", "40",
                              NULL));
    CHECK(mv_state_run_end(s, run, t, "b@x", "done", "", err, sizeof err));
    fs = run_record(s, t);
    assert_string_equal(field(&fs, "done"), "2");
    assert_string_equal(field(&fs, "failed"), "0");
    assert_string_equal(field(&fs, "messages"), "9");
    assert_string_equal(field(&fs, "bytes_raw"), "540");
    memset(&es, 0, sizeof es);
    CHECK(mv_state_run_errors(s, run, run_errors, &es, err, sizeof err));
    assert_int_equal(es.n, 1);
    assert_null(field(&es, "b@x"));

    assert_int_equal(mv_state_run_end(s, run, t, "a@x", "exploded", "", err, sizeof err),
                     MV_EINVAL);
    assert_non_null(strstr(err, "exploded"));
    freeReplyObject(redisCommand(rc, "DEL mv:runs:%s mv:run:%s mv:run:%s:ended mv:run:%s:errors", t,
                                 run, run, run));
    CHECK(mv_state_tenant_del(s, t, err, sizeof err));
    redisFree(rc);
    mv_state_close(s);
}

typedef struct fair_rec {
    const char *prefix; /* tenants of this test; others' tasks are refused (left for recovery) */
    int n, fail_flush;
    char tenant[64][64], mailbox[64][64], payload[64][64];
} fair_rec;

static int fair_send_cb(void *ud, const char *tenant, const char *mailbox, const void *payload,
                        size_t len)
{
    fair_rec *f = ud;
    if (strncmp(tenant, f->prefix, strlen(f->prefix)) != 0 || f->n == 64) return 1;
    snprintf(f->tenant[f->n], sizeof f->tenant[0], "%s", tenant);
    snprintf(f->mailbox[f->n], sizeof f->mailbox[0], "%s", mailbox);
    snprintf(f->payload[f->n], sizeof f->payload[0], "%.*s", (int)len, (const char *)payload);
    f->n++;
    return 0;
}

static int fair_flush_cb(void *ud)
{
    return ((fair_rec *)ud)->fail_flush;
}

/* Fair dispatch: per-tenant order kept, weights interleave, a cap holds, a next chunk goes
 * first, and a dispatch whose Kafka acknowledgement never came is sent again by recovery. */
static void test_fair_dispatch(void **state)
{
    (void)state;
    char err[MV_ERRLEN] = "", a[64], b[64], w[64], mb[64], pl[64], prefix[64];
    mv_state *s = connect_or_fail();
    redisContext *rc = raw_connect();
    snprintf(prefix, sizeof prefix, "fd%.8s", uid);
    snprintf(a, sizeof a, "%s-a", prefix);
    snprintf(b, sizeof b, "%s-b", prefix);
    snprintf(w, sizeof w, "fairtest-%s", uid);
    CHECK(mv_state_tenant_add(s, a, NULL, err, sizeof err));
    CHECK(mv_state_tenant_add(s, b, NULL, err, sizeof err));
    /* nothing is dispatched while no worker is alive: tasks wait */
    for (int i = 0; i < 4; i++) {
        snprintf(mb, sizeof mb, "m%d", i);
        snprintf(pl, sizeof pl, "a-task-%d", i);
        CHECK(mv_state_fair_push(s, a, mb, pl, strlen(pl), 0, NULL, err, sizeof err));
        snprintf(pl, sizeof pl, "b-task-%d", i);
        CHECK(mv_state_fair_push(s, b, mb, pl, strlen(pl), 0, NULL, err, sizeof err));
    }
    int64_t queued = 0, inflight = 0;
    CHECK(mv_state_fair_counts(s, a, &queued, &inflight, err, sizeof err));
    assert_int_equal(queued, 4);
    assert_int_equal(inflight, 0);
    /* a worker with plenty of capacity; b weighs 3 and may have 2 in flight */
    CHECK(mv_state_worker_seen(s, w, 0, 500, 0, err, sizeof err));
    CHECK(mv_state_tenant_limit(s, b, "weight", 3, err, sizeof err));
    CHECK(mv_state_tenant_limit(s, b, "max_concurrent", 2, err, sizeof err));
    assert_int_equal(mv_state_tenant_limit(s, b, "weight", 0, err, sizeof err), MV_EINVAL);
    fair_rec f = {.prefix = prefix};
    int nd = 0;
    for (int round = 0; round < 20 && f.n < 6; round++)
        CHECK(mv_state_fair_dispatch(s, mv_now_ms(), 64, 2, 45000, fair_send_cb, fair_flush_cb, &f,
                                     &nd, err, sizeof err));
    /* a's 4 in order, b only 2 (its cap), b's first two in order */
    int na = 0, nb = 0;
    for (int i = 0; i < f.n; i++) {
        if (!strcmp(f.tenant[i], a)) {
            snprintf(pl, sizeof pl, "a-task-%d", na++);
            assert_string_equal(f.payload[i], pl);
        } else {
            snprintf(pl, sizeof pl, "b-task-%d", nb++);
            assert_string_equal(f.payload[i], pl);
        }
    }
    assert_int_equal(na, 4);
    assert_int_equal(nb, 2);
    CHECK(mv_state_fair_counts(s, b, &queued, &inflight, err, sizeof err));
    assert_int_equal(queued, 2);
    assert_int_equal(inflight, 2);
    /* b's m0 has a next chunk: pushed first in line, releasing m0's slot in the same step */
    CHECK(mv_state_fair_push(s, b, "m0", "b-next-0", 8, 1, "m0", err, sizeof err));
    fair_rec g = {.prefix = prefix, .fail_flush = 1}; /* Kafka does not acknowledge */
    for (int round = 0; round < 20 && g.n < 1; round++)
        CHECK_FAILS(mv_state_fair_dispatch(s, mv_now_ms(), 64, 2, 45000, fair_send_cb,
                                           fair_flush_cb, &g, &nd, err, sizeof err));
    assert_int_equal(g.n, 1);
    assert_string_equal(g.payload[0], "b-next-0");
    /* not acknowledged: recovery sends it again (entries older than the given time) */
    fair_rec h = {.prefix = prefix};
    int nr = 0;
    CHECK(mv_state_fair_recover(s, mv_now_ms() + 1, fair_send_cb, fair_flush_cb, &h, &nr, err,
                                sizeof err));
    int found = 0;
    for (int i = 0; i < h.n; i++)
        found += !strcmp(h.payload[i], "b-next-0");
    assert_int_equal(found, 1);
    h.n = 0;
    CHECK(mv_state_fair_recover(s, mv_now_ms() + 1, fair_send_cb, fair_flush_cb, &h, &nr, err,
                                sizeof err));
    for (int i = 0; i < h.n; i++)
        assert_string_not_equal(h.payload[i], "b-next-0"); /* sent once, then forgotten */
    /* releases free the cap */
    CHECK(mv_state_fair_release(s, b, "m0", err, sizeof err));
    CHECK(mv_state_fair_release(s, b, "m1", err, sizeof err));
    CHECK(mv_state_fair_counts(s, b, &queued, &inflight, err, sizeof err));
    assert_int_equal(inflight, 0);
    assert_int_equal(queued, 2);

    CHECK(mv_state_worker_seen(s, w, 0, 0, 1, err, sizeof err));
    for (int i = 0; i < 4; i++) {
        snprintf(mb, sizeof mb, "m%d", i);
        CHECK(mv_state_fair_release(s, a, mb, err, sizeof err));
    }
    CHECK(mv_state_tenant_del(s, a, err, sizeof err));
    CHECK(mv_state_tenant_del(s, b, err, sizeof err));
    CHECK(mv_state_fair_counts(s, b, &queued, &inflight, err, sizeof err));
    assert_int_equal(queued, 0); /* tenant_del drops the queue */
    redisFree(rc);
    mv_state_close(s);
}

/* The enqueue script's busy check: a mailbox whose task is running with a live heartbeat is
 * skipped, a dead one (stale heartbeat) is enqueued, one already started in this run is not
 * enqueued again, and a queued mailbox's status and fair queue entry are written. */
static void test_enqueue_batch(void **state)
{
    (void)state;
    char err[MV_ERRLEN] = "", t[64], now[32], old[32];
    mv_state *s = connect_or_fail();
    redisContext *rc = raw_connect();
    snprintf(t, sizeof t, "eq-%s", uid);
    CHECK(mv_state_tenant_add(s, t, NULL, err, sizeof err));
    snprintf(now, sizeof now, "%lld", (long long)mv_now_ms());
    snprintf(old, sizeof old, "%lld", (long long)(mv_now_ms() - 600000));
    CHECK(mv_state_status_set(s, t, "live", err, sizeof err, "state", "running", "run", "r0",
                              "heartbeat_ms", now, NULL));
    CHECK(mv_state_status_set(s, t, "dead", err, sizeof err, "state", "running", "run", "r0",
                              "heartbeat_ms", old, NULL));
    CHECK(mv_state_status_set(s, t, "mine", err, sizeof err, "state", "running", "run", "r1",
                              "heartbeat_ms", now, NULL));
    CHECK(mv_state_cancel_set(s, t, "fresh", "r0", err, sizeof err));
    const char *mb[] = {"live", "dead", "mine", "fresh"}, *ids[] = {"i0", "i1", "i2", "i3"};
    const char *pl[] = {"p0", "p1", "p2", "p3"};
    size_t len[] = {2, 2, 2, 2};
    int v[4];
    CHECK(mv_state_enqueue_batch(s, t, "prof", "r1", 45000, 1, 1, 4, mb, ids, pl, len, v, err,
                                 sizeof err));
    assert_int_equal(v[0], 1); /* live: busy */
    assert_int_equal(v[1], 0); /* dead heartbeat: enqueued */
    assert_int_equal(v[2], 2); /* this run's, started */
    assert_int_equal(v[3], 0);
    int64_t queued = 0, inflight = 0;
    CHECK(mv_state_fair_counts(s, t, &queued, &inflight, err, sizeof err));
    assert_int_equal(queued, 2);
    fields fs = {0};
    CHECK(mv_state_status_get(s, t, "fresh", collect_field, &fs, err, sizeof err));
    assert_string_equal(field(&fs, "state"), "queued");
    assert_string_equal(field(&fs, "run"), "r1");
    assert_string_equal(field(&fs, "task"), "i3");
    assert_string_equal(field(&fs, "profile"), "prof");
    char cancel[37];
    CHECK(mv_state_cancel_get(s, t, "fresh", cancel, err, sizeof err));
    assert_string_equal(cancel, ""); /* a new run clears an old cancel */
    /* without the check (a manual run), everything is enqueued */
    CHECK(mv_state_enqueue_batch(s, t, "prof", "r2", 45000, 0, 0, 4, mb, ids, pl, len, v, err,
                                 sizeof err));
    assert_int_equal(v[0] + v[1] + v[2] + v[3], 0);
    assert_int_equal(mv_state_enqueue_batch(s, t, "prof", "r2", 45000, 0, 0, 0, mb, ids, pl, len, v,
                                            err, sizeof err),
                     MV_EINVAL);
    CHECK(mv_state_tenant_del(s, t, err, sizeof err));
    redisFree(rc);
    mv_state_close(s);
}

static void test_cursor_and_counters(void **state)
{
    char err[MV_ERRLEN] = "", t[64], holder[64];
    const char *mb = "cursor@example.com";
    const char *folder = "AAMkAGI2-folder-id";
    uint64_t tok = 0;
    mv_cursor got;
    mv_state *s = connect_or_fail();
    snprintf(t, sizeof t, "cu-%s", uid);
    CHECK(mv_state_tenant_add(s, t, NULL, err, sizeof err));
    assert_int_equal(mv_state_cursor_get(s, t, mb, folder, &got, err, sizeof err), MV_ENOTFOUND);
    mv_cursor cu = {.generation = 2, .seq = 7, .pending = 1, .messages = 123};
    snprintf(cu.link, sizeof cu.link, "https://graph.example/v1.0/users/u/messages/delta?$x=1");
    /* fenced like checkpoints */
    assert_int_equal(
        mv_state_cursor_commit(s, t, mb, folder, &cu, "w", 1, NULL, NULL, 0, err, sizeof err),
        MV_EBUSY);
    CHECK(
        mv_state_lease_acquire(s, t, mb, "w", 60000, &tok, holder, sizeof holder, err, sizeof err));
    const char *counters[] = {"messages", "bytes_raw"};
    const int64_t incr[] = {5, 1000};
    CHECK(mv_state_cursor_commit(s, t, mb, folder, &cu, "w", tok, counters, incr, 2, err,
                                 sizeof err));
    CHECK(mv_state_cursor_get(s, t, mb, folder, &got, err, sizeof err));
    assert_int_equal(got.generation, 2);
    assert_int_equal(got.seq, 7);
    assert_int_equal(got.pending, 1);
    assert_int_equal(got.messages, 123);
    assert_string_equal(got.link, cu.link);
    /* the counters moved in the same step */
    fields fs = {0};
    CHECK(mv_state_status_get(s, t, mb, collect_field, &fs, err, sizeof err));
    assert_string_equal(field(&fs, "messages"), "5");
    assert_string_equal(field(&fs, "bytes_raw"), "1000");
    /* an empty link (start from scratch) round-trips too */
    cu.link[0] = '\0';
    cu.pending = 0;
    CHECK(mv_state_cursor_commit(s, t, mb, folder, &cu, "w", tok, NULL, NULL, 0, err, sizeof err));
    CHECK(mv_state_cursor_get(s, t, mb, folder, &got, err, sizeof err));
    assert_string_equal(got.link, "");
    assert_int_equal(got.pending, 0);
    CHECK(mv_state_lease_release(s, t, mb, "w", tok, err, sizeof err));
    CHECK(mv_state_tenant_del(s, t, err, sizeof err));
    mv_state_close(s);
}

static void test_limiter(void **state)
{
    char err[MV_ERRLEN] = "", scope[96], ids[8][37];
    mv_state *s = connect_or_fail();
    snprintf(scope, sizeof scope, "test:%s", uid);
    mv_limit lim = {
        .max_concurrent = 2, .hold_ms = 60000, .window_requests = 3, .window_ms = 60000};
    int admitted = 0;
    int64_t wait = 0;
    for (int i = 0; i < 2; i++) {
        mv_uuid(ids[i]);
        CHECK(mv_state_limit_acquire(s, scope, ids[i], &lim, &admitted, &wait, err, sizeof err));
        assert_int_equal(admitted, 1);
    }
    /* a third at once: concurrency is full (wait hint 0: a slot frees any moment) */
    mv_uuid(ids[2]);
    CHECK(mv_state_limit_acquire(s, scope, ids[2], &lim, &admitted, &wait, err, sizeof err));
    assert_int_equal(admitted, 0);
    assert_int_equal(wait, 0);
    CHECK(mv_state_limit_release(s, scope, ids[0], err, sizeof err));
    CHECK(mv_state_limit_acquire(s, scope, ids[2], &lim, &admitted, &wait, err, sizeof err));
    assert_int_equal(admitted, 1);
    CHECK(mv_state_limit_release(s, scope, ids[1], err, sizeof err));
    CHECK(mv_state_limit_release(s, scope, ids[2], err, sizeof err));
    /* a fourth within the window: the window (3 per minute) is spent; the hint says ~1 min */
    mv_uuid(ids[3]);
    CHECK(mv_state_limit_acquire(s, scope, ids[3], &lim, &admitted, &wait, err, sizeof err));
    assert_int_equal(admitted, 0);
    assert_true(wait > 50000 && wait <= 61201); /* window + 2 % margin */
    /* weights: a request counting as 3 (a batch) takes 3 window entries and only as many
     * concurrency slots as the limit has; one that can never fit is refused outright */
    char scope3[96];
    snprintf(scope3, sizeof scope3, "test3:%s", uid);
    mv_limit w5 = {.max_concurrent = 2, .hold_ms = 60000, .window_requests = 5, .window_ms = 60000};
    mv_uuid(ids[6]);
    CHECK(mv_state_limit_acquire_n(s, scope3, ids[6], &w5, 3, &admitted, &wait, err, sizeof err));
    assert_int_equal(admitted, 1);
    mv_uuid(ids[7]);
    CHECK(mv_state_limit_acquire(s, scope3, ids[7], &w5, &admitted, &wait, err, sizeof err));
    assert_int_equal(admitted, 0); /* both slots held by the batch */
    assert_int_equal(wait, 0);
    CHECK(mv_state_limit_release_n(s, scope3, ids[6], 3, err, sizeof err));
    CHECK(mv_state_limit_acquire_n(s, scope3, ids[7], &w5, 2, &admitted, &wait, err, sizeof err));
    assert_int_equal(admitted, 1); /* 3 + 2 = 5: the window is full now */
    CHECK(mv_state_limit_release_n(s, scope3, ids[7], 2, err, sizeof err));
    mv_uuid(ids[7]);
    CHECK(mv_state_limit_acquire(s, scope3, ids[7], &w5, &admitted, &wait, err, sizeof err));
    assert_int_equal(admitted, 0);
    assert_true(wait > 50000 && wait <= 61201);
    assert_int_equal(
        mv_state_limit_acquire_n(s, scope3, ids[7], &w5, 6, &admitted, &wait, err, sizeof err),
        MV_EINVAL);
    /* a crashed holder's slot frees itself after hold_ms */
    char scope2[96];
    snprintf(scope2, sizeof scope2, "test2:%s", uid);
    mv_limit one = {.max_concurrent = 1, .hold_ms = 300, .window_requests = 0, .window_ms = 1000};
    mv_uuid(ids[4]);
    CHECK(mv_state_limit_acquire(s, scope2, ids[4], &one, &admitted, &wait, err, sizeof err));
    assert_int_equal(admitted, 1);
    mv_uuid(ids[5]);
    int64_t deadline = mv_mono_ms() + 5000;
    for (admitted = 0; !admitted;) {
        CHECK(mv_state_limit_acquire(s, scope2, ids[5], &one, &admitted, &wait, err, sizeof err));
        if (!admitted && mv_mono_ms() > deadline) fail_msg("a held slot never expired");
        if (!admitted) sleep_ms(20);
    }
    mv_state_close(s);
}

static void test_token_cache(void **state)
{
    char err[MV_ERRLEN] = "", t[64];
    mv_state *s = connect_or_fail();
    snprintf(t, sizeof t, "tk-%s", uid);
    void *blob = NULL;
    size_t len = 0;
    assert_int_equal(mv_state_token_get(s, t, "p", &blob, &len, err, sizeof err), MV_ENOTFOUND);
    CHECK(mv_state_token_put(s, t, "p", "sealed\0bytes", 12, 60000, err, sizeof err));
    CHECK(mv_state_token_get(s, t, "p", &blob, &len, err, sizeof err));
    assert_int_equal(len, 12);
    assert_memory_equal(blob, "sealed\0bytes", 12);
    free(blob);
    int got = 0;
    CHECK(mv_state_token_lock(s, t, "p", "w1", 60000, &got, err, sizeof err));
    assert_int_equal(got, 1);
    CHECK(mv_state_token_lock(s, t, "p", "w2", 60000, &got, err, sizeof err));
    assert_int_equal(got, 0);                                       /* one fetcher at a time */
    CHECK(mv_state_token_unlock(s, t, "p", "w2", err, sizeof err)); /* not the holder: no-op */
    CHECK(mv_state_token_lock(s, t, "p", "w2", 60000, &got, err, sizeof err));
    assert_int_equal(got, 0);
    CHECK(mv_state_token_unlock(s, t, "p", "w1", err, sizeof err));
    CHECK(mv_state_token_lock(s, t, "p", "w2", 60000, &got, err, sizeof err));
    assert_int_equal(got, 1);
    CHECK(mv_state_token_unlock(s, t, "p", "w2", err, sizeof err));
    mv_state_close(s);
}

static void test_delay_pump(void **state)
{
    char err[MV_ERRLEN] = "";
    char a[64], b[64], c[64];
    /* binary payloads with NULs, unique per run */
    size_t la = (size_t)snprintf(a, sizeof a, "A%c%s", 0, uid) + 0;
    size_t lb = (size_t)snprintf(b, sizeof b, "B%c%s", 0, uid) + 0;
    size_t lc = (size_t)snprintf(c, sizeof c, "C%c%s", 0, uid) + 0;
    mv_state *s = connect_or_fail();
    int64_t now = mv_now_ms();
    CHECK(mv_state_delay_add(s, a, la, now - 2000, err, sizeof err));
    CHECK(mv_state_delay_add(s, b, lb, now - 1000, err, sizeof err));
    CHECK(mv_state_delay_add(s, c, lc, now + 3600 * 1000, err, sizeof err));

    pump_ctx p = {.mine = {a, b, c}, .mine_len = {la, lb, lc}, .fail_first = 0};
    int moved = -1;
    CHECK(mv_state_delay_pump(s, now, 1000, pump_cb, &p, &moved, err, sizeof err));
    assert_int_equal(p.seen[0], 1);
    assert_int_equal(p.seen[1], 1);
    assert_int_equal(p.seen[2], 0); /* not due */
    assert_int_equal(moved, 1);     /* b only: a's callback failed */

    /* a failed callback keeps the entry: the next pump delivers it again */
    p.fail_first = -1;
    CHECK(mv_state_delay_pump(s, now, 1000, pump_cb, &p, &moved, err, sizeof err));
    assert_int_equal(p.seen[0], 2);
    assert_int_equal(p.seen[1], 1);
    assert_int_equal(moved, 1);
    CHECK(mv_state_delay_pump(s, now, 1000, pump_cb, &p, &moved, err, sizeof err));
    assert_int_equal(p.seen[0], 2);
    assert_int_equal(moved, 0);
    /* once due, c comes out */
    CHECK(mv_state_delay_pump(s, now + 3600 * 1000, 1000, pump_cb, &p, &moved, err, sizeof err));
    assert_int_equal(p.seen[2], 1);
    assert_int_equal(moved, 1);
    CHECK(mv_state_delay_pump(s, now, 0, pump_cb, &p, &moved, err, sizeof err));
    assert_int_equal(moved, 0);
    mv_state_close(s);
}

static void test_reconnect(void **state)
{
    char err[MV_ERRLEN] = "", t[64];
    mv_state *s = connect_or_fail();
    redisContext *rc = raw_connect();
    snprintf(t, sizeof t, "rc-%s", uid);
    CHECK(mv_state_tenant_add(s, t, NULL, err, sizeof err));

    /* drop every other client connection (the stack is locked for this test) */
    redisReply *r = redisCommand(rc, "CLIENT KILL TYPE normal SKIPME yes");
    assert_non_null(r);
    assert_int_equal(r->type, REDIS_REPLY_INTEGER);
    assert_true(r->integer >= 1);
    freeReplyObject(r);
    /* idempotent: reconnects once and succeeds */
    assert_int_equal(mv_state_tenant_exists(s, t), 1);

    r = redisCommand(rc, "CLIENT KILL TYPE normal SKIPME yes");
    freeReplyObject(r);
    /* not idempotent: reported, not re-sent */
    mv_err e = mv_state_status_incr(s, t, "x@example.com", "messages", 1, err, sizeof err);
    assert_true(e == MV_ENET || e == MV_ETIMEDOUT);
    assert_non_null(strstr(err, "redis 127.0.0.1:"));
    /* the next command reconnects */
    CHECK(mv_state_status_incr(s, t, "x@example.com", "messages", 1, err, sizeof err));
    fields fs = {0};
    CHECK(mv_state_status_get(s, t, "x@example.com", collect_field, &fs, err, sizeof err));
    assert_string_equal(field(&fs, "messages"), "1");

    CHECK(mv_state_tenant_del(s, t, err, sizeof err));
    redisFree(rc);
    mv_state_close(s);

    /* nothing listening: a clear network error naming the address */
    mv_config bad = cfg;
    bad.redis_port = 1;
    mv_state *none = NULL;
    e = mv_state_connect(&bad, &none, err, sizeof err);
    assert_true(e == MV_ENET || e == MV_ETIMEDOUT);
    assert_null(none);
    assert_non_null(strstr(err, "127.0.0.1:1"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_catalog),
        cmocka_unit_test(test_status),
        cmocka_unit_test(test_lease),
        cmocka_unit_test(test_fencing),
        cmocka_unit_test(test_leader_and_slots),
        cmocka_unit_test(test_run_results),
        cmocka_unit_test(test_fair_dispatch),
        cmocka_unit_test(test_enqueue_batch),
        cmocka_unit_test(test_delay_pump),
        cmocka_unit_test(test_reconnect),
        cmocka_unit_test(test_cursor_and_counters),
        cmocka_unit_test(test_limiter),
        cmocka_unit_test(test_token_cache),
    };
    return cmocka_run_group_tests(tests, setup_env, NULL);
}

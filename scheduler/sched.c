/* sched.c - the scheduler's leader duty: fire each scheduled profile's due slot once.
 *
 * Every tick the scheduler keeps or tries for the leader lease (state.h). The leader walks the
 * index of scheduled profiles and, per profile, reads its slot record "<slot_ms> <state>":
 *
 *   none            arm it: cron from now on; an interval fires at once (slot = now)
 *   "<S> done"      if a later slot is due (the latest one, when several were missed), write
 *                   "<S'> pending", enqueue the run of S', write "<S'> done"
 *   "<S> pending"   a leader died between those steps: enqueue the run of S again
 *
 * Each write is fenced by the leader's token and the previous value (a deposed leader cannot
 * move a schedule), and the run id is derived from (tenant, profile, slot), so enqueueing a
 * slot again after a failover continues the same run: mailboxes of that run that have started
 * are not enqueued twice, and mailboxes whose earlier task is still queued or running are
 * skipped (counted as busy in the run record). */
#include "sched.h"

#include "mv/cron.h"
#include "mv/log.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void fire(sched *s, const char *tenant, const char *profile, int64_t slot)
{
    char run_id[37], err[MV_ERRLEN], val[64];
    mv_jobs_slot_run_id(tenant, profile, slot, run_id);
    int n = 0, busy = 0;
    if (mv_jobs_enqueue_run(s->cfg, s->st, s->pr, s->key, tenant, profile, run_id, 1, run_id, &n,
                            &busy, err, sizeof err)) {
        if (mv_mono_ms() - s->warned_ms > 10000) { /* retried every tick, said every 10 s */
            mv_warn("scheduled run not enqueued (tried again next tick)",
                    " tenant=%s profile=%s slot=%" PRId64 " error=\"%s\"", tenant, profile, slot,
                    err);
            s->warned_ms = mv_mono_ms();
        }
        return;
    }
    snprintf(val, sizeof val, "%" PRId64, slot);
    if (mv_state_run_tag(s->st, run_id, "slot_ms", val, err, sizeof err))
        mv_warn("cannot tag the run with its slot", " run=%s error=\"%s\"", run_id, err);
    char pending[64], done[64];
    snprintf(pending, sizeof pending, "%" PRId64 " pending", slot);
    snprintf(done, sizeof done, "%" PRId64 " done", slot);
    if (mv_state_slot_set(s->st, s->owner, s->token, tenant, profile, pending, done, err,
                          sizeof err)) {
        mv_warn("cannot record the fired slot", " tenant=%s profile=%s error=\"%s\"", tenant,
                profile, err);
        return;
    }
    s->fired++;
    mv_info("schedule fired",
            " tenant=%s profile=%s slot=%" PRId64 " run=%s tasks=%d busy=%d leader_token=%" PRIu64,
            tenant, profile, slot, run_id, n, busy, s->token);
}

/* One scheduled profile: arm, fire what is due, or finish a pending slot. */
static int one(void *ud, const char *tenant, const char *profile)
{
    sched *s = ud;
    char err[MV_ERRLEN], cur[64];
    mv_profile p;
    mv_err rc = mv_jobs_profile_load(s->st, tenant, profile, &p, err, sizeof err);
    if (rc == MV_ENOTFOUND || (!rc && !p.schedule.kind)) { /* removed, or no longer scheduled */
        if (!rc) mv_profile_free(&p);
        mv_state_sched_index(s->st, tenant, profile, 0, err, sizeof err);
        return 0;
    }
    if (rc) {
        mv_warn("cannot load a scheduled profile", " tenant=%s profile=%s error=\"%s\"", tenant,
                profile, err);
        return 0;
    }
    int64_t now = mv_now_ms();
    if (mv_state_slot_get(s->st, tenant, profile, cur, sizeof cur, err, sizeof err)) goto out;
    if (!cur[0]) { /* first sight */
        char armed[64];
        int64_t at = p.schedule.kind == MV_SCHED_EVERY ? now - p.schedule.every_ms : now;
        snprintf(armed, sizeof armed, "%" PRId64 " done", at);
        if (mv_state_slot_set(s->st, s->owner, s->token, tenant, profile, "", armed, err,
                              sizeof err) == MV_OK)
            mv_info("schedule armed", " tenant=%s profile=%s next=%" PRId64, tenant, profile,
                    mv_schedule_next(&p.schedule, at));
        goto out;
    }
    long long slot = 0;
    char state[16] = "";
    if (sscanf(cur, "%lld %15s", &slot, state) != 2) {
        mv_warn("unreadable schedule slot record", " tenant=%s profile=%s value=\"%s\"", tenant,
                profile, cur);
        goto out;
    }
    if (!strcmp(state, "pending")) {
        fire(s, tenant, profile, slot);
        goto out;
    }
    int64_t due = mv_schedule_due(&p.schedule, slot, now);
    if (due < 0) goto out;
    char pending[64];
    snprintf(pending, sizeof pending, "%" PRId64 " pending", due);
    if (mv_state_slot_set(s->st, s->owner, s->token, tenant, profile, cur, pending, err,
                          sizeof err)) {
        mv_warn("schedule slot not taken", " tenant=%s profile=%s error=\"%s\"", tenant, profile,
                err);
        goto out;
    }
    fire(s, tenant, profile, due);
out:
    mv_profile_free(&p);
    return 0;
}

void sched_tick(sched *s)
{
    char err[MV_ERRLEN], holder[256];
    int ttl = s->cfg->sched_lease_ms;
    if (s->leader) {
        if (mv_state_leader_renew(s->st, s->owner, s->token, ttl, err, sizeof err)) {
            mv_warn("scheduler leadership lost", " owner=%s error=\"%s\"", s->owner, err);
            s->leader = 0;
        }
    } else if (mv_state_leader_acquire(s->st, s->owner, ttl, &s->token, holder, sizeof holder, err,
                                       sizeof err) == MV_OK) {
        s->leader = 1;
        mv_info("scheduler is the leader", " owner=%s token=%" PRIu64, s->owner, s->token);
    }
    if (!s->leader) return;
    if (mv_state_sched_list(s->st, one, s, err, sizeof err))
        mv_warn("cannot list the schedules", " error=\"%s\"", err);
}

void sched_resign(sched *s)
{
    char err[MV_ERRLEN];
    if (s->leader && mv_state_leader_release(s->st, s->owner, s->token, err, sizeof err))
        mv_warn("cannot release the leadership", " error=\"%s\"", err);
    s->leader = 0;
}

/* state.h - everything mailvault keeps in Redis (prefix "mv:"), see docs/formats.md.
 *
 * One mv_state is one Redis connection, used by one thread at a time. Every command runs
 * under redis.timeout_ms. Written against the hiredis 0.14 API subset that newer hiredis
 * versions keep (redisConnectWithTimeout, redisCommand, redisCommandArgv, freeReplyObject).
 *
 * Keys:
 *   mv:tenants                          set of tenant names
 *   mv:tenant:{t}                       hash: display_name, created_ms
 *   mv:profiles:{t}                     set of profile names
 *   mv:profile:{t}:{p}                  string: profile JSON without secrets
 *   mv:cred:{t}:{p}:{mailbox}           string: sealed password (crypt.h)
 *   mv:mailboxes:{t}                    set of mailbox ids seen in status
 *   mv:status:{t}:{mailbox}             hash: task status (fields below)
 *   mv:run:{runid}                      hash: tenant, profile, tasks, started_ms
 *   mv:ckpt:{t}:{mailbox}               hash: folder -> checkpoint text
 *   mv:lease:{t}:{mailbox}              string "owner|token", PX ttl
 *   mv:fence:{t}:{mailbox}              counter of fencing tokens
 *   mv:delayed                          zset: task payload (msgpack) scored by due time (ms)
 */
#ifndef MV_STATE_H
#define MV_STATE_H

#include "mv/common.h"
#include "mv/config.h"
#include <stdint.h>

typedef struct mv_state mv_state;

mv_err mv_state_connect(const mv_config *c, mv_state **out, char *err, size_t errlen);
void mv_state_close(mv_state *s);
/* PING; reconnects once if the connection was lost. */
mv_err mv_state_ping(mv_state *s, char *err, size_t errlen);

/* ---- catalog ---- */
mv_err mv_state_tenant_add(mv_state *s, const char *tenant, const char *display_name, char *err,
                           size_t errlen); /* MV_EEXIST if present */
/* 1 if the tenant exists, 0 if not, -1 on a Redis error (callers that test for 0 let the next
 * command report the real error). */
int mv_state_tenant_exists(mv_state *s, const char *tenant);
mv_err mv_state_tenant_del(mv_state *s, const char *tenant, char *err, size_t errlen);
/* cb per tenant name, sorted. */
mv_err mv_state_tenant_list(mv_state *s, int (*cb)(void *ud, const char *name), void *ud, char *err,
                            size_t errlen);

mv_err mv_state_profile_put(mv_state *s, const char *tenant, const char *profile, const char *json,
                            char *err, size_t errlen);
/* *json malloc'd, caller frees; MV_ENOTFOUND if missing. */
mv_err mv_state_profile_get(mv_state *s, const char *tenant, const char *profile, char **json,
                            char *err, size_t errlen);
mv_err mv_state_profile_del(mv_state *s, const char *tenant, const char *profile, char *err,
                            size_t errlen);
mv_err mv_state_profile_list(mv_state *s, const char *tenant, int (*cb)(void *ud, const char *name),
                             void *ud, char *err, size_t errlen);

/* Sealed credential blobs (binary-safe). *blob malloc'd, caller frees. */
mv_err mv_state_cred_put(mv_state *s, const char *tenant, const char *profile, const char *mailbox,
                         const void *blob, size_t len, char *err, size_t errlen);
mv_err mv_state_cred_get(mv_state *s, const char *tenant, const char *profile, const char *mailbox,
                         void **blob, size_t *len, char *err, size_t errlen);

/* ---- task status ----
 * Fields of mv:status:{t}:{mailbox}: state (queued|running|done|failed|retrying),
 * task, run, profile, chunk, attempt, worker, folder, messages (this run), bytes_raw,
 * bytes_stored, deduplicated, total_messages (all runs), heartbeat_ms, queued_ms, started_ms,
 * finished_ms, error.
 * Set fields from NULL-terminated key, value pairs (values as strings). */
mv_err mv_state_status_set(mv_state *s, const char *tenant, const char *mailbox, char *err,
                           size_t errlen, ...) __attribute__((sentinel));
/* HINCRBY a numeric status field. */
mv_err mv_state_status_incr(mv_state *s, const char *tenant, const char *mailbox, const char *field,
                            int64_t by, char *err, size_t errlen);
/* Reads all fields; cb per field. MV_ENOTFOUND if no status. */
mv_err mv_state_status_get(mv_state *s, const char *tenant, const char *mailbox,
                           int (*cb)(void *ud, const char *field, const char *value), void *ud,
                           char *err, size_t errlen);
mv_err mv_state_mailbox_list(mv_state *s, const char *tenant,
                             int (*cb)(void *ud, const char *mailbox), void *ud, char *err,
                             size_t errlen);

/* ---- runs ----
 * mv:run:{run} hash (tenant, profile, tasks, started_ms; slot_ms and busy for scheduled runs;
 * done, failed, cancelled, messages, bytes_raw, bytes_stored, deduplicated, ended_ms as tasks end),
 * indexed per tenant in the sorted set mv:runs:{t} (score: start). Putting a run again keeps
 * its start. */
mv_err mv_state_run_put(mv_state *s, const char *run_id, const char *tenant, const char *profile,
                        int tasks, char *err, size_t errlen);
mv_err mv_state_run_tag(mv_state *s, const char *run_id, const char *field, const char *value,
                        char *err, size_t errlen);
/* A run's task for mailbox ended: outcome "done", "failed" (dead-lettered) or "cancelled".
 * Adds the mailbox's counters of this run (messages, bytes_raw, bytes_stored, deduplicated,
 * read from its status if the status still belongs to this run) to the run record, counts the
 * outcome, keeps the error (at most 100 mailboxes per run) and moves ended_ms forward. Ending
 * a mailbox again replaces its earlier share, so a redelivered task never counts twice. A run
 * is finished when done + failed + cancelled == tasks. */
mv_err mv_state_run_end(mv_state *s, const char *run_id, const char *tenant, const char *mailbox,
                        const char *outcome, const char *error, char *err, size_t errlen);
/* Errors of a run's failed and cancelled mailboxes: cb(mailbox, error), non-zero stops. */
mv_err mv_state_run_errors(mv_state *s, const char *run_id,
                           int (*cb)(void *ud, const char *mailbox, const char *error), void *ud,
                           char *err, size_t errlen);
/* Every run of a tenant, oldest first: cb per field of each run (non-zero stops). */
mv_err mv_state_run_list(mv_state *s, const char *tenant,
                         int (*cb)(void *ud, const char *run_id, const char *field,
                                   const char *value),
                         void *ud, char *err, size_t errlen);

/* ---- fair dispatch (docs/fairness.md) ----
 * Tasks wait per tenant in mv:fair:q:{t} ("<mailbox>\t<payload>") and are moved onto Kafka
 * by mv_state_fair_dispatch: start-time fair queuing over the tenants with queued tasks
 * (mv:fair:ready, score = start tag), within a budget of factor x the live workers' capacity
 * and each tenant's max_concurrent. In flight: mv:fair:inflight (zset "t/mailbox" -> dispatch
 * ms) and mv:fair:inflight:{t} (set of mailboxes); a slot is released when the mailbox's task
 * ends or its next chunk is queued again. */
typedef int (*mv_fair_send_fn)(void *ud, const char *tenant, const char *mailbox,
                               const void *payload, size_t len);
typedef int (*mv_fair_flush_fn)(void *ud); /* 0: everything sent is acknowledged */
/* Queue a task (front: before the tenant's others, for a mailbox's next chunk). release:
 * a mailbox whose slot is given back in the same step (its next chunk), or NULL. */
mv_err mv_state_fair_push(mv_state *s, const char *tenant, const char *mailbox, const void *payload,
                          size_t len, int front, const char *release, char *err, size_t errlen);
/* Enqueue up to MV_STATE_ENQUEUE_BATCH tasks of one run in one script: per mailbox, the
 * busy check (check: look at its current task; skip_busy: skip it while queued, running
 * with a heartbeat younger than stale_ms, or retrying), then cancel mark cleared, status
 * reset to queued, fair-queue push. verdicts[i]: 0 queued, 1 busy, 2 started in this run. */
#define MV_STATE_ENQUEUE_BATCH 28
mv_err mv_state_enqueue_batch(mv_state *s, const char *tenant, const char *profile,
                              const char *run_id, int stale_ms, int check, int skip_busy, int n,
                              const char *const *mailboxes, const char *const *task_ids,
                              const char *const *payloads, const size_t *lens, int *verdicts,
                              char *err, size_t errlen);
mv_err mv_state_fair_release(mv_state *s, const char *tenant, const char *mailbox, char *err,
                             size_t errlen);
/* Move up to max_items tasks onto Kafka: send() each, then flush(); only then are they
 * dropped from mv:fair:sending. A task whose send() fails, or all of them when flush()
 * fails (an error then), stay there for mv_state_fair_recover. *ndispatched: sent ones. */
mv_err mv_state_fair_dispatch(mv_state *s, int64_t now_ms, int max_items, int factor,
                              int reap_age_ms, mv_fair_send_fn send, mv_fair_flush_fn flush,
                              void *ud, int *ndispatched, char *err, size_t errlen);
/* Send again the tasks dispatched before older_than_ms whose sending was never confirmed (the
 * dispatcher died between popping and Kafka's acknowledgement): duplicates are harmless. */
mv_err mv_state_fair_recover(mv_state *s, int64_t older_than_ms, mv_fair_send_fn send,
                             mv_fair_flush_fn flush, void *ud, int *nsent, char *err,
                             size_t errlen);
mv_err mv_state_fair_counts(mv_state *s, const char *tenant, int64_t *queued, int64_t *inflight,
                            char *err, size_t errlen);
/* mv:tenant:{t} max_concurrent (0 = no cap) or weight (1..100000, default 1). */
mv_err mv_state_tenant_limit(mv_state *s, const char *tenant, const char *field, int value,
                             char *err, size_t errlen);

/* ---- dead letters ----
 * mv:dlq:retried: "partition:offset" of dead-letter records already sent back to work, so the
 * list shows each failure until it is retried. mark=0 asks (*was_marked: 1 if retried),
 * mark=1 records it (*was_marked: 1 if it already was). */
mv_err mv_state_dlq_retried(mv_state *s, int32_t partition, int64_t offset, int mark,
                            int *was_marked, char *err, size_t errlen);

/* ---- metrics (read by the admin server's /metrics) ----
 * mv:metrics:{t} hash of per-tenant counters: archived_<field> for every counter a checkpoint
 * moves (in the same Lua script, so they never run ahead of what is archived),
 * throttled, errors:<kind> (failed task attempts by error kind), exported_messages,
 * exported_bytes. With tenant NULL: mv:metrics, cluster-wide counters. */
mv_err mv_state_metric_incr(mv_state *s, const char *tenant, const char *field, int64_t by,
                            char *err, size_t errlen);
mv_err mv_state_metrics_get(mv_state *s, const char *tenant,
                            int (*cb)(void *ud, const char *field, const char *value), void *ud,
                            char *err, size_t errlen);
/* A cumulative histogram mv:histogram:{name}: le_<bound> per bound, count, sum. */
mv_err mv_state_metric_observe(mv_state *s, const char *name, int64_t value, const int64_t *bounds,
                               int nbounds, char *err, size_t errlen);
mv_err mv_state_histogram_get(mv_state *s, const char *name,
                              int (*cb)(void *ud, const char *field, const char *value), void *ud,
                              char *err, size_t errlen);
/* Worker liveness: mv:workers hash worker -> "seen_ms busy capacity", written every second
 * by each worker and removed (gone=1) when it stops cleanly. */
mv_err mv_state_worker_seen(mv_state *s, const char *worker, int busy, int capacity, int gone,
                            char *err, size_t errlen);
mv_err mv_state_worker_list(mv_state *s,
                            int (*cb)(void *ud, const char *worker, int64_t seen_ms, int busy,
                                      int capacity),
                            void *ud, char *err, size_t errlen);

/* ---- admin API bearer tokens ----
 * Only the SHA-256 of a token is stored: mv:api:tokens (hash hex -> name) and
 * mv:api:token-names (name -> "hash created_ms"). Names follow the tenant-name rules. */
mv_err mv_state_apitoken_put(mv_state *s, const char *hash_hex, const char *name, char *err,
                             size_t errlen); /* MV_EEXIST: the name is taken */
mv_err mv_state_apitoken_find(mv_state *s, const char *hash_hex, char *name, size_t namelen,
                              char *err, size_t errlen); /* MV_ENOTFOUND: unknown token */
mv_err mv_state_apitoken_list(mv_state *s,
                              int (*cb)(void *ud, const char *name, int64_t created_ms), void *ud,
                              char *err, size_t errlen);
mv_err mv_state_apitoken_del(mv_state *s, const char *name, char *err, size_t errlen);

/* ---- leases with fencing tokens ----
 * Acquire: if free, INCR the fence counter and SET the lease "owner|token" PX ttl; *token is
 * the new fencing token. MV_EBUSY if held by someone else (then *holder gets the owner). */
mv_err mv_state_lease_acquire(mv_state *s, const char *tenant, const char *mailbox,
                              const char *owner, int ttl_ms, uint64_t *token, char *holder,
                              size_t holderlen, char *err, size_t errlen);
/* Extend if still ours (owner and token match); an expired lease is taken back if nobody
 * acquired the mailbox since (the fence counter still equals token); else MV_EBUSY (lost). */
mv_err mv_state_lease_renew(mv_state *s, const char *tenant, const char *mailbox, const char *owner,
                            uint64_t token, int ttl_ms, char *err, size_t errlen);
mv_err mv_state_lease_release(mv_state *s, const char *tenant, const char *mailbox,
                              const char *owner, uint64_t token, char *err, size_t errlen);

/* ---- the scheduler: leader lease and schedule slots ----
 * One scheduler at a time is the leader: the lease mv:leader:scheduler ("owner|token", fencing
 * token from mv:fence:leader:scheduler), taken and kept like a mailbox's lease. Each scheduled
 * profile has a slot record in mv:sched:{t} (field profile): "<slot_ms> <state>", written only
 * by the leader through a script that checks the lease and the previous value, so a deposed
 * leader can never move a schedule. mv:schedules indexes the scheduled profiles ("t/profile"). */
mv_err mv_state_leader_acquire(mv_state *s, const char *owner, int ttl_ms, uint64_t *token,
                               char *holder, size_t holderlen, char *err, size_t errlen);
mv_err mv_state_leader_renew(mv_state *s, const char *owner, uint64_t token, int ttl_ms, char *err,
                             size_t errlen);
mv_err mv_state_leader_release(mv_state *s, const char *owner, uint64_t token, char *err,
                               size_t errlen);
/* The current leader's owner id ("" if none). */
mv_err mv_state_leader_get(mv_state *s, char *holder, size_t holderlen, char *err, size_t errlen);
/* The slot record ("" if none). */
mv_err mv_state_slot_get(mv_state *s, const char *tenant, const char *profile, char *value,
                         size_t valuelen, char *err, size_t errlen);
/* Replace the slot record expect ("" = none) with value, as the leader owner|token; MV_EBUSY
 * if not the leader (fenced) or the record changed meanwhile. */
mv_err mv_state_slot_set(mv_state *s, const char *owner, uint64_t token, const char *tenant,
                         const char *profile, const char *expect, const char *value, char *err,
                         size_t errlen);
/* Add (scheduled) or remove a profile from mv:schedules (removing also drops its slot). */
mv_err mv_state_sched_index(mv_state *s, const char *tenant, const char *profile, int scheduled,
                            char *err, size_t errlen);
mv_err mv_state_sched_list(mv_state *s,
                           int (*cb)(void *ud, const char *tenant, const char *profile), void *ud,
                           char *err, size_t errlen);

/* ---- per-folder checkpoints ----
 * Only the lease holder may move a checkpoint: set is a Lua script that checks the lease
 * value equals "owner|token" and returns MV_EBUSY otherwise (a stale worker is fenced off). */
typedef struct mv_ckpt {
    uint32_t uidvalidity;
    uint32_t last_uid;     /* every UID <= last_uid is archived and indexed */
    uint32_t pending_from; /* chunk in progress: UIDs pending_from..pending_to (0 = none) */
    uint32_t pending_to;
    uint64_t messages; /* messages archived from this folder so far */
} mv_ckpt;
/* MV_ENOTFOUND (and *ck zeroed) if the folder has no checkpoint yet. */
mv_err mv_state_ckpt_get(mv_state *s, const char *tenant, const char *mailbox, const char *folder,
                         mv_ckpt *ck, char *err, size_t errlen);
mv_err mv_state_ckpt_set(mv_state *s, const char *tenant, const char *mailbox, const char *folder,
                         const mv_ckpt *ck, const char *owner, uint64_t token, char *err,
                         size_t errlen);
/* Like ckpt_set, and in the same atomic step HINCRBY the mailbox's status fields[i] by
 * incr[i] (at most 16), so progress counters and the checkpoint never disagree. */
mv_err mv_state_ckpt_commit(mv_state *s, const char *tenant, const char *mailbox,
                            const char *folder, const mv_ckpt *ck, const char *owner,
                            uint64_t token, const char *const *fields, const int64_t *incr,
                            int nincr, char *err, size_t errlen);
/* ---- per-folder cursors, for sources that continue from an opaque link (Graph delta) ----
 * mv:cursor:{t}:{mailbox} field = folder id, value "<generation> <seq> <pending> <messages>
 * <link>". The link is where to continue ("" = from the start); pending = 1 while a batch read
 * from that link is not confirmed; seq counts confirmed batches of this generation (it names
 * the batch's index segment); generation goes up when the source's sync state expired and the
 * folder restarts. Commit is fenced and moves status counters like mv_state_ckpt_commit. */
#define MV_CURSOR_LINK_MAX 65536
typedef struct mv_cursor {
    uint32_t generation;
    uint64_t seq;
    int pending;
    uint64_t messages;
    char link[MV_CURSOR_LINK_MAX]; /* Graph delta links, EWS SyncStates (which grow with the folder)
                                    */
} mv_cursor;
mv_err mv_state_cursor_get(mv_state *s, const char *tenant, const char *mailbox, const char *folder,
                           mv_cursor *cu, char *err, size_t errlen);
mv_err mv_state_cursor_commit(mv_state *s, const char *tenant, const char *mailbox,
                              const char *folder, const mv_cursor *cu, const char *owner,
                              uint64_t token, const char *const *fields, const int64_t *incr,
                              int nincr, char *err, size_t errlen);

/* Remove all checkpoints of a mailbox (a full re-scan; stored objects deduplicate). */
mv_err mv_state_ckpt_clear(mv_state *s, const char *tenant, const char *mailbox, char *err,
                           size_t errlen);

/* ---- cached access tokens ----
 * mv:gtoken:{t}:{profile}: a sealed blob (the caller seals it with the master key) that expires
 * with the token; mv:gtoken-lock:{t}:{profile}: who is fetching a new one, so one worker at a
 * time asks the identity provider. */
mv_err mv_state_token_get(mv_state *s, const char *tenant, const char *profile, void **blob,
                          size_t *len, char *err, size_t errlen); /* MV_ENOTFOUND if none */
mv_err mv_state_token_put(mv_state *s, const char *tenant, const char *profile, const void *blob,
                          size_t len, int64_t ttl_ms, char *err, size_t errlen);
mv_err mv_state_token_lock(mv_state *s, const char *tenant, const char *profile, const char *owner,
                           int ttl_ms, int *got, char *err, size_t errlen);
mv_err mv_state_token_unlock(mv_state *s, const char *tenant, const char *profile,
                             const char *owner, char *err, size_t errlen);

/* ---- cluster-wide request limits (e.g. Microsoft's per-mailbox limits) ----
 * Keys mv:rl:conc:{scope} (zset: request id -> expiry of its slot) and mv:rl:win:{scope} (zset:
 * request id -> admission time). A request is admitted when fewer than max_concurrent slots
 * are held and fewer than window_requests were admitted in the last window_ms; both are
 * checked and taken in one Lua step, so every worker of the cluster shares them. A slot is
 * held until released or for hold_ms at most (a crashed worker's slots free themselves).
 * A request counts in the window from its completion, for window_ms plus a margin of 2 % (at
 * least 0.5 s) against clock and network jitter. 0 disables a limit. */
typedef struct mv_limit {
    int max_concurrent;
    int hold_ms;
    int window_requests;
    int64_t window_ms;
} mv_limit;
/* *admitted = 1, or 0 with *wait_ms a hint of when to try again (0 = soon). */
mv_err mv_state_limit_acquire(mv_state *s, const char *scope, const char *request_id,
                              const mv_limit *lim, int *admitted, int64_t *wait_ms, char *err,
                              size_t errlen);
/* Drop every concurrency slot of a scope (the window is kept). For a scope that only one
 * task can use at a time (a mailbox's, under its lease): the slots found at the task's start
 * belong to a predecessor that died mid-request and would otherwise block for hold_ms. */
mv_err mv_state_limit_clear(mv_state *s, const char *scope, char *err, size_t errlen);
mv_err mv_state_limit_release(mv_state *s, const char *scope, const char *request_id, char *err,
                              size_t errlen);
/* The same for a request that counts as n (a Graph $batch of n requests to one mailbox): n
 * entries in the window, and min(n, max_concurrent) slots, since the server runs at most that
 * many of them at once. n is at most MV_LIMIT_MAX_WEIGHT and window_requests. */
#define MV_LIMIT_MAX_WEIGHT 100
mv_err mv_state_limit_acquire_n(mv_state *s, const char *scope, const char *request_id,
                                const mv_limit *lim, int n, int *admitted, int64_t *wait_ms,
                                char *err, size_t errlen);
mv_err mv_state_limit_release_n(mv_state *s, const char *scope, const char *request_id, int n,
                                char *err, size_t errlen);

/* ---- sets of strings per tenant: mv:<ns>:{t}:{name} (ns and name valid names) ----
 * Exports record here what each destination received (ns "export", name the destination's
 * id, members the files' paths). */
mv_err mv_state_set_add(mv_state *s, const char *tenant, const char *ns, const char *name,
                        const char *member, char *err, size_t errlen);
mv_err mv_state_set_member(mv_state *s, const char *tenant, const char *ns, const char *name,
                           const char *member, int *is_member, char *err, size_t errlen);

/* ---- cancellation ----
 * mv:cancel:{t}:{mailbox} = the run id whose tasks of that mailbox must stop (set by
 * `mailvault cancel`, expires after 7 days, cleared when a new run of the mailbox is queued).
 * Workers look at it with every heartbeat; get gives "" when nothing is cancelled. */
mv_err mv_state_cancel_set(mv_state *s, const char *tenant, const char *mailbox, const char *run_id,
                           char *err, size_t errlen);
mv_err mv_state_cancel_get(mv_state *s, const char *tenant, const char *mailbox, char run_id[37],
                           char *err, size_t errlen);
mv_err mv_state_cancel_clear(mv_state *s, const char *tenant, const char *mailbox, char *err,
                             size_t errlen);

/* ---- delayed tasks (retries with backoff) ---- */
mv_err mv_state_delay_add(mv_state *s, const void *payload, size_t len, int64_t due_ms, char *err,
                          size_t errlen);
/* Calls cb for up to max payloads due at now_ms. A payload is removed only after cb returns
 * 0 (the caller produced it to Kafka), so a crash in between re-delivers (at-least-once). */
mv_err mv_state_delay_pump(mv_state *s, int64_t now_ms, int max,
                           int (*cb)(void *ud, const void *payload, size_t len), void *ud,
                           int *moved, char *err, size_t errlen);

/* Generic catalog hashes and sets for modules with their own key layout (storecat.c). Keys
 * must start with "mv:". hget: *val malloc'd with a NUL after the bytes; MV_ENOTFOUND if the
 * field is absent. hdel with field NULL deletes the whole key. Members come sorted. */
mv_err mv_state_hget(mv_state *s, const char *key, const char *field, void **val, size_t *len,
                     char *err, size_t errlen);
mv_err mv_state_hset(mv_state *s, const char *key, const char *field, const void *val, size_t len,
                     char *err, size_t errlen);
mv_err mv_state_hdel(mv_state *s, const char *key, const char *field, char *err, size_t errlen);
/* n fields in one HSET (atomic), n <= 40. */
mv_err mv_state_hset_many(mv_state *s, const char *key, int n, const char *const *fields,
                          const char *const *values, char *err, size_t errlen);
mv_err mv_state_hgetall_str(mv_state *s, const char *key,
                            int (*cb)(void *ud, const char *field, const char *value), void *ud,
                            char *err, size_t errlen);
mv_err mv_state_set_change(mv_state *s, const char *key, const char *member, int add, char *err,
                           size_t errlen);
mv_err mv_state_set_has(mv_state *s, const char *key, const char *member, int *yes, char *err,
                        size_t errlen);
mv_err mv_state_set_members(mv_state *s, const char *key, int (*cb)(void *ud, const char *m),
                            void *ud, char *err, size_t errlen);

#endif

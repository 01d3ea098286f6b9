/* jobs.h - operations that combine the catalog (Redis), the secrets (crypt) and the queue
 * (Kafka); used by the CLI and the scheduler alike. */
#ifndef MV_JOBS_H
#define MV_JOBS_H

#include "mv/common.h"
#include "mv/config.h"
#include "mv/crypt.h"
#include "mv/ews.h"
#include "mv/graph.h"
#include "mv/imap.h"
#include "mv/oauth.h"
#include "mv/profile.h"
#include "mv/queue.h"
#include "mv/state.h"

/* Store a parsed profile: every mailbox password is sealed into its credential slot, then the
 * profile JSON (without secrets) is written. A mailbox without a password keeps the stored
 * credential it already has; a new mailbox without one is an error naming it. The tenant
 * must exist. */
mv_err mv_jobs_profile_save(mv_state *st, const unsigned char key[MV_KEY_LEN], const char *tenant,
                            const mv_profile *p, char *err, size_t errlen);

/* Load a stored profile (parsed, without secrets). Caller frees with mv_profile_free. */
mv_err mv_jobs_profile_load(mv_state *st, const char *tenant, const char *profile, mv_profile *p,
                            char *err, size_t errlen);

/* Decrypt the password of one mailbox of a profile; *password malloc'd, caller wipes+frees. */
mv_err mv_jobs_credential(mv_state *st, const unsigned char key[MV_KEY_LEN], const char *tenant,
                          const char *profile, const char *mailbox, char **password, char *err,
                          size_t errlen);

/* Expand a profile into one archive task per mailbox (key tenant/mailbox) on the tasks topic,
 * mark each mailbox "queued" for the new run, and wait until Kafka acknowledged them all.
 * A Graph profile with a "directory" section adds the tenant directory's users (GET /users),
 * which needs the master key (to open the app's secret); key may be NULL otherwise.
 * run_id (37 bytes) receives the run's id. */
mv_err mv_jobs_enqueue_profile(const mv_config *c, mv_state *st, mv_producer *pr,
                               const unsigned char *key, const char *tenant, const char *profile,
                               char run_id[37], int *ntasks, char *err, size_t errlen);
/* The same with a given run id (NULL: a new one) and, with skip_busy, without the mailboxes
 * whose previous task is still queued, running (a live heartbeat) or waiting for a retry
 * (*nbusy counts them). Mailboxes whose status already carries this run id and that have
 * started are not enqueued again (a scheduled run fired a second time after a failover). */
mv_err mv_jobs_enqueue_run(const mv_config *c, mv_state *st, mv_producer *pr,
                           const unsigned char *key, const char *tenant, const char *profile,
                           const char *given_run_id, int skip_busy, char run_id[37], int *ntasks,
                           int *nbusy, char *err, size_t errlen);
/* The run id of a profile's scheduled slot: the same for every scheduler (UUID-shaped, from
 * SHA-256 of tenant, profile and slot). */
void mv_jobs_slot_run_id(const char *tenant, const char *profile, int64_t slot_ms, char out[37]);

/* The credential slot of a Graph or EWS profile (client secret or service account password, or
 * the certificate key) and the client
 * options for it; credential is the opened secret or PEM key (kept by the caller). */
const char *mv_jobs_graph_slot(const mv_profile *p);
void mv_jobs_graph_opts(mv_graph_opts *o, const mv_config *c, const mv_profile *p,
                        const char *credential);
/* The EWS client options of an ews profile (the credential slot is mv_jobs_graph_slot's:
 * the service account's password or the app's secret, or the certificate key). */
void mv_jobs_ews_opts(mv_ews_opts *o, const mv_config *c, const mv_profile *p,
                      const char *credential);

/* The IMAP client options of an imap profile's server, or an export profile's IMAP
 * destination (bounds from the configuration). */
void mv_jobs_imap_opts(mv_imap_opts *o, const mv_config *c, const mv_profile *p);
/* The credential slot an export profile's task needs: the destination's password or app
 * secret/certificate key, or the signing key; NULL if none. */
const char *mv_jobs_export_slot(const mv_profile *p);
/* Sign in to an export profile's IMAP destination on im: LOGIN/PLAIN with the password (type
 * imap), or AUTHENTICATE XOAUTH2 as the app with a token for Exchange Online (type m365; from
 * src, e.g. the worker's cluster-wide cache, else fetched). A token that was issued and then
 * refused is reported as the mailbox permission it is (FullAccess), with the fix. */
mv_err mv_jobs_export_login(const mv_config *c, const mv_profile *p, const char *credential,
                            const mv_oauth_source *src, mv_imap *im, char *err, size_t errlen);
/* The mailbox id of an export profile's task (its lease and status): "export:<profile>". */
void mv_jobs_export_task_mailbox(const mv_profile *p, char *out, size_t outlen);

/* "Test" a profile: for Graph, get a token and read the folder list of one mailbox (the given
 * one, else the first listed); for IMAP, log in and list folders. *report gets "OK ..." or
 * "FAILED <step>: <what to fix> (<server's words>)". Returns MV_OK only if the check passed;
 * on a failed check report is still filled and the server-side failure code is returned. */
mv_err mv_jobs_profile_test(mv_state *st, const unsigned char key[MV_KEY_LEN], const mv_config *c,
                            const char *tenant, const char *profile, const char *mailbox,
                            char *report, size_t reportlen, char *err, size_t errlen);

/* The delayed-set pump's callback (ud: the mv_state): a due retry or parked task goes back
 * to the front of its tenant's fair queue, so the fair dispatch admits it like any other
 * (it gave its slot back when it was parked). Non-zero: keep it for the next pump. */
int mv_jobs_requeue_delayed(void *st, const void *payload, size_t len);

#endif

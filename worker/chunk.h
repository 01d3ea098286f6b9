/* chunk.h - what every source connector shares inside one task chunk: the message sink
 * (store put + header scan + index record), heartbeats and lease renewal, and the durable end
 * of a batch (sync, index segment). Each source (IMAP, Graph) only decides what a batch is,
 * how its messages are fetched and how its checkpoint is written. */
#ifndef MV_WORKER_CHUNK_H
#define MV_WORKER_CHUNK_H

#include "runner.h"

#include "mv/index.h"
#include "mv/profile.h"

typedef struct chunk_ctx {
    mv_runner *r;
    const mv_task *t;
    uint64_t token;
    const char *folder; /* shown in status; the segment's folder */
    int overwrite;      /* redoing an unconfirmed batch: rewrite objects, don't trust them */
    mv_put *put;
    mv_hdrscan *hs;
    mv_segment seg;
    uint64_t msgs, raw, stored, dedup;
    int64_t last_beat;
    uint64_t budget;        /* messages this chunk may still archive */
    int64_t deadline;       /* monotonic ms when the chunk's time is up */
    int64_t retry_after_ms; /* a source asked for at least this delay before a retry */
    int cancelled;          /* the operator cancelled this task's run (chunk_beat saw it) */
    const mv_profile *profile;
    mv_err failed;
    char err[MV_ERRLEN];
} chunk_ctx;

mv_err chunk_init(chunk_ctx *c, mv_runner *r, const mv_task *t, uint64_t token);
void chunk_free(chunk_ctx *c);

/* 1 when the chunk must end before the next batch: budget or time spent, or shutting down. */
int chunk_spent(const chunk_ctx *c);
/* Take a finished batch's messages off the budget. */
void chunk_charge(chunk_ctx *c);

/* Source connectors: archive the mailbox of c->t until done (*more = 0) or the chunk is
 * spent while work remains (*more = 1). */
mv_err imap_archive_mailbox(chunk_ctx *c, const mv_profile *p, const char *password, int *more,
                            char *err, size_t errlen);
mv_err graph_archive_mailbox(chunk_ctx *c, const mv_profile *p, const char *secret, int *more,
                             char *err, size_t errlen);
mv_err ews_archive_mailbox(chunk_ctx *c, const mv_profile *p, const char *secret, int *more,
                           char *err, size_t errlen);
/* Not a source: an export profile's task (export_dir.c); sign_key is the profile's signing
 * key (PEM) or NULL. */
mv_err export_run(chunk_ctx *c, const mv_profile *p, const char *sign_key, int *more, char *err,
                  size_t errlen);
/* An export profile with an IMAP destination (export_imap.c); password opens it. */
mv_err export_imap_run(chunk_ctx *c, const mv_profile *p, const char *password, int *more,
                       char *err, size_t errlen);

/* An export profile with an EWS destination (export_ews.c); secret opens it (the service
 * account's password, the app's secret or its certificate key). */
mv_err export_ews_run(chunk_ctx *c, const mv_profile *p, const char *secret, int *more, char *err,
                      size_t errlen);

/* Heartbeat + lease renewal, at most once a second unless force; MV_ECANCEL (and
 * c->cancelled) when the operator cancelled the task's run. */
mv_err chunk_beat(chunk_ctx *c, int force);
/* Sleep ms with heartbeats and the lease kept alive; -1 if the worker stops or the lease is
 * lost meanwhile (a server's back-off, a throttling wait). */
int chunk_pause(chunk_ctx *c, int64_t ms);

/* The folders of a mailbox as a source lists them: id, path as indexed, and a flag of the
 * source's own (EWS: public folder). folder_list_add copies; sort orders by path. */
typedef struct folder_item {
    char *id;
    char *path;
    int flag;
} folder_item;
typedef struct folder_list {
    folder_item *v;
    size_t n, cap;
} folder_list;
int folder_list_add(folder_list *l, const char *id, const char *prefix, const char *path,
                    int flag); /* 0, or 1 when out of memory; prefix may be NULL */
void folder_list_truncate(folder_list *l, size_t n);
void folder_list_sort(folder_list *l);
void folder_list_free(folder_list *l);

/* A batch: messages go into c->seg; counters restart. */
void chunk_batch_begin(chunk_ctx *c, const char *seg_folder, uint32_t generation, uint32_t first,
                       uint32_t last, int overwrite);
/* One message: begin (size < 0 if unknown), data..., then done (or abort). Return 0 / an error
 * that is also left in c->failed and c->err. */
mv_err chunk_msg_begin(chunk_ctx *c, int64_t size);
mv_err chunk_msg_data(chunk_ctx *c, const void *data, size_t len);
/* Commit the message's object and add its index record. */
mv_err chunk_msg_done(chunk_ctx *c, uint32_t uid, const char *source_id, int64_t internaldate,
                      const char *flags);
void chunk_msg_abort(chunk_ctx *c);
/* Make the batch's objects durable and write its segment under name. */
mv_err chunk_batch_store(chunk_ctx *c, const char *segname, char *err, size_t errlen);
/* The status counters a batch moves together with its checkpoint. */
#define CHUNK_NCOUNTERS 5
extern const char *const chunk_counter_fields[CHUNK_NCOUNTERS];
void chunk_counters(const chunk_ctx *c, int64_t incr[CHUNK_NCOUNTERS]);
void chunk_batch_end(chunk_ctx *c);

#endif

/* export.h - shared by the export destinations (export_dir.c, export_imap.c, export_ews.c). */
#ifndef MV_WORKER_EXPORT_H
#define MV_WORKER_EXPORT_H

#include "chunk.h"

/* One message of an export. rel is the sort key and identity at the destination: the file's
 * path below the directory (directory), or "<folder>\t<sha256>" (imap, ews). */
typedef struct xfile {
    char *rel;
    char *folder; /* the index's folder path */
    char *msgid;  /* Message-ID header, or NULL */
    char hash[65];
    uint64_t size;
    int64_t idate;   /* INTERNALDATE (seconds), 0 if unknown */
    char flags[256]; /* IMAP flags as archived */
} xfile;

typedef struct xlist {
    xfile *v;
    size_t n, cap;
    const mv_profile *p;
    const char *mailbox; /* while listing one mailbox of a tenant-wide export */
    int failed;
} xlist;

/* The profile's selection, sorted by rel; with export.mailbox "*" every archived mailbox of the
 * tenant, each message's folder then "<mailbox>/<folder>" (also in rel) (equal rels are adjacent:
 * the same message listed in two segments). */
mv_err export_list(chunk_ctx *c, const mv_profile *p, xlist *l, char *err, size_t errlen);
void xlist_free(xlist *l);
/* A mailbox destination (imap, ews) as export_deliver drives it, message by message (ud is
 * the destination's own state). */
typedef struct xdest {
    void *ud;
    /* Make f's destination folder the current one (found or created when it changed); its
     * name at the destination into key (part of the record of what it received). */
    mv_err (*folder)(void *ud, const xfile *f, char *key, size_t keylen, char *err, size_t errlen);
    /* Whether the current folder holds f, asked by its Message-ID; *asked = 0 when f has no
     * Message-ID the destination can look up (the record decides then). */
    mv_err (*holds)(void *ud, const xfile *f, int *present, int *asked, char *err, size_t errlen);
    /* Put f into the current folder, its bytes streamed from the store. */
    mv_err (*put)(void *ud, const xfile *f, char *err, size_t errlen);
    /* Optional batching (IMAP MULTIAPPEND): with flush set, put only queues f (its bytes are
     * read when it is sent) and flush sends what was queued, stored all or none; the queued
     * messages are recorded once flush returned MV_OK. At most batch_max messages and
     * batch_bytes bytes per flush; a batch never spans two folders or holds one message twice. */
    mv_err (*flush)(void *ud, char *err, size_t errlen);
    size_t batch_max;
    uint64_t batch_bytes;
    /* Optional: whether the current folder holds f's exact bytes (for a message without a
     * Message-ID that was being sent when an earlier attempt died, so its record may be
     * missing although the destination has it). */
    mv_err (*holds_bytes)(void *ud, const xfile *f, int *present, char *err, size_t errlen);
} xdest;

typedef struct xcount {
    uint64_t written, bytes, kept;
} xcount;

/* Every message of l into a mailbox destination: its folder, then the destination asked for
 * its Message-ID (else this destination's record, mv:export:{t}:{dest}), then put and recorded
 * unless present; at most this chunk's share of puts (*more = 1 when some remain); the counts
 * are added to n and to the export's status. */
mv_err export_deliver(chunk_ctx *c, const xlist *l, const xdest *d, const char *dest, xcount *n,
                      int *more, char *err, size_t errlen);
/* Stream f's bytes from the store to out (a non-zero return stops: the caller knows why),
 * with heartbeats (MV_ECANCEL when the operator cancelled); MV_ECORRUPT naming the object when
 * the store gave other than the index's size. */
mv_err export_stream(chunk_ctx *c, const xfile *f, int (*out)(void *ud, const void *p, size_t n),
                     void *ud, char *err, size_t errlen);

/* Chunks of one run go on where the previous one stopped instead of checking everything again:
 * export_mark records (fenced by the task's lease, "<run>\t<rel>") that the entries of l before
 * upto are handled; export_resume gives the index a later chunk of the same run starts at (0
 * for a new run or without a mark). A chunk that died before marking is redone from the last
 * mark: its entries are checked at the destination again. */
size_t export_resume(chunk_ctx *c, const xlist *l);
void export_mark(chunk_ctx *c, const xlist *l, size_t upto);

/* The id of a destination in its Redis record (mv:export:{t}:{id}): the first 16 hex digits of
 * the SHA-256 of what names it, printf-formatted (e.g. "imap:host:port:login:root"). */
void export_dest_id(char out[17], const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Move the export's status counters: files/messages written, their bytes, those kept. */
void export_count(chunk_ctx *c, uint64_t written, uint64_t bytes, uint64_t kept);

#endif

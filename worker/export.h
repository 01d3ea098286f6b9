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
    int failed;
} xlist;

/* The profile's selection, sorted by rel (equal rels are adjacent: the same message listed in
 * two segments). */
mv_err export_list(chunk_ctx *c, const mv_profile *p, xlist *l, char *err, size_t errlen);
void xlist_free(xlist *l);
/* The id of a destination in its Redis record (mv:export:{t}:{id}): the first 16 hex digits of
 * the SHA-256 of what names it, printf-formatted (e.g. "imap:host:port:login:root"). */
void export_dest_id(char out[17], const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* The start of message i's turn in a mailbox destination's loop: 1 to pass over it (the same
 * (folder, message) listed in two segments), -1 when the task must stop (cancelled: *rc and
 * err set), else 0. */
int export_turn(chunk_ctx *c, const xlist *l, size_t i, mv_err *rc, char *err, size_t errlen);
/* 1 (and *more set) when this chunk has written its share: worker.chunk_messages, past the
 * deadline (monotonic ms), or the worker is stopping. */
int export_spent(chunk_ctx *c, uint64_t written, int64_t deadline, int *more);
/* Move the export's status counters: files/messages written, their bytes, those kept. */
void export_count(chunk_ctx *c, uint64_t written, uint64_t bytes, uint64_t kept);

#endif

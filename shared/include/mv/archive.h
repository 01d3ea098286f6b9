/* archive.h - the archive as readers see it: the index records of a mailbox, across all its
 * immutable segments, without the repeats a UIDVALIDITY change leaves behind.
 *
 * When a folder's UIDVALIDITY changes, the folder is read again under the new value and new
 * segments are written; the old ones stay (the archive never rewrites what it recorded, and
 * messages since deleted on the server exist only there). A message present in both is listed
 * once, from the newest UIDVALIDITY (the largest: RFC 3501 requires a new one to be greater);
 * a message only in older segments is still listed. */
#ifndef MV_ARCHIVE_H
#define MV_ARCHIVE_H

#include "mv/common.h"
#include "mv/index.h"
#include "mv/store.h"

/* cb gets each record with its segment (folder, uidvalidity); return non-zero to stop
 * (MV_ECANCEL). Segments are visited in name order (folder hash, then uidvalidity, then UID
 * range). A damaged segment fails the call with MV_ECORRUPT naming it. */
typedef int (*mv_archive_rec_fn)(void *ud, const mv_segment *seg, const mv_index_rec *rec);
mv_err mv_archive_list(mv_store *s, const char *tenant, const char *mailbox, mv_archive_rec_fn cb,
                       void *ud, char *err, size_t errlen);

#endif

/* index.h - index records and immutable index segments.
 *
 * A segment holds the records of one chunk of one folder: a zstd frame of a msgpack map
 *   {"v":1, "folder":str, "uidvalidity":uint, "first":uint, "last":uint, "recs":[rec...]}
 * rec = {"h":sha256hex, "uid":uint, "size":uint, "idate":int (internal date, s since epoch),
 *        "flags":str, "from":str, "to":str, "subj":str, "date":str, "msgid":str,
 *        "id":str (optional: the source's message id, for sources without UIDs)}
 * Segment name: "<folderhash16>-<uidvalidity>-<first>-<last>.seg" where folderhash16 is the
 * first 16 hex chars of sha256(folder name): the name says what it covers, so re-running a
 * chunk rewrites the same segment instead of adding a duplicate. */
#ifndef MV_INDEX_H
#define MV_INDEX_H

#include "mv/common.h"
#include <stdint.h>

#define MV_HDR_MAX 1024 /* bound on each captured header value */

typedef struct mv_index_rec {
    char hash[65];
    char id[256]; /* the source's message id (Graph immutable id); "" for IMAP, which uses uid */
    uint32_t uid;
    uint64_t size;
    int64_t internaldate;
    char flags[256];
    char from[MV_HDR_MAX];
    char to[MV_HDR_MAX];
    char subject[MV_HDR_MAX];
    char date[128];
    char msgid[512];
} mv_index_rec;

typedef struct mv_segment {
    char folder[1024];
    uint32_t uidvalidity;
    uint32_t first, last;
    mv_index_rec *recs; /* owned; n entries, cap allocated */
    size_t n, cap;
} mv_segment;

void mv_segment_init(mv_segment *s, const char *folder, uint32_t uidvalidity, uint32_t first,
                     uint32_t last);
mv_err mv_segment_add(mv_segment *s, const mv_index_rec *r);
void mv_segment_free(mv_segment *s);
void mv_segment_name(const char *folder, uint32_t uidvalidity, uint32_t first, uint32_t last,
                     char *out, size_t outlen);
/* Name of a batch of a cursor source (Graph delta): "<folderhash16>-<generation>-<seq>.seg",
 * seq zero-padded to 12 digits. folder is the source's folder id; the segment's uidvalidity
 * field carries the generation. Re-running batch seq rewrites the same name. */
void mv_segment_name_seq(const char *folder, uint32_t generation, uint64_t seq, char *out,
                         size_t outlen);
/* Encode (msgpack + zstd) into malloc'd *out. */
mv_err mv_segment_encode(const mv_segment *s, void **out, size_t *outlen, char *err, size_t errlen);
/* Decode; s must be uninitialised or freed; on success caller frees with mv_segment_free. */
mv_err mv_segment_decode(const void *buf, size_t len, mv_segment *s, char *err, size_t errlen);

/* Header scanner: fed the raw message as it streams, captures From, To, Subject, Date and
 * Message-ID from the header block (unfolded, bounded to MV_HDR_MAX each; the header block
 * scan stops after 256 KiB or at the first empty line). */
typedef struct mv_hdrscan mv_hdrscan;
mv_hdrscan *mv_hdrscan_new(void);
void mv_hdrscan_feed(mv_hdrscan *h, const void *data, size_t len);
/* Copies captured values into r (from, to, subject, date, msgid). */
void mv_hdrscan_result(mv_hdrscan *h, mv_index_rec *r);
void mv_hdrscan_reset(mv_hdrscan *h);
void mv_hdrscan_free(mv_hdrscan *h);

#endif

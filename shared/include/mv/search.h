/* search.h - searches over the index: what an export selects and what `mailvault ls` filters.
 *
 * A query is a conjunction of optional criteria: the folder (that folder and its subfolders),
 * case-insensitive substrings of From, To and Subject (as the index keeps them, RFC 2047
 * decoded where the header scanner decodes), and a received-time range. The time of a record
 * is its IMAP INTERNALDATE when the source gave one, else its Date header; a record with
 * neither never matches a time range. An export profile keeps its query (a saved search). */
#ifndef MV_SEARCH_H
#define MV_SEARCH_H

#include "mv/common.h"
#include "mv/index.h"
#include <stdint.h>

typedef struct mv_search {
    char folder[1024];
    char from[256], to[256], subject[256];
    int64_t after_ms;  /* received at or after (Unix ms), 0 = open */
    int64_t before_ms; /* received before, 0 = open */
} mv_search;

/* "YYYY-MM-DD" (a UTC day) into Unix ms at its start. */
mv_err mv_search_date(const char *s, int64_t *ms, char *err, size_t errlen);
/* The record's time in Unix ms, 0 if unknown. */
int64_t mv_search_rec_time(const mv_index_rec *r);
/* 1 if the record (in folder) matches every criterion of q. */
int mv_search_match(const mv_search *q, const char *folder, const mv_index_rec *r);
/* 1 if q has any criterion at all. */
int mv_search_any(const mv_search *q);

#endif

/* mpack.h - structural pre-check of untrusted msgpack bytes, before msgpack-c sees them.
 *
 * msgpack-c allocates a container's element array up front from the count in its header, so a
 * 5-byte input claiming a 4-billion-entry map can make it reserve gigabytes. mv_mpack_check
 * walks one encoded value without allocating and refuses it unless every declared
 * str/bin/ext length fits in the bytes present and every array/map could hold its declared
 * elements with the bytes left (each element takes at least one byte). Used by the task codec
 * (task.c) and the index segment decoder (index.c); each maps a failure to its own error code
 * and prefixes the message. */
#ifndef MV_MPACK_H
#define MV_MPACK_H

#include "mv/common.h"

#include <stddef.h>

/* Largest max_depth mv_mpack_check accepts (it keeps one counter per open container). */
#define MV_MPACK_MAX_DEPTH 64

/* msgpack-c's nesting limit (MSGPACK_EMBED_STACK_SIZE in msgpack/unpack_define.h, which
 * msgpack.h does not include): as max_depth it refuses exactly what msgpack_unpack_next would
 * refuse as too deep. test_mpack checks both the value and the behaviour. */
#define MV_MPACK_MSGPACK_C_DEPTH 32

/* Check that buf[0..len) starts with one well-formed msgpack value.
 *  max_depth       0 = unlimited; else at most this many containers may nest inside each other
 *                  (a scalar has depth 0, `[]` depth 1, `[[]]` depth 2); must be
 *                  <= MV_MPACK_MAX_DEPTH.
 *  max_items       0 = unlimited; else the most elements (array entries / map pairs) any single
 *                  container may declare.
 *  allow_trailing  0: bytes after the value are an error; else they are left to the caller.
 *  consumed        if not NULL: encoded size of the value on success, 0 on failure.
 * Returns MV_OK, or MV_EINVAL with a message (no prefix, e.g. "truncated msgpack at offset 3")
 * for malformed input, an exceeded limit, or bad arguments. Iterative, never allocates. */
mv_err mv_mpack_check(const void *buf, size_t len, size_t max_depth, size_t max_items,
                      int allow_trailing, size_t *consumed, char *err, size_t errlen);

#endif

/* task.h - the task message carried on Kafka (mailvault.tasks), schema version 1.
 *
 * Value: a msgpack map with string keys (see docs/formats.md):
 *   "v"  uint  schema version (1)          "id" str  task id (uuid)
 *   "k"  str   kind ("archive", "export")  "t"  str  tenant
 *   "p"  str   profile                      "m"  str  mailbox (login / address)
 *   "r"  str   run id (uuid of the "run now" or schedule firing)
 *   "a"  uint  attempt (0 = first)          "c"  uint chunk number (0 = first)
 *   "nb" int   not-before, ms since epoch   "ts" int  created, ms since epoch
 *   "e"  str   last error (optional, set on retries and in the DLQ)
 * Unknown keys are ignored (forward compatible); a task whose "v" is above
 * MV_TASK_VERSION is refused (a new field that old workers may ignore keeps the version).
 * Kafka key: "tenant/mailbox". Never carries secrets. */
#ifndef MV_TASK_H
#define MV_TASK_H

#include "mv/common.h"
#include <stdint.h>

#define MV_TASK_VERSION 1

typedef enum { MV_TASK_ARCHIVE = 1, MV_TASK_EXPORT = 2 } mv_task_kind;

typedef struct mv_task {
    uint32_t version;
    char id[37];
    mv_task_kind kind;
    char tenant[64];
    char profile[64];
    char mailbox[256];
    char run_id[37];
    uint32_t attempt;
    uint32_t chunk;
    int64_t not_before_ms;
    int64_t created_ms;
    char last_error[256];
} mv_task;

const char *mv_task_kind_name(mv_task_kind k);
/* Encode into a malloc'd buffer (*out, caller frees with free()). */
mv_err mv_task_encode(const mv_task *t, char **out, size_t *outlen, char *err, size_t errlen);
/* Decode and validate (names valid, required keys present, bounded lengths). */
mv_err mv_task_decode(const void *buf, size_t len, mv_task *t, char *err, size_t errlen);
/* "tenant/mailbox" into key. */
void mv_task_key(const mv_task *t, char *key, size_t keylen);

#endif

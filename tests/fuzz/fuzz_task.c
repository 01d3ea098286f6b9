/* fuzz_task.c - libFuzzer target for the task decoder (input: a Kafka message value).
 *
 * Contract checked: mv_task_decode never crashes, reads out of bounds or leaks on any input;
 * when it accepts an input, the task re-encodes, and decoding that encoding yields the same
 * task (decode . encode . decode == decode). A mismatch traps. */
#include "mv/task.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int same(const mv_task *a, const mv_task *b)
{
    return a->version == b->version && strcmp(a->id, b->id) == 0 && a->kind == b->kind &&
           strcmp(a->tenant, b->tenant) == 0 && strcmp(a->profile, b->profile) == 0 &&
           strcmp(a->mailbox, b->mailbox) == 0 && strcmp(a->run_id, b->run_id) == 0 &&
           a->attempt == b->attempt && a->chunk == b->chunk &&
           a->not_before_ms == b->not_before_ms && a->created_ms == b->created_ms &&
           strcmp(a->last_error, b->last_error) == 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    mv_task t1, t2;
    char err[MV_ERRLEN];
    err[0] = '\0';
    if (mv_task_decode(data, size, &t1, err, sizeof err) != MV_OK) {
        if (err[0] == '\0') __builtin_trap(); /* every failure explains itself */
        return 0;
    }
    char *buf = NULL;
    size_t len = 0;
    if (mv_task_encode(&t1, &buf, &len, err, sizeof err) != MV_OK) __builtin_trap();
    if (mv_task_decode(buf, len, &t2, err, sizeof err) != MV_OK) __builtin_trap();
    if (!same(&t1, &t2)) __builtin_trap();
    free(buf);
    return 0;
}

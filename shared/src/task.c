/* task.c - msgpack codec for the task message on the Kafka tasks topic (schema in task.h).
 *
 * Design: the decoder treats every input as hostile (anyone who can produce to the topic can
 * reach it). Before msgpack-c sees the bytes, the shared pre-pass mv_mpack_check (mpack.c)
 * walks the encoding once and checks that every declared length and element count fits in the
 * remaining input (and nesting stays within msgpack-c's stack), so a 5-byte message claiming a
 * 4-billion-entry map cannot make msgpack-c reserve gigabytes. Then the map
 * is read key by key: keys in any order, unknown keys ignored (forward compatibility),
 * duplicates refused (ambiguous), every known key type-checked, strings bounded by their
 * struct field and free of NUL bytes, names validated. The result is written to the caller's
 * struct only on success. The encoder refuses tasks the decoder would refuse, so a producer
 * cannot publish a poison message by mistake; it always writes MV_TASK_VERSION.
 * Errors: MV_EINVAL for any bad input (message names the field), MV_ENOMEM for allocation. */
#include "mv/task.h"
#include "mv/mpack.h"

#include <inttypes.h>
#include <msgpack.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* A task is well under 1 KiB; anything much bigger is not a task. */
#define TASK_MAX_BYTES (64 * 1024)

const char *mv_task_kind_name(mv_task_kind k)
{
    switch (k) {
    case MV_TASK_ARCHIVE:
        return "archive";
    case MV_TASK_EXPORT:
        return "export";
    }
    return "unknown";
}

/* ---- validation shared by encode and decode ---- */

static int printable_ascii(const char *s)
{
    for (; *s; s++)
        if ((unsigned char)*s < 0x21 || (unsigned char)*s > 0x7e) return 0;
    return 1;
}

static int terminated(const char *s, size_t size)
{
    return memchr(s, '\0', size) != NULL;
}

static mv_err task_check(const mv_task *t, char *err, size_t errlen)
{
    if (!terminated(t->id, sizeof t->id) || !terminated(t->tenant, sizeof t->tenant) ||
        !terminated(t->profile, sizeof t->profile) || !terminated(t->mailbox, sizeof t->mailbox) ||
        !terminated(t->run_id, sizeof t->run_id) ||
        !terminated(t->last_error, sizeof t->last_error))
        return mv_seterr(err, errlen, MV_EINVAL, "task has a string field without NUL");
    if (t->id[0] == '\0' || !printable_ascii(t->id))
        return mv_seterr(err, errlen, MV_EINVAL,
                         "task field \"id\": must be 1..36 printable ASCII characters");
    if (!printable_ascii(t->run_id))
        return mv_seterr(err, errlen, MV_EINVAL,
                         "task field \"r\": must be printable ASCII (at most 36 characters)");
    if (t->kind != MV_TASK_ARCHIVE && t->kind != MV_TASK_EXPORT)
        return mv_seterr(err, errlen, MV_EINVAL, "task field \"k\": unknown task kind %d",
                         (int)t->kind);
    if (!mv_name_valid(t->tenant))
        return mv_seterr(err, errlen, MV_EINVAL,
                         "task field \"t\": \"%.63s\" is not a valid tenant name "
                         "(1..63 of [a-z0-9._-], starting alphanumeric)",
                         t->tenant);
    if (!mv_name_valid(t->profile))
        return mv_seterr(err, errlen, MV_EINVAL,
                         "task field \"p\": \"%.63s\" is not a valid profile name "
                         "(1..63 of [a-z0-9._-], starting alphanumeric)",
                         t->profile);
    if (!mv_mailbox_valid(t->mailbox))
        return mv_seterr(err, errlen, MV_EINVAL,
                         "task field \"m\": not a valid mailbox (1..255 printable ASCII, no "
                         "space, '/' or '|')");
    return MV_OK;
}

/* ---- encode ---- */

static int pack_str(msgpack_packer *pk, const char *s)
{
    size_t n = strlen(s);
    return msgpack_pack_str(pk, n) || msgpack_pack_str_body(pk, s, n);
}

mv_err mv_task_encode(const mv_task *t, char **out, size_t *outlen, char *err, size_t errlen)
{
    if (!t || !out || !outlen) return mv_seterr(err, errlen, MV_EINVAL, "mv_task_encode: NULL");
    mv_err rc = task_check(t, err, errlen);
    if (rc != MV_OK) return rc;

    msgpack_sbuffer sb;
    msgpack_packer pk;
    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    int with_error = t->last_error[0] != '\0';
    int bad = msgpack_pack_map(&pk, with_error ? 12 : 11);
    bad = bad || pack_str(&pk, "v") || msgpack_pack_uint32(&pk, MV_TASK_VERSION);
    bad = bad || pack_str(&pk, "id") || pack_str(&pk, t->id);
    bad = bad || pack_str(&pk, "k") || pack_str(&pk, mv_task_kind_name(t->kind));
    bad = bad || pack_str(&pk, "t") || pack_str(&pk, t->tenant);
    bad = bad || pack_str(&pk, "p") || pack_str(&pk, t->profile);
    bad = bad || pack_str(&pk, "m") || pack_str(&pk, t->mailbox);
    bad = bad || pack_str(&pk, "r") || pack_str(&pk, t->run_id);
    bad = bad || pack_str(&pk, "a") || msgpack_pack_uint32(&pk, t->attempt);
    bad = bad || pack_str(&pk, "c") || msgpack_pack_uint32(&pk, t->chunk);
    bad = bad || pack_str(&pk, "nb") || msgpack_pack_int64(&pk, t->not_before_ms);
    bad = bad || pack_str(&pk, "ts") || msgpack_pack_int64(&pk, t->created_ms);
    if (with_error) bad = bad || pack_str(&pk, "e") || pack_str(&pk, t->last_error);
    if (bad) {
        msgpack_sbuffer_destroy(&sb);
        return mv_seterr(err, errlen, MV_ENOMEM, "out of memory encoding task");
    }
    *outlen = sb.size;
    *out = msgpack_sbuffer_release(&sb); /* malloc'd by msgpack's sbuffer: free() it */
    return MV_OK;
}

/* ---- decode ---- */

static const char *type_name(msgpack_object_type ty)
{
    switch (ty) {
    case MSGPACK_OBJECT_NIL:
        return "nil";
    case MSGPACK_OBJECT_BOOLEAN:
        return "boolean";
    case MSGPACK_OBJECT_POSITIVE_INTEGER:
    case MSGPACK_OBJECT_NEGATIVE_INTEGER:
        return "integer";
    case MSGPACK_OBJECT_FLOAT32:
    case MSGPACK_OBJECT_FLOAT64:
        return "float";
    case MSGPACK_OBJECT_STR:
        return "string";
    case MSGPACK_OBJECT_ARRAY:
        return "array";
    case MSGPACK_OBJECT_MAP:
        return "map";
    case MSGPACK_OBJECT_BIN:
        return "binary";
    case MSGPACK_OBJECT_EXT:
        return "ext";
    }
    return "unknown";
}

typedef enum { F_V, F_ID, F_K, F_T, F_P, F_M, F_R, F_A, F_C, F_NB, F_TS, F_E, F_COUNT } field_id;

static const char *const field_names[F_COUNT] = {"v", "id", "k", "t",  "p",  "m",
                                                 "r", "a",  "c", "nb", "ts", "e"};

/* Copy a msgpack string into a fixed field (size includes the NUL). */
static mv_err get_str(const msgpack_object *o, const char *name, char *dst, size_t size, char *err,
                      size_t errlen)
{
    if (o->type != MSGPACK_OBJECT_STR)
        return mv_seterr(err, errlen, MV_EINVAL, "task field \"%s\": expected a string, got %s",
                         name, type_name(o->type));
    size_t n = o->via.str.size;
    if (n >= size)
        return mv_seterr(err, errlen, MV_EINVAL,
                         "task field \"%s\": string of %zu bytes is too long (at most %zu)", name,
                         n, size - 1);
    if (n > 0 && memchr(o->via.str.ptr, '\0', n))
        return mv_seterr(err, errlen, MV_EINVAL, "task field \"%s\": string contains a NUL byte",
                         name);
    if (n > 0) memcpy(dst, o->via.str.ptr, n);
    dst[n] = '\0';
    return MV_OK;
}

static mv_err get_uint32(const msgpack_object *o, const char *name, uint32_t *dst, char *err,
                         size_t errlen)
{
    if (o->type == MSGPACK_OBJECT_NEGATIVE_INTEGER)
        return mv_seterr(err, errlen, MV_EINVAL, "task field \"%s\": %" PRId64 " is negative", name,
                         o->via.i64);
    if (o->type != MSGPACK_OBJECT_POSITIVE_INTEGER)
        return mv_seterr(err, errlen, MV_EINVAL, "task field \"%s\": expected an integer, got %s",
                         name, type_name(o->type));
    if (o->via.u64 > UINT32_MAX)
        return mv_seterr(err, errlen, MV_EINVAL,
                         "task field \"%s\": %" PRIu64 " is out of range (0..4294967295)", name,
                         o->via.u64);
    *dst = (uint32_t)o->via.u64;
    return MV_OK;
}

static mv_err get_int64(const msgpack_object *o, const char *name, int64_t *dst, char *err,
                        size_t errlen)
{
    if (o->type == MSGPACK_OBJECT_NEGATIVE_INTEGER) {
        *dst = o->via.i64;
        return MV_OK;
    }
    if (o->type != MSGPACK_OBJECT_POSITIVE_INTEGER)
        return mv_seterr(err, errlen, MV_EINVAL, "task field \"%s\": expected an integer, got %s",
                         name, type_name(o->type));
    if (o->via.u64 > INT64_MAX)
        return mv_seterr(err, errlen, MV_EINVAL, "task field \"%s\": %" PRIu64 " is out of range",
                         name, o->via.u64);
    *dst = (int64_t)o->via.u64;
    return MV_OK;
}

static mv_err decode_field(field_id f, const msgpack_object *o, mv_task *t, char *err,
                           size_t errlen)
{
    const char *name = field_names[f];
    switch (f) {
    case F_V: {
        mv_err rc = get_uint32(o, name, &t->version, err, errlen);
        if (rc != MV_OK) return rc;
        if (t->version > MV_TASK_VERSION)
            return mv_seterr(err, errlen, MV_EINVAL,
                             "task schema version %" PRIu32
                             " is newer than this worker understands (%d)",
                             t->version, MV_TASK_VERSION);
        if (t->version == 0)
            return mv_seterr(err, errlen, MV_EINVAL, "task schema version 0 is invalid");
        return MV_OK;
    }
    case F_ID:
        return get_str(o, name, t->id, sizeof t->id, err, errlen);
    case F_K: {
        char kind[16];
        if (o->type == MSGPACK_OBJECT_STR && o->via.str.size >= sizeof kind)
            return mv_seterr(err, errlen, MV_EINVAL, "task field \"k\": unknown task kind");
        mv_err rc = get_str(o, name, kind, sizeof kind, err, errlen);
        if (rc != MV_OK) return rc;
        if (strcmp(kind, "archive") == 0)
            t->kind = MV_TASK_ARCHIVE;
        else if (strcmp(kind, "export") == 0)
            t->kind = MV_TASK_EXPORT;
        else
            return mv_seterr(err, errlen, MV_EINVAL, "task field \"k\": unknown task kind \"%s\"",
                             printable_ascii(kind) ? kind : "?");
        return MV_OK;
    }
    case F_T:
        return get_str(o, name, t->tenant, sizeof t->tenant, err, errlen);
    case F_P:
        return get_str(o, name, t->profile, sizeof t->profile, err, errlen);
    case F_M:
        return get_str(o, name, t->mailbox, sizeof t->mailbox, err, errlen);
    case F_R:
        return get_str(o, name, t->run_id, sizeof t->run_id, err, errlen);
    case F_A:
        return get_uint32(o, name, &t->attempt, err, errlen);
    case F_C:
        return get_uint32(o, name, &t->chunk, err, errlen);
    case F_NB:
        return get_int64(o, name, &t->not_before_ms, err, errlen);
    case F_TS:
        return get_int64(o, name, &t->created_ms, err, errlen);
    case F_E:
        return get_str(o, name, t->last_error, sizeof t->last_error, err, errlen);
    case F_COUNT:
        break;
    }
    return mv_seterr(err, errlen, MV_ERR, "task decode: internal error");
}

static int field_lookup(const msgpack_object *key)
{
    if (key->type != MSGPACK_OBJECT_STR) return -1;
    for (int i = 0; i < F_COUNT; i++) {
        size_t n = strlen(field_names[i]);
        if (key->via.str.size == n && memcmp(key->via.str.ptr, field_names[i], n) == 0) return i;
    }
    return -1;
}

static mv_err decode_map(const msgpack_object *root, mv_task *t, char *err, size_t errlen)
{
    if (root->type != MSGPACK_OBJECT_MAP)
        return mv_seterr(err, errlen, MV_EINVAL, "task message is a %s, expected a map",
                         type_name(root->type));
    unsigned seen = 0;
    for (uint32_t i = 0; i < root->via.map.size; i++) {
        const msgpack_object_kv *kv = &root->via.map.ptr[i];
        int f = field_lookup(&kv->key);
        if (f < 0) continue; /* unknown key: a newer minor producer; ignore */
        if (seen & (1u << f))
            return mv_seterr(err, errlen, MV_EINVAL, "task field \"%s\" appears twice",
                             field_names[f]);
        seen |= 1u << f;
        mv_err rc = decode_field((field_id)f, &kv->val, t, err, errlen);
        if (rc != MV_OK) return rc;
    }
    static const struct {
        field_id f;
        const char *what;
    } required[] = {{F_V, "schema version"}, {F_ID, "task id"}, {F_K, "kind"},
                    {F_T, "tenant"},         {F_P, "profile"},  {F_M, "mailbox"}};
    for (size_t i = 0; i < sizeof required / sizeof required[0]; i++)
        if (!(seen & (1u << required[i].f)))
            return mv_seterr(err, errlen, MV_EINVAL, "task is missing required field \"%s\" (%s)",
                             field_names[required[i].f], required[i].what);
    return task_check(t, err, errlen);
}

mv_err mv_task_decode(const void *buf, size_t len, mv_task *t, char *err, size_t errlen)
{
    if (!buf || !t) return mv_seterr(err, errlen, MV_EINVAL, "mv_task_decode: NULL");
    if (len == 0) return mv_seterr(err, errlen, MV_EINVAL, "task message is empty");
    if (len > TASK_MAX_BYTES)
        return mv_seterr(err, errlen, MV_EINVAL, "task message of %zu bytes is too large (max %d)",
                         len, TASK_MAX_BYTES);
    char why[160];
    if (mv_mpack_check(buf, len, MV_MPACK_MSGPACK_C_DEPTH, 0, 0, NULL, why, sizeof why))
        return mv_seterr(err, errlen, MV_EINVAL,
                         "task message is not a single well-formed msgpack value (%zu bytes): %s",
                         len, why);

    msgpack_unpacked up;
    msgpack_unpacked_init(&up);
    size_t off = 0;
    mv_err rc;
    msgpack_unpack_return ur = msgpack_unpack_next(&up, buf, len, &off);
    if (ur == MSGPACK_UNPACK_NOMEM_ERROR) {
        /* also returned when nesting exceeds msgpack-c's fixed stack */
        rc = mv_seterr(err, errlen, MV_EINVAL,
                       "task message cannot be unpacked (too deeply nested "
                       "or out of memory)");
        goto out;
    }
    if (ur != MSGPACK_UNPACK_SUCCESS || off != len) {
        rc = mv_seterr(err, errlen, MV_EINVAL, "task message is not a single msgpack value");
        goto out;
    }
    mv_task tmp;
    memset(&tmp, 0, sizeof tmp);
    rc = decode_map(&up.data, &tmp, err, errlen);
    if (rc == MV_OK) *t = tmp;
out:
    msgpack_unpacked_destroy(&up);
    return rc;
}

void mv_task_key(const mv_task *t, char *key, size_t keylen)
{
    if (!key || keylen == 0) return;
    snprintf(key, keylen, "%s/%s", t->tenant, t->mailbox);
}

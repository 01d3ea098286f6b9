/* storecat.c - store definitions, tenant keys and retention in Redis (see mv/storecat.h).
 *
 * Key hierarchy: the master key (a file, or whatever a KMS hands out) wraps every tenant key;
 * a tenant has one naming key, which never changes (object names depend on it), and data keys
 * by version. A key is wrapped with mv_crypt_seal under associated data that names its place
 * ("tenant-key:<tenant>:v3"), so a wrapped key copied to another tenant or version does not
 * open. Wrapped keys are stored hex-encoded; nothing secret reaches Redis in the clear.
 * Writes that change several keys (rotation) are one HSET, so a crash cannot leave a tenant
 * with some keys wrapped by the old master key and some by the new. */
#include "mv/storecat.h"

#include <openssl/crypto.h>
#include <openssl/rand.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define KEYLEN 640

static int unhex(const char *in, unsigned char *out, size_t max, size_t *n)
{
    size_t len = strlen(in);
    if (len % 2 || len / 2 > max) return -1;
    for (size_t i = 0; i < len / 2; i++) {
        unsigned v = 0;
        for (int j = 0; j < 2; j++) {
            char c = in[2 * i + j];
            v <<= 4;
            if (c >= '0' && c <= '9')
                v |= (unsigned)(c - '0');
            else if (c >= 'a' && c <= 'f')
                v |= (unsigned)(c - 'a' + 10);
            else
                return -1;
        }
        out[i] = (unsigned char)v;
    }
    *n = len / 2;
    return 0;
}

static int store_name_valid(const char *n)
{
    return n && strcmp(n, "default") != 0 && mv_name_valid(n);
}

/* Seal a secret for a place and hex-encode it (*out malloc'd). */
static mv_err seal_hex(const unsigned char master[MV_KEY_LEN], const char *ad, const void *plain,
                       size_t len, char **out, char *err, size_t errlen)
{
    unsigned char *blob = NULL;
    size_t bloblen = 0;
    mv_err rc = mv_crypt_seal(master, ad, plain, len, &blob, &bloblen, err, errlen);
    if (rc) return rc;
    *out = malloc(bloblen * 2 + 1);
    if (*out)
        mv_hex(blob, bloblen, *out);
    else
        rc = mv_seterr(err, errlen, MV_ENOMEM, "out of memory");
    free(blob);
    return rc;
}

/* Unwrap a hex-encoded sealed secret of exactly want bytes (0: any, up to max) into out. */
static mv_err open_hex(const unsigned char master[MV_KEY_LEN], const char *ad, const char *hex,
                       unsigned char *out, size_t max, size_t want, size_t *got, char *err,
                       size_t errlen)
{
    unsigned char blob[1024];
    size_t n = 0;
    if (unhex(hex, blob, sizeof blob, &n) != 0)
        return mv_seterr(err, errlen, MV_ECORRUPT, "%s: not a wrapped key", ad);
    unsigned char *plain = NULL;
    size_t plen = 0;
    mv_err rc = mv_crypt_open(master, ad, blob, n, &plain, &plen, err, errlen);
    if (rc) return mv_seterr(err, errlen, rc, "%s: cannot be unwrapped (wrong master key?)", ad);
    if ((want && plen != want) || plen > max) {
        rc = mv_seterr(err, errlen, MV_ECORRUPT, "%s: unexpected length", ad);
    } else {
        memcpy(out, plain, plen);
        if (got) *got = plen;
    }
    mv_crypt_wipe(plain, plen);
    free(plain);
    return rc;
}

/* ---- store definitions -------------------------------------------------------------------- */

mv_err mv_storecat_put(mv_state *st, const unsigned char master[MV_KEY_LEN],
                       const mv_store_def *def, char *err, size_t errlen)
{
    char key[KEYLEN], ad[128], part[32], ps[4];
    if (!store_name_valid(def->name))
        return mv_seterr(err, errlen, MV_EINVAL,
                         "store name: 1..63 of [a-z0-9._-], not \"default\"");
    if (strcmp(def->type, "s3") != 0 && strcmp(def->type, "fs") != 0)
        return mv_seterr(err, errlen, MV_EINVAL, "store type: \"s3\" or \"fs\"");
    if (!strcmp(def->type, "fs") && def->root[0] != '/')
        return mv_seterr(err, errlen, MV_EINVAL, "root: an absolute path is required");
    if (!strcmp(def->type, "s3") &&
        (!def->endpoint[0] || !def->bucket[0] || !def->access_key[0] || !def->secret_key[0]))
        return mv_seterr(err, errlen, MV_EINVAL,
                         "s3 store: endpoint, bucket, access_key and secret_key are required");
    char *sealed = NULL;
    snprintf(key, sizeof key, "mv:store:%s", def->name);
    snprintf(ad, sizeof ad, "store-secret:%s", def->name);
    mv_err rc = MV_OK;
    if (def->secret_key[0])
        rc = seal_hex(master, ad, def->secret_key, strlen(def->secret_key), &sealed, err, errlen);
    if (rc) return rc;
    snprintf(part, sizeof part, "%lld", (long long)def->part_size);
    snprintf(ps, sizeof ps, "%d", def->path_style ? 1 : 0);
    const char *f[] = {"type",       "root",   "endpoint", "region",    "bucket",   "path_style",
                       "access_key", "secret", "ca_file",  "part_size", "spool_dir"};
    const char *v[] = {def->type,    def->root, def->endpoint,   def->region,
                       def->bucket,  ps,        def->access_key, sealed ? sealed : "",
                       def->ca_file, part,      def->spool_dir};
    rc = mv_state_hdel(st, key, NULL, err, errlen); /* a replaced definition keeps no old field */
    if (rc == MV_OK) rc = mv_state_hset_many(st, key, 11, f, v, err, errlen);
    if (rc == MV_OK) rc = mv_state_set_change(st, "mv:stores", def->name, 1, err, errlen);
    free(sealed);
    return rc;
}

typedef struct defread {
    mv_store_def *d;
    char sealed[1024];
} defread;

static int def_field(void *ud, const char *f, const char *v)
{
    defread *r = ud;
    mv_store_def *d = r->d;
#define CP(name, dst)                                                                              \
    if (strcmp(f, name) == 0) snprintf(dst, sizeof dst, "%s", v)
    CP("type", d->type);
    CP("root", d->root);
    CP("endpoint", d->endpoint);
    CP("region", d->region);
    CP("bucket", d->bucket);
    CP("access_key", d->access_key);
    CP("ca_file", d->ca_file);
    CP("spool_dir", d->spool_dir);
    CP("secret", r->sealed);
#undef CP
    if (strcmp(f, "path_style") == 0) d->path_style = atoi(v);
    if (strcmp(f, "part_size") == 0) d->part_size = atoll(v);
    return 0;
}

mv_err mv_storecat_get(mv_state *st, const unsigned char master[MV_KEY_LEN], const char *name,
                       mv_store_def *def, char *err, size_t errlen)
{
    char key[KEYLEN], ad[128];
    memset(def, 0, sizeof *def);
    if (!store_name_valid(name)) return mv_seterr(err, errlen, MV_EINVAL, "invalid store name");
    snprintf(key, sizeof key, "mv:store:%s", name);
    defread r = {def, ""};
    mv_err rc = mv_state_hgetall_str(st, key, def_field, &r, err, errlen);
    if (rc) return rc;
    if (!def->type[0]) return mv_seterr(err, errlen, MV_ENOTFOUND, "store %s is not defined", name);
    snprintf(def->name, sizeof def->name, "%s", name);
    if (r.sealed[0]) {
        if (!master)
            return mv_seterr(err, errlen, MV_EINVAL,
                             "store %s: the master key is needed for its secret", name);
        size_t n = 0;
        snprintf(ad, sizeof ad, "store-secret:%s", name);
        rc = open_hex(master, ad, r.sealed, (unsigned char *)def->secret_key,
                      sizeof def->secret_key - 1, 0, &n, err, errlen);
        if (rc == MV_OK) def->secret_key[n] = '\0';
    }
    return rc;
}

mv_err mv_storecat_list(mv_state *st, int (*cb)(void *ud, const char *name), void *ud, char *err,
                        size_t errlen)
{
    return mv_state_set_members(st, "mv:stores", cb, ud, err, errlen);
}

typedef struct user_find {
    mv_state *st;
    const char *store;
    char user[64];
} user_find;

static int find_user(void *ud, const char *tenant)
{
    user_find *u = ud;
    char name[64], err[MV_ERRLEN];
    if (mv_storecat_tenant_store_get(u->st, tenant, name, sizeof name, err, sizeof err) == MV_OK &&
        strcmp(name, u->store) == 0) {
        snprintf(u->user, sizeof u->user, "%s", tenant);
        return 1;
    }
    return 0;
}

mv_err mv_storecat_del(mv_state *st, const char *name, char *err, size_t errlen)
{
    char key[KEYLEN];
    if (!store_name_valid(name)) return mv_seterr(err, errlen, MV_EINVAL, "invalid store name");
    user_find u = {st, name, ""};
    mv_err rc = mv_state_tenant_list(st, find_user, &u, err, errlen);
    if (rc && rc != MV_ECANCEL) return rc;
    if (u.user[0])
        return mv_seterr(err, errlen, MV_EBUSY, "store %s is in use by tenant %s", name, u.user);
    snprintf(key, sizeof key, "mv:store:%s", name);
    rc = mv_state_set_change(st, "mv:stores", name, 0, err, errlen);
    if (rc == MV_OK) rc = mv_state_hdel(st, key, NULL, err, errlen);
    return rc;
}

/* ---- tenants ------------------------------------------------------------------------------ */

static mv_err tenant_key(mv_state *st, const char *tenant, char *key, size_t n, char *err,
                         size_t errlen)
{
    if (!mv_name_valid(tenant)) return mv_seterr(err, errlen, MV_EINVAL, "invalid tenant name");
    if (!mv_state_tenant_exists(st, tenant))
        return mv_seterr(err, errlen, MV_ENOTFOUND, "tenant %s does not exist", tenant);
    snprintf(key, n, "mv:tenant:%s", tenant);
    return MV_OK;
}

mv_err mv_storecat_tenant_store(mv_state *st, const char *tenant, const char *name, char *err,
                                size_t errlen)
{
    char key[KEYLEN];
    mv_err rc = tenant_key(st, tenant, key, sizeof key, err, errlen);
    if (rc) return rc;
    if (!name || !name[0] || strcmp(name, "default") == 0)
        return mv_state_hdel(st, key, "store", err, errlen);
    char sk[KEYLEN];
    void *v = NULL;
    size_t n = 0;
    if (!store_name_valid(name)) return mv_seterr(err, errlen, MV_EINVAL, "invalid store name");
    snprintf(sk, sizeof sk, "mv:store:%s", name);
    rc = mv_state_hget(st, sk, "type", &v, &n, err, errlen);
    free(v);
    if (rc == MV_ENOTFOUND)
        return mv_seterr(err, errlen, MV_ENOTFOUND,
                         "store %s is not defined (mailvault store add %s ...)", name, name);
    if (rc) return rc;
    return mv_state_hset(st, key, "store", name, strlen(name), err, errlen);
}

mv_err mv_storecat_tenant_store_get(mv_state *st, const char *tenant, char *name, size_t namelen,
                                    char *err, size_t errlen)
{
    char key[KEYLEN];
    void *v = NULL;
    size_t n = 0;
    name[0] = '\0';
    if (!mv_name_valid(tenant)) return mv_seterr(err, errlen, MV_EINVAL, "invalid tenant name");
    snprintf(key, sizeof key, "mv:tenant:%s", tenant);
    mv_err rc = mv_state_hget(st, key, "store", &v, &n, err, errlen);
    if (rc == MV_OK) snprintf(name, namelen, "%s", (char *)v);
    free(v);
    return rc == MV_ENOTFOUND ? MV_OK : rc;
}

typedef struct keyread {
    char current[16];
    char naming[256];
    int n;
    uint32_t version[MV_STORE_MAXKEYS];
    char wrapped[MV_STORE_MAXKEYS][256];
    int overflow;
} keyread;

static int key_field(void *ud, const char *f, const char *v)
{
    keyread *k = ud;
    if (strcmp(f, "current") == 0) snprintf(k->current, sizeof k->current, "%s", v);
    if (strcmp(f, "naming") == 0) snprintf(k->naming, sizeof k->naming, "%s", v);
    if (f[0] == 'v' && f[1] >= '1' && f[1] <= '9') {
        if (k->n == MV_STORE_MAXKEYS) {
            k->overflow = 1;
            return 0;
        }
        k->version[k->n] = (uint32_t)strtoul(f + 1, NULL, 10);
        snprintf(k->wrapped[k->n], sizeof k->wrapped[k->n], "%s", v);
        k->n++;
    }
    return 0;
}

static mv_err keys_read(mv_state *st, const char *tenant, keyread *k, char *err, size_t errlen)
{
    char key[KEYLEN];
    memset(k, 0, sizeof *k);
    snprintf(key, sizeof key, "mv:tkeys:%s", tenant);
    mv_err rc = mv_state_hgetall_str(st, key, key_field, k, err, errlen);
    if (rc == MV_OK && k->overflow)
        rc = mv_seterr(err, errlen, MV_ECORRUPT, "tenant %s has more than %d key versions", tenant,
                       MV_STORE_MAXKEYS);
    return rc;
}

/* Unwrap every key of the tenant into pol (keys, naming, current). */
static mv_err keys_unwrap(const unsigned char master[MV_KEY_LEN], const char *tenant,
                          const keyread *k, mv_store_policy *pol, char *err, size_t errlen)
{
    char ad[128];
    mv_err rc = MV_OK;
    if (k->naming[0]) {
        snprintf(ad, sizeof ad, "tenant-key:%s:naming", tenant);
        if ((rc = open_hex(master, ad, k->naming, pol->naming, 32, 32, NULL, err, errlen)))
            return rc;
        pol->has_naming = 1;
    }
    for (int i = 0; i < k->n; i++) {
        snprintf(ad, sizeof ad, "tenant-key:%s:v%u", tenant, (unsigned)k->version[i]);
        if ((rc = open_hex(master, ad, k->wrapped[i], pol->key[i], 32, 32, NULL, err, errlen)))
            return rc;
        pol->key_version[i] = k->version[i];
    }
    pol->nkeys = k->n;
    pol->key_current = (uint32_t)strtoul(k->current, NULL, 10);
    return MV_OK;
}

/* Wrap every key of pol with master and write them in one HSET. */
static mv_err keys_write(mv_state *st, const unsigned char master[MV_KEY_LEN], const char *tenant,
                         const mv_store_policy *pol, char *err, size_t errlen)
{
    char key[KEYLEN], ad[128], cur[16];
    const char *f[MV_STORE_MAXKEYS + 2];
    char *v[MV_STORE_MAXKEYS + 2] = {0};
    char names[MV_STORE_MAXKEYS][16];
    int n = 0;
    mv_err rc = MV_OK;
    snprintf(cur, sizeof cur, "%u", (unsigned)pol->key_current);
    f[n] = "current";
    v[n++] = strdup(cur);
    snprintf(ad, sizeof ad, "tenant-key:%s:naming", tenant);
    f[n] = "naming";
    rc = seal_hex(master, ad, pol->naming, 32, &v[n++], err, errlen);
    for (int i = 0; rc == MV_OK && i < pol->nkeys; i++) {
        snprintf(names[i], sizeof names[i], "v%u", (unsigned)pol->key_version[i]);
        snprintf(ad, sizeof ad, "tenant-key:%s:v%u", tenant, (unsigned)pol->key_version[i]);
        f[n] = names[i];
        rc = seal_hex(master, ad, pol->key[i], 32, &v[n++], err, errlen);
    }
    if (rc == MV_OK && !v[0]) rc = mv_seterr(err, errlen, MV_ENOMEM, "out of memory");
    snprintf(key, sizeof key, "mv:tkeys:%s", tenant);
    if (rc == MV_OK) rc = mv_state_hset_many(st, key, n, f, (const char *const *)v, err, errlen);
    for (int i = 0; i < n; i++)
        free(v[i]);
    return rc;
}

mv_err mv_storecat_encryption(mv_state *st, const unsigned char master[MV_KEY_LEN],
                              const char *tenant, int on, char *err, size_t errlen)
{
    char key[KEYLEN];
    mv_err rc = tenant_key(st, tenant, key, sizeof key, err, errlen);
    if (rc) return rc;
    if (on) {
        keyread *k = malloc(sizeof *k);
        mv_store_policy *pol = calloc(1, sizeof *pol);
        if (!k || !pol) rc = mv_seterr(err, errlen, MV_ENOMEM, "out of memory");
        if (rc == MV_OK) rc = keys_read(st, tenant, k, err, errlen);
        if (rc == MV_OK && !k->naming[0]) {
            /* first time: a naming key and data key v1 */
            if (RAND_bytes(pol->naming, 32) != 1 || RAND_bytes(pol->key[0], 32) != 1) {
                rc = mv_seterr(err, errlen, MV_ERR, "no random bytes for a key");
            } else {
                pol->has_naming = 1;
                pol->nkeys = 1;
                pol->key_version[0] = 1;
                pol->key_current = 1;
                rc = keys_write(st, master, tenant, pol, err, errlen);
            }
        } else if (rc == MV_OK) {
            rc = keys_unwrap(master, tenant, k, pol, err, errlen); /* the master key fits */
        }
        if (pol) mv_store_policy_wipe(pol);
        free(pol);
        free(k);
        if (rc) return rc;
    }
    return mv_state_hset(st, key, "encryption", on ? "on" : "off", on ? 2 : 3, err, errlen);
}

mv_err mv_storecat_rotate(mv_state *st, const unsigned char master[MV_KEY_LEN],
                          const unsigned char *old_master, const char *tenant, uint32_t *version,
                          char *err, size_t errlen)
{
    char key[KEYLEN];
    mv_err rc = tenant_key(st, tenant, key, sizeof key, err, errlen);
    if (rc) return rc;
    keyread *k = malloc(sizeof *k);
    mv_store_policy *pol = calloc(1, sizeof *pol);
    if (!k || !pol) rc = mv_seterr(err, errlen, MV_ENOMEM, "out of memory");
    if (rc == MV_OK) rc = keys_read(st, tenant, k, err, errlen);
    if (rc == MV_OK && !k->naming[0])
        rc = mv_seterr(err, errlen, MV_EINVAL,
                       "tenant %s has no keys yet (mailvault tenant set %s --encryption on)",
                       tenant, tenant);
    if (rc == MV_OK)
        rc = keys_unwrap(old_master ? old_master : master, tenant, k, pol, err, errlen);
    if (rc == MV_OK && pol->nkeys == MV_STORE_MAXKEYS)
        rc = mv_seterr(err, errlen, MV_ETOOBIG, "tenant %s already has %d key versions", tenant,
                       MV_STORE_MAXKEYS);
    if (rc == MV_OK) {
        uint32_t max = 0;
        for (int i = 0; i < pol->nkeys; i++)
            if (pol->key_version[i] > max) max = pol->key_version[i];
        if (RAND_bytes(pol->key[pol->nkeys], 32) != 1) {
            rc = mv_seterr(err, errlen, MV_ERR, "no random bytes for a key");
        } else {
            pol->key_version[pol->nkeys++] = max + 1;
            pol->key_current = max + 1;
            *version = max + 1;
            rc = keys_write(st, master, tenant, pol, err, errlen);
        }
    }
    if (pol) mv_store_policy_wipe(pol);
    free(pol);
    free(k);
    return rc;
}

mv_err mv_storecat_retention(mv_state *st, const char *tenant, const char *mode, int days,
                             char *err, size_t errlen)
{
    char key[KEYLEN], d[16];
    mv_err rc = tenant_key(st, tenant, key, sizeof key, err, errlen);
    if (rc) return rc;
    if (!mode || !mode[0] || strcmp(mode, "none") == 0) {
        rc = mv_state_hdel(st, key, "retention_mode", err, errlen);
        if (rc == MV_OK) rc = mv_state_hdel(st, key, "retention_days", err, errlen);
        return rc;
    }
    if (strcmp(mode, "GOVERNANCE") != 0 && strcmp(mode, "COMPLIANCE") != 0)
        return mv_seterr(err, errlen, MV_EINVAL, "retention mode: none, GOVERNANCE or COMPLIANCE");
    if (days < 1 || days > 36500)
        return mv_seterr(err, errlen, MV_EINVAL, "retention days: 1..36500");
    snprintf(d, sizeof d, "%d", days);
    const char *f[] = {"retention_mode", "retention_days"};
    const char *v[] = {mode, d};
    return mv_state_hset_many(st, key, 2, f, v, err, errlen);
}

/* ---- the policy provider ------------------------------------------------------------------ */

typedef struct tread {
    char store[64], enc[8], mode[16], days[16];
} tread;

static int tenant_field(void *ud, const char *f, const char *v)
{
    tread *t = ud;
    if (strcmp(f, "store") == 0) snprintf(t->store, sizeof t->store, "%s", v);
    if (strcmp(f, "encryption") == 0) snprintf(t->enc, sizeof t->enc, "%s", v);
    if (strcmp(f, "retention_mode") == 0) snprintf(t->mode, sizeof t->mode, "%s", v);
    if (strcmp(f, "retention_days") == 0) snprintf(t->days, sizeof t->days, "%s", v);
    return 0;
}

mv_err mv_storecat_policy(void *ud, const char *tenant, mv_store_policy *out, char *err,
                          size_t errlen)
{
    mv_storecat_ctx *c = ud;
    char key[KEYLEN];
    tread t;
    memset(&t, 0, sizeof t);
    snprintf(key, sizeof key, "mv:tenant:%s", tenant);
    mv_err rc = mv_state_hgetall_str(c->st, key, tenant_field, &t, err, errlen);
    if (rc) return rc;
    if (t.store[0]) {
        rc = mv_storecat_get(c->st, c->has_master ? c->master : NULL, t.store, &out->store, err,
                             errlen);
        if (rc) {
            char why[MV_ERRLEN];
            snprintf(why, sizeof why, "%s", err ? err : "");
            return mv_seterr(err, errlen, rc, "tenant %s: %s", tenant, why);
        }
    }
    keyread *k = malloc(sizeof *k);
    if (!k) return mv_seterr(err, errlen, MV_ENOMEM, "out of memory");
    rc = keys_read(c->st, tenant, k, err, errlen);
    if (rc == MV_OK && k->naming[0]) {
        if (!c->has_master)
            rc = mv_seterr(err, errlen, MV_EINVAL,
                           "tenant %s has encryption keys: master_key_file must be configured",
                           tenant);
        else
            rc = keys_unwrap(c->master, tenant, k, out, err, errlen);
    }
    free(k);
    if (rc) return rc;
    out->encrypt = strcmp(t.enc, "on") == 0;
    if (t.mode[0] && atoi(t.days) > 0) {
        snprintf(out->lock_mode, sizeof out->lock_mode, "%s", t.mode);
        out->retain_seconds = (int64_t)atoi(t.days) * 86400;
    }
    return MV_OK;
}

/* ---- sweeping every store ----------------------------------------------------------------- */

typedef struct sweep_ctx {
    mv_state *st;
    const unsigned char *master;
    mv_store *s;
    int age, removed;
    mv_err e;
    char *err;
    size_t errlen;
} sweep_ctx;

static int sweep_one(void *ud, const char *name)
{
    sweep_ctx *x = ud;
    mv_store_def *d = calloc(1, sizeof *d);
    int n = 0;
    if (!d) {
        x->e = mv_seterr(x->err, x->errlen, MV_ENOMEM, "out of memory");
        return 1;
    }
    /* one unreachable or misconfigured store does not keep the others from being swept: the
     * first error is reported at the end */
    char why[MV_ERRLEN];
    mv_err e = name[0] ? mv_storecat_get(x->st, x->master, name, d, why, sizeof why) : MV_OK;
    if (e == MV_OK) e = mv_store_sweep_def(x->s, d, x->age, &n, why, sizeof why);
    if (e && !x->e)
        x->e = mv_seterr(x->err, x->errlen, e, "store %s: %s", name[0] ? name : "default", why);
    x->removed += n;
    mv_crypt_wipe(d, sizeof *d);
    free(d);
    return 0;
}

mv_err mv_storecat_sweep_all(mv_state *st, const unsigned char master[MV_KEY_LEN], mv_store *s,
                             int max_age_s, int *removed, char *err, size_t errlen)
{
    sweep_ctx x = {st, master, s, max_age_s, 0, MV_OK, err, errlen};
    sweep_one(&x, "");
    char why[MV_ERRLEN];
    mv_err e = mv_storecat_list(st, sweep_one, &x, why, sizeof why);
    if (e && !x.e) x.e = mv_seterr(err, errlen, e, "%s", why);
    *removed = x.removed;
    return x.e;
}

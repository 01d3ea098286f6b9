/* storecat.h - where each tenant's archive lives and how it is protected, kept in Redis:
 * named store definitions (S3 secrets sealed with the master key), the tenant's store,
 * its encryption keys (data keys by version and a naming key, all wrapped by the master
 * key) and its retention. mv_storecat_policy is the mv_store policy callback.
 *
 * Redis (docs/redis-keys.md): mv:stores (set), mv:store:{name} (hash), mv:tenant:{t} fields
 * store, encryption, retention_mode, retention_days, and mv:tkeys:{t} (hash: current, naming,
 * v<N>). */
#ifndef MV_STORECAT_H
#define MV_STORECAT_H

#include "mv/crypt.h"
#include "mv/state.h"
#include "mv/store.h"

/* Add or replace a store definition (type "s3" or "fs"); the secret is sealed. */
mv_err mv_storecat_put(mv_state *st, const unsigned char master[MV_KEY_LEN],
                       const mv_store_def *def, char *err, size_t errlen);
/* MV_ENOTFOUND for an unknown name. The secret is unsealed into def (wipe it after use). */
mv_err mv_storecat_get(mv_state *st, const unsigned char master[MV_KEY_LEN], const char *name,
                       mv_store_def *def, char *err, size_t errlen);
mv_err mv_storecat_list(mv_state *st, int (*cb)(void *ud, const char *name), void *ud, char *err,
                        size_t errlen);
/* Refuses (MV_EBUSY) while a tenant still uses the store. */
mv_err mv_storecat_del(mv_state *st, const char *name, char *err, size_t errlen);

/* Point a tenant at a store ("" or "default": the default store). */
mv_err mv_storecat_tenant_store(mv_state *st, const char *tenant, const char *name, char *err,
                                size_t errlen);
/* The tenant's store name ("" for the default). */
mv_err mv_storecat_tenant_store_get(mv_state *st, const char *tenant, char *name, size_t namelen,
                                    char *err, size_t errlen);
/* Turn encryption on (creating the naming key and data key v1 if the tenant has none) or
 * off (new objects plain; the keys stay, so old objects stay readable). */
mv_err mv_storecat_encryption(mv_state *st, const unsigned char master[MV_KEY_LEN],
                              const char *tenant, int on, char *err, size_t errlen);
/* New data key version for new objects; every key of the tenant is re-wrapped with master.
 * old_master (may be NULL = master) unwraps the existing keys, which moves a tenant to a new
 * master key. *version gets the new version. */
mv_err mv_storecat_rotate(mv_state *st, const unsigned char master[MV_KEY_LEN],
                          const unsigned char *old_master, const char *tenant, uint32_t *version,
                          char *err, size_t errlen);
/* mode "" (none), "GOVERNANCE" or "COMPLIANCE"; days > 0 with a mode. */
mv_err mv_storecat_retention(mv_state *st, const char *tenant, const char *mode, int days,
                             char *err, size_t errlen);

/* Remove what dead writers left (temp files, multipart uploads older than max_age_s) in the
 * default store and every defined store; a store that fails does not stop the others (the
 * first failure is returned). */
mv_err mv_storecat_sweep_all(mv_state *st, const unsigned char master[MV_KEY_LEN], mv_store *s,
                             int max_age_s, int *removed, char *err, size_t errlen);

/* Policy provider for mv_store_set_policy: ud is an mv_storecat_ctx. */
typedef struct mv_storecat_ctx {
    mv_state *st; /* a connection used only by the store (calls are serialised by it) */
    unsigned char master[MV_KEY_LEN];
    int has_master;
} mv_storecat_ctx;
mv_err mv_storecat_policy(void *ud, const char *tenant, mv_store_policy *out, char *err,
                          size_t errlen);

#endif

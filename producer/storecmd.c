/* storecmd.c - `mailvault store ...`, the storage settings of `tenant set`, `tenant
 * rotate-key`, and the store handle every archive-reading command opens (cli_store_open).
 *
 * Secrets never come from argv: an S3 secret key is read from a file (--secret-file, "-" for
 * standard input) and sealed with the master key before it reaches Redis. */
#include "cli.h"

#include "mv/archive.h"
#include "mv/crypt.h"
#include "mv/s3.h" /* MV_S3_MIN_PART */
#include "mv/storecat.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

struct cli_store {
    mv_store *s;
    mv_storecat_ctx ctx;
};

mv_store *cli_store_open(cli *c, cli_store **out)
{
    char err[MV_ERRLEN];
    *out = NULL;
    cli_store *cs = calloc(1, sizeof *cs);
    if (!cs) {
        cli_fail(1, "out of memory");
        return NULL;
    }
    if (mv_store_open(c->cfg.store_root, 0, c->cfg.zstd_level, &cs->s, err, sizeof err)) {
        cli_fail(1, "%s", err);
        free(cs);
        return NULL;
    }
    /* where each tenant's archive lives, and its keys, come from the catalog */
    if (mv_state_connect(&c->cfg, &cs->ctx.st, err, sizeof err)) {
        cli_fail(1, "%s", err);
        cli_store_close(cs);
        return NULL;
    }
    if (c->cfg.master_key_file[0]) {
        if (mv_crypt_load_key(c->cfg.master_key_file, cs->ctx.master, err, sizeof err)) {
            cli_fail(1, "%s", err);
            cli_store_close(cs);
            return NULL;
        }
        cs->ctx.has_master = 1;
    }
    mv_store_set_policy(cs->s, mv_storecat_policy, &cs->ctx, 60000);
    *out = cs;
    return cs->s;
}

void cli_store_close(cli_store *cs)
{
    if (!cs) return;
    mv_store_close(cs->s);
    mv_state_close(cs->ctx.st);
    mv_crypt_wipe(cs->ctx.master, sizeof cs->ctx.master);
    free(cs);
}

/* Read a secret from a file or stdin ("-"): the first line, at most n-1 bytes. */
static int read_secret(const char *path, char *out, size_t n)
{
    FILE *f = strcmp(path, "-") == 0 ? stdin : fopen(path, "r");
    if (!f) return cli_fail(2, "--secret-file %s: %s", path, strerror(errno));
    int rc = 0;
    if (!fgets(out, (int)n, f)) rc = cli_fail(2, "--secret-file %s: empty", path);
    if (f != stdin) fclose(f);
    if (rc) return rc;
    out[strcspn(out, "\r\n")] = '\0';
    if (!out[0]) return cli_fail(2, "--secret-file %s: empty", path);
    return 0;
}

static int load_master(cli *c, unsigned char key[MV_KEY_LEN])
{
    char err[MV_ERRLEN];
    if (!c->cfg.master_key_file[0])
        return cli_fail(2, "master_key_file is not configured (MAILVAULT_MASTER_KEY_FILE)");
    if (mv_crypt_load_key(c->cfg.master_key_file, key, err, sizeof err))
        return cli_fail(2, "%s", err);
    return 0;
}

static int print_line(void *ud, const char *name)
{
    (void)ud;
    printf("%s\n", name);
    return 0;
}

static const char store_usage[] =
    "usage: mailvault store add NAME --type s3 --endpoint URL --bucket B --access-key K\n"
    "                 --secret-file F [--region R] [--virtual-hosted] [--ca-file F]\n"
    "                 [--part-size BYTES] [--spool-dir DIR] [--create-bucket [--object-lock]]\n"
    "       mailvault store add NAME --type fs --root DIR\n"
    "       mailvault store list | show NAME | rm NAME\n"
    "       mailvault store migrate --tenant T --to STORE [--limit N] [--force]\n"
    "       mailvault store sweep [--store NAME] [--older-than SECONDS]";

/* Create the bucket (and check that the definition works). */
static int create_bucket(const mv_store_def *d, int lock)
{
    char err[MV_ERRLEN];
    if (mv_store_create_bucket(d, lock, err, sizeof err)) return cli_fail(1, "%s", err);
    return 0;
}

int cmd_store(cli *c, int argc, char **argv)
{
    enum {
        TYPE,
        ENDPOINT,
        BUCKET,
        REGION,
        ACCESS,
        SECRET,
        VHOST,
        CA,
        PART,
        SPOOL,
        ROOT,
        CREATE,
        LOCK,
        NOPTS
    };
    opt opts[NOPTS + 1] = {
        {"type", 1, NULL, 0},           {"endpoint", 1, NULL, 0},   {"bucket", 1, NULL, 0},
        {"region", 1, NULL, 0},         {"access-key", 1, NULL, 0}, {"secret-file", 1, NULL, 0},
        {"virtual-hosted", 0, NULL, 0}, {"ca-file", 1, NULL, 0},    {"part-size", 1, NULL, 0},
        {"spool-dir", 1, NULL, 0},      {"root", 1, NULL, 0},       {"create-bucket", 0, NULL, 0},
        {"object-lock", 0, NULL, 0},    {NULL, 0, NULL, 0}};
    const char *pos[1];
    int npos, rc;
    char err[MV_ERRLEN];
    if (argc < 1) return cli_fail(2, "%s", store_usage);
    if (strcmp(argv[0], "migrate") == 0) return cmd_store_migrate(c, argc - 1, argv + 1);
    if (strcmp(argv[0], "sweep") == 0) return cmd_store_sweep(c, argc - 1, argv + 1);
    if ((rc = cli_parse_opts(argc - 1, argv + 1, opts, pos, 1, &npos))) return rc;
    const char *sub = argv[0];
    if (strcmp(sub, "list") != 0 && npos != 1) return cli_fail(2, "%s", store_usage);
    unsigned char master[MV_KEY_LEN];
    int need_master = strcmp(sub, "add") == 0 || strcmp(sub, "show") == 0;
    if (need_master && (rc = load_master(c, master))) return rc;
    mv_state *st = cli_state(c);
    if (!st) return 1;
    rc = 0;
    if (strcmp(sub, "add") == 0) {
        mv_store_def *d = calloc(1, sizeof *d);
        if (!d) {
            rc = cli_fail(1, "out of memory");
            goto out;
        }
        snprintf(d->name, sizeof d->name, "%s", pos[0]);
        snprintf(d->type, sizeof d->type, "%s", opts[TYPE].value ? opts[TYPE].value : "");
        d->path_style = !opts[VHOST].set;
#define SET(i, f)                                                                                  \
    if (opts[i].value) snprintf(d->f, sizeof d->f, "%s", opts[i].value)
        SET(ENDPOINT, endpoint);
        SET(BUCKET, bucket);
        SET(REGION, region);
        SET(ACCESS, access_key);
        SET(CA, ca_file);
        SET(SPOOL, spool_dir);
        SET(ROOT, root);
#undef SET
        if (opts[PART].value) {
            char *end;
            long long v = strtoll(opts[PART].value, &end, 10);
            if (*end || v < (long long)MV_S3_MIN_PART || v > (1LL << 30))
                rc = cli_fail(2, "--part-size: %s is not a number of bytes in 5 MiB..1 GiB",
                              opts[PART].value);
            d->part_size = v;
        }
        if (!rc && strcmp(d->type, "s3") == 0) {
            if (!opts[SECRET].value)
                rc = cli_fail(2, "--secret-file is required for an s3 store (the secret key is "
                                 "never taken from the command line)");
            else
                rc = read_secret(opts[SECRET].value, d->secret_key, sizeof d->secret_key);
        }
        if (!rc && opts[CREATE].set && strcmp(d->type, "s3") == 0)
            rc = create_bucket(d, opts[LOCK].set);
        if (!rc && mv_storecat_put(st, master, d, err, sizeof err)) rc = cli_fail(2, "%s", err);
        if (!rc) printf("store %s saved (%s)\n", d->name, d->type);
        mv_crypt_wipe(d, sizeof *d);
        free(d);
    } else if (strcmp(sub, "list") == 0) {
        if (mv_storecat_list(st, print_line, NULL, err, sizeof err)) rc = cli_fail(1, "%s", err);
    } else if (strcmp(sub, "show") == 0) {
        mv_store_def *d = calloc(1, sizeof *d);
        mv_err e = d ? mv_storecat_get(st, master, pos[0], d, err, sizeof err) : MV_ENOMEM;
        if (e) {
            rc = cli_fail(1, "%s", d ? err : "out of memory");
        } else if (strcmp(d->type, "s3") == 0) {
            printf("name: %s\ntype: s3\nendpoint: %s\nregion: %s\nbucket: %s\naddressing: %s\n"
                   "access_key: %s\nsecret_key: (set, not shown)\n",
                   d->name, d->endpoint, d->region[0] ? d->region : "us-east-1", d->bucket,
                   d->path_style ? "path-style" : "virtual-hosted", d->access_key);
        } else {
            printf("name: %s\ntype: fs\nroot: %s\n", d->name, d->root);
        }
        if (d) mv_crypt_wipe(d, sizeof *d);
        free(d);
    } else if (strcmp(sub, "rm") == 0) {
        if (mv_storecat_del(st, pos[0], err, sizeof err))
            rc = cli_fail(1, "%s", err);
        else
            printf("store %s removed\n", pos[0]);
    } else {
        rc = cli_fail(2, "unknown store command \"%s\"", sub);
    }
out:
    if (need_master) mv_crypt_wipe(master, sizeof master);
    mv_state_close(st);
    return rc;
}

int cli_tenant_storage(cli *c, mv_state *st, const char *tenant, const char *store,
                       const char *encryption, const char *retention)
{
    char err[MV_ERRLEN];
    if (store && mv_storecat_tenant_store(st, tenant, store, err, sizeof err))
        return cli_fail(1, "%s", err);
    if (encryption) {
        int on = strcmp(encryption, "on") == 0;
        if (!on && strcmp(encryption, "off") != 0)
            return cli_fail(2, "--encryption: \"on\" or \"off\"");
        unsigned char master[MV_KEY_LEN];
        int rc = load_master(c, master);
        if (rc) return rc;
        mv_err e = mv_storecat_encryption(st, master, tenant, on, err, sizeof err);
        mv_crypt_wipe(master, sizeof master);
        if (e) return cli_fail(1, "%s", err);
    }
    if (retention) {
        char mode[16] = "";
        int days = 0;
        const char *colon = strchr(retention, ':');
        if (strcmp(retention, "none") != 0) {
            char *end = NULL;
            if (colon) days = (int)strtol(colon + 1, &end, 10);
            size_t ml = colon ? (size_t)(colon - retention) : 0;
            if (!colon || ml >= sizeof mode || !end || (*end && strcmp(end, "d") != 0))
                return cli_fail(2, "--retention: none, GOVERNANCE:DAYS or COMPLIANCE:DAYS "
                                   "(e.g. COMPLIANCE:3650)");
            memcpy(mode, retention, ml);
        }
        if (mv_storecat_retention(st, tenant, mode, days, err, sizeof err))
            return cli_fail(2, "%s", err);
    }
    return 0;
}

int cli_tenant_rotate(cli *c, mv_state *st, const char *tenant, const char *old_key_file)
{
    char err[MV_ERRLEN];
    unsigned char master[MV_KEY_LEN], old[MV_KEY_LEN];
    int rc = load_master(c, master);
    if (rc) return rc;
    if (old_key_file && mv_crypt_load_key(old_key_file, old, err, sizeof err)) {
        mv_crypt_wipe(master, sizeof master);
        return cli_fail(2, "%s", err);
    }
    uint32_t v = 0;
    mv_err e =
        mv_storecat_rotate(st, master, old_key_file ? old : NULL, tenant, &v, err, sizeof err);
    mv_crypt_wipe(master, sizeof master);
    mv_crypt_wipe(old, sizeof old);
    if (e) return cli_fail(1, "%s", err);
    printf("tenant %s: new objects use key version %u; older versions stay readable%s\n", tenant,
           (unsigned)v, old_key_file ? "; every key is now wrapped by the new master key" : "");
    return 0;
}

/* ---- legal hold and purge ----------------------------------------------------------------- */

/* A sorted, unique set of content hashes. */
typedef struct hashset {
    char (*h)[65];
    size_t n, cap;
} hashset;

static int hs_add(void *ud, const mv_segment *seg, const mv_index_rec *rec)
{
    (void)seg;
    hashset *s = ud;
    return mv_grow_push((void **)&s->h, &s->n, &s->cap, sizeof *s->h, rec->hash) != 0;
}

static int hs_cmp(const void *a, const void *b)
{
    return strcmp(a, b);
}

static void hs_sort(hashset *s)
{
    if (s->n > 1) qsort(s->h, s->n, sizeof *s->h, hs_cmp);
    size_t w = 0;
    for (size_t i = 0; i < s->n; i++)
        if (w == 0 || strcmp(s->h[w - 1], s->h[i]) != 0) memcpy(s->h[w++], s->h[i], 65);
    s->n = w;
}

static int hs_has(const hashset *s, const char *h)
{
    return s->n && bsearch(h, s->h, s->n, sizeof *s->h, hs_cmp) != NULL;
}

/* The hashes of one mailbox's archive. */
static mv_err mailbox_hashes(mv_store *s, const char *tenant, const char *mailbox, hashset *out,
                             char *err, size_t errlen)
{
    mv_err e = mv_archive_list(s, tenant, mailbox, hs_add, out, err, errlen);
    if (e == MV_ECANCEL) e = mv_seterr(err, errlen, MV_ENOMEM, "out of memory");
    hs_sort(out);
    return e;
}

typedef struct others {
    mv_store *s;
    const char *tenant, *skip;
    mv_state *st; /* only the mailboxes in this set, when set_key is set */
    const char *set_key;
    hashset *keep;
    mv_err e;
    char err[MV_ERRLEN];
} others;

/* Hashes of the tenant's other mailboxes (all, or those in set_key): objects they share with
 * the one being purged or released must stay. */
static int other_mailbox(void *ud, const char *mailbox)
{
    others *o = ud;
    if (strcmp(mailbox, o->skip) == 0) return 0;
    if (o->set_key) {
        int yes = 0;
        if ((o->e = mv_state_set_has(o->st, o->set_key, mailbox, &yes, o->err, sizeof o->err)))
            return 1;
        if (!yes) return 0;
    }
    if ((o->e = mv_archive_list(o->s, o->tenant, mailbox, hs_add, o->keep, o->err, sizeof o->err)))
        return 1;
    return 0;
}

static int progress_line(int tty, const char *what, size_t i, size_t n)
{
    if (tty && (i % 50 == 0 || i == n)) fprintf(stderr, "\r%s %zu/%zu", what, i, n);
    return 0;
}

/* Set or clear the S3 legal hold on every object of a mailbox; clearing keeps the hold on
 * objects another mailbox on hold shares. */
static mv_err hold_apply(mv_store *s, mv_state *st, const char *tenant, const char *mailbox, int on,
                         size_t *done, size_t *kept, char *err, size_t errlen)
{
    char setkey[128];
    hashset mine = {0}, keep = {0};
    *done = *kept = 0;
    snprintf(setkey, sizeof setkey, "mv:holds:%s", tenant);
    mv_err e = mailbox_hashes(s, tenant, mailbox, &mine, err, errlen);
    if (e == MV_OK && !on) {
        others o = {s, tenant, mailbox, st, setkey, &keep, MV_OK, ""};
        e = mv_store_mailbox_list(s, tenant, other_mailbox, &o, err, errlen);
        if (o.e) e = mv_seterr(err, errlen, o.e, "%s", o.err);
        hs_sort(&keep);
    }
    int tty = isatty(2);
    for (size_t i = 0; e == MV_OK && i < mine.n; i++) {
        progress_line(tty, on ? "legal hold set on" : "legal hold cleared on", i, mine.n);
        if (!on && hs_has(&keep, mine.h[i])) {
            (*kept)++;
            continue;
        }
        char why[MV_ERRLEN];
        if ((e = mv_store_legal_hold(s, tenant, mine.h[i], on, why, sizeof why)) != MV_OK)
            mv_seterr(err, errlen, e, "object %s: %s", mine.h[i], why);
        else
            (*done)++;
    }
    if (tty) fputc('\n', stderr);
    free(mine.h);
    free(keep.h);
    return e;
}

int cmd_hold(cli *c, int argc, char **argv)
{
    opt opts[] = {{"tenant", 1, NULL, 0}, {"mailbox", 1, NULL, 0}, {NULL, 0, NULL, 0}};
    const char *pos[1];
    int npos, rc;
    char err[MV_ERRLEN], setkey[128];
    if (argc < 1 || (strcmp(argv[0], "set") && strcmp(argv[0], "clear") && strcmp(argv[0], "list")))
        return cli_fail(2, "usage: mailvault hold set|clear --tenant T --mailbox M | "
                           "hold list --tenant T");
    if ((rc = cli_parse_opts(argc - 1, argv + 1, opts, pos, 0, &npos))) return rc;
    const char *tenant = opts[0].value, *mailbox = opts[1].value;
    if (!tenant || !mv_name_valid(tenant)) return cli_fail(2, "--tenant is required");
    int list = strcmp(argv[0], "list") == 0, on = strcmp(argv[0], "set") == 0;
    if (!list && !mailbox) return cli_fail(2, "--mailbox is required");
    snprintf(setkey, sizeof setkey, "mv:holds:%s", tenant);
    mv_state *st = cli_state(c);
    if (!st) return 1;
    if (!mv_state_tenant_exists(st, tenant)) {
        mv_state_close(st);
        return cli_fail(1, "tenant \"%s\" does not exist", tenant);
    }
    if (list) {
        if (mv_state_set_members(st, setkey, print_line, NULL, err, sizeof err))
            rc = cli_fail(1, "%s", err);
        mv_state_close(st);
        return rc;
    }
    cli_store *cs = NULL;
    mv_store *s = cli_store_open(c, &cs);
    if (!s) {
        rc = 1;
        goto out;
    }
    char type[8], where[600];
    if (mv_store_where(s, tenant, type, sizeof type, where, sizeof where, err, sizeof err)) {
        rc = cli_fail(1, "%s", err);
        goto out;
    }
    if (on && strcmp(type, "s3") != 0) {
        rc = cli_fail(1,
                      "tenant %s is on the %s store %s: a legal hold needs an S3 store with "
                      "Object Lock (mailvault store migrate)",
                      tenant, type, where);
        goto out;
    }
    /* on: recorded first, so every object a worker writes from now on gets the hold too;
     * off: removed first, so no new object of this mailbox gets one while we clear */
    size_t done = 0, kept = 0;
    if (mv_state_set_change(st, setkey, mailbox, on, err, sizeof err) ||
        hold_apply(s, st, tenant, mailbox, on, &done, &kept, err, sizeof err)) {
        rc = cli_fail(1, "%s", err);
        goto out;
    }
    printf("mailbox %s of tenant %s: legal hold %s on %zu objects", mailbox, tenant,
           on ? "set" : "cleared", done);
    if (kept) printf(" (%zu kept: another mailbox on hold holds them too)", kept);
    printf("\n");
out:
    cli_store_close(cs);
    mv_state_close(st);
    return rc;
}

typedef struct seglist_ctx {
    char (*names)[256];
    size_t n, cap;
} seglist_ctx;

static int seg_name(void *ud, const char *name)
{
    seglist_ctx *l = ud;
    char item[256];
    snprintf(item, sizeof item, "%s", name);
    return mv_grow_push((void **)&l->names, &l->n, &l->cap, sizeof item, item) != 0;
}

int cmd_purge(cli *c, int argc, char **argv)
{
    opt opts[] = {
        {"tenant", 1, NULL, 0}, {"mailbox", 1, NULL, 0}, {"yes", 0, NULL, 0}, {NULL, 0, NULL, 0}};
    const char *pos[1];
    int npos, rc;
    char err[MV_ERRLEN], setkey[128];
    if ((rc = cli_parse_opts(argc, argv, opts, pos, 0, &npos))) return rc;
    const char *tenant = opts[0].value, *mailbox = opts[1].value;
    if (!tenant || !mv_name_valid(tenant) || !mailbox)
        return cli_fail(2, "usage: mailvault purge --tenant T --mailbox M --yes");
    if (!opts[2].set)
        return cli_fail(2, "purge deletes the archive of %s for good: add --yes", mailbox);
    mv_state *st = cli_state(c);
    if (!st) return 1;
    cli_store *cs = NULL;
    mv_store *s = NULL;
    hashset mine = {0}, keep = {0};
    seglist_ctx segs = {0};
    int held = 0;
    snprintf(setkey, sizeof setkey, "mv:holds:%s", tenant);
    if (mv_state_set_has(st, setkey, mailbox, &held, err, sizeof err)) {
        rc = cli_fail(1, "%s", err);
        goto out;
    }
    if (held) {
        rc = cli_fail(1,
                      "mailbox %s is on legal hold (mailvault hold clear first); nothing "
                      "deleted",
                      mailbox);
        goto out;
    }
    if (!(s = cli_store_open(c, &cs))) {
        rc = 1;
        goto out;
    }
    others o = {s, tenant, mailbox, NULL, NULL, &keep, MV_OK, ""};
    if (mailbox_hashes(s, tenant, mailbox, &mine, err, sizeof err) ||
        mv_store_mailbox_list(s, tenant, other_mailbox, &o, err, sizeof err) || o.e ||
        mv_store_segment_list(s, tenant, mailbox, seg_name, &segs, err, sizeof err)) {
        rc = cli_fail(1, "%s", o.e ? o.err : err);
        goto out;
    }
    hs_sort(&keep);
    int tty = isatty(2);
    size_t deleted = 0, refused = 0, shared = 0, missing = 0;
    char first_refusal[MV_ERRLEN] = "";
    for (size_t i = 0; i < mine.n; i++) {
        progress_line(tty, "deleting objects", i, mine.n);
        if (hs_has(&keep, mine.h[i])) {
            shared++;
            continue;
        }
        int ref = 0;
        mv_err e = mv_store_delete(s, tenant, mine.h[i], &ref, err, sizeof err);
        if (e == MV_ENOTFOUND) {
            missing++;
        } else if (ref) {
            if (!refused++) snprintf(first_refusal, sizeof first_refusal, "%s", err);
        } else if (e) {
            if (tty) fputc('\n', stderr);
            rc = cli_fail(1, "object %s: %s (the index is kept)", mine.h[i], err);
            goto out;
        } else {
            deleted++;
        }
    }
    if (tty) fputc('\n', stderr);
    if (refused) {
        /* the index keeps every message: it must never claim a deletion that did not happen */
        rc = cli_fail(1,
                      "the store refused to delete %zu objects of %s (retention or legal hold: "
                      "%s); %zu deleted; the index is kept",
                      refused, mailbox, first_refusal, deleted);
        goto out;
    }
    for (size_t i = 0; i < segs.n; i++) {
        int ref = 0;
        if (mv_store_segment_del(s, tenant, mailbox, segs.names[i], &ref, err, sizeof err) &&
            !ref) {
            rc = cli_fail(1, "segment %s: %s", segs.names[i], err);
            goto out;
        }
        if (ref) {
            rc =
                cli_fail(1, "the store refused to delete index segment %s: %s", segs.names[i], err);
            goto out;
        }
    }
    printf("mailbox %s of tenant %s purged: %zu objects deleted, %zu kept (shared with other "
           "mailboxes), %zu already gone, %zu index segments deleted\n",
           mailbox, tenant, deleted, shared, missing, segs.n);
out:
    free(mine.h);
    free(keep.h);
    free(segs.names);
    cli_store_close(cs);
    mv_state_close(st);
    return rc;
}

/* ---- store migrate ------------------------------------------------------------------------ */

typedef struct migrate_ui {
    mv_state *st;
    char mark[128];
    int tty;
    uint64_t n;
} migrate_ui;

static int migrate_progress(void *ud, const char *key, const mv_migrate_stats *ms)
{
    migrate_ui *u = ud;
    char err[MV_ERRLEN];
    u->n++;
    /* the resume mark: everything up to key is copied and checked */
    if (u->n % 20 == 0 &&
        mv_state_hset(u->st, u->mark, "last", key, strlen(key), err, sizeof err) != MV_OK)
        return 1;
    if (u->tty) {
        if (u->n % 50 == 0)
            fprintf(stderr, "\rmigrating: %llu copied, %llu already there, %llu checked",
                    (unsigned long long)ms->copied, (unsigned long long)ms->present,
                    (unsigned long long)ms->verified);
    } else if (u->n % 10 == 0) {
        printf("progress: %llu copied, %llu already there, %llu checked\n",
               (unsigned long long)ms->copied, (unsigned long long)ms->present,
               (unsigned long long)ms->verified);
        fflush(stdout);
    }
    return 0;
}

/* A store definition by name ("" or "default": the default store). */
static mv_err def_of(mv_state *st, const unsigned char master[MV_KEY_LEN], const char *name,
                     mv_store_def *d, char *err, size_t errlen)
{
    memset(d, 0, sizeof *d);
    if (!name[0] || strcmp(name, "default") == 0) return MV_OK;
    return mv_storecat_get(st, master, name, d, err, errlen);
}

static int running_mailboxes(cli *c, mv_state *st, const char *tenant)
{
    char err[MV_ERRLEN];
    mv_err e = MV_OK;
    json_t *js = cli_status_json(st, &c->cfg, tenant, &e, err, sizeof err);
    int n = 0;
    json_t *mbs = js ? json_object_get(js, "mailboxes") : NULL;
    size_t i;
    json_t *m;
    json_array_foreach(mbs, i, m)
    {
        const char *state = json_string_value(json_object_get(m, "state"));
        if (state && strcmp(state, "running") == 0) n++;
    }
    json_decref(js);
    return n;
}

int cmd_store_migrate(cli *c, int argc, char **argv)
{
    opt opts[] = {{"tenant", 1, NULL, 0},
                  {"to", 1, NULL, 0},
                  {"limit", 1, NULL, 0},
                  {"force", 0, NULL, 0},
                  {NULL, 0, NULL, 0}};
    const char *pos[1];
    int npos, rc;
    char err[MV_ERRLEN];
    if ((rc = cli_parse_opts(argc, argv, opts, pos, 0, &npos))) return rc;
    const char *tenant = opts[0].value, *to = opts[1].value;
    if (!tenant || !mv_name_valid(tenant) || !to)
        return cli_fail(2, "usage: mailvault store migrate --tenant T --to STORE [--limit N]");
    uint64_t limit = 0;
    if (opts[2].value) {
        char *end;
        long long v = strtoll(opts[2].value, &end, 10);
        if (*end || v < 1) return cli_fail(2, "--limit: a positive number of objects");
        limit = (uint64_t)v;
    }
    if (strcmp(to, "default") == 0) to = "";
    unsigned char master[MV_KEY_LEN];
    if ((rc = load_master(c, master))) return rc;
    mv_state *st = cli_state(c);
    cli_store *cs = NULL;
    mv_store *s = NULL;
    mv_store_def *from_def = calloc(1, sizeof *from_def), *to_def = calloc(1, sizeof *to_def);
    migrate_ui u = {st, "", isatty(2), 0};
    char from[64] = "";
    seglist_ctx held = {0};
    void *last = NULL;
    size_t lastlen = 0;
    if (!st || !from_def || !to_def) {
        rc = cli_fail(1, "cannot start");
        goto out;
    }
    if (!mv_state_tenant_exists(st, tenant)) {
        rc = cli_fail(1, "tenant \"%s\" does not exist", tenant);
        goto out;
    }
    snprintf(u.mark, sizeof u.mark, "mv:migrate:%s", tenant);
    if (mv_storecat_tenant_store_get(st, tenant, from, sizeof from, err, sizeof err) ||
        def_of(st, master, from, from_def, err, sizeof err) ||
        def_of(st, master, to, to_def, err, sizeof err)) {
        rc = cli_fail(1, "%s", err);
        goto out;
    }
    if (strcmp(from, to) == 0) {
        rc = cli_fail(1, "tenant %s is already on store %s", tenant, to[0] ? to : "default");
        goto out;
    }
    char holdkey[128];
    snprintf(holdkey, sizeof holdkey, "mv:holds:%s", tenant);
    if (mv_state_set_members(st, holdkey, seg_name, &held, err, sizeof err)) {
        rc = cli_fail(1, "%s", err);
        goto out;
    }
    if (held.n && strcmp(to_def->type, "s3") != 0) {
        rc = cli_fail(1,
                      "%zu mailboxes of %s are on legal hold and the %s store has none: clear "
                      "the holds first or pick an S3 store",
                      held.n, tenant, to[0] ? to : "default");
        goto out;
    }
    int busy = running_mailboxes(c, st, tenant);
    if (busy && !opts[3].set) {
        rc = cli_fail(1,
                      "%d mailboxes of %s are being archived; migrate when they are done (or "
                      "--force: what they write meanwhile is copied in the final pass)",
                      busy, tenant);
        goto out;
    }
    /* a mark for another target means an unfinished move elsewhere: refuse to mix them */
    void *prev = NULL;
    size_t prevlen = 0;
    mv_err e = mv_state_hget(st, u.mark, "to", &prev, &prevlen, err, sizeof err);
    if (e == MV_OK && strcmp(prev, to[0] ? to : "default") != 0) {
        rc = cli_fail(1, "an unfinished migration of %s to %s exists; finish it first", tenant,
                      (char *)prev);
        free(prev);
        goto out;
    }
    free(prev);
    if (e == MV_ENOTFOUND) {
        const char *f[] = {"to", "from"};
        const char *v[] = {to[0] ? to : "default", from[0] ? from : "default"};
        e = mv_state_hset_many(st, u.mark, 2, f, v, err, sizeof err);
    } else if (e == MV_OK) {
        e = mv_state_hget(st, u.mark, "last", &last, &lastlen, err, sizeof err);
        if (e == MV_OK)
            printf("resuming after %s\n", (char *)last);
        else if (e == MV_ENOTFOUND)
            e = MV_OK;
    }
    if (e) {
        rc = cli_fail(1, "%s", err);
        goto out;
    }
    if (!(s = cli_store_open(c, &cs))) {
        rc = 1;
        goto out;
    }
    mv_migrate_stats ms, fin;
    e = mv_store_migrate(s, tenant, from_def, to_def, last, 1, limit, migrate_progress, &u, &ms,
                         err, sizeof err);
    if (u.tty) fputc('\n', stderr);
    if (e) {
        rc = cli_fail(1, "%s (run the same command again to resume)", err);
        goto out;
    }
    if (ms.stopped) {
        printf("stopped after %llu objects (--limit): %llu copied, %llu already there; run again "
               "to go on\n",
               (unsigned long long)(ms.copied + ms.present), (unsigned long long)ms.copied,
               (unsigned long long)ms.present);
        goto out;
    }
    /* switch, then copy whatever a task that still had the old store wrote meanwhile */
    if (mv_storecat_tenant_store(st, tenant, to, err, sizeof err)) {
        rc = cli_fail(1, "%s", err);
        goto out;
    }
    e = mv_store_migrate(s, tenant, from_def, to_def, NULL, 0, 0, NULL, NULL, &fin, err,
                         sizeof err);
    if (e) {
        rc = cli_fail(1,
                      "the tenant now uses %s, but the final pass failed: %s (run "
                      "`mailvault store migrate` again from %s to finish)",
                      to[0] ? to : "default", err, from[0] ? from : "default");
        goto out;
    }
    /* the holds of held mailboxes, on the new copies */
    mv_store_forget(s, tenant);
    size_t rehold = 0;
    for (size_t i = 0; i < held.n; i++) {
        size_t done = 0, kept = 0;
        if (hold_apply(s, st, tenant, held.names[i], 1, &done, &kept, err, sizeof err)) {
            rc = cli_fail(1,
                          "the tenant now uses %s, but the legal hold of %s could not be set "
                          "there: %s (mailvault hold set --tenant %s --mailbox %s)",
                          to[0] ? to : "default", held.names[i], err, tenant, held.names[i]);
            goto out;
        }
        rehold += done;
    }
    if (held.n)
        printf("legal holds of %zu mailboxes set again on %zu objects of the new store\n", held.n,
               rehold);
    mv_state_hdel(st, u.mark, NULL, err, sizeof err);
    printf("tenant %s moved from %s to %s: %llu objects copied, %llu were there already, %llu "
           "checked, %llu bytes; the final pass copied %llu; the old copy is left in place\n",
           tenant, from[0] ? from : "default", to[0] ? to : "default",
           (unsigned long long)ms.copied, (unsigned long long)ms.present,
           (unsigned long long)ms.verified, (unsigned long long)ms.bytes,
           (unsigned long long)fin.copied);
out:
    mv_crypt_wipe(master, sizeof master);
    if (from_def) mv_crypt_wipe(from_def, sizeof *from_def);
    if (to_def) mv_crypt_wipe(to_def, sizeof *to_def);
    free(from_def);
    free(to_def);
    free(last);
    free(held.names);
    cli_store_close(cs);
    mv_state_close(st);
    return rc;
}

/* ---- store sweep -------------------------------------------------------------------------- */

int cmd_store_sweep(cli *c, int argc, char **argv)
{
    opt opts[] = {{"older-than", 1, NULL, 0}, {"store", 1, NULL, 0}, {NULL, 0, NULL, 0}};
    const char *pos[1];
    int npos, rc;
    char err[MV_ERRLEN];
    if ((rc = cli_parse_opts(argc, argv, opts, pos, 0, &npos))) return rc;
    int age = 3600;
    if (opts[0].value) {
        char *end;
        long v = strtol(opts[0].value, &end, 10);
        if (*end || v < 0 || v > 100000000)
            return cli_fail(2, "--older-than: a number of seconds (default 3600)");
        age = (int)v;
    }
    unsigned char master[MV_KEY_LEN];
    if ((rc = load_master(c, master))) return rc;
    cli_store *cs = NULL;
    mv_store *s = cli_store_open(c, &cs);
    mv_state *st = s ? cli_state(c) : NULL;
    int removed = 0;
    mv_store_def *d = calloc(1, sizeof *d);
    const char *one = opts[1].value;
    if (!st || !d)
        rc = 1;
    else if (one && (def_of(st, master, one, d, err, sizeof err) ||
                     mv_store_sweep_def(s, d, age, &removed, err, sizeof err)))
        rc = cli_fail(1, "%s", err);
    else if (!one && mv_storecat_sweep_all(st, master, s, age, &removed, err, sizeof err))
        rc = cli_fail(1, "%s", err);
    else
        printf("removed %d leftovers of dead writers (temp files, multipart uploads)\n", removed);
    mv_crypt_wipe(master, sizeof master);
    if (d) mv_crypt_wipe(d, sizeof *d);
    free(d);
    mv_state_close(st);
    cli_store_close(cs);
    return rc;
}

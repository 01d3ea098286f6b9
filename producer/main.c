/* mailvault - the CLI: catalog (tenants, profiles, credentials), "run now", status, and the
 * archive itself (ls, get, verify). A thin program over libmailvault: parsing options and
 * printing is all that lives here. */
#include "cli.h"

#include "mv/archive.h"
#include "mv/crypt.h"
#include "mv/index.h"
#include "mv/jobs.h"
#include "mv/log.h"
#include "mv/search.h"
#include "mv/storecat.h"
#include "mv/profile.h"
#include "mv/queue.h"
#include "mv/store.h"

#include <errno.h>
#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define MAX_PROFILE_FILE (16 * 1024 * 1024)

static const char usage_text[] =
    "usage: mailvault [--config FILE] COMMAND [ARGS]\n"
    "\n"
    "Catalog:\n"
    "  key generate FILE                     create a new master key file (mode 0600)\n"
    "  tenant add NAME [--display-name S]    add a tenant\n"
    "  tenant list                           list tenants\n"
    "  tenant set NAME [--max-concurrent N] [--weight W]\n"
    "                                        fair share: at most N of its mailboxes at once\n"
    "                                        (0 = no cap), W shares of the workers when\n"
    "                                        tenants compete (default 1); docs/fairness.md\n"
    "  tenant set NAME [--store S] [--encryption on|off] [--retention MODE:DAYS]\n"
    "                                        where the archive lives (a store defined with\n"
    "                                        `store add`, or \"default\"), encryption of new\n"
    "                                        objects, Object Lock retention of new objects\n"
    "                                        (none, GOVERNANCE:DAYS, COMPLIANCE:DAYS);\n"
    "                                        docs/store.md\n"
    "  tenant rotate-key NAME [--old-master-key FILE]\n"
    "                                        new data key version for new objects (old objects\n"
    "                                        stay readable); every key is re-wrapped with the\n"
    "                                        master key (FILE: the old master key, when moving\n"
    "                                        to a new one)\n"
    "  tenant rm NAME                        remove a tenant with its profiles, credentials,\n"
    "                                        status and checkpoints (archived mail stays)\n"
    "  profile add --tenant T --file F [--mailboxes-csv C]\n"
    "                                        add or replace a profile from a JSON file; an ews\n"
    "                                        profile can take its mailbox list from a CSV file\n"
    "                                        (column PrimarySmtpAddress, or the first)\n"
    "                                        (F = - reads standard input); passwords in the\n"
    "                                        file are encrypted, never stored in clear\n"
    "  profile list --tenant T               list profiles\n"
    "  profile show --tenant T NAME          print a profile (without secrets)\n"
    "  profile test --tenant T NAME [--mailbox M]\n"
    "                                        check access: token and one mailbox's folders\n"
    "                                        (Graph), or login and folders (IMAP); prints a\n"
    "                                        verdict, exit 1 if the check fails\n"
    "  profile rm --tenant T NAME            remove a profile\n"
    "Stores:\n"
    "  store add NAME --type s3 --endpoint URL --bucket B --access-key K --secret-file F\n"
    "        [--region R] [--virtual-hosted] [--ca-file F] [--part-size BYTES]\n"
    "        [--spool-dir DIR] [--create-bucket [--object-lock]]\n"
    "                                        define an S3 store (the secret is read from F, or\n"
    "                                        stdin with -, and kept encrypted); --create-bucket\n"
    "                                        creates the bucket, with Object Lock if asked\n"
    "  store add NAME --type fs --root DIR   define another directory store\n"
    "  store list | store show NAME | store rm NAME\n"
    "  store migrate --tenant T --to STORE [--limit N] [--force]\n"
    "                                        copy the tenant's archive to another store (or\n"
    "                                        \"default\"), checking every copy, then point the\n"
    "                                        tenant at it; resumable: run it again after a crash\n"
    "  store sweep [--store NAME] [--older-than SECONDS]\n"
    "                                        remove what dead writers left in every store (or\n"
    "                                        one): temp files, unfinished multipart uploads\n"
    "                                        (default older than 3600 s; workers do it at\n"
    "                                        start-up)\n"
    "Jobs:\n"
    "  run --tenant T --profile P [--wait] [--timeout S]\n"
    "                                        enqueue one task per mailbox (one for an export\n"
    "                                        profile); --wait\n"
    "                                        shows progress until the run ends (exit 1 if a\n"
    "                                        mailbox failed)\n"
    "  export --tenant T --file F [--wait] [--timeout S]\n"
    "                                        save an export profile (type export: a mailbox's\n"
    "                                        archive into a directory of .eml files, optionally\n"
    "                                        signed) and run it; re-running writes only what\n"
    "                                        is missing\n"
    "  cancel --tenant T [--profile P | --mailbox M]\n"
    "                                        stop the current run of those mailboxes (all of\n"
    "                                        the tenant's by default): what is archived stays\n"
    "  runs --tenant T [--profile P] [--run ID] [--json]\n"
    "                                        the tenant's runs, oldest first: start, end,\n"
    "                                        mailboxes done and failed, messages, bytes,\n"
    "                                        manual or by schedule (slot, mailboxes skipped as\n"
    "                                        still busy); --run also lists its errors\n"
    "  dlq list [--tenant T] [--json]        tasks that failed for good (the dead-letter\n"
    "                                        topic), with their errors, until retried\n"
    "  dlq retry --tenant T [--mailbox M]    queue them again (same run, attempt 0)\n"
    "  status [--tenant T] [--watch] [--json] progress per tenant and mailbox, and the\n"
    "                                        consumer lag (exit 1 if a mailbox failed)\n"
    "Archive:\n"
    "  ls --tenant T [--mailbox M] [--json]  list archived messages from the index; search\n"
    "     [--folder F] [--from S] [--to S]   with a folder (and its subfolders), substrings\n"
    "     [--subject S] [--after YYYY-MM-DD] of From/To/Subject (any case) and a received\n"
    "     [--before YYYY-MM-DD]              date range (UTC days)\n"
    "  get --tenant T HASH                   write a stored message to stdout, byte-exact\n"
    "  verify [--tenant T]                   re-read every object and check its hash (and\n"
    "                                        its Object Lock retention, on S3)\n"
    "  hold set|clear --tenant T --mailbox M S3 legal hold on every object of the mailbox\n"
    "                                        (and on those archived later) / off again\n"
    "  hold list --tenant T                  mailboxes on legal hold\n"
    "  purge --tenant T --mailbox M --yes    delete a mailbox's archive (objects no other\n"
    "                                        mailbox shares, then its index); a store that\n"
    "                                        refuses (retention, hold) leaves the index whole\n"
    "Server:\n"
    "  serve [--listen ADDRESS:PORT]         serve the admin HTTP API (/api/v1, bearer\n"
    "                                        tokens) and Prometheus /metrics (default\n"
    "                                        api.listen, 127.0.0.1:8080) until SIGTERM;\n"
    "                                        docs/api.md\n"
    "  token add --name N                    make an API token and print it (once: only its\n"
    "                                        SHA-256 is stored)\n"
    "  token list | token rm --name N        list tokens (names, creation) / revoke one\n"
    "\n"
    "Options: --config FILE (default $MAILVAULT_CONFIG), --json, --help.\n"
    "Configuration keys and environment variables: docs/configuration.md.\n";

int cli_fail(int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("mailvault: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    return code;
}

mv_state *cli_state(cli *c)
{
    mv_state *st = NULL;
    char err[MV_ERRLEN];
    if (mv_state_connect(&c->cfg, &st, err, sizeof err)) {
        cli_fail(1, "%s", err);
        return NULL;
    }
    return st;
}

int cli_parse_opts(int argc, char **argv, opt *opts, const char **pos, int maxpos, int *npos)
{
    *npos = 0;
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        if (strncmp(a, "--", 2) == 0 && a[2]) {
            opt *o = NULL;
            for (opt *x = opts; x && x->name; x++)
                if (strcmp(a + 2, x->name) == 0) o = x;
            if (!o) return cli_fail(2, "unknown option %s (see mailvault --help)", a);
            o->set = 1;
            if (o->has_arg) {
                if (i + 1 >= argc) return cli_fail(2, "option %s needs a value", a);
                o->value = argv[++i];
            }
        } else {
            if (*npos >= maxpos) return cli_fail(2, "unexpected argument \"%s\"", a);
            pos[(*npos)++] = a;
        }
    }
    return 0;
}

static int need_tenant(const char *t)
{
    if (!t) return cli_fail(2, "--tenant is required");
    if (!mv_name_valid(t))
        return cli_fail(2, "tenant \"%s\" is not a valid name (1-63 of a-z 0-9 . _ -)", t);
    return 0;
}

static int load_key(cli *c, unsigned char key[MV_KEY_LEN])
{
    char err[MV_ERRLEN];
    if (!c->cfg.master_key_file[0])
        return cli_fail(2, "master_key_file is not configured (MAILVAULT_MASTER_KEY_FILE)");
    if (mv_crypt_load_key(c->cfg.master_key_file, key, err, sizeof err))
        return cli_fail(2, "%s", err);
    return 0;
}

static int cmd_key(cli *c, int argc, char **argv)
{
    (void)c;
    char err[MV_ERRLEN];
    if (argc != 2 || strcmp(argv[0], "generate") != 0)
        return cli_fail(2, "usage: mailvault key generate FILE");
    if (mv_crypt_generate_key_file(argv[1], err, sizeof err)) return cli_fail(1, "%s", err);
    printf("master key written to %s\n", argv[1]);
    return 0;
}

static int print_name(void *ud, const char *name)
{
    (void)ud;
    printf("%s\n", name);
    return 0;
}

static int cmd_tenant(cli *c, int argc, char **argv)
{
    opt opts[] = {{"display-name", 1, NULL, 0},   {"max-concurrent", 1, NULL, 0},
                  {"weight", 1, NULL, 0},         {"store", 1, NULL, 0},
                  {"encryption", 1, NULL, 0},     {"retention", 1, NULL, 0},
                  {"old-master-key", 1, NULL, 0}, {NULL, 0, NULL, 0}};
    const char *pos[3];
    int npos, rc;
    char err[MV_ERRLEN];
    if (argc < 1) return cli_fail(2, "usage: mailvault tenant add|list|set|rm ...");
    if ((rc = cli_parse_opts(argc - 1, argv + 1, opts, pos, 1, &npos))) return rc;
    mv_state *st = cli_state(c);
    if (!st) return 1;
    rc = 0;
    if (strcmp(argv[0], "add") == 0) {
        if (npos != 1) {
            rc = cli_fail(2, "usage: mailvault tenant add NAME [--display-name S]");
        } else if (!mv_name_valid(pos[0])) {
            rc = cli_fail(2,
                          "tenant \"%s\" is not a valid name (1-63 of a-z 0-9 . _ -, "
                          "starting with a letter or digit)",
                          pos[0]);
        } else {
            mv_err e = mv_state_tenant_add(st, pos[0], opts[0].value ? opts[0].value : pos[0], err,
                                           sizeof err);
            if (e == MV_EEXIST)
                rc = cli_fail(1, "tenant \"%s\" already exists", pos[0]);
            else if (e)
                rc = cli_fail(1, "%s", err);
            else
                printf("tenant %s added\n", pos[0]);
        }
    } else if (strcmp(argv[0], "list") == 0) {
        if (mv_state_tenant_list(st, print_name, NULL, err, sizeof err))
            rc = cli_fail(1, "%s", err);
    } else if (strcmp(argv[0], "set") == 0) {
        const char *names[] = {"max_concurrent", "weight"};
        if (npos != 1 || (!opts[1].value && !opts[2].value && !opts[3].value && !opts[4].value &&
                          !opts[5].value)) {
            rc = cli_fail(2, "usage: mailvault tenant set NAME [--max-concurrent N] [--weight W] "
                             "[--store NAME] [--encryption on|off] [--retention MODE:DAYS]");
        } else if (!mv_name_valid(pos[0]) || !mv_state_tenant_exists(st, pos[0])) {
            rc = cli_fail(1, "tenant \"%s\" does not exist", pos[0]);
        } else {
            for (int k = 0; k < 2 && !rc; k++) {
                const char *v = opts[1 + k].value;
                if (!v) continue;
                char *end;
                long n = strtol(v, &end, 10);
                if (*end || end == v || n < (k ? 1 : 0) || n > 100000)
                    rc = cli_fail(2, "--%s: \"%s\" is not a number in %d..100000",
                                  k ? "weight" : "max-concurrent", v, k ? 1 : 0);
                else if (mv_state_tenant_limit(st, pos[0], names[k], (int)n, err, sizeof err))
                    rc = cli_fail(1, "%s", err);
            }
            if (!rc)
                rc = cli_tenant_storage(c, st, pos[0], opts[3].value, opts[4].value, opts[5].value);
            if (!rc) printf("tenant %s updated\n", pos[0]);
        }
    } else if (strcmp(argv[0], "rotate-key") == 0) {
        if (npos != 1 || !mv_name_valid(pos[0]))
            rc = cli_fail(2, "usage: mailvault tenant rotate-key NAME [--old-master-key FILE]");
        else
            rc = cli_tenant_rotate(c, st, pos[0], opts[6].value);
    } else if (strcmp(argv[0], "rm") == 0) {
        if (npos != 1 || !mv_name_valid(pos[0]))
            rc = cli_fail(2, "usage: mailvault tenant rm NAME");
        else if (!mv_state_tenant_exists(st, pos[0]))
            rc = cli_fail(1, "tenant \"%s\" does not exist", pos[0]);
        else if (mv_state_tenant_del(st, pos[0], err, sizeof err))
            rc = cli_fail(1, "%s", err);
        else
            printf("tenant %s removed (archived mail is kept in the store)\n", pos[0]);
    } else {
        rc = cli_fail(2, "unknown tenant command \"%s\"", argv[0]);
    }
    mv_state_close(st);
    return rc;
}

static char *read_file_bounded(const char *path)
{
    FILE *f = strcmp(path, "-") == 0 ? stdin : fopen(path, "rb");
    if (!f) {
        cli_fail(1, "cannot open %s: %s", path, strerror(errno));
        return NULL;
    }
    size_t cap = 65536, len = 0;
    char *buf = malloc(cap);
    while (buf) {
        if (len + 1 >= cap) {
            if (cap >= MAX_PROFILE_FILE) {
                cli_fail(1, "%s: larger than %d bytes", path, MAX_PROFILE_FILE);
                free(buf);
                buf = NULL;
                break;
            }
            char *nb = realloc(buf, cap * 2);
            if (!nb) {
                free(buf);
                buf = NULL;
                break;
            }
            buf = nb;
            cap *= 2;
        }
        size_t n = fread(buf + len, 1, cap - len - 1, f);
        len += n;
        if (n == 0) {
            if (ferror(f)) {
                cli_fail(1, "cannot read %s: %s", path, strerror(errno));
                free(buf);
                buf = NULL;
            }
            break;
        }
    }
    if (buf) buf[len] = '\0';
    if (f != stdin) fclose(f);
    return buf;
}

static int cmd_profile(cli *c, int argc, char **argv)
{
    opt opts[] = {{"tenant", 1, NULL, 0},
                  {"file", 1, NULL, 0},
                  {"mailbox", 1, NULL, 0},
                  {"mailboxes-csv", 1, NULL, 0},
                  {NULL, 0, NULL, 0}};
    const char *pos[2];
    int npos, rc;
    char err[MV_ERRLEN];
    if (argc < 1) return cli_fail(2, "usage: mailvault profile add|list|show|test|rm ...");
    if ((rc = cli_parse_opts(argc - 1, argv + 1, opts, pos, 1, &npos))) return rc;
    if ((rc = need_tenant(opts[0].value))) return rc;
    const char *tenant = opts[0].value;
    mv_state *st = cli_state(c);
    if (!st) return 1;
    if (!mv_state_tenant_exists(st, tenant)) {
        mv_state_close(st);
        return cli_fail(1, "tenant \"%s\" does not exist", tenant);
    }
    if (strcmp(argv[0], "add") == 0) {
        unsigned char key[MV_KEY_LEN];
        char *json = NULL;
        mv_profile p;
        memset(&p, 0, sizeof p);
        if (!opts[1].value) {
            rc = cli_fail(2, "usage: mailvault profile add --tenant T --file F");
        } else if ((rc = load_key(c, key)) == 0 && (json = read_file_bounded(opts[1].value))) {
            char *csv = NULL;
            size_t added = 0;
            if (mv_profile_parse(json, 1, &p, err, sizeof err))
                rc = cli_fail(1, "%s: %s", opts[1].value, err);
            else if (opts[3].value && !(csv = read_file_bounded(opts[3].value)))
                rc = 1;
            else if (csv && p.source != MV_SOURCE_EWS)
                rc = cli_fail(2, "--mailboxes-csv: only for ews profiles (IMAP mailboxes need "
                                 "passwords; Graph reads the tenant directory)");
            else if (csv && mv_profile_import_csv(&p, csv, strlen(csv), &added, err, sizeof err))
                rc = cli_fail(1, "%s: %s", opts[3].value, err);
            else if (mv_jobs_profile_save(st, key, tenant, &p, err, sizeof err))
                rc = cli_fail(1, "%s", err);
            else if (p.source == MV_SOURCE_EXPORT)
                printf("export profile %s saved for tenant %s\n", p.name, tenant);
            else
                printf("profile %s saved for tenant %s (%zu mailboxes%s)\n", p.name, tenant,
                       p.nmailboxes, csv ? ", some from the CSV file" : "");
            free(csv);
        } else if (!rc) {
            rc = 1;
        }
        if (json) {
            mv_crypt_wipe(json, strlen(json));
            free(json);
        }
        mv_profile_free(&p);
        mv_crypt_wipe(key, sizeof key);
    } else if (strcmp(argv[0], "list") == 0) {
        if (mv_state_profile_list(st, tenant, print_name, NULL, err, sizeof err))
            rc = cli_fail(1, "%s", err);
    } else if (strcmp(argv[0], "test") == 0) {
        unsigned char key[MV_KEY_LEN];
        char report[1024] = "";
        if (npos != 1) {
            rc = cli_fail(2, "usage: mailvault profile test --tenant T NAME [--mailbox M]");
        } else if ((rc = load_key(c, key)) == 0) {
            mv_err e = mv_jobs_profile_test(st, key, &c->cfg, tenant, pos[0], opts[2].value, report,
                                            sizeof report, err, sizeof err);
            if (report[0]) {
                printf("%s\n", report);
                rc = e ? 1 : 0;
            } else if (e) {
                rc = cli_fail(1, "%s", err);
            }
            mv_crypt_wipe(key, sizeof key);
        }
    } else if (strcmp(argv[0], "show") == 0 || strcmp(argv[0], "rm") == 0) {
        char *json = NULL;
        mv_err e;
        if (npos != 1) {
            rc = cli_fail(2, "usage: mailvault profile %s --tenant T NAME", argv[0]);
        } else if ((e = mv_state_profile_get(st, tenant, pos[0], &json, err, sizeof err))) {
            rc = e == MV_ENOTFOUND
                     ? cli_fail(1, "profile \"%s\" of tenant \"%s\" not found", pos[0], tenant)
                     : cli_fail(1, "%s", err);
        } else if (argv[0][0] == 's') {
            printf("%s\n", json);
        } else if (mv_state_profile_del(st, tenant, pos[0], err, sizeof err)) {
            rc = cli_fail(1, "%s", err);
        } else {
            printf("profile %s removed\n", pos[0]);
        }
        free(json);
    } else {
        rc = cli_fail(2, "unknown profile command \"%s\"", argv[0]);
    }
    mv_state_close(st);
    return rc;
}

int cmd_run(cli *c, int argc, char **argv)
{
    opt opts[] = {{"tenant", 1, NULL, 0},
                  {"profile", 1, NULL, 0},
                  {"wait", 0, NULL, 0},
                  {"timeout", 1, NULL, 0},
                  {NULL, 0, NULL, 0}};
    const char *pos[1];
    int npos, rc;
    char err[MV_ERRLEN];
    if ((rc = cli_parse_opts(argc, argv, opts, pos, 0, &npos))) return rc;
    if ((rc = need_tenant(opts[0].value))) return rc;
    if (!opts[1].value) return cli_fail(2, "--profile is required");
    int timeout = 0;
    if (opts[3].value) {
        char *end;
        long v = strtol(opts[3].value, &end, 10);
        if (*end || v < 1 || v > 7 * 86400)
            return cli_fail(2, "--timeout: \"%s\" is not a number of seconds (1..604800)",
                            opts[3].value);
        timeout = (int)v;
    }
    mv_state *st = cli_state(c);
    if (!st) return 1;
    mv_producer *pr = NULL;
    char run_id[37];
    int n = 0;
    unsigned char key[MV_KEY_LEN];
    const unsigned char *kp = NULL; /* needed only for profiles that read the directory */
    if (c->cfg.master_key_file[0]) {
        if (mv_crypt_load_key(c->cfg.master_key_file, key, err, sizeof err)) {
            mv_state_close(st);
            return cli_fail(2, "%s", err);
        }
        kp = key;
    }
    if (!mv_state_tenant_exists(st, opts[0].value)) {
        rc = cli_fail(1, "tenant \"%s\" does not exist", opts[0].value);
    } else if (mv_queue_ensure_topics(&c->cfg, err, sizeof err) ||
               mv_producer_new(&c->cfg, &pr, err, sizeof err) ||
               mv_jobs_enqueue_profile(&c->cfg, st, pr, kp, opts[0].value, opts[1].value, run_id,
                                       &n, err, sizeof err)) {
        rc = cli_fail(1, "%s", err);
    } else {
        if (c->json)
            printf("{\"run\":\"%s\",\"tasks\":%d}\n", run_id, n);
        else
            printf("run %s: %d task%s queued for tenant %s profile %s\n", run_id, n,
                   n == 1 ? "" : "s", opts[0].value, opts[1].value);
        fflush(stdout);
        if (opts[2].set) rc = cli_wait_run(c, st, opts[0].value, run_id, timeout);
    }
    mv_producer_destroy(pr);
    mv_state_close(st);
    mv_crypt_wipe(key, sizeof key);
    return rc;
}

/* export = profile add (type "export") + run: the export profile stays in the catalog and can
 * be run again ("update existing export": only missing files are written). */
static int cmd_export(cli *c, int argc, char **argv)
{
    opt opts[] = {{"tenant", 1, NULL, 0},
                  {"file", 1, NULL, 0},
                  {"wait", 0, NULL, 0},
                  {"timeout", 1, NULL, 0},
                  {NULL, 0, NULL, 0}};
    const char *pos[1];
    int npos, rc;
    char err[MV_ERRLEN];
    if ((rc = cli_parse_opts(argc, argv, opts, pos, 0, &npos))) return rc;
    if ((rc = need_tenant(opts[0].value))) return rc;
    if (!opts[1].value || !strcmp(opts[1].value, "-"))
        return cli_fail(2, "usage: mailvault export --tenant T --file F [--wait] [--timeout S]");
    char *json = read_file_bounded(opts[1].value);
    if (!json) return 1;
    mv_profile p;
    if (mv_profile_parse(json, 1, &p, err, sizeof err)) {
        free(json);
        return cli_fail(1, "%s: %s", opts[1].value, err);
    }
    free(json);
    char name[64];
    snprintf(name, sizeof name, "%s", p.name);
    int is_export = p.source == MV_SOURCE_EXPORT;
    mv_profile_free(&p);
    if (!is_export)
        return cli_fail(2, "%s: not an export profile (\"type\": \"export\")", opts[1].value);
    char *add[] = {"add", "--tenant", (char *)opts[0].value, "--file", (char *)opts[1].value};
    if ((rc = cmd_profile(c, 5, add))) return rc;
    char *run[8] = {"--tenant", (char *)opts[0].value, "--profile", name};
    int n = 4;
    if (opts[2].set) run[n++] = "--wait";
    if (opts[3].value) {
        run[n++] = "--timeout";
        run[n++] = (char *)opts[3].value;
    }
    return cmd_run(c, n, run);
}

static int print_object(void *ud, const void *data, size_t len)
{
    (void)ud;
    return fwrite(data, 1, len, stdout) == len ? 0 : 1;
}

static int cmd_get(cli *c, int argc, char **argv)
{
    opt opts[] = {{"tenant", 1, NULL, 0}, {NULL, 0, NULL, 0}};
    const char *pos[1];
    int npos, rc;
    char err[MV_ERRLEN];
    if ((rc = cli_parse_opts(argc, argv, opts, pos, 1, &npos))) return rc;
    if ((rc = need_tenant(opts[0].value))) return rc;
    if (npos != 1) return cli_fail(2, "usage: mailvault get --tenant T HASH");
    cli_store *cs = NULL;
    mv_store *s = cli_store_open(c, &cs);
    if (!s) return 1;
    mv_err e = mv_store_get(s, opts[0].value, pos[0], print_object, NULL, err, sizeof err);
    cli_store_close(cs);
    if (fflush(stdout) != 0) return cli_fail(1, "cannot write to stdout: %s", strerror(errno));
    if (e == MV_ENOTFOUND) return cli_fail(1, "no object %s in tenant %s", pos[0], opts[0].value);
    if (e) return cli_fail(1, "%s", err);
    return 0;
}

static void verify_bad(void *ud, const char *tenant, const char *hash, const char *why)
{
    (void)ud;
    fprintf(stderr, "BAD tenant=%s object=%s: %s\n", tenant, hash, why);
}

static void verify_progress(void *ud, const mv_verify_stats *st)
{
    int tty = *(int *)ud;
    if (tty && st->objects % 100 == 0)
        fprintf(stderr, "\rverified %llu objects (%llu bad)", (unsigned long long)st->objects,
                (unsigned long long)st->bad);
}

typedef struct verify_all {
    mv_store *s;
    mv_state *st;
    int *tty;
    mv_verify_stats total;
    mv_err e;
    char err[MV_ERRLEN];
} verify_all;

static void stats_add(mv_verify_stats *t, const mv_verify_stats *v)
{
    t->objects += v->objects;
    t->ok += v->ok;
    t->bad += v->bad;
    t->raw_bytes += v->raw_bytes;
    t->stored_bytes += v->stored_bytes;
    t->encrypted += v->encrypted;
    t->retained += v->retained;
    t->held += v->held;
}

/* Tenants whose archive is not on the default store (that one is walked as a whole). */
static int verify_elsewhere(void *ud, const char *tenant)
{
    verify_all *a = ud;
    char store[64];
    if ((a->e = mv_storecat_tenant_store_get(a->st, tenant, store, sizeof store, a->err,
                                             sizeof a->err)))
        return 1;
    if (!store[0]) return 0;
    mv_verify_stats vs;
    a->e = mv_store_verify(a->s, tenant, verify_bad, verify_progress, a->tty, &vs, a->err,
                           sizeof a->err);
    stats_add(&a->total, &vs);
    return a->e != MV_OK;
}

static int cmd_verify(cli *c, int argc, char **argv)
{
    opt opts[] = {{"tenant", 1, NULL, 0}, {NULL, 0, NULL, 0}};
    const char *pos[1];
    int npos, rc;
    if ((rc = cli_parse_opts(argc, argv, opts, pos, 0, &npos))) return rc;
    if (opts[0].value && (rc = need_tenant(opts[0].value))) return rc;
    cli_store *cs = NULL;
    int tty = isatty(2);
    verify_all a = {.tty = &tty};
    if (!(a.s = cli_store_open(c, &cs))) return 1;
    mv_verify_stats vs;
    a.e = mv_store_verify(a.s, opts[0].value, verify_bad, verify_progress, &tty, &vs, a.err,
                          sizeof a.err);
    stats_add(&a.total, &vs);
    if (a.e == MV_OK && !opts[0].value && (a.st = cli_state(c)) != NULL) {
        mv_err e = mv_state_tenant_list(a.st, verify_elsewhere, &a, a.err, sizeof a.err);
        if (e && !a.e) a.e = e;
        mv_state_close(a.st);
    } else if (a.e == MV_OK && !opts[0].value) {
        a.e = MV_ERR;
        snprintf(a.err, sizeof a.err, "cannot list tenants");
    }
    cli_store_close(cs);
    vs = a.total;
    if (tty) fputc('\n', stderr);
    if (a.e) return cli_fail(1, "%s", a.err);
    if (c->json)
        printf("{\"objects\":%llu,\"ok\":%llu,\"bad\":%llu,\"raw_bytes\":%llu,"
               "\"stored_bytes\":%llu,\"encrypted\":%llu,\"retained\":%llu,\"held\":%llu}\n",
               (unsigned long long)vs.objects, (unsigned long long)vs.ok,
               (unsigned long long)vs.bad, (unsigned long long)vs.raw_bytes,
               (unsigned long long)vs.stored_bytes, (unsigned long long)vs.encrypted,
               (unsigned long long)vs.retained, (unsigned long long)vs.held);
    else
        printf("verified %llu objects: %llu ok, %llu bad (%llu bytes raw, %llu stored; "
               "%llu encrypted, %llu under retention, %llu on legal hold)\n",
               (unsigned long long)vs.objects, (unsigned long long)vs.ok,
               (unsigned long long)vs.bad, (unsigned long long)vs.raw_bytes,
               (unsigned long long)vs.stored_bytes, (unsigned long long)vs.encrypted,
               (unsigned long long)vs.retained, (unsigned long long)vs.held);
    return vs.bad ? 1 : 0;
}

typedef struct ls_ctx {
    cli *c;
    mv_store *s;
    mv_search q;
    const char *tenant;
    const char *mailbox;
    unsigned long long count;
    int failed;
} ls_ctx;

static int ls_record(void *ud, const mv_segment *seg, const mv_index_rec *r)
{
    ls_ctx *x = ud;
    if (!mv_search_match(&x->q, seg->folder, r)) return 0;
    if (x->c->json) {
        json_t *o = json_pack(
            "{s:s,s:s,s:I,s:s,s:I,s:I,s:I,s:s,s:s,s:s,s:s,s:s,s:s}", "mailbox", x->mailbox,
            "folder", seg->folder, "uidvalidity", (json_int_t)seg->uidvalidity, "hash", r->hash,
            "uid", (json_int_t)r->uid, "size", (json_int_t)r->size, "internaldate",
            (json_int_t)r->internaldate, "flags", r->flags, "from", r->from, "to", r->to, "subject",
            r->subject, "date", r->date, "message_id", r->msgid);
        char *s = o ? json_dumps(o, JSON_COMPACT) : NULL;
        if (s) printf("%s\n", s);
        free(s);
        json_decref(o);
    } else {
        printf("%s\t%s\t%u\t%llu\t%s\t%s\n", x->mailbox, seg->folder, r->uid,
               (unsigned long long)r->size, r->hash, r->subject);
    }
    x->count++;
    return 0;
}

static int ls_mailbox(void *ud, const char *mailbox)
{
    ls_ctx *x = ud;
    char err[MV_ERRLEN];
    x->mailbox = mailbox;
    if (mv_archive_list(x->s, x->tenant, mailbox, ls_record, x, err, sizeof err)) {
        cli_fail(1, "%s", err);
        x->failed = 1;
    }
    return 0;
}

static int cmd_ls(cli *c, int argc, char **argv)
{
    opt opts[] = {{"tenant", 1, NULL, 0}, {"mailbox", 1, NULL, 0}, {"folder", 1, NULL, 0},
                  {"from", 1, NULL, 0},   {"to", 1, NULL, 0},      {"subject", 1, NULL, 0},
                  {"after", 1, NULL, 0},  {"before", 1, NULL, 0},  {NULL, 0, NULL, 0}};
    const char *pos[1];
    int npos, rc;
    char err[MV_ERRLEN];
    if ((rc = cli_parse_opts(argc, argv, opts, pos, 0, &npos))) return rc;
    if ((rc = need_tenant(opts[0].value))) return rc;
    ls_ctx x = {.c = c, .tenant = opts[0].value};
    struct {
        char *dst;
        size_t n;
        const char *v, *name;
    } txt[] = {{x.q.folder, sizeof x.q.folder, opts[2].value, "--folder"},
               {x.q.from, sizeof x.q.from, opts[3].value, "--from"},
               {x.q.to, sizeof x.q.to, opts[4].value, "--to"},
               {x.q.subject, sizeof x.q.subject, opts[5].value, "--subject"}};
    for (size_t i = 0; i < sizeof txt / sizeof *txt; i++)
        if (txt[i].v) {
            if (strlen(txt[i].v) >= txt[i].n)
                return cli_fail(2, "%s: longer than %zu bytes", txt[i].name, txt[i].n - 1);
            snprintf(txt[i].dst, txt[i].n, "%s", txt[i].v);
        }
    if ((opts[6].value && mv_search_date(opts[6].value, &x.q.after_ms, err, sizeof err)) ||
        (opts[7].value && mv_search_date(opts[7].value, &x.q.before_ms, err, sizeof err)))
        return cli_fail(2, "--after/--before: %s", err);
    cli_store *cs = NULL;
    if (!(x.s = cli_store_open(c, &cs))) return 1;
    if (!c->json) printf("MAILBOX\tFOLDER\tUID\tSIZE\tSHA256\tSUBJECT\n");
    if (opts[1].value)
        ls_mailbox(&x, opts[1].value);
    else if (mv_store_mailbox_list(x.s, x.tenant, ls_mailbox, &x, err, sizeof err))
        x.failed = cli_fail(1, "%s", err);
    cli_store_close(cs);
    if (!c->json) fprintf(stderr, "%llu messages\n", x.count);
    return x.failed ? 1 : 0;
}

int main(int argc, char **argv)
{
    cli c;
    memset(&c, 0, sizeof c);
    int i = 1;
    for (; i < argc && strncmp(argv[i], "--", 2) == 0; i++) {
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            fputs(usage_text, stdout);
            return 0;
        } else if (strcmp(argv[i], "--json") == 0) {
            c.json = 1;
        } else if (strcmp(argv[i], "--config") == 0 && i + 1 < argc) {
            c.cfgpath = argv[++i];
        } else {
            fputs(usage_text, stderr);
            return cli_fail(2, "unknown option %s", argv[i]);
        }
    }
    if (i >= argc) {
        fputs(usage_text, stderr);
        return 2;
    }
    const char *cmd = argv[i++];
    if (strcmp(cmd, "help") == 0) {
        fputs(usage_text, stdout);
        return 0;
    }
    /* --json may also follow the command. */
    int nargs = 0;
    char **args = calloc((size_t)(argc - i + 1), sizeof *args);
    if (!args) return cli_fail(1, "out of memory");
    for (; i < argc; i++) {
        if (strcmp(argv[i], "--json") == 0)
            c.json = 1;
        else if (strcmp(argv[i], "--help") == 0) {
            fputs(usage_text, stdout);
            free(args);
            return 0;
        } else
            args[nargs++] = argv[i];
    }
    char err[MV_ERRLEN];
    mv_log_set_component("cli");
    int rc;
    if (strcmp(cmd, "key") == 0) {
        rc = cmd_key(&c, nargs, args);
    } else if (mv_config_load(&c.cfg, c.cfgpath, err, sizeof err)) {
        rc = cli_fail(2, "%s", err);
    } else {
        mv_log_set_level((mv_log_level)c.cfg.log_level);
        if (strcmp(cmd, "tenant") == 0)
            rc = cmd_tenant(&c, nargs, args);
        else if (strcmp(cmd, "profile") == 0)
            rc = cmd_profile(&c, nargs, args);
        else if (strcmp(cmd, "run") == 0)
            rc = cmd_run(&c, nargs, args);
        else if (strcmp(cmd, "export") == 0)
            rc = cmd_export(&c, nargs, args);
        else if (strcmp(cmd, "cancel") == 0)
            rc = cmd_cancel(&c, nargs, args);
        else if (strcmp(cmd, "runs") == 0)
            rc = cmd_runs(&c, nargs, args);
        else if (strcmp(cmd, "status") == 0)
            rc = cmd_status(&c, nargs, args);
        else if (strcmp(cmd, "get") == 0)
            rc = cmd_get(&c, nargs, args);
        else if (strcmp(cmd, "verify") == 0)
            rc = cmd_verify(&c, nargs, args);
        else if (strcmp(cmd, "ls") == 0)
            rc = cmd_ls(&c, nargs, args);
        else if (strcmp(cmd, "dlq") == 0)
            rc = cmd_dlq(&c, nargs, args);
        else if (strcmp(cmd, "serve") == 0)
            rc = cmd_serve(&c, nargs, args);
        else if (strcmp(cmd, "store") == 0)
            rc = cmd_store(&c, nargs, args);
        else if (strcmp(cmd, "hold") == 0)
            rc = cmd_hold(&c, nargs, args);
        else if (strcmp(cmd, "purge") == 0)
            rc = cmd_purge(&c, nargs, args);
        else if (strcmp(cmd, "token") == 0)
            rc = cmd_token(&c, nargs, args);
        else {
            fputs(usage_text, stderr);
            rc = cli_fail(2, "unknown command \"%s\"", cmd);
        }
    }
    free(args);
    return rc;
}

/* cli.h - shared plumbing of the mailvault CLI's commands. */
#ifndef MV_CLI_H
#define MV_CLI_H

#include "mv/config.h"
#include "mv/state.h"

#include <jansson.h>

typedef struct cli {
    mv_config cfg;
    const char *cfgpath;
    int json;
} cli;

/* Tiny option scanner for "--name value" / "--flag" after the command words. */
typedef struct opt {
    const char *name;
    int has_arg;
    const char *value;
    int set;
} opt;
int cli_parse_opts(int argc, char **argv, opt *opts, const char **pos, int maxpos, int *npos);

/* The content store with the catalog's policies (tenant stores, keys); storecmd.c. NULL after
 * printing the error. Close with cli_store_close. */
typedef struct cli_store cli_store;
struct mv_store;
struct mv_store *cli_store_open(cli *c, cli_store **out);
void cli_store_close(cli_store *cs);
int cmd_store(cli *c, int argc, char **argv);
int cmd_hold(cli *c, int argc, char **argv);
int cmd_store_migrate(cli *c, int argc, char **argv);
int cmd_store_sweep(cli *c, int argc, char **argv);
int cmd_purge(cli *c, int argc, char **argv);
/* tenant set --store/--encryption/--retention, and tenant rotate-key (storecmd.c). */
int cli_tenant_storage(cli *c, mv_state *st, const char *tenant, const char *store,
                       const char *encryption, const char *retention);
int cli_tenant_rotate(cli *c, mv_state *st, const char *tenant, const char *old_key_file);

/* Print "mailvault: <msg>" to stderr; returns exit code 1 (or the given code). */
int cli_fail(int code, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
mv_state *cli_state(cli *c);

int cmd_status(cli *c, int argc, char **argv);
int cmd_run(cli *c, int argc, char **argv);
int cmd_cancel(cli *c, int argc, char **argv);
int cmd_runs(cli *c, int argc, char **argv);
/* The cores of status, runs and cancel, shared by the CLI and the admin API (api.c). On
 * failure they return NULL / an error with *e and err set (MV_ENOTFOUND: no such tenant, run,
 * or nothing to cancel). */
json_t *cli_status_json(mv_state *st, const mv_config *cfg, const char *tenant, mv_err *e,
                        char *err, size_t errlen);
json_t *cli_runs_json(mv_state *st, const char *tenant, const char *profile, const char *run,
                      mv_err *e, char *err, size_t errlen);
mv_err cli_cancel(mv_state *st, const char *tenant, const char *profile, const char *mailbox,
                  int *n, char *err, size_t errlen);
int cmd_serve(cli *c, int argc, char **argv);
int cmd_dlq(cli *c, int argc, char **argv);
/* The dead-letter list ({"records": [...], "undecodable": n}) and its retry (dlq.c). */
json_t *cli_dlq_json(mv_state *st, const mv_config *cfg, const char *tenant, mv_err *e, char *err,
                     size_t errlen);
mv_err cli_dlq_retry(mv_state *st, const mv_config *cfg, const char *tenant, const char *mailbox,
                     int *n, char *err, size_t errlen);
/* The Prometheus text exposition (metrics.c); NULL when Redis cannot be read. */
char *api_metrics(mv_state *st, const mv_config *cfg, size_t *len);
int cmd_token(cli *c, int argc, char **argv);
/* Wait for a run to end, showing progress; returns 0 if every mailbox is done. */
int cli_wait_run(cli *c, mv_state *st, const char *tenant, const char *run_id, int timeout_s);

#endif

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

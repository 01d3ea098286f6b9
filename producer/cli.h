/* cli.h - shared plumbing of the mailvault CLI's commands. */
#ifndef MV_CLI_H
#define MV_CLI_H

#include "mv/config.h"
#include "mv/state.h"

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
/* Wait for a run to end, showing progress; returns 0 if every mailbox is done. */
int cli_wait_run(cli *c, mv_state *st, const char *tenant, const char *run_id, int timeout_s);

#endif

/* dlq.c - the dead-letter list and its retry ("mailvault dlq", GET/POST /api/v1/dlq).
 *
 * The dead-letter topic is the record of tasks that failed for good: read from its start
 * (nothing is consumed or committed). A record already sent back to work is remembered in
 * mv:dlq:retried and no longer listed. Retrying a mailbox queues its task again in the
 * tenant's fair queue with attempt 0 and the same run id, so the run's results replace the
 * failure when it succeeds. */
#include "cli.h"

#include "mv/queue.h"
#include "mv/task.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define DLQ_MAX_RECORDS 200000

typedef struct dlq_entry {
    int32_t partition;
    int64_t offset;
    mv_task t;
} dlq_entry;

typedef struct dlq_list {
    mv_state *st;
    const char *tenant;
    dlq_entry *v;
    size_t n, cap;
    size_t invalid;
    mv_err e;
    char *err;
    size_t errlen;
} dlq_list;

static int dlq_cb(void *ud, int32_t partition, int64_t offset, const void *key, size_t keylen,
                  const void *val, size_t len)
{
    (void)key;
    (void)keylen;
    dlq_list *l = ud;
    mv_task t;
    char derr[MV_ERRLEN];
    if (mv_task_decode(val, len, &t, derr, sizeof derr)) {
        l->invalid++;
        return 0;
    }
    if (l->tenant && strcmp(t.tenant, l->tenant) != 0) return 0;
    int retried = 0;
    if ((l->e = mv_state_dlq_retried(l->st, partition, offset, 0, &retried, l->err, l->errlen)))
        return 1;
    if (retried) return 0;
    if (l->n == l->cap) {
        size_t nc = l->cap ? 2 * l->cap : 64;
        dlq_entry *nv = realloc(l->v, nc * sizeof *nv);
        if (!nv) {
            l->e = mv_seterr(l->err, l->errlen, MV_ENOMEM, "out of memory");
            return 1;
        }
        l->v = nv;
        l->cap = nc;
    }
    l->v[l->n++] = (dlq_entry){partition, offset, t};
    return 0;
}

static mv_err dlq_collect(mv_state *st, const mv_config *cfg, const char *tenant, dlq_list *l,
                          char *err, size_t errlen)
{
    memset(l, 0, sizeof *l);
    l->st = st;
    l->tenant = tenant;
    l->err = err;
    l->errlen = errlen;
    if (tenant && !mv_state_tenant_exists(st, tenant))
        return mv_seterr(err, errlen, MV_ENOTFOUND, "tenant \"%s\" does not exist", tenant);
    mv_err e = mv_queue_read_all(cfg, cfg->topic_dlq, DLQ_MAX_RECORDS, dlq_cb, l, err, errlen);
    return e ? e : l->e;
}

json_t *cli_dlq_json(mv_state *st, const mv_config *cfg, const char *tenant, mv_err *e, char *err,
                     size_t errlen)
{
    dlq_list l;
    if ((*e = dlq_collect(st, cfg, tenant, &l, err, errlen))) {
        free(l.v);
        return NULL;
    }
    json_t *arr = json_array();
    for (size_t i = 0; i < l.n; i++) {
        const mv_task *t = &l.v[i].t;
        json_t *o = json_object();
        json_object_set_new(o, "partition", json_integer(l.v[i].partition));
        json_object_set_new(o, "offset", json_integer(l.v[i].offset));
        json_object_set_new(o, "tenant", json_string(t->tenant));
        json_object_set_new(o, "profile", json_string(t->profile));
        json_object_set_new(o, "mailbox", json_string(t->mailbox));
        json_object_set_new(o, "kind", json_string(mv_task_kind_name(t->kind)));
        json_object_set_new(o, "run", json_string(t->run_id));
        json_object_set_new(o, "task", json_string(t->id));
        json_object_set_new(o, "attempt", json_integer(t->attempt));
        json_object_set_new(o, "chunk", json_integer(t->chunk));
        json_object_set_new(o, "error", json_string(t->last_error));
        json_object_set_new(o, "created_ms", json_integer(t->created_ms));
        json_array_append_new(arr, o);
    }
    json_t *root = json_object();
    json_object_set_new(root, "records", arr);
    json_object_set_new(root, "undecodable", json_integer((json_int_t)l.invalid));
    free(l.v);
    return root;
}

mv_err cli_dlq_retry(mv_state *st, const mv_config *cfg, const char *tenant, const char *mailbox,
                     int *n, char *err, size_t errlen)
{
    dlq_list l;
    *n = 0;
    mv_err e = dlq_collect(st, cfg, tenant, &l, err, errlen);
    for (size_t i = 0; !e && i < l.n; i++) {
        const mv_task *t = &l.v[i].t;
        if (mailbox && strcmp(t->mailbox, mailbox) != 0) continue;
        /* a mailbox that failed more than once is retried once, from its newest record */
        int newest = 1;
        for (size_t j = 0; j < l.n; j++)
            if (j != i && !strcmp(l.v[j].t.mailbox, t->mailbox) &&
                !strcmp(l.v[j].t.tenant, t->tenant) && l.v[j].t.created_ms > t->created_ms)
                newest = 0;
        if (newest) {
            mv_task r = *t;
            mv_uuid(r.id);
            r.attempt = 0;
            r.not_before_ms = 0;
            r.last_error[0] = '\0';
            r.created_ms = mv_now_ms();
            char *buf = NULL, now[32];
            size_t len = 0;
            snprintf(now, sizeof now, "%lld", (long long)mv_now_ms());
            if ((e = mv_task_encode(&r, &buf, &len, err, errlen))) break;
            e = mv_state_status_set(st, r.tenant, r.mailbox, err, errlen, "state", "queued", "task",
                                    r.id, "run", r.run_id, "attempt", "0", "error", "", "queued_ms",
                                    now, "finished_ms", "", NULL);
            if (!e) e = mv_state_cancel_clear(st, r.tenant, r.mailbox, err, errlen);
            if (!e) e = mv_state_fair_push(st, r.tenant, r.mailbox, buf, len, 0, NULL, err, errlen);
            free(buf);
            if (e) break;
            (*n)++;
        }
        e = mv_state_dlq_retried(st, l.v[i].partition, l.v[i].offset, 1, NULL, err, errlen);
    }
    free(l.v);
    if (!e && *n == 0)
        e = mv_seterr(err, errlen, MV_ENOTFOUND, "no dead-letter record of %s%s%s to retry", tenant,
                      mailbox ? "/" : "", mailbox ? mailbox : "");
    return e;
}

int cmd_dlq(cli *c, int argc, char **argv)
{
    const char *usage = "usage: mailvault dlq list [--tenant T] [--json] | "
                        "dlq retry --tenant T [--mailbox M]";
    if (argc < 1 || (strcmp(argv[0], "list") && strcmp(argv[0], "retry")))
        return cli_fail(2, "%s", usage);
    const char *tenant = NULL, *mailbox = NULL;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--tenant") && i + 1 < argc)
            tenant = argv[++i];
        else if (!strcmp(argv[i], "--mailbox") && i + 1 < argc)
            mailbox = argv[++i];
        else
            return cli_fail(2, "%s", usage);
    }
    if (tenant && !mv_name_valid(tenant))
        return cli_fail(2, "--tenant: \"%s\" is not a valid tenant name", tenant);
    if (argv[0][0] == 'r' && !tenant) return cli_fail(2, "dlq retry: --tenant is required");
    mv_state *st = cli_state(c);
    if (!st) return 1;
    char err[MV_ERRLEN];
    mv_err e = MV_OK;
    int rc = 0;
    if (argv[0][0] == 'r') {
        int n = 0;
        if ((e = cli_dlq_retry(st, &c->cfg, tenant, mailbox, &n, err, sizeof err)))
            rc = cli_fail(1, "%s", err);
        else
            printf("%d mailbox%s of tenant %s queued again\n", n, n == 1 ? "" : "es", tenant);
    } else {
        json_t *j = cli_dlq_json(st, &c->cfg, tenant, &e, err, sizeof err);
        if (!j) {
            rc = cli_fail(1, "%s", err);
        } else if (c->json) {
            char *text = json_dumps(j, JSON_INDENT(2));
            if (text) puts(text);
            free(text);
        } else {
            json_t *recs = json_object_get(j, "records"), *o;
            size_t i;
            printf("TENANT\tMAILBOX\tPROFILE\tRUN\tATTEMPT\tERROR\n");
            json_array_foreach(recs, i, o)
            {
                printf("%s\t%s\t%s\t%s\t%lld\t%s\n",
                       json_string_value(json_object_get(o, "tenant")),
                       json_string_value(json_object_get(o, "mailbox")),
                       json_string_value(json_object_get(o, "profile")),
                       json_string_value(json_object_get(o, "run")),
                       (long long)json_integer_value(json_object_get(o, "attempt")),
                       json_string_value(json_object_get(o, "error")));
            }
            long long bad = (long long)json_integer_value(json_object_get(j, "undecodable"));
            if (bad) printf("(%lld undecodable record%s not shown)\n", bad, bad == 1 ? "" : "s");
        }
        json_decref(j);
    }
    mv_state_close(st);
    return rc;
}

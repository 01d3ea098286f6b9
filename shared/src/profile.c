/* profile.c - parse, validate and serialise archiving profiles (JSON via jansson).
 *
 * Validation is strict because a profile comes from an operator's file: unknown keys are
 * refused (a typo such as "exlude" must not silently archive Trash), and every error names
 * the JSON path of the offending field. */
#define _GNU_SOURCE /* FNM_CASEFOLD */
#include "mv/profile.h"

#include "mv/crypt.h"

#include <ctype.h>
#include <errno.h>
#include <fnmatch.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static mv_err check_keys(json_t *obj, const char *path, const char *const *allowed, char *err,
                         size_t errlen)
{
    const char *k;
    json_t *v;
    json_object_foreach(obj, k, v)
    {
        int ok = 0;
        for (size_t i = 0; allowed[i]; i++)
            if (strcmp(k, allowed[i]) == 0) ok = 1;
        if (!ok) return mv_seterr(err, errlen, MV_EINVAL, "%s%s: unknown field", path, k);
    }
    return MV_OK;
}

static mv_err get_str(json_t *obj, const char *key, const char *path, int required, char *out,
                      size_t outlen, char *err, size_t errlen)
{
    json_t *v = json_object_get(obj, key);
    if (!v) {
        if (required) return mv_seterr(err, errlen, MV_EINVAL, "%s%s: missing", path, key);
        return MV_OK;
    }
    if (!json_is_string(v))
        return mv_seterr(err, errlen, MV_EINVAL, "%s%s: must be a string", path, key);
    const char *s = json_string_value(v);
    if (strlen(s) >= outlen)
        return mv_seterr(err, errlen, MV_EINVAL, "%s%s: longer than %zu characters", path, key,
                         outlen - 1);
    if (required && !*s) return mv_seterr(err, errlen, MV_EINVAL, "%s%s: empty", path, key);
    snprintf(out, outlen, "%s", s);
    return MV_OK;
}

static mv_err get_patterns(json_t *obj, const char *prefix, const char *key, char ***out, size_t *n,
                           char *err, size_t errlen)
{
    json_t *arr = json_object_get(obj, key);
    *out = NULL;
    *n = 0;
    if (!arr) return MV_OK;
    if (!json_is_array(arr))
        return mv_seterr(err, errlen, MV_EINVAL, "%s%s: must be an array of strings", prefix, key);
    size_t cnt = json_array_size(arr);
    if (cnt > MV_PROFILE_MAX_PATTERNS)
        return mv_seterr(err, errlen, MV_EINVAL, "%s%s: more than %d patterns", prefix, key,
                         MV_PROFILE_MAX_PATTERNS);
    if (cnt == 0) return MV_OK;
    *out = calloc(cnt, sizeof(char *));
    if (!*out) return MV_ENOMEM;
    for (size_t i = 0; i < cnt; i++) {
        json_t *v = json_array_get(arr, i);
        if (!json_is_string(v) || !*json_string_value(v) || strlen(json_string_value(v)) > 1000)
            return mv_seterr(err, errlen, MV_EINVAL,
                             "%s%s[%zu]: must be a non-empty string of at most 1000 "
                             "characters",
                             prefix, key, i);
        (*out)[i] = strdup(json_string_value(v));
        if (!(*out)[i]) return MV_ENOMEM;
        (*n)++;
    }
    return MV_OK;
}

#define PEM_MAX (64 * 1024)

static char *read_pem_file(const char *path, const char *field, char *err, size_t errlen)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        mv_seterr(err, errlen, MV_EINVAL, "%s: cannot open %s: %s", field, path, strerror(errno));
        return NULL;
    }
    char *buf = malloc(PEM_MAX + 1);
    size_t n = buf ? fread(buf, 1, PEM_MAX + 1, f) : 0;
    fclose(f);
    if (!buf) return NULL;
    if (n == 0 || n > PEM_MAX || !strstr(buf, "-----BEGIN ")) {
        mv_seterr(err, errlen, MV_EINVAL, "%s: %s is not a PEM file of at most %d bytes", field,
                  path, PEM_MAX);
        mv_crypt_wipe(buf, n);
        free(buf);
        return NULL;
    }
    buf[n] = '\0';
    return buf;
}

/* A certificate credential: on input "certificate_file" + "private_key_file" (paths, read
 * now; the key becomes a sealed secret), stored as "certificate" (the PEM, public). */
static mv_err get_cert(json_t *gr, int allow_secrets, mv_profile *p, char *err, size_t errlen)
{
    json_t *cf = json_object_get(gr, "certificate_file");
    json_t *kf = json_object_get(gr, "private_key_file");
    json_t *cp = json_object_get(gr, "certificate");
    if ((cf || kf) && !allow_secrets)
        return mv_seterr(err, errlen, MV_EINVAL,
                         "graph.private_key_file: a stored profile must not contain secrets");
    if (!cf != !kf)
        return mv_seterr(err, errlen, MV_EINVAL,
                         "graph.certificate_file and graph.private_key_file go together");
    if (cf) {
        if (!json_is_string(cf) || !json_is_string(kf))
            return mv_seterr(err, errlen, MV_EINVAL,
                             "graph.certificate_file, graph.private_key_file: must be paths");
        if (!(p->client_cert_pem =
                  read_pem_file(json_string_value(cf), "graph.certificate_file", err, errlen)) ||
            !(p->client_key_pem =
                  read_pem_file(json_string_value(kf), "graph.private_key_file", err, errlen)))
            return MV_EINVAL;
        return MV_OK;
    }
    if (cp) {
        if (!json_is_string(cp) || !strstr(json_string_value(cp), "-----BEGIN CERTIFICATE") ||
            strlen(json_string_value(cp)) > PEM_MAX)
            return mv_seterr(err, errlen, MV_EINVAL,
                             "graph.certificate: must be a PEM certificate");
        if (!(p->client_cert_pem = strdup(json_string_value(cp)))) return MV_ENOMEM;
    }
    return MV_OK;
}

/* https://, or http:// to a loopback address only (a local test simulator): the client secret
 * and tokens must never cross a network in clear. */
static mv_err check_base_url(const char *field, const char *url, char *err, size_t errlen)
{
    if (strncmp(url, "https://", 8) == 0) return MV_OK;
    static const char *const loop[] = {"http://127.0.0.1:", "http://127.0.0.1/",
                                       "http://localhost:", "http://localhost/",
                                       "http://[::1]:",     "http://[::1]/"};
    for (size_t i = 0; i < sizeof loop / sizeof loop[0]; i++)
        if (strncmp(url, loop[i], strlen(loop[i])) == 0) return MV_OK;
    return mv_seterr(err, errlen, MV_EINVAL,
                     "%s: must be an https:// URL (http:// only to a loopback address)", field);
}

static mv_err parse_obj(json_t *root, int allow_secrets, mv_profile *p, char *err, size_t errlen)
{
    static const char *const top_keys[] = {"name",      "type",      "server",   "graph", "folders",
                                           "mailboxes", "directory", "deletion", NULL};
    static const char *const server_keys[] = {"host", "port", "tls", "verify", NULL};
    static const char *const graph_keys[] = {"tenant_id",
                                             "client_id",
                                             "client_secret",
                                             "cloud",
                                             "login_base",
                                             "graph_base",
                                             "verify",
                                             "certificate_file",
                                             "private_key_file",
                                             "certificate",
                                             NULL};
    static const char *const folder_keys[] = {"include", "exclude", NULL};
    static const char *const mbox_keys[] = {"login", "password", NULL};
    mv_err rc;

    if (!json_is_object(root))
        return mv_seterr(err, errlen, MV_EINVAL, "profile: must be a JSON object");
    if ((rc = check_keys(root, "", top_keys, err, errlen))) return rc;
    if ((rc = get_str(root, "name", "", 1, p->name, sizeof p->name, err, errlen))) return rc;
    if (!mv_name_valid(p->name))
        return mv_seterr(err, errlen, MV_EINVAL,
                         "name: \"%s\" is not a valid name (1-63 of a-z 0-9 . _ -, starting "
                         "with a letter or digit)",
                         p->name);
    snprintf(p->type, sizeof p->type, "imap");
    if ((rc = get_str(root, "type", "", 0, p->type, sizeof p->type, err, errlen))) return rc;
    if (strcmp(p->type, "imap") == 0)
        p->source = MV_SOURCE_IMAP;
    else if (strcmp(p->type, "graph") == 0)
        p->source = MV_SOURCE_GRAPH;
    else
        return mv_seterr(err, errlen, MV_EINVAL,
                         "type: \"%s\" is not supported (supported: imap, graph)", p->type);
    p->verify = 1;

    json_t *srv = json_object_get(root, "server");
    json_t *gr = json_object_get(root, "graph");
    if (p->source == MV_SOURCE_GRAPH) {
        if (srv) return mv_seterr(err, errlen, MV_EINVAL, "server: not used by type graph");
        if (!gr) return mv_seterr(err, errlen, MV_EINVAL, "graph: missing");
        if (!json_is_object(gr))
            return mv_seterr(err, errlen, MV_EINVAL, "graph: must be an object");
        if ((rc = check_keys(gr, "graph.", graph_keys, err, errlen))) return rc;
        if ((rc = get_str(gr, "tenant_id", "graph.", 1, p->tenant_id, sizeof p->tenant_id, err,
                          errlen)) ||
            (rc = get_str(gr, "client_id", "graph.", 1, p->client_id, sizeof p->client_id, err,
                          errlen)))
            return rc;
        for (const char *c = p->tenant_id; *c; c++)
            if (!(isalnum((unsigned char)*c) || *c == '-' || *c == '.'))
                return mv_seterr(err, errlen, MV_EINVAL,
                                 "graph.tenant_id: \"%s\" is not a tenant id or domain",
                                 p->tenant_id);
        snprintf(p->cloud, sizeof p->cloud, "global");
        if ((rc = get_str(gr, "cloud", "graph.", 0, p->cloud, sizeof p->cloud, err, errlen)))
            return rc;
        const char *login = NULL, *graph = NULL;
        if (strcmp(p->cloud, "global") == 0) {
            login = "https://login.microsoftonline.com";
            graph = "https://graph.microsoft.com/v1.0";
        } else if (strcmp(p->cloud, "china") == 0) {
            login = "https://login.chinacloudapi.cn";
            graph = "https://microsoftgraph.chinacloudapi.cn/v1.0";
        } else {
            return mv_seterr(err, errlen, MV_EINVAL,
                             "graph.cloud: \"%s\" is not one of global, china", p->cloud);
        }
        snprintf(p->login_base, sizeof p->login_base, "%s", login);
        snprintf(p->graph_base, sizeof p->graph_base, "%s", graph);
        if ((rc = get_str(gr, "login_base", "graph.", 0, p->login_base, sizeof p->login_base, err,
                          errlen)) ||
            (rc = get_str(gr, "graph_base", "graph.", 0, p->graph_base, sizeof p->graph_base, err,
                          errlen)))
            return rc;
        if ((rc = check_base_url("graph.login_base", p->login_base, err, errlen)) ||
            (rc = check_base_url("graph.graph_base", p->graph_base, err, errlen)))
            return rc;
        json_t *verify = json_object_get(gr, "verify");
        if (verify) {
            if (!json_is_boolean(verify))
                return mv_seterr(err, errlen, MV_EINVAL, "graph.verify: must be true or false");
            p->verify = json_is_true(verify);
        }
        if ((rc = get_cert(gr, allow_secrets, p, err, errlen))) return rc;
        json_t *sec = json_object_get(gr, "client_secret");
        if (sec) {
            if (!allow_secrets)
                return mv_seterr(err, errlen, MV_EINVAL,
                                 "graph.client_secret: a stored profile must not contain secrets");
            if (!json_is_string(sec) || !*json_string_value(sec) ||
                strlen(json_string_value(sec)) > 4096)
                return mv_seterr(err, errlen, MV_EINVAL,
                                 "graph.client_secret: must be a non-empty string of at most "
                                 "4096 bytes");
            p->client_secret = strdup(json_string_value(sec));
            if (!p->client_secret) return MV_ENOMEM;
        }
    } else {
        if (gr) return mv_seterr(err, errlen, MV_EINVAL, "graph: not used by type imap");
        if (!srv) return mv_seterr(err, errlen, MV_EINVAL, "server: missing");
        if (!json_is_object(srv))
            return mv_seterr(err, errlen, MV_EINVAL, "server: must be an object");
        if ((rc = check_keys(srv, "server.", server_keys, err, errlen))) return rc;
        if ((rc = get_str(srv, "host", "server.", 1, p->host, sizeof p->host, err, errlen)))
            return rc;
        char tls[32] = "implicit";
        if ((rc = get_str(srv, "tls", "server.", 0, tls, sizeof tls, err, errlen))) return rc;
        int m = mv_tls_mode_parse(tls);
        if (m < 0)
            return mv_seterr(err, errlen, MV_EINVAL,
                             "server.tls: \"%s\" is not one of none, starttls, implicit", tls);
        p->tls = (mv_tls_mode)m;
        json_t *port = json_object_get(srv, "port");
        if (port) {
            if (!json_is_integer(port) || json_integer_value(port) < 1 ||
                json_integer_value(port) > 65535)
                return mv_seterr(err, errlen, MV_EINVAL,
                                 "server.port: must be an integer 1..65535");
            p->port = (int)json_integer_value(port);
        } else {
            p->port = p->tls == MV_TLS_IMPLICIT ? 993 : 143;
        }
        json_t *verify = json_object_get(srv, "verify");
        if (verify) {
            if (!json_is_boolean(verify))
                return mv_seterr(err, errlen, MV_EINVAL, "server.verify: must be true or false");
            p->verify = json_is_true(verify);
        }
    }

    json_t *folders = json_object_get(root, "folders");
    if (folders) {
        if (!json_is_object(folders))
            return mv_seterr(err, errlen, MV_EINVAL, "folders: must be an object");
        if ((rc = check_keys(folders, "folders.", folder_keys, err, errlen))) return rc;
        if ((rc = get_patterns(folders, "folders.", "include", &p->include, &p->ninclude, err,
                               errlen)))
            return rc;
        if ((rc = get_patterns(folders, "folders.", "exclude", &p->exclude, &p->nexclude, err,
                               errlen)))
            return rc;
    }

    json_t *dir = json_object_get(root, "directory");
    if (dir) {
        static const char *const dir_keys[] = {"all_users", "include", "exclude", NULL};
        if (p->source != MV_SOURCE_GRAPH)
            return mv_seterr(err, errlen, MV_EINVAL, "directory: only for type graph");
        if (!json_is_object(dir))
            return mv_seterr(err, errlen, MV_EINVAL, "directory: must be an object");
        if ((rc = check_keys(dir, "directory.", dir_keys, err, errlen))) return rc;
        p->directory = 1;
        json_t *all = json_object_get(dir, "all_users");
        if (all && !json_is_boolean(all))
            return mv_seterr(err, errlen, MV_EINVAL, "directory.all_users: must be true or false");
        p->all_users = all && json_is_true(all);
        if ((rc = get_patterns(dir, "directory.", "include", &p->dir_include, &p->ndir_include, err,
                               errlen)) ||
            (rc = get_patterns(dir, "directory.", "exclude", &p->dir_exclude, &p->ndir_exclude, err,
                               errlen)))
            return rc;
    }

    json_t *del = json_object_get(root, "deletion");
    if (del) {
        static const char *const del_keys[] = {"older_than_days", NULL};
        if (!json_is_object(del))
            return mv_seterr(err, errlen, MV_EINVAL, "deletion: must be an object");
        if ((rc = check_keys(del, "deletion.", del_keys, err, errlen))) return rc;
        json_t *d = json_object_get(del, "older_than_days");
        if (!d)
            return mv_seterr(err, errlen, MV_EINVAL,
                             "deletion.older_than_days: missing (omit \"deletion\" to delete "
                             "nothing)");
        if (!json_is_integer(d) || json_integer_value(d) < 0 ||
            json_integer_value(d) > MV_PROFILE_MAX_DELETE_DAYS)
            return mv_seterr(err, errlen, MV_EINVAL,
                             "deletion.older_than_days: must be an integer from 0 to %d",
                             MV_PROFILE_MAX_DELETE_DAYS);
        if (p->source != MV_SOURCE_GRAPH)
            return mv_seterr(err, errlen, MV_EINVAL,
                             "deletion: deleting from the source after archiving is supported "
                             "for type graph only");
        p->delete_enabled = 1;
        p->delete_after_days = (int)json_integer_value(d);
    }

    json_t *mbs = json_object_get(root, "mailboxes");
    if (!mbs && p->directory) return MV_OK; /* the mailboxes come from the tenant directory */
    if (!mbs) return mv_seterr(err, errlen, MV_EINVAL, "mailboxes: missing");
    if (!json_is_array(mbs) || json_array_size(mbs) == 0)
        return mv_seterr(err, errlen, MV_EINVAL, "mailboxes: must be a non-empty array");
    size_t n = json_array_size(mbs);
    if (n > MV_PROFILE_MAX_MAILBOXES)
        return mv_seterr(err, errlen, MV_EINVAL, "mailboxes: more than %d entries",
                         MV_PROFILE_MAX_MAILBOXES);
    p->mailboxes = calloc(n, sizeof *p->mailboxes);
    if (!p->mailboxes) return MV_ENOMEM;
    for (size_t i = 0; i < n; i++) {
        json_t *mb = json_array_get(mbs, i);
        char path[48];
        snprintf(path, sizeof path, "mailboxes[%zu].", i);
        if (!json_is_object(mb))
            return mv_seterr(err, errlen, MV_EINVAL, "mailboxes[%zu]: must be an object", i);
        if ((rc = check_keys(mb, path, mbox_keys, err, errlen))) return rc;
        mv_profile_mailbox *x = &p->mailboxes[i];
        p->nmailboxes++;
        if ((rc = get_str(mb, "login", path, 1, x->login, sizeof x->login, err, errlen))) return rc;
        if (!mv_mailbox_valid(x->login))
            return mv_seterr(err, errlen, MV_EINVAL,
                             "%slogin: \"%s\" is not a valid login (printable ASCII, no spaces, "
                             "'/' or '|')",
                             path, x->login);
        for (size_t j = 0; j < i; j++)
            if (strcmp(p->mailboxes[j].login, x->login) == 0)
                return mv_seterr(err, errlen, MV_EINVAL, "%slogin: \"%s\" is listed twice", path,
                                 x->login);
        json_t *pw = json_object_get(mb, "password");
        if (pw && p->source == MV_SOURCE_GRAPH)
            return mv_seterr(err, errlen, MV_EINVAL,
                             "%spassword: type graph uses the app's client secret, not "
                             "passwords",
                             path);
        if (pw) {
            if (!allow_secrets)
                return mv_seterr(err, errlen, MV_EINVAL,
                                 "%spassword: a stored profile must not contain secrets", path);
            if (!json_is_string(pw) || !*json_string_value(pw) ||
                strlen(json_string_value(pw)) > 4096)
                return mv_seterr(err, errlen, MV_EINVAL,
                                 "%spassword: must be a non-empty string of at most 4096 bytes",
                                 path);
            x->password = strdup(json_string_value(pw));
            if (!x->password) return MV_ENOMEM;
        }
    }
    return MV_OK;
}

mv_err mv_profile_parse(const char *json, int allow_secrets, mv_profile *p, char *err,
                        size_t errlen)
{
    memset(p, 0, sizeof *p);
    json_error_t je;
    json_t *root = json_loads(json, JSON_REJECT_DUPLICATES, &je);
    if (!root) {
        /* jansson quotes the text near the error, which may be part of a secret */
        if (allow_secrets)
            return mv_seterr(err, errlen, MV_EINVAL, "profile is not valid JSON: line %d column %d",
                             je.line, je.column);
        return mv_seterr(err, errlen, MV_EINVAL, "profile is not valid JSON: line %d column %d: %s",
                         je.line, je.column, je.text);
    }
    mv_err rc = parse_obj(root, allow_secrets, p, err, errlen);
    json_decref(root);
    if (rc) mv_profile_free(p);
    return rc;
}

static json_t *patterns_json(char **v, size_t n)
{
    json_t *a = json_array();
    for (size_t i = 0; a && i < n; i++)
        json_array_append_new(a, json_string(v[i]));
    return a;
}

char *mv_profile_to_json(const mv_profile *p)
{
    json_t *root = json_object();
    json_t *srv = json_object();
    json_t *folders = json_object();
    json_t *mbs = json_array();
    char *out = NULL;
    if (!root || !srv || !folders || !mbs) goto out;
    json_object_set_new(root, "name", json_string(p->name));
    json_object_set_new(root, "type", json_string(p->type));
    if (p->source == MV_SOURCE_GRAPH) {
        json_object_set_new(srv, "tenant_id", json_string(p->tenant_id));
        json_object_set_new(srv, "client_id", json_string(p->client_id));
        json_object_set_new(srv, "cloud", json_string(p->cloud));
        json_object_set_new(srv, "login_base", json_string(p->login_base));
        json_object_set_new(srv, "graph_base", json_string(p->graph_base));
        if (p->client_cert_pem)
            json_object_set_new(srv, "certificate", json_string(p->client_cert_pem));
    } else {
        json_object_set_new(srv, "host", json_string(p->host));
        json_object_set_new(srv, "port", json_integer(p->port));
        json_object_set_new(srv, "tls", json_string(mv_tls_mode_name(p->tls)));
    }
    json_object_set_new(srv, "verify", json_boolean(p->verify));
    if (p->ninclude)
        json_object_set_new(folders, "include", patterns_json(p->include, p->ninclude));
    if (p->nexclude)
        json_object_set_new(folders, "exclude", patterns_json(p->exclude, p->nexclude));
    if (p->directory) {
        json_t *d = json_object();
        json_object_set_new(d, "all_users", json_boolean(p->all_users));
        if (p->ndir_include)
            json_object_set_new(d, "include", patterns_json(p->dir_include, p->ndir_include));
        if (p->ndir_exclude)
            json_object_set_new(d, "exclude", patterns_json(p->dir_exclude, p->ndir_exclude));
        json_object_set_new(root, "directory", d);
    }
    if (p->delete_enabled) {
        json_t *d = json_object();
        json_object_set_new(d, "older_than_days", json_integer(p->delete_after_days));
        json_object_set_new(root, "deletion", d);
    }
    for (size_t i = 0; i < p->nmailboxes; i++) {
        json_t *mb = json_object();
        json_object_set_new(mb, "login", json_string(p->mailboxes[i].login));
        json_array_append_new(mbs, mb);
    }
    json_object_set(root, p->source == MV_SOURCE_GRAPH ? "graph" : "server", srv);
    json_object_set(root, "folders", folders);
    if (p->nmailboxes || !p->directory) json_object_set(root, "mailboxes", mbs);
    out = json_dumps(root, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
out:
    json_decref(root);
    json_decref(srv);
    json_decref(folders);
    json_decref(mbs);
    return out;
}

void mv_profile_free(mv_profile *p)
{
    if (!p) return;
    for (size_t i = 0; i < p->ninclude; i++)
        free(p->include[i]);
    for (size_t i = 0; i < p->nexclude; i++)
        free(p->exclude[i]);
    for (size_t i = 0; i < p->ndir_include; i++)
        free(p->dir_include[i]);
    for (size_t i = 0; i < p->ndir_exclude; i++)
        free(p->dir_exclude[i]);
    free(p->dir_include);
    free(p->dir_exclude);
    free(p->include);
    free(p->exclude);
    for (size_t i = 0; i < p->nmailboxes; i++) {
        if (p->mailboxes[i].password) {
            mv_crypt_wipe(p->mailboxes[i].password, strlen(p->mailboxes[i].password));
            free(p->mailboxes[i].password);
        }
    }
    free(p->mailboxes);
    if (p->client_secret) {
        mv_crypt_wipe(p->client_secret, strlen(p->client_secret));
        free(p->client_secret);
    }
    if (p->client_key_pem) {
        mv_crypt_wipe(p->client_key_pem, strlen(p->client_key_pem));
        free(p->client_key_pem);
    }
    free(p->client_cert_pem);
    memset(p, 0, sizeof *p);
}

int mv_profile_folder_selected(const mv_profile *p, const char *folder)
{
    int inc = p->ninclude == 0;
    for (size_t i = 0; !inc && i < p->ninclude; i++)
        if (fnmatch(p->include[i], folder, 0) == 0) inc = 1;
    if (!inc) return 0;
    for (size_t i = 0; i < p->nexclude; i++)
        if (fnmatch(p->exclude[i], folder, 0) == 0) return 0;
    return 1;
}

int mv_profile_directory_selected(const mv_profile *p, const char *login, int licensed)
{
    if (!p->directory) return 0;
    if (!licensed && !p->all_users) return 0;
    int inc = p->ndir_include == 0;
    for (size_t i = 0; !inc && i < p->ndir_include; i++)
        if (fnmatch(p->dir_include[i], login, FNM_CASEFOLD) == 0) inc = 1;
    if (!inc) return 0;
    for (size_t i = 0; i < p->ndir_exclude; i++)
        if (fnmatch(p->dir_exclude[i], login, FNM_CASEFOLD) == 0) return 0;
    return 1;
}

long mv_profile_find_mailbox(const mv_profile *p, const char *login)
{
    for (size_t i = 0; i < p->nmailboxes; i++)
        if (strcmp(p->mailboxes[i].login, login) == 0) return (long)i;
    return -1;
}

void mv_profile_cred_ad(const char *tenant, const char *profile, const char *mailbox, char *out,
                        size_t outlen)
{
    snprintf(out, outlen, "cred:%s:%s:%s", tenant, profile, mailbox);
}

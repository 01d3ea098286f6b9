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
#include <strings.h>

/* Every key of obj is in one of the n NULL-terminated lists. */
static mv_err check_keys_in(json_t *obj, const char *path, const char *const *const *lists,
                            size_t n, char *err, size_t errlen)
{
    const char *k;
    json_t *v;
    json_object_foreach(obj, k, v)
    {
        int ok = 0;
        for (size_t l = 0; l < n; l++)
            for (size_t i = 0; lists[l][i]; i++)
                ok |= !strcmp(k, lists[l][i]);
        if (!ok) return mv_seterr(err, errlen, MV_EINVAL, "%s%s: unknown field", path, k);
    }
    return MV_OK;
}

static mv_err check_keys(json_t *obj, const char *path, const char *const *allowed, char *err,
                         size_t errlen)
{
    return check_keys_in(obj, path, &allowed, 1, err, errlen);
}

/* The keys of an EWS connection (an ews profile's "ews", an export's ews destination) besides
 * "password" and "verify". */
static const char *const ews_conn_keys[] = {"url",
                                            "auth",
                                            "username",
                                            "impersonation",
                                            "server_version",
                                            "tenant_id",
                                            "client_id",
                                            "client_secret",
                                            "cloud",
                                            "login_base",
                                            "certificate_file",
                                            "private_key_file",
                                            "certificate",
                                            NULL};
static const char *const secret_verify_keys[] = {"password", "verify", NULL};

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
static mv_err get_cert(json_t *gr, const char *sec, int allow_secrets, mv_profile *p, char *err,
                       size_t errlen)
{
    json_t *cf = json_object_get(gr, "certificate_file");
    json_t *kf = json_object_get(gr, "private_key_file");
    json_t *cp = json_object_get(gr, "certificate");
    if ((cf || kf) && !allow_secrets)
        return mv_seterr(err, errlen, MV_EINVAL,
                         "%s.private_key_file: a stored profile must not contain secrets", sec);
    if (!cf != !kf)
        return mv_seterr(err, errlen, MV_EINVAL,
                         "%s.certificate_file and %s.private_key_file go together", sec, sec);
    if (cf) {
        if (!json_is_string(cf) || !json_is_string(kf))
            return mv_seterr(err, errlen, MV_EINVAL,
                             "%s.certificate_file, %s.private_key_file: must be paths", sec, sec);
        if (!(p->client_cert_pem =
                  read_pem_file(json_string_value(cf), "certificate_file", err, errlen)) ||
            !(p->client_key_pem =
                  read_pem_file(json_string_value(kf), "private_key_file", err, errlen)))
            return MV_EINVAL;
        return MV_OK;
    }
    if (cp) {
        if (!json_is_string(cp) || !strstr(json_string_value(cp), "-----BEGIN CERTIFICATE") ||
            strlen(json_string_value(cp)) > PEM_MAX)
            return mv_seterr(err, errlen, MV_EINVAL, "%s.certificate: must be a PEM certificate",
                             sec);
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

/* A secret on input (client secret, service account password): refused in a stored profile. */
static mv_err get_secret(json_t *obj, const char *key, const char *sec, int allow_secrets,
                         char **out, char *err, size_t errlen)
{
    json_t *v = json_object_get(obj, key);
    if (!v) return MV_OK;
    if (!allow_secrets)
        return mv_seterr(err, errlen, MV_EINVAL, "%s.%s: a stored profile must not contain secrets",
                         sec, key);
    if (!json_is_string(v) || !*json_string_value(v) || strlen(json_string_value(v)) > 4096)
        return mv_seterr(err, errlen, MV_EINVAL,
                         "%s.%s: must be a non-empty string of at most 4096 bytes", sec, key);
    if (!(*out = strdup(json_string_value(v)))) return MV_ENOMEM;
    return MV_OK;
}

static mv_err get_verify(json_t *obj, const char *sec, int *out, char *err, size_t errlen)
{
    json_t *v = json_object_get(obj, "verify");
    if (!v) return MV_OK;
    if (!json_is_boolean(v))
        return mv_seterr(err, errlen, MV_EINVAL, "%s.verify: must be true or false", sec);
    *out = json_is_true(v);
    return MV_OK;
}

/* An Entra ID app registration (tenant, client id, national cloud, secret or certificate), as
 * the graph section has it and the ews section with "auth": "oauth". */
static mv_err get_app(json_t *obj, const char *sec, int allow_secrets, mv_profile *p, char *err,
                      size_t errlen)
{
    char pre[32];
    snprintf(pre, sizeof pre, "%s.", sec);
    mv_err rc;
    if ((rc = get_str(obj, "tenant_id", pre, 1, p->tenant_id, sizeof p->tenant_id, err, errlen)) ||
        (rc = get_str(obj, "client_id", pre, 1, p->client_id, sizeof p->client_id, err, errlen)))
        return rc;
    for (const char *c = p->tenant_id; *c; c++)
        if (!(isalnum((unsigned char)*c) || *c == '-' || *c == '.'))
            return mv_seterr(err, errlen, MV_EINVAL,
                             "%s.tenant_id: \"%s\" is not a tenant id or domain", sec,
                             p->tenant_id);
    snprintf(p->cloud, sizeof p->cloud, "global");
    if ((rc = get_str(obj, "cloud", pre, 0, p->cloud, sizeof p->cloud, err, errlen))) return rc;
    if (strcmp(p->cloud, "global") == 0)
        snprintf(p->login_base, sizeof p->login_base, "https://login.microsoftonline.com");
    else if (strcmp(p->cloud, "china") == 0)
        snprintf(p->login_base, sizeof p->login_base, "https://login.chinacloudapi.cn");
    else
        return mv_seterr(err, errlen, MV_EINVAL, "%s.cloud: \"%s\" is not one of global, china",
                         sec, p->cloud);
    if ((rc = get_str(obj, "login_base", pre, 0, p->login_base, sizeof p->login_base, err, errlen)))
        return rc;
    char field[48];
    snprintf(field, sizeof field, "%s.login_base", sec);
    if ((rc = check_base_url(field, p->login_base, err, errlen))) return rc;
    if ((rc = get_cert(obj, sec, allow_secrets, p, err, errlen))) return rc;
    return get_secret(obj, "client_secret", sec, allow_secrets, &p->client_secret, err, errlen);
}

/* The EWS connection of an ews profile (sec "ews") or of an export destination (sec
 * "export.destination", whose keys the caller checks). */
static mv_err parse_ews(json_t *ew, const char *sec, int allow_secrets, mv_profile *p, char *err,
                        size_t errlen)
{
    mv_err rc;
    char pre[32];
    snprintf(pre, sizeof pre, "%s.", sec);
    if (!json_is_object(ew)) return mv_seterr(err, errlen, MV_EINVAL, "%s: must be an object", sec);
    const char *const *keys[] = {ews_conn_keys, secret_verify_keys};
    if (!strcmp(sec, "ews") && (rc = check_keys_in(ew, pre, keys, 2, err, errlen))) return rc;
    char auth[16] = "basic";
    if ((rc = get_str(ew, "auth", pre, 0, auth, sizeof auth, err, errlen))) return rc;
    if (strcmp(auth, "basic") == 0)
        p->ews_auth = MV_EWS_AUTH_BASIC;
    else if (strcmp(auth, "ntlm") == 0)
        p->ews_auth = MV_EWS_AUTH_NTLM;
    else if (strcmp(auth, "oauth") == 0)
        p->ews_auth = MV_EWS_AUTH_OAUTH;
    else
        return mv_seterr(err, errlen, MV_EINVAL, "%s.auth: \"%s\" is not one of basic, ntlm, oauth",
                         sec, auth);
    static const char *const app_keys[] = {
        "tenant_id",        "client_id",        "client_secret", "cloud", "login_base",
        "certificate_file", "private_key_file", "certificate",   NULL};
    if (p->ews_auth == MV_EWS_AUTH_OAUTH) {
        if (json_object_get(ew, "username") || json_object_get(ew, "password"))
            return mv_seterr(err, errlen, MV_EINVAL,
                             "%s.username, %s.password: not used with \"auth\": \"oauth\"", sec,
                             sec);
        if ((rc = get_app(ew, sec, allow_secrets, p, err, errlen))) return rc;
        snprintf(p->ews_url, sizeof p->ews_url, "%s",
                 strcmp(p->cloud, "china") == 0
                     ? "https://partner.outlook.cn/EWS/Exchange.asmx"
                     : "https://outlook.office365.com/EWS/Exchange.asmx");
    } else {
        for (size_t i = 0; app_keys[i]; i++)
            if (json_object_get(ew, app_keys[i]))
                return mv_seterr(err, errlen, MV_EINVAL,
                                 "%s.%s: only used with \"auth\": \"oauth\"", sec, app_keys[i]);
        if ((rc = get_str(ew, "username", pre, 1, p->ews_username, sizeof p->ews_username, err,
                          errlen)))
            return rc;
        if (mv_has_ctl(p->ews_username) || strchr(p->ews_username, ':'))
            return mv_seterr(err, errlen, MV_EINVAL,
                             "%s.username: no spaces, control characters or ':'", sec);
        if ((rc = get_secret(ew, "password", sec, allow_secrets, &p->client_secret, err, errlen)))
            return rc;
    }
    if ((rc = get_str(ew, "url", pre, p->ews_auth != MV_EWS_AUTH_OAUTH, p->ews_url,
                      sizeof p->ews_url, err, errlen)))
        return rc;
    char field[48];
    snprintf(field, sizeof field, "%surl", pre);
    if ((rc = check_base_url(field, p->ews_url, err, errlen))) return rc;
    p->ews_impersonate = 1;
    json_t *imp = json_object_get(ew, "impersonation");
    if (imp) {
        if (!json_is_boolean(imp))
            return mv_seterr(err, errlen, MV_EINVAL, "%s.impersonation: must be true or false",
                             sec);
        p->ews_impersonate = json_is_true(imp);
    }
    snprintf(p->ews_server_version, sizeof p->ews_server_version, "Exchange2016");
    if ((rc = get_str(ew, "server_version", pre, 0, p->ews_server_version,
                      sizeof p->ews_server_version, err, errlen)))
        return rc;
    static const char *const versions[] = {
        "Exchange2013", "Exchange2013_SP1", "Exchange2015", "Exchange2016", "V2015_10_05",
        "V2016_01_06",  "V2016_04_13",      "V2016_07_13",  "V2016_10_10",  "V2017_01_07",
        "V2017_04_14",  "V2017_07_11",      "V2017_10_09",  "V2018_01_08",  NULL};
    int known = 0;
    for (size_t i = 0; versions[i]; i++)
        known |= strcmp(versions[i], p->ews_server_version) == 0;
    if (!known)
        return mv_seterr(err, errlen, MV_EINVAL,
                         "%s.server_version: \"%s\" is not an EWS version (Exchange2013 .. "
                         "Exchange2016, V2015_10_05 .. V2018_01_08)",
                         sec, p->ews_server_version);
    return get_verify(ew, sec, &p->verify, err, errlen);
}

/* Keys of one destination type only: any of them given for another type is an error. */
static const char *const imap_only[] = {"host",         "port",        "tls", "login",
                                        "literal_plus", "multiappend", NULL};
static const char *const ews_only[] = {"mailbox", NULL}; /* besides ews_conn_keys */
static const char *const dir_only[] = {"path", "sign", NULL};

/* Every key of a destination belongs to some type, or to all mailbox destinations. */
static mv_err check_dest_keys(json_t *d, char *err, size_t errlen)
{
    static const char *const common[] = {"type", "layout", "root", NULL};
    const char *const *lists[] = {common,   secret_verify_keys, imap_only,
                                  ews_only, ews_conn_keys,      dir_only};
    return check_keys_in(d, "export.destination.", lists, sizeof lists / sizeof lists[0], err,
                         errlen);
}

static mv_err only_for(json_t *d, const char *const *keys, const char *type, char *err,
                       size_t errlen)
{
    for (size_t i = 0; keys[i]; i++)
        if (json_object_get(d, keys[i]))
            return mv_seterr(err, errlen, MV_EINVAL, "export.destination.%s: only for type %s",
                             keys[i], type);
    return MV_OK;
}

/* "root" (default "Archive Export") and "layout" (tree|flat) of a mailbox destination. */
static mv_err get_root_layout(json_t *d, mv_profile *p, char *err, size_t errlen)
{
    static const char pre[] = "export.destination.";
    mv_err rc;
    snprintf(p->exp_root, sizeof p->exp_root, "Archive Export");
    if ((rc = get_str(d, "root", pre, 0, p->exp_root, sizeof p->exp_root, err, errlen))) return rc;
    if (!p->exp_root[0])
        return mv_seterr(err, errlen, MV_EINVAL, "export.destination.root: must not be empty");
    for (const char *c = p->exp_root; *c; c++)
        if ((unsigned char)*c < 0x20 || *c == 0x7f)
            return mv_seterr(err, errlen, MV_EINVAL, "export.destination.root: control characters");
    char layout[16] = "tree";
    if ((rc = get_str(d, "layout", pre, 0, layout, sizeof layout, err, errlen))) return rc;
    if (strcmp(layout, "tree") && strcmp(layout, "flat"))
        return mv_seterr(err, errlen, MV_EINVAL,
                         "export.destination.layout: must be \"tree\" or \"flat\"");
    p->exp_flat = strcmp(layout, "flat") == 0;
    return MV_OK;
}

/* An Exchange mailbox as an export destination (EWS CreateItem): the connection as an ews
 * profile has it, the target mailbox, root and layout. */
static mv_err parse_export_ews(json_t *d, int allow_secrets, mv_profile *p, char *err,
                               size_t errlen)
{
    mv_err rc;
    p->exp_ews = 1;
    if ((rc = only_for(d, dir_only, "directory", err, errlen)) ||
        (rc = only_for(d, imap_only, "imap", err, errlen)) ||
        (rc = get_str(d, "mailbox", "export.destination.", 1, p->exp_login, sizeof p->exp_login,
                      err, errlen)))
        return rc;
    if (!mv_mailbox_valid(p->exp_login) || !strchr(p->exp_login, '@'))
        return mv_seterr(err, errlen, MV_EINVAL,
                         "export.destination.mailbox: \"%s\" is not an SMTP address", p->exp_login);
    if ((rc = parse_ews(d, "export.destination", allow_secrets, p, err, errlen))) return rc;
    return get_root_layout(d, p, err, errlen);
}

/* An IMAP mailbox as an export destination: any server (type imap: login and password), or a
 * Microsoft 365 mailbox (type m365: the tenant's app registration, AUTHENTICATE XOAUTH2 with a
 * token for Exchange Online; host outlook.office365.com unless given). */
static mv_err parse_export_imap(json_t *d, int m365, int allow_secrets, mv_profile *p, char *err,
                                size_t errlen)
{
    static const char pre[] = "export.destination.";
    /* of the EWS connection's keys, an m365 destination uses only the app's */
    static const char *const ews_not_app[] = {"url",           "auth",           "username",
                                              "impersonation", "server_version", NULL};
    mv_err rc;
    p->exp_imap = 1;
    p->exp_m365 = m365;
    if (json_object_get(d, "path") || json_object_get(d, "sign"))
        return mv_seterr(err, errlen, MV_EINVAL,
                         "export.destination.path, .sign: only for type directory");
    if (m365) {
        if (json_object_get(d, "login") || json_object_get(d, "password"))
            return mv_seterr(err, errlen, MV_EINVAL,
                             "export.destination.login, .password: not used by type m365 (it "
                             "signs in as the app: tenant_id, client_id, client_secret or "
                             "certificate; the target is \"mailbox\")");
        if ((rc = only_for(d, ews_not_app, "ews", err, errlen)) ||
            (rc = get_app(d, "export.destination", allow_secrets, p, err, errlen)) ||
            (rc = get_str(d, "mailbox", pre, 1, p->exp_login, sizeof p->exp_login, err, errlen)))
            return rc;
        if (!mv_mailbox_valid(p->exp_login) || !strchr(p->exp_login, '@'))
            return mv_seterr(err, errlen, MV_EINVAL,
                             "export.destination.mailbox: \"%s\" is not a mailbox address",
                             p->exp_login);
        snprintf(p->host, sizeof p->host, "%s",
                 strcmp(p->cloud, "china") == 0 ? "partner.outlook.cn" : "outlook.office365.com");
        if ((rc = get_str(d, "host", pre, 0, p->host, sizeof p->host, err, errlen))) return rc;
    } else {
        if ((rc = only_for(d, ews_only, "ews or m365", err, errlen)) ||
            (rc = only_for(d, ews_conn_keys, "ews or m365", err, errlen)))
            return rc;
        if ((rc = get_str(d, "host", pre, 1, p->host, sizeof p->host, err, errlen)) ||
            (rc = get_str(d, "login", pre, 1, p->exp_login, sizeof p->exp_login, err, errlen)))
            return rc;
        if (!mv_mailbox_valid(p->exp_login))
            return mv_seterr(err, errlen, MV_EINVAL, "export.destination.login: not a valid login");
    }
    char tls[32] = "implicit";
    if ((rc = get_str(d, "tls", pre, 0, tls, sizeof tls, err, errlen))) return rc;
    int m = mv_tls_mode_parse(tls);
    if (m < 0)
        return mv_seterr(err, errlen, MV_EINVAL,
                         "export.destination.tls: \"%s\" is not one of none, starttls, implicit",
                         tls);
    p->tls = (mv_tls_mode)m;
    json_t *port = json_object_get(d, "port");
    if (port && (!json_is_integer(port) || json_integer_value(port) < 1 ||
                 json_integer_value(port) > 65535))
        return mv_seterr(err, errlen, MV_EINVAL, "export.destination.port: must be 1..65535");
    p->port = port ? (int)json_integer_value(port) : p->tls == MV_TLS_IMPLICIT ? 993 : 143;
    if ((rc = get_verify(d, "export.destination", &p->verify, err, errlen)) ||
        (rc = get_root_layout(d, p, err, errlen)))
        return rc;
    static const char *const flags[] = {"literal_plus", "multiappend"};
    int *dst[] = {&p->exp_literal_plus, &p->exp_multiappend};
    for (size_t i = 0; i < 2; i++) { /* both default to "use it when the server offers it" */
        json_t *v = json_object_get(d, flags[i]);
        if (v && !json_is_boolean(v))
            return mv_seterr(err, errlen, MV_EINVAL, "export.destination.%s: must be true or false",
                             flags[i]);
        *dst[i] = !v || json_is_true(v);
    }
    if (m365) return MV_OK;
    return get_secret(d, "password", "export.destination", allow_secrets, &p->client_secret, err,
                      errlen);
}

/* An export profile: which archive (and folder subtree) goes where. */
static mv_err parse_export(json_t *ex, int allow_secrets, mv_profile *p, char *err, size_t errlen)
{
    static const char *const ex_keys[] = {"mailbox",     "folder",     "search",
                                          "destination", "public_key", NULL};
    static const char *const q_keys[] = {"from", "to", "subject", "after", "before", NULL};
    mv_err rc;
    if (!json_is_object(ex)) return mv_seterr(err, errlen, MV_EINVAL, "export: must be an object");
    if ((rc = check_keys(ex, "export.", ex_keys, err, errlen))) return rc;
    if ((rc = get_str(ex, "mailbox", "export.", 1, p->exp_mailbox, sizeof p->exp_mailbox, err,
                      errlen)))
        return rc;
    if (!mv_mailbox_valid(p->exp_mailbox))
        return mv_seterr(err, errlen, MV_EINVAL, "export.mailbox: \"%s\" is not a valid mailbox id",
                         p->exp_mailbox);
    if ((rc =
             get_str(ex, "folder", "export.", 0, p->exp_folder, sizeof p->exp_folder, err, errlen)))
        return rc;
    for (const char *c = p->exp_folder; *c; c++)
        if ((unsigned char)*c < 0x20 || *c == 0x7f)
            return mv_seterr(err, errlen, MV_EINVAL, "export.folder: control characters");
    snprintf(p->exp_search.folder, sizeof p->exp_search.folder, "%s", p->exp_folder);
    json_t *q = json_object_get(ex, "search");
    if (q) {
        if (!json_is_object(q))
            return mv_seterr(err, errlen, MV_EINVAL, "export.search: must be an object");
        if ((rc = check_keys(q, "export.search.", q_keys, err, errlen)) ||
            (rc = get_str(q, "from", "export.search.", 0, p->exp_search.from,
                          sizeof p->exp_search.from, err, errlen)) ||
            (rc = get_str(q, "to", "export.search.", 0, p->exp_search.to, sizeof p->exp_search.to,
                          err, errlen)) ||
            (rc = get_str(q, "subject", "export.search.", 0, p->exp_search.subject,
                          sizeof p->exp_search.subject, err, errlen)) ||
            (rc = get_str(q, "after", "export.search.", 0, p->exp_after, sizeof p->exp_after, err,
                          errlen)) ||
            (rc = get_str(q, "before", "export.search.", 0, p->exp_before, sizeof p->exp_before,
                          err, errlen)))
            return rc;
        char derr[MV_ERRLEN];
        if (p->exp_after[0] &&
            mv_search_date(p->exp_after, &p->exp_search.after_ms, derr, sizeof derr))
            return mv_seterr(err, errlen, MV_EINVAL, "export.search.after: %s", derr);
        if (p->exp_before[0] &&
            mv_search_date(p->exp_before, &p->exp_search.before_ms, derr, sizeof derr))
            return mv_seterr(err, errlen, MV_EINVAL, "export.search.before: %s", derr);
        if (p->exp_search.after_ms && p->exp_search.before_ms &&
            p->exp_search.after_ms >= p->exp_search.before_ms)
            return mv_seterr(err, errlen, MV_EINVAL,
                             "export.search: \"after\" must be earlier than \"before\"");
    }
    json_t *d = json_object_get(ex, "destination");
    if (!d) return mv_seterr(err, errlen, MV_EINVAL, "export.destination: missing");
    if (!json_is_object(d))
        return mv_seterr(err, errlen, MV_EINVAL, "export.destination: must be an object");
    if ((rc = check_dest_keys(d, err, errlen))) return rc;
    char type[16] = "";
    if ((rc = get_str(d, "type", "export.destination.", 1, type, sizeof type, err, errlen)))
        return rc;
    if (strcmp(type, "imap") == 0 || strcmp(type, "m365") == 0)
        return parse_export_imap(d, strcmp(type, "m365") == 0, allow_secrets, p, err, errlen);
    if (strcmp(type, "ews") == 0) return parse_export_ews(d, allow_secrets, p, err, errlen);
    if (strcmp(type, "directory") != 0)
        return mv_seterr(err, errlen, MV_EINVAL,
                         "export.destination.type: \"%s\" is not supported (supported: "
                         "directory, imap, m365, ews)",
                         type);
    static const char *const mailbox_only[] = {"verify", "password", "root", NULL};
    if ((rc = only_for(d, imap_only, "imap", err, errlen)) ||
        (rc = only_for(d, mailbox_only, "imap", err, errlen)) ||
        (rc = only_for(d, ews_only, "ews", err, errlen)) ||
        (rc = only_for(d, ews_conn_keys, "ews", err, errlen)))
        return rc;
    if ((rc = get_str(d, "path", "export.destination.", 1, p->exp_path, sizeof p->exp_path, err,
                      errlen)))
        return rc;
    if (p->exp_path[0] != '/')
        return mv_seterr(err, errlen, MV_EINVAL,
                         "export.destination.path: must be an absolute path");
    for (const char *c = p->exp_path; *c; c++)
        if ((unsigned char)*c < 0x20 || *c == 0x7f)
            return mv_seterr(err, errlen, MV_EINVAL, "export.destination.path: control characters");
    char layout[16] = "tree";
    if ((rc = get_str(d, "layout", "export.destination.", 0, layout, sizeof layout, err, errlen)))
        return rc;
    if (strcmp(layout, "tree") && strcmp(layout, "flat"))
        return mv_seterr(err, errlen, MV_EINVAL,
                         "export.destination.layout: must be \"tree\" or \"flat\"");
    p->exp_flat = strcmp(layout, "flat") == 0;
    json_t *sign = json_object_get(d, "sign");
    if (sign && !json_is_boolean(sign))
        return mv_seterr(err, errlen, MV_EINVAL, "export.destination.sign: must be true or false");
    p->exp_sign = sign && json_is_true(sign);
    json_t *pk = json_object_get(ex, "public_key"); /* written by profile add, not by users */
    if (pk) {
        if (!json_is_string(pk) || !strstr(json_string_value(pk), "-----BEGIN PUBLIC KEY") ||
            strlen(json_string_value(pk)) > PEM_MAX)
            return mv_seterr(err, errlen, MV_EINVAL, "export.public_key: must be a PEM public key");
        if (!(p->exp_public_key = strdup(json_string_value(pk)))) return MV_ENOMEM;
    }
    return MV_OK;
}

/* "schedule": {"cron": "...", "timezone": "..."} or {"every": "6h"} (cron.h); none: on demand. */
static mv_err parse_schedule(json_t *sc, mv_profile *p, char *err, size_t errlen)
{
    static const char *const keys[] = {"cron", "timezone", "every", NULL};
    if (!sc) return MV_OK;
    if (!json_is_object(sc))
        return mv_seterr(err, errlen, MV_EINVAL, "schedule: must be an object");
    mv_err rc;
    if ((rc = check_keys(sc, "schedule.", keys, err, errlen))) return rc;
    char cron[128] = "", tz[64] = "", every[16] = "";
    if ((rc = get_str(sc, "cron", "schedule.", 0, cron, sizeof cron, err, errlen)) ||
        (rc = get_str(sc, "timezone", "schedule.", 0, tz, sizeof tz, err, errlen)) ||
        (rc = get_str(sc, "every", "schedule.", 0, every, sizeof every, err, errlen)))
        return rc;
    char why[MV_ERRLEN];
    if (!cron[0] == !every[0])
        return mv_seterr(err, errlen, MV_EINVAL,
                         "schedule: give either \"cron\" (with an optional \"timezone\") or "
                         "\"every\"");
    if (every[0] && tz[0])
        return mv_seterr(err, errlen, MV_EINVAL, "schedule.timezone: only with \"cron\"");
    rc = cron[0] ? mv_cron_parse(cron, tz, &p->schedule, why, sizeof why)
                 : mv_every_parse(every, &p->schedule, why, sizeof why);
    return rc ? mv_seterr(err, errlen, rc, "schedule.%s", why) : MV_OK;
}

static mv_err parse_obj(json_t *root, int allow_secrets, mv_profile *p, char *err, size_t errlen)
{
    static const char *const top_keys[] = {
        "name",           "type",      "server",    "graph",    "ews",
        "folders",        "mailboxes", "directory", "deletion", "archive_mailbox",
        "public_folders", "export",    "schedule",  NULL};
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
    if ((rc = parse_schedule(json_object_get(root, "schedule"), p, err, errlen))) return rc;
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
    else if (strcmp(p->type, "ews") == 0)
        p->source = MV_SOURCE_EWS;
    else if (strcmp(p->type, "export") == 0)
        p->source = MV_SOURCE_EXPORT;
    else
        return mv_seterr(err, errlen, MV_EINVAL,
                         "type: \"%s\" is not supported (supported: imap, graph, ews, export)",
                         p->type);
    p->verify = 1;
    json_t *ex = json_object_get(root, "export");
    if (ex && p->source != MV_SOURCE_EXPORT)
        return mv_seterr(err, errlen, MV_EINVAL, "export: not used by type %s", p->type);
    if (p->source == MV_SOURCE_EXPORT) {
        static const char *const only[] = {"server",   "graph",           "ews",
                                           "folders",  "mailboxes",       "directory",
                                           "deletion", "archive_mailbox", "public_folders",
                                           NULL};
        for (size_t i = 0; only[i]; i++)
            if (json_object_get(root, only[i]))
                return mv_seterr(err, errlen, MV_EINVAL, "%s: not used by type export", only[i]);
        if (!ex) return mv_seterr(err, errlen, MV_EINVAL, "export: missing");
        return parse_export(ex, allow_secrets, p, err, errlen);
    }

    json_t *srv = json_object_get(root, "server");
    json_t *gr = json_object_get(root, "graph");
    json_t *ew = json_object_get(root, "ews");
    if (ew && p->source != MV_SOURCE_EWS)
        return mv_seterr(err, errlen, MV_EINVAL, "ews: not used by type %s", p->type);
    if (p->source == MV_SOURCE_EWS) {
        if (srv || gr)
            return mv_seterr(err, errlen, MV_EINVAL, "%s: not used by type ews",
                             srv ? "server" : "graph");
        if (!ew) return mv_seterr(err, errlen, MV_EINVAL, "ews: missing");
        if ((rc = parse_ews(ew, "ews", allow_secrets, p, err, errlen))) return rc;
    } else if (p->source == MV_SOURCE_GRAPH) {
        if (srv) return mv_seterr(err, errlen, MV_EINVAL, "server: not used by type graph");
        if (!gr) return mv_seterr(err, errlen, MV_EINVAL, "graph: missing");
        if (!json_is_object(gr))
            return mv_seterr(err, errlen, MV_EINVAL, "graph: must be an object");
        if ((rc = check_keys(gr, "graph.", graph_keys, err, errlen))) return rc;
        if ((rc = get_app(gr, "graph", allow_secrets, p, err, errlen))) return rc;
        snprintf(p->graph_base, sizeof p->graph_base, "%s",
                 strcmp(p->cloud, "china") == 0 ? "https://microsoftgraph.chinacloudapi.cn/v1.0"
                                                : "https://graph.microsoft.com/v1.0");
        if ((rc = get_str(gr, "graph_base", "graph.", 0, p->graph_base, sizeof p->graph_base, err,
                          errlen)) ||
            (rc = check_base_url("graph.graph_base", p->graph_base, err, errlen)))
            return rc;
        if ((rc = get_verify(gr, "graph", &p->verify, err, errlen))) return rc;
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
        if ((rc = get_verify(srv, "server", &p->verify, err, errlen))) return rc;
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

    json_t *am = json_object_get(root, "archive_mailbox");
    if (am) {
        if (p->source != MV_SOURCE_EWS)
            return mv_seterr(err, errlen, MV_EINVAL, "archive_mailbox: only for type ews");
        const char *v = json_is_string(am) ? json_string_value(am) : "";
        if (strcmp(v, "skip") == 0)
            p->ews_archive = MV_EWS_ARCHIVE_SKIP;
        else if (strcmp(v, "include") == 0)
            p->ews_archive = MV_EWS_ARCHIVE_INCLUDE;
        else if (strcmp(v, "only") == 0)
            p->ews_archive = MV_EWS_ARCHIVE_ONLY;
        else
            return mv_seterr(err, errlen, MV_EINVAL,
                             "archive_mailbox: must be one of \"skip\", \"include\", \"only\"");
    }
    json_t *pf = json_object_get(root, "public_folders");
    if (pf) {
        static const char *const pf_keys[] = {"mailbox", "archive_as", "target_folder", NULL};
        if (p->source != MV_SOURCE_EWS)
            return mv_seterr(err, errlen, MV_EINVAL, "public_folders: only for type ews");
        if (!json_is_object(pf))
            return mv_seterr(err, errlen, MV_EINVAL, "public_folders: must be an object");
        if ((rc = check_keys(pf, "public_folders.", pf_keys, err, errlen))) return rc;
        snprintf(p->pf_archive_as, sizeof p->pf_archive_as, "public-folders");
        snprintf(p->pf_target, sizeof p->pf_target, "Public Folders");
        if ((rc = get_str(pf, "mailbox", "public_folders.", 1, p->pf_mailbox, sizeof p->pf_mailbox,
                          err, errlen)) ||
            (rc = get_str(pf, "archive_as", "public_folders.", 0, p->pf_archive_as,
                          sizeof p->pf_archive_as, err, errlen)) ||
            (rc = get_str(pf, "target_folder", "public_folders.", 0, p->pf_target,
                          sizeof p->pf_target, err, errlen)))
            return rc;
        if (!mv_mailbox_valid(p->pf_mailbox) || !mv_mailbox_valid(p->pf_archive_as))
            return mv_seterr(err, errlen, MV_EINVAL,
                             "public_folders.mailbox, public_folders.archive_as: printable ASCII, "
                             "no spaces, '/' or '|'");
        int bad = !p->pf_target[0];
        for (const char *c = p->pf_target; *c; c++)
            bad |= (unsigned char)*c < 0x20 || *c == 0x7f;
        if (bad)
            return mv_seterr(err, errlen, MV_EINVAL,
                             "public_folders.target_folder: a non-empty folder path without "
                             "control characters");
        p->public_folders = 1;
    }

    json_t *mbs = json_object_get(root, "mailboxes");
    if (!mbs && p->directory) return MV_OK; /* the mailboxes come from the tenant directory */
    if (!mbs && p->source == MV_SOURCE_EWS) return MV_OK; /* public folders, or a CSV import */
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
        if (p->public_folders && strcmp(p->pf_archive_as, x->login) == 0)
            return mv_seterr(err, errlen, MV_EINVAL,
                             "%slogin: \"%s\" is also public_folders.archive_as", path, x->login);
        for (size_t j = 0; j < i; j++)
            if (strcmp(p->mailboxes[j].login, x->login) == 0)
                return mv_seterr(err, errlen, MV_EINVAL, "%slogin: \"%s\" is listed twice", path,
                                 x->login);
        json_t *pw = json_object_get(mb, "password");
        if (pw && p->source != MV_SOURCE_IMAP)
            return mv_seterr(
                err, errlen, MV_EINVAL,
                "%spassword: type %s uses the %s, not passwords per mailbox", path, p->type,
                p->source == MV_SOURCE_GRAPH ? "app's client secret" : "service account or app");
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

/* An Entra ID app (graph, ews with OAuth); no secret. */
static void app_json(json_t *o, const mv_profile *p)
{
    json_object_set_new(o, "tenant_id", json_string(p->tenant_id));
    json_object_set_new(o, "client_id", json_string(p->client_id));
    json_object_set_new(o, "cloud", json_string(p->cloud));
    json_object_set_new(o, "login_base", json_string(p->login_base));
    if (p->source == MV_SOURCE_GRAPH)
        json_object_set_new(o, "graph_base", json_string(p->graph_base));
    if (p->client_cert_pem) json_object_set_new(o, "certificate", json_string(p->client_cert_pem));
}

/* An EWS connection (ews section, or an export's ews destination); no secret. */
static void ews_json(json_t *o, const mv_profile *p)
{
    static const char *const auths[] = {"basic", "ntlm", "oauth"};
    json_object_set_new(o, "url", json_string(p->ews_url));
    json_object_set_new(o, "auth", json_string(auths[p->ews_auth]));
    if (p->ews_auth != MV_EWS_AUTH_OAUTH)
        json_object_set_new(o, "username", json_string(p->ews_username));
    json_object_set_new(o, "impersonation", json_boolean(p->ews_impersonate));
    json_object_set_new(o, "server_version", json_string(p->ews_server_version));
    if (p->ews_auth == MV_EWS_AUTH_OAUTH) app_json(o, p);
    if (p->source == MV_SOURCE_EXPORT) json_object_set_new(o, "verify", json_boolean(p->verify));
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
    if (p->schedule.kind) {
        json_t *sc = json_object();
        if (p->schedule.kind == MV_SCHED_CRON) {
            json_object_set_new(sc, "cron", json_string(p->schedule.expr));
            json_object_set_new(sc, "timezone", json_string(p->schedule.tz));
        } else {
            json_object_set_new(sc, "every", json_string(p->schedule.every_text));
        }
        json_object_set_new(root, "schedule", sc);
    }
    if (p->source == MV_SOURCE_EXPORT) {
        json_t *ex = json_object(), *d = json_object();
        json_object_set_new(ex, "mailbox", json_string(p->exp_mailbox));
        if (p->exp_folder[0]) json_object_set_new(ex, "folder", json_string(p->exp_folder));
        const mv_search *q = &p->exp_search;
        if (q->from[0] || q->to[0] || q->subject[0] || p->exp_after[0] || p->exp_before[0]) {
            json_t *qs = json_object();
            if (q->from[0]) json_object_set_new(qs, "from", json_string(q->from));
            if (q->to[0]) json_object_set_new(qs, "to", json_string(q->to));
            if (q->subject[0]) json_object_set_new(qs, "subject", json_string(q->subject));
            if (p->exp_after[0]) json_object_set_new(qs, "after", json_string(p->exp_after));
            if (p->exp_before[0]) json_object_set_new(qs, "before", json_string(p->exp_before));
            json_object_set_new(ex, "search", qs);
        }
        if (p->exp_imap) {
            json_object_set_new(d, "type", json_string(p->exp_m365 ? "m365" : "imap"));
            if (p->exp_m365) {
                json_object_set_new(d, "mailbox", json_string(p->exp_login));
                app_json(d, p);
            } else {
                json_object_set_new(d, "login", json_string(p->exp_login));
            }
            json_object_set_new(d, "host", json_string(p->host));
            json_object_set_new(d, "port", json_integer(p->port));
            json_object_set_new(d, "tls", json_string(mv_tls_mode_name(p->tls)));
            json_object_set_new(d, "verify", json_boolean(p->verify));
            json_object_set_new(d, "root", json_string(p->exp_root));
            json_object_set_new(d, "layout", json_string(p->exp_flat ? "flat" : "tree"));
            json_object_set_new(d, "literal_plus", json_boolean(p->exp_literal_plus));
            json_object_set_new(d, "multiappend", json_boolean(p->exp_multiappend));
        } else if (p->exp_ews) {
            json_object_set_new(d, "type", json_string("ews"));
            ews_json(d, p);
            json_object_set_new(d, "mailbox", json_string(p->exp_login));
            json_object_set_new(d, "root", json_string(p->exp_root));
            json_object_set_new(d, "layout", json_string(p->exp_flat ? "flat" : "tree"));
        } else {
            json_object_set_new(d, "type", json_string("directory"));
            json_object_set_new(d, "path", json_string(p->exp_path));
            json_object_set_new(d, "layout", json_string(p->exp_flat ? "flat" : "tree"));
            json_object_set_new(d, "sign", json_boolean(p->exp_sign));
        }
        json_object_set_new(ex, "destination", d);
        if (p->exp_public_key)
            json_object_set_new(ex, "public_key", json_string(p->exp_public_key));
        json_object_set_new(root, "export", ex);
        out = json_dumps(root, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
        goto out;
    }
    if (p->source == MV_SOURCE_EWS)
        ews_json(srv, p);
    else if (p->source == MV_SOURCE_GRAPH)
        app_json(srv, p);
    if (p->source == MV_SOURCE_IMAP) {
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
    if (p->source == MV_SOURCE_EWS && p->ews_archive != MV_EWS_ARCHIVE_SKIP)
        json_object_set_new(
            root, "archive_mailbox",
            json_string(p->ews_archive == MV_EWS_ARCHIVE_ONLY ? "only" : "include"));
    if (p->public_folders) {
        json_t *d = json_object();
        json_object_set_new(d, "mailbox", json_string(p->pf_mailbox));
        json_object_set_new(d, "archive_as", json_string(p->pf_archive_as));
        json_object_set_new(d, "target_folder", json_string(p->pf_target));
        json_object_set_new(root, "public_folders", d);
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
    json_object_set(root,
                    p->source == MV_SOURCE_GRAPH ? "graph"
                    : p->source == MV_SOURCE_EWS ? "ews"
                                                 : "server",
                    srv);
    json_object_set(root, "folders", folders);
    if (p->nmailboxes || (!p->directory && !p->public_folders))
        json_object_set(root, "mailboxes", mbs);
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
    free(p->exp_public_key);
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

/* Next CSV field of line (RFC 4180 quoting, "" inside quotes), trimmed; advances *p. */
static size_t csv_field(const char **p, const char *end, char *out, size_t outlen)
{
    const char *s = *p;
    size_t n = 0;
    while (s < end && (*s == ' ' || *s == '\t'))
        s++;
    if (s < end && *s == '"') {
        s++;
        while (s < end) {
            if (*s == '"' && s + 1 < end && s[1] == '"') {
                if (n + 1 < outlen) out[n++] = '"';
                s += 2;
            } else if (*s == '"') {
                s++;
                break;
            } else {
                if (n + 1 < outlen) out[n++] = *s;
                s++;
            }
        }
        while (s < end && *s != ',' && *s != ';')
            s++;
    } else {
        while (s < end && *s != ',' && *s != ';') {
            if (n + 1 < outlen) out[n++] = *s;
            s++;
        }
        while (n > 0 && (out[n - 1] == ' ' || out[n - 1] == '\t'))
            n--;
    }
    out[n] = '\0';
    if (s < end) s++; /* the separator */
    *p = s;
    return n;
}

mv_err mv_profile_import_csv(mv_profile *p, const char *csv, size_t len, size_t *added, char *err,
                             size_t errlen)
{
    static const char *const headers[] = {
        "primarysmtpaddress", "emailaddress", "email", "mail", "login",
        "userprincipalname",  "smtp",         NULL};
    const char *s = csv, *end = csv + len;
    int col = -1; /* the column with the addresses; -1 until the first line decided it */
    size_t line = 0;
    *added = 0;
    if (len >= 3 && (unsigned char)s[0] == 0xEF && (unsigned char)s[1] == 0xBB &&
        (unsigned char)s[2] == 0xBF)
        s += 3; /* a UTF-8 byte order mark, as spreadsheet exports write it */
    while (s < end) {
        const char *eol = memchr(s, '\n', (size_t)(end - s));
        const char *le = eol ? eol : end;
        if (le > s && le[-1] == '\r') le--;
        line++;
        char fields[16][256];
        int nf = 0;
        const char *q = s;
        while (q < le && nf < 16)
            csv_field(&q, le, fields[nf++], sizeof fields[0]);
        s = eol ? eol + 1 : end;
        if (nf == 0 || (nf == 1 && !fields[0][0])) continue; /* blank line */
        if (col < 0) {
            for (int i = 0; i < nf && col < 0; i++)
                for (size_t h = 0; headers[h] && col < 0; h++)
                    if (!strcasecmp(fields[i], headers[h])) col = i;
            if (col >= 0) continue; /* a header line */
            col = 0;
        }
        if (col >= nf || !fields[col][0])
            return mv_seterr(err, errlen, MV_EINVAL, "line %zu: no mailbox in column %d", line,
                             col + 1);
        const char *login = fields[col];
        if (!mv_mailbox_valid(login))
            return mv_seterr(err, errlen, MV_EINVAL,
                             "line %zu: \"%s\" is not a valid mailbox (printable ASCII, no "
                             "spaces, '/' or '|')",
                             line, login);
        if (mv_profile_find_mailbox(p, login) >= 0) continue;
        if (p->nmailboxes >= MV_PROFILE_MAX_MAILBOXES)
            return mv_seterr(err, errlen, MV_EINVAL, "more than %d mailboxes",
                             MV_PROFILE_MAX_MAILBOXES);
        mv_profile_mailbox *nv = realloc(p->mailboxes, (p->nmailboxes + 1) * sizeof *nv);
        if (!nv) return mv_seterr(err, errlen, MV_ENOMEM, "out of memory");
        p->mailboxes = nv;
        memset(&nv[p->nmailboxes], 0, sizeof *nv);
        snprintf(nv[p->nmailboxes].login, sizeof nv[p->nmailboxes].login, "%s", login);
        p->nmailboxes++;
        (*added)++;
    }
    return MV_OK;
}

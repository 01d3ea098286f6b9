/* profile.h - archiving profiles: what to archive, from where, with which logins.
 *
 * A profile is JSON (docs/formats.md); passwords are accepted on input and moved into sealed
 * credential blobs (crypt.h, state.h): the stored JSON never contains them.
 *
 *   {"name": "imap-main", "type": "imap",
 *    "server": {"host": "mail.example.org", "port": 993, "tls": "implicit", "verify": true},
 *    "folders": {"include": ["*"], "exclude": ["Trash", "Junk*"]},
 *    "mailboxes": [{"login": "alice@example.org", "password": "..."}, ...]}
 *
 *   {"name": "m365", "type": "graph",
 *    "graph": {"tenant_id": "contoso.onmicrosoft.com", "client_id": "...", "client_secret": "...",
 *              "cloud": "global"},
 *    "mailboxes": [{"login": "alice@contoso.com"}, ...]}
 * or, instead of (or besides) "mailboxes", the tenant directory:
 *    "directory": {"all_users": false, "include": ["*@contoso.com"], "exclude": ["admin*"]}
 * "cloud" picks the national cloud's endpoints: "global" (login.microsoftonline.com,
 * graph.microsoft.com) or "china" (Office 365 operated by 21Vianet); "login_base" and
 * "graph_base" override them (test simulators). The client secret is sealed like passwords,
 * in the credential slot of the pseudo-mailbox MV_PROFILE_APP_CRED. */
#ifndef MV_PROFILE_H
#define MV_PROFILE_H

#include "mv/common.h"
#include "mv/cron.h"
#include "mv/imap.h"
#include "mv/search.h"

#define MV_PROFILE_MAX_MAILBOXES 100000
#define MV_PROFILE_MAX_PATTERNS 256
#define MV_PROFILE_APP_CRED "_app"    /* credential slot of a Graph profile's client secret */
#define MV_PROFILE_APP_KEY "_app_key" /* slot of its certificate's private key (PEM) */

#define MV_PROFILE_MAX_DELETE_DAYS 36500
#define MV_EXPORT_ALL_MAILBOXES "*" /* export.mailbox: every archived mailbox of the tenant */

typedef struct mv_profile_mailbox {
    char login[256];
    char *password; /* only set when parsed with allow_secrets; wiped by mv_profile_free */
} mv_profile_mailbox;

typedef enum {
    MV_SOURCE_IMAP = 0,
    MV_SOURCE_GRAPH,
    MV_SOURCE_EWS,
    MV_SOURCE_EXPORT /* not a source: an export of the archive (exports.md) */
} mv_source_type;
typedef enum { MV_EWS_AUTH_BASIC = 0, MV_EWS_AUTH_NTLM, MV_EWS_AUTH_OAUTH } mv_ews_auth_mode;
typedef enum {
    MV_EWS_ARCHIVE_SKIP = 0, /* the primary mailbox only */
    MV_EWS_ARCHIVE_INCLUDE,  /* also the in-place archive, under "Archive Mailbox/" */
    MV_EWS_ARCHIVE_ONLY      /* the in-place archive only */
} mv_ews_archive_mode;

typedef struct mv_profile {
    char name[64];
    char type[16]; /* "imap" | "graph" | "ews" | "export" */
    mv_source_type source;
    /* graph, and ews with OAuth: the Entra ID app */
    char tenant_id[128];
    char client_id[128];
    char *client_secret;   /* only with allow_secrets; wiped by mv_profile_free (for ews
                            * basic/ntlm: the service account's password) */
    char *client_key_pem;  /* certificate credential's private key: input only, like a secret */
    char *client_cert_pem; /* its certificate (public; stored in the profile) */
    char cloud[16];
    char login_base[256];
    char graph_base[256];
    char host[256];
    int port;
    mv_tls_mode tls;
    int verify;
    char **include; /* glob patterns (fnmatch, '*' crosses hierarchy levels) */
    size_t ninclude;
    char **exclude; /* exclude wins over include */
    size_t nexclude;
    mv_profile_mailbox *mailboxes;
    size_t nmailboxes;
    /* graph: mailboxes from the tenant directory (/users) at each run, besides any listed */
    int directory;
    int all_users; /* 0: licensed users only (default); 1: all users, shared mailboxes too */
    char **dir_include, **dir_exclude; /* patterns on userPrincipalName, case-insensitive */
    size_t ndir_include, ndir_exclude;
    /* deletion rule (graph): when delete_enabled, after a folder is in sync, delete at the
     * source the archived messages received more than delete_after_days days ago. Off by
     * default (zeroed profile = delete nothing). */
    int delete_enabled;
    int delete_after_days;
    /* ews */
    char ews_url[512];
    mv_ews_auth_mode ews_auth;
    char ews_username[256];
    int ews_impersonate;
    char ews_server_version[32];
    mv_ews_archive_mode ews_archive;
    int public_folders;      /* archive the organisation's public folders too: */
    char pf_mailbox[256];    /* the mailbox whose identity reaches them */
    char pf_archive_as[256]; /* the mailbox id they are archived under (a task of its own) */
    char pf_target[256];     /* folder prefix in the index, default "Public Folders" */
    /* export: the archive of exp_mailbox (only exp_folder and its subfolders if set) into a
     * directory of .eml files; signed with the profile's key when exp_sign */
    char exp_mailbox[256];
    char exp_folder[1024];
    char exp_path[1024];
    int exp_flat;
    int exp_sign;
    char *exp_public_key;               /* PEM, made by profile add when exp_sign */
    mv_search exp_search;               /* "search": the saved query (its folder is exp_folder) */
    char exp_after[16], exp_before[16]; /* as given, YYYY-MM-DD */
    int exp_imap;                       /* destination type imap (host, port, tls, verify above; the
                                         * password in client_secret on input, sealed like a secret) */
    char exp_login[256];
    char exp_root[256];   /* the folder everything goes under, default "Archive Export" */
    int exp_literal_plus; /* use LITERAL+ when the server offers it (default) */
    int exp_multiappend;  /* use MULTIAPPEND when the server offers it (default) */
    mv_schedule schedule; /* "schedule": when it runs by itself (kind 0: on demand only) */
    int exp_m365;         /* destination type m365: exp_imap with AUTHENTICATE XOAUTH2 as the app
                           * (tenant_id, client_id, secret or certificate above) into mailbox exp_login */
    int exp_ews;          /* destination type ews: the ews_* connection fields above (password or
                           * client secret in client_secret on input, sealed like an ews
                           * profile's), the target mailbox in exp_login, exp_root, exp_flat */
} mv_profile;

/* Parse and validate. allow_secrets = 1 for user input (password fields kept in memory),
 * 0 for stored profiles (a password field is then an error: it must never be stored).
 * Errors name the JSON path of the bad field, e.g. "mailboxes[2].login: missing". */
mv_err mv_profile_parse(const char *json, int allow_secrets, mv_profile *p, char *err,
                        size_t errlen);
/* Serialise without secrets; malloc'd string, caller frees. */
char *mv_profile_to_json(const mv_profile *p);
void mv_profile_free(mv_profile *p);
/* 1 if the folder passes include/exclude. */
int mv_profile_folder_selected(const mv_profile *p, const char *folder);
/* 1 if a directory user (userPrincipalName, licensed flag) is selected by the profile's
 * "directory" section. */
int mv_profile_directory_selected(const mv_profile *p, const char *login, int licensed);
/* Add the mailboxes listed in a CSV file (e.g. Exchange's Get-Mailbox | Export-Csv): the
 * column headed PrimarySmtpAddress / EmailAddress / Email / Mail / Login / UserPrincipalName /
 * Smtp, or the first column when there is no header line; ',' or ';' separated, RFC 4180
 * quoting, blank lines ignored, logins already listed kept once. Errors name the line. */
mv_err mv_profile_import_csv(mv_profile *p, const char *csv, size_t len, size_t *added, char *err,
                             size_t errlen);
/* Index of the mailbox with that login, or -1. */
long mv_profile_find_mailbox(const mv_profile *p, const char *login);
/* Associated data that binds a sealed credential to its tenant/profile/mailbox. */
void mv_profile_cred_ad(const char *tenant, const char *profile, const char *mailbox, char *out,
                        size_t outlen);

#endif

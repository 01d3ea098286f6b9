/* test_profile.c - profile JSON: validation errors name the field, secrets only on input,
 * serialisation round trip without secrets, folder include/exclude semantics. */
#include "mv/profile.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char good[] =
    "{\"name\":\"imap-main\",\"type\":\"imap\","
    "\"server\":{\"host\":\"mail.example.org\",\"port\":993,\"tls\":\"implicit\"},"
    "\"folders\":{\"include\":[\"*\"],\"exclude\":[\"Trash\",\"Junk*\"]},"
    "\"mailboxes\":[{\"login\":\"alice@example.org\",\"password\":\"s3cret\"},"
    "{\"login\":\"bob@example.org\",\"password\":\"hunter2\"}]}";

static void test_parse_good(void **state)
{
    (void)state;
    mv_profile p;
    char err[MV_ERRLEN];
    assert_int_equal(mv_profile_parse(good, 1, &p, err, sizeof err), MV_OK);
    assert_string_equal(p.name, "imap-main");
    assert_string_equal(p.host, "mail.example.org");
    assert_int_equal(p.port, 993);
    assert_int_equal(p.tls, MV_TLS_IMPLICIT);
    assert_int_equal(p.verify, 1);
    assert_int_equal(p.nmailboxes, 2);
    assert_string_equal(p.mailboxes[1].password, "hunter2");
    assert_int_equal(mv_profile_find_mailbox(&p, "bob@example.org"), 1);
    assert_int_equal(mv_profile_find_mailbox(&p, "carol@example.org"), -1);

    /* serialised form has no secret and parses as a stored profile */
    char *json = mv_profile_to_json(&p);
    assert_non_null(json);
    assert_null(strstr(json, "s3cret"));
    assert_null(strstr(json, "password"));
    mv_profile q;
    assert_int_equal(mv_profile_parse(json, 0, &q, err, sizeof err), MV_OK);
    assert_string_equal(q.host, p.host);
    assert_int_equal(q.nexclude, 2);
    assert_null(q.mailboxes[0].password);
    free(json);
    mv_profile_free(&q);
    mv_profile_free(&p);
}

static void test_defaults(void **state)
{
    (void)state;
    mv_profile p;
    char err[MV_ERRLEN];
    const char *doc = "{\"name\":\"p\",\"server\":{\"host\":\"h\",\"tls\":\"starttls\"},"
                      "\"mailboxes\":[{\"login\":\"a\",\"password\":\"b\"}]}";
    assert_int_equal(mv_profile_parse(doc, 1, &p, err, sizeof err), MV_OK);
    assert_int_equal(p.port, 143); /* STARTTLS and none default to 143, implicit to 993 */
    assert_int_equal(p.verify, 1);
    assert_true(mv_profile_folder_selected(&p, "anything/at all")); /* no patterns: all */
    mv_profile_free(&p);
}

static void expect_error(const char *doc, int allow_secrets, const char *needle)
{
    mv_profile p;
    char err[MV_ERRLEN] = "";
    assert_int_equal(mv_profile_parse(doc, allow_secrets, &p, err, sizeof err), MV_EINVAL);
    if (!strstr(err, needle)) fail_msg("error \"%s\" lacks \"%s\"", err, needle);
}

static void test_errors_name_the_field(void **state)
{
    (void)state;
    expect_error("{", 1, "not valid JSON");
    expect_error("[]", 1, "must be a JSON object");
    expect_error("{\"name\":\"p\",\"server\":{\"host\":\"h\"},\"mailboxes\":[{\"login\":\"a\","
                 "\"password\":\"b\"}],\"exlude\":[]}",
                 1, "exlude: unknown field");
    expect_error("{\"name\":\"Bad Name\",\"server\":{\"host\":\"h\"},\"mailboxes\":[]}", 1,
                 "name:");
    expect_error("{\"name\":\"p\",\"mailboxes\":[{\"login\":\"a\"}]}", 1, "server: missing");
    expect_error("{\"name\":\"p\",\"server\":{\"host\":\"h\",\"tls\":\"maybe\"},"
                 "\"mailboxes\":[{\"login\":\"a\"}]}",
                 1, "server.tls");
    expect_error("{\"name\":\"p\",\"server\":{\"host\":\"h\",\"port\":0},"
                 "\"mailboxes\":[{\"login\":\"a\"}]}",
                 1, "server.port");
    expect_error("{\"name\":\"p\",\"server\":{\"host\":\"h\",\"verify\":\"yes\"},"
                 "\"mailboxes\":[{\"login\":\"a\"}]}",
                 1, "server.verify");
    expect_error("{\"name\":\"p\",\"server\":{\"host\":\"h\"},\"mailboxes\":[]}", 1,
                 "mailboxes: must be a non-empty array");
    expect_error("{\"name\":\"p\",\"server\":{\"host\":\"h\"},\"mailboxes\":[{\"login\":\"a\"},"
                 "{\"password\":\"x\"}]}",
                 1, "mailboxes[1].login: missing");
    expect_error("{\"name\":\"p\",\"server\":{\"host\":\"h\"},\"mailboxes\":[{\"login\":\"a b\"}]}",
                 1, "mailboxes[0].login");
    expect_error("{\"name\":\"p\",\"server\":{\"host\":\"h\"},\"mailboxes\":[{\"login\":\"a\"},"
                 "{\"login\":\"a\"}]}",
                 1, "listed twice");
    expect_error("{\"name\":\"p\",\"server\":{\"host\":\"h\"},\"folders\":{\"include\":\"*\"},"
                 "\"mailboxes\":[{\"login\":\"a\"}]}",
                 1, "folders.include");
    expect_error("{\"name\":\"p\",\"name\":\"q\",\"server\":{\"host\":\"h\"},"
                 "\"mailboxes\":[{\"login\":\"a\"}]}",
                 1, "not valid JSON"); /* duplicate keys are refused */
    /* Graph endpoints: https, or http only to loopback (the secret never crosses a network in
     * clear); a JSON error never quotes the text near it when secrets are allowed */
    expect_error("{\"name\":\"p\",\"type\":\"graph\",\"graph\":{\"tenant_id\":\"t\","
                 "\"client_id\":\"c\",\"graph_base\":\"http://graph.example/v1.0\"},"
                 "\"directory\":{}}",
                 1, "graph.graph_base: must be an https:// URL");
    mv_profile q;
    char qerr[MV_ERRLEN];
    assert_int_equal(mv_profile_parse("{\"mailboxes\":[{\"password\":\"Sup3rS3cret\x01\"}]}", 1, &q,
                                      qerr, sizeof qerr),
                     MV_EINVAL);
    assert_null(strstr(qerr, "Sup3r"));
    /* a stored profile must never carry a secret */
    expect_error(good, 0, "must not contain secrets");
}

/* The deletion rule: off unless asked for, bounded, graph only, kept by the round trip. */
static void test_deletion_rule(void **state)
{
    (void)state;
    static const char g[] = "{\"name\":\"p\",\"type\":\"graph\",\"graph\":{\"tenant_id\":\"t\","
                            "\"client_id\":\"c\"},\"mailboxes\":[{\"login\":\"a@b\"}]";
    char buf[512], err[MV_ERRLEN];
    mv_profile p;
    snprintf(buf, sizeof buf, "%s}", g);
    assert_int_equal(mv_profile_parse(buf, 1, &p, err, sizeof err), MV_OK);
    assert_int_equal(p.delete_enabled, 0);
    mv_profile_free(&p);
    snprintf(buf, sizeof buf, "%s,\"deletion\":{\"older_than_days\":0}}", g);
    assert_int_equal(mv_profile_parse(buf, 1, &p, err, sizeof err), MV_OK);
    assert_int_equal(p.delete_enabled, 1);
    assert_int_equal(p.delete_after_days, 0);
    char *js = mv_profile_to_json(&p);
    assert_non_null(strstr(js, "\"older_than_days\": 0"));
    mv_profile q;
    assert_int_equal(mv_profile_parse(js, 0, &q, err, sizeof err), MV_OK);
    assert_int_equal(q.delete_enabled, 1);
    mv_profile_free(&q);
    free(js);
    mv_profile_free(&p);
    snprintf(buf, sizeof buf, "%s,\"deletion\":{}}", g);
    expect_error(buf, 1, "deletion.older_than_days: missing");
    snprintf(buf, sizeof buf, "%s,\"deletion\":{\"older_than_days\":-1}}", g);
    expect_error(buf, 1, "deletion.older_than_days: must be an integer");
    snprintf(buf, sizeof buf, "%s,\"deletion\":{\"older_than_days\":\"30\"}}", g);
    expect_error(buf, 1, "deletion.older_than_days: must be an integer");
    snprintf(buf, sizeof buf, "%s,\"deletion\":{\"older_than_days\":30,\"x\":1}}", g);
    expect_error(buf, 1, "deletion.x: unknown field");
    expect_error("{\"name\":\"p\",\"server\":{\"host\":\"h\"},\"mailboxes\":[{\"login\":\"a\"}],"
                 "\"deletion\":{\"older_than_days\":30}}",
                 1, "for type graph only");
}

/* type ews: service account or OAuth app, impersonation, archive mailbox, public folders; the
 * password never in a stored profile; the round trip keeps everything else. */
static void test_ews(void **state)
{
    (void)state;
    char err[MV_ERRLEN];
    mv_profile p, q;
    static const char basic[] =
        "{\"name\":\"exch\",\"type\":\"ews\",\"ews\":{\"url\":\"https://mail.corp.example/EWS/"
        "Exchange.asmx\",\"username\":\"svc@corp.example\",\"password\":\"pw\"},"
        "\"archive_mailbox\":\"include\",\"public_folders\":{\"mailbox\":\"pf@corp.example\"},"
        "\"mailboxes\":[{\"login\":\"a@corp.example\"}]}";
    assert_int_equal(mv_profile_parse(basic, 1, &p, err, sizeof err), MV_OK);
    assert_int_equal(p.source, MV_SOURCE_EWS);
    assert_int_equal(p.ews_auth, MV_EWS_AUTH_BASIC);
    assert_int_equal(p.ews_impersonate, 1);
    assert_string_equal(p.ews_server_version, "Exchange2016");
    assert_int_equal(p.ews_archive, MV_EWS_ARCHIVE_INCLUDE);
    assert_string_equal(p.client_secret, "pw");
    assert_int_equal(p.public_folders, 1);
    assert_string_equal(p.pf_archive_as, "public-folders");
    assert_string_equal(p.pf_target, "Public Folders");
    char *js = mv_profile_to_json(&p);
    assert_null(strstr(js, "\"pw\""));
    assert_int_equal(mv_profile_parse(js, 0, &q, err, sizeof err), MV_OK);
    assert_string_equal(q.ews_url, p.ews_url);
    assert_string_equal(q.ews_username, "svc@corp.example");
    assert_int_equal(q.ews_archive, MV_EWS_ARCHIVE_INCLUDE);
    assert_string_equal(q.pf_mailbox, "pf@corp.example");
    mv_profile_free(&q);
    free(js);
    mv_profile_free(&p);
    /* OAuth: the Exchange Online endpoint by default, no username/password */
    static const char oauth[] =
        "{\"name\":\"exo\",\"type\":\"ews\",\"ews\":{\"auth\":\"oauth\",\"tenant_id\":\"t1\","
        "\"client_id\":\"c1\",\"client_secret\":\"s\"},\"archive_mailbox\":\"only\"}";
    assert_int_equal(mv_profile_parse(oauth, 1, &p, err, sizeof err), MV_OK);
    assert_string_equal(p.ews_url, "https://outlook.office365.com/EWS/Exchange.asmx");
    assert_string_equal(p.login_base, "https://login.microsoftonline.com");
    assert_int_equal(p.nmailboxes, 0); /* a CSV import may add them */
    /* the mailbox list from a CSV export, header found, quotes and a BOM handled */
    static const char csv[] = "\xEF\xBB\xBF\"DisplayName\";\"PrimarySmtpAddress\"\r\n"
                              "\"Ann, A.\";\"ann@corp.example\"\r\n\r\nBen;ben@corp.example\n"
                              "Ann again;ann@corp.example\n";
    size_t added = 0;
    assert_int_equal(mv_profile_import_csv(&p, csv, strlen(csv), &added, err, sizeof err), MV_OK);
    assert_int_equal(added, 2);
    assert_int_equal(p.nmailboxes, 2);
    assert_string_equal(p.mailboxes[1].login, "ben@corp.example");
    static const char nohdr[] = "cy@corp.example\nbad address\n";
    assert_int_equal(mv_profile_import_csv(&p, nohdr, strlen(nohdr), &added, err, sizeof err),
                     MV_EINVAL);
    assert_non_null(strstr(err, "line 2"));
    mv_profile_free(&p);
    /* errors name the field */
    expect_error("{\"name\":\"p\",\"type\":\"ews\",\"ews\":{\"url\":\"http://mail.example/EWS\","
                 "\"username\":\"u\"},\"mailboxes\":[{\"login\":\"a\"}]}",
                 1, "ews.url: must be an https:// URL");
    expect_error("{\"name\":\"p\",\"type\":\"ews\",\"ews\":{\"url\":\"https://m/EWS\","
                 "\"username\":\"u\",\"auth\":\"kerberos\"}}",
                 1, "ews.auth");
    expect_error("{\"name\":\"p\",\"type\":\"ews\",\"ews\":{\"url\":\"https://m/EWS\","
                 "\"username\":\"u\",\"client_id\":\"c\"}}",
                 1, "ews.client_id: only used with");
    expect_error("{\"name\":\"p\",\"type\":\"ews\",\"ews\":{\"url\":\"https://m/EWS\","
                 "\"username\":\"u\",\"password\":\"x\"}}",
                 0, "ews.password: a stored profile must not contain secrets");
    expect_error("{\"name\":\"p\",\"type\":\"ews\",\"ews\":{\"url\":\"https://m/EWS\","
                 "\"username\":\"u\",\"server_version\":\"Exchange2007\"}}",
                 1, "ews.server_version");
    expect_error("{\"name\":\"p\",\"type\":\"ews\",\"ews\":{\"url\":\"https://m/EWS\","
                 "\"username\":\"u\"},\"archive_mailbox\":\"yes\"}",
                 1, "archive_mailbox: must be one of");
    expect_error("{\"name\":\"p\",\"type\":\"ews\",\"ews\":{\"url\":\"https://m/EWS\","
                 "\"username\":\"u\"},\"mailboxes\":[{\"login\":\"a\",\"password\":\"x\"}]}",
                 1, "mailboxes[0].password");
    expect_error("{\"name\":\"p\",\"server\":{\"host\":\"h\"},\"archive_mailbox\":\"include\","
                 "\"mailboxes\":[{\"login\":\"a\"}]}",
                 1, "archive_mailbox: only for type ews");
    expect_error("{\"name\":\"p\",\"type\":\"ews\",\"ews\":{\"url\":\"https://m/EWS\","
                 "\"username\":\"u\"},\"public_folders\":{\"mailbox\":\"pf@x\",\"archive_as\":"
                 "\"a\"},\"mailboxes\":[{\"login\":\"a\"}]}",
                 1, "also public_folders.archive_as");
}

/* type export: a mailbox's archive (optionally one folder subtree) into a directory. */
/* p as stored (JSON, without the secret) and parsed back into q. */
static void reparse(const mv_profile *p, mv_profile *q, const char *secret)
{
    char err[MV_ERRLEN];
    char *js = mv_profile_to_json(p);
    assert_non_null(js);
    assert_null(strstr(js, secret));
    assert_int_equal(mv_profile_parse(js, 0, q, err, sizeof err), MV_OK);
    free(js);
}

static void test_export(void **state)
{
    (void)state;
    char err[MV_ERRLEN];
    mv_profile p, q;
    static const char doc[] = "{\"name\":\"e1\",\"type\":\"export\",\"export\":{\"mailbox\":"
                              "\"a@x\",\"folder\":\"Inbox\",\"destination\":{\"type\":"
                              "\"directory\",\"path\":\"/srv/e1\",\"sign\":true}}}";
    assert_int_equal(mv_profile_parse(doc, 1, &p, err, sizeof err), MV_OK);
    assert_int_equal(p.source, MV_SOURCE_EXPORT);
    assert_string_equal(p.exp_mailbox, "a@x");
    assert_string_equal(p.exp_folder, "Inbox");
    assert_string_equal(p.exp_path, "/srv/e1");
    assert_int_equal(p.exp_flat, 0);
    assert_int_equal(p.exp_sign, 1);
    char *js = mv_profile_to_json(&p);
    assert_int_equal(mv_profile_parse(js, 0, &q, err, sizeof err), MV_OK);
    assert_string_equal(q.exp_path, "/srv/e1");
    assert_int_equal(q.exp_sign, 1);
    mv_profile_free(&q);
    free(js);
    mv_profile_free(&p);
    /* an IMAP destination: its password is a secret, never stored */
    static const char im[] =
        "{\"name\":\"e2\",\"type\":\"export\",\"export\":{\"mailbox\":\"a@x\","
        "\"destination\":{\"type\":\"imap\",\"host\":\"mail.example\",\"login\":\"b@x\","
        "\"password\":\"pw9\",\"layout\":\"flat\",\"literal_plus\":false}}}";
    assert_int_equal(mv_profile_parse(im, 1, &p, err, sizeof err), MV_OK);
    assert_int_equal(p.exp_imap, 1);
    assert_int_equal(p.port, 993);
    assert_string_equal(p.exp_root, "Archive Export");
    assert_int_equal(p.exp_literal_plus, 0);
    assert_int_equal(p.exp_multiappend, 1);
    assert_string_equal(p.client_secret, "pw9");
    reparse(&p, &q, "pw9");
    assert_int_equal(q.exp_imap, 1);
    assert_int_equal(q.exp_flat, 1);
    assert_string_equal(q.exp_login, "b@x");
    mv_profile_free(&q);
    mv_profile_free(&p);
    expect_error(im, 0, "export.destination.password: a stored profile must not contain secrets");
    /* an EWS destination: the ews connection, the target mailbox, root and layout */
    static const char ew[] =
        "{\"name\":\"e3\",\"type\":\"export\",\"export\":{\"mailbox\":\"a@x\","
        "\"destination\":{\"type\":\"ews\",\"url\":\"https://mail.example/EWS/Exchange.asmx\","
        "\"auth\":\"ntlm\",\"username\":\"svc@x\",\"password\":\"pw-ews\",\"mailbox\":"
        "\"erin@x.example\",\"root\":\"Restored\",\"layout\":\"flat\",\"impersonation\":false}}}";
    assert_int_equal(mv_profile_parse(ew, 1, &p, err, sizeof err), MV_OK);
    assert_int_equal(p.exp_ews, 1);
    assert_int_equal(p.exp_imap, 0);
    assert_int_equal(p.ews_auth, MV_EWS_AUTH_NTLM);
    assert_int_equal(p.ews_impersonate, 0);
    assert_string_equal(p.ews_server_version, "Exchange2016");
    assert_string_equal(p.exp_login, "erin@x.example");
    assert_string_equal(p.client_secret, "pw-ews");
    js = mv_profile_to_json(&p);
    assert_null(strstr(js, "pw-ews"));
    assert_int_equal(mv_profile_parse(js, 0, &q, err, sizeof err), MV_OK);
    assert_int_equal(q.exp_ews, 1);
    assert_int_equal(q.exp_flat, 1);
    assert_int_equal(q.ews_impersonate, 0);
    assert_string_equal(q.ews_url, "https://mail.example/EWS/Exchange.asmx");
    assert_string_equal(q.ews_username, "svc@x");
    assert_string_equal(q.exp_root, "Restored");
    assert_string_equal(q.exp_login, "erin@x.example");
    mv_profile_free(&q);
    free(js);
    mv_profile_free(&p);
    expect_error(ew, 0, "export.destination.password: a stored profile must not contain secrets");
    static const char ew_oauth[] =
        "{\"name\":\"e4\",\"type\":\"export\",\"export\":{\"mailbox\":\"a@x\","
        "\"destination\":{\"type\":\"ews\",\"auth\":\"oauth\",\"tenant_id\":\"corp.example\","
        "\"client_id\":\"c1\",\"client_secret\":\"s3cret\",\"mailbox\":\"erin@x.example\"}}}";
    assert_int_equal(mv_profile_parse(ew_oauth, 1, &p, err, sizeof err), MV_OK);
    assert_string_equal(p.ews_url, "https://outlook.office365.com/EWS/Exchange.asmx");
    assert_string_equal(p.exp_root, "Archive Export");
    js = mv_profile_to_json(&p);
    assert_null(strstr(js, "s3cret"));
    assert_int_equal(mv_profile_parse(js, 0, &q, err, sizeof err), MV_OK);
    assert_string_equal(q.client_id, "c1");
    assert_int_equal(q.ews_auth, MV_EWS_AUTH_OAUTH);
    mv_profile_free(&q);
    free(js);
    mv_profile_free(&p);
    expect_error("{\"name\":\"e\",\"type\":\"export\",\"export\":{\"mailbox\":\"a\","
                 "\"destination\":{\"type\":\"ews\",\"url\":\"https://h/EWS/Exchange.asmx\","
                 "\"username\":\"u\"}}}",
                 1, "export.destination.mailbox: missing");
    expect_error("{\"name\":\"e\",\"type\":\"export\",\"export\":{\"mailbox\":\"a\","
                 "\"destination\":{\"type\":\"ews\",\"url\":\"http://mail.example/EWS\","
                 "\"username\":\"u\",\"mailbox\":\"b@x\"}}}",
                 1, "export.destination.url: must be an https:// URL");
    expect_error("{\"name\":\"e\",\"type\":\"export\",\"export\":{\"mailbox\":\"a\","
                 "\"destination\":{\"type\":\"ews\",\"url\":\"https://h/EWS/Exchange.asmx\","
                 "\"username\":\"u\",\"mailbox\":\"b@x\",\"auth\":\"kerberos\"}}}",
                 1, "export.destination.auth: \"kerberos\" is not one of basic, ntlm, oauth");
    expect_error("{\"name\":\"e\",\"type\":\"export\",\"export\":{\"mailbox\":\"a\","
                 "\"destination\":{\"type\":\"ews\",\"url\":\"https://h/EWS/Exchange.asmx\","
                 "\"username\":\"u\",\"mailbox\":\"b@x\",\"host\":\"h\"}}}",
                 1, "export.destination.host: only for type imap");
    expect_error("{\"name\":\"e\",\"type\":\"export\",\"export\":{\"mailbox\":\"a\","
                 "\"destination\":{\"type\":\"ews\",\"url\":\"https://h/EWS/Exchange.asmx\","
                 "\"username\":\"u\",\"mailbox\":\"b@x\",\"root\":\"\"}}}",
                 1, "export.destination.root: must not be empty");
    expect_error("{\"name\":\"e\",\"type\":\"export\",\"export\":{\"mailbox\":\"a\","
                 "\"destination\":{\"type\":\"imap\",\"host\":\"h\",\"login\":\"b\","
                 "\"mailbox\":\"b@x\"}}}",
                 1, "export.destination.mailbox: only for type ews");
    expect_error("{\"name\":\"e\",\"type\":\"export\",\"export\":{\"mailbox\":\"a\","
                 "\"destination\":{\"type\":\"directory\",\"path\":\"/x\",\"url\":\"https://h\"}}}",
                 1, "export.destination.url: only for type ews");
    expect_error("{\"name\":\"e\",\"type\":\"export\",\"export\":{\"mailbox\":\"a\","
                 "\"destination\":{\"type\":\"directory\",\"path\":\"/x\",\"host\":\"h\"}}}",
                 1, "export.destination.host: only for type imap");
    /* a Microsoft 365 mailbox: the app's secret, never stored; Exchange Online by default */
    static const char m3[] =
        "{\"name\":\"e3\",\"type\":\"export\",\"export\":{\"mailbox\":\"a@x\","
        "\"destination\":{\"type\":\"m365\",\"mailbox\":\"b@contoso.com\",\"tenant_id\":"
        "\"contoso.onmicrosoft.com\",\"client_id\":\"c1\",\"client_secret\":\"sec7\"}}}";
    assert_int_equal(mv_profile_parse(m3, 1, &p, err, sizeof err), MV_OK);
    assert_int_equal(p.exp_imap, 1);
    assert_int_equal(p.exp_m365, 1);
    assert_string_equal(p.host, "outlook.office365.com");
    assert_int_equal(p.port, 993);
    assert_int_equal(p.tls, MV_TLS_IMPLICIT);
    assert_string_equal(p.exp_login, "b@contoso.com");
    assert_string_equal(p.client_secret, "sec7");
    reparse(&p, &q, "sec7");
    assert_int_equal(q.exp_m365, 1);
    assert_string_equal(q.exp_login, "b@contoso.com");
    assert_string_equal(q.client_id, "c1");
    assert_string_equal(q.login_base, "https://login.microsoftonline.com");
    mv_profile_free(&q);
    mv_profile_free(&p);
    expect_error(m3, 0, "export.destination.client_secret: a stored profile must not contain");
    expect_error("{\"name\":\"e\",\"type\":\"export\",\"export\":{\"mailbox\":\"a\","
                 "\"destination\":{\"type\":\"m365\",\"mailbox\":\"b@x\",\"login\":\"b\","
                 "\"tenant_id\":\"t\",\"client_id\":\"c\"}}}",
                 1, "export.destination.login, .password: not used by type m365");
    expect_error("{\"name\":\"e\",\"type\":\"export\",\"export\":{\"mailbox\":\"a\","
                 "\"destination\":{\"type\":\"m365\",\"mailbox\":\"nobody\","
                 "\"tenant_id\":\"t\",\"client_id\":\"c\",\"client_secret\":\"s\"}}}",
                 1, "export.destination.mailbox: \"nobody\" is not a mailbox address");
    expect_error("{\"name\":\"e\",\"type\":\"export\",\"export\":{\"mailbox\":\"a\","
                 "\"destination\":{\"type\":\"imap\",\"host\":\"h\",\"login\":\"b\","
                 "\"client_id\":\"c\"}}}",
                 1, "export.destination.client_id: only for type ews or m365");
    expect_error("{\"name\":\"e\",\"type\":\"export\",\"export\":{\"mailbox\":\"a\","
                 "\"destination\":{\"type\":\"directory\",\"path\":\"relative/dir\"}}}",
                 1, "export.destination.path: must be an absolute path");
    expect_error("{\"name\":\"e\",\"type\":\"export\",\"export\":{\"mailbox\":\"a\","
                 "\"destination\":{\"type\":\"pop3\",\"path\":\"/x\"}}}",
                 1, "export.destination.type");
    expect_error("{\"name\":\"e\",\"type\":\"export\",\"export\":{\"mailbox\":\"a\","
                 "\"destination\":{\"type\":\"directory\",\"path\":\"/x\",\"layout\":\"deep\"}}}",
                 1, "export.destination.layout");
    expect_error("{\"name\":\"e\",\"type\":\"export\",\"export\":{\"destination\":{}}}", 1,
                 "export.mailbox: missing");
    expect_error("{\"name\":\"e\",\"type\":\"export\",\"mailboxes\":[],\"export\":{}}", 1,
                 "mailboxes: not used by type export");
    expect_error("{\"name\":\"e\",\"server\":{\"host\":\"h\"},\"export\":{},"
                 "\"mailboxes\":[{\"login\":\"a\"}]}",
                 1, "export: not used by type imap");
}

static void test_schedule(void **state)
{
    (void)state;
    char err[MV_ERRLEN];
    mv_profile p, q;
    static const char doc[] = "{\"name\":\"s\",\"server\":{\"host\":\"h\"},\"mailboxes\":"
                              "[{\"login\":\"a\"}],\"schedule\":{\"cron\":\"30 2 * * 1-5\","
                              "\"timezone\":\"Europe/Berlin\"}}";
    assert_int_equal(mv_profile_parse(doc, 0, &p, err, sizeof err), MV_OK);
    assert_int_equal(p.schedule.kind, MV_SCHED_CRON);
    assert_string_equal(p.schedule.tz, "Europe/Berlin");
    reparse(&p, &q, "no-secret-here");
    assert_int_equal(q.schedule.kind, MV_SCHED_CRON);
    assert_string_equal(q.schedule.expr, "30 2 * * 1-5");
    assert_string_equal(q.schedule.tz, "Europe/Berlin");
    mv_profile_free(&q);
    mv_profile_free(&p);
    static const char ev[] = "{\"name\":\"e\",\"type\":\"export\",\"export\":{\"mailbox\":"
                             "\"a\",\"destination\":{\"type\":\"directory\",\"path\":\"/x\"}},"
                             "\"schedule\":{\"every\":\"12h\"}}";
    assert_int_equal(mv_profile_parse(ev, 0, &p, err, sizeof err), MV_OK);
    assert_int_equal(p.schedule.kind, MV_SCHED_EVERY);
    reparse(&p, &q, "no-secret-here");
    assert_int_equal(q.schedule.every_ms, 12 * 3600000LL);
    mv_profile_free(&q);
    mv_profile_free(&p);
    expect_error("{\"name\":\"s\",\"server\":{\"host\":\"h\"},\"mailboxes\":[{\"login\":"
                 "\"a\"}],\"schedule\":{\"cron\":\"* * *\"}}",
                 0, "schedule.cron: \"* * *\" needs 5 fields");
    expect_error("{\"name\":\"s\",\"server\":{\"host\":\"h\"},\"mailboxes\":[{\"login\":"
                 "\"a\"}],\"schedule\":{\"cron\":\"* * * * *\",\"every\":\"1h\"}}",
                 0, "schedule: give either");
    expect_error("{\"name\":\"s\",\"server\":{\"host\":\"h\"},\"mailboxes\":[{\"login\":"
                 "\"a\"}],\"schedule\":{\"every\":\"1h\",\"timezone\":\"UTC\"}}",
                 0, "schedule.timezone: only with");
    expect_error("{\"name\":\"s\",\"server\":{\"host\":\"h\"},\"mailboxes\":[{\"login\":"
                 "\"a\"}],\"schedule\":{\"cron\":\"0 0 * * *\",\"timezone\":\"Nowhere\"}}",
                 0, "schedule.timezone: \"Nowhere\"");
}

static void test_folder_patterns(void **state)
{
    (void)state;
    mv_profile p;
    char err[MV_ERRLEN];
    const char *doc = "{\"name\":\"p\",\"server\":{\"host\":\"h\"},"
                      "\"folders\":{\"include\":[\"INBOX\",\"Archive*\",\"Projects.*\"],"
                      "\"exclude\":[\"Archive.Old*\"]},\"mailboxes\":[{\"login\":\"a\"}]}";
    assert_int_equal(mv_profile_parse(doc, 0, &p, err, sizeof err), MV_OK);
    assert_true(mv_profile_folder_selected(&p, "INBOX"));
    assert_false(mv_profile_folder_selected(&p, "INBOX.Sub")); /* exact pattern */
    assert_true(mv_profile_folder_selected(&p, "Archive"));
    assert_true(mv_profile_folder_selected(&p, "Archive.2024.Q1"));   /* '*' crosses levels */
    assert_false(mv_profile_folder_selected(&p, "Archive.Old.2019")); /* exclude wins */
    assert_true(mv_profile_folder_selected(&p, "Projects.x"));
    assert_false(mv_profile_folder_selected(&p, "Projects"));
    assert_false(mv_profile_folder_selected(&p, "Sent"));
    mv_profile_free(&p);
}

static void test_cred_ad(void **state)
{
    (void)state;
    char a[256], b[256];
    mv_profile_cred_ad("t1", "p", "alice", a, sizeof a);
    mv_profile_cred_ad("t2", "p", "alice", b, sizeof b);
    assert_string_not_equal(a, b); /* binds the blob to its tenant */
    assert_string_equal(a, "cred:t1:p:alice");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse_good),
        cmocka_unit_test(test_defaults),
        cmocka_unit_test(test_errors_name_the_field),
        cmocka_unit_test(test_folder_patterns),
        cmocka_unit_test(test_deletion_rule),
        cmocka_unit_test(test_ews),
        cmocka_unit_test(test_export),
        cmocka_unit_test(test_schedule),
        cmocka_unit_test(test_cred_ad),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

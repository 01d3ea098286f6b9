/* test_jobs.c - the export destination's sign-in (mv_jobs_export_login) for Microsoft 365:
 * a token from the tenant's token endpoint (a scripted HTTP server on loopback), AUTHENTICATE
 * XOAUTH2 to a scripted IMAP server, and the verdict when Exchange Online lets the app in or
 * not, in both of the ways it says no. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "mv/config.h"
#include "mv/imap.h"
#include "mv/jobs.h"
#include "mv/profile.h"
#include "memio.h"
#include "testsrv.h"

#include <openssl/evp.h>

typedef struct tokens {
    int issued;
    char body[128];
} tokens;

/* The Entra ID token endpoint: a new token each time, "tok-1", "tok-2", ... */
static void token_endpoint(void *ud, const tsrv_req *q, tsrv_resp *r)
{
    tokens *t = ud;
    if (strcmp(q->method, "POST") != 0 || !strstr(q->target, "/oauth2/v2.0/token") ||
        !strstr(q->body, "scope=https%3A%2F%2Foutlook.office365.com%2F.default")) {
        r->status = 400;
        return;
    }
    snprintf(t->body, sizeof t->body,
             "{\"token_type\":\"Bearer\",\"expires_in\":3599,\"access_token\":\"tok-%d\"}",
             ++t->issued);
    r->status = 200;
    r->ctype = "application/json";
    r->body = t->body;
}

/* The XOAUTH2 initial response for token tok, base64, as it must appear on the wire. */
static void ir_of(const char *tok, char *out)
{
    char raw[128];
    int n = snprintf(raw, sizeof raw, "user=bob@contoso.com\001auth=Bearer %s\001\001", tok);
    EVP_EncodeBlock((unsigned char *)out, (const unsigned char *)raw, n);
}

static mv_err sign_in(const char *imap_script, tokens *tk, mem_io *io, char *err, size_t errlen)
{
    tsrv *srv = tsrv_start(token_endpoint, tk);
    char doc[1024];
    snprintf(doc, sizeof doc,
             "{\"name\":\"x\",\"type\":\"export\",\"export\":{\"mailbox\":\"a\",\"destination\":"
             "{\"type\":\"m365\",\"mailbox\":\"bob@contoso.com\",\"tenant_id\":\"contoso.example\","
             "\"client_id\":\"app-1\",\"login_base\":\"%s\"}}}",
             tsrv_base(srv));
    mv_profile p;
    assert_int_equal(mv_profile_parse(doc, 0, &p, err, errlen), MV_OK);
    mv_config cfg;
    mv_config_defaults(&cfg);
    memset(io, 0, sizeof *io);
    io->data = imap_script;
    io->len = strlen(imap_script);
    mv_imap_opts o;
    mv_imap_opts_default(&o);
    mv_imap *im = NULL;
    assert_int_equal(mv_imap_from_io(&o, mem_read, mem_write, io, &im), MV_OK);
    assert_int_equal(mv_imap_read_until_tagged(im, "A0", NULL, NULL, err, errlen), MV_OK);
    mv_err rc = mv_jobs_export_login(&cfg, &p, "secret-1", NULL, im, err, errlen);
    mv_imap_close(im);
    mv_profile_free(&p);
    tsrv_stop(srv);
    return rc;
}

static const char caps[] = "* CAPABILITY IMAP4rev1 AUTH=XOAUTH2 SASL-IR\r\nA0 OK\r\n";

static void test_m365_ok(void **state)
{
    (void)state;
    char err[MV_ERRLEN], script[512], ir[256];
    tokens tk = {0};
    mem_io io;
    snprintf(script, sizeof script,
             "%sA1 OK [CAPABILITY IMAP4rev1 LITERAL+] AUTHENTICATE completed.\r\n"
             "* LIST (\\Noselect) \"/\" \"\"\r\nA2 OK LIST completed.\r\n",
             caps);
    assert_int_equal(sign_in(script, &tk, &io, err, sizeof err), MV_OK);
    assert_int_equal(tk.issued, 1);
    ir_of("tok-1", ir);
    assert_non_null(strstr(io.out, ir));
    assert_null(strstr(err, "secret-1"));
}

/* NO to AUTHENTICATE, also with a second, new token: the permission is missing */
static void test_m365_refused(void **state)
{
    (void)state;
    char err[MV_ERRLEN], script[512], ir1[256], ir2[256];
    tokens tk = {0};
    mem_io io;
    snprintf(script, sizeof script,
             "%sA1 NO AUTHENTICATE failed.\r\nA2 NO AUTHENTICATE failed.\r\n", caps);
    assert_int_equal(sign_in(script, &tk, &io, err, sizeof err), MV_EAUTH);
    assert_int_equal(tk.issued, 2);
    ir_of("tok-1", ir1);
    ir_of("tok-2", ir2);
    assert_non_null(strstr(io.out, ir1));
    assert_non_null(strstr(io.out, ir2));
    assert_non_null(strstr(err, "lacks FullAccess on that mailbox"));
    assert_non_null(strstr(err, "Add-MailboxPermission -Identity bob@contoso.com"));
    assert_non_null(strstr(err, "AUTHENTICATE failed"));
    assert_null(strstr(err, "tok-"));
}

/* AUTHENTICATE OK, then BAD to the first command: Exchange Online's other way of saying it */
static void test_m365_not_connected(void **state)
{
    (void)state;
    char err[MV_ERRLEN], script[512];
    tokens tk = {0};
    mem_io io;
    snprintf(script, sizeof script,
             "%sA1 OK [CAPABILITY IMAP4rev1] AUTHENTICATE completed.\r\n"
             "A2 BAD User is authenticated but not connected.\r\n",
             caps);
    assert_int_equal(sign_in(script, &tk, &io, err, sizeof err), MV_EAUTH);
    assert_int_equal(tk.issued, 1);
    assert_non_null(strstr(err, "lacks FullAccess on that mailbox"));
    assert_non_null(strstr(err, "authenticated but not connected"));
}

/* another BAD is just an error, not a permission verdict */
static void test_m365_other_error(void **state)
{
    (void)state;
    char err[MV_ERRLEN], script[512];
    tokens tk = {0};
    mem_io io;
    snprintf(script, sizeof script,
             "%sA1 OK [CAPABILITY IMAP4rev1] done\r\nA2 BAD Command Error. 12\r\n", caps);
    assert_int_equal(sign_in(script, &tk, &io, err, sizeof err), MV_ESERVER);
    assert_null(strstr(err, "FullAccess"));
    assert_non_null(strstr(err, "Command Error"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_m365_ok),
        cmocka_unit_test(test_m365_refused),
        cmocka_unit_test(test_m365_not_connected),
        cmocka_unit_test(test_m365_other_error),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

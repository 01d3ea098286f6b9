/* test_sign.c - export manifest signatures: a new key signs, its public key verifies, any
 * changed byte of the data or the signature fails, another key fails, keys round-trip
 * through PEM, and the openssl command line accepts the signature (the promise exports make). */
#include "mv/sign.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static void test_sign_verify(void **state)
{
    (void)state;
    char err[MV_ERRLEN], *priv = NULL, *pub = NULL, *pub2 = NULL, *other = NULL, *opub = NULL;
    assert_int_equal(mv_sign_keygen(&priv, &pub, err, sizeof err), MV_OK);
    assert_non_null(strstr(priv, "-----BEGIN PRIVATE KEY-----"));
    assert_non_null(strstr(pub, "-----BEGIN PUBLIC KEY-----"));
    assert_int_equal(mv_sign_pubkey(priv, &pub2, err, sizeof err), MV_OK);
    assert_string_equal(pub, pub2);
    static const char data[] = "abc\t12\tInbox/x.eml\n";
    unsigned char *sig = NULL;
    size_t siglen = 0;
    assert_int_equal(mv_sign_data(priv, data, strlen(data), &sig, &siglen, err, sizeof err), MV_OK);
    assert_true(siglen > 60 && siglen < 80); /* DER ECDSA P-256 */
    assert_int_equal(mv_sign_verify(pub, data, strlen(data), sig, siglen), 1);
    char changed[sizeof data];
    memcpy(changed, data, sizeof data);
    changed[0] ^= 1;
    assert_int_equal(mv_sign_verify(pub, changed, strlen(changed), sig, siglen), 0);
    sig[siglen - 1] ^= 1;
    assert_int_equal(mv_sign_verify(pub, data, strlen(data), sig, siglen), 0);
    sig[siglen - 1] ^= 1;
    assert_int_equal(mv_sign_keygen(&other, &opub, err, sizeof err), MV_OK);
    assert_int_equal(mv_sign_verify(opub, data, strlen(data), sig, siglen), 0);
    char fp[65], fp2[65];
    assert_int_equal(mv_sign_fingerprint(pub, fp, err, sizeof err), MV_OK);
    assert_int_equal(mv_sign_fingerprint(opub, fp2, err, sizeof err), MV_OK);
    assert_int_equal(strlen(fp), 64);
    assert_string_not_equal(fp, fp2);
    free(pub2);
    assert_int_equal(mv_sign_pubkey("not a key", &pub2, err, sizeof err), MV_EINVAL);
    assert_null(pub2);

    /* the stock openssl command accepts it */
    char dir[] = "/tmp/mv-sign-XXXXXX";
    assert_non_null(mkdtemp(dir));
    char pf[64], df[64], sf[64], cmd[512];
    snprintf(pf, sizeof pf, "%s/pub.pem", dir);
    snprintf(df, sizeof df, "%s/data", dir);
    snprintf(sf, sizeof sf, "%s/data.sig", dir);
    FILE *f = fopen(pf, "w");
    fputs(pub, f);
    fclose(f);
    f = fopen(df, "w");
    fputs(data, f);
    fclose(f);
    f = fopen(sf, "wb");
    fwrite(sig, 1, siglen, f);
    fclose(f);
    snprintf(cmd, sizeof cmd, "openssl dgst -sha256 -verify %s -signature %s %s >/dev/null", pf, sf,
             df);
    assert_int_equal(system(cmd), 0);
    f = fopen(df, "a");
    fputs("x", f);
    fclose(f);
    assert_int_not_equal(system(cmd), 0);
    unlink(pf);
    unlink(df);
    unlink(sf);
    rmdir(dir);

    free(sig);
    mv_free_secret(priv);
    mv_free_secret(other);
    free(pub);
    free(pub2);
    free(opub);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_sign_verify),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

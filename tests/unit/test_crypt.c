/* test_crypt.c - AES-256-GCM sealing and the master key file: round trips, wrong key/AD,
 * every tampered byte, truncation, key file formats and permissions, key generation. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "mv/crypt.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define OVERHEAD (3 + 12 + 16)
static const char corrupt_msg[] =
    "credential cannot be decrypted: wrong master key or damaged data";

static void fill_key(unsigned char key[MV_KEY_LEN], unsigned char seed)
{
    for (int i = 0; i < MV_KEY_LEN; i++)
        key[i] = (unsigned char)(seed + 7 * i + 1);
}

static void seal(const unsigned char *key, const char *ad, const char *plain, size_t len,
                 unsigned char **blob, size_t *bloblen)
{
    char err[MV_ERRLEN] = "";
    assert_int_equal(mv_crypt_seal(key, ad, plain, len, blob, bloblen, err, sizeof err), MV_OK);
    assert_int_equal(*bloblen, OVERHEAD + len);
}

/* ---- seal / open ---- */

static void test_round_trip(void **state)
{
    (void)state;
    unsigned char key[MV_KEY_LEN];
    fill_key(key, 1);
    static const char *plains[] = {"", "x", "hunter2", "a longer secret: imap password ÄÖÜ"};
    static const char *ads[] = {NULL, "", "cred:t1:p1:alice@example.org"};
    for (size_t i = 0; i < sizeof plains / sizeof plains[0]; i++) {
        for (size_t j = 0; j < sizeof ads / sizeof ads[0]; j++) {
            unsigned char *blob = NULL, *out = NULL;
            size_t bloblen = 0, outlen = 99;
            char err[MV_ERRLEN] = "";
            size_t len = strlen(plains[i]);
            seal(key, ads[j], plains[i], len, &blob, &bloblen);
            assert_memory_equal(blob, "MV1", 3);
            assert_int_equal(
                mv_crypt_open(key, ads[j], blob, bloblen, &out, &outlen, err, sizeof err), MV_OK);
            assert_int_equal(outlen, len);
            assert_memory_equal(out, plains[i], len);
            assert_int_equal(out[len], '\0'); /* usable as a C string */
            assert_string_equal((char *)out, plains[i]);
            mv_crypt_wipe(out, outlen);
            free(out);
            free(blob);
        }
    }
}

static void test_binary_plaintext(void **state)
{
    (void)state;
    unsigned char key[MV_KEY_LEN], plain[1000];
    fill_key(key, 2);
    for (size_t i = 0; i < sizeof plain; i++)
        plain[i] = (unsigned char)(i * 31);
    unsigned char *blob = NULL, *out = NULL;
    size_t bloblen = 0, outlen = 0;
    char err[MV_ERRLEN] = "";
    assert_int_equal(
        mv_crypt_seal(key, "ad", plain, sizeof plain, &blob, &bloblen, err, sizeof err), MV_OK);
    /* the ciphertext does not contain the plaintext */
    assert_true(memcmp(blob + 15, plain, sizeof plain) != 0);
    assert_int_equal(mv_crypt_open(key, "ad", blob, bloblen, &out, &outlen, err, sizeof err),
                     MV_OK);
    assert_int_equal(outlen, sizeof plain);
    assert_memory_equal(out, plain, sizeof plain);
    free(out);
    free(blob);
}

static void test_nonce_is_random(void **state)
{
    (void)state;
    unsigned char key[MV_KEY_LEN];
    fill_key(key, 3);
    unsigned char *a = NULL, *b = NULL;
    size_t alen = 0, blen = 0;
    seal(key, "ad", "same", 4, &a, &alen);
    seal(key, "ad", "same", 4, &b, &blen);
    assert_true(memcmp(a + 3, b + 3, 12) != 0);       /* different nonces */
    assert_true(memcmp(a + 15, b + 15, 4 + 16) != 0); /* so different ciphertext+tag */
    free(a);
    free(b);
}

static void expect_open_fails(const unsigned char *key, const char *ad, const void *blob,
                              size_t len, mv_err want, const char *needle)
{
    unsigned char *out = (unsigned char *)"sentinel";
    size_t outlen = 12345;
    char err[MV_ERRLEN] = "";
    assert_int_equal(mv_crypt_open(key, ad, blob, len, &out, &outlen, err, sizeof err), want);
    assert_string_equal((char *)out, "sentinel"); /* untouched on failure */
    assert_int_equal(outlen, 12345);
    if (needle && !strstr(err, needle)) fail_msg("error \"%s\" lacks \"%s\"", err, needle);
}

static void test_wrong_key(void **state)
{
    (void)state;
    unsigned char k1[MV_KEY_LEN], k2[MV_KEY_LEN];
    fill_key(k1, 4);
    memcpy(k2, k1, sizeof k2);
    k2[31] ^= 0x01; /* one bit differs */
    unsigned char *blob = NULL;
    size_t bloblen = 0;
    seal(k1, "cred:a", "secret", 6, &blob, &bloblen);
    char err[MV_ERRLEN] = "";
    unsigned char *out = NULL;
    size_t outlen = 0;
    assert_int_equal(mv_crypt_open(k2, "cred:a", blob, bloblen, &out, &outlen, err, sizeof err),
                     MV_ECORRUPT);
    assert_string_equal(err, corrupt_msg);
    assert_null(out);
    free(blob);
}

static void test_wrong_ad(void **state)
{
    (void)state;
    unsigned char key[MV_KEY_LEN];
    fill_key(key, 5);
    unsigned char *blob = NULL;
    size_t bloblen = 0;
    seal(key, "cred:t1:p1:alice", "secret", 6, &blob, &bloblen);
    expect_open_fails(key, "cred:t1:p1:bob", blob, bloblen, MV_ECORRUPT, corrupt_msg);
    expect_open_fails(key, NULL, blob, bloblen, MV_ECORRUPT, corrupt_msg);
    expect_open_fails(key, "cred:t1:p1:alice ", blob, bloblen, MV_ECORRUPT, corrupt_msg);
    free(blob);

    /* NULL and "" are the same (empty) associated data */
    seal(key, NULL, "secret", 6, &blob, &bloblen);
    unsigned char *out = NULL;
    size_t outlen = 0;
    char err[MV_ERRLEN] = "";
    assert_int_equal(mv_crypt_open(key, "", blob, bloblen, &out, &outlen, err, sizeof err), MV_OK);
    free(out);
    expect_open_fails(key, "x", blob, bloblen, MV_ECORRUPT, corrupt_msg);
    free(blob);
}

static void test_tamper_every_byte(void **state)
{
    (void)state;
    unsigned char key[MV_KEY_LEN];
    fill_key(key, 6);
    unsigned char *blob = NULL;
    size_t bloblen = 0;
    seal(key, "ad", "password123", 11, &blob, &bloblen);
    unsigned char *copy = malloc(bloblen);
    assert_non_null(copy);
    for (size_t i = 0; i < bloblen; i++) {
        for (int bit = 0; bit < 8; bit++) {
            memcpy(copy, blob, bloblen);
            copy[i] ^= (unsigned char)(1u << bit);
            expect_open_fails(key, "ad", copy, bloblen, MV_ECORRUPT,
                              i < 3 ? "unknown format" : corrupt_msg);
        }
    }
    free(copy);
    free(blob);
}

static void test_truncated_and_extended(void **state)
{
    (void)state;
    unsigned char key[MV_KEY_LEN];
    fill_key(key, 7);
    unsigned char *blob = NULL;
    size_t bloblen = 0;
    seal(key, "ad", "0123456789", 10, &blob, &bloblen);
    for (size_t n = 0; n < bloblen; n++) {
        unsigned char *p = malloc(n ? n : 1); /* exact size: over-reads are caught */
        assert_non_null(p);
        memcpy(p, blob, n);
        expect_open_fails(key, "ad", p, n, MV_ECORRUPT, n < OVERHEAD ? "too short" : corrupt_msg);
        free(p);
    }
    unsigned char *longer = malloc(bloblen + 1);
    assert_non_null(longer);
    memcpy(longer, blob, bloblen);
    longer[bloblen] = 0;
    expect_open_fails(key, "ad", longer, bloblen + 1, MV_ECORRUPT, corrupt_msg);
    free(longer);
    expect_open_fails(key, "ad", NULL, 0, MV_ECORRUPT, "too short");
    free(blob);

    /* a well-sized blob with the wrong magic */
    unsigned char other[OVERHEAD + 4];
    memset(other, 0, sizeof other);
    memcpy(other, "MV2", 3);
    expect_open_fails(key, "ad", other, sizeof other, MV_ECORRUPT, "unknown format");
}

static void test_seal_bad_args(void **state)
{
    (void)state;
    unsigned char key[MV_KEY_LEN];
    fill_key(key, 8);
    unsigned char *blob = NULL;
    size_t bloblen = 0;
    char err[MV_ERRLEN] = "";
    assert_int_equal(mv_crypt_seal(key, "ad", NULL, 5, &blob, &bloblen, err, sizeof err),
                     MV_EINVAL);
    assert_null(blob);
    /* NULL plaintext with length 0 is an empty secret */
    assert_int_equal(mv_crypt_seal(key, "ad", NULL, 0, &blob, &bloblen, err, sizeof err), MV_OK);
    assert_int_equal(bloblen, OVERHEAD);
    free(blob);
}

static void test_wipe(void **state)
{
    (void)state;
    unsigned char buf[64];
    memset(buf, 0xEE, sizeof buf);
    mv_crypt_wipe(buf, 40);
    for (size_t i = 0; i < 40; i++)
        assert_int_equal(buf[i], 0);
    for (size_t i = 40; i < sizeof buf; i++)
        assert_int_equal(buf[i], 0xEE);
    mv_crypt_wipe(NULL, 10); /* harmless */
}

/* ---- key files ---- */

typedef struct {
    char dir[256];
    char path[300];
} fixture;

static int setup(void **state)
{
    fixture *f = calloc(1, sizeof *f);
    assert_non_null(f);
    const char *tmp = getenv("TMPDIR");
    snprintf(f->dir, sizeof f->dir, "%s/mv-test-crypt-XXXXXX", tmp && *tmp ? tmp : "/tmp");
    assert_non_null(mkdtemp(f->dir));
    snprintf(f->path, sizeof f->path, "%s/master.key", f->dir);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fixture *f = *state;
    unlink(f->path);
    rmdir(f->dir);
    free(f);
    return 0;
}

static void write_key_file(const char *path, const void *data, size_t len, mode_t mode)
{
    unlink(path);
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL, 0600);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, data, len), (ssize_t)len);
    assert_int_equal(fchmod(fd, mode), 0);
    assert_int_equal(close(fd), 0);
}

static const char hexkey[] = "000102030405060708090a0b0c0d0e0f101112131415161718191A1B1C1D1E1F";

static void expect_key(const char *path, const unsigned char *want)
{
    unsigned char key[MV_KEY_LEN];
    char err[MV_ERRLEN] = "";
    assert_int_equal(mv_crypt_load_key(path, key, err, sizeof err), MV_OK);
    assert_memory_equal(key, want, MV_KEY_LEN);
}

static void expect_key_error(const char *path, mv_err want, const char *needle)
{
    unsigned char key[MV_KEY_LEN];
    memset(key, 0x42, sizeof key);
    char err[MV_ERRLEN] = "";
    assert_int_equal(mv_crypt_load_key(path, key, err, sizeof err), want);
    if (!strstr(err, needle)) fail_msg("error \"%s\" lacks \"%s\"", err, needle);
    assert_non_null(strstr(err, path)); /* errors name the path */
    for (int i = 0; i < MV_KEY_LEN; i++)
        assert_int_equal(key[i], 0x42); /* untouched */
}

static void test_load_hex(void **state)
{
    fixture *f = *state;
    unsigned char want[MV_KEY_LEN];
    for (int i = 0; i < MV_KEY_LEN; i++)
        want[i] = (unsigned char)i;
    write_key_file(f->path, hexkey, 64, 0600);
    expect_key(f->path, want);
    char padded[100];
    snprintf(padded, sizeof padded, "  \n%s\r\n\n", hexkey);
    write_key_file(f->path, padded, strlen(padded), 0400);
    expect_key(f->path, want);
}

static void test_load_raw(void **state)
{
    fixture *f = *state;
    unsigned char raw[MV_KEY_LEN];
    for (int i = 0; i < MV_KEY_LEN; i++)
        raw[i] = (unsigned char)(0xff - i * 3);
    raw[0] = ' '; /* raw bytes are not trimmed */
    raw[31] = '\n';
    write_key_file(f->path, raw, sizeof raw, 0600);
    expect_key(f->path, raw);
}

static void test_load_bad_contents(void **state)
{
    fixture *f = *state;
    write_key_file(f->path, hexkey, 62, 0600);
    expect_key_error(f->path, MV_EINVAL, "64 hex characters or exactly 32 raw bytes (found 62");
    char bad[65];
    memcpy(bad, hexkey, 64);
    bad[10] = 'g';
    write_key_file(f->path, bad, 64, 0600);
    expect_key_error(f->path, MV_EINVAL, "64 hex characters or exactly 32 raw bytes");
    write_key_file(f->path, "", 0, 0600);
    expect_key_error(f->path, MV_EINVAL, "found 0 bytes");
    write_key_file(f->path, hexkey, 32, 0600); /* `openssl rand -hex 16` without newline */
    expect_key_error(f->path, MV_EINVAL, "32 hex characters (16 bytes)");
    char two[140];
    snprintf(two, sizeof two, "%s\n%s\n", hexkey, hexkey);
    write_key_file(f->path, two, strlen(two), 0600);
    expect_key_error(f->path, MV_EINVAL, "64 hex characters or exactly 32 raw bytes");
    unsigned char zeros[MV_KEY_LEN] = {0};
    write_key_file(f->path, zeros, sizeof zeros, 0600);
    expect_key_error(f->path, MV_EINVAL, "all-zero key");
    char big[5000];
    memset(big, 'a', sizeof big);
    write_key_file(f->path, big, sizeof big, 0600);
    expect_key_error(f->path, MV_EINVAL, "too large");
}

static void test_load_bad_mode(void **state)
{
    fixture *f = *state;
    static const mode_t modes[] = {0640, 0604, 0644, 0660, 0610, 0601, 0700 | 0007};
    for (size_t i = 0; i < sizeof modes / sizeof modes[0]; i++) {
        write_key_file(f->path, hexkey, 64, modes[i]);
        char want[400];
        snprintf(want, sizeof want, "master key file %s is readable by group/others; chmod 600 it",
                 f->path);
        expect_key_error(f->path, MV_EINVAL, want);
    }
}

static void test_load_missing_and_not_regular(void **state)
{
    fixture *f = *state;
    char want[400];
    snprintf(want, sizeof want, "cannot open master key file %s: %s", f->path, strerror(ENOENT));
    expect_key_error(f->path, MV_ENOTFOUND, want);
    assert_int_equal(chmod(f->dir, 0700), 0);
    expect_key_error(f->dir, MV_EINVAL, "is not a regular file");
    unsigned char key[MV_KEY_LEN];
    char err[MV_ERRLEN] = "";
    assert_int_equal(mv_crypt_load_key("", key, err, sizeof err), MV_EINVAL);
    assert_string_equal(err, "master key file is not configured");
}

static void test_generate(void **state)
{
    fixture *f = *state;
    char err[MV_ERRLEN] = "";
    assert_int_equal(mv_crypt_generate_key_file(f->path, err, sizeof err), MV_OK);
    struct stat st;
    assert_int_equal(stat(f->path, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0600);
    assert_int_equal(st.st_size, 65);
    char text[80] = "";
    FILE *fp = fopen(f->path, "r");
    assert_non_null(fp);
    assert_non_null(fgets(text, sizeof text, fp));
    fclose(fp);
    assert_int_equal(strlen(text), 65);
    assert_int_equal(text[64], '\n');
    for (int i = 0; i < 64; i++)
        assert_non_null(strchr("0123456789abcdef", text[i]));

    unsigned char k1[MV_KEY_LEN], k2[MV_KEY_LEN];
    assert_int_equal(mv_crypt_load_key(f->path, k1, err, sizeof err), MV_OK);

    /* refuses to overwrite */
    assert_int_equal(mv_crypt_generate_key_file(f->path, err, sizeof err), MV_EEXIST);
    assert_non_null(strstr(err, f->path));
    assert_non_null(strstr(err, "already exists"));
    assert_int_equal(mv_crypt_load_key(f->path, k2, err, sizeof err), MV_OK);
    assert_memory_equal(k1, k2, MV_KEY_LEN);

    /* a second key is different */
    assert_int_equal(unlink(f->path), 0);
    assert_int_equal(mv_crypt_generate_key_file(f->path, err, sizeof err), MV_OK);
    assert_int_equal(mv_crypt_load_key(f->path, k2, err, sizeof err), MV_OK);
    assert_true(memcmp(k1, k2, MV_KEY_LEN) != 0);

    /* a generated key works for sealing */
    unsigned char *blob = NULL, *out = NULL;
    size_t bloblen = 0, outlen = 0;
    seal(k2, "x", "pw", 2, &blob, &bloblen);
    assert_int_equal(mv_crypt_open(k2, "x", blob, bloblen, &out, &outlen, err, sizeof err), MV_OK);
    assert_string_equal((char *)out, "pw");
    free(out);
    free(blob);

    /* unwritable location names the path */
    char bad[400];
    snprintf(bad, sizeof bad, "%s/no-such-dir/master.key", f->dir);
    assert_int_equal(mv_crypt_generate_key_file(bad, err, sizeof err), MV_EIO);
    assert_non_null(strstr(err, bad));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_round_trip),
        cmocka_unit_test(test_binary_plaintext),
        cmocka_unit_test(test_nonce_is_random),
        cmocka_unit_test(test_wrong_key),
        cmocka_unit_test(test_wrong_ad),
        cmocka_unit_test(test_tamper_every_byte),
        cmocka_unit_test(test_truncated_and_extended),
        cmocka_unit_test(test_seal_bad_args),
        cmocka_unit_test(test_wipe),
        cmocka_unit_test_setup_teardown(test_load_hex, setup, teardown),
        cmocka_unit_test_setup_teardown(test_load_raw, setup, teardown),
        cmocka_unit_test_setup_teardown(test_load_bad_contents, setup, teardown),
        cmocka_unit_test_setup_teardown(test_load_bad_mode, setup, teardown),
        cmocka_unit_test_setup_teardown(test_load_missing_and_not_regular, setup, teardown),
        cmocka_unit_test_setup_teardown(test_generate, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

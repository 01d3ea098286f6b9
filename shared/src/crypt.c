/* crypt.c - secrets at rest: AES-256-GCM sealing with the cluster master key (OpenSSL EVP).
 *
 * Design: a sealed blob is "MV1" | 12-byte random nonce | ciphertext | 16-byte tag, with the
 * caller's associated data (AD) authenticated but not stored, so a blob only opens at the place
 * it was sealed for. Nonces are random (RAND_bytes); with 96-bit nonces this is safe for far
 * more seals than a credential store will ever do under one key. Opening verifies the tag
 * before returning anything: a decrypted-but-unauthenticated plaintext is wiped, never handed
 * out. Every buffer that held key material or plaintext is wiped with OPENSSL_cleanse before it
 * is freed or goes out of scope.
 * Key file: 64 hex characters (surrounding whitespace ignored) or exactly 32 raw bytes; it must
 * be a regular file without group/other permissions. Errors name the path. */
#include "mv/crypt.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define MAGIC "MV1"
#define MAGIC_LEN 3
#define NONCE_LEN 12
#define TAG_LEN 16
#define OVERHEAD (MAGIC_LEN + NONCE_LEN + TAG_LEN)
/* EVP takes int lengths; secrets are tiny, so a generous hard bound is fine. */
#define MAX_PLAIN ((size_t)INT_MAX - 64)
#define KEYFILE_MAX 256

static const char corrupt_msg[] =
    "credential cannot be decrypted: wrong master key or damaged data";

void mv_crypt_wipe(void *p, size_t len)
{
    if (p && len) OPENSSL_cleanse(p, len);
}

static mv_err check_ad(const char *ad, int *adlen, char *err, size_t errlen)
{
    size_t n = ad ? strlen(ad) : 0;
    if (n > (size_t)INT_MAX)
        return mv_seterr(err, errlen, MV_ETOOBIG, "associated data is too long");
    *adlen = (int)n;
    return MV_OK;
}

mv_err mv_crypt_seal(const unsigned char key[MV_KEY_LEN], const char *ad, const void *plain,
                     size_t len, unsigned char **out, size_t *outlen, char *err, size_t errlen)
{
    if (!key || !out || !outlen || (!plain && len > 0))
        return mv_seterr(err, errlen, MV_EINVAL, "mv_crypt_seal: NULL argument");
    if (len > MAX_PLAIN)
        return mv_seterr(err, errlen, MV_ETOOBIG, "secret of %zu bytes is too large to seal", len);
    int adlen = 0;
    mv_err rc = check_ad(ad, &adlen, err, errlen);
    if (rc != MV_OK) return rc;

    size_t total = OVERHEAD + len;
    unsigned char *blob = malloc(total);
    EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();
    int n = 0;
    if (!blob || !ctx) {
        rc = mv_seterr(err, errlen, MV_ENOMEM, "out of memory sealing a secret");
        goto out;
    }
    memcpy(blob, MAGIC, MAGIC_LEN);
    unsigned char *nonce = blob + MAGIC_LEN, *ct = nonce + NONCE_LEN, *tag = ct + len;
    if (RAND_bytes(nonce, NONCE_LEN) != 1) {
        rc = mv_seterr(err, errlen, MV_ERR, "cannot get random bytes for a nonce");
        goto out;
    }
    if (EVP_EncryptInit_ex(ctx, EVP_aes_256_gcm(), NULL, NULL, NULL) != 1 ||
        EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_IVLEN, NONCE_LEN, NULL) != 1 ||
        EVP_EncryptInit_ex(ctx, NULL, NULL, key, nonce) != 1 ||
        (adlen > 0 && EVP_EncryptUpdate(ctx, NULL, &n, (const unsigned char *)ad, adlen) != 1) ||
        (len > 0 && EVP_EncryptUpdate(ctx, ct, &n, plain, (int)len) != 1) ||
        EVP_EncryptFinal_ex(ctx, ct + (len > 0 ? n : 0), &n) != 1 ||
        EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_GET_TAG, TAG_LEN, tag) != 1) {
        rc = mv_seterr(err, errlen, MV_ERR, "AES-256-GCM encryption failed");
        goto out;
    }
    *out = blob;
    *outlen = total;
    blob = NULL;
    rc = MV_OK;
out:
    EVP_CIPHER_CTX_free(ctx);
    if (blob) {
        mv_crypt_wipe(blob, total);
        free(blob);
    }
    return rc;
}

mv_err mv_crypt_open(const unsigned char key[MV_KEY_LEN], const char *ad, const void *blob,
                     size_t bloblen, unsigned char **out, size_t *outlen, char *err, size_t errlen)
{
    if (!key || !out || !outlen || (!blob && bloblen > 0))
        return mv_seterr(err, errlen, MV_EINVAL, "mv_crypt_open: NULL argument");
    if (bloblen < OVERHEAD)
        return mv_seterr(err, errlen, MV_ECORRUPT,
                         "sealed secret is too short (%zu bytes, at least %d): damaged data",
                         bloblen, OVERHEAD);
    if (memcmp(blob, MAGIC, MAGIC_LEN) != 0)
        return mv_seterr(err, errlen, MV_ECORRUPT,
                         "sealed secret has an unknown format (no \"" MAGIC "\" header)");
    size_t len = bloblen - OVERHEAD;
    if (len > MAX_PLAIN)
        return mv_seterr(err, errlen, MV_ETOOBIG, "sealed secret of %zu bytes is too large",
                         bloblen);
    int adlen = 0;
    mv_err rc = check_ad(ad, &adlen, err, errlen);
    if (rc != MV_OK) return rc;

    const unsigned char *nonce = (const unsigned char *)blob + MAGIC_LEN;
    const unsigned char *ct = nonce + NONCE_LEN;
    unsigned char tag[TAG_LEN];
    memcpy(tag, ct + len, TAG_LEN); /* SET_TAG takes a non-const pointer */
    unsigned char *plain = malloc(len + 1);
    EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();
    int n = 0;
    if (!plain || !ctx) {
        rc = mv_seterr(err, errlen, MV_ENOMEM, "out of memory opening a secret");
        goto out;
    }
    if (EVP_DecryptInit_ex(ctx, EVP_aes_256_gcm(), NULL, NULL, NULL) != 1 ||
        EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_IVLEN, NONCE_LEN, NULL) != 1 ||
        EVP_DecryptInit_ex(ctx, NULL, NULL, key, nonce) != 1 ||
        (adlen > 0 && EVP_DecryptUpdate(ctx, NULL, &n, (const unsigned char *)ad, adlen) != 1) ||
        (len > 0 && EVP_DecryptUpdate(ctx, plain, &n, ct, (int)len) != 1) ||
        EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_TAG, TAG_LEN, tag) != 1) {
        rc = mv_seterr(err, errlen, MV_ERR, "AES-256-GCM decryption setup failed");
        goto out;
    }
    if (EVP_DecryptFinal_ex(ctx, plain + (len > 0 ? n : 0), &n) != 1) {
        rc = mv_seterr(err, errlen, MV_ECORRUPT, "%s", corrupt_msg);
        goto out;
    }
    plain[len] = '\0';
    *out = plain;
    *outlen = len;
    plain = NULL;
    rc = MV_OK;
out:
    EVP_CIPHER_CTX_free(ctx);
    if (plain) {
        mv_crypt_wipe(plain, len + 1);
        free(plain);
    }
    return rc;
}

static int hexval(unsigned char ch)
{
    if (ch >= '0' && ch <= '9') return ch - '0';
    if (ch >= 'a' && ch <= 'f') return ch - 'a' + 10;
    if (ch >= 'A' && ch <= 'F') return ch - 'A' + 10;
    return -1;
}

static int is_space(unsigned char ch)
{
    return ch == ' ' || ch == '\t' || ch == '\n' || ch == '\r' || ch == '\f' || ch == '\v';
}

/* Interpret the file contents; writes key only on success. */
static mv_err parse_key(const char *path, const unsigned char *buf, size_t n,
                        unsigned char key[MV_KEY_LEN], char *err, size_t errlen)
{
    size_t a = 0, b = n;
    while (a < b && is_space(buf[a]))
        a++;
    while (b > a && is_space(buf[b - 1]))
        b--;
    size_t hexdigits = 0;
    for (size_t i = a; i < b && hexval(buf[i]) >= 0; i++)
        hexdigits++;

    if (b - a == 2 * MV_KEY_LEN && hexdigits == 2 * MV_KEY_LEN) {
        for (size_t i = 0; i < MV_KEY_LEN; i++)
            key[i] = (unsigned char)(hexval(buf[a + 2 * i]) << 4 | hexval(buf[a + 2 * i + 1]));
    } else if (n == MV_KEY_LEN && hexdigits == MV_KEY_LEN) {
        /* 32 hex characters is almost certainly `openssl rand -hex 16`: a 128-bit key written
         * as text, not 32 random bytes. */
        return mv_seterr(err, errlen, MV_EINVAL,
                         "master key file %s holds 32 hex characters (16 bytes); a key needs 64 "
                         "hex characters (openssl rand -hex 32)",
                         path);
    } else if (n == MV_KEY_LEN) {
        memcpy(key, buf, MV_KEY_LEN);
    } else {
        return mv_seterr(err, errlen, MV_EINVAL,
                         "master key file %s must hold 64 hex characters or exactly 32 raw bytes "
                         "(found %zu bytes)",
                         path, n);
    }
    unsigned char acc = 0;
    for (size_t i = 0; i < MV_KEY_LEN; i++)
        acc |= key[i];
    if (acc == 0)
        return mv_seterr(err, errlen, MV_EINVAL, "master key file %s holds an all-zero key", path);
    return MV_OK;
}

mv_err mv_crypt_load_key(const char *path, unsigned char key[MV_KEY_LEN], char *err, size_t errlen)
{
    if (!path || !key) return mv_seterr(err, errlen, MV_EINVAL, "mv_crypt_load_key: NULL argument");
    if (!path[0]) return mv_seterr(err, errlen, MV_EINVAL, "master key file is not configured");
    unsigned char buf[KEYFILE_MAX + 1];
    unsigned char tmp[MV_KEY_LEN];
    size_t n = 0;
    mv_err rc;
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
    if (fd < 0) {
        int e = errno;
        return mv_seterr(err, errlen, e == ENOENT ? MV_ENOTFOUND : MV_EIO,
                         "cannot open master key file %s: %s", path, strerror(e));
    }
    struct stat st;
    if (fstat(fd, &st) != 0) {
        rc = mv_seterr(err, errlen, MV_EIO, "cannot stat master key file %s: %s", path,
                       strerror(errno));
        goto out;
    }
    if (!S_ISREG(st.st_mode)) {
        rc = mv_seterr(err, errlen, MV_EINVAL, "master key file %s is not a regular file", path);
        goto out;
    }
    if (st.st_mode & 077) {
        rc = mv_seterr(err, errlen, MV_EINVAL,
                       "master key file %s is readable by group/others; chmod 600 it", path);
        goto out;
    }
    for (;;) {
        ssize_t r = read(fd, buf + n, sizeof buf - n);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) {
            rc = mv_seterr(err, errlen, MV_EIO, "cannot read master key file %s: %s", path,
                           strerror(errno));
            goto out;
        }
        if (r == 0) break;
        n += (size_t)r;
        if (n > KEYFILE_MAX) {
            rc = mv_seterr(err, errlen, MV_EINVAL,
                           "master key file %s is too large to be a key (over %d bytes)", path,
                           KEYFILE_MAX);
            goto out;
        }
    }
    rc = parse_key(path, buf, n, tmp, err, errlen);
    if (rc == MV_OK) memcpy(key, tmp, MV_KEY_LEN);
out:
    mv_crypt_wipe(buf, sizeof buf);
    mv_crypt_wipe(tmp, sizeof tmp);
    close(fd);
    return rc;
}

static mv_err write_all(int fd, const char *p, size_t n)
{
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) return MV_EIO;
        p += w;
        n -= (size_t)w;
    }
    return MV_OK;
}

/* Make the new directory entry durable too: losing the key loses every credential. */
static int fsync_parent(const char *path)
{
    char dir[4096];
    const char *slash = strrchr(path, '/');
    if (!slash)
        snprintf(dir, sizeof dir, ".");
    else if (slash == path)
        snprintf(dir, sizeof dir, "/");
    else if ((size_t)(slash - path) < sizeof dir)
        snprintf(dir, sizeof dir, "%.*s", (int)(slash - path), path);
    else
        return 0; /* absurdly long path: the file itself is synced; skip */
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) return -1;
    int r = fsync(fd);
    if (r != 0 && (errno == EINVAL || errno == EROFS)) r = 0; /* fs without directory fsync */
    int e = errno;
    close(fd);
    errno = e;
    return r;
}

mv_err mv_crypt_generate_key_file(const char *path, char *err, size_t errlen)
{
    if (!path || !path[0])
        return mv_seterr(err, errlen, MV_EINVAL, "mv_crypt_generate_key_file: no path");
    unsigned char key[MV_KEY_LEN];
    char text[2 * MV_KEY_LEN + 2];
    mv_err rc;
    if (RAND_bytes(key, sizeof key) != 1)
        return mv_seterr(err, errlen, MV_ERR, "cannot get random bytes for a master key");
    mv_hex(key, sizeof key, text);
    text[2 * MV_KEY_LEN] = '\n';
    text[2 * MV_KEY_LEN + 1] = '\0';
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOCTTY, 0600);
    if (fd < 0) {
        int e = errno;
        if (e == EEXIST)
            rc = mv_seterr(err, errlen, MV_EEXIST,
                           "master key file %s already exists; refusing to overwrite it", path);
        else
            rc = mv_seterr(err, errlen, MV_EIO, "cannot create master key file %s: %s", path,
                           strerror(e));
        goto out;
    }
    if (write_all(fd, text, 2 * MV_KEY_LEN + 1) != MV_OK || fsync(fd) != 0) {
        rc = mv_seterr(err, errlen, MV_EIO, "cannot write master key file %s: %s", path,
                       strerror(errno));
        close(fd);
        unlink(path);
        goto out;
    }
    if (close(fd) != 0) {
        rc = mv_seterr(err, errlen, MV_EIO, "cannot write master key file %s: %s", path,
                       strerror(errno));
        unlink(path);
        goto out;
    }
    if (fsync_parent(path) != 0) {
        rc = mv_seterr(err, errlen, MV_EIO,
                       "master key file %s was written but its directory cannot be synced: %s",
                       path, strerror(errno));
        goto out;
    }
    rc = MV_OK;
out:
    mv_crypt_wipe(key, sizeof key);
    mv_crypt_wipe(text, sizeof text);
    return rc;
}

/* s3.c - S3 client over libcurl easy handles, SigV4 signing by libcurl, answers parsed with
 * libxml2.
 *
 * Why this shape
 * - libcurl 7.88 signs (CURLOPT_AWS_SIGV4 "aws:amz:REGION:s3") but does not canonicalise: the
 *   URL path and query are signed as given. So this file writes them in canonical form itself:
 *   each key segment percent-encoded (RFC 3986 unreserved kept, '/' kept), query parameters
 *   sorted by name, names and values encoded, "name=" for valueless subresources ("uploads=").
 *   CURLOPT_PATH_AS_IS keeps curl from touching the path.
 * - curl signs the payload hash given in an x-amz-content-sha256 header; this file always sends
 *   the real SHA-256 of the body (memory, or read from the fd in a first pass), and
 *   Content-MD5 with every body (S3 wants it for Object Lock writes; the store checks it).
 * - Every call borrows an easy handle from a small pool (curl_easy_reset keeps the
 *   connections), sets every option afresh, and gives the handle back: thread-safe, keep-alive.
 * - The secret key lives in the mv_s3 (cleansed on close) and in curl's copy for the time of
 *   a request; it is never formatted into a message or a log line.
 * - Answers are untrusted: 2xx XML is capped at MV_S3_XML_MAX, error bodies at
 *   MV_S3_ERRBODY_MAX (the rest dropped), objects are streamed to the caller under its bound.
 *   XML is parsed with XML_PARSE_NONET, without NOENT, and a DOCTYPE stops the parser before its
 *   internal subset (so no entity is ever declared). Elements are matched by local name, so
 *   stores that answer with or without the S3 namespace both parse. */
#include "mv/s3.h"
#include "mv/xmlsafe.h"
#include "mv/http.h"
#include "mv/log.h"

#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include <curl/curl.h>
#include <libxml/parser.h>
#include <libxml/tree.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>

#define USER_AGENT "mailvault/0.1"
#define POOL_MAX 8
#define BACKOFF_FIRST_MS 200
#define BACKOFF_CAP_MS 5000
#define RETRY_AFTER_CAP_MS 20000
#define IO_CHUNK (64u * 1024)
#define EXPECT_MIN (1u << 20) /* bodies from this size wait up to 1 s for "100 Continue" */
#define TARGET_KEY_MAX 160    /* bytes of a key quoted in a message */
#define SERVER_MSG_MAX 200    /* bytes of the server's Message quoted */
#define EMPTY_SHA256 "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
#define S3_NS "http://s3.amazonaws.com/doc/2006-03-01/"

struct mv_s3 {
    mv_s3_config c;
    char base[512];  /* URL up to the bucket: "http://h:p/bucket" or "http://bucket.h:p" */
    char sigv4[128]; /* "aws:amz:REGION:s3" */
    pthread_mutex_t mu;
    CURL *idle[POOL_MAX];
    int nidle;
};

/* ------------------------------------------------------------------ small helpers */

static pthread_once_t init_once = PTHREAD_ONCE_INIT;
static CURLcode curl_init_rc = CURLE_OK;

static void lib_init(void)
{
    curl_init_rc = curl_global_init(CURL_GLOBAL_DEFAULT);
    mv_xml_init();
}

typedef struct sbuf {
    char *p;
    size_t n, cap;
    int oom;
} sbuf;

static void sb_addn(sbuf *b, const char *s, size_t n)
{
    if (b->oom) return;
    if (b->n + n + 1 > b->cap) {
        size_t nc = b->cap ? b->cap : 256;
        while (nc < b->n + n + 1)
            nc *= 2;
        char *np = realloc(b->p, nc);
        if (!np) {
            b->oom = 1;
            return;
        }
        b->p = np;
        b->cap = nc;
    }
    memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = '\0';
}

static void sb_add(sbuf *b, const char *s)
{
    sb_addn(b, s, strlen(s));
}

static void sb_u64(sbuf *b, uint64_t v)
{
    char t[24];
    snprintf(t, sizeof t, "%" PRIu64, v);
    sb_add(b, t);
}

/* RFC 3986 percent-encoding as SigV4 wants it: unreserved bytes kept, '/' kept if asked. */
static void sb_enc(sbuf *b, const char *s, int keep_slash)
{
    static const char hex[] = "0123456789ABCDEF";
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        unsigned char ch = *p;
        if ((ch >= 'A' && ch <= 'Z') || (ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') ||
            ch == '-' || ch == '.' || ch == '_' || ch == '~' || (keep_slash && ch == '/')) {
            char c1 = (char)ch;
            sb_addn(b, &c1, 1);
        } else {
            char e[3] = {'%', hex[ch >> 4], hex[ch & 15]};
            sb_addn(b, e, 3);
        }
    }
}

static void sb_xml(sbuf *b, const char *s)
{
    for (; *s; s++) {
        switch (*s) {
        case '&':
            sb_add(b, "&amp;");
            break;
        case '<':
            sb_add(b, "&lt;");
            break;
        case '>':
            sb_add(b, "&gt;");
            break;
        case '"':
            sb_add(b, "&quot;");
            break;
        case '\'':
            sb_add(b, "&apos;");
            break;
        default:
            sb_addn(b, s, 1);
            break;
        }
    }
}

static void sb_free(sbuf *b)
{
    free(b->p);
    b->p = NULL;
    b->n = b->cap = 0;
}

static void copy_str(char *dst, size_t n, const char *src)
{
    if (!n) return;
    size_t l = strlen(src);
    if (l >= n) l = n - 1;
    memcpy(dst, src, l);
    dst[l] = '\0';
}

static void sleep_ms(int64_t ms)
{
    if (ms <= 0) return;
    struct timespec ts = {(time_t)(ms / 1000), (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) == -1 && errno == EINTR) {}
}

static uint32_t rand32(void)
{
    uint32_t v = 0;
    if (RAND_bytes((unsigned char *)&v, sizeof v) != 1) v = (uint32_t)mv_mono_ms() * 2654435761u;
    return v;
}

/* "2026-12-01T22:25:28Z" */
static void fmt_time(int64_t t, char out[32])
{
    time_t tt = (time_t)t;
    struct tm tm;
    if (!gmtime_r(&tt, &tm)) {
        copy_str(out, 32, "1970-01-01T00:00:00Z");
        return;
    }
    strftime(out, 32, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

static int digits(const char *s, int n, int *out)
{
    int v = 0;
    for (int i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9') return -1;
        v = v * 10 + (s[i] - '0');
    }
    *out = v;
    return 0;
}

int64_t mv_s3__parse_time(const char *s)
{
    if (!s) return -1;
    while (*s == ' ' || *s == '\t')
        s++;
    int Y, M, D, h, m, sec;
    if (strlen(s) < 19 || digits(s, 4, &Y) || s[4] != '-' || digits(s + 5, 2, &M) || s[7] != '-' ||
        digits(s + 8, 2, &D) || (s[10] != 'T' && s[10] != 't' && s[10] != ' ') ||
        digits(s + 11, 2, &h) || s[13] != ':' || digits(s + 14, 2, &m) || s[16] != ':' ||
        digits(s + 17, 2, &sec))
        return -1;
    if (Y < 1970 || M < 1 || M > 12 || D < 1 || D > 31 || h > 23 || m > 59 || sec > 60) return -1;
    const char *p = s + 19;
    if (*p == '.') {
        p++;
        if (*p < '0' || *p > '9') return -1;
        while (*p >= '0' && *p <= '9')
            p++;
    }
    int64_t off = 0;
    if (*p == 'Z' || *p == 'z') {
        p++;
    } else if (*p == '+' || *p == '-') {
        int oh, om;
        if (digits(p + 1, 2, &oh) || p[3] != ':' || digits(p + 4, 2, &om) || oh > 23 || om > 59)
            return -1;
        off = (int64_t)(oh * 3600 + om * 60) * (*p == '+' ? 1 : -1);
        p += 6;
    } else {
        return -1;
    }
    while (*p == ' ' || *p == '\t' || *p == '\r' || *p == '\n')
        p++;
    if (*p) return -1;
    struct tm tm = {0};
    tm.tm_year = Y - 1900;
    tm.tm_mon = M - 1;
    tm.tm_mday = D;
    tm.tm_hour = h;
    tm.tm_min = m;
    tm.tm_sec = sec;
    time_t t = timegm(&tm);
    if (t == (time_t)-1) return -1;
    return (int64_t)t - off;
}

static int parse_u64(const char *s, uint64_t *out)
{
    uint64_t v = 0;
    if (!s || !*s) return -1;
    for (; *s; s++) {
        if (*s < '0' || *s > '9') return -1;
        if (v > (UINT64_MAX - 9) / 10) return -1;
        v = v * 10 + (uint64_t)(*s - '0');
    }
    *out = v;
    return 0;
}

/* ------------------------------------------------------------------ validation */

static int bucket_valid(const char *b)
{
    size_t n = strlen(b);
    if (n < 3 || n > 63) return 0;
    for (size_t i = 0; i < n; i++) {
        char ch = b[i];
        if (!((ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') || ch == '.' || ch == '-'))
            return 0;
        if (i && (ch == '.' || ch == '-') && (b[i - 1] == '.' || b[i - 1] == '-') &&
            !(ch == '-' && b[i - 1] == '-'))
            return 0; /* "..", ".-", "-." */
    }
    if (b[0] == '.' || b[0] == '-' || b[n - 1] == '.' || b[n - 1] == '-') return 0;
    int dots = 0, alldigits = 1;
    for (size_t i = 0; i < n; i++) {
        if (b[i] == '.')
            dots++;
        else if (b[i] < '0' || b[i] > '9')
            alldigits = 0;
    }
    if (dots == 3 && alldigits) return 0; /* looks like an IPv4 address */
    if (!strncmp(b, "xn--", 4)) return 0;
    return 1;
}

static mv_err key_check(const char *key, char *err, size_t errlen)
{
    if (!key || !*key) return mv_seterr(err, errlen, MV_EINVAL, "s3: empty key");
    size_t n = strlen(key);
    if (n > MV_S3_KEY_MAX)
        return mv_seterr(err, errlen, MV_EINVAL, "s3: key longer than %d bytes", MV_S3_KEY_MAX);
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)key[i];
        if (ch < 0x20 || ch == 0x7f)
            return mv_seterr(err, errlen, MV_EINVAL, "s3: key has a control byte at %zu", i);
    }
    const char *seg = key;
    for (;;) {
        const char *sl = strchr(seg, '/');
        size_t sn = sl ? (size_t)(sl - seg) : strlen(seg);
        if ((sn == 0 && (sl || seg != key)) || (sn == 1 && seg[0] == '.') ||
            (sn == 2 && seg[0] == '.' && seg[1] == '.'))
            return mv_seterr(err, errlen, MV_EINVAL,
                             "s3: key has an empty, \".\" or \"..\" path segment");
        if (!sl) break;
        seg = sl + 1;
    }
    return MV_OK;
}

static mv_err opts_check(const mv_s3_put_opts *o, char *err, size_t errlen)
{
    if (!o) return MV_OK;
    if (o->lock_mode && *o->lock_mode) {
        if (strcmp(o->lock_mode, "GOVERNANCE") && strcmp(o->lock_mode, "COMPLIANCE"))
            return mv_seterr(err, errlen, MV_EINVAL,
                             "s3: lock_mode must be GOVERNANCE or COMPLIANCE");
        if (o->retain_until <= 0)
            return mv_seterr(err, errlen, MV_EINVAL, "s3: lock_mode needs retain_until");
    } else if (o->retain_until) {
        return mv_seterr(err, errlen, MV_EINVAL, "s3: retain_until needs lock_mode");
    }
    return MV_OK;
}

/* ------------------------------------------------------------------ hashing */

typedef struct digests {
    char sha256[65];
    char md5[32]; /* base64 */
} digests;

static mv_err digest_init(EVP_MD_CTX **sha, EVP_MD_CTX **md5)
{
    *sha = EVP_MD_CTX_new();
    *md5 = EVP_MD_CTX_new();
    if (!*sha || !*md5 || EVP_DigestInit_ex(*sha, EVP_sha256(), NULL) != 1 ||
        EVP_DigestInit_ex(*md5, EVP_md5(), NULL) != 1)
        return MV_ENOMEM;
    return MV_OK;
}

static void digest_final(EVP_MD_CTX *sha, EVP_MD_CTX *md5, digests *d)
{
    unsigned char h[EVP_MAX_MD_SIZE];
    unsigned int hl = 0;
    EVP_DigestFinal_ex(sha, h, &hl);
    mv_hex(h, hl, d->sha256);
    EVP_DigestFinal_ex(md5, h, &hl);
    EVP_EncodeBlock((unsigned char *)d->md5, h, (int)hl);
}

static mv_err digest_mem(const void *p, size_t n, digests *d, char *err, size_t errlen)
{
    EVP_MD_CTX *sha, *md5;
    mv_err e = digest_init(&sha, &md5);
    if (!e && (EVP_DigestUpdate(sha, p, n) != 1 || EVP_DigestUpdate(md5, p, n) != 1)) e = MV_ERR;
    if (!e) digest_final(sha, md5, d);
    EVP_MD_CTX_free(sha);
    EVP_MD_CTX_free(md5);
    return e ? mv_seterr(err, errlen, e, "s3: hashing the body failed") : MV_OK;
}

static mv_err pread_full(int fd, void *buf, size_t n, uint64_t off, const char *what, char *err,
                         size_t errlen)
{
    size_t got = 0;
    while (got < n) {
        ssize_t r = pread(fd, (char *)buf + got, n - got, (off_t)(off + got));
        if (r < 0 && errno == EINTR) continue;
        if (r < 0)
            return mv_seterr(err, errlen, MV_EIO, "%s: read failed at offset %" PRIu64 ": %s", what,
                             off + got, strerror(errno));
        if (r == 0)
            return mv_seterr(err, errlen, MV_EIO,
                             "%s: the file ends at offset %" PRIu64 " (shorter than expected)",
                             what, off + got);
        got += (size_t)r;
    }
    return MV_OK;
}

static mv_err digest_fd(int fd, uint64_t off, uint64_t len, digests *d, const char *what, char *err,
                        size_t errlen)
{
    EVP_MD_CTX *sha, *md5;
    unsigned char *buf = malloc(IO_CHUNK);
    mv_err e = digest_init(&sha, &md5);
    if (!buf) e = MV_ENOMEM;
    if (e) {
        mv_seterr(err, errlen, e, "out of memory");
    } else {
        uint64_t done = 0;
        while (!e && done < len) {
            size_t n = len - done < IO_CHUNK ? (size_t)(len - done) : IO_CHUNK;
            e = pread_full(fd, buf, n, off + done, what, err, errlen);
            if (!e && (EVP_DigestUpdate(sha, buf, n) != 1 || EVP_DigestUpdate(md5, buf, n) != 1))
                e = mv_seterr(err, errlen, MV_ERR, "%s: hashing failed", what);
            done += n;
        }
        if (!e) digest_final(sha, md5, d);
    }
    free(buf);
    EVP_MD_CTX_free(sha);
    EVP_MD_CTX_free(md5);
    return e;
}

/* ------------------------------------------------------------------ XML */

static mv_err load_xml(const char *body, size_t len, const char *what, xmlDoc **out, char *err,
                       size_t errlen)
{
    pthread_once(&init_once, lib_init);
    return mv_xml_load(body, len, MV_S3_XML_MAX, 0, what, out, err, errlen);
}

static int is_el(const xmlNode *n, const char *name)
{
    return n && n->type == XML_ELEMENT_NODE && !strcmp((const char *)n->name, name);
}

static xmlNode *child_el(xmlNode *n, const char *name)
{
    for (xmlNode *c = n ? n->children : NULL; c; c = c->next)
        if (is_el(c, name)) return c;
    return NULL;
}

/* Text of the first child element name of n, malloc'd (xmlFree); NULL when absent. */
static char *child_text(xmlNode *n, const char *name)
{
    xmlNode *c = child_el(n, name);
    return c ? (char *)xmlNodeGetContent(c) : NULL;
}

/* Copy child text into out; 0 ok (absent -> ""), -1 longer than outlen - 1 or out of memory. */
static int child_copy(xmlNode *n, const char *name, char *out, size_t outlen)
{
    out[0] = '\0';
    xmlNode *c = child_el(n, name);
    if (!c) return 0;
    char *t = (char *)xmlNodeGetContent(c);
    if (!t) return -1;
    size_t l = strlen(t);
    int rc = l < outlen ? 0 : -1;
    if (!rc) memcpy(out, t, l + 1);
    xmlFree(t);
    return rc;
}

int mv_s3__parse_error(const char *xml, size_t len, char *code, size_t codelen, char *msg,
                       size_t msglen)
{
    char e[MV_ERRLEN];
    xmlDoc *d = NULL;
    if (codelen) code[0] = '\0';
    if (msglen) msg[0] = '\0';
    if (load_xml(xml, len, "s3 error", &d, e, sizeof e)) return -1;
    xmlNode *root = xmlDocGetRootElement(d);
    int rc = -1;
    if (is_el(root, "Error")) {
        char *c = child_text(root, "Code"), *m = child_text(root, "Message");
        if (c && codelen) copy_str(code, codelen, c);
        if (m && msglen) copy_str(msg, msglen, m);
        xmlFree(c);
        xmlFree(m);
        if (codelen) mv_sanitize(code);
        if (msglen) mv_sanitize(msg);
        rc = 0;
    }
    xmlFreeDoc(d);
    return rc;
}

/* One listing entry: fills it (strings owned by the caller's xmlFree list). */
typedef struct item_bufs {
    char *key, *vid, *uid, *size, *latest, *initiated;
} item_bufs;

static void item_bufs_free(item_bufs *b)
{
    xmlFree(b->key);
    xmlFree(b->vid);
    xmlFree(b->uid);
    xmlFree(b->size);
    xmlFree(b->latest);
    xmlFree(b->initiated);
    memset(b, 0, sizeof *b);
}

static mv_err item_of(xmlNode *n, int kind, mv_s3__item *it, item_bufs *b, char *err, size_t errlen)
{
    memset(it, 0, sizeof *it);
    memset(b, 0, sizeof *b);
    const char *what = kind == MV_S3__LIST_OBJECTS    ? "ListObjectsV2"
                       : kind == MV_S3__LIST_VERSIONS ? "ListObjectVersions"
                                                      : "ListMultipartUploads";
    b->key = child_text(n, "Key");
    if (!b->key || !b->key[0] || strlen(b->key) > MV_S3_KEY_MAX)
        return mv_seterr(err, errlen, MV_EPROTO, "%s: an entry without a valid Key", what);
    it->key = b->key;
    if (kind == MV_S3__LIST_OBJECTS || (kind == MV_S3__LIST_VERSIONS && is_el(n, "Version"))) {
        b->size = child_text(n, "Size");
        if (!b->size || parse_u64(b->size, &it->size))
            return mv_seterr(err, errlen, MV_EPROTO, "%s: an entry without a valid Size", what);
    }
    if (kind == MV_S3__LIST_VERSIONS) {
        it->is_delete_marker = is_el(n, "DeleteMarker");
        b->vid = child_text(n, "VersionId");
        if (!b->vid || !b->vid[0] || strlen(b->vid) > 1024)
            return mv_seterr(err, errlen, MV_EPROTO, "%s: an entry without a valid VersionId",
                             what);
        it->version_id = b->vid;
        b->latest = child_text(n, "IsLatest");
        it->is_latest = b->latest && !strcmp(b->latest, "true");
    }
    if (kind == MV_S3__LIST_UPLOADS) {
        b->uid = child_text(n, "UploadId");
        if (!b->uid || !b->uid[0] || strlen(b->uid) > 1024)
            return mv_seterr(err, errlen, MV_EPROTO, "%s: an upload without a valid UploadId",
                             what);
        it->upload_id = b->uid;
        b->initiated = child_text(n, "Initiated");
        it->initiated = b->initiated ? mv_s3__parse_time(b->initiated) : -1;
        if (it->initiated < 0)
            return mv_seterr(err, errlen, MV_EPROTO, "%s: an upload without a valid Initiated",
                             what);
    }
    return MV_OK;
}

static int entry_node(const xmlNode *n, int kind)
{
    switch (kind) {
    case MV_S3__LIST_OBJECTS:
        return is_el(n, "Contents");
    case MV_S3__LIST_VERSIONS:
        return is_el(n, "Version") || is_el(n, "DeleteMarker");
    default:
        return is_el(n, "Upload");
    }
}

mv_err mv_s3__parse_list(const char *xml, size_t len, int kind, mv_s3__page *pg,
                         int (*cb)(void *ud, const mv_s3__item *it), void *ud, char *err,
                         size_t errlen)
{
    const char *what, *rootname;
    switch (kind) {
    case MV_S3__LIST_OBJECTS:
        what = "ListObjectsV2";
        rootname = "ListBucketResult";
        break;
    case MV_S3__LIST_VERSIONS:
        what = "ListObjectVersions";
        rootname = "ListVersionsResult";
        break;
    case MV_S3__LIST_UPLOADS:
        what = "ListMultipartUploads";
        rootname = "ListMultipartUploadsResult";
        break;
    default:
        return mv_seterr(err, errlen, MV_EINVAL, "s3: unknown listing kind %d", kind);
    }
    memset(pg, 0, sizeof *pg);
    xmlDoc *d = NULL;
    mv_err e = load_xml(xml, len, what, &d, err, errlen);
    if (e) return e;
    xmlNode *root = xmlDocGetRootElement(d);
    if (!is_el(root, rootname)) {
        e = mv_seterr(err, errlen, MV_EPROTO, "%s: the answer is not a %s document", what,
                      rootname);
        goto out;
    }
    char trunc[16];
    if (child_copy(root, "IsTruncated", trunc, sizeof trunc)) {
        e = mv_seterr(err, errlen, MV_EPROTO, "%s: bad IsTruncated", what);
        goto out;
    }
    pg->truncated = !strcmp(trunc, "true");
    if (child_copy(root, "NextContinuationToken", pg->next_token, sizeof pg->next_token) ||
        child_copy(root, "NextKeyMarker", pg->next_key, sizeof pg->next_key) ||
        child_copy(root, kind == MV_S3__LIST_UPLOADS ? "NextUploadIdMarker" : "NextVersionIdMarker",
                   pg->next_id, sizeof pg->next_id)) {
        e = mv_seterr(err, errlen, MV_EPROTO, "%s: a continuation marker is too long", what);
        goto out;
    }
    /* pass 1 checks every entry, pass 2 delivers: a bad page delivers nothing */
    for (int pass = 0; pass < 2 && !e; pass++) {
        for (xmlNode *n = root->children; n && !e; n = n->next) {
            if (!entry_node(n, kind)) continue;
            mv_s3__item it;
            item_bufs b;
            e = item_of(n, kind, &it, &b, err, errlen);
            if (!e && pass == 1 && cb && cb(ud, &it))
                e = mv_seterr(err, errlen, MV_ECANCEL, "%s: stopped by the callback", what);
            item_bufs_free(&b);
        }
    }
out:
    xmlFreeDoc(d);
    return e;
}

/* ------------------------------------------------------------------ the exchange */

enum { AB_NONE = 0, AB_SINK_BIG, AB_CANCEL, AB_XML_BIG, AB_NOMEM, AB_READ };

typedef struct s3req {
    const char *op;     /* names the request in messages: "PUT", "UploadPart", ... */
    const char *method; /* GET, HEAD, PUT, POST, DELETE */
    const char *key;    /* NULL: the bucket */
    const char *query;  /* canonical query or NULL */
    const char *hdrs[8];
    int nhdrs;
    /* body: memory, or fd_len bytes of fd from fd_off */
    const void *body;
    uint64_t bodylen;
    int use_fd, fd;
    uint64_t fd_off;
    const char *content_type;
    /* 2xx answer: sink (objects) or buffered XML (xml = 1), else dropped */
    mv_s3_sink_fn sink;
    void *ud;
    uint64_t max;
    int xml;
    int error_in_200; /* CompleteMultipartUpload: a 200 may carry an <Error> */
} s3req;

typedef struct xfer {
    const s3req *r;
    uint64_t pos; /* body bytes sent */
    int abort_reason;
    int read_errno;
    long status;
    char *buf; /* 2xx XML or an error body */
    size_t blen, bcap;
    uint64_t sunk;      /* bytes passed to the sink in this attempt */
    uint64_t sunk_ever; /* ... in any attempt */
    /* headers of the last response */
    int64_t clen; /* -1 unknown */
    char etag[80], version_id[128], lock_mode[16], retain[64], legal[8];
    int64_t retry_after_ms;
    /* the S3 error of the final answer ("" if none) */
    char code[64], msg[256];
    char errbuf[CURL_ERROR_SIZE];
} xfer;

static void xfer_reset(xfer *x)
{
    x->pos = 0;
    x->abort_reason = AB_NONE;
    x->read_errno = 0;
    x->status = 0;
    x->blen = 0;
    x->sunk = 0;
    x->clen = -1;
    x->etag[0] = x->version_id[0] = x->lock_mode[0] = x->retain[0] = x->legal[0] = '\0';
    x->retry_after_ms = 0;
    x->code[0] = x->msg[0] = '\0';
    x->errbuf[0] = '\0';
}

static void xfer_free(xfer *x)
{
    free(x->buf);
    x->buf = NULL;
    x->blen = x->bcap = 0;
}

static int buf_put(xfer *x, const char *p, size_t n)
{
    if (x->blen + n + 1 > x->bcap) {
        size_t nc = x->bcap ? x->bcap : 4096;
        while (nc < x->blen + n + 1)
            nc *= 2;
        char *np = realloc(x->buf, nc);
        if (!np) return -1;
        x->buf = np;
        x->bcap = nc;
    }
    memcpy(x->buf + x->blen, p, n);
    x->blen += n;
    x->buf[x->blen] = '\0';
    return 0;
}

static size_t on_read(char *p, size_t sz, size_t n, void *ud)
{
    xfer *x = ud;
    const s3req *r = x->r;
    size_t want = sz * n;
    uint64_t left = r->bodylen - x->pos;
    if (want > left) want = (size_t)left;
    if (!want) return 0;
    if (r->use_fd) {
        ssize_t got;
        do {
            got = pread(r->fd, p, want, (off_t)(r->fd_off + x->pos));
        } while (got < 0 && errno == EINTR);
        if (got <= 0) {
            x->read_errno = got < 0 ? errno : 0;
            x->abort_reason = AB_READ;
            return CURL_READFUNC_ABORT;
        }
        want = (size_t)got;
    } else {
        memcpy(p, (const char *)r->body + x->pos, want);
    }
    x->pos += want;
    return want;
}

static size_t on_write(char *p, size_t sz, size_t n, void *ud)
{
    xfer *x = ud;
    const s3req *r = x->r;
    size_t len = sz * n;
    int ok = x->status >= 200 && x->status < 300;
    if (ok && r->sink) {
        if (x->sunk == 0 && x->clen >= 0 && (uint64_t)x->clen > r->max) {
            x->abort_reason = AB_SINK_BIG;
            return 0;
        }
        if (len > r->max - x->sunk) {
            x->abort_reason = AB_SINK_BIG;
            return 0;
        }
        x->sunk += len;
        x->sunk_ever += len;
        if (len && r->sink(r->ud, p, len)) {
            x->abort_reason = AB_CANCEL;
            return 0;
        }
        return len;
    }
    if (ok && !r->xml && !r->error_in_200) return len; /* an answer nobody reads */
    size_t cap = ok ? MV_S3_XML_MAX : MV_S3_ERRBODY_MAX;
    if (len > cap - x->blen) {
        if (!ok) return len; /* error bodies: keep the head */
        x->abort_reason = AB_XML_BIG;
        return 0;
    }
    if (buf_put(x, p, len)) {
        x->abort_reason = AB_NOMEM;
        return 0;
    }
    return len;
}

static void hdr_value(const char *p, size_t len, size_t namelen, char *out, size_t outlen)
{
    const char *v = p + namelen;
    const char *end = p + len;
    while (v < end && (*v == ' ' || *v == '\t'))
        v++;
    while (end > v && (end[-1] == '\r' || end[-1] == '\n' || end[-1] == ' ' || end[-1] == '\t'))
        end--;
    size_t n = (size_t)(end - v);
    if (n >= outlen) n = outlen - 1;
    memcpy(out, v, n);
    out[n] = '\0';
    mv_sanitize(out);
}

#define HDR_IS(name) (len > sizeof(name) - 1 && !strncasecmp(p, name, sizeof(name) - 1))

static size_t on_header(char *p, size_t sz, size_t n, void *ud)
{
    xfer *x = ud;
    size_t len = sz * n;
    if (len >= 5 && !strncmp(p, "HTTP/", 5)) { /* a new response: forget the last one's */
        const char *sp = memchr(p, ' ', len);
        x->status = 0;
        if (sp)
            for (const char *q = sp + 1; q < p + len && *q >= '0' && *q <= '9'; q++)
                x->status = x->status * 10 + (*q - '0');
        x->clen = -1;
        x->etag[0] = x->version_id[0] = x->lock_mode[0] = x->retain[0] = x->legal[0] = '\0';
        x->retry_after_ms = 0;
        return len;
    }
    char v[128];
    if (HDR_IS("Content-Length:")) {
        hdr_value(p, len, 15, v, sizeof v);
        uint64_t cl;
        x->clen = parse_u64(v, &cl) || cl > INT64_MAX ? -1 : (int64_t)cl;
    } else if (HDR_IS("ETag:")) {
        hdr_value(p, len, 5, x->etag, sizeof x->etag);
    } else if (HDR_IS("x-amz-version-id:")) {
        hdr_value(p, len, 17, x->version_id, sizeof x->version_id);
    } else if (HDR_IS("x-amz-object-lock-mode:")) {
        hdr_value(p, len, 23, x->lock_mode, sizeof x->lock_mode);
    } else if (HDR_IS("x-amz-object-lock-retain-until-date:")) {
        hdr_value(p, len, 36, x->retain, sizeof x->retain);
    } else if (HDR_IS("x-amz-object-lock-legal-hold:")) {
        hdr_value(p, len, 29, x->legal, sizeof x->legal);
    } else if (HDR_IS("Retry-After:")) {
        hdr_value(p, len, 12, v, sizeof v);
        int64_t ms = mv_http__retry_after(v, mv_now_ms());
        x->retry_after_ms = ms > 0 ? ms : 0;
    }
    return len;
}

/* ------------------------------------------------------------------ handle pool */

static CURL *pool_get(mv_s3 *s)
{
    CURL *c = NULL;
    pthread_mutex_lock(&s->mu);
    if (s->nidle > 0) c = s->idle[--s->nidle];
    pthread_mutex_unlock(&s->mu);
    if (c) {
        curl_easy_reset(c); /* options only: live connections stay in the handle */
        return c;
    }
    return curl_easy_init();
}

static void pool_put(mv_s3 *s, CURL *c)
{
    curl_easy_setopt(c, CURLOPT_PASSWORD, ""); /* drop curl's copy of the secret now */
    pthread_mutex_lock(&s->mu);
    if (s->nidle < POOL_MAX) {
        s->idle[s->nidle++] = c;
        c = NULL;
    }
    pthread_mutex_unlock(&s->mu);
    if (c) curl_easy_cleanup(c);
}

/* ------------------------------------------------------------------ errors */

static void target_of(const mv_s3 *s, const char *key, char *out, size_t outlen)
{
    if (!key) {
        snprintf(out, outlen, "%s", s->c.bucket);
        return;
    }
    size_t kl = strlen(key);
    if (kl > TARGET_KEY_MAX)
        snprintf(out, outlen, "%s/%.*s...", s->c.bucket, TARGET_KEY_MAX, key);
    else
        snprintf(out, outlen, "%s/%s", s->c.bucket, key);
    mv_sanitize(out);
}

static int code_is(const char *code, const char *const *list)
{
    for (; *list; list++)
        if (!strcmp(code, *list)) return 1;
    return 0;
}

static const char *const AUTH_CODES[] = {"SignatureDoesNotMatch",
                                         "InvalidAccessKeyId",
                                         "AccessDenied",
                                         "RequestTimeTooSkewed",
                                         "AuthorizationHeaderMalformed",
                                         "InvalidToken",
                                         "ExpiredToken",
                                         "MissingSecurityHeader",
                                         "InvalidSecurity",
                                         "AllAccessDisabled",
                                         "AccountProblem",
                                         NULL};
static const char *const RETRY_CODES[] = {"SlowDown",
                                          "RequestTimeout",
                                          "InternalError",
                                          "ServiceUnavailable",
                                          "OperationAborted",
                                          "ThrottlingException",
                                          NULL};

static int retryable_status(long st, const char *code)
{
    if (st == 429 || (st >= 500 && st != 501)) return 1;
    return code[0] && code_is(code, RETRY_CODES);
}

static mv_err class_of(long st, const char *code)
{
    if (code[0] && code_is(code, AUTH_CODES)) return MV_EAUTH;
    if (!strcmp(code, "NoSuchBucket") || !strcmp(code, "NoSuchKey") ||
        !strcmp(code, "NoSuchUpload") || !strcmp(code, "NoSuchVersion") || st == 404)
        return MV_ENOTFOUND;
    if (st == 412 || !strcmp(code, "PreconditionFailed")) return MV_EEXIST;
    if (st == 401 || st == 403) return MV_EAUTH;
    return MV_ESERVER;
}

static const char *hint_of(const mv_s3 *s, const char *code, char *tmp, size_t tmplen)
{
    if (!strcmp(code, "SignatureDoesNotMatch")) return "check the access key and secret";
    if (!strcmp(code, "InvalidAccessKeyId")) return "the store does not know this access key";
    if (!strcmp(code, "AccessDenied")) return "these credentials may not do this";
    if (!strcmp(code, "RequestTimeTooSkewed"))
        return "the clock of this machine differs from the server's";
    if (!strcmp(code, "AuthorizationHeaderMalformed")) return "check the region";
    if (!strcmp(code, "NoSuchBucket")) {
        snprintf(tmp, tmplen, "bucket \"%s\" does not exist", s->c.bucket);
        return tmp;
    }
    if (!strcmp(code, "NoSuchKey")) return "no such key";
    if (!strcmp(code, "PreconditionFailed")) return "the key exists already";
    if (!strcmp(code, "SlowDown")) return "the store asks to slow down";
    if (!strcmp(code, "PermanentRedirect") || !strcmp(code, "TemporaryRedirect"))
        return "the bucket needs another endpoint or region";
    return NULL;
}

static mv_err http_error(mv_s3 *s, const s3req *r, xfer *x, char *err, size_t errlen)
{
    char target[256], tmp[128];
    target_of(s, r->key, target, sizeof target);
    if (!x->code[0]) {
        int head = !strcmp(r->method, "HEAD");
        const char *c = x->status == 404   ? (head     ? "NotFound"
                                              : r->key ? "NoSuchKey"
                                                       : "NoSuchBucket")
                        : x->status == 412 ? "PreconditionFailed"
                        : x->status == 403 ? "AccessDenied"
                                           : "";
        if (head || !x->blen) copy_str(x->code, sizeof x->code, c);
    }
    mv_err e = class_of(x->status, x->code);
    const char *hint = x->code[0] ? hint_of(s, x->code, tmp, sizeof tmp) : NULL;
    if (!strcmp(r->method, "HEAD") && x->status == 403) /* no body, so no code to tell */
        hint = "a HEAD answer names no cause: a bad access key or secret, or no permission";
    else if (!strcmp(x->code, "NotFound"))
        hint = "no such key, or no such bucket";
    char msg[SERVER_MSG_MAX + 1];
    copy_str(msg, sizeof msg, x->msg);
    mv_seterr(err, errlen, e, "s3 %s %s: %s%s%s%s%s%s (HTTP %ld)", r->op, target,
              x->code[0] ? x->code : "error", hint ? " (" : "", hint ? hint : "", hint ? ")" : "",
              msg[0] ? ": " : "", msg, x->status);
    /* the server's text is quoted: make sure it cannot carry the secret into a log */
    if (strlen(s->c.secret_key) >= 8) mv_scrub(err, errlen, s->c.secret_key);
    mv_sanitize(err);
    return e;
}

static mv_err transport_error(mv_s3 *s, const s3req *r, xfer *x, CURLcode rc, int *retry, char *err,
                              size_t errlen)
{
    char target[256];
    target_of(s, r->key, target, sizeof target);
    *retry = 0;
    mv_err e;
    switch (x->abort_reason) {
    case AB_SINK_BIG:
        return mv_seterr(err, errlen, MV_ETOOBIG, "s3 %s %s: object larger than %" PRIu64 " bytes",
                         r->op, target, r->max);
    case AB_CANCEL:
        return mv_seterr(err, errlen, MV_ECANCEL, "s3 %s %s: stopped by the callback", r->op,
                         target);
    case AB_XML_BIG:
        return mv_seterr(err, errlen, MV_ETOOBIG, "s3 %s %s: answer larger than %u bytes", r->op,
                         target, MV_S3_XML_MAX);
    case AB_NOMEM:
        return mv_seterr(err, errlen, MV_ENOMEM, "out of memory");
    case AB_READ:
        if (x->read_errno)
            return mv_seterr(err, errlen, MV_EIO, "s3 %s %s: reading the file failed: %s", r->op,
                             target, strerror(x->read_errno));
        return mv_seterr(err, errlen, MV_EIO, "s3 %s %s: the file is shorter than expected", r->op,
                         target);
    default:
        break;
    }
    const char *detail = x->errbuf[0] ? x->errbuf : curl_easy_strerror(rc);
    switch (rc) {
    case CURLE_OPERATION_TIMEDOUT:
        *retry = 1;
        e = mv_seterr(err, errlen, MV_ETIMEDOUT, "s3 %s %s: timed out: %s", r->op, target, detail);
        break;
    case CURLE_OUT_OF_MEMORY:
        e = mv_seterr(err, errlen, MV_ENOMEM, "out of memory");
        break;
    case CURLE_URL_MALFORMAT:
    case CURLE_UNSUPPORTED_PROTOCOL:
        e = mv_seterr(err, errlen, MV_EINVAL, "s3 %s %s: bad URL: %s", r->op, target, detail);
        break;
    case CURLE_COULDNT_RESOLVE_HOST:
    case CURLE_COULDNT_CONNECT:
    case CURLE_SEND_ERROR:
    case CURLE_RECV_ERROR:
    case CURLE_GOT_NOTHING:
    case CURLE_PARTIAL_FILE:
    case CURLE_SSL_CONNECT_ERROR:
    case CURLE_HTTP2:
    case CURLE_HTTP2_STREAM:
        *retry = 1;
        /* fall through */
    default:
        e = mv_seterr(err, errlen, MV_ENET, "s3 %s %s: %s (curl error %d)", r->op, target, detail,
                      (int)rc);
        break;
    }
    mv_sanitize(err);
    return e;
}

/* ------------------------------------------------------------------ one request, retried */

static int sb_url(const mv_s3 *s, const s3req *r, sbuf *u)
{
    sb_add(u, s->base);
    if (r->key) {
        sb_add(u, "/");
        sb_enc(u, r->key, 1);
    } else if (!s->c.path_style) {
        sb_add(u, "/");
    }
    if (r->query && *r->query) {
        sb_add(u, "?");
        sb_add(u, r->query);
    }
    return u->oom ? -1 : 0;
}

static mv_err s3_call(mv_s3 *s, const s3req *r, xfer *x, char *err, size_t errlen)
{
    digests dg = {{0}, {0}};
    int has_body = !strcmp(r->method, "PUT") || !strcmp(r->method, "POST");
    sbuf url = {0};
    struct curl_slist *hdrs = NULL;
    mv_err e = MV_OK;
    x->r = r;
    x->sunk_ever = 0;
    xfer_reset(x);

    if (has_body) {
        char what[300], target[256];
        target_of(s, r->key, target, sizeof target);
        snprintf(what, sizeof what, "s3 %s %s", r->op, target);
        e = r->use_fd ? digest_fd(r->fd, r->fd_off, r->bodylen, &dg, what, err, errlen)
                      : digest_mem(r->body, (size_t)r->bodylen, &dg, err, errlen);
        if (e) return e;
    }
    if (sb_url(s, r, &url)) {
        e = mv_seterr(err, errlen, MV_ENOMEM, "out of memory");
        goto out;
    }
    {
        char line[160];
        struct curl_slist *t;
#define ADD_HDR(str)                                                                               \
    do {                                                                                           \
        if (!(t = curl_slist_append(hdrs, (str)))) goto nomem;                                     \
        hdrs = t;                                                                                  \
    } while (0)
        snprintf(line, sizeof line, "x-amz-content-sha256: %s",
                 has_body ? dg.sha256 : EMPTY_SHA256);
        ADD_HDR(line);
        if (has_body) {
            snprintf(line, sizeof line, "Content-MD5: %s", dg.md5);
            ADD_HDR(line);
            snprintf(line, sizeof line, "Content-Type: %s",
                     r->content_type ? r->content_type : "application/octet-stream");
            ADD_HDR(line);
            /* no "Expect:" line to turn 100-continue off: curl 7.88 would sign the empty
             * header and the store would not (SignatureDoesNotMatch). curl adds Expect:
             * 100-continue itself, unsigned, which lets the store refuse before the body. */
        }
        for (int i = 0; i < r->nhdrs; i++)
            ADD_HDR(r->hdrs[i]);
#undef ADD_HDR
    }

    for (int attempt = 0;; attempt++) {
        xfer_reset(x);
        CURL *c = pool_get(s);
        if (!c) goto nomem;
        long low_time = s->c.timeout_ms / 1000 < 30 ? s->c.timeout_ms / 1000 : 30;
        if (low_time < 1) low_time = 1;
        CURLcode rc = CURLE_OK;
#define SET(opt, val)                                                                              \
    if (rc == CURLE_OK) rc = curl_easy_setopt(c, opt, val)
        SET(CURLOPT_NOSIGNAL, 1L);
        SET(CURLOPT_TIMEOUT_MS, (long)s->c.timeout_ms);
        SET(CURLOPT_CONNECTTIMEOUT_MS, (long)s->c.connect_timeout_ms);
        SET(CURLOPT_LOW_SPEED_LIMIT, 1L);
        SET(CURLOPT_LOW_SPEED_TIME, low_time);
        SET(CURLOPT_HTTP_VERSION, (long)CURL_HTTP_VERSION_1_1);
        SET(CURLOPT_PROTOCOLS_STR, "http,https");
        SET(CURLOPT_FOLLOWLOCATION, 0L);
        SET(CURLOPT_SSL_VERIFYPEER, 1L);
        SET(CURLOPT_SSL_VERIFYHOST, 2L);
        if (s->c.ca_file[0]) SET(CURLOPT_CAINFO, s->c.ca_file);
        SET(CURLOPT_USERAGENT, USER_AGENT);
        SET(CURLOPT_TCP_KEEPALIVE, 1L);
        SET(CURLOPT_PATH_AS_IS, 1L);
        SET(CURLOPT_ERRORBUFFER, x->errbuf);
        SET(CURLOPT_AWS_SIGV4, s->sigv4);
        SET(CURLOPT_USERNAME, s->c.access_key);
        SET(CURLOPT_PASSWORD, s->c.secret_key);
        SET(CURLOPT_URL, url.p);
        SET(CURLOPT_HTTPHEADER, hdrs);
        SET(CURLOPT_WRITEFUNCTION, on_write);
        SET(CURLOPT_WRITEDATA, x);
        SET(CURLOPT_HEADERFUNCTION, on_header);
        SET(CURLOPT_HEADERDATA, x);
        if (!strcmp(r->method, "HEAD")) {
            SET(CURLOPT_NOBODY, 1L);
        } else if (has_body) {
            SET(CURLOPT_UPLOAD, 1L);
            SET(CURLOPT_READFUNCTION, on_read);
            SET(CURLOPT_READDATA, x);
            SET(CURLOPT_INFILESIZE_LARGE, (curl_off_t)r->bodylen);
            /* curl sends Expect: 100-continue with every upload; waiting for the 100 pays
             * off only for a large body (the store can refuse it unsent) */
            SET(CURLOPT_EXPECT_100_TIMEOUT_MS, r->bodylen >= EXPECT_MIN ? 1000L : 0L);
            if (strcmp(r->method, "PUT")) SET(CURLOPT_CUSTOMREQUEST, r->method);
        } else if (strcmp(r->method, "GET")) {
            SET(CURLOPT_CUSTOMREQUEST, r->method);
        }
#undef SET
        if (rc != CURLE_OK) {
            pool_put(s, c);
            e = mv_seterr(err, errlen, MV_ERR, "s3: curl option refused: %s",
                          curl_easy_strerror(rc));
            goto out;
        }
        int64_t t0 = mv_mono_ms();
        rc = curl_easy_perform(c);
        if (rc == CURLE_OK) curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &x->status);
        pool_put(s, c);
        mv_debug("s3 request", " op=%s bucket=%s status=%ld curl=%d attempt=%d ms=%" PRId64, r->op,
                 s->c.bucket, x->status, (int)rc, attempt, mv_mono_ms() - t0);

        int retry = 0;
        if (rc != CURLE_OK) {
            e = transport_error(s, r, x, rc, &retry, err, errlen);
        } else if (x->status >= 200 && x->status < 300) {
            e = MV_OK;
            if (r->error_in_200 && x->blen &&
                !mv_s3__parse_error(x->buf, x->blen, x->code, sizeof x->code, x->msg,
                                    sizeof x->msg)) {
                if (!x->code[0]) copy_str(x->code, sizeof x->code, "InternalError");
                retry = retryable_status(500, x->code);
                e = http_error(s, r, x, err, errlen);
            }
        } else {
            if (x->blen)
                mv_s3__parse_error(x->buf, x->blen, x->code, sizeof x->code, x->msg, sizeof x->msg);
            retry = retryable_status(x->status, x->code);
            e = http_error(s, r, x, err, errlen);
        }
        if (!e || !retry || attempt >= s->c.max_retries || x->sunk_ever) break;
        int64_t d = (int64_t)BACKOFF_FIRST_MS << (attempt < 10 ? attempt : 10);
        if (d > BACKOFF_CAP_MS) d = BACKOFF_CAP_MS;
        d = d / 2 + (int64_t)(rand32() % (uint32_t)(d / 2 + 1)); /* jitter: [d/2, d] */
        if (x->retry_after_ms > d)
            d = x->retry_after_ms < RETRY_AFTER_CAP_MS ? x->retry_after_ms : RETRY_AFTER_CAP_MS;
        mv_debug("s3 retry", " op=%s bucket=%s attempt=%d delay_ms=%" PRId64 " err=\"%s\"", r->op,
                 s->c.bucket, attempt + 1, d, err);
        sleep_ms(d);
    }
    goto out;
nomem:
    e = mv_seterr(err, errlen, MV_ENOMEM, "out of memory");
out:
    curl_slist_free_all(hdrs);
    sb_free(&url);
    return e;
}

/* ------------------------------------------------------------------ open / close */

void mv_s3_config_default(mv_s3_config *c)
{
    memset(c, 0, sizeof *c);
    copy_str(c->region, sizeof c->region, "us-east-1");
    c->path_style = 1;
    c->timeout_ms = 60000;
    c->connect_timeout_ms = 10000;
    c->max_retries = 4;
}

static int endpoint_split(const char *ep, char *scheme, size_t sl, char *host, size_t hl)
{
    const char *p;
    if (!strncmp(ep, "http://", 7)) {
        copy_str(scheme, sl, "http");
        p = ep + 7;
    } else if (!strncmp(ep, "https://", 8)) {
        copy_str(scheme, sl, "https");
        p = ep + 8;
    } else {
        return -1;
    }
    size_t n = strlen(p);
    if (n && p[n - 1] == '/') n--;
    if (!n || n >= hl) return -1;
    for (size_t i = 0; i < n; i++) {
        char ch = p[i];
        if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
              ch == '.' || ch == '-' || ch == ':' || ch == '[' || ch == ']' || ch == '_'))
            return -1;
    }
    memcpy(host, p, n);
    host[n] = '\0';
    return 0;
}

static int printable(const char *s)
{
    if (!*s) return 0;
    for (; *s; s++)
        if ((unsigned char)*s <= 0x20 || (unsigned char)*s >= 0x7f) return 0;
    return 1;
}

mv_err mv_s3_open(const mv_s3_config *c, mv_s3 **out, char *err, size_t errlen)
{
    char scheme[8], host[256];
    *out = NULL;
    if (!c) return mv_seterr(err, errlen, MV_EINVAL, "s3: no configuration");
    if (!memchr(c->endpoint, 0, sizeof c->endpoint) || !memchr(c->bucket, 0, sizeof c->bucket) ||
        !memchr(c->region, 0, sizeof c->region) ||
        !memchr(c->access_key, 0, sizeof c->access_key) ||
        !memchr(c->secret_key, 0, sizeof c->secret_key) ||
        !memchr(c->ca_file, 0, sizeof c->ca_file))
        return mv_seterr(err, errlen, MV_EINVAL, "s3: a configuration string is not terminated");
    if (endpoint_split(c->endpoint, scheme, sizeof scheme, host, sizeof host))
        return mv_seterr(err, errlen, MV_EINVAL,
                         "s3: endpoint must be http://host[:port] or https://host[:port] without "
                         "a path (got \"%.100s\")",
                         c->endpoint);
    if (!bucket_valid(c->bucket))
        return mv_seterr(err, errlen, MV_EINVAL,
                         "s3: bucket \"%.63s\" breaks the S3 naming rules (3-63 of a-z 0-9 . -, "
                         "starting and ending with a letter or digit)",
                         c->bucket);
    for (const char *p = c->region; *p; p++)
        if (!((*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') || *p == '-'))
            return mv_seterr(err, errlen, MV_EINVAL, "s3: region must be like us-east-1");
    if (!c->region[0]) return mv_seterr(err, errlen, MV_EINVAL, "s3: region is empty");
    if (!printable(c->access_key) || strchr(c->access_key, ':'))
        return mv_seterr(err, errlen, MV_EINVAL, "s3: access_key empty or not printable ASCII");
    if (!printable(c->secret_key))
        return mv_seterr(err, errlen, MV_EINVAL, "s3: secret_key empty or not printable ASCII");
    if (c->timeout_ms <= 0 || c->connect_timeout_ms <= 0)
        return mv_seterr(err, errlen, MV_EINVAL, "s3: timeouts must be > 0");
    if (c->max_retries < 0 || c->max_retries > 20)
        return mv_seterr(err, errlen, MV_EINVAL, "s3: max_retries must be 0..20");
    pthread_once(&init_once, lib_init);
    if (curl_init_rc != CURLE_OK)
        return mv_seterr(err, errlen, MV_ERR, "curl_global_init failed: %s",
                         curl_easy_strerror(curl_init_rc));
    mv_s3 *s = calloc(1, sizeof *s);
    if (!s) return mv_seterr(err, errlen, MV_ENOMEM, "out of memory");
    s->c = *c;
    if (c->path_style)
        snprintf(s->base, sizeof s->base, "%s://%s/%s", scheme, host, c->bucket);
    else
        snprintf(s->base, sizeof s->base, "%s://%s.%s", scheme, c->bucket, host);
    snprintf(s->sigv4, sizeof s->sigv4, "aws:amz:%s:s3", c->region);
    if (pthread_mutex_init(&s->mu, NULL)) {
        OPENSSL_cleanse(s, sizeof *s);
        free(s);
        return mv_seterr(err, errlen, MV_ERR, "s3: mutex init failed");
    }
    *out = s;
    return MV_OK;
}

void mv_s3_close(mv_s3 *s)
{
    if (!s) return;
    for (int i = 0; i < s->nidle; i++)
        curl_easy_cleanup(s->idle[i]);
    pthread_mutex_destroy(&s->mu);
    OPENSSL_cleanse(s, sizeof *s);
    free(s);
}

/* ------------------------------------------------------------------ objects */

/* Lock and condition headers of o into r->hdrs (lines in lines[]). */
static void put_headers(const mv_s3_put_opts *o, s3req *r, char lines[3][96], int with_inm)
{
    if (!o) return;
    if (with_inm && o->if_none_match) r->hdrs[r->nhdrs++] = "If-None-Match: *";
    if (o->lock_mode && *o->lock_mode) {
        char t[32];
        snprintf(lines[0], 96, "x-amz-object-lock-mode: %s", o->lock_mode);
        r->hdrs[r->nhdrs++] = lines[0];
        fmt_time(o->retain_until, t);
        snprintf(lines[1], 96, "x-amz-object-lock-retain-until-date: %s", t);
        r->hdrs[r->nhdrs++] = lines[1];
    }
    if (o->legal_hold) r->hdrs[r->nhdrs++] = "x-amz-object-lock-legal-hold: ON";
}

mv_err mv_s3_put(mv_s3 *s, const char *key, const void *data, size_t len, const mv_s3_put_opts *o,
                 char *err, size_t errlen)
{
    mv_err e = key_check(key, err, errlen);
    if (!e) e = opts_check(o, err, errlen);
    if (e) return e;
    if (!data && len) return mv_seterr(err, errlen, MV_EINVAL, "s3: no data");
    char lines[3][96];
    s3req r = {.op = "PUT", .method = "PUT", .key = key, .body = data ? data : "", .bodylen = len};
    put_headers(o, &r, lines, 1);
    xfer x = {0};
    e = s3_call(s, &r, &x, err, errlen);
    xfer_free(&x);
    return e;
}

static mv_err upload_abort(mv_s3 *s, const char *key, const char *upload_id, char *err,
                           size_t errlen)
{
    sbuf q = {0};
    sb_add(&q, "uploadId=");
    sb_enc(&q, upload_id, 0);
    if (q.oom) return mv_seterr(err, errlen, MV_ENOMEM, "out of memory");
    s3req r = {.op = "AbortMultipartUpload", .method = "DELETE", .key = key, .query = q.p};
    xfer x = {0};
    mv_err e = s3_call(s, &r, &x, err, errlen);
    xfer_free(&x);
    sb_free(&q);
    return e;
}

mv_err mv_s3__upload_start(mv_s3 *s, const char *key, const mv_s3_put_opts *o, char *upload_id,
                           size_t idlen, char *err, size_t errlen)
{
    mv_err e = key_check(key, err, errlen);
    if (!e) e = opts_check(o, err, errlen);
    if (e) return e;
    char lines[3][96];
    s3req r = {.op = "CreateMultipartUpload",
               .method = "POST",
               .key = key,
               .query = "uploads=",
               .body = "",
               .bodylen = 0,
               .xml = 1};
    put_headers(o, &r, lines, 0);
    xfer x = {0};
    e = s3_call(s, &r, &x, err, errlen);
    if (!e) {
        xmlDoc *d = NULL;
        e = load_xml(x.buf, x.blen, "s3 CreateMultipartUpload", &d, err, errlen);
        if (!e) {
            xmlNode *root = xmlDocGetRootElement(d);
            if (!is_el(root, "InitiateMultipartUploadResult") ||
                child_copy(root, "UploadId", upload_id, idlen) || !upload_id[0] ||
                !printable(upload_id))
                e = mv_seterr(err, errlen, MV_EPROTO,
                              "s3 CreateMultipartUpload: no usable UploadId in the answer");
        }
        xmlFreeDoc(d);
    }
    xfer_free(&x);
    return e;
}

mv_err mv_s3_put_fd(mv_s3 *s, const char *key, int fd, uint64_t len, size_t part_size,
                    const mv_s3_put_opts *o, char *err, size_t errlen)
{
    mv_err e = key_check(key, err, errlen);
    if (!e) e = opts_check(o, err, errlen);
    if (e) return e;
    if (fd < 0) return mv_seterr(err, errlen, MV_EINVAL, "s3: bad file descriptor");
    if (part_size < MV_S3_MIN_PART || (uint64_t)part_size > MV_S3_MAX_PART)
        return mv_seterr(err, errlen, MV_EINVAL, "s3: part_size must be 5 MiB..5 GiB");
    char lines[3][96];
    if (len <= part_size) {
        s3req r = {.op = "PUT", .method = "PUT", .key = key, .use_fd = 1, .fd = fd, .bodylen = len};
        put_headers(o, &r, lines, 1);
        xfer x = {0};
        e = s3_call(s, &r, &x, err, errlen);
        xfer_free(&x);
        return e;
    }
    uint64_t nparts = (len + part_size - 1) / part_size;
    if (nparts > MV_S3_MAX_PARTS)
        return mv_seterr(err, errlen, MV_EINVAL,
                         "s3: %" PRIu64 " bytes need %" PRIu64 " parts of %zu (max %d); raise "
                         "part_size",
                         len, nparts, part_size, MV_S3_MAX_PARTS);
    char upload_id[1024];
    e = mv_s3__upload_start(s, key, o, upload_id, sizeof upload_id, err, errlen);
    if (e) return e;

    sbuf done = {0}, q = {0};
    sb_add(&done, "<CompleteMultipartUpload xmlns=\"" S3_NS "\">");
    xfer x = {0};
    for (uint64_t i = 0; i < nparts && !e; i++) {
        uint64_t off = i * part_size;
        uint64_t n = len - off < part_size ? len - off : part_size;
        q.n = 0;
        sb_add(&q, "partNumber=");
        sb_u64(&q, i + 1);
        sb_add(&q, "&uploadId=");
        sb_enc(&q, upload_id, 0);
        if (q.oom) {
            e = mv_seterr(err, errlen, MV_ENOMEM, "out of memory");
            break;
        }
        s3req r = {.op = "UploadPart",
                   .method = "PUT",
                   .key = key,
                   .query = q.p,
                   .use_fd = 1,
                   .fd = fd,
                   .fd_off = off,
                   .bodylen = n};
        e = s3_call(s, &r, &x, err, errlen);
        if (!e && (!x.etag[0] || !printable(x.etag)))
            e = mv_seterr(err, errlen, MV_EPROTO, "s3 UploadPart %s: part %" PRIu64 " has no ETag",
                          s->c.bucket, i + 1);
        if (!e) {
            sb_add(&done, "<Part><PartNumber>");
            sb_u64(&done, i + 1);
            sb_add(&done, "</PartNumber><ETag>");
            sb_xml(&done, x.etag);
            sb_add(&done, "</ETag></Part>");
        }
    }
    sb_add(&done, "</CompleteMultipartUpload>");
    if (!e && done.oom) e = mv_seterr(err, errlen, MV_ENOMEM, "out of memory");
    if (!e) {
        q.n = 0;
        sb_add(&q, "uploadId=");
        sb_enc(&q, upload_id, 0);
        s3req r = {.op = "CompleteMultipartUpload",
                   .method = "POST",
                   .key = key,
                   .query = q.p,
                   .body = done.p,
                   .bodylen = done.n,
                   .content_type = "application/xml",
                   .error_in_200 = 1};
        if (o && o->if_none_match) r.hdrs[r.nhdrs++] = "If-None-Match: *";
        e = q.oom ? mv_seterr(err, errlen, MV_ENOMEM, "out of memory")
                  : s3_call(s, &r, &x, err, errlen);
    }
    if (e) {
        char aerr[MV_ERRLEN];
        if (upload_abort(s, key, upload_id, aerr, sizeof aerr))
            mv_warn("s3 multipart upload left behind", " bucket=%s err=\"%s\"", s->c.bucket, aerr);
    }
    xfer_free(&x);
    sb_free(&done);
    sb_free(&q);
    return e;
}

mv_err mv_s3_get(mv_s3 *s, const char *key, uint64_t max, mv_s3_sink_fn cb, void *ud, char *err,
                 size_t errlen)
{
    mv_err e = key_check(key, err, errlen);
    if (e) return e;
    if (!cb) return mv_seterr(err, errlen, MV_EINVAL, "s3: no sink");
    s3req r = {.op = "GET", .method = "GET", .key = key, .sink = cb, .ud = ud, .max = max};
    xfer x = {0};
    e = s3_call(s, &r, &x, err, errlen);
    xfer_free(&x);
    return e;
}

mv_err mv_s3_head(mv_s3 *s, const char *key, mv_s3_head_info *info, char *err, size_t errlen)
{
    mv_err e = key_check(key, err, errlen);
    if (e) return e;
    memset(info, 0, sizeof *info);
    s3req r = {.op = "HEAD", .method = "HEAD", .key = key};
    xfer x = {0};
    e = s3_call(s, &r, &x, err, errlen);
    if (!e) {
        info->size = x.clen > 0 ? (uint64_t)x.clen : 0;
        copy_str(info->etag, sizeof info->etag, x.etag);
        copy_str(info->version_id, sizeof info->version_id, x.version_id);
        if (!strcmp(x.lock_mode, "GOVERNANCE") || !strcmp(x.lock_mode, "COMPLIANCE"))
            copy_str(info->lock_mode, sizeof info->lock_mode, x.lock_mode);
        int64_t t = x.retain[0] ? mv_s3__parse_time(x.retain) : 0;
        info->retain_until = t > 0 ? t : 0;
        info->legal_hold = !strcasecmp(x.legal, "ON");
    }
    xfer_free(&x);
    return e;
}

mv_err mv_s3_delete(mv_s3 *s, const char *key, const char *version_id, int bypass_governance,
                    int *refused, char *err, size_t errlen)
{
    if (refused) *refused = 0;
    mv_err e = key_check(key, err, errlen);
    if (e) return e;
    int has_ver = version_id && *version_id;
    if (has_ver && (!printable(version_id) || strlen(version_id) > 1024))
        return mv_seterr(err, errlen, MV_EINVAL, "s3: bad version id");
    sbuf q = {0};
    if (has_ver) {
        sb_add(&q, "versionId=");
        sb_enc(&q, version_id, 0);
        if (q.oom) return mv_seterr(err, errlen, MV_ENOMEM, "out of memory");
    }
    s3req r = {.op = "DELETE", .method = "DELETE", .key = key, .query = q.p};
    if (bypass_governance) r.hdrs[r.nhdrs++] = "x-amz-bypass-governance-retention: true";
    xfer x = {0};
    e = s3_call(s, &r, &x, err, errlen);
    if (e && has_ver && !strcmp(x.code, "AccessDenied")) {
        char target[256];
        target_of(s, key, target, sizeof target);
        if (refused) *refused = 1;
        e = mv_seterr(err, errlen, MV_ESERVER,
                      "s3 DELETE %s (version %.128s): refused by the store: object is under "
                      "retention/legal hold (AccessDenied)",
                      target, version_id);
        mv_sanitize(err);
    }
    xfer_free(&x);
    sb_free(&q);
    return e;
}

/* ------------------------------------------------------------------ listings */

typedef struct list_ctx {
    int kind;
    int (*obj_cb)(void *ud, const char *key, uint64_t size);
    int (*ver_cb)(void *ud, const char *key, const char *version_id, int is_latest,
                  int is_delete_marker);
    void *ud;
    /* sweep */
    int64_t cutoff;
    char **keys, **ids;
    size_t n, cap;
    int oom;
} list_ctx;

static int list_item(void *ud, const mv_s3__item *it)
{
    list_ctx *l = ud;
    switch (l->kind) {
    case MV_S3__LIST_OBJECTS:
        return l->obj_cb(l->ud, it->key, it->size);
    case MV_S3__LIST_VERSIONS:
        return l->ver_cb(l->ud, it->key, it->version_id, it->is_latest, it->is_delete_marker);
    default:
        if (it->initiated > l->cutoff) return 0;
        if (l->n == l->cap) {
            size_t nc = l->cap ? l->cap * 2 : 64;
            char **nk = realloc(l->keys, nc * sizeof *nk);
            if (nk) l->keys = nk;
            char **ni = nk ? realloc(l->ids, nc * sizeof *ni) : NULL;
            if (ni) l->ids = ni;
            if (!nk || !ni) {
                l->oom = 1;
                return 1;
            }
            l->cap = nc;
        }
        l->keys[l->n] = strdup(it->key);
        l->ids[l->n] = strdup(it->upload_id);
        if (!l->keys[l->n] || !l->ids[l->n]) {
            free(l->keys[l->n]);
            free(l->ids[l->n]);
            l->oom = 1;
            return 1;
        }
        l->n++;
        return 0;
    }
}

static void list_clear(list_ctx *l)
{
    for (size_t i = 0; i < l->n; i++) {
        free(l->keys[i]);
        free(l->ids[i]);
    }
    l->n = 0;
}

/* Page through a listing of l->kind under prefix; after each page, sweep aborts what it
 * collected. */
static mv_err list_run(mv_s3 *s, const char *prefix, list_ctx *l, int *aborted, char *err,
                       size_t errlen)
{
    static const char *const ops[] = {"", "ListObjectsV2", "ListObjectVersions",
                                      "ListMultipartUploads"};
    mv_s3__page *pg = malloc(sizeof *pg);
    char *marker_a = malloc(1100), *marker_b = malloc(1100);
    sbuf q = {0};
    xfer x = {0};
    mv_err e = MV_OK;
    if (!pg || !marker_a || !marker_b) {
        e = mv_seterr(err, errlen, MV_ENOMEM, "out of memory");
        goto out;
    }
    if (prefix && strlen(prefix) > MV_S3_KEY_MAX) {
        e = mv_seterr(err, errlen, MV_EINVAL, "s3: prefix longer than %d bytes", MV_S3_KEY_MAX);
        goto out;
    }
    marker_a[0] = marker_b[0] = '\0';
    for (int page = 0;; page++) {
        q.n = 0;
        if (q.p) q.p[0] = '\0';
        /* parameters in canonical (sorted) order */
        if (l->kind == MV_S3__LIST_OBJECTS) {
            if (marker_a[0]) {
                sb_add(&q, "continuation-token=");
                sb_enc(&q, marker_a, 0);
                sb_add(&q, "&");
            }
            sb_add(&q, "list-type=2&max-keys=1000");
            if (prefix && *prefix) {
                sb_add(&q, "&prefix=");
                sb_enc(&q, prefix, 0);
            }
        } else {
            int v = l->kind == MV_S3__LIST_VERSIONS;
            if (marker_a[0]) {
                sb_add(&q, "key-marker=");
                sb_enc(&q, marker_a, 0);
                sb_add(&q, "&");
            }
            sb_add(&q, v ? "max-keys=1000" : "max-uploads=1000");
            if (prefix && *prefix) {
                sb_add(&q, "&prefix=");
                sb_enc(&q, prefix, 0);
            }
            if (marker_b[0]) {
                sb_add(&q, v ? "&version-id-marker=" : "&upload-id-marker=");
                sb_enc(&q, marker_b, 0);
            }
            sb_add(&q, v ? "&versions=" : "&uploads=");
        }
        if (q.oom) {
            e = mv_seterr(err, errlen, MV_ENOMEM, "out of memory");
            break;
        }
        s3req r = {.op = ops[l->kind], .method = "GET", .query = q.p, .xml = 1};
        e = s3_call(s, &r, &x, err, errlen);
        if (e) break;
        e = mv_s3__parse_list(x.buf, x.blen, l->kind, pg, list_item, l, err, errlen);
        if (e == MV_ECANCEL && l->oom) e = mv_seterr(err, errlen, MV_ENOMEM, "out of memory");
        for (size_t i = 0; !e && i < l->n; i++) {
            char aerr[MV_ERRLEN];
            mv_err ae = upload_abort(s, l->keys[i], l->ids[i], aerr, sizeof aerr);
            if (ae == MV_ENOTFOUND) continue; /* completed or aborted meanwhile */
            if (ae) {
                e = ae;
                copy_str(err, errlen, aerr);
            } else if (aborted) {
                (*aborted)++;
            }
        }
        list_clear(l);
        if (e || !pg->truncated) break;
        /* the next page starts after this one; a marker that does not move would loop */
        const char *na = l->kind == MV_S3__LIST_OBJECTS ? pg->next_token : pg->next_key;
        if (!na[0] || (!strcmp(na, marker_a) && !strcmp(pg->next_id, marker_b))) {
            e = mv_seterr(err, errlen, MV_EPROTO,
                          "s3 %s %s: truncated page %d without a new continuation marker",
                          ops[l->kind], s->c.bucket, page + 1);
            break;
        }
        copy_str(marker_a, 1100, na);
        copy_str(marker_b, 1100, l->kind == MV_S3__LIST_OBJECTS ? "" : pg->next_id);
    }
out:
    list_clear(l);
    free(l->keys);
    free(l->ids);
    l->keys = l->ids = NULL;
    l->cap = 0;
    xfer_free(&x);
    sb_free(&q);
    free(pg);
    free(marker_a);
    free(marker_b);
    return e;
}

mv_err mv_s3_list(mv_s3 *s, const char *prefix, int (*cb)(void *ud, const char *key, uint64_t size),
                  void *ud, char *err, size_t errlen)
{
    if (!cb) return mv_seterr(err, errlen, MV_EINVAL, "s3: no callback");
    list_ctx l = {.kind = MV_S3__LIST_OBJECTS, .obj_cb = cb, .ud = ud};
    return list_run(s, prefix, &l, NULL, err, errlen);
}

mv_err mv_s3_list_versions(mv_s3 *s, const char *prefix,
                           int (*cb)(void *ud, const char *key, const char *version_id,
                                     int is_latest, int is_delete_marker),
                           void *ud, char *err, size_t errlen)
{
    if (!cb) return mv_seterr(err, errlen, MV_EINVAL, "s3: no callback");
    list_ctx l = {.kind = MV_S3__LIST_VERSIONS, .ver_cb = cb, .ud = ud};
    return list_run(s, prefix, &l, NULL, err, errlen);
}

mv_err mv_s3_sweep_uploads(mv_s3 *s, const char *prefix, int older_than_s, int *aborted, char *err,
                           size_t errlen)
{
    if (aborted) *aborted = 0;
    if (older_than_s < 0) return mv_seterr(err, errlen, MV_EINVAL, "s3: older_than_s < 0");
    list_ctx l = {.kind = MV_S3__LIST_UPLOADS, .cutoff = mv_now_ms() / 1000 - older_than_s};
    return list_run(s, prefix, &l, aborted, err, errlen);
}

/* ------------------------------------------------------------------ object lock, buckets */

/* A small XML answer: root element root, up to two child texts copied. */
static mv_err small_xml(const xfer *x, const char *what, const char *root, const char *f1, char *o1,
                        size_t l1, const char *f2, char *o2, size_t l2, char *err, size_t errlen)
{
    xmlDoc *d = NULL;
    mv_err e = load_xml(x->buf, x->blen, what, &d, err, errlen);
    if (e) return e;
    xmlNode *r = xmlDocGetRootElement(d);
    if (!is_el(r, root) || child_copy(r, f1, o1, l1) || (f2 && child_copy(r, f2, o2, l2)))
        e = mv_seterr(err, errlen, MV_EPROTO, "%s: the answer is not a usable %s document", what,
                      root);
    xmlFreeDoc(d);
    return e;
}

static mv_err key_req(mv_s3 *s, s3req *r, xfer *x, char *err, size_t errlen)
{
    mv_err e = key_check(r->key, err, errlen);
    return e ? e : s3_call(s, r, x, err, errlen);
}

/* "Nothing set" answers differ: AWS NoSuchObjectLockConfiguration; SeaweedFS
 * ObjectLockConfigurationNotFoundError (retention) and NoSuchObjectLegalHold (legal hold). */
static int no_lock_config(const xfer *x)
{
    return !strcmp(x->code, "NoSuchObjectLockConfiguration") ||
           !strcmp(x->code, "ObjectLockConfigurationNotFoundError") ||
           !strcmp(x->code, "NoSuchObjectLegalHold");
}

/* PUT an Object Lock XML document to a subresource of key. */
static mv_err put_lock_xml(mv_s3 *s, const char *key, const char *op, const char *query,
                           const char *body, char *err, size_t errlen)
{
    s3req r = {.op = op,
               .method = "PUT",
               .key = key,
               .query = query,
               .body = body,
               .bodylen = strlen(body),
               .content_type = "application/xml"};
    xfer x = {0};
    mv_err e = key_req(s, &r, &x, err, errlen);
    xfer_free(&x);
    return e;
}

mv_err mv_s3_legal_hold_put(mv_s3 *s, const char *key, int on, char *err, size_t errlen)
{
    const char *body = on ? "<LegalHold xmlns=\"" S3_NS "\"><Status>ON</Status></LegalHold>"
                          : "<LegalHold xmlns=\"" S3_NS "\"><Status>OFF</Status></LegalHold>";
    return put_lock_xml(s, key, "PutObjectLegalHold", "legal-hold=", body, err, errlen);
}

mv_err mv_s3_legal_hold_get(mv_s3 *s, const char *key, int *on, char *err, size_t errlen)
{
    *on = 0;
    s3req r = {
        .op = "GetObjectLegalHold", .method = "GET", .key = key, .query = "legal-hold=", .xml = 1};
    xfer x = {0};
    mv_err e = key_req(s, &r, &x, err, errlen);
    if (!e) {
        char st[16];
        e = small_xml(&x, "s3 GetObjectLegalHold", "LegalHold", "Status", st, sizeof st, NULL, NULL,
                      0, err, errlen);
        if (!e) *on = !strcmp(st, "ON");
    } else if (no_lock_config(&x)) {
        e = MV_OK;
    }
    xfer_free(&x);
    return e;
}

mv_err mv_s3_retention_get(mv_s3 *s, const char *key, char mode[16], int64_t *retain_until,
                           char *err, size_t errlen)
{
    mode[0] = '\0';
    *retain_until = 0;
    s3req r = {
        .op = "GetObjectRetention", .method = "GET", .key = key, .query = "retention=", .xml = 1};
    xfer x = {0};
    mv_err e = key_req(s, &r, &x, err, errlen);
    if (!e) {
        char m[16], until[64];
        e = small_xml(&x, "s3 GetObjectRetention", "Retention", "Mode", m, sizeof m,
                      "RetainUntilDate", until, sizeof until, err, errlen);
        if (!e && m[0]) {
            int64_t t = mv_s3__parse_time(until);
            if ((strcmp(m, "GOVERNANCE") && strcmp(m, "COMPLIANCE")) || t < 0) {
                e = mv_seterr(err, errlen, MV_EPROTO,
                              "s3 GetObjectRetention: unexpected Mode or RetainUntilDate");
            } else {
                copy_str(mode, 16, m);
                *retain_until = t;
            }
        }
    } else if (no_lock_config(&x)) {
        e = MV_OK;
    }
    xfer_free(&x);
    return e;
}

mv_err mv_s3_retention_put(mv_s3 *s, const char *key, const char *mode, int64_t retain_until,
                           char *err, size_t errlen)
{
    if (!mode || (strcmp(mode, "GOVERNANCE") && strcmp(mode, "COMPLIANCE")) || retain_until <= 0)
        return mv_seterr(err, errlen, MV_EINVAL,
                         "s3: retention needs mode GOVERNANCE or COMPLIANCE and retain_until");
    char t[32], body[256];
    fmt_time(retain_until, t);
    snprintf(body, sizeof body,
             "<Retention xmlns=\"" S3_NS "\"><Mode>%s</Mode><RetainUntilDate>%s</RetainUntilDate>"
             "</Retention>",
             mode, t);
    return put_lock_xml(s, key, "PutObjectRetention", "retention=", body, err, errlen);
}

mv_err mv_s3_bucket_create(mv_s3 *s, int object_lock, char *err, size_t errlen)
{
    char body[256] = "";
    if (strcmp(s->c.region, "us-east-1"))
        snprintf(body, sizeof body,
                 "<CreateBucketConfiguration xmlns=\"" S3_NS "\"><LocationConstraint>%s"
                 "</LocationConstraint></CreateBucketConfiguration>",
                 s->c.region);
    s3req r = {.op = "CreateBucket",
               .method = "PUT",
               .body = body,
               .bodylen = strlen(body),
               .content_type = body[0] ? "application/xml" : NULL};
    if (object_lock) r.hdrs[r.nhdrs++] = "x-amz-bucket-object-lock-enabled: true";
    xfer x = {0};
    mv_err e = s3_call(s, &r, &x, err, errlen);
    if (e && !strcmp(x.code, "BucketAlreadyOwnedByYou")) {
        e = MV_OK;
        if (errlen) err[0] = '\0';
    } else if (e && !strcmp(x.code, "BucketAlreadyExists")) {
        e = mv_seterr(err, errlen, MV_EEXIST,
                      "s3 CreateBucket %s: BucketAlreadyExists (the name is taken by another "
                      "account)",
                      s->c.bucket);
    }
    xfer_free(&x);
    return e;
}

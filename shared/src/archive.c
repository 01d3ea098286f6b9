/* archive.c - list a mailbox's index records across segments (see archive.h).
 *
 * Segment names say what they cover, so most of the work is done from names alone:
 *   UID sources (IMAP):     "<folderhash16>-<uidvalidity>-<first>-<last>.seg"
 *   cursor sources (Graph): "<folderhash16>-<generation>-<seq>.seg"
 * Two kinds of repeats are removed:
 *   - across generations (a new UIDVALIDITY, or a Graph folder restarted after its sync state
 *     expired): a message of an older generation whose bytes are also in the newest one is
 *     listed once, from the newest; only for such folders is the newest generation read ahead
 *     to collect its hashes;
 *   - within a cursor source, a message changed at the source (flags, categories) comes back
 *     in a later batch with the same id: only its latest record (highest generation, then
 *     seq) is listed. For that, a 128-bit digest of (folder, id) of every such record is
 *     collected first.
 * Everything else streams one segment at a time. */
#include "mv/archive.h"

#include <inttypes.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct seg_name {
    char *name;
    char folder[17];
    uint32_t generation; /* uidvalidity for UID sources */
    uint64_t seq;        /* cursor sources; 0 for UID sources */
    int cursor;
} seg_name;

typedef struct names {
    seg_name *v;
    size_t n, cap;
} names;

/* per folder: newest generation, whether it has several, and that generation's hashes */
typedef struct folder_gen {
    char folder[17];
    uint32_t newest;
    int several;
    char (*hashes)[65];
    size_t n;
} folder_gen;

/* latest (generation, seq) at which a (folder, id) was recorded */
typedef struct id_seen {
    unsigned char key[16];
    uint32_t generation;
    uint64_t seq;
} id_seen;

static int collect_name(void *ud, const char *name)
{
    names *l = ud;
    seg_name sn;
    memset(&sn, 0, sizeof sn);
    unsigned long gen = 0;
    unsigned long long a = 0, b = 0;
    char tail[8] = "";
    if (strlen(name) < 18 || name[16] != '-') return 0; /* not a segment name of ours */
    int f = sscanf(name + 17, "%lu-%llu-%llu%7s", &gen, &a, &b, tail);
    if (f == 4 && strcmp(tail, ".seg") == 0) {
        sn.cursor = 0;
    } else if (sscanf(name + 17, "%lu-%llu%7s", &gen, &a, tail) == 3 && strcmp(tail, ".seg") == 0) {
        sn.cursor = 1;
        sn.seq = a;
    } else {
        return 0;
    }
    if (l->n == l->cap) {
        size_t nc = l->cap ? l->cap * 2 : 64;
        seg_name *nv = realloc(l->v, nc * sizeof *nv);
        if (!nv) return 1;
        l->v = nv;
        l->cap = nc;
    }
    memcpy(sn.folder, name, 16);
    sn.generation = (uint32_t)gen;
    sn.name = strdup(name);
    if (!sn.name) return 1;
    l->v[l->n++] = sn;
    return 0;
}

static int cmp_hash(const void *a, const void *b)
{
    return memcmp(a, b, 64);
}

static int cmp_key(const void *a, const void *b)
{
    return memcmp(a, b, 16);
}

static void id_key(const char *folder16, const char *id, unsigned char key[16])
{
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;
    EVP_MD_CTX *x = EVP_MD_CTX_new();
    if (!x || EVP_DigestInit_ex(x, EVP_sha256(), NULL) != 1 ||
        EVP_DigestUpdate(x, folder16, 16) != 1 || EVP_DigestUpdate(x, "", 1) != 1 ||
        EVP_DigestUpdate(x, id, strlen(id)) != 1 || EVP_DigestFinal_ex(x, md, &mdlen) != 1)
        memset(md, 0, sizeof md);
    EVP_MD_CTX_free(x);
    memcpy(key, md, 16);
}

static mv_err load_segment(mv_store *s, const char *tenant, const char *mailbox, const char *name,
                           mv_segment *seg, char *err, size_t errlen)
{
    void *data = NULL;
    size_t len = 0;
    mv_err rc = mv_store_segment_get(s, tenant, mailbox, name, &data, &len, err, errlen);
    if (rc) return rc;
    char derr[MV_ERRLEN];
    rc = mv_segment_decode(data, len, seg, derr, sizeof derr);
    free(data);
    if (rc) return mv_seterr(err, errlen, rc, "segment %s of %s: %s", name, mailbox, derr);
    return MV_OK;
}

static folder_gen *find_folder(folder_gen *v, size_t n, const char *folder16)
{
    for (size_t j = 0; j < n; j++)
        if (strcmp(v[j].folder, folder16) == 0) return &v[j];
    return NULL;
}

mv_err mv_archive_list(mv_store *s, const char *tenant, const char *mailbox, mv_archive_rec_fn cb,
                       void *ud, char *err, size_t errlen)
{
    names l = {0};
    folder_gen *fg = NULL;
    size_t nfg = 0;
    id_seen *ids = NULL;
    size_t nids = 0, capids = 0;
    mv_err rc = mv_store_segment_list(s, tenant, mailbox, collect_name, &l, err, errlen);
    if (rc == MV_ECANCEL) rc = mv_seterr(err, errlen, MV_ENOMEM, "out of memory listing segments");
    if (rc) goto out;

    /* pass 1, names only: generations per folder */
    fg = calloc(l.n ? l.n : 1, sizeof *fg);
    if (!fg) {
        rc = MV_ENOMEM;
        goto out;
    }
    for (size_t i = 0; i < l.n; i++) {
        folder_gen *f = find_folder(fg, nfg, l.v[i].folder);
        if (!f) {
            f = &fg[nfg++];
            memcpy(f->folder, l.v[i].folder, 17);
            f->newest = l.v[i].generation;
        } else if (f->newest != l.v[i].generation) {
            f->several = 1;
            if (l.v[i].generation > f->newest) f->newest = l.v[i].generation;
        }
    }
    /* pass 2: hashes of the newest generation where there are several; ids of cursor sources */
    for (size_t i = 0; i < l.n; i++) {
        folder_gen *f = find_folder(fg, nfg, l.v[i].folder);
        int want_hashes = f->several && f->newest == l.v[i].generation;
        if (!want_hashes && !l.v[i].cursor) continue;
        mv_segment seg;
        if ((rc = load_segment(s, tenant, mailbox, l.v[i].name, &seg, err, errlen))) goto out;
        if (want_hashes) {
            char(*nh)[65] = realloc(f->hashes, (f->n + seg.n + 1) * sizeof *nh);
            if (!nh) {
                mv_segment_free(&seg);
                rc = MV_ENOMEM;
                goto out;
            }
            f->hashes = nh;
            for (size_t k = 0; k < seg.n; k++)
                memcpy(f->hashes[f->n++], seg.recs[k].hash, 65);
        }
        for (size_t k = 0; l.v[i].cursor && k < seg.n; k++) {
            if (!seg.recs[k].id[0]) continue;
            if (nids == capids) {
                size_t nc = capids ? capids * 2 : 256;
                id_seen *nv = realloc(ids, nc * sizeof *nv);
                if (!nv) {
                    mv_segment_free(&seg);
                    rc = MV_ENOMEM;
                    goto out;
                }
                ids = nv;
                capids = nc;
            }
            id_key(l.v[i].folder, seg.recs[k].id, ids[nids].key);
            ids[nids].generation = l.v[i].generation;
            ids[nids].seq = l.v[i].seq;
            nids++;
        }
        mv_segment_free(&seg);
    }
    for (size_t j = 0; j < nfg; j++)
        if (fg[j].n) qsort(fg[j].hashes, fg[j].n, 65, cmp_hash);
    /* keep one entry per key: the latest (generation, seq) */
    if (nids) {
        qsort(ids, nids, sizeof *ids, cmp_key);
        size_t w = 0;
        for (size_t i = 0; i < nids; i++) {
            if (w && memcmp(ids[w - 1].key, ids[i].key, 16) == 0) {
                id_seen *k = &ids[w - 1];
                if (ids[i].generation > k->generation ||
                    (ids[i].generation == k->generation && ids[i].seq > k->seq))
                    *k = ids[i];
            } else {
                ids[w++] = ids[i];
            }
        }
        nids = w;
    }

    /* pass 3: stream every segment, skipping the repeats */
    for (size_t i = 0; i < l.n && !rc; i++) {
        folder_gen *f = find_folder(fg, nfg, l.v[i].folder);
        mv_segment seg;
        if ((rc = load_segment(s, tenant, mailbox, l.v[i].name, &seg, err, errlen))) goto out;
        int older = f->several && seg.uidvalidity != f->newest;
        for (size_t k = 0; k < seg.n; k++) {
            const mv_index_rec *r = &seg.recs[k];
            if (older && f->n && bsearch(r->hash, f->hashes, f->n, 65, cmp_hash)) continue;
            if (l.v[i].cursor && r->id[0]) {
                unsigned char key[16];
                id_key(l.v[i].folder, r->id, key);
                const id_seen *last = bsearch(key, ids, nids, sizeof *ids, cmp_key);
                if (last && (last->generation != l.v[i].generation || last->seq != l.v[i].seq))
                    continue;
            }
            if (cb(ud, &seg, r)) {
                rc = MV_ECANCEL;
                break;
            }
        }
        mv_segment_free(&seg);
    }
out:
    for (size_t i = 0; i < l.n; i++)
        free(l.v[i].name);
    free(l.v);
    for (size_t j = 0; j < nfg; j++)
        free(fg[j].hashes);
    free(fg);
    free(ids);
    return rc;
}

/* archive.c - list a mailbox's index records across segments (see archive.h).
 *
 * Segment names say what they cover ("<folderhash16>-<uidvalidity>-<first>-<last>.seg"), so
 * the folders whose UIDVALIDITY changed are found from the names alone. Only for those is the
 * newest generation read ahead to collect its message hashes; everything else streams one
 * segment at a time, so memory stays bounded by one segment plus those hash sets. */
#include "mv/archive.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct seg_name {
    char *name;
    char folder[17];
    uint32_t uidvalidity;
} seg_name;

typedef struct names {
    seg_name *v;
    size_t n, cap;
} names;

/* newest UIDVALIDITY of a folder that has more than one, with the hashes recorded under it */
typedef struct newest {
    char folder[17];
    uint32_t uidvalidity;
    char (*hashes)[65];
    size_t n, cap;
} newest;

static int collect_name(void *ud, const char *name)
{
    names *l = ud;
    seg_name sn;
    memset(&sn, 0, sizeof sn);
    unsigned long v = 0;
    if (strlen(name) < 18 || name[16] != '-' || sscanf(name + 17, "%lu-", &v) != 1)
        return 0; /* not a segment name of ours: ignored */
    if (l->n == l->cap) {
        size_t nc = l->cap ? l->cap * 2 : 64;
        seg_name *nv = realloc(l->v, nc * sizeof *nv);
        if (!nv) return 1;
        l->v = nv;
        l->cap = nc;
    }
    memcpy(sn.folder, name, 16);
    sn.uidvalidity = (uint32_t)v;
    sn.name = strdup(name);
    if (!sn.name) return 1;
    l->v[l->n++] = sn;
    return 0;
}

static int cmp_hash(const void *a, const void *b)
{
    return memcmp(a, b, 64);
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

mv_err mv_archive_list(mv_store *s, const char *tenant, const char *mailbox, mv_archive_rec_fn cb,
                       void *ud, char *err, size_t errlen)
{
    names l = {0};
    newest *nw = NULL;
    size_t nnw = 0;
    mv_err rc = mv_store_segment_list(s, tenant, mailbox, collect_name, &l, err, errlen);
    if (rc == MV_ECANCEL) rc = mv_seterr(err, errlen, MV_ENOMEM, "out of memory listing segments");
    if (rc) goto out;

    /* pass 1, names only: folders with more than one UIDVALIDITY, and the newest of each */
    nw = calloc(l.n ? l.n : 1, sizeof *nw);
    if (!nw) {
        rc = MV_ENOMEM;
        goto out;
    }
    for (size_t i = 0; i < l.n; i++) {
        size_t j = 0;
        for (; j < nnw && strcmp(nw[j].folder, l.v[i].folder) != 0; j++)
            ;
        if (j == nnw) {
            memcpy(nw[nnw].folder, l.v[i].folder, 17);
            nw[nnw].uidvalidity = l.v[i].uidvalidity;
            nw[nnw].cap = 0; /* cap 0 = single generation so far */
            nnw++;
        } else if (nw[j].uidvalidity != l.v[i].uidvalidity) {
            nw[j].cap = 1; /* several generations */
            if (l.v[i].uidvalidity > nw[j].uidvalidity) nw[j].uidvalidity = l.v[i].uidvalidity;
        }
    }
    /* pass 2: the newest generation's hashes, for the folders that need them */
    for (size_t i = 0; i < l.n; i++) {
        newest *f = NULL;
        for (size_t j = 0; j < nnw && !f; j++)
            if (strcmp(nw[j].folder, l.v[i].folder) == 0) f = &nw[j];
        if (!f->cap || f->uidvalidity != l.v[i].uidvalidity) continue;
        mv_segment seg;
        if ((rc = load_segment(s, tenant, mailbox, l.v[i].name, &seg, err, errlen))) goto out;
        char(*nh)[65] = realloc(f->hashes, (f->n + seg.n + 1) * sizeof *nh);
        if (!nh) {
            mv_segment_free(&seg);
            rc = MV_ENOMEM;
            goto out;
        }
        f->hashes = nh;
        for (size_t k = 0; k < seg.n; k++)
            memcpy(f->hashes[f->n++], seg.recs[k].hash, 65);
        mv_segment_free(&seg);
    }
    for (size_t j = 0; j < nnw; j++)
        if (nw[j].n) qsort(nw[j].hashes, nw[j].n, 65, cmp_hash);

    /* pass 3: stream every segment, skipping older generations' repeats */
    for (size_t i = 0; i < l.n && !rc; i++) {
        newest *f = NULL;
        for (size_t j = 0; j < nnw && !f; j++)
            if (strcmp(nw[j].folder, l.v[i].folder) == 0) f = &nw[j];
        mv_segment seg;
        if ((rc = load_segment(s, tenant, mailbox, l.v[i].name, &seg, err, errlen))) goto out;
        int older = f->cap && seg.uidvalidity != f->uidvalidity;
        for (size_t k = 0; k < seg.n; k++) {
            if (older && f->n && bsearch(seg.recs[k].hash, f->hashes, f->n, 65, cmp_hash)) continue;
            if (cb(ud, &seg, &seg.recs[k])) {
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
    for (size_t j = 0; j < nnw; j++)
        free(nw[j].hashes);
    free(nw);
    return rc;
}

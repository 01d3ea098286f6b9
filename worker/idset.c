/* idset.c - a set of message ids (sorted array, sorted lazily). See idset.h. */
#include "idset.h"

#include <stdlib.h>
#include <string.h>

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

int idset_add(idset *s, const char *id)
{
    if (s->n == s->cap) {
        size_t nc = s->cap ? s->cap * 2 : 256;
        char **nv = realloc(s->v, nc * sizeof *nv);
        if (!nv) return 1;
        s->v = nv;
        s->cap = nc;
    }
    if (!(s->v[s->n] = strdup(id))) return 1;
    s->n++;
    s->sorted = 0;
    return 0;
}

int idset_has(idset *s, const char *id)
{
    if (s->n == 0) return 0; /* qsort/bsearch must not see a NULL array */
    if (!s->sorted) {
        qsort(s->v, s->n, sizeof *s->v, cmp_str);
        s->sorted = 1;
    }
    return bsearch(&id, s->v, s->n, sizeof *s->v, cmp_str) != NULL;
}

void idset_free(idset *s)
{
    for (size_t i = 0; i < s->n; i++)
        free(s->v[i]);
    free(s->v);
    memset(s, 0, sizeof *s);
}

int idlist_add(idlist *l, const char *id)
{
    for (size_t i = 0; i < l->n; i++)
        if (strcmp(l->ids[i], id) == 0) return 0;
    if (l->n == l->cap) {
        size_t nc = l->cap ? l->cap * 2 : 64;
        char **nv = realloc(l->ids, nc * sizeof *nv);
        if (!nv) return 1;
        l->ids = nv;
        l->cap = nc;
    }
    if (!(l->ids[l->n] = strdup(id))) return 1;
    l->n++;
    return 0;
}

void idlist_free(idlist *l)
{
    for (size_t i = 0; i < l->n; i++)
        free(l->ids[i]);
    free(l->ids);
    memset(l, 0, sizeof *l);
}

/* ms_json.h - internal: the JSON loader the Microsoft cloud clients (oauth.c, graph.c) share. */
#ifndef MV_MS_JSON_H
#define MV_MS_JSON_H

#include "mv/common.h"
#include <jansson.h>

/* Parse body as one JSON object (duplicate keys refused); MV_EPROTO naming what otherwise. */
mv_err mv_ms__load_object(const char *body, size_t len, const char *what, json_t **out, char *err,
                          size_t errlen);

#endif

/* itest.h - helpers shared by the C integration tests (tests/integration/test_*.c).
 *
 * Design: a header of static functions rather than a .c file, because tests/CMakeLists.txt
 * builds every tests/integration/test_*.c as its own executable and links nothing else; each
 * test includes this once. The stack script (compose/local/stack.sh start DIR) writes
 * DIR/env as KEY=VALUE lines (optionally "export " and quotes); ctest passes DIR as
 * MV_RUN_DIR. Tests fail, never skip, when a value they need is missing. */
#ifndef MV_ITEST_H
#define MV_ITEST_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Value of KEY in $MV_RUN_DIR/env (KEY=VALUE lines) copied into buf, or NULL. */
static inline const char *itest_env_get(const char *key, char *buf, size_t n)
{
    const char *dir = getenv("MV_RUN_DIR");
    if (!dir || !dir[0]) return NULL;
    char path[1024];
    snprintf(path, sizeof path, "%s/env", dir);
    FILE *f = fopen(path, "r");
    if (!f) return NULL;
    char line[1024];
    const char *found = NULL;
    size_t klen = strlen(key);
    while (!found && fgets(line, sizeof line, f)) {
        char *p = line;
        if (strncmp(p, "export ", 7) == 0) p += 7;
        if (strncmp(p, key, klen) != 0 || p[klen] != '=') continue;
        p += klen + 1;
        p[strcspn(p, "\r\n")] = '\0';
        size_t l = strlen(p);
        if (l >= 2 && (p[0] == '"' || p[0] == '\'') && p[l - 1] == p[0]) {
            p[l - 1] = '\0';
            p++;
        }
        snprintf(buf, n, "%s", p);
        found = buf;
    }
    fclose(f);
    return found;
}

/* itest_env_get, but on failure print why (naming the test) to stderr for a group setup to
 * return -1 on. */
static inline const char *itest_env_require(const char *test, const char *key, char *buf, size_t n)
{
    const char *v = itest_env_get(key, buf, n);
    if (!v) {
        const char *dir = getenv("MV_RUN_DIR");
        fprintf(stderr,
                "%s: MV_RUN_DIR is not set or $MV_RUN_DIR/env has no %s (MV_RUN_DIR=%s); start "
                "the stack with compose/local/stack.sh start DIR\n",
                test, key, dir ? dir : "(unset)");
    }
    return v;
}

#endif

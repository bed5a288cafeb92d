#include "status.h"

#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static _Thread_local char error_message[1024];

/* CVX_DEBUG=1 (read once, at the first error) appends the failing source location to every message. Users see the
 * message alone: the tag names a line of this library, not anything they can act on. */
static int debug_tags(void) {
    static atomic_int cached = -1;
    int v = atomic_load(&cached);
    if (v < 0) {
        const char *env = getenv("CVX_DEBUG");
        v = env && env[0] && strcmp(env, "0") != 0;
        atomic_store(&cached, v);
    }
    return v;
}

cvx_status cvx_error_set(cvx_status status, const char *file, int line, const char *fmt, ...) {
    /* Keep the first (innermost) error: callers that propagate it must not overwrite the cause. */
    if (error_message[0] != '\0') return status;
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(error_message, sizeof(error_message), fmt, ap);
    va_end(ap);
    if (debug_tags() && n >= 0 && (size_t)n < sizeof(error_message) - 1) {
        const char *base = strrchr(file, '/');
        snprintf(error_message + n, sizeof(error_message) - (size_t)n, " [%s:%d]", base ? base + 1 : file, line);
    }
    return status;
}

const char *cvx_error_message(void) { return error_message[0] ? error_message : "unknown error"; }

void cvx_error_clear(void) { error_message[0] = '\0'; }

const char *cvx_status_name(cvx_status status) {
    switch (status) {
    case CVX_OK: return "ok";
    case CVX_ERR_INVALID: return "invalid argument";
    case CVX_ERR_OOM: return "out of memory";
    case CVX_ERR_IO: return "i/o error";
    case CVX_ERR_INTERNAL: return "internal error";
    case CVX_ERR_INTERRUPTED: return "interrupted";
    }
    return "unknown status";
}

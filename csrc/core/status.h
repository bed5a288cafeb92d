/* Status codes and the thread-local error message.
 *
 * Every fallible C function returns a cvx_status. The first failure records what failed and why in a thread-local
 * buffer (and where, as a trailing [file.c:line] tag, when the environment has CVX_DEBUG=1); the Python glue turns
 * (status, message) into the matching exception. Library code never exits or aborts. */
#ifndef CVX_STATUS_H
#define CVX_STATUS_H

#include <stddef.h>

typedef enum cvx_status {
    CVX_OK = 0,
    CVX_ERR_INVALID = 1,     /* bad argument or shape: ValueError */
    CVX_ERR_OOM = 2,         /* allocation failed or memory limit reached: cogvideo_c.OutOfMemoryError */
    CVX_ERR_IO = 3,          /* file missing, unreadable, truncated or malformed: OSError */
    CVX_ERR_INTERNAL = 4,    /* a bug: RuntimeError */
    CVX_ERR_INTERRUPTED = 5, /* the caller asked the work to stop (Ctrl-C): KeyboardInterrupt */
} cvx_status;

/* Records the error (printf-style message, prefixed with nothing) and returns `status`, so that
 * `return CVX_FAIL(CVX_ERR_INVALID, "...")` reads naturally. */
cvx_status cvx_error_set(cvx_status status, const char *file, int line, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 4, 5)))
#endif
    ;
const char *cvx_error_message(void);
void cvx_error_clear(void);
const char *cvx_status_name(cvx_status status);

#define CVX_FAIL(status, ...) cvx_error_set((status), __FILE__, __LINE__, __VA_ARGS__)

/* Returns from the enclosing function on failure (nothing to clean up). */
#define CVX_CHECK(expr)                                                                                                \
    do {                                                                                                               \
        cvx_status cvx_check_st_ = (expr);                                                                             \
        if (cvx_check_st_ != CVX_OK) return cvx_check_st_;                                                             \
    } while (0)

/* Jumps to `fail` on failure; the function keeps its status in a variable named `st`. */
#define CVX_TRY(expr)                                                                                                  \
    do {                                                                                                               \
        st = (expr);                                                                                                   \
        if (st != CVX_OK) goto fail;                                                                                   \
    } while (0)

#endif

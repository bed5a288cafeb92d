/* A minimal test harness: each CVX_EXPECT is one counted check; a failed check prints where and what was measured.
 * A test binary ends with `return cvx_test_report();`, which prints "N passed, M failed" and returns nonzero when
 * any check failed. Sanitizer findings abort the binary, which fails the run too. */
#ifndef CVX_TEST_H
#define CVX_TEST_H

#include <stdio.h>

static long cvx_test_passed_;
static long cvx_test_failed_;

/* Counts one check; on failure prints file:line, the condition and a printf-style explanation. Evaluates to cond. */
#define CVX_EXPECT(cond, ...)                                                                                          \
    ((cond) ? (cvx_test_passed_++, 1)                                                                                  \
            : (cvx_test_failed_++, fflush(stdout), /* keep the order of progress lines and failures */                 \
               fprintf(stderr, "%s:%d: FAILED: %s: ", __FILE__, __LINE__, #cond), fprintf(stderr, __VA_ARGS__),        \
               fputc('\n', stderr), 0))

static inline int cvx_test_report(void) {
    printf("%ld passed, %ld failed\n", cvx_test_passed_, cvx_test_failed_);
    return cvx_test_failed_ != 0;
}

#endif

/* A minimal test harness: each CVX_EXPECT is one counted check; a failed check prints where and what was measured.
 * A test binary ends with `return cvx_test_report();`, which prints "N passed, M failed" and returns nonzero when
 * any check failed. Sanitizer findings abort the binary, which fails the run too.
 *
 * Below the harness, the helpers the numeric tests share: random fills, memory-manager statistics, host allocation
 * and the checks against a reference computed in double. */
#ifndef CVX_TEST_H
#define CVX_TEST_H

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "../../csrc/mem/mem.h"

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

/* ---------------------------------------------------------------------------------------------------------------- */
/* shared helpers */

/* frand's xorshift64 starting state; a test picks its own sequence by defining CVX_TEST_SEED before the include. */
#ifndef CVX_TEST_SEED
#define CVX_TEST_SEED 0x9e3779b97f4a7c15ull
#endif
static uint64_t cvx_test_rng_ = CVX_TEST_SEED;

/* uniform in [-1, 1) */
static inline float frand(void) {
    cvx_test_rng_ ^= cvx_test_rng_ << 13;
    cvx_test_rng_ ^= cvx_test_rng_ >> 7;
    cvx_test_rng_ ^= cvx_test_rng_ << 17;
    return (float)((double)(cvx_test_rng_ >> 11) / (double)(1ull << 53) * 2.0 - 1.0);
}

static inline void fill(float *p, int64_t n, float scale, float offset) {
    for (int64_t i = 0; i < n; i++) p[i] = frand() * scale + offset;
}

static inline cvx_mem_stats stats(cvx_device dev) {
    cvx_mem_stats s;
    cvx_mem_get_stats(dev, &s);
    return s;
}

static inline int64_t live_bytes(void) { return stats(CVX_DEVICE_CPU).allocated_bytes; }
static inline int64_t peak_bytes(void) { return stats(CVX_DEVICE_CPU).peak_allocated_bytes; }

/* malloc that exits the test on failure */
static inline void *xmalloc(size_t n) {
    void *p = malloc(n ? n : 1);
    if (!p) {
        fprintf(stderr, "out of host memory\n");
        exit(2);
    }
    return p;
}

/* max |got - ref| / max |ref| over n values (a non-finite value counts as an infinite difference), printed and
 * checked against tol */
static inline void expect_close_tol(const char *what, const float *got, const double *ref, int64_t n, double tol) {
    double maxdiff = 0.0, maxref = 0.0;
    int64_t worst = 0;
    int finite = 1;
    for (int64_t i = 0; i < n; i++) {
        double d = fabs((double)got[i] - ref[i]);
        if (!isfinite(got[i])) finite = 0, d = INFINITY;
        if (d > maxdiff) maxdiff = d, worst = i;
        if (fabs(ref[i]) > maxref) maxref = fabs(ref[i]);
    }
    double rel = maxref > 0 ? maxdiff / maxref : maxdiff;
    printf("  %-62s max|diff| %.3g (rel %.3g, max|ref| %.3g, %lld values)\n", what, maxdiff, rel, maxref, (long long)n);
    CVX_EXPECT(finite, "%s: non-finite output at %lld", what, (long long)worst);
    CVX_EXPECT(rel <= tol, "%s: relative difference %.3g at %lld (got %.8g, want %.8g)", what, rel, (long long)worst,
               n ? (double)got[worst] : 0.0, n ? ref[worst] : 0.0);
}

/* no CPU memory-manager bytes live beyond `base` (live_bytes() taken before the step checked) */
static inline void expect_no_leak(const char *what, int64_t base) {
    int64_t now = live_bytes();
    CVX_EXPECT(now == base, "%s: %lld bytes left allocated", what, (long long)(now - base));
}

#endif

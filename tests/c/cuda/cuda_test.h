/* What the CUDA op tests share (tests/c/cuda/test_cuda_*.c): the device (real, or the CPU emulation of
 * csrc/ops/cuda/emu), device buffers through the memory manager, a ctx on the CUDA backend and the comparison of a
 * CUDA op's output with its CPU twin's. Each test runs every op on both backends on the same inputs. */
#ifndef CVX_CUDA_TEST_H
#define CVX_CUDA_TEST_H

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../../csrc/ops/cuda/cuda_ops.h"
#include "../cvx_test.h"

/* 1 when a CUDA device (real or emulated) is there and initialised; otherwise prints why the binary skips. */
static inline int cuda_test_begin(void) {
    if (cvx_cuda_device_count() == 0) {
        printf("no CUDA device: skipped\n");
        return 0;
    }
    if (cvx_cuda_init(0) != CVX_OK) {
        printf("cvx_cuda_init failed: %s\n", cvx_error_message());
        exit(1);
    }
    return 1;
}

/* The forward context of a CUDA op test: the CUDA table, no arena (allocations straight from the memory manager),
 * the given compute dtype. */
static inline cvx_ctx cuda_ctx(cvx_dtype compute) {
    cvx_ctx c;
    memset(&c, 0, sizeof(c));
    c.be = &cvx_backend_cuda;
    c.device = CVX_DEVICE_CUDA;
    c.compute = compute;
    return c;
}

/* A device copy of host bytes (activation memory of the CUDA device); exits on failure (a test bug). */
static inline void *dev_upload_bytes(const void *host, size_t bytes) {
    void *d = NULL;
    if (cvx_mem_alloc(CVX_DEVICE_CUDA, CVX_MEM_ACTIVATIONS, bytes, &d) != CVX_OK ||
        (host && cvx_mem_copy(d, host, bytes) != CVX_OK)) {
        fprintf(stderr, "device upload of %zu bytes failed: %s\n", bytes, cvx_error_message());
        exit(1);
    }
    return d;
}
static inline float *dev_upload(const float *host, int64_t n) {
    return (float *)dev_upload_bytes(host, (size_t)n * sizeof(float));
}
static inline void dev_download(void *host, const void *dev, size_t bytes) {
    if (cvx_mem_copy(host, dev, bytes) != CVX_OK) {
        fprintf(stderr, "device download of %zu bytes failed: %s\n", bytes, cvx_error_message());
        exit(1);
    }
}

/* max |got - ref| / max |ref| <= tol, and every value finite; prints the measured error. */
static inline int expect_rel(const char *what, const float *got, const float *ref, int64_t n, double tol) {
    double worst = 0.0, scale = 0.0;
    int64_t bad = 0;
    for (int64_t i = 0; i < n; i++) {
        if (!isfinite(got[i])) bad++;
        const double d = fabs((double)got[i] - (double)ref[i]);
        if (d > worst) worst = d;
        if (fabs((double)ref[i]) > scale) scale = fabs((double)ref[i]);
    }
    const double rel = scale > 0 ? worst / scale : worst;
    printf("  %-52s max rel err %.3g (tol %.0e)\n", what, rel, tol);
    return CVX_EXPECT(bad == 0 && rel <= tol, "%s: %lld non-finite values, max rel err %.3g > %.0e", what,
                      (long long)bad, rel, tol);
}

#endif

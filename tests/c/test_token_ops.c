/* The transformer's token ops (csrc/ops/ops.h, "token ops") against naive reference loops accumulated in double.
 *
 * Each numeric check prints the largest difference from the reference, relative to the reference's largest
 * magnitude, and fails past its tolerance. The ops that allocate (cvx_linear with 16-bit weights, cvx_attention)
 * are checked to release their scratch, to stay within their documented working memory and to fail with
 * CVX_ERR_OOM without leaking when the memory manager refuses; the others must allocate nothing. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../csrc/core/dtype.h"
#include "../../csrc/mem/mem.h"
#include "../../csrc/ops/backend.h"

#define CVX_TEST_SEED 0x9e3779b97f4a7c15ull
#include "cvx_test.h"

/* The ops run on the CPU backend, their scratch and outputs straight from the memory manager (no arena). */
static cvx_ctx CTX = {.be = &cvx_backend_cpu, .device = CVX_DEVICE_CPU};

#define TOL 1e-4

static void fill_nan(float *p, int64_t n) {
    for (int64_t i = 0; i < n; i++) p[i] = NAN;
}

static void expect_close(const char *what, const float *got, const double *ref, int64_t n) {
    expect_close_tol(what, got, ref, n, TOL);
}

/* element-wise: |got - ref| <= rtol |ref| + atol for every value (for the element-wise activations) */
static void expect_close_each(const char *what, const float *got, const double *ref, int64_t n, double rtol,
                              double atol) {
    double worst_ratio = 0.0;
    int64_t worst = 0, bad = 0;
    for (int64_t i = 0; i < n; i++) {
        const double allowed = rtol * fabs(ref[i]) + atol;
        const double d = isfinite(got[i]) ? fabs((double)got[i] - ref[i]) : INFINITY;
        if (d > allowed) bad++;
        if (d / allowed > worst_ratio) worst_ratio = d / allowed, worst = i;
    }
    printf("  %-62s worst |diff| / (%.0e |ref| + %.0e) = %.3g (%lld values)\n", what, rtol, atol, worst_ratio,
           (long long)n);
    CVX_EXPECT(bad == 0, "%s: %lld values out of tolerance, worst at %lld (got %.9g, want %.9g)", what, (long long)bad,
               (long long)worst, n ? (double)got[worst] : 0.0, n ? ref[worst] : 0.0);
}

/* an op that must not touch the memory manager at all */
static void expect_no_alloc(const char *what, const cvx_mem_stats *before) {
    const cvx_mem_stats now = stats(CVX_DEVICE_CPU);
    CVX_EXPECT(now.num_allocs == before->num_allocs && now.allocated_bytes == before->allocated_bytes,
               "%s: %lld allocations made", what, (long long)(now.num_allocs - before->num_allocs));
}

/* a value narrowed to dt and widened back (what the op computes with) */
static float narrowed(float v, cvx_dtype dt, uint16_t *bits) {
    if (dt == CVX_F16) {
        *bits = cvx_f32_to_f16(v);
        return cvx_f16_to_f32(*bits);
    }
    if (dt == CVX_BF16) {
        *bits = cvx_f32_to_bf16(v);
        return cvx_bf16_to_f32(*bits);
    }
    *bits = 0;
    return v;
}

/* ---------------------------------------------------------------------------------------------------------------- */
/* linear */

typedef struct linear_case {
    const char *name;
    int64_t M, K, N;
    cvx_dtype wdt;
    int bias;
} linear_case;

static void run_linear_case(const linear_case *lc) {
    const int64_t M = lc->M, K = lc->K, N = lc->N;
    float *x = xmalloc((size_t)(M * K) * sizeof(float));
    float *w32 = xmalloc((size_t)(N * K) * sizeof(float));
    uint16_t *w16 = xmalloc((size_t)(N * K) * sizeof(uint16_t));
    float *b32 = xmalloc((size_t)N * sizeof(float));
    uint16_t *b16 = xmalloc((size_t)N * sizeof(uint16_t));
    float *y = xmalloc((size_t)(M * N) * sizeof(float));
    double *ref = xmalloc((size_t)(M * N) * sizeof(double));
    fill(x, M * K, 1.0f, 0.0f);
    const float wscale = 1.0f / sqrtf((float)K);
    for (int64_t i = 0; i < N * K; i++) w32[i] = narrowed(frand() * wscale, lc->wdt, &w16[i]);
    for (int64_t i = 0; i < N; i++) b32[i] = narrowed(frand(), lc->wdt, &b16[i]);
    const float *xin = x;
    for (int64_t m = 0; m < M; m++)
        for (int64_t n = 0; n < N; n++) {
            double acc = lc->bias ? (double)b32[n] : 0.0;
            for (int64_t k = 0; k < K; k++) acc += (double)xin[m * K + k] * (double)w32[n * K + k];
            ref[m * N + n] = acc;
        }
    float *xcopy = xmalloc((size_t)(M * K) * sizeof(float));
    memcpy(xcopy, x, (size_t)(M * K) * sizeof(float));

    /* the block geometry linear.c uses, to report and to bound its scratch */
    int64_t nb = CVX_LINEAR_WEIGHT_BYTES / (K * 4);
    nb = nb < 16 ? 16 : nb - nb % 16;
    if (nb > N) nb = N;
    const int64_t mb = M < CVX_LINEAR_ROWS ? M : CVX_LINEAR_ROWS;
    const int64_t row_blocks = (M + mb - 1) / mb, col_blocks = (N + nb - 1) / nb;

    fill_nan(y, M * N); /* every output must be written, with or without bias */
    const cvx_mem_stats before = stats(CVX_DEVICE_CPU);
    cvx_mem_reset_peak(CVX_DEVICE_CPU);
    const void *w = lc->wdt == CVX_F32 ? (const void *)w32 : (const void *)w16;
    const void *bias = !lc->bias ? NULL : lc->wdt == CVX_F32 ? (const void *)b32 : (const void *)b16;
    cvx_status st = cvx_linear(&CTX, x, M, K, w, lc->wdt, bias, N, y);
    CVX_EXPECT(st == CVX_OK, "%s: status %d: %s", lc->name, (int)st, cvx_error_message());
    char what[160];
    snprintf(what, sizeof(what), "linear %s (%lldx%lld blocks of %lldx%lld)", lc->name, (long long)row_blocks,
             (long long)col_blocks, (long long)mb, (long long)nb);
    expect_close(what, y, ref, M * N);
    CVX_EXPECT(memcmp(x, xcopy, (size_t)(M * K) * sizeof(float)) == 0, "%s: x untouched", lc->name);
    expect_no_leak(lc->name, before.allocated_bytes);
    if (lc->wdt == CVX_F32) {
        expect_no_alloc(lc->name, &before);
    } else {
        /* one widened weight block and bias block per thread */
        const int64_t bound = (int64_t)cvx_ops_num_threads() * (nb * K + nb) * 4;
        CVX_EXPECT(peak_bytes() - before.allocated_bytes <= bound, "%s: peak working memory %lld > %lld", lc->name,
                   (long long)(peak_bytes() - before.allocated_bytes), (long long)bound);
    }
    free(x);
    free(xcopy);
    free(w32);
    free(w16);
    free(b32);
    free(b16);
    free(y);
    free(ref);
}

static void test_linear(void) {
    static const linear_case cases[] = {
        /* name                                                 M    K      N    wdt    bias */
        {"f32, bias, 1 row", 1, 48, 24, CVX_F32, 1},
        {"f32, no bias", 7, 33, 19, CVX_F32, 0},
        {"f16, bias", 9, 64, 40, CVX_F16, 1},
        {"bf16, bias", 9, 64, 40, CVX_BF16, 1},
        {"f16, no bias", 5, 40, 17, CVX_F16, 0},
        {"bf16, no bias", 5, 40, 17, CVX_BF16, 0},
        /* K = 4000: 4 MiB / 16000 B = 262 columns, rounded down to 256; N = 300 -> 256 + 44; M = 600 -> 512 + 88
         * rows (CVX_LINEAR_WEIGHT_BYTES, CVX_LINEAR_ROWS) */
        {"f32, bias, M=600 K=4000 N=300", 600, 4000, 300, CVX_F32, 1},
        {"f16, bias, M=600 K=4000 N=300", 600, 4000, 300, CVX_F16, 1},
        {"bf16, no bias, M=520 K=4000 N=300", 520, 4000, 300, CVX_BF16, 0},
        {"f32, no bias, M=513 K=1024 N=257", 513, 1024, 257, CVX_F32, 0},
        /* K large: 4 MiB holds fewer than 16 rows of W, so a block is 16 columns */
        {"f16, bias, K=65536 (16 columns exactly)", 3, 65536, 40, CVX_F16, 1},
        {"bf16, bias, K=80000 (13 -> 16 columns)", 3, 80000, 35, CVX_BF16, 1},
        {"f32, bias, K=80000", 3, 80000, 35, CVX_F32, 1},
        {"f16, no bias, K=48000 M=520 (2 row blocks)", 520, 48000, 18, CVX_F16, 0},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) run_linear_case(&cases[i]);
}

static void test_linear_edges_and_oom(void) {
    /* M = 0 or N = 0: nothing to do, nothing allocated */
    float x[8] = {1, 2, 3, 4, 5, 6, 7, 8}, y[8];
    uint16_t w16[8] = {0};
    cvx_mem_stats before = stats(CVX_DEVICE_CPU);
    CVX_EXPECT(cvx_linear(&CTX, x, 0, 4, w16, CVX_F16, NULL, 2, y) == CVX_OK, "linear M=0");
    CVX_EXPECT(cvx_linear(&CTX, x, 2, 4, w16, CVX_F16, NULL, 0, y) == CVX_OK, "linear N=0");
    expect_no_alloc("linear M=0 / N=0", &before);

    /* the widened weight block refused: CVX_ERR_OOM, nothing allocated or left */
    const int64_t M = 300, K = 64, N = 50;
    float *xs = xmalloc((size_t)(M * K) * sizeof(float)), *ys = xmalloc((size_t)(M * N) * sizeof(float));
    uint16_t *ws = xmalloc((size_t)(N * K) * sizeof(uint16_t)), bs[50];
    fill(xs, M * K, 1.0f, 0.0f);
    for (int64_t i = 0; i < N * K; i++) ws[i] = cvx_f32_to_bf16(frand() * 0.1f);
    for (int64_t i = 0; i < N; i++) bs[i] = cvx_f32_to_bf16(frand());
    const int64_t scratch = (int64_t)cvx_ops_num_threads() * (N * K + N) * 4;
    before = stats(CVX_DEVICE_CPU);
    const int64_t limits[] = {1, scratch - 1};
    for (size_t i = 0; i < 2; i++) {
        cvx_mem_set_limit(CVX_DEVICE_CPU, before.allocated_bytes + limits[i]);
        cvx_error_clear();
        cvx_status st = cvx_linear(&CTX, xs, M, K, ws, CVX_BF16, bs, N, ys);
        cvx_mem_set_limit(CVX_DEVICE_CPU, 0);
        CVX_EXPECT(st == CVX_ERR_OOM, "linear OOM (limit +%lld): status %d", (long long)limits[i], (int)st);
        if (i == 0) printf("  linear with the scratch refused -> %s\n", cvx_error_message());
        expect_no_leak("linear OOM", before.allocated_bytes);
        CVX_EXPECT(stats(CVX_DEVICE_CPU).num_allocs == before.num_allocs, "linear OOM: nothing allocated");
    }
    cvx_error_clear();
    /* exactly the scratch it needs: fits */
    cvx_mem_set_limit(CVX_DEVICE_CPU, before.allocated_bytes + scratch);
    cvx_status st = cvx_linear(&CTX, xs, M, K, ws, CVX_BF16, bs, N, ys);
    cvx_mem_set_limit(CVX_DEVICE_CPU, 0);
    CVX_EXPECT(st == CVX_OK, "linear with exactly its scratch: status %d: %s", (int)st, cvx_error_message());
    expect_no_leak("linear at the limit", before.allocated_bytes);
    /* f32 weights need no scratch: they run under a limit of zero bytes more */
    float *w32 = xmalloc((size_t)(N * K) * sizeof(float));
    for (int64_t i = 0; i < N * K; i++) w32[i] = cvx_bf16_to_f32(ws[i]);
    cvx_mem_set_limit(CVX_DEVICE_CPU, before.allocated_bytes > 0 ? before.allocated_bytes : 1);
    st = cvx_linear(&CTX, xs, M, K, w32, CVX_F32, NULL, N, ys);
    cvx_mem_set_limit(CVX_DEVICE_CPU, 0);
    CVX_EXPECT(st == CVX_OK, "f32 linear under a full limit: status %d", (int)st);
    cvx_error_clear();
    free(xs);
    free(ys);
    free(ws);
    free(w32);
}

/* ---------------------------------------------------------------------------------------------------------------- */
/* layer norm */

typedef struct ln_case {
    const char *name;
    int64_t rows, D;
    int affine, gamma_only, modulate, inplace;
    float offset, spread;
} ln_case;

static void run_ln_case(const ln_case *lc) {
    const int64_t rows = lc->rows, D = lc->D, n = rows * D;
    const float eps = 1e-5f;
    float *x = xmalloc((size_t)n * sizeof(float)), *y = xmalloc((size_t)n * sizeof(float));
    float *gamma = xmalloc((size_t)D * sizeof(float)), *beta = xmalloc((size_t)D * sizeof(float));
    float *scale = xmalloc((size_t)D * sizeof(float)), *shift = xmalloc((size_t)D * sizeof(float));
    double *ref = xmalloc((size_t)n * sizeof(double));
    fill(x, n, lc->spread, lc->offset);
    fill(gamma, D, 0.5f, 1.0f);
    fill(beta, D, 0.5f, 0.0f);
    fill(scale, D, 0.8f, 0.0f);
    fill(shift, D, 1.0f, 0.0f);
    const int use_gamma = lc->affine || lc->gamma_only, use_beta = lc->affine;
    for (int64_t r = 0; r < rows; r++) {
        double mean = 0.0, var = 0.0;
        for (int64_t i = 0; i < D; i++) mean += x[r * D + i];
        mean /= (double)D;
        for (int64_t i = 0; i < D; i++) var += ((double)x[r * D + i] - mean) * ((double)x[r * D + i] - mean);
        var /= (double)D;
        const double rstd = 1.0 / sqrt(var + (double)eps);
        for (int64_t i = 0; i < D; i++) {
            double v = ((double)x[r * D + i] - mean) * rstd;
            if (use_gamma) v *= gamma[i];
            if (use_beta) v += beta[i];
            if (lc->modulate) v = v * (1.0 + (double)scale[i]) + (double)shift[i];
            ref[r * D + i] = v;
        }
    }
    float *xcopy = xmalloc((size_t)n * sizeof(float));
    memcpy(xcopy, x, (size_t)n * sizeof(float));
    float *out = lc->inplace ? x : y;
    if (!lc->inplace) fill_nan(y, n);
    const cvx_mem_stats before = stats(CVX_DEVICE_CPU);
    cvx_layer_norm(&CTX, x, rows, D, eps, use_gamma ? gamma : NULL, use_beta ? beta : NULL, CVX_F32,
                   lc->modulate ? scale : NULL, lc->modulate ? shift : NULL, out);
    char what[160];
    snprintf(what, sizeof(what), "layer_norm %s", lc->name);
    expect_close(what, out, ref, n);
    expect_no_alloc(what, &before);
    if (!lc->inplace) CVX_EXPECT(memcmp(x, xcopy, (size_t)n * sizeof(float)) == 0, "%s: x untouched", lc->name);
    free(x);
    free(y);
    free(xcopy);
    free(gamma);
    free(beta);
    free(scale);
    free(shift);
    free(ref);
}

static void test_layer_norm(void) {
    static const ln_case cases[] = {
        /* name                                   rows  D   affine gamma_only modulate inplace offset spread */
        {"no affine", 37, 64, 0, 0, 0, 0, 0.0f, 1.0f},
        {"affine", 37, 96, 1, 0, 0, 0, 0.5f, 2.0f},
        {"gamma only (beta NULL)", 11, 40, 0, 1, 0, 0, 0.0f, 1.0f},
        {"affine + modulation", 50, 128, 1, 0, 1, 0, 0.0f, 1.0f},
        {"no affine + modulation", 50, 72, 0, 0, 1, 0, -1.0f, 3.0f},
        {"no affine, in place", 23, 64, 0, 0, 0, 1, 0.0f, 1.0f},
        {"affine, in place", 23, 64, 1, 0, 0, 1, 2.0f, 0.5f},
        {"affine + modulation, in place", 45, 200, 1, 0, 1, 1, 0.0f, 1.0f},
        {"no affine + modulation, in place", 8, 3072, 0, 0, 1, 1, 0.0f, 1.0f},
        {"affine, 1 row, D=1 (output = beta)", 1, 1, 1, 0, 0, 0, 3.0f, 1.0f},
        {"affine, D=2", 9, 2, 1, 0, 0, 0, 0.0f, 1.0f},
        {"offset 100, spread 1e-1", 16, 64, 1, 0, 0, 0, 100.0f, 0.1f},
        {"qk-norm shape: 1 row per head, hd=64", 128, 64, 1, 0, 0, 1, 0.0f, 4.0f},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) run_ln_case(&cases[i]);
    /* rows = 0 writes nothing */
    float z = 7.0f;
    cvx_layer_norm(&CTX, &z, 0, 1, 1e-5f, NULL, NULL, CVX_F32, NULL, NULL, &z);
    CVX_EXPECT(z == 7.0f, "layer_norm rows=0 writes nothing");
}

/* ---------------------------------------------------------------------------------------------------------------- */
/* gated add, SiLU, GELU */

static void test_gated_add(void) {
    const int64_t rows = 41, D = 96, n = rows * D;
    float *x = xmalloc((size_t)n * sizeof(float)), *y = xmalloc((size_t)n * sizeof(float));
    float *gate = xmalloc((size_t)D * sizeof(float)), *ycopy = xmalloc((size_t)n * sizeof(float));
    double *ref = xmalloc((size_t)n * sizeof(double));
    for (int with_gate = 1; with_gate >= 0; with_gate--) {
        fill(x, n, 2.0f, 0.0f);
        fill(y, n, 3.0f, 0.0f);
        fill(gate, D, 1.5f, 0.0f);
        memcpy(ycopy, y, (size_t)n * sizeof(float));
        for (int64_t r = 0; r < rows; r++)
            for (int64_t i = 0; i < D; i++)
                ref[r * D + i] = (double)x[r * D + i] + (with_gate ? (double)gate[i] : 1.0) * (double)y[r * D + i];
        const cvx_mem_stats before = stats(CVX_DEVICE_CPU);
        cvx_gated_add(&CTX, x, with_gate ? gate : NULL, y, rows, D);
        const char *what = with_gate ? "gated_add, gate [D]" : "gated_add, NULL gate (plain add)";
        expect_close(what, x, ref, n);
        expect_no_alloc(what, &before);
        CVX_EXPECT(memcmp(y, ycopy, (size_t)n * sizeof(float)) == 0, "%s: y untouched", what);
    }
    /* a NULL gate adds exactly */
    fill(x, n, 2.0f, 0.0f);
    fill(y, n, 3.0f, 0.0f);
    int64_t bad = 0;
    float *xcopy = xmalloc((size_t)n * sizeof(float));
    memcpy(xcopy, x, (size_t)n * sizeof(float));
    cvx_gated_add(&CTX, x, NULL, y, rows, D);
    for (int64_t i = 0; i < n; i++) bad += x[i] != xcopy[i] + y[i];
    CVX_EXPECT(bad == 0, "gated_add NULL gate: %lld values differ from the f32 sum", (long long)bad);
    free(x);
    free(y);
    free(gate);
    free(ycopy);
    free(xcopy);
    free(ref);
}

static double ref_silu(double v) { return v / (1.0 + exp(-v)); }
static double ref_gelu_tanh(double v) {
    return 0.5 * v * (1.0 + tanh(sqrt(2.0 / 3.14159265358979323846) * (v + 0.044715 * v * v * v)));
}

static void test_activations(void) {
    /* a dense sweep of [-12, 12), random values, and extremes where exp/tanh saturate or x^3 overflows */
    const float extremes[] = {0.0f,  -0.0f,  1e-30f, -1e-30f, 1e-7f, -1e-7f, 20.0f,  -20.0f,
                              50.0f, -50.0f, 88.0f,  -88.0f,  89.0f, -89.0f, 100.0f, -100.0f,
                              1e4f,  -1e4f,  1e13f,  -1e13f,  1e30f, -1e30f, 3e38f,  -3e38f};
    const int64_t ne = (int64_t)(sizeof(extremes) / sizeof(extremes[0]));
    const int64_t nsweep = 24000, nrand = 5001, n = nsweep + nrand + ne;
    float *src = xmalloc((size_t)n * sizeof(float)), *x = xmalloc((size_t)n * sizeof(float));
    double *ref = xmalloc((size_t)n * sizeof(double));
    for (int64_t i = 0; i < nsweep; i++) src[i] = -12.0f + (float)i * (24.0f / (float)nsweep);
    fill(src + nsweep, nrand, 6.0f, 0.0f);
    memcpy(src + nsweep + nrand, extremes, sizeof(extremes));
    const int64_t nmod = nsweep + nrand; /* the part compared relative to the max magnitude */
    for (int f = 0; f < 2; f++) {
        const char *name = f == 0 ? "silu" : "gelu_tanh";
        for (int64_t i = 0; i < n; i++) ref[i] = f == 0 ? ref_silu(src[i]) : ref_gelu_tanh(src[i]);
        memcpy(x, src, (size_t)n * sizeof(float));
        const cvx_mem_stats before = stats(CVX_DEVICE_CPU);
        if (f == 0)
            cvx_silu(&CTX, x, n);
        else
            cvx_gelu_tanh(&CTX, x, n);
        expect_no_alloc(name, &before);
        char what[120];
        snprintf(what, sizeof(what), "%s on [-12, 12] and random", name);
        expect_close(what, x, ref, nmod);
        /* element-wise: a few f32 ulps, with an absolute floor for the values where the result cancels to ~0
         * (the tanh form rounds 1 + tanh(...) in f32 as torch does) */
        snprintf(what, sizeof(what), "%s element-wise, extremes included", name);
        expect_close_each(what, x, ref, n, 1e-5, 1e-6);
        int64_t signs = 0;
        for (int64_t i = 0; i < n; i++) signs += src[i] > 0 && !(x[i] > 0);
        CVX_EXPECT(signs == 0, "%s: %lld positive inputs without positive output", name, (long long)signs);
        /* n = 0 touches nothing */
        float z = 5.0f;
        if (f == 0)
            cvx_silu(&CTX, &z, 0);
        else
            cvx_gelu_tanh(&CTX, &z, 0);
        CVX_EXPECT(z == 5.0f, "%s n=0 writes nothing", name);
    }
    free(src);
    free(x);
    free(ref);
}

/* ---------------------------------------------------------------------------------------------------------------- */
/* rope */

typedef struct rope_case {
    const char *name;
    int64_t rows;
    int heads, hd;
    int64_t pad;          /* ld = heads * hd + pad */
    int diffusers_tables; /* 1: cos/sin[2k] == cos/sin[2k+1] (repeat_interleave); 0: independent values */
} rope_case;

static void run_rope_case(const rope_case *rc) {
    const int64_t rows = rc->rows, hd = rc->hd, D = (int64_t)rc->heads * hd, ld = D + rc->pad, n = rows * ld;
    float *x = xmalloc((size_t)n * sizeof(float)), *xcopy = xmalloc((size_t)n * sizeof(float));
    float *c = xmalloc((size_t)(rows * hd) * sizeof(float)), *s = xmalloc((size_t)(rows * hd) * sizeof(float));
    double *ref = xmalloc((size_t)(rows * D) * sizeof(double));
    float *got = xmalloc((size_t)(rows * D) * sizeof(float));
    fill(x, n, 2.0f, 0.0f);
    memcpy(xcopy, x, (size_t)n * sizeof(float));
    for (int64_t r = 0; r < rows; r++)
        for (int64_t k = 0; k < hd; k += 2) {
            if (rc->diffusers_tables) {
                const double theta = (double)r * pow(10000.0, -(double)k / (double)hd);
                c[r * hd + k] = c[r * hd + k + 1] = (float)cos(theta);
                s[r * hd + k] = s[r * hd + k + 1] = (float)sin(theta);
            } else {
                /* distinct entries catch an op reading cos/sin at the wrong index of the pair */
                c[r * hd + k] = frand(), c[r * hd + k + 1] = frand();
                s[r * hd + k] = frand(), s[r * hd + k + 1] = frand();
            }
        }
    for (int64_t r = 0; r < rows; r++)
        for (int h = 0; h < rc->heads; h++)
            for (int64_t k = 0; k < hd; k += 2) {
                const double re = xcopy[r * ld + h * hd + k], im = xcopy[r * ld + h * hd + k + 1];
                ref[r * D + h * hd + k] = re * c[r * hd + k] - im * s[r * hd + k];
                ref[r * D + h * hd + k + 1] = im * c[r * hd + k + 1] + re * s[r * hd + k + 1];
            }
    const cvx_mem_stats before = stats(CVX_DEVICE_CPU);
    cvx_rope(&CTX, x, rows, ld, rc->heads, rc->hd, c, s);
    expect_no_alloc(rc->name, &before);
    for (int64_t r = 0; r < rows; r++) memcpy(got + r * D, x + r * ld, (size_t)D * sizeof(float));
    char what[160];
    snprintf(what, sizeof(what), "rope %s", rc->name);
    expect_close(what, got, ref, rows * D);
    int64_t touched = 0;
    for (int64_t r = 0; r < rows; r++)
        for (int64_t i = D; i < ld; i++) touched += memcmp(&x[r * ld + i], &xcopy[r * ld + i], sizeof(float)) != 0;
    CVX_EXPECT(touched == 0, "%s: %lld values past heads*hd changed", rc->name, (long long)touched);
    free(x);
    free(xcopy);
    free(c);
    free(s);
    free(ref);
    free(got);
}

static void test_rope(void) {
    static const rope_case cases[] = {
        /* name                                                    rows heads hd pad tables */
        {"1 head hd=8, ld = hd", 5, 1, 8, 0, 0},
        {"3 heads hd=16, ld = 3*16 + 5, independent tables", 7, 3, 16, 5, 0},
        {"2 heads hd=64, ld = 3*128 (q of a packed qkv row)", 33, 2, 64, 256, 0},
        {"4 heads hd=32, diffusers tables (theta 10000)", 40, 4, 32, 0, 1},
        {"2 heads hd=2, ld = 7", 9, 2, 2, 3, 0},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) run_rope_case(&cases[i]);
    /* a rotation keeps each pair's norm with diffusers-style tables */
    float v[4] = {3.0f, 4.0f, -1.0f, 2.0f}, cs[4], sn[4];
    const double t[2] = {0.7, -2.1};
    for (int k = 0; k < 2; k++) {
        cs[2 * k] = cs[2 * k + 1] = (float)cos(t[k]);
        sn[2 * k] = sn[2 * k + 1] = (float)sin(t[k]);
    }
    cvx_rope(&CTX, v, 1, 4, 1, 4, cs, sn);
    CVX_EXPECT(fabs(hypot(v[0], v[1]) - 5.0) < 1e-5 && fabs(hypot(v[2], v[3]) - sqrt(5.0)) < 1e-5,
               "rope keeps pair norms: %g %g", hypot(v[0], v[1]), hypot(v[2], v[3]));
}

/* ---------------------------------------------------------------------------------------------------------------- */
/* attention */

/* out[b, i, h*hd + d] = sum_j softmax_j(q_i . k_j * scale) v[b, j, h*hd + d], in double */
static void ref_attention(const float *q, const float *k, const float *v, int64_t B, int64_t S, int heads, int hd,
                          float scale, double *out) {
    const int64_t D = (int64_t)heads * hd;
    double *p = xmalloc((size_t)S * sizeof(double));
    for (int64_t b = 0; b < B; b++)
        for (int h = 0; h < heads; h++)
            for (int64_t i = 0; i < S; i++) {
                const float *qi = q + (b * S + i) * D + (int64_t)h * hd;
                double mx = -INFINITY;
                for (int64_t j = 0; j < S; j++) {
                    const float *kj = k + (b * S + j) * D + (int64_t)h * hd;
                    double dot = 0.0;
                    for (int d = 0; d < hd; d++) dot += (double)qi[d] * (double)kj[d];
                    p[j] = dot * (double)scale;
                    if (p[j] > mx) mx = p[j];
                }
                double sum = 0.0;
                for (int64_t j = 0; j < S; j++) sum += p[j] = exp(p[j] - mx);
                double *o = out + (b * S + i) * D + (int64_t)h * hd;
                for (int d = 0; d < hd; d++) o[d] = 0.0;
                for (int64_t j = 0; j < S; j++) {
                    const float *vj = v + (b * S + j) * D + (int64_t)h * hd;
                    const double w = p[j] / sum;
                    for (int d = 0; d < hd; d++) o[d] += w * (double)vj[d];
                }
            }
    free(p);
}

typedef struct attn_case {
    const char *name;
    int64_t B, S;
    int heads, hd;
    float qk_scale; /* q and k are uniform in [-qk_scale, qk_scale) */
    int ramp;       /* 1: key j scaled by 1 + 2 j / S, so later key tiles raise the running max */
    double tol;
} attn_case;

static int64_t attn_scratch_bytes(int hd) {
    /* scores, accumulator, row max and sum */
    return (int64_t)cvx_ops_num_threads() *
           (CVX_ATTN_Q_TILE * CVX_ATTN_K_TILE + CVX_ATTN_Q_TILE * hd + 2 * CVX_ATTN_Q_TILE) * 4;
}

static void run_attn_case(const attn_case *ac) {
    const int64_t B = ac->B, S = ac->S, D = (int64_t)ac->heads * ac->hd, n = B * S * D;
    float *q = xmalloc((size_t)n * sizeof(float)), *k = xmalloc((size_t)n * sizeof(float));
    float *v = xmalloc((size_t)n * sizeof(float)), *out = xmalloc((size_t)n * sizeof(float));
    double *ref = xmalloc((size_t)n * sizeof(double));
    fill(q, n, ac->qk_scale, 0.0f);
    fill(k, n, ac->qk_scale, 0.0f);
    fill(v, n, 1.0f, 0.0f);
    if (ac->ramp)
        for (int64_t b = 0; b < B; b++)
            for (int64_t j = 0; j < S; j++)
                for (int64_t i = 0; i < D; i++) k[(b * S + j) * D + i] *= 1.0f + 2.0f * (float)j / (float)S;
    const float scale = 1.0f / sqrtf((float)ac->hd);
    ref_attention(q, k, v, B, S, ac->heads, ac->hd, scale, ref);
    /* the largest score, to show the magnitudes exercised */
    double maxscore = 0.0;
    for (int64_t b = 0; b < B; b++)
        for (int h = 0; h < ac->heads; h++)
            for (int64_t i = 0; i < S; i += 7)
                for (int64_t j = 0; j < S; j++) {
                    double dot = 0.0;
                    for (int d = 0; d < ac->hd; d++)
                        dot += (double)q[(b * S + i) * D + h * ac->hd + d] * k[(b * S + j) * D + h * ac->hd + d];
                    if (fabs(dot * scale) > maxscore) maxscore = fabs(dot * scale);
                }
    fill_nan(out, n); /* every output must be written */
    const int64_t base = live_bytes();
    cvx_mem_reset_peak(CVX_DEVICE_CPU);
    cvx_status st = cvx_attention(&CTX, q, k, v, B, S, ac->heads, ac->hd, scale, out);
    CVX_EXPECT(st == CVX_OK, "%s: status %d: %s", ac->name, (int)st, cvx_error_message());
    const int64_t peak = peak_bytes() - base;
    expect_no_leak(ac->name, base);
    CVX_EXPECT(peak <= attn_scratch_bytes(ac->hd), "%s: peak working memory %lld > %lld", ac->name, (long long)peak,
               (long long)attn_scratch_bytes(ac->hd));
    char what[200];
    snprintf(what, sizeof(what), "attention %s (%lldx%lld tiles, |score| <= %.0f)", ac->name,
             (long long)((S + CVX_ATTN_Q_TILE - 1) / CVX_ATTN_Q_TILE),
             (long long)((S + CVX_ATTN_K_TILE - 1) / CVX_ATTN_K_TILE), maxscore);
    expect_close_tol(what, out, ref, n, ac->tol);
    free(q);
    free(k);
    free(v);
    free(out);
    free(ref);
}

static void test_attention(void) {
    static const attn_case cases[] = {
        /* name                                        B  S    heads hd qk  ramp tol */
        {"S=1 (softmax of one key = v)", 2, 1, 2, 16, 1.0f, 0, TOL},
        {"S=63 (one partial query tile)", 2, 63, 1, 8, 1.0f, 0, TOL},
        {"S=64 heads=3 hd=24", 2, 64, 3, 24, 1.0f, 0, TOL},
        {"S=65 heads=2 hd=32", 2, 65, 2, 32, 1.0f, 0, TOL},
        {"S=256 heads=1 hd=64 (one full key tile)", 2, 256, 1, 64, 1.0f, 0, TOL},
        {"S=257 heads=2 hd=8 (a 1-key tile)", 2, 257, 2, 8, 1.0f, 0, TOL},
        {"S=300 heads=4 hd=64", 2, 300, 4, 64, 1.0f, 0, TOL},
        {"S=600 heads=2 hd=40", 2, 600, 2, 40, 1.0f, 0, TOL},
        {"S=600 heads=3 hd=16, keys growing along S", 2, 600, 3, 16, 2.0f, 1, TOL},
        /* q and k x10: scores of several hundred, exp() overflows f32 without the running max. The scores are
         * rounded in f32 before exp(), so the error grows with |score| (about |score| * 2^-24 per weight; 3e-5
         * measured at |score| 384), still within TOL. */
        {"S=300 heads=2 hd=64, q,k x10", 2, 300, 2, 64, 10.0f, 0, TOL},
        {"S=600 heads=1 hd=32, q,k x10, keys growing", 2, 600, 1, 32, 10.0f, 1, TOL},
        {"S=63 heads=4 hd=8, q,k x10", 2, 63, 4, 8, 10.0f, 0, TOL},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) run_attn_case(&cases[i]);

    /* one key per batch item, in the third key tile, scores ~200 against ~40 for all others: the earlier tiles'
     * accumulators must be rescaled by exp(-160) (0 in f32), leaving that key's value */
    {
        const int64_t B = 2, S = 600;
        const int heads = 1, hd = 16;
        const int64_t n = B * S * hd;
        float *q = xmalloc((size_t)n * sizeof(float)), *k = xmalloc((size_t)n * sizeof(float));
        float *v = xmalloc((size_t)n * sizeof(float)), *out = xmalloc((size_t)n * sizeof(float));
        double *ref = xmalloc((size_t)n * sizeof(double));
        fill(v, n, 1.0f, 0.0f);
        for (int64_t b = 0; b < B; b++)
            for (int64_t j = 0; j < S; j++)
                for (int d = 0; d < hd; d++) {
                    q[(b * S + j) * hd + d] = 10.0f + 0.1f * frand();
                    k[(b * S + j) * hd + d] = (j == 550 + b ? 5.0f : 1.0f) + 0.01f * frand();
                }
        ref_attention(q, k, v, B, S, heads, hd, 1.0f / sqrtf((float)hd), ref);
        fill_nan(out, n);
        const int64_t base = live_bytes();
        CVX_EXPECT(cvx_attention(&CTX, q, k, v, B, S, heads, hd, 1.0f / sqrtf((float)hd), out) == CVX_OK, "attention");
        expect_close("attention, one key in the last tile dominates by ~160", out, ref, n);
        expect_no_leak("attention dominant key", base);
        free(q);
        free(k);
        free(v);
        free(out);
        free(ref);
    }

    /* OOM on the scratch: CVX_ERR_OOM, out untouched, nothing left allocated; the next call works */
    {
        const int64_t B = 2, S = 70;
        const int heads = 2, hd = 16;
        const int64_t n = B * S * heads * hd;
        float *q = xmalloc((size_t)n * sizeof(float)), *k = xmalloc((size_t)n * sizeof(float));
        float *v = xmalloc((size_t)n * sizeof(float)), *out = xmalloc((size_t)n * sizeof(float));
        double *ref = xmalloc((size_t)n * sizeof(double));
        fill(q, n, 1.0f, 0.0f);
        fill(k, n, 1.0f, 0.0f);
        fill(v, n, 1.0f, 0.0f);
        const cvx_mem_stats before = stats(CVX_DEVICE_CPU);
        const int64_t limits[] = {1, attn_scratch_bytes(hd) - 1};
        for (size_t i = 0; i < 2; i++) {
            for (int64_t j = 0; j < n; j++) out[j] = -7.0f;
            cvx_mem_set_limit(CVX_DEVICE_CPU, before.allocated_bytes + limits[i]);
            cvx_error_clear();
            cvx_status st = cvx_attention(&CTX, q, k, v, B, S, heads, hd, 0.25f, out);
            cvx_mem_set_limit(CVX_DEVICE_CPU, 0);
            CVX_EXPECT(st == CVX_ERR_OOM, "attention OOM (limit +%lld): status %d", (long long)limits[i], (int)st);
            if (i == 0) printf("  attention with the scratch refused -> %s\n", cvx_error_message());
            int64_t touched = 0;
            for (int64_t j = 0; j < n; j++) touched += out[j] != -7.0f;
            CVX_EXPECT(touched == 0, "attention OOM: %lld outputs written", (long long)touched);
            expect_no_leak("attention OOM", before.allocated_bytes);
            CVX_EXPECT(stats(CVX_DEVICE_CPU).num_allocs == before.num_allocs, "attention OOM: nothing allocated");
        }
        cvx_error_clear();
        cvx_mem_set_limit(CVX_DEVICE_CPU, before.allocated_bytes + attn_scratch_bytes(hd));
        cvx_status st = cvx_attention(&CTX, q, k, v, B, S, heads, hd, 0.25f, out);
        cvx_mem_set_limit(CVX_DEVICE_CPU, 0);
        CVX_EXPECT(st == CVX_OK, "attention with exactly its scratch: status %d: %s", (int)st, cvx_error_message());
        ref_attention(q, k, v, B, S, heads, hd, 0.25f, ref);
        expect_close("attention after the OOMs, at the limit", out, ref, n);
        expect_no_leak("attention at the limit", before.allocated_bytes);
        free(q);
        free(k);
        free(v);
        free(out);
        free(ref);
    }
}

/* NaN through the polynomial exp (softmax's exp-sum, GELU's tanh): NaN out, no undefined float-to-int conversion
 * (found by tests/fuzz/fuzz_lora.c: a NaN in a LoRA adapter's tensors reaches both; UBSan halts on the conversion). */
static void test_nan_through_exp(void) {
    cvx_ctx cpu = {.be = &cvx_backend_cpu, .device = CVX_DEVICE_CPU};
    float x[16];
    for (int i = 0; i < 16; i++) x[i] = i % 5 == 0 ? NAN : (float)i * 0.25f; /* NaN in vector lanes and the tail */
    const float sum = cvx_exp_shifted_sum(x, 16, 1.0f);
    CVX_EXPECT(isnan(sum), "exp-sum over NaN inputs: %g, not NaN", (double)sum);
    for (int i = 0; i < 16; i++)
        CVX_EXPECT(i % 5 == 0 ? isnan(x[i]) : fabsf(x[i] - expf((float)i * 0.25f - 1.0f)) <= 1e-6f * x[i],
                   "exp(%d) = %g", i, (double)x[i]);
    for (int i = 0; i < 16; i++) x[i] = i % 5 == 0 ? NAN : (float)i * 0.25f;
    CVX_EXPECT(cvx_gelu_tanh(&cpu, x, 16) == CVX_OK, "gelu: %s", cvx_error_message());
    for (int i = 0; i < 16; i++)
        CVX_EXPECT(i % 5 == 0 ? isnan(x[i]) : isfinite(x[i]), "gelu(%d) = %g", i, (double)x[i]);
}

int main(void) {
    cvx_ops_init();
    const int64_t start = live_bytes();
    printf("  OpenMP threads: %d\n", cvx_ops_num_threads());
    CVX_EXPECT(cvx_ops_num_threads() >= 1, "threads");
    test_linear();
    test_linear_edges_and_oom();
    test_layer_norm();
    test_gated_add();
    test_activations();
    test_rope();
    test_attention();
    test_nan_through_exp();
    expect_no_leak("all token ops", start);
    cvx_mem_stats s;
    cvx_mem_get_stats(CVX_DEVICE_CPU, &s);
    CVX_EXPECT(s.num_active == 0, "%lld allocations left live", (long long)s.num_active);
    return cvx_test_report();
}

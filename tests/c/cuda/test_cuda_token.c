/* The CUDA GEMM (gemm.cu) and token ops (token.cu) against outside truths: the GEMM against its definition
 * accumulated in double, every op against its CPU twin (ops/cpu) on the same random inputs. Tolerances (issue 9):
 * f32 1e-5 relative to the reference's largest magnitude; f16/bf16 tensor-core paths 2e-2, with no inf or NaN.
 * Sizes are odd on purpose (M = 1, K not a multiple of 8, N = 3) and small: under the emulation every GPU thread is
 * a fiber. Each op is also checked to free its scratch (the CUDA device's statistics back to where they were), to
 * fit the arena its own measuring pass sized (cvx_ctx_run), and to refuse bad sizes with a message. */
#include <limits.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cublas_v2.h>

#include "../../../csrc/core/dtype.h"
#include "../../../csrc/mem/arena.h"
#include "../../../csrc/ops/backend.h"

#define CVX_TEST_SEED 0x2545f4914f6cdd1dull
#include "cuda_test.h"

static cvx_ctx CPU = {.be = &cvx_backend_cpu, .device = CVX_DEVICE_CPU};

#define TOL32 1e-5
#define TOL16 2e-2

/* ---------------------------------------------------------------------------------------------------------------- */
/* small helpers */

/* n values in [-scale, scale) + offset, rounded to dt (what a weight of that type holds); bits gets the 16-bit
 * patterns when dt is 16-bit */
static void fill_as(float *v, uint16_t *bits, int64_t n, float scale, float offset, cvx_dtype dt) {
    for (int64_t i = 0; i < n; i++) {
        const float f = frand() * scale + offset;
        if (dt == CVX_F16)
            bits[i] = cvx_f32_to_f16(f), v[i] = cvx_f16_to_f32(bits[i]);
        else if (dt == CVX_BF16)
            bits[i] = cvx_f32_to_bf16(f), v[i] = cvx_bf16_to_f32(bits[i]);
        else
            v[i] = f;
    }
}

/* a weight of n values in dt on the device: the 16-bit bits or the f32 values */
static void *dev_weight(const float *v, const uint16_t *bits, int64_t n, cvx_dtype dt) {
    return dt == CVX_F32 ? (void *)dev_upload(v, n) : dev_upload_bytes(bits, (size_t)n * 2);
}

static float *dev_result(const float *d, int64_t n) {
    float *h = xmalloc((size_t)n * sizeof(float));
    dev_download(h, d, (size_t)n * sizeof(float));
    return h;
}

static int64_t cuda_live(void) { return stats(CVX_DEVICE_CUDA).allocated_bytes; }

static void expect_cuda_freed(const char *what, int64_t before) {
    CVX_EXPECT(cuda_live() == before, "%s: %lld device bytes left allocated", what, (long long)(cuda_live() - before));
}

/* a status and a message containing `text` */
static void expect_fail(const char *what, cvx_status st, cvx_status want, const char *text) {
    const char *msg = cvx_error_message();
    CVX_EXPECT(st == want && strstr(msg, text) != NULL, "%s: status %d (want %d), message '%s' (want '%s')", what,
               (int)st, (int)want, msg, text);
    if (st == want) printf("  %-52s refused: %s\n", what, msg);
    cvx_error_clear();
}

static const char *dt_name(cvx_dtype dt) { return cvx_dtype_name(dt); }

/* ---------------------------------------------------------------------------------------------------------------- */
/* gemm: every transposition, batch 1 and 3, bias or not, each input type, padded leading dimensions and strides
 * (the padding must come back untouched), against the row-major definition in double. `off` starts every operand
 * that many elements into its buffer: a view, as the models pass (x + b S D), aligned to only 2 or 4 bytes. */

static void run_gemm_case(int ta, int tb, int with_bias, cvx_dtype dt, int64_t batch, int64_t M, int64_t N, int64_t K,
                          int64_t off) {
    const int64_t a_rows = ta ? K : M, a_cols = ta ? M : K, b_rows = tb ? N : K, b_cols = tb ? K : N;
    const int64_t lda = a_cols + 3, ldb = b_cols + 1, ldc = N + 2;
    const int64_t sa = a_rows * lda + 5, sb = b_rows * ldb + 2, sc = M * ldc + 7;
    const int64_t na = sa * batch + off, nb = sb * batch + off, nc = sc * batch + off;
    float *A = xmalloc((size_t)na * 4), *B = xmalloc((size_t)nb * 4), *C = xmalloc((size_t)nc * 4);
    float *bias = xmalloc((size_t)N * 4);
    uint16_t *A16 = xmalloc((size_t)na * 2), *B16 = xmalloc((size_t)nb * 2);
    fill_as(A, A16, na, 1.0f, 0.0f, dt);
    fill_as(B, B16, nb, 1.0f, 0.0f, dt);
    fill(C, nc, 1.0f, 0.0f);
    fill(bias, N, 1.0f, 0.0f);
    void *dA = dev_weight(A, A16, na, dt), *dB = dev_weight(B, B16, nb, dt);
    float *dC = dev_upload(C, nc), *dbias = dev_upload(bias, N);
    const float alpha = 1.5f, beta = 0.5f;
    const size_t esize = dt == CVX_F32 ? 4 : 2;
    const cvx_gemm g = {.trans_a = ta,
                        .trans_b = tb,
                        .M = M,
                        .N = N,
                        .K = K,
                        .A = (const char *)dA + off * esize,
                        .lda = lda,
                        .stride_a = sa,
                        .B = (const char *)dB + off * esize,
                        .ldb = ldb,
                        .stride_b = sb,
                        .ab_type = dt,
                        .C = dC + off,
                        .ldc = ldc,
                        .stride_c = sc,
                        .batch = batch,
                        .alpha = alpha,
                        .beta = beta,
                        .bias = with_bias ? dbias : NULL};
    cvx_error_clear(); /* the message kept is the first failure's: this case's own */
    const cvx_status st = cvx_cuda_gemm(&g);
    CVX_EXPECT(st == CVX_OK, "gemm: %s", cvx_error_message());
    float *got = dev_result(dC, nc);
    /* the reference over the whole buffer: outside the [M, N] windows C stays as it was */
    float *ref = xmalloc((size_t)nc * 4);
    memcpy(ref, C, (size_t)nc * 4);
    for (int64_t p = 0; p < batch; p++)
        for (int64_t m = 0; m < M; m++)
            for (int64_t n = 0; n < N; n++) {
                double acc = 0.0;
                for (int64_t k = 0; k < K; k++) {
                    const double a = ta ? A[off + p * sa + k * lda + m] : A[off + p * sa + m * lda + k];
                    const double b = tb ? B[off + p * sb + n * ldb + k] : B[off + p * sb + k * ldb + n];
                    acc += a * b;
                }
                const int64_t c = off + p * sc + m * ldc + n;
                ref[c] = (float)(alpha * acc + beta * (double)C[c] + (with_bias ? bias[n] : 0.0));
            }
    char what[128];
    snprintf(what, sizeof(what), "gemm %s%s %s batch %lld %s (%lldx%lldx%lld)%s", ta ? "T" : "N", tb ? "T" : "N",
             dt_name(dt), (long long)batch, with_bias ? "bias" : "no bias", (long long)M, (long long)N, (long long)K,
             off ? ", views" : "");
    expect_rel(what, got, ref, nc, TOL32); /* exact 16-bit inputs: f32 accumulation either way */
    cvx_mem_free(dA), cvx_mem_free(dB), cvx_mem_free(dC), cvx_mem_free(dbias);
    free(A), free(B), free(C), free(bias), free(A16), free(B16), free(got), free(ref);
}

static void test_gemm(void) {
    const cvx_dtype dts[3] = {CVX_F32, CVX_F16, CVX_BF16};
    for (int ta = 0; ta < 2; ta++)
        for (int tb = 0; tb < 2; tb++)
            for (int bias = 0; bias < 2; bias++)
                for (int d = 0; d < 3; d++) {
                    run_gemm_case(ta, tb, bias, dts[d], 1, 5, 3, 7, 0);
                    run_gemm_case(ta, tb, bias, dts[d], 3, 4, 6, 9, 0);
                    run_gemm_case(ta, tb, bias, dts[d], 1, 6, 5, 4, 1);
                }
    run_gemm_case(0, 1, 1, CVX_F32, 1, 1, 1, 1, 0);
    run_gemm_case(0, 1, 1, CVX_F16, 1, 33, 17, 45, 0);
    run_gemm_case(1, 0, 0, CVX_F32, 2, 3, 5, 0, 0); /* K = 0: C = beta C (+ bias) */
    run_gemm_case(0, 1, 1, CVX_F16, 1, 3, 4, 0, 3);
}

/* The f32 path is full f32: within 1e-5 of the double reference on a 1024-deep product. With the handle switched to
 * TF32 tensor-core math (what torch.backends.cuda.matmul.allow_tf32 = True does) the emulation moves the same GEMM
 * by far more, so the f32 tests would catch TF32 slipping in (asserted under the emulation only: a GPU's cuBLAS may
 * still pick a non-tensor-core kernel for it). Without a bias: the bias path is cuBLASLt's, which never uses TF32
 * with CUBLAS_COMPUTE_32F. */
static void test_gemm_not_tf32(void) {
    const int64_t M = 64, N = 64, K = 1024;
    float *A = xmalloc((size_t)(M * K) * 4), *B = xmalloc((size_t)(K * N) * 4), *ref = xmalloc((size_t)(M * N) * 4);
    fill(A, M * K, 1.0f, 0.0f);
    fill(B, K * N, 1.0f, 0.0f);
    for (int64_t m = 0; m < M; m++)
        for (int64_t n = 0; n < N; n++) {
            double acc = 0.0;
            for (int64_t k = 0; k < K; k++) acc += (double)A[m * K + k] * B[k * N + n];
            ref[m * N + n] = (float)acc;
        }
    float *dA = dev_upload(A, M * K), *dB = dev_upload(B, K * N), *dC = dev_upload_bytes(NULL, (size_t)(M * N) * 4);
    const cvx_gemm g = {.M = M,
                        .N = N,
                        .K = K,
                        .A = dA,
                        .lda = K,
                        .B = dB,
                        .ldb = N,
                        .ab_type = CVX_F32,
                        .C = dC,
                        .ldc = N,
                        .batch = 1,
                        .alpha = 1.0f};
    cublasHandle_t h = (cublasHandle_t)cvx_cuda_cublas();
    double err[2];
    for (int tf32 = 0; tf32 < 2; tf32++) {
        cublasSetMathMode(h, tf32 ? CUBLAS_TF32_TENSOR_OP_MATH : CUBLAS_DEFAULT_MATH);
        CVX_EXPECT(cvx_cuda_gemm(&g) == CVX_OK, "gemm: %s", cvx_error_message());
        float *got = dev_result(dC, M * N);
        double worst = 0.0, scale = 0.0;
        for (int64_t i = 0; i < M * N; i++) {
            worst = fmax(worst, fabs((double)got[i] - ref[i]));
            scale = fmax(scale, fabs((double)ref[i]));
        }
        err[tf32] = worst / scale;
        free(got);
    }
    cublasSetMathMode(h, CUBLAS_DEFAULT_MATH);
    printf("  %-52s max rel err %.3g as built, %.3g with TF32 math\n", "gemm f32 1024-deep", err[0], err[1]);
    CVX_EXPECT(err[0] <= TOL32, "f32 gemm: max rel err %.3g", err[0]);
#ifdef CVX_CUDA_EMU
    CVX_EXPECT(err[1] > 10 * TOL32, "the emulation's TF32 math: max rel err %.3g", err[1]);
#endif
    cvx_mem_free(dA), cvx_mem_free(dB), cvx_mem_free(dC);
    free(A), free(B), free(ref);
}

static void test_gemm_refusals(void) {
    float *d = dev_upload_bytes(NULL, 1024);
    const cvx_gemm ok = {.M = 4,
                         .N = 4,
                         .K = 4,
                         .A = d,
                         .lda = 4,
                         .B = d,
                         .ldb = 4,
                         .ab_type = CVX_F32,
                         .C = d,
                         .ldc = 4,
                         .batch = 1,
                         .alpha = 1.0f};
    cvx_gemm g = ok;
    g.M = (int64_t)INT_MAX + 1;
    expect_fail("gemm M past INT_MAX", cvx_cuda_gemm(&g), CVX_ERR_INVALID, "each must be in [0, 2147483647]");
    g = ok, g.K = -1;
    expect_fail("gemm K = -1", cvx_cuda_gemm(&g), CVX_ERR_INVALID, "K=-1");
    g = ok, g.lda = 3;
    expect_fail("gemm lda below K", cvx_cuda_gemm(&g), CVX_ERR_INVALID, "lda=3 for a 4 x 4 A");
    g = ok, g.trans_b = 1, g.K = 6, g.lda = 6, g.ldb = 5;
    expect_fail("gemm ldb below K (B transposed)", cvx_cuda_gemm(&g), CVX_ERR_INVALID, "ldb=5 for a 4 x 6 B");
    g = ok, g.ldc = (int64_t)INT_MAX + 8;
    expect_fail("gemm ldc past INT_MAX", cvx_cuda_gemm(&g), CVX_ERR_INVALID, "ldc=2147483655");
    g = ok, g.batch = 0;
    expect_fail("gemm batch 0", cvx_cuda_gemm(&g), CVX_ERR_INVALID, "batch 0");
    g = ok, g.batch = 2, g.stride_c = 15;
    expect_fail("gemm overlapping batch outputs", cvx_cuda_gemm(&g), CVX_ERR_INVALID, "outputs overlap");
    g = ok, g.batch = 3, g.stride_c = 16, g.stride_a = (int64_t)1 << 62;
    expect_fail("gemm batch stride overflowing int64", cvx_cuda_gemm(&g), CVX_ERR_INVALID, "overflow int64");
    g = ok, g.ab_type = CVX_F64;
    expect_fail("gemm f64 inputs", cvx_cuda_gemm(&g), CVX_ERR_INVALID, "inputs of type float64");
    g = ok, g.B = NULL;
    expect_fail("gemm NULL B", cvx_cuda_gemm(&g), CVX_ERR_INVALID, "NULL operand");
    g = ok, g.M = 0, g.C = NULL;
    CVX_EXPECT(cvx_cuda_gemm(&g) == CVX_OK, "gemm M = 0 is nothing to do");
    cvx_mem_free(d);
}

/* ---------------------------------------------------------------------------------------------------------------- */
/* linear */

typedef struct linear_job {
    const float *x;
    int64_t M, K, N;
    const void *w, *bias;
    cvx_dtype wdt;
    float *host_y;
} linear_job;

/* a forward of one linear: y from the ctx, the result downloaded (nothing in the measuring pass) */
static cvx_status linear_forward(cvx_ctx *ctx, void *arg) {
    const linear_job *j = arg;
    const size_t bytes = (size_t)(j->M * j->N) * sizeof(float);
    float *y = NULL;
    CVX_CHECK(cvx_ctx_alloc(ctx, bytes, (void **)&y));
    cvx_status st = ctx->be->linear(ctx, j->x, j->M, j->K, j->w, j->wdt, j->bias, j->N, y);
    if (st == CVX_OK) st = ctx->be->download(ctx, j->host_y, y, bytes);
    cvx_ctx_free(ctx, y);
    return st;
}

typedef struct linear_case {
    const char *name;
    int64_t M, K, N;
    cvx_dtype wdt, compute;
    int bias;
    float xscale; /* |x| up to this */
} linear_case;

static void run_linear_case(const linear_case *lc) {
    const int64_t M = lc->M, K = lc->K, N = lc->N;
    float *x = xmalloc((size_t)(M * K) * 4), *w = xmalloc((size_t)(N * K) * 4), *b = xmalloc((size_t)N * 4);
    uint16_t *w16 = xmalloc((size_t)(N * K) * 2), *b16 = xmalloc((size_t)N * 2);
    fill(x, M * K, lc->xscale, 0.0f);
    fill_as(w, w16, N * K, 1.0f / sqrtf((float)(K > 0 ? K : 1)), 0.0f, lc->wdt);
    fill_as(b, b16, N, 1.0f, 0.0f, lc->wdt);
    const void *hw = lc->wdt == CVX_F32 ? (const void *)w : (const void *)w16;
    const void *hb = !lc->bias ? NULL : lc->wdt == CVX_F32 ? (const void *)b : (const void *)b16;
    float *ref = xmalloc((size_t)(M * N) * 4), *got = xmalloc((size_t)(M * N) * 4);
    CVX_EXPECT(cvx_linear(&CPU, x, M, K, hw, lc->wdt, hb, N, ref) == CVX_OK, "cpu linear: %s", cvx_error_message());

    float *dx = dev_upload(x, M * K);
    void *dw = dev_weight(w, w16, N * K, lc->wdt);
    void *db = lc->bias ? dev_weight(b, b16, N, lc->wdt) : NULL;
    const double tol = lc->compute == CVX_F32 || lc->wdt == CVX_F32 ? TOL32 : TOL16;
    char what[160];

    /* 1. straight from the memory manager: the scratch is given back, the peak stays within the documented bound */
    cvx_ctx G = cuda_ctx(lc->compute);
    float *dy = dev_upload_bytes(NULL, (size_t)(M * N) * 4);
    cvx_error_clear();
    const int64_t before = cuda_live();
    cvx_mem_reset_peak(CVX_DEVICE_CUDA);
    cvx_status st = G.be->linear(&G, dx, M, K, dw, lc->wdt, db, N, dy);
    CVX_EXPECT(st == CVX_OK, "%s: %s", lc->name, cvx_error_message());
    dev_download(got, dy, (size_t)(M * N) * 4);
    snprintf(what, sizeof(what), "linear %s", lc->name);
    expect_rel(what, got, ref, M * N, tol);
    expect_cuda_freed(lc->name, before);
    const size_t scratch = cvx_cuda_linear_scratch(M, K, lc->wdt, N, lc->bias, lc->compute);
    /* a block of x in 16 bits or of w in f32, the bias in f32 and one exponent per row */
    const int64_t bound = CVX_CUDA_LINEAR_BLOCK_BYTES + 64 + (N + M) * 4 + 128;
    const int64_t peak = stats(CVX_DEVICE_CUDA).peak_allocated_bytes - before;
    CVX_EXPECT(peak <= (int64_t)scratch + 64 && (int64_t)scratch <= bound && (lc->wdt != CVX_F32 || scratch == 0),
               "%s: working memory %lld, scratch %zu, bound %lld", lc->name, (long long)peak, scratch,
               (long long)bound);

    /* 2. the measuring pass, then the real pass in an arena of exactly the measured size */
    cvx_arena *arena = NULL;
    CVX_EXPECT(cvx_arena_create(CVX_DEVICE_CUDA, 0, &arena) == CVX_OK, "arena: %s", cvx_error_message());
    G.arena = arena;
    linear_job job = {dx, M, K, N, dw, db, lc->wdt, got};
    memset(got, 0, (size_t)(M * N) * 4);
    size_t measured = 0;
    st = cvx_ctx_run(&G, linear_forward, &job, &measured);
    CVX_EXPECT(st == CVX_OK, "%s in its measured arena: %s", lc->name, cvx_error_message());
    const size_t out_bytes = ((size_t)(M * N) * 4 + 63) / 64 * 64;
    CVX_EXPECT(measured == out_bytes + (scratch + 63) / 64 * 64, "%s: measured %zu, output %zu + scratch %zu", lc->name,
               measured, out_bytes, scratch);
    snprintf(what, sizeof(what), "linear %s (measured arena)", lc->name);
    expect_rel(what, got, ref, M * N, tol);
    cvx_arena_destroy(arena);

    cvx_mem_free(dx), cvx_mem_free(dw), cvx_mem_free(db), cvx_mem_free(dy);
    free(x), free(w), free(b), free(w16), free(b16), free(ref), free(got);
}

static void test_linear(void) {
    static const linear_case cases[] = {
        /* name                                         M     K    N  wdt       compute   bias xscale */
        {"f32, bias, M=1", 1, 48, 24, CVX_F32, CVX_F32, 1, 1.0f},
        {"f32, no bias, K=33 N=19", 7, 33, 19, CVX_F32, CVX_F32, 0, 1.0f},
        {"f32, bias, N=3 K=5", 3, 5, 3, CVX_F32, CVX_F32, 1, 1.0f},
        {"f32 weights under compute f16", 6, 20, 9, CVX_F32, CVX_F16, 1, 1.0f},
        {"f16 weights, compute f32 (parity)", 9, 37, 11, CVX_F16, CVX_F32, 1, 1.0f},
        {"bf16 weights, compute f32 (parity)", 5, 40, 17, CVX_BF16, CVX_F32, 0, 1.0f},
        {"f16, compute f16, bias", 9, 64, 40, CVX_F16, CVX_F16, 1, 1.0f},
        {"f16, compute f16, no bias, K=33 N=3", 1, 33, 3, CVX_F16, CVX_F16, 0, 1.0f},
        {"bf16, compute bf16, bias", 9, 64, 40, CVX_BF16, CVX_BF16, 1, 1.0f},
        {"bf16, compute bf16, no bias, M=1 K=7", 1, 7, 5, CVX_BF16, CVX_BF16, 0, 1.0f},
        {"bf16 weights under compute f16", 4, 24, 6, CVX_BF16, CVX_F16, 1, 1.0f},
        /* blocks: 32 MiB hold 2048 rows of x in f16 at K = 8192 (2050 rows: 2048 + 2); 32 MiB hold 1024 columns of
         * w in f32 at K = 8192 (1030 columns: 1024 + 6) */
        {"f16, compute f16, 2 row blocks", 2050, 8192, 3, CVX_F16, CVX_F16, 1, 1.0f},
        {"bf16, compute f32, 2 column blocks", 2, 8192, 1030, CVX_BF16, CVX_F32, 1, 1.0f},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) run_linear_case(&cases[i]);
}

/* T5 in f16: activations past f16's 65504 (T5's reach 1e6) must not become inf when x is rounded to f16. Each row
 * is checked on its own against the CPU twin (f32 arithmetic), so a row of |x| ~ 1 next to one of ~1e6 counts. */
static void test_linear_f16_overflow(void) {
    const int64_t M = 5, K = 64, N = 24;
    float *x = xmalloc((size_t)(M * K) * 4), *w = xmalloc((size_t)(N * K) * 4), *b = xmalloc((size_t)N * 4);
    uint16_t *w16 = xmalloc((size_t)(N * K) * 2), *b16 = xmalloc((size_t)N * 2);
    const float row_scale[5] = {1e6f, 1.0f, 7e4f, 3e38f / 64.0f, 1.0f};
    float xmax = 0.0f;
    for (int64_t r = 0; r < M; r++)
        for (int64_t k = 0; k < K; k++) {
            x[r * K + k] = frand() * row_scale[r];
            xmax = fmaxf(xmax, fabsf(x[r * K + k]));
        }
    for (int64_t k = 0; k < K; k += 9) x[4 * K + k] = 2e6f * (k % 2 ? 1.0f : -1.0f); /* outlier channels */
    fill_as(w, w16, N * K, 0.1f, 0.0f, CVX_F16);
    fill_as(b, b16, N, 1.0f, 0.0f, CVX_F16);
    CVX_EXPECT(xmax > 65504.0f, "the premise: |x| reaches %g", (double)xmax);
    float *dx = dev_upload(x, M * K), *dy = dev_upload_bytes(NULL, (size_t)(M * N) * 4);
    void *dw = dev_upload_bytes(w16, (size_t)(N * K) * 2), *db = dev_upload_bytes(b16, (size_t)N * 2);
    float *ref = xmalloc((size_t)(M * N) * 4), *got = xmalloc((size_t)(M * N) * 4);
    cvx_ctx G = cuda_ctx(CVX_F16);
    for (int with_bias = 0; with_bias < 2; with_bias++) {
        CVX_EXPECT(cvx_linear(&CPU, x, M, K, w16, CVX_F16, with_bias ? b16 : NULL, N, ref) == CVX_OK, "cpu linear");
        CVX_EXPECT(G.be->linear(&G, dx, M, K, dw, CVX_F16, with_bias ? db : NULL, N, dy) == CVX_OK, "linear: %s",
                   cvx_error_message());
        dev_download(got, dy, (size_t)(M * N) * 4);
        for (int64_t r = 0; r < M; r++) {
            char what[128];
            snprintf(what, sizeof(what), "linear f16, row of |x| ~ %.0e%s%s", (double)row_scale[r],
                     r == 4 ? " + 2e6 outliers" : "", with_bias ? ", bias" : "");
            expect_rel(what, got + r * N, ref + r * N, N, TOL16);
        }
    }
    cvx_mem_free(dx), cvx_mem_free(dy), cvx_mem_free(dw), cvx_mem_free(db);
    free(x), free(w), free(b), free(w16), free(b16), free(ref), free(got);
}

static void test_linear_refusals(void) {
    float *d = dev_upload_bytes(NULL, 4096);
    cvx_ctx G = cuda_ctx(CVX_F16);
    expect_fail("linear K = -1", G.be->linear(&G, d, 2, -1, d, CVX_F16, NULL, 2, d), CVX_ERR_INVALID,
                "linear: x [2, -1]");
    expect_fail("linear K past INT_MAX", G.be->linear(&G, d, 2, (int64_t)INT_MAX + 1, d, CVX_F32, NULL, 2, d),
                CVX_ERR_INVALID, "sizes must be in [0, 2147483647]");
    expect_fail("linear f64 weights", G.be->linear(&G, d, 2, 2, d, CVX_F64, NULL, 2, d), CVX_ERR_INVALID,
                "weights of type float64");
    /* the scratch refused: an out-of-memory, nothing left allocated */
    const int64_t before = cuda_live();
    cvx_mem_set_limit(CVX_DEVICE_CUDA, before + 64);
    const cvx_status st = G.be->linear(&G, d, 4, 16, d, CVX_F16, NULL, 4, d);
    cvx_mem_set_limit(CVX_DEVICE_CUDA, 0);
    expect_fail("linear with its scratch refused", st, CVX_ERR_OOM, "memory limit");
    expect_cuda_freed("linear OOM", before);
    CVX_EXPECT(G.be->linear(&G, d, 0, 4, d, CVX_F16, NULL, 4, d) == CVX_OK, "linear M = 0 is nothing to do");
    cvx_mem_free(d);
}

/* ---------------------------------------------------------------------------------------------------------------- */
/* norms */

static void run_layer_norm(const char *name, int64_t rows, int64_t D, cvx_dtype wdt, int gamma, int beta, int modulate,
                           int inplace, float offset, float spread) {
    const int64_t n = rows * D;
    float *x = xmalloc((size_t)n * 4), *g = xmalloc((size_t)D * 4), *bt = xmalloc((size_t)D * 4);
    float *sc = xmalloc((size_t)D * 4), *sh = xmalloc((size_t)D * 4), *ref = xmalloc((size_t)n * 4);
    uint16_t *g16 = xmalloc((size_t)D * 2), *b16 = xmalloc((size_t)D * 2);
    fill(x, n, spread, offset);
    fill_as(g, g16, D, 0.5f, 1.0f, wdt);
    fill_as(bt, b16, D, 0.5f, 0.0f, wdt);
    fill(sc, D, 0.8f, 0.0f);
    fill(sh, D, 1.0f, 0.0f);
    const void *hg = !gamma ? NULL : wdt == CVX_F32 ? (const void *)g : (const void *)g16;
    const void *hb = !beta ? NULL : wdt == CVX_F32 ? (const void *)bt : (const void *)b16;
    cvx_layer_norm(&CPU, x, rows, D, 1e-5f, hg, hb, wdt, modulate ? sc : NULL, modulate ? sh : NULL, ref);
    float *dx = dev_upload(x, n), *dsc = dev_upload(sc, D), *dsh = dev_upload(sh, D);
    void *dg = gamma ? dev_weight(g, g16, D, wdt) : NULL, *db = beta ? dev_weight(bt, b16, D, wdt) : NULL;
    float *dy = inplace ? dx : dev_upload_bytes(NULL, (size_t)n * 4);
    cvx_ctx G = cuda_ctx(CVX_F32);
    const int64_t before = cuda_live();
    const cvx_status st =
        G.be->layer_norm(&G, dx, rows, D, 1e-5f, dg, db, wdt, modulate ? dsc : NULL, modulate ? dsh : NULL, dy);
    CVX_EXPECT(st == CVX_OK, "layer_norm %s: %s", name, cvx_error_message());
    expect_cuda_freed(name, before);
    float *got = dev_result(dy, n);
    char what[128];
    snprintf(what, sizeof(what), "layer_norm %s", name);
    expect_rel(what, got, ref, n, TOL32);
    if (!inplace) {
        float *xback = dev_result(dx, n);
        CVX_EXPECT(memcmp(xback, x, (size_t)n * 4) == 0, "%s: x untouched", name);
        free(xback);
        cvx_mem_free(dy);
    }
    cvx_mem_free(dx), cvx_mem_free(dsc), cvx_mem_free(dsh), cvx_mem_free(dg), cvx_mem_free(db);
    free(x), free(g), free(bt), free(sc), free(sh), free(ref), free(g16), free(b16), free(got);
}

static void test_layer_norm(void) {
    /*               name                              rows   D  wdt       gamma beta mod inplace offset spread */
    run_layer_norm("no affine", 37, 64, CVX_F32, 0, 0, 0, 0, 0.0f, 1.0f);
    run_layer_norm("affine f32", 37, 96, CVX_F32, 1, 1, 0, 0, 0.5f, 2.0f);
    run_layer_norm("affine f16", 13, 70, CVX_F16, 1, 1, 0, 0, 0.0f, 1.0f);
    run_layer_norm("affine bf16 + modulation", 11, 33, CVX_BF16, 1, 1, 1, 0, 0.0f, 1.0f);
    run_layer_norm("gamma only (beta NULL)", 11, 40, CVX_F32, 1, 0, 0, 0, 0.0f, 1.0f);
    run_layer_norm("no affine + modulation, in place", 8, 300, CVX_F32, 0, 0, 1, 1, 0.0f, 1.0f);
    run_layer_norm("affine + modulation, in place", 5, 129, CVX_F16, 1, 1, 1, 1, 0.0f, 1.0f);
    run_layer_norm("offset 100, spread 1e-1", 16, 64, CVX_F32, 1, 1, 0, 0, 100.0f, 0.1f);
    run_layer_norm("1 row, D=1 (output = beta)", 1, 1, CVX_F32, 1, 1, 0, 0, 3.0f, 1.0f);
    run_layer_norm("qk-norm shape: 1 row per head, hd=64", 96, 64, CVX_BF16, 1, 1, 0, 1, 0.0f, 4.0f);
    cvx_ctx G = cuda_ctx(CVX_F32);
    float *d = dev_upload_bytes(NULL, 256);
    expect_fail("layer_norm scale without shift", G.be->layer_norm(&G, d, 2, 4, 1e-5f, NULL, NULL, CVX_F32, d, NULL, d),
                CVX_ERR_INVALID, "scale without its shift");
    expect_fail("layer_norm f64 weights", G.be->layer_norm(&G, d, 2, 4, 1e-5f, d, NULL, CVX_F64, NULL, NULL, d),
                CVX_ERR_INVALID, "weights of type float64");
    cvx_mem_free(d);
}

static void run_rms_norm(const char *name, int64_t rows, int64_t d, cvx_dtype wdt, float spread, int inplace) {
    const int64_t n = rows * d;
    float *x = xmalloc((size_t)n * 4), *w = xmalloc((size_t)d * 4), *ref = xmalloc((size_t)n * 4);
    uint16_t *w16 = xmalloc((size_t)d * 2);
    fill(x, n, spread, 0.0f);
    fill_as(w, w16, d, 0.5f, 1.0f, wdt);
    cvx_rms_norm(&CPU, x, rows, d, 1e-6f, wdt == CVX_F32 ? (const void *)w : (const void *)w16, wdt, ref);
    float *dx = dev_upload(x, n);
    void *dw = dev_weight(w, w16, d, wdt);
    float *dy = inplace ? dx : dev_upload_bytes(NULL, (size_t)n * 4);
    cvx_ctx G = cuda_ctx(CVX_F16);
    const int64_t before = cuda_live();
    CVX_EXPECT(G.be->rms_norm(&G, dx, rows, d, 1e-6f, dw, wdt, dy) == CVX_OK, "rms_norm: %s", cvx_error_message());
    expect_cuda_freed(name, before);
    float *got = dev_result(dy, n);
    char what[128];
    snprintf(what, sizeof(what), "rms_norm %s", name);
    expect_rel(what, got, ref, n, TOL32);
    if (!inplace) cvx_mem_free(dy);
    cvx_mem_free(dx), cvx_mem_free(dw);
    free(x), free(w), free(ref), free(w16), free(got);
}

static void test_rms_norm(void) {
    run_rms_norm("f32", 9, 64, CVX_F32, 1.0f, 0);
    run_rms_norm("f16 weight, d=33", 7, 33, CVX_F16, 2.0f, 0);
    run_rms_norm("bf16 weight, in place", 3, 100, CVX_BF16, 1.0f, 1);
    run_rms_norm("T5's |x| ~ 1e6, f16 weight", 4, 128, CVX_F16, 1e6f, 0);
    run_rms_norm("1 row, d=1", 1, 1, CVX_F32, 1.0f, 0);
}

/* ---------------------------------------------------------------------------------------------------------------- */
/* element-wise ops and rope */

static void test_elementwise(void) {
    const int64_t rows = 7, D = 45, n = rows * D;
    float *x = xmalloc((size_t)n * 4), *y = xmalloc((size_t)n * 4), *gate = xmalloc((size_t)D * 4);
    float *ref = xmalloc((size_t)n * 4);
    fill(x, n, 3.0f, 0.0f);
    fill(y, n, 2.0f, 0.0f);
    fill(gate, D, 1.0f, 0.0f);
    x[0] = 30.0f, x[1] = -30.0f, x[2] = 0.0f, x[3] = -0.0f, x[4] = 1e-30f, x[5] = -88.0f; /* the tails */
    float *dy = dev_upload(y, n), *dgate = dev_upload(gate, D);
    cvx_ctx G = cuda_ctx(CVX_F32);
    const int64_t before = cuda_live();
    const cvx_mem_stats s0 = stats(CVX_DEVICE_CUDA);
    for (int op = 0; op < 6; op++) {
        static const char *names[6] = {"gated_add", "gated_add (no gate)", "mul", "silu", "gelu_tanh", "relu"};
        memcpy(ref, x, (size_t)n * 4);
        float *dx = dev_upload(x, n);
        cvx_status st = CVX_OK;
        switch (op) {
        case 0: cvx_gated_add(&CPU, ref, gate, y, rows, D), st = G.be->gated_add(&G, dx, dgate, dy, rows, D); break;
        case 1: cvx_gated_add(&CPU, ref, NULL, y, rows, D), st = G.be->gated_add(&G, dx, NULL, dy, rows, D); break;
        case 2: cvx_mul(&CPU, ref, y, n), st = G.be->mul(&G, dx, dy, n); break;
        case 3: cvx_silu(&CPU, ref, n), st = G.be->silu(&G, dx, n); break;
        case 4: cvx_gelu_tanh(&CPU, ref, n), st = G.be->gelu_tanh(&G, dx, n); break;
        case 5: cvx_relu(&CPU, ref, n), st = G.be->relu(&G, dx, n); break;
        }
        CVX_EXPECT(st == CVX_OK, "%s: %s", names[op], cvx_error_message());
        float *got = dev_result(dx, n);
        expect_rel(names[op], got, ref, n, TOL32);
        free(got);
        cvx_mem_free(dx);
    }
    const cvx_mem_stats s1 = stats(CVX_DEVICE_CUDA);
    CVX_EXPECT(cuda_live() == before && s1.num_allocs - s0.num_allocs == 6,
               "element-wise ops allocate nothing (%lld allocations for 6 inputs)",
               (long long)(s1.num_allocs - s0.num_allocs));
    /* relu of NaN is 0, as the CPU op */
    float nan_in = NAN, nan_out = 1.0f;
    float *dn = dev_upload(&nan_in, 1);
    CVX_EXPECT(G.be->relu(&G, dn, 1) == CVX_OK, "relu NaN");
    dev_download(&nan_out, dn, 4);
    CVX_EXPECT(nan_out == 0.0f, "relu(NaN) = %g (the CPU op gives 0)", (double)nan_out);
    cvx_mem_free(dn), cvx_mem_free(dy), cvx_mem_free(dgate);
    free(x), free(y), free(gate), free(ref);
}

static void test_rope(void) {
    const int64_t rows = 11;
    const int heads = 3, hd = 10;
    const int64_t ld = heads * hd + 4; /* rows wider than the heads: the tail is not touched */
    float *x = xmalloc((size_t)(rows * ld) * 4), *c = xmalloc((size_t)(rows * hd) * 4);
    float *s = xmalloc((size_t)(rows * hd) * 4), *ref = xmalloc((size_t)(rows * ld) * 4);
    fill(x, rows * ld, 2.0f, 0.0f);
    for (int64_t i = 0; i < rows * hd; i++) c[i] = cosf((float)i * 0.37f), s[i] = sinf((float)i * 0.37f);
    memcpy(ref, x, (size_t)(rows * ld) * 4);
    cvx_rope(&CPU, ref, rows, ld, heads, hd, c, s);
    float *dx = dev_upload(x, rows * ld), *dc = dev_upload(c, rows * hd), *ds = dev_upload(s, rows * hd);
    cvx_ctx G = cuda_ctx(CVX_F32);
    CVX_EXPECT(G.be->rope(&G, dx, rows, ld, heads, hd, dc, ds) == CVX_OK, "rope: %s", cvx_error_message());
    float *got = dev_result(dx, rows * ld);
    expect_rel("rope 11 rows x 3 heads of 10 (ld 34)", got, ref, rows * ld, TOL32);
    for (int64_t r = 0; r < rows; r++)
        CVX_EXPECT(memcmp(got + r * ld + heads * hd, x + r * ld + heads * hd, 16) == 0, "rope: row %lld's tail",
                   (long long)r);
    expect_fail("rope odd head width", G.be->rope(&G, dx, rows, ld, heads, 9, dc, ds), CVX_ERR_INVALID, "head width 9");
    expect_fail("rope heads wider than the row", G.be->rope(&G, dx, rows, 20, heads, hd, dc, ds), CVX_ERR_INVALID,
                "do not fit in rows of 20");
    cvx_mem_free(dx), cvx_mem_free(dc), cvx_mem_free(ds);
    free(x), free(c), free(s), free(ref), free(got);
}

/* ---------------------------------------------------------------------------------------------------------------- */
/* lookups */

static void test_embedding(void) {
    const int64_t rows = 7, d = 13, n = 5;
    const cvx_dtype dts[3] = {CVX_F32, CVX_F16, CVX_BF16};
    float *t = xmalloc((size_t)(rows * d) * 4), *ref = xmalloc((size_t)(n * d) * 4);
    uint16_t *t16 = xmalloc((size_t)(rows * d) * 2);
    int64_t ids[5] = {3, 0, 6, 3, 1};
    cvx_ctx G = cuda_ctx(CVX_F32);
    int64_t *dids = dev_upload_bytes(ids, sizeof(ids));
    float *dout = dev_upload_bytes(NULL, (size_t)(n * d) * 4);
    for (int k = 0; k < 3; k++) {
        fill_as(t, t16, rows * d, 1.0f, 0.0f, dts[k]);
        const void *ht = dts[k] == CVX_F32 ? (const void *)t : (const void *)t16;
        CVX_EXPECT(cvx_embedding(&CPU, ht, dts[k], rows, ids, n, d, ref) == CVX_OK, "cpu embedding");
        void *dt = dev_weight(t, t16, rows * d, dts[k]);
        CVX_EXPECT(G.be->embedding(&G, dt, dts[k], rows, dids, n, d, dout) == CVX_OK, "embedding: %s",
                   cvx_error_message());
        float *got = xmalloc((size_t)(n * d) * 4);
        CVX_EXPECT(G.be->download(&G, got, dout, (size_t)(n * d) * 4) == CVX_OK, "download: %s", cvx_error_message());
        char what[64];
        snprintf(what, sizeof(what), "embedding %s table", dt_name(dts[k]));
        expect_rel(what, got, ref, n * d, 0.0); /* a copy, exact */
        free(got);
        cvx_mem_free(dt);
    }
    /* an id past the table on the device: no read outside it, and the next synchronising call fails with the CPU
     * op's message; the record is then clear */
    int64_t bad[5] = {3, 0, 7, 3, 1};
    int64_t *dbad = dev_upload_bytes(bad, sizeof(bad));
    void *dt = dev_upload(t, rows * d);
    CVX_EXPECT(G.be->embedding(&G, dt, CVX_F32, rows, dbad, n, d, dout) == CVX_OK, "the launch itself succeeds");
    float *got = xmalloc((size_t)(n * d) * 4);
    expect_fail("embedding id 7 of a 7-row table", G.be->download(&G, got, dout, (size_t)(n * d) * 4), CVX_ERR_INVALID,
                "embedding: id 7 at position 2 is outside [0, 7)");
    int zero_row = 1;
    for (int64_t i = 0; i < d; i++) zero_row &= got[2 * d + i] == 0.0f;
    CVX_EXPECT(zero_row, "the bad id's row is zeros");
    CVX_EXPECT(G.be->download(&G, got, dout, 4) == CVX_OK, "the next download: %s", cvx_error_message());
    int64_t neg[1] = {-2};
    int64_t *dneg = dev_upload_bytes(neg, sizeof(neg));
    CVX_EXPECT(G.be->embedding(&G, dt, CVX_F32, rows, dneg, 1, d, dout) == CVX_OK, "launch");
    dev_download(got, dout, 4); /* a synchronising copy that does not look at the record */
    expect_fail("embedding id -2 (cvx_cuda_device_errors)", cvx_cuda_device_errors(), CVX_ERR_INVALID,
                "id -2 at position 0");
    expect_fail("embedding f64 table", G.be->embedding(&G, dt, CVX_F64, rows, dids, n, d, dout), CVX_ERR_INVALID,
                "weights of type float64");
    cvx_mem_free(dbad), cvx_mem_free(dneg), cvx_mem_free(dt), cvx_mem_free(dids), cvx_mem_free(dout);
    free(t), free(t16), free(ref), free(got);
}

static void test_position_bias(void) {
    const int nb = 32, H = 3;
    const int64_t S = 6, n = H * S * S;
    int32_t buckets[11];
    for (int i = 0; i < 11; i++) buckets[i] = (i * 7 + 3) % nb;
    float *t = xmalloc((size_t)(nb * H) * 4), *ref = xmalloc((size_t)n * 4), *got = xmalloc((size_t)n * 4);
    uint16_t *t16 = xmalloc((size_t)(nb * H) * 2);
    cvx_ctx G = cuda_ctx(CVX_F32);
    int32_t *db = dev_upload_bytes(buckets, sizeof(buckets));
    float *dout = dev_upload_bytes(NULL, (size_t)n * 4);
    const cvx_dtype dts[2] = {CVX_F32, CVX_BF16};
    for (int k = 0; k < 2; k++) {
        fill_as(t, t16, nb * H, 1.0f, 0.0f, dts[k]);
        const void *ht = dts[k] == CVX_F32 ? (const void *)t : (const void *)t16;
        CVX_EXPECT(cvx_position_bias(&CPU, ht, dts[k], nb, buckets, H, S, ref) == CVX_OK, "cpu position bias");
        void *dt = dev_weight(t, t16, nb * H, dts[k]);
        const int64_t before = cuda_live();
        CVX_EXPECT(G.be->position_bias(&G, dt, dts[k], nb, db, H, S, dout) == CVX_OK, "position_bias: %s",
                   cvx_error_message());
        expect_cuda_freed("position_bias", before);
        CVX_EXPECT(G.be->download(&G, got, dout, (size_t)n * 4) == CVX_OK, "download: %s", cvx_error_message());
        char what[64];
        snprintf(what, sizeof(what), "position_bias %s table, S=6 H=3", dt_name(dts[k]));
        expect_rel(what, got, ref, n, 0.0);
        cvx_mem_free(dt);
    }
    buckets[4] = nb;
    int32_t *dbad = dev_upload_bytes(buckets, sizeof(buckets));
    void *dt = dev_upload(t, nb * H);
    CVX_EXPECT(G.be->position_bias(&G, dt, CVX_F32, nb, dbad, H, S, dout) == CVX_OK, "launch");
    expect_fail("position_bias bucket 32 of 32", G.be->download(&G, got, dout, 4), CVX_ERR_INVALID,
                "position bias: bucket 32 is outside [0, 32)");
    cvx_mem_free(dbad), cvx_mem_free(dt), cvx_mem_free(db), cvx_mem_free(dout);
    free(t), free(t16), free(ref), free(got);
}

/* ---------------------------------------------------------------------------------------------------------------- */
/* the patch embedding's gathers, data movement */

static void test_patches(void) {
    const int p = 2;
    for (int pt = 1; pt <= 2; pt++) {
        const int64_t B = 2, F = 3, C = 3, H = 4, W = 6; /* F = 3 with pt = 2: the last frame is not a patch */
        const int64_t Fp = F / pt, Hp = H / p, Wp = W / p, feat = C * pt * p * p, ntok = B * Fp * Hp * Wp * feat;
        const int64_t shape[5] = {B, F, C, H, W};
        float *h = xmalloc((size_t)(B * F * C * H * W) * 4), *ref = xmalloc((size_t)ntok * 4);
        fill(h, B * F * C * H * W, 1.0f, 0.0f);
        cvx_tensor ht = {.data = h, .dtype = CVX_F32, .device = CVX_DEVICE_CPU, .ndim = 5};
        memcpy(ht.shape, shape, sizeof(shape));
        cvx_gather_patches(&CPU, &ht, p, pt, ref);
        cvx_tensor dh = ht;
        dh.data = dev_upload(h, B * F * C * H * W);
        dh.device = CVX_DEVICE_CUDA;
        float *dtok = dev_upload_bytes(NULL, (size_t)ntok * 4);
        cvx_ctx G = cuda_ctx(CVX_F32);
        CVX_EXPECT(G.be->gather_patches(&G, &dh, p, pt, dtok) == CVX_OK, "gather_patches: %s", cvx_error_message());
        float *got = dev_result(dtok, ntok);
        char what[64];
        snprintf(what, sizeof(what), "gather_patches p=2 pt=%d", pt);
        expect_rel(what, got, ref, ntok, 0.0);
        /* and back: unpatchify of the patches is the latents (their patch frames) */
        const int64_t nout = B * Fp * pt * C * H * W;
        float *uref = xmalloc((size_t)nout * 4);
        cvx_unpatchify(&CPU, ref, B, Fp, Hp, Wp, C, p, pt, uref);
        float *dout = dev_upload_bytes(NULL, (size_t)nout * 4);
        CVX_EXPECT(G.be->unpatchify(&G, dtok, B, Fp, Hp, Wp, C, p, pt, dout) == CVX_OK, "unpatchify: %s",
                   cvx_error_message());
        float *ugot = dev_result(dout, nout);
        snprintf(what, sizeof(what), "unpatchify p=2 pt=%d", pt);
        expect_rel(what, ugot, uref, nout, 0.0);
        /* and unpatchify inverts gather_patches on the frames that make patches (F / pt * pt of each batch item) */
        const int64_t item_in = F * C * H * W, item_out = Fp * pt * C * H * W;
        int inverse = 1;
        for (int64_t b = 0; b < B; b++)
            inverse &= memcmp(uref + b * item_out, h + b * item_in, (size_t)item_out * 4) == 0;
        CVX_EXPECT(inverse, "unpatchify inverts gather_patches (pt=%d)", pt);
        expect_fail("gather_patches p = 0", G.be->gather_patches(&G, &dh, 0, pt, dtok), CVX_ERR_INVALID,
                    "patch sizes 0");
        cvx_mem_free(dh.data), cvx_mem_free(dtok), cvx_mem_free(dout);
        free(h), free(ref), free(got), free(uref), free(ugot);
    }
}

static void test_movement(void) {
    const int64_t n = 1000;
    float *x = xmalloc((size_t)n * 4), *got = xmalloc((size_t)n * 4), *ref = xmalloc((size_t)n * 4);
    uint16_t *x16 = xmalloc((size_t)n * 2);
    fill(x, n, 5.0f, 0.0f);
    cvx_ctx G = cuda_ctx(CVX_F32);
    float *d = dev_upload_bytes(NULL, (size_t)n * 4), *e = dev_upload_bytes(NULL, (size_t)n * 4);
    CVX_EXPECT(G.be->upload(&G, d, x, (size_t)n * 4) == CVX_OK, "upload");
    CVX_EXPECT(G.be->copy(&G, e, d, (size_t)n * 4) == CVX_OK, "copy");
    CVX_EXPECT(G.be->download(&G, got, e, (size_t)n * 4) == CVX_OK, "download");
    CVX_EXPECT(memcmp(got, x, (size_t)n * 4) == 0, "upload, copy, download: the same bytes");
    CVX_EXPECT(G.be->fill(&G, d, 3.5f, n - 1) == CVX_OK, "fill");
    CVX_EXPECT(G.be->download(&G, got, d, (size_t)n * 4) == CVX_OK, "download");
    int filled = got[n - 1] == x[n - 1];
    for (int64_t i = 0; i < n - 1; i++) filled &= got[i] == 3.5f;
    CVX_EXPECT(filled, "fill: n - 1 values set, the last untouched");
    const cvx_dtype dts[3] = {CVX_F32, CVX_F16, CVX_BF16};
    for (int k = 0; k < 3; k++) {
        fill_as(x, x16, n, 100.0f, 0.0f, dts[k]);
        cvx_widen(&CPU, ref, dts[k] == CVX_F32 ? (const void *)x : (const void *)x16, dts[k], n);
        void *dw = dev_weight(x, x16, n, dts[k]);
        CVX_EXPECT(G.be->widen(&G, d, dw, dts[k], n) == CVX_OK, "widen: %s", cvx_error_message());
        CVX_EXPECT(G.be->download(&G, got, d, (size_t)n * 4) == CVX_OK, "download");
        char what[64];
        snprintf(what, sizeof(what), "widen %s", dt_name(dts[k]));
        expect_rel(what, got, ref, n, 0.0);
        cvx_mem_free(dw);
    }
    expect_fail("widen f64", G.be->widen(&G, d, x, CVX_F64, n), CVX_ERR_INVALID, "weights of type float64");
    cvx_mem_free(d), cvx_mem_free(e);
    free(x), free(got), free(ref), free(x16);
}

/* ---------------------------------------------------------------------------------------------------------------- */
/* the measuring pass of the ops that allocate nothing: the measured arena holds their outputs alone */

typedef struct token_job {
    const float *x, *gate, *cos_tab, *sin_tab;
    const void *w;
    const int64_t *ids;
    const int32_t *buckets;
    int64_t rows, D;
    float *host;
} token_job;

static cvx_status token_forward(cvx_ctx *ctx, void *arg) {
    const token_job *j = arg;
    const size_t bytes = (size_t)(j->rows * j->D) * 4;
    float *y = NULL, *z = NULL;
    CVX_CHECK(cvx_ctx_alloc(ctx, bytes, (void **)&y));
    cvx_status st = CVX_OK;
    CVX_TRY(cvx_ctx_alloc(ctx, bytes, (void **)&z));
    CVX_TRY(ctx->be->layer_norm(ctx, j->x, j->rows, j->D, 1e-6f, j->w, NULL, CVX_BF16, NULL, NULL, y));
    CVX_TRY(ctx->be->rms_norm(ctx, y, j->rows, j->D, 1e-6f, j->w, CVX_BF16, z));
    CVX_TRY(ctx->be->gated_add(ctx, y, j->gate, z, j->rows, j->D));
    CVX_TRY(ctx->be->silu(ctx, y, j->rows * j->D));
    CVX_TRY(ctx->be->gelu_tanh(ctx, y, j->rows * j->D));
    CVX_TRY(ctx->be->relu(ctx, z, j->rows * j->D));
    CVX_TRY(ctx->be->mul(ctx, y, z, j->rows * j->D));
    CVX_TRY(ctx->be->rope(ctx, y, j->rows, j->D, 1, (int)j->D, j->cos_tab, j->sin_tab));
    CVX_TRY(ctx->be->embedding(ctx, j->w, CVX_BF16, 1, j->ids, 1, j->D, z));
    CVX_TRY(ctx->be->fill(ctx, z + j->D, 0.25f, j->D));
    CVX_TRY(ctx->be->widen(ctx, z + 2 * j->D, j->w, CVX_BF16, j->D));
    CVX_TRY(ctx->be->copy(ctx, z + 3 * j->D, y, (size_t)j->D * 4));
    CVX_TRY(ctx->be->position_bias(ctx, j->w, CVX_BF16, (int)j->D, j->buckets, 1, 2, z + 4 * j->D));
    CVX_TRY(ctx->be->download(ctx, j->host, z, bytes));
fail:
    cvx_ctx_free(ctx, z);
    cvx_ctx_free(ctx, y);
    return st;
}

static void test_measuring(void) {
    const int64_t rows = 6, D = 16, n = rows * D;
    float *x = xmalloc((size_t)n * 4), *gate = xmalloc((size_t)D * 4), *cs = xmalloc((size_t)n * 4);
    float *w = xmalloc((size_t)D * 4), *first = xmalloc((size_t)n * 4), *second = xmalloc((size_t)n * 4);
    uint16_t *w16 = xmalloc((size_t)D * 2);
    fill(x, n, 1.0f, 0.0f), fill(gate, D, 1.0f, 0.0f), fill(cs, n, 1.0f, 0.0f);
    fill_as(w, w16, D, 1.0f, 0.0f, CVX_BF16);
    const int64_t ids[1] = {0};
    const int32_t buckets[3] = {1, 0, 2};
    float *dx = dev_upload(x, n), *dgate = dev_upload(gate, D), *dcs = dev_upload(cs, n);
    void *dw = dev_upload_bytes(w16, (size_t)D * 2), *dids = dev_upload_bytes(ids, 8);
    void *dbk = dev_upload_bytes(buckets, sizeof(buckets));
    token_job job = {dx, dgate, dcs, dcs, dw, dids, dbk, rows, D, first};
    cvx_ctx G = cuda_ctx(CVX_F32);
    /* without an arena first, then in the arena its measuring pass sized */
    CVX_EXPECT(token_forward(&G, &job) == CVX_OK, "token ops: %s", cvx_error_message());
    cvx_arena *arena = NULL;
    CVX_EXPECT(cvx_arena_create(CVX_DEVICE_CUDA, 0, &arena) == CVX_OK, "arena");
    G.arena = arena;
    job.host = second;
    size_t measured = 0;
    CVX_EXPECT(cvx_ctx_run(&G, token_forward, &job, &measured) == CVX_OK, "token ops in their measured arena: %s",
               cvx_error_message());
    const size_t out = ((size_t)n * 4 + 63) / 64 * 64;
    CVX_EXPECT(measured == 2 * out, "measured %zu bytes: the two outputs (%zu) and no scratch", measured, 2 * out);
    CVX_EXPECT(memcmp(first, second, (size_t)n * 4) == 0, "the same results in the arena");
    cvx_arena_destroy(arena);
    cvx_mem_free(dx), cvx_mem_free(dgate), cvx_mem_free(dcs), cvx_mem_free(dw), cvx_mem_free(dids), cvx_mem_free(dbk);
    free(x), free(gate), free(cs), free(w), free(first), free(second), free(w16);
}

int main(void) {
    cvx_ops_init(); /* the CPU twins' BLAS on one thread, as the CPU tests */
    if (!cuda_test_begin()) return 0;
    const int64_t base = cuda_live();
    printf("gemm\n");
    test_gemm();
    test_gemm_not_tf32();
    test_gemm_refusals();
    printf("linear\n");
    test_linear();
    test_linear_f16_overflow();
    test_linear_refusals();
    printf("norms\n");
    test_layer_norm();
    test_rms_norm();
    printf("element-wise, rope\n");
    test_elementwise();
    test_rope();
    printf("lookups\n");
    test_embedding();
    test_position_bias();
    printf("patches, movement, measuring\n");
    test_patches();
    test_movement();
    test_measuring();
    expect_cuda_freed("the whole test", base);
    return cvx_test_report();
}

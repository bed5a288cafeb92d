/* The one GEMM of the CUDA backend (cuda_ops.h, cvx_gemm): row-major problems on column-major cuBLAS(Lt).
 *
 * A row-major [R, C] matrix with row stride ld is, read column-major, its transpose [C, R] with the same ld. So the
 * row-major C = op(A) op(B) is computed as the column-major C^T = op(B)^T op(A)^T: cuBLAS's first operand is our B
 * (m = N), its second our A (n = M), and each keeps its own transposition flag.
 *
 * Paths (every one with CUBLAS_COMPUTE_32F and an f32 C):
 *   bias, batch 1          cuBLASLt with CUBLASLT_EPILOGUE_BIAS (the f32 bias added to every row in the GEMM's own
 *                          epilogue) when M, N, K > 1 and the bias is 16-byte aligned (lt_bias_fits) and the
 *                          heuristic finds an algorithm for the problem (alignment); else
 *   K = 0                  C = beta C + bias by scale_add_bias (no cuBLAS call);
 *   everything else        cublasGemmEx (batch 1) or cublasGemmStridedBatchedEx, then scale_add_bias for a bias.
 * f32 inputs: CUBLAS_COMPUTE_32F without CUBLAS_TF32_TENSOR_OP_MATH (the handle keeps CUBLAS_DEFAULT_MATH) is full
 * f32, as PyTorch's matmul with allow_tf32 = False. f16/bf16 inputs: tensor cores, f32 accumulation. */
#include <limits.h>
#include <string.h>

#include "blas_api.h"
#include "common.cuh"

namespace {

/* A failed cuBLAS(Lt) call as a cvx_status naming the function (the call's text up to its parenthesis) and the
 * problem; an allocation failure inside cuBLAS is an out-of-memory like any other. */
cvx_status blas_fail(cublasStatus_t s, const char *call, const cvx_gemm *g, const char *file, int line) {
    return cvx_error_set(s == CUBLAS_STATUS_ALLOC_FAILED ? CVX_ERR_OOM : CVX_ERR_INTERNAL, file, line,
                         "cuda: %.*s failed: %s (gemm M=%lld N=%lld K=%lld batch=%lld, %s inputs)",
                         (int)strcspn(call, "("), call, cublasGetStatusString(s), (long long)g->M, (long long)g->N,
                         (long long)g->K, (long long)g->batch, cvx_dtype_name(g->ab_type));
}

#define CVX_BLAS(call, g)                                                                                              \
    do {                                                                                                               \
        const cublasStatus_t cvx_blas_st_ = (call);                                                                    \
        if (cvx_blas_st_ != CUBLAS_STATUS_SUCCESS) return blas_fail(cvx_blas_st_, #call, (g), __FILE__, __LINE__);     \
    } while (0)

/* C[b, m, n] = s C[b, m, n] + bias[n] over batch x M rows of N (row stride ldc, batch stride stride_c); bias NULL
 * adds nothing, s = 0 writes without reading C (cuBLAS's beta = 0: C may hold NaN) */
__global__ void scale_add_bias(float *__restrict__ C, float s, const float *__restrict__ bias, int64_t rows, int64_t M,
                               int64_t N, int64_t ldc, int64_t stride_c) {
    const int64_t total = rows * N;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += (int64_t)gridDim.x * blockDim.x) {
        const int64_t r = i / N, n = i % N;
        float *c = C + (r / M) * stride_c + (r % M) * ldc + n;
        *c = (s != 0.0f ? s * *c : 0.0f) + (bias ? bias[n] : 0.0f);
    }
}

cudaDataType blas_type(cvx_dtype dt) { return dt == CVX_F16 ? CUDA_R_16F : dt == CVX_BF16 ? CUDA_R_16BF : CUDA_R_32F; }

/* The largest power of two (up to 256) dividing the address: what the operand's pointer guarantees */
uint32_t alignment(const void *p) {
    const uintptr_t a = (uintptr_t)p;
    uint32_t al = 1;
    while (al < 256 && a % (2 * al) == 0) al *= 2;
    return al;
}

int fits_int(int64_t v) { return v >= 0 && v <= INT_MAX; }

/* Where cuBLASLt's bias epilogue is taken (else cublasGemmEx + scale_add_bias: the same numbers, one more pass over
 * C). Both conditions guard against failures that only a GPU shows:
 *   - every dimension above 1: with a matrix of one row or column, cublasLtMatmulAlgoGetHeuristic answers
 *     CUBLAS_STATUS_INVALID_VALUE (PyTorch's addmm keeps such problems off cuBLASLt for that reason; the emulated
 *     heuristic answers the same), and linear's M is the batch size for the time embeddings: at batch 1 every
 *     forward failed. The fallback below on that status covers any other such case;
 *   - a 16-byte aligned bias: cublasLt.h says the heuristic reads the bias pointer's value for its alignment, but
 *     Marian NMT's cuBLASLt path reports alignment errors on A100 below 16 bytes; every bias the engine passes is
 *     64-byte aligned, so this only keeps an unusual caller off an unverified path. */
int lt_bias_fits(const cvx_gemm *g) { return g->M > 1 && g->N > 1 && g->K > 1 && (uintptr_t)g->bias % 16 == 0; }

/* The last element of a row-major [rows, cols] operand in each of `batch` strided copies, or -1 on overflow: the
 * offsets cuBLAS computes must stay inside int64. */
int64_t extent(int64_t rows, int64_t cols, int64_t ld, int64_t batch, int64_t stride) {
    int64_t a, b, e;
    if (__builtin_mul_overflow(rows - 1, ld, &a) || __builtin_mul_overflow(batch - 1, stride, &b) ||
        __builtin_add_overflow(a, b, &e) || __builtin_add_overflow(e, cols, &e))
        return -1;
    return e;
}

cvx_status check(const cvx_gemm *g) {
    if (!g) return CVX_FAIL(CVX_ERR_INVALID, "gemm: no problem given");
    if (g->ab_type != CVX_F32 && g->ab_type != CVX_F16 && g->ab_type != CVX_BF16)
        return CVX_FAIL(CVX_ERR_INVALID, "gemm: inputs of type %s (f32, f16 or bf16 expected)",
                        cvx_dtype_name(g->ab_type));
    /* cuBLAS takes m, n, k, the leading dimensions and the batch count as int */
    if (!fits_int(g->M) || !fits_int(g->N) || !fits_int(g->K))
        return CVX_FAIL(CVX_ERR_INVALID, "gemm: M=%lld N=%lld K=%lld (each must be in [0, %d])", (long long)g->M,
                        (long long)g->N, (long long)g->K, INT_MAX);
    if (g->batch < 1 || g->batch > INT_MAX)
        return CVX_FAIL(CVX_ERR_INVALID, "gemm: batch %lld (must be in [1, %d])", (long long)g->batch, INT_MAX);
    const int64_t a_rows = g->trans_a ? g->K : g->M, a_cols = g->trans_a ? g->M : g->K;
    const int64_t b_rows = g->trans_b ? g->N : g->K, b_cols = g->trans_b ? g->K : g->N;
    const struct {
        const char *name;
        int64_t rows, cols, ld, stride;
    } op[3] = {{"A", a_rows, a_cols, g->lda, g->stride_a},
               {"B", b_rows, b_cols, g->ldb, g->stride_b},
               {"C", g->M, g->N, g->ldc, g->stride_c}};
    for (int i = 0; i < 3; i++) {
        const int64_t min_ld = op[i].cols > 1 ? op[i].cols : 1;
        if (op[i].ld < min_ld || op[i].ld > INT_MAX)
            return CVX_FAIL(CVX_ERR_INVALID, "gemm: ld%c=%lld for a %lld x %lld %s (must be in [%lld, %d])",
                            op[i].name[0] + ('a' - 'A'), (long long)op[i].ld, (long long)op[i].rows,
                            (long long)op[i].cols, op[i].name, (long long)min_ld, INT_MAX);
        if (g->batch > 1 && op[i].stride < 0)
            return CVX_FAIL(CVX_ERR_INVALID, "gemm: negative batch stride %lld of %s", (long long)op[i].stride,
                            op[i].name);
        if (op[i].rows > 0 && op[i].cols > 0 && extent(op[i].rows, op[i].cols, op[i].ld, g->batch, op[i].stride) < 0)
            return CVX_FAIL(CVX_ERR_INVALID, "gemm: %s's %lld batches of %lld x %lld (ld %lld) overflow int64",
                            op[i].name, (long long)g->batch, (long long)op[i].rows, (long long)op[i].cols,
                            (long long)op[i].ld);
    }
    /* batches writing the same C elements would race */
    if (g->batch > 1 && g->M > 0 && g->N > 0 && g->stride_c < (g->M - 1) * g->ldc + g->N)
        return CVX_FAIL(CVX_ERR_INVALID, "gemm: the batches' outputs overlap (stride_c %lld < %lld)",
                        (long long)g->stride_c, (long long)((g->M - 1) * g->ldc + g->N));
    if (g->M > 0 && g->N > 0 && (!g->C || (g->K > 0 && (!g->A || !g->B))))
        return CVX_FAIL(CVX_ERR_INVALID, "gemm: a NULL operand");
    return CVX_OK;
}

/* The bias-epilogue GEMM through cuBLASLt. *done is 0 when the heuristic has no algorithm for the problem (the
 * caller then takes the cuBLAS path); a failing call is an error. */
cvx_status lt_gemm_bias(const cvx_gemm *g, int *done) {
    *done = 0;
    cublasLtHandle_t lt = (cublasLtHandle_t)cvx_cuda_cublaslt();
    size_t ws_bytes = 0;
    void *ws = cvx_cuda_workspace(&ws_bytes);
    const cudaDataType ab = blas_type(g->ab_type), f32 = CUDA_R_32F;
    const cublasOperation_t op_b = g->trans_b ? CUBLAS_OP_T : CUBLAS_OP_N,
                            op_a = g->trans_a ? CUBLAS_OP_T : CUBLAS_OP_N;
    const cublasLtEpilogue_t epilogue = CUBLASLT_EPILOGUE_BIAS;
    const void *bias = g->bias;
    const uint64_t ws_limit = ws_bytes;
    const uint32_t align_a = alignment(g->B), align_b = alignment(g->A), align_c = alignment(g->C);
    /* column-major: Lt's A is our B (stored [b_rows, b_cols] row-major = [b_cols, b_rows] column-major), its B our A,
     * D = C^T [N, M] with ld ldc; the bias runs along D's rows (length N), i.e. along each row of our C, and has D's
     * type (f32) by default */
    const uint64_t b_rows = (uint64_t)(g->trans_b ? g->N : g->K), b_cols = (uint64_t)(g->trans_b ? g->K : g->N);
    const uint64_t a_rows = (uint64_t)(g->trans_a ? g->K : g->M), a_cols = (uint64_t)(g->trans_a ? g->M : g->K);
    cublasLtMatmulDesc_t desc = NULL;
    cublasLtMatrixLayout_t la = NULL, lb = NULL, lc = NULL;
    cublasLtMatmulPreference_t pref = NULL;
    cublasLtMatmulHeuristicResult_t heur;
    int found = 0;
    cublasStatus_t s;
    const char *call = NULL;
    /* each step names itself for the message; the descriptors are freed on every path */
#define LT_STEP(expr)                                                                                                  \
    do {                                                                                                               \
        s = (expr);                                                                                                    \
        if (s != CUBLAS_STATUS_SUCCESS) {                                                                              \
            call = #expr;                                                                                              \
            goto out;                                                                                                  \
        }                                                                                                              \
    } while (0)
    LT_STEP(cublasLtMatmulDescCreate(&desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    LT_STEP(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSA, &op_b, sizeof(op_b)));
    LT_STEP(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSB, &op_a, sizeof(op_a)));
    LT_STEP(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &epilogue, sizeof(epilogue)));
    LT_STEP(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof(bias)));
    LT_STEP(cublasLtMatrixLayoutCreate(&la, ab, b_cols, b_rows, g->ldb));
    LT_STEP(cublasLtMatrixLayoutCreate(&lb, ab, a_cols, a_rows, g->lda));
    LT_STEP(cublasLtMatrixLayoutCreate(&lc, f32, (uint64_t)g->N, (uint64_t)g->M, g->ldc));
    LT_STEP(cublasLtMatmulPreferenceCreate(&pref));
    LT_STEP(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws_limit,
                                                 sizeof(ws_limit)));
    /* the heuristic assumes 256-byte aligned operands unless told otherwise, and an algorithm chosen so faults on a
     * view into a larger buffer (y + n0, x + b S D): each preference says what the pointer has, as PyTorch does */
    LT_STEP(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &align_a,
                                                 sizeof(align_a)));
    LT_STEP(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &align_b,
                                                 sizeof(align_b)));
    LT_STEP(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &align_c,
                                                 sizeof(align_c)));
    LT_STEP(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &align_c,
                                                 sizeof(align_c)));
    s = cublasLtMatmulAlgoGetHeuristic(lt, desc, la, lb, lc, lc, pref, 1, &heur, &found);
    /* no algorithm: the cuBLAS path. INVALID_VALUE too: check() accepted the problem, so it is one of cuBLASLt's own
     * undocumented restrictions (the one-row case above), which cublasGemmEx does not share */
    if (s == CUBLAS_STATUS_NOT_SUPPORTED || s == CUBLAS_STATUS_INVALID_VALUE ||
        (s == CUBLAS_STATUS_SUCCESS && found < 1)) {
        s = CUBLAS_STATUS_SUCCESS;
        goto out;
    }
    if (s != CUBLAS_STATUS_SUCCESS) {
        call = "cublasLtMatmulAlgoGetHeuristic";
        goto out;
    }
    LT_STEP(cublasLtMatmul(lt, desc, &g->alpha, g->B, la, g->A, lb, &g->beta, g->C, lc, g->C, lc, &heur.algo, ws,
                           ws_bytes, CVX_STREAM()));
    *done = 1;
#undef LT_STEP
out:
    if (pref) cublasLtMatmulPreferenceDestroy(pref);
    if (lc) cublasLtMatrixLayoutDestroy(lc);
    if (lb) cublasLtMatrixLayoutDestroy(lb);
    if (la) cublasLtMatrixLayoutDestroy(la);
    if (desc) cublasLtMatmulDescDestroy(desc);
    return call ? blas_fail(s, call, g, __FILE__, __LINE__) : CVX_OK;
}

} // namespace

extern "C" cvx_status cvx_cuda_gemm(const cvx_gemm *g) {
    CVX_CHECK(check(g));
    if (g->M == 0 || g->N == 0) return CVX_OK;
    cublasHandle_t blas = (cublasHandle_t)cvx_cuda_cublas();
    if (!blas) return CVX_FAIL(CVX_ERR_INTERNAL, "cuda: gemm before cvx_cuda_init");
    if (g->bias && g->batch == 1 && lt_bias_fits(g)) {
        int done = 0;
        CVX_CHECK(lt_gemm_bias(g, &done));
        if (done) return CVX_OK;
    }
    const int64_t rows = g->batch * g->M;
    if (g->K == 0) { /* C = beta C + bias, without asking cuBLAS what an empty product is */
        CVX_LAUNCH(scale_add_bias, cvx_cuda_blocks(rows * g->N, 256), 256, 0, g->C, g->beta, g->bias, rows, g->M, g->N,
                   g->ldc, g->stride_c);
        CVX_CU(cudaGetLastError());
        return CVX_OK;
    }
    const cudaDataType ab = blas_type(g->ab_type);
    const cublasOperation_t op_b = g->trans_b ? CUBLAS_OP_T : CUBLAS_OP_N,
                            op_a = g->trans_a ? CUBLAS_OP_T : CUBLAS_OP_N;
    const int m = (int)g->N, n = (int)g->M, k = (int)g->K;
    if (g->batch == 1)
        CVX_BLAS(cublasGemmEx(blas, op_b, op_a, m, n, k, &g->alpha, g->B, ab, (int)g->ldb, g->A, ab, (int)g->lda,
                              &g->beta, g->C, CUDA_R_32F, (int)g->ldc, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
                 g);
    else
        CVX_BLAS(cublasGemmStridedBatchedEx(blas, op_b, op_a, m, n, k, &g->alpha, g->B, ab, (int)g->ldb, g->stride_b,
                                            g->A, ab, (int)g->lda, g->stride_a, &g->beta, g->C, CUDA_R_32F, (int)g->ldc,
                                            g->stride_c, (int)g->batch, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
                 g);
    if (g->bias) {
        CVX_LAUNCH(scale_add_bias, cvx_cuda_blocks(rows * g->N, 256), 256, 0, g->C, 1.0f, g->bias, rows, g->M, g->N,
                   g->ldc, g->stride_c);
        CVX_CU(cudaGetLastError());
    }
    return CVX_OK;
}

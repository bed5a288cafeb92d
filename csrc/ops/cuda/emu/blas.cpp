/* The emulated cuBLAS / cuBLASLt GEMMs (cvx_emu_blas.h), written from the cuBLAS documentation's definitions and
 * independently of gemm.cu's row-major mapping, so that a wrong transposition, leading dimension or stride there
 * gives wrong numbers here:
 *
 *   every matrix is column-major: element (i, j) of an operand with leading dimension ld is p[i + j ld];
 *   op(X) = X (CUBLAS_OP_N) or X^T (CUBLAS_OP_T; CUBLAS_OP_C is the same for real types);
 *   cublasGemmEx:    C (m x n) = alpha op(A) (m x k) op(B) (k x n) + beta C, lda >= max(1, op N ? m : k),
 *                    ldb >= max(1, op N ? k : n), ldc >= max(1, m); beta = 0 means C is not read (it may hold NaN);
 *   strided batched: problem p uses A + p strideA, B + p strideB, C + p strideC;
 *   cublasLtMatmul:  D = alpha op(A) op(B) + beta C, then CUBLASLT_EPILOGUE_BIAS adds bias[i] to row i of D (the
 *                    bias has D's row count and type, broadcast along the columns); a layout gives the stored
 *                    matrix's rows, cols and ld, before op.
 * Inputs are read exactly in their type (f16/bf16 widen exactly); TF32 math (the handle's CUBLAS_TF32_TENSOR_OP_MATH
 * or CUBLAS_COMPUTE_32F_FAST_TF32) rounds f32 inputs to TF32's 10 mantissa bits, as the tensor cores would, so a
 * parity path that let TF32 in fails its 1e-5 tests. Products are accumulated in double and rounded once.
 *
 * Host pointer mode only: alpha and beta are read when the call is made. The arithmetic runs later, in stream order,
 * on the stream's worker thread (cvx_emu::enqueue): the handle's stream for cuBLAS, the call's stream for cuBLASLt. */
#include <cublasLt.h>
#include <cublas_v2.h>
#include <string.h>

#include <vector>

#include "emu.h"

extern "C" {
float cvx_f16_to_f32(uint16_t h);
float cvx_bf16_to_f32(uint16_t h);
}

struct cvx_emu_lt_desc {
    cublasComputeType_t compute;
    cudaDataType_t scale;
    int32_t pointer_mode, transa, transb;
    uint32_t epilogue;
    const void *bias;
};
struct cvx_emu_lt_layout {
    cudaDataType type;
    uint64_t rows, cols;
    int64_t ld;
};
struct cvx_emu_lt_pref {
    uint64_t max_workspace;
    uint32_t min_alignment[4]; /* A, B, C, D: what the chosen algorithm may assume of the pointers */
};

namespace {

/* one operand as cuBLAS sees it: column-major storage, its type and op */
struct operand {
    const void *p;
    cudaDataType type;
    bool trans;
    int64_t ld;
};

bool input_type(cudaDataType t) { return t == CUDA_R_32F || t == CUDA_R_16F || t == CUDA_R_16BF; }
bool valid_op(int op) { return op == CUBLAS_OP_N || op == CUBLAS_OP_T || op == CUBLAS_OP_C; }

float tf32(float v) {
    uint32_t u;
    memcpy(&u, &v, 4);
    if ((u & 0x7f800000u) == 0x7f800000u) return v; /* inf, NaN */
    u += 0xfffu + ((u >> 13) & 1u);                 /* round to nearest even at 10 mantissa bits */
    u &= ~0x1fffu;
    memcpy(&v, &u, 4);
    return v;
}

float element(const operand &x, int64_t i, bool round_tf32) {
    switch (x.type) {
    case CUDA_R_16F: return cvx_f16_to_f32(((const uint16_t *)x.p)[i]);
    case CUDA_R_16BF: return cvx_bf16_to_f32(((const uint16_t *)x.p)[i]);
    default: {
        const float v = ((const float *)x.p)[i];
        return round_tf32 ? tf32(v) : v;
    }
    }
}

/* C (m x n, ldc) = alpha op(A) op(B) + beta C [+ bias[i] on row i]: the definition, element by element. The
 * operand with fewer vectors (rows of op(A) or columns of op(B)) is staged whole, the other one vector at a time, so
 * that each dot product reads two contiguous vectors and the staging stays min(m, n) k values. */
void gemm(int64_t m, int64_t n, int64_t k, float alpha, const operand &A, const operand &B, float beta, const float *C,
          float *D, int64_t ldc, const float *bias, bool round_tf32) {
    auto a_at = [&](int64_t i, int64_t l) { return element(A, A.trans ? l + i * A.ld : i + l * A.ld, round_tf32); };
    auto b_at = [&](int64_t l, int64_t j) { return element(B, B.trans ? j + l * B.ld : l + j * B.ld, round_tf32); };
    auto store = [&](int64_t i, int64_t j, double acc) {
        double v = (double)alpha * acc;
        if (beta != 0.0f) v += (double)beta * C[i + j * ldc];
        if (bias) v += bias[i];
        D[i + j * ldc] = (float)v;
    };
    const bool rows_whole = m <= n;
    const int64_t whole = rows_whole ? m : n, other = rows_whole ? n : m;
    std::vector<double> staged((size_t)(whole * k)), vec((size_t)k);
    for (int64_t v = 0; v < whole; v++)
        for (int64_t l = 0; l < k; l++) staged[v * k + l] = rows_whole ? a_at(v, l) : b_at(l, v);
    for (int64_t u = 0; u < other; u++) {
        for (int64_t l = 0; l < k; l++) vec[l] = rows_whole ? b_at(l, u) : a_at(u, l);
        for (int64_t v = 0; v < whole; v++) {
            double acc = 0.0;
            for (int64_t l = 0; l < k; l++) acc += staged[v * k + l] * vec[l];
            if (rows_whole)
                store(v, u, acc);
            else
                store(u, v, acc);
        }
    }
}

bool tf32_math(cublasHandle_t h, cudaDataType ab, cublasComputeType_t compute) {
    return ab == CUDA_R_32F &&
           (compute == CUBLAS_COMPUTE_32F_FAST_TF32 ||
            (compute == CUBLAS_COMPUTE_32F && ((unsigned)h->math_mode & 0xfu) == CUBLAS_TF32_TENSOR_OP_MATH));
}

/* The checks cublasGemmEx and cublasGemmStridedBatchedEx make, in the documentation's order of statuses. */
cublasStatus_t check_gemm(cublasHandle_t handle, cublasOperation_t transa, cublasOperation_t transb, int m, int n,
                          int k, const void *alpha, cudaDataType Atype, int lda, cudaDataType Btype, int ldb,
                          const void *beta, cudaDataType Ctype, int ldc, cublasComputeType_t computeType) {
    if (!handle) return CUBLAS_STATUS_NOT_INITIALIZED;
    if (!valid_op(transa) || !valid_op(transb) || m < 0 || n < 0 || k < 0 || !alpha || !beta)
        return CUBLAS_STATUS_INVALID_VALUE;
    const int a_rows = transa == CUBLAS_OP_N ? m : k, b_rows = transb == CUBLAS_OP_N ? k : n;
    if (lda < (a_rows > 1 ? a_rows : 1) || ldb < (b_rows > 1 ? b_rows : 1) || ldc < (m > 1 ? m : 1))
        return CUBLAS_STATUS_INVALID_VALUE;
    /* the emulated subset of the type table: A = B in f32/f16/bf16, C f32, an f32 compute type */
    if (Atype != Btype || !input_type(Atype) || Ctype != CUDA_R_32F) return CUBLAS_STATUS_NOT_SUPPORTED;
    if (computeType != CUBLAS_COMPUTE_32F && computeType != CUBLAS_COMPUTE_32F_PEDANTIC &&
        computeType != CUBLAS_COMPUTE_32F_FAST_TF32)
        return CUBLAS_STATUS_NOT_SUPPORTED;
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t run_gemm(cublasHandle_t handle, cublasOperation_t transa, cublasOperation_t transb, int m, int n, int k,
                        const void *alpha, const void *A, cudaDataType Atype, int lda, long long strideA, const void *B,
                        int ldb, long long strideB, const void *beta, void *C, int ldc, long long strideC, int batch,
                        cublasComputeType_t computeType) {
    if (m == 0 || n == 0 || batch == 0) return CUBLAS_STATUS_SUCCESS;
    const float al = *(const float *)alpha, be = *(const float *)beta; /* host pointer mode: read now */
    const operand a0 = {A, Atype, transa != CUBLAS_OP_N, lda}, b0 = {B, Atype, transb != CUBLAS_OP_N, ldb};
    const size_t esize = Atype == CUDA_R_32F ? 4 : 2;
    const bool round = tf32_math(handle, Atype, computeType);
    const cudaError_t e = cvx_emu::enqueue(handle->stream, [=] {
        for (int p = 0; p < batch; p++) {
            operand a = a0, b = b0;
            a.p = (const char *)A + (size_t)(p * strideA) * esize;
            b.p = (const char *)B + (size_t)(p * strideB) * esize;
            float *c = (float *)C + p * strideC;
            gemm(m, n, k, al, a, b, be, c, c, ldc, NULL, round);
        }
    });
    return e == cudaSuccess ? CUBLAS_STATUS_SUCCESS : CUBLAS_STATUS_EXECUTION_FAILED;
}

/* op(X)'s rows and columns for a layout and its op */
void op_dims(const cvx_emu_lt_layout *l, int32_t op, uint64_t *rows, uint64_t *cols) {
    *rows = op == CUBLAS_OP_N ? l->rows : l->cols;
    *cols = op == CUBLAS_OP_N ? l->cols : l->rows;
}

/* The problem a descriptor and four layouts describe: INVALID_VALUE for inconsistent sizes, NOT_SUPPORTED for what
 * the emulation does not run (as the real heuristic answers for what no kernel implements). */
cublasStatus_t check_lt(cublasLtMatmulDesc_t d, cublasLtMatrixLayout_t A, cublasLtMatrixLayout_t B,
                        cublasLtMatrixLayout_t C, cublasLtMatrixLayout_t D) {
    if (!d || !A || !B || !C || !D) return CUBLAS_STATUS_INVALID_VALUE;
    uint64_t am, ak, bk, bn;
    op_dims(A, d->transa, &am, &ak);
    op_dims(B, d->transb, &bk, &bn);
    if (ak != bk || C->rows != am || C->cols != bn || D->rows != am || D->cols != bn)
        return CUBLAS_STATUS_INVALID_VALUE;
    if (C->ld != D->ld && C->rows > 0 && C->cols > 0) return CUBLAS_STATUS_NOT_SUPPORTED;
    if (d->compute != CUBLAS_COMPUTE_32F && d->compute != CUBLAS_COMPUTE_32F_PEDANTIC &&
        d->compute != CUBLAS_COMPUTE_32F_FAST_TF32)
        return CUBLAS_STATUS_NOT_SUPPORTED;
    if (d->scale != CUDA_R_32F || d->pointer_mode != 0 || A->type != B->type || !input_type(A->type) ||
        C->type != CUDA_R_32F || D->type != CUDA_R_32F)
        return CUBLAS_STATUS_NOT_SUPPORTED;
    if (d->epilogue != CUBLASLT_EPILOGUE_DEFAULT && d->epilogue != CUBLASLT_EPILOGUE_BIAS)
        return CUBLAS_STATUS_NOT_SUPPORTED;
    return CUBLAS_STATUS_SUCCESS;
}

} // namespace

/* ---- cuBLAS ---- */

extern "C" cublasStatus_t cublasGemmEx(cublasHandle_t handle, cublasOperation_t transa, cublasOperation_t transb, int m,
                                       int n, int k, const void *alpha, const void *A, cudaDataType Atype, int lda,
                                       const void *B, cudaDataType Btype, int ldb, const void *beta, void *C,
                                       cudaDataType Ctype, int ldc, cublasComputeType_t computeType,
                                       cublasGemmAlgo_t algo) {
    (void)algo;
    const cublasStatus_t s =
        check_gemm(handle, transa, transb, m, n, k, alpha, Atype, lda, Btype, ldb, beta, Ctype, ldc, computeType);
    if (s != CUBLAS_STATUS_SUCCESS) return s;
    return run_gemm(handle, transa, transb, m, n, k, alpha, A, Atype, lda, 0, B, ldb, 0, beta, C, ldc, 0, 1,
                    computeType);
}

extern "C" cublasStatus_t cublasGemmStridedBatchedEx(cublasHandle_t handle, cublasOperation_t transa,
                                                     cublasOperation_t transb, int m, int n, int k, const void *alpha,
                                                     const void *A, cudaDataType Atype, int lda, long long int strideA,
                                                     const void *B, cudaDataType Btype, int ldb, long long int strideB,
                                                     const void *beta, void *C, cudaDataType Ctype, int ldc,
                                                     long long int strideC, int batchCount,
                                                     cublasComputeType_t computeType, cublasGemmAlgo_t algo) {
    (void)algo;
    const cublasStatus_t s =
        check_gemm(handle, transa, transb, m, n, k, alpha, Atype, lda, Btype, ldb, beta, Ctype, ldc, computeType);
    if (s != CUBLAS_STATUS_SUCCESS) return s;
    if (batchCount < 0) return CUBLAS_STATUS_INVALID_VALUE;
    return run_gemm(handle, transa, transb, m, n, k, alpha, A, Atype, lda, strideA, B, ldb, strideB, beta, C, ldc,
                    strideC, batchCount, computeType);
}

/* ---- cuBLASLt descriptors ---- */

extern "C" cublasStatus_t cublasLtMatmulDescCreate(cublasLtMatmulDesc_t *desc, cublasComputeType_t computeType,
                                                   cudaDataType_t scaleType) {
    if (!desc) return CUBLAS_STATUS_INVALID_VALUE;
    *desc = new cvx_emu_lt_desc{computeType, scaleType, 0, CUBLAS_OP_N, CUBLAS_OP_N, CUBLASLT_EPILOGUE_DEFAULT, NULL};
    return CUBLAS_STATUS_SUCCESS;
}

extern "C" cublasStatus_t cublasLtMatmulDescDestroy(cublasLtMatmulDesc_t desc) {
    delete desc;
    return CUBLAS_STATUS_SUCCESS;
}

extern "C" cublasStatus_t cublasLtMatmulDescSetAttribute(cublasLtMatmulDesc_t desc, cublasLtMatmulDescAttributes_t attr,
                                                         const void *buf, size_t size) {
    if (!desc || !buf) return CUBLAS_STATUS_INVALID_VALUE;
    /* each attribute has one documented type; a buffer of another size is INVALID_VALUE */
    int32_t i32 = 0;
    if (attr != CUBLASLT_MATMUL_DESC_BIAS_POINTER) {
        if (size != sizeof(int32_t)) return CUBLAS_STATUS_INVALID_VALUE;
        memcpy(&i32, buf, sizeof(i32));
    } else if (size != sizeof(void *)) {
        return CUBLAS_STATUS_INVALID_VALUE;
    }
    switch (attr) {
    case CUBLASLT_MATMUL_DESC_COMPUTE_TYPE: desc->compute = (cublasComputeType_t)i32; break;
    case CUBLASLT_MATMUL_DESC_SCALE_TYPE: desc->scale = (cudaDataType_t)i32; break;
    case CUBLASLT_MATMUL_DESC_POINTER_MODE: desc->pointer_mode = i32; break;
    case CUBLASLT_MATMUL_DESC_TRANSA:
    case CUBLASLT_MATMUL_DESC_TRANSB:
        if (!valid_op(i32)) return CUBLAS_STATUS_INVALID_VALUE;
        (attr == CUBLASLT_MATMUL_DESC_TRANSA ? desc->transa : desc->transb) = i32;
        break;
    case CUBLASLT_MATMUL_DESC_EPILOGUE: desc->epilogue = (uint32_t)i32; break;
    case CUBLASLT_MATMUL_DESC_BIAS_POINTER: memcpy(&desc->bias, buf, sizeof(void *)); break;
    default: return CUBLAS_STATUS_NOT_SUPPORTED;
    }
    return CUBLAS_STATUS_SUCCESS;
}

extern "C" cublasStatus_t cublasLtMatrixLayoutCreate(cublasLtMatrixLayout_t *layout, cudaDataType type, uint64_t rows,
                                                     uint64_t cols, int64_t ld) {
    if (!layout) return CUBLAS_STATUS_INVALID_VALUE;
    /* column-major (the default order): ld >= rows */
    if (ld < 1 || (uint64_t)ld < rows) return CUBLAS_STATUS_INVALID_VALUE;
    *layout = new cvx_emu_lt_layout{type, rows, cols, ld};
    return CUBLAS_STATUS_SUCCESS;
}

extern "C" cublasStatus_t cublasLtMatrixLayoutDestroy(cublasLtMatrixLayout_t layout) {
    delete layout;
    return CUBLAS_STATUS_SUCCESS;
}

extern "C" cublasStatus_t cublasLtMatmulPreferenceCreate(cublasLtMatmulPreference_t *pref) {
    if (!pref) return CUBLAS_STATUS_INVALID_VALUE;
    *pref = new cvx_emu_lt_pref{0, {256, 256, 256, 256}}; /* cuBLASLt's defaults */
    return CUBLAS_STATUS_SUCCESS;
}

extern "C" cublasStatus_t cublasLtMatmulPreferenceDestroy(cublasLtMatmulPreference_t pref) {
    delete pref;
    return CUBLAS_STATUS_SUCCESS;
}

extern "C" cublasStatus_t cublasLtMatmulPreferenceSetAttribute(cublasLtMatmulPreference_t pref,
                                                               cublasLtMatmulPreferenceAttributes_t attr,
                                                               const void *buf, size_t size) {
    if (!pref || !buf) return CUBLAS_STATUS_INVALID_VALUE;
    if (attr == CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES) {
        if (size != sizeof(uint64_t)) return CUBLAS_STATUS_INVALID_VALUE;
        memcpy(&pref->max_workspace, buf, sizeof(uint64_t));
        return CUBLAS_STATUS_SUCCESS;
    }
    if (attr < CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES || attr > CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES)
        return CUBLAS_STATUS_NOT_SUPPORTED;
    if (size != sizeof(uint32_t)) return CUBLAS_STATUS_INVALID_VALUE;
    memcpy(&pref->min_alignment[attr - CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES], buf, sizeof(uint32_t));
    return CUBLAS_STATUS_SUCCESS;
}

/* ---- cuBLASLt matmul ---- */

extern "C" cublasStatus_t cublasLtMatmulAlgoGetHeuristic(cublasLtHandle_t lt, cublasLtMatmulDesc_t desc,
                                                         cublasLtMatrixLayout_t A, cublasLtMatrixLayout_t B,
                                                         cublasLtMatrixLayout_t C, cublasLtMatrixLayout_t D,
                                                         cublasLtMatmulPreference_t pref, int requested,
                                                         cublasLtMatmulHeuristicResult_t results[], int *count) {
    if (!lt) return CUBLAS_STATUS_NOT_INITIALIZED;
    if (!pref || requested <= 0 || !results || !count) return CUBLAS_STATUS_INVALID_VALUE;
    const cublasStatus_t s = check_lt(desc, A, B, C, D);
    if (s != CUBLAS_STATUS_SUCCESS) return s;
    /* one algorithm, needing no workspace, assuming the preference's alignments (cublasLtMatmul checks them) */
    memset(&results[0], 0, sizeof(results[0]));
    results[0].algo.data[0] = 0x63767865;
    for (int i = 0; i < 4; i++) results[0].algo.data[1 + i] = pref->min_alignment[i];
    results[0].state = CUBLAS_STATUS_SUCCESS;
    results[0].wavesCount = 1.0f;
    *count = 1;
    return CUBLAS_STATUS_SUCCESS;
}

extern "C" cublasStatus_t cublasLtMatmul(cublasLtHandle_t lt, cublasLtMatmulDesc_t desc, const void *alpha,
                                         const void *A, cublasLtMatrixLayout_t Adesc, const void *B,
                                         cublasLtMatrixLayout_t Bdesc, const void *beta, const void *C,
                                         cublasLtMatrixLayout_t Cdesc, void *D, cublasLtMatrixLayout_t Ddesc,
                                         const cublasLtMatmulAlgo_t *algo, void *workspace, size_t workspace_bytes,
                                         cudaStream_t stream) {
    if (!lt) return CUBLAS_STATUS_NOT_INITIALIZED;
    if (!alpha || !beta || (workspace_bytes && !workspace)) return CUBLAS_STATUS_INVALID_VALUE;
    /* an algorithm chosen for better-aligned operands than these would fault on the GPU (NULL: the implicit
     * heuristic, cuBLASLt's default 256 bytes) */
    const void *ptrs[4] = {A, B, C, D};
    for (int i = 0; i < 4; i++) {
        const uint64_t need = algo ? algo->data[1 + i] : 256;
        if (need > 1 && (uintptr_t)ptrs[i] % need != 0) return CUBLAS_STATUS_INVALID_VALUE;
    }
    const cublasStatus_t s = check_lt(desc, Adesc, Bdesc, Cdesc, Ddesc);
    if (s != CUBLAS_STATUS_SUCCESS) return s;
    const float *bias = desc->epilogue == CUBLASLT_EPILOGUE_BIAS ? (const float *)desc->bias : NULL;
    if (desc->epilogue == CUBLASLT_EPILOGUE_BIAS && !bias) return CUBLAS_STATUS_INVALID_VALUE;
    const int64_t m = (int64_t)Ddesc->rows, n = (int64_t)Ddesc->cols;
    uint64_t am, ak;
    op_dims(Adesc, desc->transa, &am, &ak);
    if (m == 0 || n == 0) return CUBLAS_STATUS_SUCCESS;
    const float al = *(const float *)alpha, be = *(const float *)beta;
    const operand a = {A, Adesc->type, desc->transa != CUBLAS_OP_N, Adesc->ld};
    const operand b = {B, Bdesc->type, desc->transb != CUBLAS_OP_N, Bdesc->ld};
    const bool round = Adesc->type == CUDA_R_32F && desc->compute == CUBLAS_COMPUTE_32F_FAST_TF32;
    const int64_t k = (int64_t)ak, ld = Ddesc->ld;
    const cudaError_t e =
        cvx_emu::enqueue(stream, [=] { gemm(m, n, k, al, a, b, be, (const float *)C, (float *)D, ld, bias, round); });
    return e == cudaSuccess ? CUBLAS_STATUS_SUCCESS : CUBLAS_STATUS_EXECUTION_FAILED;
}

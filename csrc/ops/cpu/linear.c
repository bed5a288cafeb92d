/* Linear layers: SGEMM over (row block, column block) tasks, 16-bit weights widened per column block. */
#include <string.h>

#include "../ops.h"

#ifdef _OPENMP
#include <omp.h>
#endif

#include <cblas.h>

/* Columns of W per task: a widened block of about CVX_LINEAR_WEIGHT_BYTES, a multiple of 16. */
static int64_t column_block(int64_t K, int64_t N) {
    int64_t nb = CVX_LINEAR_WEIGHT_BYTES / (K > 0 ? K * (int64_t)sizeof(float) : 1);
    nb = nb < 16 ? 16 : nb - nb % 16;
    return nb > N ? N : nb;
}

size_t cvx_linear_scratch(int64_t M, int64_t K, cvx_dtype wdt, int64_t N) {
    if (M <= 0 || N <= 0 || wdt == CVX_F32) return 0;
    const int64_t nb = column_block(K, N);
    return (size_t)cvx_ops_num_threads() * (size_t)(nb * K + nb) * sizeof(float); /* weight and bias blocks */
}

cvx_status cvx_linear(cvx_ctx *ctx, const float *x, int64_t M, int64_t K, const void *w, cvx_dtype wdt,
                      const void *bias, int64_t N, float *y) {
    if (M <= 0 || N <= 0) return CVX_OK;
    const int64_t nb = column_block(K, N);
    const int64_t mb = M < CVX_LINEAR_ROWS ? M : CVX_LINEAR_ROWS;
    const int64_t col_blocks = (N + nb - 1) / nb, row_blocks = (M + mb - 1) / mb;
    const size_t esize = cvx_dtype_size(wdt);
    const int64_t per_thread = nb * K + nb; /* widened weight block and bias block */
    float *scratch = NULL;
    CVX_CHECK(cvx_ops_scratch(ctx, cvx_linear_scratch(M, K, wdt, N), (void **)&scratch));
#pragma omp parallel for schedule(dynamic) num_threads(cvx_ops_threads_for(M *N *K / 16))
    for (int64_t task = 0; task < col_blocks * row_blocks; task++) {
        const int64_t cb = task / row_blocks, rb = task % row_blocks;
        const int64_t n0 = cb * nb, n = N - n0 < nb ? N - n0 : nb;
        const int64_t m0 = rb * mb, m = M - m0 < mb ? M - m0 : mb;
        const float *wb, *bb = bias ? (const float *)bias + n0 : NULL;
        if (wdt == CVX_F32) {
            wb = (const float *)w + n0 * K;
        } else {
#ifdef _OPENMP
            float *s = scratch + (int64_t)omp_get_thread_num() * per_thread;
#else
            float *s = scratch;
#endif
            cvx_convert(s, CVX_F32, (const char *)w + (size_t)(n0 * K) * esize, wdt, (size_t)(n * K));
            wb = s;
            if (bias) {
                cvx_convert(s + nb * K, CVX_F32, (const char *)bias + (size_t)n0 * esize, wdt, (size_t)n);
                bb = s + nb * K;
            }
        }
        float *yb = y + m0 * N + n0;
        if (bb)
            for (int64_t i = 0; i < m; i++) memcpy(yb + i * N, bb, (size_t)n * sizeof(float));
        scipy_cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)m, (int)n, (int)K, 1.0f, x + m0 * K, (int)K, wb,
                          (int)K, bias ? 1.0f : 0.0f, yb, (int)N);
    }
    cvx_ctx_free(ctx, scratch);
    return CVX_OK;
}

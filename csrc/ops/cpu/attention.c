/* Attention on the CPU. The models' memory-efficient attention: per (batch, head, query tile), keys are visited in
 * tiles with a running max and sum (the online softmax of FlashAttention), so the S x S score matrix never exists.
 * T5's attention with an additive position bias materialises the S x S scores per (batch, head) instead. */
#include <math.h>
#include <string.h>

#include "../ops.h"

#ifdef _OPENMP
#include <omp.h>
#endif

#include <cblas.h>

/* per thread: scores [Tq, Tk], accumulator [Tq, hd], row max and sum [Tq] */
static int64_t attention_per_thread(int hd) {
    return CVX_ATTN_Q_TILE * CVX_ATTN_K_TILE + CVX_ATTN_Q_TILE * (int64_t)hd + 2 * CVX_ATTN_Q_TILE;
}

size_t cvx_attention_scratch(int hd) {
    return (size_t)cvx_ops_num_threads() * (size_t)attention_per_thread(hd) * sizeof(float);
}

cvx_status cvx_attention(cvx_ctx *ctx, const float *q, const float *k, const float *v, int64_t B, int64_t S, int heads,
                         int hd, float scale, float *out) {
    const int64_t D = (int64_t)heads * hd, q_tiles = (S + CVX_ATTN_Q_TILE - 1) / CVX_ATTN_Q_TILE;
    const int64_t tasks = B * heads * q_tiles;
    const int64_t per_thread = attention_per_thread(hd);
    float *scratch = NULL;
    CVX_CHECK(cvx_ops_scratch(ctx, cvx_attention_scratch(hd), (void **)&scratch));
#pragma omp parallel for schedule(dynamic) num_threads(cvx_ops_threads_for(B *heads *S *S *hd / 8))
    for (int64_t task = 0; task < tasks; task++) {
        const int64_t b = task / (heads * q_tiles), h = (task / q_tiles) % heads, qt = task % q_tiles;
        const int64_t q0 = qt * CVX_ATTN_Q_TILE, nq = S - q0 < CVX_ATTN_Q_TILE ? S - q0 : CVX_ATTN_Q_TILE;
#ifdef _OPENMP
        float *sc = scratch + (int64_t)omp_get_thread_num() * per_thread;
#else
        float *sc = scratch;
#endif
        float *acc = sc + CVX_ATTN_Q_TILE * CVX_ATTN_K_TILE, *mx = acc + CVX_ATTN_Q_TILE * hd,
              *sum = mx + CVX_ATTN_Q_TILE;
        const float *qb = q + (b * S + q0) * D + h * hd;
        const float *kb = k + b * S * D + h * hd, *vb = v + b * S * D + h * hd;
        for (int64_t i = 0; i < nq; i++) mx[i] = -INFINITY, sum[i] = 0.0f;
        memset(acc, 0, (size_t)(nq * hd) * sizeof(float));
        for (int64_t k0 = 0; k0 < S; k0 += CVX_ATTN_K_TILE) {
            const int64_t nk = S - k0 < CVX_ATTN_K_TILE ? S - k0 : CVX_ATTN_K_TILE;
            /* scores = (q k^T) * scale */
            scipy_cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)nq, (int)nk, hd, scale, qb, (int)D,
                              kb + k0 * D, (int)D, 0.0f, sc, (int)nk);
            for (int64_t i = 0; i < nq; i++) {
                float *row = sc + i * nk;
                const float m = cvx_max(row, nk, mx[i]);
                const float correction = expf(mx[i] - m); /* 0 on the first tile (mx = -inf) */
                const float s = cvx_exp_shifted_sum(row, nk, m);
                sum[i] = sum[i] * correction + s;
                mx[i] = m;
                if (correction != 1.0f)
                    for (int d = 0; d < hd; d++) acc[i * hd + d] *= correction;
            }
            /* acc += p v */
            scipy_cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)nq, hd, (int)nk, 1.0f, sc, (int)nk,
                              vb + k0 * D, (int)D, 1.0f, acc, hd);
        }
        float *ob = out + (b * S + q0) * D + h * hd;
        for (int64_t i = 0; i < nq; i++) {
            const float inv = 1.0f / sum[i];
            for (int d = 0; d < hd; d++) ob[i * D + d] = acc[i * hd + d] * inv;
        }
    }
    cvx_ctx_free(ctx, scratch);
    return CVX_OK;
}

size_t cvx_biased_attention_scratch(int64_t S) {
    return (size_t)cvx_ops_num_threads() * (size_t)(S * S) * sizeof(float);
}

cvx_status cvx_biased_attention(cvx_ctx *ctx, const float *q, const float *k, const float *v, int64_t B, int64_t S,
                                int H, int kd, const float *bias, const float *key_mask, float *out) {
    const int64_t D = (int64_t)H * kd;
    float *scratch = NULL;
    CVX_CHECK(cvx_ops_scratch(ctx, cvx_biased_attention_scratch(S), (void **)&scratch));
#pragma omp parallel for schedule(dynamic) num_threads(cvx_ops_threads_for(B *H *S *S *kd / 8))
    for (int64_t task = 0; task < B * H; task++) {
        const int64_t b = task / H, h = task % H;
#ifdef _OPENMP
        float *sc = scratch + (int64_t)omp_get_thread_num() * S * S;
#else
        float *sc = scratch;
#endif
        const float *qb = q + b * S * D + h * kd, *kb = k + b * S * D + h * kd, *vb = v + b * S * D + h * kd;
        scipy_cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)S, (int)S, kd, 1.0f, qb, (int)D, kb, (int)D,
                          0.0f, sc, (int)S);
        for (int64_t i = 0; i < S; i++) {
            float *row = sc + i * S;
            const float *brow = bias + (h * S + i) * S;
            for (int64_t j = 0; j < S; j++) row[j] += brow[j] + (key_mask ? key_mask[b * S + j] : 0.0f);
            const float m = cvx_max(row, S, -INFINITY);
            const float inv = 1.0f / cvx_exp_shifted_sum(row, S, m);
            for (int64_t j = 0; j < S; j++) row[j] *= inv;
        }
        scipy_cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)S, kd, (int)S, 1.0f, sc, (int)S, vb, (int)D,
                          0.0f, out + b * S * D + h * kd, (int)D);
    }
    cvx_ctx_free(ctx, scratch);
    return CVX_OK;
}

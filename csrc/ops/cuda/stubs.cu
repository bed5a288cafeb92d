/* TEMPORARY (removed before the issue lands): weak definitions of every op, so that each part of the backend
 * links and runs in its own branch while the others are written. A real definition overrides its stub; a test
 * asserts at the end that no stub is left. */
#include "common.cuh"

extern "C" __attribute__((weak)) cvx_status cvx_cuda_upload(cvx_ctx *ctx, void *dst, const void *host, size_t bytes) {
    return CVX_FAIL(CVX_ERR_INTERNAL, "upload is not implemented on CUDA yet");
}
extern "C" __attribute__((weak)) cvx_status cvx_cuda_download(cvx_ctx *ctx, void *host, const void *src, size_t bytes) {
    return CVX_FAIL(CVX_ERR_INTERNAL, "download is not implemented on CUDA yet");
}
extern "C" __attribute__((weak)) cvx_status cvx_cuda_copy(cvx_ctx *ctx, void *dst, const void *src, size_t bytes) {
    return CVX_FAIL(CVX_ERR_INTERNAL, "copy is not implemented on CUDA yet");
}
extern "C" __attribute__((weak)) cvx_status cvx_cuda_fill(cvx_ctx *ctx, float *x, float value, int64_t n) {
    return CVX_FAIL(CVX_ERR_INTERNAL, "fill is not implemented on CUDA yet");
}
extern "C" __attribute__((weak)) cvx_status cvx_cuda_widen(cvx_ctx *ctx, float *dst, const void *w, cvx_dtype dt,
                                                           int64_t n) {
    return CVX_FAIL(CVX_ERR_INTERNAL, "widen is not implemented on CUDA yet");
}
extern "C" __attribute__((weak)) cvx_status cvx_cuda_linear(cvx_ctx *ctx, const float *x, int64_t M, int64_t K,
                                                            const void *w, cvx_dtype wdt, const void *bias, int64_t N,
                                                            float *y) {
    return CVX_FAIL(CVX_ERR_INTERNAL, "linear is not implemented on CUDA yet");
}
extern "C" __attribute__((weak)) cvx_status cvx_cuda_layer_norm(cvx_ctx *ctx, const float *x, int64_t rows, int64_t D,
                                                                float eps, const void *gamma, const void *beta,
                                                                cvx_dtype wdt, const float *scale, const float *shift,
                                                                float *y) {
    return CVX_FAIL(CVX_ERR_INTERNAL, "layer_norm is not implemented on CUDA yet");
}
extern "C" __attribute__((weak)) cvx_status cvx_cuda_rms_norm(cvx_ctx *ctx, const float *x, int64_t rows, int64_t d,
                                                              float eps, const void *w, cvx_dtype wdt, float *y) {
    return CVX_FAIL(CVX_ERR_INTERNAL, "rms_norm is not implemented on CUDA yet");
}
extern "C" __attribute__((weak)) cvx_status cvx_cuda_gated_add(cvx_ctx *ctx, float *x, const float *gate,
                                                               const float *y, int64_t rows, int64_t D) {
    return CVX_FAIL(CVX_ERR_INTERNAL, "gated_add is not implemented on CUDA yet");
}
extern "C" __attribute__((weak)) cvx_status cvx_cuda_mul(cvx_ctx *ctx, float *x, const float *y, int64_t n) {
    return CVX_FAIL(CVX_ERR_INTERNAL, "mul is not implemented on CUDA yet");
}
extern "C" __attribute__((weak)) cvx_status cvx_cuda_silu(cvx_ctx *ctx, float *x, int64_t n) {
    return CVX_FAIL(CVX_ERR_INTERNAL, "silu is not implemented on CUDA yet");
}
extern "C" __attribute__((weak)) cvx_status cvx_cuda_gelu_tanh(cvx_ctx *ctx, float *x, int64_t n) {
    return CVX_FAIL(CVX_ERR_INTERNAL, "gelu_tanh is not implemented on CUDA yet");
}
extern "C" __attribute__((weak)) cvx_status cvx_cuda_relu(cvx_ctx *ctx, float *x, int64_t n) {
    return CVX_FAIL(CVX_ERR_INTERNAL, "relu is not implemented on CUDA yet");
}
extern "C" __attribute__((weak)) cvx_status cvx_cuda_rope(cvx_ctx *ctx, float *x, int64_t rows, int64_t ld, int heads,
                                                          int hd, const float *cos_tab, const float *sin_tab) {
    return CVX_FAIL(CVX_ERR_INTERNAL, "rope is not implemented on CUDA yet");
}
extern "C" __attribute__((weak)) cvx_status cvx_cuda_attention(cvx_ctx *ctx, const float *q, const float *k,
                                                               const float *v, int64_t B, int64_t S, int heads, int hd,
                                                               float scale, float *out) {
    return CVX_FAIL(CVX_ERR_INTERNAL, "attention is not implemented on CUDA yet");
}
extern "C" __attribute__((weak)) cvx_status cvx_cuda_biased_attention(cvx_ctx *ctx, const float *q, const float *k,
                                                                      const float *v, int64_t B, int64_t S, int H,
                                                                      int kd, const float *bias, const float *key_mask,
                                                                      float *out) {
    return CVX_FAIL(CVX_ERR_INTERNAL, "biased_attention is not implemented on CUDA yet");
}
extern "C" __attribute__((weak)) cvx_status cvx_cuda_embedding(cvx_ctx *ctx, const void *table, cvx_dtype dt,
                                                               int64_t table_rows, const int64_t *ids, int64_t n,
                                                               int64_t d, float *out) {
    return CVX_FAIL(CVX_ERR_INTERNAL, "embedding is not implemented on CUDA yet");
}
extern "C" __attribute__((weak)) cvx_status cvx_cuda_position_bias(cvx_ctx *ctx, const void *table, cvx_dtype dt,
                                                                   int num_buckets, const int32_t *buckets, int H,
                                                                   int64_t S, float *out) {
    return CVX_FAIL(CVX_ERR_INTERNAL, "position_bias is not implemented on CUDA yet");
}
extern "C" __attribute__((weak)) cvx_status cvx_cuda_gather_patches(cvx_ctx *ctx, const cvx_tensor *h, int p, int pt,
                                                                    float *out) {
    return CVX_FAIL(CVX_ERR_INTERNAL, "gather_patches is not implemented on CUDA yet");
}
extern "C" __attribute__((weak)) cvx_status cvx_cuda_unpatchify(cvx_ctx *ctx, const float *tok, int64_t B, int64_t Fp,
                                                                int64_t Hp, int64_t Wp, int64_t C, int p, int pt,
                                                                float *out) {
    return CVX_FAIL(CVX_ERR_INTERNAL, "unpatchify is not implemented on CUDA yet");
}
extern "C" __attribute__((weak)) cvx_status cvx_cuda_conv3d(cvx_ctx *ctx, const cvx_frame *frames, int num_frames,
                                                            int64_t batch, int64_t height, int64_t width,
                                                            const cvx_conv_weight *wt, const cvx_conv_geom *geom,
                                                            cvx_tensor *out) {
    return CVX_FAIL(CVX_ERR_INTERNAL, "conv3d is not implemented on CUDA yet");
}
extern "C" __attribute__((weak)) cvx_status cvx_cuda_group_norm(cvx_ctx *ctx, const cvx_tensor *x, int groups,
                                                                float eps, const float *gamma, const float *beta,
                                                                const cvx_norm_modulation *mod, int apply_silu,
                                                                cvx_tensor *out) {
    return CVX_FAIL(CVX_ERR_INTERNAL, "group_norm is not implemented on CUDA yet");
}
extern "C" __attribute__((weak)) cvx_status cvx_cuda_add_inplace(cvx_ctx *ctx, cvx_tensor *x, const cvx_tensor *y) {
    return CVX_FAIL(CVX_ERR_INTERNAL, "add_inplace is not implemented on CUDA yet");
}
extern "C" __attribute__((weak)) cvx_status cvx_cuda_avg_pool_time(cvx_ctx *ctx, const cvx_tensor *x, cvx_tensor *out) {
    return CVX_FAIL(CVX_ERR_INTERNAL, "avg_pool_time is not implemented on CUDA yet");
}
extern "C" __attribute__((weak)) cvx_status cvx_cuda_slice_frames(cvx_ctx *ctx, const cvx_tensor *x, int64_t first,
                                                                  int64_t count, cvx_tensor *out) {
    return CVX_FAIL(CVX_ERR_INTERNAL, "slice_frames is not implemented on CUDA yet");
}
extern "C" __attribute__((weak)) cvx_status cvx_cuda_copy_box(cvx_ctx *ctx, cvx_tensor *dst, const int64_t d[4],
                                                              const cvx_tensor *src, const int64_t s[4],
                                                              const int64_t n[4]) {
    return CVX_FAIL(CVX_ERR_INTERNAL, "copy_box is not implemented on CUDA yet");
}
extern "C" __attribute__((weak)) cvx_status cvx_cuda_download_box(cvx_ctx *ctx, cvx_tensor *host_dst,
                                                                  const int64_t d[4], const cvx_tensor *src,
                                                                  const int64_t s[4], const int64_t n[4]) {
    return CVX_FAIL(CVX_ERR_INTERNAL, "download_box is not implemented on CUDA yet");
}
extern "C" __attribute__((weak)) cvx_status cvx_cuda_gather_frames(cvx_ctx *ctx, const cvx_frame *frames, int count,
                                                                   int64_t B, int64_t C, int64_t H, int64_t W,
                                                                   cvx_tensor *out) {
    return CVX_FAIL(CVX_ERR_INTERNAL, "gather_frames is not implemented on CUDA yet");
}
extern "C" __attribute__((weak)) cvx_status cvx_cuda_blend_rows(cvx_ctx *ctx, const cvx_tensor *a, cvx_tensor *b,
                                                                int64_t a_full_rows, int64_t extent) {
    return CVX_FAIL(CVX_ERR_INTERNAL, "blend_rows is not implemented on CUDA yet");
}
extern "C" __attribute__((weak)) cvx_status cvx_cuda_blend_cols(cvx_ctx *ctx, const cvx_tensor *a, cvx_tensor *b,
                                                                int64_t extent) {
    return CVX_FAIL(CVX_ERR_INTERNAL, "blend_cols is not implemented on CUDA yet");
}
extern "C" __attribute__((weak)) cvx_status cvx_cuda_gemm(const cvx_gemm *g) {
    return CVX_FAIL(CVX_ERR_INTERNAL, "gemm is not implemented on CUDA yet");
}

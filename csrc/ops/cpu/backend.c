/* The three op tables over the CPU ops: cpu (the reference), emu (the same ops behind a residency check of every
 * weight they read) and measure (no work, the same allocations). */
#include "../backend.h"

#include <string.h>

const cvx_backend cvx_backend_cpu = {
    .name = "cpu",
    .upload = cvx_upload,
    .download = cvx_download,
    .copy = cvx_copy,
    .fill = cvx_fill,
    .widen = cvx_widen,
    .linear = cvx_linear,
    .layer_norm = cvx_layer_norm,
    .rms_norm = cvx_rms_norm,
    .gated_add = cvx_gated_add,
    .mul = cvx_mul,
    .silu = cvx_silu,
    .gelu_tanh = cvx_gelu_tanh,
    .relu = cvx_relu,
    .rope = cvx_rope,
    .attention = cvx_attention,
    .biased_attention = cvx_biased_attention,
    .embedding = cvx_embedding,
    .position_bias = cvx_position_bias,
    .gather_patches = cvx_gather_patches,
    .unpatchify = cvx_unpatchify,
    .conv3d = cvx_conv3d,
    .group_norm = cvx_group_norm,
    .add_inplace = cvx_add_inplace,
    .avg_pool_time = cvx_avg_pool_time,
    .slice_frames = cvx_slice_frames,
    .copy_box = cvx_copy_box,
    .download_box = cvx_download_box,
    .gather_frames = cvx_gather_frames,
    .blend_rows = cvx_blend_rows,
    .blend_cols = cvx_blend_cols,
};

/* ---- emu: every weight an op reads must be resident on the emulated device ------------------------------------ */

static cvx_status resident(const char *op, const char *what, const void *w, size_t bytes) {
    if (!w || cvx_mem_is_resident(CVX_DEVICE_EMU, w, bytes)) return CVX_OK;
    return CVX_FAIL(CVX_ERR_INTERNAL,
                    "%s on emu reads its %s (%zu bytes at %p), which is not resident on the device: a weight group "
                    "was not acquired",
                    op, what, bytes, w);
}

static cvx_status emu_widen(cvx_ctx *ctx, float *dst, const void *w, cvx_dtype dt, int64_t n) {
    CVX_CHECK(resident("widen", "weight", w, (size_t)n * cvx_dtype_size(dt)));
    return cvx_widen(ctx, dst, w, dt, n);
}

static cvx_status emu_linear(cvx_ctx *ctx, const float *x, int64_t M, int64_t K, const void *w, cvx_dtype wdt,
                             const void *bias, int64_t N, float *y) {
    CVX_CHECK(resident("linear", "weight", w, (size_t)(N * K) * cvx_dtype_size(wdt)));
    CVX_CHECK(resident("linear", "bias", bias, (size_t)N * cvx_dtype_size(wdt)));
    return cvx_linear(ctx, x, M, K, w, wdt, bias, N, y);
}

static cvx_status emu_layer_norm(cvx_ctx *ctx, const float *x, int64_t rows, int64_t D, float eps, const void *gamma,
                                 const void *beta, cvx_dtype wdt, const float *scale, const float *shift, float *y) {
    CVX_CHECK(resident("layer_norm", "weight", gamma, (size_t)D * cvx_dtype_size(wdt)));
    CVX_CHECK(resident("layer_norm", "bias", beta, (size_t)D * cvx_dtype_size(wdt)));
    return cvx_layer_norm(ctx, x, rows, D, eps, gamma, beta, wdt, scale, shift, y);
}

static cvx_status emu_rms_norm(cvx_ctx *ctx, const float *x, int64_t rows, int64_t d, float eps, const void *w,
                               cvx_dtype wdt, float *y) {
    CVX_CHECK(resident("rms_norm", "weight", w, (size_t)d * cvx_dtype_size(wdt)));
    return cvx_rms_norm(ctx, x, rows, d, eps, w, wdt, y);
}

static cvx_status emu_embedding(cvx_ctx *ctx, const void *table, cvx_dtype dt, int64_t table_rows, const int64_t *ids,
                                int64_t n, int64_t d, float *out) {
    CVX_CHECK(resident("embedding", "table", table, (size_t)(table_rows * d) * cvx_dtype_size(dt)));
    return cvx_embedding(ctx, table, dt, table_rows, ids, n, d, out);
}

static cvx_status emu_position_bias(cvx_ctx *ctx, const void *table, cvx_dtype dt, int num_buckets,
                                    const int32_t *buckets, int H, int64_t S, float *out) {
    CVX_CHECK(resident("position_bias", "table", table, (size_t)num_buckets * (size_t)H * cvx_dtype_size(dt)));
    return cvx_position_bias(ctx, table, dt, num_buckets, buckets, H, S, out);
}

static cvx_status emu_conv3d(cvx_ctx *ctx, const cvx_frame *frames, int num_frames, int64_t batch, int64_t height,
                             int64_t width, const cvx_conv_weight *wt, const cvx_conv_geom *geom, cvx_tensor *out) {
    const size_t wbytes = (size_t)wt->co * (size_t)wt->ci * (size_t)(wt->kt * wt->kh * wt->kw);
    memset(out, 0, sizeof(*out));
    CVX_CHECK(resident("conv3d", "weight", wt->w, wbytes * cvx_dtype_size(wt->dtype)));
    CVX_CHECK(resident("conv3d", "bias", wt->bias, (size_t)wt->co * sizeof(float)));
    return cvx_conv3d(ctx, frames, num_frames, batch, height, width, wt, geom, out);
}

static cvx_status emu_group_norm(cvx_ctx *ctx, const cvx_tensor *x, int groups, float eps, const float *gamma,
                                 const float *beta, const cvx_norm_modulation *mod, int apply_silu, cvx_tensor *out) {
    const size_t bytes = (size_t)x->shape[1] * sizeof(float);
    CVX_CHECK(resident("group_norm", "weight", gamma, bytes));
    CVX_CHECK(resident("group_norm", "bias", beta, bytes));
    return cvx_group_norm(ctx, x, groups, eps, gamma, beta, mod, apply_silu, out);
}

const cvx_backend cvx_backend_emu = {
    .name = "emu",
    .upload = cvx_upload,
    .download = cvx_download,
    .copy = cvx_copy,
    .fill = cvx_fill,
    .widen = emu_widen,
    .linear = emu_linear,
    .layer_norm = emu_layer_norm,
    .rms_norm = emu_rms_norm,
    .gated_add = cvx_gated_add,
    .mul = cvx_mul,
    .silu = cvx_silu,
    .gelu_tanh = cvx_gelu_tanh,
    .relu = cvx_relu,
    .rope = cvx_rope,
    .attention = cvx_attention,
    .biased_attention = cvx_biased_attention,
    .embedding = emu_embedding,
    .position_bias = emu_position_bias,
    .gather_patches = cvx_gather_patches,
    .unpatchify = cvx_unpatchify,
    .conv3d = emu_conv3d,
    .group_norm = emu_group_norm,
    .add_inplace = cvx_add_inplace,
    .avg_pool_time = cvx_avg_pool_time,
    .slice_frames = cvx_slice_frames,
    .copy_box = cvx_copy_box,
    .download_box = cvx_download_box,
    .gather_frames = cvx_gather_frames,
    .blend_rows = cvx_blend_rows,
    .blend_cols = cvx_blend_cols,
};

const cvx_backend *cvx_backend_for(cvx_device dev) {
    switch (dev) {
    case CVX_DEVICE_CPU: return &cvx_backend_cpu;
    case CVX_DEVICE_EMU: return &cvx_backend_emu;
#ifdef CVX_WITH_CUDA
    case CVX_DEVICE_CUDA: return &cvx_backend_cuda;
#endif
    default: return NULL;
    }
}

/* ---- measure: the CPU ops' checks and allocations, no work ------------------------------------------------------
 * Each twin reads only sizes and pointers' values, never the bytes behind them (a measuring arena's addresses are
 * unbacked), and allocates through the same *_scratch / *_plan functions as its CPU op. */

static cvx_status m_bytes(cvx_ctx *ctx, void *a, const void *b, size_t bytes) {
    (void)ctx, (void)a, (void)b, (void)bytes;
    return CVX_OK;
}

static cvx_status m_fill(cvx_ctx *ctx, float *x, float value, int64_t n) {
    (void)ctx, (void)x, (void)value, (void)n;
    return CVX_OK;
}

static cvx_status m_widen(cvx_ctx *ctx, float *dst, const void *w, cvx_dtype dt, int64_t n) {
    (void)ctx, (void)dst, (void)w, (void)dt, (void)n;
    return CVX_OK;
}

static cvx_status m_linear(cvx_ctx *ctx, const float *x, int64_t M, int64_t K, const void *w, cvx_dtype wdt,
                           const void *bias, int64_t N, float *y) {
    (void)x, (void)w, (void)bias, (void)y;
    return cvx_ops_scratch_measure(ctx, cvx_linear_scratch(M, K, wdt, N));
}

static cvx_status m_layer_norm(cvx_ctx *ctx, const float *x, int64_t rows, int64_t D, float eps, const void *gamma,
                               const void *beta, cvx_dtype wdt, const float *scale, const float *shift, float *y) {
    (void)x, (void)rows, (void)eps, (void)scale, (void)shift, (void)y;
    return cvx_ops_scratch_measure(ctx, cvx_layer_norm_scratch(D, gamma, beta, wdt));
}

static cvx_status m_rms_norm(cvx_ctx *ctx, const float *x, int64_t rows, int64_t d, float eps, const void *w,
                             cvx_dtype wdt, float *y) {
    (void)x, (void)rows, (void)eps, (void)w, (void)y;
    return cvx_ops_scratch_measure(ctx, cvx_rms_norm_scratch(d, wdt));
}

static cvx_status m_gated_add(cvx_ctx *ctx, float *x, const float *gate, const float *y, int64_t rows, int64_t D) {
    (void)ctx, (void)x, (void)gate, (void)y, (void)rows, (void)D;
    return CVX_OK;
}

static cvx_status m_mul(cvx_ctx *ctx, float *x, const float *y, int64_t n) {
    (void)ctx, (void)x, (void)y, (void)n;
    return CVX_OK;
}

static cvx_status m_unary(cvx_ctx *ctx, float *x, int64_t n) {
    (void)ctx, (void)x, (void)n;
    return CVX_OK;
}

static cvx_status m_rope(cvx_ctx *ctx, float *x, int64_t rows, int64_t ld, int heads, int hd, const float *cos_tab,
                         const float *sin_tab) {
    (void)ctx, (void)x, (void)rows, (void)ld, (void)heads, (void)hd, (void)cos_tab, (void)sin_tab;
    return CVX_OK;
}

static cvx_status m_attention(cvx_ctx *ctx, const float *q, const float *k, const float *v, int64_t B, int64_t S,
                              int heads, int hd, float scale, float *out) {
    (void)q, (void)k, (void)v, (void)B, (void)S, (void)heads, (void)scale, (void)out;
    return cvx_ops_scratch_measure(ctx, cvx_attention_scratch(hd));
}

static cvx_status m_biased_attention(cvx_ctx *ctx, const float *q, const float *k, const float *v, int64_t B, int64_t S,
                                     int H, int kd, const float *bias, const float *key_mask, float *out) {
    (void)q, (void)k, (void)v, (void)B, (void)H, (void)kd, (void)bias, (void)key_mask, (void)out;
    return cvx_ops_scratch_measure(ctx, cvx_biased_attention_scratch(S));
}

static cvx_status m_embedding(cvx_ctx *ctx, const void *table, cvx_dtype dt, int64_t table_rows, const int64_t *ids,
                              int64_t n, int64_t d, float *out) {
    (void)ctx, (void)table, (void)dt, (void)table_rows, (void)ids, (void)n, (void)d, (void)out;
    return CVX_OK;
}

static cvx_status m_position_bias(cvx_ctx *ctx, const void *table, cvx_dtype dt, int num_buckets,
                                  const int32_t *buckets, int H, int64_t S, float *out) {
    (void)table, (void)buckets, (void)S, (void)out;
    return cvx_ops_scratch_measure(ctx, cvx_position_bias_scratch(num_buckets, H, dt));
}

static cvx_status m_gather_patches(cvx_ctx *ctx, const cvx_tensor *h, int p, int pt, float *out) {
    (void)ctx, (void)h, (void)p, (void)pt, (void)out;
    return CVX_OK;
}

static cvx_status m_unpatchify(cvx_ctx *ctx, const float *tok, int64_t B, int64_t Fp, int64_t Hp, int64_t Wp, int64_t C,
                               int p, int pt, float *out) {
    (void)ctx, (void)tok, (void)B, (void)Fp, (void)Hp, (void)Wp, (void)C, (void)p, (void)pt, (void)out;
    return CVX_OK;
}

static cvx_status m_conv3d(cvx_ctx *ctx, const cvx_frame *frames, int num_frames, int64_t batch, int64_t height,
                           int64_t width, const cvx_conv_weight *wt, const cvx_conv_geom *geom, cvx_tensor *out) {
    (void)frames;
    cvx_conv_plan plan;
    memset(out, 0, sizeof(*out));
    CVX_CHECK(cvx_conv3d_plan(num_frames, batch, height, width, wt, geom, &plan));
    CVX_CHECK(cvx_ctx_tensor(ctx, out, CVX_F32, 5, plan.out_shape));
    const cvx_status st = cvx_ops_scratch_measure(ctx, plan.scratch);
    if (st != CVX_OK) cvx_tensor_release(out);
    return st;
}

static cvx_status m_group_norm(cvx_ctx *ctx, const cvx_tensor *x, int groups, float eps, const float *gamma,
                               const float *beta, const cvx_norm_modulation *mod, int apply_silu, cvx_tensor *out) {
    (void)eps, (void)gamma, (void)beta, (void)apply_silu;
    size_t scratch = 0;
    CVX_CHECK(cvx_group_norm_plan(x, groups, mod, &scratch));
    if (out != x) CVX_CHECK(cvx_ctx_tensor5(ctx, out, x->shape[0], x->shape[1], x->shape[2], x->shape[3], x->shape[4]));
    const cvx_status st = cvx_ops_scratch_measure(ctx, scratch);
    if (st != CVX_OK && out != x) cvx_tensor_release(out);
    return st;
}

static cvx_status m_add_inplace(cvx_ctx *ctx, cvx_tensor *x, const cvx_tensor *y) {
    (void)ctx;
    if (cvx_tensor_numel(x) != cvx_tensor_numel(y))
        return CVX_FAIL(CVX_ERR_INVALID, "add: %lld and %lld elements", (long long)cvx_tensor_numel(x),
                        (long long)cvx_tensor_numel(y));
    return CVX_OK;
}

static cvx_status m_avg_pool_time(cvx_ctx *ctx, const cvx_tensor *x, cvx_tensor *out) {
    return cvx_ctx_tensor5(ctx, out, x->shape[0], x->shape[1], cvx_avg_pool_time_frames(x->shape[2]), x->shape[3],
                           x->shape[4]);
}

static cvx_status m_slice_frames(cvx_ctx *ctx, const cvx_tensor *x, int64_t first, int64_t count, cvx_tensor *out) {
    if (first < 0 || count < 0 || first + count > x->shape[2])
        return CVX_FAIL(CVX_ERR_INVALID, "frames [%lld, %lld) are outside the %lld frames", (long long)first,
                        (long long)(first + count), (long long)x->shape[2]);
    return cvx_ctx_tensor5(ctx, out, x->shape[0], x->shape[1], count, x->shape[3], x->shape[4]);
}

static cvx_status m_box(cvx_ctx *ctx, cvx_tensor *dst, const int64_t d[4], const cvx_tensor *src, const int64_t s[4],
                        const int64_t n[4]) {
    (void)ctx, (void)dst, (void)d, (void)src, (void)s, (void)n;
    return CVX_OK;
}

static cvx_status m_gather_frames(cvx_ctx *ctx, const cvx_frame *frames, int count, int64_t B, int64_t C, int64_t H,
                                  int64_t W, cvx_tensor *out) {
    (void)frames;
    return cvx_ctx_tensor5(ctx, out, B, C, count, H, W);
}

static cvx_status m_blend_rows(cvx_ctx *ctx, const cvx_tensor *a, cvx_tensor *b, int64_t a_full_rows, int64_t extent) {
    (void)ctx, (void)a, (void)b, (void)a_full_rows, (void)extent;
    return CVX_OK;
}

static cvx_status m_blend_cols(cvx_ctx *ctx, const cvx_tensor *a, cvx_tensor *b, int64_t extent) {
    (void)ctx, (void)a, (void)b, (void)extent;
    return CVX_OK;
}

static const cvx_backend measure = {
    .name = "measure",
    .upload = m_bytes,
    .download = m_bytes,
    .copy = m_bytes,
    .fill = m_fill,
    .widen = m_widen,
    .linear = m_linear,
    .layer_norm = m_layer_norm,
    .rms_norm = m_rms_norm,
    .gated_add = m_gated_add,
    .mul = m_mul,
    .silu = m_unary,
    .gelu_tanh = m_unary,
    .relu = m_unary,
    .rope = m_rope,
    .attention = m_attention,
    .biased_attention = m_biased_attention,
    .embedding = m_embedding,
    .position_bias = m_position_bias,
    .gather_patches = m_gather_patches,
    .unpatchify = m_unpatchify,
    .conv3d = m_conv3d,
    .group_norm = m_group_norm,
    .add_inplace = m_add_inplace,
    .avg_pool_time = m_avg_pool_time,
    .slice_frames = m_slice_frames,
    .copy_box = m_box,
    .download_box = m_box,
    .gather_frames = m_gather_frames,
    .blend_rows = m_blend_rows,
    .blend_cols = m_blend_cols,
};

const cvx_backend *cvx_backend_measure(void) { return &measure; }

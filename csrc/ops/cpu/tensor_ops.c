/* Data movement (upload, download, copies, frame gathers, the VAE's tile blending) and element-wise ops on
 * [B, C, T, H, W] activations. */
#include <string.h>

#include "../ops.h"

cvx_status cvx_upload(cvx_ctx *ctx, void *dst, const void *host, size_t bytes) {
    (void)ctx;
    if (bytes) memcpy(dst, host, bytes);
    return CVX_OK;
}

cvx_status cvx_download(cvx_ctx *ctx, void *host, const void *src, size_t bytes) {
    (void)ctx;
    if (bytes) memcpy(host, src, bytes);
    return CVX_OK;
}

cvx_status cvx_copy(cvx_ctx *ctx, void *dst, const void *src, size_t bytes) {
    (void)ctx;
    if (bytes) memcpy(dst, src, bytes);
    return CVX_OK;
}

cvx_status cvx_fill(cvx_ctx *ctx, float *x, float value, int64_t n) {
    (void)ctx;
    for (int64_t i = 0; i < n; i++) x[i] = value;
    return CVX_OK;
}

cvx_status cvx_widen(cvx_ctx *ctx, float *dst, const void *w, cvx_dtype dt, int64_t n) {
    (void)ctx;
    if (n > 0) cvx_convert(dst, CVX_F32, w, dt, (size_t)n);
    return CVX_OK;
}

cvx_status cvx_add_inplace(cvx_ctx *ctx, cvx_tensor *x, const cvx_tensor *y) {
    (void)ctx;
    const int64_t n = cvx_tensor_numel(x);
    if (n != cvx_tensor_numel(y))
        return CVX_FAIL(CVX_ERR_INVALID, "add: %lld and %lld elements", (long long)n, (long long)cvx_tensor_numel(y));
    float *xd = x->data;
    const float *yd = y->data;
#pragma omp parallel for schedule(static) num_threads(cvx_ops_threads_for(n))
    for (int64_t i = 0; i < n; i++) xd[i] += yd[i];
    return CVX_OK;
}

int64_t cvx_avg_pool_time_frames(int64_t T) { return T % 2 + (T - T % 2) / 2; }

cvx_status cvx_avg_pool_time(cvx_ctx *ctx, const cvx_tensor *x, cvx_tensor *out) {
    const int64_t B = x->shape[0], C = x->shape[1], T = x->shape[2], HW = x->shape[3] * x->shape[4];
    const int64_t keep_first = T % 2; /* an odd first frame passes through unpooled */
    const int64_t To = cvx_avg_pool_time_frames(T);
    CVX_CHECK(cvx_ctx_tensor5(ctx, out, B, C, To, x->shape[3], x->shape[4]));
    const float *xd = x->data;
    float *od = out->data;
#pragma omp parallel for schedule(static) num_threads(cvx_ops_threads_for(B *C *T *HW))
    for (int64_t bc = 0; bc < B * C; bc++) {
        const float *s = xd + bc * T * HW;
        float *d = od + bc * To * HW;
        if (keep_first) memcpy(d, s, (size_t)HW * sizeof(float));
        for (int64_t t = keep_first; t < To; t++) {
            const float *a = s + (keep_first + 2 * (t - keep_first)) * HW;
            const float *b = a + HW;
            for (int64_t i = 0; i < HW; i++) d[t * HW + i] = (a[i] + b[i]) / 2.0f;
        }
    }
    return CVX_OK;
}

cvx_status cvx_slice_frames(cvx_ctx *ctx, const cvx_tensor *x, int64_t first, int64_t count, cvx_tensor *out) {
    if (first < 0 || count < 0 || first + count > x->shape[2])
        return CVX_FAIL(CVX_ERR_INVALID, "frames [%lld, %lld) are outside the %lld frames", (long long)first,
                        (long long)(first + count), (long long)x->shape[2]);
    CVX_CHECK(cvx_ctx_tensor5(ctx, out, x->shape[0], x->shape[1], count, x->shape[3], x->shape[4]));
    const int64_t d[4] = {0, 0, 0, 0}, s[4] = {0, first, 0, 0};
    const int64_t n[4] = {x->shape[0], count, x->shape[3], x->shape[4]};
    return cvx_copy_box(ctx, out, d, x, s, n);
}

cvx_status cvx_copy_box(cvx_ctx *ctx, cvx_tensor *dst, const int64_t d[4], const cvx_tensor *src, const int64_t s[4],
                        const int64_t n[4]) {
    (void)ctx;
    const int64_t C = src->shape[1];
    const int64_t sT = src->shape[2], sH = src->shape[3], sW = src->shape[4];
    const int64_t dT = dst->shape[2], dH = dst->shape[3], dW = dst->shape[4];
    const float *sd = src->data;
    float *dd = dst->data;
#pragma omp parallel for schedule(static) collapse(2) num_threads(cvx_ops_threads_for(n[0] * C * n[1] * n[2] * n[3]))
    for (int64_t b = 0; b < n[0]; b++) {
        for (int64_t c = 0; c < C; c++) {
            for (int64_t t = 0; t < n[1]; t++) {
                for (int64_t y = 0; y < n[2]; y++) {
                    const float *from = sd + ((((s[0] + b) * C + c) * sT + s[1] + t) * sH + s[2] + y) * sW + s[3];
                    float *to = dd + ((((d[0] + b) * C + c) * dT + d[1] + t) * dH + d[2] + y) * dW + d[3];
                    memcpy(to, from, (size_t)n[3] * sizeof(float));
                }
            }
        }
    }
    return CVX_OK;
}

/* On the CPU the host output is plain memory: the same copy. */
cvx_status cvx_download_box(cvx_ctx *ctx, cvx_tensor *host_dst, const int64_t d[4], const cvx_tensor *src,
                            const int64_t s[4], const int64_t n[4]) {
    return cvx_copy_box(ctx, host_dst, d, src, s, n);
}

cvx_status cvx_gather_frames(cvx_ctx *ctx, const cvx_frame *frames, int count, int64_t B, int64_t C, int64_t H,
                             int64_t W, cvx_tensor *out) {
    CVX_CHECK(cvx_ctx_tensor5(ctx, out, B, C, count, H, W));
    float *o = out->data;
    for (int64_t b = 0; b < B; b++)
        for (int64_t c = 0; c < C; c++)
            for (int i = 0; i < count; i++)
                memcpy(o + ((b * C + c) * count + i) * H * W,
                       frames[i].ptr + b * frames[i].bstride + c * frames[i].cstride, (size_t)(H * W) * sizeof(float));
    return CVX_OK;
}

cvx_status cvx_blend_rows(cvx_ctx *ctx, const cvx_tensor *a, cvx_tensor *b, int64_t a_full_rows, int64_t extent) {
    (void)ctx;
    const int64_t Ha = a->shape[3], Hb = b->shape[3], W = b->shape[4];
    int64_t e = a_full_rows < Hb ? a_full_rows : Hb;
    if (extent < e) e = extent;
    const int64_t planes = b->shape[0] * b->shape[1] * b->shape[2];
    const float *ad = a->data;
    float *bd = b->data;
    for (int64_t p = 0; p < planes; p++)
        for (int64_t y = 0; y < e; y++) {
            const float wa = (float)(1.0 - (double)y / (double)e), wb = (float)((double)y / (double)e);
            const float *ar = ad + (p * Ha + Ha - e + y) * W;
            float *br = bd + (p * Hb + y) * W;
            for (int64_t x = 0; x < W; x++) {
                const float u = ar[x] * wa, v = br[x] * wb;
                br[x] = u + v;
            }
        }
    return CVX_OK;
}

cvx_status cvx_blend_cols(cvx_ctx *ctx, const cvx_tensor *a, cvx_tensor *b, int64_t extent) {
    (void)ctx;
    const int64_t Wa = a->shape[4], Wb = b->shape[4], H = b->shape[3];
    int64_t e = Wa < Wb ? Wa : Wb;
    if (extent < e) e = extent;
    const int64_t planes = b->shape[0] * b->shape[1] * b->shape[2];
    const float *ad = a->data;
    float *bd = b->data;
    for (int64_t p = 0; p < planes; p++)
        for (int64_t y = 0; y < H; y++) {
            const float *ar = ad + (p * H + y) * Wa + Wa - e;
            float *br = bd + (p * H + y) * Wb;
            for (int64_t x = 0; x < e; x++) {
                const float wa = (float)(1.0 - (double)x / (double)e), wb = (float)((double)x / (double)e);
                const float u = ar[x] * wa, v = br[x] * wb;
                br[x] = u + v;
            }
        }
    return CVX_OK;
}

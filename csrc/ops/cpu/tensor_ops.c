/* Element-wise and data-movement ops on [B, C, T, H, W] activations. */
#include <string.h>

#include "../ops.h"

cvx_status cvx_add_inplace(cvx_tensor *x, const cvx_tensor *y) {
    const int64_t n = cvx_tensor_numel(x);
    if (n != cvx_tensor_numel(y))
        return CVX_FAIL(CVX_ERR_INVALID, "add: %lld and %lld elements", (long long)n, (long long)cvx_tensor_numel(y));
    float *xd = x->data;
    const float *yd = y->data;
#pragma omp parallel for schedule(static) num_threads(cvx_ops_threads_for(n))
    for (int64_t i = 0; i < n; i++) xd[i] += yd[i];
    return CVX_OK;
}

cvx_status cvx_avg_pool_time(const cvx_tensor *x, cvx_tensor *out) {
    const int64_t B = x->shape[0], C = x->shape[1], T = x->shape[2], HW = x->shape[3] * x->shape[4];
    const int64_t keep_first = T % 2; /* an odd first frame passes through unpooled */
    const int64_t To = keep_first + (T - keep_first) / 2;
    CVX_CHECK(cvx_tensor_alloc5(out, B, C, To, x->shape[3], x->shape[4]));
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

cvx_status cvx_slice_frames(const cvx_tensor *x, int64_t first, int64_t count, cvx_tensor *out) {
    if (first < 0 || count < 0 || first + count > x->shape[2])
        return CVX_FAIL(CVX_ERR_INVALID, "frames [%lld, %lld) are outside the %lld frames", (long long)first,
                        (long long)(first + count), (long long)x->shape[2]);
    CVX_CHECK(cvx_tensor_alloc5(out, x->shape[0], x->shape[1], count, x->shape[3], x->shape[4]));
    const int64_t d[4] = {0, 0, 0, 0}, s[4] = {0, first, 0, 0};
    const int64_t n[4] = {x->shape[0], count, x->shape[3], x->shape[4]};
    cvx_copy_box(out, d, x, s, n);
    return CVX_OK;
}

void cvx_copy_box(cvx_tensor *dst, const int64_t d[4], const cvx_tensor *src, const int64_t s[4], const int64_t n[4]) {
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
}

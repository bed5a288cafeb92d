/* Normalisations: group norm (with CogVideoX's spatial-norm modulation and SiLU fused into the same pass), layer
 * norm with adaLN modulation and T5's RMS norm. */
#include <math.h>
#include <string.h>

#include "../ops.h"

int64_t cvx_nearest_src(int64_t dst, int64_t in_size, int64_t out_size) {
    /* PyTorch's legacy nearest: exact shortcuts for same size and x2, else floor(dst * (float)in/out). */
    if (in_size == out_size) return dst;
    if (out_size == 2 * in_size) return dst >> 1;
    const float scale = (float)in_size / (float)out_size;
    int64_t s = (int64_t)floorf((float)dst * scale);
    return s < in_size - 1 ? s : in_size - 1;
}

/* Source frame of zq for feature frame t: CogVideoXSpatialNorm3D resamples the first frame on its own when the
 * feature has an odd number (> 1) of frames. */
static int64_t spatial_norm_src_frame(int64_t t, int64_t tz, int64_t tf) {
    if (tf > 1 && tf % 2 == 1) return t == 0 ? 0 : 1 + cvx_nearest_src(t - 1, tz - 1, tf - 1);
    return cvx_nearest_src(t, tz, tf);
}

static inline float silu(float v) { return v / (1.0f + expf(-v)); }

cvx_status cvx_group_norm_plan(const cvx_tensor *x, int groups, const cvx_norm_modulation *mod, size_t *scratch) {
    const int64_t B = x->shape[0], C = x->shape[1], T = x->shape[2], H = x->shape[3], W = x->shape[4];
    if (groups <= 0 || C % groups != 0)
        return CVX_FAIL(CVX_ERR_INVALID, "group norm: %lld channels do not split into %d groups", (long long)C, groups);
    const cvx_tensor *my = mod ? mod->y : NULL, *mb = mod ? mod->b : NULL;
    if (my) {
        int same = mb != NULL && mb->ndim == 5 && my->ndim == 5 && my->shape[0] == B && my->shape[1] == C;
        for (int k = 0; same && k < 5; k++) same = mb->shape[k] == my->shape[k];
        if (!same)
            return CVX_FAIL(CVX_ERR_INVALID, "spatial norm: the modulation tensors must both be [%lld, %lld, T, H, W]",
                            (long long)B, (long long)C);
    }
    /* the row/column/frame maps of the modulation (nearest resampling) */
    *scratch = my ? (size_t)(T + H + W) * sizeof(int64_t) : 0;
    return CVX_OK;
}

cvx_status cvx_group_norm(cvx_ctx *ctx, const cvx_tensor *x, int groups, float eps, const float *gamma,
                          const float *beta, const cvx_norm_modulation *mod, int apply_silu, cvx_tensor *out) {
    const int64_t B = x->shape[0], C = x->shape[1], T = x->shape[2], H = x->shape[3], W = x->shape[4];
    size_t scratch = 0;
    CVX_CHECK(cvx_group_norm_plan(x, groups, mod, &scratch));
    const cvx_tensor *my = mod ? mod->y : NULL, *mb = mod ? mod->b : NULL;
    if (out != x) CVX_CHECK(cvx_ctx_tensor5(ctx, out, B, C, T, H, W));

    const int64_t cpg = C / groups, HW = H * W, THW = T * HW, n = cpg * THW;
    const float *xd = x->data;
    float *od = out->data;
    /* the row/column/frame maps of the modulation (nearest resampling), computed once */
    int64_t *map = NULL;
    int64_t Tz = 0, Hz = 0, Wz = 0;
    if (my) {
        Tz = my->shape[2], Hz = my->shape[3], Wz = my->shape[4];
        cvx_status st = cvx_ops_scratch(ctx, scratch, (void **)&map);
        if (st != CVX_OK) {
            if (out != x) cvx_tensor_release(out);
            return st;
        }
        for (int64_t t = 0; t < T; t++) map[t] = spatial_norm_src_frame(t, Tz, T);
        for (int64_t y = 0; y < H; y++) map[T + y] = cvx_nearest_src(y, Hz, H);
        for (int64_t xx = 0; xx < W; xx++) map[T + H + xx] = cvx_nearest_src(xx, Wz, W);
    }
    const int64_t *tmap = map, *ymap = map ? map + T : NULL, *xmap = map ? map + T + H : NULL;

#pragma omp parallel for schedule(dynamic) collapse(2) num_threads(cvx_ops_threads_for(3 * B * C * THW))
    for (int64_t b = 0; b < B; b++) {
        for (int64_t g = 0; g < groups; g++) {
            const float *src = xd + (b * C + g * cpg) * THW;
            double sum = 0.0, sq = 0.0;
            for (int64_t i = 0; i < n; i++) sum += src[i];
            const double mean = sum / (double)n;
            for (int64_t i = 0; i < n; i++) {
                double d = src[i] - mean;
                sq += d * d;
            }
            const float rstd = (float)(1.0 / sqrt(sq / (double)n + (double)eps));
            const float fmean = (float)mean;
            for (int64_t cc = 0; cc < cpg; cc++) {
                const int64_t c = g * cpg + cc;
                const float scale = rstd * gamma[c];
                const float shift = beta[c] - fmean * scale;
                const float *xs = src + cc * THW;
                float *os = od + (b * C + c) * THW;
                if (!my) {
                    for (int64_t i = 0; i < THW; i++) {
                        float v = xs[i] * scale + shift;
                        os[i] = apply_silu ? silu(v) : v;
                    }
                    continue;
                }
                const float *yc = (const float *)my->data + (b * C + c) * Tz * Hz * Wz;
                const float *bc = (const float *)mb->data + (b * C + c) * Tz * Hz * Wz;
                for (int64_t t = 0; t < T; t++) {
                    for (int64_t y = 0; y < H; y++) {
                        const int64_t zrow = (tmap[t] * Hz + ymap[y]) * Wz;
                        const int64_t row = t * HW + y * W;
                        for (int64_t xx = 0; xx < W; xx++) {
                            float v = (xs[row + xx] * scale + shift) * yc[zrow + xmap[xx]] + bc[zrow + xmap[xx]];
                            os[row + xx] = apply_silu ? silu(v) : v;
                        }
                    }
                }
            }
        }
    }
    cvx_ctx_free(ctx, map);
    return CVX_OK;
}

/* Convolution as im2col + SGEMM over blocks of output rows, so the column buffer stays a few MiB whatever the
 * frame size, and the blocks are spread over OpenMP threads (each with its own buffer, BLAS single-threaded). */
#include <string.h>

#include "../ops.h"

#ifdef _OPENMP
#include <omp.h>
#endif

#include <cblas.h>

void cvx_ops_init(void) { scipy_openblas_set_num_threads(1); }

int cvx_ops_num_threads(void) {
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
}

int cvx_ops_threads_for(int64_t work) { return work < CVX_PARALLEL_MIN_WORK ? 1 : cvx_ops_num_threads(); }

cvx_status cvx_ops_scratch(cvx_ctx *ctx, size_t bytes, void **out) {
    *out = NULL;
    return bytes ? cvx_ctx_alloc(ctx, bytes, out) : CVX_OK;
}

cvx_status cvx_ops_scratch_measure(cvx_ctx *ctx, size_t bytes) {
    void *p = NULL;
    CVX_CHECK(cvx_ops_scratch(ctx, bytes, &p));
    if (p) cvx_ctx_free(ctx, p);
    return CVX_OK;
}

void cvx_frames_of(const cvx_tensor *t, int64_t first, int64_t count, cvx_frame *frames) {
    const int64_t C = t->shape[1], T = t->shape[2], HW = t->shape[3] * t->shape[4];
    for (int64_t i = 0; i < count; i++) {
        frames[i].ptr = (const float *)t->data + (first + i) * HW;
        frames[i].cstride = T * HW;
        frames[i].bstride = C * T * HW;
    }
}

/* col is [K = Ci*kt*kh*kw, rows*Wo] for output rows [oy0, oy0 + rows) of output frame t, batch b. */
static void im2col_rows(const cvx_frame *frames, int64_t b, int t, int64_t H, int64_t W, const cvx_conv_weight *wt,
                        const cvx_conv_geom *g, int64_t Wo, int64_t oy0, int64_t rows, float *col) {
    const int up = g->up;
    const int64_t Hv = H * up, Wv = W * up; /* the virtual (upsampled) frame */
    const int64_t n = rows * Wo;
    float *dst = col;
    for (int ci = 0; ci < wt->ci; ci++) {
        for (int dt = 0; dt < wt->kt; dt++) {
            const cvx_frame *fr = &frames[t + dt];
            const float *plane = fr->ptr + b * fr->bstride + (int64_t)ci * fr->cstride;
            for (int dy = 0; dy < wt->kh; dy++) {
                for (int dx = 0; dx < wt->kw; dx++, dst += n) {
                    for (int64_t r = 0; r < rows; r++) {
                        float *out = dst + r * Wo;
                        const int64_t iy = (oy0 + r) * g->stride_h - g->pad_top + dy;
                        if (iy < 0 || iy >= Hv) {
                            memset(out, 0, (size_t)Wo * sizeof(float));
                            continue;
                        }
                        const float *src = plane + (iy / up) * W;
                        const int64_t ix0 = (int64_t)dx - g->pad_left;
                        if (up == 1 && g->stride_w == 1) {
                            /* the common case: one contiguous run with zeros at the borders */
                            int64_t lo = ix0 < 0 ? -ix0 : 0;
                            int64_t hi = W - ix0 < Wo ? W - ix0 : Wo;
                            if (hi < lo) hi = lo;
                            for (int64_t ox = 0; ox < lo; ox++) out[ox] = 0.0f;
                            if (hi > lo) memcpy(out + lo, src + ix0 + lo, (size_t)(hi - lo) * sizeof(float));
                            for (int64_t ox = hi; ox < Wo; ox++) out[ox] = 0.0f;
                        } else {
                            for (int64_t ox = 0; ox < Wo; ox++) {
                                const int64_t ix = ox * g->stride_w + ix0;
                                out[ox] = (ix < 0 || ix >= Wv) ? 0.0f : src[ix / up];
                            }
                        }
                    }
                }
            }
        }
    }
}

/* ---- Winograd F(2x2, 3x3) ----------------------------------------------------------------------------------------
 * The VAE's time goes to 3x3 (x kt) convolutions with stride 1 and padding 1. Winograd's minimal filtering computes
 * each 2x2 output tile from a 4x4 input patch with 16 multiplies per (ci, co, dt) instead of 36, i.e. 2.25x fewer
 * GEMM flops, as 16 GEMMs [Co, Ci*kt] x [Ci*kt, tiles]. F(2x2, 3x3) uses only the constants 0, +-1 and 1/2, so
 * it stays within a few ulps of the direct convolution in f32. */

/* U[xi][co][k] = (G g G^T)[xi] for every 3x3 slice g = w[co, ci, dt] (k = ci * kt + dt). */
static void winograd_weights(const float *w, int co, int64_t k, float *u) {
    /* paid on every conv call (each frame batch and each tile of a tiled VAE call): over the threads, as the
     * transform of a small tile's convs costs about as much as their GEMMs; every output is computed alike */
#pragma omp parallel for schedule(static) num_threads(cvx_ops_threads_for((int64_t)co *k * 64))
    for (int o = 0; o < co; o++) {
        for (int64_t kk = 0; kk < k; kk++) {
            const float *g = w + ((int64_t)o * k + kk) * 9;
            float t[4][3]; /* G g */
            for (int c = 0; c < 3; c++) {
                t[0][c] = g[c];
                t[1][c] = 0.5f * (g[c] + g[3 + c] + g[6 + c]);
                t[2][c] = 0.5f * (g[c] - g[3 + c] + g[6 + c]);
                t[3][c] = g[6 + c];
            }
            for (int r = 0; r < 4; r++) {
                const float v[4] = {t[r][0], 0.5f * (t[r][0] + t[r][1] + t[r][2]), 0.5f * (t[r][0] - t[r][1] + t[r][2]),
                                    t[r][2]};
                for (int c = 0; c < 4; c++) u[((int64_t)(r * 4 + c) * co + o) * k + kk] = v[c];
            }
        }
    }
}

/* One input row of the virtual (upsampled) frame, zero-padded: out[x] = image[iy][x - 1] for x in [0, Wp), with
 * Wp >= Wv + 2 (an odd width's last tile reads one column further). */
static void padded_row(const float *plane, int64_t iy, int64_t H, int64_t W, int up, int64_t Wp, float *out) {
    const int64_t Wv = W * up;
    out[0] = 0.0f;
    for (int64_t x = Wv + 1; x < Wp; x++) out[x] = 0.0f;
    if (iy < 0 || iy >= H * up) {
        memset(out + 1, 0, (size_t)Wv * sizeof(float));
        return;
    }
    const float *src = plane + (up == 1 ? iy : iy >> 1) * W;
    if (up == 1) {
        memcpy(out + 1, src, (size_t)W * sizeof(float));
    } else {
        for (int64_t x = 0; x < W; x++) out[1 + 2 * x] = out[2 + 2 * x] = src[x];
    }
}

/* V[xi][k][tile] = (B^T d B)[xi] for the 4x4 input patches of tiles [tile0, tile0 + nt) of output frame t. The row
 * half of the transform (B^T d) is done once per tile row over the whole padded width, in contiguous loops;
 * `strip` holds 8 rows of 2 * tiles_w + 2 floats. */
static void winograd_inputs(const cvx_frame *frames, int64_t b, int t, int kt, int ci, int64_t H, int64_t W, int up,
                            int64_t tiles_w, int64_t tile0, int64_t nt, float *v, float *strip) {
    const int64_t k = (int64_t)ci * kt, Wp = 2 * tiles_w + 2;
    float *d = strip, *s = strip + 4 * Wp;
    for (int c = 0; c < ci; c++) {
        for (int dt = 0; dt < kt; dt++) {
            const cvx_frame *fr = &frames[t + dt];
            const float *plane = fr->ptr + b * fr->bstride + (int64_t)c * fr->cstride;
            float *vk = v + ((int64_t)c * kt + dt) * nt;
            int64_t i = 0;
            while (i < nt) {
                const int64_t ty = (tile0 + i) / tiles_w, tx0 = (tile0 + i) % tiles_w;
                const int64_t run = tiles_w - tx0 < nt - i ? tiles_w - tx0 : nt - i;
                for (int r = 0; r < 4; r++) padded_row(plane, 2 * ty - 1 + r, H, W, up, Wp, d + r * Wp);
                for (int64_t x = 2 * tx0; x < 2 * (tx0 + run) + 2; x++) {
                    s[x] = d[x] - d[2 * Wp + x];
                    s[Wp + x] = d[Wp + x] + d[2 * Wp + x];
                    s[2 * Wp + x] = d[2 * Wp + x] - d[Wp + x];
                    s[3 * Wp + x] = d[Wp + x] - d[3 * Wp + x];
                }
                for (int r = 0; r < 4; r++) {
                    const float *sr = s + r * Wp;
                    float *v0 = vk + (int64_t)(4 * r) * k * nt, *v1 = v0 + k * nt, *v2 = v1 + k * nt, *v3 = v2 + k * nt;
                    for (int64_t q = 0; q < run; q++) {
                        const float *p = sr + 2 * (tx0 + q);
                        v0[i + q] = p[0] - p[2];
                        v1[i + q] = p[1] + p[2];
                        v2[i + q] = p[2] - p[1];
                        v3[i + q] = p[1] - p[3];
                    }
                }
                i += run;
            }
        }
    }
}

/* out tile = A^T m A (+ bias), clipped at the frame border. m is [16][co][nt]. */
static void winograd_outputs(const float *m, int co, int64_t nt, int64_t tile0, int64_t tiles_w, const float *bias,
                             float *o, int64_t ocs, int64_t Ho, int64_t Wo) {
    for (int c = 0; c < co; c++) {
        const float bv = bias ? bias[c] : 0.0f;
        for (int64_t i = 0; i < nt; i++) {
            float x[4][4];
            for (int xi = 0; xi < 16; xi++) x[xi / 4][xi % 4] = m[((int64_t)xi * co + c) * nt + i];
            float s[2][4]; /* A^T x */
            for (int q = 0; q < 4; q++) {
                s[0][q] = x[0][q] + x[1][q] + x[2][q];
                s[1][q] = x[1][q] - x[2][q] - x[3][q];
            }
            const int64_t ty = (tile0 + i) / tiles_w, tx = (tile0 + i) % tiles_w;
            for (int r = 0; r < 2; r++) {
                const int64_t oy = 2 * ty + r;
                if (oy >= Ho) break;
                const float y0 = s[r][0] + s[r][1] + s[r][2], y1 = s[r][1] - s[r][2] - s[r][3];
                float *row = o + (int64_t)c * ocs + oy * Wo + 2 * tx;
                row[0] = y0 + bv;
                if (2 * tx + 1 < Wo) row[1] = y1 + bv;
            }
        }
    }
}

/* The geometry both paths share, from the sizes alone. */
typedef struct conv_dims {
    int64_t Ho, Wo, K;
    int To;
    int winograd, pointwise;
    int64_t wino_nt, wino_tiles, wino_tiles_w, wino_per_thread; /* Winograd: tiles per task, per-thread floats */
    int64_t rows;                                               /* im2col: output rows per task */
    int64_t wf, u, work;                                        /* scratch floats: widened weights, U, work */
} conv_dims;

static int64_t round16(int64_t n) { return (n + 15) / 16 * 16; } /* keeps each scratch part 64-byte aligned */

static cvx_status conv_dims_of(int num_frames, int64_t height, int64_t width, const cvx_conv_weight *wt,
                               const cvx_conv_geom *g, conv_dims *d) {
    memset(d, 0, sizeof(*d));
    if (num_frames < wt->kt)
        return CVX_FAIL(CVX_ERR_INVALID, "conv3d: %d input frames for a temporal kernel of %d", num_frames, wt->kt);
    if (g->stride_h < 1 || g->stride_w < 1 || g->pad_top < 0 || g->pad_bottom < 0 || g->pad_left < 0 ||
        g->pad_right < 0)
        return CVX_FAIL(CVX_ERR_INVALID, "conv3d: strides must be positive and paddings non-negative");
    if (g->up != 1 && g->up != 2) return CVX_FAIL(CVX_ERR_INVALID, "conv3d: upsampling factor %d", g->up);
    const int64_t Hv = height * g->up, Wv = width * g->up;
    d->Ho = (Hv + g->pad_top + g->pad_bottom - wt->kh) / g->stride_h + 1;
    d->Wo = (Wv + g->pad_left + g->pad_right - wt->kw) / g->stride_w + 1;
    d->To = num_frames - wt->kt + 1;
    if (d->Ho <= 0 || d->Wo <= 0)
        return CVX_FAIL(CVX_ERR_INVALID, "conv3d: a %lldx%lld input is smaller than the %dx%d kernel", (long long)Hv,
                        (long long)Wv, wt->kh, wt->kw);
    d->K = (int64_t)wt->ci * wt->kt * wt->kh * wt->kw;
    const int threads = cvx_ops_num_threads();
    if (wt->dtype != CVX_F32) d->wf = round16(d->K * wt->co);
    /* weights are [Co, Ci, kt, 3, 3]: consecutive 3x3 slices, as winograd_weights reads them */
    d->winograd = wt->kh == 3 && wt->kw == 3 && g->stride_h == 1 && g->stride_w == 1 && g->pad_top == 1 &&
                  g->pad_bottom == 1 && g->pad_left == 1 && g->pad_right == 1;
    if (d->winograd) {
        const int64_t k = (int64_t)wt->ci * wt->kt;
        const int64_t Ho = height * g->up, Wo = width * g->up;
        d->wino_tiles_w = (Wo + 1) / 2;
        d->wino_tiles = (Ho + 1) / 2 * d->wino_tiles_w;
        int64_t nt = CVX_CONV_WINO_BYTES / (16 * (k + wt->co) * (int64_t)sizeof(float));
        if (nt < 16) nt = 16;
        if (nt > d->wino_tiles) nt = d->wino_tiles;
        d->wino_nt = nt;
        d->wino_per_thread = 16 * (k + wt->co) * nt + 8 * (2 * d->wino_tiles_w + 2);
        d->u = round16(16 * wt->co * k);
        d->work = threads * d->wino_per_thread;
        return CVX_OK;
    }
    d->pointwise = wt->kt == 1 && wt->kh == 1 && wt->kw == 1 && g->up == 1 && g->stride_h == 1 && g->stride_w == 1 &&
                   !g->pad_top && !g->pad_bottom && !g->pad_left && !g->pad_right;
    int64_t rows = CVX_CONV_COL_BYTES / (d->K * d->Wo * (int64_t)sizeof(float));
    if (rows < 1) rows = 1;
    if (rows > d->Ho) rows = d->Ho;
    if (d->pointwise) rows = d->Ho; /* no column buffer: the frame itself is the GEMM operand */
    d->rows = rows;
    if (!d->pointwise) d->work = threads * d->K * rows * d->Wo;
    return CVX_OK;
}

cvx_status cvx_conv3d_plan(int num_frames, int64_t batch, int64_t height, int64_t width, const cvx_conv_weight *wt,
                           const cvx_conv_geom *geom, cvx_conv_plan *plan) {
    conv_dims d;
    CVX_CHECK(conv_dims_of(num_frames, height, width, wt, geom, &d));
    const int64_t shape[5] = {batch, wt->co, d.To, d.Ho, d.Wo};
    memcpy(plan->out_shape, shape, sizeof(shape));
    plan->scratch = (size_t)(d.wf + d.u + d.work) * sizeof(float);
    return CVX_OK;
}

static void conv3d_winograd(const cvx_frame *frames, int64_t batch, int64_t H, int64_t W, int up,
                            const cvx_conv_weight *wt, const float *w, const conv_dims *d, float *u, float *work,
                            cvx_tensor *out) {
    const int To = d->To;
    const int64_t Ho = H * up, Wo = W * up, k = (int64_t)wt->ci * wt->kt;
    const int64_t tiles = d->wino_tiles, tiles_w = d->wino_tiles_w, nt = d->wino_nt;
    const int64_t blocks = (tiles + nt - 1) / nt, tasks = batch * To * blocks;
    const int64_t per_thread = d->wino_per_thread;
    winograd_weights(w, wt->co, k, u);
    float *o = out->data;
    const int64_t ocs = (int64_t)To * Ho * Wo;
#pragma omp parallel for schedule(dynamic) num_threads(cvx_ops_threads_for(batch *To *tiles *k * wt->co))
    for (int64_t task = 0; task < tasks; task++) {
        const int64_t b = task / (To * blocks);
        const int t = (int)((task / blocks) % To);
        const int64_t tile0 = (task % blocks) * nt;
        const int64_t n = tiles - tile0 < nt ? tiles - tile0 : nt;
#ifdef _OPENMP
        float *v = work + (int64_t)omp_get_thread_num() * per_thread;
#else
        float *v = work;
#endif
        float *m = v + 16 * k * nt;
        winograd_inputs(frames, b, t, wt->kt, wt->ci, H, W, up, tiles_w, tile0, n, v, m + 16 * wt->co * nt);
        for (int xi = 0; xi < 16; xi++)
            scipy_cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, wt->co, (int)n, (int)k, 1.0f,
                              u + (int64_t)xi * wt->co * k, (int)k, v + (int64_t)xi * k * n, (int)n, 0.0f,
                              m + (int64_t)xi * wt->co * n, (int)n);
        winograd_outputs(m, wt->co, n, tile0, tiles_w, wt->bias, o + b * wt->co * ocs + (int64_t)t * Ho * Wo, ocs, Ho,
                         Wo);
    }
}

cvx_status cvx_conv3d(cvx_ctx *ctx, const cvx_frame *frames, int num_frames, int64_t batch, int64_t height,
                      int64_t width, const cvx_conv_weight *wt, const cvx_conv_geom *g, cvx_tensor *out) {
    float *scratch = NULL;
    memset(out, 0, sizeof(*out));
    conv_dims d;
    cvx_conv_plan plan;
    CVX_CHECK(conv_dims_of(num_frames, height, width, wt, g, &d));
    CVX_CHECK(cvx_conv3d_plan(num_frames, batch, height, width, wt, g, &plan));
    CVX_CHECK(cvx_ctx_tensor(ctx, out, CVX_F32, 5, plan.out_shape));
    cvx_status st = cvx_ops_scratch(ctx, plan.scratch, (void **)&scratch);
    if (st != CVX_OK) {
        cvx_tensor_release(out);
        return st;
    }
    const int64_t Ho = d.Ho, Wo = d.Wo, K = d.K;
    const int To = d.To;
    const float *w = wt->w;
    if (wt->dtype != CVX_F32) {
        cvx_convert(scratch, CVX_F32, wt->w, wt->dtype, (size_t)(K * wt->co));
        w = scratch;
    }
    float *work = scratch ? scratch + d.wf + d.u : NULL;

    if (d.winograd) {
        conv3d_winograd(frames, batch, height, width, g->up, wt, w, &d, scratch + d.wf, work, out);
        cvx_ctx_free(ctx, scratch);
        return CVX_OK;
    }

    const int pointwise = d.pointwise;
    const int64_t rows = d.rows;
    const int64_t row_blocks = (Ho + rows - 1) / rows;
    const int64_t tasks = batch * To * row_blocks;
    float *cols = work;

    float *o = out->data;
    const int64_t ocs = (int64_t)To * Ho * Wo; /* output channel stride */
#pragma omp parallel for schedule(dynamic) num_threads(cvx_ops_threads_for(batch *To *Ho *Wo *K * wt->co / 16))
    for (int64_t task = 0; task < tasks; task++) {
        const int64_t b = task / (To * row_blocks);
        const int t = (int)((task / row_blocks) % To);
        const int64_t oy0 = (task % row_blocks) * rows;
        const int64_t nr = Ho - oy0 < rows ? Ho - oy0 : rows;
        const int64_t n = nr * Wo;
        float *c = o + b * wt->co * ocs + (int64_t)t * Ho * Wo + oy0 * Wo;
        for (int co = 0; co < wt->co; co++) {
            const float v = wt->bias ? wt->bias[co] : 0.0f;
            float *cr = c + co * ocs;
            for (int64_t i = 0; i < n; i++) cr[i] = v;
        }
        const float *bmat;
        int64_t ldb;
        if (pointwise) {
            const cvx_frame *fr = &frames[t];
            bmat = fr->ptr + b * fr->bstride;
            ldb = fr->cstride;
        } else {
#ifdef _OPENMP
            float *col = cols + (int64_t)omp_get_thread_num() * K * rows * Wo;
#else
            float *col = cols;
#endif
            im2col_rows(frames, b, t, height, width, wt, g, Wo, oy0, nr, col);
            bmat = col;
            ldb = n;
        }
        scipy_cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, wt->co, (int)n, (int)K, 1.0f, w, (int)K, bmat,
                          (int)ldb, 1.0f, c, (int)ocs);
    }
    cvx_ctx_free(ctx, scratch);
    return CVX_OK;
}

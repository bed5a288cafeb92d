/* Convolution as im2col + SGEMM over blocks of output rows, so the column buffer stays a few MiB whatever the
 * frame size, and the blocks are spread over OpenMP threads (each with its own buffer, BLAS single-threaded). */
#include <string.h>

#include "../ops.h"

#ifdef _OPENMP
#include <omp.h>
#endif

#include <cblas.h>

#define COL_BUFFER_TARGET_BYTES ((int64_t)4 << 20)

void cvx_ops_init(void) { scipy_openblas_set_num_threads(1); }

int cvx_ops_num_threads(void) {
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
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

cvx_status cvx_conv3d(const cvx_frame *frames, int num_frames, int64_t batch, int64_t height, int64_t width,
                      const cvx_conv_weight *wt, const cvx_conv_geom *g, cvx_tensor *out) {
    cvx_status st = CVX_OK;
    float *wf = NULL, *cols = NULL;
    memset(out, 0, sizeof(*out));
    if (num_frames < wt->kt)
        return CVX_FAIL(CVX_ERR_INVALID, "conv3d: %d input frames for a temporal kernel of %d", num_frames, wt->kt);
    if (g->stride_h < 1 || g->stride_w < 1 || g->pad_top < 0 || g->pad_bottom < 0 || g->pad_left < 0 ||
        g->pad_right < 0)
        return CVX_FAIL(CVX_ERR_INVALID, "conv3d: strides must be positive and paddings non-negative");
    if (g->up != 1 && g->up != 2) return CVX_FAIL(CVX_ERR_INVALID, "conv3d: upsampling factor %d", g->up);
    const int64_t Hv = height * g->up, Wv = width * g->up;
    const int64_t Ho = (Hv + g->pad_top + g->pad_bottom - wt->kh) / g->stride_h + 1;
    const int64_t Wo = (Wv + g->pad_left + g->pad_right - wt->kw) / g->stride_w + 1;
    const int To = num_frames - wt->kt + 1;
    if (Ho <= 0 || Wo <= 0)
        return CVX_FAIL(CVX_ERR_INVALID, "conv3d: a %lldx%lld input is smaller than the %dx%d kernel", (long long)Hv,
                        (long long)Wv, wt->kh, wt->kw);
    const int64_t K = (int64_t)wt->ci * wt->kt * wt->kh * wt->kw;

    CVX_TRY(cvx_tensor_alloc5(out, batch, wt->co, To, Ho, Wo));
    const float *w = wt->w;
    if (wt->dtype != CVX_F32) {
        CVX_TRY(cvx_mem_alloc(CVX_DEVICE_CPU, CVX_MEM_ACTIVATIONS, (size_t)(K * wt->co) * sizeof(float), (void **)&wf));
        cvx_convert(wf, CVX_F32, wt->w, wt->dtype, (size_t)(K * wt->co));
        w = wf;
    }

    const int pointwise = wt->kt == 1 && wt->kh == 1 && wt->kw == 1 && g->up == 1 && g->stride_h == 1 &&
                          g->stride_w == 1 && !g->pad_top && !g->pad_bottom && !g->pad_left && !g->pad_right;
    int64_t rows = COL_BUFFER_TARGET_BYTES / (K * Wo * (int64_t)sizeof(float));
    if (rows < 1) rows = 1;
    if (rows > Ho) rows = Ho;
    if (pointwise) rows = Ho; /* no column buffer: the frame itself is the GEMM operand */
    const int64_t row_blocks = (Ho + rows - 1) / rows;
    const int64_t tasks = batch * To * row_blocks;
    const int threads = cvx_ops_num_threads();
    if (!pointwise)
        CVX_TRY(cvx_mem_alloc(CVX_DEVICE_CPU, CVX_MEM_ACTIVATIONS,
                              (size_t)threads * (size_t)(K * rows * Wo) * sizeof(float), (void **)&cols));

    float *o = out->data;
    const int64_t ocs = (int64_t)To * Ho * Wo; /* output channel stride */
#pragma omp parallel for schedule(dynamic) num_threads(threads)
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

fail:
    cvx_mem_free(cols);
    cvx_mem_free(wf);
    if (st != CVX_OK) cvx_tensor_release(out);
    return st;
}

/* The CPU ops (csrc/ops/ops.h) against naive reference loops accumulated in double.
 *
 * Each numeric check prints the largest difference from the reference, relative to the reference's largest
 * magnitude, and fails past TOL. Every op is also checked to leave no memory-manager allocation live once its
 * outputs are released, and the invalid inputs it refuses to fail with CVX_ERR_INVALID without leaking. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../csrc/core/dtype.h"
#include "../../csrc/core/tensor.h"
#include "../../csrc/mem/arena.h"
#include "../../csrc/mem/mem.h"
#include "../../csrc/ops/backend.h"

#define CVX_TEST_SEED 0x2545f4914f6cdd1dull
#include "cvx_test.h"

/* The ops run on the CPU backend, their scratch and outputs straight from the memory manager (no arena). */
static cvx_ctx CTX = {.be = &cvx_backend_cpu, .device = CVX_DEVICE_CPU};

#define TOL 1e-4

static int is_empty(const cvx_tensor *t) {
    cvx_tensor z;
    memset(&z, 0, sizeof(z));
    return memcmp(t, &z, sizeof(z)) == 0;
}

static void expect_close(const char *what, const float *got, const double *ref, int64_t n) {
    expect_close_tol(what, got, ref, n, TOL);
}

static void expect_shape5(const char *what, const cvx_tensor *t, int64_t b, int64_t c, int64_t f, int64_t h,
                          int64_t w) {
    CVX_EXPECT(t->ndim == 5 && t->dtype == CVX_F32 && t->device == CVX_DEVICE_CPU && t->shape[0] == b &&
                   t->shape[1] == c && t->shape[2] == f && t->shape[3] == h && t->shape[4] == w,
               "%s: shape [%lld %lld %lld %lld %lld] (ndim %d), want [%lld %lld %lld %lld %lld]", what,
               (long long)t->shape[0], (long long)t->shape[1], (long long)t->shape[2], (long long)t->shape[3],
               (long long)t->shape[4], t->ndim, (long long)b, (long long)c, (long long)f, (long long)h, (long long)w);
}

/* ---------------------------------------------------------------------------------------------------------------- */
/* conv3d */

/* The reference reads the input only through the frame structs (their meaning is the documented contract). */
static void ref_conv3d(const cvx_frame *frames, int num_frames, int64_t B, int64_t H, int64_t W, const float *w,
                       const float *bias, int co_n, int ci_n, int kt, int kh, int kw, const cvx_conv_geom *g,
                       int64_t Ho, int64_t Wo, double *out) {
    const int To = num_frames - kt + 1;
    const int64_t Hv = H * g->up, Wv = W * g->up;
    for (int64_t b = 0; b < B; b++)
        for (int co = 0; co < co_n; co++)
            for (int t = 0; t < To; t++)
                for (int64_t oy = 0; oy < Ho; oy++)
                    for (int64_t ox = 0; ox < Wo; ox++) {
                        double acc = bias ? bias[co] : 0.0;
                        for (int ci = 0; ci < ci_n; ci++)
                            for (int dt = 0; dt < kt; dt++) {
                                const cvx_frame *fr = &frames[t + dt];
                                for (int dy = 0; dy < kh; dy++) {
                                    const int64_t iy = oy * g->stride_h - g->pad_top + dy;
                                    if (iy < 0 || iy >= Hv) continue;
                                    for (int dx = 0; dx < kw; dx++) {
                                        const int64_t ix = ox * g->stride_w - g->pad_left + dx;
                                        if (ix < 0 || ix >= Wv) continue;
                                        const float xv =
                                            fr->ptr[b * fr->bstride + ci * fr->cstride + (iy / g->up) * W + ix / g->up];
                                        const float wv =
                                            w[(((int64_t)co * ci_n + ci) * kt + dt) * kh * kw + dy * kw + dx];
                                        acc += (double)xv * (double)wv;
                                    }
                                }
                            }
                        out[(((b * co_n + co) * To + t) * Ho + oy) * Wo + ox] = acc;
                    }
}

typedef struct conv_case {
    const char *name;
    int64_t B, Ci, T, H, W; /* the source tensor */
    int Co, kt, kh, kw;
    cvx_conv_geom g;
    cvx_dtype wdt;
    int bias;
    int nframes; /* 0: all T frames in order (cvx_frames_of) */
    int fidx[8];
    int64_t cache_T; /* > 0: frames with index < 0 come from a second tensor (a cache) of this many frames:
                        -1 is its last frame, -2 the one before */
} conv_case;

static void run_conv_case(const conv_case *cc) {
    char what[160];
    const int64_t B = cc->B, Ci = cc->Ci, T = cc->T, H = cc->H, W = cc->W;
    cvx_tensor x, cache;
    memset(&cache, 0, sizeof(cache));
    CVX_EXPECT(cvx_tensor_alloc5(&x, B, Ci, T, H, W) == CVX_OK, "%s: alloc x", cc->name);
    fill(x.data, cvx_tensor_numel(&x), 1.0f, 0.0f);
    if (cc->cache_T > 0) {
        CVX_EXPECT(cvx_tensor_alloc5(&cache, B, Ci, cc->cache_T, H, W) == CVX_OK, "%s: alloc cache", cc->name);
        fill(cache.data, cvx_tensor_numel(&cache), 1.0f, 0.0f);
    }

    const int nf = cc->nframes ? cc->nframes : (int)T;
    cvx_frame frames[16];
    if (cc->nframes == 0) {
        cvx_frames_of(&x, 0, T, frames);
    } else {
        for (int i = 0; i < nf; i++) {
            if (cc->fidx[i] >= 0)
                cvx_frames_of(&x, cc->fidx[i], 1, &frames[i]);
            else
                cvx_frames_of(&cache, cc->cache_T + cc->fidx[i], 1, &frames[i]);
        }
    }

    /* weights: random, narrowed to the weight dtype; the reference uses the exact widened values */
    const int64_t nw = (int64_t)cc->Co * Ci * cc->kt * cc->kh * cc->kw;
    float *w32 = xmalloc((size_t)nw * sizeof(float));
    uint16_t *w16 = xmalloc((size_t)nw * sizeof(uint16_t));
    const float wscale = 1.0f / sqrtf((float)(Ci * cc->kt * cc->kh * cc->kw));
    for (int64_t i = 0; i < nw; i++) {
        float v = frand() * wscale;
        if (cc->wdt == CVX_F16) {
            w16[i] = cvx_f32_to_f16(v);
            w32[i] = cvx_f16_to_f32(w16[i]);
        } else if (cc->wdt == CVX_BF16) {
            w16[i] = cvx_f32_to_bf16(v);
            w32[i] = cvx_bf16_to_f32(w16[i]);
        } else {
            w32[i] = v;
        }
    }
    float *bias = NULL;
    if (cc->bias) {
        bias = xmalloc((size_t)cc->Co * sizeof(float));
        fill(bias, cc->Co, 0.5f, 0.0f);
    }
    cvx_conv_weight wt = {cc->wdt == CVX_F32 ? (const void *)w32 : (const void *)w16,
                          cc->wdt,
                          bias,
                          cc->Co,
                          (int)Ci,
                          cc->kt,
                          cc->kh,
                          cc->kw};
    const cvx_conv_geom *g = &cc->g;
    const int64_t Ho = (H * g->up + g->pad_top + g->pad_bottom - cc->kh) / g->stride_h + 1;
    const int64_t Wo = (W * g->up + g->pad_left + g->pad_right - cc->kw) / g->stride_w + 1;
    const int To = nf - cc->kt + 1;
    const int64_t K = Ci * cc->kt * cc->kh * cc->kw;
    int64_t rows = CVX_CONV_COL_BYTES / (K * Wo * 4);
    if (rows < 1) rows = 1;
    if (rows > Ho) rows = Ho;
    const int64_t blocks = (Ho + rows - 1) / rows;

    const int64_t base = live_bytes();
    cvx_mem_reset_peak(CVX_DEVICE_CPU);
    cvx_tensor out;
    memset(&out, 0xff, sizeof(out)); /* the op must not care what out held */
    cvx_status st = cvx_conv3d(&CTX, frames, nf, B, H, W, &wt, g, &out);
    CVX_EXPECT(st == CVX_OK, "%s: status %d: %s", cc->name, (int)st, cvx_error_message());
    if (st == CVX_OK) {
        expect_shape5(cc->name, &out, B, cc->Co, To, Ho, Wo);
        const int64_t n = cvx_tensor_numel(&out);
        double *ref = xmalloc((size_t)n * sizeof(double));
        ref_conv3d(frames, nf, B, H, W, w32, bias, cc->Co, (int)Ci, cc->kt, cc->kh, cc->kw, g, Ho, Wo, ref);
        snprintf(what, sizeof(what), "conv3d %s (%lld row block%s)", cc->name, (long long)blocks,
                 blocks > 1 ? "s" : "");
        expect_close(what, out.data, ref, n);
        free(ref);
        /* the working memory stays bounded: the output, the widened weights and one column buffer per thread (the
         * op's one scratch block keeps each part 64-byte aligned) */
        const int64_t out_bytes = n * 4, wf_bytes = cc->wdt == CVX_F32 ? 0 : (nw * 4 + 63) / 64 * 64;
        int64_t col = K * rows * Wo * 4;
        int64_t bound = out_bytes + wf_bytes + (int64_t)cvx_ops_num_threads() * col;
        if (cc->kh == 3 && cc->kw == 3 && g->stride_h == 1 && g->stride_w == 1 && g->pad_top == 1 &&
            g->pad_bottom == 1 && g->pad_left == 1 && g->pad_right == 1) {
            /* the Winograd path: transformed weights plus, per thread, transformed inputs/products and a row strip */
            const int64_t k = Ci * cc->kt, tiles_w = (Wo + 1) / 2, tiles = tiles_w * ((Ho + 1) / 2);
            int64_t nt = CVX_CONV_WINO_BYTES / (16 * (k + cc->Co) * 4);
            if (nt < 16) nt = 16;
            if (nt > tiles) nt = tiles;
            bound = out_bytes + wf_bytes + (16 * cc->Co * k * 4 + 63) / 64 * 64 +
                    (int64_t)cvx_ops_num_threads() * (16 * (k + cc->Co) * nt + 8 * (2 * tiles_w + 2)) * 4;
        }
        CVX_EXPECT(peak_bytes() - base <= bound, "%s: peak working memory %lld > %lld", cc->name,
                   (long long)(peak_bytes() - base), (long long)bound);
    }
    cvx_tensor_release(&out);
    expect_no_leak(cc->name, base);

    free(w32);
    free(w16);
    free(bias);
    cvx_tensor_release(&x);
    cvx_tensor_release(&cache);
}

#define GEOM(sh, sw, pt, pb, pl, pr, up)                                                                               \
    { sh, sw, pt, pb, pl, pr, up }

static void test_conv3d(void) {
    static const conv_case cases[] = {
        /* name                                 B  Ci T  H   W   Co kt kh kw geometry               wdt  bias */
        {"3x3x3 pad 1, causal frames {0,0,0,1,2}, B=2",
         2,
         5,
         3,
         6,
         9,
         7,
         3,
         3,
         3,
         GEOM(1, 1, 1, 1, 1, 1, 1),
         CVX_F32,
         1,
         5,
         {0, 0, 0, 1, 2},
         0},
        {"3x3x3 pad 1, no bias, f16 weights",
         2,
         5,
         3,
         6,
         9,
         7,
         3,
         3,
         3,
         GEOM(1, 1, 1, 1, 1, 1, 1),
         CVX_F16,
         0,
         5,
         {0, 0, 0, 1, 2},
         0},
        {"3x3x3 pad 1, bf16 weights, bias",
         1,
         4,
         4,
         5,
         7,
         6,
         3,
         3,
         3,
         GEOM(1, 1, 1, 1, 1, 1, 1),
         CVX_BF16,
         1,
         0,
         {0},
         0},
        {"3x3x3, 2 cached frames + 3 new (two tensors)",
         2,
         3,
         3,
         5,
         6,
         4,
         3,
         3,
         3,
         GEOM(1, 1, 1, 1, 1, 1, 1),
         CVX_F32,
         1,
         5,
         {-2, -1, 0, 1, 2},
         2},
        {"1x1x1 pointwise, B=2, T=3, bias",
         2,
         6,
         3,
         5,
         7,
         5,
         1,
         1,
         1,
         GEOM(1, 1, 0, 0, 0, 0, 1),
         CVX_F32,
         1,
         0,
         {0},
         0},
        {"1x1x1 pointwise, frames {2,0,1,1}, f16, no bias",
         2,
         6,
         3,
         4,
         3,
         8,
         1,
         1,
         1,
         GEOM(1, 1, 0, 0, 0, 0, 1),
         CVX_F16,
         0,
         4,
         {2, 0, 1, 1},
         0},
        {"1x1x1 pointwise, bf16, B=1 T=1",
         1,
         9,
         1,
         3,
         11,
         4,
         1,
         1,
         1,
         GEOM(1, 1, 0, 0, 0, 0, 1),
         CVX_BF16,
         1,
         0,
         {0},
         0},
        {"1x1x1 with pad 1 (not the pointwise path)",
         2,
         3,
         2,
         4,
         5,
         3,
         1,
         1,
         1,
         GEOM(1, 1, 1, 1, 1, 1, 1),
         CVX_F32,
         1,
         0,
         {0},
         0},
        {"kt=1 3x3 stride 2 pad b/r 1 (downsample), odd H",
         2,
         4,
         3,
         7,
         10,
         4,
         1,
         3,
         3,
         GEOM(2, 2, 0, 1, 0, 1, 1),
         CVX_F32,
         1,
         0,
         {0},
         0},
        {"kt=1 3x3 stride 2 pad b/r 1, even H/W, f16",
         1,
         4,
         2,
         8,
         8,
         5,
         1,
         3,
         3,
         GEOM(2, 2, 0, 1, 0, 1, 1),
         CVX_F16,
         1,
         0,
         {0},
         0},
        {"up=2 3x3 pad 1, kt=1", 2, 4, 2, 5, 6, 3, 1, 3, 3, GEOM(1, 1, 1, 1, 1, 1, 2), CVX_F32, 1, 0, {0}, 0},
        {"up=2 3x3x3 pad 1, frames {0,0,1,1,2,2}, bf16",
         1,
         3,
         3,
         3,
         4,
         4,
         3,
         3,
         3,
         GEOM(1, 1, 1, 1, 1, 1, 2),
         CVX_BF16,
         0,
         6,
         {0, 0, 1, 1, 2, 2},
         0},
        {"up=2 stride 2 asymmetric pad", 1, 2, 2, 4, 5, 3, 2, 3, 3, GEOM(2, 2, 0, 1, 1, 0, 2), CVX_F32, 1, 0, {0}, 0},
        {"kt=2 3x1 kernel, pad t/b 1 (kh != kw)",
         2,
         3,
         4,
         5,
         6,
         2,
         2,
         3,
         1,
         GEOM(1, 1, 1, 1, 0, 0, 1),
         CVX_F32,
         1,
         0,
         {0},
         0},
        {"1x4 kernel on W=1, pad right 3 (runs past the frame)",
         1,
         2,
         1,
         3,
         1,
         2,
         1,
         1,
         4,
         GEOM(1, 1, 0, 0, 0, 3, 1),
         CVX_F32,
         1,
         0,
         {0},
         0},
        {"3x3 pad 2 on a 2x2 frame", 2, 3, 1, 2, 2, 2, 1, 3, 3, GEOM(1, 1, 2, 2, 2, 2, 1), CVX_F32, 1, 0, {0}, 0},
        {"stride 1x2 (H/W strides differ)",
         1,
         3,
         1,
         6,
         9,
         2,
         1,
         3,
         3,
         GEOM(1, 2, 1, 1, 1, 1, 1),
         CVX_F32,
         1,
         0,
         {0},
         0},
        /* row blocking: K * Wo * 4 bytes per output row against the 4 MiB buffer */
        /* (pad bottom 0 keeps these on the im2col path: Winograd takes only the symmetric 3x3 pad-1 case) */
        {"row blocks: Ci=16 W=600 H=10 (4 rows/block, last partial)",
         1,
         16,
         4,
         10,
         600,
         3,
         3,
         3,
         3,
         GEOM(1, 1, 1, 0, 1, 1, 1),
         CVX_F32,
         1,
         0,
         {0},
         0},
        {"row blocks: Ci=64 W=700 H=8 (1 row/block), B=2",
         2,
         64,
         3,
         8,
         700,
         2,
         3,
         3,
         3,
         GEOM(1, 1, 1, 0, 1, 1, 1),
         CVX_F16,
         1,
         0,
         {0},
         0},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) run_conv_case(&cases[i]);
}

static void test_frames_of(void) {
    cvx_tensor x;
    CVX_EXPECT(cvx_tensor_alloc5(&x, 2, 3, 4, 5, 6) == CVX_OK, "alloc");
    cvx_frame fr[4];
    memset(fr, 0, sizeof(fr));
    cvx_frames_of(&x, 1, 3, fr);
    int ok = 1;
    for (int i = 0; i < 3; i++)
        ok &=
            fr[i].ptr == (const float *)x.data + (1 + i) * 30 && fr[i].cstride == 4 * 30 && fr[i].bstride == 3 * 4 * 30;
    CVX_EXPECT(ok, "cvx_frames_of pointers and strides");
    CVX_EXPECT(fr[3].ptr == NULL, "cvx_frames_of writes only `count` frames");
    cvx_tensor_release(&x);
}

static void test_conv3d_errors(void) {
    const int64_t base = live_bytes();
    cvx_tensor x;
    CVX_EXPECT(cvx_tensor_alloc5(&x, 1, 2, 2, 4, 4) == CVX_OK, "alloc");
    fill(x.data, cvx_tensor_numel(&x), 1.0f, 0.0f);
    const int64_t base_x = live_bytes();
    cvx_frame frames[2];
    cvx_frames_of(&x, 0, 2, frames);
    float w[3 * 2 * 3 * 3 * 3];
    fill(w, 3 * 2 * 27, 0.2f, 0.0f);
    cvx_conv_weight wt = {w, CVX_F32, NULL, 3, 2, 3, 3, 3};
    cvx_conv_geom g = {1, 1, 1, 1, 1, 1, 1};
    cvx_tensor out;

    /* fewer frames than the temporal kernel */
    cvx_error_clear();
    memset(&out, 0xff, sizeof(out));
    cvx_status st = cvx_conv3d(&CTX, frames, 2, 1, 4, 4, &wt, &g, &out);
    CVX_EXPECT(st == CVX_ERR_INVALID, "2 frames for kt=3: status %d", (int)st);
    CVX_EXPECT(is_empty(&out), "out zeroed on failure");
    printf("  2 frames for kt=3 -> %s\n", cvx_error_message());
    expect_no_leak("conv3d: too few frames", base_x);

    /* an upsampling factor other than 1 and 2 */
    wt.kt = 1;
    g.up = 3;
    cvx_error_clear();
    st = cvx_conv3d(&CTX, frames, 2, 1, 4, 4, &wt, &g, &out);
    CVX_EXPECT(st == CVX_ERR_INVALID, "up=3: status %d", (int)st);
    CVX_EXPECT(is_empty(&out), "out zeroed on failure");
    expect_no_leak("conv3d: up=3", base_x);
    g.up = 1;

    /* a kernel larger than the padded frame */
    cvx_conv_geom nopad = {1, 1, 0, 0, 0, 0, 1};
    cvx_error_clear();
    st =
        cvx_conv3d(&CTX, frames, 2, 1, 2, 2, &wt, &nopad, &out); /* view the frames as 2x2: a 3x3 kernel does not fit */
    CVX_EXPECT(st == CVX_ERR_INVALID, "3x3 kernel on 2x2 frame: status %d", (int)st);
    CVX_EXPECT(is_empty(&out), "out zeroed on failure");
    expect_no_leak("conv3d: kernel larger than frame", base_x);
    cvx_error_clear();

    /* out of memory at each allocation: nothing leaks, out is left empty */
    const int64_t out_bytes = 1 * 3 * 2 * 4 * 4 * 4;
    uint16_t w16[3 * 2 * 9];
    for (int i = 0; i < 3 * 2 * 9; i++) w16[i] = cvx_f32_to_f16(w[i]);
    cvx_conv_weight wt16 = {w16, CVX_F16, NULL, 3, 2, 1, 3, 3};
    struct {
        const char *what;
        const cvx_conv_weight *wt;
        int64_t limit;
    } ooms[] = {
        {"OOM on the output", &wt, out_bytes - 1},
        {"OOM on the column buffer", &wt, out_bytes},
        {"OOM on the widened weights", &wt16, out_bytes},
        {"OOM on the column buffer after widening", &wt16, out_bytes + 3 * 2 * 9 * 4},
    };
    for (size_t i = 0; i < sizeof(ooms) / sizeof(ooms[0]); i++) {
        cvx_mem_set_limit(CVX_DEVICE_CPU, base_x + ooms[i].limit);
        cvx_error_clear();
        memset(&out, 0xff, sizeof(out));
        st = cvx_conv3d(&CTX, frames, 2, 1, 4, 4, ooms[i].wt, &g, &out);
        cvx_mem_set_limit(CVX_DEVICE_CPU, 0);
        CVX_EXPECT(st == CVX_ERR_OOM, "%s: status %d", ooms[i].what, (int)st);
        CVX_EXPECT(is_empty(&out), "%s: out zeroed", ooms[i].what);
        expect_no_leak(ooms[i].what, base_x);
        cvx_tensor_release(&out);
    }
    cvx_error_clear();
    /* and with room for everything the same call succeeds */
    st = cvx_conv3d(&CTX, frames, 2, 1, 4, 4, &wt16, &g, &out);
    CVX_EXPECT(st == CVX_OK, "conv after the OOMs: %d", (int)st);
    cvx_tensor_release(&out);
    cvx_tensor_release(&x);
    expect_no_leak("conv3d errors", base);
}

/* ---------------------------------------------------------------------------------------------------------------- */
/* nearest */

/* PyTorch's legacy nearest (aten/src/ATen/native/UpSample.h nearest_idx): identity for the same size, a shift for
 * exactly x2, otherwise min(floorf(dst * (float)in / out), in - 1), computed in float. */
static int64_t ref_nearest(int64_t dst, int64_t in, int64_t out) {
    if (in == out) return dst;
    if (out == 2 * in) return dst >> 1;
    const float scale = (float)in / (float)out;
    int64_t s = (int64_t)floorf((float)dst * scale);
    return s < in - 1 ? s : in - 1;
}

static void test_nearest(void) {
    /* values from torch.nn.functional.interpolate(..., mode="nearest") */
    static const struct {
        int64_t in, out;
        int64_t src[8];
    } known[] = {
        {3, 7, {0, 0, 0, 1, 1, 2, 2}}, {5, 3, {0, 1, 3}}, {4, 6, {0, 0, 1, 2, 2, 3}},
        {2, 4, {0, 0, 1, 1}},          {4, 2, {0, 2}},    {1, 5, {0, 0, 0, 0, 0}},
        {5, 5, {0, 1, 2, 3, 4}},       {6, 1, {0}},
    };
    for (size_t k = 0; k < sizeof(known) / sizeof(known[0]); k++)
        for (int64_t d = 0; d < known[k].out; d++) {
            int64_t s = cvx_nearest_src(d, known[k].in, known[k].out);
            CVX_EXPECT(s == known[k].src[d], "nearest %lld -> %lld at %lld: %lld, want %lld", (long long)known[k].in,
                       (long long)known[k].out, (long long)d, (long long)s, (long long)known[k].src[d]);
        }
    /* cases where the float scale rounds below the exact ratio (PyTorch computes in float, so do we) */
    CVX_EXPECT(cvx_nearest_src(11, 26, 22) == 12, "26 -> 22 at 11: %lld (float rule 12, exact 13)",
               (long long)cvx_nearest_src(11, 26, 22));
    CVX_EXPECT(cvx_nearest_src(37, 6, 74) == 2, "6 -> 74 at 37: %lld (float rule 2, exact 3)",
               (long long)cvx_nearest_src(37, 6, 74));
    CVX_EXPECT(cvx_nearest_src(23, 14, 46) == 6, "14 -> 46 at 23: %lld", (long long)cvx_nearest_src(23, 14, 46));
    /* exhaustive against the rule over small sizes, including large x2 sizes where the shortcut matters */
    int64_t bad = 0, checked = 0;
    for (int64_t in = 1; in <= 64; in++)
        for (int64_t out = 1; out <= 130; out++)
            for (int64_t d = 0; d < out; d++, checked++)
                if (cvx_nearest_src(d, in, out) != ref_nearest(d, in, out)) {
                    if (bad++ < 5)
                        fprintf(stderr, "  nearest %lld -> %lld at %lld: %lld, want %lld\n", (long long)in,
                                (long long)out, (long long)d, (long long)cvx_nearest_src(d, in, out),
                                (long long)ref_nearest(d, in, out));
                }
    const int64_t bigs[] = {(int64_t)1 << 24, ((int64_t)1 << 24) + 1, 3000001};
    for (size_t i = 0; i < 3; i++) {
        const int64_t in = bigs[i], out = 2 * in;
        for (int64_t d = out - 5; d < out; d++, checked++)
            if (cvx_nearest_src(d, in, out) != d / 2) bad++;
    }
    printf("  cvx_nearest_src: %lld indices checked against PyTorch's rule, %lld differ\n", (long long)checked,
           (long long)bad);
    CVX_EXPECT(bad == 0, "%lld nearest indices differ", (long long)bad);
}

/* ---------------------------------------------------------------------------------------------------------------- */
/* group norm */

static int64_t ref_src_frame(int64_t t, int64_t tz, int64_t tf) {
    /* CogVideoXSpatialNorm3D: an odd frame count > 1 resamples the first frame alone and the rest to the rest */
    if (tf > 1 && tf % 2 == 1) return t == 0 ? 0 : 1 + ref_nearest(t - 1, tz - 1, tf - 1);
    return ref_nearest(t, tz, tf);
}

static void ref_group_norm(const float *x, int64_t B, int64_t C, int64_t T, int64_t H, int64_t W, int groups, float eps,
                           const float *gamma, const float *beta, const cvx_tensor *my, const cvx_tensor *mb, int silu,
                           double *out) {
    const int64_t cpg = C / groups, THW = T * H * W, n = cpg * THW;
    for (int64_t b = 0; b < B; b++)
        for (int64_t g = 0; g < groups; g++) {
            const float *src = x + (b * C + g * cpg) * THW;
            double sum = 0.0, sq = 0.0;
            for (int64_t i = 0; i < n; i++) sum += src[i];
            const double mean = sum / (double)n;
            for (int64_t i = 0; i < n; i++) sq += (src[i] - mean) * (src[i] - mean);
            const double rstd = 1.0 / sqrt(sq / (double)n + (double)eps);
            for (int64_t cc = 0; cc < cpg; cc++) {
                const int64_t c = g * cpg + cc;
                for (int64_t t = 0; t < T; t++)
                    for (int64_t y = 0; y < H; y++)
                        for (int64_t xx = 0; xx < W; xx++) {
                            const int64_t i = ((b * C + c) * T + t) * H * W + y * W + xx;
                            double v = ((double)x[i] - mean) * rstd * gamma[c] + beta[c];
                            if (my) {
                                const int64_t Tz = my->shape[2], Hz = my->shape[3], Wz = my->shape[4];
                                const int64_t j =
                                    (((b * C + c) * Tz + ref_src_frame(t, Tz, T)) * Hz + ref_nearest(y, Hz, H)) * Wz +
                                    ref_nearest(xx, Wz, W);
                                v = v * ((const float *)my->data)[j] + ((const float *)mb->data)[j];
                            }
                            if (silu) v = v / (1.0 + exp(-v));
                            out[i] = v;
                        }
            }
        }
}

typedef struct gn_case {
    const char *name;
    int64_t B, C, T, H, W;
    int groups, silu, inplace;
    int64_t Tz, Hz, Wz; /* Tz = 0: no modulation */
} gn_case;

static void run_gn_case(const gn_case *gc) {
    char what[160];
    const int64_t B = gc->B, C = gc->C, T = gc->T, H = gc->H, W = gc->W;
    const float eps = 1e-6f;
    cvx_tensor x, my, mb;
    memset(&my, 0, sizeof(my));
    memset(&mb, 0, sizeof(mb));
    CVX_EXPECT(cvx_tensor_alloc5(&x, B, C, T, H, W) == CVX_OK, "%s: alloc", gc->name);
    const int64_t n = cvx_tensor_numel(&x);
    fill(x.data, n, 2.0f, 3.0f); /* a mean far from 0 exercises the mean subtraction */
    float *xcopy = xmalloc((size_t)n * sizeof(float));
    memcpy(xcopy, x.data, (size_t)n * sizeof(float));
    float *gamma = xmalloc((size_t)C * sizeof(float)), *beta = xmalloc((size_t)C * sizeof(float));
    fill(gamma, C, 0.5f, 1.0f);
    fill(beta, C, 0.5f, 0.0f);
    cvx_norm_modulation mod = {NULL, NULL};
    if (gc->Tz) {
        CVX_EXPECT(cvx_tensor_alloc5(&my, B, C, gc->Tz, gc->Hz, gc->Wz) == CVX_OK, "%s: alloc y", gc->name);
        CVX_EXPECT(cvx_tensor_alloc5(&mb, B, C, gc->Tz, gc->Hz, gc->Wz) == CVX_OK, "%s: alloc b", gc->name);
        fill(my.data, cvx_tensor_numel(&my), 1.0f, 0.5f);
        fill(mb.data, cvx_tensor_numel(&mb), 1.0f, 0.0f);
        mod.y = &my;
        mod.b = &mb;
    }
    double *ref = xmalloc((size_t)n * sizeof(double));
    ref_group_norm(xcopy, B, C, T, H, W, gc->groups, eps, gamma, beta, mod.y, mod.b, gc->silu, ref);

    const int64_t base = live_bytes();
    cvx_tensor out;
    memset(&out, 0, sizeof(out));
    cvx_tensor *dst = gc->inplace ? &x : &out;
    void *xdata = x.data;
    cvx_status st = cvx_group_norm(&CTX, &x, gc->groups, eps, gamma, beta, gc->Tz ? &mod : NULL, gc->silu, dst);
    CVX_EXPECT(st == CVX_OK, "%s: status %d: %s", gc->name, (int)st, cvx_error_message());
    if (st == CVX_OK) {
        expect_shape5(gc->name, dst, B, C, T, H, W);
        if (gc->inplace)
            CVX_EXPECT(x.data == xdata && live_bytes() == base, "%s: in place allocates nothing", gc->name);
        snprintf(what, sizeof(what), "group_norm %s", gc->name);
        expect_close(what, dst->data, ref, n);
        if (!gc->inplace)
            CVX_EXPECT(memcmp(x.data, xcopy, (size_t)n * sizeof(float)) == 0, "%s: input untouched", gc->name);
    }
    cvx_tensor_release(&out);
    expect_no_leak(gc->name, base);
    free(ref);
    free(xcopy);
    free(gamma);
    free(beta);
    cvx_tensor_release(&x);
    cvx_tensor_release(&my);
    cvx_tensor_release(&mb);
}

static void test_group_norm(void) {
    static const gn_case cases[] = {
        /* name                                   B  C   T  H  W  groups silu inplace  Tz Hz Wz */
        {"plain, B=2 C=8 groups=4", 2, 8, 3, 5, 6, 4, 0, 0, 0, 0, 0},
        {"plain, groups=1", 1, 6, 2, 4, 4, 1, 0, 0, 0, 0, 0},
        {"plain, groups=C", 1, 6, 2, 3, 5, 6, 0, 0, 0, 0, 0},
        {"SiLU, C=32 groups=32 (one channel per group)", 1, 32, 1, 4, 4, 32, 1, 0, 0, 0, 0},
        {"SiLU, B=2 C=12 groups=3", 2, 12, 4, 3, 7, 3, 1, 0, 0, 0, 0},
        {"in place, plain", 2, 8, 3, 4, 5, 2, 0, 1, 0, 0, 0},
        {"in place, SiLU", 1, 8, 2, 6, 6, 4, 1, 1, 0, 0, 0},
        {"modulation, T=5 from Tz=2 (odd-first), 6x7 from 3x3", 2, 8, 5, 6, 7, 4, 0, 0, 2, 3, 3},
        {"modulation + SiLU, T=4 from Tz=2 (x2), 8x8 from 4x4", 1, 8, 4, 8, 8, 2, 1, 0, 2, 4, 4},
        {"modulation, T=9 from Tz=3 (odd-first), 5x10 from 2x3", 1, 4, 9, 5, 10, 2, 0, 0, 3, 2, 3},
        {"modulation, T=1 from Tz=1", 2, 4, 1, 6, 6, 2, 1, 0, 1, 3, 2},
        {"modulation, same size (identity)", 1, 4, 3, 4, 5, 2, 0, 0, 3, 4, 5},
        {"modulation, T=3 from Tz=2, downsampled 3x4 from 5x7", 1, 4, 3, 3, 4, 4, 0, 0, 2, 5, 7},
        {"modulation, even T=6 from Tz=4 (non-integer)", 1, 4, 6, 3, 3, 2, 0, 0, 4, 3, 3},
        {"modulation + SiLU in place, T=5 from Tz=3", 2, 8, 5, 6, 6, 4, 1, 1, 3, 3, 3},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) run_gn_case(&cases[i]);
}

static void test_group_norm_errors(void) {
    const int64_t base = live_bytes();
    cvx_tensor x, y6, b6;
    CVX_EXPECT(cvx_tensor_alloc5(&x, 1, 6, 2, 3, 3) == CVX_OK, "alloc");
    CVX_EXPECT(cvx_tensor_alloc5(&y6, 1, 4, 1, 2, 2) == CVX_OK, "alloc");
    CVX_EXPECT(cvx_tensor_alloc5(&b6, 1, 4, 1, 2, 2) == CVX_OK, "alloc");
    fill(x.data, cvx_tensor_numel(&x), 1.0f, 0.0f);
    fill(y6.data, cvx_tensor_numel(&y6), 1.0f, 0.0f);
    fill(b6.data, cvx_tensor_numel(&b6), 1.0f, 0.0f);
    const int64_t base_x = live_bytes();
    float gamma[6] = {1, 1, 1, 1, 1, 1}, beta[6] = {0};
    cvx_tensor out;
    const int bad_groups[] = {4, 0, -2, 12};
    for (size_t i = 0; i < 4; i++) {
        cvx_error_clear();
        memset(&out, 0, sizeof(out));
        cvx_status st = cvx_group_norm(&CTX, &x, bad_groups[i], 1e-6f, gamma, beta, NULL, 0, &out);
        CVX_EXPECT(st == CVX_ERR_INVALID, "6 channels in %d groups: status %d", bad_groups[i], (int)st);
        CVX_EXPECT(is_empty(&out), "groups %d: out left empty", bad_groups[i]);
        if (i == 0) printf("  6 channels in 4 groups -> %s\n", cvx_error_message());
        expect_no_leak("group_norm: bad groups", base_x);
    }
    /* modulation with the wrong channel count */
    cvx_norm_modulation mod = {&y6, &b6};
    cvx_error_clear();
    memset(&out, 0, sizeof(out));
    cvx_status st = cvx_group_norm(&CTX, &x, 3, 1e-6f, gamma, beta, &mod, 0, &out);
    CVX_EXPECT(st == CVX_ERR_INVALID, "modulation channels 4 vs 6: status %d", (int)st);
    CVX_EXPECT(is_empty(&out), "out left empty");
    expect_no_leak("group_norm: modulation channels", base_x);
    /* the same refused in place leaves x untouched */
    float before[6 * 2 * 9];
    memcpy(before, x.data, sizeof(before));
    cvx_error_clear();
    st = cvx_group_norm(&CTX, &x, 4, 1e-6f, gamma, beta, NULL, 0, &x);
    CVX_EXPECT(st == CVX_ERR_INVALID && memcmp(before, x.data, sizeof(before)) == 0, "refused in place: x untouched");
    expect_no_leak("group_norm: refused in place", base_x);

    /* OOM on the output and on the modulation maps: nothing leaks */
    cvx_tensor y, b;
    CVX_EXPECT(cvx_tensor_alloc5(&y, 1, 6, 1, 2, 2) == CVX_OK, "alloc");
    CVX_EXPECT(cvx_tensor_alloc5(&b, 1, 6, 1, 2, 2) == CVX_OK, "alloc");
    fill(y.data, cvx_tensor_numel(&y), 1.0f, 0.0f);
    fill(b.data, cvx_tensor_numel(&b), 1.0f, 0.0f);
    const int64_t base_y = live_bytes(), out_bytes = 6 * 2 * 9 * 4;
    cvx_norm_modulation good = {&y, &b};
    const int64_t limits[] = {out_bytes - 1, out_bytes};
    for (size_t i = 0; i < 2; i++) {
        cvx_mem_set_limit(CVX_DEVICE_CPU, base_y + limits[i]);
        cvx_error_clear();
        memset(&out, 0, sizeof(out));
        st = cvx_group_norm(&CTX, &x, 3, 1e-6f, gamma, beta, &good, 1, &out);
        cvx_mem_set_limit(CVX_DEVICE_CPU, 0);
        CVX_EXPECT(st == CVX_ERR_OOM, "group_norm OOM %zu: status %d", i, (int)st);
        CVX_EXPECT(out.data == NULL, "group_norm OOM %zu: out not allocated", i);
        expect_no_leak("group_norm OOM", base_y);
        cvx_tensor_release(&out);
    }
    /* in place with the maps refused */
    cvx_mem_set_limit(CVX_DEVICE_CPU, base_y);
    cvx_error_clear();
    st = cvx_group_norm(&CTX, &x, 3, 1e-6f, gamma, beta, &good, 1, &x);
    cvx_mem_set_limit(CVX_DEVICE_CPU, 0);
    CVX_EXPECT(st == CVX_ERR_OOM && x.data != NULL, "group_norm in place OOM: status %d", (int)st);
    expect_no_leak("group_norm in place OOM", base_y);
    cvx_error_clear();

    cvx_tensor_release(&x);
    cvx_tensor_release(&y);
    cvx_tensor_release(&b);
    cvx_tensor_release(&y6);
    cvx_tensor_release(&b6);
    expect_no_leak("group_norm errors", base);
}

/* ---------------------------------------------------------------------------------------------------------------- */
/* element-wise and data movement */

static void test_add_inplace(void) {
    const int64_t base0 = live_bytes();
    cvx_tensor x, y, z;
    CVX_EXPECT(cvx_tensor_alloc5(&x, 2, 3, 4, 5, 7) == CVX_OK, "alloc");
    CVX_EXPECT(cvx_tensor_alloc5(&y, 2, 3, 4, 5, 7) == CVX_OK, "alloc");
    const int64_t n = cvx_tensor_numel(&x);
    fill(x.data, n, 10.0f, 0.0f);
    fill(y.data, n, 10.0f, 0.0f);
    double *ref = xmalloc((size_t)n * sizeof(double));
    float *ycopy = xmalloc((size_t)n * sizeof(float));
    memcpy(ycopy, y.data, (size_t)n * sizeof(float));
    for (int64_t i = 0; i < n; i++) ref[i] = (double)((const float *)x.data)[i] + (double)ycopy[i];
    const int64_t base = live_bytes();
    CVX_EXPECT(cvx_add_inplace(&CTX, &x, &y) == CVX_OK, "add");
    expect_close("add_inplace", x.data, ref, n);
    CVX_EXPECT(memcmp(y.data, ycopy, (size_t)n * sizeof(float)) == 0, "add leaves y alone");
    expect_no_leak("add_inplace", base);

    /* x += x doubles */
    for (int64_t i = 0; i < n; i++) ref[i] = 2.0 * (double)((const float *)x.data)[i];
    CVX_EXPECT(cvx_add_inplace(&CTX, &x, &x) == CVX_OK, "add self");
    expect_close("add_inplace x += x", x.data, ref, n);

    /* element counts differ */
    CVX_EXPECT(cvx_tensor_alloc5(&z, 2, 3, 4, 5, 6) == CVX_OK, "alloc");
    float *xcopy = xmalloc((size_t)n * sizeof(float));
    memcpy(xcopy, x.data, (size_t)n * sizeof(float));
    const int64_t base_z = live_bytes();
    cvx_error_clear();
    CVX_EXPECT(cvx_add_inplace(&CTX, &x, &z) == CVX_ERR_INVALID, "add of different sizes");
    CVX_EXPECT(memcmp(x.data, xcopy, (size_t)n * sizeof(float)) == 0, "refused add leaves x alone");
    expect_no_leak("add_inplace refused", base_z);
    cvx_error_clear();
    free(ref);
    free(ycopy);
    free(xcopy);
    cvx_tensor_release(&x);
    cvx_tensor_release(&y);
    cvx_tensor_release(&z);
    expect_no_leak("add_inplace all", base0);
}

static void test_avg_pool_time(void) {
    const int64_t Ts[] = {1, 2, 3, 5, 6, 8};
    for (size_t k = 0; k < sizeof(Ts) / sizeof(Ts[0]); k++) {
        const int64_t B = 2, C = 3, T = Ts[k], H = 4, W = 5, HW = H * W;
        cvx_tensor x, out;
        CVX_EXPECT(cvx_tensor_alloc5(&x, B, C, T, H, W) == CVX_OK, "alloc");
        fill(x.data, cvx_tensor_numel(&x), 3.0f, 0.0f);
        const float *xd = x.data;
        /* odd T: frame 0 alone, then pairs (1,2), (3,4)...; even T: pairs (0,1), (2,3)... */
        const int64_t To = T % 2 ? 1 + (T - 1) / 2 : T / 2;
        double *ref = xmalloc((size_t)(B * C * To * HW) * sizeof(double));
        for (int64_t bc = 0; bc < B * C; bc++)
            for (int64_t t = 0; t < To; t++)
                for (int64_t i = 0; i < HW; i++) {
                    double v;
                    if (T % 2 && t == 0)
                        v = xd[bc * T * HW + i];
                    else {
                        const int64_t a = T % 2 ? 2 * t - 1 : 2 * t;
                        v = 0.5 * ((double)xd[(bc * T + a) * HW + i] + (double)xd[(bc * T + a + 1) * HW + i]);
                    }
                    ref[(bc * To + t) * HW + i] = v;
                }
        const int64_t base = live_bytes();
        memset(&out, 0, sizeof(out));
        char what[80];
        snprintf(what, sizeof(what), "avg_pool_time T=%lld -> %lld", (long long)T, (long long)To);
        CVX_EXPECT(cvx_avg_pool_time(&CTX, &x, &out) == CVX_OK, "%s", what);
        expect_shape5(what, &out, B, C, To, H, W);
        expect_close(what, out.data, ref, B * C * To * HW);
        if (T == 1)
            CVX_EXPECT(memcmp(out.data, x.data, (size_t)(B * C * HW) * sizeof(float)) == 0, "T=1 copies exactly");
        cvx_tensor_release(&out);
        expect_no_leak(what, base);
        free(ref);
        cvx_tensor_release(&x);
    }
    /* OOM */
    cvx_tensor x, out;
    CVX_EXPECT(cvx_tensor_alloc5(&x, 1, 2, 3, 4, 4) == CVX_OK, "alloc");
    fill(x.data, cvx_tensor_numel(&x), 1.0f, 0.0f);
    const int64_t base = live_bytes();
    cvx_mem_set_limit(CVX_DEVICE_CPU, base + 1);
    cvx_error_clear();
    memset(&out, 0, sizeof(out));
    CVX_EXPECT(cvx_avg_pool_time(&CTX, &x, &out) == CVX_ERR_OOM && out.data == NULL, "avg_pool_time OOM");
    cvx_mem_set_limit(CVX_DEVICE_CPU, 0);
    cvx_error_clear();
    expect_no_leak("avg_pool_time OOM", base);
    cvx_tensor_release(&x);
}

static void test_slice_frames(void) {
    const int64_t B = 2, C = 3, T = 6, H = 4, W = 5;
    cvx_tensor x;
    CVX_EXPECT(cvx_tensor_alloc5(&x, B, C, T, H, W) == CVX_OK, "alloc");
    fill(x.data, cvx_tensor_numel(&x), 1.0f, 0.0f);
    const int64_t ranges[][2] = {{2, 3}, {0, 6}, {5, 1}, {0, 1}, {3, 0}};
    for (size_t k = 0; k < sizeof(ranges) / sizeof(ranges[0]); k++) {
        const int64_t first = ranges[k][0], count = ranges[k][1];
        const int64_t base = live_bytes();
        cvx_tensor out;
        memset(&out, 0xff, sizeof(out));
        char what[80];
        snprintf(what, sizeof(what), "slice_frames [%lld, %lld)", (long long)first, (long long)(first + count));
        CVX_EXPECT(cvx_slice_frames(&CTX, &x, first, count, &out) == CVX_OK, "%s", what);
        expect_shape5(what, &out, B, C, count, H, W);
        int64_t bad = 0;
        for (int64_t b = 0; b < B; b++)
            for (int64_t c = 0; c < C; c++)
                for (int64_t t = 0; t < count; t++)
                    for (int64_t i = 0; i < H * W; i++)
                        bad += ((const float *)out.data)[((b * C + c) * count + t) * H * W + i] !=
                               ((const float *)x.data)[((b * C + c) * T + first + t) * H * W + i];
        CVX_EXPECT(bad == 0, "%s: %lld values differ", what, (long long)bad);
        printf("  %-58s %lld values differ\n", what, (long long)bad);
        cvx_tensor_release(&out);
        expect_no_leak(what, base);
    }
    cvx_tensor_release(&x);
}

static void test_copy_box(void) {
    const int64_t C = 3;
    cvx_tensor src, dst;
    CVX_EXPECT(cvx_tensor_alloc5(&src, 2, C, 4, 5, 6) == CVX_OK, "alloc");
    CVX_EXPECT(cvx_tensor_alloc5(&dst, 3, C, 5, 7, 8) == CVX_OK, "alloc");
    fill(src.data, cvx_tensor_numel(&src), 1.0f, 0.0f);
    const struct {
        int64_t s[4], d[4], n[4];
    } boxes[] = {
        {{0, 1, 0, 1}, {1, 2, 3, 2}, {2, 3, 4, 5}}, {{0, 0, 0, 0}, {0, 0, 0, 0}, {2, 4, 5, 6}},
        {{1, 3, 4, 5}, {2, 4, 6, 7}, {1, 1, 1, 1}}, {{1, 2, 1, 3}, {0, 1, 2, 0}, {1, 2, 3, 3}},
        {{0, 0, 0, 0}, {0, 0, 0, 0}, {2, 0, 5, 6}}, /* empty box */
    };
    const float sentinel = -1234.5f;
    const float *sd = src.data;
    for (size_t k = 0; k < sizeof(boxes) / sizeof(boxes[0]); k++) {
        const int64_t *s = boxes[k].s, *d = boxes[k].d, *n = boxes[k].n;
        float *dd = dst.data;
        for (int64_t i = 0; i < cvx_tensor_numel(&dst); i++) dd[i] = sentinel;
        const int64_t base = live_bytes();
        cvx_copy_box(&CTX, &dst, d, &src, s, n);
        expect_no_leak("copy_box", base);
        int64_t bad = 0, copied = 0;
        for (int64_t b = 0; b < 3; b++)
            for (int64_t c = 0; c < C; c++)
                for (int64_t t = 0; t < 5; t++)
                    for (int64_t y = 0; y < 7; y++)
                        for (int64_t x = 0; x < 8; x++) {
                            const float got = dd[(((b * C + c) * 5 + t) * 7 + y) * 8 + x];
                            const int inside = b >= d[0] && b < d[0] + n[0] && t >= d[1] && t < d[1] + n[1] &&
                                               y >= d[2] && y < d[2] + n[2] && x >= d[3] && x < d[3] + n[3];
                            float want = sentinel;
                            if (inside) {
                                const int64_t sb = s[0] + b - d[0], st = s[1] + t - d[1], sy = s[2] + y - d[2],
                                              sx = s[3] + x - d[3];
                                want = sd[(((sb * C + c) * 4 + st) * 5 + sy) * 6 + sx];
                                copied++;
                            }
                            bad += got != want;
                        }
        printf("  copy_box %zu: %lld values copied, %lld wrong\n", k, (long long)copied, (long long)bad);
        CVX_EXPECT(bad == 0, "copy_box %zu: %lld values wrong", k, (long long)bad);
        CVX_EXPECT(copied == n[0] * C * n[1] * n[2] * n[3], "copy_box %zu: box size", k);
    }
    cvx_tensor_release(&src);
    cvx_tensor_release(&dst);
}

/* ---- the backend tables ------------------------------------------------------------------------------------ */

/* emu: every weight-reading op refuses a weight that is not in a live weights allocation on emu (a host weight, an
 * emu activation, a range running past the allocation's end), naming the op and the weight, and gives the CPU's
 * result bit for bit when it is resident. */
static void test_emu_residency_check(void) {
    const int64_t base = live_bytes();
    cvx_ctx emu = {.be = cvx_backend_for(CVX_DEVICE_EMU), .device = CVX_DEVICE_EMU};
    CVX_EXPECT(emu.be == &cvx_backend_emu && cvx_backend_for(CVX_DEVICE_CPU) == &cvx_backend_cpu &&
                   cvx_backend_for(CVX_DEVICE_CUDA) == NULL,
               "cvx_backend_for: cpu, emu, and no CUDA table in this build");
    enum { M = 3, K = 8, N = 4, W_BYTES = N * K * 4, B_BYTES = N * 4 };
    float *w_emu = NULL, *w_host = NULL, *act_emu = NULL, *x = NULL, *y = NULL, *y_cpu = NULL;
    if (!CVX_EXPECT(cvx_mem_alloc(CVX_DEVICE_EMU, CVX_MEM_WEIGHTS, W_BYTES + B_BYTES, (void **)&w_emu) == CVX_OK &&
                        cvx_mem_alloc(CVX_DEVICE_CPU, CVX_MEM_WEIGHTS, W_BYTES + B_BYTES, (void **)&w_host) == CVX_OK &&
                        cvx_mem_alloc(CVX_DEVICE_EMU, CVX_MEM_ACTIVATIONS, W_BYTES + B_BYTES, (void **)&act_emu) ==
                            CVX_OK &&
                        cvx_mem_alloc(CVX_DEVICE_EMU, CVX_MEM_ACTIVATIONS, M * K * 4, (void **)&x) == CVX_OK &&
                        cvx_mem_alloc(CVX_DEVICE_EMU, CVX_MEM_ACTIVATIONS, M * N * 4, (void **)&y) == CVX_OK &&
                        cvx_mem_alloc(CVX_DEVICE_CPU, CVX_MEM_ACTIVATIONS, M * N * 4, (void **)&y_cpu) == CVX_OK,
                    "emu test buffers"))
        goto done;
    for (int i = 0; i < N * K + N; i++) w_emu[i] = w_host[i] = act_emu[i] = 0.25f * (float)(i % 7) - 0.5f;
    for (int i = 0; i < M * K; i++) x[i] = 0.125f * (float)(i % 5);

    /* resident weight and bias: the CPU op's numbers */
    cvx_status st = emu.be->linear(&emu, x, M, K, w_emu, CVX_F32, w_emu + N * K, N, y);
    CVX_EXPECT(st == CVX_OK, "emu linear on resident weights: %s", cvx_error_message());
    CVX_EXPECT(cvx_linear(&CTX, x, M, K, w_host, CVX_F32, w_host + N * K, N, y_cpu) == CVX_OK &&
                   memcmp(y, y_cpu, M * N * 4) == 0,
               "emu linear: not the CPU's result bit for bit");

    /* not resident: a host weight, an emu activation, a bias past the weights allocation's end */
    const struct {
        const char *name;
        const float *w, *bias;
        const char *what;
    } bad[] = {
        {"host weight", w_host, NULL, "linear on emu reads its weight"},
        {"activation as weight", act_emu, NULL, "linear on emu reads its weight"},
        {"resident weight, host bias", w_emu, w_host + N * K, "linear on emu reads its bias"},
        {"range past the end", w_emu + 2 * N, NULL, "linear on emu reads its weight"},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        cvx_error_clear();
        st = emu.be->linear(&emu, x, M, K, bad[i].w, CVX_F32, bad[i].bias, N, y);
        CVX_EXPECT(st == CVX_ERR_INTERNAL && strstr(cvx_error_message(), bad[i].what) != NULL &&
                       strstr(cvx_error_message(), "not resident") != NULL,
                   "emu linear, %s: status %d, '%s'", bad[i].name, (int)st, cvx_error_message());
    }
    /* every other weight-reading entry, each with a host weight */
    const int32_t buckets[3] = {0, 1, 0};
    const int64_t ids[2] = {0, 1};
    cvx_tensor gx = {0}, gout = {0};
    const int64_t gshape[5] = {1, 4, 1, 1, 2};
    cvx_conv_weight cw = {w_host, CVX_F32, NULL, 2, 4, 1, 1, 1};
    const cvx_conv_geom g = {1, 1, 0, 0, 0, 0, 1};
    cvx_frame fr[1];
    const char *const ops[] = {"widen", "layer_norm", "rms_norm", "embedding", "position_bias", "conv3d", "group_norm"};
    for (int op = 0; op < 7; op++) {
        cvx_error_clear();
        switch (op) {
        case 0: st = emu.be->widen(&emu, y, w_host, CVX_F32, 4); break;
        case 1: st = emu.be->layer_norm(&emu, x, M, K, 1e-5f, w_host, NULL, CVX_F32, NULL, NULL, x); break;
        case 2: st = emu.be->rms_norm(&emu, x, M, K, 1e-6f, w_host, CVX_F32, x); break;
        case 3: st = emu.be->embedding(&emu, w_host, CVX_F32, N, ids, 2, K, y); break;
        case 4: st = emu.be->position_bias(&emu, w_host, CVX_F32, 2, buckets, 2, 2, y); break;
        case 5:
            if ((st = cvx_ctx_tensor(&emu, &gx, CVX_F32, 5, gshape)) != CVX_OK) break;
            cvx_frames_of(&gx, 0, 1, fr);
            st = emu.be->conv3d(&emu, fr, 1, 1, 1, 2, &cw, &g, &gout);
            break;
        default: st = emu.be->group_norm(&emu, &gx, 2, 1e-6f, w_host, w_host, NULL, 0, &gout); break;
        }
        char want[64];
        snprintf(want, sizeof(want), "%s on emu reads its", ops[op]);
        CVX_EXPECT(st == CVX_ERR_INTERNAL && strstr(cvx_error_message(), want) != NULL && gout.data == NULL,
                   "emu %s with a host weight: status %d, '%s'", ops[op], (int)st, cvx_error_message());
    }
    cvx_tensor_release(&gx);
    cvx_error_clear();
done:
    cvx_mem_free(w_emu), cvx_mem_free(w_host), cvx_mem_free(act_emu), cvx_mem_free(x), cvx_mem_free(y);
    cvx_mem_free(y_cpu);
    CVX_EXPECT(stats(CVX_DEVICE_EMU).allocated_bytes == 0, "emu bytes left");
    expect_no_leak("emu residency check", base);
}

/* The data-movement entries of the CPU table, and the measuring table's promise: no byte touched (its pointers
 * here are NULL or unbacked), the CPU op's outputs allocated from the ctx. */
static void test_backend_tables(void) {
    const int64_t base = live_bytes();
    float a[6] = {1, 2, 3, 4, 5, 6}, b[6] = {0};
    const uint16_t half[2] = {0x3c00, 0xc000}; /* f16 1.0 and -2.0 */
    const cvx_backend *cpu = &cvx_backend_cpu;
    CVX_EXPECT(cpu->upload(&CTX, b, a, sizeof(a)) == CVX_OK && memcmp(a, b, sizeof(a)) == 0, "upload");
    CVX_EXPECT(cpu->fill(&CTX, b, -1.5f, 4) == CVX_OK && b[0] == -1.5f && b[3] == -1.5f && b[4] == 5.0f, "fill");
    CVX_EXPECT(cpu->copy(&CTX, b, a, 2 * sizeof(float)) == CVX_OK && b[1] == 2.0f && b[2] == -1.5f, "copy");
    CVX_EXPECT(cpu->download(&CTX, a, b, sizeof(a)) == CVX_OK && a[2] == -1.5f, "download");
    CVX_EXPECT(cpu->widen(&CTX, b, half, CVX_F16, 2) == CVX_OK && b[0] == 1.0f && b[1] == -2.0f, "widen f16");

    const cvx_backend *m = cvx_backend_measure();
    cvx_arena *arena = NULL;
    if (!CVX_EXPECT(cvx_arena_create(CVX_DEVICE_CPU, 1, &arena) == CVX_OK, "measuring arena")) return;
    cvx_ctx mctx = {.be = m, .device = CVX_DEVICE_CPU, .arena = arena, .measuring = 1};
    float *unbacked = NULL;
    CVX_EXPECT(cvx_ctx_alloc(&mctx, 1 << 20, (void **)&unbacked) == CVX_OK, "measuring alloc");
    CVX_EXPECT(m->upload(&mctx, unbacked, a, sizeof(a)) == CVX_OK &&
                   m->fill(&mctx, unbacked, 1.0f, 1 << 18) == CVX_OK && m->silu(&mctx, unbacked, 1 << 18) == CVX_OK &&
                   m->linear(&mctx, unbacked, 64, 64, unbacked, CVX_F16, NULL, 64, unbacked) == CVX_OK,
               "measuring ops over unbacked memory");
    /* a linear with 16-bit weights takes exactly cvx_linear_scratch from the arena, and gives it back */
    CVX_EXPECT(cvx_arena_peak(arena) >= (1u << 20) + cvx_linear_scratch(64, 64, CVX_F16, 64) &&
                   cvx_arena_in_use(arena) == (1u << 20),
               "measured linear scratch: peak %zu, in use %zu", cvx_arena_peak(arena), cvx_arena_in_use(arena));
    cvx_tensor t = {0}, pooled = {0};
    const int64_t shape[5] = {1, 2, 3, 4, 4};
    CVX_EXPECT(cvx_ctx_tensor(&mctx, &t, CVX_F32, 5, shape) == CVX_OK && m->avg_pool_time(&mctx, &t, &pooled) == CVX_OK,
               "measuring avg_pool_time");
    CVX_EXPECT(pooled.shape[2] == 2 && pooled.arena == arena, "measured avg_pool_time: %lld output frames (want 2)",
               (long long)pooled.shape[2]);
    cvx_tensor_release(&pooled);
    cvx_tensor_release(&t);
    cvx_ctx_free(&mctx, unbacked);
    cvx_arena_destroy(arena);
    expect_no_leak("backend tables", base);
}

int main(void) {
    cvx_ops_init();
    const int64_t start = live_bytes();
    printf("  OpenMP threads: %d\n", cvx_ops_num_threads());
    CVX_EXPECT(cvx_ops_num_threads() >= 1, "threads");
    test_frames_of();
    test_conv3d();
    test_conv3d_errors();
    test_nearest();
    test_group_norm();
    test_group_norm_errors();
    test_add_inplace();
    test_avg_pool_time();
    test_slice_frames();
    test_copy_box();
    test_emu_residency_check();
    test_backend_tables();
    expect_no_leak("all ops", start);
    cvx_mem_stats s;
    cvx_mem_get_stats(CVX_DEVICE_CPU, &s);
    CVX_EXPECT(s.num_active == 0, "%lld allocations left live", (long long)s.num_active);
    return cvx_test_report();
}

/* The CUDA video ops (csrc/ops/cuda/conv.cu, video.cu) against their CPU twins (csrc/ops/cpu) on the same inputs.
 *
 * Tolerances: f32 1e-5 relative to the largest reference value; 16-bit weights computed in F16 / BF16 2e-2, every
 * value finite; the data movement and the tile blending bit-identical (the CUDA ops round each product as the CPU
 * ops do). Each op is also checked to leave only its output allocated on the device (scratch given back, within
 * its documented bound), to refuse what the CPU op refuses with the same status and message (and the boxes and
 * tiles the CPU op trusts, which a GPU cannot survive), and to fail an out-of-memory without leaking. A small VAE
 * stage run through cvx_ctx_run with an arena on the CUDA device checks that the ops' own measuring pass sizes the
 * arena exactly. Sizes stay small: under the emulation every GPU thread is a fiber. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../../csrc/core/dtype.h"
#include "../../../csrc/core/tensor.h"
#include "../../../csrc/io/safetensors.h"
#include "../../../csrc/mem/arena.h"
#include "../../../csrc/models/vae.h"

#define CVX_TEST_SEED 0x6a09e667f3bcc909ull
#include "cuda_test.h"

/* conv.cu's test hook: the column buffer's bound (<= 0: the default 64 MiB). */
void cvx_cuda_conv_set_col_bytes(int64_t bytes);

static cvx_ctx CPU = {.be = &cvx_backend_cpu, .device = CVX_DEVICE_CPU};

static int64_t dev_live(void) { return stats(CVX_DEVICE_CUDA).allocated_bytes; }
static int64_t dev_peak(void) { return stats(CVX_DEVICE_CUDA).peak_allocated_bytes; }

static void expect_dev_no_leak(const char *what, int64_t base) {
    const int64_t now = dev_live();
    CVX_EXPECT(now == base, "%s: %lld device bytes left allocated", what, (long long)(now - base));
}

static int is_empty(const cvx_tensor *t) {
    cvx_tensor z;
    memset(&z, 0, sizeof(z));
    return memcmp(t, &z, sizeof(z)) == 0;
}

/* A host tensor [B, C, T, H, W] of uniform values in offset +- scale, and its device copy. */
typedef struct pair {
    cvx_tensor h, d;
} pair;

static void pair_make(pair *p, int64_t B, int64_t C, int64_t T, int64_t H, int64_t W, float scale, float offset) {
    const int64_t shape[5] = {B, C, T, H, W};
    if (cvx_tensor_alloc5(&p->h, B, C, T, H, W) != CVX_OK ||
        cvx_tensor_alloc(&p->d, CVX_DEVICE_CUDA, CVX_MEM_ACTIVATIONS, CVX_F32, 5, shape) != CVX_OK) {
        fprintf(stderr, "tensor allocation failed: %s\n", cvx_error_message());
        exit(1);
    }
    fill(p->h.data, cvx_tensor_numel(&p->h), scale, offset);
    if (cvx_tensor_numel(&p->h) && cvx_mem_copy(p->d.data, p->h.data, cvx_tensor_nbytes(&p->h)) != CVX_OK) {
        fprintf(stderr, "upload failed: %s\n", cvx_error_message());
        exit(1);
    }
}

static void pair_free(pair *p) {
    cvx_tensor_release(&p->h);
    cvx_tensor_release(&p->d);
}

/* The values of a device tensor, on the host (free() them). */
static float *host_of(const cvx_tensor *d) {
    const size_t bytes = cvx_tensor_nbytes(d);
    float *h = xmalloc(bytes);
    if (bytes) dev_download(h, d->data, bytes);
    return h;
}

static int same_shape(const cvx_tensor *a, const cvx_tensor *b) {
    if (a->ndim != b->ndim) return 0;
    for (int k = 0; k < a->ndim; k++)
        if (a->shape[k] != b->shape[k]) return 0;
    return 1;
}

/* got (device tensor) against ref (host tensor): the same shape, on the CUDA device, within tol (0: bit-identical). */
static void expect_tensor(const char *what, const cvx_tensor *got, const cvx_tensor *ref, double tol) {
    if (!CVX_EXPECT(same_shape(got, ref) && got->device == CVX_DEVICE_CUDA && got->dtype == CVX_F32,
                    "%s: the CUDA output's shape or device differs from the CPU op's", what))
        return;
    float *g = host_of(got);
    const int64_t n = cvx_tensor_numel(ref);
    if (tol == 0.0) {
        const int same = n == 0 || memcmp(g, ref->data, (size_t)n * sizeof(float)) == 0;
        printf("  %-52s %s\n", what, same ? "bit-identical" : "DIFFERS");
        CVX_EXPECT(same, "%s: not bit-identical to the CPU op", what);
    } else {
        expect_rel(what, g, ref->data, n, tol);
    }
    free(g);
}

/* The same refusal from both backends: status and message. cpu_msg is the CPU op's message. */
static void expect_same_refusal(const char *what, cvx_status cpu_st, const char *cpu_msg, cvx_status cuda_st) {
    CVX_EXPECT(cpu_st != CVX_OK && cuda_st == cpu_st && strcmp(cpu_msg, cvx_error_message()) == 0,
               "%s: CPU %d \"%s\", CUDA %d \"%s\"", what, (int)cpu_st, cpu_msg, (int)cuda_st, cvx_error_message());
    printf("  %-52s refused: %s\n", what, cvx_error_message());
    cvx_error_clear();
}

/* ---------------------------------------------------------------------------------------------------------------- */
/* conv3d */

enum { FRAMES_PLAIN, FRAMES_CAUSAL, FRAMES_DOUBLED };

typedef struct conv_case {
    const char *name;
    int64_t B, Ci, T, H, W;
    int Co, kt, kh, kw;
    cvx_conv_geom g;
    int frames; /* FRAMES_PLAIN: the T frames; CAUSAL: kt - 1 copies of the first, then the T; DOUBLED: each frame
                   twice but an odd first one (the time upsampling) */
    int bias;
} conv_case;

/* The frame list of a case over tensor t; returns its length. */
static int case_frames(const conv_case *cc, const cvx_tensor *t, cvx_frame *fr) {
    int n = 0;
    switch (cc->frames) {
    case FRAMES_CAUSAL:
        for (int i = 0; i < cc->kt - 1; i++) cvx_frames_of(t, 0, 1, &fr[n++]);
        cvx_frames_of(t, 0, cc->T, &fr[n]);
        return n + (int)cc->T;
    case FRAMES_DOUBLED:
        for (int64_t f = 0; f < cc->T; f++) {
            cvx_frames_of(t, f, 1, &fr[n++]);
            if (!(f == 0 && cc->T % 2)) cvx_frames_of(t, f, 1, &fr[n++]);
        }
        return n;
    default: cvx_frames_of(t, 0, cc->T, fr); return (int)cc->T;
    }
}

/* One case with weights in wdt on a ctx computing in `compute`, against the CPU op with the same weights, under a
 * column bound of col_bytes (0: the default). */
static void run_conv_case(const conv_case *cc, cvx_dtype wdt, cvx_dtype compute, int64_t col_bytes, double tol) {
    char what[160];
    snprintf(what, sizeof(what), "conv3d %s [%s, %s%s]", cc->name, cvx_dtype_name(wdt), cvx_dtype_name(compute),
             col_bytes ? ", small column bound" : "");
    pair x;
    pair_make(&x, cc->B, cc->Ci, cc->T, cc->H, cc->W, 1.0f, 0.0f);
    const int64_t K = cc->Ci * cc->kt * cc->kh * cc->kw, nw = K * cc->Co;
    float *w32 = xmalloc((size_t)nw * sizeof(float)), *b32 = xmalloc((size_t)cc->Co * sizeof(float));
    fill(w32, nw, 1.0f / sqrtf((float)K), 0.0f);
    fill(b32, cc->Co, 0.5f, 0.0f);
    const size_t wbytes = (size_t)nw * cvx_dtype_size(wdt);
    void *wh = xmalloc(wbytes);
    cvx_convert(wh, wdt, w32, CVX_F32, (size_t)nw);
    void *wd = NULL, *bd = NULL;
    if (cvx_mem_alloc(CVX_DEVICE_CUDA, CVX_MEM_WEIGHTS, wbytes, &wd) != CVX_OK ||
        cvx_mem_alloc(CVX_DEVICE_CUDA, CVX_MEM_WEIGHTS, (size_t)cc->Co * sizeof(float), &bd) != CVX_OK) {
        fprintf(stderr, "weight allocation failed: %s\n", cvx_error_message());
        exit(1);
    }
    if (cvx_mem_copy(wd, wh, wbytes) != CVX_OK || cvx_mem_copy(bd, b32, (size_t)cc->Co * sizeof(float)) != CVX_OK) {
        fprintf(stderr, "weight upload failed: %s\n", cvx_error_message());
        exit(1);
    }
    const cvx_conv_weight wt_h = {wh, wdt, cc->bias ? b32 : NULL, cc->Co, (int)cc->Ci, cc->kt, cc->kh, cc->kw};
    const cvx_conv_weight wt_d = {wd, wdt, cc->bias ? bd : NULL, cc->Co, (int)cc->Ci, cc->kt, cc->kh, cc->kw};
    cvx_frame fh[160], fd[160];
    const int nf = case_frames(cc, &x.h, fh);
    case_frames(cc, &x.d, fd);

    cvx_tensor ref = {0}, out;
    cvx_status st = cvx_conv3d(&CPU, fh, nf, cc->B, cc->H, cc->W, &wt_h, &cc->g, &ref);
    CVX_EXPECT(st == CVX_OK, "%s: CPU status %d: %s", what, (int)st, cvx_error_message());
    cvx_ctx ctx = cuda_ctx(compute);
    cvx_cuda_conv_set_col_bytes(col_bytes);
    const int64_t base = dev_live();
    cvx_mem_reset_peak(CVX_DEVICE_CUDA);
    memset(&out, 0xff, sizeof(out)); /* the op must not care what out held */
    st = ctx.be->conv3d(&ctx, fd, nf, cc->B, cc->H, cc->W, &wt_d, &cc->g, &out);
    const int64_t peak = dev_peak() - base;
    cvx_cuda_conv_set_col_bytes(0);
    if (CVX_EXPECT(st == CVX_OK, "%s: status %d: %s", what, (int)st, cvx_error_message())) {
        expect_tensor(what, &out, &ref, tol);
        /* scratch within its bound: converted weights + one column buffer (or one column when K alone is larger) */
        const cvx_dtype ab = compute == CVX_F32 ? CVX_F32 : compute;
        const int64_t es = (int64_t)cvx_dtype_size(ab), limit = col_bytes ? col_bytes : (int64_t)64 << 20;
        const int64_t wconv = wdt == ab ? 0 : (nw * es + 255) / 256 * 256;
        const int64_t cols = K * es > limit ? K * es : limit;
        const int64_t bound = (int64_t)cvx_tensor_nbytes(&ref) + wconv + cols;
        CVX_EXPECT(peak <= bound, "%s: device peak %lld > %lld", what, (long long)peak, (long long)bound);
        CVX_EXPECT(dev_live() - base == (int64_t)cvx_tensor_nbytes(&ref), "%s: scratch left: %lld bytes", what,
                   (long long)(dev_live() - base - (int64_t)cvx_tensor_nbytes(&ref)));
    }
    cvx_tensor_release(&out);
    expect_dev_no_leak(what, base);
    cvx_tensor_release(&ref);
    cvx_mem_free(wd);
    cvx_mem_free(bd);
    free(wh);
    free(w32);
    free(b32);
    pair_free(&x);
}

#define GEOM(sh, sw, pt, pb, pl, pr, up)                                                                               \
    { sh, sw, pt, pb, pl, pr, up }

static const conv_case CONV_CASES[] = {
    /* name, B, Ci, T, H, W, Co, kt, kh, kw, geometry, frames, bias */
    {"causal 3x3x3, first frame repeated, B=2, odd 5x7", 2, 3, 3, 5, 7, 4, 3, 3, 3, GEOM(1, 1, 1, 1, 1, 1, 1),
     FRAMES_CAUSAL, 1},
    {"1x1x1 shortcut, B=2", 2, 6, 3, 3, 5, 5, 1, 1, 1, GEOM(1, 1, 0, 0, 0, 0, 1), FRAMES_PLAIN, 1},
    {"1x1x1 over repeated frames, no bias", 2, 4, 3, 3, 3, 3, 1, 1, 1, GEOM(1, 1, 0, 0, 0, 0, 1), FRAMES_DOUBLED, 0},
    {"3x3 stride 2, padding (0,1,0,1), odd 7x9, B=2", 2, 3, 2, 7, 9, 4, 1, 3, 3, GEOM(2, 2, 0, 1, 0, 1, 1),
     FRAMES_PLAIN, 1},
    {"3x3 up=2 pad 1, time-doubled frames", 1, 3, 3, 3, 5, 4, 1, 3, 3, GEOM(1, 1, 1, 1, 1, 1, 2), FRAMES_DOUBLED, 1},
    {"3x3x3 causal up=2 (1, 2, 0, 1 padding), B=2", 2, 2, 2, 3, 3, 3, 3, 3, 3, GEOM(1, 1, 1, 2, 0, 1, 2), FRAMES_CAUSAL,
     0},
    {"3x3x3 over 72 frames of 2x3 (frame windows)", 1, 2, 70, 2, 3, 3, 3, 3, 3, GEOM(1, 1, 1, 1, 1, 1, 1),
     FRAMES_CAUSAL, 1},
};

static void test_conv3d(void) {
    const size_t ncases = sizeof(CONV_CASES) / sizeof(CONV_CASES[0]);
    for (size_t i = 0; i < ncases; i++) {
        const conv_case *cc = &CONV_CASES[i];
        run_conv_case(cc, CVX_F32, CVX_F32, 0, 1e-5);
        run_conv_case(cc, CVX_F16, CVX_F32, 0, 1e-5); /* 16-bit weights widened, f32 GEMM */
        run_conv_case(cc, CVX_F16, CVX_F16, 0, 2e-2);
        run_conv_case(cc, CVX_BF16, CVX_BF16, 0, 2e-2);
    }
    /* weights in another type than the compute one: converted into the scratch first */
    run_conv_case(&CONV_CASES[0], CVX_F32, CVX_F16, 0, 2e-2);
    run_conv_case(&CONV_CASES[3], CVX_BF16, CVX_F16, 0, 2e-2);
    run_conv_case(&CONV_CASES[4], CVX_BF16, CVX_F32, 0, 1e-5);
    /* the chunking under a small column bound (bytes = K x element size x positions): chunks of 12 positions
     * (across rows and frames), of 64 (bf16, across frames), of 64 with a frame window cut; and whole items two to
     * a GEMM (the bound holds 2 x P positions) */
    run_conv_case(&CONV_CASES[0], CVX_F32, CVX_F32, 81 * 4 * 12, 1e-5);
    run_conv_case(&CONV_CASES[4], CVX_BF16, CVX_BF16, 27 * 2 * 70, 2e-2);
    run_conv_case(&CONV_CASES[6], CVX_F32, CVX_F32, 54 * 4 * 100, 1e-5);
    run_conv_case(&CONV_CASES[3], CVX_F32, CVX_F32, 27 * 4 * 48, 1e-5);
    run_conv_case(&CONV_CASES[1], CVX_F16, CVX_F16, 6 * 2 * 45 * 2, 2e-2);
    run_conv_case(&CONV_CASES[5], CVX_F32, CVX_F32, 16, 1e-5); /* a bound below one column: one position a chunk */
}

static void test_conv3d_errors(void) {
    const int64_t base = dev_live();
    pair x;
    pair_make(&x, 1, 2, 2, 4, 4, 1.0f, 0.0f);
    float w[2 * 2 * 3 * 3 * 3];
    fill(w, 108, 1.0f, 0.0f);
    void *wd = NULL;
    CVX_EXPECT(cvx_mem_alloc(CVX_DEVICE_CUDA, CVX_MEM_WEIGHTS, sizeof(w), &wd) == CVX_OK &&
                   cvx_mem_copy(wd, w, sizeof(w)) == CVX_OK,
               "weights");
    const int64_t base_x = dev_live();
    cvx_ctx ctx = cuda_ctx(CVX_F32);
    cvx_frame fh[66], fd[66];
    cvx_frames_of(&x.h, 0, 2, fh);
    cvx_frames_of(&x.d, 0, 2, fd);
    const cvx_conv_geom g = {1, 1, 1, 1, 1, 1, 1}, up3 = {1, 1, 1, 1, 1, 1, 3}, nopad = {1, 1, 0, 0, 0, 0, 1};
    const cvx_conv_weight wh = {w, CVX_F32, NULL, 2, 2, 3, 3, 3}, wdv = {wd, CVX_F32, NULL, 2, 2, 3, 3, 3};
    const cvx_conv_weight wh1 = {w, CVX_F32, NULL, 2, 2, 1, 3, 3}, wd1 = {wd, CVX_F32, NULL, 2, 2, 1, 3, 3};
    struct {
        const char *what;
        const cvx_conv_weight *wh, *wd;
        const cvx_conv_geom *g;
        int64_t H, W;
    } bad[] = {{"conv3d: 2 frames for kt=3", &wh, &wdv, &g, 4, 4},
               {"conv3d: up=3", &wh1, &wd1, &up3, 4, 4},
               {"conv3d: 2x2 frames under a 3x3 kernel", &wh1, &wd1, &nopad, 2, 2}};
    for (size_t i = 0; i < 3; i++) {
        cvx_tensor out;
        memset(&out, 0xff, sizeof(out));
        const cvx_status cst = cvx_conv3d(&CPU, fh, 2, 1, bad[i].H, bad[i].W, bad[i].wh, bad[i].g, &out);
        char msg[512];
        snprintf(msg, sizeof(msg), "%s", cvx_error_message());
        memset(&out, 0xff, sizeof(out));
        const cvx_status st = ctx.be->conv3d(&ctx, fd, 2, 1, bad[i].H, bad[i].W, bad[i].wd, bad[i].g, &out);
        expect_same_refusal(bad[i].what, cst, msg, st);
        CVX_EXPECT(is_empty(&out), "%s: out zeroed", bad[i].what);
        expect_dev_no_leak(bad[i].what, base_x);
    }
    /* the CUDA op's own limit: a frame table of 64 frames per launch */
    for (int i = 0; i < 66; i++) cvx_frames_of(&x.d, 0, 1, &fd[i]);
    cvx_conv_weight deep = wdv;
    deep.kt = 65;
    cvx_tensor out;
    cvx_status st = ctx.be->conv3d(&ctx, fd, 66, 1, 4, 4, &deep, &g, &out);
    CVX_EXPECT(st == CVX_ERR_INVALID && strstr(cvx_error_message(), "at most 64") && is_empty(&out),
               "kt=65: status %d: %s", (int)st, cvx_error_message());
    printf("  %-52s refused: %s\n", "conv3d: kt=65", cvx_error_message());
    cvx_error_clear();
    expect_dev_no_leak("conv3d: kt=65", base_x);

    /* out of memory on the output, then on the scratch (f16 weights widened): nothing left */
    cvx_frames_of(&x.d, 0, 2, fd);
    const cvx_conv_weight wk2 = {wd, CVX_F16, NULL, 2, 2, 1, 3, 3};
    const int64_t out_bytes = 1 * 2 * 2 * 4 * 4 * 4;
    const int64_t limits[] = {out_bytes - 1, out_bytes};
    for (int i = 0; i < 2; i++) {
        cvx_mem_set_limit(CVX_DEVICE_CUDA, base_x + limits[i]);
        memset(&out, 0xff, sizeof(out));
        st = ctx.be->conv3d(&ctx, fd, 2, 1, 4, 4, &wk2, &g, &out);
        cvx_mem_set_limit(CVX_DEVICE_CUDA, 0);
        CVX_EXPECT(st == CVX_ERR_OOM && is_empty(&out), "conv3d OOM %d: status %d", i, (int)st);
        expect_dev_no_leak(i ? "conv3d: scratch refused" : "conv3d: output refused", base_x);
        cvx_error_clear();
    }
    cvx_mem_free(wd);
    pair_free(&x);
    expect_dev_no_leak("conv3d errors", base);
}

/* ---------------------------------------------------------------------------------------------------------------- */
/* group norm */

typedef struct gn_case {
    const char *name;
    int64_t B, C, T, H, W;
    int groups, silu, in_place;
    int64_t Tz, Hz, Wz; /* modulation size, 0: none */
    float offset;
} gn_case;

static void run_gn_case(const gn_case *gc) {
    char what[160];
    snprintf(what, sizeof(what), "group_norm %s", gc->name);
    pair x, y, b;
    pair_make(&x, gc->B, gc->C, gc->T, gc->H, gc->W, 1.0f, gc->offset);
    memset(&y, 0, sizeof(y)), memset(&b, 0, sizeof(b));
    if (gc->Tz) {
        pair_make(&y, gc->B, gc->C, gc->Tz, gc->Hz, gc->Wz, 1.0f, 0.5f);
        pair_make(&b, gc->B, gc->C, gc->Tz, gc->Hz, gc->Wz, 1.0f, 0.0f);
    }
    float gamma[64], beta[64];
    fill(gamma, gc->C, 0.5f, 1.0f);
    fill(beta, gc->C, 0.5f, 0.0f);
    float *gd = dev_upload(gamma, gc->C), *bd = dev_upload(beta, gc->C);
    const cvx_norm_modulation mh = {&y.h, &b.h}, md = {&y.d, &b.d};
    const float eps = 1e-6f;

    cvx_tensor ref = {0}, out = {0};
    cvx_status st = cvx_group_norm(&CPU, &x.h, gc->groups, eps, gamma, beta, gc->Tz ? &mh : NULL, gc->silu,
                                   gc->in_place ? &x.h : &ref);
    CVX_EXPECT(st == CVX_OK, "%s: CPU status %d: %s", what, (int)st, cvx_error_message());
    cvx_ctx ctx = cuda_ctx(CVX_F32);
    const int64_t base = dev_live();
    st = ctx.be->group_norm(&ctx, &x.d, gc->groups, eps, gd, bd, gc->Tz ? &md : NULL, gc->silu,
                            gc->in_place ? &x.d : &out);
    if (CVX_EXPECT(st == CVX_OK, "%s: status %d: %s", what, (int)st, cvx_error_message())) {
        expect_tensor(what, gc->in_place ? &x.d : &out, gc->in_place ? &x.h : &ref, 1e-5);
        const int64_t kept = gc->in_place ? 0 : (int64_t)cvx_tensor_nbytes(&x.h);
        CVX_EXPECT(dev_live() - base == kept, "%s: scratch left: %lld bytes", what,
                   (long long)(dev_live() - base - kept));
    }
    cvx_tensor_release(&out);
    cvx_tensor_release(&ref);
    expect_dev_no_leak(what, base);
    cvx_mem_free(gd);
    cvx_mem_free(bd);
    pair_free(&x);
    pair_free(&y);
    pair_free(&b);
}

static void test_group_norm(void) {
    static const gn_case cases[] = {
        /* name, B, C, T, H, W, groups, silu, in_place, Tz, Hz, Wz, offset */
        {"plain, B=2, 4 groups", 2, 8, 3, 4, 5, 4, 0, 0, 0, 0, 0, 0.0f},
        {"plain + SiLU in place", 1, 6, 2, 3, 3, 3, 1, 1, 0, 0, 0, 0.0f},
        {"modulation + SiLU, odd T=5 from Tz=3, B=2", 2, 8, 5, 6, 6, 4, 1, 0, 3, 3, 3, 0.0f},
        {"modulation in place, T=3 from Tz=2, 3x4 from 5x7", 1, 4, 3, 3, 4, 2, 0, 1, 2, 5, 7, 0.0f},
        {"modulation, even T=6 from Tz=4 (non-integer)", 1, 4, 6, 3, 3, 2, 0, 0, 4, 3, 3, 0.0f},
        {"modulation x2 (T=1), in place + SiLU", 1, 4, 1, 6, 8, 2, 1, 1, 1, 3, 4, 0.0f},
        {"3 statistics blocks per group, mean 100", 1, 4, 3, 40, 70, 2, 0, 0, 0, 0, 0, 100.0f},
        {"2.4M values a group (256 statistics blocks, the cap)", 1, 2, 1, 1100, 1100, 1, 1, 0, 0, 0, 0, 0.0f},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) run_gn_case(&cases[i]);
}

static void test_group_norm_errors(void) {
    const int64_t base = dev_live();
    pair x, y4, b4, y, b;
    pair_make(&x, 1, 6, 2, 3, 3, 1.0f, 0.0f);
    pair_make(&y4, 1, 4, 1, 2, 2, 1.0f, 0.0f);
    pair_make(&b4, 1, 4, 1, 2, 2, 1.0f, 0.0f);
    pair_make(&y, 1, 6, 1, 2, 2, 1.0f, 0.0f);
    pair_make(&b, 1, 6, 1, 2, 2, 1.0f, 0.0f);
    float gamma[6] = {1, 1, 1, 1, 1, 1}, beta[6] = {0};
    float *gd = dev_upload(gamma, 6), *bd = dev_upload(beta, 6);
    const int64_t base_x = dev_live();
    cvx_ctx ctx = cuda_ctx(CVX_F32);
    char msg[512];
    const int bad_groups[] = {4, 0, -2, 12};
    for (size_t i = 0; i < 4; i++) {
        cvx_tensor out = {0};
        const cvx_status cst = cvx_group_norm(&CPU, &x.h, bad_groups[i], 1e-6f, gamma, beta, NULL, 0, &out);
        snprintf(msg, sizeof(msg), "%s", cvx_error_message());
        const cvx_status st = ctx.be->group_norm(&ctx, &x.d, bad_groups[i], 1e-6f, gd, bd, NULL, 0, &out);
        expect_same_refusal("group_norm: bad groups", cst, msg, st);
        CVX_EXPECT(is_empty(&out), "out left empty");
        expect_dev_no_leak("group_norm: bad groups", base_x);
    }
    const cvx_norm_modulation m4h = {&y4.h, &b4.h}, m4d = {&y4.d, &b4.d}, md = {&y.d, &b.d};
    cvx_tensor out = {0};
    cvx_status cst = cvx_group_norm(&CPU, &x.h, 3, 1e-6f, gamma, beta, &m4h, 0, &out);
    snprintf(msg, sizeof(msg), "%s", cvx_error_message());
    cvx_status st = ctx.be->group_norm(&ctx, &x.d, 3, 1e-6f, gd, bd, &m4d, 0, &out);
    expect_same_refusal("group_norm: modulation of 4 channels for 6", cst, msg, st);
    expect_dev_no_leak("group_norm: modulation channels", base_x);

    /* out of memory on the output and on the scratch; in place with the scratch refused leaves x untouched */
    const int64_t out_bytes = 6 * 2 * 9 * 4;
    const int64_t limits[] = {out_bytes - 1, out_bytes};
    for (int i = 0; i < 2; i++) {
        cvx_mem_set_limit(CVX_DEVICE_CUDA, base_x + limits[i]);
        memset(&out, 0, sizeof(out));
        st = ctx.be->group_norm(&ctx, &x.d, 3, 1e-6f, gd, bd, &md, 1, &out);
        cvx_mem_set_limit(CVX_DEVICE_CUDA, 0);
        CVX_EXPECT(st == CVX_ERR_OOM && out.data == NULL, "group_norm OOM %d: status %d", i, (int)st);
        expect_dev_no_leak("group_norm OOM", base_x);
        cvx_error_clear();
    }
    cvx_mem_set_limit(CVX_DEVICE_CUDA, base_x);
    st = ctx.be->group_norm(&ctx, &x.d, 3, 1e-6f, gd, bd, &md, 1, &x.d);
    cvx_mem_set_limit(CVX_DEVICE_CUDA, 0);
    float *after = host_of(&x.d);
    CVX_EXPECT(st == CVX_ERR_OOM && memcmp(after, x.h.data, cvx_tensor_nbytes(&x.h)) == 0,
               "group_norm in place OOM: status %d, x untouched", (int)st);
    free(after);
    expect_dev_no_leak("group_norm in place OOM", base_x);
    cvx_error_clear();
    cvx_mem_free(gd);
    cvx_mem_free(bd);
    pair_free(&x);
    pair_free(&y4);
    pair_free(&b4);
    pair_free(&y);
    pair_free(&b);
    expect_dev_no_leak("group_norm errors", base);
}

/* ---------------------------------------------------------------------------------------------------------------- */
/* element-wise and data movement: bit-identical to the CPU ops */

static void test_add_pool_slice(void) {
    const int64_t base = dev_live();
    cvx_ctx ctx = cuda_ctx(CVX_F32);
    char msg[512];
    pair x, y, z;
    pair_make(&x, 2, 3, 5, 4, 7, 1.0f, 0.0f);
    pair_make(&y, 2, 3, 5, 4, 7, 3.0f, 1.0f);
    pair_make(&z, 2, 3, 4, 4, 7, 1.0f, 0.0f);
    const int64_t base_x = dev_live();
    CVX_EXPECT(cvx_add_inplace(&CPU, &x.h, &y.h) == CVX_OK && ctx.be->add_inplace(&ctx, &x.d, &y.d) == CVX_OK,
               "add_inplace: %s", cvx_error_message());
    expect_tensor("add_inplace", &x.d, &x.h, 0.0);
    cvx_status cst = cvx_add_inplace(&CPU, &x.h, &z.h);
    snprintf(msg, sizeof(msg), "%s", cvx_error_message());
    expect_same_refusal("add_inplace: 840 and 672 elements", cst, msg, ctx.be->add_inplace(&ctx, &x.d, &z.d));

    const pair *pools[] = {&x, &z}; /* T = 5 (odd: the first frame kept) and T = 4 */
    for (int i = 0; i < 2; i++) {
        cvx_tensor ref = {0}, out = {0};
        CVX_EXPECT(cvx_avg_pool_time(&CPU, &pools[i]->h, &ref) == CVX_OK &&
                       ctx.be->avg_pool_time(&ctx, &pools[i]->d, &out) == CVX_OK,
                   "avg_pool_time: %s", cvx_error_message());
        expect_tensor(i ? "avg_pool_time, T=4" : "avg_pool_time, T=5 (first frame kept)", &out, &ref, 0.0);
        cvx_tensor_release(&out);
        cvx_tensor_release(&ref);
    }
    cvx_tensor ref = {0}, out = {0};
    CVX_EXPECT(cvx_slice_frames(&CPU, &x.h, 1, 3, &ref) == CVX_OK && ctx.be->slice_frames(&ctx, &x.d, 1, 3, &out) == 0,
               "slice_frames: %s", cvx_error_message());
    expect_tensor("slice_frames [1, 4) of 5", &out, &ref, 0.0);
    cvx_tensor_release(&out);
    cvx_tensor_release(&ref);
    cst = cvx_slice_frames(&CPU, &x.h, 3, 3, &ref);
    snprintf(msg, sizeof(msg), "%s", cvx_error_message());
    expect_same_refusal("slice_frames [3, 6) of 5", cst, msg, ctx.be->slice_frames(&ctx, &x.d, 3, 3, &out));
    CVX_EXPECT(is_empty(&out), "refused slice: out empty");
    expect_dev_no_leak("add, pool, slice", base_x);
    pair_free(&x);
    pair_free(&y);
    pair_free(&z);
    expect_dev_no_leak("add, pool, slice", base);
}

static void test_boxes(void) {
    const int64_t base = dev_live();
    cvx_ctx ctx = cuda_ctx(CVX_F32);
    pair src, dst;
    pair_make(&src, 2, 3, 4, 9, 11, 1.0f, 0.0f);
    pair_make(&dst, 3, 3, 5, 6, 8, 1.0f, 0.0f);
    struct {
        const char *what;
        int64_t d[4], s[4], n[4];
    } boxes[] = {
        {"a box inside rows", {1, 2, 1, 3}, {0, 1, 2, 4}, {2, 3, 4, 5}},
        {"whole rows", {0, 0, 0, 0}, {1, 0, 3, 0}, {1, 4, 6, 11}},
        {"one element", {2, 4, 5, 7}, {1, 3, 8, 10}, {1, 1, 1, 1}},
        {"an empty box", {0, 0, 0, 0}, {0, 0, 0, 0}, {1, 0, 2, 2}},
    };
    /* whole rows: a destination as wide as the source (one copy per channel plane in download_box) */
    pair wide;
    pair_make(&wide, 1, 3, 4, 7, 11, 1.0f, 0.0f);
    for (size_t i = 0; i < 4; i++) {
        pair *to = i == 1 ? &wide : &dst;
        char what[120];
        snprintf(what, sizeof(what), "copy_box: %s", boxes[i].what);
        CVX_EXPECT(cvx_copy_box(&CPU, &to->h, boxes[i].d, &src.h, boxes[i].s, boxes[i].n) == CVX_OK &&
                       ctx.be->copy_box(&ctx, &to->d, boxes[i].d, &src.d, boxes[i].s, boxes[i].n) == CVX_OK,
                   "%s: %s", what, cvx_error_message());
        expect_tensor(what, &to->d, &to->h, 0.0);
        /* download_box into a host tensor holding other values: the box lands, the rest stays */
        cvx_tensor host;
        CVX_EXPECT(cvx_tensor_alloc5(&host, to->h.shape[0], 3, to->h.shape[2], to->h.shape[3], to->h.shape[4]) == 0,
                   "alloc");
        fill(host.data, cvx_tensor_numel(&host), 1.0f, 0.0f);
        cvx_tensor want = {0};
        CVX_EXPECT(cvx_ctx_tensor5(&CPU, &want, host.shape[0], 3, host.shape[2], host.shape[3], host.shape[4]) == 0,
                   "alloc");
        memcpy(want.data, host.data, cvx_tensor_nbytes(&host));
        CVX_EXPECT(cvx_download_box(&CPU, &want, boxes[i].d, &src.h, boxes[i].s, boxes[i].n) == CVX_OK &&
                       ctx.be->download_box(&ctx, &host, boxes[i].d, &src.d, boxes[i].s, boxes[i].n) == CVX_OK,
                   "download_box: %s", cvx_error_message());
        const int same = memcmp(host.data, want.data, cvx_tensor_nbytes(&host)) == 0;
        printf("  download_box: %-38s %s\n", boxes[i].what, same ? "bit-identical" : "DIFFERS");
        CVX_EXPECT(same, "download_box %s differs from the CPU op", boxes[i].what);
        cvx_tensor_release(&host);
        cvx_tensor_release(&want);
    }
    /* a box the CPU op would trust and overrun: refused on CUDA */
    const int64_t d[4] = {0, 0, 0, 4}, s[4] = {0, 0, 0, 0}, n[4] = {1, 1, 2, 5};
    cvx_status st = ctx.be->copy_box(&ctx, &dst.d, d, &src.d, s, n);
    CVX_EXPECT(st == CVX_ERR_INVALID && strstr(cvx_error_message(), "does not fit"), "box past the width: %d %s",
               (int)st, cvx_error_message());
    printf("  %-52s refused: %s\n", "copy_box: 5 columns at 4 of 8", cvx_error_message());
    cvx_error_clear();
    cvx_tensor host;
    CVX_EXPECT(cvx_tensor_alloc5(&host, 1, 2, 1, 2, 2) == CVX_OK, "alloc");
    const int64_t z[4] = {0, 0, 0, 0}, one[4] = {1, 1, 1, 1};
    st = ctx.be->download_box(&ctx, &host, z, &src.d, z, one);
    CVX_EXPECT(st == CVX_ERR_INVALID && strstr(cvx_error_message(), "same C"), "download_box channels: %d %s", (int)st,
               cvx_error_message());
    cvx_error_clear();
    cvx_tensor_release(&host);

    /* gather_frames over a frame list with repeats (the causal cache) */
    cvx_frame fh[4], fd[4];
    const int64_t picks[4] = {3, 0, 0, 2};
    for (int i = 0; i < 4; i++) cvx_frames_of(&src.h, picks[i], 1, &fh[i]), cvx_frames_of(&src.d, picks[i], 1, &fd[i]);
    cvx_tensor ref = {0}, out = {0};
    CVX_EXPECT(cvx_gather_frames(&CPU, fh, 4, 2, 3, 9, 11, &ref) == CVX_OK &&
                   ctx.be->gather_frames(&ctx, fd, 4, 2, 3, 9, 11, &out) == CVX_OK,
               "gather_frames: %s", cvx_error_message());
    expect_tensor("gather_frames 3, 0, 0, 2", &out, &ref, 0.0);
    cvx_tensor_release(&out);
    cvx_tensor_release(&ref);
    pair_free(&src);
    pair_free(&dst);
    pair_free(&wide);
    expect_dev_no_leak("boxes", base);
}

static void test_blend(void) {
    const int64_t base = dev_live();
    cvx_ctx ctx = cuda_ctx(CVX_F32);
    pair a, b, c;
    pair_make(&a, 1, 3, 2, 5, 7, 1.0f, 0.0f); /* the last 5 rows of the tile above, 7 wide */
    pair_make(&b, 1, 3, 2, 6, 7, 1.0f, 0.0f);
    pair_make(&c, 1, 3, 2, 6, 4, 1.0f, 0.0f);                /* the tile to the left, 4 wide */
    const int64_t row_cases[][2] = {{8, 3}, {3, 8}, {5, 9}}; /* (a_full_rows, extent): e = 3, 3, 5 */
    for (int i = 0; i < 3; i++) {
        char what[96];
        snprintf(what, sizeof(what), "blend_rows a_full_rows %lld, extent %lld", (long long)row_cases[i][0],
                 (long long)row_cases[i][1]);
        CVX_EXPECT(cvx_blend_rows(&CPU, &a.h, &b.h, row_cases[i][0], row_cases[i][1]) == CVX_OK &&
                       ctx.be->blend_rows(&ctx, &a.d, &b.d, row_cases[i][0], row_cases[i][1]) == CVX_OK,
                   "%s: %s", what, cvx_error_message());
        expect_tensor(what, &b.d, &b.h, 0.0);
    }
    const int64_t col_extents[] = {3, 9}; /* e = 3, 4 */
    for (int i = 0; i < 2; i++) {
        char what[96];
        snprintf(what, sizeof(what), "blend_cols extent %lld", (long long)col_extents[i]);
        CVX_EXPECT(cvx_blend_cols(&CPU, &c.h, &b.h, col_extents[i]) == CVX_OK &&
                       ctx.be->blend_cols(&ctx, &c.d, &b.d, col_extents[i]) == CVX_OK,
                   "%s: %s", what, cvx_error_message());
        expect_tensor(what, &b.d, &b.h, 0.0);
    }
    /* tiles that do not line up: refused on CUDA (the CPU op trusts them) */
    cvx_status st = ctx.be->blend_rows(&ctx, &c.d, &b.d, 8, 3);
    CVX_EXPECT(st == CVX_ERR_INVALID, "blend_rows of a 4-wide tile into a 7-wide one: status %d", (int)st);
    printf("  %-52s refused: %s\n", "blend_rows: widths 4 and 7", cvx_error_message());
    cvx_error_clear();
    st = ctx.be->blend_cols(&ctx, &a.d, &b.d, 3);
    CVX_EXPECT(st == CVX_ERR_INVALID, "blend_cols of a 5-high tile into a 6-high one: status %d", (int)st);
    cvx_error_clear();
    pair_free(&a);
    pair_free(&b);
    pair_free(&c);
    expect_dev_no_leak("blend", base);
}

/* ---------------------------------------------------------------------------------------------------------------- */
/* the measuring pass: a small VAE stage through cvx_ctx_run with an arena on the CUDA device */

typedef struct stage {
    const cvx_tensor *x; /* [1, 4, 3, 6, 6] on the device */
    const cvx_conv_weight *conv, *down, *shortcut;
    const float *gamma, *beta;
    float *host_out; /* the stage's output, downloaded (not in the measuring pass) */
    int64_t out_shape[5];
} stage;

/* causal conv -> group norm + SiLU (in place) -> + shortcut -> time pooling -> stride-2 conv -> 2 frames sliced ->
 * a cache of them gathered -> blended into the slice (rows, columns) -> a box of it copied back -> downloaded */
static cvx_status stage_forward(cvx_ctx *ctx, void *arg) {
    stage *s = arg;
    const cvx_backend *be = ctx->be;
    cvx_status st = CVX_OK;
    cvx_tensor h = {0}, sc = {0}, pooled = {0}, down = {0}, last = {0}, cache = {0};
    cvx_frame fr[8];
    cvx_frames_of(s->x, 0, 1, &fr[0]);
    cvx_frames_of(s->x, 0, 1, &fr[1]);
    cvx_frames_of(s->x, 0, 3, &fr[2]);
    const cvx_conv_geom same = {1, 1, 1, 1, 1, 1, 1}, point = {1, 1, 0, 0, 0, 0, 1}, half = {2, 2, 0, 1, 0, 1, 1};
    CVX_TRY(be->conv3d(ctx, fr, 5, 1, 6, 6, s->conv, &same, &h));
    CVX_TRY(be->group_norm(ctx, &h, 2, 1e-6f, s->gamma, s->beta, NULL, 1, &h));
    CVX_TRY(be->conv3d(ctx, fr + 2, 3, 1, 6, 6, s->shortcut, &point, &sc));
    CVX_TRY(be->add_inplace(ctx, &h, &sc));
    CVX_TRY(be->avg_pool_time(ctx, &h, &pooled));
    cvx_tensor_release(&h);
    cvx_frames_of(&pooled, 0, pooled.shape[2], fr);
    CVX_TRY(be->conv3d(ctx, fr, (int)pooled.shape[2], 1, 6, 6, s->down, &half, &down));
    CVX_TRY(be->slice_frames(ctx, &down, 0, 2, &last));
    cvx_frames_of(&down, 0, 2, fr);
    CVX_TRY(be->gather_frames(ctx, fr, 2, 1, 4, 3, 3, &cache));
    CVX_TRY(be->blend_rows(ctx, &cache, &last, 3, 2));
    CVX_TRY(be->blend_cols(ctx, &cache, &last, 2));
    const int64_t at[4] = {0, 1, 1, 1}, from[4] = {0, 0, 0, 0}, box[4] = {1, 1, 2, 2};
    CVX_TRY(be->copy_box(ctx, &last, at, &cache, from, box));
    memcpy(s->out_shape, last.shape, sizeof(s->out_shape));
    if (!ctx->measuring) {
        cvx_tensor host = {.data = s->host_out, .dtype = CVX_F32, .device = CVX_DEVICE_CPU, .ndim = 5};
        memcpy(host.shape, last.shape, sizeof(host.shape));
        const int64_t z[4] = {0, 0, 0, 0}, n[4] = {1, 2, last.shape[3], last.shape[4]};
        CVX_TRY(be->download_box(ctx, &host, z, &last, z, n));
    }
fail:
    cvx_tensor_release(&h);
    cvx_tensor_release(&sc);
    cvx_tensor_release(&pooled);
    cvx_tensor_release(&down);
    cvx_tensor_release(&last);
    cvx_tensor_release(&cache);
    return st;
}

static void test_measuring(void) {
    const int64_t base = dev_live();
    pair x;
    pair_make(&x, 1, 4, 3, 6, 6, 1.0f, 0.0f);
    float w3[4 * 4 * 27], w1[4 * 4], wd[4 * 4 * 9], gb[8], bias[4];
    fill(w3, 432, 0.2f, 0.0f), fill(w1, 16, 0.5f, 0.0f), fill(wd, 144, 0.3f, 0.0f), fill(gb, 8, 0.5f, 0.5f);
    fill(bias, 4, 0.5f, 0.0f);
    float *w3d = dev_upload(w3, 432), *w1d = dev_upload(w1, 16), *wdd = dev_upload(wd, 144), *gbd = dev_upload(gb, 8);
    float *biasd = dev_upload(bias, 4);
    const cvx_conv_weight conv = {w3d, CVX_F32, biasd, 4, 4, 3, 3, 3}, shortcut = {w1d, CVX_F32, NULL, 4, 4, 1, 1, 1};
    const cvx_conv_weight down = {wdd, CVX_F32, biasd, 4, 4, 1, 3, 3};
    float got[1 * 4 * 2 * 3 * 3], want[1 * 4 * 2 * 3 * 3];
    stage s = {&x.d, &conv, &down, &shortcut, gbd, gbd + 4, want, {0}};

    /* the reference: the same stage without an arena (every allocation from the memory manager) */
    cvx_ctx plain = cuda_ctx(CVX_F32);
    CVX_EXPECT(stage_forward(&plain, &s) == CVX_OK, "stage without arena: %s", cvx_error_message());
    CVX_EXPECT(s.out_shape[2] == 2 && s.out_shape[3] == 3 && s.out_shape[4] == 3, "stage output [1 4 %lld %lld %lld]",
               (long long)s.out_shape[2], (long long)s.out_shape[3], (long long)s.out_shape[4]);
    const int64_t after_plain = dev_live();
    CVX_EXPECT(after_plain == base + (int64_t)cvx_tensor_nbytes(&x.d) + 4 * (432 + 16 + 144 + 8 + 4),
               "stage without arena left %lld bytes", (long long)(after_plain - base));

    cvx_arena *arena = NULL;
    if (!CVX_EXPECT(cvx_arena_create(CVX_DEVICE_CUDA, 0, &arena) == CVX_OK, "arena: %s", cvx_error_message())) return;
    cvx_ctx ctx = cuda_ctx(CVX_F32);
    ctx.arena = arena;
    size_t measured = 0, measured_again = 0;
    CVX_EXPECT(cvx_ctx_measure(&ctx, stage_forward, &s, &measured_again) == CVX_OK, "measure: %s", cvx_error_message());
    s.host_out = got;
    const int64_t before = dev_live();
    cvx_mem_reset_peak(CVX_DEVICE_CUDA);
    const cvx_status st = cvx_ctx_run(&ctx, stage_forward, &s, &measured);
    CVX_EXPECT(st == CVX_OK, "cvx_ctx_run: %s", cvx_error_message());
    printf("  measured arena %zu bytes; real run's arena peak %zu, device peak above the inputs %lld\n", measured,
           cvx_arena_peak(arena), (long long)(dev_peak() - before));
    const size_t reserved = (measured + 63) / 64 * 64; /* the arena's region, in whole 64-byte units */
    CVX_EXPECT(measured > 0 && measured == measured_again && cvx_arena_peak(arena) == measured &&
                   cvx_arena_size(arena) == reserved,
               "the arena fits exactly: measured %zu (again %zu), real peak %zu, reserved %zu", measured,
               measured_again, cvx_arena_peak(arena), cvx_arena_size(arena));
    CVX_EXPECT(cvx_arena_in_use(arena) == 0, "everything given back to the arena: %zu in use", cvx_arena_in_use(arena));
    CVX_EXPECT(dev_peak() - before == (int64_t)reserved, "nothing but the arena allocated: device peak +%lld",
               (long long)(dev_peak() - before));
    /* the same ops on the same inputs; on a GPU cuBLAS may pick another kernel for other addresses' alignment */
    expect_rel("stage in the arena vs without", got, want, 72, 1e-5);
    cvx_arena_destroy(arena);
    expect_dev_no_leak("measuring: arena given back", after_plain);
    cvx_mem_free(w3d), cvx_mem_free(w1d), cvx_mem_free(wdd), cvx_mem_free(gbd), cvx_mem_free(biasd);
    pair_free(&x);
    expect_dev_no_leak("measuring", base);
}

/* ---------------------------------------------------------------------------------------------------------------- */
/* the whole VAE (models/vae.c) on the CUDA backend against the CPU backend: every video op in the compositions the
 * model makes (causal caches, spatial norms, up/down sampling, frame batches, tiles blended and downloaded). The
 * weights are copied to the device by hand, each group into one buffer at its device layout's offsets, and the
 * slots re-pointed there (the residency's CUDA copies are another part); ctx->res NULL reads them where they are. */

/* tests/fixtures/vae/tiny/config.json */
static const cvx_vae_config TINY_VAE = {
    .in_channels = 3,
    .out_channels = 3,
    .latent_channels = 4,
    .num_blocks = 4,
    .block_out_channels = {8, 8, 8, 8},
    .layers_per_block = 1,
    .norm_num_groups = 2,
    .norm_eps = 1e-6f,
    .temporal_compression_ratio = 4,
};

/* Points every weight slot at a device copy (dev[group] buffers, allocated here) or, dev NULL, back at its host
 * bytes. */
static void vae_weights_to(const cvx_vae *vae, void **dev) {
    const cvx_weights *ws = cvx_vae_weights(vae);
    for (int g = 0; dev && g < ws->num_groups; g++)
        if (cvx_mem_alloc(CVX_DEVICE_CUDA, CVX_MEM_WEIGHTS, (size_t)ws->group_bytes[g], &dev[g]) != CVX_OK) {
            fprintf(stderr, "weight group %d: %s\n", g, cvx_error_message());
            exit(1);
        }
    for (int i = 0; i < ws->count; i++) {
        const cvx_weight_decl *d = &ws->decls[i];
        if (!dev) {
            *d->slot = (void *)d->host;
            continue;
        }
        int64_t n = 1;
        for (int k = 0; k < d->ndim; k++) n *= d->shape[k];
        char *at = (char *)dev[d->group] + d->offset;
        if (cvx_mem_copy(at, d->host, (size_t)n * (d->as_f32 ? 4 : cvx_dtype_size(ws->dtype))) != CVX_OK) {
            fprintf(stderr, "weight %s: %s\n", d->name, cvx_error_message());
            exit(1);
        }
        *d->slot = at;
    }
}

typedef struct vae_job {
    cvx_vae *vae;
    const cvx_tensor *x;
    int decode;
    const cvx_vae_tiling *tiling;
    cvx_tensor *out;
} vae_job;

static cvx_status vae_job_run(cvx_ctx *ctx, void *arg) {
    const vae_job *j = arg;
    return j->decode ? cvx_vae_decode(ctx, j->vae, j->x, 0, j->tiling, j->out)
                     : cvx_vae_encode(ctx, j->vae, j->x, 0, j->tiling, j->out);
}

static void vae_compare(const char *what, cvx_vae *vae, void **dev, cvx_dtype compute, const cvx_tensor *x, int decode,
                        const cvx_vae_tiling *tiling, double tol) {
    cvx_tensor ref = {0}, got = {0};
    vae_job job = {vae, x, decode, tiling, &ref};
    vae_weights_to(vae, NULL);
    const cvx_status cst = vae_job_run(&CPU, &job);
    CVX_EXPECT(cst == CVX_OK, "%s on the CPU: %s", what, cvx_error_message());
    vae_weights_to(vae, dev);
    cvx_arena *arena = NULL;
    CVX_EXPECT(cvx_arena_create(CVX_DEVICE_CUDA, 0, &arena) == CVX_OK, "arena: %s", cvx_error_message());
    cvx_ctx ctx = cuda_ctx(compute);
    ctx.arena = arena;
    job.out = &got;
    size_t measured = 0;
    const cvx_status st = cvx_ctx_run(&ctx, vae_job_run, &job, &measured);
    if (CVX_EXPECT(st == CVX_OK && cst == CVX_OK, "%s on CUDA: %s", what, cvx_error_message()) &&
        CVX_EXPECT(same_shape(&got, &ref) && got.device == CVX_DEVICE_CPU, "%s: output shape", what)) {
        expect_rel(what, got.data, ref.data, cvx_tensor_numel(&ref), tol);
        CVX_EXPECT(cvx_arena_peak(arena) == measured, "%s: arena peak %zu, measured %zu", what, cvx_arena_peak(arena),
                   measured);
    }
    cvx_arena_destroy(arena);
    for (int g = 0; g < cvx_vae_weights(vae)->num_groups; g++) cvx_mem_free(dev[g]), dev[g] = NULL;
    vae_weights_to(vae, NULL);
    cvx_tensor_release(&got);
    cvx_tensor_release(&ref);
}

static void test_vae(void) {
    const int64_t base = dev_live(), host_base = live_bytes();
    const cvx_dtype runs[] = {CVX_F32, CVX_BF16};
    for (int r = 0; r < 2; r++) {
        cvx_st_file *st = NULL;
        if (!CVX_EXPECT(cvx_st_open(CVX_FIXTURES "/vae/tiny/diffusion_pytorch_model.safetensors", &st) == CVX_OK,
                        "tiny VAE weights: %s", cvx_error_message()))
            return;
        cvx_vae *vae = NULL;
        const cvx_status created = cvx_vae_create(&TINY_VAE, st, runs[r], &vae);
        cvx_st_close(st);
        if (!CVX_EXPECT(created == CVX_OK, "tiny VAE: %s", cvx_error_message())) return;
        void *dev[64] = {0};
        CVX_EXPECT(cvx_vae_weights(vae)->num_groups <= 64, "weight groups");
        const double tol = runs[r] == CVX_F32 ? 1e-5 : 2e-2;
        char what[120];
        cvx_tensor z, z1, x;
        CVX_EXPECT(cvx_tensor_alloc5(&z, 2, 4, 3, 3, 5) == CVX_OK && cvx_tensor_alloc5(&x, 1, 3, 9, 16, 24) == CVX_OK,
                   "alloc");
        fill(z.data, cvx_tensor_numel(&z), 1.0f, 0.0f);
        fill(x.data, cvx_tensor_numel(&x), 1.0f, 0.0f);
        z1 = z, z1.shape[0] = 1; /* a view of the first item */
        snprintf(what, sizeof(what), "VAE decode [2, 4, 3, 3, 5], %s", cvx_dtype_name(runs[r]));
        vae_compare(what, vae, dev, runs[r], &z, 1, NULL, tol);
        if (runs[r] == CVX_F32) {
            const cvx_vae_tiling tiling = {1, 16, 24, 0.5, 0.5}; /* 2x3 latent tiles, stride 1: 15 tiles blended */
            vae_compare("VAE tiled decode [1, 4, 3, 3, 5], float32", vae, dev, runs[r], &z1, 1, &tiling, tol);
        }
        snprintf(what, sizeof(what), "VAE encode [1, 3, 9, 16, 24], %s", cvx_dtype_name(runs[r]));
        vae_compare(what, vae, dev, runs[r], &x, 0, NULL, tol);
        cvx_tensor_release(&z);
        cvx_tensor_release(&x);
        cvx_vae_free(vae);
    }
    expect_dev_no_leak("VAE", base);
    expect_no_leak("VAE (host)", host_base);
}

int main(void) {
    if (!cuda_test_begin()) return 0;
    cvx_ops_init();
    const int64_t start = dev_live(), host_start = live_bytes();
    test_conv3d();
    test_conv3d_errors();
    test_group_norm();
    test_group_norm_errors();
    test_add_pool_slice();
    test_boxes();
    test_blend();
    test_measuring();
    test_vae();
    expect_dev_no_leak("all tests", start);
    expect_no_leak("all tests (host)", host_start);
    return cvx_test_report();
}

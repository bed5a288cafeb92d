/* conv3d on CUDA: chunked im2col + cvx_cuda_gemm over a column buffer of bounded size.
 *
 * The output [B, Co, T_out, Ho, Wo] is, for one batch item, the matrix [Co, P] with P = T_out Ho Wo output positions
 * (row stride P): out[b] = W [Co, K] x col [K, P], K = Ci kt kh kw, bias added per row. The columns are built in
 * chunks of n consecutive positions (possibly spanning several output frames), so the buffer [K, n] stays under
 * CVX_CUDA_CONV_COL_BYTES whatever the frame size; when a whole item's columns fit, several batch items share one
 * strided-batched GEMM. The im2col kernel reads the frames straight from the caller's frame list (passed by value
 * in its parameters, at most CVX_CUDA_CONV_FRAMES frames per launch: a chunk never spans more), with the nearest x2
 * upsampling and the asymmetric zero padding applied while gathering, so neither costs a copy of the input.
 *
 * Compute dtype (ctx->compute): F32 runs a full f32 GEMM (no TF32), the parity path; F16 / BF16 build the columns
 * in that type and run a tensor-core GEMM with f32 accumulation and f32 output. Weights not already in the GEMM's
 * type are converted into the scratch first. A 1x1x1 convolution in f32 over contiguous frames needs no columns at
 * all: the frames themselves are the GEMM's B operand.
 *
 * Scratch (one allocation from the ctx): the converted weights (Co K elements, when needed) + the column buffer
 * (at most CVX_CUDA_CONV_COL_BYTES, or one column of K elements when a single one is larger). */
extern "C" {
#include "../ops.h"
}
#include "common.cuh"

#include <string.h>

#define CVX_CUDA_CONV_COL_BYTES ((int64_t)64 << 20) /* im2col buffer bound */
#define CVX_CUDA_CONV_FRAMES 64                     /* input frames one im2col launch can read */
#define CONV_THREADS 256
#define CONV_K_PER_THREAD 16 /* column rows each im2col thread fills (the k decomposition amortised over them) */

/* The column buffer's bound; tests lower it to exercise the chunking on small sizes. */
static int64_t col_bytes_limit = CVX_CUDA_CONV_COL_BYTES;

/* Test hook: the column buffer's bound in bytes (<= 0: the default, CVX_CUDA_CONV_COL_BYTES). */
extern "C" void cvx_cuda_conv_set_col_bytes(int64_t bytes) {
    col_bytes_limit = bytes > 0 ? bytes : CVX_CUDA_CONV_COL_BYTES;
}

namespace {

/* The frames one im2col launch reads, by value in its parameters (no upload, no host lifetime to respect). */
struct conv_frames {
    const float *ptr[CVX_CUDA_CONV_FRAMES];
    int64_t cstride[CVX_CUDA_CONV_FRAMES], bstride[CVX_CUDA_CONV_FRAMES];
};

/* The sizes one im2col launch needs. */
struct conv_shape {
    int64_t H, W, Ho, Wo, P, K, n; /* input frame, output frame, positions per item, column rows, chunk width */
    int64_t p0, t_lo;              /* the chunk's first position, the first output frame it touches */
    int ci, kt, kh, kw, up, stride_h, stride_w, pad_top, pad_left;
};

/* col[bi][k][j] (bi < gridDim.z batch items from b0, k < K, j < n) = the input value under kernel tap k of output
 * position p0 + j, or 0 in the padding. Each thread owns one column j and CONV_K_PER_THREAD consecutive rows k, so
 * the position is decoded once and the tap (ci, dt, dy, dx) advances incrementally; consecutive threads write and
 * (for stride 1) read consecutive addresses. */
template <typename T>
__global__ void __launch_bounds__(CONV_THREADS)
    im2col_kernel(const conv_frames fr, const conv_shape s, int64_t b0, T *__restrict__ col) {
    const int64_t j = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= s.n) return;
    const int64_t bi = blockIdx.z, b = b0 + bi;
    const int64_t p = s.p0 + j, HoWo = s.Ho * s.Wo;
    const int64_t t = p / HoWo, r = p - t * HoWo, oy = r / s.Wo, ox = r - oy * s.Wo;
    const int64_t Hv = s.H * s.up, Wv = s.W * s.up;
    const int64_t iy0 = oy * s.stride_h - s.pad_top, ix0 = ox * s.stride_w - s.pad_left;
    const int shift = s.up == 2 ? 1 : 0;
    T *out = col + bi * s.K * s.n + j;
    for (int64_t k0 = (int64_t)blockIdx.y * CONV_K_PER_THREAD; k0 < s.K; k0 += (int64_t)gridDim.y * CONV_K_PER_THREAD) {
        int64_t q = k0;
        int dx = (int)(q % s.kw);
        q /= s.kw;
        int dy = (int)(q % s.kh);
        q /= s.kh;
        int dt = (int)(q % s.kt);
        int ci = (int)(q / s.kt);
        const int64_t k1 = k0 + CONV_K_PER_THREAD < s.K ? k0 + CONV_K_PER_THREAD : s.K;
        for (int64_t k = k0; k < k1; k++) {
            const int64_t iy = iy0 + dy, ix = ix0 + dx;
            float v = 0.0f;
            if (iy >= 0 && iy < Hv && ix >= 0 && ix < Wv) {
                const int f = (int)(t - s.t_lo) + dt;
                v = fr.ptr[f][b * fr.bstride[f] + ci * fr.cstride[f] + (iy >> shift) * s.W + (ix >> shift)];
            }
            out[k * s.n] = cvx_from_f32<T>(v);
            if (++dx == s.kw) {
                dx = 0;
                if (++dy == s.kh) {
                    dy = 0;
                    if (++dt == s.kt) dt = 0, ci++;
                }
            }
        }
    }
}

/* out[plane][i] = bias[plane % co] over planes of P values: the GEMMs then accumulate onto it (beta 1). */
__global__ void bias_fill_kernel(float *__restrict__ out, const float *__restrict__ bias, int64_t planes, int co,
                                 int64_t P) {
    for (int64_t pl = blockIdx.y; pl < planes; pl += gridDim.y) {
        const float v = bias[pl % co];
        float *o = out + pl * P;
        for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < P; i += (int64_t)gridDim.x * blockDim.x)
            o[i] = v;
    }
}

/* out[b, c, i0 + i] = frame i of the table, for i < m, planes = B C m of HW values (one grid row each). */
__global__ void gather_frames_kernel(const conv_frames fr, int m, int64_t i0, int64_t count, int64_t C, int64_t planes,
                                     int64_t HW, float *__restrict__ out) {
    for (int64_t pl = blockIdx.y; pl < planes; pl += gridDim.y) {
        const int64_t i = pl % m, bc = pl / m, c = bc % C, b = bc / C;
        const float *src = fr.ptr[i] + b * fr.bstride[i] + c * fr.cstride[i];
        float *dst = out + (bc * count + i0 + i) * HW;
        for (int64_t k = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; k < HW; k += (int64_t)gridDim.x * blockDim.x)
            dst[k] = src[k];
    }
}

/* How a convolution is split: the chunk width, the batch items per GEMM, the scratch parts. */
struct conv_split {
    cvx_dtype ab;   /* the GEMM's operand type */
    int direct;     /* 1x1x1 in f32: the frames are the B operand, no columns */
    int64_t n, nb;  /* positions per chunk, batch items per GEMM (> 1 only when a chunk is a whole item) */
    size_t w_bytes; /* converted weights (0: the GEMM reads wt->w) */
    size_t col_bytes;
};

int64_t round_up(int64_t v, int64_t m) { return (v + m - 1) / m * m; }

conv_split split_of(const cvx_ctx *ctx, int64_t batch, const cvx_conv_weight *wt, const cvx_conv_geom *g,
                    const cvx_conv_plan *plan) {
    conv_split sp;
    memset(&sp, 0, sizeof(sp));
    sp.ab = ctx->compute == CVX_F16 || ctx->compute == CVX_BF16 ? ctx->compute : CVX_F32;
    const int64_t esize = (int64_t)cvx_dtype_size(sp.ab);
    const int64_t To = plan->out_shape[2], HoWo = plan->out_shape[3] * plan->out_shape[4], P = To * HoWo;
    const int64_t K = (int64_t)wt->ci * wt->kt * wt->kh * wt->kw;
    if (wt->dtype != sp.ab) sp.w_bytes = (size_t)round_up((int64_t)wt->co * K * esize, 256);
    sp.direct = sp.ab == CVX_F32 && wt->kt == 1 && wt->kh == 1 && wt->kw == 1 && g->up == 1 && g->stride_h == 1 &&
                g->stride_w == 1 && !g->pad_top && !g->pad_bottom && !g->pad_left && !g->pad_right;
    if (sp.direct) return sp;
    /* a chunk never spans more output frames than one launch's frame table covers */
    const int64_t window = (int64_t)(CVX_CUDA_CONV_FRAMES - wt->kt + 1) * HoWo;
    int64_t n = col_bytes_limit / (K > 0 ? K * esize : 1);
    if (n < 1) n = 1;
    if (n >= P && To <= CVX_CUDA_CONV_FRAMES - wt->kt + 1) {
        sp.n = P;
        sp.nb = n / P;
        if (sp.nb > batch) sp.nb = batch;
        if (sp.nb > 65535) sp.nb = 65535; /* gridDim.z of the im2col launch */
    } else {
        if (n > window) n = window;
        if (n > P) n = P;
        if (n > 64) n = n / 64 * 64; /* chunk boundaries on 64-element (256-byte) column offsets */
        sp.n = n;
        sp.nb = 1;
    }
    sp.col_bytes = (size_t)(sp.nb * K * sp.n * esize);
    return sp;
}

/* The 1x1x1 f32 convolution without columns: one batched GEMM per run of frames that lie one after another in
 * memory with the same strides (a tensor's frames: one GEMM for all of them). */
cvx_status conv_direct(const cvx_frame *frames, int num_frames, int64_t batch, int64_t HW, const cvx_conv_weight *wt,
                       const void *w, float *out, int64_t P, float beta) {
    int t0 = 0;
    while (t0 < num_frames) {
        int t1 = t0 + 1;
        while (t1 < num_frames && frames[t1].ptr == frames[t1 - 1].ptr + HW &&
               frames[t1].cstride == frames[t0].cstride && frames[t1].bstride == frames[t0].bstride &&
               (int64_t)(t1 + 1 - t0) * HW <= frames[t0].cstride)
            t1++;
        cvx_gemm gm;
        memset(&gm, 0, sizeof(gm));
        gm.M = wt->co, gm.N = (int64_t)(t1 - t0) * HW, gm.K = wt->ci;
        gm.A = w, gm.lda = wt->ci, gm.stride_a = 0;
        gm.B = frames[t0].ptr, gm.ldb = frames[t0].cstride, gm.stride_b = frames[t0].bstride;
        gm.ab_type = CVX_F32;
        gm.C = out + (int64_t)t0 * HW, gm.ldc = P, gm.stride_c = (int64_t)wt->co * P;
        gm.batch = batch, gm.alpha = 1.0f, gm.beta = beta;
        CVX_CHECK(cvx_cuda_gemm(&gm));
        t0 = t1;
    }
    return CVX_OK;
}

cvx_status conv_columns(const cvx_frame *frames, int64_t batch, int64_t H, int64_t W, const cvx_conv_weight *wt,
                        const cvx_conv_geom *g, const cvx_conv_plan *plan, const conv_split *sp, const void *w,
                        void *col, float *out, float beta) {
    conv_shape s;
    memset(&s, 0, sizeof(s));
    s.H = H, s.W = W, s.Ho = plan->out_shape[3], s.Wo = plan->out_shape[4];
    s.P = plan->out_shape[2] * s.Ho * s.Wo, s.K = (int64_t)wt->ci * wt->kt * wt->kh * wt->kw;
    s.ci = wt->ci, s.kt = wt->kt, s.kh = wt->kh, s.kw = wt->kw, s.up = g->up;
    s.stride_h = g->stride_h, s.stride_w = g->stride_w, s.pad_top = g->pad_top, s.pad_left = g->pad_left;
    const int64_t HoWo = s.Ho * s.Wo;
    conv_frames fr;
    memset(&fr, 0, sizeof(fr));
    for (int64_t b0 = 0; b0 < batch; b0 += sp->nb) {
        const int64_t nb = batch - b0 < sp->nb ? batch - b0 : sp->nb;
        for (int64_t p0 = 0; p0 < s.P; p0 += s.n) {
            s.p0 = p0;
            s.t_lo = p0 / HoWo;
            /* the chunk ends at n positions, the last position, or the last output frame the frame table covers */
            int64_t n = sp->n;
            if (n > s.P - p0) n = s.P - p0;
            const int64_t window_end = (s.t_lo + CVX_CUDA_CONV_FRAMES - wt->kt + 1) * HoWo;
            if (n > window_end - p0) n = window_end - p0;
            s.n = n;
            const int64_t t_hi = (p0 + n - 1) / HoWo;
            for (int64_t f = 0; f < t_hi - s.t_lo + wt->kt; f++) {
                const cvx_frame *src = &frames[s.t_lo + f];
                fr.ptr[f] = src->ptr, fr.cstride[f] = src->cstride, fr.bstride[f] = src->bstride;
            }
            int64_t ky = (s.K + CONV_K_PER_THREAD - 1) / CONV_K_PER_THREAD; /* grid rows of k (strided past 65535) */
            ky = ky < 1 ? 1 : ky > 65535 ? 65535 : ky;
            const dim3 grid((unsigned)((n + CONV_THREADS - 1) / CONV_THREADS), (unsigned)ky, (unsigned)nb);
            switch (sp->ab) {
            case CVX_F32: CVX_LAUNCH((im2col_kernel<float>), grid, CONV_THREADS, 0, fr, s, b0, (float *)col); break;
            case CVX_F16: CVX_LAUNCH((im2col_kernel<__half>), grid, CONV_THREADS, 0, fr, s, b0, (__half *)col); break;
            default:
                CVX_LAUNCH((im2col_kernel<__nv_bfloat16>), grid, CONV_THREADS, 0, fr, s, b0, (__nv_bfloat16 *)col);
                break;
            }
            CVX_CU(cudaGetLastError());
            cvx_gemm gm;
            memset(&gm, 0, sizeof(gm));
            gm.M = wt->co, gm.N = n, gm.K = s.K;
            gm.A = w, gm.lda = s.K, gm.stride_a = 0;
            gm.B = col, gm.ldb = n, gm.stride_b = s.K * n;
            gm.ab_type = sp->ab;
            gm.C = out + b0 * wt->co * s.P + p0, gm.ldc = s.P, gm.stride_c = (int64_t)wt->co * s.P;
            gm.batch = nb, gm.alpha = 1.0f, gm.beta = beta;
            CVX_CHECK(cvx_cuda_gemm(&gm));
        }
    }
    return CVX_OK;
}

} // namespace

extern "C" cvx_status cvx_cuda_conv3d(cvx_ctx *ctx, const cvx_frame *frames, int num_frames, int64_t batch,
                                      int64_t height, int64_t width, const cvx_conv_weight *wt,
                                      const cvx_conv_geom *geom, cvx_tensor *out) {
    memset(out, 0, sizeof(*out));
    cvx_conv_plan plan; /* the CPU op's checks and output shape */
    CVX_CHECK(cvx_conv3d_plan(num_frames, batch, height, width, wt, geom, &plan));
    if (wt->kt > CVX_CUDA_CONV_FRAMES)
        return CVX_FAIL(CVX_ERR_INVALID, "conv3d on cuda: a temporal kernel of %d frames (at most %d)", wt->kt,
                        CVX_CUDA_CONV_FRAMES);
    if (wt->dtype != CVX_F32 && wt->dtype != CVX_F16 && wt->dtype != CVX_BF16)
        return CVX_FAIL(CVX_ERR_INVALID, "conv3d on CUDA: weights in %s (f32, f16 or bf16)", cvx_dtype_name(wt->dtype));
    const conv_split sp = split_of(ctx, batch, wt, geom, &plan);
    CVX_CHECK(cvx_ctx_tensor(ctx, out, CVX_F32, 5, plan.out_shape));
    void *scratch = NULL;
    if (sp.w_bytes + sp.col_bytes) {
        const cvx_status st = cvx_ctx_alloc(ctx, sp.w_bytes + sp.col_bytes, &scratch);
        if (st != CVX_OK) {
            cvx_tensor_release(out);
            return st;
        }
    }
    if (ctx->measuring || cvx_tensor_numel(out) == 0) {
        cvx_ctx_free(ctx, scratch);
        return CVX_OK;
    }
    const int64_t K = (int64_t)wt->ci * wt->kt * wt->kh * wt->kw;
    const int64_t P = plan.out_shape[2] * plan.out_shape[3] * plan.out_shape[4];
    float *o = (float *)out->data;
    const void *w = wt->w;
    cvx_status st = CVX_OK;
    if (sp.w_bytes) {
        st = cvx_cuda_convert(scratch, sp.ab, wt->w, wt->dtype, (int64_t)wt->co * K);
        w = scratch;
    }
    if (st == CVX_OK && wt->bias) {
        const int64_t planes = batch * wt->co;
        const dim3 grid(cvx_cuda_blocks(P, 256) < 64 ? cvx_cuda_blocks(P, 256) : 64,
                        (unsigned)(planes < 65535 ? planes : 65535));
        CVX_LAUNCH(bias_fill_kernel, grid, 256, 0, o, wt->bias, planes, wt->co, P);
        const cudaError_t e = cudaGetLastError();
        if (e != cudaSuccess) st = cvx_cuda_fail((int)e, "bias_fill_kernel", __FILE__, __LINE__);
    }
    const float beta = wt->bias ? 1.0f : 0.0f;
    if (st == CVX_OK) {
        st = sp.direct ? conv_direct(frames, num_frames, batch, height * width, wt, w, o, P, beta)
                       : conv_columns(frames, batch, height, width, wt, geom, &plan, &sp, w,
                                      (char *)scratch + sp.w_bytes, o, beta);
    }
    cvx_ctx_free(ctx, scratch); /* stream-ordered: the launches above finish before the arena hands it out again */
    if (st != CVX_OK) cvx_tensor_release(out);
    return st;
}

/* The causal convolution's cache: copies of the last frames, in windows of the frame table's size. */
extern "C" cvx_status cvx_cuda_gather_frames(cvx_ctx *ctx, const cvx_frame *frames, int count, int64_t B, int64_t C,
                                             int64_t H, int64_t W, cvx_tensor *out) {
    CVX_CHECK(cvx_ctx_tensor5(ctx, out, B, C, count, H, W));
    if (ctx->measuring) return CVX_OK;
    const int64_t HW = H * W;
    conv_frames fr;
    memset(&fr, 0, sizeof(fr));
    for (int i0 = 0; i0 < count && B * C * HW > 0; i0 += CVX_CUDA_CONV_FRAMES) {
        const int m = count - i0 < CVX_CUDA_CONV_FRAMES ? count - i0 : CVX_CUDA_CONV_FRAMES;
        for (int i = 0; i < m; i++)
            fr.ptr[i] = frames[i0 + i].ptr, fr.cstride[i] = frames[i0 + i].cstride,
            fr.bstride[i] = frames[i0 + i].bstride;
        const int64_t planes = B * C * m, bx = (HW + 255) / 256;
        const dim3 grid((unsigned)(bx > 64 ? 64 : bx), (unsigned)(planes < 65535 ? planes : 65535));
        CVX_LAUNCH(gather_frames_kernel, grid, 256, 0, fr, m, (int64_t)i0, (int64_t)count, C, planes, HW,
                   (float *)out->data);
        const cudaError_t e = cudaGetLastError();
        if (e != cudaSuccess) {
            cvx_tensor_release(out);
            return cvx_cuda_fail((int)e, "gather_frames_kernel", __FILE__, __LINE__);
        }
    }
    return CVX_OK;
}

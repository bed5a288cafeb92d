/* The VAE's ops on CUDA other than the convolution: group norm (with the spatial norm's modulation and SiLU fused),
 * x += y, the time pooling, frame slices, box copies (device to device, device to host) and the tile blending.
 * Activations are [B, C, T, H, W] f32; the meaning, checks and messages are the CPU ops' (ops/cpu/norm.c,
 * tensor_ops.c). Where a CPU op trusts its caller with a box or a pair of tiles, the CUDA op checks them: an
 * out-of-bounds access on the GPU would end the process's CUDA context, not just this call.
 *
 * Products and sums that the CPU ops round one by one (compiled with -ffp-contract=off) are written with the
 * round-to-nearest intrinsics here, so nvcc cannot fuse them into FMAs and the results stay the CPU's bits. */
extern "C" {
#include "../ops.h"
}
#include "common.cuh"

#include <math.h>
#include <string.h>

#define GN_THREADS 256
#define GN_PART_ELEMS 8192 /* elements a statistics block aims at */
#define GN_MAX_PARTS 256   /* statistics blocks per (batch, group): bounds the scratch */
#define GN_INNER 32        /* values a thread sums in f32 before adding them in double */
#define ROW_THREADS 256

namespace {

#ifdef CVX_CUDA_EMU
/* the emulation is plain C++ compiled without contraction: each operation already rounds */
__device__ __forceinline__ float mul_rn(float a, float b) { return a * b; }
__device__ __forceinline__ float add_rn(float a, float b) { return a + b; }
__device__ __forceinline__ float sub_rn(float a, float b) { return a - b; }
#else
__device__ __forceinline__ float mul_rn(float a, float b) { return __fmul_rn(a, b); }
__device__ __forceinline__ float add_rn(float a, float b) { return __fadd_rn(a, b); }
__device__ __forceinline__ float sub_rn(float a, float b) { return __fsub_rn(a, b); }
#endif

/* A grid for `rows` independent rows of `cols` elements: blockIdx.y walks the rows, x the columns (both strided). */
dim3 rows_grid(int64_t rows, int64_t cols) {
    const int64_t bx = (cols + ROW_THREADS - 1) / ROW_THREADS;
    return dim3((unsigned)(bx < 1 ? 1 : bx > 64 ? 64 : bx), (unsigned)(rows < 1 ? 1 : rows > 65535 ? 65535 : rows));
}

/* ---- group norm ------------------------------------------------------------------------------------------------
 * Pass 1 (stats): each (batch, group) is one contiguous run of n = C/groups T H W values; `parts` blocks each reduce
 * a span of it. A block shifts its values by the span's first value K (so that the sums below do not cancel when
 * the mean is large against the spread), sums d = x - K and d^2 in f32 over at most GN_INNER values per thread, adds
 * those in double, reduces the threads in double through shared memory, and writes its (count, mean, M2) partial in
 * double. Pass 2 (finalize): one block per (batch, group) merges the partials (Chan's formula, double) and gives mean
 * and rstd = 1 / sqrt(M2 / n + eps) rounded to f32 as the CPU op does (which accumulates in double). Pass
 * 3 (apply): y = x * scale + shift (scale = rstd gamma, shift = beta - mean scale), [* y_mod + b_mod], [SiLU]. Each
 * element is read twice (passes 1 and 3). */

/* Chan et al.'s merge of the partial (n, mean, M2) with (nb, mb, m2b). */
__device__ __forceinline__ void welford_merge(double &n, double &mean, double &m2, double nb, double mb, double m2b) {
    if (nb == 0.0) return;
    const double nt = n + nb, delta = mb - mean, f = nb / nt;
    mean += delta * f;
    m2 += m2b + delta * delta * n * f;
    n = nt;
}

__global__ void __launch_bounds__(GN_THREADS)
    gn_stats_kernel(const float *__restrict__ x, int64_t groups_total, int64_t n, int parts, int64_t span,
                    double *__restrict__ partial) {
    __shared__ double s1[GN_THREADS], s2[GN_THREADS];
    const int tid = threadIdx.x;
    for (int64_t bg = blockIdx.y; bg < groups_total; bg += gridDim.y) {
        const float *src = x + bg * n;
        const int64_t lo = (int64_t)blockIdx.x * span, hi = lo + span < n ? lo + span : n;
        const float K = lo < hi ? src[lo] : 0.0f;
        double d1 = 0.0, d2 = 0.0;
        int64_t i = lo + tid;
        while (i < hi) {
            float a1 = 0.0f, a2 = 0.0f;
            for (int k = 0; k < GN_INNER && i < hi; k++, i += blockDim.x) {
                const float d = src[i] - K;
                a1 += d;
                a2 += d * d;
            }
            d1 += a1;
            d2 += a2;
        }
        s1[tid] = d1, s2[tid] = d2;
        __syncthreads();
        for (int half = blockDim.x / 2; half > 0; half >>= 1) {
            if (tid < half) s1[tid] += s1[tid + half], s2[tid] += s2[tid + half];
            __syncthreads();
        }
        if (tid == 0) {
            const double cnt = hi > lo ? (double)(hi - lo) : 0.0;
            double *out = partial + (bg * parts + blockIdx.x) * 3;
            const double m2 = cnt > 0.0 ? s2[0] - s1[0] * s1[0] / cnt : 0.0;
            out[0] = cnt;
            out[1] = cnt > 0.0 ? (double)K + s1[0] / cnt : 0.0;
            out[2] = m2 > 0.0 ? m2 : 0.0; /* rounding can take a constant span's M2 just below 0 */
        }
        __syncthreads();
    }
}

__global__ void __launch_bounds__(GN_THREADS)
    gn_finalize_kernel(const double *__restrict__ partial, int64_t groups_total, int parts, float eps,
                       float *__restrict__ stats) {
    __shared__ double sn[GN_THREADS], smean[GN_THREADS], sm2[GN_THREADS];
    const int tid = threadIdx.x;
    for (int64_t bg = blockIdx.x; bg < groups_total; bg += gridDim.x) {
        double cnt = 0.0, mean = 0.0, m2 = 0.0;
        for (int p = tid; p < parts; p += blockDim.x) {
            const double *q = partial + (bg * parts + p) * 3;
            welford_merge(cnt, mean, m2, q[0], q[1], q[2]);
        }
        sn[tid] = cnt, smean[tid] = mean, sm2[tid] = m2;
        __syncthreads();
        for (int half = blockDim.x / 2; half > 0; half >>= 1) {
            if (tid < half) {
                welford_merge(sn[tid], smean[tid], sm2[tid], sn[tid + half], smean[tid + half], sm2[tid + half]);
            }
            __syncthreads();
        }
        if (tid == 0) {
            stats[2 * bg] = (float)smean[0];
            stats[2 * bg + 1] = (float)(1.0 / sqrt(sm2[0] / sn[0] + (double)eps));
        }
        __syncthreads();
    }
}

/* cvx_nearest_src (ops/cpu/norm.c), the same operations in the same order. */
__device__ __forceinline__ int64_t nearest_src(int64_t dst, int64_t in_size, int64_t out_size) {
    if (in_size == out_size) return dst;
    if (out_size == 2 * in_size) return dst >> 1;
    const float scale = (float)in_size / (float)out_size;
    const int64_t s = (int64_t)floorf(mul_rn((float)dst, scale));
    return s < in_size - 1 ? s : in_size - 1;
}

/* The spatial norm's source frame (the first frame of an odd count > 1 resampled on its own). */
__device__ __forceinline__ int64_t src_frame(int64_t t, int64_t tz, int64_t tf) {
    if (tf > 1 && tf % 2 == 1) return t == 0 ? 0 : 1 + nearest_src(t - 1, tz - 1, tf - 1);
    return nearest_src(t, tz, tf);
}

struct gn_apply_args {
    const float *x;
    float *out;
    const float *stats, *gamma, *beta;
    const float *my, *mb; /* the modulation, NULL for plain group norm */
    int64_t planes, C, cpg, T, H, W, Tz, Hz, Wz;
    int silu;
};

__global__ void __launch_bounds__(ROW_THREADS) gn_apply_kernel(const gn_apply_args a) {
    const int64_t HW = a.H * a.W, THW = a.T * HW, Z = a.Tz * a.Hz * a.Wz;
    for (int64_t pl = blockIdx.y; pl < a.planes; pl += gridDim.y) {
        const int64_t c = pl % a.C, bg = pl / a.cpg; /* pl = b C + c and C = groups cpg: bg = b groups + c / cpg */
        const float scale = mul_rn(a.stats[2 * bg + 1], a.gamma[c]);
        const float shift = sub_rn(a.beta[c], mul_rn(a.stats[2 * bg], scale));
        const float *xs = a.x + pl * THW;
        float *os = a.out + pl * THW;
        const float *yc = a.my ? a.my + pl * Z : NULL, *bc = a.mb ? a.mb + pl * Z : NULL;
        for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < THW;
             i += (int64_t)gridDim.x * blockDim.x) {
            float v = add_rn(mul_rn(xs[i], scale), shift);
            if (yc) {
                const int64_t t = i / HW, r = i - t * HW, y = r / a.W, xx = r - y * a.W;
                const int64_t z =
                    (src_frame(t, a.Tz, a.T) * a.Hz + nearest_src(y, a.Hz, a.H)) * a.Wz + nearest_src(xx, a.Wz, a.W);
                v = add_rn(mul_rn(v, yc[z]), bc[z]);
            }
            if (a.silu) v = v / add_rn(1.0f, expf(-v));
            os[i] = v;
        }
    }
}

/* ---- element-wise and data movement --------------------------------------------------------------------------- */

/* out plane (b, c) [To, HW] from x plane [T, HW]: an odd first frame copied, then the pairs averaged. */
__global__ void avg_pool_time_kernel(const float *__restrict__ x, float *__restrict__ out, int64_t planes, int64_t T,
                                     int64_t To, int64_t HW) {
    const int64_t keep_first = T % 2;
    for (int64_t row = blockIdx.y; row < planes * To; row += gridDim.y) {
        const int64_t pl = row / To, t = row - pl * To;
        float *d = out + row * HW;
        const float *a = x + pl * T * HW + (t < keep_first ? 0 : keep_first + 2 * (t - keep_first)) * HW;
        for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < HW; i += (int64_t)gridDim.x * blockDim.x)
            d[i] = t < keep_first ? a[i] : add_rn(a[i], a[HW + i]) / 2.0f;
    }
}

/* The box n = (batch, frames, rows, columns), all C channels, of src at s to dst at d: one grid row per box row. */
struct box_args {
    const float *src;
    float *dst;
    int64_t C, sT, sH, sW, dT, dH, dW;
    int64_t s[4], d[4], n[4];
};

__global__ void __launch_bounds__(ROW_THREADS) copy_box_kernel(const box_args a) {
    const int64_t rows = a.n[0] * a.C * a.n[1] * a.n[2];
    for (int64_t r = blockIdx.y; r < rows; r += gridDim.y) {
        int64_t q = r;
        const int64_t y = q % a.n[2];
        q /= a.n[2];
        const int64_t t = q % a.n[1];
        q /= a.n[1];
        const int64_t c = q % a.C, b = q / a.C;
        const float *from =
            a.src + ((((a.s[0] + b) * a.C + c) * a.sT + a.s[1] + t) * a.sH + a.s[2] + y) * a.sW + a.s[3];
        float *to = a.dst + ((((a.d[0] + b) * a.C + c) * a.dT + a.d[1] + t) * a.dH + a.d[2] + y) * a.dW + a.d[3];
        for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < a.n[3];
             i += (int64_t)gridDim.x * blockDim.x)
            to[i] = from[i];
    }
}

/* blend_rows: row y < e of every plane of b = a's row (Ha - e + y) * (1 - y/e) + b's row * (y/e). */
__global__ void __launch_bounds__(ROW_THREADS)
    blend_rows_kernel(const float *__restrict__ a, float *__restrict__ b, int64_t planes, int64_t Ha, int64_t Hb,
                      int64_t W, int64_t e) {
    for (int64_t r = blockIdx.y; r < planes * e; r += gridDim.y) {
        const int64_t p = r / e, y = r - p * e;
        const float wa = (float)(1.0 - (double)y / (double)e), wb = (float)((double)y / (double)e);
        const float *ar = a + (p * Ha + Ha - e + y) * W;
        float *br = b + (p * Hb + y) * W;
        for (int64_t x = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; x < W; x += (int64_t)gridDim.x * blockDim.x)
            br[x] = add_rn(mul_rn(ar[x], wa), mul_rn(br[x], wb));
    }
}

/* blend_cols: column x < e of every row of b = a's column (Wa - e + x) * (1 - x/e) + b's column * (x/e). */
__global__ void __launch_bounds__(ROW_THREADS) blend_cols_kernel(const float *__restrict__ a, float *__restrict__ b,
                                                                 int64_t rows, int64_t Wa, int64_t Wb, int64_t e) {
    for (int64_t r = blockIdx.y; r < rows; r += gridDim.y) {
        const float *ar = a + r * Wa + Wa - e;
        float *br = b + r * Wb;
        for (int64_t x = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; x < e; x += (int64_t)gridDim.x * blockDim.x) {
            const float wa = (float)(1.0 - (double)x / (double)e), wb = (float)((double)x / (double)e);
            br[x] = add_rn(mul_rn(ar[x], wa), mul_rn(br[x], wb));
        }
    }
}

/* A box must lie inside both tensors (5-D, the same channels): checked here, trusted by the CPU op. */
cvx_status check_box(const char *op, const cvx_tensor *dst, const int64_t d[4], const cvx_tensor *src,
                     const int64_t s[4], const int64_t n[4]) {
    static const int dims[4] = {0, 2, 3, 4}; /* box axes: batch, frames, rows, columns */
    if (dst->ndim != 5 || src->ndim != 5 || dst->shape[1] != src->shape[1])
        return CVX_FAIL(CVX_ERR_INVALID, "%s: both tensors must be [B, C, T, H, W] with the same C", op);
    for (int k = 0; k < 4; k++) {
        const int64_t ds = dst->shape[dims[k]], ss = src->shape[dims[k]];
        if (n[k] < 0 || s[k] < 0 || d[k] < 0 || s[k] + n[k] > ss || d[k] + n[k] > ds)
            return CVX_FAIL(CVX_ERR_INVALID,
                            "%s: a box of %lld at %lld (source) / %lld (destination) along axis %d does not fit "
                            "sizes %lld / %lld",
                            op, (long long)n[k], (long long)s[k], (long long)d[k], dims[k], (long long)ss,
                            (long long)ds);
    }
    return CVX_OK;
}

cvx_status launch_box(cvx_tensor *dst, const int64_t d[4], const cvx_tensor *src, const int64_t s[4],
                      const int64_t n[4]) {
    box_args a;
    memset(&a, 0, sizeof(a));
    a.src = (const float *)src->data, a.dst = (float *)dst->data, a.C = src->shape[1];
    a.sT = src->shape[2], a.sH = src->shape[3], a.sW = src->shape[4];
    a.dT = dst->shape[2], a.dH = dst->shape[3], a.dW = dst->shape[4];
    memcpy(a.s, s, sizeof(a.s)), memcpy(a.d, d, sizeof(a.d)), memcpy(a.n, n, sizeof(a.n));
    const int64_t rows = n[0] * a.C * n[1] * n[2];
    if (rows <= 0 || n[3] <= 0) return CVX_OK;
    CVX_LAUNCH(copy_box_kernel, rows_grid(rows, n[3]), ROW_THREADS, 0, a);
    CVX_CU(cudaGetLastError());
    return CVX_OK;
}

/* The three group norm passes over BG (batch, group) runs of n values. */
cvx_status gn_launch(const gn_apply_args *a, int64_t BG, int64_t n, int64_t parts, int64_t span, float eps,
                     double *partial, float *stats) {
    const unsigned gy = (unsigned)(BG < 65535 ? BG : 65535);
    CVX_LAUNCH(gn_stats_kernel, dim3((unsigned)parts, gy), GN_THREADS, 0, a->x, BG, n, (int)parts, span, partial);
    CVX_CU(cudaGetLastError());
    CVX_LAUNCH(gn_finalize_kernel, gy, GN_THREADS, 0, partial, BG, (int)parts, eps, stats);
    CVX_CU(cudaGetLastError());
    CVX_LAUNCH(gn_apply_kernel, rows_grid(a->planes, a->T * a->H * a->W), ROW_THREADS, 0, *a);
    CVX_CU(cudaGetLastError());
    return CVX_OK;
}

int same_planes(const cvx_tensor *a, const cvx_tensor *b) {
    return a->ndim == 5 && b->ndim == 5 && a->shape[0] == b->shape[0] && a->shape[1] == b->shape[1] &&
           a->shape[2] == b->shape[2];
}

} // namespace

/* ---- the ops --------------------------------------------------------------------------------------------------- */

extern "C" cvx_status cvx_cuda_group_norm(cvx_ctx *ctx, const cvx_tensor *x, int groups, float eps, const float *gamma,
                                          const float *beta, const cvx_norm_modulation *mod, int apply_silu,
                                          cvx_tensor *out) {
    const int64_t B = x->shape[0], C = x->shape[1], T = x->shape[2], H = x->shape[3], W = x->shape[4];
    size_t cpu_scratch = 0; /* the CPU op's maps: this op computes them inline instead */
    CVX_CHECK(cvx_group_norm_plan(x, groups, mod, &cpu_scratch));
    const cvx_tensor *my = mod ? mod->y : NULL, *mb = mod ? mod->b : NULL;
    const int64_t cpg = C / groups, THW = T * H * W, n = cpg * THW, BG = B * groups;
    int64_t parts = (n + GN_PART_ELEMS - 1) / GN_PART_ELEMS;
    if (parts < 1) parts = 1;
    if (parts > GN_MAX_PARTS) parts = GN_MAX_PARTS;
    const int64_t span = (n + parts - 1) / parts;
    /* scratch: the partials [BG][parts][3] double, then (mean, rstd) [BG][2] f32 */
    const size_t partial_bytes = (size_t)(BG * parts * 3) * sizeof(double);
    const size_t scratch_bytes = partial_bytes + (size_t)(BG * 2) * sizeof(float);
    if (out != x) CVX_CHECK(cvx_ctx_tensor5(ctx, out, B, C, T, H, W));
    void *scratch = NULL;
    if (BG > 0) {
        const cvx_status st = cvx_ctx_alloc(ctx, scratch_bytes, &scratch);
        if (st != CVX_OK) {
            if (out != x) cvx_tensor_release(out);
            return st;
        }
    }
    if (ctx->measuring || BG == 0 || THW == 0) {
        cvx_ctx_free(ctx, scratch);
        return CVX_OK;
    }
    double *partial = (double *)scratch;
    float *stats = (float *)((char *)scratch + partial_bytes);
    gn_apply_args a;
    memset(&a, 0, sizeof(a));
    a.x = (const float *)x->data, a.out = (float *)out->data, a.stats = stats, a.gamma = gamma, a.beta = beta;
    a.my = my ? (const float *)my->data : NULL, a.mb = my ? (const float *)mb->data : NULL;
    a.planes = B * C, a.C = C, a.cpg = cpg, a.T = T, a.H = H, a.W = W, a.silu = apply_silu;
    if (my) a.Tz = my->shape[2], a.Hz = my->shape[3], a.Wz = my->shape[4];
    const cvx_status st = gn_launch(&a, BG, n, parts, span, eps, partial, stats);
    cvx_ctx_free(ctx, scratch); /* stream-ordered: the kernels above run before the arena reuses it */
    if (st != CVX_OK && out != x) cvx_tensor_release(out);
    return st;
}

extern "C" cvx_status cvx_cuda_add_inplace(cvx_ctx *ctx, cvx_tensor *x, const cvx_tensor *y) {
    const int64_t n = cvx_tensor_numel(x);
    if (n != cvx_tensor_numel(y))
        return CVX_FAIL(CVX_ERR_INVALID, "add: %lld and %lld elements", (long long)n, (long long)cvx_tensor_numel(y));
    return cvx_cuda_gated_add(ctx, (float *)x->data, NULL, (const float *)y->data, 1, n); /* x += y: no gate */
}

extern "C" cvx_status cvx_cuda_avg_pool_time(cvx_ctx *ctx, const cvx_tensor *x, cvx_tensor *out) {
    const int64_t B = x->shape[0], C = x->shape[1], T = x->shape[2], HW = x->shape[3] * x->shape[4];
    const int64_t To = cvx_avg_pool_time_frames(T);
    CVX_CHECK(cvx_ctx_tensor5(ctx, out, B, C, To, x->shape[3], x->shape[4]));
    if (ctx->measuring || B * C * To * HW == 0) return CVX_OK;
    CVX_LAUNCH(avg_pool_time_kernel, rows_grid(B * C * To, HW), ROW_THREADS, 0, (const float *)x->data,
               (float *)out->data, B * C, T, To, HW);
    const cudaError_t e = cudaGetLastError();
    if (e != cudaSuccess) {
        cvx_tensor_release(out);
        return cvx_cuda_fail((int)e, "avg_pool_time_kernel", __FILE__, __LINE__);
    }
    return CVX_OK;
}

extern "C" cvx_status cvx_cuda_slice_frames(cvx_ctx *ctx, const cvx_tensor *x, int64_t first, int64_t count,
                                            cvx_tensor *out) {
    if (first < 0 || count < 0 || first + count > x->shape[2])
        return CVX_FAIL(CVX_ERR_INVALID, "frames [%lld, %lld) are outside the %lld frames", (long long)first,
                        (long long)(first + count), (long long)x->shape[2]);
    CVX_CHECK(cvx_ctx_tensor5(ctx, out, x->shape[0], x->shape[1], count, x->shape[3], x->shape[4]));
    if (ctx->measuring) return CVX_OK;
    const int64_t d[4] = {0, 0, 0, 0}, s[4] = {0, first, 0, 0};
    const int64_t n[4] = {x->shape[0], count, x->shape[3], x->shape[4]};
    const cvx_status st = launch_box(out, d, x, s, n);
    if (st != CVX_OK) cvx_tensor_release(out);
    return st;
}

extern "C" cvx_status cvx_cuda_copy_box(cvx_ctx *ctx, cvx_tensor *dst, const int64_t d[4], const cvx_tensor *src,
                                        const int64_t s[4], const int64_t n[4]) {
    CVX_CHECK(check_box("copy_box", dst, d, src, s, n));
    if (ctx->measuring) return CVX_OK;
    return launch_box(dst, d, src, s, n);
}

/* One cudaMemcpy2DAsync per (batch, channel, frame) plane (per (batch, channel) when the box spans whole rows of
 * both, the frames then being rows of H W), on the compute stream after the ops that wrote src, then a
 * synchronisation: the host reads the bytes next. */
extern "C" cvx_status cvx_cuda_download_box(cvx_ctx *ctx, cvx_tensor *host_dst, const int64_t d[4],
                                            const cvx_tensor *src, const int64_t s[4], const int64_t n[4]) {
    if (ctx->measuring) return CVX_OK; /* the host output does not exist in a measuring pass (core/ctx.h) */
    CVX_CHECK(check_box("download_box", host_dst, d, src, s, n));
    const int64_t C = src->shape[1], sT = src->shape[2], sH = src->shape[3], sW = src->shape[4];
    const int64_t dT = host_dst->shape[2], dH = host_dst->shape[3], dW = host_dst->shape[4];
    const float *sd = (const float *)src->data;
    float *dd = (float *)host_dst->data;
    const cudaStream_t stream = CVX_STREAM();
    const size_t fs = sizeof(float);
    if (n[0] * C * n[1] * n[2] * n[3] == 0) return CVX_OK;
    const int whole_rows = n[3] == sW && n[3] == dW;
    for (int64_t b = 0; b < n[0]; b++) {
        for (int64_t c = 0; c < C; c++) {
            const float *from = sd + (((s[0] + b) * C + c) * sT + s[1]) * sH * sW + s[2] * sW + s[3];
            float *to = dd + (((d[0] + b) * C + c) * dT + d[1]) * dH * dW + d[2] * dW + d[3];
            if (whole_rows) {
                CVX_CU(cudaMemcpy2DAsync(to, (size_t)(dH * dW) * fs, from, (size_t)(sH * sW) * fs,
                                         (size_t)(n[2] * n[3]) * fs, (size_t)n[1], cudaMemcpyDeviceToHost, stream));
                continue;
            }
            for (int64_t t = 0; t < n[1]; t++)
                CVX_CU(cudaMemcpy2DAsync(to + t * dH * dW, (size_t)dW * fs, from + t * sH * sW, (size_t)sW * fs,
                                         (size_t)n[3] * fs, (size_t)n[2], cudaMemcpyDeviceToHost, stream));
        }
    }
    CVX_CU(cudaStreamSynchronize(stream));
    return cvx_cuda_device_errors(); /* a bad index an earlier kernel met surfaces at the first synchronisation */
}

extern "C" cvx_status cvx_cuda_blend_rows(cvx_ctx *ctx, const cvx_tensor *a, cvx_tensor *b, int64_t a_full_rows,
                                          int64_t extent) {
    const int64_t Ha = a->shape[3], Hb = b->shape[3], W = b->shape[4];
    int64_t e = a_full_rows < Hb ? a_full_rows : Hb;
    if (extent < e) e = extent;
    if (!same_planes(a, b) || a->shape[4] != W || (e > 0 && Ha < e))
        return CVX_FAIL(CVX_ERR_INVALID,
                        "blend_rows: tiles of different batch, channels, frames or widths, or fewer than %lld rows "
                        "of the tile above",
                        (long long)e);
    const int64_t planes = b->shape[0] * b->shape[1] * b->shape[2];
    if (ctx->measuring || e <= 0 || planes * W == 0) return CVX_OK;
    CVX_LAUNCH(blend_rows_kernel, rows_grid(planes * e, W), ROW_THREADS, 0, (const float *)a->data, (float *)b->data,
               planes, Ha, Hb, W, e);
    CVX_CU(cudaGetLastError());
    return CVX_OK;
}

extern "C" cvx_status cvx_cuda_blend_cols(cvx_ctx *ctx, const cvx_tensor *a, cvx_tensor *b, int64_t extent) {
    const int64_t Wa = a->shape[4], Wb = b->shape[4], H = b->shape[3];
    int64_t e = Wa < Wb ? Wa : Wb;
    if (extent < e) e = extent;
    if (!same_planes(a, b) || a->shape[3] != H)
        return CVX_FAIL(CVX_ERR_INVALID, "blend_cols: tiles of different batch, channels, frames or heights");
    const int64_t rows = b->shape[0] * b->shape[1] * b->shape[2] * H;
    if (ctx->measuring || e <= 0 || rows == 0) return CVX_OK;
    CVX_LAUNCH(blend_cols_kernel, rows_grid(rows, e), ROW_THREADS, 0, (const float *)a->data, (float *)b->data, rows,
               Wa, Wb, e);
    CVX_CU(cudaGetLastError());
    return CVX_OK;
}

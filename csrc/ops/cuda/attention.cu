/* Attention on CUDA: the transformer's softmax(q k^T * scale) v and T5's softmax(q k^T + bias + key_mask) v, with
 * q, k, v, out [B, S, heads * hd] f32 row-major (heads packed along the row), as the CPU twins in cpu/attention.c.
 *
 * Three kernels and a tested twin:
 *
 *   flash_tc (ctx->compute F16 / BF16): FlashAttention-2's forward on tensor cores. A block of 8 warps owns 128
 *     query rows of one (batch, head), 16 per warp; it walks the keys in tiles of 64. Q, K and V are converted from
 *     the f32 activations to the 16-bit type as they are stored to shared memory (head dims padded with zeros to the
 *     next multiple of 16, so hd = 8 works as hd = 16; keys and rows past S are zeros). Each warp keeps its Q
 *     fragments, its 16 x 64 score tile and its 16 x hd output accumulator in registers in the m16n8k16 fragment
 *     layout (common.cuh): S = Q K^T by mma, online softmax in f32 on the score fragments (row max / sum reduced
 *     over the 4 lanes that share a row), P rounded to the 16-bit type and fed straight back as the A operand of
 *     O += P V (the C layout of two n8 tiles is the A layout of one k16 step), O rescaled by exp(m_old - m_new).
 *     V is stored transposed (head dim by key) so its B fragments are single 32-bit shared loads, as K's are.
 *     Row strides are padded by 8 halves: the fragment reads are free of bank conflicts. Q is staged through the
 *     K tile 64 rows at a time. Memory: 2 tiles in shared memory (35 KiB at hd 128), nothing in global memory
 *     but q, k, v, out: linear in S. At hd 64: 128 registers a thread, 2 blocks (16 warps) per SM.
 *   flash_f32 (ctx->compute F32, the parity path): the same online softmax in full f32 on the SIMT cores. A block
 *     of 4 warps owns 32 query rows (8 per warp), key tiles of 32: lane j scores key j against the warp's 8 rows
 *     (Q broadcast from shared memory), the row max and sum are warp reductions, and for the output each lane owns
 *     the head dims lane + 32 c, taking p[r][j] from lane j by shuffle. K and then V share one shared tile.
 *   biased (T5, every compute dtype): flash_f32 with the bias row and key mask added to the f32 scores. T5 is not
 *     scaled by 1/sqrt(d) and its activations can pass f16's range, so its scores are never 16-bit; S is small
 *     (226 in CogVideoX), so SIMT f32 costs little there.
 *   tiled (the twin; also the fallback for head dims past 128): per (batch, head), blocks of R query rows:
 *     scores [R, S] = scale q k^T by cvx_cuda_gemm, a row-softmax kernel (bias and mask added first), out = P v by
 *     cvx_cuda_gemm. In F16 / BF16 the GEMM operands are 16-bit copies (k, v of the head, q of the block, P), as the
 *     flash kernel rounds them; scores stay f32. R keeps the scores (and P) under TILED_SCRATCH_BYTES.
 *
 * Choosing: cvx_cuda_attention runs flash, or tiled when CVX_CUDA_ATTENTION=tiled (read once per process;
 * "flash" or unset: flash; anything else is refused); cvx_cuda_attention_tiled / cvx_cuda_biased_attention_tiled
 * (cuda_ops.h) run the twin directly, for the tests and the benchmark.
 *
 * Expected performance (NOT measured: no GPU was available when this was written; only the emulation ran it).
 * CogVideoX-2b at 49 frames 480x720: S = 17,776, 30 heads, hd 64: 4 S^2 hd heads = 2.4 TFLOP per call and batch
 * item, about 60% of a 2b step's FLOPs. mma.sync FlashAttention-2 reaches ~300-350 TFLOP/s on an H100 at hd 64,
 * i.e. ~7-8 ms per call if the loads keep up. Limits of this design against what PyTorch's SDPA runs there
 * (FlashAttention-2, or cuDNN / FlashAttention-3-like kernels on Hopper at up to ~2x FA2):
 *   (1) the activations are f32, so K/V tiles are read at 4 bytes an element and converted on the way to shared
 *       memory: each (batch, head) re-reads its K and V once per 128 query rows, mostly from L2: ~38 GB of L2
 *       reads per call and batch item, about the math's time at H100 L2 bandwidth. A 16-bit K/V copy made once
 *       per call (linear in S) or 256 query rows per block would halve it.
 *   (2) no cp.async / TMA and no software pipelining: a tile's loads are not overlapped with the previous tile's
 *       math within a block, only across the 2 resident blocks of an SM.
 *   (3) mma.sync rather than Hopper's wgmma, and the accurate expf (a few instructions more than ex2.approx).
 * So expect this kernel at best near FA2 and likely 1.5-2.5x slower than SDPA's best Hopper kernel: the per-step
 * goal (<= 0.8x diffusers) is not expected from attention as written; the GPU benchmark must say. The f32 SIMT
 * path is a parity path: by estimate ~10x slower than flash_tc. */
#include <stdlib.h>
#include <string.h>

#include "common.cuh"

namespace {

constexpr int TC_WARPS = 8, TC_THREADS = 32 * TC_WARPS;
constexpr int TC_BM = 16 * TC_WARPS; /* 128 query rows per block: one m16 tile per warp */
constexpr int TC_BN = 64;            /* keys per tile */
constexpr int TC_MAX_HD = 128;

constexpr int F_WARPS = 4, F_THREADS = 32 * F_WARPS;
constexpr int F_ROWS = 8;              /* query rows per warp */
constexpr int F_BM = F_ROWS * F_WARPS; /* 32 query rows per block */
constexpr int F_BN = 32;               /* keys per tile: one per lane */
constexpr int F_MAX_HD = 32 * 4;       /* 4 head-dim chunks of 32 per lane */

/* The tiled twin keeps its scores (and P) under this many bytes (at least one row). */
constexpr size_t TILED_SCRATCH_BYTES = (size_t)64 << 20;

/* ---- the 16-bit types ---------------------------------------------------------------------------------------- */

template <typename T> struct half_type;
template <> struct half_type<__half> {
    static constexpr cvx_dtype dtype = CVX_F16;
    static __device__ __forceinline__ __half from(float x) { return __float2half_rn(x); }
    static __device__ __forceinline__ uint32_t bits(float x) { return (uint32_t)__half_as_ushort(__float2half_rn(x)); }
    static __device__ __forceinline__ void mma(float d[4], const uint32_t a[4], const uint32_t b[2], const float c[4]) {
        cvx_mma_m16n8k16_f16(d, a, b, c);
    }
};
template <> struct half_type<__nv_bfloat16> {
    static constexpr cvx_dtype dtype = CVX_BF16;
    static __device__ __forceinline__ __nv_bfloat16 from(float x) { return __float2bfloat16_rn(x); }
    static __device__ __forceinline__ uint32_t bits(float x) {
        return (uint32_t)__bfloat16_as_ushort(__float2bfloat16_rn(x));
    }
    static __device__ __forceinline__ void mma(float d[4], const uint32_t a[4], const uint32_t b[2], const float c[4]) {
        cvx_mma_m16n8k16_bf16(d, a, b, c);
    }
};

/* two 16-bit values in one register, the lower index in the low half (the fragment packing of common.cuh) */
template <typename T> __device__ __forceinline__ uint32_t pack2(float lo, float hi) {
    return half_type<T>::bits(lo) | (half_type<T>::bits(hi) << 16);
}

/* x[0..4) = row[d0 .. d0 + 4), zeros past hd or for a row that does not exist. vec4: row and hd allow one aligned
 * 16-byte load (hd % 4 == 0 and every row 16-byte aligned). */
__device__ __forceinline__ void load4(const float *row, int d0, int hd, bool valid, bool vec4, float x[4]) {
    if (valid && vec4 && d0 < hd) {
#ifdef CVX_CUDA_EMU
        for (int i = 0; i < 4; i++) x[i] = row[d0 + i];
#else
        const float4 f = *reinterpret_cast<const float4 *>(row + d0);
        x[0] = f.x, x[1] = f.y, x[2] = f.z, x[3] = f.w;
#endif
        return;
    }
    for (int i = 0; i < 4; i++) x[i] = valid && d0 + i < hd ? row[d0 + i] : 0.0f;
}

/* ---- flash_tc -------------------------------------------------------------------------------------------------- */

/* A [64, HDP] tile of q or k (rows row0.., `nrows` of them valid) as 16-bit pairs: dst[r * (HDP + 8) / 2 + d / 2]. */
template <typename T, int HDP>
__device__ __forceinline__ void tc_load_rows(uint32_t *dst, const float *src, int64_t ld, int64_t nrows, int hd,
                                             bool vec4) {
    constexpr int QUADS = HDP / 4, STRIDE = (HDP + 8) / 2;
    for (int u = threadIdx.x; u < TC_BN * QUADS; u += TC_THREADS) {
        const int r = u / QUADS, c = u % QUADS;
        float x[4];
        load4(src + r * ld, 4 * c, hd, r < nrows, vec4, x);
        dst[r * STRIDE + 2 * c] = pack2<T>(x[0], x[1]);
        dst[r * STRIDE + 2 * c + 1] = pack2<T>(x[2], x[3]);
    }
}

/* A [64 keys, HDP] tile of v stored transposed as 16-bit key pairs: dst[d * (64 + 8) / 2 + key / 2]. A warp covers
 * 8 key pairs x 4 dim quads, so its global reads are 64-byte row pieces and its shared stores conflict 2-way. */
template <typename T, int HDP>
__device__ __forceinline__ void tc_load_v(uint32_t *dst, const float *src, int64_t ld, int64_t nrows, int hd,
                                          bool vec4) {
    constexpr int QUADS = HDP / 4, STRIDE = (TC_BN + 8) / 2;
    for (int u = threadIdx.x; u < (TC_BN / 2) * QUADS; u += TC_THREADS) {
        const int w = u >> 5;
        const int jp = (u & 7) + 8 * (w % 4), c = ((u >> 3) & 3) + 4 * (w / 4);
        float x0[4], x1[4];
        load4(src + (2 * jp) * ld, 4 * c, hd, 2 * jp < nrows, vec4, x0);
        load4(src + (2 * jp + 1) * ld, 4 * c, hd, 2 * jp + 1 < nrows, vec4, x1);
        for (int i = 0; i < 4; i++) dst[(4 * c + i) * STRIDE + jp] = pack2<T>(x0[i], x1[i]);
    }
}

template <typename T, int HDP>
__global__ void __launch_bounds__(TC_THREADS)
    flash_tc_kernel(const float *__restrict__ q, const float *__restrict__ k, const float *__restrict__ v,
                    float *__restrict__ out, int64_t S, int heads, int hd, float scale, int64_t q_tiles, int vec4) {
    constexpr int KSTRIDE = (HDP + 8) / 2, VSTRIDE = (TC_BN + 8) / 2; /* in 32-bit words */
    constexpr int KSTEPS = HDP / 16, DTILES = HDP / 8, NTILES = TC_BN / 8;
    static_assert(TC_BM % TC_BN == 0 && TC_BN % 16 == 0, "the Q tile is staged in TC_BN-row pieces through sK");
    __shared__ uint32_t sK[TC_BN * KSTRIDE];
    __shared__ uint32_t sV[HDP * VSTRIDE];

    const int64_t bh = blockIdx.x / q_tiles, q0 = (blockIdx.x % q_tiles) * TC_BM;
    const int64_t b = bh / heads, h = bh % heads, D = (int64_t)heads * hd;
    const float *qb = q + (b * S + q0) * D + h * hd;
    const float *kb = k + b * S * D + h * hd, *vb = v + b * S * D + h * hd;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;

    /* this warp's Q fragments (block rows warp * 16 + g and + 8), staged through sK TC_BN rows at a time */
    uint32_t qf[KSTEPS][4];
    for (int piece = 0; piece < TC_BM / TC_BN; piece++) {
        if (piece) __syncthreads(); /* the previous piece has been read */
        tc_load_rows<T, HDP>(sK, qb + piece * TC_BN * D, D, S - q0 - piece * TC_BN, hd, vec4);
        __syncthreads();
        if (warp * 16 / TC_BN != piece) continue;
        const uint32_t *r0 = sK + (warp * 16 % TC_BN + g) * KSTRIDE, *r8 = r0 + 8 * KSTRIDE;
        for (int ks = 0; ks < KSTEPS; ks++) {
            qf[ks][0] = r0[ks * 8 + t], qf[ks][1] = r8[ks * 8 + t];
            qf[ks][2] = r0[ks * 8 + 4 + t], qf[ks][3] = r8[ks * 8 + 4 + t];
        }
    }

    float o[DTILES][4];
    for (int i = 0; i < DTILES; i++) o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.0f;
    float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f}; /* rows g and g + 8; l is this lane's part */

    for (int64_t k0 = 0; k0 < S; k0 += TC_BN) {
        __syncthreads(); /* the previous tile (or the Q staging) is no longer read */
        tc_load_rows<T, HDP>(sK, kb + k0 * D, D, S - k0, hd, vec4);
        tc_load_v<T, HDP>(sV, vb + k0 * D, D, S - k0, hd, vec4);
        __syncthreads();

        /* s = q k^T for the warp's 16 rows and the tile's 64 keys */
        float s[NTILES][4];
        for (int nt = 0; nt < NTILES; nt++) {
            s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.0f;
            const uint32_t *kr = sK + (nt * 8 + g) * KSTRIDE;
            for (int ks = 0; ks < KSTEPS; ks++) {
                const uint32_t bf[2] = {kr[ks * 8 + t], kr[ks * 8 + 4 + t]};
                half_type<T>::mma(s[nt], qf[ks], bf, s[nt]);
            }
        }

        /* online softmax in f32: element e of tile nt is row g + 8 (e / 2), key k0 + nt * 8 + 2t + e % 2 */
        float mx[2] = {m[0], m[1]};
        for (int nt = 0; nt < NTILES; nt++)
            for (int e = 0; e < 4; e++) {
                const int64_t key = k0 + nt * 8 + 2 * t + (e & 1);
                s[nt][e] = key < S ? s[nt][e] * scale : -INFINITY;
                mx[e >> 1] = fmaxf(mx[e >> 1], s[nt][e]);
            }
        float corr[2];
        for (int r = 0; r < 2; r++) {
            mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 1));
            mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 2));
            corr[r] = expf(m[r] - mx[r]); /* 0 on the first tile (m = -inf); every tile has a key < S */
            m[r] = mx[r];
            l[r] *= corr[r];
        }
        for (int nt = 0; nt < NTILES; nt++)
            for (int e = 0; e < 4; e++) {
                s[nt][e] = expf(s[nt][e] - m[e >> 1]); /* keys past S: exp(-inf) = 0 */
                l[e >> 1] += s[nt][e];
            }
        for (int i = 0; i < DTILES; i++) o[i][0] *= corr[0], o[i][1] *= corr[0], o[i][2] *= corr[1], o[i][3] *= corr[1];

        /* o += p v: keys 16 kk .. 16 kk + 15 are the A operand made of score tiles 2 kk and 2 kk + 1 */
        for (int kk = 0; kk < TC_BN / 16; kk++) {
            const uint32_t pa[4] = {pack2<T>(s[2 * kk][0], s[2 * kk][1]), pack2<T>(s[2 * kk][2], s[2 * kk][3]),
                                    pack2<T>(s[2 * kk + 1][0], s[2 * kk + 1][1]),
                                    pack2<T>(s[2 * kk + 1][2], s[2 * kk + 1][3])};
            for (int dt = 0; dt < DTILES; dt++) {
                const uint32_t *vr = sV + (dt * 8 + g) * VSTRIDE + kk * 8;
                const uint32_t bf[2] = {vr[t], vr[4 + t]};
                half_type<T>::mma(o[dt], pa, bf, o[dt]);
            }
        }
    }

    /* out = o / l for rows that exist and head dims below hd */
    for (int r = 0; r < 2; r++) {
        l[r] += __shfl_xor_sync(0xffffffffu, l[r], 1);
        l[r] += __shfl_xor_sync(0xffffffffu, l[r], 2);
    }
    for (int r = 0; r < 2; r++) {
        const int64_t row = q0 + warp * 16 + g + 8 * r;
        if (row >= S) continue;
        const float inv = 1.0f / l[r];
        float *orow = out + (b * S + row) * D + h * hd;
        for (int dt = 0; dt < DTILES; dt++) {
            const int d = dt * 8 + 2 * t;
            if (d < hd) orow[d] = o[dt][2 * r] * inv;
            if (d + 1 < hd) orow[d + 1] = o[dt][2 * r + 1] * inv;
        }
    }
}

/* ---- flash_f32 (and T5's biased attention) ---------------------------------------------------------------------- */

/* A [32, HDP] f32 tile (row stride `stride` floats), zeros past hd and past the valid rows. */
template <int HDP>
__device__ __forceinline__ void f32_load_rows(float *dst, int stride, const float *src, int64_t ld, int64_t nrows,
                                              int hd, bool vec4) {
    constexpr int QUADS = HDP / 4;
    for (int u = threadIdx.x; u < F_BN * QUADS; u += F_THREADS) {
        const int r = u / QUADS, c = u % QUADS;
        float x[4];
        load4(src + r * ld, 4 * c, hd, r < nrows, vec4, x);
        for (int i = 0; i < 4; i++) dst[r * stride + 4 * c + i] = x[i];
    }
}

/* bias [heads, S, S] (NULL: none), key_mask [B, S] additive (NULL: none); scale multiplies q k^T first. */
template <int NCH>
__global__ void __launch_bounds__(F_THREADS)
    flash_f32_kernel(const float *__restrict__ q, const float *__restrict__ k, const float *__restrict__ v,
                     float *__restrict__ out, int64_t S, int heads, int hd, float scale, const float *__restrict__ bias,
                     const float *__restrict__ key_mask, int64_t q_tiles, int vec4) {
    constexpr int HDP = 32 * NCH, KVSTRIDE = HDP + 1; /* lane j reads row j of K: the +1 spreads the banks */
    static_assert(F_BM == F_BN, "one loader for the Q and K/V tiles");
    __shared__ float sQ[F_BM * HDP];
    __shared__ float sKV[F_BN * KVSTRIDE];

    const int64_t bh = blockIdx.x / q_tiles, q0 = (blockIdx.x % q_tiles) * F_BM;
    const int64_t b = bh / heads, h = bh % heads, D = (int64_t)heads * hd;
    const float *kb = k + b * S * D + h * hd, *vb = v + b * S * D + h * hd;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;

    f32_load_rows<HDP>(sQ, HDP, q + (b * S + q0) * D + h * hd, D, S - q0, hd, vec4);

    float m[F_ROWS], l[F_ROWS], acc[F_ROWS][NCH], p[F_ROWS];
    for (int r = 0; r < F_ROWS; r++) {
        m[r] = -INFINITY, l[r] = 0.0f;
        for (int c = 0; c < NCH; c++) acc[r][c] = 0.0f;
    }
    for (int64_t k0 = 0; k0 < S; k0 += F_BN) {
        const int64_t key = k0 + lane;
        const int nk = S - k0 < F_BN ? (int)(S - k0) : F_BN;
        __syncthreads(); /* the V tile of the previous step is no longer read */
        f32_load_rows<HDP>(sKV, KVSTRIDE, kb + k0 * D, D, S - k0, hd, vec4);
        __syncthreads();
        for (int r = 0; r < F_ROWS; r++) {
            const int qr = warp * F_ROWS + r;
            const int64_t row = q0 + qr;
            const float *qrow = sQ + qr * HDP, *krow = sKV + lane * KVSTRIDE;
            float dot = 0.0f;
            for (int d = 0; d < hd; d++) dot += qrow[d] * krow[d];
            float sc = dot * scale;
            if (key >= S) {
                sc = -INFINITY;
            } else if (row < S && (bias || key_mask)) { /* as the CPU twin: scores + (bias + mask) */
                const float add =
                    (bias ? bias[(h * S + row) * S + key] : 0.0f) + (key_mask ? key_mask[b * S + key] : 0.0f);
                sc += add;
            }
            float mx = sc;
            for (int off = 16; off > 0; off >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, off));
            mx = fmaxf(mx, m[r]);
            /* every key so far masked with -inf (a caller's mask may be): exp(-inf - 0) = 0, not exp(-inf + inf) */
            const float base = mx == -INFINITY ? 0.0f : mx;
            const float corr = expf(m[r] - base); /* 0 on the first tile */
            m[r] = mx;
            p[r] = key < S ? expf(sc - base) : 0.0f;
            l[r] = l[r] * corr + p[r];
            for (int c = 0; c < NCH; c++) acc[r][c] *= corr;
        }
        __syncthreads(); /* K is no longer read */
        f32_load_rows<HDP>(sKV, KVSTRIDE, vb + k0 * D, D, S - k0, hd, vec4);
        __syncthreads();
        for (int j = 0; j < nk; j++) {
            const float *vrow = sKV + j * KVSTRIDE;
            for (int r = 0; r < F_ROWS; r++) {
                const float pj = __shfl_sync(0xffffffffu, p[r], j);
                for (int c = 0; c < NCH; c++) acc[r][c] += pj * vrow[lane + 32 * c];
            }
        }
    }
    for (int r = 0; r < F_ROWS; r++) {
        float sum = l[r];
        for (int off = 16; off > 0; off >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, off);
        const int64_t row = q0 + warp * F_ROWS + r;
        if (row >= S) continue;
        const float inv = 1.0f / sum;
        float *orow = out + (b * S + row) * D + h * hd;
        for (int c = 0; c < NCH; c++)
            if (lane + 32 * c < hd) orow[lane + 32 * c] = acc[r][c] * inv;
    }
}

/* ---- the tiled twin's kernels ------------------------------------------------------------------------------------ */

/* dst [n, ldd] in T = src rows [n, hd] (row stride ld), zeros in the columns hd .. ldd */
template <typename T>
__global__ void to_half_kernel(T *__restrict__ dst, int ldd, const float *__restrict__ src, int64_t ld, int64_t n,
                               int hd) {
    const int64_t total = n * ldd;
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < total; i += (int64_t)gridDim.x * blockDim.x)
        dst[i] = half_type<T>::from(i % ldd < hd ? src[(i / ldd) * ld + i % ldd] : 0.0f);
}

constexpr int SM_THREADS = 256;

/* block reduction over SM_THREADS threads (max or sum); every thread gets the result */
template <bool MAX> __device__ __forceinline__ float block_reduce(float x, float *red) {
    for (int off = 16; off > 0; off >>= 1) {
        const float y = __shfl_xor_sync(0xffffffffu, x, off);
        x = MAX ? fmaxf(x, y) : x + y;
    }
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    __syncthreads(); /* red may still be read by the previous reduction */
    if (lane == 0) red[warp] = x;
    __syncthreads();
    x = red[0];
    for (int w = 1; w < SM_THREADS / 32; w++) x = MAX ? fmaxf(x, red[w]) : x + red[w];
    return x;
}

/* One block per row i of sc [rows, S]: sc[i] (+ bias[i] + mask) -> softmax, in place (f32), and into p16 [rows,
 * ldp] when not NULL. bias rows are [S] with row stride S (NULL: none), mask [S] (NULL: none). */
template <typename T>
__global__ void __launch_bounds__(SM_THREADS)
    softmax_rows_kernel(float *__restrict__ sc, T *__restrict__ p16, int64_t ldp, int64_t S,
                        const float *__restrict__ bias, const float *__restrict__ mask) {
    __shared__ float red[SM_THREADS / 32];
    float *row = sc + blockIdx.x * S;
    const float *brow = bias ? bias + blockIdx.x * S : NULL;
    float mx = -INFINITY;
    for (int64_t j = threadIdx.x; j < S; j += SM_THREADS) {
        if (brow || mask) row[j] += (brow ? brow[j] : 0.0f) + (mask ? mask[j] : 0.0f);
        mx = fmaxf(mx, row[j]);
    }
    mx = block_reduce<true>(mx, red);
    float sum = 0.0f;
    for (int64_t j = threadIdx.x; j < S; j += SM_THREADS) {
        const float e = expf(row[j] - mx);
        row[j] = e;
        sum += e;
    }
    const float inv = 1.0f / block_reduce<false>(sum, red);
    for (int64_t j = threadIdx.x; j < S; j += SM_THREADS) {
        const float pj = row[j] * inv;
        row[j] = pj;
        if (p16) p16[blockIdx.x * ldp + j] = half_type<T>::from(pj);
    }
}

/* ---- host side ------------------------------------------------------------------------------------------------ */

cvx_status check_args(const char *op, const float *q, const float *k, const float *v, const float *out, int64_t B,
                      int64_t S, int heads, int hd) {
    if (!q || !k || !v || !out) return CVX_FAIL(CVX_ERR_INVALID, "%s: q, k, v and out must not be NULL", op);
    if (B < 1 || S < 1 || heads < 1 || hd < 1)
        return CVX_FAIL(CVX_ERR_INVALID, "%s: batch %lld, sequence %lld, heads %d and head dim %d must all be >= 1", op,
                        (long long)B, (long long)S, heads, hd);
    /* every element index of q, k, v, out (B S heads hd) and the flash grid (B heads S / 32 blocks) must fit */
    const int64_t lim = INT64_MAX / 4;
    if (S > lim / B || B * S > lim / heads || B * S * heads > lim / hd ||
        B * heads * ((S + F_BM - 1) / F_BM) > INT32_MAX)
        return CVX_FAIL(CVX_ERR_INVALID, "%s: batch %lld x sequence %lld x %d heads x head dim %d is too large", op,
                        (long long)B, (long long)S, heads, hd);
    return CVX_OK;
}

cvx_status check_biased(const float *bias, int64_t S, int H) {
    if (!bias) return CVX_FAIL(CVX_ERR_INVALID, "biased_attention: the position bias must not be NULL");
    if (S > INT64_MAX / 4 / S / H)
        return CVX_FAIL(CVX_ERR_INVALID, "biased_attention: a bias of %d x %lld x %lld is too large", H, (long long)S,
                        (long long)S);
    return CVX_OK;
}

/* the flash kernels read a row with one 16-byte load when every row start is 16-byte aligned */
int rows_vec4(const float *q, const float *k, const float *v, int hd) {
    const uintptr_t bits = (uintptr_t)q | (uintptr_t)k | (uintptr_t)v;
    return hd % 4 == 0 && bits % 16 == 0;
}

template <typename T, int HDP>
cvx_status launch_tc(const float *q, const float *k, const float *v, int64_t B, int64_t S, int heads, int hd,
                     float scale, float *out) {
    const int64_t q_tiles = (S + TC_BM - 1) / TC_BM;
    CVX_LAUNCH((flash_tc_kernel<T, HDP>), dim3((unsigned)(B * heads * q_tiles)), dim3(TC_THREADS), 0, q, k, v, out, S,
               heads, hd, scale, q_tiles, rows_vec4(q, k, v, hd));
    CVX_CU(cudaGetLastError());
    return CVX_OK;
}

template <typename T>
cvx_status dispatch_tc(const float *q, const float *k, const float *v, int64_t B, int64_t S, int heads, int hd,
                       float scale, float *out) {
    switch ((hd + 15) / 16) {
    case 1: return launch_tc<T, 16>(q, k, v, B, S, heads, hd, scale, out);
    case 2: return launch_tc<T, 32>(q, k, v, B, S, heads, hd, scale, out);
    case 3: return launch_tc<T, 48>(q, k, v, B, S, heads, hd, scale, out);
    case 4: return launch_tc<T, 64>(q, k, v, B, S, heads, hd, scale, out);
    case 5: return launch_tc<T, 80>(q, k, v, B, S, heads, hd, scale, out);
    case 6: return launch_tc<T, 96>(q, k, v, B, S, heads, hd, scale, out);
    case 7: return launch_tc<T, 112>(q, k, v, B, S, heads, hd, scale, out);
    case 8: return launch_tc<T, 128>(q, k, v, B, S, heads, hd, scale, out);
    default: return CVX_FAIL(CVX_ERR_INTERNAL, "attention: head dim %d has no tensor-core kernel", hd);
    }
}

template <int NCH>
cvx_status launch_f32(const float *q, const float *k, const float *v, int64_t B, int64_t S, int heads, int hd,
                      float scale, const float *bias, const float *key_mask, float *out) {
    const int64_t q_tiles = (S + F_BM - 1) / F_BM;
    CVX_LAUNCH((flash_f32_kernel<NCH>), dim3((unsigned)(B * heads * q_tiles)), dim3(F_THREADS), 0, q, k, v, out, S,
               heads, hd, scale, bias, key_mask, q_tiles, rows_vec4(q, k, v, hd));
    CVX_CU(cudaGetLastError());
    return CVX_OK;
}

cvx_status dispatch_f32(const float *q, const float *k, const float *v, int64_t B, int64_t S, int heads, int hd,
                        float scale, const float *bias, const float *key_mask, float *out) {
    switch ((hd + 31) / 32) {
    case 1: return launch_f32<1>(q, k, v, B, S, heads, hd, scale, bias, key_mask, out);
    case 2: return launch_f32<2>(q, k, v, B, S, heads, hd, scale, bias, key_mask, out);
    case 3: return launch_f32<3>(q, k, v, B, S, heads, hd, scale, bias, key_mask, out);
    case 4: return launch_f32<4>(q, k, v, B, S, heads, hd, scale, bias, key_mask, out);
    default: return CVX_FAIL(CVX_ERR_INTERNAL, "attention: head dim %d has no f32 flash kernel", hd);
    }
}

/* The tiled twin's scratch: query rows per block, and its bytes. f32: scores [R, S]. 16-bit: also P [R, ldp], q of
 * the block [R, ldh] and the head's k and v [S, ldh] in that type, their rows padded to 8 elements (16 bytes: the
 * alignment cuBLAS(Lt)'s tensor-core kernels want). */
struct tiled_plan {
    int half, ldh;
    int64_t R, ldp;
    size_t k16, v16, q16, scores, p16;
};

int64_t round8(int64_t n) { return (n + 7) / 8 * 8; }

tiled_plan plan_tiled(int64_t S, int hd, int half) {
    tiled_plan p;
    p.half = half;
    p.ldh = (int)round8(hd), p.ldp = round8(S);
    const size_t row_bytes = (size_t)S * 4 + (half ? (size_t)p.ldp * 2 + (size_t)p.ldh * 2 : 0);
    const int64_t fit = (int64_t)(TILED_SCRATCH_BYTES / row_bytes);
    p.R = fit < 1 ? 1 : fit > S ? S : fit;
    p.scores = (size_t)(p.R * S) * sizeof(float);
    p.p16 = half ? (size_t)(p.R * p.ldp) * 2 : 0;
    p.q16 = half ? (size_t)(p.R * p.ldh) * 2 : 0;
    p.k16 = p.v16 = half ? (size_t)(S * p.ldh) * 2 : 0;
    return p;
}

template <typename T>
cvx_status run_tiled(const tiled_plan &pl, const float *q, const float *k, const float *v, int64_t B, int64_t S,
                     int heads, int hd, float scale, const float *bias, const float *key_mask, float *out,
                     float *scores, void *p16v, void *q16v, void *k16v, void *v16v) {
    const int64_t D = (int64_t)heads * hd;
    T *p16 = (T *)p16v, *q16 = (T *)q16v, *k16 = (T *)k16v, *v16 = (T *)v16v;
    const cvx_dtype ab = pl.half ? half_type<T>::dtype : CVX_F32;
    for (int64_t b = 0; b < B; b++)
        for (int h = 0; h < heads; h++) {
            const float *kh = k + b * S * D + h * hd, *vh = v + b * S * D + h * hd;
            if (pl.half) {
                CVX_LAUNCH(to_half_kernel<T>, dim3(cvx_cuda_blocks(S * pl.ldh, 256)), dim3(256), 0, k16, pl.ldh, kh, D,
                           S, hd);
                CVX_CU(cudaGetLastError());
                CVX_LAUNCH(to_half_kernel<T>, dim3(cvx_cuda_blocks(S * pl.ldh, 256)), dim3(256), 0, v16, pl.ldh, vh, D,
                           S, hd);
                CVX_CU(cudaGetLastError());
            }
            for (int64_t r0 = 0; r0 < S; r0 += pl.R) {
                const int64_t n = S - r0 < pl.R ? S - r0 : pl.R;
                const float *qh = q + (b * S + r0) * D + h * hd;
                if (pl.half) {
                    CVX_LAUNCH(to_half_kernel<T>, dim3(cvx_cuda_blocks(n * pl.ldh, 256)), dim3(256), 0, q16, pl.ldh, qh,
                               D, n, hd);
                    CVX_CU(cudaGetLastError());
                }
                /* scores [n, S] = scale q k^T */
                cvx_gemm g1;
                memset(&g1, 0, sizeof g1);
                g1.trans_a = 0, g1.trans_b = 1, g1.M = n, g1.N = S, g1.K = hd;
                g1.A = pl.half ? (const void *)q16 : (const void *)qh, g1.lda = pl.half ? pl.ldh : D;
                g1.B = pl.half ? (const void *)k16 : (const void *)kh, g1.ldb = pl.half ? pl.ldh : D;
                g1.ab_type = ab, g1.C = scores, g1.ldc = S, g1.batch = 1, g1.alpha = scale, g1.beta = 0.0f;
                CVX_CHECK(cvx_cuda_gemm(&g1));
                CVX_LAUNCH(softmax_rows_kernel<T>, dim3((unsigned)n), dim3(SM_THREADS), 0, scores,
                           pl.half ? p16 : (T *)NULL, pl.ldp, S, bias ? bias + ((int64_t)h * S + r0) * S : NULL,
                           key_mask ? key_mask + b * S : NULL);
                CVX_CU(cudaGetLastError());
                /* out rows [n, hd] = p v */
                cvx_gemm g2;
                memset(&g2, 0, sizeof g2);
                g2.trans_a = 0, g2.trans_b = 0, g2.M = n, g2.N = hd, g2.K = S;
                g2.A = pl.half ? (const void *)p16 : (const void *)scores, g2.lda = pl.half ? pl.ldp : S;
                g2.B = pl.half ? (const void *)v16 : (const void *)vh, g2.ldb = pl.half ? pl.ldh : D;
                g2.ab_type = ab, g2.C = out + (b * S + r0) * D + h * hd, g2.ldc = D, g2.batch = 1, g2.alpha = 1.0f;
                g2.beta = 0.0f;
                CVX_CHECK(cvx_cuda_gemm(&g2));
            }
        }
    return CVX_OK;
}

/* The tiled twin: half 1 computes with ctx->compute's 16-bit type (F16 or BF16), 0 in f32. */
cvx_status tiled(cvx_ctx *ctx, const float *q, const float *k, const float *v, int64_t B, int64_t S, int heads, int hd,
                 float scale, const float *bias, const float *key_mask, float *out, int half) {
    const tiled_plan pl = plan_tiled(S, hd, half);
    void *bufs[5] = {NULL, NULL, NULL, NULL, NULL}; /* scores, p16, q16, k16, v16 */
    const size_t sizes[5] = {pl.scores, pl.p16, pl.q16, pl.k16, pl.v16};
    cvx_status st = CVX_OK;
    for (int i = 0; i < 5; i++)
        if (sizes[i]) CVX_TRY(cvx_ctx_alloc(ctx, sizes[i], &bufs[i]));
    if (!ctx->measuring) {
        if (half && ctx->compute == CVX_BF16)
            st = run_tiled<__nv_bfloat16>(pl, q, k, v, B, S, heads, hd, scale, bias, key_mask, out, (float *)bufs[0],
                                          bufs[1], bufs[2], bufs[3], bufs[4]);
        else
            st = run_tiled<__half>(pl, q, k, v, B, S, heads, hd, scale, bias, key_mask, out, (float *)bufs[0], bufs[1],
                                   bufs[2], bufs[3], bufs[4]);
    }
fail:
    for (int i = 4; i >= 0; i--) cvx_ctx_free(ctx, bufs[i]);
    return st;
}

int half_compute(const cvx_ctx *ctx) { return ctx->compute == CVX_F16 || ctx->compute == CVX_BF16; }

/* CVX_CUDA_ATTENTION, read once: 0 flash (unset or "flash"), 1 tiled, -1 not understood */
int attention_mode() {
    static const int mode = [] {
        const char *s = getenv("CVX_CUDA_ATTENTION");
        if (!s || !*s || !strcmp(s, "flash")) return 0;
        if (!strcmp(s, "tiled")) return 1;
        return -1;
    }();
    return mode;
}

} // namespace

extern "C" cvx_status cvx_cuda_attention_tiled(cvx_ctx *ctx, const float *q, const float *k, const float *v, int64_t B,
                                               int64_t S, int heads, int hd, float scale, float *out) {
    CVX_CHECK(check_args("attention", q, k, v, out, B, S, heads, hd));
    return tiled(ctx, q, k, v, B, S, heads, hd, scale, NULL, NULL, out, half_compute(ctx));
}

extern "C" cvx_status cvx_cuda_attention(cvx_ctx *ctx, const float *q, const float *k, const float *v, int64_t B,
                                         int64_t S, int heads, int hd, float scale, float *out) {
    CVX_CHECK(check_args("attention", q, k, v, out, B, S, heads, hd));
    const int mode = attention_mode();
    if (mode < 0)
        return CVX_FAIL(CVX_ERR_INVALID, "CVX_CUDA_ATTENTION=%s: expected flash or tiled",
                        getenv("CVX_CUDA_ATTENTION"));
    const int half = half_compute(ctx);
    if (mode == 1 || hd > (half ? TC_MAX_HD : F_MAX_HD))
        return tiled(ctx, q, k, v, B, S, heads, hd, scale, NULL, NULL, out, half);
    if (ctx->measuring) return CVX_OK; /* flash needs no scratch */
    if (ctx->compute == CVX_F16) return dispatch_tc<__half>(q, k, v, B, S, heads, hd, scale, out);
    if (ctx->compute == CVX_BF16) return dispatch_tc<__nv_bfloat16>(q, k, v, B, S, heads, hd, scale, out);
    return dispatch_f32(q, k, v, B, S, heads, hd, scale, NULL, NULL, out);
}

extern "C" cvx_status cvx_cuda_biased_attention_tiled(cvx_ctx *ctx, const float *q, const float *k, const float *v,
                                                      int64_t B, int64_t S, int H, int kd, const float *bias,
                                                      const float *key_mask, float *out) {
    CVX_CHECK(check_args("biased_attention", q, k, v, out, B, S, H, kd));
    CVX_CHECK(check_biased(bias, S, H));
    return tiled(ctx, q, k, v, B, S, H, kd, 1.0f, bias, key_mask, out, 0);
}

extern "C" cvx_status cvx_cuda_biased_attention(cvx_ctx *ctx, const float *q, const float *k, const float *v, int64_t B,
                                                int64_t S, int H, int kd, const float *bias, const float *key_mask,
                                                float *out) {
    CVX_CHECK(check_args("biased_attention", q, k, v, out, B, S, H, kd));
    CVX_CHECK(check_biased(bias, S, H));
    const int mode = attention_mode();
    if (mode < 0)
        return CVX_FAIL(CVX_ERR_INVALID, "CVX_CUDA_ATTENTION=%s: expected flash or tiled",
                        getenv("CVX_CUDA_ATTENTION"));
    if (mode == 1 || kd > F_MAX_HD) return tiled(ctx, q, k, v, B, S, H, kd, 1.0f, bias, key_mask, out, 0);
    if (ctx->measuring) return CVX_OK;
    return dispatch_f32(q, k, v, B, S, H, kd, 1.0f, bias, key_mask, out);
}

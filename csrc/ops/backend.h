/* The backend table: every op the three models run, as function pointers of one device (in the manner of ggml's
 * ggml_backend_i, but named after what the models need). Models reach memory and compute only through
 * ctx->be->..., so the same forward runs on the CPU, on the emulated accelerator, on CUDA later, and as a measuring
 * pass that does no work.
 *
 * Every entry takes the forward's context first and returns a cvx_status. Pointers are activations on ctx->device
 * unless named a weight (read-only, in a weight group the model acquired) or host. Sizes and shapes are as in
 * ops/ops.h, where the CPU reference of each entry is declared and documented. Ops allocate their outputs
 * (cvx_ctx_tensor) and at most one scratch block per call from the ctx, and free the scratch before returning.
 *
 * The tables:
 *   cpu      the CPU ops (ops/cpu): the reference every other backend is tested against.
 *   emu      the same CPU ops, but each first checks that every weight it reads is resident on the emulated device
 *            (cvx_mem_is_resident) and fails with CVX_ERR_INTERNAL naming the op and the weight otherwise: a
 *            forgotten acquire fails as loudly as it would crash a GPU.
 *   cuda     the CUDA ops (ops/cuda, cuda_ops.h), in CUDA builds; they measure themselves.
 *   measure  (cvx_backend_measure, core/ctx.h) ops that do no work and touch no byte: each validates its sizes as
 *            the CPU op does and makes exactly the CPU op's allocations (outputs kept, scratch given back), so a
 *            measuring pass over a measuring arena records the arena peak the real pass needs. */
#ifndef CVX_BACKEND_H
#define CVX_BACKEND_H

#include "../core/ctx.h"
#include "ops.h"

struct cvx_backend {
    const char *name;
    /* 1: the table's ops also serve as their own measuring pass (they allocate as they would, then return before any
     * work when ctx->measuring), so cvx_ctx_measure runs this table instead of cvx_backend_measure: the CUDA ops'
     * scratch differs from the CPU ops'. */
    int self_measuring;

    /* ---- memory ---- */
    /* dst[bytes] <- host / host[bytes] <- src / dst <- src (device to device, no overlap) */
    cvx_status (*upload)(cvx_ctx *ctx, void *dst, const void *host, size_t bytes);
    cvx_status (*download)(cvx_ctx *ctx, void *host, const void *src, size_t bytes);
    cvx_status (*copy)(cvx_ctx *ctx, void *dst, const void *src, size_t bytes);
    /* x[n] = value */
    cvx_status (*fill)(cvx_ctx *ctx, float *x, float value, int64_t n);
    /* dst[n] f32 = weight w[n] in dt (norm vectors, the learned positional table) */
    cvx_status (*widen)(cvx_ctx *ctx, float *dst, const void *w, cvx_dtype dt, int64_t n);

    /* ---- token ops: row-major [rows, width] f32 ---- */
    /* y[M, N] = x[M, K] w[N, K]^T + bias[N]; w, bias weights in wdt (bias may be NULL) */
    cvx_status (*linear)(cvx_ctx *ctx, const float *x, int64_t M, int64_t K, const void *w, cvx_dtype wdt,
                         const void *bias, int64_t N, float *y);
    /* y[rows, D] = LayerNorm(x) (gamma/beta weights [D] in wdt or NULL) [* (1 + scale[D]) + shift[D]]; y may be x */
    cvx_status (*layer_norm)(cvx_ctx *ctx, const float *x, int64_t rows, int64_t D, float eps, const void *gamma,
                             const void *beta, cvx_dtype wdt, const float *scale, const float *shift, float *y);
    /* y[rows, d] = w[d] * x * rsqrt(mean(x^2) + eps) (T5); w a weight in wdt */
    cvx_status (*rms_norm)(cvx_ctx *ctx, const float *x, int64_t rows, int64_t d, float eps, const void *w,
                           cvx_dtype wdt, float *y);
    /* x[rows, D] += gate[D] * y[rows, D] (gate NULL: plain add) */
    cvx_status (*gated_add)(cvx_ctx *ctx, float *x, const float *gate, const float *y, int64_t rows, int64_t D);
    /* x[n] *= y[n] */
    cvx_status (*mul)(cvx_ctx *ctx, float *x, const float *y, int64_t n);
    /* in place over x[n] */
    cvx_status (*silu)(cvx_ctx *ctx, float *x, int64_t n);
    cvx_status (*gelu_tanh)(cvx_ctx *ctx, float *x, int64_t n);
    cvx_status (*relu)(cvx_ctx *ctx, float *x, int64_t n);
    /* rotary embedding of x [rows, heads * hd] (row stride ld) by cos/sin [rows, hd] */
    cvx_status (*rope)(cvx_ctx *ctx, float *x, int64_t rows, int64_t ld, int heads, int hd, const float *cos_tab,
                       const float *sin_tab);
    /* out = softmax(q k^T scale) v; q, k, v, out [B, S, heads * hd] */
    cvx_status (*attention)(cvx_ctx *ctx, const float *q, const float *k, const float *v, int64_t B, int64_t S,
                            int heads, int hd, float scale, float *out);
    /* T5: out = softmax(q k^T + bias[H, S, S] + key_mask[B, S]) v; q, k, v, out [B, S, H kd]; key_mask may be NULL */
    cvx_status (*biased_attention)(cvx_ctx *ctx, const float *q, const float *k, const float *v, int64_t B, int64_t S,
                                   int H, int kd, const float *bias, const float *key_mask, float *out);
    /* out[n, d] = weight table[ids[n]] ([table_rows, d] in dt); ids int64 activations */
    cvx_status (*embedding)(cvx_ctx *ctx, const void *table, cvx_dtype dt, int64_t table_rows, const int64_t *ids,
                            int64_t n, int64_t d, float *out);
    /* T5: out[H, S, S] from the weight table [num_buckets, H] and buckets [2S - 1] int32 activations */
    cvx_status (*position_bias)(cvx_ctx *ctx, const void *table, cvx_dtype dt, int num_buckets, const int32_t *buckets,
                                int H, int64_t S, float *out);
    /* latents h [B, F, C, H, W] -> patches [B * N, C p p p_t] */
    cvx_status (*gather_patches)(cvx_ctx *ctx, const cvx_tensor *h, int p, int pt, float *out);
    /* tokens [B, Fp Hp Wp, C p p p_t] -> out [B, Fp p_t, C, Hp p, Wp p] */
    cvx_status (*unpatchify)(cvx_ctx *ctx, const float *tok, int64_t B, int64_t Fp, int64_t Hp, int64_t Wp, int64_t C,
                             int p, int pt, float *out);

    /* ---- video ops: [B, C, T, H, W] f32 tensors ---- */
    /* out (allocated) = conv of frames [num_frames x (B, Ci, H, W)] by weights wt (w, bias) */
    cvx_status (*conv3d)(cvx_ctx *ctx, const cvx_frame *frames, int num_frames, int64_t batch, int64_t height,
                         int64_t width, const cvx_conv_weight *wt, const cvx_conv_geom *geom, cvx_tensor *out);
    /* out (x, or allocated) = [SiLU](GroupNorm(x; gamma, beta weights [C] f32) [* y + b]) */
    cvx_status (*group_norm)(cvx_ctx *ctx, const cvx_tensor *x, int groups, float eps, const float *gamma,
                             const float *beta, const cvx_norm_modulation *mod, int apply_silu, cvx_tensor *out);
    /* x += y */
    cvx_status (*add_inplace)(cvx_ctx *ctx, cvx_tensor *x, const cvx_tensor *y);
    /* out (allocated) [B, C, T % 2 + T / 2, H, W] = time pairs of x averaged */
    cvx_status (*avg_pool_time)(cvx_ctx *ctx, const cvx_tensor *x, cvx_tensor *out);
    /* out (allocated) = frames [first, first + count) of x */
    cvx_status (*slice_frames)(cvx_ctx *ctx, const cvx_tensor *x, int64_t first, int64_t count, cvx_tensor *out);
    /* box n = (b, t, y, x extents) of src at s -> dst at d; download_box: dst is a host tensor */
    cvx_status (*copy_box)(cvx_ctx *ctx, cvx_tensor *dst, const int64_t d[4], const cvx_tensor *src, const int64_t s[4],
                           const int64_t n[4]);
    cvx_status (*download_box)(cvx_ctx *ctx, cvx_tensor *host_dst, const int64_t d[4], const cvx_tensor *src,
                               const int64_t s[4], const int64_t n[4]);
    /* out (allocated) [B, C, count, H, W] = the frames */
    cvx_status (*gather_frames)(cvx_ctx *ctx, const cvx_frame *frames, int count, int64_t B, int64_t C, int64_t H,
                                int64_t W, cvx_tensor *out);
    /* the VAE's tile blending, in place on b */
    cvx_status (*blend_rows)(cvx_ctx *ctx, const cvx_tensor *a, cvx_tensor *b, int64_t a_full_rows, int64_t extent);
    cvx_status (*blend_cols)(cvx_ctx *ctx, const cvx_tensor *a, cvx_tensor *b, int64_t extent);
};

extern const cvx_backend cvx_backend_cpu;
extern const cvx_backend cvx_backend_emu;
#ifdef CVX_WITH_CUDA
extern const cvx_backend cvx_backend_cuda; /* ops/cuda/table.c */
#endif
/* The table computing on `dev`: cpu, emu or cuda; NULL for a device this build has no backend for. */
const cvx_backend *cvx_backend_for(cvx_device dev);

#endif

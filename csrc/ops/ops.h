/* The CPU ops: the reference implementation of every entry of the backend table (ops/backend.h), which is how
 * the models reach them. Each takes the forward's context first and takes its outputs (cvx_ctx_tensor) and its one
 * scratch allocation (cvx_ctx_alloc, made before the parallel region) from it. Activations are f32; weights may be
 * f32, f16 or bf16 and are widened on use. Shapes use B batch, C channels, T frames, H height, W width; activations
 * are [B, C, T, H, W].
 *
 * Convolutions read their input through a list of frame references instead of a tensor, so that the causal
 * time padding (replicated first frame or the previous batch's cached frames), nearest upsampling in time
 * (repeated frames) and in space (`up` = 2) cost no copy of the input.
 *
 * Every op that allocates has a `*_scratch` (or `*_plan`) function giving the bytes it will take: the measuring
 * backend calls the same function, so the sizes a measuring pass records cannot drift from what the op uses. */
#ifndef CVX_OPS_H
#define CVX_OPS_H

#include <stddef.h>
#include <stdint.h>

#include "../core/ctx.h"
#include "../core/dtype.h"
#include "../core/status.h"
#include "../core/tensor.h"

/* Blocking of the CPU ops; they bound the per-thread scratch, which the tests check. */
#define CVX_CONV_COL_BYTES ((int64_t)4 << 20)  /* im2col buffer per thread */
#define CVX_CONV_WINO_BYTES ((int64_t)8 << 20) /* Winograd transformed inputs and products per thread */
#define CVX_LINEAR_ROWS 512                    /* rows of x per linear task */
#define CVX_LINEAR_WEIGHT_BYTES (4 << 20)      /* widened weight block per linear task */
#define CVX_ATTN_Q_TILE 128
#define CVX_ATTN_K_TILE 512

/* Call once: pins the BLAS to one thread (the ops parallelise with OpenMP around it). */
void cvx_ops_init(void);
int cvx_ops_num_threads(void);

/* Work, in element operations (a vectorised multiply-add counts 1/16), below which a parallel region costs more in
 * waking and joining the team than it saves (measured with benchmarks/bench_threads.py: a tiny pipeline ran 1.4x
 * slower on 2 threads than on one with passive waiting); such a region runs on the calling thread alone. */
#define CVX_PARALLEL_MIN_WORK ((int64_t)1 << 20)
/* The team size for a region of `work` element operations: 1 below CVX_PARALLEL_MIN_WORK, else all threads. */
int cvx_ops_threads_for(int64_t work);

/* An op's one scratch allocation: none (*out NULL) when bytes is 0, so the op and its measuring twin
 * (cvx_ops_scratch_measure: allocate and give back) make the same calls. */
cvx_status cvx_ops_scratch(cvx_ctx *ctx, size_t bytes, void **out);
cvx_status cvx_ops_scratch_measure(cvx_ctx *ctx, size_t bytes);

/* ---- data movement ------------------------------------------------------------------------------------------ */

/* dst (ctx->device) <- host / host <- src / dst <- src on the device, `bytes` bytes. */
cvx_status cvx_upload(cvx_ctx *ctx, void *dst, const void *host, size_t bytes);
cvx_status cvx_download(cvx_ctx *ctx, void *host, const void *src, size_t bytes);
cvx_status cvx_copy(cvx_ctx *ctx, void *dst, const void *src, size_t bytes);
/* x[0..n) = value. */
cvx_status cvx_fill(cvx_ctx *ctx, float *x, float value, int64_t n);
/* dst[n] f32 = a weight w[n] in `dt` widened (a norm's vector, a learned table). */
cvx_status cvx_widen(cvx_ctx *ctx, float *dst, const void *w, cvx_dtype dt, int64_t n);

/* One input frame: element (b, c, y, x) is at ptr[b * bstride + c * cstride + y * W + x]. */
typedef struct cvx_frame {
    const float *ptr;
    int64_t cstride;
    int64_t bstride;
} cvx_frame;

/* The frames of tensor t ([B, C, T, H, W]) from `first` to `first + count`, appended to `frames`. */
void cvx_frames_of(const cvx_tensor *t, int64_t first, int64_t count, cvx_frame *frames);

/* Convolution weights: w is [Co, Ci, kt, kh, kw] in `dtype`; bias is [Co] f32 or NULL. */
typedef struct cvx_conv_weight {
    const void *w;
    cvx_dtype dtype;
    const float *bias;
    int co, ci, kt, kh, kw;
} cvx_conv_weight;

typedef struct cvx_conv_geom {
    int stride_h, stride_w;
    int pad_top, pad_bottom, pad_left, pad_right; /* zero padding of the (upsampled) frame */
    int up;                                       /* 1, or 2 for nearest x2 spatial upsampling of the input */
} cvx_conv_geom;

/* What a convolution will allocate and compute, from its sizes alone (the measuring twin reads it too). */
typedef struct cvx_conv_plan {
    int64_t out_shape[5]; /* [B, Co, T_out, Ho, Wo] */
    size_t scratch;       /* bytes of the op's one scratch allocation */
} cvx_conv_plan;
cvx_status cvx_conv3d_plan(int num_frames, int64_t batch, int64_t height, int64_t width, const cvx_conv_weight *wt,
                           const cvx_conv_geom *geom, cvx_conv_plan *plan);
/* out = conv(frames) over B batch items: frames holds T_in virtual frames of geometry [B, Ci, H, W]; the output
 * has T_in - kt + 1 frames, out is allocated here as [B, Co, T_out, Ho, Wo]. Weights: wt->w, wt->bias. */
cvx_status cvx_conv3d(cvx_ctx *ctx, const cvx_frame *frames, int num_frames, int64_t batch, int64_t height,
                      int64_t width, const cvx_conv_weight *wt, const cvx_conv_geom *geom, cvx_tensor *out);

/* Nearest-neighbour source index as PyTorch's legacy 'nearest' computes it for a given output size. */
int64_t cvx_nearest_src(int64_t dst, int64_t in_size, int64_t out_size);

/* The modulation of CogVideoX's spatial norm: f_norm * y + b, where y and b ([B, C, Tz, Hz, Wz]) are resampled
 * to f's size by nearest interpolation (first frame resampled on its own when f has an odd number (> 1) of
 * frames). NULL y means plain group norm. */
typedef struct cvx_norm_modulation {
    const cvx_tensor *y;
    const cvx_tensor *b;
} cvx_norm_modulation;

/* Checks a group norm's arguments and gives its scratch bytes (the nearest maps of the modulation). */
cvx_status cvx_group_norm_plan(const cvx_tensor *x, int groups, const cvx_norm_modulation *mod, size_t *scratch);
/* out = [SiLU]( GroupNorm(x; groups, eps, gamma, beta) [* y + b] ). x: [B, C, T, H, W]; out may be x (in place)
 * or an empty tensor (allocated here). Statistics over (C/groups, T, H, W), accumulated in double. Weights: gamma,
 * beta ([C] f32). */
cvx_status cvx_group_norm(cvx_ctx *ctx, const cvx_tensor *x, int groups, float eps, const float *gamma,
                          const float *beta, const cvx_norm_modulation *mod, int apply_silu, cvx_tensor *out);

/* x += y (same shape). */
cvx_status cvx_add_inplace(cvx_ctx *ctx, cvx_tensor *x, const cvx_tensor *y);
/* The output frames of cvx_avg_pool_time for T input frames. */
int64_t cvx_avg_pool_time_frames(int64_t T);
/* Average pooling of time pairs, keeping an odd first frame as is (CogVideoXDownsample3D compress_time); out is
 * allocated here. */
cvx_status cvx_avg_pool_time(cvx_ctx *ctx, const cvx_tensor *x, cvx_tensor *out);
/* Copies frames [first, first + count) of x ([B, C, T, H, W]) into a new tensor out. */
cvx_status cvx_slice_frames(cvx_ctx *ctx, const cvx_tensor *x, int64_t first, int64_t count, cvx_tensor *out);
/* Copies a box of n = (batch, frames, rows, columns), all channels, from src at offset s = (b, t, y, x) to dst at
 * offset d. Both are [B, C, T, H, W] with the same C; the caller keeps the box inside both. download_box: dst is a
 * host tensor (a tile's kept part straight into the forward's host output). */
cvx_status cvx_copy_box(cvx_ctx *ctx, cvx_tensor *dst, const int64_t d[4], const cvx_tensor *src, const int64_t s[4],
                        const int64_t n[4]);
cvx_status cvx_download_box(cvx_ctx *ctx, cvx_tensor *host_dst, const int64_t d[4], const cvx_tensor *src,
                            const int64_t s[4], const int64_t n[4]);
/* Copies `count` frames (geometry [B, C, H, W]) into a new tensor out [B, C, count, H, W]. */
cvx_status cvx_gather_frames(cvx_ctx *ctx, const cvx_frame *frames, int count, int64_t B, int64_t C, int64_t H,
                             int64_t W, cvx_tensor *out);
/* diffusers' blend_v: the first e = min(a_full_rows, rows of b, extent) rows of b fade in from the last e rows of
 * a (which holds only the last rows of a tile of a_full_rows). The weights are Python doubles rounded to f32 and
 * each product rounded, as torch computes tensor * float. */
cvx_status cvx_blend_rows(cvx_ctx *ctx, const cvx_tensor *a, cvx_tensor *b, int64_t a_full_rows, int64_t extent);
/* blend_h: the first e = min(columns of a, of b, extent) columns of b fade in from the last e columns of a. */
cvx_status cvx_blend_cols(cvx_ctx *ctx, const cvx_tensor *a, cvx_tensor *b, int64_t extent);

/* ---- token ops (the transformer): activations are row-major [rows, width] f32 ------------------------------ */

/* y[M, N] = x[M, K] W[N, K]^T (+ bias[N]). W and bias are weights in `wdt` (f32, f16 or bf16): 16-bit ones are
 * widened block by block into per-thread scratch, so no f32 copy of the model ever exists. Parallel over (row
 * block, column block). */
size_t cvx_linear_scratch(int64_t M, int64_t K, cvx_dtype wdt, int64_t N);
cvx_status cvx_linear(cvx_ctx *ctx, const float *x, int64_t M, int64_t K, const void *w, cvx_dtype wdt,
                      const void *bias, int64_t N, float *y);

/* y = LayerNorm(x) over rows of width D (gamma/beta: weights [D] in wdt, either may be NULL for no affine);
 * statistics in double. Then, when scale/shift are given (activations of width D), y = y * (1 + scale) + shift,
 * each op rounded in f32 as torch does. y may be x. */
size_t cvx_layer_norm_scratch(int64_t D, const void *gamma, const void *beta, cvx_dtype wdt);
cvx_status cvx_layer_norm(cvx_ctx *ctx, const float *x, int64_t rows, int64_t D, float eps, const void *gamma,
                          const void *beta, cvx_dtype wdt, const float *scale, const float *shift, float *y);
/* T5LayerNorm: y = w * (x * rsqrt(mean(x^2) + eps)) over rows of width d (no mean, no bias); w: weight [d] in wdt. */
size_t cvx_rms_norm_scratch(int64_t d, cvx_dtype wdt);
cvx_status cvx_rms_norm(cvx_ctx *ctx, const float *x, int64_t rows, int64_t d, float eps, const void *w, cvx_dtype wdt,
                        float *y);

/* x[rows, D] += gate[D] * y[rows, D] (gate NULL: plain add). */
cvx_status cvx_gated_add(cvx_ctx *ctx, float *x, const float *gate, const float *y, int64_t rows, int64_t D);
/* x[n] *= y[n]. */
cvx_status cvx_mul(cvx_ctx *ctx, float *x, const float *y, int64_t n);

/* x[i] = exp(x[i] - shift), returning the sum of the results: a polynomial exp (Cody-Waite reduction, degree-6
 * Cephes polynomial, within 2 ulp of expf) that the compiler vectorises; inputs below -80 give 1.8e-35, not 0.
 * (CPU kernels used inside ops, not backend entries.) */
float cvx_exp_shifted_sum(float *x, int64_t n, float shift);
/* max(start, x[0..n)), vectorised. */
float cvx_max(const float *x, int64_t n, float start);
cvx_status cvx_silu(cvx_ctx *ctx, float *x, int64_t n);
/* GELU with the tanh approximation (torch approximate="tanh"). */
cvx_status cvx_gelu_tanh(cvx_ctx *ctx, float *x, int64_t n);
cvx_status cvx_relu(cvx_ctx *ctx, float *x, int64_t n);

/* Rotary embedding on `rows` tokens of `heads` heads of width hd (row stride ld floats): pairs (2k, 2k+1) are
 * rotated by cos/sin[token][hd] as diffusers' apply_rotary_emb(use_real_unbind_dim=-1). */
cvx_status cvx_rope(cvx_ctx *ctx, float *x, int64_t rows, int64_t ld, int heads, int hd, const float *cos_tab,
                    const float *sin_tab);

/* Softmax attention without the S x S matrix: for each batch item and head, out = softmax(q k^T * scale) v over
 * tiles of keys with an online (running max / sum) softmax. q, k, v, out are [B, S, heads * hd] (heads packed
 * along the row). Working memory is a few tiles per thread. */
size_t cvx_attention_scratch(int hd);
cvx_status cvx_attention(cvx_ctx *ctx, const float *q, const float *k, const float *v, int64_t B, int64_t S, int heads,
                         int hd, float scale, float *out);

/* T5's attention: out = softmax(q k^T + bias[h] + key_mask[b]) v, no scaling; q, k, v, out [B, S, H kd], bias
 * [H, S, S], key_mask [B, S] additive or NULL. The S x S scores are materialised per (batch, head) in per-thread
 * scratch (T5 sequences are short: 226 in CogVideoX). */
size_t cvx_biased_attention_scratch(int64_t S);
cvx_status cvx_biased_attention(cvx_ctx *ctx, const float *q, const float *k, const float *v, int64_t B, int64_t S,
                                int H, int kd, const float *bias, const float *key_mask, float *out);
/* out[n, d] f32 = rows ids[n] (int64 activations, each checked in [0, table_rows)) of the weight table
 * [table_rows, d] in dt. */
cvx_status cvx_embedding(cvx_ctx *ctx, const void *table, cvx_dtype dt, int64_t table_rows, const int64_t *ids,
                         int64_t n, int64_t d, float *out);
/* T5's position bias: out[h, i, j] = table[buckets[j - i + S - 1], h] for a weight table [num_buckets, H] in dt and
 * buckets [2S - 1] int32 activations (each in [0, num_buckets)). */
size_t cvx_position_bias_scratch(int num_buckets, int H, cvx_dtype dt);
cvx_status cvx_position_bias(cvx_ctx *ctx, const void *table, cvx_dtype dt, int num_buckets, const int32_t *buckets,
                             int H, int64_t S, float *out);

/* The transformer's patch embedding of the latents h [B, F, C, H, W] -> out [B * N, C p p p_t]: 1.0 (p_t 1): tokens
 * (f, i, j) with features (c, ky, kx) (the Conv2d); 1.5: tokens (f / p_t, i, j) with features (c, kt, ky, kx). */
cvx_status cvx_gather_patches(cvx_ctx *ctx, const cvx_tensor *h, int p, int pt, float *out);
/* The inverse for proj_out's features (c, kt, ky, kx): tok [B, Fp Hp Wp, C p p p_t] -> out [B, Fp p_t, C, Hp p,
 * Wp p]. */
cvx_status cvx_unpatchify(cvx_ctx *ctx, const float *tok, int64_t B, int64_t Fp, int64_t Hp, int64_t Wp, int64_t C,
                          int p, int pt, float *out);

#endif

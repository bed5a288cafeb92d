/* The CPU ops the models are written against. Each takes f32 activations; weights may be f32, f16 or bf16 and are
 * widened on use. Shapes use B batch, C channels, T frames, H height, W width; activations are [B, C, T, H, W].
 *
 * Convolutions read their input through a list of frame references instead of a tensor, so that the causal
 * time padding (replicated first frame or the previous batch's cached frames), nearest upsampling in time
 * (repeated frames) and in space (`up` = 2) cost no copy of the input. */
#ifndef CVX_OPS_H
#define CVX_OPS_H

#include <stdint.h>

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

/* out = conv(frames) over B batch items: frames holds T_in virtual frames of geometry [B, Ci, H, W]; the output
 * has T_in - kt + 1 frames, out is allocated here as [B, Co, T_out, Ho, Wo]. */
cvx_status cvx_conv3d(const cvx_frame *frames, int num_frames, int64_t batch, int64_t height, int64_t width,
                      const cvx_conv_weight *wt, const cvx_conv_geom *geom, cvx_tensor *out);

/* Nearest-neighbour source index as PyTorch's legacy 'nearest' computes it for a given output size. */
int64_t cvx_nearest_src(int64_t dst, int64_t in_size, int64_t out_size);

/* The modulation of CogVideoX's spatial norm: f_norm * y + b, where y and b ([B, C, Tz, Hz, Wz]) are resampled
 * to f's size by nearest interpolation (first frame resampled on its own when f has an odd number (> 1) of
 * frames). NULL y means plain group norm. */
typedef struct cvx_norm_modulation {
    const cvx_tensor *y;
    const cvx_tensor *b;
} cvx_norm_modulation;

/* out = [SiLU]( GroupNorm(x; groups, eps, gamma, beta) [* y + b] ). x: [B, C, T, H, W]; out may be x (in place)
 * or an empty tensor (allocated here). Statistics over (C/groups, T, H, W), accumulated in double. */
cvx_status cvx_group_norm(const cvx_tensor *x, int groups, float eps, const float *gamma, const float *beta,
                          const cvx_norm_modulation *mod, int apply_silu, cvx_tensor *out);

/* x += y (same shape). */
cvx_status cvx_add_inplace(cvx_tensor *x, const cvx_tensor *y);
/* Average pooling of time pairs, keeping an odd first frame as is (CogVideoXDownsample3D compress_time). */
cvx_status cvx_avg_pool_time(const cvx_tensor *x, cvx_tensor *out);
/* Copies frames [first, first + count) of x ([B, C, T, H, W]) into a new tensor out. */
cvx_status cvx_slice_frames(const cvx_tensor *x, int64_t first, int64_t count, cvx_tensor *out);
/* Copies a box of n = (batch, frames, rows, columns), all channels, from src at offset s = (b, t, y, x) to dst at
 * offset d. Both are [B, C, T, H, W] with the same C; the caller keeps the box inside both. */
void cvx_copy_box(cvx_tensor *dst, const int64_t d[4], const cvx_tensor *src, const int64_t s[4], const int64_t n[4]);

/* ---- token ops (the transformer): activations are row-major [rows, width] f32 ------------------------------ */

/* y[M, N] = x[M, K] W[N, K]^T (+ bias[N]). W and bias are in `wdt` (f32, f16 or bf16): 16-bit ones are widened
 * block by block into per-thread scratch, so no f32 copy of the model ever exists. Parallel over (row block,
 * column block). */
cvx_status cvx_linear(const float *x, int64_t M, int64_t K, const void *w, cvx_dtype wdt, const void *bias, int64_t N,
                      float *y);

/* y = LayerNorm(x) over rows of width D (gamma/beta may be NULL for no affine); statistics in double.
 * Then, when scale/shift are given (width D), y = y * (1 + scale) + shift, each op rounded in f32 as torch does.
 * y may be x. */
void cvx_layer_norm(const float *x, int64_t rows, int64_t D, float eps, const float *gamma, const float *beta,
                    const float *scale, const float *shift, float *y);

/* x[rows, D] += gate[D] * y[rows, D] (gate NULL: plain add). */
void cvx_gated_add(float *x, const float *gate, const float *y, int64_t rows, int64_t D);

/* x[i] = exp(x[i] - shift), returning the sum of the results: a polynomial exp (Cody-Waite reduction, degree-6
 * Cephes polynomial, within 2 ulp of expf) that the compiler vectorises; inputs below -80 give 1.8e-35, not 0. */
float cvx_exp_shifted_sum(float *x, int64_t n, float shift);
/* max(start, x[0..n)), vectorised. */
float cvx_max(const float *x, int64_t n, float start);
void cvx_silu(float *x, int64_t n);
/* GELU with the tanh approximation (torch approximate="tanh"). */
void cvx_gelu_tanh(float *x, int64_t n);

/* Rotary embedding on `rows` tokens of `heads` heads of width hd (row stride ld floats): pairs (2k, 2k+1) are
 * rotated by cos/sin[token][hd] as diffusers' apply_rotary_emb(use_real_unbind_dim=-1). */
void cvx_rope(float *x, int64_t rows, int64_t ld, int heads, int hd, const float *cos_tab, const float *sin_tab);

/* Softmax attention without the S x S matrix: for each batch item and head, out = softmax(q k^T * scale) v over
 * tiles of keys with an online (running max / sum) softmax. q, k, v, out are [B, S, heads * hd] (heads packed
 * along the row). Working memory is a few tiles per thread. */
cvx_status cvx_attention(const float *q, const float *k, const float *v, int64_t B, int64_t S, int heads, int hd,
                         float scale, float *out);

#endif

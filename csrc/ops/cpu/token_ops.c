/* Row-wise ops of the transformer and T5: layer / RMS norms, gated residuals, activations, RoPE, the patch
 * embedding's gathers, embedding lookup and T5's position bias. */
#include <math.h>
#include <stdint.h>

#include "../ops.h"

size_t cvx_layer_norm_scratch(int64_t D, const void *gamma, const void *beta, cvx_dtype wdt) {
    if (wdt == CVX_F32) return 0;
    return (size_t)((gamma != NULL) + (beta != NULL)) * (size_t)D * sizeof(float);
}

cvx_status cvx_layer_norm(cvx_ctx *ctx, const float *x, int64_t rows, int64_t D, float eps, const void *gamma_w,
                          const void *beta_w, cvx_dtype wdt, const float *scale, const float *shift, float *y) {
    /* 16-bit affine parameters widened once (exactly) into scratch */
    float *vec = NULL;
    CVX_CHECK(cvx_ops_scratch(ctx, cvx_layer_norm_scratch(D, gamma_w, beta_w, wdt), (void **)&vec));
    const float *gamma = gamma_w, *beta = beta_w;
    if (vec) {
        float *next = vec;
        if (gamma_w) cvx_convert(next, CVX_F32, gamma_w, wdt, (size_t)D), gamma = next, next += D;
        if (beta_w) cvx_convert(next, CVX_F32, beta_w, wdt, (size_t)D), beta = next;
    }
#pragma omp parallel for schedule(static) num_threads(cvx_ops_threads_for(4 * rows * D))
    for (int64_t r = 0; r < rows; r++) {
        const float *xr = x + r * D;
        float *yr = y + r * D;
        double sum = 0.0, sq = 0.0;
        for (int64_t i = 0; i < D; i++) sum += xr[i];
        const double mean = sum / (double)D;
        for (int64_t i = 0; i < D; i++) {
            const double d = xr[i] - mean;
            sq += d * d;
        }
        const float rstd = (float)(1.0 / sqrt(sq / (double)D + (double)eps)), fmean = (float)mean;
        for (int64_t i = 0; i < D; i++) {
            float v = (xr[i] - fmean) * rstd;
            if (gamma) v = v * gamma[i];
            if (beta) v = v + beta[i];
            if (scale) {
                const float one_plus = 1.0f + scale[i];
                v = v * one_plus;
                v = v + shift[i];
            }
            yr[i] = v;
        }
    }
    cvx_ctx_free(ctx, vec);
    return CVX_OK;
}

size_t cvx_rms_norm_scratch(int64_t d, cvx_dtype wdt) { return wdt == CVX_F32 ? 0 : (size_t)d * sizeof(float); }

cvx_status cvx_rms_norm(cvx_ctx *ctx, const float *x, int64_t rows, int64_t d, float eps, const void *w_in,
                        cvx_dtype wdt, float *y) {
    float *vec = NULL;
    CVX_CHECK(cvx_ops_scratch(ctx, cvx_rms_norm_scratch(d, wdt), (void **)&vec));
    const float *w = w_in;
    if (vec) cvx_convert(vec, CVX_F32, w_in, wdt, (size_t)d), w = vec;
#pragma omp parallel for schedule(static) num_threads(cvx_ops_threads_for(3 * rows * d))
    for (int64_t r = 0; r < rows; r++) {
        double sq = 0.0;
        for (int64_t i = 0; i < d; i++) sq += (double)x[r * d + i] * x[r * d + i];
        const float scale = 1.0f / sqrtf((float)(sq / (double)d) + eps);
        for (int64_t i = 0; i < d; i++) y[r * d + i] = w[i] * (x[r * d + i] * scale);
    }
    cvx_ctx_free(ctx, vec);
    return CVX_OK;
}

cvx_status cvx_gated_add(cvx_ctx *ctx, float *x, const float *gate, const float *y, int64_t rows, int64_t D) {
    (void)ctx;
#pragma omp parallel for schedule(static) num_threads(cvx_ops_threads_for(rows *D))
    for (int64_t r = 0; r < rows; r++)
        for (int64_t i = 0; i < D; i++) {
            const float g = gate ? gate[i] * y[r * D + i] : y[r * D + i];
            x[r * D + i] += g;
        }
    return CVX_OK;
}

cvx_status cvx_mul(cvx_ctx *ctx, float *x, const float *y, int64_t n) {
    (void)ctx;
#pragma omp parallel for schedule(static) num_threads(cvx_ops_threads_for(n))
    for (int64_t i = 0; i < n; i++) x[i] *= y[i];
    return CVX_OK;
}

/* exp(x) for x in [-80, 88.3] without calls or branches, so loops over it vectorise (AVX2 where the CPU has
 * it: the callers are compiled for both and picked at load time). The floor of -80 (exp = 1.8e-35) keeps every
 * intermediate a normal float: subnormals cost microcode assists that made softmax 10x slower. */
static inline float exp_poly(float x) {
    x = x < -80.0f ? -80.0f : x;
    x = x > 88.3f ? 88.3f : x;       /* below 128 * ln 2, so the exponent field stays finite */
    const float magic = 12582912.0f; /* 1.5 * 2^23: adding and subtracting it rounds to the nearest integer */
    const float n = (x * 1.44269504088896341f + magic) - magic;
    float r = x - n * 0.693359375f;
    r = r - n * -2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    const float y = p * r * r + r + 1.0f;
    union {
        int32_t i;
        float f;
    } scale;
    /* a NaN input passes both clamps: converting it to int would be undefined behaviour (a NaN weight, e.g. in a
     * LoRA adapter, reaches softmax and GELU); y is NaN then, and so stays the result */
    scale.i = ((int32_t)(n == n ? n : 0.0f) + 127) << 23;
    return y * scale.f;
}

/* The multiversioned kernels are static and reached through plain exported functions: clang (through 15 at least)
 * emits a target_clones function's dispatcher under "<name>.ifunc", not "<name>", so a call from another
 * translation unit would find no symbol. */
__attribute__((target_clones("avx2", "default"))) static float exp_shifted_sum_kernel(float *x, int64_t n,
                                                                                      float shift) {
    for (int64_t i = 0; i < n; i++) x[i] = exp_poly(x[i] - shift);
    /* eight partial sums: a strict left-to-right float sum would not vectorise */
    float lane[8] = {0.0f};
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        for (int l = 0; l < 8; l++) lane[l] += x[i + l];
    float sum = ((lane[0] + lane[1]) + (lane[2] + lane[3])) + ((lane[4] + lane[5]) + (lane[6] + lane[7]));
    for (; i < n; i++) sum += x[i];
    return sum;
}

float cvx_exp_shifted_sum(float *x, int64_t n, float shift) { return exp_shifted_sum_kernel(x, n, shift); }

__attribute__((target_clones("avx2", "default"))) static float max_kernel(const float *x, int64_t n, float start) {
    float lane[8] = {start, start, start, start, start, start, start, start};
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        for (int l = 0; l < 8; l++) lane[l] = x[i + l] > lane[l] ? x[i + l] : lane[l];
    float m = start;
    for (int l = 0; l < 8; l++) m = lane[l] > m ? lane[l] : m;
    for (; i < n; i++) m = x[i] > m ? x[i] : m;
    return m;
}

float cvx_max(const float *x, int64_t n, float start) { return max_kernel(x, n, start); }

cvx_status cvx_silu(cvx_ctx *ctx, float *x, int64_t n) {
    (void)ctx;
#pragma omp parallel for schedule(static) num_threads(cvx_ops_threads_for(4 * n))
    for (int64_t i = 0; i < n; i++) x[i] = x[i] / (1.0f + expf(-x[i]));
    return CVX_OK;
}

cvx_status cvx_relu(cvx_ctx *ctx, float *x, int64_t n) {
    (void)ctx;
#pragma omp parallel for schedule(static) num_threads(cvx_ops_threads_for(n))
    for (int64_t i = 0; i < n; i++) x[i] = x[i] > 0.0f ? x[i] : 0.0f;
    return CVX_OK;
}

/* 0.5 x (1 + tanh(u)) with tanh(u) = 1 - 2 / (exp(2u) + 1): exact at the saturated ends, absolute error ~1e-7 near
 * zero, and vectorisable. */
__attribute__((target_clones("avx2", "default"))) static void gelu_tanh_block(float *x, int64_t n) {
    const float k0 = 0.7978845608028654f, k1 = 0.044715f; /* sqrt(2/pi), as torch's tanh approximation */
    for (int64_t i = 0; i < n; i++) {
        const float v = x[i];
        const float u = k0 * (v + k1 * v * v * v);
        const float t = 1.0f - 2.0f / (exp_poly(2.0f * u) + 1.0f);
        x[i] = 0.5f * v * (1.0f + t);
    }
}

cvx_status cvx_gelu_tanh(cvx_ctx *ctx, float *x, int64_t n) {
    (void)ctx;
    const int64_t block = 4096;
#pragma omp parallel for schedule(static) num_threads(cvx_ops_threads_for(4 * n))
    for (int64_t b = 0; b < (n + block - 1) / block; b++)
        gelu_tanh_block(x + b * block, n - b * block < block ? n - b * block : block);
    return CVX_OK;
}

cvx_status cvx_rope(cvx_ctx *ctx, float *x, int64_t rows, int64_t ld, int heads, int hd, const float *cos_tab,
                    const float *sin_tab) {
    (void)ctx;
#pragma omp parallel for schedule(static) num_threads(cvx_ops_threads_for(2 * rows * heads * hd))
    for (int64_t r = 0; r < rows; r++) {
        const float *c = cos_tab + r * hd, *s = sin_tab + r * hd;
        for (int h = 0; h < heads; h++) {
            float *v = x + r * ld + (int64_t)h * hd;
            for (int k = 0; k < hd; k += 2) {
                const float re = v[k], im = v[k + 1];
                const float a = re * c[k], b = -im * s[k];
                const float e = im * c[k + 1], f = re * s[k + 1];
                v[k] = a + b;
                v[k + 1] = e + f;
            }
        }
    }
    return CVX_OK;
}

cvx_status cvx_gather_patches(cvx_ctx *ctx, const cvx_tensor *h, int p, int pt, float *out) {
    (void)ctx;
    const int64_t B = h->shape[0], F = h->shape[1], C = h->shape[2], H = h->shape[3], W = h->shape[4];
    const int64_t Fp = F / pt, Hp = H / p, Wp = W / p, feat = C * pt * p * p;
    const float *x = h->data;
#pragma omp parallel for schedule(static) collapse(2) num_threads(cvx_ops_threads_for(B *Fp *Hp *Wp *feat))
    for (int64_t b = 0; b < B; b++)
        for (int64_t g = 0; g < Fp; g++)
            for (int64_t i = 0; i < Hp; i++)
                for (int64_t j = 0; j < Wp; j++) {
                    float *o = out + (((b * Fp + g) * Hp + i) * Wp + j) * feat;
                    for (int64_t c = 0; c < C; c++)
                        for (int kt = 0; kt < pt; kt++)
                            for (int ky = 0; ky < p; ky++)
                                for (int kx = 0; kx < p; kx++)
                                    *o++ = x[(((b * F + g * pt + kt) * C + c) * H + i * p + ky) * W + j * p + kx];
                }
    return CVX_OK;
}

cvx_status cvx_unpatchify(cvx_ctx *ctx, const float *tok, int64_t B, int64_t Fp, int64_t Hp, int64_t Wp, int64_t C,
                          int p, int pt, float *out) {
    (void)ctx;
    const int64_t F = Fp * pt, H = Hp * p, W = Wp * p, feat = C * pt * p * p;
#pragma omp parallel for schedule(static) collapse(2) num_threads(cvx_ops_threads_for(B *Fp *Hp *Wp *feat))
    for (int64_t b = 0; b < B; b++)
        for (int64_t g = 0; g < Fp; g++)
            for (int64_t i = 0; i < Hp; i++)
                for (int64_t j = 0; j < Wp; j++) {
                    const float *t = tok + (((b * Fp + g) * Hp + i) * Wp + j) * feat;
                    for (int64_t c = 0; c < C; c++)
                        for (int kt = 0; kt < pt; kt++)
                            for (int ky = 0; ky < p; ky++)
                                for (int kx = 0; kx < p; kx++)
                                    out[(((b * F + g * pt + kt) * C + c) * H + i * p + ky) * W + j * p + kx] = *t++;
                }
    return CVX_OK;
}

cvx_status cvx_embedding(cvx_ctx *ctx, const void *table, cvx_dtype dt, int64_t table_rows, const int64_t *ids,
                         int64_t n, int64_t d, float *out) {
    (void)ctx;
    const size_t esize = cvx_dtype_size(dt);
    for (int64_t i = 0; i < n; i++) {
        if (ids[i] < 0 || ids[i] >= table_rows)
            return CVX_FAIL(CVX_ERR_INVALID, "embedding: id %lld at position %lld is outside [0, %lld)",
                            (long long)ids[i], (long long)i, (long long)table_rows);
        cvx_convert(out + i * d, CVX_F32, (const char *)table + (size_t)(ids[i] * d) * esize, dt, (size_t)d);
    }
    return CVX_OK;
}

size_t cvx_position_bias_scratch(int num_buckets, int H, cvx_dtype dt) {
    return dt == CVX_F32 ? 0 : (size_t)num_buckets * (size_t)H * sizeof(float);
}

cvx_status cvx_position_bias(cvx_ctx *ctx, const void *table_w, cvx_dtype dt, int num_buckets, const int32_t *buckets,
                             int H, int64_t S, float *out) {
    for (int64_t r = 0; r < 2 * S - 1; r++)
        if (buckets[r] < 0 || buckets[r] >= num_buckets)
            return CVX_FAIL(CVX_ERR_INVALID, "position bias: bucket %d is outside [0, %d)", buckets[r], num_buckets);
    float *vec = NULL;
    CVX_CHECK(cvx_ops_scratch(ctx, cvx_position_bias_scratch(num_buckets, H, dt), (void **)&vec));
    const float *table = table_w;
    if (vec) cvx_convert(vec, CVX_F32, table_w, dt, (size_t)num_buckets * (size_t)H), table = vec;
#pragma omp parallel for schedule(static) num_threads(cvx_ops_threads_for(S *S *H))
    for (int64_t i = 0; i < S; i++)
        for (int64_t j = 0; j < S; j++) {
            const int32_t bucket = buckets[j - i + S - 1];
            for (int64_t h = 0; h < H; h++) out[(h * S + i) * S + j] = table[(int64_t)bucket * H + h];
        }
    cvx_ctx_free(ctx, vec);
    return CVX_OK;
}

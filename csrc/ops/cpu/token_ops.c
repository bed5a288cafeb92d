/* Row-wise ops of the transformer: layer norm with adaLN modulation, gated residuals, activations, RoPE. */
#include <math.h>
#include <stdint.h>

#include "../ops.h"

void cvx_layer_norm(const float *x, int64_t rows, int64_t D, float eps, const float *gamma, const float *beta,
                    const float *scale, const float *shift, float *y) {
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
}

void cvx_gated_add(float *x, const float *gate, const float *y, int64_t rows, int64_t D) {
#pragma omp parallel for schedule(static) num_threads(cvx_ops_threads_for(rows *D))
    for (int64_t r = 0; r < rows; r++)
        for (int64_t i = 0; i < D; i++) {
            const float g = gate ? gate[i] * y[r * D + i] : y[r * D + i];
            x[r * D + i] += g;
        }
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
    scale.i = ((int32_t)n + 127) << 23;
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

void cvx_silu(float *x, int64_t n) {
#pragma omp parallel for schedule(static) num_threads(cvx_ops_threads_for(4 * n))
    for (int64_t i = 0; i < n; i++) x[i] = x[i] / (1.0f + expf(-x[i]));
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

void cvx_gelu_tanh(float *x, int64_t n) {
    const int64_t block = 4096;
#pragma omp parallel for schedule(static) num_threads(cvx_ops_threads_for(4 * n))
    for (int64_t b = 0; b < (n + block - 1) / block; b++)
        gelu_tanh_block(x + b * block, n - b * block < block ? n - b * block : block);
}

void cvx_rope(float *x, int64_t rows, int64_t ld, int heads, int hd, const float *cos_tab, const float *sin_tab) {
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
}

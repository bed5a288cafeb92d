/* Row-wise ops of the transformer: layer norm with adaLN modulation, gated residuals, activations, RoPE. */
#include <math.h>

#include "../ops.h"

void cvx_layer_norm(const float *x, int64_t rows, int64_t D, float eps, const float *gamma, const float *beta,
                    const float *scale, const float *shift, float *y) {
#pragma omp parallel for schedule(static)
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
#pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < rows; r++)
        for (int64_t i = 0; i < D; i++) {
            const float g = gate ? gate[i] * y[r * D + i] : y[r * D + i];
            x[r * D + i] += g;
        }
}

void cvx_silu(float *x, int64_t n) {
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; i++) x[i] = x[i] / (1.0f + expf(-x[i]));
}

void cvx_gelu_tanh(float *x, int64_t n) {
    const float k0 = 0.7978845608028654f, k1 = 0.044715f; /* sqrt(2/pi), as torch's tanh approximation */
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; i++) {
        const float v = x[i];
        const float inner = k0 * (v + k1 * v * v * v);
        x[i] = 0.5f * v * (1.0f + tanhf(inner));
    }
}

void cvx_rope(float *x, int64_t rows, int64_t ld, int heads, int hd, const float *cos_tab, const float *sin_tab) {
#pragma omp parallel for schedule(static)
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

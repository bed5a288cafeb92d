#include "dtype.h"

#include <string.h>

size_t cvx_dtype_size(cvx_dtype dt) { return dt == CVX_F64 ? 8 : dt == CVX_F32 ? 4 : 2; }

const char *cvx_dtype_name(cvx_dtype dt) {
    switch (dt) {
    case CVX_F32: return "float32";
    case CVX_F16: return "float16";
    case CVX_BF16: return "bfloat16";
    case CVX_F64: return "float64";
    }
    return "unknown";
}

static inline uint32_t f32_bits(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

static inline float bits_f32(uint32_t u) {
    float f;
    memcpy(&f, &u, 4);
    return f;
}

float cvx_f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu;
    uint32_t mant = h & 0x3ffu;
    if (exp == 0x1f) return bits_f32(sign | 0x7f800000u | (mant << 13)); /* inf / nan */
    if (exp == 0) {
        if (mant == 0) return bits_f32(sign);
        /* subnormal: value = mant * 2^-24, exact in f32 */
        float v = (float)mant * 5.9604644775390625e-8f;
        return sign ? -v : v;
    }
    return bits_f32(sign | ((exp + 112u) << 23) | (mant << 13));
}

uint16_t cvx_f32_to_f16(float f) {
    uint32_t u = f32_bits(f);
    uint16_t sign = (uint16_t)((u >> 16) & 0x8000u);
    uint32_t abs = u & 0x7fffffffu;
    if (abs >= 0x7f800000u) /* inf or nan (keep a quiet nan payload bit) */
        return (uint16_t)(sign | 0x7c00u | (abs > 0x7f800000u ? 0x200u | ((abs >> 13) & 0x3ffu) : 0u));
    if (abs >= 0x477ff000u) return (uint16_t)(sign | 0x7c00u); /* rounds to >= 65520: overflow to inf */
    if (abs < 0x38800000u) {                                   /* below the smallest normal half: subnormal */
        if (abs < 0x33000000u) return sign;                    /* < 2^-25 rounds to zero */
        uint32_t exp = abs >> 23;
        uint32_t mant = (abs & 0x7fffffu) | 0x800000u;
        uint32_t shift = 126u - exp; /* value = mant * 2^(exp-150); half subnormal unit 2^-24 */
        uint32_t q = mant >> shift;
        uint32_t rem = mant & ((1u << shift) - 1u);
        uint32_t halfway = 1u << (shift - 1u);
        if (rem > halfway || (rem == halfway && (q & 1u))) q++;
        return (uint16_t)(sign | q);
    }
    uint32_t r = abs + 0xfffu + ((abs >> 13) & 1u); /* round to nearest even on the 13 dropped bits */
    return (uint16_t)(sign | ((r - 0x38000000u) >> 13));
}

float cvx_bf16_to_f32(uint16_t h) { return bits_f32((uint32_t)h << 16); }

uint16_t cvx_f32_to_bf16(float f) {
    uint32_t u = f32_bits(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40u); /* quiet nan */
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

/* Element access through memcpy: safetensors does not align tensor data, so a source may start at any byte. */
static inline float load_f32(const void *base, size_t i) {
    float v;
    memcpy(&v, (const char *)base + 4 * i, 4);
    return v;
}

static inline uint16_t load_u16(const void *base, size_t i) {
    uint16_t v;
    memcpy(&v, (const char *)base + 2 * i, 2);
    return v;
}

static inline float load_as_f32(const void *src, cvx_dtype dt, size_t i) {
    switch (dt) {
    case CVX_F16: return cvx_f16_to_f32(load_u16(src, i));
    case CVX_BF16: return cvx_bf16_to_f32(load_u16(src, i));
    case CVX_F64: {
        double d;
        memcpy(&d, (const char *)src + 8 * i, 8);
        return (float)d; /* one rounding, as torch's .to(float32) */
    }
    default: return load_f32(src, i);
    }
}

void cvx_convert(void *dst, cvx_dtype dst_dt, const void *src, cvx_dtype src_dt, size_t n) {
    if (dst_dt == src_dt) {
        if (dst != src) memmove(dst, src, n * cvx_dtype_size(dst_dt));
        return;
    }
    for (size_t i = 0; i < n; i++) {
        const float v = load_as_f32(src, src_dt, i); /* widening is exact, so f16 <-> bf16 rounds once */
        /* (f64 -> f16/bf16 rounds twice, through f32; no CogVideoX tensor needs better) */
        if (dst_dt == CVX_F32) {
            memcpy((char *)dst + 4 * i, &v, 4);
        } else if (dst_dt == CVX_F64) {
            const double d = v;
            memcpy((char *)dst + 8 * i, &d, 8);
        } else {
            const uint16_t h = dst_dt == CVX_F16 ? cvx_f32_to_f16(v) : cvx_f32_to_bf16(v);
            memcpy((char *)dst + 2 * i, &h, 2);
        }
    }
}

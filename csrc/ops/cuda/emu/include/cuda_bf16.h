/* CPU emulation of cuda_bf16.h: __nv_bfloat16, __nv_bfloat162 and their conversions (common.cuh's list), as CUDA
 * rounds them: nearest even, NaN to the canonical NaN 0x7fff. Built on core/dtype.c's conversions, which agree bit
 * for bit except NaN payloads (see cuda_fp16.h). */
#ifndef CVX_EMU_CUDA_BF16_H
#define CVX_EMU_CUDA_BF16_H

#include <stdint.h>

#include "cuda_fp16.h"

#ifdef __cplusplus
extern "C" {
#endif
float cvx_bf16_to_f32(uint16_t h);
uint16_t cvx_f32_to_bf16(float f);
#ifdef __cplusplus
}

struct __nv_bfloat16_raw {
    unsigned short x;
};

struct __nv_bfloat16 {
    unsigned short __x;
    __nv_bfloat16() = default;
    constexpr __nv_bfloat16(__nv_bfloat16_raw r) : __x(r.x) {}
    __nv_bfloat16(float f) : __x(f != f ? (unsigned short)0x7fffu : cvx_f32_to_bf16(f)) {}
    operator float() const { return cvx_bf16_to_f32(__x); }
    constexpr operator __nv_bfloat16_raw() const { return __nv_bfloat16_raw{__x}; }
};

struct __nv_bfloat162 {
    __nv_bfloat16 x, y;
};

static inline __nv_bfloat16 __float2bfloat16_rn(float f) { return __nv_bfloat16(f); }
static inline __nv_bfloat16 __float2bfloat16(float f) { return __nv_bfloat16(f); }
static inline float __bfloat162float(__nv_bfloat16 h) { return cvx_bf16_to_f32(h.__x); }
static inline unsigned short __bfloat16_as_ushort(__nv_bfloat16 h) { return h.__x; }
static inline __nv_bfloat16 __ushort_as_bfloat16(unsigned short u) { return __nv_bfloat16(__nv_bfloat16_raw{u}); }
static inline short __bfloat16_as_short(__nv_bfloat16 h) { return (short)h.__x; }
static inline __nv_bfloat16 __short_as_bfloat16(short s) { return __nv_bfloat16(__nv_bfloat16_raw{(unsigned short)s}); }
static inline __nv_bfloat162 __floats2bfloat162_rn(float a, float b) {
    return __nv_bfloat162{__nv_bfloat16(a), __nv_bfloat16(b)};
}
static inline __nv_bfloat162 __halves2bfloat162(__nv_bfloat16 a, __nv_bfloat16 b) { return __nv_bfloat162{a, b}; }
static inline float __low2float(__nv_bfloat162 h) { return __bfloat162float(h.x); }
static inline float __high2float(__nv_bfloat162 h) { return __bfloat162float(h.y); }
#else
typedef struct __nv_bfloat16 {
    unsigned short __x;
} __nv_bfloat16;
#endif

typedef __nv_bfloat16 nv_bfloat16;

#endif

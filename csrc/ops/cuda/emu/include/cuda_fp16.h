/* CPU emulation of cuda_fp16.h: __half, __half2 and the conversions the kernels use (common.cuh's list). The
 * conversions are CUDA's: round to nearest even, overflow to inf, exact subnormals, and a NaN becomes the
 * canonical NaN 0x7fff (as the real __float2half_rn does). They reuse core/dtype.c's conversions, which agree with
 * CUDA bit for bit except NaN payloads (dtype.c keeps them; tests/c/cuda/test_cuda_emu.c checks both). */
#ifndef CVX_EMU_CUDA_FP16_H
#define CVX_EMU_CUDA_FP16_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif
float cvx_f16_to_f32(uint16_t h);
uint16_t cvx_f32_to_f16(float f);
#ifdef __cplusplus
}

struct __half_raw {
    unsigned short x;
};

struct __half {
    unsigned short __x;
    __half() = default;
    constexpr __half(__half_raw r) : __x(r.x) {}
    __half(float f) : __x(f != f ? (unsigned short)0x7fffu : cvx_f32_to_f16(f)) {}
    operator float() const { return cvx_f16_to_f32(__x); }
    constexpr operator __half_raw() const { return __half_raw{__x}; }
};

struct __half2 {
    __half x, y;
};

static inline __half __float2half_rn(float f) { return __half(f); }
static inline __half __float2half(float f) { return __half(f); }
static inline float __half2float(__half h) { return cvx_f16_to_f32(h.__x); }
static inline unsigned short __half_as_ushort(__half h) { return h.__x; }
static inline __half __ushort_as_half(unsigned short u) { return __half(__half_raw{u}); }
static inline short __half_as_short(__half h) { return (short)h.__x; }
static inline __half __short_as_half(short s) { return __half(__half_raw{(unsigned short)s}); }
static inline __half2 __floats2half2_rn(float a, float b) { return __half2{__half(a), __half(b)}; }
static inline __half2 __halves2half2(__half a, __half b) { return __half2{a, b}; }
static inline float __low2float(__half2 h) { return __half2float(h.x); }
static inline float __high2float(__half2 h) { return __half2float(h.y); }
#else
typedef struct __half {
    unsigned short __x;
} __half;
#endif

typedef __half half;

#endif

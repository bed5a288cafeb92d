/* What every CUDA source of the backend includes: the runtime headers, the error macro, the launch macro and the
 * warp-level matrix multiply, written so that the same source compiles two ways:
 *
 *   nvcc                 for the GPUs (setup.py, CVX_CUDA_ARCHS);
 *   g++ -DCVX_CUDA_EMU   against the CPU emulation of the CUDA runtime, cuBLAS(Lt) and the kernel model in emu/
 *                        (its include folder goes first on the include path, so <cuda_runtime.h> is the
 *                        emulation's). Every kernel's thread, block and warp logic then runs on the CPU, in the
 *                        C tests and in an emulated build of the extension, where no GPU exists.
 *
 * Rules for kernel sources (the emulation supports exactly these):
 *   - launch with CVX_LAUNCH(kernel, grid, block, shared_bytes, args...) on the compute stream, then
 *     CVX_CU(cudaGetLastError()); a template kernel goes in parentheses: CVX_LAUNCH((k<64, true>), ...).
 *   - __global__ / __device__ / __forceinline__ / __launch_bounds__ / __restrict__; threadIdx, blockIdx, blockDim,
 *     gridDim; static __shared__ arrays inside kernels; dynamic shared memory as CVX_DYNAMIC_SMEM(T, name);
 *   - __syncthreads(), __syncwarp(), __shfl_xor_sync / __shfl_sync / __shfl_down_sync with a full mask;
 *   - atomicAdd on float/int, atomicMax on int;
 *   - __half / __nv_bfloat16 with __float2half_rn, __half2float, __float2bfloat16_rn, __bfloat162float and the
 *     *_as_ushort / __ushort_as_* casts; libm's f32 functions (expf, logf, sqrtf, rsqrtf, tanhf, sinf, cosf, erff,
 *     fmaxf, fminf, fabsf); no fast-math intrinsics (__expf, __fdividef, ...): results must match PyTorch's.
 *   - tensor cores only through cvx_mma_m16n8k16_f16 / _bf16 below (no wmma, no ldmatrix).
 * Streams, events, memory, copies: the CUDA runtime API functions the emulation implements (emu/README.md). */
#ifndef CVX_CUDA_COMMON_CUH
#define CVX_CUDA_COMMON_CUH

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <stdint.h>

extern "C" {
#include "../../core/ctx.h"
#include "../../core/dtype.h"
}
#include "cuda_ops.h"

/* Returns the mapped cvx_status from the enclosing function when a CUDA runtime call fails. */
#define CVX_CU(call)                                                                                                   \
    do {                                                                                                               \
        const cudaError_t cvx_cu_err_ = (call);                                                                        \
        if (cvx_cu_err_ != cudaSuccess) return cvx_cuda_fail((int)cvx_cu_err_, #call, __FILE__, __LINE__);             \
    } while (0)

#define CVX_STREAM() ((cudaStream_t)cvx_cuda_compute_stream())

#ifdef CVX_CUDA_EMU
#include "emu/kernel.h"
#else
#define CVX_LAUNCH(kernel, grid, block, shared_bytes, ...)                                                             \
    kernel<<<(grid), (block), (shared_bytes), CVX_STREAM()>>>(__VA_ARGS__)
#define CVX_DYNAMIC_SMEM(T, name) extern __shared__ T name[]

/* D = A B + C for one warp (PTX mma.sync.aligned.m16n8k16.row.col.f32.{f16,bf16}.f32), f32 accumulation.
 * With g = lane / 4 and t = lane % 4, each lane holds (PTX ISA, "Matrix Fragments for mma.m16n8k16"):
 *   a[4]: 8 halves of A (16 x 16, row-major), packed two per register, low half first:
 *         a[0] = A[g][2t, 2t+1], a[1] = A[g+8][2t, 2t+1], a[2] = A[g][2t+8, 2t+9], a[3] = A[g+8][2t+8, 2t+9]
 *   b[2]: 4 halves of B (16 x 8, k by n):  b[0] = B[2t, 2t+1][g], b[1] = B[2t+8, 2t+9][g]
 *   c[4], d[4]: C/D (16 x 8 f32): c[0..1] = C[g][2t, 2t+1], c[2..3] = C[g+8][2t, 2t+1] */
__device__ __forceinline__ void cvx_mma_m16n8k16_f16(float d[4], const uint32_t a[4], const uint32_t b[2],
                                                     const float c[4]) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                 "{%10,%11,%12,%13};\n"
                 : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]), "f"(c[1]), "f"(c[2]),
                   "f"(c[3]));
}
__device__ __forceinline__ void cvx_mma_m16n8k16_bf16(float d[4], const uint32_t a[4], const uint32_t b[2],
                                                      const float c[4]) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                 "{%10,%11,%12,%13};\n"
                 : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]), "f"(c[1]), "f"(c[2]),
                   "f"(c[3]));
}
#endif

/* One element between f32 and the storage types, rounded to nearest even (the conversions of core/dtype.c). */
template <typename T> __device__ __forceinline__ T cvx_from_f32(float v);
template <> __device__ __forceinline__ float cvx_from_f32<float>(float v) { return v; }
template <> __device__ __forceinline__ __half cvx_from_f32<__half>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 cvx_from_f32<__nv_bfloat16>(float v) {
    return __float2bfloat16_rn(v);
}
template <typename T> __device__ __forceinline__ float cvx_to_f32(T v);
template <> __device__ __forceinline__ float cvx_to_f32<float>(float v) { return v; }
template <> __device__ __forceinline__ float cvx_to_f32<__half>(__half v) { return __half2float(v); }
template <> __device__ __forceinline__ float cvx_to_f32<__nv_bfloat16>(__nv_bfloat16 v) { return __bfloat162float(v); }

/* Blocks of `threads` covering n elements, for a grid-stride loop (capped: the loop covers the rest). */
static inline unsigned cvx_cuda_blocks(int64_t n, int threads) {
    const int64_t b = (n + threads - 1) / threads;
    return (unsigned)(b < 1 ? 1 : b > 65535 * 16 ? 65535 * 16 : b);
}

#endif

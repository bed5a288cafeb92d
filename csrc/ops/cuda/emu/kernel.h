/* The kernel model of the CPU emulation (common.cuh includes it under CVX_CUDA_EMU): CUDA's kernel keywords and
 * built-in variables, and CVX_LAUNCH, which enqueues a launch on the compute stream. When its stream reaches it,
 * the launch runs every block in order (x fastest, then y, then z) on that stream's worker thread, and within a
 * block every thread as a fiber (fiber.cpp), so that __syncthreads() and the warp collectives are real barriers.
 *
 *   __shared__       `static __thread` (no C++ thread_local: its TLS wrappers trip gcc 12 UBSan): one copy per worker
 * thread, which runs one block at a time, so the block's threads (fibers of that worker) share it and two streams never
 * do. Like the GPU's, it is not cleared between blocks. CVX_DYNAMIC_SMEM the block's dynamic shared memory, filled with
 * 0xff bytes (NaN as floats) before each block so that reading what no thread wrote shows. threadIdx, ... per-OS-thread
 * variables the scheduler sets before it resumes a fiber. */
#ifndef CVX_EMU_KERNEL_H
#define CVX_EMU_KERNEL_H

#include <cuda_runtime.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#include <tuple>
#include <type_traits>
#include <utility>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline __attribute__((always_inline))
#define __noinline__ __attribute__((noinline))
#define __launch_bounds__(...)
#define __constant__
#define __shared__ static __thread

extern __thread uint3 cvx_emu_threadIdx;
extern __thread uint3 cvx_emu_blockIdx;
extern __thread dim3 cvx_emu_blockDim;
extern __thread dim3 cvx_emu_gridDim;
#define threadIdx cvx_emu_threadIdx
#define blockIdx cvx_emu_blockIdx
#define blockDim cvx_emu_blockDim
#define gridDim cvx_emu_gridDim
static constexpr int warpSize = 32;

/* The block barrier: every thread of the block must reach the same __syncthreads statement (fiber.cpp reports
 * otherwise). The statement is known by its source line, which no inlining or tail call changes. */
void cvx_emu_syncthreads(const char *file, int line);
#define __syncthreads() cvx_emu_syncthreads(__FILE__, __LINE__)

namespace cvx_emu {
void *dynamic_smem(void);

/* one launch, type-erased: run(pack) is one thread's call of the kernel with the captured arguments */
struct kernel_launch {
    const char *name;
    const void *func;
    dim3 grid, block;
    size_t smem;
    void *pack;
    void (*run)(void *pack);
    void (*destroy)(void *pack);
};
/* Validates the geometry as CUDA does (an error goes to cudaGetLastError and nothing runs), then enqueues. */
void submit(cudaStream_t stream, const kernel_launch &launch);

template <typename... P, typename... A>
inline void launch_kernel(const char *name, void (*kernel)(P...), dim3 grid, dim3 block, size_t smem,
                          cudaStream_t stream, A &&...args) {
    static_assert(sizeof...(P) == sizeof...(A), "CVX_LAUNCH: wrong number of kernel arguments");
    /* the arguments are converted to the parameter types and copied now, as a CUDA launch does */
    struct pack_t {
        void (*kernel)(P...);
        std::tuple<std::decay_t<P>...> args;
    };
    kernel_launch l;
    l.name = name;
    l.func = reinterpret_cast<const void *>(kernel);
    l.grid = grid;
    l.block = block;
    l.smem = smem;
    l.pack = new pack_t{kernel, std::tuple<std::decay_t<P>...>(std::forward<A>(args)...)};
    l.run = [](void *p) {
        pack_t *k = static_cast<pack_t *>(p);
        std::apply(k->kernel, k->args);
    };
    l.destroy = [](void *p) { delete static_cast<pack_t *>(p); };
    submit(stream, l);
}
} // namespace cvx_emu

/* ---- warp collectives (fiber.cpp): every lane of the warp must reach one, with a mask naming every lane ---- */
namespace cvx_emu {
enum warp_op {
    WARP_SYNC,
    WARP_SHFL_IDX,
    WARP_SHFL_XOR,
    WARP_SHFL_DOWN,
    WARP_SHFL_UP,
    WARP_BALLOT,
    WARP_MMA_F16,
    WARP_MMA_BF16
};
struct mma_operands {
    float *d;
    const uint32_t *a, *b;
    const float *c;
};
/* Waits until every lane of the calling thread's warp has called it, then returns this lane's result. */
uint64_t warp_collective(int op, unsigned mask, uint64_t value, int arg, int width, void *mma);
/* the mask of the lanes the calling thread's warp has (a block's last warp may be partial) */
unsigned warp_lanes(void);

template <typename T> inline T shuffle(int op, unsigned mask, T var, int arg, int width) {
    static_assert(sizeof(T) <= 8 && std::is_trivially_copyable<T>::value, "shuffles move up to 8 bytes");
    uint64_t bits = 0;
    memcpy(&bits, &var, sizeof var);
    bits = warp_collective(op, mask, bits, arg, width, nullptr);
    memcpy(&var, &bits, sizeof var);
    return var;
}
} // namespace cvx_emu

template <typename T> inline T __shfl_sync(unsigned mask, T var, int src_lane, int width = warpSize) {
    return cvx_emu::shuffle(cvx_emu::WARP_SHFL_IDX, mask, var, src_lane, width);
}
template <typename T> inline T __shfl_xor_sync(unsigned mask, T var, int lane_mask, int width = warpSize) {
    return cvx_emu::shuffle(cvx_emu::WARP_SHFL_XOR, mask, var, lane_mask, width);
}
template <typename T> inline T __shfl_down_sync(unsigned mask, T var, unsigned delta, int width = warpSize) {
    return cvx_emu::shuffle(cvx_emu::WARP_SHFL_DOWN, mask, var, (int)delta, width);
}
template <typename T> inline T __shfl_up_sync(unsigned mask, T var, unsigned delta, int width = warpSize) {
    return cvx_emu::shuffle(cvx_emu::WARP_SHFL_UP, mask, var, (int)delta, width);
}
inline void __syncwarp(unsigned mask = 0xffffffffu) {
    cvx_emu::warp_collective(cvx_emu::WARP_SYNC, mask, 0, 0, warpSize, nullptr);
}
inline unsigned __ballot_sync(unsigned mask, int pred) {
    return (unsigned)cvx_emu::warp_collective(cvx_emu::WARP_BALLOT, mask, pred != 0, 0, warpSize, nullptr);
}
inline int __any_sync(unsigned mask, int pred) { return __ballot_sync(mask, pred) != 0; }
inline int __all_sync(unsigned mask, int pred) { return __ballot_sync(mask, pred) == cvx_emu::warp_lanes(); }

/* D = A B + C on the warp (common.cuh; the fragment layout is fiber.cpp's warp_mma) */
inline void cvx_mma_m16n8k16_f16(float d[4], const uint32_t a[4], const uint32_t b[2], const float c[4]) {
    cvx_emu::mma_operands m{d, a, b, c};
    cvx_emu::warp_collective(cvx_emu::WARP_MMA_F16, 0xffffffffu, 0, 0, warpSize, &m);
}
inline void cvx_mma_m16n8k16_bf16(float d[4], const uint32_t a[4], const uint32_t b[2], const float c[4]) {
    cvx_emu::mma_operands m{d, a, b, c};
    cvx_emu::warp_collective(cvx_emu::WARP_MMA_BF16, 0xffffffffu, 0, 0, warpSize, &m);
}

/* ---- atomics: real atomics (relaxed), since two streams' kernels run at once on different worker threads ---- */
inline int atomicAdd(int *p, int v) { return __atomic_fetch_add(p, v, __ATOMIC_RELAXED); }
inline unsigned atomicAdd(unsigned *p, unsigned v) { return __atomic_fetch_add(p, v, __ATOMIC_RELAXED); }
inline unsigned long long atomicAdd(unsigned long long *p, unsigned long long v) {
    return __atomic_fetch_add(p, v, __ATOMIC_RELAXED);
}
inline float atomicAdd(float *p, float v) {
    float old, next;
    __atomic_load(p, &old, __ATOMIC_RELAXED);
    do {
        next = old + v;
    } while (!__atomic_compare_exchange(p, &old, &next, true, __ATOMIC_RELAXED, __ATOMIC_RELAXED));
    return old;
}
template <typename T> inline T cvx_emu_atomic_update_int(T *p, T v, bool max) {
    T old = __atomic_load_n(p, __ATOMIC_RELAXED);
    while ((max ? v > old : v < old) &&
           !__atomic_compare_exchange_n(p, &old, v, true, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {
    }
    return old;
}
inline int atomicMax(int *p, int v) { return cvx_emu_atomic_update_int(p, v, true); }
inline unsigned atomicMax(unsigned *p, unsigned v) { return cvx_emu_atomic_update_int(p, v, true); }
inline int atomicMin(int *p, int v) { return cvx_emu_atomic_update_int(p, v, false); }
inline unsigned atomicMin(unsigned *p, unsigned v) { return cvx_emu_atomic_update_int(p, v, false); }
inline int atomicExch(int *p, int v) { return __atomic_exchange_n(p, v, __ATOMIC_RELAXED); }
inline unsigned atomicExch(unsigned *p, unsigned v) { return __atomic_exchange_n(p, v, __ATOMIC_RELAXED); }
inline int atomicCAS(int *p, int expected, int v) {
    __atomic_compare_exchange_n(p, &expected, v, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED);
    return expected;
}
inline unsigned atomicCAS(unsigned *p, unsigned expected, unsigned v) {
    __atomic_compare_exchange_n(p, &expected, v, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED);
    return expected;
}

/* ---- device math beyond libm (common.cuh: accurate functions only, no fast-math intrinsics) ---- */
inline float rsqrtf(float x) { return 1.0f / sqrtf(x); } /* CUDA's is within 2 ulp; this rounds twice */
inline double rsqrt(double x) { return 1.0 / sqrt(x); }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline float __fsqrt_rn(float x) { return sqrtf(x); }
inline float __saturatef(float x) { return x != x ? 0.0f : x < 0.0f ? 0.0f : x > 1.0f ? 1.0f : x; }
inline int __float_as_int(float x) {
    int i;
    memcpy(&i, &x, 4);
    return i;
}
inline unsigned __float_as_uint(float x) {
    unsigned u;
    memcpy(&u, &x, 4);
    return u;
}
inline float __int_as_float(int i) {
    float x;
    memcpy(&x, &i, 4);
    return x;
}
inline float __uint_as_float(unsigned u) {
    float x;
    memcpy(&x, &u, 4);
    return x;
}
inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline int __clz(int x) { return x ? __builtin_clz((unsigned)x) : 32; }
inline int __ffs(int x) { return __builtin_ffs(x); }
template <typename T> inline T __ldg(const T *p) { return *p; }
/* CUDA's integer and float min/max overloads */
inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }
inline unsigned min(unsigned a, unsigned b) { return a < b ? a : b; }
inline unsigned max(unsigned a, unsigned b) { return a > b ? a : b; }
inline long long min(long long a, long long b) { return a < b ? a : b; }
inline long long max(long long a, long long b) { return a > b ? a : b; }
inline long min(long a, long b) { return a < b ? a : b; }
inline long max(long a, long b) { return a > b ? a : b; }
inline float min(float a, float b) { return fminf(a, b); }
inline float max(float a, float b) { return fmaxf(a, b); }

#define CVX_LAUNCH(kernel, grid, block, shared_bytes, ...)                                                             \
    ::cvx_emu::launch_kernel(#kernel, kernel, dim3(grid), dim3(block), (size_t)(shared_bytes), CVX_STREAM(),           \
                             ##__VA_ARGS__)
#define CVX_DYNAMIC_SMEM(T, name) T *name = static_cast<T *>(::cvx_emu::dynamic_smem())

#endif

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

#define CVX_LAUNCH(kernel, grid, block, shared_bytes, ...)                                                             \
    ::cvx_emu::launch_kernel(#kernel, kernel, dim3(grid), dim3(block), (size_t)(shared_bytes), CVX_STREAM(),           \
                             ##__VA_ARGS__)
#define CVX_DYNAMIC_SMEM(T, name) T *name = static_cast<T *>(::cvx_emu::dynamic_smem())

#endif

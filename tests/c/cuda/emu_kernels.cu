/* Test kernels for test_cuda_emu.c, with C entry points. They run under the emulation (make cuda-emu) and, compiled
 * by nvcc, on a GPU (make cuda), so that what the emulation is checked against holds on the real thing too. */
#include "../../../csrc/ops/cuda/common.cuh"

/* a launch on a given stream (CVX_LAUNCH always uses the compute stream) */
#ifdef CVX_CUDA_EMU
#define LAUNCH_ON(stream, kernel, grid, block, smem, ...)                                                              \
    ::cvx_emu::launch_kernel(#kernel, kernel, dim3(grid), dim3(block), (size_t)(smem), (stream), ##__VA_ARGS__)
#else
#define LAUNCH_ON(stream, kernel, grid, block, smem, ...) kernel<<<(grid), (block), (smem), (stream)>>>(__VA_ARGS__)
#endif

/* every thread writes its global linear index + 1 at that index, if the built-in dimensions are the launch's */
__global__ void index_kernel(unsigned *out, dim3 grid, dim3 block) {
    const bool dims_ok = gridDim.x == grid.x && gridDim.y == grid.y && gridDim.z == grid.z && blockDim.x == block.x &&
                         blockDim.y == block.y && blockDim.z == block.z;
    const unsigned threads = blockDim.x * blockDim.y * blockDim.z;
    const unsigned b = (blockIdx.z * gridDim.y + blockIdx.y) * gridDim.x + blockIdx.x;
    const unsigned t = (threadIdx.z * blockDim.y + threadIdx.y) * blockDim.x + threadIdx.x;
    const unsigned i = b * threads + t;
    out[i] = dims_ok ? i + 1 : 0xdeadu;
}

extern "C" int emu_test_index(unsigned *out, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by,
                              unsigned bz, cudaStream_t s) {
    LAUNCH_ON(s, index_kernel, dim3(gx, gy, gz), dim3(bx, by, bz), 0, out, dim3(gx, gy, gz), dim3(bx, by, bz));
    return (int)cudaGetLastError();
}

/* per-block sum of x[0..n) by a shared-memory tree (blockDim.x a power of two <= 256) */
__global__ void block_sum_kernel(const float *x, int n, float *out) {
    __shared__ float part[256];
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    part[threadIdx.x] = i < n ? x[i] : 0.0f;
    __syncthreads();
    for (unsigned half = blockDim.x / 2; half > 0; half /= 2) {
        if (threadIdx.x < half) part[threadIdx.x] += part[threadIdx.x + half];
        __syncthreads();
    }
    if (threadIdx.x == 0) out[blockIdx.x] = part[0];
}

extern "C" int emu_test_block_sum(const float *x, int n, float *out, int threads, cudaStream_t s) {
    LAUNCH_ON(s, block_sum_kernel, (n + threads - 1) / threads, threads, 0, x, n, out);
    return (int)cudaGetLastError();
}

/* the same sum through dynamic shared memory (smem bytes >= blockDim.x floats) */
__global__ void block_sum_dyn_kernel(const float *x, int n, float *out) {
    CVX_DYNAMIC_SMEM(float, part);
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    part[threadIdx.x] = i < n ? x[i] : 0.0f;
    __syncthreads();
    for (unsigned half = blockDim.x / 2; half > 0; half /= 2) {
        if (threadIdx.x < half) part[threadIdx.x] += part[threadIdx.x + half];
        __syncthreads();
    }
    if (threadIdx.x == 0) out[blockIdx.x] = part[0];
}

extern "C" int emu_test_block_sum_dyn(const float *x, int n, float *out, int threads, size_t smem, cudaStream_t s) {
    LAUNCH_ON(s, block_sum_dyn_kernel, (n + threads - 1) / threads, threads, smem, x, n, out);
    return (int)cudaGetLastError();
}

extern "C" int emu_test_allow_dyn_smem(int bytes) {
    return (int)cudaFuncSetAttribute(block_sum_dyn_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes);
}

/* x[i] = a x[i] + b over a grid-stride loop */
__global__ void axpb_kernel(float *x, int64_t n, float a, float b) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
        x[i] = a * x[i] + b;
}

extern "C" int emu_test_axpb(float *x, int64_t n, float a, float b, cudaStream_t s) {
    LAUNCH_ON(s, axpb_kernel, cvx_cuda_blocks(n, 256), 256, 0, x, n, a, b);
    return (int)cudaGetLastError();
}

/* the same through CVX_LAUNCH, on the backend's compute stream */
extern "C" int emu_test_axpb_compute(float *x, int64_t n, float a, float b) {
    CVX_LAUNCH(axpb_kernel, cvx_cuda_blocks(n, 256), 256, 0, x, n, a, b);
    return (int)cudaGetLastError();
}

/* Divergent barriers (deadlock or undefined on a GPU: only the emulation runs them). */
__global__ void half_barrier_kernel(float *x) {
    if (threadIdx.x < blockDim.x / 2) __syncthreads();
    x[threadIdx.x] = 1.0f;
}

__global__ void early_exit_barrier_kernel(float *x, int n) {
    const int i = threadIdx.x;
    if (i >= n) return;
    __syncthreads();
    x[i] = 2.0f;
}

__global__ void two_sites_kernel(float *x) {
    if (threadIdx.x % 2) {
        x[threadIdx.x] = 1.0f;
        __syncthreads();
    } else {
        x[threadIdx.x] = 2.0f;
        __syncthreads();
    }
}

extern "C" int emu_test_divergent(int which, float *x, cudaStream_t s) {
    if (which == 0) LAUNCH_ON(s, half_barrier_kernel, 1, 64, 0, x);
    if (which == 1) LAUNCH_ON(s, early_exit_barrier_kernel, 1, 64, 0, x, 40);
    if (which == 2) LAUNCH_ON(s, two_sites_kernel, 1, 64, 0, x);
    return (int)cudaGetLastError();
}

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

/* ---- warp collectives ---- */
#define FULL 0xffffffffu
#define SHUFFLE_OUTS 11

/* SHUFFLE_OUTS results per thread of every shuffle mode and width, a butterfly sum, a ballot and __syncwarp */
__global__ void shuffle_kernel(int *out) {
    __shared__ int s[64];
    const int tid = threadIdx.x, lane = tid % 32;
    const int v = tid * 7 + 3;
    int *o = out + tid * SHUFFLE_OUTS;
    o[0] = __shfl_xor_sync(FULL, v, 5);
    o[1] = __shfl_sync(FULL, v, (lane * 11 + 3) % 32);
    o[2] = __shfl_down_sync(FULL, v, 3);
    o[3] = __shfl_up_sync(FULL, v, 2, 16);
    o[4] = __shfl_xor_sync(FULL, v, 9, 8);
    o[5] = __shfl_down_sync(FULL, v, 5, 8);
    o[6] = __shfl_sync(FULL, v, 37, 16);
    int sum = v;
    for (int m = 16; m > 0; m /= 2) sum += __shfl_xor_sync(FULL, sum, m);
    o[7] = sum;
    o[8] = (int)__ballot_sync(FULL, v % 3 == 0);
    const float f = __shfl_xor_sync(FULL, (float)v * 0.5f, 16);
    o[9] = (int)(f * 2.0f);
    s[tid] = v;
    __syncwarp();
    o[10] = s[tid ^ 1];
}

extern "C" int emu_test_shuffle(int *out, cudaStream_t s) {
    LAUNCH_ON(s, shuffle_kernel, 1, 64, 0, out);
    return (int)cudaGetLastError();
}

/* half a warp shuffles, or the two halves call different collectives: a hang or undefined on a GPU */
__global__ void divergent_shuffle_kernel(int *out, int mixed) {
    int v = threadIdx.x;
    if (threadIdx.x % 32 < 16)
        v = __shfl_xor_sync(FULL, v, 1);
    else if (mixed)
        __syncwarp();
    out[threadIdx.x] = v;
}

extern "C" int emu_test_divergent_shuffle(int *out, int mixed, cudaStream_t s) {
    LAUNCH_ON(s, divergent_shuffle_kernel, 1, 64, 0, out, mixed);
    return (int)cudaGetLastError();
}

/* ---- atomics: every thread of 8 blocks of 128 adds 1.0f, its thread index, and offers a maximum ---- */
__global__ void atomics_kernel(float *fsum, int *isum, int *imax) {
    atomicAdd(fsum, 1.0f);
    atomicAdd(isum, (int)threadIdx.x);
    atomicMax(imax, (int)(blockIdx.x * 1000 + threadIdx.x));
}

extern "C" int emu_test_atomics(float *fsum, int *isum, int *imax, cudaStream_t s) {
    LAUNCH_ON(s, atomics_kernel, 8, 128, 0, fsum, isum, imax);
    return (int)cudaGetLastError();
}

/* ---- one warp's mma.m16n8k16: fragments loaded as the PTX ISA lays them out (g = lane / 4, t = lane % 4) ----
 * A [16][16] and B [16][8] (k rows, n columns) are 16-bit patterns, C and D [16][8] f32; D may be computed in place
 * over the accumulator registers, as kernels do. */
__global__ void mma_kernel(const uint16_t *A, const uint16_t *B, const float *C, float *D, int bf16) {
    const unsigned lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
    uint32_t a[4], b[2];
    float acc[4];
    for (unsigned r = 0; r < 4; r++) {
        const unsigned row = g + 8 * (r & 1), col = 2 * t + 8 * (r >> 1);
        a[r] = (uint32_t)A[row * 16 + col] | (uint32_t)A[row * 16 + col + 1] << 16;
    }
    for (unsigned r = 0; r < 2; r++) {
        const unsigned k = 2 * t + 8 * r;
        b[r] = (uint32_t)B[k * 8 + g] | (uint32_t)B[(k + 1) * 8 + g] << 16;
    }
    for (unsigned i = 0; i < 4; i++) acc[i] = C[(g + 8 * (i >> 1)) * 8 + 2 * t + (i & 1)];
    if (bf16)
        cvx_mma_m16n8k16_bf16(acc, a, b, acc);
    else
        cvx_mma_m16n8k16_f16(acc, a, b, acc);
    for (unsigned i = 0; i < 4; i++) D[(g + 8 * (i >> 1)) * 8 + 2 * t + (i & 1)] = acc[i];
}

extern "C" int emu_test_mma(const uint16_t *A, const uint16_t *B, const float *C, float *D, int bf16, cudaStream_t s) {
    LAUNCH_ON(s, mma_kernel, 1, 32, 0, A, B, C, D, bf16);
    return (int)cudaGetLastError();
}

/* ---- conversions and device math ---- */
__global__ void narrow_kernel(const float *x, uint16_t *h, uint16_t *bf, int n) {
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) {
        h[i] = __half_as_ushort(__float2half_rn(x[i]));
        bf[i] = __bfloat16_as_ushort(__float2bfloat16_rn(x[i]));
    }
}

__global__ void widen_kernel(const uint16_t *bits, float *from_h, float *from_bf, int n) {
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) {
        from_h[i] = __half2float(__ushort_as_half(bits[i]));
        from_bf[i] = __bfloat162float(__ushort_as_bfloat16(bits[i]));
    }
}

__global__ void rsqrt_kernel(const float *x, float *y, int n) {
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) y[i] = rsqrtf(x[i]);
}

extern "C" int emu_test_narrow(const float *x, uint16_t *h, uint16_t *bf, int n, cudaStream_t s) {
    LAUNCH_ON(s, narrow_kernel, cvx_cuda_blocks(n, 256), 256, 0, x, h, bf, n);
    return (int)cudaGetLastError();
}

extern "C" int emu_test_widen(const uint16_t *bits, float *from_h, float *from_bf, int n, cudaStream_t s) {
    LAUNCH_ON(s, widen_kernel, cvx_cuda_blocks(n, 256), 256, 0, bits, from_h, from_bf, n);
    return (int)cudaGetLastError();
}

extern "C" int emu_test_rsqrt(const float *x, float *y, int n, cudaStream_t s) {
    LAUNCH_ON(s, rsqrt_kernel, cvx_cuda_blocks(n, 256), 256, 0, x, y, n);
    return (int)cudaGetLastError();
}

/* The CUDA runtime state of the process: one device, chosen by the first cvx_cuda_init, with a compute stream (every
 * op), a copy stream (weight groups), cuBLAS and cuBLASLt handles bound to the compute stream and their workspace.
 * Device memory, the copy queue and the fences are in alloc.cu and queue.cu. */
#include <cublasLt.h>
#include <cublas_v2.h>
#include <pthread.h>

#include "common.cuh"

namespace {
struct cuda_state {
    int ready, device;
    cudaStream_t compute, copy;
    cublasHandle_t blas;
    cublasLtHandle_t lt;
    void *workspace;
    size_t workspace_bytes;
};
cuda_state S;
pthread_mutex_t init_lock = PTHREAD_MUTEX_INITIALIZER;
const size_t WORKSPACE_BYTES = (size_t)32 << 20; /* cuBLASLt's recommended size on Hopper */
} // namespace

extern "C" int cvx_cuda_device_count(void) {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
        cudaGetLastError(); /* clear the sticky error: no driver or no device is an answer, not a failure */
        return 0;
    }
    return n;
}

extern "C" cvx_status cvx_cuda_fail(int cuda_error, const char *call, const char *file, int line) {
    const cudaError_t e = (cudaError_t)cuda_error;
    cudaGetLastError(); /* a launch error is sticky until read; a memory error must not fail the next call too */
    return cvx_error_set(e == cudaErrorMemoryAllocation ? CVX_ERR_OOM : CVX_ERR_INTERNAL, file, line,
                         "cuda: %s failed: %s (%s)", call, cudaGetErrorString(e), cudaGetErrorName(e));
}

static cvx_status init_locked(int device_index) {
    if (S.ready) {
        if (device_index == S.device) return CVX_OK;
        return CVX_FAIL(CVX_ERR_INVALID, "cuda:%d was asked for, but this process already runs on cuda:%d",
                        device_index, S.device);
    }
    const int n = cvx_cuda_device_count();
    if (device_index < 0 || device_index >= n)
        return CVX_FAIL(CVX_ERR_INVALID, "cuda:%d does not exist (%d CUDA device%s found)", device_index, n,
                        n == 1 ? "" : "s");
    CVX_CU(cudaSetDevice(device_index));
    CVX_CU(cudaStreamCreateWithFlags(&S.compute, cudaStreamNonBlocking));
    CVX_CU(cudaStreamCreateWithFlags(&S.copy, cudaStreamNonBlocking));
    if (cublasCreate(&S.blas) != CUBLAS_STATUS_SUCCESS) return CVX_FAIL(CVX_ERR_INTERNAL, "cuda: cublasCreate failed");
    if (cublasSetStream(S.blas, S.compute) != CUBLAS_STATUS_SUCCESS)
        return CVX_FAIL(CVX_ERR_INTERNAL, "cuda: cublasSetStream failed");
    if (cublasLtCreate(&S.lt) != CUBLAS_STATUS_SUCCESS)
        return CVX_FAIL(CVX_ERR_INTERNAL, "cuda: cublasLtCreate failed");
    CVX_CU(cudaMalloc(&S.workspace, WORKSPACE_BYTES));
    S.workspace_bytes = WORKSPACE_BYTES;
    if (cublasSetWorkspace(S.blas, S.workspace, S.workspace_bytes) != CUBLAS_STATUS_SUCCESS)
        return CVX_FAIL(CVX_ERR_INTERNAL, "cuda: cublasSetWorkspace failed");
    S.device = device_index;
    S.ready = 1;
    return CVX_OK;
}

extern "C" cvx_status cvx_cuda_init(int device_index) {
    pthread_mutex_lock(&init_lock);
    const cvx_status st = init_locked(device_index);
    pthread_mutex_unlock(&init_lock);
    return st;
}

extern "C" void *cvx_cuda_compute_stream(void) { return S.ready ? (void *)S.compute : NULL; }
extern "C" void *cvx_cuda_copy_stream(void) { return S.ready ? (void *)S.copy : NULL; }
extern "C" void *cvx_cuda_cublas(void) { return S.ready ? (void *)S.blas : NULL; }
extern "C" void *cvx_cuda_cublaslt(void) { return S.ready ? (void *)S.lt : NULL; }
extern "C" void *cvx_cuda_workspace(size_t *bytes) {
    if (bytes) *bytes = S.ready ? S.workspace_bytes : 0;
    return S.ready ? S.workspace : NULL;
}

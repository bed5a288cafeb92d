/* The CUDA runtime state of the process: one device, chosen by the first cvx_cuda_init, with a compute stream (every
 * op), a copy stream (weight groups), cuBLAS and cuBLASLt handles bound to the compute stream and their workspace.
 * Device memory, the copy queue and the fences are in alloc.cu and queue.cu. */
#include <pthread.h>

#include "blas_api.h"
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

/* The errors after which "any further CUDA work will return the same error" and "the process must be terminated and
 * relaunched" (driver_types.h): a kernel faulted. They surface at whatever call comes next, usually a later op's
 * synchronisation, so the call named is rarely the culprit. */
static int context_lost(cudaError_t e) {
    switch (e) {
    case cudaErrorIllegalAddress:
    case cudaErrorLaunchTimeout:
    case cudaErrorAssert:
    case cudaErrorHardwareStackError:
    case cudaErrorIllegalInstruction:
    case cudaErrorMisalignedAddress:
    case cudaErrorInvalidAddressSpace:
    case cudaErrorInvalidPc:
    case cudaErrorLaunchFailure: return 1;
    default: return 0;
    }
}

extern "C" cvx_status cvx_cuda_fail(int cuda_error, const char *call, const char *file, int line) {
    const cudaError_t e = (cudaError_t)cuda_error;
    cudaGetLastError(); /* a launch error is sticky until read; a memory error must not fail the next call too */
    if (context_lost(e))
        return cvx_error_set(CVX_ERR_INTERNAL, file, line,
                             "cuda: %s failed: %s (%s). The CUDA context is lost: a kernel queued before this call "
                             "faulted (not necessarily this op's; CUDA_LAUNCH_BLOCKING=1 makes the faulting launch "
                             "report itself), and every later CUDA call in this process fails: restart the process",
                             call, cudaGetErrorString(e), cudaGetErrorName(e));
    return cvx_error_set(e == cudaErrorMemoryAllocation ? CVX_ERR_OOM : CVX_ERR_INTERNAL, file, line,
                         "cuda: %s failed: %s (%s)", call, cudaGetErrorString(e), cudaGetErrorName(e));
}

/* The current device is per host thread, and only the thread that ran cvx_cuda_init made ours current: another one
 * (a Python thread, a copy thread) would allocate on device 0 and see its launches on our streams fail (a GPU-only
 * failure whenever gpu_id > 0). The getters below, which every op, alloc.cu and queue.cu call before touching CUDA,
 * bind the calling thread once. */
static __thread int bound_device = -1;
static void bind_thread(void) {
    if (S.ready && bound_device != S.device && cudaSetDevice(S.device) == cudaSuccess) bound_device = S.device;
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
    CVX_CHECK(cvx_cuda_blas_load());
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
    bound_device = device_index;
    return CVX_OK;
}

extern "C" cvx_status cvx_cuda_init(int device_index) {
    pthread_mutex_lock(&init_lock);
    const cvx_status st = init_locked(device_index);
    pthread_mutex_unlock(&init_lock);
    return st;
}

extern "C" void *cvx_cuda_compute_stream(void) {
    bind_thread();
    return S.ready ? (void *)S.compute : NULL;
}
extern "C" void *cvx_cuda_copy_stream(void) {
    bind_thread();
    return S.ready ? (void *)S.copy : NULL;
}
extern "C" void *cvx_cuda_cublas(void) {
    bind_thread();
    return S.ready ? (void *)S.blas : NULL;
}
extern "C" void *cvx_cuda_cublaslt(void) {
    bind_thread();
    return S.ready ? (void *)S.lt : NULL;
}
extern "C" void *cvx_cuda_workspace(size_t *bytes) {
    bind_thread();
    if (bytes) *bytes = S.ready ? S.workspace_bytes : 0;
    return S.ready ? S.workspace : NULL;
}

/* The CUDA runtime state (csrc/ops/cuda/device.cu): the messages of cvx_cuda_fail, and, on a machine with two
 * devices, the process on the second one: the
 * current device is per host thread, so a thread other than the one that ran cvx_cuda_init must still allocate on
 * and launch onto the chosen device. Under the emulation two devices are emulated (CVX_EMU_CUDA_DEVICES=2, set
 * before the first CUDA call); on real GPUs (make cuda) the binary skips with fewer than two. */
#define _GNU_SOURCE
#include <cuda_runtime.h>
#include <pthread.h>
#include <stdlib.h>

#include "cuda_test.h"

typedef struct {
    cvx_status alloc, fill, copy;
    float got[3];
} thread_result;

/* In a fresh thread (its current device: 0): a buffer through the memory manager, a fill kernel on the compute
 * stream, the bytes back. */
static void *other_thread(void *arg) {
    thread_result *r = arg;
    cvx_ctx ctx = cuda_ctx(CVX_F32);
    float *d = NULL;
    r->alloc = cvx_mem_alloc(CVX_DEVICE_CUDA, CVX_MEM_ACTIVATIONS, 3 * sizeof(float), (void **)&d);
    if (r->alloc != CVX_OK) return NULL;
    r->fill = cvx_cuda_fill(&ctx, d, 2.5f, 3);
    r->copy = cvx_mem_copy(r->got, d, sizeof(r->got));
    cvx_mem_free(d);
    return NULL;
}

static int64_t cuda_live(void) {
    cvx_mem_stats s;
    cvx_mem_get_stats(CVX_DEVICE_CUDA, &s);
    return s.allocated_bytes;
}

/* A kernel fault surfaces at a later call and poisons the context: the message must say so (and that the call it
 * names may not be the culprit); an out-of-memory is an OOM and says nothing of the kind. */
static void test_fail_messages(void) {
    cvx_error_clear();
    cvx_status st = cvx_cuda_fail((int)cudaErrorMisalignedAddress, "cudaStreamSynchronize(stream)", __FILE__, __LINE__);
    CVX_EXPECT(st == CVX_ERR_INTERNAL && strstr(cvx_error_message(), "cudaStreamSynchronize(stream) failed") &&
                   strstr(cvx_error_message(), "cudaErrorMisalignedAddress") &&
                   strstr(cvx_error_message(), "The CUDA context is lost") &&
                   strstr(cvx_error_message(), "CUDA_LAUNCH_BLOCKING=1"),
               "a kernel fault: %s", cvx_error_message());
    cvx_error_clear();
    st = cvx_cuda_fail((int)cudaErrorMemoryAllocation, "cudaMalloc(out, bytes)", __FILE__, __LINE__);
    CVX_EXPECT(st == CVX_ERR_OOM && strstr(cvx_error_message(), "cudaMalloc(out, bytes) failed: out of memory") &&
                   !strstr(cvx_error_message(), "context"),
               "an out-of-memory: %s", cvx_error_message());
    cvx_error_clear();
}

int main(void) {
#ifdef CVX_CUDA_EMU
    setenv("CVX_EMU_CUDA_DEVICES", "2", 1);
#endif
    test_fail_messages();
    if (cvx_cuda_device_count() < 2) {
        printf("fewer than two CUDA devices: the thread test skipped\n");
        return cvx_test_report();
    }
    CVX_EXPECT(cvx_cuda_init(1) == CVX_OK, "cvx_cuda_init(1): %s", cvx_error_message());
    const int64_t start = cuda_live();
    thread_result r = {CVX_ERR_INTERNAL, CVX_ERR_INTERNAL, CVX_ERR_INTERNAL, {0, 0, 0}};
    pthread_t t;
    CVX_EXPECT(pthread_create(&t, NULL, other_thread, &r) == 0, "pthread_create");
    pthread_join(t, NULL);
    CVX_EXPECT(r.alloc == CVX_OK, "allocation from another thread: %s", cvx_error_message());
    CVX_EXPECT(r.fill == CVX_OK, "a kernel launched from another thread: %s", cvx_error_message());
    CVX_EXPECT(r.copy == CVX_OK, "a copy from another thread: %s", cvx_error_message());
    CVX_EXPECT(r.got[0] == 2.5f && r.got[2] == 2.5f, "the fill from another thread: %g %g, expected 2.5", r.got[0],
               r.got[2]);
    CVX_EXPECT(cuda_live() == start, "nothing left allocated");
    return cvx_test_report();
}

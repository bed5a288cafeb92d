/* The CUDA emulation against what CUDA does: kernel geometry, shared memory and barriers, streams that really run
 * asynchronously (a missing wait shows), events, memory accounting, pinned/registered memory and launch errors.
 * Built twice: against the emulation (make cuda-emu, CVX_CUDA_EMU defined) and against the real runtime (make cuda);
 * the checks only the emulation can make (divergent barriers, exact memory deltas, the environment knobs) are
 * under CVX_CUDA_EMU. */
#define _GNU_SOURCE
#include <cuda_runtime.h>
#include <pthread.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "../../../csrc/core/dtype.h"
#include "../../../csrc/ops/cuda/cuda_ops.h"
#include "../cvx_test.h"

int emu_test_index(unsigned *out, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, unsigned bz,
                   cudaStream_t s);
int emu_test_block_sum(const float *x, int n, float *out, int threads, cudaStream_t s);
int emu_test_block_sum_dyn(const float *x, int n, float *out, int threads, size_t smem, cudaStream_t s);
int emu_test_allow_dyn_smem(int bytes);
int emu_test_axpb(float *x, int64_t n, float a, float b, cudaStream_t s);
int emu_test_axpb_compute(float *x, int64_t n, float a, float b);
int emu_test_divergent(int which, float *x, cudaStream_t s);
int emu_test_shuffle(int *out, cudaStream_t s);
int emu_test_divergent_shuffle(int *out, int mixed, cudaStream_t s);
int emu_test_atomics(float *fsum, int *isum, int *imax, cudaStream_t s);
int emu_test_mma(const uint16_t *A, const uint16_t *B, const float *C, float *D, int bf16, cudaStream_t s);
int emu_test_narrow(const float *x, uint16_t *h, uint16_t *bf, int n, cudaStream_t s);
int emu_test_widen(const uint16_t *bits, float *from_h, float *from_bf, int n, cudaStream_t s);
int emu_test_rsqrt(const float *x, float *y, int n, cudaStream_t s);

#define CU_OK(call) CVX_EXPECT((call) == cudaSuccess, "%s", cudaGetErrorString(cudaGetLastError()))

static double now_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

/* ---- a gate: a host function that holds its stream until the test opens it ---- */
typedef struct gate {
    pthread_mutex_t m;
    pthread_cond_t cv;
    int open;
} gate;

static void gate_init(gate *g) {
    pthread_mutex_init(&g->m, NULL);
    pthread_cond_init(&g->cv, NULL);
    g->open = 0;
}

static void gate_wait(void *p) {
    gate *g = p;
    pthread_mutex_lock(&g->m);
    while (!g->open) pthread_cond_wait(&g->cv, &g->m);
    pthread_mutex_unlock(&g->m);
}

static void gate_open(gate *g) {
    pthread_mutex_lock(&g->m);
    g->open = 1;
    pthread_cond_broadcast(&g->cv);
    pthread_mutex_unlock(&g->m);
}

static void *open_later(void *p) {
    usleep(50 * 1000);
    gate_open(p);
    return NULL;
}

#ifdef CVX_CUDA_EMU
/* a host function that breaks CUDA's rule (no CUDA calls in host functions): records what the call returned */
static void sync_from_host_func(void *p) {
    int *result = p;
    result[0] = (int)cudaDeviceSynchronize();
    result[1] = (int)cudaMemcpy(result + 2, result + 3, 4, cudaMemcpyHostToHost);
}
#endif

static void sleep_10ms(void *p) {
    (void)p;
    usleep(10 * 1000);
}

static float *dev_floats(int64_t n) {
    void *p = NULL;
    if (cudaMalloc(&p, (size_t)n * sizeof(float)) != cudaSuccess) {
        fprintf(stderr, "cudaMalloc of %lld floats failed\n", (long long)n);
        exit(2);
    }
    return p;
}

static int all_equal(const float *x, int64_t n, float v) {
    for (int64_t i = 0; i < n; i++)
        if (x[i] != v) return 0;
    return 1;
}

static void test_index(cudaStream_t s) {
    const unsigned g[3] = {3, 2, 2}, b[3] = {8, 4, 2};
    const int n = 3 * 2 * 2 * 8 * 4 * 2;
    unsigned *d = NULL, *h = xmalloc(n * sizeof(unsigned));
    CU_OK(cudaMalloc((void **)&d, n * sizeof(unsigned)));
    CU_OK(cudaMemsetAsync(d, 0, n * sizeof(unsigned), s));
    CVX_EXPECT(emu_test_index(d, g[0], g[1], g[2], b[0], b[1], b[2], s) == cudaSuccess, "launch");
    CU_OK(cudaMemcpyAsync(h, d, n * sizeof(unsigned), cudaMemcpyDeviceToHost, s));
    CU_OK(cudaStreamSynchronize(s));
    int bad = 0;
    for (int i = 0; i < n; i++) bad += h[i] != (unsigned)i + 1;
    CVX_EXPECT(bad == 0, "%d of %d threads missing or with wrong built-in dimensions", bad, n);
    CU_OK(cudaFree(d));
    free(h);
}

static void test_block_sum(cudaStream_t s) {
    const int n = 1000, threads = 256, blocks = 4;
    float *x = xmalloc(n * sizeof(float)), out[4], out_dyn[4];
    fill(x, n, 1.0f, 0.5f);
    float *dx = dev_floats(n), *dout = dev_floats(blocks);
    CU_OK(cudaMemcpyAsync(dx, x, n * sizeof(float), cudaMemcpyHostToDevice, s));
    CVX_EXPECT(emu_test_block_sum(dx, n, dout, threads, s) == cudaSuccess, "launch");
    CU_OK(cudaMemcpyAsync(out, dout, sizeof out, cudaMemcpyDeviceToHost, s));
    CVX_EXPECT(emu_test_block_sum_dyn(dx, n, dout, threads, threads * sizeof(float), s) == cudaSuccess, "launch");
    CU_OK(cudaMemcpyAsync(out_dyn, dout, sizeof out_dyn, cudaMemcpyDeviceToHost, s));
    CU_OK(cudaStreamSynchronize(s));
    for (int b = 0; b < blocks; b++) {
        double ref = 0.0;
        for (int i = b * threads; i < n && i < (b + 1) * threads; i++) ref += x[i];
        CVX_EXPECT(fabs(out[b] - ref) <= 1e-5 * fabs(ref), "block %d: static smem sum %g, expected %g", b, out[b], ref);
        CVX_EXPECT(fabs(out_dyn[b] - ref) <= 1e-5 * fabs(ref), "block %d: dynamic smem sum %g, expected %g", b,
                   out_dyn[b], ref);
    }
    /* dynamic shared memory past 48 KiB needs the attribute, as on a GPU */
    const size_t big = 64 << 10;
    CVX_EXPECT(emu_test_block_sum_dyn(dx, n, dout, threads, big, s) == cudaErrorInvalidValue,
               "64 KiB of dynamic smem without the attribute");
    CVX_EXPECT(cudaGetLastError() == cudaSuccess, "the launch error was read");
    CVX_EXPECT(emu_test_allow_dyn_smem((int)big) == cudaSuccess, "attribute");
    CU_OK(cudaMemsetAsync(dout, 0, blocks * sizeof(float), s));
    CVX_EXPECT(emu_test_block_sum_dyn(dx, n, dout, threads, big, s) == cudaSuccess, "64 KiB with the attribute");
    CU_OK(cudaMemcpyAsync(out_dyn, dout, sizeof out_dyn, cudaMemcpyDeviceToHost, s));
    CU_OK(cudaStreamSynchronize(s));
    CVX_EXPECT(out_dyn[0] == out[0] && out_dyn[3] == out[3], "64 KiB launch: %g %g, expected %g %g", out_dyn[0],
               out_dyn[3], out[0], out[3]);
    CU_OK(cudaFree(dx));
    CU_OK(cudaFree(dout));
    free(x);
}

static void test_bad_launches(cudaStream_t s) {
    float *d = dev_floats(1);
    float h = 5.0f;
    CU_OK(cudaMemcpy(d, &h, 4, cudaMemcpyHostToDevice));
    CVX_EXPECT(emu_test_index((unsigned *)d, 1, 1, 1, 1025, 1, 1, s) == cudaErrorInvalidConfiguration, "1025 threads");
    CVX_EXPECT(emu_test_index((unsigned *)d, 1, 1, 1, 32, 32, 2, s) == cudaErrorInvalidConfiguration, "2048 threads");
    CVX_EXPECT(emu_test_index((unsigned *)d, 1, 1, 1, 1, 1, 65, s) == cudaErrorInvalidConfiguration, "block.z 65");
    CVX_EXPECT(emu_test_index((unsigned *)d, 1, 65536, 1, 1, 1, 1, s) == cudaErrorInvalidConfiguration, "grid.y");
    CVX_EXPECT(emu_test_index((unsigned *)d, 0, 1, 1, 1, 1, 1, s) == cudaErrorInvalidConfiguration, "empty grid");
    CVX_EXPECT(emu_test_axpb(d, 1, 2.0f, 1.0f, s) == cudaSuccess, "a good launch after bad ones");
    CU_OK(cudaMemcpyAsync(&h, d, 4, cudaMemcpyDeviceToHost, s));
    CU_OK(cudaStreamSynchronize(s));
    CVX_EXPECT(h == 11.0f, "only the good launch ran: %g, expected 11", h);
    CU_OK(cudaFree(d));
}

/* Stream order, and a copy on one stream that must wait for a kernel on another. */
static void test_streams(cudaStream_t a, cudaStream_t b) {
    const int64_t n = 4096;
    float *d = dev_floats(n), *h = xmalloc(n * sizeof(float));
    /* in-order execution of one stream: x = 1, then 40 times x = 2x - 1 stays 1; then 3x + 1 = 4 */
    CU_OK(cudaMemsetAsync(d, 0, n * sizeof(float), a));
    CVX_EXPECT(emu_test_axpb(d, n, 0.0f, 1.0f, a) == cudaSuccess, "launch");
    for (int i = 0; i < 40; i++) emu_test_axpb(d, n, 2.0f, -1.0f, a);
    emu_test_axpb(d, n, 3.0f, 1.0f, a);
    CU_OK(cudaMemcpyAsync(h, d, n * sizeof(float), cudaMemcpyDeviceToHost, a));
    CU_OK(cudaStreamSynchronize(a));
    CVX_EXPECT(all_equal(h, n, 4.0f), "stream order: h[0] = %g, expected 4", h[0]);

    /* a holds at a gate, then writes 7; b waits for a's event, then copies: b cannot finish before the gate opens */
    gate g;
    gate_init(&g);
    cudaEvent_t written;
    CU_OK(cudaEventCreateWithFlags(&written, cudaEventDisableTiming));
    CVX_EXPECT(cudaEventQuery(written) == cudaSuccess, "an event never recorded is complete");
    memset(h, 0, n * sizeof(float));
    CU_OK(cudaLaunchHostFunc(a, gate_wait, &g));
    emu_test_axpb(d, n, 0.0f, 7.0f, a);
    CU_OK(cudaEventRecord(written, a));
    CU_OK(cudaStreamWaitEvent(b, written, 0));
    CU_OK(cudaMemcpyAsync(h, d, n * sizeof(float), cudaMemcpyDeviceToHost, b));
    usleep(20 * 1000);
    CVX_EXPECT(cudaStreamQuery(b) == cudaErrorNotReady, "b waits for a's event");
    CVX_EXPECT(cudaEventQuery(written) == cudaErrorNotReady, "the event is pending");
    CVX_EXPECT(all_equal(h, n, 0.0f), "the copy did not run before the kernel: h[0] = %g", h[0]);
    gate_open(&g);
    CU_OK(cudaStreamSynchronize(b));
    CVX_EXPECT(all_equal(h, n, 7.0f), "after the wait the copy sees the kernel's 7: h[0] = %g", h[0]);
    CVX_EXPECT(cudaEventQuery(written) == cudaSuccess, "the event completed");

    /* the same without the wait: b's copy runs while a is held, and reads the old values (what a missing
     * cross-stream wait does on a GPU, reproduced rather than hidden) */
    gate_init(&g);
    CU_OK(cudaLaunchHostFunc(a, gate_wait, &g));
    emu_test_axpb(d, n, 0.0f, 9.0f, a);
    CU_OK(cudaMemcpyAsync(h, d, n * sizeof(float), cudaMemcpyDeviceToHost, b));
    CU_OK(cudaStreamSynchronize(b));
    CVX_EXPECT(all_equal(h, n, 7.0f), "without the wait the copy ran first: h[0] = %g, expected the old 7", h[0]);
    CVX_EXPECT(cudaStreamQuery(a) == cudaErrorNotReady, "a is still held");
    gate_open(&g);
    CU_OK(cudaStreamSynchronize(a));
    CU_OK(cudaMemcpy(h, d, n * sizeof(float), cudaMemcpyDeviceToHost));
    CVX_EXPECT(all_equal(h, n, 9.0f), "a's kernel ran after the gate: h[0] = %g", h[0]);

    /* cudaFree waits for the device: a is held for 50 ms by a thread that opens its gate */
    gate_init(&g);
    float *other = dev_floats(16);
    CU_OK(cudaLaunchHostFunc(a, gate_wait, &g));
    emu_test_axpb(d, n, 0.0f, 3.0f, a);
    pthread_t opener;
    pthread_create(&opener, NULL, open_later, &g);
    const double t0 = now_s();
    CU_OK(cudaFree(other));
    const double waited = now_s() - t0;
    pthread_join(opener, NULL);
    CVX_EXPECT(waited >= 0.04, "cudaFree returned after %.3f s, before the held stream finished", waited);
    CVX_EXPECT(cudaStreamQuery(a) == cudaSuccess, "a finished by the time cudaFree returned");

#ifdef CVX_CUDA_EMU
    /* waiting for the device from a host function would wait for itself: refused, not a hang */
    int result[4] = {-1, -1, 0, 0};
    CU_OK(cudaLaunchHostFunc(a, sync_from_host_func, result));
    CU_OK(cudaStreamSynchronize(a));
    CVX_EXPECT(result[0] == cudaErrorNotPermitted && result[1] == cudaErrorNotPermitted,
               "CUDA calls in a host function: %d %d, expected cudaErrorNotPermitted", result[0], result[1]);
#endif

    /* events: timing, and the errors of an event without timing */
    cudaEvent_t t_start, t_end;
    CU_OK(cudaEventCreate(&t_start));
    CU_OK(cudaEventCreate(&t_end));
    float ms = -1.0f;
    CVX_EXPECT(cudaEventElapsedTime(&ms, t_start, t_end) == cudaErrorInvalidResourceHandle, "not recorded yet");
    CU_OK(cudaEventRecord(t_start, a));
    CU_OK(cudaLaunchHostFunc(a, sleep_10ms, NULL));
    CU_OK(cudaEventRecord(t_end, a));
    CU_OK(cudaEventSynchronize(t_end));
    CU_OK(cudaEventElapsedTime(&ms, t_start, t_end));
    CVX_EXPECT(ms >= 9.0f && ms < 1000.0f, "elapsed %.3f ms over a 10 ms host function", ms);
    CU_OK(cudaEventRecord(written, a));
    CU_OK(cudaEventSynchronize(written));
    CVX_EXPECT(cudaEventElapsedTime(&ms, t_start, written) == cudaErrorInvalidResourceHandle,
               "an event created with cudaEventDisableTiming has no time");
    CVX_EXPECT(cudaGetLastError() == cudaErrorInvalidResourceHandle, "the error is the last error");
    CU_OK(cudaEventDestroy(t_start));
    CU_OK(cudaEventDestroy(t_end));
    CU_OK(cudaEventDestroy(written));
    CU_OK(cudaFree(d));
    free(h);
}

static void test_memory(void) {
    size_t free0, total, free1, free2;
    CU_OK(cudaMemGetInfo(&free0, &total));
    const size_t bytes = 3 << 20;
    void *p = NULL;
    CU_OK(cudaMalloc(&p, bytes));
    CU_OK(cudaMemGetInfo(&free1, &total));
#ifdef CVX_CUDA_EMU
    CVX_EXPECT(total == (size_t)256 << 20, "total %zu: CVX_EMU_CUDA_MEMORY is 256 MiB", total);
    CVX_EXPECT(free0 - free1 == bytes, "cudaMalloc(%zu) took %zu bytes of cudaMemGetInfo's free", bytes, free0 - free1);
#else
    CVX_EXPECT(free0 - free1 >= bytes && free0 - free1 <= bytes + (2 << 20), "cudaMalloc(%zu) took %zu", bytes,
               free0 - free1);
#endif
    CU_OK(cudaFree(p));
    CU_OK(cudaMemGetInfo(&free2, &total));
    CVX_EXPECT(free2 == free0, "cudaFree gave back %zu of %zu bytes", free2 - free1, free0 - free1);
    CVX_EXPECT(cudaMalloc(&p, total + 1) == cudaErrorMemoryAllocation, "more than the device has");
    CVX_EXPECT(p == NULL, "a failed cudaMalloc returns NULL");
    CVX_EXPECT(cudaGetLastError() == cudaErrorMemoryAllocation, "the failure is the last error");
    CVX_EXPECT(cudaGetLastError() == cudaSuccess, "and reading it cleared it");
    CVX_EXPECT(strcmp(cudaGetErrorString(cudaErrorMemoryAllocation), "out of memory") == 0, "error string");
    CVX_EXPECT(strcmp(cudaGetErrorName(cudaErrorMemoryAllocation), "cudaErrorMemoryAllocation") == 0, "error name");
    CVX_EXPECT(cudaFree(p) == cudaSuccess, "cudaFree(NULL) is a no-op");

    /* registered host memory: overlapping registrations are refused, as CUDA does */
    const size_t hb = 1 << 20;
    char *host = NULL;
    CVX_EXPECT(posix_memalign((void **)&host, 4096, hb) == 0, "host buffer");
    CU_OK(cudaHostRegister(host, hb, cudaHostRegisterDefault));
    CVX_EXPECT(cudaHostRegister(host + 4096, 4096, 0) == cudaErrorHostMemoryAlreadyRegistered, "inside");
    CVX_EXPECT(cudaHostRegister(host + hb - 4096, 8192, 0) == cudaErrorHostMemoryAlreadyRegistered, "straddling");
    CVX_EXPECT(cudaHostUnregister(host + 4096) == cudaErrorHostMemoryNotRegistered, "not a registered base");
    CU_OK(cudaHostUnregister(host));
    CVX_EXPECT(cudaHostUnregister(host) == cudaErrorHostMemoryNotRegistered, "twice");
    cudaGetLastError();
    free(host);

    /* pinned memory round trip */
    float *pinned = NULL, *d = dev_floats(256);
    CU_OK(cudaHostAlloc((void **)&pinned, 256 * sizeof(float), cudaHostAllocDefault));
    for (int i = 0; i < 256; i++) pinned[i] = (float)i;
    CU_OK(cudaMemcpy(d, pinned, 256 * sizeof(float), cudaMemcpyDefault));
    memset(pinned, 0, 256 * sizeof(float));
    CU_OK(cudaMemcpy(pinned, d, 256 * sizeof(float), cudaMemcpyDeviceToHost));
    CVX_EXPECT(pinned[255] == 255.0f && pinned[17] == 17.0f, "pinned round trip");
#ifdef CVX_CUDA_EMU
    CVX_EXPECT(cudaHostRegister(pinned, 64, 0) == cudaErrorHostMemoryAlreadyRegistered, "cudaHostAlloc'd memory");
    /* copies whose pointers are not what the kind says, or that run past an allocation */
    CVX_EXPECT(cudaMemcpy(pinned, d, 256 * sizeof(float), cudaMemcpyHostToDevice) == cudaErrorInvalidValue, "H2D");
    CVX_EXPECT(cudaMemcpy(d, pinned, 257 * sizeof(float), cudaMemcpyHostToDevice) == cudaErrorInvalidValue, "past");
    CVX_EXPECT(cudaMemsetAsync(pinned, 0, 16, 0) == cudaErrorInvalidValue, "memset of host memory");
    cudaGetLastError();
#endif
    CU_OK(cudaFreeHost(pinned));
    CU_OK(cudaFree(d));

    /* 2D copy: a 3 x 5 box out of rows of 8 */
    float src[4 * 8], back[3 * 5];
    for (int i = 0; i < 32; i++) src[i] = (float)i;
    float *d2 = dev_floats(3 * 5);
    CU_OK(cudaMemcpy2DAsync(d2, 5 * sizeof(float), src + 9, 8 * sizeof(float), 5 * sizeof(float), 3,
                            cudaMemcpyHostToDevice, 0));
    CU_OK(cudaMemcpy(back, d2, sizeof back, cudaMemcpyDeviceToHost));
    int bad = 0;
    for (int r = 0; r < 3; r++)
        for (int c = 0; c < 5; c++) bad += back[r * 5 + c] != src[9 + r * 8 + c];
    CVX_EXPECT(bad == 0, "2D copy: %d wrong", bad);
    CVX_EXPECT(cudaMemcpy2DAsync(d2, 4, src, 8, 5, 1, cudaMemcpyHostToDevice, 0) == cudaErrorInvalidPitchValue,
               "width past the pitch");
    cudaGetLastError();
    CU_OK(cudaFree(d2));
}

static void test_devices(void) {
    int n = -1, dev = -1;
    CU_OK(cudaGetDeviceCount(&n));
    CVX_EXPECT(n >= 1 && cvx_cuda_device_count() == n, "%d devices, backend says %d", n, cvx_cuda_device_count());
    CVX_EXPECT(cudaSetDevice(n) == cudaErrorInvalidDevice, "device %d does not exist", n);
    cudaGetLastError();
    CU_OK(cudaGetDevice(&dev));
    CVX_EXPECT(dev == 0, "current device %d", dev);
    struct cudaDeviceProp prop;
    CU_OK(cudaGetDeviceProperties(&prop, 0));
    CVX_EXPECT(prop.warpSize == 32 && prop.maxThreadsPerBlock == 1024 && prop.major >= 8, "properties");
#ifdef CVX_CUDA_EMU
    CVX_EXPECT(strcmp(prop.name, "emulated CUDA device") == 0 && prop.major == 9 && prop.minor == 0, "%s sm_%d%d",
               prop.name, prop.major, prop.minor);
#endif
}

/* ---- warp collectives: every shuffle mode against the CUDA Programming Guide's rules, computed here ---- */
#define SHUFFLE_OUTS 11
static int shuffle_value(int tid) { return tid * 7 + 3; }

/* the value lane `lane` of the warp starting at thread `base` receives from `src`, or its own when the mode may
 * not read there: up reads no lower than its segment's first lane, the others no higher than its last */
static int shuffled(int base, int lane, int src, int width, int up) {
    const int first = lane & ~(width - 1), last = first + width - 1;
    const int ok = up ? src >= first : src <= last;
    return shuffle_value(base + (ok ? src : lane));
}

static void test_shuffles(cudaStream_t s) {
    const int n = 64;
    int *d = NULL, h[64 * SHUFFLE_OUTS];
    CU_OK(cudaMalloc((void **)&d, sizeof h));
    CVX_EXPECT(emu_test_shuffle(d, s) == cudaSuccess, "launch");
    CU_OK(cudaMemcpyAsync(h, d, sizeof h, cudaMemcpyDeviceToHost, s));
    CU_OK(cudaStreamSynchronize(s));
    int bad[SHUFFLE_OUTS] = {0};
    for (int tid = 0; tid < n; tid++) {
        const int base = tid & ~31, l = tid % 32;
        int sum = 0;
        unsigned ballot = 0;
        for (int j = 0; j < 32; j++) {
            sum += shuffle_value(base + j);
            ballot |= (unsigned)(shuffle_value(base + j) % 3 == 0) << j;
        }
        const int want[SHUFFLE_OUTS] = {
            shuffle_value(base + (l ^ 5)),
            shuffle_value(base + (l * 11 + 3) % 32),
            shuffled(base, l, l + 3, 32, 0),
            shuffled(base, l, l - 2, 16, 1),
            shuffled(base, l, l ^ 9, 8, 0),
            shuffled(base, l, l + 5, 8, 0),
            shuffle_value(base + (l & ~15) + (37 & 15)),
            sum,
            (int)ballot,
            shuffle_value(base + (l ^ 16)),
            shuffle_value(tid ^ 1),
        };
        for (int k = 0; k < SHUFFLE_OUTS; k++) bad[k] += h[tid * SHUFFLE_OUTS + k] != want[k];
    }
    static const char *what[SHUFFLE_OUTS] = {"xor 5",           "idx",
                                             "down 3",          "up 2 width 16",
                                             "xor 9 width 8",   "down 5 width 8",
                                             "idx 37 width 16", "xor butterfly sum",
                                             "ballot",          "float xor 16",
                                             "__syncwarp"};
    for (int k = 0; k < SHUFFLE_OUTS; k++) CVX_EXPECT(bad[k] == 0, "%s: %d of %d lanes wrong", what[k], bad[k], n);
    CU_OK(cudaFree(d));
}

static void test_atomics(cudaStream_t s) {
    float *fsum = dev_floats(1);
    int *ints = NULL;
    CU_OK(cudaMalloc((void **)&ints, 2 * sizeof(int)));
    CU_OK(cudaMemsetAsync(fsum, 0, sizeof(float), s));
    CU_OK(cudaMemsetAsync(ints, 0, 2 * sizeof(int), s));
    CVX_EXPECT(emu_test_atomics(fsum, ints, ints + 1, s) == cudaSuccess, "launch");
    float f = 0.0f;
    int i[2] = {0, 0};
    CU_OK(cudaMemcpyAsync(&f, fsum, sizeof f, cudaMemcpyDeviceToHost, s));
    CU_OK(cudaMemcpyAsync(i, ints, sizeof i, cudaMemcpyDeviceToHost, s));
    CU_OK(cudaStreamSynchronize(s));
    CVX_EXPECT(f == 1024.0f, "atomicAdd(float) of 1 by 1024 threads: %g", f);
    CVX_EXPECT(i[0] == 8 * (127 * 128 / 2), "atomicAdd(int) of thread indices: %d, expected %d", i[0], 8 * 127 * 64);
    CVX_EXPECT(i[1] == 7127, "atomicMax: %d, expected 7127", i[1]);
    CU_OK(cudaFree(fsum));
    CU_OK(cudaFree(ints));
}

/* mma.m16n8k16 against a plain matrix product in double: exact for small integers (every product and partial sum
 * is exact in f32), within f32 accumulation's rounding for random values */
static void test_mma(cudaStream_t s) {
    uint16_t A[16 * 16], B[16 * 8];
    float C[16 * 8], D[16 * 8];
    uint16_t *dA = NULL, *dB = NULL;
    CU_OK(cudaMalloc((void **)&dA, sizeof A));
    CU_OK(cudaMalloc((void **)&dB, sizeof B));
    float *dC = dev_floats(16 * 8), *dD = dev_floats(16 * 8);
    for (int bf16 = 0; bf16 < 2; bf16++)
        for (int integers = 1; integers >= 0; integers--) {
            uint16_t (*narrow)(float) = bf16 ? cvx_f32_to_bf16 : cvx_f32_to_f16;
            float (*widen)(uint16_t) = bf16 ? cvx_bf16_to_f32 : cvx_f16_to_f32;
            for (int i = 0; i < 16 * 16; i++) A[i] = narrow(integers ? (float)((i * 7) % 7 - 3) : frand());
            for (int i = 0; i < 16 * 8; i++) B[i] = narrow(integers ? (float)((i * 5) % 9 - 4) : frand() * 4.0f);
            for (int i = 0; i < 16 * 8; i++) C[i] = integers ? (float)(i % 11 - 5) : frand();
            CU_OK(cudaMemcpyAsync(dA, A, sizeof A, cudaMemcpyHostToDevice, s));
            CU_OK(cudaMemcpyAsync(dB, B, sizeof B, cudaMemcpyHostToDevice, s));
            CU_OK(cudaMemcpyAsync(dC, C, sizeof C, cudaMemcpyHostToDevice, s));
            CVX_EXPECT(emu_test_mma(dA, dB, dC, dD, bf16, s) == cudaSuccess, "launch");
            CU_OK(cudaMemcpyAsync(D, dD, sizeof D, cudaMemcpyDeviceToHost, s));
            CU_OK(cudaStreamSynchronize(s));
            double worst = 0.0;
            int exact_misses = 0;
            for (int m = 0; m < 16; m++)
                for (int n = 0; n < 8; n++) {
                    double ref = C[m * 8 + n], mag = fabs(ref);
                    for (int k = 0; k < 16; k++) {
                        const double p = (double)widen(A[m * 16 + k]) * (double)widen(B[k * 8 + n]);
                        ref += p;
                        mag += fabs(p);
                    }
                    const double err = fabs(D[m * 8 + n] - ref) / (mag > 0 ? mag : 1.0);
                    if (err > worst) worst = err;
                    exact_misses += (double)D[m * 8 + n] != ref;
                }
            if (integers)
                CVX_EXPECT(exact_misses == 0, "%s mma, integers: %d of 128 not exact", bf16 ? "bf16" : "f16",
                           exact_misses);
            else
                CVX_EXPECT(worst <= 2e-6, "%s mma: error %.3g of the sum of |terms| (f32 accumulation: < 16 ulp)",
                           bf16 ? "bf16" : "f16", worst);
        }
    CU_OK(cudaFree(dA));
    CU_OK(cudaFree(dB));
    CU_OK(cudaFree(dC));
    CU_OK(cudaFree(dD));
}

static int is_nan_f16(uint16_t h) { return (h & 0x7c00u) == 0x7c00u && (h & 0x3ffu); }
static int is_nan_bf16(uint16_t h) { return (h & 0x7f80u) == 0x7f80u && (h & 0x7fu); }

static float bits_to_f32(uint32_t u) {
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* __float2half_rn / __float2bfloat16_rn and the widenings, bit for bit against core/dtype.c: every 16-bit
 * pattern, every rounding tie between neighbours and one float either side of it, random floats, overflow and
 * subnormal edges. A NaN only has to stay a NaN (CUDA gives the canonical one, dtype.c keeps the payload). */
static void test_conversions(cudaStream_t s) {
    const int cap = 65536 * 14 + 100000 + 16;
    float *x = xmalloc(cap * sizeof(float));
    int n = 0;
    for (int b = 0; b < 65536; b++) x[n++] = cvx_f16_to_f32((uint16_t)b);
    for (int b = 0; b < 65536; b++) x[n++] = cvx_bf16_to_f32((uint16_t)b);
    for (int bf = 0; bf < 2; bf++)
        for (int b = 0; b < 65535; b++) {
            if ((b & 0x7fff) == 0x7fff) continue; /* crossing the sign */
            const float lo = bf ? cvx_bf16_to_f32((uint16_t)b) : cvx_f16_to_f32((uint16_t)b);
            const float hi = bf ? cvx_bf16_to_f32((uint16_t)(b + 1)) : cvx_f16_to_f32((uint16_t)(b + 1));
            if (!isfinite(lo) || !isfinite(hi)) continue;
            const float mid = (float)(((double)lo + (double)hi) / 2.0); /* exact: one more bit than the type */
            x[n++] = mid;
            x[n++] = nextafterf(mid, -INFINITY);
            x[n++] = nextafterf(mid, INFINITY);
        }
    for (int i = 0; i < 100000; i++) {
        cvx_test_rng_ ^= cvx_test_rng_ << 13, cvx_test_rng_ ^= cvx_test_rng_ >> 7, cvx_test_rng_ ^= cvx_test_rng_ << 17;
        x[n++] = bits_to_f32((uint32_t)cvx_test_rng_);
    }
    const float edges[] = {65504.0f,      65519.99f, 65520.0f, 65536.0f, 5.9604645e-8f, 2.9802322e-8f,
                           2.9802326e-8f, 1e-30f,    3.4e38f,  INFINITY, -INFINITY,     NAN,
                           -NAN,          0.0f,      -0.0f,    1.0f};
    for (size_t i = 0; i < sizeof edges / sizeof edges[0]; i++) x[n++] = edges[i];
    CVX_EXPECT(n <= cap, "%d values", n);

    float *dx = dev_floats(n);
    uint16_t *dh = NULL, *dbf = NULL, *h = xmalloc(n * 2), *bf = xmalloc(n * 2);
    CU_OK(cudaMalloc((void **)&dh, (size_t)n * 2));
    CU_OK(cudaMalloc((void **)&dbf, (size_t)n * 2));
    CU_OK(cudaMemcpyAsync(dx, x, (size_t)n * 4, cudaMemcpyHostToDevice, s));
    CVX_EXPECT(emu_test_narrow(dx, dh, dbf, n, s) == cudaSuccess, "launch");
    CU_OK(cudaMemcpyAsync(h, dh, (size_t)n * 2, cudaMemcpyDeviceToHost, s));
    CU_OK(cudaMemcpyAsync(bf, dbf, (size_t)n * 2, cudaMemcpyDeviceToHost, s));
    CU_OK(cudaStreamSynchronize(s));
    int bad_h = 0, bad_bf = 0;
    for (int i = 0; i < n; i++) {
        if (isnan(x[i])) {
            bad_h += !is_nan_f16(h[i]);
            bad_bf += !is_nan_bf16(bf[i]);
        } else {
            bad_h += h[i] != cvx_f32_to_f16(x[i]);
            bad_bf += bf[i] != cvx_f32_to_bf16(x[i]);
        }
    }
    CVX_EXPECT(bad_h == 0, "__float2half_rn differs from cvx_f32_to_f16 on %d of %d", bad_h, n);
    CVX_EXPECT(bad_bf == 0, "__float2bfloat16_rn differs from cvx_f32_to_bf16 on %d of %d", bad_bf, n);

    /* widening every pattern */
    uint16_t *bits = h; /* reused */
    for (int b = 0; b < 65536; b++) bits[b] = (uint16_t)b;
    float *from_h = x, *from_bf = x + 65536;
    CU_OK(cudaMemcpyAsync(dh, bits, 65536 * 2, cudaMemcpyHostToDevice, s));
    CVX_EXPECT(emu_test_widen(dh, dx, dx + 65536, 65536, s) == cudaSuccess, "launch");
    CU_OK(cudaMemcpyAsync(x, dx, 2 * 65536 * 4, cudaMemcpyDeviceToHost, s));
    CU_OK(cudaStreamSynchronize(s));
    int bad_wh = 0, bad_wbf = 0;
    for (int b = 0; b < 65536; b++) {
        const float rh = cvx_f16_to_f32((uint16_t)b), rbf = cvx_bf16_to_f32((uint16_t)b);
        bad_wh += isnan(rh) ? !isnan(from_h[b]) : memcmp(&rh, &from_h[b], 4) != 0;
        bad_wbf += isnan(rbf) ? !isnan(from_bf[b]) : memcmp(&rbf, &from_bf[b], 4) != 0;
    }
    CVX_EXPECT(bad_wh == 0, "__half2float differs from cvx_f16_to_f32 on %d patterns", bad_wh);
    CVX_EXPECT(bad_wbf == 0, "__bfloat162float differs from cvx_bf16_to_f32 on %d patterns", bad_wbf);
    CU_OK(cudaFree(dx));
    CU_OK(cudaFree(dh));
    CU_OK(cudaFree(dbf));
    free(x);
    free(h);
    free(bf);
}

static void test_rsqrt(cudaStream_t s) {
    const int n = 20000;
    float *x = xmalloc(n * 4), *y = xmalloc(n * 4);
    for (int i = 0; i < n; i++) x[i] = ldexpf(1.0f + 0.5f * (frand() + 1.0f), (i % 200) - 100);
    float *dx = dev_floats(n), *dy = dev_floats(n);
    CU_OK(cudaMemcpyAsync(dx, x, n * 4, cudaMemcpyHostToDevice, s));
    CVX_EXPECT(emu_test_rsqrt(dx, dy, n, s) == cudaSuccess, "launch");
    CU_OK(cudaMemcpyAsync(y, dy, n * 4, cudaMemcpyDeviceToHost, s));
    CU_OK(cudaStreamSynchronize(s));
    double worst = 0.0;
    for (int i = 0; i < n; i++) {
        const double ref = 1.0 / sqrt((double)x[i]), err = fabs(y[i] - ref) / ref;
        if (err > worst) worst = err;
    }
    CVX_EXPECT(worst <= 2.0 * 1.1920929e-7, "rsqrtf: relative error %.3g (CUDA: 2 ulp)", worst);
    CU_OK(cudaFree(dx));
    CU_OK(cudaFree(dy));
    free(x);
    free(y);
}

#ifdef CVX_CUDA_EMU
/* Barriers not reached by every thread of the block: reported as a launch failure, not a hang. */
static void test_divergent_barriers(cudaStream_t s) {
    float *d = dev_floats(64);
    for (int which = 0; which < 3; which++) {
        gate g; /* the kernel runs after the launch's own error was read */
        gate_init(&g);
        CU_OK(cudaLaunchHostFunc(s, gate_wait, &g));
        CVX_EXPECT(emu_test_divergent(which, d, s) == cudaSuccess, "the launch itself is valid");
        gate_open(&g);
        CVX_EXPECT(cudaStreamSynchronize(s) == cudaErrorLaunchFailure, "kernel %d: divergent barrier detected", which);
        CVX_EXPECT(cudaGetLastError() == cudaErrorLaunchFailure, "reported by cudaGetLastError");
        CVX_EXPECT(cudaGetLastError() == cudaSuccess, "once");
    }
    /* warp collectives that half a warp reaches, or that the halves reach differently */
    int *di = NULL;
    CU_OK(cudaMalloc((void **)&di, 64 * sizeof(int)));
    for (int mixed = 0; mixed < 2; mixed++) {
        gate g;
        gate_init(&g);
        CU_OK(cudaLaunchHostFunc(s, gate_wait, &g));
        CVX_EXPECT(emu_test_divergent_shuffle(di, mixed, s) == cudaSuccess, "the launch itself is valid");
        gate_open(&g);
        CVX_EXPECT(cudaStreamSynchronize(s) == cudaErrorLaunchFailure, "divergent shuffle (mixed %d) detected", mixed);
        CVX_EXPECT(cudaGetLastError() == cudaErrorLaunchFailure, "reported by cudaGetLastError");
    }
    CU_OK(cudaFree(di));
    /* the stream and its fibers work after an abandoned block */
    float h = 0.0f;
    CU_OK(cudaMemsetAsync(d, 0, 4, s));
    emu_test_axpb(d, 1, 1.0f, 2.5f, s);
    CU_OK(cudaMemcpyAsync(&h, d, 4, cudaMemcpyDeviceToHost, s));
    CU_OK(cudaStreamSynchronize(s));
    CVX_EXPECT(h == 2.5f, "after the failures: %g", h);
    CU_OK(cudaFree(d));
}

/* a child forked while streams exist has no worker threads for them: using one fails instead of hanging */
static void test_fork_with_streams(cudaStream_t s) {
    fflush(stdout);
    const pid_t pid = fork();
    if (pid == 0) {
        float x = 0.0f;
        const int ok = cudaLaunchHostFunc(s, sleep_10ms, NULL) == cudaErrorInvalidResourceHandle &&
                       cudaStreamSynchronize(s) == cudaErrorInvalidResourceHandle &&
                       cudaMemcpy(&x, &x, 4, cudaMemcpyHostToHost) == cudaSuccess;
        _exit(ok ? 0 : 1);
    }
    int status = 0;
    waitpid(pid, &status, 0);
    CVX_EXPECT(WIFEXITED(status) && WEXITSTATUS(status) == 0, "a forked child's streams are refused");
}

/* CVX_EMU_CUDA_DEVICES=0: a machine without a device, in a child process (the setting is read once) */
static void test_no_device(void) {
    const pid_t pid = fork();
    if (pid == 0) {
        setenv("CVX_EMU_CUDA_DEVICES", "0", 1);
        int n = -1;
        void *p = NULL;
        const int ok = cudaGetDeviceCount(&n) == cudaErrorNoDevice && n == 0 && cvx_cuda_device_count() == 0 &&
                       cudaMalloc(&p, 16) == cudaErrorNoDevice && cvx_cuda_init(0) == CVX_ERR_INVALID;
        cvx_error_clear();
        _exit(ok ? 0 : 1);
    }
    int status = 0;
    waitpid(pid, &status, 0);
    CVX_EXPECT(WIFEXITED(status) && WEXITSTATUS(status) == 0, "CVX_EMU_CUDA_DEVICES=0 gives no device");
}
#endif

/* an elementwise kernel over 1e6 elements, through the backend's compute stream */
static void test_compute_stream_speed(void) {
    CVX_EXPECT(cvx_cuda_init(0) == CVX_OK, "cvx_cuda_init: %s", cvx_error_message());
    cudaStream_t s = (cudaStream_t)cvx_cuda_compute_stream();
    const int64_t n = 1000000;
    float *d = dev_floats(n), *h = xmalloc(n * sizeof(float));
    for (int64_t i = 0; i < n; i++) h[i] = (float)(i % 1000);
    CU_OK(cudaMemcpyAsync(d, h, n * sizeof(float), cudaMemcpyHostToDevice, s));
    CU_OK(cudaStreamSynchronize(s));
    const double t0 = now_s();
    CVX_EXPECT(emu_test_axpb_compute(d, n, 2.0f, 1.0f) == cudaSuccess, "launch");
    CU_OK(cudaStreamSynchronize(s));
    const double dt = now_s() - t0;
    CU_OK(cudaMemcpyAsync(h, d, n * sizeof(float), cudaMemcpyDeviceToHost, s));
    CU_OK(cudaStreamSynchronize(s));
    int bad = 0;
    for (int64_t i = 0; i < n; i++) bad += h[i] != 2.0f * (float)(i % 1000) + 1.0f;
    CVX_EXPECT(bad == 0, "%d wrong", bad);
    printf("elementwise kernel over %lld floats: %.3f s\n", (long long)n, dt);
#ifndef __SANITIZE_THREAD__ /* TSan's fiber switches cost microseconds each */
    CVX_EXPECT(dt < 3.0, "%.3f s (the emulation must stay usable)", dt);
#endif
    CU_OK(cudaFree(d));
    free(h);
}

int main(void) {
#ifdef CVX_CUDA_EMU
    test_no_device();
    setenv("CVX_EMU_CUDA_MEMORY", "268435456", 1);
#endif
    test_devices();
    cudaStream_t a, b;
    CU_OK(cudaStreamCreateWithFlags(&a, cudaStreamNonBlocking));
    CU_OK(cudaStreamCreateWithFlags(&b, cudaStreamNonBlocking));
    test_index(a);
    test_block_sum(a);
    test_bad_launches(a);
    test_streams(a, b);
    test_memory();
    test_shuffles(a);
    test_atomics(b);
    test_mma(a);
    test_conversions(b);
    test_rsqrt(a);
#ifdef CVX_CUDA_EMU
    test_divergent_barriers(b);
    test_fork_with_streams(a);
#endif
    test_compute_stream_speed();
    CU_OK(cudaStreamDestroy(a));
    CU_OK(cudaStreamDestroy(b));
#ifdef CVX_CUDA_EMU
    CVX_EXPECT(cudaStreamQuery(a) == cudaErrorInvalidResourceHandle, "a destroyed stream is refused");
    cudaGetLastError();
#endif
    return cvx_test_report();
}

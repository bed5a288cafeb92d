/* The CUDA device of the memory manager: the caching allocator (reuse, rounding, statistics against cudaMemGetInfo,
 * out of memory with nothing left behind, empty_cache), the copy queue on the copy stream (order, events, device
 * time), the cross-stream orders (a reused block and a ring slot are written only after the compute that read them;
 * compute reads a group only after its copy, without the host blocking), pinned host memory, and the residency
 * policies on CVX_DEVICE_CUDA with the bytes checked after they crossed both streams.
 *
 * A "kernel" here is a device-to-device cudaMemcpyAsync on the compute stream: it reads device memory in stream
 * order, as an op does. A gate (a host function that holds its stream until the test opens it) keeps the compute or
 * the copy stream behind the host, so that a missing wait between the streams gives wrong bytes under the
 * emulation's asynchronous streams, as on a GPU. */
#define _GNU_SOURCE
#include <cuda_runtime.h>
#include <pthread.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "../../../csrc/io/safetensors.h"
#include "../../../csrc/mem/residency.h"
#include "cuda_test.h"

#define MiB ((int64_t)1 << 20)

static cudaStream_t compute_stream(void) { return (cudaStream_t)cvx_cuda_compute_stream(); }
static cudaStream_t copy_stream(void) { return (cudaStream_t)cvx_cuda_copy_stream(); }

static cvx_cuda_alloc_stats alloc_stats(void) {
    cvx_cuda_alloc_stats a;
    cvx_cuda_get_alloc_stats(&a);
    return a;
}

/* ---- a gate on a stream ---- */
typedef struct gate {
    pthread_mutex_t m;
    pthread_cond_t cv;
    int open;
} gate;

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

static int gate_is_open(gate *g) {
    pthread_mutex_lock(&g->m);
    const int open = g->open;
    pthread_mutex_unlock(&g->m);
    return open;
}

static void gate_close_on(gate *g, cudaStream_t s) {
    pthread_mutex_init(&g->m, NULL);
    pthread_cond_init(&g->cv, NULL);
    g->open = 0;
    if (cudaLaunchHostFunc(s, gate_wait, g) != cudaSuccess) {
        fprintf(stderr, "cudaLaunchHostFunc failed\n");
        exit(1);
    }
}

static void *open_after_50ms(void *p) {
    usleep(50000);
    gate_open(p);
    return NULL;
}

static void sleep_ms(int ms) { usleep((useconds_t)ms * 1000); }

static void fill_bytes(unsigned char *p, size_t n, unsigned seed) {
    for (size_t i = 0; i < n; i++) p[i] = (unsigned char)(seed * 131u + i * 7u + (i >> 8));
}

/* ---- the caching allocator ---- */

static void test_allocator_reuse_and_rounding(void) {
    printf("allocator: reuse, rounding, splitting\n");
    cvx_mem_empty_cache(CVX_DEVICE_CUDA);
    const cvx_mem_stats base = stats(CVX_DEVICE_CUDA);
    const cvx_cuda_alloc_stats a0 = alloc_stats();
    void *p = NULL, *q = NULL, *r = NULL, *z1 = NULL, *z2 = NULL;
    CVX_EXPECT(cvx_mem_alloc(CVX_DEVICE_CUDA, CVX_MEM_ACTIVATIONS, 1000, &p) == CVX_OK, "%s", cvx_error_message());
    cvx_cuda_alloc_stats a = alloc_stats();
    CVX_EXPECT(a.num_mallocs == a0.num_mallocs + 1 && a.reserved_bytes == a0.reserved_bytes + 2 * MiB,
               "a small request opens one 2 MiB segment: mallocs +%lld, reserved +%lld",
               (long long)(a.num_mallocs - a0.num_mallocs), (long long)(a.reserved_bytes - a0.reserved_bytes));
    CVX_EXPECT(stats(CVX_DEVICE_CUDA).allocated_bytes == base.allocated_bytes + 1000,
               "allocated counts what was asked");
    CVX_EXPECT(stats(CVX_DEVICE_CUDA).reserved_bytes == a.reserved_bytes, "mem.c reports the allocator's reserved");
    CVX_EXPECT(cvx_mem_alloc(CVX_DEVICE_CUDA, CVX_MEM_ACTIVATIONS, 1000, &q) == CVX_OK, "second small");
    CVX_EXPECT((char *)q - (char *)p == 1024, "the second block follows the first, rounded to 512: %td",
               (char *)q - (char *)p);
    CVX_EXPECT(alloc_stats().num_mallocs == a.num_mallocs, "from the same segment");
    cvx_mem_free(p);
    CVX_EXPECT(cvx_mem_alloc(CVX_DEVICE_CUDA, CVX_MEM_ACTIVATIONS, 300, &r) == CVX_OK && r == p,
               "a freed block is reused (best fit)");
    CVX_EXPECT(cvx_mem_alloc(CVX_DEVICE_CUDA, CVX_MEM_ACTIVATIONS, 0, &z1) == CVX_OK &&
                   cvx_mem_alloc(CVX_DEVICE_CUDA, CVX_MEM_ACTIVATIONS, 0, &z2) == CVX_OK && z1 && z2 && z1 != z2,
               "zero-byte blocks are distinct");
    for (void *x = p; x; x = x == p ? q : x == q ? z1 : x == z1 ? z2 : NULL)
        CVX_EXPECT((uintptr_t)x % 512 == 0, "512-byte aligned");
    cvx_mem_free(r);
    cvx_mem_free(q);
    cvx_mem_free(z1);
    cvx_mem_free(z2);
    a = alloc_stats();
    CVX_EXPECT(a.cached_bytes - a0.cached_bytes == 2 * MiB, "freed blocks merge back into the cached segment");

    void *big = NULL, *big2 = NULL;
    const cvx_cuda_alloc_stats b0 = alloc_stats();
    CVX_EXPECT(cvx_mem_alloc(CVX_DEVICE_CUDA, CVX_MEM_WEIGHTS, (size_t)(3 * MiB), &big) == CVX_OK, "large");
    a = alloc_stats();
    CVX_EXPECT(a.reserved_bytes - b0.reserved_bytes == 4 * MiB, "3 MiB gets a segment rounded to 4 MiB: +%lld",
               (long long)(a.reserved_bytes - b0.reserved_bytes));
    CVX_EXPECT(cvx_mem_is_resident(CVX_DEVICE_CUDA, big, (size_t)(3 * MiB)), "weights are tracked as resident");
    cvx_mem_free(big);
    CVX_EXPECT(!cvx_mem_is_resident(CVX_DEVICE_CUDA, big, 1), "and no longer once freed");
    CVX_EXPECT(cvx_mem_alloc(CVX_DEVICE_CUDA, CVX_MEM_WEIGHTS, (size_t)(3 * MiB + MiB / 2), &big2) == CVX_OK &&
                   big2 == big && alloc_stats().num_mallocs == a.num_mallocs,
               "a cached large block is reused without cudaMalloc");
    cvx_mem_free(big2);
    const cvx_mem_stats end = stats(CVX_DEVICE_CUDA);
    CVX_EXPECT(end.allocated_bytes == base.allocated_bytes && end.num_active == base.num_active,
               "everything handed out came back");
    cvx_mem_empty_cache(CVX_DEVICE_CUDA);
    CVX_EXPECT(alloc_stats().reserved_bytes == a0.reserved_bytes && alloc_stats().cached_bytes == a0.cached_bytes,
               "empty_cache gives every free segment back: reserved %lld, was %lld",
               (long long)alloc_stats().reserved_bytes, (long long)a0.reserved_bytes);
}

static void test_reserved_agrees_with_mem_get_info(void) {
    printf("allocator: reserved_bytes against cudaMemGetInfo deltas\n");
    cvx_mem_empty_cache(CVX_DEVICE_CUDA);
    size_t f0, t0, f1, t1, f2, t2;
    CVX_EXPECT(cvx_cuda_mem_get_info(&f0, &t0) == CVX_OK, "%s", cvx_error_message());
    const int64_t r0 = stats(CVX_DEVICE_CUDA).reserved_bytes;
    const size_t sizes[] = {10, (size_t)(5 * MiB), (size_t)(17 * MiB + 3), (size_t)MiB, (size_t)(2 * MiB)};
    void *p[5];
    for (int i = 0; i < 5; i++)
        CVX_EXPECT(cvx_mem_alloc(CVX_DEVICE_CUDA, CVX_MEM_ACTIVATIONS, sizes[i], &p[i]) == CVX_OK, "alloc");
    cvx_cuda_mem_get_info(&f1, &t1);
    const int64_t r1 = stats(CVX_DEVICE_CUDA).reserved_bytes;
    const int64_t used = (int64_t)f0 - (int64_t)f1, held = r1 - r0;
    printf("  cudaMemGetInfo: %lld bytes taken; reserved_bytes: +%lld\n", (long long)used, (long long)held);
#ifdef CVX_CUDA_EMU
    CVX_EXPECT(used == held, "the emulation counts exact cudaMalloc bytes: %lld vs %lld", (long long)used,
               (long long)held);
#else
    /* a GPU may map a little more per cudaMalloc (page tables): one 2 MiB page per segment at most */
    CVX_EXPECT(used >= held && used - held <= 2 * MiB * 5, "%lld vs %lld", (long long)used, (long long)held);
#endif
    for (int i = 0; i < 5; i++) cvx_mem_free(p[i]);
    cvx_cuda_mem_get_info(&f2, &t2);
    CVX_EXPECT(f2 == f1 && stats(CVX_DEVICE_CUDA).reserved_bytes == r1, "freed blocks stay cached: nothing returned");
    cvx_mem_empty_cache(CVX_DEVICE_CUDA);
    cvx_cuda_mem_get_info(&f2, &t2);
    CVX_EXPECT(stats(CVX_DEVICE_CUDA).reserved_bytes == r0, "empty_cache: reserved back to %lld", (long long)r0);
#ifdef CVX_CUDA_EMU
    CVX_EXPECT(f2 == f0, "and the driver has the bytes again: free %zu, was %zu", f2, f0);
#else
    CVX_EXPECT((int64_t)f2 >= (int64_t)f0 - 2 * MiB, "and the driver has the bytes again: free %zu, was %zu", f2, f0);
#endif
}

static void test_out_of_memory(void) {
    printf("allocator: out of memory empties the cache, retries once, and leaves nothing\n");
    cvx_mem_empty_cache(CVX_DEVICE_CUDA);
    size_t f0, t0;
    cvx_cuda_mem_get_info(&f0, &t0);
    const cvx_mem_stats base = stats(CVX_DEVICE_CUDA);
    const cvx_cuda_alloc_stats a0 = alloc_stats();
    void *p = (void *)1;
    const cvx_status st = cvx_mem_alloc(CVX_DEVICE_CUDA, CVX_MEM_WEIGHTS, t0 + (size_t)(1 << 30), &p);
    CVX_EXPECT(st == CVX_ERR_OOM && !p, "more than the device: CVX_ERR_OOM, got %d", (int)st);
    CVX_EXPECT(strstr(cvx_error_message(), "out of memory") && strstr(cvx_error_message(), "cudaMalloc"),
               "the message names it: %s", cvx_error_message());
    const cvx_mem_stats s = stats(CVX_DEVICE_CUDA);
    CVX_EXPECT(s.allocated_bytes == base.allocated_bytes && s.num_active == base.num_active &&
                   s.num_ooms == base.num_ooms + 1 && s.reserved_bytes == base.reserved_bytes,
               "nothing allocated, one OOM counted");
    CVX_EXPECT(alloc_stats().num_retries == a0.num_retries + 1, "the cache was emptied and the call retried once");

    /* a cached block too small for the next request is given back so that the request fits */
    const size_t x = f0 / 10 * 6, y = f0 / 10 * 6;
    void *px = NULL, *py = NULL;
    CVX_EXPECT(cvx_mem_alloc(CVX_DEVICE_CUDA, CVX_MEM_WEIGHTS, x, &px) == CVX_OK, "%s", cvx_error_message());
    cvx_mem_free(px); /* cached: 60% of the free memory */
    const cvx_cuda_alloc_stats a1 = alloc_stats();
    CVX_EXPECT(cvx_mem_alloc(CVX_DEVICE_CUDA, CVX_MEM_WEIGHTS, y + (size_t)(4 * MiB), &py) == CVX_OK,
               "fits once the cache is empty: %s", cvx_error_message());
    const cvx_cuda_alloc_stats a2 = alloc_stats();
    CVX_EXPECT(a2.num_retries == a1.num_retries + 1 && a2.num_segments == a1.num_segments,
               "one retry; the cached segment was replaced: retries +%lld, segments %lld -> %lld",
               (long long)(a2.num_retries - a1.num_retries), (long long)a1.num_segments, (long long)a2.num_segments);
    cvx_mem_free(py);
    cvx_mem_empty_cache(CVX_DEVICE_CUDA);
    CVX_EXPECT(stats(CVX_DEVICE_CUDA).allocated_bytes == base.allocated_bytes, "back to the baseline");
}

/* A block freed while compute still reads it, reallocated and written by the copy stream: the copy must wait. */
static void test_reused_block_waits_for_compute(void) {
    printf("allocator: a reused block is written by the copy stream only after the compute that read it\n");
    const size_t n = 256 * 1024;
    unsigned char *a = xmalloc(n), *b = xmalloc(n), *got = xmalloc(n);
    fill_bytes(a, n, 1);
    fill_bytes(b, n, 2);
    void *x = dev_upload_bytes(a, n), *scratch = dev_upload_bytes(NULL, n), *y = NULL;
    gate g;
    gate_close_on(&g, compute_stream());
    CVX_EXPECT(cudaMemcpyAsync(scratch, x, n, cudaMemcpyDeviceToDevice, compute_stream()) == cudaSuccess,
               "the 'kernel' reading x");
    cvx_mem_free(x);
    CVX_EXPECT(cvx_mem_alloc(CVX_DEVICE_CUDA, CVX_MEM_WEIGHTS, n, &y) == CVX_OK && y == x, "the block is reused");
    cvx_queue *q = cvx_copy_queue(CVX_DEVICE_CUDA);
    CVX_EXPECT(cvx_queue_copy(q, y, b, n, NULL) == CVX_OK, "copy into it");
    const cvx_event ev = cvx_queue_record(q);
    sleep_ms(30);
    CVX_EXPECT(!cvx_queue_done(q, ev), "the copy waits for the compute fence of the free");
    gate_open(&g);
    cvx_queue_sync(q);
    dev_download(got, scratch, n);
    CVX_EXPECT(memcmp(got, a, n) == 0, "compute read the old bytes");
    dev_download(got, y, n);
    CVX_EXPECT(memcmp(got, b, n) == 0, "then the copy wrote the new ones");
    cvx_mem_free(y);
    cvx_mem_free(scratch);
    free(a);
    free(b);
    free(got);
}

/* ---- the copy queue ---- */

static void test_copy_queue_order_and_events(void) {
    printf("copy queue: order, events, device-timed busy time\n");
    cvx_queue *q = cvx_copy_queue(CVX_DEVICE_CUDA);
    CVX_EXPECT(q != NULL, "a queue on cuda");
    const size_t n = 1 << 20;
    unsigned char *h1 = xmalloc(n), *h2 = xmalloc(n), *got = xmalloc(n);
    fill_bytes(h1, n, 3);
    fill_bytes(h2, n, 4);
    void *d = dev_upload_bytes(NULL, n);
    int64_t busy = 0;
    const int64_t total0 = cvx_queue_busy_ns(q);
    const cvx_event before = cvx_queue_record(q);
    gate g;
    gate_close_on(&g, copy_stream());
    CVX_EXPECT(cvx_queue_copy(q, d, h1, n, &busy) == CVX_OK && cvx_queue_copy(q, d, h2, n, &busy) == CVX_OK, "queued");
    const cvx_event ev = cvx_queue_record(q);
    CVX_EXPECT(ev == before + 2, "an event is a position: %llu after %llu", (unsigned long long)ev,
               (unsigned long long)before);
    CVX_EXPECT(cvx_queue_record(q) == ev, "recording again without copies gives the same position");
    sleep_ms(20);
    CVX_EXPECT(!cvx_queue_done(q, ev) && cvx_queue_done(q, before), "not done while the stream is held");
    pthread_t opener;
    pthread_create(&opener, NULL, open_after_50ms, &g);
    const int64_t waited = cvx_queue_wait(q, ev);
    pthread_join(opener, NULL);
    CVX_EXPECT(cvx_queue_done(q, ev) && waited > 10000000, "wait returned once done, after %lld ns", (long long)waited);
    dev_download(got, d, n);
    CVX_EXPECT(memcmp(got, h2, n) == 0, "copies ran in order: the second wins");
    const int64_t b = __atomic_load_n(&busy, __ATOMIC_RELAXED);
    CVX_EXPECT(b > 0 && b < waited, "the caller's busy time is device time (%lld ns), not the held wait", (long long)b);
    CVX_EXPECT(cvx_queue_busy_ns(q) - total0 == b, "the queue's total grew by the same");
    cvx_mem_free(d);
    free(h1);
    free(h2);
    free(got);
}

static void test_fences(void) {
    printf("fences: complete after the compute work before them\n");
    CVX_EXPECT(cvx_device_fence(CVX_DEVICE_EMU) == 0 && cvx_device_fence(CVX_DEVICE_CPU) == 0,
               "cpu and emu fences are complete at once");
    cvx_queue *q = cvx_copy_queue(CVX_DEVICE_CUDA);
    gate g;
    gate_close_on(&g, compute_stream());
    const cvx_event f = cvx_device_fence(CVX_DEVICE_CUDA);
    CVX_EXPECT(f != 0 && !cvx_cuda_fence_done(f), "a fence behind held compute is not complete");
    const size_t n = 4096;
    unsigned char *h = xmalloc(n);
    fill_bytes(h, n, 5);
    void *d = dev_upload_bytes(NULL, n);
    CVX_EXPECT(cvx_queue_after(q, f) == CVX_OK && cvx_queue_copy(q, d, h, n, NULL) == CVX_OK, "a copy after it");
    const cvx_event ev = cvx_queue_record(q);
    sleep_ms(20);
    CVX_EXPECT(!cvx_queue_done(q, ev), "the copy waits for the fence");
    gate_open(&g);
    cvx_queue_wait(q, ev);
    CVX_EXPECT(cvx_cuda_fence_done(f), "the fence completed before the copy");
    CVX_EXPECT(cvx_queue_after(q, 0) == CVX_OK, "fence 0 orders nothing");
    cvx_mem_free(d);
    free(h);
}

/* ---- pinned host memory ---- */

static void test_pinned(void) {
    printf("pinned memory: page-aligned host copies, checkpoint mappings, counted and given back\n");
    const int64_t base = stats(CVX_DEVICE_CUDA).pinned_bytes;
    const long page = sysconf(_SC_PAGESIZE);
    void *a = NULL, *b = NULL;
    CVX_EXPECT(cvx_mem_alloc_pages(CVX_MEM_WEIGHTS, 1000, &a) == CVX_OK &&
                   cvx_mem_alloc_pages(CVX_MEM_WEIGHTS, 1000, &b) == CVX_OK,
               "page allocations");
    CVX_EXPECT((uintptr_t)a % (uintptr_t)page == 0 && (uintptr_t)b % (uintptr_t)page == 0, "start pages");
    CVX_EXPECT(cvx_mem_pin(CVX_DEVICE_CUDA, a, 1000, 0) == 1 && cvx_mem_pin(CVX_DEVICE_CUDA, b, 1000, 0) == 1,
               "two neighbours pin alone (no shared page)");
    CVX_EXPECT(stats(CVX_DEVICE_CUDA).pinned_bytes == base + 2000, "pinned_bytes counts them");
    CVX_EXPECT(cvx_mem_pin(CVX_DEVICE_CUDA, a, 1000, 0) == 0, "pinning twice is refused, not counted");
    CVX_EXPECT(stats(CVX_DEVICE_CUDA).pinned_bytes == base + 2000, "unchanged");
    CVX_EXPECT(cvx_mem_pin(CVX_DEVICE_EMU, a, 1000, 0) == 0, "emu has no pinned memory");
    cvx_mem_unpin(CVX_DEVICE_CUDA, a, 1000);
    cvx_mem_unpin(CVX_DEVICE_CUDA, b, 1000);
    CVX_EXPECT(stats(CVX_DEVICE_CUDA).pinned_bytes == base, "unpinned");
    CVX_EXPECT(cudaHostRegister(a, 1000, cudaHostRegisterPortable) == cudaSuccess, "really unregistered");
    cudaHostUnregister(a);
    cvx_mem_free(a);
    cvx_mem_free(b);

    cvx_st_file *f = NULL;
    CVX_EXPECT(cvx_st_open(CVX_FIXTURES "/vae/tiny_f16/diffusion_pytorch_model.safetensors", &f) == CVX_OK, "%s",
               cvx_error_message());
    int all = 0;
    const int64_t pinned = cvx_st_pin(f, CVX_DEVICE_CUDA, &all);
    CVX_EXPECT(pinned > 0 && all, "the mapping is pinned (%lld bytes)", (long long)pinned);
    CVX_EXPECT(stats(CVX_DEVICE_CUDA).pinned_bytes == base + pinned, "and counted");
    cvx_st_retain(f);
    CVX_EXPECT(cvx_st_pin(f, CVX_DEVICE_CUDA, &all) == pinned && all, "once per mapping");
    CVX_EXPECT(stats(CVX_DEVICE_CUDA).pinned_bytes == base + pinned, "not counted twice");
    cvx_st_close(f);
    CVX_EXPECT(stats(CVX_DEVICE_CUDA).pinned_bytes == base + pinned, "pinned while a reference holds the mapping");
    cvx_st_close(f);
    CVX_EXPECT(stats(CVX_DEVICE_CUDA).pinned_bytes == base, "unpinned with the mapping's last reference");
}

/* ---- residency on CUDA ---- */

#define NT 7
#define NG 4 /* group 0: the non-block weights; 1..3 the blocks */

typedef struct fixture {
    unsigned char *host[NT];
    void *slot[NT];
    cvx_residency_tensor t[NT];
} fixture;

/* seed: each run its own bytes, so that a cached block still holding the last run's cannot pass for a copy */
static void fixture_make(fixture *fx, unsigned seed) {
    static const size_t bytes[NT] = {3000, 100, 40000, 5000, 64000, 7, 30000};
    static const int groups[NT] = {0, 1, 1, 2, 3, 3, 2};
    size_t offset[NG] = {0};
    for (int i = 0; i < NT; i++) {
        fx->host[i] = xmalloc(bytes[i]);
        fill_bytes(fx->host[i], bytes[i], seed * 16u + (unsigned)i);
        fx->t[i] = (cvx_residency_tensor){&fx->slot[i], fx->host[i], bytes[i], offset[groups[i]], groups[i]};
        offset[groups[i]] += (bytes[i] + 63) / 64 * 64;
    }
}

static void fixture_free(fixture *fx) {
    for (int i = 0; i < NT; i++) free(fx->host[i]);
}

/* Two passes over the blocks (cyclic, as the transformer's), every tensor "read" by compute into its place in
 * scratch; then the bytes are checked. hold: 0 nothing, 1 the compute stream held while the host runs the passes
 * (the ring's reuse must wait for compute), 2 the copy stream held (compute must wait for the copies). */
static void run_policy(cvx_policy policy, int prefetch, int hold, unsigned seed) {
    fixture fx;
    fixture_make(&fx, seed);
    const cvx_mem_stats base = stats(CVX_DEVICE_CUDA);
    cvx_residency *r = NULL;
    CVX_EXPECT(cvx_residency_create(fx.t, NT, NG, &r) == CVX_OK, "create");
    size_t total = 0, at[2][NT];
    for (int pass = 0; pass < 2; pass++)
        for (int i = 0; i < NT; i++) at[pass][i] = total, total += fx.t[i].bytes;
    void *scratch = dev_upload_bytes(NULL, total);
    gate g;
    memset(&g, 0, sizeof(g));
    if (hold == 2) gate_close_on(&g, copy_stream());
    pthread_t opener;
    if (hold == 2) pthread_create(&opener, NULL, open_after_50ms, &g);
    cvx_status st = cvx_residency_set(r, CVX_DEVICE_CUDA, policy, prefetch);
    CVX_EXPECT(st == CVX_OK, "set: %s", cvx_error_message());
    if (hold == 1) gate_close_on(&g, compute_stream());
    int ok = 1;
    for (int pass = 0; pass < 2; pass++) {
        ok &= cvx_residency_begin(r, 1, NG - 1, 1) == CVX_OK && cvx_residency_acquire(r, 0) == CVX_OK;
        for (int grp = 0; grp < NG; grp++) {
            if (grp && cvx_residency_acquire(r, grp) != CVX_OK) {
                ok = 0;
                break;
            }
            for (int i = 0; i < NT; i++)
                if (fx.t[i].group == grp)
                    ok &= cudaMemcpyAsync((char *)scratch + at[pass][i], fx.slot[i], fx.t[i].bytes,
                                          cudaMemcpyDeviceToDevice, compute_stream()) == cudaSuccess;
            if (grp) cvx_residency_release(r, grp);
        }
        cvx_residency_end(r);
    }
    CVX_EXPECT(ok, "the passes ran: %s", cvx_error_message());
    if (hold) CVX_EXPECT(!gate_is_open(&g), "the host ran both passes without waiting for the held stream");
    if (hold == 1) gate_open(&g);
    if (hold == 2) pthread_join(opener, NULL);
    unsigned char *got = xmalloc(total);
    dev_download(got, scratch, total); /* after the compute stream's work */
    int intact = 1;
    for (int pass = 0; pass < 2; pass++)
        for (int i = 0; i < NT; i++) intact &= memcmp(got + at[pass][i], fx.host[i], fx.t[i].bytes) == 0;
    CVX_EXPECT(intact, "policy %d, prefetch %d, hold %d: every group's bytes arrived intact in both passes",
               (int)policy, prefetch, hold);
    cvx_residency_stats rs;
    cvx_residency_get_stats(r, &rs);
    int64_t all = 0;
    for (int grp = 0; grp < NG; grp++) all += cvx_residency_group_bytes(r, grp);
    if (policy != CVX_POLICY_SEQUENTIAL)
        CVX_EXPECT(rs.bytes_copied == all, "none/model copy each group once: %lld of %lld", (long long)rs.bytes_copied,
                   (long long)all);
    else
        CVX_EXPECT(rs.bytes_copied >= all + all - cvx_residency_group_bytes(r, 0),
                   "sequential copies the blocks again each pass: %lld", (long long)rs.bytes_copied);
    CVX_EXPECT(rs.copy_ns > 0, "copy time measured: %lld ns", (long long)rs.copy_ns);
    if (hold == 2)
        CVX_EXPECT(rs.wait_ns > 10000000, "compute's wait for the held copies measured: %lld ns",
                   (long long)rs.wait_ns);
    cvx_residency_offload(r);
    cvx_residency_destroy(r);
    cvx_mem_free(scratch);
    free(got);
    const cvx_mem_stats s = stats(CVX_DEVICE_CUDA);
    CVX_EXPECT(s.allocated_bytes == base.allocated_bytes && s.num_active == base.num_active,
               "the device holds what it held before");
    fixture_free(&fx);
}

/* Leaving CUDA (or destroying the residency) returns only once no copy still reads the host bytes: the caller may
 * free them next. Under ASan a copy still in flight would read freed memory. */
static void test_leaving_cuda_waits_for_the_copies(void) {
    printf("residency: leaving cuda waits for the copies still reading the host bytes\n");
    for (int destroy = 0; destroy < 2; destroy++) {
        fixture fx;
        fixture_make(&fx, 99u + (unsigned)destroy);
        cvx_residency *r = NULL;
        CVX_EXPECT(cvx_residency_create(fx.t, NT, NG, &r) == CVX_OK, "create");
        gate g;
        gate_close_on(&g, copy_stream());
        pthread_t opener;
        pthread_create(&opener, NULL, open_after_50ms, &g);
        CVX_EXPECT(cvx_residency_set(r, CVX_DEVICE_CUDA, CVX_POLICY_NONE, 0) == CVX_OK, "set: copies queued");
        CVX_EXPECT(!gate_is_open(&g), "the host did not wait for them");
        if (destroy) {
            cvx_residency_destroy(r);
            r = NULL;
        } else {
            CVX_EXPECT(cvx_residency_set(r, CVX_DEVICE_CPU, CVX_POLICY_NONE, 0) == CVX_OK, "back to the cpu");
        }
        CVX_EXPECT(gate_is_open(&g), "%s returned after the copies ran", destroy ? "destroy" : "set(cpu)");
        fixture_free(&fx); /* the host bytes go: no copy may read them now */
        pthread_join(opener, NULL);
        cvx_residency_destroy(r);
    }
}

static void test_residency(void) {
    printf("residency on cuda: none / model / sequential, prefetch 0 / 1, streams held\n");
    const cvx_policy policies[] = {CVX_POLICY_NONE, CVX_POLICY_MODEL, CVX_POLICY_SEQUENTIAL, CVX_POLICY_SEQUENTIAL};
    const int prefetch[] = {0, 0, 0, 1};
    for (int k = 0; k < 4; k++)
        for (int hold = 0; hold < 3; hold++) run_policy(policies[k], prefetch[k], hold, (unsigned)(3 * k + hold + 1));
}

int main(void) {
#ifdef CVX_CUDA_EMU
    setenv("CVX_EMU_CUDA_MEMORY", "268435456", 1); /* 256 MiB: out of memory is reachable */
#endif
    if (!cuda_test_begin()) return 0;
    test_allocator_reuse_and_rounding();
    test_reserved_agrees_with_mem_get_info();
    test_out_of_memory();
    test_reused_block_waits_for_compute();
    test_copy_queue_order_and_events();
    test_fences();
    test_pinned();
    test_residency();
    test_leaving_cuda_waits_for_the_copies();
    cvx_mem_empty_cache(CVX_DEVICE_CUDA);
    return cvx_test_report();
}

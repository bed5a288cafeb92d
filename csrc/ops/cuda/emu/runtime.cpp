/* The emulated CUDA runtime: one or more emulated devices sharing host RAM, device memory with accounting,
 * pinned and registered host memory, copies, streams as FIFOs each run by its own worker thread, events, and the
 * runtime's error reporting. What it proves and what it does not: README.md. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <thread>

#include "emu.h"

/* ---- streams and events ---- */

struct CUstream_st {
    unsigned flags = 0;
    std::mutex m;
    std::condition_variable cv;
    std::deque<std::function<void()>> queue;
    uint64_t submitted = 0, completed = 0;
    bool stop = false;
    std::thread worker;
};

namespace {
struct event_state {
    std::mutex m;
    std::condition_variable cv;
    uint64_t recorded = 0, done = 0; /* generations: the latest record, the latest that has run */
    std::chrono::steady_clock::time_point at;
    bool timing = true;
};
} // namespace

struct CUevent_st {
    std::shared_ptr<event_state> s;
};

namespace {
using clock_type = std::chrono::steady_clock;

thread_local cudaError_t last_error = cudaSuccess;
/* set on a stream's worker thread: a host function there must not wait for the device (it would wait for itself);
 * CUDA answers such calls with cudaErrorNotPermitted */
thread_local bool on_worker = false;
thread_local int current_device = 0;
std::atomic<int> async_error{cudaSuccess};

/* live streams and events (to refuse a destroyed handle and to synchronise the device) */
std::mutex registry_m;
std::set<cudaStream_t> streams;
std::set<cudaEvent_t> events;

/* device and host memory */
std::mutex mem_m;
std::map<uintptr_t, size_t> device_allocs, pinned_allocs, registered;
size_t device_live = 0;

std::map<const void *, int> smem_attr;

/* A child process forked after streams existed has none of their worker threads: its streams are dropped, so that
 * using one fails (cudaErrorInvalidResourceHandle) instead of waiting forever for a worker that is not there.
 * (CUDA is not usable in such a child either.) */
void fork_prepare() { registry_m.lock(); }
void fork_parent() { registry_m.unlock(); }
void fork_child() {
    streams.clear(); /* their objects leak: their mutexes may have been held by threads that are gone */
    registry_m.unlock();
}
const int fork_handlers = pthread_atfork(fork_prepare, fork_parent, fork_child);

int env_int(const char *name, long long dflt, long long *out) {
    const char *v = getenv(name);
    *out = dflt;
    if (!v || !*v) return 0;
    char *end = NULL;
    const long long x = strtoll(v, &end, 10);
    if (*end || x < 0) {
        fprintf(stderr, "cvx CUDA emulation: %s=%s is not a non-negative integer; using %lld\n", name, v, dflt);
        return -1;
    }
    *out = x;
    return 0;
}

int device_count() {
    static const int n = [] {
        long long d;
        env_int("CVX_EMU_CUDA_DEVICES", 1, &d);
        return (int)std::min(d, 16LL);
    }();
    return n;
}

size_t memory_total() {
    static const size_t t = [] {
        long long b;
        env_int("CVX_EMU_CUDA_MEMORY", 8LL << 30, &b);
        return (size_t)b;
    }();
    return t;
}

cudaError_t ok() { return cudaSuccess; }

cudaError_t pending_async() { return (cudaError_t)async_error.load(); }

bool stream_live(cudaStream_t s) {
    std::lock_guard<std::mutex> g(registry_m);
    return streams.count(s) != 0;
}

bool event_live(cudaEvent_t e) {
    std::lock_guard<std::mutex> g(registry_m);
    return events.count(e) != 0;
}

void worker_loop(cudaStream_t s) {
    on_worker = true;
    std::unique_lock<std::mutex> lk(s->m);
    for (;;) {
        s->cv.wait(lk, [s] { return s->stop || !s->queue.empty(); });
        if (s->queue.empty()) return; /* stop with nothing left */
        std::function<void()> fn = std::move(s->queue.front());
        s->queue.pop_front();
        lk.unlock();
        fn();
        fn = nullptr; /* release what the op captured before it counts as done */
        lk.lock();
        s->completed++;
        s->cv.notify_all();
    }
}

void sync_stream(cudaStream_t s) {
    std::unique_lock<std::mutex> lk(s->m);
    const uint64_t target = s->submitted;
    s->cv.wait(lk, [s, target] { return s->completed >= target; });
}

std::vector<cudaStream_t> live_streams() {
    std::lock_guard<std::mutex> g(registry_m);
    return std::vector<cudaStream_t>(streams.begin(), streams.end());
}

/* The legacy default stream waits for the blocking streams (flags 0); non-blocking ones run on. */
void legacy_sync() {
    for (cudaStream_t s : live_streams())
        if (!(s->flags & cudaStreamNonBlocking)) sync_stream(s);
}

void sync_all() {
    for (cudaStream_t s : live_streams()) sync_stream(s);
}

/* [p, p + n) inside one allocation of `allocs` */
bool inside(const std::map<uintptr_t, size_t> &allocs, const void *p, size_t n) {
    const uintptr_t a = (uintptr_t)p;
    auto it = allocs.upper_bound(a);
    if (it == allocs.begin()) return false;
    --it;
    return a >= it->first && a - it->first <= it->second && n <= it->second - (a - it->first);
}

bool overlaps(const std::map<uintptr_t, size_t> &allocs, uintptr_t a, size_t n) {
    auto it = allocs.lower_bound(a + n);
    if (it == allocs.begin()) return false;
    --it;
    return it->first + it->second > a;
}

bool is_device(const void *p, size_t n) {
    std::lock_guard<std::mutex> g(mem_m);
    return inside(device_allocs, p, n);
}

bool touches_device(const void *p, size_t n) {
    std::lock_guard<std::mutex> g(mem_m);
    return overlaps(device_allocs, (uintptr_t)p, n ? n : 1);
}

/* CUDA refuses a copy whose pointers are not what the kind says (device memory is that of cudaMalloc). The span
 * of each side is checked whole, so a copy past the end of an allocation fails here instead of corrupting it. */
cudaError_t check_copy(void *dst, size_t dst_span, const void *src, size_t src_span, cudaMemcpyKind kind) {
    if (dst_span == 0 && src_span == 0) return cudaSuccess;
    if (!dst || !src) return cudaErrorInvalidValue;
    switch (kind) {
    case cudaMemcpyHostToHost:
        return touches_device(dst, dst_span) || touches_device(src, src_span) ? cudaErrorInvalidValue : cudaSuccess;
    case cudaMemcpyHostToDevice:
        return is_device(dst, dst_span) && !touches_device(src, src_span) ? cudaSuccess : cudaErrorInvalidValue;
    case cudaMemcpyDeviceToHost:
        return is_device(src, src_span) && !touches_device(dst, dst_span) ? cudaSuccess : cudaErrorInvalidValue;
    case cudaMemcpyDeviceToDevice:
        return is_device(dst, dst_span) && is_device(src, src_span) ? cudaSuccess : cudaErrorInvalidValue;
    case cudaMemcpyDefault: {
        /* each side is host or device memory as a whole (a span straddling both is an error) */
        const bool dd = touches_device(dst, dst_span), sd = touches_device(src, src_span);
        if ((dd && !is_device(dst, dst_span)) || (sd && !is_device(src, src_span))) return cudaErrorInvalidValue;
        return cudaSuccess;
    }
    }
    return cudaErrorInvalidMemcpyDirection;
}

cudaError_t need_device() { return device_count() > 0 ? cudaSuccess : cudaErrorNoDevice; }
} // namespace

namespace cvx_emu {
cudaError_t fail(cudaError_t e) {
    if (e != cudaSuccess && e != cudaErrorNotReady) last_error = e;
    return e;
}

void set_async_error(cudaError_t e) {
    int expected = cudaSuccess;
    async_error.compare_exchange_strong(expected, (int)e); /* the first error is the one reported */
}

cudaError_t enqueue(cudaStream_t s, std::function<void()> fn) {
    if (!s) {
        if (on_worker) return cudaErrorNotPermitted;
        legacy_sync();
        fn();
        return cudaSuccess;
    }
    if (!stream_live(s)) return cudaErrorInvalidResourceHandle;
    std::lock_guard<std::mutex> g(s->m);
    s->queue.push_back(std::move(fn));
    s->submitted++;
    s->cv.notify_all();
    return cudaSuccess;
}

size_t max_dynamic_smem(const void *func) {
    std::lock_guard<std::mutex> g(registry_m);
    auto it = smem_attr.find(func);
    return it == smem_attr.end() ? (size_t)48 << 10 : (size_t)it->second;
}
} // namespace cvx_emu

using cvx_emu::fail;

/* ---- errors ---- */

extern "C" const char *cudaGetErrorString(cudaError_t e) {
    switch (e) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorMemoryAllocation: return "out of memory";
    case cudaErrorInitializationError: return "initialization error";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
    case cudaErrorInvalidPitchValue: return "invalid pitch argument";
    case cudaErrorInvalidDevicePointer: return "invalid device pointer";
    case cudaErrorInvalidMemcpyDirection: return "invalid copy direction for memcpy";
    case cudaErrorInvalidDeviceFunction: return "invalid device function";
    case cudaErrorNoDevice: return "no CUDA-capable device is detected";
    case cudaErrorInvalidDevice: return "invalid device ordinal";
    case cudaErrorInvalidResourceHandle: return "invalid resource handle";
    case cudaErrorNotReady: return "device not ready";
    case cudaErrorIllegalAddress: return "an illegal memory access was encountered";
    case cudaErrorLaunchOutOfResources: return "too many resources requested for launch";
    case cudaErrorHostMemoryAlreadyRegistered: return "part or all of the requested memory range is already mapped";
    case cudaErrorHostMemoryNotRegistered: return "pointer does not correspond to a registered memory region";
    case cudaErrorLaunchFailure: return "unspecified launch failure";
    case cudaErrorNotPermitted: return "operation not permitted";
    case cudaErrorNotSupported: return "operation not supported";
    case cudaErrorUnknown: return "unknown error";
    }
    return "unrecognized error code";
}

extern "C" const char *cudaGetErrorName(cudaError_t e) {
    switch (e) {
#define CVX_EMU_NAME(x)                                                                                                \
    case x: return #x;
        CVX_EMU_NAME(cudaSuccess)
        CVX_EMU_NAME(cudaErrorInvalidValue)
        CVX_EMU_NAME(cudaErrorMemoryAllocation)
        CVX_EMU_NAME(cudaErrorInitializationError)
        CVX_EMU_NAME(cudaErrorInvalidConfiguration)
        CVX_EMU_NAME(cudaErrorInvalidPitchValue)
        CVX_EMU_NAME(cudaErrorInvalidDevicePointer)
        CVX_EMU_NAME(cudaErrorInvalidMemcpyDirection)
        CVX_EMU_NAME(cudaErrorInvalidDeviceFunction)
        CVX_EMU_NAME(cudaErrorNoDevice)
        CVX_EMU_NAME(cudaErrorInvalidDevice)
        CVX_EMU_NAME(cudaErrorInvalidResourceHandle)
        CVX_EMU_NAME(cudaErrorNotReady)
        CVX_EMU_NAME(cudaErrorIllegalAddress)
        CVX_EMU_NAME(cudaErrorLaunchOutOfResources)
        CVX_EMU_NAME(cudaErrorHostMemoryAlreadyRegistered)
        CVX_EMU_NAME(cudaErrorHostMemoryNotRegistered)
        CVX_EMU_NAME(cudaErrorLaunchFailure)
        CVX_EMU_NAME(cudaErrorNotPermitted)
        CVX_EMU_NAME(cudaErrorNotSupported)
        CVX_EMU_NAME(cudaErrorUnknown)
#undef CVX_EMU_NAME
    }
    return "cudaErrorUnknown";
}

extern "C" cudaError_t cudaGetLastError(void) {
    const cudaError_t e = last_error, a = (cudaError_t)async_error.exchange(cudaSuccess);
    last_error = cudaSuccess;
    return e != cudaSuccess ? e : a;
}

extern "C" cudaError_t cudaPeekAtLastError(void) { return last_error != cudaSuccess ? last_error : pending_async(); }

/* ---- devices ---- */

extern "C" cudaError_t cudaGetDeviceCount(int *count) {
    if (!count) return fail(cudaErrorInvalidValue);
    *count = device_count();
    return *count ? ok() : fail(cudaErrorNoDevice);
}

extern "C" cudaError_t cudaSetDevice(int device) {
    if (need_device()) return fail(cudaErrorNoDevice);
    if (device < 0 || device >= device_count()) return fail(cudaErrorInvalidDevice);
    current_device = device;
    return ok();
}

extern "C" cudaError_t cudaGetDevice(int *device) {
    if (!device) return fail(cudaErrorInvalidValue);
    if (need_device()) return fail(cudaErrorNoDevice);
    *device = current_device;
    return ok();
}

extern "C" cudaError_t cudaGetDeviceProperties(struct cudaDeviceProp *p, int device) {
    if (!p) return fail(cudaErrorInvalidValue);
    if (need_device()) return fail(cudaErrorNoDevice);
    if (device < 0 || device >= device_count()) return fail(cudaErrorInvalidDevice);
    memset(p, 0, sizeof *p);
    snprintf(p->name, sizeof p->name, "emulated CUDA device");
    /* an H100-like sm_90 part, except the memory size (CVX_EMU_CUDA_MEMORY) */
    p->totalGlobalMem = memory_total();
    p->sharedMemPerBlock = 48 << 10;
    p->sharedMemPerBlockOptin = 227 << 10;
    p->sharedMemPerMultiprocessor = 228 << 10;
    p->regsPerBlock = 65536;
    p->regsPerMultiprocessor = 65536;
    p->warpSize = 32;
    p->memPitch = (size_t)INT32_MAX;
    p->maxThreadsPerBlock = 1024;
    p->maxThreadsDim[0] = 1024, p->maxThreadsDim[1] = 1024, p->maxThreadsDim[2] = 64;
    p->maxGridSize[0] = INT32_MAX, p->maxGridSize[1] = 65535, p->maxGridSize[2] = 65535;
    p->totalConstMem = 64 << 10;
    p->major = 9;
    p->minor = 0;
    p->textureAlignment = 512;
    p->multiProcessorCount = 132;
    p->canMapHostMemory = 1;
    p->concurrentKernels = 1;
    p->pciBusID = 1 + device;
    p->asyncEngineCount = 2;
    p->unifiedAddressing = 1;
    p->memoryBusWidth = 5120;
    p->l2CacheSize = 50 << 20;
    p->maxThreadsPerMultiProcessor = 2048;
    p->managedMemory = 1;
    return ok();
}

extern "C" cudaError_t cudaDeviceSynchronize(void) {
    if (on_worker) return fail(cudaErrorNotPermitted);
    sync_all();
    const cudaError_t a = pending_async();
    return a ? fail(a) : ok();
}

extern "C" cudaError_t cudaMemGetInfo(size_t *free_bytes, size_t *total_bytes) {
    if (!free_bytes || !total_bytes) return fail(cudaErrorInvalidValue);
    if (need_device()) return fail(cudaErrorNoDevice);
    std::lock_guard<std::mutex> g(mem_m);
    *total_bytes = memory_total();
    *free_bytes = device_live >= *total_bytes ? 0 : *total_bytes - device_live;
    return ok();
}

/* ---- memory ---- */

extern "C" cudaError_t cudaMalloc(void **ptr, size_t size) {
    if (!ptr) return fail(cudaErrorInvalidValue);
    if (need_device()) return fail(cudaErrorNoDevice);
    *ptr = NULL;
    if (size == 0) return ok(); /* as CUDA: success and a NULL pointer */
    {
        std::lock_guard<std::mutex> g(mem_m);
        if (size > memory_total() - std::min(device_live, memory_total())) return fail(cudaErrorMemoryAllocation);
        device_live += size; /* reserved before the host allocation so that concurrent callers see the limit */
    }
    void *p = NULL;
    /* 256-byte aligned like cudaMalloc; the allocation is exactly `size` bytes, so ASan sees a kernel that runs
     * past it */
    if (posix_memalign(&p, 256, size) != 0) {
        std::lock_guard<std::mutex> g(mem_m);
        device_live -= size;
        return fail(cudaErrorMemoryAllocation);
    }
    std::lock_guard<std::mutex> g(mem_m);
    device_allocs[(uintptr_t)p] = size;
    *ptr = p;
    return ok();
}

extern "C" cudaError_t cudaFree(void *ptr) {
    if (on_worker) return fail(cudaErrorNotPermitted);
    if (!ptr) return ok();
    sync_all(); /* cudaFree synchronises the device */
    {
        std::lock_guard<std::mutex> g(mem_m);
        auto it = device_allocs.find((uintptr_t)ptr);
        if (it == device_allocs.end()) return fail(cudaErrorInvalidValue);
        device_live -= it->second;
        device_allocs.erase(it);
    }
    free(ptr);
    return ok();
}

extern "C" cudaError_t cudaHostAlloc(void **ptr, size_t size, unsigned int flags) {
    if (!ptr || (flags & ~0x7u)) return fail(cudaErrorInvalidValue);
    *ptr = NULL;
    if (size == 0) return ok();
    void *p = NULL;
    if (posix_memalign(&p, 4096, size) != 0) return fail(cudaErrorMemoryAllocation);
    std::lock_guard<std::mutex> g(mem_m);
    pinned_allocs[(uintptr_t)p] = size;
    *ptr = p;
    return ok();
}

extern "C" cudaError_t cudaMallocHost(void **ptr, size_t size) { return cudaHostAlloc(ptr, size, 0); }

extern "C" cudaError_t cudaFreeHost(void *ptr) {
    if (on_worker) return fail(cudaErrorNotPermitted);
    if (!ptr) return ok();
    sync_all(); /* like cudaFree, cudaFreeHost waits for the device (a copy may still read it) */
    {
        std::lock_guard<std::mutex> g(mem_m);
        auto it = pinned_allocs.find((uintptr_t)ptr);
        if (it == pinned_allocs.end()) return fail(cudaErrorInvalidValue);
        pinned_allocs.erase(it);
    }
    free(ptr);
    return ok();
}

extern "C" cudaError_t cudaHostRegister(void *ptr, size_t size, unsigned int flags) {
    if (!ptr || size == 0 || (flags & ~0xfu)) return fail(cudaErrorInvalidValue);
    std::lock_guard<std::mutex> g(mem_m);
    const uintptr_t a = (uintptr_t)ptr;
    if (overlaps(device_allocs, a, size)) return fail(cudaErrorInvalidValue);
    if (overlaps(registered, a, size) || overlaps(pinned_allocs, a, size))
        return fail(cudaErrorHostMemoryAlreadyRegistered);
    registered[a] = size;
    return ok();
}

extern "C" cudaError_t cudaHostUnregister(void *ptr) {
    std::lock_guard<std::mutex> g(mem_m);
    auto it = registered.find((uintptr_t)ptr);
    if (!ptr || it == registered.end()) return fail(cudaErrorHostMemoryNotRegistered);
    registered.erase(it);
    return ok();
}

/* ---- copies ---- */

extern "C" cudaError_t cudaMemcpy(void *dst, const void *src, size_t count, enum cudaMemcpyKind kind) {
    if (on_worker) return fail(cudaErrorNotPermitted);
    const cudaError_t e = check_copy(dst, count, src, count, kind);
    if (e) return fail(e);
    legacy_sync();
    if (count) memmove(dst, src, count);
    const cudaError_t a = pending_async();
    return a ? fail(a) : ok();
}

extern "C" cudaError_t cudaMemcpyAsync(void *dst, const void *src, size_t count, enum cudaMemcpyKind kind,
                                       cudaStream_t stream) {
    const cudaError_t e = check_copy(dst, count, src, count, kind);
    if (e) return fail(e);
    if (!count) return ok();
    /* the bytes are read when the stream runs the copy, not now: a host buffer changed before then shows it */
    return fail(cvx_emu::enqueue(stream, [dst, src, count] { memmove(dst, src, count); }));
}

extern "C" cudaError_t cudaMemcpy2DAsync(void *dst, size_t dpitch, const void *src, size_t spitch, size_t width,
                                         size_t height, enum cudaMemcpyKind kind, cudaStream_t stream) {
    if (width > dpitch || width > spitch) return fail(cudaErrorInvalidPitchValue);
    if (!width || !height) return ok();
    const cudaError_t e = check_copy(dst, dpitch * (height - 1) + width, src, spitch * (height - 1) + width, kind);
    if (e) return fail(e);
    return fail(cvx_emu::enqueue(stream, [=] {
        for (size_t r = 0; r < height; r++) memmove((char *)dst + r * dpitch, (const char *)src + r * spitch, width);
    }));
}

extern "C" cudaError_t cudaMemsetAsync(void *ptr, int value, size_t count, cudaStream_t stream) {
    if (!count) return ok();
    if (!is_device(ptr, count)) return fail(cudaErrorInvalidValue);
    return fail(cvx_emu::enqueue(stream, [ptr, value, count] { memset(ptr, value, count); }));
}

extern "C" cudaError_t cudaMemset(void *ptr, int value, size_t count) {
    if (on_worker) return fail(cudaErrorNotPermitted);
    if (!count) return ok();
    if (!is_device(ptr, count)) return fail(cudaErrorInvalidValue);
    legacy_sync();
    memset(ptr, value, count);
    return ok();
}

/* ---- streams ---- */

extern "C" cudaError_t cudaStreamCreateWithFlags(cudaStream_t *ps, unsigned int flags) {
    if (!ps || (flags & ~1u)) return fail(cudaErrorInvalidValue);
    if (need_device()) return fail(cudaErrorNoDevice);
    cudaStream_t s = new CUstream_st;
    s->flags = flags;
    s->worker = std::thread(worker_loop, s);
    {
        std::lock_guard<std::mutex> g(registry_m);
        streams.insert(s);
    }
    *ps = s;
    return ok();
}

extern "C" cudaError_t cudaStreamCreate(cudaStream_t *ps) { return cudaStreamCreateWithFlags(ps, 0); }

/* CUDA returns at once and lets queued work finish; the emulation finishes it before returning. */
extern "C" cudaError_t cudaStreamDestroy(cudaStream_t s) {
    if (on_worker) return fail(cudaErrorNotPermitted);
    {
        std::lock_guard<std::mutex> g(registry_m);
        if (!s || !streams.erase(s)) return fail(cudaErrorInvalidResourceHandle);
    }
    {
        std::lock_guard<std::mutex> g(s->m);
        s->stop = true;
        s->cv.notify_all();
    }
    s->worker.join();
    delete s;
    return ok();
}

extern "C" cudaError_t cudaStreamSynchronize(cudaStream_t s) {
    if (on_worker) return fail(cudaErrorNotPermitted);
    if (!s) {
        legacy_sync();
    } else {
        if (!stream_live(s)) return fail(cudaErrorInvalidResourceHandle);
        sync_stream(s);
    }
    const cudaError_t a = pending_async();
    return a ? fail(a) : ok();
}

extern "C" cudaError_t cudaStreamQuery(cudaStream_t s) {
    if (!s) return ok();
    if (!stream_live(s)) return fail(cudaErrorInvalidResourceHandle);
    std::lock_guard<std::mutex> g(s->m);
    return s->completed == s->submitted ? ok() : cudaErrorNotReady;
}

extern "C" cudaError_t cudaLaunchHostFunc(cudaStream_t s, cudaHostFn_t fn, void *data) {
    if (!fn) return fail(cudaErrorInvalidValue);
    return fail(cvx_emu::enqueue(s, [fn, data] { fn(data); }));
}

/* ---- events ---- */

extern "C" cudaError_t cudaEventCreateWithFlags(cudaEvent_t *pe, unsigned int flags) {
    if (!pe || (flags & ~3u)) return fail(cudaErrorInvalidValue);
    cudaEvent_t e = new CUevent_st;
    e->s = std::make_shared<event_state>();
    e->s->timing = !(flags & cudaEventDisableTiming);
    {
        std::lock_guard<std::mutex> g(registry_m);
        events.insert(e);
    }
    *pe = e;
    return ok();
}

extern "C" cudaError_t cudaEventCreate(cudaEvent_t *pe) { return cudaEventCreateWithFlags(pe, 0); }

extern "C" cudaError_t cudaEventDestroy(cudaEvent_t e) {
    {
        std::lock_guard<std::mutex> g(registry_m);
        if (!e || !events.erase(e)) return fail(cudaErrorInvalidResourceHandle);
    }
    delete e; /* a record still queued keeps the state alive */
    return ok();
}

extern "C" cudaError_t cudaEventRecord(cudaEvent_t e, cudaStream_t stream) {
    if (!event_live(e)) return fail(cudaErrorInvalidResourceHandle);
    std::shared_ptr<event_state> st = e->s;
    uint64_t gen;
    {
        std::lock_guard<std::mutex> g(st->m);
        gen = ++st->recorded;
    }
    return fail(cvx_emu::enqueue(stream, [st, gen] {
        std::lock_guard<std::mutex> g(st->m);
        if (gen >= st->done) {
            st->done = gen;
            st->at = clock_type::now();
        }
        st->cv.notify_all();
    }));
}

extern "C" cudaError_t cudaEventQuery(cudaEvent_t e) {
    if (!event_live(e)) return fail(cudaErrorInvalidResourceHandle);
    std::lock_guard<std::mutex> g(e->s->m);
    return e->s->done >= e->s->recorded ? ok() : cudaErrorNotReady;
}

extern "C" cudaError_t cudaEventSynchronize(cudaEvent_t e) {
    if (on_worker) return fail(cudaErrorNotPermitted);
    if (!event_live(e)) return fail(cudaErrorInvalidResourceHandle);
    event_state *st = e->s.get();
    {
        std::unique_lock<std::mutex> lk(st->m);
        const uint64_t target = st->recorded;
        st->cv.wait(lk, [st, target] { return st->done >= target; });
    }
    const cudaError_t a = pending_async();
    return a ? fail(a) : ok();
}

extern "C" cudaError_t cudaStreamWaitEvent(cudaStream_t s, cudaEvent_t e, unsigned int flags) {
    if (flags & ~1u) return fail(cudaErrorInvalidValue);
    if (!event_live(e)) return fail(cudaErrorInvalidResourceHandle);
    std::shared_ptr<event_state> st = e->s;
    uint64_t target;
    {
        std::lock_guard<std::mutex> g(st->m);
        target = st->recorded; /* the record made before this call (none: nothing to wait for) */
    }
    if (!target) return ok();
    return fail(cvx_emu::enqueue(s, [st, target] {
        std::unique_lock<std::mutex> lk(st->m);
        st->cv.wait(lk, [&] { return st->done >= target; });
    }));
}

extern "C" cudaError_t cudaEventElapsedTime(float *ms, cudaEvent_t start, cudaEvent_t end) {
    if (!ms) return fail(cudaErrorInvalidValue);
    if (!event_live(start) || !event_live(end)) return fail(cudaErrorInvalidResourceHandle);
    event_state *a = start->s.get(), *b = end->s.get();
    std::scoped_lock lk(a->m, b->m);
    if (!a->timing || !b->timing || !a->recorded || !b->recorded) return fail(cudaErrorInvalidResourceHandle);
    if (a->done < a->recorded || b->done < b->recorded) return cudaErrorNotReady;
    *ms = std::chrono::duration<float, std::milli>(b->at - a->at).count();
    return ok();
}

/* ---- kernels ---- */

extern "C" cudaError_t cudaFuncSetAttribute(const void *func, enum cudaFuncAttribute attr, int value) {
    if (!func) return fail(cudaErrorInvalidDeviceFunction);
    if (attr != cudaFuncAttributeMaxDynamicSharedMemorySize || value < 0 || value > (227 << 10))
        return fail(cudaErrorInvalidValue);
    std::lock_guard<std::mutex> g(registry_m);
    smem_attr[func] = value;
    return ok();
}

namespace cvx_emu {
void submit(cudaStream_t stream, const kernel_launch &l) {
    const dim3 g = l.grid, b = l.block;
    cudaError_t e = cudaSuccess;
    const uint64_t threads = (uint64_t)b.x * b.y * b.z;
    if (!g.x || !g.y || !g.z || !threads || g.x > (unsigned)INT32_MAX || g.y > 65535 || g.z > 65535 || b.x > 1024 ||
        b.y > 1024 || b.z > 64 || threads > 1024)
        e = cudaErrorInvalidConfiguration;
    else if (l.smem > max_dynamic_smem(l.func))
        e = cudaErrorInvalidValue;
    else if (stream && !stream_live(stream))
        e = cudaErrorInvalidResourceHandle;
    if (e != cudaSuccess) {
        l.destroy(l.pack);
        fail(e);
        return;
    }
    const kernel_launch copy = l;
    e = enqueue(stream, [copy] {
        const cudaError_t r = execute(copy);
        copy.destroy(copy.pack);
        if (r != cudaSuccess) set_async_error(r);
    });
    if (e != cudaSuccess) {
        l.destroy(l.pack);
        fail(e);
    }
}
} // namespace cvx_emu

/* The caching allocator of CVX_DEVICE_CUDA: device memory for mem.c, from cudaMalloc only (never managed memory).
 *
 * cudaMalloc and cudaFree are slow (cudaFree synchronises the device), and every activation arena, weight group and
 * prefetch ring would otherwise pay them each time a component moves. So memory is held in segments (one
 * cudaMalloc each) that are split into blocks and kept when freed, for the next allocation to reuse:
 *
 *   every request is rounded up to 512 bytes (so every block is 512-byte aligned and distinct, 0 bytes included);
 *   small requests (up to 1 MiB) come from 2 MiB segments shared by many blocks;
 *   large requests get a segment of their size rounded up to 2 MiB (the driver's page), or a cached free block at
 *     least that large, split when the rest is over 1 MiB (smaller rests stay with the block: no slivers);
 *   freed blocks merge with free neighbours of their segment (best fit by size, then address, per pool).
 *
 * Stream safety. Ops run in order on the one compute stream, so a block freed after the launches that use it and
 * handed to the next op is ordered by the stream itself. The copy stream is not: a block freed while compute may
 * still read it, then handed to a weight-group copy, could be overwritten under a running kernel. So every free
 * records a compute fence (queue.cu: an event on the compute stream) with the block, merged blocks keep the newest,
 * and an allocation that returns a block whose fence is not yet complete makes the copy stream wait for it
 * (cudaStreamWaitEvent: on the device, the host does not block). Whatever stream then uses the block is ordered
 * after the compute work that last used it.
 *
 * Out of memory: a failed cudaMalloc empties the cache (after synchronising the device, so no queued work still uses
 * a cached block) and is retried once; a second failure is CVX_ERR_OOM, and the allocator is as before the call.
 *
 * Statistics: reserved = bytes held from cudaMalloc (cache included); mem.c reports it as reserved_bytes of "cuda".
 * The cuBLAS workspace of device.cu is cudaMalloc'd apart and is not in it. */
#include <pthread.h>

#include <set>
#include <unordered_map>

#include "common.cuh"

namespace {
const size_t ROUND = 512;
const size_t SMALL_LIMIT = (size_t)1 << 20;
const size_t SMALL_SEGMENT = (size_t)2 << 20;
const size_t LARGE_ROUND = (size_t)2 << 20;
const size_t LARGE_SPLIT_MIN = (size_t)1 << 20;

struct block {
    char *ptr;
    size_t size;
    block *prev, *next; /* neighbours in the same segment, by address */
    int allocated, small;
    uint64_t fence; /* the compute fence recorded when it was last freed (0: none) */
};

struct by_size {
    bool operator()(const block *a, const block *b) const {
        return a->size != b->size ? a->size < b->size : a->ptr < b->ptr;
    }
};

/* On the heap, never destroyed: device memory may be freed by exit handlers after static destructors ran. */
struct alloc_state {
    std::set<block *, by_size> free_blocks[2]; /* [0] large, [1] small */
    std::unordered_map<void *, block *> live;
};
alloc_state &A = *new alloc_state;
std::set<block *, by_size> *const free_blocks = A.free_blocks;
std::unordered_map<void *, block *> &live = A.live;
pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
cvx_cuda_alloc_stats stats;

size_t round_up(size_t n, size_t to) { return (n + to - 1) / to * to; }

/* A block with `rest` bytes more than asked for is split: small ones at any whole unit, large ones only when the rest
 * is over 1 MiB. */
bool worth_splitting(size_t rest, int small) { return small ? rest >= ROUND : rest > LARGE_SPLIT_MIN; }

/* Cuts `b` (free, not in a pool) to `size`, the rest becoming a free block after it. */
void split(block *b, size_t size) {
    block *rest = new block{b->ptr + size, b->size - size, b, b->next, 0, b->small, b->fence};
    if (b->next) b->next->prev = rest;
    b->next = rest;
    b->size = size;
    free_blocks[rest->small].insert(rest);
}

/* Gives every segment that is one whole free block back to the driver. The caller synchronised the device. */
void release_cached(void) {
    for (int p = 0; p < 2; p++) {
        for (auto it = free_blocks[p].begin(); it != free_blocks[p].end();) {
            block *b = *it;
            if (b->prev || b->next) {
                ++it;
                continue;
            }
            it = free_blocks[p].erase(it);
            cudaFree(b->ptr);
            stats.reserved_bytes -= (int64_t)b->size;
            stats.cached_bytes -= (int64_t)b->size;
            stats.num_segments--;
            delete b;
        }
    }
    cudaGetLastError();
}

/* Takes a cached block of at least `size` from the pool, split to fit; NULL when none. */
block *take_cached(size_t size, int small) {
    block key{NULL, size, NULL, NULL, 0, small, 0};
    auto it = free_blocks[small].lower_bound(&key);
    if (it == free_blocks[small].end()) return NULL;
    block *b = *it;
    free_blocks[small].erase(it);
    if (worth_splitting(b->size - size, small)) split(b, size);
    return b;
}
} // namespace

extern "C" cvx_status cvx_cuda_mem_alloc(size_t bytes, void **out) {
    *out = NULL;
    if (!cvx_cuda_compute_stream()) CVX_CHECK(cvx_cuda_init(0));
    const size_t size = round_up(bytes ? bytes : 1, ROUND);
    const int small = size <= SMALL_LIMIT;
    pthread_mutex_lock(&lock);
    block *b = take_cached(size, small);
    if (b) {
        stats.num_cache_hits++;
    } else {
        const size_t seg = small ? SMALL_SEGMENT : round_up(size, LARGE_ROUND);
        void *p = NULL;
        cudaError_t e = cudaMalloc(&p, seg);
        if (e != cudaSuccess) {
            cudaGetLastError();
            cudaDeviceSynchronize(); /* no queued work may still use a block given back */
            release_cached();
            stats.num_retries++;
            e = cudaMalloc(&p, seg);
        }
        if (e != cudaSuccess) {
            cudaGetLastError();
            size_t free_b = 0, total_b = 0;
            cudaMemGetInfo(&free_b, &total_b);
            cudaGetLastError();
            const long long held = (long long)stats.reserved_bytes;
            pthread_mutex_unlock(&lock);
            return CVX_FAIL(CVX_ERR_OOM,
                            "cuda: out of memory allocating %zu bytes (cudaMalloc of %zu bytes failed after emptying "
                            "the cache: %s; cogvideo_c holds %lld bytes, %zu of %zu bytes are free on the device)",
                            bytes, seg, cudaGetErrorString(e), held, free_b, total_b);
        }
        stats.reserved_bytes += (int64_t)seg;
        stats.cached_bytes += (int64_t)seg; /* the new segment counts as cache until the block below leaves it */
        if (stats.reserved_bytes > stats.peak_reserved_bytes) stats.peak_reserved_bytes = stats.reserved_bytes;
        stats.num_segments++;
        stats.num_mallocs++;
        b = new block{(char *)p, seg, NULL, NULL, 0, small, 0};
        if (worth_splitting(seg - size, small)) split(b, size);
    }
    b->allocated = 1;
    stats.cached_bytes -= (int64_t)b->size;
    const uint64_t fence = b->fence;
    b->fence = 0;
    live[b->ptr] = b;
    pthread_mutex_unlock(&lock);
    /* the copy stream may write it next: not before the compute work that used it last */
    const cvx_status st = cvx_cuda_copy_after(fence);
    if (st != CVX_OK) {
        cvx_cuda_mem_free(b->ptr);
        return st;
    }
    *out = b->ptr;
    return CVX_OK;
}

extern "C" void cvx_cuda_mem_free(void *ptr) {
    if (!ptr) return;
    /* recorded before the lock: fences have their own (queue.cu), and no allocation can reuse the block yet */
    const uint64_t fence = cvx_cuda_fence();
    pthread_mutex_lock(&lock);
    auto it = live.find(ptr);
    if (it == live.end()) {
        pthread_mutex_unlock(&lock);
        return;
    }
    block *b = it->second;
    live.erase(it);
    b->allocated = 0;
    b->fence = fence;
    stats.cached_bytes += (int64_t)b->size;
    /* merge with free neighbours: fences are positions on one stream, so the newest covers both */
    block *n = b->next;
    if (n && !n->allocated) {
        free_blocks[n->small].erase(n);
        b->size += n->size;
        b->next = n->next;
        if (n->next) n->next->prev = b;
        if (n->fence > b->fence) b->fence = n->fence;
        delete n;
    }
    block *p = b->prev;
    if (p && !p->allocated) {
        free_blocks[p->small].erase(p);
        p->size += b->size;
        p->next = b->next;
        if (b->next) b->next->prev = p;
        if (b->fence > p->fence) p->fence = b->fence;
        delete b;
        b = p;
    }
    free_blocks[b->small].insert(b);
    pthread_mutex_unlock(&lock);
}

extern "C" void cvx_cuda_empty_cache(void) {
    if (!cvx_cuda_compute_stream()) return;
    pthread_mutex_lock(&lock);
    cudaDeviceSynchronize(); /* every fence complete: no stream still uses a cached block */
    release_cached();
    pthread_mutex_unlock(&lock);
}

extern "C" void cvx_cuda_get_alloc_stats(cvx_cuda_alloc_stats *out) {
    pthread_mutex_lock(&lock);
    *out = stats;
    pthread_mutex_unlock(&lock);
}

extern "C" void cvx_cuda_reset_alloc_peak(void) {
    pthread_mutex_lock(&lock);
    stats.peak_reserved_bytes = stats.reserved_bytes;
    pthread_mutex_unlock(&lock);
}

extern "C" cvx_status cvx_cuda_mem_get_info(size_t *free_bytes, size_t *total_bytes) {
    *free_bytes = *total_bytes = 0;
    if (!cvx_cuda_compute_stream()) CVX_CHECK(cvx_cuda_init(0));
    CVX_CU(cudaMemGetInfo(free_bytes, total_bytes));
    return CVX_OK;
}

extern "C" cvx_status cvx_cuda_mem_zero(void *ptr, size_t bytes) {
    CVX_CU(cudaMemsetAsync(ptr, 0, bytes, CVX_STREAM()));
    return CVX_OK;
}

extern "C" cvx_status cvx_cuda_memcpy(void *dst, const void *src, size_t bytes) {
    CVX_CU(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDefault, CVX_STREAM()));
    CVX_CU(cudaStreamSynchronize(CVX_STREAM()));
    return CVX_OK;
}

/* ---- pinned host memory ---- */

extern "C" cvx_status cvx_cuda_host_register(void *ptr, size_t bytes, int read_only) {
    if (!cvx_cuda_compute_stream()) CVX_CHECK(cvx_cuda_init(0));
    unsigned flags = cudaHostRegisterPortable;
    if (read_only) {
        /* a read-only mapping (the checkpoint) can be registered only as read-only, where the device supports it */
        int supported = 1; /* the emulation registers any host range */
#ifndef CVX_CUDA_EMU
        int dev = 0;
        CVX_CU(cudaGetDevice(&dev));
        if (cudaDeviceGetAttribute(&supported, cudaDevAttrHostRegisterReadOnlySupported, dev) != cudaSuccess)
            supported = 0;
        cudaGetLastError();
#endif
        if (!supported) return CVX_FAIL(CVX_ERR_INVALID, "cuda: this device cannot pin read-only host memory");
        flags |= cudaHostRegisterReadOnly;
    }
    CVX_CU(cudaHostRegister(ptr, bytes, flags));
    return CVX_OK;
}

extern "C" void cvx_cuda_host_unregister(void *ptr) {
    if (cudaHostUnregister(ptr) != cudaSuccess) cudaGetLastError();
}

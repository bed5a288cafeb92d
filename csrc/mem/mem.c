#define _POSIX_C_SOURCE 200809L
#include "mem.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#ifdef CVX_WITH_CUDA
#include "../ops/cuda/cuda_ops.h" /* the device-memory hooks of the CUDA device */
#endif

/* Allocation records live beside the data, never in front of it (device memory cannot be read from the host): a
 * hash table keyed by pointer (open addressing, linear probing, backward-shift deletion) gives cvx_mem_free the
 * device, kind and size. Weight allocations are also kept per device in a table sorted by address, so that
 * cvx_mem_is_resident can answer "does this pointer lie inside a live weight buffer on that device". */
#define MEM_ALIGN 64

typedef struct mem_record {
    uintptr_t ptr; /* 0: empty slot */
    uint64_t bytes;
    uint64_t reserved;
    uint8_t device;
    uint8_t kind;
} mem_record;

typedef struct mem_range {
    uintptr_t start;
    uint64_t bytes;
} mem_range;

static pthread_mutex_t mem_lock = PTHREAD_MUTEX_INITIALIZER;
static cvx_mem_stats mem_stats[CVX_NUM_DEVICES];
static mem_record *records; /* [record_cap], a power of two */
static size_t record_cap, record_count;
static mem_range *weight_ranges[CVX_NUM_DEVICES]; /* sorted by start */
static size_t range_count[CVX_NUM_DEVICES], range_cap[CVX_NUM_DEVICES];
/* Bytes of allocations between their limit check and their success: they count against the limit (so that
 * concurrent allocations cannot both pass it) but enter the statistics only once they exist. */
static int64_t pending_bytes[CVX_NUM_DEVICES];
static int64_t fail_countdown = -1; /* cvx_mem_fail_at: allocations to let through before one fails */
static int64_t allocs_since_mark;

/* Fibonacci hashing: the product's high bits, which every bit of the pointer reaches (page- or 2 MiB-aligned
 * device pointers would cluster in the low bits). The table masks the result, so fold the high half down. */
static size_t record_hash(uintptr_t p) {
    const uint64_t h = (uint64_t)p * 0x9e3779b97f4a7c15ull;
    return (size_t)(h >> 32 ^ h >> 48);
}

/* With mem_lock held. */
static int records_grow(void) {
    const size_t cap = record_cap ? 2 * record_cap : 1024;
    mem_record *t = calloc(cap, sizeof(*t));
    if (!t) return -1;
    for (size_t i = 0; i < record_cap; i++) {
        if (!records[i].ptr) continue;
        size_t j = record_hash(records[i].ptr) & (cap - 1);
        while (t[j].ptr) j = (j + 1) & (cap - 1);
        t[j] = records[i];
    }
    free(records);
    records = t;
    record_cap = cap;
    return 0;
}

static int record_insert(const mem_record *r) {
    if (2 * (record_count + 1) > record_cap && records_grow() < 0) return -1;
    size_t j = record_hash(r->ptr) & (record_cap - 1);
    while (records[j].ptr) j = (j + 1) & (record_cap - 1);
    records[j] = *r;
    record_count++;
    return 0;
}

static mem_record *record_find(uintptr_t p) {
    if (!record_cap || !p) return NULL;
    size_t j = record_hash(p) & (record_cap - 1);
    while (records[j].ptr) {
        if (records[j].ptr == p) return &records[j];
        j = (j + 1) & (record_cap - 1);
    }
    return NULL;
}

/* Removes the record at `r` and shifts later members of its probe run back, so lookups need no tombstones. */
static void record_erase(mem_record *r) {
    size_t i = (size_t)(r - records);
    records[i].ptr = 0;
    record_count--;
    for (size_t j = (i + 1) & (record_cap - 1); records[j].ptr; j = (j + 1) & (record_cap - 1)) {
        const size_t home = record_hash(records[j].ptr) & (record_cap - 1);
        /* move j back to the hole when its home is not in (i, j] cyclically */
        const int between = i <= j ? (home > i && home <= j) : (home > i || home <= j);
        if (!between) {
            records[i] = records[j];
            records[j].ptr = 0;
            i = j;
        }
    }
}

/* The index of the first range starting after p. */
static size_t range_upper(cvx_device dev, uintptr_t p) {
    size_t lo = 0, hi = range_count[dev];
    while (lo < hi) {
        const size_t mid = (lo + hi) / 2;
        if (weight_ranges[dev][mid].start <= p)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

static int range_insert(cvx_device dev, uintptr_t start, uint64_t bytes) {
    if (range_count[dev] == range_cap[dev]) {
        const size_t cap = range_cap[dev] ? 2 * range_cap[dev] : 64;
        mem_range *t = realloc(weight_ranges[dev], cap * sizeof(*t));
        if (!t) return -1;
        weight_ranges[dev] = t;
        range_cap[dev] = cap;
    }
    const size_t at = range_upper(dev, start);
    memmove(&weight_ranges[dev][at + 1], &weight_ranges[dev][at], (range_count[dev] - at) * sizeof(mem_range));
    weight_ranges[dev][at] = (mem_range){start, bytes};
    range_count[dev]++;
    return 0;
}

static void range_erase(cvx_device dev, uintptr_t start) {
    const size_t at = range_upper(dev, start);
    if (at == 0 || weight_ranges[dev][at - 1].start != start) return;
    memmove(&weight_ranges[dev][at - 1], &weight_ranges[dev][at], (range_count[dev] - at) * sizeof(mem_range));
    range_count[dev]--;
}

const char *cvx_device_name(cvx_device dev) {
    switch (dev) {
    case CVX_DEVICE_CPU: return "cpu";
    case CVX_DEVICE_EMU: return "emu";
    case CVX_DEVICE_CUDA: return "cuda";
    }
    return "unknown";
}

cvx_status cvx_device_parse(const char *name, cvx_device *out) {
    if (strcmp(name, "cpu") == 0)
        *out = CVX_DEVICE_CPU;
    else if (strcmp(name, "emu") == 0)
        *out = CVX_DEVICE_EMU;
    else if (strcmp(name, "cuda") == 0 || strcmp(name, "cuda:0") == 0)
        *out = CVX_DEVICE_CUDA;
    else
        return CVX_FAIL(CVX_ERR_INVALID, "unknown device '%s' (expected 'cpu', 'emu' or 'cuda')", name);
    return CVX_OK;
}

static void stats_grow(cvx_mem_stats *s, cvx_mem_kind kind, int64_t bytes, int64_t reserved) {
    s->allocated_bytes += bytes;
    s->reserved_bytes += reserved;
    s->kind_allocated_bytes[kind] += bytes;
    if (s->allocated_bytes > s->peak_allocated_bytes) s->peak_allocated_bytes = s->allocated_bytes;
    if (s->reserved_bytes > s->peak_reserved_bytes) s->peak_reserved_bytes = s->reserved_bytes;
    if (s->kind_allocated_bytes[kind] > s->kind_peak_bytes[kind])
        s->kind_peak_bytes[kind] = s->kind_allocated_bytes[kind];
    if (s->allocated_bytes > s->window_peak_bytes) s->window_peak_bytes = s->allocated_bytes;
    if (s->kind_allocated_bytes[kind] > s->window_kind_peak_bytes[kind])
        s->window_kind_peak_bytes[kind] = s->kind_allocated_bytes[kind];
    s->num_allocs++;
    s->num_active++;
}

/* Gives a block back to where it came from. */
static void release_block(cvx_device dev, void *block) {
#ifdef CVX_WITH_CUDA
    if (dev == CVX_DEVICE_CUDA) {
        cvx_cuda_mem_free(block);
        return;
    }
#else
    (void)dev;
#endif
    free(block);
}

/* align: MEM_ALIGN, or the page size (cvx_mem_alloc_pages: the block is also reserved in whole pages). */
static cvx_status mem_alloc(cvx_device dev, cvx_mem_kind kind, size_t bytes, size_t align, void **out) {
    *out = NULL;
    if ((unsigned)dev >= CVX_NUM_DEVICES || (unsigned)kind >= CVX_NUM_MEM_KINDS)
        return CVX_FAIL(CVX_ERR_INVALID, "bad device %d or memory kind %d", (int)dev, (int)kind);
#ifndef CVX_WITH_CUDA
    if (dev == CVX_DEVICE_CUDA) return CVX_FAIL(CVX_ERR_INVALID, "the CUDA device is not available in this build");
#endif
    if (bytes > ((size_t)1 << 50)) {
        pthread_mutex_lock(&mem_lock);
        mem_stats[dev].num_ooms++;
        pthread_mutex_unlock(&mem_lock);
        return CVX_FAIL(CVX_ERR_OOM, "%s: allocation of %zu bytes is absurd", cvx_device_name(dev), bytes);
    }
    /* every block is at least one alignment unit, so each live allocation has a distinct address. On CUDA the
     * caching allocator rounds and reserves (reserved_bytes is its count: cvx_mem_get_stats) */
    const size_t reserved = bytes ? (bytes + align - 1) / align * align : align;
    const size_t counted = dev == CVX_DEVICE_CUDA ? 0 : reserved;

    pthread_mutex_lock(&mem_lock);
    cvx_mem_stats *s = &mem_stats[dev];
    allocs_since_mark++;
    if (fail_countdown == 0) {
        fail_countdown = -1;
        s->num_ooms++;
        pthread_mutex_unlock(&mem_lock);
        return CVX_FAIL(CVX_ERR_OOM, "%s: allocating %zu bytes failed (injected by cvx_mem_fail_at)",
                        cvx_device_name(dev), bytes);
    }
    if (fail_countdown > 0) fail_countdown--;
    if (s->limit_bytes > 0 &&
        s->allocated_bytes + pending_bytes[dev] + s->mapped_bytes + (int64_t)bytes > s->limit_bytes) {
        int64_t allocated = s->allocated_bytes, limit = s->limit_bytes;
        s->num_ooms++;
        pthread_mutex_unlock(&mem_lock);
        return CVX_FAIL(CVX_ERR_OOM,
                        "%s: allocating %zu bytes would exceed the memory limit of %lld bytes (%lld allocated)",
                        cvx_device_name(dev), bytes, (long long)limit, (long long)allocated);
    }
    pending_bytes[dev] += (int64_t)bytes;
    pthread_mutex_unlock(&mem_lock);

    void *block = NULL;
#ifdef CVX_WITH_CUDA
    if (dev == CVX_DEVICE_CUDA) {
        const cvx_status st = cvx_cuda_mem_alloc(bytes, &block);
        if (st != CVX_OK) {
            pthread_mutex_lock(&mem_lock);
            pending_bytes[dev] -= (int64_t)bytes;
            s->num_ooms++;
            pthread_mutex_unlock(&mem_lock);
            return st;
        }
    } else
#endif
        if (posix_memalign(&block, align, reserved) != 0)
        block = NULL;
    pthread_mutex_lock(&mem_lock);
    pending_bytes[dev] -= (int64_t)bytes;
    const mem_record rec = {(uintptr_t)block, bytes, counted, (uint8_t)dev, (uint8_t)kind};
    int ok = block && record_insert(&rec) == 0;
    if (ok && kind == CVX_MEM_WEIGHTS && range_insert(dev, (uintptr_t)block, bytes) < 0) {
        record_erase(record_find((uintptr_t)block));
        ok = 0;
    }
    if (!ok) { /* nothing was counted: the peaks never saw bytes that were not held */
        s->num_ooms++;
        pthread_mutex_unlock(&mem_lock);
        release_block(dev, block);
        return CVX_FAIL(CVX_ERR_OOM, "%s: the system refused %zu bytes", cvx_device_name(dev), bytes);
    }
    stats_grow(s, kind, (int64_t)bytes, (int64_t)counted);
    pthread_mutex_unlock(&mem_lock);
    *out = block;
    return CVX_OK;
}

cvx_status cvx_mem_alloc(cvx_device dev, cvx_mem_kind kind, size_t bytes, void **out) {
    return mem_alloc(dev, kind, bytes, MEM_ALIGN, out);
}

cvx_status cvx_mem_alloc_pages(cvx_mem_kind kind, size_t bytes, void **out) {
    const long page = sysconf(_SC_PAGESIZE);
    return mem_alloc(CVX_DEVICE_CPU, kind, bytes, page > MEM_ALIGN ? (size_t)page : MEM_ALIGN, out);
}

cvx_status cvx_mem_calloc(cvx_device dev, cvx_mem_kind kind, size_t bytes, void **out) {
    CVX_CHECK(cvx_mem_alloc(dev, kind, bytes, out));
#ifdef CVX_WITH_CUDA
    if (dev == CVX_DEVICE_CUDA) {
        const cvx_status st = cvx_cuda_mem_zero(*out, bytes);
        if (st != CVX_OK) {
            cvx_mem_free(*out);
            *out = NULL;
        }
        return st;
    }
#endif
    memset(*out, 0, bytes);
    return CVX_OK;
}

void cvx_mem_free(void *ptr) {
    if (!ptr) return;
    pthread_mutex_lock(&mem_lock);
    mem_record *r = record_find((uintptr_t)ptr);
    if (!r) { /* not ours: refuse to corrupt the statistics */
        pthread_mutex_unlock(&mem_lock);
        return;
    }
    const mem_record rec = *r;
    record_erase(r);
    if (rec.kind == CVX_MEM_WEIGHTS) range_erase((cvx_device)rec.device, rec.ptr);
    cvx_mem_stats *s = &mem_stats[rec.device];
    s->allocated_bytes -= (int64_t)rec.bytes;
    s->reserved_bytes -= (int64_t)rec.reserved;
    s->kind_allocated_bytes[rec.kind] -= (int64_t)rec.bytes;
    s->num_frees++;
    s->num_active--;
    pthread_mutex_unlock(&mem_lock);
    release_block((cvx_device)rec.device, ptr);
}

size_t cvx_mem_size(const void *ptr) {
    pthread_mutex_lock(&mem_lock);
    const mem_record *r = record_find((uintptr_t)ptr);
    const size_t bytes = r ? (size_t)r->bytes : 0;
    pthread_mutex_unlock(&mem_lock);
    return bytes;
}

int cvx_mem_is_resident(cvx_device dev, const void *ptr, size_t bytes) {
    if ((unsigned)dev >= CVX_NUM_DEVICES || !ptr) return 0;
    const uintptr_t p = (uintptr_t)ptr;
    pthread_mutex_lock(&mem_lock);
    const size_t at = range_upper(dev, p);
    int inside = 0;
    if (at > 0) {
        const mem_range *r = &weight_ranges[dev][at - 1];
        inside = p - r->start <= r->bytes && bytes <= r->bytes - (p - r->start);
    }
    pthread_mutex_unlock(&mem_lock);
    return inside;
}

int64_t cvx_mem_fail_at(int64_t n) {
    pthread_mutex_lock(&mem_lock);
    const int64_t made = allocs_since_mark;
    allocs_since_mark = 0;
    fail_countdown = n < 0 ? -1 : n;
    pthread_mutex_unlock(&mem_lock);
    return made;
}

void cvx_mem_get_stats(cvx_device dev, cvx_mem_stats *out) {
    if ((unsigned)dev >= CVX_NUM_DEVICES) {
        memset(out, 0, sizeof(*out));
        return;
    }
    pthread_mutex_lock(&mem_lock);
    *out = mem_stats[dev];
    pthread_mutex_unlock(&mem_lock);
#ifdef CVX_WITH_CUDA
    if (dev == CVX_DEVICE_CUDA) { /* what is held from cudaMalloc, the allocator's cache included */
        cvx_cuda_alloc_stats a;
        cvx_cuda_get_alloc_stats(&a);
        out->reserved_bytes = a.reserved_bytes;
        out->peak_reserved_bytes = a.peak_reserved_bytes;
    }
#endif
}

cvx_status cvx_mem_add_mapped(cvx_device dev, int64_t delta) {
    if ((unsigned)dev >= CVX_NUM_DEVICES) return CVX_FAIL(CVX_ERR_INVALID, "bad device %d", (int)dev);
    pthread_mutex_lock(&mem_lock);
    cvx_mem_stats *s = &mem_stats[dev];
    if (delta > 0 && s->limit_bytes > 0 &&
        s->allocated_bytes + pending_bytes[dev] + s->mapped_bytes + delta > s->limit_bytes) {
        const int64_t held = s->allocated_bytes + s->mapped_bytes, limit = s->limit_bytes;
        s->num_ooms++;
        pthread_mutex_unlock(&mem_lock);
        return CVX_FAIL(CVX_ERR_OOM,
                        "%s: mapping %lld bytes of weights would exceed the memory limit of %lld bytes (%lld held)",
                        cvx_device_name(dev), (long long)delta, (long long)limit, (long long)held);
    }
    s->mapped_bytes += delta;
    pthread_mutex_unlock(&mem_lock);
    return CVX_OK;
}

void cvx_mem_reset_peak(cvx_device dev) {
    if ((unsigned)dev >= CVX_NUM_DEVICES) return;
    pthread_mutex_lock(&mem_lock);
    cvx_mem_stats *s = &mem_stats[dev];
    s->peak_allocated_bytes = s->allocated_bytes;
    s->peak_reserved_bytes = s->reserved_bytes;
    for (int k = 0; k < CVX_NUM_MEM_KINDS; k++) s->kind_peak_bytes[k] = s->kind_allocated_bytes[k];
    pthread_mutex_unlock(&mem_lock);
#ifdef CVX_WITH_CUDA
    if (dev == CVX_DEVICE_CUDA) cvx_cuda_reset_alloc_peak();
#endif
}

void cvx_mem_mark_window(cvx_device dev) {
    if ((unsigned)dev >= CVX_NUM_DEVICES) return;
    pthread_mutex_lock(&mem_lock);
    cvx_mem_stats *s = &mem_stats[dev];
    s->window_peak_bytes = s->allocated_bytes;
    for (int k = 0; k < CVX_NUM_MEM_KINDS; k++) s->window_kind_peak_bytes[k] = s->kind_allocated_bytes[k];
    pthread_mutex_unlock(&mem_lock);
}

void cvx_mem_set_limit(cvx_device dev, int64_t bytes) {
    if ((unsigned)dev >= CVX_NUM_DEVICES) return;
    pthread_mutex_lock(&mem_lock);
    mem_stats[dev].limit_bytes = bytes > 0 ? bytes : 0;
    pthread_mutex_unlock(&mem_lock);
}

int cvx_mem_pin(cvx_device dev, void *ptr, size_t bytes, int read_only) {
    if (!ptr || !bytes) return 0;
#ifdef CVX_WITH_CUDA
    if (dev == CVX_DEVICE_CUDA) {
        if (cvx_cuda_host_register(ptr, bytes, read_only) != CVX_OK) {
            cvx_error_clear(); /* not pinned: copies from the range are pageable, which still works */
            return 0;
        }
        pthread_mutex_lock(&mem_lock);
        mem_stats[dev].pinned_bytes += (int64_t)bytes;
        pthread_mutex_unlock(&mem_lock);
        return 1;
    }
#else
    (void)dev, (void)read_only;
#endif
    return 0;
}

void cvx_mem_unpin(cvx_device dev, void *ptr, size_t bytes) {
#ifdef CVX_WITH_CUDA
    if (dev == CVX_DEVICE_CUDA && ptr) {
        cvx_cuda_host_unregister(ptr);
        pthread_mutex_lock(&mem_lock);
        mem_stats[dev].pinned_bytes -= (int64_t)bytes;
        pthread_mutex_unlock(&mem_lock);
    }
#else
    (void)dev, (void)ptr, (void)bytes;
#endif
}

void cvx_mem_empty_cache(cvx_device dev) {
#ifdef CVX_WITH_CUDA
    if (dev == CVX_DEVICE_CUDA) cvx_cuda_empty_cache();
#else
    (void)dev;
#endif
}

cvx_status cvx_mem_copy(void *dst, const void *src, size_t bytes) {
    if (!bytes) return CVX_OK;
#ifdef CVX_WITH_CUDA
    /* Once the CUDA device is in use, any pointer may be device memory: the runtime tells device from host addresses
     * itself (unified addressing, cudaMemcpyDefault), after the compute stream's work. cpu and emu memory are host
     * memory, which it copies too. */
    if (cvx_cuda_compute_stream()) return cvx_cuda_memcpy(dst, src, bytes);
#endif
    memmove(dst, src, bytes);
    return CVX_OK;
}

/* ---- copy queues ---------------------------------------------------------------------------------------------- */

typedef struct copy_job {
    void *dst;
    const void *src;
    size_t bytes;
    int64_t *busy_ns; /* the caller's counter, or NULL */
} copy_job;

struct cvx_queue {
    cvx_device dev;
    pthread_mutex_t lock;
    pthread_cond_t work, done;
    pthread_t thread;
    int running, stop;
    copy_job *jobs; /* a ring of cap jobs; head is the next to run */
    size_t head, count, cap;
    uint64_t submitted, completed;
    int64_t busy_ns;
};

static pthread_mutex_t queues_lock = PTHREAD_MUTEX_INITIALIZER;
static cvx_queue *queues[CVX_NUM_DEVICES];
static double bandwidth[CVX_NUM_DEVICES]; /* bytes per second, 0: unlimited; read under the queue's lock */

static int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static void sleep_until(int64_t t) {
    for (int64_t left = t - now_ns(); left > 0; left = t - now_ns()) {
        struct timespec ts = {(time_t)(left / 1000000000), (long)(left % 1000000000)};
        nanosleep(&ts, NULL);
    }
}

/* The emulated link: runs the queue's copies in order, each taking at least bytes / bandwidth. */
static void *copy_thread(void *arg) {
    cvx_queue *q = arg;
    pthread_mutex_lock(&q->lock);
    for (;;) {
        while (!q->count && !q->stop) pthread_cond_wait(&q->work, &q->lock);
        if (!q->count) { /* stop, and nothing left to run: copies queued from now on run on the caller's thread */
            q->running = 0;
            break;
        }
        const copy_job job = q->jobs[q->head];
        const double bw = bandwidth[q->dev];
        pthread_mutex_unlock(&q->lock);
        const int64_t t0 = now_ns();
        memcpy(job.dst, job.src, job.bytes);
        if (bw > 0) sleep_until(t0 + (int64_t)((double)job.bytes / bw * 1e9));
        const int64_t spent = now_ns() - t0;
        if (job.busy_ns) __atomic_fetch_add(job.busy_ns, spent, __ATOMIC_RELAXED);
        pthread_mutex_lock(&q->lock);
        q->head = (q->head + 1) % q->cap;
        q->count--;
        q->completed++;
        q->busy_ns += spent;
        pthread_cond_broadcast(&q->done);
    }
    pthread_mutex_unlock(&q->lock);
    return NULL;
}

/* A forked child has no copy thread: forget the parent's queues (their memory is the child's to leak, once). */
static void queues_after_fork(void) {
    for (int d = 0; d < CVX_NUM_DEVICES; d++) queues[d] = NULL;
    pthread_mutex_init(&queues_lock, NULL);
    pthread_mutex_init(&mem_lock, NULL);
}

cvx_queue *cvx_copy_queue(cvx_device dev) {
    static int fork_handler;
    if ((unsigned)dev >= CVX_NUM_DEVICES) return NULL;
#ifdef CVX_WITH_CUDA
    /* the copy stream is the device's: initialise cuda:0 unless cvx_cuda_init chose another */
    if (dev == CVX_DEVICE_CUDA && !cvx_cuda_copy_stream() && cvx_cuda_init(0) != CVX_OK) return NULL;
#else
    if (dev == CVX_DEVICE_CUDA) return NULL;
#endif
    pthread_mutex_lock(&queues_lock);
    if (!fork_handler) fork_handler = pthread_atfork(NULL, NULL, queues_after_fork) == 0;
    cvx_queue *q = queues[dev];
    if (!q && (q = calloc(1, sizeof(*q))) != NULL) {
        q->dev = dev;
        pthread_mutex_init(&q->lock, NULL);
        pthread_cond_init(&q->work, NULL);
        pthread_cond_init(&q->done, NULL);
        queues[dev] = q;
    }
    /* the host has no link to model: its copies run at once, on the caller's thread. CUDA's run on its copy
     * stream. Elsewhere a copy thread runs them, started here (again, after cvx_queues_shutdown) */
    if (q && dev == CVX_DEVICE_EMU) {
        pthread_mutex_lock(&q->lock);
        if (!q->running) q->running = pthread_create(&q->thread, NULL, copy_thread, q) == 0;
        pthread_mutex_unlock(&q->lock);
    }
    pthread_mutex_unlock(&queues_lock);
    return q;
}

cvx_status cvx_queue_copy(cvx_queue *q, void *dst, const void *src, size_t bytes, int64_t *busy_ns) {
    if (!q) return CVX_FAIL(CVX_ERR_INVALID, "no copy queue on this device");
#ifdef CVX_WITH_CUDA
    if (q->dev == CVX_DEVICE_CUDA) return cvx_cuda_queue_copy(dst, src, bytes, busy_ns);
#endif
    pthread_mutex_lock(&q->lock);
    if (!q->running) { /* inline: the host queue, or a copy thread that could not start */
        pthread_mutex_unlock(&q->lock);
        const int64_t t0 = now_ns();
        if (bytes) memcpy(dst, src, bytes);
        const int64_t spent = now_ns() - t0;
        if (busy_ns) __atomic_fetch_add(busy_ns, spent, __ATOMIC_RELAXED);
        pthread_mutex_lock(&q->lock);
        q->submitted++;
        q->completed++;
        q->busy_ns += spent;
        pthread_mutex_unlock(&q->lock);
        return CVX_OK;
    }
    if (q->count == q->cap) {
        const size_t cap = q->cap ? 2 * q->cap : 64;
        copy_job *jobs = malloc(cap * sizeof(*jobs));
        if (!jobs) {
            pthread_mutex_unlock(&q->lock);
            return CVX_FAIL(CVX_ERR_OOM, "out of host memory queuing a copy");
        }
        for (size_t i = 0; i < q->count; i++) jobs[i] = q->jobs[(q->head + i) % q->cap];
        free(q->jobs);
        q->jobs = jobs;
        q->head = 0;
        q->cap = cap;
    }
    q->jobs[(q->head + q->count) % q->cap] = (copy_job){dst, src, bytes, busy_ns};
    q->count++;
    q->submitted++;
    pthread_cond_signal(&q->work);
    pthread_mutex_unlock(&q->lock);
    return CVX_OK;
}

cvx_event cvx_queue_record(cvx_queue *q) {
    if (!q) return 0;
#ifdef CVX_WITH_CUDA
    if (q->dev == CVX_DEVICE_CUDA) return cvx_cuda_queue_record();
#endif
    pthread_mutex_lock(&q->lock);
    const cvx_event ev = q->submitted;
    pthread_mutex_unlock(&q->lock);
    return ev;
}

int cvx_queue_done(cvx_queue *q, cvx_event ev) {
    if (!q) return 1;
#ifdef CVX_WITH_CUDA
    if (q->dev == CVX_DEVICE_CUDA) return cvx_cuda_queue_done(ev);
#endif
    pthread_mutex_lock(&q->lock);
    const int done = q->completed >= ev;
    pthread_mutex_unlock(&q->lock);
    return done;
}

int64_t cvx_queue_wait(cvx_queue *q, cvx_event ev) {
    if (!q) return 0;
#ifdef CVX_WITH_CUDA
    if (q->dev == CVX_DEVICE_CUDA) return cvx_cuda_queue_wait(ev);
#endif
    pthread_mutex_lock(&q->lock);
    if (q->completed >= ev) {
        pthread_mutex_unlock(&q->lock);
        return 0;
    }
    const int64_t t0 = now_ns();
    while (q->completed < ev) pthread_cond_wait(&q->done, &q->lock);
    pthread_mutex_unlock(&q->lock);
    return now_ns() - t0;
}

void cvx_queue_sync(cvx_queue *q) {
#ifdef CVX_WITH_CUDA
    if (q && q->dev == CVX_DEVICE_CUDA) {
        cvx_cuda_queue_sync();
        return;
    }
#endif
    if (q) cvx_queue_wait(q, cvx_queue_record(q));
}

int64_t cvx_queue_busy_ns(cvx_queue *q) {
    if (!q) return 0;
#ifdef CVX_WITH_CUDA
    if (q->dev == CVX_DEVICE_CUDA) return cvx_cuda_queue_busy_ns();
#endif
    pthread_mutex_lock(&q->lock);
    const int64_t ns = q->busy_ns;
    pthread_mutex_unlock(&q->lock);
    return ns;
}

void cvx_mem_set_bandwidth(cvx_device dev, double bytes_per_s) {
    if ((unsigned)dev >= CVX_NUM_DEVICES) return;
    cvx_queue *q = cvx_copy_queue(dev);
    if (q) pthread_mutex_lock(&q->lock);
    bandwidth[dev] = bytes_per_s > 0 ? bytes_per_s : 0;
    if (q) pthread_mutex_unlock(&q->lock);
}

cvx_event cvx_device_fence(cvx_device dev) {
#ifdef CVX_WITH_CUDA
    if (dev == CVX_DEVICE_CUDA) return cvx_cuda_fence();
#else
    (void)dev;
#endif
    return 0; /* the ops ran on the caller's thread: done */
}

cvx_status cvx_queue_after(cvx_queue *q, cvx_event fence) {
#ifdef CVX_WITH_CUDA
    if (q && q->dev == CVX_DEVICE_CUDA) return cvx_cuda_copy_after(fence);
#else
    (void)q, (void)fence;
#endif
    return CVX_OK;
}

cvx_status cvx_queue_compute_after(cvx_queue *q, cvx_event ev, int64_t *wait_ns) {
#ifdef CVX_WITH_CUDA
    if (q && q->dev == CVX_DEVICE_CUDA) return cvx_cuda_compute_after(ev, wait_ns);
#endif
    const int64_t waited = cvx_queue_wait(q, ev);
    if (wait_ns) __atomic_fetch_add(wait_ns, waited, __ATOMIC_RELAXED);
    return CVX_OK;
}

double cvx_mem_bandwidth(cvx_device dev) { return (unsigned)dev < CVX_NUM_DEVICES ? bandwidth[dev] : 0; }

/* The queues themselves stay: components hold their queue and may still copy, wait or be destroyed after this
 * (a pipeline object outlives the exit handlers), and their events stay valid because the counts go on. */
void cvx_queues_shutdown(void) {
    pthread_mutex_lock(&queues_lock);
    for (int d = 0; d < CVX_NUM_DEVICES; d++) {
        cvx_queue *q = queues[d];
        if (!q) continue;
        pthread_mutex_lock(&q->lock);
        const int running = q->running;
        q->stop = 1;
        pthread_cond_signal(&q->work);
        pthread_mutex_unlock(&q->lock);
        /* the thread runs what is queued, then marks the queue as not running (later copies run inline) */
        if (running) pthread_join(q->thread, NULL);
        pthread_mutex_lock(&q->lock);
        q->stop = 0;
        free(q->jobs);
        q->jobs = NULL;
        q->head = q->count = q->cap = 0;
        pthread_mutex_unlock(&q->lock);
    }
    pthread_mutex_unlock(&queues_lock);
}

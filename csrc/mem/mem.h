/* The memory manager: every tensor byte of cogvideo_c comes from here.
 *
 * Devices: the host ("cpu"), an emulated accelerator ("emu": a separate pool in host RAM with its own limit and
 * statistics, so that budgets and offload paths can be exercised where no GPU exists) and, in CUDA builds, "cuda".
 * Each device keeps statistics like torch.cuda.memory_stats (current/peak allocated and reserved bytes, counts),
 * split by what the bytes hold (weights or activations), and an optional limit past which an allocation fails with
 * CVX_ERR_OOM and leaves nothing allocated. */
#ifndef CVX_MEM_H
#define CVX_MEM_H

#include <stddef.h>
#include <stdint.h>

#include "../core/status.h"

typedef enum cvx_device { CVX_DEVICE_CPU = 0, CVX_DEVICE_EMU = 1, CVX_DEVICE_CUDA = 2 } cvx_device;
#define CVX_NUM_DEVICES 3

typedef enum cvx_mem_kind { CVX_MEM_WEIGHTS = 0, CVX_MEM_ACTIVATIONS = 1 } cvx_mem_kind;
#define CVX_NUM_MEM_KINDS 2

typedef struct cvx_mem_stats {
    int64_t allocated_bytes;      /* bytes handed out and not yet freed */
    int64_t peak_allocated_bytes; /* max of allocated_bytes since the last reset */
    int64_t reserved_bytes;       /* bytes held from the system, headers and alignment included */
    int64_t peak_reserved_bytes;
    int64_t kind_allocated_bytes[CVX_NUM_MEM_KINDS]; /* allocated_bytes by cvx_mem_kind */
    int64_t kind_peak_bytes[CVX_NUM_MEM_KINDS];
    int64_t num_allocs; /* allocation calls that succeeded */
    int64_t num_frees;
    int64_t num_active;   /* live allocations */
    int64_t num_ooms;     /* allocations refused */
    int64_t limit_bytes;  /* 0: no limit */
    int64_t mapped_bytes; /* weights read in place from a memory-mapped checkpoint (cvx_mem_add_mapped) */
    int64_t pinned_bytes; /* host bytes page-locked for copies to this device (cvx_mem_pin; CUDA only) */
    /* peaks since cvx_mem_mark_window: a second set that per-stage reports reset without touching the peaks a
     * caller measures with cvx_mem_reset_peak */
    int64_t window_peak_bytes;
    int64_t window_kind_peak_bytes[CVX_NUM_MEM_KINDS];
} cvx_mem_stats;

const char *cvx_device_name(cvx_device dev);
/* Parses "cpu", "emu" or "cuda"/"cuda:0". */
cvx_status cvx_device_parse(const char *name, cvx_device *out);

/* Allocates `bytes` (64-byte aligned, may be 0) on `dev`. On "cuda", reserved_bytes is what the caching allocator
 * holds from cudaMalloc (its cache included: ops/cuda/alloc.cu), not the sum of the allocations. Fails with CVX_ERR_OOM
 * past the device's limit or when the system refuses; nothing is allocated then. */
cvx_status cvx_mem_alloc(cvx_device dev, cvx_mem_kind kind, size_t bytes, void **out);
/* Host memory (CVX_DEVICE_CPU) that starts a page and shares none of its pages with another allocation (reserved in
 * whole pages), so that it can be pinned alone (cvx_mem_pin registers whole pages: ranges must not overlap). */
cvx_status cvx_mem_alloc_pages(cvx_mem_kind kind, size_t bytes, void **out);
/* Like cvx_mem_alloc, zero-filled. */
cvx_status cvx_mem_calloc(cvx_device dev, cvx_mem_kind kind, size_t bytes, void **out);
/* Frees a pointer from cvx_mem_alloc; NULL is ignored. */
void cvx_mem_free(void *ptr);
/* The size that was asked for when `ptr` was allocated. */
size_t cvx_mem_size(const void *ptr);

void cvx_mem_get_stats(cvx_device dev, cvx_mem_stats *out);
/* Host bytes that are not allocations but file mappings the weights read in place. They count against the
 * device's limit like allocations (they occupy its memory); growing past the limit fails with CVX_ERR_OOM and
 * changes nothing. */
cvx_status cvx_mem_add_mapped(cvx_device dev, int64_t delta);
/* Peaks (total and per kind) restart from the current values. */
void cvx_mem_reset_peak(cvx_device dev);
/* The window peaks restart from the current values. */
void cvx_mem_mark_window(cvx_device dev);
/* bytes <= 0 removes the limit. A limit below what is allocated now is accepted: later allocations fail. */
void cvx_mem_set_limit(cvx_device dev, int64_t bytes);

/* Page-locks the host range [ptr, ptr + bytes) so that copies from it to `dev` run asynchronously at full speed
 * (CUDA: cudaHostRegister, with cudaHostRegisterReadOnly when `read_only`: a read-only mapping such as the
 * checkpoint's). Pinned ranges must not share pages. Returns 1 when pinned (counted in dev's pinned_bytes), 0 when
 * not: a device or build without pinned memory (cpu, emu, a build without CUDA) or a refusal by the driver; copies
 * from unpinned memory still work (pageable: slower, and synchronous to the host). */
int cvx_mem_pin(cvx_device dev, void *ptr, size_t bytes, int read_only);
/* Undoes a cvx_mem_pin that returned 1, before the memory is freed or unmapped. */
void cvx_mem_unpin(cvx_device dev, void *ptr, size_t bytes);
/* Gives the cached device memory of `dev` back to the driver (torch.cuda.empty_cache; a no-op but on "cuda"). */
void cvx_mem_empty_cache(cvx_device dev);

/* Copies between any two devices' memory, synchronously. */
cvx_status cvx_mem_copy(void *dst, const void *src, size_t bytes);

/* 1 when [ptr, ptr + bytes) lies inside one live CVX_MEM_WEIGHTS allocation on `dev`: the emulated device's ops
 * check every weight they read with it, so a forgotten acquire fails as loudly as it would crash on a GPU. */
int cvx_mem_is_resident(cvx_device dev, const void *ptr, size_t bytes);

/* Test hook: the n-th allocation from now (0: the next), on any device, fails with CVX_ERR_OOM as if the device
 * were full; n < 0 turns it off. Returns how many allocations were made since the last call (to size a loop). */
int64_t cvx_mem_fail_at(int64_t n);

/* ---- copy queues ---------------------------------------------------------------------------------------------
 * One per device: copies run in the order they were queued. On "emu" a copy thread runs them (taking at least
 * bytes / bandwidth seconds each when a bandwidth is set, to model a PCIe link) while the caller computes; on "cpu"
 * they run at once; on "cuda" they are cudaMemcpyAsync calls on the copy stream (host to device; ops/cuda/queue.cu),
 * whose busy time is measured on the device with timing events. An event is a position in the queue: it is complete
 * when every copy queued before it is. cvx_queue_sync on "cuda" also waits for the compute waits of
 * cvx_queue_compute_after, so that no counter given to the queue is written after it returns. */
typedef struct cvx_queue cvx_queue;
typedef uint64_t cvx_event;

/* The device's copy queue (created on first use; NULL only for a device this build lacks). */
cvx_queue *cvx_copy_queue(cvx_device dev);
/* Queues a copy; when `busy_ns` is given, the nanoseconds the copy takes are added to it atomically (read it with
 * __atomic_load_n) once it has run, so that each caller can tell its own copy time. */
cvx_status cvx_queue_copy(cvx_queue *q, void *dst, const void *src, size_t bytes, int64_t *busy_ns);
cvx_event cvx_queue_record(cvx_queue *q);
int cvx_queue_done(cvx_queue *q, cvx_event ev);
/* Blocks until ev is complete; returns the nanoseconds spent waiting. */
int64_t cvx_queue_wait(cvx_queue *q, cvx_event ev);
void cvx_queue_sync(cvx_queue *q);
/* Nanoseconds the queue has spent executing copies since it was created. */
int64_t cvx_queue_busy_ns(cvx_queue *q);

/* ---- ordering copies with compute -----------------------------------------------------------------------------
 * On "cuda" the ops run asynchronously on a compute stream and the copies on a copy stream, so the residency layer
 * orders the two explicitly; on "cpu" and "emu" the ops run on the caller's thread and every call below reduces to
 * what that order already gives (no-ops, and a host wait in cvx_queue_compute_after).
 *
 * A fence is a point in `dev`'s compute stream: complete once every op queued before it has finished (0: complete;
 * every fence on cpu and emu). */
cvx_event cvx_device_fence(cvx_device dev);
/* Copies queued on q from now on start only after `fence` is complete (CUDA: the copy stream waits on the device;
 * the host does not block). A ring slot's next copy waits for the fence recorded when compute released it. */
cvx_status cvx_queue_after(cvx_queue *q, cvx_event fence);
/* Compute queued from now on runs after every copy before `ev`. cpu/emu: blocks until ev, adding the nanoseconds
 * waited to *wait_ns. CUDA: the compute stream waits for the copy on the device and the host goes on; the time
 * compute stalls there is added to *wait_ns (atomically: read it with __atomic_load_n) once known, at the latest
 * when cvx_queue_sync(q) returns. */
cvx_status cvx_queue_compute_after(cvx_queue *q, cvx_event ev, int64_t *wait_ns);
/* Bytes per second of the emulated link (<= 0: as fast as memcpy). */
void cvx_mem_set_bandwidth(cvx_device dev, double bytes_per_s);
double cvx_mem_bandwidth(cvx_device dev);
/* Stops every copy thread (at exit, and in the C tests so that ASan sees no live thread) once it has run what is
 * queued. The queues stay valid, events included: copies queued afterwards run on the caller's thread until
 * cvx_copy_queue starts the device's thread again. */
void cvx_queues_shutdown(void);

#endif

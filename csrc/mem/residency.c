#include "residency.h"

#include <stdlib.h>
#include <string.h>

typedef struct group {
    int64_t bytes;
    int first_tensor, num_tensors; /* into the residency's tensors, sorted by group */
    cvx_group_state state;
    void *dev;     /* the device copy (own allocation or a ring slot) */
    int ring_slot; /* -1: an allocation of its own */
    cvx_event ready;
} group;

struct cvx_residency {
    cvx_residency_tensor *tensors; /* sorted by group */
    int count, num_groups;
    group *groups;
    cvx_device dev;
    cvx_policy policy;
    int prefetch;
    cvx_queue *queue;
    /* the ring of SEQUENTIAL: prefetch + 1 slots of ring_bytes each */
    void **ring;
    int *ring_owner;       /* group in each slot, -1 free */
    cvx_event *ring_fence; /* per slot: the compute fence recorded when its last group was released */
    int ring_n;
    int64_t ring_bytes;
    /* the current pass */
    int first, last, cyclic, in_pass;
    cvx_residency_stats stats;
};

static void point_slots(cvx_residency *r, int g, int at_device) {
    const group *gr = &r->groups[g];
    for (int i = gr->first_tensor; i < gr->first_tensor + gr->num_tensors; i++) {
        const cvx_residency_tensor *t = &r->tensors[i];
        *t->slot = at_device ? (void *)((char *)gr->dev + t->offset) : (void *)t->host;
    }
}

static int by_group(const void *a, const void *b) {
    const cvx_residency_tensor *x = a, *y = b;
    if (x->group != y->group) return x->group < y->group ? -1 : 1;
    return x->offset < y->offset ? -1 : x->offset > y->offset;
}

static int tensors_valid(const cvx_residency_tensor *tensors, int count, int num_groups) {
    for (int i = 0; i < count; i++)
        if (tensors[i].group < 0 || tensors[i].group >= num_groups || !tensors[i].slot) return 0;
    return 1;
}

/* Groups from the (sorted) table: sizes, tensor ranges; every group on the host (resident where the device is the
 * CPU), its slots at the host bytes. */
static void layout(cvx_residency *r) {
    for (int g = 0; g < r->num_groups; g++)
        r->groups[g] = (group){0, 0, 0, r->dev == CVX_DEVICE_CPU ? CVX_GROUP_RESIDENT : CVX_GROUP_HOST, NULL, -1, 0};
    for (int i = r->count - 1; i >= 0; i--) {
        group *gr = &r->groups[r->tensors[i].group];
        const int64_t end = (int64_t)(r->tensors[i].offset + r->tensors[i].bytes);
        if (end > gr->bytes) gr->bytes = (end + 63) / 64 * 64; /* the device layout keeps 64-byte alignment */
        gr->first_tensor = i;
        gr->num_tensors++;
    }
    for (int g = 0; g < r->num_groups; g++) point_slots(r, g, 0);
}

cvx_status cvx_residency_create(const cvx_residency_tensor *tensors, int count, int num_groups, cvx_residency **out) {
    *out = NULL;
    if (count < 0 || num_groups < 0) return CVX_FAIL(CVX_ERR_INTERNAL, "bad residency table sizes");
    if (!tensors_valid(tensors, count, num_groups))
        return CVX_FAIL(CVX_ERR_INTERNAL, "a residency tensor names a group outside [0, %d)", num_groups);
    cvx_residency *r = calloc(1, sizeof(*r));
    if (!r) return CVX_FAIL(CVX_ERR_OOM, "out of host memory for the residency table");
    r->tensors = malloc((size_t)(count > 0 ? count : 1) * sizeof(*tensors));
    r->groups = calloc((size_t)(num_groups > 0 ? num_groups : 1), sizeof(group));
    if (!r->tensors || !r->groups) {
        cvx_residency_destroy(r);
        return CVX_FAIL(CVX_ERR_OOM, "out of host memory for the residency table");
    }
    if (count) memcpy(r->tensors, tensors, (size_t)count * sizeof(*tensors));
    qsort(r->tensors, (size_t)count, sizeof(*tensors), by_group);
    r->count = count;
    r->num_groups = num_groups;
    r->dev = CVX_DEVICE_CPU;
    layout(r);
    *out = r;
    return CVX_OK;
}

/* Queues the copy of group g into dst; the group is in flight until its event. A ring slot is written only after
 * the compute that read its previous group (asynchronous on CUDA) has finished: its copies wait for the slot's fence.
 * (A block of its own needs no fence here: the CUDA allocator orders a reused block after its last use.) */
static cvx_status queue_group(cvx_residency *r, int g, void *dst, int ring_slot) {
    group *gr = &r->groups[g];
    if (ring_slot >= 0) CVX_CHECK(cvx_queue_after(r->queue, r->ring_fence[ring_slot]));
    for (int i = gr->first_tensor; i < gr->first_tensor + gr->num_tensors; i++) {
        const cvx_residency_tensor *t = &r->tensors[i];
        CVX_CHECK(cvx_queue_copy(r->queue, (char *)dst + t->offset, t->host, t->bytes, &r->stats.copy_ns));
    }
    gr->dev = dst;
    gr->ring_slot = ring_slot;
    gr->ready = cvx_queue_record(r->queue);
    gr->state = CVX_GROUP_IN_FLIGHT;
    r->stats.bytes_copied += gr->bytes;
    r->stats.copies++;
    return CVX_OK;
}

static void account(cvx_residency *r, int64_t delta) {
    r->stats.resident_bytes += delta;
    if (r->stats.resident_bytes > r->stats.peak_resident_bytes) r->stats.peak_resident_bytes = r->stats.resident_bytes;
}

/* Group g into an allocation of its own (NONE, MODEL, and a non-block group under SEQUENTIAL). */
static cvx_status load_own(cvx_residency *r, int g) {
    group *gr = &r->groups[g];
    void *dst = NULL;
    CVX_CHECK(cvx_mem_alloc(r->dev, CVX_MEM_WEIGHTS, (size_t)gr->bytes, &dst));
    account(r, gr->bytes);
    const cvx_status st = queue_group(r, g, dst, -1);
    if (st != CVX_OK) {
        cvx_queue_sync(r->queue); /* copies of earlier tensors may still read into dst */
        cvx_mem_free(dst);
        account(r, -gr->bytes);
        gr->dev = NULL;
        gr->state = CVX_GROUP_HOST;
    }
    return st;
}

/* Makes g readable by the compute queued from now on: on cpu/emu the host waits for its copy; on CUDA the compute
 * stream waits for it on the device (cvx_queue_compute_after), so RESIDENT means "ordered after the copy". */
static cvx_status wait_group(cvx_residency *r, int g) {
    group *gr = &r->groups[g];
    if (gr->state != CVX_GROUP_IN_FLIGHT) return CVX_OK;
    CVX_CHECK(cvx_queue_compute_after(r->queue, gr->ready, &r->stats.wait_ns));
    gr->state = CVX_GROUP_RESIDENT;
    point_slots(r, g, 1);
    return CVX_OK;
}

/* Frees g's device copy (waiting for its copy first: the queue may still be writing it). */
static void drop_group(cvx_residency *r, int g) {
    group *gr = &r->groups[g];
    if (r->dev == CVX_DEVICE_CPU || gr->state == CVX_GROUP_HOST) return;
    if (gr->state == CVX_GROUP_IN_FLIGHT)
        __atomic_fetch_add(&r->stats.wait_ns, cvx_queue_wait(r->queue, gr->ready), __ATOMIC_RELAXED);
    if (gr->ring_slot >= 0) {
        /* compute queued so far may read it: the slot's next copy waits for this point (no-op on cpu/emu) */
        if (gr->state == CVX_GROUP_RESIDENT) r->ring_fence[gr->ring_slot] = cvx_device_fence(r->dev);
        r->ring_owner[gr->ring_slot] = -1;
    } else {
        cvx_mem_free(gr->dev);
        account(r, -gr->bytes);
    }
    gr->dev = NULL;
    gr->ring_slot = -1;
    gr->state = CVX_GROUP_HOST;
    point_slots(r, g, 0);
}

static void free_ring(cvx_residency *r) {
    for (int s = 0; s < r->ring_n; s++) {
        if (r->ring_owner[s] >= 0) drop_group(r, r->ring_owner[s]);
        cvx_mem_free(r->ring[s]);
    }
    if (r->ring_n) account(r, -r->ring_bytes * r->ring_n);
    free(r->ring);
    free(r->ring_owner);
    free(r->ring_fence);
    r->ring = NULL;
    r->ring_owner = NULL;
    r->ring_fence = NULL;
    r->ring_n = 0;
    r->ring_bytes = 0;
}

void cvx_residency_offload(cvx_residency *r) {
    if (!r) return;
    for (int g = 0; g < r->num_groups; g++) drop_group(r, g);
    free_ring(r);
}

void cvx_residency_destroy(cvx_residency *r) {
    if (!r) return;
    cvx_residency_offload(r);
    /* CUDA: no measured compute wait may still write into r->stats (cpu/emu add theirs before returning) */
    if (r->dev == CVX_DEVICE_CUDA) cvx_queue_sync(r->queue);
    free(r->tensors);
    free(r->groups);
    free(r);
}

cvx_status cvx_residency_retable(cvx_residency *r, const cvx_residency_tensor *tensors, int count) {
    if (count < 0 || !tensors_valid(tensors, count, r->num_groups))
        return CVX_FAIL(CVX_ERR_INTERNAL, "a residency tensor names a group outside [0, %d)", r->num_groups);
    if (r->in_pass) return CVX_FAIL(CVX_ERR_INTERNAL, "the weight table changed during a forward pass");
    cvx_residency_tensor *table = malloc((size_t)(count > 0 ? count : 1) * sizeof(*table));
    if (!table) return CVX_FAIL(CVX_ERR_OOM, "out of host memory for the residency table");
    if (count) memcpy(table, tensors, (size_t)count * sizeof(*tensors));
    qsort(table, (size_t)count, sizeof(*table), by_group);
    cvx_residency_offload(r); /* every device copy and the ring: their sizes were the old layout's */
    free(r->tensors);
    r->tensors = table;
    r->count = count;
    layout(r);
    return r->policy == CVX_POLICY_NONE ? cvx_residency_onload(r) : CVX_OK;
}

cvx_status cvx_residency_onload(cvx_residency *r) {
    if (r->dev == CVX_DEVICE_CPU) return CVX_OK;
    cvx_status st = CVX_OK;
    for (int g = 0; g < r->num_groups && st == CVX_OK; g++)
        if (r->groups[g].state == CVX_GROUP_HOST) st = load_own(r, g);
    for (int g = 0; g < r->num_groups && st == CVX_OK; g++) st = wait_group(r, g);
    if (st != CVX_OK) cvx_residency_offload(r); /* nothing half in */
    return st;
}

cvx_status cvx_residency_set(cvx_residency *r, cvx_device dev, cvx_policy policy, int prefetch) {
    if ((unsigned)dev >= CVX_NUM_DEVICES || (unsigned)policy > CVX_POLICY_SEQUENTIAL || prefetch < 0 || prefetch > 64)
        return CVX_FAIL(CVX_ERR_INVALID, "bad residency: device %d, policy %d, prefetch %d", (int)dev, (int)policy,
                        prefetch);
    cvx_queue *q = NULL;
    if (dev != CVX_DEVICE_CPU && !(q = cvx_copy_queue(dev)))
        return CVX_FAIL(CVX_ERR_INVALID, "the %s device is not available in this build", cvx_device_name(dev));
    cvx_residency_offload(r);
    if (r->dev == CVX_DEVICE_CUDA && dev != CVX_DEVICE_CUDA) cvx_queue_sync(r->queue); /* as in destroy */
    r->dev = dev;
    r->policy = policy;
    r->prefetch = prefetch;
    r->queue = q;
    r->in_pass = 0;
    /* on the host the host bytes are the weights: every group counts as resident where it is */
    for (int g = 0; g < r->num_groups; g++)
        r->groups[g].state = dev == CVX_DEVICE_CPU ? CVX_GROUP_RESIDENT : CVX_GROUP_HOST;
    return policy == CVX_POLICY_NONE ? cvx_residency_onload(r) : CVX_OK;
}

cvx_device cvx_residency_device(const cvx_residency *r) { return r->dev; }
cvx_policy cvx_residency_policy(const cvx_residency *r) { return r->policy; }

static int in_range(const cvx_residency *r, int g) { return r->in_pass && g >= r->first && g <= r->last; }

/* SEQUENTIAL: the ring holds prefetch + 1 slots of the largest group of the pass. */
static cvx_status ensure_ring(cvx_residency *r) {
    int64_t need = 0;
    for (int g = r->first; g <= r->last; g++)
        if (r->groups[g].bytes > need) need = r->groups[g].bytes;
    const int span = r->last - r->first + 1, n = r->prefetch + 1 < span ? r->prefetch + 1 : span;
    if (n < 1 || (r->ring && r->ring_bytes >= need && r->ring_n >= n)) return CVX_OK; /* a shorter pass reuses it */
    free_ring(r);
    r->ring = calloc((size_t)n, sizeof(void *));
    r->ring_owner = malloc((size_t)n * sizeof(int));
    r->ring_fence = calloc((size_t)n, sizeof(cvx_event)); /* 0: a new slot waits for nothing */
    if (!r->ring || !r->ring_owner || !r->ring_fence) {
        free(r->ring);
        free(r->ring_owner);
        free(r->ring_fence);
        r->ring = NULL;
        r->ring_owner = NULL;
        r->ring_fence = NULL;
        return CVX_FAIL(CVX_ERR_OOM, "out of host memory for the prefetch ring");
    }
    for (int s = 0; s < n; s++) {
        r->ring_owner[s] = -1;
        cvx_status st = cvx_mem_alloc(r->dev, CVX_MEM_WEIGHTS, (size_t)need, &r->ring[s]);
        if (st != CVX_OK) {
            for (int k = 0; k < s; k++) cvx_mem_free(r->ring[k]);
            free(r->ring);
            free(r->ring_owner);
            free(r->ring_fence);
            r->ring = NULL;
            r->ring_owner = NULL;
            r->ring_fence = NULL;
            return st;
        }
    }
    r->ring_n = n;
    r->ring_bytes = need;
    account(r, need * n);
    return CVX_OK;
}

/* Queues g into a free ring slot; 0 when none is free (the ring is full of groups still in use or prefetched). */
static cvx_status queue_ring(cvx_residency *r, int g, int *queued) {
    *queued = 0;
    for (int s = 0; s < r->ring_n; s++) {
        if (r->ring_owner[s] >= 0) continue;
        CVX_CHECK(queue_group(r, g, r->ring[s], s));
        r->ring_owner[s] = g;
        *queued = 1;
        return CVX_OK;
    }
    return CVX_OK;
}

cvx_status cvx_residency_begin(cvx_residency *r, int first, int last, int cyclic) {
    /* first = last + 1 is an empty pass (a model without blocks) */
    if (first < 0 || last >= r->num_groups || first > last + 1)
        return CVX_FAIL(CVX_ERR_INTERNAL, "pass over groups %d..%d of %d", first, last, r->num_groups);
    r->first = first;
    r->last = last;
    r->cyclic = cyclic;
    r->in_pass = 1;
    if (r->dev == CVX_DEVICE_CPU || r->policy != CVX_POLICY_SEQUENTIAL) return CVX_OK;
    /* ring groups a previous pass left (its prefetch for this one) stay only if this pass uses them */
    for (int s = 0; s < r->ring_n; s++)
        if (r->ring_owner[s] >= 0 && !in_range(r, r->ring_owner[s])) drop_group(r, r->ring_owner[s]);
    return ensure_ring(r);
}

cvx_status cvx_residency_acquire(cvx_residency *r, int group_index) {
    const int g = group_index;
    if (g < 0 || g >= r->num_groups) return CVX_FAIL(CVX_ERR_INTERNAL, "acquire of group %d of %d", g, r->num_groups);
    if (r->dev == CVX_DEVICE_CPU) return CVX_OK;
    group *gr = &r->groups[g];
    if (r->policy == CVX_POLICY_MODEL && gr->state == CVX_GROUP_HOST) CVX_CHECK(cvx_residency_onload(r));
    if (r->policy != CVX_POLICY_SEQUENTIAL || !in_range(r, g)) {
        if (gr->state == CVX_GROUP_HOST) CVX_CHECK(load_own(r, g));
        return wait_group(r, g);
    }
    if (gr->state == CVX_GROUP_HOST) {
        int queued;
        CVX_CHECK(queue_ring(r, g, &queued));
        if (!queued)
            return CVX_FAIL(CVX_ERR_INTERNAL, "group %d acquired with all %d ring slots held (a missing release)", g,
                            r->ring_n);
    }
    /* prefetch: the next groups of the pass, in order, while g computes */
    const int span = r->last - r->first + 1;
    for (int k = 1; k <= r->prefetch && k < span; k++) {
        int next = g + k;
        if (next > r->last) {
            if (!r->cyclic) break;
            next -= span;
        }
        if (r->groups[next].state != CVX_GROUP_HOST) continue;
        int queued;
        CVX_CHECK(queue_ring(r, next, &queued));
        if (!queued) break;
    }
    return wait_group(r, g);
}

void cvx_residency_release(cvx_residency *r, int g) {
    if (g < 0 || g >= r->num_groups || r->dev == CVX_DEVICE_CPU) return;
    if (r->policy == CVX_POLICY_SEQUENTIAL && in_range(r, g)) drop_group(r, g);
}

void cvx_residency_end(cvx_residency *r) {
    if (!r->in_pass) return;
    if (r->dev != CVX_DEVICE_CPU && r->policy == CVX_POLICY_SEQUENTIAL) {
        /* the next pass (the next denoising step) starts with the same groups, first .. first + ring_n - 2: queue
         * them now, so that its first copies run behind whatever the caller does between passes; begin() drops them
         * if the pass differs. Those the ring already holds (a cyclic pass's prefetch wrapped around to them) stay
         * as they are: dropping them would wait for their copies only to queue the same copies again. */
        const int next = r->ring_n - 1;
        for (int s = 0; s < r->ring_n; s++) {
            const int g = r->ring_owner[s];
            if (g >= 0 && (g < r->first || g >= r->first + next)) drop_group(r, g);
        }
        for (int k = 0; k < next && r->first + k <= r->last; k++) {
            int queued;
            if (r->groups[r->first + k].state != CVX_GROUP_HOST) continue;
            if (queue_ring(r, r->first + k, &queued) != CVX_OK || !queued) break;
        }
    }
    r->in_pass = 0;
}

cvx_group_state cvx_residency_state(const cvx_residency *r, int g) {
    return g >= 0 && g < r->num_groups ? r->groups[g].state : CVX_GROUP_HOST;
}
int cvx_residency_num_groups(const cvx_residency *r) { return r->num_groups; }
int64_t cvx_residency_group_bytes(const cvx_residency *r, int g) {
    return g >= 0 && g < r->num_groups ? r->groups[g].bytes : 0;
}
int64_t cvx_residency_total_bytes(const cvx_residency *r) {
    int64_t t = 0;
    for (int g = 0; g < r->num_groups; g++) t += r->groups[g].bytes;
    return t;
}
void cvx_residency_get_stats(const cvx_residency *r, cvx_residency_stats *out) {
    /* field by field: the copy thread adds to copy_ns while queued copies run (on CUDA, the queue adds the measured
     * copy and compute-wait times when it sees them complete: asking for its busy time collects them), and a plain
     * copy of the whole struct would read them non-atomically (a data race ThreadSanitizer reports) */
    cvx_queue_busy_ns(r->queue);
    out->bytes_copied = r->stats.bytes_copied;
    out->copies = r->stats.copies;
    out->copy_ns = __atomic_load_n(&r->stats.copy_ns, __ATOMIC_RELAXED);
    out->wait_ns = __atomic_load_n(&r->stats.wait_ns, __ATOMIC_RELAXED);
    out->resident_bytes = r->stats.resident_bytes;
    out->peak_resident_bytes = r->stats.peak_resident_bytes;
}
void cvx_residency_reset_stats(cvx_residency *r) {
    const int64_t resident = r->stats.resident_bytes;
    cvx_queue_sync(r->queue); /* no copy may still add to copy_ns */
    memset(&r->stats, 0, sizeof(r->stats));
    r->stats.resident_bytes = r->stats.peak_resident_bytes = resident;
}

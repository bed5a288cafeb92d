/* The copy queue of CVX_DEVICE_CUDA (mem.h's cvx_queue on "cuda") and the compute fences.
 *
 * Copies: cudaMemcpyAsync on the copy stream, in the order queued. An event (cvx_event) is a position in the queue,
 * as on "emu": cvx_queue_record returns the number of copies queued so far and records a cudaEvent on the copy
 * stream at that position (a marker); the queue is complete up to the last marker the runtime reports done, and
 * waiting for a position synchronises the first marker at or after it. Markers leave the queue once complete and
 * their events are reused.
 *
 * busy_ns is device time: each run of consecutive copies with the same counter (one weight group: the copies between
 * two cvx_queue_record calls) is bracketed by two timing events on the copy stream, and their elapsed time is added
 * to the counter and to the queue's total once the run is seen complete (at the latest when a wait for a position
 * after it returns). A wait of the copy stream for a fence closes the run first, so the time never includes it.
 *
 * Fences: a position in the compute stream (an event recorded there), complete once every op queued before it has
 * finished. A ring slot's or a freed block's next copy waits for the fence recorded when compute last used it
 * (cvx_cuda_copy_after: cudaStreamWaitEvent on the copy stream, the host goes on).
 *
 * Acquire (cvx_cuda_compute_after): the compute stream waits for a copy's marker on the device (cudaStreamWaitEvent),
 * so the host queues the block's kernels at once and prefetch overlap does not depend on the host keeping ahead.
 * The time compute stalls there is measured by two timing events around the wait on the compute stream (their
 * elapsed time is max(0, copy done - compute done)) and added to the caller's counter once seen complete. */
#include <pthread.h>
#include <time.h>

#include <deque>
#include <utility>
#include <vector>

#include "common.cuh"

namespace {
struct marker {
    uint64_t pos;
    cudaEvent_t ev;
};
struct timed {
    cudaEvent_t start, stop;
    int64_t *counter;
};
struct fence_rec {
    uint64_t seq;
    cudaEvent_t ev;
};

/* The containers live on the heap and are never destroyed: exit handlers (a Python model freed at interpreter
 * exit) may still copy, wait or record after static destructors would have run. */
struct queue_state {
    std::deque<marker> markers;                       /* recorded, not yet seen complete, ascending */
    std::deque<timed> runs;                           /* closed copy runs not yet harvested */
    std::deque<timed> stalls;                         /* compute waits not yet harvested */
    std::deque<fence_rec> fences;                     /* recorded fences not yet seen complete: consecutive seqs */
    std::vector<cudaEvent_t> pool[2];                 /* [0] plain (no timing), [1] timing */
    std::vector<std::pair<cudaEvent_t, int>> retired; /* freed while a waiter may still synchronise one */
};
queue_state &Q = *new queue_state;
std::deque<marker> &markers = Q.markers;
std::deque<timed> &runs = Q.runs;
std::deque<timed> &stalls = Q.stalls;
std::deque<fence_rec> &fences = Q.fences;
std::vector<cudaEvent_t> *const pool = Q.pool;
std::vector<std::pair<cudaEvent_t, int>> &retired = Q.retired;

pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
uint64_t submitted, completed;
int run_open; /* a run is open: its start is recorded, its stop not yet */
timed open_run;
uint64_t fence_seq, fence_done;
int waiters;
int64_t busy_total;

int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

cudaStream_t copy_stream(void) { return (cudaStream_t)cvx_cuda_copy_stream(); }

/* With the lock held. */
cvx_status get_event(int timing, cudaEvent_t *out) {
    if (!pool[timing].empty()) {
        *out = pool[timing].back();
        pool[timing].pop_back();
        return CVX_OK;
    }
    CVX_CU(cudaEventCreateWithFlags(out, timing ? cudaEventDefault : cudaEventDisableTiming));
    return CVX_OK;
}

void put_event(cudaEvent_t ev, int timing) {
    if (waiters) /* a waiter outside the lock may still be synchronising it: no new record on it yet */
        retired.push_back({ev, timing});
    else
        pool[timing].push_back(ev);
}

int complete(cudaEvent_t ev) {
    const cudaError_t e = cudaEventQuery(ev);
    if (e == cudaSuccess) return 1;
    if (e != cudaErrorNotReady) cudaGetLastError(); /* a failed stream: the next synchronising call reports it */
    return 0;
}

/* Adds the nanoseconds between t's events to its counter; returns them. */
int64_t add_elapsed(const timed &t) {
    float ms = 0.0f;
    if (cudaEventElapsedTime(&ms, t.start, t.stop) != cudaSuccess) {
        cudaGetLastError();
        ms = 0.0f;
    }
    const int64_t ns = (int64_t)((double)ms * 1e6);
    if (t.counter) __atomic_fetch_add(t.counter, ns, __ATOMIC_RELAXED);
    return ns;
}

/* Collects what the runtime reports complete, in order, with the lock held. */
void harvest(void) {
    while (!markers.empty() && complete(markers.front().ev)) {
        completed = markers.front().pos;
        put_event(markers.front().ev, 0);
        markers.pop_front();
    }
    while (!runs.empty() && complete(runs.front().stop)) {
        const timed t = runs.front();
        runs.pop_front();
        busy_total += add_elapsed(t);
        put_event(t.start, 1);
        put_event(t.stop, 1);
    }
    while (!stalls.empty() && complete(stalls.front().stop)) {
        const timed t = stalls.front();
        stalls.pop_front();
        add_elapsed(t);
        put_event(t.start, 1);
        put_event(t.stop, 1);
    }
    while (!fences.empty() && complete(fences.front().ev)) {
        fence_done = fences.front().seq;
        put_event(fences.front().ev, 0);
        fences.pop_front();
    }
}

cvx_status close_run(void) {
    if (!run_open) return CVX_OK;
    run_open = 0;
    runs.push_back(open_run);
    CVX_CU(cudaEventRecord(open_run.stop, copy_stream()));
    return CVX_OK;
}

/* The marker of the first position at or after `pos` (recorded now when there is none), with the lock held. */
cvx_status marker_for(uint64_t pos, cudaEvent_t *out) {
    for (const marker &m : markers)
        if (m.pos >= pos) {
            *out = m.ev;
            return CVX_OK;
        }
    CVX_CHECK(close_run());
    cudaEvent_t ev;
    CVX_CHECK(get_event(0, &ev));
    const cudaError_t e = cudaEventRecord(ev, copy_stream());
    if (e != cudaSuccess) {
        put_event(ev, 0);
        return cvx_cuda_fail((int)e, "cudaEventRecord(marker, copy)", __FILE__, __LINE__);
    }
    markers.push_back(marker{submitted, ev});
    *out = ev;
    return CVX_OK;
}

void release_waiter(void) {
    if (--waiters) return;
    for (const auto &r : retired) pool[r.second].push_back(r.first);
    retired.clear();
}
} // namespace

extern "C" cvx_status cvx_cuda_queue_copy(void *dst, const void *src, size_t bytes, int64_t *busy_ns) {
    if (!copy_stream()) return CVX_FAIL(CVX_ERR_INVALID, "cuda: the device is not initialised");
    pthread_mutex_lock(&lock);
    cvx_status st = CVX_OK;
    if (run_open && open_run.counter != busy_ns) st = close_run();
    if (st == CVX_OK && !run_open) {
        timed t = {NULL, NULL, busy_ns};
        st = get_event(1, &t.start);
        if (st == CVX_OK && (st = get_event(1, &t.stop)) != CVX_OK) put_event(t.start, 1);
        if (st == CVX_OK) {
            const cudaError_t e = cudaEventRecord(t.start, copy_stream());
            if (e != cudaSuccess) {
                put_event(t.start, 1);
                put_event(t.stop, 1);
                st = cvx_cuda_fail((int)e, "cudaEventRecord(start, copy)", __FILE__, __LINE__);
            } else {
                open_run = t;
                run_open = 1;
            }
        }
    }
    if (st == CVX_OK && bytes) {
        const cudaError_t e = cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, copy_stream());
        if (e != cudaSuccess) st = cvx_cuda_fail((int)e, "cudaMemcpyAsync(host to device, copy)", __FILE__, __LINE__);
    }
    if (st == CVX_OK) submitted++;
    pthread_mutex_unlock(&lock);
    return st;
}

extern "C" uint64_t cvx_cuda_queue_record(void) {
    pthread_mutex_lock(&lock);
    const uint64_t pos = submitted;
    cudaEvent_t ev;
    if (pos > completed && marker_for(pos, &ev) != CVX_OK) cvx_error_clear(); /* a wait then reports the failure */
    pthread_mutex_unlock(&lock);
    return pos;
}

extern "C" int cvx_cuda_queue_done(uint64_t pos) {
    pthread_mutex_lock(&lock);
    if (pos > completed) harvest();
    const int done = pos <= completed;
    pthread_mutex_unlock(&lock);
    return done;
}

extern "C" int64_t cvx_cuda_queue_wait(uint64_t pos) {
    pthread_mutex_lock(&lock);
    harvest();
    if (pos <= completed) {
        pthread_mutex_unlock(&lock);
        return 0;
    }
    cudaEvent_t ev;
    if (marker_for(pos, &ev) != CVX_OK) { /* nothing to wait on: drain the stream instead */
        cvx_error_clear();
        pthread_mutex_unlock(&lock);
        const int64_t t0 = now_ns();
        cudaStreamSynchronize(copy_stream());
        cudaGetLastError();
        return now_ns() - t0;
    }
    waiters++;
    pthread_mutex_unlock(&lock);
    const int64_t t0 = now_ns();
    if (cudaEventSynchronize(ev) != cudaSuccess) cudaGetLastError();
    const int64_t spent = now_ns() - t0;
    pthread_mutex_lock(&lock);
    release_waiter();
    harvest();
    pthread_mutex_unlock(&lock);
    return spent;
}

extern "C" void cvx_cuda_queue_sync(void) {
    if (!copy_stream()) return;
    cvx_cuda_queue_wait(cvx_cuda_queue_record());
    /* and every compute wait measured so far, so that no counter is written after this returns */
    pthread_mutex_lock(&lock);
    cudaEvent_t last = stalls.empty() ? NULL : stalls.back().stop;
    if (last) waiters++;
    pthread_mutex_unlock(&lock);
    if (!last) return;
    if (cudaEventSynchronize(last) != cudaSuccess) cudaGetLastError();
    pthread_mutex_lock(&lock);
    release_waiter();
    harvest();
    pthread_mutex_unlock(&lock);
}

extern "C" int64_t cvx_cuda_queue_busy_ns(void) {
    pthread_mutex_lock(&lock);
    harvest();
    const int64_t ns = busy_total;
    pthread_mutex_unlock(&lock);
    return ns;
}

extern "C" uint64_t cvx_cuda_fence(void) {
    cudaStream_t compute = CVX_STREAM();
    if (!compute) return 0;
    pthread_mutex_lock(&lock);
    harvest(); /* frees record fences with no copy in sight: completed ones must not pile up */
    cudaEvent_t ev;
    uint64_t seq = 0;
    if (get_event(0, &ev) != CVX_OK || cudaEventRecord(ev, compute) != cudaSuccess) {
        /* no event: fall back to a fence that is complete because the compute stream is drained */
        cvx_error_clear();
        cudaGetLastError();
        pthread_mutex_unlock(&lock);
        cudaStreamSynchronize(compute);
        cudaGetLastError();
        return 0;
    }
    seq = ++fence_seq;
    fences.push_back(fence_rec{seq, ev});
    pthread_mutex_unlock(&lock);
    return seq;
}

extern "C" int cvx_cuda_fence_done(uint64_t seq) {
    pthread_mutex_lock(&lock);
    if (seq > fence_done) harvest();
    const int done = seq <= fence_done;
    pthread_mutex_unlock(&lock);
    return done;
}

extern "C" cvx_status cvx_cuda_copy_after(uint64_t seq) {
    pthread_mutex_lock(&lock);
    if (seq > fence_done) harvest();
    cvx_status st = CVX_OK;
    if (seq > fence_done && seq <= fence_seq) {
        st = close_run();
        if (st == CVX_OK) {
            /* seqs in the deque are consecutive from its front */
            const cudaEvent_t ev = fences[(size_t)(seq - fences.front().seq)].ev;
            const cudaError_t e = cudaStreamWaitEvent(copy_stream(), ev, 0);
            if (e != cudaSuccess) st = cvx_cuda_fail((int)e, "cudaStreamWaitEvent(copy, fence)", __FILE__, __LINE__);
        }
    }
    pthread_mutex_unlock(&lock);
    return st;
}

extern "C" cvx_status cvx_cuda_compute_after(uint64_t pos, int64_t *wait_ns) {
    cudaStream_t compute = CVX_STREAM();
    pthread_mutex_lock(&lock);
    harvest();
    if (pos <= completed) {
        pthread_mutex_unlock(&lock);
        return CVX_OK;
    }
    cudaEvent_t ev;
    timed t = {NULL, NULL, wait_ns};
    cvx_status st = marker_for(pos, &ev);
    if (st == CVX_OK) st = get_event(1, &t.start);
    if (st == CVX_OK && (st = get_event(1, &t.stop)) != CVX_OK) put_event(t.start, 1);
    if (st == CVX_OK) {
        cudaError_t e = cudaEventRecord(t.start, compute);
        if (e == cudaSuccess) e = cudaStreamWaitEvent(compute, ev, 0);
        if (e == cudaSuccess) e = cudaEventRecord(t.stop, compute);
        if (e == cudaSuccess) {
            stalls.push_back(t);
        } else {
            /* the order is what matters: without it, compute could read the group before its bytes arrive */
            put_event(t.start, 1);
            put_event(t.stop, 1);
            st = cvx_cuda_fail((int)e, "cudaStreamWaitEvent(compute, copy)", __FILE__, __LINE__);
        }
    }
    pthread_mutex_unlock(&lock);
    return st;
}

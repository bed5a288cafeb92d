/* The block scheduler of the emulation: every thread of a block is a fiber on the worker thread that runs the
 * launch. Fibers are resumed in thread order; a fiber runs until it finishes or reaches a barrier (__syncthreads,
 * a warp collective), where it yields. A barrier opens when every thread it waits for has arrived; when no fiber
 * can run and a barrier is still incomplete (some threads exited, or wait at another barrier), the block is
 * deadlocked on a GPU: the launch stops with cudaErrorLaunchFailure and a message on stderr, it does not hang.
 *
 * Switching: on x86-64 a six-register stack switch (cvx_emu_switch below); elsewhere swapcontext. Under ASan
 * every switch is announced (__sanitizer_start/finish_switch_fiber) so that its stack checks follow the fiber. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <vector>

#include "emu.h"

#if defined(__SANITIZE_ADDRESS__)
#define CVX_EMU_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define CVX_EMU_ASAN 1
#endif
#endif
#ifdef CVX_EMU_ASAN
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#endif

#if !defined(__x86_64__)
#include <ucontext.h>
#endif

__thread uint3 cvx_emu_threadIdx;
__thread uint3 cvx_emu_blockIdx;
__thread dim3 cvx_emu_blockDim;
__thread dim3 cvx_emu_gridDim;

#if defined(__x86_64__)
/* void cvx_emu_switch(void **save_sp, void *load_sp): saves the callee-saved registers on the current stack,
 * stores its stack pointer in *save_sp, loads load_sp and pops the registers saved there. */
extern "C" void cvx_emu_switch(void **save_sp, void *load_sp);
asm(R"(
    .text
    .p2align 4
    .globl cvx_emu_switch
    .hidden cvx_emu_switch
    .type cvx_emu_switch, @function
cvx_emu_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size cvx_emu_switch, .-cvx_emu_switch
)");
#endif

namespace {
enum fiber_state { RUNNABLE, AT_BARRIER, DONE };

struct fiber {
    char *stack = nullptr; /* lowest usable byte (a guard page lies below) */
    size_t stack_size = 0;
#if defined(__x86_64__)
    void *sp = nullptr;
#else
    ucontext_t uc;
#endif
    void *asan_fake = nullptr;
    fiber_state state = DONE;
    uint3 tid{0, 0, 0};
    const char *site_file = nullptr; /* where it waits: the source line of its __syncthreads */
    int site_line = 0;
    bool clean = true; /* its stack holds no frames (it finished, or never ran) */
};

size_t stack_bytes() {
    static const size_t n = [] {
        const char *v = getenv("CVX_EMU_STACK_KB");
        long kb = v && *v ? strtol(v, NULL, 10) : 256;
        if (kb < 16) kb = 16;
        return (size_t)kb << 10;
    }();
    return n;
}

/* What one worker thread needs to run blocks: its fibers (stacks kept for the next block and launch) and the
 * state of the block it runs. */
struct worker {
    std::vector<fiber> fibers;
    fiber *cur = nullptr;
#if defined(__x86_64__)
    void *sched_sp = nullptr;
#else
    ucontext_t sched_uc;
#endif
    void *sched_fake = nullptr;
    const void *sched_stack = nullptr;
    size_t sched_stack_size = 0;

    const cvx_emu::kernel_launch *launch = nullptr;
    unsigned nthreads = 0, at_barrier = 0, done = 0;
    std::vector<unsigned char> smem;
    void *smem_aligned = nullptr;

    ~worker() {
        const size_t page = (size_t)sysconf(_SC_PAGESIZE);
        for (fiber &f : fibers)
            if (f.stack) munmap(f.stack - page, f.stack_size + page);
    }
};

thread_local worker W;

void fiber_main();

#if !defined(__x86_64__)
void fiber_main_uc() { fiber_main(); }
#endif

bool prepare(fiber &f) {
    const size_t page = (size_t)sysconf(_SC_PAGESIZE);
    if (!f.stack) {
        const size_t size = stack_bytes();
        char *m =
            (char *)mmap(NULL, size + page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (m == MAP_FAILED) return false;
        mprotect(m, page, PROT_NONE); /* an overflowing fiber faults instead of writing into its neighbour */
        f.stack = m + page;
        f.stack_size = size;
    }
#ifdef CVX_EMU_ASAN
    if (!f.clean) __asan_unpoison_memory_region(f.stack, f.stack_size); /* frames of an abandoned fiber */
#endif
    f.clean = false;
#if defined(__x86_64__)
    /* the frame cvx_emu_switch pops: six registers, then fiber_main as the return address, above it a zero return
     * address for fiber_main itself (it never returns); the stack pointer at fiber_main's entry is 8 mod 16 */
    uintptr_t *sp = (uintptr_t *)(((uintptr_t)(f.stack + f.stack_size)) & ~(uintptr_t)15);
    *--sp = 0;
    *--sp = (uintptr_t)fiber_main;
    for (int i = 0; i < 6; i++) *--sp = 0;
    f.sp = sp;
#else
    getcontext(&f.uc);
    f.uc.uc_stack.ss_sp = f.stack;
    f.uc.uc_stack.ss_size = f.stack_size;
    f.uc.uc_link = NULL;
    makecontext(&f.uc, fiber_main_uc, 0);
#endif
    return true;
}

/* scheduler -> fiber f, back when f yields or finishes */
void resume(fiber &f) {
    W.cur = &f;
    cvx_emu_threadIdx = f.tid;
#ifdef CVX_EMU_ASAN
    __sanitizer_start_switch_fiber(&W.sched_fake, f.stack, f.stack_size);
#endif
#if defined(__x86_64__)
    cvx_emu_switch(&W.sched_sp, f.sp);
#else
    swapcontext(&W.sched_uc, &f.uc);
#endif
#ifdef CVX_EMU_ASAN
    __sanitizer_finish_switch_fiber(W.sched_fake, NULL, NULL);
#endif
    W.cur = nullptr;
}

/* fiber -> scheduler; returns when the scheduler resumes this fiber (never when it finished) */
void yield(bool finished) {
    fiber &f = *W.cur;
#ifdef CVX_EMU_ASAN
    __sanitizer_start_switch_fiber(finished ? NULL : &f.asan_fake, W.sched_stack, W.sched_stack_size);
#else
    (void)finished;
#endif
#if defined(__x86_64__)
    cvx_emu_switch(&f.sp, W.sched_sp);
#else
    swapcontext(&f.uc, &W.sched_uc);
#endif
#ifdef CVX_EMU_ASAN
    __sanitizer_finish_switch_fiber(f.asan_fake, &W.sched_stack, &W.sched_stack_size);
#endif
    cvx_emu_threadIdx = f.tid;
}

void fiber_main() {
#ifdef CVX_EMU_ASAN
    __sanitizer_finish_switch_fiber(NULL, &W.sched_stack, &W.sched_stack_size);
#endif
    W.launch->run(W.launch->pack);
    W.cur->state = DONE;
    W.cur->clean = true;
    W.done++;
    yield(true);
    abort(); /* unreachable: a finished fiber is never resumed */
}

void report(const char *what) {
    const uint3 b = cvx_emu_blockIdx;
    fprintf(stderr, "cvx CUDA emulation: kernel %s, block (%u,%u,%u): %s\n", W.launch->name, b.x, b.y, b.z, what);
}

bool same_site(const fiber &a, const fiber &b) {
    return a.site_line == b.site_line && (a.site_file == b.site_file || strcmp(a.site_file, b.site_file) == 0);
}

/* Runs one block to its end; false (after a report) when it deadlocks. */
bool run_block() {
    const dim3 bd = W.launch->block;
    unsigned i = 0;
    for (unsigned z = 0; z < bd.z; z++)
        for (unsigned y = 0; y < bd.y; y++)
            for (unsigned x = 0; x < bd.x; x++, i++) {
                fiber &f = W.fibers[i];
                if (!prepare(f)) {
                    report("cannot map a fiber stack");
                    return false;
                }
                f.state = RUNNABLE;
                f.tid = uint3{x, y, z};
                f.site_file = nullptr;
                f.site_line = 0;
            }
    W.at_barrier = W.done = 0;
    if (W.smem_aligned) memset(W.smem_aligned, 0xff, W.launch->smem);
    for (;;) {
        for (unsigned t = 0; t < W.nthreads; t++)
            if (W.fibers[t].state == RUNNABLE) resume(W.fibers[t]);
        if (W.done == W.nthreads) return true;
        if (W.at_barrier == W.nthreads) {
            const fiber &f0 = W.fibers[0];
            for (unsigned t = 1; t < W.nthreads; t++)
                if (!same_site(W.fibers[t], f0)) {
                    char msg[400];
                    snprintf(msg, sizeof msg,
                             "threads 0 and %u wait at different __syncthreads (%s:%d and %s:%d): a divergent barrier",
                             t, f0.site_file, f0.site_line, W.fibers[t].site_file, W.fibers[t].site_line);
                    report(msg);
                    return false;
                }
            for (unsigned t = 0; t < W.nthreads; t++) W.fibers[t].state = RUNNABLE;
            W.at_barrier = 0;
            continue;
        }
        bool runnable = false; /* released during the pass by a warp collective */
        for (unsigned t = 0; t < W.nthreads && !runnable; t++) runnable = W.fibers[t].state == RUNNABLE;
        if (!runnable) {
            char msg[200];
            snprintf(msg, sizeof msg,
                     "__syncthreads reached by %u of %u threads, %u exited: a barrier in divergent code deadlocks "
                     "on a GPU",
                     W.at_barrier, W.nthreads, W.done);
            report(msg);
            return false;
        }
    }
}

void abandon_block() {
    for (unsigned t = 0; t < W.nthreads; t++) W.fibers[t].state = DONE; /* their stacks are re-made on reuse */
}
} // namespace

void cvx_emu_syncthreads(const char *file, int line) {
    fiber *f = W.cur;
    if (!f) return; /* called outside a kernel: nothing to wait for */
    f->site_file = file;
    f->site_line = line;
    f->state = AT_BARRIER;
    W.at_barrier++;
    yield(false);
}

namespace cvx_emu {
void *dynamic_smem(void) { return W.smem_aligned; }

cudaError_t execute(const kernel_launch &l) {
    const unsigned n = l.block.x * l.block.y * l.block.z;
    if (W.fibers.size() < n) W.fibers.resize(n); /* 1024 at most: submit checked the geometry */
    W.launch = &l;
    W.nthreads = n;
    W.smem_aligned = nullptr;
    if (l.smem) {
        W.smem.resize(l.smem + 128);
        W.smem_aligned = (void *)(((uintptr_t)W.smem.data() + 127) & ~(uintptr_t)127);
    }
    cvx_emu_gridDim = l.grid;
    cvx_emu_blockDim = l.block;
    cudaError_t e = cudaSuccess;
    for (unsigned z = 0; z < l.grid.z && !e; z++)
        for (unsigned y = 0; y < l.grid.y && !e; y++)
            for (unsigned x = 0; x < l.grid.x && !e; x++) {
                cvx_emu_blockIdx = uint3{x, y, z};
                if (!run_block()) {
                    abandon_block();
                    e = cudaErrorLaunchFailure;
                }
            }
    W.launch = nullptr;
    return e;
}
} // namespace cvx_emu

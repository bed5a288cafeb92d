/* The block scheduler of the emulation: every thread of a block is a fiber on the worker thread that runs the
 * launch. Fibers are resumed in thread order; a fiber runs until it finishes or reaches a barrier (__syncthreads,
 * a warp collective), where it yields. A barrier opens when every thread it waits for has arrived: __syncthreads
 * when all threads of the block wait at the same statement, a warp collective (shuffles, __syncwarp, ballots,
 * mma) when all lanes of the warp (32 consecutive linear thread ids) have reached one; the last lane to arrive
 * computes every lane's result. When no fiber can run and a barrier is still incomplete (some threads exited, or
 * wait at another barrier), the block is deadlocked on a GPU: the launch stops with cudaErrorLaunchFailure and a
 * message on stderr, it does not hang.
 *
 * Switching: on x86-64 a six-register stack switch (cvx_emu_switch below); elsewhere swapcontext. Under ASan
 * every switch is announced (__sanitizer_start/finish_switch_fiber) so that its stack checks follow the fiber;
 * under TSan each fiber is a TSan fiber and every switch synchronises (threads of a block are ordered between
 * barriers, so TSan reports races between streams and with the host, not within a block). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
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

#if defined(__SANITIZE_THREAD__)
#define CVX_EMU_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define CVX_EMU_TSAN 1
#endif
#endif
#ifdef CVX_EMU_TSAN
#include <sanitizer/tsan_interface.h>
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
enum fiber_state { RUNNABLE, AT_BARRIER, AT_WARP, DONE };

struct fiber {
    char *stack = nullptr; /* lowest usable byte (a guard page lies below) */
    size_t stack_size = 0;
#if defined(__x86_64__)
    void *sp = nullptr;
#else
    ucontext_t uc;
#endif
    void *asan_fake = nullptr;
    void *tsan_fiber = nullptr;
    fiber_state state = DONE;
    uint3 tid{0, 0, 0};
    unsigned warp = 0, lane = 0;
    const char *site_file = nullptr; /* where it waits: the source line of its __syncthreads */
    int site_line = 0;
    bool clean = true; /* its stack holds no frames (it finished, or never ran) */
    /* its part of the warp collective it waits at */
    int op = 0, arg = 0, width = 0;
    unsigned mask = 0;
    uint64_t in = 0, out = 0;
    void *mma = nullptr;
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
    void *sched_tsan = nullptr;
    const void *sched_stack = nullptr;
    size_t sched_stack_size = 0;

    const cvx_emu::kernel_launch *launch = nullptr;
    unsigned nthreads = 0;
    std::vector<unsigned> warp_arrived;
    bool failed = false; /* a warp collective that cannot complete; fail_msg says why */
    char fail_msg[300];
    std::vector<unsigned char> smem;
    void *smem_aligned = nullptr;

    ~worker() {
        const size_t page = (size_t)sysconf(_SC_PAGESIZE);
        for (fiber &f : fibers) {
            if (f.stack) munmap(f.stack - page, f.stack_size + page);
#ifdef CVX_EMU_TSAN
            if (f.tsan_fiber) __tsan_destroy_fiber(f.tsan_fiber);
#endif
        }
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
#ifdef CVX_EMU_TSAN
    if (!f.clean && f.tsan_fiber) { /* an abandoned fiber's call stack goes with it */
        __tsan_destroy_fiber(f.tsan_fiber);
        f.tsan_fiber = nullptr;
    }
    if (!f.tsan_fiber) f.tsan_fiber = __tsan_create_fiber(0);
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
#ifdef CVX_EMU_TSAN
    if (!W.sched_tsan) W.sched_tsan = __tsan_get_current_fiber();
    __tsan_switch_to_fiber(f.tsan_fiber, 0);
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
#ifdef CVX_EMU_TSAN
    __tsan_switch_to_fiber(W.sched_tsan, 0);
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
                f.warp = i / 32;
                f.lane = i % 32;
                f.site_file = nullptr;
                f.site_line = 0;
            }
    W.warp_arrived.assign((W.nthreads + 31) / 32, 0);
    W.failed = false;
    if (W.smem_aligned) memset(W.smem_aligned, 0xff, W.launch->smem);
    for (;;) {
        for (unsigned t = 0; t < W.nthreads; t++)
            if (W.fibers[t].state == RUNNABLE) resume(W.fibers[t]);
        if (W.failed) {
            report(W.fail_msg);
            return false;
        }
        unsigned count[4] = {0, 0, 0, 0};
        for (unsigned t = 0; t < W.nthreads; t++) count[W.fibers[t].state]++;
        if (count[DONE] == W.nthreads) return true;
        if (count[AT_BARRIER] == W.nthreads) {
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
            continue;
        }
        if (count[RUNNABLE]) continue; /* released during the pass by a warp collective */
        char msg[300];
        snprintf(msg, sizeof msg,
                 "deadlock: of %u threads, %u wait at __syncthreads, %u at a warp collective and %u exited: a barrier "
                 "or warp collective in divergent code hangs on a GPU",
                 W.nthreads, count[AT_BARRIER], count[AT_WARP], count[DONE]);
        report(msg);
        return false;
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
    yield(false);
}

namespace {
const char *op_name(int op) {
    switch (op) {
    case cvx_emu::WARP_SYNC: return "__syncwarp";
    case cvx_emu::WARP_SHFL_IDX: return "__shfl_sync";
    case cvx_emu::WARP_SHFL_XOR: return "__shfl_xor_sync";
    case cvx_emu::WARP_SHFL_DOWN: return "__shfl_down_sync";
    case cvx_emu::WARP_SHFL_UP: return "__shfl_up_sync";
    case cvx_emu::WARP_BALLOT: return "__ballot_sync";
    case cvx_emu::WARP_MMA_F16: return "cvx_mma_m16n8k16_f16";
    case cvx_emu::WARP_MMA_BF16: return "cvx_mma_m16n8k16_bf16";
    }
    return "?";
}

bool warp_fail(fiber *const *L, unsigned i, const char *why) {
    if (W.failed) return false; /* the first failure is the one reported */
    snprintf(W.fail_msg, sizeof W.fail_msg, "warp %u, lanes 0 and %u at %s and %s: %s", L[0]->warp, i,
             op_name(L[0]->op), op_name(L[i]->op), why);
    W.failed = true;
    return false;
}

float half_bits(uint32_t u, bool bf16) { return bf16 ? cvx_bf16_to_f32((uint16_t)u) : cvx_f16_to_f32((uint16_t)u); }

/* D = A B + C of mma.sync.aligned.m16n8k16.row.col.f32.{f16,bf16}.{f16,bf16}.f32, with every lane's registers
 * laid out as the PTX ISA's "Matrix Fragments for mma.m16n8k16 with floating point type" says (g = lane / 4,
 * t = lane % 4; each 32-bit register holds two elements, the lower-indexed one in its low half):
 *   A (16 x 16, row-major) a[r]: row g + 8 (r & 1), columns 2t + 8 (r >> 1) and the next;
 *   B (16 x 8, k x n)      b[r]: rows 2t + 8 r and the next, column g;
 *   C, D (16 x 8, f32)     c[i]: row g + 8 (i >> 1), column 2t + (i & 1).
 * The products of 16-bit inputs are exact (computed in double: a bf16 product can underflow f32); they are
 * accumulated in f32 onto C in k order. */
void warp_mma(fiber *const *L, bool bf16) {
    float A[16][16], B[16][8], C[16][8];
    for (unsigned l = 0; l < 32; l++) {
        const cvx_emu::mma_operands *m = (const cvx_emu::mma_operands *)L[l]->mma;
        const unsigned g = l / 4, t = l % 4;
        for (unsigned r = 0; r < 4; r++) {
            const unsigned row = g + 8 * (r & 1), col = 2 * t + 8 * (r >> 1);
            A[row][col] = half_bits(m->a[r] & 0xffffu, bf16);
            A[row][col + 1] = half_bits(m->a[r] >> 16, bf16);
        }
        for (unsigned r = 0; r < 2; r++) {
            B[2 * t + 8 * r][g] = half_bits(m->b[r] & 0xffffu, bf16);
            B[2 * t + 8 * r + 1][g] = half_bits(m->b[r] >> 16, bf16);
        }
        for (unsigned i = 0; i < 4; i++) C[g + 8 * (i >> 1)][2 * t + (i & 1)] = m->c[i];
    }
    /* every lane's C was read before any D is written: d may be c */
    for (unsigned l = 0; l < 32; l++) {
        const cvx_emu::mma_operands *m = (const cvx_emu::mma_operands *)L[l]->mma;
        const unsigned g = l / 4, t = l % 4;
        for (unsigned i = 0; i < 4; i++) {
            const unsigned row = g + 8 * (i >> 1), col = 2 * t + (i & 1);
            float acc = C[row][col];
            for (unsigned k = 0; k < 16; k++) acc = (float)((double)acc + (double)A[row][k] * (double)B[k][col]);
            m->d[i] = acc;
        }
    }
}

/* The last lane of warp w arrived: checks that the lanes agree, computes every lane's result and releases them. */
bool complete_warp(unsigned w, unsigned lanes) {
    fiber *L[32] = {};
    for (unsigned i = 0; i < lanes; i++) L[i] = &W.fibers[w * 32 + i];
    const unsigned existing = lanes == 32 ? 0xffffffffu : (1u << lanes) - 1;
    const int op = L[0]->op;
    for (unsigned i = 0; i < lanes; i++) {
        if (L[i]->op != op) return warp_fail(L, i, "different warp collectives");
        if ((L[i]->mask & existing) != existing)
            return warp_fail(L, i, "a mask without every lane of the warp (partial masks are not emulated)");
        if (L[i]->width != L[0]->width) return warp_fail(L, i, "different widths");
    }
    const int width = L[0]->width;
    if (width < 1 || width > 32 || (width & (width - 1)))
        return warp_fail(L, 0, "the width is not a power of two in [1, 32]");
    if ((op == cvx_emu::WARP_MMA_F16 || op == cvx_emu::WARP_MMA_BF16) && lanes != 32)
        return warp_fail(L, lanes - 1, "mma needs a full warp of 32 threads");
    switch (op) {
    case cvx_emu::WARP_SYNC: break;
    case cvx_emu::WARP_BALLOT: {
        uint64_t bits = 0;
        for (unsigned i = 0; i < lanes; i++) bits |= (uint64_t)(L[i]->in != 0) << i;
        for (unsigned i = 0; i < lanes; i++) L[i]->out = bits;
        break;
    }
    case cvx_emu::WARP_MMA_F16:
    case cvx_emu::WARP_MMA_BF16: warp_mma(L, op == cvx_emu::WARP_MMA_BF16); break;
    default:
        /* shuffles (CUDA Programming Guide, warp shuffle functions): lanes form segments of `width`; a source
         * outside what the mode may read, or past the lanes a partial warp has, gives the lane its own value */
        for (unsigned l = 0; l < lanes; l++) {
            const unsigned first = l & ~(unsigned)(width - 1), last = first + (unsigned)width - 1;
            const int arg = L[l]->arg;
            long src;
            switch (op) {
            case cvx_emu::WARP_SHFL_IDX: src = (long)(first + ((unsigned)arg & (unsigned)(width - 1))); break;
            case cvx_emu::WARP_SHFL_XOR: src = (long)(l ^ ((unsigned)arg & 31u)); break;
            case cvx_emu::WARP_SHFL_DOWN: src = (long)l + (long)(unsigned)arg; break;
            default: src = (long)l - (long)(unsigned)arg; break; /* WARP_SHFL_UP */
            }
            const bool ok = op == cvx_emu::WARP_SHFL_UP ? src >= (long)first : src <= (long)last;
            L[l]->out = ok && src >= 0 && src < (long)lanes ? L[src]->in : L[l]->in;
        }
    }
    for (unsigned i = 0; i < lanes; i++) L[i]->state = RUNNABLE;
    W.warp_arrived[w] = 0;
    return true;
}
} // namespace

namespace cvx_emu {
uint64_t warp_collective(int op, unsigned mask, uint64_t value, int arg, int width, void *mma) {
    fiber *f = W.cur;
    if (!f) return value; /* called outside a kernel */
    const unsigned lanes = std::min(32u, W.nthreads - f->warp * 32);
    f->op = op;
    f->mask = mask;
    f->in = value;
    f->arg = arg;
    f->width = width;
    f->mma = mma;
    f->state = AT_WARP;
    if (++W.warp_arrived[f->warp] < lanes || !complete_warp(f->warp, lanes)) yield(false);
    return f->out;
}

unsigned warp_lanes(void) {
    const fiber *f = W.cur;
    if (!f) return 1;
    const unsigned lanes = std::min(32u, W.nthreads - f->warp * 32);
    return lanes == 32 ? 0xffffffffu : (1u << lanes) - 1;
}
} // namespace cvx_emu

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

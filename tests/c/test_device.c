/* The device layer under the models (csrc/mem): the pointer-keyed allocation records, the fault hook, the activation
 * arena, the copy queues with the emulated link's copy thread, and the weight-residency state machine (NONE, MODEL,
 * SEQUENTIAL with a prefetch ring) on a fake component, with an injected allocation failure at every index.
 *
 * Every number is exact where the design makes it exact (bytes, counts, offsets, states); times are lower bounds
 * (bytes / bandwidth), with scheduling slack allowed only upward. The statistics are process-wide, so each check
 * compares against a snapshot taken before the step it tests. */
#define _POSIX_C_SOURCE 200809L
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "../../csrc/mem/arena.h"
#include "../../csrc/mem/mem.h"
#include "../../csrc/mem/residency.h"
#include "cvx_test.h"

#define ALIGN 64

/* An allocation the system refuses must come back as CVX_ERR_OOM, as malloc's NULL does; the sanitizers' allocators
 * abort instead unless told to return NULL (the Makefile's ASAN_OPTIONS only add to these). */
const char *__asan_default_options(void) { return "allocator_may_return_null=1"; }
const char *__tsan_default_options(void) { return "allocator_may_return_null=1"; }

static size_t round64(size_t n) { return (n + ALIGN - 1) / ALIGN * ALIGN; }
static int64_t reserved_for(size_t bytes) { return bytes ? (int64_t)round64(bytes) : ALIGN; }

static int64_t mono_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* xorshift64 for sizes and orders (frand's generator is for floats) */
static uint64_t rng_state = 0x2545f4914f6cdd1dull;
static uint64_t rnd(void) {
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return rng_state;
}

/* The live counters (not the cumulative ones) of `now` equal those of `base`. */
static int same_live(const cvx_mem_stats *base, const cvx_mem_stats *now) {
    return now->allocated_bytes == base->allocated_bytes && now->reserved_bytes == base->reserved_bytes &&
           now->num_active == base->num_active &&
           now->kind_allocated_bytes[CVX_MEM_WEIGHTS] == base->kind_allocated_bytes[CVX_MEM_WEIGHTS] &&
           now->kind_allocated_bytes[CVX_MEM_ACTIVATIONS] == base->kind_allocated_bytes[CVX_MEM_ACTIVATIONS];
}

/* ---- 1. allocation records ---------------------------------------------------------------------------------- */

#define NREC 3000 /* per device: 6000 live records make the table grow 1024 -> 16384 */

typedef struct rec {
    void *p;
    size_t bytes;
    cvx_device dev;
    cvx_mem_kind kind;
} rec;

/* Expected live counters of one device over the records still held. */
static void expect_records(const char *what, const rec *r, int n, cvx_device dev, const cvx_mem_stats *base) {
    int64_t bytes = 0, reserved = 0, active = 0, kind[2] = {0, 0};
    int sizes_ok = 1, bad = -1;
    for (int i = 0; i < n; i++) {
        if (!r[i].p) continue;
        if (cvx_mem_size(r[i].p) != r[i].bytes && sizes_ok) sizes_ok = 0, bad = i;
        if (r[i].dev != dev) continue;
        bytes += (int64_t)r[i].bytes;
        reserved += reserved_for(r[i].bytes);
        kind[r[i].kind] += (int64_t)r[i].bytes;
        active++;
    }
    const cvx_mem_stats s = stats(dev);
    CVX_EXPECT(sizes_ok, "%s: cvx_mem_size of record %d is %zu, want %zu", what, bad,
               bad >= 0 ? cvx_mem_size(r[bad].p) : 0, bad >= 0 ? r[bad].bytes : 0);
    CVX_EXPECT(s.allocated_bytes - base->allocated_bytes == bytes &&
                   s.reserved_bytes - base->reserved_bytes == reserved && s.num_active - base->num_active == active &&
                   s.kind_allocated_bytes[CVX_MEM_WEIGHTS] - base->kind_allocated_bytes[CVX_MEM_WEIGHTS] ==
                       kind[CVX_MEM_WEIGHTS] &&
                   s.kind_allocated_bytes[CVX_MEM_ACTIVATIONS] - base->kind_allocated_bytes[CVX_MEM_ACTIVATIONS] ==
                       kind[CVX_MEM_ACTIVATIONS],
               "%s (%s): allocated +%lld want +%lld, reserved +%lld want +%lld, active +%lld want +%lld", what,
               cvx_device_name(dev), (long long)(s.allocated_bytes - base->allocated_bytes), (long long)bytes,
               (long long)(s.reserved_bytes - base->reserved_bytes), (long long)reserved,
               (long long)(s.num_active - base->num_active), (long long)active);
}

static void test_records(void) {
    const cvx_mem_stats cpu0 = stats(CVX_DEVICE_CPU), emu0 = stats(CVX_DEVICE_EMU);
    rec *r = xmalloc(2 * NREC * sizeof(rec));
    int64_t allocs[2] = {0, 0};
    for (int i = 0; i < 2 * NREC; i++) {
        r[i].dev = (i & 1) ? CVX_DEVICE_EMU : CVX_DEVICE_CPU;
        r[i].kind = (rnd() & 1) ? CVX_MEM_WEIGHTS : CVX_MEM_ACTIVATIONS;
        r[i].bytes = (rnd() % 8 == 0) ? 0 : (size_t)(rnd() % 3000);
        if (cvx_mem_alloc(r[i].dev, r[i].kind, r[i].bytes, &r[i].p) != CVX_OK) {
            (void)CVX_EXPECT(0, "allocation %d of %zu bytes failed: %s", i, r[i].bytes, cvx_error_message());
            r[i].p = NULL;
            continue;
        }
        allocs[i & 1]++;
        if (r[i].bytes) memset(r[i].p, i & 0xff, r[i].bytes); /* ASan: the whole size is usable, no overlap */
    }
    expect_records("all allocated", r, 2 * NREC, CVX_DEVICE_CPU, &cpu0);
    expect_records("all allocated", r, 2 * NREC, CVX_DEVICE_EMU, &emu0);
    CVX_EXPECT(stats(CVX_DEVICE_CPU).num_allocs - cpu0.num_allocs == allocs[0] &&
                   stats(CVX_DEVICE_EMU).num_allocs - emu0.num_allocs == allocs[1],
               "num_allocs counts every allocation");

    /* pointers the manager never gave: a stack address, an interior pointer, one past a block; nothing changes */
    const cvx_mem_stats cpu1 = stats(CVX_DEVICE_CPU), emu1 = stats(CVX_DEVICE_EMU);
    int on_stack = 0;
    void *big = NULL;
    for (int i = 0; i < 2 * NREC && !big; i++)
        if (r[i].bytes >= 256) big = r[i].p;
    cvx_mem_free(&on_stack);
    cvx_mem_free((char *)big + 64);
    cvx_mem_free((char *)big + 1);
    cvx_mem_free(NULL);
    CVX_EXPECT(cvx_mem_size(&on_stack) == 0 && cvx_mem_size((char *)big + 64) == 0, "foreign pointers have no size");
    cvx_mem_stats c2 = stats(CVX_DEVICE_CPU), e2 = stats(CVX_DEVICE_EMU);
    CVX_EXPECT(memcmp(&cpu1, &c2, sizeof(c2)) == 0 && memcmp(&emu1, &e2, sizeof(e2)) == 0,
               "freeing foreign pointers changes no statistic");

    /* free in random order (Fisher-Yates over the indices), checking every remaining record every 500 frees: a
     * backward-shift deletion that broke a probe run would lose a live record (its size would read 0) */
    int *order = xmalloc(2 * NREC * sizeof(int));
    for (int i = 0; i < 2 * NREC; i++) order[i] = i;
    for (int i = 2 * NREC - 1; i > 0; i--) {
        const int j = (int)(rnd() % (uint64_t)(i + 1)), t = order[i];
        order[i] = order[j];
        order[j] = t;
    }
    for (int n = 0; n < 2 * NREC; n++) {
        rec *x = &r[order[n]];
        cvx_mem_free(x->p);
        CVX_EXPECT(cvx_mem_size(x->p) == 0, "freed pointer %d still has a size", order[n]);
        x->p = NULL;
        if (n % 500 == 499) {
            expect_records("after random frees", r, 2 * NREC, CVX_DEVICE_CPU, &cpu0);
            expect_records("after random frees", r, 2 * NREC, CVX_DEVICE_EMU, &emu0);
        }
    }
    c2 = stats(CVX_DEVICE_CPU);
    e2 = stats(CVX_DEVICE_EMU);
    CVX_EXPECT(same_live(&cpu0, &c2) && same_live(&emu0, &e2), "records: everything freed");
    CVX_EXPECT(c2.num_frees - cpu0.num_frees == allocs[0] && e2.num_frees - emu0.num_frees == allocs[1],
               "num_frees counts every free, not the foreign ones");
    free(order);
    free(r);
}

static void test_is_resident(void) {
    void *a = NULL, *b = NULL, *act = NULL, *cw = NULL;
    CVX_EXPECT(cvx_mem_alloc(CVX_DEVICE_EMU, CVX_MEM_WEIGHTS, 1000, &a) == CVX_OK, "emu weights a");
    CVX_EXPECT(cvx_mem_alloc(CVX_DEVICE_EMU, CVX_MEM_WEIGHTS, 3000, &b) == CVX_OK, "emu weights b");
    CVX_EXPECT(cvx_mem_alloc(CVX_DEVICE_EMU, CVX_MEM_ACTIVATIONS, 1000, &act) == CVX_OK, "emu activations");
    CVX_EXPECT(cvx_mem_alloc(CVX_DEVICE_CPU, CVX_MEM_WEIGHTS, 500, &cw) == CVX_OK, "cpu weights");
    char *pa = a, *pb = b;
    CVX_EXPECT(cvx_mem_is_resident(CVX_DEVICE_EMU, pa, 1000), "the whole of a");
    CVX_EXPECT(cvx_mem_is_resident(CVX_DEVICE_EMU, pa + 100, 200), "inside a");
    CVX_EXPECT(cvx_mem_is_resident(CVX_DEVICE_EMU, pa + 999, 1), "a's last byte");
    CVX_EXPECT(!cvx_mem_is_resident(CVX_DEVICE_EMU, pa, 1001), "one byte past a's end");
    CVX_EXPECT(!cvx_mem_is_resident(CVX_DEVICE_EMU, pa + 999, 2), "a's last byte and the next");
    CVX_EXPECT(!cvx_mem_is_resident(CVX_DEVICE_EMU, pa + 1000, 1), "the byte after a");
    CVX_EXPECT(!cvx_mem_is_resident(CVX_DEVICE_EMU, pa - 1, 2), "from before a");
    CVX_EXPECT(cvx_mem_is_resident(CVX_DEVICE_EMU, pb + 2999, 1) && !cvx_mem_is_resident(CVX_DEVICE_EMU, pb, 3001),
               "b's end");
    /* a range from inside the lower of the two to inside the higher lies in neither */
    char *lo = pa < pb ? pa : pb, *hi = pa < pb ? pb : pa;
    CVX_EXPECT(!cvx_mem_is_resident(CVX_DEVICE_EMU, lo + 10, (size_t)(hi - lo)), "spanning two weight buffers");
    CVX_EXPECT(!cvx_mem_is_resident(CVX_DEVICE_EMU, act, 1) && !cvx_mem_is_resident(CVX_DEVICE_EMU, act, 1000),
               "activations are not resident weights");
    CVX_EXPECT(!cvx_mem_is_resident(CVX_DEVICE_CPU, pa, 1) && !cvx_mem_is_resident(CVX_DEVICE_CPU, pb, 3000),
               "emu weights are not resident on the cpu");
    CVX_EXPECT(cvx_mem_is_resident(CVX_DEVICE_CPU, cw, 500) && !cvx_mem_is_resident(CVX_DEVICE_EMU, cw, 1),
               "cpu weights are resident on the cpu only");
    CVX_EXPECT(!cvx_mem_is_resident(CVX_DEVICE_EMU, NULL, 0) && !cvx_mem_is_resident((cvx_device)7, pa, 1),
               "NULL and a bad device");
    int on_stack = 0;
    CVX_EXPECT(!cvx_mem_is_resident(CVX_DEVICE_EMU, &on_stack, sizeof(on_stack)), "a stack address");
    cvx_mem_free(a);
    CVX_EXPECT(!cvx_mem_is_resident(CVX_DEVICE_EMU, pa, 1), "a freed buffer is not resident");
    CVX_EXPECT(cvx_mem_is_resident(CVX_DEVICE_EMU, pb, 3000), "b still is");
    cvx_mem_free(b);
    cvx_mem_free(act);
    cvx_mem_free(cw);
    CVX_EXPECT(!cvx_mem_is_resident(CVX_DEVICE_EMU, pb, 1), "b freed");
}

/* ---- 2. the fault hook --------------------------------------------------------------------------------------- */

static void test_fail_at(void) {
    cvx_mem_fail_at(-1); /* off, and the count restarts */
    void *p[6] = {0};
    for (int i = 0; i < 3; i++) cvx_mem_alloc(i == 1 ? CVX_DEVICE_EMU : CVX_DEVICE_CPU, CVX_MEM_WEIGHTS, 100, &p[i]);
    CVX_EXPECT(cvx_mem_fail_at(2) == 3, "fail_at returns the 3 allocations since the last call");
    CVX_EXPECT(cvx_mem_alloc(CVX_DEVICE_CPU, CVX_MEM_ACTIVATIONS, 10, &p[3]) == CVX_OK, "allocation 0 passes");
    CVX_EXPECT(cvx_mem_alloc(CVX_DEVICE_EMU, CVX_MEM_WEIGHTS, 10, &p[4]) == CVX_OK, "allocation 1 passes");
    const cvx_mem_stats cpu0 = stats(CVX_DEVICE_CPU), emu0 = stats(CVX_DEVICE_EMU);
    void *f = (void *)&f;
    cvx_error_clear();
    CVX_EXPECT(cvx_mem_alloc(CVX_DEVICE_EMU, CVX_MEM_WEIGHTS, 10, &f) == CVX_ERR_OOM && f == NULL,
               "allocation 2 fails with CVX_ERR_OOM and *out NULL");
    CVX_EXPECT(strstr(cvx_error_message(), "emu") && strstr(cvx_error_message(), "injected"), "message: %s",
               cvx_error_message());
    cvx_error_clear();
    cvx_mem_stats c1 = stats(CVX_DEVICE_CPU), e1 = stats(CVX_DEVICE_EMU);
    CVX_EXPECT(e1.num_ooms == emu0.num_ooms + 1, "the injected failure counts as an OOM");
    e1.num_ooms = emu0.num_ooms;
    CVX_EXPECT(memcmp(&c1, &cpu0, sizeof(c1)) == 0 && memcmp(&e1, &emu0, sizeof(e1)) == 0,
               "an injected failure changes no other statistic");
    CVX_EXPECT(cvx_mem_alloc(CVX_DEVICE_EMU, CVX_MEM_WEIGHTS, 10, &p[5]) == CVX_OK, "the hook turned itself off");
    CVX_EXPECT(cvx_mem_fail_at(-1) == 4, "4 allocations (the failed one included) since fail_at(2)");
    CVX_EXPECT(cvx_mem_fail_at(-1) == 0, "none since");
    /* fail_at(0): the very next one; n < 0 disarms */
    cvx_mem_fail_at(0);
    void *g = NULL;
    CVX_EXPECT(cvx_mem_alloc(CVX_DEVICE_CPU, CVX_MEM_WEIGHTS, 1, &g) == CVX_ERR_OOM, "fail_at(0) fails the next");
    cvx_error_clear();
    cvx_mem_fail_at(1);
    cvx_mem_fail_at(-1);
    void *h = NULL;
    CVX_EXPECT(cvx_mem_alloc(CVX_DEVICE_CPU, CVX_MEM_WEIGHTS, 1, &g) == CVX_OK &&
                   cvx_mem_alloc(CVX_DEVICE_CPU, CVX_MEM_WEIGHTS, 1, &h) == CVX_OK,
               "fail_at(-1) disarms");
    cvx_mem_free(g);
    cvx_mem_free(h);
    cvx_mem_fail_at(-1);
    for (int i = 0; i < 6; i++) cvx_mem_free(p[i]);
}

/* A request the system refuses (no limit set: the real out-of-memory case) fails with CVX_ERR_OOM and leaves no trace
 * in the statistics, the peaks included: memory_stats after a failed attempt must not report bytes never held. */
static void test_system_refusal(void) {
    cvx_mem_reset_peak(CVX_DEVICE_EMU);
    const cvx_mem_stats before = stats(CVX_DEVICE_EMU);
    void *p = (void *)&p;
    cvx_error_clear();
    CVX_EXPECT(cvx_mem_alloc(CVX_DEVICE_EMU, CVX_MEM_WEIGHTS, (size_t)1 << 44, &p) == CVX_ERR_OOM && p == NULL,
               "16 TiB is refused");
    CVX_EXPECT(strstr(cvx_error_message(), "refused") != NULL, "message: %s", cvx_error_message());
    cvx_error_clear();
    cvx_mem_stats s = stats(CVX_DEVICE_EMU);
    CVX_EXPECT(s.num_ooms == before.num_ooms + 1, "counted as an OOM");
    s.num_ooms = before.num_ooms;
    CVX_EXPECT(memcmp(&s, &before, sizeof(s)) == 0, "no other statistic changed (peak %lld, was %lld)",
               (long long)s.peak_allocated_bytes, (long long)before.peak_allocated_bytes);
}

/* ---- 3. the activation arena --------------------------------------------------------------------------------- */

static size_t off_of(const void *base, const void *p) { return (size_t)((const char *)p - (const char *)base); }

static void test_arena_first_fit(void) {
    const cvx_mem_stats emu0 = stats(CVX_DEVICE_EMU);
    cvx_arena *a = NULL;
    CVX_EXPECT(cvx_arena_create(CVX_DEVICE_EMU, 0, &a) == CVX_OK, "create");
    CVX_EXPECT(cvx_arena_size(a) == 0 && !cvx_arena_measuring(a), "a real arena holds nothing before reserve");
    void *x = NULL;
    cvx_error_clear();
    CVX_EXPECT(cvx_arena_alloc(a, 1, &x) == CVX_ERR_OOM && x == NULL, "no room before reserve");
    cvx_error_clear();
    CVX_EXPECT(cvx_arena_reserve(a, 10000) == CVX_OK && cvx_arena_size(a) == 10048, "reserve rounds to 64: %zu",
               cvx_arena_size(a));
    cvx_mem_stats s = stats(CVX_DEVICE_EMU);
    CVX_EXPECT(s.kind_allocated_bytes[CVX_MEM_ACTIVATIONS] - emu0.kind_allocated_bytes[CVX_MEM_ACTIVATIONS] == 10048 &&
                   s.num_active == emu0.num_active + 1,
               "the region is one activations allocation of 10048 bytes");

    void *pa = NULL, *pb = NULL, *pc = NULL, *pd = NULL, *pe = NULL;
    CVX_EXPECT(cvx_arena_alloc(a, 1000, &pa) == CVX_OK, "a");
    char *base = pa; /* first fit: the first block starts the region */
    CVX_EXPECT(cvx_arena_alloc(a, 2000, &pb) == CVX_OK, "b");
    CVX_EXPECT(cvx_arena_alloc(a, 100, &pc) == CVX_OK, "c");
    CVX_EXPECT(off_of(base, pb) == 1024 && off_of(base, pc) == 1024 + 2048, "b at 1024, c at 3072: %zu %zu",
               off_of(base, pb), off_of(base, pc));
    CVX_EXPECT((uintptr_t)pa % ALIGN == 0 && (uintptr_t)pb % ALIGN == 0 && (uintptr_t)pc % ALIGN == 0, "64-aligned");
    CVX_EXPECT(cvx_arena_in_use(a) == 1024 + 2048 + 128 && cvx_arena_peak(a) == 3200, "in use %zu, peak %zu",
               cvx_arena_in_use(a), cvx_arena_peak(a));
    memset(pa, 1, 1000);
    memset(pb, 2, 2000);
    memset(pc, 3, 100);
    cvx_arena_free(a, pb);
    CVX_EXPECT(cvx_arena_in_use(a) == 1024 + 128, "b freed: in use %zu", cvx_arena_in_use(a));
    /* d is smaller than b's hole: first fit puts it there, not after c */
    CVX_EXPECT(cvx_arena_alloc(a, 1500, &pd) == CVX_OK && pd == pb, "d lands in b's hole (offset %zu)",
               off_of(base, pd));
    /* e fits the rest of the hole (2048 - 1536 = 512) */
    CVX_EXPECT(cvx_arena_alloc(a, 512, &pe) == CVX_OK && off_of(base, pe) == 1024 + 1536, "e after d: %zu",
               off_of(base, pe));
    void *pf = NULL;
    CVX_EXPECT(cvx_arena_alloc(a, 1, &pf) == CVX_OK && off_of(base, pf) == 3200, "f after c: %zu", off_of(base, pf));
    CVX_EXPECT(cvx_arena_peak(a) == 3264, "peak = highest end %zu", cvx_arena_peak(a));
    /* zero-byte allocations are distinct and take 64 bytes each */
    void *z1 = NULL, *z2 = NULL;
    CVX_EXPECT(cvx_arena_alloc(a, 0, &z1) == CVX_OK && cvx_arena_alloc(a, 0, &z2) == CVX_OK && z1 != z2 &&
                   off_of(base, z1) == 3264 && off_of(base, z2) == 3328,
               "zero-byte allocations at 3264 and 3328: %zu %zu", off_of(base, z1), off_of(base, z2));
    /* a pointer that is not from the arena, and one inside a block, are ignored */
    const size_t used = cvx_arena_in_use(a);
    int on_stack;
    cvx_arena_free(a, &on_stack);
    cvx_arena_free(a, (char *)pd + 64);
    cvx_arena_free(a, base + 10048);
    cvx_arena_free(a, NULL);
    CVX_EXPECT(cvx_arena_in_use(a) == used, "foreign frees ignored: in use %zu want %zu", cvx_arena_in_use(a), used);
    cvx_arena_free(a, pd);
    cvx_arena_free(a, pd); /* twice: the second finds a free block and does nothing */
    CVX_EXPECT(cvx_arena_in_use(a) == used - 1536, "double free ignored");
    /* reserve refuses while in use */
    cvx_error_clear();
    CVX_EXPECT(cvx_arena_reserve(a, 20000) == CVX_ERR_INTERNAL && strstr(cvx_error_message(), "in use"),
               "reserve while in use: %s", cvx_error_message());
    cvx_error_clear();
    CVX_EXPECT(cvx_arena_size(a) == 10048, "the region is kept");
    cvx_arena_free(a, pe);
    cvx_arena_free(a, z2);
    cvx_arena_free(a, pa);
    cvx_arena_free(a, pf);
    cvx_arena_free(a, pc);
    cvx_arena_free(a, z1);
    CVX_EXPECT(cvx_arena_in_use(a) == 0, "all freed");
    /* merged back into one block: the whole region fits again, one byte more does not */
    void *w = NULL;
    CVX_EXPECT(cvx_arena_alloc(a, 10048, &w) == CVX_OK && w == base, "the whole region after merging");
    cvx_arena_free(a, w);
    cvx_error_clear();
    CVX_EXPECT(cvx_arena_alloc(a, 10049, &w) == CVX_ERR_OOM && w == NULL, "one byte more than the region");
    CVX_EXPECT(strstr(cvx_error_message(), "10048") != NULL, "message names the region: %s", cvx_error_message());
    cvx_error_clear();
    /* the same size again reallocates nothing */
    s = stats(CVX_DEVICE_EMU);
    CVX_EXPECT(cvx_arena_reserve(a, 10040) == CVX_OK && stats(CVX_DEVICE_EMU).num_allocs == s.num_allocs,
               "reserve of the same (rounded) size keeps the region");
    cvx_arena_trim(a);
    s = stats(CVX_DEVICE_EMU);
    CVX_EXPECT(same_live(&emu0, &s) && cvx_arena_size(a) == 0, "trim gives the region back");
    cvx_arena_destroy(a);
}

/* One step of a replayed sequence: allocate `bytes` into slot, or free the slot. */
#define NSTEP 400
#define NSLOT 24

static void test_arena_measure_replay(void) {
    size_t bytes[NSTEP];
    int slot[NSTEP];
    for (int i = 0; i < NSTEP; i++) {
        slot[i] = (int)(rnd() % NSLOT);
        bytes[i] = (rnd() % 5 == 0) ? 0 : (size_t)(rnd() % 20000);
    }
    const cvx_mem_stats emu0 = stats(CVX_DEVICE_EMU);
    size_t offs[2][NSTEP];
    size_t peak = 0;
    for (int pass = 0; pass < 2; pass++) {
        cvx_arena *a = NULL;
        CVX_EXPECT(cvx_arena_create(CVX_DEVICE_EMU, pass == 0, &a) == CVX_OK, "create");
        if (pass == 1) CVX_EXPECT(cvx_arena_reserve(a, peak) == CVX_OK, "reserve the measured %zu", peak);
        void *live[NSLOT] = {0};
        char *base = NULL;
        int ok = 1;
        /* the base: a zero-byte probe allocated and freed first lands at offset 0 */
        void *probe = NULL;
        ok &= cvx_arena_alloc(a, 0, &probe) == CVX_OK;
        base = probe;
        cvx_arena_free(a, probe);
        for (int i = 0; i < NSTEP; i++) {
            offs[pass][i] = (size_t)-1;
            if (live[slot[i]]) {
                cvx_arena_free(a, live[slot[i]]);
                live[slot[i]] = NULL;
            } else {
                ok &= cvx_arena_alloc(a, bytes[i], &live[slot[i]]) == CVX_OK;
                if (!live[slot[i]]) continue;
                offs[pass][i] = (size_t)((char *)live[slot[i]] - base);
                if (pass == 1 && bytes[i]) memset(live[slot[i]], i & 0xff, bytes[i]);
            }
        }
        CVX_EXPECT(ok, "pass %d: every allocation fits", pass);
        if (pass == 0) {
            peak = cvx_arena_peak(a);
            const cvx_mem_stats s = stats(CVX_DEVICE_EMU);
            CVX_EXPECT(memcmp(&s, &emu0, sizeof(s)) == 0, "a measuring arena allocates nothing on the device");
            CVX_EXPECT(cvx_arena_size(a) == 0 && cvx_arena_measuring(a), "a measuring arena has no region");
            CVX_EXPECT(cvx_arena_reserve(a, 12345) == CVX_OK, "reserve on a measuring arena is a no-op");
        } else {
            CVX_EXPECT(cvx_arena_size(a) == peak && cvx_arena_peak(a) == peak, "the real run peaks at %zu exactly: %zu",
                       peak, cvx_arena_peak(a));
            const cvx_mem_stats s = stats(CVX_DEVICE_EMU);
            CVX_EXPECT(s.kind_allocated_bytes[CVX_MEM_ACTIVATIONS] - emu0.kind_allocated_bytes[CVX_MEM_ACTIVATIONS] ==
                           (int64_t)peak,
                       "the region is the peak");
        }
        for (int k = 0; k < NSLOT; k++) cvx_arena_free(a, live[k]);
        CVX_EXPECT(cvx_arena_in_use(a) == 0, "pass %d: all freed", pass);
        cvx_arena_destroy(a);
    }
    int same = 1, first_diff = -1;
    for (int i = 0; i < NSTEP; i++)
        if (offs[0][i] != offs[1][i] && same) same = 0, first_diff = i;
    CVX_EXPECT(same, "the real run places every allocation where the measuring run did (step %d)", first_diff);
    CVX_EXPECT(peak > 0 && peak % ALIGN == 0, "peak %zu", peak);
    printf("  arena replay: %d steps, measured peak %zu bytes\n", NSTEP, peak);
    const cvx_mem_stats s = stats(CVX_DEVICE_EMU);
    CVX_EXPECT(same_live(&emu0, &s), "destroy gives the region back");

    /* a region under the peak is too small somewhere in the replay */
    cvx_arena *a = NULL;
    cvx_arena_create(CVX_DEVICE_EMU, 0, &a);
    cvx_arena_reserve(a, peak - ALIGN);
    void *live[NSLOT] = {0};
    int oom = 0;
    for (int i = 0; i < NSTEP && !oom; i++) {
        if (live[slot[i]]) {
            cvx_arena_free(a, live[slot[i]]);
            live[slot[i]] = NULL;
        } else if (cvx_arena_alloc(a, bytes[i], &live[slot[i]]) == CVX_ERR_OOM) {
            oom = 1;
        }
    }
    cvx_error_clear();
    CVX_EXPECT(oom, "64 bytes under the measured peak runs out");
    for (int k = 0; k < NSLOT; k++) cvx_arena_free(a, live[k]);
    cvx_arena_destroy(a);

    /* an arena region past the device's limit: CVX_ERR_OOM, nothing held */
    cvx_mem_set_limit(CVX_DEVICE_EMU, emu0.allocated_bytes + 4096);
    cvx_arena_create(CVX_DEVICE_EMU, 0, &a);
    CVX_EXPECT(cvx_arena_reserve(a, 4096) == CVX_OK, "4096 fits the limit");
    cvx_error_clear();
    CVX_EXPECT(cvx_arena_reserve(a, 4160) == CVX_ERR_OOM && cvx_arena_size(a) == 0, "4160 does not, old region freed");
    cvx_error_clear();
    cvx_mem_set_limit(CVX_DEVICE_EMU, 0);
    cvx_arena_destroy(a);
    const cvx_mem_stats s2 = stats(CVX_DEVICE_EMU);
    CVX_EXPECT(same_live(&emu0, &s2), "nothing left after the refused reserve");
}

/* ---- 4. copy queues ------------------------------------------------------------------------------------------- */

#define NCOPY 64
#define COPY_MAX 8192

static void test_queue_order(void) {
    cvx_queue *q = cvx_copy_queue(CVX_DEVICE_EMU);
    CVX_EXPECT(q != NULL && cvx_copy_queue(CVX_DEVICE_EMU) == q, "one queue per device");
    CVX_EXPECT(cvx_copy_queue((cvx_device)9) == NULL, "no queue for a bad device");
    unsigned char *src = xmalloc(NCOPY * COPY_MAX), *dst = xmalloc(COPY_MAX), *want = xmalloc(COPY_MAX);
    memset(dst, 0xee, COPY_MAX);
    memset(want, 0xee, COPY_MAX);
    size_t len[NCOPY];
    for (int i = 0; i < NCOPY; i++) {
        len[i] = 1 + (size_t)(rnd() % COPY_MAX);
        memset(src + (size_t)i * COPY_MAX, i + 1, len[i]);
        memset(want, i + 1, len[i]); /* the expected result of running them in order */
    }
    int64_t busy = 0;
    const int64_t qbusy0 = cvx_queue_busy_ns(q);
    int ok = 1;
    for (int i = 0; i < NCOPY; i++) ok &= cvx_queue_copy(q, dst, src + (size_t)i * COPY_MAX, len[i], &busy) == CVX_OK;
    const cvx_event ev = cvx_queue_record(q);
    cvx_queue_wait(q, ev);
    CVX_EXPECT(ok && cvx_queue_done(q, ev), "copies queued and done");
    CVX_EXPECT(memcmp(dst, want, COPY_MAX) == 0, "later copies overwrote earlier ones: they ran in order");
    CVX_EXPECT(__atomic_load_n(&busy, __ATOMIC_RELAXED) >= 0 && cvx_queue_busy_ns(q) - qbusy0 >= busy,
               "the queue's busy time includes the caller's");
    /* a zero-byte copy and an event with nothing queued since */
    CVX_EXPECT(cvx_queue_copy(q, dst, src, 0, NULL) == CVX_OK, "zero bytes");
    cvx_queue_sync(q);
    CVX_EXPECT(cvx_queue_done(q, cvx_queue_record(q)) && cvx_queue_wait(q, cvx_queue_record(q)) == 0,
               "an event after a sync is complete, waiting costs nothing");

    /* the host queue runs copies at once, on the caller's thread */
    cvx_queue *h = cvx_copy_queue(CVX_DEVICE_CPU);
    memset(dst, 0, COPY_MAX);
    CVX_EXPECT(h != NULL && h != q && cvx_queue_copy(h, dst, src, len[0], NULL) == CVX_OK, "host copy");
    CVX_EXPECT(cvx_queue_done(h, cvx_queue_record(h)) && dst[0] == 1 && dst[len[0] - 1] == 1, "host copy done at once");
    CVX_EXPECT(cvx_queue_copy(NULL, dst, src, 1, NULL) == CVX_ERR_INVALID, "no queue");
    cvx_error_clear();
    CVX_EXPECT(cvx_queue_done(NULL, 5) && cvx_queue_wait(NULL, 5) == 0 && cvx_queue_record(NULL) == 0,
               "a NULL queue is always done");
    free(src);
    free(dst);
    free(want);
}

/* The queue's job ring grows while the copy thread is behind, also when its head has moved (the live jobs wrap
 * around the end of the ring): the order must survive the reallocation. */
#define GROW_FIRST 40
#define GROW_MORE 300
#define GROW_LEN 1000

static void test_queue_growth(void) {
    cvx_queue *q = cvx_copy_queue(CVX_DEVICE_EMU);
    const int n = GROW_FIRST + GROW_MORE;
    unsigned char *src = xmalloc((size_t)n * GROW_LEN), *dst = xmalloc(GROW_LEN), *want = xmalloc(GROW_LEN);
    size_t len[GROW_FIRST + GROW_MORE];
    for (int i = 0; i < n; i++) {
        len[i] = 1 + (size_t)(rnd() % GROW_LEN);
        memset(src + (size_t)i * GROW_LEN, i % 253 + 1, len[i]);
    }
    memset(dst, 0, GROW_LEN);
    memset(want, 0, GROW_LEN);
    cvx_mem_set_bandwidth(CVX_DEVICE_EMU, 2e7); /* 50 us per 1000 bytes: the thread falls behind the producer */
    const cvx_event ev0 = cvx_queue_record(q);
    int ok = 1;
    for (int i = 0; i < GROW_FIRST; i++) ok &= cvx_queue_copy(q, dst, src + (size_t)i * GROW_LEN, len[i], NULL) == 0;
    cvx_queue_wait(q, ev0 + GROW_FIRST / 2); /* the head moves on, jobs are still queued */
    for (int i = GROW_FIRST; i < n; i++) ok &= cvx_queue_copy(q, dst, src + (size_t)i * GROW_LEN, len[i], NULL) == 0;
    CVX_EXPECT(!cvx_queue_done(q, cvx_queue_record(q)), "the thread is behind (the ring had to grow)");
    cvx_queue_sync(q);
    for (int i = 0; i < n; i++) memset(want, i % 253 + 1, len[i]);
    CVX_EXPECT(ok && memcmp(dst, want, GROW_LEN) == 0 && cvx_queue_record(q) - ev0 == (cvx_event)n,
               "%d copies through a growing ring ran in order", n);
    cvx_mem_set_bandwidth(CVX_DEVICE_EMU, 0);
    free(src);
    free(dst);
    free(want);
}

#define SLOW_BYTES (2u << 20)
#define SLOW_BW 10e6 /* 2 MiB at 10 MB/s: 210 ms */

static void test_queue_bandwidth(void) {
    cvx_queue *q = cvx_copy_queue(CVX_DEVICE_EMU);
    unsigned char *src = xmalloc(SLOW_BYTES), *dst = xmalloc(SLOW_BYTES);
    memset(src, 0x5c, SLOW_BYTES);
    memset(dst, 0, SLOW_BYTES);
    cvx_mem_set_bandwidth(CVX_DEVICE_EMU, SLOW_BW);
    CVX_EXPECT(cvx_mem_bandwidth(CVX_DEVICE_EMU) == SLOW_BW, "bandwidth %g", cvx_mem_bandwidth(CVX_DEVICE_EMU));
    const int64_t want_ns = (int64_t)((double)SLOW_BYTES / SLOW_BW * 1e9);
    int64_t busy = 0;
    const int64_t qbusy0 = cvx_queue_busy_ns(q);
    const cvx_event before = cvx_queue_record(q);
    CVX_EXPECT(cvx_queue_done(q, before), "an event with nothing queued before it is complete");
    const int64_t t0 = mono_ns();
    CVX_EXPECT(cvx_queue_copy(q, dst, src, SLOW_BYTES, &busy) == CVX_OK, "queue a slow copy");
    const int64_t t_queued = mono_ns() - t0;
    const cvx_event ev = cvx_queue_record(q);
    CVX_EXPECT(ev == before + 1, "the event is the next position: %llu", (unsigned long long)ev);
    CVX_EXPECT(!cvx_queue_done(q, ev), "not done before the link's time has passed");
    CVX_EXPECT(t_queued < want_ns / 2, "queuing took %lld ns of the copy's %lld: the caller is not blocked",
               (long long)t_queued, (long long)want_ns);
    const int64_t waited = cvx_queue_wait(q, ev);
    const int64_t took = mono_ns() - t0;
    CVX_EXPECT(cvx_queue_done(q, ev), "done after the wait");
    CVX_EXPECT(took >= want_ns, "the copy took %lld ns, at least %lld", (long long)took, (long long)want_ns);
    CVX_EXPECT(waited > 0 && waited <= took, "waited %lld ns", (long long)waited);
    CVX_EXPECT(__atomic_load_n(&busy, __ATOMIC_RELAXED) >= want_ns && cvx_queue_busy_ns(q) - qbusy0 >= want_ns,
               "busy time %lld >= %lld", (long long)__atomic_load_n(&busy, __ATOMIC_RELAXED), (long long)want_ns);
    CVX_EXPECT(dst[0] == 0x5c && dst[SLOW_BYTES - 1] == 0x5c, "the bytes arrived");
    printf("  slow link: %u bytes at %.0f B/s: queued in %lld ns, took %.1f ms (>= %.1f ms), waited %.1f ms\n",
           SLOW_BYTES, SLOW_BW, (long long)t_queued, took / 1e6, want_ns / 1e6, waited / 1e6);
    cvx_mem_set_bandwidth(CVX_DEVICE_EMU, 0);
    CVX_EXPECT(cvx_mem_bandwidth(CVX_DEVICE_EMU) == 0, "bandwidth restored");
    free(src);
    free(dst);
}

#define NPROD 4
#define PROD_COPIES 100
#define PROD_MAX 4096
#define PROD_BW 1e9 /* 1 byte per ns: a copy's time bound is its size in ns */

typedef struct producer {
    int id;
    unsigned char *src, *dst, *want;
    int64_t busy, min_ns;
    int ok;
} producer;

static void *produce(void *arg) {
    producer *p = arg;
    cvx_queue *q = cvx_copy_queue(CVX_DEVICE_EMU);
    uint64_t seed = 0x9e3779b97f4a7c15ull * (uint64_t)(p->id + 1);
    p->ok = 1;
    for (int i = 0; i < PROD_COPIES; i++) {
        seed ^= seed << 13, seed ^= seed >> 7, seed ^= seed << 17;
        const size_t len = 1 + (size_t)(seed % PROD_MAX);
        unsigned char *s = p->src + (size_t)i * PROD_MAX;
        memset(s, (p->id * PROD_COPIES + i) % 251 + 1, len);
        memset(p->want, (p->id * PROD_COPIES + i) % 251 + 1, len);
        p->min_ns += (int64_t)((double)len / PROD_BW * 1e9);
        p->ok &= cvx_queue_copy(q, p->dst, s, len, &p->busy) == CVX_OK;
        if (i % 10 == 9) { /* the event covers this producer's copies so far (and any other's queued before) */
            const cvx_event ev = cvx_queue_record(q);
            p->ok &= cvx_queue_wait(q, ev) >= 0 && cvx_queue_done(q, ev);
        }
    }
    cvx_queue_wait(q, cvx_queue_record(q));
    return NULL;
}

static void test_queue_producers(void) {
    cvx_queue *q = cvx_copy_queue(CVX_DEVICE_EMU);
    cvx_mem_set_bandwidth(CVX_DEVICE_EMU, PROD_BW);
    const int64_t qbusy0 = cvx_queue_busy_ns(q);
    const cvx_event ev0 = cvx_queue_record(q);
    pthread_t th[NPROD];
    producer p[NPROD];
    memset(p, 0, sizeof(p));
    for (int i = 0; i < NPROD; i++) {
        p[i].id = i;
        p[i].src = xmalloc(PROD_COPIES * PROD_MAX);
        p[i].dst = xmalloc(PROD_MAX);
        p[i].want = xmalloc(PROD_MAX);
        memset(p[i].dst, 0, PROD_MAX);
        memset(p[i].want, 0, PROD_MAX);
        CVX_EXPECT(pthread_create(&th[i], NULL, produce, &p[i]) == 0, "pthread_create");
    }
    int64_t min_total = 0;
    for (int i = 0; i < NPROD; i++) {
        pthread_join(th[i], NULL);
        CVX_EXPECT(p[i].ok, "producer %d: every copy queued and every event completed", i);
        CVX_EXPECT(memcmp(p[i].dst, p[i].want, PROD_MAX) == 0, "producer %d: its copies ran in its order", i);
        CVX_EXPECT(p[i].busy >= p[i].min_ns, "producer %d: busy %lld >= %lld ns", i, (long long)p[i].busy,
                   (long long)p[i].min_ns);
        min_total += p[i].min_ns;
        free(p[i].src);
        free(p[i].dst);
        free(p[i].want);
    }
    CVX_EXPECT(cvx_queue_record(q) - ev0 == NPROD * PROD_COPIES, "%d copies went through the queue",
               (int)(cvx_queue_record(q) - ev0));
    CVX_EXPECT(cvx_queue_busy_ns(q) - qbusy0 >= min_total, "the queue was busy %lld >= %lld ns",
               (long long)(cvx_queue_busy_ns(q) - qbusy0), (long long)min_total);
    cvx_mem_set_bandwidth(CVX_DEVICE_EMU, 0);
}

static void test_queue_shutdown(void) {
    cvx_queue *q = cvx_copy_queue(CVX_DEVICE_EMU);
    unsigned char *a = xmalloc(SLOW_BYTES), *b = xmalloc(SLOW_BYTES);
    memset(a, 7, SLOW_BYTES);
    memset(b, 0, SLOW_BYTES);
    cvx_queue_copy(q, b, a, 256, NULL);
    const cvx_event ev = cvx_queue_record(q);
    cvx_queues_shutdown(); /* runs what is queued, then joins the thread */
    CVX_EXPECT(b[0] == 7 && b[255] == 7 && cvx_queue_done(q, ev), "shutdown ran the queued copy first");
    cvx_queues_shutdown(); /* twice: nothing to stop */
    /* without its thread the queue copies on the caller's thread, at once (the link is not modelled then) */
    memset(a, 8, 256);
    CVX_EXPECT(cvx_queue_copy(q, b, a, 256, NULL) == CVX_OK && b[0] == 8 && b[255] == 8 &&
                   cvx_queue_done(q, cvx_queue_record(q)) && cvx_queue_record(q) == ev + 1,
               "after the shutdown a copy runs inline and the events go on");
    /* cvx_copy_queue starts the thread again: a slow copy returns before the link's time has passed */
    CVX_EXPECT(cvx_copy_queue(CVX_DEVICE_EMU) == q, "the same queue");
    cvx_mem_set_bandwidth(CVX_DEVICE_EMU, SLOW_BW);
    memset(a, 9, SLOW_BYTES);
    const int64_t t0 = mono_ns();
    CVX_EXPECT(cvx_queue_copy(q, b, a, SLOW_BYTES, NULL) == CVX_OK, "queue on the restarted thread");
    const int64_t queued = mono_ns() - t0;
    CVX_EXPECT(!cvx_queue_done(q, cvx_queue_record(q)), "the copy runs behind the caller again");
    cvx_queue_sync(q);
    CVX_EXPECT(queued < (int64_t)((double)SLOW_BYTES / SLOW_BW * 1e9) / 2 && b[0] == 9 && b[SLOW_BYTES - 1] == 9 &&
                   cvx_queue_record(q) == ev + 2,
               "the restarted thread ran it (queued in %lld ns)", (long long)queued);
    cvx_mem_set_bandwidth(CVX_DEVICE_EMU, 0);
    free(a);
    free(b);
}

/* ---- 5. residency on a fake component ------------------------------------------------------------------------ */

#define NG 6 /* group 0: non-block weights; 1..5: the blocks */
#define NT 3
#define NFIRST 1
#define NLAST 5
#define MAXG 3 /* the largest block group */

static const size_t tensor_bytes[NG][NT] = {
    {1000, 2000, 37}, {4096, 100, 1}, {5000, 64, 300}, {9000, 1000, 7}, {128, 6000, 200}, {3000, 3000, 3},
};

typedef struct fake {
    unsigned char *host[NG][NT];
    void *slot[NG][NT];
    size_t offset[NG][NT];
    int64_t gbytes[NG];
    cvx_residency *r;
} fake;

static void fake_create(fake *f) {
    memset(f, 0, sizeof(*f));
    cvx_residency_tensor table[NG * NT];
    int n = 0;
    /* given in reverse order: the residency sorts by group and offset */
    for (int g = NG - 1; g >= 0; g--) {
        size_t end = 0;
        for (int t = 0; t < NT; t++) {
            f->offset[g][t] = round64(end);
            end = f->offset[g][t] + tensor_bytes[g][t];
        }
        f->gbytes[g] = (int64_t)round64(end); /* the device layout is whole 64-byte units, as the weights lay it */
        for (int t = NT - 1; t >= 0; t--) {
            f->host[g][t] = xmalloc(tensor_bytes[g][t]);
            for (size_t i = 0; i < tensor_bytes[g][t]; i++) f->host[g][t][i] = (unsigned char)(g * 41 + t * 7 + i * 13);
            table[n++] = (cvx_residency_tensor){&f->slot[g][t], f->host[g][t], tensor_bytes[g][t], f->offset[g][t], g};
        }
    }
    CVX_EXPECT(cvx_residency_create(table, n, NG, &f->r) == CVX_OK, "create the fake component");
}

static void fake_destroy(fake *f) {
    cvx_residency_destroy(f->r);
    for (int g = 0; g < NG; g++)
        for (int t = 0; t < NT; t++) free(f->host[g][t]);
}

static int at_host(const fake *f, int g) {
    for (int t = 0; t < NT; t++)
        if (f->slot[g][t] != f->host[g][t]) return 0;
    return 1;
}

/* g's slots point into one emu weights allocation laid out at the declared offsets, holding the host bytes */
static int on_device(const fake *f, int g) {
    const char *base = (const char *)f->slot[g][0] - f->offset[g][0];
    for (int t = 0; t < NT; t++) {
        const void *s = f->slot[g][t];
        if (s == f->host[g][t] || (const char *)s != base + f->offset[g][t]) return 0;
        if (!cvx_mem_is_resident(CVX_DEVICE_EMU, s, tensor_bytes[g][t])) return 0;
        if (memcmp(s, f->host[g][t], tensor_bytes[g][t]) != 0) return 0;
    }
    return cvx_mem_is_resident(CVX_DEVICE_EMU, base, (size_t)f->gbytes[g]);
}

static int64_t block_max(const fake *f) {
    int64_t m = 0;
    for (int g = NFIRST; g <= NLAST; g++)
        if (f->gbytes[g] > m) m = f->gbytes[g];
    return m;
}

/* The prefetch ring of depth k: k + 1 slots, no more than the pass has groups. */
static int ring_slots(int k) { return k + 1 < NLAST - NFIRST + 1 ? k + 1 : NLAST - NFIRST + 1; }

static int64_t sum_bytes(const fake *f, int from, int to) {
    int64_t s = 0;
    for (int g = from; g <= to; g++) s += f->gbytes[g];
    return s;
}

static void test_residency_layout_cpu(void) {
    fake f;
    fake_create(&f);
    cvx_residency *r = f.r;
    CVX_EXPECT(cvx_residency_num_groups(r) == NG && cvx_residency_device(r) == CVX_DEVICE_CPU &&
                   cvx_residency_policy(r) == CVX_POLICY_NONE,
               "starts on the cpu under NONE");
    int64_t total = 0;
    for (int g = 0; g < NG; g++) {
        CVX_EXPECT(cvx_residency_group_bytes(r, g) == f.gbytes[g], "group %d: %lld bytes, want %lld", g,
                   (long long)cvx_residency_group_bytes(r, g), (long long)f.gbytes[g]);
        total += f.gbytes[g];
    }
    CVX_EXPECT(f.gbytes[MAXG] == block_max(&f) && f.gbytes[3] == 10112, "the layout: group 3 is the largest (%lld)",
               (long long)f.gbytes[3]);
    CVX_EXPECT(cvx_residency_total_bytes(r) == total, "total %lld", (long long)cvx_residency_total_bytes(r));
    const cvx_mem_stats cpu0 = stats(CVX_DEVICE_CPU), emu0 = stats(CVX_DEVICE_EMU);
    /* on the cpu every policy reads the host bytes in place */
    for (int pol = 0; pol <= CVX_POLICY_SEQUENTIAL; pol++) {
        CVX_EXPECT(cvx_residency_set(r, CVX_DEVICE_CPU, (cvx_policy)pol, 1) == CVX_OK, "cpu, policy %d", pol);
        CVX_EXPECT(cvx_residency_begin(r, NFIRST, NLAST, 0) == CVX_OK, "begin");
        int ok = 1;
        for (int g = 0; g < NG; g++) {
            ok &= cvx_residency_acquire(r, g) == CVX_OK && at_host(&f, g) &&
                  cvx_residency_state(r, g) == CVX_GROUP_RESIDENT;
            cvx_residency_release(r, g);
            ok &= at_host(&f, g);
        }
        cvx_residency_end(r);
        CVX_EXPECT(ok, "cpu, policy %d: slots point at the host bytes, groups resident", pol);
    }
    const cvx_mem_stats cpu1 = stats(CVX_DEVICE_CPU), emu1 = stats(CVX_DEVICE_EMU);
    CVX_EXPECT(memcmp(&cpu0, &cpu1, sizeof(cpu0)) == 0 && memcmp(&emu0, &emu1, sizeof(emu0)) == 0,
               "nothing allocated for the cpu");
    cvx_residency_stats rs;
    cvx_residency_get_stats(r, &rs);
    CVX_EXPECT(rs.bytes_copied == 0 && rs.copies == 0 && rs.resident_bytes == 0, "nothing copied on the cpu");
    cvx_error_clear();
    CVX_EXPECT(cvx_residency_set(r, CVX_DEVICE_EMU, CVX_POLICY_SEQUENTIAL, -1) == CVX_ERR_INVALID &&
                   cvx_residency_set(r, CVX_DEVICE_EMU, (cvx_policy)3, 0) == CVX_ERR_INVALID,
               "bad prefetch or policy");
    cvx_error_clear();
    CVX_EXPECT(cvx_residency_begin(r, 4, 2, 0) == CVX_ERR_INTERNAL &&
                   cvx_residency_begin(r, 0, NG, 0) == CVX_ERR_INTERNAL,
               "bad pass");
    /* first = last + 1: the empty pass of a model without blocks */
    CVX_EXPECT(cvx_residency_begin(r, 3, 2, 0) == CVX_OK, "empty pass: %s", cvx_error_message());
    cvx_residency_end(r);
    cvx_error_clear();
    CVX_EXPECT(cvx_residency_acquire(r, NG) == CVX_ERR_INTERNAL, "bad group");
    cvx_error_clear();
    /* a bad table */
    cvx_residency *bad = NULL;
    void *s = NULL;
    const cvx_residency_tensor t = {&s, &s, 8, 0, NG};
    CVX_EXPECT(cvx_residency_create(&t, 1, NG, &bad) == CVX_ERR_INTERNAL && bad == NULL, "a group out of range");
    cvx_error_clear();
    fake_destroy(&f);
}

static void test_residency_none_model(void) {
    fake f;
    fake_create(&f);
    cvx_residency *r = f.r;
    const int64_t total = sum_bytes(&f, 0, NG - 1);
    cvx_mem_reset_peak(CVX_DEVICE_EMU);
    const cvx_mem_stats emu0 = stats(CVX_DEVICE_EMU);

    /* NONE: everything comes in at set */
    CVX_EXPECT(cvx_residency_set(r, CVX_DEVICE_EMU, CVX_POLICY_NONE, 0) == CVX_OK, "NONE on emu");
    cvx_mem_stats s = stats(CVX_DEVICE_EMU);
    CVX_EXPECT(s.kind_allocated_bytes[CVX_MEM_WEIGHTS] - emu0.kind_allocated_bytes[CVX_MEM_WEIGHTS] == total &&
                   s.num_active - emu0.num_active == NG && s.num_allocs - emu0.num_allocs == NG,
               "NONE: %d weight allocations, %lld bytes (want %lld)", (int)(s.num_active - emu0.num_active),
               (long long)(s.kind_allocated_bytes[CVX_MEM_WEIGHTS] - emu0.kind_allocated_bytes[CVX_MEM_WEIGHTS]),
               (long long)total);
    int ok = 1;
    for (int g = 0; g < NG; g++) ok &= cvx_residency_state(r, g) == CVX_GROUP_RESIDENT && on_device(&f, g);
    CVX_EXPECT(ok, "NONE: every group resident on emu with its bytes");
    cvx_residency_stats rs;
    cvx_residency_get_stats(r, &rs);
    CVX_EXPECT(rs.bytes_copied == total && rs.copies == NG && rs.resident_bytes == total &&
                   rs.peak_resident_bytes == total,
               "NONE: copied %lld in %lld copies", (long long)rs.bytes_copied, (long long)rs.copies);
    /* acquire/release in a pass change nothing */
    CVX_EXPECT(cvx_residency_begin(r, NFIRST, NLAST, 0) == CVX_OK, "begin");
    for (int g = 0; g < NG; g++) {
        ok &= cvx_residency_acquire(r, g) == CVX_OK && on_device(&f, g);
        cvx_residency_release(r, g);
        ok &= on_device(&f, g);
    }
    cvx_residency_end(r);
    CVX_EXPECT(ok && stats(CVX_DEVICE_EMU).num_allocs == s.num_allocs, "NONE: a pass moves nothing");
    cvx_residency_offload(r);
    s = stats(CVX_DEVICE_EMU);
    ok = 1;
    for (int g = 0; g < NG; g++) ok &= cvx_residency_state(r, g) == CVX_GROUP_HOST && at_host(&f, g);
    CVX_EXPECT(ok && same_live(&emu0, &s), "offload: every group back on the host, nothing held");

    /* MODEL: nothing until onload or the first acquire, then everything until offload */
    cvx_residency_reset_stats(r);
    CVX_EXPECT(cvx_residency_set(r, CVX_DEVICE_EMU, CVX_POLICY_MODEL, 0) == CVX_OK, "MODEL on emu");
    s = stats(CVX_DEVICE_EMU);
    ok = 1;
    for (int g = 0; g < NG; g++) ok &= cvx_residency_state(r, g) == CVX_GROUP_HOST && at_host(&f, g);
    CVX_EXPECT(ok && same_live(&emu0, &s), "MODEL: nothing on the device after set");
    CVX_EXPECT(cvx_residency_begin(r, NFIRST, NLAST, 0) == CVX_OK, "begin");
    CVX_EXPECT(cvx_residency_acquire(r, 2) == CVX_OK, "the first acquire");
    s = stats(CVX_DEVICE_EMU);
    ok = 1;
    for (int g = 0; g < NG; g++) ok &= cvx_residency_state(r, g) == CVX_GROUP_RESIDENT && on_device(&f, g);
    CVX_EXPECT(ok && s.kind_allocated_bytes[CVX_MEM_WEIGHTS] - emu0.kind_allocated_bytes[CVX_MEM_WEIGHTS] == total,
               "MODEL: the first acquire brought the whole component");
    for (int g = 0; g < NG; g++) {
        ok &= cvx_residency_acquire(r, g) == CVX_OK;
        cvx_residency_release(r, g);
        ok &= on_device(&f, g);
    }
    cvx_residency_end(r);
    CVX_EXPECT(ok && stats(CVX_DEVICE_EMU).num_allocs == s.num_allocs, "MODEL: release keeps the component");
    CVX_EXPECT(cvx_residency_onload(r) == CVX_OK && stats(CVX_DEVICE_EMU).num_allocs == s.num_allocs,
               "onload of a resident component allocates nothing");
    cvx_residency_offload(r);
    s = stats(CVX_DEVICE_EMU);
    CVX_EXPECT(same_live(&emu0, &s), "MODEL: offload frees everything");
    CVX_EXPECT(cvx_residency_onload(r) == CVX_OK, "explicit onload");
    s = stats(CVX_DEVICE_EMU);
    ok = 1;
    for (int g = 0; g < NG; g++) ok &= on_device(&f, g);
    CVX_EXPECT(ok && s.num_active - emu0.num_active == NG, "onload: the whole component");
    cvx_residency_get_stats(r, &rs);
    CVX_EXPECT(rs.bytes_copied == 2 * total && rs.copies == 2 * NG, "MODEL: two loads copied %lld",
               (long long)rs.bytes_copied);
    /* back to the cpu: the device copies go, the slots point at the host */
    CVX_EXPECT(cvx_residency_set(r, CVX_DEVICE_CPU, CVX_POLICY_NONE, 0) == CVX_OK, "back to cpu");
    s = stats(CVX_DEVICE_EMU);
    ok = 1;
    for (int g = 0; g < NG; g++) ok &= at_host(&f, g);
    CVX_EXPECT(ok && same_live(&emu0, &s), "set(cpu) drops the device copies");
    CVX_EXPECT(s.peak_allocated_bytes - emu0.allocated_bytes == total, "device peak under NONE/MODEL is the total");
    fake_destroy(&f);
}

/* One forward over the fake component: group 0 for the whole pass, the blocks first..last `cycles` times. With
 * `check`, the state machine's invariants are asserted at every step (k: the prefetch depth). */
typedef struct pass_check {
    int k, first_pass, failed;
    int64_t dev_base; /* emu allocated bytes before the component came */
} pass_check;

static void check_step(fake *f, pass_check *c, int g, int cyclic) {
    cvx_residency *r = f->r;
    const int span = NLAST - NFIRST + 1;
    int ok = cvx_residency_state(r, g) == CVX_GROUP_RESIDENT && on_device(f, g);
    ok &= cvx_residency_state(r, 0) == CVX_GROUP_RESIDENT && on_device(f, 0);
    for (int j = 1; j <= c->k && j < span; j++) { /* the next k groups of the pass are on their way */
        int n = g + j;
        if (n > NLAST) {
            if (!cyclic) break;
            n -= span;
        }
        ok &= cvx_residency_state(r, n) == CVX_GROUP_IN_FLIGHT && at_host(f, n);
    }
    int in_ring = 0;
    for (int n = NFIRST; n <= NLAST; n++) in_ring += cvx_residency_state(r, n) != CVX_GROUP_HOST;
    ok &= in_ring <= ring_slots(c->k);
    const cvx_mem_stats s = stats(CVX_DEVICE_EMU);
    ok &= s.allocated_bytes - c->dev_base == ring_slots(c->k) * block_max(f) + f->gbytes[0];
    if (!ok && !c->failed) {
        c->failed = 1;
        (void)CVX_EXPECT(0, "k=%d group %d: states %d %d %d %d %d %d, %d ring groups, %lld device bytes", c->k, g,
                         cvx_residency_state(r, 0), cvx_residency_state(r, 1), cvx_residency_state(r, 2),
                         cvx_residency_state(r, 3), cvx_residency_state(r, 4), cvx_residency_state(r, 5), in_ring,
                         (long long)(s.allocated_bytes - c->dev_base));
    }
}

static cvx_status run_pass(fake *f, int cyclic, int cycles, pass_check *c) {
    cvx_residency *r = f->r;
    cvx_status st = cvx_residency_begin(r, NFIRST, NLAST, cyclic);
    if (st == CVX_OK) st = cvx_residency_acquire(r, 0);
    for (int cy = 0; cy < cycles && st == CVX_OK; cy++) {
        for (int g = NFIRST; g <= NLAST && st == CVX_OK; g++) {
            /* the first pass of a fresh component: g + k has not been asked for yet */
            if (c && c->first_pass && cy == 0 && g + c->k <= NLAST && c->k > 0 && !c->failed &&
                cvx_residency_state(r, g + c->k) != CVX_GROUP_HOST) {
                c->failed = 1;
                (void)CVX_EXPECT(0, "k=%d: group %d is not on the host before acquire(%d)", c->k, g + c->k, g);
            }
            st = cvx_residency_acquire(r, g);
            if (st != CVX_OK) break;
            if (c) check_step(f, c, g, cyclic);
            cvx_residency_release(r, g);
            if (c && !c->failed && (cvx_residency_state(r, g) != CVX_GROUP_HOST || !at_host(f, g))) {
                c->failed = 1;
                (void)CVX_EXPECT(0, "k=%d: group %d not back on the host after release", c->k, g);
            }
        }
    }
    cvx_residency_release(r, 0);
    cvx_residency_end(r);
    return st;
}

static void test_residency_sequential(int k) {
    fake f;
    fake_create(&f);
    cvx_residency *r = f.r;
    /* n: ring slots; the first n - 1 blocks are queued at end() for the next pass */
    const int n = ring_slots(k);
    const int64_t ring = n * block_max(&f), blocks = sum_bytes(&f, NFIRST, NLAST);
    cvx_mem_reset_peak(CVX_DEVICE_EMU);
    const cvx_mem_stats emu0 = stats(CVX_DEVICE_EMU);
    CVX_EXPECT(cvx_residency_set(r, CVX_DEVICE_EMU, CVX_POLICY_SEQUENTIAL, k) == CVX_OK, "SEQUENTIAL k=%d", k);
    cvx_mem_stats s = stats(CVX_DEVICE_EMU);
    int ok = 1;
    for (int g = 0; g < NG; g++) ok &= cvx_residency_state(r, g) == CVX_GROUP_HOST && at_host(&f, g);
    CVX_EXPECT(ok && same_live(&emu0, &s), "k=%d: nothing on the device before the first pass", k);

    pass_check c = {k, 1, 0, emu0.allocated_bytes};
    CVX_EXPECT(run_pass(&f, 0, 1, &c) == CVX_OK, "k=%d: first pass", k);
    s = stats(CVX_DEVICE_EMU);
    CVX_EXPECT(s.peak_allocated_bytes - emu0.allocated_bytes == ring + f.gbytes[0],
               "k=%d: device peak %lld == %d slots * %lld + %lld", k,
               (long long)(s.peak_allocated_bytes - emu0.allocated_bytes), n, (long long)block_max(&f),
               (long long)f.gbytes[0]);
    CVX_EXPECT(s.num_allocs - emu0.num_allocs == n + 1, "k=%d: the ring's %d slots and group 0: %lld allocations", k, n,
               (long long)(s.num_allocs - emu0.num_allocs));
    cvx_residency_stats rs;
    cvx_residency_get_stats(r, &rs);
    /* group 0, the five blocks, and the first n - 1 blocks queued at end() for the next pass */
    const int64_t next_k = sum_bytes(&f, NFIRST, NFIRST + n - 2);
    CVX_EXPECT(rs.copies == 1 + 5 + n - 1 && rs.bytes_copied == f.gbytes[0] + blocks + next_k,
               "k=%d: first pass copied %lld bytes in %lld copies, want %lld in %d", k, (long long)rs.bytes_copied,
               (long long)rs.copies, (long long)(f.gbytes[0] + blocks + next_k), 1 + 5 + n - 1);
    CVX_EXPECT(rs.resident_bytes == ring + f.gbytes[0] && rs.peak_resident_bytes == ring + f.gbytes[0],
               "k=%d: resident %lld", k, (long long)rs.resident_bytes);
    ok = cvx_residency_state(r, 0) == CVX_GROUP_RESIDENT;
    for (int g = NFIRST; g <= NLAST; g++)
        ok &= cvx_residency_state(r, g) == (g < NFIRST + n - 1 ? CVX_GROUP_IN_FLIGHT : CVX_GROUP_HOST);
    CVX_EXPECT(ok, "k=%d: after the pass: group 0 stays, the first n - 1 blocks are on their way for the next", k);

    /* the second pass (the next denoising step) allocates nothing and copies each block once */
    cvx_residency_reset_stats(r);
    const int64_t allocs = stats(CVX_DEVICE_EMU).num_allocs;
    c.first_pass = 0;
    CVX_EXPECT(run_pass(&f, 0, 1, &c) == CVX_OK, "k=%d: second pass", k);
    s = stats(CVX_DEVICE_EMU);
    CVX_EXPECT(s.num_allocs == allocs, "k=%d: no device allocation between passes (%lld new)", k,
               (long long)(s.num_allocs - allocs));
    cvx_residency_get_stats(r, &rs);
    CVX_EXPECT(rs.copies == 5 && rs.bytes_copied == blocks, "k=%d: second pass copied %lld in %lld copies", k,
               (long long)rs.bytes_copied, (long long)rs.copies);

    /* cyclic: three cycles over the blocks in one pass; the prefetch wraps from the last block to the first */
    cvx_residency_reset_stats(r);
    CVX_EXPECT(run_pass(&f, 1, 3, &c) == CVX_OK, "k=%d: cyclic pass", k);
    cvx_residency_get_stats(r, &rs);
    s = stats(CVX_DEVICE_EMU);
    CVX_EXPECT(s.num_allocs == allocs, "k=%d: a cyclic pass allocates nothing", k);
    /* 15 block copies; the wrap at the last block of the last cycle queued the first k, kept for the next pass */
    CVX_EXPECT(rs.copies == 15 && rs.bytes_copied == 3 * blocks,
               "k=%d: cyclic pass copied %lld in %lld copies (want %lld in 15)", k, (long long)rs.bytes_copied,
               (long long)rs.copies, (long long)(3 * blocks));
    ok = 1;
    for (int g = NFIRST; g <= NLAST; g++)
        ok &= cvx_residency_state(r, g) == (g < NFIRST + n - 1 ? CVX_GROUP_IN_FLIGHT : CVX_GROUP_HOST);
    CVX_EXPECT(ok, "k=%d: after the cyclic pass the first n - 1 blocks are queued for the next", k);
    CVX_EXPECT(s.peak_allocated_bytes - emu0.allocated_bytes == ring + f.gbytes[0], "k=%d: peak unchanged", k);

    /* a slow link: the first acquire waits for its copy */
    cvx_residency_offload(r);
    s = stats(CVX_DEVICE_EMU);
    CVX_EXPECT(same_live(&emu0, &s), "k=%d: offload frees the ring and group 0", k);
    cvx_residency_reset_stats(r);
    const double bw = 1e6; /* a group copy takes its size in microseconds */
    cvx_mem_set_bandwidth(CVX_DEVICE_EMU, bw);
    CVX_EXPECT(run_pass(&f, 0, 1, NULL) == CVX_OK, "k=%d: pass over a slow link", k);
    cvx_queue_sync(cvx_copy_queue(CVX_DEVICE_EMU));
    cvx_residency_get_stats(r, &rs);
    const int64_t copied_bytes = f.gbytes[0] + blocks + next_k;
    CVX_EXPECT(rs.wait_ns > 0, "k=%d: compute waited %lld ns for the copies", k, (long long)rs.wait_ns);
    /* each tensor copy takes at least bytes / bw; the group layouts' padding is not copied */
    int64_t tensor_ns = 0;
    for (int g = 0; g < NG; g++)
        for (int t = 0; t < NT; t++) {
            const int times = g == 0 ? 1 : (g < NFIRST + n - 1 ? 2 : 1);
            tensor_ns += times * (int64_t)((double)tensor_bytes[g][t] / bw * 1e9);
        }
    CVX_EXPECT(rs.copy_ns >= tensor_ns && rs.bytes_copied == copied_bytes, "k=%d: copy time %lld >= %lld ns", k,
               (long long)rs.copy_ns, (long long)tensor_ns);
    printf("  sequential k=%d: device peak %lld = %d x %lld + %lld; slow link: copy %.1f ms, compute waited %.1f ms\n",
           k, (long long)(ring + f.gbytes[0]), n, (long long)block_max(&f), (long long)f.gbytes[0], rs.copy_ns / 1e6,
           rs.wait_ns / 1e6);
    cvx_mem_set_bandwidth(CVX_DEVICE_EMU, 0);
    cvx_residency_offload(r);
    s = stats(CVX_DEVICE_EMU);
    CVX_EXPECT(same_live(&emu0, &s), "k=%d: nothing left", k);
    fake_destroy(&f);
}

/* The copy threads stop (cvx_queues_shutdown, at exit) while a component still has a copy in flight and is destroyed
 * later, as a pipeline object is after the exit handlers: the queue the component holds must stay usable. */
static void test_residency_after_shutdown(void) {
    fake f;
    fake_create(&f);
    const cvx_mem_stats emu0 = stats(CVX_DEVICE_EMU);
    CVX_EXPECT(cvx_residency_set(f.r, CVX_DEVICE_EMU, CVX_POLICY_SEQUENTIAL, 1) == CVX_OK, "SEQUENTIAL k=1");
    CVX_EXPECT(run_pass(&f, 0, 1, NULL) == CVX_OK, "a pass");
    const cvx_event ev = cvx_queue_record(cvx_copy_queue(CVX_DEVICE_EMU));
    CVX_EXPECT(cvx_residency_state(f.r, 1) == CVX_GROUP_IN_FLIGHT, "end() queued group 1 for the next pass");
    cvx_queues_shutdown();
    cvx_residency_offload(f.r); /* waits for group 1's copy on the queue it holds */
    cvx_mem_stats s = stats(CVX_DEVICE_EMU);
    CVX_EXPECT(same_live(&emu0, &s) && at_host(&f, 1), "offload after the shutdown frees everything");
    /* the component works on: its copies run on the caller's thread until a copy thread starts again */
    pass_check c = {1, 1, 0, emu0.allocated_bytes};
    CVX_EXPECT(run_pass(&f, 0, 1, &c) == CVX_OK, "a pass after the shutdown");
    cvx_queue *q = cvx_copy_queue(CVX_DEVICE_EMU);
    CVX_EXPECT(cvx_queue_done(q, ev) && cvx_queue_record(q) > ev, "events recorded before the shutdown stay complete");
    cvx_residency_destroy(f.r);
    f.r = NULL;
    s = stats(CVX_DEVICE_EMU);
    CVX_EXPECT(same_live(&emu0, &s), "destroy frees everything");
    fake_destroy(&f);
}

/* A group acquired with every ring slot held is a missing release: an error, not a hang. */
static void test_residency_missing_release(void) {
    fake f;
    fake_create(&f);
    cvx_residency *r = f.r;
    const cvx_mem_stats emu0 = stats(CVX_DEVICE_EMU);
    CVX_EXPECT(cvx_residency_set(r, CVX_DEVICE_EMU, CVX_POLICY_SEQUENTIAL, 0) == CVX_OK, "SEQUENTIAL k=0");
    CVX_EXPECT(cvx_residency_begin(r, NFIRST, NLAST, 0) == CVX_OK, "begin");
    CVX_EXPECT(cvx_residency_acquire(r, 1) == CVX_OK, "acquire 1");
    cvx_error_clear();
    CVX_EXPECT(cvx_residency_acquire(r, 2) == CVX_ERR_INTERNAL && strstr(cvx_error_message(), "release"),
               "acquire 2 without releasing 1: %s", cvx_error_message());
    cvx_error_clear();
    CVX_EXPECT(cvx_residency_state(r, 2) == CVX_GROUP_HOST && at_host(&f, 2), "2 stays on the host");
    cvx_residency_end(r);
    cvx_residency_offload(r);
    const cvx_mem_stats s = stats(CVX_DEVICE_EMU);
    CVX_EXPECT(same_live(&emu0, &s), "nothing left after the failed pass");
    fake_destroy(&f);
}

/* ---- fault injection: every allocation index of each sequence ---------------------------------------------- */

enum { SEQ_NONE, SEQ_SEQUENTIAL, SEQ_MODEL };
static const char *seq_name[] = {"set NONE", "SEQUENTIAL pass", "MODEL onload"};

static cvx_status run_sequence(fake *f, int which, int k) {
    switch (which) {
    case SEQ_NONE: return cvx_residency_set(f->r, CVX_DEVICE_EMU, CVX_POLICY_NONE, 0);
    case SEQ_SEQUENTIAL: {
        const cvx_status st = cvx_residency_set(f->r, CVX_DEVICE_EMU, CVX_POLICY_SEQUENTIAL, k);
        return st != CVX_OK ? st : run_pass(f, 0, 1, NULL);
    }
    default: {
        const cvx_status st = cvx_residency_set(f->r, CVX_DEVICE_EMU, CVX_POLICY_MODEL, 0);
        return st != CVX_OK ? st : cvx_residency_onload(f->r);
    }
    }
}

static void test_residency_faults(int which, int k, int want_allocs) {
    fake f;
    fake_create(&f);
    const cvx_mem_stats emu0 = stats(CVX_DEVICE_EMU);
    cvx_mem_fail_at(-1);
    CVX_EXPECT(run_sequence(&f, which, k) == CVX_OK, "%s: a clean run", seq_name[which]);
    const int64_t made = cvx_mem_fail_at(-1);
    CVX_EXPECT(made == want_allocs, "%s (k=%d): %lld allocations, want %d", seq_name[which], k, (long long)made,
               want_allocs);
    cvx_residency_offload(f.r);
    int n = 0, all_ok = 1;
    for (;; n++) {
        cvx_mem_fail_at(n);
        cvx_error_clear();
        const cvx_status st = run_sequence(&f, which, k);
        const int64_t since = cvx_mem_fail_at(-1);
        if (st == CVX_OK) {
            /* the failure was never reached: the run made fewer than n + 1 allocations */
            CVX_EXPECT(since == n, "%s: the clean run made %lld allocations", seq_name[which], (long long)since);
            break;
        }
        all_ok &= st == CVX_ERR_OOM && strstr(cvx_error_message(), "injected") != NULL;
        int host = 1;
        for (int g = 0; g < NG; g++) host &= which == SEQ_SEQUENTIAL && g == 0 ? 1 : at_host(&f, g);
        if (which != SEQ_SEQUENTIAL) {
            /* set and onload leave nothing half in */
            const cvx_mem_stats s = stats(CVX_DEVICE_EMU);
            all_ok &= host && same_live(&emu0, &s);
        }
        cvx_residency_offload(f.r);
        cvx_mem_stats s = stats(CVX_DEVICE_EMU);
        int ok = same_live(&emu0, &s);
        for (int g = 0; g < NG; g++) ok &= cvx_residency_state(f.r, g) == CVX_GROUP_HOST && at_host(&f, g);
        cvx_error_clear();
        ok &= run_sequence(&f, which, k) == CVX_OK; /* the next call works */
        if (which == SEQ_NONE || which == SEQ_MODEL)
            for (int g = 0; g < NG; g++) ok &= on_device(&f, g);
        cvx_residency_offload(f.r);
        s = stats(CVX_DEVICE_EMU);
        ok &= same_live(&emu0, &s);
        if (!ok || !all_ok) {
            (void)CVX_EXPECT(0, "%s: failure at allocation %d: status %d, message '%s', leak or no recovery",
                             seq_name[which], n, (int)st, cvx_error_message());
            all_ok = 0;
            break;
        }
        if (n > 100) break;
    }
    cvx_mem_fail_at(-1);
    CVX_EXPECT(all_ok && n == want_allocs, "%s (k=%d): failures injected at %d indices, all OOM, no leak, rerun ok",
               seq_name[which], k, n);
    cvx_residency_offload(f.r);
    const cvx_mem_stats s = stats(CVX_DEVICE_EMU);
    CVX_EXPECT(same_live(&emu0, &s), "%s: nothing left", seq_name[which]);
    fake_destroy(&f);
}

int main(void) {
    test_records();
    test_is_resident();
    test_fail_at();
    test_system_refusal();
    test_arena_first_fit();
    test_arena_measure_replay();
    test_queue_order();
    test_queue_growth();
    test_queue_bandwidth();
    test_queue_producers();
    test_queue_shutdown();
    test_residency_layout_cpu();
    test_residency_none_model();
    test_residency_sequential(1);
    test_residency_sequential(2);
    test_residency_sequential(8); /* deeper than the pass: the ring has one slot per block */
    test_residency_missing_release();
    test_residency_after_shutdown();
    test_residency_faults(SEQ_NONE, 0, NG);
    test_residency_faults(SEQ_MODEL, 0, NG);
    test_residency_faults(SEQ_SEQUENTIAL, 1, 1 + 2);
    test_residency_faults(SEQ_SEQUENTIAL, 2, 1 + 3);
    test_residency_faults(SEQ_SEQUENTIAL, 8, 1 + 5);
    cvx_queues_shutdown(); /* no live copy thread at exit */
    const cvx_mem_stats cpu = stats(CVX_DEVICE_CPU), emu = stats(CVX_DEVICE_EMU);
    CVX_EXPECT(cpu.num_active == 0 && cpu.allocated_bytes == 0, "cpu: nothing left live");
    CVX_EXPECT(emu.num_active == 0 && emu.allocated_bytes == 0 && emu.reserved_bytes == 0, "emu: nothing left live");
    return cvx_test_report();
}

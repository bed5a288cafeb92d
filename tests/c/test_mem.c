/* The memory manager (csrc/mem) and the tensor helpers (csrc/core/tensor): exact statistics after sequences of
 * allocations and frees, alignment, limits and OOM, per-device accounting, device names, and concurrent use.
 *
 * The statistics are process-wide, so every check compares against a snapshot taken before the step it tests. */
#define _POSIX_C_SOURCE 200809L
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "../../csrc/core/tensor.h"
#include "../../csrc/mem/mem.h"
#include "cvx_test.h"

#define ALIGN 64

/* What the manager reserves for a request: the size rounded up to 64 (at least 64); the record lives elsewhere. */
static int64_t reserved_for(size_t bytes) { return bytes ? (int64_t)((bytes + ALIGN - 1) / ALIGN) * ALIGN : ALIGN; }

/* Compares every counter of `now` against `base` plus the expected deltas. */
static void expect_delta(const char *what, const cvx_mem_stats *base, const cvx_mem_stats *now, int64_t d_weights,
                         int64_t d_acts, int64_t d_reserved, int64_t d_allocs, int64_t d_frees) {
    CVX_EXPECT(now->allocated_bytes - base->allocated_bytes == d_weights + d_acts, "%s: allocated +%lld, want +%lld",
               what, (long long)(now->allocated_bytes - base->allocated_bytes), (long long)(d_weights + d_acts));
    CVX_EXPECT(now->kind_allocated_bytes[CVX_MEM_WEIGHTS] - base->kind_allocated_bytes[CVX_MEM_WEIGHTS] == d_weights,
               "%s: weights +%lld, want +%lld", what,
               (long long)(now->kind_allocated_bytes[CVX_MEM_WEIGHTS] - base->kind_allocated_bytes[CVX_MEM_WEIGHTS]),
               (long long)d_weights);
    CVX_EXPECT(
        now->kind_allocated_bytes[CVX_MEM_ACTIVATIONS] - base->kind_allocated_bytes[CVX_MEM_ACTIVATIONS] == d_acts,
        "%s: activations +%lld, want +%lld", what,
        (long long)(now->kind_allocated_bytes[CVX_MEM_ACTIVATIONS] - base->kind_allocated_bytes[CVX_MEM_ACTIVATIONS]),
        (long long)d_acts);
    CVX_EXPECT(now->reserved_bytes - base->reserved_bytes == d_reserved, "%s: reserved +%lld, want +%lld", what,
               (long long)(now->reserved_bytes - base->reserved_bytes), (long long)d_reserved);
    CVX_EXPECT(now->num_allocs - base->num_allocs == d_allocs, "%s: num_allocs +%lld, want +%lld", what,
               (long long)(now->num_allocs - base->num_allocs), (long long)d_allocs);
    CVX_EXPECT(now->num_frees - base->num_frees == d_frees, "%s: num_frees +%lld, want +%lld", what,
               (long long)(now->num_frees - base->num_frees), (long long)d_frees);
    CVX_EXPECT(now->num_active - base->num_active == d_allocs - d_frees, "%s: num_active +%lld, want +%lld", what,
               (long long)(now->num_active - base->num_active), (long long)(d_allocs - d_frees));
}

static void test_stats_sequence(void) {
    const cvx_device dev = CVX_DEVICE_CPU;
    cvx_mem_reset_peak(dev);
    const cvx_mem_stats base = stats(dev);
    void *a = NULL, *b = NULL, *c = NULL;

    CVX_EXPECT(cvx_mem_alloc(dev, CVX_MEM_WEIGHTS, 1000, &a) == CVX_OK, "alloc a");
    cvx_mem_stats s = stats(dev);
    expect_delta("after a", &base, &s, 1000, 0, reserved_for(1000), 1, 0);
    CVX_EXPECT(s.peak_allocated_bytes == base.allocated_bytes + 1000, "peak %lld", (long long)s.peak_allocated_bytes);

    CVX_EXPECT(cvx_mem_alloc(dev, CVX_MEM_ACTIVATIONS, 64, &b) == CVX_OK, "alloc b");
    CVX_EXPECT(cvx_mem_alloc(dev, CVX_MEM_ACTIVATIONS, 4097, &c) == CVX_OK, "alloc c");
    s = stats(dev);
    expect_delta("after a,b,c", &base, &s, 1000, 64 + 4097, reserved_for(1000) + reserved_for(64) + reserved_for(4097),
                 3, 0);
    CVX_EXPECT(reserved_for(64) == 64 && reserved_for(4097) == 4160 && reserved_for(0) == 64, "reserved formula");
    const int64_t peak_all = base.allocated_bytes + 1000 + 64 + 4097;
    const int64_t peak_res = base.reserved_bytes + reserved_for(1000) + reserved_for(64) + reserved_for(4097);
    CVX_EXPECT(s.peak_allocated_bytes == peak_all, "peak %lld want %lld", (long long)s.peak_allocated_bytes,
               (long long)peak_all);
    CVX_EXPECT(s.peak_reserved_bytes == peak_res, "peak reserved %lld want %lld", (long long)s.peak_reserved_bytes,
               (long long)peak_res);
    CVX_EXPECT(s.kind_peak_bytes[CVX_MEM_WEIGHTS] == base.kind_allocated_bytes[CVX_MEM_WEIGHTS] + 1000,
               "weights peak %lld", (long long)s.kind_peak_bytes[CVX_MEM_WEIGHTS]);
    CVX_EXPECT(s.kind_peak_bytes[CVX_MEM_ACTIVATIONS] == base.kind_allocated_bytes[CVX_MEM_ACTIVATIONS] + 64 + 4097,
               "activations peak %lld", (long long)s.kind_peak_bytes[CVX_MEM_ACTIVATIONS]);

    /* sizes and alignment */
    CVX_EXPECT(cvx_mem_size(a) == 1000 && cvx_mem_size(b) == 64 && cvx_mem_size(c) == 4097, "sizes %zu %zu %zu",
               cvx_mem_size(a), cvx_mem_size(b), cvx_mem_size(c));
    CVX_EXPECT(cvx_mem_size(NULL) == 0, "size of NULL");
    CVX_EXPECT((uintptr_t)a % ALIGN == 0 && (uintptr_t)b % ALIGN == 0 && (uintptr_t)c % ALIGN == 0,
               "alignment %p %p %p", a, b, c);
    /* the whole requested range is usable (ASan checks the writes) */
    memset(a, 0x5a, 1000);
    memset(c, 0xa5, 4097);

    cvx_mem_free(c);
    s = stats(dev);
    expect_delta("after free c", &base, &s, 1000, 64, reserved_for(1000) + reserved_for(64), 3, 1);
    CVX_EXPECT(s.peak_allocated_bytes == peak_all, "peak stays after free: %lld", (long long)s.peak_allocated_bytes);
    CVX_EXPECT(s.peak_reserved_bytes == peak_res, "peak reserved stays after free");
    CVX_EXPECT(s.kind_peak_bytes[CVX_MEM_ACTIVATIONS] == base.kind_allocated_bytes[CVX_MEM_ACTIVATIONS] + 64 + 4097,
               "activations peak stays after free");

    cvx_mem_reset_peak(dev);
    s = stats(dev);
    CVX_EXPECT(s.peak_allocated_bytes == s.allocated_bytes, "reset_peak: peak %lld allocated %lld",
               (long long)s.peak_allocated_bytes, (long long)s.allocated_bytes);
    CVX_EXPECT(s.peak_reserved_bytes == s.reserved_bytes, "reset_peak: reserved peak");
    for (int k = 0; k < CVX_NUM_MEM_KINDS; k++)
        CVX_EXPECT(s.kind_peak_bytes[k] == s.kind_allocated_bytes[k], "reset_peak kind %d: %lld vs %lld", k,
                   (long long)s.kind_peak_bytes[k], (long long)s.kind_allocated_bytes[k]);

    /* a smaller allocation after the reset raises the peak only to the new high-water mark */
    void *d = NULL;
    CVX_EXPECT(cvx_mem_calloc(dev, CVX_MEM_WEIGHTS, 300, &d) == CVX_OK, "calloc d");
    int zero = 1;
    for (int i = 0; i < 300; i++) zero &= ((unsigned char *)d)[i] == 0;
    CVX_EXPECT(zero, "calloc zero-fills");
    CVX_EXPECT((uintptr_t)d % ALIGN == 0 && cvx_mem_size(d) == 300, "calloc size/alignment");
    s = stats(dev);
    CVX_EXPECT(s.peak_allocated_bytes == base.allocated_bytes + 1000 + 64 + 300, "peak after reset+calloc %lld",
               (long long)s.peak_allocated_bytes);
    CVX_EXPECT(s.kind_peak_bytes[CVX_MEM_WEIGHTS] == base.kind_allocated_bytes[CVX_MEM_WEIGHTS] + 1300,
               "weights peak after reset+calloc %lld", (long long)s.kind_peak_bytes[CVX_MEM_WEIGHTS]);
    CVX_EXPECT(s.kind_peak_bytes[CVX_MEM_ACTIVATIONS] == base.kind_allocated_bytes[CVX_MEM_ACTIVATIONS] + 64,
               "activations peak after reset %lld", (long long)s.kind_peak_bytes[CVX_MEM_ACTIVATIONS]);

    /* zero-byte allocations are real, aligned, accounted and freeable */
    void *z = NULL;
    CVX_EXPECT(cvx_mem_alloc(dev, CVX_MEM_ACTIVATIONS, 0, &z) == CVX_OK && z != NULL, "zero-byte alloc");
    CVX_EXPECT((uintptr_t)z % ALIGN == 0 && cvx_mem_size(z) == 0, "zero-byte alignment/size");
    s = stats(dev);
    expect_delta("after d,z", &base, &s, 1300, 64, reserved_for(1000) + reserved_for(64) + reserved_for(300) + ALIGN, 5,
                 1);

    cvx_mem_free(NULL); /* no-op */
    cvx_mem_stats s2 = stats(dev);
    CVX_EXPECT(memcmp(&s, &s2, sizeof(s)) == 0, "cvx_mem_free(NULL) changes nothing");

    /* an absurd size fails with OOM and allocates nothing (no limit set) */
    void *huge = (void *)&huge;
    cvx_error_clear();
    CVX_EXPECT(cvx_mem_alloc(dev, CVX_MEM_ACTIVATIONS, (size_t)1 << 52, &huge) == CVX_ERR_OOM && huge == NULL,
               "2^52 bytes refused");
    CVX_EXPECT(strstr(cvx_error_message(), "cpu") != NULL, "absurd-size message names the device: %s",
               cvx_error_message());
    cvx_error_clear();
    s2 = stats(dev);
    CVX_EXPECT(s2.allocated_bytes == s.allocated_bytes && s2.reserved_bytes == s.reserved_bytes &&
                   s2.num_allocs == s.num_allocs && s2.num_active == s.num_active,
               "an absurd size allocates nothing");

    cvx_mem_free(a);
    cvx_mem_free(b);
    cvx_mem_free(d);
    cvx_mem_free(z);
    s = stats(dev);
    expect_delta("all freed", &base, &s, 0, 0, 0, 5, 5);
    CVX_EXPECT(s.num_ooms == base.num_ooms + 1, "the absurd request is counted as a refused allocation");
}

static void test_limit(cvx_device dev) {
    const char *name = cvx_device_name(dev);
    const cvx_mem_stats base = stats(dev);
    void *a = NULL, *b = NULL, *c = NULL;
    const int64_t limit = base.allocated_bytes + 10000;
    cvx_mem_set_limit(dev, limit);
    CVX_EXPECT(stats(dev).limit_bytes == limit, "%s: limit_bytes %lld", name, (long long)stats(dev).limit_bytes);

    CVX_EXPECT(cvx_mem_alloc(dev, CVX_MEM_WEIGHTS, 6000, &a) == CVX_OK, "%s: 6000 under the limit", name);
    /* exactly up to the limit is allowed */
    CVX_EXPECT(cvx_mem_alloc(dev, CVX_MEM_ACTIVATIONS, 4000, &b) == CVX_OK, "%s: up to the limit exactly", name);
    cvx_mem_stats before = stats(dev);

    cvx_error_clear();
    c = (void *)&c; /* must be overwritten with NULL */
    cvx_status st = cvx_mem_alloc(dev, CVX_MEM_ACTIVATIONS, 1, &c);
    CVX_EXPECT(st == CVX_ERR_OOM, "%s: one byte past the limit gives %d", name, (int)st);
    CVX_EXPECT(c == NULL, "%s: *out is NULL after OOM", name);
    cvx_mem_stats s = stats(dev);
    CVX_EXPECT(s.num_ooms == before.num_ooms + 1, "%s: num_ooms %lld", name, (long long)s.num_ooms);
    before.num_ooms = s.num_ooms;
    CVX_EXPECT(memcmp(&before, &s, sizeof(s)) == 0, "%s: an OOM changes no statistic but num_ooms", name);
    const char *msg = cvx_error_message();
    char limit_str[32];
    snprintf(limit_str, sizeof(limit_str), "%lld", (long long)limit);
    CVX_EXPECT(strstr(msg, name) != NULL && strstr(msg, limit_str) != NULL, "%s: message names device and limit %s: %s",
               name, limit_str, msg);
    printf("  OOM message (%s): %s\n", name, msg);
    cvx_error_clear();
    CVX_EXPECT(strcmp(cvx_error_message(), "unknown error") == 0, "cleared message: %s", cvx_error_message());

    /* calloc fails the same way */
    CVX_EXPECT(cvx_mem_calloc(dev, CVX_MEM_WEIGHTS, 100, &c) == CVX_ERR_OOM && c == NULL, "%s: calloc OOM", name);
    CVX_EXPECT(stats(dev).num_ooms == before.num_ooms + 1, "%s: calloc OOM counted", name);
    CVX_EXPECT(stats(dev).allocated_bytes == before.allocated_bytes, "%s: calloc OOM allocates nothing", name);
    cvx_error_clear();

    /* freeing makes room again */
    cvx_mem_free(b);
    CVX_EXPECT(cvx_mem_alloc(dev, CVX_MEM_ACTIVATIONS, 3000, &b) == CVX_OK, "%s: room after a free", name);

    /* a limit below what is allocated is accepted, later allocations fail */
    cvx_mem_set_limit(dev, base.allocated_bytes + 100);
    CVX_EXPECT(stats(dev).limit_bytes == base.allocated_bytes + 100, "%s: low limit accepted", name);
    CVX_EXPECT(cvx_mem_alloc(dev, CVX_MEM_ACTIVATIONS, 1, &c) == CVX_ERR_OOM, "%s: alloc under a low limit", name);
    cvx_error_clear();

    /* removing the limit: 0 and negative both remove it */
    cvx_mem_set_limit(dev, 0);
    CVX_EXPECT(stats(dev).limit_bytes == 0, "%s: limit removed", name);
    CVX_EXPECT(cvx_mem_alloc(dev, CVX_MEM_ACTIVATIONS, 1 << 20, &c) == CVX_OK, "%s: 1 MiB without limit", name);
    cvx_mem_free(c);
    cvx_mem_set_limit(dev, 5);
    cvx_mem_set_limit(dev, -1);
    CVX_EXPECT(stats(dev).limit_bytes == 0, "%s: negative limit removes it", name);
    CVX_EXPECT(cvx_mem_alloc(dev, CVX_MEM_ACTIVATIONS, 1 << 20, &c) == CVX_OK, "%s: 1 MiB after negative", name);
    cvx_mem_free(c);

    cvx_mem_free(a);
    cvx_mem_free(b);
    s = stats(dev);
    CVX_EXPECT(s.allocated_bytes == base.allocated_bytes && s.reserved_bytes == base.reserved_bytes &&
                   s.num_active == base.num_active,
               "%s: back to the start", name);
    CVX_EXPECT(s.num_ooms == base.num_ooms + 3, "%s: %lld OOMs in all", name, (long long)(s.num_ooms - base.num_ooms));
}

static void test_devices(void) {
    /* emu is accounted apart from cpu */
    const cvx_mem_stats cpu0 = stats(CVX_DEVICE_CPU), emu0 = stats(CVX_DEVICE_EMU);
    void *e = NULL, *p = NULL;
    CVX_EXPECT(cvx_mem_alloc(CVX_DEVICE_EMU, CVX_MEM_WEIGHTS, 12345, &e) == CVX_OK, "emu alloc");
    cvx_mem_stats cpu1 = stats(CVX_DEVICE_CPU), emu1 = stats(CVX_DEVICE_EMU);
    CVX_EXPECT(memcmp(&cpu0, &cpu1, sizeof(cpu0)) == 0, "an emu allocation leaves the cpu statistics alone");
    expect_delta("emu alloc", &emu0, &emu1, 12345, 0, reserved_for(12345), 1, 0);
    CVX_EXPECT((uintptr_t)e % ALIGN == 0 && cvx_mem_size(e) == 12345, "emu alignment/size");

    CVX_EXPECT(cvx_mem_alloc(CVX_DEVICE_CPU, CVX_MEM_ACTIVATIONS, 777, &p) == CVX_OK, "cpu alloc");
    emu1 = stats(CVX_DEVICE_EMU);
    cpu1 = stats(CVX_DEVICE_CPU);
    expect_delta("cpu alloc", &cpu0, &cpu1, 0, 777, reserved_for(777), 1, 0);
    expect_delta("emu untouched by cpu alloc", &emu0, &emu1, 12345, 0, reserved_for(12345), 1, 0);

    /* a limit on emu does not constrain cpu, and vice versa */
    cvx_mem_set_limit(CVX_DEVICE_EMU, emu1.allocated_bytes + 10);
    void *q = NULL;
    CVX_EXPECT(cvx_mem_alloc(CVX_DEVICE_CPU, CVX_MEM_ACTIVATIONS, 100000, &q) == CVX_OK, "cpu ignores emu limit");
    cvx_mem_free(q);
    cvx_error_clear();
    CVX_EXPECT(cvx_mem_alloc(CVX_DEVICE_EMU, CVX_MEM_ACTIVATIONS, 100, &q) == CVX_ERR_OOM, "emu limit applies");
    CVX_EXPECT(stats(CVX_DEVICE_CPU).num_ooms == cpu0.num_ooms, "the emu OOM is not counted on cpu");
    CVX_EXPECT(strstr(cvx_error_message(), "emu") != NULL, "emu OOM message names emu: %s", cvx_error_message());
    cvx_error_clear();
    cvx_mem_set_limit(CVX_DEVICE_EMU, 0);

    /* mem_copy between the two devices' memory */
    memset(e, 0x3c, 12345);
    void *back = NULL;
    CVX_EXPECT(cvx_mem_alloc(CVX_DEVICE_CPU, CVX_MEM_ACTIVATIONS, 12345, &back) == CVX_OK, "cpu alloc for copy");
    CVX_EXPECT(cvx_mem_copy(back, e, 12345) == CVX_OK, "copy emu -> cpu");
    int same = 1;
    for (int i = 0; i < 12345; i++) same &= ((unsigned char *)back)[i] == 0x3c;
    CVX_EXPECT(same, "copied bytes");
    cvx_mem_free(back);

    /* the freed block returns to the device it came from */
    cvx_mem_free(e);
    cvx_mem_free(p);
    cpu1 = stats(CVX_DEVICE_CPU);
    emu1 = stats(CVX_DEVICE_EMU);
    CVX_EXPECT(cpu1.allocated_bytes == cpu0.allocated_bytes && cpu1.reserved_bytes == cpu0.reserved_bytes,
               "cpu back to start");
    CVX_EXPECT(emu1.allocated_bytes == emu0.allocated_bytes && emu1.reserved_bytes == emu0.reserved_bytes &&
                   emu1.num_frees == emu0.num_frees + 1 && emu1.num_active == emu0.num_active,
               "emu back to start");

#ifndef CVX_WITH_CUDA
    {
        void *g = (void *)&g;
        const cvx_mem_stats cu0 = stats(CVX_DEVICE_CUDA);
        cvx_error_clear();
        CVX_EXPECT(cvx_mem_alloc(CVX_DEVICE_CUDA, CVX_MEM_WEIGHTS, 16, &g) == CVX_ERR_INVALID && g == NULL,
                   "cuda alloc refused in a CPU build");
        cvx_mem_stats cu1 = stats(CVX_DEVICE_CUDA);
        CVX_EXPECT(memcmp(&cu0, &cu1, sizeof(cu0)) == 0, "refused cuda alloc changes no statistic");
        cvx_error_clear();
    }
#endif
}

static void test_device_names(void) {
    struct {
        const char *name;
        cvx_device dev;
    } good[] = {
        {"cpu", CVX_DEVICE_CPU}, {"emu", CVX_DEVICE_EMU}, {"cuda", CVX_DEVICE_CUDA}, {"cuda:0", CVX_DEVICE_CUDA}};
    for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
        cvx_device d = (cvx_device)-1;
        CVX_EXPECT(cvx_device_parse(good[i].name, &d) == CVX_OK && d == good[i].dev, "parse '%s' -> %d", good[i].name,
                   (int)d);
    }
    const char *bad[] = {"", "CPU", "gpu", "cuda:1", "cuda:", "cpu ", " emu", "cuda0", "emu:0", "cud"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        cvx_device d = CVX_DEVICE_EMU;
        cvx_error_clear();
        cvx_status st = cvx_device_parse(bad[i], &d);
        CVX_EXPECT(st == CVX_ERR_INVALID, "parse '%s' gives %d", bad[i], (int)st);
        CVX_EXPECT(d == CVX_DEVICE_EMU, "parse '%s' leaves *out alone", bad[i]);
        CVX_EXPECT(strstr(cvx_error_message(), "unknown device") != NULL, "message: %s", cvx_error_message());
    }
    cvx_error_clear();
    CVX_EXPECT(strcmp(cvx_device_name(CVX_DEVICE_CPU), "cpu") == 0 &&
                   strcmp(cvx_device_name(CVX_DEVICE_EMU), "emu") == 0 &&
                   strcmp(cvx_device_name(CVX_DEVICE_CUDA), "cuda") == 0,
               "device names");
}

/* ---- concurrency ---- */

#define NTHREADS 8
#define ITERS 2000
#define KEEP 16

typedef struct thread_arg {
    int id;
    cvx_device dev;
    int64_t allocs, frees;
    void *kept[KEEP]; /* what this thread still holds at the end */
    int nkept;
    int errors;
} thread_arg;

static void *churn(void *p) {
    thread_arg *a = p;
    void *live[KEEP] = {0};
    uint32_t rng = 0x9e3779b9u * (uint32_t)(a->id + 1);
    for (int i = 0; i < ITERS; i++) {
        rng = rng * 1664525u + 1013904223u;
        int slot = (int)((rng >> 8) % KEEP);
        if (live[slot]) {
            cvx_mem_free(live[slot]);
            live[slot] = NULL;
            a->frees++;
        } else {
            size_t bytes = (rng >> 16) % 5000;
            cvx_mem_kind kind = (rng & 1) ? CVX_MEM_WEIGHTS : CVX_MEM_ACTIVATIONS;
            if (cvx_mem_alloc(a->dev, kind, bytes, &live[slot]) != CVX_OK || (uintptr_t)live[slot] % ALIGN) {
                a->errors++;
                continue;
            }
            memset(live[slot], a->id, bytes); /* ASan would see overlapping blocks between threads */
            a->allocs++;
        }
    }
    for (int s = 0; s < KEEP; s++) {
        if (live[s]) a->kept[a->nkept++] = live[s];
    }
    return NULL;
}

static void test_threads(cvx_device dev) {
    const cvx_mem_stats base = stats(dev);
    pthread_t th[NTHREADS];
    thread_arg args[NTHREADS];
    memset(args, 0, sizeof(args));
    for (int i = 0; i < NTHREADS; i++) {
        args[i].id = i;
        args[i].dev = dev;
        CVX_EXPECT(pthread_create(&th[i], NULL, churn, &args[i]) == 0, "pthread_create");
    }
    int64_t allocs = 0, frees = 0, kept_bytes = 0, kept_reserved = 0, kept_n = 0;
    int errors = 0;
    for (int i = 0; i < NTHREADS; i++) {
        pthread_join(th[i], NULL);
        allocs += args[i].allocs;
        frees += args[i].frees;
        errors += args[i].errors;
        for (int k = 0; k < args[i].nkept; k++) {
            kept_bytes += (int64_t)cvx_mem_size(args[i].kept[k]);
            kept_reserved += reserved_for(cvx_mem_size(args[i].kept[k]));
            kept_n++;
        }
    }
    CVX_EXPECT(errors == 0, "%d allocation errors in threads", errors);
    cvx_mem_stats s = stats(dev);
    CVX_EXPECT(s.num_allocs - base.num_allocs == allocs, "%s threads: num_allocs +%lld want +%lld",
               cvx_device_name(dev), (long long)(s.num_allocs - base.num_allocs), (long long)allocs);
    CVX_EXPECT(s.num_frees - base.num_frees == frees, "threads: num_frees +%lld want +%lld",
               (long long)(s.num_frees - base.num_frees), (long long)frees);
    CVX_EXPECT(s.num_active - base.num_active == kept_n, "threads: num_active +%lld want +%lld",
               (long long)(s.num_active - base.num_active), (long long)kept_n);
    CVX_EXPECT(s.allocated_bytes - base.allocated_bytes == kept_bytes, "threads: allocated +%lld want +%lld",
               (long long)(s.allocated_bytes - base.allocated_bytes), (long long)kept_bytes);
    CVX_EXPECT(s.reserved_bytes - base.reserved_bytes == kept_reserved, "threads: reserved +%lld want +%lld",
               (long long)(s.reserved_bytes - base.reserved_bytes), (long long)kept_reserved);
    CVX_EXPECT(s.kind_allocated_bytes[0] + s.kind_allocated_bytes[1] == s.allocated_bytes,
               "threads: kinds sum to the total");
    CVX_EXPECT(s.peak_allocated_bytes >= s.allocated_bytes, "threads: peak >= allocated");
    printf("  %d threads on %s: %lld allocs, %lld frees, %lld kept (%lld bytes)\n", NTHREADS, cvx_device_name(dev),
           (long long)allocs, (long long)frees, (long long)kept_n, (long long)kept_bytes);
    for (int i = 0; i < NTHREADS; i++)
        for (int k = 0; k < args[i].nkept; k++) cvx_mem_free(args[i].kept[k]);
    s = stats(dev);
    CVX_EXPECT(s.allocated_bytes == base.allocated_bytes && s.reserved_bytes == base.reserved_bytes &&
                   s.num_active == base.num_active && s.kind_allocated_bytes[0] == base.kind_allocated_bytes[0] &&
                   s.kind_allocated_bytes[1] == base.kind_allocated_bytes[1],
               "threads: everything freed");
}

/* Several threads race for a limited budget: the successful allocations never exceed the limit together, and the
 * refusals are counted exactly. */
#define RACE_SIZE 1000
#define RACE_TRIES 64

typedef struct race_arg {
    cvx_device dev;
    void *got[RACE_TRIES];
    int ok, oom;
} race_arg;

static void *race(void *p) {
    race_arg *a = p;
    for (int i = 0; i < RACE_TRIES; i++) {
        void *q = NULL;
        cvx_status st = cvx_mem_alloc(a->dev, CVX_MEM_ACTIVATIONS, RACE_SIZE, &q);
        if (st == CVX_OK)
            a->got[a->ok++] = q;
        else if (st == CVX_ERR_OOM)
            a->oom++;
        cvx_error_clear(); /* thread-local */
    }
    return NULL;
}

static void test_limit_race(cvx_device dev) {
    const cvx_mem_stats base = stats(dev);
    const int fit = 100; /* of NTHREADS * RACE_TRIES = 512 tries */
    cvx_mem_set_limit(dev, base.allocated_bytes + (int64_t)fit * RACE_SIZE + RACE_SIZE / 2);
    cvx_mem_reset_peak(dev);
    pthread_t th[NTHREADS];
    race_arg args[NTHREADS];
    memset(args, 0, sizeof(args));
    for (int i = 0; i < NTHREADS; i++) {
        args[i].dev = dev;
        pthread_create(&th[i], NULL, race, &args[i]);
    }
    int ok = 0, oom = 0;
    for (int i = 0; i < NTHREADS; i++) {
        pthread_join(th[i], NULL);
        ok += args[i].ok;
        oom += args[i].oom;
    }
    cvx_mem_stats s = stats(dev);
    CVX_EXPECT(ok == fit, "limit race: %d allocations succeeded, want %d", ok, fit);
    CVX_EXPECT(ok + oom == NTHREADS * RACE_TRIES, "limit race: every try is OK or OOM (%d + %d)", ok, oom);
    CVX_EXPECT(s.num_ooms - base.num_ooms == oom, "limit race: num_ooms +%lld want %d",
               (long long)(s.num_ooms - base.num_ooms), oom);
    CVX_EXPECT(s.peak_allocated_bytes <= s.limit_bytes, "limit race: peak %lld within limit %lld",
               (long long)s.peak_allocated_bytes, (long long)s.limit_bytes);
    CVX_EXPECT(s.allocated_bytes == base.allocated_bytes + (int64_t)fit * RACE_SIZE, "limit race: allocated");
    cvx_mem_set_limit(dev, 0);
    for (int i = 0; i < NTHREADS; i++)
        for (int k = 0; k < args[i].ok; k++) cvx_mem_free(args[i].got[k]);
    s = stats(dev);
    CVX_EXPECT(s.allocated_bytes == base.allocated_bytes && s.num_active == base.num_active, "limit race: freed");
}

/* ---- tensors ---- */

static void test_tensors(void) {
    const cvx_mem_stats cpu0 = stats(CVX_DEVICE_CPU), emu0 = stats(CVX_DEVICE_EMU);
    cvx_tensor t;
    CVX_EXPECT(cvx_tensor_alloc5(&t, 2, 3, 4, 5, 6) == CVX_OK, "alloc5");
    CVX_EXPECT(t.ndim == 5 && t.dtype == CVX_F32 && t.device == CVX_DEVICE_CPU && t.data != NULL, "alloc5 fields");
    CVX_EXPECT(t.shape[0] == 2 && t.shape[1] == 3 && t.shape[2] == 4 && t.shape[3] == 5 && t.shape[4] == 6,
               "alloc5 shape");
    CVX_EXPECT(cvx_tensor_numel(&t) == 720 && cvx_tensor_nbytes(&t) == 2880, "numel %lld nbytes %zu",
               (long long)cvx_tensor_numel(&t), cvx_tensor_nbytes(&t));
    CVX_EXPECT(cvx_mem_size(t.data) == 2880 && (uintptr_t)t.data % ALIGN == 0, "alloc5 block");
    cvx_mem_stats s = stats(CVX_DEVICE_CPU);
    expect_delta("alloc5", &cpu0, &s, 0, 2880, reserved_for(2880), 1, 0);
    memset(t.data, 0, cvx_tensor_nbytes(&t));

    /* an f16 weight tensor on emu */
    cvx_tensor w;
    const int64_t wshape[3] = {7, 3, 3};
    CVX_EXPECT(cvx_tensor_alloc(&w, CVX_DEVICE_EMU, CVX_MEM_WEIGHTS, CVX_F16, 3, wshape) == CVX_OK, "alloc f16");
    CVX_EXPECT(w.device == CVX_DEVICE_EMU && w.dtype == CVX_F16 && w.ndim == 3, "f16 fields");
    CVX_EXPECT(cvx_tensor_numel(&w) == 63 && cvx_tensor_nbytes(&w) == 126, "f16 numel %lld nbytes %zu",
               (long long)cvx_tensor_numel(&w), cvx_tensor_nbytes(&w));
    cvx_mem_stats e = stats(CVX_DEVICE_EMU);
    expect_delta("alloc f16 emu", &emu0, &e, 126, 0, reserved_for(126), 1, 0);

    /* rank 0: one element; a zero dimension: no elements */
    cvx_tensor r0, z;
    CVX_EXPECT(cvx_tensor_alloc(&r0, CVX_DEVICE_CPU, CVX_MEM_ACTIVATIONS, CVX_BF16, 0, NULL) == CVX_OK, "rank 0");
    CVX_EXPECT(cvx_tensor_numel(&r0) == 1 && cvx_tensor_nbytes(&r0) == 2, "rank 0 numel/nbytes");
    CVX_EXPECT(cvx_tensor_alloc5(&z, 1, 4, 0, 8, 8) == CVX_OK, "zero-size tensor");
    CVX_EXPECT(cvx_tensor_numel(&z) == 0 && cvx_tensor_nbytes(&z) == 0, "zero-size numel/nbytes");
    cvx_tensor_release(&r0);
    cvx_tensor_release(&z);

    /* invalid shapes fail, leave the struct zeroed and allocate nothing */
    const cvx_mem_stats cpu1 = stats(CVX_DEVICE_CPU);
    cvx_tensor bad;
    memset(&bad, 0xff, sizeof(bad));
    const int64_t neg[2] = {3, -1};
    cvx_error_clear();
    CVX_EXPECT(cvx_tensor_alloc(&bad, CVX_DEVICE_CPU, CVX_MEM_ACTIVATIONS, CVX_F32, 2, neg) == CVX_ERR_INVALID,
               "negative dimension");
    cvx_tensor zero;
    memset(&zero, 0, sizeof(zero));
    CVX_EXPECT(memcmp(&bad, &zero, sizeof(bad)) == 0, "failed alloc zeroes the tensor");
    cvx_error_clear();
    const int64_t six[6] = {1, 1, 1, 1, 1, 1};
    memset(&bad, 0xff, sizeof(bad));
    CVX_EXPECT(cvx_tensor_alloc(&bad, CVX_DEVICE_CPU, CVX_MEM_ACTIVATIONS, CVX_F32, 6, six) == CVX_ERR_INVALID,
               "rank 6");
    CVX_EXPECT(memcmp(&bad, &zero, sizeof(bad)) == 0, "failed rank-6 alloc zeroes the tensor");
    cvx_error_clear();
    /* OOM through a limit */
    cvx_mem_set_limit(CVX_DEVICE_CPU, cpu1.allocated_bytes + 100);
    memset(&bad, 0xff, sizeof(bad));
    CVX_EXPECT(cvx_tensor_alloc5(&bad, 1, 1, 1, 10, 10) == CVX_ERR_OOM, "tensor OOM");
    CVX_EXPECT(memcmp(&bad, &zero, sizeof(bad)) == 0, "OOM alloc zeroes the tensor");
    cvx_mem_set_limit(CVX_DEVICE_CPU, 0);
    cvx_error_clear();
    cvx_mem_stats s1 = stats(CVX_DEVICE_CPU);
    CVX_EXPECT(s1.allocated_bytes == cpu1.allocated_bytes && s1.num_allocs == cpu1.num_allocs,
               "failed tensor allocs allocate nothing");

    /* move: dst's old data is released, src emptied */
    cvx_tensor m;
    CVX_EXPECT(cvx_tensor_alloc5(&m, 1, 1, 1, 4, 4) == CVX_OK, "alloc m");
    void *tdata = t.data;
    cvx_tensor_move(&m, &t);
    CVX_EXPECT(m.data == tdata && m.shape[0] == 2 && m.shape[4] == 6 && m.ndim == 5, "move carries t into m");
    CVX_EXPECT(memcmp(&t, &zero, sizeof(t)) == 0, "move empties src");
    s = stats(CVX_DEVICE_CPU);
    expect_delta("after move", &cpu0, &s, 0, 2880, reserved_for(2880), 4, 3); /* t, r0, z, m; r0, z, m */
    cvx_tensor_move(&m, &m);                                                  /* self-move: nothing */
    CVX_EXPECT(m.data == tdata, "self-move keeps the data");
    cvx_tensor empty;
    memset(&empty, 0, sizeof(empty));
    cvx_tensor_move(&empty, &m); /* into an empty tensor */
    CVX_EXPECT(empty.data == tdata && m.data == NULL, "move into an empty tensor");

    cvx_tensor_release(&empty);
    CVX_EXPECT(memcmp(&empty, &zero, sizeof(empty)) == 0, "release zeroes");
    cvx_tensor_release(&empty); /* twice: safe */
    cvx_tensor_release(&w);
    s = stats(CVX_DEVICE_CPU);
    e = stats(CVX_DEVICE_EMU);
    CVX_EXPECT(s.allocated_bytes == cpu0.allocated_bytes && s.num_active == cpu0.num_active &&
                   s.reserved_bytes == cpu0.reserved_bytes,
               "tensors: cpu back to start");
    CVX_EXPECT(e.allocated_bytes == emu0.allocated_bytes && e.num_active == emu0.num_active, "tensors: emu back");
}

int main(void) {
    test_stats_sequence();
    test_limit(CVX_DEVICE_CPU);
    test_limit(CVX_DEVICE_EMU);
    test_devices();
    test_device_names();
    test_threads(CVX_DEVICE_CPU);
    test_threads(CVX_DEVICE_EMU);
    test_limit_race(CVX_DEVICE_CPU);
    test_limit_race(CVX_DEVICE_EMU);
    test_tensors();
    const cvx_mem_stats cpu = stats(CVX_DEVICE_CPU), emu = stats(CVX_DEVICE_EMU);
    CVX_EXPECT(cpu.num_active == 0 && cpu.allocated_bytes == 0 && cpu.reserved_bytes == 0, "cpu: nothing left live");
    CVX_EXPECT(emu.num_active == 0 && emu.allocated_bytes == 0 && emu.reserved_bytes == 0, "emu: nothing left live");
    return cvx_test_report();
}

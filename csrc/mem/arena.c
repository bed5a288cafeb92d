#include "arena.h"

#include <stdlib.h>
#include <string.h>

#define ARENA_ALIGN 64
/* A measuring arena's addresses start here: far from anything mapped, so a model that touches activation bytes in a
 * measuring pass faults at once instead of reading garbage. */
#define MEASURE_BASE ((uintptr_t)1 << 40)
#define MEASURE_EXTENT ((size_t)1 << 46)

/* The region as a list of blocks sorted by offset, covering [0, extent) without gaps. */
typedef struct arena_block {
    size_t off, size;
    int used;
} arena_block;

struct cvx_arena {
    cvx_device dev;
    int measuring;
    char *base;    /* the region (a measuring arena: an unbacked address) */
    size_t extent; /* bytes the blocks cover */
    arena_block *blocks;
    int count, capacity;
    size_t peak, in_use;
};

static cvx_status blocks_reset(cvx_arena *a, size_t extent) {
    if (a->capacity < 1) {
        a->blocks = malloc(16 * sizeof(arena_block));
        if (!a->blocks) return CVX_FAIL(CVX_ERR_OOM, "out of host memory for the arena's records");
        a->capacity = 16;
    }
    a->extent = extent;
    a->count = extent ? 1 : 0;
    a->blocks[0] = (arena_block){0, extent, 0};
    a->in_use = 0;
    return CVX_OK;
}

cvx_status cvx_arena_create(cvx_device dev, int measuring, cvx_arena **out) {
    *out = NULL;
    cvx_arena *a = calloc(1, sizeof(*a));
    if (!a) return CVX_FAIL(CVX_ERR_OOM, "out of host memory for an arena");
    a->dev = dev;
    a->measuring = measuring != 0;
    cvx_status st = blocks_reset(a, a->measuring ? MEASURE_EXTENT : 0);
    if (st != CVX_OK) {
        free(a);
        return st;
    }
    if (a->measuring) a->base = (char *)MEASURE_BASE;
    *out = a;
    return CVX_OK;
}

void cvx_arena_destroy(cvx_arena *a) {
    if (!a) return;
    cvx_arena_trim(a);
    free(a->blocks);
    free(a);
}

void cvx_arena_trim(cvx_arena *a) {
    if (a->measuring) return;
    cvx_mem_free(a->base);
    a->base = NULL;
    blocks_reset(a, 0);
}

cvx_status cvx_arena_reserve(cvx_arena *a, size_t bytes) {
    if (a->measuring) return CVX_OK;
    if (a->in_use) return CVX_FAIL(CVX_ERR_INTERNAL, "arena resized while %zu bytes are in use", a->in_use);
    bytes = (bytes + ARENA_ALIGN - 1) / ARENA_ALIGN * ARENA_ALIGN;
    if (a->base && a->extent == bytes) return CVX_OK;
    cvx_arena_trim(a);
    void *p = NULL;
    CVX_CHECK(cvx_mem_alloc(a->dev, CVX_MEM_ACTIVATIONS, bytes, &p));
    a->base = p;
    return blocks_reset(a, bytes);
}

/* Splits block i so that it is `size` bytes long, the rest becoming a free block after it. */
static cvx_status split(cvx_arena *a, int i, size_t size) {
    if (a->blocks[i].size == size) return CVX_OK;
    if (a->count == a->capacity) {
        arena_block *b = realloc(a->blocks, (size_t)a->capacity * 2 * sizeof(*b));
        if (!b) return CVX_FAIL(CVX_ERR_OOM, "out of host memory for the arena's records");
        a->blocks = b;
        a->capacity *= 2;
    }
    memmove(&a->blocks[i + 2], &a->blocks[i + 1], (size_t)(a->count - i - 1) * sizeof(arena_block));
    a->blocks[i + 1] = (arena_block){a->blocks[i].off + size, a->blocks[i].size - size, 0};
    a->blocks[i].size = size;
    a->count++;
    return CVX_OK;
}

cvx_status cvx_arena_alloc(cvx_arena *a, size_t bytes, void **out) {
    *out = NULL;
    if (bytes > MEASURE_EXTENT)
        return CVX_FAIL(CVX_ERR_OOM, "%s: an activation of %zu bytes is absurd", cvx_device_name(a->dev), bytes);
    /* zero-byte requests still get a block of their own, so every live pointer is distinct */
    const size_t need = bytes ? (bytes + ARENA_ALIGN - 1) / ARENA_ALIGN * ARENA_ALIGN : ARENA_ALIGN;
    for (int i = 0; i < a->count; i++) {
        arena_block *b = &a->blocks[i];
        if (b->used || b->size < need) continue;
        CVX_CHECK(split(a, i, need));
        b = &a->blocks[i];
        b->used = 1;
        a->in_use += need;
        if (b->off + need > a->peak) a->peak = b->off + need;
        *out = a->base + b->off;
        return CVX_OK;
    }
    return CVX_FAIL(CVX_ERR_OOM,
                    "%s: the activation arena of %zu bytes has no room for %zu more (%zu in use): it was sized for a "
                    "smaller input",
                    cvx_device_name(a->dev), a->extent, bytes, a->in_use);
}

void cvx_arena_free(cvx_arena *a, void *ptr) {
    if (!ptr || !a->count) return;
    const char *p = ptr;
    if (p < a->base || p >= a->base + a->extent) return; /* not from this arena: refuse to corrupt it */
    const size_t off = (size_t)(p - a->base);
    int lo = 0, hi = a->count - 1;
    while (lo < hi) { /* the last block starting at or before off */
        const int mid = (lo + hi + 1) / 2;
        if (a->blocks[mid].off <= off)
            lo = mid;
        else
            hi = mid - 1;
    }
    arena_block *b = &a->blocks[lo];
    if (b->off != off || !b->used) return;
    b->used = 0;
    a->in_use -= b->size;
    /* merge with the free neighbours, so that first fit sees whole holes */
    if (lo + 1 < a->count && !a->blocks[lo + 1].used) {
        b->size += a->blocks[lo + 1].size;
        memmove(&a->blocks[lo + 1], &a->blocks[lo + 2], (size_t)(a->count - lo - 2) * sizeof(arena_block));
        a->count--;
    }
    if (lo > 0 && !a->blocks[lo - 1].used) {
        a->blocks[lo - 1].size += b->size;
        memmove(&a->blocks[lo], &a->blocks[lo + 1], (size_t)(a->count - lo - 1) * sizeof(arena_block));
        a->count--;
    }
}

size_t cvx_arena_peak(const cvx_arena *a) { return a->peak; }
size_t cvx_arena_size(const cvx_arena *a) { return a->measuring ? 0 : a->extent; }
size_t cvx_arena_in_use(const cvx_arena *a) { return a->in_use; }
int cvx_arena_measuring(const cvx_arena *a) { return a->measuring; }
cvx_device cvx_arena_device(const cvx_arena *a) { return a->dev; }

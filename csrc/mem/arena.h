/* The activation arena: one region of device memory, sized before a forward starts, from which every activation
 * and every op's scratch is sub-allocated (first fit, neighbours merged on free). Its bookkeeping lives in host
 * memory, beside the data, so the same arena works over device memory.
 *
 * Sizing: a measuring arena hands out addresses that are never backed (touching one faults) and only records the
 * highest end offset its first-fit placement reached. A forward run once with the measuring backend and a
 * measuring arena, then again with the real backend and an arena reserved at exactly that peak, makes the same
 * calls in the same order, so the placement is the same and the real run cannot run out: nothing is allocated on
 * the device inside the forward, nor between denoising steps of the same shape. */
#ifndef CVX_ARENA_H
#define CVX_ARENA_H

#include <stddef.h>
#include <stdint.h>

#include "../core/status.h"
#include "mem.h"

typedef struct cvx_arena cvx_arena;

/* measuring 1: no memory, unbounded; 0: a real arena on `dev` that holds nothing until cvx_arena_reserve. */
cvx_status cvx_arena_create(cvx_device dev, int measuring, cvx_arena **out);
void cvx_arena_destroy(cvx_arena *a);
/* Makes the region exactly `bytes` (reallocating only when the size differs); everything handed out must have been
 * freed. Fails with CVX_ERR_OOM (nothing changed but the old region freed) past the device's limit. */
cvx_status cvx_arena_reserve(cvx_arena *a, size_t bytes);
/* Frees the region (the component left the device); the next reserve allocates again. */
void cvx_arena_trim(cvx_arena *a);
/* 64-byte aligned, bytes may be 0. CVX_ERR_OOM when the region has no room: a measuring pass under-sized it. */
cvx_status cvx_arena_alloc(cvx_arena *a, size_t bytes, void **out);
void cvx_arena_free(cvx_arena *a, void *ptr);
/* Highest end offset any allocation reached since create: the size a region needs. */
size_t cvx_arena_peak(const cvx_arena *a);
size_t cvx_arena_size(const cvx_arena *a); /* the reserved region, 0 when none */
size_t cvx_arena_in_use(const cvx_arena *a);
int cvx_arena_measuring(const cvx_arena *a);
cvx_device cvx_arena_device(const cvx_arena *a);

#endif

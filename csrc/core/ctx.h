/* The context of one forward pass: which backend computes, on which device, where its activations come from,
 * which weight groups it may read, and whether the caller asked it to stop.
 *
 * Every op and every model forward takes a cvx_ctx. Models never touch activation or weight bytes themselves: all
 * work goes through ctx->be (ops/backend.h), so the same forward runs on the CPU, on the emulated accelerator, on
 * CUDA, or as a measuring pass that does no work and only sizes the activation arena. */
#ifndef CVX_CTX_H
#define CVX_CTX_H

#include <stddef.h>
#include <stdint.h>

#include "../mem/mem.h"
#include "dtype.h"
#include "status.h"
#include "tensor.h"

typedef struct cvx_backend cvx_backend; /* ops/backend.h: the op table of one device */
/* The op table that does no work (ops/backend.h defines it). */
const cvx_backend *cvx_backend_measure(void);
typedef struct cvx_arena cvx_arena;         /* mem/arena.h: the activation arena */
typedef struct cvx_residency cvx_residency; /* mem/residency.h: where a component's weight groups are */

typedef struct cvx_ctx {
    const cvx_backend *be; /* the ops; cvx_backend_for(device) or cvx_backend_measure */
    cvx_device device;     /* where activations and resident weights live */
    /* The compute dtype (torch_dtype): CVX_F32, or CVX_F16 / CVX_BF16 for the CUDA ops' tensor-core GEMMs and
     * attention (f32 accumulation). The CPU ops compute in f32 whatever it says. Zero-initialised: CVX_F32. */
    cvx_dtype compute;
    cvx_arena *arena;   /* every activation of the forward, op scratch included */
    cvx_residency *res; /* the component's weight groups; NULL: every weight is readable where it is */
    int measuring;      /* 1: a measuring pass: ops do no work and the arena hands out unbacked addresses */
    /* Polled between blocks: nonzero stops the forward with CVX_ERR_INTERRUPTED (Ctrl-C). May be NULL. */
    int (*should_stop)(void *arg);
    void *stop_arg;
} cvx_ctx;

/* Activation memory from the context's arena (ctx->arena NULL: straight from the memory manager on ctx->device).
 * 64-byte aligned; bytes may be 0. */
cvx_status cvx_ctx_alloc(cvx_ctx *ctx, size_t bytes, void **out);
void cvx_ctx_free(cvx_ctx *ctx, void *ptr);
/* A tensor whose data comes from cvx_ctx_alloc; cvx_tensor_release gives it back to the same arena. */
cvx_status cvx_ctx_tensor(cvx_ctx *ctx, cvx_tensor *t, cvx_dtype dt, int ndim, const int64_t *shape);
/* 5-D f32 [B, C, T, H, W]. */
cvx_status cvx_ctx_tensor5(cvx_ctx *ctx, cvx_tensor *t, int64_t b, int64_t c, int64_t f, int64_t h, int64_t w);

/* CVX_ERR_INTERRUPTED when should_stop says so; models call it once per block. */
cvx_status cvx_ctx_poll(cvx_ctx *ctx);

/* Weight groups: a model calls acquire before the ops of group `group` read its weights and release after the
 * last of them. Acquire makes the group readable on ctx->device (waiting for its copy, queuing the next groups'
 * copies under sequential offload) and re-points the group's weight slots at that copy; release lets the residency
 * policy drop it. Both are no-ops when ctx->res is NULL or in a measuring pass. */
cvx_status cvx_ctx_acquire(cvx_ctx *ctx, int group);
void cvx_ctx_release(cvx_ctx *ctx, int group);
/* A pass over the block groups first..last, in the order prefetch should follow (cyclic: the pass repeats, as the
 * VAE's frame batches and tiles rerun the same blocks). A group outside [first, last] that is acquired during the
 * pass (the model's non-block weights) stays until cvx_ctx_end. cvx_ctx_end also runs after a failure. */
cvx_status cvx_ctx_begin(cvx_ctx *ctx, int first, int last, int cyclic);
void cvx_ctx_end(cvx_ctx *ctx);

/* Runs fn(ctx, arg) twice: first as a measuring pass (the measuring backend, a measuring arena, no residency), which
 * also checks the inputs before any work, then for real with ctx->arena reserved at exactly the measured peak. A
 * forward run this way allocates nothing on the device while it runs. `measured` (may be NULL) receives the peak.
 * In the measuring pass ctx->measuring is 1: the forward must not allocate or fill its host output then. */
cvx_status cvx_ctx_run(cvx_ctx *ctx, cvx_status (*fn)(cvx_ctx *ctx, void *arg), void *arg, size_t *measured);
/* Only the measuring pass: the arena bytes fn would need. */
cvx_status cvx_ctx_measure(const cvx_ctx *ctx, cvx_status (*fn)(cvx_ctx *ctx, void *arg), void *arg, size_t *measured);

#endif

#include "ctx.h"

#include <string.h>

#include "../mem/arena.h"
#include "../mem/residency.h"
#include "../ops/backend.h"

cvx_status cvx_ctx_alloc(cvx_ctx *ctx, size_t bytes, void **out) {
    if (ctx->arena) return cvx_arena_alloc(ctx->arena, bytes, out);
    return cvx_mem_alloc(ctx->device, CVX_MEM_ACTIVATIONS, bytes, out);
}

void cvx_ctx_free(cvx_ctx *ctx, void *ptr) {
    if (ctx->arena)
        cvx_arena_free(ctx->arena, ptr);
    else
        cvx_mem_free(ptr);
}

cvx_status cvx_ctx_tensor(cvx_ctx *ctx, cvx_tensor *t, cvx_dtype dt, int ndim, const int64_t *shape) {
    memset(t, 0, sizeof(*t));
    if (ndim < 0 || ndim > CVX_MAX_DIMS) return CVX_FAIL(CVX_ERR_INVALID, "tensor rank %d is not in 0..5", ndim);
    int64_t n = 1;
    for (int i = 0; i < ndim; i++) {
        if (shape[i] < 0 || __builtin_mul_overflow(n, shape[i], &n))
            return CVX_FAIL(CVX_ERR_INVALID, "impossible tensor dimension %lld", (long long)shape[i]);
    }
    size_t bytes;
    if (__builtin_mul_overflow((size_t)n, cvx_dtype_size(dt), &bytes))
        return CVX_FAIL(CVX_ERR_INVALID, "a tensor of %lld elements does not fit in memory", (long long)n);
    void *p = NULL;
    CVX_CHECK(cvx_ctx_alloc(ctx, bytes, &p));
    t->data = p;
    t->arena = ctx->arena;
    t->dtype = dt;
    t->device = ctx->device;
    t->ndim = ndim;
    for (int i = 0; i < ndim; i++) t->shape[i] = shape[i];
    return CVX_OK;
}

cvx_status cvx_ctx_tensor5(cvx_ctx *ctx, cvx_tensor *t, int64_t b, int64_t c, int64_t f, int64_t h, int64_t w) {
    const int64_t shape[5] = {b, c, f, h, w};
    return cvx_ctx_tensor(ctx, t, CVX_F32, 5, shape);
}

cvx_status cvx_ctx_poll(cvx_ctx *ctx) {
    if (ctx->should_stop && ctx->should_stop(ctx->stop_arg)) return CVX_FAIL(CVX_ERR_INTERRUPTED, "interrupted");
    return CVX_OK;
}

cvx_status cvx_ctx_acquire(cvx_ctx *ctx, int group) {
    if (!ctx->res || ctx->measuring) return CVX_OK;
    return cvx_residency_acquire(ctx->res, group);
}

void cvx_ctx_release(cvx_ctx *ctx, int group) {
    if (!ctx->res || ctx->measuring) return;
    cvx_residency_release(ctx->res, group);
}

cvx_status cvx_ctx_begin(cvx_ctx *ctx, int first, int last, int cyclic) {
    if (!ctx->res || ctx->measuring) return CVX_OK;
    return cvx_residency_begin(ctx->res, first, last, cyclic);
}

void cvx_ctx_end(cvx_ctx *ctx) {
    if (!ctx->res || ctx->measuring) return;
    cvx_residency_end(ctx->res);
}

cvx_status cvx_ctx_measure(const cvx_ctx *ctx, cvx_status (*fn)(cvx_ctx *ctx, void *arg), void *arg, size_t *measured) {
    cvx_ctx m = *ctx;
    if (!ctx->be || !ctx->be->self_measuring) m.be = cvx_backend_measure();
    m.res = NULL;
    m.measuring = 1;
    m.should_stop = NULL;
    CVX_CHECK(cvx_arena_create(ctx->device, 1, &m.arena));
    const cvx_status st = fn(&m, arg);
    if (measured) *measured = cvx_arena_peak(m.arena);
    cvx_arena_destroy(m.arena);
    return st;
}

cvx_status cvx_ctx_run(cvx_ctx *ctx, cvx_status (*fn)(cvx_ctx *ctx, void *arg), void *arg, size_t *measured) {
    size_t need = 0;
    CVX_CHECK(cvx_ctx_measure(ctx, fn, arg, &need));
    if (measured) *measured = need;
    if (ctx->arena) CVX_CHECK(cvx_arena_reserve(ctx->arena, need));
    return fn(ctx, arg);
}

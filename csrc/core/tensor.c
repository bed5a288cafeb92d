#include "tensor.h"

#include <string.h>

#include "../mem/arena.h"

cvx_status cvx_tensor_alloc(cvx_tensor *t, cvx_device dev, cvx_mem_kind kind, cvx_dtype dt, int ndim,
                            const int64_t *shape) {
    memset(t, 0, sizeof(*t));
    if (ndim < 0 || ndim > CVX_MAX_DIMS) return CVX_FAIL(CVX_ERR_INVALID, "tensor rank %d is not in 0..5", ndim);
    int64_t n = 1;
    for (int i = 0; i < ndim; i++) {
        if (shape[i] < 0) return CVX_FAIL(CVX_ERR_INVALID, "negative dimension %lld", (long long)shape[i]);
        n *= shape[i];
    }
    void *p = NULL;
    CVX_CHECK(cvx_mem_alloc(dev, kind, (size_t)n * cvx_dtype_size(dt), &p));
    t->data = p;
    t->dtype = dt;
    t->device = dev;
    t->ndim = ndim;
    for (int i = 0; i < ndim; i++) t->shape[i] = shape[i];
    return CVX_OK;
}

cvx_status cvx_tensor_alloc5(cvx_tensor *t, int64_t b, int64_t c, int64_t f, int64_t h, int64_t w) {
    int64_t shape[5] = {b, c, f, h, w};
    return cvx_tensor_alloc(t, CVX_DEVICE_CPU, CVX_MEM_ACTIVATIONS, CVX_F32, 5, shape);
}

void cvx_tensor_release(cvx_tensor *t) {
    if (t->arena)
        cvx_arena_free(t->arena, t->data);
    else
        cvx_mem_free(t->data);
    memset(t, 0, sizeof(*t));
}

int64_t cvx_tensor_numel(const cvx_tensor *t) {
    int64_t n = 1;
    for (int i = 0; i < t->ndim; i++) n *= t->shape[i];
    return n;
}

size_t cvx_tensor_nbytes(const cvx_tensor *t) { return (size_t)cvx_tensor_numel(t) * cvx_dtype_size(t->dtype); }

void cvx_tensor_move(cvx_tensor *dst, cvx_tensor *src) {
    if (dst == src) return;
    cvx_tensor_release(dst);
    *dst = *src;
    memset(src, 0, sizeof(*src));
}

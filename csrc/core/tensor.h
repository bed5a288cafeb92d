/* A contiguous, row-major tensor of up to 5 dimensions whose memory belongs to the memory manager. */
#ifndef CVX_TENSOR_H
#define CVX_TENSOR_H

#include <stdint.h>

#include "../mem/mem.h"
#include "dtype.h"
#include "status.h"

#define CVX_MAX_DIMS 5

struct cvx_arena;

typedef struct cvx_tensor {
    void *data;
    struct cvx_arena *arena; /* the arena the data came from (cvx_ctx_tensor), or NULL: the memory manager */
    cvx_dtype dtype;
    cvx_device device;
    int ndim;
    int64_t shape[CVX_MAX_DIMS];
} cvx_tensor;

/* Allocates an uninitialised tensor. On failure *t is zeroed. */
cvx_status cvx_tensor_alloc(cvx_tensor *t, cvx_device dev, cvx_mem_kind kind, cvx_dtype dt, int ndim,
                            const int64_t *shape);
/* 5-D f32 activation tensor [B, C, T, H, W]: the shape every VAE tensor has. */
cvx_status cvx_tensor_alloc5(cvx_tensor *t, int64_t b, int64_t c, int64_t f, int64_t h, int64_t w);
/* Frees the data (if any) and zeroes the struct; safe to call twice. */
void cvx_tensor_release(cvx_tensor *t);
int64_t cvx_tensor_numel(const cvx_tensor *t);
size_t cvx_tensor_nbytes(const cvx_tensor *t);
/* Moves src into dst (dst released first); src is left empty. */
void cvx_tensor_move(cvx_tensor *dst, cvx_tensor *src);

#endif

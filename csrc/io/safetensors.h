/* Safetensors reading: memory-mapped, single files and sharded checkpoints (*.safetensors.index.json).
 *
 * Every header offset and size is bounds-checked against the file before any tensor is exposed: a truncated file,
 * a header length past the end, overlapping or out-of-range data offsets, a size that does not match dtype x shape,
 * an unknown dtype or malformed JSON is reported as CVX_ERR_IO with the file (and tensor) named. */
#ifndef CVX_SAFETENSORS_H
#define CVX_SAFETENSORS_H

#include <stdint.h>

#include "../core/dtype.h"
#include "../core/status.h"
#include "../mem/mem.h"

#define CVX_ST_MAX_DIMS 8

typedef struct cvx_st_tensor {
    const char *name;
    cvx_dtype dtype;
    int ndim;
    int64_t shape[CVX_ST_MAX_DIMS];
    uint64_t nbytes;
    const void *data; /* points into the read-only mapping; valid until cvx_st_close */
} cvx_st_tensor;

typedef struct cvx_st_file cvx_st_file; /* one checkpoint: one or more mapped shard files */

/* Opens `path`: a .safetensors file, or a *.safetensors.index.json whose "weight_map" names the shard files
 * (relative to the index's folder). Only F32, F16, BF16 and F64 tensors are accepted (F64: diffusers saves
 * the learned positional table as float64; it is converted at load). */
cvx_status cvx_st_open(const char *path, cvx_st_file **out);
/* Another reference: the mapping stays until every cvx_st_close (loaded weights keep the file they point into). */
void cvx_st_retain(cvx_st_file *f);
/* Drops a reference; the last one unmaps the shards (unpinning them first). */
void cvx_st_close(cvx_st_file *f);
/* Page-locks every shard's mapping for copies to `dev` (cvx_mem_pin, read-only), once per shard for the mapping's
 * lifetime: weights read in place then copy to the device from pinned memory. Returns the pinned bytes; *all
 * (may be NULL) says whether every shard is pinned (0: the device or driver refused some: they copy pageable). */
int64_t cvx_st_pin(cvx_st_file *f, cvx_device dev, int *all);

int cvx_st_count(const cvx_st_file *f);
const cvx_st_tensor *cvx_st_at(const cvx_st_file *f, int i);
/* NULL when the checkpoint holds no tensor of that name. */
const cvx_st_tensor *cvx_st_find(const cvx_st_file *f, const char *name);

#endif

/* Weight registry: a model declares each parameter by its exact diffusers state-dict name, expected shape, weight
 * group and the pointer slot that should point at it; loading then checks the checkpoint against the declarations
 * (missing, unexpected and wrongly shaped tensors are all named in one error) and gives every tensor its host bytes:
 * the memory-mapped checkpoint itself where it is stored in the run dtype (the file stays mapped as long as the
 * weights live), otherwise one converted copy in a per-group host buffer from the memory manager. Each group also
 * has a device layout (every tensor at a 64-byte aligned offset, group_bytes long) that the residency layer
 * (mem/residency.h) copies the host bytes into; it owns where the slots point. */
#ifndef CVX_WEIGHTS_H
#define CVX_WEIGHTS_H

#include <stdint.h>

#include "../core/dtype.h"
#include "../core/status.h"
#include "../io/safetensors.h"

#define CVX_WEIGHT_NAME_MAX 160

typedef struct cvx_weight_decl {
    char name[CVX_WEIGHT_NAME_MAX];
    int ndim;
    int64_t shape[5];
    int group;
    int as_f32;       /* small vectors (biases, norm affines) are kept in f32 whatever the weight dtype */
    void **slot;      /* receives the address of the loaded data (the host bytes or the device copy) */
    const void *host; /* after loading: the tensor's host bytes (mapped file or converted copy) */
    size_t offset;    /* after loading: its offset in the group's device layout */
} cvx_weight_decl;

typedef struct cvx_weights {
    cvx_weight_decl *decls;
    int count, capacity;
    int num_groups;
    cvx_dtype dtype;             /* the dtype non-vector weights are stored in; models set it before declaring */
    void **group_data;           /* [num_groups] converted host copies (NULL where every tensor is mapped), each on
                                  * pages of its own (cvx_mem_alloc_pages) so that it can be pinned alone */
    unsigned char *group_pinned; /* [num_groups] 1: group_data[g] is pinned for pinned_dev */
    cvx_device pinned_dev;
    int pin_asked;             /* cvx_weights_pin ran for pinned_dev */
    int64_t pinned_bytes;      /* of the host bytes (converted copies and mapped tensors), those in pinned memory */
    int64_t *group_bytes;      /* [num_groups] the device layout's size */
    int64_t mapped_bytes;      /* tensor bytes read in place from the mapped checkpoint */
    struct cvx_st_file *file;  /* retained while tensors point into it */
    struct cvx_residency *res; /* where each group lives; created by load / init_random */
    cvx_status decl_status;    /* first failure while declaring, reported by cvx_weights_load */
    const char *ignored;       /* a tensor name the checkpoint may hold that is neither loaded nor unexpected */
} cvx_weights;

/* Declares a parameter: the name is printf-formatted; ndim dimensions follow as int64_t values. */
void cvx_weights_declare(cvx_weights *ws, int group, int as_f32, void **slot, int ndim, const int64_t *shape,
                         const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 7, 8)))
#endif
    ;
/* The most tensors one model may declare (the released models have fewer than 1,000): a config implying more is
 * refused instead of growing the declaration table without bound. */
#define CVX_WEIGHTS_MAX_TENSORS 65536

/* Before declaring: refuses a config whose `key` = `value` implies at least `min_tensors` tensors when the checkpoint
 * `st` holds fewer (st NULL, random weights: more than CVX_WEIGHTS_MAX_TENSORS), so that a huge layer count fails at
 * once, naming the key, instead of after gigabytes of declarations. */
cvx_status cvx_weights_check_count(const cvx_st_file *st, int64_t min_tensors, const char *key, int64_t value);
cvx_status cvx_weights_load(cvx_weights *ws, const cvx_st_file *st, cvx_dtype dtype);
/* Instead of loading: seeded random weights (1-D: norm scales 1, biases 0; others uniform in +-1/sqrt(fan_in)).
 * Their bytes are compared with the CPU memory limit and the machine's memory before anything is allocated. */
cvx_status cvx_weights_init_random(cvx_weights *ws, cvx_dtype dtype, uint64_t seed);
int64_t cvx_weights_total_bytes(const cvx_weights *ws);
/* Pins the host bytes the groups copy from for `dev` (CUDA; elsewhere nothing happens): the converted host copies,
 * and the checkpoint's mappings (cvx_st_pin: once per mapping, for its lifetime). Once per model and device;
 * unpinned by cvx_weights_free. Where pinning is refused the copies stay pageable (ws->pinned_bytes says how much
 * is pinned). */
void cvx_weights_pin(cvx_weights *ws, cvx_device dev);
/* The residency entry of declaration i (its slot, host bytes, size, offset and group), as loading handed it over:
 * what a model that adds tensors to its groups (LoRA adapters) rebuilds the residency table from. */
struct cvx_residency_tensor cvx_weights_entry(const cvx_weights *ws, int i);
/* Declaration i's host bytes (what save_pretrained reads), whatever the residency. */
const void *cvx_weights_host(const cvx_weights *ws, int i);
void cvx_weights_free(cvx_weights *ws);

#endif

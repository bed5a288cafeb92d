/* Weight residency: where each weight group of one component lives, and the policy that moves it.
 *
 * A group is {its tensors' host bytes (the mapped checkpoint where the stored dtype is the run dtype, otherwise one
 * converted host copy), its size in the device layout (every tensor 64-byte aligned), the device copy, a state
 * (host / in flight / resident) and the copy-queue event that says when the copy is complete}. Acquire re-points the
 * group's weight slots at the device copy; dropping the copy re-points them at the host bytes. Weights never change,
 * so nothing is ever copied back, and no second host copy of the model exists.
 *
 * Policies (diffusers' names):
 *   NONE        every group is resident from cvx_residency_set on (pipe.to(device)).
 *   MODEL       the whole component comes in, in one pass, at cvx_residency_onload (or the first acquire), and stays
 *               until cvx_residency_offload (the pipeline calls it when the next component starts).
 *   SEQUENTIAL  only the groups a forward is using: acquire(g) waits for g and queues the next `prefetch` groups of
 *               the pass on the copy queue, into a ring of prefetch + 1 device slots (no more than the pass has
 *               groups) of the largest block group's size (allocated once); release(g) gives g's slot back.
 * On the CPU device every policy reads the host bytes in place: nothing is copied.
 *
 * On CUDA compute is asynchronous (ops queue on the compute stream), so the order between the streams is explicit
 * (mem.h, "ordering copies with compute"): acquire makes the compute stream wait for the group's copy on the device
 * (RESIDENT then means "every op queued from now on reads the copied bytes"; the host does not block), release of a
 * ring slot records a compute fence that the slot's next copy waits for, a freed group copy is ordered by the CUDA
 * allocator the same way, and leaving CUDA or destroying the residency waits for every copy still reading the host
 * bytes. On cpu and emu those calls are no-ops or the host waits they were before. */
#ifndef CVX_RESIDENCY_H
#define CVX_RESIDENCY_H

#include <stddef.h>
#include <stdint.h>

#include "../core/status.h"
#include "mem.h"

typedef enum cvx_policy { CVX_POLICY_NONE = 0, CVX_POLICY_MODEL = 1, CVX_POLICY_SEQUENTIAL = 2 } cvx_policy;
typedef enum cvx_group_state { CVX_GROUP_HOST = 0, CVX_GROUP_IN_FLIGHT = 1, CVX_GROUP_RESIDENT = 2 } cvx_group_state;

/* One tensor of a group: its slot, its host bytes and where it sits in the group's device layout. */
typedef struct cvx_residency_tensor {
    void **slot;
    const void *host;
    size_t bytes;
    size_t offset;
    int group;
} cvx_residency_tensor;

typedef struct cvx_residency_stats {
    int64_t bytes_copied;   /* host -> device, since create or the last reset */
    int64_t copies;         /* group copies */
    int64_t copy_ns;        /* time the copy queue spent on this component's copies */
    int64_t wait_ns;        /* time compute waited for a copy to complete (copy not hidden behind compute) */
    int64_t resident_bytes; /* device bytes the groups hold now (ring slots included) */
    int64_t peak_resident_bytes;
} cvx_residency_stats;

typedef struct cvx_residency cvx_residency;

/* The table is copied; every tensor's group is in [0, num_groups). Starts on the CPU under NONE. */
cvx_status cvx_residency_create(const cvx_residency_tensor *tensors, int count, int num_groups, cvx_residency **out);
void cvx_residency_destroy(cvx_residency *r); /* drops every device copy first */

/* Replaces the tensor table (a LoRA adapter's tensors joining or leaving the groups of the blocks they modify, a
 * fused weight's private copy standing in for the checkpoint's bytes). Every device copy is dropped first (the ring
 * too: group sizes change), the groups are laid out again from the table, and under NONE on a device every group
 * comes in again; device, policy and prefetch stay. Not during a pass. On failure the old table stays (a table the
 * groups cannot take is refused before anything is dropped). */
cvx_status cvx_residency_retable(cvx_residency *r, const cvx_residency_tensor *tensors, int count);

/* Moves the component to `dev` under `policy`, `prefetch` groups ahead (SEQUENTIAL, >= 0). Drops every device copy
 * first; NONE then brings every group in (CVX_ERR_OOM leaves it on the host, nothing held). */
cvx_status cvx_residency_set(cvx_residency *r, cvx_device dev, cvx_policy policy, int prefetch);
cvx_device cvx_residency_device(const cvx_residency *r);
cvx_policy cvx_residency_policy(const cvx_residency *r);

/* A forward's pass over groups first..last (in that order, the order prefetch follows; `cyclic`: after `last` the
 * pass starts again at `first`, as the VAE's frame batches do). Under SEQUENTIAL a group outside [first, last]
 * acquired during the pass (the non-block weights) gets a device copy of its own that stays until
 * cvx_residency_offload, so that the next pass (the next denoising step) allocates nothing. */
cvx_status cvx_residency_begin(cvx_residency *r, int first, int last, int cyclic);
cvx_status cvx_residency_acquire(cvx_residency *r, int group);
void cvx_residency_release(cvx_residency *r, int group);
/* Ends the pass (also after a failure). Under SEQUENTIAL the ring's groups are dropped and the first ones of the
 * pass are queued again for the next pass (kept when the ring still holds them); the ring and the non-block
 * groups stay until cvx_residency_offload, which a caller's error path must call to return to its baseline. */
void cvx_residency_end(cvx_residency *r);

/* MODEL: every group in, one pass. */
cvx_status cvx_residency_onload(cvx_residency *r);
/* Drops every device copy (and the ring). */
void cvx_residency_offload(cvx_residency *r);

cvx_group_state cvx_residency_state(const cvx_residency *r, int group);
int cvx_residency_num_groups(const cvx_residency *r);
int64_t cvx_residency_group_bytes(const cvx_residency *r, int group);
int64_t cvx_residency_total_bytes(const cvx_residency *r);
void cvx_residency_get_stats(const cvx_residency *r, cvx_residency_stats *out);
void cvx_residency_reset_stats(cvx_residency *r);

#endif

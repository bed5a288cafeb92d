#include "residency.h"

#include <stdlib.h>
#include <string.h>

/* FIRST CUT (lead, being replaced within the hour): the CPU path only. On the CPU every policy reads the host bytes
 * in place; any other device is refused. */
struct cvx_residency {
    cvx_residency_tensor *tensors;
    int count, num_groups;
    int64_t *group_bytes;
    cvx_device dev;
    cvx_policy policy;
    int prefetch;
    cvx_residency_stats stats;
};

cvx_status cvx_residency_create(const cvx_residency_tensor *tensors, int count, int num_groups, cvx_residency **out) {
    *out = NULL;
    cvx_residency *r = calloc(1, sizeof(*r));
    if (!r) return CVX_FAIL(CVX_ERR_OOM, "out of host memory for the residency table");
    r->tensors = malloc((size_t)(count > 0 ? count : 1) * sizeof(*tensors));
    r->group_bytes = calloc((size_t)(num_groups > 0 ? num_groups : 1), sizeof(int64_t));
    if (!r->tensors || !r->group_bytes) {
        cvx_residency_destroy(r);
        return CVX_FAIL(CVX_ERR_OOM, "out of host memory for the residency table");
    }
    memcpy(r->tensors, tensors, (size_t)count * sizeof(*tensors));
    r->count = count;
    r->num_groups = num_groups;
    for (int i = 0; i < count; i++) {
        const size_t end = tensors[i].offset + tensors[i].bytes;
        if ((int64_t)end > r->group_bytes[tensors[i].group]) r->group_bytes[tensors[i].group] = (int64_t)end;
        *tensors[i].slot = (void *)tensors[i].host;
    }
    *out = r;
    return CVX_OK;
}

void cvx_residency_destroy(cvx_residency *r) {
    if (!r) return;
    free(r->tensors);
    free(r->group_bytes);
    free(r);
}

cvx_status cvx_residency_set(cvx_residency *r, cvx_device dev, cvx_policy policy, int prefetch) {
    if (dev != CVX_DEVICE_CPU) return CVX_FAIL(CVX_ERR_INVALID, "not yet: only the CPU device");
    r->dev = dev;
    r->policy = policy;
    r->prefetch = prefetch;
    return CVX_OK;
}
cvx_device cvx_residency_device(const cvx_residency *r) { return r->dev; }
cvx_policy cvx_residency_policy(const cvx_residency *r) { return r->policy; }
cvx_status cvx_residency_begin(cvx_residency *r, int first, int last, int cyclic) {
    (void)r, (void)first, (void)last, (void)cyclic;
    return CVX_OK;
}
cvx_status cvx_residency_acquire(cvx_residency *r, int group) {
    (void)r, (void)group;
    return CVX_OK;
}
void cvx_residency_release(cvx_residency *r, int group) { (void)r, (void)group; }
void cvx_residency_end(cvx_residency *r) { (void)r; }
cvx_status cvx_residency_onload(cvx_residency *r) {
    (void)r;
    return CVX_OK;
}
void cvx_residency_offload(cvx_residency *r) { (void)r; }
cvx_group_state cvx_residency_state(const cvx_residency *r, int group) {
    (void)r, (void)group;
    return CVX_GROUP_HOST;
}
int cvx_residency_num_groups(const cvx_residency *r) { return r->num_groups; }
int64_t cvx_residency_group_bytes(const cvx_residency *r, int group) {
    return group >= 0 && group < r->num_groups ? r->group_bytes[group] : 0;
}
int64_t cvx_residency_total_bytes(const cvx_residency *r) {
    int64_t t = 0;
    for (int g = 0; g < r->num_groups; g++) t += r->group_bytes[g];
    return t;
}
void cvx_residency_get_stats(const cvx_residency *r, cvx_residency_stats *out) { *out = r->stats; }
void cvx_residency_reset_stats(cvx_residency *r) { memset(&r->stats, 0, sizeof(r->stats)); }

#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* sysconf(_SC_PHYS_PAGES) */
#endif
#include "weights.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../mem/mem.h"
#include "../mem/residency.h"

cvx_status cvx_weights_check_count(const cvx_st_file *st, int64_t min_tensors, const char *key, int64_t value) {
    if (st && min_tensors > cvx_st_count(st))
        return CVX_FAIL(CVX_ERR_INVALID,
                        "config '%s' = %lld implies at least %lld weight tensors, but the checkpoint holds %d", key,
                        (long long)value, (long long)min_tensors, cvx_st_count(st));
    if (!st && min_tensors > CVX_WEIGHTS_MAX_TENSORS)
        return CVX_FAIL(CVX_ERR_INVALID,
                        "config '%s' = %lld implies at least %lld weight tensors; at most %d are supported", key,
                        (long long)value, (long long)min_tensors, CVX_WEIGHTS_MAX_TENSORS);
    return CVX_OK;
}

/* Elements of a shape, or -1 when the product does not fit an int64_t (or a dimension is negative). */
static int64_t shape_numel(int ndim, const int64_t *shape) {
    int64_t n = 1;
    for (int i = 0; i < ndim; i++)
        if (shape[i] < 0 || __builtin_mul_overflow(n, shape[i], &n)) return -1;
    return n;
}

void cvx_weights_declare(cvx_weights *ws, int group, int as_f32, void **slot, int ndim, const int64_t *shape,
                         const char *fmt, ...) {
    if (ws->decl_status != CVX_OK) return;
    if (ws->count >= CVX_WEIGHTS_MAX_TENSORS) {
        ws->decl_status =
            CVX_FAIL(CVX_ERR_INVALID, "the config implies more than %d weight tensors", CVX_WEIGHTS_MAX_TENSORS);
        return;
    }
    /* 2^40 elements (4 TB in f32) is past any machine: refusing it here keeps every later byte count exact */
    const int64_t numel = ndim >= 0 && ndim <= 5 ? shape_numel(ndim, shape) : -1;
    if (numel < 0 || numel > ((int64_t)1 << 40)) {
        char name[CVX_WEIGHT_NAME_MAX];
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(name, sizeof(name), fmt, ap);
        va_end(ap);
        ws->decl_status = CVX_FAIL(CVX_ERR_INVALID, "the config gives weight '%s' an impossible size", name);
        return;
    }
    if (ws->count == ws->capacity) {
        int cap = ws->capacity ? 2 * ws->capacity : 64;
        cvx_weight_decl *d = realloc(ws->decls, (size_t)cap * sizeof(*d));
        if (!d) {
            ws->decl_status = CVX_FAIL(CVX_ERR_OOM, "out of host memory declaring weights");
            return;
        }
        ws->decls = d;
        ws->capacity = cap;
    }
    cvx_weight_decl *d = &ws->decls[ws->count++];
    memset(d, 0, sizeof(*d));
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(d->name, sizeof(d->name), fmt, ap);
    va_end(ap);
    d->ndim = ndim;
    for (int i = 0; i < ndim; i++) d->shape[i] = shape[i];
    d->group = group;
    d->as_f32 = as_f32;
    d->slot = slot;
    if (group + 1 > ws->num_groups) ws->num_groups = group + 1;
}

static int64_t decl_numel(const cvx_weight_decl *d) {
    int64_t n = 1;
    for (int i = 0; i < d->ndim; i++) n *= d->shape[i];
    return n;
}

static void shape_str(char *buf, size_t size, int ndim, const int64_t *shape) {
    size_t at = 0;
    at += (size_t)snprintf(buf + at, size - at, "[");
    for (int i = 0; i < ndim && at < size; i++)
        at += (size_t)snprintf(buf + at, size - at, i ? ", %lld" : "%lld", (long long)shape[i]);
    if (at < size) snprintf(buf + at, size - at, "]");
}

/* Appends an item to a bounded, comma-separated list, counting what does not fit. */
static void list_add(char *list, size_t size, int *count, const char *name) {
    size_t len = strlen(list);
    if (*count < 5 && len + strlen(name) + 3 < size) snprintf(list + len, size - len, "%s%s", len ? ", " : "", name);
    (*count)++;
}

static size_t slot_bytes(const cvx_weight_decl *d, cvx_dtype dtype) {
    size_t b = (size_t)decl_numel(d) * (d->as_f32 ? 4 : cvx_dtype_size(dtype));
    return (b + 63) & ~(size_t)63; /* keep every tensor 64-byte aligned inside its group */
}

static size_t tensor_bytes(const cvx_weight_decl *d, cvx_dtype dtype) {
    return (size_t)decl_numel(d) * (d->as_f32 ? 4 : cvx_dtype_size(dtype));
}

/* The checkpoint tensor can be read in place: stored exactly as the slot holds it (the run dtype; an f32 vector only
 * in an f32 run, since other runs round it through the run dtype first), at an address aligned for it. */
static int readable_in_place(const cvx_weight_decl *d, const cvx_st_tensor *t, cvx_dtype dtype) {
    if (!t || t->dtype != dtype || (d->as_f32 && dtype != CVX_F32)) return 0;
    return (uintptr_t)t->data % cvx_dtype_size(dtype) == 0;
}

/* Lays out every group (device offsets), points each tensor at its host bytes (in place when `st` allows, else its
 * place in one converted host buffer per group, allocated here) and leaves the slots to the residency table. */
static cvx_status alloc_groups(cvx_weights *ws, const cvx_st_file *st, cvx_dtype dtype) {
    ws->group_data = calloc((size_t)ws->num_groups, sizeof(void *));
    ws->group_bytes = calloc((size_t)ws->num_groups, sizeof(int64_t));
    int64_t *host_bytes = calloc((size_t)ws->num_groups, sizeof(int64_t));
    cvx_residency_tensor *table = malloc((size_t)(ws->count ? ws->count : 1) * sizeof(*table));
    cvx_status status = CVX_OK;
    if (!ws->group_data || !ws->group_bytes || !host_bytes || !table) {
        status = CVX_FAIL(CVX_ERR_OOM, "out of host memory for the weight table");
        goto done;
    }
    for (int i = 0; i < ws->count; i++) {
        cvx_weight_decl *d = &ws->decls[i];
        d->offset = (size_t)ws->group_bytes[d->group];
        ws->group_bytes[d->group] += (int64_t)slot_bytes(d, dtype);
        if (!st || !readable_in_place(d, cvx_st_find(st, d->name), dtype))
            host_bytes[d->group] += (int64_t)slot_bytes(d, dtype);
    }
    for (int g = 0; g < ws->num_groups; g++) {
        if (!host_bytes[g]) continue;
        status = cvx_mem_alloc_pages(CVX_MEM_WEIGHTS, (size_t)host_bytes[g], &ws->group_data[g]);
        if (status != CVX_OK) goto done;
    }
    memset(host_bytes, 0, (size_t)ws->num_groups * sizeof(int64_t)); /* now the fill of each host buffer */
    int mapped = 0;
    for (int i = 0; i < ws->count; i++) {
        cvx_weight_decl *d = &ws->decls[i];
        const cvx_st_tensor *t = st ? cvx_st_find(st, d->name) : NULL;
        if (st && readable_in_place(d, t, dtype)) {
            d->host = t->data;
            ws->mapped_bytes += (int64_t)tensor_bytes(d, dtype);
            mapped = 1;
        } else {
            d->host = (char *)ws->group_data[d->group] + host_bytes[d->group];
            host_bytes[d->group] += (int64_t)slot_bytes(d, dtype);
        }
        table[i] = cvx_weights_entry(ws, i);
    }
    if (mapped) {
        status = cvx_mem_add_mapped(CVX_DEVICE_CPU, ws->mapped_bytes);
        if (status != CVX_OK) {
            ws->mapped_bytes = 0;
            goto done;
        }
        ws->file = (cvx_st_file *)st; /* retained, not changed: the mapping must outlive the caller's close */
        cvx_st_retain(ws->file);
    }
    status = cvx_residency_create(table, ws->count, ws->num_groups, &ws->res);
done:
    free(host_bytes);
    free(table);
    if (status != CVX_OK) cvx_weights_free(ws);
    return status;
}

cvx_status cvx_weights_load(cvx_weights *ws, const cvx_st_file *st, cvx_dtype dtype) {
    if (ws->decl_status != CVX_OK) return ws->decl_status;
    if (dtype != ws->dtype)
        return CVX_FAIL(CVX_ERR_INTERNAL, "weights declared for %s are loaded as %s", cvx_dtype_name(ws->dtype),
                        cvx_dtype_name(dtype));
    char missing[512] = "", unexpected[512] = "", mismatched[768] = "";
    int n_missing = 0, n_unexpected = 0, n_mismatched = 0;
    for (int i = 0; i < ws->count; i++) {
        const cvx_weight_decl *d = &ws->decls[i];
        const cvx_st_tensor *t = cvx_st_find(st, d->name);
        if (!t) {
            char item[CVX_WEIGHT_NAME_MAX + 2];
            snprintf(item, sizeof(item), "'%s'", d->name);
            list_add(missing, sizeof(missing), &n_missing, item);
            continue;
        }
        int same = t->ndim == d->ndim;
        for (int k = 0; same && k < d->ndim; k++) same = t->shape[k] == d->shape[k];
        if (!same) {
            char want[96], got[96], item[CVX_WEIGHT_NAME_MAX + 256];
            shape_str(want, sizeof(want), d->ndim, d->shape);
            shape_str(got, sizeof(got), t->ndim, t->shape);
            snprintf(item, sizeof(item), "'%s' has shape %s, expected %s", d->name, got, want);
            list_add(mismatched, sizeof(mismatched), &n_mismatched, item);
        }
    }
    for (int i = 0; i < cvx_st_count(st); i++) {
        const char *name = cvx_st_at(st, i)->name;
        int found = ws->ignored && strcmp(ws->ignored, name) == 0;
        for (int k = 0; k < ws->count && !found; k++) found = strcmp(ws->decls[k].name, name) == 0;
        if (!found) {
            char item[CVX_WEIGHT_NAME_MAX + 2];
            snprintf(item, sizeof(item), "'%.*s'", CVX_WEIGHT_NAME_MAX - 1, name);
            list_add(unexpected, sizeof(unexpected), &n_unexpected, item);
        }
    }
    if (n_missing || n_unexpected || n_mismatched) {
        char more_m[32] = "", more_u[32] = "", more_s[32] = "";
        if (n_missing > 5) snprintf(more_m, sizeof(more_m), " and %d more", n_missing - 5);
        if (n_unexpected > 5) snprintf(more_u, sizeof(more_u), " and %d more", n_unexpected - 5);
        if (n_mismatched > 5) snprintf(more_s, sizeof(more_s), " and %d more", n_mismatched - 5);
        return CVX_FAIL(CVX_ERR_INVALID,
                        "checkpoint does not match the config: %d missing tensor(s)%s%s%s; %d unexpected%s%s%s; "
                        "%d wrongly shaped%s%s%s",
                        n_missing, n_missing ? " " : "", missing, more_m, n_unexpected, n_unexpected ? " " : "",
                        unexpected, more_u, n_mismatched, n_mismatched ? " " : "", mismatched, more_s);
    }

    CVX_CHECK(alloc_groups(ws, st, dtype));
    for (int i = 0; i < ws->count; i++) {
        cvx_weight_decl *d = &ws->decls[i];
        const cvx_st_tensor *t = cvx_st_find(st, d->name);
        if (d->host == t->data) continue; /* read in place from the mapping */
        char *dst = (char *)d->host;
        const size_t n = (size_t)decl_numel(d);
        if (d->as_f32 && dtype != CVX_F32 && t->dtype != dtype) {
            /* round through the requested dtype first, so values equal what torch_dtype= gives in diffusers */
            uint16_t *tmp = malloc(n * 2 + 2);
            if (!tmp) {
                cvx_weights_free(ws);
                return CVX_FAIL(CVX_ERR_OOM, "out of host memory converting '%s'", d->name);
            }
            cvx_convert(tmp, dtype, t->data, t->dtype, n);
            cvx_convert(dst, CVX_F32, tmp, dtype, n);
            free(tmp);
        } else {
            cvx_convert(dst, d->as_f32 ? CVX_F32 : dtype, t->data, t->dtype, n);
        }
    }
    return CVX_OK;
}

static uint64_t splitmix64(uint64_t *state) {
    uint64_t z = (*state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

cvx_status cvx_weights_init_random(cvx_weights *ws, cvx_dtype dtype, uint64_t seed) {
    if (ws->decl_status != CVX_OK) return ws->decl_status;
    if (dtype != ws->dtype)
        return CVX_FAIL(CVX_ERR_INTERNAL, "weights declared for %s are initialised as %s", cvx_dtype_name(ws->dtype),
                        cvx_dtype_name(dtype));
    /* nothing in a checkpoint bounds random weights: compare their bytes with what can be had before allocating */
    int64_t total = 0;
    for (int i = 0; i < ws->count; i++) total += (int64_t)slot_bytes(&ws->decls[i], dtype);
    cvx_mem_stats ms;
    cvx_mem_get_stats(CVX_DEVICE_CPU, &ms);
    if (ms.limit_bytes > 0 && total > ms.limit_bytes - ms.allocated_bytes - ms.mapped_bytes)
        return CVX_FAIL(CVX_ERR_OOM, "random weights of %lld bytes exceed the CPU memory limit (%lld bytes free)",
                        (long long)total, (long long)(ms.limit_bytes - ms.allocated_bytes - ms.mapped_bytes));
#ifdef _SC_PHYS_PAGES
    const long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);
    if (pages > 0 && page > 0 && total > (int64_t)pages * page)
        return CVX_FAIL(CVX_ERR_OOM, "random weights of %lld bytes exceed this machine's memory (%lld bytes)",
                        (long long)total, (long long)pages * page);
#endif
    CVX_CHECK(alloc_groups(ws, NULL, dtype));
#pragma omp parallel for schedule(dynamic)
    for (int i = 0; i < ws->count; i++) {
        const cvx_weight_decl *d = &ws->decls[i];
        const int64_t n = decl_numel(d);
        const cvx_dtype dt = d->as_f32 ? CVX_F32 : dtype;
        const size_t esize = cvx_dtype_size(dt);
        char *dst = (char *)d->host;
        uint64_t state = seed * 0x100000001b3ull + (uint64_t)i;
        /* 1-D weights are norm scales (1) and biases (0); matrices are uniform in +-1/sqrt(fan_in) */
        const size_t len = strlen(d->name);
        const int is_weight = len > 7 && strcmp(d->name + len - 7, ".weight") == 0;
        const float constant = d->ndim == 1 ? (is_weight ? 1.0f : 0.0f) : 0.0f;
        const float bound = d->ndim == 1 ? 0.0f : 1.0f / sqrtf((float)(n / (d->shape[0] ? d->shape[0] : 1)));
        for (int64_t e = 0; e < n; e++) {
            float v = constant;
            if (bound > 0.0f) v = bound * ((float)(splitmix64(&state) >> 40) * (2.0f / 16777216.0f) - 1.0f);
            cvx_convert(dst + (size_t)e * esize, dt, &v, CVX_F32, 1);
        }
    }
    return CVX_OK;
}

int64_t cvx_weights_total_bytes(const cvx_weights *ws) {
    int64_t total = 0;
    for (int g = 0; ws->group_bytes && g < ws->num_groups; g++) total += ws->group_bytes[g];
    return total;
}

cvx_residency_tensor cvx_weights_entry(const cvx_weights *ws, int i) {
    const cvx_weight_decl *d = &ws->decls[i];
    return (cvx_residency_tensor){d->slot, d->host, tensor_bytes(d, ws->dtype), d->offset, d->group};
}

const void *cvx_weights_host(const cvx_weights *ws, int i) {
    return i >= 0 && i < ws->count ? ws->decls[i].host : NULL;
}

void cvx_weights_pin(cvx_weights *ws, cvx_device dev) {
    /* once: the process has one CUDA device, and the pages stay pinned while the weights live */
    if (dev == CVX_DEVICE_CPU || ws->pin_asked || !ws->group_data) return;
    if (!ws->group_pinned && !(ws->group_pinned = calloc((size_t)ws->num_groups, 1))) return; /* stays pageable */
    ws->pin_asked = 1;
    ws->pinned_dev = dev;
    ws->pinned_bytes = 0;
    for (int g = 0; g < ws->num_groups; g++) {
        if (!ws->group_data[g]) continue;
        const size_t bytes = cvx_mem_size(ws->group_data[g]);
        ws->group_pinned[g] = (unsigned char)cvx_mem_pin(dev, ws->group_data[g], bytes, 0);
        if (ws->group_pinned[g]) ws->pinned_bytes += (int64_t)bytes;
    }
    int all = 0;
    if (ws->file && cvx_st_pin(ws->file, dev, &all) > 0 && all) ws->pinned_bytes += ws->mapped_bytes;
}

void cvx_weights_free(cvx_weights *ws) {
    cvx_residency_destroy(ws->res); /* drops every device copy (waiting for their copies) before the host bytes go */
    for (int g = 0; ws->group_pinned && g < ws->num_groups; g++)
        if (ws->group_pinned[g]) cvx_mem_unpin(ws->pinned_dev, ws->group_data[g], cvx_mem_size(ws->group_data[g]));
    free(ws->group_pinned);
    for (int g = 0; ws->group_data && g < ws->num_groups; g++) cvx_mem_free(ws->group_data[g]);
    if (ws->file) cvx_mem_add_mapped(CVX_DEVICE_CPU, -ws->mapped_bytes);
    cvx_st_close(ws->file);
    free(ws->group_data);
    free(ws->group_bytes);
    free(ws->decls);
    memset(ws, 0, sizeof(*ws));
}

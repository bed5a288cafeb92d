/* Safetensors reading. A shard file is mapped read-only once; its header is parsed into a list of entries that are
 * checked against the mapping (dtype, shape x dtype size = byte range, ranges inside the data region and disjoint)
 * before any tensor is exposed. The checkpoint's tensor table is sorted by name so that cvx_st_find is a bsearch. */
#define _POSIX_C_SOURCE 200809L

#include "safetensors.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "json.h"

/* The reference implementation's bound: anything larger is a corrupt length, not a header. */
#define ST_MAX_HEADER_BYTES 100000000ull
#define ST_MAX_INDEX_BYTES 100000000ull

typedef struct st_entry {
    cvx_st_tensor t; /* t.name points into the shard's name storage */
    uint64_t begin;  /* byte range in the data region */
    uint64_t end;
} st_entry;

typedef struct st_shard {
    char *path;
    void *map; /* the whole file, read-only */
    size_t map_size;
    st_entry *entries; /* every tensor of the file, sorted by name */
    int num_entries;
    char *names; /* the entries' names, NUL-separated */
} st_shard;

struct cvx_st_file {
    st_shard *shards;
    int num_shards;
    cvx_st_tensor *tensors; /* sorted by name; names point into the shards */
    int num_tensors;
};

/* Maps a whole regular file. An empty file gives map NULL, size 0 (mmap refuses length 0). */
static cvx_status st_map_file(const char *path, void **map, size_t *size) {
    *map = NULL;
    *size = 0;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return CVX_FAIL(CVX_ERR_IO, "cannot open '%s': %s", path, strerror(errno));
    struct stat sb;
    cvx_status st = CVX_OK;
    if (fstat(fd, &sb) != 0) {
        st = CVX_FAIL(CVX_ERR_IO, "cannot stat '%s': %s", path, strerror(errno));
    } else if (!S_ISREG(sb.st_mode)) {
        st = CVX_FAIL(CVX_ERR_IO, "'%s' is not a regular file", path);
    } else if ((uint64_t)sb.st_size > SIZE_MAX) {
        st = CVX_FAIL(CVX_ERR_IO, "'%s' is too large to map", path);
    } else if (sb.st_size > 0) {
        void *m = mmap(NULL, (size_t)sb.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
        if (m == MAP_FAILED) {
            st = CVX_FAIL(CVX_ERR_IO, "cannot map '%s': %s", path, strerror(errno));
        } else {
            *map = m;
            *size = (size_t)sb.st_size;
        }
    }
    close(fd); /* the mapping keeps the file alive */
    return st;
}

static void st_shard_release(st_shard *s) {
    if (s->map) munmap(s->map, s->map_size);
    free(s->entries);
    free(s->names);
    free(s->path);
    memset(s, 0, sizeof(*s));
}

static const struct {
    const char *name;
    cvx_dtype dtype;
} st_read_dtypes[] = {{"F32", CVX_F32}, {"F16", CVX_F16}, {"BF16", CVX_BF16}, {"F64", CVX_F64}};

/* The format's other dtypes, so that a valid file of a type we do not read is told apart from garbage. */
static const char *const st_other_dtypes[] = {"BOOL", "U8",  "I8",  "F8_E5M2", "F8_E4M3", "F8_E8M0", "I16",     "U16",
                                              "I32",  "U32", "I64", "U64",     "F4",      "F6_E2M3", "F6_E3M2", "C64"};

static cvx_status st_parse_dtype(const char *path, const char *name, const char *s, cvx_dtype *out) {
    for (size_t i = 0; i < sizeof(st_read_dtypes) / sizeof(st_read_dtypes[0]); i++) {
        if (strcmp(s, st_read_dtypes[i].name) == 0) {
            *out = st_read_dtypes[i].dtype;
            return CVX_OK;
        }
    }
    for (size_t i = 0; i < sizeof(st_other_dtypes) / sizeof(st_other_dtypes[0]); i++)
        if (strcmp(s, st_other_dtypes[i]) == 0)
            return CVX_FAIL(CVX_ERR_IO,
                            "'%s': unsupported dtype '%s' for tensor '%s' (only F32, F16, BF16 and F64 are read)", path,
                            s, name);
    return CVX_FAIL(CVX_ERR_IO, "'%s': unknown dtype '%.40s' for tensor '%s'", path, s, name);
}

/* Reads a JSON array of non-negative integers; `what` names it ("shape", "data_offsets"). */
static cvx_status st_parse_uints(const char *path, const char *name, const char *what, const cvx_json *arr,
                                 size_t max_count, uint64_t *vals, size_t *count) {
    if (!arr) return CVX_FAIL(CVX_ERR_IO, "'%s': tensor '%s' has no \"%s\"", path, name, what);
    if (arr->type != CVX_JSON_ARRAY)
        return CVX_FAIL(CVX_ERR_IO, "'%s': \"%s\" of tensor '%s' is %s, not an array", path, what, name,
                        cvx_json_type_name(arr->type));
    if (arr->count > max_count)
        return CVX_FAIL(CVX_ERR_IO, "'%s': \"%s\" of tensor '%s' has %zu entries, at most %zu allowed", path, what,
                        name, arr->count, max_count);
    for (size_t i = 0; i < arr->count; i++) {
        const cvx_json *v = &arr->items[i];
        if (v->type != CVX_JSON_NUMBER || !v->is_int)
            return CVX_FAIL(CVX_ERR_IO, "'%s': \"%s\" of tensor '%s' holds a non-integer at index %zu", path, what,
                            name, i);
        if (v->integer < 0)
            return CVX_FAIL(CVX_ERR_IO, "'%s': \"%s\" of tensor '%s' holds a negative value %lld at index %zu", path,
                            what, name, (long long)v->integer, i);
        vals[i] = (uint64_t)v->integer;
    }
    *count = arr->count;
    return CVX_OK;
}

/* Checks one header entry against the data region [0, data_len) and fills e (except e->t.name). */
static cvx_status st_parse_entry(const char *path, const char *name, const cvx_json *info, uint64_t data_len,
                                 const char *data, st_entry *e) {
    if (info->type != CVX_JSON_OBJECT)
        return CVX_FAIL(CVX_ERR_IO, "'%s': entry of tensor '%s' is %s, not an object", path, name,
                        cvx_json_type_name(info->type));
    const cvx_json *dtype = cvx_json_get(info, "dtype");
    if (!dtype) return CVX_FAIL(CVX_ERR_IO, "'%s': tensor '%s' has no \"dtype\"", path, name);
    if (dtype->type != CVX_JSON_STRING)
        return CVX_FAIL(CVX_ERR_IO, "'%s': \"dtype\" of tensor '%s' is %s, not a string", path, name,
                        cvx_json_type_name(dtype->type));
    CVX_CHECK(st_parse_dtype(path, name, dtype->string, &e->t.dtype));

    uint64_t dims[CVX_ST_MAX_DIMS];
    size_t ndim;
    CVX_CHECK(st_parse_uints(path, name, "shape", cvx_json_get(info, "shape"), CVX_ST_MAX_DIMS, dims, &ndim));
    uint64_t numel = 1;
    for (size_t i = 0; i < ndim; i++)
        if (dims[i] == 0) numel = 0;
    for (size_t i = 0; i < ndim && numel != 0; i++) {
        if (dims[i] > UINT64_MAX / numel)
            return CVX_FAIL(CVX_ERR_IO, "'%s': shape of tensor '%s' overflows 64 bits", path, name);
        numel *= dims[i];
    }
    uint64_t elem = cvx_dtype_size(e->t.dtype);
    if (numel > UINT64_MAX / elem)
        return CVX_FAIL(CVX_ERR_IO, "'%s': byte size of tensor '%s' overflows 64 bits", path, name);

    uint64_t offsets[2];
    size_t noffsets;
    CVX_CHECK(st_parse_uints(path, name, "data_offsets", cvx_json_get(info, "data_offsets"), 2, offsets, &noffsets));
    if (noffsets != 2)
        return CVX_FAIL(CVX_ERR_IO, "'%s': \"data_offsets\" of tensor '%s' must have 2 entries, has %zu", path, name,
                        noffsets);
    uint64_t begin = offsets[0], end = offsets[1];
    if (end < begin)
        return CVX_FAIL(CVX_ERR_IO, "'%s': tensor '%s' ends (%llu) before it begins (%llu)", path, name,
                        (unsigned long long)end, (unsigned long long)begin);
    if (end > data_len)
        return CVX_FAIL(CVX_ERR_IO, "'%s': tensor '%s' ends at byte %llu past the data region of %llu bytes", path,
                        name, (unsigned long long)end, (unsigned long long)data_len);
    if (end - begin != numel * elem)
        return CVX_FAIL(CVX_ERR_IO, "'%s': tensor '%s' spans %llu bytes but its shape and dtype need %llu", path, name,
                        (unsigned long long)(end - begin), (unsigned long long)(numel * elem));

    e->t.ndim = (int)ndim;
    for (size_t i = 0; i < ndim; i++) e->t.shape[i] = (int64_t)dims[i];
    e->t.nbytes = end - begin;
    e->t.data = data + begin;
    e->begin = begin;
    e->end = end;
    return CVX_OK;
}

static int st_entry_by_begin(const void *a, const void *b) {
    const st_entry *x = a, *y = b;
    if (x->begin != y->begin) return x->begin < y->begin ? -1 : 1;
    return x->end < y->end ? -1 : x->end > y->end;
}

static int st_entry_by_name(const void *a, const void *b) {
    return strcmp(((const st_entry *)a)->t.name, ((const st_entry *)b)->t.name);
}

/* "__metadata__" is free-form, but the format defines it as a string-to-string map. */
static cvx_status st_check_metadata(const char *path, const cvx_json *meta) {
    if (meta->type != CVX_JSON_OBJECT)
        return CVX_FAIL(CVX_ERR_IO, "'%s': \"__metadata__\" is %s, not an object", path,
                        cvx_json_type_name(meta->type));
    for (size_t i = 0; i < meta->count; i++)
        if (meta->items[i].type != CVX_JSON_STRING)
            return CVX_FAIL(CVX_ERR_IO, "'%s': \"__metadata__\" value of '%s' is %s, not a string", path, meta->keys[i],
                            cvx_json_type_name(meta->items[i].type));
    return CVX_OK;
}

/* Builds s->entries and s->names from the parsed header. */
static cvx_status st_shard_load_entries(st_shard *s, const cvx_json *header, uint64_t data_len, const char *data) {
    size_t count = 0, names_bytes = 0;
    for (size_t i = 0; i < header->count; i++) {
        if (strcmp(header->keys[i], "__metadata__") == 0) {
            CVX_CHECK(st_check_metadata(s->path, &header->items[i]));
            continue;
        }
        count++;
        names_bytes += strlen(header->keys[i]) + 1;
    }
    if (count > (size_t)INT32_MAX) return CVX_FAIL(CVX_ERR_IO, "'%s': too many tensors (%zu)", s->path, count);
    s->entries = calloc(count ? count : 1, sizeof(*s->entries));
    s->names = malloc(names_bytes ? names_bytes : 1);
    if (!s->entries || !s->names) return CVX_FAIL(CVX_ERR_OOM, "out of memory reading the header of '%s'", s->path);

    char *name = s->names;
    for (size_t i = 0; i < header->count; i++) {
        if (strcmp(header->keys[i], "__metadata__") == 0) continue;
        st_entry *e = &s->entries[s->num_entries];
        size_t n = strlen(header->keys[i]) + 1;
        memcpy(name, header->keys[i], n);
        e->t.name = name;
        name += n;
        CVX_CHECK(st_parse_entry(s->path, e->t.name, &header->items[i], data_len, data, e));
        s->num_entries++;
    }

    /* Disjointness: in begin order, a range that overlaps any earlier one overlaps the latest non-empty one.
     * Empty tensors occupy no bytes and may sit anywhere. */
    qsort(s->entries, (size_t)s->num_entries, sizeof(*s->entries), st_entry_by_begin);
    const st_entry *prev = NULL;
    for (int i = 0; i < s->num_entries; i++) {
        const st_entry *e = &s->entries[i];
        if (e->begin == e->end) continue;
        if (prev && e->begin < prev->end)
            return CVX_FAIL(CVX_ERR_IO, "'%s': tensors '%s' [%llu, %llu) and '%s' [%llu, %llu) overlap", s->path,
                            prev->t.name, (unsigned long long)prev->begin, (unsigned long long)prev->end, e->t.name,
                            (unsigned long long)e->begin, (unsigned long long)e->end);
        prev = e;
    }
    /* Names are unique: the JSON parser rejects repeated keys. */
    qsort(s->entries, (size_t)s->num_entries, sizeof(*s->entries), st_entry_by_name);
    return CVX_OK;
}

/* Maps and checks one .safetensors file into s (zeroed on entry; release it with st_shard_release on failure). */
static cvx_status st_shard_open(st_shard *s, const char *path) {
    s->path = strdup(path);
    if (!s->path) return CVX_FAIL(CVX_ERR_OOM, "out of memory opening '%s'", path);
    CVX_CHECK(st_map_file(path, &s->map, &s->map_size));
    if (s->map_size < 8)
        return CVX_FAIL(CVX_ERR_IO, "'%s': file is %zu bytes, shorter than the 8-byte header length", path,
                        s->map_size);
    const unsigned char *bytes = s->map;
    uint64_t header_len = 0;
    for (int i = 7; i >= 0; i--) header_len = header_len << 8 | bytes[i]; /* little-endian u64 */
    if (header_len > ST_MAX_HEADER_BYTES)
        return CVX_FAIL(CVX_ERR_IO, "'%s': header length %llu is implausibly large (limit %llu)", path,
                        (unsigned long long)header_len, ST_MAX_HEADER_BYTES);
    if (header_len > s->map_size - 8)
        return CVX_FAIL(CVX_ERR_IO, "'%s': header length %llu runs past the end of the %zu-byte file", path,
                        (unsigned long long)header_len, s->map_size);

    char source[512];
    snprintf(source, sizeof(source), "the header of '%s'", path);
    cvx_json *header = NULL;
    CVX_CHECK(cvx_json_parse((const char *)bytes + 8, (size_t)header_len, source, &header));
    cvx_status st = CVX_OK;
    if (header->type != CVX_JSON_OBJECT)
        st = CVX_FAIL(CVX_ERR_IO, "'%s': header is %s, not a JSON object", path, cvx_json_type_name(header->type));
    else
        st = st_shard_load_entries(s, header, s->map_size - 8 - header_len, (const char *)bytes + 8 + header_len);
    cvx_json_free(header);
    return st;
}

static const st_entry *st_shard_find(const st_shard *s, const char *name) {
    st_entry key;
    key.t.name = name;
    return bsearch(&key, s->entries, (size_t)s->num_entries, sizeof(*s->entries), st_entry_by_name);
}

static int st_tensor_by_name(const void *a, const void *b) {
    return strcmp(((const cvx_st_tensor *)a)->name, ((const cvx_st_tensor *)b)->name);
}

static int st_ends_with(const char *s, const char *suffix) {
    size_t n = strlen(s), m = strlen(suffix);
    return n >= m && strcmp(s + n - m, suffix) == 0;
}

/* Shard file names are relative to the index's folder. */
static char *st_join_dir(const char *index_path, const char *file) {
    const char *slash = strrchr(index_path, '/');
    size_t dir_len = slash ? (size_t)(slash - index_path) + 1 : 0;
    size_t n = strlen(file);
    char *out = malloc(dir_len + n + 1);
    if (!out) return NULL;
    memcpy(out, index_path, dir_len);
    memcpy(out + dir_len, file, n + 1);
    return out;
}

/* Opens every distinct shard named in the weight map once, then takes each named tensor from its shard. */
static cvx_status st_open_index(cvx_st_file *f, const char *path) {
    void *map = NULL;
    size_t size = 0;
    cvx_json *index = NULL;
    int *shard_of = NULL; /* weight_map member i -> shard number */
    char source[512];
    cvx_status st;
    CVX_TRY(st_map_file(path, &map, &size));
    if (size > ST_MAX_INDEX_BYTES) {
        st = CVX_FAIL(CVX_ERR_IO, "'%s': index of %zu bytes is implausibly large", path, size);
        goto fail;
    }
    snprintf(source, sizeof(source), "'%s'", path);
    CVX_TRY(cvx_json_parse(map, size, source, &index));
    if (index->type != CVX_JSON_OBJECT) {
        st = CVX_FAIL(CVX_ERR_IO, "'%s': index is %s, not a JSON object", path, cvx_json_type_name(index->type));
        goto fail;
    }
    const cvx_json *wmap = cvx_json_get(index, "weight_map");
    if (!wmap || wmap->type != CVX_JSON_OBJECT) {
        st = CVX_FAIL(CVX_ERR_IO, "'%s': index has no \"weight_map\" object", path);
        goto fail;
    }
    if (wmap->count > (size_t)INT32_MAX) {
        st = CVX_FAIL(CVX_ERR_IO, "'%s': too many tensors (%zu)", path, wmap->count);
        goto fail;
    }
    shard_of = malloc((wmap->count ? wmap->count : 1) * sizeof(*shard_of));
    /* At most one shard per tensor: sizing for that avoids growing the array. */
    f->shards = calloc(wmap->count ? wmap->count : 1, sizeof(*f->shards));
    f->tensors = calloc(wmap->count ? wmap->count : 1, sizeof(*f->tensors));
    if (!shard_of || !f->shards || !f->tensors) {
        st = CVX_FAIL(CVX_ERR_OOM, "out of memory opening '%s'", path);
        goto fail;
    }

    for (size_t i = 0; i < wmap->count; i++) {
        const cvx_json *file = &wmap->items[i];
        if (file->type != CVX_JSON_STRING) {
            st = CVX_FAIL(CVX_ERR_IO, "'%s': weight_map entry of tensor '%s' is %s, not a file name", path,
                          wmap->keys[i], cvx_json_type_name(file->type));
            goto fail;
        }
        char *shard_path = st_join_dir(path, file->string);
        if (!shard_path) {
            st = CVX_FAIL(CVX_ERR_OOM, "out of memory opening '%s'", path);
            goto fail;
        }
        int k = 0; /* shards are few: a linear search is enough */
        while (k < f->num_shards && strcmp(f->shards[k].path, shard_path) != 0) k++;
        st = CVX_OK;
        if (k == f->num_shards) {
            f->num_shards++; /* counted before opening, so that cvx_st_close releases a half-opened shard */
            st = st_shard_open(&f->shards[k], shard_path);
        }
        free(shard_path);
        if (st != CVX_OK) goto fail;
        shard_of[i] = k;
    }

    for (size_t i = 0; i < wmap->count; i++) {
        const st_shard *s = &f->shards[shard_of[i]];
        const st_entry *e = st_shard_find(s, wmap->keys[i]);
        if (!e) {
            st = CVX_FAIL(CVX_ERR_IO, "'%s': tensor '%s' of the weight_map is missing from shard '%s'", path,
                          wmap->keys[i], s->path);
            goto fail;
        }
        f->tensors[f->num_tensors++] = e->t;
    }
    qsort(f->tensors, (size_t)f->num_tensors, sizeof(*f->tensors), st_tensor_by_name);
    st = CVX_OK;
fail:
    free(shard_of);
    cvx_json_free(index);
    if (map) munmap(map, size);
    return st;
}

static cvx_status st_open_single(cvx_st_file *f, const char *path) {
    f->shards = calloc(1, sizeof(*f->shards));
    if (!f->shards) return CVX_FAIL(CVX_ERR_OOM, "out of memory opening '%s'", path);
    f->num_shards = 1;
    const st_shard *s = &f->shards[0];
    CVX_CHECK(st_shard_open(&f->shards[0], path));
    f->tensors = calloc(s->num_entries ? (size_t)s->num_entries : 1, sizeof(*f->tensors));
    if (!f->tensors) return CVX_FAIL(CVX_ERR_OOM, "out of memory opening '%s'", path);
    for (int i = 0; i < s->num_entries; i++) f->tensors[i] = s->entries[i].t; /* already in name order */
    f->num_tensors = s->num_entries;
    return CVX_OK;
}

cvx_status cvx_st_open(const char *path, cvx_st_file **out) {
    *out = NULL;
    cvx_st_file *f = calloc(1, sizeof(*f));
    if (!f) return CVX_FAIL(CVX_ERR_OOM, "out of memory opening '%s'", path);
    /* any .json is an index: diffusers names a variant's "x.safetensors.index.fp16.json" */
    cvx_status st = st_ends_with(path, ".json") ? st_open_index(f, path) : st_open_single(f, path);
    if (st != CVX_OK) {
        cvx_st_close(f);
        return st;
    }
    *out = f;
    return CVX_OK;
}

void cvx_st_close(cvx_st_file *f) {
    if (!f) return;
    for (int i = 0; i < f->num_shards; i++) st_shard_release(&f->shards[i]);
    free(f->shards);
    free(f->tensors);
    free(f);
}

int cvx_st_count(const cvx_st_file *f) { return f ? f->num_tensors : 0; }

const cvx_st_tensor *cvx_st_at(const cvx_st_file *f, int i) {
    if (!f || i < 0 || i >= f->num_tensors) return NULL;
    return &f->tensors[i];
}

const cvx_st_tensor *cvx_st_find(const cvx_st_file *f, const char *name) {
    if (!f || !name) return NULL;
    cvx_st_tensor key;
    key.name = name;
    return bsearch(&key, f->tensors, (size_t)f->num_tensors, sizeof(*f->tensors), st_tensor_by_name);
}

/* Safetensors reading. A shard file is mapped read-only once; its header is read by a streaming JSON reader straight
 * into a table of tensors, each checked against the mapping (dtype, shape x dtype size = byte range, ranges
 * contiguous from the start of the data region to its end, as the reference implementation requires) before any
 * tensor is exposed. The only memory a header costs is that table and the tensors' names, both bounded by the
 * header's length. The checkpoint's tensor table is sorted by name so that cvx_st_find is a bsearch. */
#define _POSIX_C_SOURCE 200809L

#include "safetensors.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../mem/mem.h"
#include "json.h"

/* The reference implementation's bound (HeaderTooLarge): anything larger is a corrupt length, not a header. */
#define ST_MAX_HEADER_BYTES 100000000ull
#define ST_MAX_INDEX_BYTES 100000000ull
/* Released checkpoints have at most a few hundred shards; each shard is one mapping. */
#define ST_MAX_SHARDS 4096

typedef struct st_shard {
    char *path;
    dev_t dev; /* the file's identity, so that two names of one file map it once */
    ino_t ino;
    void *map; /* the whole file, read-only */
    size_t map_size;
    int pinned; /* 1: page-locked for copies to pinned_dev (cvx_st_pin), -1: pinning was refused, 0: not asked */
    cvx_device pinned_dev;
    cvx_st_tensor *entries; /* every tensor of the file, sorted by name */
    int num_entries;
    char *names; /* the entries' names, NUL-separated */
} st_shard;

struct cvx_st_file {
    st_shard *shards;
    int num_shards;
    cvx_st_tensor *tensors; /* sorted by name; names point into the shards */
    int num_tensors;
    int refs; /* cvx_st_open's reference plus one per cvx_st_retain */
};

static const char *st_file_kind(mode_t mode) {
    if (S_ISDIR(mode)) return "a directory";
    if (S_ISFIFO(mode)) return "a FIFO";
    if (S_ISSOCK(mode)) return "a socket";
    if (S_ISCHR(mode)) return "a character device";
    if (S_ISBLK(mode)) return "a block device";
    return "not a regular file";
}

/* Checks that `path` names a regular file before anything opens it: opening a FIFO for reading blocks until a
 * writer comes, and a device may have side effects. */
static cvx_status st_stat_regular(const char *path, struct stat *sb) {
    if (stat(path, sb) != 0) return CVX_FAIL(CVX_ERR_IO, "cannot open '%s': %s", path, strerror(errno));
    if (!S_ISREG(sb->st_mode))
        return CVX_FAIL(CVX_ERR_IO, "'%s' is %s, not a regular file", path, st_file_kind(sb->st_mode));
    return CVX_OK;
}

/* Maps a whole regular file. An empty file gives map NULL, size 0 (mmap refuses length 0). */
static cvx_status st_map_file(const char *path, void **map, size_t *size, struct stat *sb) {
    *map = NULL;
    *size = 0;
    CVX_CHECK(st_stat_regular(path, sb));
    /* O_NONBLOCK: a FIFO put in the file's place after the stat cannot block the open either. */
    int fd = open(path, O_RDONLY | O_NONBLOCK | O_NOCTTY | O_CLOEXEC);
    if (fd < 0) return CVX_FAIL(CVX_ERR_IO, "cannot open '%s': %s", path, strerror(errno));
    cvx_status st = CVX_OK;
    if (fstat(fd, sb) != 0) {
        st = CVX_FAIL(CVX_ERR_IO, "cannot stat '%s': %s", path, strerror(errno));
    } else if (!S_ISREG(sb->st_mode)) {
        st = CVX_FAIL(CVX_ERR_IO, "'%s' is %s, not a regular file", path, st_file_kind(sb->st_mode));
    } else if ((uint64_t)sb->st_size > SIZE_MAX) {
        st = CVX_FAIL(CVX_ERR_IO, "'%s' is too large to map", path);
    } else if (sb->st_size > 0) {
        void *m = mmap(NULL, (size_t)sb->st_size, PROT_READ, MAP_PRIVATE, fd, 0);
        if (m == MAP_FAILED) {
            st = CVX_FAIL(CVX_ERR_IO, "cannot map '%s': %s", path, strerror(errno));
        } else {
            *map = m;
            *size = (size_t)sb->st_size;
        }
    }
    close(fd); /* the mapping keeps the file alive */
    return st;
}

static void st_shard_release(st_shard *s) {
    if (s->pinned == 1) cvx_mem_unpin(s->pinned_dev, s->map, s->map_size); /* registered ranges go before the pages */
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

/* Reads a JSON array of at most max_count non-negative integers; `what` names it ("shape", "data_offsets"). */
static cvx_status st_read_uints(cvx_json_reader *r, const char *path, const char *name, const char *what,
                                size_t max_count, uint64_t *vals, size_t *count) {
    cvx_json_type type;
    CVX_CHECK(cvx_json_peek(r, &type));
    if (type != CVX_JSON_ARRAY)
        return CVX_FAIL(CVX_ERR_IO, "'%s': \"%s\" of tensor '%s' is %s, not an array", path, what, name,
                        cvx_json_type_name(type));
    CVX_CHECK(cvx_json_enter(r));
    size_t n = 0;
    for (;; n++) {
        int more;
        CVX_CHECK(cvx_json_next(r, &more));
        if (!more) break;
        if (n >= max_count) { /* counted, not stored, for the message */
            CVX_CHECK(cvx_json_skip(r));
            continue;
        }
        CVX_CHECK(cvx_json_peek(r, &type));
        if (type != CVX_JSON_NUMBER)
            return CVX_FAIL(CVX_ERR_IO, "'%s': \"%s\" of tensor '%s' holds %s at index %zu, not an integer", path, what,
                            name, cvx_json_type_name(type), n);
        cvx_json_number v;
        CVX_CHECK(cvx_json_read_number(r, &v));
        if (!v.is_int)
            return CVX_FAIL(CVX_ERR_IO,
                            "'%s': \"%s\" of tensor '%s' holds a non-integer (or one past 2^63) at index %zu", path,
                            what, name, n);
        if (v.integer < 0)
            return CVX_FAIL(CVX_ERR_IO, "'%s': \"%s\" of tensor '%s' holds a negative value %lld at index %zu", path,
                            what, name, (long long)v.integer, n);
        vals[n] = (uint64_t)v.integer;
    }
    if (n > max_count)
        return CVX_FAIL(CVX_ERR_IO, "'%s': \"%s\" of tensor '%s' has %zu entries, at most %zu allowed", path, what,
                        name, n, max_count);
    *count = n;
    return CVX_OK;
}

/* Reads one header entry, {"dtype": ..., "shape": [...], "data_offsets": [begin, end]}, and checks it against the
 * data region [0, data_len). Other members are skipped, as the reference implementation does. */
static cvx_status st_read_entry(cvx_json_reader *r, const char *path, const char *name, uint64_t data_len,
                                const char *data, cvx_st_tensor *t) {
    cvx_json_type type;
    CVX_CHECK(cvx_json_peek(r, &type));
    if (type != CVX_JSON_OBJECT)
        return CVX_FAIL(CVX_ERR_IO, "'%s': entry of tensor '%s' is %s, not an object", path, name,
                        cvx_json_type_name(type));
    CVX_CHECK(cvx_json_enter(r));
    char key[64], dtype[32];
    int have_dtype = 0, have_shape = 0, have_offsets = 0;
    uint64_t dims[CVX_ST_MAX_DIMS], offsets[2];
    size_t ndim = 0, noffsets = 0;
    for (;;) {
        int more, *seen = NULL;
        CVX_CHECK(cvx_json_next_member(r, key, sizeof(key), NULL, &more));
        if (!more) break;
        if (strcmp(key, "dtype") == 0)
            seen = &have_dtype;
        else if (strcmp(key, "shape") == 0)
            seen = &have_shape;
        else if (strcmp(key, "data_offsets") == 0)
            seen = &have_offsets;
        if (!seen) {
            CVX_CHECK(cvx_json_skip(r));
            continue;
        }
        if (*seen) return CVX_FAIL(CVX_ERR_IO, "'%s': tensor '%s' has two \"%s\" members", path, name, key);
        *seen = 1;
        if (seen == &have_dtype) {
            CVX_CHECK(cvx_json_peek(r, &type));
            if (type != CVX_JSON_STRING)
                return CVX_FAIL(CVX_ERR_IO, "'%s': \"dtype\" of tensor '%s' is %s, not a string", path, name,
                                cvx_json_type_name(type));
            CVX_CHECK(cvx_json_read_string(r, dtype, sizeof(dtype), NULL));
        } else if (seen == &have_shape) {
            CVX_CHECK(st_read_uints(r, path, name, "shape", CVX_ST_MAX_DIMS, dims, &ndim));
        } else {
            CVX_CHECK(st_read_uints(r, path, name, "data_offsets", 2, offsets, &noffsets));
        }
    }
    const char *missing = !have_dtype ? "dtype" : !have_shape ? "shape" : !have_offsets ? "data_offsets" : NULL;
    if (missing) return CVX_FAIL(CVX_ERR_IO, "'%s': tensor '%s' has no \"%s\"", path, name, missing);
    CVX_CHECK(st_parse_dtype(path, name, dtype, &t->dtype));

    uint64_t numel = 1;
    for (size_t i = 0; i < ndim; i++)
        if (dims[i] == 0) numel = 0;
    for (size_t i = 0; i < ndim && numel != 0; i++) {
        if (dims[i] > UINT64_MAX / numel)
            return CVX_FAIL(CVX_ERR_IO, "'%s': shape of tensor '%s' overflows 64 bits", path, name);
        numel *= dims[i];
    }
    uint64_t elem = cvx_dtype_size(t->dtype);
    if (numel > UINT64_MAX / elem)
        return CVX_FAIL(CVX_ERR_IO, "'%s': byte size of tensor '%s' overflows 64 bits", path, name);
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

    t->name = name;
    t->ndim = (int)ndim;
    for (size_t i = 0; i < ndim; i++) t->shape[i] = (int64_t)dims[i];
    t->nbytes = end - begin;
    t->data = data + begin;
    return CVX_OK;
}

/* "__metadata__" is free-form, but the format defines it as a string-to-string map. */
static cvx_status st_check_metadata(cvx_json_reader *r, const char *path) {
    cvx_json_type type;
    CVX_CHECK(cvx_json_peek(r, &type));
    if (type != CVX_JSON_OBJECT)
        return CVX_FAIL(CVX_ERR_IO, "'%s': \"__metadata__\" is %s, not an object", path, cvx_json_type_name(type));
    CVX_CHECK(cvx_json_enter(r));
    for (;;) {
        int more;
        CVX_CHECK(cvx_json_next_member(r, NULL, 0, NULL, &more));
        if (!more) return CVX_OK;
        CVX_CHECK(cvx_json_peek(r, &type));
        if (type != CVX_JSON_STRING)
            return CVX_FAIL(CVX_ERR_IO, "'%s': a \"__metadata__\" value (header byte %zu) is %s, not a string", path,
                            r->pos, cvx_json_type_name(type));
        CVX_CHECK(cvx_json_skip(r));
    }
}

static cvx_status st_enter_root(cvx_json_reader *r, const char *path, const char *what) {
    cvx_json_type type;
    CVX_CHECK(cvx_json_peek(r, &type));
    if (type != CVX_JSON_OBJECT)
        return CVX_FAIL(CVX_ERR_IO, "'%s': %s is %s, not a JSON object", path, what, cvx_json_type_name(type));
    return cvx_json_enter(r);
}

static uint64_t st_offset(const cvx_st_tensor *t, const char *data) { return (uint64_t)((const char *)t->data - data); }

static int st_tensor_by_offset(const void *a, const void *b) {
    const cvx_st_tensor *x = a, *y = b;
    if (x->data != y->data) return (const char *)x->data < (const char *)y->data ? -1 : 1;
    return x->nbytes < y->nbytes ? -1 : x->nbytes > y->nbytes;
}

static int st_tensor_by_name(const void *a, const void *b) {
    return strcmp(((const cvx_st_tensor *)a)->name, ((const cvx_st_tensor *)b)->name);
}

/* Names are unique, and the reference implementation's layout rule holds: in offset order, each tensor starts where the
 * previous one ended, the first at 0, and the last ends at the end of the file. A gap, an overlap or trailing bytes
 * means the header does not describe the file: a header length off by one byte, for instance, would otherwise shift
 * every weight. */
static cvx_status st_check_names_and_layout(const st_shard *s, uint64_t header_len, uint64_t data_len,
                                            const char *data) {
    /* Names first: a name given twice would otherwise be reported as a tensor overlapping itself. */
    qsort(s->entries, (size_t)s->num_entries, sizeof(*s->entries), st_tensor_by_name);
    for (int i = 1; i < s->num_entries; i++)
        if (strcmp(s->entries[i - 1].name, s->entries[i].name) == 0)
            return CVX_FAIL(CVX_ERR_IO, "'%s': tensor '%s' appears twice in the header", s->path, s->entries[i].name);
    qsort(s->entries, (size_t)s->num_entries, sizeof(*s->entries), st_tensor_by_offset);
    uint64_t expected = 0;
    const cvx_st_tensor *prev = NULL;
    for (int i = 0; i < s->num_entries; i++) {
        const cvx_st_tensor *t = &s->entries[i];
        uint64_t begin = st_offset(t, data);
        if (begin < expected)
            return CVX_FAIL(CVX_ERR_IO, "'%s': tensor '%s' [%llu, %llu) overlaps tensor '%s', which ends at byte %llu",
                            s->path, t->name, (unsigned long long)begin, (unsigned long long)(begin + t->nbytes),
                            prev->name, (unsigned long long)expected);
        if (begin > expected)
            return CVX_FAIL(
                CVX_ERR_IO,
                "'%s': tensor '%s' begins at byte %llu of the data region, but the tensors before it end at "
                "byte %llu: the %llu bytes between belong to no tensor",
                s->path, t->name, (unsigned long long)begin, (unsigned long long)expected,
                (unsigned long long)(begin - expected));
        expected = begin + t->nbytes;
        prev = t;
    }
    if (expected != data_len)
        return CVX_FAIL(
            CVX_ERR_IO,
            "'%s': the tensors end at byte %llu of the data region, but the file holds %llu bytes after its "
            "%llu-byte header (a wrong header length, or trailing bytes)",
            s->path, (unsigned long long)expected, (unsigned long long)data_len, (unsigned long long)header_len);
    qsort(s->entries, (size_t)s->num_entries, sizeof(*s->entries), st_tensor_by_name);
    return CVX_OK;
}

/* Reads the header text[0, len) into s->entries and s->names. Two passes: the first counts the tensors, so that the
 * table is allocated once at its final size; every key, decoded and NUL-terminated, fits in the bytes it took in
 * the header, so `len` bytes hold all the names. */
static cvx_status st_read_header(st_shard *s, const char *text, size_t len, uint64_t data_len, const char *data) {
    char source[512];
    snprintf(source, sizeof(source), "the header of '%s'", s->path);
    s->names = malloc(len + 1);
    if (!s->names) return CVX_FAIL(CVX_ERR_OOM, "out of memory reading the header of '%s'", s->path);
    cvx_json_reader r;
    cvx_json_reader_init(&r, text, len, source);
    CVX_CHECK(st_enter_root(&r, s->path, "header"));
    size_t count = 0;
    for (;;) {
        int more;
        CVX_CHECK(cvx_json_next_member(&r, s->names, len + 1, NULL, &more));
        if (!more) break;
        if (strcmp(s->names, "__metadata__") != 0) count++;
        CVX_CHECK(cvx_json_skip(&r));
    }
    CVX_CHECK(cvx_json_finish(&r));
    if (count > (size_t)INT32_MAX) return CVX_FAIL(CVX_ERR_IO, "'%s': too many tensors (%zu)", s->path, count);
    s->entries = calloc(count ? count : 1, sizeof(*s->entries));
    if (!s->entries) return CVX_FAIL(CVX_ERR_OOM, "out of memory reading the header of '%s'", s->path);

    cvx_json_reader_init(&r, text, len, source);
    CVX_CHECK(st_enter_root(&r, s->path, "header"));
    char *name = s->names;
    int have_metadata = 0;
    for (;;) {
        int more;
        size_t n;
        CVX_CHECK(cvx_json_next_member(&r, name, (size_t)(s->names + len + 1 - name), &n, &more));
        if (!more) break;
        if (strcmp(name, "__metadata__") == 0) {
            if (have_metadata) return CVX_FAIL(CVX_ERR_IO, "'%s': header has two \"__metadata__\" members", s->path);
            have_metadata = 1;
            CVX_CHECK(st_check_metadata(&r, s->path));
            continue;
        }
        if ((size_t)s->num_entries == count) /* the first pass counted this very text */
            return CVX_FAIL(CVX_ERR_INTERNAL, "'%s': header changed between passes", s->path);
        CVX_CHECK(st_read_entry(&r, s->path, name, data_len, data, &s->entries[s->num_entries]));
        s->num_entries++;
        name += n + 1;
    }
    CVX_CHECK(cvx_json_finish(&r));
    return st_check_names_and_layout(s, len, data_len, data);
}

/* Maps and checks one .safetensors file into s (zeroed on entry; release it with st_shard_release on failure). */
static cvx_status st_shard_open(st_shard *s, const char *path) {
    s->path = strdup(path);
    if (!s->path) return CVX_FAIL(CVX_ERR_OOM, "out of memory opening '%s'", path);
    struct stat sb;
    CVX_CHECK(st_map_file(path, &s->map, &s->map_size, &sb));
    s->dev = sb.st_dev;
    s->ino = sb.st_ino;
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
    return st_read_header(s, (const char *)bytes + 8, (size_t)header_len, s->map_size - 8 - header_len,
                          (const char *)bytes + 8 + header_len);
}

static const cvx_st_tensor *st_shard_find(const st_shard *s, const char *name) {
    cvx_st_tensor key;
    key.name = name;
    return bsearch(&key, s->entries, (size_t)s->num_entries, sizeof(*s->entries), st_tensor_by_name);
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

typedef struct st_ref { /* one weight_map member */
    const char *name;
    char *file; /* decoded, then normalised in place */
    int shard;
} st_ref;

/* One pass over the index text: counts the weight_map members into *count and, when refs is not NULL, stores them
 * (names and file names decoded into buf, which has the text's size: every decoded string fits in its JSON form). */
static cvx_status st_read_index(cvx_json_reader *r, const char *path, char *buf, size_t cap, st_ref *refs,
                                size_t *count) {
    CVX_CHECK(st_enter_root(r, path, "index"));
    size_t n = 0;
    int have_map = 0;
    char *at = buf; /* where the next string goes: it moves on only while storing */
    for (;;) {
        int more;
        CVX_CHECK(cvx_json_next_member(r, at, cap - (size_t)(at - buf), NULL, &more));
        if (!more) break;
        if (strcmp(at, "weight_map") != 0) {
            CVX_CHECK(cvx_json_skip(r));
            continue;
        }
        if (have_map) return CVX_FAIL(CVX_ERR_IO, "'%s': index has two \"weight_map\" members", path);
        have_map = 1;
        cvx_json_type type;
        CVX_CHECK(cvx_json_peek(r, &type));
        if (type != CVX_JSON_OBJECT)
            return CVX_FAIL(CVX_ERR_IO, "'%s': index's \"weight_map\" is %s, not an object", path,
                            cvx_json_type_name(type));
        CVX_CHECK(cvx_json_enter(r));
        for (;;) {
            size_t name_len, file_len;
            CVX_CHECK(cvx_json_next_member(r, at, cap - (size_t)(at - buf), &name_len, &more));
            if (!more) break;
            CVX_CHECK(cvx_json_peek(r, &type));
            if (type != CVX_JSON_STRING)
                return CVX_FAIL(CVX_ERR_IO, "'%s': weight_map entry of tensor '%s' is %s, not a file name", path, at,
                                cvx_json_type_name(type));
            char *file = at + name_len + 1;
            CVX_CHECK(cvx_json_read_string(r, file, cap - (size_t)(file - buf), &file_len));
            if (refs) {
                refs[n].name = at;
                refs[n].file = file;
                at = file + file_len + 1;
            }
            n++;
        }
    }
    CVX_CHECK(cvx_json_finish(r));
    if (!have_map) return CVX_FAIL(CVX_ERR_IO, "'%s': index has no \"weight_map\" object", path);
    *count = n;
    return CVX_OK;
}

/* Shard names are relative to the index's folder and stay inside it. Normalises `file` in place ("./a//b" -> "a/b")
 * so that one file named several ways is opened once; refuses absolute names and ".." parts. */
static cvx_status st_normalise_shard_name(const char *path, const char *tensor, char *file) {
    if (file[0] == '/')
        return CVX_FAIL(CVX_ERR_IO,
                        "'%s': shard '%s' of tensor '%s' is an absolute path (shards must be inside the "
                        "index's folder)",
                        path, file, tensor);
    char *out = file;
    const char *p = file;
    for (;;) {
        while (*p == '/') p++;
        const char *part = p;
        while (*p && *p != '/') p++;
        size_t n = (size_t)(p - part);
        if (n == 0) break;
        if (n == 1 && part[0] == '.') continue;
        if (n == 2 && part[0] == '.' && part[1] == '.')
            return CVX_FAIL(CVX_ERR_IO,
                            "'%s': shard of tensor '%s' is named with '..' (shards must be inside the "
                            "index's folder)",
                            path, tensor);
        if (out != file) *out++ = '/';
        memmove(out, part, n);
        out += n;
    }
    *out = '\0';
    if (out == file) return CVX_FAIL(CVX_ERR_IO, "'%s': weight_map entry of tensor '%s' names no file", path, tensor);
    return CVX_OK;
}

static int st_ref_by_file(const void *a, const void *b) {
    return strcmp(((const st_ref *)a)->file, ((const st_ref *)b)->file);
}

/* Opens the shard named by a (normalised) file name, or finds it among those already open (one file may have
 * several names through symbolic links, as in the Hugging Face cache). Returns its number in *k. */
static cvx_status st_index_shard(cvx_st_file *f, const char *path, const char *file, int *k) {
    char *shard_path = st_join_dir(path, file);
    if (!shard_path) return CVX_FAIL(CVX_ERR_OOM, "out of memory opening '%s'", path);
    struct stat sb;
    cvx_status st = st_stat_regular(shard_path, &sb);
    if (st == CVX_OK) {
        for (*k = 0; *k < f->num_shards; (*k)++)
            if (f->shards[*k].dev == sb.st_dev && f->shards[*k].ino == sb.st_ino) break;
        if (*k == f->num_shards) {
            f->num_shards++; /* counted before opening, so that cvx_st_close releases a half-opened shard */
            st = st_shard_open(&f->shards[*k], shard_path);
        }
    }
    free(shard_path);
    return st;
}

/* Opens every distinct shard named in the weight map once, then takes each named tensor from its shard. */
static cvx_status st_open_index(cvx_st_file *f, const char *path) {
    void *map = NULL;
    size_t size = 0, count = 0, num_files = 0;
    char *buf = NULL;
    st_ref *refs = NULL;
    char source[512];
    struct stat sb;
    cvx_json_reader r;
    cvx_status st;
    CVX_TRY(st_map_file(path, &map, &size, &sb));
    if (size > ST_MAX_INDEX_BYTES) {
        st = CVX_FAIL(CVX_ERR_IO, "'%s': index of %zu bytes is implausibly large", path, size);
        goto fail;
    }
    snprintf(source, sizeof(source), "'%s'", path);
    buf = malloc(size + 1);
    if (!buf) {
        st = CVX_FAIL(CVX_ERR_OOM, "out of memory opening '%s'", path);
        goto fail;
    }
    cvx_json_reader_init(&r, map, size, source);
    CVX_TRY(st_read_index(&r, path, buf, size + 1, NULL, &count));
    if (count > (size_t)INT32_MAX) {
        st = CVX_FAIL(CVX_ERR_IO, "'%s': too many tensors (%zu)", path, count);
        goto fail;
    }
    refs = calloc(count ? count : 1, sizeof(*refs));
    f->tensors = calloc(count ? count : 1, sizeof(*f->tensors));
    if (!refs || !f->tensors) {
        st = CVX_FAIL(CVX_ERR_OOM, "out of memory opening '%s'", path);
        goto fail;
    }
    cvx_json_reader_init(&r, map, size, source);
    CVX_TRY(st_read_index(&r, path, buf, size + 1, refs, &count));

    for (size_t i = 0; i < count; i++) CVX_TRY(st_normalise_shard_name(path, refs[i].name, refs[i].file));
    qsort(refs, count, sizeof(*refs), st_ref_by_file);
    for (size_t i = 0; i < count; i++) num_files += i == 0 || strcmp(refs[i - 1].file, refs[i].file) != 0;
    if (num_files > ST_MAX_SHARDS) {
        st = CVX_FAIL(CVX_ERR_IO, "'%s': index names %zu shard files, more than the %d allowed", path, num_files,
                      ST_MAX_SHARDS);
        goto fail;
    }
    f->shards = calloc(num_files ? num_files : 1, sizeof(*f->shards));
    if (!f->shards) {
        st = CVX_FAIL(CVX_ERR_OOM, "out of memory opening '%s'", path);
        goto fail;
    }
    for (size_t i = 0; i < count; i++) {
        if (i > 0 && strcmp(refs[i - 1].file, refs[i].file) == 0)
            refs[i].shard = refs[i - 1].shard;
        else
            CVX_TRY(st_index_shard(f, path, refs[i].file, &refs[i].shard));
        const st_shard *s = &f->shards[refs[i].shard];
        const cvx_st_tensor *t = st_shard_find(s, refs[i].name);
        if (!t) {
            st = CVX_FAIL(CVX_ERR_IO, "'%s': tensor '%s' of the weight_map is missing from shard '%s'", path,
                          refs[i].name, s->path);
            goto fail;
        }
        f->tensors[f->num_tensors++] = *t;
    }
    qsort(f->tensors, (size_t)f->num_tensors, sizeof(*f->tensors), st_tensor_by_name);
    for (int i = 1; i < f->num_tensors; i++) {
        if (strcmp(f->tensors[i - 1].name, f->tensors[i].name) == 0) {
            st = CVX_FAIL(CVX_ERR_IO, "'%s': tensor '%s' appears twice in the weight_map", path, f->tensors[i].name);
            goto fail;
        }
    }
    st = CVX_OK;
fail:
    free(refs);
    free(buf);
    if (map) munmap(map, size);
    return st;
}

static cvx_status st_open_single(cvx_st_file *f, const char *path) {
    f->shards = calloc(1, sizeof(*f->shards));
    if (!f->shards) return CVX_FAIL(CVX_ERR_OOM, "out of memory opening '%s'", path);
    f->num_shards = 1;
    st_shard *s = &f->shards[0];
    CVX_CHECK(st_shard_open(s, path));
    f->tensors = s->entries; /* already in name order: the checkpoint's table is the shard's */
    f->num_tensors = s->num_entries;
    s->entries = NULL;
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
    f->refs = 1;
    *out = f;
    return CVX_OK;
}

void cvx_st_retain(cvx_st_file *f) {
    if (f) __atomic_fetch_add(&f->refs, 1, __ATOMIC_RELAXED);
}

void cvx_st_close(cvx_st_file *f) {
    if (!f) return;
    if (f->refs > 0 && __atomic_sub_fetch(&f->refs, 1, __ATOMIC_ACQ_REL) > 0) return;
    for (int i = 0; i < f->num_shards; i++) st_shard_release(&f->shards[i]);
    free(f->shards);
    free(f->tensors);
    free(f);
}

/* Shards are pinned once each (a registered range must not be registered again), whoever asks first. */
static pthread_mutex_t st_pin_lock = PTHREAD_MUTEX_INITIALIZER;

int64_t cvx_st_pin(cvx_st_file *f, cvx_device dev, int *all) {
    int64_t pinned = 0;
    int every = 1;
    pthread_mutex_lock(&st_pin_lock);
    for (int i = 0; f && i < f->num_shards; i++) {
        st_shard *s = &f->shards[i];
        if (!s->map) continue;
        if (!s->pinned) {
            s->pinned = cvx_mem_pin(dev, s->map, s->map_size, 1) ? 1 : -1;
            s->pinned_dev = dev;
        }
        if (s->pinned == 1 && s->pinned_dev == dev)
            pinned += (int64_t)s->map_size;
        else
            every = 0;
    }
    pthread_mutex_unlock(&st_pin_lock);
    if (all) *all = every;
    return pinned;
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

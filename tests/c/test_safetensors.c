/* Safetensors reading on files this test writes itself: a valid single file with F32/F16/BF16 tensors, a sharded
 * checkpoint, and one file per malformation, each of which must fail with CVX_ERR_IO, name the file (and tensor),
 * and leave no file descriptor open and no mapping behind. */
#define _POSIX_C_SOURCE 200809L

#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../../csrc/io/safetensors.h"
#include "cvx_test.h"

static char tmp_dir[256];
static char *written[128]; /* every file this test created, removed at the end */
static int num_written;

static void tmp_path(char *out, size_t n, const char *name) { snprintf(out, n, "%s/%s", tmp_dir, name); }

static void write_raw(const char *name, const void *bytes, size_t len) {
    char path[512];
    tmp_path(path, sizeof(path), name);
    FILE *fp = fopen(path, "wb");
    int ok = fp && fwrite(bytes, 1, len, fp) == len;
    if (fp) ok = fclose(fp) == 0 && ok;
    CVX_EXPECT(ok, "cannot write %s", path);
    if (num_written < (int)(sizeof(written) / sizeof(written[0]))) written[num_written++] = strdup(path);
}

/* 8-byte little-endian header length, the header padded with spaces to a multiple of 8 (as the reference writer
 * does, which keeps the data region aligned), then the data. */
static void write_st(const char *name, const char *header, const void *data, size_t data_len) {
    size_t h = strlen(header), padded = (h + 7) / 8 * 8;
    unsigned char *buf = calloc(1, 8 + padded + data_len);
    if (!buf) return;
    for (int i = 0; i < 8; i++) buf[i] = (unsigned char)((uint64_t)padded >> (8 * i));
    memcpy(buf + 8, header, h);
    memset(buf + 8 + h, ' ', padded - h);
    if (data_len) memcpy(buf + 8 + padded, data, data_len);
    write_raw(name, buf, 8 + padded + data_len);
    free(buf);
}

static int count_open_fds(void) {
    DIR *d = opendir("/proc/self/fd");
    if (!d) return -1;
    int n = 0;
    while (readdir(d)) n++;
    closedir(d);
    return n;
}

/* Mappings of files in the temp folder: must be zero whenever no checkpoint is open. */
static int count_tmp_mappings(void) {
    FILE *fp = fopen("/proc/self/maps", "r");
    if (!fp) return -1;
    char line[1024];
    int n = 0;
    while (fgets(line, sizeof(line), fp))
        if (strstr(line, tmp_dir)) n++;
    fclose(fp);
    return n;
}

static float read_f32(const void *data, int i) {
    float v;
    memcpy(&v, (const char *)data + 4 * i, 4);
    return v;
}

static uint16_t read_u16(const void *data, int i) {
    uint16_t v;
    memcpy(&v, (const char *)data + 2 * i, 2);
    return v;
}

static const cvx_st_tensor *expect_tensor(const cvx_st_file *f, const char *name, cvx_dtype dt, int ndim,
                                          const int64_t *shape, uint64_t nbytes) {
    const cvx_st_tensor *t = cvx_st_find(f, name);
    if (!CVX_EXPECT(t != NULL, "tensor '%s' not found", name)) return NULL;
    CVX_EXPECT(strcmp(t->name, name) == 0, "found '%s' for '%s'", t->name, name);
    CVX_EXPECT(t->dtype == dt, "'%s': dtype %s, want %s", name, cvx_dtype_name(t->dtype), cvx_dtype_name(dt));
    CVX_EXPECT(t->ndim == ndim, "'%s': ndim %d, want %d", name, t->ndim, ndim);
    for (int i = 0; i < ndim && i < t->ndim; i++)
        CVX_EXPECT(t->shape[i] == shape[i], "'%s': shape[%d] = %lld, want %lld", name, i, (long long)t->shape[i],
                   (long long)shape[i]);
    CVX_EXPECT(t->nbytes == nbytes, "'%s': nbytes %llu, want %llu", name, (unsigned long long)t->nbytes,
               (unsigned long long)nbytes);
    return t;
}

static void expect_sorted(const cvx_st_file *f) {
    int n = cvx_st_count(f), sorted = 1;
    for (int i = 1; i < n; i++) sorted &= strcmp(cvx_st_at(f, i - 1)->name, cvx_st_at(f, i)->name) < 0;
    CVX_EXPECT(sorted, "cvx_st_at does not list the tensors in name order");
    CVX_EXPECT(cvx_st_at(f, -1) == NULL && cvx_st_at(f, n) == NULL, "cvx_st_at out of range is not NULL");
}

static void test_valid_single(void) {
    /* data region: w [0,24) f32 2x3, b [24,32) f16 4, e [32,40) bf16 2x2, s [40,44) f32 scalar,
     * empty [44,44) f32 0x4, u [44,46) f16 1 */
    unsigned char data[46];
    for (int i = 0; i < 6; i++) {
        float v = 0.5f * (float)i - 1.0f;
        memcpy(data + 4 * i, &v, 4);
    }
    const uint16_t f16[4] = {0x3c00, 0xc100, 0x2e66, 0x7bff};  /* 1, -2.5, 0.0999755859375, 65504 */
    const uint16_t bf16[4] = {0x3f80, 0xbf80, 0x4049, 0x3a83}; /* 1, -1, 3.140625, 0.00099945068359375 */
    memcpy(data + 24, f16, 8);
    memcpy(data + 32, bf16, 8);
    const float scalar = 42.0f;
    memcpy(data + 40, &scalar, 4);
    const uint16_t one = 0x3c00;
    memcpy(data + 44, &one, 2);
    write_st("valid.safetensors",
             "{\"__metadata__\": {\"format\": \"pt\"},"
             " \"w\": {\"dtype\": \"F32\", \"shape\": [2, 3], \"data_offsets\": [0, 24]},"
             " \"b\": {\"dtype\": \"F16\", \"shape\": [4], \"data_offsets\": [24, 32]},"
             " \"e\": {\"data_offsets\": [32, 40], \"shape\": [2, 2], \"dtype\": \"BF16\", \"extra\": [1]},"
             " \"s\": {\"dtype\": \"F32\", \"shape\": [], \"data_offsets\": [40, 44]},"
             " \"empty\": {\"dtype\": \"F32\", \"shape\": [0, 4], \"data_offsets\": [44, 44]},"
             " \"caf\\u00e9.\\ud83d\\ude00\": {\"dtype\": \"F16\", \"shape\": [1], \"data_offsets\": [44, 46]}}",
             data, sizeof(data));

    char path[512];
    tmp_path(path, sizeof(path), "valid.safetensors");
    cvx_st_file *f = NULL;
    cvx_error_clear();
    cvx_status st = cvx_st_open(path, &f);
    if (!CVX_EXPECT(st == CVX_OK && f, "opening %s: %s", path, cvx_error_message())) return;
    CVX_EXPECT(cvx_st_count(f) == 6, "%d tensors, want 6 (__metadata__ is not one)", cvx_st_count(f));
    expect_sorted(f);

    const cvx_st_tensor *t = expect_tensor(f, "w", CVX_F32, 2, (const int64_t[]){2, 3}, 24);
    if (t)
        for (int i = 0; i < 6; i++)
            CVX_EXPECT(read_f32(t->data, i) == 0.5f * (float)i - 1.0f, "w[%d] = %g", i, (double)read_f32(t->data, i));
    const float f16_want[4] = {1.0f, -2.5f, 0.0999755859375f, 65504.0f};
    t = expect_tensor(f, "b", CVX_F16, 1, (const int64_t[]){4}, 8);
    if (t)
        for (int i = 0; i < 4; i++)
            CVX_EXPECT(cvx_f16_to_f32(read_u16(t->data, i)) == f16_want[i], "b[%d] = %g, want %g", i,
                       (double)cvx_f16_to_f32(read_u16(t->data, i)), (double)f16_want[i]);
    const float bf16_want[4] = {1.0f, -1.0f, 3.140625f, 0.00099945068359375f};
    t = expect_tensor(f, "e", CVX_BF16, 2, (const int64_t[]){2, 2}, 8);
    if (t)
        for (int i = 0; i < 4; i++)
            CVX_EXPECT(cvx_bf16_to_f32(read_u16(t->data, i)) == bf16_want[i], "e[%d] = %g, want %g", i,
                       (double)cvx_bf16_to_f32(read_u16(t->data, i)), (double)bf16_want[i]);
    t = expect_tensor(f, "s", CVX_F32, 0, NULL, 4);
    if (t) CVX_EXPECT(read_f32(t->data, 0) == 42.0f, "scalar = %g", (double)read_f32(t->data, 0));
    expect_tensor(f, "empty", CVX_F32, 2, (const int64_t[]){0, 4}, 0);
    t = expect_tensor(f, "caf\xc3\xa9.\xf0\x9f\x98\x80", CVX_F16, 1, (const int64_t[]){1}, 2);
    if (t) CVX_EXPECT(read_u16(t->data, 0) == 0x3c00, "unicode-named tensor holds 0x%04x", read_u16(t->data, 0));
    CVX_EXPECT(cvx_st_find(f, "missing") == NULL, "find of a missing name is not NULL");
    CVX_EXPECT(cvx_st_find(f, "__metadata__") == NULL, "__metadata__ is exposed as a tensor");
    cvx_st_close(f);
    cvx_st_close(NULL);

    /* no tensors at all is a valid checkpoint */
    write_st("empty.safetensors", "{}", NULL, 0);
    write_st("meta_only.safetensors", "{\"__metadata__\": {}}", NULL, 0);
    const char *empties[] = {"empty.safetensors", "meta_only.safetensors"};
    for (int i = 0; i < 2; i++) {
        tmp_path(path, sizeof(path), empties[i]);
        cvx_error_clear();
        st = cvx_st_open(path, &f);
        if (!CVX_EXPECT(st == CVX_OK, "%s: %s", empties[i], cvx_error_message())) continue;
        CVX_EXPECT(cvx_st_count(f) == 0 && cvx_st_at(f, 0) == NULL && cvx_st_find(f, "x") == NULL, "%s: %d tensors",
                   empties[i], cvx_st_count(f));
        cvx_st_close(f);
    }
}

static void test_many_tensors(void) {
    /* 1000 tensors written in reverse name order: the lookup table must not depend on header order */
    enum { N = 1000 };
    size_t cap = (size_t)N * 96, len = 0;
    char *header = malloc(cap);
    float *data = malloc(N * sizeof(float));
    if (!header || !data) goto done;
    len += (size_t)snprintf(header + len, cap - len, "{");
    for (int i = N - 1; i >= 0; i--) {
        data[i] = (float)i;
        len +=
            (size_t)snprintf(header + len, cap - len,
                             "%s\"blocks.%d.weight\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [%d, %d]}",
                             i == N - 1 ? "" : ",", i, 4 * i, 4 * i + 4);
    }
    snprintf(header + len, cap - len, "}");
    write_st("many.safetensors", header, data, N * sizeof(float));
    char path[512];
    tmp_path(path, sizeof(path), "many.safetensors");
    cvx_st_file *f = NULL;
    cvx_error_clear();
    if (!CVX_EXPECT(cvx_st_open(path, &f) == CVX_OK, "%s", cvx_error_message())) goto done;
    CVX_EXPECT(cvx_st_count(f) == N, "%d tensors, want %d", cvx_st_count(f), N);
    expect_sorted(f);
    int wrong = 0;
    for (int i = 0; i < N; i++) {
        char name[64];
        snprintf(name, sizeof(name), "blocks.%d.weight", i);
        const cvx_st_tensor *t = cvx_st_find(f, name);
        wrong += !t || read_f32(t->data, 0) != (float)i;
    }
    CVX_EXPECT(wrong == 0, "%d of %d tensors not found or with the wrong value", wrong, N);
    cvx_st_close(f);
done:
    free(header);
    free(data);
}

static void test_sharded(void) {
    const float a[2] = {1.5f, -2.0f};
    const uint16_t b = 0x4049; /* bf16 3.140625 */
    unsigned char d1[10];
    memcpy(d1, a, 8);
    memcpy(d1 + 8, &b, 2);
    write_st("model-00001-of-00002.safetensors",
             "{\"a\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [0, 8]},"
             " \"b\": {\"dtype\": \"BF16\", \"shape\": [1, 1], \"data_offsets\": [8, 10]}}",
             d1, sizeof(d1));
    const uint16_t c[3] = {0x3c00, 0x4000, 0x4200}; /* f16 1, 2, 3 */
    const float extra = 7.0f;
    unsigned char d2[10];
    memcpy(d2, &extra, 4);
    memcpy(d2 + 4, c, 6);
    write_st("model-00002-of-00002.safetensors",
             "{\"extra\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [0, 4]},"
             " \"c\": {\"dtype\": \"F16\", \"shape\": [3], \"data_offsets\": [4, 10]}}",
             d2, sizeof(d2));
    const char *index = "{\"metadata\": {\"total_size\": 20},"
                        " \"weight_map\": {\"c\": \"model-00002-of-00002.safetensors\","
                        " \"a\": \"model-00001-of-00002.safetensors\", \"b\": \"model-00001-of-00002.safetensors\"}}";
    write_raw("model.safetensors.index.json", index, strlen(index));

    char path[512];
    tmp_path(path, sizeof(path), "model.safetensors.index.json");
    cvx_st_file *f = NULL;
    cvx_error_clear();
    cvx_status st = cvx_st_open(path, &f);
    if (!CVX_EXPECT(st == CVX_OK && f, "opening %s: %s", path, cvx_error_message())) return;
    CVX_EXPECT(cvx_st_count(f) == 3, "%d tensors, want the 3 of the weight_map", cvx_st_count(f));
    CVX_EXPECT(count_tmp_mappings() == 2, "%d mappings, want one per shard", count_tmp_mappings());
    expect_sorted(f);
    const cvx_st_tensor *t = expect_tensor(f, "a", CVX_F32, 1, (const int64_t[]){2}, 8);
    if (t) CVX_EXPECT(read_f32(t->data, 0) == 1.5f && read_f32(t->data, 1) == -2.0f, "a holds the wrong values");
    t = expect_tensor(f, "b", CVX_BF16, 2, (const int64_t[]){1, 1}, 2);
    if (t) CVX_EXPECT(cvx_bf16_to_f32(read_u16(t->data, 0)) == 3.140625f, "b holds the wrong value");
    t = expect_tensor(f, "c", CVX_F16, 1, (const int64_t[]){3}, 6);
    if (t)
        for (int i = 0; i < 3; i++)
            CVX_EXPECT(cvx_f16_to_f32(read_u16(t->data, i)) == (float)(i + 1), "c[%d] wrong", i);
    CVX_EXPECT(cvx_st_find(f, "extra") == NULL, "a tensor outside the weight_map is exposed");
    cvx_st_close(f);

    const char *empty_index = "{\"weight_map\": {}}";
    write_raw("empty.safetensors.index.json", empty_index, strlen(empty_index));
    tmp_path(path, sizeof(path), "empty.safetensors.index.json");
    cvx_error_clear();
    st = cvx_st_open(path, &f);
    if (CVX_EXPECT(st == CVX_OK, "empty weight_map: %s", cvx_error_message())) {
        CVX_EXPECT(cvx_st_count(f) == 0, "empty weight_map gives %d tensors", cvx_st_count(f));
        cvx_st_close(f);
    }
}

/* Opens `name` (in the temp folder, or as given when it starts with '/') and expects CVX_ERR_IO with a message
 * naming the file at fault (`culprit`, default `name`: a shard's own errors name the shard, not the index) and
 * containing `needle`, and nothing left open or mapped. */
static void expect_io_error_in(const char *name, const char *culprit, const char *needle) {
    char path[512], culprit_path[512];
    if (name[0] == '/')
        snprintf(path, sizeof(path), "%s", name);
    else
        tmp_path(path, sizeof(path), name);
    if (culprit)
        tmp_path(culprit_path, sizeof(culprit_path), culprit);
    else
        snprintf(culprit_path, sizeof(culprit_path), "%s", path);
    int fds = count_open_fds();
    cvx_st_file *f = (cvx_st_file *)&f; /* any non-NULL value: open must reset it */
    cvx_error_clear();
    cvx_status st = cvx_st_open(path, &f);
    const char *msg = cvx_error_message();
    CVX_EXPECT(st == CVX_ERR_IO, "%s: status %s, want i/o error (%s)", name, cvx_status_name(st), msg);
    CVX_EXPECT(f == NULL, "%s: output not reset to NULL", name);
    CVX_EXPECT(strstr(msg, culprit_path) != NULL, "%s: message does not name %s: %s", name, culprit_path, msg);
    CVX_EXPECT(strstr(msg, needle) != NULL, "%s: message lacks \"%s\": %s", name, needle, msg);
    CVX_EXPECT(count_open_fds() == fds, "%s: %d file descriptors leaked", name, count_open_fds() - fds);
    CVX_EXPECT(count_tmp_mappings() == 0, "%s: %d mappings left behind", name, count_tmp_mappings());
    if (st == CVX_OK) cvx_st_close(f);
    printf("  %-26s -> %s\n", name, msg);
}

static void expect_io_error(const char *name, const char *needle) { expect_io_error_in(name, NULL, needle); }

/* One tensor entry "x" with the given body, and `data_len` zero bytes of data. */
static void write_entry(const char *name, const char *body, size_t data_len) {
    char header[1024];
    snprintf(header, sizeof(header), "{\"x\": %s}", body);
    unsigned char zeros[64] = {0};
    write_st(name, header, zeros, data_len);
}

static void test_invalid_single(void) {
    write_raw("zero.safetensors", "", 0);
    expect_io_error("zero.safetensors", "shorter than the 8-byte");
    write_raw("five.safetensors", "\x10\0\0\0\0", 5);
    expect_io_error("five.safetensors", "shorter than the 8-byte");
    write_raw("past_end.safetensors", "\x64\0\0\0\0\0\0\0{}        ", 18); /* claims 100 header bytes, has 10 */
    expect_io_error("past_end.safetensors", "past the end");
    write_raw("huge_len.safetensors", "\0\0\0\0\0\0\0\x40{}", 10); /* 2^62 */
    expect_io_error("huge_len.safetensors", "implausibly large");
    write_st("not_json.safetensors", "{\"x\": {\"dtype\": ", NULL, 0);
    expect_io_error("not_json.safetensors", "malformed JSON");
    write_st("trailing.safetensors", "{} x", NULL, 0);
    expect_io_error("trailing.safetensors", "malformed JSON");
    write_st("array.safetensors", "[1, 2]", NULL, 0);
    expect_io_error("array.safetensors", "header is an array, not a JSON object");
    write_st("bad_name.safetensors", "{\"\\ud800\": {}}", NULL, 0);
    expect_io_error("bad_name.safetensors", "surrogate");
    write_st("bad_utf8.safetensors", "{\"\xff\": {}}", NULL, 0);
    expect_io_error("bad_utf8.safetensors", "invalid UTF-8");
    char deep[200]; /* 70 nested arrays in an ignored member of the entry */
    int n = snprintf(deep, sizeof(deep), "{\"x\": {\"extra\": ");
    for (int i = 0; i < 70; i++) deep[n + i] = '[', deep[n + 70 + i] = ']';
    snprintf(deep + n + 140, sizeof(deep) - (size_t)(n + 140), "}}");
    write_st("deep.safetensors", deep, NULL, 0);
    expect_io_error("deep.safetensors", "nesting deeper");

    struct {
        const char *file, *body;
        size_t data_len;
        const char *needle;
    } cases[] = {
        {"entry_number.safetensors", "3", 0, "entry of tensor 'x' is a number, not an object"},
        {"no_dtype.safetensors", "{\"shape\": [1], \"data_offsets\": [0, 4]}", 4, "tensor 'x' has no \"dtype\""},
        {"no_shape.safetensors", "{\"dtype\": \"F32\", \"data_offsets\": [0, 4]}", 4, "tensor 'x' has no \"shape\""},
        {"no_offsets.safetensors", "{\"dtype\": \"F32\", \"shape\": [1]}", 4, "tensor 'x' has no \"data_offsets\""},
        {"dtype_number.safetensors", "{\"dtype\": 5, \"shape\": [1], \"data_offsets\": [0, 4]}", 4,
         "\"dtype\" of tensor 'x' is a number, not a string"},
        {"shape_string.safetensors", "{\"dtype\": \"F32\", \"shape\": \"1\", \"data_offsets\": [0, 4]}", 4,
         "\"shape\" of tensor 'x' is a string, not an array"},
        {"shape_float.safetensors", "{\"dtype\": \"F32\", \"shape\": [1.5], \"data_offsets\": [0, 4]}", 4,
         "\"shape\" of tensor 'x' holds a non-integer"},
        {"offsets_three.safetensors", "{\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [0, 4, 8]}", 8,
         "\"data_offsets\" of tensor 'x' has 3 entries"},
        {"offsets_one.safetensors", "{\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [4]}", 4,
         "\"data_offsets\" of tensor 'x' must have 2 entries, has 1"},
        {"offsets_negative.safetensors", "{\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [-4, 0]}", 4,
         "\"data_offsets\" of tensor 'x' holds a negative value"},
        {"dtype_unknown.safetensors", "{\"dtype\": \"Q7\", \"shape\": [1], \"data_offsets\": [0, 4]}", 4,
         "unknown dtype 'Q7' for tensor 'x'"},
        {"dtype_i64.safetensors", "{\"dtype\": \"I64\", \"shape\": [1], \"data_offsets\": [0, 8]}", 8,
         "unsupported dtype 'I64' for tensor 'x'"},
        {"dtype_lowercase.safetensors", "{\"dtype\": \"f32\", \"shape\": [1], \"data_offsets\": [0, 4]}", 4,
         "unknown dtype 'f32' for tensor 'x'"},
        {"dim_negative.safetensors", "{\"dtype\": \"F32\", \"shape\": [2, -1], \"data_offsets\": [0, 4]}", 4,
         "\"shape\" of tensor 'x' holds a negative value -1"},
        {"dims_nine.safetensors", "{\"dtype\": \"F32\", \"shape\": [1,1,1,1,1,1,1,1,1], \"data_offsets\": [0, 4]}", 4,
         "\"shape\" of tensor 'x' has 9 entries, at most 8"},
        {"numel_overflow.safetensors",
         "{\"dtype\": \"F32\", \"shape\": [4294967296, 4294967296, 4294967296], \"data_offsets\": [0, 4]}", 4,
         "shape of tensor 'x' overflows"},
        {"bytes_overflow.safetensors",
         "{\"dtype\": \"F32\", \"shape\": [4611686018427387904], \"data_offsets\": [0, 4]}", 4,
         "byte size of tensor 'x' overflows"},
        {"end_before_begin.safetensors", "{\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [8, 4]}", 8,
         "tensor 'x' ends (4) before it begins (8)"},
        {"end_past_data.safetensors", "{\"dtype\": \"F32\", \"shape\": [100], \"data_offsets\": [0, 400]}", 8,
         "tensor 'x' ends at byte 400 past the data region of 8 bytes"},
        {"size_mismatch.safetensors", "{\"dtype\": \"F32\", \"shape\": [3], \"data_offsets\": [0, 8]}", 8,
         "tensor 'x' spans 8 bytes but its shape and dtype need 12"},
        {"bf16_size_mismatch.safetensors", "{\"dtype\": \"BF16\", \"shape\": [2, 2], \"data_offsets\": [0, 16]}", 16,
         "tensor 'x' spans 16 bytes but its shape and dtype need 8"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        write_entry(cases[i].file, cases[i].body, cases[i].data_len);
        expect_io_error(cases[i].file, cases[i].needle);
    }

    unsigned char zeros[16] = {0};
    write_st("overlap.safetensors",
             "{\"a\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [0, 8]},"
             " \"z\": {\"dtype\": \"F32\", \"shape\": [0], \"data_offsets\": [4, 4]},"
             " \"b\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [4, 12]}}",
             zeros, 12);
    expect_io_error("overlap.safetensors", "tensor 'z' [4, 4) overlaps tensor 'a', which ends at byte 8");
    write_st("same_range.safetensors",
             "{\"a\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [8, 12]},"
             " \"b\": {\"dtype\": \"F16\", \"shape\": [4], \"data_offsets\": [0, 8]},"
             " \"c\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [8, 12]}}",
             zeros, 12);
    expect_io_error("same_range.safetensors", "[8, 12) overlaps tensor");
    write_st("duplicate.safetensors",
             "{\"x\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [0, 4]},"
             " \"x\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [4, 8]}}",
             zeros, 8);
    expect_io_error("duplicate.safetensors", "tensor 'x' appears twice in the header");
    write_st("meta_array.safetensors", "{\"__metadata__\": [\"pt\"]}", NULL, 0);
    expect_io_error("meta_array.safetensors", "\"__metadata__\" is an array, not an object");
    write_st("meta_number.safetensors", "{\"__metadata__\": {\"step\": 3}}", NULL, 0);
    expect_io_error("meta_number.safetensors", "a \"__metadata__\" value (header byte 26) is a number, not a string");

    expect_io_error("does_not_exist.safetensors", "cannot open");
    expect_io_error(tmp_dir, "is a directory, not a regular file");
}

/* The reference implementation's layout rule (safetensors' Metadata::validate and read_metadata): in offset order
 * the tensors tile the data region exactly, from byte 0 to the end of the file. */
static void test_layout(void) {
    unsigned char zeros[16] = {0};
    const char *pair = "{\"a\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [0, 4]},"
                       " \"b\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [%d, %d]}}";
    char header[256];
    snprintf(header, sizeof(header), pair, 8, 12);
    write_st("gap.safetensors", header, zeros, 12);
    expect_io_error("gap.safetensors", "tensor 'b' begins at byte 8 of the data region, but the tensors before it end "
                                       "at byte 4: the 4 bytes between belong to no tensor");
    snprintf(header, sizeof(header), pair, 4, 8);
    write_st("trailing_bytes.safetensors", header, zeros, 9);
    expect_io_error("trailing_bytes.safetensors", "the tensors end at byte 8 of the data region, but the file holds 9");
    write_st("not_from_zero.safetensors", "{\"a\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [4, 8]}}",
             zeros, 8);
    expect_io_error("not_from_zero.safetensors", "tensor 'a' begins at byte 4");
    write_st("empty_inside.safetensors",
             "{\"a\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [0, 4]},"
             " \"z\": {\"dtype\": \"F16\", \"shape\": [0], \"data_offsets\": [2, 2]}}",
             zeros, 4);
    expect_io_error("empty_inside.safetensors", "tensor 'z' [2, 2) overlaps tensor 'a', which ends at byte 4");

    /* a header length one byte short of the padded header: the JSON still parses (the dropped byte is padding), but
     * the data region would start one byte early and every weight would shift by a byte */
    const char *one = "{\"a\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [0, 4]}}";
    size_t h = strlen(one), padded = (h + 7) / 8 * 8 + 8; /* at least one byte of padding */
    unsigned char buf[256];
    memset(buf, 0, sizeof(buf));
    for (int i = 0; i < 8; i++) buf[i] = (unsigned char)((uint64_t)(padded - 1) >> (8 * i));
    memcpy(buf + 8, one, h);
    memset(buf + 8 + h, ' ', padded - h);
    write_raw("short_header_len.safetensors", buf, 8 + padded + 4);
    expect_io_error("short_header_len.safetensors",
                    "the tensors end at byte 4 of the data region, but the file holds 5");
    for (int i = 0; i < 8; i++) buf[i] = (unsigned char)((uint64_t)(padded + 1) >> (8 * i));
    write_raw("long_header_len.safetensors", buf, 8 + padded + 4);
    expect_io_error("long_header_len.safetensors", "malformed JSON");

    /* the padding itself (and an empty tensor at either end of the region) is fine */
    write_st("padded.safetensors",
             "{\"z0\": {\"dtype\": \"F32\", \"shape\": [0], \"data_offsets\": [0, 0]},"
             " \"a\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [0, 4]},"
             " \"z4\": {\"dtype\": \"F32\", \"shape\": [3, 0], \"data_offsets\": [4, 4]}}     ",
             zeros, 4);
    char path[512];
    tmp_path(path, sizeof(path), "padded.safetensors");
    cvx_st_file *f = NULL;
    cvx_error_clear();
    if (CVX_EXPECT(cvx_st_open(path, &f) == CVX_OK, "padded header: %s", cvx_error_message())) {
        CVX_EXPECT(cvx_st_count(f) == 3, "%d tensors, want 3", cvx_st_count(f));
        cvx_st_close(f);
    }
}

/* A FIFO (or a directory, or a device) in place of a checkpoint file: opening a FIFO for reading would block until a
 * writer comes; the loader must refuse it at once. main() sets an alarm, so a regression fails instead of hanging. */
static void test_not_regular(void) {
    char path[512];
    tmp_path(path, sizeof(path), "fifo.safetensors");
    if (!CVX_EXPECT(mkfifo(path, 0600) == 0, "mkfifo %s failed", path)) return;
    written[num_written++] = strdup(path);
    expect_io_error("fifo.safetensors", "is a FIFO, not a regular file");
    tmp_path(path, sizeof(path), "fifo.safetensors.index.json");
    if (!CVX_EXPECT(mkfifo(path, 0600) == 0, "mkfifo %s failed", path)) return;
    written[num_written++] = strdup(path);
    expect_io_error("fifo.safetensors.index.json", "is a FIFO, not a regular file");
    const char *index = "{\"weight_map\": {\"a\": \"fifo.safetensors\"}}";
    write_raw("fifo_shard.safetensors.index.json", index, strlen(index));
    expect_io_error_in("fifo_shard.safetensors.index.json", "fifo.safetensors", "is a FIFO, not a regular file");
    expect_io_error("/dev/null", "is a character device, not a regular file");
}

static void test_invalid_sharded(void) {
    struct {
        const char *file, *index, *culprit, *needle;
    } cases[] = {
        {"missing.safetensors.index.json",
         "{\"weight_map\": {\"a\": \"model-00001-of-00002.safetensors\", \"d\": \"model-00001-of-00002.safetensors\"}}",
         NULL, "tensor 'd' of the weight_map is missing from shard"},
        {"no_shard.safetensors.index.json", "{\"weight_map\": {\"a\": \"nowhere.safetensors\"}}", "nowhere.safetensors",
         "cannot open"},
        {"bad_shard.safetensors.index.json",
         "{\"weight_map\": {\"a\": \"model-00001-of-00002.safetensors\", \"x\": \"size_mismatch.safetensors\"}}",
         "size_mismatch.safetensors", "tensor 'x' spans 8 bytes"},
        {"no_map.safetensors.index.json", "{\"metadata\": {}}", NULL, "no \"weight_map\" object"},
        {"map_array.safetensors.index.json", "{\"weight_map\": []}", NULL,
         "index's \"weight_map\" is an array, not an object"},
        {"map_number.safetensors.index.json", "{\"weight_map\": {\"a\": 1}}", NULL,
         "weight_map entry of tensor 'a' is a number"},
        {"not_json.safetensors.index.json", "{\"weight_map\": {", NULL, "malformed JSON"},
        {"list.safetensors.index.json", "[]", NULL, "index is an array, not a JSON object"},
        {"empty.file.index.json", "", NULL, "end of input"},
        {"absolute.safetensors.index.json", "{\"weight_map\": {\"a\": \"/etc/passwd\"}}", NULL,
         "shard '/etc/passwd' of tensor 'a' is an absolute path"},
        {"dotdot.safetensors.index.json", "{\"weight_map\": {\"a\": \"sub/../../x.safetensors\"}}", NULL,
         "shard of tensor 'a' is named with '..'"},
        {"no_file.safetensors.index.json", "{\"weight_map\": {\"a\": \".//./\"}}", NULL,
         "weight_map entry of tensor 'a' names no file"},
        {"twice.safetensors.index.json",
         "{\"weight_map\": {\"a\": \"model-00001-of-00002.safetensors\", \"a\": \"model-00001-of-00002.safetensors\"}}",
         NULL, "tensor 'a' appears twice in the weight_map"},
        {"two_maps.safetensors.index.json", "{\"weight_map\": {}, \"weight_map\": {}}", NULL,
         "index has two \"weight_map\" members"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        write_raw(cases[i].file, cases[i].index, strlen(cases[i].index));
        expect_io_error_in(cases[i].file, cases[i].culprit, cases[i].needle);
    }

    /* more distinct shard names than any checkpoint has: refused before any shard is opened (none exists) */
    size_t n = 5000, cap = n * 32 + 32, len = 0;
    char *big = malloc(cap);
    if (!big) return;
    len += (size_t)snprintf(big, cap, "{\"weight_map\": {");
    for (size_t i = 0; i < n; i++)
        len += (size_t)snprintf(big + len, cap - len, "%s\"t%zu\": \"s%zu\"", i ? "," : "", i, i);
    len += (size_t)snprintf(big + len, cap - len, "}}");
    write_raw("many_shards.safetensors.index.json", big, len);
    expect_io_error("many_shards.safetensors.index.json", "index names 5000 shard files, more than the 4096 allowed");
    free(big);
}

/* One shard named 30,000 ways ("x", "./x", ".//x", "././x", and through a symbolic link) is mapped once. */
static void test_shard_names(void) {
    enum { N = 30000 };
    const char *forms[] = {"one.safetensors",     "./one.safetensors", ".//one.safetensors",
                           "././one.safetensors", "link.safetensors",  "./link.safetensors"};
    size_t cap = (size_t)N * 80 + 64, len = 0;
    char *shard = malloc(cap), *index = malloc(cap);
    if (!shard || !index) goto done;
    /* the shard: N empty tensors (empty tensors take no bytes, all at offset 0) and one 4-byte one */
    len += (size_t)snprintf(shard, cap, "{\"w\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [0, 4]}");
    for (int i = 0; i < N; i++)
        len += (size_t)snprintf(shard + len, cap - len,
                                ",\"t%d\": {\"dtype\": \"F32\", \"shape\": [0], \"data_offsets\": [0, 0]}", i);
    snprintf(shard + len, cap - len, "}");
    const float v = 2.5f;
    write_st("one.safetensors", shard, &v, 4);
    char path[512];
    tmp_path(path, sizeof(path), "link.safetensors");
    CVX_EXPECT(symlink("one.safetensors", path) == 0, "symlink %s failed", path);
    written[num_written++] = strdup(path);

    len =
        (size_t)snprintf(index, cap, "{\"metadata\": {\"total_size\": 4}, \"weight_map\": {\"w\": \"one.safetensors\"");
    for (int i = 0; i < N; i++) len += (size_t)snprintf(index + len, cap - len, ",\"t%d\": \"%s\"", i, forms[i % 6]);
    len += (size_t)snprintf(index + len, cap - len, "}}");
    write_raw("aliases.safetensors.index.json", index, len);
    tmp_path(path, sizeof(path), "aliases.safetensors.index.json");
    cvx_st_file *f = NULL;
    cvx_error_clear();
    if (!CVX_EXPECT(cvx_st_open(path, &f) == CVX_OK, "one shard named 6 ways: %s", cvx_error_message())) goto done;
    CVX_EXPECT(cvx_st_count(f) == N + 1, "%d tensors, want %d", cvx_st_count(f), N + 1);
    CVX_EXPECT(count_tmp_mappings() == 1, "%d mappings of the one shard, want 1", count_tmp_mappings());
    const cvx_st_tensor *t = cvx_st_find(f, "w");
    CVX_EXPECT(t && read_f32(t->data, 0) == 2.5f, "w not found or wrong");
    cvx_st_close(f);
done:
    free(shard);
    free(index);
}

int main(void) {
    alarm(120); /* a blocking open (a FIFO) ends the test as a failure instead of hanging the run */
    const char *base = getenv("TMPDIR");
    snprintf(tmp_dir, sizeof(tmp_dir), "%s/cvx_st_test_XXXXXX", base && base[0] ? base : "/tmp");
    if (!mkdtemp(tmp_dir)) {
        perror("mkdtemp");
        return 1;
    }
    test_valid_single();
    test_many_tensors();
    test_sharded();
    test_invalid_single();
    test_invalid_sharded();
    test_layout();
    test_not_regular();
    test_shard_names();
    CVX_EXPECT(count_tmp_mappings() == 0, "%d mappings left after every checkpoint was closed", count_tmp_mappings());

    for (int i = 0; i < num_written; i++) {
        unlink(written[i]);
        free(written[i]);
    }
    CVX_EXPECT(rmdir(tmp_dir) == 0, "cannot remove %s (a file was not tracked)", tmp_dir);
    return cvx_test_report();
}

/* libFuzzer target: cvx_st_open on an arbitrary *.safetensors.index.json next to three real shards.
 *
 * The shards (a.safetensors with tensors "a" and "b", b.safetensors with "c", and s/c.safetensors with "d", also
 * reachable through the symbolic link l.safetensors -> a.safetensors) are written once, so that mutated weight maps
 * can name them in every spelling. Beyond "no crash, no sanitizer report, no leak": an accepted index exposes
 * exactly its weight_map's tensors, each found by name. */
#define _GNU_SOURCE

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../../csrc/io/safetensors.h"
#include "fuzz_common.h"

static char path[4096];
static int fd = -1;

static void write_shard(const char *dir, const char *name, const char *header, size_t data_len) {
    char p[4096];
    snprintf(p, sizeof(p), "%s/%s", dir, name);
    FILE *fp = fopen(p, "wb");
    if (!fp) abort();
    size_t h = strlen(header);
    unsigned char len[8];
    for (int i = 0; i < 8; i++) len[i] = (unsigned char)((uint64_t)h >> (8 * i));
    fwrite(len, 1, 8, fp);
    fwrite(header, 1, h, fp);
    for (size_t i = 0; i < data_len; i++) fputc((int)i, fp);
    fclose(fp);
}

static void setup(void) {
    if (fuzz_temp_file("fuzz.safetensors.index.json", path, sizeof(path), &fd) != 0) abort();
    char dir[4096];
    snprintf(dir, sizeof(dir), "%s", path);
    *strrchr(dir, '/') = '\0';
    write_shard(dir, "a.safetensors",
                "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                "\"b\":{\"dtype\":\"F16\",\"shape\":[1],\"data_offsets\":[8,10]}}",
                10);
    write_shard(dir, "b.safetensors", "{\"c\":{\"dtype\":\"BF16\",\"shape\":[2,1],\"data_offsets\":[0,4]}}", 4);
    char sub[4096 + 4];
    snprintf(sub, sizeof(sub), "%s/s", dir);
    mkdir(sub, 0700);
    write_shard(sub, "c.safetensors", "{\"d\":{\"dtype\":\"F32\",\"shape\":[],\"data_offsets\":[0,4]}}", 4);
    char link[4096 + 16];
    snprintf(link, sizeof(link), "%s/l.safetensors", dir);
    if (symlink("a.safetensors", link) != 0 && access(link, F_OK) != 0) abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (fd < 0) setup();
    fuzz_rewrite(fd, data, size);
    cvx_st_file *f = NULL;
    if (cvx_st_open(path, &f) != CVX_OK) {
        if (f) abort();
        return 0;
    }
    for (int i = 0; i < cvx_st_count(f); i++) {
        const cvx_st_tensor *t = cvx_st_at(f, i);
        if (!t || cvx_st_find(f, t->name) != t || t->nbytes > 8) abort();
    }
    cvx_st_close(f);
    return 0;
}

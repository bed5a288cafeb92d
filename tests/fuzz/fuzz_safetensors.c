/* libFuzzer target: cvx_st_open on an arbitrary .safetensors file.
 *
 * The input is written to one temporary file, rewritten for every input. Beyond "no crash, no sanitizer report, no
 * leak": an accepted file's tensors lie inside the file, tile its data region, and are found by name. */
#define _GNU_SOURCE

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../../csrc/io/safetensors.h"
#include "fuzz_common.h"

static char path[4096];
static int fd = -1;

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (fd < 0 && fuzz_temp_file("fuzz.safetensors", path, sizeof(path), &fd) != 0) abort();
    fuzz_rewrite(fd, data, size);
    cvx_st_file *f = NULL;
    if (cvx_st_open(path, &f) != CVX_OK) {
        if (f) abort(); /* a failed open leaves nothing behind */
        return 0;
    }
    /* accepted: every tensor's bytes are in the data region, the regions tile it, and lookups find each name */
    uint64_t total = 0;
    for (int i = 0; i < cvx_st_count(f); i++) {
        const cvx_st_tensor *t = cvx_st_at(f, i);
        if (!t || cvx_st_find(f, t->name) != t) abort();
        if (t->nbytes > size) abort();
        total += t->nbytes;
        volatile unsigned char sink = 0; /* touch the first and last byte: ASan/segv if out of the mapping */
        if (t->nbytes) sink ^= ((const unsigned char *)t->data)[0] ^ ((const unsigned char *)t->data)[t->nbytes - 1];
        (void)sink;
    }
    uint64_t header_len = 0;
    for (int i = 7; i >= 0; i--) header_len = header_len << 8 | data[i];
    if (total != size - 8 - header_len) abort();
    cvx_st_close(f);
    return 0;
}

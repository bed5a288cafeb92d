/* The fuzz targets' one temporary file: created once in a private folder under $TMPDIR, rewritten for every input
 * (the loaders read files by path, as from_pretrained does). */
#ifndef CVX_FUZZ_COMMON_H
#define CVX_FUZZ_COMMON_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <fcntl.h>

static int fuzz_temp_file(const char *name, char *path, size_t cap, int *fd) {
    const char *base = getenv("TMPDIR");
    char dir[3000];
    snprintf(dir, sizeof(dir), "%s/cvx_fuzz_XXXXXX", base && base[0] ? base : "/tmp");
    if (!mkdtemp(dir)) return -1;
    snprintf(path, cap, "%s/%s", dir, name);
    *fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    return *fd < 0 ? -1 : 0;
}

static void fuzz_rewrite(int fd, const unsigned char *data, size_t size) {
    if (ftruncate(fd, 0) != 0) abort();
    size_t done = 0;
    while (done < size) {
        ssize_t n = pwrite(fd, data + done, size - done, (off_t)done);
        if (n <= 0) abort();
        done += (size_t)n;
    }
}

#endif

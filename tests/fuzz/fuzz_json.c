/* libFuzzer target: the streaming JSON reader on arbitrary bytes.
 *
 * Checks, beyond "no crash, no sanitizer report, no leak": cvx_json_skip accepts exactly what a full walk accepts,
 * and the walk's canonical form (tests/c/json_walk.h) reads back to itself. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../c/json_walk.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const char *text = (const char *)data;
    cvx_json_reader r;
    cvx_json_reader_init(&r, text, size, "fuzz input");
    cvx_status skipped = cvx_json_skip(&r);
    if (skipped == CVX_OK) skipped = cvx_json_finish(&r);
    char *canonical = NULL;
    cvx_status walked = json_walk(text, size, "fuzz input", &canonical);
    if (walked == CVX_ERR_OOM) return 0;
    if ((skipped == CVX_OK) != (walked == CVX_OK)) {
        fprintf(stderr, "skip says %d, the walk says %d\n", (int)skipped, (int)walked);
        abort();
    }
    if (walked != CVX_OK) return 0;
    char *again = NULL;
    cvx_status st = json_walk(canonical, strlen(canonical), "canonical form", &again);
    if (st == CVX_OK && strcmp(canonical, again) != 0) {
        fprintf(stderr, "canonical form is not stable:\n%s\n%s\n", canonical, again);
        abort();
    }
    if (st != CVX_OK && st != CVX_ERR_OOM) {
        fprintf(stderr, "canonical form does not read back (%d):\n%s\n", (int)st, canonical);
        abort();
    }
    free(canonical);
    free(again);
    return 0;
}

/* libFuzzer target: a LoRA adapter file through the C entry the Python layer uses (module.c's lora_load: cvx_st_open,
 * then cvx_transformer_lora_load), on the tiny 5b-style transformer of tests/fixtures/pipeline/tiny_5b with random
 * weights, in float32 or bfloat16 (the adapter's tensors read in place or converted).
 *
 * The modules come from the file itself, as lora.py's _plan reads them (every "transformer.<module>.lora_A.weight" /
 * ".lora_B.weight" key), but unchecked: the C core must refuse what lora.py would (a linear the model lacks, a wrong
 * shape, a rank out of range, a module listed twice, a non-finite scaling) without trusting any size. An adapter it
 * accepts runs one forward, is fused (safe or not), runs again, is unfused and deleted. Beyond "no crash, no sanitizer
 * report, no leak": after each input the memory manager holds what it held before, no LoRA bytes are live, and the
 * base model's output is the same bits as before any adapter. */
#define _GNU_SOURCE

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../../csrc/io/safetensors.h"
#include "../../csrc/mem/mem.h"
#include "../../csrc/models/transformer.h"
#include "../../csrc/ops/backend.h"
#include "../../csrc/ops/ops.h"
#include "../c/tiny_5b.h"
#include "fuzz_common.h"

#define MAX_MODULES 64
static const char PREFIX[] = "transformer.";

static char path[4096];
static int fd = -1;
static cvx_transformer *models[2]; /* float32, bfloat16 */
static cvx_tensor hidden, text;
static cvx_tensor base[2];
static const float timestep[2] = {500.0f, 250.0f};
static int64_t live0;

static int64_t live(void) {
    cvx_mem_stats s;
    cvx_mem_get_stats(CVX_DEVICE_CPU, &s);
    return s.allocated_bytes;
}

static cvx_status forward(cvx_transformer *tr, const float *scales, int count, cvx_tensor *out) {
    cvx_ctx cpu = {.be = &cvx_backend_cpu, .device = CVX_DEVICE_CPU};
    const cvx_transformer_inputs in = {.hidden = &hidden,
                                       .text = &text,
                                       .timestep = timestep,
                                       .timestep_len = 2,
                                       .lora_scales = scales,
                                       .lora_count = count};
    memset(out, 0, sizeof(*out));
    return cvx_transformer_forward(&cpu, tr, &in, out);
}

static void setup(void) {
    cvx_ops_init();
    if (fuzz_temp_file("pytorch_lora_weights.safetensors", path, sizeof(path), &fd) != 0) abort();
    const cvx_dtype dtypes[2] = {CVX_F32, CVX_BF16};
    for (int m = 0; m < 2; m++)
        if (cvx_transformer_create(&TINY_5B, NULL, dtypes[m], 7 + (uint64_t)m, &models[m]) != CVX_OK) abort();
    const int64_t hshape[5] = {2, 3, 4, 2, 4}, tshape[3] = {2, 16, 32};
    if (cvx_tensor_alloc(&hidden, CVX_DEVICE_CPU, CVX_MEM_ACTIVATIONS, CVX_F32, 5, hshape) != CVX_OK ||
        cvx_tensor_alloc(&text, CVX_DEVICE_CPU, CVX_MEM_ACTIVATIONS, CVX_F32, 3, tshape) != CVX_OK)
        abort();
    for (int64_t i = 0; i < cvx_tensor_numel(&hidden); i++) ((float *)hidden.data)[i] = (float)(i % 13) / 13.0f - 0.5f;
    for (int64_t i = 0; i < cvx_tensor_numel(&text); i++) ((float *)text.data)[i] = (float)(i % 7) / 7.0f - 0.5f;
    for (int m = 0; m < 2; m++)
        if (forward(models[m], NULL, 0, &base[m]) != CVX_OK) abort();
    live0 = live();
}

/* Every module the file has a lora_A or lora_B key for under PREFIX, in file order, each once (as _plan lists them);
 * a name too long for the buffer is cut (the core refuses it as a linear it lacks). */
static int modules_of(const cvx_st_file *st, char names[][256], const char **out) {
    int n = 0;
    for (int i = 0; i < cvx_st_count(st) && n < MAX_MODULES; i++) {
        const char *key = cvx_st_at(st, i)->name;
        const size_t len = strlen(key), plen = sizeof(PREFIX) - 1, slen = strlen(".lora_A.weight");
        if (len <= plen + slen || strncmp(key, PREFIX, plen) != 0) continue;
        if (strcmp(key + len - slen, ".lora_A.weight") != 0 && strcmp(key + len - slen, ".lora_B.weight") != 0)
            continue;
        snprintf(names[n], sizeof(names[n]), "%.*s", (int)(len - plen - slen), key + plen);
        int seen = 0;
        for (int k = 0; k < n; k++) seen |= strcmp(names[k], names[n]) == 0;
        if (!seen) {
            out[n] = names[n];
            n++;
        }
    }
    return n;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (fd < 0) setup();
    fuzz_rewrite(fd, data, size);
    /* the input's last byte picks the model, the scalings, the adapter weight and safe fusing */
    const uint8_t knob = size ? data[size - 1] : 0;
    const int m = knob & 1;
    cvx_transformer *tr = models[m];
    cvx_st_file *st = NULL;
    if (cvx_st_open(path, &st) != CVX_OK) {
        if (st) abort();
        cvx_error_clear();
        return 0;
    }
    static char names[MAX_MODULES][256];
    const char *modules[MAX_MODULES];
    const int count = modules_of(st, names, modules);
    static const float pick[8] = {1.0f, 0.5f, 2.0f, -1.0f, 0.0f, 1e30f, __builtin_inff(), __builtin_nanf("")};
    float scalings[MAX_MODULES];
    for (int k = 0; k < count; k++) scalings[k] = (knob >> 1 & 7) < 5 ? pick[(knob >> 1) & 7] : pick[k % 5];
    const cvx_status loaded = count ? cvx_transformer_lora_load(tr, st, PREFIX, modules, scalings, count) : CVX_OK;
    cvx_st_close(st); /* the adapter keeps its own reference */
    if (loaded != CVX_OK || !count) {
        if (cvx_transformer_num_adapters(tr) != 0) abort(); /* a refused adapter leaves nothing behind */
        cvx_error_clear();
    } else {
        if (cvx_transformer_num_adapters(tr) != 1 || cvx_transformer_adapter_bytes(tr, 0) <= 0) abort();
        const float weight = (knob & 0x10) ? 0.5f : 1.0f;
        cvx_tensor out;
        if (forward(tr, &weight, 1, &out) == CVX_OK) cvx_tensor_release(&out);
        cvx_error_clear();
        if (cvx_transformer_lora_fuse(tr, &weight, 1, (knob & 0x20) != 0) == CVX_OK) {
            if (forward(tr, &weight, 1, &out) == CVX_OK) cvx_tensor_release(&out);
            if (cvx_transformer_lora_unfuse(tr) != CVX_OK || cvx_transformer_fused_bytes(tr) != 0) abort();
        }
        cvx_error_clear();
        if (cvx_transformer_lora_delete(tr, 0) != CVX_OK || cvx_transformer_num_adapters(tr) != 0) abort();
    }
    /* nothing leaked or lost: the memory manager's bytes, no live LoRA bytes, the base output bit for bit */
    if (live() != live0 || cvx_lora_live_bytes() != 0) abort();
    cvx_tensor again;
    if (forward(tr, NULL, 0, &again) != CVX_OK) abort();
    if (memcmp(again.data, base[m].data, cvx_tensor_nbytes(&again)) != 0) abort();
    cvx_tensor_release(&again);
    return 0;
}

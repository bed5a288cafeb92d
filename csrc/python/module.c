/* cogvideo_c._C: the CPython + NumPy glue. Argument parsing, arrays in and out, C errors as Python exceptions;
 * no model logic lives here. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <float.h>
#include <limits.h>
#include <math.h>
#include <pthread.h>
#include <time.h>
#define NPY_NO_DEPRECATED_API NPY_1_7_API_VERSION
#include <numpy/arrayobject.h>

#include "../core/status.h"
#include "../core/tensor.h"
#include "../io/safetensors.h"
#include "../mem/arena.h"
#include "../mem/mem.h"
#include "../mem/residency.h"
#include "../models/config.h"
#include "../models/t5.h"
#include "../models/transformer.h"
#include "../models/vae.h"
#include "../ops/backend.h"
#ifdef CVX_WITH_CUDA
#include "../ops/cuda/cuda_ops.h"
#endif

static PyObject *OutOfMemoryError;

/* Turns the thread-local C error into the matching Python exception; returns NULL for `return raise_status(..)`. */
static PyObject *raise_status(cvx_status st) {
    PyObject *type = PyExc_RuntimeError;
    if (st == CVX_ERR_INVALID)
        type = PyExc_ValueError;
    else if (st == CVX_ERR_OOM)
        type = OutOfMemoryError;
    else if (st == CVX_ERR_IO)
        type = PyExc_OSError;
    else if (st == CVX_ERR_INTERRUPTED) {
        cvx_error_clear();
        /* the stop poll ran the signal handlers: their KeyboardInterrupt is already set */
        if (!PyErr_Occurred()) PyErr_SetNone(PyExc_KeyboardInterrupt);
        return NULL;
    }
    PyErr_SetString(type, cvx_error_message());
    cvx_error_clear();
    return NULL;
}

/* A device name: "cpu", "emu", "cuda" or "cuda:N" (*index, may be NULL, gets N; 0 otherwise). The memory
 * manager has one CUDA device: N says which GPU it is (cvx_cuda_init). */
static int parse_device_index(PyObject *arg, cvx_device *dev, int *index) {
    const char *name = "cpu";
    if (index) *index = 0;
    if (arg && arg != Py_None) {
        name = PyUnicode_AsUTF8(arg);
        if (!name) return -1;
    }
    if (strncmp(name, "cuda:", 5) == 0 && name[5] && strspn(name + 5, "0123456789") == strlen(name + 5) &&
        strlen(name + 5) < 6) {
        *dev = CVX_DEVICE_CUDA;
        if (index) *index = atoi(name + 5);
        return 0;
    }
    cvx_status st = cvx_device_parse(name, dev);
    if (st != CVX_OK) {
        raise_status(st);
        return -1;
    }
    return 0;
}

static int parse_device(PyObject *arg, cvx_device *dev) { return parse_device_index(arg, dev, NULL); }

/* The arguments (device='cpu',) of the module's per-device functions. */
static int device_args(PyObject *args, cvx_device *dev) {
    PyObject *dev_obj = NULL;
    if (!PyArg_ParseTuple(args, "|O", &dev_obj)) return -1;
    return parse_device(dev_obj, dev);
}

static int parse_dtype(const char *name, cvx_dtype *dt) {
    if (strcmp(name, "float32") == 0)
        *dt = CVX_F32;
    else if (strcmp(name, "float16") == 0)
        *dt = CVX_F16;
    else if (strcmp(name, "bfloat16") == 0)
        *dt = CVX_BF16;
    else {
        PyErr_Format(PyExc_ValueError, "unsupported dtype '%s' (float32, float16 or bfloat16)", name);
        return -1;
    }
    return 0;
}

/* ---- configs by name ------------------------------------------------------------------------------------------- */

/* A Python int as a C int: one outside the C int range is refused with `what` 'key' named, never truncated; a
 * float, string or bool is refused too (the Python layer passes exact ints). */
static int exact_int(PyObject *obj, const char *what, const char *key, int *out) {
    if (!PyLong_Check(obj) || PyBool_Check(obj)) {
        PyErr_Format(PyExc_ValueError, "%s '%s' must be an integer, got %R", what, key, obj);
        return -1;
    }
    int overflow = 0;
    const long long v = PyLong_AsLongLongAndOverflow(obj, &overflow);
    if (v == -1 && PyErr_Occurred()) return -1;
    if (overflow || v < INT_MIN || v > INT_MAX) {
        PyErr_Format(PyExc_ValueError, "%s '%s' = %R does not fit a C int", what, key, obj);
        return -1;
    }
    *out = (int)v;
    return 0;
}

/* A Python number as a float32 config value; non-finite or out of float32's range is refused with the key named. */
static int config_float(PyObject *obj, const char *key, float *out) {
    if (PyBool_Check(obj) || !(PyFloat_Check(obj) || PyLong_Check(obj))) {
        PyErr_Format(PyExc_ValueError, "config '%s' must be a number, got %R", key, obj);
        return -1;
    }
    const double v = PyFloat_AsDouble(obj);
    if (v == -1.0 && PyErr_Occurred()) return -1;
    if (!isfinite(v) || fabs(v) > FLT_MAX) { /* the models keep it as a float: no undefined conversion */
        PyErr_Format(PyExc_ValueError, "config '%s' = %R is not a finite float32 value", key, obj);
        return -1;
    }
    *out = (float)v;
    return 0;
}

/* One value of a config dict into its place in the struct, by the field's type. */
static int config_value(PyObject *obj, const cvx_config_field *f, char *base) {
    void *at = base + f->offset;
    switch (f->type) {
    case CVX_CONFIG_INT: return exact_int(obj, "config", f->key, at);
    case CVX_CONFIG_BOOL:
        if (!PyBool_Check(obj)) { /* 0 / 1 or a string would read as a flag by accident */
            PyErr_Format(PyExc_ValueError, "config '%s' must be True or False, got %R", f->key, obj);
            return -1;
        }
        *(int *)at = obj == Py_True;
        return 0;
    case CVX_CONFIG_FLOAT: return config_float(obj, f->key, at);
    case CVX_CONFIG_STRING:
        if (obj == Py_None && !f->required) return 0;
        if (!PyUnicode_Check(obj)) {
            PyErr_Format(PyExc_ValueError, "config '%s' must be a string, got %R", f->key, obj);
            return -1;
        }
        /* the UTF-8 buffer lives as long as the string, which the caller's dict holds through the call */
        return (*(const char **)at = PyUnicode_AsUTF8(obj)) ? 0 : -1;
    case CVX_CONFIG_INT_LIST: {
        if (!PyTuple_Check(obj) && !PyList_Check(obj)) {
            PyErr_Format(PyExc_ValueError, "config '%s' must be a list of integers, got %R", f->key, obj);
            return -1;
        }
        PyObject *seq = PySequence_Fast(obj, "a list");
        if (!seq) return -1;
        const Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
        int status = 0;
        if (n < 1 || n > f->capacity) {
            PyErr_Format(PyExc_ValueError, "config '%s' must have 1 to %d entries", f->key, f->capacity);
            status = -1;
        }
        for (Py_ssize_t i = 0; status == 0 && i < n; i++)
            status = exact_int(PySequence_Fast_GET_ITEM(seq, i), "config", f->key, (int *)at + i);
        Py_DECREF(seq);
        if (status == 0) *(int *)(base + f->count_offset) = (int)n;
        return status;
    }
    }
    PyErr_Format(PyExc_SystemError, "config '%s' has an unknown field type", f->key);
    return -1;
}

/* Fills the config struct `out` (zeroed here) from a dict whose keys are the struct's field names (`fields`): every
 * key must be a field (a stray one is named: the Python layer passes only what the struct has), every required
 * field present, every value exactly of its field's type. The C model then checks the values themselves. */
static int read_config(PyObject *dict, const char *what, const cvx_config_field *fields, void *out, size_t size) {
    memset(out, 0, size);
    if (!PyDict_Check(dict)) {
        PyErr_Format(PyExc_ValueError, "the %s config must be a dict of its fields, got %R", what, dict);
        return -1;
    }
    PyObject *key, *value;
    Py_ssize_t pos = 0;
    while (PyDict_Next(dict, &pos, &key, &value)) {
        const char *name = PyUnicode_Check(key) ? PyUnicode_AsUTF8(key) : NULL;
        if (!name) {
            if (!PyErr_Occurred()) PyErr_Format(PyExc_ValueError, "%s config keys must be strings, got %R", what, key);
            return -1;
        }
        const cvx_config_field *f = fields;
        while (f->key && strcmp(f->key, name) != 0) f++;
        if (!f->key) {
            PyErr_Format(PyExc_ValueError, "%s config has an unknown key '%s'", what, name);
            return -1;
        }
        if (config_value(value, f, out) < 0) return -1;
    }
    for (const cvx_config_field *f = fields; f->key; f++) {
        if (!f->required) continue;
        PyObject *v = PyDict_GetItemString(dict, f->key);
        if (!v) {
            PyErr_Format(PyExc_ValueError, "%s config is missing the key '%s'", what, f->key);
            return -1;
        }
    }
    return 0;
}

/* ---- memory ------------------------------------------------------------------------------------------------- */

static PyObject *py_memory_stats(PyObject *self, PyObject *args) {
    (void)self;
    cvx_device dev;
    if (device_args(args, &dev) < 0) return NULL;
    cvx_mem_stats s;
    cvx_mem_get_stats(dev, &s);
    /* key names follow torch.cuda.memory_stats where there is an equivalent */
    return Py_BuildValue(
        "{s:L,s:L,s:L,s:L,s:L,s:L,s:L,s:L,s:L,s:L,s:L,s:L,s:L,s:L,s:L,s:L}", "allocated_bytes.all.current",
        (long long)s.allocated_bytes, "allocated_bytes.all.peak", (long long)s.peak_allocated_bytes,
        "reserved_bytes.all.current", (long long)s.reserved_bytes, "reserved_bytes.all.peak",
        (long long)s.peak_reserved_bytes, "weights_bytes.current", (long long)s.kind_allocated_bytes[CVX_MEM_WEIGHTS],
        "weights_bytes.peak", (long long)s.kind_peak_bytes[CVX_MEM_WEIGHTS], "activations_bytes.current",
        (long long)s.kind_allocated_bytes[CVX_MEM_ACTIVATIONS], "activations_bytes.peak",
        (long long)s.kind_peak_bytes[CVX_MEM_ACTIVATIONS], "allocation.all.allocated", (long long)s.num_allocs,
        "allocation.all.freed", (long long)s.num_frees, "allocation.all.current", (long long)s.num_active, "num_ooms",
        (long long)s.num_ooms, "memory_limit_bytes", (long long)s.limit_bytes, "mapped_weights_bytes.current",
        (long long)s.mapped_bytes, "pinned_bytes.current", (long long)s.pinned_bytes, "lora_bytes.current",
        (long long)(dev == CVX_DEVICE_CPU ? cvx_lora_live_bytes() : 0));
}

static PyObject *py_reset_peak_memory_stats(PyObject *self, PyObject *args) {
    (void)self;
    cvx_device dev;
    if (device_args(args, &dev) < 0) return NULL;
    cvx_mem_reset_peak(dev);
    Py_RETURN_NONE;
}

static PyObject *py_set_memory_limit(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *dev_obj = NULL;
    long long bytes = 0;
    cvx_device dev;
    if (!PyArg_ParseTuple(args, "OL", &dev_obj, &bytes) || parse_device(dev_obj, &dev) < 0) return NULL;
    cvx_mem_set_limit(dev, bytes);
    Py_RETURN_NONE;
}

/* Devices the CUDA runtime reports (0 in a build without CUDA). */
static int cuda_device_count(void) {
#ifdef CVX_WITH_CUDA
    int n;
    Py_BEGIN_ALLOW_THREADS n = cvx_cuda_device_count();
    Py_END_ALLOW_THREADS return n;
#else
    return 0;
#endif
}

/* A CUDA build compiles the CUDA backend (ops/cuda, for a GPU or, with CVX_CUDA_EMU, the CPU emulation of one). */
#ifdef CVX_WITH_CUDA
#define CVX_CUDA_KERNELS 1
#else
#define CVX_CUDA_KERNELS 0
#endif

static PyObject *py_build_info(PyObject *self, PyObject *noargs) {
    (void)self, (void)noargs;
#ifdef _OPENMP
    const int openmp = 1;
#else
    const int openmp = 0;
#endif
#ifdef CVX_WITH_CUDA
    const int cuda_compiled = 1;
#else
    const int cuda_compiled = 0;
#endif
#ifdef CVX_CUDA_EMULATED
    const int cuda_emulated = 1; /* the CUDA backend runs on the CPU emulation (setup.py, CVX_CUDA_EMULATE=1) */
#else
    const int cuda_emulated = 0;
#endif
    const int devices = cuda_device_count();
    const int cuda = CVX_CUDA_KERNELS && devices > 0; /* "cuda" is usable: kernels compiled and a device present */
    PyObject *runnable = cuda ? Py_BuildValue("[sss]", "cpu", "emu", "cuda") : Py_BuildValue("[ss]", "cpu", "emu");
    if (!runnable) return NULL;
    return Py_BuildValue("{s:N,s:N,s:N,s:N,s:N,s:i,s:N,s:s,s:i,s:N,s:s}", "cpu", PyBool_FromLong(1), "cuda",
                         PyBool_FromLong(cuda), "cuda_compiled", PyBool_FromLong(cuda_compiled), "cuda_emulated",
                         PyBool_FromLong(cuda_emulated), "cuda_kernels", PyBool_FromLong(CVX_CUDA_KERNELS),
                         "cuda_devices", devices, "devices", runnable, "blas", "scipy-openblas32", "omp_max_threads",
                         cvx_ops_num_threads(), "openmp", PyBool_FromLong(openmp), "compiler", __VERSION__);
}

static PyObject *py_cuda_device_count(PyObject *self, PyObject *noargs) {
    (void)self, (void)noargs;
    return PyLong_FromLong(cuda_device_count());
}

/* empty_cache(): the CUDA caching allocator's free blocks back to the driver (a no-op before CUDA is used). */
static PyObject *py_empty_cache(PyObject *self, PyObject *noargs) {
    (void)self, (void)noargs;
    Py_BEGIN_ALLOW_THREADS cvx_mem_empty_cache(CVX_DEVICE_CUDA);
    Py_END_ALLOW_THREADS Py_RETURN_NONE;
}

#if defined(CVX_WITH_CUDA) && !defined(CVX_CUDA_EMULATED)
#include "../ops/cuda/blas_api.h"
/* cuBLAS(Lt) loaded now instead of at the backend's first start (tests: the loader runs without a GPU). */
static PyObject *py_cuda_blas_load(PyObject *self, PyObject *noargs) {
    (void)self, (void)noargs;
    cvx_status st;
    Py_BEGIN_ALLOW_THREADS st = cvx_cuda_blas_load();
    Py_END_ALLOW_THREADS if (st != CVX_OK) return raise_status(st);
    Py_RETURN_NONE;
}
#endif

#ifdef CVX_WITH_CUDA
/* Selects the process's GPU (the first call; another index later is a ValueError). */
static cvx_status cuda_init(int index) {
    cvx_status st;
    Py_BEGIN_ALLOW_THREADS st = cvx_cuda_init(index);
    Py_END_ALLOW_THREADS return st;
}
#endif

/* cuda_mem_get_info(device='cuda') -> (free, total) bytes of the GPU (cudaMemGetInfo), initialising it. */
static PyObject *py_cuda_mem_get_info(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *dev_obj = NULL;
    if (!PyArg_ParseTuple(args, "|O", &dev_obj)) return NULL;
#ifdef CVX_WITH_CUDA
    cvx_device dev;
    int index = 0;
    if (parse_device_index(dev_obj ? dev_obj : NULL, &dev, &index) < 0) return NULL;
    if (dev_obj && dev != CVX_DEVICE_CUDA)
        return PyErr_Format(PyExc_ValueError, "cuda_mem_get_info: not a CUDA device");
    size_t free_b = 0, total_b = 0;
    cvx_status st = cuda_init(index);
    if (st == CVX_OK) st = cvx_cuda_mem_get_info(&free_b, &total_b);
    if (st != CVX_OK) return raise_status(st);
    return Py_BuildValue("(nn)", (Py_ssize_t)free_b, (Py_ssize_t)total_b);
#else
    return PyErr_Format(PyExc_ValueError, "this build has no CUDA backend");
#endif
}

/* ---- safetensors ------------------------------------------------------------------------------------------------ */

static PyObject *py_safetensors_index(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *path_obj = NULL;
    if (!PyArg_ParseTuple(args, "O&", PyUnicode_FSConverter, &path_obj)) return NULL;
    cvx_st_file *f = NULL;
    cvx_status st;
    Py_BEGIN_ALLOW_THREADS st = cvx_st_open(PyBytes_AS_STRING(path_obj), &f);
    Py_END_ALLOW_THREADS Py_DECREF(path_obj);
    if (st != CVX_OK) return raise_status(st);
    PyObject *out = PyDict_New();
    for (int i = 0; out && i < cvx_st_count(f); i++) {
        const cvx_st_tensor *t = cvx_st_at(f, i);
        PyObject *shape = PyTuple_New(t->ndim);
        for (int k = 0; shape && k < t->ndim; k++) PyTuple_SET_ITEM(shape, k, PyLong_FromLongLong(t->shape[k]));
        PyObject *item = shape ? Py_BuildValue("(sN)", cvx_dtype_name(t->dtype), shape) : NULL;
        if (!item || PyDict_SetItemString(out, t->name, item) < 0) Py_CLEAR(out);
        Py_XDECREF(item);
    }
    cvx_st_close(f);
    return out;
}

/* ---- arrays --------------------------------------------------------------------------------------------------- */

static void capsule_free(PyObject *capsule) { cvx_mem_free(PyCapsule_GetPointer(capsule, "cvx_mem")); }

/* Hands an f32 tensor to NumPy: the array owns the memory-manager buffer and frees it when collected, so the
 * statistics keep counting the output while it is alive. */
static PyObject *tensor_to_array(cvx_tensor *t) {
    npy_intp dims[CVX_MAX_DIMS];
    for (int i = 0; i < t->ndim; i++) dims[i] = (npy_intp)t->shape[i];
    PyObject *arr = PyArray_SimpleNewFromData(t->ndim, dims, NPY_FLOAT32, t->data);
    if (!arr) {
        cvx_tensor_release(t);
        return NULL;
    }
    PyObject *capsule = PyCapsule_New(t->data, "cvx_mem", capsule_free);
    if (!capsule || PyArray_SetBaseObject((PyArrayObject *)arr, capsule) < 0) {
        Py_XDECREF(capsule);
        Py_DECREF(arr);
        cvx_tensor_release(t);
        return NULL;
    }
    t->data = NULL; /* owned by the array now */
    return arr;
}

/* A C-contiguous float32 array of exactly `ndim` dimensions, or NULL with a ValueError naming `what`. */
static PyArrayObject *array_f32(PyObject *obj, int ndim, const char *what) {
    PyArrayObject *arr = (PyArrayObject *)PyArray_FROM_OTF(obj, NPY_FLOAT32, NPY_ARRAY_IN_ARRAY | NPY_ARRAY_FORCECAST);
    if (arr && ndim >= 0 && PyArray_NDIM(arr) != ndim) {
        PyErr_Format(PyExc_ValueError, "%s must be %d-D, got %d-D", what, ndim, PyArray_NDIM(arr));
        Py_CLEAR(arr);
    }
    return arr;
}

static void tensor_view(PyArrayObject *arr, cvx_tensor *t) {
    memset(t, 0, sizeof(*t));
    t->data = PyArray_DATA(arr);
    t->dtype = CVX_F32;
    t->ndim = PyArray_NDIM(arr);
    for (int i = 0; i < t->ndim; i++) t->shape[i] = PyArray_DIM(arr, i);
}

/* ---- weights out (save_pretrained) ------------------------------------------------------------------------------- */

/* weight_info() -> [(name, dtype, shape)] in declaration order. Every tensor is reported in the model's weight
 * dtype, also the small vectors kept in f32 for computing: with a 16-bit dtype they were rounded through it at load,
 * so narrowing them back is exact and a saved 16-bit model holds only 16-bit tensors (as diffusers saves it). */
static PyObject *weights_info(const cvx_weights *ws) {
    if (!ws || !ws->decls) {
        PyErr_SetString(PyExc_ValueError, "the model holds no weights (it was not initialised)");
        return NULL;
    }
    PyObject *out = PyList_New(ws->count);
    for (int i = 0; out && i < ws->count; i++) {
        const cvx_weight_decl *d = &ws->decls[i];
        PyObject *shape = PyTuple_New(d->ndim);
        for (int k = 0; shape && k < d->ndim; k++) PyTuple_SET_ITEM(shape, k, PyLong_FromLongLong(d->shape[k]));
        PyObject *item = shape ? Py_BuildValue("(ssN)", d->name, cvx_dtype_name(ws->dtype), shape) : NULL;
        if (!item)
            Py_CLEAR(out);
        else
            PyList_SET_ITEM(out, i, item);
    }
    return out;
}

/* weight_data(i) -> a copy of tensor i of weight_info() in the weight dtype: float32 / float16 arrays, and for
 * bfloat16 (which NumPy lacks) a uint16 array of the bfloat16 bit patterns. */
static PyObject *weights_data(const cvx_weights *ws, PyObject *index_obj) {
    if (!ws || !ws->decls) {
        PyErr_SetString(PyExc_ValueError, "the model holds no weights (it was not initialised)");
        return NULL;
    }
    const long i = PyLong_AsLong(index_obj);
    if (i == -1 && PyErr_Occurred()) return NULL;
    if (i < 0 || i >= ws->count) {
        PyErr_Format(PyExc_IndexError, "weight index %ld is outside [0, %d)", i, ws->count);
        return NULL;
    }
    const cvx_weight_decl *d = &ws->decls[i];
    npy_intp dims[5];
    size_t n = 1;
    for (int k = 0; k < d->ndim; k++) n *= (size_t)(dims[k] = (npy_intp)d->shape[k]);
    const int npy_type = ws->dtype == CVX_F16 ? NPY_FLOAT16 : ws->dtype == CVX_BF16 ? NPY_UINT16 : NPY_FLOAT32;
    PyObject *arr = PyArray_SimpleNew(d->ndim, dims, npy_type);
    if (!arr) return NULL;
    cvx_convert(PyArray_DATA((PyArrayObject *)arr), ws->dtype, cvx_weights_host(ws, (int)i),
                d->as_f32 ? CVX_F32 : ws->dtype, n);
    return arr;
}

/* ---- the context of a forward ------------------------------------------------------------------------------ */

/* A model object's activation arena, made on its first forward. Two threads may run the same object at once (the
 * GIL is released): the second then gets an arena of its own for that call. `busy` is read and written with the
 * GIL held. */
typedef struct model_arena {
    cvx_arena *arena;
    int busy;
    size_t last_bytes; /* the arena the last forward was measured to need (what the memory report shows) */
} model_arena;

/* Ctrl-C during a forward: polled once per block (at most every 20 ms), it takes the GIL for a moment and runs
 * Python's signal handlers; a KeyboardInterrupt they raise stays set and stops the forward. */
static int stop_poll(void *arg) {
    (void)arg;
    static _Thread_local int64_t last_ns;
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    const int64_t now = (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
    if (now - last_ns < 20000000) return 0;
    last_ns = now;
    PyGILState_STATE gil = PyGILState_Ensure();
    const int stop = PyErr_CheckSignals() < 0;
    PyGILState_Release(gil);
    return stop;
}

/* The context a forward of this model object runs in: the backend of the device its weights are on, over the
 * object's arena (made on that device), its weight residency, the Ctrl-C poll. Called with the GIL held;
 * model_ctx_done (also with the GIL) after the forward. */
static cvx_status model_ctx(model_arena *ma, const cvx_weights *ws, cvx_ctx *ctx) {
    memset(ctx, 0, sizeof(*ctx));
    const cvx_device dev = ws && ws->res ? cvx_residency_device(ws->res) : CVX_DEVICE_CPU;
    ctx->be = cvx_backend_for(dev);
    if (!ctx->be) return CVX_FAIL(CVX_ERR_INVALID, "no backend computes on %s in this build", cvx_device_name(dev));
    if (ma->arena && !ma->busy && cvx_arena_device(ma->arena) != dev) { /* the model moved: so does its arena */
        cvx_arena_destroy(ma->arena);
        ma->arena = NULL;
    }
    if (!ma->arena) CVX_CHECK(cvx_arena_create(dev, 0, &ma->arena));
    if (ma->busy || cvx_arena_device(ma->arena) != dev) {
        CVX_CHECK(cvx_arena_create(dev, 0, &ctx->arena));
    } else {
        ma->busy = 1;
        ctx->arena = ma->arena;
    }
    ctx->device = dev;
    /* torch_dtype picks the compute dtype on CUDA (16-bit tensor-core GEMMs and attention, f32 accumulation);
     * float32 stays full f32. The CPU ops compute in f32 whatever it says. */
    ctx->compute = dev == CVX_DEVICE_CUDA && ws ? ws->dtype : CVX_F32;
    ctx->res = ws ? ws->res : NULL;
    ctx->should_stop = stop_poll;
    return CVX_OK;
}

/* keep: the object's arena stays reserved for the next call (else its region is freed now). */
static void model_ctx_done(model_arena *ma, cvx_ctx *ctx, int keep) {
    if (!ctx->arena) return;
    if (ctx->arena != ma->arena) {
        cvx_arena_destroy(ctx->arena);
        return;
    }
    if (!keep) cvx_arena_trim(ma->arena);
    ma->busy = 0;
}

/* Forwards read weight slots that residency changes re-point: a forward holds the engine lock shared, or alone
 * when it moves weights itself (model or sequential residency on a device); residency changes hold it alone. */
static pthread_rwlock_t engine_lock = PTHREAD_RWLOCK_INITIALIZER;

/* One forward of a model object (or only its measuring pass, `measure`: *measured gets the arena bytes): builds
 * the context, releases the GIL, runs fn through cvx_ctx_run, and on failure gives back the arena and, when the
 * model is offloaded, every device copy, so the device holds what it held before the call. */
static cvx_status model_run(model_arena *ma, const cvx_weights *ws, cvx_status (*fn)(cvx_ctx *, void *), void *call,
                            int keep, int measure, size_t *measured) {
    cvx_ctx ctx;
    cvx_status st = model_ctx(ma, ws, &ctx);
    if (st != CVX_OK) {
        model_ctx_done(ma, &ctx, 0);
        return st;
    }
    cvx_residency *res = ctx.res;
    Py_BEGIN_ALLOW_THREADS const int moves =
        res && cvx_residency_device(res) != CVX_DEVICE_CPU && cvx_residency_policy(res) != CVX_POLICY_NONE;
    if (moves)
        pthread_rwlock_wrlock(&engine_lock);
    else
        pthread_rwlock_rdlock(&engine_lock);
    if (measure) {
        st = cvx_ctx_measure(&ctx, fn, call, measured);
    } else {
        st = cvx_ctx_run(&ctx, fn, call, measured);
        if (st != CVX_OK && moves) cvx_residency_offload(res);
    }
    if (st == CVX_OK && !measure) ma->last_bytes = *measured;
    pthread_rwlock_unlock(&engine_lock);
    Py_END_ALLOW_THREADS model_ctx_done(ma, &ctx, keep && st == CVX_OK && !measure);
    return st;
}

static PyObject *model_arena_bytes(model_arena *ma) { return PyLong_FromSize_t(ma->last_bytes); }

static PyObject *model_trim_arena(model_arena *ma) {
    if (ma->arena && !ma->busy) cvx_arena_trim(ma->arena);
    Py_RETURN_NONE;
}

/* ---- the VAE ------------------------------------------------------------------------------------------------- */

typedef struct {
    PyObject_HEAD cvx_vae *vae;
    model_arena arena;
} VAEObject;

static void VAE_dealloc(VAEObject *self) {
    cvx_arena_destroy(self->arena.arena);
    cvx_vae_free(self->vae);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* VAE(config: dict, weights_path: str, dtype: str); the config's keys are cvx_vae_config's fields. The C model
 * checks the values; here they are only read, exactly. */
static int VAE_init(VAEObject *self, PyObject *args, PyObject *kwds) {
    (void)kwds;
    cvx_vae_config cfg;
    PyObject *c = NULL, *path_obj = NULL;
    const char *dtype_name = NULL;
    if (!PyArg_ParseTuple(args, "OO&s", &c, PyUnicode_FSConverter, &path_obj, &dtype_name)) return -1;
    cvx_dtype dtype;
    if (parse_dtype(dtype_name, &dtype) < 0 || read_config(c, "VAE", cvx_vae_config_fields, &cfg, sizeof(cfg)) < 0) {
        Py_DECREF(path_obj);
        return -1;
    }
    cvx_st_file *st_file = NULL;
    cvx_status st;
    cvx_vae *vae = NULL;
    Py_BEGIN_ALLOW_THREADS st = cvx_st_open(PyBytes_AS_STRING(path_obj), &st_file);
    if (st == CVX_OK) st = cvx_vae_create(&cfg, st_file, dtype, &vae);
    cvx_st_close(st_file); /* our reference: weights read in place keep the mapping with one of their own */
    Py_END_ALLOW_THREADS Py_DECREF(path_obj);
    if (st != CVX_OK) {
        raise_status(st);
        return -1;
    }
    cvx_vae_free(self->vae);
    self->vae = vae;
    return 0;
}

static int parse_tiling(PyObject *obj, cvx_vae_tiling *t) {
    memset(t, 0, sizeof(*t));
    if (obj == Py_None) return 0;
    t->enabled = 1;
    PyObject *h = NULL, *w = NULL;
    if (!PyArg_ParseTuple(obj, "OOdd", &h, &w, &t->tile_overlap_factor_height, &t->tile_overlap_factor_width))
        return -1;
    return exact_int(h, "tiling", "tile_sample_min_height", &t->tile_sample_min_height) < 0 ||
                   exact_int(w, "tiling", "tile_sample_min_width", &t->tile_sample_min_width) < 0
               ? -1
               : 0;
}

typedef struct vae_call {
    cvx_vae *vae;
    const cvx_tensor *x;
    int decode, slicing;
    const cvx_vae_tiling *tiling;
    cvx_tensor *out;
} vae_call;

static cvx_status vae_call_run(cvx_ctx *ctx, void *arg) {
    const vae_call *c = arg;
    return c->decode ? cvx_vae_decode(ctx, c->vae, c->x, c->slicing, c->tiling, c->out)
                     : cvx_vae_encode(ctx, c->vae, c->x, c->slicing, c->tiling, c->out);
}

/* decode(z, slicing: bool, tiling: None | (h, w, fh, fw)) / encode(x, slicing, tiling); measure: only the arena bytes
 * the run would need, as an int. */
static PyObject *VAE_call(VAEObject *self, PyObject *input, int decode, int slicing, PyObject *tiling_obj,
                          int measure) {
    cvx_vae_tiling tiling;
    if (parse_tiling(tiling_obj, &tiling) < 0) return NULL;
    cvx_tensor x, out = {0};
    /* float64 or strided input is converted, not rejected */
    PyArrayObject *arr = array_f32(input, 5,
                                   decode ? "latents [batch, channels, frames, height, width]"
                                          : "sample [batch, channels, frames, height, width]");
    if (!arr) return NULL;
    tensor_view(arr, &x);
    vae_call call = {self->vae, &x, decode, slicing, &tiling, &out};
    size_t measured = 0;
    /* the VAE runs once per pipeline call: its arena is given back after each, not kept between calls */
    const cvx_status st =
        self->vae ? model_run(&self->arena, cvx_vae_weights(self->vae), vae_call_run, &call, 0, measure, &measured)
                  : CVX_FAIL(CVX_ERR_INVALID, "the VAE was not initialised");
    Py_DECREF(arr);
    if (st != CVX_OK) return raise_status(st);
    return measure ? PyLong_FromSize_t(measured) : tensor_to_array(&out);
}

static PyObject *VAE_run(VAEObject *self, PyObject *args, int decode) {
    PyObject *input = NULL, *tiling_obj = Py_None;
    int slicing = 0;
    if (!PyArg_ParseTuple(args, "O|pO", &input, &slicing, &tiling_obj)) return NULL;
    return VAE_call(self, input, decode, slicing, tiling_obj, 0);
}

static PyObject *VAE_decode(VAEObject *self, PyObject *args) { return VAE_run(self, args, 1); }
static PyObject *VAE_encode(VAEObject *self, PyObject *args) { return VAE_run(self, args, 0); }

/* measure(x, decode: bool, slicing: bool, tiling) -> the arena bytes that decode / encode would need */
static PyObject *VAE_measure(VAEObject *self, PyObject *args) {
    PyObject *input = NULL, *tiling_obj = Py_None;
    int decode = 1, slicing = 0;
    if (!PyArg_ParseTuple(args, "Opp|O", &input, &decode, &slicing, &tiling_obj)) return NULL;
    return VAE_call(self, input, decode, slicing, tiling_obj, 1);
}

static PyObject *VAE_trim_arena(VAEObject *self, PyObject *noargs) {
    (void)noargs;
    return model_trim_arena(&self->arena);
}

/* output_shape(input_shape, decode: bool, tiling) -> the output shape, computed before any work */
static PyObject *VAE_output_shape(VAEObject *self, PyObject *args) {
    int64_t in[5], out[5];
    long long v[5];
    int decode = 1;
    PyObject *tiling_obj = Py_None;
    if (!PyArg_ParseTuple(args, "(LLLLL)|pO", &v[0], &v[1], &v[2], &v[3], &v[4], &decode, &tiling_obj)) return NULL;
    for (int i = 0; i < 5; i++) in[i] = v[i];
    cvx_vae_tiling tiling;
    if (parse_tiling(tiling_obj, &tiling) < 0) return NULL;
    cvx_status st =
        decode ? cvx_vae_decode_shape(self->vae, in, &tiling, out) : cvx_vae_encode_shape(self->vae, in, &tiling, out);
    if (st != CVX_OK) return raise_status(st);
    return Py_BuildValue("(LLLLL)", (long long)out[0], (long long)out[1], (long long)out[2], (long long)out[3],
                         (long long)out[4]);
}

static PyObject *VAE_weight_bytes(VAEObject *self, void *closure) {
    (void)closure;
    return PyLong_FromLongLong(cvx_vae_weight_bytes(self->vae));
}

static PyObject *VAE_weight_groups(VAEObject *self, void *closure) {
    (void)closure;
    return PyLong_FromLong(cvx_vae_num_weight_groups(self->vae));
}

static PyObject *VAE_weight_info(VAEObject *self, PyObject *noargs) {
    (void)noargs;
    return weights_info(self->vae ? cvx_vae_weights(self->vae) : NULL);
}

static PyObject *VAE_weight_data(VAEObject *self, PyObject *index) {
    return weights_data(self->vae ? cvx_vae_weights(self->vae) : NULL, index);
}

static PyMethodDef VAE_methods[] = {
    {"weight_info", (PyCFunction)VAE_weight_info, METH_NOARGS, "weight_info() -> [(name, dtype, shape)]"},
    {"weight_data", (PyCFunction)VAE_weight_data, METH_O, "weight_data(i) -> ndarray copy of tensor i"},
    {"decode", (PyCFunction)VAE_decode, METH_VARARGS, "decode(z, slicing=False, tiling=None) -> ndarray"},
    {"measure", (PyCFunction)VAE_measure, METH_VARARGS,
     "measure(x, decode, slicing, tiling=None) -> arena bytes (a measuring pass: no work)"},
    {"trim_arena", (PyCFunction)VAE_trim_arena, METH_NOARGS, "trim_arena(): free the activation arena"},
    {"encode", (PyCFunction)VAE_encode, METH_VARARGS, "encode(x, slicing=False, tiling=None) -> moments ndarray"},
    {"output_shape", (PyCFunction)VAE_output_shape, METH_VARARGS,
     "output_shape(shape, decode=True, tiling=None) -> tuple"},
    {NULL, NULL, 0, NULL},
};

static PyObject *VAE_arena_bytes(VAEObject *self, void *closure) {
    (void)closure;
    return model_arena_bytes(&self->arena);
}

static PyGetSetDef VAE_getset[] = {
    {"weight_bytes", (getter)VAE_weight_bytes, NULL, "bytes held by the weights", NULL},
    {"arena_bytes", (getter)VAE_arena_bytes, NULL, "the activation arena of the last forward (bytes)", NULL},
    {"num_weight_groups", (getter)VAE_weight_groups, NULL, "number of weight groups", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject VAEType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "cogvideo_c._C.VAE",
    .tp_basicsize = sizeof(VAEObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)VAE_init,
    .tp_dealloc = (destructor)VAE_dealloc,
    .tp_methods = VAE_methods,
    .tp_getset = VAE_getset,
    .tp_doc = "The CogVideoX VAE in C (use cogvideo_c.AutoencoderKLCogVideoX).",
};

/* ---- the transformer ------------------------------------------------------------------------------------------ */

typedef struct {
    PyObject_HEAD cvx_transformer *tr;
    model_arena arena; /* kept reserved between calls: the denoising steps */
} TransformerObject;

static void Transformer_dealloc(TransformerObject *self) {
    cvx_arena_destroy(self->arena.arena);
    cvx_transformer_free(self->tr);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* Transformer(config: dict, weights_path: str | None, dtype: str, seed: int = 0); the config's keys are
 * cvx_transformer_config's fields. No path: seeded random weights. */
static int Transformer_init(TransformerObject *self, PyObject *args, PyObject *kwds) {
    (void)kwds;
    cvx_transformer_config c;
    PyObject *cfg = NULL, *path_obj = NULL, *path_arg = NULL;
    const char *dtype_name = NULL;
    unsigned long long seed = 0;
    if (!PyArg_ParseTuple(args, "OOs|K", &cfg, &path_arg, &dtype_name, &seed) ||
        read_config(cfg, "transformer", cvx_transformer_config_fields, &c, sizeof(c)) < 0)
        return -1;
    cvx_dtype dtype;
    if (parse_dtype(dtype_name, &dtype) < 0) return -1;
    if (path_arg != Py_None && !PyUnicode_FSConverter(path_arg, &path_obj)) return -1;
    cvx_st_file *st_file = NULL;
    cvx_transformer *tr = NULL;
    cvx_status st = CVX_OK;
    Py_BEGIN_ALLOW_THREADS if (path_obj) st = cvx_st_open(PyBytes_AS_STRING(path_obj), &st_file);
    if (st == CVX_OK) st = cvx_transformer_create(&c, st_file, dtype, seed, &tr);
    cvx_st_close(st_file);
    Py_END_ALLOW_THREADS Py_XDECREF(path_obj);
    if (st != CVX_OK) {
        raise_status(st);
        return -1;
    }
    cvx_transformer_free(self->tr);
    self->tr = tr;
    return 0;
}

typedef struct transformer_call {
    cvx_transformer *tr;
    const cvx_transformer_inputs *in;
    cvx_tensor *out;
} transformer_call;

static cvx_status transformer_call_run(cvx_ctx *ctx, void *arg) {
    const transformer_call *c = arg;
    return cvx_transformer_forward(ctx, c->tr, c->in, c->out);
}

/* forward(hidden [B,F,C,H,W], text [B,L,Dt], timestep [B], ofs [B] | None, pos_table [S,D] | None,
 *         use_learned: bool, rope_cos [N,hd] | None, rope_sin | None) -> [B, F, C_out, H, W] */
static PyObject *Transformer_call(TransformerObject *self, PyObject *args, int measure) {
    PyObject *h_obj, *t_obj, *ts_obj, *ofs_obj, *pos_obj, *cos_obj, *sin_obj, *lora_obj = Py_None;
    int use_learned = 0;
    if (!PyArg_ParseTuple(args, "OOOOOpOO|O", &h_obj, &t_obj, &ts_obj, &ofs_obj, &pos_obj, &use_learned, &cos_obj,
                          &sin_obj, &lora_obj))
        return NULL;
    PyArrayObject *h = NULL, *txt = NULL, *ts = NULL, *ofs = NULL, *pos = NULL, *cs = NULL, *sn = NULL, *ls = NULL;
    PyObject *result = NULL;
    cvx_tensor ht, tt, out = {0};
    if (!(h = array_f32(h_obj, 5, "hidden_states")) || !(txt = array_f32(t_obj, 3, "encoder_hidden_states")) ||
        !(ts = array_f32(ts_obj, 1, "timestep")))
        goto done;
    if (ofs_obj != Py_None && !(ofs = array_f32(ofs_obj, 1, "ofs"))) goto done;
    if (pos_obj != Py_None && !(pos = array_f32(pos_obj, 2, "positional table"))) goto done;
    if (cos_obj != Py_None &&
        (!(cs = array_f32(cos_obj, 2, "image_rotary_emb[0]")) || !(sn = array_f32(sin_obj, 2, "image_rotary_emb[1]"))))
        goto done;
    if (lora_obj != Py_None && !(ls = array_f32(lora_obj, 1, "LoRA adapter weights"))) goto done;
    tensor_view(h, &ht);
    tensor_view(txt, &tt);
    const npy_intp B = PyArray_DIM(h, 0);
    if (PyArray_DIM(ts, 0) != B || (ofs && PyArray_DIM(ofs, 0) != B)) {
        PyErr_Format(PyExc_ValueError, "timestep and ofs must have one value per batch item (%ld)", (long)B);
        goto done;
    }
    if (cs && (PyArray_DIM(sn, 0) != PyArray_DIM(cs, 0) || PyArray_DIM(sn, 1) != PyArray_DIM(cs, 1))) {
        PyErr_SetString(PyExc_ValueError, "image_rotary_emb's cos and sin tables must have the same shape");
        goto done;
    }
    cvx_transformer_inputs in = {
        .hidden = &ht,
        .text = &tt,
        .timestep = PyArray_DATA(ts),
        .ofs = ofs ? PyArray_DATA(ofs) : NULL,
        .pos_table = pos ? PyArray_DATA(pos) : NULL,
        .use_learned_table = use_learned,
        .rope_cos = cs ? PyArray_DATA(cs) : NULL,
        .rope_sin = sn ? PyArray_DATA(sn) : NULL,
        .timestep_len = PyArray_DIM(ts, 0),
        .ofs_len = ofs ? PyArray_DIM(ofs, 0) : 0,
        .pos_rows = pos ? PyArray_DIM(pos, 0) : 0,
        .pos_cols = pos ? PyArray_DIM(pos, 1) : 0,
        .rope_rows = cs ? PyArray_DIM(cs, 0) : 0,
        .rope_cols = cs ? PyArray_DIM(cs, 1) : 0,
        .lora_scales = ls ? PyArray_DATA(ls) : NULL,
        .lora_count = ls ? (int)PyArray_DIM(ls, 0) : 0,
    };
    transformer_call call = {self->tr, &in, &out};
    size_t measured = 0;
    /* the arena stays reserved between calls: the denoising steps of one shape allocate nothing */
    const cvx_status st = self->tr ? model_run(&self->arena, cvx_transformer_weights(self->tr), transformer_call_run,
                                               &call, 1, measure, &measured)
                                   : CVX_FAIL(CVX_ERR_INVALID, "the transformer was not initialised");
    if (st != CVX_OK)
        raise_status(st);
    else
        result = measure ? PyLong_FromSize_t(measured) : tensor_to_array(&out);
done:
    Py_XDECREF(h);
    Py_XDECREF(txt);
    Py_XDECREF(ts);
    Py_XDECREF(ofs);
    Py_XDECREF(pos);
    Py_XDECREF(cs);
    Py_XDECREF(sn);
    Py_XDECREF(ls);
    return result;
}

static PyObject *Transformer_forward(TransformerObject *self, PyObject *args) {
    return Transformer_call(self, args, 0);
}

/* measure(the forward's arguments) -> the arena bytes the forward would need */
static PyObject *Transformer_measure(TransformerObject *self, PyObject *args) {
    return Transformer_call(self, args, 1);
}

static PyObject *Transformer_trim_arena(TransformerObject *self, PyObject *noargs) {
    (void)noargs;
    return model_trim_arena(&self->arena);
}

static PyObject *Transformer_weight_bytes(TransformerObject *self, void *closure) {
    (void)closure;
    return PyLong_FromLongLong(cvx_transformer_weight_bytes(self->tr));
}

static PyObject *Transformer_weight_groups(TransformerObject *self, void *closure) {
    (void)closure;
    return PyLong_FromLong(cvx_transformer_num_weight_groups(self->tr));
}

static PyObject *Transformer_weight_info(TransformerObject *self, PyObject *noargs) {
    (void)noargs;
    return weights_info(self->tr ? cvx_transformer_weights(self->tr) : NULL);
}

static PyObject *Transformer_weight_data(TransformerObject *self, PyObject *index) {
    return weights_data(self->tr ? cvx_transformer_weights(self->tr) : NULL, index);
}

/* ---- LoRA adapters: each call changes where weight slots point, so it holds the engine lock alone ---- */

static cvx_status lora_locked(cvx_transformer *tr, cvx_status (*fn)(cvx_transformer *, void *), void *arg) {
    cvx_status st;
    Py_BEGIN_ALLOW_THREADS pthread_rwlock_wrlock(&engine_lock);
    st = fn(tr, arg);
    pthread_rwlock_unlock(&engine_lock);
    Py_END_ALLOW_THREADS return st;
}

typedef struct lora_load_call {
    const char *path, *prefix;
    const char *const *modules;
    const float *scalings;
    int count;
} lora_load_call;

static cvx_status lora_load_run(cvx_transformer *tr, void *arg) {
    const lora_load_call *c = arg;
    cvx_st_file *st = NULL;
    CVX_CHECK(cvx_st_open(c->path, &st)); /* every header size checked against the file (io/safetensors.c) */
    const cvx_status status = cvx_transformer_lora_load(tr, st, c->prefix, c->modules, c->scalings, c->count);
    cvx_st_close(st); /* the adapter keeps its own reference while its tensors point into the mapping */
    return status;
}

/* lora_load(path, prefix, modules: [str], scalings: [float]) -> the adapter's index */
static PyObject *Transformer_lora_load(TransformerObject *self, PyObject *args) {
    PyObject *path_arg = NULL, *mods = NULL, *scal = NULL, *path_obj = NULL, *result = NULL;
    const char *prefix = NULL;
    if (!self->tr) return raise_status(CVX_FAIL(CVX_ERR_INVALID, "the transformer was not initialised"));
    if (!PyArg_ParseTuple(args, "OsOO", &path_arg, &prefix, &mods, &scal) ||
        !PyUnicode_FSConverter(path_arg, &path_obj))
        return NULL;
    PyObject *mseq = PySequence_Fast(mods, "modules must be a sequence of str");
    PyArrayObject *sc = mseq ? array_f32(scal, 1, "scalings") : NULL;
    const char **names = NULL;
    const Py_ssize_t n = mseq ? PySequence_Fast_GET_SIZE(mseq) : 0;
    if (!sc) goto done;
    if (PyArray_DIM(sc, 0) != n || n < 1 || n > CVX_WEIGHTS_MAX_TENSORS) {
        PyErr_Format(PyExc_ValueError, "lora_load needs 1 to %d modules with one scaling each (got %zd and %zd)",
                     CVX_WEIGHTS_MAX_TENSORS, n, (Py_ssize_t)PyArray_DIM(sc, 0));
        goto done;
    }
    if (!(names = PyMem_Calloc((size_t)n, sizeof(char *)))) {
        PyErr_NoMemory();
        goto done;
    }
    for (Py_ssize_t i = 0; i < n; i++)
        if (!(names[i] = PyUnicode_AsUTF8(PySequence_Fast_GET_ITEM(mseq, i)))) goto done;
    lora_load_call call = {PyBytes_AS_STRING(path_obj), prefix, names, PyArray_DATA(sc), (int)n};
    const cvx_status st = lora_locked(self->tr, lora_load_run, &call);
    result = st == CVX_OK ? PyLong_FromLong(cvx_transformer_num_adapters(self->tr) - 1) : raise_status(st);
done:
    PyMem_Free(names);
    Py_XDECREF(sc);
    Py_XDECREF(mseq);
    Py_XDECREF(path_obj);
    return result;
}

static cvx_status lora_delete_run(cvx_transformer *tr, void *arg) {
    return cvx_transformer_lora_delete(tr, *(int *)arg);
}

static PyObject *Transformer_lora_delete(TransformerObject *self, PyObject *arg) {
    int index = (int)PyLong_AsLong(arg);
    if (index == -1 && PyErr_Occurred()) return NULL;
    if (!self->tr) return raise_status(CVX_FAIL(CVX_ERR_INVALID, "the transformer was not initialised"));
    const cvx_status st = lora_locked(self->tr, lora_delete_run, &index);
    if (st != CVX_OK) return raise_status(st);
    Py_RETURN_NONE;
}

typedef struct lora_fuse_call {
    const float *scales;
    int count, safe;
} lora_fuse_call;

static cvx_status lora_fuse_run(cvx_transformer *tr, void *arg) {
    const lora_fuse_call *c = arg;
    return cvx_transformer_lora_fuse(tr, c->scales, c->count, c->safe);
}

/* lora_fuse(scales [adapters] float32, safe_fusing: bool) */
static PyObject *Transformer_lora_fuse(TransformerObject *self, PyObject *args) {
    PyObject *scal = NULL;
    int safe = 0;
    if (!self->tr) return raise_status(CVX_FAIL(CVX_ERR_INVALID, "the transformer was not initialised"));
    if (!PyArg_ParseTuple(args, "Op", &scal, &safe)) return NULL;
    PyArrayObject *sc = array_f32(scal, 1, "scales");
    if (!sc) return NULL;
    lora_fuse_call call = {PyArray_DATA(sc), (int)PyArray_DIM(sc, 0), safe};
    const cvx_status st = lora_locked(self->tr, lora_fuse_run, &call);
    Py_DECREF(sc);
    if (st != CVX_OK) return raise_status(st);
    Py_RETURN_NONE;
}

static cvx_status lora_unfuse_run(cvx_transformer *tr, void *arg) {
    return *(int *)arg ? cvx_transformer_lora_bake(tr) : cvx_transformer_lora_unfuse(tr);
}

/* lora_unfuse(bake: bool): back to the original weights, or (bake) keep the fused ones as the model's own */
static PyObject *Transformer_lora_unfuse(TransformerObject *self, PyObject *arg) {
    int bake = PyObject_IsTrue(arg);
    if (bake < 0) return NULL;
    if (!self->tr) return raise_status(CVX_FAIL(CVX_ERR_INVALID, "the transformer was not initialised"));
    const cvx_status st = lora_locked(self->tr, lora_unfuse_run, &bake);
    if (st != CVX_OK) return raise_status(st);
    Py_RETURN_NONE;
}

/* lora_bytes() -> ([device-layout bytes of each adapter], host bytes of the fused copies) */
static PyObject *Transformer_lora_bytes(TransformerObject *self, PyObject *noargs) {
    (void)noargs;
    if (!self->tr) return raise_status(CVX_FAIL(CVX_ERR_INVALID, "the transformer was not initialised"));
    const int n = cvx_transformer_num_adapters(self->tr);
    PyObject *list = PyList_New(n);
    for (int i = 0; list && i < n; i++) {
        PyObject *v = PyLong_FromLongLong(cvx_transformer_adapter_bytes(self->tr, i));
        if (!v) {
            Py_CLEAR(list);
            break;
        }
        PyList_SET_ITEM(list, i, v);
    }
    return list ? Py_BuildValue("(NL)", list, (long long)cvx_transformer_fused_bytes(self->tr)) : NULL;
}

static PyMethodDef Transformer_methods[] = {
    {"lora_load", (PyCFunction)Transformer_lora_load, METH_VARARGS,
     "lora_load(path, prefix, modules, scalings) -> adapter index"},
    {"lora_delete", (PyCFunction)Transformer_lora_delete, METH_O, "lora_delete(index)"},
    {"lora_fuse", (PyCFunction)Transformer_lora_fuse, METH_VARARGS, "lora_fuse(scales, safe_fusing)"},
    {"lora_unfuse", (PyCFunction)Transformer_lora_unfuse, METH_O, "lora_unfuse(bake)"},
    {"lora_bytes", (PyCFunction)Transformer_lora_bytes, METH_NOARGS, "lora_bytes() -> ([adapter bytes], fused)"},
    {"weight_info", (PyCFunction)Transformer_weight_info, METH_NOARGS, "weight_info() -> [(name, dtype, shape)]"},
    {"weight_data", (PyCFunction)Transformer_weight_data, METH_O, "weight_data(i) -> ndarray copy of tensor i"},
    {"forward", (PyCFunction)Transformer_forward, METH_VARARGS,
     "forward(hidden, text, timestep, ofs, pos_table, use_learned, rope_cos, rope_sin) -> ndarray"},
    {"measure", (PyCFunction)Transformer_measure, METH_VARARGS,
     "measure(the forward's arguments) -> arena bytes (a measuring pass: no work)"},
    {"trim_arena", (PyCFunction)Transformer_trim_arena, METH_NOARGS, "trim_arena(): free the activation arena"},
    {NULL, NULL, 0, NULL},
};

static PyObject *Transformer_arena_bytes(TransformerObject *self, void *closure) {
    (void)closure;
    return model_arena_bytes(&self->arena);
}

static PyGetSetDef Transformer_getset[] = {
    {"weight_bytes", (getter)Transformer_weight_bytes, NULL, "bytes held by the weights", NULL},
    {"arena_bytes", (getter)Transformer_arena_bytes, NULL, "the activation arena of the last forward (bytes)", NULL},
    {"num_weight_groups", (getter)Transformer_weight_groups, NULL, "number of weight groups", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject TransformerType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "cogvideo_c._C.Transformer",
    .tp_basicsize = sizeof(TransformerObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Transformer_init,
    .tp_dealloc = (destructor)Transformer_dealloc,
    .tp_methods = Transformer_methods,
    .tp_getset = Transformer_getset,
    .tp_doc = "The CogVideoX transformer in C (use cogvideo_c.CogVideoXTransformer3DModel).",
};

/* ---- the T5 encoder ---------------------------------------------------------------------------------------------- */

typedef struct {
    PyObject_HEAD cvx_t5 *t5;
    model_arena arena;
} T5Object;

static void T5_dealloc(T5Object *self) {
    cvx_arena_destroy(self->arena.arena);
    cvx_t5_free(self->t5);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* T5(config: dict, weights_path, dtype); the config's keys are cvx_t5_config's fields. */
static int T5_init(T5Object *self, PyObject *args, PyObject *kwds) {
    (void)kwds;
    cvx_t5_config c;
    PyObject *cfg = NULL, *path_obj = NULL;
    const char *dtype_name = NULL;
    if (!PyArg_ParseTuple(args, "OO&s", &cfg, PyUnicode_FSConverter, &path_obj, &dtype_name)) return -1;
    cvx_dtype dtype;
    /* the tensor names are borrowed from the dict's strings while the GIL is released: a private copy keeps them
     * alive whatever another thread does to the caller's dict */
    PyObject *held = PyDict_Check(cfg) ? PyDict_Copy(cfg) : (Py_INCREF(cfg), cfg);
    if (!held || parse_dtype(dtype_name, &dtype) < 0 ||
        read_config(held, "T5", cvx_t5_config_fields, &c, sizeof(c)) < 0) {
        Py_XDECREF(held);
        Py_DECREF(path_obj);
        return -1;
    }
    cvx_st_file *st_file = NULL;
    cvx_t5 *t5 = NULL;
    cvx_status st;
    Py_BEGIN_ALLOW_THREADS st = cvx_st_open(PyBytes_AS_STRING(path_obj), &st_file);
    if (st == CVX_OK) st = cvx_t5_create(&c, st_file, dtype, &t5);
    cvx_st_close(st_file);
    Py_END_ALLOW_THREADS Py_DECREF(path_obj);
    Py_DECREF(held);
    if (st != CVX_OK) {
        raise_status(st);
        return -1;
    }
    cvx_t5_free(self->t5);
    self->t5 = t5;
    return 0;
}

typedef struct t5_call {
    cvx_t5 *t5;
    const int64_t *ids, *mask;
    int64_t B, S;
    cvx_tensor *out;
} t5_call;

static cvx_status t5_call_run(cvx_ctx *ctx, void *arg) {
    const t5_call *c = arg;
    return cvx_t5_forward(ctx, c->t5, c->ids, c->mask, c->B, c->S, c->out);
}

/* forward(input_ids [B, S] int64, attention_mask [B, S] | None) -> [B, S, d_model] */
static PyObject *T5_call(T5Object *self, PyObject *args, int measure) {
    PyObject *ids_obj, *mask_obj = Py_None;
    if (!PyArg_ParseTuple(args, "O|O", &ids_obj, &mask_obj)) return NULL;
    PyArrayObject *ids =
        (PyArrayObject *)PyArray_FROM_OTF(ids_obj, NPY_INT64, NPY_ARRAY_IN_ARRAY | NPY_ARRAY_FORCECAST);
    PyArrayObject *mask = NULL;
    PyObject *result = NULL;
    if (!ids) return NULL;
    if (PyArray_NDIM(ids) != 2) {
        PyErr_Format(PyExc_ValueError, "input_ids must be 2-D [batch, tokens], got %d-D", PyArray_NDIM(ids));
        goto done;
    }
    if (mask_obj != Py_None) {
        mask = (PyArrayObject *)PyArray_FROM_OTF(mask_obj, NPY_INT64, NPY_ARRAY_IN_ARRAY | NPY_ARRAY_FORCECAST);
        if (!mask) goto done;
        if (PyArray_NDIM(mask) != 2 || PyArray_DIM(mask, 0) != PyArray_DIM(ids, 0) ||
            PyArray_DIM(mask, 1) != PyArray_DIM(ids, 1)) {
            PyErr_SetString(PyExc_ValueError, "attention_mask must have the shape of input_ids");
            goto done;
        }
    }
    cvx_tensor out = {0};
    const int64_t B = PyArray_DIM(ids, 0), S = PyArray_DIM(ids, 1);
    const int64_t *idp = PyArray_DATA(ids), *mp = mask ? PyArray_DATA(mask) : NULL;
    t5_call call = {self->t5, idp, mp, B, S, &out};
    size_t measured = 0;
    /* the text encoder runs once per pipeline call: its arena is given back after each */
    const cvx_status st =
        self->t5 ? model_run(&self->arena, cvx_t5_weights(self->t5), t5_call_run, &call, 0, measure, &measured)
                 : CVX_FAIL(CVX_ERR_INVALID, "the text encoder was not initialised");
    if (st != CVX_OK)
        raise_status(st);
    else
        result = measure ? PyLong_FromSize_t(measured) : tensor_to_array(&out);
done:
    Py_XDECREF(ids);
    Py_XDECREF(mask);
    return result;
}

static PyObject *T5_forward(T5Object *self, PyObject *args) { return T5_call(self, args, 0); }

/* measure(input_ids, attention_mask=None) -> the arena bytes the forward would need */
static PyObject *T5_measure(T5Object *self, PyObject *args) { return T5_call(self, args, 1); }

static PyObject *T5_trim_arena(T5Object *self, PyObject *noargs) {
    (void)noargs;
    return model_trim_arena(&self->arena);
}

static PyObject *T5_weight_bytes(T5Object *self, void *closure) {
    (void)closure;
    return PyLong_FromLongLong(cvx_t5_weight_bytes(self->t5));
}

static PyObject *T5_weight_groups(T5Object *self, void *closure) {
    (void)closure;
    return PyLong_FromLong(cvx_t5_num_weight_groups(self->t5));
}

static PyObject *T5_weight_info(T5Object *self, PyObject *noargs) {
    (void)noargs;
    return weights_info(self->t5 ? cvx_t5_weights(self->t5) : NULL);
}

static PyObject *T5_weight_data(T5Object *self, PyObject *index) {
    return weights_data(self->t5 ? cvx_t5_weights(self->t5) : NULL, index);
}

static PyMethodDef T5_methods[] = {
    {"weight_info", (PyCFunction)T5_weight_info, METH_NOARGS, "weight_info() -> [(name, dtype, shape)]"},
    {"weight_data", (PyCFunction)T5_weight_data, METH_O, "weight_data(i) -> ndarray copy of tensor i"},
    {"forward", (PyCFunction)T5_forward, METH_VARARGS, "forward(input_ids, attention_mask=None) -> ndarray"},
    {"measure", (PyCFunction)T5_measure, METH_VARARGS,
     "measure(input_ids, attention_mask=None) -> arena bytes (a measuring pass: no work)"},
    {"trim_arena", (PyCFunction)T5_trim_arena, METH_NOARGS, "trim_arena(): free the activation arena"},
    {NULL, NULL, 0, NULL},
};

static PyObject *T5_arena_bytes(T5Object *self, void *closure) {
    (void)closure;
    return model_arena_bytes(&self->arena);
}

static PyGetSetDef T5_getset[] = {
    {"weight_bytes", (getter)T5_weight_bytes, NULL, "bytes held by the weights", NULL},
    {"arena_bytes", (getter)T5_arena_bytes, NULL, "the activation arena of the last forward (bytes)", NULL},
    {"num_weight_groups", (getter)T5_weight_groups, NULL, "number of weight groups", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject T5Type = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "cogvideo_c._C.T5",
    .tp_basicsize = sizeof(T5Object),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)T5_init,
    .tp_dealloc = (destructor)T5_dealloc,
    .tp_methods = T5_methods,
    .tp_getset = T5_getset,
    .tp_doc = "The T5 encoder in C (use cogvideo_c.T5EncoderModel).",
};

/* ---- the weight schema ------------------------------------------------------------------------------------------ */

/* weight_schema(kind: "vae" | "transformer" | "t5", config: dict, dtype: str) -> [(name, shape, group,
 * stored_dtype)] in declaration order: what a model of that config declares (and a load checks a checkpoint
 * against), with nothing loaded or allocated. stored_dtype is the dtype the tensor is held in for that run dtype. */
static PyObject *py_weight_schema(PyObject *self, PyObject *args) {
    (void)self;
    const char *kind = NULL, *dtype_name = NULL;
    PyObject *cfg = NULL;
    if (!PyArg_ParseTuple(args, "sOs", &kind, &cfg, &dtype_name)) return NULL;
    cvx_dtype dtype;
    if (parse_dtype(dtype_name, &dtype) < 0) return NULL;
    cvx_weights ws;
    cvx_status st;
    /* the GIL stays held: the T5 config's tensor names are borrowed from the dict, and declaring is quick */
    if (strcmp(kind, "vae") == 0) {
        cvx_vae_config c;
        if (read_config(cfg, "VAE", cvx_vae_config_fields, &c, sizeof(c)) < 0) return NULL;
        st = cvx_vae_schema(&c, dtype, &ws);
    } else if (strcmp(kind, "transformer") == 0) {
        cvx_transformer_config c;
        if (read_config(cfg, "transformer", cvx_transformer_config_fields, &c, sizeof(c)) < 0) return NULL;
        st = cvx_transformer_schema(&c, dtype, &ws);
    } else if (strcmp(kind, "t5") == 0) {
        cvx_t5_config c;
        if (read_config(cfg, "T5", cvx_t5_config_fields, &c, sizeof(c)) < 0) return NULL;
        st = cvx_t5_schema(&c, dtype, &ws);
    } else {
        PyErr_Format(PyExc_ValueError, "unknown model kind '%s' (vae, transformer or t5)", kind);
        return NULL;
    }
    if (st != CVX_OK) return raise_status(st);
    PyObject *out = PyList_New(ws.count);
    for (int i = 0; out && i < ws.count; i++) {
        const cvx_weight_decl *d = &ws.decls[i];
        PyObject *shape = PyTuple_New(d->ndim);
        for (int k = 0; shape && k < d->ndim; k++) PyTuple_SET_ITEM(shape, k, PyLong_FromLongLong(d->shape[k]));
        PyObject *item =
            shape ? Py_BuildValue("(sNis)", d->name, shape, d->group, cvx_dtype_name(d->as_f32 ? CVX_F32 : dtype))
                  : NULL;
        if (!item)
            Py_CLEAR(out);
        else
            PyList_SET_ITEM(out, i, item);
    }
    cvx_weights_free(&ws);
    return out;
}

/* ---- devices and weight residency ------------------------------------------------------------------------------
 * The pipeline's offload policies drive each component's residency (mem/residency.h) through these. */

/* The weight registry of a VAE, Transformer or T5 core object; NULL (ValueError set) for anything else. */
static cvx_weights *weights_of(PyObject *obj) {
    const cvx_weights *ws = NULL;
    if (PyObject_TypeCheck(obj, &VAEType))
        ws = ((VAEObject *)obj)->vae ? cvx_vae_weights(((VAEObject *)obj)->vae) : NULL;
    else if (PyObject_TypeCheck(obj, &TransformerType))
        ws = ((TransformerObject *)obj)->tr ? cvx_transformer_weights(((TransformerObject *)obj)->tr) : NULL;
    else if (PyObject_TypeCheck(obj, &T5Type))
        ws = ((T5Object *)obj)->t5 ? cvx_t5_weights(((T5Object *)obj)->t5) : NULL;
    else {
        PyErr_SetString(PyExc_TypeError, "expected a VAE, Transformer or T5 core object");
        return NULL;
    }
    if (!ws || !ws->res) {
        PyErr_SetString(PyExc_ValueError, "the model holds no weights (it was not initialised)");
        return NULL;
    }
    return (cvx_weights *)ws; /* the registry is the model's own: residency changes where its slots point */
}

static const char *const policy_names[] = {"none", "model", "sequential"};

/* residency_set(core, device, policy, prefetch): policy is "none", "model" or "sequential". */
static PyObject *py_residency_set(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *core = NULL, *dev_obj = NULL;
    const char *policy_name = NULL;
    int prefetch = 0;
    if (!PyArg_ParseTuple(args, "OOsi", &core, &dev_obj, &policy_name, &prefetch)) return NULL;
    cvx_weights *ws = weights_of(core);
    cvx_device dev;
    int index = 0;
    if (!ws || parse_device_index(dev_obj, &dev, &index) < 0) return NULL;
    int policy = -1;
    for (int i = 0; i < 3; i++)
        if (strcmp(policy_name, policy_names[i]) == 0) policy = i;
    if (policy < 0) return PyErr_Format(PyExc_ValueError, "unknown residency policy '%s'", policy_name);
    cvx_status st;
#ifdef CVX_WITH_CUDA
    if (dev == CVX_DEVICE_CUDA && (st = cuda_init(index)) != CVX_OK) return raise_status(st);
#endif
    Py_BEGIN_ALLOW_THREADS pthread_rwlock_wrlock(&engine_lock);
    /* the host bytes the copies read: pinned once, before the first copy (a no-op but on CUDA) */
    if (dev == CVX_DEVICE_CUDA) cvx_weights_pin(ws, dev);
    st = cvx_residency_set(ws->res, dev, (cvx_policy)policy, prefetch);
    pthread_rwlock_unlock(&engine_lock);
    Py_END_ALLOW_THREADS if (st != CVX_OK) return raise_status(st);
    Py_RETURN_NONE;
}

static PyObject *py_residency_onload(PyObject *self, PyObject *core) {
    (void)self;
    cvx_weights *ws = weights_of(core);
    if (!ws) return NULL;
    cvx_status st;
    Py_BEGIN_ALLOW_THREADS pthread_rwlock_wrlock(&engine_lock);
    st = cvx_residency_onload(ws->res);
    pthread_rwlock_unlock(&engine_lock);
    Py_END_ALLOW_THREADS if (st != CVX_OK) return raise_status(st);
    Py_RETURN_NONE;
}

static PyObject *py_residency_offload(PyObject *self, PyObject *core) {
    (void)self;
    cvx_weights *ws = weights_of(core);
    if (!ws) return NULL;
    Py_BEGIN_ALLOW_THREADS pthread_rwlock_wrlock(&engine_lock);
    cvx_residency_offload(ws->res);
    pthread_rwlock_unlock(&engine_lock);
    Py_END_ALLOW_THREADS Py_RETURN_NONE;
}

static PyObject *py_residency_info(PyObject *self, PyObject *core) {
    (void)self;
    cvx_weights *ws = weights_of(core);
    if (!ws) return NULL;
    const cvx_residency *r = ws->res;
    static const char *const states[] = {"host", "in_flight", "resident"};
    const int n = cvx_residency_num_groups(r);
    PyObject *groups = PyList_New(n);
    if (!groups) return NULL;
    for (int g = 0; g < n; g++) {
        PyObject *item =
            Py_BuildValue("(Ls)", (long long)cvx_residency_group_bytes(r, g), states[cvx_residency_state(r, g)]);
        if (!item) {
            Py_DECREF(groups);
            return NULL;
        }
        PyList_SET_ITEM(groups, g, item);
    }
    cvx_residency_stats s;
    cvx_residency_get_stats(r, &s);
    return Py_BuildValue(
        "{s:s,s:s,s:N,s:L,s:L,s:L,s:L,s:L,s:L,s:L,s:L}", "device", cvx_device_name(cvx_residency_device(r)), "policy",
        policy_names[cvx_residency_policy(r)], "groups", groups, "mapped_bytes", (long long)ws->mapped_bytes,
        "pinned_bytes", (long long)ws->pinned_bytes, "bytes_copied", (long long)s.bytes_copied, "copies",
        (long long)s.copies, "copy_ns", (long long)s.copy_ns, "wait_ns", (long long)s.wait_ns, "resident_bytes",
        (long long)s.resident_bytes, "peak_resident_bytes", (long long)s.peak_resident_bytes);
}

static PyObject *py_residency_reset_stats(PyObject *self, PyObject *core) {
    (void)self;
    cvx_weights *ws = weights_of(core);
    if (!ws) return NULL;
    Py_BEGIN_ALLOW_THREADS cvx_residency_reset_stats(ws->res);
    Py_END_ALLOW_THREADS Py_RETURN_NONE;
}

/* set_bandwidth(device, bytes_per_second): the emulated link's speed; <= 0 as fast as memcpy. */
static PyObject *py_set_bandwidth(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *dev_obj = NULL;
    double bps = 0.0;
    cvx_device dev;
    if (!PyArg_ParseTuple(args, "Od", &dev_obj, &bps) || parse_device(dev_obj, &dev) < 0) return NULL;
    if (isnan(bps)) return PyErr_Format(PyExc_ValueError, "bandwidth must be a number of bytes per second");
    cvx_mem_set_bandwidth(dev, bps);
    Py_RETURN_NONE;
}

static PyObject *py_bandwidth(PyObject *self, PyObject *args) {
    (void)self;
    cvx_device dev;
    if (device_args(args, &dev) < 0) return NULL;
    return PyFloat_FromDouble(cvx_mem_bandwidth(dev));
}

/* stage_mark(device): restart the window peaks; stage_peaks(device) -> (total, weights, activations) since. */
static PyObject *py_stage_mark(PyObject *self, PyObject *args) {
    (void)self;
    cvx_device dev;
    if (device_args(args, &dev) < 0) return NULL;
    cvx_mem_mark_window(dev);
    Py_RETURN_NONE;
}

static PyObject *py_stage_peaks(PyObject *self, PyObject *args) {
    (void)self;
    cvx_device dev;
    if (device_args(args, &dev) < 0) return NULL;
    cvx_mem_stats s;
    cvx_mem_get_stats(dev, &s);
    return Py_BuildValue("(LLL)", (long long)s.window_peak_bytes, (long long)s.window_kind_peak_bytes[CVX_MEM_WEIGHTS],
                         (long long)s.window_kind_peak_bytes[CVX_MEM_ACTIVATIONS]);
}

/* _fail_at(n): test hook, the n-th allocation from now fails; returns the allocations made since the last call. */
static PyObject *py_fail_at(PyObject *self, PyObject *arg) {
    (void)self;
    const long long n = PyLong_AsLongLong(arg);
    if (n == -1 && PyErr_Occurred()) return NULL;
    return PyLong_FromLongLong((long long)cvx_mem_fail_at((int64_t)n));
}

/* ---- module -------------------------------------------------------------------------------------------------- */

static PyMethodDef module_methods[] = {
    {"memory_stats", py_memory_stats, METH_VARARGS, "memory_stats(device='cpu') -> dict"},
    {"reset_peak_memory_stats", py_reset_peak_memory_stats, METH_VARARGS, "reset_peak_memory_stats(device='cpu')"},
    {"set_memory_limit", py_set_memory_limit, METH_VARARGS, "set_memory_limit(device, bytes); bytes <= 0 removes it"},
    {"build_info", py_build_info, METH_NOARGS, "what was compiled"},
    {"cuda_device_count", py_cuda_device_count, METH_NOARGS, "CUDA devices the runtime reports (0 without CUDA)"},
#if defined(CVX_WITH_CUDA) && !defined(CVX_CUDA_EMULATED)
    {"cuda_blas_load", py_cuda_blas_load, METH_NOARGS,
     "cuda_blas_load(): loads cuBLAS and cuBLASLt (otherwise loaded when the CUDA backend first starts)"},
#endif
    {"empty_cache", py_empty_cache, METH_NOARGS,
     "empty_cache(): the CUDA allocator's cached blocks back to the driver"},
    {"cuda_mem_get_info", py_cuda_mem_get_info, METH_VARARGS,
     "cuda_mem_get_info(device='cuda') -> (free, total) bytes of the GPU (cudaMemGetInfo)"},
    {"safetensors_index", py_safetensors_index, METH_VARARGS,
     "safetensors_index(path) -> {name: (dtype, shape)} after validating the file"},
    {"weight_schema", py_weight_schema, METH_VARARGS,
     "weight_schema(kind, config, dtype) -> [(name, shape, group, stored_dtype)] in declaration order"},
    {"residency_set", py_residency_set, METH_VARARGS,
     "residency_set(core, device, policy, prefetch): move a component's weights ('none', 'model', 'sequential')"},
    {"residency_onload", py_residency_onload, METH_O, "residency_onload(core): every weight group to the device"},
    {"residency_offload", py_residency_offload, METH_O, "residency_offload(core): drop every device copy"},
    {"residency_info", py_residency_info, METH_O, "residency_info(core) -> dict of groups, copies and times"},
    {"residency_reset_stats", py_residency_reset_stats, METH_O, "residency_reset_stats(core)"},
    {"set_bandwidth", py_set_bandwidth, METH_VARARGS, "set_bandwidth(device, bytes_per_s): the emulated link"},
    {"bandwidth", py_bandwidth, METH_VARARGS, "bandwidth(device='emu') -> bytes per second (0: unlimited)"},
    {"stage_mark", py_stage_mark, METH_VARARGS, "stage_mark(device): restart the per-stage peaks"},
    {"stage_peaks", py_stage_peaks, METH_VARARGS, "stage_peaks(device) -> (total, weights, activations) peaks"},
    {"_fail_at", py_fail_at, METH_O, "_fail_at(n): test hook: the n-th allocation from now fails (n < 0: off)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "_C", "cogvideo_c C core", -1, module_methods, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__C(void) {
    import_array();
    cvx_ops_init();
    if (PyType_Ready(&VAEType) < 0 || PyType_Ready(&TransformerType) < 0 || PyType_Ready(&T5Type) < 0) return NULL;
    PyObject *m = PyModule_Create(&module_def);
    if (!m) return NULL;
    OutOfMemoryError = PyErr_NewExceptionWithDoc("cogvideo_c.OutOfMemoryError",
                                                 "A device memory limit or the system refused an allocation.",
                                                 PyExc_MemoryError, NULL);
    if (!OutOfMemoryError || PyModule_AddObject(m, "OutOfMemoryError", OutOfMemoryError) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    Py_INCREF(OutOfMemoryError);
    Py_INCREF(&VAEType);
    Py_INCREF(&TransformerType);
    Py_INCREF(&T5Type);
    if (PyModule_AddObject(m, "VAE", (PyObject *)&VAEType) < 0 ||
        PyModule_AddObject(m, "Transformer", (PyObject *)&TransformerType) < 0 ||
        PyModule_AddObject(m, "T5", (PyObject *)&T5Type) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}

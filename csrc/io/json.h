/* A small, strict JSON reader (RFC 8259) for safetensors headers and sharded index files.
 *
 * The parser reads exactly `len` bytes (the text need not be NUL-terminated, so a header can be parsed in place in
 * a read-only mapping), validates UTF-8, decodes escapes (\uXXXX with surrogate pairs) and limits nesting depth.
 * It is stricter than the RFC in two ways that matter for checkpoints: an object with a repeated key is rejected
 * (two tensors of one name would otherwise shadow each other) and "\u0000" is rejected (names are C strings).
 * Malformed input is CVX_ERR_IO, because the text always comes from a file; the message names the source and the
 * byte offset. Trailing whitespace is accepted: safetensors writers pad the header with spaces. */
#ifndef CVX_JSON_H
#define CVX_JSON_H

#include <stddef.h>
#include <stdint.h>

#include "../core/status.h"

#define CVX_JSON_MAX_DEPTH 64

typedef enum cvx_json_type {
    CVX_JSON_NULL = 0,
    CVX_JSON_BOOL,
    CVX_JSON_NUMBER,
    CVX_JSON_STRING,
    CVX_JSON_ARRAY,
    CVX_JSON_OBJECT,
} cvx_json_type;

typedef struct cvx_json cvx_json;
struct cvx_json {
    cvx_json_type type;
    int boolean;     /* CVX_JSON_BOOL: 0 or 1 */
    double number;   /* CVX_JSON_NUMBER: the value, as strtod reads it */
    int is_int;      /* CVX_JSON_NUMBER written without fraction or exponent and within int64: `integer` is exact */
    int64_t integer; /* (byte offsets past 2^53 would be rounded in `number`) */
    char *string;    /* CVX_JSON_STRING: decoded UTF-8, NUL-terminated, no NUL inside */
    size_t string_len;
    size_t count;    /* CVX_JSON_ARRAY, CVX_JSON_OBJECT: number of elements or members */
    cvx_json *items; /* the elements, or the members' values, in document order */
    char **keys;     /* CVX_JSON_OBJECT: keys[i] names items[i] (NUL-terminated UTF-8) */
};

/* Parses text[0, len) into a tree owned by *out (free it with cvx_json_free). `source` names where the text came
 * from in error messages, e.g. "header of 'model.safetensors'". On failure *out is NULL. */
cvx_status cvx_json_parse(const char *text, size_t len, const char *source, cvx_json **out);
/* Frees a tree from cvx_json_parse; NULL is ignored. */
void cvx_json_free(cvx_json *v);

/* The value of member `key` of an object; NULL when `obj` is not an object or has no such member. */
const cvx_json *cvx_json_get(const cvx_json *obj, const char *key);
/* "null", "a boolean", "a number", "a string", "an array", "an object": for messages like "is a string, not an
 * array". */
const char *cvx_json_type_name(cvx_json_type type);

#endif

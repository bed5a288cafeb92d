/* A small, strict, streaming JSON reader (RFC 8259) for safetensors headers and sharded index files.
 *
 * The caller walks the document in order (peek the next value's type, enter a container, step through its members,
 * read strings and numbers into its own storage, skip what it does not need) and builds only the structures it
 * keeps. No tree is built: a header's cost in memory is what the caller stores per tensor, never a node per JSON
 * value, so a 100 MB header of nested empty arrays costs nothing beyond its mapping.
 *
 * The reader reads exactly `len` bytes (the text need not be NUL-terminated, so a header is read in place in a
 * read-only mapping), validates UTF-8, decodes escapes (\uXXXX with surrogate pairs), limits nesting depth and
 * rejects "\u0000" (names are C strings). Repeated keys are the caller's to refuse: it knows which keys it keeps.
 * Malformed input is CVX_ERR_IO, because the text always comes from a file; the message names the source and the
 * byte offset. Whitespace around the root value is accepted: safetensors writers pad the header with spaces. */
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

typedef struct cvx_json_number {
    double value;    /* as strtod reads it */
    int is_int;      /* written without fraction or exponent and within int64: `integer` is exact */
    int64_t integer; /* (byte offsets past 2^53 would be rounded in `value`) */
} cvx_json_number;

typedef struct cvx_json_reader {
    const char *text; /* not NUL-terminated: every read is checked against len */
    size_t len;
    size_t pos;
    const char *source; /* names the text in messages, e.g. "the header of 'model.safetensors'" */
    int depth;          /* open containers */
    unsigned char is_object[CVX_JSON_MAX_DEPTH];
    unsigned char started[CVX_JSON_MAX_DEPTH]; /* a member of the container has been stepped to */
} cvx_json_reader;

void cvx_json_reader_init(cvx_json_reader *r, const char *text, size_t len, const char *source);

/* The type of the next value, without consuming it. Fails at the end of the text or at a byte that starts no value. */
cvx_status cvx_json_peek(cvx_json_reader *r, cvx_json_type *type);
/* Enters the object or array that comes next (fails on any other value, or past CVX_JSON_MAX_DEPTH levels). */
cvx_status cvx_json_enter(cvx_json_reader *r);
/* Steps to the next element of the innermost open array: *more is 1 when a value follows (read or skip it before
 * stepping again), 0 when the array has closed. */
cvx_status cvx_json_next(cvx_json_reader *r, int *more);
/* Steps to the next member of the innermost open object: with *more 1, its key is decoded into key[0, key_cap)
 * (NUL-terminated, length in *key_len; a key that does not fit fails) and its value follows. */
cvx_status cvx_json_next_member(cvx_json_reader *r, char *key, size_t key_cap, size_t *key_len, int *more);
/* Reads the string that comes next into dst[0, cap) (NUL-terminated; a string that does not fit fails). The decoded
 * text is never longer than its JSON form, so a buffer of the raw text's size always suffices. */
cvx_status cvx_json_read_string(cvx_json_reader *r, char *dst, size_t cap, size_t *len);
/* Reads the number that comes next. */
cvx_status cvx_json_read_number(cvx_json_reader *r, cvx_json_number *out);
/* Checks and steps over the next value, whatever it is, storing nothing. */
cvx_status cvx_json_skip(cvx_json_reader *r);
/* After the root value: fails unless only whitespace remains. */
cvx_status cvx_json_finish(cvx_json_reader *r);

/* "null", "a boolean", "a number", "a string", "an array", "an object": for messages like "is a string, not an
 * array". */
const char *cvx_json_type_name(cvx_json_type type);

#endif

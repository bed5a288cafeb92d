#include "json.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static cvx_status json_fail_at(const cvx_json_reader *r, const char *file, int line, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 4, 5)))
#endif
    ;

static cvx_status json_fail_at(const cvx_json_reader *r, const char *file, int line, const char *fmt, ...) {
    char what[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof(what), fmt, ap);
    va_end(ap);
    return cvx_error_set(CVX_ERR_IO, file, line, "malformed JSON in %s at byte %zu: %s", r->source, r->pos, what);
}

#define JSON_FAIL(r, ...) json_fail_at((r), __FILE__, __LINE__, __VA_ARGS__)

const char *cvx_json_type_name(cvx_json_type type) {
    switch (type) {
    case CVX_JSON_NULL: return "null";
    case CVX_JSON_BOOL: return "a boolean";
    case CVX_JSON_NUMBER: return "a number";
    case CVX_JSON_STRING: return "a string";
    case CVX_JSON_ARRAY: return "an array";
    case CVX_JSON_OBJECT: return "an object";
    }
    return "an unknown value";
}

void cvx_json_reader_init(cvx_json_reader *r, const char *text, size_t len, const char *source) {
    memset(r, 0, sizeof(*r));
    r->text = text;
    r->len = len;
    r->source = source;
}

static void json_skip_ws(cvx_json_reader *r) {
    while (r->pos < r->len) {
        char c = r->text[r->pos];
        if (c != ' ' && c != '\t' && c != '\n' && c != '\r') break;
        r->pos++;
    }
}

/* -1 when r->pos is at the end. */
static int json_byte(const cvx_json_reader *r) { return r->pos < r->len ? (unsigned char)r->text[r->pos] : -1; }

static cvx_status json_unexpected(cvx_json_reader *r, const char *expected) {
    int c = json_byte(r);
    if (c < 0) return JSON_FAIL(r, "unexpected end of input, expected %s", expected);
    if (c >= 0x20 && c < 0x7f) return JSON_FAIL(r, "unexpected '%c', expected %s", c, expected);
    return JSON_FAIL(r, "unexpected byte 0x%02x, expected %s", c, expected);
}

static int json_hex4(const char *s, uint32_t *out) {
    uint32_t v = 0;
    for (int i = 0; i < 4; i++) {
        char c = s[i];
        uint32_t d;
        if (c >= '0' && c <= '9')
            d = (uint32_t)(c - '0');
        else if (c >= 'a' && c <= 'f')
            d = (uint32_t)(c - 'a' + 10);
        else if (c >= 'A' && c <= 'F')
            d = (uint32_t)(c - 'A' + 10);
        else
            return 0;
        v = v * 16u + d;
    }
    *out = v;
    return 1;
}

static size_t json_put_utf8(char *dst, uint32_t cp) {
    if (cp < 0x80) {
        dst[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        dst[0] = (char)(0xc0 | (cp >> 6));
        dst[1] = (char)(0x80 | (cp & 0x3f));
        return 2;
    }
    if (cp < 0x10000) {
        dst[0] = (char)(0xe0 | (cp >> 12));
        dst[1] = (char)(0x80 | ((cp >> 6) & 0x3f));
        dst[2] = (char)(0x80 | (cp & 0x3f));
        return 3;
    }
    dst[0] = (char)(0xf0 | (cp >> 18));
    dst[1] = (char)(0x80 | ((cp >> 12) & 0x3f));
    dst[2] = (char)(0x80 | ((cp >> 6) & 0x3f));
    dst[3] = (char)(0x80 | (cp & 0x3f));
    return 4;
}

/* Length of the well-formed UTF-8 sequence at s[0, avail), or 0 (overlongs, surrogates and > U+10FFFF are
 * ill-formed: Unicode table 3-7). */
static size_t json_utf8_len(const unsigned char *s, size_t avail) {
    unsigned char c = s[0];
    size_t n;
    unsigned char lo = 0x80, hi = 0xbf; /* allowed range of the second byte */
    if (c >= 0xc2 && c <= 0xdf) {
        n = 2;
    } else if (c >= 0xe0 && c <= 0xef) {
        n = 3;
        if (c == 0xe0) lo = 0xa0;
        if (c == 0xed) hi = 0x9f;
    } else if (c >= 0xf0 && c <= 0xf4) {
        n = 4;
        if (c == 0xf0) lo = 0x90;
        if (c == 0xf4) hi = 0x8f;
    } else {
        return 0;
    }
    if (n > avail) return 0;
    if (s[1] < lo || s[1] > hi) return 0;
    for (size_t i = 2; i < n; i++)
        if (s[i] < 0x80 || s[i] > 0xbf) return 0;
    return n;
}

/* At an opening quote: decodes the string into a new NUL-terminated buffer. */

/* At an opening quote: checks the string and steps over it; with dst, decodes it into dst[0, cap). */
static cvx_status json_string(cvx_json_reader *r, char *dst, size_t cap, size_t *out_len) {
    size_t open = r->pos, start = r->pos + 1, end = start;
    /* First find the closing quote, so that every escape below has its bytes before `end`. */
    while (end < r->len && r->text[end] != '"') end += r->text[end] == '\\' ? 2 : 1;
    if (end >= r->len) return JSON_FAIL(r, "unterminated string");
    if (dst && cap == 0) return JSON_FAIL(r, "no room for a string");
    size_t n = 0;
    size_t i = start;
    while (i < end) {
        unsigned char c = (unsigned char)r->text[i];
        char code[4]; /* the UTF-8 bytes this step appends */
        const char *bytes = code;
        size_t k;
        r->pos = i;
        if (c < 0x20) return JSON_FAIL(r, "control character 0x%02x in string (must be escaped)", c);
        if (c >= 0x80) {
            k = json_utf8_len((const unsigned char *)r->text + i, end - i);
            if (k == 0) return JSON_FAIL(r, "invalid UTF-8 in string");
            bytes = r->text + i;
            i += k;
        } else if (c != '\\') {
            bytes = r->text + i;
            k = 1;
            i++;
        } else {
            char e = r->text[i + 1]; /* i + 1 < end: the scan above stepped over the escaped byte */
            const char *simple = e != '\0' ? strchr("\"\\/bfnrt", e) : NULL;
            uint32_t cp, lo;
            if (simple) {
                code[0] = "\"\\/\b\f\n\r\t"[simple - "\"\\/bfnrt"];
                k = 1;
                i += 2;
            } else {
                if (e != 'u' || end - i < 6 || !json_hex4(r->text + i + 2, &cp))
                    return JSON_FAIL(r, "invalid escape in string");
                i += 6;
                if (cp >= 0xd800 && cp <= 0xdbff) { /* a high surrogate must be followed by an escaped low one */
                    if (end - i < 6 || r->text[i] != '\\' || r->text[i + 1] != 'u' ||
                        !json_hex4(r->text + i + 2, &lo) || lo < 0xdc00 || lo > 0xdfff)
                        return JSON_FAIL(r, "unpaired UTF-16 surrogate \\u%04x in string", (unsigned)cp);
                    cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
                    i += 6;
                } else if (cp >= 0xdc00 && cp <= 0xdfff) {
                    return JSON_FAIL(r, "unpaired UTF-16 surrogate \\u%04x in string", (unsigned)cp);
                } else if (cp == 0) {
                    return JSON_FAIL(r, "\\u0000 in string is not supported");
                }
                k = json_put_utf8(code, cp);
            }
        }
        if (dst) {
            if (k >= cap - n) { /* cap > n always holds here: room for the NUL is kept */
                /* Valid JSON, so not "malformed": longer than the caller has room for. */
                return CVX_FAIL(CVX_ERR_IO, "in %s at byte %zu: a string longer than the %zu bytes expected there",
                                r->source, open, cap - 1);
            }
            memcpy(dst + n, bytes, k);
        }
        n += k;
    }
    if (dst) dst[n] = '\0';
    r->pos = end + 1;
    if (out_len) *out_len = n;
    return CVX_OK;
}

static int json_is_digit(int c) { return c >= '0' && c <= '9'; }

static cvx_status json_number(cvx_json_reader *r, cvx_json_number *v) {
    size_t start = r->pos;
    int negative = json_byte(r) == '-';
    if (negative) r->pos++;
    if (!json_is_digit(json_byte(r))) return json_unexpected(r, "a digit");
    /* Exact integer value, for sizes and offsets that a double would round above 2^53. */
    uint64_t magnitude = 0;
    int overflow = 0;
    if (json_byte(r) == '0') {
        r->pos++;
    } else {
        while (json_is_digit(json_byte(r))) {
            uint64_t d = (uint64_t)(json_byte(r) - '0');
            if (magnitude > (UINT64_MAX - d) / 10u) overflow = 1;
            magnitude = magnitude * 10u + d;
            r->pos++;
        }
    }
    int is_int = 1;
    if (json_byte(r) == '.') {
        is_int = 0;
        r->pos++;
        if (!json_is_digit(json_byte(r))) return json_unexpected(r, "a digit after '.'");
        while (json_is_digit(json_byte(r))) r->pos++;
    }
    if (json_byte(r) == 'e' || json_byte(r) == 'E') {
        is_int = 0;
        r->pos++;
        if (json_byte(r) == '+' || json_byte(r) == '-') r->pos++;
        if (!json_is_digit(json_byte(r))) return json_unexpected(r, "a digit in the exponent");
        while (json_is_digit(json_byte(r))) r->pos++;
    }
    /* strtod needs a NUL-terminated copy: the text may end right after the number. */
    size_t n = r->pos - start;
    char small[64];
    char *copy = n < sizeof(small) ? small : malloc(n + 1);
    if (!copy) return CVX_FAIL(CVX_ERR_OOM, "out of memory while reading JSON in %s", r->source);
    memcpy(copy, r->text + start, n);
    copy[n] = '\0';
    double number = strtod(copy, NULL);
    if (copy != small) free(copy);
    if (isinf(number)) {
        r->pos = start;
        return JSON_FAIL(r, "number out of range");
    }
    memset(v, 0, sizeof(*v));
    v->value = number;
    if (is_int && !overflow && magnitude <= (uint64_t)INT64_MAX + (negative ? 1u : 0u)) {
        v->is_int = 1;
        /* -(2^63) is reached through the unsigned negation, which is well defined */
        v->integer = negative ? (int64_t)(0u - magnitude) : (int64_t)magnitude;
    }
    return CVX_OK;
}

cvx_status cvx_json_peek(cvx_json_reader *r, cvx_json_type *type) {
    json_skip_ws(r);
    int c = json_byte(r);
    switch (c) {
    case '{': *type = CVX_JSON_OBJECT; return CVX_OK;
    case '[': *type = CVX_JSON_ARRAY; return CVX_OK;
    case '"': *type = CVX_JSON_STRING; return CVX_OK;
    case 't':
    case 'f': *type = CVX_JSON_BOOL; return CVX_OK;
    case 'n': *type = CVX_JSON_NULL; return CVX_OK;
    default:
        if (c == '-' || json_is_digit(c)) {
            *type = CVX_JSON_NUMBER;
            return CVX_OK;
        }
        return json_unexpected(r, "a value");
    }
}

cvx_status cvx_json_enter(cvx_json_reader *r) {
    json_skip_ws(r);
    int c = json_byte(r);
    if (c != '{' && c != '[') return json_unexpected(r, "an object or an array");
    if (r->depth >= CVX_JSON_MAX_DEPTH) return JSON_FAIL(r, "nesting deeper than %d levels", CVX_JSON_MAX_DEPTH);
    r->is_object[r->depth] = c == '{';
    r->started[r->depth] = 0;
    r->depth++;
    r->pos++;
    return CVX_OK;
}

/* Steps past the separator of the innermost container, or closes it. */
static cvx_status json_step(cvx_json_reader *r, int want_object, int *more) {
    *more = 0;
    if (r->depth == 0 || r->is_object[r->depth - 1] != want_object)
        return JSON_FAIL(r, "not inside %s", want_object ? "an object" : "an array");
    int top = r->depth - 1;
    char close = want_object ? '}' : ']';
    json_skip_ws(r);
    int c = json_byte(r);
    if (c == close) {
        r->pos++;
        r->depth--;
        return CVX_OK;
    }
    if (r->started[top]) {
        if (c != ',') return json_unexpected(r, want_object ? "',' or '}'" : "',' or ']'");
        r->pos++;
    }
    r->started[top] = 1;
    *more = 1;
    return CVX_OK;
}

cvx_status cvx_json_next(cvx_json_reader *r, int *more) { return json_step(r, 0, more); }

cvx_status cvx_json_next_member(cvx_json_reader *r, char *key, size_t key_cap, size_t *key_len, int *more) {
    CVX_CHECK(json_step(r, 1, more));
    if (!*more) return CVX_OK;
    json_skip_ws(r);
    if (json_byte(r) != '"') return json_unexpected(r, "a string key");
    CVX_CHECK(json_string(r, key, key_cap, key_len));
    json_skip_ws(r);
    if (json_byte(r) != ':') return json_unexpected(r, "':'");
    r->pos++;
    return CVX_OK;
}

cvx_status cvx_json_read_string(cvx_json_reader *r, char *dst, size_t cap, size_t *len) {
    json_skip_ws(r);
    if (json_byte(r) != '"') return json_unexpected(r, "a string");
    return json_string(r, dst, cap, len);
}

cvx_status cvx_json_read_number(cvx_json_reader *r, cvx_json_number *out) {
    json_skip_ws(r);
    int c = json_byte(r);
    if (c != '-' && !json_is_digit(c)) return json_unexpected(r, "a number");
    return json_number(r, out);
}

static cvx_status json_literal(cvx_json_reader *r, const char *word) {
    size_t n = strlen(word);
    if (r->len - r->pos < n || memcmp(r->text + r->pos, word, n) != 0) return json_unexpected(r, "a value");
    r->pos += n;
    return CVX_OK;
}

/* Iterative, so that skipping costs no C stack whatever the nesting (the depth limit still applies). */
cvx_status cvx_json_skip(cvx_json_reader *r) {
    int base = r->depth;
    for (;;) {
        cvx_json_type type;
        cvx_json_number number;
        CVX_CHECK(cvx_json_peek(r, &type));
        switch (type) {
        case CVX_JSON_OBJECT:
        case CVX_JSON_ARRAY: CVX_CHECK(cvx_json_enter(r)); break;
        case CVX_JSON_STRING: CVX_CHECK(json_string(r, NULL, 0, NULL)); break;
        case CVX_JSON_NUMBER: CVX_CHECK(json_number(r, &number)); break;
        case CVX_JSON_BOOL: CVX_CHECK(json_literal(r, json_byte(r) == 't' ? "true" : "false")); break;
        case CVX_JSON_NULL: CVX_CHECK(json_literal(r, "null")); break;
        }
        /* Close the containers that end here, up to the next value still inside the skipped one. */
        for (;;) {
            if (r->depth == base) return CVX_OK;
            int more;
            if (r->is_object[r->depth - 1])
                CVX_CHECK(cvx_json_next_member(r, NULL, 0, NULL, &more));
            else
                CVX_CHECK(cvx_json_next(r, &more));
            if (more) break;
        }
    }
}

cvx_status cvx_json_finish(cvx_json_reader *r) {
    if (r->depth != 0) return JSON_FAIL(r, "%d containers still open", r->depth);
    json_skip_ws(r);
    if (r->pos != r->len) return json_unexpected(r, "the end after the JSON value");
    return CVX_OK;
}

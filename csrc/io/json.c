#include "json.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct json_parser {
    const char *text; /* not NUL-terminated: every read is checked against len */
    size_t len;
    size_t pos;
    const char *source;
} json_parser;

static cvx_status json_fail_at(const json_parser *p, const char *file, int line, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 4, 5)))
#endif
    ;

static cvx_status json_fail_at(const json_parser *p, const char *file, int line, const char *fmt, ...) {
    char what[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof(what), fmt, ap);
    va_end(ap);
    return cvx_error_set(CVX_ERR_IO, file, line, "malformed JSON in %s at byte %zu: %s", p->source, p->pos, what);
}

#define JSON_FAIL(p, ...) json_fail_at((p), __FILE__, __LINE__, __VA_ARGS__)
#define JSON_OOM(p) CVX_FAIL(CVX_ERR_OOM, "out of memory while parsing JSON in %s", (p)->source)

static void json_free_contents(cvx_json *v) {
    for (size_t i = 0; i < v->count; i++) {
        json_free_contents(&v->items[i]);
        if (v->keys) free(v->keys[i]);
    }
    free(v->items);
    free(v->keys);
    free(v->string);
}

void cvx_json_free(cvx_json *v) {
    if (!v) return;
    json_free_contents(v);
    free(v);
}

const cvx_json *cvx_json_get(const cvx_json *obj, const char *key) {
    if (!obj || obj->type != CVX_JSON_OBJECT) return NULL;
    for (size_t i = 0; i < obj->count; i++)
        if (strcmp(obj->keys[i], key) == 0) return &obj->items[i];
    return NULL;
}

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

static void json_skip_ws(json_parser *p) {
    while (p->pos < p->len) {
        char c = p->text[p->pos];
        if (c != ' ' && c != '\t' && c != '\n' && c != '\r') break;
        p->pos++;
    }
}

/* -1 when p->pos is at the end. */
static int json_peek(const json_parser *p) { return p->pos < p->len ? (unsigned char)p->text[p->pos] : -1; }

static cvx_status json_unexpected(json_parser *p, const char *expected) {
    int c = json_peek(p);
    if (c < 0) return JSON_FAIL(p, "unexpected end of input, expected %s", expected);
    if (c >= 0x20 && c < 0x7f) return JSON_FAIL(p, "unexpected '%c', expected %s", c, expected);
    return JSON_FAIL(p, "unexpected byte 0x%02x, expected %s", c, expected);
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
static cvx_status json_parse_string(json_parser *p, char **out, size_t *out_len) {
    *out = NULL;
    size_t start = p->pos + 1, end = start;
    /* First find the closing quote: the decoded text is never longer than the raw text. */
    while (end < p->len && p->text[end] != '"') end += p->text[end] == '\\' ? 2 : 1;
    if (end >= p->len) return JSON_FAIL(p, "unterminated string");
    char *buf = malloc(end - start + 1);
    if (!buf) return JSON_OOM(p);
    size_t n = 0;
    size_t i = start;
    while (i < end) {
        unsigned char c = (unsigned char)p->text[i];
        p->pos = i;
        if (c < 0x20) {
            free(buf);
            return JSON_FAIL(p, "control character 0x%02x in string (must be escaped)", c);
        }
        if (c >= 0x80) {
            size_t k = json_utf8_len((const unsigned char *)p->text + i, end - i);
            if (k == 0) {
                free(buf);
                return JSON_FAIL(p, "invalid UTF-8 in string");
            }
            memcpy(buf + n, p->text + i, k);
            n += k;
            i += k;
            continue;
        }
        if (c != '\\') {
            buf[n++] = (char)c;
            i++;
            continue;
        }
        char e = p->text[i + 1]; /* i + 1 < end: the scan above stepped over the escaped byte */
        const char *simple = strchr("\"\\/bfnrt", e);
        if (e != '\0' && simple) {
            buf[n++] = "\"\\/\b\f\n\r\t"[simple - "\"\\/bfnrt"];
            i += 2;
            continue;
        }
        uint32_t cp, lo;
        if (e != 'u' || end - i < 6 || !json_hex4(p->text + i + 2, &cp)) {
            free(buf);
            return JSON_FAIL(p, "invalid escape in string");
        }
        i += 6;
        if (cp >= 0xd800 && cp <= 0xdbff) { /* a high surrogate must be followed by an escaped low one */
            if (end - i < 6 || p->text[i] != '\\' || p->text[i + 1] != 'u' || !json_hex4(p->text + i + 2, &lo) ||
                lo < 0xdc00 || lo > 0xdfff) {
                free(buf);
                return JSON_FAIL(p, "unpaired UTF-16 surrogate \\u%04x in string", (unsigned)cp);
            }
            cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
            i += 6;
        } else if (cp >= 0xdc00 && cp <= 0xdfff) {
            free(buf);
            return JSON_FAIL(p, "unpaired UTF-16 surrogate \\u%04x in string", (unsigned)cp);
        } else if (cp == 0) {
            free(buf);
            return JSON_FAIL(p, "\\u0000 in string is not supported");
        }
        n += json_put_utf8(buf + n, cp);
    }
    buf[n] = '\0';
    p->pos = end + 1;
    *out = buf;
    *out_len = n;
    return CVX_OK;
}

static int json_is_digit(int c) { return c >= '0' && c <= '9'; }

static cvx_status json_parse_number(json_parser *p, cvx_json *v) {
    size_t start = p->pos;
    int negative = json_peek(p) == '-';
    if (negative) p->pos++;
    if (!json_is_digit(json_peek(p))) return json_unexpected(p, "a digit");
    /* Exact integer value, for sizes and offsets that a double would round above 2^53. */
    uint64_t magnitude = 0;
    int overflow = 0;
    if (json_peek(p) == '0') {
        p->pos++;
    } else {
        while (json_is_digit(json_peek(p))) {
            uint64_t d = (uint64_t)(json_peek(p) - '0');
            if (magnitude > (UINT64_MAX - d) / 10u) overflow = 1;
            magnitude = magnitude * 10u + d;
            p->pos++;
        }
    }
    int is_int = 1;
    if (json_peek(p) == '.') {
        is_int = 0;
        p->pos++;
        if (!json_is_digit(json_peek(p))) return json_unexpected(p, "a digit after '.'");
        while (json_is_digit(json_peek(p))) p->pos++;
    }
    if (json_peek(p) == 'e' || json_peek(p) == 'E') {
        is_int = 0;
        p->pos++;
        if (json_peek(p) == '+' || json_peek(p) == '-') p->pos++;
        if (!json_is_digit(json_peek(p))) return json_unexpected(p, "a digit in the exponent");
        while (json_is_digit(json_peek(p))) p->pos++;
    }
    /* strtod needs a NUL-terminated copy: the text may end right after the number. */
    size_t n = p->pos - start;
    char small[64];
    char *copy = n < sizeof(small) ? small : malloc(n + 1);
    if (!copy) return JSON_OOM(p);
    memcpy(copy, p->text + start, n);
    copy[n] = '\0';
    double number = strtod(copy, NULL);
    if (copy != small) free(copy);
    if (isinf(number)) {
        p->pos = start;
        return JSON_FAIL(p, "number out of range");
    }
    v->type = CVX_JSON_NUMBER;
    v->number = number;
    if (is_int && !overflow && magnitude <= (uint64_t)INT64_MAX + (negative ? 1u : 0u)) {
        v->is_int = 1;
        /* -(2^63) is reached through the unsigned negation, which is well defined */
        v->integer = negative ? (int64_t)(0u - magnitude) : (int64_t)magnitude;
    }
    return CVX_OK;
}

static cvx_status json_parse_value(json_parser *p, cvx_json *v, int depth);

static cvx_status json_parse_literal(json_parser *p, const char *word, cvx_json_type type, int boolean, cvx_json *v) {
    size_t n = strlen(word);
    if (p->len - p->pos < n || memcmp(p->text + p->pos, word, n) != 0) return json_unexpected(p, "a value");
    p->pos += n;
    v->type = type;
    v->boolean = boolean;
    return CVX_OK;
}

static int json_key_cmp(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

/* Rejects an object with a repeated key: sorts a copy of the key pointers and compares neighbours. */
static cvx_status json_check_unique_keys(json_parser *p, const cvx_json *v) {
    if (v->count < 2) return CVX_OK;
    char **sorted = malloc(v->count * sizeof(*sorted));
    if (!sorted) return JSON_OOM(p);
    memcpy(sorted, v->keys, v->count * sizeof(*sorted));
    qsort(sorted, v->count, sizeof(*sorted), json_key_cmp);
    cvx_status st = CVX_OK;
    for (size_t i = 1; i < v->count; i++) {
        if (strcmp(sorted[i - 1], sorted[i]) == 0) {
            st = JSON_FAIL(p, "duplicate key '%.200s' in the object ending here", sorted[i]);
            break;
        }
    }
    free(sorted);
    return st;
}

/* Appends a zeroed element (and, for objects, its key) to v, growing the arrays geometrically. The element is
 * counted at once so that a failure while parsing it still frees whatever it holds. */
static cvx_status json_append(json_parser *p, cvx_json *v, size_t *capacity, char *key, cvx_json **out) {
    if (v->count == *capacity) {
        size_t cap = *capacity ? *capacity * 2 : 4;
        cvx_json *items = realloc(v->items, cap * sizeof(*items));
        if (!items) {
            free(key);
            return JSON_OOM(p);
        }
        v->items = items;
        if (v->type == CVX_JSON_OBJECT) {
            char **keys = realloc(v->keys, cap * sizeof(*keys));
            if (!keys) {
                free(key);
                return JSON_OOM(p);
            }
            v->keys = keys;
        }
        *capacity = cap;
    }
    memset(&v->items[v->count], 0, sizeof(v->items[0]));
    if (v->type == CVX_JSON_OBJECT) v->keys[v->count] = key;
    *out = &v->items[v->count++];
    return CVX_OK;
}

/* At '[' or '{'. */
static cvx_status json_parse_container(json_parser *p, cvx_json *v, int depth) {
    int is_object = p->text[p->pos] == '{';
    char close = is_object ? '}' : ']';
    if (depth >= CVX_JSON_MAX_DEPTH) return JSON_FAIL(p, "nesting deeper than %d levels", CVX_JSON_MAX_DEPTH);
    v->type = is_object ? CVX_JSON_OBJECT : CVX_JSON_ARRAY;
    p->pos++;
    json_skip_ws(p);
    if (json_peek(p) == close) {
        p->pos++;
        return CVX_OK;
    }
    size_t capacity = 0;
    for (;;) {
        char *key = NULL;
        json_skip_ws(p);
        if (is_object) {
            size_t key_len;
            if (json_peek(p) != '"') return json_unexpected(p, "a string key");
            CVX_CHECK(json_parse_string(p, &key, &key_len));
            json_skip_ws(p);
            if (json_peek(p) != ':') {
                free(key);
                return json_unexpected(p, "':'");
            }
            p->pos++;
        }
        cvx_json *item = NULL;
        CVX_CHECK(json_append(p, v, &capacity, key, &item));
        CVX_CHECK(json_parse_value(p, item, depth + 1));
        json_skip_ws(p);
        if (json_peek(p) == ',') {
            p->pos++;
            continue;
        }
        if (json_peek(p) != close) return json_unexpected(p, is_object ? "',' or '}'" : "',' or ']'");
        p->pos++;
        return is_object ? json_check_unique_keys(p, v) : CVX_OK;
    }
}

static cvx_status json_parse_value(json_parser *p, cvx_json *v, int depth) {
    json_skip_ws(p);
    int c = json_peek(p);
    switch (c) {
    case '{':
    case '[': return json_parse_container(p, v, depth);
    case '"': v->type = CVX_JSON_STRING; return json_parse_string(p, &v->string, &v->string_len);
    case 't': return json_parse_literal(p, "true", CVX_JSON_BOOL, 1, v);
    case 'f': return json_parse_literal(p, "false", CVX_JSON_BOOL, 0, v);
    case 'n': return json_parse_literal(p, "null", CVX_JSON_NULL, 0, v);
    default:
        if (c == '-' || json_is_digit(c)) return json_parse_number(p, v);
        return json_unexpected(p, "a value");
    }
}

cvx_status cvx_json_parse(const char *text, size_t len, const char *source, cvx_json **out) {
    *out = NULL;
    json_parser p = {text, len, 0, source};
    cvx_json *root = calloc(1, sizeof(*root));
    if (!root) return JSON_OOM(&p);
    cvx_status st;
    CVX_TRY(json_parse_value(&p, root, 0));
    json_skip_ws(&p);
    if (p.pos != p.len) {
        st = json_unexpected(&p, "the end after the JSON value");
        goto fail;
    }
    *out = root;
    return CVX_OK;
fail:
    cvx_json_free(root);
    return st;
}

/* Reads any JSON text with the streaming reader and writes it back in a canonical compact form (no whitespace,
 * strings re-escaped, integers exact, other numbers as %.17g with a ".0" so that they stay non-integers). The C tests
 * compare this form with what a text should read as; the fuzz target checks that it reads back to itself and that
 * cvx_json_skip accepts exactly what the walk accepts. */
#ifndef CVX_JSON_WALK_H
#define CVX_JSON_WALK_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../csrc/io/json.h"

typedef struct json_walk_out {
    char *text;
    size_t len, cap;
    char *scratch; /* room for any one decoded string of the input */
    size_t scratch_cap;
} json_walk_out;

static int json_walk_put(json_walk_out *o, const char *s, size_t n) {
    if (n > o->cap - o->len) {
        size_t cap = (o->cap + n) * 2;
        char *t = realloc(o->text, cap);
        if (!t) return 0;
        o->text = t;
        o->cap = cap;
    }
    memcpy(o->text + o->len, s, n);
    o->len += n;
    return 1;
}

static cvx_status json_walk_string(json_walk_out *o, const char *s, size_t n) {
    int ok = json_walk_put(o, "\"", 1);
    for (size_t i = 0; ok && i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        char esc[8];
        if (c == '"' || c == '\\')
            snprintf(esc, sizeof(esc), "\\%c", c);
        else if (c < 0x20)
            snprintf(esc, sizeof(esc), "\\u%04x", c);
        else
            esc[0] = (char)c, esc[1] = '\0';
        ok = json_walk_put(o, esc, strlen(esc));
    }
    ok = ok && json_walk_put(o, "\"", 1);
    return ok ? CVX_OK : CVX_ERR_OOM;
}

/* Recursion is bounded by the reader's depth limit. */
static cvx_status json_walk_value(cvx_json_reader *r, json_walk_out *o) {
    cvx_json_type type;
    CVX_CHECK(cvx_json_peek(r, &type));
    size_t n;
    int more, first = 1;
    switch (type) {
    case CVX_JSON_OBJECT:
    case CVX_JSON_ARRAY:
        CVX_CHECK(cvx_json_enter(r));
        if (!json_walk_put(o, type == CVX_JSON_OBJECT ? "{" : "[", 1)) return CVX_ERR_OOM;
        for (;;) {
            if (type == CVX_JSON_OBJECT)
                CVX_CHECK(cvx_json_next_member(r, o->scratch, o->scratch_cap, &n, &more));
            else
                CVX_CHECK(cvx_json_next(r, &more));
            if (!more) break;
            if (!first && !json_walk_put(o, ",", 1)) return CVX_ERR_OOM;
            first = 0;
            if (type == CVX_JSON_OBJECT) {
                CVX_CHECK(json_walk_string(o, o->scratch, n));
                if (!json_walk_put(o, ":", 1)) return CVX_ERR_OOM;
            }
            CVX_CHECK(json_walk_value(r, o));
        }
        return json_walk_put(o, type == CVX_JSON_OBJECT ? "}" : "]", 1) ? CVX_OK : CVX_ERR_OOM;
    case CVX_JSON_STRING:
        CVX_CHECK(cvx_json_read_string(r, o->scratch, o->scratch_cap, &n));
        return json_walk_string(o, o->scratch, n);
    case CVX_JSON_NUMBER: {
        cvx_json_number v;
        CVX_CHECK(cvx_json_read_number(r, &v));
        char num[40];
        if (v.is_int)
            snprintf(num, sizeof(num), "%lld", (long long)v.integer);
        else
            snprintf(num, sizeof(num), "%.17g", v.value);
        if (!v.is_int && !strpbrk(num, ".e")) strcat(num, ".0");
        return json_walk_put(o, num, strlen(num)) ? CVX_OK : CVX_ERR_OOM;
    }
    case CVX_JSON_BOOL:
    case CVX_JSON_NULL: {
        /* the reader has no literal accessor: skip checks the word, the peeked byte tells which */
        char c = r->text[r->pos];
        CVX_CHECK(cvx_json_skip(r));
        const char *word = c == 't' ? "true" : c == 'f' ? "false" : "null";
        return json_walk_put(o, word, strlen(word)) ? CVX_OK : CVX_ERR_OOM;
    }
    }
    return CVX_ERR_INTERNAL;
}

/* Walks text[0, len): on success *out (malloc'd, NUL-terminated, free it) holds the canonical form. */
static cvx_status json_walk(const char *text, size_t len, const char *source, char **out) {
    *out = NULL;
    json_walk_out o = {0};
    o.scratch_cap = len + 1;
    o.scratch = malloc(o.scratch_cap);
    if (!o.scratch) return CVX_ERR_OOM;
    cvx_json_reader r;
    cvx_json_reader_init(&r, text, len, source);
    cvx_status st = json_walk_value(&r, &o);
    if (st == CVX_OK) st = cvx_json_finish(&r);
    if (st == CVX_OK && !json_walk_put(&o, "", 1)) st = CVX_ERR_OOM;
    free(o.scratch);
    if (st != CVX_OK) {
        free(o.text);
        return st;
    }
    *out = o.text;
    return CVX_OK;
}

#endif

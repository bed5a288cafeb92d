/* The JSON reader on valid and malformed text. Every input is copied into a heap buffer of exactly its length, with
 * no terminating NUL, so that AddressSanitizer reports any read past the end. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "../../csrc/io/json.h"
#include "cvx_test.h"

static cvx_status parse_exact(const char *text, size_t len, cvx_json **out) {
    char *buf = malloc(len ? len : 1);
    if (!buf) return CVX_ERR_OOM;
    memcpy(buf, text, len);
    cvx_error_clear();
    cvx_status st = cvx_json_parse(buf, len, "test input", out);
    free(buf);
    return st;
}

static cvx_json *parse_ok(const char *text) {
    cvx_json *v = NULL;
    cvx_status st = parse_exact(text, strlen(text), &v);
    CVX_EXPECT(st == CVX_OK && v != NULL, "parsing %s failed: %s", text, cvx_error_message());
    return v;
}

static void expect_malformed(const char *what, const char *text, size_t len, const char *needle) {
    cvx_json *v = (cvx_json *)&v; /* any non-NULL value: the parser must reset it */
    cvx_status st = parse_exact(text, len, &v);
    const char *msg = cvx_error_message();
    CVX_EXPECT(st == CVX_ERR_IO, "%s: status %d, want CVX_ERR_IO", what, (int)st);
    CVX_EXPECT(v == NULL, "%s: output not reset to NULL", what);
    CVX_EXPECT(strstr(msg, "test input") != NULL && strstr(msg, needle) != NULL, "%s: message '%s' lacks '%s'", what,
               msg, needle);
    if (st == CVX_OK) cvx_json_free(v);
    printf("  %-28s -> %s\n", what, msg);
}

static void test_numbers(void) {
    struct {
        const char *text;
        int is_int;
        int64_t integer;
        double number;
    } cases[] = {
        {"0", 1, 0, 0.0},
        {"-0", 1, 0, -0.0},
        {"123", 1, 123, 123.0},
        {"9223372036854775807", 1, INT64_MAX, 9223372036854775807.0},
        {"-9223372036854775808", 1, INT64_MIN, -9223372036854775808.0},
        {"9223372036854775808", 0, 0, 9223372036854775808.0},     /* past int64: a double only */
        {"184467440737095516160", 0, 0, 184467440737095516160.0}, /* past uint64 */
        {"1.5", 0, 0, 1.5},
        {"-2.5e-3", 0, 0, -2.5e-3},
        {"1E+2", 0, 0, 100.0},
        {" 42 \n", 1, 42, 42.0},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        cvx_json *v = parse_ok(cases[i].text);
        if (!v) continue;
        CVX_EXPECT(v->type == CVX_JSON_NUMBER, "%s: type %s", cases[i].text, cvx_json_type_name(v->type));
        CVX_EXPECT(v->is_int == cases[i].is_int, "%s: is_int %d, want %d", cases[i].text, v->is_int, cases[i].is_int);
        if (cases[i].is_int)
            CVX_EXPECT(v->integer == cases[i].integer, "%s: integer %lld", cases[i].text, (long long)v->integer);
        CVX_EXPECT(v->number == cases[i].number, "%s: number %.17g, want %.17g", cases[i].text, v->number,
                   cases[i].number);
        cvx_json_free(v);
    }
    /* numbers longer than any fixed buffer: 1 followed by 99 zeros, and 0.000...0125 with 100 digits */
    char digits[128];
    memset(digits, '0', sizeof(digits));
    digits[0] = '1';
    cvx_json *v = NULL;
    cvx_status st = parse_exact(digits, 100, &v);
    CVX_EXPECT(st == CVX_OK && v && !v->is_int && v->number == 1e99, "100-digit integer: %s, %.17g",
               cvx_error_message(), v ? v->number : 0.0);
    cvx_json_free(v);
    digits[0] = '0', digits[1] = '.', digits[98] = '1', digits[99] = '2', digits[100] = '5';
    st = parse_exact(digits, 101, &v);
    CVX_EXPECT(st == CVX_OK && v && v->number == 1.25e-97, "101-character fraction: %s, %.17g", cvx_error_message(),
               v ? v->number : 0.0);
    cvx_json_free(v);
}

static void test_strings(void) {
    cvx_json *v = parse_ok("\"a\\\"b\\\\c\\/d\\b\\f\\n\\r\\t\"");
    if (v) {
        const char want[] = "a\"b\\c/d\b\f\n\r\t";
        CVX_EXPECT(v->type == CVX_JSON_STRING && v->string_len == strlen(want) && strcmp(v->string, want) == 0,
                   "simple escapes decoded to '%s'", v->string ? v->string : "(null)");
        cvx_json_free(v);
    }
    /* \u escapes of 1-, 2-, 3- and 4-byte UTF-8 (the last as a surrogate pair), and raw UTF-8 passed through */
    v = parse_ok("\"\\u0041\\u00e9\\u20AC\\ud83d\\ude00|\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80\"");
    if (v) {
        const char want[] = "A\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80|\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80";
        CVX_EXPECT(v->string_len == strlen(want) && memcmp(v->string, want, sizeof(want)) == 0,
                   "unicode decoded to %zu bytes, want %zu", v->string_len, strlen(want));
        cvx_json_free(v);
    }
    v = parse_ok("\"\"");
    if (v) {
        CVX_EXPECT(v->string_len == 0 && v->string[0] == '\0', "empty string has length %zu", v->string_len);
        cvx_json_free(v);
    }
}

static void test_containers(void) {
    cvx_json *v = parse_ok(" {\"a\": [1, true, false, null, {}, []], \"b\": {\"c\": \"d\"}, \"e\": -1} ");
    if (!v) return;
    CVX_EXPECT(v->type == CVX_JSON_OBJECT && v->count == 3, "root: %s of %zu", cvx_json_type_name(v->type), v->count);
    const cvx_json *a = cvx_json_get(v, "a"), *c = cvx_json_get(cvx_json_get(v, "b"), "c");
    CVX_EXPECT(a && a->type == CVX_JSON_ARRAY && a->count == 6, "a is not a 6-element array");
    if (a && a->count == 6) {
        CVX_EXPECT(a->items[0].type == CVX_JSON_NUMBER && a->items[0].integer == 1, "a[0]");
        CVX_EXPECT(a->items[1].type == CVX_JSON_BOOL && a->items[1].boolean == 1, "a[1]");
        CVX_EXPECT(a->items[2].type == CVX_JSON_BOOL && a->items[2].boolean == 0, "a[2]");
        CVX_EXPECT(a->items[3].type == CVX_JSON_NULL, "a[3]");
        CVX_EXPECT(a->items[4].type == CVX_JSON_OBJECT && a->items[4].count == 0, "a[4]");
        CVX_EXPECT(a->items[5].type == CVX_JSON_ARRAY && a->items[5].count == 0, "a[5]");
    }
    CVX_EXPECT(c && c->type == CVX_JSON_STRING && strcmp(c->string, "d") == 0, "b.c is not \"d\"");
    CVX_EXPECT(cvx_json_get(v, "missing") == NULL, "get of a missing key is not NULL");
    CVX_EXPECT(cvx_json_get(a, "a") == NULL, "get on an array is not NULL");
    CVX_EXPECT(strcmp(v->keys[0], "a") == 0 && strcmp(v->keys[2], "e") == 0, "keys out of document order");
    cvx_json_free(v);
    cvx_json_free(NULL);

    /* a big object exercises the geometric growth and the duplicate-key sort */
    size_t n = 2000, cap = n * 24 + 2, len = 0;
    char *big = malloc(cap);
    if (!big) return;
    big[len++] = '{';
    for (size_t i = 0; i < n; i++) len += (size_t)snprintf(big + len, cap - len, "%s\"k%zu\":%zu", i ? "," : "", i, i);
    big[len++] = '}';
    cvx_json *w = NULL;
    cvx_status st = parse_exact(big, len, &w);
    CVX_EXPECT(st == CVX_OK && w && w->count == n, "object of %zu members: %s", n, cvx_error_message());
    if (w) {
        const cvx_json *last = cvx_json_get(w, "k1999");
        CVX_EXPECT(last && last->integer == 1999, "k1999 not found");
        cvx_json_free(w);
    }
    free(big);
}

static void test_depth(void) {
    char text[2 * CVX_JSON_MAX_DEPTH + 2];
    for (int d = CVX_JSON_MAX_DEPTH; d <= CVX_JSON_MAX_DEPTH + 1; d++) {
        for (int i = 0; i < d; i++) text[i] = '[', text[d + i] = ']';
        cvx_json *v = NULL;
        cvx_status st = parse_exact(text, (size_t)(2 * d), &v);
        if (d == CVX_JSON_MAX_DEPTH) {
            CVX_EXPECT(st == CVX_OK, "%d nested arrays rejected: %s", d, cvx_error_message());
            cvx_json_free(v);
        } else {
            expect_malformed("too deep", text, (size_t)(2 * d), "nesting deeper");
        }
    }
}

static void test_malformed(void) {
    struct {
        const char *what, *text, *needle;
    } cases[] = {
        {"empty", "", "end of input"},
        {"only whitespace", "  \n", "end of input"},
        {"unclosed object", "{", "end of input"},
        {"trailing comma in array", "[1,]", "byte 3"},
        {"trailing comma in object", "{\"a\":1,}", "string key"},
        {"missing colon", "{\"a\" 1}", "':'"},
        {"unquoted key", "{a:1}", "string key"},
        {"missing comma", "[1 2]", "',' or ']'"},
        {"leading zero", "01", "after the JSON value"},
        {"bare minus", "-", "digit"},
        {"plus sign", "+1", "a value"},
        {"dot without digits", "1.", "digit after '.'"},
        {"empty exponent", "1e", "exponent"},
        {"out of range", "1e999", "out of range"},
        {"NaN literal", "NaN", "a value"},
        {"truncated true", "tru", "a value"},
        {"truncated null", "nul", "a value"},
        {"unterminated string", "\"abc", "unterminated"},
        {"escape at the end", "\"abc\\", "unterminated"},
        {"raw control char", "\"a\x01\"", "control character"},
        {"unknown escape", "\"\\x\"", "invalid escape"},
        {"short \\u", "\"\\u12\"", "invalid escape"},
        {"lone high surrogate", "\"\\ud800\"", "surrogate"},
        {"lone low surrogate", "\"\\udc00\"", "surrogate"},
        {"high + non-low", "\"\\ud800\\u0041\"", "surrogate"},
        {"\\u0000", "\"\\u0000\"", "not supported"},
        {"invalid UTF-8 byte", "\"\xff\"", "invalid UTF-8"},
        {"overlong UTF-8", "\"\xc0\xaf\"", "invalid UTF-8"},
        {"UTF-8 surrogate", "\"\xed\xa0\x80\"", "invalid UTF-8"},
        {"UTF-8 past U+10FFFF", "\"\xf4\x90\x80\x80\"", "invalid UTF-8"},
        {"truncated UTF-8", "\"\xe2\x82\"", "invalid UTF-8"},
        {"two values", "[1] 2", "after the JSON value"},
        {"duplicate key", "{\"a\":1,\"b\":2,\"a\":3}", "duplicate key 'a'"},
        {"nested duplicate", "[{\"x\":{\"y\":1,\"y\":1}}]", "duplicate key 'y'"},
        {"error deep inside", "{\"a\":[1,{\"b\":[tru]}]}", "a value"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
        expect_malformed(cases[i].what, cases[i].text, strlen(cases[i].text), cases[i].needle);
    /* the length is what bounds the parse, not a NUL: "[1]" cut to two bytes is unterminated */
    expect_malformed("length cuts the text", "[1]", 2, "end of input");
    expect_malformed("embedded NUL byte", "[1,\0 2]", 7, "a value");
}

int main(void) {
    test_numbers();
    test_strings();
    test_containers();
    test_depth();
    test_malformed();
    return cvx_test_report();
}

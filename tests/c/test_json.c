/* The streaming JSON reader on valid and malformed text. Every input is copied into a heap buffer of exactly its
 * length, with no terminating NUL, so that AddressSanitizer reports any read past the end. Valid text is checked
 * through its canonical form (json_walk.h): what the reader read, written back. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "../../csrc/io/json.h"
#include "cvx_test.h"
#include "json_walk.h"

/* An exact-size heap copy of text[0, len), without a NUL. */
static char *copy_exact(const char *text, size_t len) {
    char *buf = malloc(len ? len : 1);
    if (buf) memcpy(buf, text, len);
    return buf;
}

/* Walks text[0, len) (and skips it with a second reader: both must agree) from an exact-size heap copy. */
static cvx_status walk_exact(const char *text, size_t len, char **out) {
    char *buf = copy_exact(text, len);
    if (!buf) return CVX_ERR_OOM;
    cvx_error_clear();
    cvx_json_reader r;
    cvx_json_reader_init(&r, buf, len, "test input");
    cvx_status skipped = cvx_json_skip(&r);
    if (skipped == CVX_OK) skipped = cvx_json_finish(&r);
    cvx_error_clear();
    cvx_status st = json_walk(buf, len, "test input", out);
    CVX_EXPECT((st == CVX_OK) == (skipped == CVX_OK), "skip says %d, the walk %d on '%.*s'", (int)skipped, (int)st,
               (int)len, text);
    free(buf);
    return st;
}

static void expect_reads_as(const char *text, size_t len, const char *want) {
    char *got = NULL;
    cvx_status st = walk_exact(text, len, &got);
    CVX_EXPECT(st == CVX_OK && got && strcmp(got, want) == 0, "'%.*s' reads as '%s' (%s), want '%s'", (int)len, text,
               got ? got : "(error)", st == CVX_OK ? "ok" : cvx_error_message(), want);
    free(got);
}

static void expect_malformed(const char *what, const char *text, size_t len, const char *needle) {
    char *got = NULL;
    cvx_status st = walk_exact(text, len, &got);
    const char *msg = cvx_error_message();
    CVX_EXPECT(st == CVX_ERR_IO, "%s: status %d, want CVX_ERR_IO", what, (int)st);
    CVX_EXPECT(got == NULL, "%s: output not reset to NULL", what);
    CVX_EXPECT(strstr(msg, "test input") != NULL && strstr(msg, needle) != NULL, "%s: message '%s' lacks '%s'", what,
               msg, needle);
    free(got);
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
        size_t len = strlen(cases[i].text);
        char *buf = copy_exact(cases[i].text, len);
        if (!buf) return;
        cvx_json_reader r;
        cvx_json_reader_init(&r, buf, len, "test input");
        cvx_json_number v = {0};
        cvx_status st = cvx_json_read_number(&r, &v);
        if (st == CVX_OK) st = cvx_json_finish(&r);
        CVX_EXPECT(st == CVX_OK, "%s: %s", cases[i].text, cvx_error_message());
        CVX_EXPECT(v.is_int == cases[i].is_int, "%s: is_int %d, want %d", cases[i].text, v.is_int, cases[i].is_int);
        if (cases[i].is_int)
            CVX_EXPECT(v.integer == cases[i].integer, "%s: integer %lld", cases[i].text, (long long)v.integer);
        CVX_EXPECT(v.value == cases[i].number, "%s: number %.17g, want %.17g", cases[i].text, v.value, cases[i].number);
        free(buf);
    }
    /* numbers longer than any fixed buffer: 1 followed by 99 zeros, and 0.000...0125 with 100 digits */
    char digits[128];
    memset(digits, '0', sizeof(digits));
    digits[0] = '1';
    expect_reads_as(digits, 100, "9.9999999999999997e+98"); /* %.17g of the double nearest 1e99 */
    digits[0] = '0', digits[1] = '.', digits[98] = '1', digits[99] = '2', digits[100] = '5';
    expect_reads_as(digits, 101, "1.2499999999999999e-97");
    expect_reads_as("[1.0, -0.0, 100000.0]", 21, "[1.0,-0.0,100000.0]");
}

static void test_strings(void) {
    const char *text = "\"a\\\"b\\\\c\\/d\\b\\f\\n\\r\\t\"";
    expect_reads_as(text, strlen(text), "\"a\\\"b\\\\c/d\\u0008\\u000c\\u000a\\u000d\\u0009\"");
    /* \u escapes of 1-, 2-, 3- and 4-byte UTF-8 (the last as a surrogate pair), and raw UTF-8 passed through */
    text = "\"\\u0041\\u00e9\\u20AC\\ud83d\\ude00|\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80\"";
    expect_reads_as(text, strlen(text),
                    "\"A\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80|\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80\"");
    expect_reads_as("\"\"", 2, "\"\"");

    /* a string that does not fit the caller's buffer is refused, not cut */
    const char *two = "[\"abcdef\", \"abc\"]";
    char *buf = copy_exact(two, strlen(two));
    if (!buf) return;
    cvx_json_reader r;
    cvx_json_reader_init(&r, buf, strlen(two), "test input");
    char small[4];
    size_t n = 0;
    int more;
    cvx_status st = cvx_json_enter(&r);
    if (st == CVX_OK) st = cvx_json_next(&r, &more);
    if (st == CVX_OK) st = cvx_json_read_string(&r, small, sizeof(small), &n);
    CVX_EXPECT(st == CVX_ERR_IO && strstr(cvx_error_message(), "longer than the 3 bytes expected") &&
                   strstr(cvx_error_message(), "byte 1"),
               "6-byte string into 4 bytes: status %d, '%s'", (int)st, cvx_error_message());
    cvx_json_reader_init(&r, buf + 11, 5, "test input"); /* "abc" */
    st = cvx_json_read_string(&r, small, sizeof(small), &n);
    CVX_EXPECT(st == CVX_OK && n == 3 && strcmp(small, "abc") == 0, "3-byte string into 4 bytes: %s",
               cvx_error_message());
    free(buf);
}

static void test_containers(void) {
    const char *text = " {\"a\": [1, true, false, null, {}, []], \"b\": {\"c\": \"d\"}, \"e\": -1, \"a\": 2} ";
    /* repeated keys are read as written: refusing them is the caller's decision */
    expect_reads_as(text, strlen(text), "{\"a\":[1,true,false,null,{},[]],\"b\":{\"c\":\"d\"},\"e\":-1,\"a\":2}");

    /* the calls checked against the container they are made in */
    const char *nested = "[{\"k\": 1}]";
    char *buf = copy_exact(nested, strlen(nested));
    if (!buf) return;
    cvx_json_reader r;
    cvx_json_reader_init(&r, buf, strlen(nested), "test input");
    int more = -1;
    cvx_status st = cvx_json_next(&r, &more);
    CVX_EXPECT(st == CVX_ERR_IO && more == 0 && strstr(cvx_error_message(), "not inside an array"),
               "next outside any container: %d, %s", (int)st, cvx_error_message());
    cvx_error_clear();
    st = cvx_json_enter(&r);
    if (st == CVX_OK) st = cvx_json_next_member(&r, NULL, 0, NULL, &more);
    CVX_EXPECT(st == CVX_ERR_IO && strstr(cvx_error_message(), "not inside an object"),
               "next_member in an array: %d, %s", (int)st, cvx_error_message());
    free(buf);

    /* a 100,000-member object of empty arrays: skipping it stores nothing, so it costs no memory per member */
    size_t count = 100000, cap = count * 16 + 2, len = 0;
    char *big = malloc(cap);
    if (!big) return;
    big[len++] = '{';
    for (size_t i = 0; i < count; i++) len += (size_t)snprintf(big + len, cap - len, "%s\"k%zu\":[]", i ? "," : "", i);
    big[len++] = '}';
    cvx_json_reader_init(&r, big, len, "test input");
    st = cvx_json_skip(&r);
    if (st == CVX_OK) st = cvx_json_finish(&r);
    CVX_EXPECT(st == CVX_OK, "object of %zu members: %s", count, cvx_error_message());
    free(big);
}

static void test_depth(void) {
    char text[2 * CVX_JSON_MAX_DEPTH + 2];
    for (int d = CVX_JSON_MAX_DEPTH; d <= CVX_JSON_MAX_DEPTH + 1; d++) {
        for (int i = 0; i < d; i++) text[i] = '[', text[d + i] = ']';
        if (d == CVX_JSON_MAX_DEPTH)
            expect_reads_as(text, (size_t)(2 * d), (text[2 * d] = '\0', text));
        else
            expect_malformed("too deep", text, (size_t)(2 * d), "nesting deeper than 64");
    }
    /* a million unclosed brackets fail at the limit, without recursion */
    size_t n = 1000000;
    char *deep = malloc(n);
    if (!deep) return;
    memset(deep, '[', n);
    expect_malformed("a million '['", deep, n, "nesting deeper than 64");
    free(deep);
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
        {"unclosed nested", "{\"a\":[1,{}", "end of input"},
        {"close mismatch", "[1}", "',' or ']'"},
        {"comma first", "[,1]", "a value"},
        {"colon in array", "[1:2]", "',' or ']'"},
        {"error deep inside", "{\"a\":[1,{\"b\":[tru]}]}", "a value"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
        expect_malformed(cases[i].what, cases[i].text, strlen(cases[i].text), cases[i].needle);
    /* the length is what bounds the parse, not a NUL: "[1]" cut to two bytes is unterminated */
    expect_malformed("length cuts the text", "[1]", 2, "end of input");
    expect_malformed("embedded NUL byte", "[1,\0 2]", 7, "a value");
    expect_malformed("value after the root", "{} {}", 5, "after the JSON value");
}

int main(void) {
    test_numbers();
    test_strings();
    test_containers();
    test_depth();
    test_malformed();
    return cvx_test_report();
}

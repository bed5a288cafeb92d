/* f32 <-> f16 / bf16 conversions against references built from the IEEE definitions (value = 2^e x significand,
 * computed with ldexp in double), not from bit tricks: exhaustive over all 16-bit patterns where that is 65536
 * cases, and over every tie, neighbour and a strided sample of all f32 patterns for narrowing. */
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "../../csrc/core/dtype.h"
#include "cvx_test.h"

static float bits_f32(uint32_t u) {
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static uint32_t f32_bits(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

/* Magnitude of a non-negative finite f16 pattern; 0x7c00 (inf) counts as 2^16, where the exponent range would
 * continue, which is how IEEE rounding decides overflow. */
static double f16_magnitude(uint32_t h) {
    uint32_t e = (h >> 10) & 0x1f, m = h & 0x3ff;
    if (e == 0) return ldexp((double)m, -24);
    return ldexp((double)(1024 + m), (int)e - 25);
}

/* Same for bf16 (8 exponent bits, 7 mantissa bits); 0x7f80 counts as 2^128. */
static double bf16_magnitude(uint32_t h) {
    uint32_t e = (h >> 7) & 0xff, m = h & 0x7f;
    if (e == 0) return ldexp((double)m, -133);
    return ldexp((double)(128 + m), (int)e - 134);
}

/* Round-to-nearest-even onto a 16-bit format whose non-negative patterns 0..inf_bits are ordered by magnitude.
 * Comparisons use 2x against lo + hi, both exact in double, so ties are found exactly. */
static uint16_t ref_narrow(float x, uint32_t inf_bits, double (*magnitude)(uint32_t)) {
    uint16_t sign = signbit(x) ? 0x8000 : 0;
    double a = fabs((double)x);
    if (a >= magnitude(inf_bits)) return (uint16_t)(sign | inf_bits);
    uint32_t lo = 0, hi = inf_bits; /* magnitude(lo) <= a < magnitude(hi) */
    while (hi - lo > 1) {
        uint32_t mid = (lo + hi) / 2;
        if (magnitude(mid) <= a)
            lo = mid;
        else
            hi = mid;
    }
    double twice = 2.0 * a, sum = magnitude(lo) + magnitude(hi);
    uint32_t r = twice < sum ? lo : twice > sum ? hi : (lo & 1u) ? hi : lo;
    return (uint16_t)(sign | r);
}

static int f16_is_nan(uint16_t h) { return (h & 0x7c00) == 0x7c00 && (h & 0x3ff) != 0; }
static int bf16_is_nan(uint16_t h) { return (h & 0x7f80) == 0x7f80 && (h & 0x7f) != 0; }

typedef struct sweep {
    const char *name;
    long checked;
    long f16_bad, bf16_bad;
    float f16_first, bf16_first;
    uint16_t f16_got, f16_want, bf16_got, bf16_want;
} sweep;

/* Narrows x both ways and records the first mismatch against the references. */
static void sweep_one(sweep *s, float x) {
    s->checked++;
    uint16_t h = cvx_f32_to_f16(x), b = cvx_f32_to_bf16(x);
    if (isnan(x)) {
        if (!f16_is_nan(h) && s->f16_bad++ == 0) s->f16_first = x, s->f16_got = h, s->f16_want = 0x7e00;
        if (!bf16_is_nan(b) && s->bf16_bad++ == 0) s->bf16_first = x, s->bf16_got = b, s->bf16_want = 0x7fc0;
        return;
    }
    uint16_t hw = ref_narrow(x, 0x7c00, f16_magnitude), bw = ref_narrow(x, 0x7f80, bf16_magnitude);
    if (h != hw && s->f16_bad++ == 0) s->f16_first = x, s->f16_got = h, s->f16_want = hw;
    if (b != bw && s->bf16_bad++ == 0) s->bf16_first = x, s->bf16_got = b, s->bf16_want = bw;
}

static void sweep_both_signs(sweep *s, float x) {
    sweep_one(s, x);
    sweep_one(s, -x);
}

/* x, its f32 neighbours, and the same around x's midpoint with the next value up. */
static void sweep_around(sweep *s, float x, float next) {
    float mid = (float)(((double)x + (double)next) / 2); /* exact: one more bit than the 16-bit formats hold */
    float pts[] = {x,   nextafterf(x, -INFINITY),   nextafterf(x, INFINITY),
                   mid, nextafterf(mid, -INFINITY), nextafterf(mid, INFINITY)};
    for (size_t i = 0; i < sizeof(pts) / sizeof(pts[0]); i++) sweep_both_signs(s, pts[i]);
}

static void sweep_report(const sweep *s) {
    CVX_EXPECT(s->f16_bad == 0, "%s: %ld of %ld f32->f16 wrong; first x=%a got 0x%04x want 0x%04x", s->name, s->f16_bad,
               s->checked, (double)s->f16_first, s->f16_got, s->f16_want);
    CVX_EXPECT(s->bf16_bad == 0, "%s: %ld of %ld f32->bf16 wrong; first x=%a got 0x%04x want 0x%04x", s->name,
               s->bf16_bad, s->checked, (double)s->bf16_first, s->bf16_got, s->bf16_want);
}

static void test_f16_widening_and_round_trip(void) {
    long wrong_value = 0, wrong_round_trip = 0, nan_lost = 0;
    uint32_t first_value = 0, first_trip = 0;
    for (uint32_t h = 0; h < 65536; h++) {
        float f = cvx_f16_to_f32((uint16_t)h);
        uint32_t e = (h >> 10) & 0x1f, m = h & 0x3ff;
        int neg = (h & 0x8000) != 0;
        if (e == 0x1f && m != 0) {
            if (!isnan(f) || !f16_is_nan(cvx_f32_to_f16(f))) nan_lost++;
            continue;
        }
        double want = e == 0x1f ? INFINITY : f16_magnitude(h & 0x7fff);
        if ((double)fabsf(f) != want || (signbit(f) != 0) != neg) {
            if (wrong_value++ == 0) first_value = h;
        }
        if (cvx_f32_to_f16(f) != h && wrong_round_trip++ == 0) first_trip = h;
    }
    CVX_EXPECT(wrong_value == 0, "%ld f16 patterns widen to the wrong f32; first 0x%04x -> %a", wrong_value,
               first_value, (double)cvx_f16_to_f32((uint16_t)first_value));
    CVX_EXPECT(wrong_round_trip == 0, "%ld f16 patterns do not survive f16->f32->f16; first 0x%04x -> 0x%04x",
               wrong_round_trip, first_trip, cvx_f32_to_f16(cvx_f16_to_f32((uint16_t)first_trip)));
    CVX_EXPECT(nan_lost == 0, "%ld f16 NaN patterns stopped being NaN", nan_lost);
}

static void test_bf16_widening_and_round_trip(void) {
    long wrong_value = 0, wrong_round_trip = 0, nan_lost = 0;
    uint32_t first_value = 0, first_trip = 0;
    for (uint32_t h = 0; h < 65536; h++) {
        float f = cvx_bf16_to_f32((uint16_t)h);
        uint32_t e = (h >> 7) & 0xff, m = h & 0x7f;
        int neg = (h & 0x8000) != 0;
        if (e == 0xff && m != 0) {
            if (!isnan(f) || !bf16_is_nan(cvx_f32_to_bf16(f))) nan_lost++;
            continue;
        }
        double want = e == 0xff ? INFINITY : bf16_magnitude(h & 0x7fff);
        if ((double)fabsf(f) != want || (signbit(f) != 0) != neg) {
            if (wrong_value++ == 0) first_value = h;
        }
        if (cvx_f32_to_bf16(f) != h && wrong_round_trip++ == 0) first_trip = h;
    }
    CVX_EXPECT(wrong_value == 0, "%ld bf16 patterns widen to the wrong f32; first 0x%04x -> %a", wrong_value,
               first_value, (double)cvx_bf16_to_f32((uint16_t)first_value));
    CVX_EXPECT(wrong_round_trip == 0, "%ld bf16 patterns do not survive bf16->f32->bf16; first 0x%04x -> 0x%04x",
               wrong_round_trip, first_trip, cvx_f32_to_bf16(cvx_bf16_to_f32((uint16_t)first_trip)));
    CVX_EXPECT(nan_lost == 0, "%ld bf16 NaN patterns stopped being NaN", nan_lost);
}

static void test_narrowing_sweeps(void) {
    sweep f16_grid = {.name = "every f16 value, midpoint and their f32 neighbours"};
    for (uint32_t h = 0; h < 0x7c00; h++) {
        float x = (float)f16_magnitude(h), next = (float)f16_magnitude(h + 1);
        sweep_around(&f16_grid, x, next);
    }
    sweep_report(&f16_grid);

    sweep bf16_grid = {.name = "every bf16 value, midpoint and their f32 neighbours"};
    for (uint32_t h = 0; h < 0x7f80; h++) {
        /* midpoints of the top binade round to 2^128: double holds that, the float cast would not */
        if (h == 0x7f7f) {
            uint32_t u = h << 16;
            sweep_both_signs(&bf16_grid, bits_f32(u));
            sweep_both_signs(&bf16_grid, bits_f32(u | 0x8000));
            sweep_both_signs(&bf16_grid, bits_f32(u | 0x7fff));
            sweep_both_signs(&bf16_grid, bits_f32(u | 0x8001));
            sweep_both_signs(&bf16_grid, bits_f32(0x7f7fffffu));
            continue;
        }
        sweep_around(&bf16_grid, (float)bf16_magnitude(h), (float)bf16_magnitude(h + 1));
    }
    sweep_report(&bf16_grid);

    /* A strided walk over all 2^32 patterns (the stride is prime, so it visits every residue of the low bits):
     * f32 subnormals, NaN payloads, both signs and every exponent. */
    sweep strided = {.name = "every 4099th f32 bit pattern"};
    for (uint64_t u = 0; u < (1ull << 32); u += 4099) sweep_one(&strided, bits_f32((uint32_t)u));
    sweep_report(&strided);
}

/* Named cases with the answer torch gives (x.to(torch.float16) / x.to(torch.bfloat16)). */
static void test_named_cases(void) {
    struct {
        float x;
        uint16_t f16, bf16;
    } cases[] = {
        {0.0f, 0x0000, 0x0000},
        {-0.0f, 0x8000, 0x8000},
        {1.0f, 0x3c00, 0x3f80},
        {65504.0f, 0x7bff, 0x4780},
        {65519.99f, 0x7bff, 0x4780}, /* just below the f16 overflow threshold */
        {65520.0f, 0x7c00, 0x4780},  /* the tie at the threshold rounds to even: inf */
        {-65520.0f, 0xfc00, 0xc780},
        {1e10f, 0x7c00, 0x5015},
        {FLT_MAX, 0x7c00, 0x7f80}, /* bf16 rounds up past its largest finite value */
        {INFINITY, 0x7c00, 0x7f80},
        {-INFINITY, 0xfc00, 0xff80},
        {0x1p-24f, 0x0001, 0x3380},        /* smallest f16 subnormal */
        {0x1p-25f, 0x0000, 0x3300},        /* tie between 0 and 2^-24: even is 0 */
        {0x1.000002p-25f, 0x0001, 0x3300}, /* just above the tie */
        {0x1.8p-24f, 0x0002, 0x33c0},      /* tie between 1 and 2 units: even is 2 */
        {0x1.4p-23f, 0x0002, 0x3420},      /* tie between 2 and 3 units: even is 2 */
        {0x1p-14f, 0x0400, 0x3880},        /* smallest f16 normal */
        {0x1.ff8p-15f, 0x03ff, 0x3880},    /* largest f16 subnormal; bf16 rounds it up */
        {1.0f + 0x1p-11f, 0x3c00, 0x3f80}, /* f16 tie at 1: even is 1.0 */
        {1.0f + 0x3p-11f, 0x3c02, 0x3f80}, /* f16 tie above 1 + 2^-10: even is 1 + 2^-9 */
        {1.0f + 0x1p-8f, 0x3c04, 0x3f80},  /* bf16 tie at 1: even is 1.0 */
        {1.0f + 0x3p-8f, 0x3c0c, 0x3f82},  /* bf16 tie above 1 + 2^-7: even is 1 + 2^-6 */
        {0x1p-149f, 0x0000, 0x0000},       /* f32 subnormal */
        {0x1p-126f, 0x0000, 0x0080},       /* smallest f32 normal: a bf16 normal too */
        {3.14159265f, 0x4248, 0x4049},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        uint16_t h = cvx_f32_to_f16(cases[i].x), b = cvx_f32_to_bf16(cases[i].x);
        CVX_EXPECT(h == cases[i].f16, "f32->f16(%a) = 0x%04x, want 0x%04x", (double)cases[i].x, h, cases[i].f16);
        CVX_EXPECT(b == cases[i].bf16, "f32->bf16(%a) = 0x%04x, want 0x%04x", (double)cases[i].x, b, cases[i].bf16);
    }
    uint32_t nans[] = {0x7fc00000u, 0xffc00000u, 0x7f800001u, 0x7fa00000u, 0xff800001u, 0x7fffffffu};
    for (size_t i = 0; i < sizeof(nans) / sizeof(nans[0]); i++) {
        uint16_t h = cvx_f32_to_f16(bits_f32(nans[i])), b = cvx_f32_to_bf16(bits_f32(nans[i]));
        CVX_EXPECT(f16_is_nan(h), "f32 NaN 0x%08x -> f16 0x%04x is not NaN", nans[i], h);
        CVX_EXPECT(bf16_is_nan(b), "f32 NaN 0x%08x -> bf16 0x%04x is not NaN", nans[i], b);
        CVX_EXPECT((h & 0x8000) == ((nans[i] >> 16) & 0x8000), "f16 NaN sign lost for 0x%08x", nans[i]);
        CVX_EXPECT((b & 0x8000) == ((nans[i] >> 16) & 0x8000), "bf16 NaN sign lost for 0x%08x", nans[i]);
    }
    /* cvx_convert agrees with the scalar functions, through f32 for f16 <-> bf16 */
    uint16_t src[3] = {0x3c01, 0x7bff, 0x0001}, via[3], back[3];
    cvx_convert(via, CVX_BF16, src, CVX_F16, 3);
    for (int i = 0; i < 3; i++) {
        uint16_t want = cvx_f32_to_bf16(cvx_f16_to_f32(src[i]));
        CVX_EXPECT(via[i] == want, "convert f16 0x%04x -> bf16 0x%04x, want 0x%04x", src[i], via[i], want);
    }
    float wide[3];
    cvx_convert(wide, CVX_F32, src, CVX_F16, 3);
    cvx_convert(back, CVX_F16, wide, CVX_F32, 3);
    CVX_EXPECT(memcmp(back, src, sizeof(src)) == 0, "convert f16 -> f32 -> f16 changed the bits");
    CVX_EXPECT(f32_bits(wide[2]) == f32_bits(0x1p-24f), "f16 0x0001 -> %a, want 2^-24", (double)wide[2]);
}

int main(void) {
    test_f16_widening_and_round_trip();
    test_bf16_widening_and_round_trip();
    test_named_cases();
    test_narrowing_sweeps();
    return cvx_test_report();
}

/* Vectorisable elementary functions for the C kernels: exp, log, log1p, softplus.
 *
 * Plain arithmetic and bit operations only (no libm calls, no table lookups, no branches
 * once inlined: every special case is a select), so GCC vectorises any `#pragma omp simd`
 * loop that calls them, for every vector width.  Portable (no libmvec: also musl, macOS),
 * and header-only so that a test can compile them into a tiny program
 * (tests/test_fl_math.py checks them against the C library's long double functions).
 *
 * Compile without -ffast-math (inf, NaN and subnormals are meaningful) and without
 * flushing subnormals to zero.  Special values (checked by tests/test_fl_math.py): see each
 * function's comment.  Largest errors measured against the C library's long double
 * functions (float: every 7th float bit pattern; double: 4 million random and near-0 /
 * near-1 arguments; with and without FMA contraction), in ulps of the exact result:
 *
 *   exp_f32, exp_full_f32      1.17      exp_f64, exp_full_f64      1.12
 *   log_f32                    0.94      log_f64                    0.98
 *   log1p_f32                  1.53      log1p_f64                  1.46
 *   softplus_f32 (v >= -87)    1.78      softplus_f64 (v >= -708)   1.81
 *
 * The test asserts 1.5 ulp for exp (2 for float), 1 for log, 2 for log1p and softplus.
 */
#ifndef FL_MATH_H
#define FL_MATH_H

#include <math.h>
#include <stdint.h>
#include <string.h>

#ifndef FL_INLINE
#if defined(__GNUC__)
#define FL_INLINE static inline __attribute__((always_inline))
#else
#define FL_INLINE static inline
#endif
#endif

/* ------------------------------------------------------------------ bit casts */

FL_INLINE uint32_t fl_bits_f32(float v) {
    uint32_t b;
    memcpy(&b, &v, sizeof b);
    return b;
}

FL_INLINE float fl_from_bits_f32(uint32_t b) {
    float v;
    memcpy(&v, &b, sizeof v);
    return v;
}

FL_INLINE uint64_t fl_bits_f64(double v) {
    uint64_t b;
    memcpy(&b, &v, sizeof b);
    return b;
}

FL_INLINE double fl_from_bits_f64(uint64_t b) {
    double v;
    memcpy(&v, &b, sizeof v);
    return v;
}

/* ------------------------------------------------------------------ exp
 *
 * exp(z) = 2^n exp(r), n = round(z / ln 2) taken by adding 1.5 * 2^23 (2^52 for double):
 * the sum's low mantissa bits are n, so there is no float-to-int conversion (undefined for
 * NaN); r = z - n ln 2 in two parts (Cody-Waite; ln2_hi has trailing zero bits so n ln2_hi
 * is exact), exp(r) by a polynomial.  2^n is built from bits.
 */

#define FL_LN2_HI_F32 0.693359375f
#define FL_LN2_LO_F32 -2.12194440e-4f
#define FL_LN2_HI_F64 6.93147180369123816490e-01
#define FL_LN2_LO_F64 1.90821492927058770002e-10

/* exp(r) for |r| <= ln(2) / 2: a degree-6 polynomial fitted for relative error. */
FL_INLINE float fl_exp_poly_f32(float r) {
    float p = 0.0013751407895834938f;
    p = p * r + 0.008368916341375321f;
    p = p * r + 0.04166953310922312f;
    p = p * r + 0.16666518459980356f;
    p = p * r + 0.49999988595112776f;
    p = p * r + 1.0f;
    return p * r + 1.0f;
}

/* exp(r) for |r| <= ln(2) / 2: Taylor to degree 13 (the first dropped term is below half an
   ulp). */
FL_INLINE double fl_exp_poly_f64(double r) {
    double p = 1.0 / 6227020800.0;
    p = p * r + 1.0 / 479001600.0;
    p = p * r + 1.0 / 39916800.0;
    p = p * r + 1.0 / 3628800.0;
    p = p * r + 1.0 / 362880.0;
    p = p * r + 1.0 / 40320.0;
    p = p * r + 1.0 / 5040.0;
    p = p * r + 1.0 / 720.0;
    p = p * r + 1.0 / 120.0;
    p = p * r + 1.0 / 24.0;
    p = p * r + 1.0 / 6.0;
    p = p * r + 0.5;
    p = p * r + 1.0;
    return p * r + 1.0;
}

/* exp(z) for z <= 0 (the softmax's shifted logits): -inf gives 0, NaN gives NaN; results
   below the smallest normal float are flushed to 0. */
FL_INLINE float exp_f32(float z) {
    const float zc = z < -87.33654f ? -87.33654f : z;
    const float t = zc * 1.44269504f + 12582912.0f;
    const float n = t - 12582912.0f;
    const float r = (zc - n * FL_LN2_HI_F32) - n * FL_LN2_LO_F32;
    const float p = fl_exp_poly_f32(r);
    /* (n + 127) << 23: the magic number's own bits shift out */
    const float two_n = fl_from_bits_f32((fl_bits_f32(t) + 127u) << 23);
    return z < -87.33654f ? 0.0f : p * two_n;
}

FL_INLINE double exp_f64(double z) {
    const double zc = z < -708.3964185322641 ? -708.3964185322641 : z;
    const double t = zc * 1.4426950408889634 + 6755399441055744.0;
    const double n = t - 6755399441055744.0;
    const double r = (zc - n * FL_LN2_HI_F64) - n * FL_LN2_LO_F64;
    const double p = fl_exp_poly_f64(r);
    const double two_n = fl_from_bits_f64((fl_bits_f64(t) + 1023u) << 52);
    return z < -708.3964185322641 ? 0.0 : p * two_n;
}

/* exp(z) for every z: +inf above the range, gradual underflow to 0 below it, NaN gives NaN.
   2^n is applied as 2^a 2^b with a = round(n / 2), b = n - a, both normal powers of two. */
FL_INLINE float exp_full_f32(float z) {
    const float zc = z < -104.0f ? -104.0f : (z > 89.0f ? 89.0f : z);
    const float t = zc * 1.44269504f + 12582912.0f;
    const float n = t - 12582912.0f;
    const float r = (zc - n * FL_LN2_HI_F32) - n * FL_LN2_LO_F32;
    const float p = fl_exp_poly_f32(r);
    const float ta = n * 0.5f + 12582912.0f;
    const float tb = (n - (ta - 12582912.0f)) + 12582912.0f;
    const float two_a = fl_from_bits_f32((fl_bits_f32(ta) + 127u) << 23);
    const float two_b = fl_from_bits_f32((fl_bits_f32(tb) + 127u) << 23);
    return p * two_a * two_b;
}

FL_INLINE double exp_full_f64(double z) {
    const double zc = z < -746.0 ? -746.0 : (z > 710.0 ? 710.0 : z);
    const double t = zc * 1.4426950408889634 + 6755399441055744.0;
    const double n = t - 6755399441055744.0;
    const double r = (zc - n * FL_LN2_HI_F64) - n * FL_LN2_LO_F64;
    const double p = fl_exp_poly_f64(r);
    const double ta = n * 0.5 + 6755399441055744.0;
    const double tb = (n - (ta - 6755399441055744.0)) + 6755399441055744.0;
    const double two_a = fl_from_bits_f64((fl_bits_f64(ta) + 1023u) << 52);
    const double two_b = fl_from_bits_f64((fl_bits_f64(tb) + 1023u) << 52);
    return p * two_a * two_b;
}

/* ------------------------------------------------------------------ log, log1p
 *
 * Both reduce their argument to 2^k (1 + g), 1 + g in [sqrt(1/2), sqrt(2)), and return
 *   k ln 2 + log1p(g),  log1p(g) = 2 atanh(s) = g - s (g - R(s^2)),  s = g / (2 + g),
 * since g = 2s / (1 - s) gives 2s = g - s g, and 2 atanh(s) = 2s + s R with
 * R = sum_{j>=1} 2 s^(2j) / (2j + 1), |s| <= 0.1716.  R is its Taylor series (exact
 * rational coefficients), cut where the first dropped term is below 2^-60 (double) or 2^-30
 * (float) of the result: 9 and 4 terms.  The correction s (g - R) is at most 0.18 g, so its
 * rounding adds little to the error of g itself.
 */

/* k ln 2 + log1p(g) for |g| <= sqrt(2) - 1 (slightly beyond is fine). */
FL_INLINE float fl_log_reduced_f32(float g, float k) {
    const float s = g / (2.0f + g), z = s * s;
    float r = 2.0f / 9.0f;
    r = r * z + 2.0f / 7.0f;
    r = r * z + 2.0f / 5.0f;
    r = r * z + 2.0f / 3.0f;
    r = r * z;
    return k * FL_LN2_HI_F32 + (g - (s * (g - r) - k * FL_LN2_LO_F32));
}

FL_INLINE double fl_log_reduced_f64(double g, double k) {
    const double s = g / (2.0 + g), z = s * s;
    double r = 2.0 / 19.0;
    r = r * z + 2.0 / 17.0;
    r = r * z + 2.0 / 15.0;
    r = r * z + 2.0 / 13.0;
    r = r * z + 2.0 / 11.0;
    r = r * z + 2.0 / 9.0;
    r = r * z + 2.0 / 7.0;
    r = r * z + 2.0 / 5.0;
    r = r * z + 2.0 / 3.0;
    r = r * z;
    return k * FL_LN2_HI_F64 + (g - (s * (g - r) - k * FL_LN2_LO_F64));
}

/* The biased exponent kb = k + bias of a positive normal u for the split u = 2^k m with
   m in [sqrt(1/2), sqrt(2)): adding (1 - sqrt(1/2))'s distance in bits carries into the
   exponent exactly when the mantissa is at least sqrt(2)'s.  m = u 2^-k then has the bits
   of u minus k in the exponent field. */
#define FL_SQRT_HALF_BITS_F32 0x3f3504f3u           /* sqrt(1/2) rounded down */
#define FL_SQRT_HALF_BITS_F64 0x3fe6a09e667f3bcdull /* sqrt(1/2) */

FL_INLINE uint32_t fl_log_exponent_f32(float u) {
    return (fl_bits_f32(u) + (0x3f800000u - FL_SQRT_HALF_BITS_F32)) >> 23;
}

FL_INLINE uint64_t fl_log_exponent_f64(double u) {
    return (fl_bits_f64(u) + (0x3ff0000000000000ull - FL_SQRT_HALF_BITS_F64)) >> 52;
}

/* The exponent kb - bias as a float: a small integer, converted exactly (for double through
   the 2^52 magic number: there is no vector int64 -> double conversion before AVX-512). */
FL_INLINE float fl_exponent_value_f32(uint32_t kb) { return (float)(int32_t)kb - 127.0f; }

FL_INLINE double fl_exponent_value_f64(uint64_t kb) {
    return fl_from_bits_f64(0x4330000000000000ull | kb) - (4503599627370496.0 + 1023.0);
}

/* log(x): x < 0 or -inf gives NaN, +-0 gives -inf, +inf gives +inf, NaN gives NaN;
   subnormal x is scaled by 2^25 (2^54) first. */
FL_INLINE float log_f32(float x) {
    /* a multiplier rather than a select of x: GCC would compute the reduction twice */
    const float tiny = x < 0x1p-126f ? 1.0f : 0.0f;
    const float u = x * (1.0f + tiny * (0x1p25f - 1.0f));
    const uint32_t kb = fl_log_exponent_f32(u);
    const float g = fl_from_bits_f32(fl_bits_f32(u) - ((kb - 127u) << 23)) - 1.0f; /* exact */
    const float k = fl_exponent_value_f32(kb) - 25.0f * tiny;
    const float r = fl_log_reduced_f32(g, k);
    const float special = x == 0.0f ? -INFINITY : (x < 0.0f ? NAN : x);
    return x > 0.0f && x < INFINITY ? r : special;
}

FL_INLINE double log_f64(double x) {
    const double tiny = x < 0x1p-1022 ? 1.0 : 0.0;
    const double u = x * (1.0 + tiny * (0x1p54 - 1.0));
    const uint64_t kb = fl_log_exponent_f64(u);
    const double g = fl_from_bits_f64(fl_bits_f64(u) - ((kb - 1023u) << 52)) - 1.0;
    const double k = fl_exponent_value_f64(kb) - 54.0 * tiny;
    const double r = fl_log_reduced_f64(g, k);
    const double special = x == 0.0 ? -INFINITY : (x < 0.0 ? NAN : x);
    return x > 0.0 && x < INFINITY ? r : special;
}

/* log1p(x): u = 1 + x rounded, c = (1 + x) - u exactly (2Sum: no select on which operand
   is larger), then u = 2^k (1 + f) with f exact and g = f + c 2^-k.  x < -1 or -inf gives NaN,
   -1 gives -inf, +inf gives +inf, +-0 gives +-0, NaN gives NaN; tiny x gives x. */
FL_INLINE float log1p_f32(float x) {
    const float u = 1.0f + x, x_part = u - 1.0f;
    const float c = (x - x_part) + (1.0f - (u - x_part));
    const uint32_t kb = fl_log_exponent_f32(u);
    const float f = fl_from_bits_f32(fl_bits_f32(u) - ((kb - 127u) << 23)) - 1.0f;
    /* 2^-k; c is negligible where 2^-k is not a normal float */
    const float two_mk = u < 0x1p120f ? fl_from_bits_f32((254u - kb) << 23) : 0.0f;
    const float r = fl_log_reduced_f32(f + c * two_mk, fl_exponent_value_f32(kb));
    const float special = x == -1.0f ? -INFINITY : (x < -1.0f ? NAN : x);
    return x > -1.0f && x < INFINITY && x != 0.0f ? r : special;
}

FL_INLINE double log1p_f64(double x) {
    const double u = 1.0 + x, x_part = u - 1.0;
    const double c = (x - x_part) + (1.0 - (u - x_part));
    const uint64_t kb = fl_log_exponent_f64(u);
    const double f = fl_from_bits_f64(fl_bits_f64(u) - ((kb - 1023u) << 52)) - 1.0;
    const double two_mk = u < 0x1p1000 ? fl_from_bits_f64((2046u - kb) << 52) : 0.0;
    const double r = fl_log_reduced_f64(f + c * two_mk, fl_exponent_value_f64(kb));
    const double special = x == -1.0 ? -INFINITY : (x < -1.0 ? NAN : x);
    return x > -1.0 && x < INFINITY && x != 0.0 ? r : special;
}

/* ------------------------------------------------------------------ softplus
 *
 * log1p(e) for e in [0, 1] (softplus's e^-|v|), without the range reduction:
 * log1p(e) = e - s (e - R(s^2)), s = e / (2 + e) in [0, 1/3], R its full Taylor series
 * (the identity above, here with s^2 <= 1/9: 7 terms for float, 16 for double).  Exact for
 * tiny e (no 1 + e is ever rounded); NaN gives NaN.
 *
 * softplus(v) = log(1 + e^v) = max(v, 0) + log1p(e^-|v|): no overflow, full relative
 * accuracy for v << 0 (where it is e^v; down to where exp_f32 / exp_f64 flush to 0, -87.3
 * and -708.4).  -log sigmoid(v) = softplus(-v).  softplus(-inf) = 0, softplus(+inf) = +inf,
 * NaN gives NaN.
 */
FL_INLINE float fl_log1p_unit_f32(float e) {
    const float s = e / (2.0f + e), z = s * s;
    float r = 2.0f / 15.0f;
    r = r * z + 2.0f / 13.0f;
    r = r * z + 2.0f / 11.0f;
    r = r * z + 2.0f / 9.0f;
    r = r * z + 2.0f / 7.0f;
    r = r * z + 2.0f / 5.0f;
    r = r * z + 2.0f / 3.0f;
    return e - s * (e - r * z);
}

FL_INLINE double fl_log1p_unit_f64(double e) {
    const double s = e / (2.0 + e), z = s * s;
    double r = 2.0 / 33.0;
    r = r * z + 2.0 / 31.0;
    r = r * z + 2.0 / 29.0;
    r = r * z + 2.0 / 27.0;
    r = r * z + 2.0 / 25.0;
    r = r * z + 2.0 / 23.0;
    r = r * z + 2.0 / 21.0;
    r = r * z + 2.0 / 19.0;
    r = r * z + 2.0 / 17.0;
    r = r * z + 2.0 / 15.0;
    r = r * z + 2.0 / 13.0;
    r = r * z + 2.0 / 11.0;
    r = r * z + 2.0 / 9.0;
    r = r * z + 2.0 / 7.0;
    r = r * z + 2.0 / 5.0;
    r = r * z + 2.0 / 3.0;
    return e - s * (e - r * z);
}

FL_INLINE float softplus_f32(float v) {
    return (v > 0.0f ? v : 0.0f) + fl_log1p_unit_f32(exp_f32(v < 0.0f ? v : -v));
}

FL_INLINE double softplus_f64(double v) {
    return (v > 0.0 ? v : 0.0) + fl_log1p_unit_f64(exp_f64(v < 0.0 ? v : -v));
}

#endif /* FL_MATH_H */

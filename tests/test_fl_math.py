"""The C kernels' vectorisable exp / log / log1p / softplus (fastloss/_ext/src/fl_math.h),
compiled into a tiny C program and checked against the C library's long double functions:
the largest error in ulps over many arguments, and the special values (docs/design.md §5).

The losses check these functions again through every backend against the reference
(test_backends.py, test_edge_cases.py); this test pins down their own accuracy."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

import fastloss

SRC = os.path.join(os.path.dirname(os.path.abspath(fastloss.__file__)), "_ext", "src")
CC = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")

# Measures the largest error (ulps of the exact result, rounded to the type) of one function
# over: every 331st float bit pattern (float), or 2^20 random bit patterns plus arguments
# near 1 and near 0 (double); then prints one line "max_ulp".  Special values are checked in
# special_values() and make it exit 1.
PROGRAM = r"""
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "fl_math.h"

static long double ulp_of(long double ref, int mant, int min_exp) {
    int e;
    frexpl(fabsl(ref), &e);
    if (e - mant < min_exp) e = min_exp + mant;
    return ldexpl(1.0L, e - mant);
}

/* error of got in ulps; 1e30 when a NaN or infinity does not match */
static double err(long double got, long double ref, int is_float) {
    const long double r = is_float ? (long double)(float)ref : (long double)(double)ref;
    if (isnan(ref) || isnan(got)) return isnan(ref) && isnan(got) ? 0.0 : 1e30;
    if (isinf(r) || isinf(got)) return got == r ? 0.0 : 1e30;
    return (double)(fabsl(got - ref) /
                    (is_float ? ulp_of(ref, 24, -149) : ulp_of(ref, 53, -1074)));
}

static long double softplusl(long double v) { return (v > 0 ? v : 0) + log1pl(expl(-fabsl(v))); }

static int same(double a, double b) { return (isnan(a) && isnan(b)) || (a == b && signbit(a) == signbit(b)); }

#define CHECK(expr, want) do { if (!same((expr), (want))) { \
    printf("special: %s = %.17g, want %.17g\n", #expr, (double)(expr), (double)(want)); bad = 1; } } while (0)

static int special_values(void) {
    int bad = 0;
    CHECK(log_f32(0.0f), -INFINITY); CHECK(log_f32(-0.0f), -INFINITY);
    CHECK(log_f32(-1.0f), NAN); CHECK(log_f32(-INFINITY), NAN); CHECK(log_f32(INFINITY), INFINITY);
    CHECK(log_f32(NAN), NAN); CHECK(log_f32(1.0f), 0.0f);
    CHECK(log_f64(0.0), -INFINITY); CHECK(log_f64(-0.0), -INFINITY);
    CHECK(log_f64(-1.0), NAN); CHECK(log_f64(-INFINITY), NAN); CHECK(log_f64(INFINITY), INFINITY);
    CHECK(log_f64(NAN), NAN); CHECK(log_f64(1.0), 0.0);
    CHECK(log1p_f32(0.0f), 0.0f); CHECK(log1p_f32(-0.0f), -0.0f); CHECK(log1p_f32(-1.0f), -INFINITY);
    CHECK(log1p_f32(-2.0f), NAN); CHECK(log1p_f32(-INFINITY), NAN); CHECK(log1p_f32(INFINITY), INFINITY);
    CHECK(log1p_f32(NAN), NAN); CHECK(log1p_f32(1e-30f), 1e-30f); CHECK(log1p_f32(0x1p-149f), 0x1p-149f);
    CHECK(log1p_f64(0.0), 0.0); CHECK(log1p_f64(-0.0), -0.0); CHECK(log1p_f64(-1.0), -INFINITY);
    CHECK(log1p_f64(-2.0), NAN); CHECK(log1p_f64(-INFINITY), NAN); CHECK(log1p_f64(INFINITY), INFINITY);
    CHECK(log1p_f64(NAN), NAN); CHECK(log1p_f64(1e-300), 1e-300); CHECK(log1p_f64(0x1p-1074), 0x1p-1074);
    CHECK(exp_f32(-INFINITY), 0.0f); CHECK(exp_f32(NAN), NAN); CHECK(exp_f32(0.0f), 1.0f);
    CHECK(exp_f64(-INFINITY), 0.0); CHECK(exp_f64(NAN), NAN); CHECK(exp_f64(0.0), 1.0);
    CHECK(exp_full_f32(-INFINITY), 0.0f); CHECK(exp_full_f32(INFINITY), INFINITY);
    CHECK(exp_full_f32(100.0f), INFINITY); CHECK(exp_full_f32(NAN), NAN); CHECK(exp_full_f32(0.0f), 1.0f);
    CHECK(exp_full_f64(-INFINITY), 0.0); CHECK(exp_full_f64(INFINITY), INFINITY);
    CHECK(exp_full_f64(800.0), INFINITY); CHECK(exp_full_f64(NAN), NAN); CHECK(exp_full_f64(0.0), 1.0);
    CHECK(softplus_f32(-INFINITY), 0.0f); CHECK(softplus_f32(INFINITY), INFINITY); CHECK(softplus_f32(NAN), NAN);
    CHECK(softplus_f64(-INFINITY), 0.0); CHECK(softplus_f64(INFINITY), INFINITY); CHECK(softplus_f64(NAN), NAN);
    return bad;
}

static unsigned long long state = 88172645463325252ull;
static unsigned long long next(void) {
    state ^= state << 13; state ^= state >> 7; state ^= state << 17; return state;
}

int main(int argc, char **argv) {
    const char *fn = argv[1];
    double worst = 0.0, at = 0.0;
    if (special_values()) return 1;
    if (!strcmp(fn + strlen(fn) - 3, "f32")) {
        for (unsigned long long b = 0; b < 0x100000000ull; b += 331) {
            unsigned int bits = (unsigned int)b;
            float x;
            memcpy(&x, &bits, sizeof x);
            float got; long double ref;
            if (!strcmp(fn, "log_f32")) { got = log_f32(x); ref = logl(x); }
            else if (!strcmp(fn, "log1p_f32")) { got = log1p_f32(x); ref = log1pl(x); }
            else if (!strcmp(fn, "exp_f32")) {
                if (!(x <= 0.0f) || x < -87.3f) continue;  /* its domain; flushes below */
                got = exp_f32(x); ref = expl(x);
            }
            else if (!strcmp(fn, "exp_full_f32")) { got = exp_full_f32(x); ref = expl(x); }
            else { if (x < -87.3f) continue; got = softplus_f32(x); ref = softplusl(x); }
            const double e = err(got, ref, 1);
            if (e > worst) { worst = e; at = x; }
        }
    } else {
        for (long i = 0; i < (1L << 20); ++i) {
            unsigned long long b = next();
            double x;
            memcpy(&x, &b, sizeof x);
            if (i % 3 == 1) x = ldexp((double)(next() >> 11), -53 - (int)(i % 5)) * (i % 2 ? 1 : -1);
            if (i % 3 == 2) x = 1.0 + ldexp((double)(next() >> 11), -53 - (int)(i % 40));
            double got; long double ref;
            if (!strcmp(fn, "log_f64")) { got = log_f64(x); ref = logl(x); }
            else if (!strcmp(fn, "log1p_f64")) { got = log1p_f64(x); ref = log1pl(x); }
            else if (!strcmp(fn, "exp_f64")) {
                x = -fmod(fabs(x), 708.3); got = exp_f64(x); ref = expl(x);
            }
            else if (!strcmp(fn, "exp_full_f64")) { x = fmod(x, 760.0); got = exp_full_f64(x); ref = expl(x); }
            else { x = fmod(x, 708.0); got = softplus_f64(x); ref = softplusl(x); }
            const double e = err(got, ref, 0);
            if (e > worst) { worst = e; at = x; }
        }
    }
    printf("%.4f %.17g\n", worst, at);
    return 0;
}
"""

# The documented bounds of fl_math.h (in ulps).
BOUNDS = {"exp_f32": 2.0, "exp_f64": 1.5, "exp_full_f32": 2.0, "exp_full_f64": 1.5,
          "log_f32": 1.0, "log_f64": 1.0, "log1p_f32": 2.0, "log1p_f64": 2.0,
          "softplus_f32": 2.0, "softplus_f64": 2.0}


@pytest.fixture(scope="module")
def program(tmp_path_factory):
    if CC is None:
        pytest.skip("no C compiler")
    if not os.path.exists(os.path.join(SRC, "fl_math.h")):
        pytest.skip("the C sources are not installed")
    tmp = tmp_path_factory.mktemp("fl_math")
    src, exe = tmp / "fl_math_test.c", tmp / "fl_math_test"
    src.write_text(PROGRAM)
    # the kernels' flags (setup.py): FMA contraction where the CPU has it, no -ffast-math
    flags = ["-O2", "-std=gnu11", "-fno-math-errno", "-fno-trapping-math", "-march=native"]
    run = subprocess.run([CC, *flags, "-I", SRC, str(src), "-o", str(exe), "-lm"],
                         capture_output=True, text=True)
    if run.returncode != 0:  # e.g. a compiler without -march=native
        flags.remove("-march=native")
        run = subprocess.run([CC, *flags, "-I", SRC, str(src), "-o", str(exe), "-lm"],
                             capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    return str(exe)


@pytest.mark.parametrize("name", sorted(BOUNDS))
def test_max_ulp_error_and_special_values(program, name):
    run = subprocess.run([program, name], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr  # a special value is wrong
    worst, at = run.stdout.split()
    assert float(worst) <= BOUNDS[name], f"{name}: {worst} ulp at {at}"

"""Build the C kernels once, for both the ``cython`` backend and ``libfastloss.so``.

The C sources are compiled in parallel (the float and double kernels are separate objects,
see FL_PART in src/fastloss.c), then linked into the extension and into the shared library.
The shared library ships inside the package (``fastloss/_ext/lib``) for C programs that use
the C API without Python (``python -m fastloss config --cflags --libs``).  Rows run on POSIX
threads started per call (no OpenMP runtime); FASTLOSS_NO_THREADS=1 builds everything serial.
``#pragma omp simd`` only needs ``-fopenmp-simd`` (no runtime).  The version is read from
``fastloss.h``, where it is written once.
"""

import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import warnings
from concurrent.futures import ThreadPoolExecutor

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

HERE = os.path.dirname(os.path.abspath(__file__))
EXT = os.path.join("fastloss", "_ext")
# the two halves of src/fastloss.c first: they take nearly all the build's time
C_SOURCES = [os.path.join(EXT, "src", name)
             for name in ("fastloss_f32.c", "fastloss_f64.c", "threads.c", "api.c")]
HEADER = os.path.join(EXT, "include", "fastloss.h")
INCLUDE = [os.path.join(EXT, "include"), os.path.join(EXT, "src")]
# -g0: Python's own flags ask for debug information, which is three quarters of the objects'
# size and an eighth of the build time; the symbols stay
BASE_FLAGS = ["-O3", "-fno-math-errno", "-fno-trapping-math", "-g0"]
# `#pragma omp simd` (vectorised reductions) without the OpenMP runtime
SIMD_FLAGS = ["-fopenmp-simd"]
# 256-bit vectors for the cloned kernels (short rows one at a time: 2x faster than 512-bit);
# src/fastloss.c compiles a 512-bit variant of its own for rows of 128 classes or more and for
# the short-row tiles.
VECTOR_FLAGS = ["-mprefer-vector-width=256"]


def version():
    """FASTLOSS_VERSION_MAJOR.MINOR.PATCH of fastloss.h."""
    with open(os.path.join(HERE, HEADER)) as f:
        text = f.read()
    parts = dict(re.findall(r"#define FASTLOSS_VERSION_(MAJOR|MINOR|PATCH) (\d+)", text))
    return "{MAJOR}.{MINOR}.{PATCH}".format(**parts)


def _compiler_accepts(flags, link_flags=(), program="int main(void) { return 0; }\n"):
    """Compile and link a tiny program with ``flags``."""
    cc = os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc"
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "probe.c")
        with open(src, "w") as f:
            f.write(program)
        cmd = cc.split() + list(flags) + [src, "-o", os.path.join(tmp, "probe")] + list(link_flags)
        try:
            return subprocess.run(cmd, capture_output=True).returncode == 0
        except OSError:
            return False


PTHREAD_PROBE = """#include <pthread.h>
static void *f(void *p) { return p; }
int main(void) {
    pthread_t t;
    if (pthread_create(&t, 0, f, 0)) return 1;
    return pthread_join(t, 0);
}
"""


# The thread pool (src/threads.c) needs C11 atomics, 64-bit ones too (on some 32-bit
# targets in libatomic); -O0 keeps the calls.
ATOMICS_PROBE = """#include <stdatomic.h>
#include <stdint.h>
int main(void) {
    static _Atomic int64_t a;
    static _Atomic uint64_t b;
    int64_t e = 0;
    atomic_compare_exchange_strong(&a, &e, 1);
    atomic_fetch_or(&b, 1);
    return (int)(atomic_load(&a) - 1);
}
"""


def _flags():
    """(compile flags, link flags) for this compiler."""
    if sys.platform == "win32":
        return ["/O2"], []  # no pthreads: serial (see src/threads.c)
    flags = list(BASE_FLAGS) + [f for f in SIMD_FLAGS + VECTOR_FLAGS if _compiler_accepts([f])]
    if os.environ.get("FASTLOSS_NO_THREADS", "") not in ("", "0"):
        return flags + ["-DFASTLOSS_NO_THREADS=1"], []
    if not _compiler_accepts(["-pthread"], ["-pthread"], PTHREAD_PROBE):
        warnings.warn("fastloss: no POSIX threads; the C kernels will run serially",
                      stacklevel=2)
        return flags + ["-DFASTLOSS_NO_THREADS=1"], []
    for libs in ([], ["-latomic"]):
        if _compiler_accepts(["-pthread", "-O0"], ["-pthread"] + libs, ATOMICS_PROBE):
            return flags + ["-pthread"], ["-pthread"] + libs
    warnings.warn("fastloss: no C11 atomics; the C kernels will run serially", stacklevel=2)
    return flags + ["-DFASTLOSS_NO_THREADS=1"], []


def _cpus():
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


class BuildExt(build_ext):
    """build_ext that compiles the C sources once, in parallel, and links them into the
    extension and into libfastloss.so next to it."""

    def build_extensions(self):
        compile_flags, link_flags = _flags()
        objects = self._compile_c(compile_flags)
        for ext in self.extensions:
            ext.extra_compile_args = compile_flags
            ext.extra_link_args = link_flags
            ext.extra_objects = objects
        super().build_extensions()
        self._link_shared_library(objects, link_flags)

    def _compile_c(self, compile_flags):
        """Object files of C_SOURCES (position-independent: both links take them), one
        compiler process per source at a time on each CPU."""
        output_dir = os.path.join(self.build_temp, "c")
        self.mkpath(os.path.join(output_dir, EXT, "src"))  # before the threads, not by each
        flags = compile_flags + ([] if sys.platform == "win32" else ["-fPIC"])

        def one(source):
            return self.compiler.compile([source], output_dir=output_dir, include_dirs=INCLUDE,
                                         extra_postargs=flags)

        with ThreadPoolExecutor(max_workers=max(1, min(_cpus(), len(C_SOURCES)))) as pool:
            return [obj for objs in pool.map(one, C_SOURCES) for obj in objs]

    def _link_shared_library(self, objects, link_flags):
        target = self._library_in(self.build_lib)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        # libm is named here, so that programs link with -lfastloss alone
        libraries = [] if sys.platform in ("win32", "darwin") else ["m"]
        self.compiler.link_shared_object(objects, target, libraries=libraries,
                                         extra_postargs=link_flags)

    @staticmethod
    def _library_in(root):
        name = "libfastloss.dylib" if sys.platform == "darwin" else "libfastloss.so"
        return os.path.join(root, EXT, "lib", name)

    def run(self):
        super().run()  # builds with inplace off, then copies the extension if it was on
        if self.inplace or getattr(self, "editable_mode", False):
            target = self._library_in(HERE)
            os.makedirs(os.path.dirname(target), exist_ok=True)
            shutil.copyfile(self._library_in(self.build_lib), target)

    def get_outputs(self):
        return super().get_outputs() + [self._library_in(self.build_lib)]


def _extensions():
    from Cython.Build import cythonize

    # the C sources and their includes: an edit to any of them rebuilds the extension, which
    # links the C sources in as objects (BuildExt._compile_c)
    depends = [os.path.join(EXT, "src", name) for name in sorted(os.listdir(
        os.path.join(HERE, EXT, "src"))) if name.endswith((".c", ".inc", ".h"))] + [HEADER]
    ext = Extension("fastloss._ext._cython", sources=[os.path.join(EXT, "_cython.pyx")],
                    include_dirs=INCLUDE, depends=depends)
    return cythonize([ext], compiler_directives={"language_level": 3})


setup(version=version(), ext_modules=_extensions(), cmdclass={"build_ext": BuildExt})

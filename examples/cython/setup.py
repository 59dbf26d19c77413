"""Build the consumer:  python setup.py build_ext --inplace  (fastloss must be installed)."""

from Cython.Build import cythonize
from setuptools import Extension, setup

import fastloss

ext = Extension(
    "consumer",
    ["consumer.pyx"],
    include_dirs=[fastloss.get_include()],
    library_dirs=[fastloss.get_lib_dir()],
    runtime_library_dirs=[fastloss.get_lib_dir()],
    libraries=["fastloss"],
)
setup(name="fastloss-consumer", ext_modules=cythonize([ext]))

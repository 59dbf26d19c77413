"""Where the C API lives in the installed package, and the flags to build against it."""

from __future__ import annotations

import os
import sys

_EXT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_ext")


def get_include() -> str:
    """The folder holding ``fastloss.h`` (the C API), for ``-I``.

    Examples
    --------
    >>> import os, fastloss
    >>> os.path.exists(os.path.join(fastloss.get_include(), "fastloss.h"))
    True
    """
    return os.path.join(_EXT, "include")


def get_lib_dir() -> str:
    """The folder holding ``libfastloss.so``, for ``-L`` and ``-Wl,-rpath``."""
    return os.path.join(_EXT, "lib")


def library_path() -> str:
    name = "libfastloss.dylib" if sys.platform == "darwin" else "libfastloss.so"
    return os.path.join(get_lib_dir(), name)


def cflags() -> str:
    return f"-I{get_include()}"


def libs() -> str:
    lib_dir = get_lib_dir()
    return f"-L{lib_dir} -lfastloss -Wl,-rpath,{lib_dir} -lm"


def print_config(args) -> int:
    if not os.path.exists(library_path()):
        print(f"fastloss: {library_path()} is missing (the C extension was not built)",
              file=sys.stderr)
        return 1
    parts = []
    if args.cflags or not (args.cflags or args.libs):
        parts.append(cflags())
    if args.libs or not (args.cflags or args.libs):
        parts.append(libs())
    print(" ".join(parts))
    return 0


def header_version(path: str | None = None) -> str:
    """The version written in ``fastloss.h`` (``FASTLOSS_VERSION_MAJOR/MINOR/PATCH``): the one
    place the version is written; the package and the build read it from there."""
    import re

    with open(path or os.path.join(get_include(), "fastloss.h")) as f:
        text = f.read()
    parts = [re.search(rf"#define FASTLOSS_VERSION_{part}\s+(\d+)", text)
             for part in ("MAJOR", "MINOR", "PATCH")]
    if not all(parts):
        raise RuntimeError("fastloss.h does not define FASTLOSS_VERSION_MAJOR/MINOR/PATCH")
    return ".".join(m.group(1) for m in parts)

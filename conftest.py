"""Doctests of the package: the framework adapters are collected only where their framework
is installed (``import fastloss`` never needs them)."""

import importlib.util

collect_ignore = [f"fastloss/{name}.py" for name in ("torch", "jax")
                  if importlib.util.find_spec(name) is None]

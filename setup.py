"""Only here to hand cffi's build hook to setuptools; metadata lives in pyproject.toml."""

from setuptools import setup

setup(cffi_modules=["ffi/build_ffi.py:ffibuilder"])

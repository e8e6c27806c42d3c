"""Builds the optional C accelerators (the engine's, and the RESP sidecar's fast path); all other
metadata lives in pyproject.toml.

``optional=True``: on a machine without a C compiler the build warns and the package installs
without the accelerator, running the pure-Python engine, which behaves the same.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "stratacache.engine._accel",
            ["src/stratacache/engine/_accel.c"],
            optional=True,
            extra_compile_args=["-O2"],
        ),
        Extension(
            "stratacache.resp._fast",
            ["src/stratacache/resp/_fast.c"],
            optional=True,
            extra_compile_args=["-O2"],
        ),
    ]
)

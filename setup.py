"""Builds the optional C core. If it cannot be compiled, pyflight installs without it and
uses the pure-Python core (set PYFLIGHT_REQUIRE_C=1 to make that an error instead)."""

import os

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

STRICT = os.environ.get("PYFLIGHT_STRICT_BUILD") == "1"
REQUIRE_C = os.environ.get("PYFLIGHT_REQUIRE_C") == "1" or STRICT

flags = ["-std=c11", "-Wall", "-Wextra", "-Wno-unused-parameter", "-Wno-missing-field-initializers"]
if STRICT:
    flags.append("-Werror")


class OptionalBuildExt(build_ext):
    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:
            if REQUIRE_C:
                raise
            print(f"WARNING: pyflight C core not built ({exc}); the pure-Python core will be used")

    def build_extension(self, ext: Extension) -> None:
        try:
            super().build_extension(ext)
        except Exception as exc:
            if REQUIRE_C:
                raise
            print(f"WARNING: pyflight C core not built ({exc}); the pure-Python core will be used")


setup(
    ext_modules=[
        Extension(
            "pyflight._core",
            [
                "src/pyflight/core/c/_core.c",
                "src/pyflight/core/c/_core_asyncio.c",
                "src/pyflight/core/c/_core_lock.c",
                "src/pyflight/core/c/_core_annotate.c",
                "src/pyflight/core/c/_core_stackreader.c",
            ],
            depends=["src/pyflight/core/c/_core.h"],
            extra_compile_args=flags,
        ),
        # the analysis model builder's task step handlers (builder.py is the reference)
        Extension("pyflight.analysis._steps", ["src/pyflight/analysis/c/_steps.c"], extra_compile_args=flags),
        # the viewer's passes over every slice of a row (lod.py and api.py are the reference)
        Extension("pyflight.viewer._lod", ["src/pyflight/viewer/c/_lod.c"], extra_compile_args=flags),
    ],
    cmdclass={"build_ext": OptionalBuildExt},
)

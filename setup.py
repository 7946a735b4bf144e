"""Build switches for the compiled engine; all metadata lives in pyproject.toml.

Environment switches:
  METIS_DEBUG=1     -O0 -g, Cython line tracing off, asserts kept
  METIS_SANITIZE=1  AddressSanitizer + UndefinedBehaviorSanitizer (run Python
                    with LD_PRELOAD=$(gcc -print-file-name=libasan.so))
  METIS_ANNOTATE=1  write Cython's HTML annotation next to the sources
"""

import os

from Cython.Build import cythonize
from setuptools import Extension, setup


def _flag(name: str) -> bool:
    return os.environ.get(name, "") not in ("", "0")


compile_args = ["-std=gnu11", "-Wno-unused-function", "-Wno-unreachable-code"]
link_args: list[str] = []
if _flag("METIS_DEBUG"):
    compile_args += ["-O0", "-g3"]
else:
    compile_args += ["-O3"]
if _flag("METIS_SANITIZE"):
    san = ["-fsanitize=address,undefined", "-fno-omit-frame-pointer"]
    compile_args += [*san, "-g"]
    link_args += san

extensions = [
    Extension(
        "metis_shm._engine",
        ["cython_src/engine.pyx"],
        include_dirs=["cython_src/includes"],
        extra_compile_args=compile_args,
        extra_link_args=link_args,
    )
]

setup(
    ext_modules=cythonize(
        extensions,
        include_path=["cython_src"],
        annotate=_flag("METIS_ANNOTATE"),
        compiler_directives={"language_level": "3", "embedsignature": True},
    ),
)

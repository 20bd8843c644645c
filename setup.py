"""Build script. Pure-Python metadata lives in pyproject.toml; this file decides native builds.

csrc/ holds no sources yet (the native kernels are a separate issue), so there is nothing to
compile: the install says so and goes on. Importing the package never compiles anything.
"""

from pathlib import Path

from setuptools import setup

HERE = Path(__file__).resolve().parent


def native_sources() -> list[str]:
    return sorted(str(p.relative_to(HERE)) for p in (HERE / "csrc").glob("*.cpp"))


if not native_sources():
    print("ditflow-fast: csrc/ has no C++ sources yet; installing the pure-Python package only")

setup()

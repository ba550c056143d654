"""The custom-op build finds the ONNX Runtime headers, or fetches and verifies
them, from a clean build directory; and says how to fix a bad setting."""

import os
import shutil
import subprocess

import pytest

from conftest import REPO

CMAKE = shutil.which("cmake")
pytestmark = pytest.mark.skipif(CMAKE is None, reason="cmake is not installed")


def configure(build_dir, **env):
    environ = {k: v for k, v in os.environ.items() if k != "ONNXRUNTIME_INCLUDE_DIR"}
    environ.update(env)
    return subprocess.run([CMAKE, "-S", str(REPO / "custom_ops"), "-B", str(build_dir)], env=environ,
                          capture_output=True, text=True, timeout=300)


def test_clean_configure_finds_or_fetches_headers(tmp_path):
    proc = configure(tmp_path / "build")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "onnxruntime headers:" in proc.stdout
    line = next(l for l in proc.stdout.splitlines() if "onnxruntime headers:" in l and "fetching" not in l)
    assert "(system)" in line or "(fetched, SHA-256 verified)" in line
    if "fetched" in line:
        headers = tmp_path / "build" / "ort-headers" / "usr" / "include" / "onnxruntime"
        assert (headers / "onnxruntime_cxx_api.h").is_file()
        assert not (tmp_path / "build" / "ort-apt").exists()  # the private apt state is removed
        # An explicit ONNXRUNTIME_INCLUDE_DIR wins over everything else.
        proc = configure(tmp_path / "build2", ONNXRUNTIME_INCLUDE_DIR=str(headers))
        assert proc.returncode == 0 and "(ONNXRUNTIME_INCLUDE_DIR)" in proc.stdout


def test_bad_include_dir_says_how_to_fix(tmp_path):
    proc = configure(tmp_path / "build", ONNXRUNTIME_INCLUDE_DIR=str(tmp_path / "nowhere"))
    assert proc.returncode != 0
    assert "ONNXRUNTIME_INCLUDE_DIR" in proc.stderr and "onnxruntime_cxx_api.h" in proc.stderr


CXX = shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")
NM = shutil.which("nm")


def _isa_flags(isa: str) -> list[str]:
    """The options CMakeLists.txt gives the *_{isa}.cc translation units."""
    import re

    text = (REPO / "custom_ops" / "CMakeLists.txt").read_text()
    m = re.search(r"set_property\(SOURCE \$\{ISA_" + isa.upper() + r"_SOURCES\} APPEND PROPERTY COMPILE_OPTIONS\s+([^)]*)\)",
                  text)
    assert m, f"no COMPILE_OPTIONS for the {isa} sources in CMakeLists.txt"
    return m.group(1).split()


@pytest.mark.skipif(CXX is None or NM is None, reason="needs a C++ compiler and nm")
@pytest.mark.parametrize("isa", ["avx512", "avx2"])
def test_isa_units_define_no_shared_symbols(isa, tmp_path):
    """An ISA translation unit must not define a weak (COMDAT) or unique symbol: the
    linker keeps one copy of each for the whole library, so an inline function or
    template instantiated there (std::vector, std::min, a kernel template outside an
    anonymous namespace) could replace the generic build's copy and run AVX-512 code on
    an AVX2 CPU. Compiled here with the build's ISA flags at -O1 (faster, and it keeps more
    out of line than -O3; the kernels need no ORT header)."""
    import platform

    if platform.machine().lower() not in ("x86_64", "amd64"):
        pytest.skip("the ISA flags are x86 only")
    flags = ["-std=c++17", "-O1", "-fPIC", "-fvisibility=hidden", "-ffp-contract=fast", *_isa_flags(isa)]
    sources = sorted((REPO / "custom_ops" / "src").glob(f"*_{isa}.cc"))
    assert len(sources) >= 4
    bad = {}
    for src in sources:
        obj = tmp_path / (src.stem + ".o")
        proc = subprocess.run([CXX, *flags, "-I", str(src.parent), "-c", str(src), "-o", str(obj)],
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr
        symbols = subprocess.run([NM, "-C", str(obj)], capture_output=True, text=True, check=True).stdout
        shared = [line for line in symbols.splitlines() if len(line.split()) >= 3 and line.split()[1] in "WVu"]
        if shared:
            bad[src.name] = shared
    assert not bad, bad

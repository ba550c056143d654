"""Running Python against the AddressSanitizer + UBSan build of the library
(tests/fuzz/build_asan.sh).

The interpreter is not instrumented, so gcc's ASan runtime must be the first
library loaded (LD_PRELOAD); the library itself is chosen with the existing
ONNXCOMPRESS_LIBRARY override (onnxcompress.get_library_path), so nothing of
the installed package changes. Leak checking is off (the interpreter never
frees everything); a huge allocation fails (returns NULL / std::bad_alloc)
instead of aborting, as it would under a real memory limit, so the fuzzer can
tell who asked for it; undefined behaviour aborts.

    eval "$(python -m tests.fuzz.sanitizer --env build/asan/libonnxcompress_ops.so)"
    python -m pytest tests/test_cluspa_op.py
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path


def runtime_library() -> str:
    """Path of the compiler's shared ASan runtime (libasan.so.N)."""
    for compiler in (os.environ.get("CXX", ""), "g++", "gcc"):
        if not compiler:
            continue
        try:
            out = subprocess.run([compiler, "-print-file-name=libasan.so"], capture_output=True, text=True,
                                 timeout=30).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            continue
        if out and os.path.isabs(out) and Path(out).exists():
            return str(Path(out).resolve())
    raise RuntimeError("libasan.so not found: install gcc's libasan (e.g. apt-get install libasan8)")


def cxx_runtime_library() -> str | None:
    """The C++ runtime the sanitized library links (libstdc++), preloaded too: ASan intercepts
    __cxa_throw only if libstdc++ is loaded when it starts ("CHECK failed: real___cxa_throw")."""
    for compiler in (os.environ.get("CXX", ""), "g++"):
        if not compiler:
            continue
        try:
            out = subprocess.run([compiler, "-print-file-name=libstdc++.so"], capture_output=True, text=True,
                                 timeout=30).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            continue
        if out and os.path.isabs(out) and Path(out).exists():
            return str(Path(out).resolve())
    return None


def asan_options(max_allocation_mb: int = 1024, symbolize: bool = True) -> str:
    return ":".join([f"symbolize={int(symbolize)}",
        "detect_leaks=0", "abort_on_error=1", "allocator_may_return_null=1",
        f"max_allocation_size_mb={max_allocation_mb}", "disable_coredump=1", "handle_abort=1",
        "detect_odr_violation=0", "quarantine_size_mb=64", "malloc_context_size=16", "verify_asan_link_order=0",
    ])


def environment(library: str, base: dict | None = None, max_allocation_mb: int = 1024,
                symbolize: bool = True) -> dict:
    """`base` (default os.environ) plus what a process needs to load the sanitized `library`.
    symbolize=False: reports give module+offset frames (fast; the fuzz campaign symbolizes the
    frame it names with addr2line, a replay symbolizes everything)."""
    env = dict(os.environ if base is None else base)
    env["LD_PRELOAD"] = ":".join(p for p in (runtime_library(), cxx_runtime_library()) if p)
    env["ASAN_OPTIONS"] = asan_options(max_allocation_mb, symbolize)
    env["UBSAN_OPTIONS"] = f"print_stacktrace=1:halt_on_error=1:abort_on_error=1:symbolize={int(symbolize)}"
    env["ONNXCOMPRESS_LIBRARY"] = str(Path(library).resolve())
    return env


def main() -> None:
    if len(sys.argv) != 3 or sys.argv[1] != "--env":
        raise SystemExit("usage: python -m tests.fuzz.sanitizer --env LIBRARY   (prints shell exports)")
    env = environment(sys.argv[2], base={})
    for key in ("LD_PRELOAD", "ASAN_OPTIONS", "UBSAN_OPTIONS", "ONNXCOMPRESS_LIBRARY"):
        print(f"export {key}={shlex.quote(env[key])}")


if __name__ == "__main__":
    main()

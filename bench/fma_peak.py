"""The FMA peak of one core, AVX-512 and AVX2 (float32): what a kernel's realisation is measured against.

Compiles a small C loop of 12 independent fused multiply-add chains per instruction set with
the system C compiler (gcc or clang, -O2, per-function target attributes) and runs it on one
core; prints GFMA/s (fused multiply-adds of float32 lanes per second) per run. An instruction
set the CPU lacks is skipped.

    python bench/fma_peak.py
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

SOURCE = r"""
#include <immintrin.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec * 1e-9; }
#define CHAINS 12
__attribute__((target("avx512f"))) static double peak512(long n) {
  __m512 a[CHAINS]; const __m512 b = _mm512_set1_ps(1.0000001f), c = _mm512_set1_ps(1e-7f);
  for (int i = 0; i < CHAINS; ++i) a[i] = _mm512_set1_ps((float)i);
  double t = now();
  for (long k = 0; k < n; ++k) {
#pragma GCC unroll 12
    for (int i = 0; i < CHAINS; ++i) a[i] = _mm512_fmadd_ps(a[i], b, c);  /* unrolled: a[] stays in registers */
  }
  t = now() - t;
  __m512 s = a[0]; for (int i = 1; i < CHAINS; ++i) s = _mm512_add_ps(s, a[i]);
  float out[16]; _mm512_storeu_ps(out, s); if (out[0] == 42.0f) puts("");
  return n * (double)CHAINS * 16 / t / 1e9;
}
__attribute__((target("avx2,fma"))) static double peak256(long n) {
  __m256 a[CHAINS]; const __m256 b = _mm256_set1_ps(1.0000001f), c = _mm256_set1_ps(1e-7f);
  for (int i = 0; i < CHAINS; ++i) a[i] = _mm256_set1_ps((float)i);
  double t = now();
  for (long k = 0; k < n; ++k) {
#pragma GCC unroll 12
    for (int i = 0; i < CHAINS; ++i) a[i] = _mm256_fmadd_ps(a[i], b, c);
  }
  t = now() - t;
  __m256 s = a[0]; for (int i = 1; i < CHAINS; ++i) s = _mm256_add_ps(s, a[i]);
  float out[8]; _mm256_storeu_ps(out, s); if (out[0] == 42.0f) puts("");
  return n * (double)CHAINS * 8 / t / 1e9;
}
int main(int argc, char** argv) {
  const int avx512 = __builtin_cpu_supports("avx512f"), avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  for (int r = 0; r < 3; ++r) {
    if (avx512) printf("avx512 %.1f\n", peak512(200000000));
    if (avx2) printf("avx2 %.1f\n", peak256(200000000));
  }
  return 0;
}
"""


def main() -> int:
    cc = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if cc is None:
        print("no C compiler found (cc, gcc or clang)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        src, exe = Path(tmp) / "fma.c", Path(tmp) / "fma"
        src.write_text(SOURCE)
        built = subprocess.run([cc, "-O2", str(src), "-o", str(exe)], capture_output=True, text=True)
        if built.returncode != 0:
            print(built.stderr, file=sys.stderr)
            return 2
        out = subprocess.run([str(exe)], capture_output=True, text=True, check=True).stdout
    runs: dict[str, list[float]] = {}
    for isa, value in (line.split() for line in out.strip().splitlines()):
        runs.setdefault(isa, []).append(float(value))
    try:
        model = next(l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name"))
    except (OSError, StopIteration):
        model = "unknown CPU"
    print(f"# {model}, one core")
    print("isa     GFMA/s per run (float32 lanes)     best")
    for isa, values in runs.items():
        print(f"{isa:7s} {' '.join(f'{v:7.1f}' for v in values):34s} {max(values):6.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

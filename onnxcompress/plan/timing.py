"""Whole-model latency of a candidate against the original, cached on disk.

A layer is timed in the model, not alone: the model with only that layer
replaced against the original, runs interleaved, medians (our ops change the
layout choices ONNX Runtime makes around them, so a layer faster alone can
slow the model). The cache is a JSON file keyed by the original model's
hash, the layer, the candidate, the thread count, the CPU, the ONNX
Runtime version and the build of our custom-op library (a rebuilt kernel
times anew), so that planning twice on a noisy machine plans the same.
The fitted values of a candidate are not part of the key: its time is taken
to depend on the technique and setting, not on the calibration data.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import platform
import tempfile
from pathlib import Path

import onnx

DEFAULT_RUNS = 30
DEFAULT_WARMUP = 5


def default_cache_path() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "onnxcompress" / "layer_timings.json"


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


@functools.lru_cache(maxsize=None)
def _file_digest(path: str, size: int, mtime_ns: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:12]


def library_digest() -> str:
    """A digest of the custom-op library this process loads ("none" where there is none)."""
    from .._runtime import get_library_path
    from ..errors import OnnxCompressError

    try:
        path = get_library_path()
        st = os.stat(path)
    except (OnnxCompressError, OSError):
        return "none"
    return _file_digest(path, st.st_size, st.st_mtime_ns)


def model_digest(model: onnx.ModelProto) -> str:
    return hashlib.sha256(model.SerializeToString(deterministic=True)).hexdigest()[:20]


class TimingCache:
    """{key: {"reference_ms", "candidate_ms"}} in a JSON file (None: in memory only)."""

    def __init__(self, path: str | os.PathLike | None):
        self.path = Path(path) if path else None
        self.entries: dict[str, dict] = {}
        self.hits = 0
        self.misses = 0
        if self.path and self.path.is_file():
            try:
                self.entries = json.loads(self.path.read_text())
            except (OSError, ValueError):
                self.entries = {}

    def get(self, key: str):
        value = self.entries.get(key)
        if value is not None:
            self.hits += 1
        return value

    def put(self, key: str, value: dict) -> None:
        self.misses += 1
        self.entries[key] = value

    def save(self) -> None:
        if not self.path:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        merged = {}
        if self.path.is_file():  # another run may have added entries meanwhile
            try:
                merged = json.loads(self.path.read_text())
            except (OSError, ValueError):
                merged = {}
        merged.update(self.entries)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".timings-", suffix=".json")
        with os.fdopen(fd, "w") as f:
            json.dump(merged, f, indent=1, sort_keys=True)
        os.replace(tmp, self.path)


class ModelTimer:
    """Times models against `reference` on `feed` at `threads`, interleaved, medians.

    time(candidate, key) -> (reference_ms, candidate_ms); with a key, cached. Without a key (the
    whole-plan decisions: the stage, the guarantee, the back-offs) the runs are at least
    `final_seconds` of interleaved pairs (layer_timing.time_models)."""

    def __init__(self, reference: onnx.ModelProto, feed: dict, threads: int = 1, cache: TimingCache | None = None,
                 runs: int = DEFAULT_RUNS, warmup: int = DEFAULT_WARMUP, final_seconds: float = 0.0):
        import onnxruntime

        self.reference = reference
        self.feed = feed
        self.threads = threads
        self.cache = cache or TimingCache(None)
        self.runs, self.warmup = runs, warmup
        self.final_seconds = final_seconds
        self.prefix = (f"{model_digest(reference)}|t{threads}|{cpu_name()}|ort{onnxruntime.__version__}"
                       f"|lib{library_digest()}")
        self.measured = 0

    def rebased(self, reference: onnx.ModelProto) -> "ModelTimer":
        """The same timer (feed, threads, runs, cache) against another reference model."""
        return ModelTimer(reference, self.feed, threads=self.threads, cache=self.cache, runs=self.runs,
                          warmup=self.warmup, final_seconds=self.final_seconds)

    def time(self, candidate: onnx.ModelProto, key: str | None = None, runs: int | None = None,
             threads: int | None = None) -> tuple[float, float]:
        from ..layer_timing import time_models

        threads = self.threads if threads is None else threads
        full = f"{self.prefix}|{key}" if key is not None and threads == self.threads else None
        if full is not None:
            hit = self.cache.get(full)
            if hit is not None:
                return hit["reference_ms"], hit["candidate_ms"]
        self.measured += 1
        t = time_models(self.reference, candidate, self.feed, threads=threads, runs=runs or self.runs,
                        warmup=self.warmup, min_seconds=self.final_seconds if key is None else 0.0)
        if full is not None:
            self.cache.put(full, {"reference_ms": round(t.reference_ms, 5), "candidate_ms": round(t.candidate_ms, 5)})
        return t.reference_ms, t.candidate_ms


class RelativeTimer:
    """Times against `reference` with a timer that knows another reference (an injected one,
    without `rebased`): (its time of `reference`, its time of the candidate)."""

    def __init__(self, timer, reference: onnx.ModelProto):
        self.timer, self.reference = timer, reference
        self.threads, self.runs, self.cache = timer.threads, timer.runs, timer.cache

    def time(self, candidate, key=None, runs=None, threads=None):
        base = self.timer.time(self.reference, key=None if key is None else f"base|{key}", runs=runs, threads=threads)
        cand = self.timer.time(candidate, key=key, runs=runs, threads=threads)
        return base[1], cand[1]


def rebased(timer, reference: onnx.ModelProto):
    """`timer` against `reference` instead of its own."""
    return timer.rebased(reference) if hasattr(timer, "rebased") else RelativeTimer(timer, reference)

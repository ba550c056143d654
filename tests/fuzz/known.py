"""Defect classes the fuzzer has found that are not fixed on this branch yet.

The time-boxed CI run (tests/fuzz/test_fuzz.py, .ci/run) fails on any crash,
hang or over-limit case, except those matching one of these classes: then the
test is an expected failure that names them. Each entry is removed when its
fix lands, so the list only holds real, open defects, each with the replayable case it was
found with.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class KnownDefect:
    name: str
    outcome: str           # crash, hang or over-limit
    targets: tuple         # op names and/or "cli"
    pattern: str           # regex searched in the case's signature and detail
    reason: str

    def matches(self, record: dict) -> bool:
        target = record.get("op") or record["target"]
        text = f"{record.get('signature', '')} {record.get('detail', '')} {' '.join(record.get('log', []))}"
        return record["outcome"] == self.outcome and target in self.targets and re.search(self.pattern, text) is not None


ALL_OPS = ("SparseInputConv", "BasisConv", "ClusteredSparseConv", "LutConv", "QLinearBasisMaps", "cli")

# Found and fixed (tests/test_fuzz_regressions.py has a test for each): ClusteredSparseConv
# buffers sized from weight_shape (over-limit, fixed on h-kernels), the heap over-read of
# ORT's ShapeInferContext::GetAttrString (every string attribute, ASan), raw tracebacks of the
# CLI on graph cycles, on models without graph inputs with --calib and on NaN Conv weights with
# tabconv, and penni's SVD that never returned on inf Conv weights.
KNOWN: list[KnownDefect] = []


def classify(records: list[dict]) -> tuple[list[dict], dict[str, list[dict]]]:
    """(failures of no known class, {known class name: its failures})."""
    unknown, known = [], {}
    for r in records:
        if r["outcome"] not in ("crash", "hang", "over-limit", "harness-error"):
            continue
        match = next((k for k in KNOWN if k.matches(r)), None)
        if match is None:
            unknown.append(r)
        else:
            known.setdefault(match.name, []).append(r)
    return unknown, known

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


ALL_OPS = ("SparseInputConv", "BasisConv", "ClusteredSparseConv", "LutConv", "cli")

KNOWN: list[KnownDefect] = [
    KnownDefect(
        "shape-inference-string-overread", "crash", ALL_OPS, r"conv_geometry\.cc:60",
        "ASan heap-buffer-overflow (read) in ORT's C++ header Ort::ShapeInferContext::GetAttrString, called "
        "from conv_geometry.cc:60 for every string attribute (auto_pad, activation) during ORT's shape "
        "inference: ReadOpAttr returns the bytes without a terminating NUL and the header builds the "
        "std::string with strlen; first found: op-BasisConv seed 1 index 0 (a valid node)"),
    KnownDefect(
        "clustered-weight-shape-allocation", "over-limit", ("ClusteredSparseConv",),
        r"peak \d+ MiB.*weight_shape",
        "ClusteredSparseConv sizes its creation-time buffers from the weight_shape attribute, not from the "
        "initializers present (issue 13): a node of a few hundred bytes adds ~500 MiB; "
        "op-ClusteredSparseConv seed 1 index 59"),
    KnownDefect(
        "cli-graph-cycle-traceback", "crash", ("cli",), r"OnnxGraphSurgeonException",
        "a model whose graph has a cycle (or duplicate tensor names) reaches onnx-graphsurgeon's toposort in "
        "a pass (eliminate_dead_code.py, fold_batchnorm.py) and ends in a raw traceback; cli seed 1 index 1"),
    KnownDefect(
        "cli-tabconv-nan-activations", "crash", ("cli",), r"TypeError at fitting/tabconv\.py",
        "--method tabconv on a model with NaN Conv weights: the tree-encoder fit gets NaN activations, finds "
        "no split and indexes None (fitting/tabconv.py:255), a raw TypeError; cli seed 2 index 88"),
    KnownDefect(
        "cli-calib-no-graph-inputs", "crash", ("cli",), r"IndexError at inputs\.py",
        "optimize --calib on a model without graph inputs: calibration_feeds indexes inputs[0] "
        "(inputs.py:128), a raw IndexError; cli seed 2 index 161"),
    KnownDefect(
        "cli-penni-svd-hang-on-inf", "hang", ("cli",), r"hang in kernel_basis",
        "--method penni on a model with inf Conv weights: numpy's SVD (LAPACK) of a matrix holding inf does "
        "not return (fitting/penni.py:112 kernel_basis); cli seed 2 index 110"),
]


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

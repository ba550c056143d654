"""Saving models ORT loads: IR version, opset import, external data, atomic writes."""

import numpy as np
import onnx
import pytest

import modelgen
from onnxcompress import DOMAIN, InferenceSession
from onnxcompress.errors import OnnxCompressError
from onnxcompress.model_io import has_external_data, load_model, save_model
from onnxcompress.optimizer import optimize


def test_save_sets_ir_version_and_domain(tmp_path):
    model = modelgen.small_resnet(seed=3)
    model.ir_version = 14  # what onnx.helper would write by default; ORT 1.31 refuses it
    out, _ = optimize(model, "falcon")
    path = save_model(out, tmp_path / "m.onnx")
    saved = onnx.load(str(path))
    assert saved.ir_version == 10
    opsets = {o.domain: o.version for o in saved.opset_import}
    assert opsets[DOMAIN] == 1 and opsets[""] == 17
    InferenceSession(str(path)).run(None, {"input": np.zeros((1, 3, 16, 16), np.float32)})
    assert [p.name for p in tmp_path.iterdir()] == ["m.onnx"]


def test_external_data_round_trip(tmp_path):
    model = modelgen.small_resnet(seed=4, channels=32)
    src = tmp_path / "src.onnx"
    onnx.save_model(onnx.ModelProto.FromString(model.SerializeToString()), str(src), save_as_external_data=True, location="src.onnx.data", size_threshold=0)
    loaded = load_model(src)
    out, _ = optimize(loaded, "falcon")
    assert has_external_data(src)
    dst = save_model(out, tmp_path / "dst.onnx", input_path=src, external_data=True)
    assert (tmp_path / "dst.onnx.data").exists()
    x = np.random.default_rng(0).standard_normal((1, 3, 16, 16)).astype(np.float32)
    ref = InferenceSession(model).run(None, {"input": x})[0]
    got = InferenceSession(str(dst)).run(None, {"input": x})[0]
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)
    assert not list(tmp_path.glob(".*"))


def test_refuses_to_overwrite_input(tmp_path):
    path = tmp_path / "m.onnx"
    onnx.save(modelgen.small_resnet(), str(path))
    with pytest.raises(OnnxCompressError, match="is the input"):
        save_model(onnx.load(str(path)), path, input_path=path)


def _with_external(tmp_path, location, name="m.onnx"):
    """The small model with its first big initializer's data at `location` (crafted)."""
    model = modelgen.small_resnet(seed=5, channels=16)
    tensor = max(model.graph.initializer, key=lambda t: len(t.raw_data))
    tensor.ClearField("raw_data")
    tensor.data_location = onnx.TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", "64")):
        e = tensor.external_data.add()
        e.key, e.value = key, value
    path = tmp_path / name
    path.write_bytes(model.SerializeToString())
    return path


@pytest.mark.parametrize("where", ["parent", "absolute", "link_out", "deep_parent", "missing"])
def test_external_data_outside_the_model_folder_is_refused(where, tmp_path):
    secret = tmp_path / "secret.bin"
    secret.write_bytes(b"\x01" * 4096)
    folder = tmp_path / "models"
    folder.mkdir()
    location = {"parent": "../secret.bin", "absolute": str(secret), "deep_parent": "sub/../../secret.bin",
                "link_out": "link.bin", "missing": "nothere.bin"}[where]
    if where == "link_out":
        (folder / "link.bin").symlink_to(secret)
    path = _with_external(folder, location)
    with pytest.raises(OnnxCompressError) as info:
        load_model(path)
    message = str(info.value)
    assert location in message
    assert ("no such file" in message) if where == "missing" else ("folder" in message)


def test_cli_refuses_external_data_outside(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    (tmp_path / "secret.bin").write_bytes(b"\x01" * 4096)
    folder = tmp_path / "models"
    folder.mkdir()
    path = _with_external(folder, "../secret.bin")
    before = path.read_bytes()
    out = folder / "out.onnx"
    for args in (["inspect", path], ["optimize", path, "-o", out]):
        proc = subprocess.run([sys.executable, "-m", "onnxcompress.cli", *map(str, args)], capture_output=True,
                              text=True, cwd=Path(__file__).resolve().parents[1], timeout=300)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
        errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and "outside the model's folder" in errors[0]
    assert not out.exists() and path.read_bytes() == before


def test_automatic_external_data_decided_before_serialising(tmp_path, monkeypatch):
    """The size is estimated from the tensors (a real model over 2 GB: bench/bench_large_model.py);
    with the limit lowered the automatic path writes external data, leaves the given model as it
    was, and the result runs."""
    from onnxcompress import model_io

    model = modelgen.small_resnet(seed=6, channels=32)
    assert model_io.estimated_size(model) >= sum(len(t.raw_data) for t in model.graph.initializer)
    before = model.SerializeToString()
    monkeypatch.setattr(model_io, "_PROTOBUF_LIMIT", model_io.estimated_size(model) - 1)
    monkeypatch.setattr(model_io, "_MARGIN", 0)
    path = save_model(model, tmp_path / "big.onnx")
    assert model.SerializeToString() == before
    assert has_external_data(path) and (tmp_path / "big.onnx.data").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.onnx", "big.onnx.data"]
    assert path.stat().st_size < 16384
    x = np.random.default_rng(0).standard_normal((1, 3, 16, 16)).astype(np.float32)
    ref = InferenceSession(model).run(None, {"input": x})[0]
    np.testing.assert_array_equal(InferenceSession(str(path)).run(None, {"input": x})[0], ref)
    np.testing.assert_array_equal(InferenceSession(load_model(path)).run(None, {"input": x})[0], ref)


def test_failed_external_write_leaves_nothing(tmp_path, monkeypatch):
    from onnxcompress import model_io

    model = modelgen.small_resnet(seed=6, channels=32)
    before = model.SerializeToString()
    real = model_io._write_with_external_data

    def failing(model, model_file, data_file, data_name):
        real(model, model_file, data_file, data_name)
        raise OSError("disk full")

    monkeypatch.setattr(model_io, "_write_with_external_data", failing)
    with pytest.raises(OSError, match="disk full"):
        save_model(model, tmp_path / "m.onnx", external_data=True)
    assert list(tmp_path.iterdir()) == []
    assert model.SerializeToString() == before

"""Reading and writing models: clear errors on bad input, IR versions ONNX Runtime
accepts, our opset import, external data, and atomic writes that never leave a
partial file or overwrite the input."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import onnx

from . import DOMAIN
from .errors import OnnxCompressError

# onnxruntime >= 1.17 loads IR 10; newer runtimes load more, older tools less.
MAX_IR_VERSION = 10
OPSET_VERSION = 1
_PROTOBUF_LIMIT = 2**31 - 1


def load_model(path: str | os.PathLike) -> onnx.ModelProto:
    """Loads an ONNX model with its external data, or raises OnnxCompressError.

    External data is only read from files inside the model's folder: a location that is
    absolute, climbs out with '..', or resolves (through links) outside is refused before
    anything is read, and the data is then loaded by onnx's own checked loader."""
    path = Path(path)
    if not path.exists():
        raise OnnxCompressError(f"{path}: no such file")
    if not path.is_file():
        raise OnnxCompressError(f"{path}: not a file")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf raises assorted errors on garbage
        raise OnnxCompressError(f"{path}: not a readable ONNX model ({exc.__class__.__name__}: {exc})") from None
    if not model.HasField("graph") or len(model.graph.node) == 0:
        raise OnnxCompressError(f"{path}: not an ONNX model (no graph nodes)")
    check_graph_structure(model, str(path))
    external = [t for t in _all_tensors(model) if t.data_location == onnx.TensorProto.EXTERNAL]
    if external:
        base = path.resolve().parent
        for tensor in external:
            _check_location(tensor, base, path)
        try:
            from onnx.external_data_helper import load_external_data_for_model

            load_external_data_for_model(model, str(base))
        except Exception as exc:
            raise OnnxCompressError(f"{path}: cannot read its external data ({exc.__class__.__name__}: {exc})") \
                from None
    return model


def check_graph_structure(model: onnx.ModelProto, what: str = "the model") -> None:
    """Refuses a graph that no order of its nodes can run: one tensor produced by two nodes, or a
    cycle (a node that needs, through other nodes, its own output). ONNX Runtime refuses both;
    the passes would fail in their topological sort."""
    producer: dict[str, int] = {}
    nodes = model.graph.node
    for i, node in enumerate(nodes):
        for out in node.output:
            if not out:
                continue
            if out in producer:
                first = nodes[producer[out]]
                raise OnnxCompressError(f"{what}: tensor '{out}' is the output of two nodes ({first.op_type} "
                                        f"'{first.name}' and {node.op_type} '{node.name}'); each tensor must have "
                                        f"one producer")
            producer[out] = i
    users: dict[int, list[int]] = {}
    waiting = [0] * len(nodes)
    for i, node in enumerate(nodes):
        needs = {producer[x] for x in node.input if x in producer}
        waiting[i] = len(needs)
        for j in needs:
            users.setdefault(j, []).append(i)
    ready = [i for i, w in enumerate(waiting) if w == 0]
    done = 0
    while ready:
        i = ready.pop()
        done += 1
        for u in users.get(i, ()):
            waiting[u] -= 1
            if waiting[u] == 0:
                ready.append(u)
    if done < len(nodes):
        node = nodes[next(i for i, w in enumerate(waiting) if w > 0)]
        raise OnnxCompressError(f"{what}: the graph has a cycle ({len(nodes) - done} node(s) depend on their own "
                                f"outputs, e.g. {node.op_type} '{node.name}'); an ONNX graph must be acyclic")


def _check_location(tensor: onnx.TensorProto, base: Path, path: Path) -> None:
    info = {e.key: e.value for e in tensor.external_data}
    location = info.get("location", "")
    where = f"{path}: tensor '{tensor.name}' keeps its data at '{location}'"
    if not location:
        raise OnnxCompressError(f"{where}: no location given")
    rel = Path(location)
    if rel.is_absolute() or location.startswith(("/", "\\")) or (len(location) > 1 and location[1] == ":"):
        raise OnnxCompressError(f"{where}, an absolute path; external data must lie in the model's folder")
    if ".." in rel.parts or ".." in Path(location.replace("\\", "/")).parts:
        raise OnnxCompressError(f"{where}, outside the model's folder ('..'); external data must lie in the "
                                f"model's folder")
    target = (base / rel).resolve()
    if base != target and base not in target.parents:
        raise OnnxCompressError(f"{where}, which resolves to {target}, outside the model's folder")
    if not target.is_file():
        raise OnnxCompressError(f"{where}: no such file next to the model")
    for key in ("offset", "length"):
        if key in info and (not info[key].isdigit()):
            raise OnnxCompressError(f"{where}: bad {key} '{info[key]}'")
    size = target.stat().st_size
    offset, length = int(info.get("offset", 0) or 0), info.get("length")
    if offset > size or (length is not None and offset + int(length) > size):
        raise OnnxCompressError(f"{where}: offset {offset} and length {length} run past the end of the file "
                                f"({size} bytes)")


def _all_tensors(model: onnx.ModelProto, sparse: bool = True):
    """Every TensorProto of the model: initializers and tensor attributes, subgraphs included
    (and the parts of sparse initializers unless sparse=False)."""
    def graph_tensors(graph):
        yield from graph.initializer
        for node in graph.node:
            for attr in node.attribute:
                if attr.HasField("t"):
                    yield attr.t
                yield from attr.tensors
                if attr.HasField("g"):
                    yield from graph_tensors(attr.g)
                for g in attr.graphs:
                    yield from graph_tensors(g)
        if sparse:
            for st in graph.sparse_initializer:
                yield st.values
                yield st.indices

    yield from graph_tensors(model.graph)


_ITEMSIZE = {onnx.TensorProto.FLOAT: 4, onnx.TensorProto.DOUBLE: 8, onnx.TensorProto.INT64: 8,
             onnx.TensorProto.INT32: 4, onnx.TensorProto.UINT64: 8, onnx.TensorProto.FLOAT16: 2,
             onnx.TensorProto.BFLOAT16: 2}


def _tensor_bytes(t: onnx.TensorProto) -> int:
    """Bytes of a tensor's data in memory, without serialising it."""
    if t.HasField("raw_data"):
        return len(t.raw_data)
    count = len(t.float_data) + len(t.int32_data) + len(t.int64_data) + len(t.double_data) + len(t.uint64_data)
    return count * _ITEMSIZE.get(t.data_type, 8) + sum(len(v) for v in t.string_data)


def estimated_size(model: onnx.ModelProto) -> int:
    """An upper estimate of the serialised size from the tensors' data (the graph itself is small);
    decides external data before anything is serialised."""
    return sum(_tensor_bytes(t) for t in _all_tensors(model)) + 256 * (len(model.graph.node) + 16)


def _uses_external_data(model: onnx.ModelProto) -> bool:
    return any(
        t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer
    )


def has_external_data(path: str | os.PathLike) -> bool:
    """Whether the model file at `path` keeps its tensors in external files."""
    try:
        return _uses_external_data(onnx.load(str(path), load_external_data=False))
    except Exception:
        return False


def prepare_for_runtime(model: onnx.ModelProto) -> onnx.ModelProto:
    """Sets an IR version ONNX Runtime accepts and imports our domain if used (in place)."""
    model.ir_version = min(model.ir_version or MAX_IR_VERSION, MAX_IR_VERSION)
    used = {n.domain for n in model.graph.node}
    imported = {o.domain for o in model.opset_import}
    if DOMAIN in used and DOMAIN not in imported:
        model.opset_import.append(onnx.helper.make_opsetid(DOMAIN, OPSET_VERSION))
    return model


def save_model(
    model: onnx.ModelProto,
    path: str | os.PathLike,
    *,
    input_path: str | os.PathLike | None = None,
    external_data: bool | None = None,
) -> Path:
    """Writes `model` to `path` atomically: temporary files beside it, then renamed, never
    a partial output (and `model` is left as it was given).

    external_data: None chooses it for models over 2 GB (estimated from the tensors, before
    anything is serialised); the tensors of 1 KiB and more then go to `<name>.data` beside
    the model. Refuses to overwrite `input_path`.
    """
    path = Path(path)
    if input_path is not None:
        src = Path(input_path)
        if path.resolve() == src.resolve() or (path.exists() and src.exists() and path.samefile(src)):
            raise OnnxCompressError(f"output {path} is the input model; choose another output path")
    if path.exists() and path.is_dir():
        raise OnnxCompressError(f"output {path} is a directory")
    if not path.parent.exists():
        raise OnnxCompressError(f"output directory {path.parent} does not exist")
    if external_data is None:
        external_data = estimated_size(model) > _PROTOBUF_LIMIT - _MARGIN or _uses_external_data(model)
    if any(t.data_location == onnx.TensorProto.EXTERNAL for t in _all_tensors(model)):
        raise OnnxCompressError("the model refers to external data that is not loaded; load it with "
                                "onnxcompress.model_io.load_model first")

    # the runtime fixes (IR version, our opset import) are made on the model and undone after
    saved_ir, saved_opsets = model.ir_version, list(model.opset_import)
    prepare_for_runtime(model)
    data_name = path.name + ".data"
    tmp = tmp_data = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        _usual_mode(tmp)
        if external_data:
            fd, tmp_data = tempfile.mkstemp(prefix=f".{data_name}.", suffix=".tmp", dir=path.parent)
            os.close(fd)
            _usual_mode(tmp_data)
            _write_with_external_data(model, Path(tmp), Path(tmp_data), data_name)
            os.replace(tmp_data, path.parent / data_name)  # the data first: the model never names a missing file
            tmp_data = None
        else:
            with open(tmp, "wb") as fh:
                fh.write(model.SerializeToString())
        os.replace(tmp, path)
        tmp = None
    finally:
        model.ir_version = saved_ir
        del model.opset_import[:]
        model.opset_import.extend(saved_opsets)
        for leftover in (tmp, tmp_data):
            if leftover is not None and Path(leftover).exists():
                Path(leftover).unlink()
    return path


def _usual_mode(path) -> None:
    """mkstemp makes files private (0600); a model file gets the mode any new file would (umask)."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


_MARGIN = 64 << 20  # room for the graph beside the tensors
_EXTERNAL_THRESHOLD = 1024


def _write_with_external_data(model: onnx.ModelProto, model_file: Path, data_file: Path, data_name: str) -> None:
    """Streams every tensor of >= 1 KiB into `data_file` (4 KiB aligned, one at a time), writes the
    model pointing at `data_name` to `model_file`, then puts the tensors' data back into `model`
    from the file: memory stays at the model plus one tensor, and the caller's model is unchanged."""
    from onnx import numpy_helper

    moved: list[tuple[onnx.TensorProto, int, int, bool]] = []
    try:
        with open(data_file, "wb") as fh:
            for t in _all_tensors(model, sparse=False):
                if _tensor_bytes(t) < _EXTERNAL_THRESHOLD or t.data_type in (onnx.TensorProto.STRING,
                                                                               onnx.TensorProto.UNDEFINED):
                    continue
                if not t.HasField("raw_data"):  # typed fields: the same values as raw bytes
                    raw = numpy_helper.to_array(t).tobytes()
                    for field in ("float_data", "int32_data", "int64_data", "double_data", "uint64_data"):
                        t.ClearField(field)
                    t.raw_data = raw
                    del raw
                had_location = t.HasField("data_location")
                offset = fh.tell()
                if offset % 4096:
                    fh.write(b"\0" * (4096 - offset % 4096))
                    offset = fh.tell()
                length = fh.write(t.raw_data)
                t.ClearField("raw_data")
                t.data_location = onnx.TensorProto.EXTERNAL
                del t.external_data[:]
                for key, value in (("location", data_name), ("offset", str(offset)), ("length", str(length))):
                    entry = t.external_data.add()
                    entry.key, entry.value = key, value
                moved.append((t, offset, length, had_location))
        with open(model_file, "wb") as fh:
            fh.write(model.SerializeToString())
    finally:
        with open(data_file, "rb") as fh:
            for t, offset, length, had_location in moved:
                fh.seek(offset)
                t.raw_data = fh.read(length)
                t.ClearField("data_location")
                if had_location:
                    t.data_location = onnx.TensorProto.DEFAULT
                del t.external_data[:]

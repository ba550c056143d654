"""Input loaders: .npz, image folders with preprocessing, calibration readers, photo crops."""

import numpy as np
import pytest
from onnxruntime.quantization import CalibrationDataReader

import modelgen
from onnxcompress.errors import OnnxCompressError
from onnxcompress.images import Preprocessing, load_image_folder, photo_crops
from onnxcompress.inputs import npz_feeds, random_feeds, reader_feeds


def test_npz_feeds_batches_and_checks(tmp_path):
    model = modelgen.small_resnet()
    x = np.random.default_rng(0).standard_normal((5, 3, 16, 16)).astype(np.float32)
    np.savez(tmp_path / "a.npz", whatever=x)
    feeds = npz_feeds(model, tmp_path / "a.npz", batch=2)
    assert [f["input"].shape[0] for f in feeds] == [2, 2, 1]
    np.savez(tmp_path / "b.npz", input=x[:, :2])
    with pytest.raises(OnnxCompressError, match="shape"):
        npz_feeds(model, tmp_path / "b.npz")
    (tmp_path / "c.npz").write_bytes(b"nope")
    with pytest.raises(OnnxCompressError, match="not a readable"):
        npz_feeds(model, tmp_path / "c.npz")
    assert random_feeds(model, 2, batch=3)[1]["input"].shape == (3, 3, 16, 16)


def test_image_folder_preprocessing(tmp_path):
    from PIL import Image

    rgb = np.zeros((300, 400, 3), np.uint8)
    rgb[..., 0] = 255  # pure red
    Image.fromarray(rgb).save(tmp_path / "red.png")
    (tmp_path / "sub").mkdir()
    Image.fromarray(rgb[:, :, ::-1].copy()).save(tmp_path / "sub" / "blue.jpg", quality=100)
    (tmp_path / "notes.txt").write_text("ignored")
    x = load_image_folder(tmp_path, Preprocessing(resize=64, crop=56))
    assert x.shape == (2, 3, 56, 56) and x.dtype == np.float32
    p = Preprocessing()
    np.testing.assert_allclose(x[0, :, 10, 10], (np.array([1, 0, 0]) - p.mean) / p.std, rtol=1e-5)
    assert x[1, 2, 10, 10] > 2.0  # blue channel high after BGR->RGB swap in the file
    (tmp_path / "empty").mkdir()
    with pytest.raises(OnnxCompressError, match="no images"):
        load_image_folder(tmp_path / "empty")
    with pytest.raises(OnnxCompressError, match="not a folder"):
        load_image_folder(tmp_path / "missing")


def test_reader_feeds():
    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter([{"input": np.ones((1, 3, 4, 4), np.float32)}] * 3)

        def get_next(self):
            return next(self.it, None)

    assert len(reader_feeds(Reader())) == 3
    assert len(reader_feeds(Reader(), limit=2)) == 2
    with pytest.raises(OnnxCompressError):
        reader_feeds(object())


def test_photo_crops_are_seeded_and_varied():
    a, b = photo_crops(6, seed=1), photo_crops(6, seed=1)
    np.testing.assert_array_equal(a, b)
    assert a.shape == (6, 3, 224, 224)
    assert not np.allclose(a[0], a[1])
    assert abs(float(a.mean())) < 1.5


def test_feeds_recut_to_a_fixed_batch(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    from onnxcompress.inputs import fit_to_model_batch, fixed_batch, merge_feeds, rebatch

    model = modelgen.small_resnet()
    assert fixed_batch(model) is None
    fixed = onnx.ModelProto()
    fixed.CopyFrom(model)
    fixed.graph.input[0].CopyFrom(helper.make_tensor_value_info("input", TensorProto.FLOAT, [2, 3, 16, 16]))
    assert fixed_batch(fixed) == 2
    x = np.arange(7 * 3 * 16 * 16, dtype=np.float32).reshape(7, 3, 16, 16)
    feeds = [{"input": x[:3]}, {"input": x[3:4]}, {"input": x[4:]}]
    assert fit_to_model_batch(model, feeds) is feeds
    out = fit_to_model_batch(fixed, feeds)
    assert [f["input"].shape[0] for f in out] == [2, 2, 2]  # the 7th sample cannot make a batch of 2
    np.testing.assert_array_equal(np.concatenate([f["input"] for f in out]), x[:6])
    assert [f["input"].shape[0] for f in merge_feeds(feeds, model=fixed)] == [2, 2, 2]
    assert [f["input"].shape[0] for f in merge_feeds(feeds, batch=4)] == [4, 3]
    with pytest.raises(OnnxCompressError, match="exactly 8"):
        rebatch(feeds, 8)
    np.savez(tmp_path / "d.npz", input=x)
    assert [f["input"].shape[0] for f in npz_feeds(fixed, tmp_path / "d.npz", batch=5)] == [2, 2, 2]


def test_npz_checks(tmp_path):
    from onnxcompress.inputs import check_arrays

    model = modelgen.small_resnet()
    x = np.zeros((2, 3, 16, 16), np.float32)
    check_arrays({"input": x}, model, "x")
    for bad, words in ((x.astype(np.uint8), "uint8"), (np.where(x == 0, np.nan, x), "NaN"),
                       (np.full_like(x, -np.inf), "infinite")):
        with pytest.raises(OnnxCompressError, match=words):
            check_arrays({"input": bad}, model, "x")
    np.savez(tmp_path / "two.npz", a=x, b=x)
    with pytest.raises(OnnxCompressError, match="expected an array named 'input'.*'a'.*'b'"):
        npz_feeds(model, tmp_path / "two.npz")
    np.savez(tmp_path / "labelled.npz", images=x, y=np.arange(2))
    assert npz_feeds(model, tmp_path / "labelled.npz")[0]["input"].shape == (1, 3, 16, 16)

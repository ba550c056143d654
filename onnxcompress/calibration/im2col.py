"""im2col for 2-D NCHW convolution, with the geometry resolved by ONNX Conv's rules.

A Conv is a matrix product once its input is unfolded: for group g,

    im2col(X)[g] @ W_g.reshape(Mg, -1).T  ==  Y[:, g*Mg:(g+1)*Mg]  (as rows)

where im2col(X)[g] has one row per output position (n, oy, ox) in that order
(rows = N*OH*OW) and one column per (c, ky, kx) of the group's input channels,
the order of `W.reshape(M, -1)`. The unfolding is a strided view of the padded
input (`numpy.lib.stride_tricks.sliding_window_view`); only the final reshape
copies. Passing `rows` (flat indices of output positions) gathers just those
rows, which is how a row budget avoids unfolding positions it would drop.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

__all__ = ["ConvGeometry", "conv_attrs", "conv_geometry", "im2col", "column_sums", "output_rows", "rows_to_nchw",
           "conv2d_im2col"]


def conv_attrs(node) -> dict[str, Any]:
    """The attributes of a Conv node as a plain dict (onnx NodeProto or graphsurgeon Node)."""
    if hasattr(node, "attribute"):  # onnx.NodeProto
        import onnx

        return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    return dict(node.attrs)


def _pair(value, default, name) -> tuple[int, int]:
    if value is None:
        return default
    value = tuple(int(v) for v in value)
    if len(value) != 2:
        raise ValueError(f"Conv {name} must have 2 values for a 2-D convolution, got {list(value)}")
    return value


@dataclass(frozen=True)
class ConvGeometry:
    """A 2-D Conv's geometry for one input size, auto_pad resolved.

    pads are (top, left, bottom, right), ONNX's [x1_begin, x2_begin, x1_end, x2_end].
    """

    in_channels: int
    out_channels: int
    group: int
    kernel: tuple[int, int]
    strides: tuple[int, int]
    dilations: tuple[int, int]
    pads: tuple[int, int, int, int]
    in_hw: tuple[int, int]
    out_hw: tuple[int, int]

    @property
    def cin_per_group(self) -> int:
        return self.in_channels // self.group

    @property
    def cout_per_group(self) -> int:
        return self.out_channels // self.group

    @property
    def cols(self) -> int:
        """Columns of one group's im2col matrix: Cin_g * kh * kw."""
        return self.cin_per_group * self.kernel[0] * self.kernel[1]


def conv_geometry(attrs: Mapping[str, Any], x_shape, w_shape) -> ConvGeometry:
    """Resolves a 2-D Conv's attributes for input shape [N, C, H, W] and weight [M, C/group, kh, kw].

    auto_pad follows the ONNX Conv specification: VALID pads nothing; SAME_UPPER
    and SAME_LOWER give ceil(in / stride) outputs with the total padding split in
    two, the odd pixel at the end (UPPER) or at the beginning (LOWER); NOTSET
    (default) uses `pads`.
    """
    if len(x_shape) != 4 or len(w_shape) != 4:
        raise ValueError(f"only 2-D convolution is supported (input {list(x_shape)}, weight {list(w_shape)})")
    _, cin, h, w = (int(v) for v in x_shape)
    m, cin_g, kh, kw = (int(v) for v in w_shape)
    group = int(attrs.get("group", 1))
    if group < 1 or cin % group or m % group or cin // group != cin_g:
        raise ValueError(f"group={group} does not fit input channels {cin}, weight {list(w_shape)}")
    kernel = _pair(attrs.get("kernel_shape"), (kh, kw), "kernel_shape")
    if kernel != (kh, kw):
        raise ValueError(f"kernel_shape {list(kernel)} differs from the weight's {[kh, kw]}")
    strides = _pair(attrs.get("strides"), (1, 1), "strides")
    dilations = _pair(attrs.get("dilations"), (1, 1), "dilations")
    if min(strides) < 1 or min(dilations) < 1:
        raise ValueError(f"strides {list(strides)} and dilations {list(dilations)} must be >= 1")
    auto_pad = attrs.get("auto_pad", "NOTSET")
    if isinstance(auto_pad, bytes):
        auto_pad = auto_pad.decode()
    extent = [(k - 1) * d + 1 for k, d in zip(kernel, dilations)]
    size = (h, w)
    if auto_pad in ("NOTSET", ""):
        pads = tuple(int(p) for p in attrs.get("pads", (0, 0, 0, 0)))
        if len(pads) != 4 or min(pads) < 0:
            raise ValueError(f"pads must be 4 values >= 0, got {list(pads)}")
    elif auto_pad == "VALID":
        pads = (0, 0, 0, 0)
    elif auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        begin, end = [], []
        for i in range(2):
            out = -(-size[i] // strides[i])
            total = max((out - 1) * strides[i] + extent[i] - size[i], 0)
            small, large = total // 2, total - total // 2
            begin.append(small if auto_pad == "SAME_UPPER" else large)
            end.append(large if auto_pad == "SAME_UPPER" else small)
        pads = (begin[0], begin[1], end[0], end[1])
    else:
        raise ValueError(f"unknown auto_pad '{auto_pad}'")
    out_hw = tuple((size[i] + pads[i] + pads[i + 2] - extent[i]) // strides[i] + 1 for i in range(2))
    if min(out_hw) < 1:
        raise ValueError(f"the kernel (extent {extent}) does not fit the padded input {list(size)}")
    return ConvGeometry(cin, m, group, kernel, strides, dilations, pads, (h, w), out_hw)


def _windows(x: np.ndarray, geo: ConvGeometry) -> np.ndarray:
    """A view [N, C, OH, OW, kh, kw] of the padded input (no copy beyond the padding)."""
    if x.ndim != 4 or tuple(x.shape[1:]) != (geo.in_channels, *geo.in_hw):
        raise ValueError(f"input shape {list(x.shape)} does not match the geometry "
                         f"[N, {geo.in_channels}, {geo.in_hw[0]}, {geo.in_hw[1]}]")
    top, left, bottom, right = geo.pads
    if any(geo.pads):
        x = np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)))
    (kh, kw), (sh, sw), (dh, dw) = geo.kernel, geo.strides, geo.dilations
    view = sliding_window_view(x, ((kh - 1) * dh + 1, (kw - 1) * dw + 1), axis=(2, 3))
    view = view[:, :, ::sh, ::sw, ::dh, ::dw]
    assert view.shape[2:4] == geo.out_hw, (view.shape, geo)
    return view


def _positions(rows: np.ndarray, geo: ConvGeometry):
    oh, ow = geo.out_hw
    n, rest = np.divmod(np.asarray(rows, dtype=np.intp), oh * ow)
    y, x = np.divmod(rest, ow)
    return n, y, x


def im2col(x: np.ndarray, geo: ConvGeometry, rows: np.ndarray | None = None) -> list[np.ndarray]:
    """Per group, the unfolded input [R, Cin_g*kh*kw] with R = N*OH*OW rows in (n, oy, ox) order,
    or only the output positions `rows` (flat indices into that order) when given."""
    view = _windows(x, geo)
    cg = geo.cin_per_group
    if rows is not None:
        n, y, xx = _positions(rows, geo)
        picked = view[n, :, y, xx]  # [R, C, kh, kw]: the advanced indices go first
        return [np.ascontiguousarray(picked[:, g * cg:(g + 1) * cg]).reshape(len(n), -1) for g in range(geo.group)]
    n = x.shape[0]
    out = []
    for g in range(geo.group):
        part = view[:, g * cg:(g + 1) * cg].transpose(0, 2, 3, 1, 4, 5)  # N, OH, OW, Cg, kh, kw
        out.append(part.reshape(n * geo.out_hw[0] * geo.out_hw[1], geo.cols))
    return out


def column_sums(x: np.ndarray, geo: ConvGeometry) -> list[np.ndarray]:
    """Per group, the column sums [Cin_g*kh*kw] of im2col(x) (every output position, zero padding
    included), in float64, without unfolding: a reduction over the strided window view."""
    view = _windows(x, geo)
    sums = view.sum(axis=(0, 2, 3), dtype=np.float64)  # [C, kh, kw]
    cg = geo.cin_per_group
    return [sums[g * cg:(g + 1) * cg].reshape(-1) for g in range(geo.group)]


def output_rows(y: np.ndarray, group: int = 1, rows: np.ndarray | None = None,
                geo: ConvGeometry | None = None) -> list[np.ndarray]:
    """A Conv output [N, M, OH, OW] as per-group row matrices [R, M/group] matching im2col's rows."""
    if y.ndim != 4 or y.shape[1] % group:
        raise ValueError(f"output shape {list(y.shape)} does not fit group={group}")
    m = y.shape[1]
    if rows is not None:
        if geo is None:
            geo = ConvGeometry(0, m, group, (1, 1), (1, 1), (1, 1), (0, 0, 0, 0), (0, 0), tuple(y.shape[2:]))
        n, yy, xx = _positions(rows, geo)
        flat = y[n, :, yy, xx]  # [R, M]
    else:
        flat = y.transpose(0, 2, 3, 1).reshape(-1, m)
    mg = m // group
    return [flat[:, g * mg:(g + 1) * mg] for g in range(group)]


def rows_to_nchw(rows: list[np.ndarray], n: int, out_hw: tuple[int, int]) -> np.ndarray:
    """Inverse of output_rows (all rows): per-group [N*OH*OW, Mg] back to [N, M, OH, OW]."""
    flat = np.concatenate(rows, axis=1)
    return flat.reshape(n, out_hw[0], out_hw[1], -1).transpose(0, 3, 1, 2)


def conv2d_im2col(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None = None,
                  attrs: Mapping[str, Any] | None = None) -> np.ndarray:
    """Reference Conv through im2col (float64 accumulation); returns x's dtype."""
    geo = conv_geometry(attrs or {}, x.shape, weight.shape)
    mg = geo.cout_per_group
    w = weight.reshape(geo.out_channels, -1).astype(np.float64)
    parts = [cols.astype(np.float64) @ w[g * mg:(g + 1) * mg].T for g, cols in enumerate(im2col(x, geo))]
    y = rows_to_nchw(parts, x.shape[0], geo.out_hw)
    if bias is not None:
        y = y + np.asarray(bias, np.float64)[None, :, None, None]
    return y.astype(x.dtype)

"""PENNI fitting (basis-kernel convolution), as plain numpy functions.

A Conv weight W [M, Cg, kh, kw] (Cg = input channels per group) is written as

    W[o, c] = sum_b C[o, c*d + b] * B[b]        B: d basis kernels [d, kh, kw], shared by the layer
                                               C: coefficients [M, Cg*d], column c*d + b

(the order of `onnxcompress.calibration.kernel_basis_matrix`: input channel major,
basis minor). The basis is the top-d right singular vectors of the layer's
M*Cg flattened kernels (truncated SVD without the mean, so the kernels are
projected, not shifted); coefficients are the projections. Then a fraction of
the coefficients is pruned, by magnitude or by a second-order criterion, and,
with calibration moments, the survivors are re-fitted by masked ridge least
squares against the original layer's outputs (optionally alternating with a
re-fit of the bases), with the bias solved so that the output mean matches.

Moments come per group as `GroupMoments` (centred H and G of the layer's
im2col rows, means of X and Y), built by the pass from the calibration engine.
Everything is deterministic: the SVD signs are fixed, ties are broken by index.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import logging

import numpy as np

from .allocation import pruning_error_curve
from ..calibration.solve import DEFAULT_RIDGE, kernel_basis_moments, ridge_lambda, solve_masked

log = logging.getLogger("onnxcompress")

# Defaults of the method (the pass and the command-line help read these).
DEFAULT_BASES = 5
DEFAULT_COEF_SPARSITY = 0.7

__all__ = [
    "GroupMoments", "BasisFit", "kernel_basis", "choose_rank", "compose_weight", "basis_means",
    "magnitude_saliency", "second_order_saliency", "prune_mask", "refit_coefficients", "refit_bases",
    "fit_layer", "layer_costs", "group_moments", "option_errors", "option_costs", "SPARSITY_GRID",
]

# Coefficient sparsities a layer may be given when a model-wide MAC budget is allocated.
SPARSITY_GRID = tuple(round(x, 2) for x in np.arange(0.0, 0.99, 0.02))


@dataclass
class GroupMoments:
    """Moments of one group's im2col rows X [R, Cg*K] and target outputs Y [R, Mg].

    H: centred X^T X / R [Cg*K, Cg*K]; G: centred X^T Y / R [Cg*K, Mg];
    mean_x [Cg*K], mean_y [Mg]; rows: R.
    """

    H: np.ndarray
    G: np.ndarray
    mean_x: np.ndarray
    mean_y: np.ndarray
    rows: int = 0


@dataclass
class BasisFit:
    """A layer in basis form. bases [d, kh, kw]; coefs [M, Cg*d] (zeros: pruned); bias [M] or None."""

    bases: np.ndarray
    coefs: np.ndarray
    bias: np.ndarray | None
    energy: float = 1.0          # retained energy of the truncated SVD, sum(s[:d]^2) / sum(s^2)
    stats: dict = field(default_factory=dict)

    @property
    def rank(self) -> int:
        return int(self.bases.shape[0])

    @property
    def sparsity(self) -> float:
        return float(np.mean(self.coefs == 0)) if self.coefs.size else 0.0

    def weight(self) -> np.ndarray:
        return compose_weight(self.bases, self.coefs)


def choose_rank(singular_values: np.ndarray, bases: int | None = None, energy: float | None = None) -> int:
    """d: `bases` itself, or the smallest d whose retained energy sum(s[:d]^2)/sum(s^2) is >= energy."""
    s2 = np.asarray(singular_values, np.float64) ** 2
    k = len(s2)
    if bases is not None:
        if bases < 1:
            raise ValueError(f"bases must be >= 1, got {bases}")
        return int(min(bases, k))
    if energy is None:
        raise ValueError("give bases or energy")
    if not 0 < energy <= 1:
        raise ValueError(f"energy must be in (0, 1], got {energy}")
    total = s2.sum()
    if total <= 0:
        return 1
    cum = np.cumsum(s2) / total
    return int(min(k, np.searchsorted(cum, energy - 1e-12) + 1))


def kernel_basis(weight: np.ndarray, bases: int | None = None, energy: float | None = None) -> BasisFit:
    """Truncated SVD (no mean) of the layer's flattened kernels: d basis kernels and the coefficients.

    The basis vectors are orthonormal; each one's sign is chosen so that its
    entry of largest magnitude is positive (the SVD leaves signs free).
    """
    weight = np.asarray(weight, np.float64)
    if weight.ndim != 4:
        raise ValueError(f"weight must be [M, Cg, kh, kw], got {list(weight.shape)}")
    m, cg, kh, kw = weight.shape
    kernels = weight.reshape(m * cg, kh * kw)
    _, s, vt = np.linalg.svd(kernels, full_matrices=False)
    d = choose_rank(s, bases, energy)
    basis = vt[:d].copy()
    for b in range(d):
        j = int(np.argmax(np.abs(basis[b])))
        if basis[b, j] < 0:
            basis[b] = -basis[b]
    coefs = (kernels @ basis.T).reshape(m, cg * d)
    total = float(np.sum(s ** 2))
    retained = float(np.sum(s[:d] ** 2) / total) if total > 0 else 1.0
    return BasisFit(basis.reshape(d, kh, kw), coefs, None, retained)


def compose_weight(bases: np.ndarray, coefs: np.ndarray) -> np.ndarray:
    """The dense Conv weight [M, Cg, kh, kw] of bases [d, kh, kw] and coefficients [M, Cg*d]."""
    bases = np.asarray(bases)
    d, kh, kw = bases.shape
    m = coefs.shape[0]
    c3 = np.asarray(coefs).reshape(m, -1, d)
    return np.einsum("ocb,bk->ock", c3, bases.reshape(d, -1)).reshape(m, c3.shape[1], kh, kw)


def basis_means(mean_x: np.ndarray, bases: np.ndarray, cin: int) -> np.ndarray:
    """Means of the basis-stage maps [Cg*d] (column c*d + b) from the im2col column means [Cg*K]."""
    d = bases.shape[0]
    return (np.asarray(mean_x, np.float64).reshape(cin, -1) @ np.asarray(bases, np.float64).reshape(d, -1).T).ravel()


def magnitude_saliency(coefs: np.ndarray) -> np.ndarray:
    return np.abs(np.asarray(coefs, np.float64))


def second_order_saliency(coefs: np.ndarray, HB: np.ndarray, ridge: float = DEFAULT_RIDGE) -> np.ndarray:
    """Optimal-Brain-Surgeon saliency in the basis space: c[o, j]^2 / [HB^-1]_jj, the increase of the
    output error (per calibration row) when coefficient j of row o is removed and the rest of the row
    re-fitted. HB: centred basis-space moments [Cg*d, Cg*d] of one group; coefs [Mg, Cg*d]."""
    HB = np.asarray(HB, np.float64)
    A = HB + ridge_lambda(HB, ridge) * np.eye(len(HB))
    try:
        inv_diag = np.diag(np.linalg.inv(A))
    except np.linalg.LinAlgError:
        inv_diag = np.diag(np.linalg.pinv(A, hermitian=True))
    inv_diag = np.maximum(inv_diag, 1e-300)
    return np.asarray(coefs, np.float64) ** 2 / inv_diag[None, :]


def prune_mask(saliency: np.ndarray, sparsity: float) -> np.ndarray:
    """Bool mask keeping the round((1 - sparsity) * size) entries of highest saliency (ties: lower index)."""
    if not 0 <= sparsity < 1:
        raise ValueError(f"coefficient sparsity must be in [0, 1), got {sparsity}")
    sal = np.asarray(saliency, np.float64)
    keep = int(round((1.0 - sparsity) * sal.size))
    mask = np.zeros(sal.size, bool)
    if keep > 0:
        order = np.argsort(-sal.ravel(), kind="stable")
        mask[order[:keep]] = True
    return mask.reshape(sal.shape)


def refit_coefficients(moments: GroupMoments, bases: np.ndarray, mask: np.ndarray | None,
                       ridge: float = DEFAULT_RIDGE) -> tuple[np.ndarray, np.ndarray]:
    """Masked ridge least squares of one group's coefficients [Mg, Cg*d] over fixed bases, and the bias [Mg]
    that makes the output mean equal the target's (bias = mean_y - C mean(basis maps))."""
    d = bases.shape[0]
    cin = moments.H.shape[0] // int(np.prod(bases.shape[1:]))
    HB, GB = kernel_basis_moments(moments.H, moments.G, bases.reshape(d, -1), cin)
    C = solve_masked(HB, GB, mask, ridge)
    bias = np.asarray(moments.mean_y, np.float64) - C @ basis_means(moments.mean_x, bases, cin)
    return C, bias


def refit_bases(moments: list[GroupMoments], bases: np.ndarray, coefs: np.ndarray,
                ridge: float = DEFAULT_RIDGE) -> np.ndarray:
    """Least-squares bases [d, kh, kw] for fixed coefficients [M, Cg*d], summed over groups.

    Y_o = sum_{c,k} X[c,k] sum_b C[o,c,b] B[b,k] is linear in B: the normal equations are
    A[(b,k),(b',k')] = sum_{c,c'} (C^T C)[(c,b),(c',b')] H[(c,k),(c',k')] and
    r[(b,k)] = sum_{o,c} C[o,c,b] G[(c,k),o]; cost O(Cg^2 d^2 K^2), no per-output loop.
    """
    d, kh, kw = bases.shape
    k = kh * kw
    mg = coefs.shape[0] // len(moments)
    A = np.zeros((d * k, d * k))
    r = np.zeros(d * k)
    for g, mom in enumerate(moments):
        cg = mom.H.shape[0] // k
        C = np.asarray(coefs[g * mg:(g + 1) * mg], np.float64)
        Q = (C.T @ C).reshape(cg, d, cg, d)
        H4 = np.asarray(mom.H, np.float64).reshape(cg, k, cg, k)
        A += np.einsum("abcd,akcl->bkdl", Q, H4, optimize=True).reshape(d * k, d * k)
        r += np.einsum("ocb,cko->bk", C.reshape(-1, cg, d), np.asarray(mom.G, np.float64).reshape(cg, k, -1),
                       optimize=True).ravel()
    A += ridge_lambda(A, ridge) * np.eye(d * k)
    try:
        sol = np.linalg.solve(A, r)
    except np.linalg.LinAlgError:
        sol = np.linalg.pinv(A, hermitian=True) @ r
    return sol.reshape(d, kh, kw)


def _quadratic(A: np.ndarray, H: np.ndarray, B: np.ndarray) -> float:
    """sum_o A[o] H B[o]^T, by matrix products (an unoptimised einsum is O(M D^2) scalar steps)."""
    return float(np.sum((A @ H) * B))


def _output_error(mom: GroupMoments, W: np.ndarray, b: np.ndarray, W0: np.ndarray, b0: np.ndarray) -> tuple:
    """(mean squared error of (W, b) against the target, mean square of the target) from centred moments:
    the target is the original layer (W0, b0) whose outputs G describes; means enter through the bias."""
    # E||X W^T + b - Y||^2 with centred parts: tr(W Hc W^T) - 2 tr(W Gc) + E||Yc||^2 + ||mean diff||^2.
    # E||Yc||^2 is unknown from H, G alone; the original layer gives it: Y = X W0^T + b0 exactly.
    Hc = mom.H
    D = W - W0
    err_c = _quadratic(D, Hc, D) / max(W.shape[0], 1)
    mean_diff = W @ mom.mean_x + b - (W0 @ mom.mean_x + b0)
    err = err_c + float(np.mean(mean_diff ** 2))
    y_c = _quadratic(W0, Hc, W0) / max(W.shape[0], 1)
    y2 = y_c + float(np.mean((W0 @ mom.mean_x + b0) ** 2))
    return err, y2


def fit_layer(weight: np.ndarray, bias: np.ndarray | None, *, group: int = 1, bases: int | None = None,
              energy: float | None = None, sparsity: float = 0.0, criterion: str = "magnitude",
              moments: list[GroupMoments] | None = None, basis_iterations: int = 0,
              ridge: float = DEFAULT_RIDGE) -> BasisFit:
    """The whole per-layer fit: SVD basis, pruning mask, and with moments the refit.

    criterion: 'magnitude' (|c|) or 'second_order' (OBS saliency from the moments; needs them).
    basis_iterations: with moments, rounds of (bases refit, coefficients refit) after the first
    coefficient refit (PENNI alternates bases and coefficients; here by least squares).
    The mask is chosen once per layer (one threshold over all groups) and kept.
    Returns float32 arrays; stats: energy, sparsity, dead input/output channels and, with moments,
    the relative output error and cosine of the layer on the calibration rows (original vs fitted).
    """
    weight = np.asarray(weight, np.float64)
    m, cg, kh, kw = weight.shape
    if m % group:
        raise ValueError(f"group {group} does not divide {m} output channels")
    if criterion not in ("magnitude", "second_order"):
        raise ValueError(f"criterion must be 'magnitude' or 'second_order', got '{criterion}'")
    if criterion == "second_order" and moments is None:
        raise ValueError("the second-order criterion needs calibration moments")
    if moments is not None and len(moments) != group:
        raise ValueError(f"expected moments for {group} groups, got {len(moments)}")
    fit = kernel_basis(weight, bases, energy)
    B, C = fit.bases, fit.coefs
    d = B.shape[0]
    mg = m // group
    b0 = np.zeros(m) if bias is None else np.asarray(bias, np.float64)
    new_bias = None if bias is None else b0.copy()

    if moments is not None:
        # dense refit first: the saliency of the best unpruned coefficients for the data
        dense = [refit_coefficients(mom, B, None, ridge) for mom in moments]
        C = np.concatenate([c for c, _ in dense])
        new_bias = np.concatenate([b for _, b in dense])
    if sparsity > 0:
        if criterion == "magnitude":
            sal = magnitude_saliency(C)
        else:
            sal = np.concatenate([
                second_order_saliency(C[g * mg:(g + 1) * mg],
                                      kernel_basis_moments(mom.H, mom.G, B.reshape(d, -1), cg)[0], ridge)
                for g, mom in enumerate(moments)])
        mask = prune_mask(sal, sparsity)
    else:
        mask = np.ones_like(C, bool)

    def refit_all(B):
        out = [refit_coefficients(mom, B, mask[g * mg:(g + 1) * mg], ridge) for g, mom in enumerate(moments)]
        return np.concatenate([c for c, _ in out]), np.concatenate([b for _, b in out])

    if moments is not None:
        C, new_bias = refit_all(B)
        for _ in range(basis_iterations):
            B = refit_bases(moments, B, C, ridge)
            C, new_bias = refit_all(B)
    else:
        C = np.where(mask, C, 0.0)
    C = np.where(mask, C, 0.0)

    stats = {"energy": round(fit.energy, 6), "bases": d, "coef_sparsity": float(np.mean(C == 0)),
             "nnz": int(np.count_nonzero(C))}
    C3 = C.reshape(m, cg, d)
    dead_in = 0
    for g in range(group):
        dead_in += int(np.sum(~np.any(C3[g * mg:(g + 1) * mg] != 0, axis=(0, 2))))
    stats["dead_input_channels"] = dead_in
    stats["dead_output_channels"] = int(np.sum(~np.any(C != 0, axis=1)))
    stats["active_basis_maps"] = int(sum(np.count_nonzero(np.any(C3[g * mg:(g + 1) * mg] != 0, axis=0))
                                         for g in range(group)))
    if moments is not None:
        W = compose_weight(B, C).reshape(m, -1)
        W0 = weight.reshape(m, -1)
        bb = new_bias if new_bias is not None else np.zeros(m)
        err = y2 = 0.0
        cross = ww = 0.0
        for g, mom in enumerate(moments):
            sl = slice(g * mg, (g + 1) * mg)
            e, t = _output_error(mom, W[sl], bb[sl], W0[sl], b0[sl])
            err += e * mg
            y2 += t * mg
            # cosine of the outputs (uncentred): E<y, y0> / sqrt(E|y|^2 E|y0|^2)
            Hc = mom.H
            my, my0 = W[sl] @ mom.mean_x + bb[sl], W0[sl] @ mom.mean_x + b0[sl]
            cross += _quadratic(W[sl], Hc, W0[sl]) + float(my @ my0)
            ww += _quadratic(W[sl], Hc, W[sl]) + float(my @ my)
        stats["rel_error"] = float(err / y2) if y2 > 0 else 0.0
        stats["output_cosine"] = float(cross / np.sqrt(ww * y2)) if ww > 0 and y2 > 0 else 0.0
    return BasisFit(B.astype(np.float32), C.astype(np.float32),
                    None if new_bias is None else new_bias.astype(np.float32), fit.energy, stats)


def layer_costs(in_channels: int, out_channels: int, group: int, kernel: tuple[int, int], out_pixels: int,
                active_maps: int, nnz: int, d: int) -> dict:
    """Work and storage of one layer, original against basis form, at batch 1.

    Basis stage: active_maps * kh * kw MACs per output pixel (maps no coefficient reads are skipped);
    coefficient stage: nnz MACs per output pixel. Parameters: d*kh*kw bases + nnz coefficients
    (+ the dense matrix as stored, M * Cg * d).
    """
    kh, kw = kernel
    cg = in_channels // group
    original = out_channels * cg * kh * kw * out_pixels
    basis = active_maps * kh * kw * out_pixels
    coef = nnz * out_pixels
    return {
        "macs_original": int(original), "macs_basis_stage": int(basis), "macs_coef_stage": int(coef),
        "macs_after": int(basis + coef),
        "params_original": int(out_channels * cg * kh * kw), "params_nonzero": int(d * kh * kw + nnz),
        "params_stored": int(d * kh * kw + out_channels * cg * d),
    }


def group_moments(conv_moments) -> list[GroupMoments]:
    """GroupMoments per group from a calibration `ConvMoments` (or a list of `MomentAccumulator`)."""
    groups = getattr(conv_moments, "groups", conv_moments)
    out = []
    for acc in groups:
        H, G = acc.centered()
        out.append(GroupMoments(H, G, acc.mean_x, acc.mean_y, acc.rows))
    return out


# Sparsities at which option_errors solves the masked refit; the grid between them (and between the
# dense fit and the first anchor) is interpolated. A solve costs (kept coefficients per row)^3, so an
# anchor at 0.5 would cost more than all of these together.
ERROR_ANCHORS = (0.7, 0.8, 0.86, 0.9, 0.93, 0.95, 0.97, 0.98)


def option_errors(weight: np.ndarray, bias: np.ndarray | None, moments: list[GroupMoments] | None, ranks,
                  grid=SPARSITY_GRID, ridge: float = DEFAULT_RIDGE, max_rows: int = 32,
                  seed: int = 0) -> np.ndarray:
    """Estimated relative output error [len(ranks), len(grid)] of the layer at d = ranks[i] bases and
    coefficient sparsity grid[j], for allocating a model-wide budget.

    With moments: the error the fit itself would reach on these moments, solved, not guessed
    (summed single-coefficient saliencies miss how little the survivors can compensate at 90%+
    pruning): the second-order mask at each of ERROR_ANCHORS, the masked ridge refit, and its
    output error from the moments, over the layer's output energy; on a seeded sample of at most
    `max_rows` output channels per group (the solves are per channel); log-linear in between.
    Data-free: in weight space, the energy the truncated SVD drops plus the squared pruned
    coefficients (the basis is orthonormal), over the weights' energy.
    """
    weight = np.asarray(weight, np.float64)
    m, cg = weight.shape[:2]
    grid = np.asarray(grid, np.float64)
    out = np.zeros((len(ranks), len(grid)))
    for i, d in enumerate(ranks):
        basis = kernel_basis(weight, bases=d)
        if moments is None:
            total = float(np.sum(weight ** 2))
            out[i] = (1.0 - basis.energy) + pruning_error_curve(basis.coefs ** 2, total, grid)
            continue
        B = basis.bases
        mg = m // len(moments)
        rows = np.sort(np.random.default_rng(seed).permutation(mg)[:max_rows])
        W0 = weight.reshape(m, -1)
        b0 = np.zeros(m) if bias is None else np.asarray(bias, np.float64)
        solved, saliency = [], []
        for g, mom in enumerate(moments):
            HB, GB = kernel_basis_moments(mom.H, mom.G, B.reshape(d, -1), cg)
            C = solve_masked(HB, GB, None, ridge)
            w0 = W0[g * mg:(g + 1) * mg][rows]
            centred = float(np.sum((w0 @ mom.H) * w0))  # E|Yc|^2 of the sampled outputs (Y = X W0^T + b0)
            mean_part = float(np.sum((w0 @ mom.mean_x + b0[g * mg:(g + 1) * mg][rows]) ** 2))
            solved.append((HB, GB[:, rows], centred, centred + mean_part))
            saliency.append(second_order_saliency(C, HB, ridge))
        saliency = np.concatenate(saliency)
        energy = sum(t for *_, t in solved)

        def error(mask):
            err = 0.0
            for g, (HB, GB, centred, _) in enumerate(solved):
                C = solve_masked(HB, GB, mask[g * mg:(g + 1) * mg][rows], ridge)
                # centred output error of the rows: c HB c - 2 c.GB + E|Yc|^2; the bias takes the mean
                err += float(np.sum((C @ HB) * C) - 2 * np.sum(C * GB.T)) + centred
            return max(err, 0.0) / max(energy, 1e-300)

        points = [0.0, *ERROR_ANCHORS]
        errs = [error(np.ones_like(saliency, bool))] + [error(prune_mask(saliency, a)) for a in points[1:]]
        log.debug("penni option errors d=%d: %s", d, np.round(errs, 4).tolist())
        out[i] = np.exp(np.interp(grid, points, np.log(np.maximum(errs, 1e-12))))
    return out


def option_costs(in_channels: int, out_channels: int, group: int, kernel: tuple[int, int], out_pixels: int,
                 ranks, grid=SPARSITY_GRID) -> np.ndarray:
    """MACs [len(ranks), len(grid)] of the layer in basis form at batch 1, every basis map counted
    (maps that pruning leaves unread are a saving found after the fit)."""
    kh, kw = kernel
    cg = in_channels // group
    out = np.zeros((len(ranks), len(grid)))
    for i, d in enumerate(ranks):
        nnz = (1.0 - np.asarray(grid, np.float64)) * out_channels * cg * d
        out[i] = out_pixels * (in_channels * d * kh * kw + nnz)
    return out

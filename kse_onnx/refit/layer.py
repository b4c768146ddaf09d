"""One compressed Conv during the refit: its shared kernels as free values, its patches
and its least-squares fit (docs/refit.md)."""

from __future__ import annotations

import numpy as np
import onnx
import torch
import torch.nn.functional as F

from ..analysis.plan import LayerPlan, effective_weight
from ..onnx_torch import ops
from .normal import (
    NormalEquations,
    SharedLayout,
    SharedLeastSquares,
    Solution,
    round_iterations,
)

# A normal-equation batch's temporaries (patches, targets, their transposed copies and,
# after a ReLU, the relaxed targets) are capped at about this many float32 values.
_PATCH_ELEMENTS = 32_000_000
# Whole-set error sums run over chunks of images of at most this many values each.
_CHUNK_ELEMENTS = 4_000_000
# After-ReLU rounds stop once a round lowers its bound by less than this share.
ROUND_STALL = 1e-3


class SharedConv:
    """A compressed Conv whose weight is ``kernels[slot(n, c)]`` (zero where pruned)."""

    def __init__(self, node: onnx.NodeProto, plan: LayerPlan, bias: np.ndarray | None,
                 opset: int):
        self.node, self.plan = node, plan
        n, c, kh, kw = plan.weight_shape
        self.shape = (n, c, kh, kw)
        self.layout = SharedLayout.from_labels(plan.labels, plan.q)
        self.kernels = np.concatenate([plan.kernels[ch].reshape(-1, kh * kw)
                                       for ch in range(c) if plan.q[ch] > 0]).astype(np.float64)
        self.bias = np.zeros(n) if bias is None else np.asarray(bias, np.float64).reshape(n)
        self.had_bias = bias is not None
        self.attrs = ops.attributes(node, opset)
        slots = self.layout.offsets[None, :] + plan.labels
        slots[plan.labels < 0] = self.layout.slots  # the zero row
        self.index = torch.from_numpy(slots.reshape(-1).astype(np.int64))

    def weight(self, kernels: torch.Tensor) -> torch.Tensor:
        padded = torch.cat([kernels, kernels.new_zeros(1, kernels.shape[1])])
        return padded[self.index].reshape(self.shape)

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        return (torch.from_numpy(self.kernels.astype(np.float32)),
                torch.from_numpy(self.bias.astype(np.float32)))

    def forward(self, x: torch.Tensor, kernels=None, bias=None) -> torch.Tensor:
        if kernels is None:
            kernels, bias = self.tensors()
        return ops.conv([x, self.weight(kernels), bias], self.attrs)

    def patches(self, x: torch.Tensor, at=None) -> torch.Tensor:
        """im2col of ``x``: (C*kh*kw, images*positions), rows in the weight's order,
        made by one copy of strided views (the layout the normal equations multiply).
        ``at``: (image, row, column) index tensors of the only output positions wanted,
        giving (C*kh*kw, len(image))."""
        n, c, kh, kw = self.shape
        (dh, dw), (sh, sw) = self.attrs.get("dilations", [1, 1]), self.attrs.get("strides", [1, 1])
        pads = ops.explicit_pads(self.attrs, x, [kh, kw], [sh, sw], [dh, dw])
        x = F.pad(x, ops.torch_pads(pads)) if any(pads) else x
        # windows as strided views, then one copy (F.unfold is ~15x slower on the CPU)
        views = x.unfold(2, dh * (kh - 1) + 1, sh).unfold(3, dw * (kw - 1) + 1, sw)
        views = views[..., ::dh, ::dw]  # (B, C, Ho, Wo, kh, kw)
        if at is not None:
            image, row, col = at
            return views[image, :, row, col].reshape(len(image), -1).T  # (CD, S)
        return views.permute(1, 4, 5, 0, 2, 3).reshape(c * kh * kw, -1)

    def predict(self, x: torch.Tensor, empty=torch.empty, step: int | None = None
                ) -> torch.Tensor:
        """``forward`` over the calibration images in chunks, in ``x``'s dtype (float16
        when the refit holds activations so), ``step`` images at a time, written into
        ``empty(shape, dtype=)`` (a file on disk when the refit holds there: holding.py)."""
        step = step or (256 if x.dtype == torch.float32 else 32)
        out = None
        for s in range(0, len(x), step):
            part = self.forward(x[s:s + step].float())
            if out is None:  # filled in place: a list of chunks + cat would hold it twice
                out = empty((len(x), *part.shape[1:]), dtype=x.dtype)
            out[s:s + len(part)] = part
        return out

    def errors(self, x: torch.Tensor, target: torch.Tensor,
               floor: torch.Tensor | None = None) -> tuple[float, float | None]:
        """:func:`relative_errors` of the current kernels, predicted a chunk at a time."""
        return relative_errors(lambda a, b: self.forward(x[a:b].float()), target, floor)

    def least_squares(self, x: torch.Tensor, target: torch.Tensor, damping: float,
                      floor: torch.Tensor | None = None, rounds: int = 0,
                      positions: int = 0, seed: int = 0, judge=None) -> Solution:
        """Fit kernels and bias so ``conv(x) ~ target`` (full calibration tensors).

        ``floor``: a ReLU follows, and the output is inactive where ``conv(x) <= floor``
        (0, or minus the student's other residual inputs). Then ``rounds`` more solves
        match the output after the ReLU: where the teacher is inactive (``target <=
        floor``) the target becomes ``min(prediction, floor)``. Since ``relu(u)^2 =
        min_{z <= 0} (u - z)^2``, each round lowers an upper bound of the after-ReLU
        error, and only the cross term H is summed again (G does not change).

        ``positions``: when the calibration images hold more output positions than this
        (images x Ho x Wo), the normal equations are summed over this many of them, drawn
        uniformly without replacement by ``seed`` (the same ones in every round); 0 uses
        all.

        ``judge``: a function of the current kernels giving the error on held-out images;
        the first solve and each round are kept only where they lower it (the solver
        names the one kept)."""
        n, c, kh, kw = self.shape
        eq = NormalEquations(c * kh * kw, n)
        sample = sampled_positions(len(x) * target.shape[2] * target.shape[3], positions,
                                   seed)
        self._accumulate(eq, x, target, with_gram=True, sample=sample)
        problem = SharedLeastSquares(self.layout, eq, kh * kw, damping)
        solution = problem.solve(self.kernels, self.bias)
        self.kernels, self.bias = solution.kernels, solution.bias
        if floor is None or not rounds:
            return solution
        first = solution.solver
        best = (judge(), self.kernels, self.bias, first) if judge else None
        for done in range(1, rounds + 1):
            eq.reset_targets()
            self._accumulate(eq, x, target, with_gram=False, floor=floor, sample=sample)
            problem.retarget()  # A (and its factor) is the same: only the targets moved
            again = problem.solve(self.kernels, self.bias, round_iterations(eq.P, c * kh * kw))
            self.kernels, self.bias = again.kernels, again.bias
            solution.solver = f"{first}, {done} after-ReLU round{'s' * (done > 1)}"
            if best is not None:
                error = judge()
                if error < best[0]:
                    best = (error, self.kernels, self.bias, solution.solver)
            gained = again.objective_before - again.objective_after
            if gained <= ROUND_STALL * again.objective_before:
                break  # the bound no longer falls: further rounds would not move the kernels
        if best is not None and best[3] != solution.solver:
            _, self.kernels, self.bias, kept = best
            solution.solver = f"{solution.solver}; kept {kept.split(', ')[-1]} (held-out)"
        return solution

    def _accumulate(self, eq: NormalEquations, x, target, with_gram: bool,
                    floor: torch.Tensor | None = None,
                    sample: np.ndarray | None = None) -> None:
        """Add batches of patches and targets to ``eq``; with ``floor``, the target is
        relaxed where the teacher is inactive: ``min(prediction, floor)`` there, computed
        batch by batch so no whole-set temporary is made. ``sample``: sorted flat indices
        (image * Ho * Wo + position) of the only positions to add."""
        n, c, kh, kw = self.shape
        positions = target.shape[2] * target.shape[3]
        # per image: the patches and their (CD, B*P) copy; the targets and their copy;
        # after a ReLU also the floor, the prediction and the relaxed target
        width = 2 * c * kh * kw + (5 if floor is not None else 2) * n
        if sample is None:
            step = max(1, _PATCH_ELEMENTS // max(1, positions * width))
        else:  # the sampled patches are few; the batch's targets and inputs are whole
            kept = max(1, len(sample) // len(x))  # sampled positions per image
            whole = (3 if floor is not None else 1) * n * positions + c * x[0, 0].numel()
            step = max(1, min(_PATCH_ELEMENTS // max(1, kept * width),
                              _PATCH_ELEMENTS // max(1, whole)))
        weight = None
        for start in range(0, len(x), step):
            stop = min(start + step, len(x))
            inputs = x[start:stop].float()
            ys = target[start:stop].float()
            low = None if floor is None else _rows(floor, start, step, len(x)).float()
            if sample is None:
                cols = self.patches(inputs)  # (CD, B*P)
                if low is not None:
                    ys = torch.where(ys > low, ys, torch.minimum(self.forward(inputs), low))
                eq.add_batched(cols, ys.transpose(0, 1).reshape(n, -1), with_gram)  # (N, B*P)
                continue
            lo, hi = np.searchsorted(sample, [start * positions, stop * positions])
            if lo == hi:
                continue
            flat = torch.from_numpy(sample[lo:hi] - start * positions)
            image, where = flat // positions, flat % positions
            row, col = where // target.shape[3], where % target.shape[3]
            cols = self.patches(inputs, (image, row, col))  # (CD, S)
            if low is not None:  # a broadcast floor (a scalar, a constant) as a view
                low = torch.broadcast_to(low, ys.shape)[image, :, row, col].T
            ys = ys[image, :, row, col].T  # (N, S)
            if low is not None:
                if weight is None:
                    kernels, bias = self.tensors()
                    weight = (self.weight(kernels).reshape(n, -1), bias[:, None])
                predicted = torch.addmm(weight[1], weight[0], cols)
                ys = torch.where(ys > low, ys, torch.minimum(predicted, low))
            eq.add_batched(cols, ys.contiguous(), with_gram)

    def commit(self) -> np.ndarray:
        """Write the kernels into the plan (codes unchanged); returns the bias."""
        plan = self.plan
        n, c, kh, kw = self.shape
        dtype = plan.w_hat.dtype
        for ch in range(c):
            q = int(plan.q[ch])
            if q:
                start = int(self.layout.offsets[ch])
                plan.kernels[ch] = self.kernels[start:start + q].reshape(q, kh, kw).astype(dtype)
        plan.w_hat = effective_weight(plan.weight_shape, dtype, plan.labels, plan.kernels)
        return self.bias.astype(dtype)


def sampled_positions(total: int, wanted: int, seed: int) -> np.ndarray | None:
    """Sorted flat indices of ``wanted`` of ``total`` positions, drawn without replacement
    by ``seed``; None (use all) when ``wanted`` is 0 or not below ``total``."""
    if not wanted or wanted >= total:
        return None
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(total, size=wanted, replace=False))


class ChunkedSum:
    """``sum_i sign_i * terms_i`` over the calibration images, never formed whole: indexing
    it with a slice of images computes that slice in float32. A residual Conv's target
    (the teacher's Add output minus the student's other inputs) and its ReLU floor are
    such sums; holding them whole would cost two more whole-set tensors per fit."""

    def __init__(self, terms: list[tuple[float, torch.Tensor]]):
        self.terms = terms
        self.shape = torch.broadcast_shapes(*(term.shape for _, term in terms))

    def __len__(self) -> int:
        return self.shape[0]

    def dim(self) -> int:
        return len(self.shape)

    def rows(self, start: int, stop: int) -> ChunkedSum:
        """The same sum over images ``start:stop`` only (views of the terms)."""
        return ChunkedSum([(sign, image_rows(term, start, stop, len(self)))
                           for sign, term in self.terms])

    def __getitem__(self, rows) -> torch.Tensor:
        out = None
        for sign, term in self.terms:
            part = (term[rows] if term.dim() == len(self.shape) and term.shape[0] == len(self)
                    else term).float()
            part = part if sign > 0 else -part
            out = part if out is None else out + part  # never in place: part may be a term
        return out


def image_rows(value, start: int, stop: int, images: int):
    """Images ``start:stop`` of a whole-set tensor or :class:`ChunkedSum` (a view), a
    broadcast value (or None) as it is."""
    if isinstance(value, ChunkedSum):
        return value.rows(start, stop)
    if value is None or not value.dim() or value.shape[0] != images:
        return value
    if hasattr(value, "rows"):  # held on disk: a view, not read into memory
        return value.rows(start, stop)
    return value[start:stop]


def _rows(value: torch.Tensor, start: int, step: int, images: int) -> torch.Tensor:
    """Images ``start:start+step`` of a whole-set tensor; a broadcast value as it is."""
    return value[start:start + step] if value.dim() and value.shape[0] == images else value


def _chunk(value: torch.Tensor) -> int:
    """Images per chunk so that one chunk of ``value`` holds about _CHUNK_ELEMENTS."""
    per_image = value[:1].numel() if value.dim() else 1
    return max(1, _CHUNK_ELEMENTS // max(1, per_image))


def relative_error(out, target: torch.Tensor, floor: torch.Tensor | None = None) -> float:
    """``||out - target|| / ||target||``, summed in float32 over chunks of images; with
    ``floor``, of ``relu(out - floor)`` against ``relu(target - floor)`` (the error after
    the activation). ``out`` is a whole-set tensor, or a function of (start, stop) giving
    those images' outputs (so no whole-set prediction need be held)."""
    plain, after = relative_errors(out, target, floor)
    return plain if floor is None else after


def relative_errors(out, target: torch.Tensor, floor: torch.Tensor | None = None
                    ) -> tuple[float, float | None]:
    """(the error before the activation, after it or None without ``floor``) of
    :func:`relative_error`, from one pass over ``out``."""
    sums = np.zeros(4)  # |o - t|^2, |t|^2, after the activation: the same two
    step = _chunk(target)
    for start in range(0, len(target), step):
        stop = start + step
        o = out(start, stop) if callable(out) else out[start:stop]
        o, t = o.float(), target[start:stop].float()
        sums[0] += float(torch.linalg.vector_norm(o - t)) ** 2
        sums[1] += float(torch.linalg.vector_norm(t)) ** 2
        if floor is not None:
            low = _rows(floor, start, step, len(target)).float()
            o, t = torch.relu(o - low), torch.relu(t - low)
            sums[2] += float(torch.linalg.vector_norm(o - t)) ** 2
            sums[3] += float(torch.linalg.vector_norm(t)) ** 2
    plain = (sums[0] / max(sums[1], 1e-30)) ** 0.5
    return plain, None if floor is None else (sums[2] / max(sums[3], 1e-30)) ** 0.5

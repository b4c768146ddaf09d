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
# The after-ReLU rounds keep the sampled patches, targets and floors of their first round
# (not re-read from the walk's held activations by every round) when they take at most
# this many bytes.
_ROUND_CACHE_BYTES = 768 * 2**20
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
        all. The sampled patches, targets and floors are then read from the activations
        once and kept for the rounds when they take at most _ROUND_CACHE_BYTES.

        ``judge``: a function of the current kernels giving the error on held-out images;
        the first solve and each round are kept only where they lower it (the solver
        names the one kept)."""
        n, c, kh, kw = self.shape
        eq = NormalEquations(c * kh * kw, n)
        sample = sampled_positions(len(x) * target.shape[2] * target.shape[3], positions,
                                   seed)
        relaxed = floor is not None and rounds > 0
        cache = ([] if relaxed and sample is not None
                 and sampled_bytes(len(sample), c * kh * kw, n) <= _ROUND_CACHE_BYTES else None)
        if cache is not None:  # the floors read now, with the patches, for the rounds
            cache.extend(self.sampled_batches(x, target, floor, sample))
            for cols, ys, _ in cache:
                eq.add_batched(cols, ys.contiguous(), True)
        else:
            self._accumulate(eq, x, target, with_gram=True, sample=sample)
        problem = SharedLeastSquares(self.layout, eq, kh * kw, damping)
        solution = problem.solve(self.kernels, self.bias)
        self.kernels, self.bias = solution.kernels, solution.bias
        if not relaxed:
            return solution
        first = solution.solver
        best = (judge(), self.kernels, self.bias, first) if judge else None
        for done in range(1, rounds + 1):
            eq.reset_targets()
            if cache is not None:
                self._add_relaxed(eq, cache)
            else:
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
        if sample is not None:
            weight = self._matrix() if floor is not None else None
            for cols, ys, low in self.sampled_batches(x, target, floor, sample):
                if low is not None:
                    ys = _relaxed(ys, low, torch.addmm(weight[1], weight[0], cols))
                eq.add_batched(cols, ys.contiguous(), with_gram)
            return
        n = self.shape[0]
        step = self._step(x, target, floor, None)
        for start in range(0, len(x), step):
            inputs = x[start:start + step].float()
            ys = target[start:start + step].float()
            cols = self.patches(inputs)  # (CD, B*P)
            if floor is not None:
                low = _rows(floor, start, step, len(x)).float()
                ys = torch.where(ys > low, ys, torch.minimum(self.forward(inputs), low))
            eq.add_batched(cols, ys.transpose(0, 1).reshape(n, -1), with_gram)  # (N, B*P)

    def _step(self, x, target, floor, sample) -> int:
        """Images per batch of :meth:`_accumulate`, its temporaries within _PATCH_ELEMENTS."""
        n, c, kh, kw = self.shape
        positions = target.shape[2] * target.shape[3]
        # per image: the patches and their (CD, B*P) copy; the targets and their copy;
        # after a ReLU also the floor, the prediction and the relaxed target
        width = 2 * c * kh * kw + (5 if floor is not None else 2) * n
        if sample is None:
            return max(1, _PATCH_ELEMENTS // max(1, positions * width))
        # the sampled patches are few; the batch's targets and inputs are whole
        kept = max(1, len(sample) // len(x))  # sampled positions per image
        whole = (3 if floor is not None else 1) * n * positions + c * x[0, 0].numel()
        return max(1, min(_PATCH_ELEMENTS // max(1, kept * width),
                          _PATCH_ELEMENTS // max(1, whole)))

    def sampled_batches(self, x, target, floor, sample: np.ndarray):
        """Per batch of images holding sampled positions: (their patches (CD, S), the
        targets there (N, S), the floors there (N, S) or None without ``floor``)."""
        positions = target.shape[2] * target.shape[3]
        step = self._step(x, target, floor, sample)
        for start in range(0, len(x), step):
            stop = min(start + step, len(x))
            lo, hi = np.searchsorted(sample, [start * positions, stop * positions])
            if lo == hi:
                continue
            ys = target[start:stop].float()
            flat = torch.from_numpy(sample[lo:hi] - start * positions)
            image, where = flat // positions, flat % positions
            row, col = where // target.shape[3], where % target.shape[3]
            cols = self.patches(x[start:stop].float(), (image, row, col))  # (CD, S)
            low = None
            if floor is not None:  # a broadcast floor (a scalar, a constant) as a view
                low = _rows(floor, start, step, len(x)).float()
                low = torch.broadcast_to(low, ys.shape)[image, :, row, col].T
            yield cols, ys[image, :, row, col].T, low  # (N, S)

    def _matrix(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(the weight as an (N, C*kh*kw) matrix, the bias as a column) in float32."""
        kernels, bias = self.tensors()
        return self.weight(kernels).reshape(self.shape[0], -1), bias[:, None]

    def _add_relaxed(self, eq: NormalEquations, cache: list) -> None:
        """A round's target sums from the cached batches of sampled (patches, targets,
        floors)."""
        weight, bias = self._matrix()
        for cols, ys, low in cache:
            eq.add_batched(cols, _relaxed(ys, low, torch.addmm(bias, weight, cols)), False)

    def sampled_errors(self, batches: list) -> tuple[float, float | None]:
        """:func:`relative_errors` of the current kernels over cached sampled batches
        (:meth:`sampled_batches`) instead of whole images."""
        weight, bias = self._matrix()
        sums = np.zeros(4)
        for cols, ys, low in batches:
            _add_error_sums(sums, torch.addmm(bias, weight, cols), ys, low)
        return _error_ratios(sums, batches[0][2] is not None if batches else False)

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


def _relaxed(target: torch.Tensor, floor: torch.Tensor, predicted: torch.Tensor
             ) -> torch.Tensor:
    """The after-ReLU round's target: the teacher's where it is active (above ``floor``),
    else ``min(prediction, floor)``."""
    return torch.where(target > floor, target, torch.minimum(predicted, floor)).contiguous()


def sampled_bytes(positions: int, columns: int, filters: int) -> int:
    """Bytes of ``positions`` sampled patches of ``columns`` values with their targets and
    floors for ``filters`` outputs, in float32."""
    return positions * (columns + 2 * filters) * 4


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
        low = None if floor is None else _rows(floor, start, step, len(target)).float()
        _add_error_sums(sums, o.float(), target[start:stop].float(), low)
    return _error_ratios(sums, floor is not None)


def _add_error_sums(sums: np.ndarray, o: torch.Tensor, t: torch.Tensor,
                    low: torch.Tensor | None) -> None:
    """Add ``|o - t|^2`` and ``|t|^2`` to ``sums[:2]``; with ``low``, the same after the
    activation to ``sums[2:]``."""
    sums[0] += float(torch.linalg.vector_norm(o - t)) ** 2
    sums[1] += float(torch.linalg.vector_norm(t)) ** 2
    if low is not None:
        o, t = torch.relu(o - low), torch.relu(t - low)
        sums[2] += float(torch.linalg.vector_norm(o - t)) ** 2
        sums[3] += float(torch.linalg.vector_norm(t)) ** 2


def _error_ratios(sums: np.ndarray, activated: bool) -> tuple[float, float | None]:
    plain = (sums[0] / max(sums[1], 1e-30)) ** 0.5
    return plain, (sums[2] / max(sums[3], 1e-30)) ** 0.5 if activated else None

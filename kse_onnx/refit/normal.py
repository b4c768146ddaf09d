"""Least squares for one compressed Conv with its codes fixed (docs/refit.md, "ls").

Unknowns: the shared kernels ``K[s]`` (one slot ``s = offset_c + j`` per kept kernel
``j`` of input channel ``c``, ``D = kh*kw`` values each) and the bias ``b``. With
``labels[n, c]`` fixed, output filter n's weight row is ``w_n = (K[slot(n, c)])_c`` and

    minimise  sum_n sum_p (y[n, p] - w_n . x_p - b_n)^2

over all output positions p (im2col patches ``x_p`` of length ``C*D``). Its normal
equations only need the patch statistics, summed batch by batch in float64 so memory
does not grow with the number of images:

    G = sum_p x_p x_p^T  (CD x CD),  H = sum_p x_p y_p^T  (CD x N),
    s = sum_p x_p,  y_sum = sum_p y_p,  yy = sum_p |y_p|^2,  P = number of patches.

``A theta`` never needs the full matrix: expand ``theta`` to the dense weight W (N, CD),
form ``Z = W G + b s^T``, and sum Z's rows into the slots by code (``S``, a 0/1 sparse
matrix from (n, c) pairs to slots); the bias rows are ``W s + P b``. Small layers build
A explicitly (``A[(s,d),(s',d')] = M[s,s'] G[c(s)d, c(s')d']`` with ``M = OH^T OH`` the
code co-occurrence counts) and solve it by Cholesky; larger ones run preconditioned
conjugate gradients from the clustered kernels, preconditioned by the inverse the
normal matrix would have without sharing (:meth:`SharedLeastSquares._preconditioner`).
Both minimise the same damped objective; CG's iterates never increase it.
Damping: ``lambda = damping * mean(diag A)`` added to the diagonal (default 1e-6).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.linalg
import scipy.sparse

# Unknowns up to which A is built and factored (A takes EXACT_MAX^2 float64 values).
EXACT_MAX = 3000
PCG_MAX_ITER = 300
# An after-ReLU round starts from the previous round's solution and only follows its moved
# targets; on the widest layers (ResNet-50's last 3x3s: 1M unknowns, a third of a second
# per iteration) an uncapped round ran the full 300 iterations for a 0.1% lower bound.
# So a round's iterations cost at most about what its pass over the images does (an
# iteration ~ 2 N (CD)^2 operations, the pass ~ 2 P CD N: P / CD iterations), and at
# least PCG_ROUND_ITER are allowed.
PCG_ROUND_ITER = 30


def round_iterations(patches: int, cd: int) -> int:
    """Conjugate-gradient iterations allowed in one after-ReLU round."""
    return min(PCG_MAX_ITER, max(PCG_ROUND_ITER, patches // max(cd, 1)))
PCG_RTOL = 1e-5  # of the right-hand side's norm
PCG_STALL = 1e-4  # an iteration lowering the objective by less than this share of it stops


@dataclass
class SharedLayout:
    """Where each (n, c) weight kernel reads its shared kernel from."""

    labels: np.ndarray  # (N, C), -1 for pruned channels
    offsets: np.ndarray  # (C,) first slot of channel c
    counts: np.ndarray  # (C,) q_c
    slot_channel: np.ndarray  # (U,) channel of each slot
    slot_uses: np.ndarray  # (U,) how many filters use each slot
    select: scipy.sparse.csr_matrix  # (U, N*C) 0/1: slot <- (n, c)

    @classmethod
    def from_labels(cls, labels: np.ndarray, q: np.ndarray) -> SharedLayout:
        n, c = labels.shape
        counts = np.asarray(q, np.int64)
        offsets = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
        slots = np.repeat(np.arange(c)[None], n, 0)
        valid = labels >= 0
        rows = (offsets[slots] + labels)[valid]
        cols = (np.arange(n)[:, None] * c + np.arange(c)[None])[valid]
        u = int(counts.sum())
        select = scipy.sparse.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(u, n * c))
        uses = np.bincount(rows, minlength=u)
        return cls(labels, offsets, counts, np.repeat(np.arange(c), counts), uses, select)

    @property
    def slots(self) -> int:
        return int(self.counts.sum())

    def expand(self, kernels: np.ndarray) -> np.ndarray:
        """Dense weight (N, C, D) of slot values ``kernels`` (U, D); zeros where pruned."""
        n, c = self.labels.shape
        return np.asarray(self.select.T @ kernels).reshape(n, c, -1)

    def gather(self, per_nc: np.ndarray) -> np.ndarray:
        """Sum (N, C, D) values into their slots: (U, D)."""
        n, c, d = per_nc.shape
        return np.asarray(self.select @ per_nc.reshape(n * c, d))

    def kernels_of(self, weight: np.ndarray) -> np.ndarray:
        """Slot values read from a dense weight (N, C, D) that respects the sharing."""
        return self.gather(weight) / np.maximum(self.slot_uses, 1)[:, None]


class NormalEquations:
    """Patch statistics of one layer, accumulated batch by batch in float64."""

    def __init__(self, cd: int, n: int):
        self.G = np.zeros((cd, cd))
        self.H = np.zeros((cd, n))
        self.s = np.zeros(cd)
        self.y_sum = np.zeros(n)
        self.yy = 0.0
        self.P = 0

    def reset_targets(self) -> None:
        """Forget the target terms (H, y_sum, yy), keep the patch terms (G, s, P)."""
        self.H[:] = 0
        self.y_sum[:] = 0
        self.yy = 0.0

    def add_batched(self, cols, ys, with_gram: bool = True) -> None:
        """torch tensors ``cols`` (CD, B*P) and ``ys`` (N, B*P): a batch's patches and
        targets, one float32 BLAS product each (per-image products would take B*CD^2
        values, 12 GB for ResNet-50's last convs), added to the float64 totals;
        ``with_gram=False`` adds the target terms only."""
        import torch  # the refit's walk runs in torch; verify uses this module without it

        if with_gram:
            self.G += (cols @ cols.T).double().numpy()
            self.s += cols.sum(1).double().numpy()  # torch sums pairwise: float32 is enough
            self.P += cols.shape[1]
        self.H += (cols @ ys.T).double().numpy()
        self.y_sum += ys.sum(1).double().numpy()
        self.yy += float(torch.linalg.vector_norm(ys).double() ** 2)

    def add(self, patches: np.ndarray, targets: np.ndarray) -> None:
        """``patches`` (P, CD) and ``targets`` (P, N), float32 or float64."""
        self.G += (patches.T @ patches).astype(np.float64)
        self.H += (patches.T @ targets).astype(np.float64)
        self.s += patches.sum(0, dtype=np.float64)
        self.y_sum += targets.sum(0, dtype=np.float64)
        self.yy += float(np.square(targets, dtype=np.float64).sum())
        self.P += len(patches)


@dataclass
class Solution:
    kernels: np.ndarray  # (U, D)
    bias: np.ndarray  # (N,)
    solver: str
    objective_before: float  # damped-free sum of squared errors at the start
    objective_after: float


class SharedLeastSquares:
    """The normal equations of one layer under a fixed code layout."""

    def __init__(self, layout: SharedLayout, eq: NormalEquations, kernel_size: int,
                 damping: float):
        self.layout, self.eq, self.d = layout, eq, kernel_size
        n, c = layout.labels.shape
        self.n, self.c = n, c
        diag_g = np.diag(eq.G).reshape(c, kernel_size)
        diag = np.concatenate([(layout.slot_uses[:, None] * diag_g[layout.slot_channel]).ravel(),
                               np.full(n, float(eq.P))])
        self.damping = damping * max(float(diag.mean()), 1e-30)
        self._factor = None  # A's Cholesky factor (exact solver), kept for new targets
        self._unshared_inverse = None  # the preconditioner (conjugate gradients), kept too
        self._g32 = None  # G in float32 for conjugate gradients' products
        self.retarget()

    def retarget(self) -> None:
        """Read the right-hand side again after ``eq``'s target terms changed (the patch
        terms, hence A and its factor, stay)."""
        n, c = self.n, self.c
        self.rhs_k = self.layout.gather(self.eq.H.T.reshape(n, c, self.d))
        self.rhs_b = self.eq.y_sum

    @property
    def unknowns(self) -> int:
        return self.layout.slots * self.d + self.n

    def apply(self, k: np.ndarray, b: np.ndarray, damped: bool = True, single: bool = False):
        """(A k_b) in (kernels, bias) form. ``single``: the product with G, which costs
        N*(CD)^2 and dominates, in float32 (conjugate gradients' iterations; the
        objective and the residual it starts from stay in float64)."""
        w = self.layout.expand(k).reshape(self.n, -1)
        if single:
            if self._g32 is None:
                self._g32 = self.eq.G.astype(np.float32)
            wg = (w.astype(np.float32) @ self._g32).astype(np.float64)
        else:
            wg = w @ self.eq.G
        z = wg + np.outer(b, self.eq.s)
        out_k = self.layout.gather(z.reshape(self.n, self.c, self.d))
        out_b = w @ self.eq.s + self.eq.P * b
        if damped:
            out_k = out_k + self.damping * k
            out_b = out_b + self.damping * b
        return out_k, out_b

    def objective(self, k: np.ndarray, b: np.ndarray) -> float:
        """Sum of squared errors ``sum |y - W x - b|^2`` over the accumulated patches."""
        ak, ab = self.apply(k, b, damped=False)
        value = (np.vdot(k, ak) + np.vdot(b, ab) - 2 * np.vdot(k, self.rhs_k)
                 - 2 * np.vdot(b, self.rhs_b) + self.eq.yy)
        return max(float(value), 0.0)

    def solve(self, k0: np.ndarray, b0: np.ndarray, max_iter: int = PCG_MAX_ITER) -> Solution:
        """The damped least squares from (k0, b0): exact for small layers, else at most
        ``max_iter`` conjugate-gradient iterations; never worse than (k0, b0)."""
        before = self.objective(k0, b0)
        if self.unknowns <= EXACT_MAX:
            k, b, solver = *self._exact(), "exact (Cholesky)"
        else:
            k, b, iters = self._pcg(k0, b0, before, max_iter)
            solver = f"conjugate gradients ({iters} iterations)"
        after = self.objective(k, b)
        if not (np.all(np.isfinite(k)) and np.all(np.isfinite(b)) and after <= before):
            return Solution(k0, b0, "kept the clustered kernels (no improvement)", before,
                            before)
        return Solution(k, b, solver, before, after)

    def _preconditioner(self):
        """``M = U^-1 S (I_N x Ga^-1) S^T U^-1``: the inverse the normal matrix would have
        with no sharing (every filter its own kernels: ``I_N x Ga``, with ``Ga`` the Gram
        matrix of the kept channels' patches and a 1 for the bias), mapped to the slots
        (``S``: slot -> its (n, c) places, ``U``: each slot's uses). It is exact when no
        kernel is shared (and, but for the biases, when one kernel serves a whole
        channel), and unlike a per-slot block it keeps the correlation between channels.
        One application costs a product with ``Ga^-1``, as much as an iteration's with G."""
        if self._unshared_inverse is None:
            d = self.d
            kept = np.flatnonzero(self.layout.counts > 0)
            cols = (kept[:, None] * d + np.arange(d)[None]).ravel()
            gram = np.empty((len(cols) + 1, len(cols) + 1))
            gram[:-1, :-1] = self.eq.G[np.ix_(cols, cols)]
            gram[:-1, -1] = gram[-1, :-1] = self.eq.s[cols]
            gram[-1, -1] = self.eq.P
            gram[np.diag_indices_from(gram)] += max(
                self.damping, 1e-6 * float(np.mean(np.diag(gram))), 1e-30)
            factor, info = scipy.linalg.lapack.dpotrf(gram, lower=1)
            if info == 0:
                inverse, info = scipy.linalg.lapack.dpotri(factor, lower=1)
            if info == 0:  # dpotri fills the lower triangle
                inverse = np.tril(inverse) + np.tril(inverse, -1).T
            else:
                inverse = np.linalg.pinv(gram, hermitian=True)
            self._unshared_inverse = (kept, inverse.astype(np.float32))
        kept, inverse = self._unshared_inverse
        uses = np.maximum(self.layout.slot_uses, 1)[:, None]
        n = self.n

        def precondition(rk, rb):
            spread = self.layout.expand(rk / uses)[:, kept].reshape(n, -1)  # S^T U^-1 r
            z = (np.hstack([spread, rb[:, None]]).astype(np.float32) @ inverse).astype(
                np.float64)
            full = np.zeros((n, self.c, self.d))
            full[:, kept] = z[:, :-1].reshape(n, len(kept), self.d)
            return self.layout.gather(full) / uses, z[:, -1]

        return precondition

    def _matrix(self) -> np.ndarray:
        """A, damped, built explicitly (small layers)."""
        lay, d, n = self.layout, self.d, self.n
        u = lay.slots
        onehot = np.zeros((n, u))
        rows, cols = np.nonzero(lay.labels >= 0)
        onehot[rows, lay.offsets[cols] + lay.labels[rows, cols]] = 1.0
        co = onehot.T @ onehot  # (U, U) code co-occurrence counts
        g4 = self.eq.G.reshape(self.c, d, self.c, d)
        gsel = g4[lay.slot_channel][:, :, lay.slot_channel]  # (U, D, U, D)
        a_kk = (co[:, None, :, None] * gsel).reshape(u * d, u * d)
        s2 = self.eq.s.reshape(self.c, d)[lay.slot_channel]  # (U, D)
        a_kb = (onehot.T[:, None, :] * s2[:, :, None]).reshape(u * d, n)
        a = np.block([[a_kk, a_kb], [a_kb.T, self.eq.P * np.eye(n)]])
        a[np.diag_indices_from(a)] += self.damping
        return a

    def _exact(self):
        u, d = self.layout.slots, self.d
        rhs = np.concatenate([self.rhs_k.ravel(), self.rhs_b])
        if self._factor is None:
            a = self._matrix()
            try:
                self._factor = ("cholesky", scipy.linalg.cho_factor(a, check_finite=False))
            except (np.linalg.LinAlgError, ValueError):
                self._factor = ("lstsq", a)
        kind, factor = self._factor
        if kind == "cholesky":
            x = scipy.linalg.cho_solve(factor, rhs, check_finite=False)
        else:
            x = scipy.linalg.lstsq(factor, rhs, check_finite=False)[0]
        return x[:u * d].reshape(u, d), x[u * d:]

    def _pcg(self, k, b, objective: float, max_iter: int):
        """Preconditioned conjugate gradients from (k, b), whose undamped objective is
        ``objective``."""
        precondition = self._preconditioner()
        ak, ab = self.apply(k, b)
        rk, rb = self.rhs_k - ak, self.rhs_b - ab
        zk, zb = precondition(rk, rb)
        pk, pb = zk.copy(), zb.copy()
        rz = np.vdot(rk, zk) + np.vdot(rb, zb)
        # Stop on the right-hand side's norm (a warm start from the previous round
        # needs fewer iterations), or when an iteration lowers the objective by less
        # than PCG_STALL of its current value. (A share of the fall so far, the rule
        # before, stopped the first solve at 1.16x the optimal objective, since the
        # clustering's large first error dominated that fall, and let the after-ReLU
        # rounds, whose whole fall is small, run 300 iterations.)
        norm_rhs = np.sqrt(np.vdot(self.rhs_k, self.rhs_k) + np.vdot(self.rhs_b, self.rhs_b))
        gained = 0.0
        iters = 0
        for iters in range(1, max_iter + 1):  # noqa: B007
            qk, qb = self.apply(pk, pb, single=True)
            pq = np.vdot(pk, qk) + np.vdot(pb, qb)
            if pq <= 0:
                break
            alpha = rz / pq
            k, b = k + alpha * pk, b + alpha * pb
            rk, rb = rk - alpha * qk, rb - alpha * qb
            step_gain = alpha * rz  # the objective sum|y - Wx - b|^2 fell by this much
            gained += step_gain
            if (np.sqrt(np.vdot(rk, rk) + np.vdot(rb, rb)) <= PCG_RTOL * norm_rhs
                    or step_gain <= PCG_STALL * (objective - gained)):
                break
            zk, zb = precondition(rk, rb)
            rz_new = np.vdot(rk, zk) + np.vdot(rb, zb)
            pk, pb = zk + (rz_new / rz) * pk, zb + (rz_new / rz) * pb
            rz = rz_new
        return k, b, iters

"""``dense``: a compressed Conv becomes one Conv over its kept input channels, weight W_hat."""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from ..analysis.plan import LayerPlan


def rewrite(node: gs.Node, x, plan: LayerPlan, keep: np.ndarray) -> None:
    """Point ``node`` at input ``x`` (channels ``keep``) with weight ``W_hat[:, keep]``."""
    node.inputs[0] = x
    node.inputs[1] = gs.Constant(f"{node.name}_kse_weight",
                                 np.ascontiguousarray(plan.w_hat[:, keep]))

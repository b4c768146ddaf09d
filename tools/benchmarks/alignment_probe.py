"""Does a Conv reading k of c channels run faster than reading all c? The measurement
behind ``auto``'s alignments (README, "What to expect").

    python -m tools.benchmarks.alignment_probe [--repeats 40]

Each graph is Conv(c->k) -> Relu -> Conv(k->c) -> Relu -> Conv(c->c), so the middle Conv
reads k channels between two Convs, as in a network; all k for one (c, H*W, batch) run
interleaved, 1 thread, as ratios to k = c.
"""

from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from kse_onnx.runtime.bench import interleaved_latency
from tools import common


def chain(c: int, k: int, hw: int):
    rng = np.random.default_rng(0)
    shapes = {"w1": (k, c), "w2": (c, k), "w3": (c, c)}
    inits = [numpy_helper.from_array(rng.standard_normal((*s, 3, 3)).astype(np.float32), n)
             for n, s in shapes.items()]
    nodes = [helper.make_node("Conv", ["x", "w1"], ["a"], pads=[1] * 4),
             helper.make_node("Relu", ["a"], ["b"]),
             helper.make_node("Conv", ["b", "w2"], ["c"], pads=[1] * 4),
             helper.make_node("Relu", ["c"], ["d"]),
             helper.make_node("Conv", ["d", "w3"], ["y"], pads=[1] * 4)]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", c, hw, hw])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", c, hw, hw])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def main() -> None:
    parser = common.parser(__doc__)
    parser.add_argument("--repeats", type=int, default=40)
    args = parser.parse_args()
    common.print_header(f"{args.repeats} interleaved repeats, 1 thread")
    for c, hw in ((16, 32), (32, 16), (64, 8), (256, 14)):
        for batch in (1, 64):
            counts = [c] + sorted({k for k in (c - 16, c - 8, c - 5, c - 4, c - 3) if k > 0})
            models = {f"k{k}": chain(c, k, hw) for k in counts}
            timings = interleaved_latency(models, batch, 1, args.repeats)
            print(f"c={c} {hw}x{hw} batch {batch}: "
                  + " ".join(f"{t.label} {t.ratio:.2f}" for t in timings), flush=True)


if __name__ == "__main__":
    main()

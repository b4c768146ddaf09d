"""Speed of the KSE analysis (scoring + clustering) on this machine.

    python -m tools.benchmarks.analysis_speed [--quick]

1. one 512x512x3x3 layer at G=4,T=0 (target: under 2 s);
2. every conv of ResNet-50 (torchvision layout, 53 convs, shapes from the
   architecture, random weights) at G=5,T=1 (target: under 30 s, peak memory < 2 GB);
3. side by side with a plain per-channel scikit-learn implementation (NearestNeighbors
   per channel, KMeans(n_init=10) per clustered channel, as the authors' code does) on
   a few layers, interleaved, reporting the time ratio and the k-means objective ratio.
"""

from __future__ import annotations

import resource
import statistics
import time

import numpy as np
from sklearn.cluster import KMeans
from sklearn.neighbors import NearestNeighbors

from kse_onnx.analysis import kse
from kse_onnx.analysis.plan import plan_layer
from kse_onnx.options import KSEOptions
from tools import common


def resnet50_conv_shapes() -> list[tuple[str, tuple[int, int, int, int]]]:
    shapes = [("conv1", (64, 3, 7, 7))]
    c = 64
    for stage, (width, blocks) in enumerate(((64, 3), (128, 4), (256, 6), (512, 3)), 1):
        for b in range(blocks):
            name = f"layer{stage}.{b}"
            shapes += [(f"{name}.conv1", (width, c, 1, 1)), (f"{name}.conv2", (width, width, 3, 3)),
                       (f"{name}.conv3", (4 * width, width, 1, 1))]
            if b == 0:
                shapes.append((f"{name}.downsample", (4 * width, c, 1, 1)))
            c = 4 * width
    return shapes


def random_weight(shape, rng) -> np.ndarray:
    fan_in = shape[1] * shape[2] * shape[3]
    return (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def sklearn_reference(weight, levels, q, options: KSEOptions) -> np.ndarray:
    """The authors' way: per channel neighbour queries and per channel KMeans."""
    n, c = weight.shape[:2]
    sets = kse.channel_kernel_sets(weight)
    for s in sets:  # entropy: K+1 neighbours per kernel, one channel at a time
        NearestNeighbors(n_neighbors=options.knn_k + 1).fit(s).kneighbors(s)
    w_hat = np.zeros_like(weight)
    for ch in range(c):
        if q[ch] == n:
            w_hat[:, ch] = weight[:, ch]
        elif q[ch] > 0:
            km = KMeans(n_clusters=int(q[ch]), n_init=10, random_state=0).fit(sets[ch])
            w_hat[:, ch] = km.cluster_centers_[km.labels_].reshape(weight[:, ch].shape)
    return w_hat


def objective(weight, w_hat, q) -> float:
    mask = (q > 0) & (q < weight.shape[0])
    return float(((weight - w_hat)[:, mask].astype(np.float64) ** 2).sum())


def main() -> None:
    parser = common.parser(__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer layers, no 128x128 reference")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    common.print_header()

    w = random_weight((512, 512, 3, 3), rng)
    runs = [timed(lambda: plan_layer(w, KSEOptions(G=4, T=0), key="big"))[1] for _ in range(3)]
    seconds = statistics.median(runs)
    print(f"512x512x3x3 at G=4,T=0: median {seconds:.2f} s of 3 runs "
          f"({', '.join(f'{r:.2f}' for r in runs)}) "
          f"({'PASS' if seconds < 2 else 'MISS'} target < 2 s)")

    shapes = resnet50_conv_shapes()[: 20 if args.quick else None]
    total, options = 0.0, KSEOptions(G=5, T=1)
    print(f"\nResNet-50, {len(shapes)} convs at G=5,T=1:")
    for name, shape in shapes:
        plan, seconds = timed(lambda s=shape, n=name: plan_layer(random_weight(s, rng), options,
                                                                 key=n))
        total += seconds
        hist = np.bincount(plan.levels, minlength=5).tolist()
        print(f"  {name:22s} {str(shape):22s} {seconds:6.2f} s  levels {hist}"
              + (f"  ({plan.reason})" if plan.reason else ""))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"total {total:.1f} s ({'PASS' if total < 30 else 'MISS'} target < 30 s), "
          f"peak RSS {peak:.0f} MB ({'PASS' if peak < 2048 else 'MISS'} target < 2 GB)")

    print("\nside by side with per-channel scikit-learn (G=4,T=0; median of interleaved runs):")
    layers = [(64, 32, 3, 3), (64, 64, 3, 3)] + ([] if args.quick else [(128, 128, 3, 3)])
    for shape in layers:
        weight = random_weight(shape, rng)
        ours_t, ref_t = [], []
        for _ in range(2):
            plan, t = timed(lambda wt=weight: plan_layer(wt, KSEOptions(), key="x"))
            ours_t.append(t)
            ref, t = timed(lambda wt=weight, p=plan: sklearn_reference(wt, p.levels, p.q,
                                                                      KSEOptions()))
            ref_t.append(t)
        ours, theirs = statistics.median(ours_t), statistics.median(ref_t)
        ratio = objective(weight, plan.w_hat, plan.q) / objective(weight, ref, plan.q)
        print(f"  {str(shape):18s} ours {ours:6.3f} s, sklearn {theirs:6.2f} s, "
              f"speed-up {theirs / ours:5.0f}x, k-means objective ours/sklearn {ratio:.3f}")


if __name__ == "__main__":
    main()

"""Same model, options and seed: byte-identical output across runs, processes, thread
counts (ours and BLAS's) and hash seeds."""

from __future__ import annotations

import os
import subprocess
import sys

import onnx
import pytest

from graphs import branchy_net, residual_net


@pytest.mark.parametrize("lowering, extra", [("dense", []), ("compact", []),
                                             ("factored", ["--kmeans-init", "k-means++"])])
def test_byte_identical_across_processes_and_threads(tmp_path, lowering, extra):
    src = tmp_path / "in.onnx"
    onnx.save(residual_net(40), src)
    outputs = []
    for threads, hash_seed in (("1", "1"), ("2", "2"), ("2", "3")):
        dst = tmp_path / f"out_{threads}_{hash_seed}.onnx"
        env = {**os.environ, "KSE_ONNX_THREADS": threads, "OPENBLAS_NUM_THREADS": threads,
               "OMP_NUM_THREADS": threads, "PYTHONHASHSEED": hash_seed}
        subprocess.run([sys.executable, "-m", "kse_onnx.cli", "optimize", str(src), str(dst),
                        "--lowering", lowering, "--G", "5", "--T", "1", *extra],
                       check=True, env=env, capture_output=True)
        outputs.append(dst.read_bytes())
    assert outputs[0] == outputs[1] == outputs[2]


def test_seed_changes_kmeanspp_output(tmp_path):
    from kse_onnx.api import optimize
    from kse_onnx.options import KSEOptions

    src = tmp_path / "in.onnx"
    onnx.save(branchy_net(24), src)
    data = []
    for seed in (0, 1):
        dst = tmp_path / f"s{seed}.onnx"
        optimize(src, dst, KSEOptions(kmeans_init="k-means++", seed=seed))
        data.append(dst.read_bytes())
    assert data[0] != data[1]

"""The one interpreter (kse_onnx/onnx_torch/interpreter.py): a node range, overrides and
every intermediate tensor, checked against onnxruntime; unmappable nodes refused before
anything runs; the held runner's chunked float16 runs against the plain ones."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper

torch = pytest.importorskip("torch")

from graphs import GraphBuilder, photo_batch, residual_net  # noqa: E402
from kse_onnx.errors import ModelError  # noqa: E402
from kse_onnx.onnx_torch import held, ops  # noqa: E402
from kse_onnx.onnx_torch.held import HeldRunner  # noqa: E402
from kse_onnx.onnx_torch.interpreter import Interpreter  # noqa: E402
from kse_onnx.runtime.ort import session  # noqa: E402


def _constants(model: onnx.ModelProto) -> dict:
    return {t.name: torch.from_numpy(onnx.numpy_helper.to_array(t).copy())
            for t in model.graph.initializer}


def _residual(images: int):
    """A residual net, its interpreter, its constants and a batch of images."""
    model = residual_net()
    return (model, Interpreter(model), _constants(model),
            torch.from_numpy(photo_batch((images, 3, 8, 8))))


def _with_outputs(model: onnx.ModelProto, names: list[str]) -> onnx.ModelProto:
    tapped = onnx.ModelProto()
    tapped.CopyFrom(model)
    for name in names:
        tapped.graph.output.append(helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT,
                                                                 None))
    return tapped


def test_every_intermediate_tensor_matches_onnxruntime():
    model, interpreter, constants, x = _residual(3)
    with torch.no_grad():
        env = interpreter.run({"x": x}, lookup=constants.__getitem__)
    inner = [n.output[0] for n in model.graph.node][:-1]
    want = session(_with_outputs(model, inner)).run(None, {"x": x.numpy()})
    names = [model.graph.output[0].name, *inner]
    for name, value in zip(names, want, strict=True):
        assert np.abs(env[name].numpy() - value).max() < 1e-5, name


def test_a_node_range_and_an_override():
    """Running the nodes after a tensor from that tensor gives the same output; an override
    replaces one node's computation and everything after it sees the new value."""
    model, interpreter, constants, x = _residual(2)
    with torch.no_grad():
        whole = interpreter.run({"x": x}, lookup=constants.__getitem__)
        cut = 5  # from the first residual block's second Conv on
        before = {o for node in model.graph.node[:cut] for o in node.output} | {"x"}
        rest = interpreter.run({n: v for n, v in whole.items() if n in before},
                               range(cut, len(model.graph.node)), constants.__getitem__)
        assert rest.keys() == whole.keys()
        output = model.graph.output[0].name
        assert torch.equal(rest[output], whole[output])
        last = len(model.graph.node) - 1  # the Gemm: its output doubled
        doubled = interpreter.run({"x": x}, lookup=constants.__getitem__, overrides={
            last: lambda args: 2 * ops.OPS["Gemm"](args, interpreter.attrs[last])})
    assert torch.allclose(doubled[output], 2 * whole[output])
    assert not torch.allclose(doubled[output], whole[output])


def test_unmappable_nodes_are_refused_all_at_once_before_running():
    b = GraphBuilder(3)
    y = b.op("Celu", [b.input.name])
    z = b.op("Celu", [y])
    model = b.model(b.op("Resize", [z, "", b.const(np.array([1, 1, 2, 2], np.float32))],
                         mode="cubic"), shape=("batch", 3, 16, 16))
    with pytest.raises(ModelError) as caught:
        Interpreter(model, "tiny.onnx")
    message = str(caught.value)
    assert message.startswith("tiny.onnx: ") and "3 node(s)" in message
    assert "Celu (nodes 'celu1', 'celu2')" in message and "Resize mode=cubic" in message


def test_constants_in_the_environment_are_never_cut_into_chunks(monkeypatch):
    """The refit puts a latency budget's unmasked weights in the teacher's environment;
    a weight whose first axis happens to equal the number of images (1,024 filters and
    1,024 images on ResNet-50) must still be whole for every chunk, not cut as if it
    held one row per image."""
    monkeypatch.setattr(held, "CHUNK", 3)
    monkeypatch.setattr(held, "HALF_FROM_BYTES", 0)
    model, interpreter, constants, _ = _residual(1)
    weight = next(v for v in constants.values() if v.dim() == 4)
    x = torch.from_numpy(photo_batch((weight.shape[0], 3, 8, 8)))
    with torch.no_grad():
        plain = interpreter.run({"x": x}, lookup=constants.__getitem__)
        with HeldRunner(interpreter, len(x), largest=16 * 64, fixed=0,
                        constants=constants) as runner:
            env = {"x": x, **constants}
            for i in range(len(model.graph.node)):
                for name, value in zip(model.graph.node[i].output, runner.run(i, env),
                                       strict=True):
                    env[name] = value
    output = model.graph.output[0].name
    assert torch.allclose(runner.lookup(env, output), plain[output], rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize("half", [False, True])
def test_the_held_runner_chunks_as_the_plain_run_computes(monkeypatch, half):
    """Chunks of 3 images (the last one short), float16 holding or not: every node's output
    over the whole set equals the plain run's (exactly in float32, to float16's rounding)."""
    monkeypatch.setattr(held, "CHUNK", 3)
    if half:
        monkeypatch.setattr(held, "HALF_FROM_BYTES", 0)
    model, interpreter, constants, x = _residual(8)
    with torch.no_grad():
        plain = interpreter.run({"x": x}, lookup=constants.__getitem__)
        with HeldRunner(interpreter, len(x), largest=16 * 64, fixed=0,
                        constants=constants) as runner:
            assert runner.half == half and runner.chunk == 3
            env = {"x": x}
            for i in range(len(model.graph.node)):
                for name, value in zip(model.graph.node[i].output, runner.run(i, env),
                                       strict=True):
                    env[name] = value
    for name in env:
        got = runner.lookup(env, name)
        assert got.dtype == torch.float32 and got.shape == plain[name].shape
        if half:
            assert torch.allclose(got, plain[name], rtol=1e-2, atol=1e-2), name
        else:
            assert torch.equal(got, plain[name]), name
    assert any(v.dtype == torch.float16 for v in env.values()) == half

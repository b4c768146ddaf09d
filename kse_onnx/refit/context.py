"""What every fitter of the refit reads: the model checked for the refit, its node names,
the compressed Convs' plans, the walk, and the runner holding activations over the
calibration images (:class:`RefitContext`, built complete by :func:`refit_context`)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
import torch
from onnx import numpy_helper

from ..analysis.plan import LayerPlan
from ..errors import ModelError, OptionError
from ..graph.classifier import classifier_gemms
from ..graph.inputs import fixed_batch, unbatched
from ..held_images import DiskImages
from ..onnx_torch.held import HeldRunner, largest_activation
from ..onnx_torch.holding import DiskTensor
from ..onnx_torch.interpreter import Interpreter, constant_value
from ..options import RefitOptions
from .graph_walk import Walk, needed_nodes, node_names, static_nodes, walk


@dataclass(frozen=True)
class RefitContext:
    model: onnx.ModelProto
    options: RefitOptions
    input: str  # the graph's one input
    x: torch.Tensor  # the calibration images, fitted ones first (DiskTensor when on disk)
    fitted: int  # the first ``fitted`` images are fitted on, the others judge
    names: list[str]  # node names as kse-onnx's graph import gives them
    plans: dict[int, LayerPlan]  # node index -> plan of each compressed Conv
    classifiers: frozenset[int]  # the Gemm nodes the refit may fit (refit_classifier)
    walk: Walk
    runner: HeldRunner

    @property
    def interpreter(self) -> Interpreter:
        return self.runner.interpreter

    @property
    def constants(self) -> dict[str, torch.Tensor]:
        return self.runner.constants

    def lookup(self, env: dict, name: str, raw: bool = False):
        return self.runner.lookup(env, name, raw)


def refit_context(model: onnx.ModelProto, plans: dict[str, LayerPlan], x: np.ndarray,
                  options: RefitOptions, held: int) -> RefitContext:
    """The checked context of a refit of ``model``'s compressed Convs in ``plans`` from
    calibration images ``x``, whose last ``held`` are held out."""
    graph = model.graph
    inputs = [i for i in graph.input if i.name not in {t.name for t in graph.initializer}]
    if len(inputs) != 1:
        raise ModelError(f"refit needs a model with one input, this one has {len(inputs)}")
    name = inputs[0].name
    elem = inputs[0].type.tensor_type.elem_type
    if elem != onnx.TensorProto.FLOAT:
        raise ModelError(f"input {name!r}: refit supports float32 models only")
    dims = [d.dim_value if d.HasField("dim_value") else None
            for d in inputs[0].type.tensor_type.shape.dim]
    one = unbatched(model)  # one image (C, H, W) per run: fed one at a time, axis dropped
    image_dims = dims if one else dims[1:]
    if len(image_dims) != x.ndim - 1 or any(d and d != s for d, s in zip(
            image_dims, x.shape[1:], strict=False)):
        shown = ["?" if d is None else d for d in image_dims]
        raise ModelError(f"calibration images of shape {tuple(x.shape[1:])} do not fit "
                         f"input {name!r} of shape {shown}: check "
                         "--resize/--crop and the channels")
    images = (DiskTensor.reading(x) if isinstance(x, DiskImages)  # read a chunk at a time
              else torch.from_numpy(np.ascontiguousarray(x, np.float32)))
    names = node_names(model)
    compressed = {i: plans[n] for i, n in enumerate(names)
                  if n in plans and plans[n].compressed and graph.node[i].op_type == "Conv"}
    classifiers = frozenset(classifier_gemms(model) if options.refit_classifier else ())
    # only what the fits read runs (a detector's NMS and decoding do not)
    needed = needed_nodes(model, set(compressed), set(classifiers))
    interpreter = Interpreter(model, "refit", needed)
    for i, plan in compressed.items():
        if plan.w_hat.dtype != np.float32:
            raise ModelError(f"node {names[i]!r}: refit supports float32 weights "
                             f"only, not {plan.w_hat.dtype}")
    with torch.no_grad():
        values = constants(interpreter, needed)
    # a graph whose input fixes its batch (a Reshape may hold it) runs that many
    # images at a time: every node that reads the images, a chunk at a time (one
    # image, its batch axis dropped, for an input without one)
    fixed = fixed_batch(model)
    runner = HeldRunner(interpreter, len(x), largest_activation(model), fixed, values)
    if one:
        refuse_distill_unbatched(options.refit)
        runner.feed_one_image(name)
    if fixed:
        if len(x) % fixed:
            raise ModelError(f"the refit runs the model's fixed batch of {fixed} "
                             f"images at a time: {len(x)} calibration images are not a "
                             "multiple of it")
        if options.refit == "block":
            why = ("takes one image without a batch axis" if one else f"fixes {fixed}")
            raise OptionError("--refit", "block needs a model whose batch is not fixed "
                              f"(its input {why}); use act")
    return RefitContext(model, options, name, images, len(x) - held, names, compressed,
                        classifiers, walk(model, set(compressed), needed), runner)


def refuse_distill_unbatched(mode: str) -> None:
    """``--refit distill`` on a model whose input has no batch axis: refused in one line.
    The distillation trains on minibatches through the whole graph, outputs included; a
    graph of one image per run ending in non-maximum suppression has outputs whose length
    differs from image to image, so there is no batched loss to train on."""
    if mode == "distill":
        raise OptionError("--refit", "distill needs a model whose input has a batch axis "
                          "(this one takes one image (C, H, W) per run, and its outputs "
                          "may differ in length from image to image); use act")


def constants(interpreter: Interpreter, needed: set[int] | None = None
              ) -> dict[str, torch.Tensor]:
    """Initializers, Constant nodes, then every node computed from constants alone (of
    ``needed``, when given)."""
    model = interpreter.model
    values = {init.name: as_tensor(numpy_helper.to_array(init))
              for init in model.graph.initializer}
    static = [i for i in static_nodes(model) if needed is None or i in needed]
    for i in static:
        node = model.graph.node[i]
        if node.op_type == "Constant":
            values[node.output[0]] = as_tensor(constant_value(node))
    return interpreter.run(values, static, lookup=values.__getitem__)


def as_tensor(values: np.ndarray) -> torch.Tensor:
    """``values`` as a torch tensor, floats as float32."""
    if values.dtype.kind == "f":
        values = values.astype(np.float32)
    return torch.from_numpy(np.array(values))

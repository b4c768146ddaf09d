"""Nodes run over a whole calibration set, their activations held until their last
reader: in float32, in float16, or on disk (:mod:`.holding`), a chunk of images at a time
where the operator treats images independently (docs/refit.md, "Memory").

A :class:`HeldRunner` wraps an :class:`.interpreter.Interpreter`: the refit's walk runs
each node through :meth:`HeldRunner.run`, which calls :meth:`Interpreter.node` once, or
once per chunk of images.
"""

from __future__ import annotations

import onnx
import torch

from .holding import Holding, chunk_args, chunk_images, disk_wanted, is_held_on_disk, runs_by_images
from .interpreter import Interpreter

# Activations over all calibration images above this many bytes (largest tensor, float32)
# are held in float16 between their producer and their last reader, and the operators
# that treat images independently (PER_IMAGE) then run CHUNK images at a time.
HALF_FROM_BYTES = 256 * 2**20
CHUNK = 32
PER_IMAGE = {"Conv", "ConvTranspose", "Relu", "LeakyRelu", "PRelu", "Clip", "Sigmoid",
             "HardSigmoid", "HardSwish", "Tanh", "Elu", "Selu", "Softplus", "Add", "Sub", "Mul",
             "Div", "BatchNormalization", "MaxPool", "AveragePool", "GlobalAveragePool",
             "GlobalMaxPool", "Identity", "Dropout"}
# Operators whose output may overwrite their first input, chunk by chunk (same shape).
ELEMENTWISE = {"Relu", "LeakyRelu", "Clip", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh",
               "Elu", "Selu", "Softplus", "Add", "Sub", "Mul", "Div"}


class HeldRunner:
    """Runs nodes of ``interpreter`` over ``images`` calibration images, each tensor of
    the environment holding all of them. ``largest``: elements per image of the largest
    activation (:func:`largest_activation`) choosing float16 and disk holding; ``fixed``:
    the batch the graph's input fixes (0 if none), then every node reading the images
    runs that many at a time; ``constants``: the values of names outside the
    environment. Use as a ``with`` block: the disk folder goes on leaving it."""

    def __init__(self, interpreter: Interpreter, images: int, largest: int, fixed: int,
                 constants: dict[str, torch.Tensor]):
        self.interpreter, self.images, self.fixed = interpreter, images, fixed
        self.constants = constants
        self.half = images * largest * 4 > HALF_FROM_BYTES
        # activations held in files when they would not fit (holding.py): then every
        # PER_IMAGE node runs CHUNK images at a time, as with float16 holding
        self.holding = Holding(disk_wanted(images, largest))
        self.chunk = chunk_images(CHUNK, largest) if self.holding.disk else CHUNK
        if fixed:  # the model's own batch, a chunk at a time
            self.chunk = fixed
        self.predict_step = self.chunk if self.chunk < CHUNK else None  # smaller on disk
        # an input without a batch axis (feed_one_image): the names holding one value
        # per image, and those of them whose first axis is one added for the images
        self.one_image = False
        self.per_image: set[str] = set()
        self.stacked: set[str] = set()

    def feed_one_image(self, name: str) -> None:
        """The graph's input ``name`` takes one image without a batch axis: every node
        reading the images runs once per image. Each value it gets is that image's
        (the held tensor's row, or its first axis dropped where the graph's tensor has
        no batch axis); each per-image result is held joined along its first axis when
        that axis has length 1 (a Conv's [1, C, H, W]: the held tensor is the usual
        (n, C, H, W)), else with an axis added (a preprocessed [C, H, W] image)."""
        self.one_image = True
        self.per_image.add(name)
        self.stacked.add(name)

    def __enter__(self) -> HeldRunner:
        return self

    def __exit__(self, *exc) -> None:
        self.holding.close()

    def lookup(self, env: dict, name: str, raw: bool = False):
        """A tensor of ``env`` (float32 again if it is held in float16 or on disk, unless
        ``raw``) or a constant; None for an omitted input."""
        if not name:
            return None
        if name not in env:
            return self.constants[name]
        value = env[name]
        wide = value.dtype == torch.float16 or is_held_on_disk(value)
        return value.float() if wide and not raw else value

    def run(self, i: int, env: dict, other: dict | None = None,
            remaining: dict | None = None, keep=()) -> tuple:
        """Node ``i``'s outputs from ``env``, held (:meth:`hold`). With float16 or disk
        holding, a node that treats images independently runs ``chunk`` images at a
        time, so no float32 copy of a whole-set tensor is made; an elementwise node whose
        first input no later node reads (``remaining``: reads left per name; ``keep``:
        names kept anyway), and which no other name (in ``env`` or ``other``) holds,
        writes its output over that input."""
        node = self.interpreter.nodes[i]
        raw = [self.lookup(env, n, raw=True) for n in node.input]
        reuse = None
        chunked = self.half or self.holding.disk
        if chunked and node.op_type in ELEMENTWISE and remaining is not None:
            first = node.input[0]
            value = env.get(first)
            if (value is not None and remaining.get(first, 2) <= 1 and first not in keep
                    and first not in self.constants
                    and sum(v is value for v in env.values()) == 1
                    and all(v is not value for v in (other or {}).values())):
                reuse = value
        n = self.images
        # a value holds one row per image when it is in the environment and is not a
        # constant put there (the refit's teacher reads a budget's unmasked weights from
        # it: a weight of 1,024 filters is not 1,024 images' rows)
        batch = [name in self.per_image if self.one_image else
                 name in env and name not in self.constants and a.dim() >= 1
                 and a.shape[0] == n
                 for name, a in zip(node.input, raw, strict=True)]
        by_images = self.holding.disk and any(batch) and not self.one_image and runs_by_images(
            node.op_type, self.interpreter.attrs[i], raw, batch)  # Concat, Reshape...
        fixed = self.fixed and any(batch)  # the model's own batch, a chunk at a time
        if fixed and node.op_type in ("Shape", "Size"):  # of one chunk, as the graph sees it
            args = [self.rows(a, name, 0) if b else a
                    for a, b, name in zip(raw, batch, node.input, strict=True)]
            return self.interpreter.node(i, args)
        if fixed and self.one_image:
            self.per_image.update(o for o in node.output if o)
        if not (chunked and node.op_type in PER_IMAGE and any(batch) or by_images or fixed):
            args = [a.float() if a is not None and (a.dtype == torch.float16 or (
                is_held_on_disk(a) and node.op_type != "Shape")) else a for a in raw]
            return tuple(self.keep(v) for v in self.interpreter.node(i, args))
        outs: list[torch.Tensor] = []
        for start in range(0, n, self.chunk):
            args = [self.rows(a, name, start) if b else a
                    for a, b, name in zip(raw, batch, node.input, strict=True)]
            if by_images:
                args = chunk_args(node.op_type, args, len(args[0]), n)
            for k, value in enumerate(self.interpreter.node(i, args)):
                if self.one_image and (value.dim() == 0 or value.shape[0] != 1):
                    self.stacked.add(node.output[k])  # no batch axis: one added
                    value = value.unsqueeze(0)
                value = self.hold(value)
                if k == len(outs):  # written in place, chunk by chunk: no list + cat copy
                    outs.append(reuse if k == 0 and reuse is not None
                                and reuse.shape[1:] == value.shape[1:]
                                and reuse.dtype == value.dtype
                                else self.holding.empty((n, *value.shape[1:]), value.dtype))
                if value.dtype != outs[k].dtype:  # a chunk outside float16's range
                    outs[k] = self.holding.widened(outs[k])
                outs[k][start:start + len(value)] = value
        return tuple(outs)

    def rows(self, value, name: str, start: int) -> torch.Tensor:
        """The images ``start`` to ``start + chunk`` of held ``value`` (tensor ``name``) as
        the graph sees them, float32: for an input without a batch axis, image ``start``
        with the added axis dropped where ``name`` has one (:meth:`feed_one_image`)."""
        rows = value[start:start + self.chunk].float()
        return rows[0] if self.one_image and name in self.stacked else rows

    def hold(self, value: torch.Tensor) -> torch.Tensor:
        """How an activation is kept until its last reader: float16 when the model's
        activations over all calibration images are large (``HALF_FROM_BYTES``) and its
        values fit float16's range (its rounding, 2^-11 relative, is far below the
        compression error being fitted), else as computed."""
        if (self.half and value.dtype == torch.float32 and value.numel() > 1
                and float(value.abs().max()) < 6e4):
            return value.half()
        return value

    def keep(self, value: torch.Tensor):
        """A whole-set ``value`` as held (:meth:`hold`), on disk when holding there."""
        return self.holding.keep(self.hold(value))


def release(names, remaining: dict, keep, *envs: dict) -> None:
    """Drop from ``envs`` each of ``names`` that no later node reads and is not kept."""
    for name in names:
        if name and remaining.get(name, 1) <= 0 and name not in keep:
            for env in envs:
                env.pop(name, None)


def largest_activation(model: onnx.ModelProto) -> int:
    """Elements per image of the largest Conv output whose shape inference knows."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:
        return 0
    largest = 0
    for info in inferred.graph.value_info:
        dims = info.type.tensor_type.shape.dim
        if len(dims) == 4 and all(d.HasField("dim_value") for d in dims[1:]):
            largest = max(largest, dims[1].dim_value * dims[2].dim_value * dims[3].dim_value)
    return largest

"""The image input of a model (its name and declared dims) and the check of images
against it: rank, channels, height and width where they are fixed."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import ModelError


@dataclass(frozen=True)
class ModelInput:
    """The image input of a model: its name and declared dims (None where symbolic)."""

    name: str
    dims: tuple
    per_image: bool = False  # an input without a batch axis is fed one image at a time

    @classmethod
    def of(cls, model) -> ModelInput | None:
        """The single graph input of an ``onnx.ModelProto`` that is not an initializer;
        None when there are several (nothing is checked then)."""
        inits = {i.name for i in model.graph.initializer}
        inputs = [i for i in model.graph.input if i.name not in inits]
        if len(inputs) != 1 or not inputs[0].type.HasField("tensor_type"):
            return None
        tensor = inputs[0].type.tensor_type
        dims = (tuple(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None
                      for d in tensor.shape.dim) if tensor.HasField("shape") else None)
        return cls(inputs[0].name, dims)

    def check(self, x: np.ndarray, where) -> None:
        """A one-line error unless images ``x`` fit this input's rank, channels, height
        and width (where they are fixed)."""
        if self.dims is None:
            return
        if len(self.dims) == 3 and not self.per_image:
            shown = [d if d is not None else "?" for d in self.dims]
            raise ModelError(f"{where}: model input {self.name!r} takes one image without "
                             f"a batch axis {shown}; this command feeds it batches "
                             "(n, C, H, W): export the model with one")
        dims = (None, *self.dims) if len(self.dims) == 3 else self.dims
        if len(dims) != 4:
            raise ModelError(f"{where}: images (n, C, H, W) do not fit model input "
                             f"{self.name!r} of rank {len(self.dims)}")
        for axis, what in ((1, "channels"), (2, "height"), (3, "width")):
            want = dims[axis]
            if want is not None and want != x.shape[axis]:
                hint = "" if axis == 1 else "; use --resize/--crop"
                raise ModelError(f"{where}: images have {x.shape[axis]} {what}, model input "
                                 f"{self.name!r} takes {want}{hint}")

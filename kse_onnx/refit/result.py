"""What the refit reports: one :class:`LayerFit` per compressed Conv, and the whole
:class:`RefitResult` (blocks, classifier, the refitted model)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import onnx


@dataclass
class LayerFit:
    name: str
    target: str  # "conv output" or "residual Add"
    solver: str
    error_before: float  # relative error ||y - target|| / ||target|| (error_images)
    error_after: float
    seconds: float
    act_error_before: float | None = None  # after the activation ("act" mode)
    act_error_after: float | None = None
    held_error_before: float | None = None  # the judged error on the held-out images
    held_error_after: float | None = None
    error_images: int = 0  # the fitted images error_* and act_error_* are measured on
    held_positions: int = 0  # output positions held_error_* is measured on; 0: all


@dataclass
class RefitResult:
    mode: str
    images: int
    held_out: int = 0
    layers: list[LayerFit] = field(default_factory=list)
    blocks: list[dict] = field(default_factory=list)
    classifier: dict | None = None
    seconds: float = 0.0
    model: onnx.ModelProto | None = None  # the original with refitted biases/classifier

    def to_dict(self) -> dict:
        return {"mode": self.mode, "images": self.images, "held_out": self.held_out,
                "seconds": round(self.seconds, 3),
                "layers": [asdict(layer) for layer in self.layers], "blocks": self.blocks,
                "classifier": self.classifier}

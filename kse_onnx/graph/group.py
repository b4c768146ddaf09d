"""One channel group: the channels that must be cut together (Torch-Pruning's dependency
group), and how to zero (:meth:`Group.mask`) or remove (:meth:`Group.prune`) them.

A group is a set of tensors whose channels are linked: channel ``c`` of one tensor is
channel ``c'`` of another because an op between them acts per channel. Linked channels
form *classes* (ids ``0 .. n_classes - 1``); ``channels[t][c]`` is the class of channel
``c`` of tensor ``t``. Its nodes:

- producers: the Convs writing a group tensor (they lose the filters of cut classes);
- readers: the Convs reading one (they lose the input channels; done by the lowering);
- ops: channel-wise nodes carrying the channels (their per-channel constants are cut);
- pads: channel Pads with zeros (a shortcut adding channels: ``b[c + lo] = a[c]``);
- gemms: ``GlobalAveragePool -> Flatten -> Gemm`` reading a group tensor (rows cut).

Kinds (:mod:`.groups` finds them):

- ``residual``: tensors joined by Adds, read by several Convs, or padded (a ResNet's
  residual stream); classes may span several tensors;
- ``chain``: one producer Conv, channel-wise ops, one reader, nothing else reading;
- ``reader``: a Conv's input with no producer it can be cut at; ``reason`` says why,
  and the lowering selects the kept channels with a Gather.

The importance of a class is the KSE indicator summed over the group's readers:
``m_k = sum_r sum_{c: channels[r][c] = k} v_rc``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx_graphsurgeon as gs

from .core import constant_values

KINDS = ("residual", "chain", "reader")


class NotAGroup(Exception):
    """A walk that cannot make a group, and why (the reason is shown in the report)."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass
class Group:
    kind: str  # one of KINDS
    channels: dict[str, np.ndarray]  # tensor name -> class id of each channel
    producers: list[gs.Node] = field(default_factory=list)
    readers: list[gs.Node] = field(default_factory=list)
    ops: list[gs.Node] = field(default_factory=list)  # a chain's: in order from the producer
    pads: dict[str, tuple[int, int]] = field(default_factory=dict)  # Pad node -> lo, hi
    gemms: list[tuple[gs.Node, str]] = field(default_factory=list)  # (Gemm, tensor it pools)
    reason: str | None = None  # a reader group: why its channels cannot be cut upstream

    @property
    def key(self) -> str:
        """The group's name: its first tensor name (``budget_streams`` records it)."""
        return min(self.channels)

    @property
    def n_classes(self) -> int:
        """Number of classes (0 for a reader group whose Conv has no constant weight)."""
        return max((int(c.max()) + 1 for c in self.channels.values() if len(c)), default=0)

    def kept(self, tensor: str, classes) -> np.ndarray:
        """Channels of ``tensor`` whose class is in ``classes``."""
        return np.flatnonzero(np.isin(self.channels[tensor], np.asarray(list(classes), int)))

    def rows(self, classes) -> dict[str, np.ndarray]:
        """Producer name -> the filters it keeps when the group keeps ``classes``."""
        return {p.name: self.kept(p.outputs[0].name, classes) for p in self.producers}

    def importance(self, indicators: dict[str, np.ndarray]) -> np.ndarray:
        """Per class, the KSE indicator summed over the readers (reader name -> v)."""
        mass = np.zeros(self.n_classes)
        for r in self.readers:
            np.add.at(mass, self.channels[r.inputs[0].name], indicators[r.name])
        return mass

    def spans(self) -> list[np.ndarray]:
        """Classes grouped by the set of tensors they appear in (each span is cut to a
        multiple of the budget step on its own, so every tensor's count stays aligned)."""
        where: dict[int, set] = {}
        for name, ids in self.channels.items():
            for cid in ids:
                where.setdefault(int(cid), set()).add(name)
        spans: dict[tuple, list[int]] = {}
        for cid in sorted(where):
            spans.setdefault(tuple(sorted(where[cid])), []).append(cid)
        return [np.array(v) for _, v in sorted(spans.items(), key=lambda kv: kv[1][0])]

    def check_classes(self, classes) -> np.ndarray:
        """``classes`` as a sorted index array of this group's classes, or ValueError."""
        ids = np.asarray(classes)
        if (ids.ndim != 1 or not len(ids) or ids.dtype.kind not in "iu" or ids.min() < 0
                or ids.max() >= self.n_classes or len(set(ids.tolist())) != len(ids)):
            raise ValueError(f"stream {self.key!r}: kept classes must be distinct indices in "
                             f"[0, {self.n_classes})")
        return np.sort(ids)

    def mask(self, kept_classes) -> None:
        """Make the channels of every class not in ``kept_classes`` exactly 0 at the
        producers' outputs: zero their filters and biases, and BatchNormalization scales
        and shifts and additive constants on the way (same shapes: the graph still runs).
        In a residual group every op keeps a zero channel zero, so the channel is 0 in
        every tensor, and the readers' weights on it do not matter."""
        kept = [int(c) for c in kept_classes]
        for conv in self.producers:
            drop = ~np.isin(self.channels[conv.outputs[0].name], kept)
            for i in _filter_inputs(conv):
                v = constant_values(conv.inputs[i]).copy()
                v[drop] = 0
                _replace(conv, i, v, "mask")
        for node in self.ops:
            drop = ~np.isin(self.channels[node.inputs[0].name], kept)
            if node.op == "BatchNormalization":
                for i in (1, 2):
                    v = constant_values(node.inputs[i]).copy()
                    v[drop] = 0
                    _replace(node, i, v, "mask")
            elif node.op in ("Add", "Sub") and not isinstance(node.inputs[1], gs.Variable):
                v = constant_values(node.inputs[1])
                if v.size > 1:
                    v = v.copy()
                    v[..., drop, :, :] = 0
                    _replace(node, 1, v, "mask")

    def prune(self, kept_classes) -> None:
        """Remove every channel whose class is not in ``kept_classes`` from the group's
        producers, per-channel constants, Pads and Gemms (readers: by the lowering)."""
        tag = "stream" if self.kind == "residual" else "in"
        kept = [int(c) for c in kept_classes]
        keep = {name: self.kept(name, kept) for name in self.channels}
        for conv in self.producers:
            for i in _filter_inputs(conv):
                _replace(conv, i, constant_values(conv.inputs[i])[keep[conv.outputs[0].name]],
                         tag)
        for node in self.ops:
            k = keep[node.inputs[0].name]
            if node.op == "BatchNormalization":
                for i in range(1, 5):
                    _replace(node, i, constant_values(node.inputs[i])[k], tag)
            elif node.op == "Pad":
                _replace(node, 1, self._pads(node, keep), tag)
            elif _per_channel_operand(node, self.kind):
                v = constant_values(node.inputs[1])
                if v.size > 1:
                    _replace(node, 1, v[..., k, :, :], tag)
        for gemm, tensor in self.gemms:
            b = constant_values(gemm.inputs[1])
            k = keep[tensor]
            _replace(gemm, 1, b[:, k] if gemm.attrs.get("transB", 0) else b[k], tag)

    def _pads(self, node: gs.Node, keep: dict) -> np.ndarray:
        """A channel Pad's pads once its input and output keep ``keep``."""
        lo, _ = self.pads[node.name]
        c_in = len(self.channels[node.inputs[0].name])
        out = keep[node.outputs[0].name]
        pads = np.zeros(8, np.int64)
        pads[1], pads[5] = int(np.sum(out < lo)), int(np.sum(out >= lo + c_in))
        return pads


def _filter_inputs(conv: gs.Node) -> list[int]:
    """Inputs of a producer Conv indexed by output channel: weight, and bias if any."""
    return [1, 2] if len(conv.inputs) > 2 and conv.inputs[2].name else [1]


def _per_channel_operand(node: gs.Node, kind: str) -> bool:
    """``node``'s second input is a constant indexed by channel (a residual group's
    Add/Sub of two group tensors has none)."""
    if node.op not in ("PRelu", "Add", "Sub", "Mul", "Div") or len(node.inputs) < 2:
        return False
    return kind != "residual" or not isinstance(node.inputs[1], gs.Variable)


def _replace(node: gs.Node, index: int, values: np.ndarray, tag: str) -> None:
    """Give ``node`` a new constant input (never mutates a constant others may share)."""
    node.inputs[index] = gs.Constant(f"{node.name}_kse_{tag}{index}",
                                     np.ascontiguousarray(values))

"""``auto``: every compressed layer takes the form that runs fastest on the user's
runtime, and the whole model is then checked to be no slower than the original.

1. Candidates (:func:`candidate_forms`): ``whole`` (every input channel with W_hat: the
   original layer's shape, hence its time), dense over the kept channels rounded up to
   a multiple of 16, 8, 4 and 1 (each distinct count once), and the paper's factored
   form. Alignment matters because onnxruntime's blocked (NCHWc) CPU convolutions want
   channel counts that are multiples of the SIMD block (8 with AVX2, 16 with AVX-512);
   an unaligned count can be slower than the full layer (docs/lowering.md, "onnxruntime
   latency findings").
2. Each candidate is timed as a small graph of that layer at its real input shape; when
   the form prunes the producing Conv, that Conv and the channel-wise ops between are in
   the graph too (and in the ``whole`` graph it is compared with). A 1x1 depthwise Conv
   before and after puts the layer between Convs as in the network, so the layout changes
   a Gather or an unaligned count forces on its neighbours are timed too. Candidates run
   interleaved; each time is a median (:func:`~kse_onnx.runtime.bench.interleaved_latency`);
   a candidate ``DROP_SLOWER`` times slower than the fastest after 3 rounds is not run
   further. Layers with equal candidate graphs up to names and weight values (one
   timing signature, :mod:`..graph.signature`) are timed once (:func:`time_layers`).
3. Choice (:func:`pick`): among candidates no slower than ``whole`` (ratio <= 1 + half the
   tolerance at every batch), those within the tolerance of the fastest count as tied,
   and the tie goes to the fewest multiply-adds. So a layer gets fewer multiply-adds
   only when they cost no time.
4. Whole-model check (:func:`check_latency`): the original (twice: the spread of the two
   is the measured noise) and the optimized model with compact weight storage (dense
   storage too when compact fails), interleaved at every batch, each timing ending
   early once its verdict is plain. While the optimized model's ratio plus that noise
   is above 1 + tolerance, layers go back to ``whole``, least measured gain first, 1, 2,
   4, ... at a time. With every layer ``whole`` the graph has the original's shapes.
The chosen forms are recorded in the model: ``choices`` replays them (:mod:`.replay`)."""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from .. import progress
from ..analysis.plan import LayerPlan
from ..errors import ModelError
from ..graph.core import constant_values, quiet_graphsurgeon
from ..graph.count import conv_counts
from ..graph.export import copy_model_fields
from ..graph.groups import chain_group
from ..graph.names import unique_tensor_names
from ..graph.select import ConvSite
from ..graph.signature import timing_signature
from ..options import LowerOptions
from ..runtime.bench import interleaved_latency
from ..runtime.ort import provider_list, session
from . import LayerForm, Lowered, compressed_sites, lower
from .replay import recorded_forms

AUTO_ALIGNS = (16, 8, 4, 1)
WHOLE = LayerForm("dense", 0)
LAYER_BUDGET_S = 0.5  # timed loop per layer and batch, all candidates together
MODEL_BUDGET_S = 8.0  # timed loop per whole-model check and batch
MODEL_WARMUP = 1  # untimed runs per model before a whole-model check
MODEL_MIN_REPEATS = 5  # rounds before a whole-model check may end on a plain verdict
MAX_REPEATS = 200
DROP_SLOWER = 1.25  # layer timing: a candidate this much slower than the fastest after
# 3 rounds is not run further (it cannot be chosen: ties are within the tolerance)

# build(forms, compact_storage) -> (optimized model, what each layer became)
Builder = Callable[[dict, bool], "tuple[onnx.ModelProto, dict[str, Lowered]]"]


@dataclass
class LayerChoice:
    """The candidates of one layer, their times and the winner."""

    name: str
    form: LayerForm
    times_ms: dict[str, dict[str, float]] = field(default_factory=dict)  # label -> point -> ms
    macs: dict[str, int] = field(default_factory=dict)  # label -> multiply-adds per image
    note: str = ""
    timed_pick: str = ""  # the form the layer's own timing chose (before the model check)
    timed_with: str = ""  # the layer whose timing this one shares (same signature)
    signature: str = ""  # timing signature of the candidate graphs (graph/signature.py)

    def ratio(self, label: str) -> float:
        """Mean over batches of the candidate's time over ``whole``'s."""
        if not self.times_ms:
            return 1.0
        base = self.times_ms["whole"]
        return float(np.mean([t / base[b] for b, t in self.times_ms[label].items()]))

    def to_dict(self) -> dict:
        return {"chosen": self.form.label, "timed_pick": self.timed_pick or self.form.label,
                "note": self.note, "signature": self.signature,
                "timed_with": self.timed_with or self.name, "macs": self.macs,
                "times_ms": {label: {p: round(t, 4) for p, t in by_point.items()}
                             for label, by_point in self.times_ms.items()}}


@dataclass
class ModelCheck:
    """One whole-model timing: ratios to the original at one batch."""

    round: int
    batch: int
    threads: int
    reverted: int  # layers put back to ``whole`` before this round
    original_ms: float
    noise: float  # |1 - ratio of the original's second session to its first|
    dense: float | None  # None: not timed (the compact build passed)
    compact: float


@dataclass
class AutoResult:
    model: onnx.ModelProto
    lowered: dict[str, Lowered]
    choices: list[LayerChoice]
    checks: list[ModelCheck]
    compact: bool
    verdict: str

    def to_dict(self) -> dict:
        return {"verdict": self.verdict, "compact_storage": self.compact,
                "checks": [vars(c) for c in self.checks],
                "layers": {c.name: c.to_dict() for c in self.choices}}


def point_key(batch: int, threads: int) -> str:
    """How a timing point is named in reports: ``b64t2`` is batch 64 on 2 threads."""
    return f"b{batch}t{threads}"


def candidate_forms(plan: LayerPlan) -> list[LayerForm]:
    """``whole``, dense at each alignment giving a distinct channel count, factored."""
    forms, counts = [WHOLE], {len(plan.q)}
    for align in AUTO_ALIGNS:
        form = LayerForm("dense", align)
        count = len(form.keep(plan))
        if count not in counts:
            forms.append(form)
            counts.add(count)
    if tuple(plan.weight_shape[2:]) != (1, 1):  # a 1x1 conv is never factored
        forms.append(LayerForm("factored", 1))
    return forms


def pick(choice: LayerChoice, tolerance: float) -> LayerForm:
    """Fastest candidate no slower than ``whole``; ties (within ``tolerance``): fewest MACs."""
    worst = {label: max(t / choice.times_ms["whole"][b] for b, t in by_point.items())
             for label, by_point in choice.times_ms.items()}
    fine = [label for label, r in worst.items() if r <= 1 + tolerance / 2]
    best = min(choice.ratio(label) for label in fine)
    tied = [label for label in fine if choice.ratio(label) <= best + tolerance]
    return LayerForm.parse(min(tied, key=lambda lb: (choice.macs[lb], choice.ratio(lb))))


def layer_candidates(graph: gs.Graph, site: ConvSite, plan: LayerPlan,
                     options: LowerOptions, original: onnx.ModelProto
                     ) -> tuple[dict[str, onnx.ModelProto], dict[str, int]] | None:
    """Every candidate form of one layer as a small timing graph (label -> model) and its
    multiply-adds; None when the layer's input shape is unknown."""
    group = chain_group(graph, site.node) if options.prune_producers else None
    nodes = (group.producers + group.ops if group and group.kind == "chain" else []) + [site.node]
    models, macs = {}, {}
    for form in candidate_forms(plan):
        mini = _layer_graph(nodes, graph.opset)
        if mini is None:
            return None
        layer = next(n for n in mini.nodes if n.name == site.name)
        mini_site = ConvSite(site.name, layer, site.weight, site.output_hw, None)
        lower(mini, [mini_site], {site.name: plan}, options, {site.name: form}, False)
        models[form.label] = _to_model(mini, original)
        macs[form.label] = conv_counts(models[form.label])["macs"] or 0
    return models, macs


def time_candidates(name: str, models: dict[str, onnx.ModelProto], macs: dict[str, int],
                    options: LowerOptions, providers) -> LayerChoice:
    """Time the candidate graphs of layer ``name`` at every timing point and pick."""
    choice = LayerChoice(name, WHOLE, macs=dict(macs))
    serialized = {label: m.SerializeToString() for label, m in models.items()}
    made: dict[int, dict] = {}  # threads -> sessions, reused across batch sizes
    for batch, threads in options.timing_points:
        try:
            if threads not in made:
                made[threads] = {label: session(m, threads, providers)
                                 for label, m in serialized.items()}
            timings = interleaved_latency(made[threads], batch, threads, MAX_REPEATS,
                                          providers=providers, budget_s=LAYER_BUDGET_S,
                                          drop_slower=DROP_SLOWER)
        except ModelError as exc:  # the original runs (checked first): keep the layer as is
            choice.times_ms, choice.note = {}, f"not timed, kept whole: {exc}"
            return choice
        for t in timings:
            choice.times_ms.setdefault(t.label, {})[point_key(batch, threads)] = t.median_ms
    choice.form = pick(choice, options.tolerance)
    choice.timed_pick = choice.form.label
    return choice


def check_latency(original: onnx.ModelProto, build: Builder, choices: list[LayerChoice],
                  options: LowerOptions, providers, reference_label: str = "the original"
                  ) -> AutoResult:
    """Build with the chosen forms; put layers back to ``whole`` until no slower than
    ``original`` (the original model, or its INT8 version when the output is INT8).

    Each round times the compact build against the original; the dense build (the same
    operators once onnxruntime has folded the codebook, so the same time up to noise)
    is built and timed only when the compact one fails."""
    forms = {c.name: c.form for c in choices}
    order = sorted((c for c in choices if c.form != WHOLE),
                   key=lambda c: -c.ratio(c.form.label))  # least measured gain first
    limit = 1 + options.tolerance
    checks, reverted, step, round_ = [], 0, 1, 0
    reference = original.SerializeToString()
    while True:
        compact, lowered = build(forms, True)
        this = _time_model(reference, "compact", compact, options, providers, limit)
        compact_ok = all(r + noise <= limit for r, noise, _ in this)
        dense_ok, dense = False, None
        if not compact_ok:
            dense, lowered = build(forms, False)
            dense_rows = _time_model(reference, "dense", dense, options, providers, limit)
            dense_ok = all(r + noise <= limit for r, noise, _ in dense_rows)
        for i, (ratio, noise, (batch, threads, ms)) in enumerate(this):
            dense_ratio = None if dense is None else dense_rows[i][0]
            checks.append(ModelCheck(round_, batch, threads, reverted, ms, noise,
                                     dense_ratio, ratio))
        this_round = [c for c in checks if c.round == round_]
        if compact_ok or dense_ok or reverted == len(order):
            model = compact if compact_ok or not dense_ok else dense
            verdict = _verdict(this_round, compact_ok, dense_ok, reverted, limit,
                               reference_label)
            return AutoResult(model, lowered, choices, checks, model is compact, verdict)
        for c in order[reverted:reverted + step]:
            forms[c.name] = c.form = WHOLE
            c.note = (c.note + "; " if c.note else "") + \
                f"put back to whole by the whole-model check (round {round_})"
        reverted = min(len(order), reverted + step)
        step, round_ = step * 2, round_ + 1


def _time_model(reference: bytes, label: str, model: onnx.ModelProto, options: LowerOptions,
                providers, limit: float) -> list[tuple[float, float, tuple[int, int, float]]]:
    """(ratio, noise, (batch, threads, original ms)) of ``model`` at each timing point:
    the original twice (the spread of the two is the noise) and ``model``, interleaved.
    The loop ends early once the verdict is plain: ratio + noise at most 1 (no slower
    by more than the noise, well inside the tolerance) or ratio - noise above the limit
    plus the tolerance."""
    models = {"original": reference, "original again": reference,
              label: model.SerializeToString()}
    margin = limit - 1

    def settled(medians):
        ratio = medians[label] / medians["original"]
        noise = abs(1 - medians["original again"] / medians["original"])
        return ratio + noise <= 1 or ratio - noise > limit + margin

    rows, made = [], {}  # threads -> sessions, reused across batch sizes
    for batch, threads in options.timing_points:
        if threads not in made:
            made[threads] = {name: session(m, threads, providers) for name, m in models.items()}
        t = {x.label: x for x in interleaved_latency(
            made[threads], batch, threads, MAX_REPEATS, warmup=MODEL_WARMUP,
            providers=providers,
            budget_s=MODEL_BUDGET_S, min_repeats=MODEL_MIN_REPEATS, settled=settled)}
        rows.append((t[label].ratio, abs(1 - t["original again"].ratio),
                     (batch, threads, t["original"].median_ms)))
    return rows


def _verdict(checks, compact_ok, dense_ok, reverted, limit, reference_label) -> str:
    kind = "compact" if compact_ok or not dense_ok else "dense"
    ratios = ", ".join(f"{point_key(c.batch, c.threads)} {getattr(c, kind):.3f}x "
                       f"(noise {c.noise:.3f})" for c in checks)
    if not (compact_ok or dense_ok):
        return (f"still above {limit:.3f}x {reference_label} with every layer whole "
                f"({ratios}): measurement noise, since the graph then has the original's "
                "shapes")
    storage = "" if kind == "compact" else "; compact storage was slower, weights kept dense"
    return (f"no slower than {reference_label}: {ratios}, ratio + noise <= {limit:.3f}x after "
            f"putting {reverted} layer(s) back to whole{storage}")


def choose(original: onnx.ModelProto, graph: gs.Graph, sites: list[ConvSite],
           plans: dict[str, LayerPlan], options: LowerOptions, build: Builder,
           reference: Callable[[], tuple[onnx.ModelProto, str]] | None = None,
           quiet: bool = False) -> AutoResult:
    """The ``auto`` lowering: per-layer timing, then the whole-model check against
    ``reference()`` ((model, label); default the original); or, with ``options.choices``,
    the recorded forms without timing. ``quiet``: no progress on stderr."""
    compressed = compressed_sites(sites, plans)
    if options.choices:
        forms, compact = recorded_forms(options.choices, [s.name for s in compressed])
        model, lowered = build(forms, compact)
        choices = [LayerChoice(name, form, note=f"from {options.choices}")
                   for name, form in forms.items()]
        return AutoResult(model, lowered, choices, [], compact,
                          f"forms taken from {options.choices}, not timed")
    providers = provider_list(options.provider)
    try:
        interleaved_latency({"the original model": original.SerializeToString()}, 1, 1, 1,
                            warmup=1, providers=providers)
    except ModelError as exc:
        if options.provider != "cpu":
            raise
        # e.g. float64 or bfloat16 convs, which onnxruntime's CPU provider does not run
        forms = {s.name: LayerForm("dense", options.align) for s in compressed}
        model, lowered = build(forms, True)
        choices = [LayerChoice(n, f, note="not timed") for n, f in forms.items()]
        return AutoResult(model, lowered, choices, [], True,
                          f"not timed ({exc}): every layer dense over its kept channels "
                          f"aligned to {options.align}, compact storage")
    if not compressed:
        model, lowered = build({}, True)
        return AutoResult(model, lowered, [], [], True, "no compressed layer: nothing timed")
    choices = time_layers(graph, compressed, plans, options, original, providers, quiet)
    model, label = reference() if reference else (original, "the original")
    return check_latency(model, build, choices, options, providers, label)


def time_layers(graph: gs.Graph, sites: list[ConvSite], plans: dict[str, LayerPlan],
                options: LowerOptions, original: onnx.ModelProto, providers,
                quiet: bool = False) -> list[LayerChoice]:
    """Time each layer's candidates, once per timing signature: a layer whose candidate
    graphs equal (up to names and weight values) those of a layer timed before takes
    that layer's times and verdict, and says so (``timed_with``)."""
    choices, timed = [], {}
    bar = progress.bar(len(sites), "auto: timing layers", unit="layer", quiet=quiet,
                       lines=True)
    for site in sites:
        built = layer_candidates(graph, site, plans[site.name], options, original)
        if built is None:
            choices.append(LayerChoice(site.name, WHOLE,
                                       note="input shape unknown: not timed, kept whole"))
        else:
            key = timing_signature(built[0])
            first = timed.get(key)
            if first is None:
                choice = time_candidates(site.name, *built, options, providers)
                timed[key] = choice
            else:
                choice = LayerChoice(site.name, first.form, copy.deepcopy(first.times_ms),
                                     dict(built[1]), first.note, first.timed_pick,
                                     timed_with=first.name)
            choice.signature = key
            choices.append(choice)
        bar.update(1, distinct=len(timed))
    bar.close()
    return choices


def _layer_graph(nodes: list[gs.Node], opset: int) -> gs.Graph | None:
    """A new graph of copies of ``nodes`` (a chain ending in the Conv), its input with a
    symbolic batch; None if the input's other dimensions are unknown."""
    x = nodes[0].inputs[0]
    shape = x.shape
    if shape is None or len(shape) != 4 or not all(isinstance(d, int) for d in shape[1:]):
        return None
    variables: dict[str, gs.Variable] = {}

    def copy(tensor):
        if not tensor.name:
            return tensor  # an omitted optional input
        values = constant_values(tensor)
        if values is not None:  # a new Constant: the original's consumers stay as they are
            return gs.Constant(tensor.name, values)
        if tensor.name not in variables:
            variables[tensor.name] = gs.Variable(tensor.name, dtype=tensor.dtype or x.dtype)
        return variables[tensor.name]

    copies = [gs.Node(n.op, n.name, dict(n.attrs), inputs=[copy(t) for t in n.inputs],
                      outputs=[copy(t) for t in n.outputs]) for n in nodes]
    source = gs.Variable("kse_context_in", dtype=x.dtype, shape=["batch", *shape[1:]])
    sink = gs.Variable("kse_context_out", dtype=x.dtype)
    layer_out = copies[-1].outputs[0]
    n_out = constant_values(nodes[-1].inputs[1]).shape[0]
    copies.insert(0, _depthwise("kse_context_before", source, variables[x.name], shape[1]))
    copies.append(_depthwise("kse_context_after", layer_out, sink, n_out))
    return gs.Graph(nodes=copies, inputs=[source], outputs=[sink], opset=opset)


def _depthwise(name: str, x, y, channels: int) -> gs.Node:
    """A 1x1 depthwise Conv: the cheapest Conv, it puts the timed layer between two Convs
    as in the network (so blocked-layout reorders around it are timed too)."""
    weight = np.ones((channels, 1, 1, 1), dtype=x.dtype or np.float32)
    return gs.Node("Conv", name, {"group": channels, "kernel_shape": [1, 1]},
                   inputs=[x, gs.Constant(f"{name}_w", weight)], outputs=[y])


def _to_model(graph: gs.Graph, original: onnx.ModelProto) -> onnx.ModelProto:
    unique_tensor_names(graph)
    with quiet_graphsurgeon():
        model = gs.export_onnx(graph.cleanup().toposort(), do_type_check=False)
    copy_model_fields(model, original)
    try:
        return onnx.shape_inference.infer_shapes(model)
    except Exception as exc:  # a bug of ours, or an op shape inference does not know
        raise ModelError(f"auto lowering: cannot build a timing graph ({exc})") from exc

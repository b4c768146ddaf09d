"""``kse-onnx`` command line: parses arguments into the option dataclasses and calls the API."""

from __future__ import annotations

import argparse
import dataclasses
import sys

from . import __version__
from .errors import KSEError, OptionError
from .options import (
    DataOptions,
    FinetuneOptions,
    KSEOptions,
    LowerOptions,
    QuantizeOptions,
    SelectOptions,
    TargetOptions,
    batch_list,
)


def _add_options(parser: argparse.ArgumentParser, cls) -> None:
    """One flag per dataclass field, typed by its default."""
    group = parser.add_argument_group(cls.__doc__.splitlines()[0].rstrip("."))
    for f in dataclasses.fields(cls):
        flag = f.metadata.get("flag") or "--" + f.name.replace("_", "-")
        kwargs = {"dest": f.name, "default": f.default, "help": f.metadata["help"]}
        if isinstance(f.default, bool):
            group.add_argument(flag, action=argparse.BooleanOptionalAction, **kwargs)
        elif isinstance(f.default, tuple):
            kwargs["default"] = list(f.default)
            group.add_argument(flag, action="append", metavar="GLOB", **kwargs)
        else:
            group.add_argument(flag, type=type(f.default), choices=f.metadata.get("choices"),
                               **kwargs)


def _options(args: argparse.Namespace, cls):
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls)}
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
    return cls(**values)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kse-onnx", description=(
        "Compress CNNs stored as ONNX with KSE (Kernel Sparsity and Entropy)."))
    parser.add_argument("--version", action="version", version=f"kse-onnx {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    commands = parser.add_subparsers(dest="command", required=True)

    score = commands.add_parser("score", help="print the KSE plan of every Conv; write nothing")
    score.add_argument("model", help="input .onnx file")
    score.add_argument("--json", metavar="PATH", help="also write the table as JSON")
    _add_options(score, KSEOptions)
    _add_options(score, SelectOptions)
    score.set_defaults(run=_run_score)

    optimize = commands.add_parser("optimize", help="write the KSE-compressed model")
    optimize.add_argument("input", help="input .onnx file")
    optimize.add_argument("output", help="output .onnx file")
    optimize.add_argument("--report", metavar="PATH", help="write the JSON report here")
    optimize.add_argument("--overwrite", action="store_true",
                          help="allow OUTPUT to be the same file as INPUT")
    _add_options(optimize, KSEOptions)
    _add_options(optimize, SelectOptions)
    _add_options(optimize, LowerOptions)
    _add_options(optimize, TargetOptions)
    _add_options(optimize, QuantizeOptions)
    _add_options(optimize, DataOptions)
    optimize.set_defaults(run=_run_optimize)

    verify = commands.add_parser("verify", help="check an optimized model against its original")
    verify.add_argument("original")
    verify.add_argument("optimized")
    verify.add_argument("--inputs", metavar="NPZ", help="real inputs (.npz, one array per input)")
    verify.add_argument("--batch", type=int, default=2, help="batch of the random inputs")
    verify.add_argument("--seed", type=int, default=0, help="seed of the random inputs")
    verify.add_argument("--rtol", type=float, default=1e-4,
                        help="relative error allowed for rewrite exactness")
    verify.set_defaults(run=_run_verify)

    finetune = commands.add_parser("finetune", help="recover accuracy by distillation")
    finetune.add_argument("compressed", help="model written by kse-onnx optimize")
    finetune.add_argument("output", help="fine-tuned .onnx file")
    finetune.add_argument("--teacher", required=True, help="the original .onnx model")
    finetune.add_argument("--data", required=True, help=".npz, IDX images file or folder")
    finetune.add_argument("--resume", action="store_true",
                          help="continue from OUTPUT.ckpt/last.pt")
    _add_options(finetune, FinetuneOptions)
    _add_options(finetune, DataOptions)
    _add_options(finetune, QuantizeOptions)
    finetune.set_defaults(run=_run_finetune)

    evaluate = commands.add_parser("eval", help="top-1/top-5 accuracy with onnxruntime")
    evaluate.add_argument("model")
    evaluate.add_argument("--data", required=True, help=".npz, IDX images file or folder")
    evaluate.add_argument("--compare", metavar="MODEL", help="report top-1 agreement with it")
    _add_options(evaluate, DataOptions)
    evaluate.set_defaults(run=_run_eval)

    bench = commands.add_parser("bench", help="median latency of models, interleaved")
    bench.add_argument("models", nargs="+", help=".onnx files; ratios are against the first")
    bench.add_argument("--provider", default="cpu", help="cpu, cuda or tensorrt")
    bench.add_argument("--batch", default="1", help="comma-separated batch sizes")
    bench.add_argument("--threads", type=int, default=1, help="intra-op threads")
    bench.add_argument("--repeats", type=int, default=30, help="timed runs per model")
    bench.set_defaults(run=_run_bench)
    return parser


def _run_score(args) -> int:
    from .api import score

    report = score(args.model, _options(args, KSEOptions), _options(args, SelectOptions))
    print(report.table())
    if args.json:
        report.write_json(args.json)
    return 0


def _run_optimize(args) -> int:
    from .api import optimize

    report = optimize(args.input, args.output, _options(args, KSEOptions),
                      _options(args, SelectOptions), _options(args, LowerOptions),
                      overwrite=args.overwrite, target=_options(args, TargetOptions),
                      quantize=_options(args, QuantizeOptions), data=_options(args, DataOptions))
    print(report.table())
    print(f"wrote {args.output}")
    if args.report:
        report.write_json(args.report)
    return 0


def _run_verify(args) -> int:
    from .runtime.verify import verify

    if args.batch < 1:
        raise OptionError("--batch", f"must be >= 1, got {args.batch}")
    if not args.rtol > 0:
        raise OptionError("--rtol", f"must be > 0, got {args.rtol}")
    result = verify(args.original, args.optimized, inputs=args.inputs, batch=args.batch,
                    rtol=args.rtol, seed=args.seed)
    print(result.summary())
    return 0 if result.exact else 1


def _run_finetune(args) -> int:
    from .finetune.train import finetune

    result = finetune(args.compressed, args.output, args.teacher, args.data,
                      _options(args, FinetuneOptions), _options(args, DataOptions),
                      resume=args.resume, quantize=_options(args, QuantizeOptions))
    print(f"wrote {args.output}; loss: {result['loss']}; best validation accuracy: "
          f"{result['best_val_accuracy']}")
    if "int8" in result:
        int8 = result["int8"]
        print(f"{int8['mode']}: {int8['integer_convs']} of {int8['convs']} convs run as "
              f"integer kernels; float: {int8['float_convs'] or 'none'}")
    return 0


def _run_eval(args) -> int:
    from .finetune.data import load_data
    from .runtime.evaluate import evaluate

    x, y = load_data(args.data, _options(args, DataOptions))
    print(evaluate(args.model, x, y, other=args.compare).summary())
    return 0


def _run_bench(args) -> int:
    from .graph.io import load_model
    from .runtime.bench import format_timings, interleaved_latency
    from .runtime.ort import provider_list

    providers = provider_list(args.provider)
    batches = batch_list(args.batch, "--batch")
    if args.threads < 1 or args.repeats < 1:
        raise OptionError("--threads/--repeats", "must be >= 1")
    models = {path: load_model(path) for path in args.models}
    rows = [(b, interleaved_latency(models, b, args.threads, args.repeats, providers=providers))
            for b in batches]
    print(format_timings(rows, providers))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except KSEError as exc:
        if args.debug:
            raise
        print(f"kse-onnx: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except Exception as exc:  # a bug of ours: one line unless --debug
        if args.debug:
            raise
        print(f"kse-onnx: internal error: {type(exc).__name__}: {exc} "
              "(rerun with --debug for the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

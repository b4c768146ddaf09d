"""``kse-onnx`` command line: parses arguments into the option dataclasses and calls the API."""

from __future__ import annotations

import argparse
import dataclasses
import os
import signal
import sys

from . import __version__
from .errors import KSEError
from .graph.io import model_files
from .options import (
    BenchOptions,
    BudgetOptions,
    CalibrationOptions,
    DataOptions,
    EvalFiles,
    FinetuneFiles,
    FinetuneOptions,
    GlobalOptions,
    GuardOptions,
    KSEOptions,
    LowerOptions,
    OptimizeFiles,
    ProgressOptions,
    QuantizeOptions,
    RefitFiles,
    RefitOptions,
    ScoreFiles,
    SelectOptions,
    TargetOptions,
    VerifyOptions,
    batch_list,
    check_combined,
)
from .paths import check_paths
from .terminal import CleanStream


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """``--help`` shows the default of every optional flag that has one."""

    def _get_help_string(self, action):
        if action.required or action.default in (None, "", []):
            return action.help
        return super()._get_help_string(action)


def _add_options(parser: argparse.ArgumentParser, *classes) -> None:
    """One flag group per option class, one flag per dataclass field, typed by its default;
    help, choices and metavar come from the field's metadata (kse_onnx/options/)."""
    for cls in classes:
        _add_group(parser, cls)


def _add_group(parser: argparse.ArgumentParser, cls) -> None:
    group = parser.add_argument_group(cls.__doc__.splitlines()[0].rstrip("."))
    for f in dataclasses.fields(cls):
        flag = f.metadata.get("flag") or "--" + f.name.replace("_", "-")
        kwargs = {"dest": f.name, "default": f.default, "help": f.metadata["help"]}
        if f.metadata.get("required"):
            kwargs["required"] = True
        if isinstance(f.default, bool):
            group.add_argument(flag, action=argparse.BooleanOptionalAction, **kwargs)
        elif isinstance(f.default, tuple):
            kwargs["default"] = list(f.default)
            group.add_argument(flag, action="append", metavar=f.metadata.get("metavar"),
                               **kwargs)
        else:
            group.add_argument(flag, type=type(f.default), choices=f.metadata.get("choices"),
                               metavar=f.metadata.get("metavar"), **kwargs)


def _options(args: argparse.Namespace, cls):
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls)}
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
    return cls(**values)


def add_command(commands, name: str, **kwargs) -> argparse.ArgumentParser:
    return commands.add_parser(name, formatter_class=HelpFormatter, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kse-onnx", formatter_class=HelpFormatter, description=(
        "Compress CNNs stored as ONNX with KSE (Kernel Sparsity and Entropy)."))
    parser.add_argument("--version", action="version", version=f"kse-onnx {__version__}")
    _add_options(parser, GlobalOptions)
    commands = parser.add_subparsers(dest="command", required=True)

    score = add_command(commands, "score", help="print the KSE plan of every Conv; write nothing")
    score.add_argument("model", help="input .onnx file")
    _add_options(score, ScoreFiles)
    _add_options(score, KSEOptions, SelectOptions, ProgressOptions)
    score.set_defaults(run=_run_score)

    optimize = add_command(commands, "optimize", help="write the KSE-compressed model")
    optimize.add_argument("input", help="input .onnx file")
    optimize.add_argument("output", help="output .onnx file")
    _add_options(optimize, OptimizeFiles)
    _add_options(optimize, KSEOptions, SelectOptions, LowerOptions, TargetOptions,
                 BudgetOptions, CalibrationOptions, RefitOptions, QuantizeOptions, DataOptions,
                 GuardOptions, ProgressOptions)
    optimize.set_defaults(run=_run_optimize)

    refit = add_command(commands, "refit", help="refit a model compressed earlier to its "
                        "original's outputs on unlabeled calibration images")
    refit.add_argument("compressed", help="model written by kse-onnx optimize (float)")
    refit.add_argument("output", help="refitted .onnx file")
    _add_options(refit, RefitFiles)
    _add_options(refit, CalibrationOptions, RefitOptions, DataOptions, ProgressOptions)
    refit.set_defaults(run=_run_refit)

    verify = add_command(commands, "verify", help="check an optimized model against its original")
    verify.add_argument("original")
    verify.add_argument("optimized")
    _add_options(verify, VerifyOptions)
    verify.set_defaults(run=_run_verify)

    finetune = add_command(commands, "finetune", help="recover accuracy by distillation")
    finetune.add_argument("compressed", help="model written by kse-onnx optimize")
    finetune.add_argument("output", help="fine-tuned .onnx file")
    _add_options(finetune, FinetuneFiles, FinetuneOptions, DataOptions, QuantizeOptions,
                 CalibrationOptions)
    finetune.set_defaults(run=_run_finetune)

    evaluate = add_command(commands, "eval", help="top-1/top-5 accuracy with onnxruntime")
    evaluate.add_argument("model")
    _add_options(evaluate, EvalFiles, DataOptions)
    evaluate.set_defaults(run=_run_eval)

    bench = add_command(commands, "bench", help="median latency of models, interleaved")
    bench.add_argument("models", nargs="+", help=".onnx files; ratios are against the first")
    _add_options(bench, BenchOptions)
    bench.set_defaults(run=_run_bench)
    return parser


def _run_score(args) -> int:
    from .api import score

    check_paths({"MODEL": model_files(args.model)}, {"--json": args.json})
    report = score(args.model, _options(args, KSEOptions), _options(args, SelectOptions),
                   _options(args, ProgressOptions))
    print(report.table())
    if args.json:
        report.write_json(args.json)
    return 0


def _run_optimize(args) -> int:
    """A thin layer over :func:`kse_onnx.api.optimize_model` and :func:`~kse_onnx.api.save`:
    every option is built (and validated) first, then the paths are checked, then the
    files are read."""
    from .api import optimize_model, save

    classes = (KSEOptions, SelectOptions, LowerOptions, TargetOptions, QuantizeOptions,
               DataOptions, CalibrationOptions, RefitOptions, BudgetOptions, GuardOptions,
               ProgressOptions)
    kse, select, lower, target, quantize, data, calibration, refit, budget, guard, progress = (
        _options(args, cls) for cls in classes)
    check_combined(lower, target, budget, quantize, calibration)  # options before files
    check_paths({"INPUT": model_files(args.input), "--calibration": args.calibration,
                 "--choices": lower.choices, "--validation": guard.validation},
                {"OUTPUT": args.output, "OUTPUT's weights file": f"{args.output}.data",
                 "--report": args.report},
                allow=(("OUTPUT", "INPUT"), ("OUTPUT's weights file", "INPUT"))
                if args.overwrite else ())
    built = optimize_model(args.input, calibration=calibration, kse=kse, select=select,
                           lower_options=lower, target=target, quantize=quantize, data=data,
                           refit=refit, budget=budget, guard=guard, progress=progress,
                           output_name=args.output)
    save(built, args.output)
    return _written(built.report, args)


def _written(report, args) -> int:
    print(report.table())
    print(f"wrote {args.output}")
    if args.report:
        report.write_json(args.report)
    return 0


def _run_refit(args) -> int:
    from .api import refit

    check_paths({"COMPRESSED": model_files(args.compressed),
                 "TEACHER": model_files(args.teacher), "--calibration": args.calibration},
                {"OUTPUT": args.output, "OUTPUT's weights file": f"{args.output}.data",
                 "--report": args.report})
    report = refit(args.compressed, args.output, args.teacher,
                   _options(args, CalibrationOptions), _options(args, RefitOptions),
                   _options(args, DataOptions), progress=_options(args, ProgressOptions))
    return _written(report, args)


def _run_verify(args) -> int:
    from .verify import verify

    opts = _options(args, VerifyOptions)
    if opts.max_drop:
        from .guard.gate import drop_gate  # the CI gate: needs real inputs, checked first

        gate = drop_gate(args.original, args.optimized, opts.inputs, opts.max_drop)
    inputs = None if opts.max_drop else opts.inputs or None  # the gate reads them
    result = verify(args.original, args.optimized, inputs=inputs,
                    batch=opts.batch, rtol=opts.rtol or None, seed=opts.seed)
    print(result.summary())
    if opts.max_drop:
        print(gate.line())
        return 0 if result.exact and gate.passed else 1
    return 0 if result.exact else 1


def _run_finetune(args) -> int:
    from .calibration import training_data
    from .finetune.train import finetune
    from .graph.io import load_model

    data, quantize = _options(args, DataOptions), _options(args, QuantizeOptions)
    opts = _options(args, FinetuneOptions)  # every option checked before a file is read
    calibration = _finetune_calibration(args, data, quantize)
    training = training_data(args.data, data, load_model(args.compressed))
    result = finetune(args.compressed, args.output, args.teacher, training, opts, data,
                      resume=args.resume, quantize=quantize, calibration=calibration)
    print(f"wrote {args.output}; loss: {result['loss']}; "
          f"{result.get('selection', 'no held-out split')}")
    if "int8" in result:
        int8 = result["int8"]
        print(f"{int8['mode']}: {int8['integer_convs']} of {int8['convs']} convs run as "
              f"integer kernels; float: {int8['float_convs'] or 'none'}")
    return 0


def _finetune_calibration(args, data: DataOptions, quantize: QuantizeOptions):
    """The images ``finetune --quantize int8-static`` calibrates on (``--calibration``,
    else the training data), read once here, after the paths are checked."""
    if quantize.quantize != "int8-static":
        return None
    from .calibration import as_images
    from .graph.io import load_model

    calibration = _options(args, CalibrationOptions)
    check_paths({"COMPRESSED": model_files(args.compressed),
                 "--calibration": calibration.calibration},
                {"OUTPUT": args.output, "OUTPUT's weights file": f"{args.output}.data",
                 "checkpoint folder/": f"{args.output}.ckpt"})
    return as_images(calibration.calibration or args.data, calibration.calibration_images,
                     data, model=load_model(args.compressed))


def _run_eval(args) -> int:
    from .evaluate import evaluate_data

    result = evaluate_data(args.model, args.data, _options(args, DataOptions),
                           other=args.compare or None)
    print(result.summary())
    return 0


def _run_bench(args) -> int:
    from .graph.io import load_model
    from .runtime.bench import bench_models, format_timings
    from .runtime.ort import provider_list

    opts = _options(args, BenchOptions)
    providers = provider_list(opts.provider)
    models = {path: load_model(path) for path in args.models}
    rows = bench_models(models, batch_list(opts.batch, "--batch"), opts.threads, opts.repeats,
                        providers)
    print(format_timings(rows, providers))
    return 0


def _error(text: str) -> None:
    print(f"kse-onnx: {text}", file=sys.stderr)


class Terminated(BaseException):
    """SIGTERM, raised in the main thread so that every ``finally`` and temporary-file
    cleanup runs as for Ctrl-C."""


def _on_sigterm(signum, frame):
    raise Terminated()


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        previous = signal.signal(signal.SIGTERM, _on_sigterm)
    except ValueError:  # not the main thread: leave signals alone
        previous = None
    streams = sys.stdout, sys.stderr  # names from models are printed escaped (.terminal)
    sys.stdout, sys.stderr = CleanStream(sys.stdout), CleanStream(sys.stderr)
    try:
        return _main(args)
    finally:
        sys.stdout, sys.stderr = streams
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _main(args) -> int:
    try:
        return args.run(args)
    except KeyboardInterrupt:
        _error("interrupted")
        return 130
    except Terminated:
        _error("terminated")
        return 143
    except BrokenPipeError:  # `kse-onnx score m.onnx | head`: the reader left, stop quietly
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError):
            pass
        return 141
    except KSEError as exc:
        if args.debug:
            raise
        _error(f"error: {exc}")
        return exc.exit_code
    except OSError as exc:  # read-only folder, disk full, ...: one line naming the path
        if args.debug:
            raise
        where = f"{exc.filename}: " if exc.filename else ""
        _error(f"error: {where}{exc.strerror or exc}")
        return 1
    except MemoryError:
        if args.debug:
            raise
        _error("error: out of memory")
        return 1
    except Exception as exc:  # a bug of ours: one line unless --debug
        if args.debug:
            raise
        _error(f"internal error: {type(exc).__name__}: {exc} "
               "(rerun with --debug for the traceback)")
        return 1


if __name__ == "__main__":
    sys.exit(main())

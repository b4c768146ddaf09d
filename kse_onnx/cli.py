"""``kse-onnx`` command line: parses arguments into the option dataclasses and calls the API."""

from __future__ import annotations

import argparse
import dataclasses
import sys

from . import __version__
from .errors import KSEError
from .options import KSEOptions, LowerOptions, SelectOptions


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
    optimize.set_defaults(run=_run_optimize)

    verify = commands.add_parser("verify", help="check an optimized model against its original")
    verify.add_argument("original")
    verify.add_argument("optimized")
    verify.add_argument("--inputs", metavar="NPZ", help="real inputs (.npz, one array per input)")
    verify.add_argument("--batch", type=int, default=2, help="batch of the random inputs")
    verify.add_argument("--rtol", type=float, default=1e-4,
                        help="relative error allowed for rewrite exactness")
    verify.set_defaults(run=_run_verify)
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
                      overwrite=args.overwrite)
    print(report.table())
    print(f"wrote {args.output}")
    if args.report:
        report.write_json(args.report)
    return 0


def _run_verify(args) -> int:
    from .runtime.verify import verify

    result = verify(args.original, args.optimized, inputs=args.inputs, batch=args.batch,
                    rtol=args.rtol)
    print(result.summary())
    return 0 if result.exact else 1


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

"""Progress output (kse_onnx/progress.py): a tqdm bar on a terminal, plain lines (never a
carriage return) when stderr is not one, nothing with --quiet; and the CLI flags."""

from __future__ import annotations

import io
import re

import onnx
import pytest

from graphs import GraphBuilder
from kse_onnx import progress
from kse_onnx.cli import build_parser, main
from kse_onnx.terminal import CleanStream


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_bar_on_a_terminal_has_rate_and_eta():
    stream = Terminal()
    bar = progress.bar(40, "layers", unit="layer", stream=stream, lines=True, mininterval=0)
    for _ in range(4):
        bar.update(10, loss="0.5")
    bar.close()
    text = stream.getvalue()
    assert "\r" in text and "layers" in text and "40/40" in text
    assert "layer/s" in text and "loss=0.5" in text


def test_bar_through_the_cli_escaping_keeps_its_carriage_return():
    terminal = Terminal()
    bar = progress.bar(8, "refit", unit="conv", stream=CleanStream(terminal), mininterval=0)
    bar.update(8)
    bar.close()
    assert "\r" in terminal.getvalue() and "\\r" not in terminal.getvalue()


def test_lines_in_a_log_one_per_tenth_and_no_carriage_return(monkeypatch):
    monkeypatch.setattr(progress, "LINE_AFTER_S", 0.0)
    log = io.StringIO()
    bar = progress.bar(100, "KSE analysis", unit="channel", stream=log, lines=True)
    for _ in range(50):
        bar.update(2, layers="x")
    bar.close()
    lines = log.getvalue().splitlines()
    assert len(lines) == 10 and "\r" not in log.getvalue()
    assert lines[0].startswith("KSE analysis: 10/100 channel") and "ETA" in lines[0]
    assert lines[-1].startswith("KSE analysis: 100/100 channel") and "ETA" not in lines[-1]


def test_quick_work_writes_no_lines(monkeypatch):
    monkeypatch.setattr(progress, "LINE_AFTER_S", 3600.0)
    log = io.StringIO()
    bar = progress.bar(10, "auto", stream=log, lines=True)
    bar.update(10)
    assert log.getvalue() == ""


@pytest.mark.parametrize("stream, quiet, lines", [
    (io.StringIO(), False, False),  # a log, fine-grained steps: the caller logs epochs
    (Terminal(), True, True),  # quiet on a terminal
    (io.StringIO(), True, True),  # quiet in a log
])
def test_silent(monkeypatch, stream, quiet, lines):
    monkeypatch.setattr(progress, "LINE_AFTER_S", 0.0)
    bar = progress.bar(4, "epoch 1", quiet=quiet, stream=stream, lines=lines)
    bar.update(4)
    bar.close()
    assert stream.getvalue() == ""


def test_interactive_means_a_terminal():
    assert progress.interactive(Terminal()) and not progress.interactive(io.StringIO())


@pytest.mark.parametrize("command", ["score", "optimize", "refit"])
def test_quiet_flag_with_its_default(command):
    parser = build_parser()
    sub = parser._subparsers._group_actions[0].choices[command]
    help_text = " ".join(sub.format_help().split())
    assert re.search(r"--quiet, --no-quiet no progress bars and no progress lines on stderr "
                     r"\(default: False\)", help_text)


def _net(path):
    b = GraphBuilder(3, 8)
    x = b.relu(b.conv(b.input.name, 3, 16))
    for _ in range(2):
        x = b.relu(b.conv(x, 16, 16))
    onnx.save(b.model(b.head(x, 16)), path)


def test_optimize_logs_lines_and_quiet_silences_them(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(progress, "LINE_AFTER_S", 0.0)
    src = tmp_path / "in.onnx"
    _net(src)
    args = ["optimize", str(src), str(tmp_path / "out.onnx"), "--G", "5", "--T", "1",
            "--batches", "1", "--overwrite"]
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "KSE analysis: 32/32 channel" in err and "auto: timing layers: 2/2 layer" in err
    assert "\r" not in err
    assert main([*args, "--quiet"]) == 0
    assert capsys.readouterr().err == ""
    assert main(["score", str(src)]) == 0
    assert "KSE analysis: 32/32 channel" in capsys.readouterr().err
    assert main(["score", str(src), "--quiet"]) == 0
    assert capsys.readouterr().err == ""

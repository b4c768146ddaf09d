"""Fuzzing: random CNNs through every lowering, mutated bytes through the loader, valid
and damaged data files through every command that reads them. Each case either succeeds
(and passes verify) or is refused with a KSEError; anything else is a crash and fails
the test. tools/scripts/fuzz.py runs thousands."""

from __future__ import annotations

import pytest

from tools.fuzzing.cases import (
    data_command,
    data_models,
    run_bytes_case,
    run_data_case,
    run_graph_case,
    run_structure_case,
)
from tools.fuzzing.generate import DATA_MUTATIONS, data_case
from tools.graphs import residual_net

CASES = 50


@pytest.mark.parametrize("block", range(5))
def test_random_graphs(tmp_path, block):
    outcomes = [run_graph_case(seed, tmp_path) for seed in range(block * 10, block * 10 + 10)]
    assert outcomes.count("ok") >= 5  # most random graphs are compressible


def test_mutated_bytes(tmp_path):
    base = residual_net(16)
    outcomes = [run_bytes_case(seed, tmp_path, base) for seed in range(CASES)]
    assert any(o.startswith("refused") for o in outcomes)


def test_invalid_utf8_name_is_refused(tmp_path):
    """Found by tools/scripts/fuzz.py (seed 1633): protobuf hands invalid UTF-8 back as bytes."""
    outcome = run_bytes_case(1633, tmp_path, residual_net(16))
    assert outcome.startswith("refused") and "UTF-8" in outcome


def test_mutated_structure(tmp_path):
    base = residual_net(16)
    outcomes = []
    for seed in range(24):
        folder = tmp_path / str(seed)
        folder.mkdir()
        outcomes.append(run_structure_case(seed, folder, base))
    assert "ok" in outcomes and any(o.startswith("refused") for o in outcomes)


def test_data_files(tmp_path):
    """A seeded sample of the data campaign (tools/scripts/fuzz.py --data runs 1,000): the six
    readers, four formats, valid and damaged."""
    models = data_models(tmp_path)
    outcomes = []
    # a refit that succeeds takes seconds (its least squares); tools/scripts/fuzz.py runs those
    quick = [s for s in range(60) if data_command(s) not in ("optimize", "refit")
             or DATA_MUTATIONS[data_case(s)[1]]]
    for seed in quick[:24]:
        folder = tmp_path / str(seed)
        folder.mkdir()
        outcomes.append(run_data_case(seed, folder, models))
    assert "ok" in outcomes and sum(o.startswith("refused") for o in outcomes) >= 12

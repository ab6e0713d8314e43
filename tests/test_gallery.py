"""The gallery of real training bugs (benchmarks/gallery): every case's header is complete and true to
the catalog, the scorer's rules hold, and a fast subset of cases is diagnosed as the benchmark says
(the full run is `python -m benchmarks.gallery`, see docs/benchmark.md)."""

from __future__ import annotations

import doctest
import importlib

import pytest
from benchmarks.gallery.case import all_cases
from benchmarks.gallery.runs import run_traindoc
from benchmarks.gallery.score import Outcome, Reported, score_case

from traindoc.catalog import CATALOG

CASES = all_cases()
BY_NAME = {c.name: c for c in CASES}

FAST = ["model/encoder_batch_first", "loss/softmax_before_cross_entropy", "data/imbalanced_fraud_plain_ce",
        "data/next_iter_loader_every_step", "optim/steplr_stepped_per_batch", "optim/clip_grad_norm_clips_every_step",
        "numerics/regression_sgd_lr_too_high"]
"""Cases run in the test suite, bug and twin, each a few seconds: the one-batch doctor on a setting's line
(batch_first) and on a layer's line (nn.Softmax), a twin that answers its bug in the loss (class
weights), the monitor on the loader's, the scheduler's and the clipping call's lines, and a run that
turns to NaN."""


@pytest.mark.parametrize("module", ["case", "score", "table"])
def test_gallery_doctests(module):
    mod = importlib.import_module(f"benchmarks.gallery.{module}")
    result = doctest.testmod(mod, optionflags=doctest.ELLIPSIS)
    assert result.attempted and not result.failed


def test_the_gallery_has_forty_cases_that_cover_every_category_of_the_catalog():
    assert len(CASES) >= 40
    assert {"data", "model", "loss", "optim", "numerics", "frameworks", "distributed"} <= {c.category for c in CASES}
    covered = {fid for c in CASES for fid in c.expected_ids}
    categories = {CATALOG[fid].category for fid in covered}
    assert {"data", "model", "optimization", "distributed"} <= categories


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_every_case_declares_known_ids_a_source_and_its_bug_line(case):
    assert case.expect and case.expected_ids <= set(CATALOG), case.expected_ids - set(CATALOG)
    assert all(s.startswith("https://") for s in case.sources)
    lines = case.path.read_text().splitlines()
    assert all(lines[n - 1].rstrip().endswith("# BUG") for n in case.bug_lines)
    assert "torch.manual_seed(" in case.path.read_text()  # deterministic


def test_a_case_scores_its_line_step_and_the_twins_false_errors():
    case = BY_NAME["model/encoder_batch_first"]
    line = case.bug_lines[0]
    wrong_line = Outcome("traindoc", [Reported("batch-mixing", "error", line + 1, 0)], 1.0)
    noisy_twin = Outcome("traindoc", [Reported("causal-leak", "error", 3, 0), Reported("probe-failed", "hint")], 1.0)
    s = score_case(case, wrong_line, noisy_twin)
    assert s.detected and s.line_ok is False and s.twin_errors == ["causal-leak"] and s.twin_hints == []
    missed = score_case(case, Outcome("traindoc", [Reported("loss-plateau", "warning", line, 50)], 1.0),
                        Outcome("traindoc", [], 1.0))
    assert not missed.detected and missed.found == 0 and missed.line_ok is None and missed.step is None


@pytest.mark.slow
@pytest.mark.parametrize("name", FAST)
def test_fast_cases_are_diagnosed_on_the_bug_line_and_their_twins_are_clean(name):
    case = BY_NAME[name]
    s = score_case(case, run_traindoc(case, fixed=False), run_traindoc(case, fixed=True))
    assert not s.error, s.error
    assert s.detected, s.reported_bug
    assert s.line_ok, s.reported_bug
    assert s.twin_errors == [], s.twin_errors

"""Finding / Report / catalog contracts (the CLI is tested in test_cli.py)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from traindoc import Finding, Report
from traindoc.catalog import CATALOG, markdown

ROOT = Path(__file__).resolve().parents[1]


def test_report_json_schema_and_order():
    report = Report([
        Finding("lr-too-high", "warning", "lr 1e-3 on a pretrained model", {"lr": 1e-3}, "use 5e-5"),
        Finding("label-out-of-range", "error", "label 2 >= 2 classes",
                {"values": torch.tensor([2, 2]), "loss": float("nan")}, "num_labels=3"),
    ], info={"task": "classification"})
    data = json.loads(report.to_json())
    assert data["version"] == 1 and data["ok"] is False
    assert [f["id"] for f in data["findings"]] == ["label-out-of-range", "lr-too-high"]  # errors first
    assert set(data["findings"][0]) == {"id", "severity", "title", "evidence", "fix"}
    assert data["findings"][0]["evidence"] == {"values": [2, 2], "loss": "nan"}
    again = Report.from_dict(data)
    assert again.ids == report.ids and again.info == report.info


def test_severity_is_checked_and_ok_means_no_error():
    with pytest.raises(ValueError):
        Finding("nan-forward", "fatal", "x")
    assert Report([Finding("weight-decay-on-norms", "hint", "x")]).ok


def test_catalog_ids_are_kebab_case_and_the_public_ids_exist():
    public = [
        "label-out-of-range", "pad-equals-eos", "padding-in-loss", "labels-not-shifted", "repeated-batch",
        "class-imbalance", "loss-at-chance", "batch-mixing", "causal-leak", "padding-leak", "nan-forward",
        "init-loss-mismatch", "double-softmax", "no-grad-params", "params-not-in-optimizer",
        "train-mode-off", "lr-too-high", "lr-too-low", "missing-zero-grad", "scheduler-misuse",
        "grad-accum-normalization", "loss-spike", "divergence", "loss-plateau", "vanishing-gradients",
        "exploding-gradients", "stalled-layers", "oom-risk",
    ]
    assert set(public) <= set(CATALOG)
    for fid in CATALOG:
        assert fid == fid.lower() and " " not in fid and "_" not in fid


def test_every_catalog_id_has_something_that_emits_it():
    """The catalog (and so docs/findings.md) lists only what traindoc can report: each id is a probe
    of `traindoc.check`, an id of a `traindoc.watch` detector, a distributed finding of `traindoc run` or
    the one-batch experiment's (the internal ones: traindoc's own)."""
    from traindoc.monitor.detectors import DETECTOR_TYPES
    from traindoc.probes.registry import PROBES
    from traindoc.script.distributed import DISTRIBUTED_IDS

    emitted = {p.name for p in PROBES} | {i for cls in DETECTOR_TYPES.values() for i in cls.ids} | set(DISTRIBUTED_IDS) | {"cannot-overfit-batch"}
    assert {e.id for e in CATALOG.values() if e.category != "internal"} <= emitted
    assert emitted - {"data-view"} <= set(CATALOG)


def test_docs_page_is_generated_from_the_catalog():
    assert (ROOT / "docs" / "findings.md").read_text() == markdown() + "\n", \
        "docs/findings.md is stale: run `traindoc catalog --markdown > docs/findings.md`"


def test_jsonable_handles_non_finite():
    from traindoc.findings import jsonable

    assert jsonable([math.inf, -math.inf, 1]) == ["inf", "-inf", 1]

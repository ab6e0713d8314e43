"""The TensorBoard event files traindoc writes itself: the batched CRC-32C against a reference loop,
files read back by TensorBoard's own reader, non-finite values, and no import of torch's writer."""

from __future__ import annotations

import math
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from traindoc.monitor import tensorboard as tb


def reference_crc32c(data: bytes) -> int:
    """CRC-32C bit by bit (reflected, polynomial 0x82F63B78), independent of any table."""
    crc = 0xFFFFFFFF
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
    return crc ^ 0xFFFFFFFF


def test_crc32c_known_vectors():
    assert reference_crc32c(b"123456789") == 0xE3069283
    assert tb.crc32c(b"123456789") == 0xE3069283
    assert tb.crc32c(b"") == 0 and reference_crc32c(b"") == 0
    assert tb.crc32c(bytes(32)) == 0x8A9136AA  # RFC 3720 B.4: 32 bytes of zeros
    assert tb.crc32c(b"\xff" * 32) == 0x62A8AB43
    assert list(tb.crc32c_many([b"123456789", b"", bytes(32)])) == [0xE3069283, 0, 0x8A9136AA]


def test_crc32c_many_equals_the_reference_on_random_records():
    rng = random.Random(0)
    lengths = [0, 0, 1, 2, 7, 8, 255, 256, 1023, 1024, 1025] + [rng.randrange(0, 3001) for _ in range(60)]
    rng.shuffle(lengths)
    chunks = [rng.randbytes(n) for n in lengths]
    got = tb.crc32c_many(chunks)
    assert got.dtype.name == "uint32" and len(got) == len(chunks)
    assert [int(c) for c in got] == [reference_crc32c(c) for c in chunks]
    assert tb.crc32c_many([]).shape == (0,)
    assert list(tb.crc32c_many([b"", b""])) == [0, 0]


def test_records_past_the_table_cap_fall_back_to_the_loop():
    rng = random.Random(1)
    chunks = [rng.randbytes(tb.TABLE_CAP + 1), b"", rng.randbytes(100), rng.randbytes(3 * tb.TABLE_CAP)]
    assert [int(c) for c in tb.crc32c_many(chunks)] == [reference_crc32c(c) for c in chunks]
    assert [int(c) for c in tb.crc32c_many(chunks[:1])] == [reference_crc32c(chunks[0])]


def test_tfrecord_framing_reads_back_with_masked_crcs():
    payloads = [b"", b"a", bytes(range(256)) * 5]
    blob = tb.tfrecords(payloads)

    def masked(c: int) -> int:
        return (((c >> 15) | (c << 17)) + 0xA282EAD8) & 0xFFFFFFFF

    pos, seen = 0, []
    while pos < len(blob):
        head = blob[pos:pos + 8]
        n = int.from_bytes(head, "little")
        assert int.from_bytes(blob[pos + 8:pos + 12], "little") == masked(reference_crc32c(head))
        data = blob[pos + 12:pos + 12 + n]
        assert int.from_bytes(blob[pos + 12 + n:pos + 16 + n], "little") == masked(reference_crc32c(data))
        seen.append(data)
        pos += 16 + n
    assert seen == payloads


def _lines(steps: int, layers: int = 10) -> tuple[list[dict], list[dict], list[dict]]:
    scalars = [{"step": s, "loss": 2.0 - 0.01 * s, "grad_norm": 1.0 + s, "lr": [1e-3, 5e-4], "clipped": s % 2 == 0,
                "nonfinite_grads": 0, "scaler_scale": None, "metrics": {"acc": 0.5}} for s in range(steps)]
    scalars[-1]["tokens_per_s"] = 1234.5
    layer_lines = [{"step": s, "grad_norm": {str(i): 0.1 * (i + 1) for i in range(layers)},
                    "update_ratio": {str(i): 1e-3 * (i + 1) for i in range(layers)}}
                   for s in range(0, steps, 2)]
    hists = [{"step": s, "layer": "0", "kind": kind, "edges": [-1.0, -0.5, 0.0, 0.5, 1.0], "counts": [1, 2, 3, 4]}
             for s in range(0, steps, 2) for kind in ("weight", "grad")]
    return scalars, layer_lines, hists


def _failures() -> tuple[list, object]:
    failures: list = []

    def guard(where, fn, *args):
        try:
            return fn(*args)
        except Exception as e:
            failures.append((where, repr(e)))  # like the watch's guard: text, no traceback
            return None

    return failures, guard


def _accumulator(logdir: Path):
    ea = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    acc = ea.EventAccumulator(str(logdir), size_guidance={"scalars": 0, "histograms": 0})
    acc.Reload()
    return acc


def test_a_written_file_reads_back_in_tensorboard(tmp_path):
    failures, guard = _failures()
    w = tb.TensorBoardWriter(tmp_path / "tb", 4, guard)
    scalars, layers, hists = _lines(10)
    w.submit(scalars[:5], layers[:3], hists[:6])
    w.submit(scalars[5:], layers[3:], hists[6:])
    w.close()
    w.close()
    w.release()
    assert failures == []
    (path,) = (tmp_path / "tb").iterdir()
    name = path.name.split(".")
    assert name[:3] == ["events", "out", "tfevents"] and name[-2] == str(os.getpid())

    acc = _accumulator(tmp_path / "tb")
    tags = acc.Tags()
    assert [e.step for e in acc.Scalars("loss")] == list(range(10))
    assert [e.value for e in acc.Scalars("loss")] == pytest.approx([2.0 - 0.01 * s for s in range(10)])
    assert [e.value for e in acc.Scalars("grad_norm")] == pytest.approx([1.0 + s for s in range(10)])
    assert [e.value for e in acc.Scalars("clipped")] == [1.0, 0.0] * 5
    assert [e.value for e in acc.Scalars("lr/group1")] == pytest.approx([5e-4] * 10)
    assert [e.value for e in acc.Scalars("metrics/acc")] == [0.5] * 10
    assert [e.value for e in acc.Scalars("nonfinite_grads")] == [0.0] * 10
    assert [(e.step, e.value) for e in acc.Scalars("tokens_per_s")] == [(9, 1234.5)]
    assert "scaler_scale" not in tags["scalars"]
    # per-layer data on multiples of every=4 only
    assert [e.step for e in acc.Scalars("layer_grad_norm/9")] == [0, 4, 8]
    assert acc.Scalars("layer_update_ratio/2")[0].value == pytest.approx(3e-3)
    assert sorted(tags["histograms"]) == ["grads/0", "weights/0"]
    h = acc.Histograms("weights/0")
    assert [e.step for e in h] == [0, 4, 8]
    v = h[0].histogram_value
    assert (v.min, v.max, v.num) == (-1.0, 1.0, 10.0)
    assert list(v.bucket_limit) == [-0.5, 0.0, 0.5, 1.0] and list(v.bucket) == [1, 2, 3, 4]
    centers = [-0.75, -0.25, 0.25, 0.75]
    assert v.sum == pytest.approx(sum(c * x for c, x in zip([1, 2, 3, 4], centers, strict=True)))
    assert v.sum_squares == pytest.approx(sum(c * x * x for c, x in zip([1, 2, 3, 4], centers, strict=True)))


def test_a_step_with_many_values_is_split_into_bounded_events(tmp_path):
    loader = pytest.importorskip("tensorboard.backend.event_processing.event_file_loader")
    from tensorboard.compat.proto.event_pb2 import Event
    _, guard = _failures()
    w = tb.TensorBoardWriter(tmp_path, 1, guard)
    layers = [{"step": 0, "grad_norm": {f"block.{i}.mlp": float(i) for i in range(300)}, "update_ratio": {}}]
    w.submit([{"step": 0, "loss": 1.0}], layers, [])
    w.close()
    (path,) = tmp_path.iterdir()
    records = list(loader.RawEventFileLoader(str(path)).Load())
    events = [Event.FromString(r) for r in records]
    assert events[0].file_version == "brain.Event:2"
    sizes = [len(r) for r in records[1:]]
    assert len(sizes) > 5 and max(sizes) <= tb.EVENT_BYTES + 32
    assert all(e.step == 0 for e in events[1:])
    assert sum(len(e.summary.value) for e in events[1:]) == 301
    acc = _accumulator(tmp_path)
    assert acc.Scalars("layer_grad_norm/block.299.mlp")[0].value == 299.0


def test_nonfinite_loss_is_kept_and_other_nonfinite_values_dropped(tmp_path):
    failures, guard = _failures()
    w = tb.TensorBoardWriter(tmp_path, 1, guard)
    nan, inf = float("nan"), float("inf")
    w.submit([{"step": 0, "loss": nan, "grad_norm": inf, "lr": [nan, 0.1], "metrics": {"a": nan, "b": 2, "c": "x"},
               "tokens_per_s": None, "scaler_scale": -inf, "clipped": None, "nonfinite_grads": 3},
              {"step": 1, "loss": inf, "grad_norm": 1e39, "lr": [], "metrics": None},
              {"step": 2, "loss": None, "grad_norm": True},
              {"step": 3, "loss": 1, "grad_norm": -1e300}],
             [{"step": 0, "grad_norm": {"a": nan, "b": 1.0}, "update_ratio": None}],
             [{"step": 0, "layer": "x", "kind": "grad", "edges": [0.0, 1.0], "counts": [0]}])
    w.close()
    assert failures == []
    acc = _accumulator(tmp_path)
    tags = acc.Tags()
    loss = acc.Scalars("loss")
    assert [e.step for e in loss] == [0, 1, 3]  # a NaN/Inf loss kept; an int loss is not a float loss
    assert math.isnan(loss[0].value) and loss[1].value == math.inf
    assert [(e.step, e.value) for e in acc.Scalars("grad_norm")] == [(1, math.inf), (3, -math.inf)]
    assert [e.value for e in acc.Scalars("metrics/b")] == [2.0]
    assert [e.value for e in acc.Scalars("nonfinite_grads")] == [3.0]
    assert [e.value for e in acc.Scalars("lr/group1")] == pytest.approx([0.1])
    assert {"lr/group0", "metrics/a", "metrics/c", "scaler_scale", "tokens_per_s", "clipped",
            "layer_grad_norm/a"}.isdisjoint(tags["scalars"])
    assert "layer_grad_norm/b" in tags["scalars"] and tags["histograms"] == []


def test_write_errors_go_to_the_guard_and_release_holds_no_writer(tmp_path):
    import gc
    import weakref

    failures, guard = _failures()
    w = tb.TensorBoardWriter(tmp_path, 1, guard)
    release = w.release
    ref = weakref.ref(w)
    w.submit([{"step": 0}], [{"grad_norm": {}}], [])  # a layer line without a step: recorded, not raised
    assert [where for where, _ in failures] == ["tensorboard"]
    del w
    gc.collect()
    assert ref() is None
    release()
    release()


def test_the_writer_imports_no_tensorboard(tmp_path):
    code = f"""
import sys
from traindoc.monitor.tensorboard import TensorBoardWriter, tensorboard_available
before = {{m for m in sys.modules if 'tensorboard' in m and not m.startswith('traindoc')}}
tensorboard_available()
w = TensorBoardWriter({str(tmp_path)!r}, 1, lambda where, fn, *a: fn(*a))
w.submit([{{'step': 0, 'loss': 1.0}}], [{{'step': 0, 'grad_norm': {{'a': 1.0}}}}],
         [{{'step': 0, 'layer': 'a', 'kind': 'weight', 'edges': [0.0, 1.0], 'counts': [2]}}])
w.close()
after = {{m for m in sys.modules if 'tensorboard' in m and not m.startswith('traindoc')}}
print(sorted(before), sorted(after))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[] []"
    assert len(list(tmp_path.iterdir())) == 1


def test_a_flush_past_two_gigabytes_of_table_offsets_stays_exact():
    """Over ~8 MB in one call the flat table offsets no longer fit int32: the same record repeated
    must give the same CRC everywhere."""
    record = random.Random(2).randbytes(tb.TABLE_CAP)
    crcs = tb.crc32c_many([record] * (2**31 // 257 // tb.TABLE_CAP + 2))
    assert set(crcs.tolist()) == {reference_crc32c(record)}

"""TensorBoard event files for a watched run (``RUN_DIR/tb``), written at flush time only, by one
background thread.

`torch.utils.tensorboard` (and through it the ``tensorboard`` package) is imported when the watch
starts (only when tensorboard is installed), so ``import traindoc`` never pays for it. Tags::

    loss, grad_norm, clipped, nonfinite_grads, scaler_scale, tokens_per_s    scalars per step
    lr/group{i}                                                              LR of each param group
    metrics/{name}                                                           what the user logged
    layer_grad_norm/{layer}, layer_update_ratio/{layer}                      every K steps
    weights/{layer}, grads/{layer}                                           histograms every H steps

The writer costs ~0.2 ms per event (TensorBoard computes its record CRC in pure Python without
TensorFlow), so `TensorBoardWriter` sends per-layer data only on steps that are multiples of its
``every``, and writes on a worker thread while the training thread is back in torch ops (which
release the GIL); events keep their order (one worker), and `close` waits for them. The run
directory keeps every step.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from traindoc.numbers import finite


def tensorboard_available() -> bool:
    """True when torch's SummaryWriter can be used (the ``tensorboard`` package is installed)."""
    import importlib.util

    return importlib.util.find_spec("tensorboard") is not None


class TensorBoardSink:
    """Writes the host-side records of one flush to TensorBoard."""

    def __init__(self, logdir: str | Path):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(logdir))

    def write_scalars(self, scalars: Iterable[dict[str, Any]]) -> None:
        w = self.writer
        for rec in scalars:
            step = rec["step"]
            for key in ("loss", "grad_norm", "nonfinite_grads", "scaler_scale", "tokens_per_s"):
                v = rec.get(key)
                if finite(v) or (key == "loss" and isinstance(v, float)):
                    w.add_scalar(key, v, step)
            if rec.get("clipped") is not None:
                w.add_scalar("clipped", float(bool(rec["clipped"])), step)
            for i, lr in enumerate(rec.get("lr") or []):
                if finite(lr):
                    w.add_scalar(f"lr/group{i}", lr, step)
            for name, v in (rec.get("metrics") or {}).items():
                if finite(v):
                    w.add_scalar(f"metrics/{name}", v, step)

    def write_layers(self, layers: Iterable[dict[str, Any]]) -> None:
        w = self.writer
        for rec in layers:
            step = rec["step"]
            for kind in ("grad_norm", "update_ratio"):
                for layer, v in (rec.get(kind) or {}).items():
                    if finite(v):
                        w.add_scalar(f"layer_{kind}/{layer}", v, step)

    def write_histograms(self, histograms: Iterable[dict[str, Any]]) -> None:
        w = self.writer
        for rec in histograms:
            counts, edges = rec["counts"], rec["edges"]
            num = float(sum(counts))
            if num <= 0:
                continue
            centers = [(a + b) / 2 for a, b in zip(edges[:-1], edges[1:], strict=True)]
            total = sum(c * x for c, x in zip(counts, centers, strict=True))
            total_sq = sum(c * x * x for c, x in zip(counts, centers, strict=True))
            tag = ("weights/" if rec["kind"] == "weight" else "grads/") + rec["layer"]
            w.add_histogram_raw(tag, min=edges[0], max=edges[-1], num=num, sum=total, sum_squares=total_sq,
                                bucket_limits=edges[1:], bucket_counts=counts, global_step=rec["step"])

    def flush(self) -> None:
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class TensorBoardWriter:
    """Sends each flush's lines to a `TensorBoardSink` on one background thread."""

    def __init__(self, logdir: str | Path, every: int, guard: Callable[..., Any]):
        self.sink = TensorBoardSink(logdir)
        self.every = every
        self.guard = guard  # runs a call, recording (not raising) traindoc's own failures
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="traindoc-tensorboard")

    def submit(self, scalars: list[dict[str, Any]], layers: list[dict[str, Any]],
               histograms: list[dict[str, Any]]) -> None:
        k = self.every
        self._pool.submit(self.guard, "tensorboard", self._write, scalars, [r for r in layers if r["step"] % k == 0],
                          [r for r in histograms if r["step"] % k == 0])

    def _write(self, scalars: list[dict[str, Any]], layers: list[dict[str, Any]],
               histograms: list[dict[str, Any]]) -> None:
        self.sink.write_scalars(scalars)
        self.sink.write_layers(layers)
        self.sink.write_histograms(histograms)
        self.sink.flush()

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        self.sink.close()

    @property
    def release(self) -> Callable[[], None]:
        """A function that ends the worker and closes the event file, holding neither this writer nor
        what its guard refers to (for a watch garbage-collected without ``close()``)."""
        pool, writer = self._pool, self.sink.writer

        def release() -> None:
            pool.shutdown(wait=False)
            writer.close()

        return release

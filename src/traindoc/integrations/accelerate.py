"""`traindoc.watch` under Hugging Face Accelerate.

    accelerator = Accelerator(gradient_accumulation_steps=2)
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    w = watch_accelerated(accelerator, model, optimizer)   # or traindoc.watch(model, optimizer)
    for batch in loader:
        with accelerator.accumulate(model):
            loss = model(**batch).loss
            accelerator.backward(loss)
            optimizer.step(); optimizer.zero_grad()
            w.log(loss=loss.detach())
    report = w.close()

The prepared optimizer is an ``AcceleratedOptimizer``: its ``step()`` runs on every micro-batch
but steps the real optimizer only when gradients are synchronised (every
``gradient_accumulation_steps`` micro-batches). `traindoc.watch` unwraps it and hooks the torch
optimizer inside, so one watched step is one real update, with the backward count of the
accumulation and the micro-batch losses averaged. `watch_accelerated` adds what only the
accelerator knows: the model without its distributed wrapper, the AMP GradScaler of fp16 runs
(skipped steps and scale are then recorded), and one run directory per process
(``RUN_DIR/rank<i>``) when there are several.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def watch_accelerated(accelerator: Any, model: Any, optimizer: Any, *, run_dir: str | Path | None = None,
                      **options: Any) -> Any:
    """`traindoc.watch` for objects returned by ``accelerator.prepare``; returns the `Watch`.

    Args:
        accelerator: the ``accelerate.Accelerator``.
        model, optimizer: as returned by ``accelerator.prepare`` (unprepared ones work too).
        run_dir: the run directory; with several processes each gets ``run_dir/rank<i>``.
        **options: passed to `traindoc.watch`.
    """
    from traindoc.api import watch
    from traindoc.setup import unwrap_optimizer

    unwrapped = accelerator.unwrap_model(model) if hasattr(accelerator, "unwrap_model") else model
    scaler = getattr(accelerator, "scaler", None)
    if scaler is not None:
        options.setdefault("scaler", scaler)
    if run_dir is not None and getattr(accelerator, "num_processes", 1) > 1:
        run_dir = Path(run_dir) / f"rank{accelerator.process_index}"
    return watch(unwrapped, unwrap_optimizer(optimizer), run_dir=run_dir, **options)

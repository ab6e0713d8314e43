"""traindoc inside the training frameworks people already use.

* `traindoc.integrations.hf.TraindocCallback` — a Hugging Face ``transformers.TrainerCallback``;
* `traindoc.integrations.lightning.TraindocCallback` — a Lightning ``Callback``;
* `traindoc.integrations.accelerate.watch_accelerated` — `traindoc.watch` under
  ``accelerator.prepare(...)`` (``accelerator.backward``, ``accelerator.accumulate``).

Each one ends in the same place as `traindoc.watch`: a run directory and a `Report` (the callbacks
keep it at ``callback.report``). Importing this package is cheap: a framework is imported only by
the submodule that needs it, when that submodule is imported (tests/test_integrations.py checks it).
"""

from __future__ import annotations

__all__ = ["accelerate", "hf", "lightning"]

"""Overhead of `traindoc.watch`, of a peer tool (Cockpit) and of torch's anomaly mode, against a bare loop.

One process, per model, runs the bare training loop and the same loop under each setting:

* ``traindoc default``: ``traindoc.watch(model, opt, quiet=True)`` (layer stats every 10 steps,
  histograms every 100, flush every 50; TensorBoard at its default, i.e. on when installed);
* ``traindoc everything every step``: ``every=1, histograms_every=1`` (per-layer norms,
  update/weight ratios and weight+gradient histograms on every step);
* ``Cockpit every step`` and ``Cockpit every 16th step``: the peer, Cockpit (github f-dangel/cockpit,
  on BackPACK), used as its README example does: ``backpack.extend`` on the model and on a
  ``CrossEntropyLoss(reduction="mean")``, a per-sample ``losses`` tensor, ``with cockpit(step,
  info=...)`` around ``loss.backward(create_graph=cockpit.create_graph(step))``, with the quantities
  of ``configuration(--cockpit-config)`` (default ``economy``, its cheapest preset; the same for
  both rows) on the schedule ``schedules.linear(1)`` or ``schedules.linear(16)``. Where Cockpit
  raises on a model (it does on ``nn.TransformerEncoder``) the row says ``fails: ...``; where it is
  not installed, ``not installed``;
* ``torch.autograd.detect_anomaly``: the bare loop under ``torch.autograd.set_detect_anomaly(True)``
  (what people turn on to find a NaN; traindoc instead replays the saved batch when one appears);
* ``(floor) bare + one fused gradient norm per step``: the bare loop plus one ``torch._foreach_norm``
  over all gradients before the optimizer step, i.e. the least that any monitor reporting the
  gradient norm of every step must do (traindoc's default does it, or reuses the norm the user's
  ``clip_grad_norm_`` computed). Where this row is above 1.00x, that part of traindoc's cost is the
  memory traffic of reading every gradient once, not traindoc's own work.

Two models: ``tinygpt`` (a 4-layer decoder-only transformer, d=128, T=64, B=16, AdamW, clip 1.0) and
``mlp`` (Linear 512-1024-512-10 with ReLUs, 1.07M params, B=64, SGD lr 0.01, no clipping,
cross-entropy: a step of a few ms, where a fixed per-step cost shows most).

Method. A round is ``--steps`` steps of one setting. Every measured round has its own bare round
next to it (bare first on even rounds, second on odd ones), and the order of the settings rotates
by one from round to round, so drift of the CPU's speed or of other load hits bare and measured
alike. Every setting is warmed up once (10 steps) before measuring. Each measured round builds
its tool fresh (``traindoc.watch`` / the Cockpit with a freshly ``extend``-ed copy of the model
and optimizer, whose state is copied back after the round) before its first timed step and closes
it after the last; a flush that happens inside a step is counted, as it is a real cost. A step's
wall time is ``time.perf_counter`` around forward + loss + backward + (clip) + optimizer step +
zero_grad (+ ``w.log(loss=loss, tokens=...)`` for traindoc, + the per-sample losses and the
Cockpit context for Cockpit). Each round's CPU time is ``time.process_time`` around its steps (all
threads), steadier than wall time on a machine shared with other work.

The table (markdown) shows per setting: the median over rounds of the per-round median step time,
bare and measured; ratio of medians = median over rounds of (measured median / bare median of its
pair); ratio of means = the same with per-round means (what a flush or an every-16th step adds
shows here, not in the median); the min-max of the per-round median ratio; the median of
per-round CPU-time ratios.

Peers (optional) are installed into the venv without touching torch with

    .venv/bin/pip install --no-deps -c constraints-cpu.txt -r benchmarks/requirements-peers.txt

(``--no-deps``: see that file; the only torchvision matching torch 2.13.0 on the index is a CUDA
build that breaks ``import torchvision`` and so lightning/torchmetrics in a CPU venv.)

    .venv/bin/python benchmarks/monitor_overhead.py                       # both models, all settings
    .venv/bin/python benchmarks/monitor_overhead.py --quick               # smoke run, a few minutes
    .venv/bin/python benchmarks/monitor_overhead.py --model mlp --rounds 4 --steps 100
    .venv/bin/python benchmarks/monitor_overhead.py --settings default,everything,anomaly
"""

from __future__ import annotations

import argparse
import copy
import shutil
import statistics
import sys
import tempfile
import time
import types
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

try:
    import traindoc
    _TRAINDOC_ERROR: str | None = None
except Exception as e:  # the monitor may be mid-change: report it in the rows, still time the rest
    traindoc = None  # type: ignore[assignment]
    _TRAINDOC_ERROR = f"{type(e).__name__}: {e}"


# ---------------------------------------------------------------------------------------- models

class TinyGPT(nn.Module):
    """A decoder-only transformer: token + position embeddings, pre-norm causal blocks, LM head."""

    def __init__(self, vocab: int = 512, d: int = 128, layers: int = 4, heads: int = 4, max_len: int = 64):
        super().__init__()
        self.tok = nn.Embedding(vocab, d)
        self.pos = nn.Embedding(max_len, d)
        block = nn.TransformerEncoderLayer(d, heads, 4 * d, dropout=0.0, batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(block, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, vocab)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        t = ids.shape[1]
        mask = nn.Transformer.generate_square_subsequent_mask(t)
        h = self.tok(ids) + self.pos(torch.arange(t))
        h = self.blocks(h, mask=mask, is_causal=True)
        return self.head(self.norm(h))


def make_mlp() -> nn.Sequential:
    return nn.Sequential(nn.Linear(512, 1024), nn.ReLU(), nn.Linear(1024, 512), nn.ReLU(), nn.Linear(512, 10))


@dataclass
class Workload:
    """One model's training setup: how to build it, its batches, and one step's pieces."""

    name: str
    describe: str
    model: nn.Module
    make_opt: Callable[[Any], torch.optim.Optimizer]
    batches: list[Any]
    outputs: Callable[[nn.Module, Any], tuple[torch.Tensor, torch.Tensor]]  # (logits 2-D, targets 1-D)
    tokens: Callable[[Any], int]
    clip: float | None
    opt: torch.optim.Optimizer = field(init=False)

    def __post_init__(self) -> None:
        self.opt = self.make_opt(self.model.parameters())

    @property
    def n_params(self) -> int:
        return sum(p.numel() for p in self.model.parameters())


def tinygpt_workload(steps: int, layers: int = 4, d: int = 128, seq: int = 64, batch: int = 16) -> Workload:
    vocab = 512
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    batches = [torch.randint(0, vocab, (batch, seq + 1), generator=g) for _ in range(steps)]

    def outputs(model: nn.Module, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = model(ids[:, :-1])
        return logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1)

    return Workload(
        name="tinygpt",
        describe=f"TinyGPT: {layers} layers, d={d}, T={seq}, B={batch}, vocab {vocab}, AdamW lr 3e-4, clip 1.0",
        model=TinyGPT(vocab=vocab, d=d, layers=layers, max_len=seq),
        make_opt=lambda params: torch.optim.AdamW(params, lr=3e-4),
        batches=batches, outputs=outputs, tokens=lambda ids: ids[:, 1:].numel(), clip=1.0)


def mlp_workload(steps: int, batch: int = 64) -> Workload:
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    batches = [(torch.randn(batch, 512, generator=g), torch.randint(0, 10, (batch,), generator=g))
               for _ in range(steps)]

    def outputs(model: nn.Module, xy: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = xy
        return model(x), y

    return Workload(
        name="mlp",
        describe=f"MLP 512-1024-512-10 (ReLU), B={batch}, SGD lr 0.01, no clipping, cross-entropy",
        model=make_mlp(),
        make_opt=lambda params: torch.optim.SGD(params, lr=0.01),
        batches=batches, outputs=outputs, tokens=lambda xy: xy[0].shape[0],  # samples, for an MLP
        clip=None)


# ------------------------------------------------------------------------------------- settings

class SettingFailed(Exception):
    """A setting cannot run on this model (its row says why)."""


def _one_line(e: BaseException) -> str:
    text = f"{type(e).__name__}: {e}".replace("|", "/")
    return " ".join(text.split())[:160]


def train_step(wl: Workload, batch: Any, before_step: Callable[[], None] | None = None) -> torch.Tensor:
    """One step of the workload's loop (forward, loss, backward, clip, optimizer step, zero_grad)."""
    model, opt = wl.model, wl.opt
    logits, target = wl.outputs(model, batch)
    loss = F.cross_entropy(logits, target)
    loss.backward()
    if wl.clip is not None:
        torch.nn.utils.clip_grad_norm_(model.parameters(), wl.clip)
    if before_step is not None:
        before_step()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return loss


def bare_round(wl: Workload, batches: list[Any], anomaly: bool = False, grad_norm: bool = False,
               ) -> tuple[list[float], float]:
    """The bare loop (optionally under torch's anomaly mode, or with one fused gradient norm per step
    before the optimizer step); per-step wall seconds, round CPU seconds."""
    params = [p for p in wl.model.parameters() if p.requires_grad]
    norms = torch.zeros(len(params))

    def norm() -> None:  # what any per-step gradient-norm monitor must at least do: read every gradient once
        torch.stack(torch._foreach_norm([p.grad for p in params], 2.0), out=norms)

    previous = torch.is_anomaly_enabled()
    torch.autograd.set_detect_anomaly(anomaly)
    try:
        times = []
        cpu0 = time.process_time()
        for batch in batches:
            t0 = time.perf_counter()
            train_step(wl, batch, norm if grad_norm else None)
            times.append(time.perf_counter() - t0)
        return times, time.process_time() - cpu0
    finally:
        torch.autograd.set_detect_anomaly(previous)


def traindoc_round(wl: Workload, batches: list[Any], watch_kwargs: dict[str, Any],
                   notes: dict[str, str]) -> tuple[list[float], float]:
    """The same loop, watched by a fresh `traindoc.watch`, built before the first timed step."""
    if traindoc is None:
        raise SettingFailed(f"fails: import traindoc: {_TRAINDOC_ERROR}")
    model, opt = wl.model, wl.opt
    run_dir = tempfile.mkdtemp(prefix="traindoc-bench-")
    try:
        try:
            w = traindoc.watch(model, opt, run_dir=run_dir, quiet=True, **watch_kwargs)
        except Exception as e:
            raise SettingFailed(f"fails: traindoc.watch: {_one_line(e)}") from e
        try:
            times = []
            cpu0 = time.process_time()
            for batch in batches:
                t0 = time.perf_counter()
                loss = train_step(wl, batch)
                w.log(loss=loss, tokens=wl.tokens(batch))
                times.append(time.perf_counter() - t0)
            cpu = time.process_time() - cpu0
        finally:
            w.close()
        # the watch never raises into training: it records its own failures. A failing monitor would
        # look cheap, so a recorded failure fails the row instead.
        places = getattr(getattr(w, "failures", None), "places", None) or {}
        if places:
            where, entry = next(iter(places.items()))
            summary = entry.get("exception", "") if isinstance(entry, dict) else str(entry)
            raise SettingFailed(f"fails: the watch recorded internal failures ({', '.join(places)}); "
                                f"{where}: {' '.join(str(summary).split())[:120]}")
        notes["tensorboard"] = "written" if any(Path(run_dir).rglob("events.out.tfevents*")) else "none"
        return times, cpu
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)


_COCKPIT: dict[str, Any] = {}


def import_cockpit() -> dict[str, Any] | str:
    """Cockpit's modules, or the reason they cannot be had ("not installed" / "fails: ...")."""
    if _COCKPIT:
        return _COCKPIT
    shim = None
    try:
        import pkg_resources  # noqa: F401  (cockpit 1.0.2's __init__ imports it for its __version__)
    except ImportError:  # setuptools >= 81 dropped pkg_resources; give cockpit the two names it uses
        shim = types.ModuleType("pkg_resources")

        class DistributionNotFound(Exception):
            pass

        def get_distribution(name: str) -> Any:
            raise DistributionNotFound(name)

        shim.DistributionNotFound = DistributionNotFound  # type: ignore[attr-defined]
        shim.get_distribution = get_distribution  # type: ignore[attr-defined]
        sys.modules["pkg_resources"] = shim
    try:
        import backpack
        from cockpit import Cockpit, CockpitPlotter  # noqa: F401  (the documented import)
        from cockpit.utils import schedules
        from cockpit.utils.configuration import configuration
    except ModuleNotFoundError as e:
        if e.name and e.name.split(".")[0] in ("cockpit", "backpack"):
            return "not installed"
        return f"fails: import cockpit: {_one_line(e)}"
    except Exception as e:
        return f"fails: import cockpit: {_one_line(e)}"
    finally:
        if shim is not None and sys.modules.get("pkg_resources") is shim:
            del sys.modules["pkg_resources"]
    from importlib.metadata import version
    _COCKPIT.update(Cockpit=Cockpit, schedules=schedules, configuration=configuration, extend=backpack.extend,
                    version=f"cockpit-for-pytorch {version('cockpit-for-pytorch')}, "
                            f"backpack-for-pytorch {version('backpack-for-pytorch')}")
    return _COCKPIT


def cockpit_round(wl: Workload, batches: list[Any], interval: int, config: str) -> tuple[list[float], float]:
    """The loop as Cockpit's README runs it, on a freshly extended copy of the model and optimizer."""
    cp_mod = import_cockpit()
    if isinstance(cp_mod, str):
        raise SettingFailed(cp_mod)
    extend = cp_mod["extend"]
    # BackPACK's extend() hooks every module for good, which would slow the bare rounds too; so
    # Cockpit gets a copy, extended here (outside the timed steps), whose state goes back after.
    model = extend(copy.deepcopy(wl.model))
    opt = wl.make_opt(model.parameters())
    opt.load_state_dict(wl.opt.state_dict())
    loss_fn = extend(nn.CrossEntropyLoss(reduction="mean"))
    individual_loss_fn = nn.CrossEntropyLoss(reduction="none")
    quantities = cp_mod["configuration"](config, track_schedule=cp_mod["schedules"].linear(interval))
    cockpit = cp_mod["Cockpit"](model.parameters(), quantities=quantities)
    times = []
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Full backward hook is firing")
        warnings.filterwarnings("ignore", message="Extension saving to")
        cpu0 = time.process_time()
        try:
            for step, batch in enumerate(batches):
                t0 = time.perf_counter()
                logits, target = wl.outputs(model, batch)
                loss = loss_fn(logits, target)
                losses = individual_loss_fn(logits, target)
                with cockpit(step, info={"batch_size": target.shape[0], "individual_losses": losses,
                                         "loss": loss, "optimizer": opt}):
                    loss.backward(create_graph=cockpit.create_graph(step))
                if wl.clip is not None:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), wl.clip)
                opt.step()
                opt.zero_grad(set_to_none=True)
                times.append(time.perf_counter() - t0)
        except Exception as e:
            raise SettingFailed(f"fails: {_one_line(e)}") from e
        cpu = time.process_time() - cpu0
    with torch.no_grad():  # training goes on from where Cockpit's copy left it
        for p, q in zip(wl.model.parameters(), model.parameters(), strict=True):
            p.copy_(q)
    wl.opt.load_state_dict(opt.state_dict())
    return times, cpu


@dataclass
class Setting:
    key: str
    label: str
    run: Callable[[Workload, list[Any]], tuple[list[float], float]]


def make_settings(args: argparse.Namespace, notes: dict[str, str]) -> list[Setting]:
    cfg = args.cockpit_config
    all_settings = [
        Setting("default", "traindoc default",
                lambda wl, b: traindoc_round(wl, b, {}, notes)),
        Setting("everything", "traindoc everything every step",
                lambda wl, b: traindoc_round(wl, b, {"every": 1, "histograms_every": 1}, notes)),
        Setting("cockpit", f"Cockpit every step ({cfg})",
                lambda wl, b: cockpit_round(wl, b, 1, cfg)),
        Setting("cockpit16", f"Cockpit every 16th step ({cfg})",
                lambda wl, b: cockpit_round(wl, b, 16, cfg)),
        Setting("anomaly", "torch.autograd.detect_anomaly",
                lambda wl, b: bare_round(wl, b, anomaly=True)),
        Setting("norm", "(floor) bare + one fused gradient norm per step",
                lambda wl, b: bare_round(wl, b, grad_norm=True)),
    ]
    by_key = {s.key: s for s in all_settings}
    keys = [k.strip() for k in args.settings.split(",") if k.strip()]
    unknown = [k for k in keys if k not in by_key]
    if unknown:
        raise SystemExit(f"--settings: unknown {unknown}; choose from {', '.join(by_key)}")
    return [by_key[k] for k in keys]


# ------------------------------------------------------------------------------------ measuring

@dataclass
class Pair:
    bare: list[float]
    bare_cpu: float
    measured: list[float]
    measured_cpu: float

    @property
    def median_ratio(self) -> float:
        return statistics.median(self.measured) / statistics.median(self.bare)

    @property
    def mean_ratio(self) -> float:
        return statistics.fmean(self.measured) / statistics.fmean(self.bare)


def measure(wl: Workload, settings: list[Setting], rounds: int, warmup_steps: int
            ) -> tuple[dict[str, list[Pair]], dict[str, str]]:
    """Warm up, then the rounds; returns each setting's bare/measured pairs and the failed ones' reasons."""
    pairs: dict[str, list[Pair]] = {s.key: [] for s in settings}
    failed: dict[str, str] = {}
    warm = wl.batches[:warmup_steps]
    bare_round(wl, warm)
    for s in settings:
        try:
            s.run(wl, warm)
        except SettingFailed as e:
            failed[s.key] = str(e)
            print(f"[{wl.name}] {s.label}: {e}", file=sys.stderr, flush=True)
    live = [s for s in settings if s.key not in failed]
    for r in range(rounds):
        shift = r % len(live) if live else 0
        for s in live[shift:] + live[:shift]:
            if s.key in failed:
                continue
            try:
                if r % 2 == 0:
                    bare, bare_cpu = bare_round(wl, wl.batches)
                    measured, measured_cpu = s.run(wl, wl.batches)
                else:
                    measured, measured_cpu = s.run(wl, wl.batches)
                    bare, bare_cpu = bare_round(wl, wl.batches)
            except SettingFailed as e:
                failed[s.key] = str(e)
                print(f"[{wl.name}] round {r + 1} {s.label}: {e}", file=sys.stderr, flush=True)
                continue
            p = Pair(bare, bare_cpu, measured, measured_cpu)
            pairs[s.key].append(p)
            print(f"[{wl.name}] round {r + 1}/{rounds} {s.label}: median {statistics.median(measured) * 1e3:.2f} ms"
                  f" / bare {statistics.median(bare) * 1e3:.2f} ms ({p.median_ratio:.3f}x), mean ratio "
                  f"{p.mean_ratio:.3f}x", file=sys.stderr, flush=True)
    return pairs, failed


def table_rows(wl: Workload, settings: list[Setting], pairs: dict[str, list[Pair]],
               failed: dict[str, str]) -> list[str]:
    rows = []
    for s in settings:
        ps = pairs[s.key]
        if s.key in failed or not ps:
            reason = failed.get(s.key, "no rounds")
            rows.append(f"| {wl.name} | {s.label} | – | {reason} | – | – | – | – | – | – |")
            continue

        def med(xs: Any) -> float:
            return statistics.median(list(xs))

        ratios = [p.median_ratio for p in ps]
        rows.append(
            f"| {wl.name} | {s.label} "
            f"| {med(statistics.median(p.bare) for p in ps) * 1e3:.2f} "
            f"| {med(statistics.median(p.measured) for p in ps) * 1e3:.2f} "
            f"| {med(statistics.fmean(p.bare) for p in ps) * 1e3:.2f} "
            f"| {med(statistics.fmean(p.measured) for p in ps) * 1e3:.2f} "
            f"| {med(ratios):.3f}x | {med(p.mean_ratio for p in ps):.3f}x "
            f"| {min(ratios):.3f}–{max(ratios):.3f} "
            f"| {med(p.measured_cpu / p.bare_cpu for p in ps):.3f}x |")
    return rows


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", choices=["tinygpt", "mlp", "both"], default="both")
    ap.add_argument("--rounds", type=int, default=None, help="measured rounds per setting (default 5; --quick: 2)")
    ap.add_argument("--steps", type=int, default=None, help="steps per round (default 60; --quick: 16)")
    ap.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (default 1)")
    ap.add_argument("--quick", action="store_true", help="smoke run: 2 rounds of 16 steps, 5 warm-up steps")
    ap.add_argument("--settings", default="default,everything,cockpit,cockpit16,anomaly,norm",
                    help="comma-separated subset of: default, everything, cockpit, cockpit16, anomaly, norm "
                         "(default: all)")
    ap.add_argument("--cockpit-config", choices=["economy", "business", "full"], default="economy",
                    help="Cockpit's quantity preset, configuration(...), for both Cockpit rows (default economy, "
                         "its cheapest; its README example uses full)")
    args = ap.parse_args(argv)
    rounds = args.rounds if args.rounds is not None else (2 if args.quick else 5)
    steps = args.steps if args.steps is not None else (16 if args.quick else 60)
    warmup_steps = min(steps, 5 if args.quick else 10)

    torch.set_num_threads(args.threads)
    notes: dict[str, str] = {}
    settings = make_settings(args, notes)
    models = ["tinygpt", "mlp"] if args.model == "both" else [args.model]

    all_rows, env = [], []
    for name in models:
        wl = tinygpt_workload(steps) if name == "tinygpt" else mlp_workload(steps)
        pairs, failed = measure(wl, settings, rounds, warmup_steps)
        all_rows += table_rows(wl, settings, pairs, failed)
        env.append(f"* {name}: {wl.describe}; {wl.n_params / 1e6:.2f}M params")

    print()
    print("| model | setting | bare median (ms) | setting median (ms) | bare mean (ms) | setting mean (ms) "
          "| ratio of medians | ratio of means | median ratio min–max | CPU-time ratio |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    print("\n".join(all_rows))
    print()
    cp = _COCKPIT.get("version") or (import_cockpit() if any(s.key.startswith("cockpit") for s in settings)
                                     else "not run")
    cp = cp if isinstance(cp, str) else cp["version"]
    print(f"Environment: torch {torch.__version__}, {torch.get_num_threads()} thread(s), {rounds} rounds x "
          f"{steps} steps per setting ({warmup_steps} warm-up steps each), one process, each measured round "
          f"paired with a bare round (order alternating, settings rotated per round); "
          f"traindoc TensorBoard events: {notes.get('tensorboard', 'not run')}; Cockpit: {cp}, "
          f"configuration({args.cockpit_config!r}).")
    print("Step = time.perf_counter around forward + loss + backward + (clip) + optimizer step + zero_grad, "
          "+ w.log(loss=loss, tokens=...) for traindoc, + the per-sample losses and the `with cockpit(...)` "
          "context (its quantities are computed on leaving it) for Cockpit. Ratios are medians over rounds of "
          "per-round ratios; CPU time is time.process_time per round.")
    print("\n".join(env))


if __name__ == "__main__":
    main()

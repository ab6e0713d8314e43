"""`traindoc demo`: the chatbot whose loss sticks at ~5, diagnosed, fixed and retrained.

1. chit-chat (prompt, reply) pairs, a GPT-2-style BPE tokenizer trained here (pad == EOS);
2. the broken chatbot and its fixed twin, same initial weights, same optimizer (`model.py`);
3. ``traindoc.check`` on the broken model and one real batch -- the report -- and on the fixed one;
4. both trained side by side on the same batches, each under ``traindoc.watch``; per-step training
   loss, and a held-out loss with the same metric for both (reply tokens and the EOS ending them);
5. both curves in the terminal and in an offline HTML file, and each run's ``traindoc`` report;
6. greedy replies of both models to a few prompts, and whether they stop.
"""

from __future__ import annotations

import importlib.util
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.rule import Rule
from rich.table import Table

import traindoc
from traindoc.demo.curves import Curve, print_curves, write_curves_html
from traindoc.demo.data import prepare_data
from traindoc.demo.model import ModelConfig
from traindoc.demo.train import greedy_reply, make_twins, prompt_dependence, train_side_by_side
from traindoc.findings import Report
from traindoc.report.html import write_html_report
from traindoc.rundir import replace_report

DEMO_DEPENDENCIES = ("chitchat_dataset", "tokenizers", "plotly")
INSTALL_HINT = "pip install 'traindoc[demo]'"

DEFAULT_STEPS = 600  # the broken model is on its plateau by then; the fixed one stops its replies
# On 2 cores, 2 torch threads were 1.3x faster than 1 on an idle machine, but 2.4x (up to 10x) slower
# as soon as another process took a core.
DEFAULT_THREADS = 1
BATCH_SIZE = 32
BLOCK_SIZE = 24
VOCAB_SIZE = 1000
LR = 2e-3  # the usual 1e-4 needs thousands of steps; the same for both models
DROPOUT = 0.0  # nn.Transformer's default 0.1 only slows a run this short down; the same for both models
HELDOUT_BATCHES = 4
EXPECTED = ("pad-equals-eos", "batch-mixing", "causal-leak", "padding-leak")  # the broken model's bugs
PROMPTS = (
    "Hello how are you doing today?",
    "What do you do for a living?",
    "Do you have any pets?",
    "What is your favorite movie?",
)
MAX_REPLY_TOKENS = 20


def missing_dependencies() -> list[str]:
    """The optional packages the demo needs that are not installed."""
    return [m for m in DEMO_DEPENDENCIES if importlib.util.find_spec(m) is None]


def run_demo(steps: int | None = None, out_dir: str | Path = "traindoc-demo", json_path: str | Path | None = None,
             threads: int | None = None, *, console: Any = None, max_conversations: int | None = None,
             model_config: dict[str, Any] | None = None) -> int:
    """Run the whole demo; `steps` and `threads` (torch threads) default to DEFAULT_STEPS and
    DEFAULT_THREADS. Returns the exit status: 0 ok; 1 when `traindoc.check` did not find the broken
    model's bugs or found one in the fixed model; 2 when an optional dependency is missing.

    `max_conversations` and `model_config` shrink the demo (tests); the CLI leaves them unset.
    """
    missing = missing_dependencies()
    if missing:
        print(f"traindoc demo: missing {', '.join(missing)}; install the demo extras: {INSTALL_HINT}",
              file=sys.stderr)
        return 2
    if steps is not None and steps < 1:
        raise ValueError(f"--steps must be >= 1, got {steps}")

    previous_threads = torch.get_num_threads()
    torch.set_num_threads(max(1, DEFAULT_THREADS if threads is None else threads))
    try:
        return _run(DEFAULT_STEPS if steps is None else steps, Path(out_dir), json_path, torch.get_num_threads(),
                    console or Console(), max_conversations, model_config or {})
    finally:
        torch.set_num_threads(previous_threads)


def _run(n_steps: int, out: Path, json_path: str | Path | None, threads: int, console: Any,
         max_conversations: int | None, model_config: dict[str, Any]) -> int:
    started = time.perf_counter()
    console.print(Rule("[bold]traindoc demo[/bold]: the chatbot whose loss sticks at ~5"))
    data = prepare_data(block_size=BLOCK_SIZE, vocab_size=VOCAB_SIZE, max_conversations=max_conversations)
    tok = data.tokenizer
    batches = data.batches(n_steps, BATCH_SIZE, seed=0)
    heldout = data.heldout_batches(BATCH_SIZE, HELDOUT_BATCHES)
    _print_data(console, data, batches[0], heldout, time.perf_counter() - started)

    cfg = ModelConfig(vocab_size=tok.vocab_size, block_size=BLOCK_SIZE, **{"dropout": DROPOUT, **model_config})
    broken, fixed = make_twins(cfg, tok.eos_token_id, lr=LR, seed=0)
    console.print(
        f"model: nn.Transformer encoder-decoder, n_embd={cfg.n_embd}, n_head={cfg.n_head}, "
        f"{cfg.n_layer}+{cfg.n_layer} layers, vocab {cfg.vocab_size}, "
        f"{sum(p.numel() for p in broken.model.parameters()):,} parameters; AdamW lr={LR:g}, StepLR, "
        f"clip_grad_norm_(1.0); the fixed twin starts from the same weights. Loss at chance: "
        f"ln({cfg.vocab_size}) = {math.log(cfg.vocab_size):.2f}\n")

    diagnosed, checked = _check(console, broken, fixed, batches[0], tok, json_path)

    console.print(Rule(f"training both models side by side, {n_steps} steps of {BATCH_SIZE} pairs"))
    _train(console, (broken, fixed), batches, heldout, out)
    summary = _print_results(console, broken, fixed, heldout)
    summary["watch"] = _print_watch(console, (broken, fixed), out, checked)

    console.print(Rule(f"greedy replies (batch of one, at most {MAX_REPLY_TOKENS} tokens)"))
    summary["replies"] = _print_replies(console, (broken, fixed), tok, cfg.block_size)

    html = _write_curves(out, broken, fixed, summary)
    elapsed = time.perf_counter() - started
    summary["wall_s"] = round(elapsed, 1)
    summary["threads"] = threads
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    console.print(f"\nloss curves: [bold]{html}[/bold]  (opens offline)   summary: {out / 'summary.json'}")
    console.print(f"[dim]done in {elapsed:.0f} s on {threads} torch thread(s)[/dim]")
    return 0 if diagnosed else 1


def _print_data(console: Any, data: Any, batch: dict, heldout: list, seconds: float) -> None:
    tok = data.tokenizer
    console.print(
        f"data: chit-chat pairs of consecutive messages: {len(data.train_pairs):,} training pairs, "
        f"{sum(len(b['input_ids']) for b in heldout)} held-out pairs from other conversations; byte-level "
        f"BPE tokenizer trained here, vocab {tok.vocab_size}, pad_token_id == eos_token_id == "
        f"{tok.eos_token_id} (as GPT-2)  [{seconds:.1f} s]")
    for key, mask in (("input_ids", "attention_mask"), ("target_inputs", "target_attention_mask"),
                      ("target_labels", "target_attention_mask")):
        n_real = int(batch[mask][0].sum())
        text = tok.decode(batch[key][0, :n_real].tolist()).replace(tok.eos_token, "⟨eos⟩")
        text = text if len(text) <= 90 else text[:87] + "..."
        console.print(f"  [dim]{key:14s}[/dim] " + escape(text)
                      + f"[dim] + {batch[key].size(1) - n_real} × ⟨eos⟩ as padding[/dim]", highlight=False)
    console.print()


def _check(console: Any, broken: Any, fixed: Any, batch: dict, tok: Any, json_path: str | Path | None,
           ) -> tuple[bool, dict[str, Report]]:
    """traindoc.check on both models, each called as it is trained. True when the check finds the
    broken model's bugs and no error in the fixed one; and the two reports."""
    console.print(Rule("traindoc.check(broken model, one real batch)"))
    reports = {t.name: traindoc.check(t.model, batch, forward=t.forward, loss_fn=t.loss_fn,
                                      optimizer=t.optimizer, tokenizer=tok)
               for t in (broken, fixed)}
    traindoc.print_report(reports["broken"], console)
    if json_path is not None:
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(json_path).write_text(reports["broken"].to_json())
        console.print(f"[dim]report written to {json_path}[/dim]")
    report = reports["fixed"]
    verdict = "[bold green]ok[/bold green]" if report.ok else "[bold red]not ok[/bold red]"
    console.print(f"\nthe fixed twin (batch_first=True, causal tgt_mask, padding masks inverted, loss masked "
                  f"by attention_mask): traindoc.check -> {verdict}"
                  + (f", findings: {', '.join(report.ids)}" if report.ids else ", no findings"))
    missed = [i for i in EXPECTED if i not in reports["broken"]]
    if missed:
        console.print(f"[bold red]traindoc.check missed the broken model's {', '.join(missed)}[/bold red]")
    console.print()
    return not missed and report.ok, reports


def _train(console: Any, twins: tuple, batches: list, heldout: list, out: Path) -> None:
    """Train both models; on a terminal with a progress bar, otherwise (output sent to a log) with a
    plain line every ~10% of the steps."""
    n = len(batches)
    eval_every = max(1, n // 10)
    started = time.perf_counter()
    if console.is_terminal:
        columns = [TextColumn("step"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("train loss: broken {task.fields[broken]}, fixed {task.fields[fixed]}"),
                   TimeElapsedColumn()]
        with Progress(*columns, console=console) as progress:
            task = progress.add_task("training", total=n, broken="-", fixed="-")

            def advance(step: int, losses: dict[str, float]) -> None:
                progress.update(task, advance=1, **{name: f"{loss:.3f}" for name, loss in losses.items()})

            train_side_by_side(twins, batches, heldout, out, eval_every, on_step=advance)
        return

    def print_line(step: int, losses: dict[str, float]) -> None:
        if (step + 1) % eval_every == 0 or step + 1 == n:
            console.print(f"step {step + 1}/{n}  train loss: "
                          + ", ".join(f"{name} {loss:.3f}" for name, loss in losses.items())
                          + f"  {time.perf_counter() - started:.0f} s", highlight=False)

    train_side_by_side(twins, batches, heldout, out, eval_every, on_step=print_line)


def _print_results(console: Any, broken: Any, fixed: Any, heldout: list) -> dict[str, Any]:
    console.print()
    steps = range(len(fixed.train_losses))
    print_curves(console, [Curve("broken", steps, broken.train_losses, "red"),
                           Curve("fixed", steps, fixed.train_losses, "green")],
                 "training loss, each model's own loss", smooth=len(steps) // 40)
    console.print("[dim]the broken model's training loss drops every EOS target (the ends of replies and "
                  "the padding), so it looks better than it is; the held-out loss below scores both on the "
                  "same tokens[/dim]\n")
    evals = [s for s, _ in fixed.heldout]
    print_curves(console, [Curve("broken", evals, [v for _, v in broken.heldout], "red"),
                           Curve("fixed", evals, [v for _, v in fixed.heldout], "green")],
                 "held-out loss, reply tokens + the EOS ending each reply", width=len(evals), rows=len(evals))

    def tail_mean(values: list[float]) -> float:
        return sum(values[-50:]) / len(values[-50:])

    b_train, f_train = tail_mean(broken.train_losses), tail_mean(fixed.train_losses)
    b_held, f_held = broken.heldout[-1][1], fixed.heldout[-1][1]
    table = Table(title="after training", show_edge=False)
    table.add_column("")
    table.add_column("train loss, own (last 50 steps)", justify="right")
    table.add_column("held-out loss, same metric", justify="right")
    table.add_row("[red]broken[/red]", f"{b_train:.3f}", f"{b_held:.3f}")
    table.add_row("[green]fixed[/green]", f"{f_train:.3f}", f"{f_held:.3f}")
    console.print(table)
    console.print(
        ("[bold green]" if f_held < b_held else "[bold red]")
        + f"held-out loss: fixed {f_held:.3f} vs broken {b_held:.3f} -> the broken model's is {b_held / f_held:.2f}x "
        f"the fixed one's (perplexity {math.exp(min(b_held, 50)):.0f} vs {math.exp(min(f_held, 50)):.0f})[/]")
    # rounding noise below 1e-4 is shown as 0 (not "-0.000")
    uses_prompt = {t.name: round(prompt_dependence(t.model, t.forward, heldout), 4) + 0.0 for t in (broken, fixed)}
    console.print(
        f"prompt use: scoring each held-out reply against another sample's prompt raises the loss by "
        f"{uses_prompt['fixed']:+.3f} for the fixed model and {uses_prompt['broken']:+.3f} for the broken "
        "one, whose decoder reads the whole batch's prompts as one unordered set\n")
    return {"steps": len(steps), "heldout_ratio_broken_over_fixed": b_held / f_held,
            **{t.name: {"train_loss_last50": tail, "heldout_loss": t.heldout[-1][1], "heldout": t.heldout,
                        "prompt_dependence": uses_prompt[t.name]}
               for t, tail in ((broken, b_train), (fixed, f_train))}}


def _print_watch(console: Any, twins: tuple, out: Path, checked: dict[str, Report]) -> dict[str, Any]:
    """What traindoc.watch saw during each run, and the HTML report of each run directory, which holds
    what `traindoc.check` proved on the same model before training too."""
    result: dict[str, Any] = {}
    for twin in twins:
        report = twin.watch_report
        loud = [f for f in report.findings if f.severity != "hint"]
        proved = checked[twin.name]
        both = Report(proved.findings + [f for f in report.findings if f.id not in proved.ids],
                      {**report.info, "check": proved.info})
        replace_report(out / f"run-{twin.name}", both.to_dict())
        html = write_html_report(out / f"run-{twin.name}")
        what = "; ".join(f"{f.id}: {escape(f.title)}" for f in loud) if loud else "no warning, no error"
        console.print(f"traindoc.watch({twin.name}): {what}  [dim]({html})[/dim]")
        result[twin.name] = {"findings": [f.to_dict() for f in report.findings], "html": str(html)}
    return result


def _print_replies(console: Any, twins: tuple, tok: Any, block_size: int) -> list[dict[str, Any]]:
    table = Table(show_lines=True, show_edge=False)
    table.add_column("prompt")
    for twin in twins:
        table.add_column(f"{twin.name} model reply")
    rows: list[dict[str, Any]] = []
    for prompt in PROMPTS:
        row: dict[str, Any] = {"prompt": prompt}
        cells = [escape(prompt)]
        for twin in twins:
            ids, stopped = greedy_reply(twin.model, twin.forward, tok.encode(prompt), tok, block_size,
                                        MAX_REPLY_TOKENS)
            row[twin.name] = {"reply": tok.decode(ids), "stopped_at_eos": stopped}
            mark = "[green]stopped at EOS[/green]" if stopped else f"[red]no EOS in {len(ids)} tokens[/red]"
            cells.append(f"{escape(row[twin.name]['reply'])}\n{mark}")
        table.add_row(*cells)
        rows.append(row)
    console.print(table)
    for twin in twins:
        replies = [r[twin.name]["reply"] for r in rows]
        stops = sum(r[twin.name]["stopped_at_eos"] for r in rows)
        console.print(f"{twin.name}: {stops}/{len(rows)} replies stopped at EOS, "
                      f"{len(set(replies))}/{len(rows)} distinct replies")
    return rows


def _write_curves(out: Path, broken: Any, fixed: Any, summary: dict[str, Any]) -> Path:
    steps = range(len(fixed.train_losses))
    evals = [s for s, _ in fixed.heldout]
    panels = [
        ("training loss (each model's own loss; the broken one drops every EOS target)", [
            Curve("broken: train", steps, broken.train_losses, "#d62728"),
            Curve("fixed: train", steps, fixed.train_losses, "#2ca02c"),
        ]),
        ("held-out loss (same metric for both: reply tokens + the EOS ending each reply)", [
            Curve("broken: held-out", evals, [v for _, v in broken.heldout], "#d62728", dash=True),
            Curve("fixed: held-out", evals, [v for _, v in fixed.heldout], "#2ca02c", dash=True),
        ]),
    ]
    notes = [f"held-out loss after {summary['steps']} steps: broken {summary['broken']['heldout_loss']:.3f}, "
             f"fixed {summary['fixed']['heldout_loss']:.3f}"]
    return write_curves_html(out / "loss_curves.html", panels, notes=notes,
                             title="traindoc demo: the chatbot whose loss sticks at ~5, broken vs fixed")

"""`traindoc demo`: the seed-000 chatbot stuck at loss ~5, diagnosed, fixed and retrained.

1. chit-chat (prompt, reply) pairs, a GPT-2-style BPE tokenizer trained here (pad == EOS), batches
   built like the seed's;
2. the seed's ``languageModel`` (broken) and its fixed twin, same init, same optimizer;
3. ``traindoc.check`` on the broken model and one real batch -- the report -- and on the fixed one;
4. both trained on the same batches; per-step training loss, and a held-out loss with one honest
   metric for both (reply tokens and the EOS that ends them);
5. both curves in the terminal and in an offline HTML file;
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

DEMO_DEPENDENCIES = ("chitchat_dataset", "tokenizers", "plotly")
INSTALL_HINT = "pip install 'traindoc[demo]'"

DEFAULT_STEPS = 800
BATCH_SIZE = 32
BLOCK_SIZE = 24
VOCAB_SIZE = 1000
LR = 2e-3  # the seed's 1e-4 needs thousands of steps; the same larger LR is used for both models
DROPOUT = 0.0  # nn.Transformer's default 0.1 only slows a run this short down; the same for both models
HELDOUT_BATCHES = 4
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
             threads: int = 2, *, console: Any = None, max_conversations: int | None = None,
             model_config: dict[str, Any] | None = None) -> int:
    """Run the whole demo; returns the exit status: 0 ok, 1 when traindoc.check itself failed, 2 when
    an optional dependency is missing.

    `max_conversations` and `model_config` shrink the demo (tests); the CLI leaves them unset.
    """
    missing = missing_dependencies()
    if missing:
        print(f"traindoc demo: missing {', '.join(missing)}; install the demo extras: {INSTALL_HINT}",
              file=sys.stderr)
        return 2
    if steps is not None and steps < 1:
        raise ValueError(f"--steps must be >= 1, got {steps}")

    import torch

    previous_threads = torch.get_num_threads()
    torch.set_num_threads(max(1, threads))
    try:
        return _run(steps, Path(out_dir), json_path, threads, console, max_conversations, model_config)
    finally:
        torch.set_num_threads(previous_threads)


def _run(steps: int | None, out: Path, json_path: str | Path | None, threads: int, console: Any,
         max_conversations: int | None, model_config: dict[str, Any] | None) -> int:
    from rich.console import Console
    from rich.rule import Rule

    from traindoc.demo.data import MissingDemoDependency, prepare_data
    from traindoc.demo.model import ModelConfig
    from traindoc.demo.train import make_twins

    console = console or Console()
    started = time.perf_counter()
    n_steps = DEFAULT_STEPS if steps is None else steps
    console.print(Rule("[bold]traindoc demo[/bold]: seed 000, the chatbot whose loss plateaus at ~5"))
    try:
        data = prepare_data(block_size=BLOCK_SIZE, vocab_size=VOCAB_SIZE, max_conversations=max_conversations)
    except MissingDemoDependency as e:
        print(f"traindoc demo: missing {e}; install the demo extras: {INSTALL_HINT}", file=sys.stderr)
        return 2
    tok = data.tokenizer
    cfg = ModelConfig(vocab_size=tok.vocab_size, block_size=BLOCK_SIZE, **{"dropout": DROPOUT, **(model_config or {})})
    batches = data.batches(n_steps, BATCH_SIZE, seed=0)
    heldout = data.heldout_batches(BATCH_SIZE, HELDOUT_BATCHES)
    if not heldout:
        heldout = data.heldout_batches(len(data.heldout_pairs), 1)
    _print_data(console, data, batches[0], heldout, time.perf_counter() - started)

    broken, fixed = make_twins(cfg, tok.eos_token_id, lr=LR, seed=0)
    console.print(
        f"model: the seed's languageModel, n_embd={cfg.n_embd}, n_head={cfg.n_head}, "
        f"{cfg.n_layer}+{cfg.n_layer} layers, vocab {cfg.vocab_size}, "
        f"{sum(p.numel() for p in broken.model.parameters()):,} parameters; AdamW lr={LR:g}, StepLR, "
        f"clip_grad_norm_(1.0); the fixed twin starts from the same weights. Loss at chance: "
        f"ln({cfg.vocab_size}) = {math.log(cfg.vocab_size):.2f} (the seed's ~11 is ln 50257, GPT-2's vocab)\n")

    check_failed = _run_checks(console, broken, fixed, batches[0], tok, json_path)

    console.print(Rule(f"training both models for {n_steps} steps of {BATCH_SIZE} pairs"))
    _train(console, (broken, fixed), batches, heldout, n_steps, out)
    summary = _print_results(console, broken, fixed, heldout)
    summary["watch"] = _print_watch(console, (broken, fixed), out)

    console.print(Rule("greedy replies (batch of one, at most "
                       f"{MAX_REPLY_TOKENS} tokens)"))
    summary["replies"] = _print_replies(console, (broken, fixed), tok, cfg.block_size)

    html = _write_outputs(out, broken, fixed, summary)
    elapsed = time.perf_counter() - started
    summary["wall_s"] = round(elapsed, 1)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    console.print(f"\nloss curves: [bold]{html}[/bold]  (opens offline)   summary: {out / 'summary.json'}")
    console.print(f"[dim]done in {elapsed:.0f} s on {threads} thread(s)[/dim]")
    return 1 if check_failed else 0


def _print_data(console: Any, data: Any, batch: dict, heldout: list, seconds: float) -> None:
    tok = data.tokenizer
    row = 0
    console.print(
        f"data: chit-chat pairs of consecutive messages (a stand-in for DailyDialog): "
        f"{len(data.train_pairs):,} training pairs, {sum(len(b['input_ids']) for b in heldout)} held-out "
        f"pairs from other conversations; byte-level BPE tokenizer trained here, vocab {tok.vocab_size}, "
        f"pad_token_id == eos_token_id == {tok.eos_token_id} (as GPT-2)  [{seconds:.1f} s]")
    for key, mask in (("input_ids", "attention_mask"), ("target_inputs", "target_attention_mask"),
                      ("target_labels", "target_attention_mask")):
        n_real = int(batch[mask][row].sum())
        text = tok.decode(batch[key][row, :n_real].tolist()).replace(tok.eos_token, "⟨eos⟩")
        pads = f" + {len(batch[key][row]) - n_real} × ⟨eos⟩ as padding"
        console.print(f"  [dim]{key:14s}[/dim] " + _escape(_clip(text, 90)) + f"[dim]{pads}[/dim]",
                      highlight=False)
    console.print()


def _run_checks(console: Any, broken: Any, fixed: Any, batch: dict, tok: Any,
                json_path: str | Path | None) -> bool:
    """traindoc.check on both models; returns True when traindoc itself failed."""
    from rich.rule import Rule

    from traindoc.demo.train import fixed_forward

    console.print(Rule("traindoc.check(broken model, one real batch)"))
    try:
        import traindoc

        check = traindoc.check
    except Exception as e:  # the demo reports traindoc's own failures
        console.print(f"[bold red]traindoc.check is not available: {type(e).__name__}: {e}[/bold red]")
        return True

    def seed_forward(m: Any, b: dict) -> Any:
        # exactly the seed's call, masks transposed
        return m(b["input_ids"], b["target_inputs"], b["target_labels"],
                 b["attention_mask"].transpose(1, 0), b["target_attention_mask"].transpose(1, 0))

    failed = False
    for twin, forward in ((broken, seed_forward), (fixed, fixed_forward)):
        snapshot = _snapshot(twin)
        try:
            report = check(twin.model, batch, forward=forward, loss_fn=twin.loss_fn,
                           optimizer=twin.optimizer, tokenizer=tok)
        except Exception as e:
            console.print(f"[bold red]traindoc.check raised on the {twin.name} model: "
                          f"{type(e).__name__}: {_escape(str(e))}[/bold red]")
            failed = True
            continue
        finally:
            if _restore(twin, snapshot):
                console.print(f"[yellow]note: traindoc.check changed the {twin.name} model's weights or "
                              "optimizer state; restored them before training[/yellow]")
        if twin is broken:
            traindoc.print_report(report, console)
            if json_path is not None:
                Path(json_path).parent.mkdir(parents=True, exist_ok=True)
                Path(json_path).write_text(report.to_json())
                console.print(f"[dim]report written to {json_path}[/dim]")
        else:
            n_err = sum(f.severity == "error" for f in report.findings)
            verdict = "[bold green]ok[/bold green]" if report.ok else "[bold red]not ok[/bold red]"
            console.print(f"\nthe fixed twin (batch_first=True, causal tgt_mask, padding masks inverted, "
                          f"loss masked by attention_mask): traindoc.check -> {verdict}, {n_err} error(s)"
                          + (f", findings: {', '.join(report.ids)}" if report.ids else ", no findings"))
    console.print()
    return failed


def _train(console: Any, twins: tuple, batches: list, heldout: list, n_steps: int, out: Path) -> None:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from traindoc.demo.train import train_twins

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("loss {task.fields[loss]}"), TimeElapsedColumn(),
                  console=console, transient=False) as progress:
        tasks = {t.name: progress.add_task(f"{t.name:6s}", total=n_steps, loss="-") for t in twins}

        def on_step(twin: Any, step: int, loss: float) -> None:
            progress.update(tasks[twin.name], advance=1, loss=f"{loss:.3f}")

        train_twins(twins, batches, heldout, eval_every=max(1, n_steps // 10), on_step=on_step,
                    run_dir=lambda twin: out / f"run-{twin.name}")


def _print_watch(console: Any, twins: tuple, out: Path) -> dict[str, Any]:
    """What traindoc.watch saw during each run, and the HTML report of each run directory."""
    from traindoc.report.html import write_html_report

    result: dict[str, Any] = {}
    for twin in twins:
        report = twin.watch_report
        if report is None:
            continue
        loud = [f for f in report.findings if f.severity != "hint"]
        html = None
        try:
            html = write_html_report(out / f"run-{twin.name}")
        except Exception as e:  # the demo goes on without the page
            console.print(f"[yellow]could not render the {twin.name} run's report: {_escape(str(e))}[/yellow]")
        what = "; ".join(f"{f.id}: {_escape(f.title)}" for f in loud) if loud else "no warning, no error"
        console.print(f"traindoc.watch({twin.name}): {what}" + (f"  [dim]({html})[/dim]" if html else ""))
        result[twin.name] = {"findings": [f.to_dict() for f in report.findings], "html": str(html) if html else None}
    return result


def _tail_mean(values: list[float], n: int = 50) -> float:
    tail = [v for v in values[-n:] if math.isfinite(v)]
    return sum(tail) / len(tail) if tail else float("nan")


def _print_results(console: Any, broken: Any, fixed: Any, heldout: list) -> dict[str, Any]:
    from rich.table import Table

    from traindoc.demo.train import prompt_dependence
    from traindoc.report.curves import Curve, print_curves

    console.print()
    print_curves([Curve("broken", range(len(broken.train_losses)), broken.train_losses, color="red"),
                  Curve("fixed", range(len(fixed.train_losses)), fixed.train_losses, color="green")],
                 console=console, title="training loss, each model's own loss")
    console.print("[dim]the broken model's training loss drops every EOS target (the ends of replies and "
                  "the padding), so it looks better than it is; the held-out loss below scores both on the "
                  "same tokens[/dim]\n")
    print_curves([Curve("broken", [s for s, _ in broken.heldout], [v for _, v in broken.heldout], color="red"),
                  Curve("fixed", [s for s, _ in fixed.heldout], [v for _, v in fixed.heldout], color="green")],
                 console=console, title="held-out loss, reply tokens + the EOS ending each reply",
                 width=len(fixed.heldout), marks=len(fixed.heldout), smooth=0)

    b_train, f_train = _tail_mean(broken.train_losses), _tail_mean(fixed.train_losses)
    b_held, f_held = broken.heldout[-1][1], fixed.heldout[-1][1]
    ratio = b_held / f_held if f_held > 0 else float("nan")
    table = Table(title="after training", show_edge=False)
    table.add_column("")
    table.add_column("train loss, own (last 50 steps)", justify="right")
    table.add_column("held-out loss, same metric", justify="right")
    table.add_row("[red]broken[/red] (the seed)", f"{b_train:.3f}", f"{b_held:.3f}")
    table.add_row("[green]fixed[/green]", f"{f_train:.3f}", f"{f_held:.3f}")
    console.print(table)
    better = f_held < b_held
    console.print(
        ("[bold green]" if better else "[bold red]")
        + f"held-out loss: fixed {f_held:.3f} vs broken {b_held:.3f} -> the broken model's is {ratio:.2f}x "
        f"the fixed one's (perplexity {math.exp(min(b_held, 50)):.0f} vs {math.exp(min(f_held, 50)):.0f})[/]")
    # rounding noise below 1e-4 is shown as 0 (not "-0.000")
    uses_prompt = {t.name: (lambda d: 0.0 if abs(d) < 1e-4 else d)(prompt_dependence(t.model, t.forward, heldout))
                   for t in (broken, fixed)}
    console.print(
        f"prompt use: scoring each held-out reply against another sample's prompt raises the loss by "
        f"{uses_prompt['fixed']:+.3f} for the fixed model and {uses_prompt['broken']:+.3f} for the broken "
        "one, whose decoder reads the whole batch's prompts as one unordered set\n")
    return {"steps": len(fixed.train_losses),
            "broken": {"train_loss_last50": b_train, "heldout_loss": b_held, "heldout": broken.heldout,
                       "prompt_dependence": uses_prompt["broken"]},
            "fixed": {"train_loss_last50": f_train, "heldout_loss": f_held, "heldout": fixed.heldout,
                      "prompt_dependence": uses_prompt["fixed"]},
            "heldout_ratio_broken_over_fixed": ratio}


def _print_replies(console: Any, twins: tuple, tok: Any, block_size: int) -> list[dict[str, Any]]:
    from rich.table import Table

    from traindoc.demo.train import greedy_reply

    table = Table(show_lines=True, show_edge=False)
    table.add_column("prompt")
    rows: list[dict[str, Any]] = []
    for twin in twins:
        table.add_column(f"{twin.name} model reply")
    for prompt in PROMPTS:
        row: dict[str, Any] = {"prompt": prompt}
        cells = [_escape(prompt)]
        for twin in twins:
            ids, stopped = greedy_reply(twin.model, twin.forward, tok.encode(prompt), tok.eos_token_id,
                                        block_size, MAX_REPLY_TOKENS)
            text = tok.decode(ids)
            row[twin.name] = {"reply": text, "stopped_at_eos": stopped}
            mark = "[green]stopped at EOS[/green]" if stopped else f"[red]no EOS in {len(ids)} tokens[/red]"
            cells.append(f"{_escape(text)}\n{mark}")
        table.add_row(*cells)
        rows.append(row)
    console.print(table)
    for twin in twins:
        replies = [r[twin.name]["reply"] for r in rows]
        stops = sum(r[twin.name]["stopped_at_eos"] for r in rows)
        console.print(f"{twin.name}: {stops}/{len(rows)} replies stopped at EOS, "
                      f"{len(set(replies))}/{len(rows)} distinct replies")
    return rows


def _write_outputs(out: Path, broken: Any, fixed: Any, summary: dict[str, Any]) -> Path:
    from traindoc.report.curves import Curve, write_curves_html

    out.mkdir(parents=True, exist_ok=True)
    panels = [
        ("training loss (each model's own loss; the broken one drops every EOS target)", [
            Curve("broken: train", range(len(broken.train_losses)), broken.train_losses, color="#d62728"),
            Curve("fixed: train", range(len(fixed.train_losses)), fixed.train_losses, color="#2ca02c"),
        ]),
        ("held-out loss (same metric for both: reply tokens + the EOS ending each reply)", [
            Curve("broken: held-out", [s for s, _ in broken.heldout], [v for _, v in broken.heldout],
                  color="#d62728", dash=True),
            Curve("fixed: held-out", [s for s, _ in fixed.heldout], [v for _, v in fixed.heldout],
                  color="#2ca02c", dash=True),
        ]),
    ]
    notes = [f"held-out loss after {summary['steps']} steps: broken {summary['broken']['heldout_loss']:.3f}, "
             f"fixed {summary['fixed']['heldout_loss']:.3f}"]
    return write_curves_html(out / "loss_curves.html", panels,
                             title="traindoc demo: the seed-000 chatbot, broken vs fixed", notes=notes)


def _snapshot(twin: Any) -> tuple[dict, dict]:
    import copy

    return (copy.deepcopy(twin.model.state_dict()), copy.deepcopy(twin.optimizer.state_dict()))


def _restore(twin: Any, snapshot: tuple[dict, dict]) -> bool:
    """Put back the weights and optimizer state; True when the check had changed them."""
    import torch

    model_state, opt_state = snapshot
    changed = any(not torch.equal(v, model_state[k]) for k, v in twin.model.state_dict().items())
    changed = changed or bool(twin.optimizer.state_dict()["state"]) != bool(opt_state["state"])
    twin.model.load_state_dict(model_state)
    twin.optimizer.load_state_dict(opt_state)
    twin.model.train()
    return changed


def _clip(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 3] + "..."


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)

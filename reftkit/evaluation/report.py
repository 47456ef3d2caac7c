"""The markdown a user reads: a run's ``report.md`` and its tables, every completion of ``reftkit eval
--predictions``, and the tables of ``docs/results.md`` (seeds of experiments, ablations, the comparison protocol).

Rendering only: the numbers come from ``summary.json`` (pipeline), an ``EvalResult`` or a ``results.json`` entry
(:mod:`reftkit.evaluation.results`).
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

from reftkit.data.base import Problem
from reftkit.evaluation.accuracy import EvalResult

ARM_NAMES = {  # a run's arms in report.md (the results page names its own: RESULTS_ARM_NAMES)
    "warmup": "warm-up",
    "sft": "SFT (continued)",
    "offline_st": "offline self-training",
    "online_st": "online self-training",
    "reft": "ReFT",
}


def render_table(summary: dict[str, Any]) -> str:
    """Greedy accuracy of every trained model: selected checkpoint, validation, test (selected and last)."""
    test_set = summary.get("test_set", "test")
    extras = summary.get("extra_test_sets", [])
    header = ["model", "selected on val", "val acc", f"{test_set} acc", f"{test_set} acc (last)", *extras]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for key, name in ARM_NAMES.items():
        s = summary.get(key)
        if s is None:
            continue
        unit = next(u for u in ("epoch", "selected_epoch", "selected_step") if u in s)
        chosen = f"{unit.removeprefix('selected_')} {s[unit]}"
        last = f"{100 * s['last']['test_acc']:.1f}" if "last" in s else "–"
        cells = [name, chosen, f"{100 * s['val_acc']:.1f}", f"{100 * s['test_acc']:.1f}", last]
        cells += [f"{100 * s[f'{extra}_acc']:.1f}" for extra in extras]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def render_inference_table(inference: dict[str, Any]) -> str:
    """Method × greedy / vote@N / rerank@N / pass@N, then every metric along k."""
    n, ks = inference["n"], inference["k"]
    metrics = [m for m in ("vote", "rerank", "pass") if any(m in row for row in inference["methods"].values())]
    header = ["method", "greedy", *(f"{m}@{n}" for m in metrics)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, row in inference["methods"].items():
        greedy = f"{100 * row['greedy']:.1f}" if "greedy" in row else "–"
        cells = [ARM_NAMES.get(name, name), greedy, *(f"{100 * row[m][-1]:.1f}" for m in metrics)]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "| method | metric | " + " | ".join(f"k={k}" for k in ks) + " |", "|---|---|" + "---|" * len(ks)]
    for name, row in inference["methods"].items():
        for m in metrics:
            lines.append(
                f"| {ARM_NAMES.get(name, name)} | {m}@k | " + " | ".join(f"{100 * v:.1f}" for v in row[m]) + " |"
            )
    return "\n".join(lines)


def render_report(summary: dict[str, Any], plots: list[Path], out: Path) -> str:
    e = summary["epochs"]
    stages = ", ".join(f"{k} {v:.0f} s" for k, v in summary["stage_seconds"].items())
    methods = ", ".join(summary.get("methods", ["sft", "reft"]))
    text = [
        f"# reftkit run: {summary['task']} / {summary['cot']} (seed {summary['seed']})",
        "",
        f"Base model `{summary['base_model']}`; warm-up {e['warmup']} SFT epochs, then from it: {methods} "
        f"({e['sft']} more SFT epochs; {e['reft']} epochs of ReFT / online self-training). "
        "Checkpoints selected on validation; test accuracy is greedy.",
        "",
        render_table(summary),
        "",
    ]
    if "inference" in summary:
        inf = summary["inference"]
        rm = inf.get("rm")
        text += [
            f"## Sampled chains: {inf['n']} per {inf['test_set']} question",
            "",
            "vote@k: majority of the valid answers of k samples (ties: the answer sampled first); rerank@k: the "
            "valid answer the reward model scores highest; pass@k: unbiased estimate. For k < n, vote and rerank "
            "average random k-subsets.",
            "",
            render_inference_table(inf),
            "",
        ]
        if rm and "skipped" in rm:
            text += [f"No reranking: {rm['skipped']}", ""]
        elif rm:
            text += [f"Reward model `{rm['dir']}` from `{rm['init']}`: {rm['examples']} training chains "
                     f"({rm['positives']} correct), selected epoch {rm['best_epoch']}.", ""]  # fmt: skip
    if "samples_per_second" in summary:
        speeds = ", ".join(f"{k} {v:.1f}" for k, v in summary["samples_per_second"].items())
        text += [f"Sampling throughput (samples/s, grading included): {speeds}.", ""]
    text += [
        f"Wall time {summary['wall_seconds']:.0f} s ({stages}).",
        "",
        f"Command: `{summary['command']}`  ",
        f"Commit: `{summary['commit']}`",
        "",
    ]
    text += [f"![{p.stem}]({p.relative_to(out)})" for p in plots]
    return "\n".join(text) + "\n"


def write_predictions(path: Path, problems: list[Problem], result: EvalResult) -> None:
    """One JSON object per problem (completion, extracted answer, outcome), to read what a model actually wrote."""
    rows = [
        {"id": p.id, "gold": p.answer, "outcome": g.outcome.value, "answer": g.answer, "completion": text}
        for p, g, text in zip(problems, result.graded, result.completions, strict=True)
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


# ----- docs/results.md: the seeds of each experiment, ablations, the comparison protocol -------------------------

ARMS = ("warmup", "sft", "reft")  # the arms of an experiment's entry (results.summarise) and its table
RESULTS_ARM_NAMES = {"warmup": "warm-up", "sft": "continued SFT", "reft": "ReFT"}
TEST_SET_NAMES = {"heldout": "held out of the training file", "test": "the task's test split"}

PROTOCOL_ARM_NAMES = {
    "warmup": "warm-up",
    "sft": "converged SFT",
    "online_st": "online self-training, with gold",
    "online_st_nogold": "online self-training, no gold",
    "reft_gae": "ReFT, GAE (the paper's)",
    "reft_gae_lam1_detached": "ReFT, GAE λ=1, detached value head",
    "reft_grpo": "ReFT, GRPO",
    "reft_rloo": "ReFT, RLOO",
    "reft_reinforce_baseline": "ReFT, REINFORCE + group baseline",
    "reft_dr_grpo": "ReFT, Dr. GRPO",
    "reft_rloo_k2": "ReFT, RLOO k=2",
    "reft_rloo_lr1e-4": "ReFT, RLOO lr 1e-4",
    "reft_rloo_k2_lr1e-4": "ReFT, RLOO k=2, lr 1e-4",
    "online_st_nogold_lr1e-4": "online self-training, no gold, lr 1e-4",
    "reft_rloo_positive": "ReFT, RLOO positive-only",
    "reft_rloo_nopartial": "ReFT, RLOO without the 0.1 partial reward",
    "reft_rloo_4x": "ReFT, RLOO, 4x the budget",
    "reft_rloo_positive_k2": "ReFT, RLOO positive-only, k=2",
    "reft_reinforce": "ReFT, REINFORCE++ (k=1)",
    "reft_reinforce_positive": "ReFT, REINFORCE++ positive-only (k=1)",
    "reft_rloo_positive_kl0": "ReFT, RLOO positive-only, no KL penalty",
    "reft_rloo_positive_4x": "ReFT, RLOO positive-only, 4x the budget",
    "online_st_nogold_4x": "online self-training, no gold, 4x the budget",
}


def mean_std(values: list[float]) -> str:
    """``mean ± sample std`` in percent (just the value for one seed)."""
    pct = [100 * v for v in values]
    if len(pct) == 1:
        return f"{pct[0]:.1f}"
    return f"{statistics.mean(pct):.1f} ± {statistics.stdev(pct):.1f}"


def render_markdown(entries: list[dict[str, Any]], figures: dict[str, list[str]]) -> str:
    lines = [
        "# Results",
        "",
        "Generated by `reftkit results` from the run folders' `summary.json`; `docs/results.json` holds the same",
        "numbers. Accuracy is greedy, in percent. Checkpoints of both arms are selected on validation; the test",
        "sets are evaluated once per selected checkpoint.",
        "",
    ]
    for entry in entries:
        if entry.get("kind") == "protocol":
            lines += render_protocol(entry, figures.get(entry["experiment"], []))
            continue
        extras = entry.get("extra_test_sets", [])
        e = entry["epochs"]
        lines += [
            f"## {entry['experiment']}",
            "",
            f"Base model `{entry['base_model']}`. Test set: {entry['test_set']} "
            f"({TEST_SET_NAMES.get(entry['test_set'], entry['test_set'])})"
            + (f"; also reported: {', '.join(extras)}." if extras else "."),
            f"Budget: warm-up {e['warmup']} SFT epochs, then {e['sft']} epochs of continued SFT or {e['reft']} "
            "epochs of ReFT from the same warm-up (equal epochs).",
            "",
        ]
        header = ["seed"]
        for arm in ARMS:
            header += [f"{RESULTS_ARM_NAMES[arm]} val", f"{RESULTS_ARM_NAMES[arm]} test"]
        for extra in extras:
            header += [f"{RESULTS_ARM_NAMES[arm]} {extra}" for arm in ARMS]
        header += ["SFT epoch", "ReFT step", "wall (s)"]
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for i, seed in enumerate(entry["seeds"]):
            row = [str(seed)]
            for arm in ARMS:
                row += [f"{100 * entry[f'{arm}_val'][i]:.1f}", f"{100 * entry[f'{arm}_test'][i]:.1f}"]
            for extra in extras:
                row += [f"{100 * entry[f'{arm}_{extra}'][i]:.1f}" for arm in ARMS]
            row += [
                str(entry["selected"]["sft_epoch"][i]),
                str(entry["selected"]["reft_step"][i]),
                f"{entry['wall_seconds'][i]:.0f}",
            ]
            lines.append("| " + " | ".join(row) + " |")
        row = ["**mean ± std**"]
        for arm in ARMS:
            row += [mean_std(entry[f"{arm}_val"]), f"**{mean_std(entry[f'{arm}_test'])}**"]
        for extra in extras:
            row += [mean_std(entry[f"{arm}_{extra}"]) for arm in ARMS]
        row += ["", "", f"{statistics.mean(entry['wall_seconds']):.0f}"]
        lines += ["| " + " | ".join(row) + " |", ""]
        lines += [
            f"Command (per seed): `{entry['command']}` with `seed=` each of {entry['seeds']}  ",
            f"reftkit commit(s): {', '.join(f'`{c}`' for c in entry['commits'])}",
            "",
        ]
        lines += [f"![{Path(f).stem}]({f})" for f in figures.get(entry["experiment"], [])]
        lines.append("")
    return "\n".join(lines)


def render_ablations(ablations: list[dict[str, Any]]) -> list[str]:
    extras = sorted({k for a in ablations for k in a if k.endswith("_acc") and k not in ("val_acc", "test_acc")})
    header = ["ablation", "changes", "val (selected)", "test", *[k.removesuffix("_acc") for k in extras],
              "selected step", "wall (s)"]  # fmt: skip
    lines = [
        "## Ablations (REFERENCE.md E.7)",
        "",
        "`reftkit reft` runs from the same warm-up checkpoint, each with the config changes listed; one seed.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    for a in ablations:
        row = [a["ablation"], " ".join(f"`{c}`" for c in a["changes"]) or "none", f"{100 * a['val_acc']:.1f}",
               f"{100 * a['test_acc']:.1f}", *[f"{100 * a[k]:.1f}" if k in a else "–" for k in extras],
               f"{a['selected_step']} of {a['steps']}", f"{a['wall_seconds']:.0f}"]  # fmt: skip
        lines.append("| " + " | ".join(row) + " |")
    lines += ["", "Commands:", ""] + [f"- `{a['command']}` (commit `{a['commit']}`)" for a in ablations] + [""]
    return lines


def render_protocol(entry: dict[str, Any], figures: list[str]) -> list[str]:
    """The protocol's table (one row per arm: mean ± std over seeds, then each seed) and how it was run."""
    seeds = entry["seeds"]
    lines = [
        f"## {entry['experiment']}",
        "",
        f"Base model `{entry['base_model']}`. Every arm starts from the same warm-up snapshot of one SFT run and is "
        "selected on validation; test accuracy is greedy, once per selected checkpoint. Converged SFT is the best "
        "epoch of that SFT run, stopped by patience.",
        "",
        "| arm | val (mean ± std) | test (mean ± std) | "
        + " | ".join(f"test seed {s}" for s in seeds)
        + " | selected | minutes after the warm-up |",
        "|" + "---|" * (5 + len(seeds)),
    ]
    for arm in entry["arms"]:
        minutes = entry["seconds"].get(arm)
        row = [
            PROTOCOL_ARM_NAMES.get(arm, arm) + f" (`{arm}`)",
            mean_std(entry[f"{arm}_val"]),
            f"**{mean_std(entry[f'{arm}_test'])}**",
            *(f"{100 * v:.1f}" for v in entry[f"{arm}_test"]),
            "; ".join(entry["selected"][arm]),
            "–" if minutes is None else f"{statistics.mean(minutes) / 60:.1f}",
        ]
        lines.append("| " + " | ".join(row) + " |")
    preset = entry.get("preset", "default")
    lines += ["", f"Config (over the `{preset}` preset):", "", "```yaml", entry["config"].rstrip(), "```", "",
              f"Commit(s): {', '.join(f'`{c}`' for c in entry['commits'])}; CPU flags: {', '.join(entry['cpu_flags'])}."
              " Commands, seed 0 (each seed the same with its `seed=`):", ""]  # fmt: skip
    lines += [f"- `{cmd}`" for name, cmd in entry["commands"].items() if name.startswith(f"seed{seeds[0]}/")]
    partial = entry.get("partial") or {}
    if partial:
        lines += ["", "Also run, not on every seed above (test accuracy by seed):", ""]
        for arm, by_seed in partial.items():
            tests = ", ".join(f"seed {seed} {100 * acc:.1f}" for seed, acc in by_seed.items())
            lines.append(f"- {PROTOCOL_ARM_NAMES.get(arm, arm)} (`{arm}`): {tests}")
    lines += ["", *(f"![{Path(f).stem}]({f})" for f in figures), ""]
    return lines

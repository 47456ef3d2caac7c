"""Seeds of an experiment → ``docs/results.json``, ``docs/results.md`` and the comparison figures.

An experiment is a folder of run folders (one per seed, each with the ``summary.json`` that ``reftkit run``
writes). ``results.json`` holds one entry per experiment and ``results.md`` is always rendered from the
whole of it, so the two cannot disagree; aggregating one experiment leaves the others' entries as they are.
Here the entries are read and the figures drawn; their markdown is :mod:`reftkit.evaluation.report`'s.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import yaml

from reftkit.config.schema import ConfigError
from reftkit.evaluation.plots import plot_val_vs_time, read_metrics, rolling_mean
from reftkit.evaluation.report import ARMS, PROTOCOL_ARM_NAMES, render_ablations, render_markdown


def read_seeds(experiment_dir: Path) -> list[tuple[Path, dict[str, Any]]]:
    """(run folder, summary) of every finished seed in ``experiment_dir``, by seed."""
    runs = [(p.parent, json.loads(p.read_text())) for p in sorted(experiment_dir.glob("*/summary.json"))]
    if not runs:
        raise ConfigError(f"{experiment_dir}: no run folder with a summary.json (has any seed finished?)")
    runs.sort(key=lambda run: run[1]["seed"])
    seeds = [s["seed"] for _, s in runs]
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"{experiment_dir}: two run folders share a seed ({seeds})")
    commands = {_without_seed(s["command"]) for _, s in runs}
    if len(commands) > 1:
        raise ConfigError(f"{experiment_dir}: the seeds were run with different commands: {sorted(commands)}")
    return runs


def _without_seed(command: str | None) -> str:
    """The command with its ``seed=`` and ``--out`` values blanked, to check seeds share everything else."""
    words = (command or "").split()
    kept = []
    for i, word in enumerate(words):
        if word.startswith("seed="):
            continue
        kept.append("OUT" if i and words[i - 1] == "--out" else word)
    return " ".join(kept)


def summarise(experiment_dir: Path) -> dict[str, Any]:
    """One ``results.json`` entry: per-seed accuracies (fractions, aligned with ``seeds``) and provenance."""
    runs = read_seeds(experiment_dir)
    summaries = [s for _, s in runs]
    first = summaries[0]
    test_set = first.get("test_set", "test")
    n_test = sum(first["test_outcomes"]["warmup"].values())
    entry: dict[str, Any] = {
        "experiment": f"{experiment_dir.name} [{first['task']} {first['cot']}; test: {test_set} ({n_test})]",
        "base_model": first["base_model"],
        "task": first["task"],
        "cot": first["cot"],
        "test_set": test_set,
        "seeds": [s["seed"] for s in summaries],
    }
    for arm in ARMS:
        entry[f"{arm}_test"] = [s[arm]["test_acc"] for s in summaries]
        entry[f"{arm}_val"] = [s[arm]["val_acc"] for s in summaries]
    for extra in first.get("extra_test_sets", []):
        for arm in ARMS:
            entry[f"{arm}_{extra}"] = [s[arm][f"{extra}_acc"] for s in summaries]
    entry["extra_test_sets"] = first.get("extra_test_sets", [])
    entry["selected"] = {
        "sft_epoch": [s["sft"]["selected_epoch"] for s in summaries],
        "reft_step": [s["reft"]["selected_step"] for s in summaries],
    }
    entry["epochs"] = first["epochs"]
    entry["wall_seconds"] = [s["wall_seconds"] for s in summaries]
    entry["stage_seconds"] = [s["stage_seconds"] for s in summaries]
    entry["command"] = first["command"]
    entry["commits"] = sorted({str(s["commit"]) for s in summaries})
    entry["run_dirs"] = [str(path) for path, _ in runs]
    return entry


def plot_experiment(entry: dict[str, Any], out_dir: Path, stem: str) -> list[Path]:
    """Validation accuracy against training time (SFT and ReFT, every seed) and the ReFT reward and KL curves."""
    out_dir.mkdir(parents=True, exist_ok=True)
    runs = [json.loads((Path(d) / "summary.json").read_text()).get("val_curves", {}) for d in entry["run_dirs"]]
    title = f"{entry['task']} {entry['cot']}: validation accuracy vs training time ({len(runs)} seeds)"
    written = [plot_val_vs_time(runs, out_dir / f"{stem}_val_vs_time.png", title)]

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for run_dir, seed in zip(entry["run_dirs"], entry["seeds"], strict=True):
        records = [r for r in read_metrics(Path(run_dir) / "metrics.jsonl") if r["stage"] == "reft"]
        steps = [r["step"] for r in records]
        for ax, key in zip(axes, ("reward", "kl"), strict=True):
            values = [r[key] for r in records]
            ax.plot(steps, rolling_mean(values, 10), label=f"seed {seed}")
    for ax, title in zip(axes, ("ReFT mean reward (rolling mean of 10 steps)", "KL to the warm-up, per sequence"),
                         strict=True):  # fmt: skip
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("PPO step")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    written.append(out_dir / f"{stem}_reward_kl.png")
    fig.savefig(written[-1], dpi=110)
    plt.close(fig)
    return written


def summarise_ablation(run_dir: Path) -> dict[str, Any]:
    """One ``ablations.json`` entry from a ``reftkit reft`` run folder: what was changed and what it scored."""
    path = run_dir / "summary.json"
    if not path.is_file():
        raise ConfigError(f"{run_dir}: no summary.json (is this a finished `reftkit reft` run?)")
    summary = json.loads(path.read_text())
    words = (summary["command"] or "").split()
    changes = [w for w in words if "=" in w and not w.startswith(("-", "seed="))]
    return {"ablation": run_dir.name, "changes": changes, **summary}


def _merge(entries: list[dict[str, Any]], new: list[dict[str, Any]], key: str) -> list[dict[str, Any]]:
    """``entries`` with those named like one of ``new`` replaced by it (new ones appended)."""
    names = {e[key] for e in new}
    return [e for e in entries if e[key] not in names] + new


def _read_list(path: Path) -> list[dict[str, Any]]:
    return json.loads(path.read_text()) if path.exists() else []


def aggregate(experiment_dirs: list[Path], docs: Path, ablation_dirs: list[Path] = ()) -> list[dict[str, Any]]:
    """Update ``docs/results.json`` (and ``ablations.json``), re-render ``docs/results.md`` and the figures.

    A folder written by ``experiments/protocol/run.py`` (it holds ``protocol.json``) is read as a protocol."""
    path = docs / "results.json"
    new = [summarise_protocol(d) if (d / "protocol.json").is_file() else summarise(d) for d in experiment_dirs]
    entries = _merge(_read_list(path), new, "experiment")
    ablations = _merge(_read_list(docs / "ablations.json"), [summarise_ablation(d) for d in ablation_dirs], "ablation")
    figures: dict[str, list[str]] = {}
    for entry in entries:
        stem = Path(entry["run_dirs"][0]).parent.name
        if entry.get("kind") == "protocol":  # drawn from the curves the entry itself holds
            pngs = [plot_protocol(entry, docs / "img" / f"{stem}_val_curves.png")]
        elif all((Path(d) / "summary.json").is_file() for d in entry["run_dirs"]):
            pngs = plot_experiment(entry, docs / "img", stem)
        else:  # the run folders of an earlier aggregation are gone: keep the figures drawn then
            pngs = sorted((docs / "img").glob(f"{stem}_*.png"))
        figures[entry["experiment"]] = [str(p.relative_to(docs)) for p in pngs]
    docs.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(entries, indent=2) + "\n")
    markdown = render_markdown(entries, figures)
    if ablations:
        (docs / "ablations.json").write_text(json.dumps(ablations, indent=2) + "\n")
        markdown += "\n".join(render_ablations(ablations))
    notes = docs / "results-notes.md"  # hand-written reading of the numbers, kept apart from the generated tables
    if notes.is_file():
        markdown += "\n" + notes.read_text()
    (docs / "results.md").write_text(markdown)
    return entries


# ----- the comparison protocol (experiments/protocol/run.py): converged SFT and every arm from one warm-up ---------


def protocol_seed(seed_dir: Path, arms: list[str]) -> dict[str, Any]:
    """One seed of a protocol folder: per arm its val and test accuracy, the point selected on validation, its
    training seconds after the warm-up, and its validation curve as [seconds, epochs, val_acc] points (SFT's
    seconds and epochs counted from the warm-up snapshot)."""
    sft_dir = seed_dir / "sft"
    warmup = int(yaml.safe_load((sft_dir / "config.yaml").read_text())["sft"]["warmup_epochs"])
    evals = [r for r in read_metrics(sft_dir / "metrics.jsonl") if r["stage"] == "sft_eval" and r["epoch"] >= warmup]
    best = max(evals, key=lambda r: r["val_acc"])  # the first of equals, as the trainer keeps it
    tests = {name: json.loads((sft_dir / f"test_{name}.json").read_text()) for name in ("warmup", "sft")}
    start = evals[0]["wall"]
    seed: dict[str, Any] = {
        "warmup": {"val": evals[0]["val_acc"], "test": tests["warmup"]["accuracy"], "at": f"epoch {warmup}"},
        "sft": {
            "val": best["val_acc"],
            "test": tests["sft"]["accuracy"],
            "at": f"epoch {best['epoch']} of {evals[-1]['epoch']}",
            "seconds": round(evals[-1]["wall"] - start, 1),
            "curve": [[round(r["wall"] - start, 1), r["epoch"] - warmup, r["val_acc"]] for r in evals],
        },
        "n_test": tests["sft"]["n"],
    }
    for arm in arms:
        summary = json.loads((seed_dir / arm / "summary.json").read_text())
        stage = "online_st_eval" if summary.get("method") == "online-st" else "reft_eval"
        points = [r for r in read_metrics(seed_dir / arm / "metrics.jsonl") if r["stage"] == stage]
        seed[arm] = {
            "val": summary["val_acc"],
            "test": summary["test_acc"],
            "at": f"step {summary['selected_step']} of {summary['steps']}",
            "seconds": round(points[-1]["wall"] - points[0]["wall"], 1),
            "curve": [[round(r["wall"] - points[0]["wall"], 1), round(r["epoch"], 4), r["val_acc"]] for r in points],
            "commit": summary["commit"],
        }
    return seed


def summarise_protocol(folder: Path) -> dict[str, Any]:
    """One ``results.json`` entry of a protocol folder: per arm one list of accuracies aligned with ``seeds``
    (``sft_test``, ``online_st_test``, ``reft_grpo_test``, ...), selections, seconds, curves and provenance."""
    protocol = json.loads((folder / "protocol.json").read_text())
    done, arms, partial = _finished(folder, protocol)
    if not done:
        raise ConfigError(f"{folder}: no seed has finished an arm and the SFT test evaluation")
    seeds = {s: protocol_seed(folder / f"seed{s}", arms) for s in done}
    config = yaml.safe_load(protocol["config_text"])
    task = config.get("task", {})
    n_test = seeds[done[0]]["n_test"]
    entry: dict[str, Any] = {
        "experiment": f"{folder.name} [{task.get('name', 'synthetic')} {task.get('cot', 'python')}; test: test "
        f"({n_test})]",
        "kind": "protocol",
        "base_model": (config.get("model") or {}).get("path") or "tiny",
        "task": task.get("name", "synthetic"),
        "cot": task.get("cot", "python"),
        "test_set": "test",
        "seeds": done,
        "arms": ["warmup", "sft", *arms],
    }
    for arm in entry["arms"]:
        entry[f"{arm}_test"] = [seeds[s][arm]["test"] for s in done]
        entry[f"{arm}_val"] = [seeds[s][arm]["val"] for s in done]
    entry["selected"] = {arm: [seeds[s][arm]["at"] for s in done] for arm in entry["arms"]}
    entry["seconds"] = {arm: [seeds[s][arm]["seconds"] for s in done] for arm in entry["arms"][1:]}
    entry["curves"] = {arm: [seeds[s][arm]["curve"] for s in done] for arm in entry["arms"][1:]}
    entry["config"] = protocol["config_text"]
    entry["preset"] = protocol.get("preset", "default")
    entry["commands"] = protocol["commands"]
    runners = protocol.get("commits", [protocol["commit"]])
    entry["commits"] = sorted({*runners, *(seeds[s][a]["commit"] for s in done for a in arms)})
    entry["cpu_flags"] = protocol["cpu_flags"]
    entry["run_dirs"] = [str(folder / f"seed{s}") for s in done]
    entry["partial"] = partial
    return entry


def _finished(folder: Path, protocol: dict[str, Any]) -> tuple[list[int], list[str], dict[str, dict[str, float]]]:
    """The seeds whose SFT run and test evaluation finished and that finished at least one arm; the arms every one
    of those seeds finished (the table); and the other arms' test accuracies by seed (an arm added later, or one
    still running), so that a later runner's arms never hide the seeds of the first."""

    def has(seed: int, arm: str) -> bool:
        return (folder / f"seed{seed}" / arm / "summary.json").is_file()

    ready = [s for s in protocol["seeds"] if (folder / f"seed{s}" / "sft" / "test_sft.json").is_file()]
    done = [s for s in ready if any(has(s, a) for a in protocol["arms"])]
    arms = [a for a in protocol["arms"] if all(has(s, a) for s in done)]
    partial = {
        arm: {str(s): json.loads((folder / f"seed{s}" / arm / "summary.json").read_text())["test_acc"]
              for s in done if has(s, arm)}
        for arm in protocol["arms"] if arm not in arms and any(has(s, arm) for s in done)
    }  # fmt: skip
    return done, arms, partial


def plot_protocol(entry: dict[str, Any], path: Path) -> Path:
    """Validation accuracy of every arm against minutes and against epochs of training after the warm-up: each
    seed faint, the mean over seeds bold (over the points every seed reached)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.4), sharey=True)
    colours = plt.get_cmap("tab10")
    for i, (arm, runs) in enumerate(entry["curves"].items()):
        colour = colours(i % 10)
        common = min(len(run) for run in runs)
        for ax, x in zip(axes, (0, 1), strict=True):
            scale = 60 if x == 0 else 1
            for run in runs:
                ax.plot([p[x] / scale for p in run], [100 * p[2] for p in run], color=colour, alpha=0.25, lw=0.8)
            mean_x = [statistics.mean(run[j][x] for run in runs) / scale for j in range(common)]
            mean_y = [100 * statistics.mean(run[j][2] for run in runs) for j in range(common)]
            ax.plot(mean_x, mean_y, color=colour, lw=2, marker="o", markersize=3,
                    label=PROTOCOL_ARM_NAMES.get(arm, arm) if x == 0 else None)  # fmt: skip
    axes[0].set_xlabel("minutes of training after the warm-up (one CPU core each)")
    axes[1].set_xlabel("epochs over the training questions after the warm-up")
    axes[0].set_ylabel("validation accuracy (%)")
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.suptitle(f"{entry['task']} {entry['cot']}: validation accuracy, {len(entry['seeds'])} seeds (mean bold)")
    fig.legend(loc="lower center", ncol=4, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path

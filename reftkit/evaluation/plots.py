"""PNG curves of a run from its ``metrics.jsonl``: reward, KL, accuracy, length and losses.

Each figure is one or more panels stacked, each with its own y axis, and every x axis says what it counts: PPO
steps for the ReFT-only curves, epochs where SFT and ReFT are compared.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

RUN_EPOCH = "epoch (in `reftkit run`, ReFT and online self-training count on from the warm-up's SFT epochs)"
PPO_STEP = "PPO step (one batch of rollouts and its updates)"


@dataclass(frozen=True)
class Panel:
    """One axes: ``series`` are (stage, metric, label) of ``metrics.jsonl`` records, drawn against ``x`` (a record
    key: ``epoch``, or ``step``, which counts a stage's own steps)."""

    title: str
    series: tuple[tuple[str, str, str], ...]
    x: str = "epoch"
    xlabel: str = RUN_EPOCH
    ylabel: str = ""


# file name -> its panels, top to bottom
FIGURES: dict[str, tuple[Panel, ...]] = {
    "reward.png": (
        Panel(
            "ReFT reward (mean over each step's samples)",
            (("reft", "reward", "mean reward"), ("reft", "frac_correct", "share correct")),
            x="step",
            xlabel=PPO_STEP,
        ),
    ),
    "kl.png": (
        Panel(
            "KL to the warm-up model (per sequence)",
            (("reft", "kl", "k1"), ("reft", "kl_k3", "k3")),
            x="step",
            xlabel=PPO_STEP,
        ),
    ),
    "accuracy.png": (
        Panel(
            "Validation accuracy",
            (
                ("sft_eval", "val_acc", "SFT (per epoch)"),
                ("offline_st_eval", "val_acc", "offline self-training"),
                ("online_st_eval", "val_acc", "online self-training"),
                ("reft_eval", "val_acc", "ReFT"),
            ),
            ylabel="accuracy",
        ),
    ),
    "length.png": (
        Panel(
            "Response length",
            (("reft", "response_length", "ReFT samples"), ("sft_eval", "val_length", "SFT greedy (val)")),
            ylabel="tokens",
        ),
    ),
    "losses.png": (
        Panel(
            "SFT loss",
            (("sft", "loss", "SFT"), ("offline_st", "loss", "offline self-training")),
            xlabel="epoch of the SFT run",
            ylabel="cross-entropy per token",
        ),
        Panel("PPO policy loss", (("reft", "policy_loss", "policy loss"),), x="step", xlabel=PPO_STEP),
        Panel("PPO value loss", (("reft", "value_loss", "value loss"),), x="step", xlabel=PPO_STEP),
    ),
}


SMOOTH_FROM, SMOOTH_WINDOW = 30, 10


def rolling_mean(values: list[float], window: int) -> list[float]:
    """Mean of the last ``window`` values at each point (fewer at the start)."""
    return [sum(values[max(0, i - window + 1) : i + 1]) / (i + 1 - max(0, i - window + 1)) for i in range(len(values))]


def read_metrics(path: Path) -> list[dict]:
    with path.open() as fh:
        return [json.loads(line) for line in fh if line.strip()]


def _points(records: list[dict], panel: Panel) -> list[tuple[str, list[tuple[float, float]]]]:
    """(label, points) of each series of ``panel`` that has data."""
    drawn = []
    for stage, key, label in panel.series:
        points = [
            (r.get(panel.x, r["step"]), r[key]) for r in records if r["stage"] == stage and r.get(key) is not None
        ]
        if points:
            drawn.append((label, points))
    return drawn


def plot_run(run_dir: Path) -> list[Path]:
    """Write one PNG per figure of ``FIGURES`` that has data into ``run_dir/plots``; panels without data are left
    out of their figure."""
    records = read_metrics(run_dir / "metrics.jsonl")
    out = run_dir / "plots"
    out.mkdir(exist_ok=True)
    written = []
    for name, panels in FIGURES.items():
        filled = [(panel, series) for panel in panels if (series := _points(records, panel))]
        if not filled:
            continue
        fig, axes = plt.subplots(len(filled), 1, figsize=(6.4, 0.4 + 3.2 * len(filled)), squeeze=False)
        for ax, (panel, series) in zip(axes[:, 0], filled, strict=True):
            for label, points in series:
                xs, ys = zip(*points, strict=True)
                if len(points) >= SMOOTH_FROM:  # noisy per-step series: faint raw line, bold rolling mean
                    line = ax.plot(xs, ys, alpha=0.25, linewidth=0.8)[0]
                    ax.plot(xs, rolling_mean(list(ys), SMOOTH_WINDOW), color=line.get_color(),
                            label=f"{label} (mean of {SMOOTH_WINDOW})")  # fmt: skip
                else:
                    ax.plot(xs, ys, label=label, marker="o", markersize=3)
            ax.set_title(panel.title)
            ax.set_xlabel(panel.xlabel, fontsize=8)
            ax.set_ylabel(panel.ylabel)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / name, dpi=110)
        plt.close(fig)
        written.append(out / name)
    summary = run_dir / "summary.json"
    curves = json.loads(summary.read_text()).get("val_curves") if summary.is_file() else None
    if curves:
        written.append(plot_val_vs_time([curves], out / "val_vs_time.png", "Validation accuracy after the warm-up"))
    return written


def plot_val_vs_time(runs: list[dict[str, list[list[float]]]], path: Path, title: str) -> Path:
    """Validation accuracy against minutes of training since the warm-up: continued SFT and ReFT, every run."""
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    for i, curves in enumerate(runs):
        for arm, label, color in (("sft", "continued SFT", "tab:blue"), ("reft", "ReFT", "tab:red")):
            if curves.get(arm):
                xs, ys = zip(*curves[arm], strict=True)
                ax.plot([x / 60 for x in xs], [100 * y for y in ys], color=color, marker="o", markersize=3,
                        alpha=0.8, label=label if i == 0 else None)  # fmt: skip
    ax.set_xlabel("minutes of training after the warm-up")
    ax.set_ylabel("validation accuracy (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_inference_curves(inference: dict, path: Path) -> Path:
    """Test accuracy against samples per question k: vote@k (solid), rerank@k (dashed), pass@k (dotted),
    one colour per method; greedy accuracy (where known) as a star at k = 1."""
    fig, ax = plt.subplots(figsize=(6.4, 4))
    ks = inference["k"]
    styles = {"vote": "-", "rerank": "--", "pass": ":"}
    for name, row in inference["methods"].items():
        color = None
        for metric, style in styles.items():
            if metric in row:
                line = ax.plot(ks, [100 * v for v in row[metric]], style, marker="o", markersize=3, color=color,
                               label=f"{name} {metric}@k")[0]  # fmt: skip
                color = line.get_color()
        if "greedy" in row:
            ax.plot([1], [100 * row["greedy"]], "*", markersize=9, color=color, label=f"{name} greedy")
    ax.set_xscale("log", base=2)
    ax.set_xticks(ks, [str(k) for k in ks])
    ax.set_xlabel("samples per question k")
    ax.set_ylabel(f"{inference['test_set']} accuracy (%)")
    ax.set_title("Inference-time scaling")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path

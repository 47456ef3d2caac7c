"""PNG curves of a run from its ``metrics.jsonl``: reward, KL, accuracy and length against step."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

# (file name, title, [(stage, metric, label)])
PANELS = [
    (
        "reward.png",
        "ReFT reward per step",
        [("reft", "reward", "mean reward"), ("reft", "frac_correct", "share correct")],
    ),
    ("kl.png", "KL to the warm-up model (per sequence)", [("reft", "kl", "k1"), ("reft", "kl_k3", "k3")]),
    (
        "accuracy.png",
        "Validation accuracy",
        [
            ("sft_eval", "val_acc", "SFT (per epoch)"),
            ("offline_st_eval", "val_acc", "offline self-training"),
            ("online_st_eval", "val_acc", "online self-training"),
            ("reft_eval", "val_acc", "ReFT"),
        ],
    ),
    (
        "length.png",
        "Response length (tokens)",
        [("reft", "response_length", "ReFT samples"), ("sft_eval", "val_length", "SFT greedy (val)")],
    ),
    (
        "losses.png",
        "Losses",
        [
            ("sft", "loss", "SFT loss"),
            ("reft", "policy_loss", "PPO policy loss"),
            ("reft", "value_loss", "PPO value loss"),
        ],
    ),
]


SMOOTH_FROM, SMOOTH_WINDOW = 30, 10


def rolling_mean(values: list[float], window: int) -> list[float]:
    """Mean of the last ``window`` values at each point (fewer at the start)."""
    return [sum(values[max(0, i - window + 1) : i + 1]) / (i + 1 - max(0, i - window + 1)) for i in range(len(values))]


def read_metrics(path: Path) -> list[dict]:
    with path.open() as fh:
        return [json.loads(line) for line in fh if line.strip()]


def plot_run(run_dir: Path) -> list[Path]:
    """Write one PNG per panel into ``run_dir/plots``; x is the epoch (fractional for PPO steps)."""
    records = read_metrics(run_dir / "metrics.jsonl")
    out = run_dir / "plots"
    out.mkdir(exist_ok=True)
    written = []
    for name, title, series in PANELS:
        fig, ax = plt.subplots(figsize=(6, 3.6))
        drawn = False
        for stage, key, label in series:
            points = [
                (r.get("epoch", r["step"]), r[key]) for r in records if r["stage"] == stage and r.get(key) is not None
            ]
            if len(points) >= SMOOTH_FROM:  # noisy per-step series: faint raw line, bold rolling mean
                xs, ys = zip(*points, strict=True)
                line = ax.plot(xs, ys, alpha=0.25, linewidth=0.8)[0]
                ax.plot(
                    xs,
                    rolling_mean(list(ys), SMOOTH_WINDOW),
                    color=line.get_color(),
                    label=f"{label} (mean of {SMOOTH_WINDOW})",
                )
                drawn = True
            elif points:
                ax.plot(*zip(*points, strict=True), label=label, marker="o", markersize=3)
                drawn = True
        if not drawn:
            plt.close(fig)
            continue
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend()
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

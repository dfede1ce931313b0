"""PNG plots: training and validation loss; base vs adapter metrics per language."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from bot.finetune.train import History


def plot_loss(history: History, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    if history.train:
        steps, losses = zip(*history.train, strict=True)
        ax.plot(steps, losses, label="train (per step)", color="#9aa7b8", linewidth=1)
        window = 5
        if len(losses) >= window:
            smooth = [
                sum(losses[max(0, i - window + 1) : i + 1])
                / len(losses[max(0, i - window + 1) : i + 1])
                for i in range(len(losses))
            ]
            ax.plot(steps, smooth, label=f"train ({window}-step mean)", color="#1f4e79")
    if history.validation:
        steps, losses = zip(*history.validation, strict=True)
        ax.plot(steps, losses, "o-", label="validation", color="#c0504d")
    if history.best_step:
        ax.axvline(history.best_step, linestyle=":", color="#c0504d", label="best adapter")
    for step in history.resumed_at:
        ax.axvline(step, linestyle="--", color="#888888", linewidth=0.8)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (assistant tokens)")
    ax.set_title("LoRA fine-tuning")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_metrics(
    per_language: Mapping[str, Mapping[str, Mapping[str, float]]],
    metrics: Sequence[tuple[str, str]],
    path: Path,
) -> Path:
    """One panel per metric: base and adapter bars per language (``per_language[model][lang]``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(per_language)
    languages = sorted({lang for rows in per_language.values() for lang in rows})
    fig, axes = plt.subplots(len(metrics), 1, figsize=(10, 2.6 * len(metrics)), dpi=100)
    axes_list = list(axes) if len(metrics) > 1 else [axes]
    width = 0.8 / max(1, len(models))
    colors = ("#9aa7b8", "#1f4e79", "#c0504d")
    for ax, (key, label) in zip(axes_list, metrics, strict=True):
        for i, model in enumerate(models):
            values = [per_language[model].get(lang, {}).get(key, 0.0) for lang in languages]
            xs = [x + (i - (len(models) - 1) / 2) * width for x in range(len(languages))]
            ax.bar(xs, values, width, label=model, color=colors[i % len(colors)])
        ax.set_xticks(range(len(languages)), languages)
        ax.set_ylabel(label)
        ax.grid(axis="y", alpha=0.3)
    axes_list[0].legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path

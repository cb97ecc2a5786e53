"""Figures people would rather look at than read. Headless (Agg) and file-based."""

from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def training_curves(history: list[dict[str, float]], path: Path) -> Path:
    """Loss, the kNN monitor (when the run had one) and throughput per epoch."""
    epochs = [h["epoch"] for h in history]
    knn = [(h["epoch"], h["knn_top1"]) for h in history if "knn_top1" in h]
    fig, axes = plt.subplots(1, 3 if knn else 2, figsize=(13.5 if knn else 9, 3.2))
    ax_loss, ax_speed = axes[0], axes[-1]
    ax_loss.plot(epochs, [h["loss"] for h in history], marker="o")
    ax_loss.set(xlabel="epoch", ylabel="loss", title="pretraining loss")
    if knn:
        axes[1].plot(*zip(*knn, strict=True), marker="o", color="tab:purple")
        axes[1].set(xlabel="epoch", ylabel="top-1", title="kNN monitor (k=20, labelled sample)")
    ax_speed.plot(epochs, [h["images_per_s"] for h in history], marker="o", color="tab:green")
    ax_speed.set(xlabel="epoch", ylabel="images/s", title="throughput (all workers)")
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def embedding_map(
    coords: np.ndarray, labels: np.ndarray | None, names: tuple[str, ...], title: str, path: Path
) -> Path:
    """A 2-D map of test embeddings (e.g. t-SNE), one colour per class; data without labels
    (``labels`` None or no ``names``) is drawn in one colour, and the title says so."""
    fig, ax = plt.subplots(figsize=(6.4, 5.6))
    if labels is None or not names:
        ax.scatter(coords[:, 0], coords[:, 1], s=6, color="tab:blue", alpha=0.8)
        title = f"{title} (unlabeled)"
    else:
        cmap = plt.get_cmap("tab10" if len(names) <= 10 else "tab20")
        for i, name in enumerate(names):
            sel = labels == i
            if sel.any():
                ax.scatter(coords[sel, 0], coords[sel, 1], s=6, color=cmap(i % cmap.N), label=name, alpha=0.8)
        if len(names) <= 20:
            ax.legend(markerscale=3, fontsize=7, loc="best", frameon=False)
    ax.set(title=title, xticks=[], yticks=[])
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def confusion_matrix(cm: np.ndarray, names: tuple[str, ...], title: str, path: Path) -> Path:
    """Row-normalised confusion matrix (rows: true class, columns: prediction)."""
    norm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    size = max(4.0, 0.45 * len(names) + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set(xticks=range(len(names)), yticks=range(len(names)), xlabel="predicted", ylabel="true", title=title)
    ax.set_xticklabels(names, rotation=90, fontsize=7)
    ax.set_yticklabels(names, fontsize=7)
    if len(names) <= 20:
        for (i, j), v in np.ndenumerate(norm):
            if v >= 0.01:
                ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=6, color="white" if v > 0.5 else "black")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def view_grid(rows: list[list[np.ndarray]], path: Path, title: str = "augmented views") -> Path:
    """Each row: an original image followed by its augmented views, as uint8 (H, W, 3) arrays."""
    n_rows, n_cols = len(rows), max(len(r) for r in rows)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(1.3 * n_cols, 1.3 * n_rows), squeeze=False)
    for r, row in enumerate(rows):
        for c in range(n_cols):
            ax = axes[r][c]
            ax.axis("off")
            if c < len(row):
                ax.imshow(row[c], interpolation="nearest")
                if r == 0:
                    ax.set_title("original" if c == 0 else f"view {c}", fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def time_to_accuracy(
    minutes: list[float], accuracy: list[float], baseline: float | None, path: Path, title: str, ylabel: str
) -> Path:
    """Accuracy against wall-clock minutes of training, one point per budget, with a baseline (e.g. raw
    pixels) as a dashed line."""
    fig, ax = plt.subplots(figsize=(6.0, 3.8))
    ax.plot(minutes, accuracy, marker="o", label="pretrained encoder")
    for x, y in zip(minutes, accuracy, strict=True):
        ax.annotate(f"{y:.3f}", (x, y), textcoords="offset points", xytext=(0, 6), ha="center", fontsize=7)
    if baseline is not None:
        ax.axhline(baseline, color="tab:gray", linestyle="--", label=f"raw pixels {baseline:.3f}")
    ax.set(xlabel="wall-clock minutes of pretraining (start-up included)", ylabel=ylabel, title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right", frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def grouped_bars(bars: dict[str, list[float | None]], groups: list[str], path: Path, title: str) -> Path:
    """One bar per entry (e.g. a method) in each group (e.g. a protocol); a missing value leaves a gap."""
    fig, ax = plt.subplots(figsize=(max(6.0, 1.4 * len(groups) + 0.25 * len(bars) * len(groups)), 4.2))
    width = 0.8 / max(len(bars), 1)
    x = np.arange(len(groups))
    for i, (name, values) in enumerate(bars.items()):
        heights = [np.nan if v is None else v for v in values]
        ax.bar(x + (i - (len(bars) - 1) / 2) * width, heights, width, label=name)
    ax.set_xticks(x, groups)
    finite = [v for values in bars.values() for v in values if v is not None]
    if finite:
        ax.set_ylim(max(0.0, min(finite) - 0.05), min(1.0, max(finite) + 0.03))
    ax.set(ylabel="test top-1", title=title)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7, ncol=2, frameon=False, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path

"""Figures people would rather look at than read. Headless (Agg) and file-based."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def training_curves(history: list[dict[str, float]], path: Path) -> Path:
    """Loss and throughput per epoch."""
    epochs = [h["epoch"] for h in history]
    fig, (ax_loss, ax_speed) = plt.subplots(1, 2, figsize=(9, 3.2))
    ax_loss.plot(epochs, [h["loss"] for h in history], marker="o")
    ax_loss.set(xlabel="epoch", ylabel="loss", title="pretraining loss")
    ax_speed.plot(epochs, [h["images_per_s"] for h in history], marker="o", color="tab:green")
    ax_speed.set(xlabel="epoch", ylabel="images/s", title="throughput (all workers)")
    for ax in (ax_loss, ax_speed):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path

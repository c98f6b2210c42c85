"""The summarise stage: the leaderboard across (dataset, model) and the report's figures."""

from __future__ import annotations

import csv
import html
import json
from pathlib import Path

LEADERBOARD_METRICS = ["AP", "AP50", "AP75", "AP_small", "AP_medium", "AP_large"]
LEADERBOARD_FIELDS = ["rank", "dataset", "model", *LEADERBOARD_METRICS, "iterations",
                      "train_seconds", "device", "train_chips", "val_chips"]


def leaderboard_rows(runs: list[dict]) -> list[dict]:
    """One row per run, ranked by AP within each dataset (1 = best)."""
    rows = []
    for run in runs:
        rows.append({
            "dataset": run["dataset"], "model": run["model"],
            **{m: run["evaluation"]["metrics"][m] for m in LEADERBOARD_METRICS},
            "iterations": run["training"]["iterations"],
            "train_seconds": run["training"]["seconds"], "device": run["training"]["device"],
            "train_chips": run["training"]["chips"], "val_chips": run["evaluation"]["images"],
        })
    rows.sort(key=lambda r: (r["dataset"], -r["AP"], r["model"]))
    for dataset in {r["dataset"] for r in rows}:
        ranked = [r for r in rows if r["dataset"] == dataset]
        for i, row in enumerate(ranked, start=1):
            row["rank"] = i
    return rows


def write_leaderboard(runs: list[dict], csv_path: Path, html_path: Path) -> list[dict]:
    rows = leaderboard_rows(runs)
    with open(csv_path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, LEADERBOARD_FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    header = "".join(f"<th>{html.escape(f)}</th>" for f in LEADERBOARD_FIELDS)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(r[f]))}</td>" for f in LEADERBOARD_FIELDS)
        + "</tr>" for r in rows)
    html_path.write_text(
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>nadir leaderboard</title>"
        "<style>table{border-collapse:collapse}td,th{border:1px solid #999;padding:3px 8px}"
        "</style></head><body><h1>Leaderboard</h1><p>COCO box metrics on each dataset's val "
        f"split, ranked by AP.</p><table><tr>{header}</tr>{body}</table></body></html>\n")
    return rows


def format_table(rows: list[dict]) -> str:
    """The leaderboard as fixed-width text for the terminal."""
    fields = ["rank", "dataset", "model", "AP", "AP50", "AP75", "train_seconds"]
    cells = [fields] + [[str(r[f]) for f in fields] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(fields))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True))
                     for row in cells)


def plot_loss_curve(train_log: Path, out_png: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    history = json.loads(Path(train_log).read_text())
    steps = [h["iteration"] for h in history]
    fig, (ax_loss, ax_lr) = plt.subplots(1, 2, figsize=(9, 3.2))
    for key in sorted(k for k in history[0] if k not in ("iteration", "lr", "seconds")):
        ax_loss.plot(steps, [h[key] for h in history], label=key,
                     linewidth=2.2 if key == "loss" else 1)
    ax_loss.set_xlabel("iteration")
    ax_loss.set_ylabel("loss")
    ax_loss.legend(fontsize=7)
    ax_lr.plot(steps, [h["lr"] for h in history])
    ax_lr.set_xlabel("iteration")
    ax_lr.set_ylabel("learning rate")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out_png, dpi=90)
    plt.close(fig)

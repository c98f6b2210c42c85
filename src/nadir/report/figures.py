"""Every figure of the report: dataset statistics, loss curves, per-class AP heat map, PR
curves, sample detections (rotated boxes for oriented models).

Each function reads the stage outputs it is given and writes one PNG; none reads anything else,
so each runs as its own Snakemake job (or pod) with only its declared inputs.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from nadir.core.errors import InputError
from nadir.core.geometry import rbox_to_polygon
from nadir.core.named_inputs import files_by_run
from nadir.datasets.tables import EXCLUDED
from nadir.protocols.coco import NO_GROUND_TRUTH
from nadir.raster.chip_params import ChipParams
from nadir.raster.radiometry import rgb_composite
from nadir.storage.shards import decode_chip, read_chips

log = logging.getLogger(__name__)

GROUND_TRUTH_COLOUR = "#00c853"  # green
PREDICTION_COLOUR = "#ff00c8"  # magenta: apart from green on imagery and for most colour vision


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def class_ap_matrix(metrics: list[dict]) -> tuple[list[str], np.ndarray]:
    """(class names, models x classes AP); NaN marks a class without ground truth."""
    classes = [c["name"] for c in metrics[0]["per_class"]]
    matrix = np.full((len(metrics), len(classes)), np.nan)
    for i, m in enumerate(metrics):
        names = [c["name"] for c in m["per_class"]]
        if names != classes:
            raise ValueError(f"runs disagree on the classes: {names} vs {classes}")
        for j, row in enumerate(m["per_class"]):
            if row["status"] != NO_GROUND_TRUTH:
                matrix[i, j] = row["AP"]
    return classes, matrix


def plot_class_heatmap(models: list[str], chip_metrics: list[dict], scene_metrics: list[dict],
                       out_png: Path, title: str) -> None:
    """Per-class AP of every model of one dataset, chips (left) and whole scenes (right)."""
    plt = _pyplot()
    panels = [("chip level", *class_ap_matrix(chip_metrics)),
              ("scene level", *class_ap_matrix(scene_metrics))]
    classes = panels[0][1]
    width = 1.0 + 0.75 * len(classes)
    fig, axes = plt.subplots(1, 2, figsize=(2.5 + 2 * width, 1.8 + 0.45 * len(models)),
                             sharey=True, squeeze=False, layout="constrained")
    cmap = plt.get_cmap("viridis").with_extremes(bad="#d0d0d0")
    for ax, (level, _, matrix) in zip(axes[0], panels, strict=True):
        image = ax.imshow(np.ma.masked_invalid(matrix), cmap=cmap, vmin=0, vmax=1,
                          aspect="auto")
        for (i, j), value in np.ndenumerate(matrix):
            text = "no GT" if np.isnan(value) else f"{value:.2f}"
            ax.text(j, i, text, ha="center", va="center", fontsize=7,
                    color="black" if np.isnan(value) or value > 0.6 else "white")
        ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right", fontsize=7)
        ax.set_title(f"AP per class, {level}", fontsize=9)
    axes[0][0].set_yticks(range(len(models)), models, fontsize=7)
    axes[0][1].tick_params(labelleft=False)
    fig.colorbar(image, ax=axes[0].tolist(), fraction=0.05, label="AP (IoU 0.5:0.95)")
    fig.suptitle(title, fontsize=10)
    fig.savefig(out_png, dpi=90)
    plt.close(fig)


def plot_class_heatmap_of_files(named: Mapping[str, str | Path], out_png: str | Path,
                                title: str) -> None:
    """plot_class_heatmap of the runs whose `metrics` and `scene_metrics` files `named` holds
    (nadir.core.named_inputs.run_inputs), one row per run in the order they are named."""
    runs = files_by_run(named.items(), ["metrics", "scene_metrics"])
    plot_class_heatmap([run for _, run in runs],
                       [json.loads(files["metrics"].read_text()) for files in runs.values()],
                       [json.loads(files["scene_metrics"].read_text()) for files in runs.values()],
                       out_png, title)


def plot_pr_curves(chip: dict, scene: dict, out_png: Path, title: str) -> None:
    """Precision against recall per class, on chips (left) and whole scenes (right)."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for ax, (level, result) in zip(axes, [("chip level", chip), ("scene level", scene)],
                                   strict=True):
        curve = result["pr_curve"]
        ap50 = {c["name"]: c["AP50"] for c in result["per_class"]}
        for name, precision in curve["precision"].items():
            if precision is None:
                ax.plot([], [], linestyle="none", label=f"{name}: no ground truth")
                continue
            ax.plot(curve["recall"], precision, label=f"{name}: AP50 {ap50[name]:.3f}")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
        ax.set_xlabel("recall")
        ax.set_title(f"{level}, IoU {curve['iou']}", fontsize=9)
        ax.legend(fontsize=7, loc="lower left")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("precision")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(out_png, dpi=90)
    plt.close(fig)


def plot_pr_curves_of_files(metrics: str | Path, scene_metrics: str | Path, out_png: str | Path,
                            title: str) -> None:
    """The plot_pr job: `plot_pr_curves` of a run's metrics.json and scene_metrics.json."""
    plot_pr_curves(json.loads(Path(metrics).read_text()),
                   json.loads(Path(scene_metrics).read_text()), Path(out_png), title)


def _spread(items: list, count: int) -> list:
    """`count` items evenly spaced over the list (all of them if it is shorter)."""
    if len(items) <= count:
        return list(items)
    return [items[i] for i in np.linspace(0, len(items) - 1, count).round().astype(int)]


def pick_sample_chips(coco: dict, count: int) -> list[dict]:
    """`count` val chips spread evenly over the split, chips with objects first (empty ones
    only fill up): the same chips for every model of a dataset, so grids compare."""
    with_objects = {a["image_id"] for a in coco["annotations"]}
    chosen = _spread([im for im in coco["images"] if im["id"] in with_objects], count)
    return chosen + _spread([im for im in coco["images"] if im["id"] not in with_objects],
                            count - len(chosen))


def read_chip_pixels(shards: list[str], images: list[dict],
                     listed_in: Path) -> list[np.ndarray]:
    """The chips' pixels, read from their shards (never unpacked); `listed_in`: the COCO file."""
    return [decode_chip(data, f"{shards[im['shard']]}: chip {im['file_name']}")
            for im, data in zip(images, read_chips(shards, images, listed_in), strict=True)]


def outline(item: dict, oriented: bool, colour: str, style: str):
    """The patch drawn for one annotation or detection: its rotated box when `oriented` and it
    has one (`polygon`, or an annotation's `rbox`), else its axis-aligned `bbox`."""
    from matplotlib.patches import Polygon, Rectangle

    corners = item.get("polygon") or (rbox_to_polygon(item["rbox"]) if "rbox" in item else None)
    if oriented and corners is not None:
        return Polygon(np.reshape(corners, (4, 2)), closed=True, fill=False, edgecolor=colour,
                       linestyle=style, linewidth=1.2)
    x, y, w, h = item["bbox"]
    return Rectangle((x, y), w, h, fill=False, edgecolor=colour, linestyle=style,
                     linewidth=1.2)


def plot_detection_grid(coco_json: Path, predictions: list[dict], shards: list[str],
                        out_png: Path, title: str, count: int, min_score: float,
                        chips_params: ChipParams | None = None) -> None:
    """Sample val chips with ground truth (green) and predictions above `min_score` (magenta).

    Chips of other than 3 bands, or kept at full bit depth, are drawn as the composite of
    their RGB bands (`chipping.rgb_bands`), each chip stretched from its own 2nd to 98th
    percentile (`chips_params`: how they were cut).

    An oriented model's predictions (carrying `polygon`) are drawn as rotated boxes, and so is
    the ground truth beside them (each annotation's `rbox`); other models' as axis-aligned ones.
    """
    plt = _pyplot()
    coco = json.loads(Path(coco_json).read_text())
    oriented = any("polygon" in p for p in predictions)
    chips = pick_sample_chips(coco, count)
    if not chips:
        raise InputError(coco_json, "the val split has no chips to draw")
    names = {c["id"]: c["name"] for c in coco["categories"]}
    columns = int(np.ceil(np.sqrt(len(chips))))
    rows = int(np.ceil(len(chips) / columns))
    fig, axes = plt.subplots(rows, columns, figsize=(3 * columns, 3 * rows + 0.6),
                             squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    drawn = {"truth": 0, "predictions": 0}
    pixels_of = read_chip_pixels(shards, chips, coco_json)
    rgb = chips_params.rgb_positions if chips_params is not None else (0, 1, 2)
    for ax, image, pixels in zip(axes.flat, chips, pixels_of, strict=False):
        if pixels.shape[2] != 3 or pixels.dtype != np.uint8:
            pixels = rgb_composite(pixels.transpose(2, 0, 1), rgb).transpose(1, 2, 0)
        ax.imshow(pixels)
        truth = [a for a in coco["annotations"] if a["image_id"] == image["id"]]
        shown = [p for p in predictions
                 if p["image_id"] == image["id"] and p["score"] >= min_score]
        for boxes, colour, style in ((truth, GROUND_TRUTH_COLOUR, "-"),
                                     (shown, PREDICTION_COLOUR, "--")):
            for b in boxes:
                ax.add_patch(outline(b, oriented, colour, style))
        for p in shown:
            ax.text(p["bbox"][0], p["bbox"][1] - 1, f"{names[p['category_id']]} "
                    f"{p['score']:.2f}", color=PREDICTION_COLOUR, fontsize=5)
        drawn["truth"] += len(truth)
        drawn["predictions"] += len(shown)
        ax.set_title(f"{image['scene']} at ({image['x']}, {image['y']}): {len(truth)} GT, "
                     f"{len(shown)} pred", fontsize=7)
    log.info("drew %d val chips: %d ground-truth boxes, %d predictions with score >= %s",
             len(chips), drawn["truth"], drawn["predictions"], min_score)
    shown_bands = ""
    if chips_params is not None and chips_params.model_bands != 3 and rgb is not None:
        shown_bands = f"; bands {[chips_params.bands[i] for i in rgb]} as RGB"
    fig.suptitle(f"{title}\nground truth: green, solid; predictions with score >= "
                 f"{min_score}: magenta, dashed{shown_bands}", fontsize=9)
    fig.tight_layout()
    fig.savefig(out_png, dpi=90)
    plt.close(fig)


def plot_detections_of_files(val: str | Path, predictions: str | Path,
                             shards: list[str | Path], out_png: str | Path, title: str,
                             count: int, min_score: float,
                             manifest: str | Path | None = None) -> None:
    """The plot_detections job: `plot_detection_grid` of a run's predictions.json, the chips
    drawn as the chip manifest's (`manifest`) chip parameters say."""
    plot_detection_grid(Path(val), json.loads(Path(predictions).read_text()),
                        [str(s) for s in shards], Path(out_png), title, count, min_score,
                        ChipParams.of_manifest(manifest) if manifest else None)


def plot_statistics(stats: dict, out_png: Path, title: str) -> None:
    """Three panels: objects per class (log scale), object sizes, objects per image."""
    plt = _pyplot()
    splits = [s for s in stats["objects_per_class"] if s != EXCLUDED]
    classes = list(next(iter(stats["objects_per_class"].values()), {}))
    fig, (ax_cls, ax_size, ax_img) = plt.subplots(
        1, 3, figsize=(14, max(3.5, 0.22 * len(classes) + 1)),
        gridspec_kw={"width_ratios": [1.4, 1, 1]})
    height = 0.8 / max(1, len(splits))  # side by side: stacking misleads on a log scale
    for i, split in enumerate(splits):
        counts = [stats["objects_per_class"][split][c] for c in classes]
        ax_cls.barh([y - 0.4 + (i + 0.5) * height for y in range(len(classes))], counts,
                    height, label=split)
    ax_cls.set_yticks(range(len(classes)), classes, fontsize=7 if len(classes) > 20 else 9)
    ax_cls.invert_yaxis()
    ax_cls.set_xscale("log")
    ax_cls.set_xlim(left=0.8)  # bars start below one object, so a bar's length is its count
    ax_cls.set_xlabel("objects (log scale)")
    imbalance = stats["class_imbalance"]
    ax_cls.set_title(f"objects per class (max/min {imbalance})" if imbalance else
                     "objects per class")
    ax_cls.legend(fontsize=8, loc="best")
    sizes = stats["object_size_px"]["histogram"]
    ax_size.bar(range(len(sizes)), list(sizes.values()))
    ax_size.set_xticks(range(len(sizes)), list(sizes), rotation=45, fontsize=8)
    ax_size.set_xlabel("object size, sqrt(box area) in px")
    ax_size.set_ylabel("objects")
    ax_size.set_title(f"object sizes (median {stats['object_size_px']['median']} px)")
    width = 0.8 / max(1, len(splits))
    for i, split in enumerate(splits):
        hist = stats["objects_per_image"][split]["histogram"]
        ax_img.bar([x + i * width for x in range(len(hist))], list(hist.values()), width,
                   label=split)
        ax_img.set_xticks(range(len(hist)), list(hist), rotation=45, fontsize=8)
    ax_img.set_xlabel("objects per image")
    ax_img.set_ylabel("images")
    ax_img.set_title("objects per image")
    ax_img.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out_png, dpi=100)
    plt.close(fig)


def plot_loss_curve(train_log: Path, out_png: Path, title: str) -> None:
    """Each loss term and the learning rate against the iteration; with `training.eval_every`,
    a third panel with the selection split's chip-level AP and AP50 (rows with
    `selection_AP`)."""
    plt = _pyplot()
    entries = json.loads(Path(train_log).read_text())
    history = [h for h in entries if "loss" in h]
    selection = [h for h in entries if "selection_AP" in h]
    steps = [h["iteration"] for h in history]
    panels = 3 if selection else 2
    fig, axes = plt.subplots(1, panels, figsize=(4.5 * panels, 3.2))
    ax_loss, ax_lr = axes[0], axes[1]
    for key in sorted(k for k in history[0] if k not in ("iteration", "lr", "seconds",
                                                         "images_per_second")):
        ax_loss.plot(steps, [h[key] for h in history], label=key,
                     linewidth=2.2 if key == "loss" else 1)
    ax_loss.set_xlabel("iteration")
    ax_loss.set_ylabel("loss")
    ax_loss.legend(fontsize=7)
    ax_lr.plot(steps, [h["lr"] for h in history])
    ax_lr.set_xlabel("iteration")
    ax_lr.set_ylabel("learning rate")
    if selection:
        ax_selection = axes[2]
        for key, label in (("selection_AP", "AP"), ("selection_AP50", "AP50")):
            ax_selection.plot([h["iteration"] for h in selection], [h[key] for h in selection],
                              marker="o", label=label)
        ax_selection.set_xlabel("iteration")
        ax_selection.set_ylabel("selection split, chip level")
        ax_selection.set_ylim(0, 1)
        ax_selection.legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out_png, dpi=90)
    plt.close(fig)

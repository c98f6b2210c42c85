"""Is one model better than another, or is the gap noise?

Two tools answer it. Over repeats (the same settings trained with several seeds) each metric is
summarised as mean, sample standard deviation and a 95 % Student-t interval of the mean. Between
models, a paired bootstrap over the test scenes: draw the scenes with replacement, score every
model on the same draw, and take the 2.5 and 97.5 percentiles of the difference in AP over the
draws. A model whose difference to the best includes 0 is "not distinguishable from the best".

Rescoring thousands of draws with a COCO engine would take hours on a real dataset, so the
matching is done once per scene here, COCO's way (greedy in score order per scene and class, a
detection taking the best-overlapping free object at each IoU threshold, at most
`max_detections` per scene and class), and a draw only reweights the scenes: each scene's
detections and objects count as often as the scene was drawn. With every weight 1 this gives
COCO's AP exactly (tests/test_comparison.py checks it against the evaluation stage).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path

import numpy as np

from nadir.core.errors import NadirError
from nadir.core.html import heading, page, paragraph, table
from nadir.core.named_inputs import files_by_run
from nadir.protocols.scenes import scene_ground_truth

log = logging.getLogger(__name__)

IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)
RECALL_THRESHOLDS = np.linspace(0.0, 1.00, 101)
METRIC_IOUS = {"AP": slice(None), "AP50": slice(0, 1)}  # rows of IOU_THRESHOLDS per metric


def _two_sided_t_probability(t: float, df: int) -> float:
    """P(|T| < t) for Student's t with an integer number of degrees of freedom, in closed form
    (Abramowitz & Stegun 26.7.3 and 26.7.4), so no statistics library is needed."""
    theta = math.atan(t / math.sqrt(df))
    sin, cos2 = math.sin(theta), math.cos(theta) ** 2
    if df % 2 == 1:
        total, term = 0.0, math.cos(theta)
        for k in range(1, (df - 1) // 2 + 1):
            total += term
            term *= cos2 * (2 * k) / (2 * k + 1)
        return 2 / math.pi * (theta + sin * total)
    total, term = 0.0, 1.0
    for k in range(1, df // 2 + 1):
        total += term
        term *= cos2 * (2 * k - 1) / (2 * k)
    return sin * total


def t_quantile_975(df: int) -> float:
    """The 97.5 % quantile of Student's t (the half-width factor of a 95 % interval)."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be at least 1, got {df}")
    low, high = 0.0, 1.0
    while _two_sided_t_probability(high, df) < 0.95:
        high *= 2
    for _ in range(200):
        middle = (low + high) / 2
        low, high = (middle, high) if _two_sided_t_probability(middle, df) < 0.95 else (
            low, middle)
    return (low + high) / 2


def summarise_repeats(values: list[float]) -> dict:
    """n, mean, sample sd and the 95 % t-interval of the mean; sd and interval are None for a
    single value (one run says nothing about the spread)."""
    if not values:
        raise ValueError("no values to summarise")
    n = len(values)
    mean = sum(values) / n
    if n == 1:
        return {"n": 1, "mean": mean, "sd": None, "ci_low": None, "ci_high": None}
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = t_quantile_975(n - 1) * sd / math.sqrt(n)
    return {"n": n, "mean": mean, "sd": sd, "ci_low": mean - half, "ci_high": mean + half}


def group_settings(runs: list[tuple[str, dict]]) -> list[tuple[str, list[int]]]:
    """Which runs are repeats of one setting: (label, indices into `runs`) per group.

    `runs` holds (run name, run.json record). Runs of one dataset and model whose
    hyperparameters differ only by the seed are one setting; its label is its shortest run
    name (the first repeat's, without the `--repeat-N` suffix).
    """
    groups: dict[tuple, list[int]] = {}
    for i, (_, record) in enumerate(runs):
        hp = {k: v for k, v in record.get("hyperparameters", {}).items() if k != "seed"}
        key = (record["dataset"], record["model"], json.dumps(hp, sort_keys=True))
        groups.setdefault(key, []).append(i)
    return [(min((runs[i][0] for i in members), key=lambda n: (len(n), n)), members)
            for members in groups.values()]


@dataclass
class SceneMatches:
    """One run's detections matched to the ground truth, scene by scene, once.

    Per category: `scenes[k]` (scene index of each kept detection), `matched[k]` (IoU
    thresholds x detections, True where the detection is a true positive at that threshold),
    in COCO's global score order; `objects[s, k]`: objects of category k in scene s.
    """

    scene_names: list[str]
    scenes: list[np.ndarray]
    matched: list[np.ndarray]
    objects: np.ndarray


def _iou(detections: np.ndarray, objects: np.ndarray) -> np.ndarray:
    """IoU of xywh boxes, detections x objects (COCO's: no +1 on widths)."""
    dx0, dy0 = detections[:, 0:1], detections[:, 1:2]
    dx1, dy1 = dx0 + detections[:, 2:3], dy0 + detections[:, 3:4]
    gx0, gy0 = objects[:, 0], objects[:, 1]
    gx1, gy1 = gx0 + objects[:, 2], gy0 + objects[:, 3]
    width = np.clip(np.minimum(dx1, gx1) - np.maximum(dx0, gx0), 0, None)
    height = np.clip(np.minimum(dy1, gy1) - np.maximum(dy0, gy0), 0, None)
    inter = width * height
    union = (detections[:, 2:3] * detections[:, 3:4] + objects[:, 2] * objects[:, 3]) - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def _match_scene(detections: np.ndarray, objects: np.ndarray) -> np.ndarray:
    """thresholds x detections (in the given score order): True where matched, COCO's greedy
    rule: each detection takes the free object it overlaps most (the later one on a tie)."""
    matched = np.zeros((len(IOU_THRESHOLDS), len(detections)), dtype=bool)
    if len(detections) == 0 or len(objects) == 0:
        return matched
    ious = _iou(detections, objects)
    thresholds = np.minimum(IOU_THRESHOLDS, 1 - 1e-10)
    taken = np.zeros((len(IOU_THRESHOLDS), len(objects)), dtype=bool)
    rows = np.arange(len(IOU_THRESHOLDS))
    for d in range(len(detections)):
        free = np.where(taken, -1.0, ious[d][None, :])
        best = len(objects) - 1 - np.argmax(free[:, ::-1], axis=1)
        hit = free[rows, best] >= thresholds
        taken[rows[hit], best[hit]] = True
        matched[:, d] = hit
    return matched


def scene_matches(gt: dict, detections: list[dict], max_detections: int) -> SceneMatches:
    """Match a run's scene detections (COCO results) to COCO scene ground truth, per scene."""
    if any(a.get("iscrowd") for a in gt["annotations"]):
        raise NadirError("crowd annotations are not supported by the paired comparison")
    image_index = {im["id"]: i for i, im in enumerate(sorted(gt["images"],
                                                             key=lambda im: im["id"]))}
    names = [im.get("scene", im.get("file_name", str(im["id"])))
             for im in sorted(gt["images"], key=lambda im: im["id"])]
    categories = sorted(c["id"] for c in gt["categories"])
    category_index = {cid: k for k, cid in enumerate(categories)}
    objects = np.zeros((len(image_index), len(categories)), dtype=np.int64)
    boxes: dict[tuple[int, int], list] = {}
    for a in gt["annotations"]:
        i, k = image_index[a["image_id"]], category_index[a["category_id"]]
        objects[i, k] += 1
        boxes.setdefault((i, k), []).append(a["bbox"])
    found: dict[tuple[int, int], list] = {}
    for det in detections:
        key = (image_index[det["image_id"]], category_index[det["category_id"]])
        found.setdefault(key, []).append(det)
    per_category = [([], [], []) for _ in categories]  # scores, scenes, matched
    for (i, k), dets in sorted(found.items()):
        order = np.argsort([-d["score"] for d in dets], kind="mergesort")[:max_detections]
        kept = [dets[j] for j in order]
        truth = np.array(boxes.get((i, k), []), dtype=float).reshape(-1, 4)
        scores, scenes, matched = per_category[k]
        scores.append(np.array([d["score"] for d in kept], dtype=float))
        scenes.append(np.full(len(kept), i))
        matched.append(_match_scene(np.array([d["bbox"] for d in kept], dtype=float), truth))
    scene_of, matched_of = [], []
    for scores, scenes, matched in per_category:
        if not scores:
            scene_of.append(np.zeros(0, dtype=np.int64))
            matched_of.append(np.zeros((len(IOU_THRESHOLDS), 0), dtype=bool))
            continue
        order = np.argsort(-np.concatenate(scores), kind="mergesort")
        scene_of.append(np.concatenate(scenes)[order])
        matched_of.append(np.concatenate(matched, axis=1)[:, order])
    return SceneMatches(names, scene_of, matched_of, objects)


def average_precision(matches: SceneMatches, weights: np.ndarray | None = None,
                      metric: str = "AP") -> float:
    """COCO's AP (or AP50) with each scene counted `weights[s]` times (default: once).

    Categories without objects in the weighted scenes are left out of the mean, as COCO does;
    NaN when no category has any.
    """
    if weights is None:
        weights = np.ones(len(matches.scene_names))
    rows = METRIC_IOUS[metric]
    per_category = []
    for k, (scene_of, matched) in enumerate(zip(matches.scenes, matches.matched, strict=True)):
        positives = float(weights @ matches.objects[:, k])
        if positives == 0:
            continue
        if len(scene_of) == 0:
            per_category.append(0.0)
            continue
        w = weights[scene_of]
        hits = matched[rows]
        tp = np.cumsum(hits * w, axis=1)
        fp = np.cumsum(~hits * w, axis=1)
        recall = tp / positives
        precision = tp / (tp + fp + np.spacing(1))
        precision = np.maximum.accumulate(precision[:, ::-1], axis=1)[:, ::-1]
        sampled = np.zeros((len(precision), len(RECALL_THRESHOLDS)))
        for t in range(len(precision)):
            index = np.searchsorted(recall[t], RECALL_THRESHOLDS, side="left")
            inside = index < precision.shape[1]
            sampled[t, inside] = precision[t, index[inside]]
        per_category.append(float(sampled.mean()))
    return float(np.mean(per_category)) if per_category else float("nan")


def _check_same_scenes(runs: dict[str, list[SceneMatches]]) -> list[str]:
    scenes = None
    for name, repeats in runs.items():
        if not repeats:
            raise NadirError(f"{name}: no runs to compare")
        for matches in repeats:
            if scenes is None:
                scenes = matches.scene_names
            elif matches.scene_names != scenes:
                raise NadirError(f"{name} was scored on other scenes than the rest: a paired "
                                 "comparison needs every model scored on the same test scenes")
    return scenes


def paired_bootstrap(runs: dict[str, list[SceneMatches]], resamples: int, seed: int,
                     metric: str = "AP") -> dict:
    """Compare every pair of settings on the same bootstrap draws of the test scenes.

    `runs` maps a name (a model, or a model's sweep cell) to its repeats; a name's score on a
    draw is the mean over its repeats. Returns the observed scores, the best name, and per
    pair the observed difference (first minus second) with its 95 % percentile interval.
    """
    scenes = _check_same_scenes(runs)
    names = sorted(runs)
    generator = np.random.default_rng(seed)
    draws = generator.integers(0, len(scenes), size=(resamples, len(scenes)))

    def score(name: str, weights: np.ndarray | None) -> float:
        return float(np.mean([average_precision(m, weights, metric) for m in runs[name]]))

    observed = {name: score(name, None) for name in names}
    samples = {name: np.empty(resamples) for name in names}
    for b, draw in enumerate(draws):
        weights = np.bincount(draw, minlength=len(scenes)).astype(float)
        for name in names:
            samples[name][b] = score(name, weights)
    best = max(names, key=lambda n: (observed[n], n))
    pairs = []
    for first, second in combinations(names, 2):
        differences = samples[first] - samples[second]
        differences = differences[~np.isnan(differences)]
        low, high = (np.percentile(differences, [2.5, 97.5]) if differences.size
                     else (float("nan"), float("nan")))
        pairs.append({"first": first, "second": second,
                      "difference": observed[first] - observed[second],
                      "ci_low": float(low), "ci_high": float(high),
                      "distinguishable": bool(low > 0 or high < 0)})
    verdicts = {}
    for name in names:
        if name == best:
            verdicts[name] = "best"
            continue
        pair = next(p for p in pairs if {p["first"], p["second"]} == {name, best})
        verdicts[name] = "worse than the best" if pair["distinguishable"] else \
            "not distinguishable from the best"
    return {"metric": metric, "resamples": resamples, "seed": seed, "scenes": len(scenes),
            "repeats": {n: len(runs[n]) for n in names}, "observed": observed, "best": best,
            "verdicts": verdicts, "pairs": pairs}


def compare_dataset(runs: list[tuple[str, dict, dict]], gt: dict, max_detections: int,
                    metric: str, resamples: int, seed: int) -> dict:
    """The comparison of one dataset's settings: `runs` holds (run name, run.json record,
    scene predictions file content) per run; `gt` is the COCO ground truth of the val scenes."""
    groups = group_settings([(name, record) for name, record, _ in runs])
    settings = {label: [scene_matches(gt, runs[i][2]["detections"], max_detections)
                        for i in members] for label, members in groups}
    result = paired_bootstrap(settings, resamples, seed, metric)
    return {"dataset": runs[0][1]["dataset"],
            "settings": {label: sorted(runs[i][0] for i in members)
                         for label, members in groups}, **result}


def compare_files(named: Mapping[str, str | Path], coco: Path, annotations: Path, *,
                  max_detections: int, metric: str, resamples: int, seed: int, json_out: Path,
                  html_out: Path) -> dict:
    """compare_dataset of the runs whose `run` and `scene_predictions` files `named` holds
    (such as `snakemake.input`, named by nadir.core.named_inputs.run_inputs), against the val scenes
    of `coco` and `annotations`; writes the result as JSON and as a page."""
    by_run = files_by_run(named.items(), ["run", "scene_predictions"])
    runs = [(run, json.loads(files["run"].read_text()),
             json.loads(files["scene_predictions"].read_text()))
            for (_, run), files in by_run.items()]
    if not runs:
        raise NadirError("compare: no run named among the inputs")
    categories = json.loads(Path(coco).read_text())["categories"]
    gt = scene_ground_truth(runs[0][2]["images"], Path(annotations), categories)
    log.info("comparing %d run(s) on %d val scenes: %d bootstrap draws of the scenes",
             len(runs), len(gt["images"]), resamples)
    result = compare_dataset(runs, gt, max_detections, metric, resamples, seed)
    Path(json_out).write_text(json.dumps(result, indent=1) + "\n")
    Path(html_out).write_text(comparison_html(result))
    for name, verdict in sorted(result["verdicts"].items()):
        log.info("%s: %s %.4f, %s", name, metric, result["observed"][name], verdict)
    return result


def comparison_html(result: dict) -> str:
    """A self-contained page: each setting's score and verdict, then every pair."""
    def number(value: float) -> str:
        return "n/a" if value != value else f"{value:.4f}"  # NaN: no objects in any draw

    metric, best = result["metric"], result["best"]
    settings = [[name, result["repeats"][name], number(result["observed"][name]),
                 result["verdicts"][name]]
                for name in sorted(result["observed"], key=lambda n: -result["observed"][n])]
    pairs = [[p["first"], p["second"], number(p["difference"]),
              f"[{number(p['ci_low'])}, {number(p['ci_high'])}]",
              "yes" if p["distinguishable"] else "no"] for p in result["pairs"]]
    return page(
        "nadir comparison", heading(1, f"Pairwise comparison on {result['dataset']}"),
        paragraph(f"Scene-level {metric} of each setting on the {result['scenes']} val scenes "
                  f"(the mean over its repeats), and a paired bootstrap: {result['resamples']} "
                  f"draws of the scenes with replacement (seed {result['seed']}), every setting "
                  "scored on the same draws; the interval is the 2.5 to 97.5 percentile of the "
                  f"difference. A setting whose difference to the best ({best}) includes 0 is "
                  "not distinguishable from it. The interval covers the choice of test scenes, "
                  "not the training seed: repeats add that."),
        table(["setting", "repeats", metric, "verdict"], settings),
        heading(2, "Every pair"),
        table(["first", "second", f"{metric} first minus second", "95 % interval",
               "distinguishable"], pairs))

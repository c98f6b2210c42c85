"""`nadir <stage> ...`: the entry points the Snakemake rules call, one sub-command per stage,
and `run_rule_script` for the summary rules' scripts, which read their inputs by name."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path

from nadir import __version__
from nadir.core.errors import NadirError
from nadir.core.log_tee import tee_stderr_if_asked
from nadir.protocols import PROTOCOLS

log = logging.getLogger("nadir")


def cmd_sample(args) -> None:
    from nadir.datasets.sample import SampleSpec, write_scenes

    write_scenes(SampleSpec(**json.loads(args.spec)), [Path(p) for p in args.images],
                 [Path(p) for p in args.labels])


def cmd_index(args) -> None:
    from nadir.datasets.tables import IndexTables

    tables = IndexTables(Path(args.scenes), Path(args.annotations), Path(args.categories),
                         Path(args.summary))
    if args.format != "sample":
        cmd_index_fetched(args, tables)
        return
    from nadir.datasets import sample
    from nadir.datasets.tables import SceneSource, index_sample

    if not args.scene:
        raise NadirError("index --format sample needs one --scene SPLIT IMAGE LABEL per scene")
    classes = sample.CLASSES
    sources = [SceneSource(Path(image).stem, split, Path(image), Path(label))
               for split, image, label in args.scene]
    counts = index_sample(sources, classes, tables, args.max_raster_values)
    log.info("index: %d scenes, %d objects", counts["scenes"], counts["objects"])


def cmd_index_fetched(args, tables) -> None:
    """The index of a fetched dataset (DOTA, xView, RarePlanes) from its fetch manifest."""
    from nadir.index.normalise import index_fetched

    if not (args.manifest and args.files_dir and args.spec):
        raise NadirError(f"index --format {args.format} needs --manifest, --files-dir and --spec")
    index_fetched(Path(args.manifest), Path(args.files_dir), json.loads(args.spec), tables,
                  args.max_raster_values)


def cmd_fetch(args) -> None:
    from nadir.fetch.fetch import FetchSettings, fetch_dataset, write_scene_manifest

    manifest = fetch_dataset(args.dataset, json.loads(args.spec), Path(args.files_dir),
                             FetchSettings.from_config(json.loads(args.settings)),
                             args.max_raster_values)
    write_scene_manifest(manifest, Path(args.manifest))


def cmd_dataset_stats(args) -> None:
    from nadir.report.dataset_stats import chipping_warnings, dataset_statistics
    from nadir.report.figures import plot_statistics
    from nadir.report.leaderboard import dataset_summary_html

    stats = dataset_statistics(Path(args.scenes), Path(args.annotations), Path(args.categories))
    summary = json.loads(Path(args.summary).read_text())
    coco_stats = json.loads(Path(args.coco_stats).read_text())
    chipping = json.loads(Path(args.chips_manifest).read_text())["params"]
    stats["warnings"] = summary.get("warnings", []) + chipping_warnings(stats, coco_stats,
                                                                        chipping)
    for warning in stats["warnings"]:
        log.warning("%s", warning["message"])
    Path(args.json).write_text(json.dumps(stats, indent=1) + "\n")
    plot_statistics(stats, Path(args.png), args.title)
    Path(args.html).write_text(dataset_summary_html(args.title, summary, stats, coco_stats))
    log.info("statistics: images %s, objects %s, class imbalance %s, %d warning(s)",
             stats["images"], stats["objects"], stats["class_imbalance"],
             len(stats["warnings"]))


def cmd_chip(args) -> None:
    from nadir.chip.chipping import ChipParams, chip_shard, images_by_scene, scenes_to_chip
    from nadir.datasets.tables import read_annotations

    params = ChipParams.from_config(json.loads(args.params))
    images = images_by_scene(args.images)
    scenes = scenes_to_chip(Path(args.scenes), images)
    result = chip_shard(scenes, read_annotations(Path(args.annotations)), images, params,
                        Path(args.tar), Path(args.json), threads=args.threads,
                        max_raster_values=args.max_raster_values)
    chips = sum(counts["chips_written"] for counts in result["scenes"].values())
    log.info("shard %s: %d chips from %d scenes", args.tar, chips, len(scenes))


def cmd_chip_manifest(args) -> None:
    from nadir.chip.chipping import write_chip_manifest

    manifest = write_chip_manifest([Path(p) for p in args.shards], Path(args.out))
    log.info("chips: %s", json.dumps(manifest["totals"]))


def cmd_coco(args) -> None:
    from nadir.coco.build import write_coco

    stats = write_coco([Path(p) for p in args.shards], Path(args.categories),
                       {"train": Path(args.train), "val": Path(args.val)}, Path(args.stats))
    for split, s in stats.items():
        log.info("%s: %d chips, %d objects %s", split, s["chips"], s["objects"],
                 s["objects_per_class"])


def cmd_train(args) -> None:
    from nadir.train import run
    from nadir.train.backend import TrainJob, TrainOutputs

    outputs = TrainOutputs(Path(args.weights_out), Path(args.train_log), Path(args.run),
                           Path(args.resolved_config))
    job = TrainJob(dataset=args.dataset, model=args.model, hp=json.loads(args.hp),
                   train_json=Path(args.train), manifest=Path(args.manifest),
                   shards=[Path(p) for p in args.shards], outputs=outputs,
                   threads=args.threads, checkpoint_every=args.checkpoint_every,
                   weights_file=Path(args.pretrained_weights) if args.pretrained_weights else None,
                   world_size=args.world_size,
                   selection_json=Path(args.selection) if args.selection else None)
    run(job, args.checkpoints, args.s3_endpoint, args.checkpoint_keep)


def cmd_fetch_weights(args) -> None:
    from nadir.config.catalogue import weight_files
    from nadir.train.weights import fetch_weights

    files = weight_files()
    if args.file not in files:
        raise NadirError(f"{args.file!r} is not a weights file of the catalogue; known files: "
                         f"{sorted(files)}")
    source = files[args.file]
    fetch_weights(args.url or source.url, source.sha256, Path(args.out))


def cmd_evaluate(args) -> None:
    from nadir.evaluate.chips import evaluate
    from nadir.train.loop import device_name
    from nadir.train.registry import backend_of_weights

    hp = json.loads(args.hp)
    shards = [Path(p) for p in args.shards]
    predictions = backend_of_weights(Path(args.weights)).predict(
        Path(args.weights), Path(args.coco), shards, hp, threads=args.threads)
    Path(args.predictions).write_text(json.dumps(predictions) + "\n")
    result = evaluate(Path(args.coco), predictions, hp["max_detections"])
    # The device is what the cost table bills GPU-hours by.
    result["device"] = device_name()
    Path(args.metrics).write_text(json.dumps(result, indent=1) + "\n")
    log.info("chip-level metrics: %s", json.dumps(result["metrics"]))


def cmd_evaluate_scenes(args) -> None:
    from nadir.evaluate.scenes import evaluate_scenes

    predictions_path = Path(args.predictions)
    detections, result = evaluate_scenes(
        json.loads(predictions_path.read_text()), predictions_path, Path(args.coco),
        Path(args.scenes), Path(args.annotations), args.nms_iou, args.max_detections,
        args.protocols, Path(args.submission) if args.submission else None)
    Path(args.scene_predictions).write_text(json.dumps(detections) + "\n")
    Path(args.metrics).write_text(json.dumps(result, indent=1) + "\n")
    log.info("scene-level metrics: %s", json.dumps(result["metrics"]))


def cmd_predict(args) -> None:
    from nadir.predict.inference import InferenceSettings, SceneSource, predict_scene
    from nadir.storage.urls import resolve

    outputs = {"geojson": Path(args.geojson), "geopackage": Path(args.geopackage),
               "summary": Path(args.summary), "quicklook": Path(args.quicklook)}
    scene = SceneSource(args.scene_name, resolve(args.source), args.anonymous)
    predict_scene(scene, Path(args.weights), Path(args.run),
                  InferenceSettings.from_config(json.loads(args.settings)), outputs,
                  threads=args.threads, s3_endpoint=args.s3_endpoint,
                  max_raster_values=args.max_raster_values)


def cmd_list_scenes(args) -> None:
    from nadir.predict.inference import list_s3_prefix

    scenes = list_s3_prefix(args.prefix, args.s3_endpoint)
    Path(args.out).write_text(json.dumps({"source": args.prefix, "scenes": [
        {"name": s.name, "location": s.location} for s in scenes]}, indent=1) + "\n")


def cmd_carve_selection(args) -> None:
    from nadir.coco.build import carve_selection

    train = json.loads(Path(args.train).read_text())
    fit, selection = carve_selection(train, args.fraction, args.seed, args.train)
    Path(args.fit).write_text(json.dumps(fit) + "\n")
    Path(args.selection).write_text(json.dumps(selection) + "\n")
    log.info("selection split: %d chips of %d train scenes held out (fraction %s, seed %d); "
             "%d chips left to train on", len(selection["images"]),
             len({im["scene"] for im in selection["images"]}), args.fraction, args.seed,
             len(fit["images"]))


def cmd_summary(args) -> None:
    """Print the leaderboard and the total cost: the last thing a run shows in the terminal."""
    from nadir.report.leaderboard import summary_text

    text = summary_text(Path(args.leaderboard), Path(args.cost))
    Path(args.out).write_text(text)
    print(f"\n== nadir leaderboard ==\n{text}", flush=True)


def cmd_plot_pr(args) -> None:
    from nadir.report.figures import plot_pr_curves

    plot_pr_curves(json.loads(Path(args.metrics).read_text()),
                   json.loads(Path(args.scene_metrics).read_text()), Path(args.out), args.title)


def cmd_plot_detections(args) -> None:
    from nadir.report.figures import plot_detection_grid

    plot_detection_grid(Path(args.coco), json.loads(Path(args.predictions).read_text()),
                        [Path(p) for p in args.shards], Path(args.out), args.title,
                        args.chips, args.min_score)


def cmd_plot_loss(args) -> None:
    from nadir.report.figures import plot_loss_curve

    plot_loss_curve(Path(args.train_log), Path(args.out), args.title)


def cmd_config_reference(args) -> None:
    from nadir.config.reference import render

    print(render(), end="")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nadir", description=__doc__)
    parser.add_argument("--version", action="version", version=__version__)
    sub = parser.add_subparsers(dest="command", required=True)

    def command(name, func, help_text):
        p = sub.add_parser(name, help=help_text)
        p.set_defaults(func=func)
        return p

    p = command("sample", cmd_sample, "generate the embedded sample dataset")
    p.add_argument("--spec", required=True, help="JSON of the dataset's sample settings")
    p.add_argument("--images", nargs="+", required=True, help="SCENE.tif per scene")
    p.add_argument("--labels", nargs="+", required=True, help="SCENE.txt per scene")

    p = command("fetch", cmd_fetch, "fetch a dataset's sources and write its scene manifest")
    p.add_argument("--dataset", required=True)
    p.add_argument("--spec", required=True, help="JSON of the dataset's config")
    p.add_argument("--settings", required=True, help="JSON of the `fetch` config")
    p.add_argument("--files-dir", required=True)
    p.add_argument("--manifest", required=True)

    p = command("index", cmd_index, "build the scene and annotation tables")
    p.add_argument("--format", required=True, choices=["sample", "dota", "xview", "rareplanes"])
    p.add_argument("--scene", nargs=3, action="append", metavar=("SPLIT", "IMAGE", "LABEL"),
                   help="sample: one scene")
    p.add_argument("--manifest", help="fetched formats: the fetch manifest")
    p.add_argument("--files-dir", help="fetched formats: the folder the manifest's paths are in")
    p.add_argument("--spec", help="fetched formats: JSON of the dataset's config")
    for table in ("scenes", "annotations", "categories", "summary"):
        p.add_argument(f"--{table}", required=True, help=f"the {table} file to write")

    p = command("dataset-stats", cmd_dataset_stats, "dataset statistics and their figure")
    p.add_argument("--scenes", required=True)
    p.add_argument("--annotations", required=True)
    p.add_argument("--categories", required=True)
    p.add_argument("--summary", required=True, help="the index's summary.json")
    p.add_argument("--coco-stats", required=True, help="the COCO stage's stats.json")
    p.add_argument("--chips-manifest", required=True, help="the chip manifest (parameters)")
    p.add_argument("--json", required=True)
    p.add_argument("--png", required=True)
    p.add_argument("--html", required=True, help="the summary and warnings for the report")
    p.add_argument("--title", required=True)

    p = command("chip", cmd_chip, "chip scenes into one shard")
    p.add_argument("--params", required=True, help="JSON of the chipping settings")
    p.add_argument("--scenes", required=True)
    p.add_argument("--annotations", required=True)
    p.add_argument("--images", nargs="*", default=[])
    p.add_argument("--tar", required=True)
    p.add_argument("--json", required=True)
    p.add_argument("--threads", type=int, default=1)

    p = command("chip-manifest", cmd_chip_manifest,
                "write the chip manifest from the shard chip lists")
    p.add_argument("--shards", nargs="+", required=True)
    p.add_argument("--out", required=True)

    p = command("coco", cmd_coco, "write COCO JSON per split and dataset statistics")
    p.add_argument("--shards", nargs="+", required=True)
    p.add_argument("--categories", required=True)
    p.add_argument("--train", required=True)
    p.add_argument("--val", required=True)
    p.add_argument("--stats", required=True)

    for name, func in (("train", cmd_train), ("evaluate", cmd_evaluate)):
        p = command(name, func, f"{name} one model on one dataset")
        p.add_argument("--hp", required=True, help="JSON of the settings")
        p.add_argument("--shards", nargs="+", required=True)
        p.add_argument("--threads", type=int, default=1)
    p = sub.choices["train"]
    p.add_argument("--dataset", required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--train", required=True)
    p.add_argument("--manifest", required=True)
    p.add_argument("--weights-out", required=True, help="model.pt to write")
    p.add_argument("--train-log", required=True, help="train_log.json to write")
    p.add_argument("--run", required=True, help="run.json to write")
    p.add_argument("--resolved-config", required=True, help="resolved_config.json to write")
    p.add_argument("--pretrained-weights", help="the weights file `pretrained` asks for")
    p.add_argument("--checkpoints", help="checkpoint location: a directory or s3://BUCKET/PREFIX "
                   "(a subfolder per run fingerprint is made); none: no checkpoints")
    p.add_argument("--checkpoint-every", type=int, default=0, help="iterations between them")
    p.add_argument("--checkpoint-keep", type=int, default=2, help="newest checkpoints kept")
    p.add_argument("--s3-endpoint", help="S3 endpoint URL for s3:// checkpoints (keys come "
                   "from SNAKEMAKE_STORAGE_S3_ACCESS_KEY/_SECRET_KEY)")
    p.add_argument("--world-size", type=int, help="training processes (default: one per GPU)")
    p.add_argument("--selection", help="COCO split scored every `eval_every` iterations")
    p = sub.choices["evaluate"]
    p.add_argument("--weights", required=True)
    p.add_argument("--coco", required=True)
    p.add_argument("--predictions", required=True)
    p.add_argument("--metrics", required=True)

    p = command("fetch-weights", cmd_fetch_weights, "download and verify a weights file")
    p.add_argument("--file", required=True, help="file name from the model catalogue")
    p.add_argument("--url", help="fetch from here instead of the catalogue's URL (a mirror)")
    p.add_argument("--out", required=True)

    p = command("evaluate-scenes", cmd_evaluate_scenes,
                "merge chip predictions into whole val scenes and score them")
    p.add_argument("--predictions", required=True, help="chip predictions (COCO results)")
    p.add_argument("--coco", required=True, help="the val COCO file the predictions refer to")
    p.add_argument("--scenes", required=True, help="the index's scenes.csv")
    p.add_argument("--annotations", required=True, help="the index's annotations.csv")
    p.add_argument("--nms-iou", type=float, required=True)
    p.add_argument("--max-detections", type=int, required=True)
    p.add_argument("--scene-predictions", required=True)
    p.add_argument("--metrics", required=True)
    p.add_argument("--protocols", nargs="+", default=["coco"],
                   choices=PROTOCOLS,
                   help="benchmark protocols to score by (coco is always computed)")
    p.add_argument("--submission", help="zip of the protocols' submission files to write")

    p = command("predict", cmd_predict, "apply a trained run to one scene (GeoJSON, GeoPackage, "
                "summary, quick-look)")
    p.add_argument("--weights", required=True, help="the run's model.pt")
    p.add_argument("--run", required=True, help="the run's run.json (its chipping settings)")
    p.add_argument("--source", required=True, help="the scene: a path, http(s):// or s3:// URL "
                   "(a redacted URL is looked up in NADIR_URLS, see nadir.storage.urls)")
    p.add_argument("--anonymous", action="store_true", help="read s3:// without the S3 keys "
                   "(a bucket the config does not name)")
    p.add_argument("--scene-name", required=True)
    p.add_argument("--settings", required=True, help="JSON of the `inference` settings")
    p.add_argument("--s3-endpoint", help="S3 endpoint URL for s3:// scenes (keys come from "
                   "SNAKEMAKE_STORAGE_S3_ACCESS_KEY/_SECRET_KEY)")
    p.add_argument("--threads", type=int, default=1)
    for output in ("geojson", "geopackage", "summary", "quicklook"):
        p.add_argument(f"--{output}", required=True)

    p = command("list-scenes", cmd_list_scenes, "list the raster objects under an s3:// prefix")
    p.add_argument("--prefix", required=True, help="s3://bucket/prefix/")
    p.add_argument("--s3-endpoint", help="S3 endpoint URL (keys as for predict)")
    p.add_argument("--out", required=True)

    p = command("carve-selection", cmd_carve_selection,
                "hold train scenes out as the selection split (seeded, by scene)")
    p.add_argument("--train", required=True)
    p.add_argument("--fraction", type=float, required=True)
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--fit", required=True, help="the train split without the selection scenes")
    p.add_argument("--selection", required=True)

    p = command("summary", cmd_summary, "print the leaderboard and total cost")
    p.add_argument("--leaderboard", required=True, help="the Markdown leaderboard")
    p.add_argument("--cost", required=True, help="the cost CSV")
    p.add_argument("--out", required=True)

    p = command("plot-pr", cmd_plot_pr, "plot a run's precision-recall curves per class")
    p.add_argument("--metrics", required=True)
    p.add_argument("--scene-metrics", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--title", required=True)

    p = command("plot-detections", cmd_plot_detections,
                "draw ground truth and predictions on sample val chips")
    p.add_argument("--coco", required=True)
    p.add_argument("--predictions", required=True)
    p.add_argument("--shards", nargs="+", required=True)
    p.add_argument("--chips", type=int, required=True, help="how many chips to draw")
    p.add_argument("--min-score", type=float, required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--title", required=True)

    p = command("plot-loss", cmd_plot_loss, "plot a run's loss and learning-rate curves")
    p.add_argument("--train-log", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--title", required=True)
    command("config-reference", cmd_config_reference,
            "print config/README.md, generated from the config schema")
    for name in ("fetch", "index", "chip", "predict"):  # the commands that open rasters
        sub.choices[name].add_argument(
            "--max-raster-values", type=int,
            help="largest declared raster size, width x height x bands (config key "
                 "rasters.max_values; default: the schema's)")
    return parser


def _run(command: str, func: Callable[[], object]) -> int:
    """Run one stage with its progress logged to stderr; a NadirError (bad input or config)
    ends it with its message and exit status 1 instead of a traceback."""
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        func()
    except NadirError as exc:
        log.error("%s", exc)
        print(f"nadir {command}: error: {exc}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    # Idle OpenMP threads sleep instead of spinning (libgomp's default), unless the user says
    # otherwise. On cores that other work shares (a busy machine, a pod under a CPU limit),
    # spinning made a 2-thread CPU training step 14 times slower (bench/omp_wait.py). OpenMP
    # reads it when torch is first imported, which no stage does before this line.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    args = build_parser().parse_args(argv)
    return _run(args.command, lambda: args.func(args))


def run_rule_script(snakemake, func: Callable[[], object]) -> None:
    """Run a rule's `script:` (workflow/scripts/) as `nadir <command> ... 2> {log}` runs a
    shell rule: everything written to stderr (logging, warnings, tracebacks, C libraries) goes
    to the rule's log, copied onto stdout in pods (nadir.core.log_tee), and a NadirError fails the
    job with its message. `snakemake` is the object Snakemake gives the script."""
    sys.stderr.flush()
    log_fd = os.open(snakemake.log[0], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(log_fd, sys.stderr.fileno())
    os.close(log_fd)
    tee_stderr_if_asked()
    status = _run(snakemake.rule, func)
    if status:
        sys.exit(status)

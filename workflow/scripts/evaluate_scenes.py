"""Rule evaluate_scenes: chip detections merged into whole val scenes, scored by COCO's metrics
and the dataset's benchmark protocols."""

from nadir.core.jobs import run_job
from nadir.evaluate import evaluate_scene_files

inp, out, settings = snakemake.input, snakemake.output, snakemake.params.settings
run_job(snakemake, lambda: evaluate_scene_files(
    inp.predictions, inp.val, inp.scenes, inp.annotations, nms_iou=settings["scene_nms_iou"],
    max_detections=settings["scene_max_detections"], protocols=settings["protocols"],
    scene_predictions=out.predictions, metrics=out.metrics, submission=out.submission))

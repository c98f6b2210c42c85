# Inference: apply trained runs (`inference.runs`) to new scenes (`inference.scenes`), one job per
# (run, scene), so adding a scene adds only its jobs. Scene lists come from the config (paths,
# URLs, s3:// objects, STAC files parsed here) or, for s3:// prefixes, from a listing job's file:
# storage is never listed while the DAG is built.

from nadir.inference import (
    SceneSource,
    buckets_named,
    check_scene_names,
    direct_scenes,
    is_listing,
    source_id,
)
from nadir.names import NAME

INFERENCE = config["inference"]
INFERENCE_SETTING_KEYS = [
    "window",
    "overlap",
    "bands",
    "score_threshold",
    "max_detections",
    "nms_iou",
    "batch_size",
    "quicklook_size",
]
INFERENCE_RUNS = INFERENCE["runs"]
for _run in INFERENCE_RUNS:
    _dataset, _model = _run.split("/")
    if (_dataset, _model) not in RUN_TABLE:
        raise WorkflowError(
            f"config key inference.runs: {_run!r} is not a run of this config "
            f"(runs: {sorted(f'{d}/{name}' for d, name in RUN_TABLE)})"
        )
_SCENE_SOURCES = [s if isinstance(s, str) else s["source"] for s in INFERENCE["scenes"]]
# s3:// prefixes by the id their listing file is named by.
INFERENCE_PREFIXES = {
    source_id(s): s for s in _SCENE_SOURCES if is_listing(s) and s.startswith("s3://")
}
try:
    # STAC hrefs to buckets the config does not name are read without the user's keys.
    INFERENCE_DIRECT = direct_scenes(
        INFERENCE["scenes"], INFERENCE["stac_assets"], buckets_named(config)
    )
    check_scene_names(INFERENCE_DIRECT)
except NadirError as error:
    raise WorkflowError(f"config key inference.scenes: {error}") from None
publish(scene.location for scene in INFERENCE_DIRECT)  # STAC hrefs may be pre-signed URLs


def listed_scenes(source):
    """The scenes a listing job found under one s3:// prefix (brought from storage when only
    the storage has the listing)."""
    path = checkpoints.list_scenes.get(source=source).output.listing
    if not os.path.exists(path) and path.is_storage:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        path.storage_object.retrieve_object()
    listing = json.loads(Path(path).read_text())
    return [SceneSource(s["name"], s["location"]) for s in listing["scenes"]]


def inference_scenes():
    """Every scene to process by name, in config order."""
    scenes = list(INFERENCE_DIRECT)
    for source in INFERENCE_PREFIXES:
        scenes += listed_scenes(source)
    try:
        check_scene_names(scenes)
    except NadirError as error:
        raise WorkflowError(f"config key inference.scenes: {error}") from None
    return {scene.name: scene for scene in scenes}


INFERENCE_FILES = ["detections.geojson", "detections.gpkg", "summary.json", "quicklook.png"]


def predict_targets(wildcards):
    """Every output of every (run, scene) job."""
    if not INFERENCE_RUNS:
        return []
    return [
        f"results/inference/{run}/{scene}/{file}"
        for run in INFERENCE_RUNS
        for scene in inference_scenes()
        for file in INFERENCE_FILES
    ]


def scene_access(wildcards):
    """The predict job's S3 options: the storage's endpoint, and --anonymous for a scene whose
    bucket the config does not name (from a STAC catalogue)."""
    anonymous = inference_scenes()[wildcards.scene].anonymous
    return _s3_endpoint_argument() + (["--anonymous"] if anonymous else [])


def scene_input(wildcards):
    """A local scene file is an input (a change reruns its jobs); remote scenes are read where
    they are, so they are no input Snakemake would download."""
    scene = inference_scenes()[wildcards.scene]
    return [local(scene.location)] if scene.scheme == "file" else []


checkpoint list_scenes:
    output:
        listing="results/inference/sources/{source}.json",
    params:
        prefix=lambda w: INFERENCE_PREFIXES[w.source],
        s3=_s3_endpoint_argument(),
    log:
        "logs/inference/list_scenes-{source}.log",
    message:
        "Listing the scenes under {params.prefix}"
    shell:
        "{NADIR:q} list-scenes --prefix {params.prefix:q} {params.s3:q} "
        "--out {output.listing:q} 2> {log:q}"


rule predict_scene:
    input:
        weights="results/{dataset}/models/{model}/model.pt",
        run="results/{dataset}/models/{model}/run.json",
        scene=scene_input,
    output:
        geojson="results/inference/{dataset}/{model}/{scene}/detections.geojson",
        geopackage="results/inference/{dataset}/{model}/{scene}/detections.gpkg",
        summary="results/inference/{dataset}/{model}/{scene}/summary.json",
        quicklook="results/inference/{dataset}/{model}/{scene}/quicklook.png",
    wildcard_constraints:
        scene=NAME.pattern,
    params:
        source=lambda w: redact(inference_scenes()[w.scene].location),
        settings=as_json({k: INFERENCE[k] for k in INFERENCE_SETTING_KEYS}),
        s3=scene_access,
    threads: 4  # capped at --cores on a laptop; profiles set their own
    log:
        "logs/inference/{dataset}/{model}/{scene}.log",
    benchmark:
        "results/benchmarks/inference/{dataset}/{model}/{scene}.tsv"
    message:
        "Detecting objects in scene {wildcards.scene} with {wildcards.model} "
        "(trained on {wildcards.dataset})"
    shell:
        "{NADIR:q} predict --weights {input.weights:q} --run {input.run:q} "
        "--source {params.source:q} --scene-name {wildcards.scene:q} "
        "--settings {params.settings:q} {params.s3:q} --threads {threads:q} "
        "--geojson {output.geojson:q} --geopackage {output.geopackage:q} "
        "--summary {output.summary:q} --quicklook {output.quicklook:q} {RASTER_LIMIT:q} "
        "2> {log:q}"


rule predict:
    input:
        predict_targets,
    message:
        "Inference finished: results/inference/"

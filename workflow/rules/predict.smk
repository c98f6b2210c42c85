# Inference: apply trained runs (`inference.runs`) to new scenes (`inference.scenes`), one job per
# (run, scene), so adding a scene adds only its jobs. Scene lists come from the config (paths,
# URLs, s3:// objects, STAC files parsed here) or, for s3:// prefixes, from a listing job's file:
# storage is never listed while the DAG is built.

from nadir.core.names import NAME
from nadir.predict import (
    SceneSource,
    buckets_named,
    check_scene_names,
    direct_scenes,
    is_listing,
    source_id,
)

INFERENCE = config["inference"]
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


def scene_input(wildcards):
    """A local scene file is an input (a change reruns its jobs); remote scenes are read where
    they are, so they are no input Snakemake would download. A scene among a dataset's fetched
    files (`raw/<dataset>/files/...`, e.g. a val scene) waits for that dataset's fetch."""
    scene = inference_scenes()[wildcards.scene]
    if scene.scheme != "file":
        return []
    for dataset in DATASETS:
        if Path(scene.location).is_relative_to(f"raw/{dataset}/files"):
            fetch_manifest_path(dataset)  # until the fetch checkpoint has run: not yet
    return [local(scene.location)]


checkpoint list_scenes:
    output:
        listing="results/inference/sources/{source}.json",
    params:
        prefix=lambda w: INFERENCE_PREFIXES[w.source],
    log:
        "logs/inference/list_scenes-{source}.log",
    message:
        "Listing the scenes under {params.prefix}"
    script:
        "../scripts/list_scenes.py"


# One scene through one run in two jobs: predict_scene runs the model over the scene's windows
# (a GPU job in the profiles) and keeps their detections and the quick-look's picture;
# predict_outputs merges them into the scene and writes its files on a CPU. The merge's IoU
# reruns only predict_outputs.
rule predict_scene:
    input:
        weights="results/{dataset}/models/{model}/model.pt",
        scene=scene_input,
    output:
        windows="results/inference/{dataset}/{model}/{scene}/windows.json",
        overview="results/inference/{dataset}/{model}/{scene}/overview.png",
    wildcard_constraints:
        scene=NAME.pattern,
    params:
        source=lambda w: redact(inference_scenes()[w.scene].location),
        # A scene whose bucket the config does not name (from a STAC catalogue) is read
        # without the user's keys.
        anonymous=lambda w: inference_scenes()[w.scene].anonymous,
        settings=job_settings("predict_scene", "inference", "evaluation"),
    threads: 4  # capped at --cores on a laptop; profiles set their own
    resources:
        # the scene is read in place (GDAL range reads), never staged; the window detections
        # and a quick-look picture of at most inference.quicklook_size px
        disk_mb=disk_mb(writes=0.0, writes_mb=1000),
    log:
        "logs/inference/{dataset}/{model}/{scene}.log",
    benchmark:
        "results/benchmarks/inference/{dataset}/{model}/{scene}.tsv"
    message:
        "Detecting objects in scene {wildcards.scene} with {wildcards.model} "
        "(trained on {wildcards.dataset})"
    script:
        "../scripts/predict_scene.py"


rule predict_outputs:
    input:
        windows="results/inference/{dataset}/{model}/{scene}/windows.json",
        overview="results/inference/{dataset}/{model}/{scene}/overview.png",
        run="results/{dataset}/models/{model}/run.json",
    output:
        geojson="results/inference/{dataset}/{model}/{scene}/detections.geojson",
        geopackage="results/inference/{dataset}/{model}/{scene}/detections.gpkg",
        summary="results/inference/{dataset}/{model}/{scene}/summary.json",
        quicklook="results/inference/{dataset}/{model}/{scene}/quicklook.png",
    wildcard_constraints:
        scene=NAME.pattern,
    params:
        settings=job_settings("predict_outputs", "evaluation")["evaluation"],
    log:
        "logs/inference/{dataset}/{model}/{scene}-outputs.log",
    benchmark:
        "results/benchmarks/inference/{dataset}/{model}/{scene}-outputs.tsv"
    message:
        "Merging {wildcards.model}'s detections in scene {wildcards.scene} and writing its "
        "files"
    script:
        "../scripts/predict_outputs.py"


rule predict:
    input:
        predict_targets,
    message:
        "Inference finished: results/inference/"

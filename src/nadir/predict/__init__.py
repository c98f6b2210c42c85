"""The predict stage: a trained run applied to new scenes, detections on a map.

A scene is a path, an http(s) URL or an s3:// object, or comes from a STAC item collection or an
s3:// prefix. It is never copied: GDAL reads the windows it needs (`/vsicurl/` and `/vsis3/`
range requests for remote files), with chipping's own reader, so memory is bounded by a window
(tiled files) or a ring of rows (striped files) whatever the scene's size, and windows that are
mostly nodata are skipped as at training time. Each window gets the band selection and the
radiometric stretch the run's chips got (recorded in its model.pt), then batches go through the
model while the next batch is read. Window detections are shifted into the scene and merged with
scene evaluation's own functions (clip to the scene, class-wise NMS), so a val scene gives
exactly the detections scene-level evaluation scores. The model step (`detect`: the predict_scene
job, on a GPU) and the merge and files (`write_outputs`: the predict_outputs job, on a CPU) are
two jobs; `predict_scene` does both in one process.

Per scene and run: a GeoJSON in EPSG:4326, a GeoPackage in the scene's CRS (each feature with
class, score, model and the run's digest), a summary with per-class counts, and a quick-look PNG
drawn from the windows as they pass (nothing is read twice for it: the model step keeps the
picture, the output step draws the detections on it). A scene without a CRS gets
pixel coordinates (y down) in both files, and a warning.
"""

from nadir.predict.detect import InferenceSettings
from nadir.predict.scene import detect, predict_scene, write_outputs
from nadir.predict.sources import (
    SceneSource,
    buckets_named,
    check_scene_names,
    direct_scenes,
    is_listing,
    list_scenes,
    source_id,
)

__all__ = ["InferenceSettings", "SceneSource", "buckets_named", "check_scene_names", "detect",
           "direct_scenes", "is_listing", "list_scenes", "predict_scene", "source_id",
           "write_outputs"]

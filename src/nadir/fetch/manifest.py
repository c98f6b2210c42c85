"""The scene manifest (`raw/<dataset>/manifest.json`): what the fetch job found, read back by
the index job and by the workflow, which plans the chip jobs from it."""

from __future__ import annotations

import json
from pathlib import Path

from nadir.core.errors import InputError
from nadir.core.names import check_name, check_relative_path


def write_scene_manifest(manifest: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(manifest, indent=1) + "\n")


def read_scene_manifest(path: Path) -> dict:
    """A scene manifest read back (from storage another job or person may have written): every
    scene name and every path in it must follow the name rule (`nadir.core.names`), since they
    become the chip and index jobs' inputs and command arguments."""
    try:
        manifest = json.loads(Path(path).read_text())
        scenes = manifest["scenes"]
        for scene in scenes:
            check_name(scene["scene"], path, "scene name")
            check_relative_path(scene["image"], path, f"image of scene {scene['scene']!r}")
            if scene.get("label") is not None:
                check_relative_path(scene["label"], path, f"label of scene {scene['scene']!r}")
            for sidecar in scene.get("sidecars", []):
                check_relative_path(sidecar, path, f"sidecar of scene {scene['scene']!r}")
        for key in ("label_files", "labels_without_image"):
            for relative in manifest.get(key, []):
                check_relative_path(relative, path, f"file in {key}")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InputError(path, f"not a readable scene manifest ({exc!r}); rerun the fetch "
                               "job") from None
    return manifest

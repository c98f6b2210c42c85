"""One training run from start to finish, as the train rule asks for it.

Verify the pretrained weights, digest the inputs, open the checkpoint store under the run's
fingerprint, train with the model's backend, write resolved_config.json and run.json, and remove
the checkpoints once the weights are safely written. `nadir train` is a thin shell over `run`.
"""

from __future__ import annotations

import json
import logging

from nadir.config.catalogue import entry, weight_source
from nadir.core.errors import NadirError
from nadir.train.backend import TrainJob
from nadir.train.checkpoints import open_store
from nadir.train.provenance import fingerprint, input_digests
from nadir.train.registry import get_backend
from nadir.train.weights import verify_recorded

log = logging.getLogger(__name__)


def run(job: TrainJob, checkpoint_root: str | None = None, s3_endpoint: str | None = None,
        checkpoint_keep: int = 2) -> dict:
    """Train `job` and write its records; returns the run record (run.json).

    `checkpoint_root` is a directory or s3://BUCKET/PREFIX; the run's checkpoints go to a
    subfolder named by its fingerprint (None: no checkpoints).
    """
    source = weight_source(job.model, job.hp["pretrained"])
    if source is not None and job.weights_file is None:
        raise NadirError(f"{job.model} with pretrained: {job.hp['pretrained']} needs its "
                         f"weights file ({source.file_name}); the fetch_weights rule provides it")
    # The file as fetched: its digest recorded at download, and the catalogue's where published.
    weights_sha256 = verify_recorded(job.weights_file, source.sha256) if source else None
    job.input_digests = input_digests(job, weights_sha256)
    if checkpoint_root:
        job.checkpoints = open_store(f"{checkpoint_root.rstrip('/')}/{fingerprint(job)}",
                                     s3_endpoint, checkpoint_keep)
    backend_name = entry(job.model).backend
    backend = get_backend(backend_name)
    resolved = backend.resolved_config(job)
    result = backend.train(job)
    resolved["training"] = result
    job.outputs.resolved_config.write_text(json.dumps(resolved, indent=1) + "\n")
    record = {
        "dataset": job.dataset, "model": job.model, "backend": backend_name,
        "hyperparameters": job.hp, "training": result, "inputs": job.input_digests,
        # Band selection, stretch and windows of the chips it learnt from: what inference
        # must reproduce on new scenes.
        "chipping": json.loads(job.manifest.read_text()).get("params"),
        "code": resolved["code"], "versions": resolved["versions"],
    }
    job.outputs.run.write_text(json.dumps(record, indent=1) + "\n")
    if job.checkpoints is not None:
        job.checkpoints.clear()  # the run is complete: its weights are in the outputs
        log.info("removed the run's checkpoints from %s", job.checkpoints.describe())
    return record

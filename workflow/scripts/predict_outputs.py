"""Rule predict_outputs: a scene's window detections merged, written as GeoJSON, GeoPackage,
summary and quick-look (on a CPU)."""

from nadir.core.jobs import run_job
from nadir.predict import write_outputs

inp, out = snakemake.input, snakemake.output
run_job(snakemake, lambda: write_outputs(
    inp.windows, inp.overview, inp.run, snakemake.params.settings["scene_nms_iou"],
    outputs={"geojson": out.geojson, "geopackage": out.geopackage, "summary": out.summary,
             "quicklook": out.quicklook}))

"""Leaderboard and cost table from hand-built runs and Snakemake benchmark files."""

from __future__ import annotations

import csv
import json

import pytest

from nadir.core.errors import InputError, NadirError
from nadir.core.named_inputs import input_name, run_owner
from nadir.report import write_summary
from nadir.report.costs import (
    JobCost,
    cost_inputs,
    cost_of_files,
    cost_table,
    read_benchmark,
    recorded_gpus,
)
from nadir.report.leaderboard import (
    COMPARISON_KIND,
    RUN_FILE_KINDS,
    RunResult,
    leaderboard_of_files,
    leaderboard_rows,
    write_leaderboard,
)

HEADER = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"


def benchmark(tmp_path, name: str, seconds: float, rss="812.5", cpu="1700.25") -> str:
    """A benchmark file as Snakemake 9 writes it (NA where it took no sample)."""
    path = tmp_path / name
    path.write_text(HEADER + f"{seconds}\t0:30:00\t{rss}\t900.1\t700.0\t710.0\t1.2\t3.4\t"
                    f"95.0\t{cpu}\n")
    return str(path)


def test_benchmark_record_and_gpu_hours(tmp_path):
    job = read_benchmark(benchmark(tmp_path, "t.tsv", 1800), "train", gpus=1)
    assert (job.wall_seconds, job.cpu_seconds, job.peak_memory_mb) == (1800, 1700.25, 812.5)
    assert job.gpu_hours == 0.5


def test_gpus_come_from_the_device_the_job_recorded():
    assert recorded_gpus({"training": {"device": "cuda:0"}}, "run.json") == 1
    # DDP runs one process per GPU; a CPU run with several processes uses no GPU.
    assert recorded_gpus({"training": {"device": "cuda", "processes": 4}}, "run.json") == 4
    assert recorded_gpus({"training": {"device": "cpu", "processes": 2}}, "run.json") == 0
    assert recorded_gpus({"device": "cpu"}, "metrics.json") == 0
    with pytest.raises(InputError, match=r"metrics\.json: no 'device'"):
        recorded_gpus({"metrics": {}}, "metrics.json")


def test_a_job_faster_than_the_first_sample_is_not_measured_rather_than_zero(tmp_path):
    job = read_benchmark(benchmark(tmp_path, "q.tsv", 0.4, rss="NA", cpu="NA"), "coco")
    assert (job.wall_seconds, job.cpu_seconds, job.peak_memory_mb) == (0.4, None, None)


def test_a_file_that_is_not_a_benchmark_is_an_input_error(tmp_path):
    path = tmp_path / "bad.tsv"
    path.write_text("hello\tworld\n1\t2\n")
    with pytest.raises(InputError, match=r"bad\.tsv: expected a Snakemake benchmark file"):
        read_benchmark(path, "coco")
    path.write_text(HEADER + "12\t0:00:12\tlots\t1\t1\t1\t1\t1\t1\t1\n")
    with pytest.raises(InputError, match=r"bad\.tsv, line 2: column 'max_rss'"):
        read_benchmark(path, "coco")


def test_cost_table_sums_per_rule_and_in_total():
    jobs = [JobCost("chip", 10, 18, 300), JobCost("chip", 20, 36, 500),
            JobCost("coco", 0.3, None, None), JobCost("train", 7200, 3600, 4000, gpus=1)]
    rows = {r["rule"]: r for r in cost_table(jobs)}
    assert rows["chip"] == {"rule": "chip", "jobs": 2, "wall_seconds": 30, "cpu_hours": 0.015,
                            "gpu_hours": 0.0, "peak_memory_mb": 500, "unmeasured_jobs": 0}
    assert rows["coco"]["cpu_hours"] is None and rows["coco"]["unmeasured_jobs"] == 1
    assert rows["train"]["gpu_hours"] == 2.0
    assert rows["total"] == {"rule": "total", "jobs": 4, "wall_seconds": 7230.3,
                             "cpu_hours": 1.015, "gpu_hours": 2.0, "peak_memory_mb": 4000,
                             "unmeasured_jobs": 1}


def scores(ap: float) -> dict:
    metrics = {m: ap for m in ("AP", "AP50", "AP75", "AP_small", "AP_medium", "ARmax")}
    return {"metrics": {**metrics, "AP_large": -1.0}, "images": 18}


def result(dataset: str, model: str, chip_ap: float, scene_ap: float, device="cuda") -> RunResult:
    run = {"dataset": dataset, "model": model,
           "training": {"iterations": 1500, "seconds": 3000.0, "device": device, "chips": 400}}
    jobs = [JobCost("train", 3600, 3000, 2048, gpus=1 if device == "cuda" else 0),
            JobCost("evaluate", 360, 300, 1024, gpus=1 if device == "cuda" else 0),
            JobCost("evaluate_scenes", 36, 30, None)]
    return RunResult(run, scores(chip_ap), {**scores(scene_ap), "images": 3}, jobs)


def test_ranks_per_dataset_by_scene_ap_with_the_chip_rank_beside_it():
    rows = leaderboard_rows([
        result("dota", "fcos", chip_ap=0.6, scene_ap=0.40),
        result("dota", "ssdlite", chip_ap=0.5, scene_ap=0.45),
        result("xview", "fcos", chip_ap=0.2, scene_ap=0.1, device="cpu"),
    ])
    assert [(r["dataset"], r["model"], r["rank"], r["chip_rank"]) for r in rows] == [
        ("dota", "ssdlite", 1, 2), ("dota", "fcos", 2, 1), ("xview", "fcos", 1, 1)]
    dota = rows[0]
    assert (dota["wall_seconds"], dota["gpu_hours"], dota["peak_memory_mb"]) == (3996, 1.1, 2048)
    assert (dota["iterations"], dota["val_chips"], dota["val_scenes"]) == (1500, 18, 3)
    assert rows[2]["gpu_hours"] == 0.0


def test_leaderboard_files(tmp_path):
    results = [result("dota", "fcos", 0.6, 0.4), result("dota", "ssdlite", 0.5, 0.45)]
    write_leaderboard(results, tmp_path / "l.csv", tmp_path / "l.md", tmp_path / "l.html")
    with open(tmp_path / "l.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [(r["model"], r["rank"], r["scene_AP"], r["AP"]) for r in rows] == [
        ("ssdlite", "1", "0.45", "0.5"), ("fcos", "2", "0.4", "0.6")]
    markdown = (tmp_path / "l.md").read_text().splitlines()
    assert markdown[0] == "### dota"
    assert markdown[2].startswith("| rank | model | scene AP | scene AP50 | chip AP |")
    assert markdown[4] == ("| 1 | ssdlite | 0.45 | 0.45 | 0.5 | 0.5 | common | n/a | 1500 | 3996 "
                           "| 1.1 | 2048 |")
    page = (tmp_path / "l.html").read_text()
    assert "<h2>dota</h2>" in page and "http" not in page  # self-contained


def test_protocol_columns_hold_each_benchmark_map_and_stay_empty_where_not_computed(tmp_path):
    dota, xview = result("dota", "fcos", 0.6, 0.4), result("xview", "fcos", 0.2, 0.1)
    dota.scene["protocols"] = {
        "dota_task2": {"status": "ok", "map": 0.71, "per_class": [
            {"name": "plane", "AP": 0.9}, {"name": "ship", "AP": 0.52}]},
        "dota_task1": {"status": "not computed", "reason": "no detection carries a polygon"}}
    xview.scene["protocols"] = {"xview": {
        "status": "ok", "map": 0.12, "map_small": None, "map_rare": 0.12, "precision": 0.3,
        "recall": 0.4, "f1": 0.34, "per_class": [{"name": "Small Car", "AP": 0.12}]}}
    write_leaderboard([dota, xview], tmp_path / "l.csv", tmp_path / "l.md", tmp_path / "l.html")
    with open(tmp_path / "l.csv", newline="") as fh:
        rows = {r["dataset"]: r for r in csv.DictReader(fh)}
    assert [rows["dota"][c] for c in ("dota_task2_map", "dota_task1_map", "xview_map")] == [
        "0.71", "", ""]
    assert rows["xview"]["xview_map"] == "0.12" and rows["xview"]["dota_task2_map"] == ""
    tables = (tmp_path / "l.md").read_text().split("### ")
    # Each dataset's Markdown table shows only the protocols it was scored by.
    assert "| DOTA task 2 mAP |" in tables[1] and "DOTA task 1" not in tables[1]
    assert "| 0.71 |" in tables[1] and "xView mAP" not in tables[1]
    assert "| xView mAP |" in tables[2] and "| 0.12 |" in tables[2]
    # The report's page holds each protocol's numbers per class.
    page = (tmp_path / "l.html").read_text()
    assert ("<h3>dota_task2</h3><table><tr><th>model</th><th>map</th><th>plane</th>"
            "<th>ship</th></tr><tr><td>fcos</td><td>0.71</td><td>0.9</td><td>0.52</td>"
            "</tr></table>") in page
    assert "<h3>dota_task1</h3>" not in page  # computed for no model
    assert ("<th>map_small</th><th>map_rare</th><th>precision</th><th>recall</th><th>f1</th>"
            "<th>Small Car</th></tr><tr><td>fcos</td><td>0.12</td><td>n/a</td>") in page


def test_summary_prints_the_leaderboard_and_total_cost(tmp_path, capsys):
    (tmp_path / "l.md").write_text("### dota\n\n| rank | model |\n")
    (tmp_path / "cost.csv").write_text(
        "rule,jobs,wall_seconds,cpu_hours,gpu_hours,peak_memory_mb,unmeasured_jobs\n"
        "train,1,3600,1.0,1.0,2048,0\ntotal,1,3600,1.0,1.0,2048,0\n")
    write_summary(tmp_path / "l.md", tmp_path / "cost.csv", tmp_path / "summary.txt")
    printed = capsys.readouterr().out
    assert "| rank | model |" in printed
    assert "1 jobs, 3600 s wall-clock, 1.0 CPU-hours, 1.0 GPU-hours" in printed
    assert (tmp_path / "summary.txt").read_text() in printed


def repeat(model: str, name: str, seed: int, scene_ap: float, lr: float = 0.001) -> RunResult:
    """One repeat of a setting: same model and settings but the seed, own scene AP."""
    base = result("dota", model, chip_ap=scene_ap + 0.1, scene_ap=scene_ap)
    base.run["hyperparameters"] = {"lr": lr, "seed": seed, "iterations": 1500}
    base.name = name
    return base


def test_repeats_are_one_row_with_mean_sd_and_t_interval():
    rows = leaderboard_rows([
        repeat("ssdlite", "ssdlite", 0, 0.5), repeat("ssdlite", "ssdlite--repeat-2", 1, 0.6),
        repeat("ssdlite", "ssdlite--repeat-3", 2, 0.7),
        repeat("ssdlite", "ssdlite--lr-0.0005", 0, 0.4, lr=0.0005),
    ])
    assert [(r["run"], r["repeats"], r["seeds"], r["rank"]) for r in rows] == [
        ("ssdlite", 3, "0 1 2", 1), ("ssdlite--lr-0.0005", 1, "0", 2)]
    top = rows[0]
    half = 4.302652729911275 * 0.1 / 3 ** 0.5  # t(0.975, 2) * sd / sqrt(n)
    assert top["scene_AP"] == pytest.approx(0.6)
    assert top["scene_AP_sd"] == pytest.approx(0.1)
    assert (top["scene_AP_ci_low"], top["scene_AP_ci_high"]) == (
        pytest.approx(0.6 - half, abs=1e-6), pytest.approx(0.6 + half, abs=1e-6))
    assert top["AP"] == pytest.approx(0.7)  # the chip metrics are aggregated the same way
    assert top["wall_seconds"] == 3 * 3996  # costs add up over the repeats
    single = rows[1]
    assert single["scene_AP"] == 0.4 and single["scene_AP_sd"] is None
    assert top["weights"] == "last"


def test_the_weights_column_says_which_split_selected():
    runs = [repeat("ssdlite", "ssdlite", 0, 0.5), repeat("ssdlite", "ssdlite--repeat-2", 1, 0.6)]
    for run, iteration in zip(runs, (300, 500), strict=True):
        run.run["training"]["selection"] = {"weights": "best", "best": {"iteration": iteration}}
    (row,) = leaderboard_rows(runs)
    assert row["weights"] == "best on the selection split (iteration 300, 500)"


def test_comparison_marks_settings_against_the_best(tmp_path):
    results = [repeat("fcos", "fcos", 0, 0.52), repeat("ssdlite", "ssdlite", 0, 0.5),
               repeat("ssd300", "ssd300", 0, 0.2)]
    comparison = {"dataset": "dota", "best": "fcos", "verdicts": {
        "fcos": "best", "ssdlite": "not distinguishable from the best",
        "ssd300": "worse than the best"}, "pairs": [
        {"first": "fcos", "second": "ssd300", "difference": 0.32, "ci_low": 0.2,
         "ci_high": 0.4},
        {"first": "fcos", "second": "ssdlite", "difference": 0.02, "ci_low": -0.01,
         "ci_high": 0.05},
        {"first": "ssd300", "second": "ssdlite", "difference": -0.3, "ci_low": -0.4,
         "ci_high": -0.2}]}
    rows = write_leaderboard(results, tmp_path / "l.csv", tmp_path / "l.md",
                             tmp_path / "l.html", {"dota": comparison})
    marks = {r["run"]: (r["vs_best"], r["vs_best_difference"], r["vs_best_ci_low"],
                        r["vs_best_ci_high"]) for r in rows}
    assert marks == {"fcos": ("best", None, None, None),
                     "ssdlite": ("not distinguishable from the best", 0.02, -0.01, 0.05),
                     "ssd300": ("worse than the best", 0.32, 0.2, 0.4)}
    markdown = (tmp_path / "l.md").read_text()
    assert "| vs best |" in markdown.splitlines()[2]
    assert "| not distinguishable from the best |" in markdown
    with open(tmp_path / "l.csv", newline="") as fh:
        csv_rows = {r["run"]: r for r in csv.DictReader(fh)}
    assert csv_rows["ssd300"]["vs_best"] == "worse than the best"


def test_markdown_shows_mean_and_sd_for_repeats(tmp_path):
    results = [repeat("ssdlite", "ssdlite", 0, 0.5), repeat("ssdlite", "ssdlite--repeat-2", 1,
                                                            0.6)]
    write_leaderboard(results, tmp_path / "l.csv", tmp_path / "l.md", tmp_path / "l.html")
    row = (tmp_path / "l.md").read_text().splitlines()[4]
    assert row.startswith("| 1 | ssdlite | 0.5500 ± 0.0707 | 0.5500 ± 0.0707 | 0.6500 ± 0.0707 |")
    page = (tmp_path / "l.html").read_text()
    assert "0.5500 ± 0.0707 [-0.0853, 1.1853]" in page  # t(0.975, 1) = 12.706


def write_run_files(folder, dataset: str, model: str, scene_ap: float, device: str) -> dict:
    """The files the leaderboard reads for one run, by kind (nadir.report.leaderboard.RunFiles)."""
    folder.mkdir(parents=True)
    result_ = result(dataset, model, chip_ap=scene_ap + 0.1, scene_ap=scene_ap, device=device)
    files = {"run": folder / "run.json", "metrics": folder / "metrics.json",
             "scene_metrics": folder / "scene_metrics.json"}
    files["run"].write_text(json.dumps(result_.run))
    files["metrics"].write_text(json.dumps({**result_.chip, "device": device}))
    files["scene_metrics"].write_text(json.dumps(result_.scene))
    for kind, seconds in (("train_benchmark", 3600), ("evaluate_benchmark", 360),
                          ("scene_benchmark", 36)):
        files[kind] = benchmark(folder, f"{kind}.tsv", seconds)
    return files


def test_the_leaderboard_pairs_each_file_with_its_run_by_name(tmp_path):
    """Files listed kind by kind, the runs in another order each time, and run folders whose
    names say nothing: every row still gets its own run's files."""
    fcos = write_run_files(tmp_path / "a", "dota", "fcos", 0.40, "cuda")
    ssdlite = write_run_files(tmp_path / "b", "dota", "ssdlite", 0.45, "cpu")
    named = {}
    for kind in RUN_FILE_KINDS:
        for run, files in ([("ssdlite", ssdlite), ("fcos", fcos)] if kind == "metrics"
                           else [("fcos", fcos), ("ssdlite", ssdlite)]):
            named[input_name(kind, run_owner("dota", run))] = str(files[kind])
    comparison = {"dataset": "dota", "best": "ssdlite", "pairs": [],
                  "verdicts": {"ssdlite": "best", "fcos": "worse than the best"}}
    (tmp_path / "comparison.json").write_text(json.dumps(comparison))
    named[input_name(COMPARISON_KIND, "dota")] = str(tmp_path / "comparison.json")
    rows = leaderboard_of_files(named, tmp_path / "l.csv", tmp_path / "l.md", tmp_path / "l.html")
    assert [(r["run"], r["rank"], r["scene_AP"], r["AP"], r["gpu_hours"], r["vs_best"])
            for r in rows] == [("ssdlite", 1, 0.45, 0.55, 0.0, "best"),
                               ("fcos", 2, 0.4, 0.5, 1.1, "worse than the best")]
    del named[input_name("scene_benchmark", "dota/fcos")]
    with pytest.raises(NadirError, match="inputs of 'dota/fcos': no scene_benchmark file"):
        leaderboard_of_files(named, tmp_path / "l.csv", tmp_path / "l.md", tmp_path / "l.html")


def test_the_cost_table_reads_each_jobs_benchmark_and_device_record_by_name(tmp_path):
    (tmp_path / "run.json").write_text(json.dumps({"training": {"device": "cuda:0"}}))
    (tmp_path / "metrics.json").write_text(json.dumps({"device": "cpu"}))
    named = cost_inputs([
        ("train", "dota/fcos", benchmark(tmp_path, "train.tsv", 7200), str(tmp_path / "run.json")),
        ("chip", "dota/000", benchmark(tmp_path, "chip-0.tsv", 10), None),
        ("evaluate", "dota/fcos", benchmark(tmp_path, "evaluate.tsv", 360),
         str(tmp_path / "metrics.json")),
        ("chip", "dota/001", benchmark(tmp_path, "chip-1.tsv", 20), None),
    ])
    rows = cost_of_files(named, tmp_path / "cost.csv", tmp_path / "cost.html")
    # Rules in the order their jobs are named, those that may use a GPU last.
    assert [(r["rule"], r["jobs"], r["wall_seconds"], r["gpu_hours"]) for r in rows] == [
        ("chip", 2, 30, 0.0), ("train", 1, 7200, 2.0), ("evaluate", 1, 360, 0.0),
        ("total", 4, 7590, 2.0)]
    with open(tmp_path / "cost.csv", newline="") as fh:
        assert [r["rule"] for r in csv.DictReader(fh)] == ["chip", "train", "evaluate", "total"]


def test_each_row_says_which_recipe_and_weights_its_run_trained_with(tmp_path):
    reference = result("dota", "yolox_s", 0.4, 0.3)
    reference.run["hyperparameters"] = {"recipe": "reference", "pretrained": "coco", "seed": 0}
    before_recipes = result("dota", "detr_r50", 0.2, 0.1)  # a run.json without the keys
    rows = {r["model"]: r for r in leaderboard_rows([reference, before_recipes])}
    assert (rows["yolox_s"]["recipe"], rows["yolox_s"]["pretrained"]) == ("reference", "coco")
    assert (rows["detr_r50"]["recipe"], rows["detr_r50"]["pretrained"]) == ("common", None)
    write_leaderboard([reference], tmp_path / "l.csv", tmp_path / "l.md", tmp_path / "l.html")
    assert "| recipe | pretrained |" in (tmp_path / "l.md").read_text()
    assert "| reference | coco |" in (tmp_path / "l.md").read_text()
    assert "<td>reference</td>" in (tmp_path / "l.html").read_text()

# One dataset's statistics, and its summary page in the report: every warning of the index
# (classes without an object, labels without images, label variants set aside) and of the
# chipping (classes whose objects no chip keeps), beside objects per class in scenes and chips.


rule dataset_stats:
    input:
        scenes="results/{dataset}/index/scenes.csv",
        annotations="results/{dataset}/index/annotations.csv",
        categories="results/{dataset}/index/categories.json",
        summary="results/{dataset}/index/summary.json",
        coco_stats="results/{dataset}/coco/stats.json",
        chips_manifest="results/{dataset}/chips/manifest.json",
    output:
        json="results/{dataset}/index/stats.json",
        png=report(
            "results/{dataset}/index/stats.png",
            caption="../report/dataset_stats.rst",
            category="Datasets",
            labels={"dataset": "{dataset}", "content": "statistics"},
        ),
        html=report(
            "results/{dataset}/index/summary.html",
            caption="../report/dataset_summary.rst",
            category="Datasets",
            labels={"dataset": "{dataset}", "content": "summary and warnings"},
        ),
    log:
        "logs/{dataset}/dataset_stats.log",
    params:
        title=lambda w: f"dataset {w.dataset}",
    message:
        "Computing statistics of dataset {wildcards.dataset}"
    shell:
        "{NADIR:q} dataset-stats --scenes {input.scenes:q} --annotations {input.annotations:q} "
        "--categories {input.categories:q} --summary {input.summary:q} "
        "--coco-stats {input.coco_stats:q} --chips-manifest {input.chips_manifest:q} "
        "--json {output.json:q} --png {output.png:q} --html {output.html:q} "
        "--title {params.title:q} 2> {log:q}"

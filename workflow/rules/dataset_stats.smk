rule dataset_stats:
    input:
        scenes="results/{dataset}/index/scenes.csv",
        annotations="results/{dataset}/index/annotations.csv",
        categories="results/{dataset}/index/categories.json",
    output:
        json="results/{dataset}/index/stats.json",
        png=report(
            "results/{dataset}/index/stats.png",
            caption="../report/dataset_stats.rst",
            category="Datasets",
            labels={"dataset": "{dataset}"},
        ),
    log:
        "logs/{dataset}/dataset_stats.log",
    params:
        title=lambda w: f"dataset {w.dataset}",
    message:
        "Computing statistics of dataset {wildcards.dataset}"
    shell:
        "{NADIR:q} dataset-stats --scenes {input.scenes:q} --annotations {input.annotations:q} "
        "--categories {input.categories:q} --json {output.json:q} --png {output.png:q} "
        "--title {params.title:q} 2> {log:q}"

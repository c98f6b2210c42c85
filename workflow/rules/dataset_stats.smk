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
    message:
        "Computing statistics of dataset {wildcards.dataset}"
    shell:
        "{NADIR} dataset-stats --scenes {input.scenes} --annotations {input.annotations} "
        "--categories {input.categories} --json {output.json} --png {output.png} "
        "--title 'dataset {wildcards.dataset}' 2> {log}"

"""Rule train: one run of the config trained on its dataset's chips.

Guarded by `__main__`: the processes training spawns (the selection split's scoring process,
DistributedDataParallel's workers) import this file again as `__mp_main__`, and must not train.
"""

if __name__ == "__main__":
    from nadir.core.jobs import run_job
    from nadir.train import train

    inp, out, w = snakemake.input, snakemake.output, snakemake.wildcards
    checkpoints = snakemake.config["checkpoints"]
    run_job(snakemake, lambda: train(
        w.dataset, snakemake.params.model, snakemake.params.hp, train=inp.train,
        manifest=inp.manifest, shards=inp.shards, weights=out.weights,
        train_log=out.train_log, run_record=out.run, resolved_config=out.resolved,
        pretrained=next(iter(inp.pretrained), None),
        selection=next(iter(inp.selection), None), checkpoints=checkpoints,
        checkpoint_folder=f"{checkpoints['location']}/{w.dataset}/{w.model}",
        threads=snakemake.threads))

"""A Tune experiment whose checkpoints trialsync keeps, run on a RayCluster's head:

    kubectl exec <head pod> -c ray-head -- python /home/ray/app/tune_experiment.py

Four trials, each checkpointing on its first iteration and every other one after. Run it
again after the cluster was lost: it resumes the experiment from the upload dir
(Tuner.restore), every trial from its checkpoint.
"""

import json
import os
import sys
import tempfile
import time

from ray import tune

from trialsync.ray_storage import storage_filesystem

STORAGE = "/home/ray/ray_results"  # the trial volume: trialsync.io/mount-path
NAME = "tune"
ITERATIONS = 10


def train(config):
    step, resumed_from = 0, None
    checkpoint = tune.get_checkpoint()
    if checkpoint:  # a restored trial continues from its checkpoint
        with checkpoint.as_directory() as directory:
            with open(os.path.join(directory, "state.json")) as handle:
                step = json.load(handle)["step"]
        resumed_from = os.path.basename(checkpoint.path)
    resumed_at = step
    while step < ITERATIONS:
        step += 1
        time.sleep(config["seconds"])
        metrics = {
            "step": step,
            "score": config["lr"] * step,
            "resumed_from": resumed_from,
            "resumed_at": resumed_at,
        }
        if step % 2 == 1:  # the first iteration too
            with tempfile.TemporaryDirectory() as directory:
                with open(os.path.join(directory, "state.json"), "w") as handle:
                    json.dump({"step": step}, handle)
                tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(directory))
        else:
            tune.report(metrics)


def main() -> None:
    filesystem = storage_filesystem(STORAGE)
    trainable = tune.with_resources(train, {"cpu": 1})
    path = f"{STORAGE}/{NAME}"
    if tune.Tuner.can_restore(path, storage_filesystem=filesystem):
        tuner = tune.Tuner.restore(
            path, trainable, storage_filesystem=filesystem, resume_errored=True
        )
    else:
        tuner = tune.Tuner(
            trainable,
            param_space={"lr": tune.grid_search([0.1, 0.2, 0.3, 0.4]), "seconds": 1.0},
            run_config=tune.RunConfig(
                name=NAME,
                storage_path=STORAGE,
                storage_filesystem=filesystem,
                # Tune also saves its experiment state after each checkpoint, so a resumed
                # trial continues from its newest one.
                checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            ),
        )
    results = tuner.fit()
    # One line a script (or a test) can read: each trial's last step, and where it resumed.
    trials = {
        r.metrics["trial_id"]: {k: r.metrics[k] for k in ("step", "resumed_from", "resumed_at")}
        for r in results
        if r.metrics
    }
    print(json.dumps({"trials": trials, "errors": results.num_errors}))
    sys.exit(1 if results.num_errors else 0)


if __name__ == "__main__":
    main()

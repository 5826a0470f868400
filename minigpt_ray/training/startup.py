"""Starting a run's Ray side while the driver imports the training stack and prepares its data.

Three things take seconds before any worker can start: Ray's start (or joining a cluster), the imports of torch,
transformers and Ray Train, and the data (corpus, tokenizer, packing; mostly cached after the first run). Ray starts
in the main thread, since it installs its signal handlers only from there; the imports and the data run in one
thread beside it (bench/fixed_cost.py, docs/benchmarks.md#fixed-cost). Ray Train's controller polls its workers
every RAY_TRAIN_HEALTH_CHECK_INTERVAL_S (2 s by default), which rounds each state change of a short run up to the
next poll; runs here poll every 0.5 s unless the variable is set. (Warming worker processes with a task that imports
torch and DeepSpeed does not help: Ray starts actors, Ray Train's workers among them, in fresh processes, never in
idle task workers, even with the same runtime environment.)

This module imports only Ray, so that `minigpt finetune` reaches Ray's start at once."""

from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor

import ray

from minigpt_ray.cluster import connect_ray

HEALTH_CHECK_ENV = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"
HEALTH_CHECK_S = "0.5"


def import_and_prepare(cfg):
    """The training stack's imports (the trainer and, through it, torch, transformers and Ray Train), then the
    run's data: `training.prepare.prepare_run(cfg)`."""
    from minigpt_ray.training import trainer  # noqa: F401  (imported here to overlap Ray's start)
    from minigpt_ray.training.prepare import prepare_run

    return prepare_run(cfg)


def prepare_while_ray_starts(cfg, prepare=import_and_prepare):
    """`prepare(cfg)` in a thread while Ray starts (or is joined); its result once both are done. When `prepare`
    fails (bad input) an embedded Ray started here is shut down and the error raised as it is: one line."""
    os.environ.setdefault(HEALTH_CHECK_ENV, HEALTH_CHECK_S)
    started_here = not ray.is_initialized()
    with ThreadPoolExecutor(1, thread_name_prefix="minigpt-prepare") as pool:
        preparing = pool.submit(prepare, cfg)
        try:
            # Ray's driver-side INFO/WARNING lines (start-up, token auth) would precede a bad-input error.
            connect_ray(cfg.ray_address, logging_level=logging.ERROR)
            return preparing.result()
        except BaseException:
            preparing.exception()  # wait for it: its error, if any, is the one raised (the input is to blame)
            if started_here and ray.is_initialized():
                ray.shutdown()
            if preparing.exception() is not None:
                raise preparing.exception() from None
            raise

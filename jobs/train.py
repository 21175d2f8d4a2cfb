"""Train stage: gold tables -> Cross-domain Transformer on Ray Train -> versioned model artifact.

Run it:
    crossrec train --lake-root lakehouse --workers 2 [--epochs N]      # a local Ray instance
    python -m crossrec_jobs.train --lake-root lakehouse ...             # same thing
    crossrec train --ray-address auto --workers 8 --gpu --lake-root /mnt/lake ...   # on a Ray cluster

Reads gold.user_sequences (train and valid rows), gold.item_index and gold.item_embeddings at the Delta
versions resolved at start (no Spark), trains data-parallel on N Ray Train workers with per-epoch validation
(NDCG@10 / Recall@10, full ranking per target domain), checkpoints every epoch, restarts failed workers from
the last checkpoint (--max-failures), stops early after --patience epochs without improvement, and writes
``<lake>/models/<model_version>/`` from the best epoch, with the score terms of lib/crossrec/rerank/ (--terms)
fitted on the validation split. The artifact is logged as an MLflow run (parameters, per-epoch metrics) and
registered as a version of the ``crossrec`` model (crossrec.io.registry); the promotion gate
(crossrec.evaluate.promotion) then moves the ``champion`` alias, which evaluate and score use, to it unless it is
clearly worse than the current champion on the test split (--force-promote overrides; --no-register skips both).
Library code: lib/crossrec/train/ (stage.py: this stage; driver.py: the Ray Train run; worker.py: a worker).
"""
from __future__ import annotations

import argparse
import logging
import sys

from crossrec.cli.common import add_common_args, config_from_args, run_guarded, setup_logging
from crossrec.train.stage import STAGE, add_train_arguments, run_train

log = logging.getLogger("crossrec.jobs.train")


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_common_args(p)
    add_train_arguments(p)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog=f"crossrec {STAGE}", description=__doc__.split("\n\n")[0])
    add_arguments(p)
    args = p.parse_args(argv)
    setup_logging(args.verbose)

    def body() -> None:
        cfg = config_from_args(args)
        log.info("%s config: %s", STAGE, cfg.masked())
        run_train(cfg, args)

    return run_guarded(STAGE, body)


if __name__ == "__main__":
    sys.exit(main())

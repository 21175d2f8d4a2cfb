"""Features stage: silver -> gold.item_index, gold.user_sequences, gold.item_embeddings.

Run it:
    crossrec features --lake-root lakehouse --raw-dir demo-data/raw [--max-seq-len 50]
    python -m crossrec_jobs.features ...                    # same thing
    spark-submit --master spark://host:7077 --packages io.delta:delta-spark_4.2_2.13:4.4.0 \\
        jobs/features.py --spark-master none --lake-root s3a://bucket/lake ...

Reads silver at the versions clean recorded; builds stable item ids, the leave-last-out splits per domain with the
cross-domain cold-start sample (rules in lib/crossrec/data/features.py), the model's sequences, and the
text-encoder vectors of new or changed item texts (a pandas UDF runs all-MiniLM-L6-v2 in batches). Nightly only
the users with new or erased events are rebuilt and merged; --full-refresh rebuilds every user (lib/crossrec/data/
gold.py). Each table is validated before the run is recorded in ops.runs; the row accounting is printed and
stored. The cold-start sample: per domain, a seeded --cold-start-users of the users active in it and in
another domain (at most --cold-start-fraction of the candidates), or every user of the data set's cohort named
by --cold-start-cohort (dataset.json extras.user_cohorts).
"""
from __future__ import annotations

import argparse
import sys

from crossrec.cli.common import add_common_args, run_job
from crossrec.data.gold import STAGE, run_features
from crossrec.io.config import CrossrecConfig as D

run = run_features


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_common_args(p, raw=True)
    g = p.add_argument_group("features")
    g.add_argument("--max-seq-len", dest="max_seq_len", type=int, help=f"events of history kept per sample (default {D.max_seq_len})")
    g.add_argument("--cold-start-users", dest="cold_start_users", type=int,
                   help="per domain, users active in it and another domain made new to it (history withheld) for the "
                        f"cold-start evaluation (default {D.cold_start_users})")
    g.add_argument("--cold-start-fraction", dest="cold_start_fraction", type=float,
                   help=f"at most this share of a domain's multi-domain users is sampled (default {D.cold_start_fraction:g})")
    g.add_argument("--cold-start-cohort", dest="cold_start_cohort",
                   help="use every user of this cohort of dataset.json extras.user_cohorts as the cold-start sample "
                        "instead (default: none, the seeded sample)")
    g.add_argument("--seed", type=int, help=f"seed of the sampled choices (default {D.seed})")
    g.add_argument("--full-refresh", dest="full_refresh", action="store_const", const=True,
                   help="rebuild gold from all of silver instead of the users with changes since the last run")


def main(argv: list[str] | None = None) -> int:
    return run_job(STAGE, __doc__, add_arguments, run, argv)


if __name__ == "__main__":
    sys.exit(main())

"""Evaluate stage: every model through the same full-ranking protocol -> gold.metrics (+ a printed table).

Run it:
    crossrec evaluate --lake-root lakehouse [--model-version V] [--baselines pop,itemknn,als] [--out DIR]
    crossrec evaluate --lake-root lakehouse --model crossrec=V1 --model sasrec=/path/to/artifact ...
    crossrec evaluate --lake-root lakehouse --model crossrec=V1 --model-alone transformer=V1   # with and without terms
    python -m crossrec_jobs.evaluate ...                     # same thing

The protocol (lib/crossrec/evaluate/protocol.py): for each test row, all items of the target domain are
ranked, the user's history items in that domain excluded; Recall/NDCG/Precision/F1@{10,20}, MRR, AUC and
catalog coverage per domain and per segment (all users, cross-domain cold-start users, cold items); ``--out``'s
records also carry each value's standard error over the segment's users (``se``; gold.metrics keeps the values),
and crossrec (and every ``--model-alone`` model; ``--paired`` names others) is compared user by user with the best
other model per domain and segment: the mean per-user NDCG@10 difference and its standard error (printed, and
under ``paired`` in ``--out``'s metrics.json).
The gold tables are read at pinned versions (recorded with the results); the Transformer comes from a
model artifact (default: the model registry's ``models:/crossrec@champion``; ``--model NAME=VERSION|FOLDER``, repeatable,
evaluates several side by side: artifacts trained on some domains only (``crossrec train --input-domains``)
are evaluated on those domains, so one name may combine one artifact per domain; ``--model-alone NAME=VERSION|FOLDER``
evaluates an artifact's Transformer without its score terms); every artifact scores through the one inference path
(crossrec.inference.Predictor); baselines are fitted on the spot on the same training data. Results are appended to
gold.metrics (a re-run with the same run id replaces its rows). Library: lib/crossrec/evaluate/stage.py.
"""
from __future__ import annotations

import argparse
import sys

from crossrec.cli.common import add_common_args, run_job
from crossrec.evaluate.stage import BASELINES, STAGE, parse_models, run_evaluate
from crossrec.io.config import CrossrecConfig


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_common_args(p)
    g = p.add_argument_group("evaluate")
    g.add_argument("--model-version", help="model to evaluate as 'crossrec': registered version (3, @alias, "
                   "models:/crossrec/3), artifact version or folder (default: the champion; none: baselines only)")
    g.add_argument("--model", action="append", default=[], metavar="NAME=VERSION|FOLDER",
                   help="evaluate this model under NAME (repeatable; replaces the default crossrec=champion)")
    g.add_argument("--model-alone", action="append", default=[], metavar="NAME=VERSION|FOLDER",
                   help="evaluate this model's Transformer without its score terms under NAME (repeatable; also "
                        "replaces the default crossrec=champion)")
    g.add_argument("--baselines", default="pop,itemknn", help=f"comma-separated, of {','.join(BASELINES)} (default pop,itemknn)")
    g.add_argument("--split", default="test", choices=["test", "valid"], help="targets to evaluate on (default test)")
    g.add_argument("--paired", metavar="NAMES",
                   help="comma-separated models to compare, user by user, with the best of the other models, or "
                        "pairs A:B to compare A with B (an ablation; neither side is then anyone's best rival) (NDCG@10 "
                        "per domain and segment: mean per-user difference and its standard error; default: crossrec and "
                        "every --model-alone name)")
    g.add_argument("--out", help="also write <out>/metrics.json (the records and the paired comparisons) there")


def run(cfg: CrossrecConfig, spark, a: argparse.Namespace) -> tuple[list[dict], dict]:
    """:func:`crossrec.evaluate.stage.run_evaluate` with this job's flags."""
    return run_evaluate(cfg, spark, parse_models(a.model, a.model_version, a.model_alone),
                        baselines=[b for b in a.baselines.split(",") if b], split=a.split,
                        paired=None if a.paired is None else [m for m in a.paired.split(",") if m], out=a.out)


def main(argv: list[str] | None = None) -> int:
    return run_job(STAGE, __doc__, add_arguments, run, argv, with_args=True)


if __name__ == "__main__":
    sys.exit(main())

"""What an orchestrator needs from crossrec beyond the stages: how a stage's exit code should be retried, the
Airflow asset readers of the recommendations subscribe to, and the callback of a missed deadline.

The nightly DAG (``airflow_dags/crossrec_nightly.py``) runs every stage as a ``crossrec`` process of its own; these
names live in the library so that the DAG, consumer DAGs and the callback's import path (which Airflow resolves
on its workers) do not depend on how the DAG folder is imported.
"""
from __future__ import annotations

import logging

from crossrec.cli.common import EXIT_ACCOUNTING, EXIT_BAD_INPUT, EXIT_VALIDATION

log = logging.getLogger("crossrec.orchestration")

# exit codes that the same input fails with again: bad input, a failed check, unbalanced accounting
PERMANENT_EXIT_CODES = frozenset({EXIT_BAD_INPUT, EXIT_VALIDATION, EXIT_ACCOUNTING})
EXIT_MEANING = {EXIT_BAD_INPUT: "bad input", EXIT_VALIDATION: "validation failed", EXIT_ACCOUNTING: "accounting"}

# The Airflow asset a published run of gold.recommendations updates (the publish task's outlet); consumer DAGs
# schedule on it. Name and URI identify the table, not a lake: one nightly DAG per lake.
RECOMMENDATIONS_ASSET_NAME = "crossrec_gold_recommendations"
RECOMMENDATIONS_ASSET_URI = "crossrec://gold/recommendations"


def recommendations_asset():
    """The ``airflow.sdk.Asset`` of the published recommendations."""
    from airflow.sdk import Asset

    return Asset(name=RECOMMENDATIONS_ASSET_NAME, uri=RECOMMENDATIONS_ASSET_URI)


def is_permanent(exit_code: int) -> bool:
    """Whether a stage that exited with ``exit_code`` would fail the same way on a retry."""
    return exit_code in PERMANENT_EXIT_CODES


def deadline_missed(context: dict | None = None, **kwargs) -> None:
    """Airflow deadline callback: the nightly run is not done by its deadline (logged at ERROR for alerting)."""
    run = (context or {}).get("dag_run")
    log.error("crossrec nightly missed its deadline: dag run %s (%s)", getattr(run, "run_id", "?"), kwargs or "")

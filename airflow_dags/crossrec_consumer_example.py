"""Example consumer of crossrec's results: a DAG that runs whenever the nightly DAG publishes a run.

It is scheduled on the asset ``crossrec_gold_recommendations`` (the ``publish`` task's outlet), so it starts after
each publish, not on a clock. Its one task reads what was published without Spark (``crossrec.io.readers``) and
reports the rows per domain: the place where a downstream service would sync its serving store, e.g. from the
change data feed of ``gold.recommendations`` since the version it read last.

``CROSSREC_LAKE_ROOT``: the lake the nightly DAG writes (default ``lakehouse``).
"""
from __future__ import annotations

import datetime as dt
import logging
import os

from airflow.sdk import dag, task

from crossrec.orchestration import recommendations_asset

log = logging.getLogger("crossrec.airflow.consumer")


@dag(
    dag_id="crossrec_consumer_example",
    schedule=[recommendations_asset()],
    start_date=dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc),
    catchup=False,
    max_active_runs=1,
    tags=["crossrec", "example"],
    doc_md=__doc__,
)
def crossrec_consumer_example():
    @task
    def read_published() -> dict:
        from crossrec.io.readers import published_run, read_recommendations

        lake = os.environ.get("CROSSREC_LAKE_ROOT", "lakehouse")
        run = published_run(lake)
        if run is None:
            raise RuntimeError(f"nothing published in {lake}: the asset event came from another lake?")
        recs = read_recommendations(lake)
        per_domain = {str(k): int(v) for k, v in recs.groupby("domain").size().items()}
        log.info("published run %s (table version %d): %d rows, per domain %s", run["run_date"], run["version"],
                 len(recs), per_domain)
        return {"run_date": run["run_date"], "version": run["version"], "rows": len(recs), "per_domain": per_domain}

    read_published()


dag_object = crossrec_consumer_example()

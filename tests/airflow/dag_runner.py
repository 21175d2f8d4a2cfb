"""Run in a fresh interpreter by test_dag.py (Airflow reads its configuration from the environment at import).

    python dag_runner.py parse                 DagBag import errors and task ids, as JSON
    python dag_runner.py run YYYY-MM-DD ...    dag.test() for each logical date, then the task states, as JSON;
                                               YYYY-MM-DD=REGEX marks the task ids REGEX matches as success in
                                               that run instead of running them (dag.test's mark_success_pattern)
"""
import datetime as dt
import json
import sys


def main() -> None:
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=sys.argv[2])
    if sys.argv[1] == "parse":
        dag = bag.dags.get("crossrec_nightly")
        print(json.dumps({"import_errors": {k: str(v) for k, v in bag.import_errors.items()},
                          "tasks": sorted(dag.task_ids) if dag else None,
                          "upstream": {t.task_id: sorted(t.upstream_task_ids) for t in dag.tasks} if dag else None}))
        return
    from airflow.utils import db

    db.resetdb()
    dag = bag.dags["crossrec_nightly"]
    runs = []
    for arg in sys.argv[3:]:
        day, _, pattern = arg.partition("=")
        when = dt.datetime.fromisoformat(day).replace(tzinfo=dt.timezone.utc)
        run = dag.test(logical_date=when, mark_success_pattern=pattern or None)
        tis = run.get_task_instances()
        states = {ti.task_id: str(ti.state) for ti in tis}
        seconds = {ti.task_id: round(ti.duration, 1) for ti in tis if ti.duration is not None}
        runs.append({"logical_date": day, "state": str(run.state), "tasks": states, "seconds": seconds,
                     "data_interval_start": run.data_interval_start.isoformat() if run.data_interval_start else None})
    print("DAGRUNS " + json.dumps(runs))


if __name__ == "__main__":
    main()

"""Run in a fresh interpreter by test_dag.py (Airflow reads its configuration from the environment at import).

    python dag_runner.py parse                 DagBag import errors and task ids, as JSON
    python dag_runner.py exit DAGS CODE       the nightly DAG's run_stage on a stage that exits CODE: what it raises
    python dag_runner.py run YYYY-MM-DD ...    dag.test() for each logical date, then the task states, as JSON;
                                               YYYY-MM-DD=REGEX marks the task ids REGEX matches as success in
                                               that run instead of running them (dag.test's mark_success_pattern)
"""
import datetime as dt
import json
import sys


def main() -> None:
    from airflow.dag_processing.dagbag import DagBag

    if sys.argv[1] == "exit":
        import importlib.util

        spec = importlib.util.spec_from_file_location("nightly", f"{sys.argv[2]}/crossrec_nightly.py")
        nightly = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(nightly)
        nightly.stage_command = lambda stage, args: [sys.executable, "-c", f"raise SystemExit({int(sys.argv[3])})"]
        try:
            nightly.run_stage("clean", [])
            print("RAISED none")
        except Exception as e:  # noqa: BLE001 -- reported to the test
            print(f"RAISED {type(e).__name__}: {e}")
        return

    bag = DagBag(dag_folder=sys.argv[2])
    if sys.argv[1] == "parse":
        dag, consumer = bag.dags.get("crossrec_nightly"), bag.dags.get("crossrec_consumer_example")
        info = {"import_errors": {k: str(v) for k, v in bag.import_errors.items()}, "tasks": None}
        if dag:
            info.update(
                tasks=sorted(dag.task_ids),
                upstream={t.task_id: sorted(t.upstream_task_ids) for t in dag.tasks},
                timeouts={t.task_id: t.execution_timeout.total_seconds() if t.execution_timeout else None for t in dag.tasks},
                retries={t.task_id: t.retries for t in dag.tasks},
                outlets={t.task_id: [a.name for a in t.outlets] for t in dag.tasks if t.outlets},
                timetable=type(dag.timetable).__name__,
                deadline=[type(d).__name__ for d in (dag.deadline if isinstance(dag.deadline, list) else [dag.deadline])
                          if d is not None],
            )
        if consumer:
            info["consumer_schedule"] = sorted(a.name for a in consumer.timetable.asset_condition.objects)
        print(json.dumps(info))
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
    consumer = bag.dags["crossrec_consumer_example"].test(logical_date=when)  # as the asset event would start it
    runs.append({"dag_id": "crossrec_consumer_example", "state": str(consumer.state),
                 "tasks": {ti.task_id: str(ti.state) for ti in consumer.get_task_instances()}})
    print("DAGRUNS " + json.dumps(runs))


if __name__ == "__main__":
    main()

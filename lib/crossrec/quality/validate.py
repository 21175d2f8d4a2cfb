"""Great Expectations checkpoints derived from the table contracts.

After every write a job calls :meth:`Validator.check` on the table it wrote. The suite comes from the
contract: not-null columns, unique key, allowed values, value ranges, the exact column set,
row-count bounds and referential integrity (every referenced key exists in the referenced table). A
failed check writes a JSON report, logs a readable summary and raises :class:`ValidationFailed`; the
Delta version that was written stays inspectable (time travel) and nothing downstream runs.
"""
from __future__ import annotations

import datetime as dt
import json
import logging
import os
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping

from crossrec.quality.contracts import Contract, ContractError

log = logging.getLogger(__name__)

REF_MARKER = "__ref_{}"


class ValidationFailed(RuntimeError):
    """A Great Expectations checkpoint failed; ``report`` holds the failed expectations."""

    def __init__(self, report: "ValidationReport"):
        self.report = report
        super().__init__(report.summary())


@dataclass
class ValidationReport:
    """Outcome of one checkpoint on one table version.

    ``rows`` is the row count the suite checked (the row-count expectation's observed value). ``report_path``:
    the JSON report; ``docs_url``: the run's Great Expectations Data Docs site (local report roots only).
    """

    table: str
    version: int | None
    success: bool
    rows: int | None
    results: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    report_path: str | None = None
    docs_url: str | None = None

    @property
    def failures(self) -> list[dict]:
        return [r for r in self.results if not r["success"]]

    def summary(self) -> str:
        head = (
            f"{self.table} v{self.version}: {'PASSED' if self.success else 'FAILED'} "
            f"{len(self.results) - len(self.failures)}/{len(self.results)} expectations"
        )
        lines = [head]
        for r in self.failures:
            lines.append(f"  - {r['expectation']} {r['target']}: {r['observed']}")
        if self.report_path and not self.success:
            lines.append(f"  report: {self.report_path}")
        return "\n".join(lines)


def _resolve(value: Any, params: Mapping[str, Any], table: str) -> Any:
    if isinstance(value, str) and value.startswith("$"):
        name = value[1:]
        if name not in params:
            raise ContractError(f"{table}: contract needs run-time parameter {value!r}; given {sorted(params)}")
        return params[name]
    return value


def _as_bound(value: Any, col_type: str) -> Any:
    if value is None or col_type not in ("timestamp", "date"):
        return value
    if isinstance(value, dt.date) and not isinstance(value, dt.datetime):
        return dt.datetime(value.year, value.month, value.day)
    if not isinstance(value, dt.datetime):
        value = dt.datetime.fromisoformat(str(value))
    # tables hold naive UTC timestamps: convert an aware bound to UTC, then drop the zone
    return value.astimezone(dt.timezone.utc).replace(tzinfo=None) if value.tzinfo else value


def build_expectations(
    contract: Contract,
    params: Mapping[str, Any] | None = None,
    expected_rows: int | None = None,
) -> list:
    """The GE expectations of ``contract`` with run-time ``params`` filled in.

    ``expected_rows`` (from the job's own row accounting) pins the row count exactly; otherwise the
    contract's ``row_count`` bounds (if any) apply.
    """
    import great_expectations.expectations as gxe

    params = params or {}
    markers = [REF_MARKER.format(ref.table.replace(".", "_")) for ref in contract.references]
    exps: list = [gxe.ExpectTableColumnsToMatchSet(column_set=contract.column_names + markers, exact_match=True)]
    for c in contract.columns:
        if not c.nullable:
            exps.append(gxe.ExpectColumnValuesToNotBeNull(column=c.name))
        if c.allowed is not None:
            allowed = _resolve(c.allowed, params, contract.table)
            exps.append(gxe.ExpectColumnValuesToBeInSet(column=c.name, value_set=list(allowed)))
        if c.min is not None or c.max is not None:
            lo = _as_bound(_resolve(c.min, params, contract.table), c.type)
            hi = _as_bound(_resolve(c.max, params, contract.table), c.type)
            exps.append(gxe.ExpectColumnValuesToBeBetween(column=c.name, min_value=lo, max_value=hi))
    if len(contract.key) == 1:
        exps.append(gxe.ExpectColumnValuesToBeUnique(column=contract.key[0]))
    elif contract.key:
        exps.append(gxe.ExpectCompoundColumnsToBeUnique(column_list=list(contract.key)))
    for marker in markers:
        # null marker = a key of this table that the referenced table lacks (see _with_reference_markers)
        exps.append(gxe.ExpectColumnValuesToNotBeNull(column=marker))
    if expected_rows is not None:
        exps.append(gxe.ExpectTableRowCountToBeBetween(min_value=expected_rows, max_value=expected_rows))
    elif contract.row_count:
        exps.append(
            gxe.ExpectTableRowCountToBeBetween(
                min_value=contract.row_count.get("min"), max_value=contract.row_count.get("max")
            )
        )
    return exps


def _with_reference_markers(df, contract: Contract, references: Mapping[str, Any]):
    """Left-join each referenced table's keys, adding a marker column that is null for dangling rows."""
    from pyspark.sql import functions as F

    for ref in contract.references:
        if ref.table not in references:
            raise ContractError(f"{contract.table} references {ref.table}: pass that frame to check()")
        marker = REF_MARKER.format(ref.table.replace(".", "_"))
        keys = references[ref.table].select(*ref.columns).distinct().withColumn(marker, F.lit(True))
        df = df.join(keys, on=list(ref.columns), how="left")
    return df


@lru_cache(maxsize=None)
def _unexpected_rows_class():
    """The GE expectation class of :func:`unexpected_rows_check` (defined on first use: GE imports slowly)."""
    import great_expectations.expectations as gxe

    class ExpectNoUnexpectedRows(gxe.UnexpectedRowsExpectation):
        """``UnexpectedRowsExpectation`` that runs its query once when no sample of the rows is asked.

        GE computes two metrics from the query: its row count, and its first rows (up to 200), which only the
        ``COMPLETE`` result format reports. With no unexpected row the second one is a second full run of the
        query (for the score stage's checks, one shuffle of the whole batch each). Under ``BOOLEAN_ONLY`` or a
        format that asks for no sample (``partial_unexpected_count: 0``, the validator's first run) this class asks
        for the row count alone and reports it; otherwise (the re-run of a failed suite) it also reports the first
        offending rows (``partial_unexpected_list``)."""

        def get_validation_dependencies(self, execution_engine=None, runtime_configuration=None):
            deps = super().get_validation_dependencies(execution_engine=execution_engine,
                                                       runtime_configuration=runtime_configuration)
            fmt = deps.result_format
            if fmt.get("result_format") == "BOOLEAN_ONLY" or fmt.get("partial_unexpected_count") == 0:
                deps.remove_metric_configuration("unexpected_rows_query.table")
            return deps

        def _validate(self, metrics: dict, runtime_configuration: dict | None = None, execution_engine=None):
            count = metrics["unexpected_rows_query.row_count"]
            if "unexpected_rows_query.table" not in metrics:
                return {"success": count == 0, "result": {"observed_value": count, "unexpected_count": count}}
            out = super()._validate(metrics, runtime_configuration=runtime_configuration, execution_engine=execution_engine)
            rows = metrics["unexpected_rows_query.table"] or []
            out.setdefault("result", {}).update(
                unexpected_count=count,
                partial_unexpected_list=[r.asDict() if hasattr(r, "asDict") else dict(r) for r in rows[:5]])
            return out

    return ExpectNoUnexpectedRows


def unexpected_rows_check(query: str, description: str):
    """A cross-row check for :meth:`Validator.check`'s ``extra_expectations``: it passes when ``query`` (SQL over
    ``{batch}``, the table being checked) returns no row. Pass/fail costs one run of the query; a failure
    report names the count and the first offending rows."""
    return _unexpected_rows_class()(unexpected_rows_query=query, description=description)


RAW_ID = re.compile(r"(^|_)user_id$")  # a bronze column of this name holds a raw user id: never in a report


def _examples(values: list, target, raw_ids: bool) -> list:
    """The first offending values or rows, with raw user ids (``raw_ids``: a bronze table) shown as ``<user id>``."""
    def hide(name) -> bool:
        return raw_ids and isinstance(name, str) and RAW_ID.search(name) is not None

    if hide(target) or (isinstance(target, list) and any(hide(c) for c in target)):
        return ["<user id>" for _ in values]
    return [{k: "<user id>" if hide(k) else v for k, v in x.items()} if isinstance(x, dict) else x for x in values]


def _describe(er, raw_ids: bool = False) -> dict:
    cfg = er.expectation_config
    kw = dict(cfg.kwargs)
    target = kw.get("column") or kw.get("column_list") or kw.get("description") or getattr(cfg, "description", None) or "table"
    res = er.result or {}
    if "unexpected_count" in res:
        examples = _examples((res.get("partial_unexpected_list") or [])[:5], target, raw_ids)
        observed = f"{res['unexpected_count']} unexpected" + (f", e.g. {examples}" if examples else "")
    else:
        observed = f"observed {res.get('observed_value')}"
    if er.exception_info and er.exception_info.get("raised_exception"):
        observed = f"error: {er.exception_info.get('exception_message')}"
    bounds = {k: kw[k] for k in ("min_value", "max_value", "value_set") if k in kw}
    return {
        "expectation": cfg.type,
        "target": target,
        "success": bool(er.success),
        "observed": observed,
        "expected": json.loads(json.dumps(bounds, default=str)),
    }


def _observed_rows(results: list, expected_rows: int | None) -> int | None:
    """The table's row count as the row-count expectation saw it: its observed value, or ``expected_rows`` when
    that exact bound passed and no value was reported; else None."""
    for er in results:
        if er.expectation_config.type != "expect_table_row_count_to_be_between":
            continue
        observed = (er.result or {}).get("observed_value")
        if observed is not None:
            return int(observed)
        return expected_rows if er.success else None
    return None


FIRST_PASS = {"result_format": "BASIC", "partial_unexpected_count": 0}
DOCS_SITE = "crossrec"
MAX_CONCURRENT_CHECKS = 4
LOCAL_MAX_ROWS = 50_000


@dataclass
class Check:
    """One table version to validate: the arguments of :meth:`Validator.check` (see there)."""

    contract: Contract
    df: Any
    params: Mapping[str, Any] | None = None
    expected_rows: int | None = None
    references: Mapping[str, Any] | None = None
    version: int | None = None


class Validator:
    """Runs contract-derived GE checkpoints in one ephemeral GE context (one per job), and keeps the job's Great
    Expectations Data Docs in ``<reports_root>/<run_id>/docs/index.html`` and each check's JSON report beside them.

    Each check writes its JSON report; the Data Docs site, which renders every suite of the context, is built by
    :meth:`finish` once the job's checks are done, or at once by a check that fails (a job stops there). On a remote
    report root (object storage) both are written to a local folder and copied up (:mod:`crossrec.io.lakefs`).

    Checks may run concurrently (:meth:`check_all`): each has its own GE data source, so its own execution engine and
    batch; suites and validation definitions are registered, reports written and the Data Docs built under a lock.

    **Engine.** A batch of at most ``local_max_rows`` rows (a night's rows, a small table) is collected to the driver
    and validated by GE's pandas engine: a Spark check of such a batch costs its metric jobs' fixed latency, about a
    second, where the pandas engine takes a few milliseconds. Larger batches, suites with cross-row SQL checks
    (``extra_expectations``), and batches pandas cannot hold (a timestamp outside pandas' range) are validated on Spark.
    The expectations are the same; a not-nullable floating-point column holding NaN fails only on pandas (which
    reads NaN as missing). ``local_max_rows=0``: always Spark. On Spark, GE caches the batch only for a suite with
    cross-row queries (``extra_expectations``, each a pass of its own), and the cache is dropped after the check."""

    def __init__(self, reports_root: str, run_id: str, local_max_rows: int = LOCAL_MAX_ROWS):
        import great_expectations as gx

        for name in ("great_expectations", "great_expectations.data_context.types.base"):
            logging.getLogger(name).setLevel(logging.WARNING)
        self._gx = gx
        from great_expectations.data_context.types.base import ProgressBarsConfig

        self.context = gx.get_context(mode="ephemeral")
        # our own log lines report progress; GE's per-metric bars would flood job logs
        self.context.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
        self._lock = threading.RLock()
        self.local_max_rows = local_max_rows
        self.reports_root = reports_root
        self.run_id = run_id
        self._n = 0
        from crossrec.io.lakefs import is_remote, local_path

        self.remote = is_remote(reports_root)
        import tempfile

        self.local_root = tempfile.mkdtemp(prefix="crossrec-reports-") if self.remote else local_path(reports_root)
        if self.remote:  # the staging folder goes with the Validator (every check copied it up already)
            import shutil
            import weakref

            weakref.finalize(self, shutil.rmtree, self.local_root, True)
        self.docs_dir = os.path.join(self.local_root, run_id, "docs")
        if self.remote:
            from crossrec.io.lakefs import join

            self.docs_url = join(reports_root, run_id, "docs", "index.html")
        else:
            self.docs_url = Path(self.docs_dir, "index.html").as_uri()  # what GE's site builder returns
        self._docs_stale = False
        self.context.add_data_docs_site(site_name=DOCS_SITE, site_config={
            "class_name": "SiteBuilder", "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
            "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": self.docs_dir}})

    def check(
        self,
        contract: Contract,
        df,
        params: Mapping[str, Any] | None = None,
        expected_rows: int | None = None,
        references: Mapping[str, Any] | None = None,
        version: int | None = None,
        raise_on_failure: bool = True,
        extra_expectations: list | None = None,
    ) -> ValidationReport:
        """Validate ``df`` (the table as written, at ``version``) against ``contract``.

        ``extra_expectations``: checks a contract cannot state per column (e.g. the cross-row checks of
        ``crossrec.score.stage.output_expectations``), run in the same suite.

        Raises :class:`ValidationFailed` (after writing the report) when an expectation fails.
        """
        gx = self._gx
        t0 = time.time()
        if contract.references:
            df = _with_reference_markers(df, contract, references or {})
        local = None if extra_expectations else self._local_batch(df, expected_rows, contract.table)
        with self._lock:
            self._n += 1
            name = f"{contract.table}#{self._n}"
            sources = self.context.data_sources
            # GE caches a Spark batch only for cross-row queries, each a pass of its own; a contract's expectations are
            # aggregates that GE computes in shared passes, and caching the whole table costs more than it saves
            persist = bool(extra_expectations)
            source = (sources.add_pandas(name=f"crossrec-{self._n}") if local is not None
                      else sources.add_spark(name=f"crossrec-{self._n}", persist=persist))
            batch_def = source.add_dataframe_asset(name="tables").add_batch_definition_whole_dataframe("whole_table")
            suite = self.context.suites.add(gx.ExpectationSuite(
                name=name, expectations=build_expectations(contract, params, expected_rows) + list(extra_expectations or [])))
            vd = self.context.validation_definitions.add(gx.ValidationDefinition(name=name, data=batch_def, suite=suite))
        # first pass without unexpected-value samples (SUMMARY gathers them with one more Spark job per
        # expectation) but with counts and observed values, which the report and Data Docs show for passing checks
        # too. Only a failed suite is run again with SUMMARY, so that the report names the offending values.
        batch = {"dataframe": local if local is not None else df}
        cached = df.is_cached  # a frame GE persisted is unpersisted afterwards, the caller's own cache is left alone
        try:
            result = vd.run(batch_parameters=batch, result_format=FIRST_PASS)
            if not result.success:
                result = vd.run(batch_parameters=batch, result_format="SUMMARY")
        finally:
            if local is None and persist and not cached:
                df.unpersist()
        results = [_describe(er, raw_ids=contract.table.startswith("bronze.")) for er in result.results]
        rows = _observed_rows(result.results, expected_rows)
        report = ValidationReport(
            table=contract.table,
            version=version,
            success=bool(result.success),
            rows=rows,
            results=results,
            seconds=round(time.time() - t0, 2),
        )
        report.docs_url = self.docs_url
        with self._lock:
            report.report_path = self._write(report)
            self._docs_stale = True
        if report.success:
            with self._lock:
                self._upload()
            log.info("validated %s v%s: %d expectations passed (%.1fs, %s)", contract.table, version, len(results),
                     report.seconds, "pandas" if local is not None else "spark")
        else:
            self.finish()
            log.error("%s; Data Docs %s", report.summary(), report.docs_url)
            if raise_on_failure:
                raise ValidationFailed(report)
        return report

    def _local_batch(self, df, expected_rows: int | None, table: str):
        """``df`` as a pandas frame when it has at most ``local_max_rows`` rows (see the class docstring), else None.
        With ``expected_rows`` (the job's accounting, which Delta's write metrics confirmed) the frame is collected when
        that is small enough (a limit would cost a job of its own); without, at most ``local_max_rows + 1`` rows are."""
        n = self.local_max_rows
        if n <= 0 or (expected_rows is not None and expected_rows > n):
            return None
        try:
            local = (df if expected_rows is not None else df.limit(n + 1)).toPandas()
        except (ValueError, OverflowError, ArithmeticError) as e:  # e.g. a timestamp beyond pandas' nanosecond range
            log.info("%s: validated on Spark: its rows do not convert to pandas (%s)", table, e)
            return None
        return local if len(local) <= n else None

    def check_all(self, checks: list[Check]) -> list[ValidationReport]:
        """Run :meth:`check` on each of ``checks`` (different tables), up to :data:`MAX_CONCURRENT_CHECKS` at once.

        A night's checks are small and their time is mostly Spark's per-job latency, which concurrent jobs overlap.
        Every check runs to its end and writes its report; then, when one failed, the Data Docs are built again (so they
        show every check) and the first failure (in ``checks`` order) raises :class:`ValidationFailed`. Returns the
        reports in ``checks`` order."""
        def run(c: Check) -> ValidationReport:
            return self.check(c.contract, c.df, params=c.params, expected_rows=c.expected_rows,
                              references=c.references, version=c.version, raise_on_failure=False)

        if len(checks) <= 1:
            reports = [run(c) for c in checks]
        else:
            with ThreadPoolExecutor(min(len(checks), MAX_CONCURRENT_CHECKS), thread_name_prefix="crossrec-check") as pool:
                reports = list(pool.map(run, checks))
        failed = [r for r in reports if not r.success]
        if failed:
            self.finish()
            raise ValidationFailed(failed[0])
        return reports

    def finish(self) -> str:
        """Build the job's Data Docs site from every check run so far (once, not per check: each build renders every
        suite of the context) and copy the run's folder up to a remote report root; returns the site's index URL."""
        with self._lock:
            return self._finish()

    def _finish(self) -> str:
        if self._docs_stale:
            built = self.context.build_data_docs(site_names=[DOCS_SITE])[DOCS_SITE]
            if not self.remote and built != self.docs_url:
                raise RuntimeError(f"Great Expectations built its Data Docs at {built}, not at {self.docs_url}")
            self._docs_stale = False
            self._upload()
            log.info("Data Docs of %d check(s): %s", self._n, self.docs_url)
        return self.docs_url

    def _upload(self) -> None:
        """On a remote report root: copy the run's local folder (reports, and docs once built) up to it."""
        if self.remote:
            from crossrec.io.lakefs import join, upload

            upload(os.path.join(self.local_root, self.run_id), join(self.reports_root, self.run_id))

    def _write(self, report: ValidationReport) -> str:
        """Write the report as JSON under ``<reports_root>/<run_id>/`` (the local folder of a remote root)."""
        folder = os.path.join(self.local_root, self.run_id)
        os.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, f"{report.table}.json")
        with open(path, "w", encoding="utf-8") as fh:
            json.dump(report.__dict__, fh, indent=2, default=str)
        if self.remote:
            from crossrec.io.lakefs import join

            return join(self.reports_root, self.run_id, f"{report.table}.json")
        return path

"""The publish stage: check one run of gold.recommendations and point readers at it.

Readers (:func:`crossrec.io.readers.read_recommendations`, ``crossrec recs``) follow the table properties
``crossrec.published.*`` that :func:`crossrec.score.stage.publish` sets in one Delta commit. By default the version
published is the one the newest succeeded score run of the run date recorded in ops.runs; score validated it before
recording it, so it is not checked again. Any other version is checked first (:func:`crossrec.score.stage.validate_run`)
unless the caller says it was checked before. Publishing moves forward only: an older run date than the published one
is refused unless forced.
"""
from __future__ import annotations

import datetime as dt
import logging

from crossrec import columns as C
from crossrec.data.rawformat import RawFormatError
from crossrec.io.config import CrossrecConfig

log = logging.getLogger(__name__)

STAGE = "publish"
TABLE = "gold.recommendations"


def run_publish(cfg: CrossrecConfig, spark, table_version: int | None = None, check_only: bool = False,
                skip_checks: bool = False, force: bool = False) -> dict:
    """Check and/or publish the run of ``cfg.run_date`` and record the run in ops.runs; returns ``{version, run_date,
    model_version, k, published}`` (and ``table_version``, the commit that published it, when published).

    ``table_version``: the gold.recommendations version (default: the one the newest succeeded score run of the run
    date recorded). ``check_only``: check, publish nothing. ``skip_checks``: publish without checking. ``force``:
    publish even when a newer run date is published. Raises :class:`~crossrec.data.rawformat.RawFormatError` when
    there is nothing to publish or the run date would move readers back, and
    :class:`~crossrec.quality.validate.ValidationFailed` when the checks fail.
    """
    from crossrec.io.runs import stage_run

    with stage_run(spark, cfg, STAGE, []) as stage:
        out = _publish(cfg, spark, table_version, check_only, skip_checks, force)
        stage.reads = {TABLE: out["version"]}
        if out["published"]:
            stage.writes = {TABLE: out["table_version"]}
        return out


def _publish(cfg: CrossrecConfig, spark, version: int | None, check_only: bool, skip_checks: bool, force: bool) -> dict:
    from crossrec.io.delta import table_exists
    from crossrec.io.runs import Ledger
    from crossrec.score import stage as S

    path = cfg.table_path(TABLE)
    if not table_exists(spark, path):
        raise RawFormatError(f"gold.recommendations does not exist at {path}: run `crossrec score` first")
    run_date = dt.date.fromisoformat(cfg.run_date)
    folder = None  # the artifact the run was scored with, where ops.runs recorded it
    if version is None:
        scored = [r for r in Ledger(cfg.lake_uri).succeeded(S.STAGE) if r[C.RUN_DATE] == cfg.run_date]
        if not scored:
            raise RawFormatError(f"no succeeded `crossrec score` run for {run_date} in ops.runs: score it first, or name "
                                 "the version with --table-version")
        version = int(scored[-1]["writes"][TABLE])
        skip_checks = skip_checks or bool(scored[-1][C.DETAILS].get("validated"))
        folder = scored[-1][C.DETAILS].get("model_folder")
        log.info("publishing v%d, recorded by score run %s%s", version, scored[-1][C.RUN_ID],
                 " (validated by it)" if skip_checks else "")
    if skip_checks:
        model_version, k = _run_meta(spark, path, version, run_date)
    else:
        _, model_version, k = S.validate_run(spark, cfg, version, run_date, folder=folder)
        print(f"gold.recommendations v{version} run_date {run_date}: output checks passed")
    out = {"version": version, "run_date": run_date.isoformat(), "model_version": model_version, "k": k, "published": False}
    if not check_only:
        try:
            out["table_version"] = S.publish(spark, path, version, run_date, model_version, k, force=force)
        except S.PublishBackwards as e:
            raise RawFormatError(str(e)) from None
        out["published"] = True
        print(f"published gold.recommendations v{version} (run_date {run_date}, model {model_version}, k={k})")
    return out


def _run_meta(spark, path: str, version: int, run_date: dt.date) -> tuple[str, int]:
    """(model_version, k) of one run date's rows at ``version``, read without checking them."""
    from pyspark.sql import functions as F

    from crossrec.io.delta import read_table

    meta = read_table(spark, path, version).where(F.col(C.RUN_DATE) == F.lit(run_date)).agg(
        F.max(C.RANK).alias("k"), F.collect_set(C.MODEL_VERSION).alias("mv")).first()
    if not meta["mv"]:
        raise RawFormatError(f"gold.recommendations v{version} has no rows for run_date {run_date}")
    return meta["mv"][0], int(meta["k"])

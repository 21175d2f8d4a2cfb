"""Delta upkeep (``crossrec maintain``): compaction, Z-order, retention of old run dates and models, VACUUM.

* **OPTIMIZE** every table of the lake: files smaller than ``compact_file_mb`` (a night's merge writes a few) are
  bin-packed, larger ones left as they are, so a night's compaction rewrites the night's files, not the table; with
  ``zorder`` the tables whose contract names ``zorder_by`` are Z-ordered by those columns (a lookup of one user
  then reads few files). Z-order rewrites the table, so the DAG runs it weekly.
* **Retention**: gold.recommendations keeps the newest ``keep_run_dates`` run dates (the published one always);
  the model registry keeps the newest ``keep_models`` versions (the champion always; a removed version's artifact
  folder goes with it); Ray Train run folders under ``<lake>/_ray`` older than the oldest kept artifact are removed.
* **VACUUM** with ``vacuum_retention_hours``: files no table version of that window needs are deleted.

Every commit is recorded in ops.runs (a maintain run writes no new rows, so readers' recorded versions move to it).
"""
from __future__ import annotations

import logging
import os
import shutil
import time

from crossrec import columns as C
from crossrec.io.config import CrossrecConfig
from crossrec.io.delta import latest_version, quote_path, sql_string, table_exists
from crossrec.io.runs import StageRun, stage_run
from crossrec.io.spark import MIN_FILE_SIZE
from crossrec.quality.contracts import all_contracts

log = logging.getLogger(__name__)

STAGE = "maintain"
RETENTION_CHECK = "spark.databricks.delta.retentionDurationCheck.enabled"


def run_maintain(cfg: CrossrecConfig, spark, zorder: bool = False) -> dict:
    """Compact (and with ``zorder`` Z-order), apply retention, vacuum; record the run. Returns its details."""
    tables = [c for c in all_contracts() if c.table != "ops.runs" and table_exists(spark, cfg.table_path(c.table))]
    with stage_run(spark, cfg, STAGE, []) as stage:
        stage.mode = "zorder" if zorder else "compact"
        spark.conf.set(MIN_FILE_SIZE, str(int(cfg.compact_file_mb * 2**20)))  # put back by stage_run
        for c in tables:
            _optimize(spark, cfg, stage, c, zorder)
        _drop_old_run_dates(spark, cfg, stage)
        stage.details["models_removed"] = _drop_old_models(cfg)
        _vacuum(spark, cfg, stage, tables)
    for t, info in stage.details["tables"].items():
        print(f"{t:<24} {info}")
    return stage.details


def _optimize(spark, cfg: CrossrecConfig, stage: StageRun, contract, zorder: bool) -> None:
    path = cfg.table_path(contract.table)
    before = latest_version(path)
    t0 = time.time()
    cols = [c for c in contract.zorder_by if c not in contract.partition_by] if zorder else []
    sql = f"OPTIMIZE {quote_path(path)}" + (f" ZORDER BY ({', '.join(f'`{c}`' for c in cols)})" if cols else "")
    metrics = spark.sql(sql).select("metrics.numFilesAdded", "metrics.numFilesRemoved").first()
    after = latest_version(path)
    info = {"files_removed": int(metrics[1] or 0), "files_added": int(metrics[0] or 0), "seconds": round(time.time() - t0, 1)}
    if cols:
        info["zorder_by"] = cols
    stage.details.setdefault("tables", {})[contract.table] = info
    if after != before:
        stage.writes[contract.table] = after
    log.info("%s: %s -> %s", contract.table, sql.split(" ", 1)[0] + (" ZORDER" if cols else ""), info)


def _drop_old_run_dates(spark, cfg: CrossrecConfig, stage: StageRun) -> None:
    from crossrec.io.readers import PUBLISHED_PREFIX

    from crossrec.io.delta import table_properties

    path = cfg.table_path("gold.recommendations")
    if not table_exists(spark, path):
        return
    dates = sorted((r[0] for r in spark.read.format("delta").load(path).select(C.RUN_DATE).distinct().collect()), reverse=True)
    published = table_properties(spark, path).get(PUBLISHED_PREFIX + "run_date")
    drop = [d for d in dates[cfg.keep_run_dates:] if d.isoformat() != published]
    if drop:
        spark.sql(f"DELETE FROM {quote_path(path)} WHERE run_date IN ({', '.join(sql_string(d.isoformat()) for d in drop)})")
        stage.writes["gold.recommendations"] = latest_version(path)
        log.info("gold.recommendations: dropped run dates %s (keeping the newest %d and the published %s)",
                 [d.isoformat() for d in drop], cfg.keep_run_dates, published)
    stage.details["run_dates_dropped"] = [d.isoformat() for d in drop]


def _drop_old_models(cfg: CrossrecConfig) -> list[str]:
    """Delete all but the newest ``keep_models`` registered versions (never the champion) with their artifact
    folders, and Ray run folders older than the oldest artifact kept (local lakes only: an object store's lifecycle
    rules do that there)."""
    from crossrec.io.registry import Registry

    registry = Registry(cfg.lake_uri, cfg.mlflow_tracking_uri)
    versions = registry.versions()  # newest first
    keep = [v for i, v in enumerate(versions) if i < cfg.keep_models or v.is_champion]
    removed = []
    for v in versions:
        if v not in keep:
            registry.delete(v.number)
            removed.append(f"version {v.number} ({v.model_version})")
    kept_times = [os.path.getmtime(v.folder) for v in keep if os.path.isdir(v.folder)]
    ray_root = os.path.join(cfg.lake_uri, "_ray")
    if kept_times and "://" not in cfg.lake_uri and os.path.isdir(ray_root):
        oldest = min(kept_times)
        for d in os.listdir(ray_root):
            p = os.path.join(ray_root, d)
            if os.path.isdir(p) and os.path.getmtime(p) < oldest - 24 * 3600:
                shutil.rmtree(p)
                removed.append(f"_ray/{d}")
    if removed:
        log.info("models: removed %s (kept versions %s)", removed, [v.number for v in keep])
    return removed


def _vacuum(spark, cfg: CrossrecConfig, stage: StageRun, tables) -> None:
    hours = cfg.vacuum_retention_hours
    check = spark.conf.get(RETENTION_CHECK, "true")
    if hours < 168:  # below Delta's default minimum: allowed because the config says so
        spark.conf.set(RETENTION_CHECK, "false")
    try:
        for c in tables:
            path = cfg.table_path(c.table)
            before = latest_version(path)
            spark.sql(f"VACUUM {quote_path(path)} RETAIN {float(hours)} HOURS")
            after = latest_version(path)
            if after != before:
                stage.writes[c.table] = after
    finally:
        spark.conf.set(RETENTION_CHECK, check)

"""Row accounting: every job reports, per table and domain, rows_in = rows_out + quarantined + duplicates
(+ withheld: rows held out on purpose, e.g. the cold-start sample's training events in features).

Jobs print the summary and store it in ``ops.accounting`` (one row per run, stage, table and domain; a
re-run of a stage for the same run id replaces its own rows).
"""
from __future__ import annotations

import datetime as dt
import json
import logging
from dataclasses import asdict, dataclass, field

from crossrec import columns as C

log = logging.getLogger(__name__)

ACCOUNTING_TABLE = "ops.accounting"


class QuarantineShareExceeded(RuntimeError):
    """Too large a share of a domain's or a file's rows was quarantined: the input is wrong as a whole (exit 3)."""


def check_quarantine_share(counts: list[dict], max_share: float, table: str) -> None:
    """Raise :class:`QuarantineShareExceeded` when more than ``max_share`` of a domain's or a source file's rows of
    ``table`` were quarantined, naming each such domain or file, its counts and its top reasons.

    ``counts``: rows ``{"domain", "source", "_status", "_reason", "count"}`` (the clean stage's status counts).
    """
    groups: dict[tuple[str, str], dict] = {}
    for r in counts:
        for key in (("domain", r[C.DOMAIN] or "<none>"), ("file", r[C.SOURCE] or "<none>")):
            g = groups.setdefault(key, {"rows": 0, "quarantined": 0, "reasons": {}})
            g["rows"] += r["count"]
            if r["_status"] == "quarantined":
                g["quarantined"] += r["count"]
                g["reasons"][r["_reason"]] = g["reasons"].get(r["_reason"], 0) + r["count"]
    over = [(kind, name, g) for (kind, name), g in sorted(groups.items())
            if g["rows"] and g["quarantined"] / g["rows"] > max_share]
    if over:
        lines = [f"{kind} {name}: {g['quarantined']:,} of {g['rows']:,} rows quarantined "
                 f"({g['quarantined'] / g['rows']:.0%}); top reasons "
                 + ", ".join(f"{reason} {n:,}" for reason, n in sorted(g["reasons"].items(), key=lambda x: -x[1])[:3])
                 for kind, name, g in over]
        raise QuarantineShareExceeded(
            f"{table}: more than {max_share:.0%} of the rows quarantined (config max_quarantine_share), nothing "
            "written; see the reasons (docs/operations.md, 'What clean guarantees') and fix the input or its dataset.json:\n  "
            + "\n  ".join(lines))


class AccountingError(RuntimeError):
    """Rows were lost or invented: rows_in != rows_out + quarantined + duplicates."""


@dataclass
class AccountingRow:
    """One (stage, table, domain) line of a job's row accounting."""

    stage: str
    table_name: str
    domain: str
    rows_in: int = 0
    rows_out: int = 0
    quarantined: int = 0
    duplicates: int = 0
    skipped: int = 0
    withheld: int = 0
    details: dict = field(default_factory=dict)

    @property
    def balanced(self) -> bool:
        return self.rows_in == self.rows_out + self.quarantined + self.duplicates + self.withheld


def check_balanced(rows: list[AccountingRow]) -> None:
    """Raise :class:`AccountingError` naming every line where rows do not add up."""
    bad = [r for r in rows if not r.balanced]
    if bad:
        lines = [
            f"{r.stage} {r.table_name}/{r.domain}: in {r.rows_in} != out {r.rows_out} + quarantined "
            f"{r.quarantined} + duplicates {r.duplicates} + withheld {r.withheld}"
            for r in bad
        ]
        raise AccountingError("row accounting does not balance:\n" + "\n".join(lines))


def format_accounting(rows: list[AccountingRow]) -> str:
    """A fixed-width table of the accounting, with a total line per table."""
    head = f"{'table':<22} {'domain':<12} {'in':>10} {'out':>10} {'quarant.':>9} {'dupl.':>8} {'withheld':>9} {'skipped':>9}"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r.table_name:<22} {r.domain:<12} {r.rows_in:>10,} {r.rows_out:>10,} {r.quarantined:>9,} "
            f"{r.duplicates:>8,} {r.withheld:>9,} {r.skipped:>9,}"
        )
    return "\n".join(lines)


def write_accounting(spark, cfg, run_id: str, rows: list[AccountingRow]) -> int:
    """Store ``rows`` in ``ops.accounting``, replacing this run's earlier rows for the same stage(s); one commit.

    Spark creates (or migrates) the table from its contract; the rows go in with ``deltalake`` (a few rows need no
    Spark job). Returns the new version, -1 when there is nothing to store."""
    import pyarrow as pa
    from deltalake import DeltaTable, write_deltalake

    from crossrec.io.delta import latest_version
    from crossrec.io.readers import sql_value
    from crossrec.quality.contracts import load_contract

    if not rows:
        return -1
    contract = load_contract(ACCOUNTING_TABLE)
    path = cfg.table_path(ACCOUNTING_TABLE)
    contract.ensure_table(spark, path)
    now = dt.datetime.now(dt.timezone.utc)
    records = [
        {
            **{k: v for k, v in asdict(r).items() if k != C.DETAILS},
            C.DETAILS: json.dumps(r.details, sort_keys=True, default=str),
            C.RUN_ID: run_id,
            C.RUN_DATE: cfg.run_date,
            "recorded_at": now,
        }
        for r in rows
    ]
    schema = pa.schema(DeltaTable(path).schema().to_arrow())
    stages = sorted({r.stage for r in rows})
    where = f"run_id = {sql_value(run_id)} AND stage IN ({', '.join(sql_value(s) for s in stages)})"
    write_deltalake(path, pa.Table.from_pylist(records, schema=schema), mode="overwrite", predicate=where)
    version = latest_version(path)
    log.info("wrote %s (overwrite where %s) -> %s v%d", ACCOUNTING_TABLE, where, path, version)
    return version


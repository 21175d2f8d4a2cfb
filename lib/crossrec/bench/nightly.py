"""Nightly cost: a generated platform replayed night by night through every stage.

    crossrec bench nightly --out DIR [--users 100000 --nights 10 --new-share 0.01 --domains 3
                                      --items-per-domain 3000 --stages ingest,clean,features,train,score,maintain]

Night 1 loads the whole history (``crossrec generate``, ``--users`` users); every later night adds ``--new-share``
of the history's rows as new files (``generate_night``: some from new users, some on items new that night, some
re-sent rows of the history, and catalog rows whose title changed), run date one day later. Each night runs the
stages as the Airflow DAG does: ingest -> clean -> features -> (train on night 1 and on the DAG's retrain weekday,
Sunday) -> score -> maintain (Z-order on the retrain day, compaction otherwise). The data stages and maintain run in
one Spark session (as ``crossrec prepare`` runs its stages: the JVM's start, measured once and reported, is not in a
stage's seconds); train and score run as ``crossrec`` processes of their own, as the scale benchmark does.

A night of the replay stands for a day: maintain's VACUUM keeps what the versions of the last
``vacuum_retention_hours / 24`` nights need (7 with the default 168 hours), its retention given in the replay's wall
hours since the start of the oldest night kept.

Per (night, stage): wall seconds, bytes the stage added to the lake (files that are new or grew), rows in (the
stage's accounting). Per night: the lake's total bytes. Targets: each incremental night of every stage but score,
train and maintain at most 25% of its first night, and night K within 1.25x of night 2; the lake after night K with
maintain within 2x of the live tables plus the retained run dates.

Writes ``DIR/nightly.json`` (``{"records": [{night, stage, seconds, bytes_written, rows_in}], "storage_bytes":
{night: bytes}, ...}``, rewritten after every stage), ``DIR/nightly.md`` and ``DIR/nightly.png``; logs of the
process stages under ``DIR/logs/``.
"""
from __future__ import annotations

import datetime as dt
import json
import logging
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

log = logging.getLogger(__name__)

ALL_STAGES = ("ingest", "clean", "features", "train", "score", "maintain")
FIRST_DAY = dt.date(2024, 12, 31)  # the generated history ends that day; night n runs n - 1 days later
RETRAIN_WEEKDAY = 6  # the DAG's default (CROSSREC_TRAIN_WEEKDAY): Sunday
INCREMENTAL_TARGET, FLAT_TARGET = 0.25, 1.25
UNCHECKED = ("train", "score", "maintain")


class NightlyError(RuntimeError):
    """A stage of the nightly replay failed (the message names it and its log)."""


@dataclass(frozen=True)
class NightlySpec:
    out_dir: str
    users: int = 100_000
    nights: int = 10
    new_share: float = 0.01
    domains: int = 3
    items_per_domain: int = 3_000
    events: float = 20.0
    stages: tuple[str, ...] = ALL_STAGES
    train_users: int = 20_000
    seed: int = 7

    def __post_init__(self) -> None:
        unknown = sorted(set(self.stages) - set(ALL_STAGES))
        if unknown or self.nights < 1 or not 0 < self.new_share <= 1:
            raise NightlyError(f"stages must be among {ALL_STAGES} (got {unknown}), nights >= 1, 0 < new_share <= 1")


def _files(root: Path) -> dict[str, int]:
    out = {}
    for dirpath, _, names in os.walk(root):
        for n in names:
            p = os.path.join(dirpath, n)
            try:
                out[p] = os.path.getsize(p)
            except OSError:
                pass
    return out


def _added_bytes(before: dict[str, int], after: dict[str, int]) -> int:
    return sum(size - before.get(p, 0) for p, size in after.items() if size > before.get(p, 0))


def _rows_in(lake: Path, stage: str) -> int:
    from crossrec.io.runs import Ledger

    last = Ledger(str(lake)).last(stage)
    return sum(int(a.get("rows_in") or 0) for a in last["accounting"]) if last else 0


def _live_bytes(spark, lake: Path) -> int:
    """Bytes of the files the tables' current versions reference (what VACUUM cannot remove)."""
    from delta.tables import DeltaTable

    from crossrec.io.delta import table_exists
    from crossrec.quality.contracts import all_contracts

    total = 0
    for c in all_contracts():
        path = str(lake / c.table.replace(".", "/"))
        if table_exists(spark, path):
            total += int(DeltaTable.forPath(spark, path).detail().select("sizeInBytes").first()[0] or 0)
    return total


def run_nightly(spec: NightlySpec) -> dict:
    """Generate, replay every night, write nightly.json/.md/.png; return the result."""
    from crossrec.bench.scale import run_stage
    from crossrec.data.synthetic import SyntheticSpec, generate, generate_night
    from crossrec.io.config import resolve_config
    from crossrec.io.spark import build_spark
    from crossrec.io.maintain import run_maintain
    from crossrec.data.bronze import run_ingest
    from crossrec.data.gold import run_features
    from crossrec.data.silver import run_clean

    out = Path(spec.out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    raw, lake, key = out / "raw", out / "lake", out / "pseudonym.key"
    key.write_text("nightly-bench-key-" + "0" * 24, encoding="utf-8")
    synth = SyntheticSpec(users=spec.users, domains=spec.domains, items_per_domain=spec.items_per_domain,
                          mean_events_per_user=spec.events, seed=spec.seed)
    if not (raw / "manifest.json").exists():
        log.info("nightly: generating the history (%d users)", spec.users)
        generate(raw, synth, nightly=True)
    t0 = time.perf_counter()
    spark = build_spark("crossrec-bench-nightly", "local[*]", {})
    session_s = time.perf_counter() - t0
    result = {"spec": asdict(spec), "cores": os.cpu_count(), "session_start_seconds": round(session_s, 1), "records": [], "storage_bytes": {},
              "live_bytes": {}, "nights_generated": {}}

    def save() -> None:
        (out / "nightly.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
        (out / "nightly.md").write_text(report(result), encoding="utf-8")
        _plot(result, out / "nightly.png")

    retain_nights = max(1, round(resolve_config(None, {}).vacuum_retention_hours / 24))
    result["retained_nights"] = retain_nights
    started: dict[int, float] = {}  # night -> time.time() at its start
    for night in range(1, spec.nights + 1):
        started[night] = time.time()
        day = FIRST_DAY + dt.timedelta(days=night - 1)
        if night > 1 and not (raw / "books" / "interactions" / f"night-{night:04d}.csv").exists():
            result["nights_generated"][night] = generate_night(raw, synth, night, spec.new_share)
        oldest_kept = started[max(1, night - retain_nights + 1)]
        cfg = resolve_config(None, {"raw_dir": str(raw), "lake_root": str(lake), "run_date": day.isoformat(),
                                    "pseudonym_key_file": str(key),
                                    "vacuum_retention_hours": (time.time() - oldest_kept) / 3600})
        retrain = night == 1 or day.weekday() == RETRAIN_WEEKDAY
        common = ["--lake-root", str(lake), "--run-date", day.isoformat(), "--pseudonym-key-file", str(key)]
        for stage in spec.stages:
            if stage == "train" and not retrain:
                continue
            before = _files(lake)
            t = time.perf_counter()
            if stage == "ingest":
                run_ingest(cfg, spark)
            elif stage == "clean":
                run_clean(cfg, spark)
            elif stage == "features":
                run_features(cfg, spark)
            elif stage == "maintain":
                run_maintain(cfg, spark, zorder=retrain and night > 1)
            elif stage == "train":
                run_stage(stage, ["train", *common, "--workers", "2", "--epochs", "1", "--max-users", str(spec.train_users)],
                          out / "logs" / f"night{night:02d}-train.log")
            else:
                run_stage(stage, ["score", *common, "--k", "10"], out / "logs" / f"night{night:02d}-score.log")
            seconds = time.perf_counter() - t
            rec = {"night": night, "stage": stage, "seconds": round(seconds, 2),
                   "bytes_written": _added_bytes(before, _files(lake)),
                   "rows_in": _rows_in(lake, stage) if stage in ("ingest", "clean", "features") else None}
            result["records"].append(rec)
            log.info("nightly: night %d %s %.1fs", night, stage, seconds)
            save()
        result["storage_bytes"][night] = sum(_files(lake).values())
        result["live_bytes"][night] = _live_bytes(spark, lake)
        save()
    spark.stop()
    print(report(result))
    return result


def summary(result: dict) -> dict[str, dict]:
    """Per stage: first night, the worst incremental night as a share of it, night K over night 2, target met."""
    by: dict[str, dict[int, float]] = {}
    for r in result["records"]:
        by.setdefault(r["stage"], {})[int(r["night"])] = float(r["seconds"])
    out = {}
    for stage, n in by.items():
        nights = sorted(n)
        first = n[nights[0]]
        rest = nights[1:]
        worst = max((n[k] for k in rest), default=0.0) / first if first else float("inf")
        flat = n[rest[-1]] / n[rest[0]] if len(rest) >= 2 and n[rest[0]] else None
        checked = stage not in UNCHECKED
        met = (worst <= INCREMENTAL_TARGET and (flat is None or flat <= FLAT_TARGET)) if checked and rest else None
        out[stage] = {"first": first, "worst_share": worst if rest else None, "flat": flat, "checked": checked, "met": met}
    return out


def report(result: dict) -> str:
    s = result["spec"]
    nights = sorted({int(r["night"]) for r in result["records"]})
    stages = [st for st in ALL_STAGES if any(r["stage"] == st for r in result["records"])]
    cell = {(int(r["night"]), r["stage"]): r for r in result["records"]}
    lines = [f"# crossrec bench nightly ({s['users']:,} users, {s['domains']} domains, {s['new_share']:.1%} new a night, "
             f"{len(nights)} night(s))", "",
             f"Data stages and maintain in one Spark session (its start, {result['session_start_seconds']} s, is not in "
             "a stage's figure); train and score as processes of their own. Seconds per stage and night:", "",
             "| night | " + " | ".join(stages) + " | lake GiB | live tables GiB |",
             "|---:|" + "---:|" * (len(stages) + 2)]
    for n in nights:
        vals = [f"{cell[(n, st)]['seconds']:.1f}" if (n, st) in cell else "" for st in stages]
        gib = result["storage_bytes"].get(str(n), result["storage_bytes"].get(n))
        live = result["live_bytes"].get(str(n), result["live_bytes"].get(n))
        lines.append(f"| {n} | " + " | ".join(vals) + f" | {gib / 2**30:.2f} | {live / 2**30:.2f} |" if gib is not None
                     else f"| {n} | " + " | ".join(vals) + " | | |")
    lines += ["", "| stage | first night s | worst incremental night / first | night K / night 2 | target (<= 25%, <= 1.25x) |",
              "|---|---:|---:|---:|---|"]
    for st, v in summary(result).items():
        share = f"{v['worst_share']:.0%}" if v["worst_share"] is not None else ""
        flat = f"{v['flat']:.2f}x" if v["flat"] is not None else ""
        met = "not checked (grows with active users / runs on schedule)" if not v["checked"] else (
            "met" if v["met"] else ("NOT met" if v["met"] is not None else ""))
        lines.append(f"| {st} | {v['first']:.1f} | {share} | {flat} | {met} |")
    last = str(nights[-1]) if nights else None
    lake_b = result["storage_bytes"].get(last, result["storage_bytes"].get(nights[-1])) if nights else None
    live_b = result["live_bytes"].get(last, result["live_bytes"].get(nights[-1])) if nights else None
    if lake_b and live_b:
        lines += ["", f"Lake after night {last}: {lake_b / 2**30:.2f} GiB, {lake_b / live_b:.2f}x the live tables "
                  f"({live_b / 2**30:.2f} GiB, the kept run dates included); VACUUM keeps what the versions of the last "
                  f"{result.get('retained_nights', '?')} nights need (goal: within 2x)."]
    return "\n".join(lines) + "\n"


def _plot(result: dict, path: Path) -> None:
    from crossrec.bench import pyplot

    plt = pyplot(path)
    if plt is None:
        return
    fig, ax = plt.subplots(figsize=(7, 4))
    for st in ALL_STAGES:
        rs = sorted((r for r in result["records"] if r["stage"] == st), key=lambda r: r["night"])
        if rs:
            ax.plot([r["night"] for r in rs], [r["seconds"] for r in rs], marker="o", label=st)
    ax.set_xlabel("night")
    ax.set_ylabel("wall seconds")
    ax.set_yscale("log")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)

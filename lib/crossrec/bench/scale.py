"""Cost curve: every nightly stage at growing user counts -- wall time and peak memory.

    crossrec bench scale --out DIR [--users 10000,100000,1000000 --domains 5 --events 20 --items-per-domain 2000
                                    --train-users 20000 --epochs 1]

For each user count N (in the order given): ``crossrec generate`` writes a raw data set (N users, ``--domains``
domains, ``--events`` mean events per user, ``--items-per-domain`` items per domain -- the catalog does not grow
with the users), then each nightly stage runs as its own ``crossrec <stage>`` process, exactly as the Airflow DAG
runs them, into a fresh lake: ingest -> clean -> features -> train -> score (top-10 per domain for *every* user).

Training fits on a seeded sample of at most ``--train-users`` users (``crossrec train --max-users``) for
``--epochs`` epochs: the model is fitted on a sample and every user is scored, so the training cost is flat in N
by design (said in the report). Evaluation is not a nightly stage and is not run here.

Per stage and N: wall seconds and the peak resident memory of the stage's whole process tree (the driver, its
JVM, Python workers, Ray's daemons; RSS summed, sampled every 0.25 s -- shared pages count once per process, so
the figure errs high). Between consecutive N, each stage's growth exponent ``log(t2/t1) / log(N2/N1)`` (1.0 =
linear). Targets: the largest run end to end under 60 minutes, peak memory under 16 GiB, no exponent above 1.

Writes ``DIR/scale.json`` (records ``{stage, users, value, unit, peak_rss_gib, rows}``, rewritten after every
stage so a long run's finished stages survive), ``DIR/scale.md``, ``DIR/scale.png``; each stage's log is
``DIR/n<N>/logs/<stage>.log``. ``--keep`` keeps each size's raw data and lake (default: removed after the size).
"""
from __future__ import annotations

import json
import logging
import math
import os
import secrets
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from crossrec import columns as C

log = logging.getLogger(__name__)

STAGES = ("ingest", "clean", "features", "train", "score")
TARGET_TOTAL_S = 3600.0
TARGET_PEAK_GIB = 16.0
GIB = 1024**3


class ScaleError(RuntimeError):
    """A stage of the cost-curve run failed (the message names it and the log file)."""


@dataclass(frozen=True)
class ScaleSpec:
    out_dir: str
    users: tuple[int, ...] = (10_000, 100_000, 1_000_000)
    domains: int = 5
    events: float = 20.0
    items_per_domain: int = 2_000
    train_users: int = 20_000
    epochs: int = 1
    workers: int = 2
    k: int = 10
    keep: bool = False
    seed: int = 7

    def __post_init__(self) -> None:
        if not self.users or min(self.users) < 1:
            raise ValueError(f"ScaleSpec.users must be positive user counts, got {self.users}")
        if self.train_users < 1 or self.epochs < 1:
            raise ValueError("ScaleSpec: train_users and epochs must be >= 1")


class PeakRSS:
    """Samples the summed RSS of a process and all its descendants until stopped; ``peak`` in bytes."""

    def __init__(self, pid: int, every_s: float = 0.25) -> None:
        import psutil

        self._root = psutil.Process(pid)
        self._every = every_s
        self._stop = threading.Event()
        self.peak = 0
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> int:
        import psutil

        total = 0
        try:
            procs = [self._root, *self._root.children(recursive=True)]
        except psutil.Error:
            return 0
        for p in procs:
            try:
                total += p.memory_info().rss
            except psutil.Error:  # exited between listing and reading
                continue
        return total

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._sample())
            self._stop.wait(self._every)

    def __enter__(self) -> "PeakRSS":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def _crossrec() -> list[str]:
    exe = shutil.which("crossrec", path=os.path.dirname(sys.executable))
    return [exe] if exe else [sys.executable, "-m", "crossrec.cli.main"]


def run_stage(name: str, args: list[str], log_file: Path) -> tuple[float, int]:
    """Run ``crossrec <args>`` as a process of its own; (wall seconds, peak RSS bytes of its process tree)."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    t0 = time.perf_counter()
    with open(log_file, "w", encoding="utf-8") as fh:
        proc = subprocess.Popen([*_crossrec(), *args], stdout=fh, stderr=subprocess.STDOUT, env=env)
        with PeakRSS(proc.pid) as mem:
            rc = proc.wait()
    wall = time.perf_counter() - t0
    if rc != 0:
        tail = log_file.read_text(encoding="utf-8", errors="replace")[-3000:]
        raise ScaleError(f"{name} exited {rc} after {wall:.0f}s (log {log_file}):\n{tail}")
    return wall, mem.peak


def _rows(lake: Path, table: str) -> int:
    from crossrec.io.readers import read_table

    return len(read_table(str(lake), table, columns=[C.USER_ID] if table != "silver.items" else [C.ITEM_ID]))


def growth(records: list[dict]) -> dict[str, list[dict]]:
    """Per stage, the exponent ``log(t2/t1)/log(N2/N1)`` between consecutive user counts (1.0 = linear)."""
    out: dict[str, list[dict]] = {}
    for stage in {r["stage"] for r in records}:
        rs = sorted((r for r in records if r["stage"] == stage), key=lambda r: r["users"])
        out[stage] = [{"from": a["users"], "to": b["users"],
                       "exponent": round(math.log(b["value"] / a["value"]) / math.log(b["users"] / a["users"]), 2)}
                      for a, b in zip(rs, rs[1:]) if a["value"] > 0 and b["users"] > a["users"]]
    return out


def stage_commands(spec: ScaleSpec, n: int, size_dir: Path) -> dict[str, list[str]]:
    """The ``crossrec`` arguments of the data generator and of every stage for N users under ``size_dir``."""
    raw, lake, key = size_dir / "raw", size_dir / "lake", size_dir / "pseudonym.key"
    common = ["--lake-root", str(lake), "--run-date", "2025-01-01", "--pseudonym-key-file", str(key)]
    return {
        "generate": ["generate", str(raw), "--users", str(n), "--domains", str(spec.domains), "--items-per-domain",
                     str(spec.items_per_domain), "--mean-events", str(spec.events), "--seed", str(spec.seed), "--overwrite"],
        "ingest": ["ingest", *common, "--raw-dir", str(raw)],
        "clean": ["clean", *common, "--raw-dir", str(raw)],
        "features": ["features", *common, "--raw-dir", str(raw)],
        "train": ["train", *common, "--workers", str(spec.workers), "--epochs", str(spec.epochs), "--patience", "1",
                  "--max-users", str(spec.train_users), "--seed", str(spec.seed)],
        "score": ["score", *common, "--k", str(spec.k)],
    }


def run_size(spec: ScaleSpec, n: int, out: Path, on_record=None) -> list[dict]:
    """Generate N users and run every stage on them; one record per stage (and one for the data generator),
    each also passed to ``on_record`` as soon as it is measured."""
    size_dir = out / f"n{n}"
    raw, lake, logs = size_dir / "raw", size_dir / "lake", size_dir / "logs"
    shutil.rmtree(size_dir, ignore_errors=True)
    logs.mkdir(parents=True)
    (size_dir / "pseudonym.key").write_text(secrets.token_hex(32) + "\n", encoding="utf-8")
    per_stage = stage_commands(spec, n, size_dir)
    records = []
    wall, peak = run_stage("generate", per_stage["generate"], logs / "generate.log")
    records.append({"stage": "generate (test data)", "users": n, "value": round(wall, 1), "unit": "s",
                    "peak_rss_gib": round(peak / GIB, 2)})
    if on_record:
        on_record(records[-1])
    log.info("n=%d: generate %.1fs, peak %.2f GiB", n, wall, peak / GIB)
    for stage in STAGES:
        wall, peak = run_stage(stage, per_stage[stage], logs / f"{stage}.log")
        rec = {"stage": stage, "users": n, "value": round(wall, 1), "unit": "s", "peak_rss_gib": round(peak / GIB, 2)}
        if stage == "clean":
            rec["rows"] = _rows(lake, "silver.interactions")
        if stage == "score":
            rec["rows"] = _rows(lake, "gold.recommendations")
        records.append(rec)
        if on_record:
            on_record(rec)
        log.info("n=%d: %s %.1fs, peak %.2f GiB%s", n, stage, wall, peak / GIB,
                 f", {rec['rows']:,} rows" if "rows" in rec else "")
    if not spec.keep:
        shutil.rmtree(raw, ignore_errors=True)
        shutil.rmtree(lake, ignore_errors=True)
    return records


def summarize(spec: ScaleSpec, records: list[dict]) -> dict:
    """Totals, exponents and the targets' verdicts for the records so far."""
    sizes = sorted({r["users"] for r in records})
    totals = {n: round(sum(r["value"] for r in records if r["users"] == n and r["stage"] in STAGES), 1) for n in sizes}
    peaks = {n: max(r["peak_rss_gib"] for r in records if r["users"] == n) for n in sizes}
    exps = growth([r for r in records if r["stage"] in STAGES])
    complete = [n for n in sizes if {r["stage"] for r in records if r["users"] == n} >= set(STAGES)]
    largest = complete[-1] if complete else None  # the targets are judged on the largest finished size
    worst = max((e["exponent"] for es in exps.values() for e in es), default=None)
    return {"records": records, "spec": asdict(spec), "cpus": os.cpu_count(),
            "total_s": totals, "peak_rss_gib": peaks, "growth_exponents": exps, "complete_sizes": complete,
            "targets": {"largest_users": largest, "total_s": TARGET_TOTAL_S, "peak_rss_gib": TARGET_PEAK_GIB,
                        "max_exponent": 1.0,
                        "total_ok": largest is not None and totals[largest] < TARGET_TOTAL_S,
                        "peak_ok": largest is not None and peaks[largest] < TARGET_PEAK_GIB,
                        "linear_ok": worst is None or worst <= 1.0, "worst_exponent": worst}}


def report(result: dict, out: Path) -> str:
    """scale.md (and scale.png); returns the markdown."""
    recs, sizes = result["records"], sorted(result["total_s"], key=int)
    stages = ["generate (test data)", *STAGES]
    lines = ["# Cost curve", "", f"{result['cpus']} CPUs; {result['spec']['domains']} domains, ~{result['spec']['events']:g} "
             f"events per user, {result['spec']['items_per_domain']:,} items per domain; training on at most "
             f"{result['spec']['train_users']:,} users x {result['spec']['epochs']} epoch(s).", "",
             "| stage | " + " | ".join(f"{int(n):,} users: s (peak GiB)" for n in sizes) + " | growth exponents |",
             "|---|" + "---:|" * len(sizes) + "---|"]
    for st in stages:
        cells = []
        for n in sizes:
            r = next((r for r in recs if r["stage"] == st and r["users"] == n), None)
            cells.append(f"{r['value']:,.1f} ({r['peak_rss_gib']:.1f})" if r else "")
        ex = ", ".join(f"{e['exponent']:.2f}" for e in result["growth_exponents"].get(st, []))
        lines.append(f"| {st} | " + " | ".join(cells) + f" | {ex} |")
    lines.append("| **pipeline total** | " + " | ".join(f"**{result['total_s'][n]:,.1f}** ({result['peak_rss_gib'][n]:.1f})"
                                                       for n in sizes) + " | |")
    t = result["targets"]
    if t["largest_users"] is None:
        lines += ["", "No size has finished every stage yet.", ""]
    else:
        lines += ["", f"Largest run ({t['largest_users']:,} users): {result['total_s'][t['largest_users']]:,.0f} s end to end "
                  f"(target < {t['total_s']:,.0f} s: {'met' if t['total_ok'] else 'missed'}), peak "
                  f"{result['peak_rss_gib'][t['largest_users']]:.1f} GiB (target < {t['peak_rss_gib']:.0f} GiB: "
                  f"{'met' if t['peak_ok'] else 'missed'}); worst growth exponent "
                  f"{t['worst_exponent'] if t['worst_exponent'] is not None else 'n/a'} (target <= 1: "
                  f"{'met' if t['linear_ok'] else 'missed'}).", ""]
    md = "\n".join(lines)
    (out / "scale.md").write_text(md, encoding="utf-8")
    _plot(result, out / "scale.png")
    return md


def _plot(result: dict, path: Path) -> None:
    from crossrec.bench import pyplot

    plt = pyplot(path)
    if plt is None:
        return
    if not any(r["stage"] in STAGES for r in result["records"]):
        return  # nothing to draw before the first stage has finished
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(10, 4))
    for st in STAGES:
        rs = sorted((r for r in result["records"] if r["stage"] == st), key=lambda r: r["users"])
        ax.plot([r["users"] for r in rs], [r["value"] for r in rs], marker="o", label=st)
        bx.plot([r["users"] for r in rs], [r["peak_rss_gib"] for r in rs], marker="o", label=st)
    for a, y in ((ax, "wall seconds"), (bx, "peak RSS (GiB)")):
        a.set_xscale("log")
        a.set_xlabel("users")
        a.set_ylabel(y)
    ax.set_yscale("log")
    bx.axhline(TARGET_PEAK_GIB, color="grey", linestyle="--", linewidth=1)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run_scale(spec: ScaleSpec) -> dict:
    """Every size in turn; scale.json/.md/.png rewritten after each; returns the result."""
    out = Path(spec.out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    records: list[dict] = []
    result: dict = {}
    md = ""

    def save(rec: dict) -> None:  # after every stage: a long run's finished stages survive
        nonlocal result, md
        records.append(rec)
        result = summarize(spec, records)
        (out / "scale.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
        md = report(result, out)

    for n in spec.users:
        t0 = time.time()
        log.info("cost curve: %d users (%d domains, ~%g events each)", n, spec.domains, spec.events)
        run_size(spec, n, out, on_record=save)
        log.info("cost curve: %d users done in %.0fs", n, time.time() - t0)
    print(md)
    return result


__all__ = ["ScaleSpec", "ScaleError", "PeakRSS", "run_scale", "run_size", "run_stage", "stage_commands", "growth", "summarize", "STAGES"]

"""Capacity plan: the nightly cost of a platform of a given size, projected from measured per-stage costs.

    crossrec bench capacity --nightly DIR/nightly.json [--scale DIR/scale.json] --out docs/capacity.md

Measured constants (this machine's cores; every figure names the run it comes from):

* data stages (ingest, clean, features): from ``crossrec bench nightly``. Night 1 processes the whole history:
  ``full = T1 * cores / E1`` core-seconds per event. An incremental night costs ``new * n + hist * H``: the new
  events at night 1's rate, and everything the measured incremental nights took beyond that (the median) charged to
  the history ``H`` (the merges scan the table they merge into). That is an upper bound: commits and checks do not
  grow with the history. On a cluster the work divides over the executors' cores.
* score: per scored user, from ``crossrec bench scale`` (``--scale``; the largest size) or the nightly run's score
  figures; it grows with active users only.
* train: a fixed-size sample (``--max-users``) on the retrain day: flat in the platform's size, from the same runs.
* storage: bytes per event of the live tables after night 1 (``live_bytes``).

Assumptions, stated so a reader can disagree: work scales linearly over executor cores (no skew), the new share
is 1% of the history a night, items cost nothing next to events except the text encoder (new and changed items
only, at the measured items/s), and one GPU worker scores like ``gpu_speedup`` CPU cores (a parameter, 1 = none
measured here).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

SIZES = [  # users, items, events of history
    (10_000_000, 1_000_000, 1_000_000_000),
    (100_000_000, 10_000_000, 10_000_000_000),
]
NEW_SHARE = 0.01
DATA_STAGES = ("ingest", "clean", "features")


@dataclass(frozen=True)
class StageModel:
    """Nightly seconds of a stage on ``cores`` cores: ``fixed + (per_new * new + per_hist * hist) / cores``."""

    stage: str
    fixed_s: float
    per_new_core_s: float
    per_hist_core_s: float
    source: str

    def seconds(self, new: float, hist: float, cores: int) -> float:
        return self.fixed_s + (self.per_new_core_s * new + self.per_hist_core_s * hist) / cores


def fit_data_stages(nightly: dict) -> dict[str, StageModel]:
    """Per data stage, the fixed / per-new-event / per-history-event constants of the nightly run (see module doc)."""
    cores = nightly.get("cores") or 2
    gen = {int(k): v for k, v in nightly.get("nights_generated", {}).items()}
    by = {}
    for r in nightly["records"]:
        by.setdefault(r["stage"], {})[int(r["night"])] = r
    e1 = by["ingest"][1]["rows_in"]
    out = {}
    for stage in DATA_STAGES:
        if stage not in by or 1 not in by[stage]:
            continue
        t1 = by[stage][1]["seconds"]
        full = t1 * cores / e1
        rows = []  # (history events before the night, remainder seconds after the per-new-event work)
        hist = e1
        for n in sorted(k for k in by[stage] if k > 1):
            new = gen.get(n, {}).get("events", 0) + gen.get(n, {}).get("resent_rows", 0)
            rows.append((hist, by[stage][n]["seconds"] - full * new / cores))
            hist += new
        # what an incremental night costs beyond the per-new-event work is charged to the history (the merges scan
        # the table they merge into): an upper bound, since commits and checks do not grow with it
        rem = sorted(max(r, 0.0) for _, r in rows)
        med_rem, med_hist = (rem[len(rem) // 2], sorted(h for h, _ in rows)[len(rows) // 2]) if rows else (0.0, 1)
        slope, fixed = med_rem / med_hist, 0.0
        out[stage] = StageModel(stage, fixed, full, slope * cores,
                                f"bench nightly: night 1 {t1:.0f} s for {e1:,} events; nights 2..{max(by[stage])}")
    return out


def score_model(nightly: dict, scale: dict | None) -> StageModel | None:
    """Seconds per scored user (core-seconds), from the scale run's largest size, else the nightly run."""
    cores = 2
    if scale:
        recs = [r for r in scale.get("records", []) if r["stage"] == "score"]
        if recs:
            top = max(recs, key=lambda r: r["users"])
            return StageModel("score", 0.0, top["value"] * cores / top["users"], 0.0,
                              f"bench scale: {top['value']:.0f} s for {top['users']:,} users")
    recs = [r for r in nightly["records"] if r["stage"] == "score"]
    if recs:
        users = nightly["spec"]["users"]
        t = sorted(r["seconds"] for r in recs)[len(recs) // 2]
        return StageModel("score", 0.0, t * cores / users, 0.0, f"bench nightly: median {t:.0f} s for ~{users:,} users")
    return None


def plan(nightly: dict, scale: dict | None, executors: tuple[int, ...] = (8, 32, 128), cores_per_executor: int = 8,
         gpu_workers: tuple[int, ...] = (4, 16), gpu_speedup: float = 1.0) -> str:
    """The capacity plan as markdown."""
    models = fit_data_stages(nightly)
    sc = score_model(nightly, scale)
    live = {int(k): v for k, v in nightly.get("live_bytes", {}).items()}
    e1 = next(r["rows_in"] for r in nightly["records"] if r["stage"] == "ingest" and int(r["night"]) == 1)
    bytes_per_event = live.get(1, 0) / e1 if e1 else 0.0
    lines = ["# Capacity plan", "",
             "Generated by `crossrec bench capacity` from measured runs (formulas and constants below; the module "
             "docstring of lib/crossrec/bench/capacity.py states the assumptions). Re-run it after a new "
             "`crossrec bench nightly` / `crossrec bench scale`.", "",
             "## Measured constants", "",
             "| stage | fixed s a night | core-s per new event | core-s per history event a night | from |",
             "|---|---:|---:|---:|---|"]
    for m in [*models.values(), *([sc] if sc else [])]:
        lines.append(f"| {m.stage} | {m.fixed_s:.1f} | {m.per_new_core_s:.2e} | {m.per_hist_core_s:.2e} | {m.source} |")
    lines += ["", "The per-history column charges all of an incremental night's time beyond its new events to the "
              "history: the projections err high for stages whose fixed costs (commits, checks) dominate here."]
    lines += ["", f"Live tables: {bytes_per_event:.0f} bytes per event of history (night 1 of the nightly run).", "",
              "Formula per stage and night: `seconds = fixed + (per_new * new_events + per_hist * history_events) / "
              "cores`; score: `per_user * active_users / cores` (a GPU worker counted as "
              f"{gpu_speedup:g} core(s)); core-hours = (seconds - fixed) * cores / 3600.", ""]
    for users, items, events in SIZES:
        new = events * NEW_SHARE
        lines += [f"## {users / 1e6:.0f}M users, {items / 1e6:.0f}M items, {events / 1e9:.0f}B events of history, "
                  f"{NEW_SHARE:.0%} new a night", "",
                  "| stage | core-hours a night | " + " | ".join(f"wall h on {n}x{cores_per_executor} cores" for n in executors) + " |",
                  "|---|---:|" + "---:|" * len(executors)]
        walls = {}
        for m in models.values():
            core_h = (m.per_new_core_s * new + m.per_hist_core_s * events) / 3600
            w = [m.seconds(new, events, n * cores_per_executor) / 3600 for n in executors]
            walls[m.stage] = w
            lines.append(f"| {m.stage} | {core_h:,.1f} | " + " | ".join(f"{x:,.2f}" for x in w) + " |")
        if sc:
            core_h = sc.per_new_core_s * users / 3600
            w = [sc.seconds(users, 0, n * cores_per_executor) / 3600 for n in executors]
            walls["score"] = w
            lines.append(f"| score (every active user) | {core_h:,.1f} | " + " | ".join(f"{x:,.2f}" for x in w) + " |")
            g = [sc.seconds(users, 0, max(1, int(k * gpu_speedup))) / 3600 for k in gpu_workers]
            gpu_note = "Score on GPU workers (each counted as %g core): " % gpu_speedup + ", ".join(
                f"{k} GPUs {x:,.1f} h" for k, x in zip(gpu_workers, g)) + "."
        else:
            gpu_note = ""
        worst = max(walls, key=lambda s: walls[s][0]) if walls else "-"
        lines += ["", f"Bottleneck first: **{worst}** (the longest stage at {executors[0]} executors). Live tables about "
                  f"{bytes_per_event * events / 2**40:,.1f} TiB. {gpu_note}", ""]
    return "\n".join(lines) + "\n"


def run_capacity(nightly_json: str, scale_json: str | None, out: str) -> str:
    nightly = json.loads(Path(nightly_json).read_text(encoding="utf-8"))
    scale = json.loads(Path(scale_json).read_text(encoding="utf-8")) if scale_json else None
    text = plan(nightly, scale)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(text, encoding="utf-8")
    print(text)
    return text


__all__ = ["StageModel", "fit_data_stages", "score_model", "plan", "run_capacity"]

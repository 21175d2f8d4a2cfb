"""Training benchmark: samples/s and epoch time for each Ray Train worker count (default 1 and 2), the share of
time spent waiting for data, and the text encoder's items/s.

    crossrec bench training --out DIR [--users 5000 --domains 3 | --lake-root L] [--epochs 2] [--workers 1,2]

Generates a raw data set, runs ingest -> clean -> features into ``DIR/lake`` (one Spark session), or with
``--lake-root L`` takes the gold tables of a lake built earlier (a real data set's, say; the bench only reads
it: models and Ray run storage go under ``DIR``), then trains the default model (text + id, full softmax) for
``--epochs`` epochs with each of the ``--workers`` worker counts (``crossrec.train.driver.train``; one CPU for a
single worker, half a CPU each otherwise). Per-epoch figures come from the artifact's metrics.json: samples/s,
train seconds per epoch, ``data_share`` = rank 0's time waiting for and collating batches / epoch time;
``speedup`` = each count's samples/s over the smallest count's. The roofline (:func:`bare_torch_loop`) trains the
same model on the same windows and batch size in a plain PyTorch loop in this process, on one worker's threads;
``share_of_torch`` = each count's samples/s over it. The text encoder (all-MiniLM-L6-v2, the features stage's model)
is timed on the catalog's item texts in this process.

Writes ``DIR/training.json`` (records ``{system, stage, value, unit, ...}``: system ``crossrec`` with ``workers``, and
``torch``, in samples/s), ``DIR/training.md``, ``DIR/training.png``.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from crossrec import columns as C

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainingSpec:
    out_dir: str
    users: int = 5_000
    domains: int = 3
    epochs: int = 2
    encoder_items: int = 2_000
    seed: int = 7
    lake_root: str | None = None  # a lake with the gold tables: time training on it (users/domains unused)
    workers: tuple[int, ...] = (1, 2)  # Ray Train worker counts, each timed in a run of its own


def _check_lake(lake: str) -> None:
    """``--lake-root``: the lake must hold the gold tables that training reads (and silver.items: item texts)."""
    from crossrec.bench.quality import GOLD_TABLES, BenchError, missing_tables

    missing = missing_tables(lake, (*GOLD_TABLES, "silver.items"))
    if missing:
        raise BenchError(f"--lake-root: {lake} has no {', '.join(missing)}; run `crossrec prepare` on it first")


def run_training(spec: TrainingSpec, spark=None) -> dict:
    import secrets
    import shutil

    from crossrec.bench.quality import BenchError
    from crossrec.bench.scoring import _plot
    from crossrec.data.bronze import run_ingest
    from crossrec.data.gold import run_features
    from crossrec.data.silver import run_clean
    from crossrec.data.synthetic import SyntheticSpec, generate
    from crossrec.io.config import resolve_config
    from crossrec.io.readers import read_table
    from crossrec.io.spark import build_spark
    from crossrec.text.encoder import TextEncoder
    from crossrec.train.driver import train

    if not spec.workers or min(spec.workers) < 1 or len(set(spec.workers)) != len(spec.workers):
        raise BenchError(f"--workers: distinct worker counts of 1 or more, e.g. 1,2,4; got {list(spec.workers)}")
    out = Path(spec.out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    if spec.lake_root:
        lake = Path(spec.lake_root).resolve()
        _check_lake(str(lake))
        users = int(read_table(str(lake), "gold.user_sequences", columns=[C.USER_ID]).user_id.nunique())
        domains = int(read_table(str(lake), "gold.item_index", columns=[C.DOMAIN]).domain.nunique())
        log.info("timing training on the lake %s (%d users, %d domains)", lake, users, domains)
    else:
        raw, lake = out / "raw", out / "lake"
        users, domains = spec.users, spec.domains
        generate(str(raw), SyntheticSpec(users=users, domains=domains, seed=spec.seed), overwrite=True)
        shutil.rmtree(lake, ignore_errors=True)
        spark = spark or build_spark("crossrec-bench-training", "local[*]", {})
        cfg = resolve_config(overrides={"lake_root": str(lake), "raw_dir": str(raw), "run_date": "2025-01-01",
                                        "pseudonym_key": secrets.token_hex(32)})
        for data_stage in (run_ingest, run_clean, run_features):
            data_stage(cfg, spark)

    records = []
    for workers in sorted(spec.workers):
        t0 = time.perf_counter()
        folder = train(_train_config(spec, lake, workers, model_root=str(out / f"models-{workers}"),
                                     storage_path=str(out / f"ray-{workers}")))
        wall = time.perf_counter() - t0
        m = json.loads((folder / "metrics.json").read_text(encoding="utf-8"))
        hist = m["history"]
        records.append({"system": "crossrec", "stage": f"train {workers} worker{'s' if workers > 1 else ''}",
                        "value": round(m["samples_per_s"], 1),
                        "unit": "samples/s", "epoch_s": round(float(np.mean([h["epoch_train_s"] for h in hist])), 3),
                        "data_share": round(float(np.mean([h.get("data_share", float("nan")) for h in hist])), 3),
                        "workers": workers, "train_windows": m["train_windows"], "wall_s": round(wall, 1),
                        "users": users})
        log.info("%s", records[-1])

    runs = list(records)
    one = _train_config(spec, lake, 1)
    torch_run = bare_torch_loop(one, spec.epochs, threads=max(1, int(one.cpus_per_worker)))
    records.append({"system": "torch", "stage": "bare PyTorch loop (1 process, data in memory)", **torch_run})
    log.info("%s", records[-1])

    texts = read_table(str(lake), "silver.items", columns=[C.TEXT]).text.tolist()[: spec.encoder_items]
    enc = TextEncoder()
    enc.encode(texts[:32])  # warm-up
    t0 = time.perf_counter()
    enc.encode(texts)
    records.append({"stage": "text encoder (all-MiniLM-L6-v2)", "value": round(len(texts) / (time.perf_counter() - t0), 1),
                    "unit": "items/s", "items": len(texts)})
    result = {"records": records, "spec": asdict(spec), "lake": str(lake), "users": users, "domains": domains,
              "speedup": speedups(runs),
              "share_of_torch": {r["workers"]: r["value"] / torch_run["value"] for r in runs}}
    (out / "training.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    source = f"users of {lake}" if spec.lake_root else "generated users"
    lines = ["# Training benchmark", "", f"{users:,} {source}, {domains} domains, {spec.epochs} epochs.", "",
             "| stage | value | unit | epoch s | data share |", "|---|---:|---|---:|---:|"]
    lines += [f"| {r['stage']} | {r['value']:,.1f} | {r['unit']} | {r.get('epoch_s', '')} | {r.get('data_share', '')} |"
              for r in records]
    base = runs[0]["workers"]
    lines += [""] + [f"{n} workers = {x:.2f}x the samples/s of {base} worker{'s' if base > 1 else ''}."
                     for n, x in result["speedup"].items() if n != base]
    lines += [f"crossrec with {n} worker{'s' if n > 1 else ''} = {x:.0%} of the bare PyTorch loop's samples/s "
              f"({torch_run['threads']} thread(s), as one worker)." for n, x in result["share_of_torch"].items()] + [""]
    (out / "training.md").write_text("\n".join(lines), encoding="utf-8")
    _plot(runs, out / "training.png", unit="samples/s")
    print("\n".join(lines))
    return result


def _train_config(spec: TrainingSpec, lake: Path, workers: int, **paths: str):
    """The default model's training config for ``workers`` Ray workers (one CPU for one worker, half a CPU each
    otherwise: two workers share this machine's two cores with the driver)."""
    from crossrec.train.config import TrainConfig

    return TrainConfig(lake_root=str(lake), workers=workers, epochs=spec.epochs, patience=spec.epochs,
                       cpus_per_worker=1.0 if workers == 1 else 0.5, seed=spec.seed, **paths)


def bare_torch_loop(cfg, epochs: int, threads: int) -> dict:
    """The roofline of training: the same model, windows and batch size as ``crossrec train`` with ``cfg``, in a plain
    single-process PyTorch loop (no Ray, no DDP, every batch collated in memory before the clock starts), on
    ``threads`` torch threads (those of one crossrec worker, so the ratio is what the framework costs). Times the
    training steps of ``epochs`` epochs, as crossrec's samples/s does (validation excluded); returns
    ``{value (samples/s), unit, threads, epoch_s, samples, device}``."""
    import torch

    from crossrec.train.data import load_training_data, resolve_versions
    from crossrec.train.windows import collate_train, length_bucketed
    from crossrec.train.worker import POOL_BATCHES, build_model, item_lookup

    data = load_training_data(cfg, resolve_versions(cfg.lake_root, None))
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(cfg.seed)
    model, optimizer = build_model(data.model_config(cfg), data.catalog, device, lr=cfg.lr, weight_decay=cfg.weight_decay)
    model.train()
    item_domain = item_lookup(data.catalog, C.DOMAIN_IDX)
    rng = np.random.default_rng(cfg.seed)
    table = data.train.take(rng.permutation(data.train.num_rows))
    pool = POOL_BATCHES * cfg.batch_size
    pools = [table.slice(i, pool) for i in range(0, table.num_rows, pool)]
    batches = [{k: torch.from_numpy(v).to(device) for k, v in collate_train(b, item_domain).items()}
               for b in length_bucketed(pools, cfg.batch_size, rng)]
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        epoch_s = []
        for _ in range(epochs):
            t0 = time.perf_counter()
            for b in batches:
                loss = model(b, loss=True)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
            if device.type == "cuda":
                torch.cuda.synchronize()
            epoch_s.append(time.perf_counter() - t0)
    finally:
        torch.set_num_threads(before)
    samples = epochs * data.train.num_rows
    return {"value": round(samples / sum(epoch_s), 1), "unit": "samples/s", "threads": threads,
            "epoch_s": round(float(np.mean(epoch_s)), 3), "samples": samples, "device": device.type}


def speedups(runs: list[dict]) -> dict[int, float]:
    """Samples/s of each worker count's run over that of the smallest count (``{workers: ratio}``)."""
    base = min(runs, key=lambda r: r["workers"])
    return {r["workers"]: r["value"] / base["value"] for r in sorted(runs, key=lambda r: r["workers"])}


__all__ = ["TrainingSpec", "run_training", "speedups", "bare_torch_loop"]

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

**Time to quality** (``--losses softmax,sampled``): instead of the throughput runs, trains the default model once per
loss with the largest ``--workers`` count for at most ``--epochs`` epochs, stopped early as ``crossrec train`` stops
(no refit, no score terms, no id shrinkage: the Transformer as each loss leaves it), and reads each epoch's
validation NDCG@10 and seconds (training + validation) from metrics.json. The target is the best validation NDCG@10
of the first loss named (the full softmax); each loss gets the seconds until its first epoch at or above it
(``time_to_target``, None = never) and the ratio to the first loss's. On a real catalog each run is a full training:
give it a prepared lake (``--lake-root``).

**Step cost by catalog size** (``--catalog-sizes 1000,4096,16384``): one training step (forward, backward, AdamW) of the
default model under each loss, on random right-padded windows of ``max_seq_len`` events over two domains of that many
items each, in this process (:func:`loss_step_costs`): where the sampled softmax's step gets cheaper than the full
softmax's (:func:`crossover`), which the ``loss='auto'`` rule (``crossrec.train.config``) follows.

Writes ``DIR/training.json`` (records ``{system, stage, value, unit, ...}``: system ``crossrec`` with ``workers``, and
``torch``, in samples/s; with ``--losses``, system ``crossrec`` with ``loss`` in seconds to the target; with
``--catalog-sizes``, system ``crossrec`` with ``loss`` and ``items_per_domain`` in ms/step), ``DIR/training.md``,
``DIR/training.png`` (throughput runs only).
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from crossrec import columns as C
from crossrec.train.config import METRIC

log = logging.getLogger(__name__)

LOSSES = ("softmax", "sampled")  # the losses --losses and --catalog-sizes compare (crossrec.model.config.ModelConfig.loss)


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
    losses: tuple[str, ...] = ()  # time to quality of these losses (the first = the reference) instead of throughput
    catalog_sizes: tuple[int, ...] = ()  # items per domain at which each loss's step cost is measured


def _check_lake(lake: str) -> None:
    """``--lake-root``: the lake must hold the gold tables that training reads (and silver.items: item texts)."""
    from crossrec.bench.quality import GOLD_TABLES, BenchError, missing_tables

    missing = missing_tables(lake, (*GOLD_TABLES, "silver.items"))
    if missing:
        raise BenchError(f"--lake-root: {lake} has no {', '.join(missing)}; run `crossrec prepare` on it first")


def run_training(spec: TrainingSpec, spark=None) -> dict:
    """Run the bench of ``spec`` (see the module docstring); returns what it writes to ``training.json``."""
    from crossrec.bench.quality import BenchError

    if not spec.workers or min(spec.workers) < 1 or len(set(spec.workers)) != len(spec.workers):
        raise BenchError(f"--workers: distinct worker counts of 1 or more, e.g. 1,2,4; got {list(spec.workers)}")
    unknown = sorted(set(spec.losses) - set(LOSSES))
    if unknown or len(set(spec.losses)) != len(spec.losses) or len(spec.losses) == 1:
        raise BenchError(f"--losses: two or more distinct losses of {', '.join(LOSSES)} (the first is the reference); "
                         f"got {list(spec.losses)}")
    if any(n < 1 for n in spec.catalog_sizes):
        raise BenchError(f"--catalog-sizes: items per domain, each 1 or more; got {list(spec.catalog_sizes)}")
    out = Path(spec.out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    lake, users, domains = _bench_lake(spec, out, spark)
    source = f"users of {lake}" if spec.lake_root else "generated users"
    epochs = f"at most {spec.epochs} epochs (early stopping)" if spec.losses else f"{spec.epochs} epochs"
    lines = ["# Training benchmark", "", f"{users:,} {source}, {domains} domains, {epochs}.", ""]
    result: dict = {"records": [], "spec": asdict(spec), "lake": str(lake), "users": users, "domains": domains}
    if spec.losses:
        _time_to_quality(spec, lake, out, result, lines)
    else:
        _throughput(spec, lake, out, result, lines)
    if spec.catalog_sizes:
        one = _train_config(spec, lake, 1)
        costs = loss_step_costs(spec.catalog_sizes, threads=max(1, int(one.cpus_per_worker)), batch_size=one.batch_size,
                                seq_len=one.max_seq_len, n_negatives=one.n_negatives, seed=spec.seed)
        result["records"] += costs
        result["crossover"] = crossover(costs)
        lines += ["| items a domain | " + " | ".join(f"{loss} ms/step" for loss in LOSSES) + " |",
                  "|---:|" + "---:|" * len(LOSSES)]
        for n in spec.catalog_sizes:
            ms = {r["loss"]: r["value"] for r in costs if r["items_per_domain"] == n}
            lines.append(f"| {n:,} | " + " | ".join(f"{ms[loss]:.1f}" for loss in LOSSES) + " |")
        x = result["crossover"]
        lines += ["", "The sampled softmax's step is cheaper from " + (f"{x:,} items a domain on." if x else
                                                                        "none of these catalog sizes on."), ""]
    (out / "training.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    (out / "training.md").write_text("\n".join(lines), encoding="utf-8")
    print("\n".join(lines))
    return result


def _bench_lake(spec: TrainingSpec, out: Path, spark=None) -> tuple[Path, int, int]:
    """The lake to train on, with its user and domain counts: ``--lake-root``'s, or a generated one under ``out``."""
    import secrets
    import shutil

    from crossrec.data.bronze import run_ingest
    from crossrec.data.gold import run_features
    from crossrec.data.silver import run_clean
    from crossrec.data.synthetic import SyntheticSpec, generate
    from crossrec.io.config import resolve_config
    from crossrec.io.readers import read_table
    from crossrec.io.spark import build_spark

    if spec.lake_root:
        lake = Path(spec.lake_root).resolve()
        _check_lake(str(lake))
        users = int(read_table(str(lake), "gold.user_sequences", columns=[C.USER_ID]).user_id.nunique())
        domains = int(read_table(str(lake), "gold.item_index", columns=[C.DOMAIN]).domain.nunique())
        log.info("timing training on the lake %s (%d users, %d domains)", lake, users, domains)
        return lake, users, domains
    raw, lake = out / "raw", out / "lake"
    generate(str(raw), SyntheticSpec(users=spec.users, domains=spec.domains, seed=spec.seed), overwrite=True)
    shutil.rmtree(lake, ignore_errors=True)
    spark = spark or build_spark("crossrec-bench-training", "local[*]", {})
    cfg = resolve_config(overrides={"lake_root": str(lake), "raw_dir": str(raw), "run_date": "2025-01-01",
                                    "pseudonym_key": secrets.token_hex(32)})
    for data_stage in (run_ingest, run_clean, run_features):
        data_stage(cfg, spark)
    return lake, spec.users, spec.domains


def _throughput(spec: TrainingSpec, lake: Path, out: Path, result: dict, lines: list[str]) -> None:
    """Samples/s per worker count, the bare loop's, the text encoder's items/s: into ``result`` and ``lines``."""
    from crossrec.bench.scoring import _plot
    from crossrec.io.readers import read_table
    from crossrec.text.encoder import TextEncoder
    from crossrec.train.driver import train

    records = result["records"]
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
                        "users": result["users"]})
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
    result["speedup"] = speedups(runs)
    result["share_of_torch"] = {r["workers"]: r["value"] / torch_run["value"] for r in runs}
    lines += ["| stage | value | unit | epoch s | data share |", "|---|---:|---|---:|---:|"]
    lines += [f"| {r['stage']} | {r['value']:,.1f} | {r['unit']} | {r.get('epoch_s', '')} | {r.get('data_share', '')} |"
              for r in records]
    base = runs[0]["workers"]
    lines += [""] + [f"{n} workers = {x:.2f}x the samples/s of {base} worker{'s' if base > 1 else ''}."
                     for n, x in result["speedup"].items() if n != base]
    lines += [f"crossrec with {n} worker{'s' if n > 1 else ''} = {x:.0%} of the bare PyTorch loop's samples/s "
              f"({torch_run['threads']} thread(s), as one worker)." for n, x in result["share_of_torch"].items()] + [""]
    _plot(runs, out / "training.png", unit="samples/s")


def _time_to_quality(spec: TrainingSpec, lake: Path, out: Path, result: dict, lines: list[str]) -> None:
    """One training per loss (see the module docstring), compared by :func:`time_to_target`: into ``result``, ``lines``."""
    from crossrec.train.config import TrainConfig
    from crossrec.train.driver import train

    workers = max(spec.workers)
    histories, walls = {}, {}
    for loss in spec.losses:
        t0 = time.perf_counter()
        folder = train(_train_config(spec, lake, workers, loss=loss, refit=False, terms=(), id_shrinkage=0.0,
                                     patience=TrainConfig.patience, model_root=str(out / f"models-{loss}"),
                                     storage_path=str(out / f"ray-{loss}")))
        walls[loss] = time.perf_counter() - t0
        histories[loss] = json.loads((folder / "metrics.json").read_text(encoding="utf-8"))["history"]
        log.info("%s: %s by epoch %s", loss, METRIC, [round(h[METRIC], 4) for h in histories[loss]])
    ttq = time_to_target(histories)
    ref = spec.losses[0]
    for loss, r in ttq["losses"].items():
        result["records"].append({"system": "crossrec", "stage": f"time to valid NDCG@10 {ttq['target']:.4f} ({loss})",
                                  "loss": loss, "value": r["time_to_target"], "unit": "s", "workers": workers,
                                  "epochs_to_target": r["epochs_to_target"], "best_valid_ndcg": r["best"],
                                  "best_epoch": r["best_epoch"], "train_s": r["train_s"], "wall_s": round(walls[loss], 1),
                                  "curve": r["curve"]})
    result["time_to_target"] = ttq
    lines += [f"Each loss trained with {workers} worker(s); target: the best validation NDCG@10 of {ref}, "
              f"{ttq['target']:.4f}.", "",
              "| loss | best valid NDCG@10 (epoch) | s to target (epochs) | vs " + ref + " | s in all |",
              "|---|---:|---:|---:|---:|"]
    for loss, r in ttq["losses"].items():
        reached = "never" if r["time_to_target"] is None else f"{r['time_to_target']:,.0f} ({r['epochs_to_target']})"
        ratio = "" if r["ratio"] is None else f"{r['ratio']:.2f}x"
        lines.append(f"| {loss} | {r['best']:.4f} ({r['best_epoch'] + 1}) | {reached} | {ratio} | {r['train_s']:,.0f} |")
    lines.append("")


def time_to_target(histories: dict[str, list[dict]]) -> dict:
    """Per-epoch ``history`` (metrics.json) of each loss's run -> when each reached the first run's best validation
    NDCG@10: ``{target, losses: {loss: {time_to_target, epochs_to_target, ratio, best, best_epoch, train_s, curve}}}``.

    An epoch's seconds are its training plus its validation (both losses validate alike, every epoch); ``curve`` =
    [cumulative seconds, valid NDCG@10] per epoch; ``time_to_target`` = the cumulative seconds at the first epoch at
    or above the target (None: never); ``ratio`` = that over the first loss's (None when either never got there)."""
    names = list(histories)
    assert names and all(histories[n] for n in names), "every loss needs at least one epoch of history"
    target = max(h[METRIC] for h in histories[names[0]])
    losses = {}
    for name in names:
        total, curve, reached = 0.0, [], None
        for h in histories[name]:
            total += h["epoch_train_s"] + h.get("epoch_valid_s", 0.0)
            curve.append([round(total, 1), round(h[METRIC], 5)])
            if reached is None and h[METRIC] >= target:
                reached = (round(total, 1), len(curve))
        best = max(range(len(curve)), key=lambda i: histories[name][i][METRIC])
        losses[name] = {"time_to_target": None if reached is None else reached[0],
                        "epochs_to_target": None if reached is None else reached[1],
                        "best": histories[name][best][METRIC], "best_epoch": int(histories[name][best].get("epoch", best)),
                        "train_s": round(total, 1), "curve": curve}
    ref = losses[names[0]]["time_to_target"]
    for r in losses.values():
        r["ratio"] = None if r["time_to_target"] is None or not ref else round(r["time_to_target"] / ref, 3)
    return {"target": target, "losses": losses}


def loss_step_costs(catalog_sizes, threads: int, batch_size: int = 128, seq_len: int = 50, n_negatives: int = 2048,
                    steps: int = 5, seed: int = 7) -> list[dict]:
    """Milliseconds per training step (forward, backward, AdamW) of the default model under each loss, for two domains
    of each of ``catalog_sizes`` items: ``batch_size`` full windows of ``seq_len`` random events and targets, random
    frozen text vectors, on ``threads`` torch threads (one worker's), the median of ``steps`` steps after one
    warm-up step. Records ``{system, stage, loss, items_per_domain, value, unit: ms/step}``."""
    import torch

    from crossrec.model.config import ModelConfig
    from crossrec.model.encoder import ItemFeatures
    from crossrec.model.transformer import CrossDomainTransformer

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    records = []
    try:
        for n in catalog_sizes:
            gen = torch.Generator().manual_seed(seed)
            n_items = 2 * n
            item_domain = torch.cat([torch.zeros(1), torch.zeros(n), torch.ones(n)]).long()
            features = ItemFeatures(text_emb=torch.randn(n_items + 1, ModelConfig.text_dim, generator=gen),
                                    item_domain=item_domain,
                                    item_attr=torch.zeros(n_items + 1, dtype=torch.long),
                                    domain_items=[torch.arange(1, n + 1), torch.arange(n + 1, n_items + 1)])
            shape = (batch_size, seq_len)
            items = torch.randint(1, n_items + 1, shape, generator=gen)
            targets = torch.randint(1, n_items + 1, shape, generator=gen)
            batch = {"item_idx": items, "domain_idx": item_domain[items], "target_item_idx": targets,
                     "target_domain": item_domain[targets],
                     "event_ts": torch.arange(seq_len).repeat(batch_size, 1) * 3600 + 1_700_000_000}
            batch = {k: v.to(device) for k, v in batch.items()}
            for loss in LOSSES:
                torch.manual_seed(seed)
                cfg = ModelConfig(n_items=n_items, n_domains=2, loss=loss, n_negatives=n_negatives, max_seq_len=seq_len)
                model = CrossDomainTransformer(cfg, features).to(device).train()
                opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
                times = []
                for _ in range(steps + 1):
                    t0 = time.perf_counter()
                    _train_step(model, opt, batch)
                    if device.type == "cuda":
                        torch.cuda.synchronize()
                    times.append(time.perf_counter() - t0)
                ms = 1000 * float(np.median(times[1:]))
                records.append({"system": "crossrec", "stage": f"training step, {loss}, {n:,} items a domain", "loss": loss,
                                "items_per_domain": int(n), "value": round(ms, 2), "unit": "ms/step",
                                "batch": list(shape), "n_negatives": n_negatives, "device": device.type})
                log.info("%s", records[-1])
    finally:
        torch.set_num_threads(before)
    return records


def crossover(costs: list[dict]) -> int | None:
    """The smallest catalog size (items a domain) from which on the sampled softmax's step is cheaper than the full
    softmax's at every larger size measured (records of :func:`loss_step_costs`); None when it is at none."""
    ms = {}
    for r in costs:
        ms.setdefault(r["items_per_domain"], {})[r["loss"]] = r["value"]
    sizes = sorted(n for n, m in ms.items() if set(m) >= {"softmax", "sampled"})
    out = None
    for n in reversed(sizes):
        if ms[n]["sampled"] >= ms[n]["softmax"]:
            break
        out = n
    return out


def _train_config(spec: TrainingSpec, lake: Path, workers: int, **options):
    """The default model's training config for ``workers`` Ray workers (one CPU for one worker, half a CPU each
    otherwise: two workers share this machine's two cores with the driver); ``options``: other TrainConfig fields."""
    from crossrec.train.config import TrainConfig

    options.setdefault("patience", spec.epochs)  # every epoch runs unless the caller asks for early stopping
    return TrainConfig(lake_root=str(lake), workers=workers, epochs=spec.epochs,
                       cpus_per_worker=1.0 if workers == 1 else 0.5, seed=spec.seed, **options)


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
                _train_step(model, optimizer, b)
            if device.type == "cuda":
                torch.cuda.synchronize()
            epoch_s.append(time.perf_counter() - t0)
    finally:
        torch.set_num_threads(before)
    samples = epochs * data.train.num_rows
    return {"value": round(samples / sum(epoch_s), 1), "unit": "samples/s", "threads": threads,
            "epoch_s": round(float(np.mean(epoch_s)), 3), "samples": samples, "device": device.type}


def _train_step(model, optimizer, batch) -> None:
    """One step of crossrec's training loop outside Ray: the loss, its gradients, the optimizer's update."""
    loss = model(batch, loss=True)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def speedups(runs: list[dict]) -> dict[int, float]:
    """Samples/s of each worker count's run over that of the smallest count (``{workers: ratio}``)."""
    base = min(runs, key=lambda r: r["workers"])
    return {r["workers"]: r["value"] / base["value"] for r in sorted(runs, key=lambda r: r["workers"])}


__all__ = ["TrainingSpec", "run_training", "speedups", "bare_torch_loop", "time_to_target", "loss_step_costs", "crossover"]

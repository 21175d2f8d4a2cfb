"""The Ray Train worker function, :func:`train_loop_per_worker`: one per worker (a DDP rank).

It trains on its shard of ``train``, scores its share of ``valid`` after each epoch, all-reduces the metric sums,
and calls ``ray.train.report`` exactly once per epoch on every rank (rank 0 alone attaches a checkpoint,
:mod:`crossrec.train.checkpoint`). The training windows and the validation rows come as two Arrow tables in Ray's
object store (``train_ref``, ``valid_ref``). Every rank takes an equal contiguous range of the training windows, in
locally shuffled pools (:func:`epoch_pools`), so every rank runs the same number of steps -- DDP requires it -- and
the ranks' shares are disjoint. ``valid`` rows are *not* split: every worker reads them all and scores the rows with
``row_id % world_size == rank``, so the validation metric covers every row exactly once.

Validation (the metric early stopping and model selection use) scores through the one inference path
(:class:`crossrec.inference.Predictor`, the Transformer alone), as ``crossrec.evaluate.protocol`` does: the target
is ranked among all items of its domain, the items of the row's history in that domain excluded; rows with an empty
history are scored by training popularity (``train_count``). Per rank: sums of NDCG@10, Recall@10, MRR and row
counts per domain, then ``all_reduce(SUM)``; every rank so takes the same early-stopping decision (stop when
``valid_ndcg@10`` has not improved for ``patience`` epochs, once ``min_epochs`` epochs have run).
"""
from __future__ import annotations

import logging
import math
import tempfile
import time
from typing import Mapping

import numpy as np

from crossrec import columns as C
from crossrec.train.checkpoint import read_checkpoint, write_checkpoint
from crossrec.train.config import METRIC, lr_at
from crossrec.train.faults import fail_once
from crossrec.train.windows import collate_train, length_bucketed, list_rows

log = logging.getLogger(__name__)

MIN_DELTA = 1e-6  # an improvement smaller than this is no improvement (float noise between epochs)
KS = (10,)
POOL_BATCHES = 16  # training batches per length-sorted pool (see length_bucketed)


def item_features(catalog: Mapping[str, np.ndarray]):
    """The model's :class:`~crossrec.model.encoder.ItemFeatures` of the catalog arrays (:class:`TrainingData.catalog`)."""
    from crossrec.model.encoder import ItemFeatures

    # copies: arrays from the object store are read-only, torch wants writable memory
    emb = None if catalog["text_emb"] is None else np.array(catalog["text_emb"])
    tokens = {k: np.array(catalog[k]) for k in ("text_tokens", "text_mask", "item_entities", "item_vectors") if catalog.get(k) is not None}
    return ItemFeatures.from_item_index(np.array(catalog[C.ITEM_IDX]), np.array(catalog[C.DOMAIN_IDX]),
                                        np.array(catalog[C.DOMAIN_ITEM_IDX]), text_emb=emb,
                                        item_attr=np.array(catalog["item_attr"]),
                                        sample_weight=catalog[C.TRAIN_COUNT] + 1, **tokens)



def item_lookup(catalog: Mapping[str, np.ndarray], column: str) -> np.ndarray:
    """(n_items + 1,) array: ``column`` of each item_idx (row 0 = padding = 0)."""
    out = np.zeros(len(catalog[C.ITEM_IDX]) + 1, dtype=catalog[column].dtype)
    out[catalog[C.ITEM_IDX]] = catalog[column]
    return out


def build_model(model_cfg, catalog: Mapping[str, np.ndarray], device, *, lr: float, weight_decay: float,
                text_lr_scale: float = 1.0):
    """The model of ``model_cfg`` over the catalog, on ``device``, and its AdamW optimizer: ``(model, optimizer)``.

    A pretrained text layer (fine-tuning) is a parameter group of its own that moves at ``text_lr_scale`` x the rate
    of the layers trained from scratch (each group's ``lr_scale``)."""
    import torch

    from crossrec.model.transformer import CrossDomainTransformer

    model = CrossDomainTransformer(model_cfg, item_features(catalog)).to(device)
    text = [p for n, p in model.named_parameters() if p.requires_grad and ".text_model." in f".{n}"]
    rest = [p for n, p in model.named_parameters() if p.requires_grad and ".text_model." not in f".{n}"]
    groups = [{"params": rest, "lr_scale": 1.0}] + ([{"params": text, "lr_scale": text_lr_scale}] if text else [])
    return model, torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay)


def epoch_pools(table, rank: int, world: int, pool_rows: int, seed: int):
    """This rank's share of the training windows ``table`` (a pyarrow Table) for one epoch: its range ``rank`` of
    ``world`` equal contiguous ranges (the remainder, under ``world`` rows, sits out), in pools of ``pool_rows``
    consecutive windows, each pool's rows permuted with ``seed`` (the last pool shorter): the table's order, mixed
    locally, as Ray Data's equal split with a local shuffle buffer of ``pool_rows`` read it (there a rank took the
    table's blocks in turn with the other ranks; here it takes one contiguous range)."""
    n = table.num_rows // world
    rng = np.random.default_rng(seed)
    for s in range(rank * n, (rank + 1) * n, pool_rows):
        yield table.take(s + rng.permutation(min(pool_rows, (rank + 1) * n - s)))


def validate_shard(model, valid, catalog: Mapping[str, np.ndarray], *, rank: int, world: int,
                   batch_size: int) -> np.ndarray:
    """Score this rank's share of the valid rows (``valid``, a pyarrow Table); (n_domains, 4) sums of ndcg@10,
    recall@10, mrr, rows.

    ``model`` is the unwrapped model; it is scored through :class:`crossrec.inference.Predictor` (the Transformer
    alone): full ranking within the target domain, the items of the row's stored history in that domain excluded,
    empty histories scored by popularity (as crossrec.evaluate.protocol). Its train/eval mode is restored after.
    """
    from crossrec.evaluate.metrics import rank_of_target, ranking_metrics
    from crossrec.inference import Predictor

    item_domain, item_col = item_lookup(catalog, C.DOMAIN_IDX), item_lookup(catalog, C.DOMAIN_ITEM_IDX)
    sums = np.zeros((model.config.n_domains, 4), dtype=np.float64)
    was_training = model.training
    predictor = Predictor(model, None, item_lookup(catalog, C.TRAIN_COUNT).astype(np.float32))  # once per pass
    for s in range(0, valid.num_rows, batch_size):
        batch = valid.slice(s, batch_size)
        mine = batch["row_id"].to_numpy() % world == rank
        if not mine.any():
            continue
        hist = [h for h, m in zip(list_rows(batch["item_idx"]), mine) if m]
        tss = [t for t, m in zip(list_rows(batch["event_ts"]), mine) if m]
        target = batch["target_item_idx"].to_numpy()[mine]
        tdom = item_domain[target]
        for d in np.unique(tdom):
            rows = np.flatnonzero(tdom == d)
            inputs = predictor.collate([hist[r] for r in rows], [tss[r] for r in rows])
            scores = predictor.scores(inputs, int(d)).float().cpu().numpy()  # (b, n_d), history items at -inf
            n_cand = scores.shape[1] - np.isneginf(scores).sum(1)  # the domain's items minus the excluded ones
            m = ranking_metrics(rank_of_target(scores, item_col[target[rows]]), n_cand, ks=KS)
            n = len(rows)
            sums[d] += (m["ndcg@10"] * n, m["recall@10"] * n, m["mrr"] * n, n)
    model.train(was_training)
    return sums


def _metrics_from_sums(sums: np.ndarray, domains: list[str]) -> dict[str, float]:
    n = sums[:, 3].sum()
    out = {"valid_ndcg@10": float(sums[:, 0].sum() / n) if n else 0.0,
           "valid_recall@10": float(sums[:, 1].sum() / n) if n else 0.0,
           "valid_mrr": float(sums[:, 2].sum() / n) if n else 0.0,
           "valid_rows": int(n)}
    for d, name in enumerate(domains):
        if sums[d, 3]:
            out[f"valid_ndcg@10/{name}"] = float(sums[d, 0] / sums[d, 3])
    return out


def _ddp_kwargs() -> dict:
    """DDP must not re-broadcast the buffers (the item features: constant, and the text table can be large)
    at every forward. Newer torch (2.15 here) names that ``forward_sync_buffers=False`` (``broadcast_buffers`` is
    deprecated; the new flag still syncs once at init, harmless for identical constants)."""
    import inspect

    from torch.nn.parallel import DistributedDataParallel

    params = inspect.signature(DistributedDataParallel.__init__).parameters
    return {"forward_sync_buffers": False} if "forward_sync_buffers" in params else {"broadcast_buffers": False}


def _worker_logging() -> None:
    """Ray worker processes have no logging configured: send crossrec INFO records to stderr (forwarded)."""
    lg = logging.getLogger("crossrec")
    if not lg.handlers:
        h = logging.StreamHandler()
        h.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
        lg.addHandler(h)
        lg.setLevel(logging.INFO)
        lg.propagate = False


def train_loop_per_worker(config: dict) -> None:
    """One Ray Train worker: build, (resume,) train, validate, report once per epoch. See the module docstring.

    ``config`` (built by :func:`train`): ``model`` (ModelConfig as a dict), ``catalog_ref`` (object ref of the
    catalog arrays), ``train_ref`` / ``valid_ref`` (object refs of the training windows and the validation rows, Arrow
    tables), ``domains``, ``epochs``, ``batch_size``, ``lr``, ``weight_decay``, ``patience``, ``min_epochs``, ``seed``,
    ``log_every``, ``n_train_rows``, ``torch_threads``, ``_fail_once_at_step`` (test hook or None).
    """
    import ray
    import ray.train
    import ray.train.torch
    import torch
    import torch.distributed as dist

    from crossrec.model.config import ModelConfig

    _worker_logging()
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    if device.type == "cpu" and config.get("torch_threads"):
        torch.set_num_threads(int(config["torch_threads"]))
    catalog = ray.get(config["catalog_ref"])
    domains = list(config["domains"])
    item_domain = item_lookup(catalog, C.DOMAIN_IDX)

    torch.manual_seed(config["seed"])  # identical initial weights on every rank (DDP also broadcasts rank 0's)
    model, optimizer = build_model(ModelConfig.from_dict(config["model"]), catalog, device, lr=config["lr"],
                                   weight_decay=config["weight_decay"], text_lr_scale=config.get("text_lr_scale", 1.0))
    state = {"epoch": -1, "global_step": 0, "best_metric": -math.inf, "best_epoch": -1, "bad_epochs": 0,
             "history": [], "resumes": []}
    ckpt = ray.train.get_checkpoint()
    if ckpt is not None:
        with ckpt.as_directory() as folder:
            state = read_checkpoint(folder, model, optimizer, source=ckpt.path)  # before DDP: it broadcasts them
        state["resumes"].append(state["epoch"] + 1)
        if rank == 0:
            log.info("resuming from checkpoint %s: epoch %d done, best %s %.4f at epoch %d, %d bad epoch(s)",
                     ckpt.path, state["epoch"], METRIC, state["best_metric"], state["best_epoch"], state["bad_epochs"])
    ddp = ray.train.torch.prepare_model(model, parallel_strategy_kwargs=_ddp_kwargs())
    torch.manual_seed(config["seed"] + 1 + rank + 1000 * (state["epoch"] + 1))  # dropout differs per rank

    train_rows, valid_rows = ray.get(config["train_ref"]), ray.get(config["valid_ref"])
    fail = config.get("_fail_once_at_step")
    bs = config["batch_size"]
    steps_per_epoch = math.ceil((config["n_train_rows"] // world) / bs)
    total_steps = steps_per_epoch * config["epochs"]  # the schedule's length (lr_at); resumes continue it by global_step
    stop_after = config.get("stop_after") or config["epochs"]  # a refit runs the selected epochs of the schedule

    epoch = state["epoch"] + 1
    min_epochs = config.get("min_epochs", 0)
    while epoch < stop_after and (state["bad_epochs"] < config["patience"] or epoch < min_epochs):
        model.train()
        t_epoch = last = time.perf_counter()
        loss_sum, n_steps, n_samples, window = 0.0, 0, 0, 0
        t_data = 0.0  # waiting for the next batch + collating it (the rest of the epoch is compute)
        t_fetch = time.perf_counter()
        pools = epoch_pools(train_rows, rank, world, POOL_BATCHES * bs, config["seed"] + 1000 * epoch)
        batches = length_bucketed(pools, bs, np.random.default_rng(config["seed"] + 1000 * epoch + rank))
        for batch in fail_once(batches, fail, rank=rank, epoch=epoch):
            b = {k: torch.from_numpy(v).to(device) for k, v in collate_train(batch, item_domain).items()}
            t_data += time.perf_counter() - t_fetch
            loss = ddp(b, loss=True)  # through DDP's forward: its gradient all-reduce hooks are armed there
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            lr = lr_at(config["lr"], config.get("lr_schedule", "constant"), state["global_step"], total_steps)
            for group in optimizer.param_groups:
                group["lr"] = lr * group.get("lr_scale", 1.0)
            optimizer.step()
            loss_value = loss.item()
            loss_sum += loss_value
            n_steps += 1
            n_samples += len(b["item_idx"])
            window += 1
            state["global_step"] += 1
            if rank == 0 and (n_steps % config["log_every"] == 0 or n_steps == steps_per_epoch):
                now = time.perf_counter()
                ms = 1000 * (now - last) / window
                rate = world * n_samples / (now - t_epoch)
                eta = (steps_per_epoch - n_steps) * ms / 1000
                log.info("epoch %d step %d/%d loss %.4f lr %.2e %.1f ms/step %.0f samples/s (all ranks) ETA %.0fs",
                         epoch, n_steps, steps_per_epoch, loss_value, lr, ms, rate, max(eta, 0.0))
                last, window = now, 0
            t_fetch = time.perf_counter()
        t_train = time.perf_counter() - t_epoch

        sums = validate_shard(ddp.module if hasattr(ddp, "module") else ddp, valid_rows, catalog, rank=rank, world=world,
                              batch_size=4 * bs)
        t_valid = time.perf_counter() - t_epoch - t_train
        totals = np.array([loss_sum, n_steps, n_samples, t_train], dtype=np.float64)
        if world > 1:
            t = torch.from_numpy(np.concatenate([sums.ravel(), totals[:3]])).to(device)
            dist.all_reduce(t)  # SUM: metric sums, row counts, losses, steps, samples
            tmax = torch.tensor([t_train], dtype=torch.float64, device=device)
            dist.all_reduce(tmax, op=dist.ReduceOp.MAX)
            flat = t.cpu().numpy()
            sums = flat[: sums.size].reshape(sums.shape)
            totals = np.array([*flat[sums.size:], float(tmax)], dtype=np.float64)
        metrics = _metrics_from_sums(sums, domains)
        value = metrics[METRIC]
        if value > state["best_metric"] + MIN_DELTA:
            state.update(best_metric=value, best_epoch=epoch, bad_epochs=0)
        else:
            state["bad_epochs"] += 1
        metrics.update(epoch=epoch, train_loss=float(totals[0] / max(totals[1], 1)), train_samples=int(totals[2]),
                       epoch_train_s=float(totals[3]), epoch_valid_s=float(t_valid),  # this rank's; rank 0's is kept
                       samples_per_s=float(totals[2] / max(totals[3], 1e-9)),
                       data_share=float(t_data / max(t_train, 1e-9)),  # rank 0's share of time in data loading
                       best_valid_ndcg=float(state["best_metric"]), best_epoch=int(state["best_epoch"]),
                       bad_epochs=int(state["bad_epochs"]), global_step=int(state["global_step"]),
                       stop=bool(state["bad_epochs"] >= config["patience"] and epoch + 1 >= min_epochs))
        state["epoch"] = epoch
        state["history"].append(dict(metrics))
        if rank == 0:
            log.info("epoch %d: loss %.4f, %s %.4f (best %.4f at epoch %d), recall@10 %.4f, %.0f samples/s%s",
                     epoch, metrics["train_loss"], METRIC, value, state["best_metric"], state["best_epoch"],
                     metrics["valid_recall@10"], metrics["samples_per_s"],
                     "; early stop" if metrics["stop"] else "")
            with tempfile.TemporaryDirectory(prefix="crossrec-ckpt-") as tmp:
                write_checkpoint(tmp, ddp, optimizer, state)
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))
        else:
            ray.train.report(metrics, checkpoint=None)  # every rank reports once per epoch
        epoch += 1


__all__ = ["train_loop_per_worker", "validate_shard", "epoch_pools", "build_model", "item_features", "item_lookup"]

"""The Ray Train driver, :func:`train`: gold tables at pinned versions -> data-parallel training -> model artifact.

It resolves the Delta versions of the gold tables once, reads and shapes them (:mod:`crossrec.train.data`), hands
the rows to the workers (:mod:`crossrec.train.worker`) through Ray's object store, builds ``ScalingConfig`` /
``RunConfig`` / ``TorchTrainer``, runs ``fit()`` and writes the model artifact (:mod:`crossrec.train.artifact`) from
the best checkpoint (CONVENTIONS point 8: the two halves of every Ray Train program).

Refit (``TrainConfig.refit``, default on). The baselines and the score terms learn from the validation targets
before they are tested or score users; so does the Transformer: once the run has chosen its epoch on validation, a
second Ray Train run (``train-<model_version>-refit``) trains from the same initialisation, with the same schedule,
for that many epochs on the training events plus every validation target (:func:`~crossrec.train.windows.extend_with_targets`).
Its validation figures are of rows it learned and are not used; the score terms are chosen with the selected model.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import math
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Mapping

import numpy as np

from crossrec.train.artifact import Tuning, write_artifact
from crossrec.train.checkpoint import final_state
from crossrec.train.config import GOLD_TABLES, METRIC, TrainConfig, model_version
from crossrec.train.data import (add_item_entities, add_item_tokens, add_item_vectors, load_training_data,
                                 resolve_versions)
from crossrec.train.ray_setup import local_init_kwargs
from crossrec.train.worker import train_loop_per_worker

if TYPE_CHECKING:
    from crossrec.model.transformer import CrossDomainTransformer

log = logging.getLogger(__name__)


def _use_gpu(cfg: TrainConfig) -> bool:
    import ray

    if cfg.use_gpu is not None:
        return cfg.use_gpu
    return ray.cluster_resources().get("GPU", 0) >= 1


def check_worker_resources(workers: int, use_gpu: bool, cpus_per_worker: float, available: Mapping[str, float],
                           fixed: bool) -> None:
    """Refuse a worker group that the Ray instance cannot hold, instead of waiting for it forever.

    Args:
        workers, use_gpu, cpus_per_worker: the worker group (one GPU per worker, else ``cpus_per_worker`` CPUs).
        available: ``ray.cluster_resources()``.
        fixed: the instance cannot grow (a local one this run started); on a cluster, which may autoscale, a short
            fall is only logged and Ray Train waits for the nodes.

    Raises:
        ConfigError: ``fixed`` and the instance has fewer GPUs or CPUs than the group asks for.
    """
    from crossrec.io.config import ConfigError

    kind, per_worker = ("GPU", 1.0) if use_gpu else ("CPU", cpus_per_worker)
    need, have = workers * per_worker, float(available.get(kind, 0))
    if need <= have + 1e-9:
        return
    msg = (f"{workers} worker(s) x {per_worker:g} {kind} need {need:g} {kind}(s); the Ray instance has {have:g}: "
           f"use fewer --workers{'' if use_gpu else ' or a smaller --cpus-per-worker'}")
    if fixed:
        raise ConfigError(msg)
    log.warning("%s (Ray Train waits until the cluster has them)", msg)


def ray_address(configured: str | None) -> str:
    """The ``ray.init`` address: the configured one, else ``RAY_ADDRESS``, else ``"local"`` (a new local instance).

    Ray's own default (``address=None``) would also attach to the latest cluster that ``ray start`` left running on
    this machine; a run without ``--ray-address`` must not land on a cluster nobody asked for.
    """
    return configured or os.environ.get("RAY_ADDRESS") or "local"


def _ray_fit(cfg: TrainConfig, name: str, train_rows, valid_rows, loop_config: dict, use_gpu: bool):
    """One Ray Train run of :func:`train_loop_per_worker` over ``train_rows`` (each epoch split across the workers)
    and ``valid_rows`` (every rank reads all); its ``ray.train.Result``.

    The rows are already one Arrow table each in this process, so they go to the workers as two objects of Ray's object
    store (workers on this node read them from its shared memory; one on another node fetches them once) and each worker
    cuts its own share in the order Ray Data's split gave (:func:`crossrec.train.worker.epoch_pools`). Ray Data's
    streaming split adds an executor that starts in every run's first epoch and competes with it for the cores, to
    read data that is in memory."""
    import ray
    import ray.train
    from ray.train.torch import TorchTrainer

    loop_config = {**loop_config, "train_ref": ray.put(train_rows), "valid_ref": ray.put(valid_rows)}
    scaling = ray.train.ScalingConfig(num_workers=cfg.workers, use_gpu=use_gpu,
                                      resources_per_worker=None if use_gpu else {"CPU": cfg.cpus_per_worker})
    from crossrec.io.lakefs import filesystem, is_remote

    storage_fs, storage_path = filesystem(cfg.storage_root) if is_remote(cfg.storage_root) else (None, cfg.storage_root)
    run = ray.train.RunConfig(
        name=name,
        storage_path=storage_path,
        storage_filesystem=storage_fs,  # an object store's, with the endpoint and region of the AWS variables
        failure_config=ray.train.FailureConfig(max_failures=cfg.max_failures),
        checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2, checkpoint_score_attribute=METRIC,
                                                     checkpoint_score_order="max"),
    )
    trainer = TorchTrainer(
        train_loop_per_worker, train_loop_config={**loop_config, "n_train_rows": train_rows.num_rows},
        scaling_config=scaling, run_config=run,
    )
    log.info("Ray Train: %d worker(s), %s, run %s under %s, %d training windows", cfg.workers,
             "GPU" if use_gpu else f"CPU ({cfg.cpus_per_worker} per worker)", name, cfg.storage_root, train_rows.num_rows)
    return trainer.fit()



def train(cfg: TrainConfig) -> Path | str:
    """Train on the gold tables with Ray Train and write the model artifact; return its folder (a local ``Path``, or
    the URI of the folder on a remote lake)."""
    import ray

    t0 = time.time()
    now = dt.datetime.now(dt.timezone.utc)
    tables = GOLD_TABLES if cfg.use_text else tuple(t for t in GOLD_TABLES if t != "gold.item_embeddings")
    versions = resolve_versions(cfg.lake_root, cfg.versions, tables)
    data = load_training_data(cfg, versions)
    assert data.train.num_rows >= cfg.workers, f"{data.train.num_rows} training windows for {cfg.workers} workers"
    assert data.valid.num_rows >= 1, "gold.user_sequences has no valid rows: nothing to select a model on"
    entity_source = add_item_entities(cfg, data) if cfg.use_entities else {}
    vector_source = add_item_vectors(cfg, data) if cfg.use_vectors else {}
    # the silver versions the entities and vectors came from are data too: another one is another model (and run)
    version = model_version(cfg, {**versions, **entity_source, **vector_source}, now)
    log.info("training %s on %s at versions %s", version, cfg.lake_root, {**versions, **entity_source, **vector_source})

    started = not ray.is_initialized()
    address = ray_address(cfg.ray_address) if started else None
    if started:
        log.info("Ray: %s", "a new local instance" if address == "local" else address)
        if address == "local":
            ray.init(**local_init_kwargs())
        else:
            ray.init(address=address, include_dashboard=False, log_to_driver=True)
    refit = None
    try:
        use_gpu = _use_gpu(cfg)
        check_worker_resources(cfg.workers, use_gpu, cfg.cpus_per_worker, ray.cluster_resources(),
                               fixed=address == "local")
        text_encoder, text_source = cfg.resolved_text_encoder(use_gpu), None
        if text_encoder == "finetune":
            text_source = add_item_tokens(cfg, data)
        mcfg = data.model_config(cfg, text_encoder)
        log.info("loss: %s%s", mcfg.loss, f" ({mcfg.n_negatives} negatives per domain and step)" if mcfg.loss == "sampled" else "")
        log.info("text encoder: %s%s", text_encoder, f" (top {cfg.finetune_layers} layer(s) trained at "
                 f"{cfg.text_lr_scale:g} x lr, {cfg.text_max_tokens} tokens per item)" if text_encoder == "finetune" else "")
        loop_config = {
            "model": dataclasses.asdict(mcfg),
            "catalog_ref": ray.put(data.catalog),
            "domains": data.domains,
            "epochs": cfg.epochs, "batch_size": cfg.batch_size, "lr": cfg.lr, "weight_decay": cfg.weight_decay,
            "lr_schedule": cfg.lr_schedule, "patience": cfg.patience,
            "min_epochs": cfg.min_epochs, "seed": cfg.seed, "log_every": cfg.log_every,
            "text_lr_scale": cfg.text_lr_scale,
            "torch_threads": max(1, int(cfg.cpus_per_worker)),
            "_fail_once_at_step": dataclasses.asdict(cfg.fail_once_at) if cfg.fail_once_at else None,
        }
        result = _ray_fit(cfg, f"train-{version}", data.train, data.valid, loop_config, use_gpu)
        assert result.checkpoint is not None, "the run reported no checkpoint"
        best_ckpt, best_metrics = max(result.best_checkpoints, key=lambda cm: cm[1].get(METRIC, -math.inf))
        if data.refit_train is not None:
            # the selected epochs again, same initialisation and schedule, the validation targets learned too; its
            # validation figures are of rows it trained on: the run stops at the selected epoch, not on them
            stop_after = int(best_metrics["epoch"]) + 1
            log.info("refit: %d epoch(s) of the %d-epoch schedule on train events + valid targets", stop_after, cfg.epochs)
            t_refit = time.time()
            refit = _ray_fit(cfg, f"train-{version}-refit", data.refit_train, data.valid,
                             {**loop_config, "stop_after": stop_after, "patience": stop_after + 1,
                              "_fail_once_at_step": None}, use_gpu)
            assert refit.checkpoint is not None, "the refit reported no checkpoint"
            refit_s = time.time() - t_refit
    finally:
        if started:
            ray.shutdown()

    state = final_state(result)
    refit_history = None if refit is None else final_state(refit)["history"]
    history = state["history"]
    train_s = sum(h["epoch_train_s"] for h in history)
    summary = {
        "model_version": version,
        "input_domains": list(cfg.input_domains) if cfg.input_domains else None,
        "selected_on": METRIC,
        "best_epoch": best_metrics["epoch"],
        "valid": {k: v for k, v in best_metrics.items() if k.startswith("valid_")},
        "epochs_run": len(history),
        "max_epochs": cfg.epochs,
        "early_stopped": bool(history[-1]["stop"]) and len(history) < cfg.epochs,
        "resumed_at_epochs": state["resumes"],
        "history": history,
        "refit": None if refit is None else {
            "epochs": len(refit_history), "train_windows": data.refit_train.num_rows,
            "wall_time_s": refit_s, "train_loss": [h["train_loss"] for h in refit_history]},
        "data_versions": versions,
        "text_encoders": data.encoders,
        "text_encoder": text_encoder,
        "text_tokens_from": text_source,
        "entities_from": entity_source or None,
        "n_entities": len(data.entities),
        "vectors_from": vector_source or None,
        "vector_modalities": [list(m) for m in data.vector_modalities],
        "train_windows": data.train.num_rows,
        "wall_time_s": time.time() - t0,
        "train_time_s": train_s,
        "samples_per_s": sum(h["train_samples"] for h in history) / max(train_s, 1e-9),
        "samples_per_s_median_epoch": float(np.median([h["samples_per_s"] for h in history])),  # without warm-up
        "workers": cfg.workers,
        "device": "gpu" if use_gpu else "cpu",
        "config": {k: v for k, v in dataclasses.asdict(cfg).items() if k != "fail_once_at"},
        "model": dataclasses.asdict(mcfg),
        "ray_run": str(result.path),
        "trained_at": now.isoformat(timespec="seconds"),
    }

    def tune(model: "CrossDomainTransformer") -> Tuning:
        """The id shrinkage, the bias of items without training events, then the score terms over that model, chosen
        on the validation split at the data versions trained on."""
        from crossrec.evaluate.protocol import load_eval_data
        from crossrec.rerank.fit import fit_terms
        from crossrec.train.id_shrinkage import choose_cold_bias, choose_id_shrinkage, shrink_id_embeddings

        valid = load_eval_data(cfg.lake_root, dict(versions), split="valid", users=data.sampled_users)
        if cfg.id_shrinkage is None:
            shrink = choose_id_shrinkage(model, valid, seed=cfg.seed, input_domains=cfg.input_domains)
        else:
            shrink = {"k": cfg.id_shrinkage, "skipped": "set by id_shrinkage"}
            shrink_id_embeddings(model, np.bincount(valid.train.item, minlength=valid.train.n_items + 1), cfg.id_shrinkage)
        cold = choose_cold_bias(model, valid, data.untrained_items, seed=cfg.seed, input_domains=cfg.input_domains)
        tuned = Tuning(metrics={"id_shrinkage": shrink, "cold_bias": cold}, id_shrinkage=shrink["k"],
                       cold_bias=cold["quantile"],
                       refit_counts=np.bincount(valid.train_with_targets().item, minlength=valid.train.n_items + 1))
        if cfg.terms:
            tuned.terms, tuned.metrics["terms"] = fit_terms(model, valid, cfg.terms, seed=cfg.seed,
                                                            input_domains=cfg.input_domains)
        return tuned

    from crossrec.io.lakefs import is_remote, join, upload

    tuned_on_valid = bool(cfg.terms) or cfg.id_shrinkage != 0  # else nothing to choose: validation is not read
    staging = tempfile.mkdtemp(prefix="crossrec-artifact-") if is_remote(cfg.models_root) else cfg.models_root
    with best_ckpt.as_directory() as best_dir:
        if refit is None:
            folder = write_artifact(staging, version, best_dir, data, summary, tune if tuned_on_valid else None)
        else:
            with refit.checkpoint.as_directory() as refit_dir:
                folder = write_artifact(staging, version, refit_dir, data, summary, tune if tuned_on_valid else None,
                                        select_dir=best_dir)
    if is_remote(cfg.models_root):  # written whole here, then copied to the lake's store
        from crossrec.model.pyfunc import write_mlmodel

        write_mlmodel(folder)
        folder = upload(folder, join(cfg.models_root, version))
        shutil.rmtree(staging, ignore_errors=True)
    log.info("model artifact %s: %s %.4f at epoch %d of %d%s, %.0f samples/s, %.1fs",
             folder, METRIC, summary["valid"][METRIC], summary["best_epoch"], summary["epochs_run"],
             "" if refit is None else f", refitted on the valid targets too ({summary['refit']['epochs']} epochs)",
             summary["samples_per_s"], summary["wall_time_s"])
    return folder



__all__ = ["train", "check_worker_resources", "ray_address"]

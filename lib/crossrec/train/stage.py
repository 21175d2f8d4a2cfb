"""The train stage around :func:`crossrec.train.driver.train`: its flags, the run record in ops.runs, registering the
artifact with the promotion gate, and the summary it prints.

Every flag's default is :class:`~crossrec.train.config.TrainConfig`'s (whose model fields take
:class:`~crossrec.model.config.ModelConfig`'s); the keys shared with the nightly configuration (``max_seq_len``,
``seed``, ``text_encoder``) come from :class:`~crossrec.io.config.CrossrecConfig`.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
from pathlib import Path

from crossrec.io.config import CrossrecConfig
from crossrec.train.config import LOSSES, LR_SCHEDULES, METRIC, TEXT_ENCODERS, TrainConfig

log = logging.getLogger(__name__)
STAGE = "train"
D = {f.name: f.default for f in dataclasses.fields(TrainConfig)}


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    """The train stage's own flags (the common ones are :func:`crossrec.cli.common.add_common_args`')."""
    g = p.add_argument_group("train")
    g.add_argument("--workers", type=int, default=D["workers"], help="Ray Train workers / DDP ranks (default %(default)s)")
    g.add_argument("--epochs", type=int, default=D["epochs"], help="maximum epochs (default %(default)s)")
    g.add_argument("--batch-size", type=int, default=D["batch_size"],
                   help="training windows per worker and step (default %(default)s)")
    g.add_argument("--lr", type=float, default=D["lr"], help="AdamW learning rate (default %(default)s)")
    g.add_argument("--weight-decay", type=float, default=D["weight_decay"], help="AdamW weight decay (default %(default)s)")
    g.add_argument("--lr-schedule", choices=LR_SCHEDULES, default=D["lr_schedule"],
                   help="learning rate over the run: constant, or decaying to 0 at the last of --epochs, linearly "
                        "or along a half cosine (default %(default)s)")
    g.add_argument("--patience", type=int, default=D["patience"],
                   help="epochs without valid NDCG@10 improvement before stopping (default %(default)s)")
    g.add_argument("--min-epochs", type=int, default=D["min_epochs"],
                   help="epochs run before early stopping may stop (default %(default)s)")
    g.add_argument("--d-model", type=int, default=D["d_model"], help="model width (default %(default)s)")
    g.add_argument("--n-layers", type=int, default=D["n_layers"], help="Transformer layers (default %(default)s)")
    g.add_argument("--n-heads", type=int, default=D["n_heads"], help="attention heads (default %(default)s)")
    g.add_argument("--dropout", type=float, default=D["dropout"], help="dropout (default %(default)s)")
    g.add_argument("--loss", choices=LOSSES, default=D["loss"],
                   help="full softmax per domain, sampled softmax, or auto (default %(default)s): sampled once the "
                        "largest domain holds more than twice --n-negatives items")
    g.add_argument("--n-negatives", type=int, default=D["n_negatives"],
                   help="sampled softmax: negatives per domain and step, popularity-drawn, log-Q corrected (default %(default)s)")
    g.add_argument("--no-text", dest="use_text", action="store_false", help="do not use the text embeddings (id-only model)")
    g.add_argument("--text-encoder", dest="text_encoder", choices=TEXT_ENCODERS,
                   help="frozen: the features job's text embeddings; finetune: run all-MiniLM-L6-v2 in every step and "
                        "train its top --finetune-layers (slow on CPU); auto: finetune on GPU workers, else frozen "
                        f"(config key text_encoder; default {CrossrecConfig.text_encoder})")
    g.add_argument("--finetune-layers", type=int, default=D["finetune_layers"],
                   help="finetune: top text-model layers trained (default %(default)s)")
    g.add_argument("--text-max-tokens", type=int, default=D["text_max_tokens"],
                   help="finetune: tokens of each item's text read (default %(default)s)")
    g.add_argument("--text-lr-scale", type=float, default=D["text_lr_scale"],
                   help="finetune: the text layers' learning rate as a share of --lr (default %(default)s)")
    g.add_argument("--no-id-embedding", dest="use_id_embedding", action="store_false", help="text-only item representation")
    g.add_argument("--item-bias", dest="item_bias", action="store_true",
                   help="a learned score offset per item id, starting at the log of its share of its domain's training "
                        "events (default: none; it lifts catalogs whose popularity is steep and costs Food+Kitchen's "
                        "users, see docs/evaluation.md)")
    g.add_argument("--no-entities", dest="use_entities", action="store_false",
                   help="no entity embeddings (default: each item gets the mean embedding of its attribute entities "
                        "from silver.item_entities, shared across domains)")
    g.add_argument("--no-vectors", dest="use_vectors", action="store_false",
                   help="do not feed the items' precomputed vectors (silver.items.vectors) to the model (default: "
                        "feed them through a learned projection)")
    g.add_argument("--no-categories", dest="use_categories", action="store_false",
                   help="no category embedding (default: one per (domain, category) of gold.item_index)")
    g.add_argument("--no-cold-views", dest="cold_views", action="store_false",
                   help="do not add cold-domain views of multi-domain histories to training (default: add them; each "
                        "domain's targets predicted from the other domains' events, as for users new to the domain)")
    g.add_argument("--terms", metavar="NAMES",
                   help="comma-separated score terms to fit after training and add to the Transformer's scores, their "
                        "weights (and recency decays) chosen per domain on the validation split; 'none' = the Transformer "
                        "alone (default: every term registered in crossrec.rerank, one module per term)")
    g.add_argument("--no-refit", dest="refit", action="store_false",
                   help="keep the selected epoch's model; by default it is trained again for the selected epochs on the "
                        "training events plus the validation targets, as the baselines learn from them")
    g.add_argument("--id-dropout", type=float, default=D["id_dropout"],
                   help="training: share of item occurrences whose id embedding is dropped, so text carries them "
                        "(default %(default)s)")
    g.add_argument("--id-shrinkage", type=_shrinkage, metavar="K|auto", default=None,
                   help="after training, scale each item's id embedding by n / (n + K), n its training events, so the "
                        "text, vectors and entities speak for items with few events; 'auto' (default) chooses K on the "
                        "validation split, 0 keeps the ids as learnt")
    g.add_argument("--input-domains", help="comma-separated: train on (and later predict from) these domains' events "
                   "only; with --no-text and one domain this is the single-domain SASRec-style baseline (default: all)")
    g.add_argument("--max-users", type=int, help="train on a seeded sample of at most this many users (default: all); "
                   "scoring still covers everyone")
    g.add_argument("--max-seq-len", dest="max_seq_len", type=int,
                   help=f"events of history the model sees (default {CrossrecConfig.max_seq_len})")
    g.add_argument("--seed", type=int, help=f"seed of initialisation and shuffling (default {CrossrecConfig.seed})")
    g.add_argument("--max-failures", type=int, default=D["max_failures"],
                   help="worker-group restarts from the last checkpoint (default %(default)s)")
    g.add_argument("--ray-address", help="Ray cluster address ('auto' or host:port); default: RAY_ADDRESS when set, "
                   "else a new local Ray instance")
    g.add_argument("--storage-path", help="Ray Train checkpoints (default <lake>/_ray)")
    g.add_argument("--model-root", help="where artifacts go (default <lake>/models)")
    g.add_argument("--no-register", dest="register", action="store_false",
                   help="write the artifact only: no MLflow run, no registered version, no promotion (reference "
                        "models of the benchmarks; pass the folder to evaluate with --model)")
    g.add_argument("--force-promote", action="store_true",
                   help="make the new version the champion even if the promotion gate finds it worse")
    g.add_argument("--promotion-tolerance-se", dest="promotion_tolerance_se", type=float,
                   help="the gate keeps a new model out when it is worse than the champion by more than this many "
                        "standard errors in some domain (config key promotion_tolerance_se; default "
                        f"{CrossrecConfig.promotion_tolerance_se:g})")
    gpu = g.add_mutually_exclusive_group()
    gpu.add_argument("--gpu", dest="use_gpu", action="store_const", const=True, help="one GPU per worker")
    gpu.add_argument("--no-gpu", dest="use_gpu", action="store_const", const=False, help="CPU workers even if GPUs exist")
    g.add_argument("--cpus-per-worker", type=float, default=D["cpus_per_worker"],
                   help="CPUs Ray reserves per CPU worker (default %(default)s; each worker runs max(1, int(N)) torch threads)")


def _shrinkage(text: str) -> float | None:
    """--id-shrinkage: ``auto`` -> None (chosen on validation), else a number >= 0."""
    if text == "auto":
        return None
    try:
        k = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be 'auto' or a number >= 0, got {text!r}") from None
    if not k >= 0:
        raise argparse.ArgumentTypeError(f"must be 'auto' or a number >= 0, got {text!r}")
    return k


def train_config(cfg: CrossrecConfig, a: argparse.Namespace) -> TrainConfig:
    """The :class:`TrainConfig` of the stage's flags ``a`` over the resolved configuration ``cfg``."""
    same = ("workers", "use_gpu", "cpus_per_worker", "epochs", "batch_size", "lr", "weight_decay", "lr_schedule",
            "patience", "min_epochs", "d_model", "n_layers", "n_heads", "dropout", "loss", "n_negatives", "use_text",
            "use_id_embedding", "item_bias", "id_dropout", "id_shrinkage", "finetune_layers", "text_max_tokens", "text_lr_scale", "refit",
            "use_categories", "use_entities", "use_vectors", "cold_views", "max_users", "max_failures", "storage_path", "model_root", "ray_address")
    return TrainConfig(
        lake_root=cfg.lake_uri, max_seq_len=cfg.max_seq_len, seed=cfg.seed, text_encoder=cfg.text_encoder,
        terms=None if a.terms is None else () if a.terms == "none" else tuple(n for n in a.terms.split(",") if n),
        input_domains=tuple(d for d in a.input_domains.split(",") if d) if a.input_domains else None,
        **{k: getattr(a, k) for k in same})


def register_and_promote(cfg: CrossrecConfig, folder, metrics: dict, force: bool):
    """Register the artifact ``folder`` (its ``metrics``: metrics.json) and run the promotion gate ->
    (ModelVersion, Decision)."""
    from crossrec.evaluate.promotion import promote
    from crossrec.io.registry import Registry

    registry = Registry(cfg.lake_uri, cfg.mlflow_tracking_uri)
    params = {**{f"train.{k}": v for k, v in metrics["config"].items()},
              **{f"model.{k}": v for k, v in metrics["model"].items()}}
    # the per-epoch history keeps the metric names (step = epoch); the selected epoch's figures are "selected_..."
    final = {**{f"selected_{k}": v for k, v in metrics["valid"].items()}, "samples_per_s": metrics["samples_per_s"],
             "wall_time_s": metrics["wall_time_s"], "best_epoch": metrics["best_epoch"]}
    mv = registry.register(folder, params, metrics["history"], final, tags={"run_date": cfg.run_date})
    decision = promote(registry, mv, cfg.lake_uri, cfg.promotion_tolerance_se, force,
                       versions=metrics.get("data_versions"))
    return mv, decision


def summary_lines(folder, m: dict, registered=None) -> list[str]:
    """What the stage prints: the artifact, its selected metric, epochs, refit, score terms, throughput, registry."""
    from crossrec.io.registry import MODEL_NAME
    from crossrec.rerank.fit import report_lines

    lines = [f"model artifact:   {folder}",
             f"best valid NDCG@10: {m['valid'][METRIC]:.4f} (epoch {m['best_epoch']}; Recall@10 "
             f"{m['valid']['valid_recall@10']:.4f})",
             f"epochs run:       {m['epochs_run']} of {m['max_epochs']}{' (early stop)' if m['early_stopped'] else ''}"
             f"{'; resumed at ' + str(m['resumed_at_epochs']) if m['resumed_at_epochs'] else ''}"]
    if m.get("refit"):
        lines.append(f"refit:            {m['refit']['epochs']} epoch(s) on train events + valid targets "
                     f"({m['refit']['train_windows']} windows, {m['refit']['wall_time_s']:.0f}s): the artifact's model")
    if "k" in (m.get("id_shrinkage") or {}):
        lines.append(f"id shrinkage:     k = {m['id_shrinkage']['k']:g}")
    if (m.get("cold_bias") or {}).get("by_domain"):
        lines.append(f"cold bias:        {m.get('untrained_items', 0)} item(s) without training events at the quantile of "
                     "their domain's biases: " + ", ".join(f"{d} {q:g}" for d, q in m["cold_bias"]["by_domain"].items()))
    lines += report_lines(m.get("terms") or {})
    lines.append(f"throughput:       {m['samples_per_s']:.0f} samples/s over {m['workers']} {m['device']} worker(s); "
                 f"wall {m['wall_time_s']:.1f}s")
    if registered is not None:
        mv, decision = registered
        champion = f"version {mv.number}" if decision.promoted else f"stays version {decision.champion_before}"
        lines += [f"registered:       {MODEL_NAME} version {mv.number} (MLflow run {mv.run_id})",
                  f"champion:         {champion} -- {decision.reason}"]
    return lines


def run_train(cfg: CrossrecConfig, a: argparse.Namespace) -> None:
    """Train (:func:`crossrec.train.driver.train`), record the run and its inputs in ops.runs (no table is written),
    register and promote the artifact unless ``--no-register``, and print the summary."""
    from crossrec.io.lakefs import local_copy
    from crossrec.io.runs import stage_run
    from crossrec.train.driver import train

    tcfg = train_config(cfg, a)
    log.info("%s training config: %s", STAGE, tcfg)
    registered = None
    with stage_run(None, cfg, STAGE, []) as stage:
        folder = train(tcfg)
        m = json.loads((Path(local_copy(folder)) / "metrics.json").read_text(encoding="utf-8"))
        stage.reads = {k: int(v) for k, v in (m.get("data_versions") or {}).items()}
        stage.details.update(artifact=str(folder).rsplit("/", 1)[-1], valid_ndcg=m["valid"][METRIC])
        if a.register:
            registered = register_and_promote(cfg, folder, m, a.force_promote)
            stage.details.update(registered_version=registered[0].number, champion=registered[1].promoted)
    for line in summary_lines(folder, m, registered):
        print(line)


__all__ = ["add_train_arguments", "train_config", "register_and_promote", "summary_lines", "run_train", "STAGE"]

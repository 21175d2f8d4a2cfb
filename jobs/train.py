"""Train stage: gold tables -> Cross-domain Transformer on Ray Train -> versioned model artifact.

Run it:
    crossrec train --lake-root lakehouse --workers 2 [--epochs N]      # a local Ray instance
    python -m crossrec_jobs.train --lake-root lakehouse ...             # same thing
    crossrec train --ray-address auto --workers 8 --gpu --lake-root /mnt/lake ...   # on a Ray cluster

Reads gold.user_sequences (train and valid rows), gold.item_index and gold.item_embeddings at the Delta
versions resolved at start (no Spark), trains data-parallel on N Ray Train workers with per-epoch validation
(NDCG@10 / Recall@10, full ranking per target domain), checkpoints every epoch, restarts failed workers from
the last checkpoint (--max-failures), stops early after --patience epochs without improvement, and writes
``<lake>/models/<model_version>/`` from the best epoch, with the score terms of lib/crossrec/rerank/ (--terms)
fitted on the validation split. The artifact is logged as an MLflow run (parameters, per-epoch metrics) and
registered as a version of the ``crossrec`` model (crossrec.io.registry); the promotion gate
(crossrec.evaluate.promotion) then moves the ``champion`` alias, which evaluate and score use, to it unless it is
clearly worse than the current champion on the test split (--force-promote overrides; --no-register skips both).
Library code: lib/crossrec/train/loop.py.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from crossrec.cli.common import add_common_args, config_from_args, run_guarded, setup_logging
from crossrec.io.lakefs import local_copy
from crossrec.io.registry import MODEL_NAME

log = logging.getLogger("crossrec.jobs.train")
STAGE = "train"


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_common_args(p)
    g = p.add_argument_group("train")
    g.add_argument("--workers", type=int, default=2, help="Ray Train workers / DDP ranks (default 2)")
    g.add_argument("--epochs", type=int, default=10, help="maximum epochs (default 10)")
    g.add_argument("--batch-size", type=int, default=128, help="training windows per worker and step (default 128)")
    g.add_argument("--lr", type=float, default=1e-3, help="AdamW learning rate (default 1e-3)")
    g.add_argument("--weight-decay", type=float, default=0.0, help="AdamW weight decay (default 0)")
    g.add_argument("--lr-schedule", choices=["constant", "linear", "cosine"], default="constant",
                   help="learning rate over the run: constant, or decaying to 0 at the last of --epochs, linearly "
                        "or along a half cosine (default constant)")
    g.add_argument("--patience", type=int, default=2, help="epochs without valid NDCG@10 improvement before stopping (default 2)")
    g.add_argument("--d-model", type=int, default=128, help="model width (default 128)")
    g.add_argument("--n-layers", type=int, default=2, help="Transformer layers (default 2)")
    g.add_argument("--n-heads", type=int, default=2, help="attention heads (default 2)")
    g.add_argument("--dropout", type=float, default=0.1, help="dropout (default 0.1)")
    g.add_argument("--loss", choices=["auto", "softmax", "sampled"], default="auto",
                   help="full softmax per domain, sampled softmax, or auto (default): sampled once the largest domain "
                        "holds more than twice --n-negatives items")
    g.add_argument("--n-negatives", type=int, default=2048, help="sampled softmax: negatives per domain and step, popularity-drawn, log-Q corrected (default 2048)")
    g.add_argument("--no-text", dest="use_text", action="store_false", help="do not use the text embeddings (id-only model)")
    g.add_argument("--text-encoder", dest="text_encoder", choices=["auto", "frozen", "finetune"],
                   help="frozen: the features job's text embeddings; finetune: run all-MiniLM-L6-v2 in every step and "
                        "train its top --finetune-layers (slow on CPU); auto: finetune on GPU workers, else frozen "
                        "(config key text_encoder; default auto)")
    g.add_argument("--finetune-layers", type=int, default=1, help="finetune: top text-model layers trained (default 1)")
    g.add_argument("--text-max-tokens", type=int, default=64, help="finetune: tokens of each item's text read (default 64)")
    g.add_argument("--text-lr-scale", type=float, default=0.1,
                   help="finetune: the text layers' learning rate as a share of --lr (default 0.1)")
    g.add_argument("--no-id-embedding", dest="use_id_embedding", action="store_false", help="text-only item representation")
    g.add_argument("--no-categories", dest="use_categories", action="store_false", help="no category embedding (default: one per (domain, category) of gold.item_index)")
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
    g.add_argument("--id-dropout", type=float, default=0.0, help="training: share of item occurrences whose id embedding is dropped, so text carries them (default 0)")
    g.add_argument("--input-domains", help="comma-separated: train on (and later predict from) these domains' events "
                   "only; with --no-text and one domain this is the single-domain SASRec-style baseline (default: all)")
    g.add_argument("--max-users", type=int, help="train on a seeded sample of at most this many users (default: all); "
                   "scoring still covers everyone")
    g.add_argument("--max-seq-len", dest="max_seq_len", type=int, help="events of history the model sees (default 50)")
    g.add_argument("--seed", type=int, help="seed of initialisation and shuffling (default 42)")
    g.add_argument("--max-failures", type=int, default=2, help="worker-group restarts from the last checkpoint (default 2)")
    g.add_argument("--ray-address", help="Ray cluster address ('auto' or host:port); default: RAY_ADDRESS when set, else a new local Ray instance")
    g.add_argument("--storage-path", help="Ray Train checkpoints (default <lake>/_ray)")
    g.add_argument("--model-root", help="where artifacts go (default <lake>/models)")
    g.add_argument("--no-register", dest="register", action="store_false",
                   help="write the artifact only: no MLflow run, no registered version, no promotion (reference "
                        "models of the benchmarks; pass the folder to evaluate with --model)")
    g.add_argument("--force-promote", action="store_true",
                   help="make the new version the champion even if the promotion gate finds it worse")
    g.add_argument("--promotion-tolerance-se", dest="promotion_tolerance_se", type=float,
                   help="the gate keeps a new model out when it is worse than the champion by more than this many "
                        "standard errors in some domain (config key promotion_tolerance_se; default 2)")
    gpu = g.add_mutually_exclusive_group()
    gpu.add_argument("--gpu", dest="use_gpu", action="store_const", const=True, help="one GPU per worker")
    gpu.add_argument("--no-gpu", dest="use_gpu", action="store_const", const=False, help="CPU workers even if GPUs exist")
    g.add_argument("--cpus-per-worker", type=float, default=0.5, help="CPUs reserved per CPU worker (default 0.5, leaves CPUs to Ray Data)")


def register_and_promote(cfg, folder, metrics: dict, force: bool):
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


def main(argv: list[str] | None = None) -> int:
    from crossrec.io.runs import stage_run

    p = argparse.ArgumentParser(prog=f"crossrec {STAGE}", description=__doc__.split("\n\n")[0])
    add_arguments(p)
    args = p.parse_args(argv)
    setup_logging(args.verbose)

    def body() -> None:
        from crossrec.rerank.fit import report_lines
        from crossrec.train.loop import METRIC, TrainConfig, train

        cfg = config_from_args(args)
        tcfg = TrainConfig(
            lake_root=cfg.lake_uri, workers=args.workers, use_gpu=args.use_gpu, cpus_per_worker=args.cpus_per_worker,
            epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay,
            lr_schedule=args.lr_schedule,
            patience=args.patience, max_seq_len=cfg.max_seq_len, seed=cfg.seed, d_model=args.d_model,
            n_layers=args.n_layers, n_heads=args.n_heads, dropout=args.dropout, loss=args.loss, n_negatives=args.n_negatives,
            use_text=args.use_text, use_id_embedding=args.use_id_embedding, id_dropout=args.id_dropout,
            text_encoder=cfg.text_encoder, finetune_layers=args.finetune_layers, text_max_tokens=args.text_max_tokens,
            text_lr_scale=args.text_lr_scale, refit=args.refit,
            use_categories=args.use_categories, cold_views=args.cold_views,
            terms=None if args.terms is None else () if args.terms == "none" else tuple(n for n in args.terms.split(",") if n),
            input_domains=tuple(d for d in args.input_domains.split(",") if d) if args.input_domains else None,
            max_users=args.max_users, max_failures=args.max_failures,
            storage_path=args.storage_path, model_root=args.model_root, ray_address=args.ray_address,
        )
        log.info("%s config: %s", STAGE, cfg.masked())
        log.info("%s training config: %s", STAGE, tcfg)
        registered = None
        with stage_run(None, cfg, STAGE, []) as stage:  # no tables written: the run and its inputs are recorded
            folder = train(tcfg)
            m = json.loads((Path(local_copy(folder)) / "metrics.json").read_text(encoding="utf-8"))
            stage.reads = {k: int(v) for k, v in (m.get("data_versions") or {}).items()}
            stage.details.update(artifact=str(folder).rsplit("/", 1)[-1], valid_ndcg=m["valid"][METRIC])
            if args.register:
                registered = register_and_promote(cfg, folder, m, args.force_promote)
                stage.details.update(registered_version=registered[0].number, champion=registered[1].promoted)
        print(f"model artifact:   {folder}")
        print(f"best valid NDCG@10: {m['valid'][METRIC]:.4f} (epoch {m['best_epoch']}; Recall@10 {m['valid']['valid_recall@10']:.4f})")
        print(f"epochs run:       {m['epochs_run']} of {m['max_epochs']}{' (early stop)' if m['early_stopped'] else ''}"
              f"{'; resumed at ' + str(m['resumed_at_epochs']) if m['resumed_at_epochs'] else ''}")
        if m.get("refit"):
            print(f"refit:            {m['refit']['epochs']} epoch(s) on train events + valid targets "
                  f"({m['refit']['train_windows']} windows, {m['refit']['wall_time_s']:.0f}s): the artifact's model")
        for line in report_lines(m.get("terms") or {}):
            print(line)
        print(f"throughput:       {m['samples_per_s']:.0f} samples/s over {m['workers']} {m['device']} worker(s); wall {m['wall_time_s']:.1f}s")
        if registered is not None:
            mv, decision = registered
            print(f"registered:       {MODEL_NAME} version {mv.number} (MLflow run {mv.run_id})")
            print(f"champion:         {'version ' + str(mv.number) if decision.promoted else 'stays version ' + str(decision.champion_before)}"
                  f" -- {decision.reason}")

    return run_guarded(STAGE, body)


if __name__ == "__main__":
    sys.exit(main())

"""What one training run depends on: :class:`TrainConfig`, its model version, and the learning-rate schedule.

``model_version = <UTC date YYYYMMDD>-<8 hex of sha256(model/training config + data versions + seed)>``: the same
configuration on the same data versions on the same day is the same version (and the same Ray Train run, so a rerun
resumes it; see :mod:`crossrec.train.checkpoint`).
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import math
import os
from dataclasses import dataclass
from typing import Mapping

from crossrec.io.config import CrossrecConfig
from crossrec.model.config import ModelConfig
from crossrec.train.faults import FailOnce

GOLD_TABLES = ("gold.user_sequences", "gold.item_index", "gold.item_embeddings")
METRIC = "valid_ndcg@10"  # early stopping, checkpoint retention and model selection
LR_SCHEDULES = ("constant", "linear", "cosine")
LOSSES = ("auto", "softmax", "sampled")
TEXT_ENCODERS = ("auto", "frozen", "finetune")
MODEL = {f.name: f.default for f in dataclasses.fields(ModelConfig)}  # the model's defaults, declared once there


@dataclass(frozen=True)
class TrainConfig:
    """Everything one training run depends on (the job builds it from CrossrecConfig + flags).

    Attributes:
        lake_root: lakehouse root holding the gold tables (a local folder; made absolute).
        workers: Ray Train workers (DDP ranks).
        use_gpu: one GPU per worker; None = auto (the Ray cluster has GPUs).
        cpus_per_worker: CPUs Ray reserves per worker on CPU (fractional lets more workers than cores be placed,
            e.g. the default 2 workers on a 2-core machine beside the driver); each worker runs
            ``max(1, int(cpus_per_worker))`` torch threads.
        epochs, batch_size (per worker), lr, weight_decay: AdamW training.
        lr_schedule: ``constant`` (default) or ``linear`` / ``cosine``: the learning rate decays from ``lr`` to 0
            over ``epochs`` epochs, step by step (:func:`lr_at`), so ``epochs`` is then the length of the schedule,
            not only a cap; early stopping still applies.
        patience: stop when valid NDCG@10 has not improved for this many epochs.
        min_epochs: early stopping never stops a run before this many epochs (0 = from the first); the best epoch is
            still the one chosen on validation. A model whose validation dips after its first epoch and recovers
            later (a single-domain model on ids alone, on a sparse catalog) is otherwise stopped before it learns.
        loss: ``softmax`` (full, per domain), ``sampled`` (``n_negatives`` popularity-drawn negatives per domain and
            step, log-Q corrected) or ``auto`` (default: :meth:`resolved_loss`).
        max_seq_len, seed, d_model, n_layers, n_heads, dropout, n_negatives, use_text, use_id_embedding,
            item_bias, id_dropout: model
        text_encoder: ``frozen`` (the gold.item_embeddings vectors), ``finetune`` (all-MiniLM-L6-v2 runs over the items'
            tokens in every step, its top ``finetune_layers`` trained at ``text_lr_scale`` x the learning rate, each
            item's text cut to ``text_max_tokens`` tokens; :func:`add_item_tokens`) or ``auto`` (default:
            :meth:`resolved_text_encoder`).
        refit: after the epoch is chosen on validation, train again from the same initialisation and schedule, for
            that many epochs, on the training events plus every validation target (:func:`extend_with_targets`), as
            the baselines and the score terms learn from them before test and scoring; the artifact holds that model
            (its score terms are still chosen with the selected model, on validation rows it has not learned).
        use_categories: give each item an attribute embedding of its (domain, category) from gold.item_index.
        use_entities: give each item the mean embedding of its attribute entities (silver.item_entities), shared
            across domains; only entities of at least ``min_entity_items`` items, the ``max_entities`` most frequent,
            at most ``max_item_entities`` per item (its most frequent) -- memory stays bounded whatever the catalog.
        use_vectors: feed each item's precomputed vectors (silver.items.vectors: images, audio, ...) to the item
            encoder through a learned projection; items without one get zeros.
            (see crossrec.model.config.ModelConfig).
        cold_views: also train on cold-domain views of multi-domain histories (each domain's targets predicted
            from the other domains' events only; see :func:`training_windows`), for users new to a domain.
        id_shrinkage: ``k`` of :mod:`crossrec.train.id_shrinkage` (each id embedding scaled by n / (n + k), n the
            item's training events); None = chosen on the validation split (default), 0 = ids as learnt.
        terms: after training, fit these score terms (names registered in crossrec.rerank) and choose their
            parameters per domain on the validation split (crossrec.rerank.fit.fit_terms); None = every
            registered term (resolved here, so the fingerprint names them), () = none.
        input_domains: train (and later predict) from the events of these domains only, and only on their
            targets; None = every domain (the cross-domain model). One domain with ``use_text=False`` is the
            single-domain SASRec-style baseline. Recorded in the artifact's metrics.json.
        max_users: train and validate on a seeded sample of at most this many users (their train windows and
            valid rows); None = every user. Big nightly runs fit the model on a sample and score everyone.
        max_failures: worker-group restarts Ray Train attempts (from the latest checkpoint).
        storage_path: Ray Train run storage (checkpoints); default ``<lake_root>/_ray``.
        model_root: where artifacts go; default ``<lake_root>/models`` (jobs/train.py registers them from there).
        versions: pinned Delta versions of the gold tables; missing ones are resolved (newest) at start.
        ray_address: ``ray.init`` address (``auto`` or ``host:port`` on a cluster); None = ``RAY_ADDRESS`` when
            set, else a new local Ray instance (see :func:`ray_address`).
        log_every: rank 0 logs progress every this many steps.
        fail_once_at: test hook, see :class:`FailOnce`.
    """

    lake_root: str
    workers: int = 2
    use_gpu: bool | None = None
    cpus_per_worker: float = 0.5
    epochs: int = 10
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.0
    lr_schedule: str = "constant"
    patience: int = 2
    min_epochs: int = 0
    max_seq_len: int = MODEL["max_seq_len"]
    seed: int = CrossrecConfig.seed
    d_model: int = MODEL["d_model"]
    n_layers: int = MODEL["n_layers"]
    n_heads: int = MODEL["n_heads"]
    dropout: float = MODEL["dropout"]
    loss: str = "auto"
    n_negatives: int = MODEL["n_negatives"]
    text_encoder: str = CrossrecConfig.text_encoder
    finetune_layers: int = MODEL["finetune_layers"]
    text_max_tokens: int = 64
    text_lr_scale: float = 0.1
    refit: bool = True
    use_text: bool = MODEL["use_text"]
    use_id_embedding: bool = MODEL["use_id_embedding"]
    item_bias: bool = MODEL["item_bias"]
    id_dropout: float = MODEL["id_dropout"]
    id_shrinkage: float | None = None
    use_categories: bool = True
    use_entities: bool = True
    max_entities: int = 100_000
    max_item_entities: int = 8
    min_entity_items: int = 2
    use_vectors: bool = True
    cold_views: bool = True
    terms: tuple[str, ...] | None = None
    input_domains: tuple[str, ...] | None = None
    max_users: int | None = None
    max_failures: int = 2
    storage_path: str | None = None
    model_root: str | None = None
    versions: Mapping[str, int] | None = None
    ray_address: str | None = None
    log_every: int = 50
    fail_once_at: FailOnce | None = None

    def __post_init__(self) -> None:
        assert self.workers >= 1, f"workers must be >= 1, got {self.workers}"
        assert self.epochs >= 1, f"epochs must be >= 1, got {self.epochs}"
        assert self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}"
        assert self.patience >= 1, f"patience must be >= 1, got {self.patience}"
        assert self.min_epochs >= 0, f"min_epochs must be >= 0, got {self.min_epochs}"
        assert self.lr >= 0 and self.weight_decay >= 0, "lr and weight_decay must be >= 0"
        assert self.max_failures >= -1, f"max_failures must be >= -1 (-1 = unlimited), got {self.max_failures}"
        assert self.max_users is None or self.max_users >= 1, f"max_users must be >= 1 or None, got {self.max_users}"
        assert self.id_shrinkage is None or self.id_shrinkage >= 0, f"id_shrinkage must be >= 0 or None, got {self.id_shrinkage}"
        assert self.cpus_per_worker > 0, f"cpus_per_worker must be > 0, got {self.cpus_per_worker}"
        assert self.lr_schedule in LR_SCHEDULES, f"lr_schedule must be one of {LR_SCHEDULES}, got {self.lr_schedule!r}"
        assert self.loss in LOSSES, f"loss must be one of {LOSSES}, got {self.loss!r}"
        assert self.text_encoder in TEXT_ENCODERS, f"text_encoder must be one of {TEXT_ENCODERS}, got {self.text_encoder!r}"
        assert self.text_encoder != "finetune" or self.use_text, "text_encoder='finetune' needs the text (no --no-text)"
        assert self.max_entities >= 1 and self.max_item_entities >= 1 and self.min_entity_items >= 1, (
            "max_entities, max_item_entities and min_entity_items must be >= 1")
        assert self.finetune_layers >= 1 and self.text_max_tokens >= 2 and self.text_lr_scale > 0, (
            "finetune_layers >= 1, text_max_tokens >= 2 and text_lr_scale > 0")
        from crossrec.rerank.base import registered

        known = registered()
        object.__setattr__(self, "terms", tuple(known) if self.terms is None else tuple(self.terms))
        unknown = sorted(set(self.terms) - set(known))
        assert not unknown, f"unknown score term(s) {unknown}; registered: {list(known)}"
        if self.input_domains is not None:
            assert len(self.input_domains) >= 1, "input_domains must name at least one domain (or be None)"
            object.__setattr__(self, "input_domains", tuple(sorted(set(self.input_domains))))
        if "://" not in self.lake_root:  # Ray workers may run in another working directory
            object.__setattr__(self, "lake_root", os.path.abspath(self.lake_root.removeprefix("file:")))

    @property
    def storage_root(self) -> str:
        return self.storage_path or os.path.join(self.lake_root, "_ray")

    @property
    def models_root(self) -> str:
        return self.model_root or os.path.join(self.lake_root, "models")

    def resolved_loss(self, largest_domain: int) -> str:
        """``loss``, with ``auto`` resolved for a catalog whose largest domain holds ``largest_domain`` items:
        full softmax while that domain is at most twice ``n_negatives`` (sampling would cost as much), sampled
        softmax beyond (a step's cost then stops growing with the catalog)."""
        if self.loss != "auto":
            return self.loss
        return "sampled" if largest_domain > 2 * self.n_negatives else "softmax"

    def resolved_text_encoder(self, use_gpu: bool) -> str:
        """``text_encoder``, with ``auto`` resolved: ``finetune`` on GPU workers, ``frozen`` on CPU ones (where
        running the text model in every step makes training many times slower); ``frozen`` without text."""
        if not self.use_text:
            return "frozen"
        if self.text_encoder != "auto":
            return self.text_encoder
        return "finetune" if use_gpu else "frozen"

    def model_config(self, n_items: int, n_domains: int, text_dim: int, n_attr_values: int = 0,
                     largest_domain: int | None = None, text_encoder: str = "frozen", n_entities: int = 0,
                     vector_dim: int = 0):
        """The model's :class:`~crossrec.model.config.ModelConfig`; ``largest_domain`` (items of the largest domain,
        default ``n_items``) resolves ``loss='auto'``, ``text_encoder`` is :meth:`resolved_text_encoder`'s."""
        return ModelConfig(n_items=n_items, n_domains=n_domains, text_dim=text_dim, d_model=self.d_model,
                           n_layers=self.n_layers, n_heads=self.n_heads, dropout=self.dropout,
                           max_seq_len=self.max_seq_len, use_text=self.use_text,
                           use_id_embedding=self.use_id_embedding, item_bias=self.item_bias,
                           loss=self.resolved_loss(n_items if largest_domain is None else largest_domain),
                           n_negatives=self.n_negatives, id_dropout=self.id_dropout, n_attr_values=n_attr_values,
                           text_encoder=text_encoder, finetune_layers=self.finetune_layers, n_entities=n_entities,
                           vector_dim=vector_dim)

    def fingerprint(self, versions: Mapping[str, int]) -> str:
        """8 hex of sha256 over what determines the model: hyper-parameters, workers (the global batch),
        seed and data versions -- not paths, addresses or retry policy."""
        skip = {"lake_root", "storage_path", "model_root", "versions", "ray_address", "max_failures", "log_every",
                "fail_once_at", "use_gpu", "cpus_per_worker"}
        d = {k: v for k, v in dataclasses.asdict(self).items() if k not in skip}
        if d["id_shrinkage"] is None:  # the default (chosen on validation) keeps the versions of models before it
            del d["id_shrinkage"]
        if not d["item_bias"]:  # likewise the default, no item biases
            del d["item_bias"]
        d["versions"] = dict(sorted(versions.items()))
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode("utf-8")).hexdigest()[:8]


def model_version(cfg: TrainConfig, versions: Mapping[str, int], now: dt.datetime | None = None) -> str:
    """``<UTC date YYYYMMDD>-<fingerprint>``."""
    now = now or dt.datetime.now(dt.timezone.utc)
    return f"{now.strftime('%Y%m%d')}-{cfg.fingerprint(versions)}"



def lr_at(lr: float, schedule: str, step: int, total_steps: int) -> float:
    """Learning rate of optimizer step ``step`` (0-based) of ``total_steps``: ``lr`` throughout (constant), or
    decaying from ``lr`` at step 0 towards 0 at ``total_steps``, linearly or along a half cosine; never below 0
    (a resumed or longer run past ``total_steps`` trains at 0)."""
    assert schedule in LR_SCHEDULES, f"lr_schedule must be one of {LR_SCHEDULES}, got {schedule!r}"
    if schedule == "constant":
        return lr
    done = min(max(step, 0) / max(total_steps, 1), 1.0)
    if schedule == "linear":
        return lr * (1.0 - done)
    return lr * 0.5 * (1.0 + math.cos(math.pi * done))


__all__ = ["TrainConfig", "model_version", "lr_at", "GOLD_TABLES", "METRIC", "LR_SCHEDULES", "LOSSES",
           "TEXT_ENCODERS"]

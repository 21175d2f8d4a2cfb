"""Training stage on Ray Train: gold tables at pinned versions -> data-parallel training -> model artifact.

Two halves, as every Ray Train program (CONVENTIONS point 8):

* the **driver**, :func:`train`: resolves the Delta versions of the gold tables once (``versions``), reads
  them with ``deltalake`` (no Spark), cuts the training windows, hands the rows to the workers as Ray Data
  datasets, builds ``ScalingConfig`` / ``RunConfig`` / ``TorchTrainer``, runs ``fit()`` and writes the model
  artifact from the best checkpoint;
* the **worker function**, :func:`train_loop_per_worker`: one per Ray Train worker (a DDP rank). It trains on
  its shard of ``train``, scores its share of ``valid`` after each epoch, all-reduces the metric sums, and
  calls ``ray.train.report`` exactly once per epoch on every rank (rank 0 alone attaches a checkpoint).

Data. A ``split=train`` row of ``gold.user_sequences`` holds a user's whole training history ``s``; it is cut
into windows of at most ``max_seq_len + 1`` events, newest first, overlapping by one event, so every next-item
target of ``s`` is predicted exactly once (:func:`training_windows`). A window ``w`` is one sample: inputs
``w[:-1]``, targets ``w[1:]``, target domain = the domain of the target item in ``gold.item_index``. With
``cold_views`` (default) a history spanning several domains also gives, per domain d, a view whose inputs are the
other domains' events and whose targets are the d events that follow them: the state a user new to d is in. Training
windows are split across workers with ``streaming_split(equal=True)`` (Ray Train's default), so every rank
runs the same number of steps per epoch -- DDP requires it. Each rank batches windows of similar length
together (:func:`length_bucketed`), which removes most padding. ``split=valid`` rows are *not* split: every worker
sees them all and scores the rows with ``row_id % world_size == rank``, so the validation metric covers every
row exactly once (an equal split would drop up to ``world_size - 1`` rows).

Validation (the metric early stopping and model selection use) scores through the one inference path
(:class:`crossrec.inference.Predictor`, the Transformer alone), as ``crossrec.evaluate.protocol`` does: the
target is ranked among all items of its domain, the items of the row's history in that domain excluded;
rows with an empty history are scored by training popularity (``train_count``). Per rank: sums of NDCG@10,
Recall@10, MRR and row counts per domain, then ``all_reduce(SUM)``; every rank so takes the same early-stopping
decision (stop when ``valid_ndcg@10`` has not improved for ``patience`` epochs).

Checkpoint (a folder, written by rank 0 only; no pickle anywhere)::

    model.safetensors + config.json   crossrec.model.artifact.save_model (DDP's ``module.`` prefix stripped)
    optimizer.safetensors             every tensor of the AdamW state, keys ``state.<param>.<name>``
    optimizer.json                    the rest of the optimizer state (param groups, non-tensor values)
    train_state.json                  epoch, global_step, best metric and epoch, bad_epochs, history, resumes

Resume. At start every worker calls ``ray.train.get_checkpoint()``. Ray Train hands it the latest reported
checkpoint after a worker failure (``FailureConfig(max_failures)``) or when a run with the same
``RunConfig(name, storage_path)`` is started again; the worker then loads weights, optimizer state, epoch
counter and early-stopping state and continues at the next epoch. The run name is ``train-<model_version>``:
re-running the same configuration on the same data versions on the same UTC day continues (or, when it had
finished, just re-exports) that run instead of training again. The name does not cover the model code: a
checkpoint whose weights do not fit the model built now (the code changed in between) is refused with what
differs (:func:`read_checkpoint`); remove that run folder or pass ``--storage-path`` to start afresh.

Refit (``TrainConfig.refit``, default on). The baselines and the score terms learn from the validation targets
before they are tested or score users; so does the Transformer: once the run has chosen its epoch on validation, a
second Ray Train run (``train-<model_version>-refit``) trains from the same initialisation, with the same schedule,
for that many epochs on the training events plus every validation target (:func:`extend_with_targets`). Its
validation figures are of rows it learned and are not used; the score terms are chosen with the selected model.

Artifact (``<model_root>/<model_version>/``, written by the driver and moved into place atomically;
crossrec.model.artifact.load_artifact reads it; jobs/train.py registers it in the model registry, crossrec.io.registry)::

    model.safetensors, config.json    the refit's weights (without refit: the best epoch's)
    terms.json, terms/*.safetensors   the score terms (crossrec.rerank) fitted on the validation split after training
    item_index.parquet                item_idx, domain, item_id, domain_idx, domain_item_idx
    metrics.json                      selected-on valid metrics, per-epoch history, data versions, timings, the term
                                      fit's report under "terms"

``model_version = <UTC date YYYYMMDD>-<8 hex of sha256(model/training config + data versions + seed)>``.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import logging
import math
import os
import shutil
import signal
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping

import numpy as np


if TYPE_CHECKING:
    from crossrec.model.transformer import CrossDomainTransformer
    from crossrec.rerank.base import TermSet

log = logging.getLogger(__name__)

GOLD_TABLES = ("gold.user_sequences", "gold.item_index", "gold.item_embeddings")
METRIC = "valid_ndcg@10"  # early stopping, checkpoint retention and model selection
MIN_DELTA = 1e-6  # an improvement smaller than this is no improvement (float noise between epochs)
STATE_FILE = "train_state.json"
OPT_TENSORS = "optimizer.safetensors"
OPT_META = "optimizer.json"
KS = (10,)
LR_SCHEDULES = ("constant", "linear", "cosine")
LOSSES = ("auto", "softmax", "sampled")
TEXT_ENCODERS = ("auto", "frozen", "finetune")
POOL_BATCHES = 16  # training batches per length-sorted pool (see length_bucketed)


# ------------------------------------------------------------------------------------------------- config
@dataclass(frozen=True)
class FailOnce:
    """Test hook: rank ``rank`` kills its own process (SIGKILL) before step ``step`` of epoch ``epoch``,
    once: the first time it creates ``marker``; later attempts see the file and go on. Before the kill it
    waits until Ray Train has committed the checkpoints reported so far, so the resume point is known."""

    epoch: int
    step: int
    rank: int
    marker: str


@dataclass(frozen=True)
class TrainConfig:
    """Everything one training run depends on (the job builds it from CrossrecConfig + flags).

    Attributes:
        lake_root: lakehouse root holding the gold tables (a local folder; made absolute).
        workers: Ray Train workers (DDP ranks).
        use_gpu: one GPU per worker; None = auto (the Ray cluster has GPUs).
        cpus_per_worker: CPUs reserved per worker on CPU; fractional on small machines, so that Ray Data
            keeps a CPU to feed the workers (with whole CPUs on 2 cores it waits forever).
        epochs, batch_size (per worker), lr, weight_decay: AdamW training.
        lr_schedule: ``constant`` (default) or ``linear`` / ``cosine``: the learning rate decays from ``lr`` to 0
            over ``epochs`` epochs, step by step (:func:`lr_at`), so ``epochs`` is then the length of the schedule,
            not only a cap; early stopping still applies.
        patience: stop when valid NDCG@10 has not improved for this many epochs.
        loss: ``softmax`` (full, per domain), ``sampled`` (``n_negatives`` popularity-drawn negatives per domain and
            step, log-Q corrected) or ``auto`` (default: :meth:`resolved_loss`).
        max_seq_len, seed, d_model, n_layers, n_heads, dropout, n_negatives, use_text, use_id_embedding,
            id_dropout: model
        text_encoder: ``frozen`` (the gold.item_embeddings vectors), ``finetune`` (all-MiniLM-L6-v2 runs over the items'
            tokens in every step, its top ``finetune_layers`` trained at ``text_lr_scale`` x the learning rate, each
            item's text cut to ``text_max_tokens`` tokens; :func:`add_item_tokens`) or ``auto`` (default:
            :meth:`resolved_text_encoder`).
        refit: after the epoch is chosen on validation, train again from the same initialisation and schedule, for
            that many epochs, on the training events plus every validation target (:func:`extend_with_targets`), as
            the baselines and the score terms learn from them before test and scoring; the artifact holds that model
            (its score terms are still chosen with the selected model, on validation rows it has not learned).
        use_categories: give each item an attribute embedding of its (domain, category) from gold.item_index.
            (see crossrec.model.config.ModelConfig).
        cold_views: also train on cold-domain views of multi-domain histories (each domain's targets predicted
            from the other domains' events only; see :func:`training_windows`), for users new to a domain.
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
    max_seq_len: int = 50
    seed: int = 42
    d_model: int = 128
    n_layers: int = 2
    n_heads: int = 2
    dropout: float = 0.1
    loss: str = "auto"
    n_negatives: int = 2048
    text_encoder: str = "auto"
    finetune_layers: int = 1
    text_max_tokens: int = 64
    text_lr_scale: float = 0.1
    refit: bool = True
    use_text: bool = True
    use_id_embedding: bool = True
    id_dropout: float = 0.0
    use_categories: bool = True
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
        assert self.lr >= 0 and self.weight_decay >= 0, "lr and weight_decay must be >= 0"
        assert self.max_failures >= -1, f"max_failures must be >= -1 (-1 = unlimited), got {self.max_failures}"
        assert self.max_users is None or self.max_users >= 1, f"max_users must be >= 1 or None, got {self.max_users}"
        assert self.cpus_per_worker > 0, f"cpus_per_worker must be > 0, got {self.cpus_per_worker}"
        assert self.lr_schedule in LR_SCHEDULES, f"lr_schedule must be one of {LR_SCHEDULES}, got {self.lr_schedule!r}"
        assert self.loss in LOSSES, f"loss must be one of {LOSSES}, got {self.loss!r}"
        assert self.text_encoder in TEXT_ENCODERS, f"text_encoder must be one of {TEXT_ENCODERS}, got {self.text_encoder!r}"
        assert self.text_encoder != "finetune" or self.use_text, "text_encoder='finetune' needs the text (no --no-text)"
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
                     largest_domain: int | None = None, text_encoder: str = "frozen"):
        """The model's :class:`~crossrec.model.config.ModelConfig`; ``largest_domain`` (items of the largest domain,
        default ``n_items``) resolves ``loss='auto'``, ``text_encoder`` is :meth:`resolved_text_encoder`'s."""
        from crossrec.model.config import ModelConfig

        return ModelConfig(n_items=n_items, n_domains=n_domains, text_dim=text_dim, d_model=self.d_model,
                           n_layers=self.n_layers, n_heads=self.n_heads, dropout=self.dropout,
                           max_seq_len=self.max_seq_len, use_text=self.use_text,
                           use_id_embedding=self.use_id_embedding,
                           loss=self.resolved_loss(n_items if largest_domain is None else largest_domain),
                           n_negatives=self.n_negatives, id_dropout=self.id_dropout, n_attr_values=n_attr_values,
                           text_encoder=text_encoder, finetune_layers=self.finetune_layers)

    def fingerprint(self, versions: Mapping[str, int]) -> str:
        """8 hex of sha256 over what determines the model: hyper-parameters, workers (the global batch),
        seed and data versions -- not paths, addresses or retry policy."""
        skip = {"lake_root", "storage_path", "model_root", "versions", "ray_address", "max_failures", "log_every",
                "fail_once_at", "use_gpu", "cpus_per_worker"}
        d = {k: v for k, v in dataclasses.asdict(self).items() if k not in skip}
        d["versions"] = dict(sorted(versions.items()))
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode("utf-8")).hexdigest()[:8]


def model_version(cfg: TrainConfig, versions: Mapping[str, int], now: dt.datetime | None = None) -> str:
    """``<UTC date YYYYMMDD>-<fingerprint>``."""
    now = now or dt.datetime.now(dt.timezone.utc)
    return f"{now.strftime('%Y%m%d')}-{cfg.fingerprint(versions)}"


# ------------------------------------------------------------------------------------------- data (driver)
@dataclass
class TrainingData:
    """What the driver hands to the workers (tables) and keeps for the artifact (item_index)."""

    train: Any  # pyarrow.Table: item_idx, domain_idx, event_ts (list<int64>, <= max_seq_len + 1 events)
    valid: Any  # pyarrow.Table: row_id, item_idx, event_ts (full stored history), target_item_idx
    catalog: dict[str, np.ndarray]  # item_idx, item_attr, domain_idx, domain_item_idx, train_count, text_emb (or None);
    # text_tokens, text_mask when fine-tuning (add_item_tokens)
    item_index: Any  # pandas.DataFrame for item_index.parquet
    domains: list[str]
    versions: dict[str, int]
    encoders: list[str] = field(default_factory=list)
    untrained_items: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # ids in no training window
    refit_train: Any = None  # pyarrow.Table: windows over train events + valid targets (TrainConfig.refit), or None
    refit_untrained: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # ids in no refit window
    sampled_users: set | None = None  # the users trained on when max_users sampled them (None: every user)


def _table_path(lake_root: str, table: str) -> str:
    from crossrec.io.readers import table_path

    return table_path(lake_root, table)


def resolve_versions(lake_root: str, pinned: Mapping[str, int] | None, tables=GOLD_TABLES) -> dict[str, int]:
    """The Delta version to read of each table: the pinned one, else the one a succeeded features run recorded in
    ops.runs (never a commit of an unfinished run), else (a lake without a ledger) the newest; resolved once, here."""
    from deltalake import DeltaTable
    from deltalake.exceptions import TableNotFoundError

    from crossrec.data.rawformat import RawFormatError
    from crossrec.io.runs import Ledger

    recorded = Ledger(lake_root).recorded_versions()
    out = {}
    for t in tables:
        if pinned and t in pinned:
            out[t] = int(pinned[t])
            continue
        if t in recorded:
            out[t] = recorded[t]
            continue
        try:
            out[t] = int(DeltaTable(_table_path(lake_root, t)).version())
        except TableNotFoundError as e:
            raise RawFormatError(f"{t} does not exist at {_table_path(lake_root, t)}: run `crossrec features` first") from e
    return out


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


def _chunks(cols: dict[str, list], inputs: dict[str, np.ndarray], targets: np.ndarray, max_seq_len: int) -> None:
    """Append (inputs, targets) cut into windows of at most ``max_seq_len`` positions, newest first; windows
    without a target are skipped."""
    end = len(targets)
    while end > 0:
        start = max(0, end - max_seq_len)
        if targets[start:end].any():
            for k, a in inputs.items():
                cols[k].append(a[start:end])
            cols["target_item_idx"].append(targets[start:end])
        end = start


def training_windows(item_idx, domain_idx, event_ts, max_seq_len: int, *, cold_views: bool = False):
    """Cut histories into training windows (pyarrow.Table of list<int64> columns, one window per row).

    A window holds inputs (``item_idx``, ``domain_idx``, ``event_ts``) and, per position, the item to predict
    there (``target_item_idx``, 0 = none).

    * **Next-item windows**: a history ``s`` of length L <= max_seq_len + 1 is one window (inputs ``s[:-1]``,
      targets ``s[1:]``). A longer one gives windows of max_seq_len + 1 events, newest first, each starting
      one event before the previous one ended, so that every target ``s[1:]`` is predicted exactly once;
      histories shorter than 2 events give nothing.
    * **Cold-domain views** (``cold_views``): for a history with events in two or more domains, one more
      sequence per domain d: the inputs are the events of the *other* domains, and a position's target is the
      next event when that is in d (else none). The model so also learns to predict a domain's items from a
      history without that domain -- exactly what a user new to the domain (the cold-start segment) gives it
      at prediction time; without these views such states occur only before a user's first event in d.
      Cut newest first into non-overlapping windows of at most ``max_seq_len`` positions.
    """
    import pyarrow as pa

    w = max_seq_len + 1
    cols: dict[str, list] = {"item_idx": [], "domain_idx": [], "event_ts": [], "target_item_idx": []}
    for it, dm, ts in zip(item_idx, domain_idx, event_ts):
        it, dm, ts = (np.asarray(a, dtype=np.int64) for a in (it, dm, ts))
        assert len(it) == len(dm) == len(ts), "item_idx, domain_idx and event_ts of a row must have one length"
        end = len(it)
        while end >= 2:
            start = max(0, end - w)
            for k, a in (("item_idx", it), ("domain_idx", dm), ("event_ts", ts)):
                cols[k].append(a[start:end - 1])
            cols["target_item_idx"].append(it[start + 1:end])
            end = start + 1  # the next (older) window's last event is this window's first input
            if start == 0:
                break
        if not cold_views or len(it) < 2:
            continue
        for d in np.unique(dm) if (dm != dm[0]).any() else ():
            keep = np.flatnonzero(dm != d)
            nxt = keep + 1
            has_next = nxt < len(it)
            targets = np.zeros(len(keep), dtype=np.int64)
            hit = has_next.copy()
            hit[has_next] = dm[nxt[has_next]] == d
            targets[hit] = it[nxt[hit]]
            _chunks(cols, {"item_idx": it[keep], "domain_idx": dm[keep], "event_ts": ts[keep]}, targets, max_seq_len)
    typ = pa.list_(pa.int64())
    return pa.table({k: pa.array(v, type=typ) for k, v in cols.items()})


def restrict_to_domains(seq, index, names):
    """``gold.user_sequences`` rows (pandas) seen by a model of ``names`` only: histories keep the events of
    those domains; valid/test rows keep only targets in them (the single-domain baseline's view)."""
    from crossrec.data.rawformat import RawFormatError

    known = sorted(index.domain.unique())
    unknown = sorted(set(names) - set(known))
    if unknown:
        raise RawFormatError(f"input domain(s) {unknown} not in gold.item_index; known domains: {known}")
    keep = np.zeros(int(index.item_idx.max()) + 1, dtype=bool)
    keep[index.item_idx.values[index.domain.isin(list(names)).values]] = True
    seq = seq.copy()
    if "target_item_idx" in seq:
        has_target = seq.target_item_idx.notna()
        tgt = seq.target_item_idx.fillna(0).astype(np.int64).values
        seq = seq[~has_target.values | keep[tgt]].copy()
    masks = [keep[np.asarray(h, dtype=np.int64)] for h in seq.item_idx.values]
    for col in ("item_idx", "domain_idx", "event_ts"):
        if col in seq:
            seq[col] = [np.asarray(v)[m] for v, m in zip(seq[col].values, masks)]
    return seq


ROWS_PER_SLICE = 400_000  # gold.user_sequences rows read and shaped at a time (load_training_data)


def user_slices(n_rows: int, rows_per_slice: int = ROWS_PER_SLICE) -> list[tuple[str | None, str | None]]:
    """``[lo, hi)`` ranges of ``user_id`` that together cover every string, about ``n_rows / rows_per_slice`` of them.

    User ids are pseudonyms (hex digests, uniform), so ranges of their first two characters hold about equal shares
    of the users, and all rows of a user fall in one range. Ids of another form are still covered (the first range
    has no start, the last no end), only less evenly."""
    n = max(1, min(256, -(-n_rows // max(1, rows_per_slice))))
    cuts = [f"{i * 256 // n:02x}" for i in range(1, n)]
    return list(zip([None, *cuts], [*cuts, None]))


def sample_user_ids(users, max_users: int, seed: int) -> set | None:
    """A seeded sample of at most ``max_users`` of the distinct ids ``users``; None when every user is kept."""
    users = np.sort(np.asarray(users, dtype=object))
    if len(users) <= max_users:
        return None
    log.info("training on a seeded sample of %d of %d users (max_users)", max_users, len(users))
    return set(np.random.default_rng(seed).choice(users, size=max_users, replace=False).tolist())


def sample_users(seq, max_users: int, seed: int):
    """The ``gold.user_sequences`` rows (pandas) of a seeded sample of at most ``max_users`` users."""
    keep = sample_user_ids(seq.user_id.unique(), max_users, seed)
    return seq if keep is None else seq[seq.user_id.isin(keep)]


def load_training_data(cfg: TrainConfig, versions: Mapping[str, int]) -> TrainingData:
    """Read the gold tables at ``versions`` (deltalake) and shape them for the workers.

    ``gold.user_sequences`` is read in slices of users (:func:`user_slices`, about ``ROWS_PER_SLICE`` rows each); a
    slice is shaped into windows and validation rows (Arrow, compact) before the next is read, so the driver never
    holds every user's rows as Python objects (the table is Z-ordered by ``user_id``, so a slice reads few of its
    files). ``max_users`` samples from the ``user_id`` column alone."""
    import pyarrow as pa
    import pyarrow.compute as pc
    from deltalake import DeltaTable

    from crossrec.io.readers import arrow_table, count_rows

    t0 = time.time()
    read = lambda t, **kw: arrow_table(_table_path(cfg.lake_root, t), versions[t], **kw)  # noqa: E731

    index = read("gold.item_index").to_pandas().sort_values("item_idx").reset_index(drop=True)
    n_items = len(index)
    assert n_items >= 1 and (index.item_idx.values == np.arange(1, n_items + 1)).all(), "gold.item_index.item_idx must be 1..n_items"
    domains = [d for _, d in sorted(set(zip(index.domain_idx, index.domain)))]
    assert len(domains) == index.domain_idx.nunique() == index.domain.nunique(), "domain <-> domain_idx must be one to one"
    item_domain = np.zeros(n_items + 1, dtype=np.int64)
    item_domain[index.item_idx.values] = index.domain_idx.values

    sequences = DeltaTable(_table_path(cfg.lake_root, "gold.user_sequences"), version=versions["gold.user_sequences"])
    splits = [("split", "in", ["train", "valid"])]
    keep = None
    if cfg.max_users is not None:
        users = arrow_table(sequences, columns=["user_id"], filters=splits).column("user_id")
        keep = sample_user_ids(pc.unique(users).to_numpy(zero_copy_only=False), cfg.max_users, cfg.seed)
    slices = user_slices(count_rows(sequences), ROWS_PER_SLICE)
    columns = ["user_id", "split", "item_idx", "domain_idx", "event_ts", "target_item_idx", "target_ts"]
    typ = pa.list_(pa.int64())
    windows, valid_parts, refit_parts, n_train, n_valid = [], [], [], 0, 0
    for i, (lo, hi) in enumerate(slices):
        where = splits + ([("user_id", ">=", lo)] if lo else []) + ([("user_id", "<", hi)] if hi else [])
        seq = arrow_table(sequences, columns=columns, filters=where).to_pandas()
        got = set(seq.split.unique())
        assert got <= {"train", "valid"}, f"training must never read other splits, got {sorted(got)}"
        if cfg.input_domains is not None:
            seq = restrict_to_domains(seq, index, cfg.input_domains)
        if keep is not None:
            seq = seq[seq.user_id.isin(keep)]
        train = seq[seq.split == "train"]
        valid = seq[seq.split == "valid"].reset_index(drop=True)
        assert valid.target_item_idx.notna().all(), "every valid row needs a target_item_idx"
        # leakage guard: a validation target is a first occurrence, never part of the same user's training history
        train_items = {u: set(np.asarray(h).tolist()) for u, h in zip(train.user_id.values, train.item_idx.values)}
        leaks = sum(int(t) in train_items.get(u, ()) for u, t in zip(valid.user_id.values, valid.target_item_idx.values))
        assert leaks == 0, f"{leaks} valid target(s) occur in the same user's train history: split leakage"
        windows.append(training_windows(train.item_idx.values, train.domain_idx.values, train.event_ts.values,
                                        cfg.max_seq_len, cold_views=cfg.cold_views))
        valid_parts.append(pa.table({
            "row_id": pa.array(np.arange(n_valid, n_valid + len(valid), dtype=np.int64)),
            "item_idx": pa.array([np.asarray(h, dtype=np.int64) for h in valid.item_idx.values], type=typ),
            "event_ts": pa.array([np.asarray(h, dtype=np.int64) for h in valid.event_ts.values], type=typ),
            "target_item_idx": pa.array(valid.target_item_idx.values.astype(np.int64)),
        }))
        if cfg.refit:
            refit_parts.append(training_windows(*extend_with_targets(train, valid, item_domain), cfg.max_seq_len,
                                                cold_views=cfg.cold_views))
        n_train, n_valid = n_train + len(train), n_valid + len(valid)
        if len(slices) > 1:
            log.info("training data: slice %d/%d of gold.user_sequences read: %d train users, %d valid rows so far",
                     i + 1, len(slices), n_train, n_valid)
    windows, valid_tab = pa.concat_tables(windows), pa.concat_tables(valid_parts)

    text_emb, encoders = None, []
    if cfg.use_text:
        emb = read("gold.item_embeddings", columns=["domain", "item_id", "encoder", "embedding"]).to_pandas()
        encoders = sorted(emb.encoder.unique().tolist())
        merged = index[["domain", "item_id"]].merge(emb, on=["domain", "item_id"], how="left", validate="one_to_one")
        have = merged.embedding.notna().values
        assert have.any(), "gold.item_embeddings holds no vector of any catalog item"
        dims = {len(v) for v in merged.embedding.values[have]}
        assert len(dims) == 1, f"gold.item_embeddings vectors differ in length: {sorted(dims)}"
        text_emb = np.zeros((n_items, dims.pop()), dtype=np.float32)
        text_emb[have] = np.stack(merged.embedding.values[have]).astype(np.float32)
        if not have.all():
            log.warning("%d of %d items have no text embedding: they get a zero vector", int((~have).sum()), n_items)

    item_attr = np.zeros(n_items, dtype=np.int64)  # 0 = no category
    if cfg.use_categories and "category" in index and index.category.notna().any():
        has = index.category.notna().values & (index.category.fillna("").str.strip() != "").values
        keys = (index.domain + "\x1f" + index.category.fillna("")).values  # a category belongs to its domain
        codes = np.unique(keys[has], return_inverse=True)[1]
        item_attr[has] = codes + 1
    catalog = {
        "item_idx": index.item_idx.values.astype(np.int64),
        "item_attr": item_attr,
        "domain_idx": index.domain_idx.values.astype(np.int64),
        "domain_item_idx": index.domain_item_idx.values.astype(np.int64),
        "train_count": index.train_count.values.astype(np.int64),
        "text_emb": text_emb,
    }
    log.info("training data at versions %s: %d items in %s, %d train users -> %d windows, %d valid rows (%.1fs)",
             dict(versions), n_items, domains, n_train, windows.num_rows, n_valid, time.time() - t0)
    item_index = index[["item_idx", "domain", "item_id", "domain_idx", "domain_item_idx"]]

    def untrained(w) -> np.ndarray:
        seen = np.zeros(n_items + 1, dtype=bool)
        for col in ("item_idx", "target_item_idx"):
            seen[pc.list_flatten(w.column(col)).to_numpy()] = True
        return np.flatnonzero(~seen[1:]) + 1

    data = TrainingData(windows, valid_tab, catalog, item_index, domains, dict(versions), encoders, untrained(windows),
                        sampled_users=keep)
    if cfg.refit:
        data.refit_train = pa.concat_tables(refit_parts)
        data.refit_untrained = untrained(data.refit_train)
        log.info("refit data: %d windows (train events + %d valid targets)", data.refit_train.num_rows, n_valid)
    return data


def extend_with_targets(train, valid, item_domain: np.ndarray) -> tuple[list, list, list]:
    """Each user's training history with the user's validation targets merged in by time (pandas rows of
    ``gold.user_sequences``: ``train`` one per user, ``valid`` one per (user, domain) with ``target_item_idx`` and
    ``target_ts``): ``(item_idx, domain_idx, event_ts)`` lists, one entry per user, for :func:`training_windows`.
    A target at the same time as a training event goes after it (targets are a domain's newest events)."""
    events: dict[str, list[np.ndarray]] = {}
    for u, it, ts in zip(train.user_id.values, train.item_idx.values, train.event_ts.values):
        events[u] = [np.asarray(it, dtype=np.int64), np.asarray(ts, dtype=np.int64)]
    targets = valid.groupby("user_id", sort=False).agg({"target_item_idx": list, "target_ts": list})
    for u, it, ts in zip(targets.index, targets.target_item_idx.values, targets.target_ts.values):
        have = events.get(u, [np.zeros(0, np.int64), np.zeros(0, np.int64)])
        events[u] = [np.concatenate([have[0], np.asarray(it, dtype=np.int64)]),
                     np.concatenate([have[1], np.asarray(ts, dtype=np.int64)])]
    items, domains, times = [], [], []
    for it, ts in events.values():
        order = np.argsort(ts, kind="stable")  # stable: the targets, appended last, follow equal-time events
        items.append(it[order])
        domains.append(item_domain[it[order]])
        times.append(ts[order])
    return items, domains, times


# ------------------------------------------------------------------------------------------ collate (worker)
def _rows(col) -> list[np.ndarray]:
    """A list<int64> column (Array or ChunkedArray) -> one int64 array per row."""
    import pyarrow as pa

    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    offsets = col.offsets.to_numpy()
    values = col.flatten().to_numpy()
    offsets = offsets - offsets[0]  # a sliced array's offsets point into the unsliced values
    return [values[offsets[i]:offsets[i + 1]] for i in range(len(col))]


def collate_train(batch, item_domain: np.ndarray) -> dict[str, np.ndarray]:
    """Training windows (pyarrow.Table, see :func:`training_windows`) -> right-padded (B, T) arrays.

    ``item_idx``, ``domain_idx``, ``event_ts`` (inputs), ``target_item_idx`` (0 = no target) and
    ``target_domain`` = domain of the target item (0 where none); T = the longest window.
    """
    keys = ("item_idx", "domain_idx", "event_ts", "target_item_idx")
    rows = {k: _rows(batch[k]) for k in keys}
    B = len(rows["item_idx"])
    T = max(len(w) for w in rows["item_idx"])
    assert T >= 1, "a training window has at least 1 position"
    out = {k: np.zeros((B, T), dtype=np.int64) for k in keys}
    for k in keys:
        for b, r in enumerate(rows[k]):
            out[k][b, :len(r)] = r
    out["target_domain"] = item_domain[out["target_item_idx"]]  # padding: item 0 -> any domain, ignored
    return out


def length_bucketed(pools, batch_size: int, rng: np.random.Generator):
    """Batches of ``batch_size`` windows of similar length from shuffled pools of windows (pyarrow Tables).

    Each pool is sorted by window length (ties in random order), cut into batches, and the batches are
    yielded in random order: a batch is padded to its own longest window, so grouping similar lengths
    removes most of the padding the encoder would otherwise run over (histories are mostly short). A pool
    of ``n`` rows gives ``ceil(n / batch_size)`` batches, so equal shards still give every rank equal steps.
    """
    import pyarrow.compute as pc

    for pool in pools:
        n = pool.num_rows
        lengths = pc.list_value_length(pool["item_idx"]).to_numpy(zero_copy_only=False)
        order = np.lexsort((rng.random(n), lengths))  # by length, random among equals
        chunks = [order[s : s + batch_size] for s in range(0, n, batch_size)]
        for c in rng.permutation(len(chunks)):
            yield pool.take(chunks[c])


# ---------------------------------------------------------------------------------------- checkpoint files
def flatten_optimizer_state(state: Mapping) -> tuple[dict, dict]:
    """An optimizer ``state_dict()`` -> (tensors for safetensors, JSON-able rest)."""
    import torch

    tensors, scalars = {}, {}
    for pid, st in state["state"].items():
        for name, v in st.items():
            if isinstance(v, torch.Tensor):
                tensors[f"state.{pid}.{name}"] = v.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(pid), {})[name] = v
    groups = [{k: list(v) if isinstance(v, tuple) else v for k, v in g.items()} for g in state["param_groups"]]
    return tensors, {"param_groups": groups, "scalars": scalars}


def unflatten_optimizer_state(tensors: Mapping, meta: Mapping) -> dict:
    """Inverse of :func:`flatten_optimizer_state`."""
    state: dict[int, dict] = {}
    for key, v in tensors.items():
        _, pid, name = key.split(".", 2)
        state.setdefault(int(pid), {})[name] = v
    for pid, d in meta.get("scalars", {}).items():
        state.setdefault(int(pid), {}).update(d)
    groups = [{k: tuple(v) if k == "betas" else v for k, v in g.items()} for g in meta["param_groups"]]
    return {"state": state, "param_groups": groups}


def write_checkpoint(folder: str | Path, model, optimizer, state: Mapping) -> Path:
    """Write a training checkpoint (see the module docstring for the files)."""
    from safetensors.torch import save_file

    from crossrec.model.artifact import save_model

    folder = Path(folder)
    save_model(model, folder)
    tensors, meta = flatten_optimizer_state(optimizer.state_dict())
    save_file(tensors, str(folder / OPT_TENSORS), metadata={"format": "pt"})
    (folder / OPT_META).write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
    (folder / STATE_FILE).write_text(json.dumps(state, indent=1) + "\n", encoding="utf-8")
    return folder


def read_checkpoint(folder: str | Path, model, optimizer, *, source: str | None = None) -> dict:
    """Load weights into ``model`` (unwrapped) and state into ``optimizer``; return the train state.

    Raises ValueError when the checkpoint's weights are not this model's (a run folder left by other model code
    under the same training config: resuming would fail or be wrong); ``source`` names the checkpoint there.
    """
    from safetensors.torch import load_file

    from crossrec.model.artifact import WEIGHTS_FILE

    folder = Path(folder)
    device = next(model.parameters()).device
    weights = load_file(str(folder / WEIGHTS_FILE), device=str(device))
    want = model.state_dict()
    missing, unexpected = sorted(set(want) - set(weights)), sorted(set(weights) - set(want))
    shapes = sorted(k for k in set(want) & set(weights) if want[k].shape != weights[k].shape)
    if missing or unexpected or shapes:
        raise ValueError(
            f"checkpoint {source or folder} does not fit this model (missing {len(missing)} {missing[:3]}, unexpected "
            f"{len(unexpected)} {unexpected[:3]}, other shape {len(shapes)} {shapes[:3]}): it was written by other model "
            "code under the same training config. Remove its run folder (the checkpoint's parent) or pass "
            "--storage-path to train afresh")
    model.load_state_dict(weights, strict=True)
    meta = json.loads((folder / OPT_META).read_text(encoding="utf-8"))
    optimizer.load_state_dict(unflatten_optimizer_state(load_file(str(folder / OPT_TENSORS), device=str(device)), meta))
    return json.loads((folder / STATE_FILE).read_text(encoding="utf-8"))


# ----------------------------------------------------------------------------------------------- worker
def _features(catalog: Mapping[str, np.ndarray]):
    from crossrec.model.encoder import ItemFeatures

    # copies: arrays from the object store are read-only, torch wants writable memory
    emb = None if catalog["text_emb"] is None else np.array(catalog["text_emb"])
    tokens = {k: np.array(catalog[k]) for k in ("text_tokens", "text_mask") if catalog.get(k) is not None}
    return ItemFeatures.from_item_index(np.array(catalog["item_idx"]), np.array(catalog["domain_idx"]),
                                        np.array(catalog["domain_item_idx"]), text_emb=emb,
                                        item_attr=np.array(catalog["item_attr"]),
                                        sample_weight=catalog["train_count"] + 1, **tokens)


def add_item_tokens(cfg: TrainConfig, data: TrainingData) -> dict[str, int]:
    """Put each catalog item's text tokens in ``data.catalog`` (``text_tokens``, ``text_mask``: (n_items, L) in catalog
    row order), for a fine-tuned text encoder; returns ``{"silver.items": version read}``.

    The texts are rebuilt from ``silver.items`` as the features job builds the encoder input
    (:func:`crossrec.text.encoder.item_texts`) and must hash to ``gold.item_embeddings.text_hash``: otherwise the two
    tables are out of step (silver.items rewritten after the features job) and training stops naming the item.
    """
    from deltalake import DeltaTable

    from crossrec.io.config import ConfigError
    from crossrec.text.encoder import item_texts, text_hash, tokenize

    t0 = time.time()
    items_table = DeltaTable(_table_path(cfg.lake_root, "silver.items"),
                             version=resolve_versions(cfg.lake_root, None, ("silver.items",))["silver.items"])
    items = items_table.to_pandas(columns=["domain", "item_id", "text", "category", "attributes"])
    hashes = DeltaTable(_table_path(cfg.lake_root, "gold.item_embeddings"),
                        version=data.versions.get("gold.item_embeddings")).to_pandas(columns=["domain", "item_id", "text_hash"])
    index = data.item_index[["domain", "item_id"]].merge(items, on=["domain", "item_id"], how="left",
                                                         validate="one_to_one").merge(hashes, on=["domain", "item_id"], how="left")
    missing = index.text.isna()
    if missing.any():
        row = index[missing].iloc[0]
        raise ConfigError(f"silver.items has no text for {int(missing.sum())} catalog item(s), e.g. "
                          f"({row.domain}, {row.item_id}): rebuild the lake (crossrec prepare) before fine-tuning")
    texts = item_texts(index.text.values, index.category.values, index.attributes.values)
    stale = np.array([h is not None and h == h and text_hash(t) != h for t, h in zip(texts, index.text_hash.values)])
    if stale.any():
        row = index[stale].iloc[0]
        raise ConfigError(f"{int(stale.sum())} item text(s) in silver.items differ from what gold.item_embeddings "
                          f"encoded, e.g. ({row.domain}, {row.item_id}): run the features job again")
    tokens, mask = tokenize(texts, cfg.text_max_tokens)
    # catalog rows are in item_index order (item_idx 1..n), as data.item_index
    data.catalog["text_tokens"], data.catalog["text_mask"] = tokens, mask
    log.info("text tokens of %d items (%d tokens each, %.0f%% truncated) from silver.items v%d in %.1fs", len(texts),
             cfg.text_max_tokens, 100.0 * float((mask[:, -1] == 1).mean()), items_table.version(), time.time() - t0)
    return {"silver.items": items_table.version()}


def _lookup(catalog: Mapping[str, np.ndarray], column: str) -> np.ndarray:
    """(n_items + 1,) array: ``column`` of each item_idx (row 0 = padding = 0)."""
    out = np.zeros(len(catalog["item_idx"]) + 1, dtype=catalog[column].dtype)
    out[catalog["item_idx"]] = catalog[column]
    return out


def validate_shard(model, valid_iter, catalog: Mapping[str, np.ndarray], *, rank: int, world: int,
                   batch_size: int) -> np.ndarray:
    """Score this rank's share of the valid rows; (n_domains, 4) sums of ndcg@10, recall@10, mrr, rows.

    ``model`` is the unwrapped model; it is scored through :class:`crossrec.inference.Predictor` (the Transformer
    alone): full ranking within the target domain, the items of the row's stored history in that domain excluded,
    empty histories scored by popularity (as crossrec.evaluate.protocol). Its train/eval mode is restored after.
    """
    from crossrec.evaluate.metrics import rank_of_target, ranking_metrics
    from crossrec.inference import Predictor

    item_domain, item_col = _lookup(catalog, "domain_idx"), _lookup(catalog, "domain_item_idx")
    sums = np.zeros((model.config.n_domains, 4), dtype=np.float64)
    was_training = model.training
    predictor = Predictor(model, None, _lookup(catalog, "train_count").astype(np.float32))  # once per pass
    for batch in valid_iter.iter_batches(batch_size=batch_size, batch_format="pyarrow"):
        mine = batch["row_id"].to_numpy() % world == rank
        if not mine.any():
            continue
        hist = [h for h, m in zip(_rows(batch["item_idx"]), mine) if m]
        tss = [t for t, m in zip(_rows(batch["event_ts"]), mine) if m]
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
    catalog arrays), ``domains``, ``epochs``, ``batch_size``, ``lr``, ``weight_decay``, ``patience``, ``seed``,
    ``log_every``, ``n_train_rows``, ``torch_threads``, ``_fail_once_at_step`` (test hook or None).
    """
    import ray
    import ray.train
    import ray.train.torch
    import torch
    import torch.distributed as dist

    from crossrec.model.config import ModelConfig
    from crossrec.model.transformer import CrossDomainTransformer

    _worker_logging()
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    if device.type == "cpu" and config.get("torch_threads"):
        torch.set_num_threads(int(config["torch_threads"]))
    catalog = ray.get(config["catalog_ref"])
    domains = list(config["domains"])
    item_domain = _lookup(catalog, "domain_idx")

    torch.manual_seed(config["seed"])  # identical initial weights on every rank (DDP also broadcasts rank 0's)
    model = CrossDomainTransformer(ModelConfig.from_dict(config["model"]), _features(catalog)).to(device)
    text = [p for n, p in model.named_parameters() if p.requires_grad and ".text_model." in f".{n}"]
    rest = [p for n, p in model.named_parameters() if p.requires_grad and ".text_model." not in f".{n}"]
    # a pretrained text layer moves at a fraction of the rate of the layers trained from scratch
    groups = [{"params": rest, "lr_scale": 1.0}] + ([{"params": text, "lr_scale": config.get("text_lr_scale", 1.0)}]
                                                   if text else [])
    optimizer = torch.optim.AdamW(groups, lr=config["lr"], weight_decay=config["weight_decay"])
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

    train_shard = ray.train.get_dataset_shard("train")  # a barrier: all ranks, once
    valid_iter = ray.train.get_dataset_shard("valid")
    fail = config.get("_fail_once_at_step")
    bs = config["batch_size"]
    steps_per_epoch = math.ceil((config["n_train_rows"] // world) / bs)
    total_steps = steps_per_epoch * config["epochs"]  # the schedule's length (lr_at); resumes continue it by global_step
    stop_after = config.get("stop_after") or config["epochs"]  # a refit runs the selected epochs of the schedule

    epoch = state["epoch"] + 1
    while epoch < stop_after and state["bad_epochs"] < config["patience"]:
        model.train()
        t_epoch = last = time.perf_counter()
        loss_sum, n_steps, n_samples, window = 0.0, 0, 0, 0
        t_data = 0.0  # waiting for the next batch + collating it (the rest of the epoch is compute)
        t_fetch = time.perf_counter()
        pools = train_shard.iter_batches(batch_size=POOL_BATCHES * bs, batch_format="pyarrow",
                                         local_shuffle_buffer_size=POOL_BATCHES * bs,
                                         local_shuffle_seed=config["seed"] + 1000 * epoch + rank)
        batches = length_bucketed(pools, bs, np.random.default_rng(config["seed"] + 1000 * epoch + rank))
        for step, batch in enumerate(batches):
            if fail and rank == fail["rank"] and epoch == fail["epoch"] and step == fail["step"] and not os.path.exists(fail["marker"]):
                # wait until Ray Train has committed the reports so far (the last epoch's checkpoint): a crash
                # right after a report may otherwise lose that report, and the run resumes one epoch earlier
                ray.train.get_all_reported_checkpoints(timeout_s=120)
                Path(fail["marker"]).write_text(f"killed rank {rank} at epoch {epoch} step {step}\n", encoding="utf-8")
                log.warning("test hook: killing rank %d (pid %d) at epoch %d step %d", rank, os.getpid(), epoch, step)
                os.kill(os.getpid(), signal.SIGKILL)
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

        sums = validate_shard(ddp.module if hasattr(ddp, "module") else ddp, valid_iter, catalog, rank=rank, world=world,
                              batch_size=4 * bs)
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
                       epoch_train_s=float(totals[3]), samples_per_s=float(totals[2] / max(totals[3], 1e-9)),
                       data_share=float(t_data / max(t_train, 1e-9)),  # rank 0's share of time in data loading
                       best_valid_ndcg=float(state["best_metric"]), best_epoch=int(state["best_epoch"]),
                       bad_epochs=int(state["bad_epochs"]), global_step=int(state["global_step"]),
                       stop=bool(state["bad_epochs"] >= config["patience"]))
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


# ------------------------------------------------------------------------------------------------- driver
def write_artifact(folder_root: str | Path, version: str, best_ckpt_dir: str | Path, data: TrainingData,
                   metrics: Mapping,
                   fit_terms: Callable[["CrossDomainTransformer"], tuple["TermSet", dict]] | None = None,
                   select_dir: str | Path | None = None) -> Path:
    """``<root>/<version>/`` from the checkpoint in ``best_ckpt_dir`` (written aside, then renamed into place).

    The id embeddings of items in no training window (``data.untrained_items``; ``data.refit_untrained`` for a refit
    model) are zeroed first (:meth:`~crossrec.model.transformer.CrossDomainTransformer.clear_id_embeddings`): text
    scores those items. ``fit_terms(model) -> (TermSet, report)``: the score terms (see
    :func:`crossrec.rerank.fit.fit_terms`), chosen with the model of ``select_dir`` (the selected epoch's checkpoint,
    when ``best_ckpt_dir`` holds a refit that learned the validation targets) or else with the saved model; the terms
    are saved with the model and the report in ``metrics.json`` under ``"terms"``."""
    import torch

    from crossrec.model.artifact import load_model, save_artifact

    root = Path(folder_root)
    root.mkdir(parents=True, exist_ok=True)
    final = root / version
    tmp = root / f".{version}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    model = load_model(best_ckpt_dir)  # round trip: what is written is what evaluate will load
    untrained = data.untrained_items if select_dir is None else data.refit_untrained
    cleared = model.clear_id_embeddings(torch.from_numpy(untrained))
    metrics = {**metrics, "untrained_items": cleared}
    if cleared:
        log.info("%d item(s) occur in no training window: id embeddings zeroed, text scores them", cleared)
    terms = None
    if fit_terms is not None:
        chooser = model
        if select_dir is not None:  # validation rows the refit learned would make the terms look useless
            chooser = load_model(select_dir)
            chooser.clear_id_embeddings(torch.from_numpy(data.untrained_items))
        terms, report = fit_terms(chooser)
        metrics = {**metrics, "terms": report}
    save_artifact(tmp, model, terms, data.item_index, metrics)
    umask = os.umask(0)
    os.umask(umask)
    for f in tmp.rglob("*"):  # safetensors writes 0600; an artifact is read by other jobs and users
        if f.is_file():
            os.chmod(f, 0o666 & ~umask)
    if final.exists():  # the same config on the same data and day: the newer export replaces it
        shutil.rmtree(final)
    os.replace(tmp, final)
    return final


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
    """One Ray Train run of :func:`train_loop_per_worker` over ``train_rows`` (split across the workers) and
    ``valid_rows`` (every rank reads all); its ``ray.train.Result``."""
    import ray.data
    import ray.train
    from ray.train.torch import TorchTrainer

    n_blocks = max(2 * cfg.workers, train_rows.num_rows // 4096)
    datasets = {"train": ray.data.from_arrow(train_rows, override_num_blocks=n_blocks),
                "valid": ray.data.from_arrow(valid_rows, override_num_blocks=max(1, valid_rows.num_rows // 4096))}
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
        scaling_config=scaling, run_config=run, datasets=datasets,
        dataset_config=ray.train.DataConfig(datasets_to_split=["train"]),  # valid: every rank reads all rows
    )
    log.info("Ray Train: %d worker(s), %s, run %s under %s, %d training windows", cfg.workers,
             "GPU" if use_gpu else f"CPU ({cfg.cpus_per_worker} per worker)", name, cfg.storage_root, train_rows.num_rows)
    return trainer.fit()


def _final_state(result) -> dict:
    """The train state (``train_state.json``: history, resumes, ...) of a run's latest checkpoint."""
    with result.checkpoint.as_directory() as latest_dir:
        return json.loads((Path(latest_dir) / STATE_FILE).read_text(encoding="utf-8"))


def train(cfg: TrainConfig) -> Path | str:
    """Train on the gold tables with Ray Train and write the model artifact; return its folder (a local ``Path``, or
    the URI of the folder on a remote lake)."""
    import ray
    import ray.data

    t0 = time.time()
    now = dt.datetime.now(dt.timezone.utc)
    tables = GOLD_TABLES if cfg.use_text else tuple(t for t in GOLD_TABLES if t != "gold.item_embeddings")
    versions = resolve_versions(cfg.lake_root, cfg.versions, tables)
    version = model_version(cfg, versions, now)
    log.info("training %s on %s at versions %s", version, cfg.lake_root, versions)
    data = load_training_data(cfg, versions)
    assert data.train.num_rows >= cfg.workers, f"{data.train.num_rows} training windows for {cfg.workers} workers"
    assert data.valid.num_rows >= 1, "gold.user_sequences has no valid rows: nothing to select a model on"

    started = not ray.is_initialized()
    address = ray_address(cfg.ray_address) if started else None
    if started:
        log.info("Ray: %s", "a new local instance" if address == "local" else address)
        ray.init(address=address, include_dashboard=False, log_to_driver=True)
    refit = None
    try:
        use_gpu = _use_gpu(cfg)
        check_worker_resources(cfg.workers, use_gpu, cfg.cpus_per_worker, ray.cluster_resources(),
                               fixed=address == "local")
        text_dim = data.catalog["text_emb"].shape[1] if data.catalog["text_emb"] is not None else 384
        text_encoder, text_source = cfg.resolved_text_encoder(use_gpu), None
        if text_encoder == "finetune":
            text_source = add_item_tokens(cfg, data)
        mcfg = cfg.model_config(len(data.catalog["item_idx"]), len(data.domains), text_dim,
                                int(data.catalog["item_attr"].max()),
                                largest_domain=int(np.bincount(data.catalog["domain_idx"]).max()),
                                text_encoder=text_encoder)
        log.info("loss: %s%s", mcfg.loss, f" ({mcfg.n_negatives} negatives per domain and step)" if mcfg.loss == "sampled" else "")
        log.info("text encoder: %s%s", text_encoder, f" (top {cfg.finetune_layers} layer(s) trained at "
                 f"{cfg.text_lr_scale:g} x lr, {cfg.text_max_tokens} tokens per item)" if text_encoder == "finetune" else "")
        loop_config = {
            "model": dataclasses.asdict(mcfg),
            "catalog_ref": ray.put(data.catalog),
            "domains": data.domains,
            "epochs": cfg.epochs, "batch_size": cfg.batch_size, "lr": cfg.lr, "weight_decay": cfg.weight_decay,
            "lr_schedule": cfg.lr_schedule, "patience": cfg.patience, "seed": cfg.seed, "log_every": cfg.log_every,
            "text_lr_scale": cfg.text_lr_scale,
            "torch_threads": max(1, int(cfg.cpus_per_worker)),
            "_fail_once_at_step": dataclasses.asdict(cfg.fail_once_at) if cfg.fail_once_at else None,
        }
        # no Ray Data tqdm bars: the loop logs its own progress lines (epoch, step, loss, samples/s); the bars fill
        # a batch job's log with cursor codes, and their driver-side renderer once hung interpreter exit (a tqdm
        # lock taken in tqdm.__del__) after a whole CI run had passed
        ray.data.DataContext.get_current().enable_progress_bars = False
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

    state = _final_state(result)
    refit_history = None if refit is None else _final_state(refit)["history"]
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

    def fit(model: "CrossDomainTransformer") -> tuple["TermSet", dict]:
        """The score terms, chosen on the validation split at the data versions trained on."""
        from crossrec.evaluate.protocol import load_eval_data
        from crossrec.rerank.fit import fit_terms

        valid = load_eval_data(cfg.lake_root, dict(versions), split="valid", users=data.sampled_users)
        return fit_terms(model, valid, cfg.terms, seed=cfg.seed, input_domains=cfg.input_domains)

    from crossrec.io.lakefs import is_remote, join, upload

    staging = tempfile.mkdtemp(prefix="crossrec-artifact-") if is_remote(cfg.models_root) else cfg.models_root
    with best_ckpt.as_directory() as best_dir:
        if refit is None:
            folder = write_artifact(staging, version, best_dir, data, summary, fit if cfg.terms else None)
        else:
            with refit.checkpoint.as_directory() as refit_dir:
                folder = write_artifact(staging, version, refit_dir, data, summary, fit if cfg.terms else None,
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


__all__ = [
    "TrainConfig", "FailOnce", "TrainingData", "train", "train_loop_per_worker", "load_training_data",
    "resolve_versions", "restrict_to_domains", "sample_users", "training_windows", "length_bucketed", "collate_train", "validate_shard",
    "write_checkpoint", "read_checkpoint", "flatten_optimizer_state", "unflatten_optimizer_state",
    "write_artifact", "model_version", "lr_at", "ray_address", "METRIC", "LR_SCHEDULES", "extend_with_targets",
]

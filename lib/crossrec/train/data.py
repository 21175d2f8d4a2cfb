"""The driver's training data: the gold tables read at pinned Delta versions (``deltalake``, no Spark) and shaped for
the workers (:mod:`crossrec.train.windows`).

The pure selections come first (which users, which domains, which slice of users is read at a time); the readers
(:func:`resolve_versions`, :func:`load_training_data`, :func:`add_item_tokens`) after them.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

from crossrec import columns as C
from crossrec.train.config import GOLD_TABLES, TrainConfig
from crossrec.train.windows import extend_with_targets, training_windows

log = logging.getLogger(__name__)

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
    if C.TARGET_ITEM_IDX in seq:
        has_target = seq.target_item_idx.notna()
        tgt = seq.target_item_idx.fillna(0).astype(np.int64).values
        seq = seq[~has_target.values | keep[tgt]].copy()
    masks = [keep[np.asarray(h, dtype=np.int64)] for h in seq.item_idx.values]
    for col in (C.ITEM_IDX, C.DOMAIN_IDX, C.EVENT_TS):
        if col in seq:
            seq[col] = [np.asarray(v)[m] for v, m in zip(seq[col].values, masks)]
    return seq


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
    entities: list[str] = field(default_factory=list)  # entity id k (1-based) is entities[k - 1] (add_item_entities)
    vector_modalities: list[tuple[str, int]] = field(default_factory=list)  # (modality, dim), in item_vectors' order

    def model_config(self, cfg: TrainConfig, text_encoder: str = "frozen"):
        """The :class:`~crossrec.model.config.ModelConfig` of ``cfg`` for this catalog: its items, domains, text width
        and categories; ``loss='auto'`` resolved by the largest domain."""
        emb = self.catalog["text_emb"]
        return cfg.model_config(len(self.catalog[C.ITEM_IDX]), len(self.domains), 384 if emb is None else emb.shape[1],
                                int(self.catalog["item_attr"].max()),
                                largest_domain=int(np.bincount(self.catalog[C.DOMAIN_IDX]).max()),
                                text_encoder=text_encoder, n_entities=len(self.entities),
                                vector_dim=sum(d for _, d in self.vector_modalities))


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

    index = read("gold.item_index").to_pandas().sort_values(C.ITEM_IDX).reset_index(drop=True)
    n_items = len(index)
    assert n_items >= 1 and (index.item_idx.values == np.arange(1, n_items + 1)).all(), "gold.item_index.item_idx must be 1..n_items"
    domains = [d for _, d in sorted(set(zip(index.domain_idx, index.domain)))]
    assert len(domains) == index.domain_idx.nunique() == index.domain.nunique(), "domain <-> domain_idx must be one to one"
    item_domain = np.zeros(n_items + 1, dtype=np.int64)
    item_domain[index.item_idx.values] = index.domain_idx.values

    sequences = DeltaTable(_table_path(cfg.lake_root, "gold.user_sequences"), version=versions["gold.user_sequences"])
    splits = [(C.SPLIT, "in", ["train", "valid"])]
    keep = None
    if cfg.max_users is not None:
        users = arrow_table(sequences, columns=[C.USER_ID], filters=splits).column(C.USER_ID)
        keep = sample_user_ids(pc.unique(users).to_numpy(zero_copy_only=False), cfg.max_users, cfg.seed)
    slices = user_slices(count_rows(sequences), ROWS_PER_SLICE)
    columns = [C.USER_ID, C.SPLIT, C.ITEM_IDX, C.DOMAIN_IDX, C.EVENT_TS, C.TARGET_ITEM_IDX, C.TARGET_TS]
    typ = pa.list_(pa.int64())
    windows, valid_parts, refit_parts, n_train, n_valid = [], [], [], 0, 0
    for i, (lo, hi) in enumerate(slices):
        where = splits + ([(C.USER_ID, ">=", lo)] if lo else []) + ([(C.USER_ID, "<", hi)] if hi else [])
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
        emb = read("gold.item_embeddings", columns=[C.DOMAIN, C.ITEM_ID, C.ENCODER, C.EMBEDDING]).to_pandas()
        encoders = sorted(emb.encoder.unique().tolist())
        merged = index[[C.DOMAIN, C.ITEM_ID]].merge(emb, on=[C.DOMAIN, C.ITEM_ID], how="left", validate="one_to_one")
        have = merged.embedding.notna().values
        assert have.any(), "gold.item_embeddings holds no vector of any catalog item"
        dims = {len(v) for v in merged.embedding.values[have]}
        assert len(dims) == 1, f"gold.item_embeddings vectors differ in length: {sorted(dims)}"
        text_emb = np.zeros((n_items, dims.pop()), dtype=np.float32)
        text_emb[have] = np.stack(merged.embedding.values[have]).astype(np.float32)
        if not have.all():
            log.warning("%d of %d items have no text embedding: they get a zero vector", int((~have).sum()), n_items)

    item_attr = np.zeros(n_items, dtype=np.int64)  # 0 = no category
    if cfg.use_categories and C.CATEGORY in index and index.category.notna().any():
        has = index.category.notna().values & (index.category.fillna("").str.strip() != "").values
        keys = (index.domain + "\x1f" + index.category.fillna("")).values  # a category belongs to its domain
        codes = np.unique(keys[has], return_inverse=True)[1]
        item_attr[has] = codes + 1
    catalog = {
        C.ITEM_IDX: index.item_idx.values.astype(np.int64),
        "item_attr": item_attr,
        C.DOMAIN_IDX: index.domain_idx.values.astype(np.int64),
        C.DOMAIN_ITEM_IDX: index.domain_item_idx.values.astype(np.int64),
        C.TRAIN_COUNT: index.train_count.values.astype(np.int64),
        "text_emb": text_emb,
    }
    log.info("training data at versions %s: %d items in %s, %d train users -> %d windows, %d valid rows (%.1fs)",
             dict(versions), n_items, domains, n_train, windows.num_rows, n_valid, time.time() - t0)
    item_index = index[[C.ITEM_IDX, C.DOMAIN, C.ITEM_ID, C.DOMAIN_IDX, C.DOMAIN_ITEM_IDX]]

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



def entity_vocabulary(item_rows: np.ndarray, entities: np.ndarray, n_items: int, *, min_items: int,
                      max_entities: int, max_per_item: int) -> tuple[np.ndarray, list[str]]:
    """Entity ids of each catalog row from (catalog row, entity) pairs: ``(ids (n_items, E) int64 with 0 = none,
    vocabulary)``, id k naming ``vocabulary[k - 1]``.

    An entity is kept when at least ``min_items`` items carry it (one item's entity is a second id embedding), the
    ``max_entities`` most frequent (ties by name); an item keeps its ``max_per_item`` most frequent kept entities."""
    if len(entities) == 0:
        return np.zeros((n_items, 1), dtype=np.int64), []
    names, inverse, counts = np.unique(entities, return_inverse=True, return_counts=True)
    order = np.lexsort((names, -counts))  # most frequent first, then by name
    order = order[counts[order] >= min_items][:max_entities]
    vocab_id = np.zeros(len(names), dtype=np.int64)
    vocab_id[order] = np.arange(1, len(order) + 1)
    ids, rows = vocab_id[inverse], np.asarray(item_rows, dtype=np.int64)
    keep = ids > 0
    rows, ids = rows[keep], ids[keep]
    by = np.lexsort((ids, rows))  # per row, the most frequent (smallest id) first
    rows, ids = rows[by], ids[by]
    start = np.searchsorted(rows, rows, side="left")
    slot = np.arange(len(rows)) - start  # rank of the entity within its item
    fit = slot < max_per_item
    out = np.zeros((n_items, max(1, int(slot[fit].max()) + 1 if fit.any() else 1)), dtype=np.int64)
    out[rows[fit], slot[fit]] = ids[fit]
    return out, names[order].tolist()


def add_item_entities(cfg: TrainConfig, data: TrainingData) -> dict[str, int]:
    """Put each catalog item's entity ids in ``data.catalog["item_entities"]`` ((n_items, E), catalog row order) and
    the vocabulary in ``data.entities`` (:func:`entity_vocabulary`), from ``silver.item_entities``; returns
    ``{"silver.item_entities": version read}``, or ``{}`` when the lake has no such table (a lake cleaned before
    entities existed) or no entity is shared by ``min_entity_items`` items -- the model then has no entities."""
    from deltalake import DeltaTable

    from crossrec.data.rawformat import RawFormatError
    from crossrec.io.readers import arrow_table

    try:
        version = resolve_versions(cfg.lake_root, None, ("silver.item_entities",))["silver.item_entities"]
    except RawFormatError as e:
        log.info("no entities: silver.item_entities not readable (%s); run crossrec clean to derive them", e)
        return {}
    t0 = time.time()
    ents = arrow_table(DeltaTable(_table_path(cfg.lake_root, "silver.item_entities"), version=version),
                       columns=[C.DOMAIN, C.ITEM_ID, C.ENTITY]).to_pandas()
    rows = data.item_index[[C.DOMAIN, C.ITEM_ID]].reset_index(drop=True).reset_index().merge(
        ents, on=[C.DOMAIN, C.ITEM_ID], how="inner")  # "index": the catalog row
    ids, vocab = entity_vocabulary(rows["index"].values, rows[C.ENTITY].values.astype(str), len(data.item_index),
                                   min_items=cfg.min_entity_items, max_entities=cfg.max_entities,
                                   max_per_item=cfg.max_item_entities)
    if not vocab:
        log.info("no entities: none of silver.item_entities v%d's %d rows is shared by %d items", version, len(ents),
                 cfg.min_entity_items)
        return {}
    data.catalog["item_entities"], data.entities = ids, vocab
    shared = len({e for e, ds in rows.groupby(C.ENTITY)[C.DOMAIN].nunique().items() if ds > 1} & set(vocab))
    log.info("entities: %d kept of %d (shared by >= %d items; %d link two or more domains), %.0f%% of items have one, "
             "from silver.item_entities v%d in %.1fs", len(vocab), ents[C.ENTITY].nunique(), cfg.min_entity_items,
             shared, 100.0 * float((ids[:, 0] > 0).mean()), version, time.time() - t0)
    return {"silver.item_entities": version}


def add_item_vectors(cfg: TrainConfig, data: TrainingData) -> dict[str, int]:
    """Put each catalog item's precomputed vectors in ``data.catalog["item_vectors"]`` ((n_items, V) float32, catalog
    row order, the modalities side by side in name order, each scaled to unit length, zeros where an item has none)
    and ``data.vector_modalities``, from ``silver.items.vectors``; returns ``{"silver.items": version read}``, or ``{}``
    when no item has a vector.

    Unit length, as the text vectors: an upstream embedding's scale is its model's accident, not the item's, and an
    unscaled one would drown the other parts of the item representation at the start of training."""
    from deltalake import DeltaTable

    from crossrec.data.rawformat import RawFormatError

    t0 = time.time()
    try:
        version = resolve_versions(cfg.lake_root, None, ("silver.items",))["silver.items"]
    except RawFormatError:  # a lake of gold tables only: no vectors
        return {}
    table = DeltaTable(_table_path(cfg.lake_root, "silver.items"), version=version)
    if C.VECTORS not in table.schema().to_arrow().names:  # a lake cleaned before vectors existed
        return {}
    items = table.to_pandas(columns=[C.DOMAIN, C.ITEM_ID, C.VECTORS])
    rows = data.item_index[[C.DOMAIN, C.ITEM_ID]].merge(items, on=[C.DOMAIN, C.ITEM_ID], how="left", validate="one_to_one")
    maps = [dict(m) if m is not None and len(m) else {} for m in rows[C.VECTORS].values]
    dims: dict[str, int] = {}
    for m in maps:
        for modality, vec in m.items():
            if dims.setdefault(modality, len(vec)) != len(vec):
                raise ValueError(f"silver.items: {modality!r} vectors of lengths {dims[modality]} and {len(vec)}")
    if not dims:
        return {}
    order = sorted(dims)
    offsets = np.cumsum([0] + [dims[m] for m in order])
    out = np.zeros((len(rows), int(offsets[-1])), dtype=np.float32)
    have = np.zeros((len(rows), len(order)), dtype=bool)
    for r, m in enumerate(maps):
        for k, modality in enumerate(order):
            if modality in m:
                vec = np.asarray(m[modality], dtype=np.float32)
                norm = float(np.linalg.norm(vec))
                out[r, offsets[k]:offsets[k + 1]] = vec / norm if norm > 0 else vec
                have[r, k] = True
    data.catalog["item_vectors"], data.vector_modalities = out, [(m, dims[m]) for m in order]
    log.info("item vectors: %s, %s of %d items have one, from silver.items v%d in %.1fs",
             ", ".join(f"{m} ({dims[m]})" for m in order), "/".join(str(int(c)) for c in have.sum(0)), len(rows),
             table.version(), time.time() - t0)
    return {"silver.items": table.version()}


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
    items = items_table.to_pandas(columns=[C.DOMAIN, C.ITEM_ID, C.TEXT, C.CATEGORY, C.ATTRIBUTES])
    hashes = DeltaTable(_table_path(cfg.lake_root, "gold.item_embeddings"),
                        version=data.versions.get("gold.item_embeddings")).to_pandas(columns=[C.DOMAIN, C.ITEM_ID, C.TEXT_HASH])
    index = data.item_index[[C.DOMAIN, C.ITEM_ID]].merge(items, on=[C.DOMAIN, C.ITEM_ID], how="left",
                                                         validate="one_to_one").merge(hashes, on=[C.DOMAIN, C.ITEM_ID], how="left")
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


__all__ = ["TrainingData", "resolve_versions", "load_training_data", "add_item_tokens", "add_item_entities", "add_item_vectors",
           "entity_vocabulary", "restrict_to_domains",
           "sample_users", "sample_user_ids", "user_slices"]

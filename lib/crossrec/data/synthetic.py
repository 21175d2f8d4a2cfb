"""Deterministic synthetic multi-domain interaction data, written in crossrec's raw input format.

The data carry a planted cross-domain signal that later stages can be tested against:

* ``topics`` latent interests ("space", "jazz", "baking", ...), shared by all domains. Every item belongs
  to one domain and one topic; its title and text are built from the topic's words, its category is the
  domain's name for the topic, and item popularity within a (domain, topic) is Zipf-like.
* Every user has a topic mixture concentrated on 1-3 topics, the same mixture in every domain, so a user's
  history in one domain predicts their items in another. 10% of events pick a topic at random (noise).
* ``text_signal``: with ``aligned`` (default) a topic's items read alike in every domain (the same theme words), so
  item text alone links a topic across domains; with ``per_domain`` each domain names its topics after its own
  seeded permutation of the themes ("space" books read like jazz, "space" movies like baking): text still groups a
  domain's items by topic, but the link between domains is only in the users active in several of them.
* ``entity_signal``: with ``none`` (default) each domain draws its own people (authors, directors, artists) and
  brands per topic; with ``shared`` a topic's people and brands are the same in every domain (one seeded stream per
  topic), books may have two authors (``"A; B"``), and ``dataset.json`` declares them entities of type ``person`` /
  ``brand`` (a ``;`` separator for authors; a film's year is no entity). Users then also have a favourite creator
  per topic, the same person (or brand) in every domain, and ``CREATOR_AFFINITY`` of their topical events pick
  that creator's items: a taste finer than the topic that only the shared entities name across domains.
* ``vector_signal``: with ``creator`` every item gets a precomputed vector (``style_vec``, ``VECTOR_DIM`` floats,
  declared as modality ``image``): a code of its (topic, creator) shared by every domain plus noise, and users keep
  to a favourite creator as above. Without ``entity_signal=shared`` the creators' names differ between domains, so
  across domains that taste is in the vectors only.
* ``new_items``: the share of each domain's items that are new releases (default 0): only a user's latest two events
  of a domain may pick one (the validation and test targets the features job holds out), an earlier pick of one goes
  to an old item of the same topic and creator instead. A new item thus has no training event: the *cold items* of
  the evaluation (those only test targets pick), ranked from their text, entities and vectors alone.
* Users are active in a subset of domains (``single_domain_share`` of them in exactly one), have
  ``max(3, Poisson(mean_events_per_user))`` events spread over those domains (each active domain gets at
  least one), at strictly increasing whole-second times per user between 2019-01-01 and 2024-12-31 UTC.
* Events are ``view`` (weight 1) or, more often for items of a user's main topics, a domain's other type:
  ``rating`` with 1-5 stars (books, half stars for movies) or ``purchase`` (music: no weight column; further
  domains: a quantity).

Layout (see docs/raw-format.md): each domain uses its own file format and raw column names.

* 0 books, csv: ``reader, isbn, read_at, action, stars``; ``read_at`` iso8601 (``2021-03-04T05:06:07Z``).
* 1 movies, jsonl: ``uid, movie_id, ts, event, rating``; ``ts`` epoch seconds.
* 2 music, parquet: ``listener, track, played_at_ms, kind`` (no weight); epoch milliseconds; ``listener`` ids
  are the domain's own, joined to people by the identity map.
* 3+ cycle csv / jsonl / parquet with ``user_id, item_id, event_ts, event_type, weight`` and timestamps
  ``yyyy-MM-dd HH:mm:ss`` (a Spark pattern) / epoch_s / epoch_ms.

Interactions go to ``<domain>/interactions/part-NNNNN.<ext>``, one file per chunk of ``chunk_users``
users; items to ``<domain>/items.<ext>``. The music domain (index 2) names its users ``m-<8 hex>`` and
``identity_map.csv`` joins them to the global ids (``u0000123``) used everywhere else.

Bad rows (``dirty_rate > 0``) are added on top of the clean rows of every interaction file, in random
positions: per file and reason ``ceil(dirty_rate * clean_rows / reasons)`` rows. Each bad row is a clean row
of the same file with exactly one defect, and no bad row equals any other row except that each
``duplicate`` equals exactly one clean row, so the counts in ``manifest.json`` are exact whatever order a
cleaner checks the reasons in, provided it flags malformed lines before anything else:

* ``missing_user_id`` -- user empty (csv, jsonl ``""``) or null (parquet).
* ``unparseable_timestamp`` -- ``not-a-date`` (csv, jsonl) or null (parquet: the column is int64).
* ``timestamp_out_of_range`` -- in 1990 or in 2099, alternately.
* ``item_not_in_catalog`` -- an id in the domain's id format that is not in its items file.
* ``duplicate`` -- an exact copy of a clean row (no two clean rows are equal).
* ``malformed_line`` (csv only) -- a clean line cut to 3 fields or given a 6th field ``extra``, alternately.
  A reader that does not flag wrong field counts sees the 3-field line as a valid event and the 6-field one
  as a duplicate.

The clean rows do not depend on ``dirty_rate``: a dirty data set is its clean twin plus the bad rows.
Output bytes depend only on the spec, ``chunk_users`` and the installed numpy/pyarrow versions.

Run::

    crossrec generate OUT_DIR --users 100000 --domains 3 --dirty-rate 0.01 --seed 7
"""

from __future__ import annotations

import csv
import json
import logging
import math
import shutil
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from crossrec.data.synthetic_catalog import (
    BAD_REASONS,
    DOMAIN_NAMES,  # noqa: F401 (re-exported: the domains a data set names, in order)
    DomainCatalog,
    Layout,
    build_domain_catalog,
    category_name,
    dataset_json,
    domain_layout,
    domain_name,  # noqa: F401 (re-exported)
    keep_new_items_last,
    make_item_id,
    theme_of,
    topic_naming,
)

log = logging.getLogger(__name__)

EVENT_TYPES = ("view", "rating", "purchase")  # codes 0, 1, 2
TEXT_SIGNALS = ("aligned", "per_domain")
ENTITY_SIGNALS = ("none", "shared")
CREATOR_AFFINITY = 0.7  # share of a user's topical events that pick their favourite creator (creator-level signals)
VECTOR_SIGNALS = ("none", "creator")
VECTOR_DIM = 8  # vector_signal="creator": width of the items' style_vec
VECTOR_NOISE = 0.3  # vector_signal="creator": per-item noise around the (topic, creator) code
UNPARSEABLE_TS = "not-a-date"
TIME_MIN_S = 1_546_300_800  # 2019-01-01T00:00:00Z
TIME_MAX_S = 1_735_689_599  # 2024-12-31T23:59:59Z
OUT_OF_RANGE_START_S = (631_152_000, 4_070_908_800)  # 1990-01-01T00:00:00Z, 2099-01-01T00:00:00Z
DEFAULT_CHUNK_USERS = 100_000

_TOPIC_NOISE = 0.10  # share of events whose topic is drawn at random instead of from the user's mixture
_TOPIC_COUNT_P = (0.30, 0.45, 0.25)  # users with 1, 2, 3 topics
_MULTI_DOMAIN_P = 0.35  # a multi-domain user is in 2 + Binomial(D - 2, p) domains
_MEAN_GAP_S = 2 * 86_400  # median of the users' mean gap between two events
_MS_PER_S = 1000
_WRITE_PARQUET = dict(compression="snappy", use_dictionary=True, write_statistics=True, version="2.6")


@dataclass(frozen=True)
class SyntheticSpec:
    """What to generate; with ``seed`` it fixes every byte of the output."""

    users: int = 2000
    domains: int = 3
    items_per_domain: int = 300
    mean_events_per_user: float = 20.0
    topics: int = 12
    single_domain_share: float = 0.3
    text_signal: str = "aligned"  # "aligned" | "per_domain": how item text names topics across domains
    entity_signal: str = "none"  # "none" | "shared": whether a topic's people and brands are the same in every domain
    vector_signal: str = "none"  # "none" | "creator": items carry a vector coding their creator, shared across domains
    new_items: float = 0.0  # share of each domain's items released last: validation and test targets only
    dirty_rate: float = 0.0
    seed: int = 7

    def __post_init__(self) -> None:
        checks = [
            (self.users >= 1, "users must be >= 1"),
            (self.domains >= 1, "domains must be >= 1"),
            (self.topics >= 1, "topics must be >= 1"),
            (self.topics <= self.items_per_domain <= 1_000_000, "need topics <= items_per_domain <= 1,000,000"),
            (0 < self.mean_events_per_user <= 10_000, "mean_events_per_user must be in (0, 10000]"),
            (0.0 <= self.single_domain_share <= 1.0, "single_domain_share must be in [0, 1]"),
            (0.0 <= self.dirty_rate <= 1.0, "dirty_rate must be in [0, 1]"),
            (self.seed >= 0, "seed must be >= 0"),
            (self.text_signal in TEXT_SIGNALS, f"text_signal must be one of {TEXT_SIGNALS}"),
            (self.entity_signal in ENTITY_SIGNALS, f"entity_signal must be one of {ENTITY_SIGNALS}"),
            (self.vector_signal in VECTOR_SIGNALS, f"vector_signal must be one of {VECTOR_SIGNALS}"),
            (0.0 <= self.new_items < 1.0, "new_items must be in [0, 1)"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(f"SyntheticSpec: {message}, got {self}")


# ----------------------------------------------------------------------------------------------------
# Users and events of one chunk (all vectorised).


@dataclass(frozen=True)
class _Events:
    """One chunk's clean events, grouped by user, time-ordered within a user."""

    user: np.ndarray  # (E,) chunk-local user index
    domain: np.ndarray  # (E,)
    item: np.ndarray  # (E,) item index in its domain
    ts_s: np.ndarray  # (E,) epoch seconds, strictly increasing per user
    ms: np.ndarray  # (E,) millisecond part for epoch_ms domains
    other: np.ndarray  # (E,) bool: non-view event
    stars: np.ndarray  # (E,) continuous rating before rounding
    quantity: np.ndarray  # (E,)
    active: np.ndarray  # (n, D) bool: domains of each user
    taste: np.ndarray  # (n, topics) each user's topic distribution of an event (the mixture with the noise share)
    favourite: np.ndarray | None = None  # (n, topics) each user's creator slot per topic (creator-level signals only)


def _pick(cdf_rows: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Per row, the first column whose cumulative probability exceeds ``u`` (capped to the last column)."""
    return np.minimum((u[:, None] >= cdf_rows).sum(axis=1), cdf_rows.shape[1] - 1)


def _simulate_chunk(spec: SyntheticSpec, topic_pop: np.ndarray, domain_pop: np.ndarray,
                    catalogs: Sequence[DomainCatalog], n: int, rng: np.random.Generator) -> _Events:
    t_count, d_count = spec.topics, spec.domains
    rows = np.arange(n)

    # Topic mixture on 1-3 topics, drawn without replacement by topic popularity (Gumbel top-k).
    slots = min(3, t_count)
    k_topics = np.minimum(rng.choice(3, size=n, p=_TOPIC_COUNT_P) + 1, slots)
    top = np.argsort(-(np.log(topic_pop) + rng.gumbel(size=(n, t_count))), axis=1, kind="stable")[:, :slots]
    mix = rng.gamma(1.0, size=(n, slots)) * (np.arange(slots) < k_topics[:, None])
    mix /= mix.sum(axis=1, keepdims=True)  # (n, slots)

    # Active domains: ranked by preference, the first k_domains of them.
    if d_count == 1:
        k_domains = np.ones(n, dtype=np.int64)
    else:
        single = rng.random(n) < spec.single_domain_share
        k_domains = np.where(single, 1, 2 + rng.binomial(d_count - 2, _MULTI_DOMAIN_P, size=n))
    ranked = np.argsort(-(np.log(domain_pop) + rng.gumbel(size=(n, d_count))), axis=1, kind="stable")  # (n, D)
    active = np.zeros((n, d_count), dtype=bool)
    active[rows[:, None], ranked] = np.arange(d_count) < k_domains[:, None]
    dom_w = rng.gamma(2.0, size=(n, d_count)) * active
    dom_cdf = np.cumsum(dom_w / dom_w.sum(axis=1, keepdims=True), axis=1)

    # Events: the first k_domains of a user go one to each active domain, the rest by domain weight.
    n_events = np.maximum(rng.poisson(spec.mean_events_per_user, size=n), np.maximum(3, k_domains))
    user = np.repeat(rows, n_events)
    start = np.cumsum(n_events) - n_events
    pos = np.arange(len(user)) - start[user]
    domain = _pick(dom_cdf[user], rng.random(len(user)))
    domain = np.where(active[user, domain], domain, ranked[user, 0])  # float rounding at the CDF's top
    first = pos < k_domains[user]
    domain[first] = ranked[user[first], pos[first]]
    domain = domain[np.lexsort((rng.random(len(user)), user))]  # shuffle the domains within each user

    # Topic of each event: the user's mixture, or noise; affinity = the user's weight on that topic.
    slot = np.minimum(_pick(np.cumsum(mix, axis=1)[user], rng.random(len(user))), k_topics[user] - 1)
    noise = rng.random(len(user)) < _TOPIC_NOISE
    topic = np.where(noise, rng.choice(t_count, size=len(user), p=topic_pop), top[user, slot])
    affinity = (mix[user] * (top[user] == topic[:, None])).sum(axis=1)
    taste = np.zeros((n, t_count))
    np.add.at(taste, (np.repeat(rows, slots), top.ravel()), mix.ravel())
    taste = (1.0 - _TOPIC_NOISE) * taste + _TOPIC_NOISE * topic_pop

    item = np.empty(len(user), dtype=np.int64)
    favourite = None
    for d, catalog in enumerate(catalogs):
        m = domain == d
        item[m] = catalog.sample(topic[m], rng.random(int(m.sum())))
    if spec.entity_signal == "shared" or spec.vector_signal != "none":  # drawn only here: the default bytes stay
        favourite = rng.integers(0, 4, size=(n, t_count))  # the user's creator slot per topic, in every domain
        by_creator = ~noise & (rng.random(len(user)) < CREATOR_AFFINITY)
        u = rng.random(len(user))
        for d, catalog in enumerate(catalogs):
            m = by_creator & (domain == d)
            item[m] = catalog.sample_creator(topic[m], favourite[user[m], topic[m]], u[m])

    if spec.new_items > 0:  # a new release only as one of the user's latest two events of its domain (no draw)
        item = keep_new_items_last(user, domain, pos, item, catalogs)

    # Times: exponential gaps with a per-user scale, squeezed into the range if needed, +1 s per step.
    scale = np.exp(rng.normal(np.log(_MEAN_GAP_S), 1.0, size=n))
    gaps = rng.exponential(size=len(user)) * scale[user]
    gaps[pos == 0] = 0.0
    csum = np.cumsum(gaps)
    offset = csum - csum[start][user]
    last = start + n_events - 1
    room = 0.95 * (TIME_MAX_S - TIME_MIN_S) - n_events
    factor = np.minimum(1.0, room / np.maximum(offset[last], 1e-9))
    offset_s = np.floor(offset * factor[user]).astype(np.int64) + pos
    t0 = TIME_MIN_S + np.floor(rng.random(n) * (TIME_MAX_S - TIME_MIN_S - offset_s[last] + 1)).astype(np.int64)
    ts_s = t0[user] + offset_s

    other = rng.random(len(user)) < 0.05 + 0.25 * affinity
    stars = 2.0 + 3.0 * affinity + rng.normal(0.0, 0.8, size=len(user))
    ms = rng.integers(0, _MS_PER_S, size=len(user))
    quantity = 1 + rng.poisson(0.4, size=len(user))
    return _Events(user, domain, item, ts_s, ms, other, stars, quantity, active, taste, favourite)


# ----------------------------------------------------------------------------------------------------
# Raw rows of one (domain, chunk) and the bad rows injected into them.


@dataclass(frozen=True)
class _Rows:
    user: np.ndarray  # int64 chunk-local user index, -1 = missing
    item: np.ndarray  # int64 index into the catalog ids, then this file's unknown ids
    ts_ms: np.ndarray  # int64 epoch milliseconds
    ts_bad: np.ndarray  # bool: write an unparseable timestamp
    etype: np.ndarray  # int8 code into EVENT_TYPES
    weight: np.ndarray  # float64
    malformed: np.ndarray  # int8: 0 fine, 1 too few fields, 2 too many

    def take(self, idx: np.ndarray) -> _Rows:
        return _Rows(*(getattr(self, f.name)[idx] for f in fields(self)))

    def replace(self, **columns: np.ndarray) -> _Rows:
        return _Rows(**{f.name: columns.get(f.name, getattr(self, f.name)) for f in fields(self)})

    @staticmethod
    def concat(parts: Sequence[_Rows]) -> _Rows:
        return _Rows(*(np.concatenate([getattr(p, f.name) for p in parts]) for f in fields(_Rows)))

    def __len__(self) -> int:
        return len(self.user)


def _clean_rows(ev: _Events, d: int, layout: Layout) -> _Rows:
    m = ev.domain == d
    other = ev.other[m]
    etype = np.where(other, layout.other_type, 0).astype(np.int8)
    if layout.weight == "stars":
        weight = np.where(other, np.clip(np.rint(ev.stars[m]), 1, 5), 1.0)
    elif layout.weight == "half_stars":
        weight = np.where(other, np.clip(np.rint(ev.stars[m] * 2) / 2, 0.5, 5.0), 1.0)
    elif layout.weight == "quantity":
        weight = np.where(other, ev.quantity[m], 1).astype(np.float64)
    else:
        weight = np.ones(int(m.sum()))
    ts_ms = ev.ts_s[m] * _MS_PER_S + (ev.ms[m] if layout.timestamp == "epoch_ms" else 0)
    k = int(m.sum())
    return _Rows(ev.user[m], ev.item[m], ts_ms, np.zeros(k, bool), etype, weight, np.zeros(k, np.int8))


def _distinct_sources(key: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Up to ``k`` random row positions with pairwise different ``key``."""
    perm = rng.permutation(len(key))
    _, first = np.unique(key[perm], return_index=True)
    return perm[np.sort(first)][:k]


def _inject_bad_rows(clean: _Rows, layout: Layout, n_catalog: int, rate: float,
                     rng: np.random.Generator) -> tuple[_Rows, dict[str, int], int]:
    """Clean rows plus the bad rows, shuffled in; returns (rows, count per reason, unknown ids used)."""
    counts = {reason: 0 for reason in layout.reasons}
    n = len(clean)
    if rate <= 0 or n == 0:
        return clean, counts, 0
    want = math.ceil(rate * n / len(layout.reasons))
    parts = [clean]
    n_unknown = 0
    for reason in layout.reasons:
        if reason == "missing_user_id":  # (item, ts) distinct, so these rows differ from each other
            src = _distinct_sources(clean.ts_ms * (n_catalog + 1) + clean.item, want, rng)
            bad = clean.take(src).replace(user=np.full(len(src), -1, np.int64))
        elif reason == "unparseable_timestamp":  # one a user: (user, item, type, weight) may repeat
            src = _distinct_sources(clean.user, want, rng)
            bad = clean.take(src).replace(ts_bad=np.ones(len(src), bool))
        else:
            src = np.sort(rng.choice(n, size=min(want, n), replace=False))
            bad = clean.take(src)
            j = np.arange(len(src))
            if reason == "timestamp_out_of_range":  # distinct times, alternately 1990 and 2099
                start = np.where(j % 2 == 0, OUT_OF_RANGE_START_S[0], OUT_OF_RANGE_START_S[1])
                bad = bad.replace(ts_ms=(start + 97 * (j // 2)) * _MS_PER_S + bad.ts_ms % _MS_PER_S)
            elif reason == "item_not_in_catalog":  # fresh ids past the catalog
                bad = bad.replace(item=n_catalog + n_unknown + j)
                n_unknown += len(src)
            elif reason == "malformed_line":
                bad = bad.replace(malformed=np.where(j % 2 == 0, 1, 2).astype(np.int8))
        counts[reason] = len(bad)
        parts.append(bad)
    rows = _Rows.concat(parts)
    n_bad = len(rows) - n
    slot = np.concatenate([np.arange(n, dtype=np.float64), rng.integers(0, n + 1, size=n_bad) - 0.5])
    return rows.take(np.argsort(slot, kind="stable")), counts, n_unknown


# ----------------------------------------------------------------------------------------------------
# Writers.


def _string_bytes(lines: pa.Array) -> pa.Buffer:
    """The concatenated UTF-8 bytes of a string array (no separators)."""
    if isinstance(lines, pa.ChunkedArray):
        lines = lines.combine_chunks()
    if len(lines) == 0:
        return pa.py_buffer(b"")
    offsets = np.frombuffer(lines.buffers()[1], dtype=np.int32)[lines.offset:lines.offset + len(lines) + 1]
    return lines.buffers()[2][int(offsets[0]):int(offsets[-1])]


def _ts_text(rows: _Rows, layout: Layout) -> pa.Array:
    if layout.timestamp == "epoch_s":
        text = pc.cast(pa.array(rows.ts_ms // _MS_PER_S), pa.string())
    elif layout.timestamp == "epoch_ms":
        text = pc.cast(pa.array(rows.ts_ms), pa.string())
    else:
        fmt = "%Y-%m-%dT%H:%M:%SZ" if layout.timestamp == "iso8601" else "%Y-%m-%d %H:%M:%S"
        text = pc.strftime(pa.array(rows.ts_ms // _MS_PER_S, pa.timestamp("s", tz="UTC")), format=fmt)
    return pc.if_else(pa.array(rows.ts_bad), UNPARSEABLE_TS, text)


def _weight_text(rows: _Rows, layout: Layout) -> pa.Array:
    if layout.weight == "half_stars":  # always one decimal: 1.0, 4.5
        halves = np.rint(rows.weight * 2).astype(np.int64)
        return pc.binary_join_element_wise(pc.cast(pa.array(halves // 2), pa.string()),
                                           pc.if_else(pa.array(halves % 2 == 1), ".5", ".0"), "")
    return pc.cast(pa.array(rows.weight.astype(np.int64)), pa.string())


def _write_interactions(path: Path, rows: _Rows, layout: Layout, users: pa.Array, items: pa.Array) -> None:
    valid_user = rows.user >= 0
    user = pc.if_else(pa.array(valid_user), users.take(pa.array(np.where(valid_user, rows.user, 0))), "")
    item = items.take(pa.array(rows.item))
    etype = pa.array(EVENT_TYPES, pa.string()).take(pa.array(rows.etype))
    cols = layout.columns
    if layout.fmt == "parquet":
        table = pa.table({
            cols["user_id"]: pc.if_else(pa.array(valid_user), user, pa.scalar(None, pa.string())),
            cols["item_id"]: item,
            cols["event_ts"]: pa.array(rows.ts_ms if layout.timestamp == "epoch_ms" else rows.ts_ms // _MS_PER_S,
                                       mask=rows.ts_bad),
            cols["event_type"]: etype,
            **({cols["weight"]: pa.array(rows.weight)} if layout.weight else {}),
        })
        pq.write_table(table, path, **_WRITE_PARQUET)
        return
    ts = _ts_text(rows, layout)
    weight = _weight_text(rows, layout) if layout.weight else None
    if layout.fmt == "csv":
        values = [user, item, ts, etype] + ([weight] if weight is not None else [])
        line = pc.binary_join_element_wise(*values, ",")
        short = pc.binary_join_element_wise(user, item, ts, ",")
        line = pc.if_else(pa.array(rows.malformed == 1), short, line)
        line = pc.if_else(pa.array(rows.malformed == 2), pc.binary_join_element_wise(line, "extra", ","), line)
        header = ",".join(cols[c] for c in ("user_id", "item_id", "event_ts", "event_type", "weight") if c in cols)
    else:  # jsonl; ids and event types never need JSON escaping
        def quoted(a: pa.Array) -> pa.Array:
            return pc.binary_join_element_wise('"', a, '"', "")

        ts_json = pc.if_else(pa.array(rows.ts_bad), quoted(ts), ts)
        pieces: list[Any] = [f'{{"{cols["user_id"]}": ', quoted(user), f', "{cols["item_id"]}": ', quoted(item),
                             f', "{cols["event_ts"]}": ', ts_json, f', "{cols["event_type"]}": ', quoted(etype)]
        if weight is not None:
            pieces += [f', "{cols["weight"]}": ', weight]
        line = pc.binary_join_element_wise(*pieces, "}", "")
        header = None
    body = _string_bytes(pc.binary_join_element_wise(line, "", "\n"))
    with open(path, "wb") as f:
        if header is not None:
            f.write(header.encode() + b"\n")
        f.write(body)


def _write_items(path: Path, layout: Layout, columns: dict[str, list[Any]]) -> None:
    if layout.fmt == "parquet":
        pq.write_table(pa.table(columns), path, **_WRITE_PARQUET)
        return
    names = list(columns)
    rows = zip(*columns.values())
    with open(path, "w", encoding="utf-8", newline="") as f:
        if layout.fmt == "csv":
            writer = csv.writer(f, lineterminator="\n")
            writer.writerow(names)
            writer.writerows(rows)
        else:
            for row in rows:
                f.write(json.dumps(dict(zip(names, row)), ensure_ascii=False) + "\n")


def _write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


# ----------------------------------------------------------------------------------------------------
# Entry point.


def _prepare_out_dir(out: Path, layouts: Sequence[Layout], overwrite: bool) -> None:
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise FileExistsError(f"{out} is not empty (pass overwrite=True to replace a generated data set)")
        for name in ("dataset.json", "manifest.json", "identity_map.csv"):
            (out / name).unlink(missing_ok=True)
        for lay in layouts:
            if (out / lay.name).is_dir():
                shutil.rmtree(out / lay.name)
    out.mkdir(parents=True, exist_ok=True)
    for lay in layouts:
        (out / lay.name / "interactions").mkdir(parents=True)


def generate(out_dir: str | Path, spec: SyntheticSpec, *, chunk_users: int = DEFAULT_CHUNK_USERS,
             overwrite: bool = False, nightly: bool = False) -> dict:
    """Write a synthetic raw data set for ``spec`` into ``out_dir``; return its manifest.

    ``out_dir`` must be empty or absent (``overwrite=True`` replaces the files a previous run wrote). Users are
    generated and written ``chunk_users`` at a time, one interaction file per domain and chunk, so memory
    stays bounded for millions of users. The manifest (also written to ``out_dir/manifest.json``) holds the
    spec, row counts per domain and file, and the exact count of injected bad rows per reason. With ``nightly`` the
    catalogs and the identity map are folders (``<domain>/items/``, ``identity_map/``) that :func:`generate_night`
    adds files to.
    """
    if chunk_users < 1:
        raise ValueError(f"chunk_users must be >= 1, got {chunk_users}")
    out = Path(out_dir)
    pf = _platform(spec)
    layouts, topic_pop, domain_pop, catalogs = pf.layouts, pf.topic_pop, pf.domain_pop, pf.catalogs
    _prepare_out_dir(out, layouts, overwrite)
    log.info("generating %s into %s (chunks of %d users)", spec, out, chunk_users)
    item_arrays = [pa.array(c.ids, pa.string()) for c in catalogs]
    for lay, cat in zip(layouts, catalogs):
        (out / _items_path(lay, nightly, 1)).parent.mkdir(parents=True, exist_ok=True)
        _write_items(out / _items_path(lay, nightly, 1), lay, cat.columns)

    id_width, music_salt = pf.id_width, pf.music_salt
    id_map_path = out / (_IDENTITY_NIGHT.format(night=1) if nightly else "identity_map.csv")
    has_id_map = any(lay.local_users for lay in layouts)
    if has_id_map:
        id_map_path.parent.mkdir(parents=True, exist_ok=True)
        id_map_path.write_text("domain,local_user,person\n", encoding="utf-8")

    files: dict[str, list[dict[str, Any]]] = {lay.name: [] for lay in layouts}
    users_per_domain = np.zeros(spec.domains, dtype=np.int64)
    single_domain = id_map_rows = 0
    unknown_used = [0] * spec.domains
    n_chunks = math.ceil(spec.users / chunk_users)
    started, events_done = time.monotonic(), 0
    for c in range(n_chunks):
        u0, u1 = c * chunk_users, min(spec.users, (c + 1) * chunk_users)
        chunk_rng = np.random.default_rng(np.random.SeedSequence([spec.seed, 1, c]))
        ev = _simulate_chunk(spec, topic_pop, domain_pop, catalogs, u1 - u0, chunk_rng)
        users_per_domain += ev.active.sum(axis=0)
        single_domain += int((ev.active.sum(axis=1) == 1).sum())
        global_ids = pc.binary_join_element_wise(
            "u", pc.utf8_lpad(pc.cast(pa.array(np.arange(u0, u1)), pa.string()), width=id_width, padding="0"), "")
        music_ids = pa.array([f"m-{(u * 2_654_435_761 + music_salt) % 2**32:08x}" for u in range(u0, u1)],
                             pa.string())
        for d, lay in enumerate(layouts):
            clean = _clean_rows(ev, d, lay)
            dirty_rng = np.random.default_rng(np.random.SeedSequence([spec.seed, 2, c, d]))
            rows, bad, n_unknown = _inject_bad_rows(clean, lay, spec.items_per_domain, spec.dirty_rate, dirty_rng)
            items = item_arrays[d]
            if n_unknown:
                kind_ids = [make_item_id(lay.kind, lay.name, spec.items_per_domain + unknown_used[d] + j)
                            for j in range(n_unknown)]
                items = pa.concat_arrays([items, pa.array(kind_ids, pa.string())])
                unknown_used[d] += n_unknown
            rel = f"{lay.name}/interactions/part-{c:05d}.{lay.ext}"
            _write_interactions(out / rel, rows, lay, music_ids if lay.local_users else global_ids, items)
            files[lay.name].append({"path": rel, "rows": len(rows), "clean_rows": len(clean), "bad_rows": bad})
            if lay.local_users:
                in_domain = np.flatnonzero(ev.active[:, d])
                lines = pc.binary_join_element_wise(lay.name, music_ids.take(pa.array(in_domain)),
                                                    global_ids.take(pa.array(in_domain)), ",")
                with open(id_map_path, "ab") as f:
                    f.write(_string_bytes(pc.binary_join_element_wise(lines, "", "\n")))
                id_map_rows += len(in_domain)
        events_done += len(ev.user)
        elapsed = time.monotonic() - started
        rate = events_done / max(elapsed, 1e-9)
        log.info("chunk %d/%d: users %d/%d, clean events %d, %.0f events/s, ETA %.0f s", c + 1, n_chunks, u1,
                 spec.users, events_done, rate, elapsed / (c + 1) * (n_chunks - c - 1))

    domains_manifest: dict[str, Any] = {}
    totals = {"rows": 0, "clean_rows": 0, "bad_rows": {reason: 0 for reason in BAD_REASONS}}
    for d, lay in enumerate(layouts):
        bad_sum = {reason: sum(f["bad_rows"][reason] for f in files[lay.name]) for reason in lay.reasons}
        inter = {"path": f"{lay.name}/interactions", "files": files[lay.name],
                 "rows": sum(f["rows"] for f in files[lay.name]),
                 "clean_rows": sum(f["clean_rows"] for f in files[lay.name]), "bad_rows": bad_sum}
        domains_manifest[lay.name] = {
            "format": lay.fmt, "timestamp": lay.timestamp, "users": int(users_per_domain[d]),
            "items": {"path": _items_path(lay, nightly, 1), "rows": spec.items_per_domain},
            "interactions": inter,
        }
        totals["rows"] += inter["rows"]
        totals["clean_rows"] += inter["clean_rows"]
        for reason, k in bad_sum.items():
            totals["bad_rows"][reason] += k
    manifest: dict[str, Any] = {
        "generator": "crossrec.data.synthetic",
        "format_version": 1,
        "spec": asdict(spec),
        "chunk_users": chunk_users,
        "time_range": {"min_epoch_s": TIME_MIN_S, "max_epoch_s": TIME_MAX_S},
        "users": {"total": spec.users, "single_domain": single_domain, "multi_domain": spec.users - single_domain},
        "topics": [{"id": t, "theme": theme_of(t).key, "words": list(theme_of(t).words),
                    "categories": {lay.name: category_name(theme_of(int(topic_naming(spec, i)[t])), lay.name)
                                   for i, lay in enumerate(layouts)}}
                   for t in range(spec.topics)],
        "domains": domains_manifest,
        "totals": totals,
    }
    if has_id_map:
        manifest["identity_map"] = {"path": str(id_map_path.relative_to(out)), "rows": id_map_rows}
    _write_json(out / "dataset.json", dataset_json(layouts, has_id_map, nightly, spec.entity_signal == "shared",
                                                         spec.vector_signal != "none"))
    _write_json(out / "manifest.json", manifest)
    log.info("wrote %d rows (%d clean) for %d users in %.1f s", totals["rows"], totals["clean_rows"], spec.users,
             time.monotonic() - started)
    return manifest


# ----------------------------------------------------------------------------------------------------
# A platform night by night (crossrec bench nightly).

_IDENTITY_NIGHT = "identity_map/night-{night:04d}.csv"


def _items_path(layout: Layout, nightly: bool, night: int) -> str:
    return f"{layout.name}/items/night-{night:04d}.{layout.ext}" if nightly else f"{layout.name}/items.{layout.ext}"


@dataclass(frozen=True)
class _Platform:
    layouts: list
    topic_pop: np.ndarray
    domain_pop: np.ndarray
    catalogs: list
    id_width: int
    music_salt: int


def _platform(spec: SyntheticSpec) -> _Platform:
    """What every night of one spec shares: layouts, popularity, catalogs, id formats (all from the seed)."""
    layouts = [domain_layout(i) for i in range(spec.domains)]
    catalog_rng = np.random.default_rng(np.random.SeedSequence([spec.seed, 0]))
    topic_pop = 1.0 / np.arange(1, spec.topics + 1) ** 0.6
    topic_pop = catalog_rng.permutation(topic_pop / topic_pop.sum())
    domain_pop = 1.0 / np.arange(1, spec.domains + 1) ** 0.5
    catalogs = [build_domain_catalog(lay, spec, catalog_rng, i) for i, lay in enumerate(layouts)]
    music_salt = int(np.random.default_rng(np.random.SeedSequence([spec.seed, 3])).integers(0, 2**32))
    return _Platform(layouts, topic_pop, domain_pop, catalogs, max(7, len(str(spec.users - 1))), music_salt)


def generate_night(out_dir: str | Path, spec: SyntheticSpec, night: int, new_share: float, *,
                   new_user_share: float = 0.3, new_item_share: float = 0.05, correction_share: float = 0.05) -> dict:
    """Add night ``night`` (>= 2) to a platform :func:`generate` wrote with ``nightly=True`` into ``out_dir``.

    The night's events number ``new_share`` of the history's rows. ``new_user_share`` of the night's users are new
    (ids after every earlier one), the others existing users; events happen on the night's day (after the history),
    ``new_item_share`` of them on items new that night (written to the domain's catalog folder with, as corrections,
    a few existing items whose title changed); ``correction_share`` of the night's rows are re-sent rows of the
    history (exact repeats: duplicates for clean). Music users come with identity-map rows. Deterministic in
    (spec, night). Returns counts.
    """
    if night < 2:
        raise ValueError(f"night must be >= 2 (night 1 is the history generate() writes), got {night}")
    out = Path(out_dir)
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    pf = _platform(spec)
    rng = np.random.default_rng(np.random.SeedSequence([spec.seed, 5, night]))
    n_events = max(1, round(new_share * manifest["totals"]["clean_rows"]))
    n_users = max(1, round(n_events / spec.mean_events_per_user))
    ev = _simulate_chunk(spec, pf.topic_pop, pf.domain_pop, pf.catalogs, n_users, rng)
    new = rng.random(n_users) < new_user_share
    first_new = spec.users + (night - 2) * n_users  # the same n_users every night of a spec
    user_ids = np.where(new, first_new + np.arange(n_users), rng.integers(0, spec.users, n_users))
    day0 = TIME_MAX_S + 1 + (night - 2) * 86_400
    start = np.searchsorted(ev.user, np.arange(n_users))
    pos = np.arange(len(ev.user)) - start[ev.user]
    ts = day0 + rng.integers(0, 40_000, n_users)[ev.user] + pos * 60
    ev = _replace_events(ev, ts)

    width = max(pf.id_width, len(str(first_new + n_users)))
    globals_ = pa.array([f"u{u:0{width}d}" for u in user_ids], pa.string())
    music = pa.array([f"m-{(int(u) * 2_654_435_761 + pf.music_salt) % 2**32:08x}" for u in user_ids], pa.string())
    counts = {"events": 0, "new_items": 0, "changed_items": 0, "resent_rows": 0, "users": n_users, "new_users": int(new.sum())}
    id_lines = []
    hist = _simulate_chunk(spec, pf.topic_pop, pf.domain_pop, pf.catalogs, min(spec.users, DEFAULT_CHUNK_USERS),
                           np.random.default_rng(np.random.SeedSequence([spec.seed, 1, 0])))  # history chunk 0, as written
    hist_globals = pa.array([f"u{u:0{pf.id_width}d}" for u in range(min(spec.users, DEFAULT_CHUNK_USERS))], pa.string())
    hist_music = pa.array([f"m-{(u * 2_654_435_761 + pf.music_salt) % 2**32:08x}" for u in range(min(spec.users, DEFAULT_CHUNK_USERS))], pa.string())
    for d, lay in enumerate(pf.layouts):
        cat = pf.catalogs[d]
        rows = _clean_rows(ev, d, lay)
        n_new = max(1, spec.items_per_domain // 200)
        base = rng.integers(0, len(cat.ids), n_new)
        ic = lay.item_columns
        new_ids = [make_item_id(lay.kind, lay.name, spec.items_per_domain + 100_000 * night + j) for j in range(n_new)]
        changed = rng.integers(0, len(cat.ids), max(1, n_new // 2))
        columns = {c: [v[i] for i in base] + [v[i] for i in changed] for c, v in cat.columns.items()}
        columns[ic["item_id"]] = new_ids + [cat.ids[i] for i in changed]
        columns[ic["title"]] = ([f"{t} (night {night} edition)" for t in columns[ic["title"]][:n_new]]
                                + [f"{t} (revised night {night})" for t in columns[ic["title"]][n_new:]])
        folder = out / lay.name / "items"
        folder.mkdir(exist_ok=True)
        _write_items(out / _items_path(lay, True, night), lay, columns)
        items = pa.concat_arrays([pa.array(cat.ids, pa.string()), pa.array(new_ids, pa.string())])
        on_new = rng.random(len(rows)) < new_item_share
        item = np.where(on_new, len(cat.ids) + rng.integers(0, n_new, len(rows)), rows.item)
        rows = rows.replace(item=item)
        _write_interactions(out / lay.name / "interactions" / f"night-{night:04d}.{lay.ext}", rows, lay,
                            music if lay.local_users else globals_, items)
        resend = _clean_rows(hist, d, lay)
        resend = resend.take(np.flatnonzero(rng.random(len(resend)) < correction_share * len(rows) / max(len(resend), 1)))
        if len(resend):
            _write_interactions(out / lay.name / "interactions" / f"night-{night:04d}-resent.{lay.ext}", resend, lay,
                                hist_music if lay.local_users else hist_globals, pa.array(cat.ids, pa.string()))
        if lay.local_users:
            users_here = np.unique(rows.user)
            id_lines += [f"{lay.name},{music[int(u)].as_py()},{globals_[int(u)].as_py()}" for u in users_here]
        counts["events"] += len(rows)
        counts["resent_rows"] += len(resend)
        counts["new_items"] += n_new
        counts["changed_items"] += len(changed)
    if id_lines:
        path = out / _IDENTITY_NIGHT.format(night=night)
        path.write_text("domain,local_user,person\n" + "\n".join(id_lines) + "\n", encoding="utf-8")
    log.info("night %d: %s", night, counts)
    return counts


def _replace_events(ev: _Events, ts_s: np.ndarray) -> _Events:
    from dataclasses import replace

    return replace(ev, ts_s=ts_s.astype(np.int64))

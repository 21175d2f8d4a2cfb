"""The evaluation protocol: full ranking on the test split, per domain and per user segment.

For every test row (user, target domain) a model scores *all* items of the target domain; the items of
the user's history in that domain are excluded (the target never is: it is a first occurrence). The
history a model may use is the row's own (train + valid events before the target). Baselines are fitted
on the same information: every train event plus every valid target.

Segments: ``all`` users; ``cold_start`` users (no item of the target domain in their history: the seeded
cold-start sample and users whose first item in the domain is the target); ``cold_item`` rows (the target
item never occurs in training).

Data is read from the gold tables with ``deltalake`` at pinned versions (no Spark).
"""
from __future__ import annotations

import logging
from collections.abc import Collection, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

import numpy as np
import scipy.sparse as sp

from crossrec import columns as C
from crossrec.evaluate.metrics import evaluate_full_ranking, paired_difference, per_row_metrics
from crossrec.model.baselines import InteractionData

if TYPE_CHECKING:
    from crossrec.model.transformer import CrossDomainTransformer
    from crossrec.rerank.base import TermSet

log = logging.getLogger(__name__)

SEGMENTS = ("all", "cold_start", "cold_item")


@dataclass
class DomainTest:
    """The test rows of one domain."""

    domain: str
    domain_idx: int
    rows: np.ndarray  # positions in EvalData.test_* arrays
    user_row: np.ndarray  # (n,) InteractionData user row of each test row
    target_col: np.ndarray  # (n,) domain_item_idx of the target
    exclude: sp.csr_matrix  # (n, n_items_in_domain) history items in the domain
    segments: dict[str, np.ndarray] = field(default_factory=dict)  # segment -> boolean mask over the n rows


@dataclass
class EvalData:
    """Everything the evaluation needs, as arrays."""

    train: InteractionData  # train events + valid targets (what models may learn from)
    domains: list[str]
    histories: list[np.ndarray]  # per test row: item_idx history (oldest first)
    history_ts: list[np.ndarray]
    tests: list[DomainTest]
    versions: dict[str, int]
    item_domain_names: dict[int, str]
    target_user: np.ndarray | None = None  # (rows,) InteractionData user row of each split row
    target_item: np.ndarray | None = None  # (rows,) item_idx of each split row's target
    target_ts: np.ndarray | None = None  # (rows,) its event time

    def item_counts(self) -> np.ndarray:
        """(n_items+1,) float32 training events per item: the popularity that scores rows with an empty history."""
        return np.bincount(self.train.item, minlength=self.train.n_items + 1).astype(np.float32)

    def sampled(self, max_rows: int, rng: np.random.Generator,
                domains: Collection[str] | None = None) -> Iterator[tuple[DomainTest, np.ndarray]]:
        """Per domain test with rows (of ``domains`` only, None = all), in order: it and the sorted positions of at
        most ``max_rows`` of its rows, drawn from ``rng`` (all of them when there are no more). Lazy: each domain's
        draw happens when it is reached, after whatever the caller drew from ``rng`` for the one before."""
        for dt_ in self.tests:
            if len(dt_.rows) == 0 or (domains is not None and dt_.domain not in domains):
                continue
            sel = np.arange(len(dt_.rows))
            if len(sel) > max_rows:
                sel = np.sort(rng.choice(sel, max_rows, replace=False))
            yield dt_, sel

    def train_with_targets(self) -> InteractionData:
        """``train`` plus every target of this split as one more event. For ``split="valid"``: the events
        models learn from at test time (train events + valid targets), without reading the tables again."""
        assert self.target_item is not None, "EvalData built without its split's targets"
        t = self.train
        return InteractionData(user=np.concatenate([t.user, self.target_user]),
                               item=np.concatenate([t.item, self.target_item]),
                               domain=np.concatenate([t.domain, t.item_domain[self.target_item]]),
                               ts=np.concatenate([t.ts, self.target_ts]), n_users=t.n_users, n_items=t.n_items,
                               n_domains=t.n_domains, domain_items=t.domain_items)


def load_eval_data(lake_root: str, versions: dict[str, int] | None = None, split: str = "test",
                   users: Collection[str] | None = None) -> EvalData:
    """Read gold.item_index and gold.user_sequences (at ``versions``) into :class:`EvalData`.

    ``split="valid"`` evaluates on validation targets instead (baselines then learn from train events only); only
    the rows that split needs are read (train and valid rows for ``"valid"``, test rows too for ``"test"``).
    ``users``: only these users' rows (e.g. the sample a model was trained on); None reads every user.
    """
    from deltalake import DeltaTable

    from crossrec.io.readers import arrow_table, table_path

    versions = dict(versions or {})
    tabs = {}
    for t in ("gold.item_index", "gold.user_sequences"):
        dt_ = DeltaTable(table_path(lake_root, t), version=versions.get(t))
        versions[t] = dt_.version()
        tabs[t] = dt_
    index = arrow_table(tabs["gold.item_index"]).to_pandas().sort_values(C.ITEM_IDX)
    needed = ["train", "valid"] + (["test"] if split == "test" else [])
    seq = arrow_table(tabs["gold.user_sequences"], filters=[(C.SPLIT, "in", needed)]).to_pandas()
    if users is not None:
        seq = seq[seq.user_id.isin(set(users))]
    domains = sorted(index.domain.unique())
    n_items = int(index.item_idx.max())
    item_domain = np.zeros(n_items + 1, dtype=np.int64)
    item_domain[index.item_idx.values] = index.domain_idx.values
    item_col = np.zeros(n_items + 1, dtype=np.int64)
    item_col[index.item_idx.values] = index.domain_item_idx.values
    domain_items = [index[index.domain_idx == d].sort_values(C.DOMAIN_ITEM_IDX).item_idx.values.astype(np.int64) for d in range(len(domains))]
    train_count = np.zeros(n_items + 1, dtype=np.int64)
    train_count[index.item_idx.values] = index.train_count.values

    users = {u: i for i, u in enumerate(sorted(seq.user_id.unique()))}
    tr = seq[seq.split == "train"]
    u_parts, i_parts, t_parts = [], [], []
    for uid, items, ts in zip(tr.user_id.values, tr.item_idx.values, tr.event_ts.values):
        u_parts.append(np.full(len(items), users[uid], dtype=np.int64))
        i_parts.append(np.asarray(items, dtype=np.int64))
        t_parts.append(np.asarray(ts, dtype=np.int64))
    if split == "test":  # the valid targets are known history at test time
        va = seq[seq.split == "valid"]
        u_parts.append(va.user_id.map(users).values.astype(np.int64))
        i_parts.append(va.target_item_idx.values.astype(np.int64))
        t_parts.append(va.target_ts.values.astype(np.int64))
    u = np.concatenate(u_parts) if u_parts else np.zeros(0, np.int64)
    i = np.concatenate(i_parts) if i_parts else np.zeros(0, np.int64)
    ts = np.concatenate(t_parts) if t_parts else np.zeros(0, np.int64)
    train = InteractionData(user=u, item=i, domain=item_domain[i], ts=ts, n_users=len(users), n_items=n_items,
                            n_domains=len(domains), domain_items=domain_items)

    test = seq[seq.split == split].reset_index(drop=True)
    histories = [np.asarray(h, dtype=np.int64) for h in test.item_idx.values]
    history_ts = [np.asarray(h, dtype=np.int64) for h in test.event_ts.values]
    tests = []
    for d_idx, d in enumerate(domains):
        rows = np.flatnonzero(test.target_domain.values == d)
        n_d = len(domain_items[d_idx])
        r_ind, c_ind = [], []
        for k, r in enumerate(rows):
            h = histories[r]
            h = h[item_domain[h] == d_idx]
            r_ind.extend([k] * len(h))
            c_ind.extend(item_col[h].tolist())
        exclude = sp.csr_matrix((np.ones(len(r_ind), dtype=np.float32), (r_ind, c_ind)), shape=(len(rows), n_d))
        exclude.data[:] = 1.0  # duplicates summed: keep a mask
        targets = test.target_item_idx.values[rows].astype(np.int64)
        tests.append(DomainTest(
            domain=d, domain_idx=d_idx, rows=rows,
            user_row=test.user_id.map(users).values[rows].astype(np.int64),
            target_col=item_col[targets], exclude=exclude,
            segments={
                "all": np.ones(len(rows), dtype=bool),
                "cold_start": test.cold_start.values[rows].astype(bool),
                "cold_item": train_count[targets] == 0,
            },
        ))
    log.info("evaluation data: %d users, %d %s rows over %s, %d training events; versions %s",
             len(users), len(test), split, domains, len(i), versions)
    return EvalData(train, domains, histories, history_ts, tests, versions, dict(enumerate(domains)),
                    target_user=test.user_id.map(users).values.astype(np.int64),
                    target_item=test.target_item_idx.values.astype(np.int64),
                    target_ts=test.target_ts.values.astype(np.int64))


ScoreFn = Callable[[DomainTest, np.ndarray], np.ndarray]  # (domain test, row positions within it) -> (b, n_d)


PerRow = dict[tuple[str, str], np.ndarray]  # (domain, segment) -> each row's NDCG@PAIRED_K, in the segment's row order
PAIRED_K = 10


def evaluate(name: str, score_fn: ScoreFn, data: EvalData, ks=(10, 20), chunk_users: int = 1024,
             domains: list[str] | None = None, per_row: PerRow | None = None) -> list[dict]:
    """Metric records ``{model, domain, segment, metric, k, value, se, n_users}`` of one model, every domain
    (or those in ``domains``) and segment; ``se`` is the value's standard error over the segment's users
    (:func:`~crossrec.evaluate.metrics.ranking_metric_errors`; None for coverage).

    ``per_row``: filled with each row's NDCG@10 per (domain, segment), for :func:`paired_records`."""
    records = []
    for dt_ in data.tests:
        if len(dt_.rows) == 0 or (domains is not None and dt_.domain not in domains):
            continue
        n_d = dt_.exclude.shape[1]
        for seg in SEGMENTS:
            mask = dt_.segments[seg]
            if not mask.any():
                continue
            sel = np.flatnonzero(mask)
            res = evaluate_full_ranking(
                lambda rows, sel=sel: score_fn(dt_, sel[rows]), np.arange(len(sel)), dt_.target_col[sel],
                dt_.exclude[sel], n_d, ks=ks, k_top=max(ks), chunk_users=chunk_users,
            )
            if per_row is not None:
                per_row[(dt_.domain, seg)] = per_row_metrics(res.ranks, res.n_candidates, [PAIRED_K])[f"ndcg@{PAIRED_K}"]
            for key, value in res.metrics.items():
                if key == "n_rows":
                    continue
                metric, _, k = key.partition("@")
                records.append({"model": name, "domain": dt_.domain, "segment": seg, "metric": metric,
                                "k": int(k) if k else 0, "value": float(value), "se": res.errors.get(key),
                                "n_users": int(len(sel))})
            records.append({"model": name, "domain": dt_.domain, "segment": seg, "metric": "coverage",
                            "k": max(ks), "value": float(res.coverage), "se": None, "n_users": int(len(sel))})
    return records


def paired_records(per_row: dict[str, PerRow], models: list[str]) -> list[dict]:
    """Each of ``models`` against the best of the other models, or against one named model, per (domain, segment):
    records ``{model, vs, domain, segment, metric: "ndcg_paired_diff", k: 10, value, se, n_users}``, ``value`` the
    mean per-user difference of NDCG@10 (``model`` minus ``vs``) and ``se`` its standard error.

    ``per_row``: model name -> :func:`evaluate`'s per-row values. ``models``: names, each compared with the best
    model -- the highest mean NDCG@10 among the models of ``per_row`` evaluated on the same rows, other than the
    named ones and the two sides of every pair --, or pairs ``"A:B"`` (A against B: an ablation, which is no
    baseline). A (domain, segment) without a rival gets no record.
    """
    pairs = [tuple(m.split(":", 1)) for m in models if ":" in m]
    plain = [m for m in models if ":" not in m]
    named = set(plain) | {side for pair in pairs for side in pair}
    others = [m for m in per_row if m not in named]
    out = []

    def record(name: str, vs: str, key, mine):
        value, se = paired_difference(mine, per_row[vs][key])
        out.append({"model": name, "vs": vs, "domain": key[0], "segment": key[1], "metric": "ndcg_paired_diff",
                    "k": PAIRED_K, "value": value, "se": se, "n_users": int(mine.size)})

    for name in plain:
        for key, mine in sorted(per_row.get(name, {}).items()):
            rivals = [(float(per_row[m][key].mean()), m) for m in others
                      if key in per_row[m] and per_row[m][key].shape == mine.shape]
            if rivals:
                record(name, max(rivals)[1], key, mine)
    for name, vs in pairs:
        for key, mine in sorted(per_row.get(name, {}).items()):
            if key in per_row.get(vs, {}) and per_row[vs][key].shape == mine.shape:
                record(name, vs, key, mine)
    return out


def format_paired(pairs: list[dict]) -> str:
    """One line per :func:`paired_records` record: mean per-user NDCG@10 difference, its standard error and their
    ratio."""
    return "\n".join(f"{p['model']} - {p['vs']} ({p['domain']}/{p['segment']}, {p['n_users']} users): NDCG@{p['k']} "
                     f"{p['value']:+.4f} +- {p['se']:.4f} ({p['value'] / p['se'] if p['se'] else float('nan'):+.1f} s.e.)"
                     for p in pairs)


def baseline_score_fn(model) -> ScoreFn:
    """Scores of a fitted :class:`~crossrec.model.baselines.Recommender` for test rows."""
    return lambda dt_, rows: model.full_sort_predict(dt_.user_row[rows], dt_.domain_idx)


def transformer_score_fn(model: "CrossDomainTransformer", data: EvalData, terms: "TermSet | None" = None,
                         batch_size: int = 512, input_domains: list[str] | None = None) -> ScoreFn:
    """Scores of a trained :class:`~crossrec.model.transformer.CrossDomainTransformer` for test rows, through the one
    inference path (:class:`crossrec.inference.Predictor`): with the artifact's score ``terms``
    (:class:`crossrec.rerank.base.TermSet`; None = the Transformer alone), rows with an empty history scored by
    training popularity, the row's history items of the domain at -inf.

    ``input_domains``: the model reads only these domains' events (an artifact trained with them, e.g. the
    single-domain baseline).
    """
    from crossrec.inference import Predictor

    predictor = Predictor(model, terms, data.item_counts())
    keep = None if input_domains is None else np.array([data.domains.index(d) for d in input_domains], dtype=np.int64)

    def score(dt_: DomainTest, rows: np.ndarray) -> np.ndarray:
        out = []
        test_rows = dt_.rows[rows]
        for s in range(0, len(test_rows), batch_size):
            chunk = test_rows[s : s + batch_size]
            batch = predictor.collate([data.histories[r] for r in chunk], [data.history_ts[r] for r in chunk], keep)
            out.append(predictor.scores(batch, dt_.domain_idx).float().cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, dt_.exclude.shape[1]), np.float32)

    return score

"""What any model can reach on generated data: NDCG@10 of a scorer that knows each user's true taste.

``crossrec bench ceiling RAW --out DIR [--quality DIR/quality.json]``, on a raw folder ``crossrec generate`` wrote,
replays the generator (its ``manifest.json`` spec, same seeds) and scores the test rows of the evaluation protocol
(:mod:`crossrec.data.features`: per user and domain, the newest first occurrence is the target, the history is every
first occurrence before it, and the domain's history items are excluded) with three rankers:

* ``oracle``: each item's probability under the user's own topic distribution (:attr:`_Events.taste`, the mixture the
  generator drew the events from, noise share included) and, where the spec plants a creator-level signal
  (``entity_signal="shared"`` or item vectors), their favourite creator per topic. No model that reads only the
  events ranks better in expectation: it is the ceiling of every model and baseline on this data;
* ``topic_oracle`` (creator-level signals only): the topics alone, the favourite creators not known: the ceiling of a
  model that cannot tell one creator's items from another's (no entities, no vectors, text that does not name them);
* ``topic_count``: the same with the taste estimated from the history's topics (counts plus half a prior event per
  topic, at topic popularity): what a model that knew every item's topic could do;
* ``pop``: popularity over the first occurrences that are not test targets (the protocol's popularity baseline).

With ``--quality``, the quality bench's report on the same raw folder, the table sets the ceiling beside the best
baseline there and the 1.2x target: a target above the ceiling cannot be met by any model.

Rows are every (user, domain) the generator gave an event, so they are the ``all`` segment of ``crossrec bench
quality`` on the same folder; ``cold_start`` rows are every user active in two or more domains (the candidates of the
cold-start sample) seen with that domain's history withheld. Specs with new items are refused. Writes ``DIR/ceiling.json`` (``{"records": [{"model", "domain", "segment", "metric", "k", "value", "se",
"n_users"}]}``) and ``DIR/ceiling.md``.
"""
from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

K = 10
RANKERS = ("oracle", "topic_count", "pop")
SEGMENTS = ("all", "cold_start")


class CeilingError(Exception):
    """The raw folder is not one the ceiling can replay (no manifest, or a signal it does not model)."""


@dataclass(frozen=True)
class CeilingSpec:
    raw_dir: str
    out_dir: str
    quality: str | None = None  # quality.json of `crossrec bench quality` on the same raw folder


def topic_item_probabilities(catalog, topics: int) -> np.ndarray:
    """(topics, N) the probability of each item of a domain catalog given the event's topic (the generator's
    Zipf-like draw within the topic: :meth:`DomainCatalog.sample`)."""
    prev = np.concatenate([[0.0], catalog.cdf[:-1]])
    topic = np.minimum(np.floor(prev + 1e-12).astype(np.int64), topics - 1)  # topic t spans [t, t + 1) of the cdf
    p = np.zeros((topics, len(catalog.ids)))
    np.add.at(p, (topic, catalog.cdf_items), catalog.cdf - prev)
    return p / p.sum(axis=1, keepdims=True)


def creator_item_probabilities(catalog, topics: int) -> np.ndarray:
    """(topics, n_creators, N) the probability of each item of a domain catalog when an event picks the topic's
    creator slot (:meth:`DomainCatalog.sample_creator`: uniform over that creator's items of the topic, the topic's
    Zipf-like draw where the creator has none)."""
    zipf = topic_item_probabilities(catalog, topics)
    out = np.repeat(zipf[:, None, :], catalog.n_creators, axis=1)
    for t in range(topics):
        for c in range(catalog.n_creators):
            mine = (catalog.topic_of == t) & (catalog.creator == c)
            if mine.any():
                out[t, c] = mine / mine.sum()
    return out


def _ndcg(scores: np.ndarray, target: np.ndarray, seen_rows: np.ndarray, seen_cols: np.ndarray) -> np.ndarray:
    """(R,) NDCG@K of each row's target under ``scores`` (R, N), the ``seen`` cells excluded: the evaluation
    protocol's own ranks (:func:`crossrec.evaluate.metrics.rank_of_target`, its tie rule included)."""
    import scipy.sparse as sp

    from crossrec.evaluate.metrics import candidate_counts, per_row_metrics, rank_of_target

    exclude = sp.csr_matrix((np.ones(len(seen_rows)), (seen_rows, seen_cols)), shape=np.shape(scores))
    ranks = rank_of_target(np.asarray(scores, dtype=np.float64), target, exclude)
    return per_row_metrics(ranks, candidate_counts(np.shape(scores)[1], target, exclude), [K])[f"ndcg@{K}"]


BLOCK = 4_096  # test rows scored at once: (BLOCK, items) floats per ranker


def ceiling_rows(spec, chunk_users: int) -> dict[str, dict[str, dict[str, np.ndarray]]]:
    """Per domain name, segment (:data:`SEGMENTS`) and ranker, the NDCG@K of every test row of the data ``spec``
    generates (the generator's chunks of ``chunk_users`` users, as ``crossrec generate`` drew them)."""
    from crossrec.data import synthetic as S

    pf = S._platform(spec)
    probs = [topic_item_probabilities(c, spec.topics) for c in pf.catalogs]
    creators = spec.entity_signal == "shared" or spec.vector_signal != "none"  # users keep to a favourite creator
    by_creator = [creator_item_probabilities(c, spec.topics) for c in pf.catalogs] if creators else None
    rankers = ("oracle", "topic_oracle", *RANKERS[1:]) if creators else RANKERS
    topic_of = [p.argmax(axis=0) for p in probs]
    prior = 0.5 * spec.topics * pf.topic_pop  # half an event per topic, at its popularity
    chunks = []
    pop = [np.zeros(len(c.ids)) for c in pf.catalogs]  # first occurrences that are not test targets
    for c in range(math.ceil(spec.users / chunk_users)):
        n = min(spec.users, (c + 1) * chunk_users) - c * chunk_users
        ev = S._simulate_chunk(spec, pf.topic_pop, pf.domain_pop, pf.catalogs, n,
                               np.random.default_rng(np.random.SeedSequence([spec.seed, 1, c])))
        # first occurrences of each (user, domain, item), in time order within each user (the events' order)
        key = (ev.user * spec.domains + ev.domain) * max(len(x.ids) for x in pf.catalogs) + ev.item
        first = np.sort(np.unique(key, return_index=True)[1])
        user, dom, item = ev.user[first], ev.domain[first], ev.item[first]
        _, from_end = np.unique((user * spec.domains + dom)[::-1], return_index=True)
        target = np.zeros(len(first), dtype=bool)  # the newest first occurrence of each (user, domain)
        target[len(first) - 1 - from_end] = True
        topics = np.zeros(len(first), dtype=np.int64)
        for d in range(spec.domains):
            topics[dom == d] = topic_of[d][item[dom == d]]
            np.add.at(pop[d], item[(dom == d) & ~target], 1.0)
        onehot = np.eye(spec.topics)[topics]
        start = np.searchsorted(user, user, side="left")  # each user's first event (user is sorted)
        before = _counts_before(onehot, start)  # topics of the user's events so far
        own = np.zeros_like(before)  # ... of those in the event's domain
        for d in range(spec.domains):
            m = dom == d
            own[m] = _counts_before(onehot * m[:, None], start)[m]
        multi = ev.active.sum(axis=1) >= 2  # users the cold-start sample draws from
        chunks.append((ev.taste, ev.favourite, user, dom, item, target, before, own, multi))
    out: dict[str, dict[str, dict[str, np.ndarray]]] = {}
    for d, lay in enumerate(pf.layouts):
        got: dict[str, dict[str, list[np.ndarray]]] = {g: {r: [] for r in rankers} for g in SEGMENTS}
        for taste, favourite, user, dom, item, target, before, own, multi in chunks:
            t = np.flatnonzero(target & (dom == d))  # one per user, in user order
            hist = np.flatnonzero((dom == d) & ~target)  # the domain's history items of those users: excluded
            row_of = np.searchsorted(user[t], user[hist])
            for b in range(0, len(t), BLOCK):
                tb = t[b : b + BLOCK]
                inb = (row_of >= b) & (row_of < b + len(tb))
                seen = (row_of[inb] - b, item[hist[inb]])
                cold = multi[user[tb]]  # as the sample sees them: the domain's history withheld, nothing excluded
                none = (np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64))
                for segment, rows, counts, excluded in (("all", slice(None), before[tb], seen),
                                                        ("cold_start", cold, (before - own)[tb][cold], none)):
                    est = (counts + prior) / (counts + prior).sum(axis=1, keepdims=True)
                    n = len(est)
                    topical = taste[user[tb][rows]] @ probs[d]
                    scored = {"oracle": topical, "topic_count": est @ probs[d], "pop": np.tile(pop[d], (n, 1))}
                    if creators:
                        scored["topic_oracle"], scored["oracle"] = topical, topical + _creator_shift(
                            taste[user[tb][rows]], favourite[user[tb][rows]], pf.topic_pop, probs[d], by_creator[d])
                    for name, scores in scored.items():
                        got[segment][name].append(_ndcg(scores, item[tb][rows], *excluded))
        out[lay.name] = {g: {r: np.concatenate(v) if v else np.zeros(0) for r, v in by.items()} for g, by in got.items()}
    return out


def _creator_shift(taste: np.ndarray, favourite: np.ndarray, topic_pop: np.ndarray, zipf: np.ndarray,
                   by_creator: np.ndarray) -> np.ndarray:
    """(R, N) what the favourite creators add to the topical item probabilities ``taste @ zipf``: a topical event
    (the taste less its noise share) picks the topic's favourite creator's items in :data:`CREATOR_AFFINITY` of cases."""
    from crossrec.data.synthetic import _TOPIC_NOISE, CREATOR_AFFINITY

    topical = taste - _TOPIC_NOISE * topic_pop  # (R, T) the mixture's share of each topic
    shift = np.zeros((len(taste), zipf.shape[1]))
    for t in range(zipf.shape[0]):
        shift += CREATOR_AFFINITY * topical[:, t, None] * (by_creator[t, favourite[:, t] % by_creator.shape[1]] - zipf[t])
    return shift


def _counts_before(onehot: np.ndarray, start: np.ndarray) -> np.ndarray:
    """Per event, the sum of ``onehot`` over the same user's earlier events (``start``: each user's first row)."""
    csum = np.cumsum(onehot, axis=0)
    return csum - onehot - np.where(start[:, None] > 0, csum[np.maximum(start - 1, 0)], 0.0)


def run_ceiling(spec: CeilingSpec) -> dict:
    """Replay the generator of ``spec.raw_dir``, score its test rows with :data:`RANKERS`, write the reports."""
    from crossrec.data.synthetic import SyntheticSpec

    manifest_path = Path(spec.raw_dir) / "manifest.json"
    if not manifest_path.exists():
        raise CeilingError(f"{manifest_path} not found: the ceiling replays data `crossrec generate` wrote")
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    gen = SyntheticSpec(**manifest["spec"])
    if gen.new_items:
        raise CeilingError(f"{manifest_path}: the ceiling does not model new items (new_items={gen.new_items})")
    log.info("ceiling: replaying %s", gen)
    per_domain = ceiling_rows(gen, int(manifest.get("chunk_users", 100_000)))
    rankers = list(next(iter(next(iter(per_domain.values())).values())))
    records = [{"model": r, "domain": d, "segment": g, "metric": "ndcg", "k": K, "value": float(v.mean()),
                "se": _se(v), "n_users": int(len(v))}
               for d, segs in per_domain.items() for g, by in segs.items() for r, v in by.items() if len(v)]
    best = _best_baselines(spec.quality) if spec.quality else {}
    lines = [f"# crossrec bench ceiling ({gen.users:,} users, {gen.domains} domains, text {gen.text_signal}, seed {gen.seed})",
             "", "Test NDCG@10 ± s.e. of the protocol's rows; cold_start: users active in two or more domains, each "
             "with the domain's history withheld (the cold-start sample draws from them):", "",
             "| domain / segment | rows | " + " | ".join(rankers) + " |" + (" best baseline | 1.2x it | oracle / best |" if best else ""),
             "|---|---:|" + "---:|" * len(rankers) + ("---|---:|---:|" if best else "")]
    for d, segs in per_domain.items():
        for g, by in segs.items():
            if not len(by["oracle"]):
                continue
            cells = " | ".join(f"{by[r].mean():.4f} ± {_se(by[r]) or 0:.4f}" for r in rankers)
            line = f"| {d} / {g} | {len(by['oracle']):,} | {cells} |"
            if (d, g) in best:
                name, value = best[(d, g)]
                line += f" {name} {value:.4f} | {1.2 * value:.4f} | {by['oracle'].mean() / value:.2f}x |"
            lines.append(line)
    best = {f"{d}/{g}": v for (d, g), v in best.items()}
    out = Path(spec.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    result = {"records": records, "spec": manifest["spec"], "best_baselines": best}
    (out / "ceiling.json").write_text(json.dumps(result, indent=2), encoding="utf-8")
    (out / "ceiling.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))
    return result


def _se(v: np.ndarray) -> float | None:
    """Standard error of the mean of ``v`` (None for fewer than two values)."""
    return float(v.std(ddof=1) / math.sqrt(len(v))) if len(v) > 1 else None


def _best_baselines(quality: str) -> dict[tuple[str, str], tuple[str, float]]:
    """Per (domain, segment), the best baseline's NDCG@10 in a quality bench's report (crossrec's rows left out)."""
    recs = json.loads(Path(quality).read_text(encoding="utf-8"))["records"]
    best: dict[tuple[str, str], tuple[str, float]] = {}
    for r in recs:
        key = (r.get("domain"), r.get("segment"))
        if r.get("metric") == "ndcg" and r.get("k") == K and key[1] in SEGMENTS and not str(r["model"]).startswith("crossrec"):
            if key not in best or r["value"] > best[key][1]:
                best[key] = (r["model"], r["value"])
    return best

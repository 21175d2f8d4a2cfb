"""A recommendation's reason as a person reads it, from the reason columns of ``gold.recommendations``.

``reason_kind`` says how to render (:data:`crossrec.score.topk.REASON_KINDS`): ``history_item`` names the history item
that most supports the pick, ``shared_entity`` also the attribute entity the two share (an author, a brand),
``popularity`` a user without usable history.
"""
from __future__ import annotations

from typing import Mapping


def reason_text(domain: str, reason: str, reason_kind: str, reason_entity: str | None,
                titles: Mapping[tuple[str, str], str]) -> str:
    """One line such as ``same person (ada berg) as "The Last Alpine" in books``; ``titles``: (domain, item_id) ->
    title (an id without a title is shown as it is)."""
    if reason_kind == "popularity" or ":" not in reason:
        return f"popular in {domain}"
    r_domain, r_item = reason.split(":", 1)
    item = f'"{titles.get((r_domain, r_item)) or r_item}" in {r_domain}'
    if reason_kind == "shared_entity" and reason_entity:
        etype, _, value = reason_entity.partition(":")
        return f"same {etype.replace('_', ' ')} ({value}) as {item}"
    return f"because of {item}"


__all__ = ["reason_text", "reason_kinds_report"]


def reason_kinds_report(lake_root: str, examples: int = 1) -> str:
    """The published run's reasons: the share of each kind per domain and ``examples`` rendered rows of each kind."""
    from crossrec.io.readers import item_titles, read_recommendations

    recs = read_recommendations(lake_root)
    share = recs.groupby("domain").reason_kind.value_counts(normalize=True).unstack(fill_value=0.0)
    picked = recs.groupby("reason_kind", sort=True).head(examples)
    keys = list(zip(picked.domain, picked.item_id)) + [tuple(r.split(":", 1)) for r in picked.reason if ":" in r]
    titles = item_titles(lake_root, keys)
    lines = ["share of recommendations by reason kind:", share.round(3).to_string(), "", "one of each kind:"]
    for r in picked.itertuples():
        lines.append(f"  [{r.reason_kind}] {r.domain}: {titles.get((r.domain, r.item_id), r.item_id)[:50]} -- "
                     f"{reason_text(r.domain, r.reason, r.reason_kind, r.reason_entity, titles)}")
    return "\n".join(lines)

"""The promotion gate: a newly registered model takes the registry's ``champion`` alias (what evaluate and score use)
only when it is not clearly worse than the current champion on the same data.

Both models score the lake's test split through the one inference path (crossrec.evaluate.protocol): the test
targets are held out from both (a refit learns the validation targets, so the validation split would favour each
model's own). Per domain, the mean per-user NDCG@10 difference (new minus champion, all users) and its standard
error; the new model is kept out when, in any domain, that difference is below ``-tolerance_se`` standard errors.
A champion that cannot score the current catalog (trained before items were added) gives way.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

from crossrec.io.registry import ModelVersion, Registry

log = logging.getLogger(__name__)


@dataclass
class Decision:
    """The gate's verdict: ``promoted`` (the alias moved), why, and the per-domain paired records it read."""

    promoted: bool
    reason: str
    champion_before: int | None
    comparisons: list[dict] = field(default_factory=list)


def compare(lake_uri: str, candidate: str, champion: str, versions: dict[str, int] | None = None) -> list[dict] | None:
    """Per-domain paired NDCG@10 records (``crossrec.evaluate.protocol.paired_records``, segment ``all``) of the
    ``candidate`` artifact folder against the ``champion`` one on the test split; None when the champion was trained
    on another catalog than the lake's (it cannot score it)."""
    from crossrec.evaluate.protocol import evaluate, load_eval_data, paired_records, transformer_score_fn
    from crossrec.model.artifact import load_artifact

    data = load_eval_data(lake_uri, versions, split="test")
    per_row: dict[str, dict] = {}
    for name, folder in (("candidate", candidate), ("champion", champion)):
        art = load_artifact(folder)
        if art.model.config.n_items != data.train.n_items:
            if name == "champion":
                return None
            raise ValueError(f"{folder} was trained on {art.model.config.n_items} items, the lake's gold.item_index "
                             f"has {data.train.n_items}")
        fn = transformer_score_fn(art.model, data, art.terms, input_domains=art.metrics.get("input_domains"))
        evaluate(name, fn, data, ks=(10,), per_row=per_row.setdefault(name, {}))
    return [p for p in paired_records(per_row, ["candidate"]) if p["segment"] == "all"]


def promote(registry: Registry, candidate: ModelVersion, lake_uri: str, tolerance_se: float = 2.0,
            force: bool = False, versions: dict[str, int] | None = None) -> Decision:
    """Run the gate for ``candidate`` (a registered version) and move ``champion`` when it passes (or ``force``)."""
    champ = registry.champion()
    before = None if champ is None else champ.number
    if champ is None:
        decision = Decision(True, "no champion yet", before)
    elif champ.number == candidate.number:
        decision = Decision(True, "it is the champion already", before)
    elif force:
        decision = Decision(True, "forced (--force-promote)", before)
    else:
        pairs = compare(lake_uri, candidate.folder, champ.folder, versions)
        if pairs is None:
            decision = Decision(True, f"champion version {champ.number} was trained on another catalog", before)
        else:
            worse = [p for p in pairs if p["value"] < -tolerance_se * p["se"]]
            summary = "; ".join(f"{p['domain']} {p['value']:+.4f} +- {p['se']:.4f}" for p in pairs)
            if worse:
                decision = Decision(False, f"worse than champion version {champ.number} by more than {tolerance_se:g} "
                                           f"s.e. in {', '.join(p['domain'] for p in worse)} (NDCG@10 new - champion: "
                                           f"{summary})", before, pairs)
            else:
                decision = Decision(True, f"not worse than champion version {champ.number} (NDCG@10 new - champion: "
                                          f"{summary}; tolerance {tolerance_se:g} s.e.)", before, pairs)
    if decision.promoted:
        registry.set_champion(candidate.number)
    log.info("promotion gate: version %d %s: %s", candidate.number,
             "takes @champion" if decision.promoted else "stays out", decision.reason)
    return decision


__all__ = ["Decision", "compare", "promote"]

"""A crossrec artifact folder as an MLflow pyfunc model: ``mlflow.pyfunc.load_model("models:/crossrec@champion")``.

The folder's ``MLmodel`` file (:func:`write_mlmodel`) names this module as the loader; the model's files stay as
:mod:`crossrec.model.artifact` wrote them. ``predict`` runs the one inference path (crossrec.score.topk.Scorer):

    input:  a pandas DataFrame with ``history``: a list of ``"<domain>:<item_id>"`` per row, oldest first (items the
            model does not know are skipped), and optionally ``timestamps``: the events' times (epoch seconds)
    params: ``k`` (default 10)
    output: one row per (input row, domain, rank): ``row, domain, rank, item_id, score, reason, reason_kind,
            reason_entity`` -- ``reason`` is the history item behind the pick, ``popularity`` for an empty history;
            ``reason_kind`` and ``reason_entity`` as in gold.recommendations
"""
from __future__ import annotations

from pathlib import Path

LOADER_MODULE = "crossrec.model.pyfunc"


def write_mlmodel(folder: str | Path) -> None:
    """Make the artifact ``folder`` a pyfunc model in place (its ``MLmodel`` file; nothing is copied)."""
    from mlflow.models import Model, ModelSignature
    from mlflow.pyfunc import add_to_model
    from mlflow.types import ParamSchema, ParamSpec

    m = Model(signature=ModelSignature(inputs=None, params=ParamSchema([ParamSpec("k", "long", 10)])))
    add_to_model(m, loader_module=LOADER_MODULE, data=".")
    m.save(str(Path(folder) / "MLmodel"))


class CrossrecPyfunc:
    """What ``mlflow.pyfunc.load_model`` returns for a crossrec artifact (see the module docstring)."""

    def __init__(self, folder: str):
        self.folder = folder
        self._scorers: dict[int, object] = {}

    def _scorer(self, k: int):
        from crossrec.score.topk import Scorer

        if k not in self._scorers:
            self._scorers[k] = Scorer(self.folder, k)
        return self._scorers[k]

    def predict(self, model_input, params: dict | None = None):
        import numpy as np
        import pandas as pd

        k = int((params or {}).get("k", 10))
        scorer = self._scorer(k)
        idx = {key: i for i, key in enumerate(scorer.item_key) if i > 0}  # "<domain>:<item_id>" -> global id
        histories, stamps = [], []
        has_ts = "timestamps" in model_input.columns
        for r, hist in enumerate(model_input["history"]):
            ts = list(model_input["timestamps"].iloc[r]) if has_ts else list(range(len(hist)))
            keep = [(idx[h], int(t)) for h, t in zip(hist, ts) if h in idx]
            histories.append(np.array([h for h, _ in keep], dtype=np.int64))
            stamps.append(np.array([t for _, t in keep], dtype=np.int64))
        from crossrec.score.topk import REASON_KINDS

        rows = []
        for d, picks in enumerate(scorer.score(histories, stamps)):
            kinds = picks.reason_kind
            for r in range(len(histories)):
                for rank, (item, score, reason, kind, entity) in enumerate(zip(
                        picks.item_idx[r], picks.score[r], picks.reason_idx[r], kinds[r], picks.reason_entity[r]), 1):
                    if item >= 0:
                        rows.append((r, scorer.domains[d], rank, scorer.item_id[item], float(score), scorer.item_key[reason],
                                     REASON_KINDS[kind], scorer.entity_key[entity]))
        return pd.DataFrame(rows, columns=["row", "domain", "rank", "item_id", "score", "reason", "reason_kind",
                                           "reason_entity"])


def _load_pyfunc(data_path: str) -> CrossrecPyfunc:
    """MLflow's loader hook: ``data_path`` is the artifact folder."""
    return CrossrecPyfunc(data_path)


__all__ = ["write_mlmodel", "CrossrecPyfunc", "LOADER_MODULE"]

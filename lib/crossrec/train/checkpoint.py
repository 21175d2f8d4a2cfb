"""The training checkpoint: a folder written by rank 0 after every epoch (no pickle anywhere)::

    model.safetensors + config.json   crossrec.model.artifact.save_model (DDP's ``module.`` prefix stripped)
    optimizer.safetensors             every tensor of the AdamW state, keys ``state.<param>.<name>``
    optimizer.json                    the rest of the optimizer state (param groups, non-tensor values)
    train_state.json                  epoch, global_step, best metric and epoch, bad_epochs, history, resumes

Resume. At start every worker calls ``ray.train.get_checkpoint()``. Ray Train hands it the latest reported
checkpoint after a worker failure (``FailureConfig(max_failures)``) or when a run with the same
``RunConfig(name, storage_path)`` is started again; the worker then loads weights, optimizer state, epoch counter and
early-stopping state and continues at the next epoch. The run name is ``train-<model_version>``: re-running the same
configuration on the same data versions on the same UTC day continues (or, when it had finished, just re-exports)
that run instead of training again. The name does not cover the model code: a checkpoint whose weights do not fit
the model built now (the code changed in between) is refused with what differs (:func:`read_checkpoint`); remove
that run folder or pass ``--storage-path`` to start afresh.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Mapping

STATE_FILE = "train_state.json"
OPT_TENSORS = "optimizer.safetensors"
OPT_META = "optimizer.json"


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



def final_state(result) -> dict:
    """The train state (``train_state.json``: history, resumes, ...) of a Ray Train result's latest checkpoint."""
    with result.checkpoint.as_directory() as latest_dir:
        return json.loads((Path(latest_dir) / STATE_FILE).read_text(encoding="utf-8"))


__all__ = ["write_checkpoint", "read_checkpoint", "final_state", "flatten_optimizer_state", "unflatten_optimizer_state",
           "STATE_FILE"]

"""Fault injection for tests: kill a Ray Train worker at a chosen step, once, to exercise resume.

The hook wraps the batch iterator of an epoch (:func:`fail_once`), so the training step loop knows nothing of it.
"""
from __future__ import annotations

import logging
import os
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Mapping

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FailOnce:
    """Test hook: rank ``rank`` kills its own process (SIGKILL) before step ``step`` of epoch ``epoch``,
    once: the first time it creates ``marker``; later attempts see the file and go on. Before the kill it
    waits until Ray Train has committed the checkpoints reported so far, so the resume point is known."""

    epoch: int
    step: int
    rank: int
    marker: str



def fail_once(batches: Iterable, hook: Mapping | None, *, rank: int, epoch: int) -> Iterator:
    """``batches`` unchanged, except that with ``hook`` (a :class:`FailOnce` as a dict) this rank kills its own process
    before batch ``hook["step"]`` of epoch ``hook["epoch"]``, the first time only (its marker file records it)."""
    for step, batch in enumerate(batches):
        if (hook and rank == hook["rank"] and epoch == hook["epoch"] and step == hook["step"]
                and not os.path.exists(hook["marker"])):
            import ray.train

            # wait until Ray Train has committed the reports so far (the last epoch's checkpoint): a crash right
            # after a report may otherwise lose that report, and the run resumes one epoch earlier
            ray.train.get_all_reported_checkpoints(timeout_s=120)
            Path(hook["marker"]).write_text(f"killed rank {rank} at epoch {epoch} step {step}\n", encoding="utf-8")
            log.warning("test hook: killing rank %d (pid %d) at epoch %d step %d", rank, os.getpid(), epoch, step)
            os.kill(os.getpid(), signal.SIGKILL)
        yield batch


__all__ = ["FailOnce", "fail_once"]

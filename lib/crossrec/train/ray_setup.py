"""How crossrec starts its own local Ray instance, and the setup every worker process of that instance runs first.

``crossrec train`` without ``--ray-address`` starts a local Ray instance without the dashboard (a 2-core machine has
no core to spare for it). Ray's state API is served by the dashboard, so on that instance it never answers. Ray Train
starts a placement-group cleaner actor with every run, which asks the state API every second whether the training
controller still lives and logs a warning each time it cannot ("Failed to query Ray Train Controller actor state ...
Continuing to monitor"): most of a training log's lines. On this instance the warning says nothing new, so
:func:`worker_setup` drops it in every worker process; the cleaner's other messages and every other warning stay.
Training itself releases its placement group when it ends, as before.

This module is imported by every worker process of the instance (Ray's ``worker_process_setup_hook``): standard
library only.
"""
from __future__ import annotations

import logging

# the logger and message of Ray Train's PlacementGroupCleaner (ray/train/v2/_internal/execution/controller)
CLEANER_LOGGER = "ray.train.v2._internal.execution.controller.placement_group_cleaner"
STATE_API_WARNING = "Failed to query Ray Train Controller actor state"


class DropMessage(logging.Filter):
    """A logging filter that drops the records whose message starts with ``prefix``."""

    def __init__(self, prefix: str):
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.prefix)


def worker_setup() -> None:
    """Ray's ``worker_process_setup_hook`` for the local instance: drop the placement-group cleaner's state-API
    warning (see the module docstring). Idempotent."""
    logger = logging.getLogger(CLEANER_LOGGER)
    if not any(isinstance(f, DropMessage) and f.prefix == STATE_API_WARNING for f in logger.filters):
        logger.addFilter(DropMessage(STATE_API_WARNING))


def local_init_kwargs(**kwargs) -> dict:
    """``ray.init`` keyword arguments for a local instance without the dashboard, with :func:`worker_setup` run in
    every worker process; ``kwargs`` are added (e.g. ``num_cpus``)."""
    return {"address": "local", "include_dashboard": False, "log_to_driver": True,
            "runtime_env": {"worker_process_setup_hook": f"{__name__}.worker_setup"}, **kwargs}


__all__ = ["worker_setup", "local_init_kwargs", "DropMessage", "CLEANER_LOGGER", "STATE_API_WARNING"]

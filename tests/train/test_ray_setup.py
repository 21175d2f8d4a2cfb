"""The local Ray instance crossrec starts: its worker processes drop Ray Train's state-API warning, nothing else."""
from __future__ import annotations

import importlib
import logging

from crossrec.train.ray_setup import CLEANER_LOGGER, STATE_API_WARNING, DropMessage, local_init_kwargs, worker_setup


def test_the_setup_drops_the_cleaners_state_api_warning_and_keeps_its_other_messages(caplog):
    logger = logging.getLogger(CLEANER_LOGGER)
    before = list(logger.filters)
    try:
        worker_setup()
        worker_setup()
        assert sum(isinstance(f, DropMessage) for f in logger.filters) == 1, "idempotent"
        with caplog.at_level(logging.INFO, logger=CLEANER_LOGGER):
            logger.warning(STATE_API_WARNING + ". State API may be temporarily unavailable. Continuing to monitor.")
            logger.warning("Failed to query placement group table: boom")
            logging.getLogger("ray.train").warning(STATE_API_WARNING + " (another logger)")
        assert [r.getMessage() for r in caplog.records] == [
            "Failed to query placement group table: boom", STATE_API_WARNING + " (another logger)"]
    finally:
        logger.filters[:] = before


def test_local_init_names_an_importable_setup_hook():
    kw = local_init_kwargs(num_cpus=2)
    assert kw["address"] == "local" and kw["include_dashboard"] is False and kw["num_cpus"] == 2
    module, _, name = kw["runtime_env"]["worker_process_setup_hook"].rpartition(".")
    assert getattr(importlib.import_module(module), name) is worker_setup


def test_every_worker_process_of_the_local_instance_runs_the_setup(ray_local):
    ray = ray_local

    @ray.remote(num_cpus=0)
    def filters() -> list[str]:
        return [type(f).__name__ for f in logging.getLogger(CLEANER_LOGGER).filters]

    assert ray.get(filters.remote()) == ["DropMessage"]

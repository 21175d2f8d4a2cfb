"""Distributed training of the cross-domain Transformer on Ray Train (gold tables -> model artifact).

One concern per module, in the order a run meets them:

* :mod:`~crossrec.train.config`: :class:`TrainConfig` (its model fields default to ``ModelConfig``'s), the model
  version, the learning-rate schedule;
* :mod:`~crossrec.train.data`: reading the gold tables at pinned Delta versions, sampling users, the catalog arrays;
* :mod:`~crossrec.train.windows`: pure shaping of histories into training windows and padded batches;
* :mod:`~crossrec.train.driver`: the Ray Train driver (:func:`train`), including the refit run;
* :mod:`~crossrec.train.worker`: the per-worker loop (train, validate, report once per epoch);
* :mod:`~crossrec.train.checkpoint`: the checkpoint folder and resuming from it;
* :mod:`~crossrec.train.artifact`: the model artifact written from the best checkpoint;
* :mod:`~crossrec.train.stage`: the ``crossrec train`` stage (flags, run record, registry, summary);
* :mod:`~crossrec.train.faults`: the test-only hook that kills a worker mid-epoch.
"""

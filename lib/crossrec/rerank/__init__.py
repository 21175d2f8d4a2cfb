"""Re-ranking terms added to the Transformer's scores after training: one module per term (a
:class:`crossrec.rerank.base.ScoreTerm` subclass), all chosen by one validation search (:mod:`crossrec.rerank.fit`).

Importing the package imports every module in it, so each term class registers itself: a new term is one new file
here, with no edit to the model, the fit, the artifact or the jobs.
"""
import importlib
import pkgutil

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

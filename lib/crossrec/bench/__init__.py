"""Benchmarks (``crossrec bench <name>``): they measure and write reports; they assert nothing."""

import logging

log = logging.getLogger(__name__)


def pyplot(path):
    """matplotlib's pyplot on the file-only Agg backend, or None (with a warning naming ``path``, the plot not drawn)
    when matplotlib is not installed: it is an extra, the JSON and markdown are the results."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("matplotlib not installed: no %s", path.name)
        return None
    return plt

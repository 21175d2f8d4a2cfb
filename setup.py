"""Packaging shim: the metadata and dependencies are in pyproject.toml.

The library lives in ``lib/crossrec``; the stage entry points in ``jobs/`` and the table contracts in ``schemas/``
ship inside the same distribution (as ``crossrec_jobs`` and ``crossrec_schemas``) so that the ``crossrec`` command
and ``spark-submit`` on a cluster find them wherever the package is installed. pyproject.toml cannot list
``lib``'s packages and the two mapped folders in one rule, so the mapping stays here.
"""
from setuptools import find_packages, setup

setup(
    package_dir={"": "lib", "crossrec_jobs": "jobs", "crossrec_schemas": "schemas"},
    packages=find_packages("lib") + ["crossrec_jobs", "crossrec_schemas"],
)

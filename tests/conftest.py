"""Shared pytest fixtures: one test archive, one Dask cluster, one Spark session per run.

Fixtures live in topic modules so each layer owns its own; they are session-scoped so the
suite stays within minutes on two cores. ``make test`` runs two pytest-xdist workers, each
taking whole files: each worker is a session of its own, with its own session fixtures.

Markers (registered in pyproject.toml): ``slow`` (a test of many seconds: a training, whole
runs, clusters of processes), ``spark`` (needs Java: a Spark session or cluster) and ``s3``
(the session's S3 server). A test is marked ``spark`` or ``s3`` here when it asks for a
fixture that starts Spark or the S3 server, or is parametrised with ``backend``/``executor``
"spark"; ``slow`` when it asks for a fixture that trains or maps the whole samples
(:data:`SLOW_FIXTURES`), other ``slow`` tests carry their mark in their modules. Where Java
is missing, ``spark`` tests skip and say so.
"""

from __future__ import annotations

from collections import Counter

import pytest

pytest_plugins = ["tests.fixtures_data", "tests.fixtures_engines", "tests.fixtures_storage"]

ENGINE_PARAMS = ("backend", "executor")
"""Parameters naming the engine a test runs on."""

SPARK_FIXTURES = {"spark_session", "spark_output", "test_graph_backends.py::runs"}
"""Fixtures that start Spark (a module's own as ``file::name``)."""


SLOW_FIXTURES = {"trained_gallery", "mapped_samples"}
"""Session fixtures of many seconds on 2 cores: a training, and a run over the whole samples."""


def _on_spark(item: pytest.Item) -> bool:
    names = set(getattr(item, "fixturenames", ()))
    if names & SPARK_FIXTURES or {f"{item.path.name}::{n}" for n in names} & SPARK_FIXTURES:
        return True
    params = getattr(getattr(item, "callspec", None), "params", {})
    return any(params.get(name) == "spark" for name in ENGINE_PARAMS)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    from tests.fixtures_engines import java_missing  # here: the plugin is loaded by now

    no_java = java_missing()
    for item in items:
        if _on_spark(item):
            item.add_marker(pytest.mark.spark)
        if "s3" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.s3)
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
        if no_java and item.get_closest_marker("spark"):
            item.add_marker(pytest.mark.skip(reason=no_java))
    # Longest files first: those of whole runs in subprocesses (every test slow), then by
    # their number of slow, Spark and S3 tests. `make test`'s two workers take whole files
    # in this order (--no-loadscope-reorder), so no long file starts last and runs alone.
    costly = Counter(item.path for item in items
                     if any(item.get_closest_marker(m) for m in ("slow", "spark", "s3")))
    items.sort(key=lambda item: (not _slow_module(item), -costly[item.path]))


def _slow_module(item: pytest.Item) -> bool:
    module = getattr(item, "module", None)
    marks = getattr(module, "pytestmark", [])
    return any(mark.name == "slow" for mark in (marks if isinstance(marks, list) else [marks]))

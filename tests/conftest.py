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


def _fixture_names(item: pytest.Item) -> set[str]:
    """The fixtures ``item`` uses, each also as ``file::name`` (a module's own fixture)."""
    names = set(getattr(item, "fixturenames", ()))
    return names | {f"{item.path.name}::{n}" for n in names}


def _on_spark(item: pytest.Item) -> bool:
    if _fixture_names(item) & SPARK_FIXTURES:
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
    _check_shared_groups(items)
    # Longest units first: files of whole runs in subprocesses (every test slow), then by
    # their number of slow, Spark and S3 tests. `make test`'s two workers take whole units
    # in this order (--no-loadscope-reorder), so no long unit starts last and runs alone.
    costly = Counter(_unit(item.nodeid) for item in items
                     if any(item.get_closest_marker(m) for m in ("slow", "spark", "s3")))
    items.sort(key=lambda item: (not _slow_module(item), -costly[_unit(item.nodeid)]))


SHARED_GROUPS = {
    "engines": ("test_api.py", "test_executor_contract.py", "test_graph_backends.py",
                "test_host_replay.py", "test_object_storage.py", "test_progress.py",
                "test_spark_gpu.py"),
    "mapped": ("test_api_steps.py", "test_eval.py", "test_export.py", "test_seams.py",
               "test_stac.py", "test_view.py"),
}
"""Test files that run on one pytest-xdist worker because they share a costly session
fixture: the Spark session and Dask cluster (``engines``), the mapped samples (``mapped``).
Each worker is a session of its own, so files split over two workers make it twice. The
scheduler sees test ids only, hence a table; collection checks that every file using the
fixtures is in it (:func:`_check_shared_groups`)."""

ENGINE_FIXTURES = {"spark_session", "dask_client", "test_graph_backends.py::runs"}
"""Fixtures on the session's shared Spark session or Dask cluster (a module's own as
``file::name``); ``build_engine`` asks for them too."""

_GROUP_OF_FILE = {name: group for group, names in SHARED_GROUPS.items() for name in names}


def _unit(nodeid: str) -> str:
    """What one worker runs whole: the test's file, or its file's shared group."""
    path = nodeid.split("::", 1)[0]
    return _GROUP_OF_FILE.get(path.rsplit("/", 1)[-1], path)


def _shared_group(item: pytest.Item) -> str | None:
    """The :data:`SHARED_GROUPS` name whose fixture ``item`` uses, if any."""
    from tests import fixtures_engines

    names = _fixture_names(item)
    module = getattr(item, "module", None)
    if names & ENGINE_FIXTURES or getattr(module, "build_engine", None) is \
            fixtures_engines.build_engine:
        return "engines"
    return "mapped" if "mapped_samples" in names else None


def _check_shared_groups(items: list[pytest.Item]) -> None:
    """Refuse a :data:`SHARED_GROUPS` table that misses a file using a group's fixtures.
    (A listed file that no longer uses them only shares a worker; any selection of tests
    passes this check when the whole suite does.)"""
    for item in items:
        group = _shared_group(item)
        if group is not None and _GROUP_OF_FILE.get(item.path.name) != group:
            raise pytest.UsageError(
                f"tests/conftest.py: {item.path.name} uses the fixtures of group {group!r} "
                f"but SHARED_GROUPS puts it in {_GROUP_OF_FILE.get(item.path.name)!r}; move "
                "it there")


@pytest.hookimpl(tryfirst=True, optionalhook=True)  # before xdist picks; without xdist: unused
def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> object | None:
    """``--dist loadfile`` hands out whole files, the files of a shared group as one unit."""
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class SharedFixtureScheduling(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return _unit(nodeid)

    return SharedFixtureScheduling(config, log)


def _slow_module(item: pytest.Item) -> bool:
    module = getattr(item, "module", None)
    marks = getattr(module, "pytestmark", [])
    return any(mark.name == "slow" for mark in (marks if isinstance(marks, list) else [marks]))

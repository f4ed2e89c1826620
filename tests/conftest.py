"""Shared pytest fixtures: one test archive, one Dask cluster, one Spark session per run.

Fixtures live in topic modules so each layer owns its own; they are session-scoped so the
suite stays within minutes on two cores.
"""

pytest_plugins = ["tests.fixtures_data", "tests.fixtures_engines", "tests.fixtures_storage"]

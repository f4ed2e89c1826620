"""Object-storage fixtures: one fault-injecting S3 server on loopback per test session.

The standard AWS variables point at it from the start of the session (``pytest_configure``
runs before any fixture), so engine workers spawned by the session's Dask cluster and Spark
session inherit them, as workers on a real cluster inherit their credentials. The
credentials are made up: the server accepts any.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator

import pytest

from tests.objectstore import FaultyS3

SECRET = "resflow-test-secret-never-printed"
"""The session's secret key: tests check it never reaches a report, a log or a message."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pytest_configure(config: pytest.Config) -> None:
    port = _free_port()
    os.environ.update({
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
        "AWS_ACCESS_KEY_ID": "resflow-test",
        "AWS_SECRET_ACCESS_KEY": SECRET,
        "AWS_DEFAULT_REGION": "us-east-1",
        "RESFLOW_TEST_S3_PORT": str(port),
    })
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN"):
        os.environ.pop(name, None)


@pytest.fixture(scope="session")
def s3() -> Iterator[FaultyS3]:
    """The session's S3 server; tests create their own buckets and clear their faults."""
    pytest.importorskip("s3fs", reason="object-storage tests need s3fs (`resflow[s3]`)")
    server = FaultyS3(int(os.environ["RESFLOW_TEST_S3_PORT"]))
    yield server
    server.close()


@pytest.fixture
def faults(s3: FaultyS3) -> Iterator[FaultyS3]:
    """The S3 server with no fault pending before or after the test."""
    s3.clear()
    yield s3
    s3.clear()


@pytest.fixture
def no_s3_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    """The test runs without the session's AWS credentials in the environment. For modules
    that read no bucket yet call rasterio many times: while credentials are set, each such
    call builds a boto3 session inside rasterio (12-30 ms, however the caller sets up its
    GDAL environment), which is most of a vectorisation test's time."""
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name, raising=False)

"""Bundled samples: listed with provenance, openable by name, unknown names refused."""

from __future__ import annotations

import pytest

from resflow.errors import InputError
from resflow.samples import DATA_DIR, list_samples, open_sample, sample_path


def test_every_sample_exists_and_names_its_origin() -> None:
    samples = list_samples()
    assert len({s.name for s in samples}) == len(samples)
    for s in samples:
        assert s.path.is_file() and s.path.stat().st_size > 0
        assert s.licence and s.source and s.description
        assert s.path.relative_to(DATA_DIR).as_posix() in (DATA_DIR / "PROVENANCE.md").read_text()


def test_every_data_file_is_listed() -> None:
    listed = {s.path for s in list_samples()}
    on_disk = {p for p in DATA_DIR.rglob("*") if p.is_file() and p.suffix != ".md"}
    assert on_disk == listed
    assert (DATA_DIR / "LICENSES.md").is_file()


def test_open_raster_samples() -> None:
    for s in list_samples("raster"):
        with open_sample(s.name) as ds:
            assert ds.count >= 1 and ds.crs is not None


def test_unknown_and_vector_names_are_refused() -> None:
    with pytest.raises(InputError, match="use one of: atlanta-pan"):
        sample_path("atlantis")
    with pytest.raises(InputError, match="vector file"):
        open_sample("atlanta-labels")

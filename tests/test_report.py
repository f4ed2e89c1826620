"""The run report: rates, summary line, embedded config and versions, JSON round trip."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from resflow.config import RunConfig
from resflow.report import STAGES, BucketUse, ClusterShape, RunReport, collect_versions


def make_report(**overrides) -> RunReport:
    fields = {
        "out": "out.zarr", "chips": 24, "km2": 5.31, "wall_s": 12.4, "backend": "dask",
        "cluster": ClusterShape(workers=2, threads_per_worker=1),
        "buckets": [BucketUse(bucket=0, model="mono", chips=20),
                    BucketUse(bucket=3, model="bucket-3", chips=4)],
        "stage_seconds": {stage: 1.0 for stage in STAGES},
        "config": RunConfig(backend="dask", threshold=0.6).model_dump(mode="json"),
    }
    return RunReport(**{**fields, **overrides})


def test_summary_line_states_chips_area_time_rate_engine_and_output():
    report = make_report()
    assert report.summary_line() == ("resflow: 24 chips, 5.31 km^2 in 12.4 s = 0.43 km^2/s on "
                                     "dask (2 workers x 1 thread) -> out.zarr")
    assert report.chips_per_s == pytest.approx(24 / 12.4)
    errors = [{"where": "a.tif", "problem": "empty", "fix": "re-download it"}]
    assert make_report(errors=errors).summary_line().endswith("(1 input error)")
    gpu_box = ClusterShape(workers=1, threads_per_worker=4, gpus=1)
    assert str(gpu_box) == "1 worker x 4 threads, 1 GPU"


def test_cluster_shape_from_any_engine_description():
    dask = {"backend": "dask", "workers": 2, "threads_per_worker": [1, 2], "gpus": ["0", "1"],
            "dashboard": "http://127.0.0.1:8787/status"}
    shape = ClusterShape.from_executor(dask)
    assert (shape.workers, shape.threads_per_worker, shape.gpus) == (2, 2, 2)
    assert shape.details == dask
    pinned = ClusterShape.from_executor({"workers": 3, "threads_per_worker": 1, "gpus": "pinned"})
    assert pinned.gpus == 3
    local = ClusterShape.from_executor({"backend": "local", "workers": 1, "threads_per_worker": 1,
                                        "gpus": []})
    assert str(local) == "1 worker x 1 thread"


def test_json_round_trip_keeps_config_versions_and_derived_rates(tmp_path):
    report = make_report()
    path = report.write(tmp_path)
    data = json.loads(path.read_text())
    assert path.name == "run_report.json"
    assert data["config"]["threshold"] == 0.6 and data["config"]["backend"] == "dask"
    assert data["km2_per_s"] == pytest.approx(5.31 / 12.4)
    assert data["summary"] == report.summary_line()
    assert set(data["stage_seconds"]) == set(STAGES)
    assert data["buckets"][1] == {"bucket": 3, "model": "bucket-3", "chips": 4}
    assert RunReport.read(path) == report


def test_versions_name_python_and_installed_libraries():
    versions = collect_versions()
    assert {"python", "torch", "zarr", "xarray", "rasterio", "resflow"} <= set(versions)
    assert "not-a-package" not in versions


def test_zero_wall_time_and_unknown_fields():
    assert make_report(wall_s=0.0).km2_per_s == 0.0
    with pytest.raises(ValidationError):
        RunReport.model_validate({**make_report().to_dict(), "typo_field": 1})


def test_str_is_the_summary_line():
    report = make_report()
    assert str(report) == report.summary_line()
    assert f"{report}" == report.summary_line()


def test_html_view_shows_summary_and_stage_table_escaped():
    errors = [{"where": "<b>a.tif</b>", "problem": "empty & short", "fix": "re-download it"}]
    report = make_report(out="maps<1>.zarr", errors=errors)
    view = report._repr_html_()
    assert view.startswith("<div><p><b>resflow: 24 chips") and view.endswith("</div>")
    for stage in STAGES:
        assert f"<tr><td>{stage}</td><td>1.0</td></tr>" in view
    assert "<tr><td>3</td><td>bucket-3</td><td>4</td></tr>" in view
    assert "maps&lt;1&gt;.zarr" in view and "maps<1>" not in view
    assert "&lt;b&gt;a.tif&lt;/b&gt;: empty &amp; short" in view

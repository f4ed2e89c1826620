"""The planning benchmark's measurements on tiny sizes: they run, and they measure what
they claim (every synthetic chip planned, every store object counted)."""

from __future__ import annotations

from pathlib import Path

from benchmarks.planning import SCENE_CHIPS, markdown, measure_planning, measure_store


def test_planning_is_measured_in_a_fresh_process() -> None:
    result = measure_planning(20)
    assert result["chips"] == 20 * SCENE_CHIPS ** 2
    assert result["partitions"] >= result["chips"] // 16
    assert result["plan_s"] > 0 and result["peak_rss_mib"] > result["plan_rss_mib"] >= 0


def test_store_creation_writes_seven_metadata_objects_per_scene(tmp_path: Path) -> None:
    result = measure_store(12, tmp_path)
    assert result["objects"] == 12 * 7 + 1  # group + 6 arrays per scene, and the root
    assert not list(tmp_path.iterdir())  # the store is removed after counting


def test_the_report_states_each_target() -> None:
    rows = [{"scenes": n, "chips": n * 1600, "partitions": n * 100, "plan_s": n / 1e3,
             "plan_rss_mib": n / 50, "peak_rss_mib": 80 + n / 50} for n in (10, 100)]
    text = markdown({"planning": rows, "growth": {"plan_s": 1.0, "plan_rss_mib": 1.0},
                     "store": [{"scenes": 10, "create_s": 0.1, "objects": 71, "mib": 0.1}],
                     "overhead": {"scenes": 4, "ingest_one_s": 1.0, "ingest_many_s": 2.0,
                                  "run_one_s": 3.0, "run_many_s": 3.1,
                                  "ingest_overhead_ms": 333.3, "run_overhead_ms": 33.3},
                     "targets": {"plan_time": True, "plan_rss": True, "linear": True,
                                 "overhead": False},
                     "machine": "test"})
    assert "| 100 | 160,000 |" in text and "(MISSED)" in text and "run overhead" in text

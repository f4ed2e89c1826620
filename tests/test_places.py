"""The accuracy study's places come from ``places.json``: added places are picked up, places
whose files are missing are skipped and named.

A test's own ``places.json`` points at symbolic links to the real shared files
(``../shared/data/fair``), which are never copied into the project.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest

from benchmarks.accuracy import chosen_elsewhere, label_files, place_scenes, study_places
from benchmarks.places import ATLANTA, FAIR, PLACES_JSON, Place, load_places
from resflow.errors import InputError

needs_fair = pytest.mark.skipif(
    not PLACES_JSON.is_file(),
    reason=f"the shared fAIr data is not at {FAIR} (../shared/data/fair from the project)")


def linked(folder: Path, *names: str) -> None:
    """Symbolic links in ``folder`` to the real shared files ``names``."""
    for name in names:
        (folder / name).symlink_to(FAIR / name)


@needs_fair
def test_the_shared_places_json_gives_every_place_with_its_files() -> None:
    doc = json.loads(PLACES_JSON.read_text())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        places = load_places()
    assert [p.name for p in places] == [k for k in doc if not k.startswith("_")]
    banepa = next(p for p in places if p.name == "banepa")
    assert banepa.scene_names == ["kathmandu-1", "kathmandu-2", "banepa-1"]
    assert banepa.labels == (FAIR / "kathmandu-labels.geojson", FAIR / "banepa-labels.geojson")
    assert study_places()[-1] == ATLANTA and ATLANTA.scene_names == ["sample_geotiff"]


@needs_fair
def test_places_json_drives_the_list_and_a_missing_place_is_skipped_and_named(
        tmp_path: Path) -> None:
    linked(tmp_path, "dhaka-3.tif", "dhaka-4.tif", "dhaka-labels.geojson", "kampala-2.tif",
           "kampala-labels.geojson")
    doc = {"_about": "a test's own list",
           "dhaka": {"scenes": ["dhaka-3.tif", "dhaka-4.tif"], "labels": ["dhaka-labels.geojson"]},
           "atlantis": {"scenes": ["atlantis-1.tif", "kampala-2.tif"],
                        "labels": ["atlantis-labels.geojson"]},
           "kampala": {"scenes": ["kampala-2.tif"], "labels": ["kampala-labels.geojson"]}}
    listing = tmp_path / "places.json"
    listing.write_text(json.dumps(doc))
    with pytest.warns(UserWarning) as caught:
        places = study_places(listing)
    assert [str(w.message) for w in caught] == [
        f"{listing}: place 'atlantis' skipped: missing atlantis-1.tif, atlantis-labels.geojson"]
    assert [p.name for p in places] == ["dhaka", "kampala", "atlanta"]
    assert places[0] == Place("dhaka", (tmp_path / "dhaka-3.tif", tmp_path / "dhaka-4.tif"),
                              (tmp_path / "dhaka-labels.geojson",))
    assert place_scenes(places) == {"dhaka": ["dhaka-3", "dhaka-4"], "kampala": ["kampala-2"],
                                    "atlanta": ["sample_geotiff"]}
    assert label_files(places) == [tmp_path / "dhaka-labels.geojson",
                                   tmp_path / "kampala-labels.geojson", *ATLANTA.labels]


def test_an_unusable_places_json_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="list of labelled places does not exist"):
        load_places(tmp_path / "absent.json")
    bad = tmp_path / "places.json"
    bad.write_text(json.dumps({"kampala": {"scenes": ["kampala-1.tif"]}}))
    with pytest.raises(InputError, match=r"not a JSON object of places with 'scenes' and "
                                         r"'labels' lists \(KeyError"):
        load_places(bad)
    with pytest.raises(SystemExit, match=r"error: .*absent\.json: the list of labelled places"):
        study_places(tmp_path / "absent.json")


def test_the_split_dip_is_chosen_on_the_other_places_whatever_they_are_called() -> None:
    def rows(f1: dict[str, float]) -> list[dict]:
        return [{"place": p, "model": m, "object_f1": v} for p, v in f1.items()
                for m in ("mono", "ensemble")]

    dips = {"0": rows({"dhaka": 0.1, "banepa": 0.5, "atlanta": 0.3}),
            "0.1": rows({"dhaka": 0.45, "banepa": 0.2, "atlanta": 0.3})}
    chosen = chosen_elsewhere(dips)["mono"]["places"]
    assert chosen == {"dhaka": {"split_dip": 0.0, "object_f1": 0.1},
                      "banepa": {"split_dip": 0.1, "object_f1": 0.2},
                      "atlanta": {"split_dip": 0.1, "object_f1": 0.3}}

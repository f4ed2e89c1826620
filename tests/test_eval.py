"""``resflow eval``: exact scores on hand-made maps, then a real run scored from any format.

The hand-made store is a real output store written through :class:`OutputStore` from a
real (tiny) archive, with probabilities drawn by hand, so every expected number below can
be worked out on paper. The real run maps the sample archive with the bundled gallery.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyogrio.raw
import pytest
import rasterio
import shapely
from rasterio.warp import transform_geom
from typer.testing import CliRunner

from resflow.archive import Archive
from resflow.chips import shard_index
from resflow.cli import app
from resflow.config import IngestConfig
from resflow.errors import ConfigError, InputError
from resflow.evaluation import (
    EVAL_JSON,
    default_report_dir,
    evaluate,
    format_table,
)
from resflow.ingestion import ingest
from resflow.samples import sample_path
from resflow.seams import scene_seams
from resflow.store.format import NOT_MAPPED
from resflow.store.writer import OutputStore
from resflow.training.labels import load_labels, rasterise
from resflow.training.metrics import (
    FALSE_NEGATIVE,
    FALSE_POSITIVE,
    NOT_SCORED,
    TRUE_POSITIVE,
    Scores,
    pixel_categories,
    score_scene,
)

pytestmark = pytest.mark.usefixtures("no_s3_credentials")  # reads no bucket

runner = CliRunner()
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

# The hand-made scene: 64 x 64 px of 0.5 m in UTM 16N, chips of 32 px (2 x 2 chips).
ORIGIN = (733600.0, 3725200.0)
PIXEL = 0.5
SIZE, CHIP = 64, 32
# Buildings as (row0, col0, rows, cols) in scene pixels.
BUILDING_A = (4, 4, 10, 10)       # 100 px
BUILDING_B = (28, 28, 8, 8)       # 64 px across all four chips, predicted at p = 100/255
BUILDING_C = (50, 4, 6, 6)        # 36 px inside the nodata block
NODATA_BLOCK = (48, 0, 16, 16)    # 256 px of source nodata
FOUND_A = (4, 4, 8, 8)            # 64 px inside A: IoU 64/100 = 0.64, a match
FALSE_BLOB = (20, 50, 5, 5)       # 25 px on no building


def box(array: np.ndarray, rect: tuple[int, int, int, int], value: int) -> None:
    r, c, h, w = rect
    array[r:r + h, c:c + w] = value


def footprint(rect: tuple[int, int, int, int]) -> dict:
    """The GeoJSON polygon covering exactly the pixels of ``rect`` on the hand-made grid."""
    r, c, h, w = rect
    x0, y0 = ORIGIN[0] + c * PIXEL, ORIGIN[1] - r * PIXEL
    x1, y1 = x0 + w * PIXEL, y0 - h * PIXEL
    return {"type": "Polygon", "coordinates": [[[x0, y0], [x1, y0], [x1, y1], [x0, y1],
                                                [x0, y0]]]}


def geojson(path: Path, geometries: list[dict | None], crs: str | None = "EPSG:32616") -> Path:
    doc: dict = {"type": "FeatureCollection",
                 "features": [{"type": "Feature", "properties": {}, "geometry": g}
                              for g in geometries]}
    if crs is not None:
        doc["crs"] = {"type": "name", "properties": {"name": crs}}
    path.write_text(json.dumps(doc))
    return path


@pytest.fixture(scope="module")
def hand_labels(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return geojson(tmp_path_factory.mktemp("hand-labels") / "buildings.geojson",
                   [footprint(r) for r in (BUILDING_A, BUILDING_B, BUILDING_C)])


@pytest.fixture(scope="module")
def hand_archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real archive of one 64 x 64 uint16 scene whose bottom-left block is nodata."""
    folder = tmp_path_factory.mktemp("hand-archive")
    pixels = np.random.default_rng(0).integers(100, 1000, (SIZE, SIZE), dtype=np.uint16)
    box(pixels, NODATA_BLOCK, 0)
    tif = folder / "hand.tif"
    with rasterio.open(tif, "w", driver="GTiff", width=SIZE, height=SIZE, count=1,
                       dtype="uint16", nodata=0, crs="EPSG:32616",
                       transform=rasterio.Affine(PIXEL, 0, ORIGIN[0], 0, -PIXEL, ORIGIN[1])
                       ) as dst:
        dst.write(pixels, 1)
    result = ingest([tif], folder / "hand.zarr", IngestConfig(chip=CHIP, gsd=None))
    assert result.ok, result
    return folder / "hand.zarr"


def hand_store(archive_path: Path, out: Path, *, finish: bool = True,
               recorded: str | None = None) -> Path:
    """A real output store of the hand-made scene: A found in part, B faint, one false blob.

    ``finish=False`` leaves it as an interrupted run does: the last chip unwritten and the
    store not marked complete. ``recorded`` is the archive path as the run config records
    it (default: the absolute path)."""
    archive = Archive.open(archive_path)
    store = OutputStore.create(out, archive, run_config={
        "archive": recorded or str(archive_path), "threshold": 0.5})
    probability = np.zeros((SIZE, SIZE), np.uint8)
    box(probability, FOUND_A, 200)
    box(probability, FALSE_BLOB, 230)
    box(probability, BUILDING_B, 100)   # below the run's 0.5, above a re-threshold at 0.3
    refs = archive.chips() if finish else archive.chips()[:-1]
    info = archive.scenes[refs[0].scene]
    for ref in refs:  # one chip per shard (the store's default shard)
        chip = probability[ref.y0:ref.y0 + ref.height, ref.x0:ref.x0 + ref.width]
        shard = shard_index(ref.row, ref.col, info.height, info.width, info.chip, 1)
        store.write_shard(ref.scene, shard, [ref], [chip], [(chip > 127).astype(np.uint8)],
                          [0])
    if finish:
        store.finalize({"summary": "hand-made"})
    return out


# --- scoring one scene: hand-made masks --------------------------------------------------

def test_score_scene_by_hand() -> None:
    # Two true squares (25 and 9 px); one prediction inside the first (16 px, IoU 0.64)
    # and a 4 px false blob: pixels tp 16, fp 4, fn 9 + 9; one footprint of two found.
    truth = np.zeros((10, 10), np.int32)
    truth[0:5, 0:5] = 1
    truth[6:9, 6:9] = 2
    predicted = np.zeros((10, 10), bool)
    predicted[0:4, 0:4] = True
    predicted[8:10, 0:2] = True
    m = score_scene(predicted, truth).summary()
    assert (m["tp"], m["fp"], m["fn"]) == (16, 4, 18)
    assert m["pixel_precision"] == pytest.approx(16 / 20)
    assert m["pixel_recall"] == pytest.approx(16 / 34)
    assert m["pixel_f1"] == pytest.approx(32 / 54)
    assert m["pixel_iou"] == pytest.approx(16 / 38)
    assert (m["object_tp"], m["object_fp"], m["object_fn"]) == (1, 1, 1)
    assert m["object_precision"] == m["object_recall"] == m["object_f1"] == 0.5

    codes = pixel_categories(predicted, truth)
    assert [int((codes == c).sum()) for c in (TRUE_POSITIVE, FALSE_POSITIVE, FALSE_NEGATIVE)
            ] == [16, 4, 18]

    valid = np.ones((10, 10), bool)
    valid[6:, :] = False                            # the blob and the second square
    m = score_scene(predicted, truth, valid).summary()
    assert (m["tp"], m["fp"], m["fn"], m["object_f1"]) == (16, 0, 9, 1.0)
    assert int((pixel_categories(predicted, truth, valid) == NOT_SCORED).sum()) == 40


def test_scores_add_counts_not_ratios() -> None:
    a = score_scene(np.ones((2, 2), bool), np.ones((2, 2), np.int32))       # 4 tp
    b = score_scene(np.ones((1, 4), bool), np.zeros((1, 4), np.int32))      # 4 fp
    total = a + b
    assert (total.tp, total.fp, total.object_tp, total.object_fp) == (4, 4, 1, 1)
    assert total.summary()["pixel_precision"] == 0.5
    running = Scores()
    running += a
    assert running == a


def test_polygons_burn_exact_pixels(hand_labels: Path) -> None:
    labels = load_labels(hand_labels)
    transform = (PIXEL, 0.0, ORIGIN[0], 0.0, -PIXEL, ORIGIN[1])
    crs = rasterio.crs.CRS.from_epsg(32616).to_wkt()
    ids = rasterise([labels], crs, transform, (0, 0, SIZE, SIZE))
    assert [int((ids == i).sum()) for i in (1, 2, 3)] == [100, 64, 36]


# --- evaluate(): a real store with hand-drawn maps ---------------------------------------

def test_evaluate_hand_made_store_exactly(hand_archive: Path, hand_labels: Path,
                                          tmp_path: Path) -> None:
    out = hand_store(hand_archive, tmp_path / "hand-maps.zarr")
    result = evaluate(out, [hand_labels])
    report = default_report_dir(out)
    assert report == tmp_path / "hand-maps-eval"
    assert json.loads((report / EVAL_JSON).read_text()) == result
    scene = result["scenes"]["hand"]
    # C lies in the nodata block, which is not scored: truth is A and B only.
    assert scene["nodata_excluded"] and result["archive"] == str(hand_archive)
    assert scene["scored_pixels"] == SIZE * SIZE - 16 * 16
    assert (scene["tp"], scene["fp"], scene["fn"]) == (64, 25, 36 + 64)
    assert scene["pixel_precision"] == pytest.approx(64 / 89)
    assert scene["pixel_recall"] == pytest.approx(64 / 164)
    assert scene["pixel_f1"] == pytest.approx(128 / 253)
    assert scene["pixel_iou"] == pytest.approx(64 / 189)
    assert (scene["true_buildings"], scene["predicted_buildings"]) == (2, 2)
    assert scene["object_precision"] == scene["object_recall"] == scene["object_f1"] == 0.5
    assert result["overall"] == {**{k: v for k, v in scene.items()
                                    if k not in ("nodata_excluded", "labelled", "overlay")},
                                 "scenes": 1}
    assert (result["threshold"], result["threshold_source"]) == (0.5, "run")
    assert scene["labelled"] and result["not_labelled"] == result["covered"] == []
    # No edge of the hand-drawn maps lies on a chip border (B crosses them whole); off the
    # grid, lines cross the buildings' edges.
    hand = {"probability": 0.0, "mask": 0.0, "probability_off_grid": [0.0, 15.574],
            "mask_off_grid": [0.0, 13.556], "probability_grid_shows": False,
            "mask_grid_shows": False}
    assert result["seams"] == {"scenes": {"hand": hand}, "overall": hand}
    assert result["labels"][0]["buildings"] == 3

    # Re-thresholded at 0.3, the faint B (p = 100/255) is found whole although it spans
    # four chips: one footprint, matched at IoU 1.
    low = evaluate(out, [hand_labels], threshold=0.3, report_dir=tmp_path / "low")
    s = low["scenes"]["hand"]
    assert (s["tp"], s["fp"], s["fn"]) == (128, 25, 36)
    assert (s["object_tp"], s["object_fp"], s["object_fn"]) == (2, 1, 0)
    assert s["object_f1"] == pytest.approx(0.8)
    assert (low["threshold"], low["threshold_source"]) == (0.3, "--threshold")


def far_labels(folder: Path) -> Path:
    """Building A moved 100 km east: a label file that reaches no scene of the store."""
    a = footprint(BUILDING_A)
    return geojson(folder / "far.geojson", [
        {**a, "coordinates": [[[x + 1e5, y] for x, y in a["coordinates"][0]]]}])


def test_a_covered_scene_without_buildings_counts_its_false_alarms(
        hand_archive: Path, hand_labels: Path, tmp_path: Path) -> None:
    out = hand_store(hand_archive, tmp_path / "maps.zarr")
    far = far_labels(tmp_path)
    with pytest.raises(InputError, match="cover none of the 1 scenes"):
        evaluate(out, [far])
    result = evaluate(out, [far], covered=["hand"])
    scene = result["scenes"]["hand"]
    assert not scene["labelled"] and result["covered"] == ["hand"]
    assert result["not_labelled"] == []
    # Truth is all background: the run's mask (A found in part, the false blob; B is below
    # the run's 0.5) is two false alarms of 64 + 25 px, outside the nodata block.
    assert (scene["tp"], scene["fp"], scene["fn"]) == (0, 64 + 25, 0)
    assert (scene["true_buildings"], scene["predicted_buildings"]) == (0, 2)
    assert (scene["object_tp"], scene["object_fp"], scene["object_fn"]) == (0, 2, 0)
    assert scene["pixel_precision"] == scene["object_precision"] == 0.0
    assert scene["scored_pixels"] == SIZE * SIZE - 16 * 16
    assert result["overall"]["fp"] == 89 and result["overall"]["scenes"] == 1
    assert "covered (scored, unlabelled pixels are background): hand" in format_table(result)

    # Covering a labelled scene changes nothing: its labels are its truth.
    both = evaluate(out, [hand_labels], covered=["hand"], report_dir=tmp_path / "both")
    alone = evaluate(out, [hand_labels], report_dir=tmp_path / "alone")
    assert both["scenes"] == alone["scenes"] and both["scenes"]["hand"]["labelled"]

    with pytest.raises(InputError) as caught:
        evaluate(out, [far], covered=["hand", "nowhere"])
    assert str(caught.value) == (f"--covered: 'nowhere' is not a scene of {out}. "
                                 "Fix: name scenes of the store: hand.")


def test_scene_seams_show_a_chip_grid_and_skip_unmapped_pixels() -> None:
    texture = np.random.default_rng(1).integers(0, 60, (SIZE, SIZE)).astype(np.uint8)
    mask = (texture > 30).astype(np.uint8)
    seamless = scene_seams(texture, mask, CHIP)
    assert 0.8 < seamless["probability"].on_grid.ratio < 1.25
    assert 0.8 < seamless["mask"].on_grid.ratio < 1.25
    assert seamless["probability"].shows() is False and seamless["mask"].shows() is False
    # Each chip offset by its own amount: the borders change far more than elsewhere, and
    # far more than on any line off the grid.
    offsets = np.kron(np.array([[0, 120], [60, 180]], np.uint8), np.ones((CHIP, CHIP),
                                                                          np.uint8))
    seamy = scene_seams(texture + offsets, np.kron(np.array([[1, 0], [0, 1]], np.uint8),
                                                    np.ones((CHIP, CHIP), np.uint8)), CHIP)
    assert seamy["probability"].on_grid.ratio > 3 and seamy["probability"].shows()
    assert max(seamy["probability"].spread()) < 1.25
    assert seamy["mask"].on_grid.ratio is None and seamy["mask"].shows() is None  # no edge
    # An unmapped chip makes no seam with its neighbours, whatever its stored value.
    unmapped = texture.copy()
    unmapped[:CHIP, CHIP:] = NOT_MAPPED
    ratios = scene_seams(unmapped, mask, CHIP)
    assert 0.8 < ratios["probability"].on_grid.ratio < 1.25
    assert (ratios["probability"].on_grid.border_pairs
            == seamless["probability"].on_grid.border_pairs - CHIP * 2)


def test_without_the_archive_nodata_pixels_are_scored(hand_archive: Path, hand_labels: Path,
                                                      tmp_path: Path) -> None:
    moved = tmp_path / "gone.zarr"
    shutil.copytree(hand_archive, moved)
    out = hand_store(moved, tmp_path / "maps.zarr")
    shutil.rmtree(moved)
    result = evaluate(out, [hand_labels])
    scene = result["scenes"]["hand"]
    assert result["archive"] is None and not scene["nodata_excluded"]
    assert scene["scored_pixels"] == SIZE * SIZE
    assert (scene["fn"], scene["true_buildings"]) == (36 + 64 + 36, 3)
    assert scene["object_f1"] == pytest.approx(0.4)
    assert (Path(result["report_dir"]) / scene["overlay"]).read_bytes()[:8] == PNG_MAGIC


def test_a_relative_archive_path_is_found_beside_the_store(hand_archive: Path,
                                                           hand_labels: Path,
                                                           tmp_path: Path) -> None:
    shutil.copytree(hand_archive, tmp_path / "beside.zarr")
    out = hand_store(tmp_path / "beside.zarr", tmp_path / "maps.zarr", recorded="beside.zarr")
    result = evaluate(out, [hand_labels])
    assert result["archive"] == str(tmp_path / "beside.zarr")
    assert result["scenes"]["hand"]["nodata_excluded"]


def test_bad_stores_are_refused(hand_archive: Path, hand_labels: Path, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="does not exist"):
        evaluate(tmp_path / "absent.zarr", [hand_labels])
    with pytest.raises(InputError, match="not a resflow output store"):
        evaluate(hand_archive, [hand_labels])
    unfinished = hand_store(hand_archive, tmp_path / "unfinished.zarr", finish=False)
    with pytest.raises(InputError, match=r"not complete \(3/4 chips mapped\).*--resume"):
        evaluate(unfinished, [hand_labels])
    out = hand_store(hand_archive, tmp_path / "maps.zarr")
    with pytest.raises(ConfigError, match="field 'threshold': Input should be less than 1"):
        evaluate(out, [hand_labels], threshold=1.5)


def test_bad_label_files_are_refused(hand_archive: Path, tmp_path: Path) -> None:
    out = hand_store(hand_archive, tmp_path / "maps.zarr")
    a = footprint(BUILDING_A)
    cases = {
        "does not exist": tmp_path / "absent.geojson",
        "cover none of the 1 scenes": far_labels(tmp_path),
        "unknown CRS 'EPSG:999999'": geojson(tmp_path / "bad-crs.geojson", [a], "EPSG:999999"),
        "cannot be longitude/latitude": geojson(tmp_path / "no-crs.geojson", [a], None),
        "no Polygon or MultiPolygon": geojson(
            tmp_path / "empty.geojson", [None, {"type": "Polygon", "coordinates": []}]),
    }
    no_crs = tmp_path / "no-crs.gpkg"
    with pytest.warns(UserWarning, match="'crs' was not provided"):
        pyogrio.raw.write(no_crs, shapely.to_wkb([shapely.geometry.shape(a)]), field_data=[],
                          fields=[], geometry_type="Polygon", driver="GPKG")
    cases["has no CRS"] = no_crs
    for problem, path in cases.items():
        with pytest.raises(InputError, match=problem) as caught:
            evaluate(out, [path])
        assert str(path.name) in str(caught.value) and "Fix: " in str(caught.value)


# --- the session's real run (mapped_samples), labels in three formats and two CRSs -----------

@pytest.fixture(scope="module")
def atlanta_variants(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The Atlanta labels as shipped (GeoJSON, UTM), in WGS 84 and as a GeoPackage."""
    folder = tmp_path_factory.mktemp("atlanta-labels")
    source = sample_path("atlanta-labels")
    doc = json.loads(source.read_text())
    wgs84 = [transform_geom("EPSG:32616", "EPSG:4326", f["geometry"]) for f in doc["features"]]
    gpkg = folder / "atlanta.gpkg"
    pyogrio.raw.write(gpkg, shapely.to_wkb([shapely.geometry.shape(f["geometry"])
                                            for f in doc["features"]]),
                      field_data=[], fields=[], geometry_type="Polygon", crs="EPSG:32616",
                      driver="GPKG")
    return {"geojson": source, "wgs84": geojson(folder / "wgs84.geojson", wgs84, None),
            "gpkg": gpkg}


def test_real_run_scores_the_same_from_every_format(mapped_samples: Path, atlanta_variants,
                                                    tmp_path: Path) -> None:
    results = {name: evaluate(mapped_samples, [path], report_dir=tmp_path / name)
               for name, path in atlanta_variants.items()}
    reference = results["geojson"]
    groups = set(OutputStore.open(mapped_samples).groups)
    assert set(reference["scenes"]) == {"sample_geotiff"}
    assert reference["not_labelled"] == sorted(groups - {"sample_geotiff"})
    scene = reference["scenes"]["sample_geotiff"]
    assert scene["true_buildings"] == 43 and scene["predicted_buildings"] > 0
    assert scene["nodata_excluded"] and scene["overlay"] == "sample_geotiff_overlay.png"
    assert 0 < scene["pixel_f1"] <= 1 and 0 <= scene["object_f1"] <= 1
    assert scene["tp"] + scene["fn"] > 30_000           # ~4% of the scene is buildings
    for name, result in results.items():
        assert result["overall"] == reference["overall"], name
        assert result["scenes"]["sample_geotiff"] == scene, name
        assert result["seams"] == reference["seams"], name
    # Seams of every scene, labelled or not: the run's halo keeps chip borders from showing.
    seams = reference["seams"]
    assert set(seams["scenes"]) == groups
    for pair in [*seams["scenes"].values(), seams["overall"]]:
        assert 0.5 < pair["probability"] < 1.5, seams
        assert pair["probability_grid_shows"] is False, seams
    assert results["wgs84"]["labels"][0]["crs"] == "EPSG:4326"

    png = tmp_path / "geojson" / scene["overlay"]
    assert png.read_bytes()[:8] == PNG_MAGIC
    from PIL import Image

    with Image.open(png) as image:
        assert image.format == "PNG" and image.mode in ("RGB", "RGBA")
        assert image.width == 1500 and image.height > 1500   # the scene plus a title band


def test_cli_prints_the_table_and_refuses_bad_input(mapped_samples: Path, tmp_path: Path) -> None:
    labels = str(sample_path("atlanta-labels"))
    result = runner.invoke(app, ["eval", str(mapped_samples), "--labels", labels,
                                 "--out", str(tmp_path / "r")])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split()[:3] == ["scene", "true", "pred"]
    assert lines[1].split()[:2] == ["sample_geotiff", "43"]
    assert any(line.startswith("overall") for line in lines)
    assert (tmp_path / "r" / EVAL_JSON).is_file()
    assert result.stdout.strip() == format_table(json.loads((tmp_path / "r" / EVAL_JSON)
                                                            .read_text()))

    as_json = runner.invoke(app, ["eval", str(mapped_samples), "--labels", labels, "--json",
                                  "--threshold", "0.4", "--out", str(tmp_path / "j")])
    assert as_json.exit_code == 0
    assert json.loads(as_json.stdout)["threshold"] == 0.4

    assert "seam ratio" in result.stdout and "about 1 = seamless" in result.stdout

    missing = runner.invoke(app, ["eval", str(mapped_samples), "--labels",
                                  str(tmp_path / "no.gpkg")])
    assert missing.exit_code == 2
    assert missing.stderr.strip() == (f"error: {tmp_path / 'no.gpkg'}: the label file does not "
                                      "exist. Fix: check the --labels path.")


def test_cli_writes_its_report_to_out_with_the_config_files_settings(
        hand_archive: Path, hand_labels: Path, tmp_path: Path) -> None:
    out = hand_store(hand_archive, tmp_path / "maps.zarr")
    config = tmp_path / "eval.yaml"
    config.write_text("threshold: 0.3\n")
    result = runner.invoke(app, ["eval", str(out), "--labels", str(hand_labels), "--config",
                                 str(config), "-o", str(tmp_path / "report"), "--json"])
    assert result.exit_code == 0, result.output
    written = json.loads((tmp_path / "report" / EVAL_JSON).read_text())
    assert written == json.loads(result.stdout)
    assert written["threshold"] == 0.3 and written["scenes"]["hand"]["tp"] == 128
    assert not default_report_dir(out).exists()


def test_cli_scores_a_covered_scene_and_refuses_an_unknown_one(mapped_samples: Path,
                                                               tmp_path: Path) -> None:
    labels = str(sample_path("atlanta-labels"))
    result = runner.invoke(app, ["eval", str(mapped_samples), "--labels", labels, "--covered",
                                 "ms1", "--json", "--out", str(tmp_path / "r")])
    assert result.exit_code == 0, result.output
    found = json.loads(result.stdout)
    assert set(found["scenes"]) == {"sample_geotiff", "ms1"} and found["covered"] == ["ms1"]
    assert "ms1" not in found["not_labelled"]
    ms1 = found["scenes"]["ms1"]
    assert not ms1["labelled"] and ms1["true_buildings"] == ms1["tp"] == ms1["fn"] == 0
    assert ms1["predicted_buildings"] == ms1["object_fp"] > 0   # Rotterdam is dense with roofs
    overall = found["overall"]
    assert overall["fp"] == found["scenes"]["sample_geotiff"]["fp"] + ms1["fp"]
    assert (tmp_path / "r" / ms1["overlay"]).read_bytes()[:8] == PNG_MAGIC

    unknown = runner.invoke(app, ["eval", str(mapped_samples), "--labels", labels,
                                  "--covered", "nowhere"])
    assert unknown.exit_code == 2
    assert unknown.stderr.strip() == (
        f"error: --covered: 'nowhere' is not a scene of {mapped_samples}. Fix: name scenes of "
        f"the store: {', '.join(sorted(OutputStore.open(mapped_samples).groups))}.")


def test_matching_a_whole_scene_of_buildings_stays_small() -> None:
    # 9,801 buildings a side: a dense predicted x true histogram would need 770 MB.
    import tracemalloc

    truth = np.zeros((2000, 2000), np.int32)
    for k, (y, x) in enumerate(np.ndindex(99, 99)):
        truth[20 * y:20 * y + 15, 20 * x:20 * x + 15] = k + 1
    predicted = np.roll(truth > 0, 1, axis=1)       # every building shifted by one pixel
    tracemalloc.start()
    try:
        m = score_scene(predicted, truth).summary()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert (m["object_tp"], m["object_fp"], m["object_fn"]) == (9801, 0, 0)
    assert peak < 150e6

"""Alpha bands and GDAL mask bands at ingest: masked pixels are invalid downstream, on the
source grid and through both warped paths (average down, bilinear up); an alpha band is the
mask, never imagery; ``resflow info`` names the interpretation.

Every raster is a real GeoTIFF written by rasterio: a 38.4 m square in UTM whose top-left
quadrant is masked, at a pixel size that the default working resolution (0.3 m) keeps,
averages down or upsamples.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.enums import ColorInterp
from rasterio.transform import from_origin
from typer.testing import CliRunner

from resflow.archive import Archive
from resflow.cli import app
from resflow.config import IngestConfig
from resflow.ingestion import ingest

SIDE_M = 38.4
ORIGIN = (500000.0, 5000000.0)
CHIP = 64
#: source pixel size (m) -> how ingest brings it to the 0.3 m working grid
PIXELS = {0.3: "none", 0.15: "average", 0.6: "bilinear"}
BLACK = (slice(-12, -8), slice(-12, -8))
"""Source pixels, outside the masked quadrant, that are 0 in every band: valid data that
equals the nodata value ingest chooses for a masked 8-bit scene."""


def write_masked(path: Path, kind: str, pixel: float, dtype: str = "uint8") -> Path:
    """A 3-band RGB GeoTIFF of random pixels whose top-left quadrant is masked, by an alpha
    band (``kind="alpha"``, the 4th band) or by an internal GDAL mask (``"mask"``)."""
    n = round(SIDE_M / pixel)
    rgb = np.random.default_rng(7).integers(1, 255, size=(3, n, n)).astype(dtype)
    rgb[(slice(None), *BLACK)] = 0
    keep = np.full((n, n), 255, dtype="uint8")
    keep[:n // 2, :n // 2] = 0
    profile = {"driver": "GTiff", "width": n, "height": n, "dtype": dtype, "crs": "EPSG:32631",
               "transform": from_origin(*ORIGIN, pixel, pixel), "count": 3}
    if kind == "alpha":
        with rasterio.open(path, "w", **{**profile, "count": 4}) as dst:
            dst.colorinterp = [ColorInterp.red, ColorInterp.green, ColorInterp.blue,
                               ColorInterp.alpha]
            dst.write(np.concatenate([rgb, keep[None].astype(dtype)]))
    else:
        with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True), \
                rasterio.open(path, "w", **profile) as dst:
            dst.colorinterp = [ColorInterp.red, ColorInterp.green, ColorInterp.blue]
            dst.write(rgb)
            dst.write_mask(keep)
    return path


def scene_validity(archive: Archive, name: str) -> np.ndarray:
    """The scene's ``valid`` pixels as the models read them, chip by chip."""
    info = archive.scenes[name]
    valid = np.zeros((info.height, info.width), dtype=bool)
    for ref in archive.chips([name]):
        chip = archive.read_chip(ref)
        valid[ref.y0:ref.y0 + ref.height, ref.x0:ref.x0 + ref.width] = \
            chip.valid[:ref.height, :ref.width]
    return valid


def quadrant(info) -> tuple[np.ndarray, np.ndarray]:
    """Working pixels one pixel or more inside the masked quadrant, and one pixel or more
    clear of it: a bilinear kernel reaches one pixel across the edge, and GDAL's average
    counts a source pixel that a working pixel overlaps by a rounding error."""
    a, _, c, _, e, f = info.transform[:6]
    left, top = c + a * np.arange(info.width), f + e * np.arange(info.height)
    mid_x, mid_y = ORIGIN[0] + SIDE_M / 2, ORIGIN[1] - SIDE_M / 2
    tol = 1e-6  # metres: edges that meet exactly count as meeting
    inside = (top + 2 * e >= mid_y - tol)[:, None] & (left + 2 * a <= mid_x + tol)[None, :]
    clear = (top - e <= mid_y + tol)[:, None] | (left - a >= mid_x - tol)[None, :]
    return inside, clear


@pytest.mark.parametrize("pixel", sorted(PIXELS))
@pytest.mark.parametrize("kind", ["alpha", "mask"])
def test_masked_pixels_are_invalid_on_every_grid(kind: str, pixel: float,
                                                 tmp_path: Path) -> None:
    src = write_masked(tmp_path / f"{kind}.tif", kind, pixel)
    result = ingest([src], tmp_path / "a.zarr", IngestConfig(chip=CHIP))
    assert result.ok and result.ingested == [kind], result
    archive = Archive.open(tmp_path / "a.zarr")
    info = archive.scenes[kind]
    assert info.resampling == PIXELS[pixel]
    assert info.band_names == ("red", "green", "blue") and info.rgb == (0, 1, 2)
    assert info.mask == ("alpha" if kind == "alpha" else "per_dataset")
    assert info.alpha_band == (4 if kind == "alpha" else None)
    assert info.nodata == 0 and archive.image(kind).shape[0] == 3  # the alpha band is no input

    valid = scene_validity(archive, kind)
    inside, clear = quadrant(info)
    assert inside.sum() > 0.2 * valid.size and not valid[inside].any()
    assert valid[clear].all()  # the black pixels among them included
    fractions = {(r.row, r.col): r.valid_fraction for r in archive.chips([kind])}
    assert fractions[(0, 0)] < 0.05 and fractions[(1, 1)] == 1.0
    raw = np.asarray(archive.image(kind)[...])
    assert (raw[:, inside] == 0).all()  # masked pixels are stored as the scene's nodata


def test_valid_pixels_equal_to_the_chosen_nodata_stay_valid(tmp_path: Path) -> None:
    src = write_masked(tmp_path / "rgba.tif", "alpha", 0.3)
    ingest([src], tmp_path / "a.zarr", IngestConfig(chip=CHIP))
    archive = Archive.open(tmp_path / "a.zarr")
    black = np.asarray(archive.image("rgba")[(slice(None), *BLACK)])
    assert (black[0] == 1).all() and (black[1:] == 0).all()  # one grey level off nodata
    assert scene_validity(archive, "rgba")[BLACK].all()
    assert ingest([src], tmp_path / "a.zarr", IngestConfig(chip=CHIP)).skipped == ["rgba"]


def test_float_alpha_masks_with_nan(tmp_path: Path) -> None:
    src = write_masked(tmp_path / "f.tif", "alpha", 0.15, dtype="float32")
    with rasterio.open(src) as ds:  # GDAL's own mask flags ignore a float alpha band
        assert [c.name for c in ds.colorinterp][3] == "alpha"
    ingest([src], tmp_path / "a.zarr", IngestConfig(chip=CHIP))
    archive = Archive.open(tmp_path / "a.zarr")
    info = archive.scenes["f"]
    assert np.isnan(info.nodata) and info.mask == "alpha"
    inside, clear = quadrant(info)
    assert np.isnan(np.asarray(archive.image("f")[...])[:, inside]).all()
    valid = scene_validity(archive, "f")
    assert not valid[inside].any() and valid[clear].all()


def test_an_rgb_override_naming_the_alpha_band_is_refused(tmp_path: Path) -> None:
    src = write_masked(tmp_path / "rgba.tif", "alpha", 0.3)
    result = ingest([src], tmp_path / "a.zarr", rgb=(3, 1, 0))
    (refusal,) = result.refused
    assert "band 4" in refusal["problem"] and "alpha band" in refusal["problem"]
    assert "1,2,3" in refusal["fix"]
    assert ingest([src], tmp_path / "b.zarr", rgb=(2, 1, 0)).ok


def test_info_names_the_band_interpretation(tmp_path: Path) -> None:
    sources = [write_masked(tmp_path / "rgba.tif", "alpha", 0.3),
               write_masked(tmp_path / "masked.tif", "mask", 0.3)]
    out = tmp_path / "a.zarr"
    runner = CliRunner()
    assert runner.invoke(app, ["ingest", *map(str, sources), "--out", str(out)]).exit_code == 0
    text = runner.invoke(app, ["info", str(out)]).stdout
    assert "rgba: 128x128 px, 3 bands red,green,blue (+ alpha mask, band 4) (uint8, nodata 0.0)" \
        in text, text
    assert "masked: 128x128 px, 3 bands red,green,blue (+ GDAL mask band)" in text, text
    assert text.count("R,G,B from bands 1,2,3") == 2, text
    scenes = {s["name"]: s for s in json.loads(
        runner.invoke(app, ["info", str(out), "--json"]).stdout)["scenes"]}
    assert scenes["rgba"]["mask"] == "alpha" and scenes["rgba"]["alpha_band"] == 4
    assert scenes["masked"]["mask"] == "per_dataset" and scenes["masked"]["rgb_bands"] == [1, 2, 3]

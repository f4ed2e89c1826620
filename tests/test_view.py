"""``resflow view``: the session's mapped samples as one HTML page that needs no network.

The page holds every layer inline (no web address for a script or a style sheet), its
footprints are the export's buildings in longitude/latitude inside their scene's bounds,
its mask images hold the store's building pixels, a scene larger than ``--max-px`` is
downsampled and the page and the command say so, and a moved archive leaves the maps
without imagery, said so. In a real headless Chromium the page draws the map: the mask's
building colour covers about the store's share of building pixels of the scene on screen,
and one outline per building.
"""

from __future__ import annotations

import base64
import inspect
import io
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from pyproj import CRS, Transformer
from typer.testing import CliRunner

import resflow
from resflow.cli import app
from resflow.commands.view import view_command
from resflow.errors import ResflowError
from resflow.exports.footprints import scene_footprints
from resflow.exports.map_page import BUILDING_RGB, COORDINATE_DIGITS, MAX_PX, write_map_page
from resflow.exports.settings import default_min_building_m2
from resflow.store.reader import scene_maps
from resflow.store.writer import OutputStore

runner = CliRunner()

SCENES = ("ms1", "sample_geotiff")
"""The mapped scenes of the session's samples (``rmnp-rgb`` is too coarse to be mapped)."""

WINDOW = (1000, 800)
"""The browser window of the screenshot, pixels."""

INSTALL_CHROMIUM = "apt-get install -y --no-install-recommends chromium"


def page_layers(page: Path) -> dict[str, dict[str, Any]]:
    """The page's scenes, by name, as its script reads them."""
    found = re.search(r'<script type="application/json" id="scenes">(.*?)</script>',
                      page.read_text(), flags=re.DOTALL)
    assert found, "the page holds no scene data"
    return {layer["scene"]: layer for layer in json.loads(found.group(1))}


def png_pixels(uri: str) -> np.ndarray:
    """A PNG data URI's pixels, rows x columns x RGBA."""
    prefix = "data:image/png;base64,"
    assert uri.startswith(prefix), uri[:40]
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(uri[len(prefix):]))).convert("RGBA"))


def building_pixels(rgba: np.ndarray) -> int:
    return int(np.all(rgba == (*BUILDING_RGB, 255), axis=-1).sum())


def coordinates(geometry: dict[str, Any]) -> np.ndarray:
    """Every vertex of a GeoJSON Polygon or MultiPolygon, as ``(longitude, latitude)`` rows."""
    rings = geometry["coordinates"]
    if geometry["type"] == "MultiPolygon":
        rings = [ring for polygon in rings for ring in polygon]
    return np.concatenate([np.asarray(ring, float) for ring in rings])


def web_addresses(html: str) -> list[str]:
    """``http(s)://`` sources of the page's script and style sheet elements, and any file the
    style sheets would fetch."""
    tags = re.findall(r"<(?:script|link|img|iframe)\b[^>]*>", html, flags=re.IGNORECASE)
    sources = [tag for tag in tags if re.search(r"(?:src|href)\s*=\s*[\"']?\s*(?:https?:)?//",
                                                tag, flags=re.IGNORECASE)]
    return sources + re.findall(r"url\((?!#|data:)[^)]*\)", html)


@pytest.fixture(scope="module")
def page(mapped_samples: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("view") / "maps.html"
    result = runner.invoke(app, ["view", str(mapped_samples), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert result.stdout == f"wrote {out}\n"  # no scene downsampled, the imagery found
    return out


def test_the_page_holds_every_layer_inline(page: Path, mapped_samples: Path) -> None:
    html = page.read_text()
    assert web_addresses(html) == []
    assert "<link" not in html and "sourceMappingURL" not in html
    layers = page_layers(page)
    assert set(layers) == set(SCENES)
    store = OutputStore.open(mapped_samples)
    for maps in scene_maps(store):
        layer = layers[maps.scene]
        assert layer["imagery"] is not None, maps.scene  # the archive is where the run read it
        # the warp to Web Mercator keeps the building pixels, give or take a few per cent
        stored = int((np.asarray(maps.mask[...]) == 1).sum())
        assert stored > 0
        assert building_pixels(png_pixels(layer["mask"])) == pytest.approx(stored, rel=0.05)
        # every mapped pixel has a colour of the ramp, the others none
        probability = png_pixels(layer["probability"])
        assert probability.shape == png_pixels(layer["mask"]).shape
        mapped = int((np.asarray(maps.probability[...]) != 255).sum())
        assert int((probability[..., 3] == 255).sum()) == pytest.approx(mapped, rel=0.05)


def test_footprints_are_the_exports_in_lon_lat_inside_the_scene(page: Path,
                                                                mapped_samples: Path) -> None:
    layers = page_layers(page)
    store = OutputStore.open(mapped_samples)
    for maps in scene_maps(store):
        south, west, north, east = layers[maps.scene]["bounds"]
        height, width = maps.shape
        corners = [maps.transform @ (x, y) for x in (0, width) for y in (0, height)]
        to_wgs84 = Transformer.from_crs(CRS.from_wkt(maps.crs_wkt), "EPSG:4326",
                                        always_xy=True)
        lon, lat = to_wgs84.transform(*np.asarray(corners).T)
        # the page's bounds hold the scene's corners (to round-off), and not much more
        eps = 1e-9  # degrees: 0.1 mm
        assert west - eps <= lon.min() and lon.max() <= east + eps
        assert south - eps <= lat.min() and lat.max() <= north + eps
        assert (east - west) < 1.05 * (lon.max() - lon.min())
        features = layers[maps.scene]["footprints"]["features"]
        expected = scene_footprints(store, maps, min_building_m2=default_min_building_m2(store))
        assert len(features) == len(expected) > 0
        assert sorted(f["properties"]["area_m2"] for f in features) == pytest.approx(
            sorted(expected["area_m2"]), abs=0.05)
        vertices = np.concatenate([coordinates(f["geometry"]) for f in features])
        rounding = 10.0 ** -COORDINATE_DIGITS  # a vertex on the scene's edge, rounded out
        assert np.all((vertices[:, 0] >= west - rounding) & (vertices[:, 0] <= east + rounding))
        assert np.all((vertices[:, 1] >= south - rounding) & (vertices[:, 1] <= north + rounding))


def test_a_large_scene_is_downsampled_and_says_so(mapped_samples: Path, tmp_path: Path) -> None:
    out = tmp_path / "small.html"
    result = runner.invoke(app, ["view", str(mapped_samples), "-o", str(out), "--max-px", "500",
                                 "--scene", "sample_geotiff"])
    assert result.exit_code == 0, result.output
    note = "sample_geotiff: downsampled, 1 pixel in 3 drawn along each side (1500 x 1500 px"
    assert f"note: {note}" in result.stdout
    assert note in out.read_text()
    layers = page_layers(out)
    assert set(layers) == {"sample_geotiff"}
    mask = png_pixels(layers["sample_geotiff"]["mask"])
    assert 500 <= max(mask.shape[:2]) <= 530  # 500 strided, a little more once warped


def test_footprints_past_the_page_cap_are_left_out_and_said(
        mapped_samples: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With the cap at the first scene's buildings, that scene is drawn whole and every
    later scene's footprints are left out (never vectorised), each named in a note."""
    from resflow.exports import map_page

    store = OutputStore.open(mapped_samples)
    first, *later = scene_maps(store)
    count = len(scene_footprints(store, first, min_building_m2=default_min_building_m2(store)))
    monkeypatch.setattr(map_page, "MAX_BUILDINGS", count)
    page = write_map_page(mapped_samples, tmp_path / "capped.html")
    shown = {scene.scene: scene for scene in page.scenes}
    assert shown[first.scene].buildings == count and not shown[first.scene].footprints_left_out
    assert later and all(shown[m.scene].footprints_left_out for m in later)
    assert all(f"{m.scene}: footprints left out" in " ".join(page.notes) for m in later)
    assert page_layers(page.path)[later[0].scene]["footprints"] is None


def test_a_moved_archive_leaves_the_maps_without_imagery(mapped_samples: Path,
                                                         tmp_path: Path) -> None:
    moved = tmp_path / "maps.zarr"
    shutil.copytree(mapped_samples, moved)
    root = json.loads((moved / "zarr.json").read_text())
    root["attributes"]["run_config"]["archive"] = str(tmp_path / "gone.zarr")
    (moved / "zarr.json").write_text(json.dumps(root))
    page = write_map_page(moved, tmp_path / "page.html", scenes=["ms1"])
    assert page.notes == [f"no imagery: the archive the run read ({tmp_path / 'gone.zarr'}) "
                          "is not readable from here"]
    layer = page_layers(page.path)["ms1"]
    assert layer["imagery"] is None and building_pixels(png_pixels(layer["mask"])) > 0


def test_bad_requests_are_refused_in_one_line(mapped_samples: Path, tmp_path: Path) -> None:
    out = tmp_path / "page.html"
    unknown = runner.invoke(app, ["view", str(mapped_samples), "-o", str(out),
                                  "--scene", "nowhere"])
    assert unknown.exit_code == 2
    assert unknown.stderr == (f"error: {mapped_samples}: scene 'nowhere': not a scene of this "
                              "output. Fix: name one of ms1, sample_geotiff.\n"), unknown.stderr
    tiny = runner.invoke(app, ["view", str(mapped_samples), "-o", str(out), "--max-px", "0"])
    assert tiny.exit_code == 2 and "Invalid value for '--max-px'" in tiny.output, tiny.output
    with pytest.raises(ResflowError, match=r"^max_px: 0 pixels is no image"):
        resflow.view(mapped_samples, out, max_px=0)
    url = runner.invoke(app, ["view", str(mapped_samples), "-o", "s3://bucket/page.html"])
    assert url.exit_code == 2 and url.stderr.startswith("error: --out: 's3://bucket/page.html'")
    assert not out.exists()


def test_the_python_call_writes_the_same_page(mapped_samples: Path, page: Path,
                                              tmp_path: Path) -> None:
    written = resflow.view(mapped_samples, tmp_path / "api.html")
    assert written == tmp_path / "api.html"
    assert written.read_text() == page.read_text()


def test_the_flag_default_is_the_pages() -> None:
    assert inspect.signature(view_command).parameters["max_px"].default == MAX_PX


# --- in a real browser ---------------------------------------------------------------------

@pytest.fixture
def browser() -> str:
    """Chromium's path; the test skips, saying how to install it, where it is missing (asked
    for first, so no store is mapped for a test that skips)."""
    found = shutil.which("chromium")
    if found is None:
        pytest.skip(f"chromium is not installed: `{INSTALL_CHROMIUM}` (as root, on Debian or "
                    "Ubuntu) runs the browser check")
    return found


def browse(browser: str, page: Path, profile: Path, *args: str) -> subprocess.CompletedProcess:
    """``page`` in headless Chromium, scripts given 5 s of virtual time to finish."""
    return subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
         f"--user-data-dir={profile}", f"--window-size={WINDOW[0]},{WINDOW[1]}",
         "--virtual-time-budget=5000", *args, page.resolve().as_uri()],
        capture_output=True, text=True, timeout=120, check=True)


def test_a_browser_draws_the_map(browser: str, mapped_samples: Path, tmp_path: Path) -> None:
    page = write_map_page(mapped_samples, tmp_path / "atlanta.html", scenes=["sample_geotiff"])
    screenshot = tmp_path / "atlanta.png"
    browse(browser, page.path, tmp_path / "profile", f"--screenshot={screenshot}")
    shot = np.asarray(Image.open(screenshot).convert("RGB")).astype(int)
    assert shot.shape == (WINDOW[1], WINDOW[0], 3)
    red, green, blue = shot[..., 0], shot[..., 1], shot[..., 2]
    # the mask's red at 60 % over grey imagery: red stays 137 above green and blue
    building = (red - np.maximum(green, blue)) > 100
    background = np.all(shot == 221, axis=-1)  # Leaflet's map colour where no scene is
    scene_share = 1 - background.mean()
    assert 0.2 < scene_share < 0.95  # the map opened fitted to the scene, not blank
    assert shot[~background].std() > 30  # imagery, not one flat colour
    mask = np.asarray(OutputStore.open(mapped_samples).read_array("sample_geotiff", "mask")[...])
    stored_share = float((mask == 1).mean())
    drawn = float(building.mean()) / scene_share
    print(f"building colour: {building.mean():.4f} of the screenshot, {drawn:.4f} of the scene "
          f"on screen; the store's mask: {stored_share:.4f}")
    # outlines over the mask's edges and the legend over the scene take some of it
    assert 0.4 * stored_share < drawn < 1.3 * stored_share

    dom = browse(browser, page.path, tmp_path / "profile", "--dump-dom").stdout
    buildings = len(page_layers(page.path)["sample_geotiff"]["footprints"]["features"])
    assert dom.count('class="resflow-footprint leaflet-interactive"') == buildings
    assert len(re.findall(r'<img [^>]*class="leaflet-image-layer', dom)) == 2  # imagery, mask
    # a box per layer, all but the probability ticked
    boxes = re.findall(r'<input type="checkbox" class="leaflet-control-layers-selector"'
                       r'( checked="")?>', dom)
    assert sorted(boxes) == ["", ' checked=""', ' checked=""', ' checked=""']
    assert '<option value="0">sample_geotiff</option>' in dom  # the scene to zoom to

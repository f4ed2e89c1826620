"""The labelled places of the accuracy study, read from ``places.json``.

``../shared/data/fair/places.json`` (beside the project, never copied into it; see
``../shared/data/PROVENANCE.md``) groups scene files and label files into places: a place is
what leave-one-place-out holds out whole, so scenes that lie together (Banepa's three) are
one place. A place added there is picked up by the study and the default gallery without a
code change. A place whose files are not all on disk is skipped with a warning naming it
and the missing files, so one absent download does not stop the others.

The SpaceNet Atlanta tile bundled with resflow (:data:`ATLANTA`) is not in ``places.json``;
the study adds it as its one panchromatic satellite place.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path

from resflow.errors import InputError
from resflow.samples import sample_path

FAIR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "fair"
"""The shared labelled drone imagery, ``../shared/data/fair`` from the project root."""
PLACES_JSON = FAIR / "places.json"


@dataclass(frozen=True)
class Place:
    """One place: the scene rasters and the footprint files that label them.

    Examples
    --------
    >>> Place("kampala", (Path("fair/kampala-1.tif"),), ()).scene_names
    ['kampala-1']
    """

    name: str
    scenes: tuple[Path, ...]
    labels: tuple[Path, ...]

    @property
    def scene_names(self) -> list[str]:
        """The scenes' names in an archive (``resflow ingest`` names a scene by file stem)."""
        return [path.stem for path in self.scenes]

    def missing(self) -> list[Path]:
        """Files of the place that are not on disk."""
        return [path for path in (*self.scenes, *self.labels) if not path.is_file()]


ATLANTA = Place("atlanta", (sample_path("atlanta-pan"),), (sample_path("atlanta-labels"),))
"""The SpaceNet Atlanta tile and its 43 footprints, bundled with resflow."""


def load_places(path: Path | str = PLACES_JSON) -> list[Place]:
    """The places of ``places.json`` whose files are all on disk, in the file's order.

    File names are relative to the file's folder; keys starting with ``_`` are notes.

    Raises
    ------
    InputError
        ``path`` missing or not a JSON object of places with ``scenes`` and ``labels``.

    Warns
    -----
    UserWarning
        One per place skipped because some of its files are missing, naming them.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(str(path), "the list of labelled places does not exist",
                         "put the shared fAIr data at ../shared/data/fair beside the project "
                         "(see ../shared/data/PROVENANCE.md)")
    try:
        doc = json.loads(path.read_text())
        places = [Place(name, tuple(path.parent / f for f in entry["scenes"]),
                        tuple(path.parent / f for f in entry["labels"]))
                  for name, entry in doc.items() if not name.startswith("_")]
    except (json.JSONDecodeError, AttributeError, KeyError, TypeError) as err:
        raise InputError(str(path), f"not a JSON object of places with 'scenes' and "
                         f"'labels' lists ({type(err).__name__}: {err})",
                         "restore it from ../shared/data/fair") from None
    found = []
    for place in places:
        missing = place.missing()
        if missing:
            warnings.warn(f"{path}: place {place.name!r} skipped: missing "
                          + ", ".join(p.name for p in missing), stacklevel=2)
        else:
            found.append(place)
    return found

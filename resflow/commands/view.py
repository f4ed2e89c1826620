"""``resflow view``: a finished run as one HTML map page that opens with no network."""

from __future__ import annotations

import logging
from typing import Annotated

import typer

from resflow.commands.options import local_path
from resflow.commands.refusals import exit_2_on_refusal

logger = logging.getLogger(__name__)


def register(app: typer.Typer) -> None:
    """Add the ``view`` command to the CLI."""
    app.command("view")(view_command)


@exit_2_on_refusal
def view_command(
    store: Annotated[str, typer.Argument(  # str, not Path: an s3:// URL keeps its slashes
        metavar="STORE", help="a complete output store: a folder such as maps.zarr, or a URL")],
    out: Annotated[str | None, typer.Option(
        "--out", "-o", metavar="FILE", help="the HTML page to write, on local disk; replaced "
        "if there (default: STORE's folder/<STORE>-view.html)")] = None,
    scene: Annotated[list[str] | None, typer.Option(
        "--scene", metavar="SCENE", help="show this scene only (repeatable; default: every "
        "scene)")] = None,
    max_px: Annotated[int, typer.Option(
        "--max-px", min=1, help="longest side of a scene's images, pixels: a larger scene "
        "is downsampled to it, and the page says so")] = 2048,
) -> None:
    """Write the maps of STORE (a finished `resflow run`) as one self-contained HTML page.

    Per scene: the imagery the run read (when its archive is still there), the building
    mask, the probability and the building footprints (click one for its area in m^2), each
    toggled in a layer control; the map opens fitted to the scenes. Leaflet and every layer
    are inside the file: it opens in a browser with no network and can be mailed as is.
    Exit codes: 0 written; 2 refused (an incomplete or missing output, an unknown scene, a
    folder in the way), with one line naming the problem and the fix.
    """
    from resflow.exports.map_page import write_map_page

    page = write_map_page(store, local_path("--out", out, "write the page to a local file, "
                                            "then copy it"), scenes=scene, max_px=max_px)
    for note in page.notes:
        typer.echo(f"note: {note}")
    typer.echo(f"wrote {page.path}")

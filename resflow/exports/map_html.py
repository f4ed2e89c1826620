"""The map page's HTML: Leaflet inlined, the layers as JSON, the script that places them.

Kept apart from :mod:`resflow.exports.map_page`, which reads the store and makes the
layers, so the page's markup and script read in one place.
"""

from __future__ import annotations

import html
import json
import re
from pathlib import Path
from typing import Any

from resflow.exports.cog import RAMP_ENDS

BUILDING_RGB = (255, 26, 13)
"""The mask's building colour: the quicklooks' red."""

LEAFLET = Path(__file__).with_name("leaflet")
"""Leaflet 1.9.4 from npm, unchanged (``PROVENANCE.md`` there)."""


def _leaflet() -> tuple[str, str]:
    """Leaflet's script and style sheet, ready to inline: no source map comment and no
    image the page does not bundle (marker icons, the collapsed layer control's icon)."""
    script = (LEAFLET / "leaflet.js").read_text(encoding="utf-8")
    script = re.sub(r"\n//# sourceMappingURL=\S+\s*$", "\n", script)
    style = re.sub(r"url\(images/[^)]*\)", "none",
                   (LEAFLET / "leaflet.css").read_text(encoding="utf-8"))
    return script, style


def page_html(title: str, layers: list[dict[str, Any]], notes: list[str]) -> str:
    """The page: Leaflet, the layers as JSON, the script that places them, the notes."""
    script, style = _leaflet()
    items = "".join(f"<li>{html.escape(note)}</li>" for note in notes)
    values = {
        "TITLE": html.escape(title), "LEAFLET_CSS": style, "LEAFLET_JS": script,
        "NOTES": f"<ul>{items}</ul>" if items else "",
        "RAMP": "linear-gradient(to right, {}, {})".format(
            *("rgb({},{},{})".format(*end) for end in RAMP_ENDS)),
        "BUILDING": "rgb({},{},{})".format(*BUILDING_RGB),
        # no "<" at all inside the JSON script element, so no scene name can end it
        "SCENES": json.dumps(layers, separators=(",", ":")).replace("<", "\\u003c")}
    # one pass, so no inlined text is searched for markers again
    return re.sub(r"%([A-Z_]+)%", lambda marker: values[marker.group(1)], PAGE)


PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>resflow: %TITLE%</title>
<style>%LEAFLET_CSS%</style>
<style>
html, body, #map { height: 100%; margin: 0; }
#legend { position: absolute; right: 10px; bottom: 10px; z-index: 1000; max-width: 40em;
  padding: 6px 10px; background: rgba(255,255,255,0.9); border-radius: 4px;
  font: 12px/1.4 sans-serif; }
#legend ul { margin: 4px 0 0; padding-left: 1.2em; }
.swatch { display: inline-block; width: 12px; height: 12px; vertical-align: middle; }
.ramp { display: inline-block; width: 80px; height: 10px; vertical-align: middle;
  background: %RAMP%; }
.resflow-pixels { image-rendering: pixelated; }
</style>
</head>
<body>
<div id="map"></div>
<div id="legend"><b>resflow: %TITLE%</b><br>
<span class="swatch" style="background: %BUILDING%"></span> buildings (mask)
&nbsp; probability 0 <span class="ramp"></span> 1
&nbsp; footprints: click one for its area<br>
<label>zoom to <select id="zoom"><option value="">every scene</option></select></label>
%NOTES%</div>
<script>%LEAFLET_JS%</script>
<script type="application/json" id="scenes">%SCENES%</script>
<script>
(function () {
  var scenes = JSON.parse(document.getElementById("scenes").textContent);
  var map = L.map("map", {zoomSnap: 0.25, attributionControl: false});
  var panes = {imagery: 350, probability: 400, mask: 410, footprints: 450};
  Object.keys(panes).forEach(function (name) {
    map.createPane(name).style.zIndex = panes[name];
  });
  var groups = {imagery: L.layerGroup(), mask: L.layerGroup(),
                probability: L.layerGroup(), footprints: L.layerGroup()};
  var all = null;
  var extents = [];
  var zoom = document.getElementById("zoom");
  scenes.forEach(function (s) {
    var b = L.latLngBounds([s.bounds[0], s.bounds[1]], [s.bounds[2], s.bounds[3]]);
    all = all ? all.extend(b) : L.latLngBounds(b.getSouthWest(), b.getNorthEast());
    var option = document.createElement("option");
    option.value = extents.push(b) - 1;
    option.textContent = s.scene;
    zoom.appendChild(option);
    if (s.imagery) {
      L.imageOverlay(s.imagery, b, {pane: "imagery", className: "resflow-imagery"})
        .addTo(groups.imagery);
    }
    L.imageOverlay(s.probability, b, {pane: "probability", opacity: 0.7,
                                      className: "resflow-pixels resflow-probability"})
      .addTo(groups.probability);
    L.imageOverlay(s.mask, b, {pane: "mask", opacity: 0.6,
                               className: "resflow-pixels resflow-mask"})
      .addTo(groups.mask);
    if (s.footprints) {
      L.geoJSON(s.footprints, {pane: "footprints",
                               style: {color: "#00e5ff", weight: 1.5, fillOpacity: 0,
                                       className: "resflow-footprint"}})
        .bindPopup(function (layer) {
          var box = document.createElement("div");  // text only: no markup from the data
          var p = layer.feature.properties;
          box.textContent = "building, " + p.area_m2.toFixed(1) + " m\\u00b2, mean "
            + "probability " + p.prob_mean.toFixed(2) + ", scene " + s.scene;
          return box;
        })
        .addTo(groups.footprints);
    }
  });
  var overlays = {};
  if (scenes.some(function (s) { return s.imagery; })) {
    overlays["imagery"] = groups.imagery.addTo(map);
  }
  overlays["buildings (mask)"] = groups.mask.addTo(map);
  overlays["probability"] = groups.probability;
  overlays["footprints"] = groups.footprints.addTo(map);
  L.control.layers(null, overlays, {collapsed: false}).addTo(map);
  L.control.scale({imperial: false}).addTo(map);
  zoom.addEventListener("change", function () {
    map.fitBounds(zoom.value === "" ? all : extents[Number(zoom.value)], {padding: [20, 20]});
  });
  if (all) { map.fitBounds(all, {padding: [20, 20]}); } else { map.setView([0, 0], 2); }
})();
</script>
</body>
</html>
"""

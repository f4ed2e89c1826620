"""Catalogues in: the image files (and their acquisition times) a STAC Catalog, Collection,
ItemCollection or Item offers to ``resflow ingest``, which reads them like any other image.

A missing, unreadable or non-STAC file, or one whose Items hold no matching asset, is
refused with the asset keys, roles and media types it does hold, so the right
``asset_key`` can be chosen.

A catalogue is someone else's document, so the hrefs it names are checked before anything
is fetched (:func:`checked_href`, :class:`HrefPolicy`): only the schemes in :data:`SCHEMES`;
local files only when the catalogue itself is local, and inside its folder unless the user
opts in; web addresses only when the user opts in, never a link-local or cloud metadata
address, and no address of this machine or its private network from a remote catalogue;
never a GDAL virtual file system path (``/vsi...``). A refused href is refused by name,
the others still ingest.
"""

from __future__ import annotations

import ipaddress
import json
import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pystac

from resflow.errors import InputError

SCHEMES = frozenset({"http", "https", "s3", "gs", "az"})
"""URL schemes a catalogue's asset may name (local paths and ``file://`` too, when the
catalogue is a local file; ``http``/``https`` only with :attr:`HrefPolicy.web`)."""

WEB = frozenset({"http", "https"})

METADATA_HOSTS = frozenset({"metadata.google.internal", "metadata", "instance-data",
                            "metadata.azure.internal"})
"""Host names of cloud instance metadata services, refused whatever they resolve to."""


@dataclass(frozen=True)
class HrefPolicy:
    """What the user lets a catalogue's hrefs reach beyond the safe default.

    ``web``: fetch the ``http``/``https`` addresses a catalogue names (``--stac-web``);
    without it they are refused, since a catalogue could make ingest fetch any web address
    this machine reaches. ``outside``: follow a local catalogue's hrefs that lead out of its
    folder (``--stac-outside``; resflow's own exported catalogues name ``../cog/...``).
    """

    web: bool = False
    outside: bool = False


SAFE = HrefPolicy()
"""The default: no web addresses, nothing outside a local catalogue's folder."""


def _is_tiff(asset: pystac.Asset) -> bool:
    if asset.media_type:
        return asset.media_type.split(";")[0].strip().lower() == "image/tiff"
    return asset.href.lower().split("?")[0].endswith((".tif", ".tiff"))


def _read(path: str) -> tuple[str, list[pystac.Item]]:
    """The STAC document's type and its Items (a Catalog or Collection is walked down)."""
    try:
        document = json.loads(pystac.StacIO.default().read_text(path))
    except FileNotFoundError:
        raise InputError(path, "the STAC file does not exist", "check the path") from None
    except OSError as exc:
        raise InputError(path, f"the STAC file cannot be read ({exc})",
                         "check the path or URL and that it can be reached") from None
    except ValueError as exc:
        raise InputError(path, f"the STAC file cannot be read as JSON ({exc})",
                         "give a STAC Catalog, Collection, ItemCollection or Item JSON "
                         "file") from None
    kind = document.get("type") if isinstance(document, dict) else None
    try:
        if kind == "FeatureCollection":
            return kind, list(pystac.ItemCollection.from_dict(document, preserve_dict=False))
        if kind == "Feature":
            return kind, [pystac.Item.from_dict(document, href=path)]
        if kind in ("Catalog", "Collection"):
            catalog = pystac.read_dict(document, href=path)
            if isinstance(catalog, pystac.Catalog):
                return kind, list(catalog.get_items(recursive=True))
    except (pystac.STACError, KeyError, TypeError, ValueError) as exc:
        raise InputError(path, f"the {kind} is not valid STAC ({exc})",
                         "check the file against the STAC specification") from None
    raise InputError(path, f"the JSON is not STAC (type {kind!r})", "give a STAC Catalog, "
                     "Collection, ItemCollection (FeatureCollection) or Item (Feature)")


def _hrefs(items: list[pystac.Item], path: str, asset_key: str | None
           ) -> Iterator[tuple[pystac.Item, str]]:
    """``(item, absolute href)`` of each chosen TIFF asset."""
    for item in items:
        for key, asset in item.assets.items():
            chosen = key == asset_key if asset_key else "data" in (asset.roles or [])
            if chosen and _is_tiff(asset):
                # an ItemCollection's Items have no location of their own: use the file's
                yield item, asset.get_absolute_href() or pystac.utils.make_absolute_href(
                    asset.href, path)


def acquired(item: pystac.Item) -> str | None:
    """The Item's acquisition time as ISO 8601 UTC: its ``datetime``, or the start of its
    ``start_datetime``/``end_datetime`` range where ``datetime`` is null."""
    when = item.datetime or item.common_metadata.start_datetime
    if when is None:
        return None
    return (when if when.tzinfo else when.replace(tzinfo=UTC)).astimezone(UTC).isoformat()


def checked_href(href: str, catalogue: str, item_id: str,
                 policy: HrefPolicy = SAFE) -> str:
    """``href`` if a catalogue at ``catalogue`` may name it for ingest under ``policy``.

    Raises
    ------
    InputError
        A GDAL virtual file system path (``/vsicurl/``, ``/vsizip/``...), a scheme outside
        :data:`SCHEMES`, a local file named by a remote catalogue or (without
        ``policy.outside``) outside a local catalogue's folder, a web address without
        ``policy.web``, or a host that is a link-local or cloud metadata address (or, from a
        remote catalogue, this machine or its private network).
    """
    where = f"{catalogue}: Item {item_id!r}, asset {href}"
    if "/vsi" in href.lower():
        raise InputError(where, "the href is a GDAL virtual file system path (/vsi...), "
                         "which could make GDAL read archives or URLs the catalogue hides",
                         "ask the publisher for a plain http(s) or object-storage href")
    scheme = urlsplit(href).scheme.lower()
    remote_catalogue = urlsplit(catalogue).scheme.lower() in SCHEMES
    if scheme in ("", "file"):
        if remote_catalogue:
            raise InputError(where, "a remote catalogue names a local file, which would make "
                             "ingest read this machine's files", "ingest only catalogues "
                             "whose assets are on the publisher's servers")
        if not policy.outside:
            _refuse_outside(href, catalogue, where)
        return href
    if scheme not in SCHEMES:
        raise InputError(where, f"the href's scheme {scheme!r} is not one resflow fetches "
                         f"({', '.join(sorted(SCHEMES))}, or local files for a local "
                         "catalogue)", "ask the publisher for an http(s) or object-storage "
                         "href")
    if scheme in WEB:
        if not policy.web:
            raise InputError(where, "the catalogue names a web address, and ingest fetches "
                             "web addresses a catalogue names only when asked",
                             "pass --stac-web (or --set stac_web=true) if you trust this "
                             "catalogue's publisher")
        _refuse_host(urlsplit(href).hostname or "", where, remote_catalogue)
    return href


def _refuse_outside(href: str, catalogue: str, where: str) -> None:
    """Refuse a local href that leads out of the local catalogue's folder (links
    resolved)."""
    path = Path(unquote(urlsplit(href).path) if href.lower().startswith("file:") else href)
    folder = Path(catalogue).resolve().parent
    if not path.resolve().is_relative_to(folder):
        raise InputError(where, f"the href leads outside the catalogue's folder {folder}",
                         "pass --stac-outside (or --set stac_outside=true) if you trust the "
                         "catalogue, or move its files beside it")


def _refuse_host(host: str, where: str, remote_catalogue: bool) -> None:
    """Refuse a web host that is a cloud metadata service or link-local, or, named by a
    remote catalogue, this machine or its private network (every address it resolves to
    is checked)."""
    if host.lower().rstrip(".") in METADATA_HOSTS:
        raise InputError(where, f"the host {host} is a cloud metadata service",
                         "remove the asset; ingest never fetches metadata addresses")
    try:
        addresses = {ipaddress.ip_address(info[4][0].split("%")[0])
                     for info in socket.getaddrinfo(host, None)}
    except (OSError, ValueError):
        return  # not resolvable here: fetching it fails later with its own refusal
    for address in addresses:
        if address.is_link_local or address.is_multicast or address.is_unspecified:
            raise InputError(where, f"the host {host} is a link-local or reserved address "
                             f"({address}), where cloud metadata services answer",
                             "remove the asset; ingest never fetches such addresses")
        if remote_catalogue and (address.is_loopback or address.is_private):
            raise InputError(where, f"a remote catalogue names the host {host} ({address}), "
                             "an address of this machine or its private network",
                             "ingest only catalogues whose assets are on the publisher's "
                             "servers")


def stac_sources(path: Path | str, *, asset_key: str | None = None,
                 policy: HrefPolicy = SAFE,
                 refused: list[InputError] | None = None,
                 times: dict[str, str] | None = None) -> list[str]:
    """The GeoTIFF hrefs (absolute paths or URLs) a STAC file offers for ingest.

    Parameters
    ----------
    path
        A STAC Catalog or Collection (walked down to every Item), an ItemCollection (for
        example a STAC API search result saved to a file) or a single Item; a local path or
        a URL.
    asset_key
        Take each Item's asset of this key (``"visual"``, ``"B04"``); default: every asset
        whose roles include ``"data"``. Either way only TIFF assets (media type
        ``image/tiff``, COGs included, or a ``.tif``/``.tiff`` href without a media type).
    policy
        What the user lets hrefs reach beyond the default (:class:`HrefPolicy`).
    refused
        Where hrefs the catalogue may not name (:func:`checked_href`) are put, one
        :class:`InputError` each, while the others are returned; without it the first such
        href is raised.
    times
        Where each returned href's acquisition time is put (:func:`acquired`, from its
        Item), for hrefs whose Item has one: a catalogue dates its imagery better than a
        GeoTIFF's ``TIFFTAG_DATETIME``, which often holds the file's processing time.

    Returns
    -------
    list of str
        Each href once, in Item order; relative hrefs resolved against the Item (or the
        file, for an ItemCollection).

    Raises
    ------
    InputError
        The file is missing, not JSON or not STAC, holds no Item, or no asset matches,
        naming the asset keys, roles and media types it does hold; or it names an href it
        may not (without ``refused``).

    Examples
    --------
    >>> stac_sources("search.json", asset_key="visual")  # doctest: +SKIP
    ['https://example.com/S2A_..._TCI.tif', ...]
    """
    where = os.fspath(path)
    kind, items = _read(where)
    if not items:
        raise InputError(where, f"the {kind} holds no Items", "give a STAC file with Items")
    chosen: dict[str, pystac.Item] = {}  # href -> the first Item naming it
    for item, href in _hrefs(items, where, asset_key):
        chosen.setdefault(href, item)
    if not chosen:
        assets = sorted({f"{key} (roles {asset.roles or []}, {asset.media_type or 'no type'})"
                         for item in items for key, asset in item.assets.items()})
        wanted = f"asset {asset_key!r}" if asset_key else "asset with role 'data'"
        raise InputError(where, f"none of its {len(items)} Items has a GeoTIFF {wanted}; "
                         f"assets found: {', '.join(assets) or 'none'}",
                         "choose the image's asset key (for example `visual`), or give a "
                         "STAC file whose Items hold GeoTIFF assets")
    hrefs = []
    for href, item in chosen.items():
        try:
            hrefs.append(checked_href(href, where, item.id, policy))
        except InputError as err:
            if refused is None:
                raise
            refused.append(err)
            continue
        if times is not None and (when := acquired(item)):
            times[hrefs[-1]] = when
    return hrefs

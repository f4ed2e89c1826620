"""A PNG mosaic of sample chips per bucket: the quickest check that buckets make sense.

Rows are buckets, labelled with the bucket id, the model serving it and how many chips of
the archive it routes there; each row shows chips spread evenly over that bucket (by scene,
then position), routed exactly as inference routes them (stage 1 features, stage 2 codes).
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display on workers or CI
import matplotlib.pyplot as plt
import numpy as np
import torch

from resflow.archive import Archive
from resflow.gallery import Gallery
from resflow.stages import extract_features, map_codes

#: Most chips routed for a mosaic; larger archives are sampled evenly.
MAX_CHIPS = 512


def write_mosaic(gallery: Gallery, archive_path: Path | str, out: Path | str, *,
                 per_bucket: int = 8, halo: int = 32) -> Path:
    """Route the archive's chips through ``gallery`` and draw ``per_bucket`` chips a bucket.

    Chips are routed as a run routes them: read with ``halo`` pixels of context (the run's
    ``halo``, 32 by default) and embedded from the chip's cells of that one encoder pass.

    Returns
    -------
    Path
        The PNG written.
    """
    archive = Archive.open(archive_path)
    refs = archive.chips()
    if len(refs) > MAX_CHIPS:
        refs = [refs[i] for i in np.linspace(0, len(refs) - 1, MAX_CHIPS).astype(int)]
    reads = [archive.read_chip(ref, halo).image for ref in refs]
    extractor = gallery.feature_extractor()
    features = np.concatenate([
        extract_features(image[None], extractor, halo=halo, batch_size=1,
                         device=torch.device("cpu"))
        for image in reads]) if reads else np.zeros((0, 1280), np.float32)
    images = [image[:, halo:image.shape[1] - halo, halo:image.shape[2] - halo]
              for image in reads]
    _, buckets = map_codes(features, gallery.hashing_head(), gallery.bucket_codes)
    k = len(gallery.bucket_codes)
    fig, axes = plt.subplots(k, per_bucket, figsize=(1.6 * per_bucket + 1.6, 1.7 * k),
                             squeeze=False)
    for bucket in range(k):
        members = np.flatnonzero(buckets == bucket)
        shown = members[np.linspace(0, len(members) - 1, min(per_bucket, len(members)))
                        .astype(int)] if len(members) else []
        for col in range(per_bucket):
            ax = axes[bucket, col]
            ax.set_xticks([])
            ax.set_yticks([])
            if col < len(shown):
                i = shown[col]
                ax.imshow(np.clip(images[i].transpose(1, 2, 0), 0, 1))
                ax.set_title(f"{refs[i].scene[:14]} r{refs[i].row}c{refs[i].col}", fontsize=6)
            else:
                ax.set_frame_on(False)
        axes[bucket, 0].set_ylabel(
            f"bucket {bucket}\n{gallery.model_name(bucket)}\n{len(members)} chips",
            fontsize=8, rotation=0, ha="right", va="center")
    fig.suptitle(f"{gallery.path.name}: chips of {Path(archive_path).name} by bucket",
                 fontsize=9)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out

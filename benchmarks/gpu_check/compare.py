"""Whether the device computes what the CPU computes: the stage functions over the same
prediction windows on both, and on the device at every batch size.

The device runs bf16 or fp16 autocast (:func:`resflow.devices.autocast_dtype`), so its
outputs are held to :data:`TOLERANCES` against float32 on the CPU rather than to bit
equality; batch invariance compares the device with itself, so there any difference is
the batch's.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from benchmarks.gpu_check.options import CheckOptions

if TYPE_CHECKING:  # the check imports torch and resflow only once it runs
    import numpy as np
    import torch

    from benchmarks.engine_study.limit import Preloaded
    from resflow.gallery import Gallery

#: Tolerances of the device against the CPU (float32): measure -> (comparison, bound).
#: bf16 keeps 8 significant bits (about 0.4 % per rounding) through about 50 layers, so
#: features differ by a few per cent while their direction, the codes, the routes and the
#: masks should barely move.
TOLERANCES = {
    "feature_cosine_min": (">=", 0.99),
    "code_bit_agreement": (">=", 0.95),
    "bucket_agreement": (">=", 0.9),
    "probability_mean_abs": ("<=", 0.02),
    "mask_agreement": (">=", 0.98),
}
#: Probability above which a pixel counts as building in the mask comparison.
MASK_THRESHOLD = 0.5


def stage_outputs(data: Preloaded, gallery: Gallery, device: torch.device, batch_size: int,
                  buckets: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Features, codes and buckets of every preloaded prediction window and the probability
    of its chips, by the graph's own path: each window as stored, harmonised on ``device``,
    one encoder pass over window plus halo (:func:`resflow.stages.encode`), its maps decoded
    with its bucket's model (:func:`resflow.stages.decode`) and cut back into its chips
    (:meth:`resflow.windows.Window.crop`). Up to ``batch_size`` windows of one shape share
    a model call (the graph: one).

    ``buckets`` chooses each window's segmenter (default: its own route), so that stage 3
    can be compared on two devices with the same model even where their routes differ.
    ``probability`` is every chip's in-scene pixels, window by window, flattened.
    """
    import numpy as np

    from benchmarks.engine_study.limit import window_batches
    from resflow.model_input import SourceImages
    from resflow.stages import decode, encode, map_codes

    features, codes, routed, probability = [], [], [], []
    for batch in window_batches(np.arange(len(data.windows)), data, batch_size):
        sources = [data.stored[i] for i in batch]
        found, maps = encode(SourceImages(sources), gallery.feature_extractor(),
                             halo=data.halo, batch_size=batch_size, device=device)
        batch_codes, batch_routed = map_codes(found, gallery.hashing_head(),
                                              gallery.bucket_codes)
        serve = batch_routed if buckets is None else buckets[batch]
        padded = np.zeros((len(batch), *sources[0].valid.shape), dtype=np.float32)
        for bucket in np.unique(serve):
            index = np.flatnonzero(serve == bucket)
            padded[index] = decode([maps[i] for i in index], gallery.segmenter(int(bucket)),
                                   size=sources[0].valid.shape, batch_size=batch_size,
                                   device=device)
        features.append(found)
        codes.append(batch_codes)
        routed.append(batch_routed)
        probability += [data.windows[i].crop(window, ref, data.halo).ravel()
                        for i, window in zip(batch, padded, strict=True)
                        for ref in data.chips[i]]
    return {"features": np.concatenate(features), "codes": np.concatenate(codes),
            "buckets": np.concatenate(routed), "probability": np.concatenate(probability)}


def differences(reference: dict[str, np.ndarray], other: dict[str, np.ndarray]
                ) -> dict[str, Any]:
    """Largest absolute differences of features and probabilities, and whether every output
    is bit for bit the same."""
    import numpy as np

    return {
        "bitwise_equal": all(np.array_equal(reference[k], other[k]) for k in reference),
        "feature_max_abs": float(np.abs(reference["features"] - other["features"]).max()),
        "probability_max_abs": float(np.abs(reference["probability"]
                                            - other["probability"]).max()),
    }


def compare_outputs(reference: dict[str, np.ndarray], other: dict[str, np.ndarray]
                    ) -> dict[str, Any]:
    """How far ``other``'s outputs are from ``reference``'s, each measure against
    :data:`TOLERANCES`.

    Returns
    -------
    dict
        :func:`differences`, plus ``feature_cosine_min`` (worst chip),
        ``feature_relative_l2_max``, ``code_bit_agreement``, ``bucket_agreement``,
        ``probability_mean_abs``, ``mask_agreement`` and ``mask_iou`` (pixels above
        :data:`MASK_THRESHOLD`; ``None`` without any), and ``within`` (measure -> bool)
        with ``within_tolerance`` (all of them).
    """
    import numpy as np

    a, b = reference["features"].astype(np.float64), other["features"].astype(np.float64)
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    cosine = np.sum(a * b, axis=1) / np.where(norms > 0, norms, 1.0)
    relative = np.linalg.norm(a - b, axis=1) / np.maximum(np.linalg.norm(a, axis=1), 1e-12)
    mask_a = reference["probability"] > MASK_THRESHOLD
    mask_b = other["probability"] > MASK_THRESHOLD
    union = np.logical_or(mask_a, mask_b).sum()
    found = {
        **differences(reference, other),
        "feature_cosine_min": float(cosine.min()),
        "feature_relative_l2_max": float(relative.max()),
        "code_bit_agreement": float(np.mean(reference["codes"] == other["codes"])),
        "bucket_agreement": float(np.mean(reference["buckets"] == other["buckets"])),
        "probability_mean_abs": float(np.abs(reference["probability"]
                                             - other["probability"]).mean()),
        "mask_agreement": float(np.mean(mask_a == mask_b)),
        "mask_iou": float(np.logical_and(mask_a, mask_b).sum() / union) if union else None,
    }
    within = {measure: found[measure] >= bound if op == ">=" else found[measure] <= bound
              for measure, (op, bound) in TOLERANCES.items()}
    return {**found, "within": within, "within_tolerance": all(within.values())}


def compare_devices(data: Preloaded, gallery: Gallery, device: torch.device,
                    options: CheckOptions) -> dict[str, Any]:
    """The stage functions on the CPU (float32) and on ``device`` over the same chips, at the
    engines' batch size; stage 3 serves each chip with the CPU route's model on both."""
    import torch

    cpu = stage_outputs(data, gallery, torch.device("cpu"), options.engine_batch_size)
    other = stage_outputs(data, gallery, device, options.engine_batch_size,
                          buckets=cpu["buckets"])
    return {"windows": len(data.windows), "chips": len(data.refs),
            "batch_size": options.engine_batch_size,
            "reference": "cpu float32", "device": str(device), "tolerances": TOLERANCES,
            **compare_outputs(cpu, other)}


def batch_invariance(data: Preloaded, gallery: Gallery, device: torch.device,
                     options: CheckOptions) -> dict[str, Any]:
    """Whether a chip's outputs on ``device`` depend on the batch it runs in: every batch
    size against the first, and the first run twice (run-to-run determinism)."""
    first, *others = options.batch_sizes
    reference = stage_outputs(data, gallery, device, first)
    again = stage_outputs(data, gallery, device, first)
    points = [{"batch_size": first, **differences(reference, again), "against": "itself"}]
    for size in others:
        outputs = stage_outputs(data, gallery, device, size, buckets=reference["buckets"])
        points.append({"batch_size": size, **differences(reference, outputs),
                       "against": f"batch size {first}"})
    return {"windows": len(data.windows), "chips": len(data.refs), "device": str(device),
            "points": points}

"""Stage 3 model: a small U-Net decoder on the frozen, shared Lite0 encoder.

Every bucket model reuses one frozen ImageNet encoder and owns only a
:class:`SegmentationDecoder` (about 110 K parameters), so a worker holds the encoder once
however many buckets it serves, and the gallery stores each bucket as a small decoder-only
safetensors file.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from resflow.models.efficientnet import (
    FEATURE_CHANNELS,
    SIZE_MULTIPLE,
    EfficientNetLite0,
    pad_to_multiple,
)

#: Decoder widths from the stride-16 level down to stride 2.
DECODER_CHANNELS = (64, 48, 32, 24)
#: Width of the full-resolution head.
HEAD_CHANNELS = 16


def _conv_bn_relu(in_ch: int, out_ch: int, kernel: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, kernel, padding=kernel // 2, bias=False),
        nn.BatchNorm2d(out_ch),
        nn.ReLU(inplace=True),
    )


class UpBlock(nn.Module):
    """Upsample x2, concatenate the skip, fuse with 1x1 then refine with 3x3."""

    def __init__(self, in_ch: int, skip_ch: int, out_ch: int) -> None:
        super().__init__()
        self.fuse = _conv_bn_relu(in_ch + skip_ch, out_ch, 1)
        self.refine = _conv_bn_relu(out_ch, out_ch, 3)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
        return self.refine(self.fuse(torch.cat([x, skip], dim=1)))


class SegmentationDecoder(nn.Module):
    """U-Net decoder from Lite0 feature maps (strides 2..32) to building logits.

    Parameters
    ----------
    encoder_channels
        Channels of the encoder maps, finest first (:data:`FEATURE_CHANNELS`).
    """

    def __init__(self, encoder_channels: tuple[int, ...] = FEATURE_CHANNELS) -> None:
        super().__init__()
        skips = encoder_channels[-2::-1]  # stride 16, 8, 4, 2
        ins = (encoder_channels[-1], *DECODER_CHANNELS[:-1])
        self.ups = nn.ModuleList(
            UpBlock(i, s, o) for i, s, o in zip(ins, skips, DECODER_CHANNELS, strict=True)
        )
        self.head = _conv_bn_relu(DECODER_CHANNELS[-1], HEAD_CHANNELS, 3)
        self.classifier = nn.Conv2d(HEAD_CHANNELS, 1, 1)

    def forward(self, maps: list[torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
        """Logits ``(N, 1, *size)`` from the encoder maps of an input of ``size`` pixels."""
        x = maps[-1]
        for up, skip in zip(self.ups, maps[-2::-1], strict=True):
            x = up(x, skip)
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        return self.classifier(self.head(x))


class BuildingSegmenter(nn.Module):
    """Frozen shared encoder plus a per-bucket decoder: ``(N, 3, H, W)`` -> logits.

    The encoder's parameters are frozen and it stays in eval mode even when the segmenter
    is put in training mode, so its BatchNorm statistics stay the ImageNet ones every bucket
    shares. Only the decoder is trained and saved.

    Parameters
    ----------
    encoder
        The ImageNet Lite0 (may be the very object other segmenters hold).
    decoder
        This bucket's decoder; a fresh one when omitted.

    Examples
    --------
    >>> model = BuildingSegmenter(EfficientNetLite0()).eval()
    >>> model(torch.rand(1, 3, 64, 64)).shape
    torch.Size([1, 1, 64, 64])
    """

    def __init__(
        self, encoder: EfficientNetLite0, decoder: SegmentationDecoder | None = None
    ) -> None:
        super().__init__()
        self.encoder = encoder.eval().requires_grad_(False)
        self.decoder = decoder if decoder is not None else SegmentationDecoder()

    def train(self, mode: bool = True) -> BuildingSegmenter:
        super().train(mode)
        self.encoder.eval()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Building logits ``(N, 1, H, W)`` for images ``(N, 3, H, W)`` in ``[0, 1]``.

        Apply ``torch.sigmoid`` for probabilities; training uses the logits with
        ``BCEWithLogitsLoss``.
        """
        with torch.no_grad():
            maps = self.encoder.feature_maps(pad_to_multiple(x))
        return self.decode(maps, x.shape[-2:])

    def decode(self, maps: list[torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
        """Building logits ``(N, 1, *size)`` from the encoder maps of images of ``size``
        pixels reflect-padded to multiples of :data:`SIZE_MULTIPLE` (the maps
        :meth:`resflow.models.efficientnet.FeatureExtractor.encode` returns).

        :meth:`forward` is the encoder pass followed by this, so maps computed once for
        stage 1 give stage 3 the same logits.
        """
        height, width = size
        padded = (height + -height % SIZE_MULTIPLE, width + -width % SIZE_MULTIPLE)
        return self.decoder(maps, padded)[..., :height, :width]

    def decoder_state_dict(self) -> dict[str, torch.Tensor]:
        """The decoder's tensors only, contiguous and on the CPU, ready for safetensors."""
        return {k: v.detach().cpu().contiguous() for k, v in self.decoder.state_dict().items()}

    def load_decoder_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Load a decoder saved by :meth:`decoder_state_dict` (strict: every key must match)."""
        self.decoder.load_state_dict(state, strict=True)

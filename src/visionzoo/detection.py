"""Instance segmentation: torchvision's Mask R-CNN on any visionzoo backbone with an FPN."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

from torch import Tensor, nn
from torchvision.models.detection import MaskRCNN
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from .factory import create_model

__all__ = ["BackboneWithFPN", "mask_rcnn"]


class BackboneWithFPN(nn.Module):
    """A features_only visionzoo backbone + torchvision FPN, in the interface detectors expect.

    ``forward`` returns an OrderedDict of maps ("0", "1", ..., "pool"), each ``out_channels``
    wide; the extra "pool" level is a stride-2 max-pool of the coarsest map, as torchvision's
    own ResNet-FPN detectors have.
    """

    def __init__(self, body: nn.Module, out_channels: int = 256) -> None:
        super().__init__()
        self.body = body
        self.fpn = FeaturePyramidNetwork([fi.num_chs for fi in body.feature_info], out_channels, extra_blocks=LastLevelMaxPool())
        self.out_channels = out_channels

    def forward(self, x: Tensor) -> "OrderedDict[str, Tensor]":
        feats = self.body(x)
        return self.fpn(OrderedDict((str(i), f) for i, f in enumerate(feats)))


def mask_rcnn(
    backbone_name: str,
    num_classes: int,
    *,
    out_indices: Sequence[int] | None = None,
    out_channels: int = 256,
    checkpoint: str | None = None,
    **maskrcnn_kwargs,
) -> MaskRCNN:
    """torchvision's MaskRCNN on a visionzoo backbone (``num_classes`` includes background).

    It trains and predicts as torchvision's own: ``model(images, targets)`` returns the loss
    dict in training, ``model(images)`` a list of {boxes, labels, scores, masks} in eval.
    Extra keyword arguments (``min_size``, ``max_size``, ...) go to ``MaskRCNN``.
    """
    body = create_model(backbone_name, features_only=True, out_indices=out_indices, checkpoint=checkpoint)
    if len(body.feature_info) > 4 and out_indices is None:  # keep the four deepest maps, as ResNet-FPN does
        body = create_model(backbone_name, features_only=True, out_indices=tuple(range(len(body.feature_info)))[-4:], checkpoint=checkpoint)
    backbone = BackboneWithFPN(body, out_channels)
    return MaskRCNN(backbone, num_classes=num_classes, **maskrcnn_kwargs)

"""Dense prediction on visionzoo backbones: semantic segmentation and instance segmentation."""

from .segmentation import ASPPHead, FPNSegHead, FlowAlign, SegmentationModel, create_segmentation_model

__all__ = ["ASPPHead", "FPNSegHead", "FlowAlign", "SegmentationModel", "create_segmentation_model"]

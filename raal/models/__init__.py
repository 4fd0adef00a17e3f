"""Backbones (torchvision architectures with local weights), and adapters."""
from raal.models.backbones import Backbone, build_backbone, imagenet_categories

__all__ = ["Backbone", "build_backbone", "imagenet_categories"]

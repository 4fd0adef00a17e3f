"""raal: Ray-distributed active learning on pre-trained vision backbones."""

__version__ = "0.1.0"

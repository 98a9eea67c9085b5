"""sslkit: object- and region-level self-supervised pretraining on scene images."""

__version__ = "0.1.0"

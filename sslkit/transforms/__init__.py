"""Augmentations that carry boxes and masks with the pixels (``torchvision.transforms.v2``)."""

from sslkit.transforms.pipelines import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    GaussianBlur,
    MultiView,
    ViewAug,
    build_view,
    byol_views,
    mocov2_views,
    scale_blur,
    separable_gaussian_blur,
    simclr_views,
    to_image,
)

__all__ = [
    "IMAGENET_MEAN", "IMAGENET_STD", "GaussianBlur", "MultiView", "ViewAug", "build_view", "byol_views",
    "mocov2_views", "scale_blur", "separable_gaussian_blur", "simclr_views", "to_image",
]

"""Augmentations that carry boxes and masks with the pixels (``torchvision.transforms.v2``)."""

from sslkit.transforms.pipelines import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    GaussianBlur,
    MultiView,
    ViewAug,
    build_view,
    byol_views,
    crop_resize,
    mocov2_views,
    parse_view_aug,
    scale_blur,
    separable_gaussian_blur,
    simclr_views,
    to_image,
    tune_views,
)

__all__ = [
    "IMAGENET_MEAN", "IMAGENET_STD", "GaussianBlur", "MultiView", "ViewAug", "build_view", "byol_views", "crop_resize",
    "mocov2_views", "parse_view_aug", "scale_blur", "separable_gaussian_blur", "simclr_views", "to_image",
    "tune_views",
]

"""Guest images for vmplane VMs."""

from vmplane.images.tiny import (
    BOOT_COMPLETE_LINE,
    ImageBuildError,
    TinyImage,
    build_tiny_image,
    load_tiny_image,
    tiny_dir,
)

__all__ = [
    "BOOT_COMPLETE_LINE",
    "ImageBuildError",
    "TinyImage",
    "build_tiny_image",
    "load_tiny_image",
    "tiny_dir",
]

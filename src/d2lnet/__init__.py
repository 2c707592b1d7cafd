"""d2lnet: JPEG artifact removal with D2LNet, the Dual-Domain Learning Network (Yang, Lin, Wu, Wang)."""

from d2lnet.model import CONFIGS, D2LNet, D2LNetConfig, build
from d2lnet.pretrained import PRETRAINED, list_models, load_model
from d2lnet.restore import restore_image

__version__ = "0.1.0"

__all__ = [
    "CONFIGS",
    "D2LNet",
    "D2LNetConfig",
    "PRETRAINED",
    "build",
    "list_models",
    "load_model",
    "restore_image",
    "__version__",
]

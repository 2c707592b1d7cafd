"""d2lnet: JPEG artifact removal with D2LNet, the Dual-Domain Learning Network (Yang, Lin, Wu, Wang).

The public names are imported on first use (PEP 562), so that ``import d2lnet`` and the
``d2lnet`` command's ``--help`` and ``models`` do not pay for importing PyTorch.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# Public name -> the module that defines it.
_EXPORTS = {
    "CONFIGS": "d2lnet.model",
    "D2LNet": "d2lnet.model",
    "D2LNetConfig": "d2lnet.model",
    "build": "d2lnet.model",
    "PRETRAINED": "d2lnet.cards",
    "list_models": "d2lnet.pretrained",
    "load_model": "d2lnet.pretrained",
    "restore_image": "d2lnet.restore",
}

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

if TYPE_CHECKING:
    from d2lnet.cards import PRETRAINED
    from d2lnet.model import CONFIGS, D2LNet, D2LNetConfig, build
    from d2lnet.pretrained import list_models, load_model
    from d2lnet.restore import restore_image


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'd2lnet' has no attribute {name!r}")
    value = getattr(import_module(_EXPORTS[name]), name)
    globals()[name] = value  # imported once: later look-ups do not come here
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})

"""kws-edge export toolchain: the one CRNN definition, its frontend, checkpoints and exporters."""

from kws_export.config import CRNNConfig
from kws_export.errors import KWSError

__all__ = ["CRNNConfig", "KWSError"]
__version__ = "0.1.0"

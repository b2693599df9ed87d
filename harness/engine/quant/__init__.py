"""Linear-layer quantization seam: a quant config hands each linear its method object.

The model never branches on precision; it asks `QuantConfig.linear_method(prefix)`.
"""

from harness.engine.quant.base import LinearMethod, QuantConfig, quant_config_for
from harness.engine.quant.dense import DenseLinearMethod

__all__ = ["DenseLinearMethod", "LinearMethod", "QuantConfig", "quant_config_for"]

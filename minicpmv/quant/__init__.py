"""Weight-only int8 / int4 quantization of MiniCPM-V models."""

from .apply import QuantConfig, layer_bits, prepare_quantized_layout, quantize_model

__all__ = ["QuantConfig", "layer_bits", "prepare_quantized_layout", "quantize_model"]

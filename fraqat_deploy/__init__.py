"""fraqat-deploy: FraQAT (fractional-bit quantization-aware training) to the Hexagon NPU."""

__version__ = "0.1.0"

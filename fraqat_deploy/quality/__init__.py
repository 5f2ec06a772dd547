"""Quality metrics: how good generated images and texts are, and how close a quantized model stays to its
full-precision reference."""

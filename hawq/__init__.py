"""hawq: integer-only quantization-aware training with bit-exact integer export."""

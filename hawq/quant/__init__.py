"""Quantized modules and the integer-graph recorder."""

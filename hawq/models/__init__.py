"""Model definitions: the supported-arch registry and layer inventory live in ``hawq.models.layers``."""

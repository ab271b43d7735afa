"""metajax: optimization-based meta-learning for imaging inverse problems in JAX."""

from metajax import data, masks, metrics, models, operators

__version__ = "0.1.0"
__all__ = ["data", "masks", "metrics", "models", "operators"]

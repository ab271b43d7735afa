"""metajax: optimization-based meta-learning for imaging inverse problems in JAX."""

from metajax import adjoint, data, masks, metrics, models, operators

__version__ = "0.1.0"
__all__ = ["adjoint", "data", "masks", "metrics", "models", "operators"]

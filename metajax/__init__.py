"""metajax: optimization-based meta-learning for imaging inverse problems in JAX."""

from metajax import adjoint, bilevel, data, linear_solve, masks, metrics, models, operators

__version__ = "0.1.0"
__all__ = ["adjoint", "bilevel", "data", "linear_solve", "masks", "metrics", "models", "operators"]

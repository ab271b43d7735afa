"""Reconstruction models: classical baselines and unrolled learned networks (LOA, PDNet)."""

from metajax.models.classical import (
    finite_difference,
    finite_difference_adjoint,
    operator_norm,
    l1_wavelet_reconstruction,
    sense_reconstruction,
    tv_reconstruction,
    zero_filled,
)
from metajax.models.dcnet import DCNet, DCParams, DCPhase, ResidualCNN, data_consistency
from metajax.models.loa import LOA, LOAParams, LOAPhase, ResidualInitial, ZeroFilled, branch_counts
from metajax.models.pdnet import PDNet, PDNetParams, pdnet_phase
from metajax.models.regularizers import FeatureCNN, smoothed_l21

__all__ = [
    "finite_difference",
    "finite_difference_adjoint",
    "operator_norm",
    "tv_reconstruction",
    "sense_reconstruction",
    "l1_wavelet_reconstruction",
    "zero_filled",
    "DCNet",
    "DCParams",
    "DCPhase",
    "ResidualCNN",
    "data_consistency",
    "LOA",
    "LOAParams",
    "LOAPhase",
    "branch_counts",
    "ZeroFilled",
    "ResidualInitial",
    "PDNet",
    "PDNetParams",
    "pdnet_phase",
    "FeatureCNN",
    "smoothed_l21",
]

"""Data: image sources (embedded default set, fastMRI HDF5, NIfTI, image folders) and tasks."""

from metajax.data.fastmri import FastMRIVolume, load_fastmri
from metajax.data.sources import (
    center_crop,
    default_images,
    load_image_folder,
    load_nifti,
    normalize_per_slice,
    template_path,
)
from metajax.data.tasks import Task, split_images, stack_tasks

__all__ = [
    "FastMRIVolume",
    "load_fastmri",
    "center_crop",
    "default_images",
    "load_image_folder",
    "load_nifti",
    "normalize_per_slice",
    "template_path",
    "Task",
    "split_images",
    "stack_tasks",
]

"""Data: image sources (embedded chest set (the default), embedded brain template, fastMRI HDF5, NIfTI, image folders) and tasks."""

from metajax.data.chest import chest_file, chest_images, chest_masks, pseudo_radial_mask
from metajax.data.bart import kspace_from_cfl, read_cfl, write_cfl
from metajax.data.fastmri import FastMRIVolume, load_fastmri
from metajax.data.multicoil import MultiCoilSlice, random_coil_maps, simulate_multicoil, smooth_phase
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
    "chest_file",
    "chest_images",
    "chest_masks",
    "pseudo_radial_mask",
    "read_cfl",
    "write_cfl",
    "kspace_from_cfl",
    "MultiCoilSlice",
    "random_coil_maps",
    "simulate_multicoil",
    "smooth_phase",
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

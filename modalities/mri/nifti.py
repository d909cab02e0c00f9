"""NIfTI files in and out, with checks that name the file: discovery in a folder or a BIDS
dataset, reading one 3-D T1 volume (``read_volume``) and writing generated volumes with
their affine (``write_volume``).

Bad input raises :class:`NiftiError` naming the file and what was expected: an unreadable
or truncated file, a 4-D image (a 4-D file whose 4th axis has length 1 is squeezed), NaN voxels
(unless ``nan="background"``: masked FSL / SPM outputs), Inf voxels, a constant image (all zeros, say: no brain to find, and scaling would make it a
uniform -1), an oblique affine (rejected unless ``oblique="resample"``, which resamples it
onto an axis-aligned grid with :func:`nibabel.processing.resample_to_output`), voxels more
anisotropic than ``max_anisotropy``, a header without orientation (``qform_code`` and ``sform_code``
both 0), RGB or complex voxels, an empty folder or a BIDS dataset without T1w images, a broken
link in it (DataLad content not fetched). Hidden files (``._*``) are not images.
"""

from __future__ import annotations

import gzip
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import nibabel as nib
import numpy as np

from modaflow.core.io import atomic_write

__all__ = [
    "NiftiError",
    "Volume",
    "NIFTI_SUFFIXES",
    "find_folder",
    "find_bids",
    "parse_source",
    "find_source",
    "obliquity_deg",
    "read_volume",
    "write_volume",
]

NIFTI_SUFFIXES = (".nii", ".nii.gz")
ObliquePolicy = Literal["reject", "resample"]
NanPolicy = Literal["reject", "background"]


class NiftiError(ValueError):
    """A NIfTI file or dataset folder that cannot be used; the message names it."""


@dataclass(frozen=True)
class Volume:
    """One 3-D image.

    Attributes:
        data: voxel values, ``(X, Y, Z)`` float32.
        affine: voxel -> world (mm) matrix, ``(4, 4)`` float64.
        path: the file it was read from.
    """

    data: np.ndarray
    affine: np.ndarray
    path: Path


def _is_nifti(p: Path) -> bool:
    """A NIfTI file by name; hidden files (macOS ``._*`` resource forks, editors' ``.*``) are not
    images. A broken link (a DataLad / git-annex file whose content was never fetched) raises,
    naming it, rather than dropping that scan without a word."""
    if p.name.startswith(".") or not p.name.endswith(NIFTI_SUFFIXES):
        return False
    if p.is_symlink() and not p.exists():
        raise NiftiError(f"{p}: a broken link (DataLad / git-annex content not fetched? 'datalad get' it); "
                         f"expected a NIfTI file")
    return p.is_file()


def find_folder(root: str | Path) -> list[Path]:
    """Every ``*.nii`` / ``*.nii.gz`` file directly in ``root`` (sorted; ``~`` expanded)."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise NiftiError(f"{root}: not a folder (expected a folder of .nii / .nii.gz files)")
    files = sorted(p for p in root.iterdir() if _is_nifti(p))
    if not files:
        raise NiftiError(f"{root}: no .nii or .nii.gz files in this folder")
    return files


def find_bids(root: str | Path) -> list[Path]:
    """T1-weighted images of a BIDS dataset: ``sub-*/[ses-*/]anat/*_T1w.nii[.gz]`` (sorted; ``~``
    expanded: a shell leaves ``bids:~/data`` as it is). Contrast-enhanced scans (a ``ce-``
    entity: gadolinium changes the contrast) are left out with a warning."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise NiftiError(f"{root}: not a folder (expected a BIDS dataset root)")
    subjects = sorted(p for p in root.glob("sub-*") if p.is_dir())
    if not subjects:
        raise NiftiError(f"{root}: empty BIDS dataset: no sub-* folders")
    files: list[Path] = []
    for sub in subjects:
        for anat in [sub / "anat", *sorted(s / "anat" for s in sub.glob("ses-*"))]:
            if anat.is_dir():
                files += [p for p in anat.iterdir() if p.name.split(".nii")[0].endswith("_T1w") and _is_nifti(p)]
    enhanced = [p for p in files if any(e.startswith("ce-") for e in p.name.split(".nii")[0].split("_"))]
    if enhanced:
        warnings.warn(f"{root}: {len(enhanced)} contrast-enhanced T1w image(s) (ce- entity) left out, e.g. "
                      f"{enhanced[0].name}", UserWarning, stacklevel=2)
        files = [p for p in files if p not in enhanced]
    if not files:
        raise NiftiError(f"{root}: BIDS dataset with {len(subjects)} subject(s) but no "
                         f"sub-*/[ses-*/]anat/*_T1w.nii[.gz] image" + (" without contrast enhancement" if enhanced else ""))
    return sorted(files)


def parse_source(spec: str) -> tuple[str, str]:
    """``"bids:/path"`` -> ``("bids", "/path")``, ``"folder:/path"`` -> ``("folder", ...)``,
    ``"embedded"`` -> ``("embedded", "")``."""
    if spec == "embedded":
        return "embedded", ""
    kind, sep, where = spec.partition(":")
    if not sep or kind not in ("bids", "folder") or not where:
        raise NiftiError(f"data: expected 'embedded', 'bids:/path' or 'folder:/path'; got {spec!r}")
    return kind, where


def find_source(spec: str) -> list[Path]:
    """The NIfTI files of a ``bids:`` or ``folder:`` data spec."""
    kind, where = parse_source(spec)
    if kind == "embedded":
        raise NiftiError("data: 'embedded' has no files")
    return find_bids(where) if kind == "bids" else find_folder(where)


def obliquity_deg(affine: np.ndarray) -> float:
    """Largest angle (degrees) between a voxel axis and its nearest world axis."""
    cols = affine[:3, :3] / np.linalg.norm(affine[:3, :3], axis=0, keepdims=True)
    return float(np.degrees(np.arccos(np.clip(np.abs(cols).max(axis=0), -1, 1))).max())


def read_volume(
    path: str | Path,
    oblique: ObliquePolicy = "reject",
    max_oblique_deg: float = 1.0,
    max_anisotropy: float = 4.0,
    nan: NanPolicy = "reject",
) -> Volume:
    """Read one 3-D NIfTI volume, checked.

    Args:
        path: a ``.nii`` or ``.nii.gz`` file.
        oblique: ``"reject"`` an affine more than ``max_oblique_deg`` off the world axes, or
            ``"resample"`` it onto an axis-aligned grid (trilinear, voxel sizes kept).
        max_oblique_deg: tolerance of the obliquity check.
        max_anisotropy: largest allowed ratio of the longest to the shortest voxel side
            (thick-slice scans resampled to 1 mm would be mostly interpolation).
        nan: ``"reject"`` NaN voxels, or read them as ``"background"``: the smallest finite
            intensity (masked outputs of FSL / SPM hold NaN outside the brain). Inf is refused.
    """
    path = Path(path)
    try:
        img = nib.load(str(path))
        dtype = img.get_data_dtype()
        if dtype.kind not in "biuf":  # RGB (structured) or complex voxels: get_fdata fails or drops the imaginary part
            raise NiftiError(f"{path}: voxel data type {dtype} (RGB or complex); expected real-valued "
                             f"T1 intensities (one number per voxel)")
        data = np.asarray(img.get_fdata(dtype=np.float32))
    except NiftiError:
        raise
    except FileNotFoundError:
        raise NiftiError(f"{path}: file not found") from None
    except (nib.filebasedimages.ImageFileError, EOFError, OSError, ValueError, zlib.error, gzip.BadGzipFile) as e:
        raise NiftiError(f"{path}: not a readable NIfTI file (truncated or corrupt?): {e}") from None
    hdr = img.header
    if isinstance(hdr, nib.Nifti1Header) and int(hdr["qform_code"]) == 0 and int(hdr["sform_code"]) == 0:
        # NIfTI "method 1": nibabel falls back to a bare voxel-size matrix (LAS), so left and right are a guess
        raise NiftiError(f"{path}: qform_code and sform_code are both 0: the header gives no orientation, so "
                         f"left and right are unknown; expected a scanner or aligned affine (set the sform, "
                         f"e.g. with fslorient or nibabel's set_sform)")
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise NiftiError(f"{path}: expected a 3-D volume, got shape {data.shape} ({data.ndim}-D)")
    if np.isinf(data).any():
        raise NiftiError(f"{path}: {int(np.isinf(data).sum())} Inf voxel(s); expected finite intensities")
    nans = np.isnan(data)
    if nans.any():
        if nan == "reject" or nans.all():
            raise NiftiError(f"{path}: {int(nans.sum())} NaN voxel(s) of {data.size}; expected finite intensities"
                             + ("" if nans.all() else " (NaN outside a brain mask? --nan background reads them as "
                                                      "the smallest intensity)"))
        data = np.where(nans, data[~nans].min(), data)
    if data.size and float(data.min()) == float(data.max()):  # scaling would turn it into a uniform -1 "volume"
        raise NiftiError(f"{path}: constant intensity ({float(data.min()):g} in every voxel): no brain to find; "
                         f"expected a T1 image")
    affine = np.asarray(img.affine, dtype=np.float64)
    zooms = np.linalg.norm(affine[:3, :3], axis=0)
    if not np.all(zooms > 0):
        raise NiftiError(f"{path}: singular affine (voxel sizes {zooms.tolist()})")
    ratio = float(zooms.max() / zooms.min())
    if ratio > max_anisotropy:
        raise NiftiError(f"{path}: voxels {np.round(zooms, 3).tolist()} mm are too anisotropic "
                         f"(ratio {ratio:.2f} > max_anisotropy {max_anisotropy}; --max-anisotropy raises it)")
    angle = obliquity_deg(affine)
    if angle > max_oblique_deg:
        if oblique == "reject":
            raise NiftiError(f"{path}: oblique affine ({angle:.1f} degrees off the world axes > {max_oblique_deg}); "
                             f"reslice it, or pass --oblique resample (oblique='resample')")
        from nibabel.processing import resample_to_output

        img = resample_to_output(nib.Nifti1Image(data, affine), voxel_sizes=tuple(zooms), order=1)
        data, affine = np.asarray(img.get_fdata(dtype=np.float32)), np.asarray(img.affine, dtype=np.float64)
    return Volume(data=data.astype(np.float32, copy=False), affine=affine, path=path)


def write_volume(path: str | Path, data: np.ndarray, affine: np.ndarray) -> Path:
    """Write ``data`` ``(X, Y, Z)`` with ``affine`` ``(4, 4)`` as NIfTI-1 (atomically; the
    sform and qform both hold the affine, units mm)."""
    path = Path(path)
    data = np.asarray(data, dtype=np.float32)
    if data.ndim != 3:
        raise ValueError(f"{path}: expected a 3-D array to write, got shape {data.shape}")
    img = nib.Nifti1Image(data, np.asarray(affine, dtype=np.float64))
    img.header.set_xyzt_units("mm")
    img.set_qform(img.affine, code=1)
    img.set_sform(img.affine, code=1)
    suffix = ".nii.gz" if path.name.endswith(".nii.gz") else ".nii"
    atomic_write(path, lambda tmp: nib.save(img, str(tmp.with_name(tmp.name + suffix))) or
                 tmp.with_name(tmp.name + suffix).replace(tmp))
    return path

"""Read a FLAIR NIfTI file and check that it can be trusted, before anything is computed on it.

`read_nifti` reads the file once, hashes it, and checks the header and voxels. Every problem
becomes a `BadScanError` that names the file, what was expected, what was found and what to
do. Doubts that don't stop the scan (qform and sform disagreeing, no orientation at all) come
back as `notes`, for the caller to report.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import warnings
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np

from msnl.errors import BadScanError
from msnl.scan import Scan

# A qform can't hold shear, so it only approximates a sheared sform; disagreements below this
# many millimetres, anywhere in the 4x4, are rounding, not a different placement.
_QFORM_SFORM_TOLERANCE_MM = 1e-3
_MIN_VOXELS_PER_AXIS = 2
_GZIP_MAGIC = b"\x1f\x8b"
# Resampling leaves a few negative voxels next to sharp edges: 0.07-0.08 % in the MNI-registered
# Lesjak cross-sectional FLAIRs. A normalised (z-scored) or offset image has far more.
_MAX_NEGATIVE_SHARE = 0.01


@dataclass(frozen=True)
class NiftiScan:
    """A checked NIfTI scan: raw voxels exactly as stored in the file, plus its header facts.

    `data` keeps the on-disk dtype and shape; `scl_slope` and `scl_inter` turn it into scanner
    units (see `to_scan`). `affine` is the one nibabel uses (`affine_source` says which).
    """

    path: Path
    sha256: str
    data: np.ndarray = field(repr=False)
    affine: np.ndarray = field(repr=False)
    affine_source: str
    qform: np.ndarray = field(repr=False)
    qform_code: int
    sform: np.ndarray = field(repr=False)
    sform_code: int
    scl_slope: float
    scl_inter: float
    spacing: tuple[float, float, float]
    orientation: str
    notes: tuple[str, ...] = ()

    def to_scan(self) -> Scan:
        """The scan in scanner units, as float32."""
        return Scan(scaled_voxels(self.data, self.scl_slope, self.scl_inter), self.affine)


def scaled_voxels(raw: np.ndarray, slope: float, inter: float) -> np.ndarray:
    """Apply NIfTI's scl_slope / scl_inter to raw voxels, as float32."""
    out = np.asarray(raw, dtype=np.float32)
    if slope != 1.0 or inter != 0.0:
        out = out * np.float32(slope) + np.float32(inter)
    return out


def sha256_file(path: str | Path, block: int = 1 << 20) -> str:
    """SHA-256 of a file, streamed."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(block):
            digest.update(chunk)
    return digest.hexdigest()


def _parse(path: Path, raw: bytes) -> tuple[nib.Nifti1Image, np.ndarray]:
    """The image, and the voxel sizes exactly as on disk (nibabel silently fixes bad ones)."""
    if raw[:2] == _GZIP_MAGIC:
        try:
            raw = gzip.decompress(raw)
        except (EOFError, OSError, zlib.error) as exc:
            raise BadScanError(
                f"the gzip stream is corrupt or truncated ({exc}). Expected a complete .nii.gz; "
                "copy the file again from its source or re-export it from the scanner.",
                path,
            ) from None
    elif path.name.endswith(".gz"):
        raise BadScanError(
            "named .gz but is not gzip-compressed. Expected a gzip-compressed NIfTI; "
            "check that this is the right file, or rename it to .nii if it is plain NIfTI.",
            path,
        )
    for klass in (nib.Nifti1Image, nib.Nifti2Image):
        try:
            with warnings.catch_warnings():  # nibabel's musings on junk bytes; we raise below
                warnings.simplefilter("ignore")
                header = klass.header_class.from_fileobj(io.BytesIO(raw), check=False)
                return klass.from_bytes(raw), np.asarray(header["pixdim"][1:4], dtype=float)
        except Exception:  # nibabel raises several types for a header of the other kind
            continue
    raise BadScanError(
        "is not a NIfTI-1 or NIfTI-2 image (no valid NIfTI header). Expected a FLAIR in "
        "NIfTI format; convert DICOM with dcm2niix first.",
        path,
    )


def _check_shape(path: Path, shape: tuple[int, ...]) -> tuple[int, int, int]:
    spatial = shape[:3] if len(shape) > 3 and all(s == 1 for s in shape[3:]) else shape
    if len(spatial) != 3:
        kind = "4D (a time series?)" if len(spatial) > 3 else f"{len(spatial)}D"
        raise BadScanError(
            f"is a {kind} image of shape {shape}. Expected one 3D FLAIR volume; split a series "
            "into one file per volume, or give the 3D FLAIR itself.",
            path,
        )
    if min(spatial) < _MIN_VOXELS_PER_AXIS:
        raise BadScanError(
            f"has shape {shape}, a single slice. Expected a 3D FLAIR volume with at least "
            f"{_MIN_VOXELS_PER_AXIS} voxels along each axis; give the whole volume.",
            path,
        )
    return spatial  # type: ignore[return-value]


def _check_geometry(path: Path, img: nib.Nifti1Image, pixdim: np.ndarray) -> list[str]:
    notes: list[str] = []
    header = img.header
    if not np.all(np.isfinite(pixdim)) or np.any(pixdim <= 0):
        raise BadScanError(
            f"has voxel sizes {pixdim.tolist()} mm in its header (pixdim). Expected three "
            "positive, finite sizes; fix the header (for example with nibabel or fslsplit) or "
            "re-convert the DICOM.",
            path,
        )
    affine = img.affine
    det = np.linalg.det(affine[:3, :3]) if np.all(np.isfinite(affine)) else np.nan
    if not np.isfinite(det) or abs(det) < 1e-6:
        raise BadScanError(
            "has a singular or non-finite voxel-to-mm affine, so its voxels have no place in "
            "space. Expected an invertible qform or sform; re-convert the DICOM.",
            path,
        )
    qcode, scode = int(header["qform_code"]), int(header["sform_code"])
    if qcode == 0 and scode == 0:
        notes.append(
            f"{path}: neither qform nor sform is set, so orientation is unknown and the "
            "voxel sizes alone place the image. Masks drawn on it may be flipped; re-convert "
            "the DICOM to get a proper header."
        )
    elif qcode > 0 and scode > 0:
        gap = float(np.max(np.abs(header.get_qform() - header.get_sform())))
        if gap > _QFORM_SFORM_TOLERANCE_MM:
            notes.append(
                f"{path}: qform (code {qcode}) and sform (code {scode}) disagree by up to "
                f"{gap:.3g} mm; using the sform, as nibabel and most viewers do. If masks "
                "later look misplaced on this scan, fix the header so both agree."
            )
    return notes


def _check_voxels(path: Path, data: np.ndarray) -> None:
    if data.dtype.kind == "f" and not np.all(np.isfinite(data)):
        bad = int(np.count_nonzero(~np.isfinite(data)))
        raise BadScanError(
            f"has {bad} NaN or infinite voxels. Expected finite intensities; re-export the "
            "scan, or replace the NaNs with 0 if they only mark background.",
            path,
        )
    if not np.any(data):
        raise BadScanError(
            "is all zeros. Expected a FLAIR with signal; check the export, it may be an empty "
            "placeholder.",
            path,
        )
    low, high = data.min(), data.max()
    if low == high:
        raise BadScanError(
            f"has the same value ({low}) in every voxel, so it shows no anatomy. Expected a FLAIR "
            "with contrast; check the export, it may be a placeholder or a failed conversion.",
            path,
        )


def _check_magnitude(path: Path, data: np.ndarray, slope: float, inter: float) -> None:
    """Refuse intensities that are not a magnitude image's, where 0 means no signal: N4 and step
    one's grey levels (equal widths from 0) rely on it."""
    values = scaled_voxels(data, slope, inter)
    negative = np.count_nonzero(values < 0) / values.size
    if negative > _MAX_NEGATIVE_SHARE:
        raise BadScanError(
            f"has {100 * negative:.1f} % of its voxels below 0 (down to {float(values.min()):.4g}), so it is not a "
            "magnitude FLAIR, where 0 means no signal: N4 bias correction and step one's grey levels rely on that, "
            "and a normalised (z-scored) or offset image gives meaningless candidates. Ingest the FLAIR as converted "
            "from the scanner's DICOM.",
            path,
        )


def _affine_source(header: nib.Nifti1Header) -> str:
    if int(header["sform_code"]) > 0:
        return "sform"
    return "qform" if int(header["qform_code"]) > 0 else "pixdim"


def read_nifti(path: str | Path) -> NiftiScan:
    """Read and check one NIfTI FLAIR. Raises `BadScanError` naming the file and the fix."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise BadScanError("does not exist. Check the path in the manifest.", path) from None
    except OSError as exc:
        raise BadScanError(f"cannot be read ({exc.strerror}). Check permissions.", path) from None
    sha = hashlib.sha256(raw).hexdigest()
    img, pixdim = _parse(path, raw)
    del raw
    shape = _check_shape(path, img.shape)
    notes = _check_geometry(path, img, pixdim)
    try:
        data = np.asarray(img.dataobj.get_unscaled()).reshape(shape)
    except Exception as exc:  # truncated or mis-sized voxel block
        raise BadScanError(
            f"has a voxel block that doesn't match its header ({exc}). Expected "
            f"{shape} voxels of {img.get_data_dtype()}; the file is probably truncated, copy it "
            "again.",
            path,
        ) from None
    _check_voxels(path, data)
    slope = 1.0 if img.dataobj.slope is None else float(img.dataobj.slope)
    inter = 0.0 if img.dataobj.inter is None else float(img.dataobj.inter)
    _check_magnitude(path, data, slope, inter)
    header = img.header
    return NiftiScan(
        path=path,
        sha256=sha,
        data=data,
        affine=np.asarray(img.affine, dtype=float),
        affine_source=_affine_source(header),
        qform=np.asarray(header.get_qform(), dtype=float),
        qform_code=int(header["qform_code"]),
        sform=np.asarray(header.get_sform(), dtype=float),
        sform_code=int(header["sform_code"]),
        scl_slope=slope,
        scl_inter=inter,
        spacing=tuple(float(z) for z in header.get_zooms()[:3]),  # type: ignore[arg-type]
        orientation="".join(nib.aff2axcodes(img.affine)),
        notes=tuple(notes),
    )

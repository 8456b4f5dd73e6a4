"""Simulated acquisition of a head in template space: pose, grid, slices, bias, noise.

Parameters are drawn once (`draw_acquisition`) and applied deterministically (`acquire`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy import ndimage
from scipy.spatial.transform import Rotation

# Slice orientations: which template axis the slices stack along (0 sagittal, 1 coronal, 2 axial).
ORIENTATIONS = {"sagittal": 0, "coronal": 1, "axial": 2}
SUBSLICES = 3  # thick slices are the mean of this many thin samples (partial volume)


@dataclass(frozen=True)
class Acquisition:
    """One visit's acquisition nuisances."""

    rotation_deg: tuple[float, float, float]
    translation_mm: tuple[float, float, float]
    orientation: str
    spacing_mm: tuple[float, float, float]  # in-plane, in-plane, slice
    fov_mm: tuple[float, float, float]  # in-plane, in-plane, across slices
    fov_shift_mm: tuple[float, float, float]
    bias_coefficients: tuple[float, ...]
    intensity_scale: float
    noise_sigma: float  # relative to grey-matter intensity
    noise_seed: int

    def as_dict(self) -> dict:
        return asdict(self)


PROTOCOLS = ("mixed", "2d")


def draw_acquisition(rng: np.random.Generator, max_rotation_deg: float = 5.0, max_translation_mm: float = 5.0,
                     protocol: str = "mixed") -> Acquisition:
    """Head pose up to 5° and 5 mm, a 2D thick-slice or 3D protocol, bias, scale and noise.

    `protocol="2d"` makes every visit a 1 x 1 x 3 mm 2D FLAIR, a common trial protocol and
    the lightest to process (the demo uses it); the other draws are the same as for "mixed".
    """
    thick = rng.random() < 0.7  # most follow-up FLAIRs in trials are 2D, thick-slice
    orientation = "axial" if rng.random() < 0.6 else str(rng.choice(["sagittal", "coronal"]))
    in_plane = float(rng.choice([0.7, 0.72, 0.9])) if thick else 1.0
    slice_mm = float(rng.choice([3.0, 3.0, 4.0])) if thick else 1.0
    if protocol == "2d":
        in_plane, slice_mm = 1.0, 3.0
    return Acquisition(
        rotation_deg=tuple(float(v) for v in rng.uniform(-max_rotation_deg, max_rotation_deg, 3)),
        translation_mm=tuple(float(v) for v in rng.uniform(-max_translation_mm, max_translation_mm, 3)),
        orientation=orientation,
        spacing_mm=(in_plane, in_plane, slice_mm),
        fov_mm=(float(rng.uniform(200, 240)), float(rng.uniform(200, 240)), float(rng.uniform(140, 170))),
        fov_shift_mm=tuple(float(v) for v in rng.uniform(-8, 8, 3)),
        bias_coefficients=tuple(float(v) for v in rng.normal(0, 0.12, 9)),
        intensity_scale=float(rng.uniform(0.7, 1.3)),
        noise_sigma=float(rng.uniform(0.02, 0.05)),
        noise_seed=int(rng.integers(2**31)),
    )


def native_affine(acq: Acquisition, centre_mm: np.ndarray) -> tuple[np.ndarray, tuple[int, int, int]]:
    """Voxel -> scanner mm affine and shape of the visit's grid: axes along the chosen slices."""
    stack = ORIENTATIONS[acq.orientation]
    axes = [a for a in range(3) if a != stack] + [stack]  # in-plane, in-plane, slice
    affine = np.zeros((4, 4))
    affine[3, 3] = 1.0
    shape = []
    for col, (axis, step, fov) in enumerate(zip(axes, acq.spacing_mm, acq.fov_mm)):
        affine[axis, col] = step
        shape.append(max(int(round(fov / step)), 2))
    shape_arr = np.array(shape)
    affine[:3, 3] = centre_mm + np.asarray(acq.fov_shift_mm) - affine[:3, :3] @ ((shape_arr - 1) / 2)
    return affine, tuple(int(s) for s in shape)  # type: ignore[return-value]


def pose_matrix(acq: Acquisition) -> np.ndarray:
    """Template mm -> scanner mm: where the head sits in the scanner at this visit."""
    pose = np.eye(4)
    pose[:3, :3] = Rotation.from_euler("xyz", acq.rotation_deg, degrees=True).as_matrix()
    pose[:3, 3] = acq.translation_mm
    return pose


def resample_to_native(volume: np.ndarray, template_affine: np.ndarray, acq: Acquisition,
                       native: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """Sample a template-space volume on the visit's grid, averaging thin samples per thick slice."""
    to_template = np.linalg.inv(template_affine) @ np.linalg.inv(pose_matrix(acq)) @ native
    matrix, offset = to_template[:3, :3], to_template[:3, 3]
    thin = SUBSLICES if acq.spacing_mm[2] > 1.5 else 1
    out = np.zeros(shape, np.float32)
    for s in range(thin):
        delta = (s + 0.5) / thin - 0.5  # sub-slice positions across the slice thickness
        out += ndimage.affine_transform(volume, matrix, offset + matrix[:, 2] * delta, output_shape=shape,
                                        order=1, mode="constant", cval=0.0, output=np.float32)
    return out / thin


def bias_field(shape: tuple[int, int, int], coefficients: tuple[float, ...]) -> np.ndarray:
    """A smooth multiplicative field: exp of a quadratic polynomial over the grid."""
    x, y, z = np.meshgrid(*[np.linspace(-1, 1, n, dtype=np.float32) for n in shape], indexing="ij", sparse=True)
    terms = (x, y, z, x * x, y * y, z * z, x * y, x * z, y * z)
    return np.exp(sum(c * t for c, t in zip(coefficients, terms))).astype(np.float32)


def acquire(head: np.ndarray, template_affine: np.ndarray, acq: Acquisition) -> tuple[np.ndarray, np.ndarray]:
    """The visit's image on its own grid (float32, ~1000 for grey matter) and the grid's affine."""
    native, shape = grid_for(template_affine, head.shape, acq)
    image = resample_to_native(head, template_affine, acq, native, shape)
    image *= bias_field(shape, acq.bias_coefficients)
    rng = np.random.default_rng(acq.noise_seed)
    sigma = acq.noise_sigma
    image = np.hypot(image + rng.normal(0, sigma, shape).astype(np.float32), rng.normal(0, sigma, shape).astype(np.float32))
    return (image * (1000.0 * acq.intensity_scale)).astype(np.float32), native


def grid_for(template_affine: np.ndarray, shape: tuple[int, ...], acq: Acquisition) -> tuple[np.ndarray, tuple[int, int, int]]:
    """The visit's grid, centred on the head's centre as the scanner sees it."""
    centre_tpl = template_affine @ [*((np.asarray(shape) - 1) / 2), 1.0]
    centre = (pose_matrix(acq) @ centre_tpl)[:3]
    return native_affine(acq, centre)

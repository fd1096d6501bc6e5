"""The learnable content of a synthetic study: a body, a bright organ and (sometimes) a lesion.

A :class:`Phantom` is the ground truth of one study — where the organ ellipsoid and the lesion
sphere sit in patient space — and :func:`render` turns it into the values a scanner reports (HU for
CT, arbitrary units for MR) with partial-volume edges, the trust's contrast, gain, coil bias and
noise.  :meth:`Phantom.organ_mask` is the matching segmentation label and :meth:`Grid.nifti_affine`
places it exactly on the voxels dcm2niix writes for the series, so images and labels line up
without resampling.

Coordinates: DICOM patient space (LPS, millimetres).  Arrays are indexed ``[slice, row, column]``,
the order the DICOM instances are written in; rows run along +y (posterior), columns along +x
(patient's left) and slices along +z (head).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt

from flip_imaging.synthetic_scanner import Scanner
from flip_omop import ImagingStudy
from flip_omop.concepts import Modality, Site

COLUMNS: Final = 64
ROWS: Final = 64
SLICES: Final = 24

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]

# Per site: body cross-section semi-axes (x, y), organ semi-axes (x, y, z) and organ centre offset
# (x, y) in mm — liver on the patient's right (−x), heart slightly left, brain central.
_ANATOMY: dict[Site, tuple[tuple[float, float], tuple[float, float, float], tuple[float, float]]] = {
    "abdomen": ((100.0, 75.0), (55.0, 42.0, 32.0), (-25.0, 5.0)),
    "chest": ((105.0, 75.0), (42.0, 36.0, 30.0), (12.0, -5.0)),
    "head": ((70.0, 85.0), (52.0, 62.0, 32.0), (0.0, 0.0)),
}


@dataclass(frozen=True)
class VolumeSize:
    """The matrix (rows = columns) and slice count of a synthetic series, when not the small default.

    A bigger volume covers the same field of view and z-range as the default grid of the trust's scanner
    (:data:`COLUMNS` pixels of ``pixel_spacing_mm``, :data:`SLICES` slices of ``slice_spacing_mm``) at a finer
    spacing, so the anatomy, the organ and the lesions sit where they do on the default grid, only sampled
    more finely; the trusts' grids keep differing in proportion.
    """

    matrix: int
    slices: int

    def __post_init__(self) -> None:
        if not 8 <= self.matrix <= 1024 or not 4 <= self.slices <= 1024:
            raise ValueError("a synthetic volume has a matrix of 8-1024 pixels and 4-1024 slices")

    def grid(self, pixel_spacing_mm: float, slice_spacing_mm: float) -> Grid:
        """The grid for a scanner whose default grid has these spacings."""
        # Rounded to what the DICOM decimal strings hold, so the files, the mask's affine and the phantom agree.
        return Grid(
            pixel_spacing_mm=round(pixel_spacing_mm * COLUMNS / self.matrix, 4),
            slice_spacing_mm=round(slice_spacing_mm * SLICES / self.slices, 4),
            columns=self.matrix,
            rows=self.matrix,
            slices=self.slices,
        )


@dataclass(frozen=True)
class Grid:
    """The voxel grid of one series: axial slices, identity orientation, centred on the origin."""

    pixel_spacing_mm: float
    slice_spacing_mm: float
    columns: int = COLUMNS
    rows: int = ROWS
    slices: int = SLICES

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(slices, rows, columns)``."""
        return (self.slices, self.rows, self.columns)

    @property
    def origin_mm(self) -> tuple[float, float, float]:
        """ImagePositionPatient of the first voxel of the first slice."""
        return (
            -(self.columns - 1) / 2 * self.pixel_spacing_mm,
            -(self.rows - 1) / 2 * self.pixel_spacing_mm,
            -(self.slices - 1) / 2 * self.slice_spacing_mm,
        )

    def slice_position(self, index: int) -> tuple[float, float, float]:
        """ImagePositionPatient of slice ``index`` (0-based)."""
        x, y, z = self.origin_mm
        return (x, y, z + index * self.slice_spacing_mm)

    def axes_mm(self) -> tuple[FloatArray, FloatArray, FloatArray]:
        """Voxel-centre coordinates along z, y, x, shaped to broadcast over ``[slice, row, column]``."""
        x0, y0, z0 = self.origin_mm
        z = z0 + np.arange(self.slices, dtype=np.float64) * self.slice_spacing_mm
        y = y0 + np.arange(self.rows, dtype=np.float64) * self.pixel_spacing_mm
        x = x0 + np.arange(self.columns, dtype=np.float64) * self.pixel_spacing_mm
        return z[:, None, None], y[None, :, None], x[None, None, :]

    def voxel_of(self, point_mm: tuple[float, float, float]) -> tuple[int, int, int]:
        """``(slice, row, column)`` of the voxel whose centre is nearest ``point_mm``."""
        x0, y0, z0 = self.origin_mm
        x, y, z = point_mm
        return (
            round((z - z0) / self.slice_spacing_mm),
            round((y - y0) / self.pixel_spacing_mm),
            round((x - x0) / self.pixel_spacing_mm),
        )

    def nifti_affine(self) -> FloatArray:
        """The RAS affine of the NIfTI dcm2niix writes for this series, for array ``[column, row', slice]``.

        dcm2niix converts LPS to RAS (negating x and y) and flips the row axis so that it runs
        anterior; :func:`to_nifti_order` lays out an array the same way.
        """
        x0, y0, z0 = self.origin_mm
        s, t = self.pixel_spacing_mm, self.slice_spacing_mm
        last_row_y = y0 + (self.rows - 1) * s
        return np.array(
            [[-s, 0.0, 0.0, -x0], [0.0, s, 0.0, -last_row_y], [0.0, 0.0, t, z0], [0.0, 0.0, 0.0, 1.0]],
        )


def to_nifti_order(volume: npt.NDArray[np.generic]) -> npt.NDArray[np.generic]:
    """``[slice, row, column]`` → ``[column, flipped row, slice]``, matching :meth:`Grid.nifti_affine`."""
    return np.ascontiguousarray(volume[:, ::-1, :].transpose(2, 1, 0))


@dataclass(frozen=True)
class Phantom:
    """Ground truth of one study: where the body, the organ and the lesion are (LPS mm)."""

    grid: Grid
    modality: Modality
    body_semi_axes_mm: tuple[float, float]
    organ_centre_mm: tuple[float, float, float]
    organ_semi_axes_mm: tuple[float, float, float]
    lesion_centre_mm: tuple[float, float, float] | None
    lesion_radius_mm: float | None

    def organ_radius(self) -> FloatArray:
        """Normalised ellipsoid radius per voxel: ≤ 1 inside the organ."""
        z, y, x = self.grid.axes_mm()
        (cx, cy, cz), (a, b, c) = self.organ_centre_mm, self.organ_semi_axes_mm
        radius: FloatArray = np.sqrt(((x - cx) / a) ** 2 + ((y - cy) / b) ** 2 + ((z - cz) / c) ** 2)
        return radius

    def organ_mask(self) -> BoolArray:
        """The organ segmentation label, ``[slice, row, column]``: voxel centres inside the ellipsoid."""
        mask: BoolArray = self.organ_radius() <= 1.0
        return mask

    def lesion_voxel(self) -> tuple[int, int, int] | None:
        """``(slice, row, column)`` of the lesion's centre voxel, or None without a lesion."""
        return None if self.lesion_centre_mm is None else self.grid.voxel_of(self.lesion_centre_mm)

    def lesion_mask(self) -> BoolArray:
        """Voxels whose centre lies inside the lesion sphere (always its centre voxel); empty without one."""
        shape = self.grid.shape
        if self.lesion_centre_mm is None or self.lesion_radius_mm is None:
            return np.zeros(shape, dtype=np.bool_)
        mask: BoolArray = self.lesion_distance_mm() <= self.lesion_radius_mm
        centre = self.lesion_voxel()
        assert centre is not None
        mask[centre] = True
        return mask

    def lesion_distance_mm(self) -> FloatArray:
        """Distance of each voxel centre from the lesion's centre (requires a lesion)."""
        z, y, x = self.grid.axes_mm()
        assert self.lesion_centre_mm is not None
        lx, ly, lz = self.lesion_centre_mm
        distance: FloatArray = np.sqrt((x - lx) ** 2 + (y - ly) ** 2 + (z - lz) ** 2)
        return distance


def phantom_for(
    study: ImagingStudy, scanner: Scanner, rng: np.random.Generator, size: VolumeSize | None = None
) -> Phantom:
    """Place the organ (jittered by ``rng``) and the study's lesion, if it has one, inside it.

    ``size`` samples the same field of view on a finer grid (see :class:`VolumeSize`); the default is the
    small demo grid.
    """
    if size is None:
        grid = Grid(scanner.pixel_spacing_mm, scanner.slice_spacing_mm)
    else:
        grid = size.grid(scanner.pixel_spacing_mm, scanner.slice_spacing_mm)
    body, organ, offset = _ANATOMY[study.anatomic_site]
    radius = None if study.lesion_diameter_mm is None or not study.lesion else study.lesion_diameter_mm / 2
    half_extent = (
        np.array(
            [
                grid.columns * grid.pixel_spacing_mm,
                grid.rows * grid.pixel_spacing_mm,
                grid.slices * grid.slice_spacing_mm,
            ]
        )
        / 2
    )
    shift = rng.uniform(-1.0, 1.0, 3) * np.array([10.0, 8.0, 5.0])
    centre = np.array([offset[0], offset[1], 0.0]) + shift
    semi = np.array(organ) * rng.uniform(0.85, 1.15, 3)
    if radius is not None:
        # A large lesion needs a large enough organ around it.
        semi = np.maximum(semi, radius * 1.3)
    # Keep the organ inside the field of view with a voxel to spare, whatever the scanner's grid.
    margin = np.array([grid.pixel_spacing_mm, grid.pixel_spacing_mm, grid.slice_spacing_mm])
    semi = np.minimum(semi, half_extent - margin - np.abs(centre))
    lesion_centre: tuple[float, float, float] | None = None
    if radius is not None:
        radius = min(radius, float(semi.min()) * 0.8)
        room = semi - radius
        point = centre + rng.uniform(-0.45, 0.45, 3) * room
        # Centred on a voxel so that even a 4 mm lesion fully covers one voxel and stays visible.
        k, r, c = grid.voxel_of((float(point[0]), float(point[1]), float(point[2])))
        x0, y0, z0 = grid.origin_mm
        lesion_centre = (x0 + c * grid.pixel_spacing_mm, y0 + r * grid.pixel_spacing_mm, z0 + k * grid.slice_spacing_mm)
    return Phantom(
        grid=grid,
        modality=study.modality,
        body_semi_axes_mm=body,
        organ_centre_mm=(float(centre[0]), float(centre[1]), float(centre[2])),
        organ_semi_axes_mm=(float(semi[0]), float(semi[1]), float(semi[2])),
        lesion_centre_mm=lesion_centre,
        lesion_radius_mm=radius,
    )


def render(phantom: Phantom, scanner: Scanner, rng: np.random.Generator) -> FloatArray:
    """The values the scanner reports, ``[slice, row, column]``: HU for CT, arbitrary units for MR."""
    grid = phantom.grid
    _, y, x = grid.axes_mm()
    voxel = (2 * grid.pixel_spacing_mm + grid.slice_spacing_mm) / 3
    bx, by = phantom.body_semi_axes_mm
    # The body is a cylinder along z: one slice's worth, broadcast over the slices (same values, less work).
    body_radius = np.sqrt((x / bx) ** 2 + (y / by) ** 2)
    # Partial volume: a voxel straddling an edge takes the share of it that lies inside.
    body = _coverage((body_radius - 1.0) * min(bx, by), voxel)
    organ_distance = phantom.organ_radius()
    organ_distance -= 1.0
    organ_distance *= min(phantom.organ_semi_axes_mm)
    organ = _coverage(organ_distance, voxel)
    lesion: FloatArray | float = 0.0
    if phantom.lesion_centre_mm is not None and phantom.lesion_radius_mm is not None:
        lesion_distance = phantom.lesion_distance_mm()
        lesion_distance -= phantom.lesion_radius_mm
        lesion = _coverage(lesion_distance, voxel)
    if phantom.modality == "CT":
        air, tissue = -1000.0, 35.0
        organ_gain, lesion_gain = 70.0 * scanner.ct_contrast, 150.0 * scanner.ct_contrast
        values = air + body * (tissue - air) + organ * organ_gain + lesion * lesion_gain
        noisy: FloatArray = values + rng.standard_normal(grid.shape) * scanner.noise_hu
        return noisy
    gain = scanner.mr_gain * (1.0 + scanner.mr_bias * x / (grid.columns * grid.pixel_spacing_mm / 2))
    values = gain * (body * 250.0 + organ * 350.0 + lesion * 500.0)
    sigma = 18.0 * scanner.mr_gain
    # Magnitude images: noise on both channels, then the modulus (Rician, never negative).
    real = values + rng.standard_normal(grid.shape) * sigma
    imaginary = rng.standard_normal(grid.shape) * sigma
    magnitude: FloatArray = np.hypot(real, imaginary)
    return magnitude


def _coverage(signed_distance_mm: FloatArray, voxel_mm: float) -> FloatArray:
    """Share of a voxel inside a surface, from its centre's signed distance (negative inside)."""
    # 0.5 - d / v, computed in place (bit for bit the same values: negation and addition are exact).
    share: FloatArray = np.divide(signed_distance_mm, -voxel_mm)
    share += 0.5
    np.clip(share, 0.0, 1.0, out=share)
    return share

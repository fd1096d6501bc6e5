"""Per-trust scanner characteristics of the synthetic imaging: vendor tags, spacing, intensity scale.

Federated learning only means something when the trusts' images differ the way real hospitals'
images do: another vendor, another reconstruction grid, another stored-value encoding
(RescaleSlope/Intercept), another contrast and noise level.  :class:`TrustProfile` (owned by the
OMOP generator) says nothing about scanners, so the scanner a trust uses is derived here, from the
profile name alone: the three built-in profiles get hand-picked, clearly different fleets, and any
other name gets one picked by a stable hash, so the same name always gets the same scanners.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from flip_omop import TrustProfile
from flip_omop.concepts import Modality


@dataclass(frozen=True)
class Scanner:
    """One trust's CT and MR scanners and how they reconstruct and encode the synthetic volumes."""

    manufacturer: str
    ct_model: str
    mr_model: str
    software_versions: str
    pixel_spacing_mm: float
    """In-plane spacing (rows and columns alike)."""
    slice_spacing_mm: float
    """Slice thickness and the distance between slice centres (contiguous slices, no gap)."""
    ct_rescale: tuple[float, float]
    """``(RescaleSlope, RescaleIntercept)`` turning stored CT values into Hounsfield units."""
    mr_rescale: tuple[float, float]
    """``(RescaleSlope, RescaleIntercept)`` turning stored MR values into the scanner's arbitrary units."""
    ct_contrast: float
    """Multiplies the enhancement of organ and lesion over soft tissue (contrast protocol differences)."""
    mr_gain: float
    """Multiplies every MR intensity: MR units are arbitrary and differ from scanner to scanner."""
    mr_bias: float
    """Strength of a linear left-right intensity inhomogeneity (coil sensitivity) on MR."""
    noise_hu: float
    """Standard deviation of CT noise in HU (MR noise is a fixed share of its gain)."""
    field_strength_t: float
    ct_kernel: str

    def model(self, modality: Modality) -> str:
        """ManufacturerModelName of this trust's scanner for ``modality``."""
        return self.ct_model if modality == "CT" else self.mr_model

    def rescale(self, modality: Modality) -> tuple[float, float]:
        """``(slope, intercept)`` of this trust's scanner for ``modality``."""
        return self.ct_rescale if modality == "CT" else self.mr_rescale


# Hand-picked so that the demo's three trusts differ in every respect at once.  The models are
# plausible product names; the numbers are what makes harmonisation necessary.
_BUILTIN: dict[str, Scanner] = {
    "north": Scanner(
        manufacturer="SIEMENS",
        ct_model="SOMATOM Definition AS",
        mr_model="MAGNETOM Skyra",
        software_versions="syngo CT VA48A",
        pixel_spacing_mm=4.0,
        slice_spacing_mm=5.0,
        ct_rescale=(1.0, -1024.0),
        mr_rescale=(1.0, 0.0),
        ct_contrast=1.0,
        mr_gain=1.0,
        mr_bias=0.0,
        noise_hu=9.0,
        field_strength_t=3.0,
        ct_kernel="B30f",
    ),
    "south": Scanner(
        manufacturer="GE MEDICAL SYSTEMS",
        ct_model="Revolution CT",
        mr_model="SIGNA Premier",
        software_versions="revo_ct_22BC.50",
        pixel_spacing_mm=3.5,
        slice_spacing_mm=4.0,
        ct_rescale=(1.0, 0.0),
        mr_rescale=(0.5, 0.0),
        ct_contrast=1.3,
        mr_gain=3.0,
        mr_bias=0.15,
        noise_hu=13.0,
        field_strength_t=1.5,
        ct_kernel="STANDARD",
    ),
    "east": Scanner(
        manufacturer="Philips",
        ct_model="IQon Spectral CT",
        mr_model="Ingenia",
        software_versions="5.1.1",
        pixel_spacing_mm=4.5,
        slice_spacing_mm=4.5,
        ct_rescale=(0.5, -1024.0),
        mr_rescale=(2.0, 0.0),
        ct_contrast=0.8,
        mr_gain=0.45,
        mr_bias=0.08,
        noise_hu=6.0,
        field_strength_t=3.0,
        ct_kernel="B",
    ),
}


def scanner_for(profile: TrustProfile | str) -> Scanner:
    """The scanner fleet of the trust using ``profile`` (or a profile name); stable for a given name."""
    name = profile if isinstance(profile, str) else profile.name
    builtin = _BUILTIN.get(name)
    if builtin is not None:
        return builtin
    # Any other profile takes a built-in fleet's vendor and encodings, with spacing and contrast
    # nudged by its own hash, so that it still differs from the trust whose fleet it borrowed.
    digest = hashlib.blake2b(name.encode(), digest_size=8, person=b"flip-scanner").digest()
    base = tuple(_BUILTIN.values())[digest[0] % len(_BUILTIN)]
    return Scanner(
        manufacturer=base.manufacturer,
        ct_model=base.ct_model,
        mr_model=base.mr_model,
        software_versions=base.software_versions,
        pixel_spacing_mm=3.5 + 0.25 * (digest[1] % 5),
        slice_spacing_mm=4.0 + 0.5 * (digest[2] % 3),
        ct_rescale=base.ct_rescale,
        mr_rescale=base.mr_rescale,
        ct_contrast=0.8 + 0.1 * (digest[3] % 6),
        mr_gain=0.5 + 0.25 * (digest[4] % 10),
        mr_bias=0.05 * (digest[5] % 4),
        noise_hu=6.0 + digest[6] % 8,
        field_strength_t=base.field_strength_t,
        ct_kernel=base.ct_kernel,
    )

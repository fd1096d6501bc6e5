"""FLIP tutorial: federated 3-D segmentation of the synthetic organ with a small MONAI UNet.

At each trust, ``train`` fits the global model to the trust's own studies for a few local epochs and
``evaluate`` scores it on studies it never trains on. All data comes through the ``flip`` SDK:

* ``flip.get_dataframe(["accession_id"])`` lists the studies of the project's frozen cohort;
* ``flip.get_images(accession, "nifti")`` gives the study's NIfTI volume (with its JSON sidecar) and
  ``flip.get_images(accession, "mask")`` the organ label ``mask.nii.gz``, on the same voxel grid.

The trusts' scanners differ (spacing, intensity scale, CT or MR), so each volume is resampled to one
small grid and z-scored on its own. Studies are split into training and held-out sets by a hash of
their accession id: the same split in every round and every run, with nothing shared between trusts.
"""

from __future__ import annotations

import hashlib
import logging
from typing import Any

import nibabel as nib
import numpy as np
import torch
import torch.nn.functional as F
from monai.losses.dice import DiceLoss

import flip

log = logging.getLogger(__name__)


def split(accessions: list[str], held_out_fraction: float) -> tuple[list[str], list[str]]:
    """(training, held-out) accession ids: ranked by a hash, so the split never changes."""
    ranked = sorted(set(accessions), key=lambda a: hashlib.sha256(a.encode()).hexdigest())
    if len(ranked) < 2:
        raise ValueError(f"this trust's cohort lists {len(ranked)} study; training and evaluation need at least 2")
    held_out = min(max(1, round(held_out_fraction * len(ranked))), len(ranked) - 1)
    return ranked[held_out:], ranked[:held_out]


def load_study(accession: str, grid: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One study's image (z-scored) and organ mask, both resampled to ``grid``³, shaped ``[1, g, g, g]``."""
    volumes = [p for p in flip.get_images(accession, "nifti") if p.name.endswith(".nii.gz")]
    masks = [p for p in flip.get_images(accession, "mask") if p.name.endswith(".nii.gz")]
    if not volumes or not masks:
        raise flip.TrainerDataError(f"study {accession} has no NIfTI volume or no mask")
    image = np.asarray(nib.load(sorted(volumes)[0]).get_fdata(), dtype=np.float32)
    mask = np.asarray(nib.load(masks[0]).get_fdata(), dtype=np.float32) > 0
    if image.shape != mask.shape:
        raise flip.TrainerDataError(f"study {accession}: volume {image.shape} and mask {mask.shape} differ")
    image = (image - image.mean()) / (image.std() + 1e-6)
    size = (grid, grid, grid)
    x = F.interpolate(torch.from_numpy(image)[None, None], size=size, mode="trilinear", align_corners=False)
    y = F.interpolate(torch.from_numpy(mask.astype(np.float32))[None, None], size=size, mode="trilinear")
    return x[0], (y[0] > 0.5).float()


def load(accessions: list[str], grid: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Images and masks of the studies whose files are there; the others are skipped with a warning."""
    images, masks = [], []
    for accession in accessions:
        try:
            image, mask = load_study(accession, grid)
        except flip.TrainerDataError as exc:
            log.warning("skipping study %s: %s", accession, exc)
            continue
        images.append(image)
        masks.append(mask)
    if not images:
        raise RuntimeError(f"none of the {len(accessions)} studies could be loaded (see the warnings above)")
    return torch.stack(images), torch.stack(masks)


def score(model: torch.nn.Module, images: torch.Tensor, masks: torch.Tensor) -> dict[str, float]:
    """Mean Dice of the thresholded prediction with the mask, the Dice loss, and the number of studies."""
    model.eval()
    with torch.no_grad():
        logits = model(images)
    predicted = (logits > 0).float()
    overlap = (predicted * masks).sum(dim=(1, 2, 3, 4))
    total = predicted.sum(dim=(1, 2, 3, 4)) + masks.sum(dim=(1, 2, 3, 4))
    dice = (2 * overlap / total.clamp(min=1.0)).mean()
    loss = DiceLoss(sigmoid=True, batch=True)(logits, masks)
    return {"dice": dice.item(), "loss": loss.item(), "num_examples": float(len(images))}


def studies(config: dict[str, Any], held_out: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """This trust's training (or held-out) images and masks."""
    accessions = [str(a) for a in flip.get_dataframe(["accession_id"])["accession_id"]]
    training, evaluation = split(accessions, float(config["held_out_fraction"]))
    return load(evaluation if held_out else training, int(config["grid_size"]))


def train(model: torch.nn.Module, config: dict[str, Any]) -> dict[str, float]:
    """Train ``model`` in place on this trust's training studies; Dice on them afterwards."""
    images, masks = studies(config, held_out=False)
    epochs, batch_size = int(config["local_epochs"]), int(config["batch_size"])
    optimiser = torch.optim.Adam(model.parameters(), lr=float(config["learning_rate"]))
    loss_fn = DiceLoss(sigmoid=True, batch=True)
    shuffle = torch.Generator().manual_seed(int(config["seed"]) * 1000 + int(config["round"]))
    model.train()
    for epoch in range(epochs):
        losses = []
        for batch in torch.randperm(len(images), generator=shuffle).split(batch_size):
            optimiser.zero_grad()
            loss = loss_fn(model(images[batch]), masks[batch])
            loss.backward()
            optimiser.step()
            losses.append(loss.item())
        if epoch == 0:  # logged metrics travel with the returned ones
            flip.log_metric("first_epoch_loss", float(np.mean(losses)))
    return score(model, images, masks)


def evaluate(model: torch.nn.Module, config: dict[str, Any]) -> dict[str, float]:
    """Dice (and loss) of ``model`` on this trust's held-out studies."""
    return score(model, *studies(config, held_out=True))

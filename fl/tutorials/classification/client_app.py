"""FLIP tutorial: federated lesion classification (present or absent) from 3-D images with a small CNN.

The label comes from the trust's OMOP data: the project's cohort query (see README.md) returns one
row per imaging study with its ``accession_id`` and ``lesion`` (1 when the study has a lesion
finding recorded in ``image_feature``, else 0). The image is the study's NIfTI volume from
``flip.get_images(accession, "nifti")``, resampled to a small fixed grid and z-scored over the body, so
scanners with different spacing and intensity scales give the model comparable input.

Studies are split into training and held-out sets within each class, ranked by a hash of the
accession id: every round and every run sees the same split, and both sets hold both classes when
the trust has at least two studies of each. ``train`` and ``evaluate`` report ``auc`` (ROC AUC,
computed here with numpy), ``accuracy``, ``loss`` and ``num_examples``.
"""

from __future__ import annotations

import hashlib
import logging
from typing import Any

import nibabel as nib
import numpy as np
import torch
import torch.nn.functional as F

import flip

log = logging.getLogger(__name__)


def split(labels: dict[str, int], held_out_fraction: float) -> tuple[list[str], list[str]]:
    """(training, held-out) accession ids, the same fraction of each class held out, ranked by a hash."""
    training: list[str] = []
    held_out: list[str] = []
    for label in sorted(set(labels.values())):
        ranked = sorted((a for a, y in labels.items() if y == label), key=lambda a: hashlib.sha256(a.encode()).digest())
        count = min(max(1, round(held_out_fraction * len(ranked))), len(ranked) - 1)
        held_out += ranked[:count]
        training += ranked[count:]
    return training, held_out


def load_image(accession: str, grid: int) -> torch.Tensor:
    """The study's volume, z-scored and resampled to ``grid``³, shaped ``[1, g, g, g]``."""
    volumes = sorted(p for p in flip.get_images(accession, "nifti") if p.name.endswith(".nii.gz"))
    if not volumes:
        raise flip.TrainerDataError(f"study {accession} has no NIfTI volume")
    image = np.asarray(nib.load(volumes[0]).get_fdata(), dtype=np.float32)
    # z-score over the body (voxels brighter than the volume's mean): the air around the patient,
    # whose share changes with the field of view, must not set the scale a lesion's contrast is seen on.
    body = image[image > image.mean()]
    image = (image - body.mean()) / (body.std() + 1e-6)
    size = (grid, grid, grid)
    return F.interpolate(torch.from_numpy(image)[None, None], size=size, mode="trilinear", align_corners=False)[0]


def load(accessions: list[str], labels: dict[str, int], grid: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Images and 0/1 labels of the studies whose files are there; the others are skipped with a warning."""
    images, targets = [], []
    for accession in accessions:
        try:
            images.append(load_image(accession, grid))
        except flip.TrainerDataError as exc:
            log.warning("skipping study %s: %s", accession, exc)
            continue
        targets.append(float(labels[accession]))
    if not images:
        raise RuntimeError(f"none of the {len(accessions)} studies could be loaded (see the warnings above)")
    return torch.stack(images), torch.tensor(targets)


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U; tied scores share their average rank).

    0.5 — no better than chance — when only one class is present, where the AUC is undefined.
    """
    positives = int(labels.sum())
    negatives = len(labels) - positives
    if positives == 0 or negatives == 0:
        log.warning("AUC is undefined with only one class present; reporting 0.5")
        return 0.5
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    average_rank = np.cumsum(counts) - (counts - 1) / 2  # 1-based rank shared by each group of ties
    ranks = average_rank[inverse]
    return float((ranks[labels == 1].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def score(model: torch.nn.Module, images: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
    """AUC, accuracy (at probability 0.5), mean loss and the number of studies."""
    model.eval()
    with torch.no_grad():
        logits = model(images).squeeze(1)
        loss = F.binary_cross_entropy_with_logits(logits, targets).item()
    labels, scores = targets.numpy(), logits.numpy()
    return {
        "auc": roc_auc(labels, scores),
        "accuracy": float(((scores > 0) == (labels == 1)).mean()),
        "loss": loss,
        "num_examples": float(len(labels)),
    }


def studies(config: dict[str, Any], held_out: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """This trust's training (or held-out) images and lesion labels."""
    cohort = flip.get_dataframe(["accession_id", "lesion"])
    labels = {str(a): int(y) for a, y in zip(cohort["accession_id"], cohort["lesion"], strict=True)}
    training, evaluation = split(labels, float(config["held_out_fraction"]))
    return load(evaluation if held_out else training, labels, int(config["grid_size"]))


def train(model: torch.nn.Module, config: dict[str, Any]) -> dict[str, float]:
    """Train ``model`` in place on this trust's training studies; metrics on them afterwards."""
    images, targets = studies(config, held_out=False)
    epochs, batch_size = int(config["local_epochs"]), int(config["batch_size"])
    optimiser = torch.optim.Adam(model.parameters(), lr=float(config["learning_rate"]))
    shuffle = torch.Generator().manual_seed(int(config["seed"]) * 1000 + int(config["round"]))
    for epoch in range(epochs):
        model.train()
        losses = []
        for batch in torch.randperm(len(images), generator=shuffle).split(batch_size):
            optimiser.zero_grad()
            loss = F.binary_cross_entropy_with_logits(model(images[batch]).squeeze(1), targets[batch])
            loss.backward()
            optimiser.step()
            losses.append(loss.item())
        if epoch == 0:  # logged metrics travel with the returned ones
            flip.log_metric("first_epoch_loss", float(np.mean(losses)))
    return score(model, images, targets)


def evaluate(model: torch.nn.Module, config: dict[str, Any]) -> dict[str, float]:
    """Metrics of ``model`` on this trust's held-out studies."""
    images, targets = studies(config, held_out=True)
    return score(model, images, targets)

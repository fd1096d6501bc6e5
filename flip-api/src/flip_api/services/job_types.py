"""Job types and the files each needs from the researcher (the manifest the UI shows before training).

A model is trained by one FL backend with one job type. The hub bundles the model's uploaded files with
the job type's template, which it owns and which nobody can change (template files win over uploads of
the same name). Training is refused until every required file is uploaded and clean.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from flip_api.db.models import FlBackend, JobType


@dataclass(frozen=True)
class RequiredFile:
    name: str
    purpose: str


@dataclass(frozen=True)
class JobTypeSpec:
    backend: FlBackend
    job_type: JobType
    title: str
    description: str
    required_files: tuple[RequiredFile, ...]


_MODELS = RequiredFile("models.py", "the network: a get_model() that returns a torch.nn.Module")
_CONFIG = RequiredFile("config.json", "training settings: rounds, local epochs, learning rate, strategy options")
_CHECKPOINT = RequiredFile("checkpoint.pt", "the weights to evaluate (a state dict saved with torch.save)")
_FLOWER_CLIENT = RequiredFile("client_app.py", "train() and evaluate() run at each trust through the trainer SDK")
_NVFLARE_TRAINER = RequiredFile("trainer.py", "the Client API loop run at each trust through the trainer SDK")

_DESCRIPTIONS = {
    JobType.STANDARD: ("Federated averaging", "Each round every trust trains locally; the server averages (FedAvg)."),
    JobType.FED_OPT: (
        "Federated optimisation",
        "As federated averaging, with a server-side optimiser (FedAdam, FedYogi or FedAdagrad) over the average.",
    ),
    JobType.EVALUATION: (
        "Evaluation",
        "No training: the uploaded checkpoint is evaluated at every selected trust and the metrics collected.",
    ),
}


def _spec(backend: FlBackend, job_type: JobType) -> JobTypeSpec:
    client = _FLOWER_CLIENT if backend is FlBackend.FLOWER else _NVFLARE_TRAINER
    files = (client, _MODELS, _CONFIG) + ((_CHECKPOINT,) if job_type is JobType.EVALUATION else ())
    title, description = _DESCRIPTIONS[job_type]
    return JobTypeSpec(backend, job_type, title, description, files)


JOB_TYPES: dict[tuple[FlBackend, JobType], JobTypeSpec] = {
    (backend, job_type): _spec(backend, job_type) for backend in FlBackend for job_type in JobType
}


def job_type_spec(backend: FlBackend, job_type: JobType) -> JobTypeSpec:
    return JOB_TYPES[(backend, job_type)]


def missing_files(spec: JobTypeSpec, clean_names: Iterable[str]) -> list[str]:
    """Required files with no clean upload, in manifest order."""
    present = set(clean_names)
    return [f.name for f in spec.required_files if f.name not in present]

"""PacsClient behaviour, run unchanged against both the embedded pynetdicom PACS and a real Orthanc."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from pacs_testing import (
    CLIENT_AE,
    ORTHANC_DICOM_PORT,
    PACS_AE,
    PACS_PARAMS,
    OrthancUnderTest,
    PacsUnderTest,
    SyntheticStudy,
    running_pacs,
    write_study,
)
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian
from pynetdicom import AE, evt

from flip_imaging.embedded_pacs import EmbeddedPacs
from flip_imaging.pacs import (
    TRANSFER_SYNTAXES,
    AmbiguousAccession,
    InvalidAccession,
    InvalidUid,
    PacsClient,
    PacsUnavailable,
    RetrieveFailed,
    StoreFailed,
    StudyNotFound,
    StudyRootQueryRetrieveInformationModelGet,
    validate_accession,
)


@pytest.fixture(scope="module", params=PACS_PARAMS)
def pacs(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PacsUnderTest]:
    """One running PACS per implementation, shared by the module (tests use unique accessions)."""
    with running_pacs(request.param, tmp_path_factory.mktemp(request.param)) as running:
        yield running


def new_accession() -> str:
    """A fresh accession (VR SH: at most 16 characters)."""
    return "A" + uuid.uuid4().hex[:12].upper()


def seed_study(
    pacs: PacsUnderTest,
    folder: Path,
    *,
    accession: str,
    patient_id: str = "PAT-1",
    series: int = 1,
    instances: int = 2,
    modality: str = "CT",
) -> SyntheticStudy:
    """Write a tiny study and C-STORE it into the PACS."""
    study = write_study(
        folder, accession=accession, patient_id=patient_id, series=series, instances=instances, modality=modality
    )
    assert pacs.seed(folder) == len(study.paths)
    return study


# --------------------------------------------------------------------------------------------- echo


def test_echo_returns_latency(pacs: PacsUnderTest) -> None:
    latency = pacs.call(pacs.client().echo)
    assert 0 < latency < 5


def test_reachable_only_on_loopback(pacs: PacsUnderTest) -> None:
    if isinstance(pacs, OrthancUnderTest):
        # Orthanc binds every interface of its namespace, and that namespace holds nothing but loopback.
        assert pacs.in_own_namespace()
        assert pacs.interfaces() == {"lo"}
        assert any(address.endswith(f":{ORTHANC_DICOM_PORT}") for address in pacs.listening_addresses())
    else:
        assert pacs.listening_addresses() == {f"127.0.0.1:{pacs.port}"}


def test_wrong_called_ae_title_is_unavailable(pacs: PacsUnderTest) -> None:
    client = pacs.client(called_ae_title="NOT_THE_PACS")
    with pytest.raises(PacsUnavailable, match="rejected"):
        pacs.call(client.echo)


def test_nothing_listening_is_unavailable(pacs: PacsUnderTest) -> None:
    client = pacs.client(port=9)  # discard port: nothing listens there in either namespace
    with pytest.raises(PacsUnavailable):
        pacs.call(client.echo)


@pytest.mark.parametrize("kind", PACS_PARAMS)
def test_pacs_down_is_unavailable(kind: str, tmp_path: Path) -> None:
    with running_pacs(kind, tmp_path) as doomed:
        client = doomed.client()
        study = seed_study(doomed, tmp_path / "study", accession=new_accession())
        assert doomed.call(client.echo) > 0
        doomed.kill()
        with pytest.raises(PacsUnavailable):
            doomed.call(client.echo)
        with pytest.raises(PacsUnavailable):
            doomed.call(client.find_studies, study.accession)
        with pytest.raises(PacsUnavailable):
            doomed.call(client.retrieve, study.study_uid, tmp_path / "out")


# --------------------------------------------------------------------------------------------- find


def test_find_by_accession(pacs: PacsUnderTest, tmp_path: Path) -> None:
    accession = new_accession()
    study = seed_study(pacs, tmp_path, accession=accession, patient_id="PAT-FIND", series=2, instances=2)
    client = pacs.client()

    matches = pacs.call(client.find_studies, accession)

    assert len(matches) == 1
    match = matches[0]
    assert match.study_uid == study.study_uid
    assert match.accession == accession
    assert match.patient_id == "PAT-FIND"
    assert match.study_date == "20240102"
    assert match.modalities == ("CT",)
    assert match.instance_count == 4
    assert pacs.call(client.find_study, accession) == match
    assert pacs.call(client.find_study_by_uid, study.study_uid) == match


def test_find_is_exact(pacs: PacsUnderTest, tmp_path: Path) -> None:
    accession = new_accession()
    seed_study(pacs, tmp_path, accession=accession)
    client = pacs.client()
    assert pacs.call(client.find_studies, accession[:-1]) == []  # a prefix is not a match
    assert pacs.call(client.find_studies, accession + "9") == []
    assert len(pacs.call(client.find_studies, f" {accession} ")) == 1  # SH padding is not significant


def test_unknown_accession(pacs: PacsUnderTest) -> None:
    client = pacs.client()
    assert pacs.call(client.find_studies, new_accession()) == []
    with pytest.raises(StudyNotFound):
        pacs.call(client.find_study, new_accession())
    assert pacs.call(client.find_study_by_uid, "1.2.3.4.5.6.7.8.9") is None


def test_ambiguous_accession(pacs: PacsUnderTest, tmp_path: Path) -> None:
    accession = new_accession()
    first = seed_study(pacs, tmp_path / "one", accession=accession, patient_id="PAT-A")
    second = seed_study(pacs, tmp_path / "two", accession=accession, patient_id="PAT-B", modality="MR")
    client = pacs.client()

    matches = pacs.call(client.find_studies, accession)
    assert {m.study_uid for m in matches} == {first.study_uid, second.study_uid}

    with pytest.raises(AmbiguousAccession) as caught:
        pacs.call(client.find_study, accession)
    assert caught.value.accession == accession
    assert len(caught.value.matches) == 2
    assert caught.value.code == "ambiguous_accession"


@pytest.mark.parametrize("max_pdu", [-1, 1, 4095, 2**32])
def test_max_pdu_is_zero_or_a_plausible_size(max_pdu: int) -> None:
    with pytest.raises(ValueError, match="max_pdu"):
        PacsClient("127.0.0.1", 104, PACS_AE, calling_ae_title=CLIENT_AE, max_pdu=max_pdu)


@pytest.mark.parametrize("accession", ["", "   ", "*", "A*", "A?C", "ACC\\OTHER", "ACC\n1", "12345678901234567"])
def test_refused_accessions_are_never_sent(accession: str) -> None:
    # Port 9 has no PACS: reaching the network would raise PacsUnavailable, not InvalidAccession.
    client = PacsClient("127.0.0.1", 9, PACS_AE, calling_ae_title=CLIENT_AE)
    with pytest.raises(InvalidAccession) as caught:
        client.find_studies(accession)
    assert isinstance(caught.value, ValueError)
    with pytest.raises(ValueError, match=r"blank|wildcard|control|longer"):
        client.find_study(accession)


def test_accession_padding_is_stripped() -> None:
    assert validate_accession(" ACC-1 ") == "ACC-1"


# --------------------------------------------------------------------------------------------- retrieve


def test_retrieve_every_instance(pacs: PacsUnderTest, tmp_path: Path) -> None:
    accession = new_accession()
    study = seed_study(pacs, tmp_path / "src", accession=accession, series=2, instances=3)
    client = pacs.client()
    match = pacs.call(client.find_study, accession)
    dest = tmp_path / "dest"

    result = pacs.call(client.retrieve, match.study_uid, dest)

    assert result.complete
    assert (result.received, result.failed, result.status) == (6, 0, 0x0000)
    assert sorted(p.name for p in dest.iterdir()) == sorted(f"{uid}.dcm" for uid in study.sop_uids)
    assert sorted(result.files) == sorted(dest.iterdir())
    originals = {dcmread(p).SOPInstanceUID: dcmread(p) for p in study.paths}
    for path in result.files:
        got = dcmread(path)  # a valid Part-10 file
        assert got.file_meta.MediaStorageSOPInstanceUID == got.SOPInstanceUID
        want = originals[got.SOPInstanceUID]
        assert got.StudyInstanceUID == study.study_uid
        assert got.AccessionNumber == accession
        assert got.pixel_array.tolist() == want.pixel_array.tolist()


def test_retrieve_into_a_sink_writes_nothing_and_hands_over_every_instance(pacs: PacsUnderTest, tmp_path: Path) -> None:
    accession = new_accession()
    study = seed_study(pacs, tmp_path / "src", accession=accession, series=2, instances=2)
    client = pacs.client()
    match = pacs.call(client.find_study, accession)
    taken: list[Dataset] = []

    result = pacs.call(client.retrieve, match.study_uid, tmp_path / "dest", sink=taken.append)

    assert (result.received, result.failed, result.status, result.files) == (4, 0, 0x0000, ())
    assert not (tmp_path / "dest").exists()
    assert sorted(ds.SOPInstanceUID for ds in taken) == sorted(study.sop_uids)
    originals = {dcmread(p).SOPInstanceUID: dcmread(p) for p in study.paths}
    for ds in taken:
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        assert ds.file_meta.TransferSyntaxUID in TRANSFER_SYNTAXES
        assert ds.PixelData == originals[ds.SOPInstanceUID].PixelData


def test_a_failing_sink_refuses_the_rest_and_its_error_is_raised(pacs: PacsUnderTest, tmp_path: Path) -> None:
    accession = new_accession()
    seed_study(pacs, tmp_path / "src", accession=accession, instances=3)
    client = pacs.client()
    match = pacs.call(client.find_study, accession)
    calls: list[str] = []

    def broken(ds: Dataset) -> None:
        calls.append(str(ds.SOPInstanceUID))
        raise ValueError("cannot take this one")

    with pytest.raises(ValueError, match="cannot take this one"):
        pacs.call(client.retrieve, match.study_uid, tmp_path / "dest", sink=broken)
    assert len(calls) == 1  # the others were refused without being handed over


def test_retrieve_unknown_study(pacs: PacsUnderTest, tmp_path: Path) -> None:
    client = pacs.client()
    with pytest.raises(StudyNotFound):
        pacs.call(client.retrieve, "1.2.826.0.1.3680043.99.1", tmp_path / "dest")


def test_study_deleted_between_find_and_retrieve(pacs: PacsUnderTest, tmp_path: Path) -> None:
    accession = new_accession()
    seed_study(pacs, tmp_path / "src", accession=accession, instances=3)
    client = pacs.client()
    match = pacs.call(client.find_study, accession)

    pacs.delete_study(match.study_uid)

    with pytest.raises(StudyNotFound) as caught:
        pacs.call(client.retrieve, match.study_uid, tmp_path / "dest")
    assert caught.value.code == "study_not_found"
    assert not any((tmp_path / "dest").iterdir())


@pytest.mark.parametrize("bad", ["../../etc/passwd", "1.2.3/../4", "", "1.2.3.4 ", "1" * 65, "1..2"])
def test_retrieve_refuses_non_uids(bad: str, tmp_path: Path) -> None:
    client = PacsClient("127.0.0.1", 9, PACS_AE, calling_ae_title=CLIENT_AE)
    with pytest.raises(InvalidUid):
        client.retrieve(bad, tmp_path / "dest")
    assert not (tmp_path / "dest").exists()


# --------------------------------------------------------------------------------------------- async + store


async def test_async_wrappers(pacs: PacsUnderTest, tmp_path: Path) -> None:
    accessions = [new_accession() for _ in range(3)]
    studies = [seed_study(pacs, tmp_path / a, accession=a, instances=2) for a in accessions]
    client = pacs.client()

    assert await client.echo_async() > 0
    matches = await asyncio.gather(*(client.find_study_async(a) for a in accessions))
    assert [m.study_uid for m in matches] == [s.study_uid for s in studies]
    results = await asyncio.gather(
        *(client.retrieve_async(m.study_uid, tmp_path / "out" / m.study_uid) for m in matches)
    )
    assert [r.received for r in results] == [2, 2, 2]
    assert await client.find_studies_async(new_accession()) == []


def test_store_folder_skips_non_dicom_files(pacs: PacsUnderTest, tmp_path: Path) -> None:
    accession = new_accession()
    write_study(tmp_path / "nested" / "deeper", accession=accession, instances=2)
    (tmp_path / "README.txt").write_text("not DICOM")
    (tmp_path / "nested" / "fake.dcm").write_bytes(b"\0" * 200)

    assert pacs.seed(tmp_path) == 2
    assert len(pacs.call(pacs.client().find_studies, accession)) == 1


def test_store_reports_unreadable_files(pacs: PacsUnderTest, tmp_path: Path) -> None:
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"garbage")
    result = pacs.call(pacs.client().store, [junk])
    assert result.stored == 0
    assert [f.path for f in result.failed] == [junk]


# --------------------------------------------------------------------------------------------- embedded only


def test_embedded_pacs_listens_on_loopback_and_keeps_its_index(tmp_path: Path) -> None:
    accession = new_accession()
    study = write_study(tmp_path / "src", accession=accession)
    with EmbeddedPacs(tmp_path / "pacs", ae_title=PACS_AE) as pacs:
        assert pacs.host == "127.0.0.1"
        assert pacs.port > 0
        client = PacsClient(pacs.host, pacs.port, PACS_AE, calling_ae_title=CLIENT_AE)
        assert client.store_folder(tmp_path / "src") == 2
        stored = pacs.instances(study.study_uid)
        assert {i.sop_uid for i in stored} == set(study.sop_uids)
        assert all(i.path.is_relative_to(tmp_path / "pacs") and i.accession == accession for i in stored)

    with EmbeddedPacs(tmp_path / "pacs", ae_title=PACS_AE) as reopened:  # the index survives a restart
        client = PacsClient(reopened.host, reopened.port, PACS_AE, calling_ae_title=CLIENT_AE)
        assert client.find_study(accession).study_uid == study.study_uid


def test_embedded_pacs_refuses_unknown_calling_ae(tmp_path: Path) -> None:
    with EmbeddedPacs(tmp_path / "pacs", ae_title=PACS_AE, allowed_calling_aes=[CLIENT_AE]) as pacs:
        assert PacsClient(pacs.host, pacs.port, PACS_AE, calling_ae_title=CLIENT_AE).echo() > 0
        with pytest.raises(PacsUnavailable, match="rejected"):
            PacsClient(pacs.host, pacs.port, PACS_AE, calling_ae_title="STRANGER").echo()


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")
def test_store_failure_raises_store_failed(tmp_path: Path) -> None:
    # A dataset whose StudyInstanceUID is not a UID: the embedded PACS refuses to file it.
    study = write_study(tmp_path / "src", accession=new_accession(), instances=1)
    ds = dcmread(study.paths[0])
    ds.StudyInstanceUID = "../escape"
    ds.save_as(study.paths[0])
    with EmbeddedPacs(tmp_path / "pacs", ae_title=PACS_AE) as pacs:
        client = PacsClient(pacs.host, pacs.port, PACS_AE, calling_ae_title=CLIENT_AE)
        with pytest.raises(StoreFailed) as caught:
            client.store_folder(tmp_path / "src")
        assert caught.value.result.failed[0].status == 0xC000
        assert not (tmp_path / "escape").exists()


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")
def test_hostile_pacs_cannot_write_outside_dest(tmp_path: Path) -> None:
    """A PACS that answers C-GET with a path-like SOPInstanceUID and a foreign study gets both refused."""
    study_uid = "1.2.826.0.1.3680043.99.2"
    evil = Dataset()
    evil.SOPClassUID = CTImageStorage
    evil.SOPInstanceUID = "../../escaped"
    evil.StudyInstanceUID = study_uid
    foreign = Dataset()
    foreign.SOPClassUID = CTImageStorage
    foreign.SOPInstanceUID = "1.2.826.0.1.3680043.99.3"
    foreign.StudyInstanceUID = "1.2.826.0.1.3680043.99.4"
    for ds in (evil, foreign):
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian

    def handle_get(event: evt.Event) -> Iterator[object]:
        yield 2
        yield 0xFF00, evil
        yield 0xFF00, foreign

    ae = AE(ae_title=PACS_AE)
    ae.add_supported_context(StudyRootQueryRetrieveInformationModelGet)
    ae.add_supported_context(CTImageStorage, scu_role=True, scp_role=True)
    server = ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_GET, handle_get)])
    assert server is not None
    try:
        client = PacsClient("127.0.0.1", server.server_address[1], PACS_AE, calling_ae_title=CLIENT_AE)
        with pytest.raises(RetrieveFailed) as caught:
            client.retrieve(study_uid, tmp_path / "a" / "b" / "dest")
    finally:
        ae.shutdown()
    assert caught.value.result is not None
    assert caught.value.result.failed == 2
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []

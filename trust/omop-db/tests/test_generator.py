"""The synthetic-data generator without a database: determinism, profiles, imaging rows, encoding."""

from __future__ import annotations

import hashlib
import re
from dataclasses import replace

import numpy as np
import pytest

from flip_omop import (
    PROFILES,
    UID_ROOT,
    TrustProfile,
    generate_blocks,
    get_profile,
    image_occurrences,
    pgbinary,
    profile_for,
)
from flip_omop.columns import GENERATED_TABLES
from flip_omop.generator import BLOCK_PERSONS, dataset_tag
from flip_omop.imaging import values as column_values


def _digest(profile: TrustProfile, persons: int, seed: int) -> dict[str, str]:
    hashes = {name: hashlib.sha256() for name in GENERATED_TABLES}
    for block in generate_blocks(profile, persons, seed):
        for name, table in block.items():
            hashes[name].update(table.encode().tobytes())
    return {name: h.hexdigest() for name, h in hashes.items()}


def test_same_arguments_give_byte_identical_data() -> None:
    assert _digest(PROFILES["north"], 3_000, 5) == _digest(PROFILES["north"], 3_000, 5)


def test_seed_and_profile_change_every_table() -> None:
    base = _digest(PROFILES["north"], 3_000, 5)
    other_seed = _digest(PROFILES["north"], 3_000, 6)
    other_profile = _digest(PROFILES["south"], 3_000, 5)
    for table in GENERATED_TABLES:
        assert base[table] != other_seed[table], table
        assert base[table] != other_profile[table], table


def test_ids_run_on_across_blocks() -> None:
    persons = BLOCK_PERSONS + 1_000
    ids: dict[str, list[int]] = {}
    for block in generate_blocks(PROFILES["east"], persons, 1):
        for name in ("person", "visit_occurrence", "measurement", "image_occurrence"):
            ids.setdefault(name, []).extend(block[name].columns[0].values.tolist())
    assert ids["person"] == list(range(1, persons + 1))
    for name, values in ids.items():
        assert values == list(range(1, len(values) + 1)), name


def test_imaging_studies_have_unique_accessions_and_valid_uids() -> None:
    studies = list(image_occurrences(PROFILES["south"], 4_000, 2))

    assert 0.2 * 4_000 < len(studies) < 0.35 * 4_000
    accessions = [s.accession_id for s in studies]
    assert len(set(accessions)) == len(accessions)
    assert all(re.fullmatch(r"STH\d{8}", a) for a in accessions)
    uids = [s.study_instance_uid for s in studies] + [s.series_instance_uid for s in studies]
    assert len(set(uids)) == len(uids)
    for uid in uids:
        assert uid.startswith(UID_ROOT + ".")
        assert len(uid) <= 64
        assert re.fullmatch(r"(0|[1-9]\d*)(\.(0|[1-9]\d*))*", uid), uid  # DICOM PS3.5 9.1
    assert {s.modality for s in studies} == {"CT", "MR"}
    assert {s.anatomic_site for s in studies} == {"chest", "abdomen", "head"}
    for s in studies:
        assert s.lesion == (s.lesion_diameter_mm is not None)
        assert s.birth_date <= s.study_date
        assert s.person_source_value.startswith("STH-")
    assert 0.05 < sum(s.lesion for s in studies) / len(studies) < 0.6


def test_datasets_do_not_share_uids() -> None:
    tags = {dataset_tag(p, n, s) for p in PROFILES.values() for n in (100, 1_000) for s in (0, 1)}
    assert len(tags) == 12


def test_profile_for_picks_by_position_name_or_stable_hash() -> None:
    assert [profile_for(i).name for i in range(4)] == ["north", "south", "east", "north"]
    assert profile_for("east") is PROFILES["east"]
    assert profile_for("RJ1") is profile_for("RJ1")
    assert {profile_for(f"trust-{i}").name for i in range(30)} == set(PROFILES)
    with pytest.raises(ValueError, match="negative"):
        profile_for(-1)


def test_unknown_and_inconsistent_profiles_are_refused() -> None:
    with pytest.raises(ValueError, match="north, south, east"):
        get_profile("west")
    with pytest.raises(ValueError, match="accession_prefix"):
        replace(PROFILES["north"], accession_prefix="nth1")
    with pytest.raises(ValueError, match="smoking_mix"):
        replace(PROFILES["north"], smoking_mix=(0.5, 0.5, 0.5))


def test_profiles_differ_in_demographics_and_prevalence() -> None:
    def stats(name: str) -> dict[str, float]:
        persons = female = 0
        age_sum = 0.0
        t2dm: set[int] = set()
        copd: set[int] = set()
        asthma: set[int] = set()
        for block in generate_blocks(PROFILES[name], 20_000, 3):
            person = block["person"]
            persons += person.rows
            female += int((person.column("gender_concept_id").values == 8532).sum())
            age_sum += float((2024 - person.column("year_of_birth").values).sum())
            cond = block["condition_occurrence"]
            concept = cond.column("condition_concept_id").values
            pid = cond.column("person_id").values
            t2dm.update(pid[concept == 201826].tolist())
            copd.update(pid[concept == 255573].tolist())
            asthma.update(pid[concept == 317009].tolist())
        return {
            "female": female / persons,
            "age": age_sum / persons,
            "t2dm": len(t2dm) / persons,
            "copd": len(copd) / persons,
            "asthma": len(asthma) / persons,
        }

    north, south, east = stats("north"), stats("south"), stats("east")
    assert north["age"] > east["age"] + 3
    assert east["age"] > south["age"] + 1
    assert south["female"] > north["female"] > east["female"]
    assert east["t2dm"] > 1.3 * north["t2dm"]
    assert north["t2dm"] > 1.5 * south["t2dm"]
    assert north["copd"] > 2 * south["copd"]
    assert south["asthma"] > 1.3 * north["asthma"]


def test_numeric_encoding_is_fixed_width_base_10000() -> None:
    field = pgbinary.numeric(np.array([0.0, 1234.5, -7.25, 12345678.9]), np.array([0, 1, 2, 1]))
    words = field.values.astype(np.int64).tolist()
    assert words[1] == [3, 1, 0, 1, 0, 1234, 5000]
    assert words[2] == [3, 1, 0x4000, 2, 0, 7, 2500]
    assert words[3] == [3, 1, 0, 1, 1234, 5678, 9000]
    with pytest.raises(ValueError, match="below 10"):
        pgbinary.numeric(np.array([1e9]), 0)


def test_encoded_rows_follow_the_copy_wire_format() -> None:
    rows = pgbinary.encode_rows(
        [
            pgbinary.int4(np.array([1, 2])),
            pgbinary.text_from_vocabulary(np.array([1, -1]), ["a", "bcd"]),
        ]
    ).tobytes()
    first = b"\x00\x02" + b"\x00\x00\x00\x04" + b"\x00\x00\x00\x01" + b"\x00\x00\x00\x03" + b"bcd"
    second = b"\x00\x02" + b"\x00\x00\x00\x04" + b"\x00\x00\x00\x02" + b"\xff\xff\xff\xff"
    assert rows == first + second


@pytest.mark.parametrize("persons", [1, 2, 3])
def test_tiny_datasets_without_imaging_still_generate(persons: int) -> None:
    """A dataset can be too small to hold any imaging study; that is no reason to fail."""
    north = get_profile("north")
    tables = list(generate_blocks(north, persons, 3))
    assert sum(len(column_values(block["person"], "person_id")) for block in tables) == persons
    assert isinstance(list(image_occurrences(north, persons, 3)), list)

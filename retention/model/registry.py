"""The model registry: versions under the models directory, a promotion gate, a history.

Every trained model is kept as a version folder (``retention.model.artifacts``).
Which one scoring uses is ``CURRENT``; every change to it is appended to
``history.jsonl`` (who moved it where, and why), so a rollback knows where
to go back to. Each version's gate decision (``retention.evaluation.gate``) is
``gate.json`` in its folder, and a version is promoted only if it passed.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from retention.evaluation.gate import GateDecision
from retention.model import artifacts
from retention.model.booster import ModelError

GATE_FILE = "gate.json"
HISTORY_FILE = "history.jsonl"


class RegistryError(RuntimeError):
    """A registry action cannot be done; the message says why and what to do."""


def write_gate(models_dir: Path, decision: GateDecision) -> None:
    """Keep a version's gate decision beside it (not part of its hashed files)."""
    (models_dir / decision.version / GATE_FILE).write_text(
        json.dumps(decision.to_dict(), indent=2, sort_keys=True)
    )


def read_gate(models_dir: Path, version: str) -> dict[str, Any] | None:
    path = models_dir / version / GATE_FILE
    return json.loads(path.read_text()) if path.exists() else None


def current_or_none(models_dir: Path) -> str | None:
    try:
        return artifacts.current_version(models_dir)
    except ModelError:
        return None


def list_versions(models_dir: Path) -> list[dict[str, Any]]:
    """Every version, newest first, with its headline numbers and gate outcome."""
    current = current_or_none(models_dir)
    out: list[dict[str, Any]] = []
    if not models_dir.exists():
        return out
    for folder in models_dir.iterdir():
        meta_path = folder / artifacts.METADATA_FILE
        if not folder.is_dir() or not meta_path.exists():
            continue
        meta = json.loads(meta_path.read_text())
        gate_record = read_gate(models_dir, folder.name)
        evaluation = meta.get("metrics", {}).get("evaluation", {})
        out.append({
            "version": folder.name,
            "trained_as_of": meta.get("trained_as_of"),
            "created_at": meta.get("created_at"),
            "auroc": evaluation.get("auroc"),
            "brier": evaluation.get("brier"),
            "gate": None if gate_record is None else gate_record["passed"],
            "current": folder.name == current,
        })
    return sorted(out, key=lambda r: (r["created_at"] or "", r["version"]), reverse=True)


def show(models_dir: Path, version: str | None = None) -> dict[str, Any]:
    """A version's metadata (without the bulky drift reference) and its gate decision."""
    version = version or artifacts.current_version(models_dir)
    meta_path = models_dir / version / artifacts.METADATA_FILE
    if not meta_path.exists():
        raise RegistryError(f"no model version {version!r} in {models_dir}; "
                            "see `retention models list`")
    meta = json.loads(meta_path.read_text())
    meta.pop("drift_reference", None)
    meta["gate"] = read_gate(models_dir, version)
    meta["current"] = version == current_or_none(models_dir)
    return meta


def history(models_dir: Path) -> list[dict[str, Any]]:
    path = models_dir / HISTORY_FILE
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def promote(models_dir: Path, version: str, *, reason: str, force: bool = False) -> str | None:
    """Make ``version`` current if its gate passed (or ``force``); returns the previous one.

    The version is loaded first, so a version that fails its hashes or feature
    list is never made current.
    """
    artifacts.load(models_dir, version)
    decision = read_gate(models_dir, version)
    if not force:
        if decision is None:
            raise RegistryError(f"version {version} has no gate decision; retrain it with "
                                "`retention train`, or promote with --force and a reason")
        if not decision["passed"]:
            raise RegistryError(f"version {version} was refused by the promotion gate: "
                                + "; ".join(decision["refusals"])
                                + ". Use --force with a reason to override")
    previous = current_or_none(models_dir)
    artifacts.set_current(models_dir, version)
    _append(models_dir, {"action": "force-promote" if force else "promote",
                         "version": version, "previous": previous, "reason": reason})
    return previous


def rollback(models_dir: Path, *, reason: str) -> str:
    """Make the version that was current before this one current again; returns it."""
    current = current_or_none(models_dir)
    if current is None:
        raise RegistryError("no current model to roll back from")
    # The version replaced when the current one was last promoted (not a rollback,
    # so rolling back twice walks further back instead of toggling).
    previous = next((e["previous"] for e in reversed(history(models_dir))
                     if e["version"] == current and e["action"] != "rollback"), None)
    if previous is None:
        raise RegistryError(f"no earlier version recorded before {current}; "
                            "promote one explicitly with `retention models promote`")
    artifacts.load(models_dir, previous)
    artifacts.set_current(models_dir, previous)
    _append(models_dir, {"action": "rollback", "version": previous, "previous": current,
                         "reason": reason})
    return previous


def _append(models_dir: Path, entry: dict[str, Any]) -> None:
    entry = {"at": datetime.now(UTC).isoformat(timespec="seconds"), **entry}
    with (models_dir / HISTORY_FILE).open("a") as fh:
        fh.write(json.dumps(entry, sort_keys=True) + "\n")

"""The model registry: versions under the models directory, a promotion gate, a history.

Every trained model is kept as a version folder (``retention.model.artifacts``).
Which one scoring uses is ``CURRENT``; every change to it is appended to
``history.jsonl`` (who moved it where, and why), so a rollback knows where
to go back to. Each version's gate decision (``retention.evaluation.gate``) is
``gate.json`` in its folder, and a version is promoted only if it passed.

Everything that decides what is served is signed (``retention.model.signing``): each
version's files, its gate decision with them, and each line of the history, chained
to the one before. Promotion and rollback check the version and the history first;
a version or history that does not verify is refused, never repaired silently. A
deliberate re-signing (``sign``, ``resign_history``) records who did it and why.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from retention.db.locks import file_lock
from retention.evaluation.gate import GateDecision
from retention.model import artifacts, signing
from retention.model.booster import ModelError
from retention.model.signing import SigningKey, resolve_key

GATE_FILE = "gate.json"
HISTORY_FILE = artifacts.HISTORY_FILE
LOCK_FILE = ".registry.lock"


class RegistryError(RuntimeError):
    """A registry action cannot be done; the message says why and what to do."""


@contextmanager
def _locked(models_dir: Path) -> Iterator[None]:
    """One change to the registry at a time (the history is a chain: two appends would fork it)."""
    with file_lock(models_dir / LOCK_FILE):
        yield


def write_gate(models_dir: Path, decision: GateDecision, *, key: SigningKey | None = None) -> None:
    """Keep a version's gate decision beside it, signed with the rest of the version.

    The version must verify first: signing it again must never bless a file changed
    since it was saved.
    """
    key = key or resolve_key()
    folder = models_dir / decision.version
    _, contents = artifacts.read_checked(folder, decision.version, key=key)
    manifest = signing.read_signature(folder) or {}
    data = json.dumps(decision.to_dict(), indent=2, sort_keys=True).encode()
    (folder / GATE_FILE).write_bytes(data)
    signing.sign_version(folder, decision.version, {**contents, GATE_FILE: data}, key,
                         signed_by=str(manifest.get("signed_by", signing.signer())),
                         reason=str(manifest.get("reason", "trained")))


def read_gate(models_dir: Path, version: str) -> dict[str, Any] | None:
    """A version's gate decision as stored (for display; promotion reads the verified one)."""
    path = models_dir / version / GATE_FILE
    return json.loads(path.read_text()) if path.exists() else None


def current_or_none(models_dir: Path) -> str | None:
    try:
        return artifacts.current_version(models_dir)
    except ModelError:
        return None


def list_versions(models_dir: Path, *, key: SigningKey | None = None) -> list[dict[str, Any]]:
    """Every version, newest first, with its headline numbers and gate outcome.

    With ``key``, each row also says whether the version verifies (``problem`` is
    None, or why it would be refused).
    """
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
        row = {
            "version": folder.name,
            "trained_as_of": meta.get("trained_as_of"),
            "created_at": meta.get("created_at"),
            "auroc": evaluation.get("auroc"),
            "brier": evaluation.get("brier"),
            "gate": None if gate_record is None else gate_record["passed"],
            "current": folder.name == current,
        }
        if key is not None:
            row["problem"] = _problem(folder, key)
        out.append(row)
    return sorted(out, key=lambda r: (r["created_at"] or "", r["version"]), reverse=True)


def _problem(folder: Path, key: SigningKey) -> str | None:
    try:
        artifacts.read_checked(folder, folder.name, key=key)
    except ModelError as exc:
        return str(exc)
    return None


def show(models_dir: Path, version: str | None = None) -> dict[str, Any]:
    """A version's metadata (without the bulky drift reference), gate decision and signature."""
    version = version or artifacts.current_version(models_dir)
    meta_path = models_dir / version / artifacts.METADATA_FILE
    if not meta_path.exists():
        raise RegistryError(f"no model version {version!r} in {models_dir}; "
                            "see `retention models list`")
    meta = json.loads(meta_path.read_text())
    meta.pop("drift_reference", None)
    meta["gate"] = read_gate(models_dir, version)
    meta["current"] = version == current_or_none(models_dir)
    signature = signing.read_signature(models_dir / version)
    meta["signature"] = None if signature is None else {
        k: signature.get(k) for k in ("signed_at", "signed_by", "reason", "key_id")}
    return meta


def history(models_dir: Path, *, key: SigningKey | None = None) -> list[dict[str, Any]]:
    """Every change to the registry, oldest first, after checking the signed chain."""
    return signing.read_journal(models_dir / HISTORY_FILE, key or resolve_key())


def promote(models_dir: Path, version: str, *, reason: str, force: bool = False,
            key: SigningKey | None = None, by: str | None = None) -> str | None:
    """Make ``version`` current if its gate passed (or ``force``); returns the previous one.

    The version is loaded first and its signed gate decision read, so a version that
    fails its signature, hashes or feature list is never made current; the history
    must verify before it is extended.
    """
    key = key or resolve_key()
    with _locked(models_dir):
        _, contents = artifacts.read_checked(models_dir / version, version, key=key)
        artifacts.load(models_dir, version, key=key)
        decision = json.loads(contents[GATE_FILE]) if GATE_FILE in contents else None
        if not force:
            if decision is None:
                raise RegistryError(f"version {version} has no gate decision; retrain it with "
                                    "`retention train`, or promote with --force and a reason")
            if not decision["passed"]:
                raise RegistryError(f"version {version} was refused by the promotion gate: "
                                    + "; ".join(decision["refusals"])
                                    + ". Use --force with a reason to override")
        previous = _served(models_dir, key)
        _append(models_dir, key, {"action": "force-promote" if force else "promote",
                                  "version": version, "previous": previous, "reason": reason,
                                  "by": by or signing.signer()})
        artifacts.set_current(models_dir, version)
    return previous


def rollback(models_dir: Path, *, reason: str, key: SigningKey | None = None,
             by: str | None = None) -> str:
    """Make the version that was current before this one current again; returns it."""
    key = key or resolve_key()
    with _locked(models_dir):
        entries = history(models_dir, key=key)
        current = _served(models_dir, key, entries)
        if current is None:
            raise RegistryError("no current model to roll back from")
        # The version replaced when the current one was last promoted (not a rollback,
        # so rolling back twice walks further back instead of toggling).
        previous = next((e["previous"] for e in reversed(entries)
                         if e.get("version") == current
                         and e.get("action") in ("promote", "force-promote")), None)
        if previous is None:
            raise RegistryError(f"no earlier version recorded before {current}; "
                                "promote one explicitly with `retention models promote`")
        artifacts.load(models_dir, previous, key=key)
        _append(models_dir, key, {"action": "rollback", "version": previous,
                                  "previous": current, "reason": reason,
                                  "by": by or signing.signer()})
        artifacts.set_current(models_dir, previous)
    return previous


def _served(models_dir: Path, key: SigningKey,
            entries: list[dict[str, Any]] | None = None) -> str | None:
    """The version the signed history made current last (None if none): not CURRENT,
    which is only a copy of it anyone with the folder could edit."""
    entries = history(models_dir, key=key) if entries is None else entries
    moves = [e for e in entries if e.get("action") in artifacts.MOVES]
    return moves[-1].get("version") if moves else None


def sign(models_dir: Path, version: str, *, reason: str, key: SigningKey | None = None,
         by: str | None = None) -> dict[str, Any] | None:
    """Sign a version deliberately (trained before signing, or under another key).

    The version must still agree with itself (metadata hashes, name digest): signing
    says someone vouched for it, not that anything goes. Returns the signature it
    replaced, if any; who and why are recorded in the history.
    """
    if not reason.strip():
        raise RegistryError("signing a version needs a reason saying why it is trusted")
    key = key or resolve_key()
    folder = models_dir / version
    if not (folder / artifacts.METADATA_FILE).exists():
        raise RegistryError(f"no model version {version!r} in {models_dir}; "
                            "see `retention models list`")
    by = by or signing.signer()
    with _locked(models_dir):
        signing.read_journal(models_dir / HISTORY_FILE, key)
        replaced = signing.read_signature(folder)
        contents = {p.name: p.read_bytes() for p in sorted(folder.iterdir())
                    if p.is_file() and p.name != signing.SIGNATURE_FILE
                    and not p.name.endswith(".tmp")}
        artifacts.check_consistent(version, contents)
        if GATE_FILE in contents:
            json.loads(contents[GATE_FILE])  # a gate decision that is not JSON is not signed
        signing.sign_version(folder, version, contents, key, signed_by=by, reason=reason)
        _append(models_dir, key, {"action": "sign", "version": version, "reason": reason,
                                  "by": by, "replaced_key_id": (replaced or {}).get("key_id")})
    return replaced


def resign_history(models_dir: Path, *, reason: str, key: SigningKey | None = None,
                   by: str | None = None) -> int:
    """Sign the whole history again as it stands (from before signing, or a new key).

    Returns the entries re-signed; who and why are the next entry.
    """
    if not reason.strip():
        raise RegistryError("re-signing the history needs a reason")
    key = key or resolve_key()
    with _locked(models_dir):
        count = signing.resign_journal(models_dir / HISTORY_FILE, key)
        _append(models_dir, key, {"action": "resign-history", "version": None,
                                  "entries": count, "reason": reason,
                                  "by": by or signing.signer()})
    return count


def _append(models_dir: Path, key: SigningKey, entry: dict[str, Any]) -> None:
    entry = {"at": datetime.now(UTC).isoformat(timespec="seconds"), **entry}
    signing.append_journal(models_dir / HISTORY_FILE, entry, key)

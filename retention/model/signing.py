"""Signatures over model versions and the registry's records, with a key kept elsewhere.

A hash written beside a file only says the file was not damaged by accident: whoever
can edit ``model.txt`` can also write its new SHA-256 into ``metadata.json``. A
signature needs a key, and the key is not stored with the models: it comes from the
environment (``RETENTION_MODEL_KEY``, the secret itself) or from a key file only its
owner can read (``model_key_file`` / ``RETENTION_MODEL_KEY_FILE``). With neither, the
key is ``~/.config/retention/model-signing.key``, created on first use by training
(the demo and the tests rely on this; the message says where it is).

The signature is an HMAC-SHA256 (a symmetric key: the jobs that sign and the jobs
that verify run in the same service, under the same account):

- **a version** is signed by ``signature.json`` in its folder: the SHA-256 of every
  other file there (model, calibrator, metadata, evaluation, gate), the version's
  name, who signed and why, and the HMAC over all of it. A file changed, added or
  removed after signing, a folder renamed, or a signature made with another key is
  refused;
- **the registry's journal** (``history.jsonl``: promotions, rollbacks, deliberate
  signings) is a chain: each line carries the HMAC of its content and of the line
  before it, so a line edited, removed or moved is found.

Nothing here reads the environment: the settings do, and hand the values in.
"""

from __future__ import annotations

import getpass
import hashlib
import hmac
import json
import logging
import os
import secrets
import socket
import stat
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from retention.model.booster import ModelError
from retention.settings import Settings

log = logging.getLogger(__name__)

SIGNATURE_FILE = "signature.json"
FORMAT = 1
# A key shorter than this is refused: an HMAC key should carry at least 256 bits.
MIN_KEY_CHARS = 32
KEY_ENV = "RETENTION_MODEL_KEY"
KEY_FILE_ENV = "RETENTION_MODEL_KEY_FILE"

# What each kind of signed record is, so one can never stand in for another.
_VERSION_KIND = b"retention model version\n"
_JOURNAL_KIND = b"retention registry entry\n"


class SigningError(ModelError):
    """A signature is missing, does not verify, or no usable key is configured."""


def default_key_file() -> Path:
    """Where the key lives when none is configured: the account's private config folder."""
    return Path.home() / ".config" / "retention" / "model-signing.key"


@dataclass(frozen=True)
class SigningKey:
    """The secret that signs and verifies, and where it came from (for messages)."""

    secret: bytes = field(repr=False)
    source: str
    # True when this process has just created the key file (callers say so).
    created: bool = False

    @property
    def key_id(self) -> str:
        """A fingerprint that names the key in signatures and messages, revealing nothing."""
        return hmac.new(self.secret, b"retention model key id", hashlib.sha256).hexdigest()[:16]

    def mac(self, kind: bytes, record: Mapping[str, Any]) -> str:
        """The HMAC-SHA256 of a record in canonical JSON, for one kind of record."""
        return hmac.new(self.secret, kind + canonical(record), hashlib.sha256).hexdigest()


def canonical(record: Mapping[str, Any]) -> bytes:
    """One byte string per record: sorted keys, no spaces, ASCII."""
    return json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def signer() -> str:
    """Who is signing: the account and the machine running this process."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no login name in this environment
        user = f"uid {os.geteuid()}"
    return f"{user}@{socket.gethostname()}"


# --- the key -------------------------------------------------------------------------


def model_key(settings: Settings, *, create: bool = False) -> SigningKey:
    """The key the settings name (``RETENTION_MODEL_KEY``, ``model_key_file``, or the default).

    ``create``: make the default key file if nothing is configured and it is missing
    (training does; loading never does, since a new key verifies nothing).
    """
    return resolve_key(
        settings.model_key, settings.model_key_file, models_dir=settings.models_dir, create=create
    )


def resolve_key(
    value: str = "",
    key_file: Path | None = None,
    *,
    models_dir: Path | None = None,
    create: bool = False,
    default_file: Path | None = None,
) -> SigningKey:
    """The signing key from its value (``RETENTION_MODEL_KEY``), a key file, or the default.

    Only the default file is created when missing (with ``create``, as training does):
    a key file that was configured and is missing is an error, not a new key. A key
    file inside ``models_dir`` is refused, since the key must not travel with the models.
    """
    if value:
        secret = value.strip()
        if len(secret) < MIN_KEY_CHARS:
            raise SigningError(
                f"{KEY_ENV} is too short ({len(secret)} characters); use at "
                f"least {MIN_KEY_CHARS}, such as the output of "
                "`python -c 'import secrets; print(secrets.token_hex(32))'`"
            )
        return SigningKey(secret.encode(), f"${KEY_ENV}")
    configured = key_file is not None
    path = key_file if key_file is not None else (default_file or default_key_file())
    if models_dir is not None and _inside(path, models_dir):
        raise SigningError(
            f"the model signing key {path} is inside the models directory "
            f"{models_dir}: whoever can change a model could then re-sign it. "
            f"Move it elsewhere and point model_key_file ({KEY_FILE_ENV}) at it"
        )
    if not path.exists() and not path.is_symlink():
        if configured or not create:
            where = (
                f"the key file {path} (model_key_file / {KEY_FILE_ENV}) does not exist"
                if configured
                else f"no model signing key is configured and {path} does not exist"
            )
            raise SigningError(
                f"{where}: model versions cannot be verified. Set {KEY_ENV}, "
                f"point {KEY_FILE_ENV} at the service's key file, or create "
                "one with `retention models key --create PATH`"
            )
        key = create_key_file(path)
        log.warning(
            "created a model signing key at %s (key id %s); back it up, or set %s "
            "to keep it elsewhere",
            path,
            key.key_id,
            KEY_FILE_ENV,
        )
        return key
    return read_key_file(path)


def _inside(path: Path, folder: Path) -> bool:
    return path.resolve().is_relative_to(folder.resolve())


def read_key_file(path: Path) -> SigningKey:
    """A key file's secret, after checking that only its owner can read or change it."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as exc:
        raise SigningError(
            f"cannot open the model signing key {path}: {exc.strerror}; it "
            "must be a regular file (not a link) readable by this account"
        ) from exc
    with os.fdopen(fd, "rb") as fh:
        info = os.fstat(fh.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise SigningError(f"the model signing key {path} is not a regular file")
        if info.st_uid != os.geteuid():
            raise SigningError(
                f"the model signing key {path} belongs to another account "
                f"(uid {info.st_uid}); it must belong to the account that runs "
                "the service"
            )
        if info.st_mode & 0o077:
            raise SigningError(
                f"the model signing key {path} can be read or changed by "
                f"others (mode {stat.S_IMODE(info.st_mode):04o}); run "
                f"`chmod 600 {path}`"
            )
        secret = fh.read().strip()
    if len(secret) < MIN_KEY_CHARS:
        raise SigningError(
            f"the model signing key {path} is too short ({len(secret)} "
            f"characters; at least {MIN_KEY_CHARS})"
        )
    return SigningKey(secret, str(path))


def create_key_file(path: Path) -> SigningKey:
    """Write a new random key to ``path`` (mode 0600) unless one is there; returns the key.

    Written to a private temporary file and linked into place, so two processes
    creating it at once end up sharing one complete key.
    """
    fresh = not path.parent.exists()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    if fresh:
        path.parent.chmod(0o700)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".model-key-")  # mode 0600
    try:
        os.write(fd, (secrets.token_hex(32) + "\n").encode())
        os.fsync(fd)
        os.close(fd)
        try:
            os.link(tmp, path)
        except FileExistsError:
            return read_key_file(path)  # another process made it first: share theirs
    finally:
        os.unlink(tmp)
    key = read_key_file(path)
    return SigningKey(key.secret, key.source, created=True)


# --- versions ------------------------------------------------------------------------


def digests(files: Mapping[str, bytes]) -> dict[str, str]:
    return {name: hashlib.sha256(data).hexdigest() for name, data in sorted(files.items())}


def sign_version(
    folder: Path,
    version: str,
    files: Mapping[str, bytes],
    key: SigningKey,
    *,
    signed_by: str,
    reason: str,
) -> dict[str, Any]:
    """Write ``signature.json`` over ``files`` (name -> the exact bytes written to the folder).

    The hashes are of the bytes the caller holds, not of what is read back from disk.
    """
    manifest: dict[str, Any] = {
        "format": FORMAT,
        "version": version,
        "files": digests(files),
        "key_id": key.key_id,
        "signed_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "signed_by": signed_by,
        "reason": reason,
    }
    manifest["hmac_sha256"] = key.mac(_VERSION_KIND, manifest)
    _write_atomically(folder / SIGNATURE_FILE, json.dumps(manifest, indent=2, sort_keys=True))
    return manifest


def read_signature(folder: Path) -> dict[str, Any] | None:
    """A version's signature as written (unchecked), or None if it has none."""
    try:
        found = json.loads((folder / SIGNATURE_FILE).read_text())
    except FileNotFoundError:
        return None
    except (json.JSONDecodeError, UnicodeDecodeError):
        return {}
    return found if isinstance(found, dict) else {}


def verify_version(
    folder: Path, version: str, key: SigningKey
) -> tuple[dict[str, Any], dict[str, bytes]]:
    """The signature and the bytes of every file of a version, after checking them all.

    Refuses, naming the file and what to do: no signature; a signature made with
    another key or edited; a signature of another version (a renamed folder); any
    file changed, added or removed since signing.
    """
    what = f"model version {version!r} failed its integrity check"
    manifest = read_signature(folder)
    if manifest is None:
        if not folder.is_dir():
            raise ModelError(
                f"no model version {version!r} in {folder.parent}; see `retention models list`"
            )
        raise SigningError(
            f"model version {version!r} is not signed ({folder / SIGNATURE_FILE} is missing) "
            "and is refused. Retrain it with `retention train`, or, once you have checked "
            f"where it came from, sign it deliberately: `retention models sign {version} "
            "--reason ...` (who and why are recorded)"
        )
    claimed = {k: v for k, v in manifest.items() if k != "hmac_sha256"}
    mac = manifest.get("hmac_sha256")
    if not isinstance(mac, str) or not hmac.compare_digest(mac, key.mac(_VERSION_KIND, claimed)):
        if manifest.get("key_id") not in (None, key.key_id):
            raise SigningError(
                f"{what}: {SIGNATURE_FILE} was made with another key (key id "
                f"{manifest.get('key_id')}; this service's key {key.key_id} is from "
                f"{key.source}). Use the key it was signed with, retrain, or re-sign it "
                f"deliberately with `retention models sign {version} --reason ...`"
            )
        raise SigningError(
            f"{what}: {SIGNATURE_FILE} does not verify with this service's key "
            f"(from {key.source}): it was altered after signing. Retrain the "
            "version or restore it from a copy you trust"
        )
    if manifest.get("version") != version:
        raise SigningError(
            f"{what}: its folder is named {version!r} but its signature is for "
            f"{manifest.get('version')!r} (a folder renamed or copied over "
            "another); restore the version under its own name"
        )
    signed = manifest.get("files") or {}
    present = sorted(p.name for p in folder.iterdir() if p.name != SIGNATURE_FILE)
    added = [n for n in present if n not in signed]
    if added:
        raise SigningError(
            f"{what}: {', '.join(added)} was added after signing and is not "
            "covered by the signature; remove it, or retrain the version"
        )
    contents: dict[str, bytes] = {}
    for name, digest in sorted(signed.items()):
        try:
            data = (folder / name).read_bytes()
        except FileNotFoundError as exc:
            raise ModelError(
                f"model version {version!r} is incomplete: {exc.filename} is "
                "missing; restore it or retrain the version"
            ) from exc
        if not hmac.compare_digest(hashlib.sha256(data).hexdigest(), str(digest)):
            raise SigningError(
                f"{what}: {name} does not match its signed hash (it was "
                "changed after signing); retrain the version or restore it "
                "from a copy you trust"
            )
        contents[name] = data
    return manifest, contents


def _write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


# --- the registry's journal ------------------------------------------------------------


def chain_entry(entry: Mapping[str, Any], key: SigningKey, previous_mac: str) -> dict[str, Any]:
    """``entry`` with its place in the chain and its HMAC, ready to append as one line."""
    record = {**entry, "prev_hmac": previous_mac, "key_id": key.key_id}
    record["hmac_sha256"] = key.mac(_JOURNAL_KIND, record)
    return record


def read_journal(path: Path, key: SigningKey) -> list[dict[str, Any]]:
    """Every entry of a signed journal, oldest first, after checking the whole chain.

    Refuses, naming the line, an entry that is unsigned, was edited, was signed with
    another key, or does not follow the line before it (a line removed or moved).
    """
    if not path.exists():
        return []
    entries: list[dict[str, Any]] = []
    previous = ""
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path} line {number}"
        redo = (
            "; if the history was rewritten deliberately (an upgrade, a new key), re-sign "
            "it with `retention models sign --history --reason ...`"
        )
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise SigningError(f"{where} is not a JSON record{redo}") from exc
        if not isinstance(record, dict) or "hmac_sha256" not in record:
            raise SigningError(f"{where} is not signed{redo}")
        claimed = {k: v for k, v in record.items() if k != "hmac_sha256"}
        if not hmac.compare_digest(str(record["hmac_sha256"]), key.mac(_JOURNAL_KIND, claimed)):
            if record.get("key_id") not in (None, key.key_id):
                raise SigningError(
                    f"{where} was signed with another key (key id "
                    f"{record.get('key_id')}; this service's key {key.key_id} "
                    f"is from {key.source}){redo}"
                )
            raise SigningError(f"{where} was altered after it was written{redo}")
        if record.get("prev_hmac") != previous:
            raise SigningError(
                f"{where} does not follow the line before it: a line was "
                f"removed, moved or inserted{redo}"
            )
        previous = str(record["hmac_sha256"])
        entries.append({k: v for k, v in claimed.items() if k not in ("prev_hmac", "key_id")})
    return entries


def last_mac(path: Path) -> str:
    """The HMAC of a journal's last line ("" when empty); read after ``read_journal``."""
    if not path.exists():
        return ""
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    return str(json.loads(lines[-1])["hmac_sha256"]) if lines else ""


def append_journal(path: Path, entry: Mapping[str, Any], key: SigningKey) -> dict[str, Any]:
    """Check the journal and append ``entry`` signed and chained; returns what was written."""
    read_journal(path, key)
    record = chain_entry(entry, key, last_mac(path))
    with path.open("a") as fh:
        fh.write(json.dumps(record, sort_keys=True) + "\n")
    return record


def resign_journal(path: Path, key: SigningKey) -> int:
    """Sign every line of a journal again with ``key``, as it stands; returns the lines.

    For a deliberate rewrite (a journal from before signing, or a new key): the content
    is kept, and the caller records who did it and why as the next entry.
    """
    if not path.exists():
        return 0
    out: list[str] = []
    previous = ""
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise SigningError(
                f"{path} line {number} is not a JSON record: fix or remove it before re-signing"
            ) from exc
        if not isinstance(record, dict):
            raise SigningError(f"{path} line {number} is not a JSON object")
        entry = {k: v for k, v in record.items() if k not in ("hmac_sha256", "prev_hmac", "key_id")}
        signed = chain_entry(entry, key, previous)
        previous = signed["hmac_sha256"]
        out.append(json.dumps(signed, sort_keys=True) + "\n")
    _write_atomically(path, "".join(out))
    return len(out)

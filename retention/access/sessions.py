"""The pages' sessions, held by the store so that signing out (or revoking the key) ends them.

Domain code without Flask. The browser's cookie carries a random session id (256 bits);
the store keeps only its SHA-256, so a copy of the table lets nobody in. A session ends
at sign-out, when its key is revoked (``keys.revoke_key``), after ``idle`` without a
request, or ``lifetime`` after sign-in, whichever comes first; an ended session is never
resumed. Functions take a connection first and never commit.
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import datetime, timedelta

from sqlalchemy import Connection, insert, update

from retention.store.tables import web_sessions


def session_digest(session_id: str) -> str:
    return hashlib.sha256(session_id.encode()).hexdigest()


def start_session(connection: Connection, key_id: str, now: datetime) -> str:
    """A new session for ``key_id``; returns its id, for the cookie (not stored)."""
    session_id = secrets.token_urlsafe(32)
    connection.execute(insert(web_sessions).values(
        session_sha256=session_digest(session_id), key_id=key_id, created_at=now,
        last_seen_at=now))
    return session_id


def resume_session(connection: Connection, session_id: str, now: datetime, idle: timedelta,
                   lifetime: timedelta) -> str | None:
    """The key id of a live session, marked as seen now; None if it ended or timed out.

    One statement tests and touches it, so two requests at once cannot both revive a
    session the other found timed out.
    """
    s = web_sessions.c
    found = connection.execute(
        update(web_sessions)
        .where(s.session_sha256 == session_digest(session_id), s.ended_at.is_(None),
               s.last_seen_at > now - idle, s.created_at > now - lifetime)
        .values(last_seen_at=now)
        .returning(s.key_id)
    ).first()
    return str(found.key_id) if found is not None else None


def end_session(connection: Connection, session_id: str, now: datetime,
                reason: str = "sign_out") -> bool:
    """End a session (if it is live); returns whether it was."""
    s = web_sessions.c
    ended = connection.execute(
        update(web_sessions)
        .where(s.session_sha256 == session_digest(session_id), s.ended_at.is_(None))
        .values(ended_at=now, end_reason=reason)
        .returning(s.key_id)
    ).first()
    return ended is not None

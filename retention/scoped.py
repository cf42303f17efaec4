"""The scoped read of the store's copy: only the rows one as-of date's features need.

A nightly run scores every open episode but looks at little of each one's history:
the last 90 days of slots, the slots since the last attended one (the current run of
misses), what is booked ahead, and the latest few alliance measures. Reading just
those rows keeps the nightly run's reading proportional to the open caseload rather
than to years of history. ``tests/test_store.py`` checks that features and reasons
computed from this read equal those computed from the whole copy.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta

import pandas as pd
from sqlalchemy import Connection

from retention import bulk, contract
from retention.instruments import SRS_ITEMS

P = "clinic_"

# Episodes open at the as-of date (features.treatment.open_episodes).
_OPEN = (
    f"SELECT episode_id FROM {P}episodes "
    "WHERE admitted_on < :cut_day AND (discharged_on IS NULL OR discharged_on >= :cut_day)"
)


# What features and reasons read of the alliance: the last three client-rated SRS and
# GSRS with a total, and the last WAI-SR by each rater.
LATEST = (("SRS", "client", 3), ("GSRS", "client", 3),
          *(("WAI-SR", rater, 1) for rater in contract.RATERS))


def _cols(table: str, alias: str = "") -> str:
    prefix = f"{alias}." if alias else ""
    return ", ".join(prefix + c.name for c in contract.TABLES[table].columns)


def _names(table: str) -> list[str]:
    return [c.name for c in contract.TABLES[table].columns]


def _dates(table: str) -> list[str]:
    """Date and timestamp columns: parsed as they are read (the store's rows are typed)."""
    return [*contract.DATE_COLUMNS.get(table, ()), *contract.TIMESTAMP_COLUMNS.get(table, ())]


def scoped_frames(
    connection: Connection, as_of: date, lookback_days: int
) -> dict[str, pd.DataFrame]:
    """Raw contract frames holding what features and reasons for ``as_of`` read."""
    cut = datetime.combine(as_of, datetime.min.time())
    params = {"cut_day": as_of, "cut": cut, "window": cut - timedelta(days=lookback_days),
              "ever": datetime(1900, 1, 1)}
    frames = {
        "clients": bulk.read_query(connection, (
            f"SELECT {_cols('clients', 'c')} FROM {P}clients c WHERE c.client_id IN "
            f"(SELECT e.client_id FROM {P}episodes e WHERE e.episode_id IN ({_OPEN}))"
        ), _names("clients"), params, _dates("clients")),
        "episodes": bulk.read_query(connection, (
            f"SELECT {_cols('episodes', 'e')} FROM {P}episodes e WHERE e.episode_id IN ({_OPEN})"
        ), _names("episodes"), params, _dates("episodes")),
        # Slots from the earlier of the window's start and the last slot attended (known
        # as attended) before the as-of date; every slot of an episode never attended.
        # Each open episode's last attended slot is one short backward walk of the
        # (episode_id, scheduled_at) index; its slots since then one range of it. (A
        # window maximum over every slot sorted the open caseload's whole history.)
        "appointments": bulk.read_query(connection, (
            f"WITH open_ep AS ({_OPEN}), last AS MATERIALIZED ("
            "  SELECT o.episode_id, (SELECT a.scheduled_at"
            f"    FROM {P}appointments a WHERE a.episode_id = o.episode_id"
            "     AND a.scheduled_at < :cut AND a.status = 'attended' AND a.updated_at < :cut"
            "    ORDER BY a.scheduled_at DESC LIMIT 1) AS last_at FROM open_ep o),"
            " since AS MATERIALIZED ("
            "  SELECT episode_id, CASE WHEN last_at IS NULL THEN :ever"
            "   WHEN last_at < :window THEN last_at ELSE :window END AS since FROM last)"
            f" SELECT {_cols('appointments', 'a')} FROM since s"
            f" JOIN {P}appointments a ON a.episode_id = s.episode_id AND a.scheduled_at >= s.since"
        ), _names("appointments"), params, _dates("appointments")),
    }
    srs = ", ".join(f"'{i}'" for i in ("SRS", "GSRS"))
    ranked = (
        f"WITH open_ep AS ({_OPEN}), ranked AS ("
        f"  SELECT {_cols('alliance_measures', 'm')}, ROW_NUMBER() OVER ("
        "    PARTITION BY m.episode_id, m.instrument, m.rater"
        "    ORDER BY m.administered_at DESC, m.measure_id DESC) AS rn"
        f"  FROM {P}alliance_measures m JOIN open_ep o ON o.episode_id = m.episode_id"
        "  WHERE m.administered_at < :cut AND ("
        f"    (m.instrument IN ({srs}) AND m.rater = 'client' AND m.score_total IS NOT NULL)"
        "    OR m.instrument = 'WAI-SR'))"
    )
    keep = "(instrument = 'WAI-SR' AND rn = 1) OR (instrument <> 'WAI-SR' AND rn <= 3)"
    if bulk.is_postgres(connection):
        # The same rows by the (episode, instrument, rater, date) index: a few probes
        # per open episode instead of sorting every measure of the open caseload.
        latest = ", ".join(f"('{i}', '{r}', {n})" for i, r, n in LATEST)
        measures_sql = (
            f"WITH open_ep AS ({_OPEN}) SELECT {_cols('alliance_measures', 'm')}"
            f" FROM open_ep o CROSS JOIN (VALUES {latest}) AS k(instrument, rater, n)"
            f" CROSS JOIN LATERAL (SELECT * FROM {P}alliance_measures x"
            "  WHERE x.episode_id = o.episode_id AND x.instrument = k.instrument"
            "   AND x.rater = k.rater AND x.administered_at < :cut"
            "   AND (k.instrument = 'WAI-SR' OR x.score_total IS NOT NULL)"
            "  ORDER BY x.administered_at DESC, x.measure_id DESC LIMIT k.n) m"
        )
    else:
        measures_sql = f"{ranked} SELECT {_cols('alliance_measures')} FROM ranked WHERE {keep}"
    frames["alliance_measures"] = bulk.read_query(
        connection, measures_sql, _names("alliance_measures"), params,
        _dates("alliance_measures"),
    )
    items = ", ".join(str(n) for n in SRS_ITEMS)
    if bulk.is_postgres(connection):
        # By key, for the measures just read: an index lookup each. (Joined to the ids
        # unnested, not filtered by ``= ANY``: given 95,000 ids at 100k clients the
        # planner chose to scan all 14 million items, 1.0 s against 0.6 s.)
        m = frames["alliance_measures"]
        ids = sorted(m.loc[m["instrument"].isin(["SRS", "GSRS"]), "measure_id"].astype(str))
        frames["alliance_items"] = bulk.read_query(connection, (
            f"SELECT {_cols('alliance_items', 'i')} FROM unnest(CAST(:ids AS text[])) AS u(id)"
            f" JOIN {P}alliance_items i ON i.measure_id = u.id WHERE i.item_number IN ({items})"
        ), _names("alliance_items"), {"ids": ids}, _dates("alliance_items"))
    else:
        frames["alliance_items"] = bulk.read_query(connection, (
            f"{ranked} SELECT {_cols('alliance_items', 'i')} FROM {P}alliance_items i"
            f" WHERE i.item_number IN ({items}) AND i.measure_id IN"
            f" (SELECT measure_id FROM ranked WHERE instrument IN ({srs}) AND rn <= 3)"
        ), _names("alliance_items"), params, _dates("alliance_items"))
    return frames

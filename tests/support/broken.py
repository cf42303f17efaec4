"""A small synthetic network whose rows break the contract in many ways at once.

For tests that check a run in parts (a network's full reload, docs/network.md) against
the same run checked whole. Every broken row stays with its client's clinic, so a split
by clinic keeps each client's rows together.
"""

from __future__ import annotations

from datetime import date, timedelta

import pandas as pd

from retention.clinic.synth import SynthConfig, generate
from retention.settings import EtlSettings

# Rules a row of ``broken_network`` breaks (each at least once).
BROKEN_RULES = {
    "episodes": {"unknown_code", "discharge_before_admission", "duplicate_key"},
    "appointments": {"unknown_code", "orphan", "duplicate_key", "episode_of_another_client",
                     "before_admission"},
    "alliance_measures": {"orphan", "srs_item_out_of_range", "wai_item_out_of_range"},
    "alliance_items": {"srs_item_out_of_range", "wai_item_out_of_range", "measure_quarantined"},
    "session_observations": {"recorded_before_observed"},
    "consents": {"expiry_before_effective"},
    "clients": {"duplicate_key"},
}

# Limits so tight that ``broken_network`` breaks each kind: a code, a table, a clinic's
# rows of a table, and all rows.
TIGHT_LIMITS = EtlSettings(max_quarantine_share=0.001, max_table_quarantine_share=0.001,
                           max_code_quarantine_share=0.001, max_clinic_quarantine_share=0.001,
                           quarantine_min_rows=3)


def clinic_of_rows(frames: dict[str, pd.DataFrame]) -> dict[str, pd.Series]:
    """Each row's clinic: its client's (an item's measure's client's); NaN if unknown."""
    clinic = frames["clients"].drop_duplicates("client_id").set_index("client_id")["clinic_id"]
    out = {t: f["client_id"].map(clinic) for t, f in frames.items() if "client_id" in f}
    out["clients"] = frames["clients"]["clinic_id"]
    measures = frames["alliance_measures"].drop_duplicates("measure_id")
    measure_clinic = pd.Series(measures["client_id"].map(clinic).to_numpy(),
                               index=measures["measure_id"])
    out["alliance_items"] = frames["alliance_items"]["measure_id"].map(measure_clinic)
    return out


def broken_network(end: date) -> dict[str, pd.DataFrame]:
    """90 clients in three clinics (about 12,500 rows), broken as ``BROKEN_RULES`` says:
    the east's program coded 'OP' (not mapped), a third of the south's appointments
    with status 'ZZ', out-of-range items in the north, and a few of every other kind."""
    frames = generate(SynthConfig(end=end, n_clients=90, seed=5))
    clinic = clinic_of_rows(frames)
    episodes, appts = frames["episodes"], frames["appointments"]
    east = clinic["episodes"] == "clinic-east"
    episodes.loc[east, "program"] = "OP"
    north_episodes = episodes.index[clinic["episodes"] == "clinic-north"]
    late = north_episodes[0]
    episodes.loc[late, "discharged_on"] = episodes.loc[late, "admitted_on"] - timedelta(days=3)
    south = clinic["appointments"] == "clinic-south"
    appts.loc[south & (appts.index % 3 == 0), "status"] = "ZZ"
    north = appts.index[clinic["appointments"] == "clinic-north"]
    # Another north client's episode, and a session a year before its admission.
    other = episodes.loc[north_episodes[-1]]
    appts.loc[north[:3], "episode_id"] = other["episode_id"]
    appts.loc[north[-3:], "scheduled_at"] -= pd.Timedelta(days=400)
    orphans = appts.head(12).assign(appointment_id=[f"X{n}" for n in range(12)],
                                    client_id="NOBODY", episode_id="NOBODY-1")
    twins = appts.loc[north[10:15]]
    frames["appointments"] = pd.concat([appts, orphans, twins], ignore_index=True)
    frames["episodes"] = pd.concat([episodes, episodes.loc[north_episodes[1:2]]],
                                   ignore_index=True)
    frames["clients"] = pd.concat([frames["clients"], frames["clients"].tail(1)],
                                  ignore_index=True)

    measures, items = frames["alliance_measures"], frames["alliance_items"]
    gone = measures.index[(measures["instrument"] == "SRS")
                          & (clinic["alliance_measures"] == "clinic-south")][0]
    measures.loc[gone, "episode_id"] = "E-GONE"
    north_items = items.index[clinic["alliance_items"] == "clinic-north"]
    items.loc[north_items[:40], "response"] = 99

    notes = frames["session_observations"]
    notes.loc[notes.index[:2], "recorded_at"] = notes["observed_at"].iloc[:2] - pd.Timedelta(
        hours=1)
    consents = frames["consents"]
    consents.loc[consents.index[0], "expires_on"] = (consents["effective_on"].iloc[0]
                                                     - timedelta(days=1))
    return frames

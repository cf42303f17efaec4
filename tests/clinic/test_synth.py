"""The synthetic clinic must obey the data contract and hit the published-rate targets."""

from __future__ import annotations

from dataclasses import replace
from datetime import date

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa

from retention.clinic import contract
from retention.clinic.instruments import SRS_ITEMS, WAI_SR_KEY
from retention.clinic.synth import SynthConfig, consents, contacts, generate, write
from retention.etl.validation import Context, validate

CONFIG = SynthConfig(end=date(2026, 6, 1), n_clients=300, seed=3)
END = pd.Timestamp(CONFIG.end)
DROPOUTS = ("dropped_out", "left_against_advice")
CODES = {
    ("episodes", "program"): contract.PROGRAMS,
    ("episodes", "discharge_reason"): contract.DISCHARGE_REASONS,
    ("appointments", "status"): contract.APPOINTMENT_STATUSES,
    ("appointments", "service_type"): contract.SERVICE_TYPES,
    ("alliance_measures", "instrument"): contract.INSTRUMENTS,
    ("alliance_measures", "rater"): contract.RATERS,
    ("consents", "purpose"): contract.CONSENT_PURPOSES,
    ("client_contacts", "preferred_channel"): contract.CONTACT_CHANNELS,
}


@pytest.fixture(scope="module")
def frames() -> dict[str, pd.DataFrame]:
    return generate(CONFIG)


def test_same_config_gives_identical_frames(frames: dict[str, pd.DataFrame]) -> None:
    again = generate(CONFIG)
    assert again.keys() == frames.keys()
    for name, frame in frames.items():
        pd.testing.assert_frame_equal(again[name], frame)


def test_other_seed_gives_other_clinic(frames: dict[str, pd.DataFrame]) -> None:
    other = generate(replace(CONFIG, seed=CONFIG.seed + 1))
    assert not other["appointments"].equals(frames["appointments"])
    assert not other["alliance_measures"].equals(frames["alliance_measures"])


def test_columns_follow_the_contract(frames: dict[str, pd.DataFrame]) -> None:
    assert set(frames) == set(contract.TABLES)
    for name, table in contract.TABLES.items():
        assert list(frames[name].columns) == [c.name for c in table.columns], name
        assert len(frames[name]) > 0, name


def test_dates_are_dates_and_timestamps_are_naive(frames: dict[str, pd.DataFrame]) -> None:
    for column in contract.DATE_COLUMNS["episodes"]:
        values = frames["episodes"][column].dropna()
        assert len(values) > 0
        assert all(type(v) is date for v in values), column
    for name, columns in contract.TIMESTAMP_COLUMNS.items():
        for column in columns:
            dtype = frames[name][column].dtype
            assert pd.api.types.is_datetime64_dtype(dtype), (name, column)
            assert getattr(dtype, "tz", None) is None


def test_codes_keys_and_required_fields(frames: dict[str, pd.DataFrame]) -> None:
    for (name, code), allowed in CODES.items():
        used = set(frames[name][code].dropna())
        assert used <= set(allowed), (name, code, used - set(allowed))
    for name, table in contract.TABLES.items():
        keys = [c.name for c in table.primary_key.columns]
        assert not frames[name].duplicated(keys).any(), name
        for column in table.columns:
            if not column.nullable:
                assert frames[name][column.name].notna().all(), (name, column.name)


def test_rows_reference_an_episode_of_the_same_client(frames: dict[str, pd.DataFrame]) -> None:
    episodes = frames["episodes"]
    assert set(episodes["client_id"]) <= set(frames["clients"]["client_id"])
    pairs = set(zip(episodes["episode_id"], episodes["client_id"], strict=True))
    for name in ("appointments", "alliance_measures"):
        frame = frames[name]
        assert set(zip(frame["episode_id"], frame["client_id"], strict=True)) <= pairs, name
    measures = frames["alliance_measures"]
    appointment = frames["appointments"].set_index("appointment_id")
    assert measures["appointment_id"].isin(appointment.index).all()
    linked = appointment.loc[measures["appointment_id"]]
    assert (linked["episode_id"].to_numpy() == measures["episode_id"].to_numpy()).all()
    assert (linked["status"] == "attended").all()
    assert set(frames["alliance_items"]["measure_id"]) <= set(measures["measure_id"])


def test_ids_look_like_clinic_ids(frames: dict[str, pd.DataFrame]) -> None:
    assert frames["clients"]["client_id"].str.fullmatch(r"C\d{6}").all()
    episodes = frames["episodes"]
    assert episodes["episode_id"].str.fullmatch(r"E\d{6}-[12]").all()
    assert (episodes["episode_id"].str[1:7] == episodes["client_id"].str[1:]).all()
    assert frames["appointments"]["appointment_id"].str.fullmatch(r"A\d{8}").all()
    assert frames["alliance_measures"]["measure_id"].str.fullmatch(r"M\d{8}").all()
    assert frames["clients"]["clinic_id"].str.startswith("clinic-").all()


def test_readmissions_follow_a_discharge(frames: dict[str, pd.DataFrame]) -> None:
    episodes = frames["episodes"].sort_values("episode_id")
    per_client = episodes.groupby("client_id").size()
    assert 0.03 <= (per_client == 2).mean() <= 0.15
    assert per_client.max() == 2
    for _, pair in episodes[episodes["client_id"].isin(per_client[per_client == 2].index)].groupby(
        "client_id"
    ):
        first, second = pair.iloc[0], pair.iloc[1]
        assert first["discharged_on"] is not None
        assert second["admitted_on"] > first["discharged_on"]


def test_nothing_is_known_from_after_the_snapshot(frames: dict[str, pd.DataFrame]) -> None:
    for name, columns in contract.TIMESTAMP_COLUMNS.items():
        for column in columns:
            if column != "scheduled_at":
                assert (frames[name][column].dropna() < END).all(), (name, column)
    episodes = frames["episodes"]
    assert (episodes["admitted_on"] < CONFIG.end).all()
    assert (episodes["discharged_on"].dropna() < CONFIG.end).all()
    assert (episodes["admitted_on"] >= CONFIG.end - pd.Timedelta(days=CONFIG.history_days)).all()


def test_appointment_timeline(frames: dict[str, pd.DataFrame]) -> None:
    appointments = frames["appointments"]
    assert (appointments["booked_at"] < appointments["scheduled_at"]).all()
    future = appointments["scheduled_at"] >= END
    assert (appointments.loc[future, "status"] == "scheduled").all()
    assert (appointments.loc[~future, "status"] != "scheduled").all()
    assert future.any()
    upcoming = appointments.loc[future, "scheduled_at"]
    assert (upcoming < END + pd.Timedelta(days=25)).all()
    scheduled = appointments[appointments["status"] == "scheduled"]
    assert (scheduled["updated_at"] == scheduled["booked_at"]).all()
    # Closed episodes have nothing still booked; discharges come after the episode's sessions.
    episodes = frames["episodes"].set_index("episode_id")
    discharged = pd.to_datetime(episodes.loc[appointments["episode_id"], "discharged_on"])
    after = appointments["scheduled_at"].to_numpy() >= (discharged + pd.Timedelta(days=1))
    assert not after.to_numpy().any()
    assert not (discharged.notna().to_numpy() & future.to_numpy()).any()
    admitted = pd.to_datetime(episodes.loc[appointments["episode_id"], "admitted_on"]).to_numpy()
    assert (appointments["scheduled_at"].to_numpy() >= admitted).all()


def test_discharges_are_consistent(frames: dict[str, pd.DataFrame]) -> None:
    episodes = frames["episodes"]
    closed = episodes["discharged_on"].notna()
    assert (episodes["discharge_reason"].notna() == closed).all()
    assert (episodes.loc[closed, "discharged_on"] >= episodes.loc[closed, "admitted_on"]).all()
    discharged = pd.to_datetime(episodes.loc[closed, "discharged_on"])
    assert (episodes.loc[closed, "updated_at"] >= discharged).all()
    assert closed.mean() > 0.6
    assert (~closed).sum() > 10


def test_srs_totals_are_item_sums(frames: dict[str, pd.DataFrame]) -> None:
    measures = frames["alliance_measures"]
    items = frames["alliance_items"]
    srs = measures[measures["instrument"].isin(["SRS", "GSRS"])].set_index("measure_id")
    assert (srs["rater"] == "client").all()
    assert srs[["goal", "task", "bond"]].isna().all().all()
    srs_items = items[items["measure_id"].isin(srs.index)]
    assert set(srs_items["item_number"]) == set(SRS_ITEMS)
    assert srs_items["response"].between(0, 10).all()
    assert np.allclose(srs_items["response"], srs_items["response"].round(1))
    wide = srs_items.pivot(index="measure_id", columns="item_number", values="response")
    assert wide.notna().all().all()
    totals = srs.loc[wide.index, "score_total"]
    assert np.allclose(wide.sum(axis=1), totals, atol=1e-6)
    assert srs["score_total"].between(0, 40).all()


def test_wai_subscales_follow_the_published_key(frames: dict[str, pd.DataFrame]) -> None:
    measures = frames["alliance_measures"]
    items = frames["alliance_items"]
    wai = measures[measures["instrument"] == "WAI-SR"].set_index("measure_id")
    wide = items[items["measure_id"].isin(wai.index)].pivot(
        index="measure_id", columns="item_number", values="response"
    )
    assert [int(n) for n in wide.columns] == list(range(1, 13))
    assert wide.isin([1.0, 2.0, 3.0, 4.0, 5.0]).all().all()
    scored = wai.loc[wide.index]
    assert np.allclose(wide.sum(axis=1), scored["score_total"])
    for name, key in WAI_SR_KEY.items():
        assert np.allclose(wide[list(key)].mean(axis=1), scored[name]), name
    # Client and therapist rate the same session; therapists rate a little lower.
    per_session = wai.groupby("appointment_id")["rater"].agg(sorted)
    assert all(raters == ["client", "therapist"] for raters in per_session)
    by_rater = wai.groupby("rater")["score_total"].mean()
    assert by_rater["therapist"] < by_rater["client"]


def test_some_measures_carry_totals_only(frames: dict[str, pd.DataFrame]) -> None:
    measures = frames["alliance_measures"]
    without = ~measures["measure_id"].isin(frames["alliance_items"]["measure_id"])
    assert 0.02 <= without.mean() <= 0.08
    assert measures.loc[without, "score_total"].notna().all()


def _last_attended(appointments: pd.DataFrame) -> pd.Series:
    attended = appointments[appointments["status"] == "attended"]
    return attended.groupby("episode_id")["scheduled_at"].max()


def test_miss_rate_among_engaged_clients(frames: dict[str, pd.DataFrame]) -> None:
    """Engaged: the episode ended well, or the client still came 30+ days later."""
    appointments = frames["appointments"]
    reasons = frames["episodes"].set_index("episode_id")["discharge_reason"]
    resolved = appointments[appointments["status"].isin(contract.CLIENT_STATUSES)]
    last = resolved["episode_id"].map(_last_attended(appointments))
    ended_well = resolved["episode_id"].map(reasons).isin(contract.GOOD_DISCHARGES)
    engaged = ended_well | (last >= resolved["scheduled_at"] + pd.Timedelta(days=30))
    missed = resolved["status"] != "attended"
    assert 0.12 <= missed[engaged].mean() <= 0.28
    # Misses cluster before disengagement.
    assert missed[~engaged].mean() > missed[engaged].mean() + 0.1
    clinic = (appointments["status"] == "cancelled_by_clinic").mean()
    assert 0.01 <= clinic <= 0.05


def test_srs_has_a_ceiling_and_a_concern_tail(frames: dict[str, pd.DataFrame]) -> None:
    measures = frames["alliance_measures"]
    srs = measures.loc[measures["instrument"] == "SRS", "score_total"]
    assert 34.0 <= srs.mean() <= 38.0
    assert 0.2 <= (srs < 36).mean() <= 0.4
    assert (srs >= 38).mean() > 0.3


def test_dropout_share_of_ended_episodes(frames: dict[str, pd.DataFrame]) -> None:
    ended = frames["episodes"].dropna(subset=["discharged_on"])
    assert 0.3 <= ended["discharge_reason"].isin(DROPOUTS).mean() <= 0.5
    assert ended["discharge_reason"].isin(contract.GOOD_DISCHARGES).mean() > 0.35


def test_dropouts_are_filed_weeks_after_the_last_visit(frames: dict[str, pd.DataFrame]) -> None:
    episodes = frames["episodes"]
    dropped = episodes[episodes["discharge_reason"] == "dropped_out"].set_index("episode_id")
    last = _last_attended(frames["appointments"]).reindex(dropped.index).dt.normalize()
    gap = (pd.to_datetime(dropped["discharged_on"]) - last).dt.days
    assert gap.between(14, 120).all()
    assert 20 <= gap.median() <= 50


def test_signals_differ_before_dropout(frames: dict[str, pd.DataFrame]) -> None:
    """Lower alliance and a wider client-therapist gap for episodes that end in dropout."""
    measures = frames["alliance_measures"]
    dropout = measures["episode_id"].map(
        frames["episodes"].set_index("episode_id")["discharge_reason"].isin(DROPOUTS)
    )
    srs = measures["instrument"] == "SRS"
    assert (
        measures.loc[srs & dropout, "score_total"].mean()
        < measures.loc[srs & ~dropout, "score_total"].mean()
    )
    wai = measures[measures["instrument"] == "WAI-SR"].assign(dropout=dropout)
    rated = wai.pivot_table(
        index=["appointment_id", "dropout"], columns="rater", values="score_total"
    ).reset_index()
    gap = (rated["client"] - rated["therapist"]).groupby(rated["dropout"]).mean()
    assert gap[True] > gap[False]


def test_demographics_are_plausible(frames: dict[str, pd.DataFrame]) -> None:
    clients = frames["clients"]
    age = CONFIG.end.year - clients["birth_year"]
    assert age.between(17, 72).all()
    assert set(clients["sex"]) <= {"female", "male", "other"}
    assert clients["race_ethnicity"].isna().any()
    assert clients["race_ethnicity"].nunique() >= 4
    assert clients["clinic_id"].nunique() == CONFIG.n_clinics


def test_write_round_trips_row_counts(frames: dict[str, pd.DataFrame]) -> None:
    engine = sa.create_engine("sqlite://")
    with engine.begin() as conn:
        counts = write(conn, frames)
    assert counts == {name: len(frame) for name, frame in frames.items()}
    with engine.connect() as conn:
        for name, table in contract.TABLES.items():
            stored = conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one()
            assert stored == len(frames[name]), name
        row = conn.execute(
            sa.select(contract.appointments).order_by(contract.appointments.c.appointment_id)
        ).first()
    assert row is not None
    first = frames["appointments"].iloc[0]
    assert row.scheduled_at == first["scheduled_at"].to_pydatetime()
    assert row.telehealth == bool(first["telehealth"])


def test_write_leaves_the_transaction_to_the_caller(frames: dict[str, pd.DataFrame]) -> None:
    engine = sa.create_engine("sqlite://")
    with engine.connect() as conn:
        conn.begin()
        contract.metadata.create_all(conn)
        conn.commit()
        conn.begin()
        write(conn, {"clients": frames["clients"]})
        conn.rollback()
        assert conn.execute(sa.select(sa.func.count()).select_from(contract.clients)).scalar() == 0


def test_config_is_validated() -> None:
    with pytest.raises(ValueError):
        SynthConfig(end=date(2026, 6, 1), n_clients=0)
    with sa.create_engine("sqlite://").connect() as conn, pytest.raises(ValueError):
        write(conn, {"not_a_table": pd.DataFrame()})


# --- consents and the EHR's identifiers ------------------------------------------


def in_force(frame: pd.DataFrame, day: date) -> pd.Series:
    """Consents in force on ``day`` (docs/contract.md: revoked on a day counts as revoked)."""
    effective = pd.to_datetime(frame["effective_on"]).dt.date <= day
    expires = pd.to_datetime(frame["expires_on"]).dt.date
    unexpired = expires.isna() | (expires >= day)
    revoked = frame["revoked_at"].dt.date
    return effective & unexpired & (revoked.isna() | (revoked > day))


def test_every_disclosure_case_is_in_the_synthetic_clinic(
        frames: dict[str, pd.DataFrame]) -> None:
    k = frames["consents"]
    active = k[in_force(k, CONFIG.end) & (k["purpose"] == "treatment")]
    covered = set(active.loc[active["recipient"].isin(
        [consents.DEMO_RECIPIENT, consents.TREATING_PROVIDERS]), "client_id"])
    clients = set(frames["clients"]["client_id"])
    assert 0.72 <= len(covered) / len(clients) <= 0.88
    assert set(active["recipient"]) == {consents.DEMO_RECIPIENT, consents.TREATING_PROVIDERS,
                                        consents.OTHER_RECIPIENT}
    assert clients - set(k["client_id"])  # clients with no consent at all
    expired = k["expires_on"].notna() & (pd.to_datetime(k["expires_on"]) < END)
    assert expired.any() and k["revoked_at"].notna().any()
    assert (k["purpose"] != "treatment").any()
    # Clients whose consents are out of force, or for another EHR or purpose, only.
    assert set(k["client_id"]) - covered


def test_consents_are_dated_within_the_simulation(frames: dict[str, pd.DataFrame]) -> None:
    k = frames["consents"]
    first = frames["episodes"].groupby("client_id")["admitted_on"].min()
    assert (k["effective_on"] <= k["client_id"].map(first)).all()
    ends = k["expires_on"].dropna()
    assert (ends >= k.loc[ends.index, "effective_on"]).all()
    revoked = k.dropna(subset=["revoked_at"])
    assert (revoked["revoked_at"].dt.date >= revoked["effective_on"]).all()
    assert (revoked["updated_at"] == revoked["revoked_at"]).all()
    assert k["consent_id"].is_unique and k["recipient"].str.len().le(128).all()


def test_every_client_has_one_unique_mrn(frames: dict[str, pd.DataFrame]) -> None:
    ids = frames["client_identifiers"]
    assert set(ids["system"]) == {consents.MRN_SYSTEM}
    assert ids["value"].is_unique and ids["client_id"].is_unique
    assert set(ids["client_id"]) == set(frames["clients"]["client_id"])
    assert ids["value"].str.fullmatch(r"MRN\d{7}").all()


def test_consents_and_identifiers_leave_the_other_tables_as_they_were(
        frames: dict[str, pd.DataFrame], monkeypatch: pytest.MonkeyPatch) -> None:
    """They draw from a stream of their own: features and models cannot move."""
    monkeypatch.setattr("retention.clinic.synth.simulation.add_consents_and_identifiers",
                        lambda sink, config: None)
    without = generate(CONFIG)
    assert without["consents"].empty and without["client_identifiers"].empty
    for name in ("clients", "episodes", "appointments", "alliance_measures", "alliance_items"):
        pd.testing.assert_frame_equal(without[name], frames[name])


def test_each_case_appears_even_in_a_small_clinic() -> None:
    small = generate(replace(CONFIG, n_clients=len(consents.CASES), seed=5))
    k = small["consents"]
    assert len(set(small["clients"]["client_id"]) - set(k["client_id"])) >= 1
    assert k["revoked_at"].notna().any()
    assert {consents.OTHER_RECIPIENT, consents.DEMO_RECIPIENT,
            consents.TREATING_PROVIDERS} <= set(k["recipient"])
    assert {"treatment", "payment"} <= set(k["purpose"])


# --- contact details (made up) ----------------------------------------------------

FICTIONAL_PHONE = r"\(\d{3}\) 555-01\d\d"


def test_contacts_are_made_up_and_fictional(frames: dict[str, pd.DataFrame]) -> None:
    c = frames["client_contacts"]
    clients = set(frames["clients"]["client_id"])
    assert c["client_id"].is_unique and set(c["client_id"]) <= clients
    assert 0.90 <= len(c) / len(clients) < 1  # about 5% of clients have no row
    phones = c["phone"].dropna()
    assert 0 < len(phones) < len(c)  # some rows have no phone
    assert phones.str.fullmatch(FICTIONAL_PHONE).all()  # 555-0100 to 555-0199 only
    assert phones.str[1:4].nunique() >= 8  # varied area codes
    given = c["display_name"].str.split(" ", n=1).str[0]
    family = c["display_name"].str.split(" ", n=1).str[1]
    assert given.isin(contacts.GIVEN_NAMES).all() and family.isin(contacts.FAMILY_NAMES).all()
    assert 0.2 <= c["preferred_name"].notna().mean() <= 0.4


def test_contacts_prefer_a_call_or_a_text_mostly_in_english(
        frames: dict[str, pd.DataFrame]) -> None:
    c = frames["client_contacts"]
    assert c["preferred_channel"].isin(["phone", "text"]).mean() >= 0.7
    assert c["preferred_channel"].nunique() >= 4
    for column in ("may_text", "may_call"):
        values = c[column].tolist()
        assert values.count(True) / len(values) >= 0.6, column
        assert values.count(False) > 0 and values.count(None) > 0, column  # some not known
    assert (c.loc[c["preferred_channel"] == "text", "may_text"] == True).all()  # noqa: E712
    assert c.loc[c["phone"].isna(), "preferred_channel"].isin(
        ["email", "in_person", "letter"]).all()  # nobody prefers a call they cannot get
    share = c["language"].value_counts(normalize=True)
    assert share["en"] >= 0.65 and 0.08 <= share["es"] <= 0.22
    assert set(c["language"]) <= {"en", "es", "pt-BR", "vi", "zh-Hans", "ht"}
    assert len(set(c["language"])) >= 4


def test_the_synthetic_contacts_pass_the_etls_checks(frames: dict[str, pd.DataFrame]) -> None:
    out = validate(frames, Context())
    assert out.rejects.empty
    assert len(out.valid["client_contacts"]) == len(frames["client_contacts"])


def test_contacts_leave_the_other_tables_as_they_were(
        frames: dict[str, pd.DataFrame], monkeypatch: pytest.MonkeyPatch) -> None:
    """They draw from a stream of their own: features, models and consents cannot move."""
    monkeypatch.setattr("retention.clinic.synth.simulation.add_contacts",
                        lambda sink, config: None)
    without = generate(CONFIG)
    assert without["client_contacts"].empty
    for name in contract.TABLES:
        if name != "client_contacts":
            pd.testing.assert_frame_equal(without[name], frames[name])


def test_even_a_small_clinic_has_a_client_without_a_row_and_a_row_without_a_phone() -> None:
    small = generate(replace(CONFIG, n_clients=20, seed=5))
    c = small["client_contacts"]
    assert set(small["clients"]["client_id"]) - set(c["client_id"])
    assert c["phone"].isna().any()


# --- ORS (PCOMS) and session notes ------------------------------------------------

# A larger clinic for the published directions: a few hundred rated episodes each way.
BIG = SynthConfig(end=date(2026, 6, 1), n_clients=2000, seed=12)


@pytest.fixture(scope="module")
def big() -> dict[str, pd.DataFrame]:
    return generate(BIG)


def _ors(frames: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """ORS ratings in order within each episode, with their session and rank (0: intake)."""
    measures = frames["alliance_measures"]
    ors = measures[measures["instrument"] == "ORS"].merge(
        frames["appointments"][["appointment_id", "scheduled_at", "service_type"]],
        on="appointment_id").sort_values(["episode_id", "administered_at"])
    return ors.assign(rank=ors.groupby("episode_id").cumcount())


def _clinic_of(frames: dict[str, pd.DataFrame], rows: pd.DataFrame) -> pd.Series:
    return rows["client_id"].map(frames["clients"].set_index("client_id")["clinic_id"])


def test_ors_items_sum_to_the_total_at_the_start_of_sessions(
        frames: dict[str, pd.DataFrame]) -> None:
    ors = _ors(frames)
    assert len(ors) > 500
    assert (ors["rater"] == "client").all()
    assert ors[["goal", "task", "bond"]].isna().all().all()
    assert set(ors["service_type"]) == {"intake", "individual", "family"}
    # Asked at the start: before the session's own SRS.
    assert (ors["administered_at"] < ors["scheduled_at"] + pd.Timedelta(minutes=10)).all()
    srs = frames["alliance_measures"].query("instrument == 'SRS'").set_index("appointment_id")
    both = ors[ors["appointment_id"].isin(srs.index)]
    assert len(both) > 100
    assert (both["administered_at"].to_numpy()
            < srs.loc[both["appointment_id"], "administered_at"].to_numpy()).all()
    items = frames["alliance_items"]
    wide = items[items["measure_id"].isin(ors["measure_id"])].pivot(
        index="measure_id", columns="item_number", values="response")
    assert [int(n) for n in wide.columns] == [1, 2, 3, 4]
    responses = wide.to_numpy()
    assert not np.isnan(responses).any()
    assert ((responses >= 0) & (responses <= 10)).all()
    assert np.allclose(responses, responses.round(1))
    totals = ors.set_index("measure_id").loc[wide.index, "score_total"]
    assert np.allclose(wide.sum(axis=1), totals, atol=1e-6)
    assert 0.02 <= 1 - len(wide) / len(ors) <= 0.08  # a few carry totals only


def test_ors_only_where_the_clinic_uses_pcoms(frames: dict[str, pd.DataFrame]) -> None:
    ors = _ors(frames)
    rating = set(_clinic_of(frames, ors))
    assert len(rating) == round(CONFIG.pcoms_share * CONFIG.n_clinics) == 2
    episodes = frames["episodes"]
    in_pcoms = _clinic_of(frames, episodes).isin(rating)
    # Every episode of a PCOMS clinic has its intake rated, unless totals only...
    assert episodes.loc[in_pcoms, "episode_id"].isin(ors["episode_id"]).mean() > 0.95
    # ...and no episode elsewhere has any.
    assert not episodes.loc[~in_pcoms, "episode_id"].isin(ors["episode_id"]).any()
    intake = ors[ors["rank"] == 0]
    assert (intake["service_type"] == "intake").all()


def test_intake_ors_is_mostly_below_the_clinical_cutoff(frames: dict[str, pd.DataFrame]) -> None:
    intake = _ors(frames).query("rank == 0")["score_total"]
    assert 0.7 <= (intake < 25).mean() <= 0.9
    assert 16 <= intake.mean() <= 22


def _dose(frames: dict[str, pd.DataFrame], ors: pd.DataFrame) -> pd.Series:
    """Therapy sessions (individual, family, group) attended in the episode before each rating."""
    appointments = frames["appointments"]
    therapy = appointments[(appointments["status"] == "attended")
                           & appointments["service_type"].isin(["individual", "family", "group"])]
    merged = ors[["episode_id", "scheduled_at"]].reset_index().merge(
        therapy[["episode_id", "scheduled_at"]].rename(columns={"scheduled_at": "t"}),
        on="episode_id", how="left")
    before = (merged["t"] < merged["scheduled_at"]).groupby(merged["index"]).sum()
    return before.reindex(ors.index).astype(int)


def test_ors_change_follows_the_dose_effect_curve(big: dict[str, pd.DataFrame]) -> None:
    """Howard et al. (1986): about half improved by 8 sessions, more by 20-plus; smaller
    gains from higher intakes."""
    ors = _ors(big)
    ors = ors.assign(dose=_dose(big, ors))
    intake = ors[ors["rank"] == 0].set_index("episode_id")["score_total"]
    ors["change"] = ors["score_total"] - ors["episode_id"].map(intake)

    def improved(low: int, high: int) -> pd.Series:
        first = ors[ors["dose"].between(low, high)].groupby("episode_id").first()
        assert len(first) >= 50
        return first["change"] >= 5  # the ORS reliable change index

    early, at_eight, late = improved(1, 2), improved(8, 10), improved(20, 30)
    assert 0.4 <= at_eight.mean() <= 0.7
    assert early.mean() < at_eight.mean() < late.mean()
    later = ors[ors["dose"] >= 8].groupby("episode_id").first()
    start = intake.reindex(later.index)
    assert later.loc[start < 20, "change"].mean() > later.loc[start >= 25, "change"].mean() + 2


def test_not_on_track_clients_drop_out_more(big: dict[str, pd.DataFrame]) -> None:
    """Less than the reliable change of 5 points by the fourth rating: more dropouts."""
    ors = _ors(big)
    intake = ors[ors["rank"] == 0].set_index("episode_id")["score_total"]
    fourth = ors[ors["rank"] == 3].set_index("episode_id")["score_total"]
    reasons = big["episodes"].set_index("episode_id")["discharge_reason"]
    ended = reasons.reindex(fourth.index).notna()
    change = (fourth - intake.reindex(fourth.index))[ended]
    dropped = reasons.reindex(change.index).isin(DROPOUTS)
    not_on_track = change < 5
    assert not_on_track.sum() >= 100 and (~not_on_track).sum() >= 100
    assert dropped[not_on_track].mean() > 1.3 * dropped[~not_on_track].mean()


def test_session_notes_are_valid(frames: dict[str, pd.DataFrame]) -> None:
    notes = frames["session_observations"]
    assert len(notes) > 300
    signs = notes["signs"].dropna().str.split(" ").explode()
    assert set(signs) == set(contract.SIGNS)  # every sign occurs
    steps = notes["repair_steps"].dropna().str.split(" ").explode()
    assert set(steps) == set(contract.REPAIR_STEPS)
    assert not notes["signs"].dropna().str.split(" ").map(lambda s: len(s) != len(set(s))).any()
    # A repair is recorded only with a rupture; most noted ruptures have one.
    assert notes.loc[notes["repair_steps"].notna(), "rupture"].all()
    assert 0.5 <= notes.loc[notes["rupture"], "repair_steps"].notna().mean() <= 0.85
    assert 0.03 <= notes["rupture"].mean() <= 0.15
    assert 0.15 <= notes["signs"].notna().mean() <= 0.45
    # Written after an attended session, by its clinician, the same day or a few days on.
    appointments = frames["appointments"].set_index("appointment_id")
    session = appointments.loc[notes["appointment_id"]]
    assert (session["status"] == "attended").all()
    assert set(session["service_type"]) == {"individual", "family", "group"}
    assert (session["clinician_id"].to_numpy() == notes["clinician_id"].to_numpy()).all()
    assert (session["episode_id"].to_numpy() == notes["episode_id"].to_numpy()).all()
    assert (notes["observed_at"].to_numpy() == session["scheduled_at"].to_numpy()).all()
    recorded = notes["recorded_at"]
    assert 0.05 <= recorded.isna().mean() <= 0.15
    lag = (recorded - notes["observed_at"]).dropna()
    assert (lag > pd.Timedelta(0)).all() and (lag < pd.Timedelta(days=6)).all()
    assert 0.5 <= (lag.dt.days == 0).mean() <= 0.75
    assert (notes["updated_at"] >= notes["observed_at"]).all()
    assert (recorded.isna() | (notes["updated_at"] == recorded)).all()
    noting = set(_clinic_of(frames, notes))
    assert len(noting) == round(CONFIG.notes_share * CONFIG.n_clinics)
    assert notes["observation_id"].str.fullmatch(r"O\d{8}").all()


def test_the_etl_takes_every_ors_and_note(frames: dict[str, pd.DataFrame]) -> None:
    out = validate(frames, Context())
    assert out.rejects.empty
    assert len(out.valid["session_observations"]) == len(frames["session_observations"])
    assert (out.valid["alliance_measures"]["instrument"] == "ORS").sum() == len(_ors(frames))


def test_signs_are_likelier_with_a_lower_srs(big: dict[str, pd.DataFrame]) -> None:
    notes = big["session_observations"]
    srs = big["alliance_measures"].query("instrument in ['SRS', 'GSRS']")
    rated = notes.merge(srs[["appointment_id", "score_total"]], on="appointment_id")
    low = rated["score_total"] < 36
    assert low.sum() >= 300 and (~low).sum() >= 300
    assert rated.loc[low, "signs"].notna().mean() > rated.loc[~low, "signs"].notna().mean() + 0.1


def test_repaired_ruptures_recover_and_drop_out_less(big: dict[str, pd.DataFrame]) -> None:
    """Eubanks, Muran & Safran (2018): resolved ruptures go with better outcomes."""
    appointments = big["appointments"][["appointment_id", "scheduled_at", "service_type"]]
    ruptures = big["session_observations"].query("rupture").merge(appointments,
                                                                  on="appointment_id")
    ruptures = ruptures.assign(
        repaired=ruptures["repair_steps"].notna(),
        instrument=np.where(ruptures["service_type"] == "group", "GSRS", "SRS"))
    srs = big["alliance_measures"].query("instrument in ['SRS', 'GSRS']").merge(
        appointments, on="appointment_id")
    following = pd.merge_asof(
        ruptures.sort_values("scheduled_at"),
        srs[["episode_id", "instrument", "scheduled_at", "score_total"]].sort_values(
            "scheduled_at"),
        on="scheduled_at", by=["episode_id", "instrument"], direction="forward",
        allow_exact_matches=False).dropna(subset=["score_total"])
    recovered = (following["score_total"] >= 36).groupby(following["repaired"]).mean()
    counts = following.groupby("repaired").size()
    assert counts.min() >= 50
    assert recovered[True] > recovered[False] + 0.05
    reasons = big["episodes"].set_index("episode_id")["discharge_reason"]
    all_repaired = ruptures.groupby("episode_id")["repaired"].all()
    all_repaired = all_repaired[reasons.reindex(all_repaired.index).notna()]
    dropped = reasons.reindex(all_repaired.index).isin(DROPOUTS)
    assert all_repaired.sum() >= 50 and (~all_repaired).sum() >= 50
    assert dropped[all_repaired].mean() < dropped[~all_repaired].mean() - 0.05


def test_a_few_clients_have_tas_totals_from_client_and_therapist(
        frames: dict[str, pd.DataFrame]) -> None:
    measures = frames["alliance_measures"]
    tas = measures[measures["instrument"] == "TAS"]
    clients = tas["client_id"].nunique()
    # A tenth of clients are chosen; those with an individual session two weeks in are rated.
    assert 0.03 <= clients / len(frames["clients"]) <= 0.1
    assert set(_clinic_of(frames, tas)) == set(frames["clients"]["clinic_id"])
    # Totals only (no scoring key is registered), within the form's 12-48.
    assert not tas["measure_id"].isin(frames["alliance_items"]["measure_id"]).any()
    assert tas["score_total"].between(12, 48).all()
    assert (tas["score_total"] == tas["score_total"].round()).all()
    assert tas[["goal", "task", "bond"]].isna().all().all()
    per_session = tas.groupby("appointment_id")["rater"].agg(sorted)
    assert all(raters == ["client", "therapist"] for raters in per_session)
    session = frames["appointments"].set_index("appointment_id").loc[tas["appointment_id"]]
    assert (session["service_type"] == "individual").all()
    by_rater = tas.groupby("rater")["score_total"].mean()
    assert by_rater["therapist"] < by_rater["client"]


def test_ors_and_notes_leave_the_other_tables_as_they_were(
        frames: dict[str, pd.DataFrame]) -> None:
    """They (and the TAS) draw from a stream of their own: without them every other row
    is the same."""
    without = generate(replace(CONFIG, pcoms_share=0.0, notes_share=0.0, tas_share=0.0))
    assert without["session_observations"].empty
    assert not without["alliance_measures"]["instrument"].isin(["ORS", "TAS"]).any()
    measures = frames["alliance_measures"]
    kept = measures[~measures["instrument"].isin(["ORS", "TAS"])]
    pd.testing.assert_frame_equal(without["alliance_measures"], kept)
    items = frames["alliance_items"]
    pd.testing.assert_frame_equal(
        without["alliance_items"],
        items[items["measure_id"].isin(kept["measure_id"])].reset_index(drop=True))
    for name in contract.TABLES:
        if name not in ("alliance_measures", "alliance_items", "session_observations"):
            pd.testing.assert_frame_equal(without[name], frames[name])


def test_another_seed_gives_other_ratings_and_notes(frames: dict[str, pd.DataFrame]) -> None:
    other = generate(replace(CONFIG, seed=CONFIG.seed + 1))
    assert not other["session_observations"].equals(frames["session_observations"])
    ors = other["alliance_measures"].query("instrument == 'ORS'")["score_total"]
    assert not ors.reset_index(drop=True).equals(_ors(frames)["score_total"].reset_index(
        drop=True))


def test_shares_are_validated() -> None:
    with pytest.raises(ValueError):
        SynthConfig(end=date(2026, 6, 1), pcoms_share=1.5)
    with pytest.raises(ValueError):
        SynthConfig(end=date(2026, 6, 1), notes_share=-0.1)
    with pytest.raises(ValueError):
        SynthConfig(end=date(2026, 6, 1), tas_share=2.0)

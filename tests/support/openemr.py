"""A synthetic clinic written into OpenEMR's own tables (MariaDB), for the shipped mapping.

``config/mappings/openemr.toml`` is checked against this database; it must also read a
real OpenEMR, so the DDL below is a subset of the columns of OpenEMR's published schema
(openemr/openemr ``sql/database.sql``, v_database 541), names and types as published,
and the loader writes rows the way OpenEMR's screens do (see each helper). Nothing here
may name a column OpenEMR does not have.

- ``openemr_ids(frames)``: the clinic with OpenEMR's integer keys as its ids (patient
  ``pid``, issue ``lists.id``, calendar ``pc_eid``, ``forms.id``), so both sides compare.
- ``carried(frames)``: the same clinic as the mapping can carry it out of OpenEMR.
- ``write_openemr(engine, frames)``: create the tables and write the clinic.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date, datetime, timedelta
from typing import Any

import pandas as pd
from sqlalchemy import Connection, Engine, text

# The tables the mapping reads: published columns only (a subset), published types.
DDL = [
    """CREATE TABLE `facility` (
  `id` int(11) NOT NULL auto_increment,
  `name` varchar(255) default NULL,
  `service_location` tinyint(1) NOT NULL default '1',
  `facility_code` VARCHAR(31) default NULL,
  `inactive` tinyint(1) NOT NULL DEFAULT '0',
  PRIMARY KEY  (`id`)
) ENGINE=InnoDB""",
    """CREATE TABLE `users` (
  `id` bigint(20) NOT NULL auto_increment,
  `username` varchar(255) default NULL,
  `fname` varchar(255) default NULL,
  `lname` varchar(255) default NULL,
  `facility_id` int(11) NOT NULL default '0',
  `active` tinyint(1) NOT NULL default '1',
  `calendar` TINYINT(1) NOT NULL DEFAULT 0 COMMENT '1 = appears in calendar',
  PRIMARY KEY  (`id`)
) ENGINE=InnoDB""",
    """CREATE TABLE `patient_data` (
  `id` bigint(20) NOT NULL auto_increment,
  `language` varchar(255) NOT NULL default '',
  `fname` varchar(255) NOT NULL default '',
  `lname` varchar(255) NOT NULL default '',
  `DOB` date default NULL,
  `phone_home` varchar(255) NOT NULL default '',
  `phone_cell` varchar(255) NOT NULL default '',
  `date` datetime default NULL,
  `sex` varchar(255) NOT NULL default '' COMMENT 'Sex at birth',
  `providerID` int(11) default NULL,
  `race` varchar(255) NOT NULL default '',
  `ethnicity` varchar(255) NOT NULL default '',
  `pubpid` varchar(255) NOT NULL default '',
  `pid` bigint(20) NOT NULL default '0',
  `hipaa_voice` varchar(3) NOT NULL default '',
  `hipaa_allowsms` VARCHAR(3) NOT NULL DEFAULT 'NO',
  `care_team_facility` TEXT,
  `preferred_name` TINYTEXT,
  `last_updated` DATETIME NOT NULL DEFAULT CURRENT_TIMESTAMP ON UPDATE CURRENT_TIMESTAMP,
  UNIQUE KEY `pid` (`pid`),
  KEY `idx_patient_name` (`lname`, `fname`),
  KEY `idx_patient_dob` (`DOB`),
  KEY `id` (`id`)
) ENGINE=InnoDB""",
    """CREATE TABLE `list_options` (
  `list_id` varchar(100) NOT NULL default '',
  `option_id` varchar(100) NOT NULL default '',
  `title` varchar(255) NOT NULL default '',
  `seq` int(11) NOT NULL default '0',
  `is_default` tinyint(1) NOT NULL default '0',
  `notes` TEXT,
  `activity` TINYINT DEFAULT 1 NOT NULL,
  PRIMARY KEY  (`list_id`,`option_id`)
) ENGINE=InnoDB""",
    """CREATE TABLE `lists` (
  `id` bigint(20) NOT NULL auto_increment,
  `date` datetime default NULL,
  `type` varchar(255) default NULL,
  `title` varchar(255) default NULL,
  `begdate` datetime default NULL,
  `enddate` datetime default NULL,
  `returndate` date default NULL,
  `activity` tinyint(4) default NULL,
  `pid` bigint(20) default NULL,
  `user` varchar(255) default NULL,
  `outcome` int(11) NOT NULL default '0',
  `modifydate` timestamp NOT NULL DEFAULT CURRENT_TIMESTAMP ON UPDATE CURRENT_TIMESTAMP,
  PRIMARY KEY  (`id`),
  KEY `pid` (`pid`),
  KEY `type` (`type`)
) ENGINE=InnoDB""",
    """CREATE TABLE `openemr_postcalendar_categories` (
  `pc_catid` int(11) unsigned NOT NULL auto_increment,
  `pc_constant_id` VARCHAR (255) default NULL,
  `pc_catname` varchar(100) default NULL,
  `pc_cattype` INT( 11 ) NOT NULL COMMENT 'Used in grouping categories',
  `pc_active` tinyint(1) NOT NULL default 1,
  `pc_seq` int(11) NOT NULL default '0',
  PRIMARY KEY  (`pc_catid`),
  UNIQUE KEY (`pc_constant_id`)
) ENGINE=InnoDB""",
    """CREATE TABLE `openemr_postcalendar_events` (
  `pc_eid` int(11) unsigned NOT NULL auto_increment,
  `pc_catid` int(11) NOT NULL default '0',
  `pc_multiple` int(10) unsigned NOT NULL,
  `pc_aid` varchar(30) default NULL,
  `pc_pid` varchar(11) default NULL,
  `pc_title` varchar(150) default NULL,
  `pc_time` datetime default NULL,
  `pc_eventDate` date NOT NULL,
  `pc_duration` bigint(20) NOT NULL default '0',
  `pc_recurrtype` int(1) NOT NULL default '0',
  `pc_startTime` time default NULL,
  `pc_endTime` time default NULL,
  `pc_eventstatus` int(11) NOT NULL default '0',
  `pc_apptstatus` varchar(15) NOT NULL default '-',
  `pc_facility` int(11) NOT NULL default '0' COMMENT 'facility id for this event',
  PRIMARY KEY  (`pc_eid`),
  KEY `pc_eventDate` (`pc_eventDate`)
) ENGINE=InnoDB""",
    """CREATE TABLE `patient_tracker` (
  `id`                     bigint(20)   NOT NULL auto_increment,
  `date`                   datetime     DEFAULT NULL,
  `apptdate`               date         DEFAULT NULL,
  `appttime`               time         DEFAULT NULL,
  `eid`                    bigint(20)   NOT NULL default '0',
  `pid`                    bigint(20)   NOT NULL default '0',
  `original_user`          varchar(255) NOT NULL default '',
  `encounter`              bigint(20)   NOT NULL default '0',
  `lastseq`                varchar(4)   NOT NULL default '',
  PRIMARY KEY (`id`),
  KEY (`eid`),
  KEY (`pid`)
) ENGINE=InnoDB""",
    """CREATE TABLE `patient_tracker_element` (
  `pt_tracker_id`      bigint(20)   NOT NULL default '0',
  `start_datetime`     datetime     DEFAULT NULL,
  `room`               varchar(20)  NOT NULL default '',
  `status`             varchar(31)  NOT NULL default '',
  `seq`                varchar(4)   NOT NULL default '',
  `user`               varchar(255) NOT NULL default '',
  KEY  (`pt_tracker_id`,`seq`)
) ENGINE=InnoDB""",
    """CREATE TABLE `forms` (
  `id` bigint(20) NOT NULL auto_increment,
  `date` datetime default NULL,
  `encounter` bigint(20) default NULL,
  `form_name` longtext,
  `form_id` bigint(20) default NULL,
  `pid` bigint(20) default NULL,
  `user` varchar(255) default NULL,
  `deleted` tinyint(4) DEFAULT '0' NOT NULL COMMENT 'flag indicates form has been deleted',
  `formdir` longtext,
  `issue_id` bigint(20) NOT NULL default 0 COMMENT 'references lists.id to identify a case',
  `provider_id` bigint(20) NOT NULL default 0,
  PRIMARY KEY  (`id`),
  KEY `pid_encounter` (`pid`, `encounter`),
  KEY `form_id` (`form_id`)
) ENGINE=InnoDB""",
    """CREATE TABLE `lbf_data` (
  `form_id`     int(11)      NOT NULL AUTO_INCREMENT COMMENT 'references forms.form_id',
  `field_id`    varchar(31)  NOT NULL COMMENT 'references layout_options.field_id',
  `field_value` LONGTEXT,
  PRIMARY KEY (`form_id`,`field_id`)
) ENGINE=InnoDB""",
]

# OpenEMR's published appointment statuses (list_options, list_id 'apptstat'):
# option_id, title, seq, as sql/database.sql inserts them.
APPTSTAT: tuple[tuple[str, str, int], ...] = (
    ("-", "- None", 5), ("*", "* Reminder done", 10), ("+", "+ Chart pulled", 15),
    ("x", "x Canceled", 20), ("?", "? No show", 25), ("@", "@ Arrived", 30),
    ("~", "~ Arrived late", 35), ("!", "! Left w/o visit", 40), ("#", "# Ins/fin issue", 45),
    ("<", "< In exam room", 50), (">", "> Checked out", 55), ("$", "$ Coding done", 60),
    ("%", "% Canceled < 24h", 65), ("^", "^ Pending", 70), ("AVM", "AVM Confirmed", 80),
    ("SMS", "SMS Confirmed", 85), ("EMAIL", "EMAIL Confimed", 90),
    ("CALL", "Callback requested", 95),
)
# The status a clinic adds for its own cancellations: OpenEMR's list has none.
CLINIC_CANCELLED = ("CC", "Canceled by clinic", 100)
# Statuses as this clinic's staff record them; attended visits vary as the flow board's do.
STATUS_CODES = {"scheduled": "-", "no_show": "?", "late_cancel": "%",
                "cancelled_by_client": "x", "cancelled_by_clinic": CLINIC_CANCELLED[0]}
ATTENDED_CODES = ("@", ">", "~", "<", "$")

# The clinic's configuration (docs/contract.md, "From OpenEMR").
EPISODE_TYPE = "sud_episode"
PROGRAM_TITLES = {"outpatient": "Outpatient", "intensive_outpatient": "Intensive outpatient",
                  "residential": "Residential",
                  "partial_hospitalization": "Partial hospitalization",
                  "medication_assisted": "Medication assisted treatment", "detox": "Detox",
                  "other": "Other"}
OUTCOMES = {"completed": 20, "dropped_out": 21, "left_against_advice": 22,
            "administrative": 23, "transferred": 24, "incarcerated": 25, "deceased": 26,
            "other": 27}
CATEGORIES = {"individual": "individual_counseling", "group": "group_counseling",
              "family": "family_counseling", "intake": "intake_assessment",
              "medication": "medication_management", "case_management": "case_management"}
FORMS = {"SRS": "LBFsrs", "GSRS": "LBFgsrs", "WAI-SR": "LBFwaisr", "ORS": "LBFors",
         "TAS": "LBFtas"}
# Published option ids of the lists the loader uses, with the language list's ISO codes.
LANGUAGES = {"en": ("English", "en"), "es": ("Spanish", "es"), "vi": ("vietnamese", "vi"),
             "pt-BR": ("portuguese", "pt"), "zh-Hans": ("chinese", "zh"),
             "ht": ("haitian_haitian_creole", "ht")}
SEX = {"female": "Female", "male": "Male"}  # anything else: 'UNK' (Unknown)
RACE = {"white": ("white", ""), "black": ("black_or_afri_amer", ""),
        "hispanic": ("", "hisp_or_latin"), "native_american": ("amer_ind_or_alaska_native", ""),
        "asian": ("Asian", ""), "multiracial": ("white|black_or_afri_amer", ""),
        "other": ("other_race", "")}
# The system OpenEMR's FHIR API gives the chart number (pubpid).
PUBPID_SYSTEM = "http://terminology.hl7.org/CodeSystem/v2-0203"
FIRST_FACILITY = 3  # the published schema's own facility row
LOADER = "retention-test"


def openemr_ids(frames: Mapping[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
    """The clinic with OpenEMR's keys as ids: numbered in the order of the synthetic ids."""
    keys = {
        "client_id": frames["clients"]["client_id"],
        "episode_id": frames["episodes"]["episode_id"],
        "appointment_id": frames["appointments"]["appointment_id"],
        "measure_id": frames["alliance_measures"]["measure_id"],
    }
    numbers = {col: {old: str(n) for n, old in enumerate(sorted(ids), start=1)}
               for col, ids in keys.items()}
    out = {}
    for name, frame in frames.items():
        frame = frame.copy()
        for col, renumber in numbers.items():
            if col in frame.columns:
                frame[col] = frame[col].map(lambda v, r=renumber: r.get(v, v) if isinstance(
                    v, str) else v).astype(frame[col].dtype)
        out[name] = frame
    return out


def last_updated(frames: Mapping[str, pd.DataFrame]) -> pd.Series:
    """``patient_data.last_updated`` per client: the last change of its identifier or
    contact details (one column for both), else of its first episode."""
    stamps = pd.concat([frames["client_identifiers"][["client_id", "updated_at"]],
                        frames["client_contacts"][["client_id", "updated_at"]]])
    latest = stamps.groupby("client_id")["updated_at"].max()
    first_episode = frames["episodes"].groupby("client_id")["updated_at"].min()
    return latest.combine_first(first_episode)


def carried(frames: Mapping[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
    """The clinic as the mapping carries it out of OpenEMR: what OpenEMR cannot hold is lost.

    - consents: OpenEMR has no 42 CFR Part 2 consent of this kind; nothing is mapped.
    - clients.sex: the birth-sex list has Female, Male and Unknown only ('other' is lost).
    - alliance_measures.updated_at: a form records only when it was first saved.
    - client_identifiers: the chart number under OpenEMR's own FHIR system.
    - client_contacts: no preferred channel; language without region or script
      (``pt-BR`` is ``pt``); one row per patient; one patient_data.last_updated.
    - session_observations: OpenEMR has no table for a therapist's structured session
      note; nothing is mapped.
    """
    out = {name: frame.copy() for name, frame in frames.items()}
    clients = out["clients"]
    clients["sex"] = clients["sex"].where(clients["sex"].isin(list(SEX)), None)
    measures = out["alliance_measures"]
    measures["updated_at"] = measures["administered_at"]
    out["consents"] = out["consents"].iloc[0:0]
    out["session_observations"] = out["session_observations"].iloc[0:0]
    stamp = last_updated(frames)
    ids = out["client_identifiers"]
    ids["system"] = PUBPID_SYSTEM
    ids["updated_at"] = ids["client_id"].map(stamp)
    contacts = out["client_contacts"].set_index("client_id").reindex(clients["client_id"])
    contacts.index.name = "client_id"
    contacts["preferred_channel"] = None
    contacts["language"] = contacts["language"].map(
        lambda v: LANGUAGES[v][1] if isinstance(v, str) else None)
    contacts["updated_at"] = contacts.index.map(stamp.to_dict())
    out["client_contacts"] = contacts.reset_index()[list(frames["client_contacts"].columns)]
    return out


def write_openemr(engine: Engine, frames: Mapping[str, pd.DataFrame]) -> None:
    """Create OpenEMR's tables in ``engine``'s (empty) database and write the clinic into
    them as OpenEMR's screens would."""
    with engine.begin() as conn:
        for statement in DDL:
            conn.execute(text(statement))
        rows = _rows(frames)
        for table, records in rows.items():
            _insert(conn, table, records)


def _insert(conn: Connection, table: str, records: list[dict[str, Any]]) -> None:
    if not records:
        return
    columns = list(records[0])
    sql = (f"INSERT INTO `{table}` ({', '.join(f'`{c}`' for c in columns)}) "
           f"VALUES ({', '.join(f':{c}' for c in columns)})")
    for start in range(0, len(records), 2000):
        conn.execute(text(sql), records[start:start + 2000])


def _value(v: Any) -> Any:
    """A frame's value as the driver takes it: None for missing, plain Python types."""
    if v is None or v is pd.NaT or (isinstance(v, float) and v != v):
        return None
    if isinstance(v, pd.Timestamp):
        return v.to_pydatetime()
    return v


def _number(v: float) -> str:
    """A response or score as an LBF text field holds it."""
    return repr(float(v))


def _rows(frames: Mapping[str, pd.DataFrame]) -> dict[str, list[dict[str, Any]]]:
    clients, episodes = frames["clients"], frames["episodes"]
    appointments, measures = frames["appointments"], frames["alliance_measures"]
    items, ids = frames["alliance_items"], frames["client_identifiers"]
    contacts = frames["client_contacts"].set_index("client_id")

    facility = {cid: FIRST_FACILITY + n for n, cid in
                enumerate(sorted(clients["clinic_id"].unique()))}
    staff = sorted(set(clients["case_manager_id"].dropna()) | set(
        appointments["clinician_id"].dropna()))
    user = {name: n for n, name in enumerate(staff, start=1)}
    pubpid = dict(zip(ids["client_id"], ids["value"], strict=True))
    stamp = last_updated(frames)

    out: dict[str, list[dict[str, Any]]] = {}
    out["facility"] = [{"id": fid, "name": cid, "facility_code": cid}
                       for cid, fid in facility.items()]
    out["users"] = [{"id": uid, "username": name, "fname": name, "lname": "",
                     "calendar": 1} for name, uid in user.items()]
    out["list_options"] = _list_options()

    patients = []
    for c in clients.to_dict("records"):
        cid = c["client_id"]
        contact = contacts.loc[cid].to_dict() if cid in contacts.index else {}
        first, _, last = (_value(contact.get("display_name")) or "").partition(" ")
        race, ethnicity = RACE.get(c["race_ethnicity"], ("", "")) if isinstance(
            c["race_ethnicity"], str) else ("", "")
        language = _value(contact.get("language"))
        patients.append({
            "id": int(cid), "pid": int(cid), "pubpid": pubpid.get(cid, ""),
            "fname": first, "lname": last,
            "preferred_name": _value(contact.get("preferred_name")),
            "DOB": date(int(c["birth_year"]), 7, 1) if _value(c["birth_year"]) else None,
            "sex": SEX.get(c["sex"], "UNK") if isinstance(c["sex"], str) else "",
            "race": race, "ethnicity": ethnicity,
            "language": LANGUAGES[language][0] if language else "",
            "providerID": user.get(c["case_manager_id"]),
            "care_team_facility": str(facility[c["clinic_id"]]),
            "phone_cell": _value(contact.get("phone")) or "",
            "hipaa_allowsms": _yes_no(contact.get("may_text")),
            "hipaa_voice": _yes_no(contact.get("may_call")),
            "date": _value(stamp[cid]), "last_updated": _value(stamp[cid]),
        })
    out["patient_data"] = patients

    out["lists"] = [{
        "id": int(e["episode_id"]), "date": _value(e["updated_at"]), "type": EPISODE_TYPE,
        "title": PROGRAM_TITLES[e["program"]],
        "begdate": datetime.combine(e["admitted_on"], datetime.min.time()),
        "enddate": (datetime.combine(e["discharged_on"], datetime.min.time())
                    if _value(e["discharged_on"]) else None),
        "returndate": _value(e["planned_discharge_on"]),
        "outcome": OUTCOMES[e["discharge_reason"]] if isinstance(
            e["discharge_reason"], str) else 0,
        "activity": 1, "pid": int(e["client_id"]), "user": LOADER,
        "modifydate": _value(e["updated_at"]),
    } for e in episodes.to_dict("records")]

    category = {}
    out["openemr_postcalendar_categories"] = [
        # A provider's own time: never a client's appointment.
        {"pc_catid": 2, "pc_constant_id": "in_office", "pc_catname": "In Office",
         "pc_cattype": 1, "pc_seq": 2}]
    for n, (service, constant) in enumerate(sorted(CATEGORIES.items()), start=16):
        for remote, cat_id, prefix in ((False, n, ""), (True, n + 20, "telehealth_")):
            category[(service, remote)] = cat_id
            out["openemr_postcalendar_categories"].append({
                "pc_catid": cat_id, "pc_constant_id": prefix + constant,
                "pc_catname": (prefix + constant).replace("_", " ").capitalize(),
                "pc_cattype": 0, "pc_seq": cat_id})

    client_facility = dict(zip(clients["client_id"], clients["clinic_id"].map(facility),
                               strict=True))
    with_measures = set(measures["appointment_id"].dropna())
    events: list[dict[str, Any]] = []
    trackers: list[dict[str, Any]] = []
    elements: list[dict[str, Any]] = []
    for a in appointments.sort_values("appointment_id", key=lambda s: s.astype(int)).to_dict(
            "records"):
        eid = int(a["appointment_id"])
        slot: datetime = a["scheduled_at"].to_pydatetime()
        code = (ATTENDED_CODES[eid % len(ATTENDED_CODES)] if a["status"] == "attended"
                else STATUS_CODES[a["status"]])
        events.append({
            "pc_eid": eid, "pc_catid": category[(a["service_type"], bool(a["telehealth"]))],
            "pc_multiple": 0, "pc_aid": str(user[a["clinician_id"]]) if isinstance(
                a["clinician_id"], str) else None,
            "pc_pid": a["client_id"], "pc_title": a["service_type"],
            # The calendar stamps pc_time when the slot is booked (and on every save there).
            "pc_time": _value(a["booked_at"]), "pc_eventDate": slot.date(),
            "pc_duration": 3000, "pc_recurrtype": 0, "pc_startTime": slot.time(),
            "pc_endTime": (slot + timedelta(minutes=50)).time(), "pc_eventstatus": 1,
            # The status is set on the flow board, which leaves pc_time alone.
            "pc_apptstatus": "-", "pc_facility": client_facility[a["client_id"]],
        })
        changed = _value(a["updated_at"])
        if a["status"] != "scheduled" or changed != _value(a["booked_at"]):
            events[-1]["pc_apptstatus"] = code
            trackers.append({"id": len(trackers) + 1, "date": changed,
                             "apptdate": slot.date(), "appttime": slot.time(), "eid": eid,
                             "pid": int(a["client_id"]), "original_user": LOADER,
                             # The visit's encounter, where forms were filled in.
                             "encounter": eid if a["appointment_id"] in with_measures else 0,
                             "lastseq": "1"})
            elements.append({"pt_tracker_id": len(trackers), "start_datetime": changed,
                             "room": "", "status": code, "seq": "1", "user": LOADER})
    # A provider's block of office time, with no patient.
    events.append({"pc_eid": len(events) + 1000000, "pc_catid": 2, "pc_multiple": 0,
                   "pc_aid": "1", "pc_pid": "", "pc_title": "In Office", "pc_time": None,
                   "pc_eventDate": date(2026, 5, 4), "pc_duration": 28800,
                   "pc_recurrtype": 0, "pc_startTime": None, "pc_endTime": None,
                   "pc_eventstatus": 1, "pc_apptstatus": "-", "pc_facility": FIRST_FACILITY})
    out["openemr_postcalendar_events"] = events
    out["patient_tracker"] = trackers
    out["patient_tracker_element"] = elements

    by_measure = {mid: group for mid, group in items.groupby("measure_id")}
    forms: list[dict[str, Any]] = []
    data: list[dict[str, Any]] = []
    for m in measures.to_dict("records"):
        fid = int(m["measure_id"])
        form_id = fid + 500000  # lbf_data's own sequence, not forms.id
        session = m["appointment_id"]
        forms.append({
            "id": fid, "date": _value(m["administered_at"]),
            "encounter": int(session) if isinstance(session, str) else 9000000 + fid,
            "form_name": m["instrument"], "form_id": form_id, "pid": int(m["client_id"]),
            "user": LOADER, "deleted": 0, "formdir": FORMS[m["instrument"]],
            "issue_id": int(m["episode_id"]), "provider_id": 0})
        fields = {"rater": m["rater"]}
        given = by_measure.get(m["measure_id"])
        if given is not None:
            fields.update({f"item{int(i)}": _number(r) for i, r in
                           zip(given["item_number"], given["response"], strict=True)})
        else:  # scored on paper: the clinician enters the total (and subscales)
            for name in ("score_total", "goal", "task", "bond"):
                if _value(m[name]) is not None:
                    fields["total" if name == "score_total" else name] = _number(m[name])
        data.extend({"form_id": form_id, "field_id": k, "field_value": v}
                    for k, v in fields.items())
    out["forms"] = forms
    out["lbf_data"] = data
    return out


def _yes_no(v: Any) -> str:
    """OpenEMR's yesno list as the demographics store it ('' when never asked)."""
    v = _value(v)
    return "" if v is None else ("YES" if v else "NO")


def _list_options() -> list[dict[str, Any]]:
    """The list options the clinic's data refer to: the published ones it uses, and those
    it adds (programs, discharge outcomes, its clinic-cancellation status)."""
    rows = [("apptstat", o, t, s, "") for o, t, s in (*APPTSTAT, CLINIC_CANCELLED)]
    rows += [("language", o, o.replace("_", " ").title(), 0, iso)
             for o, iso in LANGUAGES.values()]
    rows += [("sex", "Female", "Female", 1, ""), ("sex", "Male", "Male", 2, ""),
             ("sex", "UNK", "Unknown", 10, "")]
    rows += [("outcome", str(n), t, n, "") for n, t in enumerate(
        ("Unassigned", "Resolved", "Improved", "Status quo", "Worse", "Pending followup"))]
    rows += [("outcome", str(n), r.replace("_", " ").capitalize(), n, "")
             for r, n in OUTCOMES.items()]
    rows += [(f"{EPISODE_TYPE}_issue_list", p, t, n, "")
             for n, (p, t) in enumerate(PROGRAM_TITLES.items())]
    return [{"list_id": lst, "option_id": o, "title": t, "seq": s, "is_default": 0,
             "notes": notes, "activity": 1} for lst, o, t, s, notes in rows]

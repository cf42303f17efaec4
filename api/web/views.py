"""The case managers' pages: sign in, today's list, a client's story, recording outreach."""

from __future__ import annotations

import csv
import io
import logging
import re
from collections.abc import Mapping
from datetime import UTC, date, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import Any
from urllib.parse import parse_qsl, urlencode
from zoneinfo import ZoneInfo

from babel import Locale, UnknownLocaleError
from flask import Blueprint, Response, redirect, render_template, request, session, url_for
from flask.typing import ResponseReturnValue
from sqlalchemy import Connection, Engine
from sqlalchemy.exc import SQLAlchemyError
from werkzeug.exceptions import HTTPException

from retention.access.keys import Caller, check_key, key_id_of, key_label, page_caller
from retention.access.scope import client_exists, read_client
from retention.api.auth import deny_counted, throttle_address
from retention.api.errors import Problem
from retention.api.routes import today
from retention.api.services import services, state
from retention.api.web import charts
from retention.api.web import session as pages
from retention.api.web.session import (
    CSRF_FIELD,
    SESSION_ID,
    audit,
    check_csrf,
    csrf_token,
    safe_next,
    sign_in,
    signed_in,
)
from retention.casework import caseload, contacts, outreach, repair, stage
from retention.clinic import contract
from retention.model.drift import drift_explanation
from retention.settings import Settings
from retention.store import tables
from retention.store.lists import latest_publication, run_drift
from retention.store.status import service_status

log = logging.getLogger(__name__)

bp = Blueprint("web", __name__, url_prefix="/web", template_folder="templates",
               static_folder="static", static_url_path="/static")

TIERS = ("high", "medium", "low")
SORT_WORDS = {"rank": "Risk (highest first)", "change": "What changed since yesterday",
              "last_attended": "Longest since last attended", "next_booked": "Nothing booked first"}
SHOW_WORDS = {"engaged": "Still engaged", "all": "Everyone on the list"}
LIST_PARAMS = {"program", "tier", "show", "sort", "cm"}
# Calls counted on each row (the last 7 days), so two people do not call one client thrice.
OUTREACH_DAYS = 7
# A case manager id as the clinic's database writes it (contract: up to 64 characters).
CASE_MANAGER_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@-]{0,63}")
CSV_COLUMNS = ("rank", "client_id", "name", "preferred_name", "phone", "preferred_channel",
               "may_text", "may_call", "language", "case_manager", "tier", "risk", "why",
               "last_attended", "next_booked", "calls_last_7_days", "last_outreach")


def _settings() -> Settings:
    return services().settings


def _store() -> Engine:
    return services().store


def _caller() -> Caller:
    who = state().caller
    assert who is not None, "_caller() outside a @signed_in view"
    return who


@bp.after_request
def no_store(response: Any) -> Any:
    """Pages hold PHI: never cached, never framed, nothing loaded from elsewhere."""
    response.headers["Cache-Control"] = "no-store"
    response.headers["Pragma"] = "no-cache"
    response.headers["Content-Security-Policy"] = (
        "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'")
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers["X-Frame-Options"] = "DENY"
    return response


@bp.app_context_processor
def page_globals() -> dict[str, Any]:
    return {"csrf_field": CSRF_FIELD, "csrf_token": csrf_token}


@bp.errorhandler(HTTPException)
def html_error(exc: HTTPException) -> ResponseReturnValue:
    """Errors on the pages are pages (the JSON API keeps its problem JSON)."""
    status = exc.code or 500
    title = getattr(exc, "title", None) or exc.name
    headers = dict(getattr(exc, "headers", None) or {})
    if status in (429, 503):
        headers.setdefault("Retry-After", "60")
    return render_template("error.html", title=title, detail=exc.description,
                           signed_in=SESSION_ID in session, status=status), status, headers


@bp.errorhandler(Exception)
def html_unexpected(exc: Exception) -> ResponseReturnValue:
    # The type and route only: the message may carry client data.
    log.error("unhandled %s on %s %s", type(exc).__name__, request.method, request.path)
    return render_template("error.html", title="Something went wrong", status=500,
                           detail="The page could not be shown; the error has been logged.",
                           signed_in=SESSION_ID in session), 500


# --- sign-in ----------------------------------------------------------------------


@bp.get("/sign-in")
def sign_in_form() -> ResponseReturnValue:
    message = ("Your session ended or your key is no longer valid. Sign in again."
               if request.args.get("ended") else None)
    return render_template("sign_in.html", message=message, next=request.args.get("next", ""))


@bp.post("/sign-in")
def sign_in_submit() -> ResponseReturnValue:
    """Check the key like the API does; only case managers and administrators get in.

    Counted by address first, like an API request without a known key (a guessed key
    costs a sign-in as much as an API call); failed sign-ins past the first few a minute
    are counted, not written one by one.
    """
    if not services().web_pages:
        raise Problem(503, "Sign-in is not configured: the operator must set "
                      "RETENTION_SECRET_KEY.", "Pages unavailable")
    throttle_address("web.sign_in")
    check_csrf()
    token = request.form.get("key", "").strip()
    next_page = request.form.get("next", "")
    state().claimed_key_id = key_id_of(token)
    now = services().clock.now()
    try:
        with _store().connect() as conn:
            checked = check_key(conn, token, now)
            who = checked.caller
            allowed = who is not None and page_caller(conn, who.key_id, now)
    except SQLAlchemyError:
        raise Problem(503, "The service database cannot be read; try again shortly.",
                      "Service unavailable") from None
    if who is None:
        deny_counted("web.sign_in", 401, checked.outcome, "sign-in refused",
                     "Authentication required")  # audited; the page below is the answer
        message = ("That access key has expired; ask for a new one." if checked.outcome
                   == "expired" else "That access key is not valid or has been revoked.")
        return render_template("sign_in.html", error=message, next=next_page), 401
    if not allowed:
        audit("web.sign_in", "forbidden", 403, who=who)
        return render_template("sign_in.html", next=next_page,
                               error="This key is for the API only; the pages are for case "
                               "managers and administrators."), 403
    sign_in(who)
    return redirect(safe_next(next_page, url_for("web.daily_list")), 303)


@bp.post("/sign-out")
@signed_in
def sign_out() -> ResponseReturnValue:
    """End the session for every copy of the cookie, audited with it when the trail works."""
    if pages.sign_out(_caller()):
        return redirect(url_for("web.sign_in_form", out=1), 303)
    return render_template(
        "error.html", title="Signed out; not recorded", status=503, signed_in=False,
        detail="You are signed out. The audit trail could not be written, so the sign-out "
        "is not in it (the service log says so)."), 503


# --- freshness --------------------------------------------------------------------


def _freshness(conn: Any) -> dict[str, Any]:
    """The list's date and age, whether the last nightly run failed or died, tables the
    clinic's database no longer has, and whether the list's population drifted (what
    /health says, worded for the banner)."""
    status = service_status(conn, today())
    pub = status.publication
    drifted = run_drift(conn, pub["run_id"])["flagged"] if pub else []
    died = status.last_run is not None and status.last_run["status"] == "died"
    return {"as_of": pub["as_of"] if pub else None, "age_days": status.age_days,
            "stale": status.stale, "failed_at": status.failed_at, "died": died,
            "missing_tables": status.missing_tables, "drift": drift_explanation(drifted)}


# --- today's list -----------------------------------------------------------------


def _list_filter(args: Mapping[str, str] | None = None) -> caseload.DailyFilter:
    """The list's filters from the query string, each checked; unknown ones refused."""
    args = request.args if args is None else args
    unknown = sorted(set(args) - LIST_PARAMS - {"recorded"})
    if unknown:
        raise Problem(400, f"Unknown filter(s): {', '.join(unknown)}.", "Bad filter")
    program = args.get("program") or None
    tier = args.get("tier") or None
    sort = args.get("sort") or "rank"
    show = args.get("show") or "engaged"
    cm = args.get("cm") or None
    if program is not None and program not in contract.PROGRAMS:
        raise Problem(400, f"There is no program {program!r}.", "Bad filter")
    if tier is not None and tier not in TIERS:
        raise Problem(400, "Tier must be high, medium or low.", "Bad filter")
    if sort not in caseload.SORTS:
        raise Problem(400, "Sort by one of: " + ", ".join(caseload.SORTS) + ".", "Bad filter")
    if show not in caseload.SHOWS:
        raise Problem(400, "Show must be engaged or all.", "Bad filter")
    if cm is not None:
        if _caller().case_manager_id is not None:
            raise Problem(400, "Your key covers your own caseload; it cannot show another "
                          "case manager's.", "Bad filter")
        if not CASE_MANAGER_ID.fullmatch(cm):
            raise Problem(400, "That is not a case manager id.", "Bad filter")
    return caseload.DailyFilter(program=program, tier=tier, sort=sort, show=show,
                                case_manager=cm)


def _list_query(flt: caseload.DailyFilter) -> dict[str, str]:
    """The query string that shows ``flt`` again (defaults left out)."""
    query = {"program": flt.program or "", "tier": flt.tier or "",
             "sort": "" if flt.sort == "rank" else flt.sort,
             "show": "" if flt.show == "engaged" else flt.show, "cm": flt.case_manager or ""}
    return {k: v for k, v in query.items() if v}


def _calls(conn: Connection, flt: caseload.DailyFilter, as_of: date) -> caseload.DailyList:
    """Today's calls in the caller's scope, each row with the client's contact details."""
    since = services().clock.now() - timedelta(days=OUTREACH_DAYS)
    daily = caseload.daily_list(conn, _caller(), as_of, flt, since)
    settings = _settings()
    found = contacts.contacts_for(conn, _caller(), [r["client_id"] for r in daily.rows],
                                  link_template=settings.ehr_link_template,
                                  link_system=settings.ehr_link_system)
    for row in daily.rows:
        row["contact"] = found.get(row["client_id"])
    return daily


@bp.get("/")
@signed_in
def daily_list() -> ResponseReturnValue:
    """Today's calls: whom to reach and why, how to reach them, and what was tried."""
    return _calls_page("list.html", "web.list")


def _calls_page(template: str, action: str) -> ResponseReturnValue:
    """Today's calls in ``template`` (the list, or the print view), audited as ``action``
    with the client ids shown."""
    flt = _list_filter()
    with _store().connect() as conn:
        pub = latest_publication(conn)
        fresh = _freshness(conn)
        label = key_label(conn, _caller().key_id)
        daily = _calls(conn, flt, pub["as_of"]) if pub else None
        recorded = _recorded(conn, request.args.get("recorded"), pub)
    rows = daily.rows if daily else []
    audit(action, "ok", 200, [r["client_id"] for r in rows], who=_caller())
    return render_template(
        template, daily=daily, rows=rows, fresh=fresh, flt=flt, who=_caller(), label=label,
        programs=contract.PROGRAMS, tiers=TIERS, sorts=SORT_WORDS, shows=SHOW_WORDS,
        recorded=recorded, list_query=_list_query(flt), outreach_days=OUTREACH_DAYS,
        channel_words=outreach.CHANNEL_WORDS,
        filtered=bool(flt.program or flt.tier or flt.sort != "rank" or flt.case_manager),
    )


def _recorded(conn: Connection, client_id: str | None,
              pub: dict[str, Any] | None) -> str | None:
    """The client whose outreach was just saved, if the caller may see them."""
    if not client_id or pub is None:
        return None
    return client_id if read_client(conn, _caller(), client_id, pub["as_of"], limit=1) else None


@bp.get("/calls.csv")
@signed_in
def calls_csv() -> ResponseReturnValue:
    """Today's calls as a spreadsheet, for a day away from the screen; audited as an export."""
    flt = _list_filter()
    with _store().connect() as conn:
        pub = latest_publication(conn)
        if pub is None:
            raise Problem(404, "No list has been published yet.", "No list")
        daily = _calls(conn, flt, pub["as_of"])
    audit("web.export", "ok", 200, [r["client_id"] for r in daily.rows], who=_caller())
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(CSV_COLUMNS)
    for r in daily.rows:
        writer.writerow([_cell(v) for v in _csv_row(r)])
    filename = f"calls-{pub['as_of']:%Y-%m-%d}.csv"
    return Response(out.getvalue(), mimetype="text/csv", headers={
        "Content-Disposition": f'attachment; filename="{filename}"'})


def _csv_row(r: dict[str, Any]) -> list[Any]:
    c = r.get("contact")
    last = r.get("outreach")
    reasons = " | ".join(reason["text"] for reason in r["reasons"][:3])  # they hold ";"
    return [
        r["rank"], r["client_id"], c and c.display_name, c and c.preferred_name,
        c and c.phone, c and c.preferred_channel, _yes_no(c and c.may_text),
        _yes_no(c and c.may_call), c and c.language, r.get("case_manager_id"), r["tier"],
        pct(r["risk"]), reasons, r["last_attended_on"], r["next_booked_at"], r["attempts"],
        outreach_words(last) if last else "",
    ]


def _yes_no(value: bool | None) -> str:
    return "" if value is None else "yes" if value else "no"


def _cell(value: Any) -> str:
    """A spreadsheet cell that is never a formula (OWASP CSV injection)."""
    text = "" if value is None else str(value)
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


@bp.get("/calls/print")
@signed_in
def calls_print() -> ResponseReturnValue:
    """Today's calls on paper: names, numbers, why and a box for notes; audited as a print."""
    return _calls_page("print.html", "web.print")


# --- one client -------------------------------------------------------------------


def _client_page(client_id: str, form_error: str | None = None,
                 form: dict[str, str] | None = None) -> ResponseReturnValue:
    with _store().connect() as conn:
        pub = latest_publication(conn)
        fresh = _freshness(conn)
        wai_from = services().catalogue.thresholds.working_alliance.concern_below
        story = (caseload.client_story(conn, _caller(), client_id, pub["as_of"],
                                       wai_from=wai_from) if pub else None)
        if story is None:
            exists = client_exists(conn, client_id,
                                                pub["as_of"] if pub else None)
        else:
            history = outreach.client_history(conn, _caller(), client_id)
            settings = _settings()
            contact = contacts.contacts_for(
                conn, _caller(), [client_id], link_template=settings.ehr_link_template,
                link_system=settings.ehr_link_system).get(client_id)
        label = key_label(conn, _caller().key_id)
    if story is None:
        # Outside the scope and absent look the same; the audit knows which.
        audit("web.client", "denied" if exists else "not_found", 404, [client_id],
              who=_caller())
        raise Problem(404, "This client is not on your list. Check the client id, or ask "
                      "for access if they belong to your caseload.", "Client not on your list")
    audit("web.client", "ok", 200, [client_id], who=_caller())
    assert pub is not None
    start = pub["as_of"] - timedelta(weeks=12)
    # The clinic's ORS lines (instrument registry, read and checked at start) and its
    # words for the therapist's notes: what the reasons read too.
    lines = services().catalogue.thresholds.outcome
    trajectory = lines.trajectory
    observed = services().catalogue.observed
    return render_template(
        "client.html", story=story, row=story.current, fresh=fresh, who=_caller(), label=label,
        history=history, contact=contact, channel_words=outreach.CHANNEL_WORDS,
        outcome_words=outreach.OUTCOME_WORDS,
        note_max=tables.NOTE_MAX, form_error=form_error, form=form or {},
        risk_svg=charts.risk_chart(story.history, _settings().tiers),
        timeline_svg=charts.timeline_chart(story.appointments, story.measures, start,
                                           pub["as_of"], story.evidence),
        status_words=charts.STATUS_WORDS,
        ors_svg=charts.ors_chart(story.ors, trajectory, story.evidence, cutoff=lines.cutoff),
        ors_rows=charts.ors_table(story.ors, trajectory), trajectory=trajectory,
        ors_cutoff=lines.cutoff,
        repair_words=observed.repair_steps,
        sign_words={code: sign.words for code, sign in observed.signs.items()},
        srs_drop=repair.SRS_DROP,
    ), 400 if form_error else 200


@bp.get("/clients/<client_id>")
@signed_in
def client_page(client_id: str) -> ResponseReturnValue:
    """A client's risk over the weeks, sessions and ratings, reasons, and outreach."""
    if request.args:
        raise Problem(400, "This page takes no query parameters.", "Bad request")
    return _client_page(client_id)


@bp.post("/clients/<client_id>/outreach")
@signed_in
def record_outreach(client_id: str) -> ResponseReturnValue:
    """Record a call, text or visit against the client's row on today's list: from the
    client page's form, or one button of the calling list (phone, with its result)."""
    who = _caller()
    form = {k: request.form.get(k, "") for k in ("result", "channel", "outcome", "note", "quick")}
    back = _back_to_list(request.form.get("list")) if request.form.get("back") == "list" else None
    try:
        reached, channel, result, note = outreach.parse_entry(form)
    except outreach.OutreachError as exc:
        return _client_page(client_id, form_error=str(exc)[0].upper() + str(exc)[1:] + ".",
                            form=form)
    # The entry and its audit record commit together or not at all.
    try:
        with _store().begin() as conn:
            pub = latest_publication(conn)
            rows = (read_client(conn, who, client_id, pub["as_of"], limit=1)
                    if pub else [])
            current = rows[0] if rows and pub and rows[0]["as_of"] == pub["as_of"] else None
            if current is not None:
                outreach.record_outreach(conn, outreach.Outreach(
                    client_id=client_id, episode_id=current["episode_id"],
                    clinic_id=current["clinic_id"], list_as_of=current["as_of"],
                    risk=current["risk"], tier=current["tier"], key_id=who.key_id,
                    case_manager_id=who.case_manager_id, reached=reached, channel=channel,
                    outcome=result, note=note,
                ), at=services().clock.now())
                audit("web.outreach", "ok", 200, [client_id], who=who, conn=conn)
    except SQLAlchemyError:
        log.error("outreach not recorded for request %s: the store failed",
                  state().request_id)
        raise Problem(503, "The service database cannot be written, so the outreach was not "
                      "recorded; try again shortly.", "Service unavailable") from None
    if current is None:
        audit("web.outreach", "denied", 404, [client_id], who=who)
        raise Problem(404, "This client is not on your list.", "Client not on your list")
    if back is not None:
        query = urlencode({**back, "recorded": client_id})
        return redirect(f"{url_for('web.daily_list')}?{query}#c-{client_id}", 303)
    return redirect(url_for("web.client_page", client_id=client_id) + "#latest-outreach", 303)


def _back_to_list(query: str | None) -> dict[str, str]:
    """The list view the outreach was recorded from (its own filters only, checked again),
    so the saved row is on the page the user returns to."""
    args = {k: v for k, v in parse_qsl(query or "") if k in LIST_PARAMS}
    try:
        return _list_query(_list_filter(args))
    except Problem:
        return {}


@bp.get("/glossary")
def glossary() -> ResponseReturnValue:
    """What the list's words, ratings and lines mean (no client data: no sign-in needed)."""
    settings = _settings()
    thresholds = services().catalogue.thresholds
    return render_template("glossary.html", thresholds=thresholds,
                           max_reasons=settings.max_reasons,
                           engaged_days=settings.engaged_within_days,
                           ors_cutoff=thresholds.outcome.cutoff,
                           ors_reliable=thresholds.outcome.reliable_change,
                           srs_drop=repair.SRS_DROP,
                           stage_rule={"sessions": stage.ENGAGEMENT_SESSIONS,
                                       "days": stage.ENGAGEMENT_DAYS,
                                       "resolution": stage.RESOLUTION_DAYS})


@bp.route("/<path:rest>", methods=["GET", "POST"])
def not_found(rest: str) -> ResponseReturnValue:
    raise Problem(404, "There is no such page. Go back to today's list.", "Page not found")


def list_date(value: date | None) -> str:
    return f"{value:%a %d %b %Y}" if value else "none yet"


def pct(risk: float) -> str:
    """A probability as whole percent (halves rounded up), never a certain-looking 0% or
    100%: under 1% is "<1%" and over 99% is ">99%"."""
    percent = Decimal(str(risk)) * 100
    if percent < 1:
        return "<1%"
    if percent > 99:
        return ">99%"
    return f"{percent.quantize(Decimal(1), ROUND_HALF_UP)}%"


def clinic_time(value: datetime | None) -> str:
    """A time the service recorded (UTC) as the clinic's clock shows it."""
    if value is None:
        return ""
    zone = ZoneInfo(_settings().clinic_timezone)
    return value.replace(tzinfo=UTC).astimezone(zone).strftime("%a %d %b %H:%M")


def language_name(tag: str | None) -> str:
    """A BCP 47 tag in English words ("es": "Spanish"), or the tag if Babel does not know it."""
    if not tag:
        return ""
    try:
        return str(Locale.parse(tag, sep="-").get_display_name("en")) or tag
    except (ValueError, UnknownLocaleError):
        return tag


def outreach_words(o: Mapping[str, Any]) -> str:
    """One outreach entry as a line: "Reached by phone Thu 03 Dec 10:12: booked a session"."""
    words = ("Reached" if o["reached"] else "Not reached") + " by " + \
        outreach.CHANNEL_WORDS.get(o["channel"], o["channel"]) + " " + \
        clinic_time(o["recorded_at"])
    if o.get("outcome"):
        words += ": " + outreach.OUTCOME_WORDS.get(o["outcome"], o["outcome"])
    return words


def tz_name() -> str:
    return _settings().clinic_timezone


bp.add_app_template_filter(list_date, "list_date")
bp.add_app_template_filter(pct, "pct")
bp.add_app_template_filter(clinic_time, "clinic_time")
bp.add_app_template_filter(language_name, "language_name")
bp.add_app_template_filter(outreach_words, "outreach_words")
bp.add_app_template_filter(contacts.tel_href, "tel_href")
bp.add_app_template_global(tz_name, "clinic_zone")

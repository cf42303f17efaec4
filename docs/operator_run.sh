#!/usr/bin/env bash
# The operator run of docs/nightly.md ("An operator run"): a fresh synthetic clinic on
# SQLite in a temporary directory, one fault injected each night, and what `retention etl`
# / `score` / `quality` / `runs` print. Usage (after `make setup`):
#   bash docs/operator_run.sh [REPO] [DIR]      (defaults: this repository, a new mktemp -d)
# DIR/transcript.txt is everything printed; DIR/trimmed.txt is what docs/nightly.md shows
# (log lines, which carry the wall clock, and training progress dropped; a traceback cut to
# its last line). Nothing outside DIR is written, the model signing key included.
set -uo pipefail
REPO=${1:-$(cd "$(dirname "$0")/.." && pwd)}
D=${2:-$(mktemp -d /tmp/operator_run.XXXXXX)}
mkdir -p "$D"
R="$REPO/.venv/bin/retention"
PY="$REPO/.venv/bin/python"
OUT="$D/transcript.txt"
: >"$OUT"

base() {  # the config every night starts from; $1 is appended ([etl] fragments)
    cat >"$D/retention.toml" <<EOF
[databases]
source_url = "sqlite:///$D/clinic.db"
store_url = "sqlite:///$D/retention.db"

[model]
models_dir = "$D/models"
reasons_file = "$REPO/config/reasons.toml"
model_key_file = "$D/model-signing.key"
$1
EOF
}

run() {  # print the command as an operator types it, then its output and exit code
    local shown="\$ retention" a
    for a in "$@"; do [[ $a == *" "* ]] && shown+=" \"$a\"" || shown+=" $a"; done
    echo "$shown" >>"$OUT"
    "$R" --config "$D/retention.toml" "$@" >>"$OUT" 2>&1
    echo "[exit $?]" >>"$OUT"
}

note() { printf '\n## %s\n' "$*" >>"$OUT"; }

sql() {  # play the clinic's EHR: change the source database
    "$PY" - "$D/clinic.db" "$1" <<'EOF'
import sqlite3, sys
with sqlite3.connect(sys.argv[1]) as db:
    db.executescript(sys.argv[2])
    print(db.total_changes)
EOF
}

# The clinic's EHR changes rows the evening before each night's run.
EVENING="2026-06-0%s 20:00:00.000000"

day() {  # the clinic's day $1 (2026-06-0$1): its sessions recorded that evening, 2 in 3 attended
    sql "UPDATE appointments SET updated_at = '$(printf "$EVENING" "$1")',
           status = CASE WHEN CAST(substr(appointment_id, 2) AS INTEGER) % 3 = 0
                         THEN 'no_show' ELSE 'attended' END
         WHERE status = 'scheduled' AND scheduled_at >= '2026-06-0$1'
           AND scheduled_at < '2026-06-0$(($1 + 1))'" >/dev/null
}

note "setup: a fresh synthetic clinic (2,000 clients, 3 clinics), first ETL, training, first list"
base ""
run synth --clients 2000 --end 2026-06-01 --seed 7
run models key --create "$D/model-signing.key"
run etl --as-of 2026-06-01
run train --as-of 2026-06-01
run score --as-of 2026-06-01

note "night 2026-06-02, fault (a): the EHR codes outpatient \"OP\"; the mapping was typed \"0P\""
day 1
sql "UPDATE episodes SET program = 'OP', updated_at = '$(printf "$EVENING" 1)'
     WHERE program = 'outpatient'" >/dev/null
TYPO='[etl.codes.episodes.program]
"0P" = "outpatient"'
base "$TYPO"
run etl --as-of 2026-06-02
run score --as-of 2026-06-02
run quality --examples 2
run runs --limit 3

note "(a) again with every quarantine limit opened: the publish guard is the last line"
base "[etl]
max_quarantine_share = 1.0
max_table_quarantine_share = 1.0
max_code_quarantine_share = 1.0
max_clinic_quarantine_share = 1.0
$TYPO"
run etl --as-of 2026-06-02
run score --as-of 2026-06-02
run runs --limit 2

note "(a) fixed: the mapping reads OP; the held episodes are released, the list publishes"
base '[etl.codes.episodes.program]
OP = "outpatient"'
run etl --as-of 2026-06-02
run score --as-of 2026-06-02
run quality --examples 2

note "night 2026-06-03, fault (b): an EHR upgrade records attendance as ATT2 on ~24% of appointments"
day 2
sql "UPDATE appointments SET status = 'ATT2', updated_at = '$(printf "$EVENING" 2)'
     WHERE appointment_id IN (SELECT appointment_id FROM appointments WHERE status = 'attended'
       ORDER BY scheduled_at DESC
       LIMIT (SELECT CAST(0.24 * COUNT(*) AS INTEGER) FROM appointments))" >/dev/null
MAPPED='[etl.codes.episodes.program]
OP = "outpatient"'
run etl --as-of 2026-06-03
run score --as-of 2026-06-03
run quality --examples 2
run runs --limit 3

note "(b) fixed: ATT2 mapped to attended"
base "$MAPPED
[etl.codes.appointments.status]
ATT2 = \"attended\""
run etl --as-of 2026-06-03
run score --as-of 2026-06-03

note "night 2026-06-04, fault (c): one appointment typed scheduled_at = 9999-12-31 10:00"
day 3
sql "UPDATE appointments SET scheduled_at = '9999-12-31 10:00:00.000000',
       updated_at = '$(printf "$EVENING" 3)'
     WHERE appointment_id = (SELECT appointment_id FROM appointments
       WHERE status = 'scheduled' ORDER BY appointment_id LIMIT 1)" >/dev/null
run etl --as-of 2026-06-04
run score --as-of 2026-06-04
run quality --examples 2
run runs --limit 2

note "night 2026-06-05, fault (d): a typo'd column (sheduled_at) in an [etl.queries] entry"
day 4
QUERY='appointments = """
SELECT appointment_id, episode_id, client_id, sheduled_at AS scheduled_at, booked_at,
       status, service_type, telehealth, clinician_id, updated_at
  FROM appointments"""'
base "$MAPPED
[etl.codes.appointments.status]
ATT2 = \"attended\"
[etl.queries]
$QUERY"
run etl --as-of 2026-06-05
run score --as-of 2026-06-05
run runs --limit 3

note "(d) fixed: the query's column spelled right"
base "$MAPPED
[etl.codes.appointments.status]
ATT2 = \"attended\"
[etl.queries]
${QUERY/sheduled_at/scheduled_at}"
run etl --as-of 2026-06-05
run score --as-of 2026-06-05

note "night 2026-06-06, a real change: clinic-east closes its outpatient program (transfers)"
day 5
sql "UPDATE episodes SET discharged_on = '2026-06-05', discharge_reason = 'transferred',
       updated_at = '$(printf "$EVENING" 5)'
     WHERE discharged_on IS NULL AND program = 'OP'
       AND client_id IN (SELECT client_id FROM clients WHERE clinic_id = 'clinic-east')" >/dev/null
run etl --as-of 2026-06-06
run score --as-of 2026-06-06
run score --as-of 2026-06-06 --accept-change "clinic-east closed outpatient on 5 June; clients transferred to clinic-north (ticket OPS-412)"
run runs --limit 3

"$PY" - "$OUT" >"$D/trimmed.txt" <<'EOF'
import re, sys
lines, out, i = open(sys.argv[1]).read().splitlines(), [], 0
while i < len(lines):
    line = lines[i]
    if re.match(r"^\d{4}-\d\d-\d\d [\d:]{8},\d+ (INFO|WARNING|ERROR) ", line) \
            or line.startswith("  snapshots:"):
        i += 1
        continue
    if line.startswith("Traceback (most recent call last):"):
        j = i
        while j < len(lines) and not lines[j].startswith("[exit"):
            j += 1
        out += [f"Traceback (most recent call last): ... ({j - i - 1} lines)", lines[j - 1]]
        i = j
        continue
    out.append(line)
    i += 1
print("\n".join(out))
EOF
echo "transcript: $OUT; as docs/nightly.md shows it: $D/trimmed.txt"

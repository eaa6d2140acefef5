#!/usr/bin/env bash
# docs/report.png from a short real run, as the README's "Report" section describes it:
# `scoring demo` on SQLite, a `scoring worker` on the local Redis (`make services`) fed live
# requests (a few with bad inputs or a 1 ms deadline), a 3,000-row `scoring bulk` run,
# demo v2 registered, validated and promoted while the worker runs, a second burst whose
# size features grow by 30%, `scoring feedback` with 40% of the true labels, `scoring drift`
# for both versions, then `scoring report --since 1h` opened in headless Chromium.
# Usage: docs/report_run.sh [OUT.png]   (default docs/report.png; about three minutes)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
out=$(realpath -m "${1:-docs/report.png}")
PY=$root/.venv/bin/python
SCORING=$root/.venv/bin/scoring

make -s services >/dev/null
eval "$(make -s services-env)"
work=$(mktemp -d)
worker=
cleanup() {
  [ -n "$worker" ] && kill "$worker" 2>/dev/null && wait "$worker" || true
  rm -rf "$work"
}
trap cleanup EXIT
cd "$work"
export SCORING_DATABASE_URL="sqlite:///$work/scoring.db" SCORING_MODEL_STORE="$work/model-store"
export SCORING_REQUESTS_QUEUE="report-run-$$" SCORING_DEAD_LETTER_QUEUE="report-run-$$.dlq"

# JSON-lines requests (and their true labels) drawn from the demo data: BURST SEED SCALE.
requests() {
  "$PY" - "$@" <<'EOF'
import json, sys
from workers.runtime.models.demo.build import LABELS, sample_rows

burst, seed, scale = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
names, rows, labels = sample_rows(3000, seed)
size = [j for j, n in enumerate(names) if any(k in n for k in ("radius", "perimeter", "area"))]
rows[:, size] *= scale
with open(f"{burst}.jsonl", "w") as reqs, open(f"{burst}-labels.csv", "w") as truth:
    truth.write("request_id,label\n")
    for i, (row, label) in enumerate(zip(rows, labels)):
        rid = f"{burst}-{i}"
        inputs = {n: float(v) for n, v in zip(names, row)}
        request = {"request_id": rid, "model": "demo", "inputs": inputs}
        if i % 97 == 0:
            inputs[names[0]] = "n/a"  # scored as `invalid`, with the reason
        elif i % 89 == 0:
            request["deadline_ms"] = 1  # `expired` before it reaches the model
        reqs.write(json.dumps(request) + "\n")
        if i % 5 < 2:  # 40% of the labels come back
            truth.write(f"{rid},{LABELS[label]}\n")
EOF
}

# Wait (two minutes at most) for the worker to log $1.
logged() {
  for _ in $(seq 120); do
    grep -q "$1" worker.log && return 0
    kill -0 "$worker" 2>/dev/null || break
    sleep 1
  done
  tail -n 20 worker.log >&2
  echo "the worker never logged '$1'" >&2
  return 1
}

# Publish BURST.jsonl as live traffic: 100 requests at a time, a second apart.
trickle() {
  split -l 100 "$1.jsonl" "$1-part-"
  for part in "$1"-part-*; do
    "$SCORING" produce --redis --file "$part" >/dev/null
    sleep 1
  done
}

# Wait until the database holds at least $1 results.
results() {
  "$PY" - "$1" <<'EOF'
import sys, time
from sqlalchemy import text
from schemas.db import make_engine
from schemas.settings import Settings

engine, want = make_engine(Settings().database.url.get_secret_value()), int(sys.argv[1])
for _ in range(600):
    with engine.connect() as conn:
        if conn.execute(text("SELECT count(*) FROM score_results")).scalar_one() >= want:
            sys.exit(0)
    time.sleep(0.5)
sys.exit(f"fewer than {want} results after 5 minutes")
EOF
}

"$SCORING" demo --rows 4000
"$SCORING" worker --cpu 1 >worker.log 2>&1 &
worker=$!
logged "warmed up"
requests live 1 1.0
trickle live
results 7000
"$PY" -c "from workers.runtime.models.demo.build import write_csv; write_csv('bulk.csv', 3000, seed=2)"
"$SCORING" bulk bulk.csv --model demo --label-column label --wait
"$PY" -c "from pathlib import Path; from workers.runtime.models.demo.build import build_artifact; build_artifact(Path('v2'), seed=1)"
"$SCORING" models register demo v2
"$SCORING" models validate demo 2 --backend eager --no-timing
"$SCORING" models promote demo 2
logged "demo v2 warmed up"
sleep 20
requests shifted 3 1.3
trickle shifted
results 13000
"$SCORING" feedback live-labels.csv
"$SCORING" feedback shifted-labels.csv
"$SCORING" drift demo --version 1 || true  # exit 1 means drift: that is the point here
"$SCORING" drift demo --version 2 || true
"$SCORING" report --since 1h --out report.html

"$PY" - report.html "$out" <<'EOF'
import shutil, sys
from pathlib import Path
from playwright.sync_api import sync_playwright

with sync_playwright() as p:
    browser = p.chromium.launch(executable_path=shutil.which("chromium"), args=["--no-sandbox"])
    page = browser.new_page(viewport={"width": 1100, "height": 900})
    page.goto(Path(sys.argv[1]).resolve().as_uri())
    page.wait_for_load_state("load")
    page.screenshot(path=sys.argv[2], full_page=True)
    browser.close()
print(f"wrote {sys.argv[2]}")
EOF

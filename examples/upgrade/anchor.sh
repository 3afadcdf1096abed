#!/usr/bin/env bash
# The anchor experiment: does keeping v1's features on the gallery images (--anchor) let the
# more-classes update pass the gate, and what does it cost in new/new accuracy?
# Usage: bash examples/upgrade/anchor.sh [WORK_DIR]   (the data and v1 of run.sh, reused if there)
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
WORK="${1:-${WORK:-upgrade-example}}"
PY="${PYTHON:-python}"
CK="${COMPATKIT:-compatkit}"
EPOCHS1="${EPOCHS1:-10}"
EPOCHS2="${EPOCHS2:-5}"
WEIGHTS="${ANCHOR_WEIGHTS:-1 5 20}"     # weights of the distillation form
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
D="$WORK/data"; M="$WORK/models"; C="$WORK/checks"
mkdir -p "$M" "$C"
[ -d "$D/query" ] || "$PY" "$HERE/export_fashion.py" "$D" --v1 400 --v2 800 --query 200 --gallery 300
[ -f "$M/v1.pt" ] || "$CK" train "$D/v1" --out "$M/v1.pt" --epochs "$EPOCHS1" --val-fraction 0.1 --quiet
gate() {  # name
  local rc=0
  "$CK" check "$M/v1.pt" "$M/$1.pt" --query "$D/query" --gallery "$D/gallery" --device cpu \
    --quiet --json > "$C/$1.json" || rc=$?
  [ "$rc" -le 1 ] || exit "$rc"
  echo "compatkit check v1 -> $1: exit $rc"
}
[ -f "$M/classes-hoc.pt" ] || "$CK" train "$D/v2-classes" --old "$M/v1.pt" --method hoc \
  --out "$M/classes-hoc.pt" --epochs "$EPOCHS2" --quiet --force
gate classes-hoc
# HOC's own old-model term (its contrastive loss, each anchor its own class), weight 1
"$CK" train "$D/v2-classes" --old "$M/v1.pt" --method hoc --anchor "$D/gallery" \
  --anchor-term method --out "$M/classes-hoc-anchor1.pt" --epochs "$EPOCHS2" --quiet --force
gate classes-hoc-anchor1
# distillation to v1's feature of each anchor (the default term), at each weight
for w in $WEIGHTS; do
  "$CK" train "$D/v2-classes" --old "$M/v1.pt" --method hoc --anchor "$D/gallery" \
    --anchor-term fd --anchor-weight "$w" --out "$M/classes-hoc-anchorfd$w.pt" \
    --epochs "$EPOCHS2" --quiet --force
  gate "classes-hoc-anchorfd$w"
done
"$PY" "$HERE/summarize.py" "$C"

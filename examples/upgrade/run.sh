#!/usr/bin/env bash
# Upgrading a deployed embedding model without re-indexing, end to end on Fashion-MNIST.
# Usage: bash examples/upgrade/run.sh [WORK_DIR]      (see examples/upgrade/README.md)
#
# 1. Fashion-MNIST exported to PNG image folders (export_fashion.py).
# 2. v1: trained on 5 classes (T-shirt, Trouser, Pullover, Dress, Coat); the service
#    embeds its gallery (all 10 classes) with it: `compatkit index build`.
# 3. Candidates for v2, each trained against the frozen v1:
#      more data  (the same 5 classes, 2x the images)     with HOC and ER (plain cross-entropy)
#      more classes (+ Sandal, Shirt, Sneaker, Bag, Ankle boot) with the same methods
#      and HOC with a different weight of its cross-entropy term (lambda).
# 4. `compatkit check` on each: the 2x2 matrix and the verdict (exit 0 compatible, 1 not).
# 5. The backfill curves of the more-classes update (`compatkit index curve`), one partial
#    backfill of the classes that moved (`compatkit index backfill --policy class`) and a
#    search of the mixed gallery.
# Every size below can be set from the environment (the test runs it small).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
WORK="${1:-${WORK:-upgrade-example}}"
PY="${PYTHON:-python}"
CK="${COMPATKIT:-compatkit}"
V1_PER_CLASS="${V1_PER_CLASS:-400}"      # training images per class of v1 (and of new classes)
V2_PER_CLASS="${V2_PER_CLASS:-800}"      # per old class in the more-data update (2x v1)
QUERY_PER_CLASS="${QUERY_PER_CLASS:-200}"
GALLERY_PER_CLASS="${GALLERY_PER_CLASS:-300}"
EPOCHS1="${EPOCHS1:-10}"                 # v1, from scratch
EPOCHS2="${EPOCHS2:-5}"                  # each v2, from v1's weights
METHODS="${METHODS:-hoc er}"             # add cores (CE on the d-Simplex): METHODS="hoc cores er"
LAMBDAS="${LAMBDAS:-0.5}"                # extra HOC weights of L_CE to try (default 0.1 is always run)
CURVE_STEPS="${CURVE_STEPS:-10}"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
THREADS="${THREADS:-$OMP_NUM_THREADS}"

D="$WORK/data"
M="$WORK/models"
C="$WORK/checks"
mkdir -p "$M" "$C"
T0=$SECONDS
step() { printf '\n== %s (%ds)\n' "$*" "$((SECONDS - T0))"; }

step "export Fashion-MNIST to image folders"
if [ ! -d "$D/query" ]; then
  "$PY" "$HERE/export_fashion.py" "$D" --v1 "$V1_PER_CLASS" --v2 "$V2_PER_CLASS" \
    --query "$QUERY_PER_CLASS" --gallery "$GALLERY_PER_CLASS"
fi

step "v1: the deployed model, 5 classes"
"$CK" train "$D/v1" --out "$M/v1.pt" --epochs "$EPOCHS1" --val-fraction 0.1 \
  --threads "$THREADS" --quiet --force

step "the service embeds its gallery with v1 (a LanceDB database, the default engine)"
rm -rf "$WORK/index"
"$CK" index build "$M/v1.pt" "$D/gallery" --out "$WORK/index" --device cpu

# One candidate: train it against v1, then run the gate (exit 1 = not compatible, not an error).
candidate() {  # name data method [extra train options...]
  local name="$1" data="$2" method="$3"
  shift 3
  step "v2 $name: $method on $data"
  "$CK" train "$D/$data" --old "$M/v1.pt" --method "$method" --out "$M/$name.pt" \
    --epochs "$EPOCHS2" --threads "$THREADS" --quiet --force "$@"
  local rc=0
  "$CK" check "$M/v1.pt" "$M/$name.pt" --query "$D/query" --gallery "$D/gallery" \
    --device cpu --quiet --json --record "$WORK/index" > "$C/$name.json" || rc=$?
  [ "$rc" -le 1 ] || exit "$rc"
  echo "compatkit check v1 -> $name: exit $rc"
}

for what in data classes; do
  for method in $METHODS; do
    candidate "$what-$method" "v2-$what" "$method"
  done
done
for lam in $LAMBDAS; do
  candidate "classes-hoc-lam$lam" v2-classes hoc --set "hoc.lam=$lam"
done

step "the gate's verdicts"
"$PY" "$HERE/summarize.py" "$C" | tee "$WORK/summary.md"

step "backfill curves of the more-classes update (HOC and ER)"
for m in hoc er; do
  "$CK" index curve "$WORK/index" "$D/query" --old "$M/v1.pt" --new "$M/classes-$m.pt" \
    --steps "$CURVE_STEPS" --out "$WORK/curve-classes-$m" --device cpu
done

step "a partial backfill: the 30 % of the gallery whose classes moved most, with HOC's v2"
"$CK" index backfill "$WORK/index" --model "$M/classes-hoc.pt" --fraction 0.3 --policy class \
  --device cpu
"$CK" index info "$WORK/index"
step "search the mixed gallery with HOC's v2 (refused unless its recorded check said compatible)"
rc=0
"$CK" index search "$WORK/index" "$D/query" --model "$M/classes-hoc.pt" --show 0 --device cpu || rc=$?
[ "$rc" -le 2 ] || exit "$rc"
step "the same search with --force: what the mixed gallery serves"
"$CK" index search "$WORK/index" "$D/query" --model "$M/classes-hoc.pt" --show 0 --device cpu --force

step "done in $((SECONDS - T0)) s; results under $WORK"

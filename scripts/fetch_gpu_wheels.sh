#!/usr/bin/env bash
# Download the wheels scripts/gpu_check.sh installs offline on the lent GPU machine (Python 3.12, no
# network there) into a git-ignored folder, default .gpu_wheels/ (a package that publishes only a source
# archive is built into a wheel here, and must come out pure Python). The list, with why each is needed, is
# scripts/gpu_check/wheels.txt. Run it here (a registry is reachable); a `run` call then names the folder
# in its `carry` list. Anything in the folder that is not on the list is removed, so the carried set is
# exactly the list. Fails when the wheels and the tracked tree together exceed 40 MiB.
#   bash scripts/fetch_gpu_wheels.sh [DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
DIR="${1:-.gpu_wheels}"
PY="${PY:-python3}"
LIST=scripts/gpu_check/wheels.txt
LIMIT_MIB=40
mkdir -p "$DIR"
mapfile -t REQS < <(sed -e 's/#.*//' -e 's/[[:space:]]//g' "$LIST" | grep -v '^$')
[ "${#REQS[@]}" -gt 0 ] || { echo "no wheels listed in $LIST" >&2; exit 1; }

want=()
for req in "${REQS[@]}"; do
  name="${req%%==*}"; version="${req#*==}"
  # wheel file names normalise the project name: runs of -_. become _
  norm="$(echo "$name" | tr 'A-Z' 'a-z' | sed -E 's/[-_.]+/_/g')"
  found=$(find "$DIR" -maxdepth 1 -iname "${norm}-${version}-*.whl" | head -n 1)
  if [ -z "$found" ]; then
    # The device: CPython 3.12 on x86-64 Linux; --only-binary so nothing needs building there.
    "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
      --platform any -d "$DIR" "$req" 2>/dev/null \
    || { # no wheel published (pykeops, keopscore): build one from the source archive, pure Python only
      "$PY" -m pip wheel -q --no-deps --no-binary=:all: -w "$DIR" "$req"
      built=$(find "$DIR" -maxdepth 1 -iname "${norm}-${version}-*.whl" | head -n 1)
      case "$built" in *-py3-none-any.whl) ;; *) echo "$req: built ${built:-no wheel}, not a pure-Python one" >&2
                                                rm -f "$built"; exit 1;; esac; }
    found=$(find "$DIR" -maxdepth 1 -iname "${norm}-${version}-*.whl" | head -n 1)
    [ -n "$found" ] || { echo "pip downloaded no wheel named ${norm}-${version}-*.whl for $req" >&2; exit 1; }
  fi
  want+=("$(basename "$found")")
done
# Keep exactly the listed wheels: two versions of one package stop the whole offline install.
for f in "$DIR"/*; do
  keep=0
  for w in "${want[@]}"; do [ "$(basename "$f")" = "$w" ] && keep=1; done
  [ "$keep" = 1 ] || { echo "removing $f (not in $LIST)"; rm -rf "$f"; }
done

wheels_bytes=$(du -cb "$DIR"/*.whl | tail -n 1 | cut -f1)
tree_bytes=$(git ls-files -z | du -cb --files0-from=- 2>/dev/null | tail -n 1 | cut -f1)
total=$((wheels_bytes + tree_bytes))
for w in "${want[@]}"; do printf '  %-60s %8d KiB\n' "$w" $(( $(stat -c %s "$DIR/$w") / 1024 )); done
awk -v w="$wheels_bytes" -v t="$tree_bytes" -v l="$LIMIT_MIB" 'BEGIN {
  printf "wheels %.1f MiB + tracked tree %.1f MiB = %.1f MiB (limit %d MiB)\n", w / 1048576, t / 1048576, (w + t) / 1048576, l }'
[ "$total" -le $((LIMIT_MIB * 1048576)) ] || { echo "over the ${LIMIT_MIB} MiB limit" >&2; exit 1; }

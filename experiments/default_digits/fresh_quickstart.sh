#!/usr/bin/env bash
# The README's first command, exactly as written (its first ```bash block), in a clean clone of
# the committed HEAD with a fresh virtual environment; prints the wall-clock time and the end of
# the run's output. Usage, from the repository root: bash experiments/default_digits/fresh_quickstart.sh
set -u
top=$(git rev-parse --show-toplevel) || exit 2
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
git clone -q "$top" "$tmp/main" || exit 2
[ -d "$top/../shared" ] && ln -s "$(cd "$top/../shared" && pwd)" "$tmp/shared"
cd "$tmp/main" || exit 2
cmd=$(awk '/^```bash/{getline; print; exit}' README.md)
echo "running in a clean clone of $(git rev-parse --short HEAD): $cmd"
SECONDS=0
bash -c "$cmd" > "$tmp/out.log" 2>&1; rc=$?
echo "exit $rc after ${SECONDS}s"
grep -E "^step 1500/|finished at step" "$tmp/out.log"
ls runs/default/samples

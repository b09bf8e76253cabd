#!/usr/bin/env bash
# Builds the `zos` binary of the previous version (the release before the current on-disk formats)
# for the upgrade test (crates/zos/tests/upgrade.rs): a clean export of that commit in its own
# directory and its own target dir, so it never touches the working tree or the shared target.
# Cached by commit: target/zos-previous/<commit>/zos, and target/zos-previous/zos points at it.
#   scripts/build-previous.sh [COMMIT]   (default: the commit in scripts/previous-version)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
commit=${1:-$(tr -d '[:space:]' < scripts/previous-version)}
commit=$(git rev-parse --verify "$commit^{commit}")
out="$root/target/zos-previous/$commit"
if [ -x "$out/zos" ]; then
  echo "build-previous: cached $out/zos" >&2
else
  src="$out/src"
  rm -rf "$src"
  mkdir -p "$src"
  git archive "$commit" | tar -x -C "$src"
  start=$(date +%s)
  # Its own target dir: the old sources must not invalidate the shared one's fingerprints, and
  # a build lock on it does not block other cargo runs.
  (cd "$src" && CARGO_TARGET_DIR="$out/target" cargo build --locked -p zos --bin zos)
  cp "$out/target/debug/zos" "$out/zos.tmp"
  mv "$out/zos.tmp" "$out/zos"
  # The binary is the cache; the old build's several GB of artifacts are not kept.
  rm -rf "$out/target" "$src"
  echo "build-previous: built $commit in $(( $(date +%s) - start )) s" >&2
fi
ln -sfn "$out/zos" "$root/target/zos-previous/zos"
echo "$root/target/zos-previous/zos"

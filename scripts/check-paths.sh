#!/usr/bin/env bash
# Fails when a file of the repository reads or points at a path outside it, so that a clone
# on a fresh machine builds, tests and reads by itself. Run by scripts/test.sh.
#
# usage: scripts/check-paths.sh [ROOT]     (ROOT: the repository to check [this one])
#
# Looked at: every file under src tests benches scripts examples plugins docs conf loadtest
# deploy .ci, and README.md, Cargo.toml, Dockerfile (in a git checkout: tracked files and
# untracked ones git does not ignore; else every file there). Flagged, with file:line:
#   - absolute paths into the machine moat was developed on (/work/...), and the team's
#     notes outside the repository (shared/contract, ../shared);
#   - a relative path starting with ../ that leaves ROOT when resolved from the file's own
#     directory (include_str!, #[path], Markdown links), or that names nothing from there
#     and leaves ROOT when resolved from ROOT (paths relative to the working directory).
#     A path built on a variable ($DIR/.., $(dirname "$0")/..) is not resolved.
# A line that must hold such a string for another reason (a path-traversal attack in a
# test) says so with the marker `check-paths: not a path` on the same line.
set -euo pipefail
ROOT=$(cd "${1:-$(dirname "$0")/..}" && pwd)
cd "$ROOT"

places=(src tests benches scripts examples plugins docs conf loadtest deploy .ci README.md Cargo.toml Dockerfile)
present=()
for p in "${places[@]}"; do [[ -e $p ]] && present+=("$p"); done
if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    mapfile -t files < <(git ls-files --cached --others --exclude-standard -- "${present[@]}")
else
    mapfile -t files < <(find "${present[@]}" -type f | sort)
fi

outside() {  # outside ABSOLUTE-PATH: true when it is not ROOT or below it
    local r
    r=$(realpath -m -- "$1")
    [[ $r != "$ROOT" && $r != "$ROOT"/* ]]
}

bad=0
report() { printf '%s: %s\n' "$1" "$2" >&2; bad=1; }

for f in "${files[@]}"; do
    [[ -f $f && $f != scripts/check-paths.sh ]] || continue   # not the patterns above
    grep -Iq . "$f" 2>/dev/null || continue    # binary or empty
    dir=$(dirname "$f")
    while IFS= read -r hit; do
        line=${hit%%:*} text=${hit#*:}
        [[ $text == *"check-paths: not a path"* ]] && continue
        if [[ $text =~ /work/|shared/contract|\.\./shared ]]; then
            report "$f:$line" "names a path outside the repository: ${BASH_REMATCH[0]}"
            continue
        fi
        # Relative paths starting with ../ (not after a variable, `)` or `/`).
        while IFS= read -r tok; do
            [[ -n $tok ]] || continue
            if outside "$ROOT/$dir/$tok"; then
                report "$f:$line" "\`$tok\` leaves the repository (from $dir/)"
            elif [[ ! -e "$ROOT/$dir/$tok" ]] && outside "$ROOT/$tok"; then
                report "$f:$line" "\`$tok\` leaves the repository (from the repository root)"
            fi
        done < <(grep -oP '(?<![\w.$/})\\-])(?:\./)?(?:\.\./)+[\w.@+/-]*' <<<"$text" || true)
    done < <(grep -nE '/work/|shared/contract|\.\./' "$f" || true)
done

if ((bad)); then
    echo "check-paths: the repository must stand alone: point at files inside it (e.g. conf/reference.yaml)" >&2
    exit 1
fi
echo "check-paths: ok (${#files[@]} files, no path outside the repository)"

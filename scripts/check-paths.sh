#!/usr/bin/env bash
# Fails when a file of the repository reads or points at a path outside it, so that a clone
# on a fresh machine builds, tests and reads by itself. Run by scripts/test.sh.
#
# usage: scripts/check-paths.sh [ROOT]     (ROOT: the repository to check [this one])
#
# Looked at: every file of the repository (in a git checkout: the tracked files and the
# untracked ones git does not ignore; else every file under ROOT but .git/ and target/),
# whatever its directory or name (build.rs, .cargo/, a new top-level directory...).
# Flagged, with file:line:
#   - a symbolic link whose target resolves outside ROOT;
#   - the team's notes outside the repository (shared/contract, ../shared, /work/notes,
#     /work/shared);
#   - an absolute path (at the start of a word: not a URL's path) into a home directory
#     (/home/NAME/..., /Users/NAME/...), into this checkout (ROOT/...: a clone elsewhere has
#     another path), or to something that exists beside the checkout (ROOT's parent
#     directory holds NAME: other checkouts, notes; not when that parent is / or a temp
#     directory). A route path such as /work/orders names nothing there and is spared;
#   - a relative path starting with ../ that leaves ROOT when resolved from the file's own
#     directory (include_str!, #[path], Markdown links), or that names nothing from there
#     and leaves ROOT when resolved from ROOT (paths relative to the working directory);
#   - a path built on a base this script knows that leaves ROOT: env!("CARGO_MANIFEST_DIR")
#     (the crate's directory: the nearest one above the file with a Cargo.toml), $ROOT or
#     ${ROOT} (the repository), $(dirname "$0"), $(dirname "${BASH_SOURCE[0]}") and
#     ${BASH_SOURCE%/*} (the file's directory). Other variables ($DIR/..) are not resolved.
# A line that must hold such a string for another reason (a path-traversal attack in a
# test) says so with the marker `check-paths: not a path` on the same line.
set -euo pipefail
ROOT=$(cd "${1:-$(dirname "$0")/..}" && pwd -P)
PARENT=$(dirname "$ROOT")
cd "$ROOT"

if [[ $(git rev-parse --show-toplevel 2>/dev/null || true) == "$ROOT" ]]; then
    mapfile -d '' -t listed < <(git ls-files -z --cached --others --exclude-standard)
else
    mapfile -d '' -t listed < <(find . \( -path ./.git -o -path ./target \) -prune -o \
        \( -type f -o -type l \) -printf '%P\0' | sort -z)
fi

outside() {  # outside ABSOLUTE-PATH: true when it is not ROOT or below it
    local r
    r=$(realpath -m -- "$1")
    [[ $r != "$ROOT" && $r != "$ROOT"/* ]]
}

reports=()
report() { reports+=("$1: $2"); }

# ---- which files: symbolic links are judged by their target, text files by their lines ----
texts=()
for f in "${listed[@]}"; do
    [[ $f != scripts/check-paths.sh ]] || continue   # the patterns above
    if [[ -L $f ]]; then
        outside "$ROOT/$f" && report "$f" "symbolic link to \`$(readlink -- "$f")\`, outside the repository"
        continue
    fi
    [[ -f $f ]] && texts+=("$f")
done
((${#texts[@]})) && mapfile -d '' -t texts < <(printf '%s\0' "${texts[@]}" | xargs -0 grep -IlZ . -- || true)
count=${#texts[@]}

# grep_all PCRE: "file:line:match" for every match in the text files, lines carrying the
# marker left out.
declare -A marked=()
while IFS= read -r hit; do
    marked[$hit]=1
done < <(((count)) && printf '%s\0' "${texts[@]}" | xargs -0 grep -HnF 'check-paths: not a path' -- \
    | cut -d: -f1,2 || true)
grep_all() {
    local hit
    ((count)) || return 0
    while IFS= read -r hit; do
        local at=${hit%%:*} rest=${hit#*:}
        at="$at:${rest%%:*}"
        [[ -z ${marked[$at]:-} ]] && printf '%s\n' "$hit"
    done < <(printf '%s\0' "${texts[@]}" | xargs -0 grep -HnoP "$1" -- || true)
    return 0
}
declare -A flagged=()   # file:line already reported (one report per line)
flag() { [[ -n ${flagged[$1]:-} ]] && return 0; flagged[$1]=1; report "$1" "$2"; }

# split HIT into AT (file:line), FILE and TOKEN.
split() {
    FILE=${1%%:*} TOKEN=${1#*:}
    AT="$FILE:${TOKEN%%:*}" TOKEN=${TOKEN#*:}
}

# A path starts a word: not after a word character, `.`, `$`, `}`, `/`, `)`, `]`, `-`, `:`,
# `@` or `%` (so neither a URL's path nor a path built on a variable).
START='(?<![\w.$}/)\]:@%-])'

# ---- the team's notes ------------------------------------------------------------------------
while IFS= read -r hit; do
    split "$hit"
    flag "$AT" "names the team's notes outside the repository: $TOKEN"
done < <(grep_all "shared/contract|\.\./shared\b|$START/work/(?:notes|shared)\b")

# ---- absolute paths ----------------------------------------------------------------------------
tmp=${TMPDIR:-/tmp}
case $PARENT in
    / | /tmp | /var/tmp | "${tmp%/}") beside= ;;
    *) beside=$PARENT ;;
esac
while IFS= read -r hit; do
    split "$hit"
    tok=${TOKEN%%[.,:;]}
    if [[ $tok =~ ^/(home|Users)/[^/]+ ]]; then
        flag "$AT" "names a home directory: $tok"
    elif [[ $tok == "$ROOT" || $tok == "$ROOT"/* ]]; then
        flag "$AT" "an absolute path into this checkout (a clone elsewhere has another): $tok"
    elif [[ -n $beside && $tok == "$beside"/?* ]]; then
        first=${tok#"$beside"/}
        first=${first%%/*}
        [[ -e $beside/$first ]] && flag "$AT" "names $beside/$first, beside the repository: $tok"
    fi
done < <(grep_all "$START/[\w.@+-]+(?:/[\w.@+-]*)*")

# ---- relative paths starting with ../ ----------------------------------------------------------
while IFS= read -r hit; do
    split "$hit"
    dir=$(dirname "$FILE")
    if outside "$ROOT/$dir/$TOKEN"; then
        flag "$AT" "\`$TOKEN\` leaves the repository (from $dir/)"
    elif [[ ! -e "$ROOT/$dir/$TOKEN" ]] && outside "$ROOT/$TOKEN"; then
        flag "$AT" "\`$TOKEN\` leaves the repository (from the repository root)"
    fi
done < <(grep_all '(?<![\w.$/})\]-])(?:\./)?(?:\.\./)+[\w.@+/-]*')

# ---- paths built on a base this script knows ---------------------------------------------------
crate_dir() {  # crate_dir FILE: the nearest directory above FILE with a Cargo.toml (else ROOT)
    local d
    d=$(dirname "$1")
    while [[ $d != . && ! -f $d/Cargo.toml ]]; do d=$(dirname "$d"); done
    [[ $d == . ]] && echo "$ROOT" || echo "$ROOT/$d"
}
# CARGO_MANIFEST_DIR: on its line, every path holding a `..` step, from the crate's directory.
declare -A on_line=()
while IFS= read -r hit; do
    split "$hit"
    on_line[$AT]=1
done < <(grep_all 'CARGO_MANIFEST_DIR')
for at in "${!on_line[@]}"; do
    file=${at%:*} line=${at##*:}
    base=$(crate_dir "$file")
    while IFS= read -r tok; do
        [[ -n $tok ]] || continue
        outside "$base/${tok#/}" && flag "$at" "\`$tok\` after CARGO_MANIFEST_DIR leaves the repository"
    done < <(sed -n "${line}p" -- "$file" \
        | grep -oP '(?:[\w.@+-]*/)*(?<![^/"\x27(\s])\.\.(?=[/"\x27]|$)(?:/[\w.@+-]*)*' || true)
done
# $ROOT, ${ROOT} (the repository); $(dirname "$0") and friends (the file's directory).
while IFS= read -r hit; do
    split "$hit"
    if [[ $TOKEN =~ ^(\$ROOT|\$\{ROOT\})(/.*)$ ]]; then
        base=$ROOT
    elif [[ $TOKEN =~ ^(\$\(dirname[^\)]*\)|\$\{BASH_SOURCE[^\}]*\})(/.*)$ ]]; then
        base="$ROOT/$(dirname "$FILE")"
    else
        continue
    fi
    outside "$base${BASH_REMATCH[2]}" && flag "$AT" "\`$TOKEN\` leaves the repository"
done < <(grep_all '(?:\$ROOT\b|\$\{ROOT\}|\$\(dirname "?\$(?:0|\{BASH_SOURCE(?:\[0\])?\})"?\)|\$\{BASH_SOURCE(?:\[0\])?%/\*\})(?:/[\w.@+-]*)+')

if ((${#reports[@]})); then
    printf '%s\n' "${reports[@]}" | LC_ALL=C sort -t: -k1,1 -k2,2n >&2
    echo "check-paths: the repository must stand alone: point at files inside it (e.g. conf/reference.yaml)" >&2
    exit 1
fi
echo "check-paths: ok ($count files, no path outside the repository)"

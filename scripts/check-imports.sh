#!/usr/bin/env bash
# Fails when the top-level modules under src/ import each other in a cycle, so that the
# layering written in docs/architecture.md holds. Run by scripts/test.sh.
#
# usage: scripts/check-imports.sh [--graph]   (--graph: print every edge "a -> b" and exit 0)
#
# A top-level module is a file src/NAME.rs and/or the folder src/NAME/ (lib.rs and main.rs
# are not modules). Module A depends on module B when code under A names `crate::B` — in a
# `use` line, a `use crate::{...}` group (over several lines too), a path in code, or a
# `super::` path that climbs to the crate root (scripts/check-imports-edges.awk reads each
# file). Not counted: comments (doc links included), string literals and test code
# (`#[cfg(test)] mod NAME {` blocks, wherever they sit, and the files such a block includes
# with `#[path]`, named `*_tests.rs`, `*_prop.rs` or `proptests.rs`); tests may reach any
# module. `--self-test` checks that a cycle written as a `use crate::{...}` group is found.
set -euo pipefail
cd "$(dirname "$0")/.."

# --self-test: a copy of the tree with one cycle planted as a multi-line group import
# (util -> access_log, while access_log -> util) must fail.
if [[ ${1:-} == --self-test ]]; then
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' EXIT
    cp -r src scripts "$tmp/"
    util=src/util.rs; [[ -f $util ]] || util=src/util/mod.rs
    printf '%s\n' 'use crate::{' '    access_log::AccessLog,' '};' >>"$tmp/$util"
    if bash "$tmp/scripts/check-imports.sh" >/dev/null 2>&1; then
        echo "check-imports: self-test failed: a planted group-import cycle was not found" >&2
        exit 1
    fi
    echo "check-imports: self-test ok (a planted cycle is found)"
    exit 0
fi
aw=${EDGES_AWK:-$(dirname "$0")/check-imports-edges.awk}
edges=$(
    for f in $(find src -name '*.rs' | LC_ALL=C sort); do
        rel=${f#src/}; top=${rel%%/*}; top=${top%.rs}
        [[ $top == lib || $top == main ]] && continue
        case ${f##*/} in *_tests.rs | *_prop.rs | proptests.rs) continue ;; esac
        mods=${rel%.rs}; mods=${mods%/mod}; depth=$(awk -F/ '{print NF}' <<<"$mods")
        awk -v from="$top" -v depth="$depth" -f "$aw" "$f"
    done | LC_ALL=C sort -u
)
if [[ ${1:-} == --graph ]]; then
    printf '%s\n' "$edges"
    exit 0
fi

# Every cycle, found as the strongly connected components of the graph, listed with one
# path around each (Tarjan's algorithm, in awk).
cycles=$(printf '%s\n' "$edges" | awk '
    NF == 3 { adj[$1] = adj[$1] " " $3; node[$1] = 1; node[$3] = 1; edge[$1, $3] = 1 }
    function strong(v,    n, i, w, ws, comp, members) {
        index_[v] = low[v] = ++counter
        stack[++sp] = v; on[v] = 1
        n = split(adj[v], ws, " ")
        for (i = 1; i <= n; i++) {
            w = ws[i]
            if (!(w in index_)) { strong(w); if (low[w] < low[v]) low[v] = low[w] }
            else if (on[w] && index_[w] < low[v]) low[v] = index_[w]
        }
        if (low[v] == index_[v]) {
            members = ""; comp = 0
            do { w = stack[sp--]; on[w] = 0; members = w " " members; comp++ } while (w != v)
            if (comp > 1) print "cycle among: " members
        }
    }
    END { for (v in node) if (!(v in index_)) strong(v) }
')

if [[ -n $cycles ]]; then
    printf '%s\n' "$cycles" | LC_ALL=C sort >&2
    echo "check-imports: edges inside each cycle (module -> module it names):" >&2
    while read -r _ _ members; do
        for a in $members; do
            for b in $members; do
                grep -qx "$a -> $b" <<<"$edges" || continue
                # one place that makes the edge, to start from
                at=$(grep -rn --include='*.rs' "crate::$b\b" "src/$a.rs" "src/$a" 2>/dev/null \
                    | grep -v '^[^:]*:[0-9]*:[[:space:]]*//' | head -1 | cut -d: -f1,2 || true)
                echo "  $a -> $b${at:+ (e.g. $at)}" >&2
            done
        done
    done <<<"$(printf '%s\n' "$cycles")"
    echo "check-imports: top-level modules must not import each other in a cycle (see docs/architecture.md)" >&2
    exit 1
fi
echo "check-imports: ok ($(grep -c . <<<"$edges") edges between top-level modules, no cycle)"

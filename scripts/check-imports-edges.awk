# Edges "from -> to" of one file. Variables: from (top module), depth (module path length
# of the file: src/a.rs and src/a/mod.rs = 1, src/a/b.rs = 2, ...).
function emit(to) { if (to != "" && to != from && to != "self" && to != "super" && to != "crate") print from " -> " to }
# the first segment of every path inside a `{...}` group (nested groups included)
function group(s,    d, i, c, seg, start) {
    d = 0; start = 1
    for (i = 1; i <= length(s); i++) {
        c = substr(s, i, 1)
        if (c == "{") { d++; if (d == 1) start = 1; continue }
        if (c == "}") { d--; continue }
        if (d == 1 && start && c ~ /[a-z_]/) {
            seg = substr(s, i); match(seg, /^[a-z_0-9]+/); emit(substr(seg, 1, RLENGTH)); start = 0
        }
        if (d == 1 && c == ",") start = 1
    }
}
{
    line = $0
    gsub(/"([^"\\]|\\.)*"/, "\"\"", line)      # string literals
    gsub(/'(\\.|[^'\\])'/, "''", line)     # char literals
    sub(/\/\/.*/, "", line)                    # line comments
}
# test modules: skip to the closing brace (wherever the block sits in the file)
skip > 0 { n = gsub(/\{/, "{", line); m = gsub(/\}/, "}", line); skip += n - m; if (skip <= 0) skip = 0; next }
cfg_test && line ~ /^[[:space:]]*(pub(\([a-z]+\))? )?mod [a-z_0-9]+[[:space:]]*\{/ {
    cfg_test = 0; n = gsub(/\{/, "{", line); m = gsub(/\}/, "}", line); skip = n - m; next
}
line ~ /^[[:space:]]*#\[cfg\(test\)\][[:space:]]*$/ { cfg_test = 1; next }
line ~ /^[[:space:]]*#\[/ { next }                 # other attributes keep cfg_test
{ cfg_test = 0 }
# join a statement that spans lines (a `use` group) until its `;`
stmt != "" { stmt = stmt " " line; if (line !~ /;/) next; line = stmt; stmt = "" }
line ~ /(crate|super)::[[:space:]]*(\{|$)/ && line !~ /;/ { stmt = line; next }
{
    s = line
    while (match(s, /crate::[[:space:]]*(\{|[a-z_0-9]+)/)) {
        t = substr(s, RSTART, RLENGTH); rest = substr(s, RSTART + RLENGTH)
        if (t ~ /\{$/) { group("{" rest); s = rest; continue }
        sub(/crate::[[:space:]]*/, "", t); emit(t); s = rest
    }
    s = line
    while (match(s, /(super::[[:space:]]*)+(\{|[a-z_0-9]+)/)) {
        t = substr(s, RSTART, RLENGTH); rest = substr(s, RSTART + RLENGTH)
        # a super:: not preceded by an identifier char (not part of a longer path)
        pre = RSTART > 1 ? substr(s, RSTART - 1, 1) : " "
        if (pre ~ /[a-z_0-9:]/) { s = rest; continue }
        k = gsub(/super::/, "", t)
        gsub(/[[:space:]]/, "", t)
        if (k >= depth) { if (t == "{") group("{" rest); else emit(t) }
        s = rest
    }
}

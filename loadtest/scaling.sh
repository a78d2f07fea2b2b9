#!/usr/bin/env bash
# scaling.sh — moat's throughput and CPU per request for `server.threads: 1..N`, each
# instance pinned to as many physical cores as it has threads (one CPU of each: never two
# hyperthreads of one core), the load generator and the upstream on cores of their own;
# prints per-core efficiency and what 60,000 req/s would need. Cores are the ones this
# process may use (its affinity: a cpuset or taskset is honoured), grouped by `lscpu`.
#
# usage: loadtest/scaling.sh [--scenario NAME]... [--load-cpus K] [--max-threads N]
#          [--rounds R=3] [--duration D=10s] [--connections C=50] [--no-nginx] [--no-build] [--keep]
#   --scenario NAME  scenarios/NAME.yaml, an http scenario without Redis (repeatable;
#                    default: plain and full)
#   --load-cpus K    physical cores kept for oha and the upstream (all their CPUs): the last K
#                    [half the cores, at least 1]; moat with T threads runs on the first T
#   --max-threads N  measure threads 1..N [all the cores left: cores - K]
#   --connections C  oha connections per moat thread
#   --no-nginx       upstream is examples/upstream even when nginx is installed
#   --no-build       use the binaries already built (in CARGO_TARGET_DIR or target/, release)
#   --keep           keep the temp dir (configs, logs, oha JSON)
# Every instance (one per thread count) is started first; rounds then alternate between them,
# so slow drift of the machine spreads over all rows. See loadtest/README.md, "Scaling".
set -euo pipefail
source "$(dirname "$0")/lib.sh"

usage() { sed -n '8,20p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }
SCENARIOS=() LOAD_CPUS= MAX_THREADS= ROUNDS=3 DURATION=10s CONNS=50 USE_NGINX=1 BUILD=1
while [[ $# -gt 0 ]]; do
    case $1 in
        --scenario) [[ $# -ge 2 ]] || usage; SCENARIOS+=("$2"); shift 2 ;;
        --load-cpus) [[ $# -ge 2 && $2 =~ ^[1-9][0-9]*$ ]] || usage; LOAD_CPUS=$2; shift 2 ;;
        --max-threads) [[ $# -ge 2 && $2 =~ ^[1-9][0-9]*$ ]] || usage; MAX_THREADS=$2; shift 2 ;;
        --rounds) [[ $# -ge 2 && $2 =~ ^[1-9][0-9]*$ ]] || usage; ROUNDS=$2; shift 2 ;;
        --duration) [[ $# -ge 2 && $2 =~ ^[0-9]+(ms|s|m)$ ]] || usage; DURATION=$2; shift 2 ;;
        --connections) [[ $# -ge 2 && $2 =~ ^[1-9][0-9]*$ ]] || usage; CONNS=$2; shift 2 ;;
        --no-nginx) USE_NGINX=0; shift ;;
        --no-build) BUILD=0; shift ;;
        --keep) LT_KEEP=1; shift ;;
        *) usage ;;
    esac
done
[[ ${#SCENARIOS[@]} -gt 0 ]] || SCENARIOS=(plain full)
for s in "${SCENARIOS[@]}"; do
    f="$LT_DIR/scenarios/$s.yaml"
    [[ -f $f ]] || lt_die "no scenario $f"
    if grep -qE '\{\{(REDIS_URL|TLS_CERT)\}\}' "$f"; then
        lt_die "$s: scaling.sh measures http scenarios without Redis (use compare.sh for the others)"
    fi
    grep -qE '^  threads: 1$' "$f" || lt_die "$f: no '  threads: 1' line to vary"
done
command -v nginx >/dev/null 2>&1 || USE_NGINX=0

# ---- cores ----------------------------------------------------------------------------------
lt_cores
CORES=${#LT_CORES[@]}
LOAD_CPUS=${LOAD_CPUS:-$(( CORES / 2 > 0 ? CORES / 2 : 1 ))}
LEFT=$(( CORES - LOAD_CPUS )) LOAD_FIRST=$(( CORES - LOAD_CPUS ))
NOTES=()
[[ -z $LT_CORES_NOTE ]] || NOTES+=("$LT_CORES_NOTE")
if (( LEFT < 1 )); then
    LEFT=1 LOAD_FIRST=0
    NOTES+=("$CORES core(s), $LOAD_CPUS asked for the load: moat and the load generator share cores, so these numbers mean little")
fi
LOAD_SET=$(lt_cpu_list ${LT_CORES[@]:LOAD_FIRST})
# moat_cpus T: the first CPU of each of the first T cores, as a taskset list.
moat_cpus() { local c out=(); for c in "${LT_CORES[@]:0:$1}"; do out+=("${c%% *}"); done; lt_cpu_list "${out[@]}"; }
N=${MAX_THREADS:-$LEFT}
(( N <= LEFT )) || lt_die "--max-threads $N: only $LEFT core(s) are left for moat ($CORES, $LOAD_CPUS kept for the load)"
if (( N == 1 )); then
    NOTES+=("this machine has $CORES core(s) and the load generator keeps $LOAD_CPUS: moat gets 1 core, so only threads: 1 is measured here; scaling needs a machine with more cores (the one-core figures stand)")
fi
lt_log "$CORES physical cores: moat on CPUs $(moat_cpus "$N") (threads 1..$N, one CPU per core), oha and the upstream on CPUs $LOAD_SET"

lt_init
LT_OHA=$(lt_oha)
LT_OHA_CPU=$LOAD_SET
REL=$(lt_release_dir) LT_REL=$REL

# ---- build ----------------------------------------------------------------------------------
if (( BUILD )); then
    lt_log "building moat and examples/upstream (release)"
    (cd "$LT_ROOT" && cargo build --release --bin moat --example upstream) >"$LT_TMP/build.log" 2>&1 \
        || { tail -20 "$LT_TMP/build.log" >&2; lt_die "build failed"; }
fi
[[ -x "$REL/moat" ]] || lt_die "no $REL/moat (run without --no-build)"

# ---- upstream, then one moat per scenario and thread count ----------------------------------
lt_start_upstream "$LOAD_SET" "$USE_NGINX" "$LOAD_CPUS"
TARGETS=()
declare -A URL=() PID=() SCEN=() THREADS=()
for s in "${SCENARIOS[@]}"; do
    for ((t = 1; t <= N; t++)); do
        name="$s-t$t" port=$(lt_free_port) admin=$(lt_free_port) run="$LT_TMP/$name"
        mkdir -p "$run"
        lt_render_scenario "$s" "$run/moat.yaml" "$port" "$admin" "$LT_UP_PORT" "$run"
        sed -i "s/^  threads: 1$/  threads: $t/" "$run/moat.yaml"
        mapfile -t envs < <(lt_scenario_env "$s")
        LT_STOP_SIGNAL=INT lt_start "$name" "$(moat_cpus "$t")" env "${envs[@]}" "$REL/moat" run -c "$run/moat.yaml"
        PID[$name]=$LT_LAST_PID URL[$name]="http://127.0.0.1:$port/" SCEN[$name]=$s THREADS[$name]=$t
        mapfile -t lines < <(lt_scenario_headers "$s" "$REL/moat")
        hdr=(); for l in "${lines[@]}"; do [[ -n $l ]] && hdr+=(-H "$l"); done
        lt_wait_http "${URL[$name]}" 200 200 "${PID[$name]}" "${hdr[@]}" \
            || { tail -5 "$LT_TMP/$name.log" >&2; lt_die "$name did not answer 200"; }
        TARGETS+=("$name")
    done
done

# ---- rounds ---------------------------------------------------------------------------------
RESULTS="$LT_TMP/results.tsv"
: >"$RESULTS"
run_one() {  # NAME ROUND DURATION: one oha run; appends "name round rps responses errors ticks start end"
    local name=$1 round=$2 dur=$3 json="$LT_TMP/oha-$1-$2.json" lines=() hdr=() l t0 t1 s0 s1 r
    mapfile -t lines < <(lt_scenario_headers "${SCEN[$name]}" "$REL/moat")
    for l in "${lines[@]}"; do [[ -n $l ]] && hdr+=(-H "$l"); done
    t0=$(lt_cpu_ticks "${PID[$name]}") s0=$EPOCHREALTIME
    lt_run_oha "$json" "${URL[$name]}" "$dur" "$(( CONNS * THREADS[$name] ))" "${hdr[@]}" \
        || { lt_log "oha failed against $name"; return 0; }
    t1=$(lt_cpu_ticks "${PID[$name]}") s1=$EPOCHREALTIME
    (( round > 0 )) || return 0
    r=$(lt_parse_oha "$json")
    read -r rps _ _ _ n err <<<"$r"
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$name" "$round" "$rps" "$n" "$err" "$((t1 - t0))" \
        "$s0" "$s1" >>"$RESULTS"
    lt_log "round $round $name: $rps req/s, $n responses, $err errors"
}
lt_log "warm-up (2s each): ${TARGETS[*]}"
for t in "${TARGETS[@]}"; do run_one "$t" 0 2s; done
for ((r = 1; r <= ROUNDS; r++)); do
    for t in "${TARGETS[@]}"; do run_one "$t" "$r" "$DURATION"; done
done

# ---- table ----------------------------------------------------------------------------------
echo
echo "$CORES physical cores; moat with T threads pinned to the first CPU of T cores ($(moat_cpus "$N") for $N); oha ($CONNS connections per thread) and the upstream, $LT_UP_KIND, on CPUs $LOAD_SET"
echo "$ROUNDS round(s) x $DURATION per row, alternating; req/s = median of rounds; CPU = moat's CPU time / responses"
python3 - "$RESULTS" "$(getconf CLK_TCK)" <<'EOF'
import statistics, sys
from collections import defaultdict
path, tck = sys.argv[1], float(sys.argv[2])
rows = defaultdict(list)
for line in open(path):
    name, rnd, rps, n, err, ticks, t0, t1 = line.split("\t")
    rows[name].append((float(rps), int(n), int(err), int(ticks), float(t1) - float(t0)))
by_scenario = defaultdict(dict)
for name, rs in rows.items():
    scen, t = name.rsplit("-t", 1)
    by_scenario[scen][int(t)] = rs
cols = ["threads", "req/s", "CPU us/req", "cores busy", "req/s per busy core", "per-core eff.", "errors"]
for scen, by_t in by_scenario.items():
    print(f"\nscenario {scen}")
    print("  ".join(f"{c:>19}" if i else f"{c:>7}" for i, c in enumerate(cols)))
    base = None
    best = None
    for t in sorted(by_t):
        rs = by_t[t]
        rps = statistics.median(r[0] for r in rs)
        n = sum(r[1] for r in rs)
        err = sum(r[2] for r in rs)
        cpu_s = sum(r[3] for r in rs) / tck
        wall = sum(r[4] for r in rs)
        us = cpu_s / n * 1e6 if n else float("nan")
        busy = cpu_s / wall if wall else float("nan")
        per_core = n / cpu_s if cpu_s else float("nan")
        if base is None:
            base = rps
        eff = (rps / t) / base if base else float("nan")
        best = (t, per_core)
        print("  ".join([f"{t:>7}", f"{rps:>19,.0f}", f"{us:>19.1f}", f"{busy:>19.2f}",
                         f"{per_core:>19,.0f}", f"{eff:>19.2f}", f"{err:>19}"]))
    if best and best[1] == best[1] and best[1] > 0:
        t, per_core = best
        print(f"  derived: 60,000 req/s of '{scen}' needs about {60000 / per_core:.1f} busy cores "
              f"(60,000 / {per_core:,.0f} req/s per busy core at threads: {t}; assumes that "
              f"per-core rate holds at that size and the load generator is not the limit)")
print("\nper-core eff. = (req/s / threads) / (req/s at threads: 1): 1.00 = linear scaling. "
      "cores busy = moat's CPU time / wall time.")
EOF
for n in "${NOTES[@]}"; do echo "note: $n"; done

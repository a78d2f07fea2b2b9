#!/usr/bin/env python3
"""Print compare.sh's table from its raw files (run by compare.sh; usable on kept files).

usage: report.py throughput|latency RESULTS.tsv TARGETS.tsv CLK_TCK

RESULTS.tsv: name round rps p50_ms p99_ms p999_ms responses errors cpu_ticks (one line per
measured round). TARGETS.tsv: name kind variant peak_rss_kib, kind = upstream|bare|nginx|moat,
variant = http|tls|h2 (what the client speaks). Per name: req/s and percentiles are the
median over the rounds, errors the sum, CPU the proxy's total CPU time over its total
responses. Ratios use the bare (or nginx) row of the same variant: moat-tls against
bare-tls, moat-h2 against bare-h2, everything else against bare.

latency: what each target adds over the upstream loaded directly is taken round by round
(this round's percentile minus the upstream's in the same round, so a slow stretch of the
machine hits both), then given as the median over the rounds and its spread (lowest and
highest round).
"""
import csv
import statistics
import sys


def load(results, targets, tck):
    rows = list(csv.DictReader(open(results), delimiter="\t"))
    meta = {}
    for line in open(targets):
        if line.strip():
            name, kind, variant, rss = line.rstrip("\n").split("\t")
            meta[name] = dict(kind=kind, variant=variant, rss=int(rss or 0) / 1024)
    stats = {}
    for name in dict.fromkeys(r["name"] for r in rows):
        rs = [r for r in rows if r["name"] == name]
        med = lambda k: statistics.median(float(r[k]) for r in rs)
        resp = sum(int(r["responses"]) for r in rs)
        ticks = sum(int(r["cpu_ticks"]) for r in rs)
        m = meta.get(name, dict(kind="moat", variant="http", rss=0.0))
        stats[name] = dict(m, rps=med("rps"), p50=med("p50_ms"), p99=med("p99_ms"),
                           p999=med("p999_ms"), err=sum(int(r["errors"]) for r in rs),
                           cpu=ticks * 1e6 / tck / resp if resp else float("nan"),
                           rounds={r["round"]: r for r in rs})
    return stats


def reference(stats, kind, variant):
    """The row of `kind` (bare/nginx/upstream) that `variant` rows are compared with."""
    for s in stats.values():
        if s["kind"] == kind and s["variant"] == variant:
            return s
    return None


def ratio(s, base, key):
    if base is None or not base[key] or base[key] != base[key]:
        return "-"
    return f"{s[key] / base[key]:.2f}"


def throughput(stats):
    hdr = ("name", "req/s", "p50 ms", "p99 ms", "errors", "CPU us/req", "peak RSS MiB",
           "rps/bare", "CPU/bare", "rps/nginx")
    fmt = "{:<19} {:>9} {:>7} {:>7} {:>7} {:>10} {:>12} {:>8} {:>8} {:>9}"
    print(fmt.format(*hdr))
    for name, s in stats.items():
        bare = reference(stats, "bare", s["variant"])
        nginx = reference(stats, "nginx", s["variant"])
        print(fmt.format(name, f"{s['rps']:.0f}", f"{s['p50']:.3f}", f"{s['p99']:.3f}", s["err"],
                         f"{s['cpu']:.1f}", f"{s['rss']:.1f}", ratio(s, bare, "rps"),
                         ratio(s, bare, "cpu"), ratio(s, nginx, "rps")))


def added(s, direct, key):
    """`s`'s percentile `key` minus the upstream's, round by round: "median [low..high]"."""
    if not direct or s is direct:
        return "-"
    diffs = [float(r[key]) - float(direct["rounds"][n][key])
             for n, r in s["rounds"].items() if n in direct["rounds"]]
    if not diffs:
        return "-"
    if len(diffs) == 1:
        return f"{diffs[0]:+.3f}"
    return f"{statistics.median(diffs):+.3f} [{min(diffs):+.2f}..{max(diffs):+.2f}]"


def latency(stats):
    direct = reference(stats, "upstream", "http")
    hdr = ("name", "req/s", "p50 ms", "p99 ms", "p99.9 ms", "errors", "CPU us/req",
           "+p50 ms", "+p99 ms", "+p99.9 ms")
    fmt = "{:<19} {:>8} {:>7} {:>7} {:>8} {:>7} {:>10} {:>22} {:>22} {:>22}"
    print(fmt.format(*hdr))
    for name, s in stats.items():
        cpu = "-" if s["kind"] == "upstream" else f"{s['cpu']:.1f}"
        print(fmt.format(name, f"{s['rps']:.0f}", f"{s['p50']:.3f}", f"{s['p99']:.3f}",
                         f"{s['p999']:.3f}", s["err"], cpu, added(s, direct, "p50_ms"),
                         added(s, direct, "p99_ms"), added(s, direct, "p999_ms")))


def main():
    if len(sys.argv) != 5 or sys.argv[1] not in ("throughput", "latency"):
        sys.exit(__doc__)
    stats = load(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    (throughput if sys.argv[1] == "throughput" else latency)(stats)


if __name__ == "__main__":
    main()

"""bench/peers/run.sh's report: the side-by-side table, the sweep and the
data for plot.gp, from results.tsv, sweep.tsv, sigil-bench.txt and
machine.txt in the output folder (argv[1]). Standard library only."""

import re
import sys
from pathlib import Path

out = Path(sys.argv[1])
COLUMNS = [
    "name", "label", "alg", "ok", "bad", "socket_errors", "rps", "p50", "p99",
    "cpu_s", "rss_kib", "hwm_kib", "startup_s", "warm", "load1",
]
rows = []
for line in (out / "results.tsv").read_text().splitlines():
    row = dict(zip(COLUMNS, line.split("\t")))
    for key in ("rps", "p50", "p99", "cpu_s", "startup_s", "load1"):
        row[key] = float(row[key])
    for key in ("ok", "bad", "socket_errors", "rss_kib", "hwm_kib"):
        row[key] = int(row[key])
    row["per_cpu"] = row["ok"] / row["cpu_s"] if row["cpu_s"] > 0 else float("nan")
    rows.append(row)

sweep = {}
for line in (out / "sweep.tsv").read_text().splitlines():
    name, conc, rps, p50, p99, bad, sock = line.split("\t")
    sweep.setdefault(name, []).append((int(conc), float(rps), float(p50), float(p99)))

bench = (out / "sigil-bench.txt").read_text() if (out / "sigil-bench.txt").exists() else ""
floor = re.search(
    r"per core \(CPU\): floor = 1 / \(([\d.]+) µs signing \+ ([\d.]+) µs bare round trip\) = (\d+)/s; "
    r"token endpoint (\d+)/s = (\d+)% of the floor",
    bench,
)

sigil = next((r for r in rows if r["name"] == "sigil"), None)
by_name = {r["name"]: r for r in rows}
FLOOR_ROWS = ("floor-bare", "floor-sign")
lines = []
say = lines.append
say("```")
say((out / "machine.txt").read_text().rstrip())
say("```")
say("")
say("| server | alg | req/s | p50 ms | p99 ms | server CPU s | req per server-CPU-s | RSS MiB (peak) | startup s | warm-up | load avg (1 min) | Sigil ÷ it, req/s | Sigil ÷ it, per CPU-s |")
say("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: |")
for r in rows:
    ratio_rps = ratio_cpu = "–"
    if sigil and r["name"] in FLOOR_ROWS:
        # Not a peer: how close Sigil comes to it.
        ratio_rps = f"{100 * sigil['rps'] / r['rps']:.0f}%"
        ratio_cpu = f"{100 * sigil['per_cpu'] / r['per_cpu']:.0f}%"
    elif sigil and r is not sigil:
        ratio_rps = f"{sigil['rps'] / r['rps']:.1f}×"
        ratio_cpu = f"{sigil['per_cpu'] / r['per_cpu']:.1f}×"
    errors = "" if r["bad"] + r["socket_errors"] == 0 else f" ({r['bad']} bad, {r['socket_errors']} socket errors)"
    say(
        f"| {r['label']}{errors} | {r['alg']} | {r['rps']:,.0f} | {r['p50']:.2f} | {r['p99']:.2f} | {r['cpu_s']:.2f} "
        f"| {r['per_cpu']:,.0f} | {r['rss_kib'] / 1024:.1f} ({r['hwm_kib'] / 1024:.1f}) | {r['startup_s']:.2f} "
        f"| {r['warm']} | {r['load1']:.2f} | {ratio_rps} | {ratio_cpu} |"
    )
say("")
if floor:
    sign_us, http_us, floor_rate, bench_rate, bench_pct = floor.groups()
    say(
        f"Sigil's floor (`sigil-bench`, same run, DESIGN §9): 1 / ({sign_us} µs ES256 signature + {http_us} µs bare "
        f"round trip) = {int(floor_rate):,} per server-CPU-second; `sigil-bench`'s own in-process token endpoint: "
        f"{int(bench_rate):,}/s = {bench_pct}% of it."
    )
    if sigil:
        say(
            f"Sigil standalone under wrk above: {sigil['per_cpu']:,.0f} per server-CPU-second = "
            f"{100 * sigil['per_cpu'] / int(floor_rate):.0f}% of that floor."
        )
    bare = by_name.get("floor-bare")
    if bare and bare["per_cpu"] > 0:
        bare_us = 1e6 / bare["per_cpu"]
        wrk_floor = 1e6 / (float(sign_us) + bare_us)
        say("")
        say(
            f"The floor with its round trip measured by `wrk` like the servers (DESIGN §9, both halves in this run): "
            f"1 / ({sign_us} µs ES256 signature + {bare_us:.1f} µs bare round trip with a token-sized body) = "
            f"{wrk_floor:,.0f} per server-CPU-second"
            + (f"; Sigil = **{100 * sigil['per_cpu'] / wrk_floor:.0f}%** of it (target ≥ 75%)." if sigil else ".")
        )
    direct = by_name.get("floor-sign")
    if direct and sigil:
        say(
            f"Measured directly (one request doing both, under `wrk`): {direct['per_cpu']:,.0f} per "
            f"server-CPU-second; Sigil = {100 * sigil['per_cpu'] / direct['per_cpu']:.0f}% of it."
        )
else:
    say("(no floor: sigil-bench's output was not found or not understood)")
say("")
concs = sorted({c for points in sweep.values() for c, *_ in points})
say("Concurrency sweep (req/s, p99 ms):")
say("")
say("| server | " + " | ".join(f"c={c}" for c in concs) + " |")
say("| --- | " + " | ".join("---:" for _ in concs) + " |")
labels = {r["name"]: r["label"] for r in rows}
for name, points in sweep.items():
    by = {c: (rps, p99) for c, rps, _, p99 in points}
    cells = [f"{by[c][0]:,.0f}, {by[c][1]:.2f}" if c in by else "–" for c in concs]
    say(f"| {labels.get(name, name)} | " + " | ".join(cells) + " |")

text = "\n".join(lines) + "\n"
(out / "results.md").write_text(text)
print(text)

short = {
    "sigil": "Sigil",
    "floor-sign": "Floor (round trip + signature)",
    "hydra": "Hydra (default pbkdf2)",
    "hydra-pbkdf2-1": "Hydra (pbkdf2 x1)",
    "keycloak": "Keycloak",
}
blocks = []
for name, points in sweep.items():
    block = f'"{short.get(name, name)}" rps p99\n'
    block += "".join(f"{conc} {rps} {p99}\n" for conc, rps, _, p99 in sorted(points))
    blocks.append(block)
# Blocks separated by two blank lines (gnuplot's index), none after the last.
(out / "sweep.dat").write_text("\n\n".join(blocks))

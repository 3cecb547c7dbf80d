#!/usr/bin/env python3
"""Generated tokens' weight traffic as a fraction of memory bandwidth, measured in pairs.

This machine's memory bandwidth changes state within minutes (about 45 GB/s or about 70 GB/s
with two threads here), sometimes within one `bench` run, so a bandwidth measured once after
the runs (`bench --bandwidth-mib`) can belong to the other state. Here each round measures the
bandwidth (`membw`) right before and right after one `bench` run, and keeps the round only when
the two agree within 8%: the fraction is the run's weight GB/s over their mean. Rounds are
grouped by state. Each run also shows `membw`'s core-to-core round trip before and after:
on this VM it was 360-430 ns in the fast state (the two vCPUs on different dies) and 50-190
ns in the slow one, so it tells which placement a run had. With several builds (folders holding `bench`; `membw` comes from the
first), each round runs them in turn, each between two bandwidth passes, so that they are
compared in the same states.

    cargo build -p elmroute-openelm --release --example bench --example membw
    python3 crates/openelm/benches/bound_fraction.py /tmp/openelm270m-q4_0.gguf 20 \\
        target/release/examples [/tmp/old-build ...]

Prints each run, then per build and state the number of runs kept and the median, lowest and
highest fraction.
"""
import json
import re
import statistics
import subprocess
import sys


def bandwidth(examples):
    """The two-thread read bandwidth (GB/s) and the core-to-core round trip (ns)."""
    out = subprocess.run([f"{examples}/membw", "--mib", "512", "--reps", "2"],
                         capture_output=True, text=True, check=True).stdout
    # "2 thread(s): 48.0 GB/s read (...)" and "core to core: 420 ns a cache line's round trip".
    gbps = float(re.search(r"2 thread\(s\): ([\d.]+) GB/s", out).group(1))
    trip = re.search(r"core to core: ([\d.]+) ns", out)
    return gbps, float(trip.group(1)) if trip else float("nan")


def generated(examples, gguf):
    out = subprocess.run([f"{examples}/bench", "--gguf", gguf, "--reps", "2", "--json"],
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])["gen_weight_gb_per_s"]


def main():
    if len(sys.argv) < 4:
        sys.exit(__doc__)
    gguf, rounds, builds = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
    membw = builds[0]
    states = ("slow (< 55 GB/s)", "fast (>= 55 GB/s)")
    kept = {(b, s): [] for b in builds for s in states}
    for r in range(rounds):
        before, trip = bandwidth(membw)
        for build in builds:
            gen = generated(build, gguf)
            after, next_trip = bandwidth(membw)
            mean = (before + after) / 2
            keep = abs(before - after) <= 0.08 * mean
            fraction = gen / mean
            print(f"round {r + 1} {build}: membw {before:.1f} / {after:.1f} GB/s "
                  f"(core-to-core round trip {trip:.0f} / {next_trip:.0f} ns), generation "
                  f"{gen:.1f} GB/s = {100 * fraction:.0f}%{'' if keep else ' (state changed: dropped)'}",
                  flush=True)
            if keep:
                kept[(build, states[1] if mean >= 55 else states[0])].append(fraction)
            before, trip = after, next_trip
    for (build, state), fractions in kept.items():
        if fractions:
            print(f"{build}, {state}: {len(fractions)} runs, median "
                  f"{100 * statistics.median(fractions):.0f}% (lowest {100 * min(fractions):.0f}%, "
                  f"highest {100 * max(fractions):.0f}%)")
        else:
            print(f"{build}, {state}: no runs kept")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""elmroute's OpenELM engine and llama.cpp on the very same GGUF files, side by side.

For each format, alternating engine by engine and round by round (so that load from other
processes hits both alike), runs:
  - llama.cpp: `llama_cpp_baseline.py --measure FILE` (llama-cpp-python, n_threads=2,
    n_batch=128; one warm-up, then `--reps` timed runs of prompt + greedy generation);
  - elmroute: `examples/bench --gguf FILE --json --reps N` (one warm-up, N timed runs).
Each engine runs in its own process, so peak RSS is per engine and format. Best run of each
round is kept; the table shows the median over rounds and the elmroute/llama.cpp ratio.

    cargo build -p elmroute-openelm --release --example bench
    python3 crates/openelm/benches/llama_cpp_baseline.py --dtypes q8_0,q4_0   # makes the files
    /tmp/llamavenv/bin/python crates/openelm/benches/side_by_side.py \
        --bench target/release/examples/bench --formats q8_0,q4_0 --rounds 3

Prints the 1-minute load average before and after; compare only runs on an idle machine.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def loadavg():
    with open("/proc/loadavg") as f:
        return f.read().split()[0]


def llama(path, reps, prompt, gen):
    r = subprocess.run([sys.executable, os.path.join(HERE, "llama_cpp_baseline.py"), "--measure", path,
                        "--reps", str(reps), "--prompt", str(prompt), "--gen", str(gen)],
                       capture_output=True, text=True)
    line = [l for l in r.stdout.splitlines() if l.startswith("RESULT ")]
    if r.returncode != 0 or not line:
        raise SystemExit(f"llama.cpp failed on {path}: {r.stderr[-2000:]}")
    res = json.loads(line[0][7:])
    pp = max(p for p, _ in res["runs"])
    tg = max(t for _, t in res["runs"])
    return pp, tg, res["rss_mib"]


def ours(bench, path, reps, prompt, gen):
    r = subprocess.run([bench, "--gguf", path, "--json", "--reps", str(reps), "--prompt", str(prompt),
                        "--gen", str(gen)], capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"bench failed on {path}: {r.stderr[-2000:]}")
    res = json.loads(r.stdout.strip().splitlines()[-1])
    return res["prompt_tokens_per_s"], res["gen_tokens_per_s"], res["peak_rss_mib"], res["weight_bytes"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bench", required=True, help="path of the built `bench` example")
    ap.add_argument("--formats", default="q8_0,q4_0")
    ap.add_argument("--dir", default="/tmp")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--prompt", type=int, default=128)
    ap.add_argument("--gen", type=int, default=64)
    a = ap.parse_args()
    print(f"load average (1 min) before: {loadavg()}", flush=True)
    rows = []
    for fmt in a.formats.split(","):
        path = os.path.join(a.dir, f"openelm270m-{fmt}.gguf")
        l_runs, o_runs = [], []
        wbytes = 0
        for i in range(a.rounds):
            l_runs.append(llama(path, a.reps, a.prompt, a.gen))
            pp, tg, rss, wbytes = ours(a.bench, path, a.reps, a.prompt, a.gen)
            o_runs.append((pp, tg, rss))
            print(f"{fmt} round {i + 1}: llama.cpp {l_runs[-1][0]:.1f}/{l_runs[-1][1]:.1f} tok/s, "
                  f"elmroute {pp:.1f}/{tg:.1f} tok/s (prompt/generated), load {loadavg()}", flush=True)
        med = lambda runs, k: statistics.median(r[k] for r in runs)
        best = lambda runs, k: max(r[k] for r in runs)
        for eng, runs, wb in (("llama.cpp", l_runs, None), ("elmroute", o_runs, wbytes)):
            rows.append((fmt, eng, med(runs, 0), med(runs, 1), best(runs, 0), best(runs, 1),
                         max(r[2] for r in runs), wb))
    print(f"load average (1 min) after: {loadavg()}")
    print(f"\nOpenELM-270M random weights, same GGUF file per format, 2 threads, prompt {a.prompt}, "
          f"generate {a.gen}; {a.rounds} rounds (best of {a.reps} runs each): median and best round")
    print(f"{'format':<6} {'engine':<10} {'prompt tok/s':>17} {'gen tok/s':>15} {'peak RSS MiB':>12} "
          f"{'gen GB/s (best)':>15}")
    by = {}
    for fmt, eng, pp, tg, bpp, btg, rss, wb in rows:
        by[(fmt, eng)] = (pp, tg, bpp, btg)
        gbs = f"{wb * btg / 1e9:>15.1f}" if wb else f"{'':>15}"
        print(f"{fmt:<6} {eng:<10} {pp:>8.1f} / {bpp:>6.1f} {tg:>7.1f} / {btg:>5.1f} {rss:>12.0f} {gbs}")
    for fmt in a.formats.split(","):
        (lp, lt, lbp, lbt), (op, ot, obp, obt) = by[(fmt, "llama.cpp")], by[(fmt, "elmroute")]
        print(f"{fmt}: elmroute / llama.cpp = {op / lp:.2f}x prompt, {ot / lt:.2f}x generated (medians); "
              f"{obp / lbp:.2f}x, {obt / lbt:.2f}x (best rounds)")


if __name__ == "__main__":
    main()

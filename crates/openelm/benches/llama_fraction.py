#!/usr/bin/env python3
"""Both engines' generated tokens as a fraction of memory bandwidth, in the same states.

Like `bound_fraction.py` (whose bandwidth pass it uses), but each round runs llama.cpp
(`llama_cpp_baseline.py --measure`, llama-cpp-python, 2 threads) and then this engine's
`bench` on one GGUF file, with `membw` before, between and after; a round is kept when the
three bandwidths agree within 8%. Each engine's fraction counts the file's weight bytes
(every tensor of the GGUF, as llama.cpp reads them); this engine's also counts the bytes it
reads itself (`bench`'s `weight_bytes`), which differ when it holds a tensor in another
type (a Q6_K output projection as Q8_0 on a CPU without AVX2, where it has no Q6_K kernel).

    cargo build -p elmroute-openelm --release --example bench --example membw
    /tmp/llamavenv/bin/python crates/openelm/benches/llama_fraction.py \\
        /tmp/openelm270m-q4_0.gguf 20 target/release/examples

Needs the `gguf` package (it comes with llama-cpp-python's requirements) to sum the file's
tensor bytes. Prints each round, then per state the median fractions and llama.cpp's
generated tokens/s over this engine's.
"""
import json
import os
import statistics
import subprocess
import sys

from bound_fraction import bandwidth

HERE = os.path.dirname(os.path.abspath(__file__))


def file_bytes(gguf):
    from gguf import GGUFReader
    return sum(int(t.n_bytes) for t in GGUFReader(gguf).tensors)


def llama(gguf):
    out = subprocess.run([sys.executable, os.path.join(HERE, "llama_cpp_baseline.py"), "--measure",
                          gguf, "--reps", "2", "--prompt", "128", "--gen", "64"],
                         capture_output=True, text=True, check=True).stdout
    runs = json.loads([l for l in out.splitlines() if l.startswith("RESULT ")][0][7:])["runs"]
    return max(generated for _, generated in runs)


def ours(examples, gguf):
    out = subprocess.run([f"{examples}/bench", "--gguf", gguf, "--reps", "2", "--json"],
                         capture_output=True, text=True, check=True).stdout
    d = json.loads(out.strip().splitlines()[-1])
    return d["gen_tokens_per_s"], d["weight_bytes"]


def main():
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    gguf, rounds, examples = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    size = file_bytes(gguf)
    kept = {"slow (< 55 GB/s)": [], "fast (>= 55 GB/s)": []}
    for r in range(rounds):
        (b0, t0), l = bandwidth(examples), llama(gguf)
        (b1, t1), (o, own) = bandwidth(examples), ours(examples, gguf)
        b2, t2 = bandwidth(examples)
        keep = max(b0, b1, b2) <= 1.08 * min(b0, b1, b2)
        lf, of, oo = l * size / 1e9 / ((b0 + b1) / 2), o * size / 1e9 / ((b1 + b2) / 2), \
            o * own / 1e9 / ((b1 + b2) / 2)
        print(f"round {r + 1}: membw {b0:.1f} / {b1:.1f} / {b2:.1f} GB/s (core-to-core round trip "
              f"{t0:.0f} / {t1:.0f} / {t2:.0f} ns); llama.cpp {l:.1f} tok/s = {100 * lf:.0f}%; "
              f"elmroute {o:.1f} tok/s = {100 * of:.0f}% ({100 * oo:.0f}% of the {own / 1e6:.1f} MB "
              f"it reads){'' if keep else ' (state changed: dropped)'}", flush=True)
        if keep:
            kept[list(kept)[b1 >= 55]].append((lf, of, oo, l / o))
    print(f"file weight bytes {size / 1e6:.1f} MB")
    for state, rows in kept.items():
        if not rows:
            print(f"{state}: no runs kept")
            continue
        med = [statistics.median(r[i] for r in rows) for i in range(4)]
        print(f"{state}: {len(rows)} runs, median llama.cpp {100 * med[0]:.0f}%, elmroute "
              f"{100 * med[1]:.0f}% ({100 * med[2]:.0f}% of its own bytes); llama.cpp/elmroute "
              f"generated tok/s {med[3]:.2f}")


if __name__ == "__main__":
    main()

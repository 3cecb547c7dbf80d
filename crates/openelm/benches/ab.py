#!/usr/bin/env python3
"""Two builds of `examples/bench`, A and B, interleaved round by round on one GGUF file.

This machine's memory bandwidth changes state within minutes, so a change is judged by the
ratio B/A within each round (A then B, then B then A, ...), not by two separate runs. Each run
is `bench --gguf FILE --reps 2 [EXTRA...]`; the best of its two repetitions is kept.

    cp target/release/examples/bench /tmp/bench-a    # before the change
    cargo build -p elmroute-openelm --release --example bench
    python3 crates/openelm/benches/ab.py /tmp/bench-a target/release/examples/bench \\
        /tmp/openelm270m-q4_0.gguf 8 [--prompt 1024 --gen 256]

Prints the median generated tokens/s of each, and the median, lowest and highest round ratio
B/A for generated tokens and the median for the prompt.
"""
import re
import statistics
import subprocess
import sys


def run(binary, gguf, extra):
    out = subprocess.run([binary, "--gguf", gguf, "--reps", "2"] + extra,
                         capture_output=True, text=True, check=True).stdout
    prompt = float(re.search(r"prompt:.*= ([\d.]+) tokens/s", out).group(1))
    generated = float(re.search(r"generated:.*= ([\d.]+) tokens/s", out).group(1))
    return prompt, generated


def main():
    if len(sys.argv) < 5:
        raise SystemExit(__doc__)
    a, b, gguf, rounds = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    extra = sys.argv[5:]
    ra, rb = [], []
    for i in range(rounds):
        order = [(a, ra), (b, rb)] if i % 2 == 0 else [(b, rb), (a, ra)]
        for binary, results in order:
            results.append(run(binary, gguf, extra))
    gen = [y[1] / x[1] for x, y in zip(ra, rb)]
    prompt = [y[0] / x[0] for x, y in zip(ra, rb)]
    print(f"{gguf.split('/')[-1]}: generated tok/s A {statistics.median(x[1] for x in ra):.1f}, "
          f"B {statistics.median(x[1] for x in rb):.1f}; B/A generated median {statistics.median(gen):.3f} "
          f"(lowest {min(gen):.3f}, highest {max(gen):.3f}); B/A prompt median {statistics.median(prompt):.3f}")


if __name__ == "__main__":
    main()

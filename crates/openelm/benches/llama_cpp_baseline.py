#!/usr/bin/env python3
"""llama.cpp speed baseline for OpenELM-270M (random weights, real shapes).

Compares with the candle bench of crates/openelm (`--size 270M --prompt 128 --gen 64`).

How to run (no arguments needed; everything happens under /tmp):

    python3 crates/openelm/benches/llama_cpp_baseline.py

Steps it performs:
  1. If `llama_cpp` / `gguf` are not importable, it creates a venv at /tmp/llamavenv and runs
         CMAKE_ARGS="-DGGML_NATIVE=ON -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TESTS=OFF" \
         CMAKE_BUILD_PARALLEL_LEVEL=2 /tmp/llamavenv/bin/pip install -v llama-cpp-python gguf numpy --no-cache-dir
     (pip compiles llama.cpp from the llama-cpp-python source package; ~10 min on 2 cores),
     then re-executes itself with the venv's python.
  2. Writes OpenELM-270M GGUF files with the `gguf` package (general.architecture = "openelm",
     per-layer head-count / FFN-width arrays, random N(0, 0.02) weights, norms = 1.0):
       /tmp/openelm270m-f32.gguf  (all tensors F32)
       /tmp/openelm270m-f16.gguf  (matrices F16, norms F32)
       /tmp/openelm270m-bf16.gguf (made from the F32 file with llama_model_quantize, BF16; the
                                   build uses the AVX512_BF16 kernels when the CPU has them)
       /tmp/openelm270m-q8_0.gguf (made from the F16 file with llama_model_quantize, Q8_0)
       /tmp/openelm270m-q4_0.gguf (same, Q4_0; llama.cpp stores the tied token_embd as Q6_K)
       /tmp/openelm270m-q4_k.gguf (same, Q4_K_M)
     The elmroute bench loads these very files (`--gguf FILE`), so both engines run the same
     weights.
     The tokenizer.* key/values are copied from llama.cpp's models/ggml-vocab-llama-spm.gguf
     (32000-token llama SPM vocab); pass VOCAB_GGUF=/path to override the location.
  3. For each dtype, in a fresh subprocess (so peak RSS is per dtype): loads the model with
     llama_cpp.Llama(n_threads=2, n_ctx=max(512, prompt + gen), n_batch=128), does one
     untimed warm-up, then
     2 repetitions of: evaluate a 128-token prompt (prompt tok/s), then generate 64 tokens
     greedily one at a time (argmax of the logits, one eval per token; generated tok/s).
     Prints a table, plus peak RSS (resource.getrusage ru_maxrss).

Options: --dtypes f32,f16,bf16,q8_0,q4_0,q4_k   --reps 2   --prompt 128   --gen 64
"""
import argparse
import glob
import importlib.metadata
import json
import os
import resource
import subprocess
import sys
import time

VENV = "/tmp/llamavenv"
OUT_DIR = "/tmp"

# OpenELM-270M shapes
N_LAYER = 16
N_EMBD = 1280
HEAD_DIM = 64
Q_HEADS = [12] * 5 + [16] * 7 + [20] * 4
KV_HEADS = [3] * 5 + [4] * 7 + [5] * 4
FFN = [768, 1024, 1280, 1536, 1792, 2048, 2560, 2816, 3072, 3328, 3584, 3840, 4352, 4608, 4864, 5120]
VOCAB = 32000
CTX = 2048


def ensure_env():
    try:
        import llama_cpp  # noqa: F401
        import gguf  # noqa: F401
        return
    except ImportError:
        pass
    py = os.path.join(VENV, "bin", "python")
    if os.path.realpath(sys.executable) == os.path.realpath(py):
        raise SystemExit("llama_cpp/gguf still missing inside the venv; install failed?")
    if not os.path.exists(py):
        subprocess.check_call([sys.executable, "-m", "venv", VENV])
    env = dict(os.environ)
    env["CMAKE_ARGS"] = "-DGGML_NATIVE=ON -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TESTS=OFF"
    env["CMAKE_BUILD_PARALLEL_LEVEL"] = "2"
    subprocess.check_call([py, "-m", "pip", "install", "-v", "llama-cpp-python", "gguf", "numpy",
                           "--no-cache-dir"], env=env)
    os.execv(py, [py] + sys.argv)


def find_vocab():
    p = os.environ.get("VOCAB_GGUF")
    if p:
        return p
    cands = glob.glob("/tmp/ggml-vocab-llama-spm.gguf")
    cands += glob.glob(os.path.join(VENV, "lib", "python*", "site-packages", "**",
                                    "ggml-vocab-llama-spm.gguf"), recursive=True)
    cands += glob.glob("/tmp/pip-install-*/llama-cpp-python_*/vendor/llama.cpp/models/ggml-vocab-llama-spm.gguf")
    if not cands:
        raise SystemExit("ggml-vocab-llama-spm.gguf not found: extract it from the llama-cpp-python "
                         "source package (vendor/llama.cpp/models/) and set VOCAB_GGUF")
    return cands[0]


def copy_tokenizer_kv(writer, vocab_path):
    import gguf
    r = gguf.GGUFReader(vocab_path)
    T = gguf.GGUFValueType
    for name, f in r.fields.items():
        if not name.startswith("tokenizer."):
            continue
        vt = T(f.types[0])
        if vt == T.ARRAY:
            st = T(f.types[1])
            if st == T.STRING:
                val = [bytes(f.parts[i]).decode("utf-8", errors="surrogateescape") for i in f.data]
            else:
                val = [f.parts[i].tolist()[0] for i in f.data]
            if name == "tokenizer.ggml.tokens":
                assert len(val) == VOCAB, len(val)
            writer.add_key_value(name, val, vt, sub_type=st)
        elif vt == T.STRING:
            writer.add_key_value(name, bytes(f.parts[f.data[0]]).decode("utf-8"), vt)
        else:
            writer.add_key_value(name, f.parts[f.data[0]].tolist()[0], vt)


def write_gguf(path, dtype, seed=0):
    import numpy as np
    import gguf
    if os.path.exists(path):
        return
    rng = np.random.default_rng(seed)
    wdt = np.float32 if dtype == "f32" else np.float16

    def mat(rows, cols):  # numpy shape (rows, cols) == ggml ne {cols, rows}
        return (rng.standard_normal((rows, cols), dtype=np.float32) * 0.02).astype(wdt)

    ones = lambda n: np.ones(n, dtype=np.float32)
    w = gguf.GGUFWriter(path + ".tmp", "openelm")
    w.add_name("OpenELM-270M-random")
    w.add_block_count(N_LAYER)
    w.add_context_length(CTX)
    w.add_embedding_length(N_EMBD)
    w.add_feed_forward_length(FFN)
    w.add_head_count(Q_HEADS)
    w.add_head_count_kv(KV_HEADS)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_rope_dimension_count(HEAD_DIM)
    w.add_key_length(HEAD_DIM)
    w.add_value_length(HEAD_DIM)
    w.add_file_type(gguf.LlamaFileType.ALL_F32 if dtype == "f32" else gguf.LlamaFileType.MOSTLY_F16)
    copy_tokenizer_kv(w, find_vocab())
    w.add_tensor("token_embd.weight", mat(VOCAB, N_EMBD))
    for i in range(N_LAYER):
        qkv = (Q_HEADS[i] + 2 * KV_HEADS[i]) * HEAD_DIM
        w.add_tensor(f"blk.{i}.attn_norm.weight", ones(N_EMBD))
        w.add_tensor(f"blk.{i}.attn_qkv.weight", mat(qkv, N_EMBD))
        w.add_tensor(f"blk.{i}.attn_q_norm.weight", ones(HEAD_DIM))
        w.add_tensor(f"blk.{i}.attn_k_norm.weight", ones(HEAD_DIM))
        w.add_tensor(f"blk.{i}.attn_output.weight", mat(N_EMBD, Q_HEADS[i] * HEAD_DIM))
        w.add_tensor(f"blk.{i}.ffn_norm.weight", ones(N_EMBD))
        w.add_tensor(f"blk.{i}.ffn_gate.weight", mat(FFN[i], N_EMBD))
        w.add_tensor(f"blk.{i}.ffn_up.weight", mat(FFN[i], N_EMBD))
        w.add_tensor(f"blk.{i}.ffn_down.weight", mat(N_EMBD, FFN[i]))
    w.add_tensor("output_norm.weight", ones(N_EMBD))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    os.rename(path + ".tmp", path)


def quantize(src, dst, ftype):
    import llama_cpp
    if os.path.exists(dst):
        return
    p = llama_cpp.llama_model_quantize_default_params()
    p.ftype = ftype
    p.nthread = 2
    rc = llama_cpp.llama_model_quantize(src.encode(), dst.encode(), p)
    if rc != 0:
        raise RuntimeError(f"llama_model_quantize returned {rc}")


def measure(path, reps, n_prompt, n_gen):
    import numpy as np
    import llama_cpp
    # The context holds the prompt and the generated tokens (512 at least, as before).
    n_ctx = max(512, n_prompt + n_gen)
    llm = llama_cpp.Llama(model_path=path, n_threads=2, n_threads_batch=2, n_ctx=n_ctx, n_batch=128,
                          n_ubatch=128, logits_all=False, verbose=False)
    rng = np.random.default_rng(1)
    prompt = [int(t) for t in rng.integers(3, VOCAB, n_prompt)]

    def last_argmax():
        # Llama.eval no longer copies logits (logits_all=False); read the last token's row directly.
        return int(np.argmax(np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(VOCAB,))))

    def one():
        llm.reset()
        t0 = time.perf_counter()
        llm.eval(prompt)
        tok = last_argmax()
        t1 = time.perf_counter()
        for _ in range(n_gen):
            llm.eval([tok])
            tok = last_argmax()
        t2 = time.perf_counter()
        return n_prompt / (t1 - t0), n_gen / (t2 - t1)

    one()  # warm-up, not counted
    runs = [one() for _ in range(reps)]
    rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"runs": runs, "rss_mib": rss_mib, "size_mib": os.path.getsize(path) / 2**20}


# llama.cpp file types made from the F16 file with llama_model_quantize. llama.cpp picks the
# type of the tied token_embd/output matrix itself (Q6_K in its Q4_0 and Q4_K_M files).
QUANT_FTYPES = {
    "q8_0": "LLAMA_FTYPE_MOSTLY_Q8_0",
    "q4_0": "LLAMA_FTYPE_MOSTLY_Q4_0",
    "q4_k": "LLAMA_FTYPE_MOSTLY_Q4_K_M",
}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dtypes", default="f32,f16,bf16,q8_0")
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--prompt", type=int, default=128)
    ap.add_argument("--gen", type=int, default=64)
    ap.add_argument("--measure", help=argparse.SUPPRESS)  # internal: measure one file, print JSON
    a = ap.parse_args()
    ensure_env()
    if a.measure:
        print("RESULT " + json.dumps(measure(a.measure, a.reps, a.prompt, a.gen)))
        return
    import gguf
    import llama_cpp
    print(f"llama-cpp-python {llama_cpp.__version__}, gguf {importlib.metadata.version('gguf')}, "
          f"python {sys.version.split()[0]}")
    try:
        print("system_info:", llama_cpp.llama_print_system_info().decode())
    except Exception:
        pass
    files = {}
    for dt in a.dtypes.split(","):
        p = os.path.join(OUT_DIR, f"openelm270m-{dt}.gguf")
        t0 = time.time()
        try:
            if dt in ("f32", "f16"):
                write_gguf(p, dt)
            elif dt in QUANT_FTYPES:
                src = os.path.join(OUT_DIR, "openelm270m-f16.gguf")
                write_gguf(src, "f16")
                quantize(src, p, getattr(llama_cpp, QUANT_FTYPES[dt]))
            elif dt == "bf16":  # matrices BF16 (converted from the F32 file), norms F32
                src = os.path.join(OUT_DIR, "openelm270m-f32.gguf")
                write_gguf(src, "f32")
                quantize(src, p, llama_cpp.LLAMA_FTYPE_MOSTLY_BF16)
            else:
                raise SystemExit(f"unknown dtype {dt}")
            files[dt] = p
            print(f"{dt}: {p} ready ({time.time() - t0:.1f}s)", flush=True)
        except Exception as e:
            print(f"{dt}: FAILED to create: {e!r}", flush=True)
    rows = []
    for dt, p in files.items():
        r = subprocess.run([sys.executable, os.path.abspath(__file__), "--measure", p, "--reps", str(a.reps),
                            "--prompt", str(a.prompt), "--gen", str(a.gen)], capture_output=True, text=True)
        line = [l for l in r.stdout.splitlines() if l.startswith("RESULT ")]
        if r.returncode != 0 or not line:
            print(f"{dt}: measure FAILED rc={r.returncode}\n{r.stderr[-3000:]}", flush=True)
            continue
        res = json.loads(line[0][7:])
        for i, (pp, tg) in enumerate(res["runs"]):
            rows.append((dt, i + 1, pp, tg, res["rss_mib"], res["size_mib"]))
            print(f"{dt} rep {i + 1}: prompt {pp:.1f} tok/s, gen {tg:.1f} tok/s", flush=True)
    print(f"\nllama.cpp OpenELM-270M, n_threads=2, n_ctx={max(512, a.prompt + a.gen)}, n_batch=128, prompt={a.prompt}, gen={a.gen}")
    print(f"{'dtype':<6} {'rep':>3} {'prompt tok/s':>13} {'gen tok/s':>10} {'peak RSS MiB':>13} {'file MiB':>9}")
    for dt, i, pp, tg, rss, sz in rows:
        print(f"{dt:<6} {i:>3} {pp:>13.1f} {tg:>10.1f} {rss:>13.0f} {sz:>9.0f}")


if __name__ == "__main__":
    main()

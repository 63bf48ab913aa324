"""Interleaved CPU comparison in one process: main's eager decoder and run() vs this branch's eager and static paths."""
import importlib.util, json, statistics, sys, time
import torch
torch.set_num_threads(1)
from langchain_aisp.lm import load_causal_lm
from langchain_aisp.bench.speed import _no_eos, render, THROUGHPUT_PROMPT
from langchain_aisp.config import AISPParams, SamplingParams
from langchain_aisp import decoding as branch_decoding, aisp as branch_aisp
from langchain_aisp.static_decoding import decode_static

def load(name, path):
    spec = importlib.util.spec_from_file_location(name, path); mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod; spec.loader.exec_module(mod); return mod
main_decoding = load("main_decoding", "/work/main/langchain_aisp/decoding.py")
main_aisp = load("main_aisp", "/work/main/langchain_aisp/aisp.py")

lm = _no_eos(load_causal_lm(None, device="cpu"))
ids = render(lm, THROUGHPUT_PROMPT)
T = 32
def dec(mod_decode, build, batch, seed):
    g = torch.Generator().manual_seed(seed)
    d = build(lm, SamplingParams(max_tokens=T))
    t = time.perf_counter()
    p = mod_prefill(lm, ids)
    mod_decode(d, [p], torch.zeros(batch, dtype=torch.long), torch.zeros(batch, 1, lm.hidden_size), torch.rand(batch, T, generator=g))
    return time.perf_counter() - t
mod_prefill = branch_decoding.prefill
variants = {
    "main eager": lambda b, s: dec(main_decoding.decode, main_decoding.Decoder.build, b, s),
    "branch eager": lambda b, s: dec(branch_decoding.decode, branch_decoding.Decoder.build, b, s),
    "branch static": lambda b, s: dec(decode_static, branch_decoding.Decoder.build, b, s),
}
score = lambda i, t: [float(len(x)) for x in t]
params, sampling = AISPParams(num_samples=8, num_iterations=2), SamplingParams(max_tokens=16)
runs = {
    "main run()": lambda s: main_aisp.run(lm, [ids], score, params, sampling, seed=s),
    "branch run() auto": lambda s: branch_aisp.run(lm, [ids], score, params, sampling, seed=s),
}
rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 5
out = {}
for batch in (8, 32):
    for f in variants.values(): f(batch, 99)  # warm-up
    times = {k: [] for k in variants}
    for r in range(rounds):
        order = list(variants) if r % 2 == 0 else list(reversed(variants))
        for k in order: times[k].append(variants[k](batch, r))
    out[f"decode batch {batch}"] = {k: 1000 * statistics.median(v) / T for k, v in times.items()}
    out[f"decode batch {batch} raw"] = times
    print(batch, {k: round(v, 1) for k, v in out[f"decode batch {batch}"].items()}, flush=True)
for f in runs.values(): f(99)
times = {k: [] for k in runs}
for r in range(rounds):
    order = list(runs) if r % 2 == 0 else list(reversed(runs))
    for k in order:
        t = time.perf_counter(); runs[k](r); times[k].append(time.perf_counter() - t)
out["run aisp 8x2 16 tok"] = {k: statistics.median(v) for k, v in times.items()}
out["run raw"] = times
print(out["run aisp 8x2 16 tok"], flush=True)
json.dump(out, open("/tmp/i11/cpu/interleaved.json", "w"), indent=1)

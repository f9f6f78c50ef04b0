"""Benchmark item 3. Encoder throughput and variants."""

from __future__ import annotations

import torch

from bench.common import Config, Report, time_median
from clipvdb.forward_pass import run_stages
from clipvdb.stages import STAGES, parse_stages


@torch.inference_mode()
def item_encoder(rep: Report, cfg: Config) -> dict[str, float]:
    from clipvdb.clip_model import load_model

    rep.h("3. Encoder: images/s per stage on CPU, random RN50 weights, vs open_clip encode_image")
    encoder = load_model("RN50", "random", "cpu", quiet=True)
    threads = torch.get_num_threads()
    rows, ips32 = [], {}
    for bs in cfg.enc_batches:
        x = torch.randn(bs, 3, 224, 224)
        reps = max(3, cfg.enc_images // bs) if bs < 32 else (3 if bs <= 32 else 2)
        if cfg.quick:
            reps = 2
        fns = {
            "encode_image": lambda: encoder.model.encode_image(x),
            "origin": lambda: run_stages(encoder.visual, x, [STAGES["origin"]], encoder.device),
            "second": lambda: run_stages(encoder.visual, x, [STAGES["second"]], encoder.device),
            "third": lambda: run_stages(encoder.visual, x, [STAGES["third"]], encoder.device),
            "all four": lambda: run_stages(encoder.visual, x, parse_stages("all"), encoder.device),
        }
        fns["encode_image"]()  # warm-up
        t = {k: time_median(f, reps) for k, f in fns.items()}
        base = t["encode_image"]
        for k in fns:
            rows.append([bs, k, bs / t[k], t[k] / base, t[k] / t["origin"]])
            if bs == max(b for b in cfg.enc_batches if b <= 32):
                ips32[k] = bs / t[k]
    rep.p(
        f"torch {torch.__version__}, {threads} threads; median of repeated batches; timing is independent of "
        "the weights' values. Goals: origin < 1.05 x encode_image; second <= 0.75 x origin; all four <= 1.1 x origin."
    )
    rep.table(["batch", "path", "images/s", "time / encode_image", "time / origin"], rows)
    # channels_last and bfloat16 autocast, tried at one batch size
    bs = cfg.enc_batches[-1] if cfg.quick else 32
    x = torch.randn(bs, 3, 224, 224)
    # the baseline is float32 NCHW; load_model's CPU default is channels_last
    encoder.visual.to(memory_format=torch.contiguous_format)
    ref = encoder.model.encode_image(x)
    base = time_median(lambda: encoder.model.encode_image(x), 3)
    encoder.visual.to(memory_format=torch.channels_last)
    xc = x.contiguous(memory_format=torch.channels_last)
    cl_out = encoder.model.encode_image(xc)
    cl = time_median(lambda: encoder.model.encode_image(xc), 3)
    encoder.visual.to(memory_format=torch.contiguous_format)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        bf_out = encoder.model.encode_image(x).float()
        bf = time_median(lambda: encoder.model.encode_image(x), 3)
    rel = lambda a: float((a - ref).norm() / ref.norm())  # noqa: E731
    rows = [["channels_last", cl / base, rel(cl_out)], ["bfloat16 autocast", bf / base, rel(bf_out)]]
    # a frozen inference graph: TorchScript trace, freeze (constants folded, conv + batch norm merged),
    # optimize_for_inference (oneDNN fusion where available), channels_last input
    encoder.visual.to(memory_format=torch.channels_last)
    try:
        with torch.inference_mode(False), torch.no_grad():
            frozen = torch.jit.optimize_for_inference(torch.jit.freeze(torch.jit.trace(encoder.visual.eval(), xc)))
            frozen(xc)
            fr_out = frozen(xc)
            fr = time_median(lambda: frozen(xc), 3)
        rows.append(["frozen TorchScript (conv+bn folded, optimize_for_inference)", fr / base, rel(fr_out)])
    except Exception as exc:  # report the failure, do not stop the bench
        rows.append([f"frozen TorchScript: failed ({exc.__class__.__name__})", "", ""])
    rep.p(
        "A variant is adopted only if its embeddings stay within 1e-5 relative of encode_image: channels_last "
        "is the CPU default; the others are measured and reported, not used."
    )
    rep.table([f"variant (batch {bs})", "time / float32 NCHW", "relative error"], rows)
    malloc_rows(rep, cfg)
    return ips32


_MALLOC_RUN = """
import json, resource, sys, time
import numpy as np
from clipvdb.encoder import load_encoder
from clipvdb.clip_model import keep_freed_memory
from clipvdb.stages import parse_stages
n, bs, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
enc = load_encoder("RN50", "random", "cpu", quiet=True)
batch = np.random.default_rng(0).integers(0, 256, (n, 224, 224, 3), dtype=np.uint8)
stages, row, vectors = parse_stages("all"), {"kept": keep_freed_memory()}, None
for name in ("cold", "warm"):
    faults, start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, time.perf_counter()
    for s in range(0, n, bs):
        v = enc.encode(batch[s : s + bs], stages).vectors
        vectors = v if vectors is None else vectors
    row[name] = n / (time.perf_counter() - start)
    row[name + "_faults"] = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
row["maxrss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
np.savez(out + ".npz", **vectors)
open(out, "w").write(json.dumps(row))
"""


def malloc_rows(rep: Report, cfg: Config) -> None:
    """The CPU encoder with glibc's malloc as it comes and with freed memory kept
    (models.keep_freed_memory), each in a fresh process: first pass, second pass, page faults."""
    import json
    import os
    import subprocess
    import sys
    import tempfile

    import numpy as np

    n, bs = (16, 8) if cfg.quick else (192, 64)
    rows, outs = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for flag, label in (("0", "glibc malloc as it comes"), ("1", "freed memory kept (the default)")):
            out = os.path.join(tmp, flag)
            env = {**os.environ, "CLIPVDB_KEEP_FREED_MEMORY": flag}
            subprocess.run([sys.executable, "-c", _MALLOC_RUN, str(n), str(bs), out], env=env, check=True)
            r = json.loads(open(out).read())
            outs[flag] = dict(np.load(out + ".npz"))
            rows.append(
                [
                    label,
                    r["cold"],
                    r["warm"],
                    f"{r['cold_faults']:,}",
                    f"{r['warm_faults']:,}",
                    f"{r['maxrss_mb']:,.0f}",
                ]
            )
    same = all(np.array_equal(outs["0"][k], outs["1"][k]) for k in outs["0"])
    rep.p(
        f"glibc's malloc, {n} random images at batch {bs}, all four stages, each setting in a fresh process "
        f"(first pass, then the same batches again). Embeddings identical bit for bit: {'yes' if same else 'NO'}; "
        f"warm speed-up {rows[1][2] / rows[0][2]:.2f}x."
    )
    rep.table(
        [
            "malloc",
            "images/s, first pass",
            "images/s, second pass",
            "page faults, first",
            "page faults, second",
            "peak RSS MB",
        ],
        rows,
    )

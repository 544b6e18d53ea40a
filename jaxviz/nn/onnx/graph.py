"""An ONNX graph as a jaxviz model (the model protocol, :mod:`jaxviz.nn.protocol`).

:func:`from_onnx` reads a parsed ``onnx.ModelProto`` into an :class:`OnnxModel`: the nodes in
topological order, each a step whose outputs are layers; float initialisers become the parameters
(a dict ``{initialiser name: float32 array}``, so gradients w.r.t. weights and checkpoints work), the
others static NumPy constants. Static values (shapes, constants, anything computed from them only) are
folded with NumPy while the forward is traced, so Shape -> Gather -> Concat -> Reshape never reaches the
compiled program and the forward is static and jittable; :func:`from_onnx` traces it once at import
for the input size, which also refuses an unsupported op or attribute before anything runs.

Layers are named by the PyTorch module path the exporter records (``/layer4/layer4.1/conv2/Conv`` ->
``layer4.1.conv2``; the dynamo exporter's ``pkg.torch.onnx.name_scopes``): a module's last node takes
its path, the module's other nodes keep their node names; the node name and the output tensor's name are
aliases. A channels-first graph takes N x H x W x C input (transposed inside) and shows its 4-D maps as
N x H x W x C; a perturbation is given in that layout and added to the layer's own.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
from typing import Any, Mapping, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxviz.errors import JaxvizError, show, unknown
from jaxviz.nn.protocol import Forward
from jaxviz.nn.onnx import layout as L
from jaxviz.nn.onnx import ops as O

Shape = tuple[int, ...]
DEFAULT_SIZE = 224
REFUSED_SUBGRAPH = ("If", "Loop", "Scan", "SequenceMap")
MAX_ELEMENTS = 2 ** 40  # a dimension product beyond this is a hostile or broken file

# Which inputs of an op are settings (must be static): a float initialiser there is a constant, not a weight.
STATIC_INPUTS = {"Reshape": {1}, "Resize": {1, 2, 3}, "Slice": {1, 2, 3, 4}, "Pad": {1, 3}, "Expand": {1},
                 "Squeeze": {1}, "Unsqueeze": {1}, "Split": {1}, "Tile": {1}, "ConstantOfShape": {0},
                 "Range": {0, 1, 2}, "ReduceMean": {1}, "ReduceSum": {1}, "ReduceMax": {1}, "ReduceMin": {1},
                 "ReduceProd": {1}, "ReduceL2": {1}, "Dropout": {1, 2}, "Upsample": {1}}

KINDS = {"Conv": "conv", "ConvTranspose": "conv", "MaxPool": "pool", "AveragePool": "pool",
         "GlobalAveragePool": "global_pool", "GlobalMaxPool": "global_pool", "Gemm": "dense",
         "BatchNormalization": "norm", "LayerNormalization": "norm", "InstanceNormalization": "norm",
         "Relu": "act", "LeakyRelu": "act", "PRelu": "act", "Clip": "act", "Sigmoid": "act", "HardSigmoid": "act",
         "HardSwish": "act", "Tanh": "act", "Erf": "act", "Gelu": "act", "Softmax": "act", "Elu": "act",
         "Softplus": "act", "Mish": "act", "Flatten": "flatten", "Reshape": "reshape", "Pad": "pad",
         "Resize": "resize", "Identity": "identity", "Dropout": "dropout", "Concat": "merge"}


def _float_attr(a):
    import onnx

    from onnx import numpy_helper

    T = onnx.AttributeProto
    if a.type == T.FLOAT:
        return float(a.f)
    if a.type == T.INT:
        return int(a.i)
    if a.type == T.STRING:
        return a.s.decode("utf-8", "replace")
    if a.type == T.FLOATS:
        return [float(f) for f in a.floats]
    if a.type == T.INTS:
        return [int(i) for i in a.ints]
    if a.type == T.TENSOR:
        return numpy_helper.to_array(a.t)
    if a.type in (T.GRAPH, T.GRAPHS):
        return _Subgraph()
    return _Unsupported(a.type)


class _Subgraph:
    pass


@dataclasses.dataclass
class _Unsupported:
    type: int


def module_path(node) -> str | None:
    """The PyTorch module path the exporter recorded for ``node``, or None."""
    meta = {p.key: p.value for p in node.metadata_props} if hasattr(node, "metadata_props") else {}
    if "pkg.torch.onnx.name_scopes" in meta:
        try:
            scopes = ast.literal_eval(meta["pkg.torch.onnx.name_scopes"])
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            scopes = []
        scopes = [s for s in scopes if isinstance(s, str)] if isinstance(scopes, list) else []
        # the dynamo exporter ends the list with the FX node's own name (['', 'layer4', 'layer4.1',
        # 'layer4.1.relu', 'relu_16']): that is an op, not a module
        fx = meta.get("pkg.torch.onnx.fx_node", "")
        if scopes and len(scopes) > 1 and fx.startswith(f"%{scopes[-1]} "):
            scopes = scopes[:-1]
        scopes = [s for s in scopes if s]
        if scopes:
            return scopes[-1]
    name = node.name
    if not name.startswith("/"):
        return None
    parts = [p for p in name.split("/")[1:-1] if p]
    # each scope is named relative to its parent module, and a child of a container repeats the
    # container's name: /layer4/layer4.1/conv2 -> layer4.1.conv2, /features/features.1/block/block.0 ->
    # features.1.block.0
    base, path, prev = "", "", None
    for part in parts:
        if prev is None or not part.startswith(prev + "."):
            base = path
        path = f"{base}.{part}" if base else part
        prev = part
    return path or None


def _dims(vi) -> list[int | None]:
    t = vi.type.tensor_type
    if not t.HasField("shape"):
        return []
    return [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]


STORED_GRAPH = "graph.onnx"  # a checkpoint's copy of the graph, beside params/


def stored_key(i: int) -> str:
    """The checkpoint key of the ``i``-th parameter (orbax keys need plain names)."""
    return f"t{i:06d}"


class _Traced(NamedTuple):
    shapes: dict[str, Shape]
    statics: dict[str, np.ndarray]
    layouts: dict[str, L.Layout]
    grid: set[str]


@dataclasses.dataclass(frozen=True, eq=False)
class OnnxModel:
    """An imported ONNX graph (see the module docstring); implements :class:`jaxviz.nn.protocol.Model`.

    Attributes:
      name, input_shape (H, W, C), preprocessing, labels: the protocol's.
      nodes: the graph's nodes, in topological order (:class:`jaxviz.nn.onnx.ops.Node`).
      constants: ``{tensor: NumPy array}`` of the static initialisers.
      input_name, output_names: the graph's input and outputs.
      channels_first: the input is N x C x H x W (transposed from N x H x W x C inside).
      layer_values: ``(layer, tensor)`` in call order, one per node output.
      aliases: ``(alias, layer)``: node names and tensor names.
      graph_bytes: the serialised ``ModelProto`` without the initialisers that became parameters (what a
        checkpoint stores beside them; empty for :func:`run_graph`).
    """

    name: str
    input_shape: Shape
    nodes: tuple[O.Node, ...]
    constants: Mapping[str, np.ndarray]
    input_name: str
    output_names: tuple[str, ...]
    channels_first: bool
    layer_values: tuple[tuple[str, str], ...]
    aliases: tuple[tuple[str, str], ...]
    opset: int
    preprocessing: str = "none"
    labels: str | None = None
    graph_bytes: bytes = dataclasses.field(default=b"", repr=False)

    # -- names --------------------------------------------------------------------------
    @property
    def layer_names(self) -> list[str]:
        return [n for n, _ in self.layer_values]

    @functools.cached_property
    def _value_of(self) -> dict[str, str]:
        return dict(self.layer_values)

    @functools.cached_property
    def _alias(self) -> dict[str, str]:
        return dict(self.aliases)

    def resolve(self, name: str) -> str:
        if name in self._value_of:
            return name
        if name in self._alias:
            return self._alias[name]
        raise unknown("layer", name, self.layer_names, f" in {self.name}")

    @functools.cached_property
    def _producer(self) -> dict[str, O.Node]:
        return {o: n for n in self.nodes for o in n.outputs if o}

    def node_of(self, name: str) -> O.Node:
        """The ONNX node whose output is layer ``name``."""
        return self._producer[self._value_of[self.resolve(name)]]

    def kind(self, name: str) -> str:
        node = self.node_of(name)
        if node.op in KINDS:
            return KINDS[node.op]
        if node.op == "MatMul":
            return "dense" if node.inputs[1] in self._params_used else "other"
        if node.op in ("Add", "Sub", "Mul", "Div"):
            live = [i for i in node.inputs if i not in self.constants and i not in self._params_used]
            return "merge" if len(live) > 1 else "other"
        if node.op in ("ReduceMean", "ReduceMax") and self._spatial_reduce(node):
            return "global_pool"
        return "other"

    def _spatial_reduce(self, node) -> bool:
        axes = node.attrs.get("axes")
        if axes is None and len(node.inputs) > 1 and node.inputs[1] in self.constants:
            axes = list(np.asarray(self.constants[node.inputs[1]]).reshape(-1))
        return axes is not None and sorted(int(a) % 4 for a in axes) == ([2, 3] if self.channels_first else [1, 2])

    @functools.cached_property
    def _params_used(self) -> set[str]:
        return set(self._param_names)

    @property
    def _param_names(self) -> tuple[str, ...]:
        return tuple(self._param_shapes)

    _param_shapes: Mapping[str, Shape] = dataclasses.field(default_factory=dict)

    # -- shapes and layouts ------------------------------------------------------------------
    @functools.lru_cache(maxsize=16)
    def _traced(self, input_shape: Shape) -> "_Traced":
        """Every tensor's shape for a batch of 1 of ``input_shape``, the tensors folded at import, each
        tensor's layout and the maps read at their grid (:mod:`jaxviz.nn.onnx.layout`)."""
        params = {k: jax.ShapeDtypeStruct(s, jnp.float32) for k, s in self._param_shapes.items()}
        x = jax.ShapeDtypeStruct((1, *input_shape), jnp.float32)
        want = {v for _, v in self.layer_values}
        statics: dict[str, np.ndarray] = {}

        def trace(p, x):
            env = self._forward(p, self._to_graph(x), want)
            statics.update({k: v for k, v in env.items() if O.static(v)})
            return env

        out = jax.eval_shape(trace, params, x)
        shapes = {k: tuple(v.shape) for k, v in out.items()}
        shapes[self.input_name] = (1, input_shape[-1], *input_shape[:-1]) if self.channels_first and \
            len(input_shape) == 3 else (1, *input_shape)
        weights = set(self._param_shapes) | set(self.constants)
        start = ("cf" if self.channels_first else "cl") if len(input_shape) == 3 else None
        lay = L.infer(self.nodes, shapes, statics, self.input_name, start, weights)
        grid = L.grid_read(self.nodes, lay, shapes, statics, self.constants, self.output_names, weights)
        return _Traced(shapes, statics, lay, grid)

    def _layout(self, value: str, input_shape: Shape | None = None) -> "L.Layout | None":
        return self._traced(tuple(input_shape or self.input_shape)).layouts.get(value)

    def view(self, layer: str, value: Any, input_shape: Sequence[int] | None = None):
        """``value``, layer ``layer``'s tensor in the graph's own layout (batch first; NumPy or JAX), as
        the model shows it: a map N x H x W x C, a token grid without its prefix tokens (see
        :mod:`jaxviz.nn.onnx.layout`), anything else unchanged."""
        return L.view(self._layout(self._value_of[self.resolve(layer)], input_shape), value)

    def maps_hint(self) -> list[str]:
        """The layers whose tensor is a map (N x C x H x W, N x H x W x C or a token grid) that the
        output reads at its grid positions, at the model's input size: the policy's candidates for the
        CAM and feature layers (a 4-D tensor of an attention is no map; a ViT's last token maps, of
        which the head reads only the class token, are passed over)."""
        t = self._traced(tuple(self.input_shape))
        return [n for n, v in self.layer_values if v in t.grid]

    def shapes(self, input_shape: Sequence[int] | None = None, until: str | None = None) -> list[tuple[str, Shape]]:
        shape = tuple(int(s) for s in (input_shape or self.input_shape))
        self._check_shape(shape)
        try:
            t = self._traced(shape)
        except JaxvizError as e:
            raise JaxvizError(f"{self.name} cannot take a {'x'.join(map(str, shape))} input: {e}") from None
        except (TypeError, ValueError) as e:
            raise JaxvizError(f"{self.name} cannot take a {'x'.join(map(str, shape))} input: "
                              f"{show(str(e).splitlines()[0] if str(e) else e, 300)}") from None
        out = []
        for n, v in self.layer_values:
            s = t.shapes[v]
            out.append((n, L.view_shape(t.layouts.get(v), s)[1:] if s else s))
            if until is not None and n == self.resolve(until):
                return out
        return out

    def _check_shape(self, shape: Shape) -> None:
        if len(shape) != len(self.input_shape) or shape[-1] != self.input_shape[-1]:
            raise JaxvizError(f"{self.name} takes H x W x {self.input_shape[-1]} inputs, got shape {tuple(shape)}")
        if len(shape) == 3 and None not in self._fixed_hw and tuple(shape[:2]) != self._fixed_hw:
            raise JaxvizError(f"{self.name} takes {self._fixed_hw[0]}x{self._fixed_hw[1]} inputs (fixed in the "
                              f"file), got {shape[0]}x{shape[1]}; resize the image")

    _fixed_hw: tuple = (None, None)

    def check_input(self, x_shape: Sequence[int]) -> None:
        if len(x_shape) != len(self.input_shape) + 1:
            raise JaxvizError(f"{self.name} takes a batch N x {' x '.join('HWC'[-len(self.input_shape):])}, "
                              f"got shape {tuple(x_shape)}")
        self.shapes(tuple(x_shape[1:]))

    # -- running -------------------------------------------------------------------------
    def _to_graph(self, x):
        return jnp.moveaxis(x, -1, 1) if self.channels_first and x.ndim == 4 else x

    def _needed(self, values: set[str]) -> list[O.Node]:
        need, todo = set(), list(values)
        while todo:
            v = todo.pop()
            node = self._producer.get(v)
            if node is None or id(node) in need:
                continue
            need.add(id(node))
            todo += [i for i in node.inputs if i]
        return [n for n in self.nodes if id(n) in need]

    def _forward(self, params, x, want: set[str], perturb: Mapping[str, Any] | None = None,
                 feeds: Mapping[str, Any] | None = None):
        env: dict[str, Any] = dict(self.constants)
        env.update({k: jnp.asarray(v, jnp.float32) for k, v in params.items()})
        if feeds is not None:
            env.update(feeds)
        else:
            env[self.input_name] = x
        perturb = perturb or {}
        for node in self._needed(set(want)):
            ins = [env[i] if i else None for i in node.inputs]
            outs = O.handler(node)(node, ins, self.opset)
            if any(O.static(v) for v in ins if v is not None) and all(O.static(v) for v in ins if v is not None):
                outs = [np.asarray(o) if o is not None and not isinstance(o, jax.core.Tracer) else o for o in outs]
            for name, val in zip(node.outputs, outs):
                if not name:
                    continue
                if name in perturb:
                    val = val + perturb[name]
                env[name] = val
        return {v: env[v] for v in want}

    def run(self, params: Mapping, x: jax.Array, *, taps: Sequence[str] = (),
            perturb: Mapping[str, jax.Array] | None = None, output: bool = True, logits: bool = False,
            channel: tuple[str, jax.Array] | None = None) -> Forward:
        """One forward pass of ``x`` (N x H x W x C); see :meth:`jaxviz.nn.protocol.Model.run`."""
        keep = {n: self._value_of[self.resolve(n)] for n in taps}
        lay = self._traced(tuple(int(s) for s in x.shape[1:])).layouts
        pert = {v: L.unview(lay.get(v), jnp.asarray(d))
                for v, d in ((self._value_of[self.resolve(n)], d) for n, d in (perturb or {}).items())}
        out_v = self.output_names[0]
        logit_v = self._logits_value
        want = set(keep.values()) | ({out_v, logit_v} if output else set())
        env = self._forward(params, self._to_graph(jnp.asarray(x, jnp.float32)), want, pert)
        tapped = {}
        for n, v in keep.items():
            t = L.view(lay.get(v), jnp.asarray(env[v]))
            if channel is not None and self.resolve(channel[0]) == self.resolve(n):
                t = jax.lax.dynamic_slice_in_dim(t, channel[1], 1, axis=-1)
            tapped[n] = t
        if not output:
            return Forward(None, None, tapped)
        return Forward(L.view(lay.get(out_v), env[out_v]), L.view(lay.get(logit_v), env[logit_v]), tapped)

    @functools.cached_property
    def _logits_value(self) -> str:
        """The output before a final Softmax (the output itself when there is none)."""
        node = self._producer.get(self.output_names[0])
        if node is not None and node.op in ("Softmax", "Sigmoid") and node.inputs[0] not in self.constants:
            return node.inputs[0]
        return self.output_names[0]

    def with_preprocessing(self, mode: str) -> "OnnxModel":
        return dataclasses.replace(self, preprocessing=mode)

    # -- checkpoints -------------------------------------------------------------------------
    def check_weights(self, params: Mapping[str, Any], where: str) -> None:
        """Raise unless ``params`` are exactly this graph's weights (``{initialiser: array}``): every one
        there with its shape, finite, no other (``where``: the subject of the message)."""
        from jaxviz.nn.finite import require_finite

        for name, shape in self._param_shapes.items():
            found = getattr(params.get(name), "shape", None)
            if found is None or tuple(found) != tuple(shape):
                raise JaxvizError(f"{where}: weights do not fit {show(self.name)}: initialiser {show(repr(name), 120)} "
                                  f"expected shape {tuple(shape)}, found {None if found is None else tuple(found)}")
            require_finite(params[name], f"{where}: initialiser {show(repr(name), 120)} contains NaN or Inf; the "
                                         "weights are unusable")
        extra = [n for n in params if n not in self._param_shapes]
        if extra:
            raise JaxvizError(f"{where}: weights do not fit {show(self.name)}: unexpected initialiser "
                              f"{show(repr(extra[0]), 120)}")

    def stored_hint(self, params: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any], dict[str, bytes]]:
        """How a checkpoint stores this model (:func:`jaxviz.io.checkpoint.save_checkpoint`): the parameters
        under plain keys (``t000000``... in the graph's order), the ``onnx`` entry of ``jaxviz.json``
        (the graph file, each initialiser's name and shape, the input size) and ``graph.onnx``, the graph
        without those initialisers; the checkpoint reader puts them back and imports the graph again."""
        if not self.graph_bytes:
            raise JaxvizError(f"{show(self.name)} holds no ONNX graph to store (a run_graph model); import the file "
                              "with jaxviz.load_model or jaxviz.nn.onnx.from_onnx")
        self.check_weights(params, f"refusing to save {show(self.name)}")
        names = list(self._param_shapes)
        hw = list(self.input_shape[:2]) if len(self.input_shape) == 3 else None
        meta = {"graph": None, "onnx": {"graph": STORED_GRAPH, "input_hw": hw,
                                        "params": [[n, list(self._param_shapes[n])] for n in names]}}
        return {stored_key(i): params[n] for i, n in enumerate(names)}, meta, {STORED_GRAPH: self.graph_bytes}

    # -- fresh parameters ------------------------------------------------------------------
    @functools.cached_property
    def _reader(self) -> dict[str, tuple[O.Node, int]]:
        """``{parameter: (first node reading it, input position)}``."""
        out: dict[str, tuple[O.Node, int]] = {}
        for n in self.nodes:
            for k, i in enumerate(n.inputs):
                if i in self._params_used and i not in out:
                    out[i] = (n, k)
        return out

    def _fresh(self, key: jax.Array, names: Sequence[str]) -> dict[str, jax.Array]:
        """PyTorch's default initialisation of the parameters ``names`` (each drawn from
        ``fold_in(key, its index)``, so a subset equals the same entries of the whole): convolution and
        dense weights and their biases U(-1/sqrt(fan_in), 1/sqrt(fan_in)); batch/layer/instance norm scale
        and variance 1, shift and mean 0; PReLU slopes 0.25; anything else (embeddings, class tokens, layer
        scales) N(0, 0.02^2)."""
        index = {n: k for k, n in enumerate(self._param_names)}
        out = {}
        for name in names:
            shape = tuple(self._param_shapes[name])
            k = jax.random.fold_in(key, index[name])
            node, slot = self._reader[name]
            fan_in = None
            if node.op in ("Conv", "ConvTranspose", "Gemm") and len(node.inputs) > 1 and node.inputs[1] in index:
                w = tuple(self._param_shapes[node.inputs[1]])
                if node.op == "Conv":
                    fan_in = int(np.prod(w[1:]))
                elif node.op == "ConvTranspose":
                    fan_in = int(w[1] * np.prod(w[2:]))
                else:
                    fan_in = w[1] if node.attrs.get("transB", 0) else w[0]
            elif node.op == "MatMul" and slot == 1 and len(shape) >= 2:
                fan_in = shape[-2]
            if fan_in is not None and slot in (1, 2):
                b = 1.0 / max(fan_in, 1) ** 0.5
                out[name] = jax.random.uniform(k, shape, jnp.float32, -b, b)
            elif node.op == "BatchNormalization" and slot in (1, 2, 3, 4):
                out[name] = jnp.full(shape, 1.0 if slot in (1, 4) else 0.0, jnp.float32)
            elif node.op in ("LayerNormalization", "InstanceNormalization") and slot in (1, 2):
                out[name] = jnp.full(shape, 1.0 if slot == 1 else 0.0, jnp.float32)
            elif node.op == "PRelu" and slot == 1:
                out[name] = jnp.full(shape, 0.25, jnp.float32)
            else:
                out[name] = 0.02 * jax.random.normal(k, shape, jnp.float32)
        return out

    def init(self, key: jax.Array, input_shape: Sequence[int] | None = None) -> dict[str, jax.Array]:
        """Fresh, untrained parameters (PyTorch's default initialisation, see :meth:`_fresh`): the ONNX
        file records no initialiser, so this is what a freshly built PyTorch module would hold."""
        return self._fresh(key, self._param_names)

    def reinit(self, params: Mapping, key: jax.Array, layers: Sequence[str],
               input_shape: Sequence[int] | None = None) -> dict[str, jax.Array]:
        """``params`` with the weights that the nodes of ``layers`` read drawn afresh as :meth:`init` draws
        them (a weight shared with a node outside ``layers`` is redrawn too)."""
        redo = [i for n in layers for i in self.node_of(n).inputs if i in self._params_used]
        fresh = self._fresh(key, list(dict.fromkeys(redo)))
        return {k: fresh.get(k, v) for k, v in params.items()}

    def layer_params(self, params: Mapping, name: str) -> dict[str, jax.Array]:
        """The weights a layer's node reads: Conv ``kernel`` (H x W x in x out) and ``bias``; Gemm/MatMul
        ``kernel`` (in x out) and ``bias``; BatchNormalization ``gamma``/``beta``/``moving_mean``/
        ``moving_variance``; other nodes their weight inputs by position (``input1``...)."""
        node = self.node_of(name)
        got = {k: params[i] for k, i in enumerate(node.inputs) if i in params}
        if not got:
            return {}
        if node.op == "Conv" and 1 in got:
            w = got[1]
            out = {"kernel": jnp.transpose(w, tuple(range(2, w.ndim)) + (1, 0))}
            if 2 in got:
                out["bias"] = got[2]
            return out
        if node.op == "Gemm" and 1 in got:
            w = got[1] if not node.attrs.get("transB", 0) else got[1].T
            return {"kernel": w, **({"bias": got[2]} if 2 in got else {})}
        if node.op == "MatMul" and 1 in got:
            return {"kernel": got[1]}
        if node.op == "BatchNormalization":
            names = ("", "gamma", "beta", "moving_mean", "moving_variance")
            return {names[k]: v for k, v in got.items() if 0 < k < 5}
        return {f"input{k}": v for k, v in got.items()}


# ---------------------------------------------------------------------------------------------
# import
def _check_graph(g, opset: int) -> list[O.Node]:
    """The graph's nodes as :class:`Node`s in topological order; cycles, subgraphs, custom domains refused."""
    nodes = []
    for i, n in enumerate(g.node):
        name = n.name or (f"{n.op_type}_{i}")
        if n.domain not in ("", "ai.onnx"):
            raise JaxvizError(f"ONNX node {show(repr(name), 120)}: op {show(n.op_type, 60)} of the custom domain "
                              f"{show(repr(n.domain), 60)} is not supported (only the default ONNX domain)")
        if n.op_type in REFUSED_SUBGRAPH:
            raise JaxvizError(f"ONNX op {show(n.op_type, 60)} (node {show(repr(name), 120)}, opset {opset}): "
                              "control flow with subgraphs is not supported")
        attrs = {}
        for a in n.attribute:
            v = _float_attr(a)
            if isinstance(v, _Subgraph):
                raise JaxvizError(f"ONNX op {show(n.op_type, 60)} (node {show(repr(name), 120)}, opset {opset}): "
                                  "subgraph attributes are not supported")
            if isinstance(v, _Unsupported):
                raise JaxvizError(f"ONNX op {show(n.op_type, 60)} (node {show(repr(name), 120)}, opset {opset}): "
                                  f"attribute {show(a.name, 60)} of type {v.type} is not supported")
            attrs[a.name] = v
        nodes.append(O.Node(n.op_type, name, tuple(n.input), tuple(n.output), attrs, opset))
    # topological order (Kahn); what is left is a cycle or reads a value nothing produces
    known = {i.name for i in g.initializer} | {i.name for i in g.input} | {""}
    produced = {o: k for k, n in enumerate(nodes) for o in n.outputs if o}
    for k, n in enumerate(nodes):
        for i in n.inputs:
            if i not in known and i not in produced:
                raise JaxvizError(f"ONNX node {show(repr(n.name), 120)} reads {show(repr(i), 120)}, which no node, "
                                  "input or initialiser defines")
    order, done, indeg, readers = [], set(known), {}, {}
    for k, n in enumerate(nodes):
        deps = {produced[i] for i in n.inputs if i and i not in known}
        indeg[k] = len(deps)
        for d in deps:
            readers.setdefault(d, []).append(k)
    ready = [k for k in range(len(nodes)) if indeg[k] == 0]
    while ready:
        k = ready.pop(0)
        order.append(nodes[k])
        for r in readers.get(k, []):
            indeg[r] -= 1
            if indeg[r] == 0:
                ready.append(r)
    if len(order) != len(nodes):
        stuck = next(n for k, n in enumerate(nodes) if indeg[k] > 0)
        raise JaxvizError(f"the ONNX graph has a cycle (through node {show(repr(stuck.name), 120)})")
    for n in order:
        O.handler(n)  # an unknown op or attribute is refused now, by name
    return order


def _names(nodes: list[O.Node], paths: dict[int, str | None]) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    last_of_path: dict[str, int] = {}
    for n in nodes:
        p = paths[id(n)]
        if p:
            last_of_path[p] = id(n)
    taken: set[str] = set()
    layers, aliases = [], []

    def unique(base: str) -> str:
        name, k = base, 1
        while name in taken:
            k += 1
            name = f"{base}_{k}"
        taken.add(name)
        return name

    for n in nodes:
        p = paths[id(n)]
        base = p if p and last_of_path[p] == id(n) else n.name
        outs = [o for o in n.outputs if o]
        for k, o in enumerate(outs):
            lname = unique(base if len(outs) == 1 else f"{base}:{k}")
            layers.append((lname, o))
            for a in ({n.name} if len(outs) == 1 else set()) | {o}:
                if a != lname:
                    aliases.append((a, lname))
    seen = {l for l, _ in layers}
    aliases = [(a, l) for a, l in dict(aliases).items() if a not in seen]
    return layers, aliases


def opset_of(proto) -> int:
    for o in proto.opset_import:
        if o.domain in ("", "ai.onnx"):
            return int(o.version)
    return 1


def _float(init) -> bool:
    return init.data_type in (1, 10, 11, 16)  # float, float16, double, bfloat16


def from_onnx(proto: Any, *, input_hw: tuple[int, int] | None = None,
              name: str | None = None) -> tuple[OnnxModel, dict[str, jax.Array]]:
    """An ``onnx.ModelProto`` as a jaxviz model and its parameters.

    Args:
      proto: the parsed model (``onnx.load``; the io reader checks untrusted files first).
      input_hw: the input size (H, W) when the file leaves it open (default 224 x 224); must match a
        size the file fixes.
      name: the model's name (default: the graph's name).

    Returns:
      ``(model, params)``: params ``{initialiser name: float32 array}`` of the float initialisers read as
      weights; the others (shapes, indices, settings) are static constants inside the model.

    Raises:
      JaxvizError: an unsupported op, attribute or graph (one line naming the op, node and opset).
    """
    from onnx import numpy_helper

    g = proto.graph
    opset = opset_of(proto)
    nodes = _check_graph(g, opset)
    inits = {i.name: i for i in g.initializer}
    inputs = [i for i in g.input if i.name not in inits]
    if len(inputs) != 1:
        raise JaxvizError(f"the ONNX graph has {len(inputs)} inputs; jaxviz models take one image input "
                          "(use jaxviz.nn.onnx.run_graph for others)")
    if not g.output:
        raise JaxvizError("the ONNX graph has no output")
    static_slot = {i for n in nodes for k, i in enumerate(n.inputs) if k in STATIC_INPUTS.get(n.op, ())}
    weight_slot = {i for n in nodes for k, i in enumerate(n.inputs) if k not in STATIC_INPUTS.get(n.op, ())}
    params, constants = {}, {}
    for k, init in inits.items():
        for d in init.dims:
            if d < 0 or d > MAX_ELEMENTS:
                raise JaxvizError(f"ONNX initialiser {show(repr(k), 120)} has a dimension out of range ({d})")
        if int(np.prod([int(d) for d in init.dims], dtype=object)) > MAX_ELEMENTS:
            raise JaxvizError(f"ONNX initialiser {show(repr(k), 120)} is too large ({list(init.dims)})")
        arr = numpy_helper.to_array(init)
        if _float(init) and k in weight_slot and k not in static_slot:
            params[k] = jnp.asarray(arr, jnp.float32)
        else:
            constants[k] = arr
    inp = inputs[0]
    dims = _dims(inp)
    if len(dims) == 4:
        c_first = not (dims[3] in (1, 3, 4) and dims[1] not in (1, 3, 4))
        c, hw = (dims[1], dims[2:]) if c_first else (dims[3], dims[1:3])
        fixed = tuple(hw)
        if input_hw is not None:
            if None not in fixed and tuple(input_hw) != fixed:
                raise JaxvizError(f"input_hw {tuple(input_hw)} differs from the {fixed[0]}x{fixed[1]} the file fixes")
            hw = tuple(input_hw)
        else:
            hw = tuple(h if h else DEFAULT_SIZE for h in hw)
        if c is None:
            raise JaxvizError("the ONNX graph's input leaves its channels open; jaxviz needs them fixed")
        input_shape = (*hw, c)
    elif len(dims) >= 2 and None not in dims[1:]:
        c_first, fixed, input_shape = False, (None, None), tuple(dims[1:])
    else:
        raise JaxvizError(f"the ONNX graph's input {show(repr(inp.name), 120)} has shape {dims}; jaxviz needs "
                          "N x C x H x W, N x H x W x C or a fixed N x ... input")
    for d in input_shape:
        if not 0 < int(d) <= 2 ** 20:
            raise JaxvizError(f"the ONNX graph's input has a dimension out of range ({d})")
    paths = {id(n): module_path(pn) for n, pn in zip(nodes, _proto_nodes(g, nodes))}
    layers, aliases = _names(nodes, paths)
    model = OnnxModel(
        name=name or g.name or "onnx_model", input_shape=tuple(int(s) for s in input_shape), nodes=tuple(nodes),
        constants=constants, input_name=inp.name, output_names=tuple(o.name for o in g.output),
        channels_first=c_first, layer_values=tuple(layers), aliases=tuple(aliases), opset=opset,
        _param_shapes={k: tuple(v.shape) for k, v in params.items()},
        _fixed_hw=tuple(fixed) if len(dims) == 4 else (None, None),
        graph_bytes=without_initialisers(proto, set(params)).SerializeToString(),
    )
    model.shapes()  # traced once now: shape arithmetic resolved, bad ops and sizes refused at import
    return model, params


def _repeated(field) -> bool:
    rep = getattr(field, "is_repeated", None)  # protobuf >= 6.31; older ones have only .label
    return bool(rep) if rep is not None else field.label == field.LABEL_REPEATED


def without_initialisers(proto: Any, drop: set[str]) -> Any:
    """A copy of ``proto`` whose graph lacks the initialisers named in ``drop``; the dropped tensors are
    never copied (a ViT-B's 330 MB of weights stay where they are)."""
    graph = _copy_fields(proto.graph, type(proto.graph)(), {
        "initializer": lambda dst, ts: dst.initializer.extend(t for t in ts if t.name not in drop)})
    out = _copy_fields(proto, type(proto)(), {"graph": lambda dst, g: None})
    out.graph.CopyFrom(graph)
    return out


def _copy_fields(src, dst, special: dict):
    """Every set field of ``src`` onto ``dst`` (repeated extended, messages copied, scalars set), except
    the fields named in ``special``, which go through their function ``(dst, value)``."""
    for field, value in src.ListFields():
        if field.name in special:
            special[field.name](dst, value)
        elif _repeated(field):
            getattr(dst, field.name).extend(value)
        elif field.message_type is not None:
            getattr(dst, field.name).CopyFrom(value)
        else:
            setattr(dst, field.name, value)
    return dst


def _proto_nodes(g, nodes):
    by_name = {}
    for i, n in enumerate(g.node):
        by_name[id(n)] = n
    protos = list(g.node)
    names = [(n.name or f"{n.op_type}_{i}") for i, n in enumerate(protos)]
    index = {}
    for nm, p in zip(names, protos):
        index.setdefault(nm, []).append(p)
    return [index[n.name].pop(0) for n in nodes]


def run_graph(proto: Any, inputs: Mapping[str, Any] | Sequence[Any]) -> list[np.ndarray]:
    """Run an ONNX graph on raw input arrays in the graph's own layout (no image semantics), eagerly
    with the same handlers as :func:`from_onnx`: float inputs as JAX arrays, the others (and any input
    an op reads as a setting) static. Returns the graph outputs as NumPy arrays of their declared types."""
    from onnx import numpy_helper

    g = proto.graph
    opset = opset_of(proto)
    nodes = _check_graph(g, opset)
    inits = {i.name: numpy_helper.to_array(i) for i in g.initializer}
    real = [i for i in g.input if i.name not in inits]
    if not isinstance(inputs, Mapping):
        inputs = {i.name: v for i, v in zip(real, inputs)}
    static_slot = {i for n in nodes for k, i in enumerate(n.inputs) if k in STATIC_INPUTS.get(n.op, ())}
    feeds = dict(inits)
    feeds.update({k: np.asarray(v) for k, v in inputs.items()})
    for k, v in list(feeds.items()):
        if v.dtype.kind == "f" and k not in static_slot:
            feeds[k] = jnp.asarray(v, jnp.float32)
    model = OnnxModel(name="graph", input_shape=(1,), nodes=tuple(nodes), constants={}, input_name="",
                      output_names=tuple(o.name for o in g.output), channels_first=False, layer_values=(),
                      aliases=(), opset=opset)
    env = model._forward({}, None, set(model.output_names), feeds=feeds)
    outs = []
    for o in g.output:
        v = np.asarray(env[o.name])
        code = o.type.tensor_type.elem_type
        if code in O._DTYPES:
            v = v.astype(O._DTYPES[code])
        outs.append(v)
    return outs

"""Automatic distillation taps for a model without a preset: a transformer's blocks, else the last pre-activation
tensor of each stage of a CNN.

:func:`auto_taps` traces one probe forward of the model at its input size (forward hooks on every
submodule, in eval mode, activations temporarily not inplace). A model with a *block sequence of token tensors*
(a ViT / DeiT / Swin / hybrid / MLP-Mixer: :mod:`~mgd_lightning.distill.token_taps`) gets its block outputs, as
``(B, C, H, W)`` maps over the patch grid: evenly spaced blocks of a plain ViT, the stage ends of a hierarchical one.
Any other model is a CNN, and gets this rule:

1. **Stages** are the spatial sizes of the ``Conv2d`` outputs, in the order they first appear (the runs
   of equal spatial size). (A ViT's patch embedding is its only convolution, and its 14 x 14 output is
   flattened into tokens, neither reduced nor activated: a ViT has no stage; its blocks are tapped instead, above.)
   A convolution that keeps its input's size, with a larger size after it, is a squeeze-and-excitation
   gate (1 x 1) inside a stage: not a stage. A stage is entered by a strided convolution or a (not
   adaptive) pooling, or has the input's size (VGG): a 1 x 1 convolution after the global pool (timm's
   MobileNet-V3 head) is not a stage.
2. **Stage output** ``X``: the input of the first module call (in call order, a container before its
   children) that takes an NCHW tensor of the stage's size, other than the model input, and returns the
   next stage's size (after the last stage: a smaller one), with nothing of the stage's size computed after
   it: the next stage, a pooling layer, the classifier's global pool (not a squeeze-and-excitation pool
   inside the stage, nor a container of all stages). When the network pools
   functionally (DenseNet's ``F.adaptive_avg_pool2d``, MNASNet's ``x.mean``), ``X`` is the output of the last
   module returning the stage's size, and only rules a-e below apply (so a ViT's patch embedding, which
   no module reduces and no activation follows, is no stage).
3. **Its pre-activation**, the tapped tensor, in this order of preference:

   a. ``X`` is the output of an activation module (ReLU, ReLU6, SiLU, GELU, Hardswish, ...): the input of
      that call. For a ResNet-like block whose last op is a residual add without a module, this is the sum
      before the block's last ReLU: ``Tap("layerK.N.relu", "input")``, the ResNet preset's tensor.
   b. ``X`` is the output of a functional activation (``F.relu(self.bn(x))``, ``torch.relu``, ``x.relu_()``,
      ..., traced with a ``TorchFunctionMode``; those inside activation modules are theirs): its input, the output
      of the module that made it (a plain CNN's BatchNorm outputs; GoogLeNet's stem stages, ``conv1.bn``,
      ``conv3.bn``).
   c. ``X`` is normalised then activated, by a module or functionally (a pre-activation BN, DenseNet's
      transitions): the input of that activation.
   d. ``X`` itself is then activated functionally: ``X``, as the output of the innermost module that returned
      it (DenseNet's last stage: ``features.norm5``, then ``F.relu(features, inplace=True)``).
   e. Otherwise (linear bottlenecks: MobileNet-V3, EfficientNet, MNASNet) the last activation input of the
      stage's size computed before ``X``: the expanded depthwise-BN output of the stage's last unit (the
      MobileNet-V2 preset's tensor, paper Fig. 3b).
   f. Otherwise (no activation at the stage's size: ConvNeXt, whose GELU runs channels-last; GoogLeNet's
      inception stages, which end on a concatenation of activated branches: no pre-activation tensor exists)
      ``X`` itself, the stage output.

   A candidate is kept only if a hook can take exactly it (the module call is the module's last call in
   the forward) and nothing modifies it in place later; the activation modules that would overwrite it are
   listed in ``Tap.non_inplace``, and a tensor that a functional activation overwrites in place (b, c, d)
   is kept as a copy (``Tap.clone``).

The taps come highest resolution first, one per stage, the stem's too (the ResNet presets skip it: there
``auto_taps(model)[1:]`` equals the preset). :class:`~mgd_lightning.DistillationModule` pairs a teacher and a
student of which one side is automatic by spatial size: stages whose size exists on one side only are
dropped. With a transformer's taps on either side (:func:`pair_by_size`), when the sizes found on both sides do not
pair every tap of the shorter side (a ViT's blocks share one grid), the taps are paired in order instead, the last
``n`` of each side, and each teacher map is resampled to its student's grid
(:func:`~mgd_lightning.distill.token_grid.resample_to`).

Taps given by name on a transformer learn their layout from one probe forward (:func:`token_layouts`): a block
output of ``(B, N, C)`` tokens becomes a ``"tokens"`` tap over the patch grid.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import torch
import torch.nn as nn
from torch.overrides import TorchFunctionMode

from .feature_taps import FeatureTaps, Tap
from .token_taps import looks_like_transformer, token_block_taps, token_info

__all__ = ["auto_taps", "pair_by_size", "resample_teacher_taps", "tap_shapes", "token_layouts", "ACTIVATIONS"]

#: activation modules (classes); timm's and other libraries' own classes are recognised by class name
ACTIVATIONS: tuple[type[nn.Module], ...] = (
    nn.ReLU, nn.ReLU6, nn.SiLU, nn.GELU, nn.Hardswish, nn.Mish, nn.LeakyReLU, nn.ELU, nn.CELU, nn.SELU,
    nn.PReLU, nn.RReLU, nn.Hardtanh, nn.Tanh, nn.Softplus,
)
_ACTIVATION_NAMES = {c.__name__.lower() for c in ACTIVATIONS} | {
    "swish", "hardswishme", "swishme", "mishme", "gelutanh", "quickgelu", "hardmish", "hardswish", "starrelu",
}
_NORMS = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm, nn.modules.instancenorm._InstanceNorm)


def _is_activation(module: nn.Module) -> bool:
    return isinstance(module, ACTIVATIONS) or type(module).__name__.lower() in _ACTIVATION_NAMES


@dataclass
class _Call:
    name: str
    module: nn.Module
    start: int
    end: int = -1
    inp: torch.Tensor | None = None
    out: torch.Tensor | None = None
    inp_version: int = 0
    out_version: int = 0
    leaf: bool = True
    consumers: list[int] = field(default_factory=list)


@dataclass
class _Func:
    """A functional activation call (``F.relu``, ``torch.relu_``, ``x.relu()``, ...) outside activation modules."""

    time: int
    inp: torch.Tensor
    inp_version: int
    out: torch.Tensor
    out_version: int


#: functional activations (by name, without a trailing ``_``): they activate a tensor no module returns
_FUNCTIONAL_ACTIVATIONS = {
    "relu", "relu6", "silu", "gelu", "hardswish", "mish", "leaky_relu", "elu", "celu", "selu", "hardtanh",
    "softplus", "prelu", "rrelu",
}


class _FunctionalActivations(TorchFunctionMode):
    """Records the functional activation calls of a forward (not those inside an activation module)."""

    def __init__(self, calls: list[_Call], open_stack: list[int], clock: list[int], funcs: list[_Func]) -> None:
        super().__init__()
        self.calls, self.open_stack, self.clock, self.funcs = calls, open_stack, clock, funcs

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        inp = args[0] if args else None
        record = (name.rstrip("_") in _FUNCTIONAL_ACTIVATIONS and isinstance(inp, torch.Tensor)
                  and not (self.open_stack and _is_activation(self.calls[self.open_stack[-1]].module)))
        version = inp._version if record else 0
        out = func(*args, **kwargs)
        if record and isinstance(out, torch.Tensor):
            self.clock[0] += 1
            self.funcs.append(_Func(self.clock[0], inp, version, out, out._version))
        return out


def _spatial(t: torch.Tensor | None) -> tuple[int, ...] | None:
    return tuple(t.shape[2:]) if isinstance(t, torch.Tensor) and t.dim() == 4 else None


def _smaller(a: tuple[int, ...], b: tuple[int, ...]) -> bool:
    return a != b and all(x <= y for x, y in zip(a, b))


def _trace(model: nn.Module, example: torch.Tensor) -> tuple[list[_Call], list[_Func]]:
    calls: list[_Call] = []
    funcs: list[_Func] = []
    open_calls: dict[int, list[int]] = {}
    open_stack: list[int] = []  # the module calls under way, innermost last
    clock = [0]
    handles = []

    def pre(name, module, args):
        clock[0] += 1
        call = _Call(name, module, clock[0], leaf=not any(True for _ in module.children()))
        if args and isinstance(args[0], torch.Tensor):
            call.inp, call.inp_version = args[0], args[0]._version
        open_calls.setdefault(id(module), []).append(len(calls))
        open_stack.append(len(calls))
        calls.append(call)

    def post(name, module, args, output):
        clock[0] += 1
        index = open_calls[id(module)].pop()
        if index in open_stack:
            open_stack.remove(index)
        call = calls[index]
        call.end = clock[0]
        if isinstance(output, torch.Tensor):
            call.out, call.out_version = output, output._version

    for name, module in model.named_modules():
        if module is model:
            continue
        handles.append(module.register_forward_pre_hook(lambda m, a, n=name: pre(n, m, a)))
        handles.append(module.register_forward_hook(lambda m, a, o, n=name: post(n, m, a, o)))
    inplace = {m: m.inplace for m in model.modules() if isinstance(getattr(m, "inplace", None), bool)}
    training = {m: m.training for m in model.modules()}
    try:
        for m in inplace:
            m.inplace = False
        model.eval()
        with torch.no_grad(), _FunctionalActivations(calls, open_stack, clock, funcs):
            model(example)
    finally:
        for h in handles:
            h.remove()
        for m, flag in inplace.items():
            m.inplace = flag
        for m, flag in training.items():
            m.training = flag
    return calls, funcs


def _stage_taps(calls: list[_Call], example: torch.Tensor,
                funcs: Sequence[_Func] = ()) -> list[tuple[Tap, tuple[int, ...]]]:
    last_call: dict[str, int] = {}
    for i, c in enumerate(calls):
        last_call[c.name] = i
    by_input: dict[int, list[int]] = {}
    by_output: dict[int, list[int]] = {}
    for i, c in enumerate(calls):
        if c.inp is not None:
            by_input.setdefault(id(c.inp), []).append(i)
        if c.out is not None:
            by_output.setdefault(id(c.out), []).append(i)

    def unmodified(t: torch.Tensor, version: int) -> bool:
        return t._version == version  # nothing changed it in place after this point (checked after the forward)

    def inplace_consumers(t: torch.Tensor) -> tuple[str, ...]:
        return tuple(dict.fromkeys(
            calls[j].name for j in by_input.get(id(t), ()) if hasattr(calls[j].module, "inplace")))

    def act_input_tap(i: int) -> Tap | None:
        """The input of activation call ``i`` as a tap: the activation's input, or its producer's output."""
        c = calls[i]
        if c.inp is None or not unmodified(c.inp, c.inp_version):
            return None
        keep = inplace_consumers(c.inp) or (c.name,)
        if last_call[c.name] == i:
            return Tap(c.name, "input", keep)
        for j in reversed(by_output.get(id(c.inp), ())):
            p = calls[j]
            if last_call[p.name] == j and p.out_version == c.inp_version:
                return Tap(p.name, "output", keep)
        return None

    def output_tap(t: torch.Tensor, version: int) -> Tap | None:
        if not unmodified(t, version):
            return None
        for j in sorted(by_output.get(id(t), ()), key=lambda j: calls[j].end, reverse=True):
            p = calls[j]
            if last_call[p.name] == j and p.out_version == version:
                return Tap(p.name, "output", inplace_consumers(t))
        return None

    func_by_input: dict[int, list[_Func]] = {}
    func_by_output: dict[int, list[_Func]] = {}
    for f in funcs:
        func_by_input.setdefault(id(f.inp), []).append(f)
        func_by_output.setdefault(id(f.out), []).append(f)

    def pre_functional_tap(t: torch.Tensor, version: int) -> Tap | None:
        """``t`` (at ``version``), the input of a functional activation, as the output of the innermost module
        that returned it; cloned when the forward changes it in place later (``F.relu(x, inplace=True)``)."""
        for j in reversed(by_output.get(id(t), ())):  # the innermost (a child starts after its parent)
            p = calls[j]
            if last_call[p.name] == j and p.out_version == version:
                return Tap(p.name, "output", inplace_consumers(t), clone=not unmodified(t, version))
        return None

    convs = [(i, _spatial(c.inp), _spatial(c.out)) for i, c in enumerate(calls)
             if isinstance(c.module, nn.Conv2d) and _spatial(c.out) is not None]
    # a convolution that keeps a size that a larger one follows is a squeeze-and-excitation gate (1 x 1)
    # inside a stage, not a stage
    conv_sizes: list[tuple[int, ...]] = []
    for i, s_in, s in convs:
        gate = s_in == s and any(j > i and _smaller(s, other) for j, _, other in convs)
        if not gate and s not in conv_sizes:
            conv_sizes.append(s)
    pools = [c for c in calls if _spatial(c.out) is not None and "pool" in type(c.module).__name__.lower()]
    # a stage is reached by a strided convolution or a (not adaptive) pooling, or is the input's size (VGG);
    # a 1 x 1 convolution after the global pool (timm's MobileNet-V3 head) is no stage
    entered = {s for _, s_in, s in convs if s_in is not None and _smaller(s, s_in)} | {_spatial(example)} | {
        _spatial(c.out) for c in pools if "adaptive" not in type(c.module).__name__.lower()}
    conv_sizes = [s for s in conv_sizes if s in entered]
    reduced = set(conv_sizes) | {_spatial(c.out) for c in pools}
    found: list[tuple[Tap, tuple[int, ...]]] = []
    for k, s in enumerate(conv_sizes):
        # the next stage's size (any smaller size after the last stage)
        following = {conv_sizes[k + 1]} if k + 1 < len(conv_sizes) else reduced
        # 2. the stage output X (tensor and its version at that point)
        x = x_version = None
        for c in calls:
            if (c.inp is not None and c.inp is not example and _spatial(c.inp) == s
                    and _spatial(c.out) in following and _smaller(_spatial(c.out), s)
                    and not any(d.start > c.end and _spatial(d.out) == s for d in calls)):
                x, x_version, x_time = c.inp, c.inp_version, c.start
                break
        fallback = x is None
        if fallback:
            last = max((c for c in calls if _spatial(c.out) == s), key=lambda c: c.end)
            x, x_version, x_time = last.out, last.out_version, last.end
        produced = [j for j in by_output.get(id(x), ()) if calls[j].out_version == x_version]
        produced_at = min((calls[j].end for j in produced), default=x_time)
        tap = None
        # a. X is an activation's output
        for j in produced:
            if _is_activation(calls[j].module) and calls[j].leaf:
                tap = act_input_tap(j)
                if tap is not None:
                    break
        # b. X is a functional activation's output (F.relu(self.bn(x))): the input of that activation
        if tap is None:
            for f in func_by_output.get(id(x), ()):
                if f.out_version == x_version:
                    tap = pre_functional_tap(f.inp, f.inp_version)
                    if tap is not None:
                        break
        # c. X normalised, then activated (by a module, or functionally)
        if tap is None:
            for j in by_input.get(id(x), ()):
                n = calls[j]
                if isinstance(n.module, _NORMS) and n.out is not None:
                    acts = [k for k in by_input.get(id(n.out), ()) if _is_activation(calls[k].module)]
                    if acts:
                        tap = act_input_tap(acts[0])
                    elif any(f.inp_version == n.out_version for f in func_by_input.get(id(n.out), ())):
                        tap = pre_functional_tap(n.out, n.out_version)
                    if tap is not None:
                        break
        # d. X itself activated functionally (DenseNet: features.norm5, then F.relu(inplace=True))
        if tap is None and any(f.inp_version == x_version for f in func_by_input.get(id(x), ())):
            tap = pre_functional_tap(x, x_version)
        # e. the last activation input of this size computed before X
        if tap is None:
            for j in range(len(calls) - 1, -1, -1):
                c = calls[j]
                if c.start < produced_at and _is_activation(c.module) and c.leaf and _spatial(c.inp) == s:
                    tap = act_input_tap(j)
                    if tap is not None:
                        break
        # f. X itself (not for a functional ending: a ViT's patch embedding is no stage)
        if tap is None and not fallback:
            tap = output_tap(x, x_version)
        if tap is not None and all(tap.module != t.module or tap.kind != t.kind for t, _ in found):
            found.append((tap, s))
    return found


def _probe(model: nn.Module, size: tuple[int, ...], what: str) -> tuple[torch.Tensor, list[_Call], list[_Func]]:
    """The probe input ``(1, *size)`` and the trace of its forward; a one-line ``ValueError`` when the model cannot
    run it."""
    if len(size) != 3:
        raise ValueError(f"input_size must be (C, H, W), e.g. (3, 224, 224); got {size}")
    param = next(model.parameters(), None)
    example = torch.zeros(1, *size, device=param.device if param is not None else "cpu")
    try:
        calls, funcs = _trace(model, example)
    except (RuntimeError, ValueError, TypeError, IndexError, AssertionError) as err:
        raise ValueError(
            f"{what} for {type(model).__name__}: the model cannot run a (1, {', '.join(map(str, size))}) "
            f"probe input ({type(err).__name__}: {str(err).strip().splitlines()[0] if str(err).strip() else ''}); "
            "give the training input size (input_size=(C, H, W))"
        ) from err
    return example, calls, funcs


def auto_taps(model: nn.Module, input_size: Sequence[int] = (3, 224, 224), num_token_taps: int = 4) -> list[Tap]:
    """A transformer's block outputs, else the last pre-activation tensor of each resolution stage of a CNN, found by
    tracing one forward.

    Args:
        model: a CNN or a vision transformer (torchvision, timm or own); it is left as it was (mode, inplace flags,
            no hooks).
        input_size: (C, H, W) of the probe input, the model's training input size.
        num_token_taps: how many blocks of a plain (one-grid) transformer to tap: the ends of that many equal parts
            of its block sequence (a hierarchical one, e.g. Swin, gets its stage ends).

    Returns:
        A transformer: one token :class:`Tap` per chosen block (``layout`` ``"tokens"`` or ``"nhwc"``,
        :mod:`~mgd_lightning.distill.token_taps`). A CNN: one :class:`Tap` per stage, highest resolution first
        (rule: the module docstring).

    Raises:
        ValueError: the model has neither token blocks nor spatial stages (a pure MLP), or cannot run the probe
        input.
    """
    size = tuple(int(v) for v in input_size)
    example, calls, funcs = _probe(model, size, "automatic taps")
    tokens = token_block_taps(model, calls, example, num_token_taps)
    if tokens:
        return tokens
    taps = [tap for tap, _ in _stage_taps(calls, example, funcs)]
    if not taps:
        how = ("pass teacher_taps=[...] / student_taps=[...] with module names from model.named_modules() (a name, "
               "or 'name:input' for the input of the module's last call)")
        sizes = sorted({s for c in calls if isinstance(c.module, nn.Conv2d) and (s := _spatial(c.out))}, reverse=True)
        if not sizes:
            raise ValueError(
                f"automatic taps for {type(model).__name__}: no spatial stages found (no nn.Conv2d module returns "
                f"NCHW feature maps: the network convolves functionally, or not at all) and no token grid to map (no "
                f"block sequence returns (B, N, C) tokens over a patch grid): {how}"
            )
        raise ValueError(
            f"automatic taps for {type(model).__name__}: no spatial stages found with a tensor a hook can take "
            f"(nn.Conv2d outputs of sizes {sizes}), and no block sequence of (B, N, C) tokens over their grid: either "
            "no module goes on with them as feature maps, or each stage's pre-activation tensor is made "
            f"by functional ops (x * s, torch.cat, ...) that no module returns: {how}"
        )
    return taps


def token_layouts(model: nn.Module, taps: Sequence[Tap], input_size: Sequence[int] = (3, 224, 224)) -> list[Tap]:
    """``taps`` (given by name) with the layout of the tensors they take: a plain tap (``layout="nchw"``, no
    ``resample``) whose tensor is ``(B, N, C)`` tokens over a patch grid, or a channels-last ``(B, H, W, C)`` stage,
    becomes a ``"tokens"`` / ``"nhwc"`` tap (:func:`~mgd_lightning.distill.token_taps.token_info`); the others are
    returned as they are. Probes only a model that may hold tokens (a ``LayerNorm``, attention, timm's
    ``num_prefix_tokens``): a CNN's taps come back without a forward. The taps of a model that cannot run the probe
    come back as they are too (the tap-shape probe that follows names the input size).

    Raises a one-line ``ValueError`` for a tap whose tensor is 3-D with no patch grid found (pass a
    ``Tap(..., layout="tokens", grid=(H, W), prefix_tokens=P)``)."""
    taps = list(taps)
    if not any(not t.mapped for t in taps) or not looks_like_transformer(model):
        return taps
    size = tuple(int(v) for v in input_size)
    try:
        example, calls, _ = _probe(model, size, "token taps")
    except ValueError:  # the shape probe that follows names the input size
        return taps
    last: dict[str, _Call] = {}
    for c in calls:
        last[c.name] = c
    out = []
    for tap in taps:
        c = last.get(tap.module)
        if tap.mapped or c is None:
            out.append(tap)
            continue
        tensor, time = (c.out, c.end) if tap.kind == "output" else (c.inp, c.start)
        info = token_info(model, calls, tensor, time, example)
        if info is not None:
            tap = replace(tap, layout=info[0], grid=info[1] if info[0] == "tokens" else None, prefix_tokens=info[2])
        elif isinstance(tensor, torch.Tensor) and tensor.dim() == 3:
            raise ValueError(
                f"tap {tap.module!r} of {type(model).__name__} gives {tuple(tensor.shape)} tokens over no patch grid "
                "found (no nn.Conv2d output before it whose H * W fits N); pass Tap(name, layout='tokens', "
                "grid=(H, W), prefix_tokens=P)"
            )
        out.append(tap)
    return out


def tap_shapes(model: nn.Module, taps: Sequence[Tap], input_size: Sequence[int]) -> list[tuple[int, ...]]:
    """The shape (1, C, H, W) of each tapped tensor for one probe input of ``input_size`` (eval mode)."""
    param = next(model.parameters(), None)
    example = torch.zeros(1, *input_size, device=param.device if param is not None else "cpu")
    inplace = {m: m.inplace for m in model.modules() if isinstance(getattr(m, "inplace", None), bool)}
    training = {m: m.training for m in model.modules()}
    feature_taps = FeatureTaps(model, taps)
    try:
        model.eval()
        with torch.no_grad():
            model(example)
        return [tuple(f.shape) for f in feature_taps.features]
    finally:
        feature_taps.remove()
        for m, flag in inplace.items():
            m.inplace = flag
        for m, flag in training.items():
            m.training = flag


def _spatial_shapes(
    teacher: nn.Module, teacher_taps: Sequence[Tap], student: nn.Module, student_taps: Sequence[Tap],
    input_size: Sequence[int],
) -> list[list[tuple[int, ...]]]:
    """The ``(H, W)`` of each teacher tap and each student tap at ``input_size``; a one-line ``ValueError`` when a
    network cannot run the probe."""
    shapes = []
    for role, model, taps in (("teacher", teacher, teacher_taps), ("student", student, student_taps)):
        try:
            shapes.append([tuple(s[2:]) for s in tap_shapes(model, taps, input_size)])
        except (RuntimeError, TypeError, IndexError, AssertionError) as err:
            raise ValueError(
                f"{role} {type(model).__name__} cannot run a (1, {', '.join(map(str, input_size))}) probe input "
                f"({type(err).__name__}: {str(err).strip().splitlines()[0] if str(err).strip() else ''}); "
                "input_size must be the (C, H, W) of the training images"
            ) from err
    return shapes


def resample_teacher_taps(
    teacher: nn.Module, teacher_taps: Sequence[Tap], student: nn.Module, student_taps: Sequence[Tap],
    input_size: Sequence[int],
) -> list[Tap]:
    """The paired ``teacher_taps`` (as many as ``student_taps``, in pair order), each whose ``(H, W)`` at
    ``input_size`` differs from its student tap's resampled to it (``Tap.resample``), when a transformer's (token) tap
    is on either side; ``teacher_taps`` as they are otherwise (CNN pairs must have equal sizes)."""
    if not any(t.layout != "nchw" for t in (*teacher_taps, *student_taps)):
        return list(teacher_taps)
    t_shapes, s_shapes = _spatial_shapes(teacher, teacher_taps, student, student_taps, input_size)
    return [t if ts == ss else replace(t, resample=ss) for t, ts, ss in zip(teacher_taps, t_shapes, s_shapes)]


def pair_by_size(
    teacher: nn.Module, teacher_taps: Sequence[Tap], student: nn.Module, student_taps: Sequence[Tap],
    input_size: Sequence[int],
) -> tuple[list[Tap], list[Tap]]:
    """Teacher and student taps paired by spatial size at ``input_size``: the sizes found on both sides, in
    the teacher's order (for a size tapped twice on one side, its last tap). Raises ``ValueError`` when the
    two sides share no size.

    With a transformer's (token) tap on either side, when the common sizes do not pair all ``n`` taps of the shorter
    side (a plain ViT's blocks share one grid): the last ``n`` taps of each side in order, each teacher tap whose grid
    differs from its student's resampled to it (``Tap.resample``: pooled where it shrinks, bilinear where it
    grows, :func:`~mgd_lightning.distill.token_grid.resample_to`)."""
    shapes = _spatial_shapes(teacher, teacher_taps, student, student_taps, input_size)
    t_by_size = {s: t for t, s in zip(teacher_taps, shapes[0])}
    s_by_size = {s: t for t, s in zip(student_taps, shapes[1])}
    common = [s for s in t_by_size if s in s_by_size]
    n = min(len(teacher_taps), len(student_taps))
    if len(common) < n and any(t.layout != "nchw" for t in (*teacher_taps, *student_taps)):
        # a transformer's taps: in order, the last n of each side, the teacher's map resampled to the student's grid
        t_last, s_last = slice(len(teacher_taps) - n, None), slice(len(student_taps) - n, None)
        t_taps = [t if ts == ss else replace(t, resample=ss)
                  for t, ts, ss in zip(teacher_taps[t_last], shapes[0][t_last], shapes[1][s_last])]
        return t_taps, list(student_taps[s_last])
    if not common:
        raise ValueError(
            f"teacher {type(teacher).__name__} and student {type(student).__name__} have no tap of the same "
            f"spatial size at input {tuple(input_size)}: teacher "
            f"{list(zip([t.module for t in teacher_taps], shapes[0]))}, student "
            f"{list(zip([t.module for t in student_taps], shapes[1]))}; pass teacher_taps / student_taps"
        )
    return [t_by_size[s] for s in common], [s_by_size[s] for s in common]

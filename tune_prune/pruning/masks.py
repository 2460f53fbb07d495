"""Masks: hold pruned weights at exactly zero while a model trains, without changing it.

A mask dict is ``{module_name: {"weight": 0/1 tensor, "bias": 0/1 tensor}}``, each
mask the shape of the tensor it masks. Wrapping keeps the model object, its module
classes and its names (NNI scripts rely on that): it only adds hooks.

- a forward pre-hook re-applies the masks before every forward pass, so forward
  passes see masked weights even if something wrote into them;
- a gradient hook masks the gradient, so optimizers build no momentum on pruned
  weights;
- a global optimizer step post-hook re-applies the masks after every
  ``optimizer.step()`` of any optimizer, so pruned weights are exactly zero between
  steps too, whatever momentum or weight decay the optimizer carries.
"""

from __future__ import annotations

import os
import weakref
from collections.abc import Mapping

import torch
from torch import nn
from torch.optim.optimizer import register_optimizer_step_post_hook

from tune_prune.atomic import atomic_torch_save
from tune_prune.errors import ConfigError

Masks = dict[str, dict[str, torch.Tensor]]

_MASKS_ATTR = "_tune_prune_masks"
_HANDLES_ATTR = "_tune_prune_handles"
_WRAPPED: weakref.WeakSet[nn.Module] = weakref.WeakSet()
_STEP_HOOK = None


def _reapply_after_step(optimizer: torch.optim.Optimizer, *_args: object, **_kwargs: object) -> None:
    """Re-zero the masked tensors this optimizer just stepped (and only those).

    Other wrapped models are untouched: a plain model's step must not pay for masks
    of an unrelated wrapped one (a global re-apply made benchmarks compare masked
    against masked-plus-plain).
    """
    if not _WRAPPED:
        return
    stepped = {id(p) for group in optimizer.param_groups for p in group["params"]}
    for module in list(_WRAPPED):
        for pname, mask in getattr(module, _MASKS_ATTR, {}).items():
            param = getattr(module, pname, None)
            if isinstance(param, torch.Tensor) and id(param) in stepped:
                with torch.no_grad():
                    param.mul_(mask)


def _ensure_step_hook() -> None:
    global _STEP_HOOK
    if _STEP_HOOK is None:
        _STEP_HOOK = register_optimizer_step_post_hook(_reapply_after_step)


@torch.no_grad()
def _apply_module_masks(module: nn.Module) -> None:
    for pname, mask in getattr(module, _MASKS_ATTR, {}).items():
        param = getattr(module, pname, None)
        if isinstance(param, torch.Tensor):
            param.mul_(mask)


def _forward_pre_hook(module: nn.Module, _args: object) -> None:
    _apply_module_masks(module)


def check_masks(
    model: nn.Module,
    masks: Mapping[str, Mapping[str, torch.Tensor]],
    error: type[Exception] = ConfigError,
) -> dict[str, nn.Module]:
    """Reject masks naming a module or tensor ``model`` lacks, or of the wrong shape.

    The one validation every consumer of masks runs (wrapping, measuring, speedup);
    ``error`` is the exception class to raise (speedup raises SpeedupError). Returns
    ``model``'s modules by name, which callers need next anyway.
    """
    modules = dict(model.named_modules())
    for name, per_param in masks.items():
        if name not in modules:
            raise error(f"masks: module {name!r} is not in the model")
        for pname, mask in per_param.items():
            param = getattr(modules[name], pname, None)
            if not isinstance(param, torch.Tensor):
                raise error(f"masks[{name!r}]: the module has no tensor {pname!r}")
            if tuple(mask.shape) != tuple(param.shape):
                raise error(
                    f"masks[{name!r}][{pname!r}]: shape {tuple(mask.shape)} does not match "
                    f"the tensor's shape {tuple(param.shape)}"
                )
    return modules


def has_zeros(masks: Masks) -> bool:
    """Whether any mask prunes anything (an all-ones mask set leaves nothing to remove)."""
    return any(bool((m == 0).any()) for per in masks.values() for m in per.values())


def is_wrapped(model: nn.Module) -> bool:
    """True when any submodule of ``model`` carries masks."""
    return any(hasattr(m, _MASKS_ATTR) for m in model.modules())


def wrap_model(model: nn.Module, masks: Masks) -> nn.Module:
    """Hold ``masks`` on ``model`` (in place) until :func:`unwrap_model`; returns ``model``.

    Wrapping an already wrapped model replaces the masks of the named modules.
    """
    modules = check_masks(model, masks)
    _ensure_step_hook()
    for name, per_param in masks.items():
        module = modules[name]
        _remove_module_hooks(module)
        held = {}
        handles = [module.register_forward_pre_hook(_forward_pre_hook)]
        for pname, mask in per_param.items():
            param = getattr(module, pname)
            mask = mask.detach().to(device=param.device, dtype=param.dtype)
            held[pname] = mask
            if param.requires_grad:
                handles.append(param.register_hook(lambda grad, m=mask: grad * m))
        setattr(module, _MASKS_ATTR, held)
        setattr(module, _HANDLES_ATTR, handles)
        _apply_module_masks(module)
        _WRAPPED.add(module)
    return model


def _remove_module_hooks(module: nn.Module) -> None:
    for handle in getattr(module, _HANDLES_ATTR, []):
        handle.remove()
    for attr in (_HANDLES_ATTR, _MASKS_ATTR):
        if hasattr(module, attr):
            delattr(module, attr)
    _WRAPPED.discard(module)


def unwrap_model(model: nn.Module) -> nn.Module:
    """Remove every mask hook; the weights keep their zeros. Returns the same object."""
    for module in model.modules():
        if hasattr(module, _MASKS_ATTR):
            _apply_module_masks(module)
            _remove_module_hooks(module)
    return model


def held_masks(model: nn.Module) -> Masks:
    """The masks currently held on a wrapped model, keyed by module name."""
    return {
        name: dict(getattr(module, _MASKS_ATTR))
        for name, module in model.named_modules()
        if hasattr(module, _MASKS_ATTR)
    }


@torch.no_grad()
def apply_masks(model: nn.Module, masks: Masks) -> nn.Module:
    """Multiply the model's tensors by ``masks`` once (no hooks)."""
    modules = check_masks(model, masks)
    for name, per_param in masks.items():
        for pname, mask in per_param.items():
            param = getattr(modules[name], pname)
            param.mul_(mask.to(device=param.device, dtype=param.dtype))
    return model


def merge_masks(old: Masks | None, new: Masks | None) -> Masks:
    """Element-wise product of two mask dicts (a weight pruned in either stays pruned)."""
    out: Masks = {name: dict(per) for name, per in (old or {}).items()}
    for name, per_param in (new or {}).items():
        slot = out.setdefault(name, {})
        for pname, mask in per_param.items():
            slot[pname] = mask if pname not in slot else slot[pname] * mask.to(slot[pname].device)
    return out


def masks_to(masks: Masks, device: str | torch.device = "cpu") -> Masks:
    """A detached copy of ``masks`` on ``device``."""
    return {n: {p: m.detach().to(device).clone() for p, m in per.items()} for n, per in masks.items()}


def masks_from_zeros(model: nn.Module, names: list[str] | None = None) -> Masks:
    """Masks that mark the exact zeros of the named modules' weights and biases."""
    modules = dict(model.named_modules())
    out: Masks = {}
    for name in names if names is not None else [n for n in modules if n]:
        module = modules[name]
        per = {}
        for pname in ("weight", "bias"):
            param = getattr(module, pname, None)
            if isinstance(param, torch.Tensor):
                per[pname] = (param.detach() != 0).to(param.dtype)
        if per:
            out[name] = per
    return out


def save_masks(masks: Masks, path: str | os.PathLike[str]) -> None:
    """Write masks (on CPU) atomically; load with :func:`load_masks_file`."""
    atomic_torch_save(masks_to(masks, "cpu"), path)


def load_masks_file(path: str | os.PathLike[str]) -> Masks:
    """Read masks written by :func:`save_masks` (weights_only: no pickled objects)."""
    return torch.load(path, map_location="cpu", weights_only=True)

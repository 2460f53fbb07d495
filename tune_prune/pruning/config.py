"""config_list: validate NNI-style pruning configs and resolve them to concrete modules.

A config_list is a list of dicts. Each entry selects modules (``op_types``,
``op_names``, ``op_partial_names``; a module must satisfy every key given) and
either prunes them (``sparsity``/``sparsity_per_layer``: each layer, or
``total_sparsity``: over all selected layers, optionally capped per layer by
``max_sparsity_per_layer``) or removes them from earlier entries (``exclude``).
Later entries override earlier ones. Validation uses pydantic so every error names
the entry index, the key and the bad value.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator, model_validator
from torch import nn

from tune_prune.errors import ConfigError

DEFAULT_OP_TYPES: tuple[str, ...] = (
    "Conv1d",
    "Conv2d",
    "Conv3d",
    "ConvTranspose1d",
    "ConvTranspose2d",
    "ConvTranspose3d",
    "Linear",
    "Bilinear",
    "PReLU",
    "Embedding",
    "EmbeddingBag",
)
DEFAULT_MAX_SPARSITY_PER_LAYER = 0.99


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


class ConfigEntry(BaseModel):
    """One validated config_list entry (NNI 2.10 keys)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    op_types: list[str] | None = None
    op_names: list[str] | None = None
    op_partial_names: list[str] | None = None
    exclude: bool = False
    sparsity: float | None = None
    sparsity_per_layer: float | None = None
    total_sparsity: float | None = None
    max_sparsity_per_layer: float | dict[str, float] | None = None

    @field_validator("op_types", "op_names", "op_partial_names", mode="before")
    @classmethod
    def _string_list(cls, value: Any) -> Any:
        if value is None:
            return value
        if isinstance(value, str) or not isinstance(value, (list, tuple)):
            raise ValueError(f"must be a list of strings, got {value!r}")
        if not value:
            raise ValueError("must not be an empty list")
        for item in value:
            if not isinstance(item, str):
                raise ValueError(f"must be a list of strings, got item {item!r}")
        return list(value)

    @field_validator("exclude", mode="before")
    @classmethod
    def _strict_bool(cls, value: Any) -> Any:
        if not isinstance(value, bool):
            raise ValueError(f"must be true or false, got {value!r}")
        return value

    @field_validator("sparsity", "sparsity_per_layer", "total_sparsity", mode="before")
    @classmethod
    def _fraction(cls, value: Any) -> Any:
        if value is None:
            return value
        if not _is_number(value):
            raise ValueError(f"must be a number in [0, 1), got {value!r}")
        if not 0.0 <= float(value) < 1.0:
            raise ValueError(f"must be in [0, 1), got {value!r}")
        return float(value)

    @field_validator("max_sparsity_per_layer", mode="before")
    @classmethod
    def _cap(cls, value: Any) -> Any:
        if value is None:
            return value
        items = value.items() if isinstance(value, Mapping) else [(None, value)]
        for name, cap in items:
            where = f" for {name!r}" if name is not None else ""
            if not _is_number(cap) or not 0.0 < float(cap) <= 1.0:
                raise ValueError(f"must be a number in (0, 1]{where}, got {cap!r}")
        return value

    @model_validator(mode="after")
    def _one_sparsity(self) -> ConfigEntry:
        if self.op_types is None and self.op_names is None and self.op_partial_names is None:
            raise ValueError("needs at least one of op_types, op_names, op_partial_names")
        per_layer = [k for k in ("sparsity", "sparsity_per_layer") if getattr(self, k) is not None]
        if len(per_layer) == 2:
            raise ValueError("give only one of sparsity, sparsity_per_layer (they are aliases)")
        if self.exclude:
            if per_layer or self.total_sparsity is not None:
                raise ValueError("an exclude entry takes no sparsity")
            return self
        if per_layer and self.total_sparsity is not None:
            raise ValueError(
                f"give either {per_layer[0]} (per layer) or total_sparsity, not both "
                f"({per_layer[0]}={getattr(self, per_layer[0])!r}, "
                f"total_sparsity={self.total_sparsity!r})"
            )
        if not per_layer and self.total_sparsity is None:
            raise ValueError("needs one of sparsity, sparsity_per_layer, total_sparsity")
        return self

    @property
    def per_layer_sparsity(self) -> float | None:
        return self.sparsity if self.sparsity is not None else self.sparsity_per_layer


@dataclass
class ResolvedEntry:
    """A canonical entry: concrete module names sharing one sparsity target.

    ``per_layer`` entries have exactly one module (NNI expands per-layer entries
    into one ``total_sparsity`` entry per matched layer). ``index`` is the entry's
    position in the user's config_list, for error messages.
    """

    module_names: list[str]
    total_sparsity: float
    max_sparsity_per_layer: dict[str, float] = field(default_factory=dict)
    per_layer: bool = False
    index: int = 0

    def cap(self, name: str) -> float:
        return self.max_sparsity_per_layer.get(name, DEFAULT_MAX_SPARSITY_PER_LAYER)

    def to_config(self) -> dict[str, Any]:
        """The NNI canonical dict form of this entry."""
        out: dict[str, Any] = {"op_names": list(self.module_names), "total_sparsity": self.total_sparsity}
        if self.max_sparsity_per_layer:
            out["max_sparsity_per_layer"] = dict(self.max_sparsity_per_layer)
        return out


def _format_validation_error(index: int, err: ValidationError) -> str:
    lines = []
    for problem in err.errors():
        loc = ".".join(str(p) for p in problem["loc"] if p != "__root__") or "entry"
        msg = problem["msg"].removeprefix("Value error, ")
        if problem["type"] == "extra_forbidden":
            known = ", ".join(ConfigEntry.model_fields)
            msg = f"unknown key (known keys: {known})"
        value = problem.get("input")
        shown = loc == "entry" or problem["type"] == "missing" or "got" in msg
        value_text = "" if shown else f" (value {value!r})"
        lines.append(f"config_list[{index}].{loc}: {msg}{value_text}")
    return "; ".join(lines)


def validate_config_list(config_list: Any) -> list[ConfigEntry]:
    """Validate the shape and values of a config_list (no model needed)."""
    if not isinstance(config_list, Sequence) or isinstance(config_list, (str, bytes)):
        raise ConfigError(f"config_list must be a list of dicts, got {config_list!r}")
    if len(config_list) == 0:
        raise ConfigError("config_list is empty: give at least one entry")
    entries = []
    for index, raw in enumerate(config_list):
        if not isinstance(raw, Mapping):
            raise ConfigError(f"config_list[{index}] must be a dict, got {raw!r}")
        try:
            entries.append(ConfigEntry.model_validate(dict(raw)))
        except ValidationError as err:
            raise ConfigError(_format_validation_error(index, err)) from None
    return entries


def _known_module_type(name: str, model: nn.Module) -> bool:
    if name == "default":
        return True
    attr = getattr(nn, name, None)
    if isinstance(attr, type) and issubclass(attr, nn.Module):
        return True
    return any(type(m).__name__ == name for m in model.modules())


def _matches(entry: ConfigEntry, name: str, module: nn.Module) -> bool:
    if entry.op_types is not None:
        types = set(entry.op_types)
        if "default" in types:
            types |= set(DEFAULT_OP_TYPES)
        if type(module).__name__ not in types:
            return False
    if entry.op_names is not None and name not in entry.op_names:
        return False
    if entry.op_partial_names is not None and not any(p in name for p in entry.op_partial_names):
        return False
    return True


def select_modules(model: nn.Module, entry: ConfigEntry, index: int = 0) -> list[str]:
    """Names of the model's modules an entry selects; errors name what matched nothing."""
    named = {name: m for name, m in model.named_modules() if name}
    for op_type in entry.op_types or []:
        if not _known_module_type(op_type, model):
            raise ConfigError(
                f"config_list[{index}].op_types: {op_type!r} is not a torch.nn module type "
                "nor a module class used in the model"
            )
    for op_name in entry.op_names or []:
        if op_name not in named:
            sample = ", ".join(list(named)[:8])
            raise ConfigError(
                f"config_list[{index}].op_names: {op_name!r} matches no module of the model "
                f"(module names look like: {sample}, ...)"
            )
    for part in entry.op_partial_names or []:
        if not any(part in n for n in named):
            raise ConfigError(
                f"config_list[{index}].op_partial_names: {part!r} is part of no module name"
            )
    return [name for name, module in named.items() if _matches(entry, name, module)]


def resolve_config_list(
    model: nn.Module,
    config_list: Any,
    prunable: Iterable[type[nn.Module]] | None = None,
) -> list[ResolvedEntry]:
    """Validate ``config_list`` against ``model`` and return canonical entries.

    Later entries take their modules away from earlier ones; ``exclude`` entries
    only take away. Per-layer entries become one entry per module. ``prunable``
    restricts which module classes a pruner accepts (others matched raise).
    """
    entries = validate_config_list(config_list)
    owned: list[list[str]] = []
    for index, entry in enumerate(entries):
        names = select_modules(model, entry, index)
        if not names and not entry.exclude:
            raise ConfigError(
                f"config_list[{index}] selects no module of the model "
                f"(op_types={entry.op_types!r}, op_names={entry.op_names!r}, "
                f"op_partial_names={entry.op_partial_names!r})"
            )
        taken = set(names)
        owned = [[n for n in prev if n not in taken] for prev in owned]
        owned.append([] if entry.exclude else names)

    modules = dict(model.named_modules())
    resolved: list[ResolvedEntry] = []
    for index, (entry, names) in enumerate(zip(entries, owned)):
        if entry.exclude or not names:
            continue
        if prunable is not None:
            allowed = tuple(prunable)
            for name in names:
                if not isinstance(modules[name], allowed):
                    kinds = ", ".join(t.__name__ for t in allowed)
                    raise ConfigError(
                        f"config_list[{index}] selects {name!r} of type "
                        f"{type(modules[name]).__name__}, which this pruner cannot prune "
                        f"(it prunes: {kinds})"
                    )
        for name in names:
            if getattr(modules[name], "weight", None) is None:
                raise ConfigError(
                    f"config_list[{index}] selects {name!r} ({type(modules[name]).__name__}), "
                    "which has no weight to prune"
                )
        caps = entry.max_sparsity_per_layer
        cap_map = (
            {n: float(caps[n]) for n in names if n in caps}
            if isinstance(caps, Mapping)
            else ({n: float(caps) for n in names} if caps is not None else {})
        )
        per_layer = entry.per_layer_sparsity
        if per_layer is not None:
            for name in names:
                resolved.append(
                    ResolvedEntry([name], per_layer, {k: v for k, v in cap_map.items() if k == name}, True, index)
                )
        else:
            assert entry.total_sparsity is not None
            resolved.append(ResolvedEntry(names, entry.total_sparsity, cap_map, False, index))
    if not resolved:
        raise ConfigError("config_list selects no module to prune after exclusions")
    return resolved


def canonical_config_list(model: nn.Module, config_list: Any) -> list[dict[str, Any]]:
    """NNI's canonical form: one ``{op_names, total_sparsity}`` dict per resolved entry."""
    return [entry.to_config() for entry in resolve_config_list(model, config_list)]

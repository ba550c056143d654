"""The registry of compression techniques (see base.py for the protocol).

`TECHNIQUES` maps a name to its Technique, in registration order: falcon,
cluspa, penni, tabconv, then any registered later. The optimizer
(`--method NAME`), the command line (its flags), the analysis (the ops'
dense shapes), the onnx schemas and the planner's candidate kinds all read
it. A new technique is one module defining a Technique subclass and one
`register(...)` call.
"""

from __future__ import annotations

from typing import Callable

from ..errors import OnnxCompressError
from .base import COMMON_OPTIONS, Layer, OpSpec, Option, Technique, Work

TECHNIQUES: dict[str, Technique] = {}
_listeners: list[Callable[[Technique], None]] = []
RESERVED = ("auto",)  # the planner's method name


def register(technique: Technique) -> Technique:
    """Adds `technique` to the registry; its name and its ops must be new."""
    if not isinstance(technique, Technique):
        raise TypeError(f"expected a Technique instance, got {type(technique).__name__}")
    name = technique.name
    if not name or not name.replace("_", "").replace("-", "").isalnum() or name in RESERVED:
        raise OnnxCompressError(f"technique name {name!r}: give a word of letters, digits, - or _ (not 'auto')")
    if name in TECHNIQUES:
        raise OnnxCompressError(f"technique {name!r} is registered already")
    for spec in technique.ops:
        owner = op_owner(spec.name)
        if owner is not None:
            raise OnnxCompressError(f"op {spec.name} of technique {name!r} is owned by {owner[0].name!r} already")
    seen = {o.name: o for o in COMMON_OPTIONS}
    for t in TECHNIQUES.values():
        for o in t.options:
            seen.setdefault(o.name, o)
    for o in technique.options:
        if o.name in seen and seen[o.name] != o:
            raise OnnxCompressError(f"option {o.flag} of technique {name!r} differs from the option of that name "
                                    "another technique has; share the Option or rename it")
    TECHNIQUES[name] = technique
    for listener in _listeners:
        listener(technique)
    return technique


def unregister(name: str) -> None:
    """Removes a technique (tests register throwaway ones). Listeners are not told."""
    TECHNIQUES.pop(name, None)


def subscribe(listener: Callable[[Technique], None]) -> None:
    """Calls `listener(technique)` for every technique registered, now and later."""
    _listeners.append(listener)
    for t in list(TECHNIQUES.values()):
        listener(t)


def get(name: str) -> Technique:
    if name not in TECHNIQUES:
        raise OnnxCompressError(f"unknown technique '{name}'; choose one of {', '.join(TECHNIQUES)}")
    return TECHNIQUES[name]


def op_owner(op: str) -> tuple[Technique, OpSpec] | None:
    """(the technique owning our op `op`, its OpSpec), or None."""
    for t in TECHNIQUES.values():
        for spec in t.ops:
            if spec.name == op:
                return t, spec
    return None


def all_ops() -> list[OpSpec]:
    return [spec for t in TECHNIQUES.values() for spec in t.ops]


# The built-in techniques, in the order the planner weighs them.
from . import falcon as _falcon  # noqa: E402
from . import cluspa as _cluspa  # noqa: E402
from . import penni as _penni  # noqa: E402
from . import tabconv as _tabconv  # noqa: E402

for _module in (_falcon, _cluspa, _penni, _tabconv):
    register(_module.TECHNIQUE)

__all__ = ["COMMON_OPTIONS", "Layer", "OpSpec", "Option", "TECHNIQUES", "Technique", "Work", "all_ops", "get",
           "op_owner", "register", "subscribe", "unregister"]

"""``@frozen``: ``@dataclass(frozen=True, slots=True)`` at a fraction of its import cost.

On Python 3.11 the standard decorator compiles six functions per class with ``exec``
(``__init__``, ``__repr__``, ``__eq__``, ``__hash__``, ``__setattr__``, ``__delattr__``): about
0.5 ms a class, 20 ms for the TPM structures alone at ``import``. Here the class is still a real
dataclass (``dataclasses.fields``/``replace``/``asdict`` work, ``field(default_factory=...)``,
``field(init=False)`` and ``__post_init__`` behave as documented), but only ``__init__`` is
compiled, and only when the class is first instantiated; the other methods are shared
closures with the standard semantics (equality and hash over the compared fields, exact
class match, ``FrozenInstanceError`` on assignment).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import MISSING, FrozenInstanceError
from operator import attrgetter
from typing import Any, TypeVar, dataclass_transform, overload

__all__ = ["frozen"]

_T = TypeVar("_T", bound=type)
_set = object.__setattr__


class _Factory:
    """Sentinel default of a parameter whose field has a default_factory."""

    def __repr__(self) -> str:
        return "<factory>"


_HAS_FACTORY = _Factory()


def _getter(names: list[str]) -> Callable[[Any], tuple[Any, ...]]:
    """A C-level function returning the tuple of the named attributes."""
    if not names:
        return lambda _self: ()
    if len(names) == 1:
        one = attrgetter(names[0])
        return lambda self: (one(self),)
    return attrgetter(*names)


def _init_source(cls: type, flds: tuple[dataclasses.Field[Any], ...]) -> tuple[str, dict[str, Any]]:
    """Source of the dataclass ``__init__`` for ``flds`` and the globals it needs."""
    params: list[str] = []
    body: list[str] = []
    env: dict[str, Any] = {"_set": _set, "_HAS_FACTORY": _HAS_FACTORY}
    for f in flds:
        name = f.name
        if f.default_factory is not MISSING:
            env[f"_factory_{name}"] = f.default_factory
            if f.init:
                params.append(f"{name}=_HAS_FACTORY")
                body.append(f"    _set(self, {name!r}, _factory_{name}() if {name} is _HAS_FACTORY else {name})")
            else:
                body.append(f"    _set(self, {name!r}, _factory_{name}())")
            continue
        if f.default is not MISSING:
            env[f"_default_{name}"] = f.default
            if f.init:
                params.append(f"{name}=_default_{name}")
            else:
                body.append(f"    _set(self, {name!r}, _default_{name})")
                continue
        elif not f.init:
            continue
        else:
            params.append(name)
        body.append(f"    _set(self, {name!r}, {name})")
    if hasattr(cls, "__post_init__"):
        body.append("    self.__post_init__()")
    src = f"def __init__(self, {', '.join(params)}):\n" + ("\n".join(body) or "    pass") + "\n"
    return src.replace("(self, )", "(self)"), env


def _check_fields(cls: type, flds: tuple[dataclasses.Field[Any], ...]) -> None:
    """What @dataclass refuses at decoration time (our __init__ is compiled later)."""
    seen_default = False
    for f in flds:
        if f.kw_only is True:
            raise TypeError(f"{cls.__name__}.{f.name}: @frozen has no keyword-only fields")
        if not f.init:
            continue
        has_default = f.default is not MISSING or f.default_factory is not MISSING
        if seen_default and not has_default:
            raise TypeError(f"non-default argument {f.name!r} follows default argument")
        seen_default = seen_default or has_default


def _process(cls: _T, slots: bool) -> _T:
    if not cls.__dict__.get("__doc__"):
        cls.__doc__ = cls.__name__  # spares dataclass an inspect.signature() call
    made: Any = dataclasses.dataclass(cls, init=False, repr=False, eq=False, slots=slots)
    cls = made
    flds = dataclasses.fields(cls)
    _check_fields(cls, flds)
    names = frozenset(f.name for f in flds)
    compared = _getter([f.name for f in flds if f.compare])
    hashed = _getter([f.name for f in flds if (f.compare if f.hash is None else f.hash)])
    shown = [(f.name, attrgetter(f.name)) for f in flds if f.repr]
    qualname = cls.__qualname__
    sup = super

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        # First instantiation: compile the real __init__, install it, and use it from now on.
        src, env = _init_source(cls, flds)
        exec(src, env)  # our own generated source, as dataclasses does
        real = env["__init__"]
        real.__qualname__ = f"{qualname}.__init__"
        type.__setattr__(cls, "__init__", real)
        real(self, *args, **kwargs)

    def __repr__(self: Any) -> str:
        inner = ", ".join(f"{n}={get(self)!r}" for n, get in shown)
        return f"{type(self).__qualname__}({inner})"

    def __eq__(self: Any, other: object) -> bool:
        if other.__class__ is self.__class__:
            return compared(self) == compared(other)
        return NotImplemented

    def __hash__(self: Any) -> int:
        return hash(hashed(self))

    def __setattr__(self: Any, name: str, value: object) -> None:
        if type(self) is cls or name in names:
            raise FrozenInstanceError(f"cannot assign to field {name!r}")
        sup(cls, self).__setattr__(name, value)

    def __delattr__(self: Any, name: str) -> None:
        if type(self) is cls or name in names:
            raise FrozenInstanceError(f"cannot delete field {name!r}")
        sup(cls, self).__delattr__(name)

    own = cls.__dict__
    methods: dict[str, Any] = {"__init__": __init__, "__repr__": __repr__, "__eq__": __eq__,
                               "__setattr__": __setattr__, "__delattr__": __delattr__}
    # As @dataclass(frozen=True): a hash from the fields unless the class wrote its own
    # (a class body defining __eq__ alone gets __hash__ = None from Python, not "its own").
    explicit_hash = own.get("__hash__", MISSING)
    if explicit_hash is MISSING or (explicit_hash is None and "__eq__" in own):
        methods["__hash__"] = __hash__
    if slots:
        def __getstate__(self: Any) -> list[Any]:
            return [getattr(self, f.name) for f in flds]

        def __setstate__(self: Any, state: list[Any]) -> None:
            for f, value in zip(flds, state, strict=True):
                _set(self, f.name, value)

        methods["__getstate__"] = __getstate__
        methods["__setstate__"] = __setstate__
    for attr, fn in methods.items():
        if attr != "__hash__" and attr in own:
            continue  # a method the class wrote itself wins, as with @dataclass
        fn.__qualname__ = f"{qualname}.{attr}"
        type.__setattr__(cls, attr, fn)
    return cls


@overload
def frozen(cls: _T, /) -> _T: ...
@overload
def frozen(*, slots: bool = True) -> Callable[[_T], _T]: ...


@dataclass_transform(frozen_default=True, field_specifiers=(dataclasses.field, dataclasses.Field))
def frozen(cls: _T | None = None, /, *, slots: bool = True) -> _T | Callable[[_T], _T]:
    """Make ``cls`` a frozen dataclass (with ``__slots__`` unless ``slots=False``)."""
    if cls is None:
        return lambda c: _process(c, slots)
    return _process(cls, slots)

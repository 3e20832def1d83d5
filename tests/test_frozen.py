"""``@frozen`` behaves as ``@dataclass(frozen=True, slots=True)`` (side by side on the same classes)."""

from __future__ import annotations

import copy
import dataclasses
import pickle
from dataclasses import FrozenInstanceError, field
from typing import Any, ClassVar

import pytest

from tpm2_attest._frozen import frozen
from tpm2_attest.evidence import Quote
from tpm2_attest.tpm2 import templates as T
from tpm2_attest.tpm2.structures import TPMS_CLOCK_INFO


def _pair(slots: bool = True) -> tuple[Any, Any]:
    """The same class body under @frozen and under the standard decorator."""

    def body() -> type[Any]:
        class Rec:
            LIMIT: ClassVar[int] = 3
            a: int
            b: bytes = b"x"
            c: list[int] = field(default_factory=list)
            d: int = field(default=7, compare=False, repr=False)

            def double(self) -> int:
                return 2 * self.a

        return Rec

    return frozen(slots=slots)(body()), dataclasses.dataclass(frozen=True, slots=slots)(body())


@pytest.mark.parametrize("slots", [True, False])
def test_same_behaviour_as_dataclass(slots: bool) -> None:
    ours, std = _pair(slots)
    for args, kwargs in (((1,), {}), ((1, b"y"), {"c": [2]}), ((), {"a": 5, "d": 9})):
        o, s = ours(*args, **kwargs), std(*args, **kwargs)
        assert repr(o).replace("Rec", "") == repr(s).replace("Rec", "")
        assert [getattr(o, f.name) for f in dataclasses.fields(o)] == [getattr(s, f.name) for f in dataclasses.fields(s)]
        assert dataclasses.asdict(o) == dataclasses.asdict(s)
        assert o.double() == 2 * o.a
    assert ours(1) == ours(1) and ours(1) != ours(2) and ours(1) == ours(1, d=99)  # d not compared
    assert ours(1) != std(1)  # exact class match, as dataclasses
    assert hash(ours(1, b"q", ())) == hash(std(1, b"q", ())) == hash(ours(1, b"q", (), 5))
    assert ours(1).c is not ours(1).c  # a fresh default per instance
    with pytest.raises(TypeError):
        hash(ours(1))  # the list field is unhashable, as with dataclasses
    assert dataclasses.replace(ours(1), b=b"z") == ours(1, b"z")
    assert ours.LIMIT == 3
    assert hasattr(ours(1), "__dict__") is (not slots) is hasattr(std(1), "__dict__")
    for o in (ours(1, c=[3]), ours(2)):
        assert copy.deepcopy(o) == o and copy.copy(o) == o
    assert dataclasses.is_dataclass(ours)


def test_pickle_round_trip() -> None:
    """Module-level @frozen classes (slotted and not) survive pickle and copy."""
    area = T.AK_ECC_TEMPLATE
    quote = Quote(b"attest", b"sig", {"sha256": {0: bytes(32)}})
    for obj in (area, quote, TPMS_CLOCK_INFO(1, 2, 3, True)):
        again = pickle.loads(pickle.dumps(obj))
        assert again == obj and type(again) is type(obj)
        assert copy.deepcopy(obj) == obj


def test_frozen_errors_and_signature_errors() -> None:
    ours, std = _pair()
    o, s = ours(1), std(1)
    for obj in (o, s):
        with pytest.raises(FrozenInstanceError, match="cannot assign to field 'a'"):
            obj.a = 2
        with pytest.raises(FrozenInstanceError, match="cannot delete field 'b'"):
            del obj.b
    for cls in (ours, std):
        with pytest.raises(TypeError):
            cls()
        with pytest.raises(TypeError):
            cls(1, b"", [], 1, 2)
        with pytest.raises(TypeError):
            cls(1, e=2)


def test_init_false_post_init_and_subclasses() -> None:
    @frozen
    class Base:
        x: int
        y: int = field(init=False, default=0)
        z: list[int] = field(init=False, default_factory=list)

        def __post_init__(self) -> None:
            object.__setattr__(self, "y", self.x + 1)

    class Plain(Base):  # a subclass that is not itself decorated (like TPM2B_DIGEST)
        __slots__ = ()

    @frozen
    class Child(Base):
        w: str = "w"

    assert (Base(1).y, Base(1).z) == (2, [])
    assert Plain(4).y == 5 and repr(Plain(4)).endswith(".Plain(x=4, y=5, z=[])")  # its own qualname
    assert Plain(4) != Base(4)
    c = Child(3, "v")
    assert (c.x, c.y, c.w) == (3, 4, "v")
    with pytest.raises(FrozenInstanceError):
        c.w = "u"  # type: ignore[misc]


def test_methods_the_class_writes_win() -> None:
    @frozen
    class Own:
        a: int

        def __repr__(self) -> str:
            return "own"

        def __eq__(self, other: object) -> bool:
            return True

        def __hash__(self) -> int:
            return 42

    assert repr(Own(1)) == "own" and Own(1) == Own(2) and hash(Own(3)) == 42

    @frozen
    class EqOnly:
        a: int

        def __eq__(self, other: object) -> bool:
            return isinstance(other, EqOnly)

    assert hash(EqOnly(1)) == hash((1,))  # a field hash, as @dataclass(frozen=True) gives


def test_refuses_what_dataclass_refuses() -> None:
    with pytest.raises(TypeError, match="non-default argument"):
        @frozen
        class Bad:
            a: int = 0
            b: int  # type: ignore[misc]
    with pytest.raises(TypeError, match="keyword-only"):
        @frozen
        class Kw:
            a: int = field(kw_only=True)

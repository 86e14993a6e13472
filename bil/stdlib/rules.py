"""Per-function rules a stdlib entry registers beside its implementation.

``@register(name, degree=..., latex=..., check=...)`` attaches them; the
compiler reads them from the registry, never from a table of names.

``degree``  a polynomial-degree rule: given the degree bounds of the call's
            positional arguments in the analysed variables (``0``: constant,
            ``None``: not provably polynomial), the bound of the result, or
            ``None``.  It is only asked when some argument is not constant and
            every keyword argument is; the result is clamped by the caller.
            No rule: not polynomial (sound: "quadratic" is never claimed).
``latex``   a template over the printed arguments, ``#1`` .. ``#9`` (``#(1)``:
            the argument in parentheses unless it is an atom, a power or a
            call), used when the call has exactly as many arguments (keywords
            included) as the template's highest placeholder; or a callable of
            the printed arguments returning a string, or ``None`` for the
            default.  Default: ``\\operatorname{name}\\left(...\\right)``.
``check``   a compile-time check called like the implementation, with one
            :class:`CallArg` per argument; it raises ``StdlibError`` (``arg=``
            names the argument at fault, where the error is reported).
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

Deg = Optional[int]
#: a degree rule: argument degree bounds -> result degree bound
DegreeRule = Callable[[Sequence[Deg]], Deg]


def linear(ds: Sequence[Deg]) -> Deg:
    """Linear in the first argument (``sum``, ``dx``, ``transpose``): its degree, if the others are constant."""
    first, *rest = ds
    return first if all(r == 0 for r in rest) else None


def square(ds: Sequence[Deg]) -> Deg:
    """A square of the first argument (``sumsq``, ``square``): twice its degree, if the others are constant."""
    first, *rest = ds
    return None if first is None or not all(r == 0 for r in rest) else 2 * first


def squared_difference(ds: Sequence[Deg]) -> Deg:
    """A square of the difference of two arguments (``mse``): twice the larger degree."""
    return None if len(ds) != 2 or None in ds else 2 * max(ds)


def bilinear(ds: Sequence[Deg]) -> Deg:
    """A product of two arguments (``dot``, ``conv2d``): the sum of their degrees."""
    return None if len(ds) != 2 or None in ds else ds[0] + ds[1]


def joined(ds: Sequence[Deg]) -> Deg:
    """Arguments placed side by side (``concat``, ``stack``): the largest degree."""
    return None if not ds or None in ds else max(ds)


def select(ds: Sequence[Deg]) -> Deg:
    """``where(c, a, b)``: the larger degree of ``a`` and ``b``, if the condition is constant."""
    if len(ds) != 3 or ds[0] != 0 or None in ds:
        return None
    return max(ds[1], ds[2])


class CallArg:
    """One argument of a call, as a ``check=`` rule sees it at compile time.

    ``text``: as written in the spec; ``shape``: its shape; ``value``: its
    value (a NumPy array) when it depends on data only, else ``None`` (one
    sample's value for ``per sample`` data: the check runs once per sample).
    Shape and value are computed on first use.
    """

    def __init__(self, text: str, shape: Callable[[], tuple], value: Callable[[], object] | None):
        self.text = text
        self._shape, self._value = shape, value
        self._cache: dict = {}

    @property
    def shape(self) -> tuple:
        if "shape" not in self._cache:
            self._cache["shape"] = tuple(self._shape())
        return self._cache["shape"]

    @property
    def value(self):
        if "value" not in self._cache:
            self._cache["value"] = None if self._value is None else self._value()
        return self._cache["value"]

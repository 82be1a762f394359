"""Named base models. A trained or configured MemLong folder records its base in
``memlong_base.json``; a base that ships inside a package is recorded by name, ``memlong:NAME``
(the default model's is ``memlong:default``), because its path differs from machine to machine.
The package that ships it registers how to find it (:func:`register_base`); the loader
(:func:`memlong.modeling.from_pretrained`) resolves names through :func:`resolve_base` and knows
nothing of the packages.
"""

from __future__ import annotations

from collections.abc import Callable

PREFIX = "memlong:"
_RESOLVERS: dict[str, Callable[[], str]] = {}


def register_base(name: str, resolve: Callable[[], str]) -> None:
    """Makes ``name`` (``memlong:...``) resolve to the path or hub name ``resolve()`` returns."""
    if not name.startswith(PREFIX):
        raise ValueError(f"a named base model starts with {PREFIX!r}; got {name!r}")
    _RESOLVERS[name] = resolve


def resolve_base(name: str) -> str:
    """The path or hub name of the base model ``name``: a registered ``memlong:...`` name resolved,
    anything else returned as it is."""
    if not name.startswith(PREFIX):
        return name
    if name not in _RESOLVERS:
        known = ", ".join(sorted(_RESOLVERS)) or "none"
        raise ValueError(
            f"unknown base model {name!r} (registered: {known}); the folder was saved with a memlong "
            "that shipped it: install that version, or give base_model= (--base-model) a path"
        )
    return _RESOLVERS[name]()

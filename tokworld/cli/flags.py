"""Command-line flags made from config dataclasses, so a flag can never drift from its config.

Each field of a frozen config dataclass becomes `--field-name` with the field's type, default
and `metadata["help"]`; `metadata["flag"]` renames the flag (e.g. `env_id` -> `--env`),
`metadata["choices"]` restricts it, `metadata["required"]` makes it required and
`metadata["cli"] = False` keeps it off the command line. A `tuple[X, ...]` field is a flag
given once per item (`--dataset A --dataset B`). A bool field
that defaults to False is a switch. A field that is itself a config dataclass contributes its own
fields' flags. `config_from_args` reads them back into the dataclass.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing


def _fields(cls) -> list[tuple[dataclasses.Field, type]]:
    hints = typing.get_type_hints(cls)
    return [(f, hints[f.name]) for f in dataclasses.fields(cls) if f.init]


def _scalar(hint) -> type:
    """`int | None` -> int; `str` -> str; `tuple[float, ...]` -> tuple[float, ...]."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        (hint,) = [a for a in typing.get_args(hint) if a is not type(None)]
    return hint


def _item(kind) -> type | None:
    """The item type of a `tuple[X, ...]` field (given as a repeated flag), else None."""
    return typing.get_args(kind)[0] if typing.get_origin(kind) is tuple else None


def flag_name(f: dataclasses.Field) -> str:
    """The flag of field `f`: `metadata["flag"]`, else `--` and the name with dashes."""
    return f.metadata.get("flag", "--" + f.name.replace("_", "-"))


def _default(f: dataclasses.Field):
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


def add_config_flags(
    parser: argparse.ArgumentParser, cls, skip: tuple[str, ...] = (), defaults: dict | None = None
) -> None:
    """Add one flag per field of the config dataclass `cls` (fields named in `skip` excepted);
    `defaults` overrides a field's default for this command only."""
    for f, hint in _fields(cls):
        if f.name in skip or not f.metadata.get("cli", True):
            continue
        kind = _scalar(hint)
        if dataclasses.is_dataclass(kind):
            add_config_flags(parser, kind, skip, defaults)
            continue
        help_text = f.metadata.get("help")
        default = (defaults or {}).get(f.name, _default(f))
        dest = f"{cls.__name__}.{f.name}"
        if kind is bool and default is False:
            parser.add_argument(flag_name(f), action="store_true", dest=dest, help=help_text)
            continue
        required = f.metadata.get("required", default is None and f.default is dataclasses.MISSING)
        item = _item(kind)
        parser.add_argument(
            flag_name(f),
            type=item or kind,
            action="append" if item else "store",
            default=None if required else default,
            required=required,
            choices=f.metadata.get("choices"),
            dest=dest,
            metavar=f.name.upper(),
            help=help_text
            if default is None
            else f"{help_text or ''} (default: {default})".lstrip(),
        )


def config_from_args(cls, args: argparse.Namespace, **given):
    """The config dataclass `cls` from flags added by `add_config_flags` (and `given` fields)."""
    values = dict(given)
    for f, hint in _fields(cls):
        if f.name in values:
            continue
        kind = _scalar(hint)
        if dataclasses.is_dataclass(kind):
            values[f.name] = config_from_args(kind, args)
            continue
        dest = f"{cls.__name__}.{f.name}"
        if hasattr(args, dest):
            value = getattr(args, dest)
            values[f.name] = tuple(value) if isinstance(value, list) else value
    return cls(**values)

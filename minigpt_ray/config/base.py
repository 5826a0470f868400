"""The config machinery every job shares: YAML + CLI overrides onto typed dataclasses, validation naming the field.

Each field carries one docstring (the string literal right below it); ``--help`` and the docs are built from them,
so a setting is documented in exactly one place. Every CLI flag is ``--<field-name>`` with dashes; field names are
unique across a job's sections so a flag maps to one field. A job's root class may declare ``ALIASES`` for the
flags users type most (``--model`` for model.name, ``--data`` for data.sources).
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import dataclasses
import inspect
import textwrap
from pathlib import Path
from typing import Any, get_type_hints

import yaml


class ConfigError(ValueError):
    """A bad setting or input; the message names the field or file and fits on one line."""


def field_docs(cls: type) -> dict[str, str]:
    """Map each dataclass field to the docstring literal written under it."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body
    docs: dict[str, str] = {}
    for prev, node in zip(body, body[1:], strict=False):
        if isinstance(prev, ast.AnnAssign) and isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
            docs[prev.target.id] = " ".join(str(node.value.value).split())
    return docs


def _sections(root: type) -> dict[str, type]:
    """Fields of `root` that are dataclasses themselves: the YAML sections."""
    hints = get_type_hints(root)
    return {f.name: hints[f.name] for f in dataclasses.fields(root) if dataclasses.is_dataclass(hints[f.name])}


def _flag(field_name: str, aliases: dict[str, str]) -> str:
    return "--" + aliases.get(field_name, field_name).replace("_", "-")


def _iter_fields(root: type):
    """Yield (section or None, dataclass field, type) for every leaf setting."""
    sections = _sections(root)
    for f in dataclasses.fields(root):
        if f.name in sections:
            hints = get_type_hints(sections[f.name])
            for sub in dataclasses.fields(sections[f.name]):
                yield f.name, sub, hints[sub.name]
        else:
            yield None, f, get_type_hints(root)[f.name]


def _parse_bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _parse_list(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _list_parser(item: type):
    def parse(text: str) -> list:
        try:
            return [item(part) for part in _parse_list(text)]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated {item.__name__} values, got {text!r}") from None

    return parse


SCALAR_PARSERS = {
    bool: _parse_bool,
    int: int,
    float: float,
    str: str,
    list[str]: _parse_list,
    list[int]: _list_parser(int),
    list[float]: _list_parser(float),
}
METAVARS = {bool: "BOOL", int: "INT", float: "FLOAT", str: "STR"}


def add_config_arguments(parser: argparse.ArgumentParser, root: type) -> argparse.ArgumentParser:
    """`--config`, `--print-config` and one flag per leaf setting of `root`, each documented by its field's doc."""
    aliases = getattr(root, "ALIASES", {})
    parser.add_argument("--config", help="YAML file with any of the settings below (CLI flags override it)")
    parser.add_argument(
        "--print-config", action="store_true", help="print the resolved settings as YAML (the --config format) and exit"
    )
    docs = {None: field_docs(root), **{name: field_docs(cls) for name, cls in _sections(root).items()}}
    defaults = root()
    for section, f, typ in _iter_fields(root):
        default = getattr(getattr(defaults, section) if section else defaults, f.name)
        key = f"{section}.{f.name}" if section else f.name
        parser.add_argument(
            _flag(f.name, aliases),
            dest=key,
            type=SCALAR_PARSERS[typ],
            default=None,
            metavar=METAVARS.get(typ, "A,B,..."),
            help=f"{docs[section].get(f.name, '')} [{key}, default: {default!r}]".replace("%", "%%"),
            **({"nargs": "?", "const": True} if typ is bool else {}),  # a bare --no-cache means true
        )
    return parser


def build_parser(description: str, root: type) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    return add_config_arguments(parser, root)


def load_yaml(path: str) -> dict[str, Any]:
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"--config: file not found: {path}")
    try:
        loaded = yaml.safe_load(file.read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise ConfigError(f"--config: {path} is not valid YAML: {str(err).splitlines()[0]}") from None
    if not isinstance(loaded, dict):
        raise ConfigError(f"--config: {path} must hold a mapping of settings")
    return loaded


def from_dict(values: dict[str, Any], root: type):
    """Build a `root` config from nested settings; unknown keys are an error naming the key."""
    cfg = root()
    sections = _sections(type(cfg))
    for key, value in values.items():
        if key in sections:
            if not isinstance(value, dict):
                raise ConfigError(f"{key}: expected a mapping of settings, got {value!r}")
            section = getattr(cfg, key)
            for sub_key, sub_value in value.items():
                _set(section, f"{key}.{sub_key}", sub_key, sub_value)
        else:
            _set(cfg, key, key, value)
    return cfg


def _set(target: Any, full_key: str, name: str, value: Any) -> None:
    hints = get_type_hints(type(target))
    if name not in hints or dataclasses.is_dataclass(hints[name]):
        raise ConfigError(f"{full_key}: unknown setting")
    typ = hints[name]
    item = typ.__args__[0] if getattr(typ, "__origin__", None) is list else None
    if typ is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if typ is float and isinstance(value, str):  # YAML 1.1 reads 1e-3 (no dot) as a string
        with contextlib.suppress(ValueError):
            value = float(value)
    if item is not None and not isinstance(value, list):
        value = [value] if not isinstance(value, str) else _parse_list(value)
    if item is not None:
        value = [float(v) if item is float and isinstance(v, int) and not isinstance(v, bool) else v for v in value]
        ok = all(isinstance(v, item) and not (item is not bool and isinstance(v, bool)) for v in value)
    else:
        ok = isinstance(value, typ) and not (typ is int and isinstance(value, bool))
    if not ok:
        raise ConfigError(f"{full_key}: expected {getattr(typ, '__name__', typ)}, got {value!r}")
    setattr(target, name, value)


def parse_args(argv: list[str] | None, description: str, root: type):
    """CLI → (YAML defaults, then flags) → validated config. Raises ConfigError on any bad setting."""
    return config_from_args(build_parser(description, root).parse_args(argv), root)


def config_from_args(args: argparse.Namespace, root: type):
    """Parsed flags (from `add_config_arguments`) → the YAML file's settings overridden by the flags → validated."""
    values = load_yaml(args.config) if args.config else {}
    cfg = from_dict(values, root)
    settings = {f.name for f in dataclasses.fields(root)}
    for key, value in vars(args).items():
        if value is None or ("." not in key and key not in settings):  # unset flags; --config, --print-config, ...
            continue
        if "." in key:
            section, name = key.split(".")
            setattr(getattr(cfg, section), name, value)
        else:
            setattr(cfg, key, value)
    return cfg.validate()


SECRET_FIELDS = ("api_key",)
"""Fields printed as *** wherever a config is shown (--print-config, logs)."""


def masked_secrets(values):
    if isinstance(values, dict):
        return {k: ("***" if k in SECRET_FIELDS and v else masked_secrets(v)) for k, v in values.items()}
    return values


def to_yaml(cfg) -> str:
    """A config as YAML in the --config format (sections as mappings), secrets masked."""
    return yaml.safe_dump(masked_secrets(dataclasses.asdict(cfg)), allow_unicode=True, sort_keys=False)


def check_output_dir(output: str, key: str = "output", joins_cluster: bool = False) -> None:
    """`output` can be created and written: not an existing file, its nearest existing ancestor writable, and
    absolute when the job joins a cluster (workers on other nodes would resolve a relative path elsewhere)."""
    import os
    from pathlib import Path

    path = Path(output).expanduser()
    require(
        not joins_cluster or path.is_absolute(),
        key,
        "must be an absolute path on storage every node shares when joining a cluster",
        output,
    )
    require(not path.is_file(), key, "is a file, not a directory", output)
    existing = next((p for p in (path, *path.parents) if p.exists()), None)
    require(
        existing is not None and existing.is_dir() and os.access(existing, os.W_OK | os.X_OK),
        key,
        f"is not writable ({existing} does not allow creating files)",
        output,
    )


def require(ok: bool, key: str, message: str, value: Any) -> None:
    """Raise ConfigError naming `key` and the offending value unless `ok`."""
    if not ok:
        raise ConfigError(f"{key}: {message}, got {value!r}")

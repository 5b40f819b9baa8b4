"""Dataclass configs: loaded from YAML, overridden with dotted flags, validated before any work.

Every recipe defines one top-level dataclass whose fields are other dataclasses (sections).
`parse_config(RecipeConfig, argv)` reads `--config file.yaml`, applies `--section.key value`
overrides, and fails fast with a `ConfigError` naming the offending key and, for unknown
keys, the valid ones. Field documentation lives in each dataclass's docstring-like comments
(`field(metadata={"help": ...})`), which `--help` prints.
"""

from __future__ import annotations

import dataclasses
import json
import keyword
import sys
import types
import typing
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import yaml

from rlpost.cache import apply_cache_env


class ConfigError(ValueError):
    """A config key or value that cannot be used; the message names the key."""


def doc(help_text: str, default: Any = dataclasses.MISSING, **kwargs) -> Any:
    """A dataclass field with a help text (shown by --help, kept next to the field)."""
    if default is not dataclasses.MISSING and isinstance(default, (list, dict)):
        value = default
        kwargs["default_factory"] = lambda: json.loads(json.dumps(value))
    elif default is not dataclasses.MISSING:
        kwargs["default"] = default
    return dataclasses.field(metadata={"help": help_text}, **kwargs)


def section(cls: type) -> Any:
    """A nested config section with its defaults."""
    return dataclasses.field(default_factory=cls)


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Convert a YAML/CLI value to the annotated type, or raise ConfigError naming `key`."""
    origin = get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        options = get_args(tp)
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            if type(None) in options:
                return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")
    if origin is Literal:
        choices = get_args(tp)
        if value not in choices:
            raise ConfigError(f"{key}: {value!r} is not one of {list(choices)}")
        return value
    if origin is list:
        (item_tp,) = get_args(tp) or (Any,)
        if isinstance(value, str):
            value = yaml.safe_load(value) if value.strip().startswith("[") else [v for v in value.split(",") if v]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return [_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if isinstance(value, str):
            value = yaml.safe_load(value)
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping of {tp.__name__} fields, got {value!r}")
        return build(tp, value, prefix=key + ".")
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "on"):
            return True
        if isinstance(value, str) and value.lower() in ("false", "0", "no", "off"):
            return False
        raise ConfigError(f"{key}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    raise ConfigError(f"{key}: unsupported config type {tp!r}")


def config_key(field_name: str) -> str:
    """A field's key in YAML and flags: its name, less the trailing underscore of a name that would
    be a Python keyword (the field `async_` is the section `async`)."""
    bare = field_name.removesuffix("_")
    return bare if field_name.endswith("_") and keyword.iskeyword(bare) else field_name


def build(cls: type, values: dict, prefix: str = "") -> Any:
    """Build dataclass `cls` from a nested dict, rejecting unknown keys by name."""
    hints = typing.get_type_hints(cls)
    fields = {config_key(f.name): f for f in dataclasses.fields(cls) if f.init}
    unknown = [k for k in values if k not in fields]
    if unknown:
        raise ConfigError(
            f"unknown config key {prefix}{unknown[0]!s}; valid keys under "
            f"{prefix.rstrip('.') or 'the top level'}: {sorted(fields)}"
        )
    kwargs = {}
    for name, v in values.items():
        f = fields[name]
        if (
            dataclasses.is_dataclass(hints[f.name])
            and isinstance(v, dict)
            and f.default_factory is not dataclasses.MISSING
        ):
            # A partly given section keeps this recipe's defaults for the keys it leaves out.
            v = {**to_dict(f.default_factory()), **v}
        kwargs[f.name] = _coerce(v, hints[f.name], prefix + name)
    try:
        obj = cls(**kwargs)
    except TypeError as e:  # a required field is missing
        raise ConfigError(f"{prefix.rstrip('.') or cls.__name__}: {e}") from None
    validate = getattr(obj, "validate", None)
    if callable(validate):
        validate()
    return obj


def to_dict(cfg: Any) -> Any:
    """A config as plain YAML-ready values, keyed as in YAML (`config_key`)."""
    if dataclasses.is_dataclass(cfg) and not isinstance(cfg, type):
        return {config_key(f.name): to_dict(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
    if isinstance(cfg, (list, tuple)):
        return [to_dict(v) for v in cfg]
    if isinstance(cfg, dict):
        return {k: to_dict(v) for k, v in cfg.items()}
    return cfg


def _set_dotted(tree: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = tree
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"--{dotted}: {part} is not a section")
        node = child
    node[parts[-1]] = value


def _help(cls: type, prefix: str = "") -> list[str]:
    lines = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            lines += _help(tp, prefix + config_key(f.name) + ".")
            continue
        default = (
            f.default
            if f.default is not dataclasses.MISSING
            else (f.default_factory() if f.default_factory is not dataclasses.MISSING else "required")
        )
        lines.append(
            f"  --{prefix}{config_key(f.name)} ({_type_name(tp)}, default {default!r}): {f.metadata.get('help', '')}"
        )
    return lines


def parse_config(cls: type, argv: list[str] | None = None) -> Any:
    """`--config file.yaml` then `--a.b value` overrides → a validated `cls` instance.

    Exits with a clear message (not a traceback) on a bad key or value.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if "-h" in argv or "--help" in argv:
        print(f"{cls.__name__} options (YAML keys, or dotted flags):\n" + "\n".join(_help(cls)))
        raise SystemExit(0)
    try:
        return load_config(cls, argv)
    except ConfigError as e:
        raise SystemExit(f"config error: {e}") from None


def load_config(cls: type, argv: list[str]) -> Any:
    """Like parse_config, but raises ConfigError (for tests and programmatic use)."""
    tree: dict = {}
    overrides: list[tuple[str, Any]] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if not arg.startswith("--"):
            raise ConfigError(f"unexpected argument {arg!r}; use --config FILE and --section.key VALUE")
        key, eq, value = arg[2:].partition("=")
        if not eq:
            if i + 1 >= len(argv) or argv[i + 1].startswith("--"):
                value = "true"  # bare flag, e.g. --resume
            else:
                value, i = argv[i + 1], i + 1
        if key == "config":
            path = Path(value)
            if not path.exists():
                raise ConfigError(f"--config: no such file {value}")
            try:
                loaded = yaml.safe_load(path.read_text()) or {}
            except yaml.YAMLError as e:
                raise ConfigError(f"--config {value}: invalid YAML: {e}") from None
            if not isinstance(loaded, dict):
                raise ConfigError(f"--config {value}: top level must be a mapping")
            _merge(tree, loaded)
        else:
            overrides.append((key, yaml.safe_load(value) if value else value))
        i += 1
    for key, value in overrides:
        _set_dotted(tree, key, value)
    return build(cls, tree)


def run_command(config_cls: type, main, errors: dict[type[Exception], str] | None = None) -> Any:
    """Every recipe's command line: the cache folders, the config from YAML and dotted flags, then
    `main(cfg)`, whose result is returned. A bad config, or an error of a kind in `errors` (mapped
    to the prefix of its line), ends the process with one line a user acts on, not a traceback."""
    errors = {ConfigError: "config error", **(errors or {})}
    apply_cache_env()
    try:
        return main(parse_config(config_cls))
    except tuple(errors) as error:
        prefix = next(p for kind, p in errors.items() if isinstance(error, kind))
        # An error raised in a Ray actor arrives wrapped; its `cause` is the original.
        raise SystemExit(f"{prefix}: {getattr(error, 'cause', error)}") from None


def load_recipe(name: str) -> types.ModuleType:
    """A recipe script (recipes/<name>.py of this repository) as a module, for its config class and
    stage functions. Loaded once, and registered in sys.modules under `name`: dataclasses resolve
    their annotations through sys.modules."""
    import importlib.util

    if name not in sys.modules:
        path = Path(__file__).resolve().parents[1] / "recipes" / f"{name}.py"
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[name]
            raise
    return sys.modules[name]


def _merge(into: dict, new: dict) -> None:
    for k, v in new.items():
        if isinstance(v, dict) and isinstance(into.get(k), dict):
            _merge(into[k], v)
        else:
            into[k] = v


JOB_COPY_HINT = (
    "this job runs in Ray's temporary copy of its --working-dir, which leaves out git-ignored "
    "files such as runs/ and is deleted with the job: pass an absolute path (e.g. $PWD/runs/...) "
    "or one on storage every node reaches"
)


def in_job_copy() -> bool:
    """Whether this process runs in the copy of a working dir that `ray job submit --working-dir`
    unpacked (under the session's runtime_resources/working_dir_files)."""
    return "working_dir_files" in Path.cwd().parts


def save_config(cfg: Any, path: str | Path) -> None:
    """Write the resolved config (every default filled in) as YAML into its run folder. A relative
    run folder inside a Ray job's working-dir copy is refused: the run would vanish with it."""
    if in_job_copy() and not Path(path).is_absolute():
        raise ConfigError(f"run_dir: {Path(path).parent} is relative; {JOB_COPY_HINT}")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))


def check_path(key: str, path: str) -> None:
    """Stop with a ConfigError naming `key` when `path` is not a local file or folder and cannot
    be a Hugging Face hub id either ('name' or 'org/name', for users with a network)."""
    import re

    if Path(path).expanduser().exists():
        return
    hub_id = re.fullmatch(r"[\w.-]+(/[\w.-]+)?", path) and not path.startswith((".", "~"))
    if not hub_id or Path(path.split("/")[0]).is_dir():  # e.g. runs/x: meant as a local folder
        hint = f"; {JOB_COPY_HINT}" if in_job_copy() else ""
        raise ConfigError(f"{key}: no such file or folder: {path} (working directory {Path.cwd()}){hint}")

"""CLI flags generated from the config dataclasses, so a flag, a TOML key and a config field are one thing."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable

import click

from seqfit.config import SECTIONS, RunCfg, check_value, field_type, from_dict, load_toml, merge

__all__ = ["config_options", "resolve_config", "flag_name", "pop_config_flags", "flat_options"]


def flag_name(field_name: str) -> str:
    return "--" + field_name.replace("_", "-")


def config_options(func: Callable) -> Callable:
    """Add ``--config`` and one flag per config field (default None: "not given", so TOML values stand)."""
    options = [click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None,
                            help="TOML file with [model], [train] and [memory] tables; flags override it")]
    for section_name, section in SECTIONS.items():
        for f in dataclasses.fields(section):
            kind = field_type(section, f.name)
            help_text = f"{f.metadata['help']} [{section_name}; default {f.default!r}]"
            param = f"{section_name}__{f.name}"
            if kind is bool:
                name = flag_name(f.name)
                opt = click.option(f"{name}/--no-{name[2:]}", param, default=None, help=help_text)
            else:
                choices = f.metadata.get("choices")
                ptype = click.Choice(choices) if choices else kind
                opt = click.option(flag_name(f.name), param, type=ptype, default=None, help=help_text)
            options.append(opt)
    for option in reversed(options):
        func = option(func)
    return func


def pop_config_flags(kwargs: dict[str, Any]) -> tuple[str | None, dict[str, dict[str, Any]]]:
    """Take the generated flags out of a command's kwargs: (config path, {section: {key: value}})."""
    config_path = kwargs.pop("config_path", None)
    given: dict[str, dict[str, Any]] = {name: {} for name in SECTIONS}
    for key in [k for k in kwargs if "__" in k]:
        section, name = key.split("__", 1)
        value = kwargs.pop(key)
        if value is not None:
            given[section][name] = value
    return config_path, given


def resolve_config(config_path: str | Path | None, given: dict[str, dict[str, Any]], base: RunCfg | None = None) -> RunCfg:
    """defaults (or ``base``) < TOML file < flags."""
    for section, values in given.items():  # flags first, so a message names the flag as typed ("--hidden")
        for key, value in values.items():
            check_value(section, key, value, shown=flag_name(key))
    cfg = base or RunCfg()
    if config_path:
        cfg = merge(cfg, load_toml(config_path)) if base else from_dict(load_toml(config_path))
    return merge(cfg, given)


def flat_options(given: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The flags given, checked (a message names the flag as typed), as the API's keyword options."""
    for section, values in given.items():
        for key, value in values.items():
            check_value(section, key, value, shown=flag_name(key))
    return {key: value for values in given.values() for key, value in values.items()}

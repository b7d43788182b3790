"""The one plugin manager: the core's own plugin (`lmlab.core.models.presets`) first, then the entry points of group
"lmlab", loaded once; a broken plugin is reported, not fatal. `LMLAB_PLUGINS=a,b` loads only those entry points (empty:
none; a name no installed plugin has is warned about); `not_registered` explains a name a registry lacks: the plugin
LMLAB_PLUGINS leaves out that would register it, or the plugin whose hook raised."""

from __future__ import annotations

import importlib
import importlib.metadata as md
import inspect
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pluggy
from rich.markup import escape

from lmlab.core.kernel import hookspecs
from lmlab.core.kernel.console import err
from lmlab.core.kernel.errors import LmlabError

CORE_PLUGIN = "lmlab.core.models.presets"


@dataclass
class PluginInfo:
    """What `lmlab plugins` shows for one plugin."""

    name: str
    distribution: str | None = None
    version: str | None = None
    hooks: list[str] = field(default_factory=list)
    registered: dict[str, list[str]] = field(default_factory=dict)
    error: str | None = None
    clashes: list[str] = field(default_factory=list)

    def add(self, kind: str, name: str) -> None:
        self.registered.setdefault(kind, []).append(name)


@dataclass
class Collected:
    """What the latest `collect` of one hook saw: its kind, its key, and each plugin whose hook raised (its error)."""

    kind: str
    key: Callable[[Any], str]
    failures: dict[str, str] = field(default_factory=dict)


pm = pluggy.PluginManager(hookspecs.PROJECT)
pm.add_hookspecs(hookspecs)
_infos: dict[str, PluginInfo] = {}
_collected: dict[str, Collected] = {}
_loaded = False


def lazy(package: str, module: str, name: str) -> Callable[..., Any]:
    """`package.module.name`, imported on its first call: what a plugin registers or a command runs (a retriever's
    opener, a command body) without importing torch and its like when lmlab starts (`lmlab --help` stays fast)."""
    return lambda *args: getattr(importlib.import_module(f"{package}.{module}"), name)(*args)


def _selected() -> list[str] | None:
    """The plugins LMLAB_PLUGINS names, in its order (None: it is unset, so every one)."""
    raw = os.environ.get("LMLAB_PLUGINS")
    return None if raw is None else [name.strip() for name in raw.split(",") if name.strip()]


def load_plugins() -> pluggy.PluginManager:
    """Load the core's plugin and the entry points of group "lmlab" (once)."""
    global _loaded
    if _loaded:
        return pm
    _loaded = True
    pm.register(importlib.import_module(CORE_PLUGIN), name="core")
    _infos["core"] = PluginInfo("core", "lmlab", _version("lmlab"))
    wanted = _selected()
    entry_points = md.entry_points(group=hookspecs.PROJECT)
    installed = sorted(entry_points.names)
    for name in sorted(set(wanted or ()) - set(installed) - {"core"}):  # a typo loads nothing: say so
        message = f"LMLAB_PLUGINS names '{name}', which is not an installed plugin; installed: {', '.join(installed)}"
        err.print(f"[yellow]warning:[/yellow] {escape(message)}")
    for ep in entry_points:
        if wanted is not None and ep.name not in wanted:
            continue
        dist = ep.dist.name if ep.dist else None
        info = PluginInfo(ep.name, dist, ep.dist.version if ep.dist else None)
        _infos[ep.name] = info
        try:
            plugin = ep.load()
            pm.register(plugin, name=ep.name)
        except Exception as exc:  # a broken third-party plugin must not take the CLI down
            info.error = f"{type(exc).__name__}: {exc}"
            continue
        try:
            pm.check_pending()  # a @hookimpl on a misspelt hook name
        except pluggy.PluginValidationError as exc:
            info.error = str(exc)
            pm.unregister(plugin)
    for name, info in _infos.items():
        plugin = pm.get_plugin(name)
        if plugin is not None:
            info.hooks = sorted(h.name for h in pm.get_hookcallers(plugin) or [])
    return pm


def _version(dist: str) -> str | None:
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return None


def call_each(hook_name: str, **kwargs: Any) -> Iterator[tuple[PluginInfo, Callable[[], Any]]]:
    """Yield (plugin info, thunk) per implementation so callers can attribute and isolate each one."""
    load_plugins()
    for impl in reversed(getattr(pm.hook, hook_name).get_hookimpls()):
        info = _infos.setdefault(impl.plugin_name, PluginInfo(impl.plugin_name))
        wanted = inspect.signature(impl.function).parameters
        args = {k: v for k, v in kwargs.items() if k in wanted}
        yield info, (lambda impl=impl, args=args: impl.function(**args))


def plugin_infos() -> list[PluginInfo]:
    load_plugins()
    return list(_infos.values())


# What each `collect` kind is called in a clash warning.
NOUNS = {"eval": "benchmark", "demo": "demo step", "models": "model alias", "backends": "backend",
         "architectures": "architecture", "retrievers": "retriever", "rerankers": "reranker"}


def collect(hook_name: str, kind: str, key: Callable[[Any], str]) -> dict[str, Any]:
    """Run a `register_*` hook and return what was registered, by name. The first plugin to register a name keeps it
    (the core first, then entry points in load order); a later one is refused, noted on its info and warned about
    once. A plugin whose hook raises keeps what it registered before; its error is noted for `not_registered`."""
    load_plugins()
    collected = Collected(kind, key)
    found: dict[str, Any] = {}
    owners: dict[str, str] = {}
    for impl in getattr(pm.hook, hook_name).get_hookimpls():  # registration order (pluggy calls them reversed)
        info = _infos.setdefault(impl.plugin_name, PluginInfo(impl.plugin_name))

        def register(item: Any, info: PluginInfo = info) -> None:
            name = key(item)
            if name in owners and owners[name] != info.name:
                _clash(info, kind, name, owners[name])
                return
            found[name], owners[name] = item, info.name
            if name not in info.registered.get(kind, []):
                info.add(kind, name)

        try:
            impl.function(register=register)
        except Exception as exc:
            info.error = f"{hook_name}: {type(exc).__name__}: {exc}"
            collected.failures[info.name] = f"{type(exc).__name__}: {exc}"
    _collected[hook_name] = collected
    return found


def not_registered(hook_name: str, name: str, message: str, hint: str,
                   error: type[LmlabError] = LmlabError) -> LmlabError:
    """The `error` for `name`, which no loaded plugin registered through `hook_name` (call it after that hook's
    `collect`): the installed plugin that LMLAB_PLUGINS leaves out and that would register it, else each plugin
    whose hook raised, else `message` with `hint`."""
    collected = _collected.get(hook_name)
    if collected is None:  # the hook was never collected, so nothing is known about it
        return error(message, hint)
    what = f"{NOUNS.get(collected.kind, collected.kind)} '{name}'"
    plugin = left_out_registrant(hook_name, name)
    if plugin is not None:
        return left_out_error(f"The {what}", plugin, error)
    if collected.failures:
        failed = "; ".join(f"plugin '{owner}' failed to register: {reason}"
                           for owner, reason in collected.failures.items())
        return error(f"{failed}.", hint=f"the {what} may be one it registers; fix or uninstall the failing plugin "
                                        "(`lmlab plugins` shows its status)")
    return error(message, hint)


def left_out_error(what: str, plugin: str, error: type[LmlabError] = LmlabError) -> LmlabError:
    """`what` (e.g. "The attention 'mlra'") comes from `plugin`, which LMLAB_PLUGINS leaves out: that sentence, and
    how to load the plugin as well."""
    raw = os.environ.get("LMLAB_PLUGINS", "")
    return error(f"{what} comes from plugin '{plugin}', which LMLAB_PLUGINS={raw} leaves out.",
                 hint=f"load it too: LMLAB_PLUGINS={','.join([*(_selected() or []), plugin])}, or unset LMLAB_PLUGINS")


def left_out_plugins(hook_name: str) -> Iterator[tuple[str, Callable[..., Any]]]:
    """(name, implementation of `hook_name`) for each installed plugin that LMLAB_PLUGINS leaves out, imported only
    now, to say which plugin to load; one that fails to import is passed over."""
    load_plugins()
    for ep in md.entry_points(group=hookspecs.PROJECT):
        if ep.name in _infos:
            continue
        try:
            plugin = ep.load()
        except Exception:  # a plugin the user left out that is broken as well provides nothing
            continue
        impl = getattr(plugin, hook_name, None)
        if callable(impl) and hasattr(impl, f"{hookspecs.PROJECT}_impl"):
            yield ep.name, impl


def left_out_registrant(hook_name: str, name: str) -> str | None:
    """The plugin that LMLAB_PLUGINS leaves out whose `hook_name` would register `name` (None: none would, or the
    hook was never collected, so its registry's key is unknown)."""
    if hook_name not in _collected:
        return None
    key = _collected[hook_name].key
    for plugin, impl in left_out_plugins(hook_name):
        names: list[str] = []
        try:
            impl(register=lambda item, names=names: names.append(key(item)))
        except Exception:  # it cannot say what it registers, so it is not the plugin to name
            continue
        if name in names:
            return plugin
    return None


def _clash(info: PluginInfo, kind: str, name: str, owner: str) -> None:
    """Record (on the refused plugin) and warn about a name another plugin registered first, once."""
    message = (f"plugin '{info.name}' registers {NOUNS.get(kind, kind)} '{name}', already registered by plugin "
               f"'{owner}'; kept '{owner}''s")
    if message in info.clashes:
        return
    info.clashes.append(message)
    err.print(f"[yellow]warning:[/yellow] {escape(message)}")

"""`vmhooks catalogue`: list, show, install and uninstall the ready hooks."""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from vmhooks import catalogue
from vmhooks.catalogue import Action, CatalogueError, CatalogueHook, FileAction, Scope
from vmhooks.commands.common import add_hooks_dir, add_json_option, example, hooks_dir
from vmhooks.errors import UsageError


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "catalogue",
        help="the ready hooks: list, show, install, uninstall",
        description="Ready hooks compatible with the VDSM hooks catalogue (docs/catalogue.md).",
    )
    nested = parser.add_subparsers(dest="catalogue_command", metavar="ACTION", required=True)

    listing = nested.add_parser(
        "list",
        help="name, points, properties and summary of each hook",
        **example("vmhooks catalogue list --hooks-dir /usr/libexec/vdsm/hooks"),
    )
    add_hooks_dir(listing)
    add_json_option(listing)
    listing.set_defaults(func=run_list)

    show = nested.add_parser("show", help="a hook's README and manifest", **example("vmhooks catalogue show pincpu"))
    show.add_argument("name", metavar="NAME")
    show.set_defaults(func=run_show)

    install = nested.add_parser(
        "install",
        help="install hooks into a hooks tree",
        **example("vmhooks catalogue install pincpu cantmigrate", "vmhooks catalogue install --all [--force]"),
    )
    install.add_argument("names", metavar="NAME", nargs="*")
    install.add_argument(
        "--all", action="store_true",
        help="every hook of the catalogue: those in the way of a modified copy are skipped and reported",
    )  # fmt: skip
    install.add_argument("--force", action="store_true", help="overwrite modified copies and scripts not ours")
    add_hooks_dir(install)
    install.set_defaults(func=run_install)

    uninstall = nested.add_parser(
        "uninstall", help="remove installed hooks", **example("vmhooks catalogue uninstall cantmigrate")
    )
    uninstall.add_argument("names", metavar="NAME", nargs="+")
    uninstall.add_argument("--force", action="store_true", help="remove modified copies too")
    add_hooks_dir(uninstall)
    uninstall.set_defaults(func=run_uninstall)

    props = nested.add_parser(
        "properties",
        help="the property rules in oVirt's UserDefinedVMProperties form",
        description="Print the custom properties the named hooks (default: the hooks installed "
        "under the hooks dir; --all: every catalogue hook) declare, as 'name=regex;...' for engine-config.",
        **example("vmhooks catalogue properties", "vmhooks catalogue properties --all", "vmhooks catalogue properties pincpu"),
    )
    props.add_argument("names", metavar="NAME", nargs="*")
    props.add_argument("--all", action="store_true", help="every hook of the catalogue, installed or not")
    add_hooks_dir(props)
    props.set_defaults(func=run_properties)


def run_list(args: argparse.Namespace) -> int:
    root = hooks_dir(args)
    installed = catalogue.installed(root) if root.is_dir() else {}
    hooks = catalogue.available()
    if args.json:
        print(json.dumps([hook_json(hook, hook.name in installed) for hook in hooks], indent=2))
        return 0
    width = max(len(hook.name) for hook in hooks)
    for hook in hooks:
        mark = "*" if hook.name in installed else " "
        print(f"{mark} {hook.name:<{width}}  {hook.summary}")
        print(f"  {'':<{width}}  points: {', '.join(hook.points)}")
        props = ", ".join(_property_label(decl) for decl in hook.properties) or "(none)"
        print(f"  {'':<{width}}  properties: {props}")
    where = root if root.is_dir() else f"{root} (which does not exist)"
    print(f"\n* = installed under {where}; (device) = a device custom property (--device-prop)")
    return 0


def run_show(args: argparse.Namespace) -> int:
    hook = catalogue.get_hook(args.name)
    print(hook.readme().rstrip("\n"))
    print(f"\n---- {hook.directory / 'manifest.toml'}")
    print(hook.manifest_text().rstrip("\n"))
    return 0


def run_install(args: argparse.Namespace) -> int:
    if args.all and args.names:
        raise UsageError("give hook names or --all, not both")
    if not args.all and not args.names:
        raise UsageError("name the hooks to install (see `vmhooks catalogue list`), or --all")
    root = hooks_dir(args)
    if not args.all:  # named hooks: all of them or none
        _report(catalogue.install(args.names, root, force=args.force), root)
        return 0
    # --all: each hook on its own, so one conflict skips that hook, not the rest.
    actions: list[FileAction] = []
    skipped: list[str] = []
    for name in catalogue.catalogue_names():
        try:
            actions += catalogue.install([name], root, force=args.force)
        except CatalogueError as exc:
            skipped.append(f"{name}: {exc}")
    _report(actions, root)
    if skipped:
        print(f"skipped {len(skipped)} hook(s):")
        for line in skipped:
            print(f"  {line}")
    return 0


def run_uninstall(args: argparse.Namespace) -> int:
    root = hooks_dir(args)
    actions = catalogue.uninstall(args.names, root, force=args.force)
    _report(actions, root)
    return 0


def run_properties(args: argparse.Namespace) -> int:
    if args.all and args.names:
        raise UsageError("give hook names or --all, not both")
    if args.all:
        hooks = list(catalogue.available())
    elif args.names:
        hooks = [catalogue.get_hook(name) for name in args.names]
    else:
        root = hooks_dir(args)
        hooks = [record.hook for record in catalogue.installed(root).values()] if root.is_dir() else []
        if not hooks:
            raise UsageError(f"no catalogue hooks installed under {root}: name hooks to describe, or --all")
    vm_decls = [d for hook in hooks for d in hook.properties if d.scope is Scope.VM]
    device_decls = [d for hook in hooks for d in hook.properties if d.scope is Scope.DEVICE]
    if vm_decls:
        print("# UserDefinedVMProperties")
        print(catalogue.user_defined_form(vm_decls))
    if device_decls:
        # The catalogue's device properties are all vNIC (interface) properties.
        print("# CustomDeviceProperties")
        print(f"{{type=interface;prop={{{catalogue.user_defined_form(device_decls)}}}}}")
    return 0


def hook_json(hook: CatalogueHook, installed: bool) -> dict[str, Any]:
    return {
        "name": hook.name,
        "summary": hook.summary,
        "points": list(hook.points),
        "installed_as": hook.installed_name,
        "installed": installed,
        "properties": [
            {"name": d.name, "scope": str(d.scope), "regex": d.regex, "description": d.description}
            for d in hook.properties
        ],
    }


def _property_label(decl: catalogue.PropertyDecl) -> str:
    return f"{decl.name} (device)" if decl.scope is Scope.DEVICE else decl.name


def _report(actions: list[FileAction], root: Path) -> None:
    for action in actions:
        try:
            shown: Path | str = action.path.relative_to(root)
        except ValueError:
            shown = action.path
        print(f"{action.hook:<14} {str(action.action):<10} {shown}")
    changed = sum(1 for a in actions if a.action not in (Action.UNCHANGED, Action.ABSENT))
    print(f"{changed} file(s) changed under {root}")

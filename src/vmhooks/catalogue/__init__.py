"""The catalogue of ready hooks (one folder each beside this module) and
the code that installs them: see `_manage` and docs/catalogue.md."""
from __future__ import annotations

from vmhooks.catalogue._manage import (
    CATALOGUE_DIR,
    RECORD_DIR_NAME,
    Action,
    CatalogueError,
    CatalogueHook,
    FileAction,
    HookScript,
    InstalledHook,
    PropertyDecl,
    Scope,
    available,
    catalogue_names,
    get_hook,
    install,
    installed,
    installed_property_rules,
    load_manifest,
    record_dir,
    uninstall,
    user_defined_form,
)

__all__ = [
    "CATALOGUE_DIR", "RECORD_DIR_NAME", "Action", "CatalogueError", "CatalogueHook",
    "FileAction", "HookScript", "InstalledHook", "PropertyDecl", "Scope", "available",
    "catalogue_names", "get_hook", "install", "installed", "installed_property_rules",
    "load_manifest", "record_dir", "uninstall", "user_defined_form",
]  # fmt: skip

"""The catalogue of ready hooks (one folder each beside this module) and
the code that reads them (`_manifest`) and installs them (`_manage`): see docs/catalogue.md."""
from __future__ import annotations

from vmhooks.catalogue._manage import (
    RECORD_DIR_NAME,
    Action,
    FileAction,
    InstalledHook,
    install,
    installed,
    installed_property_rules,
    record_dir,
    uninstall,
    user_defined_form,
)
from vmhooks.catalogue._manifest import (
    CATALOGUE_DIR,
    CatalogueError,
    CatalogueHook,
    HookScript,
    PropertyDecl,
    Scope,
    available,
    catalogue_names,
    get_hook,
    load_manifest,
)

__all__ = [
    "CATALOGUE_DIR", "RECORD_DIR_NAME", "Action", "CatalogueError", "CatalogueHook",
    "FileAction", "HookScript", "InstalledHook", "PropertyDecl", "Scope", "available",
    "catalogue_names", "get_hook", "install", "installed", "installed_property_rules",
    "load_manifest", "record_dir", "uninstall", "user_defined_form",
]  # fmt: skip

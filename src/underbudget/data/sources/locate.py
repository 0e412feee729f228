"""Where named datasets are looked for, in order, and the one message when none has them."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from underbudget.errors import DataError

T = TypeVar("T")

#: environment variable naming a data root that holds one ``<name>/`` folder per dataset
DATA_ENV = "UNDERBUDGET_DATA"

#: known system-wide locations (Debian's dataset-fashion-mnist package)
SYSTEM_LOCATIONS: dict[str, list[str]] = {
    "fashion-mnist": ["/usr/share/datasets/fashion-mnist"],
}

#: system packages that install a dataset into SYSTEM_LOCATIONS
SYSTEM_PACKAGES: dict[str, str] = {"fashion-mnist": "sudo apt-get install dataset-fashion-mnist"}


def cache_root() -> Path:
    """Where downloads go when neither a root nor UNDERBUDGET_DATA is given."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "underbudget" / "data"


def search_places(name: str, root: str | os.PathLike | None) -> list[tuple[str, Path | None]]:
    """Every (description, folder) looked in, in resolution order; folder None if unset."""
    places: list[tuple[str, Path | None]] = []
    if root is not None:
        root_path = Path(root).expanduser()
        places.append(("root", root_path))
        places.append(("root", root_path / name))
    env = os.environ.get(DATA_ENV)
    places.append((f"${DATA_ENV}", Path(env).expanduser() / name if env else None))
    for path in SYSTEM_LOCATIONS.get(name, []):
        places.append(("system", Path(path)))
    places.append(("cache", cache_root() / name))
    return places


def download_target(name: str, root: str | os.PathLike | None) -> Path:
    """Where ``download=True`` writes: the root, else $UNDERBUDGET_DATA/<name>, else the cache."""
    if root is not None:
        return Path(root).expanduser()
    env = os.environ.get(DATA_ENV)
    if env:
        return Path(env).expanduser() / name
    return cache_root() / name


def locate(
    name: str,
    root: str | os.PathLike | None,
    find: Callable[[Path], T | None],
    *,
    download: bool = False,
    fetch: Callable[[Path], None] | None = None,
    expected: str = "",
) -> tuple[T, Path]:
    """Return ``(find(folder), folder)`` for the first folder where ``find`` succeeds.

    ``find`` returns None when a folder does not hold the dataset (and raises DataError when it
    holds a broken copy). With ``download`` and a ``fetch``, the official files are fetched into
    :func:`download_target` as a last resort.
    """
    places = search_places(name, root)
    for _, folder in places:
        if folder is not None and folder.is_dir():
            found = find(folder)
            if found is not None:
                return found, folder
    if download and fetch is not None:
        target = download_target(name, root)
        fetch(target)
        found = find(target)
        if found is not None:
            return found, target
        raise DataError(f"downloaded {name} into {target} but could not read it there")
    raise DataError(not_found_message(name, places, expected, can_download=fetch is not None))


def not_found_message(
    name: str, places: list[tuple[str, Path | None]], expected: str, can_download: bool
) -> str:
    """The single message listing where we looked and the commands that fix it."""
    lines = [f"dataset {name!r} not found. Looked in:"]
    for what, folder in places:
        if folder is None:
            lines.append(f"  - {what}/{name} ({DATA_ENV} is not set)")
        else:
            state = "" if folder.is_dir() else " (does not exist)"
            lines.append(f"  - {folder} [{what}]{state}")
    if expected:
        lines.append(f"Expected there: {expected}.")
    lines.append("Fix it with one of:")
    if name in SYSTEM_PACKAGES:
        lines.append(f"  - {SYSTEM_PACKAGES[name]}")
    lines.append(f"  - export {DATA_ENV}=/path/to/data   (a folder holding {name}/)")
    lines.append(f"  - pass root=/path/to/{name} (config: data.root=/path/to/{name})")
    if can_download:
        lines.append(
            f"  - allow the official download: underbudget run ... data.download=true "
            f"(Python: load_dataset({name!r}, download=True))"
        )
    return "\n".join(lines)

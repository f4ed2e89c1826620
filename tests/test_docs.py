"""The documentation stays true: the examples in ``docs/architecture.md`` and in the
docstrings of resflow and its engine packages run as written, and every relative link and
``#anchor`` in the README, ``docs/`` and the benchmarks' README resolves."""

from __future__ import annotations

import doctest
import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", ROOT / "benchmarks" / "README.md",
         *sorted((ROOT / "docs").glob("*.md"))]


def test_architecture_examples_run() -> None:
    result = doctest.testfile("../docs/architecture.md", module_relative=True,
                              optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE,
                              raise_on_error=False, verbose=False)
    assert result.attempted > 0, "docs/architecture.md holds no examples"
    assert result.failed == 0, f"{result.failed} of the page's examples failed (output above)"


def modules_with_examples() -> list[str]:
    """Every module of ``resflow`` and the engine packages with an example that runs: a
    ``>>>`` line not marked ``+SKIP`` (those need data or a cluster)."""
    found = []
    for package in (ROOT / "resflow", ROOT / "backends" / "resflow_dask",
                    ROOT / "backends" / "resflow_spark"):
        for path in sorted(package.glob("**/*.py")):
            lines = path.read_text().splitlines()
            if any(">>> " in line and "+SKIP" not in line for line in lines):
                parts = path.relative_to(package.parent).with_suffix("").parts
                found.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return found


@pytest.mark.parametrize("name", modules_with_examples())
def test_docstring_examples_run(name: str) -> None:
    result = doctest.testmod(importlib.import_module(name),
                             optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0, f"{name} has a '>>> ' line but doctest finds no example"
    assert result.failed == 0, f"{result.failed} of {name}'s examples failed (output above)"


def anchors(page: Path) -> set[str]:
    """The ``#anchors`` GitHub gives a page's headings: lower case, punctuation dropped,
    spaces as hyphens, a repeated heading numbered ``-1``, ``-2``..."""
    seen: dict[str, int] = {}
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.DOTALL)
    for heading in re.findall(r"^#{1,6} +(.+?) *$", text, flags=re.MULTILINE):
        slug = re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        if count:
            seen[f"{slug}-{count}"] = 1
    return set(seen)


def resolves(page: Path, target: str) -> bool:
    """Whether a relative link of ``page`` names a file that exists, and a heading of it
    where the link has an ``#anchor``."""
    path, _, anchor = target.partition("#")
    linked = (page.parent / path).resolve() if path else page
    if not linked.exists():
        return False
    return not anchor or (linked.suffix == ".md" and anchor in anchors(linked))


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.relative_to(ROOT).as_posix())
def test_links_resolve(page: Path) -> None:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.DOTALL)
    targets = re.findall(r"\]\(([^)\s]+)\)", text)
    broken = [target for target in targets
              if not re.match(r"[a-z]+:", target)  # http(s), mailto: not checked offline
              and not resolves(page, target)]
    assert not broken, f"{page.relative_to(ROOT)}: links that do not resolve: {broken}"

"""The examples in ``docs/architecture.md`` run as written, so the page stays true to the code."""

from __future__ import annotations

import doctest


def test_architecture_examples_run() -> None:
    result = doctest.testfile("../docs/architecture.md", module_relative=True,
                              optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE,
                              raise_on_error=False, verbose=False)
    assert result.attempted > 0, "docs/architecture.md holds no examples"
    assert result.failed == 0, f"{result.failed} of the page's examples failed (output above)"

"""Progress bars: tqdm's notebook-aware bars, imported only when a bar is shown.

``tqdm.auto`` warns at import in a Jupyter kernel without ipywidgets, so a run with bars
off (``resflow.run`` by default) must not import it; a disabled bar is tqdm's plain one.
"""

from __future__ import annotations

from typing import Any


def progress_bar(iterable: Any = None, *, enabled: bool = True, **kwargs: Any) -> Any:
    """A tqdm bar over ``iterable`` (or a manual one), or a silent one when not ``enabled``."""
    if not enabled:
        from tqdm import tqdm

        return tqdm(iterable, disable=True, **kwargs)
    from tqdm.auto import tqdm

    return tqdm(iterable, **kwargs)

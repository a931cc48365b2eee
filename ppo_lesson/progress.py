"""Progress bars for the long loops: ``tqdm.auto`` (a widget in a notebook, text in a terminal).

A notebook stores a progress widget as it was when it was drawn (``0/1300``), so a page viewed
without a kernel (GitHub, nbviewer) would show an empty bar. In a notebook the bar therefore
prints its finished state as one plain line when it closes."""

from __future__ import annotations

from tqdm.auto import tqdm

try:
    from tqdm.notebook import tqdm as _NotebookBar
except ImportError:  # pragma: no cover - tqdm always ships it; ipywidgets may be missing
    _NotebookBar = None


class ProgressBar(tqdm):
    """``tqdm.auto.tqdm`` that leaves a final text line behind in a notebook."""

    def close(self):
        was_open = not self.disable and not getattr(self, "_final_line_printed", False)
        super().close()
        if was_open and _NotebookBar is not None and isinstance(self, _NotebookBar):
            self._final_line_printed = True
            print(self.format_meter(**{**self.format_dict, "ncols": 80}))


def progress_bar(iterable=None, *, desc: str, total: int | None = None, enabled: bool = True) -> ProgressBar:
    """A progress bar over ``iterable`` (or ``total`` manual ``update()`` steps), hidden when not ``enabled``."""
    return ProgressBar(iterable, desc=desc, total=total, disable=not enabled, mininterval=0.5)

"""tools/lab_check.py (``make test-lab``): what it expects from a committed notebook, and, in a real
JupyterLab and Chromium, that it flags each kind of breakage and passes what works.

The browser test starts JupyterLab and Chromium (about half a minute), so it runs under ``make test-lab``
(which sets LAB_CHECK_SELF_TEST=1), not under ``make test``."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parent.parent
SPEC = importlib.util.spec_from_file_location("lab_check", ROOT / "tools" / "lab_check.py")
lab_check = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(lab_check)

PNG = "iVBORw0KGgo="
WIDGET = {"model_id": "0", "version_major": 2, "version_minor": 0}


def _code(source: str, *outputs) -> nbformat.NotebookNode:
    cell = nbformat.v4.new_code_cell(source)
    cell.outputs = list(outputs)
    return cell


def test_expected_figures_skip_a_widgets_static_fallback():
    cells = [
        _code("fig", nbformat.v4.new_output("display_data", data={"image/png": PNG, "text/plain": "<Figure>"})),
        _code(
            "explorer()",
            nbformat.v4.new_output(
                "execute_result",
                data={lab_check.WIDGET_VIEW: WIDGET, "image/png": PNG, "text/plain": "VBox()"},
                execution_count=2,
            ),
        ),
        _code("train()", nbformat.v4.new_output("display_data", data={lab_check.WIDGET_VIEW: WIDGET})),
        _code("print(1)", nbformat.v4.new_output("stream", name="stdout", text="1\n")),
    ]
    assert lab_check.committed_expectations(cells) == {
        0: {"pngs": 1, "widgets": 0},
        1: {"pngs": 0, "widgets": 1},
        2: {"pngs": 0, "widgets": 1},
    }
    assert lab_check.committed_explorers(cells) == 1  # the returned widget; the progress bar is displayed


def _self_test_notebook(path: Path) -> None:
    """One cell per kind of breakage, plus a working figure and a working explorer."""
    figure_claimed = _code("print('no figure')", nbformat.v4.new_output("display_data", data={"image/png": PNG}))
    nb = nbformat.v4.new_notebook(metadata={"kernelspec": {"name": "python3", "display_name": "Python 3"}})
    nb.cells = [
        _code("import ipywidgets as w\nimport matplotlib.pyplot as plt\nfrom traitlets import Unicode"),
        nbformat.v4.new_markdown_cell("![missing](../figures/does_not_exist.png)"),
        _code(
            "out = w.Output()\nwith out:\n    plt.plot([0, 1])\n    plt.show()\nw.VBox([w.IntSlider(1, max=5), out])"
        ),
        _code(
            "class Bogus(w.DOMWidget):\n    _view_name = Unicode('BogusView').tag(sync=True)\n"
            "    _view_module = Unicode('bogus-module').tag(sync=True)\n\nBogus()"
        ),
        figure_claimed,
        _code("plt.plot([1, 0])\nplt.show()", nbformat.v4.new_output("display_data", data={"image/png": PNG})),
        _code(
            "slope = w.IntSlider(1, max=5)\nshown = w.Output()\n\ndef draw(change=None):\n"
            "    with shown:\n        shown.clear_output(wait=True)\n        plt.plot([0, slope.value])\n"
            "        plt.show()\n\nslope.observe(draw, 'value')\ndraw()\nw.VBox([slope, shown])"
        ),
        _code("1 / 0"),
        _code("print('never runs')"),
    ]
    nbformat.write(nb, path)


@pytest.mark.skipif(os.environ.get("LAB_CHECK_SELF_TEST") != "1", reason="starts a browser: run by make test-lab")
@pytest.mark.skipif(not lab_check.CHROMIUM.exists() and os.geteuid() != 0, reason="no Chromium, and not root")
def test_lab_check_flags_each_breakage_and_passes_what_works(tmp_path):
    notebook = tmp_path / "99_lab_check_self_test.ipynb"
    _self_test_notebook(notebook)
    run = subprocess.run(
        [
            sys.executable,
            str(ROOT / "tools" / "lab_check.py"),
            str(notebook),
            "--out",
            str(tmp_path / "out"),
            "--timeout",
            "120",
            "--slider-timeout",
            "15",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    report = run.stdout.split("FAILED", 1)[-1]
    assert run.returncode == 1, run.stdout + run.stderr
    name = notebook.name
    for expected in (
        f"{name} cell 1: broken image",
        "/files/figures/does_not_exist.png",  # and the failed request behind it
        f"{name} cell 2: explorer 1: moving the first slider (1 -> 2) did not redraw",
        f"{name} cell 3 ('class Bogus(w.DOMWidget):'): widget not rendered",
        f"{name} cell 4 (\"print('no figure')\"): 0 figure(s) after Run All, the committed notebook shows 1",
        f"{name} cell 7 ('1 / 0'): error output ZeroDivisionError",
        f"{name} cell 8: never ran",
    ):
        assert expected in report, f"{expected!r} not reported:\n{report}"
    for working in ("cell 5", "cell 6"):
        assert f"{name} {working}" not in report, report
    assert (tmp_path / "out" / f"{notebook.stem}.png").stat().st_size > 0

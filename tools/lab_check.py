"""Every notebook in a real JupyterLab 4 driven by a real Chromium: Run All, then check what a learner sees.

Usage: .venv/bin/python tools/lab_check.py [--out runs/test-lab] [--timeout 360] [notebooks/NN_name.ipynb ...]

Serves a temporary copy of notebooks/ and figures/ (side by side, so ``../figures/`` links resolve and
autosave never touches tracked files), writes figures to <out>/figures via $PPO_LESSON_FIGURES, and
reuses the stage cache ($PPO_LESSON_CACHE, else the checkout's .cache/). For each notebook: clear all
outputs, Run All, wait until every code cell ran and the kernel is idle, then check: no error output,
no broken image, no failed request, every widget rendered, at least the committed number of figures
per cell, and that moving each explorer's first slider redraws its figure. Saves one screenshot per
notebook under <out>/. Exits 1 on any failure, 0 when all pass or when no Chromium can be had (skip).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = Path("/usr/bin/chromium")
VIEWPORT = {"width": 1400, "height": 1000}
MAX_SCREENSHOT_HEIGHT = 30000
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"

# Lab settings for the test: every cell stays in the DOM (the default windowing drops off-screen cells,
# which would hide their outputs from the checks), and no news fetch (CI has no internet).
LAB_SETTINGS = {
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {"fetchNews": "false", "checkForUpdates": False},
}

# State of the open notebook, read from the lab itself (exposed with --LabApp.expose_app_in_browser).
JS_STATE = """() => {
  const panel = window.jupyterapp.shell.currentWidget;
  if (!panel || !panel.sessionContext || !panel.content || !panel.content.model) return null;
  const kernel = panel.sessionContext.session && panel.sessionContext.session.kernel;
  const prompts = [...panel.node.querySelectorAll('.jp-InputPrompt')].map(p => p.textContent.trim());
  const cells = panel.content.model.cells;
  const notRun = [];
  for (let i = 0; i < cells.length; i++) {
    const cell = cells.get(i);
    if (cell.type === 'code' && cell.sharedModel.getSource().trim() && cell.executionCount == null) notRun.push(i);
  }
  return {kernel: kernel ? kernel.status : 'none', ready: panel.sessionContext.isReady,
          busy: prompts.filter(p => p.includes('*')).length, notRun, nCells: cells.length};
}"""

# What the page shows, cell by cell. The top-level output areas follow the cell's outputs in the lab's
# model one to one, so each rendered output is checked against the output it renders. A bundle with a
# widget view is a widget (its image/png, if any, is only the static fallback for viewers without a kernel).
JS_CELLS = """() => {
  const panel = window.jupyterapp.shell.currentWidget;
  const model = panel.content.model.toJSON();
  const nodes = [...panel.node.querySelectorAll('.jp-Notebook .jp-Cell')];
  const text = el => (el.innerText || '').trim();
  const describeError = o => {  // the exception and the line that raised it (the last '---->' of the traceback)
    const lines = (o.traceback || []).join('\\n').replace(/\\u001b\\[[0-9;]*m/g, '').split('\\n');
    const raised = lines.filter(l => l.trim().startsWith('---->')).pop();
    return o.ename + ': ' + o.evalue + (raised ? ' (at ' + raised.trim() + ')' : '');
  };
  return nodes.map((node, i) => {
    const cellModel = model.cells[i] || {};
    const outputs = cellModel.outputs || [];
    const children = [...node.querySelectorAll(':scope .jp-Cell-outputArea > .jp-OutputArea-child')];
    const source = Array.isArray(cellModel.source) ? cellModel.source.join('') : (cellModel.source || '');
    const report = {index: i, type: cellModel.cell_type, firstLine: source.split('\\n')[0], pngs: 0, widgetViews: 0,
                    unrendered: [], mismatch: children.length !== outputs.length, tracebacks: [],
                    errorOutputs: outputs.filter(o => o.output_type === 'error').map(describeError)};
    outputs.forEach((output, j) => {
      const data = output.data || {};
      const child = children[j];
      if (!child) return;
      if (data['%WIDGET%']) {
        report.widgetViews += 1;
        const broken = /Error displaying widget|Loading widget/.test(text(child))
                       || child.querySelector('.jupyter-widgets-error-widget');  // ipywidgets 8's error view
        if (broken || !child.querySelector('.jupyter-widgets')) report.unrendered.push(text(child).slice(0, 200));
      } else if (data['image/png'] && child.querySelector('img')) {
        report.pngs += 1;
      }
    });
    const stderr = '.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]';
    report.tracebacks = [...node.querySelectorAll(stderr)].map(text)
      .filter(t => /Traceback|Error:/.test(t)).map(t => t.slice(-400));
    return report;
  });
}""".replace("%WIDGET%", WIDGET_VIEW)

# Load every image (markdown images may be lazy), then report the ones that did not decode.
JS_BROKEN_IMAGES = """async () => {
  const panel = window.jupyterapp.shell.currentWidget;
  const images = [...panel.node.querySelectorAll('img')];
  images.forEach(img => { img.loading = 'eager'; });
  const settle = img => Promise.race([img.decode().catch(() => null), new Promise(r => setTimeout(r, 15000))]);
  await Promise.all(images.map(settle));
  const cells = [...panel.node.querySelectorAll('.jp-Notebook .jp-Cell')];
  return images.filter(img => !(img.complete && img.naturalWidth > 0)).map(img => ({
    cell: cells.findIndex(c => c.contains(img)), src: (img.getAttribute('src') || '').slice(0, 120),
  }));
}"""


def ensure_chromium() -> bool:
    """True when Debian's chromium is at /usr/bin/chromium, installing it with apt-get when root."""
    if CHROMIUM.exists():
        return True
    if os.geteuid() != 0:
        return False
    print("lab-check: /usr/bin/chromium missing, installing Debian's chromium with apt-get", flush=True)
    subprocess.run(["apt-get", "update", "-q"], check=False)
    subprocess.run(["apt-get", "install", "-y", "-q", "chromium"], check=False)
    return CHROMIUM.exists()


def tree_digests(*folders: Path) -> dict[str, str]:
    """A hash of every file under the given folders, to prove the test left them alone."""
    return {
        str(path.relative_to(ROOT)): hashlib.sha256(path.read_bytes()).hexdigest()
        for folder in folders
        for path in sorted(p for p in folder.rglob("*") if p.is_file())
    }


def committed_expectations(cells: list[dict]) -> dict[int, dict[str, int]]:
    """Per code cell of the committed notebook: how many figures (image/png outputs that are not a widget's
    static fallback) and how many widget views it shows."""
    expected = {}
    for index, cell in enumerate(cells):
        outputs = [out.get("data", {}) for out in cell.get("outputs", [])]
        pngs = sum("image/png" in data and WIDGET_VIEW not in data for data in outputs)
        widgets = sum(WIDGET_VIEW in data for data in outputs)
        if pngs or widgets:
            expected[index] = {"pngs": pngs, "widgets": widgets}
    return expected


def committed_explorers(cells: list[dict]) -> int:
    """How many explorers the committed notebook shows: cells whose value is a widget (an execute_result
    widget view); progress bars and live plots are displayed (display_data), not returned."""
    outputs = [out for cell in cells for out in cell.get("outputs", [])]
    return sum(out["output_type"] == "execute_result" and WIDGET_VIEW in out.get("data", {}) for out in outputs)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def kernel_transport(runtime_dir: Path) -> list[str]:
    """Kernels over Unix sockets where the system has them and the socket paths stay short enough.

    CI runs this test beside nbval, which starts kernels of its own. Over TCP a kernel's ports are picked
    free, closed and handed to the kernel, and another process can take one in that gap: the kernel then
    dies at start. A kernel's sockets are named after its connection file in `runtime_dir`
    (kernel-<uuid>-ipc-<n>), and a Unix socket's path may hold at most about 100 characters."""
    longest = runtime_dir / f"kernel-{'0' * 36}-ipc-99"
    return ["--KernelManager.transport=ipc"] if os.name == "posix" and len(str(longest)) <= 100 else []


def start_lab(served: Path, scratch: Path, figures_out: Path, port: int, log) -> subprocess.Popen:
    """JupyterLab 4 from the venv on 127.0.0.1:port, no token, settings and workspaces in scratch."""
    settings = scratch / "lab-settings"
    for name, values in LAB_SETTINGS.items():
        path = settings / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values))
    env = dict(os.environ)
    env.pop("MPLBACKEND", None)  # the notebooks draw inline, as a learner's lab does
    env.update(
        PPO_LESSON_FIGURES=str(figures_out),
        JUPYTERLAB_SETTINGS_DIR=str(settings),
        JUPYTERLAB_WORKSPACES_DIR=str(scratch / "lab-workspaces"),
        JUPYTER_RUNTIME_DIR=str(scratch / "jupyter-runtime"),
    )
    command = [
        str(Path(sys.executable).parent / "jupyter"), "lab", "--no-browser",
        "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}", "--ServerApp.port_retries=0",
        "--IdentityProvider.token=", "--ServerApp.password=", f"--ServerApp.root_dir={served}",
        "--LabApp.expose_app_in_browser=True",
    ]
    if os.geteuid() == 0:
        command.append("--allow-root")
    command += kernel_transport(scratch / "jupyter-runtime")
    lab = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if lab.poll() is not None:
            raise RuntimeError(f"jupyter lab exited with code {lab.returncode}; see {log.name}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/status", timeout=2) as reply:
                if reply.status == 200:
                    return lab
        except OSError:
            time.sleep(0.5)
    lab.terminate()
    raise RuntimeError(f"jupyter lab did not answer on port {port} within 120 s; see {log.name}")


def click_menu(page, menu: str, item: str) -> None:
    """Open a top menu and click one of its items by label, as a learner would."""
    page.locator(".lm-MenuBar-itemLabel", has_text=menu).first.click()
    page.locator(".lm-Menu-itemLabel", has_text=item).first.click()


def run_all(page, timeout_s: float) -> dict:
    """Clear every output, Run All, and wait until the kernel is idle with no cell queued or running."""
    page.wait_for_function(f"() => {{ const s = ({JS_STATE})(); return s && s.ready && s.kernel === 'idle'; }}",
                           timeout=120_000)
    click_menu(page, "Edit", "Clear Outputs of All Cells")
    click_menu(page, "Run", "Run All Cells")
    deadline = time.monotonic() + timeout_s
    quiet_polls = 0
    state = page.evaluate(JS_STATE)
    while time.monotonic() < deadline:
        time.sleep(1)
        state = page.evaluate(JS_STATE)
        finished = state["kernel"] == "idle" and state["busy"] == 0
        quiet_polls = quiet_polls + 1 if finished else 0
        if quiet_polls >= 3:  # idle for 3 s in a row: Run All has finished (or stopped at an error)
            return state
    state["timed_out"] = True
    return state


def explorer_images(explorer) -> list[str]:
    """The sources (PNG data URLs) of the loaded figures inside an explorer's Output widget."""
    return explorer.locator(".widget-output img").evaluate_all(
        "imgs => imgs.filter(i => i.complete && i.naturalWidth > 0).map(i => i.src)"
    )


def check_explorers(page, name: str, slider_timeout_s: float) -> tuple[list[str], int]:
    """Move each explorer's first slider by one step (keyboard) and require its figure to change."""
    failures = []
    explorers = page.locator(".jp-Cell-outputArea > .jp-OutputArea-child > .jp-OutputArea-output").filter(
        has=page.locator(".widget-slider")
    ).filter(has=page.locator(".widget-output"))
    count = explorers.count()
    for k in range(count):
        explorer = explorers.nth(k)
        cell = explorer.evaluate("e => [...document.querySelectorAll('.jp-Notebook .jp-Cell')]"
                                 ".findIndex(c => c.contains(e))")
        where = f"{name} cell {cell}: explorer {k + 1}"
        before = explorer_images(explorer)
        if not before:
            failures.append(f"{where}: shows no figure before the slider moves")
            continue
        slider = explorer.locator(".widget-slider").first
        readout = slider.locator(".widget-readout")
        value = readout.inner_text() if readout.count() else None
        handle = slider.locator(".noUi-handle, .ui-slider-handle").first
        handle.focus()
        handle.press("ArrowRight")
        if readout.count() and readout.inner_text() == value:  # at its maximum: step down instead
            handle.press("ArrowLeft")
        if readout.count() and readout.inner_text() == value:
            failures.append(f"{where}: the first slider did not move with the keyboard")
            continue
        deadline = time.monotonic() + slider_timeout_s
        after = before
        while time.monotonic() < deadline and (not after or after == before):
            time.sleep(0.5)
            after = explorer_images(explorer)
        if not after or after == before:
            shown = explorer.locator(".widget-output").first.inner_text()[-300:]  # e.g. a traceback instead
            failures.append(f"{where}: moving the first slider ({value} -> {readout.inner_text()}) "
                            f"did not redraw its figure within {slider_timeout_s:.0f} s; it shows: {shown!r}")
    return failures, count


def check_cells(page, name: str, expected: dict[int, dict[str, int]], n_committed: int) -> list[str]:
    """Errors, widgets and figure counts of every cell, against the committed notebook."""
    failures = []
    cells = page.evaluate(JS_CELLS)
    if len(cells) != n_committed:
        failures.append(f"{name}: the lab shows {len(cells)} cells, the committed notebook has {n_committed}")
    for cell in cells:
        where = f"{name} cell {cell['index']} ({cell['firstLine'][:50]!r})"
        for error in cell["errorOutputs"]:
            failures.append(f"{where}: error output {error[:300]}")
        if not cell["errorOutputs"]:
            for trace in cell["tracebacks"]:
                failures.append(f"{where}: traceback shown: ...{trace[-300:]}")
        for message in cell["unrendered"]:
            failures.append(f"{where}: widget not rendered: {message!r}")
        if cell["mismatch"]:
            failures.append(f"{where}: the page does not show one output area per output of the cell")
        want = expected.get(cell["index"], {"pngs": 0, "widgets": 0})
        if cell["pngs"] < want["pngs"]:
            failures.append(
                f"{where}: {cell['pngs']} figure(s) after Run All, the committed notebook shows {want['pngs']}"
            )
        if want["widgets"] and not cell["widgetViews"]:
            failures.append(f"{where}: no widget after Run All, the committed notebook shows {want['widgets']}")
    for broken in page.evaluate(JS_BROKEN_IMAGES):
        failures.append(f"{name} cell {broken['cell']}: broken image {broken['src']}")
    return failures


def screenshot(page, path: Path) -> None:
    """The whole notebook in one picture: hide the side bar and make the window as tall as the notebook."""
    page.evaluate("() => window.jupyterapp.shell.collapseLeft()")
    height = page.evaluate(
        "() => { const n = window.jupyterapp.shell.currentWidget.content.node;"
        " const s = n.querySelector('.jp-WindowedPanel-outer') || n;"
        " return s.scrollHeight + (window.innerHeight - s.clientHeight); }"
    )
    page.set_viewport_size({"width": VIEWPORT["width"], "height": min(max(height, 600), MAX_SCREENSHOT_HEIGHT)})
    page.wait_for_timeout(1500)
    page.evaluate(
        "() => { const n = window.jupyterapp.shell.currentWidget.content.node;"
        " (n.querySelector('.jp-WindowedPanel-outer') || n).scrollTop = 0; }"
    )
    page.wait_for_timeout(500)
    page.screenshot(path=str(path), full_page=True)


def check_notebook(browser, base_url: str, name: str, cells: list[dict], out: Path, timeouts: argparse.Namespace):
    """Open the served copy of one notebook in a fresh page, Run All, check it against the committed
    cells (as copied), screenshot it, shut its kernel down. Returns the failures and a few counts."""
    page = browser.new_page(viewport=VIEWPORT)
    requests_failed: list[str] = []
    listening = [True]

    def on_failed(request):
        if listening[0]:
            requests_failed.append(f"{request.method} {request.url} failed: {request.failure}")

    def on_response(response):
        if listening[0] and response.status >= 400:
            requests_failed.append(f"{response.request.method} {response.url} -> HTTP {response.status}")

    page.on("requestfailed", on_failed)
    page.on("response", on_response)
    stats = {"explorers": 0}
    try:
        page.goto(f"{base_url}/lab/tree/notebooks/{name}", wait_until="domcontentloaded")
        page.wait_for_function("() => window.jupyterapp && window.jupyterapp.shell.currentWidget"
                               " && window.jupyterapp.shell.currentWidget.content", timeout=120_000)
        state = run_all(page, timeouts.timeout)
        failures = []
        if state.get("timed_out"):
            failures.append(f"{name}: Run All not finished after {timeouts.timeout:.0f} s "
                            f"(kernel {state['kernel']}, {state['busy']} cell(s) queued or running)")
        from playwright.sync_api import TimeoutError as PlaywrightTimeout

        try:  # widget views render asynchronously once their models arrive
            page.wait_for_function("() => !/Loading widget/.test(document.body.innerText)", timeout=30_000)
        except PlaywrightTimeout:
            pass  # check_cells names the widgets still not rendered
        failures += check_cells(page, name, committed_expectations(cells), len(cells))
        if state["notRun"]:
            first = state["notRun"][0]
            failures.append(f"{name} cell {first}: never ran ({len(state['notRun'])} code cell(s) did not run)")
        explorer_failures, stats["explorers"] = check_explorers(page, name, timeouts.slider_timeout)
        failures += explorer_failures
        if stats["explorers"] < committed_explorers(cells):
            failures.append(f"{name}: {stats['explorers']} explorer(s) with a slider and a figure after Run All, "
                            f"the committed notebook shows {committed_explorers(cells)}")
        screenshot(page, out / f"{Path(name).stem}.png")
        listening[0] = False
        failures += [f"{name}: {message}" for message in requests_failed]
        page.evaluate("() => window.jupyterapp.shell.currentWidget.sessionContext.shutdown()")
    finally:
        listening[0] = False
        page.close()
    return failures, stats


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="*", type=Path, help="default: every notebooks/[0-9]*.ipynb")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "test-lab", help="screenshots and logs")
    parser.add_argument("--timeout", type=float, default=360, help="seconds allowed for one notebook's Run All")
    parser.add_argument("--slider-timeout", type=float, default=60, help="seconds an explorer may take to redraw")
    args = parser.parse_args()
    notebooks = [p.resolve() for p in args.notebooks] or sorted((ROOT / "notebooks").glob("[0-9]*.ipynb"))

    if not ensure_chromium():
        print("lab-check: SKIPPED: /usr/bin/chromium is missing and this user is not root, so it cannot be "
              "installed (run `apt-get install -y chromium` as root, then `make test-lab`)")
        return 0
    from playwright.sync_api import sync_playwright  # after the skip check: Playwright is useless without a browser

    out = args.out.resolve()
    for stale in out.glob("[0-9]*.png"):  # the last run's screenshots, not whatever else the folder holds
        stale.unlink()
    shutil.rmtree(out / "figures", ignore_errors=True)
    (out / "figures").mkdir(parents=True)
    before = tree_digests(ROOT / "notebooks", ROOT / "figures")
    print(f"lab-check: screenshots and logs in {out}", flush=True)

    failures: list[str] = []
    timings: list[tuple[str, float, int]] = []
    total_start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="lab-check-") as scratch_dir, open(out / "jupyter-lab.log", "w") as log:
        scratch = Path(scratch_dir)
        served = scratch / "served"  # notebooks/ and figures/ side by side, as in the checkout
        shutil.copytree(ROOT / "notebooks", served / "notebooks")
        shutil.copytree(ROOT / "figures", served / "figures")
        for notebook in notebooks:  # a notebook named from elsewhere is served beside the lesson's
            if not (served / "notebooks" / notebook.name).exists():
                shutil.copy(notebook, served / "notebooks" / notebook.name)
        # what the checks expect comes from the copy being served, not from a tree others may be editing
        committed = {nb.name: json.loads((served / "notebooks" / nb.name).read_text())["cells"] for nb in notebooks}
        port = free_port()
        base_url = f"http://127.0.0.1:{port}"
        lab = start_lab(served, scratch, out / "figures", port, log)
        try:
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(
                    executable_path=str(CHROMIUM), args=["--no-sandbox", "--disable-dev-shm-usage"]
                )
                for notebook in notebooks:
                    start = time.monotonic()
                    try:
                        found, stats = check_notebook(
                            browser, base_url, notebook.name, committed[notebook.name], out, args
                        )
                    except Exception as error:  # a crash in one notebook's check must not hide the others
                        found, stats = [f"{notebook.name}: check crashed: {type(error).__name__}: {error}"], {}
                    seconds = time.monotonic() - start
                    timings.append((notebook.name, seconds, stats.get("explorers", 0)))
                    status = "ok" if not found else f"{len(found)} failure(s)"
                    print(f"lab-check: {notebook.name}: {seconds:.0f} s, {stats.get('explorers', 0)} explorer(s), "
                          f"{status}", flush=True)
                    for message in found:
                        print(f"  FAIL {message}", flush=True)
                    failures += found
                browser.close()
        finally:
            lab.terminate()
            lab.wait(timeout=30)
    after = tree_digests(ROOT / "notebooks", ROOT / "figures")
    changed = sorted(name for name in before.keys() | after.keys() if before.get(name) != after.get(name))
    if changed:
        failures.append(f"files in notebooks/ or figures/ changed during the browser test: {', '.join(changed)}")

    total = time.monotonic() - total_start
    print(f"\nlab-check: {len(notebooks)} notebook(s) in {total:.0f} s; screenshots in {out}")
    for name, seconds, explorers in timings:
        print(f"  {name:32s} {seconds:6.0f} s  explorers: {explorers}")
    if failures:
        print(f"lab-check: FAILED ({len(failures)}):")
        for message in failures:
            print(f"  - {message}")
        return 1
    print("lab-check: all notebooks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Lesson 00 as a learner takes it: opened in JupyterLab 4 in a real browser (headless Chromium, driven by Playwright), run with
the menu's Run > Run All Cells, exercises left blank. Every code cell must run, and none may show an error.

The lesson is a COPY in a temporary folder, so JupyterLab's autosave never rewrites the repository's notebook. The browser is
Debian's `chromium` (`apt-get install -y chromium`; `.ci/run` installs it) and Playwright comes from pip ([dev]); Playwright's
own browser download (`playwright install`) is never used; `CPIXELCNN_CHROMIUM` names another Chromium-based browser (GitHub's
runners: /usr/bin/google-chrome). Without a browser or Playwright the test skips and says which is missing.
A screenshot of the page after the run is saved in pytest's temporary folder (its path is printed with `pytest -s`)."""
import json, os, secrets, shutil, socket, subprocess, sys, time, urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LESSON = ROOT / 'nbs' / '00_masks.ipynb'
CHROMIUM = Path(os.environ.get('CPIXELCNN_CHROMIUM', '/usr/bin/chromium'))
# Chromium's flags for a headless run as root on a machine with a closed network: no sandbox (root), no GPU, and none of its
# background connections (Google's hosts, component updates, sync), which such a network refuses
CHROMIUM_ARGS = ['--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage', '--disable-quic', '--no-first-run',
                 '--disable-background-networking', '--disable-component-update', '--disable-sync']
# JupyterLab's user settings for the test: every cell in the page (no windowing: every prompt and output is in the page to
# read), no news or update check (a closed network, and no pop-up over the menu)
LAB_SETTINGS = {
    '@jupyterlab/notebook-extension/tracker.jupyterlab-settings': {'windowingMode': 'none'},
    '@jupyterlab/apputils-extension/notification.jupyterlab-settings': {'checkForUpdates': False, 'fetchNews': 'false'},
}
RUN_LIMIT_S = 600          # a lesson's Run All takes at most about 2 minutes on one thread

def why_not() -> str:
    "Why the browser test cannot run here, or ''"
    if not CHROMIUM.exists(): return f"no Chromium at {CHROMIUM}: apt-get install -y chromium (Debian's package)"
    try: import playwright.sync_api  # noqa: F401
    except ImportError: return "Playwright is not installed: pip install -e '.[dev]'"
    try: import jupyterlab  # noqa: F401
    except ImportError: return "JupyterLab is not installed: pip install -e '.[course]'"
    return ''

pytestmark = pytest.mark.skipif(bool(why_not()), reason=why_not() or 'can run')

def free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]

def notebook(*sources:str) -> dict:
    "A notebook of code cells"
    cells = [dict(cell_type='code', id=f'c{i}', metadata={}, execution_count=None, outputs=[], source=s) for i, s in enumerate(sources)]
    return dict(cells=cells, metadata=dict(kernelspec=dict(display_name='Python 3', language='python', name='python3')), nbformat=4, nbformat_minor=5)

@pytest.fixture(scope='module')
def lab(tmp_path_factory):
    """JupyterLab serving a temporary folder that holds a copy of lesson 00 and a notebook whose second cell raises (to show that
    the test sees an error): (base URL, token, the folder)"""
    tmp = tmp_path_factory.mktemp('lab')
    work, home = tmp / 'course', tmp / 'jupyter'
    work.mkdir()
    shutil.copy(LESSON, work / LESSON.name)
    (work / 'raises.ipynb').write_text(json.dumps(notebook("print('first')", "1 / 0", "print('never')")))
    for name, value in LAB_SETTINGS.items():
        f = home / 'settings' / name
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(json.dumps(value))
    port, token = free_port(), secrets.token_hex(16)
    env = {**os.environ, 'JUPYTER_CONFIG_DIR': str(home / 'config'), 'JUPYTER_RUNTIME_DIR': str(home / 'runtime'),
           'JUPYTERLAB_SETTINGS_DIR': str(home / 'settings'), 'JUPYTERLAB_WORKSPACES_DIR': str(home / 'workspaces'),
           'OMP_NUM_THREADS': os.environ.get('OMP_NUM_THREADS', '1')}
    log_path = tmp / 'jupyterlab.log'
    with open(log_path, 'w') as log:
        server = subprocess.Popen([sys.executable, '-m', 'jupyterlab', '--no-browser', '--ServerApp.ip=127.0.0.1', f'--ServerApp.port={port}',
                                   '--ServerApp.port_retries=0', f'--IdentityProvider.token={token}', f'--ServerApp.root_dir={work}',
                                   '--allow-root', '--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate'],
                                  cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT)
        base = f'http://127.0.0.1:{port}'
        try:
            until(lambda: api(base, token, 'status') is not None or server.poll() is not None, 120, "JupyterLab did not answer")
            if server.poll() is not None: pytest.fail(f"JupyterLab stopped:\n{log_path.read_text()[-3000:]}")
            yield base, token, work
        finally:
            server.terminate()
            try: server.wait(30)
            except subprocess.TimeoutExpired: server.kill()

def api(base:str, token:str, what:str):
    "The server's answer to GET /api/<what>, parsed, or None"
    try:
        with urllib.request.urlopen(f'{base}/api/{what}?token={token}', timeout=5) as r: return json.load(r)
    except (OSError, ValueError): return None

def kernel_state(base:str, token:str, name:str) -> str:
    "The execution state of the kernel of notebook `name`'s session ('' while there is none)"
    return next((s['kernel']['execution_state'] for s in api(base, token, 'sessions') or [] if s['path'].endswith(name) and s.get('kernel')), '')

def until(ok, seconds:float, failure:str, page=None, shot=None):
    "Poll `ok()` every 0.3 s until it is true; after `seconds`, save a screenshot of `page` at `shot` and fail with `failure`"
    deadline = time.monotonic() + seconds
    while not ok():
        if time.monotonic() > deadline:
            if page is not None: page.screenshot(path=str(shot))
            pytest.fail(f"{failure} (screenshot: {shot})" if page is not None else failure)
        time.sleep(0.3)

PROMPTS = "() => [...document.querySelectorAll('.jp-CodeCell .jp-InputPrompt')].map(e => e.textContent.trim())"
ERRORS = """() => [...document.querySelectorAll('.jp-CodeCell')].flatMap((c, i) =>
    [...c.querySelectorAll('.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]')]
    .filter(o => /Traceback|Error\\b/.test(o.textContent)).map(o => `code cell ${i}: ${o.textContent.trim().slice(-400)}`))"""

def menu(page, title:str, command:str):
    "Click menu `title` of JupyterLab's menu bar, then its item that runs `command`"
    page.locator('#jp-MainMenu .lm-MenuBar-item', has_text=title).first.click()
    page.locator(f'.lm-Menu-item[data-command="{command}"]').click()

def run_all(lab, name:str, shot:Path) -> dict:
    """Open notebook `name` in JupyterLab in headless Chromium, press Run > Run All Cells, wait until no cell shows [*], save it.
    A dict: seconds of the run, the prompts and the error outputs the page shows, and the notebook as JupyterLab saved it."""
    from playwright.sync_api import sync_playwright
    base, token, work = lab
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={'width': 1400, 'height': 1000})
            page.goto(f'{base}/lab/tree/{name}?reset&token={token}')          # reset: this notebook alone
            page.wait_for_selector('.jp-NotebookPanel .jp-CodeCell', timeout=120_000)
            until(lambda: kernel_state(base, token, name) == 'idle', 120, f"{name}: its kernel did not start", page, shot)
            page.wait_for_selector('.jp-Notebook-ExecutionIndicator[data-status="idle"]', timeout=60_000)
            before = page.evaluate(PROMPTS)
            menu(page, 'Run', 'runmenu:run-all')                                          # Run > Run All Cells
            t0 = time.monotonic()
            until(lambda: '[*]:' in (now := page.evaluate(PROMPTS)) or now != before, 60, f"{name}: Run All did not start", page, shot)
            until(lambda: '[*]:' not in page.evaluate(PROMPTS), RUN_LIMIT_S, f"{name}: Run All still running after {RUN_LIMIT_S} s", page, shot)
            seconds = time.monotonic() - t0
            prompts, errors = page.evaluate(PROMPTS), page.evaluate(ERRORS)
            page.screenshot(path=str(shot))
            menu(page, 'File', 'docmanager:save')             # save the copy: its outputs as Jupyter stores them
            until(lambda: not page.evaluate("() => !!document.querySelector('.lm-TabBar-tab.jp-mod-dirty')"), 30, f"{name} was not saved", page, shot)
        finally: browser.close()
    return dict(seconds=seconds, prompts=prompts, errors=errors, saved=json.loads((work / name).read_text()))

def raised(nb:dict) -> list:
    "The error outputs of a notebook's code cells"
    code = [c for c in nb['cells'] if c['cell_type'] == 'code']
    return [f"code cell {i}: {o.get('ename')}: {o.get('evalue')}" for i, c in enumerate(code) for o in c.get('outputs', []) if o['output_type'] == 'error']

def not_run(nb:dict) -> list:
    "The code cells of a notebook that have no execution count"
    return [i for i, c in enumerate(c for c in nb['cells'] if c['cell_type'] == 'code') if c.get('execution_count') is None]

def test_an_error_is_seen(lab, tmp_path):
    "The checks below can fail: a cell that raises shows an error, and Run All stops there"
    r = run_all(lab, 'raises.ipynb', tmp_path / 'raises.png')
    assert len(r['errors']) == 1 and 'ZeroDivisionError' in r['errors'][0], r['errors']
    assert raised(r['saved']) == ['code cell 1: ZeroDivisionError: division by zero'] and not_run(r['saved']) == [2], r['saved']

def test_lesson_00_runs_all_in_jupyterlab(lab, tmp_path):
    shot = tmp_path / 'lesson00.png'
    r = run_all(lab, LESSON.name, shot)
    print(f"\nRun All of {LESSON.name} in JupyterLab: {r['seconds']:.0f} s; screenshot {shot}")
    assert not r['errors'], f"{LESSON.name} shows an error in JupyterLab:\n" + '\n'.join(r['errors'])
    assert not raised(r['saved']), f"{LESSON.name}: cells raised in JupyterLab: {raised(r['saved'])}"
    assert not not_run(r['saved']), f"{LESSON.name}: Run All did not reach code cells {not_run(r['saved'])} (prompts {r['prompts']})"
    assert len(r['prompts']) == len([c for c in r['saved']['cells'] if c['cell_type'] == 'code'])

"""The course and its front page: lessons 00-09 read as lessons (forward-only, short, small cells, a closing summary and
exercises with solutions), and README.md is index.ipynb's text, with every figure taken from saved results and every link
absolute (the package index shows README.md without the repository around it).

`python tests/test_course.py` rewrites the generated tables in nbs/index.ipynb and README.md from the notebooks and
nbs/results; the tests below fail whenever either has drifted. It is README.md's only writer: settings.ini turns nbdev's
own nbdev_readme off."""
import configparser, importlib.util, json, re, subprocess, sys
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
NBS = ROOT / 'nbs'
SETTINGS = configparser.ConfigParser(delimiters=['='])
SETTINGS.read(ROOT / 'settings.ini', encoding='utf-8')
SETTINGS = SETTINGS['DEFAULT']
DOCS = SETTINGS['doc_host'] + SETTINGS['doc_baseurl']                                    # the docs site
FILES = SETTINGS['git_url'].replace('https://github.com/', 'https://raw.githubusercontent.com/') + f"/{SETTINGS['branch']}/nbs"
MAX_MINUTES, MAX_MAIN_MINUTES, MAX_CELL_LINES, MAX_README_WORDS = 40, 30, 80, 1150
LESSONS = sorted(NBS.glob('0[0-9]_*.ipynb'))

def cells(path):
    "(cell_type, source) of every cell of a notebook"
    return [(c['cell_type'], ''.join(c['source'])) for c in json.loads(Path(path).read_text())['cells']]

def code_lines(src):
    "The lines of a code cell that a reader reads: not blank, not an nbdev directive"
    return [l for l in src.splitlines() if l.strip() and not l.lstrip().startswith('#|')]

def headings(path):
    return [l.strip() for t, s in cells(path) if t == 'markdown' for l in s.splitlines() if l.startswith('#')]

def reading_minutes(path):
    "Markdown words / 200 + code lines / 15"
    cs = cells(path)
    words = sum(len(s.split()) for t, s in cs if t == 'markdown')
    loc = sum(len(code_lines(s)) for t, s in cs if t == 'code')
    return words / 200 + loc / 15

def exported_modules(path):
    "The modules a notebook exports: its default_exp, and any `#| export <module>` target"
    src = '\n'.join(s for t, s in cells(path) if t == 'code')
    mods = re.findall(r'^#\|\s*default_exp\s+(\S+)', src, re.M) + re.findall(r'^#\|\s*export\s+(\w+)\s*$', src, re.M)
    return list(dict.fromkeys(mods))

def imported_modules(path):
    src = '\n'.join(s for t, s in cells(path) if t == 'code')
    return {a or b for a, b in re.findall(r'from\s+cpixelcnn\.(\w+)\s+import|import\s+cpixelcnn\.(\w+)', src)}

def title(path):
    "The lesson's title: its first markdown heading"
    return next(l[2:].strip() for l in headings(path) if l.startswith('# '))

# ---- lessons ---------------------------------------------------------------------------------------------------------

def test_ten_lessons():
    assert [p.name[:2] for p in LESSONS] == [f'{i:02d}' for i in range(10)], [p.name for p in LESSONS]

@pytest.mark.parametrize('nb', LESSONS, ids=lambda p: p.stem)
def test_lesson_is_forward_only(nb):
    order = {m: int(p.name[:2]) for p in sorted(NBS.glob('[0-9][0-9]_*.ipynb')) for m in exported_modules(p)}
    later = sorted(m for m in imported_modules(nb) if order.get(m, -1) > int(nb.name[:2]))
    assert not later, f"{nb.name} imports {later}, built only in later notebooks"

def sections(path):
    "The notebook's cells grouped by its '## ' headings: [(heading in lower case, [(cell_type, source), ...]), ...]"
    out = [('', [])]
    for t, s in cells(path):
        h = next((l[3:].strip().lower() for l in s.splitlines() if l.startswith('## ')), None) if t == 'markdown' else None
        if h is not None: out.append((h, []))
        out[-1][1].append((t, s))
    return out

def minutes(cs):
    "Reading time of cells: markdown words / 200 + code lines / 15"
    return sum(len(s.split()) for t, s in cs if t == 'markdown') / 200 + sum(len(code_lines(s)) for t, s in cs if t == 'code') / 15

def split_minutes(path):
    "(minutes of the main line, minutes of the final 'Library details' section)"
    secs = sections(path)
    return minutes([c for h, cs in secs if h != 'library details' for c in cs]), minutes([c for h, cs in secs if h == 'library details' for c in cs])

def in_section(path, *names):
    "The cells of the '## ' sections whose heading starts with one of `names`"
    return [c for h, cs in sections(path) if h.startswith(names) for c in cs]

@pytest.mark.parametrize('nb', LESSONS, ids=lambda p: p.stem)
def test_lesson_length(nb):
    main, details = split_minutes(nb)
    assert main + details <= MAX_MINUTES, f"{nb.name} reads in {main + details:.1f} minutes (at most {MAX_MINUTES})"
    assert main <= MAX_MAIN_MINUTES, f"{nb.name}'s main line reads in {main:.1f} minutes (at most {MAX_MAIN_MINUTES}; 'Library details' not counted)"
    big = max((len(code_lines(s)), s.splitlines()[0] if s else '') for t, s in cells(nb) if t == 'code')
    assert big[0] <= MAX_CELL_LINES, f"{nb.name} has a {big[0]}-line code cell (at most {MAX_CELL_LINES}), starting {big[1]!r}"

@pytest.mark.parametrize('nb', LESSONS, ids=lambda p: p.stem)
def test_lesson_ends_with_summary_exercises_and_references(nb):
    "The lesson's last sections: What you built, Exercises, Solutions, References (with links), then Library details if any"
    h2 = [h for h, _ in sections(nb)[1:]]
    order = [next((i for i, h in enumerate(h2) if h.startswith(name)), None) for name in ('what you built', 'exercises', 'solutions', 'references')]
    assert None not in order, f"{nb.name} lacks a '## ' section of {['What you built', 'Exercises', 'Solutions', 'References']}: it has {h2}"
    assert order == sorted(order), f"{nb.name}: the order must be What you built, Exercises, Solutions, References; it is {h2}"
    if 'library details' in h2: assert h2[-1] == 'library details', f"{nb.name}: 'Library details' must be the last section, not {h2}"
    links = re.findall(r'\]\((https?://[^)]+)\)', '\n'.join(s for t, s in in_section(nb, 'references')))
    assert links, f"{nb.name}: its References section links no paper"
    n = sum(h.startswith('### exercise') for h in (x.lower() for x in headings(nb)))
    assert 2 <= n <= 4, f"{nb.name} has {n} '### Exercise' headings (2-4 wanted)"

@pytest.mark.parametrize('nb', LESSONS, ids=lambda p: p.stem)
def test_exercises_run_blank_and_teach(nb):
    """Run All goes through the lesson with the exercises blank: no cell is left to nbdev (`#| eval: false`, `#| slow`).
    Every check is an `@exercise`; in 00-08 at least one exercise is a function to write (its body raises
    NotImplementedError); the Solutions run every check on the reference answer (`test_right`) and on a wrong one (`test_hint`)."""
    src = '\n'.join(s for t, s in cells(nb) if t == 'code')
    skipped = re.findall(r'^#\|\s*(eval:\s*false|slow)\b', src, re.M)
    assert not skipped, f"{nb.name} has cells Jupyter's Run All would run but the tests would skip: {skipped}"
    assert 'from cpixelcnn.exercises import' in src, f"{nb.name} does not use cpixelcnn.exercises for its checks"
    ex = '\n'.join(s for t, s in in_section(nb, 'exercises') if t == 'code')
    checks = re.findall(r'@exercise\([^\n]*\)\s*\ndef\s+(\w+)\s*\(', ex)
    assert checks, f"{nb.name}: the exercises define no check (`@exercise(...)` above a `def check_...`)"
    if int(nb.name[:2]) <= 8:
        assert re.search(r'^\s+raise NotImplementedError', ex, re.M), f"{nb.name}: no exercise asks for a function to write (a body that raises NotImplementedError)"
    sol = '\n'.join(s for t, s in in_section(nb, 'solutions') if t == 'code')
    for c in checks:
        assert re.search(rf'test_right\(\s*{c}\b', sol), f"{nb.name}: the Solutions never run {c} on the reference answer (test_right)"
        assert re.search(rf'test_hint\(\s*{c}\b', sol), f"{nb.name}: the Solutions never run {c} on a wrong answer (test_hint)"

MACHINE_PATH = re.compile(r'/tmp/|/home/|/root/|/work/|/Users/|[A-Z]:\\\\Users')

@pytest.mark.parametrize('nb', LESSONS, ids=lambda p: p.stem)
def test_saved_outputs_are_clean(nb):
    "What a reader sees below the cells: no stderr, no error, no machine path, no progress bar left part-way, no hidden thread setting"
    bad = []
    for i, c in enumerate(json.loads(nb.read_text())['cells']):
        if c['cell_type'] != 'code': continue
        if 'set_num_threads' in ''.join(c['source']): bad.append(f'cell {i}: sets the torch threads')
        for o in c.get('outputs', []):
            text = json.dumps(o)
            if o.get('output_type') == 'error': bad.append(f"cell {i}: an error ({o.get('ename')})")
            if o.get('name') == 'stderr': bad.append(f'cell {i}: stderr')
            if MACHINE_PATH.search(text): bad.append(f'cell {i}: a machine path')
            if any(v != m for v, m in re.findall(r"<progress value='(\d+)'[^>]*max='(\d+)'", text)): bad.append(f'cell {i}: a progress bar frozen part-way')
    assert not bad, f"{nb.name}: " + '; '.join(bad)

def test_lessons_open_with_what_you_build():
    "After the title, the first paragraph says what the lesson builds"
    missing = []
    for nb in LESSONS:
        md = [s for t, s in cells(nb) if t == 'markdown']
        opening = ' '.join(md[:3]).lower()
        if not re.search(r'you will build|you build|you will|in this lesson', opening): missing.append(nb.name)
    assert not missing, f"these lessons do not open with what the learner builds: {missing}"

# ---- the glossary ---------------------------------------------------------------------------------------------------

GLOSSARY = NBS / 'glossary.ipynb'
# terms whose words are unambiguous in any lesson: a lesson before the one that explains a term links its glossary entry
TERMS = {'ema': r'\bEMA\b', 'film': r'\bFiLM\b', 'ddp': r'\bDDP\b|DistributedDataParallel', 'u-net': r'\bU-Net\b', 'bfloat16': r'\bbfloat16\b',
         'avx512-amx': r'\bAVX-?512|\bAMX\b', 'inductor': r'\binductor\b|torch\.compile', 'fid': r'\bFID\b', 'gumbel-max': r'\bGumbel',
         'weight-normalization': r'\b[Ww]eight[- ]norm', 'bits-per-dimension': r'\bbits per dimension\b|\bbits/dim\b|\bBPD\b',
         'blind-spot': r'\bblind spot\b'}

def heading_id(heading:str) -> str:
    "The id the docs site (Quarto, pandoc) gives a heading: lower case, punctuation but - _ . dropped, spaces to hyphens"
    return re.sub(r'\s+', '-', re.sub(r'[^\w\s.-]', '', heading.lower()).strip())

def glossary_entries() -> dict:
    "{anchor: (term, the numbered notebooks the entry names, in order)} of nbs/glossary.ipynb: each '### Term' cell, by its heading's id and its `<a id>` anchors"
    out = {}
    for t, s in cells(GLOSSARY):
        if t != 'markdown' or not s.startswith('### '): continue
        term = s.splitlines()[0][4:].strip()
        nbs = [n for n, _ in re.findall(r'\]\(((\d\d)_\w+\.ipynb)\)', s)]
        for a in [heading_id(term)] + re.findall(r'<a id="([\w.-]+)"></a>', s):
            assert a not in out, f"glossary: anchor {a} twice"
            out[a] = (term, nbs)
    return out

def test_glossary_entries():
    "Every entry has an anchor, names the notebook that explains it (one that exists), and the terms the lessons need are there"
    entries = glossary_entries()
    assert entries, "nbs/glossary.ipynb has no entries (a markdown cell each: '### Term', then the text)"
    for a, (term, nbs) in entries.items():
        assert nbs, f"glossary: '{term}' names no lesson that explains it"
        assert all((NBS / n).is_file() for n in nbs), f"glossary: '{term}' links a notebook that does not exist: {nbs}"
    needed = set(TERMS) | {'mixture-of-logistics', 'likelihood', 'posterior', 'prior', 'calibration', 'sample-accuracy', 'receptive-field', 'raster-order'}
    assert needed <= entries.keys(), f"the glossary lacks {sorted(needed - entries.keys())}"
    inner = re.findall(r'\]\(#([\w-]+)\)', '\n'.join(s for _, s in cells(GLOSSARY)))
    assert set(inner) <= entries.keys(), f"the glossary links anchors it lacks: {sorted(set(inner) - entries.keys())}"

def test_glossary_links_resolve():
    "Every `glossary.ipynb#anchor` link of every notebook names an entry that exists"
    entries = glossary_entries()
    bad = [f"{p.name}: #{a}" for p in sorted(NBS.glob('*.ipynb')) for t, s in cells(p) if t == 'markdown'
           for a in re.findall(r'glossary\.ipynb#([\w-]+)', s) if a not in entries]
    assert not bad, f"links to glossary entries that do not exist: {bad}"

def test_index_links_the_glossary():
    assert '](glossary.ipynb)' in '\n'.join(index_markdown())

def points_to(cell:str, anchor:str, explainer:str) -> bool:
    "Whether a markdown cell points to where a term is explained: its glossary entry, or the notebook that explains it"
    num = explainer[:2]
    return (f'glossary.ipynb#{anchor}' in cell or explainer.removesuffix('.ipynb') in cell
            or bool(re.search(rf'\b(lesson|appendix|notebook)s?\b[^.]{{0,40}}?\b{num}\b', cell, re.I)))

@pytest.mark.parametrize('nb', LESSONS, ids=lambda p: p.stem)
def test_terms_before_their_lesson_have_a_pointer(nb):
    """A lesson's first use of a term that only a later notebook explains comes with a pointer in the same cell: a link to the
    term's glossary entry, or the explaining notebook named (`[bfloat16](glossary.ipynb#bfloat16)`, "(lesson 08)")"""
    entries, k = glossary_entries(), int(nb.name[:2])
    md = [s for t, s in cells(nb) if t == 'markdown']
    early = []
    for a, rx in TERMS.items():
        explainer = entries[a][1][0]
        if int(explainer[:2]) <= k: continue
        first = next((s for s in md if re.search(rx, s)), None)
        if first is not None and not points_to(first, a, explainer):
            early.append(f"{re.search(rx, first)[0]!r} (explained in {explainer}): '...{first[max(0, re.search(rx, first).start() - 60):][:140]}...'")
    assert not early, f"{nb.name} uses terms explained only later, with no pointer to the glossary or the lesson: " + '; '.join(early)

# ---- the front page --------------------------------------------------------------------------------------------------

APPENDIX_MIN = 10
def course_table():
    rows = []
    for nb in LESSONS:
        built = title(nb)
        mods = ', '.join(f'`cpixelcnn.{m}`' for m in sorted(exported_modules(nb), key=lambda m: m != exported_modules(nb)[-1]))
        main, details = split_minutes(nb)
        rows.append(f"| [{nb.name[:2]} {built}]({nb.name}) | {mods} | {main:.0f} | {details:.0f} |")
    return '\n'.join(rows)

def load_script(name:str):
    "A script beside the notebooks (nbs/experiments.py, nbs/report.py), imported as a module"
    sys.path.insert(0, str(NBS))
    try:
        spec = importlib.util.spec_from_file_location(name, NBS / f'{name}.py')
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
    finally: sys.path.remove(str(NBS))
    return mod

def report_rows() -> pd.DataFrame:
    "nbs/results/report.csv (written by `python nbs/report.py`), a row per (setting, seed), in the table's order"
    r = pd.read_csv(NBS / 'results' / 'report.csv')
    order = list(load_script('report').ROWS)
    assert set(r.row) <= set(order), f"report.csv has rows {set(r.row) - set(order)} that nbs/report.py does not know"
    return r.sort_values(['row', 'seed'], key=lambda c: c.map(order.index) if c.name == 'row' else c)

def spread(g:pd.Series, fmt:str='.2f') -> str:
    "The mean of a column over seeds, and its range when there are several"
    lo, hi = g.min(), g.max()
    return f"{g.mean():{fmt}}" + (f" ({lo:{fmt}}-{hi:{fmt}})" if len(g) > 1 and f"{lo:{fmt}}" != f"{hi:{fmt}}" else '')

def results_table():
    "The README's results: every row of report.csv, a line per setting over its seeds"
    r, names = report_rows(), load_script('report').ROWS
    assert r.minutes.nunique() == 1 and r.machine.nunique() == 1 and r.n_report.nunique() == 1, "report.csv mixes budgets, machines or report splits"
    cpu = r.machine.iloc[0].split(',')[0] + f", {r.cpu_capability.iloc[0]}" + (', bfloat16 units' if r.cpu_bf16_fast.iloc[0] else '')
    lines = [f"Each run: {r.minutes.iloc[0]:g} minutes on {cpu}, 2 cores, one run at a time; accuracy on the report split's {r.n_report.iloc[0]} images.",
             '', '| setting | seeds | steps | val bits/dim | report accuracy | sample accuracy; judge accuracy, diversity | command |', '|---|---|---|---|---|---|---|']
    for row, g in r.groupby('row', sort=False):
        bpd = '-' if g.val_bpd.isna().all() else spread(g.val_bpd)
        sa = g.dropna(subset=['sample_accuracy'])
        sample = '-' if sa.empty else f"{spread(sa.sample_accuracy)}; judge {sa.judge_accuracy.mean():.2f}, diversity {sa.diversity.mean():.2f}"
        command = f"python nbs/report.py --rows {row} --seeds {' '.join(map(str, g.seed))}"        # trains and scores the row again
        lines.append(f"| {names[row][0]} | {len(g)} | {spread(g.steps, ',.0f')} | {bpd} | {spread(g.report_accuracy)} | {sample} | `{command}` |")
    return '\n'.join(lines)

def results_words():
    "The paragraph under the results table, every figure in it from report.csv"
    r = report_rows()
    m = r.groupby('row').mean(numeric_only=True)
    d, p, h, c = (m.loc[k] for k in ('defaults', 'plain', 'hybrid', 'cnn'))
    assert d.val_bpd > h.val_bpd > p.val_bpd and d.report_accuracy > p.report_accuracy and h.report_accuracy > p.report_accuracy, \
        "the words under the results table no longer fit report.csv: rewrite results_words()"
    judge = spread(r.judge_accuracy.dropna())
    return (f"The defaults add the cross-entropy of lesson 07 from the first step. Against plain likelihood training they trade "
            f"{d.val_bpd - p.val_bpd:.2f} bits/dim ({d.val_bpd:.2f} against {p.val_bpd:.2f}) for {100 * (d.report_accuracy - p.report_accuracy):.0f} "
            f"points of accuracy ({d.report_accuracy:.2f} against {p.report_accuracy:.2f}). Starting the cross-entropy half-way, as the hybrid "
            f"recipe does, gives back {d.val_bpd - h.val_bpd:.2f} bits/dim at {h.report_accuracy:.2f} accuracy: start it half-way when the "
            f"model's bits/dim and samples matter as well as its labels. A small CNN trained only to classify reaches {c.report_accuracy:.2f}. "
            f"Sample accuracy is the share of a run's samples that the judge, a small CNN trained on the run's training images, assigns "
            f"to their class. Read it against the judge's own accuracy on real held-out images, {judge}, and the samples' diversity "
            f"(their mean pairwise distance over the real images'; 1: as varied): samples more typical of their class than photos, with a "
            f"diversity below 1, can score above the judge's own accuracy without looking right to a person.")

def quickstart_table():
    "The default run's figures over its measured runs (appendix 15 writes results/quickstart.csv)"
    r = pd.read_csv(NBS / 'results' / 'quickstart.csv')
    def cell(col, fmt='.2f'):
        lo, hi = r[col].min(), r[col].max()
        return f"{r[col].mean():{fmt}}" + (f" ({lo:{fmt}}-{hi:{fmt}})" if len(r) > 1 and f"{lo:{fmt}}" != f"{hi:{fmt}}" else '')
    cpu = r.machine.iloc[0].split(',')[0] + f", {r.cpu_capability.iloc[0]}" + (', bfloat16 units' if r.cpu_bf16_fast.iloc[0] else '')
    return '\n'.join([f'| `cpixelcnn_train`, {len(r)} runs on {cpu} | wall minutes | val bits/dim | held-out accuracy | sample accuracy | judge accuracy | diversity |',
                      '|---|---|---|---|---|---|---|',
                      f"| mean (range) | {cell('wall_minutes', '.1f')} | {cell('val_bpd')} | {cell('val_accuracy')} | {cell('sample_accuracy')} | {cell('judge_accuracy')} | {cell('diversity')} |"])

TEMPLATE = NBS / 'index.ipynb'
MARK = re.compile(r'(<!-- (course table|results table|results words|quickstart table) -->\n)(?:.*?\n)?(<!-- end -->)', re.S)

def fill(md):
    "index markdown with its generated tables rewritten"
    tables = {'course table': '| lesson | module | minutes | + library details |\n|---|---|---|---|\n' + course_table(),
              'results table': results_table(), 'results words': results_words(), 'quickstart table': quickstart_table()}
    return MARK.sub(lambda m: m.group(1) + tables[m.group(2)] + '\n' + m.group(3), md)

def index_markdown():
    return [s for t, s in cells(TEMPLATE) if t == 'markdown']

def docs_page(nb:str) -> str:
    "The docs site's page of notebook `nb` (nbdev drops the number: 00_masks.ipynb -> masks.html)"
    from nbdev.doclinks import _nbpath2html
    return _nbpath2html(Path(nb)).name

def absolute(link:str) -> str:
    "A relative link of index.ipynb as README.md needs it: a notebook to its page on the docs site, any other file to its copy in the repository"
    path, _, anchor = link.partition('#')
    if path.endswith('.ipynb'): return f"{DOCS}/{docs_page(path)}" + (f"#{anchor}" if anchor else '')
    return f"{FILES}/{link}"

def readme_from_index(md_cells):
    "README.md: the index's markdown, its relative links made absolute"
    text = '\n\n'.join(md_cells) + '\n'
    return re.sub(r'\]\((?!https?:|#|/)([^)]+)\)', lambda m: f"]({absolute(m[1])})", text)

def test_index_tables_are_current():
    md = '\n\n'.join(index_markdown())
    assert MARK.search(md), "index.ipynb lost its generated-table markers"
    assert fill(md) == md, "the course or results table in index.ipynb is stale: run `python tests/test_course.py`"

def test_readme_is_the_index():
    assert (ROOT / 'README.md').read_text() == readme_from_index(index_markdown()), \
        "README.md differs from nbs/index.ipynb's text: run `python tests/test_course.py`"

def test_readme_length():
    text = re.sub(r'<!--.*?-->', '', (ROOT / 'README.md').read_text())
    n = len(text.split())
    assert n <= MAX_README_WORDS, f"README.md has {n} words (at most {MAX_README_WORDS})"

COURSE_COMMAND = 'python3 -m venv .venv && . .venv/bin/activate && pip install -e ".[course]" && jupyter lab nbs/00_masks.ipynb'
SETUP_COMMANDS = ['python3 -m venv .venv && . .venv/bin/activate && pip install -e . && cpixelcnn_train',   # install, run the default job
                  'pip install -e ".[dev]" && pytest -n 2']                                               # the tests

def test_readme_commands_exist():
    """README's shell blocks are the course command (take the course in JupyterLab) and exactly two set-up commands, each of
    which works on a fresh machine from a clone; every experiment and result row it quotes is one the scripts know"""
    experiments, rows = load_script('experiments').EXPERIMENTS, load_script('report').ROWS
    text = (ROOT / 'README.md').read_text()
    for name in re.findall(r'python nbs/experiments\.py (\S+)', text): assert name in experiments, name
    for name in re.findall(r'python nbs/report\.py --rows (\S+)', text): assert name in rows, name
    assert 'cpixelcnn.experiments' not in text
    blocks = [b.strip() for b in re.findall(r'```sh\n(.*?)```', text, re.S) if 'pip install' in b]
    assert blocks == [COURSE_COMMAND] + SETUP_COMMANDS, blocks
    assert text.index('## Take the course') < text.index(COURSE_COMMAND), "the course command belongs under '## Take the course'"
    lesson = Path(COURSE_COMMAND.split('jupyter lab ')[1])
    assert (ROOT / lesson).is_file() and lesson.name == LESSONS[0].name, f"the course command opens {lesson}, not the first lesson"
    assert not re.search(r'pip install cpixelcnn\b', text), "cpixelcnn is not on PyPI: `pip install cpixelcnn` fails"
    assert 'pip install torch torchvision --index-url https://download.pytorch.org/whl/cpu' in text

def test_readme_python_runs(tmp_path):
    """README's Python blocks run as a user pastes them, one after the other, in an empty folder, with one change: a training
    budget of 3 seconds where README says minutes. The callback's CSV gets a row"""
    code = '\n'.join(re.findall(r'```python\n(.*?)```', (ROOT / 'README.md').read_text(), re.S))
    assert 'predict(' in code and 'Callback' in code, "README lost its Python examples"
    fast, n = re.subn(r'minutes=\d+(\.\d+)?', 'minutes=0.05', code)
    assert n >= 1, "README's Python examples name no training budget"
    check = "\nimport csv; rows = list(csv.reader(open('rows.csv'))); assert rows and float(rows[-1][1]) > 0, rows"
    r = subprocess.run([sys.executable, '-c', fast + check], cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, f"README's Python examples failed:\n{r.stderr[-3000:]}"

def test_readme_links_are_absolute():
    "Every link and image of README.md is absolute, and each one into the project names a notebook or file that exists"
    text = (ROOT / 'README.md').read_text()
    links = re.findall(r'\]\(([^)\s]+)\)', text)
    assert links and all(l.startswith('https://') for l in links), [l for l in links if not l.startswith('https://')]
    pages = {docs_page(p.name): p for p in NBS.glob('*.ipynb')}
    for l in links:
        if l.startswith(DOCS + '/'): assert l[len(DOCS) + 1:].split('#')[0] in pages, l
        if l.startswith(FILES + '/'): assert (NBS / l[len(FILES) + 1:]).is_file(), l
    assert any(l.startswith(DOCS) for l in links) and any(l.startswith(FILES) for l in links)

def test_index_links_every_notebook():
    "The front page links every lesson and every appendix notebook"
    md = '\n'.join(index_markdown())
    missing = [p.name for p in sorted(NBS.glob('[0-9][0-9]_*.ipynb')) if f']({p.name}' not in md]
    assert not missing, f"nbs/index.ipynb does not link {missing}"

def test_nbdev_readme_is_off(monkeypatch):
    "nbdev_docs and nbdev_prepare run nbdev_readme(chk_time=True): it must return before rendering or writing anything"
    import nbdev.quarto
    def render(*args, **kwargs): raise AssertionError("nbdev_readme would render README.md")
    monkeypatch.setattr(nbdev.quarto, 'proc_nbs', render)
    monkeypatch.setattr(nbdev.quarto, '_sprun', render)
    monkeypatch.chdir(ROOT)
    nbdev.quarto.nbdev_readme.__wrapped__(chk_time=True)

def write():
    "Rewrite index.ipynb's generated tables, then README.md from it"
    nb = json.loads(TEMPLATE.read_text())
    for c in nb['cells']:
        if c['cell_type'] == 'markdown':
            new = fill(''.join(c['source']))
            c['source'] = new.splitlines(keepends=True)
    TEMPLATE.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + '\n')
    (ROOT / 'README.md').write_text(readme_from_index(index_markdown()))

if __name__ == '__main__':
    write(); print('wrote nbs/index.ipynb tables and README.md')

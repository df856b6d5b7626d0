"""The results table of the README: each row's settings trained on the course data for the same time budget, three seeds,
one run at a time on one machine, and scored on the report split -- labelled images that no setting was ever chosen on.

    python nbs/report.py [--rows defaults plain hybrid cnn] [--seeds 0 1 2] [--minutes 20]

The report split is a fixed, stratified tenth of the CPEN455 labelled images, drawn only from images that were in none of
the validation splits the settings were chosen on (the 15% hold-outs of seeds 0, 1 and 2). Every run trains on the other
images, holding out its own 15% for validation as usual. Rows are merged into `nbs/results/report.csv`; the README's table
and the words under it are generated from that file (`python tests/test_course.py`). Like `experiments.py`, this script
needs the repository and the course data; it is not part of the installed package."""
import json, os, shutil, subprocess, sys, time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))                 # experiments.py, beside this script
from experiments import BASE, EXPERIMENTS, RESULTS, SCRIPT, analyse_cnn, locked, merge_rows, split_of, train_cnn
from cpixelcnn.bench import machine_info
from cpixelcnn.classify import classify_dataset
from cpixelcnn.cli import Parser, cli_errors
from cpixelcnn.data import ImageSet, get_dataset, run_split
from cpixelcnn.model import cpu_bf16_fast, cpu_capability
from cpixelcnn.trainer import TrainConfig, load_checkpoint, load_model, train

REPORT_FRAC, REPORT_SEED, TUNING_SEEDS = 0.10, 455, (0, 1, 2)   # the report split: 10% of each class, seeded; never in a tuning hold-out
ROWS = {  # name -> (what the README calls it, how it is run)
    'defaults': ("the defaults: `cpixelcnn_train --data <course data> --minutes 20`, the cross-entropy from the first step", 'cli'),
    'plain': ("plain likelihood: head fusion, batches of 16, bfloat16, compiled", 'head-cosine-2c-bf16-b16'),
    'hybrid': ("hybrid recipe: as plain, with the cross-entropy (weight 0.5, T = 30) from half-way", 'hybrid-head-2c-bf16-b16-w05-start05'),
    'cnn': ("small discriminative CNN (94k parameters)", 'cnn'),
}

def course_data() -> Path:
    "The CPEN455 folder in shared/data above this script"
    d = next((d / 'shared' / 'data' / 'cpen455' for d in SCRIPT.parents if (d / 'shared' / 'data' / 'cpen455').is_dir()), None)
    if d is None: raise FileNotFoundError("the CPEN455 data (shared/data/cpen455) is not on this machine")
    return d

def report_split(ds:ImageSet # the labelled images
                ) -> torch.Tensor:
    "Boolean mask (N,) of the report split: per class, round(REPORT_FRAC * n) images drawn with REPORT_SEED from those in no tuning hold-out"
    tuned = set()
    for s in TUNING_SEEDS: tuned |= set(run_split(ds, val_frac=0.15, seed=s)[1].paths)      # the validation splits settings were chosen on
    free = torch.tensor([p not in tuned for p in ds.paths])
    g, mask = torch.Generator().manual_seed(REPORT_SEED), torch.zeros(len(ds), dtype=torch.bool)
    for c in range(ds.n_classes):
        pool = ((ds.y == c) & free).nonzero()[:, 0]
        n = round(REPORT_FRAC * int((ds.y == c).sum()))
        if n > len(pool): raise ValueError(f"class {ds.classes[c]}: {n} report images wanted, only {len(pool)} outside the tuning hold-outs")
        mask[pool[torch.randperm(len(pool), generator=g)[:n]]] = True
    return mask

def write_folder(src:Path, rows:list, dst:Path) -> Path:
    "A CPEN455-layout folder at `dst`: train.csv with `rows` [(path, label)] and copies of those images from `src`"
    if dst.exists(): shutil.rmtree(dst)
    for p, _ in rows: (dst / p).parent.mkdir(parents=True, exist_ok=True); shutil.copyfile(src / p, dst / p)
    (dst / 'train.csv').write_text(''.join(f'{p},{k}\r\n' for p, k in rows))
    return dst

def prepare(work:Path) -> tuple:
    "(training folder, report ImageSet): the course data split once into the images runs may train on and the report split"
    src = course_data()
    ds = get_dataset(src, 'train', 32)
    mask = report_split(ds)
    keep = [(p, int(k)) for p, k, m in zip(ds.paths, ds.y.tolist(), mask.tolist()) if not m]
    folder = write_folder(src, keep, work / 'data')
    return folder, ds.subset(mask)

def train_row(row:str, seed:int, minutes:float, folder:Path, work:Path) -> tuple:
    "Train one (row, seed) on `folder`: (the trained model or CNN, run folder or None, steps, final metrics row)"
    how, out = ROWS[row][1], work / f'{row}-{minutes:g}min-s{seed}'
    if out.exists(): shutil.rmtree(out)
    if how == 'cli':                                                     # exactly the README's command, in its own process
        cmd = [str(Path(sys.executable).parent / 'cpixelcnn_train'), '--data', str(folder), '--minutes', f'{minutes:g}', '--seed', str(seed), '--out', str(out)]
        subprocess.run(cmd, check=True, stdin=subprocess.DEVNULL)
        return None, out, ' '.join(['cpixelcnn_train', '--data', '<course data>', '--minutes', f'{minutes:g}', '--seed', str(seed)])
    spec = dict(EXPERIMENTS[how] or {}); threads = spec.pop('threads', None)
    cfg = TrainConfig(**{**BASE, **dict(data=str(folder), minutes=minutes, epochs=None, seed=seed), **spec})
    if threads: torch.set_num_threads(threads)
    command = f'python nbs/report.py --rows {row} --seeds {seed} --minutes {minutes:g}'   # experiment {how} on the data without the report split
    if how == 'cnn': return train_cnn(cfg, log=None), None, command
    train(cfg, out)
    return None, out, command

def score(row:str, seed:int, minutes:float, trained, out:Path|None, command:str, report:ImageSet, folder:Path) -> dict:
    "The row of report.csv of one trained (row, seed): accuracy on the report split, and the run's own figures"
    base = dict(row=row, seed=seed, minutes=minutes, n_report=len(report))
    if out is None:                                                      # the CNN
        model, curves = trained
        final, _ = analyse_cnn(model, report)
        figures = dict(steps=curves[-1]['step'] if curves else 0, val_bpd=float('nan'), report_accuracy=final['accuracy'],
                       sample_accuracy=float('nan'), judge_accuracy=float('nan'), diversity=float('nan'))
    else:
        model = load_model(out, device='cpu')
        _, m = classify_dataset(model, report, amp=False)
        ck = load_checkpoint(out)
        last = ck['metrics'][-1] if ck['metrics'] else {}
        q = json.loads((out / 'sample_quality.json').read_text()) if (out / 'sample_quality.json').is_file() else {}
        figures = dict(steps=ck['step'], val_bpd=last.get('val_bpd', float('nan')), report_accuracy=m['accuracy'],
                       **{k: q.get(k, float('nan')) for k in ('sample_accuracy', 'judge_accuracy', 'diversity')})
    return dict(**base, **{k: round(v, 5) if isinstance(v, float) else v for k, v in figures.items()}, machine=machine_info(),
                cpu_capability=cpu_capability(), cpu_bf16_fast=cpu_bf16_fast(), command=command, finished=time.strftime('%Y-%m-%d %H:%M'))

EXAMPLES = """
python nbs/report.py                                     # the whole table: 4 rows x 3 seeds x 20 minutes, one run at a time
python nbs/report.py --rows defaults --seeds 0 --minutes 1 --results_dir try   # a quick try
"""

def main(argv:list|None=None) -> None:
    "`python nbs/report.py`: train and score every (row, seed), one at a time, merging each into report.csv"
    with cli_errors('report.py'):
        p = Parser('report.py', "Train the README's result rows on the course data without the report split, and score them on it.", EXAMPLES)
        p.add_argument('--rows', nargs='+', choices=list(ROWS), default=list(ROWS), help="rows to run (default: all)")
        p.add_argument('--seeds', type=int, nargs='+', default=[0, 1, 2], help="seeds (default: 0 1 2)")
        p.add_argument('--minutes', type=float, default=20., help="training budget of each run (default: 20)")
        p.add_argument('--work', default='runs/report', help="run folders and the split data (default: runs/report)")
        p.add_argument('--results_dir', default=None, help="where report.csv is merged (default: nbs/results)")
        a = p.parse_args(argv)
        work, results = Path(a.work), Path(a.results_dir or RESULTS)
        folder, report = prepare(work)
        print(f"report split: {len(report)} images; training folder: {folder} ({len(get_dataset(folder, 'train', 32))} images)", flush=True)
        threads = torch.get_num_threads()
        for seed in a.seeds:
            for row in a.rows:
                torch.set_num_threads(threads)
                trained, out, command = train_row(row, seed, a.minutes, folder, work)
                r = score(row, seed, a.minutes, trained, out, command, report, folder)
                with locked(results): merge_rows(results / 'report.csv', [r], ('row', 'minutes', 'seed'))
                print(f"{row} seed {seed}: report accuracy {r['report_accuracy']:.3f}, val bpd {r['val_bpd']:.3f}, {r['steps']} steps", flush=True)

if __name__ == '__main__': main()

"""The course report's comparisons (where the label enters, augmentation, model size) and the hybrid objective, run by one
command under equal time budgets on the course data; each run's figures are merged into `nbs/results`.

    python nbs/experiments.py NAME [NAME ...] --minutes 20 --seeds 0 1 2 [--jobs 2]

Appendix 10 explains it and plots its results. It is a script beside the notebooks, not part of the installed package: it
needs this repository (the course data in `../shared/data/cpen455`, the results folder `nbs/results`)."""
import json, math, os, shutil, subprocess, sys, time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

import pandas as pd
import torch
import torch.nn.functional as F

from cpixelcnn.bench import machine_info
from cpixelcnn.classify import class_log_likelihoods
from cpixelcnn.cli import Parser, cli_errors
from cpixelcnn.data import ImageSet, augment, batches, run_split
from cpixelcnn.model import atomic_write
from cpixelcnn.mixture import bits_per_dim
from cpixelcnn.metrics import SmallCNN, accuracy, expected_calibration_error, fit_temperature
from cpixelcnn.model import ConditionalPixelCNN, cpu_bf16_fast, cpu_capability
from cpixelcnn.trainer import TrainConfig, train

__all__ = ['SCRIPT', 'RESULTS', 'BASE', 'EXPERIMENTS', 'split_of', 'train_cnn', 'cross_fitted_calibration', 'per_image_table',
           'analyse_generative', 'analyse_cnn', 'locked', 'merge_rows', 'command', 'run_experiment', 'parser', 'main']

SCRIPT = Path(__file__).resolve()
RESULTS = SCRIPT.parent / 'results'            # nbs/results, wherever the script is started from

BASE = dict(image_size=32, fusion='middle', ce_weight=0., ce_temperature=1., ce_start=0., batch_size=32, schedule='exp', amp='float32',
            n_samples_per_class=16)   # every experiment starts from these (plain likelihood, the course report's settings), not the library's defaults
_B16 = dict(schedule='cosine', amp='bfloat16', batch_size=16, compile=True, eval_every=2, threads=2)   # the settings shared by the -b16 runs
EXPERIMENTS = {
    # where the label enters (plain likelihood training)
    'early': dict(fusion='early'),
    'middle': dict(fusion='middle'),
    'late': dict(fusion='late'),
    'film': dict(fusion='film'),
    # augmentation, and a larger model in the same time
    'middle-aug': dict(fusion='middle', augment=True),
    'middle-2-80-5': dict(fusion='middle', nr_resnet=2, nr_filters=80, nr_logistic_mix=5),
    # the hybrid objective (07_classification)
    'hybrid': dict(fusion='late', ce_weight=0.3, ce_temperature=30.),
    # the same two with the learning rate annealed to 0 over the time budget (08_training)
    'middle-cosine': dict(fusion='middle', schedule='cosine'),
    'hybrid-cosine': dict(fusion='late', ce_weight=0.3, ce_temperature=30., schedule='cosine'),
    # the hybrid with a per-class output layer (`head` fusion, 03_model), at two weights of the cross-entropy
    'hybrid-head': dict(fusion='head', ce_weight=0.1, ce_temperature=30., schedule='cosine'),
    'hybrid-head-w03': dict(fusion='head', ce_weight=0.3, ce_temperature=30., schedule='cosine'),
    # its two controls: late fusion at the same weight, and head fusion with plain likelihood training
    'hybrid-cosine-w01': dict(fusion='late', ce_weight=0.1, ce_temperature=30., schedule='cosine'),
    'head-cosine': dict(fusion='head', schedule='cosine'),
    # one run on both cores (2 torch threads, run them with --jobs 1): the plain baseline and the hybrids with head and middle fusion
    'middle-cosine-2c': dict(fusion='middle', schedule='cosine', threads=2),
    'hybrid-head-2c': dict(fusion='head', ce_weight=0.1, ce_temperature=30., schedule='cosine', threads=2),
    'hybrid-middle-2c': dict(fusion='middle', ce_weight=0.1, ce_temperature=30., schedule='cosine', threads=2),
    # the same two with the network in bfloat16 (`amp='bfloat16'`, 08_training): about 1.4 times the steps on this CPU
    'middle-cosine-2c-bf16': dict(fusion='middle', schedule='cosine', amp='bfloat16', threads=2),
    'hybrid-head-2c-bf16': dict(fusion='head', ce_weight=0.1, ce_temperature=30., schedule='cosine', amp='bfloat16', threads=2),
    # the same in batches of 16 with the loss compiled (`compile`), evaluated every second epoch: about twice the steps of -2c-bf16;
    # plain middle and head fusion, and the head-fusion hybrid at lambda = 0.1, 0.2 and 0.3, and at lambda = 0.1 with T = 10
    'middle-cosine-2c-bf16-b16': dict(fusion='middle', **_B16),
    'head-cosine-2c-bf16-b16': dict(fusion='head', **_B16),
    'hybrid-head-2c-bf16-b16': dict(fusion='head', ce_weight=0.1, ce_temperature=30., **_B16),
    'hybrid-head-2c-bf16-b16-w02': dict(fusion='head', ce_weight=0.2, ce_temperature=30., **_B16),
    'hybrid-head-2c-bf16-b16-w03': dict(fusion='head', ce_weight=0.3, ce_temperature=30., **_B16),
    'hybrid-head-2c-bf16-b16-t10': dict(fusion='head', ce_weight=0.1, ce_temperature=10., **_B16),
    # the head-fusion hybrid with the first half (or 30%) of the budget on bits/dim alone (`ce_start`, 08_training), at lambda = 0.3 and 0.5
    'hybrid-head-2c-bf16-b16-w03-start05': dict(fusion='head', ce_weight=0.3, ce_temperature=30., ce_start=0.5, **_B16),
    'hybrid-head-2c-bf16-b16-w03-start03': dict(fusion='head', ce_weight=0.3, ce_temperature=30., ce_start=0.3, **_B16),
    'hybrid-head-2c-bf16-b16-w05-start05': dict(fusion='head', ce_weight=0.5, ce_temperature=30., ce_start=0.5, **_B16),
    # -w05-start05 with a shorter memory of the weights' average (EMA decay 0.995: about 200 steps instead of 1000)
    'hybrid-head-2c-bf16-b16-w05-start05-ema995': dict(fusion='head', ce_weight=0.5, ce_temperature=30., ce_start=0.5, ema=0.995, **_B16),
    # -w05-start05's pull per nat of margin (lambda / T = 1/60) at a lower temperature: the cross-entropy saturates sooner on images already classified with room to spare
    'hybrid-head-2c-bf16-b16-w015-t10-start05': dict(fusion='head', ce_weight=0.15, ce_temperature=10., ce_start=0.5, **_B16),
    'hybrid-head-2c-bf16-b16-w005-t3-start05': dict(fusion='head', ce_weight=0.05, ce_temperature=3., ce_start=0.5, **_B16),
    # a small discriminative CNN on the same images
    'cnn': None,
}


def split_of(cfg:TrainConfig) -> tuple:
    "The (train, validation) images of a run with settings `cfg`, as the trainer splits them"
    return run_split(cfg.data, image_size=cfg.image_size, val_frac=cfg.val_frac, seed=cfg.seed, max_train=cfg.max_train, max_val=cfg.max_val)


def train_cnn(cfg:TrainConfig, # supplies data, image_size, val_frac, seed, batch_size, augment, minutes / epochs / max_steps, eval_every
              lr:float=1e-3, # Adam learning rate
              log:Callable|None=print # where progress lines go (None: nowhere)
             ) -> tuple:
    "Train a `SmallCNN` on `cfg`'s split within its budget: (model, metrics rows with seconds, step, val_accuracy, val_nll)"
    train_set, val_set = split_of(cfg)
    torch.manual_seed(cfg.seed)
    model = SmallCNN(train_set.n_classes, train_set.x.shape[1])
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    gen, aug_gen = torch.Generator().manual_seed(cfg.seed), torch.Generator().manual_seed(cfg.seed + 1)
    rows, step, seconds, epoch = [], 0, 0., 0
    def out_of_budget():
        return (cfg.minutes is not None and seconds >= 60 * cfg.minutes) or (cfg.max_steps is not None and step >= cfg.max_steps) \
               or (cfg.epochs is not None and epoch >= cfg.epochs)
    while not out_of_budget():
        t0 = time.perf_counter()
        model.train()
        for x, y in batches(train_set, cfg.batch_size, shuffle=True, generator=gen, drop_last=True):
            if cfg.augment: x = augment(x, generator=aug_gen)
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True); loss.backward(); opt.step()
            step += 1
            if out_of_budget() or (cfg.minutes is not None and seconds + time.perf_counter() - t0 >= 60 * cfg.minutes): break
        seconds, epoch = seconds + time.perf_counter() - t0, epoch + 1
        if out_of_budget() or (cfg.eval_every and epoch % cfg.eval_every == 0):
            model.eval()
            with torch.no_grad(): logits = torch.cat([model(x) for x, _ in batches(val_set, 256)])
            rows.append(dict(epoch=epoch, step=step, seconds=round(seconds, 3), val_accuracy=accuracy(logits, val_set.y),
                             val_nll=F.cross_entropy(logits, val_set.y).item()))
            if log: log(f"cnn epoch {epoch} step {step}: val accuracy {rows[-1]['val_accuracy']:.3f}, {seconds:.0f} s")
    return model.eval(), rows


def cross_fitted_calibration(logits:torch.Tensor, # (N, K) unnormalised log-posteriors, e.g. log p(x|k) + log p(k)
                             y:torch.Tensor, # true labels (N,)
                             seed:int=0 # seeds the split into halves
                            ) -> tuple:
    "ECE before and after a temperature fitted on the other half of the data (both ways round); (dict of figures, calibrated probabilities (N, K))"
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    halves = perm[:len(y) // 2], perm[len(y) // 2:]
    ts = [fit_temperature(logits[h], y[h], t_max=1e4) for h in halves]
    probs = torch.empty_like(logits, dtype=torch.float32)
    for (fit, apply), t in zip((halves, halves[::-1]), ts): probs[apply] = (logits[apply].float() / t).softmax(1)
    return dict(temperature=math.sqrt(ts[0] * ts[1]), ece=expected_calibration_error(logits.float().softmax(1), y),
                ece_calibrated=expected_calibration_error(probs, y)), probs


def per_image_table(y:torch.Tensor, # true labels (N,)
                    logits:torch.Tensor, # (N, K) unnormalised log-posteriors
                    calibrated:torch.Tensor, # (N, K) calibrated class probabilities
                    logits_flip:torch.Tensor, # (N, K) the same as logits, with flip test-time augmentation
                    **scores # further (N, K) per-class columns, e.g. ll=log-likelihoods
                   ) -> pd.DataFrame:
    "A DataFrame per image: label, pred, pred_flip, p_k (posterior), p_cal_k (calibrated), and <name>_k for each of `scores` (rounded)"
    table = pd.DataFrame(dict(label=y.numpy(), pred=logits.argmax(1).numpy(), pred_flip=logits_flip.argmax(1).numpy()))
    for name, t in dict(p=logits.float().softmax(1), p_cal=calibrated, **scores).items():
        for k in range(t.shape[1]): table[f'{name}_{k}'] = t[:, k].double().numpy().round(4 if name.startswith('p') else 2)
    return table


def analyse_generative(model:ConditionalPixelCNN, # a trained model
                       val_set:ImageSet, # labelled validation images
                       log_prior:torch.Tensor, # log p(k) (K,) from the training labels
                       batch_size:int=64 # images per pass (each scored under all K classes, and flipped)
                      ) -> tuple:
    "Final validation figures of a generative classifier, and its `per_image_table` with log-likelihoods ll_k"
    lls = []
    for x, _ in batches(val_set, batch_size):
        ll = class_log_likelihoods(model, torch.cat([x, x.flip(-1)]))
        lls.append(torch.stack([ll[:len(x)], ll[len(x):]]))
    ll, ll_flip = torch.cat(lls, 1)
    y, lp = val_set.y, torch.as_tensor(log_prior).float()
    cal, probs = cross_fitted_calibration(ll + lp, y)
    table = per_image_table(y, ll + lp, probs, (ll + ll_flip) / 2 + lp, ll=ll)
    bpd = bits_per_dim(ll.gather(1, y[:, None])[:, 0], val_set.x[0].numel()).mean().item()
    return dict(val_bpd=bpd, accuracy=accuracy(ll + lp, y), accuracy_flip=accuracy((ll + ll_flip) / 2 + lp, y), **cal), table


def analyse_cnn(model:SmallCNN, # a trained discriminative baseline
                val_set:ImageSet # labelled validation images
               ) -> tuple:
    "Final validation figures of the discriminative baseline (as `analyse_generative`, without bits/dim), and its `per_image_table` with logits"
    with torch.no_grad():
        logits = torch.cat([model(x) for x, _ in batches(val_set, 256)])
        flipped = torch.cat([model(x.flip(-1)) for x, _ in batches(val_set, 256)])
    cal, probs = cross_fitted_calibration(logits, val_set.y)
    table = per_image_table(val_set.y, logits, probs, logits.log_softmax(1) + flipped.log_softmax(1), logit=logits)
    return dict(val_bpd=float('nan'), accuracy=accuracy(logits, val_set.y),
                accuracy_flip=accuracy(logits.log_softmax(1) + flipped.log_softmax(1), val_set.y), **cal), table


@contextmanager
def locked(folder:str|Path # a folder to hold an exclusive lock on (created if missing)
          ) -> Iterator[None]:
    "Exclusive lock on `folder` for read-modify-write of the files in it by concurrent runs (POSIX flock; on Windows, runs one at a time)"
    Path(folder).mkdir(parents=True, exist_ok=True)
    try: import fcntl
    except ImportError: fcntl = None
    if fcntl is None:                                                  # no flock here: run with --jobs 1
        yield
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally: os.close(fd)


def merge_rows(path:str|Path, # a CSV file (created if missing)
               rows:list, # dicts to add
               key:tuple # columns that identify a row: old rows with the same key are replaced
              ) -> None:
    "Add `rows` to the CSV at `path`, replacing rows with the same `key`, atomically"
    new = pd.DataFrame(rows)
    if Path(path).exists():
        old = pd.read_csv(path)
        keep = ~old.set_index(list(key)).index.isin(new.set_index(list(key)).index)
        new = pd.concat([old[keep], new], ignore_index=True)
    atomic_write(path, lambda p: new.to_csv(p, index=False))


def command(name:str, # a key of EXPERIMENTS
            minutes:float, # training budget
            seed:int, # the seed
            **overrides # further TrainConfig settings
           ) -> str:
    "The command line that runs (name, minutes, seed) with `overrides`, as written into the results"
    extra = ' '.join(f'--{k} {v}' for k, v in overrides.items())
    return f"python nbs/experiments.py {name} --minutes {minutes:g} --seeds {seed} {extra}".strip()


def run_experiment(name:str, # a key of EXPERIMENTS
                   minutes:float, # training budget (wall clock)
                   seed:int=0, # seeds the split, the weights, the batch order
                   data:str|None=None, # data folder or dataset name; None: the CPEN455 data in shared/data
                   runs_dir:str='runs/experiments', # run folders (checkpoints) go here
                   results_dir:str|None=None, # where the results are merged; None: nbs/results, beside this script
                   **overrides # further TrainConfig settings, e.g. max_train for a smoke run
                  ) -> dict:
    "Train and measure one (experiment, seed); merge its row into results_dir/experiments.csv and return it"
    if name not in EXPERIMENTS: raise ValueError(f"unknown experiment {name!r}; choose from {list(EXPERIMENTS)}")
    if data is None:
        data = next((d / 'shared' / 'data' / 'cpen455' for d in SCRIPT.parents if (d / 'shared' / 'data' / 'cpen455').is_dir()), None)
        if data is None: raise FileNotFoundError("the CPEN455 data (shared/data/cpen455) is not on this machine: pass --data <folder or dataset name>")
    spec = dict(EXPERIMENTS[name] or {})
    threads, caller_threads = spec.pop('threads', None), torch.get_num_threads()   # an experiment may pin its torch threads
    cfg = TrainConfig(**{**BASE, **dict(data=str(data), minutes=minutes, epochs=None, seed=seed), **spec, **overrides})
    out, results = Path(runs_dir) / f'{name}-{minutes:g}min-s{seed}', Path(results_dir or RESULTS)
    if threads: torch.set_num_threads(threads)
    try:
        if EXPERIMENTS[name] is None:
            model, curves = train_cnn(cfg, log=None)
            final, table = analyse_cnn(model, split_of(cfg)[1])
            steps = curves[-1]['step'] if curves else 0
            images_per_s = steps * cfg.batch_size / curves[-1]['seconds'] if curves and curves[-1]['seconds'] > 0 else float('nan')
        else:
            trainer = train(cfg, out)
            curves, steps = trainer.state.metrics, trainer.state.step
            final, table = analyse_generative(trainer.eval_model, trainer.val_set, trainer.eval_model.log_prior)
            quality = out / 'sample_quality.json'                       # sample accuracy of the run's samples (05_metrics)
            q = json.loads(quality.read_text()) if quality.is_file() else {}
            final.update({k: q.get(k, float('nan')) for k in ('sample_accuracy', 'judge_accuracy', 'diversity')})
            images_per_s = pd.DataFrame(curves).images_per_s.mean()
        machine, capability, bf16_units = machine_info(), cpu_capability(), cpu_bf16_fast()
    finally: torch.set_num_threads(caller_threads)
    row = dict(experiment=name, seed=seed, minutes=minutes, steps=steps, images_per_s=round(images_per_s, 2),
               **{k: round(v, 5) for k, v in final.items()}, machine=machine, cpu_capability=capability, cpu_bf16_fast=bf16_units,
               data=Path(str(data)).name, command=command(name, minutes, seed, **overrides), finished=time.strftime('%Y-%m-%d %H:%M'))
    with locked(results):
        merge_rows(results / 'experiments.csv', [row], ('experiment', 'minutes', 'seed'))
        merge_rows(results / 'curves.csv', [dict(experiment=name, minutes=minutes, seed=seed, **r) for r in curves],
                   ('experiment', 'minutes', 'seed'))   # the whole curve: a repeated run may evaluate at other steps
        if seed == 0:
            atomic_write(results / f'val_{name}-{minutes:g}min.csv', lambda p: table.to_csv(p, index=False))
            if (out / 'samples.png').exists(): shutil.copyfile(out / 'samples.png', results / f'samples_{name}-{minutes:g}min.png')
    return row


EXAMPLES = """
python nbs/experiments.py middle --minutes 20 --seeds 0 1 2                 # three 20-minute runs, one after the other
python nbs/experiments.py hybrid middle --minutes 20 --seeds 0 1 2 --jobs 2   # two at a time, one thread each
python nbs/experiments.py cnn --minutes 1 --data builtin --results_dir try     # a quick try on the built-in shapes
"""

def parser() -> Parser:
    "The command line of this script"
    p = Parser('experiments.py', "Run the course's experiments, each for a time budget on the course data, and merge each run's "
               "figures into the results folder (experiments.csv, curves.csv, and for seed 0 the per-image table and samples).", EXAMPLES)
    p.add_argument('names', nargs='+', choices=list(EXPERIMENTS), metavar='NAME', help=f"experiments: {', '.join(EXPERIMENTS)}")
    p.add_argument('--minutes', type=float, default=20., help="training budget of each run (default: 20)")
    p.add_argument('--seeds', type=int, nargs='+', default=[0], help="seeds to run (default: 0)")
    p.add_argument('--jobs', type=int, default=1, help="runs at a time, each in its own process (default: 1)")
    p.add_argument('--threads', type=int, default=None, help="torch threads per run (default: the cores divided by --jobs)")
    p.add_argument('--data', default=None, help="data folder or dataset name (default: shared/data/cpen455)")
    p.add_argument('--runs_dir', default='runs/experiments', help="run folders (default: runs/experiments)")
    p.add_argument('--results_dir', default=None, help="results folder (default: nbs/results, beside this script)")
    return p


def main(argv:list|None=None # command-line arguments (default: sys.argv[1:])
        ) -> None:
    "`python nbs/experiments.py NAME ... --minutes M --seeds S ... --jobs J`: run experiments, J at a time"
    with cli_errors('experiments.py'):
        p = parser()
        a = p.parse_args(argv)
        if a.jobs < 1 or a.minutes <= 0 or (a.threads is not None and a.threads < 1):
            p.error("--jobs and --threads must be at least 1 and --minutes more than 0")
        threads = a.threads or max(1, (os.cpu_count() or 1) // a.jobs)
        runs = [(n, s) for s in a.seeds for n in a.names]
        if a.jobs == 1:
            torch.set_num_threads(threads)
            for n, s in runs:
                row = run_experiment(n, a.minutes, s, a.data, a.runs_dir, a.results_dir)
                print(f"{n} seed {s}: accuracy {row['accuracy']:.3f} (flip {row['accuracy_flip']:.3f}), val bpd {row['val_bpd']:.3f}, "
                      f"{row['steps']} steps -> {Path(a.results_dir or RESULTS) / 'experiments.csv'}", flush=True)
            return
        common = ['--minutes', str(a.minutes), '--threads', str(threads), '--runs_dir', a.runs_dir] + \
                 (['--results_dir', a.results_dir] if a.results_dir else []) + (['--data', a.data] if a.data else [])
        pending, running, failed = list(runs), [], []
        while pending or running:
            while pending and len(running) < a.jobs:
                n, s = pending.pop(0)
                running.append(((n, s), subprocess.Popen([sys.executable, str(SCRIPT), n, '--seeds', str(s), *common])))
            time.sleep(1)
            for r in [r for r in running if r[1].poll() is not None]:
                running.remove(r)
                if r[1].returncode: failed.append(r[0])
        if failed: raise RuntimeError(f"failed runs (experiment, seed): {failed}")


if __name__ == '__main__': main()

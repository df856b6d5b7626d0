"""cpixelcnn on a CUDA GPU in at most ten minutes: the test suite's device-independent properties run on the GPU, the
benchmark's figures measured there, and a short run on the course data with its accuracy; one table at the end.

    python nbs/gpu_check.py                  # on a machine with an NVIDIA GPU
    python nbs/gpu_check.py --device cpu --quick --minutes 0.05 --data builtin   # the same code path on the CPU, in a minute

On a machine without CUDA it says so and exits 0. The properties: causality by gradients for every fusion mode, the
likelihood's normalisation (256 levels, and all 256^3 colours), the cached sampler drawing what the naive one draws,
shared-work classification equal to K separate passes, and a resumed run equal to an uninterrupted one. Like
`experiments.py`, this script needs the repository (and, for the course-data run, `../shared/data/cpen455`)."""
import math, os, sys, tempfile, time
from pathlib import Path

os.environ.setdefault('CUBLAS_WORKSPACE_CONFIG', ':4096:8')           # deterministic cuBLAS, for the exact-resume check
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))              # report.py, beside this script
from cpixelcnn.bench import machine_info, matmul_gflops, throughput
from cpixelcnn.classify import class_log_likelihoods, classify_dataset
from cpixelcnn.cli import Parser, cli_errors
from cpixelcnn.masks import causal_violations
from cpixelcnn.mixture import dmol_log_prob, dmol_log_prob_pixels
from cpixelcnn.model import FUSIONS, ConditionalPixelCNN
from cpixelcnn.sampling import sample_cached, sample_naive, sampling_noise
from cpixelcnn.trainer import TrainConfig, load_checkpoint, load_model, train

def tiny_model(fusion:str, device, channels:int=1, n_classes:int=3) -> ConditionalPixelCNN:
    "A 1/8/2 model in float64 on `device`, its weights scaled up so that every path carries signal"
    torch.manual_seed(0)
    m = ConditionalPixelCNN(1, 8, 2, n_classes=n_classes, fusion=fusion, in_channels=channels).double()
    with torch.no_grad():
        for p in m.parameters(): p.add_(torch.randn_like(p) * 0.3)
    return m.to(device).eval()

def grid_images(n:int, channels:int, side:int, device) -> torch.Tensor:
    "Random images on the 256-level grid, float64"
    return (torch.randint(0, 256, (n, channels, side, side), generator=torch.Generator().manual_seed(1)) / 127.5 - 1).double().to(device)

def check_causality(device, fusions) -> tuple:
    "Output (i, j) depends on no input at or after (i, j), for every fusion mode: (passed, detail)"
    bad = {}
    for f in fusions:
        m, x = tiny_model(f, device), grid_images(1, 1, 8, device)
        y = torch.ones(1, dtype=torch.long, device=device)
        with torch.enable_grad(): v = causal_violations(lambda t: m(t, y), x)
        if v: bad[f] = v[:3]
    return not bad, f"{len(fusions)} fusion modes, 8x8" + (f": violations {bad}" if bad else '')

def check_normalisation(device, rgb:bool) -> tuple:
    "The discretized mixture's probabilities sum to 1 over the 256 grey levels, and over all 256^3 colours: (passed, detail)"
    g = torch.Generator().manual_seed(2)
    worst = []
    for C, n_per in ((1, 3), (3, 10)) if rgb else ((1, 3),):
        M = 4
        params = (torch.randn(1, n_per * M, 1, 1, generator=g, dtype=torch.float64) * 2).to(device)
        levels = torch.arange(256, device=device, dtype=torch.float64) / 127.5 - 1
        total = torch.zeros((), dtype=torch.float64, device=device)
        if C == 1:
            total = dmol_log_prob_pixels(levels.view(256, 1, 1, 1), params.expand(256, -1, -1, -1)).exp().sum()
        else:
            rg = torch.cartesian_prod(levels, levels)                                # (65536, 2)
            for b in levels:                                                         # one blue level at a time
                x = torch.cat([rg, b.expand(len(rg), 1)], 1).view(-1, 3, 1, 1)
                total += dmol_log_prob_pixels(x, params.expand(len(x), -1, -1, -1)).exp().sum()
        worst.append(abs(total.item() - 1))
    return max(worst) < 1e-6, f"|sum - 1| = {max(worst):.1e} ({'grey and RGB' if rgb else 'grey'})"

def check_sampling(device, fusions) -> tuple:
    "The cached sampler draws the naive sampler's images from the same draws: (passed, detail)"
    diff = []
    for f in fusions:
        m = tiny_model(f, device)
        y = torch.arange(3, device=device)
        noise = sampling_noise(m, 3, 8, torch.Generator(device).manual_seed(3))
        diff.append(not torch.equal(sample_cached(m, y, 8, noise), sample_naive(m, y, 8, noise)))
    return not any(diff), f"{len(fusions)} fusion modes, 3 images of 8x8" + (f": {sum(diff)} differ" if any(diff) else ', identical')

def check_classification(device, fusions) -> tuple:
    "Shared-work classification gives the log-likelihoods of K separate forward passes: (passed, detail)"
    worst = 0.
    for f in fusions:
        m, x = tiny_model(f, device, channels=3, n_classes=4), grid_images(5, 3, 8, device)
        with torch.no_grad():
            full = torch.stack([dmol_log_prob(x, m(x, torch.full((5,), k, device=device))) for k in range(4)], 1)
        worst = max(worst, (class_log_likelihoods(m, x) - full).abs().max().item())
    return worst < 1e-8, f"{len(fusions)} fusion modes, K = 4, max |diff| {worst:.1e} nats (float64)"

def check_resume(device, work:Path) -> tuple:
    "Eight steps in one go, and four steps then a resume to eight, give the same weights: (passed, detail)"
    cfg = dict(data='builtin', image_size=8, nr_filters=8, nr_logistic_mix=2, max_train=64, max_val=32, batch_size=16, epochs=None,
               minutes=None, n_samples_per_class=0, amp='float32', device=str(device), dropout=0.5, augment=True,
               schedule='exp')   # a schedule that does not depend on the budget: 4 steps of an 8-step run are 4 steps of a 4-step run
    if device.type == 'cuda': torch.use_deterministic_algorithms(True)
    try:
        a = train(TrainConfig(**cfg, max_steps=8), work / 'a').eval_model.state_dict()
        train(TrainConfig(**cfg, max_steps=4), work / 'b')
        b = train(TrainConfig(**cfg, max_steps=8), work / 'b', resume=True).eval_model.state_dict()
    finally:
        if device.type == 'cuda': torch.use_deterministic_algorithms(False)
    worst = max((a[k].float() - b[k].float()).abs().max().item() for k in a)
    return worst == 0, f"8 steps vs 4 + resume 4 (dropout, augmentation): max |diff| of the EMA weights {worst:.1e}"

def benchmark(device, quick:bool) -> list:
    "(figure, value) rows: the matmul rates, and images/s and roofline fraction of training and scoring, float32, bfloat16 and compiled"
    rows = [('matmul float32, GFLOP/s', matmul_gflops(2048 if device.type == 'cuda' else 512, 5, device=device)),
            ('matmul bfloat16, GFLOP/s', matmul_gflops(2048 if device.type == 'cuda' else 512, 5, dtype=torch.bfloat16, device=device))]
    for train_, name in ((True, 'train'), (False, 'score')):
        for amp in (False, True):
            m = ConditionalPixelCNN(1, 40, 5, n_classes=4, fusion='head').to(device)
            t = throughput(m, 64 if device.type == 'cuda' else 8, 32, train=train_, repeats=2 if quick else 5, compile=not quick, amp=amp)
            tag = f"{name} {'bfloat16' if amp else 'float32'}"
            rows += [(f'{tag}, images/s', t['images_per_s']), (f'{tag}, share of the matmul rate', t['roofline'])]
            if not quick: rows += [(f'{tag} compiled, images/s', t['compiled_images_per_s'])]
    return rows

def course_run(device, minutes:float, data:str|None, work:Path) -> list:
    "(figure, value) rows of a run with the defaults for `minutes` on the course data without its report split, scored on that split"
    if data is None:
        import report                                                 # the report split of the README's results table
        folder, held_out = report.prepare(work / 'report')
        what = 'CPEN455 report split'
    else: folder, held_out, what = data, None, f'{data} validation split'
    t0 = time.perf_counter()
    tr = train(TrainConfig(data=str(folder), minutes=minutes, epochs=None, device=str(device)), work / 'run')
    wall = time.perf_counter() - t0
    model = load_model(work / 'run', device=device)
    acc = classify_dataset(model, held_out, amp=False)[1]['accuracy'] if held_out is not None else tr.state.metrics[-1]['val_accuracy']
    return [(f'{minutes:g}-minute run with the defaults: steps', tr.state.step), ('  its wall minutes (with sampling and judge)', wall / 60),
            ('  its val bits/dim', tr.state.metrics[-1]['val_bpd']), (f'  its accuracy on the {what}', acc)]

def main(argv:list|None=None) -> None:
    "`python nbs/gpu_check.py`: run every check and figure on the GPU (or `--device cpu`), print one table"
    with cli_errors('gpu_check.py'):
        p = Parser('gpu_check.py', "Check cpixelcnn on a CUDA GPU: properties, benchmark and a short run on the course data, one table.",
                   "python nbs/gpu_check.py\npython nbs/gpu_check.py --device cpu --quick --minutes 0.05 --data builtin")
        p.add_argument('--device', default='cuda', help="where to run: cuda (default), cuda:1, ... or cpu")
        p.add_argument('--minutes', type=float, default=5., help="the course-data run's budget (default: 5)")
        p.add_argument('--data', default=None, help="train on this folder or dataset name instead of the course data without its report split")
        p.add_argument('--quick', action='store_true', help="two fusion modes, grey normalisation only, no compilation: for a CPU try")
        a = p.parse_args(argv)
        if a.device.startswith('cuda') and not torch.cuda.is_available():
            print(f"no CUDA device here (torch {torch.__version__}, {machine_info()}): nothing to check. Run this on a machine with an NVIDIA GPU.")
            return
        device, t0 = torch.device(a.device), time.perf_counter()
        fusions = ('middle', 'head') if a.quick else FUSIONS
        rows = []
        with tempfile.TemporaryDirectory() as tmp:
            for name, check in (('causality by gradients', lambda: check_causality(device, fusions)),
                                ('likelihood sums to 1', lambda: check_normalisation(device, not a.quick)),
                                ('cached sampler == naive sampler', lambda: check_sampling(device, fusions)),
                                ('shared-work scores == K passes', lambda: check_classification(device, fusions)),
                                ('resume == uninterrupted', lambda: check_resume(device, Path(tmp) / 'resume'))):
                ok, detail = check(); rows.append((name, 'pass' if ok else 'FAIL', detail)); print(f"{name}: {rows[-1][1]} ({detail})", flush=True)
            figures = benchmark(device, a.quick) + course_run(device, a.minutes, a.data, Path(tmp))
        print(f"\ncpixelcnn on {device}: {machine_info()}, {time.perf_counter() - t0:.0f} s in all\n")
        print('| check | result | detail |\n|---|---|---|')
        for r in rows: print(f"| {r[0]} | {r[1]} | {r[2]} |")
        print('\n| figure | value |\n|---|---|')
        for k, v in figures: print(f"| {k} | {v:.4g} |" if isinstance(v, float) else f"| {k} | {v} |")
        if any(r[1] != 'pass' for r in rows): raise SystemExit(1)

if __name__ == '__main__': main()

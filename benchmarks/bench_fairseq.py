"""Benchmark the fairseq plugin: training speed with knee vs inverse_sqrt, and start-up cost.

1. words/s of a small fairseq-train run (synthetic data, tiny transformer) with
   ``--lr-scheduler knee`` and ``inverse_sqrt``, interleaved, reported as a ratio;
2. Python start-up time (``python -c pass``) with and without the auto-registration .pth,
   each in a bare throwaway venv; and ``import fairseq`` with the hook on and off.

Usage: python -m benchmarks.bench_fairseq [--rounds 3] [--updates 150] [--startup-runs 30]
Prints figures; it is not a test.
"""

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from scripts.common.fairseq_cli import BIN, TINY_MODEL, clean_env, run_cli, train_records, write_tiny_corpus

HERE = Path(__file__).resolve().parent


def words_per_second(data: Path, save_dir: Path, scheduler: list, updates: int) -> float:
    out = run_cli(
        "fairseq-train", data, *TINY_MODEL, "--save-dir", save_dir, "--no-save",
        "--max-update", updates, *scheduler,
    ).stdout  # fmt: skip
    records = train_records(out)[5:]  # skip the first updates (warm-up of the process)
    words = sum(float(r["wpb"]) for r in records)
    seconds = sum(float(r["wpb"]) / float(r["wps"]) for r in records if float(r["wps"]) > 0)
    return words / seconds


def bench_training(rounds: int, updates: int) -> None:
    schedulers = {
        "knee": ["--lr-scheduler", "knee", "--warmup-updates", "10"],
        "inverse_sqrt": ["--lr-scheduler", "inverse_sqrt", "--warmup-updates", "10"],
    }
    with tempfile.TemporaryDirectory() as tmp:
        raw, data = Path(tmp, "raw"), Path(tmp, "bin")
        raw.mkdir()
        write_tiny_corpus(raw)
        run_cli("fairseq-preprocess", "--source-lang", "de", "--target-lang", "en",
                "--trainpref", raw / "train", "--validpref", raw / "valid",
                "--destdir", data, "--joined-dictionary", "--workers", "1")  # fmt: skip
        results = {name: [] for name in schedulers}
        for _ in range(rounds):
            for name, args in schedulers.items():
                results[name].append(words_per_second(data, Path(tmp, name), args, updates))
    for name, values in results.items():
        print(f"  {name:13s} words/s: " + ", ".join(f"{v:.0f}" for v in values)
              + f"  (median {statistics.median(values):.0f})")  # fmt: skip
    ratios = [k / i for k, i in zip(results["knee"], results["inverse_sqrt"], strict=False)]
    print(f"  knee / inverse_sqrt per round: {', '.join(f'{r:.3f}' for r in ratios)}; "
          f"median {statistics.median(ratios):.3f}")  # fmt: skip


def time_command(command: list, env: dict, runs: int) -> list:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(command, check=True, env=env, stdout=subprocess.DEVNULL)
        times.append(time.perf_counter() - start)
    return times


def bench_startup(runs: int) -> None:
    import _knee_plugins_fairseq_hook as hook

    env = clean_env()
    with tempfile.TemporaryDirectory() as tmp:
        venvs = {}
        for name in ("without", "with"):
            venv = Path(tmp, name)
            subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
            venvs[name] = venv / "bin" / "python"
        site = subprocess.run([str(venvs["with"]), "-c", "import site; print(site.getsitepackages()[0])"],
                              check=True, text=True, stdout=subprocess.PIPE).stdout.strip()  # fmt: skip
        copied = shutil.copy(hook.__file__, site)
        subprocess.run([str(venvs["with"]), "-m", "py_compile", copied], check=True)  # as pip does
        Path(site, "knee_plugins_fairseq.pth").write_text("import _knee_plugins_fairseq_hook\n")
        samples = {name: [] for name in venvs}
        for _ in range(runs):  # interleaved
            for name, python in venvs.items():
                samples[name] += time_command([str(python), "-c", "pass"], env, 1)
        out = subprocess.run([str(venvs["with"]), "-X", "importtime", "-c", "pass"], env=env,
                             text=True, stderr=subprocess.PIPE, check=True).stderr  # fmt: skip
    for name, values in samples.items():
        print(f"  python -c pass, {name:7s} the .pth: median {statistics.median(values) * 1e3:.1f} ms"
              f" (min {min(values) * 1e3:.1f} ms, {runs} runs)")  # fmt: skip
    delta = statistics.median(samples["with"]) - statistics.median(samples["without"])
    print(f"  difference of the medians: {delta * 1e3:+.2f} ms")
    for line in out.splitlines():
        if "_knee_plugins_fairseq_hook" in line:
            print(f"  -X importtime of the hook (self us | cumulative us): {line.split(':', 1)[1].strip()}")
    fairseq = {"hook on": clean_env(), "hook off": clean_env(KNEE_PLUGINS_NO_AUTOREGISTER="1")}
    import_times = {name: [] for name in fairseq}
    for _ in range(max(3, runs // 10)):
        for name, fenv in fairseq.items():
            import_times[name] += time_command([sys.executable, "-c", "import fairseq"], fenv, 1)
    for name, values in import_times.items():
        print(f"  python -c 'import fairseq', {name}: median {statistics.median(values):.2f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds of training runs")
    parser.add_argument("--updates", type=int, default=150, help="updates per training run")
    parser.add_argument("--startup-runs", type=int, default=30, help="start-ups timed per variant")
    parser.add_argument("--skip-training", action="store_true", help="only the start-up figures")
    args = parser.parse_args()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=HERE, text=True,
                            stdout=subprocess.PIPE).stdout.strip()  # fmt: skip
    print(f"knee_plugins fairseq benchmark: commit {commit}, {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs, Python {platform.python_version()}, {BIN}")  # fmt: skip
    if not args.skip_training:
        print("training speed (tiny transformer, CPU):")
        bench_training(args.rounds, args.updates)
    print("start-up:")
    bench_startup(args.startup_runs)


if __name__ == "__main__":
    main()

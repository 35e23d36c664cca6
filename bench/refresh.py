"""Benchmark: what reading reality costs (not a test; prints timings). Needs root.

    .venv/bin/python bench/refresh.py [--runs 5] [--mesh inventories/lab/mesh.yaml]

Applies the lab mesh into a temporary state dir, keystore and lab root (so a lab the README's command
made is left alone), then times, interleaved run by run, `vpncloud plan` with the refresh,
`vpncloud plan -refresh=false` and `vpncloud status MESH`, each as the user runs it (a whole
process), and prints min / median / max. Destroys the lab at the end.

The same figures over real hosts through Ansible are printed by the molecule scenario `default`
(its orchestrator drift play reports the durations of plan and status over its three containers).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--mesh", type=Path, default=ROOT / "inventories" / "lab" / "mesh.yaml")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="vc-bench-refresh-") as tmp:
        common = ["--state-dir", f"{tmp}/state", "--keystore", f"{tmp}/keys", "--lab-dir", f"{tmp}/lab",
                  "--no-color"]  # fmt: skip
        mesh = str(args.mesh)

        def run(*cmd: str, ok: tuple[int, ...] = (0,)) -> float:
            t0 = time.perf_counter()
            proc = subprocess.run([sys.executable, "-m", "vpncloud", *cmd], capture_output=True, text=True)
            took = time.perf_counter() - t0
            if proc.returncode not in ok:
                sys.exit(
                    f"{' '.join(cmd[:2])}: exit {proc.returncode}\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}"
                )
            return took

        apply_s = run("apply", mesh, *common)
        subjects = {
            "plan (refresh)": ("plan", mesh, *common, "--detailed-exitcode"),
            "plan -refresh=false": ("plan", mesh, *common, "-refresh=false", "--detailed-exitcode"),
            "status MESH": ("status", mesh, *common[:4], "--lab-dir", f"{tmp}/lab"),
        }
        times: dict[str, list[float]] = {name: [] for name in subjects}
        try:
            for _ in range(args.runs):
                for name, cmd in subjects.items():
                    times[name].append(run(*cmd))
        finally:
            run("destroy", mesh, *common, "-auto-approve")
    nodes = sum(1 for line in args.mesh.read_text().splitlines() if line.lstrip().startswith("- name:"))
    print(f"lab mesh {args.mesh} ({nodes} nodes), first apply {apply_s:.2f} s; {args.runs} runs, interleaved")
    print(f"{'subject':<22} {'min s':>7} {'median s':>9} {'max s':>7}")
    for name, values in times.items():
        print(f"{name:<22} {min(values):7.3f} {statistics.median(values):9.3f} {max(values):7.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Chaos soak: a fleet under faults, judged afterwards from its recorded history.

    .venv/bin/python bench/chaos.py [--minutes 30] [--clients 6] [--seed 1] [--mean-gap 8] [--keep]

Three `vmplane serve` replicas on one PostgreSQL (a throwaway server of its own, made by
scripts/ensure-postgres.sh, so restarting it disturbs nobody else) and three `vmplane agent
--driver sim` nodes (chaos_fleet.py); clients issue a mixed workload through the native API and
the FastVM and Volant faces, SSE followers resume with Last-Event-ID and a local receiver takes
webhooks (chaos_load.py), while a nemesis seeded by `--seed` kills, freezes and restarts
replicas, kills agents, restarts PostgreSQL and slows one agent's network. After `--minutes`
the faults end, the fleet is healed and left to settle, and the checker (chaos_check.py) reads
the histories: the clients', the followers', the webhook receiver's, each node's record of the
hypervisor calls it executed, and the store's final state. It prints the operations done, the
faults injected, the time to converge after the last fault, each violation with its evidence
and `violations: N`, and exits 1 when N > 0. The run directory is removed unless `--keep` (or
a violation) keeps it for reading.
"""

import argparse
import asyncio
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from chaos_check import check, final_state  # noqa: E402
from chaos_fleet import Fleet  # noqa: E402
from chaos_load import Workload  # noqa: E402


async def soak(args: argparse.Namespace, run_dir: Path) -> int:
    """Run the soak in `run_dir`; the number of violations."""
    started = time.monotonic()
    fleet = Fleet(run_dir, replicas=3, agents=3, seed=args.seed, keep_database=args.keep)
    async with fleet as view:
        workload = Workload(view, clients=args.clients, seed=args.seed)
        try:
            await workload.setup()
            stop = asyncio.Event()
            load = asyncio.create_task(workload.run(stop))
            faults = asyncio.create_task(fleet.nemesis(stop, mean_gap=args.mean_gap))
            # the faults go on for --minutes, unless the workload or the nemesis breaks first
            await asyncio.wait({load, faults}, timeout=args.minutes * 60, return_when=asyncio.FIRST_EXCEPTION)
            stop.set()
            await load
            injected = await faults
            healed_at = await fleet.heal()
            settle = await workload.settle(timeout=args.settle_timeout)
            await final_state(view)
        finally:
            await workload.close()
    violations = check(run_dir)
    ops = workload.ops
    print(f"soak: {args.minutes:g} min of faults, seed {args.seed}, {args.clients} clients, {time.monotonic() - started:.0f} s in all")
    print(f"operations: {sum(ops.values())} (" + ", ".join(f"{k} {v}" for k, v in sorted(ops.items())) + ")")
    print(f"faults: {injected}")
    print(f"converged in: {settle:.1f} s after the heal at {time.strftime('%H:%M:%S', time.localtime(healed_at))}")
    for v in violations:
        print(f"VIOLATION {v.kind} {v.subject}: {v.evidence}")
    print(f"violations: {len(violations)}")
    return len(violations)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=30.0, help="how long the faults go on")
    ap.add_argument("--clients", type=int, default=6)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--mean-gap", type=float, default=8.0, help="mean seconds between two faults")
    ap.add_argument("--settle-timeout", type=float, default=180.0, help="seconds the fleet gets to converge after the heal")
    ap.add_argument("--keep", action="store_true", help="keep the run directory (histories, logs, and the database in pg/)")
    args = ap.parse_args()
    run_dir = Path(tempfile.mkdtemp(prefix="vmplane-chaos-"))
    n = 1
    try:
        n = asyncio.run(soak(args, run_dir))
    finally:
        if args.keep or n:
            print(f"histories and logs: {run_dir}")
        else:
            shutil.rmtree(run_dir, ignore_errors=True)
    sys.exit(1 if n else 0)


if __name__ == "__main__":
    main()

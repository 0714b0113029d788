"""The collectives of visionzoo.train.distributed under torchrun (Gloo, 4 processes)."""

import subprocess
import sys
import textwrap

import pytest

from processes import child_env

# Each rank checks what the helpers return, then ends with the collective named on its command
# line and exits. Gloo's worker threads run at the lowest priority while two processes keep the
# CPUs busy, so a worker may still hold that last collective's tensors when the rank's main
# thread returns; a DistributedDataParallel model keeps the group (and those threads) alive to
# the end, as in training. Without the wait in _settled, some rank died of SIGABRT
# ("terminate called without an active exception") as Python shut down in 6 of 10 runs of
# these two tests at 8 ranks, in 11 of 12 at 4 ranks (4 of 8 at 2); with it, in none of 8 at
# either (4 ranks: 13 s a run beside the two busy loops, 8 ranks: 35-55 s).
SCRIPT = textwrap.dedent("""
    import os, sys, torch
    from visionzoo.train import distributed as D
    from visionzoo.train.checkpoint import gather_rng

    info = D.init("cpu")
    r, w = info.rank, info.world_size
    ddp = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(4, 2))
    ddp(torch.randn(3, 4)).sum().backward()
    for tid in os.listdir("/proc/self/task"):  # (Gloo names its threads once they have run)
        try:
            with open(f"/proc/self/task/{tid}/comm") as f:
                if f.read().startswith(("pt_gloo", "gloo")):
                    os.setpriority(os.PRIO_PROCESS, int(tid), 19)
        except OSError:  # a thread that ended meanwhile
            pass
    assert D.broadcast_object({"from": r, "big": list(range(1000 * (r + 1)))}, info) == {"from": 0, "big": list(range(1000))}
    objs = D.all_gather_object({"rank": r, "pad": "x" * (r * 97)}, info)  # objects of different sizes
    assert objs == [{"rank": i, "pad": "x" * (i * 97)} for i in range(w)], objs
    torch.manual_seed(r)
    states = gather_rng(info)
    assert torch.equal(states[r]["torch"], torch.get_rng_state()) and not torch.equal(states[0]["torch"], states[1]["torch"])
    bn = torch.nn.BatchNorm1d(3)
    bn.running_mean.fill_(float(r))
    D.average_norm_statistics(bn, info)
    assert torch.allclose(bn.running_mean, torch.full((3,), (w - 1) / 2))
    from visionzoo.train.engine import evaluate
    y = torch.tensor([r % 3, 2])  # each rank's two images; logits pick class 1 for the first, 0 for the second
    logits = torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    res = evaluate(torch.nn.Identity(), [(logits, y)], info, num_classes=3, confusion=True)
    want = torch.zeros(3, 3, dtype=torch.long)
    for i in range(w):
        want[i % 3, 1] += 1
        want[2, 0] += 1
    assert res["count"] == 2 * w and torch.equal(res["confusion"], want), res
    last = sys.argv[1]
    if last == "sum":
        assert D.all_reduce_sum([r, 1], info) == [w * (w - 1) / 2, w]
    elif last == "gather":
        assert len(gather_rng(info)) == w
    D.cleanup()
""")


TIMEOUT_S = 300  # at 8 ranks, one test took 35-41 s alone, 97-141 s beside two more runs of this file (load 26 on 2 cores)


@pytest.mark.parametrize("last", ["sum", "gather"])
def test_collectives_under_torchrun_and_a_clean_exit(tmp_path, last):
    script = tmp_path / "collectives.py"
    script.write_text(SCRIPT)
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2)]
    try:
        # past the limit, SIGTERM: torchrun then stops its ranks (each in a session of its own, so
        # killing torchrun alone, as subprocess.run's timeout does, leaves them blocked in a
        # collective) and what they printed is still reported
        proc = subprocess.Popen(
            [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "4", str(script), last],
            env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        try:
            _, err = proc.communicate(timeout=TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.terminate()
            _, err = proc.communicate(timeout=60)
            pytest.fail(f"torchrun was still running after {TIMEOUT_S} s; what it had printed:\n" + err[-4000:])
    finally:
        for h in hogs:
            h.kill()
            h.wait()
    # torchrun's summary (the tail) names the rank and signal; the ranks' own lines say why
    why = [line for line in err.splitlines() if any(w in line for w in ("terminate", "what()", "Error", "Traceback"))]
    assert proc.returncode == 0, "\n".join(why[:20]) + "\n...\n" + err[-2000:]

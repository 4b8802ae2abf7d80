"""What the GPU path needs of the collectives, shown on the CPU: every collective goes through
pipeline.train.collectives, which puts its tensors on the device the backend reduces on (NCCL
refuses CPU tensors: "No backend type associated with device type cpu"); BatchNorm statistics
travel in one call; evaluation shards count every image once."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from torch import nn

from pipeline.train import collectives

REPO = Path(__file__).resolve().parents[1]
COLLECTIVES = {"all_reduce", "broadcast", "all_gather", "all_gather_object", "all_gather_into_tensor", "reduce",
               "reduce_scatter", "reduce_scatter_tensor", "gather", "scatter", "barrier", "broadcast_object_list",
               "all_to_all", "send", "recv"}


class Reached(Exception):
    """Raised by a fake collective once it has seen its tensor."""


@pytest.fixture
def two_ranks_on(monkeypatch):
    """A fake 2-rank process group whose backend reduces on `device` (meta: a device that is not
    the CPU); every collective records the device of what it was handed, then stops the caller."""
    seen: list[torch.device] = []

    def fake(tensor_or_list, *args, **kwargs):
        t = tensor_or_list[0] if isinstance(tensor_or_list, list) else tensor_or_list
        seen.append(args[0].device if isinstance(tensor_or_list, list) and args else t.device)
        raise Reached

    monkeypatch.setattr(collectives, "world", lambda: (0, 2))
    for name in ("all_reduce", "all_gather", "broadcast"):
        monkeypatch.setattr(dist, name, fake)

    def on(device: str):
        monkeypatch.setattr(collectives, "comm_device", lambda: torch.device(device))
        return seen

    return on


def test_every_collective_hands_over_tensors_on_the_backends_device(two_ranks_on):
    from pipeline.train.evaluate import accuracy

    seen = two_ranks_on("meta")
    bn_net = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4), nn.BatchNorm2d(4))
    calls = [lambda: collectives.all_sum([1.0, 2.0]),  # the epoch's loss and image sums
             lambda: collectives.all_max(15),  # the stop signal (preempt.StopRequests.agreed)
             lambda: collectives.all_reduce(torch.ones(2, dtype=torch.int64), op="max"),  # the finiteness flag
             lambda: collectives.average_batchnorm_stats(bn_net),
             lambda: collectives.all_gather(torch.zeros(3, 3)),  # torchmetrics' confusion matrix (ADE20K mIoU)
             lambda: accuracy(_Classifier(), [(torch.randn(2, 3, 8, 8), torch.tensor([0, 1]))],
                              torch.device("cpu"))]  # counts made on the CPU device, reduced on the backend's
    for call in calls:
        with pytest.raises(Reached):
            call()
    assert seen == [torch.device("meta")] * len(calls)


def test_the_backends_device_is_this_ranks_gpu_under_nccl_and_the_cpu_under_gloo(monkeypatch):
    monkeypatch.setattr(collectives, "world", lambda: (1, 16))
    monkeypatch.setattr(dist, "get_backend", lambda: "nccl")
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 3)
    assert collectives.comm_device() == torch.device("cuda", 3)
    monkeypatch.setattr(dist, "get_backend", lambda: "gloo")
    assert collectives.comm_device() == torch.device("cpu")


def test_one_rank_calls_no_collective(monkeypatch):
    def boom(*args, **kwargs):
        raise AssertionError("a collective with one rank")

    monkeypatch.setattr(dist, "all_reduce", boom)
    t = torch.tensor([1.0])
    assert collectives.all_reduce(t) is t and collectives.all_sum([2.0]) == [2.0] and collectives.all_max(3) == 3
    collectives.average_batchnorm_stats(nn.BatchNorm2d(2))


def _collective_calls(path: Path) -> list[str]:
    """`dist.x(...)` / `torch.distributed.x(...)` calls of collectives in one file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in COLLECTIVES:
            owner = ast.unparse(node.func.value)
            if owner in ("dist", "torch.distributed"):
                found.append(f"{path.relative_to(REPO)}:{node.lineno} {owner}.{node.func.attr}")
        if isinstance(node, ast.ImportFrom) and node.module == "timm.utils" and \
                any(a.name in ("distribute_bn", "reduce_tensor") for a in node.names):
            found.append(f"{path.relative_to(REPO)}:{node.lineno} timm.utils.{node.names[0].name}")
    return found


def test_no_module_reaches_a_collective_but_through_the_helper():
    offenders = [c for p in sorted((REPO / "pipeline").rglob("*.py")) if p.name != "collectives.py"
                 for c in _collective_calls(p)]
    assert not offenders, f"call these through pipeline.train.collectives: {offenders}"


def test_batchnorm_statistics_are_averaged_in_one_call(monkeypatch):
    torch.manual_seed(0)
    net = nn.Sequential(*[nn.BatchNorm2d(c) for c in (2, 3, 5)], nn.Conv2d(5, 5, 1))
    for bn in net[:3]:
        bn.running_mean.normal_()
        bn.running_var.uniform_(0.5, 2.0)
    other = {k: torch.randn_like(v) for k, v in net.state_dict().items() if "running_" in k}  # rank 1's
    mine = {k: v.clone() for k, v in net.state_dict().items() if "running_" in k}
    calls = []

    def fake_all_reduce(t, op=None):
        calls.append(t.numel())
        t.add_(torch.cat([other[k].flatten() for k in mine]))  # rank 1's buffers, in the same order

    monkeypatch.setattr(collectives, "world", lambda: (0, 2))
    monkeypatch.setattr(collectives, "comm_device", lambda: torch.device("cpu"))  # gloo
    monkeypatch.setattr(dist, "all_reduce", fake_all_reduce)
    collectives.average_batchnorm_stats(net)
    assert calls == [2 * (2 + 3 + 5)]  # one call for every running mean and variance
    for k, v in net.state_dict().items():
        if "running_" in k:
            assert torch.allclose(v, (mine[k] + other[k]) / 2), k


class _Classifier(nn.Module):
    """Enough of a timm model for `accuracy`: forward_features, forward_head."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Conv2d(3, 5, 8)

    def forward_features(self, x):
        return self.body(x)

    def forward_head(self, f):
        return f.flatten(1)


def test_evaluation_shards_count_every_image_once_and_sum_to_one_ranks_result(monkeypatch):
    from pipeline.train.evaluate import accuracy
    from pipeline.train.synthetic import SyntheticData

    data, model, cpu = SyntheticData(8, num_classes=5, n_val=23), _Classifier(), torch.device("cpu")
    whole = accuracy(model, data.evaluation("val", 4), cpu)
    world = 3
    shards = [accuracy(model, data.evaluation("val", 4, rank, world), cpu) for rank in range(world)]
    assert [s.images for s in shards] == [8, 8, 7]
    # what the all-reduce inside accuracy sums over the ranks
    correct1 = sum(round(s.top1 * s.images / 100) for s in shards)
    correct5 = sum(round(s.top5 * s.images / 100) for s in shards)
    assert (correct1, correct5, sum(s.images for s in shards)) == \
        (round(whole.top1 * 23 / 100), round(whole.top5 * 23 / 100), whole.images)


def test_a_shard_outside_the_world_is_refused(tmp_path):
    from pipeline.data.loaders import build_val_loader

    with pytest.raises(ValueError, match=r"shard \(2, 2\)"):
        build_val_loader(None, 56, 4, ffcv_dir=tmp_path, shard=(2, 2))

"""The transfer models and their loop pieces, fast: backbone loading from a pretraining stage's
model.pt, the mmdet settings that differ from torchvision's defaults, UPerNet at any input size,
the schedules and the batch order that resuming relies on."""
from __future__ import annotations

import timm
import torch
from torch import nn

import pytest

from pipeline.config import DetectionRecipe, SegmentationRecipe
from pipeline.models.hiri_vit import model_file
from pipeline.transfer.backbone import BackboneWeightsError, DenseBackbone, load_backbone, pad_to_multiple
from pipeline.transfer.detection import AlignedMultiScaleRoIAlign, P6P7OnInput, build_detector
from pipeline.transfer.loop import micro_batches
from pipeline.transfer.run import param_groups
from pipeline.transfer.segmentation import UPerNet
from pipeline.transfer.tasks import DetectionTask, SegmentationTask

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """A pretraining stage's model.pt (random weights, the real layout) and its student."""
    return _model_pt(tmp_path_factory.mktemp("weights"))


def _model_pt(tmp_path, img_size=448, name="model.pt"):
    student = timm.create_model("hiri_vit_s", img_size=img_size, num_classes=10)
    ema = timm.create_model("hiri_vit_s", img_size=img_size, num_classes=10)
    for p in ema.parameters():
        nn.init.constant_(p, 0.5)  # tell the two apart
    path = tmp_path / name
    torch.save(model_file(student, ema, "hiri_vit_s", 10, f"train_hiri_s_{img_size}"), path)
    return path, student


def test_backbone_loads_every_tensor_of_the_chosen_weights(weights):
    path, student = weights
    body = DenseBackbone("hiri_vit_s", (1, 2, 3, 4))
    meta = load_backbone(body, path, "student")
    assert meta["stage"] == "train_hiri_s_448"
    ours = body.body.model.state_dict()
    theirs = student.state_dict()
    assert all(torch.equal(v, theirs[k]) for k, v in ours.items() if v.is_floating_point())
    load_backbone(body, path, "ema")
    assert all(float(v.float().mean()) == 0.5 for k, v in body.body.model.state_dict().items()
               if v.is_floating_point() and not k.endswith(("running_mean", "running_var")))


def test_backbone_load_names_what_does_not_fit(tmp_path, weights):
    path, student = weights
    ckpt = torch.load(path, weights_only=True)
    del ckpt["state_dict"]["stages.2.0.ffn.fc1.weight"]
    torch.save(ckpt, tmp_path / "holed.pt")
    body = DenseBackbone("hiri_vit_s", (1, 2, 3, 4))
    with pytest.raises(BackboneWeightsError, match=r"random initialisation.*stages\.2\.0\.ffn\.fc1\.weight"):
        load_backbone(body, tmp_path / "holed.pt", "student")
    with pytest.raises(BackboneWeightsError, match="state_dict_ema"):
        torch.save({"state_dict": ckpt["state_dict"]}, tmp_path / "student_only.pt")
        load_backbone(body, tmp_path / "student_only.pt", "ema")
    small, _ = _model_pt(tmp_path, 224, "m224.pt")  # the 2x2 stem
    with pytest.raises(BackboneWeightsError, match="stem stride 2.*stem stride 4"):
        load_backbone(body, small, "student")


def test_detectors_match_table4_parameters_and_mmdet_settings():
    paper = {("retinanet", "hiri_vit_s"): 41.1, ("maskrcnn", "hiri_vit_s"): 51.0}
    for (name, arch), target in paper.items():
        det = build_detector(name, arch, min_size=1600, max_size=2666, mean=MEAN, std=STD)
        n = sum(p.numel() for p in det.parameters()) / 1e6
        assert abs(n - target) / target < 0.01, (name, n)
        assert det.transform.size_divisible == 64 and det.transform.min_size == (1600,)
    assert det.rpn._post_nms_top_n["training"] == 1000 and det.roi_heads.detections_per_img == 100
    assert isinstance(det.roi_heads.box_roi_pool, AlignedMultiScaleRoIAlign)
    assert det.roi_heads.box_roi_pool.sampling_ratio == 0


def test_p7_takes_p6_without_relu():
    block = P6P7OnInput(8, 4)
    c5 = torch.randn(1, 8, 16, 16)
    results, names = block([torch.zeros(1)], [c5], ["x"])
    assert names[-2:] == ["p6", "p7"]
    assert torch.allclose(results[-1], block.p7(block.p6(c5)))  # torchvision's would be p7(relu(p6))


def test_aligned_roi_align_is_torchvisions_roi_align_with_aligned_true():
    pool = AlignedMultiScaleRoIAlign(["0"], 7, sampling_ratio=0)
    feat = torch.randn(1, 4, 32, 32)
    boxes = [torch.tensor([[3.3, 4.1, 60.2, 50.7]])]
    out = pool({"0": feat}, boxes, [(256, 256)])
    from torchvision.ops import roi_align

    ref = roi_align(feat, [boxes[0]], 7, spatial_scale=1 / 8, sampling_ratio=0, aligned=True)
    assert torch.allclose(out, ref)


def test_maskrcnn_trains_on_odd_sizes_with_an_empty_image():
    det = build_detector("maskrcnn", "hiri_vit_s", min_size=128, max_size=200, mean=MEAN, std=STD)
    images = [torch.rand(3, 130, 170), torch.rand(3, 120, 100)]
    targets = [dict(boxes=torch.tensor([[10.0, 20.0, 90.0, 100.0]]), labels=torch.tensor([5]),
                    masks=torch.ones(1, 130, 170, dtype=torch.uint8)),
               dict(boxes=torch.zeros(0, 4), labels=torch.zeros(0, dtype=torch.int64),
                    masks=torch.zeros(0, 120, 100, dtype=torch.uint8))]
    losses = det(images, targets)
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()


def test_upernet_any_input_size_and_table6_parameters():
    model = UPerNet("hiri_vit_s").eval()
    n = sum(p.numel() for p in model.parameters()) / 1e6
    assert abs(n - 61.4) / 61.4 < 0.01
    with torch.no_grad():
        logits, aux = model(torch.randn(1, 3, 100, 130))
    assert logits.shape == aux.shape == (1, 150, 100, 130)
    assert isinstance(model.decode_head.classifier[0], nn.Dropout2d)
    assert pad_to_multiple(torch.zeros(1, 3, 100, 130), 64).shape[-2:] == (128, 192)


class _Spec:  # what the schedules read of a TransferSpec
    def __init__(self, recipe):
        self.recipe = recipe


def test_schedules_follow_mmdet_1x_and_mmseg_poly():
    det = DetectionTask.__new__(DetectionTask)
    det.recipe = DetectionRecipe(warmup_iters=10, warmup_ratio=0.001)
    ipe = 100
    assert det.lr_factor(0, ipe) == pytest.approx(0.001)
    assert det.lr_factor(10, ipe) == 1.0
    assert det.lr_factor(799, ipe) == 1.0 and det.lr_factor(800, ipe) == pytest.approx(0.1)
    assert det.lr_factor(1100, ipe) == pytest.approx(0.01)
    seg = SegmentationTask.__new__(SegmentationTask)
    seg.recipe = SegmentationRecipe(iters=1000, warmup_iters=100, warmup_ratio=1e-6)
    assert seg.lr_factor(0, 1) == pytest.approx(1e-6)
    assert seg.lr_factor(500, 1) == pytest.approx(0.5)
    assert seg.lr_factor(1000, 1) == 0.0


def test_batch_order_is_a_function_of_seed_and_iteration():
    n, ipe, B = 37, 9, 8
    both = [micro_batches(n, 0, 3, 0, ipe, B, 2, r, 2) for r in range(2)]
    # each iteration: 2 accumulation steps x 2 ranks x 2 images = the global batch, no repeats
    for it in range(ipe):
        got = [i for r in range(2) for mb in both[r][it * 2:(it + 1) * 2] for i in mb]
        assert len(got) == B and len(set(got)) == B
    resumed = micro_batches(n, 0, 3, 4, ipe, B, 2, 1, 2)
    assert resumed == both[1][4 * 2:]
    assert micro_batches(n, 1, 3, 0, ipe, B, 2, 0, 2) != both[0]


def test_segmentation_takes_no_decay_on_norms():
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4), nn.LayerNorm(4))
    groups = param_groups(model, 0.01, decay_norms=False)
    assert [len(g["params"]) for g in groups] == [2, 4] and groups[1]["weight_decay"] == 0.0
    assert len(param_groups(model, 0.01, decay_norms=True)[0]["params"]) == 6

"""HIRI-ViT: timm registration and API, fidelity to the paper's counts, deploy folding, bad input."""
import copy

import pytest
import timm
import torch

import pipeline.models  # noqa: F401  (registers the models)
from pipeline.models.deploy import fold_batchnorm, fold_identities, inference_model
from pipeline.models.flops import attention_gflops, count_gflops
from pipeline.models.report import PAPER_GFLOPS, PAPER_PARAMS_M, GFLOPS_TOLERANCE, PARAMS_TOLERANCE
from tests.model_fixtures import randomise_batchnorm

SIZES = ["hiri_vit_s", "hiri_vit_b", "hiri_vit_l"]


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", SIZES)
def test_parameter_count_within_1_percent_of_table_2(name):
    model = timm.create_model(name, img_size=448)
    ours = n_params(model) / 1e6
    assert abs(ours / PAPER_PARAMS_M[name] - 1) <= PARAMS_TOLERANCE, (name, ours)


@pytest.mark.slow
@pytest.mark.parametrize("name", SIZES)
@pytest.mark.parametrize("res", [448, 768])
def test_gflops_within_3_percent_of_tables_2_and_3(name, res):
    ours = count_gflops(timm.create_model(name, img_size=res), res)
    paper = PAPER_GFLOPS[(name, res)]
    assert abs(ours / paper - 1) <= GFLOPS_TOLERANCE, (name, res, ours, paper)


def test_flop_count_includes_attention_products():
    model = timm.create_model("hiri_vit_s", img_size=448)
    attn = attention_gflops(model, 448)
    # Stage 4: 9 blocks, 196 tokens, width 320; stage 5: 4 blocks, 49 tokens, width 512;
    # QK^T and AV each cost n^2 * C MACs; the class-attention block adds 1 x 50 x 512 twice.
    expected = (9 * 2 * 196**2 * 320 + 4 * 2 * 49**2 * 512 + 2 * 50 * 512) / 1e9
    assert attn == pytest.approx(expected, rel=1e-6)
    assert count_gflops(model, 448) > attn > 0


def test_flop_convention_on_a_known_baseline():
    # fvcore's multiply-add convention gives ResNet-50 about 4.1 GFLOPs at 224 (the paper's table 2).
    assert count_gflops(timm.create_model("resnet50"), 224) == pytest.approx(4.1, abs=0.05)


@pytest.mark.parametrize("res,grid,stride", [(224, 7, 2), (384, 6, 4), (448, 7, 4), (768, 12, 4)])
def test_create_model_at_each_resolution(res, grid, stride):
    model = timm.create_model("hiri_vit_s", img_size=res, num_classes=7, drop_path_rate=0.1).eval()
    x = torch.randn(1, 3, res, res)
    with torch.no_grad():
        last_map = model.forward_features(x)
        logits = model.forward_head(last_map)
        dense = model.forward_dense(x)
    assert model.stem_stride == stride
    assert last_map.shape == (1, 512, grid, grid)
    assert model.pretrained_cfg["pool_size"] == (grid, grid)
    assert logits.shape == (1, 7)
    assert dense.shape == (1, 7, grid, grid)
    assert model.forward_head(last_map, pre_logits=True).shape == (1, 512)


def test_drop_path_rate_reaches_the_blocks():
    model = timm.create_model("hiri_vit_s", img_size=448, drop_path_rate=0.2)
    last = model.stages[4][-1].drop_path
    assert last.drop_prob == pytest.approx(0.2)
    assert isinstance(model.stages[0][0].drop_path, torch.nn.Identity)  # rate 0 for the first block


def test_features_only_returns_five_maps_with_strides():
    model = timm.create_model("hiri_vit_b", img_size=448, features_only=True).eval()
    with torch.no_grad():
        maps = model(torch.randn(1, 3, 448, 448))
    assert model.feature_info.reduction() == [4, 8, 16, 32, 64]
    assert model.feature_info.channels() == [64, 96, 192, 320, 640]
    assert [m.shape[-1] for m in maps] == [112, 56, 28, 14, 7]
    assert [m.shape[1] for m in maps] == [64, 96, 192, 320, 640]


def test_features_only_out_indices():
    model = timm.create_model("hiri_vit_s", img_size=448, features_only=True, out_indices=(1, 2, 3, 4))
    with torch.no_grad():
        maps = model(torch.randn(1, 3, 448, 448))
    assert [m.shape[1] for m in maps] == [64, 128, 320, 512]


def test_reset_classifier():
    model = timm.create_model("hiri_vit_s", img_size=224)
    model.reset_classifier(5)
    assert model.get_classifier().out_features == 5
    with torch.no_grad():
        assert model(torch.randn(1, 3, 224, 224)).shape == (1, 5)
    model.reset_classifier(0)
    with torch.no_grad():
        assert model(torch.randn(1, 3, 224, 224)).shape == (1, 512)
    model.reset_classifier(0, "")  # unpooled: the last map, as timm's convolutional models give
    with torch.no_grad():
        assert model(torch.randn(1, 3, 224, 224)).shape == (1, 512, 7, 7)
    with pytest.raises(ValueError, match="no classifier"):
        model.reset_classifier(10, "")


def _assert_same_function(model, deployed, x) -> None:
    with torch.no_grad():
        ref, out = model(x), deployed(x)
    assert out.shape == ref.shape and ((out - ref).norm() / ref.norm()).item() < 1e-5


def _folded(model):
    folded = fold_batchnorm(model)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    return folded


# HIRI-ViT S/B/L, the 224 model's stride-2 stem, and a timm ResNet, whose BatchNorms (attributes
# beside their convs, not in our three places) are fused through torch.fx
@pytest.mark.parametrize("name, res, x_res", [(n, 448, 448) for n in SIZES] + [("hiri_vit_s", 224, 224),
                                                                               ("resnet18", 224, 64)])
def test_folded_model_matches_original(name, res, x_res):
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=10, **({"img_size": res} if name.startswith("hiri") else {})).eval()
    randomise_batchnorm(model)
    _assert_same_function(model, _folded(model), torch.randn(2, 3, x_res, x_res))


def test_inference_model_is_a_folded_channels_last_copy_computing_the_same():
    """BatchNorm and identities folded, NHWC weights; the model handed in stays as it was."""
    torch.manual_seed(0)
    model = timm.create_model("hiri_vit_s", img_size=64, num_classes=10).train()
    randomise_batchnorm(model)
    deployed = inference_model(model)
    assert not deployed.training and not any(isinstance(m, torch.nn.BatchNorm2d) for m in deployed.modules())
    assert deployed.stem.conv1[0][0].weight.is_contiguous(memory_format=torch.channels_last)
    # the model handed in is left as it was: training mode, BatchNorm, NCHW weights
    assert model.training and isinstance(model.stem.norm, torch.nn.BatchNorm2d)
    assert model.stem.conv1[0][0].weight.is_contiguous()
    _assert_same_function(model.eval(), deployed, torch.randn(2, 3, 64, 64).contiguous(memory_format=torch.channels_last))


def test_sync_batchnorm_folds_too():
    """A model trained with sync_bn: true carries SyncBatchNorm (not a BatchNorm2d); the training
    stage evaluates it through inference_model, so it must fold the same way."""
    torch.manual_seed(0)
    model = timm.create_model("hiri_vit_s", img_size=64, num_classes=10).eval()
    randomise_batchnorm(model)
    synced = torch.nn.SyncBatchNorm.convert_sync_batchnorm(copy.deepcopy(model)).eval()
    assert any(isinstance(m, torch.nn.SyncBatchNorm) for m in synced.modules())
    deployed = inference_model(synced)
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in deployed.modules())
    _assert_same_function(model, deployed, torch.randn(2, 3, 64, 64).contiguous(memory_format=torch.channels_last))


def test_inference_model_reparameterises_a_repvgg_style_baseline_the_timm_way():
    torch.manual_seed(0)
    model = timm.create_model("mobileone_s0", num_classes=10).eval()
    randomise_batchnorm(model)
    deployed = inference_model(model)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in deployed.modules())
    _assert_same_function(model, deployed, torch.randn(2, 3, 64, 64))


@pytest.mark.parametrize("name, res", [("hiri_vit_s", 448), ("hiri_vit_b", 224)])
def test_identities_fold_into_the_depthwise_kernels(name, res):
    torch.manual_seed(0)
    model = timm.create_model(name, img_size=res, num_classes=10).eval()
    randomise_batchnorm(model)
    folded = _folded(model)
    _assert_same_function(model, fold_identities(folded), torch.randn(2, 3, res, res))
    kinds = {type(m).__name__ for m in folded.modules()}
    assert {"_FoldedCFFN", "_FoldedHRBlock"} <= kinds and not {"CFFN", "HRBlock"} & kinds
    with pytest.raises(ValueError, match="BatchNorm folded"):
        fold_identities(timm.create_model(name, img_size=res).eval())


def test_folded_hr_block_on_an_odd_map():
    from pipeline.models.blocks import HRBlock

    torch.manual_seed(0)
    block = torch.nn.Sequential(HRBlock(8, 2.0)).eval()
    randomise_batchnorm(block)
    _assert_same_function(block, fold_identities(_folded(block)), torch.randn(1, 8, 7, 9))


def test_wrong_channel_count_is_a_clear_error():
    model = timm.create_model("hiri_vit_s", img_size=448)
    with pytest.raises(ValueError, match="expected 3 input channels, got 1"):
        model(torch.randn(1, 1, 448, 448))


def test_resolution_not_divisible_by_total_stride_is_a_clear_error():
    model = timm.create_model("hiri_vit_s", img_size=448)
    with pytest.raises(ValueError, match="not a multiple of this model's total stride 64"):
        model(torch.randn(1, 3, 400, 400))


def test_img_size_the_architecture_cannot_take():
    with pytest.raises(ValueError, match=r"img_size=500 is not a multiple of the total stride 64"):
        timm.create_model("hiri_vit_s", img_size=500)
    with pytest.raises(ValueError, match="img_size=224 is not a multiple of the total stride 64"):
        timm.create_model("hiri_vit_s", img_size=224, stem_stride=4)
    with pytest.raises(ValueError, match="stem_stride must be one of"):
        timm.create_model("hiri_vit_s", img_size=448, stem_stride=3)


def test_stem_stride_is_explicit_and_never_follows_img_size_silently():
    # 256 is no paper resolution: Table 1's 4x4 stem, as at 448 (a 2x2 stem is asked for by name)
    assert timm.create_model("hiri_vit_s", img_size=256).stem_stride == 4
    with pytest.raises(ValueError, match="pass stem_stride=2"):
        timm.create_model("hiri_vit_s", img_size=288)
    model = timm.create_model("hiri_vit_s", img_size=288, stem_stride=2)
    assert (model.stem_stride, model.total_stride) == (2, 32)
    assert timm.create_model("hiri_vit_s.untrained_224").stem_stride == 2


def test_non_square_img_size_is_rejected():
    with pytest.raises(ValueError, match="square"):
        timm.create_model("hiri_vit_s", img_size=(448, 384))


def test_pretrained_weights_do_not_exist():
    with pytest.raises(ValueError, match="no published weights"):
        timm.create_model("hiri_vit_s", pretrained=True)


def test_cpu_bf16_training_computes_the_slow_backward_kernels_in_fp32(monkeypatch):
    """Training on the CPU under bf16 autocast, the strided depth-wise conv and attention run in
    fp32 and hand bf16 on (docs/training.md, "CPU bf16 kernels"); without grad, in fp32, or outside
    autocast they are the plain kernels. The HR blocks' upsampling is a repetition."""
    import torch.nn.functional as F

    from pipeline.models import blocks
    from pipeline.models.blocks import StridedDepthwiseConv2d, attention, repeat_2d

    monkeypatch.setattr(blocks, "_ROUTE_CPU_BF16", True)  # off on AMX CPUs, where it was not measured
    torch.manual_seed(0)
    conv = StridedDepthwiseConv2d(16, 16, 3, 2, 1, groups=16, bias=False)
    x = torch.randn(2, 16, 14, 14)
    q, k, v = (torch.randn(2, 4, 9, 8) for _ in range(3))
    fp32_conv = F.conv2d(x, conv.weight, None, 2, 1, 1, 16).to(torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, att = conv(x), attention(q.bfloat16(), k.bfloat16(), v.bfloat16())
        with torch.no_grad():
            plain_conv = conv(x)
            plain_attn = attention(q.bfloat16(), k.bfloat16(), v.bfloat16())
    assert out.dtype == att.dtype == torch.bfloat16
    # fp32 arithmetic rounded once (q, k, v were bf16 already: round them the same way first)
    assert torch.equal(out, fp32_conv)
    assert torch.equal(att, F.scaled_dot_product_attention(q.bfloat16().float(), k.bfloat16().float(),
                                                           v.bfloat16().float()).to(torch.bfloat16))
    assert torch.equal(plain_conv, F.conv2d(x.bfloat16(), conv.weight.bfloat16(), None, 2, 1, 1, 16))
    assert torch.equal(plain_attn, F.scaled_dot_product_attention(q.bfloat16(), k.bfloat16(), v.bfloat16()))
    assert not torch.equal(plain_conv, fp32_conv)  # the two paths are told apart by this input
    out.float().sum().backward()
    assert conv.weight.grad is not None and conv.weight.grad.dtype == torch.float32
    assert torch.equal(conv(x), F.conv2d(x, conv.weight, None, 2, 1, 1, 16))  # no autocast: plain fp32
    low = torch.randn(2, 3, 5, 7).contiguous(memory_format=torch.channels_last)
    assert torch.equal(repeat_2d(low, 2), low.repeat_interleave(2, 2).repeat_interleave(2, 3))
    assert repeat_2d(low, 2).is_contiguous(memory_format=torch.channels_last)

"""The generic contract timm's own model tests hold every registered model to, written for ours
(HIRI-ViT-S at 224, the cheapest configuration), plus loading a trained stage's model.pt the timm way.
"""
import math

import pytest
import timm
import torch
from timm.models import group_parameters, load_checkpoint
from timm.utils.model_ema import ModelEmaV3

import pipeline.models  # noqa: F401  (registers the models)
from pipeline.models.blocks import PointwiseFC
from pipeline.models.flops import count_gflops
from pipeline.models.hiri_vit import StemStrideError, model_file

RES = 224


def small(**kwargs):
    return timm.create_model("hiri_vit_s", img_size=RES, **kwargs)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return small(num_classes=10).eval()


@pytest.fixture(scope="module")
def x():
    return torch.randn(2, 3, RES, RES, generator=torch.Generator().manual_seed(1))


def test_unknown_kwarg_raises_naming_it():
    with pytest.raises(TypeError, match="drop_path"):
        timm.create_model("hiri_vit_s", drop_path=0.3)  # a typo of drop_path_rate


def test_default_cfgs_per_resolution():
    names = timm.list_models("hiri_vit_s*", include_tags=True)
    assert {"hiri_vit_s.untrained_224", "hiri_vit_s.untrained_384", "hiri_vit_s.untrained_448",
            "hiri_vit_s.untrained_768"} <= set(names)
    default = timm.create_model("hiri_vit_s")
    assert default.pretrained_cfg["tag"] == "untrained_448" and default.img_size == 448
    tagged = timm.create_model("hiri_vit_s.untrained_224")
    assert tagged.img_size == 224 and tagged.pretrained_cfg["input_size"] == (3, 224, 224)
    state = tagged.state_dict()
    assert tagged.pretrained_cfg["classifier"] + ".weight" in state
    assert tagged.pretrained_cfg["first_conv"] + ".weight" in state


def test_pretrained_cfg_overlay_is_honoured():
    m = timm.create_model("hiri_vit_s", img_size=RES, pretrained_cfg_overlay=dict(crop_pct=1.0))
    assert m.pretrained_cfg["crop_pct"] == 1.0


def test_forward_backward_reaches_every_parameter(x):
    m = small(num_classes=42).train()
    out = m(x)
    out.mean().backward()
    assert out.shape == (2, 42) and not torch.isnan(out).any()
    missing = [n for n, p in m.named_parameters() if p.grad is None]
    assert not missing


def test_pooled_and_unpooled_heads(x):
    m = small(num_classes=10).eval()
    pool = m.pretrained_cfg["pool_size"]
    with torch.no_grad():
        assert m.forward_features(x).shape[-2:] == pool
        m.reset_classifier(0)
        assert m(x).shape == (2, m.num_features)
        m.reset_classifier(0, "")
        assert m(x).shape == (2, m.num_features, *pool)


def test_forward_intermediates_against_feature_info_and_forward_features(model, x):
    with torch.no_grad():
        final, maps = model.forward_intermediates(x)
        assert torch.equal(final, model.forward_features(x))
    info = model.feature_info
    assert [m.shape[1] for m in maps] == [f["num_chs"] for f in info]
    assert [RES // m.shape[-1] for m in maps] == [f["reduction"] for f in info]
    assert torch.equal(maps[-1], final)


def test_forward_intermediates_indices_as_timm(model, x):
    with torch.no_grad():
        _, every = model.forward_intermediates(x)
        last_two = model.forward_intermediates(x, indices=[-2, -1], intermediates_only=True)
        assert [torch.equal(a, b) for a, b in zip(last_two, every[3:])] == [True, True]
        assert [m.shape[1] for m in model.forward_intermediates(x, indices=2, intermediates_only=True)] == [320, 512]
        final, early = model.forward_intermediates(x, indices=[1], stop_early=True)
        assert torch.equal(final, early[0]) and torch.equal(early[0], every[1])
    for bad in [(5,), (-1, 4), (-6,), 0, 6]:
        with pytest.raises(ValueError, match="indices"):
            model.forward_intermediates(x, indices=bad)


def test_features_only_with_out_indices_and_fx_extraction(x):
    torch.manual_seed(0)
    getter = timm.create_model("hiri_vit_s", img_size=RES, features_only=True, out_indices=(1, 3)).eval()
    torch.manual_seed(0)  # the same initial weights, traced by torch.fx
    fx = timm.create_model("hiri_vit_s", img_size=RES, features_only=True, out_indices=(1, 3), feature_cls="fx")
    with torch.no_grad():
        a, b = getter(x), fx.eval()(x)
    assert getter.feature_info.channels() == [64, 320]
    assert [t.shape[1] for t in a] == [64, 320]
    assert all(torch.allclose(p, q, atol=1e-5) for p, q in zip(a, b))


@pytest.mark.slow
def test_torch_compile_fullgraph_matches_eager(model, x):
    compiled = torch.compile(model, fullgraph=True)
    with torch.no_grad():
        assert torch.allclose(compiled(x), model(x), atol=1e-4, rtol=1e-4)


def test_grad_checkpointing_gives_the_same_gradients(x):
    torch.manual_seed(0)
    plain = small(num_classes=10).train()
    ckpt = small(num_classes=10).train()
    ckpt.load_state_dict(plain.state_dict())
    ckpt.set_grad_checkpointing()
    for m in (plain, ckpt):
        m(x).square().mean().backward()
    for (n, p), q in zip(plain.named_parameters(), ckpt.parameters()):
        assert torch.allclose(p.grad, q.grad, atol=1e-6, rtol=1e-4), n


def test_group_matcher_orders_every_parameter_by_depth(model):
    groups = group_parameters(model, model.group_matcher())
    grouped = [n for names in groups.values() for n in names]
    assert sorted(grouped) == sorted(n for n, _ in model.named_parameters())
    order = list(groups)
    first_of = lambda prefix: next(i for i, g in enumerate(order) if any(n.startswith(prefix) for n in groups[g]))  # noqa: E731
    assert first_of("stem") < first_of("stages.0") < first_of("stages.4") < first_of("head")


def test_flop_count_restores_train_mode():
    m = small().train()
    count_gflops(m, RES)
    assert m.training and all(mod.training for mod in m.modules())


def test_fc_layers_share_one_init_rule():
    m = timm.create_model("hiri_vit_b", img_size=RES)
    fc = torch.cat([mod.weight.flatten() for mod in m.modules() if isinstance(mod, (torch.nn.Linear, PointwiseFC))])
    assert fc.std().item() == pytest.approx(0.02, rel=0.15)  # timm trunc-normal std 0.02 (cut at +-2, as PVTv2)
    conv = next(mod for mod in m.modules() if type(mod) is torch.nn.Conv2d and mod.kernel_size == (3, 3)
                and mod.groups == 1 and mod.out_channels >= 64)
    fan_out = 9 * conv.out_channels
    assert conv.weight.std().item() == pytest.approx(math.sqrt(2 / fan_out), rel=0.1)


# ---- the teacher's dense head (Section 4.5) -----------------------------------------------------


def test_dense_head_equals_the_pooled_head_on_a_constant_map(model):
    # every location equal to the pooled class token: removing the pooling changes nothing
    column = torch.randn(1, model.num_features, 1, 1)
    const = column.expand(1, model.num_features, 7, 7).contiguous()
    with torch.no_grad():
        pooled = model.forward_head(const)
        dense = model.dense_head(const)
    assert torch.allclose(dense, pooled[:, :, None, None].expand_as(dense), atol=1e-5)


def test_dense_head_with_avg_pool_averages_to_the_logits(x):
    m = small(num_classes=10, global_pool="avg").eval()
    with torch.no_grad():
        assert torch.allclose(m.forward_dense(x).mean(dim=(2, 3)), m(x), atol=1e-5)


# ---- the stem stride travels with the weights --------------------------------------------------


def test_state_dict_records_the_stem_stride_and_ema_copies_it():
    m = small()
    assert int(m.state_dict()["_extra_state"]) == 2
    ema = ModelEmaV3(m, decay=0.9)
    ema.update(m, step=2)
    assert int(ema.module.state_dict()["_extra_state"]) == 2


def test_weights_refuse_a_model_with_another_stem_stride():
    weights = small(num_classes=10).state_dict()
    with pytest.raises(StemStrideError, match="stem stride 2.*this model has stem stride 4"):
        timm.create_model("hiri_vit_s", img_size=448, num_classes=10).load_state_dict(weights)


def test_a_stage_model_file_loads_the_timm_way(tmp_path):
    torch.manual_seed(0)
    student, ema = small(num_classes=10), small(num_classes=10)
    path = tmp_path / "model.pt"
    torch.save(model_file(student, ema, "hiri_vit_s", 10, "train_hiri_s_224"), path)

    loaded = timm.create_model("hiri_vit_s", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
    assert (loaded.img_size, loaded.num_classes, loaded.stem_stride) == (224, 10, 2)
    assert torch.equal(loaded.head.weight, ema.head.weight)  # timm reads the EMA weights, as for its own files
    load_checkpoint(loaded, str(path), use_ema=False)
    assert torch.equal(loaded.head.weight, student.head.weight)

    with pytest.raises(StemStrideError, match="stem stride 2.*this model has stem stride 4"):
        timm.create_model("hiri_vit_s", img_size=448, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
    with pytest.raises(ValueError, match="holds hiri_vit_s weights"):
        timm.create_model("hiri_vit_b", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))

"""EMA distillation (Section 4.5) against hand-computed targets, and the teacher's isolation."""
import numpy as np
import pytest
import torch
from timm.data import Mixup
from torch import nn

from pipeline.train.ema_distill import EmaTeacher, distill_target, mask_on_map, teacher_target
from pipeline.train.mixing import MixInfo, RecordingMixup


def _maps():
    # B=2 images, K=2 classes, a 2x2 map; class-0 probability per location, class 1 = 1 - it.
    p0 = torch.tensor([[[1.0, 0.5], [0.5, 0.0]],     # image a (index 0)
                       [[0.0, 0.0], [0.0, 0.0]]])    # image b (index 1) = the flipped partner of a
    return torch.stack([p0, 1 - p0], dim=1)  # (2, 2, 2, 2)


def test_cutmix_target_by_hand():
    # 4x4 input, box = the top-left 2x2 pixels = the top-left map cell; timm pastes x_b in the box,
    # so M (1 = x_a) on the map is [[0, 1], [1, 1]] and lambda = 1 - 4/16 = 0.75.
    info = MixInfo("cutmix", 0.75, (0, 2, 0, 2))
    assert mask_on_map(info, (4, 4), (2, 2)).tolist() == [[0.0, 1.0], [1.0, 1.0]]
    y_hat = teacher_target(_maps(), info, (4, 4))
    # image 0: class-0 map [[P_b=0, .5], [.5, 0]] -> mean .25 ; image 1: [[P_a=1, 0], [0, 0]] -> .25
    assert torch.allclose(y_hat, torch.tensor([[0.25, 0.75], [0.25, 0.75]]))
    # labels 0 and 1, no smoothing: y~ = .75 y_a + .25 y_b
    y_tilde = torch.tensor([[0.75, 0.25], [0.25, 0.75]])
    y_bar = distill_target(y_tilde, y_hat, alpha=0.5)
    assert torch.allclose(y_bar, torch.tensor([[0.5, 0.5], [0.25, 0.75]]))


def test_cutmix_mask_is_area_resampled_when_box_cuts_cells():
    # box = the top pixel row of a 4x4 image: each top map cell (2x2 pixels) keeps x_a on 2 of 4.
    info = MixInfo("cutmix", 0.75, (0, 1, 0, 4))
    assert mask_on_map(info, (4, 4), (2, 2)).tolist() == [[0.5, 0.5], [1.0, 1.0]]
    y_hat = teacher_target(_maps(), info, (4, 4))
    # image 0, class 0: .5*1 + .5*0 ; .5*.5 + .5*0 ; .5 ; 0  -> (0.5 + 0.25 + 0.5 + 0) / 4
    assert y_hat[0, 0].item() == pytest.approx(1.25 / 4)


def test_mixup_target_by_hand():
    info = MixInfo("mixup", 0.3)
    y_hat = teacher_target(_maps(), info, (4, 4))
    # AvgPool(P_a) class 0: image 0 -> .5, image 1 -> 0 ; y^ = .3 P_a + .7 P_b
    assert torch.allclose(y_hat[:, 0], torch.tensor([0.3 * 0.5 + 0.7 * 0.0, 0.3 * 0.0 + 0.7 * 0.5]))
    y_tilde = torch.tensor([[0.3, 0.7], [0.7, 0.3]])
    y_bar = distill_target(y_tilde, y_hat, alpha=0.25)
    assert torch.allclose(y_bar[0], 0.25 * y_tilde[0] + 0.75 * torch.tensor([0.15, 0.85]))


def test_alpha_out_of_range_is_rejected():
    with pytest.raises(ValueError, match="alpha must be in"):
        distill_target(torch.zeros(1, 2), torch.zeros(1, 2), 1.5)


def test_recording_mixup_matches_timm_and_reports_its_box():
    x = torch.randn(4, 3, 32, 32)
    y = torch.tensor([0, 1, 2, 3])
    kw = dict(mixup_alpha=0.8, cutmix_alpha=1.0, prob=1.0, switch_prob=0.5, label_smoothing=0.1, num_classes=4)
    seen = set()
    for seed in range(12):
        np.random.seed(seed)
        ref_x, ref_t = Mixup(**kw)(x.clone(), y)
        np.random.seed(seed)
        got_x, got_t, info = RecordingMixup(**kw)(x.clone(), y)
        assert torch.equal(got_x, ref_x) and torch.allclose(got_t, ref_t)
        seen.add(info.kind)
        if info.kind == "cutmix":
            y0, y1, x0, x1 = info.box
            m = torch.ones(32, 32)
            m[y0:y1, x0:x1] = 0
            assert torch.allclose(got_x, m * x + (1 - m) * x.flip(0))  # M (.) x_a + (1 - M) (.) x_b
            assert info.lam == pytest.approx(m.mean().item())          # lambda = sum(M) / HW
        else:
            assert torch.allclose(got_x, info.lam * x + (1 - info.lam) * x.flip(0), atol=1e-6)
    assert seen == {"cutmix", "mixup"}


def test_recording_mixup_refuses_per_element_modes():
    with pytest.raises(ValueError, match="mode 'batch' only"):
        RecordingMixup(mode="elem", num_classes=4)


class _Dense(nn.Module):
    """Stand-in with the HIRI-ViT interface the teacher needs (forward / forward_dense)."""

    def __init__(self, k=3):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.BatchNorm2d(8), nn.ReLU())
        self.head = nn.Conv2d(8, k, 1)

    def forward_dense(self, x):
        return self.head(self.body(x))

    def forward(self, x):
        return self.forward_dense(x).mean((2, 3))


def test_teacher_gets_no_gradient_and_follows_the_ema():
    torch.manual_seed(0)
    student = _Dense()
    teacher = EmaTeacher(student, decay=0.9, warmup=False)
    x, y = torch.randn(4, 3, 8, 8), torch.tensor([0, 1, 2, 0])
    probs = teacher.prob_map(x)
    assert not probs.requires_grad
    xm, y_tilde, info = RecordingMixup(mixup_alpha=0.0, cutmix_alpha=1.0, num_classes=3)(x.clone(), y)
    target = distill_target(y_tilde, teacher_target(probs, info, (8, 8)), 0.5)
    assert not target.requires_grad
    loss = torch.sum(-target * student(xm).log_softmax(-1), dim=-1).mean()
    loss.backward()
    assert all(p.grad is not None for p in student.parameters())
    assert all(p.grad is None and not p.requires_grad for p in teacher.module.parameters())
    # one EMA step: teacher = 0.9 teacher + 0.1 student (step 1 copies the student, timm's rule)
    before = [p.clone() for p in teacher.module.parameters()]
    with torch.no_grad():
        for p in student.parameters():
            p.add_(1.0)
    teacher.update(student, step=5)
    for b, t, s in zip(before, teacher.module.parameters(), student.parameters()):
        assert torch.allclose(t, 0.9 * b + 0.1 * s, atol=1e-6)


def test_teacher_requires_forward_dense():
    with pytest.raises(TypeError, match="forward_dense"):
        EmaTeacher(nn.Linear(2, 2), decay=0.9, warmup=False)


def test_first_student_weight_follows_the_decays_timm_applies():
    from timm.utils.model_ema import ModelEmaV3

    from pipeline.train.ema_distill import first_student_weight

    for warmup in (False, True):
        ema = ModelEmaV3(nn.Linear(1, 1, bias=False), decay=0.99, use_warmup=warmup)
        with torch.no_grad():
            ema.module.weight.fill_(0.0)
        student = nn.Linear(1, 1, bias=False)
        for step in range(1, 40):  # the student is 1 at the first update, then 0: the teacher's weight on it
            with torch.no_grad():
                student.weight.fill_(1.0 if step == 1 else 0.0)
            ema.update(student, step=step)
            assert float(ema.module.weight) == pytest.approx(first_student_weight(0.99, warmup, step), abs=1e-6)


def test_alpha_ramp_trusts_the_teacher_as_its_start_fades():
    from pipeline.train.ema_distill import first_student_weight, ramped_alpha

    steps_per_epoch = 1251
    w10 = first_student_weight(0.99996, False, 10 * steps_per_epoch)
    assert w10 == pytest.approx(0.61, abs=0.01)  # the figure for epoch 10
    assert ramped_alpha(0.5, w10) == pytest.approx(0.80, abs=0.01)
    assert ramped_alpha(0.5, first_student_weight(0.99996, False, 300 * steps_per_epoch)) == pytest.approx(0.5, abs=1e-3)
    teacher = EmaTeacher(_Dense(), decay=0.99996, warmup=False, alpha=0.5, alpha_ramp=True)
    assert teacher.alpha_at(1) == 1.0 and teacher.alpha_at(10 * steps_per_epoch) == pytest.approx(0.80, abs=0.01)
    assert EmaTeacher(_Dense(), decay=0.99996, warmup=False, alpha=0.5).alpha_at(1) == 0.5

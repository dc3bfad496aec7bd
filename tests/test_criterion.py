import math

import pytest
import torch

from semidetr.modeling.criterion import SetCriterion
from semidetr.modeling.denoising import prepare_contrastive_denoising
from semidetr.modeling.matcher import HungarianMatcher


def _focal(logit, target, alpha=0.25, gamma=2.0):
    p = 1 / (1 + math.exp(-logit))
    ce = -(target * math.log(p) + (1 - target) * math.log(1 - p))
    p_t = p * target + (1 - p) * (1 - target)
    alpha_t = alpha * target + (1 - alpha) * (1 - target)
    return alpha_t * ce * (1 - p_t) ** gamma


def _criterion(**weights):
    return SetCriterion(2, HungarianMatcher(), class_weight=weights.get("c", 1.0), bbox_weight=weights.get("b", 5.0),
                        giou_weight=weights.get("g", 2.0))


def test_hand_computed_single_pair():
    criterion = _criterion(c=1.0, b=1.0, g=1.0)
    logits = torch.tensor([[[[0.5, -1.0]]]])  # (L=1, N=1, Q=1, K=2)
    pred = torch.tensor([[[[0.5, 0.5, 0.2, 0.2]]]])  # cxcywh: box [0.4, 0.6]^2
    target = {"labels": torch.tensor([0]), "boxes": torch.tensor([[0.55, 0.5, 0.2, 0.2]])}  # [0.45, 0.65] x [0.4, 0.6]
    losses = criterion({"pred_logits": logits, "pred_boxes": pred}, [target])
    assert losses["loss_class"].item() == pytest.approx(_focal(0.5, 1) + _focal(-1.0, 0), rel=1e-5)
    assert losses["loss_bbox"].item() == pytest.approx(0.05, rel=1e-4)
    iou = (0.15 * 0.2) / (0.04 + 0.04 - 0.15 * 0.2)
    enclosing = 0.25 * 0.2
    union = 0.04 + 0.04 - 0.03
    assert losses["loss_giou"].item() == pytest.approx(1 - (iou - (enclosing - union) / enclosing), rel=1e-4)
    assert losses["loss_class_aux"].item() == 0.0  # a single layer has no auxiliary layers


def test_weights_scale_the_losses():
    outputs = {"pred_logits": torch.randn(2, 1, 5, 2), "pred_boxes": torch.rand(2, 1, 5, 4) * 0.5 + 0.25}
    targets = [{"labels": torch.tensor([1, 0]), "boxes": torch.tensor([[0.3, 0.3, 0.1, 0.2], [0.6, 0.6, 0.2, 0.1]])}]
    plain = _criterion(c=1.0, b=1.0, g=1.0)(outputs, targets)
    weighted = _criterion(c=2.0, b=5.0, g=3.0)(outputs, targets)
    for name, factor in (("class", 2.0), ("bbox", 5.0), ("giou", 3.0)):
        for suffix in ("", "_aux"):
            key = f"loss_{name}{suffix}"
            assert weighted[key].item() == pytest.approx(factor * plain[key].item(), rel=1e-5)


def test_empty_targets_are_finite_and_only_classification():
    criterion = _criterion()
    logits = torch.randn(3, 2, 4, 2, requires_grad=True)
    boxes = (torch.rand(3, 2, 4, 4) * 0.5 + 0.25).requires_grad_()
    targets = [{"labels": torch.zeros(0, dtype=torch.long), "boxes": torch.zeros(0, 4)}] * 2
    losses = criterion({"pred_logits": logits, "pred_boxes": boxes}, targets)
    assert all(torch.isfinite(v) for v in losses.values())
    assert losses["loss_bbox"].item() == 0.0 and losses["loss_giou"].item() == 0.0
    expected_class = sum(_focal(x, 0) for x in logits[-1].flatten().tolist())  # normaliser clamps to 1
    assert losses["loss_class"].item() == pytest.approx(expected_class, rel=1e-4)
    sum(losses.values()).backward()
    assert boxes.grad is not None and torch.count_nonzero(boxes.grad) == 0  # in the graph, zero gradient


def test_class_agnostic_encoder_loss_uses_binary_targets():
    """One-channel encoder logits (Deformable DETR's proposals): a target of class 1 is "object", so the
    matched proposal's single logit has target 1 and every other proposal target 0."""
    criterion = _criterion(c=1.0, b=1.0, g=1.0)
    target_box = torch.tensor([0.5, 0.5, 0.2, 0.2])
    enc_boxes = torch.tensor([[0.1, 0.1, 0.05, 0.05], [0.9, 0.9, 0.05, 0.05], target_box.tolist(),
                              [0.2, 0.8, 0.05, 0.05], [0.8, 0.2, 0.05, 0.05], [0.1, 0.9, 0.05, 0.05]])[None]
    enc_logits = torch.tensor([0.3, -0.2, 0.1, -1.0, 0.5, 0.0])[None, :, None]
    outputs = {
        "pred_logits": torch.randn(1, 1, 3, 2), "pred_boxes": torch.rand(1, 1, 3, 4) * 0.5 + 0.25,
        "enc_logits": enc_logits, "enc_boxes": enc_boxes,
    }
    targets = [{"labels": torch.tensor([1]), "boxes": target_box[None]}]
    losses = criterion(outputs, targets)
    # The exact proposal (index 2) is matched: no box loss; the classification targets are binary.
    assert losses["loss_bbox_enc"].item() == pytest.approx(0.0, abs=1e-6)
    assert losses["loss_giou_enc"].item() == pytest.approx(0.0, abs=1e-5)
    expected = sum(_focal(logit, 1.0 if q == 2 else 0.0) for q, logit in enumerate(enc_logits.flatten().tolist()))
    assert losses["loss_class_enc"].item() == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("assignment", ["one_to_one", "one_to_many"])
def test_encoder_first_class_target_trains_only_the_first_logit(assignment):
    """ENC_CLASS_TARGET "first_class" (official): the encoder loss and matching see every target as class 0."""
    from semidetr.modeling.one_to_many import build_one_to_many_assigner

    torch.manual_seed(0)
    outputs = {
        "pred_logits": torch.randn(1, 1, 3, 2), "pred_boxes": torch.rand(1, 1, 3, 4) * 0.5 + 0.25,
        "enc_logits": torch.randn(1, 6, 2), "enc_boxes": torch.rand(1, 6, 4) * 0.5 + 0.25,
    }
    targets = [{"labels": torch.tensor([1, 1]), "boxes": torch.tensor([[0.5, 0.5, 0.2, 0.2], [0.3, 0.4, 0.2, 0.3]])}]
    as_class_0 = [{"labels": torch.tensor([0, 0]), "boxes": targets[0]["boxes"]}]

    def enc_losses(enc_class_target, target_list):
        criterion = SetCriterion(2, HungarianMatcher(), enc_class_target=enc_class_target,
                                 one_to_many_assigner=build_one_to_many_assigner("task_aligned", alpha=1.0, beta=6.0))
        losses = criterion(outputs, target_list, assignment=assignment)
        return {k: v for k, v in losses.items() if k.endswith("_enc")}

    official, own_class, relabelled = enc_losses("first_class", targets), enc_losses("class", targets), \
        enc_losses("class", as_class_0)
    for key in official:
        torch.testing.assert_close(official[key], relabelled[key])
    assert not torch.allclose(official["loss_class_enc"], own_class["loss_class_enc"])
    with pytest.raises(ValueError, match="ENC_CLASS_TARGET"):
        SetCriterion(2, HungarianMatcher(), enc_class_target="objectness")


def test_denoising_loss_targets_positive_queries_only():
    torch.manual_seed(0)
    criterion = _criterion(c=1.0, b=1.0, g=1.0)
    targets = [{"labels": torch.tensor([1, 0]), "boxes": torch.tensor([[0.3, 0.3, 0.1, 0.2], [0.6, 0.6, 0.2, 0.1]])},
               {"labels": torch.tensor([1]), "boxes": torch.tensor([[0.5, 0.5, 0.3, 0.3]])}]
    embedding = torch.nn.Embedding(2, 8)
    dn = prepare_contrastive_denoising(targets, dn_number=4, label_noise_ratio=0.0, box_noise_scale=0.0,
                                       num_classes=2, label_embedding=embedding)
    assert dn.num_groups == 2 and dn.max_targets == 2 and dn.pad_size == 8
    # Perfect reconstruction of every positive slot: box losses vanish.
    dn_boxes = torch.full((1, 2, 8, 4), 0.5)
    for group in range(2):
        base = group * 4
        dn_boxes[0, 0, base:base + 2] = targets[0]["boxes"]
        dn_boxes[0, 1, base] = targets[1]["boxes"][0]
    outputs = {"pred_logits": torch.randn(1, 2, 3, 2), "pred_boxes": torch.rand(1, 2, 3, 4) * 0.5 + 0.25,
               "dn_logits": torch.zeros(1, 2, 8, 2), "dn_boxes": dn_boxes}
    losses = criterion(outputs, targets, dn)
    assert losses["loss_bbox_dn"].item() == pytest.approx(0.0, abs=1e-6)
    assert losses["loss_giou_dn"].item() == pytest.approx(0.0, abs=1e-4)  # torchvision eps
    # Corrupt a negative slot: box losses unchanged (negatives are not regressed).
    dn_boxes[0, 0, 2] = 0.9
    losses_neg = criterion({**outputs, "dn_boxes": dn_boxes}, targets, dn)
    assert losses_neg["loss_bbox_dn"].item() == pytest.approx(0.0, abs=1e-6)
    # Corrupt a positive slot of group 1: now it counts, normalised by targets (3) x groups (2).
    dn_boxes[0, 1, 4] = torch.tensor([0.5, 0.5, 0.3, 0.4])
    losses_pos = criterion({**outputs, "dn_boxes": dn_boxes}, targets, dn)
    assert losses_pos["loss_bbox_dn"].item() == pytest.approx(0.1 / 6, rel=1e-4)


def test_denoising_without_denoised_targets_is_zero_but_in_graph():
    criterion = _criterion()
    dn_logits = torch.randn(2, 1, 4, 2, requires_grad=True)
    outputs = {"pred_logits": torch.randn(2, 1, 3, 2), "pred_boxes": torch.rand(2, 1, 3, 4) * 0.5 + 0.25,
               "dn_logits": dn_logits, "dn_boxes": torch.rand(2, 1, 4, 4)}
    targets = [{"labels": torch.tensor([1]), "boxes": torch.tensor([[0.5, 0.5, 0.2, 0.2]])}]
    empty = [{"labels": torch.zeros(0, dtype=torch.long), "boxes": torch.zeros(0, 4)}]
    losses = criterion(outputs, targets, None, dn_targets=empty)
    assert losses["loss_class_dn"].item() == 0.0
    losses["loss_class_dn"].backward()
    assert dn_logits.grad is not None


@pytest.mark.parametrize("assignment", ["one_to_one", "one_to_many"])
def test_zero_image_weight_removes_an_image_without_targets(assignment):
    """SEMI.IMAGES_WITHOUT_PSEUDO_LABELS "ignore": an image with no targets and weight 0 adds nothing to any
    term (decoder, encoder, denoising), so the losses equal those of the batch without it; weight 1 trains
    its queries as background (the official behaviour), which changes the classification terms."""
    from semidetr.modeling.one_to_many import TaskAlignedOneToManyAssigner

    torch.manual_seed(0)
    criterion = SetCriterion(2, HungarianMatcher(), one_to_many_assigner=TaskAlignedOneToManyAssigner(topk=2))
    targets = [{"labels": torch.tensor([1, 0]), "boxes": torch.tensor([[0.3, 0.3, 0.1, 0.2], [0.6, 0.6, 0.2, 0.1]])},
               {"labels": torch.zeros(0, dtype=torch.long), "boxes": torch.zeros(0, 4)}]
    dn = prepare_contrastive_denoising(targets, dn_number=4, label_noise_ratio=0.0, box_noise_scale=0.1,
                                       num_classes=2, label_embedding=torch.nn.Embedding(2, 8))
    outputs = {"pred_logits": torch.randn(3, 2, 6, 2), "pred_boxes": torch.rand(3, 2, 6, 4) * 0.5 + 0.25,
               "enc_logits": torch.randn(2, 6, 2), "enc_boxes": torch.rand(2, 6, 4) * 0.5 + 0.25,
               "dn_logits": torch.randn(3, 2, dn.pad_size, 2), "dn_boxes": torch.rand(3, 2, dn.pad_size, 4)}
    first = {name: value[:, :1] if name in ("pred_logits", "pred_boxes", "dn_logits", "dn_boxes") else value[:1]
             for name, value in outputs.items()}
    alone = criterion(first, targets[:1], dn, assignment=assignment)
    ignored = criterion(outputs, targets, dn, assignment=assignment, image_weights=torch.tensor([1.0, 0.0]))
    background = criterion(outputs, targets, dn, assignment=assignment, image_weights=torch.tensor([1.0, 1.0]))
    default = criterion(outputs, targets, dn, assignment=assignment)
    assert set(ignored) == set(alone)
    for name in alone:
        torch.testing.assert_close(ignored[name], alone[name], msg=name)
        torch.testing.assert_close(background[name], default[name], msg=name)
    for name in ("loss_class", "loss_class_aux", "loss_class_enc", "loss_class_dn"):
        assert background[name] > ignored[name], name
    for name in ("loss_bbox", "loss_giou", "loss_bbox_enc", "loss_bbox_dn"):
        torch.testing.assert_close(background[name], ignored[name], msg=name)

import pytest
import torch

from semidetr.modeling.box_ops import inverse_sigmoid
from semidetr.modeling.denoising import (
    build_self_attention_mask,
    denoising_positive_indices,
    prepare_contrastive_denoising,
)


def _targets(counts):
    return [{"labels": torch.randint(0, 3, (n,)), "boxes": torch.rand(n, 4) * 0.4 + 0.3} for n in counts]


def test_shapes_and_slot_layout():
    targets = _targets([2, 0, 3])
    embedding = torch.nn.Embedding(3, 16)
    dn = prepare_contrastive_denoising(targets, dn_number=10, label_noise_ratio=0.0, box_noise_scale=0.0,
                                       num_classes=3, label_embedding=embedding)
    assert dn.max_targets == 3 and dn.num_groups == 3 and dn.pad_size == 18
    assert dn.content.shape == (3, 18, 16) and dn.reference.shape == (3, 18, 4)
    # Without noise, group g's positive and negative slots hold the targets themselves.
    for group in range(3):
        for polarity in range(2):
            start = (2 * group + polarity) * 3
            torch.testing.assert_close(dn.reference[0, start:start + 2], inverse_sigmoid(targets[0]["boxes"]))
            torch.testing.assert_close(dn.content[2, start:start + 3], embedding(targets[2]["labels"]))
            assert torch.count_nonzero(dn.content[0, start + 2]) == 0  # padded slot of the 2-target image
    assert torch.count_nonzero(dn.content[1]) == 0  # image without targets: all padding


def test_no_targets_means_no_denoising():
    assert prepare_contrastive_denoising(_targets([0, 0]), dn_number=100, label_noise_ratio=0.5, box_noise_scale=1.0,
                                         num_classes=3, label_embedding=torch.nn.Embedding(3, 8)) is None


def test_box_noise_positive_inside_negative_outside():
    torch.manual_seed(1)
    boxes = torch.tensor([[0.5, 0.5, 0.2, 0.2]])
    targets = [{"labels": torch.tensor([0]), "boxes": boxes}]
    dn = prepare_contrastive_denoising(targets, dn_number=200, label_noise_ratio=0.0, box_noise_scale=0.4,
                                       num_classes=3, label_embedding=torch.nn.Embedding(3, 8))
    noised = dn.reference[0].sigmoid()
    corners = torch.cat([noised[:, :2] - noised[:, 2:] / 2, noised[:, :2] + noised[:, 2:] / 2], 1)
    original = torch.tensor([0.4, 0.4, 0.6, 0.6])
    shift = (corners - original).abs().max(1).values  # noise is at most lambda * w/2 = 0.04 for positives
    positives, negatives = shift[0::2], shift[1::2]
    assert positives.max() <= 0.04 + 1e-5
    assert negatives.min() >= 0.04 - 1e-5 and negatives.max() <= 0.08 + 1e-5


def test_label_noise_flips_about_the_expected_fraction():
    torch.manual_seed(0)
    targets = [{"labels": torch.zeros(50, dtype=torch.long), "boxes": torch.rand(50, 4) * 0.4 + 0.3}]
    embedding = torch.nn.Embedding(10, 4)
    dn = prepare_contrastive_denoising(targets, dn_number=1000, label_noise_ratio=0.5, box_noise_scale=0.0,
                                       num_classes=10, label_embedding=embedding)
    unchanged = torch.isclose(dn.content[0], embedding.weight[0]).all(-1).float().mean().item()
    # flipped with probability 0.25 to a uniform class (1 in 10 stays 0): unchanged ~ 0.775
    assert unchanged == pytest.approx(0.775, abs=0.05)


def test_attention_mask_semantics():
    groups, max_targets, queries, cross = 2, 2, 3, 2
    mask = build_self_attention_mask(groups, max_targets, queries, cross, "cpu")
    pad = 2 * max_targets * groups
    total = pad + queries + cross
    assert mask.shape == (total, total)
    dn_group = [0] * 4 + [1] * 4
    for i in range(total):
        for j in range(total):
            i_dn, j_dn = i < pad, j < pad
            j_match = pad <= j < pad + queries
            j_cross = j >= pad + queries
            if j_match:
                expected = False  # everybody sees the matching queries
            elif j_dn:
                expected = not (i_dn and dn_group[i] == dn_group[j])  # only own group
            else:
                assert j_cross
                expected = i != j  # a cross-view query is seen only by itself
            assert bool(mask[i, j]) == expected, (i, j)


def test_no_mask_needed_for_matching_queries_only():
    assert build_self_attention_mask(0, 0, 5, 0, "cpu") is None


def test_positive_indices():
    targets = _targets([2, 1])
    dn = prepare_contrastive_denoising(targets, dn_number=4, label_noise_ratio=0.0, box_noise_scale=0.0,
                                       num_classes=3, label_embedding=torch.nn.Embedding(3, 8))
    image, query, target = denoising_positive_indices(targets, dn)
    pairs = sorted(zip(image.tolist(), query.tolist(), target.tolist()))
    # 2 groups of 2 * max_targets(2) slots: positives at 0,1 and 4,5
    assert pairs == sorted([(0, 0, 0), (0, 1, 1), (1, 0, 2), (0, 4, 0), (0, 5, 1), (1, 4, 2)])

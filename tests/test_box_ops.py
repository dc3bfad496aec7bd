import torch
from torchvision.ops import box_iou, generalized_box_iou

from semidetr.modeling.box_ops import batched_box_iou, batched_generalized_box_iou, inverse_sigmoid


def _random_boxes(*shape):
    xy = torch.rand(*shape, 2) * 50
    wh = torch.rand(*shape, 2) * 40 + 1
    return torch.cat([xy, xy + wh], -1)


def test_batched_iou_equals_torchvision_per_image():
    a, b = _random_boxes(3, 7), _random_boxes(3, 5)
    iou = batched_box_iou(a, b)
    giou = batched_generalized_box_iou(a, b)
    assert iou.shape == giou.shape == (3, 7, 5)
    for i in range(3):
        torch.testing.assert_close(iou[i], box_iou(a[i], b[i]))
        torch.testing.assert_close(giou[i], generalized_box_iou(a[i], b[i]))


def test_hand_computed_iou_and_giou():
    a = torch.tensor([[0.0, 0.0, 2.0, 2.0]])
    b = torch.tensor([[1.0, 1.0, 3.0, 3.0], [4.0, 0.0, 6.0, 2.0]])
    torch.testing.assert_close(batched_box_iou(a, b), torch.tensor([[1 / 7, 0.0]]))
    # enclosing boxes: 3x3 = 9 (union 7) and 6x2 = 12 (union 8)
    torch.testing.assert_close(batched_generalized_box_iou(a, b), torch.tensor([[1 / 7 - 2 / 9, 0.0 - 4 / 12]]))


def test_degenerate_boxes_give_finite_values():
    point = torch.tensor([[1.0, 1.0, 1.0, 1.0]])
    assert torch.isfinite(batched_generalized_box_iou(point, point)).all()
    assert batched_box_iou(point, point).item() == 0.0


def test_inverse_sigmoid_is_finite_at_the_borders():
    x = torch.tensor([0.0, 0.25, 1.0])
    y = inverse_sigmoid(x)
    assert torch.isfinite(y).all()
    torch.testing.assert_close(y[1].sigmoid(), torch.tensor(0.25))

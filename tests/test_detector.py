import pytest
import torch
from detectron2.modeling import build_model

from helpers import synthetic_input, tiny_detector_cfg
from semidetr.modeling.denoising import prepare_contrastive_denoising


@pytest.mark.parametrize("arch", ["DINO", "DeformableDETR"])
def test_training_lowers_the_loss(arch):
    torch.manual_seed(0)
    model = build_model(tiny_detector_cfg(arch))
    batch = [synthetic_input(128, 160, 3, seed=1), synthetic_input(144, 128, 1, seed=2)]
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-4)
    totals = []
    for _ in range(20):
        losses = model(batch)
        total = sum(losses.values())
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
        totals.append(total.item())
    assert all(torch.isfinite(torch.tensor(totals)))
    assert sum(totals[-5:]) / 5 < 0.8 * sum(totals[:5]) / 5
    if arch == "DINO":
        assert losses["loss_class_dn"] > 0
    else:
        assert "loss_class_dn" not in losses and losses["loss_class_enc"] > 0


def test_predict_frames():
    model = build_model(tiny_detector_cfg()).eval()
    x = synthetic_input(128, 192, 2)
    x["height"], x["width"] = 256, 384  # the original image was twice the input size
    with torch.no_grad():
        in_frame = model.predict([x])[0]
        original = model([x])[0]["instances"]
    assert in_frame.image_size == (128, 192) and original.image_size == (256, 384)
    assert len(in_frame) == 30
    boxes = in_frame.pred_boxes.tensor
    assert (boxes[:, 0] >= -1e-3).all() and (boxes[:, 2] <= 192 + 1e-3).all()
    # detector_postprocess rescales (and drops empty boxes): every kept box is twice an input-frame box
    scaled = boxes * 2
    for box in original.pred_boxes.tensor[:5]:
        assert torch.isclose(scaled, box.clamp(min=0), atol=1e-2).all(1).any()


def test_images_with_fewer_positions_than_queries_give_finite_losses():
    cfg = tiny_detector_cfg()
    cfg.MODEL.DETR.NUM_QUERIES = 200
    model = build_model(cfg)
    losses = model([synthetic_input(64, 64, 2)])  # 8x8 + 4x4 + 2x2 + 1x1 = 85 positions
    assert all(torch.isfinite(v) for v in losses.values())


def test_batch_without_targets_is_finite_and_uses_every_parameter():
    model = build_model(tiny_detector_cfg())
    losses = model([synthetic_input(96, 96, 0), synthetic_input(96, 128, 0)])
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    unused = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert unused == []


def test_extra_queries_do_not_change_matching_predictions():
    torch.manual_seed(0)
    model = build_model(tiny_detector_cfg()).eval()  # eval: no dropout
    batch = [synthetic_input(128, 128, 3), synthetic_input(128, 160, 2, seed=3)]
    images = model.preprocess_image(batch)
    targets = model.prepare_targets(batch, images)
    with torch.no_grad():
        encoded = model.encode_images(images)
        alone, _ = model.decode_queries(encoded)
        dn = prepare_contrastive_denoising(targets, dn_number=10, label_noise_ratio=0.5, box_noise_scale=1.0,
                                           num_classes=3, label_embedding=model.label_embedding)
        cross = torch.randn(2, 4, 64)
        cross_ref = torch.randn(2, 4, 4)
        together, cross_hidden = model.decode_queries(encoded, dn, cross, cross_ref)
        # Each cross-view query only sees the matching queries and itself: decoding one alone gives the
        # same features as decoding it with the others.
        _, first_alone = model.decode_queries(encoded, None, cross[:, :1], cross_ref[:, :1])
    torch.testing.assert_close(together["pred_logits"], alone["pred_logits"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(together["pred_boxes"], alone["pred_boxes"], atol=1e-5, rtol=1e-5)
    assert cross_hidden.shape == (2, 2, 4, 64)
    torch.testing.assert_close(first_alone[:, :, 0], cross_hidden[:, :, 0], atol=1e-5, rtol=1e-5)


def test_num_classes_from_dataset_metadata():
    from detectron2.data import MetadataCatalog

    cfg = tiny_detector_cfg()
    cfg.MODEL.DETR.NUM_CLASSES = 0
    MetadataCatalog.get("__test_five_classes").thing_classes = list("abcde")
    cfg.DATASETS.TRAIN = ("__test_five_classes",)
    model = build_model(cfg)
    assert model.transformer.class_embed[0].out_features == 5
    assert model.label_embedding.num_embeddings == 5


def test_official_loss_profile_doubles_l1_and_class_weights_and_sets_its_denoising_and_encoder_rules():
    """LOSS_PROFILE "official" vs "dino": same costs, so the same matching; class x2, L1 x2, GIoU x1."""
    batch = [synthetic_input(128, 160, 3, seed=1), synthetic_input(144, 128, 1, seed=2)]
    losses, models = {}, {}
    for profile in ("dino", "official"):
        cfg = tiny_detector_cfg()
        cfg.MODEL.DETR.LOSS_PROFILE = profile
        torch.manual_seed(0)
        models[profile] = model = build_model(cfg)
        torch.manual_seed(1)
        losses[profile] = model(batch)
    official, dino = losses["official"], losses["dino"]
    for key, ratio in (("loss_class", 2.0), ("loss_bbox", 2.0), ("loss_giou", 1.0),
                       ("loss_class_aux", 2.0), ("loss_bbox_aux", 2.0), ("loss_giou_aux", 1.0)):
        torch.testing.assert_close(official[key], ratio * dino[key], msg=key)
    assert models["official"].dn_box_noise_scale == 0.4 and models["dino"].dn_box_noise_scale == 1.0
    assert models["official"].criterion.enc_class_target == "first_class"
    assert models["dino"].criterion.enc_class_target == "class"
    matcher = models["official"].criterion.matcher
    assert (matcher.cost_class, matcher.cost_bbox, matcher.cost_giou) == (2.0, 5.0, 2.0)


def test_loss_profile_with_a_changed_key_is_an_error():
    cfg = tiny_detector_cfg()
    cfg.MODEL.DETR.LOSS_PROFILE = "official"
    cfg.MODEL.DETR.BBOX_WEIGHT = 7.0
    with pytest.raises(ValueError, match="BBOX_WEIGHT"):
        build_model(cfg)
    cfg.MODEL.DETR.LOSS_PROFILE = "mmdet"
    with pytest.raises(ValueError, match="LOSS_PROFILE"):
        build_model(cfg)
    cfg.MODEL.DETR.LOSS_PROFILE = ""  # the keys themselves
    assert build_model(cfg).criterion.weights["bbox"] == 7.0

import torch
from torch import nn

from semidetr.modeling.box_ops import inverse_sigmoid
from semidetr.modeling.transformer import DeformableTransformer


def _tiny_transformer(**kwargs):
    torch.manual_seed(0)
    model = DeformableTransformer(num_classes=3, d_model=32, nhead=4, num_encoder_layers=1, num_decoder_layers=2,
                                  dim_feedforward=64, num_feature_levels=2, num_queries=10, **kwargs)
    # Trained-looking heads and norm: at init the box head is the identity update and the final norm is close
    # to the identity (the layer output is already layer-normed), which would hide what feeds what.
    with torch.no_grad():
        for head in model.bbox_embed:
            nn.init.normal_(head.layers[-1].weight, std=0.5)
        nn.init.normal_(model.decoder_norm.weight)
        nn.init.normal_(model.decoder_norm.bias)
    srcs = [torch.randn(1, 32, 8, 8), torch.randn(1, 32, 4, 4)]
    masks = [torch.zeros(1, 8, 8, dtype=torch.bool), torch.zeros(1, 4, 4, dtype=torch.bool)]
    encoded = model.encode(srcs, masks, [torch.zeros_like(src) for src in srcs])
    return model, encoded


def _decode_recording_layer_io(model, encoded):
    """Decode the selected queries; return the decoder output and each layer's (input box, un-normed output)."""
    selection = model.select_queries(encoded)
    records = []
    hooks = [layer.register_forward_hook(lambda module, args, out: records.append((args[2][:, :, 0].clone(), out)))
             for layer in model.decoder_layers]
    decoded = model.decode(encoded, selection.content, selection.reference)
    for hook in hooks:
        hook.remove()
    return selection, decoded, records


def test_box_refinement_uses_the_output_before_the_final_norm():
    model, encoded = _tiny_transformer()
    selection, decoded, records = _decode_recording_layer_io(model, encoded)
    head = model.bbox_embed[0]
    (box0, out0), (box1, out1) = records
    assert torch.allclose(box0, selection.reference.sigmoid())
    # The reference box of layer 2 comes from layer 1's output *before* decoder_norm (DINO, detrex, official) ...
    expected_box1 = (head(out0) + inverse_sigmoid(box0)).sigmoid()
    assert torch.allclose(box1, expected_box1, atol=1e-6)
    normed_box1 = (head(model.decoder_norm(out0)) + inverse_sigmoid(box0)).sigmoid()
    assert (box1 - normed_box1).abs().max() > 1e-2  # the test can tell the two apart
    # ... while the predictions (what the loss and inference see) come from the normed output.
    assert torch.allclose(decoded.boxes[0], (head(model.decoder_norm(out0)) + inverse_sigmoid(box0)).sigmoid(),
                          atol=1e-6)
    assert torch.allclose(decoded.boxes[1], (head(model.decoder_norm(out1)) + inverse_sigmoid(box1)).sigmoid(),
                          atol=1e-6)
    assert torch.allclose(decoded.hidden[1], model.decoder_norm(out1))



def test_look_forward_twice_sends_the_next_layer_loss_to_the_previous_box_head():
    """With one box head per layer, layer 2's box reaches layer 1's head only through the undetached box b'_1."""
    for look_forward_twice in (True, False):
        model, encoded = _tiny_transformer(look_forward_twice=look_forward_twice, share_pred_heads=False)
        _, decoded, _ = _decode_recording_layer_io(model, encoded)
        decoded.boxes[1].sum().backward()
        first_head_grad = sum(p.grad.abs().sum() for p in model.bbox_embed[0].parameters())
        assert (first_head_grad > 0) == look_forward_twice

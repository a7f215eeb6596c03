"""Name maps proposed from two Slot tables; readable transfer errors; "did you mean" for spec names."""

from __future__ import annotations

import pytest

from crossattn.errors import CrossattnError, SpecError, TransferError
from crossattn.name_mapping import propose_name_map
from crossattn.spec import resolve_spec
from weight_transfer.problems import summarise
from weight_transfer.slots import Slot, join

# a small classifier's layers in torch naming: (layer, kind, tensors)
LAYERS = [
    ("conv1", "conv", {"weight": (8, 3, 3, 3)}),
    ("bn1", "batchnorm", {"weight": (8,), "bias": (8,), "running_mean": (8,), "running_var": (8,),
                          "num_batches_tracked": ()}),
    ("layer1.0.conv", "conv", {"weight": (8, 8, 3, 3)}),
    ("layer1.0.bn", "batchnorm", {"weight": (8,), "bias": (8,), "running_mean": (8,), "running_var": (8,),
                                  "num_batches_tracked": ()}),
    ("layer1.1.conv", "conv", {"weight": (8, 8, 3, 3)}),
    ("layer1.1.bn", "batchnorm", {"weight": (8,), "bias": (8,), "running_mean": (8,), "running_var": (8,),
                                  "num_batches_tracked": ()}),
    ("norm", "layernorm", {"weight": (8, 1, 1), "bias": (8, 1, 1)}),
    ("fc", "linear", {"weight": (10, 8), "bias": (10,)}),
]
PADDLE_NAMES = {"running_mean": "_mean", "running_var": "_variance"}


def torch_slots(rename=lambda layer: layer, layers=LAYERS) -> dict[str, Slot]:
    table = {}
    for layer, kind, tensors in layers:
        layer = rename(layer)
        for name, shape in tensors.items():
            table[join(layer, name)] = Slot(join(layer, name), layer, name, kind, shape, "float32", True)
    return table


def paddle_slots(rename=lambda layer: layer, layers=LAYERS) -> dict[str, Slot]:
    table = {}
    for layer, kind, tensors in layers:
        layer = rename(layer)
        for name, shape in tensors.items():
            if name == "num_batches_tracked":
                continue
            if kind == "linear" and name == "weight":
                shape = shape[::-1]
            if kind == "layernorm":
                shape = (shape[0],)
            name = PADDLE_NAMES.get(name, name)
            table[join(layer, name)] = Slot(join(layer, name), layer, name, kind, shape, "float32", True)
    return table


def mapped(layer: str, mapping: dict[str, str]) -> str:
    """Longest-prefix renaming with the empty prefix and empty targets, as the transfer applies it."""
    for prefix in sorted(mapping, key=len, reverse=True):
        if prefix == "" or layer == prefix or layer.startswith(prefix + "."):
            rest = layer[len(prefix):].lstrip(".") if prefix else layer
            return ".".join(p for p in (mapping[prefix], rest) if p)
    return layer


def assert_maps_every_layer(proposal, torch_table, paddle_table):
    torch_layers = {s.layer for s in torch_table.values()}
    paddle_layers = {s.layer for s in paddle_table.values()}
    assert {mapped(t, proposal.mapping) for t in torch_layers} == paddle_layers


def test_names_that_agree_need_no_map():
    proposal = propose_name_map(torch_slots(), paddle_slots())
    assert proposal.mapping == {} and not proposal.ambiguous
    assert "already agree" in proposal.notes[0]


def test_a_container_holding_one_list_keeps_its_own_name():
    """`blocks.layers.0.conv` ... in both (a TransformerEncoder's LayerList): `blocks` is paddle's `blocks`, not
    the deepest common prefix `blocks.layers` of its layers; that entry renamed diff's block output wrongly and
    forced an identity entry for every layer below it."""
    nested = [(layer.replace("layer1", "blocks.layers"), kind, tensors) for layer, kind, tensors in LAYERS]
    proposal = propose_name_map(torch_slots(layers=nested), paddle_slots(layers=nested))
    assert proposal.mapping == {} and "already agree" in proposal.notes[0]


def test_a_wrapper_prefix_on_the_paddle_side_is_the_empty_prefix():
    paddle = paddle_slots(lambda layer: "backbone." + layer)
    proposal = propose_name_map(torch_slots(), paddle)
    assert proposal.mapping == {"": "backbone"}
    assert any("`backbone.` added on the paddle side" in n for n in proposal.notes)
    assert_maps_every_layer(proposal, torch_slots(), paddle)


def test_a_wrapper_prefix_on_the_torch_side_maps_to_the_empty_prefix():
    torch = torch_slots(lambda layer: "module.model." + layer)
    proposal = propose_name_map(torch, paddle_slots())
    assert proposal.mapping == {"module.model": ""}
    assert_maps_every_layer(proposal, torch, paddle_slots())


def test_a_wrapper_with_a_renamed_head_gets_one_more_entry():
    paddle = paddle_slots(lambda layer: "head.classifier" if layer == "fc" else "backbone." + layer)
    proposal = propose_name_map(torch_slots(), paddle)
    assert proposal.mapping == {"": "backbone", "fc": "head.classifier"}
    assert_maps_every_layer(proposal, torch_slots(), paddle)


def test_renamed_layers_are_matched_by_structure_in_module_order():
    names = {"conv1": "stem.conv", "bn1": "stem.bn", "layer1.0.conv": "blocks.a.c", "layer1.0.bn": "blocks.a.n",
             "layer1.1.conv": "blocks.b.c", "layer1.1.bn": "blocks.b.n", "norm": "ln", "fc": "out"}
    paddle = paddle_slots(names.get)
    proposal = propose_name_map(torch_slots(), paddle)
    assert_maps_every_layer(proposal, torch_slots(), paddle)
    assert mapped("layer1.0.conv", proposal.mapping) == "blocks.a.c"  # order decides equal shapes
    assert mapped("layer1.1.conv", proposal.mapping) == "blocks.b.c"
    assert any("matched by structure" in n and "same order" in n for n in proposal.notes)


def test_a_subtree_renamed_alike_is_one_entry():
    paddle = paddle_slots(lambda layer: layer.replace("layer1", "stage1"))
    proposal = propose_name_map(torch_slots(), paddle)
    assert proposal.mapping == {"layer1": "stage1"}


def test_layers_that_cannot_be_paired_one_to_one_are_reported_not_guessed():
    extra = LAYERS + [("extra", "conv", {"weight": (8, 8, 3, 3)})]
    paddle = paddle_slots(lambda layer: {"layer1.0.conv": "a", "layer1.1.conv": "b"}.get(layer, layer))
    with pytest.raises(CrossattnError) as info:
        propose_name_map(torch_slots(layers=extra), paddle)
    message = str(info.value)
    assert "3 torch layer(s)" in message and "2 paddle layer(s)" in message and "`extra`" in message
    proposal = propose_name_map(torch_slots(layers=extra), paddle, strict=False)
    assert proposal.ambiguous and "crossattn map" in message


def test_a_shape_difference_is_not_matched_away():
    layers = [(n, k, dict(t)) for n, k, t in LAYERS]
    layers[-1] = ("fc", "linear", {"weight": (12, 8), "bias": (12,)})  # another head size
    paddle = paddle_slots(lambda layer: "head" if layer == "fc" else layer)
    with pytest.raises(CrossattnError, match="`fc`"):
        propose_name_map(torch_slots(layers=layers), paddle)


def test_a_wrapper_transfer_error_names_the_prefix_and_the_fix():
    wanted = [f"missing `{k}` (for paddle `{k}`, shape [8])" for k in ("conv1.weight", "bn1.weight", "fc.bias",
                                                                        "fc.weight")]
    extra = [f"unexpected `backbone.{k}` (shape [8]): no paddle tensor takes it"
             for k in ("conv1.weight", "bn1.weight", "fc.bias", "fc.weight", "bn1.num_batches_tracked")]
    message = str(TransferError(wanted + extra, "converting a.pt"))
    assert "9 problem(s): 4 missing, 5 unexpected" in message
    assert "and 1 more missing" in message and "and 2 more unexpected" in message  # the first few only
    assert "prefix `backbone.`" in message and "--name-map auto" in message and "crossattn map" in message
    assert "--strip-prefix backbone." in message
    assert "num_batches_tracked` counter" not in message  # explained by the prefix


def test_transposed_and_fused_weights_are_named_as_causes():
    message = summarise(["mis-shaped `fc.weight`: torch shape [5, 7], paddle `fc.weight` expects [7, 5]",
                         "mis-shaped `attn.in_proj_weight`: torch shape [24, 8], paddle `attn.q` expects [8, 8]"])
    assert "transposed" in message and "Linear" in message
    assert "fused layer" in message and "in_proj_weight" in message


def test_other_naming_of_batchnorm_statistics_is_named():
    message = summarise(["missing `bn._mean` (for paddle `bn._mean`, shape [4])",
                         "unexpected `bn.running_mean` (shape [4]): no paddle tensor takes it"])
    assert "torch naming read as paddle's" in message


def test_a_long_problem_list_stays_short():
    problems = [f"missing `layer{i}.weight` (for paddle `layer{i}.weight`, shape [64])" for i in range(600)]
    problems += [f"unexpected `net.layer{i}.weight` (shape [64]): no paddle tensor takes it" for i in range(600)]
    message = summarise(problems)
    assert len(message) < 2000 and "1200 problem(s)" in message and "prefix `net.`" in message


def test_a_misspelt_spec_name_suggests_the_closest():
    with pytest.raises(SpecError) as info:
        resolve_spec("se_resnet5")
    message = str(info.value)
    assert "did you mean `se_resnet50`" in message and "mnist_non_local" not in message


def test_a_factory_given_as_spec_points_at_the_model_options():
    with pytest.raises(SpecError, match="--torch-model MODULE:FACTORY"):
        resolve_spec("mypkg.nets:resnet50")


def test_a_layer_whose_tensors_have_no_twin_needs_no_entry():
    """torch's InstanceNorm without affine but tracking statistics: paddle has nothing to pair it with."""
    layers = LAYERS + [("inorm", "instancenorm", {"running_mean": (8,), "running_var": (8,),
                                                  "num_batches_tracked": ()})]
    paddle = paddle_slots(lambda layer: "net." + layer)  # the torch-only layer is absent on the paddle side
    paddle = {k: s for k, s in paddle.items() if s.layer != "net.inorm"}
    proposal = propose_name_map(torch_slots(layers=layers), paddle)
    assert proposal.mapping == {"": "net"} and not proposal.ambiguous


def test_models_without_state_need_no_map():
    proposal = propose_name_map({}, {})
    assert proposal.mapping == {} and "nothing to map" in proposal.notes[0]


def test_a_fused_qkv_projection_is_named_as_such():
    """timm-style attention: one Linear `qkv` [3E, E] in torch, three Linear layers in paddle."""
    torch_layers = [("attn.qkv", "linear", {"weight": (24, 8), "bias": (24,)}),
                    ("attn.proj", "linear", {"weight": (8, 8), "bias": (8,)})]
    paddle_layers = [("attn.q", "linear", {"weight": (8, 8), "bias": (8,)}),
                     ("attn.k", "linear", {"weight": (8, 8), "bias": (8,)}),
                     ("attn.v", "linear", {"weight": (8, 8), "bias": (8,)}),
                     ("attn.proj", "linear", {"weight": (8, 8), "bias": (8,)})]
    with pytest.raises(CrossattnError) as info:
        propose_name_map(torch_slots(layers=torch_layers), paddle_slots(layers=paddle_layers))
    message = str(info.value)
    assert "`attn.qkv`" in message and "3 of paddle's layers fused into one" in message


def test_the_written_map_reads_back_through_the_name_map_loader(tmp_path):
    from crossattn.cli_map import map_yaml
    from crossattn.model_pair import load_name_map

    mapping = {"": "backbone", "fc": "head.classifier", "module.model": ""}
    path = tmp_path / "names.yaml"
    path.write_text(map_yaml(mapping, ["a note"], ["an undecided group"], "a:b", "c:d"))
    assert load_name_map(str(path)) == mapping
    text = path.read_text()
    assert "#   - a note" in text and "NOT DECIDED" in text


def test_another_architecture_is_named_and_counters_are_a_symptom():
    """A ResNet50 checkpoint given to an SE-ResNet50 spec: names differ and one side has more layers."""
    missing = [f"missing `stem.{i}.weight` (for paddle `stem.{i}.weight`, shape [8])" for i in range(20)]
    unexpected = [f"unexpected `layer{i}.weight` (shape [8]): no paddle tensor takes it" for i in range(12)]
    unexpected += [f"unexpected `layer{i}.num_batches_tracked` (shape []): no paddle tensor takes it"
                   for i in range(12)]
    message = summarise(missing + unexpected, "converting r50.pt")
    assert "layer names differ" in message and "another architecture" in message
    assert "num_batches_tracked` counter" not in message and "--name-map auto" in message


def test_a_counter_whose_batchnorm_arrived_is_a_cause():
    message = summarise(["unexpected `norm.num_batches_tracked` (shape []): no paddle tensor takes it"])
    assert "1 `num_batches_tracked` counter(s)" in message

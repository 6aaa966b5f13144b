"""CLIP backbone wrapper: dense tokens, text encoders, fine-tuning policies and local checkpoint loading."""
import json
import logging
import warnings

import open_clip
import pytest
import torch
from tiny_run import log_records

from models.clip import CLIPBackbone, open_clip_name
from runs.config import load_config
from utils.config import ConfigError

TINY = "FSAR-Tiny-ViT"
TINY_RN = {  # a ModifiedResNet small enough for a unit test (registered from a temporary folder)
    "embed_dim": 32,
    "vision_cfg": {"image_size": 64, "layers": [1, 1, 1, 1], "width": 8, "head_width": 64, "patch_size": None},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 1},
}


@pytest.fixture(scope="module")
def tiny() -> CLIPBackbone:
    torch.manual_seed(0)
    return CLIPBackbone(TINY).eval()


@pytest.fixture(scope="module")
def tiny_rn(tmp_path_factory) -> CLIPBackbone:
    folder = tmp_path_factory.mktemp("rn_config")
    (folder / "Test-Tiny-RN.json").write_text(json.dumps(TINY_RN))
    open_clip.add_model_config(folder)
    torch.manual_seed(0)
    return CLIPBackbone("Test-Tiny-RN").eval()


def frames(n: int = 3, size: int = 64) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(1))


def test_names_map_to_open_clip():
    assert open_clip_name("ViT-B/16") == "ViT-B-16"
    assert open_clip_name("RN50") == "RN50"
    assert open_clip_name(TINY) == TINY
    assert TINY in open_clip.list_models()


def test_unknown_backbone_name_lists_known_models():
    with pytest.raises(ValueError, match="not an open_clip model.*FSAR-Tiny-ViT"):
        CLIPBackbone("No-Such-CLIP")


def test_config_maps_to_constructor_arguments():
    cfg = load_config(None, ["VIDEO.HEAD.BACKBONE_NAME", TINY, "VIDEO.HEAD.PRETRAINED", "",
                             "VIDEO.HEAD.FINETUNE", "last_n", "VIDEO.HEAD.FINETUNE_LAST_N", "2",
                             "TRAIN.GRAD_CHECKPOINT", "True", "VIDEO.HEAD.DENSE_TOKENS", "value"])
    assert CLIPBackbone.from_config(cfg) == dict(name=TINY, pretrained="", finetune="last_n", finetune_last_n=2,
                                                 grad_checkpoint=True, train_text=False, dense_tokens="value")


def test_vit_properties_and_dense_tokens(tiny):
    assert (tiny.embed_dim, tiny.text_width, tiny.grid_size, tiny.image_size) == (64, 128, (8, 8), (64, 64))
    assert tiny.image_mean == pytest.approx(open_clip.OPENAI_DATASET_MEAN)
    images = frames()
    with torch.no_grad():
        out = tiny.encode_frames(images, dense=True)
        assert out["global"].shape == (3, 64) and out["tokens"].shape == (3, 8, 8, 64)
        torch.testing.assert_close(out["global"], tiny.model.encode_image(images))
        # open_clip's own token output (after ln_post) projected into the joint space
        tiny.model.visual.output_tokens = True
        _, tokens = tiny.model.visual(images)
        tiny.model.visual.output_tokens = False
        torch.testing.assert_close(out["tokens"], (tokens @ tiny.model.visual.proj).reshape(3, 8, 8, 64))
        assert set(tiny.encode_frames(images)) == {"global"}


def test_value_path_dense_tokens_equal_the_last_blocks_value_branch_by_hand(tiny):
    """VIDEO.HEAD.DENSE_TOKENS value: ln_1, the value rows of in_proj, out_proj (no attention mixing, residual or
    MLP), then ln_post and proj; the global embedding is unchanged."""
    images, visual = frames(), tiny.model.visual
    block = visual.transformer.resblocks[-1]
    width = block.attn.embed_dim
    with torch.no_grad():
        x = visual._embeds(images)
        for earlier in visual.transformer.resblocks[:-1]:
            x = earlier(x)
        value = block.ln_1(x) @ block.attn.in_proj_weight[2 * width:].T + block.attn.in_proj_bias[2 * width:]
        expected = (visual.ln_post(block.attn.out_proj(value)[:, 1:]) @ visual.proj).reshape(3, 8, 8, 64)
        tiny.dense_tokens = "value"
        try:
            out = tiny.encode_frames(images, dense=True)
        finally:
            tiny.dense_tokens = "output"
        output_path = tiny.encode_frames(images, dense=True)
    torch.testing.assert_close(out["tokens"], expected)
    torch.testing.assert_close(out["global"], output_path["global"])
    assert not torch.allclose(out["tokens"], output_path["tokens"])
    with pytest.raises(ValueError, match="VIDEO.HEAD.DENSE_TOKENS must be one of"):
        CLIPBackbone(TINY, dense_tokens="values")


def test_masked_embedding_equals_the_tower_run_on_the_visible_patches_alone(tiny):
    """encode_masked on a ViT: exactly the embedding of the class token plus the kept patches (positions kept),
    computed here by dropping the others; everything visible is the ordinary embedding."""
    images, visual = frames(), tiny.model.visual
    keep = torch.rand(3, 8, 8, generator=torch.Generator().manual_seed(2)) > 0.6
    keep[2] = False  # nothing visible: the class token alone
    with torch.no_grad():
        got = tiny.encode_masked(images, keep)
        expected = []
        for i in range(3):
            kept = torch.cat([torch.zeros(1, dtype=torch.long), 1 + keep[i].flatten().nonzero().flatten()])
            expected.append(visual._pool(visual.transformer(visual._embeds(images[i:i + 1])[:, kept]))[0]
                            @ visual.proj)
        everything = tiny.encode_masked(images, torch.ones(3, 8, 8, dtype=torch.bool))
        plain = tiny.encode_frames(images)["global"]
    torch.testing.assert_close(got, torch.cat(expected))
    torch.testing.assert_close(everything, plain)
    with pytest.raises(ValueError, match="do not match the patch grid"):
        tiny.encode_masked(images, keep[:, :4])


def test_masked_embedding_on_a_resnet_hides_the_pixels_of_hidden_cells(tiny_rn):
    images = frames()
    keep = torch.tensor([[True, False], [False, True]]).expand(3, -1, -1)
    pixels = images.clone()
    pixels[:, :, :32, 32:] = 0  # the normalised mean
    pixels[:, :, 32:, :32] = 0
    with torch.no_grad():
        torch.testing.assert_close(tiny_rn.encode_masked(images, keep), tiny_rn.encode_frames(pixels)["global"])


def test_wrong_image_size_names_the_model_size(tiny):
    with pytest.raises(ValueError, match=r"expects \(64, 64\) images"):
        tiny.encode_frames(frames(size=32))


def test_resnet_dense_tokens_use_attention_pool_value_path(tiny_rn):
    assert tiny_rn.grid_size == (2, 2) and tiny_rn.embed_dim == 32
    images = frames()
    with torch.no_grad():
        out = tiny_rn.encode_frames(images, dense=True)
        torch.testing.assert_close(out["global"], tiny_rn.model.encode_image(images))
        visual = tiny_rn.model.visual
        grid = visual.layer4(visual.layer3(visual.layer2(visual.layer1(visual.stem(images)))))  # [3, C, 2, 2]
        cell = grid[:, :, 1, 0] + visual.attnpool.positional_embedding[1 + 2 * 1 + 0]
        expected = visual.attnpool.c_proj(visual.attnpool.v_proj(cell))
    assert out["tokens"].shape == (3, 2, 2, 32)
    torch.testing.assert_close(out["tokens"][:, 1, 0], expected)


def test_text_encoders_agree(tiny):
    ids = tiny.tokenize(["a photo of juggling", "a photo of x"])
    assert ids.dtype == torch.long and ids.shape == (2, 77) and ids.device == tiny.device
    with torch.no_grad():
        text = tiny.encode_text(ids)
        pooled, tokens = tiny.encode_text_tokens(ids)
        torch.testing.assert_close(text, tiny.model.encode_text(ids))
    assert text.shape == (2, 64) and tokens.shape == (2, 77, 64)
    torch.testing.assert_close(pooled, text)
    torch.testing.assert_close(tokens[torch.arange(2), ids.argmax(-1)], text)


@pytest.mark.parametrize("model", ["tiny", "tiny_rn"])
def test_text_tower_stops_at_the_last_end_token_exactly(model, request):
    backbone = request.getfixturevalue(model)
    ids = backbone.tokenize(["a photo of juggling a ball while standing on one leg", "x"])
    assert backbone._pooled_length(ids) == int(ids.argmax(-1).max()) + 1 < 77
    with torch.no_grad():
        full = backbone._project_text(backbone._pool_text(backbone._text_transformer(backbone.token_embeddings(ids)),
                                                          ids))
        torch.testing.assert_close(backbone.encode_text(ids), full, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(backbone.encode_text(ids), backbone.model.encode_text(ids), rtol=1e-5, atol=1e-6)


def test_prompt_embeddings_path_matches_and_backpropagates_through_frozen_weights(tiny):
    assert not any(p.requires_grad for p in tiny.model.transformer.parameters())
    ids = tiny.tokenize(["a photo of juggling"])
    embeddings = tiny.token_embeddings(ids).detach().requires_grad_(True)
    out = tiny.encode_text_embeddings(embeddings, ids)
    torch.testing.assert_close(out, tiny.encode_text(ids))
    out.sum().backward()
    assert embeddings.grad is not None and embeddings.grad.abs().sum() > 0
    assert all(p.grad is None for p in tiny.model.transformer.parameters())


def trainable(backbone: CLIPBackbone) -> set[str]:
    return {n for n, p in backbone.model.visual.named_parameters() if p.requires_grad}


def test_finetune_policies():
    full = CLIPBackbone(TINY)
    assert trainable(full) == {n for n, _ in full.model.visual.named_parameters()}
    assert not any(p.requires_grad for p in full.model.token_embedding.parameters())
    assert not full.model.logit_scale.requires_grad
    assert not trainable(CLIPBackbone(TINY, finetune="frozen"))
    last2 = trainable(CLIPBackbone(TINY, finetune="last_n", finetune_last_n=2))
    assert {n.split(".")[0] if not n.startswith("transformer") else ".".join(n.split(".")[:3]) for n in last2} == {
        "transformer.resblocks.2", "transformer.resblocks.3", "ln_post", "proj"}
    with pytest.raises(ValueError, match="FINETUNE_LAST_N must be in 1..4"):
        CLIPBackbone(TINY, finetune="last_n", finetune_last_n=0)
    with pytest.raises(ValueError, match="FINETUNE must be one of"):
        CLIPBackbone(TINY, finetune="partial")
    text = CLIPBackbone(TINY, train_text=True)
    assert text.text_trainable and all(p.requires_grad for p in text.model.transformer.parameters())


def test_frozen_resnet_keeps_batchnorm_statistics(tiny_rn):
    frozen = CLIPBackbone("Test-Tiny-RN", finetune="frozen").train()
    before = {k: v.clone() for k, v in frozen.state_dict().items() if "running_mean" in k}
    frozen.encode_frames(frames())
    after = {k: v for k, v in frozen.state_dict().items() if "running_mean" in k}
    assert before and all(torch.equal(before[k], after[k]) for k in before)
    last = CLIPBackbone("Test-Tiny-RN", finetune="last_n", finetune_last_n=1)
    assert {n.split(".")[0] for n in trainable(last)} == {"layer4", "attnpool"}


def test_grad_checkpointing_gives_identical_results():
    torch.manual_seed(0)
    plain = CLIPBackbone(TINY).train()
    ckpt = CLIPBackbone(TINY, grad_checkpoint=True).train()
    ckpt.load_state_dict(plain.state_dict())
    images = frames(2)
    grads = []
    for model in (plain, ckpt):
        model.zero_grad()
        out = model.encode_frames(images, dense=True)
        (out["global"].sum() + out["tokens"].square().mean()).backward()
        grads.append(model.model.visual.conv1.weight.grad.clone())
    torch.testing.assert_close(grads[0], grads[1])


def outputs(backbone: CLIPBackbone) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        return backbone.encode_frames(frames(2))["global"], backbone.encode_text(backbone.tokenize(["a cat"]))


def test_load_open_clip_checkpoint(tmp_path, tiny):
    plain = tmp_path / "open_clip.pt"
    torch.save(tiny.model.state_dict(), plain)
    wrapped = tmp_path / "wrapped.pt"  # open_clip training checkpoints: {"state_dict": {"module.<key>": ...}}
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in tiny.model.state_dict().items()}}, wrapped)
    expected = outputs(tiny)
    for path in (plain, wrapped):
        loaded = CLIPBackbone(TINY, pretrained=str(path)).eval()
        for got, want in zip(outputs(loaded), expected, strict=True):
            torch.testing.assert_close(got, want)


def test_loading_weights_logs_no_random_init_warning_and_random_weights_are_said_once(tmp_path, tiny, caplog):
    """open_clip warned "Model initialized randomly" right before our loader read VIDEO.HEAD.PRETRAINED."""
    path = tmp_path / "open_clip.pt"
    torch.save(tiny.model.state_dict(), path)
    for pretrained, said in ((str(path), f"loaded CLIP weights from {path}"),
                             ("", "FSAR-Tiny-ViT starts from random weights (VIDEO.HEAD.PRETRAINED '')")):
        caplog.clear()
        with caplog.at_level(logging.INFO), log_records(logging.DEBUG) as ours:  # open_clip's, and the project's
            CLIPBackbone(TINY, pretrained=pretrained)
        assert not any("initialized randomly" in r.getMessage() for r in caplog.records)
        assert [r.getMessage() for r in ours] == [said]
    assert logging.getLogger().filters == []  # the filter lives only around model creation


def test_load_openai_checkpoints_with_quick_gelu(tmp_path):
    torch.manual_seed(3)
    reference = open_clip.create_model(TINY, force_quick_gelu=True).eval()
    state = {k: v.half() for k, v in reference.state_dict().items()}  # OpenAI ships fp16 weights
    state.update(input_resolution=torch.tensor(64), context_length=torch.tensor(77), vocab_size=torch.tensor(49408))
    state_path = tmp_path / "openai_state.pt"
    torch.save(state, state_path)
    reference.half().float()  # compare against the same fp16-rounded weights
    with pytest.warns(FutureWarning):
        scripted = torch.jit.script(reference)
    jit_path = tmp_path / "openai_jit.pt"
    with pytest.warns(FutureWarning):
        torch.jit.save(scripted, str(jit_path))
    with torch.no_grad():
        expected = (reference.encode_image(frames(2)), reference.encode_text(open_clip.tokenize(["a cat"])))
    for path in (state_path, jit_path):
        loaded = CLIPBackbone(TINY, pretrained=str(path)).eval()
        assert isinstance(loaded.model.visual.transformer.resblocks[0].mlp.gelu, open_clip.transformer.QuickGELU)
        for got, want in zip(outputs(loaded), expected, strict=True):
            torch.testing.assert_close(got, want)


# Tiny towers in OpenAI's layout: the widths follow the rules open_clip's OpenAI reader (load_openai_model, via
# build_model_from_openai_state_dict) infers an architecture by (64-wide heads, image side = 32 x the ResNet grid).
OPENAI_TINY = {
    "Test-OpenAI-RN": {"embed_dim": 32, "vision_cfg": {"image_size": 64, "layers": [1, 1, 1, 1], "width": 8,
                                                       "patch_size": None}},
    "Test-OpenAI-ViT": {"embed_dim": 32, "vision_cfg": {"image_size": 64, "layers": 1, "width": 64,
                                                        "patch_size": 16}},
    "Test-OpenAI-ViT-Wide": {"embed_dim": 32, "vision_cfg": {"image_size": 64, "layers": 1, "width": 128,
                                                             "patch_size": 16}},
}
OPENAI_TEXT = {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 1, "layers": 1}


@pytest.fixture(scope="module")
def openai_archives(tmp_path_factory) -> dict:
    """{name: path} of TorchScript archives written as OpenAI released RN50.pt / ViT-B-16.pt: a traced CLIP whose
    state dict has OpenAI's parameter names, fp16 weights where OpenAI's are fp16, and the input_resolution /
    context_length / vocab_size entries of their archives."""
    folder = tmp_path_factory.mktemp("openai")
    for name, cfg in OPENAI_TINY.items():
        (folder / f"{name}.json").write_text(json.dumps({**cfg, "text_cfg": OPENAI_TEXT}))
    open_clip.add_model_config(folder)
    archives = {}
    for seed, name in enumerate(OPENAI_TINY):
        torch.manual_seed(seed)
        model = open_clip.create_model(name, force_quick_gelu=True).eval()
        with torch.no_grad():  # give the BatchNorm statistics values an untouched layer would not have
            for module in model.modules():
                if isinstance(module, torch.nn.BatchNorm2d):
                    module.running_mean.uniform_(-0.1, 0.1)
                    module.running_var.uniform_(0.5, 1.5)
        mask = model._buffers.pop("attn_mask")  # OpenAI's causal mask is a plain attribute: not in the state dict
        model.attn_mask = mask
        for key, value in (("input_resolution", 64), ("context_length", 77), ("vocab_size", 49408)):
            if hasattr(model, key):  # open_clip keeps two of them as plain attributes (read by nothing traced)
                delattr(model, key)
            model.register_buffer(key, torch.tensor(value))
        images, text = torch.zeros(1, 3, 64, 64), torch.zeros(1, 77, dtype=torch.long)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.jit is deprecated, and tracing warns about data flow
            traced = torch.jit.trace_module(model, {"forward": (images, text), "encode_image": (images,),
                                                    "encode_text": (text,)}, check_trace=False)
            open_clip.model.convert_weights_to_fp16(model)  # OpenAI's archives hold these weights in fp16
            halves = {k for k, v in model.state_dict().items() if v.dtype == torch.float16}
            for key, param in traced.named_parameters():
                if key in halves:
                    param.data = param.data.half()
            archives[name] = folder / f"{name}.pt"
            torch.jit.save(traced, str(archives[name]))
    return archives


@pytest.mark.parametrize("name", ["Test-OpenAI-RN", "Test-OpenAI-ViT"])
def test_openai_torchscript_archives_load_as_open_clips_openai_reader_reads_them(openai_archives, name):
    """VIDEO.HEAD.PRETRAINED <OpenAI's RN50.pt or ViT-B-16.pt>: the same weights, BatchNorm statistics and
    embeddings as open_clip's own reader of OpenAI files (which infers the tower from the tensors' shapes)."""
    path = str(openai_archives[name])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        reference = open_clip.load_openai_model(path, precision="fp32", device="cpu").eval()
    ours = CLIPBackbone(name, pretrained=path).eval()
    theirs, mine = reference.state_dict(), ours.model.state_dict()
    assert set(mine) <= set(theirs)
    for key, value in mine.items():
        torch.testing.assert_close(value, theirs[key].to(value.dtype), rtol=0, atol=0, msg=key)
    images = frames(2)
    with torch.no_grad():
        expected = (reference.encode_image(images), reference.encode_text(open_clip.tokenize(["a cat"])))
    for got, want in zip(outputs(ours), expected, strict=True):
        torch.testing.assert_close(got, want)


def test_an_openai_archive_of_another_tower_is_refused_naming_the_file(openai_archives):
    """OpenAI's RN50.pt under BACKBONE_NAME ViT-B/16 (other names), or ViT-B-32.pt under ViT-B/16 (same names, other
    shapes): the checkpoint error (one line, exit 7), not a size-mismatch traceback."""
    from utils.checkpoint import CheckpointError

    with pytest.raises(CheckpointError, match=r"Test-OpenAI-RN\.pt: does not fit Test-OpenAI-ViT \(missing "):
        CLIPBackbone("Test-OpenAI-ViT", pretrained=str(openai_archives["Test-OpenAI-RN"]))
    wide = openai_archives["Test-OpenAI-ViT-Wide"]
    with pytest.raises(CheckpointError, match=r"Test-OpenAI-ViT-Wide\.pt: does not fit Test-OpenAI-ViT \(size "
                                              r"mismatch for visual\.class_embedding: \[128\] in the file, \[64\] in "
                                              r"the model\)"):
        CLIPBackbone("Test-OpenAI-ViT", pretrained=str(wide))


def test_missing_checkpoint_path_is_a_clear_error():
    with pytest.raises(ConfigError, match="VIDEO.HEAD.PRETRAINED '/no/such.pt': no such file .*OpenAI's RN50.pt"):
        CLIPBackbone(TINY, pretrained="/no/such.pt")


@pytest.mark.parametrize("name", ["ViT-B/16", "RN50"])
def test_value_tokens_masked_embeddings_and_motion_vfam_on_the_real_architectures(name):
    """The lineage's towers (random weights): the value-path token grid has the tower's grid and width, showing
    every patch gives the plain embedding, and hiding half of them changes it; VFAM's motion path runs on them."""
    torch.manual_seed(0)
    backbone = CLIPBackbone(name, "", finetune="frozen", dense_tokens="value").eval()
    images = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(3))
    h, w = backbone.grid_size
    with torch.no_grad():
        out = backbone.encode_frames(images, dense=True)
        everything = backbone.encode_masked(images, torch.ones(1, h, w, dtype=torch.bool))
        half = torch.zeros(1, h, w, dtype=torch.bool)
        half[:, :, : w // 2] = True
        left = backbone.encode_masked(images, half)
    assert out["tokens"].shape == (1, h, w, backbone.embed_dim)
    torch.testing.assert_close(everything, out["global"], rtol=1e-4, atol=1e-4)
    assert not torch.allclose(left, out["global"], atol=1e-3)
    # VFAM as the main job runs it (ATTEND motion, ENTITY_MOTION, FUSION replace) on the value-path tokens: with one
    # track the descriptor is that entity's unit RoI token plus its motion embedding (proj starts as the identity).
    from models.vfam import VFAM, roi_entity_features

    d = backbone.embed_dim
    vfam = VFAM(dim=d, out_dim=d, temporal=False, attend="motion", entity_motion=True, fusion="replace").eval()
    videos = torch.cat([images, images.roll(8, dims=-1)])[None]  # [1, 2, 3, 224, 224]: the content moves right
    boxes = torch.tensor([[[[0.2, 0.2, 0.5, 0.6]], [[0.25, 0.2, 0.55, 0.6]]]])
    mask = torch.ones(1, 2, 1, dtype=torch.bool)
    with torch.no_grad():
        encoded = vfam.encode(backbone, videos, boxes, mask)
        fused = vfam(encoded["global"], encoded["global"], encoded["entity_feats"], mask, encoded["entity_motion"])
        roi = roi_entity_features(encoded["tokens"].flatten(0, 1), boxes.flatten(0, 1), mask.flatten(0, 1), 2)
        expected = torch.nn.functional.normalize(roi[:, 0], dim=-1) + vfam.motion_embed(
            30.0 * encoded["entity_motion"][0, :, 0])
    torch.testing.assert_close(encoded["entity_motion"][0, :, 0], torch.tensor([[0.05, 0.0, 0.0]] * 2))
    torch.testing.assert_close(fused[0], expected, rtol=1e-4, atol=1e-5)


class _RunsCode:
    """Unpickling this would run `touch <marker>`."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os

        return os.system, (f"touch {self.marker}",)


def test_pretrained_weights_that_are_a_code_running_pickle_or_a_fake_torchscript_are_one_line_exit_7(
        synthetic_root, tmp_path, capsys):
    """VIDEO.HEAD.PRETRAINED pointing at a pickle that would run code, or at a zip that claims to be TorchScript:
    refused with one line naming the file (exit 7, the checkpoint family), and no code runs."""
    import pickle
    import zipfile

    from tiny_run import refused, tiny_argv

    marker = tmp_path / "code_ran"
    evil = tmp_path / "evil.pt"
    evil.write_bytes(pickle.dumps({"state_dict": _RunsCode(marker)}))
    fake = tmp_path / "fake_torchscript.pt"
    with zipfile.ZipFile(fake, "w") as archive:
        archive.writestr("fake/code/__torch__.py", f"import os\nos.system('touch {marker}')\n")
        archive.writestr("fake/data.pkl", b"not a pickle")
    for path in (evil, fake):
        line = refused(capsys, 7, tiny_argv(synthetic_root, tmp_path / path.stem, "VIDEO.HEAD.PRETRAINED",
                                            str(path)))
        assert line.startswith(f"error: VIDEO.HEAD.PRETRAINED {path}: not a CLIP checkpoint this code can read ("), \
            line
        assert line.endswith("(give an open_clip state dict, OpenAI's TorchScript .pt, or '' for random weights)")
    assert not marker.exists()

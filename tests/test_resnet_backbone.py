"""torchvision ResNet frame backbones (models/resnet.py): the lineage's children()[:-1] feature, weights from a local
file, a one-line error offline, BatchNorm frozen with the frozen parts, and the key that picks them."""
import pytest
import torch
import torchvision

from models.backbones import check_pretrained
from models.resnet import ResNetBackbone
from utils.checkpoint import CheckpointError
from utils.config import ConfigError


def test_the_feature_is_the_pooled_layer4_of_torchvisions_network_without_its_classifier():
    torch.manual_seed(0)
    net = torchvision.models.resnet18(weights=None).eval()
    backbone = ResNetBackbone("resnet18", image_size=32).eval()
    backbone.load_state_dict(torch.nn.Sequential(*list(net.children())[:-1]).state_dict())  # the lineage's names
    images = torch.randn(3, 3, 32, 32)
    features = backbone.encode_frames(images)["global"]
    assert features.shape == (3, 512) and backbone.embed_dim == 512
    net.fc = torch.nn.Identity()
    torch.testing.assert_close(features, net(images))
    pixels = torch.randint(0, 256, (1, 2, 3, 32, 32), dtype=torch.uint8)  # uint8 crops: the data's mean / std
    torch.testing.assert_close(backbone.normalise(pixels), (pixels.float() / 255 - 0.45) / 0.225)


def test_local_weights_file_loads_and_a_file_of_something_else_is_one_line(tmp_path):
    torch.manual_seed(1)
    net = torchvision.models.resnet34(weights=None)
    path = tmp_path / "resnet34.pth"
    torch.save(net.state_dict(), path)
    backbone = ResNetBackbone("resnet34", pretrained=str(path))
    torch.testing.assert_close(backbone[4][0].conv1.weight, net.layer1[0].conv1.weight)
    with pytest.raises(CheckpointError, match=r"resnet34.pth: does not fit torchvision's resnet18 \(missing \[\], "
                                              r"unexpected \['layer1.2"):
        ResNetBackbone("resnet18", pretrained=str(path))
    (tmp_path / "notes.txt").write_text("not weights")
    with pytest.raises(CheckpointError, match="notes.txt: not a weights file this code can read"):
        ResNetBackbone("resnet18", pretrained=str(tmp_path / "notes.txt"))


def test_imagenet_weights_offline_and_clip_names_for_a_resnet_are_one_line_errors(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # an empty cache
    for key in ("https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY"):
        monkeypatch.setenv(key, "http://127.0.0.1:9")  # a closed port: the download fails as offline
    with pytest.raises(ConfigError, match=r"^VIDEO.HEAD.PRETRAINED imagenet: torchvision's resnet50 ImageNet weights "
                                          r"are not cached at .*resnet50-0676ba61.pth and could not be downloaded"):
        check_pretrained("resnet50", "imagenet")
    with pytest.raises(ConfigError, match="resnet18 is torchvision's, not a CLIP tower"):
        check_pretrained("resnet18", "openai")
    with pytest.raises(ConfigError, match="no such file"):
        check_pretrained("resnet18", str(tmp_path / "absent.pth"))


@pytest.mark.parametrize("finetune", ["frozen", "last_n"])
def test_frozen_parts_keep_their_batchnorm_statistics(finetune):
    """FINETUNE last_n 2 on ResNet-18 trains layer4's two blocks (their BatchNorms in training mode); frozen: none."""
    backbone = ResNetBackbone("resnet18", finetune=finetune, finetune_last_n=2, image_size=32).train()
    layer4 = {id(m) for m in backbone[7].modules() if isinstance(m, torch.nn.BatchNorm2d)}
    training = {id(m) for m in backbone.modules() if isinstance(m, torch.nn.BatchNorm2d) and m.training}
    assert training == (layer4 if finetune == "last_n" else set()) and len(layer4) == 5
    before = backbone[1].running_mean.clone()
    backbone.encode_frames(torch.randn(2, 3, 32, 32))
    assert torch.equal(backbone[1].running_mean, before)
    assert all(p.requires_grad == (finetune == "last_n" and n.startswith("7.")) for n, p in backbone.named_parameters())

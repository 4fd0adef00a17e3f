"""Backbones: real offline ImageNet weights, local checkpoints with weights_only, clear mismatch errors."""
import os

import matplotlib
import numpy as np
import pytest
import torch
from PIL import Image

from raal.config import ModelConfig
from raal.data.transforms import ImageTransform
from raal.errors import ConfigError
from raal.models import build_backbone, imagenet_categories

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def mobilenet():
    return build_backbone(ModelConfig())


def test_real_weights_recognise_a_real_photo(mobilenet):
    path = os.path.join(os.path.dirname(matplotlib.__file__), "mpl-data", "sample_data", "grace_hopper.jpg")
    image = np.asarray(Image.open(path).convert("RGB"))
    x = torch.from_numpy(ImageTransform(size=224)({"image": [image]}))
    with torch.no_grad():
        logits = mobilenet(x)
    assert mobilenet.feature_dim == 1280 and logits.shape == (1, 1000)
    top = imagenet_categories()[int(logits.argmax())]
    assert top == "military uniform"  # Grace Hopper in her US Navy uniform
    with torch.no_grad():
        assert mobilenet.features(x).shape == (1, 1280)


def test_local_checkpoint_without_head_loads(tmp_path, mobilenet):
    sd = {f"{k}": v for k, v in mobilenet.trunk.state_dict().items()}  # no classifier keys (like a BYOL trunk)
    path = tmp_path / "byol_like.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in sd.items()}}, path)
    b = build_backbone(ModelConfig(weights=str(path)))
    assert b.head is None and b.feature_dim == 1280
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(b.features(x), mobilenet.features(x))


def test_mismatched_checkpoint_names_file_and_keys(tmp_path, mobilenet):
    sd = dict(mobilenet.trunk.state_dict())
    sd.pop("features.0.0.weight")
    sd["extra.weight"] = torch.zeros(1)
    path = tmp_path / "bad.pth"
    torch.save(sd, path)
    with pytest.raises(ConfigError) as err:
        build_backbone(ModelConfig(weights=str(path)))
    msg = str(err.value)
    assert "bad.pth" in msg and "features.0.0.weight" in msg and "extra.weight" in msg


def test_missing_checkpoint_and_unsafe_pickle(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        build_backbone(ModelConfig(weights=str(tmp_path / "none.pth")))

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    path = tmp_path / "evil.pth"
    torch.save({"x": Evil()}, path)
    with pytest.raises(ConfigError, match="weights_only"):
        build_backbone(ModelConfig(weights=str(path)))


def test_other_torchvision_arch_random_init():
    b = build_backbone(ModelConfig(arch="resnet18", weights="none"))
    assert b.feature_dim == 512
    with pytest.raises(ConfigError, match="not a torchvision"):
        build_backbone(ModelConfig(arch="no_such_net", weights="none"))

"""Built-in models for 28x28 images and MODEL spec resolution.

>>> import prunekit.models as pkm
>>> model = pkm.build_model("vgg")            # or "torchvision:resnet18", "timm:...", "hf:gpt2"
>>> pkm.spec_of(model), pkm.input_shape("vgg")
('prunekit:vgg', (1, 1, 28, 28))
"""

from prunekit.models._build import (
    build_model,
    input_shape,
    list_models,
    register,
    set_spec,
    spec_kwargs_of,
    spec_of,
)
from prunekit.models._lenet import LeNet5, LeNet300, lenet5, lenet5_caffe, lenet300
from prunekit.models._resnet import BasicBlock, ResNet20, resnet20
from prunekit.models._vgg import VGG, vgg

__all__ = [
    "VGG",
    "BasicBlock",
    "LeNet5",
    "LeNet300",
    "ResNet20",
    "build_model",
    "input_shape",
    "lenet5",
    "lenet5_caffe",
    "lenet300",
    "list_models",
    "register",
    "resnet20",
    "set_spec",
    "spec_kwargs_of",
    "spec_of",
    "vgg",
]

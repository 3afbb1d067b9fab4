"""Teacher and student classifiers by torchvision name, or ``timm:NAME`` for a timm model.

timm models are built with ``pretrained=False`` (never a download) and their head sized through timm's own
``num_classes``; timm is the optional extra ``augkd-edge[timm]`` because it brings the Hugging Face hub client
and an HTTP stack that augkd-edge, which never downloads, does not use.

Models start from scratch; pretrained weights (a torchvision weights name or a
state_dict file) are loaded into them by ``augkd_edge.models.weights``. BatchNorm momentum is raised to 0.1
everywhere: torchvision's MobileNetV3 uses 0.01, whose running statistics never
catch up in short from-scratch runs (eval accuracy near chance; docs/method.md, "Module 3").
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from augkd_edge.errors import UserError

if TYPE_CHECKING:
    from torch import nn

# Architectures we test; any other torchvision classification builder also works.
KNOWN_ARCHS = (
    "resnet18",
    "resnet34",
    "resnet50",
    "mobilenet_v3_small",
    "mobilenet_v3_large",
    "mobilenet_v2",
    "shufflenet_v2_x1_0",
    "efficientnet_b0",
)


TIMM_PREFIX = "timm:"


def head_name(model: "nn.Module") -> str:
    """Dotted name of the classifier's last Linear layer: ``fc``, ``classifier`` or ``classifier.N``; a timm
    model's from its ``pretrained_cfg`` (e.g. ``head.fc``)."""
    from torch import nn

    timm_head = (getattr(model, "pretrained_cfg", None) or {}).get("classifier")
    if isinstance(timm_head, str) and isinstance(_get(model, timm_head), nn.Linear):
        return timm_head
    if isinstance(getattr(model, "fc", None), nn.Linear):
        return "fc"
    head = getattr(model, "classifier", None)
    if isinstance(head, nn.Sequential):
        for i in range(len(head) - 1, -1, -1):
            if isinstance(head[i], nn.Linear):
                return f"classifier.{i}"
    if isinstance(head, nn.Linear):
        return "classifier"
    raise UserError(f"cannot find the classifier layer of {type(model).__name__} to resize it")


def _get(model: "nn.Module", name: str) -> Any:
    try:
        return model.get_submodule(name)
    except AttributeError:
        return None


def _replace_head(model: "nn.Module", num_classes: int) -> None:
    from torch import nn

    parent_name, _, attr = head_name(model).rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, attr, nn.Linear(getattr(parent, attr).in_features, num_classes))


def set_bn_momentum(model: "nn.Module", momentum: float) -> None:
    """Use one BatchNorm momentum for every BN layer (see module docstring)."""
    from torch import nn

    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.momentum = momentum


def _timm_builder(arch: str) -> Any:
    """``timm.create_model`` for ``timm:NAME`` (``pretrained=False``); UserError naming the extra or close names."""
    import difflib

    try:
        import timm
    except ImportError:
        raise UserError(f"{arch}: timm models need the timm extra: pip install 'augkd-edge[timm]' "
                        f"(or pip install timm).") from None
    name = arch[len(TIMM_PREFIX):]
    if not timm.is_model(name):
        near = difflib.get_close_matches(name, timm.list_models(), n=3)
        raise UserError(f"unknown architecture {arch!r}: timm has no model {name!r}"
                        + (f"; did you mean {', '.join(TIMM_PREFIX + n for n in near)}?" if near else "")
                        + " (all: timm.list_models()).")

    def build(weights: None = None, num_classes: int = 1000) -> "nn.Module":
        return timm.create_model(name, pretrained=False, num_classes=num_classes)

    return build


def is_timm(arch: str) -> bool:
    return arch.startswith(TIMM_PREFIX)


def model_builder(arch: str) -> Any:
    """torchvision's builder of ``arch`` (or timm's for ``timm:NAME``); UserError listing known names when there
    is none."""
    import torchvision

    if is_timm(arch):
        return _timm_builder(arch)

    try:
        return torchvision.models.get_model_builder(arch)
    except ValueError:
        raise UserError(
            f"unknown architecture {arch!r}; use a torchvision classification model name "
            f"such as {', '.join(KNOWN_ARCHS)}"
        ) from None


def build_classifier(arch: str, num_classes: int, bn_momentum: float = 0.1) -> "nn.Module":
    """A torchvision (or timm) classifier with ``num_classes`` outputs, randomly initialised.

    Pretrained weights: ``augkd_edge.models.weights.initialise`` on the result.
    """
    if num_classes < 2:
        raise UserError(f"need at least 2 classes, got {num_classes}")
    if is_timm(arch):
        model = model_builder(arch)(num_classes=num_classes)  # timm sizes its own head
    else:
        model = model_builder(arch)(weights=None)
        _replace_head(model, num_classes)
    set_bn_momentum(model, bn_momentum)
    return model

"""Teacher and student classifiers by torchvision name.

No pretrained weights are reachable offline, so models start from scratch unless
the user gives a local weights file. BatchNorm momentum is raised to 0.1
everywhere: torchvision's MobileNetV3 uses 0.01, whose running statistics never
catch up in short from-scratch runs (eval accuracy near chance, METHOD.md).
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


def _replace_head(model: "nn.Module", num_classes: int) -> None:
    from torch import nn

    if hasattr(model, "fc") and isinstance(model.fc, nn.Linear):
        model.fc = nn.Linear(model.fc.in_features, num_classes)
        return
    head = getattr(model, "classifier", None)
    if isinstance(head, nn.Sequential):
        for i in range(len(head) - 1, -1, -1):
            if isinstance(head[i], nn.Linear):
                head[i] = nn.Linear(head[i].in_features, num_classes)
                return
    if isinstance(head, nn.Linear):
        model.classifier = nn.Linear(head.in_features, num_classes)
        return
    raise UserError(f"cannot find the classifier layer of {type(model).__name__} to resize it")


def set_bn_momentum(model: "nn.Module", momentum: float) -> None:
    """Use one BatchNorm momentum for every BN layer (see module docstring)."""
    from torch import nn

    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.momentum = momentum


def model_builder(arch: str) -> Any:
    """torchvision's builder of ``arch``; UserError listing known names when there is none."""
    import torchvision

    try:
        return torchvision.models.get_model_builder(arch)
    except ValueError:
        raise UserError(
            f"unknown architecture {arch!r}; use a torchvision classification model name "
            f"such as {', '.join(KNOWN_ARCHS)}"
        ) from None


def build_classifier(
    arch: str,
    num_classes: int,
    bn_momentum: float = 0.1,
    weights_file: str | None = None,
) -> "nn.Module":
    """A torchvision classifier with ``num_classes`` outputs.

    ``weights_file``: optional local ImageNet (or other) state_dict, loaded safely
    before the head is resized, since downloads are not possible here.
    """
    if num_classes < 2:
        raise UserError(f"need at least 2 classes, got {num_classes}")
    model = model_builder(arch)(weights=None)
    if weights_file is not None:
        from augkd_edge.checkpoint import load_safe

        state = load_safe(weights_file)
        if isinstance(state, dict) and "state_dict" in state:
            state = state["state_dict"]
        try:
            model.load_state_dict(state)
        except (RuntimeError, TypeError) as exc:
            raise UserError(
                f"{weights_file}: weights do not fit {arch}: {str(exc).splitlines()[0]}"
            ) from exc
    _replace_head(model, num_classes)
    set_bn_momentum(model, bn_momentum)
    return model

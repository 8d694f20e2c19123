"""The networks of MEG: generator G(z), energy E(x), encoder Enc(x) and the Deep InfoMax
statistics network T(x, z), built from a small typed `Architecture`.

Shared by training (which trains them) and the service (which rebuilds them from a
bundle's manifest and loads their weights from safetensors): a bundle carries tensors and
a declared architecture, never code. Every network takes and returns flat rows
(B, data_dim) at its boundary, as the bundle does; conv nets reshape inside.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

ARCHS = ("mlp", "conv")
OUTPUT_ACTIVATIONS = ("linear", "tanh", "sigmoid")


class ArchitectureError(ValueError):
    """An architecture description is malformed; the message says which field."""


@dataclass(frozen=True)
class Architecture:
    """Everything needed to rebuild the networks (weights aside)."""

    arch: str  # mlp | conv (conv needs an image shape [c, h, w])
    latent_dim: int
    data_shape: tuple[int, ...]  # how one flat row is viewed, e.g. (2,), (1, 28, 28)
    g_hidden: tuple[int, ...] = (512, 512, 512)
    e_hidden: tuple[int, ...] = (512, 512, 512)
    enc_hidden: tuple[int, ...] = (512, 512)
    t_hidden: tuple[int, ...] = (512, 512, 512)
    g_output: str = "linear"  # linear | tanh | sigmoid
    conv_width: int = 64  # conv: channels of the first conv layer

    def __post_init__(self) -> None:
        if self.arch not in ARCHS:
            raise ArchitectureError(f"arch {self.arch!r} is not one of {ARCHS}")
        if self.g_output not in OUTPUT_ACTIVATIONS:
            raise ArchitectureError(f"g_output {self.g_output!r} is not one of "
                                    f"{OUTPUT_ACTIVATIONS}")
        ints = {"latent_dim": [self.latent_dim], "data_shape": list(self.data_shape),
                "g_hidden": list(self.g_hidden), "e_hidden": list(self.e_hidden),
                "enc_hidden": list(self.enc_hidden), "t_hidden": list(self.t_hidden),
                "conv_width": [self.conv_width]}
        for key, values in ints.items():
            if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in values):
                raise ArchitectureError(f"{key} must hold positive integers, got {values}")
        if not self.data_shape:
            raise ArchitectureError("data_shape is empty")
        if self.arch == "conv":
            if len(self.data_shape) != 3:
                raise ArchitectureError(f"arch 'conv' needs image data [c, h, w], got shape "
                                        f"{list(self.data_shape)}")
            if not self.e_hidden or not self.enc_hidden or not self.t_hidden:
                raise ArchitectureError("arch 'conv' needs at least one hidden size per critic")

    @property
    def data_dim(self) -> int:
        return math.prod(self.data_shape)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Architecture:
        """Strict: unknown keys and wrong types raise ArchitectureError."""
        if not isinstance(d, dict):
            raise ArchitectureError(f"architecture must be an object, got {type(d).__name__}")
        known = {"arch", "latent_dim", "data_shape", "g_hidden", "e_hidden", "enc_hidden",
                 "t_hidden", "g_output", "conv_width"}
        unknown = set(d) - known
        if unknown:
            raise ArchitectureError(f"unknown architecture key(s): {', '.join(sorted(unknown))}")
        try:
            kw: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}
            return cls(**kw)
        except TypeError as e:
            raise ArchitectureError(f"malformed architecture ({e})") from e


def mlp(in_dim: int, hidden: tuple[int, ...] | list[int], out_dim: int, act: str) -> nn.Sequential:
    layers: list[nn.Module] = []
    d = in_dim
    for h in hidden:
        layers += [nn.Linear(d, h), nn.ReLU() if act == "relu" else nn.LeakyReLU(0.2)]
        d = h
    layers.append(nn.Linear(d, out_dim))
    return nn.Sequential(*layers)


def _output_act(name: str) -> nn.Module:
    return {"linear": nn.Identity(), "tanh": nn.Tanh(), "sigmoid": nn.Sigmoid()}[name]


class Generator(nn.Module):
    def __init__(self, arch: Architecture):
        super().__init__()
        self.arch = arch
        if arch.arch == "conv":
            c, h, w = arch.data_shape
            self.c, self.h4, self.w4 = c, h // 4, w // 4
            k = arch.conv_width
            self.fc = nn.Sequential(nn.Linear(arch.latent_dim, 2 * k * self.h4 * self.w4),
                                    nn.ReLU())
            self.net = nn.Sequential(
                nn.ConvTranspose2d(2 * k, k, 4, stride=2, padding=1),  # (B, k, h/2, w/2)
                nn.ReLU(),
                nn.ConvTranspose2d(k, c, 4, stride=2, padding=1),  # (B, c, h, w)
            )
        else:
            self.net = mlp(arch.latent_dim, arch.g_hidden, arch.data_dim, "relu")
        self.out = _output_act(arch.g_output)

    @property
    def cfg(self) -> Architecture:
        """The architecture (the name training code has long used)."""
        return self.arch

    def forward(self, z: torch.Tensor) -> torch.Tensor:  # (B, latent) -> (B, data_dim)
        if self.arch.arch == "conv":
            h = self.fc(z).view(z.shape[0], -1, self.h4, self.w4)
            return self.out(self.net(h)).flatten(1)
        return self.out(self.net(z))


class ConvFeatures(nn.Module):
    """DCGAN-style discriminator trunk: (B, c·h·w) -> (B, 2k·h/4·w/4)."""

    def __init__(self, arch: Architecture):
        super().__init__()
        c, h, w = arch.data_shape
        k = arch.conv_width
        self.shape = (c, h, w)
        self.net = nn.Sequential(
            nn.Conv2d(c, k, 4, stride=2, padding=1),  # (B, k, h/2, w/2)
            nn.LeakyReLU(0.2),
            nn.Conv2d(k, 2 * k, 4, stride=2, padding=1),  # (B, 2k, h/4, w/4)
            nn.LeakyReLU(0.2),
            nn.Flatten(),
        )
        self.out_dim = 2 * k * (h // 4) * (w // 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.view(x.shape[0], *self.shape))


class Critic(nn.Module):
    """x -> out_dim features through an MLP or a conv trunk; the base of E, Enc and T."""

    def __init__(self, arch: Architecture, hidden: tuple[int, ...], out_dim: int,
                 extra_in: int = 0):
        super().__init__()
        self.extra_in = extra_in
        if arch.arch == "conv":
            trunk = ConvFeatures(arch)
            self.trunk: nn.Module = trunk
            self.head = mlp(trunk.out_dim + extra_in, hidden[-1:], out_dim, "leaky")
        else:
            self.trunk = nn.Identity()
            self.head = mlp(arch.data_dim + extra_in, hidden, out_dim, "leaky")

    def forward(self, x: torch.Tensor, extra: torch.Tensor | None = None) -> torch.Tensor:
        h = self.trunk(x)
        if extra is not None:
            h = torch.cat([h, extra], dim=1)
        return self.head(h)


class Energy(nn.Module):
    def __init__(self, arch: Architecture):
        super().__init__()
        self.net = Critic(arch, arch.e_hidden, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, data_dim) -> (B,)
        return self.net(x).squeeze(1)


class Encoder(nn.Module):
    def __init__(self, arch: Architecture):
        super().__init__()
        self.net = Critic(arch, arch.enc_hidden, arch.latent_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, data_dim) -> (B, latent)
        return self.net(x)


class StatisticsNetwork(nn.Module):
    """Deep InfoMax T(x, z): a score that is high for joint pairs (G(z), z)."""

    def __init__(self, arch: Architecture):
        super().__init__()
        self.net = Critic(arch, arch.t_hidden, 1, extra_in=arch.latent_dim)

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:  # -> (B,)
        return self.net(x, z).squeeze(1)


# The networks a bundle carries, by the prefix of their tensors in the weights file.
BUNDLED = ("generator", "energy", "encoder")


def bundle_state(modules: dict[str, nn.Module]) -> dict[str, torch.Tensor]:
    """One flat {prefix.param: tensor} dict of the bundled networks (CPU, contiguous,
    unshared storage: what safetensors stores)."""
    out: dict[str, torch.Tensor] = {}
    for prefix in BUNDLED:
        for key, t in modules[prefix].state_dict().items():
            out[f"{prefix}.{key}"] = t.detach().to("cpu").contiguous().clone()
    return out


@dataclass
class BundledNetworks:
    """The torch networks of a bundle, rebuilt from its architecture and weights."""

    generator: Generator
    energy: Energy
    encoder: Encoder


def _load_strict(prefix: str, module: nn.Module, arch: Architecture,
                 state: dict[str, torch.Tensor]) -> None:
    own = {k[len(prefix) + 1:]: v for k, v in state.items() if k.startswith(prefix + ".")}
    want = module.state_dict()
    missing, unexpected = sorted(set(want) - set(own)), sorted(set(own) - set(want))
    if missing or unexpected:
        raise ValueError(f"{prefix}: missing tensor(s) {missing[:5]}, unexpected {unexpected[:5]}")
    for key, t in own.items():
        if tuple(t.shape) != tuple(want[key].shape):
            raise ValueError(f"{prefix}.{key}: shape {list(t.shape)} does not match the "
                             f"architecture's {list(want[key].shape)} (latent_dim "
                             f"{arch.latent_dim}, data_shape {list(arch.data_shape)})")
        if t.dtype != want[key].dtype:
            raise ValueError(f"{prefix}.{key}: dtype {t.dtype}, expected {want[key].dtype}")
    module.load_state_dict(own, strict=True)


def build_bundled(arch: Architecture, state: dict[str, torch.Tensor]) -> BundledNetworks:
    """Rebuild G, E and Enc from `arch` and load `state` (from `bundle_state`) strictly:
    a missing, unexpected or wrongly shaped tensor raises ValueError naming it."""
    stray = sorted(k for k in state if not k.startswith(tuple(f"{p}." for p in BUNDLED)))
    if stray:
        raise ValueError(f"unexpected tensor(s) {', '.join(stray[:5])}")
    nets = BundledNetworks(generator=Generator(arch), energy=Energy(arch), encoder=Encoder(arch))
    for prefix in BUNDLED:
        _load_strict(prefix, getattr(nets, prefix), arch, state)
    return nets

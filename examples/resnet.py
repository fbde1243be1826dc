# Copyright 2026 The sops Authors. Licensed under the Apache License, Version 2.0.
"""ResNet: a small residual network on upsampled digits, every optimizer side by side.

Residual connections and normalisation, without BatchNorm's running statistics (the loss is a
pure function of the parameters): pre-activation residual blocks with GroupNorm. The 1797
scikit-learn digits, bilinearly upsampled once from 8x8 to 16x16 and scaled to [0, 1], 80/20
stratified train/validation split. A strided 3x3 stem convolution (16x16 -> 8x8, 8 channels), a
residual block at 8x8 (8 channels), a downsampling block to 4x4 (16 channels, strided
convolution, 1x1 projection on the skip), global average pooling and a dense softmax head;
cross-entropy loss. The convolutions are im2col matmuls (see :class:`Conv`); optax's Muon
orthogonalises 2-D weights only, so the 4-D conv kernels get its Adam fallback.

    python examples/resnet.py            # every optimizer (~1 min 45 s on a 2-core CPU)
    python examples/resnet.py --smoke    # a few steps each, no plot
    python examples/resnet.py --steps 0.5 --optimizers adamw,shampoo

Prints a table (final losses and validation accuracy, steps and timed seconds to AdamW's final
validation loss) and saves ``resnet.png`` (validation loss against steps and seconds).
"""

from __future__ import annotations

import os
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from scipy.ndimage import zoom
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _harness  # noqa: E402


class Conv(nn.Module):
  """A 2-D convolution, zero "same" padding, as one matmul over shifted copies of the input.

  Same parameters as ``nn.Conv`` (a ``(k, k, in, out)`` kernel, which Shampoo and SOAP see as a
  4-D tensor, and a bias), computed as im2col + matmul: inside the harness's ``lax.scan``, XLA:CPU
  lowers the weight gradient of ``lax.conv_general_dilated`` to a naive loop, 5-15x slower than
  this on a CPU (on an accelerator either is fine).
  """

  features: int
  kernel_size: int = 3
  strides: int = 1
  use_bias: bool = True

  @nn.compact
  def __call__(self, x):
    k, s, c = self.kernel_size, self.strides, x.shape[-1]
    kernel = self.param("kernel", nn.initializers.lecun_normal(), (k, k, c, self.features))
    h, w = x.shape[1:3]
    xp = jnp.pad(x, ((0, 0), (k // 2, k // 2), (k // 2, k // 2), (0, 0)))
    patches = [xp[:, i : i + h : s, j : j + w : s] for i in range(k) for j in range(k)]
    y = jnp.concatenate(patches, axis=-1) @ kernel.reshape(k * k * c, self.features)
    if self.use_bias:
      y = y + self.param("bias", nn.initializers.zeros_init(), (self.features,))
    return y


class Block(nn.Module):
  """Pre-activation residual block: ``x + conv(relu(gn(conv(relu(gn(x))))))``.

  With ``strides > 1`` or a change of width, the skip is a strided 1x1 convolution of the
  normalised input (as in pre-activation ResNets).
  """

  features: int
  strides: int = 1

  @nn.compact
  def __call__(self, x):
    h = nn.relu(nn.GroupNorm(num_groups=4)(x))
    skip = x
    if self.strides != 1 or x.shape[-1] != self.features:
      skip = Conv(self.features, 1, strides=self.strides, use_bias=False)(h)
    h = Conv(self.features, strides=self.strides, use_bias=False)(h)
    h = nn.relu(nn.GroupNorm(num_groups=4)(h))
    h = Conv(self.features, use_bias=False)(h)
    return skip + h


class ResNet(nn.Module):
  """Strided stem conv(8) to 8x8, block(8), block(16, stride 2) to 4x4, pooled dense head."""

  classes: int = 10

  @nn.compact
  def __call__(self, x):
    x = Conv(8, strides=2)(x)  # 16x16 -> 8x8
    x = Block(8)(x)
    x = Block(16, strides=2)(x)  # 8x8 -> 4x4
    x = nn.relu(nn.GroupNorm(num_groups=4)(x))
    return nn.Dense(self.classes)(jnp.mean(x, axis=(1, 2)))


def _data():
  x, y = load_digits(return_X_y=True)
  x = zoom(x.reshape(-1, 8, 8) / 16.0, (1, 2, 2), order=1)  # bilinear 8x8 -> 16x16
  x = np.clip(x, 0.0, 1.0)[..., None].astype(np.float32)
  x_tr, x_va, y_tr, y_va = train_test_split(x, y, test_size=0.2, random_state=0, stratify=y)
  return x_tr, y_tr.astype(np.int32), (x_va, y_va.astype(np.int32))


def scenario() -> _harness.Scenario:
  """The upsampled-digits ResNet scenario."""
  x_tr, y_tr, (x_va, y_va) = _data()
  model = ResNet()

  return _harness.Scenario(
    name="resnet",
    title="ResNet: 2-block GroupNorm ResNet on 16x16 digits (cross-entropy)",
    init=jax.jit(lambda key: model.init(key, x_tr[:1])),  # one compilation
    **_harness.classification(model.apply, x_tr, y_tr, x_va, y_va),
    steps=300,
    eval_every=20,
    batch_size=64,
    lrs={
      "adamw": (3e-2, 1e-2, 3e-3),
      "sgd": (1e-1, 3e-1, 3e-2),
      "muon": (3e-2, 1e-2, 1e-1),
      "newton_cg": (0.5, 1.0),
      "shampoo": (3e-2, 1e-2, 3e-3),
      "soap": (3e-2, 1e-2, 3e-3),
    },
    metric="val_accuracy",
    higher_is_better=True,
    newton_cg_steps=40,
    newton_cg_batch_size=128,
    newton_cg_kw={"maxiter": 5},  # each CG iteration is a Hessian-vector product through the convs
    key_impl="rbg",  # threefry's initialisation of this net compiles for ~10 s on a CPU
  )


if __name__ == "__main__":
  jax.config.update("jax_default_matmul_precision", "highest")
  _harness.main(scenario())

"""The feature network behind FID, KID, precision/recall and the label-agreement metrics.

Nothing is downloaded: instead of an ImageNet Inception network, a small CNN classifier is trained locally on
the labelled training split of the data set being evaluated, and its penultimate layer provides the features
(the same idea as FID with a domain classifier, e.g. the LeNet features used for MNIST). Its test accuracy is
measured on the test split and printed beside every number computed with it, because features from a poor
classifier make a poor metric.

Training is deterministic for a given seed on CPU, and its result is cached (see :mod:`mtd_core.metrics.cache`)
under a key hashing the training images and labels, the test split, the recipe and :data:`CODE_VERSION`, so
the same evaluation run twice trains once.
"""

from __future__ import annotations

import json
import math
import time
import warnings
from pathlib import Path

import attrs
import torch
from torch import nn
from torch.nn import functional as F

from mtd_core.metrics.cache import TensorCache, json_digest, tensor_digest
from mtd_core.metrics.checks import check_images, check_labels
from mtd_core.metrics.errors import CacheWarning, MetricError
from mtd_core.types import ConfigDict, ConfigMapping

# Bump when the architecture or the training loop changes: it is part of every cache key.
CODE_VERSION = "featurenet-1"


class FeatureNet(nn.Module):
    """A small CNN classifier whose penultimate layer gives the features for distribution metrics.

    Three stride-2-or-1 convolution stages with GroupNorm and SiLU, global average pooling, a linear feature
    layer (``feature_dim`` outputs, taken *before* its nonlinearity so the features are dense and their
    covariance well conditioned), then SiLU and a linear classifier. Works for any image size; it is trained
    on, and only accepts, one size (8x8 digits, 28x28 Fashion-MNIST, 32x32, ...).

    Args:
        in_channels: image channels C.
        image_size: (H, W) of the images it was trained on; other sizes are rejected.
        num_classes: number of classes K of the classifier head.
        width: channels of the first stage (the next stages use 2x and 4x).
        feature_dim: dimension D of the feature layer.
    """

    def __init__(self, in_channels: int, image_size: tuple[int, int], num_classes: int, width: int = 32,
                 feature_dim: int = 64) -> None:
        super().__init__()
        self.in_channels, self.image_size = int(in_channels), (int(image_size[0]), int(image_size[1]))
        self.num_classes, self.width, self.feature_dim = int(num_classes), int(width), int(feature_dim)
        w = self.width

        def stage(cin: int, cout: int, stride: int) -> list[nn.Module]:
            return [nn.Conv2d(cin, cout, 3, stride=stride, padding=1), nn.GroupNorm(min(8, cout), cout), nn.SiLU()]

        self.trunk = nn.Sequential(*stage(in_channels, w, 1), *stage(w, 2 * w, 2), *stage(2 * w, 4 * w, 2),
                                   nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.embed = nn.Linear(4 * w, feature_dim)
        self.classifier = nn.Sequential(nn.SiLU(), nn.Linear(feature_dim, num_classes))

    def config(self) -> ConfigDict:
        """The constructor arguments as a JSON-representable dict (``FeatureNet(**config)`` rebuilds it)."""
        return {"in_channels": self.in_channels, "image_size": list(self.image_size), "num_classes": self.num_classes,
                "width": self.width, "feature_dim": self.feature_dim}

    def embed_images(self, x: torch.Tensor) -> torch.Tensor:
        """The features (B, D) of images (B, C, H, W) in [-1, 1]."""
        return self.embed(self.trunk(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits (B, K)."""
        return self.classifier(self.embed_images(x))


@attrs.frozen
class FeatureRecipe:
    """How the feature network is trained (AdamW with a cosine learning-rate decay, cross-entropy).

    Args:
        epochs: passes over the training images.
        batch: minibatch size.
        lr: peak learning rate.
        seed: seeds the initialisation and the minibatch order (training is deterministic on CPU).
        width: :class:`FeatureNet` width.
        feature_dim: :class:`FeatureNet` feature dimension D.
        weight_decay: AdamW weight decay.
    """

    epochs: int = 20
    batch: int = 64
    lr: float = 3e-3
    seed: int = 0
    width: int = 32
    feature_dim: int = 64
    weight_decay: float = 1e-4

    def __attrs_post_init__(self) -> None:
        for name in ("epochs", "batch", "width", "feature_dim"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise MetricError(f"FeatureRecipe.{name} must be a positive integer, got {v!r}")
        if not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0):
            raise MetricError(f"FeatureRecipe.lr must be a positive number, got {self.lr!r}")
        if not (isinstance(self.weight_decay, (int, float)) and self.weight_decay >= 0):
            raise MetricError(f"FeatureRecipe.weight_decay must be a number >= 0, got {self.weight_decay!r}")

    def to_dict(self) -> ConfigDict:
        """A plain dict (``FeatureRecipe.from_dict`` inverts it)."""
        return attrs.asdict(self)

    @classmethod
    def from_dict(cls, config: ConfigMapping) -> FeatureRecipe:
        """Inverse of :meth:`to_dict`; an unknown key is a MetricError naming it and the valid keys."""
        valid = {f.name for f in attrs.fields(cls)}
        unknown = sorted(set(config) - valid)
        if unknown:
            raise MetricError(f"FeatureRecipe: unknown key(s) {unknown}; valid keys: {sorted(valid)}")
        return cls(**dict(config))


@attrs.frozen
class FeatureNetInfo:
    """What identifies a trained feature network; carried by every metric result computed with it.

    Args:
        key: the cache key (hash of training data, test data, recipe and code version).
        test_accuracy: its accuracy on the test split.
        n_train: number of training images.
        n_test: number of test images the accuracy was measured on.
        feature_dim: dimension D of its features.
    """

    key: str
    test_accuracy: float
    n_train: int
    n_test: int
    feature_dim: int

    @property
    def name(self) -> str:
        """A short identity for printing: ``featurenet-<first 8 hex digits of the key>``."""
        return f"featurenet-{self.key[:8]}"

    def __str__(self) -> str:
        return (f"{self.name} ({self.feature_dim}-d features, test accuracy {self.test_accuracy:.3f} "
                f"on {self.n_test} images)")


@attrs.frozen
class FeatureNetResult:
    """A trained (or cached) feature network and its provenance.

    Attributes:
        net: the network, in eval mode, on CPU.
        test_accuracy: accuracy on the test split given to :func:`train_feature_net`.
        recipe: the training recipe.
        data_hash: SHA-256 of the training images and labels.
        key: the cache key (identity) of this network.
        n_train: number of training images.
        n_test: number of test images.
        from_cache: whether it was read from the cache instead of trained.
        train_seconds: wall time of training (0.0 when read from the cache).
    """

    net: FeatureNet
    test_accuracy: float
    recipe: FeatureRecipe
    data_hash: str
    key: str
    n_train: int
    n_test: int
    from_cache: bool = False
    train_seconds: float = 0.0

    @property
    def info(self) -> FeatureNetInfo:
        """The network's identity and quality, as carried by metric results."""
        return FeatureNetInfo(key=self.key, test_accuracy=self.test_accuracy, n_train=self.n_train,
                              n_test=self.n_test, feature_dim=self.net.feature_dim)

    def __str__(self) -> str:
        source = "cached" if self.from_cache else f"trained in {self.train_seconds:.1f} s"
        return f"{self.info} [{source}]"


def _unwrap(net: FeatureNet | FeatureNetResult) -> FeatureNet:
    if isinstance(net, FeatureNetResult):
        return net.net
    if not isinstance(net, FeatureNet):
        raise MetricError(f"expected a FeatureNet or FeatureNetResult, got {type(net).__name__}")
    return net


@torch.no_grad()
def _batched(net: FeatureNet, images: torch.Tensor, batch_size: int, fn: str) -> torch.Tensor:
    if not isinstance(batch_size, int) or batch_size < 1:
        raise MetricError(f"batch_size must be a positive integer, got {batch_size!r}")
    check_images(images, "images", channels=net.in_channels, size=net.image_size)
    device = next(net.parameters()).device
    was_training = net.training
    net.eval()
    try:
        out = [getattr(net, fn)(images[i:i + batch_size].to(device, torch.float32)).float().cpu()
               for i in range(0, images.shape[0], batch_size)]
    finally:
        net.train(was_training)
    if not out:
        return torch.zeros(0, net.feature_dim if fn == "embed_images" else net.num_classes)
    return torch.cat(out)


def features(net: FeatureNet | FeatureNetResult, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """The feature network's features (N, D), float32 on CPU, of images (N, C, H, W) in [-1, 1]."""
    return _batched(_unwrap(net), images, batch_size, "embed_images")


def logits(net: FeatureNet | FeatureNetResult, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """The classifier's logits (N, K), float32 on CPU."""
    return _batched(_unwrap(net), images, batch_size, "forward")


def classify(net: FeatureNet | FeatureNetResult, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """The classifier's predicted class (N,) int64 for images (N, C, H, W) in [-1, 1]."""
    return logits(net, images, batch_size).argmax(1)


def _fit(net: FeatureNet, images: torch.Tensor, labels: torch.Tensor, recipe: FeatureRecipe,
         device: torch.device) -> None:
    """Minibatch AdamW with cosine decay; the minibatch order comes from a generator seeded by the recipe."""
    net.to(device).train()
    opt = torch.optim.AdamW(net.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    n = images.shape[0]
    steps = recipe.epochs * math.ceil(n / recipe.batch)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    gen = torch.Generator().manual_seed(recipe.seed)
    for _ in range(recipe.epochs):
        perm = torch.randperm(n, generator=gen)
        for i in range(0, n, recipe.batch):
            idx = perm[i:i + recipe.batch]
            loss = F.cross_entropy(net(images[idx].to(device)), labels[idx].to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    net.to("cpu").eval()


def _from_cache(cache: TensorCache, key: str) -> tuple[FeatureNet, ConfigDict] | None:
    entry = cache.load(key)
    if entry is None:
        return None
    try:
        if entry.meta.get("key") != key or entry.meta.get("code_version") != CODE_VERSION:
            raise ValueError(f"metadata is for key {str(entry.meta.get('key'))[:16]} / code "
                             f"{entry.meta.get('code_version')!r}, expected {key[:16]} / {CODE_VERSION!r}")
        net = FeatureNet(**entry.meta["net"])
        net.load_state_dict(entry.tensors, strict=True)
        float(entry.meta["test_accuracy"])
    except Exception as e:
        warnings.warn(f"corrupt features cache entry {key[:16]} in {cache.dir}:\n  {type(e).__name__}: {e}\n"
                      "  it is ignored, retrained and overwritten", CacheWarning, stacklevel=3)
        return None
    return net.eval(), entry.meta


def _check_training_data(images: torch.Tensor, labels: torch.Tensor, test: object
                         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The checked training labels, test images and test labels (MetricError naming what is wrong)."""
    check_images(images, "feature net training images")
    if images.shape[0] < 2:
        raise MetricError(f"feature net training images: need at least 2 images, got {images.shape[0]}")
    labels = check_labels(labels, "feature net training labels", n=images.shape[0])
    if not (isinstance(test, (tuple, list)) and len(test) == 2):
        raise MetricError("test must be a pair (images, labels) of the test split, got "
                          f"{type(test).__name__}{f' of length {len(test)}' if isinstance(test, (tuple, list)) else ''}")
    test_images = check_images(test[0], "feature net test images", channels=images.shape[1],
                               size=(images.shape[2], images.shape[3]))
    if test_images.shape[0] < 1:
        raise MetricError("feature net test images: need at least 1 image, got 0")
    return labels, test_images, check_labels(test[1], "feature net test labels", n=test_images.shape[0])


def train_feature_net(images: torch.Tensor, labels: torch.Tensor, *, test: tuple[torch.Tensor, torch.Tensor],
                      recipe: FeatureRecipe | None = None, num_classes: int | None = None,
                      cache_dir: str | Path | None = None, use_cache: bool = True,
                      device: str | torch.device = "cpu") -> FeatureNetResult:
    """Train (or load from the cache) the feature network on labelled images.

    Args:
        images: training images (N, C, H, W), floating point in [-1, 1].
        labels: their classes (N,), integers in [0, num_classes).
        test: (images, labels) of the test split; the accuracy on it is reported with every metric.
        recipe: the training recipe (default: ``FeatureRecipe()``).
        num_classes: K (default: 1 + the largest label in the training or test labels).
        cache_dir: cache root (default ``$MTD_CACHE_DIR`` or ``~/.cache/mtd``); the network goes in ``features/``.
        use_cache: read and write the cache (False: always train, write nothing).
        device: where to train; deterministic for a given seed on CPU.

    Returns:
        A :class:`FeatureNetResult` whose ``net`` is on CPU in eval mode.
    """
    recipe = recipe if recipe is not None else FeatureRecipe()
    if not isinstance(recipe, FeatureRecipe):
        raise MetricError(f"recipe must be a FeatureRecipe, got {type(recipe).__name__}")
    labels, test_images, test_labels = _check_training_data(images, labels, test)
    k_data = 1 + max(int(labels.max()), int(test_labels.max()))
    if num_classes is None:
        num_classes = k_data
    elif num_classes < k_data:
        raise MetricError(f"num_classes={num_classes} but the labels go up to {k_data - 1}")
    x = images.detach().to("cpu", torch.float32).contiguous()
    tx = test_images.detach().to("cpu", torch.float32).contiguous()
    data_hash = tensor_digest(x, labels)
    key = json_digest({"code": CODE_VERSION, "recipe": recipe.to_dict(), "data": data_hash,
                       "test": tensor_digest(tx, test_labels), "num_classes": num_classes})
    cache = TensorCache("features", cache_dir)
    if use_cache:
        hit = _from_cache(cache, key)
        if hit is not None:
            net, meta = hit
            return FeatureNetResult(net=net, test_accuracy=float(meta["test_accuracy"]), recipe=recipe,
                                    data_hash=data_hash, key=key, n_train=x.shape[0], n_test=tx.shape[0],
                                    from_cache=True)
    start = time.perf_counter()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(recipe.seed)
        net = FeatureNet(x.shape[1], (x.shape[2], x.shape[3]), num_classes, recipe.width, recipe.feature_dim)
    _fit(net, x, labels, recipe, torch.device(device))
    acc = float((classify(net, tx) == test_labels).double().mean())
    seconds = time.perf_counter() - start
    if use_cache:
        cache.save(key, net.state_dict(), {"key": key, "code_version": CODE_VERSION, "net": net.config(),
                                           "recipe": recipe.to_dict(), "data_hash": data_hash,
                                           "test_accuracy": acc, "n_train": x.shape[0], "n_test": tx.shape[0],
                                           "torch": torch.__version__})
    return FeatureNetResult(net=net, test_accuracy=acc, recipe=recipe, data_hash=data_hash, key=key,
                            n_train=x.shape[0], n_test=tx.shape[0], from_cache=False, train_seconds=seconds)


def describe(result: FeatureNetResult) -> str:
    """A JSON line describing the network (for logs): identity, accuracy, recipe."""
    return json.dumps({"name": result.info.name, "key": result.key, "test_accuracy": result.test_accuracy,
                       "recipe": result.recipe.to_dict(), "n_train": result.n_train, "n_test": result.n_test})

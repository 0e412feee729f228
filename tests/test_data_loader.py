"""Batched augmentation and loaders: shapes, normalization, determinism per (seed, epoch),
crop and flip against a brute-force per-sample reference, and the streaming image folder."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from underbudget.data import Augment, ImageSet, Loader, StreamingImageFolder, load_dataset
from underbudget.errors import ConfigError, DataError
from underbudget.utils.seeding import generator


def image_set(n=50, shape=(3, 8, 8), classes=5, seed=0) -> ImageSet:
    gen = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, *shape), dtype=torch.uint8, generator=gen)
    labels = torch.arange(n) % classes
    return ImageSet(images, labels, [f"c{i}" for i in range(classes)])


def collect(loader, epoch=None):
    if epoch is not None:
        loader.set_epoch(epoch)
    xs, ys = zip(*list(loader))
    return torch.cat(xs), torch.cat(ys)


# ---------------------------------------------------------------- ImageSet


def test_imageset_basics_and_validation():
    data = image_set(12, classes=4)
    assert len(data) == 12 and data.num_classes == 4 and data.image_shape == (3, 8, 8)
    assert data.class_counts().tolist() == [3, 3, 3, 3]
    sub = data.subset([0, 5, 6])
    assert torch.equal(sub.images, data.images[[0, 5, 6]]) and sub.labels.tolist() == [0, 1, 2]
    mask = data.labels == 1
    assert torch.equal(data.subset(mask).labels, data.labels[mask])
    with pytest.raises(DataError, match="out of range"):
        data.subset([12])
    with pytest.raises(DataError, match="uint8"):
        ImageSet(data.images.float(), data.labels, data.classes)
    with pytest.raises(DataError, match="12 images but 11 labels"):
        ImageSet(data.images, data.labels[:11], data.classes)
    with pytest.raises(DataError, match="4 classes"):
        ImageSet(data.images, data.labels + 1, data.classes)


# ---------------------------------------------------------------- Loader


def test_loader_shapes_lengths_and_device_residency():
    data = image_set(50)
    loader = Loader(data, 16)
    assert len(loader) == 4 and loader.num_examples == 50 and loader.data is data
    sizes = [x.shape[0] for x, _ in loader]
    assert sizes == [16, 16, 16, 2]
    x, y = next(iter(loader))
    assert x.dtype == torch.float32 and x.shape == (16, 3, 8, 8) and y.dtype == torch.int64
    assert loader.images.device == torch.device("cpu") and loader.images.dtype == torch.uint8
    dropped = Loader(data, 16, drop_last=True)
    assert len(dropped) == 3 and [x.shape[0] for x, _ in dropped] == [16, 16, 16]


def test_normalization_values_match_the_formula():
    data = image_set(20)
    mean, std = (0.1, 0.5, 0.9), (0.2, 0.3, 0.4)
    x, y = collect(Loader(data, 7, mean=mean, std=std))
    ref = (
        data.images.double() / 255 - torch.tensor(mean).view(1, 3, 1, 1).double()
    ) / torch.tensor(std).view(1, 3, 1, 1).double()
    assert torch.allclose(x.double(), ref, atol=1e-5) and torch.equal(y, data.labels)
    raw, _ = collect(Loader(data, 7, normalize=False))
    assert torch.allclose(raw, data.images.float() / 255) and raw.min() >= 0 and raw.max() <= 1
    auto, _ = collect(Loader(data, 7))  # statistics of the data itself
    per_channel = auto.transpose(0, 1).reshape(3, -1)
    assert torch.allclose(per_channel.mean(1), torch.zeros(3), atol=1e-4)
    assert torch.allclose(per_channel.std(1, unbiased=False), torch.ones(3), atol=1e-3)
    gray = image_set(5, shape=(1, 4, 4))
    one, _ = collect(Loader(gray, 5, mean=0.5, std=0.25))
    assert torch.allclose(one, (gray.images.float() / 255 - 0.5) / 0.25, atol=1e-5)


def test_loader_argument_errors():
    data = image_set(10)
    with pytest.raises(ConfigError, match="batch_size"):
        Loader(data, 0)
    with pytest.raises(ConfigError, match="both mean and std"):
        Loader(data, 4, mean=(0.5, 0.5, 0.5))
    with pytest.raises(ConfigError, match="2 values for 3-channel"):
        Loader(data, 4, mean=(0.5, 0.5), std=(1, 1))
    with pytest.raises(ConfigError, match="positive"):
        Loader(data, 4, mean=0.5, std=0.0)
    with pytest.raises(DataError, match="drop_last"):
        Loader(data, 11, drop_last=True)
    with pytest.raises(ConfigError, match="crop_padding"):
        Augment(crop_padding=-1)


def test_shuffle_order_is_a_pure_function_of_seed_and_epoch():
    data = image_set(40)
    a = Loader(data, 8, shuffle=True, seed=5)
    b = Loader(data, 8, shuffle=True, seed=5)
    c = Loader(data, 8, shuffle=True, seed=6)
    xa, ya = collect(a, 2)
    xb, yb = collect(b, 2)
    assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert sorted(a.order(2).tolist()) == list(range(40))  # a permutation: each example once
    assert not torch.equal(a.order(2), a.order(3))
    assert not torch.equal(a.order(2), c.order(2))
    assert torch.equal(Loader(data, 8).order(), torch.arange(40))
    xa_again, _ = collect(a, 2)  # replaying an epoch gives the same batches
    assert torch.equal(xa, xa_again)


def test_augmented_epoch_is_reproducible_and_resumable_mid_epoch():
    data = image_set(40)
    aug = Augment(crop_padding=2, flip=True)
    a = Loader(data, 8, shuffle=True, augment=aug, seed=1)
    b = Loader(data, 8, shuffle=True, augment=aug, seed=1)
    xa, _ = collect(a, 4)
    xb, _ = collect(b, 4)
    assert torch.equal(xa, xb)
    x5, _ = collect(a, 5)
    assert not torch.equal(xa, x5)
    tail = torch.cat([x for x, _ in b.batches(4, start=2)])
    assert torch.equal(tail, xa[16:])


def brute_force_match(out: torch.Tensor, image: torch.Tensor, p: int):
    """All (dy, dx, flipped) whose crop of the zero-padded image equals ``out``."""
    padded = F.pad(image, (p, p, p, p))
    h, w = image.shape[-2:]
    found = []
    for dy in range(2 * p + 1):
        for dx in range(2 * p + 1):
            crop = padded[:, dy : dy + h, dx : dx + w]
            for flipped, candidate in ((False, crop), (True, crop.flip(-1))):
                if torch.equal(candidate, out):
                    found.append((dy, dx, flipped))
    return found


def test_random_crop_and_flip_match_a_per_sample_reference():
    n = 300
    data = image_set(n, shape=(3, 6, 7))
    p = 2
    out = Augment(crop_padding=p, flip=True)(data.images, generator(0, "test"))
    assert out.shape == data.images.shape and out.dtype == torch.uint8
    matches = [brute_force_match(out[i], data.images[i], p) for i in range(n)]
    assert all(len(m) == 1 for m in matches)  # random pixels: exactly one explanation each
    offsets = {(dy, dx) for ((dy, dx, _),) in matches}
    flips = sum(f for ((_, _, f),) in matches)
    assert len(offsets) == (2 * p + 1) ** 2  # every offset, including both extremes, occurs
    assert 0.4 * n < flips < 0.6 * n
    no_flip = Augment(crop_padding=p)(data.images, generator(0, "test"))
    assert all(
        not m[0][2] for m in (brute_force_match(no_flip[i], data.images[i], p) for i in range(n))
    )


@pytest.mark.parametrize("flip", [False, True])
def test_precomputed_and_computed_crop_sources_agree(monkeypatch, flip):
    from underbudget.data import augment as augment_module

    data = image_set(40, shape=(2, 5, 9))
    aug = Augment(crop_padding=3, flip=flip)
    with_table = aug(data.images, generator(4))
    monkeypatch.setattr(augment_module, "_TABLE_LIMIT", 0)
    computed = aug(data.images, generator(4))
    assert torch.equal(with_table, computed)
    assert all(brute_force_match(computed[i], data.images[i], 3) for i in range(40))


def test_flip_only_mirrors_some_samples_and_float_input_agrees():
    data = image_set(32)
    aug = Augment(flip=True)
    out = aug(data.images, generator(1))
    flipped = torch.tensor([torch.equal(out[i], data.images[i].flip(-1)) for i in range(32)])
    same = torch.tensor([torch.equal(out[i], data.images[i]) for i in range(32)])
    assert torch.all(flipped ^ same) and 0 < int(flipped.sum()) < 32
    crop = Augment(crop_padding=3, flip=True)
    as_float = crop(data.images.float(), generator(2))
    assert torch.equal(as_float, crop(data.images, generator(2)).float())
    assert torch.equal(Augment()(data.images, generator(0)), data.images)


def test_augment_resize_matches_bilinear_reference():
    data = image_set(4, shape=(1, 8, 8))
    out = Augment(resize=12)(data.images, generator(0))
    ref = F.interpolate(data.images.float(), size=(12, 12), mode="bilinear", align_corners=False)
    assert out.dtype == torch.uint8 and torch.equal(out, ref.round().clamp(0, 255).to(torch.uint8))
    assert Augment(resize=12, crop_padding=2)(data.images, generator(0)).shape == (4, 1, 12, 12)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_loader_on_cuda_matches_cpu():
    data = image_set(40)
    aug = Augment(crop_padding=2, flip=True)
    cpu, _ = collect(Loader(data, 8, shuffle=True, augment=aug, seed=3), 1)
    gpu, y = collect(Loader(data, 8, shuffle=True, augment=aug, seed=3, device="cuda"), 1)
    assert gpu.device.type == "cuda" and y.device.type == "cuda"
    assert torch.allclose(gpu.cpu(), cpu, atol=1e-5)


# ---------------------------------------------------------------- streaming image folder


def write_folder(root, per_class=5, size=(6, 6)):
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", per_class), ("test", 2)):
        for c in ("cat", "dog", "eel"):
            (root / split / c).mkdir(parents=True)
            for i in range(n):
                arr = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
                Image.fromarray(arr).save(root / split / c / f"{i}.png")


def test_streaming_folder_yields_what_the_in_memory_loader_yields(tmp_path):
    write_folder(tmp_path)
    splits = load_dataset(f"imagefolder:{tmp_path}")
    aug = Augment(crop_padding=1, flip=True)
    kw = dict(shuffle=True, augment=aug, mean=splits.mean, std=splits.std, seed=9)
    memory = Loader(splits.train, 4, **kw)
    stream = StreamingImageFolder(tmp_path / "train", 4, workers=2, **kw)
    assert len(stream) == len(memory) == 4 and stream.num_examples == 15
    assert stream.classes == ["cat", "dog", "eel"]
    for epoch in (0, 1):
        xm, ym = collect(memory, epoch)
        xs, ys = collect(stream, epoch)
        assert torch.equal(ym, ys) and torch.allclose(xm, xs)
    tail = torch.cat([x for x, _ in stream.batches(1, start=3)])
    assert torch.allclose(tail, xm[12:])

    subset = StreamingImageFolder(tmp_path / "train", 2, indices=[0, 5, 10], normalize=False)
    x, y = collect(subset)
    assert y.tolist() == [0, 1, 2]
    assert torch.allclose(x, splits.train.images[[0, 5, 10]].float() / 255)
    test = StreamingImageFolder(tmp_path / "test", 3, classes=splits.classes)
    assert test.labels.tolist() == [0, 0, 1, 1, 2, 2]


def test_streaming_folder_size_and_channel_handling(tmp_path):
    write_folder(tmp_path / "a")
    gray = StreamingImageFolder(tmp_path / "a" / "train", 5, channels=1, image_size=4)
    x, _ = collect(gray)
    assert x.shape == (15, 1, 4, 4)
    from PIL import Image

    Image.fromarray(np.zeros((9, 9, 3), np.uint8)).save(tmp_path / "a" / "train" / "dog" / "z.png")
    odd = StreamingImageFolder(tmp_path / "a" / "train", 16, normalize=False)
    with pytest.raises(DataError, match="image_size"):
        collect(odd)

import math

import numpy as np
import pytest
import torch
from PIL import Image

from ssmprune_cli.data.images import find_images, iter_batches, load_image, preprocess
from ssmprune_cli.data.tensor_data import TensorImages, normalise
from ssmprune_cli.errors import DataError


def test_imagefolder_real_cifar(cifar_test_dir):
    s = find_images(cifar_test_dir)
    assert len(s) == 120 and len(s.classes) == 10
    assert s.classes == sorted(s.classes)
    assert sorted(set(s.labels)) == list(range(10))
    sub = find_images(cifar_test_dir, limit=25, seed=3)
    assert len(sub) == 25 and sub.paths == find_images(cifar_test_dir, limit=25, seed=3).paths
    assert sub.paths != find_images(cifar_test_dir, limit=25, seed=4).paths
    x, y = next(iter_batches(sub, 8, (32, 32), (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)))
    assert x.shape == (8, 3, 32, 32) and y.shape == (8,)
    raw = np.asarray(Image.open(sub.paths[0]).convert("RGB"), dtype=np.float64) / 255.0
    want = (torch.from_numpy(raw).permute(2, 0, 1) - 0.5) / 0.25
    torch.testing.assert_close(x[0].double(), want, rtol=0, atol=1e-5)


def _reference_resize_crop(img, size, crop_pct=0.875):
    """The ImageNet evaluation transform as timm/torchvision define it, written out with PIL alone: the shorter
    side to floor(size / crop_pct) (bicubic, the longer side truncated in proportion), then a centred crop whose
    offsets are round((side - size) / 2)."""
    w, h = img.size
    scale = math.floor(size / crop_pct)
    new = (scale, int(scale * h / w)) if w <= h else (int(scale * w / h), scale)
    img = img.convert("RGB").resize(new, Image.BICUBIC)
    left, top = int(round((new[0] - size) / 2.0)), int(round((new[1] - size) / 2.0))
    return np.asarray(img.crop((left, top, left + size, top + size)), dtype=np.float64) / 255.0


@pytest.mark.parametrize("shape", [(40, 60), (37, 23), (16, 17)])
def test_resize_and_centre_crop_values(shape):
    """Not only shape and range: every value equals the reference transform (a stretch or an off-by-one crop
    fails here)."""
    h, w = shape
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (h, w, 3), dtype=np.uint8))
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    x = preprocess(img, (16, 16), mean, std)
    m, s = (torch.tensor(v, dtype=torch.float64)[:, None, None] for v in (mean, std))
    want = (torch.from_numpy(_reference_resize_crop(img, 16)).permute(2, 0, 1) - m) / s
    assert x.shape == (3, 16, 16)
    torch.testing.assert_close(x.double(), want, rtol=0, atol=1e-5)


def test_training_and_evaluation_see_the_same_pixels(tmp_path):
    """One preprocessing path: with augmentation off, the tensor a model trains on (decoded once into memory,
    normalised per batch) equals the one it is evaluated on, for a non-square photo-like image."""
    folder = tmp_path / "set" / "cls"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    for i, (h, w) in enumerate([(48, 80), (90, 30), (16, 16)]):
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    images = find_images(tmp_path / "set")
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    train = normalise(TensorImages.from_image_set(images, (16, 16)).images, mean, std)
    evaluated = torch.stack([load_image(p, (16, 16), mean, std) for p in images.paths])
    assert torch.equal(train, evaluated)
    stretched = np.array(Image.open(images.paths[0]).convert("RGB").resize((16, 16), Image.BICUBIC))
    stretched = (torch.from_numpy(stretched).permute(2, 0, 1).double() / 255 - torch.tensor(mean)[:, None, None]
                 ) / torch.tensor(std)[:, None, None]
    assert (train[0].double() - stretched).abs().max() > 0.1  # a stretch is told apart from the crop


def test_flat_folder_and_errors(tmp_path):
    flat = tmp_path / "flat"
    flat.mkdir()
    for i in range(3):
        Image.new("RGB", (8, 8), (i, 0, 0)).save(flat / f"{i}.png")
    s = find_images(flat)
    assert len(s) == 3 and s.labels == [-1, -1, -1] and s.classes == []
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="no images"):
        find_images(empty)
    with pytest.raises(DataError, match="does not exist"):
        find_images(tmp_path / "missing")
    (flat / "bad.jpg").write_bytes(b"not an image")
    s = find_images(flat)
    with pytest.raises(DataError, match="cannot read image"):
        list(iter_batches(s, 4, (8, 8), (0, 0, 0), (1, 1, 1)))

import numpy as np
import pytest
import torch
from PIL import Image

from ssmprune_cli.data.images import find_images, iter_batches, preprocess
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


def test_resize_and_centre_crop():
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 60, 3), dtype=np.uint8))
    x = preprocess(img, (16, 16), (0, 0, 0), (1, 1, 1))
    assert x.shape == (3, 16, 16)
    assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0


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

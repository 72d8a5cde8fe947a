"""Image folders as users have them: grayscale, palette, 16-bit and tiny images are read (converted to RGB,
scaled by the model's transform); other files are skipped with a count shown once per folder (hidden files
silently); a file named as an image that is not one, or is corrupt, stops the run with one line naming it,
before any output is written."""

import logging

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from ssmprune_cli import cli
from ssmprune_cli.data.images import find_images, image_array
from ssmprune_cli.errors import DataError


def _save(path, mode, size, fmt):
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.random.default_rng(0).integers(0, 255, size=(size[1], size[0]) + ((3,) if mode == "RGB" else ()))
    img = Image.fromarray(arr.astype(np.uint16 if mode == "I;16" else np.uint8))
    img.convert(mode).save(path, fmt)
    return path


@pytest.mark.parametrize("mode, size, fmt, suffix", [
    ("L", (40, 40), "JPEG", ".jpg"),          # grayscale
    ("P", (32, 48), "PNG", ".png"),           # palette, not square
    ("RGBA", (32, 32), "PNG", ".png"),        # alpha
    ("I;16", (36, 36), "PNG", ".png"),        # 16-bit grayscale
    ("RGB", (1, 1), "PNG", ".png"),           # tiny: scaled up by the transform
])
def test_unusual_images_are_read_as_rgb_at_the_model_size(tmp_path, mode, size, fmt, suffix):
    path = _save(tmp_path / f"x{suffix}", mode, size, fmt)
    arr = image_array(path, (32, 32))
    assert arr.shape == (32, 32, 3) and arr.dtype == np.uint8


@pytest.fixture
def notes_seen(caplog):
    """The package's notes, also after a CLI test in this process stopped `ssmprune` propagating to root."""
    logger = logging.getLogger("ssmprune")
    logger.addHandler(caplog.handler)
    with caplog.at_level(logging.INFO, logger="ssmprune"):
        yield lambda: sorted({r.getMessage() for r in caplog.records})
    logger.removeHandler(caplog.handler)


def test_hidden_and_other_files_are_skipped_with_a_count(tmp_path, notes_seen):
    _save(tmp_path / "a" / "1.jpg", "RGB", (32, 32), "JPEG")
    _save(tmp_path / "b" / "2.png", "L", (8, 8), "PNG")
    (tmp_path / "a" / "._1.jpg").write_bytes(b"\x00\x05\x16\x07 macOS resource fork")
    (tmp_path / "a" / ".DS_Store").write_bytes(b"junk")
    (tmp_path / "a" / "notes.txt").write_text("not an image")
    (tmp_path / "b" / "labels.csv").write_text("2.png,b")
    _save(tmp_path / "stray.jpg", "RGB", (4, 4), "JPEG")  # beside the class folders: in no class
    assert [p.name for p in find_images(tmp_path).paths] == ["1.jpg", "2.png"]
    assert notes_seen() == [f"{tmp_path}: skipped 3 file(s) not images by name or outside the class folders "
                            "(stray.jpg, a/notes.txt, b/labels.csv); using 2 images"]
    find_images(tmp_path, limit=1)  # a second listing of the same folder (--calib and --val) says nothing new
    assert len(notes_seen()) == 1


def test_a_clean_folder_says_nothing(tmp_path, notes_seen):
    _save(tmp_path / "1.jpg", "RGB", (32, 32), "JPEG")
    (tmp_path / ".DS_Store").write_bytes(b"junk")
    assert len(find_images(tmp_path)) == 1 and notes_seen() == []


@pytest.mark.parametrize("content, words", [
    (b"this is text, not a JPEG", "not an image"),
    (b"", "not an image"),
    ("truncated", "truncated or corrupt"),
    ("missing", "No such file"),
])
def test_a_broken_image_is_one_clear_error(tmp_path, content, words):
    path = tmp_path / "bad.jpg"
    if content == "truncated":
        _save(path, "RGB", (64, 64), "JPEG")
        path.write_bytes(path.read_bytes()[:200])
    elif content != "missing":  # listed, then deleted before it was read
        path.write_bytes(content)
    with pytest.raises(DataError, match=words) as info:
        image_array(path, (32, 32))
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_prune_refuses_a_corrupt_calibration_image_and_writes_nothing(tmp_path, cifar_test_dir):
    data = tmp_path / "data"
    for cls in ("airplane", "cat"):
        src = sorted((cifar_test_dir / cls).iterdir())[:4]
        (data / cls).mkdir(parents=True)
        for p in src:
            (data / cls / p.name).write_bytes(p.read_bytes())
    (data / "cat" / "zz_broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 cut short")
    try:
        runner = CliRunner(mix_stderr=False)
    except TypeError:
        runner = CliRunner()
    res = runner.invoke(cli.app, ["prune", "--ratio", "0.3", "--calib", str(data), "-o", str(tmp_path / "out"),
                                  "--no-progress"])
    assert res.exit_code == 2
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "zz_broken.jpg" in last and "Traceback" not in res.stderr
    assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["data"]  # no temporary folder left behind

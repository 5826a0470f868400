import pytest

from minigpt_ray.outputs import atomic_directory, atomic_write_text, remove_directory


def test_failed_write_keeps_the_old_directory(tmp_path):
    final = tmp_path / "model"
    with atomic_directory(final) as staging:
        (staging / "weights").write_text("v1")
    with pytest.raises(RuntimeError), atomic_directory(final) as staging:
        (staging / "weights").write_text("half")
        raise RuntimeError("interrupted")
    assert (final / "weights").read_text() == "v1"
    assert [p.name for p in tmp_path.iterdir()] == ["model"]  # no staging left behind


def test_replace_and_text(tmp_path):
    final = tmp_path / "model"
    for version in ("v1", "v2"):
        with atomic_directory(final) as staging:
            (staging / "weights").write_text(version)
    assert (final / "weights").read_text() == "v2"
    atomic_write_text(tmp_path / "m.json", "{}")
    assert (tmp_path / "m.json").read_text() == "{}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.json", "model"]


def test_remove_directory_leaves_nothing_behind(tmp_path):

    (tmp_path / "winner").mkdir()
    (tmp_path / "winner" / "manifest.json").write_text("{}")
    assert remove_directory(tmp_path / "winner") and list(tmp_path.iterdir()) == []
    assert not remove_directory(tmp_path / "winner")  # nothing to remove

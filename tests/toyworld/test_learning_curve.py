"""A trainer's log read back (a step logged twice keeps its last line) and drawn as a PNG."""

import pytest

pytest.importorskip("PIL")

from ditflow_fast.toyworld.media import read_train_log, save_learning_curve  # noqa: E402


def test_log_rows_and_curve(tmp_path):
    log = tmp_path / "train_log.txt"
    log.write_text("# {}\n# step elapsed loss lr\n50 1.0 2.0 1e-4\n100 2.0 1.0 6e-4\n"
                   "100 2.5 0.9 6e-4\n150 3.0 0.5 2e-5\n")
    rows = read_train_log(log)
    assert rows.shape == (3, 4) and rows[:, 0].tolist() == [50, 100, 150] and rows[1, 2] == 0.9
    from PIL import Image

    png = save_learning_curve(tmp_path / "c.png", rows, title="t", size=(320, 160))
    assert Image.open(png).size == (320, 160)
    with pytest.raises(ValueError, match="at least 2"):
        save_learning_curve(tmp_path / "d.png", rows[:1], title="t")
    assert not (tmp_path / "d.png").exists()

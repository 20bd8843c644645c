"""The command line's info and amf subcommands."""

from ditflow_fast.cli.main import main


def test_info_lists_backends(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "torch" in out and "reference" in out and "available" in out


def test_amf_reports_the_backend_it_used(capsys):
    assert main(["amf", "--random", "--frames", "2", "--height", "3", "--width", "4"]) == 0
    out = capsys.readouterr().out
    used = out.split("backend: ", 1)[1].split()[0]
    assert used in ("torch", "cpu") and "shape (1, 2, 2, 12, 2)" in out


def test_amf_bad_argument_is_a_clean_error(capsys):
    assert main(["amf", "--random", "--temperature", "0"]) == 2
    assert "temperature must be finite and > 0" in capsys.readouterr().err


def test_a_reader_that_leaves_early_gets_no_traceback():
    """``ditflow-fast ... | head -1``: the closed pipe ends the command quietly (exit 0), not with a traceback."""
    import subprocess
    import sys

    cmd = (f"{sys.executable} -m ditflow_fast.cli transfer --dry-run --model Wan-AI/Wan2.2-T2V-A14B-Diffusers "
           "| head -c 10 > /dev/null; exit ${PIPESTATUS[0]}")
    res = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and "Traceback" not in res.stderr, res.stderr

"""scripts/gpu_benchmarks.sh's plumbing on the CPU: arguments refused before any work, a section
that runs past its time limit recorded (and what it wrote kept), and ``--apply`` of a GPU run's
folder into docs/ (the CPU section kept). The full quick run is in test_benchmarks_smoke.py."""
import re
import tarfile

import pytest

from benchmarks.document import parse_sections, write_section
from test_benchmarks_smoke import run_script


@pytest.mark.parametrize("args, message", [
    (["--device", "gpu"], "--device must be cpu or cuda, got 'gpu'"),
    (["--sections", "3"], "--sections must be 1, 2 or 1,2"),
    (["--timeout", "5"], "--timeout must be an integer >= 30"),
    (["--seeds", "one"], "--seeds must be integers"),
    (["--section2-timeout", "0"], "--section2-timeout must be an integer >= 1"),
    (["--rows"], "--rows needs a value"),
    (["--budget", "paper"], "unknown argument '--budget'"),
])
def test_bad_arguments_are_refused_before_any_work(tmp_path, args, message):
    out = tmp_path / "out"
    proc = run_script(["--out", str(out), *args], tmp_path)
    assert proc.returncode == 2 and message in proc.stderr
    assert not out.exists()


def test_an_existing_folder_is_not_written_into(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("keep")
    proc = run_script(["--device", "cpu", "--out", str(out)], tmp_path)
    assert proc.returncode == 2 and "is not empty" in proc.stderr
    assert [p.name for p in out.iterdir()] == ["mine.txt"]


def test_a_section_past_its_time_limit_is_recorded_and_its_output_kept(tmp_path):
    out = tmp_path / "out"
    proc = run_script(["--device", "cpu", "--sections", "2", "--section2-timeout", "3", "--out", str(out)], tmp_path,
                      FAKE_REPRODUCE_SECONDS="120")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    status = (out / "status.txt").read_text()
    assert re.search(r"^section_2 rc=124 seconds=\d+ limit=3 \(timed out\)$", status, re.M)
    assert "section_1" not in status and "no targets table" in proc.stdout
    assert "fake reproduction started" in (out / "reproduce.log").read_text()
    with tarfile.open(out / "reproduce.tar.gz") as tar:
        assert "reproduce/table.md" in tar.getnames()
    args = ["--budget", "paper", "--out", str(out / "reproduce"), "--rows", "vq", "cosine", "bbnr", "arcvq",
            "--seeds", "1", "--no-progress-bar"]
    with tarfile.open(out / "reproduce.tar.gz") as tar:
        assert tar.extractfile("reproduce/args.json").read().decode().endswith(
            ", ".join(f'"{a}"' for a in args) + "]")


def _gpu_run_folder(path, section_1_rc=0):
    """What a ``--device cuda`` run leaves in its folder (made here by hand)."""
    path.mkdir()
    (path / "status.txt").write_text(f"device=cuda\nquick=0\nsections=1,2\ntimeout=570\n"
                                     f"section_1 rc={section_1_rc} seconds=100 limit=240\n"
                                     "section_2 rc=0 seconds=400 limit=460\n")
    (path / "machine.txt").write_text("NVIDIA H200\n")
    write_section(path / "BENCHMARKS.md", "cpu", "the GPU machine's CPU figures")
    write_section(path / "BENCHMARKS.md", "cuda", "GPU figures")
    (path / "reproduce" / "checkpoints").mkdir(parents=True)
    (path / "reproduce" / "table.md").write_text("| Method | PSNR |\n")
    with tarfile.open(path / "reproduce.tar.gz", "w:gz") as tar:
        tar.add(path / "reproduce", arcname="reproduce")


def test_apply_puts_a_gpu_run_into_docs(tmp_path):
    run, docs = tmp_path / "run", tmp_path / "docs"
    _gpu_run_folder(run)
    write_section(docs / "BENCHMARKS.md", "cpu", "CPU figures")
    (docs / "gpu" / "reproduce").mkdir(parents=True)
    (docs / "gpu" / "reproduce" / "stale.png").write_text("from an earlier run")
    proc = run_script(["--apply", str(run), "--docs", str(docs)], tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert parse_sections((docs / "BENCHMARKS.md").read_text()) == {"cpu": "CPU figures", "cuda": "GPU figures"}
    assert sorted(p.name for p in (docs / "gpu").iterdir()) == ["machine.txt", "reproduce", "status.txt"]
    assert sorted(p.name for p in (docs / "gpu" / "reproduce").iterdir()) == ["checkpoints", "table.md"]

    failed = tmp_path / "failed"  # section 1 did not finish: the report is left alone
    _gpu_run_folder(failed, section_1_rc=124)
    write_section(docs / "BENCHMARKS.md", "cuda", "earlier GPU figures")
    proc = run_script(["--apply", str(failed), "--docs", str(docs)], tmp_path)
    assert proc.returncode == 0 and "left as it is" in proc.stdout
    assert parse_sections((docs / "BENCHMARKS.md").read_text())["cuda"] == "earlier GPU figures"


@pytest.mark.parametrize("status, message", [
    ("device=cpu\nquick=0\n", "only cuda runs are applied"),
    ("device=cuda\nquick=1\n", "a --quick run"),
    (None, "no status.txt"),
])
def test_apply_refuses_what_is_not_a_full_gpu_run(tmp_path, status, message):
    run, docs = tmp_path / "run", tmp_path / "docs"
    run.mkdir()
    if status:
        (run / "status.txt").write_text(status)
    proc = run_script(["--apply", str(run), "--docs", str(docs)], tmp_path)
    assert proc.returncode == 2 and message in proc.stderr and not docs.exists()

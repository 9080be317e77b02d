"""The project's sample data lives in data/ at the top, and make-tiny-model's wheel carries it."""

import shutil
import subprocess
import zipfile

from repo_helpers import REPO

from make_tiny_model.sample_data import SAMPLE_CONVERSATIONS


def test_a_checkout_reads_the_sample_from_the_top_level_data_folder():
    assert SAMPLE_CONVERSATIONS == REPO / "data" / "sft_sample.json"


def test_the_wheel_carries_every_file_of_data(tmp_path):
    uv = shutil.which("uv")
    assert uv, "uv is needed to build the wheel (pip install uv)"
    subprocess.run(
        [uv, "build", "--wheel", "--quiet", "-o", str(tmp_path), str(REPO / "tools" / "make_tiny_model")], check=True
    )
    (wheel,) = tmp_path.glob("make_tiny_model-*.whl")
    packaged = {name for name in zipfile.ZipFile(wheel).namelist() if name.startswith("make_tiny_model/data/")}
    expected = {
        f"make_tiny_model/data/{p.relative_to(REPO / 'data')}" for p in (REPO / "data").rglob("*") if p.is_file()
    }
    assert packaged == expected

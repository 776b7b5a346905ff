import subprocess
import sys

from click.testing import CliRunner

from humpback_lite.cli import main


def test_help_lists_every_command():
    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0
    for cmd in ("run", "status", "models", "segment", "augment", "score", "train"):
        assert cmd in result.output


def test_light_commands_never_import_torch(tmp_path):
    # --help, status and the llama.cpp-only stages must stay fast: no torch/transformers import.
    code = (
        "import sys\n"
        "from click.testing import CliRunner\n"
        "from humpback_lite.cli import main\n"
        "import humpback_lite.loop, humpback_lite.curate, humpback_lite.augment, humpback_lite.engine\n"
        "CliRunner().invoke(main, ['--help'])\n"
        "assert 'torch' not in sys.modules and 'transformers' not in sys.modules, 'heavy import'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_python_dash_m_works():
    out = subprocess.run([sys.executable, "-m", "humpback_lite", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and "humpback" in out.stdout

"""The README's commands and Python example stay true."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_readme_opens_with_quickstart_and_test_commands_and_ci_runs_the_test_one():
    first_block = re.search(r"```bash\n(.*?)```", README, re.S).group(1).splitlines()
    install_run, install_test = (line.split("#")[0].strip() for line in first_block[:2])
    assert install_run.endswith("kdlab quickstart")
    assert "pytest" in install_test
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert install_test in [line.strip() for line in ci]


def test_python_example_runs_and_distills(capsys):
    code = re.search(r"```python\n(.*?)```", README, re.S).group(1)
    code = code.replace("epochs=40", "epochs=5").replace("epochs=60", "epochs=5")
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    metrics = namespace["result"].metrics
    assert {"accuracy", "agreement", "kl_to_teacher", "distill_error", "ece"} <= set(metrics)
    assert metrics["accuracy"] > 0.5  # 5 epochs on digits already learn most digits

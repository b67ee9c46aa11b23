"""What `musicgend run` imports before its ports open: nothing heavy (a property, not a timing).

TensorFlow, Keras, music21, matplotlib and pretty_midi each cost from 0.1 s to several
seconds of start-up and tens of MB; the CLI and the daemon's start-up modules must not pull
them in (nor NumPy, which the daemon imports in its model-loading thread).
"""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = ("tensorflow", "keras", "music21", "matplotlib", "pretty_midi", "rich.progress")
IN_MODEL_THREAD = ("numpy", "musicgend.service.engine", "musicgend.model.runtime", "mido")

PROBE = """
import json, sys
import musicgend.cli, musicgend.config, musicgend.io.jackserver, musicgend.io.midi
import musicgend.io.session, musicgend.service.runtime
print(json.dumps(sorted(sys.modules)))
"""


def _modules_after(code: str) -> set[str]:
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    return set(json.loads(out.stdout.splitlines()[-1]))


def test_cli_and_daemon_start_up_modules_import_nothing_heavy() -> None:
    loaded = _modules_after(PROBE)
    assert "musicgend.service.runtime" in loaded  # the probe did import the daemon
    heavy = sorted(m for m in loaded if m.split(".")[0] in HEAVY or m in HEAVY)
    assert heavy == []
    early = sorted(m for m in IN_MODEL_THREAD if m in loaded)
    assert early == []


def test_model_runtime_for_the_cpu_path_imports_no_tensorflow() -> None:
    code = (
        "import json, sys\n"
        "import musicgend.model.runtime, musicgend.service.engine\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    loaded = _modules_after(code)
    assert "numpy" in loaded
    assert not {m.split(".")[0] for m in loaded} & {"tensorflow", "keras", "music21", "matplotlib"}

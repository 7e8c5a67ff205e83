"""`python tests/nvemu`: build the emulator module ahead of the test run (make test)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import nvemu  # noqa: E402

if nvemu.supported():
    print(f"nvemu: {nvemu.build()}")
else:
    print("nvemu: off here (NESTVEC_EMU=OFF, or not Linux)")

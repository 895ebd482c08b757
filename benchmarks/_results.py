"""How every benchmark writes its result: the measured fields plus the exact command and the machine
(the CPU is shared, so the load average is kept beside the numbers), as JSON under results/."""
import json
import os
import platform
import shlex
import sys
from pathlib import Path

import torch


def write_result(path, result: dict) -> None:
    """Write `result` with "command" and "machine" added; print where it went."""
    record = {
        "command": " ".join(shlex.quote(a) for a in ["python", *sys.argv]),
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(), "torch": torch.__version__,
                    "device": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
                    "load_average_1_5_15min": os.getloadavg()},
        **result,
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {path}")

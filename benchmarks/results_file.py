"""Write one benchmark's section of benchmarks/RESULTS.md, leaving the other sections alone."""

from __future__ import annotations

import os
import platform
import tempfile
from datetime import datetime, timezone
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
HEADER = "# Benchmark results\n\nWritten by `make bench`; each section by the script named in it.\n"


def machine_description() -> str:
    """One line naming the machine the numbers come from."""
    import torch

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU only"
    return (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {device}, "
        f"torch {torch.__version__}, Python {platform.python_version()}"
    )


def update_section(name: str, body: str) -> Path:
    """Replace (or append) the section delimited by markers for `name`; atomic write."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    section = f"{start}\n## {name}\n\n_{stamp}; {machine_description()}_\n\n{body.strip()}\n{end}"
    text = RESULTS.read_text() if RESULTS.exists() else HEADER
    if start in text and end in text:
        before, rest = text.split(start, 1)
        _, after = rest.split(end, 1)
        text = before + section + after
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    with tempfile.NamedTemporaryFile("w", dir=RESULTS.parent, delete=False) as tmp:
        tmp.write(text)
    os.replace(tmp.name, RESULTS)
    return RESULTS

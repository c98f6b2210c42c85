"""Print the package-index options pip is configured with here, as uv options.

The Makefile installs with uv, which reads neither pip's configuration files nor its PIP_*
variables. Where pip is pointed at a mirror or a folder of wheels, uv gets the same places, so
both install the same files. Prints nothing where pip has no such settings (plain PyPI).
"""

from __future__ import annotations

import re
import subprocess
import sys

# `pip config list` lines look like  global.extra-index-url='https://a https://b'
SETTING = re.compile(r"^[^.\s]*\.(index-url|extra-index-url|find-links)='(.*)'$")


def uv_options(pip_config_list: str) -> list[str]:
    """uv options for the index settings in `pip config list` output, each place once."""
    options: list[str] = []
    seen: set[tuple[str, str]] = set()
    for line in pip_config_list.splitlines():
        match = SETTING.match(line.strip())
        if not match:
            continue
        key, values = match.groups()
        for value in values.split():
            if (key, value) not in seen:
                seen.add((key, value))
                options += [f"--{key}", value]
    return options


if __name__ == "__main__":
    listed = subprocess.run([sys.executable, "-m", "pip", "config", "list"],
                            capture_output=True, text=True).stdout
    print(" ".join(uv_options(listed)))

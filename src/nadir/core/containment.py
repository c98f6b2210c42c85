"""Where an untrusted name lands: archive members, S3 keys and STAC hrefs stay in their folder.

The check is on the resolved path, not on the name's spelling: a name is joined to its folder,
backslashes count as separators (archives made on Windows, and a name that would escape there),
every symbolic link already on disk is followed, and the result must lie strictly inside the
folder. Absolute names, `..` in any position, names that resolve to the folder itself and names
routed through a link that points out are all refused by the same test; so are names the file
system could not hold (a part longer than 255 bytes), before anything is fetched.
"""

from __future__ import annotations

import os
from pathlib import Path

from nadir.core.errors import InputError

NAME_MAX = 255  # bytes in one file or folder name on Linux file systems


def contained(root: Path, name: str, what: str, origin: str | Path,
              folder_itself: bool = False) -> Path:
    """The resolved path where `name` (an untrusted relative name) lands under `root`.

    `what` names the input in the error ("member 'a/b'", "key 'x'"), `origin` where it came
    from (the archive, s3://bucket, the STAC file); `folder_itself` allows `root` itself (a
    directory entry such as `./`)."""
    base = Path(root).resolve()
    try:
        target = (base / name.replace("\\", "/")).resolve()
    except (ValueError, OSError) as exc:  # NUL bytes, link loops
        raise InputError(origin, f"{what} is not a usable path ({exc}); refused") from None
    if any(len(os.fsencode(part)) > NAME_MAX for part in target.parts):
        raise InputError(origin, f"{what} has a name longer than the {NAME_MAX} bytes file "
                                 "systems allow; refused")
    if target == base and folder_itself:
        return target
    if target == base or not target.is_relative_to(base):
        raise InputError(origin, f"{what} leads outside {root} (it resolves to {target}); "
                                 "refused")
    return target

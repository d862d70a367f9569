"""Agent skills on disk: finding SKILL.md files, checking their front matter, listing resources.

A skill is a directory holding `SKILL.md`: YAML front matter (`name`, `description`) between two
`---` lines, then Markdown instructions. Any other UTF-8 text file in the directory is a resource
the model may read. Each configured path is one skill directory or a directory of them (SKILL.md
files are looked for down to `MAX_DEPTH` levels below it, as upstream does).

Everything is read once, at start-up; a problem is a configuration error naming the SKILL.md file
and line. Every size is bounded: the number of skills, of files walked and of resources, the size
of SKILL.md and of a resource the model reads.
"""

from __future__ import annotations

import codecs
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap
from ruamel.yaml.error import MarkedYAMLError, YAMLError

SKILL_FILE = "SKILL.md"
# How deep below a configured path SKILL.md files are looked for (upstream's default).
MAX_DEPTH = 3
MAX_SKILLS = 200
MAX_SKILL_FILE_BYTES = 256 * 1024
MAX_NAME = 64
MAX_DESCRIPTION = 1024
# Files and directories looked at while walking one configured path or one skill's directory.
MAX_WALK_ENTRIES = 10_000
MAX_RESOURCES = 500
# A resource larger than this is listed but not read (the model gets an error instead).
MAX_RESOURCE_BYTES = 512 * 1024
# The agentskills.io naming rule: lowercase letters and digits in groups joined by one hyphen.
NAME_RULE = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)*\Z", re.ASCII)
# Never resources: tooling noise (upstream's default exclusions).
IGNORED = ("__pycache__", ".git", ".DS_Store")
IGNORED_SUFFIXES = (".pyc", ".pyo")
_SNIFF_BYTES = 64 * 1024


class SkillError(Exception):
    """A skill directory or SKILL.md that cannot be used; the message names file and line."""


@dataclass(frozen=True)
class Skill:
    name: str
    description: str
    directory: Path  # resolved
    instructions: str  # the Markdown after the front matter, stripped
    resources: tuple[str, ...] = field(default=())  # paths relative to `directory`, POSIX style


@dataclass(frozen=True)
class Catalog:
    """The loaded skills, sorted by name."""

    skills: tuple[Skill, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.skills)

    def get(self, name: str) -> Skill | None:
        return next((s for s in self.skills if s.name == name), None)

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.skills]


def load_catalog(paths: list[str]) -> Catalog:
    """Every skill under `paths`; raises `PathError` naming the first path that fails."""
    found: dict[str, Skill] = {}
    for index, raw in enumerate(paths):
        try:
            for skill in _skills_under(Path(raw).expanduser()):
                earlier = found.get(skill.name)
                if earlier is not None:
                    raise SkillError(f"{skill.directory / SKILL_FILE}: skill name "
                                     f"{skill.name!r} is also used by "
                                     f"{earlier.directory / SKILL_FILE}; names must be unique")
                found[skill.name] = skill
                if len(found) > MAX_SKILLS:
                    raise SkillError(f"more than {MAX_SKILLS} skills are configured")
        except SkillError as exc:
            raise PathError(index, str(exc)) from None
    return Catalog(tuple(sorted(found.values(), key=lambda s: s.name)))


class PathError(SkillError):
    """A `SkillError` about the configured path at `index` of `skills.paths`."""

    def __init__(self, index: int, message: str) -> None:
        super().__init__(message)
        self.index = index


def _skills_under(path: Path) -> list[Skill]:
    if not path.exists():
        raise SkillError(f"skill path {str(path)!r} does not exist")
    if not path.is_dir():
        raise SkillError(f"skill path {str(path)!r} is not a directory")
    files = _find_skill_files(path.resolve())
    if not files:
        raise SkillError(f"no {SKILL_FILE} in {str(path)!r} nor in its subdirectories (down "
                         f"to {MAX_DEPTH} levels)")
    return [read_skill(file.parent) for file in files]


def _find_skill_files(root: Path) -> list[Path]:
    """SKILL.md files at most MAX_DEPTH levels below `root`, walking a bounded number of
    entries; a skill's own subdirectories are not searched for further skills."""
    found: list[Path] = []
    walked = 0
    level = [root]
    for depth in range(MAX_DEPTH + 1):
        below: list[Path] = []
        for directory in level:
            if (directory / SKILL_FILE).is_file():
                found.append(directory / SKILL_FILE)
                continue
            if depth == MAX_DEPTH:
                continue
            for entry in _entries(directory):
                walked += 1
                if walked > MAX_WALK_ENTRIES:
                    raise SkillError(f"more than {MAX_WALK_ENTRIES} files and directories "
                                     f"under {str(root)!r}; point skills.paths at the skill "
                                     f"directories themselves")
                if entry.is_dir(follow_symlinks=False) and entry.name not in IGNORED:
                    below.append(Path(entry.path))
        level = sorted(below)
    return sorted(found)


def _entries(directory: Path) -> list[os.DirEntry[str]]:
    try:
        with os.scandir(directory) as it:
            return list(it)
    except OSError as exc:
        raise SkillError(f"cannot read directory {str(directory)!r}: {exc.strerror}") from None


def read_skill(directory: Path) -> Skill:
    """One skill directory: its SKILL.md checked, its resources listed."""
    directory = directory.resolve()
    file = directory / SKILL_FILE
    text = _read_skill_file(file)
    meta, meta_lines, instructions = _front_matter(file, text)

    def fail(key: str, message: str) -> SkillError:
        return SkillError(f"{file}:{meta_lines.get(key, 1)}: {key}: {message}")

    name = meta.get("name")
    if name is None or name == "":
        raise fail("name", "required key is missing")
    if not isinstance(name, str):
        raise fail("name", "must be a string")
    if len(name) > MAX_NAME:
        raise fail("name", f"must be at most {MAX_NAME} characters (is {len(name)})")
    if not NAME_RULE.match(name):
        raise fail("name", f"{name!r} must be lowercase letters and digits, in groups joined "
                           f"by single hyphens (no hyphen first or last)")
    if name != directory.name:
        raise fail("name", f"{name!r} must match the skill's directory name "
                           f"{directory.name!r}")
    description = meta.get("description")
    if description is None or (isinstance(description, str) and not description.strip()):
        raise fail("description", "required key is missing")
    if not isinstance(description, str):
        raise fail("description", "must be a string")
    description = description.strip()
    if len(description) > MAX_DESCRIPTION:
        raise fail("description", f"must be at most {MAX_DESCRIPTION} characters (is "
                                  f"{len(description)})")
    return Skill(name, description, directory, instructions, _resources(directory))


def _read_skill_file(file: Path) -> str:
    try:
        size = file.stat().st_size
        if size > MAX_SKILL_FILE_BYTES:
            raise SkillError(f"{file}: larger than {MAX_SKILL_FILE_BYTES} bytes ({size}); move "
                             f"reference material into other files of the skill")
        return file.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise SkillError(f"{file}: not UTF-8 text") from None
    except OSError as exc:
        raise SkillError(f"{file}: cannot read: {exc.strerror}") from None


def _front_matter(file: Path, text: str) -> tuple[dict[str, Any], dict[str, int], str]:
    """(front matter, line of each key in the file, instructions)."""
    lines = text.split("\n")
    if not lines or lines[0].rstrip() != "---":
        raise SkillError(f"{file}:1: must begin with YAML front matter (name, description) "
                         f"between two '---' lines")
    end = next((i for i in range(1, len(lines)) if lines[i].rstrip() == "---"), None)
    if end is None:
        raise SkillError(f"{file}:1: the front matter has no closing '---' line")
    try:
        meta = YAML(typ="rt").load("\n".join(lines[1:end]))
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 2 if mark is not None else 1  # +1 for the opening '---'
        raise SkillError(f"{file}:{line}: invalid YAML in the front matter: "
                         f"{exc.problem}") from None
    except YAMLError as exc:
        raise SkillError(f"{file}:1: invalid YAML in the front matter: {exc}") from None
    if meta is None:
        meta = CommentedMap()
    if not isinstance(meta, CommentedMap):
        raise SkillError(f"{file}:2: the front matter must be a mapping of keys "
                         f"(name, description)")
    key_lines: dict[str, int] = {}
    for key in meta:
        try:
            key_lines[str(key)] = meta.lc.key(key)[0] + 2
        except (KeyError, TypeError):
            key_lines[str(key)] = 2
    values = {str(k): _plain(v) for k, v in meta.items()}
    return values, key_lines, "\n".join(lines[end + 1:]).strip()


def _plain(value: Any) -> Any:
    # ruamel's round-trip strings are str subclasses; other scalars stay as they are.
    return str(value) if isinstance(value, str) else value


def _resources(directory: Path) -> tuple[str, ...]:
    """Text files in the skill's directory (not SKILL.md, not inside a nested skill, not
    leading outside the directory through a symbolic link), sorted."""
    names: list[str] = []
    walked = 0
    pending = [directory]
    while pending:
        current = pending.pop()
        for entry in sorted(_entries(current), key=lambda e: e.name):
            walked += 1
            if walked > MAX_WALK_ENTRIES:
                raise SkillError(f"{directory}: more than {MAX_WALK_ENTRIES} files and "
                                 f"directories in the skill")
            if entry.name in IGNORED or entry.name.endswith(IGNORED_SUFFIXES):
                continue
            path = Path(entry.path)
            if not _inside(path, directory):
                continue
            # Linked directories are not followed (a link to a parent would loop).
            if entry.is_dir(follow_symlinks=False):
                if not (path / SKILL_FILE).is_file():
                    pending.append(path)
                continue
            if current == directory and entry.name == SKILL_FILE:
                continue
            if entry.is_file() and _is_text(path):
                names.append(path.relative_to(directory).as_posix())
                if len(names) > MAX_RESOURCES:
                    raise SkillError(f"{directory}: more than {MAX_RESOURCES} resource files")
    return tuple(sorted(names))


def _inside(path: Path, directory: Path) -> bool:
    try:
        return path.resolve().is_relative_to(directory)
    except OSError:
        return False


def _is_text(path: Path) -> bool:
    """Whether the file's beginning decodes as UTF-8 (binary files are not resources)."""
    try:
        with path.open("rb") as handle:
            head = handle.read(_SNIFF_BYTES)
            whole = handle.read(1) == b""
        codecs.getincrementaldecoder("utf-8")().decode(head, final=whole)
    except (OSError, UnicodeDecodeError):
        return False
    return True


class ResourceError(Exception):
    """A resource the model asked for that cannot be given (the message is for the model)."""


def read_resource(skill: Skill, name: str) -> str:
    """The text of resource `name` of `skill`.

    Only names listed at start-up are served, and the file is checked again to lie inside the
    skill's directory (a link changed since start-up is refused), so no name reaches any other
    file.
    """
    if name not in skill.resources:
        listed = ", ".join(skill.resources) or "none"
        raise ResourceError(f"Resource {name!r} not found in skill {skill.name!r}. "
                            f"Available resources: {listed}.")
    path = skill.directory / name
    if not _inside(path, skill.directory):
        raise ResourceError(f"Resource {name!r} of skill {skill.name!r} leads outside the "
                            f"skill's directory")
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_RESOURCE_BYTES + 1)
    except OSError as exc:
        raise ResourceError(f"Resource {name!r} of skill {skill.name!r} cannot be read: "
                            f"{exc.strerror}") from None
    if len(data) > MAX_RESOURCE_BYTES:
        raise ResourceError(f"Resource {name!r} of skill {skill.name!r} is larger than "
                            f"{MAX_RESOURCE_BYTES} bytes")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise ResourceError(f"Resource {name!r} of skill {skill.name!r} is not UTF-8 "
                            f"text") from None

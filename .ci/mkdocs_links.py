"""MkDocs hook (mkdocs.yml: hooks): links from a page of docs/ to the repository's own files.

Pages cite their sources, `../bench/results/<run>/NOTE.md`, `../instyle/zoo/styles.int8.json`, `../README.md`:
files outside docs/, which MkDocs does not know, so it would report each as not found. Here each such link is
checked against the repository instead: one that names no file or folder of it is a warning (the strict build
fails), one that does is left as it is (it works where the pages are read, in the repository) and MkDocs's own
"not found" line for it is dropped. Every other link is MkDocs's to check.
"""
from __future__ import annotations

import logging
import posixpath
import re
from pathlib import Path

log = logging.getLogger("mkdocs.hooks.repo_links")
# inline links and images, [text](target) / ![alt](target), outside code spans and fenced blocks
_LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
_FENCE = re.compile(r"^```.*?^```", re.S | re.M)
_CODE = re.compile(r"`[^`\n]*`")
_NOT_FOUND = re.compile(r"Doc file '([^']+)' contains (?:a|an unrecognized relative) link '([^']+)'")


class _Repo:
    docs: Path | None = None
    root: Path | None = None

    @classmethod
    def target(cls, src_uri: str, link: str) -> Path | None:
        """The repository path `link` on page `src_uri` names, when it leaves docs/ (else None)."""
        path = link.split("#", 1)[0]
        if cls.docs is None or not path or "://" in path or path.startswith(("/", "mailto:")):
            return None
        full = Path(posixpath.normpath((cls.docs / posixpath.dirname(src_uri) / path).as_posix()))
        return None if full.is_relative_to(cls.docs) else full


class _DropRepoLinks(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        m = _NOT_FOUND.match(record.getMessage())
        if not m:
            return True
        full = _Repo.target(m[1], m[2])
        return not (full is not None and full.is_relative_to(_Repo.root) and full.exists())


def on_config(config):
    _Repo.docs = Path(config["docs_dir"]).resolve()
    _Repo.root = Path(config["config_file_path"]).resolve().parent
    logging.getLogger("mkdocs.structure.pages").addFilter(_DropRepoLinks())
    return config


def on_page_markdown(markdown, page, config, files):
    text = _CODE.sub("", _FENCE.sub("", markdown))
    for link in _LINK.findall(text):
        full = _Repo.target(page.file.src_uri, link)
        if full is None:
            continue
        if not full.is_relative_to(_Repo.root):
            log.warning("Doc file '%s': link '%s' leaves the repository", page.file.src_uri, link)
        elif not full.exists():
            log.warning("Doc file '%s': link '%s' names no file of the repository", page.file.src_uri, link)
    return markdown

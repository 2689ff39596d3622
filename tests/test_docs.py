"""What a new user reads: README.md and docs/ speak of the project, not of its internal tracker."""

from __future__ import annotations

import re

from host_tools.runtime.paths import REPO

DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def test_docs_cite_no_internal_issue_numbers():
    found = []
    for path in DOCS:
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if re.search(r"\bissues?\s*#?\d+|\bthe issue\b", line, re.IGNORECASE):
                found.append(f"{path.name}:{n}: {line.strip()}")
    assert not found, "\n".join(found)


def test_commands_doc_lists_the_actions_as_lanterne_command_help_does():
    from host_tools.backoffice.actions import actions_table

    assert "```\n" + actions_table() + "\n```" in (REPO / "docs" / "commands.md").read_text()

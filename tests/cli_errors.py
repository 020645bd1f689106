"""What every command promises for a user mistake: exit code 2 and one ``error:`` line."""

from __future__ import annotations


def one_line_error(result, *needles: str) -> str:
    """The one error line of a CliRunner result (asserting exit 2 and nothing else printed),
    which must contain every needle."""
    assert result.exit_code == 2, result.output
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]

"""What the command-line adversarial tests share: fast options, a checkpoint that a check made
too late would reach, and running the CLI in-process."""

from __future__ import annotations

from conftest import snapshot

from napari_sam2.cli import main

FAST = ["--image-size", "128", "--device", "cpu", "--quiet"]
NO_MODEL = ["--checkpoint", "does-not-exist.pt"]  # reached only if every input check passed


def run_all(argv, capsys) -> tuple[int, str, str]:
    """Run ``napari-sam2 argv``: (exit code, stdout, stderr)."""
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def run(argv, capsys) -> tuple[int, str]:
    """Run ``napari-sam2 argv``: (exit code, stderr)."""
    code, _, err = run_all(argv, capsys)
    return code, err


def refuses(argv, capsys, root, match: str, code: int = 2) -> str:
    """Run ``argv``; assert the exit code, the message, and that no file changed."""
    before = snapshot(root)
    got, err = run(argv, capsys)
    assert got == code, err
    assert match in err, err
    assert "Traceback" not in err
    assert snapshot(root) == before
    return err

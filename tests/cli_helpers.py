"""Running the command line in a test: exit status, standard output and error, and never a traceback."""

from cnncomp.cli import main


def cli(capsys, *args) -> tuple[int, str, str]:
    """`cnncomp ARGS...` in-process: (exit status, stdout, stderr); a user error must not show a traceback."""
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return code, out, err

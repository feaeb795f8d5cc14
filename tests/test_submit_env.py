"""``submit --`` and ``--each-line`` keep the submitting shell's environment (as pueue
does): a command that works in that shell works when a dispatcher started elsewhere
runs it. Real CLI calls, a real dispatcher, real ``/bin/sh`` jobs."""

from __future__ import annotations

import os
import stat
import subprocess

from conftest import PYTHON, cli, job_env, record, write_script

from gpudispatch.control import env_text

PROBE = 'echo "foo=$FOO tool=$(mytool) job=$GPUDISPATCH_JOB cuda=[$CUDA_VISIBLE_DEVICES]"'


def submitting_shell(tmp_path) -> dict[str, str]:
    """A shell with a variable and a program on its PATH that the dispatcher lacks, and
    values of ours it must not pass on."""
    tools = tmp_path / "venv-bin"
    tools.mkdir()
    write_script(tools / "mytool", "#!/bin/sh\necho tool-ok\n")
    env = job_env()
    env.update(FOO="it's \"quoted\" $HOME\nand two lines", PATH=f"{tools}:{env['PATH']}",
               GPUDISPATCH_JOB="forged.sh", CUDA_VISIBLE_DEVICES="7",
               SLURM_JOB_ID="123")
    env["BASH_FUNC_f%%"] = "() { echo f; }"  # no sh variable: left out, not an error
    return env


def drain(launch, root) -> None:
    proc = launch.run(root, "--slots", "1", "--drain", env=job_env())
    assert proc.wait(60) == 0, proc.output()


def test_a_command_runs_in_the_environment_it_was_submitted_from(launch, root, tmp_path):
    env = submitting_shell(tmp_path)
    kept = cli("submit", "--dir", str(root), "--name", "kept.sh", "--", "sh", "-c", PROBE,
               env=env, check=True)
    bare = cli("submit", "--dir", str(root), "--no-env", "--name", "bare.sh", "--", "sh",
               "-c", PROBE, env=env, check=True)
    assert kept.stdout.split() == ["kept.sh"] and bare.stdout.split() == ["bare.sh"]
    drain(launch, root)
    assert (root / "logs" / "kept.sh.log").read_text() == (
        f"foo={env['FOO']} tool=tool-ok job=kept.sh cuda=[]\n")
    bare_log = (root / "logs" / "bare.sh.log").read_text()
    assert "mytool: not found" in bare_log and "foo= tool= job=bare.sh cuda=[]\n" in bare_log
    assert record(root, "bare.sh")["exit_code"] == 0


def test_each_line_keeps_it_too_and_one_shell_shares_one_private_file(launch, root,
                                                                      tmp_path):
    env = submitting_shell(tmp_path)
    lines = tmp_path / "lines.txt"
    lines.write_text(f"{PROBE}\n{PROBE}\n")
    out = subprocess.run([PYTHON, "-m", "gpudispatch", "submit", "--dir", str(root),
                          "--each-line", str(lines)], env=env, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    cli("submit", "--dir", str(root), "--", "true", env=env, check=True)
    kept = os.listdir(root / ".gpudispatch" / "env")
    assert len(kept) == 1  # three jobs, one shell: one file
    mode = os.stat(root / ".gpudispatch" / "env" / kept[0]).st_mode
    assert stat.S_IMODE(mode) == 0o600  # it may hold secrets
    drain(launch, root)
    for name in out.stdout.split():
        assert (root / "logs" / f"{name}.log").read_text().startswith(
            f"foo={env['FOO']} tool=tool-ok job={name} ")


def test_an_environment_file_that_is_not_the_shells_is_never_used(launch, root, tmp_path):
    """A file at the name the environment's hash gives, holding something else (a
    collision, or planted by the owner's own mistake), is passed over."""
    env = submitting_shell(tmp_path)
    cli("submit", "--dir", str(root), "--", "true", env=env, check=True)
    (kept,) = (root / ".gpudispatch" / "env").iterdir()
    kept.write_text("export FOO=planted\n")
    cli("submit", "--dir", str(root), "--name", "probe.sh", "--", "sh", "-c", PROBE,
        env=env, check=True)
    drain(launch, root)
    assert (root / "logs" / "probe.sh.log").read_text().startswith(f"foo={env['FOO']} ")


def test_env_text_exports_what_sh_can_and_leaves_ours_out() -> None:
    environ = {"A": "x y", "Q": "it's", "NL": "a\nb", "GPUDISPATCH_ROOT": "/r",
               "CUDA_VISIBLE_DEVICES": "0", "SLURM_JOB_ID": "1", "PWD": "/p", "not-a-name": "v",
               "BASH_FUNC_f%%": "() {}", "É": "v"}
    text = env_text(environ)
    out = subprocess.run(["/bin/sh", "-c", f'{text}\nprintf "%s|" "$A" "$Q" "$NL"; env'],
                         capture_output=True, text=True, env={"PATH": os.environ["PATH"]})
    assert out.stdout.startswith("x y|it's|a\nb|")
    for left_out in ("GPUDISPATCH_ROOT", "CUDA_VISIBLE_DEVICES", "SLURM_JOB_ID", "not-a-name",
                     "BASH_FUNC", "É"):
        assert left_out not in text
    assert "export PWD" not in text


def test_names_matching_gpudispatch_env_drop_are_left_out() -> None:
    environ = {"WANDB_API_KEY": "k", "MY_TOKEN_X": "t", "AWS_SECRET": "s", "KEEP": "v",
               "GPUDISPATCH_ENV_DROP": "*TOKEN*:AWS_*::WANDB_API_KEY"}
    text = env_text(environ)
    assert "export KEEP=v" in text
    for dropped in ("WANDB_API_KEY", "MY_TOKEN_X", "AWS_SECRET", "GPUDISPATCH_ENV_DROP"):
        assert dropped not in text
    assert "WANDB_API_KEY" in env_text({"WANDB_API_KEY": "k"})  # kept unless asked

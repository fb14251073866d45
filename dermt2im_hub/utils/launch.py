"""`accelerate launch` command lines for the stages that fan out over processes (training, generation, benchmark).

Two facts decide them (see ../shared/DESIGN.md): on a machine without CUDA, real CPU ranks (one gloo DDP group)
need `--multi_gpu` plus `ACCELERATE_USE_CPU=1` (`--cpu --num_processes N` starts one process); and each job
gets its own free rendezvous port, so two jobs on one machine (or a test after another) never collide on
accelerate's default 29500.
"""

from __future__ import annotations

import os
import socket
import sys


def free_local_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def accelerate_launch(num_processes: int, accelerate_config: str | None = None,
                      cuda: bool | None = None) -> tuple[list[str], dict[str, str]]:
    """(command prefix up to the script or `-m module`, environment) for `num_processes` ranks.

    With an accelerate config file the file decides the launcher; `num_processes` still overrides its count.
    """
    command = [sys.executable, "-m", "accelerate.commands.launch"]
    env = dict(os.environ)
    if accelerate_config:
        command += ["--config_file", str(accelerate_config)]
    command += ["--num_processes", str(num_processes)]
    if num_processes > 1 and not accelerate_config:
        command += ["--multi_gpu", "--num_machines", "1", "--main_process_port", str(free_local_port())]
        if cuda is None:
            import torch

            cuda = torch.cuda.is_available()
        if not cuda:
            env["ACCELERATE_USE_CPU"] = "1"
    return command, env


def call_child(command: list[str], env: dict[str, str] | None = None) -> int:
    """Run a stage's child process and return its exit code. Ctrl-C reaches the child too (same process group);
    this waits for it to finish its own shutdown (a trainer saves a checkpoint) instead of killing it, as
    `subprocess.call` would, then re-raises. A second Ctrl-C stops the child at once."""
    import subprocess

    process = subprocess.Popen(command, env=env)
    try:
        return process.wait()
    except KeyboardInterrupt:
        try:
            process.wait()
        except KeyboardInterrupt:
            process.kill()
            process.wait()
        raise

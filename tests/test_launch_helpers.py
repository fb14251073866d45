"""The `accelerate launch` command lines the stages build for several processes."""

from __future__ import annotations

import subprocess
import sys

from dermt2im_hub.utils.launch import accelerate_launch


def test_cpu_ranks_form_one_gloo_group_on_their_own_port():
    command, env = accelerate_launch(2, cuda=False)
    assert command[1:3] == ["-m", "accelerate.commands.launch"] and "--multi_gpu" in command
    assert env["ACCELERATE_USE_CPU"] == "1"  # without it --multi_gpu starts independent processes on CPU
    port = int(command[command.index("--main_process_port") + 1])  # a free port chosen per job, not 29500
    import socket

    with socket.socket() as sock:  # it is free right now: binding it succeeds
        sock.bind(("127.0.0.1", port))


def test_one_process_and_config_file_leave_the_launcher_alone():
    command, _ = accelerate_launch(1, cuda=False)
    assert "--multi_gpu" not in command and "--main_process_port" not in command
    command, _ = accelerate_launch(4, "configs/accelerate/multi_gpu.yaml", cuda=True)
    assert command[command.index("--config_file") + 1] == "configs/accelerate/multi_gpu.yaml"
    assert "--multi_gpu" not in command and command[command.index("--num_processes") + 1] == "4"


def test_stage_modules_run_under_python_dash_m():
    for module in ("dermt2im_hub.training.launch", "dermt2im_hub.evaluation.launch", "dermt2im_hub.generation"):
        done = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True, timeout=300)
        assert done.returncode == 0 and "usage" in done.stdout.lower(), (module, done.stderr[-500:])

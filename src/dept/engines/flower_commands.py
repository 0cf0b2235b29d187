"""Command lines of a Flower deployment of dept: the stock `flower-superlink`, `flower-supernode` and `flwr run`,
with Flower's offline switches set and dept's node config and Flower App filled in.

    dept flower superlink --address 0.0.0.0:9091 --certificates ca.crt server.pem server.key --node-auth
    dept flower supernode --superlink link.example.org:9091 --source en_news --data-dir /data/prepared \\
                          --state-dir /data/dept_state --root-certificates ca.crt \\
                          --auth-keys keys/node --port 9094
    dept flower run CONFIG [key=value ...] --superlink link.example.org:9091 --root-certificates ca.crt

Any further option is passed to the stock command as it is.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from dept.engines.flower_env import quiet_flower
from dept.errors import EngineError

APP_DIR = Path(__file__).resolve().parent / "flower_fab"  # the Flower App `flwr run` submits


def _split(address: str) -> tuple[str, str]:
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise EngineError(f"--address '{address}' is not HOST:PORT")
    return host or "0.0.0.0", port


def superlink_argv(address: str, insecure: bool, certificates: tuple[str, str, str] | None, node_auth: bool,
                   database: str | None, extra: list[str]) -> list[str]:
    host, port = _split(address)
    argv = ["flower-superlink", "--host", host, "--port", port]
    if certificates:
        ca, cert, key = certificates
        argv += ["--ssl-ca-certfile", ca, "--ssl-certfile", cert, "--ssl-keyfile", key]
    elif insecure:
        argv.append("--insecure")
    else:
        raise EngineError("the SuperLink needs --certificates CA CERT KEY (TLS), or --insecure on a trusted network")
    if node_auth:
        argv.append("--enable-supernode-auth")
    if database:
        argv += ["--database", database]
    return argv + extra


def node_config(sources: str, data_dir: str | None, state_dir: str | None) -> str:
    parts = [f'source="{sources}"']
    if data_dir:
        parts.append(f'data-dir="{Path(data_dir).expanduser().resolve()}"')
    if state_dir:
        parts.append(f'state-dir="{Path(state_dir).expanduser().resolve()}"')
    return " ".join(parts)


def supernode_argv(superlink: str, sources: str, data_dir: str | None, state_dir: str | None, port: int,
                   insecure: bool, root_certificates: str | None, auth_keys: str | None,
                   extra: list[str]) -> list[str]:
    argv = ["flower-supernode", "--superlink", superlink, "--port", str(port),
            "--node-config", node_config(sources, data_dir, state_dir)]
    if root_certificates:
        argv += ["--root-certificates", root_certificates]
    elif insecure:
        argv.append("--insecure")
    else:
        raise EngineError("the SuperNode needs --root-certificates CA (TLS), or --insecure on a trusted network")
    if auth_keys:  # KEY and KEY.pub, e.g. from `ssh-keygen -t ecdsa -b 384 -N "" -f KEY`
        argv += ["--auth-supernode-private-key", auth_keys, "--auth-supernode-public-key", auth_keys + ".pub"]
    return argv + extra


def exec_flower(argv: list[str]) -> None:
    """Replace this process with the stock Flower command (same pid: a supervisor can stop it)."""
    quiet_flower()
    if shutil.which(argv[0]) is None:
        raise EngineError(f"{argv[0]} not found: pip install 'dept[flower]'")
    os.execvp(argv[0], argv)


def run_on_superlink(config: Path, overrides: list[str], superlink: str, insecure: bool,
                     root_certificates: str | None, resume: bool, extra: list[str]) -> int:
    """Submit the run to a SuperLink with `flwr run --stream` and follow its log; the exit code of `flwr run`."""
    quiet_flower()
    config = Path(config).expanduser().resolve()
    if not config.is_file():
        raise EngineError(f"config file not found: {config}")
    with tempfile.TemporaryDirectory(prefix="dept-flwr-") as home:  # a connection of our own, ~/.flwr untouched
        lines = ['[superlink]', 'default = "dept"', "", "[superlink.dept]", f'address = "{superlink}"']
        if root_certificates:
            lines.append(f'root-certificates = "{Path(root_certificates).expanduser().resolve()}"')
        elif insecure:
            lines.append("insecure = true")
        else:
            raise EngineError("flwr run needs --root-certificates CA (TLS), or --insecure on a trusted network")
        Path(home, "config.toml").write_text("\n".join(lines) + "\n")
        run_config = (f'config="{config}" overrides="{";".join(overrides)}" '
                      f'resume={"true" if resume else "false"}')
        argv = ["flwr", "run", str(APP_DIR), "dept", "--run-config", run_config, "--stream", *extra]
        return subprocess.run(argv, env={**os.environ, "FLWR_HOME": home}).returncode

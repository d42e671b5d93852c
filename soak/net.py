"""Network faults made by the kernel: the daemon runs in its own network namespace, joined to
the host by a veth pair on a private /30; the harness degrades or cuts that link.

``tc netem`` (delay, jitter, loss) is used when the kernel has it (``CONFIG_NET_SCH_NETEM``).
Kernels without it (some minimal VM kernels) get the closest the kernel offers: random loss by
netfilter's ``statistic`` match and a token-bucket (``tbf``) that queues, so adds latency, on
the namespace's side of the link. The result files say which was used. A partition and an
unreachable port are netfilter DROP rules inside the namespace: nothing outside it is touched.
"""

from __future__ import annotations

import contextlib
import subprocess

LOSS = ["-m", "statistic", "--mode", "random", "--probability", "0.05"]  # 5 % of packets


def sh(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), capture_output=True, text=True, check=check)


class Netns:
    """``asrd-soak-<n>`` with ``<n>`` unique per run (the broker port), so two soaks coexist."""

    def __init__(self, n: int) -> None:
        self.name = f"asrd-soak-{n}"
        self.host_if, self.ns_if = f"asrs{n}h", f"asrs{n}n"
        third = n % 250
        self.host_ip, self.ns_ip = f"10.213.{third}.1", f"10.213.{third}.2"
        self.degrade_mode = ""

    @property
    def prefix(self) -> list[str]:
        return ["ip", "netns", "exec", self.name]

    def up(self) -> None:
        self.down()
        sh("ip", "netns", "add", self.name)
        sh("ip", "link", "add", self.host_if, "type", "veth", "peer", "name", self.ns_if)
        sh("ip", "link", "set", self.ns_if, "netns", self.name)
        sh("ip", "addr", "add", f"{self.host_ip}/30", "dev", self.host_if)
        sh("ip", "link", "set", self.host_if, "up")
        sh("ip", "-n", self.name, "addr", "add", f"{self.ns_ip}/30", "dev", self.ns_if)
        sh("ip", "-n", self.name, "link", "set", self.ns_if, "up")
        sh("ip", "-n", self.name, "link", "set", "lo", "up")

    def down(self) -> None:
        sh("ip", "link", "del", self.host_if, check=False)
        sh("ip", "netns", "del", self.name, check=False)

    def _ipt(self, *args: str) -> None:
        sh(*self.prefix, "iptables", "-w", *args)

    def _drop_rules(self, match: list[str]) -> list[list[str]]:
        return [
            ["OUTPUT", "-o", self.ns_if, *match, "-j", "DROP"],
            ["INPUT", "-i", self.ns_if, *match, "-j", "DROP"],
        ]

    # -- degraded link: latency, jitter and loss ------------------------------------------
    def degrade(self) -> None:
        done = sh(
            *self.prefix, "tc", "qdisc", "replace", "dev", self.ns_if, "root", "netem",
            "delay", "200ms", "50ms", "loss", "5%",
            check=False,
        )  # fmt: skip
        if done.returncode == 0:
            self.degrade_mode = "netem delay 200ms 50ms loss 5%"
            return
        # No netem in this kernel: 5 % loss each way by netfilter, and a token bucket whose
        # queue (up to 200 ms) is the latency.
        for rule in self._drop_rules(LOSS):
            self._ipt("-A", *rule)
        sh(
            *self.prefix, "tc", "qdisc", "replace", "dev", self.ns_if, "root", "tbf",
            "rate", "4mbit", "burst", "16kb", "latency", "200ms",
        )  # fmt: skip
        self.degrade_mode = "no netem in kernel: iptables statistic 5% loss + tbf 4mbit/200ms"

    def restore(self) -> None:
        sh(*self.prefix, "tc", "qdisc", "del", "dev", self.ns_if, "root", check=False)
        for rule in self._drop_rules(LOSS):
            with contextlib.suppress(subprocess.CalledProcessError):
                self._ipt("-D", *rule)

    # -- a partition: every packet dropped -------------------------------------------------
    def partition(self) -> None:
        for rule in self._drop_rules([]):
            self._ipt("-I", *rule)

    def heal(self) -> None:
        for rule in self._drop_rules([]):
            with contextlib.suppress(subprocess.CalledProcessError):
                self._ipt("-D", *rule)

    # -- one service unreachable (its TCP port) --------------------------------------------
    def block_port(self, port: int) -> None:
        self._ipt("-I", "OUTPUT", "-o", self.ns_if, "-p", "tcp", "--dport", str(port), "-j", "DROP")

    def unblock_port(self, port: int) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):
            self._ipt(
                "-D", "OUTPUT", "-o", self.ns_if, "-p", "tcp", "--dport", str(port), "-j", "DROP"
            )

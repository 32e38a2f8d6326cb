"""Bringing the local cluster up and down: the order of things, and what is left afterwards."""

import contextlib
import fcntl
import json
import os
import shutil
import subprocess
import time
import urllib.request

from . import (
    build,
    certs,
    client,
    configs,
    dnsprobe,
    host,
    images,
    packages,
    paths,
    processes,
    settings,
    versions,
)

# In start order; down stops them in the reverse order, workloads first.
COMPONENTS = (
    "etcd",
    "containerd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kube-proxy",
    "kubelet",
    "coredns",
)


def _bin(name: str) -> str:
    return str(paths.BIN_DIR / name)


def commands() -> dict[str, list[str]]:
    """Return the command line of every component."""
    state, pki, conf = paths.STATE_DIR, paths.PKI_DIR, paths.CONF_DIR
    etcd = f"http://127.0.0.1:{settings.ETCD_CLIENT_PORT}"
    peer = f"http://127.0.0.1:{settings.ETCD_PEER_PORT}"

    def kubeconfig_flags(name: str) -> list[str]:
        kubeconfig = str(conf / f"{name}.kubeconfig")
        return [
            f"--kubeconfig={kubeconfig}",
            f"--authentication-kubeconfig={kubeconfig}",
            f"--authorization-kubeconfig={kubeconfig}",
        ]

    return {
        "etcd": [
            "/usr/bin/etcd", "--name=chanfleet", f"--data-dir={state}/etcd",
            f"--listen-client-urls={etcd}", f"--advertise-client-urls={etcd}",
            f"--listen-peer-urls={peer}", f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster=chanfleet={peer}", "--initial-cluster-state=new",
        ],
        "containerd": ["/usr/bin/containerd", f"--config={conf}/containerd.toml"],
        "kube-apiserver": [
            _bin("kube-apiserver"), f"--etcd-servers={etcd}",
            f"--secure-port={settings.APISERVER_PORT}", f"--advertise-address={settings.node_ip()}",
            f"--service-cluster-ip-range={settings.SERVICE_CIDR}",
            f"--service-node-port-range={settings.NODEPORT_RANGE}",
            f"--client-ca-file={pki}/ca.crt",
            f"--tls-cert-file={pki}/apiserver.crt", f"--tls-private-key-file={pki}/apiserver.key",
            f"--kubelet-client-certificate={pki}/apiserver-kubelet-client.crt",
            f"--kubelet-client-key={pki}/apiserver-kubelet-client.key",
            "--kubelet-preferred-address-types=InternalIP",
            f"--service-account-issuer=https://kubernetes.default.svc.{settings.CLUSTER_DOMAIN}",
            f"--service-account-key-file={pki}/sa.pub",
            f"--service-account-signing-key-file={pki}/sa.key",
            "--authorization-mode=Node,RBAC", "--allow-privileged=true", "--profiling=false",
            "--event-ttl=1h", "--v=1",
        ],
        "kube-controller-manager": [
            _bin("kube-controller-manager"), *kubeconfig_flags("controller-manager"),
            "--bind-address=127.0.0.1", "--leader-elect=false",
            "--use-service-account-credentials=true",
            f"--service-account-private-key-file={pki}/sa.key", f"--root-ca-file={pki}/ca.crt",
            f"--cluster-signing-cert-file={pki}/ca.crt",
            f"--cluster-signing-key-file={pki}/ca.key",
            f"--cluster-cidr={settings.POD_CIDR}",
            f"--service-cluster-ip-range={settings.SERVICE_CIDR}",
            "--allocate-node-cidrs=false", "--profiling=false", "--v=1",
        ],
        "kube-scheduler": [
            _bin("kube-scheduler"), *kubeconfig_flags("scheduler"),
            "--bind-address=127.0.0.1", "--leader-elect=false", "--profiling=false", "--v=1",
        ],
        "kube-proxy": [_bin("kube-proxy"), f"--config={conf}/kube-proxy.yaml", "--v=1"],
        "kubelet": [
            _bin("kubelet"), f"--config={conf}/kubelet.yaml",
            f"--kubeconfig={conf}/kubelet.kubeconfig", f"--root-dir={paths.KUBELET_DIR}",
            f"--cert-dir={paths.KUBELET_DIR}/pki", f"--hostname-override={settings.NODE_NAME}",
            f"--node-ip={settings.node_ip()}", "--v=1",
        ],
        "coredns": [_bin("coredns"), "-conf", f"{conf}/Corefile"],
    }  # fmt: skip


def write_configs() -> None:
    """Write the certificates, kubeconfigs and component configurations under var/cluster."""
    state, conf = paths.STATE_DIR, paths.CONF_DIR
    for folder in (conf, paths.LOG_DIR, paths.PID_DIR, state / "cni" / "net.d", paths.VOLUME_DIR):
        folder.mkdir(parents=True, exist_ok=True)
    certs.generate(paths.PKI_DIR)
    paths.KUBECONFIG.write_text(configs.kubeconfig("admin", paths.PKI_DIR))
    for name, cert in (
        ("controller-manager", "controller-manager"),
        ("scheduler", "scheduler"),
        ("kube-proxy", "kube-proxy"),
        ("kubelet", "kubelet-client"),
        ("coredns", "coredns"),
    ):
        (conf / f"{name}.kubeconfig").write_text(configs.kubeconfig(cert, paths.PKI_DIR))
    (conf / "containerd.toml").write_text(configs.containerd_config(state))
    (state / "cni" / "net.d" / "10-chanfleet.conflist").write_text(configs.cni_config(state))
    (conf / "kubelet.yaml").write_text(configs.kubelet_config(state))
    (conf / "kube-proxy.yaml").write_text(configs.kube_proxy_config(state))
    (conf / "Corefile").write_text(configs.corefile(state))
    (conf / "addons.json").write_text(configs.addons())


def running() -> dict[str, int | None]:
    """Return each component's PID, or None when it is not running."""
    return {name: processes.read_pid(name) for name in COMPONENTS}


def is_up() -> bool:
    """Tell whether every component runs and the API server is ready."""
    return all(running().values()) and client.apiserver_ready()


def usage() -> str:
    """Return how to use the running cluster from a shell."""
    return (
        f"cluster is up: node {settings.NODE_NAME}, Kubernetes v{versions.KUBERNETES}\n"
        f"  export KUBECONFIG={paths.KUBECONFIG}\n"
        f"  kubectl: {paths.KUBECTL}\n"
        f"  helm:    {paths.HELM}\n"
        f"  images:  python -m deploy.cluster load-image ARCHIVE (docker-archive or OCI tar)\n"
        f"  NodePorts answer on 127.0.0.1:<nodePort>; logs in {paths.LOG_DIR}\n"
    )


def _dns_answers() -> bool:
    name = f"kubernetes.default.svc.{settings.CLUSTER_DOMAIN}"
    return dnsprobe.resolve(name, settings.node_ip()) == [settings.service_ip(1)]


def _start(name: str, log) -> None:
    pid = processes.start(name, commands()[name])
    log(f"  started {name} (pid {pid})")


def _check_alive(name: str) -> bool:
    if processes.read_pid(name) is None:
        tail = processes.log_file(name).read_text(errors="replace")[-2000:]
        raise RuntimeError(f"{name} exited; the end of its log:\n{tail}")
    return True


@contextlib.contextmanager
def _exclusive():
    paths.LOCK.parent.mkdir(parents=True, exist_ok=True)
    with open(paths.LOCK, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def up(log=print) -> dict[str, float]:
    """Install, build and start everything, wait for the node and DNS; return the timings."""
    with _exclusive():
        return _up(log)


def _up(log) -> dict[str, float]:
    if is_up():
        log("cluster is already up")
        log(usage())
        return {}
    if os.geteuid() != 0:
        raise SystemExit("the local cluster needs root (network, mounts, cgroups)")
    # A unix socket path holds at most 107 bytes; containerd's ttrpc socket is the longest.
    if len(f"{paths.CONTAINERD_SOCKET}.ttrpc".encode()) > 107:
        raise SystemExit(f"the checkout's path is too long for {paths.CONTAINERD_SOCKET}")
    if paths.STATE_DIR.exists():
        log("cleaning up what a previous run left ...")
        _down(lambda _message: None)
    timings: dict[str, float] = {}
    started = time.monotonic()
    packages.ensure(log)
    timings.update({f"build {name}": s for name, s in build.build_all(log).items()})
    begun = time.monotonic()
    paths.STATE_DIR.mkdir(parents=True, exist_ok=True)
    paths.BASELINE.write_text(json.dumps(host.baseline(), indent=2))
    try:
        write_configs()
        host.set_sysctls()
        host.create_bridge()
        host.install_guard()
        _start_all(log)
    except BaseException:
        kept = paths.REPO / "build" / "cluster" / "failed-logs"
        shutil.rmtree(kept, ignore_errors=True)
        shutil.copytree(paths.LOG_DIR, kept, dirs_exist_ok=True)
        log(f"up failed; the components' logs are kept in {kept}; cleaning up ...")
        _down(log)
        raise
    timings["up"] = time.monotonic() - begun
    timings["total"] = time.monotonic() - started
    log(usage())
    return timings


def _start_all(log) -> None:
    log("starting the cluster ...")
    _start("etcd", log)
    _start("containerd", log)
    etcd_health = f"http://127.0.0.1:{settings.ETCD_CLIENT_PORT}/health"
    client.wait_for("etcd", lambda: _check_alive("etcd") and _http_ok(etcd_health), 60)
    _start("kube-apiserver", log)
    client.wait_for(
        "containerd",
        lambda: _check_alive("containerd") and client.ctr("version", check=False).returncode == 0,
        60,
    )
    for archive in build.write_images().values():
        images.load(archive)
    client.wait_for(
        "the API server", lambda: _check_alive("kube-apiserver") and client.apiserver_ready(), 120
    )
    for name in ("kube-controller-manager", "kube-scheduler", "kube-proxy", "kubelet"):
        _start(name, log)
    client.kubectl("apply", "-f", str(paths.CONF_DIR / "addons.json"))
    _start("coredns", log)
    client.wait_for(
        "the node to be Ready", lambda: _check_alive("kubelet") and client.node_ready(), 180
    )
    client.wait_for("cluster DNS", lambda: _check_alive("coredns") and _dns_answers(), 60)
    client.wait_for(
        "the default service account",
        lambda: client.kubectl("get", "serviceaccount", "default", check=False).returncode == 0,
        60,
    )


def _http_ok(url: str) -> bool:
    with urllib.request.urlopen(url, timeout=2) as response:
        return response.status == 200


def _delete_workloads(log) -> None:
    # Controllers are stopped first, so deleted pods are not replaced; kubelet then tears down
    # each pod's containers and network namespace itself.
    result = client.kubectl(
        "delete", "pods", "--all", "--all-namespaces", "--grace-period=1", "--wait=false",
        timeout=30, check=False,
    )  # fmt: skip
    if result.returncode != 0:
        log(f"  could not delete pods: {result.stderr.strip()}")
        return

    def no_pods() -> bool:
        listed = client.kubectl("get", "pods", "-A", "-o", "name", timeout=10, check=False)
        return listed.returncode == 0 and not listed.stdout.strip()

    try:
        client.wait_for("pods to go", no_pods, 45)
    except TimeoutError as error:
        log(f"  {error}; killing what is left")


def down(log=print) -> float:
    """Stop everything the cluster started and remove its state; safe when nothing is up."""
    with _exclusive():
        return _down(log)


def _down(log) -> float:
    started = time.monotonic()
    try:
        saved = json.loads(paths.BASELINE.read_text())
    except (OSError, ValueError):
        saved = {}
    alive = running()
    was_up = any(alive.values()) or paths.STATE_DIR.exists()
    for name in ("kube-controller-manager", "kube-scheduler"):
        processes.stop(name)
    if alive["kubelet"] and alive["kube-apiserver"] and client.apiserver_ready():
        log("deleting pods ...")
        _delete_workloads(log)
    for name in ("kubelet", "coredns", "kube-proxy"):
        processes.stop(name)
    # Whatever kubelet did not stop: container processes, then the runtime and its shims.
    _kill_pods()
    processes.stop("containerd")
    for pid in processes.pids_with_argument(str(paths.CONTAINERD_SOCKET)):
        if pid != os.getpid():
            processes.stop_pid(pid, timeout=2)
    for name in ("kube-apiserver", "etcd"):
        processes.stop(name)
    kube_proxy = paths.BIN_DIR / "kube-proxy"
    if kube_proxy.exists():
        subprocess.run([str(kube_proxy), "--cleanup"], capture_output=True, timeout=60)
    host.cleanup_iptables()
    host.remove_new_netns(saved)
    host.remove_bridge()
    if saved:
        host.restore_sysctls(saved)
        host.remove_new_paths(saved)
        host.remove_new_nft_tables(saved)
        host.remove_cni_cache(saved)
    _kill_pods()
    host.unmount_under(paths.STATE_DIR)
    shutil.rmtree(paths.STATE_DIR, ignore_errors=True)
    elapsed = time.monotonic() - started
    log(f"cluster is down ({elapsed:.0f} s)" if was_up else "cluster was not up")
    return elapsed


def _kill_pods() -> None:
    for _ in range(20):
        host.kill_pod_cgroups()
        if not host.pod_cgroups():
            return
        time.sleep(0.25)


def leftovers() -> list[str]:
    """Return what of the cluster is still on the host (empty after a clean down)."""
    found = [f"process {name} ({pid})" for name, pid in running().items() if pid]
    shims = processes.pids_with_argument(str(paths.CONTAINERD_SOCKET))
    found += [f"process {pid} using containerd's socket" for pid in shims if pid != os.getpid()]
    if host.run("ip", "link", "show", settings.BRIDGE, check=False).returncode == 0:
        found.append(f"interface {settings.BRIDGE}")
    for tool in ("iptables-save", "ip6tables-save"):
        saved = host.run(tool, check=False).stdout
        chains = {
            line[1:].split()[0]
            for line in saved.splitlines()
            if line.startswith(":") and line[1:].startswith(host.CHAIN_PREFIXES)
        }
        found += [f"{tool.removesuffix('-save')} chain {chain}" for chain in sorted(chains)]
    found += [f"mount {point}" for point in host.mounts_under(paths.STATE_DIR)]
    found += [f"cgroup {cgroup}" for cgroup in host.pod_cgroups()]
    if paths.STATE_DIR.exists():
        found.append(f"folder {paths.STATE_DIR}")
    return found


def status() -> str:
    """Return one line per component with its PID, and the node's state."""
    lines = [
        f"{name:24} {f'pid {pid}' if pid else 'not running'}" for name, pid in running().items()
    ]
    if client.apiserver_ready():
        lines.append(client.kubectl("get", "nodes", "-o", "wide", check=False).stdout.rstrip())
    return "\n".join(lines)

"""What can be checked here of the Dockerfile, infra/compose.yaml, infra/k8s/ and infra/nginx/
without a container engine or a cluster: they parse, and they agree with the code."""

import json
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import yaml
from packaging.specifiers import SpecifierSet

from gateway.app import create_app
from gateway.settings import Settings
from gateway.testing import free_port, running_gateway
from tests.nginx import check_config, prepare

ROOT = Path(__file__).resolve().parent.parent
INFRA = ROOT / "infra"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def app_paths() -> set[str]:
    return set(create_app(Settings()).openapi()["paths"])


def gateway_settings(env: dict[str, Any]) -> Settings:
    """Settings from the GATEWAY_* variables of `env`, as the gateway would read them."""
    fields = {}
    for name, value in env.items():
        if name.startswith("GATEWAY_"):
            field = name.removeprefix("GATEWAY_").lower()
            assert field in Settings.model_fields, f"{name} is not a setting"
            fields[field] = str(value)
    return Settings.model_validate(fields)


# --- Dockerfile ---------------------------------------------------------------------


def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, ARG defaults substituted."""
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    instructions: list[tuple[str, str]] = []
    args: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        word, _, rest = line.partition(" ")
        rest = re.sub(r"\$\{(\w+)\}", lambda m: args.get(m[1], m[0]), rest.strip())
        if word.upper() == "ARG" and "=" in rest:
            name, _, default = rest.partition("=")
            args[name] = default
        instructions.append((word.upper(), rest))
    return instructions


def final_stage() -> list[tuple[str, str]]:
    instructions = dockerfile()
    last_from = max(i for i, (word, _) in enumerate(instructions) if word == "FROM")
    return instructions[last_from:]


def exec_form(instruction: str) -> list[str]:
    [arguments] = [rest for word, rest in final_stage() if word == instruction]
    if instruction == "HEALTHCHECK":
        arguments = arguments[arguments.index("CMD ") + 4 :]
    parsed = json.loads(arguments)
    assert isinstance(parsed, list), f"{instruction} should be in exec form"
    return parsed


def image_env() -> dict[str, str]:
    env = {}
    for word, rest in final_stage():
        if word == "ENV":
            for pair in shlex.split(rest):
                name, _, value = pair.partition("=")
                env[name] = value
    return env


def test_base_images_have_a_python_the_package_accepts() -> None:
    requires = SpecifierSet(PYPROJECT["project"]["requires-python"])
    images = [rest.split()[0] for word, rest in dockerfile() if word == "FROM"]
    assert len(images) == 2  # a build stage and a slim final stage
    for image in images:
        match = re.fullmatch(r"python:(\d+\.\d+)[\w.-]*", image)
        assert match, f"unexpected base image {image}"
        assert requires.contains(match[1] + ".0"), f"{image} vs requires-python {requires}"
        assert "slim" in image


def test_image_runs_the_console_script_as_a_user() -> None:
    [user] = [rest for word, rest in final_stage() if word == "USER"]
    uid = user.split(":")[0]
    assert uid.isdigit() and int(uid) != 0  # numeric, so runAsNonRoot can check it
    command = exec_form("CMD")
    assert command == ["gateway", "serve"]
    assert "gateway" in PYPROJECT["project"]["scripts"]
    result = subprocess.run(
        [sys.executable, "-m", "gateway", *command[1:], "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0 and "--shutdown-grace" in result.stdout
    [build] = [rest for word, rest in dockerfile() if word == "RUN" and "'.[s3]'" in rest]
    assert "pip install" in build


def test_image_is_configured_by_environment_only() -> None:
    env = image_env()
    settings = gateway_settings(env)
    assert settings.host == "0.0.0.0"
    [exposed] = [rest for word, rest in final_stage() if word == "EXPOSE"]
    assert int(exposed) == settings.port


def test_healthcheck_asks_healthz_of_a_running_gateway(tmp_path: Path) -> None:
    command = exec_form("HEALTHCHECK")
    assert command[:2] == ["python", "-c"] and "/healthz" in command[2]
    assert "/healthz" in app_paths()
    probe = [sys.executable, *command[1:]]
    with running_gateway(data_dir=tmp_path / "data") as gw:
        healthy = subprocess.run(probe, env={"GATEWAY_PORT": str(gw.port)}, timeout=30)
    assert healthy.returncode == 0
    nobody_home = subprocess.run(
        probe, env={"GATEWAY_PORT": str(free_port())}, capture_output=True, timeout=30
    )
    assert nobody_home.returncode != 0


def test_dockerignore_lets_in_what_the_build_copies() -> None:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    patterns = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    assert patterns[0] == "*"  # everything else (.venv, data, .git) stays out
    allowed = {p.removeprefix("!").rstrip("/") for p in patterns if p.startswith("!")}
    sources = [
        source.rstrip("/")
        for word, rest in dockerfile()
        if word == "COPY" and not rest.startswith("--from")
        for source in rest.split()[:-1]
    ]
    assert sources and set(sources) <= allowed
    for source in sources:
        assert (ROOT / source).exists()


# --- compose --------------------------------------------------------------------------


def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((INFRA / "compose.yaml").read_text())
    return loaded


def seconds(value: str) -> float:
    match = re.fullmatch(r"(\d+)([smh])", value)
    assert match, value
    return int(match[1]) * {"s": 1, "m": 60, "h": 3600}[match[2]]


def test_compose_runs_two_gateways_on_minio_behind_nginx() -> None:
    services = compose()["services"]
    assert {"minio", "create-bucket", "gateway-1", "gateway-2", "nginx"} <= services.keys()
    create = " ".join(services["create-bucket"]["command"])
    assert services["create-bucket"]["image"].startswith("minio/mc")
    [bucket] = re.findall(r"mc mb --ignore-existing store/([\w.-]+)", create)
    for name in ("gateway-1", "gateway-2"):
        gateway = services[name]
        assert gateway["build"]["context"] == ".."
        settings = gateway_settings(gateway["environment"])
        assert (settings.backend, settings.s3_bucket) == ("s3", bucket)
        assert settings.s3_endpoint_url == "http://minio:9000"
        assert settings.s3_addressing_style == "path"
        assert seconds(gateway["stop_grace_period"]) > settings.shutdown_grace.total_seconds()
        assert gateway["depends_on"]["create-bucket"]["condition"] == (
            "service_completed_successfully"
        )
    nginx = services["nginx"]
    assert "./nginx/gateway.conf:/etc/nginx/conf.d/default.conf:ro" in nginx["volumes"]
    upstreams = re.findall(
        r"^\s*server\s+([\w-]+):(\d+)", (INFRA / "nginx/gateway.conf").read_text(), re.M
    )
    assert sorted(upstreams) == [("gateway-1", "8000"), ("gateway-2", "8000")]
    assert int(image_env()["GATEWAY_PORT"]) == 8000


# --- Kubernetes -----------------------------------------------------------------------


def manifests() -> dict[str, dict[str, Any]]:
    found = {}
    for path in sorted((INFRA / "k8s").glob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text()):
            found[document["kind"]] = document
    return found


def test_kustomization_lists_every_manifest() -> None:
    kustomization = manifests()["Kustomization"]
    files = {path.name for path in (INFRA / "k8s").glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == files


def test_deployment_probes_resources_settings_and_secrets() -> None:
    found = manifests()
    deployment, config, secret = found["Deployment"], found["ConfigMap"], found["Secret"]
    pod = deployment["spec"]["template"]["spec"]
    [container] = pod["containers"]
    paths = app_paths()
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz" in paths
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz" in paths
    assert {"requests", "limits"} <= container["resources"].keys()
    assert [source["configMapRef"]["name"] for source in container["envFrom"]] == [
        config["metadata"]["name"]
    ]
    settings = gateway_settings(config["data"])
    assert settings.backend == "s3" and settings.tokens_file is not None
    # The tokens file is the Secret's, mounted where GATEWAY_TOKENS_FILE says.
    mounts = {mount["name"]: mount["mountPath"] for mount in container["volumeMounts"]}
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    [tokens_volume] = [name for name, v in volumes.items() if "secret" in v]
    assert volumes[tokens_volume]["secret"]["secretName"] == secret["metadata"]["name"]
    [item] = volumes[tokens_volume]["secret"]["items"]
    assert Path(mounts[tokens_volume]) / item["path"] == settings.tokens_file
    assert "tokens" in json.loads(secret["stringData"][item["key"]])
    # Kubernetes waits longer than the gateway's drain and grace before it kills.
    shutdown = settings.shutdown_drain + settings.shutdown_grace
    assert pod["terminationGracePeriodSeconds"] > shutdown.total_seconds()
    # Runs as the image's user.
    [user] = [rest for word, rest in final_stage() if word == "USER"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert str(pod["securityContext"]["runAsUser"]) == user.split(":")[0]


def test_service_selects_the_pods_and_their_port() -> None:
    found = manifests()
    deployment, service = found["Deployment"], found["Service"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    [service_port] = service["spec"]["ports"]
    assert ports[service_port["targetPort"]] == 8000
    ingress = found["Ingress"]
    backend = ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend["name"] == service["metadata"]["name"]
    assert ingress["metadata"]["annotations"]["nginx.ingress.kubernetes.io/proxy-body-size"] == "0"


# --- nginx ----------------------------------------------------------------------------


def test_nginx_config_streams_large_bodies() -> None:
    text = (INFRA / "nginx" / "gateway.conf").read_text()
    directives = {line.split("#")[0].strip().rstrip(";") for line in text.splitlines()}
    assert {
        "client_max_body_size 0",
        "proxy_request_buffering off",
        "proxy_buffering off",
        "proxy_http_version 1.1",
        'proxy_set_header Connection ""',
        "proxy_set_header X-Request-ID $gateway_request_id",
        "proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for",
        "proxy_set_header X-Forwarded-Proto $scheme",
    } <= directives
    assert any(re.fullmatch(r"keepalive \d+", directive) for directive in directives)
    for timeout in ("proxy_read_timeout", "proxy_send_timeout"):
        [value] = [d.split()[1] for d in directives if d.startswith(timeout)]
        assert seconds(value) >= 600


def test_nginx_accepts_the_config(tmp_path: Path) -> None:
    config, _ = prepare([free_port(), free_port()], tmp_path)
    result = check_config(config, tmp_path)
    assert result.returncode == 0, result.stderr
    assert "syntax is ok" in result.stderr and "test is successful" in result.stderr


def test_nginx_rejects_a_broken_config(tmp_path: Path) -> None:
    config, _ = prepare([free_port()], tmp_path)
    site = tmp_path / "gateway.conf"
    site.write_text(site.read_text().replace("proxy_buffering off;", "proxy_buffering of;"))
    result = check_config(config, tmp_path)
    assert result.returncode != 0
